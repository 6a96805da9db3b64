//! The training loop: nanoGPT's train.py, with honest time.
//!
//! Order per iteration `it` (= optimiser steps done): evaluate when `it % eval_interval == 0`
//! (and checkpoint when val improved, or always with `always_save_checkpoint`); stop at
//! `max_iters` (always checkpointing there); else one optimiser step over
//! `gradient_accumulation_steps` micro-batches. Batches and dropout masks are functions of
//! (seed, iteration, micro-step), so resuming from `ckpt-N` replays exactly what an
//! uninterrupted run does from N.
//!
//! [`run_with`] is that order as a loop over the phases of a [`session::Session`] (evaluate,
//! step, log, save, finish); `init` finds the start weights, `record` keeps the metrics file and
//! TensorBoard, `save` retries a run's last checkpoint.

mod init;
mod ranks;
mod record;
mod save;
mod session;

pub use ranks::left_a_thread_in_nccl;
pub use save::Interrupted;

use crate::backend::cpu::Cpu;
use crate::backend::cuda::{self, select::Selected, Cuda};
use crate::backend::{Backend, Precision, Scalar};
use crate::config::Config;
use crate::data::{Dataset, Split};
use crate::dist::{group::Group, World};
use crate::model::{pad_vocab, Gpt, ModelConfig, Recompute};
use crate::optim::OptimConfig;
use crate::perf::{device, meter::Reading};
use crate::rng;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

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
    fn checkpoint(&mut self, iter: u64, path: &Path, secs: f64);
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
    /// Whether the run is on a GPU (the CUDA backend), not the CPU.
    pub on_gpu: bool,
    /// The compute precision (and, under mixed precision, how the CPU runs its matmuls).
    pub precision: Precision,
    pub precision_note: String,
    pub peak_flops: Option<f64>,
    pub peak_source: String,
    pub threads: usize,
    pub dataset: String,
    pub start_iter: u64,
    pub max_iters: u64,
    /// `eval_only`: one evaluation, no training.
    pub eval_only: bool,
    /// What the run needs by `perf::flops`'s model of its backend, and of that the process's own
    /// allocations (the rest is the CUDA context on a GPU).
    pub memory_bytes: u64,
    pub memory_allocated_bytes: u64,
    /// Host memory a checkpoint takes while written, on top of `memory_bytes` ([`flops::checkpoint_bytes`];
    /// 0 where the run's memory is a device's, whose checkpoints take host memory instead).
    pub checkpoint_bytes: u64,
    /// The device's memory, total and free for this run (on a GPU, what the backend holds
    /// already counts as free; None when unknown).
    pub device_memory: Option<device::MemInfo>,
    /// The resolved config.
    pub config: Config,
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
    /// No update was made: a non-finite loss or norm, or (with `outlier`) the outlier guard,
    /// or (with `overflow`) a float16 gradient overflow.
    pub skipped: bool,
    pub outlier: bool,
    pub overflow: bool,
    /// The float16 loss scale after this step (None in other precisions).
    pub loss_scale: Option<f32>,
    #[serde(flatten)]
    pub reading: Reading,
}

/// The closing summary (the default: a run that trained nothing).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Summary {
    pub iters: u64,
    pub warmup_iters: usize,
    /// Seconds by phase: warm-up, training, eval, checkpoint.
    pub warmup_s: f64,
    pub train_s: f64,
    pub eval_s: f64,
    pub checkpoint_s: f64,
    pub total_s: f64,
    /// The median of every steady iteration of the run, and how many there were; tokens/s and
    /// MFU at that speed.
    pub steady_ms: Option<f64>,
    pub steady_iters: usize,
    pub tokens_per_sec: Option<f64>,
    pub mfu: Option<f64>,
    pub final_train_loss: Option<f32>,
    pub final_val_loss: Option<f32>,
    pub skipped_updates: u64,
    /// float16: updates skipped for a gradient overflow (the loss scaler's), and the scale at
    /// the end.
    pub overflow_skips: u64,
    pub loss_scale: Option<f32>,
    pub out_dir: String,
    /// The checkpoint this run wrote last (None when it wrote none).
    pub last_checkpoint: Option<PathBuf>,
    /// The most device memory the backend's allocations held at once, and what
    /// `perf::flops` models for them (None on the CPU, which keeps no such count).
    pub peak_memory_bytes: Option<u64>,
    pub memory_model_bytes: Option<u64>,
}

