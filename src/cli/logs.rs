//! `gptrain logs FILE`: the log reader's report. The run's shape (tokens per iteration, GPU
//! count, FLOPs per token, total iterations) comes from explicit flags first, then from what
//! the log states (or gptrain's metrics.jsonl `start` record), then from `--preset`/`--config`;
//! each figure says where it came from. `--follow` re-reads the file as it grows.

use super::commands::resolve;
use super::estimate::{model_without_data, parse_dtype};
use super::printer::{say, thousands};
use super::ConfigArgs;
use crate::model::ModelConfig;
use crate::perf::logs::{self as logreader, Format, Options, Parsed, Steady};
use crate::perf::meter::human_duration;
use crate::perf::{device, flops};
use crate::units::count;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(Args, Clone, Debug)]
pub struct LogsArgs {
    /// The log file: nanoGPT, llm.c, gptrain (text or metrics.jsonl), Hugging Face Trainer
    /// (console or trainer_state.json), Lightning, litgpt, torchtitan, Megatron-LM, DeepSpeed,
    /// modded-nanogpt, nanotron, fairseq/metaseq, torchtune, Composer/llm-foundry, OLMo, JSON
    /// lines of metrics (a loop's metrics.jsonl, W&B history rows), TensorBoard events (a file,
    /// or a folder of them; a Keras run's folder), or any line with an iteration counter and a
    /// time, a rate or a timestamp.
    pub file: PathBuf,
    /// Read only this format's lines (nanogpt, llmccuda, llmccpu, gptrain, hf-trainer,
    /// hf-trainer-state, lightning, litgpt, torchtitan, megatron, deepspeed, modded-nanogpt,
    /// nanotron, fairseq, torchtune, composer, olmo, jsonl, tensorboard, generic).
    #[arg(long)]
    pub format: Option<String>,
    /// Device the log was made on, for the true MFU (per GPU).
    #[arg(long)]
    pub device: Option<String>,
    /// The run's matmul dtype, which picks the device's peak: fp32, tf32, fp16 or bf16
    /// (default: fp32 on the CPU, bf16 on a card that has it, else fp16).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Peak TFLOP/s per GPU to divide by, instead of the device table's (any device).
    #[arg(long)]
    pub peak_tflops: Option<f64>,
    #[command(flatten)]
    pub cfg: ConfigArgs,
    /// Micro-batch size per GPU (sequences).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Tokens per sequence (the context length); with a global batch the log states, the only
    /// flag the tokens per iteration need.
    #[arg(long)]
    pub block_size: Option<usize>,
    /// Gradient-accumulation micro-steps per iteration over all GPUs (default 1, or the
    /// config's).
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// GPUs the run used (data-parallel replicas x model-parallel ranks).
    #[arg(long)]
    pub gpus: Option<usize>,
    /// The run's last iteration, for the ETA (default: what the log or config says).
    #[arg(long)]
    pub max_iters: Option<u64>,
    /// Keep reading a log that is still being written, reprinting the steady figures and ETA
    /// as iterations arrive, until Ctrl-C.
    #[arg(long)]
    pub follow: bool,
    /// Print one JSON object on stdout instead of the report.
    #[arg(long)]
    pub json: bool,
}

/// A figure and where it came from.
type Sourced<T> = Option<(T, String)>;

/// Everything the report prints.
struct Report {
    parsed: Parsed,
    st: Steady,
    tokens_per_iter: Sourced<f64>,
    /// When the tokens per iteration are unknown: the flags that would give them.
    tokens_missing: String,
    gpus: (f64, String),
    max_iters: Sourced<u64>,
    tokens_per_second: Option<f64>,
    flops_per_token: Sourced<f64>,
    device: Option<device::Device>,
    /// `--device` named a device the table does not have (and no --peak-tflops was given).
    device_unknown: Option<String>,
    /// The device is a CPU: one device, not a GPU.
    on_cpu: bool,
    dtype_name: &'static str,
    peak: Option<f64>,
    mfu: Option<f64>,
    /// Achieved model TFLOP/s per GPU by our count.
    tflops_per_gpu: Option<f64>,
    log_mfu_on_device: Option<f64>,
    /// The peak the log's MFU column must have divided by.
    log_peak_assumed: Option<f64>,
    mfu_suspect: Option<String>,
    eta: Option<f64>,
}

