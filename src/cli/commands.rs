//! One function per subcommand: resolve flags into a plan, run it, print.

use super::printer::{gib, recompute_note, say, thousands, Printer};
use super::units::{count, human_bytes};
use super::ConfigArgs;
use crate::backend::cpu::matmul::GemmLib;
use crate::backend::cpu::simd::Isa;
use crate::backend::Precision;
use crate::checkpoint;
use crate::config::{self, Config};
use crate::data::prepare::{self, TokenizerKind};
use crate::dist::World;
use crate::model::{ModelConfig, Recompute};
use crate::perf::estimate::{self, MfuAssumption, Run};
use crate::perf::{device, flops};
use crate::rng;
use crate::sample::Sampler;
use crate::tokenizer::Tokenizer;
use crate::train;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

/// The preset used when a command is given neither `--preset` nor `--config`.
pub const DEFAULT_PRESET: &str = "shakespeare-char-cpu";

/// Resolves config flags (defaulting to [`DEFAULT_PRESET`]) and prints notices.
pub(super) fn resolve(a: &ConfigArgs) -> Result<Config> {
    let preset = a.preset.as_deref().or(if a.config.is_none() { Some(DEFAULT_PRESET) } else { None });
    let (cfg, notices) = config::resolve(preset, a.config.as_deref(), &a.sets)?;
    for n in notices.0 {
        eprintln!("{n}");
    }
    Ok(cfg)
}

/// `threads` workers, 0 meaning the physical cores.
fn worker_threads(threads: usize) -> usize {
    if threads == 0 {
        config::physical_cores()
    } else {
        threads
    }
}

/// A rayon pool with `threads` workers (0: physical cores); more than the machine's logical
/// CPUs is allowed but warned about (they take turns on the same cores: every step slows).
pub(super) fn pool(threads: usize) -> Result<rayon::ThreadPool> {
    let n = worker_threads(threads);
    let cpus = std::thread::available_parallelism().map_or(n, |c| c.get());
    if n > cpus {
        eprintln!(
            "warning: threads = {n} is more than this machine's {cpus} logical CPUs; the extra threads take turns on the same cores and slow every step (`threads = 0` uses the {} physical cores)",
            config::physical_cores()
        );
    }
    rayon::ThreadPoolBuilder::new().num_threads(n).build().context("cannot start the thread pool")
}

pub fn prepare(input: Option<PathBuf>, tokenizer: &str, out: &Path, threads: Option<usize>) -> Result<()> {
    let kind = match tokenizer {
        "char" => TokenizerKind::Char,
        "gpt2" | "bpe" => TokenizerKind::Gpt2,
        t => bail!("unknown tokenizer `{t}`; use `char` or `gpt2`"),
    };
    let bar = if std::io::stderr().is_terminal() { indicatif::ProgressBar::new(0) } else { indicatif::ProgressBar::hidden() };
    bar.set_style(indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}").unwrap());
    let r = pool(threads.unwrap_or(0))?.install(|| prepare::prepare(input.as_deref(), kind, out, &bar))?;
    bar.finish_and_clear();
    // at most this many files listed per list; the rest are counted
    const LIST: usize = 20;
    let list = |rows: Vec<(String, String)>| {
        let w = rows.iter().take(LIST).map(|r| r.0.len()).max().unwrap_or(0);
        for (name, what) in rows.iter().take(LIST) {
            say!("  {name:<w$}  {what}");
        }
        if rows.len() > LIST {
            say!("  ... and {} more", rows.len() - LIST);
        }
    };
    match r.read.as_slice() {
        [(name, bytes)] => say!("read {} from {name} (1 document)", human_bytes(*bytes)),
        docs => {
            say!("read {} from {}:", human_bytes(r.bytes), count(docs.len(), "document"));
            list(docs.iter().map(|(name, bytes)| (name.clone(), human_bytes(*bytes))).collect());
        }
    }
    if !r.skipped.is_empty() {
        say!("skipped {}:", count(r.skipped.len(), "file"));
        let why = |w: &prepare::Skip| match w {
            prepare::Skip::NotTxt => "not a .txt file",
            prepare::Skip::Empty => "empty",
        };
        list(r.skipped.iter().map(|(p, w)| (p.display().to_string(), why(w).to_string())).collect());
    }
    let tokens = |n: usize| format!("{} token{}", thousands(n as f64), if n == 1 { "" } else { "s" });
    say!("vocabulary: {} ({} tokenizer), stored as uint{}", tokens(r.meta.vocab_size), r.meta.tokenizer, r.meta.token_bytes * 8);
    say!("train has {}, val has {}", tokens(r.train_tokens), tokens(r.val_tokens));
    say!("wrote {}/train.bin, val.bin, meta.json{}", out.display(), if r.meta.itos.is_some() { ", meta.pkl" } else { "" });
    if let Some(old) = &r.replaced {
        let vocab = if old.vocab_size == r.meta.vocab_size {
            String::new()
        } else {
            format!("; the old vocabulary had {}, the new {}", tokens(old.vocab_size), thousands(r.meta.vocab_size as f64))
        };
        say!("overwrote the {} dataset that was in {} (same tokenizer{vocab})", old.tokenizer, out.display());
    }
    Ok(())
}