/// Checks the knobs this build cannot honour: the config's dtype and device (see
/// [`resolve_device`]); returns the precision.
pub fn check_device(cfg: &Config) -> Result<Precision> {
    Ok(resolve_device(cfg)?.0)
}

/// The run's precision and where it runs: `device = 'cpu'` as always (no tf32 there), `cuda` or
/// `cuda:N` that GPU or an error saying why not, `auto` the first usable GPU, else the CPU
/// with the reason (for the start banner).
/// `dtype = 'auto'` (the default) is nanoGPT's choice: on a GPU bfloat16 where the card has it
/// (compute capability 8.0 and up), else float16; on the CPU float32.
pub fn resolve_device(cfg: &Config) -> Result<(Precision, Selected)> {
    let named = dtype(cfg)?;
    let auto = named.is_none();
    let dtype = named.unwrap_or(Precision::F32);
    let selected = cuda::select::select(&cfg.device, dtype)?;
    let dtype = match &selected {
        Selected::Cuda { ordinal, .. } if auto => {
            let card = cuda::select::find_card(Some(*ordinal)).map_err(anyhow::Error::msg)?;
            if card.cc >= cuda::select::BF16_CC {
                Precision::Bf16
            } else {
                Precision::F16
            }
        }
        _ => dtype,
    };
    if matches!(selected, Selected::Cpu { .. }) && dtype == Precision::Tf32 {
        bail!(no_tf32(cfg));
    }
    Ok((dtype, selected))
}

/// The config's dtype, None for `auto`.
fn dtype(cfg: &Config) -> Result<Option<Precision>> {
    if cfg.dtype.eq_ignore_ascii_case("auto") {
        return Ok(None);
    }
    let p = Precision::parse(&cfg.dtype)
        .with_context(|| format!("unknown dtype `{}` (auto, float32, tfloat32, float16, bfloat16)", cfg.dtype))?;
    Ok(Some(p))
}

fn no_tf32(cfg: &Config) -> String {
    format!("dtype `{}` is a GPU matmul mode the CPU backend does not have; use `--set dtype=float32` (or bfloat16, float16)", cfg.dtype)
}

/// The run's precision on the backend it has been given: the config's dtype, `auto` as that
/// backend resolves it (not as `device` would resolve on this machine: a caller may hand the
/// loop a CPU backend on a machine with a GPU).
pub fn precision_on<B: Backend>(cfg: &Config, backend: &B) -> Result<Precision> {
    match dtype(cfg)? {
        None => Ok(backend.auto_precision()),
        Some(Precision::Tf32) if !backend.has_tf32() => bail!(no_tf32(cfg)),
        Some(p) => Ok(p),
    }
}

/// A backend the config names, opened.
pub enum Chosen {
    Cpu(Cpu),
    Cuda(Cuda),
}

/// Opens the backend `cfg` names, with `auto`'s reason for choosing it (None when named).
pub fn backend(cfg: &Config) -> Result<(Chosen, Option<String>)> {
    let (p, selected) = resolve_device(cfg)?;
    open(cfg, p, selected)
}

/// The backend sampling uses: the config's device, in float32 whatever the config's dtype
/// (the sampler computes in f32).
pub fn sample_backend(cfg: &Config) -> Result<(Chosen, Option<String>)> {
    open(cfg, Precision::F32, cuda::select::select(&cfg.device, Precision::F32)?)
}

fn open(cfg: &Config, p: Precision, selected: Selected) -> Result<(Chosen, Option<String>)> {
    Ok(match selected {
        Selected::Cpu { reason } => (Chosen::Cpu(cpu_backend(cfg)), reason),
        Selected::Cuda { ordinal, reason } => (Chosen::Cuda(Cuda::new(ordinal, p.tf32_matmuls())?), reason),
    })
}