pub fn logs(a: &LogsArgs) -> Result<()> {
    let forced = a.format.as_deref().map(Format::from_name).transpose()?;
    if a.follow {
        if forced == Some(Format::Tensorboard) || a.file.is_dir() || events_name(&a.file) {
            bail!("--follow reads a text log as it grows; for TensorBoard events run `gptrain logs` again");
        }
        return follow(a, forced);
    }
    let (text, forced) = match input(a, forced)? {
        Input::Text(bytes) => (String::from_utf8_lossy(&bytes).into_owned(), forced),
        Input::Events { files, validation } => {
            if forced.is_some_and(|f| f != Format::Tensorboard) {
                bail!("{} holds TensorBoard events: read it with --format tensorboard (or no --format)", a.file.display());
            }
            (events_as_json_lines(a, &files, &validation)?, Some(Format::Tensorboard))
        }
    };
    let r = report(a, forced, &text)?;
    print(a, &r);
    Ok(())
}

/// What `gptrain logs` reads: a log's bytes, or one run's TensorBoard event files: its own,
/// and those of a Keras run's `validation/` folder (its evaluations).
enum Input {
    Text(Vec<u8>),
    Events { files: Vec<PathBuf>, validation: Vec<PathBuf> },
}

fn events_name(p: &Path) -> bool {
    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("events.out.tfevents."))
}

/// The file, read once (a pipe can be read only once), and whether it holds TensorBoard
/// events; or a folder: a gptrain `out_dir`'s `metrics.jsonl`, else the one run below it
/// (three levels at most: Hugging Face's `runs/<run>/`, Lightning's
/// `lightning_logs/version_N/`, gptrain's `tensorboard/`, Keras's `logs/fit/<run>/` with its
/// `train/` and `validation/`) that holds event files.
fn input(a: &LogsArgs, forced: Option<Format>) -> Result<Input> {
    use crate::tensorboard;
    let path = &a.file;
    if !path.is_dir() {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        if tensorboard::is_events_file(&bytes) {
            return Ok(Input::Events { files: vec![path.clone()], validation: Vec::new() });
        }
        if forced == Some(Format::Tensorboard) {
            bail!("{} is not a TensorBoard events file (events.out.tfevents.*)", path.display());
        }
        return Ok(Input::Text(bytes));
    }
    std::fs::read_dir(path).with_context(|| format!("cannot read the folder {}", path.display()))?;
    let metrics = path.join("metrics.jsonl");
    if metrics.is_file() && forced != Some(Format::Tensorboard) {
        return Ok(Input::Text(std::fs::read(&metrics).with_context(|| format!("cannot read {}", metrics.display()))?));
    }
    let mut folders = Vec::new();
    event_folders(path, 3, &mut folders);
    let runs = runs_of(path, folders);
    match runs.len() {
        0 => bail!(
            "{} holds no metrics.jsonl and no TensorBoard event files (events.out.tfevents.*) in it or three folders down: give a log file",
            path.display()
        ),
        1 => {
            let files = |dirs: &[PathBuf]| dirs.iter().flat_map(|d| tensorboard::event_files(d)).collect();
            Ok(Input::Events { files: files(&runs[0].train), validation: files(&runs[0].validation) })
        }
        n => bail!(
            "{} holds {n} runs' TensorBoard event files ({}{}): give one of these folders",
            path.display(),
            runs.iter().take(4).map(|r| r.dir.display().to_string()).collect::<Vec<_>>().join(", "),
            if n > 4 { ", ..." } else { "" }
        ),
    }
}

