//! Configuration: nanoGPT's knob names and defaults, presets, TOML (or nanoGPT `.py`) files and
//! `--set key=value` overrides, validated into one [`Config`].

use anyhow::{anyhow, bail, Context, Result};
use std::path::Path;

/// A knob's value parsed from TOML (or a `--set` string).
trait Knob: Sized {
    fn from_toml(v: &toml::Value) -> Option<Self>;
    fn show(&self) -> String;
    const KIND: &'static str;
}

impl Knob for u64 {
    fn from_toml(v: &toml::Value) -> Option<Self> {
        match v {
            toml::Value::Integer(i) if *i >= 0 => Some(*i as u64),
            toml::Value::Float(f) if *f >= 0.0 && f.fract() == 0.0 && *f < 1e18 => Some(*f as u64),
            _ => None,
        }
    }
    fn show(&self) -> String {
        self.to_string()
    }
    const KIND: &'static str = "a non-negative integer";
}

impl Knob for usize {
    fn from_toml(v: &toml::Value) -> Option<Self> {
        u64::from_toml(v).and_then(|x| usize::try_from(x).ok())
    }
    fn show(&self) -> String {
        self.to_string()
    }
    const KIND: &'static str = "a non-negative integer";
}

impl Knob for f64 {
    fn from_toml(v: &toml::Value) -> Option<Self> {
        match v {
            toml::Value::Integer(i) => Some(*i as f64),
            toml::Value::Float(f) => Some(*f),
            _ => None,
        }
    }
    fn show(&self) -> String {
        format!("{self}")
    }
    const KIND: &'static str = "a number";
}

impl Knob for bool {
    fn from_toml(v: &toml::Value) -> Option<Self> {
        match v {
            toml::Value::Boolean(b) => Some(*b),
            _ => None,
        }
    }
    fn show(&self) -> String {
        self.to_string()
    }
    const KIND: &'static str = "true or false";
}

impl Knob for String {
    fn from_toml(v: &toml::Value) -> Option<Self> {
        match v {
            toml::Value::String(s) => Some(s.clone()),
            toml::Value::Integer(i) => Some(i.to_string()),
            toml::Value::Float(f) => Some(f.to_string()),
            toml::Value::Boolean(b) => Some(b.to_string()),
            _ => None,
        }
    }
    fn show(&self) -> String {
        format!("{self:?}")
    }
    const KIND: &'static str = "a string";
}

impl Knob for Option<usize> {
    fn from_toml(v: &toml::Value) -> Option<Self> {
        match v {
            toml::Value::String(s) if s.is_empty() || s == "auto" || s == "None" => Some(None),
            _ => usize::from_toml(v).map(Some),
        }
    }
    fn show(&self) -> String {
        self.map_or("auto".into(), |x| x.to_string())
    }
    const KIND: &'static str = "a non-negative integer or \"auto\"";
}

