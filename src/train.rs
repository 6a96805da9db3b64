//! The training loop: nanoGPT's train.py, with honest time.
//!
//! Order per iteration `it` (= optimiser steps done): evaluate when `it % eval_interval == 0`
//! (and checkpoint when val improved, or always with `always_save_checkpoint`); stop at
//! `max_iters` (always checkpointing there); else one optimiser step over
//! `gradient_accumulation_steps` micro-batches. Batches and dropout masks are functions of
//! (seed, iteration, micro-step), so resuming from `ckpt-N` replays exactly what an
//! uninterrupted run does from N.

use crate::backend::cpu::Cpu;
use crate::backend::{Backend, Precision, Scalar};
use crate::checkpoint::{self, TrainState};
use crate::config::Config;
use crate::data::{Dataset, Split};
use crate::model::{pad_vocab, Gpt, ModelConfig};
use crate::optim::{train_step_guarded, OptimConfig, OutlierDetector, StepStats};
use crate::perf::{device, flops, meter::Meter, meter::Reading};
use crate::rng;
use crate::tensorboard::{self, TensorBoard};
use crate::tensorfile;
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Set by the Ctrl-C / SIGTERM handler: finish the iteration, checkpoint, stop.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// Set while a run's final checkpoint waits to be tried again (`retry_last_save`), when a
/// Ctrl-C means giving up on it rather than writing one.
pub static WAITING_TO_SAVE: AtomicBool = AtomicBool::new(false);

/// What the loop reports; the CLI prints it.
pub trait Observer {
    fn message(&mut self, text: &str);
    fn start(&mut self, info: &StartInfo);
    fn iter(&mut self, log: &IterLog);
    fn eval(&mut self, it: u64, train_loss: f32, val_loss: f32, secs: f64);
    fn checkpoint(&mut self, path: &Path, secs: f64);
    fn finish(&mut self, summary: &Summary);
}

/// Facts about the run, reported once at start.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StartInfo {
    pub model: ModelConfig,
    pub params: usize,
    pub params_nanogpt: usize,
    pub tokens_per_iter: usize,
    pub flops_per_iter: f64,
    pub device: String,
    pub peak_flops: Option<f64>,
    pub peak_source: String,
    pub threads: usize,
    pub dataset: String,
    pub start_iter: u64,
    pub max_iters: u64,
    /// `eval_only`: one evaluation, no training.
    pub eval_only: bool,
    pub memory_bytes: u64,
}

/// One logged iteration.
#[derive(Clone, Debug, serde::Serialize)]
pub struct IterLog {
    pub iter: u64,
    pub max_iters: u64,
    pub loss: f32,
    pub lr: f32,
    pub grad_norm: f32,
    /// This iteration's own time (no eval or checkpoint inside).
    pub ms: f64,
    /// No update was made: a non-finite loss or norm, or (with `outlier`) the outlier guard.
    pub skipped: bool,
    pub outlier: bool,
    #[serde(flatten)]
    pub reading: Reading,
}

/// The closing summary.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    pub iters: u64,
    pub warmup_iters: usize,
    /// Seconds by phase: warm-up, training, eval, checkpoint.
    pub warmup_s: f64,
    pub train_s: f64,
    pub eval_s: f64,
    pub checkpoint_s: f64,
    pub total_s: f64,
    pub steady_ms: Option<f64>,
    pub tokens_per_sec: Option<f64>,
    pub mfu: Option<f64>,
    pub final_train_loss: Option<f32>,
    pub final_val_loss: Option<f32>,
    pub skipped_updates: u64,
    pub out_dir: String,
    /// The checkpoint this run wrote last (None when it wrote none).
    pub last_checkpoint: Option<PathBuf>,
}

impl Summary {
    /// A run that trained nothing (resumed at or past `max_iters`).
    fn nothing(out_dir: &Path) -> Summary {
        Summary {
            iters: 0,
            warmup_iters: 0,
            warmup_s: 0.0,
            train_s: 0.0,
            eval_s: 0.0,
            checkpoint_s: 0.0,
            total_s: 0.0,
            steady_ms: None,
            tokens_per_sec: None,
            mfu: None,
            final_train_loss: None,
            final_val_loss: None,
            skipped_updates: 0,
            out_dir: out_dir.display().to_string(),
            last_checkpoint: None,
        }
    }
}