/// The folders at most `depth` levels below `dir` (itself included) that hold event files.
fn event_folders(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    if !crate::tensorboard::event_files(dir).is_empty() {
        out.push(dir.to_path_buf());
    }
    if depth == 0 {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    let mut subs: Vec<PathBuf> = rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    subs.sort();
    for s in subs {
        event_folders(&s, depth - 1, out);
    }
}

/// One run's folders of event files: `dir`, the run, and the folders read as its training
/// log (`train`) and as its evaluations (`validation`).
struct Run {
    dir: PathBuf,
    train: Vec<PathBuf>,
    validation: Vec<PathBuf>,
}

/// The runs the event folders found below `top` belong to. The Keras TensorBoard callback
/// writes one run as two folders, `<log_dir>/train/` and `<log_dir>/validation/` (the
/// evaluations' scalars, under the same tags: `epoch_loss`), so folders of those names below
/// `top` are their parent's; any other folder is a run of its own.
fn runs_of(top: &Path, folders: Vec<PathBuf>) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for f in folders {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let keras = (name == "train" || name == "validation") && f != top;
        let dir = if keras { f.parent().unwrap_or(&f).to_path_buf() } else { f.clone() };
        let i = runs.iter().position(|r| r.dir == dir).unwrap_or_else(|| {
            runs.push(Run { dir, train: Vec::new(), validation: Vec::new() });
            runs.len() - 1
        });
        if keras && name == "validation" {
            runs[i].validation.push(f);
        } else {
            runs[i].train.push(f);
        }
    }
    runs
}

/// The scalars of TensorBoard event files as JSON lines (`tensorboard::json_lines`); those of
/// a Keras run's `validation/` folder as evaluations, their tags under `validation/`, a part
/// that names an evaluation (`perf::logs::is_eval_part`).
fn events_as_json_lines(a: &LogsArgs, files: &[PathBuf], validation: &[PathBuf]) -> Result<String> {
    use crate::tensorboard::{read_events, read_scalars_of};
    let (mut scalars, keras_model) = read_events(files);
    scalars.extend(read_scalars_of(validation).into_iter().map(|((tag, step), v)| ((format!("validation/{tag}"), step), v)));
    if scalars.is_empty() {
        bail!(
            "{}: TensorBoard events without a scalar (a `simple_value`, as torch's SummaryWriter, the Hugging Face Trainer and Lightning write them, or a one-value tensor of the scalars plugin, as TF2's tf.summary.scalar and Keras's TensorBoard callback write them)",
            a.file.display()
        );
    }
    // a Keras run: its model in the events, or its validation/ folder beside train/
    let keras = !validation.is_empty() || keras_model;
    Ok(crate::tensorboard::json_lines(&scalars, keras))
}

/// Flags' tokens per iteration, before the log is read (a throughput column needs them).
fn flag_options(a: &LogsArgs, forced: Option<Format>) -> Result<(Options, Option<crate::config::Config>)> {
    let have_cfg = a.cfg.preset.is_some() || a.cfg.config.is_some() || !a.cfg.sets.is_empty();
    let cfg = if have_cfg { Some(resolve(&a.cfg)?) } else { None };
    let gpus = a.gpus.map(|g| g as f64);
    let accum = a.grad_accum.or(cfg.as_ref().map(|c| c.gradient_accumulation_steps)).unwrap_or(1);
    let samples = a.batch_size.or(cfg.as_ref().map(|c| c.batch_size)).map(|b| (b * accum) as f64 * gpus.unwrap_or(1.0));
    let block = a.block_size.or(cfg.as_ref().map(|c| c.block_size));
    let tokens = samples.zip(block).map(|(s, t)| s * t as f64);
    Ok((Options { format: forced, samples_per_iter: samples, tokens_per_iter: tokens, gpus }, cfg))
}