macro_rules! knobs {
    ($( [$group:literal] $( $name:ident : $ty:ty = $default:expr ; $doc:literal )* )*) => {
        /// Every knob gptrain knows, with nanoGPT's names and (train.py) defaults. A knob
        /// missing from a saved config (a checkpoint written before the knob existed) takes its
        /// default, so old checkpoints still resume.
        #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(default)]
        pub struct Config {
            $( $( #[doc = $doc] pub $name: $ty, )* )*
        }
        impl Default for Config {
            fn default() -> Self {
                Config { $( $( $name: $default, )* )* }
            }
        }
        /// (name, description) of every knob.
        pub const KNOBS: &[(&str, &str)] = &[ $( $( (stringify!($name), $doc), )* )* ];
        /// (title, names) of the knobs' groups, in order (what `gptrain config` prints).
        pub const GROUPS: &[(&str, &[&str])] = &[ $( ($group, &[ $( stringify!($name), )* ]), )* ];
        /// What values a knob takes (`a non-negative integer`, ...), None for an unknown key.
        pub fn knob_kind(key: &str) -> Option<&'static str> {
            match key {
                $( $( stringify!($name) => Some(<$ty as Knob>::KIND), )* )*
                _ => None,
            }
        }
        impl Config {
            fn set_typed(&mut self, key: &str, v: &toml::Value) -> Result<bool> {
                match key {
                    $( $( stringify!($name) => {
                        self.$name = <$ty as Knob>::from_toml(v).ok_or_else(|| anyhow!(
                            "`{}` must be {} (got {})", key, <$ty as Knob>::KIND, v))?;
                        Ok(true)
                    } )* )*
                    _ => Ok(false),
                }
            }
            /// (name, value) of every knob, for the table printed at start.
            pub fn entries(&self) -> Vec<(&'static str, String)> {
                vec![ $( $( (stringify!($name), Knob::show(&self.$name)), )* )* ]
            }
        }
    };
}

knobs! {
    ["model"]
    n_layer: usize = 12; "number of transformer blocks"
    n_head: usize = 12; "attention heads per block"
    n_embd: usize = 768; "embedding width (channels)"
    block_size: usize = 1024; "context length in tokens"
    bias: bool = false; "biases in Linear and LayerNorm layers"
    dropout: f64 = 0.0; "dropout probability (embedding, attention, residual)"
    vocab_size: Option<usize> = None; "vocabulary size (auto: from the dataset's meta)"
    pad_vocab: bool = false; "pad the vocabulary to a multiple of 64 (padding takes no part in the loss)"
    ["data"]
    dataset: String = "builtin".into(); "prepared data directory (a bare name not found here is looked for under `data/`, as nanoGPT does), or `builtin` (the built-in Shakespeare corpus, char-level)"
    batch_size: usize = 12; "micro-batch size in sequences"
    gradient_accumulation_steps: usize = 40; "micro-batches per optimiser step"
    ["optimiser and learning-rate schedule"]
    learning_rate: f64 = 6e-4; "peak learning rate"
    max_iters: u64 = 600_000; "total optimiser steps (absolute, also on resume)"
    weight_decay: f64 = 0.1; "AdamW weight decay (2-D tensors only)"
    beta1: f64 = 0.9; "AdamW beta1"
    beta2: f64 = 0.95; "AdamW beta2"
    grad_clip: f64 = 1.0; "clip the global gradient norm to this (0 disables)"
    decay_lr: bool = true; "warmup + cosine decay of the learning rate"
    warmup_iters: u64 = 2000; "linear warmup steps"
    lr_decay_iters: u64 = 600_000; "step at which the cosine reaches min_lr"
    min_lr: f64 = 6e-5; "final learning rate"
    ["evaluation, logging, checkpoints"]
    eval_interval: u64 = 2000; "evaluate (and maybe checkpoint) every this many steps"
    eval_iters: usize = 200; "batches per split in an evaluation"
    log_interval: u64 = 1; "log a line every this many steps"
    tensorboard: bool = true; "write TensorBoard event files under out_dir/tensorboard/ (`tensorboard --logdir out_dir/tensorboard`)"
    eval_only: bool = false; "evaluate once and exit"
    always_save_checkpoint: bool = true; "checkpoint at every eval, not only when val loss improves"
    init_from: String = "scratch".into(); "`scratch`, `resume` (newest checkpoint in out_dir), or a path to fine-tune from: a gptrain checkpoint directory or a GPT-2 model.safetensors (or its directory)"
    out_dir: String = "out".into(); "where checkpoints and metrics go"
    keep_checkpoints: usize = 3; "keep the newest K checkpoints (plus the best by val loss, and always the one just written); 0 keeps every checkpoint"
    replace_checkpoints: bool = false; "a `scratch` or fine-tuning run into an out_dir that holds another run's checkpoints deletes them at start (otherwise it refuses to start)"
    resume_fallback: bool = false; "on resume, fall back to the newest checkpoint that verifies"
    checkpoint_retry_s: u64 = 600; "when a run's last checkpoint (at max_iters or on Ctrl-C) cannot be written, e.g. disk full, try again every 10 s for this many seconds before giving up (0: give up at once)"
    on_nonfinite: String = "abort".into(); "on a NaN/Inf loss or gradient norm: `abort` or `skip` the update"
    skip_update_lossz: f64 = 0.0; "skip the update when the loss's z-score against the last 128 iterations exceeds this (0: off; llm.c's -sl)"
    skip_update_gradz: f64 = 0.0; "skip the update when the gradient norm's z-score against the last 128 iterations exceeds this (0: off; llm.c's -sg)"
    init_loss_scale: f64 = 65536.0; "float16: the dynamic loss scale's start (PyTorch GradScaler's init_scale); halved on each gradient overflow, doubled after 2000 clean steps"
    ["device, threads, seed"]
    peak_tflops: f64 = 0.0; "override the device's peak TFLOP/s for MFU (0: from the device table)"
    seed: u64 = 1337; "seed of every random stream"
    threads: usize = 0; "worker threads (0: physical cores)"
    kernels: String = "fast".into(); "CPU kernels: `fast`, or `reference` (the readable ones the fast ones are tested against)"
    device: String = "auto".into(); "compute device: `auto` (the first usable NVIDIA GPU, else the CPU), `cpu`, `cuda` or `cuda:N`"
    dtype: String = "auto".into(); "compute precision: `auto` (nanoGPT's: bfloat16 on a GPU that has it, else float16; float32 on the CPU), `float32`, or mixed precision `bfloat16` / `float16` (f32 master weights; float16 with dynamic loss scaling); `tfloat32`: TF32 matmuls on a GPU"
    recompute: usize = 0; "activations the backward recomputes instead of keeping every layer's (llm.c's -r): 0 none, 1 GELU's output (4 B T C fewer elements a layer), 2 also both LayerNorms' outputs (6 B T C a layer); the results are bitwise the same, a step takes a little longer"
    zero_stage: usize = 0; "data parallel: 1 splits the optimiser state over the ranks (ZeRO-1, llm.c's -z 1): each rank keeps the AdamW moments, and under mixed precision the f32 master weights, of its own share of the parameters only (about 1/N), with the same steps; 0 keeps a whole copy on every rank"
    ["sampling (nanoGPT's sample.py)"]
    start: String = "\n".into(); "prompt text, or FILE:path"
    num_samples: usize = 10; "samples to draw"
    max_new_tokens: usize = 500; "tokens per sample"
    temperature: f64 = 0.8; "sampling temperature (> 0)"
    top_k: usize = 200; "keep the top k tokens (0: all)"
    ["accepted so nanoGPT configs run unchanged; ignored, with a note"]
    compile: bool = false; "nanoGPT's torch.compile switch (no effect)"
    backend: String = "nccl".into(); "nanoGPT's DDP backend (no effect)"
    wandb_log: bool = false; "nanoGPT's wandb switch (no effect)"
    wandb_project: String = "owt".into(); "nanoGPT's wandb project (no effect)"
    wandb_run_name: String = "gpt2".into(); "nanoGPT's wandb run name (no effect)"
}

/// Knobs accepted so nanoGPT configs work unchanged, with no effect here: a line or `--set`
/// that sets one is skipped whatever its value, with a note.
const INERT: &[&str] = &["compile", "backend", "wandb_log", "wandb_project", "wandb_run_name"];

/// Whether `key` is a nanoGPT knob that gptrain accepts and ignores.
pub fn is_inert(key: &str) -> bool {
    INERT.contains(&key)
}

/// The note for a skipped inert knob; `at` is the `file:line` it came from, if any.
fn inert_note(key: &str, at: Option<&str>) -> String {
    let at = at.map_or(String::new(), |a| format!("{a}: "));
    format!("note: {at}`{key}` ignored: a nanoGPT knob with no effect in gptrain")
}

/// Where an error about a config key sends the reader.
pub const KEYS_HINT: &str = "`gptrain config` lists every key with its default and meaning";

/// Named presets: (name, description, parent, overrides).
/// A preset: (name, description, parent preset, knob overrides as TOML literals).
pub type Preset = (&'static str, &'static str, Option<&'static str>, &'static [(&'static str, &'static str)]);

pub const PRESETS: &[Preset] = &[
    (
        "shakespeare-char",
        "nanoGPT's config/train_shakespeare_char.py (6x384, block 256; a GPU run)",
        None,
        &[
            ("out_dir", "\"out-shakespeare-char\""),
            ("eval_interval", "250"),
            ("eval_iters", "200"),
            ("log_interval", "10"),
            ("always_save_checkpoint", "false"),
            ("dataset", "\"builtin\""),
            ("gradient_accumulation_steps", "1"),
            ("batch_size", "64"),
            ("block_size", "256"),
            ("n_layer", "6"),
            ("n_head", "6"),
            ("n_embd", "384"),
            ("dropout", "0.2"),
            ("learning_rate", "1e-3"),
            ("max_iters", "5000"),
            ("lr_decay_iters", "5000"),
            ("min_lr", "1e-4"),
            ("beta2", "0.99"),
            ("warmup_iters", "100"),
        ],
    ),
    (
        "shakespeare-char-cpu",
        "nanoGPT README's CPU run: shakespeare-char at 4x128, block 64, batch 12, 2000 iters, on the CPU",
        Some("shakespeare-char"),
        &[
            ("device", "\"cpu\""),
            ("eval_iters", "20"),
            ("log_interval", "1"),
            ("block_size", "64"),
            ("batch_size", "12"),
            ("n_layer", "4"),
            ("n_head", "4"),
            ("n_embd", "128"),
            ("max_iters", "2000"),
            ("lr_decay_iters", "2000"),
            ("dropout", "0.0"),
        ],
    ),
    (
        "gpt2-124m",
        "nanoGPT's config/train_gpt2.py: GPT-2 124M on OpenWebText, ~0.5M tokens per step",
        None,
        &[
            ("out_dir", "\"out-gpt2\""),
            ("vocab_size", "50304"),
            ("batch_size", "12"),
            ("block_size", "1024"),
            ("gradient_accumulation_steps", "40"),
            ("max_iters", "600000"),
            ("lr_decay_iters", "600000"),
            ("eval_interval", "1000"),
            ("eval_iters", "200"),
            ("log_interval", "10"),
            ("weight_decay", "0.1"),
            ("dtype", "\"bfloat16\""),
            ("device", "\"cuda\""),
        ],
    ),
    (
        "rtx4070-40m",
        "the RTX 4070 run in question: GPT-2 BPE, 4x512 (8 heads), no bias, block 1024, 16 x 32 accum, 6000 iters, fp16",
        None,
        &[
            ("out_dir", "\"out-rtx4070-40m\""),
            ("vocab_size", "50304"),
            ("n_layer", "4"),
            ("n_head", "8"),
            ("n_embd", "512"),
            ("bias", "false"),
            ("block_size", "1024"),
            ("batch_size", "16"),
            ("gradient_accumulation_steps", "32"),
            ("max_iters", "6000"),
            ("lr_decay_iters", "6000"),
            ("dtype", "\"float16\""),
            ("device", "\"cuda\""),
        ],
    ),
];

/// Edit distance, for "did you mean" hints.
fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The known name closest to `name` among `known`, ignoring case first (`MAX_ITERS` is
/// closest to `max_iters`), then with it.
pub fn closest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> &'a str {
    let lower = name.to_lowercase();
    known.into_iter().min_by_key(|k| (levenshtein(&lower, &k.to_lowercase()), levenshtein(name, k))).unwrap_or("")
}

/// Parses a `--set` value: a TOML literal when it is one (`3`, `1e-3`, `true`, `"x"`), else
/// the raw text as a string (so `dataset=data/shakespeare` needs no quotes). Python's
/// `True`/`False`/`None` are accepted too.
pub fn parse_value(raw: &str) -> toml::Value {
    match raw {
        "True" => return toml::Value::Boolean(true),
        "False" => return toml::Value::Boolean(false),
        "None" => return toml::Value::String("auto".into()),
        _ => {}
    }
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(t) => t.get("v").cloned().unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.trim_matches('\'').into()),
    }
}

