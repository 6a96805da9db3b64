//! `gptrain estimate`: what a config costs on a named device, and whether a promised time is possible.

use super::commands::{pool, resolve, DEFAULT_PRESET};
use super::printer::{gib, recompute_note, say, thousands};
use super::ConfigArgs;
use crate::backend::Precision;
use crate::config::{self, Config};
use crate::model::{ModelConfig, Recompute};
use crate::perf::device;
use crate::perf::estimate::{self, MfuAssumption, Run};
use crate::train;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::Path;

#[derive(Args, Clone, Debug)]
pub struct EstimateArgs {
    #[command(flatten)]
    pub cfg: ConfigArgs,
    /// Device name (`gptrain estimate --list-devices`), e.g. rtx-4070, a100-80gb, cpu.
    #[arg(long)]
    pub device: Option<String>,
    /// fp32, tf32, fp16 or bf16 (default: the config's dtype if it names one, else nanoGPT's
    /// on a GPU: bf16 where the card has it, else fp16).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Data-parallel GPUs of the device, as nanoGPT's DDP: each runs
    /// gradient_accumulation_steps / N micro-steps, then the gradients are all-reduced.
    #[arg(long, default_value_t = 1)]
    pub gpus: usize,
    /// Assumed model FLOPs utilisation (0-1); default depends on device and size.
    #[arg(long)]
    pub mfu: Option<f64>,
    /// Peak TFLOP/s to use instead of the device table's.
    #[arg(long)]
    pub peak_tflops: Option<f64>,
    /// Is this many ms per iteration physically possible? Also says the total it implies
    /// for max_iters iterations and the evals.
    #[arg(long, conflicts_with = "expect_total")]
    pub expect_ms: Option<f64>,
    /// Can the whole run (max_iters iterations and the evals) finish in this time? e.g. 10m,
    /// 2h30m, 90s, 600 (seconds); the evals' share comes off at the same MFU, the rest per
    /// iteration gets --expect-ms's verdict. The exit code is 0 either way.
    #[arg(long, value_name = "DURATION")]
    pub expect_total: Option<String>,
    /// Time a few real training iterations here and use the measured MFU (cpu only).
    #[arg(long)]
    pub calibrate: bool,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// List known devices and exit.
    #[arg(long)]
    pub list_devices: bool,
}

/// Whether the config flags name `dataset` and `dtype` themselves (a preset, the config file
/// or a `--set`), rather than leaving them at gptrain's defaults.
fn named_in_flags(a: &ConfigArgs) -> Result<(bool, bool)> {
    const UNSET: &str = "\u{1}unset";
    let preset = a.preset.as_deref().or(if a.config.is_none() { Some(DEFAULT_PRESET) } else { None });
    let base = Config { dataset: UNSET.into(), dtype: UNSET.into(), ..Config::default() };
    let (c, _) = config::resolve_onto(base, preset, a.config.as_deref(), &a.sets)?;
    Ok((c.dataset != UNSET, c.dtype != UNSET))
}

/// The vocabulary nanoGPT's data preparation gives a dataset it knows, for a dataset that is
/// not on disk here: (size, what makes it).
fn nanogpt_vocab(dataset: &str) -> (usize, &'static str) {
    let name = Path::new(dataset).file_name().and_then(|n| n.to_str()).unwrap_or(dataset);
    match name {
        "shakespeare_char" => (65, "the 65 characters nanoGPT's data/shakespeare_char/prepare.py finds"),
        "openwebtext" | "shakespeare" => {
            (50304, "GPT-2 BPE, as nanoGPT's prepare.py makes it: no meta.pkl, so nanoGPT pads GPT-2's 50257 tokens to 50304")
        }
        _ => (50304, "nanoGPT's vocabulary for a dataset without meta.pkl: GPT-2's 50257 tokens padded to 50304"),
    }
}