fn report(a: &LogsArgs, forced: Option<Format>, text: &str) -> Result<Report> {
    let (opt, cfg) = flag_options(a, forced)?;
    let parsed = logreader::parse_with(text, &opt).with_context(|| format!("{}", a.file.display()))?;
    let st = logreader::steady(&parsed);
    let start = if parsed.format == Format::Gptrain { logreader::gptrain_start(text) } else { None };
    let facts = &parsed.facts;
    let src_of = |name: &str| facts.sources.iter().find(|s| s.starts_with(name)).map(|s| format!("log: {s}"));

    // GPUs: --gpus, else the log's world size, else one
    // an unknown device gives "MFU n/a" with the reason in that line, never a made-up figure
    let (dev, device_unknown) = match a.device.as_deref().map(device::lookup).transpose() {
        Ok(d) => (d, None),
        Err(_) if a.peak_tflops.is_none() => (None, a.device.clone()),
        Err(_) => (None, None),
    };
    let on_cpu = dev.as_ref().is_some_and(|d| !d.is_gpu());
    let gpus = match (a.gpus, facts.world_size) {
        (Some(g), _) => (g as f64, "--gpus".to_string()),
        (None, Some(w)) => (w as f64, src_of("world size").unwrap_or_default()),
        _ if on_cpu => (1.0, "the CPU".to_string()),
        _ => (1.0, "assumed; give --gpus for a multi-GPU run".to_string()),
    };
    // tokens per iteration: explicit flags, else the log (or gptrain's start record), else the config
    // a per-GPU batch counts the GPUs above: `--gpus`, else the log's world size, else one
    let g = gpus.0;
    let g_src = if a.gpus.is_some() { format!("--gpus {g}") } else { format!("{g} GPUs") };
    let flag_batch = a.batch_size.map(|b| {
        let accum = a.grad_accum.or(cfg.as_ref().map(|c| c.gradient_accumulation_steps)).unwrap_or(1);
        ((b * accum) as f64 * g, format!("--batch-size {b} x --grad-accum {accum} x {g_src}"))
    });
    let log_batch = parsed
        .batch_from_lines
        .map(|b| (b as f64, format!("log: global batch size {b} on the iteration lines")))
        .or(facts.global_batch.map(|b| (b as f64, src_of("global batch size").unwrap_or_default())));
    let cfg_batch = cfg.as_ref().map(|c| {
        (
            (c.batch_size * c.gradient_accumulation_steps) as f64 * g,
            format!("config: batch_size {} x gradient_accumulation_steps {} x {g} GPUs", c.batch_size, c.gradient_accumulation_steps),
        )
    });
    let seq = a
        .block_size
        .map(|b| (b as f64, "--block-size".to_string()))
        .or(facts.seq_len.map(|t| (t as f64, src_of("sequence length").unwrap_or_default())))
        .or(cfg.as_ref().map(|c| (c.block_size as f64, "config: block_size".to_string())));
    let tokens_per_iter: Sourced<f64> = if a.batch_size.is_some() || a.block_size.is_some() || a.grad_accum.is_some() {
        flag_batch
            .or(log_batch.clone())
            .or(cfg_batch.clone())
            .zip(seq.clone())
            .map(|((b, bs), (t, ts))| (b * t, format!("{b} sequences ({bs}) x {t} tokens ({ts})")))
    } else {
        None
    }
    .or(start.as_ref().and_then(|s| s.tokens_per_iter).map(|t| (t, "metrics.jsonl: the run's start record".to_string())))
    .or(facts.stated_tokens_per_iter.map(|t| (t as f64, src_of("tokens per iteration").unwrap_or_default())))
    .or(log_batch
        .clone()
        .or(cfg_batch)
        .zip(seq.clone())
        .map(|((b, bs), (t, ts))| (b * t, format!("{b} sequences ({bs}) x {t} tokens ({ts})"))));

    // only what is missing: a global batch the log states needs just the sequence length
    let tokens_missing = match (log_batch.is_some(), seq.is_some()) {
        (true, false) => "give --block-size: the log states the global batch".to_string(),
        (false, true) => "give --batch-size and --grad-accum (and --gpus), or a --preset/--config".to_string(),
        _ => "give --batch-size, --block-size and --grad-accum (and --gpus), or a --preset/--config".to_string(),
    };
    let s = st.steady_ms_per_iter / 1e3;
    let tokens_per_second = tokens_per_iter.as_ref().map(|(t, _)| t / s).or(st.log_tok_s).or(st.log_tok_s_per_gpu.map(|t| t * gpus.0));
    let max_iters = a
        .max_iters
        .map(|m| (m, "--max-iters".to_string()))
        .or(st.total_from_log.map(|m| (m, "log: the iteration lines' N/M".to_string())))
        .or(start.as_ref().and_then(|s| s.max_iters).map(|m| (m, "metrics.jsonl".to_string())))
        .or(cfg.as_ref().map(|c| (c.max_iters, "config".to_string())))
        .or(facts.total_iters.map(|m| (m, src_of("total iterations").unwrap_or_default())));

    // default: fp32 on the CPU, bf16 on a card that has it, else fp16 (V100, T4)
    let default_dtype = match &dev {
        Some(d) if !d.is_gpu() => "fp32",
        Some(d) if !d.has_bf16() => "fp16",
        _ => "bf16",
    };
    let dtype = parse_dtype(a.dtype.as_deref().unwrap_or(default_dtype))?;
    let peak = a.peak_tflops.map(|t| t * 1e12).or(dev.as_ref().map(|d| d.peak_flops(dtype)));
    // FLOPs per token: the config's model, else gptrain's start record, else Megatron's argument dump
    let seq_len = a.block_size.map(|b| b as u64).or(facts.seq_len);
    let flops_per_token: Sourced<f64> = match &cfg {
        Some(c) => {
            let m = model_without_data(c, &a.cfg)?.0;
            Some((flops::flops_per_token(&m, seq_len.map_or(m.block_size, |t| t as usize)).train(), "the config's model".to_string()))
        }
        None => start
            .as_ref()
            .and_then(|s| s.flops_per_iter.zip(s.tokens_per_iter))
            .map(|(f, t)| (f / t, "metrics.jsonl: the run's start record".to_string()))
            // gptrain's text log: its banner's `FLOPs per iteration: 3.97G`, over its tokens per iteration
            .or_else(|| {
                facts.stated_flops_per_iter.zip(facts.stated_tokens_per_iter).map(|(f, t)| {
                    (
                        f / t as f64,
                        format!(
                            "{}, over {}",
                            src_of("FLOPs per iteration").unwrap_or_default(),
                            src_of("tokens per iteration").unwrap_or_default()
                        ),
                    )
                })
            })
            .or_else(|| {
                megatron_model(&parsed, seq_len).map(|m| {
                    (
                        flops::flops_per_token(&m, m.block_size).train(),
                        format!("log: the model's shape (n_layer {}, n_embd {}, n_head {})", m.n_layer, m.n_embd, m.n_head),
                    )
                })
            }),
    };
    let tflops_per_gpu = flops_per_token.as_ref().zip(tokens_per_second).map(|((f, _), tps)| f * tps / gpus.0 / 1e12);
    let mfu = tflops_per_gpu.zip(peak).map(|(t, p)| t * 1e12 / p);
    // the log's own column, and the peak it must have assumed
    let log_peak_assumed = match parsed.format {
        Format::NanoGpt => Some(logreader::NANOGPT_PEAK),
        _ => st.log_tflops.zip(st.log_mfu).filter(|(_, m)| *m > 0.0).map(|(t, m)| t * 1e12 / m),
    };
    let log_mfu_on_device = match (st.log_tflops, st.log_mfu, log_peak_assumed, peak) {
        (Some(t), _, _, Some(p)) => Some(t * 1e12 / p),
        (None, Some(m), Some(assumed), Some(p)) => Some(m * assumed / p),
        (None, Some(m), None, _) => Some(m),
        _ => None,
    };
    let mfu_suspect = suspect(mfu, log_mfu_on_device, tflops_per_gpu, st.log_tflops);
    let left = |m: u64| match parsed.format {
        Format::NanoGpt | Format::Gptrain => m.saturating_sub(st.last_iter + 1),
        _ => m.saturating_sub(st.last_iter),
    };
    let eta = max_iters.as_ref().map(|(m, _)| left(*m) as f64 * s);
    Ok(Report {
        parsed,
        st,
        tokens_per_iter,
        tokens_missing,
        gpus,
        max_iters,
        tokens_per_second,
        flops_per_token,
        device: dev,
        device_unknown,
        on_cpu,
        dtype_name: dtype.name(),
        peak,
        mfu,
        tflops_per_gpu,
        log_mfu_on_device,
        log_peak_assumed,
        mfu_suspect,
        eta,
    })
}