/// Notices produced while building a config (inert nanoGPT knobs and the like).
#[derive(Default, Debug)]
pub struct Notices(pub Vec<String>);

impl Config {
    /// Sets one knob; an inert nanoGPT knob is skipped (whatever its value) with a note; an
    /// unknown key is an error naming the closest known one.
    pub fn set(&mut self, key: &str, v: &toml::Value, notices: &mut Notices) -> Result<()> {
        if is_inert(key) {
            notices.0.push(inert_note(key, None));
            return Ok(());
        }
        if self.set_typed(key, v)? {
            return Ok(());
        }
        let near = closest(key, KNOBS.iter().map(|k| k.0));
        let case = if near.eq_ignore_ascii_case(key) { "keys are lower-case; " } else { "" };
        bail!("unknown config key `{key}`; did you mean `{near}`? ({case}{KEYS_HINT})")
    }

    /// Applies a `key=value` override. An empty key or value is named as such (an empty string
    /// can still be given as `key=""`).
    pub fn set_str(&mut self, kv: &str, notices: &mut Notices) -> Result<()> {
        let shown = kv.escape_debug(); // one line, whatever the value holds
        let Some((k, raw)) = kv.split_once('=') else { bail!("`--set {shown}`: expected key=value, e.g. `--set max_iters=200`") };
        // a value of only whitespace (a newline prompt) is kept as it is, not trimmed to nothing
        let k = k.trim().trim_start_matches("--");
        let v = if raw.trim().is_empty() { raw } else { raw.trim() };
        if k.is_empty() {
            bail!("`--set {shown}`: the key is empty; expected key=value, e.g. `--set max_iters=200` ({KEYS_HINT})");
        }
        if v.is_empty() && !is_inert(k) {
            if let Some(kind) = knob_kind(k) {
                let default = Config::default().entries().into_iter().find(|e| e.0 == k).map_or(String::new(), |e| e.1);
                bail!("`--set {shown}`: the value is empty; `{k}` takes {kind} (default {default})");
            }
        }
        self.set(k, &parse_value(v), notices)
    }