/// Checks the knobs this build cannot honour.
pub fn check_device(cfg: &Config) -> Result<Precision> {
    if cfg.device != "cpu" {
        bail!("device `{}` is not available: this build has only the CPU backend (a CUDA backend is planned); use `--set device=cpu` (and see `gptrain estimate --device ...` for GPU timings)", cfg.device);
    }
    let dtype =
        Precision::parse(&cfg.dtype).with_context(|| format!("unknown dtype `{}` (float32, tfloat32, float16, bfloat16)", cfg.dtype))?;
    if dtype != Precision::F32 {
        bail!("dtype `{}` is not supported by the CPU backend, which computes in float32; use `--set dtype=float32`", cfg.dtype);
    }
    Ok(dtype)
}

/// The model shape a config asks for over a dataset.
pub fn model_config(cfg: &Config, data_vocab: usize) -> Result<ModelConfig> {
    let vocab = cfg.vocab_size.unwrap_or(data_vocab);
    if vocab < data_vocab {
        bail!("vocab_size {vocab} is smaller than the dataset's vocabulary ({data_vocab})");
    }
    let padded = if cfg.pad_vocab { pad_vocab(vocab) } else { vocab };
    ModelConfig {
        n_layer: cfg.n_layer,
        n_head: cfg.n_head,
        n_embd: cfg.n_embd,
        block_size: cfg.block_size,
        vocab_size: vocab,
        padded_vocab_size: padded,
        bias: cfg.bias,
    }
    .validate()
}

fn optim_config(cfg: &Config) -> OptimConfig {
    OptimConfig {
        learning_rate: cfg.learning_rate as f32,
        min_lr: cfg.min_lr as f32,
        warmup_iters: cfg.warmup_iters,
        lr_decay_iters: cfg.lr_decay_iters,
        decay_lr: cfg.decay_lr,
        weight_decay: cfg.weight_decay as f32,
        beta1: cfg.beta1 as f32,
        beta2: cfg.beta2 as f32,
        grad_clip: cfg.grad_clip as f32,
    }
}

