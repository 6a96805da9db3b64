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
    ($( $name:ident : $ty:ty = $default:expr ; $doc:literal )*) => {
        /// Every knob gptrain knows, with nanoGPT's names and (train.py) defaults. A knob
        /// missing from a saved config (a checkpoint written before the knob existed) takes its
        /// default, so old checkpoints still resume.
        #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(default)]
        pub struct Config {
            $( #[doc = $doc] pub $name: $ty, )*
        }
        impl Default for Config {
            fn default() -> Self {
                Config { $( $name: $default, )* }
            }
        }
        /// (name, description) of every knob.
        pub const KNOBS: &[(&str, &str)] = &[ $( (stringify!($name), $doc), )* ];
        impl Config {
            fn set_typed(&mut self, key: &str, v: &toml::Value) -> Result<bool> {
                match key {
                    $( stringify!($name) => {
                        self.$name = <$ty as Knob>::from_toml(v).ok_or_else(|| anyhow!(
                            "`{}` must be {} (got {})", key, <$ty as Knob>::KIND, v))?;
                        Ok(true)
                    } )*
                    _ => Ok(false),
                }
            }
            /// (name, value) of every knob, for the table printed at start.
            pub fn entries(&self) -> Vec<(&'static str, String)> {
                vec![ $( (stringify!($name), Knob::show(&self.$name)), )* ]
            }
        }
    };
}

knobs! {
    // model
    n_layer: usize = 12; "number of transformer blocks"
    n_head: usize = 12; "attention heads per block"
    n_embd: usize = 768; "embedding width (channels)"
    block_size: usize = 1024; "context length in tokens"
    bias: bool = false; "biases in Linear and LayerNorm layers"
    dropout: f64 = 0.0; "dropout probability (embedding, attention, residual)"
    vocab_size: Option<usize> = None; "vocabulary size (auto: from the dataset's meta)"
    pad_vocab: bool = false; "pad the vocabulary to a multiple of 64 (padding takes no part in the loss)"
    // data
    dataset: String = "builtin".into(); "prepared data directory (a bare name not found here is looked for under `data/`, as nanoGPT does), or `builtin` (the built-in Shakespeare corpus, char-level)"
    batch_size: usize = 12; "micro-batch size in sequences"
    gradient_accumulation_steps: usize = 40; "micro-batches per optimiser step"
    // optimiser
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
    // eval, logging, checkpoints
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
    peak_tflops: f64 = 0.0; "override the device's peak TFLOP/s for MFU (0: from the device table)"
    seed: u64 = 1337; "seed of every random stream"
    threads: usize = 0; "worker threads (0: physical cores)"
    kernels: String = "fast".into(); "CPU kernels: `fast`, or `reference` (the readable ones the fast ones are tested against)"
    device: String = "cpu".into(); "compute device (`cpu` in this build)"
    dtype: String = "float32".into(); "compute precision (`float32` on cpu)"
    // sampling (nanoGPT sample.py)
    start: String = "\n".into(); "prompt text, or FILE:path"
    num_samples: usize = 10; "samples to draw"
    max_new_tokens: usize = 500; "tokens per sample"
    temperature: f64 = 0.8; "sampling temperature (> 0)"
    top_k: usize = 200; "keep the top k tokens (0: all)"
    // accepted for nanoGPT compatibility, no effect here
    compile: bool = false; "nanoGPT's torch.compile switch (no effect)"
    backend: String = "nccl".into(); "nanoGPT's DDP backend (no effect)"
    wandb_log: bool = false; "nanoGPT's wandb switch (no effect)"
    wandb_project: String = "owt".into(); "nanoGPT's wandb project (no effect)"
    wandb_run_name: String = "gpt2".into(); "nanoGPT's wandb run name (no effect)"
}

