//! `gptrain estimate`: time per iteration, total time and memory of a config on a device,
//! before running it. Every number comes from `perf::flops` and `perf::device`.

use super::device::Device;
use super::flops::{self, Impl, Memory};
use crate::backend::Precision;
use crate::model::ModelConfig;

/// The assumed MFU range and where it comes from.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MfuAssumption {
    pub low: f64,
    pub high: f64,
    pub source: String,
}

impl MfuAssumption {
    pub fn mid(&self) -> f64 {
        (self.low + self.high) / 2.0
    }

    /// The default for a device: what well-tuned small-GPT training reaches there.
    pub fn default_for(device: &Device) -> MfuAssumption {
        if device.name == "cpu" {
            MfuAssumption {
                low: 0.30,
                high: 0.60,
                source: "gptrain's f32 steps on 2 x86 threads measured 31-45% on a ~1M-parameter model and 35-69% on 10-124M ones, lower on a busy machine (PERFORMANCE.md); --calibrate measures this machine".into(),
            }
        } else if device.name.starts_with("rtx") {
            MfuAssumption { low: 0.25, high: 0.45, source: "assumed: well-tuned PyTorch/llm.c training of GPT-2-small-sized models on GeForce cards typically reaches 25-45% of the fp16/fp32-accumulate peak".into() }
        } else {
            MfuAssumption {
                low: 0.30,
                high: 0.50,
                source: "nanoGPT with torch.compile (bf16) measured 37-40% on an H200 for GPT-2 124M and a 4x512 model, eager PyTorch 25-32% (PERFORMANCE.md); its published A100 run implies ~30%, llm.c's ~60%".into(),
            }
        }
    }

    pub fn fixed(mfu: f64, source: &str) -> MfuAssumption {
        MfuAssumption { low: mfu, high: mfu, source: source.into() }
    }
}

/// Everything `estimate` reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Estimate {
    /// The run estimated: model shape, micro-batch and accumulation steps.
    pub model: ModelConfig,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub params: usize,
    pub params_nanogpt: usize,
    pub tokens_per_iter: usize,
    pub flops_per_token: f64,
    pub flops_per_token_palm: f64,
    pub flops_per_iter: f64,
    pub device: String,
    pub dtype: String,
    pub peak_flops: f64,
    pub peak_source: String,
    pub floor_ms_per_iter: f64,
    pub mfu: MfuAssumption,
    pub ms_per_iter: f64,
    pub ms_per_iter_range: (f64, f64),
    /// Time of one eval (2 x eval_iters forward passes), at the expected MFU.
    pub eval_seconds: f64,
    pub evals: u64,
    pub total_seconds: f64,
    pub total_seconds_range: (f64, f64),
    pub floor_total_seconds: f64,
    pub max_iters: u64,
    pub memory: Memory,
    pub memory_bytes: u64,
    pub device_memory_bytes: u64,
    /// None when the device's memory is unknown.
    pub fits: Option<bool>,
    pub max_micro_batch: usize,
    pub max_micro_batch_recompute: usize,
    pub memory_with_recompute: u64,
    /// What nanoGPT's train.py (PyTorch, torch.compile) would need at this micro-batch, on a GPU
    /// (`flops::Impl::Torch`); None on the CPU.
    pub memory_pytorch_bytes: Option<u64>,
    pub fits_pytorch: Option<bool>,
}

/// Shape and schedule of the run to estimate.
#[derive(Clone, Debug)]
pub struct Run {
    pub model: ModelConfig,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub max_iters: u64,
    pub eval_interval: u64,
    pub eval_iters: usize,
}