/// `on_backend!(chosen, b => expr)`: `expr` with `b` bound to the opened backend, whichever it
/// is (one generic code path, instantiated per backend).
#[macro_export]
macro_rules! on_backend {
    ($chosen:expr, $b:ident => $body:expr) => {
        match $chosen {
            $crate::train::Chosen::Cpu($b) => $body,
            $crate::train::Chosen::Cuda($b) => $body,
        }
    };
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

pub(super) fn optim_config(cfg: &Config) -> OptimConfig {
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

/// Mean loss over `eval_iters` batches of each split; batches are a function of (seed,
/// iteration), so evaluation never shifts the training stream. In a data-parallel run each
/// rank evaluates its share of the batches and the ranks' sums are added through `group`.
pub(super) fn estimate_loss<B: Backend>(
    model: &mut Gpt<B>,
    ds: &Dataset,
    cfg: &Config,
    it: u64,
    mut group: Option<&mut Group>,
) -> Result<(f32, f32)> {
    let (b, t) = (cfg.batch_size, model.cfg.block_size);
    let (first, end) = Group::world_of(group.as_deref()).share(cfg.eval_iters);
    let mut out = [0.0f32; 2];
    for (si, split) in [Split::Train, Split::Val].into_iter().enumerate() {
        // the batches' mean losses add up on the backend, read once per split
        model.reset_scalars()?;
        for k in first..end {
            let key = rng::key(cfg.seed, rng::STREAM_EVAL_BATCH, &[it, si as u64, k as u64]);
            let (x, y) = ds.batch(split, key, b, t);
            B::step_scope(|| -> Result<()> {
                model.set_batch(&x, &y, b, t)?;
                model.forward(None, None)
            })?;
        }
        let mut sum = [model.read_scalars()?[Scalar::LossSum as usize]];
        if let Some(g) = group.as_mut() {
            g.sum_f64(&mut sum)?;
        }
        out[si] = (sum[0] / cfg.eval_iters as f64) as f32;
    }
    Ok((out[0], out[1]))
}

/// The micro-batches of training iteration `it`.
pub fn train_batches(ds: &Dataset, seed: u64, it: u64, accum: usize, b: usize, t: usize) -> Vec<(Vec<u32>, Vec<u32>)> {
    train_batches_in(ds, seed, it, 0..accum, b, t)
}

/// Micro-batches `range` of training iteration `it` (a data-parallel rank's share).
pub fn train_batches_in(ds: &Dataset, seed: u64, it: u64, range: std::ops::Range<usize>, b: usize, t: usize) -> Vec<(Vec<u32>, Vec<u32>)> {
    range.map(|m| ds.batch(Split::Train, rng::key(seed, rng::STREAM_TRAIN_BATCH, &[it, m as u64]), b, t)).collect()
}

/// The CPU backend with the kernels `cfg` names (validated by `Config`; `fast` otherwise).
pub fn cpu_backend(cfg: &Config) -> Cpu {
    Cpu { kernels: crate::backend::cpu::Kernels::parse(&cfg.kernels).unwrap_or_default() }
}

/// Runs training with `cfg` on the backend it names, on the current rayon pool.
pub fn run(cfg: &Config, obs: &mut dyn Observer) -> Result<Summary> {
    run_ranked(cfg, obs, &World::ALONE)
}

/// [`run`] as rank `world.rank` of a data-parallel run of `world.size` processes (see
/// [`crate::dist`]): connects to the other ranks first; rank 0 alone writes checkpoints.
pub fn run_ranked(cfg: &Config, obs: &mut dyn Observer, world: &World) -> Result<Summary> {
    // the GPUs this process sees; for `auto`, only where it could train on one
    let gpus = || match (cfg.device.as_str(), cuda::select::select("auto", Precision::F32)) {
        ("cuda", _) | (_, Ok(Selected::Cuda { .. })) => cuda::select::gpu_count().ok(),
        _ => None,
    };
    let device = ranks::rank_device(&cfg.device, world, gpus);
    let (chosen, reason) = if device == cfg.device {
        backend(cfg)?
    } else {
        let ordinal = device.strip_prefix("cuda:").and_then(|n| n.parse().ok());
        if let Err(why) = cuda::select::find_card(ordinal) {
            bail!(
                "{why}: each rank takes the GPU of its local rank ({} here); launch at most one process per GPU, or name the GPU every rank uses with `--set device=cuda:N`",
                world.local_rank
            );
        }
        let (chosen, reason) = backend(&Config { device: device.clone(), ..cfg.clone() })?;
        let why = format!("{device}: the GPU of rank {}'s local rank", world.rank);
        (chosen, Some(reason.map_or(why.clone(), |r| format!("{r}; {why}"))))
    };
    let mut group = if world.size > 1 { Some(ranks::connect(cfg, world)?) } else { None };
    if let Some(g) = group.as_mut() {
        ranks::same_kind_of_device(g, matches!(chosen, Chosen::Cuda(_)))?;
        let sums = match &chosen {
            Chosen::Cuda(c) => ranks::join_gpus(c, g)?,
            Chosen::Cpu(_) => "gradients and losses summed through rank 0".into(),
        };
        let (w, accum) = (g.world(), cfg.gradient_accumulation_steps);
        let each = accum / w.size;
        obs.message(&format!(
            "data parallel: {} ranks ({}), {each} micro-batch{} each of the {accum} per iteration; {sums}",
            w.size,
            w.source,
            if each == 1 { "" } else { "es" }
        ));
        if let Some(note) = ranks::one_gpu_named(&cfg.device, g.world(), || cuda::select::gpu_count().ok()) {
            obs.message(&note);
        }
    }
    if let Some(r) = reason {
        obs.message(&r);
    }
    on_backend!(chosen, b => run_in(b, cfg, obs, group))
}

/// The loop itself, on any backend: it touches parameters and optimizer moments only through
/// the model (which reaches them through the backend's ops and copies), so a device backend
/// slots in here.
pub fn run_with<B: Backend>(backend: B, cfg: &Config, obs: &mut dyn Observer) -> Result<Summary> {
    run_in(backend, cfg, obs, None)
}

/// [`run_with`], as one rank of `group` when given.
fn run_in<B: Backend>(backend: B, cfg: &Config, obs: &mut dyn Observer, group: Option<Group>) -> Result<Summary> {
    let Some(mut run) = session::Session::open(backend, cfg, obs, group)? else {
        return Ok(Summary { out_dir: cfg.out_dir.clone(), ..Default::default() });
    };
    loop {
        let evaluated = if run.evaluates_now() { Some(run.evaluate()?) } else { None };
        if cfg.eval_only {
            run.report_warm_up(true);
            break;
        }
        if run.it >= cfg.max_iters {
            run.report_warm_up(true);
            run.save_final(evaluated)?;
            break;
        }
        let step = run.step()?;
        let stopping = run.agree_to_stop(STOP.load(Ordering::SeqCst))?;
        run.log(&step, stopping);
        run.report_warm_up(step.updated());
        run.report_memory();
        if stopping {
            let path = run.save_last(None)?;
            run.barrier()?;
            if !run.is_root() {
                return Ok(run.finish()); // rank 0 says where its checkpoint is
            }
            bail!(Interrupted { last_logged: run.it - 1, path, command_resumes: cfg.init_from == "resume" });
        }
    }
    run.barrier()?;
    Ok(run.finish())
}

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

/// The peak FLOP/s MFU is measured against, and where it comes from: `--set peak_tflops` when
/// given (a card not in the device table has no other), else the device's: `train`'s and
/// `bench`'s MFU alike.
pub fn peak_of(cfg: &Config, info: &crate::backend::DeviceInfo) -> (Option<f64>, String) {
    if cfg.peak_tflops > 0.0 {
        (Some(cfg.peak_tflops * 1e12), "--set peak_tflops".into())
    } else {
        (info.peak_flops, info.peak_source.clone())
    }
}

/// The command whose run [`check_gpu_memory`] advises on: each takes the micro-batches of
/// a step its own way (`bench` ignores the config's gradient_accumulation_steps).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    Train,
    Bench,
}

impl Caller {
    /// The flag that runs `n` micro-batches a step.
    fn accum_flag(self, n: usize) -> String {
        match self {
            Caller::Train => format!("--set gradient_accumulation_steps={n}"),
            Caller::Bench => format!("--grad-accum {n}"),
        }
    }

    /// What the command calls the micro-batches' update.
    fn step(self) -> &'static str {
        match self {
            Caller::Train => "iteration",
            Caller::Bench => "step",
        }
    }
}