pub fn train(a: &ConfigArgs) -> Result<()> {
    let mut cfg = resolve(a)?;
    // a data-parallel launch (torchrun --no-python, mpirun, srun): rank 0 speaks for the run
    let world = World::from_env()?;
    if world.local_size > 1 && cfg.threads == 0 {
        cfg.threads = (config::physical_cores() / world.local_size).max(1); // the cores shared out
    }
    let rank = world.rank;
    let ranked = |e: anyhow::Error| if world.size > 1 && rank > 0 { e.context(format!("rank {rank}")) } else { e };
    train::check_device(&cfg).map_err(ranked)?;
    install_signal_handler();
    pool(cfg.threads)?.install(|| -> Result<()> {
        let (mut printer, mut silent) = (Printer::new(), Silent);
        let obs: &mut dyn train::Observer = if world.is_root() { &mut printer } else { &mut silent };
        let summary = train::run_ranked(&cfg, obs, &world).map_err(ranked)?;
        // a sample of what this run trained: its own last checkpoint
        if let (true, true, Some(ckpt)) = (world.is_root(), summary.iters > 0, &summary.last_checkpoint) {
            say!("sample:");
            sample_run(&cfg, Some(ckpt), 1, cfg.max_new_tokens.min(300))?;
        }
        Ok(())
    })
}

/// What a data-parallel rank other than 0 reports: nothing (rank 0 reports for the run; an
/// error still reaches the rank's standard error).
struct Silent;

impl train::Observer for Silent {
    fn message(&mut self, _: &str) {}
    fn start(&mut self, _: &train::StartInfo) {}
    fn iter(&mut self, _: &train::IterLog) {}
    fn eval(&mut self, _: u64, _: f32, _: f32, _: f64) {}
    fn checkpoint(&mut self, _: u64, _: &Path, _: f64) {}
    fn finish(&mut self, _: &train::Summary) {}
}

fn install_signal_handler() {
    let _ = ctrlc::set_handler(|| {
        if train::STOP.swap(true, std::sync::atomic::Ordering::SeqCst) {
            eprintln!("\nstopping now (second interrupt), without a checkpoint of this iteration; any checkpoint written before is intact");
            std::process::exit(130);
        }
        if train::WAITING_TO_SAVE.load(std::sync::atomic::Ordering::SeqCst) {
            eprintln!("\ninterrupt: giving up on the final checkpoint");
        } else {
            eprintln!("\ninterrupt: finishing this iteration and writing a checkpoint (interrupt again to quit at once)");
        }
    });
}

pub fn sample(a: &ConfigArgs) -> Result<()> {
    let cfg = resolve(a)?;
    pool(cfg.threads)?.install(|| sample_run(&cfg, None, cfg.num_samples, cfg.max_new_tokens))
}

/// What `sample` generates from: weights, their shape and tokenizer, and where they came from.
struct SampleSource {
    model: ModelConfig,
    params: Vec<f32>,
    tok: Tokenizer,
    what: String,
}

fn tokenizer_words(tok: &Tokenizer) -> String {
    match tok {
        Tokenizer::Char { itos, .. } => format!("char tokenizer of {} characters", itos.len()),
        Tokenizer::Gpt2 => "GPT-2 BPE tokenizer".into(),
    }
}

/// Loads the model to sample from: `from` (a training run's own last checkpoint), else
/// `init_from` when it is a path (a gptrain checkpoint directory, which carries its tokenizer,
/// or a Hugging Face GPT-2 file or directory, which is GPT-2 BPE), else the newest checkpoint
/// in out_dir.
fn load_for_sampling(cfg: &Config, from: Option<&Path>) -> Result<SampleSource> {
    let named = match from {
        Some(p) => Some(p.to_string_lossy().into_owned()),
        None => (cfg.init_from != "scratch" && cfg.init_from != "resume").then(|| cfg.init_from.clone()),
    };
    let (model, params, state, dir) = match named {
        Some(path) => {
            let w = checkpoint::load_weights(&path, cfg.n_head)?;
            match w.state {
                Some(state) => (w.model, w.params, state, w.file.parent().unwrap_or(Path::new(".")).to_path_buf()),
                None => {
                    let tok = Tokenizer::Gpt2;
                    let what = format!("{} (GPT-2 weights without gptrain's training state: {})", w.file.display(), tokenizer_words(&tok));
                    return Ok(SampleSource { model: w.model, params: w.params, tok, what });
                }
            }
        }
        None => {
            if checkpoint::list(Path::new(&cfg.out_dir)).is_empty() {
                bail!(
                    "no checkpoint in {} to sample from; hint: train first (`gptrain train`), or --set out_dir=DIR of a trained run",
                    cfg.out_dir
                );
            }
            let ck = checkpoint::load_latest(Path::new(&cfg.out_dir), cfg.resume_fallback, &mut |w| eprintln!("{w}"))?;
            (ck.state.model.clone(), ck.params, ck.state, ck.dir)
        }
    };
    let tok = state.meta.tokenizer().with_context(|| format!("checkpoint {}", dir.display()))?;
    let what = format!("{} ({}, {})", dir.display(), state.describe(), tokenizer_words(&tok));
    Ok(SampleSource { model, params, tok, what })
}