    /// Applies a preset (and its parent first).
    pub fn apply_preset(&mut self, name: &str, notices: &mut Notices) -> Result<()> {
        let Some(&(_, _, parent, sets)) = PRESETS.iter().find(|p| p.0 == name) else {
            let all = PRESETS.iter().map(|p| p.0).collect::<Vec<_>>().join(", ");
            let near = closest(name, PRESETS.iter().map(|p| p.0));
            // a suggestion only when it is near (a third of the name's letters at most) or starts it
            let lower = name.to_lowercase();
            if levenshtein(&lower, near) <= name.chars().count().div_ceil(3) || near.starts_with(&lower) {
                bail!("unknown preset `{name}`; did you mean `{near}`? (presets: {all})");
            }
            bail!("unknown preset `{name}` (presets: {all})");
        };
        if let Some(p) = parent {
            self.apply_preset(p, notices)?;
        }
        for (k, v) in sets {
            self.set(k, &parse_value(v), notices)?;
        }
        Ok(())
    }

    /// Applies a config file: TOML (`key = value` at top level), or a nanoGPT `config/*.py`
    /// made of `key = literal` lines.
    pub fn apply_file(&mut self, path: &Path, notices: &mut Notices) -> Result<()> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
        if path.extension().is_some_and(|e| e == "py") {
            for (n, line) in text.lines().enumerate() {
                let at = format!("{}:{}", path.display(), n + 1);
                let line = strip_python_comment(line).trim();
                if line.is_empty() || line.starts_with("import ") || line.starts_with("from ") {
                    continue;
                }
                let Some((k, v)) = line.split_once('=') else { bail!("{at}: expected `key = value` (got `{line}`)") };
                let (k, v) = (k.trim(), v.trim());
                // nanoGPT's wandb/compile/DDP knobs: skipped whatever the right-hand side
                // (finetune_shakespeare.py names its run `'ft-' + str(time.time())`)
                if is_inert(k) {
                    notices.0.push(inert_note(k, Some(&at)));
                    continue;
                }
                let v = python_literal(v).with_context(|| format!("{at}: `{k} = {v}`"))?;
                self.set(k, &v, notices).with_context(|| at.clone())?;
            }
            return Ok(());
        }
        let table: toml::Table = text.parse().map_err(|e| anyhow!("{}: not valid TOML: {e}", path.display()))?;
        for (k, v) in &table {
            self.set(k, v, notices).with_context(|| format!("in {}", path.display()))?;
        }
        Ok(())
    }

    /// Range checks; the message says which knob and what is allowed.
    pub fn validate(&self) -> Result<()> {
        let pos = [
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_embd", self.n_embd),
            ("block_size", self.block_size),
            ("batch_size", self.batch_size),
            ("gradient_accumulation_steps", self.gradient_accumulation_steps),
            ("eval_iters", self.eval_iters),
        ];
        for (k, v) in pos {
            if v == 0 {
                bail!("`{k}` must be at least 1");
            }
        }
        if self.eval_interval == 0 || self.log_interval == 0 {
            bail!("`eval_interval` and `log_interval` must be at least 1");
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            bail!("n_embd ({}) must be divisible by n_head ({})", self.n_embd, self.n_head);
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("`dropout` must be in [0, 1) (got {})", self.dropout);
        }
        for (k, v) in [
            ("learning_rate", self.learning_rate),
            ("min_lr", self.min_lr),
            ("weight_decay", self.weight_decay),
            ("grad_clip", self.grad_clip),
        ] {
            if !v.is_finite() || v < 0.0 {
                bail!("`{k}` must be a finite number >= 0 (got {v})");
            }
        }
        for (k, v) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                bail!("`{k}` must be in [0, 1) (got {v})");
            }
        }
        if crate::backend::cpu::Kernels::parse(&self.kernels).is_none() {
            bail!("`kernels` must be \"fast\" or \"reference\" (got {:?})", self.kernels);
        }
        if !(self.init_loss_scale.is_finite() && self.init_loss_scale >= 1.0 && self.init_loss_scale <= f32::MAX as f64) {
            bail!("`init_loss_scale` must be a finite number of at least 1 (got {})", self.init_loss_scale);
        }
        if crate::model::Recompute::from_level(self.recompute).is_none() {
            bail!("`recompute` must be 0, 1 or 2 (got {}); hint: {}", self.recompute, crate::model::Recompute::LEVELS);
        }
        if self.zero_stage > 1 {
            bail!("`zero_stage` must be 0 or 1 (got {}); hint: 1 splits the optimiser state over a data-parallel run's ranks, 0 keeps it whole on each", self.zero_stage);
        }
        if self.on_nonfinite != "abort" && self.on_nonfinite != "skip" {
            bail!("`on_nonfinite` must be \"abort\" or \"skip\" (got {:?})", self.on_nonfinite);
        }
        for (k, v) in [("skip_update_lossz", self.skip_update_lossz), ("skip_update_gradz", self.skip_update_gradz)] {
            if !(v >= 0.0 && v.is_finite()) {
                bail!("`{k}` must be a z-score >= 0 (0: off; got {v})");
            }
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            bail!("`temperature` must be > 0 (got {})", self.temperature);
        }
        let limits = [("n_layer", self.n_layer, 1024, "1024"), ("n_embd", self.n_embd, 65536, "65536")];
        let limits =
            limits.into_iter().chain([("block_size", self.block_size, 1 << 20, "2^20"), ("batch_size", self.batch_size, 1 << 20, "2^20")]);
        for (key, v, most, shown) in limits {
            if v > most {
                bail!("`{key}` = {v} is above the most gptrain takes, {shown} ({most})");
            }
        }
        if Path::new(&self.out_dir).is_file() {
            bail!("out_dir `{}` is a file, not a folder; hint: --set out_dir=DIR (a folder, made if missing)", self.out_dir);
        }
        Ok(())
    }

    /// The `recompute` level (validated; level 0 otherwise).
    pub fn recompute_level(&self) -> crate::model::Recompute {
        crate::model::Recompute::from_level(self.recompute).unwrap_or_default()
    }

    /// The resolved config as a two-column table.
    pub fn table(&self) -> String {
        let entries = self.entries();
        let w = entries.iter().map(|e| e.0.len()).max().unwrap_or(0);
        entries.iter().filter(|(k, _)| !INERT.contains(k)).map(|(k, v)| format!("  {k:<w$}  {v}\n")).collect()
    }
}