/// A GPU run of micro-batch `b` (and `accum` micro-batches a step) against its card: an error,
/// before the model allocates anything, when `perf::flops`'s GPU model of gptrain's buffers
/// (less `held`, what the backend holds already: its workspace and scratch) is more than the
/// card has free (the CUDA context exists by now, so `overhead` is not asked for), naming the
/// largest micro-batch that fits (at the run's `recompute` level, and at level 2 when that fits
/// more), in `caller`'s flags. `nccl`: bytes kept free for NCCL's buffers (a data-parallel
/// run summing on the GPUs; NCCL allocates them at the first sum). Ok when it fits or the
/// card's memory is unknown.
#[allow(clippy::too_many_arguments)]
pub fn check_gpu_memory(
    caller: Caller,
    mc: &ModelConfig,
    b: usize,
    accum: usize,
    d: u64,
    recompute: Recompute,
    mem: Option<device::MemInfo>,
    held: u64,
    zero_saves: u64,
    nccl: u64,
    card: &str,
) -> Result<()> {
    use crate::perf::flops::{self, Impl};
    use crate::units::human_bytes;
    let Some(m) = mem else { return Ok(()) };
    let t = mc.block_size;
    // ZeRO-1's share of the optimiser state leaves `zero_saves` bytes unallocated whatever the batch
    let need = flops::memory(mc, b, t, d, recompute, Impl::Gpu).allocated() - zero_saves + nccl;
    if need <= m.available + held {
        return Ok(());
    }
    let capacity = (m.available + held + zero_saves + flops::GPU_OVERHEAD_BYTES).saturating_sub(nccl);
    let fits = flops::max_micro_batch(mc, t, d, recompute, Impl::Gpu, capacity);
    let fits_recomputing = flops::max_micro_batch(mc, t, d, Recompute::GeluAndLayerNorm, Impl::Gpu, capacity);
    let or_recompute = if fits_recomputing > fits {
        format!("; with --set recompute=2 (GELU and LayerNorm recomputed in the backward) micro-batch {fits_recomputing} fits")
    } else {
        String::new()
    };
    let sequences = b * accum;
    // the micro-batch advised divides the sequences a step, so that the step stays the same
    let advice = match (1..=fits).rev().find(|x| sequences.is_multiple_of(*x)) {
        None => format!("even micro-batch 1 does not fit: use a smaller block_size or model{or_recompute}"),
        Some(x) => format!(
            "the largest micro-batch that fits is {fits}: --set batch_size={x} {} keeps {sequences} sequences per {}{}{or_recompute}",
            caller.accum_flag(sequences / x),
            caller.step(),
            if x < fits { format!(" ({x}: the largest that fits and divides {sequences})") } else { String::new() }
        ),
    };
    let nccl_words = if nccl > 0 { format!(", and {} kept for NCCL's buffers", human_bytes(nccl)) } else { String::new() };
    bail!(
        "this run needs about {} of GPU memory at micro-batch {b} (gptrain's memory model of its buffers{nccl_words}), more than the {} free on {card} ({} total); {advice}",
        human_bytes(need),
        human_bytes(m.available + held),
        human_bytes(m.total)
    )
}

