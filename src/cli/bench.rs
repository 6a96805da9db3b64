//! `gptrain bench`: timed training steps of a config on this machine's CPU or GPU.

use super::commands::{pool, resolve, worker_threads};
use super::estimate::model_without_data;
use super::printer::{gib, recompute_note, say, thousands};
use super::ConfigArgs;
use crate::backend::cpu::matmul::GemmLib;
use crate::backend::cpu::simd::Isa;
use crate::backend::Precision;
use crate::config::Config;
use crate::model::ModelConfig;
use crate::perf::{device, flops};
use crate::train;
use anyhow::{bail, Result};
use clap::Args;

#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub cfg: ConfigArgs,
    /// Timed steps.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Micro-batches per step (gradient accumulation before each clip and AdamW update). The
    /// config's gradient_accumulation_steps is not used: a step is one micro-batch unless this
    /// says more.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// CPU worker threads (default: the config's `threads`; 0 = the physical cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Share of the step per kernel.
    #[arg(long)]
    pub profile: bool,
    /// Time only the linear layers' matmuls (forward, input and weight gradients) on this
    /// model's shapes: the matmul library's speed, to compare with `tools/torch_bench.py --linears`.
    #[arg(long, conflicts_with = "profile")]
    pub linears: bool,
    /// Print one JSON object on stdout instead of the summary line.
    #[arg(long)]
    pub json: bool,
}

pub fn bench(a: &BenchArgs) -> Result<()> {
    let began = std::time::Instant::now();
    if a.steps == 0 {
        bail!("--steps must be at least 1 (the timed steps whose median is reported)");
    }
    if a.grad_accum == 0 {
        bail!("--grad-accum must be at least 1 (micro-batches per step)");
    }
    let cfg = resolve(&a.cfg)?;
    let threads = worker_threads(a.threads.unwrap_or(cfg.threads));
    pool(threads)?.install(|| -> Result<()> {
        let (model, _) = model_without_data(&cfg, &a.cfg)?;
        if let (train::Chosen::Cuda(gpu), reason) = train::sample_backend(&cfg)? {
            return bench_gpu(a, &cfg, &model, gpu, reason, began);
        }
        if a.linears {
            let dev = device::cpu();
            let (ms, flops) = crate::bench::run_linears(&model, cfg.batch_size, a.steps, a.warmup);
            let gflops = flops / (ms / 1e3) / 1e9;
            let peak = dev.peak_flops(Precision::F32);
            if a.json {
                say!("{}", serde_json::json!({ "ms_per_step": ms, "gflops": gflops, "mfu": gflops * 1e9 / peak, "peak_gflops": peak / 1e9, "threads": threads, "steps": a.steps }));
            } else {
                say!("linear layers only (forward, input and weight gradients, lm_head): {ms:.2} ms median over {} passes", a.steps);
                say!("{gflops:.1} GFLOP/s, {:.1}% of {:.1} GFLOP/s ({})", gflops * 1e9 / peak * 100.0, peak / 1e9, dev.source);
            }
            return Ok(());
        }
        // the dtype the config names, refused as `train` refuses it
        let precision = train::check_device(&cfg)?;
        let recompute = cfg.recompute_level();
        let need = flops::memory(&model, cfg.batch_size, model.block_size, precision.bytes() as u64, recompute, flops::Impl::Cpu).total();
        if let Some(warning) = train::check_memory(need, device::MemInfo::read())? {
            eprintln!("{warning}");
        }
        let cpu = train::cpu_backend(&cfg);
        let to_run = began.elapsed().as_secs_f64() * 1e3;
        let r = crate::bench::run(&model, cfg.batch_size, a.grad_accum, a.steps, a.warmup, a.profile, cpu, precision, recompute)?;
        // the CPU's peaks are probed once, here
        let info = crate::backend::Backend::device(&cpu, precision);
        let (peak, peak_source) = train::peak_of(&cfg, &info);
        let peak = peak.unwrap_or(0.0);
        let tps = (cfg.batch_size * model.block_size * a.grad_accum) as f64 / (r.ms_per_step / 1e3);
        let gflops = r.flops_per_step / (r.ms_per_step / 1e3) / 1e9;
        // GFLOP/s of the profiled kernels that do matmul work (a step's: all its micro-batches)
        let kernel_flops = crate::bench::profile_flops(&model, cfg.batch_size * a.grad_accum);
        let rate = |name: &str, ms: f64| kernel_flops.iter().find(|k| k.0 == name).map(|k| k.1 / (ms / 1e3) / 1e9);
        if a.json {
            let rates: serde_json::Map<String, serde_json::Value> =
                r.profile.iter().filter_map(|p| Some((p.name.clone(), rate(&p.name, p.ms)?.into()))).collect();
            let v = serde_json::json!({
                "ms_per_step": r.ms_per_step, "ms_p10": r.p10_ms, "ms_p90": r.p90_ms, "tokens_per_second": tps, "gflops": gflops,
                "mfu": gflops * 1e9 / peak, "peak_gflops": peak / 1e9, "peak_rss_bytes": r.peak_rss_bytes, "threads": threads,
                "params": r.params, "steps": a.steps, "profile": profile_pairs(&r), "profile_gflops": rates,
                "matmul_library": GemmLib::get().describe(), "isa": Isa::get().name(),
                "dtype": precision.name(), "dtype_note": info.precision_note, "recompute": recompute.level(),
                "grad_accum": a.grad_accum, "warmup_ms": r.times_ms[..a.warmup], "steps_ms": r.times_ms[a.warmup..],
                "first_steady_ms": to_run + r.ends_ms[a.warmup],
            });
            say!("{v}");
            return Ok(());
        }
        say!(
            "model: {} layers, {} heads, {} dims, block {}, batch {}, vocab {} ({:.2}M params), {} threads; dtype: {}; vectors: {}; matmuls: {}",
            model.n_layer,
            model.n_head,
            model.n_embd,
            model.block_size,
            cfg.batch_size,
            model.padded_vocab_size,
            r.params as f64 / 1e6,
            threads,
            if info.precision_note.is_empty() { precision.name().to_string() } else { format!("{} ({})", precision.name(), info.precision_note) },
            Isa::get().name(),
            GemmLib::get().describe()
        );
        say_step(&r, a.steps, a.grad_accum);
        say!(
            "{} tokens/s, {:.1} GFLOP/s of model FLOPs, MFU {:.1}% of {:.1} GFLOP/s ({})",
            thousands(tps),
            gflops,
            gflops * 1e9 / peak * 100.0,
            peak / 1e9,
            peak_source
        );
        say!("peak memory (RSS): {}{}", gib(r.peak_rss_bytes), recompute_note(recompute));
        if !r.profile.is_empty() {
            say!("profile (share of the step; GFLOP/s and % of the peak where the kernel does matmul work):");
            let total: f64 = r.profile.iter().map(|p| p.ms).sum();
            for p in &r.profile {
                let speed = rate(&p.name, p.ms).map_or(String::new(), |g| format!(" {g:>8.1} GFLOP/s {:>5.1}%", g * 1e9 / peak * 100.0));
                say!("  {:<28} {:>8.2} ms {:>6.1}%{speed}", p.name, p.ms, p.ms / total * 100.0);
            }
        }
        Ok(())
    })
}