/// A line of Python without its comment (a `#` outside quotes and what follows).
fn strip_python_comment(line: &str) -> &str {
    let mut quote = None;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '#') => return &line[..i],
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
    }
    line
}

/// Reads the literal of a nanoGPT config line: numbers, strings, True/False/None, products
/// like `5 * 8`. Anything else (`'ft-' + str(time.time())`) is an error.
fn python_literal(v: &str) -> Result<toml::Value> {
    const READS: &str = "gptrain reads numbers, 'strings', True/False/None and products like `5 * 8` here, not other Python expressions";
    for q in ['\'', '"'] {
        if let Some(s) = v.strip_prefix(q).and_then(|s| s.strip_suffix(q)) {
            if s.contains(q) {
                bail!("{READS}");
            }
            return Ok(toml::Value::String(s.into()));
        }
    }
    if v.contains('*') && !v.contains("**") {
        let mut prod = toml::Value::Integer(1);
        for f in v.split('*') {
            prod = match (prod, python_literal(f.trim())?) {
                (toml::Value::Integer(a), toml::Value::Integer(b)) => {
                    toml::Value::Integer(a.checked_mul(b).ok_or_else(|| anyhow!("`{v}` is out of range"))?)
                }
                (a, b) => toml::Value::Float(f64::from_knob(&a)? * f64::from_knob(&b)?),
            };
        }
        return Ok(prod);
    }
    // Python's number forms that TOML lacks (`.5`, `5.`)
    if v.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        if let Ok(x) = v.parse::<f64>() {
            if v.contains(['.', 'e', 'E']) {
                return Ok(toml::Value::Float(x));
            }
        }
    }
    match parse_value(v) {
        toml::Value::String(s) if s != "auto" => bail!("{READS}"),
        other => Ok(other),
    }
}