/// Megatron's argument dump states the model's shape (`num_layers`, `hidden_size`, ...).
fn megatron_model(p: &Parsed, seq: Option<u64>) -> Option<ModelConfig> {
    let f = &p.facts;
    let (l, c, h, v, t) = (f.n_layer?, f.n_embd?, f.n_head?, f.vocab?, seq?);
    let u = |x: u64| usize::try_from(x).ok();
    Some(ModelConfig {
        n_layer: u(l)?,
        n_head: u(h)?,
        n_embd: u(c)?,
        block_size: u(t)?,
        vocab_size: u(v)?,
        padded_vocab_size: u(v)?,
        bias: true,
    })
}

/// An MFU above 100%, or one far from the log's own column, says the batch, accumulation or
/// GPU-count flags are wrong.
fn suspect(mfu: Option<f64>, log_mfu: Option<f64>, tflops: Option<f64>, log_tflops: Option<f64>) -> Option<String> {
    const FAR: f64 = 1.5;
    if let Some(m) = mfu.filter(|m| *m > 1.0) {
        return Some(format!("MFU {:.0}% is above 100%: the tokens per iteration or the GPU count is wrong (check --batch-size, --grad-accum, --gpus, --block-size)", m * 100.0));
    }
    let ratio = match (tflops, log_tflops, mfu, log_mfu) {
        (Some(t), Some(l), _, _) if l > 0.0 => Some((t / l, "TFLOP/s column")),
        (_, _, Some(m), Some(l)) if l > 0.0 => Some((m / l, "MFU column")),
        _ => None,
    };
    let (r, what) = ratio.filter(|(r, _)| *r > FAR || *r < 1.0 / FAR)?;
    Some(format!("our figure is {r:.2}x the log's own {what}: the batch, accumulation or GPU-count flags are probably wrong (check --batch-size, --grad-accum, --gpus)"))
}