pub fn estimate(run: &Run, device: &Device, dtype: Precision, peak_override: Option<f64>, mfu: MfuAssumption) -> Estimate {
    let m = &run.model;
    let t = m.block_size;
    let p = flops::params(m);
    let fpt = flops::flops_per_token(m, t).train();
    let tokens = run.batch_size * t * run.grad_accum;
    let fpi = fpt * tokens as f64;
    let peak = peak_override.unwrap_or_else(|| device.peak_flops(dtype));
    let floor_s = fpi / peak;
    let s_at = |u: f64| floor_s / u;
    // eval: 2 splits x eval_iters micro-batches, forward only (a third of a training micro-step)
    let eval_s = |u: f64| 2.0 * run.eval_iters as f64 * s_at(u) / run.grad_accum as f64 / 3.0;
    let evals = run.max_iters / run.eval_interval.max(1) + 1;
    let total = |u: f64| run.max_iters as f64 * s_at(u) + evals as f64 * eval_s(u);
    let imp = if device.name == "cpu" { Impl::Cpu } else { Impl::Gpu };
    let d = if imp == Impl::Cpu { 4 } else { dtype.bytes() as u64 };
    let mem = flops::memory(m, run.batch_size, t, d, false, imp);
    let cap = device.memory_bytes;
    let fits = |bytes: u64| (cap > 0).then_some(bytes <= cap); // None: the device's memory is unknown
    let torch = (imp == Impl::Gpu).then(|| flops::memory(m, run.batch_size, t, d, false, Impl::Torch).total());
    Estimate {
        model: m.clone(),
        batch_size: run.batch_size,
        grad_accum: run.grad_accum,
        params: p.total,
        params_nanogpt: p.nanogpt,
        tokens_per_iter: tokens,
        flops_per_token: fpt,
        flops_per_token_palm: flops::palm_flops_per_token(m, t),
        flops_per_iter: fpi,
        device: device.name.clone(),
        dtype: dtype.name().into(),
        peak_flops: peak,
        peak_source: if peak_override.is_some() { "--peak-tflops".into() } else { device.source.clone() },
        floor_ms_per_iter: floor_s * 1e3,
        ms_per_iter: s_at(mfu.mid()) * 1e3,
        ms_per_iter_range: (s_at(mfu.high) * 1e3, s_at(mfu.low) * 1e3),
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
        max_micro_batch: flops::max_micro_batch(m, t, d, false, imp, cap),
        max_micro_batch_recompute: if imp == Impl::Gpu { flops::max_micro_batch(m, t, d, true, imp, cap) } else { 0 },
        memory_with_recompute: flops::memory(m, run.batch_size, t, d, true, imp).total(),
        memory_pytorch_bytes: torch,
        fits_pytorch: torch.and_then(fits),
        mfu,
    }
}