/// The line a run prints after its first steady iteration on a device backend: the measured
/// peak of the backend's allocations beside `perf::flops`'s model of them, and the driver's
/// view when known.
pub fn memory_line(used: crate::backend::MemoryUse, model: u64) -> String {
    use crate::units::human_bytes;
    let off = (used.peak as f64 / model as f64 - 1.0) * 100.0;
    let driver =
        used.driver.map_or(String::new(), |d| format!("; the driver: {} more in use than when the backend opened", human_bytes(d)));
    format!("memory: {} measured peak (gptrain's allocations), model {} ({off:+.1}%){driver}", human_bytes(used.peak), human_bytes(model))
}

#[cfg(test)]
mod tests {
    use super::save::retry_last_save;
    use super::*;
    use std::time::Duration;

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
        fn checkpoint(&mut self, _: u64, _: &Path, _: f64) {}
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
    fn a_gpu_run_that_cannot_fit_names_the_largest_micro_batch_that_does() {
        use crate::perf::flops::{self, Impl};
        let mc =
            ModelConfig { n_layer: 4, n_head: 8, n_embd: 512, block_size: 1024, vocab_size: 50304, padded_vocab_size: 50304, bias: false };
        let held = crate::backend::cuda::SCRATCH_BYTES as u64;
        // a 12 GiB card with the context taken: 16 fits, 64 does not
        let card = |free: u64| Some(device::MemInfo { total: 12 * GIB, available: free, swap_free: 0 });
        let off = Recompute::Off;
        assert!(check_gpu_memory(Caller::Train, &mc, 16, 32, 2, off, card(11 * GIB), held, 0, 0, "RTX 4070").is_ok());
        let e = format!("{:#}", check_gpu_memory(Caller::Train, &mc, 64, 8, 2, off, card(11 * GIB), held, 0, 0, "RTX 4070").unwrap_err());
        let capacity = 11 * GIB + held + flops::GPU_OVERHEAD_BYTES;
        let fits = flops::max_micro_batch(&mc, 1024, 2, off, Impl::Gpu, capacity);
        assert!((16..64).contains(&fits), "{fits}");
        assert!(
            e.contains(&format!("the largest micro-batch that fits is {fits}: ")) && e.contains("RTX 4070") && !e.contains('\n'),
            "{e}"
        );
        assert!(e.contains("keeps 512 sequences per iteration") && e.contains("; with --set recompute=2"), "{e}");
        assert!(e.contains("--set gradient_accumulation_steps=") && e.contains("gptrain's memory model"), "{e}");
        // `bench` takes the micro-batches a step as --grad-accum, and names its steps so
        let bench = |b, accum| {
            let e = check_gpu_memory(Caller::Bench, &mc, b, accum, 2, off, card(11 * GIB), held, 0, 0, "RTX 4070").unwrap_err();
            format!("{e:#}")
        };
        let e = bench(64, 8);
        assert!(e.contains(" --grad-accum ") && e.contains("keeps 512 sequences per step") && !e.contains("gradient_accumulation"), "{e}");
        // a micro-batch below the largest that fits says why: it divides the sequences a step
        let n = fits + 1;
        let x = (1..fits).rev().find(|x| n.is_multiple_of(*x)).unwrap();
        let want = format!(
            "--set batch_size={x} --grad-accum {} keeps {n} sequences per step ({x}: the largest that fits and divides {n})",
            n / x
        );
        assert!(bench(n, 1).contains(&want), "{}", bench(n, 1));
        // recomputing, more fits, and the error says so at the run's own level
        let recomputing = flops::max_micro_batch(&mc, 1024, 2, Recompute::GeluAndLayerNorm, Impl::Gpu, capacity);
        assert!(recomputing > fits, "{recomputing} vs {fits}");
        let e = format!(
            "{:#}",
            check_gpu_memory(Caller::Train, &mc, 64, 8, 2, Recompute::GeluAndLayerNorm, card(11 * GIB), held, 0, 0, "x").unwrap_err()
        );
        assert!(e.contains(&format!("the largest micro-batch that fits is {recomputing}: ")) && !e.contains("with --set"), "{e}");
        assert!(format!("{:#}", check_gpu_memory(Caller::Train, &mc, 1, 1, 2, off, card(GIB / 4), held, 0, 0, "x").unwrap_err())
            .contains("even micro-batch 1"));
        assert!(check_gpu_memory(Caller::Train, &mc, 1 << 20, 1, 2, off, None, 0, 0, 0, "x").is_ok(), "unknown memory: no verdict");
        // a rank summing by NCCL keeps room for NCCL's buffers: the largest micro-batch that
        // fits alone may not, and the error says what was kept
        let nccl = flops::NCCL_BUFFER_BYTES;
        let fits_nccl = flops::max_micro_batch(&mc, 1024, 2, off, Impl::Gpu, capacity - nccl);
        assert!(fits_nccl < fits, "{fits_nccl} vs {fits}");
        assert!(check_gpu_memory(Caller::Train, &mc, fits, 1, 2, off, card(11 * GIB), held, 0, 0, "x").is_ok());
        let e = format!("{:#}", check_gpu_memory(Caller::Train, &mc, fits, 1, 2, off, card(11 * GIB), held, 0, nccl, "x").unwrap_err());
        assert!(e.contains("kept for NCCL's buffers") && e.contains(&format!("the largest micro-batch that fits is {fits_nccl}: ")), "{e}");
    }