fn json(a: &LogsArgs, r: &Report) -> serde_json::Value {
    let (p, st) = (&r.parsed, &r.st);
    let mut v = serde_json::json!({
        "file": a.file.display().to_string(),
        "format": p.format,
        "format_description": p.format.describe(),
        "time_meaning": p.meaning,
        "steady_ms_per_iter": st.steady_ms_per_iter,
        "p10_ms": st.p10_ms,
        "p90_ms": st.p90_ms,
        "tokens_per_iter": r.tokens_per_iter.as_ref().map(|x| x.0),
        "tokens_per_iter_source": r.tokens_per_iter.as_ref().map(|x| &x.1),
        "gpus": r.gpus.0,
        "gpus_source": r.gpus.1,
        "tokens_per_second": r.tokens_per_second,
        "flops_per_token": r.flops_per_token.as_ref().map(|x| x.0),
        "flops_per_token_source": r.flops_per_token.as_ref().map(|x| &x.1),
        "tflops_per_gpu": r.tflops_per_gpu,
        "mfu": r.mfu,
        "mfu_suspect": r.mfu_suspect,
        "log_mfu": st.log_mfu,
        "log_tflops": st.log_tflops,
        "log_peak_flops_assumed": r.log_peak_assumed,
        "log_mfu_on_device": r.log_mfu_on_device,
        "log_tokens_per_second": st.log_tok_s,
        "log_tokens_per_second_per_gpu": st.log_tok_s_per_gpu,
    });
    let more = serde_json::json!({
        "eta_seconds": r.eta,
        "iters_seen": st.iters_seen,
        "iters_dropped": st.iters_dropped,
        "iters_counted": st.iters_counted,
        "warmup_dropped": st.warmup_dropped,
        "warmup_settled": st.warmup_settled,
        "outliers_dropped": st.outliers_dropped,
        "iter_lines": p.iter_lines,
        "other_format_lines": p.other_iter_lines,
        "first_iter": p.first_iter,
        "from_start": p.from_start,
        "last_iter": st.last_iter,
        "max_iters": r.max_iters.as_ref().map(|x| x.0),
        "max_iters_source": r.max_iters.as_ref().map(|x| &x.1),
        "evals": p.evals,
        "lines_skipped": p.skipped_lines,
        "minus_100_lines": p.minus_100,
        "log_facts": p.facts.sources,
        "device": r.device.as_ref().map(|d| d.name.clone()),
        "device_unknown": r.device_unknown,
        "peak_flops": r.peak,
        // a resumed gptrain run's metrics.jsonl holds one session per process; most logs one
        "sessions": st.sessions,
        "few_samples_warning": st.few_samples_warning(p.meaning),
    });
    if let (Some(v), serde_json::Value::Object(m)) = (v.as_object_mut(), more) {
        v.extend(m);
    }
    v
}