/// The model shape a config names without opening its token files, and where its vocabulary
/// comes from: `vocab_size` if set; else the dataset's meta (the built-in corpus's characters
/// for `builtin`); a dataset that is not on disk is an assumption that says so. A nanoGPT
/// `.py` config that names no dataset gets nanoGPT's default, `openwebtext`.
pub(super) fn model_without_data(cfg: &Config, args: &ConfigArgs) -> Result<(ModelConfig, estimate::Vocab)> {
    let (dataset_named, _) = named_in_flags(args)?;
    let nanogpt_default = !dataset_named && args.config.as_ref().is_some_and(|p| p.extension().is_some_and(|e| e == "py"));
    let dataset = if nanogpt_default { "openwebtext" } else { cfg.dataset.as_str() };
    let why = if nanogpt_default { "the nanoGPT config names no dataset, so nanoGPT's default `openwebtext`: " } else { "" };
    let vocab = match cfg.vocab_size {
        Some(v) => estimate::Vocab { size: v, source: "`vocab_size` in the config".into(), assumed: false },
        None if dataset.starts_with("builtin") => {
            let v = crate::data::prepare::char_encode_all(crate::data::BUILTIN_CORPUS).0.vocab_size;
            estimate::Vocab { size: v, source: format!("the built-in corpus: {v} characters"), assumed: false }
        }
        None => match crate::data::find_dir(dataset) {
            Some(dir) => {
                let m = crate::data::Meta::load(&dir)?;
                estimate::Vocab {
                    size: m.vocab_size,
                    source: format!("{why}dataset meta in {} ({})", dir.display(), m.tokenizer),
                    assumed: false,
                }
            }
            None => {
                let (v, what) = nanogpt_vocab(dataset);
                estimate::Vocab {
                    size: v,
                    source: format!(
                        "assumed: {why}dataset `{dataset}` is not on disk here (nor data/{dataset}), so {what}; `--set vocab_size=N`, or `gptrain prepare --out data/{dataset}`, gives the real one"
                    ),
                    assumed: true,
                }
            }
        },
    };
    let model = train::model_config(&Config { vocab_size: Some(vocab.size), ..cfg.clone() }, 0)?;
    Ok((model, vocab))
}

pub(super) fn parse_dtype(s: &str) -> Result<Precision> {
    Precision::parse(s).with_context(|| format!("unknown dtype `{s}`; use fp32, tf32, fp16 or bf16"))
}