trait FromKnob: Sized {
    fn from_knob(v: &toml::Value) -> Result<Self>;
}
impl FromKnob for f64 {
    fn from_knob(v: &toml::Value) -> Result<Self> {
        <f64 as Knob>::from_toml(v).ok_or_else(|| anyhow!("not a number: {v}"))
    }
}

/// Resolves command-line config flags: defaults, then `--preset`, then `--config`, then each
/// `--set` in order.
pub fn resolve(preset: Option<&str>, config: Option<&Path>, sets: &[String]) -> Result<(Config, Notices)> {
    resolve_onto(Config::default(), preset, config, sets)
}

/// As [`resolve`], starting from `base` instead of the defaults (so a caller can tell which
/// knobs the flags named: a value only `base` holds was named by none of them).
pub fn resolve_onto(base: Config, preset: Option<&str>, config: Option<&Path>, sets: &[String]) -> Result<(Config, Notices)> {
    let mut cfg = base;
    let mut notices = Notices::default();
    if let Some(p) = preset {
        cfg.apply_preset(p, &mut notices)?;
    }
    if let Some(f) = config {
        cfg.apply_file(f, &mut notices)?;
    }
    for s in sets {
        cfg.set_str(s, &mut notices)?;
    }
    cfg.validate()?;
    Ok((cfg, notices))
}