/// Knobs that fix the model's shape: they must match a checkpoint on resume.
const SHAPE_KEYS: &[&str] = &["n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "pad_vocab"];

/// Where training starts from.
struct Init {
    model_cfg: ModelConfig,
    params: Vec<f32>,
    m: Option<Vec<f32>>,
    v: Option<Vec<f32>>,
    start_iter: u64,
    best_val: Option<f32>,
    skipped: u64,
    outliers: [OutlierDetector; 2],
    resumed: bool,
}

impl Init {
    /// A run from iteration 0 with these weights (from scratch or from a GPT-2 file).
    fn fresh(model_cfg: ModelConfig, params: Vec<f32>) -> Self {
        Init {
            model_cfg,
            params,
            m: None,
            v: None,
            start_iter: 0,
            best_val: None,
            skipped: 0,
            outliers: Default::default(),
            resumed: false,
        }
    }
}

/// A fresh run (`scratch` or fine-tuning) must not mix its checkpoints with another run's in
/// the same out_dir: a save would replace theirs at equal iterations, pruning would delete its
/// own at lower ones, and a later resume would pick up theirs. Refuses, naming what is there
/// and the ways out, unless `replace_checkpoints` asks to delete them (done once the start
/// weights are in memory: a fine-tuning source may live in that out_dir).
fn check_fresh_out_dir(cfg: &Config, out_dir: &Path) -> Result<()> {
    let found = checkpoint::list(out_dir);
    let Some((_, newest)) = found.first() else { return Ok(()) };
    if cfg.replace_checkpoints || cfg.eval_only {
        return Ok(());
    }
    let n = found.len();
    bail!(
        "out_dir {} already holds {n} checkpoint{} of another run (newest: {}, {}); a new `{}` run there would mix its checkpoints with them. Choose one: `--set init_from=resume` continues that run, `--set out_dir=NEW_DIR` starts this one elsewhere, `--set replace_checkpoints=true` deletes them and starts over",
        out_dir.display(),
        if n == 1 { "" } else { "s" },
        newest.display(),
        checkpoint::describe(newest),
        if cfg.init_from == "scratch" { "scratch" } else { "fine-tuning" }
    )
}

/// A checkpoint's vocabulary must be the dataset's: the same token ids for the same text.
fn check_same_vocabulary(ck: &crate::data::Meta, ds: &crate::data::Meta, dir: &Path, hint: &str) -> Result<()> {
    if ck.tokenizer != ds.tokenizer || ck.vocab_size != ds.vocab_size || ck.itos != ds.itos {
        bail!(
            "the dataset's vocabulary ({} tokenizer, {} tokens) does not match the checkpoint's ({} tokenizer, {} tokens) in {}; hint: {hint}",
            ds.tokenizer,
            ds.vocab_size,
            ck.tokenizer,
            ck.vocab_size,
            dir.display()
        );
    }
    Ok(())
}

fn initialise(cfg: &Config, ds: &Dataset, obs: &mut dyn Observer) -> Result<Init> {
    let out_dir = Path::new(&cfg.out_dir);
    if cfg.init_from != "resume" {
        let n = checkpoint::clean_leftovers(out_dir);
        if n > 0 {
            obs.message(&format!("removed {n} unfinished checkpoint write(s) in {}", out_dir.display()));
        }
        check_fresh_out_dir(cfg, out_dir)?;
    }
    let init = initialise_from(cfg, ds, obs)?;
    if cfg.init_from != "resume" && cfg.replace_checkpoints && !cfg.eval_only {
        let n = checkpoint::remove_all(out_dir)?;
        if n > 0 {
            let _ = std::fs::remove_file(out_dir.join("metrics.jsonl"));
            let _ = std::fs::remove_dir_all(out_dir.join("tensorboard"));
            obs.message(&format!(
                "deleted the {n} checkpoint{} (and metrics.jsonl and tensorboard/) of an earlier run in {}, as replace_checkpoints asks",
                if n == 1 { "" } else { "s" },
                out_dir.display()
            ));
        }
    }
    Ok(init)
}

fn initialise_from(cfg: &Config, ds: &Dataset, obs: &mut dyn Observer) -> Result<Init> {
    let out_dir = Path::new(&cfg.out_dir);
    match cfg.init_from.as_str() {
        "scratch" => {
            let model_cfg = model_config(cfg, ds.meta.vocab_size)?;
            let layout = crate::model::ParamLayout::new(&model_cfg);
            let params = crate::model::gpt::init_params(&model_cfg, &layout, cfg.seed);
            Ok(Init::fresh(model_cfg, params))
        }
        "resume" => {
            let n = checkpoint::clean_leftovers(out_dir);
            if n > 0 {
                obs.message(&format!("removed {n} unfinished checkpoint write(s) in {}", out_dir.display()));
            }
            let ck = checkpoint::load_latest(out_dir, cfg.resume_fallback, &mut |w| obs.message(&w))?;
            let saved = &ck.state.config;
            let (a, b) = (saved.entries(), cfg.entries());
            for key in SHAPE_KEYS {
                let (x, y) = (&a.iter().find(|e| e.0 == *key).unwrap().1, &b.iter().find(|e| e.0 == *key).unwrap().1);
                if x != y && !(*key == "vocab_size" && y == "auto") {
                    bail!("`{key}` is {y} but the checkpoint {} was trained with {x}; shape keys must match on resume", ck.dir.display());
                }
            }
            check_same_vocabulary(&ck.state.meta, &ds.meta, &ck.dir, "resume with the dataset the run was trained on")?;
            obs.message(&format!("resuming from {} (iteration {})", ck.dir.display(), ck.state.iter));
            Ok(Init {
                model_cfg: ck.state.model.clone(),
                params: ck.params,
                m: ck.m,
                v: ck.v,
                start_iter: ck.state.iter,
                best_val: ck.state.best_val_loss,
                skipped: ck.state.skipped_updates,
                outliers: ck.state.outliers.clone(),
                resumed: true,
            })
        }
        path => {
            let file = checkpoint::hf_weights_file(path)?;
            let tf = tensorfile::read(&file)?;
            let dir = file.parent().unwrap_or(Path::new("."));
            let mut model_cfg = if checkpoint::is_gptrain_checkpoint(dir) {
                // a gptrain checkpoint: verified, and its shape (bias, true vocabulary) and
                // tokenizer come from its training state, not guessed from the tensors
                let ck = checkpoint::load(dir)?;
                check_same_vocabulary(&ck.state.meta, &ds.meta, dir, "fine-tune on data prepared with the checkpoint's tokenizer")?;
                ck.state.model
            } else {
                checkpoint::hf_shape(&tf, dir, cfg.n_head).with_context(|| format!("{}", file.display()))?
            };
            if model_cfg.vocab_size < ds.meta.vocab_size {
                bail!(
                    "{} has a vocabulary of {} tokens but the dataset's has {}: the model cannot read this data",
                    file.display(),
                    model_cfg.vocab_size,
                    ds.meta.vocab_size
                );
            }
            let file_block = model_cfg.block_size;
            if cfg.block_size < file_block {
                model_cfg.block_size = cfg.block_size; // nanoGPT's crop_block_size
            }
            let layout = crate::model::ParamLayout::new(&model_cfg);
            let params = checkpoint::from_hf(&tf, &model_cfg, &layout).with_context(|| format!("{}", file.display()))?;
            obs.message(&format!(
                "initialised from {} ({} layers, {} heads, {} dims, vocab {}, context {} of {}); shape knobs come from the file",
                file.display(),
                model_cfg.n_layer,
                model_cfg.n_head,
                model_cfg.n_embd,
                model_cfg.vocab_size,
                model_cfg.block_size,
                file_block
            ));
            Ok(Init::fresh(model_cfg, params))
        }
    }
}

/// Mean loss over `eval_iters` batches of each split; batches are a function of (seed,
/// iteration), so evaluation never shifts the training stream.
fn estimate_loss<B: Backend>(model: &mut Gpt<B>, ds: &Dataset, cfg: &Config, it: u64) -> Result<(f32, f32)> {
    let (b, t) = (cfg.batch_size, model.cfg.block_size);
    let mut out = [0.0f32; 2];
    for (si, split) in [Split::Train, Split::Val].into_iter().enumerate() {
        // the batches' mean losses add up on the backend, read once per split
        model.reset_scalars()?;
        for k in 0..cfg.eval_iters {
            let key = rng::key(cfg.seed, rng::STREAM_EVAL_BATCH, &[it, si as u64, k as u64]);
            let (x, y) = ds.batch(split, key, b, t);
            B::step_scope(|| -> Result<()> {
                model.set_batch(&x, &y, b, t)?;
                model.forward(None, None)
            })?;
        }
        let sum = model.read_scalars()?[Scalar::LossSum as usize];
        out[si] = (sum / cfg.eval_iters as f64) as f32;
    }
    Ok((out[0], out[1]))
}

/// The micro-batches of training iteration `it`.
pub fn train_batches(ds: &Dataset, seed: u64, it: u64, accum: usize, b: usize, t: usize) -> Vec<(Vec<u32>, Vec<u32>)> {
    (0..accum).map(|m| ds.batch(Split::Train, rng::key(seed, rng::STREAM_TRAIN_BATCH, &[it, m as u64]), b, t)).collect()
}

/// Appends JSON lines to `out_dir/metrics.jsonl`.
struct Metrics(Option<std::fs::File>);

impl Metrics {
    fn write(&mut self, v: serde_json::Value) {
        if let Some(f) = &mut self.0 {
            if writeln!(f, "{v}").is_err() {
                self.0 = None; // a full disk must not stop training; checkpoints report it
            }
        }
    }
}

/// The CPU backend with the kernels `cfg` names (validated by `Config`; `fast` otherwise).
pub fn cpu_backend(cfg: &Config) -> Cpu {
    Cpu { kernels: crate::backend::cpu::Kernels::parse(&cfg.kernels).unwrap_or_default() }
}

/// Runs training with `cfg` on the backend it names, on the current rayon pool.
pub fn run(cfg: &Config, obs: &mut dyn Observer) -> Result<Summary> {
    check_device(cfg)?;
    run_with(cpu_backend(cfg), cfg, obs)
}

/// The loop itself, on any backend: it touches parameters and optimizer moments only through
/// the model (which reaches them through the backend's ops and copies), so a device backend
/// slots in here.
pub fn run_with<B: Backend>(backend: B, cfg: &Config, obs: &mut dyn Observer) -> Result<Summary> {
    let t_run = Instant::now();
    let ds = Dataset::open(&cfg.dataset)?;
    let init = initialise(cfg, &ds, obs)?;
    if init.resumed && init.start_iter >= cfg.max_iters && !cfg.eval_only {
        obs.message(&format!(
            "nothing to do: the checkpoint is at iteration {} and max_iters is {}; raise max_iters (`--set max_iters=N`, an absolute count) to train further",
            init.start_iter, cfg.max_iters
        ));
        return Ok(Summary::nothing(Path::new(&cfg.out_dir)));
    }
    let mc = init.model_cfg.clone();
    ds.check_block_size(mc.block_size)?;
    let (b, t, accum) = (cfg.batch_size, mc.block_size, cfg.gradient_accumulation_steps);
    let out_dir = PathBuf::from(&cfg.out_dir);

    // telemetry: one FLOPs model, the real peak of the device the backend runs on
    let dev = backend.device(Precision::F32);
    let peak = if cfg.peak_tflops > 0.0 { Some(cfg.peak_tflops * 1e12) } else { dev.peak_flops };
    let peak_source = if cfg.peak_tflops > 0.0 { "--set peak_tflops".to_string() } else { dev.peak_source.clone() };
    let flops_per_iter = flops::flops_per_iter(&mc, b, t, accum);
    let tokens_per_iter = b * t * accum;
    let mem = flops::memory(&mc, b, t, 4, false, dev.memory_model).total();
    if let Some(warning) = check_memory(mem, dev.memory)? {
        obs.message(&warning);
    }

    let mut model = Gpt::zeros(backend, mc.clone())?;
    model.set_params(&init.params)?;
    if let (Some(m), Some(v)) = (&init.m, &init.v) {
        model.set_optimizer_state(m, v)?;
    }
    let p = flops::params(&mc);
    obs.start(&StartInfo {
        model: mc.clone(),
        params: p.total,
        params_nanogpt: p.nanogpt,
        tokens_per_iter,
        flops_per_iter,
        device: dev.description.clone(),
        peak_flops: peak,
        peak_source,
        threads: dev.workers,
        dataset: ds.source.clone(),
        start_iter: init.start_iter,
        max_iters: cfg.max_iters,
        eval_only: cfg.eval_only,
        memory_bytes: mem,
    });

    std::fs::create_dir_all(&out_dir).with_context(|| format!("cannot create out_dir {}", out_dir.display()))?;
    let mut metrics = Metrics(std::fs::OpenOptions::new().create(true).append(true).open(out_dir.join("metrics.jsonl")).ok());
    metrics.write(serde_json::json!({"type": "start", "iter": init.start_iter, "max_iters": cfg.max_iters, "tokens_per_iter": tokens_per_iter, "flops_per_iter": flops_per_iter, "peak_flops": peak, "params": p.total, "config": cfg}));

    let opt = optim_config(cfg);
    let dropout = (cfg.dropout > 0.0).then_some((cfg.dropout as f32, cfg.seed));
    let mut meter = Meter::new(tokens_per_iter as f64, flops_per_iter, peak);
    let mut best_val = init.best_val;
    let mut skipped = init.skipped;
    let mut outliers = init.outliers.clone();
    let mut last_eval: Option<(f32, f32)> = None;
    let mut last_saved: Option<u64> = None;
    let mut last_checkpoint: Option<PathBuf> = None;
    let mut it = init.start_iter;
    let first_iter = it;
    // a resumed run does not evaluate again at its checkpoint's iteration
    let evaluates_at = |it: u64| it.is_multiple_of(cfg.eval_interval) && !(init.resumed && it == first_iter) || cfg.eval_only;
    let mut tb = TensorBoard::off();
    if cfg.tensorboard {
        let warning;
        (tb, warning) = TensorBoard::open(&out_dir, first_iter, evaluates_at(first_iter), &tensorboard::markdown_table(&cfg.entries()));
        if let Some(w) = warning {
            obs.message(&w);
        }
    }

    let state = |it: u64, val: Option<f32>, best: Option<f32>, skipped: u64, outliers: &[OutlierDetector; 2]| TrainState {
        format: checkpoint::FORMAT_VERSION,
        iter: it,
        val_loss: val,
        best_val_loss: best,
        seed: cfg.seed,
        model: mc.clone(),
        config: cfg.clone(),
        meta: ds.meta.clone(),
        skipped_updates: skipped,
        outliers: outliers.clone(),
    };
    let save = |model: &Gpt<B>, st: TrainState, meter: &mut Meter, obs: &mut dyn Observer, metrics: &mut Metrics| -> Result<PathBuf> {
        let t0 = Instant::now();
        // host copies of the parameters and AdamW moments (a device backend copies them back)
        let params = model.params_host()?;
        let mv = model.optimizer_state()?;
        let (m, v) = (mv.as_ref().map(|x| x.0.as_slice()), mv.as_ref().map(|x| x.1.as_slice()));
        let files = checkpoint::serialize(&model.layout, &st, &params, m, v)?;
        let path = checkpoint::save(&out_dir, &files, st.iter, None)?;
        checkpoint::prune(&out_dir, cfg.keep_checkpoints, st.iter);
        let secs = t0.elapsed().as_secs_f64();
        meter.record_checkpoint(secs);
        obs.checkpoint(&path, secs);
        metrics.write(serde_json::json!({"type": "checkpoint", "iter": st.iter, "path": path, "secs": secs}));
        Ok(path)
    };

    // the run's last checkpoint (at max_iters or on Ctrl-C) is retried rather than lost
    let retry_limit = Duration::from_secs(cfg.checkpoint_retry_s);
    let unsaved = format!(
        "the training since the last checkpoint exists only in memory: free space in {} (or fix its permissions)",
        out_dir.display()
    );

    loop {
        let evaluate = evaluates_at(it);
        if evaluate {
            let t0 = Instant::now();
            let (tl, vl) = estimate_loss(&mut model, &ds, cfg, it)?;
            let secs = t0.elapsed().as_secs_f64();
            meter.record_eval(secs);
            obs.eval(it, tl, vl, secs);
            metrics.write(serde_json::json!({"type": "eval", "iter": it, "train_loss": tl, "val_loss": vl, "secs": secs}));
            if let Some(w) = tb.eval(it, tl, vl) {
                obs.message(&w);
            }
            last_eval = Some((tl, vl));
            let improved = best_val.is_none_or(|b| vl < b);
            if improved {
                best_val = Some(vl);
            }
            if cfg.eval_only {
                break;
            }
            if (improved || cfg.always_save_checkpoint) && it > 0 && it < cfg.max_iters {
                // a failed mid-run save (disk full, permissions) is reported and training goes
                // on with its state in memory; the previous checkpoint is intact
                match save(&model, state(it, Some(vl), best_val, skipped, &outliers), &mut meter, obs, &mut metrics) {
                    Ok(p) => (last_saved, last_checkpoint) = (Some(it), Some(p)),
                    Err(e) => obs.message(&format!("warning: {e:#}; training continues and will try again at the next checkpoint")),
                }
            }
        }
        if it >= cfg.max_iters {
            if last_saved != Some(it) && it > first_iter {
                let val = last_eval.filter(|_| evaluate).map(|e| e.1);
                let st = state(it, val, best_val, skipped, &outliers);
                let p = retry_last_save(obs, retry_limit, RETRY_EVERY, &STOP, &unsaved, |obs| {
                    save(&model, st.clone(), &mut meter, obs, &mut metrics)
                })?;
                last_checkpoint = Some(p);
            }
            break;
        }

        let batches = train_batches(&ds, cfg.seed, it, accum, b, t);
        let t0 = Instant::now();
        // the outlier guard (llm.c's): z-scores against the last 128 iterations; both windows
        // see every finite value, skipped or not
        let mut outlier = false;
        let mut accept = |loss: f32, norm: f32| {
            let lz = outliers[0].update(loss as f64);
            let gz = outliers[1].update(norm as f64);
            let over = |z: Option<f64>, thr: f64| thr > 0.0 && z.is_some_and(|z| z > thr);
            outlier = over(lz, cfg.skip_update_lossz) || over(gz, cfg.skip_update_gradz);
            !outlier
        };
        let s: StepStats = train_step_guarded(&mut model, &batches, b, t, it, &opt, dropout, &mut accept)?;
        let secs = t0.elapsed().as_secs_f64();
        let nonfinite = !(s.loss.is_finite() && s.grad_norm.is_finite());
        if nonfinite {
            if cfg.on_nonfinite == "abort" {
                bail!(
                    "non-finite {} at iteration {it} (loss {}, gradient norm {}, learning rate {:.3e}); no update was made and no checkpoint written. Likely cause: the learning rate is too high or the gradients exploded; try a lower learning_rate, grad_clip = 1.0, or `--set on_nonfinite=skip`",
                    if s.loss.is_finite() { "gradient norm" } else { "loss" },
                    s.loss,
                    s.grad_norm,
                    s.lr
                );
            }
            skipped += 1;
        }
        if outlier {
            skipped += 1;
        }
        meter.record_iter(secs);
        it += 1;
        // an interrupted run logs the iteration it stops after, whatever log_interval says
        let stopping = STOP.load(Ordering::SeqCst);
        if (it - 1).is_multiple_of(cfg.log_interval) || it == cfg.max_iters || stopping {
            let iters_left = cfg.max_iters - it;
            let evals_left = (it..=cfg.max_iters).filter(|i| i.is_multiple_of(cfg.eval_interval)).count() as u64;
            let ckpts_left = if cfg.always_save_checkpoint { evals_left } else { 1 };
            let reading = meter.reading(iters_left, evals_left, ckpts_left, 2.0 * cfg.eval_iters as f64, accum as f64);
            let log = IterLog {
                iter: it - 1,
                max_iters: cfg.max_iters,
                loss: s.loss,
                lr: s.lr,
                grad_norm: s.grad_norm,
                ms: secs * 1e3,
                skipped: !s.updated,
                outlier,
                reading,
            };
            metrics.write(serde_json::json!({"type": "iter", "iter": log.iter, "loss": s.loss, "lr": s.lr, "grad_norm": s.grad_norm, "ms": log.ms, "warmup": reading.warmup, "steady_ms": reading.steady_ms, "tokens_per_sec": reading.tokens_per_sec, "mfu": reading.mfu, "eta_s": reading.eta_s, "skipped": !s.updated, "outlier": outlier}));
            if let Some(w) = tb.iter(&log) {
                obs.message(&w);
            }
            obs.iter(&log);
        }
        if stopping {
            let st = state(it, None, best_val, skipped, &outliers);
            let path = retry_last_save(obs, retry_limit, RETRY_EVERY, &STOP, &unsaved, |obs| {
                save(&model, st.clone(), &mut meter, obs, &mut metrics)
            })?;
            bail!(Interrupted { last_logged: it - 1, path });
        }
    }

    let r = meter.reading(0, 0, 0, 0.0, 1.0);
    let summary = Summary {
        iters: it - first_iter,
        warmup_iters: meter.warmup_iters(),
        warmup_s: meter.phase_s[0],
        train_s: meter.phase_s[1],
        eval_s: meter.phase_s[2],
        checkpoint_s: meter.phase_s[3],
        total_s: t_run.elapsed().as_secs_f64(),
        steady_ms: r.steady_ms,
        tokens_per_sec: r.tokens_per_sec,
        mfu: r.mfu,
        final_train_loss: last_eval.map(|e| e.0),
        final_val_loss: last_eval.map(|e| e.1),
        skipped_updates: skipped,
        out_dir: out_dir.display().to_string(),
        last_checkpoint,
    };
    metrics.write(serde_json::json!({"type": "summary", "summary": summary}));
    obs.finish(&summary);
    Ok(summary)
}

/// How often a run's failed last checkpoint is tried again.
const RETRY_EVERY: Duration = Duration::from_secs(10);

/// Runs `attempt` (a run's last checkpoint) until it succeeds, `limit` has passed since the
/// first try, or `stop` becomes set while waiting (a Ctrl-C: give up; if `stop` was already set
/// on entry, this save is serving that interrupt, and a second Ctrl-C ends the process). The
/// first failure is reported with `what` to do about it.
fn retry_last_save<T>(
    obs: &mut dyn Observer,
    limit: Duration,
    every: Duration,
    stop: &AtomicBool,
    what: &str,
    mut attempt: impl FnMut(&mut dyn Observer) -> Result<T>,
) -> Result<T> {
    let stop_on_entry = stop.load(Ordering::SeqCst);
    let t0 = Instant::now();
    let mut reported = false;
    loop {
        let err = match attempt(obs) {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if t0.elapsed() >= limit {
            return Err(err);
        }
        if !reported {
            obs.message(&format!(
                "warning: {err:#}\n{what}; trying again every {} s for up to {} s (`checkpoint_retry_s`); Ctrl-C gives up",
                every.as_secs_f64(),
                limit.as_secs()
            ));
            reported = true;
        }
        let wake = Instant::now() + every.min(limit.saturating_sub(t0.elapsed()));
        WAITING_TO_SAVE.store(!stop_on_entry, Ordering::SeqCst);
        while let Some(left) = wake.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
            if !stop_on_entry && stop.load(Ordering::SeqCst) {
                WAITING_TO_SAVE.store(false, Ordering::SeqCst);
                return Err(err.context("gave up on the interrupt"));
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
        WAITING_TO_SAVE.store(false, Ordering::SeqCst);
    }
}

/// The run stopped on a signal after writing a checkpoint.
#[derive(Debug)]
pub struct Interrupted {
    /// The last iteration the log shows (0-based, as every log line counts).
    pub last_logged: u64,
    pub path: PathBuf,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "interrupted after iteration {}; checkpoint written to {} (resumes at iteration {}). Resume with the same command plus `--set init_from=resume`",
            self.last_logged,
            self.path.display(),
            self.last_logged + 1
        )
    }
}

impl std::error::Error for Interrupted {}

/// A run that needs `need` bytes (`perf::flops::memory`): an error when that is more than the
/// machine has at all (memory plus free swap: the allocation would abort the process), a
/// warning when it is more than is available now; None when it fits or `mem` is unknown.
pub fn check_memory(need: u64, mem: Option<device::MemInfo>) -> Result<Option<String>> {
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let hint = "lower batch_size (and raise gradient_accumulation_steps) or block_size; `gptrain estimate` gives the largest micro-batch that fits";
    let Some(m) = mem else { return Ok(None) };
    if need > m.total + m.swap_free {
        bail!(
            "this run needs about {:.1} GiB of memory, more than this machine has ({:.1} GiB, plus {:.1} GiB of free swap); {hint}",
            gib(need),
            gib(m.total),
            gib(m.swap_free)
        );
    }
    Ok((need > m.available).then(|| {
        format!(
            "warning: this run needs about {:.1} GiB but only {:.1} GiB of memory is available now; {hint}",
            gib(need),
            gib(m.available)
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collects messages; ignores the rest.
    #[derive(Default)]
    struct Messages(Vec<String>);

    impl Observer for Messages {
        fn message(&mut self, text: &str) {
            self.0.push(text.to_string());
        }
        fn start(&mut self, _: &StartInfo) {}
        fn iter(&mut self, _: &IterLog) {}
        fn eval(&mut self, _: u64, _: f32, _: f32, _: f64) {}
        fn checkpoint(&mut self, _: &Path, _: f64) {}
        fn finish(&mut self, _: &Summary) {}
    }

    const MS: Duration = Duration::from_millis(1);
    const GIB: u64 = 1 << 30;

    #[test]
    fn memory_beyond_the_machine_is_an_error_and_beyond_what_is_free_a_warning() {
        let m = Some(device::MemInfo { total: 24 * GIB, available: 20 * GIB, swap_free: 2 * GIB });
        assert_eq!(check_memory(10 * GIB, m).unwrap(), None);
        let w = check_memory(21 * GIB, m).unwrap().unwrap();
        assert!(w.starts_with("warning:") && w.contains("20.0 GiB") && w.contains("batch_size"), "{w}");
        assert!(check_memory(25 * GIB, m).unwrap().is_some(), "within memory plus swap: a warning");
        let e = format!("{:#}", check_memory(27 * GIB, m).unwrap_err());
        assert!(e.contains("27.0 GiB") && e.contains("24.0 GiB") && e.contains("2.0 GiB of free swap") && e.contains("estimate"), "{e}");
        assert_eq!(check_memory(u64::MAX / 2, None).unwrap(), None, "unknown machine: no verdict");
    }

    #[test]
    fn a_failed_last_save_is_tried_again_until_it_succeeds() {
        let (mut obs, stop, mut tries) = (Messages::default(), AtomicBool::new(false), 0);
        let r = retry_last_save(&mut obs, Duration::from_secs(60), MS, &stop, "free space", |_| {
            tries += 1;
            if tries < 3 {
                bail!("No space left on device")
            } else {
                Ok(tries)
            }
        });
        assert_eq!(r.unwrap(), 3);
        assert_eq!(obs.0.len(), 1, "reported once: {:?}", obs.0);
        assert!(obs.0[0].contains("No space left") && obs.0[0].contains("free space") && obs.0[0].contains("checkpoint_retry_s"));
    }

    #[test]
    fn a_zero_limit_gives_up_at_once() {
        let (mut obs, stop, mut tries) = (Messages::default(), AtomicBool::new(false), 0);
        let r: Result<()> = retry_last_save(&mut obs, Duration::ZERO, MS, &stop, "free space", |_| {
            tries += 1;
            bail!("No space left on device")
        });
        assert!(format!("{:#}", r.unwrap_err()).contains("No space left"));
        assert_eq!((tries, obs.0.len()), (1, 0));
    }

    #[test]
    fn the_limit_ends_the_retries() {
        let (mut obs, stop, mut tries) = (Messages::default(), AtomicBool::new(false), 0);
        let r: Result<()> = retry_last_save(&mut obs, 30 * MS, 5 * MS, &stop, "free space", |_| {
            tries += 1;
            bail!("No space left on device")
        });
        assert!(r.is_err());
        assert!((2..=10).contains(&tries), "{tries} tries in 30 ms at 5 ms apart");
    }

    #[test]
    fn an_interrupt_while_waiting_gives_up_but_one_being_served_does_not() {
        // Ctrl-C during the wait: give up
        let (mut obs, stop, mut tries) = (Messages::default(), AtomicBool::new(false), 0);
        let r: Result<()> = retry_last_save(&mut obs, Duration::from_secs(60), Duration::from_secs(60), &stop, "free space", |_| {
            tries += 1;
            stop.store(true, Ordering::SeqCst);
            bail!("No space left on device")
        });
        assert!(format!("{:#}", r.unwrap_err()).contains("gave up on the interrupt"));
        assert_eq!(tries, 1);
        // the save that serves an interrupt keeps trying
        let (stop, mut tries) = (AtomicBool::new(true), 0);
        let r = retry_last_save(&mut obs, Duration::from_secs(60), MS, &stop, "free space", |_| {
            tries += 1;
            if tries < 2 {
                bail!("No space left on device")
            } else {
                Ok(())
            }
        });
        assert!(r.is_ok() && tries == 2);
    }
}