pub fn estimate(a: &EstimateArgs) -> Result<()> {
    if a.list_devices {
        for n in device::names() {
            let d = device::lookup(n)?;
            // a card without TF32 runs tf32 as fp32, one without BF16 reaches the figure in fp16;
            // Ampere brought both, so the cards with bf16 are those with tf32
            let tf32 = if d.has_bf16() { format!("{:>6.1}", d.tf32_tflops) } else { format!("{:>6}", "-") };
            say!(
                "{:<18} {:<40} fp32 {:>6.1}  tf32 {tf32}  {} {:>6.1} TFLOP/s  {:>6.1} GiB  link {:>5.1} GB/s",
                d.name,
                d.description,
                d.fp32_tflops,
                if d.has_bf16() || !d.is_gpu() { "fp16/bf16" } else { "fp16 only" },
                d.half_tflops,
                d.memory_bytes as f64 / (1u64 << 30) as f64,
                d.link_gbs
            );
        }
        return Ok(());
    }
    let cfg = resolve(&a.cfg)?;
    // the device's name, and its memory when it is this machine's GPU and not in the table
    let mut local_memory = None;
    let dev_name = match (&a.device, cfg.device.as_str()) {
        (Some(d), _) => d.clone(),
        (None, "cpu") => "cpu".into(),
        // this machine's GPU when it has one in the table, else its CPU
        (None, "auto") => match crate::backend::cuda::select::select("auto", Precision::F32)? {
            crate::backend::cuda::select::Selected::Cuda { ordinal, .. } => {
                let card = crate::backend::cuda::select::find_card(Some(ordinal)).map_err(anyhow::Error::msg)?;
                match crate::backend::cuda::table_device(&card.name) {
                    Some(d) => d.name,
                    None if a.peak_tflops.is_some() => {
                        local_memory = card.memory;
                        card.name
                    }
                    None => bail!(
                        "this machine's GPU, {} (cuda:{ordinal}), is not in gptrain's device table: name a card like it with `--device` (`--list-devices` shows all) or give its peak with `--peak-tflops`",
                        card.name
                    ),
                }
            }
            crate::backend::cuda::select::Selected::Cpu { .. } => "cpu".into(),
        },
        (None, _) => String::new(),
    };
    if dev_name.is_empty() {
        bail!("this config runs on `cuda`: name the card with `--device` (e.g. rtx-4070, a100-80gb; `--list-devices` shows all)");
    }
    pool(cfg.threads)?.install(|| -> Result<()> {
        let dev = match (device::lookup(&dev_name), a.peak_tflops) {
            (Ok(d), _) => d,
            // an unknown device is fine with an explicit peak; its memory is then unknown,
            // unless it is this machine's GPU, whose driver says
            (Err(_), Some(t)) => device::Device {
                name: dev_name.clone(),
                description: "not in gptrain's table".into(),
                class: device::Class::Datacenter,
                fp32_tflops: t,
                tf32_tflops: t,
                half_tflops: t,
                memory_bytes: local_memory.unwrap_or(0),
                bandwidth_gbs: 0.0,
                source: "--peak-tflops".into(),
                link_gbs: 0.0,
                link_source: "unknown".into(),
            },
            (Err(e), None) => return Err(e),
        };
        let (_, dtype_named) = named_in_flags(&a.cfg)?;
        let flag = a.dtype.as_deref().map(parse_dtype).transpose()?;
        let named = if dtype_named && !cfg.dtype.eq_ignore_ascii_case("auto") { Some(parse_dtype(&cfg.dtype)?) } else { None };
        let (precision, mut notes) = estimate::DtypeChoice::choose(flag, named, &dev);
        let (model, vocab) = model_without_data(&cfg, &a.cfg)?;
        let run = Run {
            model: model.clone(),
            vocab,
            batch_size: cfg.batch_size,
            grad_accum: cfg.gradient_accumulation_steps,
            max_iters: cfg.max_iters,
            eval_interval: cfg.eval_interval,
            eval_iters: cfg.eval_iters,
            gpus: a.gpus,
            recompute: cfg.recompute_level(),
            zero_stage: cfg.zero_stage,
        };
        run.check_gpus(&dev)?;
        let mfu = if a.calibrate {
            if dev.name != "cpu" {
                bail!("--calibrate times real iterations on this machine: use it with --device cpu");
            }
            let (steps, warmup) = (12, 3);
            if precision.dtype == Precision::Tf32 {
                bail!("--calibrate times real iterations on the CPU, which has no tf32; use --dtype fp32, bf16 or fp16");
            }
            let cpu = train::cpu_backend(&cfg);
            let b = crate::bench::run(&model, cfg.batch_size, 1, steps, warmup, false, cpu, precision.dtype, run.recompute)?;
            // one micro-step's FLOPs over its time: the accumulation factor cancels
            let measured = b.flops_per_step / (b.ms_per_step / 1e3) / dev.peak_flops(precision.dtype);
            notes.push(format!("calibrated: {steps} timed training steps of this model here (after {warmup} warm-up steps) took {:.1} ms each (median) = {:.1}% MFU", b.ms_per_step, measured * 100.0));
            MfuAssumption::fixed(measured, "measured here by --calibrate")
        } else if let Some(m) = a.mfu {
            if !(m > 0.0 && m <= 1.0) {
                bail!("--mfu must be in (0, 1] (got {m})");
            }
            MfuAssumption::fixed(m, "--mfu")
        } else {
            MfuAssumption::default_for(&dev, &run)
        };
        notes.extend(mfu.note.clone());
        let peak = a.peak_tflops.map(|t| t * 1e12);
        let e = estimate::estimate(&run, &dev, &precision, peak, mfu);
        // a verdict, possible or not, is an answer: the exit code stays 0
        let verdict = match (a.expect_ms, &a.expect_total) {
            (Some(ms), _) => {
                if !(ms.is_finite() && ms > 0.0) {
                    bail!("--expect-ms must be a positive number of milliseconds (got {ms})");
                }
                Some(("expect_ms", estimate::expect_ms(&e, ms)))
            }
            (None, Some(t)) => Some(("expect_total", estimate::expect_total(&e, estimate::parse_duration(t)?)?)),
            (None, None) => None,
        };
        if a.json {
            for n in &notes {
                eprintln!("{n}");
            }
            let mut v = serde_json::to_value(&e)?;
            if let Some((key, x)) = &verdict {
                v[*key] = serde_json::json!({
                    "ms": x.ms_per_iter,
                    "total_seconds": x.total_seconds,
                    "eval_share": x.eval_share,
                    "possible": x.possible,
                    "reason": x.reason,
                });
                if *key == "expect_total" {
                    v[*key]["given"] = serde_json::json!(a.expect_total);
                }
            }
            say!("{v}");
            return Ok(());
        }
        for n in &notes {
            say!("{n}");
        }
        print_estimate(&e, &model, &run, &dev, verdict.as_ref().map(|(_, x)| x.reason.as_str()));
        Ok(())
    })
}

