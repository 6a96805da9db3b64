//! The subcommands that run a config: `prepare`, `train`, `sample` and `plot`, and the config
//! resolution the others share (`estimate`, `bench`, `logs` and `check` have files of their own).

use super::printer::{say, thousands, Printer};
use super::ConfigArgs;
use crate::checkpoint;
use crate::config::{self, Config};
use crate::data::prepare::{self, TokenizerKind};
use crate::dist::World;
use crate::model::ModelConfig;
use crate::rng;
use crate::sample::Sampler;
use crate::tokenizer::Tokenizer;
use crate::train;
use crate::units::{count, human_bytes};
use anyhow::{bail, Context, Result};
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
pub(super) fn worker_threads(threads: usize) -> usize {
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
    if world.is_root() {
        if let Some(note) = gpu_left_idle(a) {
            eprintln!("{note}");
        }
    }
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

/// A note for `gptrain train` with no preset, config or device named, on a machine with a
/// usable GPU: the default preset is nanoGPT README's CPU run, so it would leave the GPU idle
/// without a word.
fn gpu_left_idle(a: &ConfigArgs) -> Option<String> {
    let named = |key: &str| a.sets.iter().any(|s| s.split('=').next().map(str::trim) == Some(key));
    if a.preset.is_some() || a.config.is_some() || named("device") {
        return None;
    }
    // the GPU `auto` would take (its libraries found, its kernels compilable), else none
    let crate::backend::cuda::select::Selected::Cuda { ordinal, .. } =
        crate::backend::cuda::select::select("auto", crate::backend::Precision::F32).ok()?
    else {
        return None;
    };
    let card = crate::backend::cuda::select::find_card(Some(ordinal)).ok()?;
    Some(format!(
        "note: this is the default `{DEFAULT_PRESET}` preset, nanoGPT README's CPU run; the GPU cuda:{} ({}) stays idle: `--preset shakespeare-char` trains nanoGPT's GPU config on it (or `--set device=cuda` this one)",
        card.ordinal, card.name
    ))
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

/// Ctrl-C (SIGINT) and SIGTERM: the first finishes the iteration and writes a checkpoint; a
/// second one over a second later quits at once. One sooner is the same stop delivered twice:
/// GNU `timeout`, and launchers that signal the process group, send it to the process and to
/// its group within microseconds, and it must not cost the checkpoint.
fn install_signal_handler() {
    static FIRST: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let _ = ctrlc::set_handler(|| {
        // the handler's thread writes with `writeln!`, not `eprintln!`: a closed stderr (the
        // reader of a pipe gone) must not panic it, which would leave signals unanswered
        let say = |text: &str| {
            let _ = writeln!(std::io::stderr(), "{text}");
        };
        let first = *FIRST.get_or_init(std::time::Instant::now);
        if train::STOP.swap(true, std::sync::atomic::Ordering::SeqCst) {
            if first.elapsed() < std::time::Duration::from_secs(1) {
                return; // the same stop, delivered twice
            }
            say("\nstopping now (second interrupt), without a checkpoint of this iteration; any checkpoint written before is intact");
            quit_now(130);
        }
        if train::WAITING_TO_SAVE.load(std::sync::atomic::Ordering::SeqCst) {
            say("\ninterrupt: giving up on the final checkpoint");
        } else {
            say(
                "\ninterrupt: finishing this iteration and writing a checkpoint (interrupt again, a second or more later, to quit at once)",
            );
        }
    });
}

/// Ends the process at once with `code`, not through `exit`: the main thread may be inside
/// CUDA, cuBLASLt or NCCL (whose threads run too), and the libraries' teardown that `exit` runs
/// would race it (a hang or a crash on the way out). gptrain writes whole lines, so its own
/// output has nothing buffered (flushing Rust's stdout here could wait forever for a writer
/// blocked on a pipe nobody reads); C's stdio buffers (NCCL_DEBUG's lines) are flushed by a
/// thread given 200 ms, for the same reason. A checkpoint being written is left as a temporary
/// folder, never half a checkpoint.
fn quit_now(code: i32) -> ! {
    let (done, flushed) = std::sync::mpsc::channel();
    let _ = std::thread::Builder::new().name("flush".into()).spawn(move || {
        // SAFETY: fflush(NULL) flushes every C output stream; it has no other effect.
        unsafe { libc::fflush(std::ptr::null_mut()) };
        let _ = done.send(());
    });
    let _ = flushed.recv_timeout(std::time::Duration::from_millis(200));
    // SAFETY: ends the process; nothing of gptrain's is left unwritten (above).
    unsafe { libc::_exit(code) }
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
    // a GPU samples in float32, whatever precision trained the checkpoint's f32 weights
    if let train::Chosen::Cuda(gpu) = &chosen {
        use crate::backend::Backend;
        eprintln!("sampling on {} in float32", gpu.device(crate::backend::Precision::F32).description);
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

pub fn plot(metrics: &Path, out: Option<PathBuf>) -> Result<()> {
    let out = out.unwrap_or_else(|| metrics.with_extension(""));
    let (png, svg) = crate::plot::plot(metrics, &out)?;
    say!("wrote {} and {}", png.display(), svg.display());
    Ok(())
}