fn print(a: &LogsArgs, r: &Report) {
    if a.json {
        say!("{}", json(a, r));
        return;
    }
    let (p, st) = (&r.parsed, &r.st);
    say!(
        "{}: {} log (format {}), {} (iterations {}-{}), {}, {} skipped{}",
        a.file.display(),
        p.format.describe(),
        p.format.name(),
        count(p.iter_lines, "iteration line"),
        p.first_iter,
        p.last_iter,
        count(p.evals, "eval line"),
        count(p.skipped_lines, "other line"),
        if p.other_iter_lines > 0 {
            format!(", {} not used (other formats, or another progress bar)", count(p.other_iter_lines, "other iteration line"))
        } else {
            String::new()
        }
    );
    say!("time: {}", p.meaning.describe());
    say!(
        "dropped {} of {}: {} warm-up (until three consecutive times agree within 10%), {} (> {}x the median, e.g. eval or checkpoint time counted into an iteration)",
        st.iters_dropped,
        count(st.iters_seen, "sample"),
        st.warmup_dropped,
        count(st.outliers_dropped, "outlier"),
        logreader::OUTLIER
    );
    if !p.from_start {
        say!("note: the log starts at iteration {}, past its run's start: an excerpt, so no sample is treated as warm-up", p.first_iter);
    } else if !st.warmup_settled && p.meaning != logreader::Meaning::RunAverage {
        say!("note: iteration times never settled in this log (too short?): only the first sample is treated as warm-up");
    }
    if p.format == Format::Torchtune && p.meaning == logreader::Meaning::Throughput {
        say!("note: torchtune's tokens_per_second_per_gpu counts the labels' tokens only (no padding, no masked prompt): with packed, unmasked data it is every token; otherwise the time here is too long");
    }
    if let Some(n) = st.sessions_note() {
        say!("note: {n}");
    }
    say!(
        "steady: {:.2} ms/iter (median of {} covering {}; p10 {:.2}, p90 {:.2})",
        st.steady_ms_per_iter,
        count(st.samples_kept(), "sample"),
        count(st.iters_counted as usize, "iteration"),
        st.p10_ms,
        st.p90_ms
    );
    if let Some(w) = st.few_samples_warning(p.meaning) {
        say!("warning: {w}");
    }
    for f in &p.facts.sources {
        say!("log states {f}");
    }
    match &r.tokens_per_iter {
        Some((t, src)) => say!("tokens/iter: {} ({src})", thousands(*t)),
        None => say!("tokens/iter: unknown ({})", r.tokens_missing),
    }
    // a CPU run is one device, not a GPU
    let cpu = r.on_cpu;
    let (units, per) = if cpu { ("devices", "per device") } else { ("GPUs", "per GPU") };
    say!("{units}: {} ({})", r.gpus.0, r.gpus.1);
    match r.tokens_per_second {
        Some(t) if r.tokens_per_iter.is_some() => say!("tokens/s: {} (whole run; {} {per})", thousands(t), thousands(t / r.gpus.0)),
        Some(t) => say!("tokens/s: {} (the log's own column)", thousands(t)),
        None => say!("tokens/s: unknown ({})", r.tokens_missing),
    }
    let on_one_cpu = cpu && r.gpus.0 == 1.0;
    match (r.mfu, &r.device, r.peak, &r.device_unknown) {
        (Some(m), Some(d), _, _) if on_one_cpu => say!(
            "true MFU on {} ({}): {:.1}% ({:.2} TFLOP/s of model FLOPs)",
            d.name,
            r.dtype_name,
            m * 100.0,
            r.tflops_per_gpu.unwrap_or(0.0)
        ),
        (Some(m), Some(d), _, _) => say!(
            "true MFU on {} ({}): {:.1}% {per} ({:.1} TFLOP/s of model FLOPs {per})",
            d.name,
            r.dtype_name,
            m * 100.0,
            r.tflops_per_gpu.unwrap_or(0.0)
        ),
        (Some(m), None, Some(pk), _) => say!("true MFU against {:.0} TFLOP/s: {:.1}% {per}", pk / 1e12, m * 100.0),
        (_, None, None, Some(name)) => say!(
            "MFU: n/a (unknown device `{name}`: give --peak-tflops or one of {}{})",
            device::names().join(", "),
            if r.tflops_per_gpu.is_none() { "; it also needs the model shape: --preset/--config/--set, and the batch shape" } else { "" }
        ),
        (None, None, None, None) => say!("MFU: n/a (name the GPU with --device to compute it)"),
        _ => say!("MFU: n/a (needs the model shape: --preset/--config/--set, and the batch shape)"),
    }
    if let Some(m) = st.log_mfu {
        match (p.format, r.log_mfu_on_device, &r.device) {
            (Format::NanoGpt, Some(x), Some(d)) => say!(
                "the log's mfu column says {:.1}% of an A100's 312 TFLOP/s whatever the card; against {} it would have read {:.1}%",
                m * 100.0,
                d.name,
                x * 100.0
            ),
            (_, _, _) => match r.log_peak_assumed {
                Some(pk) => say!("the log's own MFU column: {:.1}% (it assumed a peak of {:.0} TFLOP/s per GPU)", m * 100.0, pk / 1e12),
                None => say!("the log's own MFU column: {:.1}%", m * 100.0),
            },
        }
    }
    if let (Some(t), None) = (st.log_tflops, st.log_mfu) {
        say!("the log's own TFLOP/s per GPU column: {t:.1}");
    }
    if let (Some(x), Some(d), false) = (r.log_mfu_on_device, &r.device, p.format == Format::NanoGpt) {
        if st.log_tflops.is_some() {
            say!("against {} that column is {:.1}% MFU", d.name, x * 100.0);
        }
    }
    if let Some(w) = &r.mfu_suspect {
        say!("warning: {w}");
    }
    if p.minus_100 > 0 {
        say!("note: {} lines show `mfu -100.00%`: nanoGPT prints its running-MFU placeholder (-1) until its 5th iteration; it is not a measurement", p.minus_100);
    }
    match (r.eta, &r.max_iters) {
        (Some(e), Some((m, src))) => {
            say!(
                "ETA to iteration {m} ({src}): {} (from iteration {}, at the steady rate, evals not included)",
                human_duration(e),
                st.last_iter
            )
        }
        _ => say!("ETA: unknown (give --max-iters)"),
    }
}