/// `estimate`'s memory verdict.
fn fit_word(fits: bool) -> &'static str {
    if fits {
        "fits"
    } else {
        "DOES NOT FIT"
    }
}

fn print_estimate(e: &estimate::Estimate, m: &ModelConfig, run: &Run, dev: &device::Device, verdict: Option<&str>) {
    use crate::perf::estimate::fmt_ms;
    // seconds as the meter shows them, milliseconds (3 significant digits) below one second
    let dur = |s: f64| if s < 1.0 { fmt_ms(s * 1e3) } else { crate::perf::meter::human_duration(s) };
    say!(
        "model: {} layers, {} heads, {} dims, block {}, vocab {}, bias {}",
        m.n_layer,
        m.n_head,
        m.n_embd,
        m.block_size,
        m.padded_vocab_size,
        m.bias
    );
    say!("vocabulary: {} ({})", e.vocab.size, e.vocab.source);
    say!(
        "parameters: {:.2}M ({:.2}M as nanoGPT counts, without position embeddings)",
        e.params as f64 / 1e6,
        e.params_nanogpt as f64 / 1e6
    );
    let gpus = if e.gpus > 1 { format!(" = {} per GPU x {} GPUs", e.grad_accum_per_gpu, e.gpus) } else { String::new() };
    say!(
        "tokens per iteration: {} (batch {} x block {} x grad accum {}{gpus})",
        thousands(e.tokens_per_iter as f64),
        run.batch_size,
        m.block_size,
        run.grad_accum
    );
    say!(
        "FLOPs per token (training): {:.3e} exact matmul count; {:.3e} by the 6N + 12LHQT convention nanoGPT uses",
        e.flops_per_token,
        e.flops_per_token_palm
    );
    say!("FLOPs per iteration: {:.3e} ({:.3e} per micro-step)", e.flops_per_iter, e.flops_per_micro_step);
    let cards = if e.gpus > 1 { format!("{} x {}", e.gpus, dev.name) } else { dev.name.clone() };
    let per = if dev.is_gpu() { " per GPU" } else { "" };
    say!("device: {cards} ({}), {} peak {:.1} TFLOP/s{per} [{}]", dev.description, e.dtype, e.peak_flops / 1e12, e.peak_source);
    say!("dtype: {} ({})", e.dtype, e.dtype_source);
    if let Some(a) = &e.allreduce {
        let what = match a.zero_weight_bytes {
            Some(w) => format!(
                "ZeRO-1's exchange: {} of fp32 gradients reduced to their owners and {} of {} weights broadcast from them",
                gib(a.gradient_bytes),
                gib(w),
                e.dtype
            ),
            None => format!("gradient all-reduce: {} of fp32 gradients", gib(a.gradient_bytes)),
        };
        say!(
            "{what}, ring: {} through each GPU's link at {:.1} GB/s [{}] = {} per iteration, {}",
            gib(a.bytes_per_gpu as u64),
            a.link_gbs,
            a.link_source,
            fmt_ms(a.ms_per_iter),
            a.assumption
        );
    }
    say!();
    say!(
        "floor (100% of peak): {}/iteration -> {} for {} iterations",
        fmt_ms(e.floor_ms_per_iter),
        dur(e.floor_total_seconds),
        e.max_iters
    );
    let (lo, hi) = e.ms_per_iter_range;
    if e.mfu.low == e.mfu.high {
        say!("MFU assumed: {:.1}% ({})", e.mfu.mid() * 100.0, e.mfu.source);
        say!("expected: {}/iteration", fmt_ms(e.ms_per_iter));
    } else {
        say!("MFU assumed: {:.0}-{:.0}% ({})", e.mfu.low * 100.0, e.mfu.high * 100.0, e.mfu.source);
        say!("expected: {} - {}/iteration (mid {})", fmt_ms(lo), fmt_ms(hi), fmt_ms(e.ms_per_iter));
    }
    say!(
        "total for {} iterations + {} evals ({} each{}): {} (range {} - {})",
        e.max_iters,
        e.evals,
        dur(e.eval_seconds),
        if e.gpus > 1 { ", on one GPU as nanoGPT's master process runs them" } else { "" },
        dur(e.total_seconds),
        dur(e.total_seconds_range.0),
        dur(e.total_seconds_range.1)
    );
    say!();
    say!(
        "memory at micro-batch {} ({}{}):",
        run.batch_size,
        if dev.name == "cpu" {
            "gptrain's CPU buffers, fp32".to_string()
        } else {
            format!(
                "gptrain's CUDA backend: flash attention, fused classifier, fp32 master weights, gradients and moments; the CUDA context{} estimated",
                if e.gpus > 1 { " and NCCL's buffers" } else { "" }
            )
        },
        if e.zero_stage == 1 {
            format!("{}; per GPU, with ZeRO-1's largest share of the optimiser state", recompute_note(run.recompute))
        } else {
            recompute_note(run.recompute).to_string()
        }
    );
    for (name, b) in e.memory.parts() {
        if b > 0 {
            say!("  {name:<24} {:>10}", gib(b));
        }
    }
    let cap = e.device_memory_bytes;
    if cap == 0 {
        say!("  {:<24} {:>10} (the device's memory is unknown: no fits verdict)", "total", gib(e.memory_bytes));
    } else {
        say!("  {:<24} {:>10} of {} -> {}", "total", gib(e.memory_bytes), gib(cap), fit_word(e.fits == Some(true)));
        say!(
            "largest micro-batch that fits: {}{}",
            e.max_micro_batch,
            if e.max_micro_batch_recompute > e.max_micro_batch {
                format!(" ({} with --set recompute=2: GELU and LayerNorm recomputed in the backward)", e.max_micro_batch_recompute)
            } else {
                String::new()
            }
        );
    }
    if let Some(b) = e.memory_pytorch_bytes {
        let verdict = e.fits_pytorch.map(|f| format!(" -> {}", fit_word(f))).unwrap_or_default();
        say!(
            "nanoGPT (PyTorch, torch.compile) at this micro-batch: about {}{verdict} (fp32 weights, gradients and logits too; eager PyTorch needs ~1.35-1.7x that)",
            gib(b)
        );
    }
    if e.fits == Some(false) {
        let tokens = run.batch_size * run.grad_accum;
        match (1..=e.max_micro_batch).rev().find(|b| tokens.is_multiple_of(*b)) {
            Some(b) => say!(
                "to fit: --set batch_size={b} --set gradient_accumulation_steps={} keeps {} tokens per iteration",
                tokens / b,
                thousands(e.tokens_per_iter as f64)
            ),
            None if run.recompute < Recompute::GeluAndLayerNorm => say!(
                "to fit: even micro-batch 1 does not fit; use a smaller block_size or model, or --set recompute=2 ({} at this batch)",
                gib(e.memory_with_recompute)
            ),
            None => say!("to fit: even micro-batch 1 does not fit; use a smaller block_size or model"),
        }
    }
    if let Some(why) = verdict {
        say!();
        say!("{why}");
    }
}