    #[test]
    fn the_memory_line_puts_the_measured_peak_beside_the_model() {
        let used = crate::backend::MemoryUse { current: GIB, peak: GIB + GIB / 40, driver: None };
        assert_eq!(memory_line(used, GIB), "memory: 1.0 GiB measured peak (gptrain's allocations), model 1.0 GiB (+2.5%)");
        let used = crate::backend::MemoryUse { driver: Some(3 << 20), ..used };
        assert!(memory_line(used, GIB).ends_with("(+2.5%); the driver: 3.0 MiB more in use than when the backend opened"));
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

    /// A run's precision follows the backend it is handed, not what `device` would pick on this
    /// machine: an `auto` run on the CPU backend is float32 even where a GPU (or the CUDA
    /// emulator, loaded by another test of the same process) makes `auto` mean bf16.
    #[test]
    fn the_precision_is_the_given_backends() {
        let with = |dtype: &str| Config { dtype: dtype.into(), device: "auto".into(), ..Config::default() };
        assert_eq!(precision_on(&with("auto"), &Cpu::FAST).unwrap(), Precision::F32);
        assert_eq!(precision_on(&with("bfloat16"), &Cpu::FAST).unwrap(), Precision::Bf16);
        let e = precision_on(&with("tfloat32"), &Cpu::FAST).unwrap_err().to_string();
        assert!(e.contains("GPU matmul mode"), "{e}");
        assert!(precision_on(&with("float8"), &Cpu::FAST).is_err());
    }
}