/// Knobs accepted so nanoGPT configs work unchanged, with no effect here.
const INERT: &[&str] = &["compile", "backend", "wandb_log", "wandb_project", "wandb_run_name"];

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
        "nanoGPT README's CPU run: shakespeare-char at 4x128, block 64, batch 12, 2000 iters",
        Some("shakespeare-char"),
        &[
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

/// The known name closest to `name` among `known`.
pub fn closest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> &'a str {
    known.into_iter().min_by_key(|k| levenshtein(name, k)).unwrap_or("")
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
    /// Sets one knob; an unknown key is an error naming the closest known one.
    pub fn set(&mut self, key: &str, v: &toml::Value, notices: &mut Notices) -> Result<()> {
        if self.set_typed(key, v)? {
            if INERT.contains(&key) {
                notices.0.push(format!("note: `{key}` is a nanoGPT knob with no effect in gptrain; ignored"));
            }
            return Ok(());
        }
        bail!(
            "unknown config key `{key}`; did you mean `{}`? (`gptrain train --help` lists the flags; README lists every key)",
            closest(key, KNOBS.iter().map(|k| k.0))
        )
    }

    /// Applies a `key=value` override.
    pub fn set_str(&mut self, kv: &str, notices: &mut Notices) -> Result<()> {
        let (k, v) = kv.split_once('=').with_context(|| format!("`--set {kv}`: expected key=value"))?;
        let k = k.trim().trim_start_matches("--");
        self.set(k, &parse_value(v.trim()), notices)
    }

    /// Applies a preset (and its parent first).
    pub fn apply_preset(&mut self, name: &str, notices: &mut Notices) -> Result<()> {
        let Some(&(_, _, parent, sets)) = PRESETS.iter().find(|p| p.0 == name) else {
            bail!(
                "unknown preset `{name}`; did you mean `{}`? (presets: {})",
                closest(name, PRESETS.iter().map(|p| p.0)),
                PRESETS.iter().map(|p| p.0).collect::<Vec<_>>().join(", ")
            );
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
                let line = line.split('#').next().unwrap_or("").trim();
                if line.is_empty() || line.starts_with("import ") || line.starts_with("from ") {
                    continue;
                }
                let (k, v) = line.split_once('=').with_context(|| format!("{}:{}: expected `key = value`", path.display(), n + 1))?;
                let v = python_literal(v.trim()).with_context(|| format!("{}:{}: cannot read `{}`", path.display(), n + 1, v.trim()))?;
                self.set(k.trim(), &v, notices).with_context(|| format!("{}:{}", path.display(), n + 1))?;
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
        if self.n_layer > 1024 || self.n_embd > 65536 || self.block_size > 1 << 20 || self.batch_size > 1 << 20 {
            bail!("model or batch shape is out of range (n_layer <= 1024, n_embd <= 65536, block_size <= 2^20, batch_size <= 2^20)");
        }
        Ok(())
    }

    /// The resolved config as a two-column table.
    pub fn table(&self) -> String {
        let entries = self.entries();
        let w = entries.iter().map(|e| e.0.len()).max().unwrap_or(0);
        entries.iter().filter(|(k, _)| !INERT.contains(k)).map(|(k, v)| format!("  {k:<w$}  {v}\n")).collect()
    }
}

/// Reads the literal of a nanoGPT config line: numbers, strings, True/False/None, products
/// like `5 * 8`.
fn python_literal(v: &str) -> Result<toml::Value> {
    if let Some(s) =
        v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')).or_else(|| v.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
    {
        return Ok(toml::Value::String(s.into()));
    }
    if v.contains('*') {
        let mut prod = toml::Value::Integer(1);
        for f in v.split('*') {
            prod = match (prod, python_literal(f.trim())?) {
                (toml::Value::Integer(a), toml::Value::Integer(b)) => toml::Value::Integer(a * b),
                (a, b) => toml::Value::Float(f64::from_knob(&a)? * f64::from_knob(&b)?),
            };
        }
        return Ok(prod);
    }
    match parse_value(v) {
        toml::Value::String(s) if s != "auto" => bail!("unsupported expression `{s}`"),
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
    let mut cfg = Config::default();
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

    #[test]
    fn indivisible_heads_are_rejected() {
        let err = resolve(None, None, &["n_embd=100".into(), "n_head=3".into()]).unwrap_err().to_string();
        assert!(err.contains("divisible"), "{err}");
    }
}