/// Whether `ms` per iteration is physically possible, with the reason.
pub fn expect_verdict(e: &Estimate, ms: f64) -> (bool, String) {
    let needed = e.flops_per_iter / (ms / 1e3);
    let ratio = needed / e.peak_flops;
    if ms < e.floor_ms_per_iter {
        (
            false,
            format!(
                "impossible: {ms} ms/iteration means {:.3e} FLOP/s ({:.1} TFLOP/s), {ratio:.1}x the {} peak of {:.1} TFLOP/s for {}; even at 100% utilisation an iteration of {:.3e} FLOPs takes {:.0} ms",
                needed,
                needed / 1e12,
                e.device,
                e.peak_flops / 1e12,
                e.dtype,
                e.flops_per_iter,
                e.floor_ms_per_iter
            ),
        )
    } else {
        (
            true,
            format!(
                "possible: {ms} ms/iteration means {:.1}% MFU on {} ({}); the expected time is {:.0} ms at {:.0}% MFU",
                ratio * 100.0,
                e.device,
                e.dtype,
                e.ms_per_iter,
                e.mfu.mid() * 100.0
            ),
        )
    }
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
            batch_size: 16,
            grad_accum: 32,
            max_iters: 6000,
            eval_interval: 2000,
            eval_iters: 200,
        }
    }

    #[test]
    fn the_rtx4070_run_takes_seconds_per_iteration_and_hours_in_total() {
        let d = lookup("rtx-4070").unwrap();
        let e = estimate(&rtx4070_run(), &d, Precision::F16, None, MfuAssumption::default_for(&d));
        assert!(e.floor_ms_per_iter > 2000.0, "{}", e.floor_ms_per_iter);
        assert!(e.total_seconds > 3.0 * 3600.0, "{}", e.total_seconds);
        assert_eq!(e.fits, Some(true), "the run fit its user's 12 GB card: {} bytes", e.memory_bytes);
        let (ok, why) = expect_verdict(&e, 100.0);
        assert!(!ok && why.starts_with("impossible"), "{why}");
    }

    #[test]
    fn nanogpt_runs_measured_on_an_h200_fall_in_the_predicted_range() {
        // nanoGPT's own train.py (torch.compile, synthetic tokens) on an H200, steady ms/iter
        // by `gptrain logs` (PERFORMANCE.md, "Estimates against a real GPU"): the rtx4070-40m
        // run's shape in fp16, and GPT-2 124M (config/train_gpt2.py's schedule) in bf16
        let d = lookup("h200").unwrap();
        let gpt2 = Run {
            model: ModelConfig { n_layer: 12, n_head: 12, n_embd: 768, bias: true, ..rtx4070_run().model },
            batch_size: 12,
            grad_accum: 40,
            ..rtx4070_run()
        };
        for (run, dtype, measured_ms) in [(rtx4070_run(), Precision::F16, 366.6), (gpt2, Precision::Bf16, 1067.5)] {
            let e = estimate(&run, &d, dtype, None, MfuAssumption::default_for(&d));
            let (lo, hi) = e.ms_per_iter_range;
            assert!(lo <= measured_ms && measured_ms <= hi, "{measured_ms} ms outside {lo:.0}-{hi:.0}");
            assert!((e.ms_per_iter / measured_ms - 1.0).abs() < 0.1, "expected {:.0} ms, measured {measured_ms}", e.ms_per_iter);
        }
    }

    #[test]
    fn published_gpt2_124m_a100_runs_imply_plausible_mfu() {
        // nanoGPT README: GPT-2 124M on one 8xA100 40GB node "in about 4 days" for 600k
        // iterations of 491,520 tokens; llm.c: GPT-2 124M on 10B tokens in ~90 minutes on
        // 8xA100 80GB. Our FLOPs model and the A100's 312 TFLOP/s bf16 peak put these at
        // ~30% and ~60% MFU, the range our default assumption (30-50%) sits in.
        let d = lookup("a100-40gb").unwrap();
        let model = ModelConfig {
            n_layer: 12,
            n_head: 12,
            n_embd: 768,
            block_size: 1024,
            vocab_size: 50304,
            padded_vocab_size: 50304,
            bias: false,
        };
        let fpt = crate::perf::flops::flops_per_token(&model, 1024).train();
        let peak = d.peak_flops(Precision::Bf16);
        let nanogpt_mfu = fpt * 491_520.0 * 600_000.0 / (4.0 * 86400.0 * 8.0) / peak;
        let llmc_mfu = fpt * 10e9 / (90.0 * 60.0 * 8.0) / peak;
        assert!((0.2..0.4).contains(&nanogpt_mfu), "{nanogpt_mfu}");
        assert!((0.5..0.75).contains(&llmc_mfu), "{llmc_mfu}");
        let run = Run { model, batch_size: 12, grad_accum: 40, max_iters: 600_000, eval_interval: 1000, eval_iters: 200 };
        let e = estimate(&run, &d, Precision::Bf16, None, MfuAssumption::default_for(&d));
        let published_s = 4.0 * 86400.0 * 8.0 / 600_000.0; // GPU-seconds per iteration
        assert!(e.ms_per_iter_range.0 / 1e3 < published_s && published_s < 1.5 * e.ms_per_iter_range.1 / 1e3, "{e:?}");
    }
}