/// The prompt's token ids: `start` (or the file it names) in the model's tokenizer, or a
/// document start when empty; every id must be inside the model's vocabulary.
fn encode_prompt(cfg: &Config, src: &SampleSource) -> Result<(String, Vec<u32>)> {
    let start = match cfg.start.strip_prefix("FILE:") {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("cannot read the prompt file {path}"))?,
        None => cfg.start.clone(),
    };
    let vocab = src.model.vocab_size;
    let mut prompt =
        src.tok.encode(&start).with_context(|| format!("cannot encode the prompt with the model's {}", tokenizer_words(&src.tok)))?;
    if prompt.is_empty() {
        prompt = match &src.tok {
            Tokenizer::Gpt2 if crate::tokenizer::GPT2_EOT as usize >= vocab => bail!(
                "an empty prompt starts from GPT-2's <|endoftext|> (id {}), which this model's vocabulary of {vocab} tokens does not have; give a prompt with `--set start=TEXT`",
                crate::tokenizer::GPT2_EOT
            ),
            Tokenizer::Gpt2 => vec![crate::tokenizer::GPT2_EOT],
            Tokenizer::Char { .. } => src.tok.encode("\n").unwrap_or(vec![0]),
        };
    }
    if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
        bail!(
            "the prompt encodes to token {bad} ({:?}), outside this model's vocabulary of {vocab} tokens ({}); give a prompt the model can read",
            src.tok.decode(&[bad]),
            tokenizer_words(&src.tok)
        );
    }
    Ok((start, prompt))
}

fn sample_run(cfg: &Config, from: Option<&Path>, num_samples: usize, max_new_tokens: usize) -> Result<()> {
    let src = load_for_sampling(cfg, from)?;
    eprintln!("sampling from {}", src.what);
    let (start, prompt) = encode_prompt(cfg, &src)?;
    let (mc, params, tok) = (src.model, src.params, src.tok);
    let (chosen, reason) = train::sample_backend(cfg)?;
    // (after a training run, which said it already)
    if let Some(r) = reason.filter(|_| from.is_none()) {
        eprintln!("{r}");
    }
    let kernels = crate::on_backend!(chosen, b => sample_with(Sampler::new(b, mc, &params)?, cfg, &start, &prompt, &tok, num_samples, max_new_tokens))?;
    // on standard error, as "sampling from": standard output is the samples alone (after a
    // training run its backend said it already)
    if let Some(note) = kernels.filter(|_| from.is_none()) {
        eprintln!("{note}");
    }
    Ok(())
}

/// Draws `num_samples` samples with `sampler` and prints them as they come; returns the
/// backend's note on getting ready ([`Sampler::warm_up_note`]).
#[allow(clippy::too_many_arguments)]
fn sample_with<B: crate::backend::Backend>(
    mut sampler: Sampler<B>,
    cfg: &Config,
    start: &str,
    prompt: &[u32],
    tok: &crate::tokenizer::Tokenizer,
    num_samples: usize,
    max_new_tokens: usize,
) -> Result<Option<String>> {
    let stdout = std::io::stdout();
    for k in 0..num_samples {
        let mut rng = rng::Rng::new(cfg.seed, rng::STREAM_SAMPLE + 1000 * k as u64);
        let _ = write!(stdout.lock(), "{start}");
        let mut pending = Vec::new();
        sampler.generate(prompt, max_new_tokens, cfg.temperature as f32, cfg.top_k, &mut rng, |t| {
            // BPE tokens may split a UTF-8 character: print once the bytes decode cleanly
            pending.push(t);
            let text = tok.decode(&pending);
            if !text.contains('\u{FFFD}') {
                let _ = write!(stdout.lock(), "{text}");
                let _ = stdout.lock().flush();
                pending.clear();
            }
        })?;
        if !pending.is_empty() {
            let _ = write!(stdout.lock(), "{}", tok.decode(&pending));
        }
        say!("\n---------------");
    }
    Ok(sampler.warm_up_note())
}

