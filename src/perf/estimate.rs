//! `gptrain estimate`: time per iteration, total time and memory of a config on a device,
//! before running it. Every number comes from `perf::flops` and `perf::device`.

use super::device::{Class, Device};
use super::flops::{self, Impl, Memory};
use crate::backend::Precision;
use crate::model::{ModelConfig, Recompute};
use anyhow::{bail, Result};

/// The assumed MFU range and where it comes from.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MfuAssumption {
    pub low: f64,
    pub high: f64,
    pub source: String,
    /// A warning when the run lies outside what the default was measured on.
    pub note: Option<String>,
}

/// nanoGPT's train.py (torch.compile, bf16/fp16) on datacenter GPUs: MFU over a whole run at
/// the smallest micro-step measured (shakespeare-char on one A100, nanoGPT's README: "about 3
/// minutes" for 5000 iterations and 21 evals, which our FLOPs model puts at 16% of the bf16
/// peak), and from the rtx4070-40m shape's micro-step up (36.9% and 39.8% measured on an H200
/// for that shape and GPT-2 124M, PERFORMANCE.md; 29% implied by the README's GPT-2 124M in
/// ~4 days on 8 A100s).
const GPU_SMALL_MFU: f64 = 0.16;
const GPU_LARGE_MFU: f64 = 0.35;
/// The range is the middle +-25%: the spread of those measurements (29-40% for one model).
const GPU_SPREAD: f64 = 0.25;

/// The micro-steps of those points: shakespeare-char (6x384, block 256, batch 64, nanoGPT's 65
/// characters) and the rtx4070-40m shape (4x512, block 1024, batch 16, vocabulary 50304).
fn gpu_anchor_flops() -> (f64, f64) {
    let small = ModelConfig { n_layer: 6, n_head: 6, n_embd: 384, block_size: 256, vocab_size: 65, padded_vocab_size: 65, bias: false };
    let large =
        ModelConfig { n_layer: 4, n_head: 8, n_embd: 512, block_size: 1024, vocab_size: 50304, padded_vocab_size: 50304, bias: false };
    (micro_step_flops(&small, 64), micro_step_flops(&large, 16))
}

/// Training FLOPs of one micro-step (forward and backward of one micro-batch) on one device.
pub fn micro_step_flops(m: &ModelConfig, batch: usize) -> f64 {
    flops::flops_per_token(m, m.block_size).train() * (batch * m.block_size) as f64
}

impl MfuAssumption {
    pub fn mid(&self) -> f64 {
        (self.low + self.high) / 2.0
    }

    /// The default for a run on a device. On a GPU it depends on the work of one micro-step:
    /// small models keep the GPU less busy (kernel launches, Python, elementwise work weigh
    /// more), so they run at a lower MFU than GPT-2-sized ones.
    pub fn default_for(device: &Device, run: &Run) -> MfuAssumption {
        if !device.is_gpu() {
            return MfuAssumption {
                low: 0.30,
                high: 0.60,
                source: "gptrain's f32 steps on 2 x86 threads measured 31-45% on a ~1M-parameter model and 35-69% on 10-124M ones, lower on a busy machine (PERFORMANCE.md); --calibrate measures this machine".into(),
                note: None,
            };
        }
        let f = micro_step_flops(&run.model, run.batch_size);
        let (f_small, f_large) = gpu_anchor_flops();
        let mid = if f <= f_small {
            GPU_SMALL_MFU
        } else if f >= f_large {
            GPU_LARGE_MFU
        } else {
            let x = (f / f_small).ln() / (f_large / f_small).ln();
            GPU_SMALL_MFU + x * (GPU_LARGE_MFU - GPU_SMALL_MFU)
        };
        let geforce = if device.class == Class::GeForce { "; no GeForce card measured: the same curve assumed" } else { "" };
        MfuAssumption {
            low: mid * (1.0 - GPU_SPREAD),
            high: mid * (1.0 + GPU_SPREAD),
            source: format!(
                "middle {:.0}% for {f:.2e} FLOPs per micro-step, +-25%: nanoGPT (torch.compile, bf16/fp16) runs at ~{:.0}% from {f_large:.1e} FLOPs per micro-step up (36.9-39.8% measured on an H200, PERFORMANCE.md; 29% implied by its README's GPT-2 124M on 8xA100 in ~4 days) and at {:.0}% at shakespeare-char's {f_small:.1e} (its README's ~3 minutes on one A100, evals included); log-interpolated between{geforce}",
                mid * 100.0,
                GPU_LARGE_MFU * 100.0,
                GPU_SMALL_MFU * 100.0
            ),
            note: (f < f_small).then(|| {
                format!(
                    "note: a micro-step of {f:.2e} FLOPs is smaller than any measured ({f_small:.1e}, shakespeare-char): a GPU is mostly idle between kernel launches then, so expect less than {:.0}% MFU and a longer run (--mfu sets your own)",
                    GPU_SMALL_MFU * 100.0
                )
            }),
        }
    }

    pub fn fixed(mfu: f64, source: &str) -> MfuAssumption {
        MfuAssumption { low: mfu, high: mfu, source: source.into(), note: None }
    }
}

/// The vocabulary size of the run and where it came from.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Vocab {
    pub size: usize,
    pub source: String,
    /// True when no file or setting gave it: the estimate rests on a guess the source explains.
    pub assumed: bool,
}

impl Vocab {
    pub fn given(size: usize) -> Vocab {
        Vocab { size, source: "given".into(), assumed: false }
    }
}