/// One line per update in `--follow` mode.
fn follow_line(r: &Report) -> String {
    let st = &r.st;
    let mut s = format!(
        "iter {}: steady {:.2} ms/iter ({} samples, {} dropped)",
        st.last_iter, st.steady_ms_per_iter, st.iters_seen, st.iters_dropped
    );
    if let Some(t) = r.tokens_per_second {
        s += &format!(", {} tok/s", thousands(t));
    }
    if let Some(m) = r.mfu {
        s += &format!(", MFU {:.1}%", m * 100.0);
    }
    if let (Some(e), Some((m, _))) = (r.eta, &r.max_iters) {
        s += &format!(", ETA to {m}: {}", human_duration(e));
    }
    if r.mfu_suspect.is_some() {
        s += " (MFU suspect: check the batch flags)";
    }
    s
}

static STOP_FOLLOWING: AtomicBool = AtomicBool::new(false);

/// Re-reads the file every second (complete lines only) and prints a line whenever the
/// steady figures cover more iterations, until Ctrl-C; then the full report.
fn follow(a: &LogsArgs, forced: Option<Format>) -> Result<()> {
    let _ = ctrlc::set_handler(|| STOP_FOLLOWING.store(true, Ordering::SeqCst));
    std::fs::metadata(&a.file).with_context(|| format!("cannot read {}", a.file.display()))?;
    let (mut seen_len, mut shown, mut waiting) = (usize::MAX, None::<(u64, usize)>, false);
    let mut last: Option<Report> = None;
    while !STOP_FOLLOWING.load(Ordering::SeqCst) {
        let bytes = std::fs::read(&a.file).unwrap_or_default();
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if complete != seen_len {
            seen_len = complete;
            match report(a, forced, &String::from_utf8_lossy(&bytes[..complete])) {
                Ok(r) => {
                    let key = (r.st.last_iter, r.st.iters_seen);
                    if shown != Some(key) {
                        shown = Some(key);
                        if a.json {
                            say!("{}", json(a, &r));
                        } else {
                            say!("{}", follow_line(&r));
                        }
                    }
                    last = Some(r);
                }
                Err(e) if !waiting => {
                    waiting = true;
                    eprintln!("waiting for iteration lines in {} ({e:#})", a.file.display());
                }
                Err(_) => {}
            }
        }
        for _ in 0..10 {
            if STOP_FOLLOWING.load(Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    if let (Some(r), false) = (&last, a.json) {
        say!();
        print(a, r);
    }
    Ok(())
}