/// A profile as `bench --json` has always given it: [name, ms per step] pairs, largest first.
fn profile_pairs(r: &crate::bench::BenchResult) -> Vec<(&str, f64)> {
    r.profile.iter().map(|p| (p.name.as_str(), p.ms)).collect()
}

/// `bench`'s line of step times.
fn say_step(r: &crate::bench::BenchResult, steps: usize, accum: usize) {
    let what = if accum > 1 { format!("{accum} x (forward, backward), clip, AdamW") } else { "forward, backward, clip, AdamW".into() };
    say!("step ({what}): {:.2} ms median over {steps} steps (p10 {:.2}, p90 {:.2})", r.ms_per_step, r.p10_ms, r.p90_ms);
}

/// `bench` on a GPU: whole training steps in the config's dtype, timed to the step's read of its
/// scalars.
fn bench_gpu(
    a: &BenchArgs,
    cfg: &Config,
    model: &ModelConfig,
    gpu: crate::backend::cuda::Cuda,
    reason: Option<String>,
    began: std::time::Instant,
) -> Result<()> {
    use crate::backend::Backend;
    if a.linears {
        bail!("--linears times the CPU's matmul library: use it with `--set device=cpu`");
    }
    if let Some(r) = reason {
        eprintln!("{r}");
    }
    let precision = train::check_device(cfg)?;
    let info = gpu.device(precision);
    let (peak, peak_source) = train::peak_of(cfg, &info);
    let d = precision.bytes() as u64;
    let held = gpu.memory_use().map_or(0, |m| m.current);
    let recompute = cfg.recompute_level();
    let caller = train::Caller::Bench;
    train::check_gpu_memory(caller, model, cfg.batch_size, a.grad_accum, d, recompute, info.memory, held, 0, 0, &info.description)?;
    let memory_model = flops::memory(model, cfg.batch_size, model.block_size, d, recompute, flops::Impl::Gpu).allocated();
    let to_run = began.elapsed().as_secs_f64() * 1e3;
    let r = crate::bench::run(model, cfg.batch_size, a.grad_accum, a.steps, a.warmup, a.profile, gpu, precision, recompute)?;
    let tps = (cfg.batch_size * model.block_size * a.grad_accum) as f64 / (r.ms_per_step / 1e3);
    let flops_s = r.flops_per_step / (r.ms_per_step / 1e3);
    let mfu = peak.map(|p| flops_s / p);
    // each profiled op's TFLOP/s (ops that do matmul work: a step's FLOPs, all its
    // micro-batches) or GB/s (the rest), against the card's ceilings
    let kernel_flops = crate::bench::profile_flops(model, cfg.batch_size * a.grad_accum);
    let rates = crate::bench::profile_rates(&r.profile, &kernel_flops, peak, info.bandwidth);
    if a.json {
        eprintln!("{}", super::printer::UNVALIDATED_GPU);
        let profile_rates: serde_json::Map<String, serde_json::Value> =
            rates.iter().map(|x| (x.name.clone(), serde_json::to_value(x).expect("plain numbers"))).collect();
        say!(
            "{}",
            serde_json::json!({ "ms_per_step": r.ms_per_step, "ms_p10": r.p10_ms, "ms_p90": r.p90_ms, "tokens_per_second": tps,
                "gflops": flops_s / 1e9, "mfu": mfu, "peak_gflops": peak.map(|p| p / 1e9), "device": info.description,
                "params": r.params, "steps": a.steps, "profile": profile_pairs(&r), "profile_rates": profile_rates,
                "dtype": precision.name(), "dtype_note": info.precision_note, "recompute": recompute.level(),
                "grad_accum": a.grad_accum, "warmup_ms": r.times_ms[..a.warmup], "steps_ms": r.times_ms[a.warmup..],
                "first_steady_ms": to_run + r.ends_ms[a.warmup], "peak_device_bytes": r.peak_device_bytes,
                "memory_model_bytes": memory_model, "kernels": r.warm_up_note })
        );
        return Ok(());
    }
    say!("device: {} ; {}", info.description, super::printer::peak_text(peak, precision, &peak_source));
    say!("{}", super::printer::UNVALIDATED_GPU);
    say!("dtype: {} ({})", precision.name(), info.precision_note);
    say_step(&r, a.steps, a.grad_accum);
    let mfu = mfu.map_or("MFU n/a".to_string(), |m| format!("MFU {:.1}%", m * 100.0));
    say!("{} tokens/s, {:.1} GFLOP/s of model FLOPs, {mfu}", thousands(tps), flops_s / 1e9);
    if let Some(peak) = r.peak_device_bytes {
        let used = crate::backend::MemoryUse { current: 0, peak, driver: None };
        say!("{}{}", train::memory_line(used, memory_model), recompute_note(recompute));
    }
    let first = (to_run + r.ends_ms[a.warmup]) / 1e3;
    match a.warmup {
        0 => say!("warm-up: none asked for (--warmup 0): the first timed step, which ended {first:.1} s after launch, holds the setup"),
        n => say!("warm-up: {n} step(s), not timed; the first timed step ended {first:.1} s after launch"),
    }
    if let Some(note) = &r.warm_up_note {
        say!("{note}");
    }
    if !rates.is_empty() {
        let ceilings = match (peak, info.bandwidth) {
            (Some(f), Some(b)) => format!("% of {:.1} TFLOP/s ({}) or {:.0} GB/s", f / 1e12, precision.name(), b / 1e9),
            // `--set peak_tflops` on a card not in the table: its bandwidth is unknown
            (Some(f), None) => format!("% of {:.1} TFLOP/s ({}) for matmul work", f / 1e12, precision.name()),
            _ => "the card is not in the device table: no %".into(),
        };
        say!("profile: device time per op (CUDA events) per step, its share; TFLOP/s for matmul work, GB/s for the rest; {ceilings}");
        for x in &rates {
            let speed = match (x.tflops, x.gbs) {
                (Some(t), _) => format!("{t:>8.2} TFLOP/s"),
                (_, Some(g)) => format!("{g:>8.1} GB/s"),
                _ => String::new(),
            };
            let pct = x.pct_of_peak.map_or(String::new(), |p| format!("{p:>5.1}%"));
            let row = format!("  {:<28} {:>8.3} ms {:>6.1}% {speed:<16} {pct}", x.name, x.ms, x.share);
            say!("{}", row.trim_end());
        }
    }
    Ok(())
}