/// The compute dtype and why it was chosen.
#[derive(Clone, Debug)]
pub struct DtypeChoice {
    pub dtype: Precision,
    pub source: String,
}

impl DtypeChoice {
    pub fn given(dtype: Precision) -> DtypeChoice {
        DtypeChoice { dtype, source: "given".into() }
    }

    /// `--dtype` (`flag`), else the config's explicit dtype (`config`), else what the program
    /// being estimated uses by default: on a GPU nanoGPT's (`'bfloat16' if
    /// torch.cuda.is_bf16_supported() else 'float16'`), on the CPU gptrain's default fp32. Then
    /// what the device cannot run is replaced (a note says so): the CPU has no tf32, a card
    /// without bf16 runs fp16.
    pub fn choose(flag: Option<Precision>, config: Option<Precision>, device: &Device) -> (DtypeChoice, Vec<String>) {
        let mut notes = Vec::new();
        let mut p = match (flag, config) {
            (Some(d), _) => DtypeChoice { dtype: d, source: "--dtype".into() },
            (None, Some(d)) => DtypeChoice { dtype: d, source: "the config's `dtype`".into() },
            (None, None) if !device.is_gpu() => DtypeChoice {
                dtype: Precision::F32,
                source: "gptrain's default on the CPU (bf16/fp16 mixed precision with --dtype)".into(),
            },
            (None, None) if device.has_bf16() => DtypeChoice {
                dtype: Precision::Bf16,
                source: format!("nanoGPT's default: bfloat16 where the card has it ({}: yes); --dtype to change", device.name),
            },
            (None, None) => DtypeChoice {
                dtype: Precision::F16,
                source: format!(
                    "nanoGPT's default: bfloat16 where the card has it, else float16 ({} has no bf16); --dtype to change",
                    device.name
                ),
            },
        };
        if !device.is_gpu() && p.dtype == Precision::Tf32 {
            notes.push("note: tf32 is a GPU matmul mode the CPU backend does not have; estimating fp32".into());
            p = DtypeChoice { dtype: Precision::F32, source: format!("{} asked tf32, which the CPU has not: fp32", p.source) };
        } else if device.is_gpu() && p.dtype == Precision::Bf16 && !device.has_bf16() {
            notes.push(format!("note: {} has no bf16 tensor cores (nanoGPT picks float16 there); estimating fp16", device.name));
            p = DtypeChoice {
                dtype: Precision::F16,
                source: format!("bf16 from {}, but {} has no bf16: fp16, as nanoGPT picks", p.source, device.name),
            };
        }
        (p, notes)
    }
}

/// The gradient all-reduce of data-parallel training, once per iteration.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AllReduce {
    /// fp32 gradients of every parameter: what DDP reduces under autocast.
    pub gradient_bytes: u64,
    /// ZeRO-1: the weights, in the compute dtype, that each owner sends the others after its
    /// update (the gradients then go to their owners only: reduce, not all-reduce).
    pub zero_weight_bytes: Option<u64>,
    /// A ring all-reduce sends (and receives) 2 (N-1)/N of the gradient per GPU; ZeRO-1's
    /// reduce and broadcast (N-1)/N of the gradient and of the weights.
    pub bytes_per_gpu: f64,
    pub link_gbs: f64,
    pub link_source: String,
    pub ms_per_iter: f64,
    pub assumption: String,
}

/// How the all-reduce's time is counted.
pub const ALLREDUCE_ASSUMPTION: &str = "not overlapped: added in full to every iteration at the link's rated speed (DDP overlaps its buckets with the last micro-step's backward, so this is an upper bound on their cost, while NCCL reaches less than the rated speed)";

/// One dtype's peak on the device and where the figure comes from.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Peak {
    pub dtype: &'static str,
    pub tflops: f64,
    pub source: String,
}

/// Everything `estimate` reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Estimate {
    /// The run estimated: model shape, micro-batch and accumulation steps.
    pub model: ModelConfig,
    pub vocab: Vocab,
    pub batch_size: usize,
    /// Micro-steps per iteration over all GPUs (nanoGPT's `gradient_accumulation_steps`).
    pub grad_accum: usize,
    pub gpus: usize,
    /// Micro-steps each GPU runs per iteration (grad_accum / gpus, as nanoGPT's DDP divides it).
    pub grad_accum_per_gpu: usize,
    pub params: usize,
    pub params_nanogpt: usize,
    pub tokens_per_iter: usize,
    pub flops_per_token: f64,
    pub flops_per_token_palm: f64,
    /// Over all GPUs.
    pub flops_per_iter: f64,
    pub flops_per_micro_step: f64,
    pub device: String,
    pub dtype: String,
    pub dtype_source: String,
    /// One GPU's peak in `dtype`.
    pub peak_flops: f64,
    pub peak_source: String,
    /// Every dtype's peak on this device, each with its own source.
    pub peaks: Vec<Peak>,
    /// Compute at 100% of peak, no all-reduce: no iteration can be faster.
    pub floor_ms_per_iter: f64,
    pub mfu: MfuAssumption,
    /// Compute at the expected MFU plus the all-reduce.
    pub ms_per_iter: f64,
    pub ms_per_iter_range: (f64, f64),
    /// None on one device.
    pub allreduce: Option<AllReduce>,
    /// Time of one eval (2 x eval_iters forward passes on one GPU, as nanoGPT's master process
    /// runs them), at the expected MFU.
    pub eval_seconds: f64,
    pub evals: u64,
    pub total_seconds: f64,
    pub total_seconds_range: (f64, f64),
    pub floor_total_seconds: f64,
    pub max_iters: u64,
    /// Per GPU.
    pub memory: Memory,
    pub memory_bytes: u64,
    pub device_memory_bytes: u64,
    /// None when the device's memory is unknown.
    pub fits: Option<bool>,
    pub max_micro_batch: usize,
    /// The run's `recompute` level (`memory` and `max_micro_batch` are at it).
    pub recompute: usize,
    /// The largest micro-batch that fits at `recompute=2` (GELU and both LayerNorms recomputed
    /// in the backward), and the memory at `batch_size` there; 0 and `memory_bytes` when the
    /// run is at level 2 already or the device's memory is unknown.
    pub max_micro_batch_recompute: usize,
    pub memory_with_recompute: u64,
    /// 1 when the memory is a ZeRO-1 rank's (the optimiser state split over the GPUs).
    pub zero_stage: usize,
    /// What nanoGPT's train.py (PyTorch, torch.compile) would need at this micro-batch, on a GPU
    /// (`flops::Impl::Torch`); None on the CPU.
    pub memory_pytorch_bytes: Option<u64>,
    pub fits_pytorch: Option<bool>,
}