/// Physical cores of this machine (Linux: distinct (physical id, core id) pairs), else the
/// logical CPU count.
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else { return logical };
    let mut cores = std::collections::BTreeSet::new();
    let mut phys = String::new();
    for line in info.lines() {
        if let Some((k, v)) = line.split_once(':') {
            match k.trim() {
                "physical id" => phys = v.trim().to_string(),
                "core id" => {
                    cores.insert((phys.clone(), v.trim().to_string()));
                }
                _ => {}
            }
        }
    }
    if cores.is_empty() {
        logical
    } else {
        cores.len().min(logical)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_config_without_a_newer_knob_still_loads() {
        // checkpoints embed the config; one written before a knob existed lacks its key
        let mut cfg = Config { n_layer: 3, ..Config::default() };
        cfg.learning_rate = 1e-3;
        for (key, _) in KNOBS {
            let mut json = serde_json::to_value(&cfg).unwrap();
            json.as_object_mut().unwrap().remove(*key);
            let back: Config = serde_json::from_value(json).unwrap_or_else(|e| panic!("without `{key}`: {e}"));
            let want = Config::default().entries().into_iter().find(|(k, _)| k == key).unwrap();
            assert_eq!(back.entries().into_iter().find(|(k, _)| k == key).unwrap(), want, "`{key}` takes its default");
            // the other knobs keep their saved values
            assert!(*key == "n_layer" || back.n_layer == 3, "without `{key}`");
            assert!(*key == "learning_rate" || back.learning_rate == 1e-3, "without `{key}`");
        }
    }

    #[test]
    fn unknown_key_names_the_closest() {
        let err = resolve(None, None, &["n_embed=64".into()]).unwrap_err().to_string();
        assert!(err.contains("`n_embd`"), "{err}");
        let err = resolve(None, None, &["learning_rat=1".into()]).unwrap_err().to_string();
        assert!(err.contains("`learning_rate`"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = resolve(None, None, &["n_layer=abc".into()]).unwrap_err().to_string();
        assert!(err.contains("`n_layer` must be a non-negative integer"), "{err}");
        let err = resolve(None, None, &["bias=3".into()]).unwrap_err().to_string();
        assert!(err.contains("`bias` must be true or false"), "{err}");
    }

    #[test]
    fn cpu_preset_inherits_shakespeare_char() {
        let (c, _) = resolve(Some("shakespeare-char-cpu"), None, &[]).unwrap();
        assert_eq!((c.n_layer, c.n_head, c.n_embd, c.block_size, c.batch_size), (4, 4, 128, 64, 12));
        assert_eq!((c.gradient_accumulation_steps, c.warmup_iters, c.eval_interval, c.max_iters), (1, 100, 250, 2000));
        assert_eq!((c.learning_rate, c.beta2, c.min_lr, c.dropout, c.eval_iters), (1e-3, 0.99, 1e-4, 0.0, 20));
        // nanoGPT's README runs it with --device=cpu
        assert_eq!(c.device, "cpu");
    }

    #[test]
    fn set_values_parse_like_nanogpt() {
        let (c, notices) = resolve(
            None,
            None,
            &["dataset=data/x".into(), "bias=True".into(), "learning_rate=3e-4".into(), "compile=False".into(), "max_iters=7".into()],
        )
        .unwrap();
        assert_eq!(c.dataset, "data/x");
        assert!(c.bias);
        assert_eq!(c.learning_rate, 3e-4);
        assert_eq!(c.max_iters, 7);
        assert_eq!(notices.0.len(), 1);
    }

    #[test]
    fn nanogpt_py_config_is_read() {
        let dir = std::env::temp_dir().join(format!("gptrain-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("train_x.py");
        std::fs::write(&f, "# comment\nout_dir = 'out-x'\neval_interval = 250 # often\nwandb_log = False\ngradient_accumulation_steps = 5 * 8\nlearning_rate = 1e-3\n").unwrap();
        let (c, _) = resolve(None, Some(&f), &[]).unwrap();
        assert_eq!((c.out_dir.as_str(), c.eval_interval, c.gradient_accumulation_steps, c.learning_rate), ("out-x", 250, 40, 1e-3));
        std::fs::remove_dir_all(&dir).ok();
    }

    /// One file per config in nanoGPT's `config/` folder (eval_gpt2*, finetune_shakespeare,
    /// train_gpt2, train_shakespeare_char), made of the same kinds of lines: comments (some
    /// holding `=`), `import`, quoted strings, numbers in Python's forms, products, True/False,
    /// trailing comments, and wandb lines whose right-hand side is an expression.
    #[test]
    fn every_nanogpt_config_loads() {
        let dir = std::env::temp_dir().join(format!("gptrain-nanogpt-cfgs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let eval = |size: &str, quote: char| {
            format!(
                "# the pretrained {size}, evaluated\n# n_layer=12, n_head=12, n_embd=768 (say)\nbatch_size = 8\neval_iters = 500 # a few batches more for a steadier number\neval_only = True\nwandb_log = False\ninit_from = {quote}{size}{quote}\n"
            )
        };
        let files = [
            ("eval_gpt2.py", eval("gpt2", '\'')),
            ("eval_gpt2_medium.py", eval("gpt2-medium", '\'')),
            ("eval_gpt2_large.py", eval("gpt2-large", '\'')),
            ("eval_gpt2_xl.py", eval("gpt2-xl", '"')),
            (
                "finetune_shakespeare.py",
                "import time\n\nout_dir = 'out-shakespeare'\neval_interval = 5\neval_iters = 40\nwandb_log = False # switch on to log\nwandb_project = 'shakespeare'\nwandb_run_name = 'ft-' + str(time.time())\n\ndataset = 'shakespeare'\ninit_from = 'gpt2-xl' # the biggest one\n\n# save only on a better val loss\nalways_save_checkpoint = False\n\n# 1 * 32 * 1024 = 32,768 tokens per iteration\nbatch_size = 1\ngradient_accumulation_steps = 32\nmax_iters = 20\n\n# a constant learning rate\nlearning_rate = 3e-5\ndecay_lr = False\n".into(),
            ),
            (
                "train_gpt2.py",
                "# GPT-2 124M on one node of 8 GPUs\n# $ torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py\n\nwandb_log = False\nwandb_project = 'owt'\nwandb_run_name='gpt2-124M'\n\n# 12 * 1024 * 5 * 8 = 491,520 tokens per step\nbatch_size = 12\nblock_size = 1024\ngradient_accumulation_steps = 5 * 8\n\nmax_iters = 600000\nlr_decay_iters = 600000\n\neval_interval = 1000\neval_iters = 200\nlog_interval = 10\n\nweight_decay = 1e-1\n".into(),
            ),
            (
                "train_shakespeare_char.py",
                "# a small char-level model\n\nout_dir = 'out-shakespeare-char'\neval_interval = 250 # it overfits, so often\neval_iters = 200\nlog_interval = 10\n\nalways_save_checkpoint = False\n\nwandb_log = False # or True\nwandb_project = 'shakespeare-char'\nwandb_run_name = 'mini-gpt'\n\ndataset = 'shakespeare_char'\ngradient_accumulation_steps = 1\nbatch_size = 64\nblock_size = 256 # characters of context\n\nn_layer = 6\nn_head = 6\nn_embd = 384\ndropout = 0.2\n\nlearning_rate = 1e-3 # small nets take more\nmax_iters = 5000\nlr_decay_iters = 5000 # = max_iters\nmin_lr = 1e-4 # learning_rate / 10\nbeta2 = 0.99 # a bit bigger: few tokens per iteration\n\nwarmup_iters = 100 # hardly needed\n\n# on a laptop:\n# device = 'cpu'  # cpu only\n# compile = False # no torch.compile\n".into(),
            ),
        ];
        let mut resolved = std::collections::HashMap::new();
        for (name, text) in &files {
            let f = dir.join(name);
            std::fs::write(&f, text).unwrap();
            let (c, notices) = resolve(None, Some(&f), &[]).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            for n in &notices.0 {
                assert!(n.contains(&format!("{name}:")) && n.contains("ignored"), "{name}: {n}");
            }
            resolved.insert(*name, (c, notices.0));
        }
        let (c, _) = &resolved["eval_gpt2_xl.py"];
        assert_eq!((c.batch_size, c.eval_iters, c.eval_only, c.init_from.as_str()), (8, 500, true, "gpt2-xl"));
        assert_eq!(resolved["eval_gpt2_medium.py"].0.init_from, "gpt2-medium");
        let (c, notes) = &resolved["finetune_shakespeare.py"];
        assert_eq!(
            (c.out_dir.as_str(), c.eval_interval, c.dataset.as_str(), c.init_from.as_str()),
            ("out-shakespeare", 5, "shakespeare", "gpt2-xl")
        );
        assert_eq!((c.batch_size, c.gradient_accumulation_steps, c.max_iters, c.learning_rate, c.decay_lr), (1, 32, 20, 3e-5, false));
        assert!(!c.always_save_checkpoint);
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert!(notes[2].contains("finetune_shakespeare.py:8: `wandb_run_name` ignored"), "{notes:?}");
        let (c, _) = &resolved["train_gpt2.py"];
        assert_eq!(
            (c.batch_size, c.block_size, c.gradient_accumulation_steps, c.max_iters, c.lr_decay_iters),
            (12, 1024, 40, 600000, 600000)
        );
        assert_eq!((c.eval_interval, c.eval_iters, c.log_interval, c.weight_decay), (1000, 200, 10, 0.1));
        let (c, _) = &resolved["train_shakespeare_char.py"];
        assert_eq!((c.n_layer, c.n_head, c.n_embd, c.dropout, c.block_size, c.batch_size), (6, 6, 384, 0.2, 256, 64));
        assert_eq!(
            (c.beta2, c.warmup_iters, c.min_lr, c.dataset.as_str(), c.device.as_str()),
            (0.99, 100, 1e-4, "shakespeare_char", "auto")
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn an_expression_for_a_key_gptrain_uses_is_an_error_naming_the_line() {
        let dir = std::env::temp_dir().join(format!("gptrain-cfg-expr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("x.py");
        for (line, want) in [
            ("out_dir = 'out-' + str(time.time())", "x.py:3: `out_dir = 'out-' + str(time.time())`: gptrain reads numbers"),
            ("max_iters = int(1e4)", "x.py:3: `max_iters = int(1e4)`"),
            ("n_layer = 2 ** 3", "x.py:3: `n_layer = 2 ** 3`"),
            ("batch_size = 99999999999 * 99999999999", "out of range"),
        ] {
            std::fs::write(&f, format!("import time\nwandb_run_name = 'r' + str(time.time())\n{line}\n")).unwrap();
            let err = format!("{:#}", resolve(None, Some(&f), &[]).unwrap_err());
            assert!(err.contains(want), "{line}: {err}");
        }
        // a `#` inside a string is not a comment; Python's `.5` is a number
        std::fs::write(&f, "out_dir = 'out#1' # where\ndropout = .5\n").unwrap();
        let (c, _) = resolve(None, Some(&f), &[]).unwrap();
        assert_eq!((c.out_dir.as_str(), c.dropout), ("out#1", 0.5));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn set_names_an_empty_key_or_value_and_suggests_ignoring_case() {
        let err = |s: &str| resolve(None, None, &[s.into()]).unwrap_err().to_string();
        assert!(err("=3").contains("`--set =3`: the key is empty"), "{}", err("=3"));
        assert!(err("max_iters=").contains("`--set max_iters=`: the value is empty; `max_iters` takes a non-negative integer"));
        for k in ["MAX_ITERS", "Max_Iters"] {
            let e = err(&format!("{k}=5"));
            assert!(e.contains(&format!("unknown config key `{k}`; did you mean `max_iters`?")), "{e}");
        }
        // an empty string is still given with quotes
        assert_eq!(resolve(None, None, &["start=\"\"".into()]).unwrap().0.start, "");
    }

    #[test]
    fn every_knob_is_in_one_group() {
        let grouped: Vec<&str> = GROUPS.iter().flat_map(|g| g.1.iter().copied()).collect();
        assert_eq!(grouped, KNOBS.iter().map(|k| k.0).collect::<Vec<_>>());
    }

    #[test]
    fn recompute_takes_a_level_and_a_bad_one_is_a_one_line_error_with_a_hint() {
        for level in 0..3 {
            let (c, _) = resolve(None, None, &[format!("recompute={level}")]).unwrap();
            assert_eq!(c.recompute_level().level(), level);
        }
        assert_eq!(Config::default().recompute_level(), crate::model::Recompute::Off);
        let err = format!("{:#}", resolve(None, None, &["recompute=3".into()]).unwrap_err());
        assert!(err.starts_with("`recompute` must be 0, 1 or 2 (got 3); hint: 0 keeps every activation"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        let err = resolve(None, None, &["recompute=-1".into()]).unwrap_err().to_string();
        assert!(err.contains("`recompute` must be a non-negative integer"), "{err}");
    }

    #[test]
    fn indivisible_heads_are_rejected() {
        let err = resolve(None, None, &["n_embd=100".into(), "n_head=3".into()]).unwrap_err().to_string();
        assert!(err.contains("divisible"), "{err}");
    }
}