// ---------------------------------------------------------------------------------------------

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
            // a card without TF32 runs tf32 as fp32, one without BF16 reaches the figure in fp16
            let tf32 = if d.has_tf32() { format!("{:>6.1}", d.tf32_tflops) } else { format!("{:>6}", "-") };
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
    let dev_name = match (&a.device, cfg.device.as_str()) {
        (Some(d), _) => d.clone(),
        (None, "cpu") => "cpu".into(),
        // this machine's GPU when it has one in the table, else its CPU
        (None, "auto") => match crate::backend::cuda::select::select("auto", Precision::F32)? {
            crate::backend::cuda::select::Selected::Cuda { ordinal, .. } => {
                let card = crate::backend::cuda::select::find_card(Some(ordinal)).map_err(anyhow::Error::msg)?;
                match crate::backend::cuda::table_device(&card.name) {
                    Some(d) => d.name,
                    None if a.peak_tflops.is_some() => card.name,
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
            // an unknown device is fine with an explicit peak; its memory is then unknown
            (Err(_), Some(t)) => device::Device {
                name: dev_name.clone(),
                description: "not in gptrain's table".into(),
                class: device::Class::Datacenter,
                fp32_tflops: t,
                tf32_tflops: t,
                half_tflops: t,
                memory_bytes: 0,
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
            "gptrain's CPU buffers, fp32"
        } else {
            "gptrain's CUDA backend: flash attention, fused classifier, fp32 master weights, gradients and moments; the CUDA context estimated"
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
        let peak = info.peak_flops.unwrap_or(0.0);
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
            info.peak_source
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
    let d = precision.bytes() as u64;
    let held = gpu.memory_use().map_or(0, |m| m.current);
    let recompute = cfg.recompute_level();
    train::check_gpu_memory(model, cfg.batch_size, a.grad_accum, d, recompute, info.memory, held, 0, &info.description)?;
    let memory_model = flops::memory(model, cfg.batch_size, model.block_size, d, recompute, flops::Impl::Gpu).allocated();
    let to_run = began.elapsed().as_secs_f64() * 1e3;
    let r = crate::bench::run(model, cfg.batch_size, a.grad_accum, a.steps, a.warmup, a.profile, gpu, precision, recompute)?;
    let tps = (cfg.batch_size * model.block_size * a.grad_accum) as f64 / (r.ms_per_step / 1e3);
    let flops_s = r.flops_per_step / (r.ms_per_step / 1e3);
    let mfu = info.peak_flops.map(|p| flops_s / p);
    // each profiled op's TFLOP/s (ops that do matmul work: a step's FLOPs, all its
    // micro-batches) or GB/s (the rest), against the card's ceilings
    let kernel_flops = crate::bench::profile_flops(model, cfg.batch_size * a.grad_accum);
    let rates = crate::bench::profile_rates(&r.profile, &kernel_flops, info.peak_flops, info.bandwidth);
    if a.json {
        let profile_rates: serde_json::Map<String, serde_json::Value> =
            rates.iter().map(|x| (x.name.clone(), serde_json::to_value(x).expect("plain numbers"))).collect();
        say!(
            "{}",
            serde_json::json!({ "ms_per_step": r.ms_per_step, "ms_p10": r.p10_ms, "ms_p90": r.p90_ms, "tokens_per_second": tps,
                "gflops": flops_s / 1e9, "mfu": mfu, "peak_gflops": info.peak_flops.map(|p| p / 1e9), "device": info.description,
                "params": r.params, "steps": a.steps, "profile": profile_pairs(&r), "profile_rates": profile_rates,
                "dtype": precision.name(), "dtype_note": info.precision_note, "recompute": recompute.level(),
                "grad_accum": a.grad_accum, "warmup_ms": r.times_ms[..a.warmup], "steps_ms": r.times_ms[a.warmup..],
                "first_steady_ms": to_run + r.ends_ms[a.warmup], "peak_device_bytes": r.peak_device_bytes,
                "memory_model_bytes": memory_model, "kernels": r.warm_up_note })
        );
        return Ok(());
    }
    say!("device: {} ; {}", info.description, info.peak_source);
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
        let ceilings = match (info.peak_flops, info.bandwidth) {
            (Some(f), Some(b)) => format!("% of {:.1} TFLOP/s ({}) or {:.0} GB/s", f / 1e12, precision.name(), b / 1e9),
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

pub fn plot(metrics: &Path, out: Option<PathBuf>) -> Result<()> {
    let out = out.unwrap_or_else(|| metrics.with_extension(""));
    let (png, svg) = crate::plot::plot(metrics, &out)?;
    say!("wrote {} and {}", png.display(), svg.display());
    Ok(())
}