/// Shape and schedule of the run to estimate.
#[derive(Clone, Debug)]
pub struct Run {
    pub model: ModelConfig,
    pub vocab: Vocab,
    pub batch_size: usize,
    /// Micro-steps per iteration over all GPUs.
    pub grad_accum: usize,
    pub max_iters: u64,
    pub eval_interval: u64,
    pub eval_iters: usize,
    /// Cards training in data parallel, as nanoGPT's DDP: each runs `grad_accum / gpus`
    /// micro-steps of `batch_size`, then the gradients are all-reduced.
    pub gpus: usize,
    /// What the backward recomputes (the config's `recompute`).
    pub recompute: Recompute,
    /// The config's `zero_stage`: 1 splits the optimiser state over the GPUs (gptrain's ZeRO-1).
    pub zero_stage: usize,
}

impl Run {
    /// What nanoGPT's DDP asserts, as one-line errors.
    pub fn check_gpus(&self, device: &Device) -> Result<()> {
        let n = self.gpus;
        if n == 0 {
            bail!("--gpus must be at least 1");
        }
        if n > 1 && !device.is_gpu() {
            bail!("--gpus {n} is data parallelism over GPUs; the CPU is one device (leave --gpus out)");
        }
        if n > 1 && device.link_gbs <= 0.0 {
            bail!(
                "--gpus {n}: the interconnect of `{}` is unknown, so the all-reduce cannot be costed; name a card from --list-devices",
                device.name
            );
        }
        if !self.grad_accum.is_multiple_of(n) {
            let near: Vec<String> =
                [n * (self.grad_accum / n).max(1), n * (self.grad_accum / n + 1)].iter().map(|g| g.to_string()).collect();
            bail!(
                "gradient_accumulation_steps ({}) must be divisible by --gpus {n}, as nanoGPT's DDP asserts; e.g. --set gradient_accumulation_steps={}",
                self.grad_accum,
                near.join(" or ")
            );
        }
        Ok(())
    }
}

/// The estimate of `run` on `device`. `run.check_gpus(device)` must hold.
pub fn estimate(run: &Run, device: &Device, precision: &DtypeChoice, peak_override: Option<f64>, mfu: MfuAssumption) -> Estimate {
    let m = &run.model;
    let t = m.block_size;
    let dtype = precision.dtype;
    let p = flops::params(m);
    let fpt = flops::flops_per_token(m, t).train();
    let tokens = run.batch_size * t * run.grad_accum;
    let fpi = fpt * tokens as f64;
    let gpus = run.gpus.max(1);
    let per_gpu = run.grad_accum / gpus;
    let micro = micro_step_flops(m, run.batch_size);
    let peak = peak_override.unwrap_or_else(|| device.peak_flops(dtype));
    let zero = run.zero_stage == 1 && gpus > 1;
    let allreduce = (gpus > 1).then(|| {
        let bytes = 4 * p.total as u64;
        let weights = zero.then(|| dtype.bytes() as u64 * p.total as u64);
        let share = (gpus - 1) as f64 / gpus as f64;
        let per = match weights {
            Some(w) => share * (bytes + w) as f64,
            None => 2.0 * share * bytes as f64,
        };
        AllReduce {
            gradient_bytes: bytes,
            zero_weight_bytes: weights,
            bytes_per_gpu: per,
            link_gbs: device.link_gbs,
            link_source: device.link_source.clone(),
            ms_per_iter: per / (device.link_gbs * 1e9) * 1e3,
            assumption: ALLREDUCE_ASSUMPTION.into(),
        }
    });
    let comm_s = allreduce.as_ref().map_or(0.0, |a| a.ms_per_iter / 1e3);
    let micro_s = |u: f64| micro / peak / u;
    let floor_s = per_gpu as f64 * micro_s(1.0);
    let s_at = |u: f64| per_gpu as f64 * micro_s(u) + comm_s;
    // eval: 2 splits x eval_iters micro-batches, forward only (a third of a training
    // micro-step), on one GPU
    let eval_s = |u: f64| 2.0 * run.eval_iters as f64 * micro_s(u) / 3.0;
    let evals = run.max_iters / run.eval_interval.max(1) + 1;
    let total = |u: f64| run.max_iters as f64 * s_at(u) + evals as f64 * eval_s(u);
    let imp = if device.is_gpu() { Impl::Gpu } else { Impl::Cpu };
    let d = dtype.bytes() as u64;
    // ZeRO-1: each GPU keeps the optimiser state of its share only; the largest share sets the
    // need, and what it saves is the same at every micro-batch
    let own = zero.then(|| crate::dist::zero::largest_part(&crate::model::ParamLayout::new(m), gpus) as u64);
    let shard = |mem: flops::Memory| match own {
        Some(n) => mem.sharded(n),
        None => mem,
    };
    // GPUs summing by NCCL: each keeps room for NCCL's buffers too, as `train` does
    let nccl = if gpus > 1 && imp == Impl::Gpu { flops::NCCL_BUFFER_BYTES } else { 0 };
    let runtime = |mem: flops::Memory| flops::Memory { overhead: mem.overhead + nccl, ..mem };
    let full = runtime(flops::memory(m, run.batch_size, t, d, run.recompute, imp));
    let mem = shard(full.clone());
    let most = Recompute::GeluAndLayerNorm;
    let cap = device.memory_bytes;
    // (no verdict where the memory is unknown; max_micro_batch's model has no NCCL term)
    let room = if cap > 0 { (cap + (full.total() - mem.total())).saturating_sub(nccl) } else { 0 };
    let more_by_recomputing = run.recompute < most && cap > 0;
    let fits = |bytes: u64| (cap > 0).then_some(bytes <= cap); // None: the device's memory is unknown
    let torch = (imp == Impl::Gpu).then(|| flops::memory(m, run.batch_size, t, d, Recompute::Off, Impl::Torch).total());
    let source_of = |d: Precision| if peak_override.is_some() { "--peak-tflops".to_string() } else { device.peak_source(d) };
    let peaks = [Precision::F32, Precision::Tf32, Precision::F16, Precision::Bf16]
        .into_iter()
        .map(|d| Peak { dtype: d.name(), tflops: peak_override.unwrap_or_else(|| device.peak_flops(d)) / 1e12, source: source_of(d) })
        .collect();
    Estimate {
        model: m.clone(),
        vocab: run.vocab.clone(),
        batch_size: run.batch_size,
        grad_accum: run.grad_accum,
        gpus,
        grad_accum_per_gpu: per_gpu,
        params: p.total,
        params_nanogpt: p.nanogpt,
        tokens_per_iter: tokens,
        flops_per_token: fpt,
        flops_per_token_palm: flops::palm_flops_per_token(m, t),
        flops_per_iter: fpi,
        flops_per_micro_step: micro,
        device: device.name.clone(),
        dtype: dtype.name().into(),
        dtype_source: precision.source.clone(),
        peak_flops: peak,
        peak_source: source_of(dtype),
        peaks,
        floor_ms_per_iter: floor_s * 1e3,
        ms_per_iter: s_at(mfu.mid()) * 1e3,
        ms_per_iter_range: (s_at(mfu.high) * 1e3, s_at(mfu.low) * 1e3),
        allreduce,
        eval_seconds: eval_s(mfu.mid()),
        evals,
        total_seconds: total(mfu.mid()),
        total_seconds_range: (total(mfu.high), total(mfu.low)),
        floor_total_seconds: run.max_iters as f64 * floor_s,
        max_iters: run.max_iters,
        memory_bytes: mem.total(),
        fits: fits(mem.total()),
        memory: mem,
        device_memory_bytes: cap,
        max_micro_batch: flops::max_micro_batch(m, t, d, run.recompute, imp, room),
        recompute: run.recompute.level(),
        max_micro_batch_recompute: if more_by_recomputing { flops::max_micro_batch(m, t, d, most, imp, room) } else { 0 },
        memory_with_recompute: shard(runtime(flops::memory(m, run.batch_size, t, d, most, imp))).total(),
        zero_stage: if zero { 1 } else { 0 },
        memory_pytorch_bytes: torch,
        fits_pytorch: torch.and_then(fits),
        mfu,
    }
}

/// Whether `ms` per iteration is physically possible, with the reason.
pub fn expect_verdict(e: &Estimate, ms: f64) -> (bool, String) {
    let needed = e.flops_per_iter / (ms / 1e3);
    let all = e.peak_flops * e.gpus as f64;
    let ratio = needed / all;
    let cards = if e.gpus > 1 { format!("{} x {}", e.gpus, e.device) } else { e.device.clone() };
    if ms < e.floor_ms_per_iter {
        (
            false,
            format!(
                "impossible: {} ms/iteration means {:.3e} FLOP/s ({:.1} TFLOP/s), {ratio:.1}x the {cards} peak of {:.1} TFLOP/s for {}; even at 100% utilisation an iteration of {:.3e} FLOPs takes {}",
                show_ms(ms),
                needed,
                needed / 1e12,
                all / 1e12,
                e.dtype,
                e.flops_per_iter,
                fmt_ms(e.floor_ms_per_iter)
            ),
        )
    } else {
        (
            true,
            format!(
                "possible: {} ms/iteration means {:.1}% MFU on {cards} ({}); the expected time is {} at {:.0}% MFU",
                show_ms(ms),
                ratio * 100.0,
                e.dtype,
                fmt_ms(e.ms_per_iter),
                e.mfu.mid() * 100.0
            ),
        )
    }
}

/// A time the user gave as they gave it (`100`, `12.5`), a derived one to three significant
/// digits (`99.7`).
fn show_ms(ms: f64) -> String {
    if (ms * 1e3).fract() == 0.0 {
        format!("{ms}")
    } else {
        fmt_ms(ms).trim_end_matches(" ms").to_string()
    }
}

/// The evals' share of the run's compute (the all-reduce aside): an eval and an iteration run
/// at the same utilisation, so this share of any total time goes to the evals, at every MFU.
pub fn eval_share(e: &Estimate) -> f64 {
    let iters = e.max_iters as f64 * e.floor_ms_per_iter / 1e3;
    let evals = e.evals as f64 * e.eval_seconds * e.mfu.mid();
    if iters + evals > 0.0 {
        evals / (iters + evals)
    } else {
        0.0
    }
}

/// An expected time, per iteration and in total for the run's iterations and evals, and
/// whether it is physically possible (`expect_verdict` on the time per iteration).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Expected {
    pub ms_per_iter: f64,
    /// `max_iters` iterations plus the evals, at the same utilisation as the iterations.
    pub total_seconds: f64,
    /// The evals' share of `total_seconds` (`eval_share`).
    pub eval_share: f64,
    pub possible: bool,
    /// One line: both times, then the verdict and its reason.
    pub reason: String,
}

/// What `ms` per iteration comes to over the whole run (`--expect-ms`).
pub fn expect_ms(e: &Estimate, ms: f64) -> Expected {
    let share = eval_share(e);
    let total = e.max_iters as f64 * ms / 1e3 / (1.0 - share);
    let (possible, why) = expect_verdict(e, ms);
    let reason = format!(
        "{} ms/iteration = {} for {} iterations + {} evals (the evals' {:.1}% of the compute at the same MFU): {why}",
        show_ms(ms),
        crate::perf::meter::human_duration(total),
        e.max_iters,
        e.evals,
        share * 100.0
    );
    Expected { ms_per_iter: ms, total_seconds: total, eval_share: share, possible, reason }
}

/// The time per iteration that finishes the run, iterations and evals, in `seconds`
/// (`--expect-total`): the evals' share of the compute comes off first, as they would run at
/// the same utilisation; the rest divided by `max_iters`.
pub fn expect_total(e: &Estimate, seconds: f64) -> Result<Expected> {
    if e.max_iters == 0 {
        bail!("--expect-total: the run has no iterations (max_iters = 0); give --set max_iters=N");
    }
    let share = eval_share(e);
    let ms = seconds * (1.0 - share) / e.max_iters as f64 * 1e3;
    let (possible, why) = expect_verdict(e, ms);
    let reason = format!(
        "{} for {} iterations + {} evals = {} ms/iteration (the evals' {:.1}% of the compute taken out at the same MFU): {why}",
        crate::perf::meter::human_duration(seconds),
        e.max_iters,
        e.evals,
        show_ms(ms),
        share * 100.0
    );
    Ok(Expected { ms_per_iter: ms, total_seconds: seconds, eval_share: share, possible, reason })
}

/// A duration: numbers with units `d`, `h`, `m`, `s` (`10m`, `2h30m`, `90s`, `1.5h`), or a
/// plain number of seconds (`600`).
pub fn parse_duration(text: &str) -> Result<f64> {
    let bad = |why: &str| anyhow::anyhow!("cannot read `{text}` as a duration ({why}); write e.g. 10m, 2h30m, 90s, 1.5h, or 600 (seconds)");
    let t = text.trim().to_ascii_lowercase();
    if t.is_empty() {
        return Err(bad("it is empty"));
    }
    if let Ok(x) = t.parse::<f64>() {
        return if x.is_finite() && x > 0.0 { Ok(x) } else { Err(bad("it must be a positive time")) };
    }
    let (mut total, mut num, mut last_unit) = (0.0, String::new(), None::<usize>);
    const UNITS: [(char, f64); 4] = [('d', 86400.0), ('h', 3600.0), ('m', 60.0), ('s', 1.0)];
    for c in t.chars() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let Some(i) = UNITS.iter().position(|(u, _)| *u == c) else {
            return Err(bad(&format!("unknown unit `{c}`: use d, h, m or s")));
        };
        if last_unit.is_some_and(|l| i <= l) {
            return Err(bad("units must go from days down to seconds, each once"));
        }
        let x: f64 = num.parse().map_err(|_| bad(&format!("no number before `{c}`")))?;
        total += x * UNITS[i].1;
        num.clear();
        last_unit = Some(i);
    }
    if !num.is_empty() {
        return Err(bad("a number without a unit after the first: write 2h30m, not 2h30"));
    }
    if !(total.is_finite() && total > 0.0) {
        return Err(bad("it must be a positive time"));
    }
    Ok(total)
}

/// Milliseconds with three significant digits (`0.0123 ms`, `1.23 ms`, `123 ms`), whole
/// milliseconds from 1000 up (`1234 ms`).
pub fn fmt_ms(ms: f64) -> String {
    if !ms.is_finite() {
        return "? ms".into();
    }
    let digits = if ms == 0.0 || ms.abs() >= 100.0 { 0 } else { (2 - ms.abs().log10().floor() as i32).max(0) as usize };
    format!("{ms:.digits$} ms")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perf::device::lookup;

    fn rtx4070_run() -> Run {
        Run {
            model: ModelConfig {
                n_layer: 4,
                n_head: 8,
                n_embd: 512,
                block_size: 1024,
                vocab_size: 50304,
                padded_vocab_size: 50304,
                bias: false,
            },
            vocab: Vocab::given(50304),
            batch_size: 16,
            grad_accum: 32,
            max_iters: 6000,
            eval_interval: 2000,
            eval_iters: 200,
            gpus: 1,
            recompute: Recompute::Off,
            zero_stage: 0,
        }
    }

    /// A preset's run as `estimate` sees it, with the vocabulary nanoGPT's data gives.
    fn preset_run(preset: &str, vocab: usize, gpus: usize) -> Run {
        let (cfg, _) = crate::config::resolve(Some(preset), None, &[]).unwrap();
        let model = crate::train::model_config(&crate::config::Config { vocab_size: Some(vocab), ..cfg.clone() }, 0).unwrap();
        Run {
            model,
            vocab: Vocab::given(vocab),
            batch_size: cfg.batch_size,
            grad_accum: cfg.gradient_accumulation_steps,
            max_iters: cfg.max_iters,
            eval_interval: cfg.eval_interval,
            eval_iters: cfg.eval_iters,
            gpus,
            recompute: cfg.recompute_level(),
            zero_stage: 0,
        }
    }

    fn est(run: &Run, device: &str, dtype: Precision) -> Estimate {
        let d = lookup(device).unwrap();
        run.check_gpus(&d).unwrap();
        estimate(run, &d, &DtypeChoice::given(dtype), None, MfuAssumption::default_for(&d, run))
    }

    /// |published / predicted middle - 1|, both ways round (the larger).
    fn off(predicted: f64, published: f64) -> f64 {
        (published / predicted - 1.0).abs().max((predicted / published - 1.0).abs())
    }

    #[test]
    fn the_rtx4070_run_takes_seconds_per_iteration_and_hours_in_total() {
        let e = est(&rtx4070_run(), "rtx-4070", Precision::F16);
        assert!(e.floor_ms_per_iter > 2000.0, "{}", e.floor_ms_per_iter);
        assert!(e.total_seconds > 3.0 * 3600.0, "{}", e.total_seconds);
        assert_eq!(e.fits, Some(true), "the run fit its user's 12 GB card: {} bytes", e.memory_bytes);
        let (ok, why) = expect_verdict(&e, 100.0);
        assert!(!ok && why.starts_with("impossible"), "{why}");
    }

    #[test]
    fn durations_parse_with_units_or_as_seconds() {
        for (t, want) in
            [("10m", 600.0), ("2h30m", 9000.0), ("90s", 90.0), ("600", 600.0), ("1.5h", 5400.0), ("1d2h", 93600.0), (" 10M ", 600.0)]
        {
            assert_eq!(parse_duration(t).unwrap(), want, "{t}");
        }
        for (t, why) in [
            ("", "empty"),
            ("ten minutes", "unknown unit"),
            ("10x", "unknown unit `x`"),
            ("2h30", "without a unit"),
            ("30m2h", "days down to seconds"),
            ("m", "no number"),
            ("0", "positive"),
            ("-5", "positive"),
        ] {
            let e = parse_duration(t).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains("2h30m"), "{t}: {e}");
        }
    }

    #[test]
    fn an_expected_total_is_a_time_per_iteration_after_the_evals() {
        let e = est(&rtx4070_run(), "rtx-4070", Precision::F16);
        let x = expect_total(&e, 600.0).unwrap();
        let share = eval_share(&e);
        assert!(share > 0.0 && share < 0.01, "{share}");
        assert!((x.ms_per_iter - 100.0 * (1.0 - share)).abs() < 1e-9);
        assert!(!x.possible && x.reason.starts_with("10m00s for 6000 iterations + 4 evals = 99.7 ms/iteration"), "{}", x.reason);
        assert!(x.reason.contains("impossible: 99.7 ms/iteration means") && x.reason.contains("x the rtx-4070 peak"), "{}", x.reason);
        // and back: --expect-ms gives the total it implies, evals included
        let y = expect_ms(&e, x.ms_per_iter);
        assert!((y.total_seconds - 600.0).abs() < 1e-6 && y.reason.contains("= 10m00s for 6000 iterations + 4 evals"), "{}", y.reason);
        assert!(expect_ms(&e, 100.0).reason.starts_with("100 ms/iteration = "));
        // a total the card can meet
        assert!(expect_total(&e, 24.0 * 3600.0).unwrap().possible);
        assert!(expect_total(&Estimate { max_iters: 0, ..e }, 600.0).is_err());
    }

    #[test]
    fn nanogpt_runs_measured_on_an_h200_fall_in_the_predicted_range() {
        // nanoGPT's own train.py (torch.compile, synthetic tokens) on an H200, steady ms/iter
        // by `gptrain logs` (PERFORMANCE.md, "Estimates against a real GPU"): the rtx4070-40m
        // run's shape in fp16, and GPT-2 124M (config/train_gpt2.py's schedule) in bf16;
        // issue 20 asks for each within 25% of the range's middle
        let gpt2 = Run {
            model: ModelConfig { n_layer: 12, n_head: 12, n_embd: 768, bias: true, ..rtx4070_run().model },
            batch_size: 12,
            grad_accum: 40,
            ..rtx4070_run()
        };
        for (run, dtype, measured_ms) in [(rtx4070_run(), Precision::F16, 366.6), (gpt2, Precision::Bf16, 1067.5)] {
            let e = est(&run, "h200", dtype);
            let (lo, hi) = e.ms_per_iter_range;
            assert!(lo <= measured_ms && measured_ms <= hi, "{measured_ms} ms outside {lo:.0}-{hi:.0}");
            assert!(off(e.ms_per_iter, measured_ms) < 0.25, "expected {:.0} ms, measured {measured_ms}", e.ms_per_iter);
        }
    }

    #[test]
    fn nanogpt_readme_runs_fall_within_a_quarter_of_the_middle() {
        // nanoGPT's README: config/train_shakespeare_char.py "on one A100 GPU ... takes about 3
        // minutes" (5000 iterations, evals every 250 included; its data has 65 characters),
        // and GPT-2 124M (config/train_gpt2.py, 600k iterations) on "a single 8XA100 40GB node
        // in about 4 days"; both in bf16, nanoGPT's default on an A100
        let e = est(&preset_run("shakespeare-char", 65, 1), "a100-40gb", Precision::Bf16);
        assert_eq!((e.evals, e.max_iters), (21, 5000));
        assert!(off(e.total_seconds, 180.0) < 0.25, "predicted {:.0} s, published ~180 s", e.total_seconds);
        let (lo, hi) = e.total_seconds_range;
        assert!(lo < 180.0 && 180.0 < hi, "{lo:.0}-{hi:.0} s");
        let e = est(&preset_run("gpt2-124m", 50304, 8), "a100-40gb", Precision::Bf16);
        assert_eq!((e.grad_accum_per_gpu, e.tokens_per_iter), (5, 491_520));
        let days = e.total_seconds / 86400.0;
        assert!(off(days, 4.0) < 0.25, "predicted {days:.2} days, published ~4");
        let (lo, hi) = e.total_seconds_range;
        assert!(lo / 86400.0 < 4.0 && 4.0 < hi / 86400.0, "{lo:.0}-{hi:.0} s");
    }

    #[test]
    fn small_models_get_a_lower_mfu_than_gpt2_sized_ones() {
        let d = lookup("a100-40gb").unwrap();
        let mid = |r: &Run| MfuAssumption::default_for(&d, r).mid();
        let (tiny, small, mid40, gpt2) = (
            preset_run("shakespeare-char-cpu", 65, 1),
            preset_run("shakespeare-char", 65, 1),
            rtx4070_run(),
            preset_run("gpt2-124m", 50304, 1),
        );
        assert!(mid(&tiny) <= mid(&small) && mid(&small) < mid(&mid40) && mid(&mid40) <= mid(&gpt2));
        assert!(mid(&small) < 0.6 * mid(&gpt2), "{} vs {}", mid(&small), mid(&gpt2));
        // a bigger micro-batch of the small model keeps the GPU busier
        assert!(mid(&Run { batch_size: 128, ..small.clone() }) > mid(&small));
        // below every measured run the default says it is a guess
        assert!(MfuAssumption::default_for(&d, &tiny).note.is_some());
        assert!(MfuAssumption::default_for(&d, &gpt2).note.is_none());
        assert!(MfuAssumption::default_for(&d, &gpt2).source.contains("PERFORMANCE.md"));
    }

    #[test]
    fn zero_1_keeps_the_largest_share_of_the_optimiser_state_per_gpu_and_sends_less() {
        let whole = est(&preset_run("gpt2-124m", 50304, 8), "h100", Precision::Bf16);
        let split = est(&Run { zero_stage: 1, ..preset_run("gpt2-124m", 50304, 8) }, "h100", Precision::Bf16);
        // an eighth of the model, give or take a piece (a layer of fcw: 4 C x C)
        let own = crate::dist::zero::largest_part(&crate::model::ParamLayout::new(&preset_run("gpt2-124m", 50304, 8).model), 8);
        assert!(own >= split.params / 8 && own <= split.params / 8 + 4 * 768 * 768, "{own}");
        assert_eq!(split.memory.optimizer, 8 * own as u64);
        assert_eq!(split.memory.master_weights, 4 * own as u64);
        assert_eq!((whole.memory.optimizer, whole.memory.master_weights), (8 * whole.params as u64, 4 * whole.params as u64));
        assert_eq!(split.memory.activations, whole.memory.activations);
        assert!(split.memory_bytes < whole.memory_bytes && split.max_micro_batch >= whole.max_micro_batch);
        // a reduce of the fp32 gradients and a broadcast of the bf16 weights: (N-1)/N of each
        let a = split.allreduce.as_ref().unwrap();
        assert_eq!(a.zero_weight_bytes, Some(2 * split.params as u64));
        assert!((a.bytes_per_gpu - 0.875 * 6.0 * split.params as f64).abs() < 1.0);
        assert_eq!(split.zero_stage, 1);
        // one GPU: nothing to split
        let one = est(&Run { zero_stage: 1, ..preset_run("gpt2-124m", 50304, 1) }, "h100", Precision::Bf16);
        assert_eq!((one.zero_stage, one.memory.optimizer), (0, 8 * one.params as u64));
    }

    #[test]
    fn data_parallel_runs_divide_the_micro_steps_and_pay_an_all_reduce() {
        let one = est(&preset_run("gpt2-124m", 50304, 1), "a100-40gb", Precision::Bf16);
        let eight = est(&preset_run("gpt2-124m", 50304, 8), "a100-40gb", Precision::Bf16);
        assert!(one.allreduce.is_none());
        // each GPU keeps room for NCCL's buffers, as `train` does: in the total and the fit
        assert_eq!(eight.memory.overhead, one.memory.overhead + flops::NCCL_BUFFER_BYTES);
        assert_eq!(eight.memory_bytes, one.memory_bytes + flops::NCCL_BUFFER_BYTES);
        assert!(eight.max_micro_batch < one.max_micro_batch, "{} vs {}", eight.max_micro_batch, one.max_micro_batch);
        let a = eight.allreduce.as_ref().unwrap();
        // ring all-reduce of fp32 gradients: 2 (N-1)/N of them through each GPU's link
        assert_eq!(a.gradient_bytes, 4 * one.params as u64);
        assert!((a.bytes_per_gpu - 1.75 * a.gradient_bytes as f64).abs() < 1.0);
        assert!((a.ms_per_iter - a.bytes_per_gpu / 300e9 * 1e3).abs() < 1e-9, "A100 NVLink: 300 GB/s each way");
        let compute = |e: &Estimate| e.ms_per_iter - e.allreduce.as_ref().map_or(0.0, |a| a.ms_per_iter);
        assert!((compute(&one) / compute(&eight) - 8.0).abs() < 1e-9);
        assert_eq!(one.tokens_per_iter, eight.tokens_per_iter);
        // evals run on one GPU either way
        assert_eq!(one.eval_seconds, eight.eval_seconds);
        // the same run over PCIe pays more for the all-reduce
        let pcie = est(&Run { gpus: 8, ..rtx4070_run() }, "rtx-4090", Precision::Bf16);
        assert!(pcie.allreduce.unwrap().ms_per_iter > 5.0 * a.ms_per_iter * pcie.params as f64 / one.params as f64);
        // what nanoGPT asserts is a clear error
        let d = lookup("a100-40gb").unwrap();
        let gpt2 = preset_run("gpt2-124m", 50304, 3);
        let err = gpt2.check_gpus(&d).unwrap_err().to_string();
        assert!(err.contains("divisible by --gpus 3") && err.contains("gradient_accumulation_steps=39 or 42"), "{err}");
        assert!(Run { gpus: 0, ..gpt2.clone() }.check_gpus(&d).unwrap_err().to_string().contains("at least 1"));
        assert!(Run { gpus: 2, ..gpt2 }.check_gpus(&crate::perf::device::cpu()).is_err());
    }

    #[test]
    fn a_gpu_defaults_to_nanogpts_dtype_unless_one_is_named() {
        let (a100, t4, cpu) = (lookup("a100").unwrap(), lookup("t4").unwrap(), crate::perf::device::cpu());
        let (p, notes) = DtypeChoice::choose(None, None, &a100);
        assert!(p.dtype == Precision::Bf16 && p.source.contains("nanoGPT") && notes.is_empty(), "{}", p.source);
        assert_eq!(DtypeChoice::choose(None, None, &t4).0.dtype, Precision::F16);
        assert_eq!(DtypeChoice::choose(None, None, &cpu).0.dtype, Precision::F32);
        assert_eq!(DtypeChoice::choose(None, Some(Precision::F16), &a100).0.dtype, Precision::F16);
        let (p, _) = DtypeChoice::choose(Some(Precision::F32), Some(Precision::F16), &a100);
        assert!(p.dtype == Precision::F32 && p.source == "--dtype");
        // what the device cannot run is replaced, and said so
        let (p, notes) = DtypeChoice::choose(Some(Precision::Bf16), None, &t4);
        assert!(p.dtype == Precision::F16 && notes[0].contains("no bf16"), "{notes:?}");
        let (p, notes) = DtypeChoice::choose(None, Some(Precision::Tf32), &cpu);
        assert!(p.dtype == Precision::F32 && notes[0].contains("fp32"), "{notes:?}");
        // the CPU runs bf16 and fp16 mixed precision itself
        let (p, notes) = DtypeChoice::choose(None, Some(Precision::F16), &cpu);
        assert!(p.dtype == Precision::F16 && notes.is_empty(), "{notes:?}");
    }

    #[test]
    fn each_dtype_names_the_source_of_its_own_peak() {
        let e = est(&rtx4070_run(), "a100-40gb", Precision::F32);
        assert!(e.peak_source.contains("FP32 (non-tensor)") && !e.peak_source.contains("FP16"), "{}", e.peak_source);
        let src = |d: &str, dt: &str| e_peaks(d).into_iter().find(|p| p.dtype == dt).unwrap().source;
        assert!(src("t4", "tf32").contains("no TF32"));
        assert!(src("rtx-4070", "tf32").contains("TF32"));
        assert!(src("rtx-4070", "fp16").contains("FP32 Accumulate"));
        assert!(src("h200", "bf16").contains("BF16"));
    }

    fn e_peaks(device: &str) -> Vec<Peak> {
        est(&rtx4070_run(), device, Precision::F16).peaks
    }

    #[test]
    fn milliseconds_keep_three_significant_digits() {
        assert_eq!(fmt_ms(0.012345), "0.0123 ms");
        assert_eq!(fmt_ms(1.2345), "1.23 ms");
        assert_eq!(fmt_ms(12.345), "12.3 ms");
        assert_eq!(fmt_ms(123.45), "123 ms");
        assert_eq!(fmt_ms(1234.4), "1234 ms");
        assert_eq!(fmt_ms(0.0), "0 ms");
    }
}
