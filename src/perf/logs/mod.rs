//! `gptrain logs`: reads someone's training log and says how fast it really went.
//!
//! A log is read line by line (carriage returns count as line ends, so a progress bar's
//! refreshes are lines too). Each line first loses its noise ([`clean`]): ANSI colours, a
//! `> ` quote, a `#` or `//` comment marker, a `[rank0]:` or `0: ` rank label, a timestamp
//! (a date and time, or a time of day alone before a logger's tag; kept: it can time the
//! line), bracketed tags and a logger's `- root - INFO -`. What is left
//! is offered to each format's reader in turn ([`READERS`]; `--format` keeps one). A reader
//! answers with an iteration [`Record`] whose time number says what it MEANS ([`Time`]), an
//! eval line, an informative line of its format, or nothing (the line is skipped and counted).
//! Every line is also searched for the run's shape ([`facts::Facts`]: global batch size,
//! sequence length, world size, total iterations).
//!
//! The format read is the one with the most timed iteration lines (formats that time each
//! line before those that only give a timestamp or a throughput; the generic fallback last).
//! Its records become per-iteration samples ([`samples`]) by what their number means: one
//! iteration's time is a sample; an interval's average is a sample (the iterations it covers
//! are counted by the counter); a cumulative clock or a timestamp is differenced between lines
//! and divided by the iteration gap (over at least ten ticks of its resolution); a throughput is
//! turned into time with the units per iteration.
//!
//! Rule for steady state (stated in the output): the first samples are warm-up until the time
//! settles, by the same rule as the live meter ([`super::meter`]); of the rest, samples slower
//! than `OUTLIER` x their median are dropped as outliers (eval and checkpoint time counted into
//! an iteration). Steady ms/iter is the median of what remains, with its 10th and 90th
//! percentiles.

mod blocks;
mod classic;
pub use classic::{gptrain_start, GptrainStart};
pub mod facts;
mod fairseq;
mod frameworks;
mod generic;
mod jsonl;
pub use jsonl::{is_counter, is_eval_part};
mod megatron;
mod progress;

use super::meter::Meter;
use anyhow::{bail, Result};
pub use facts::Facts;
use regex::Regex;
use std::sync::LazyLock;

/// A sample slower than this many times the median is an outlier.
pub const OUTLIER: f64 = 1.5;
/// nanoGPT's MFU column divides by an A100's bf16 peak whatever the card.
pub const NANOGPT_PEAK: f64 = 312e12;
/// A clock or timestamp is differenced over at least this many ticks of its resolution.
pub const MIN_TICKS: f64 = 10.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    NanoGpt,
    LlmcCuda,
    LlmcCpu,
    Gptrain,
    HfTrainer,
    HfTrainerState,
    Lightning,
    Litgpt,
    Torchtitan,
    Megatron,
    DeepSpeed,
    ModdedNanogpt,
    Nanotron,
    Fairseq,
    Torchtune,
    Composer,
    Olmo,
    Jsonl,
    Tensorboard,
    Generic,
}

impl Format {
    pub const ALL: [Format; 20] = [
        Format::NanoGpt,
        Format::LlmcCuda,
        Format::LlmcCpu,
        Format::Gptrain,
        Format::HfTrainer,
        Format::HfTrainerState,
        Format::Lightning,
        Format::Litgpt,
        Format::Torchtitan,
        Format::Megatron,
        Format::DeepSpeed,
        Format::ModdedNanogpt,
        Format::Nanotron,
        Format::Fairseq,
        Format::Torchtune,
        Format::Composer,
        Format::Olmo,
        Format::Jsonl,
        Format::Tensorboard,
        Format::Generic,
    ];

    /// The name `--format` takes and the report prints.
    pub fn name(self) -> &'static str {
        match self {
            Format::NanoGpt => "nanogpt",
            Format::LlmcCuda => "llmccuda",
            Format::LlmcCpu => "llmccpu",
            Format::Gptrain => "gptrain",
            Format::HfTrainer => "hf-trainer",
            Format::HfTrainerState => "hf-trainer-state",
            Format::Lightning => "lightning",
            Format::Litgpt => "litgpt",
            Format::Torchtitan => "torchtitan",
            Format::Megatron => "megatron",
            Format::DeepSpeed => "deepspeed",
            Format::ModdedNanogpt => "modded-nanogpt",
            Format::Nanotron => "nanotron",
            Format::Fairseq => "fairseq",
            Format::Torchtune => "torchtune",
            Format::Composer => "composer",
            Format::Olmo => "olmo",
            Format::Jsonl => "jsonl",
            Format::Tensorboard => "tensorboard",
            Format::Generic => "generic",
        }
    }

    /// What the format is, in words.
    pub fn describe(self) -> &'static str {
        match self {
            Format::NanoGpt => "nanoGPT",
            Format::LlmcCuda => "llm.c (CUDA trainer)",
            Format::LlmcCpu => "llm.c (CPU trainer)",
            Format::Gptrain => "gptrain",
            Format::HfTrainer => "Hugging Face Trainer (console progress bar)",
            Format::HfTrainerState => "Hugging Face Trainer (trainer_state.json)",
            Format::Lightning => "PyTorch Lightning (progress bar)",
            Format::Litgpt => "litgpt",
            Format::Torchtitan => "torchtitan",
            Format::Megatron => "Megatron-LM",
            Format::DeepSpeed => "DeepSpeed",
            Format::ModdedNanogpt => "modded-nanogpt",
            Format::Nanotron => "nanotron",
            Format::Fairseq => "fairseq / metaseq",
            Format::Torchtune => "torchtune",
            Format::Composer => "MosaicML Composer / llm-foundry",
            Format::Olmo => "OLMo / OLMo-core",
            Format::Jsonl => "JSON lines of metrics (metrics.jsonl, wandb-history.jsonl)",
            Format::Tensorboard => "TensorBoard events (each step's scalars and wall time)",
            Format::Generic => "generic fallback (an iteration counter with a time, a rate or a timestamp)",
        }
    }

    /// `--format NAME` (a few spellings accepted).
    pub fn from_name(s: &str) -> Result<Format> {
        let k: String = s.to_ascii_lowercase().chars().filter(|c| c.is_ascii_alphanumeric()).collect();
        let f = match k.as_str() {
            "hf" | "huggingface" | "trainer" => Some(Format::HfTrainer),
            "trainerstate" | "hfstate" => Some(Format::HfTrainerState),
            "llmc" => Some(Format::LlmcCuda),
            "pytorchlightning" | "pl" => Some(Format::Lightning),
            "megatronlm" | "megatrondeepspeed" => Some(Format::Megatron),
            "modded" | "moddednanogpt" => Some(Format::ModdedNanogpt),
            "metaseq" => Some(Format::Fairseq),
            "llmfoundry" | "mosaic" | "mosaicml" => Some(Format::Composer),
            "olmocore" => Some(Format::Olmo),
            "json" | "wandb" | "wandbhistory" => Some(Format::Jsonl),
            "tfevents" | "tb" => Some(Format::Tensorboard),
            "fallback" => Some(Format::Generic),
            _ => Format::ALL.into_iter().find(|f| f.name().replace('-', "") == k),
        };
        match f {
            Some(f) => Ok(f),
            None => bail!("unknown --format `{s}`; known: {}", Format::ALL.map(Format::name).join(", ")),
        }
    }
}

impl serde::Serialize for Format {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// What a line's time number means.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Time {
    /// This one iteration's time, ms.
    PerIter(f64),
    /// The mean ms per iteration since the previous line (Megatron's `elapsed time per iteration`).
    IntervalAvg(f64),
    /// A rolling mean of the last window of iterations' times, ms (Composer's and OLMo's speed
    /// monitors): a sample per line, as one iteration's.
    Window(f64),
    /// A clock since the start, ms, read to `resolution_ms` (modded-nanogpt's `train_time`,
    /// a progress bar's elapsed time).
    Cumulative { ms: f64, resolution_ms: f64 },
    /// A rate; turned into time with the units per iteration.
    Throughput { per_s: f64, unit: Unit },
    /// Nothing but the line's timestamp ([`Record::stamp`]).
    Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Samples (sequences) per second, whole job.
    Samples,
    /// Tokens per second, whole job.
    Tokens,
    /// Tokens per second per GPU (torchtitan's `tps`).
    TokensPerGpu,
}

/// One iteration line, whatever its format.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub iter: u64,
    pub time: Time,
    /// The line's timestamp, seconds (from [`clean`]).
    pub stamp: Option<Stamp>,
    pub loss: Option<f64>,
    /// The log's own MFU column, as a fraction (nanoGPT's -100% placeholder is None).
    pub log_mfu: Option<f64>,
    /// The log's own achieved TFLOP/s per GPU column.
    pub log_tflops: Option<f64>,
    /// The log's own tokens/s column, whole job.
    pub log_tok_s: Option<f64>,
    /// The log's own tokens/s per GPU column.
    pub log_tok_s_per_gpu: Option<f64>,
    /// `N/M`: the run's total iterations.
    pub total: Option<u64>,
    /// The global batch size (samples) this line states.
    pub batch: Option<u64>,
    /// Which progress bar (label and total): a log may hold several.
    pub stream: u64,
    /// nanoGPT's `mfu -100.00%` placeholder.
    pub minus_100: bool,
    /// The time's number when it came without a unit (`dt: 0.41`, `{"dt": 410}`): its unit is
    /// settled for the whole log ([`settle_units`]), not line by line.
    pub unitless: Option<f64>,
    /// Which session of the run (a process's start to its end): a resumed gptrain run appends
    /// a `start` record to its metrics.jsonl, and each starts cold ([`Hit::Start`]).
    pub session: u32,
    /// Counted by W&B's `_step` alone (its `wandb.log` calls, not steps): renumbered by
    /// [`jsonl::wandb_steps`]; such a row without a training loss is there only for its time.
    pub wandb_row: bool,
    /// The gradient-accumulation cycle the iteration belongs to (litgpt's micro-batches of one
    /// optimiser step): a cycle's consecutive iterations are one sample, their mean ([`samples`]).
    pub cycle: Option<u64>,
}

impl Record {
    pub fn new(iter: u64, time: Time) -> Record {
        Record {
            iter,
            time,
            stamp: None,
            loss: None,
            log_mfu: None,
            log_tflops: None,
            log_tok_s: None,
            log_tok_s_per_gpu: None,
            total: None,
            batch: None,
            stream: 0,
            minus_100: false,
            unitless: None,
            session: 0,
            wandb_row: false,
            cycle: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stamp {
    pub secs: f64,
    pub resolution_ms: f64,
}

/// A reader's answer for one line.
// one a line, consumed at once: boxing the record would allocate a line for nothing
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Hit {
    Iter(Record),
    Eval,
    /// A line of this format that is no iteration (a Hugging Face loss dict, DeepSpeed's
    /// `step=N, skipped=...` without a timestamp).
    Info,
    /// A process of the run starts (gptrain's `start` record, written again by each resume):
    /// the iterations after it are a new session, with a warm-up of their own.
    Start,
}

type Reader = fn(&str) -> Option<(Format, Hit)>;

/// The readers, in the order a line is offered to them (the generic fallback last).
pub const READERS: &[(Format, Reader)] = &[
    (Format::Gptrain, classic::gptrain_jsonl),
    (Format::Nanotron, frameworks::nanotron),
    (Format::Fairseq, fairseq::fairseq),
    (Format::Composer, blocks::composer),
    (Format::Olmo, blocks::olmo),
    (Format::Torchtune, frameworks::torchtune),
    (Format::NanoGpt, classic::nanogpt),
    (Format::ModdedNanogpt, frameworks::modded_nanogpt),
    (Format::LlmcCuda, classic::llmc_cuda),
    (Format::LlmcCpu, classic::llmc_cpu),
    (Format::Torchtitan, frameworks::torchtitan),
    (Format::Megatron, megatron::megatron),
    (Format::DeepSpeed, megatron::deepspeed),
    (Format::Litgpt, frameworks::litgpt),
    (Format::HfTrainer, progress::bar),
    (Format::HfTrainer, progress::hf_dict),
    (Format::Jsonl, jsonl::jsonl),
    (Format::Generic, generic::line),
];

/// How the samples were made from the log's numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Meaning {
    /// Each line is one iteration's time.
    PerIteration,
    /// Each line is the mean over the iterations since the previous line.
    IntervalAverage,
    /// Each line is a rolling mean over the last window of iterations.
    WindowAverage,
    /// A cumulative clock, differenced between lines.
    CumulativeClock,
    /// Line timestamps, differenced between lines.
    Timestamps,
    /// A throughput, turned into time with the units per iteration.
    Throughput,
    /// One figure for the whole run (trainer_state.json's `train_runtime`).
    RunAverage,
}

impl Meaning {
    pub fn describe(self) -> &'static str {
        match self {
            Meaning::PerIteration => "each line's time is one iteration's",
            Meaning::IntervalAverage => "each line's time is the average over the iterations since the previous line (one sample per line; iterations counted by the counter)",
            Meaning::WindowAverage => "each line's time is the trainer's rolling average over its last window of iterations (one sample per line)",
            Meaning::CumulativeClock => "the log's clock is cumulative: differenced between lines and divided by the iteration gap",
            Meaning::Timestamps => "only timestamps: differenced between lines and divided by the iteration gap",
            Meaning::Throughput => "a throughput column, turned into time with the units per iteration",
            Meaning::RunAverage => "one figure for the whole run (train_runtime less eval_runtime, over global_step): warm-up and checkpoints included",
        }
    }
}

/// One per-iteration time sample.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Sample {
    /// The iteration counter at the sample's end.
    pub iter: u64,
    pub ms: f64,
    /// Iterations it stands for (by the counter).
    pub span: u64,
    pub log_mfu: Option<f64>,
    pub log_tflops: Option<f64>,
    pub log_tok_s: Option<f64>,
    pub log_tok_s_per_gpu: Option<f64>,
    /// The session of the run it belongs to ([`Record::session`]).
    pub session: u32,
}

/// What the caller knows that the log may not say.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Read only this format's lines (`--format`).
    pub format: Option<Format>,
    /// Samples (sequences) per iteration, whole job: turns a samples/s column into time.
    pub samples_per_iter: Option<f64>,
    /// Tokens per iteration, whole job: turns a tokens/s column into time.
    pub tokens_per_iter: Option<f64>,
    /// GPUs: turns a tokens/s-per-GPU column into time.
    pub gpus: Option<f64>,
}

/// What was read from a log.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Parsed {
    pub format: Format,
    pub meaning: Meaning,
    pub samples: Vec<Sample>,
    /// Iteration lines of the format read.
    pub iter_lines: usize,
    /// Iteration lines of other formats, not used.
    pub other_iter_lines: usize,
    pub evals: usize,
    pub skipped_lines: usize,
    /// Lines with nanoGPT's `mfu -100.00%` placeholder.
    pub minus_100: usize,
    pub first_iter: u64,
    pub last_iter: u64,
    /// Whether the log holds its run's start (its first iteration counter is within
    /// `MAX_WARMUP` iterations, or two logging intervals, of zero). A log that starts later is an
    /// excerpt from a run already warm: no sample of it is warm-up.
    pub from_start: bool,
    /// `N/M` in the iteration lines: the run's total iterations.
    pub total_from_log: Option<u64>,
    /// The global batch size the iteration lines state (the last one).
    pub batch_from_lines: Option<u64>,
    pub facts: Facts,
}

/// Parses a log with no knowledge from flags. A log with no recognisable iteration line is an error.
pub fn parse(text: &str) -> Result<Parsed> {
    parse_with(text, &Options::default())
}

pub(super) static ANSI: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\x1b\[[0-9;?]*[A-Za-z]").unwrap());
static QUOTE_OR_COMMENT: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^(?:>+|#+|//+|\|)[ \t]*").unwrap());
/// A launcher's rank label at a line's start: `[rank0]:`, `[1]:`, `0: ` (srun), `slurm_procid 0 :`.
pub(super) const RANK_LABEL: &str = r"^(?:\[?(?:rank|default|local_rank)\s*\d+\]?\s*:|\[\d+\]\s*:|\d{1,4}:\s|slurm_procid\s*\d+\s*:)";
static RANK: LazyLock<Regex> = LazyLock::new(|| Regex::new(&format!(r"{RANK_LABEL}\s*")).unwrap());
static DATE_TIME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\[?(\d{4})[-/](\d{2})[-/](\d{2})[ T_](\d{1,2}):(\d{2}):(\d{2})(?:[.,:](\d{1,9}))?(?:\s?Z|\s?[+-]\d{2}:?\d{2}|\s?UTC)?\]?[ \t|:,\-]*").unwrap()
});
static GLOG: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[IWEF](\d{2})(\d{2}) (\d{2}):(\d{2}):(\d{2})\.(\d+)\s+\d+\s+\S+:\d+\]\s*").unwrap());
/// A time of day alone: `[12:00:01]` (rich's), `03:22:14 [INFO] ...` (prime-rl's).
static TIME_ONLY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:\[(\d{1,2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))?\]|(\d{1,2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))?\s)[ \t|:,\-]*").unwrap()
});
static TAG: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^\[[^\[\]]{0,60}\]:?[ \t]*").unwrap());
static LOGGER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:-\s*)?(?:[\w.:<>]+\s+-\s+)?(?:INFO|WARNING|WARN|DEBUG|ERROR|CRITICAL|NOTICE)\b\s*(?:-\s*|:\s*(?:[\w.]+:)?)?\s*")
        .unwrap()
});

/// A line without its noise, and its timestamp if it had one.
pub fn clean(line: &str) -> (String, Option<Stamp>) {
    let mut s: String = if line.contains('\x1b') { ANSI.replace_all(line, "").into_owned() } else { line.to_string() };
    let mut stamp = None;
    for _ in 0..12 {
        let t = s.trim_start();
        let before = t.len();
        let mut rest = t;
        if let Some(m) = QUOTE_OR_COMMENT.find(rest) {
            rest = &rest[m.end()..];
        } else if let Some(m) = RANK.find(rest) {
            rest = &rest[m.end()..];
        } else if let Some(c) = DATE_TIME.captures(rest) {
            let n = |i: usize| c.get(i).map_or(0, |m| m.as_str().parse::<i64>().unwrap_or(0));
            stamp = Some(stamp_of(n(1), n(2), n(3), n(4), n(5), n(6), c.get(7).map(|m| m.as_str())));
            rest = &rest[c.get(0).unwrap().end()..];
        } else if let Some(c) = GLOG.captures(rest) {
            let n = |i: usize| c.get(i).map_or(0, |m| m.as_str().parse::<i64>().unwrap_or(0));
            stamp = Some(stamp_of(2000, n(1), n(2), n(3), n(4), n(5), c.get(6).map(|m| m.as_str())));
            rest = &rest[c.get(0).unwrap().end()..];
        } else if let Some(c) = TIME_ONLY.captures(rest).filter(|c| c.get(1).is_some() || after_bare_time(&rest[c.get(0).unwrap().end()..]))
        {
            // bracketed, groups 1-4; bare, 5-8
            let k = if c.get(1).is_some() { 0 } else { 4 };
            let n = |i: usize| c.get(k + i).map_or(0, |m| m.as_str().parse::<i64>().unwrap_or(0));
            stamp = Some(stamp_of(1970, 1, 1, n(1), n(2), n(3), c.get(k + 4).map(|m| m.as_str())));
            rest = &rest[c.get(0).unwrap().end()..];
        } else if let Some(m) = TAG.find(rest).filter(|m| !is_counter_tag(m.as_str())) {
            rest = &rest[m.end()..];
        } else if let Some(m) = LOGGER.find(rest).filter(|m| m.end() > 0) {
            rest = &rest[m.end()..];
        }
        if rest.len() == before {
            s = t.to_string();
            break;
        }
        s = rest.to_string();
    }
    (s.trim_end().to_string(), stamp)
}

/// A bare time of day is a timestamp only before a logger's tag or level (`03:22:14 [INFO]`,
/// `12:00:01 - INFO -`, `12:00:01 INFO ...`), not when it is the line's content (a clock).
fn after_bare_time(rest: &str) -> bool {
    rest.starts_with(['[', '|', '-']) || LOGGER.find(rest).is_some_and(|m| m.end() > 0)
}

/// `[Epoch 1/10]`, `[Batch 100/500]`, `[iter 20]`: a bracket that holds the counter stays.
fn is_counter_tag(tag: &str) -> bool {
    let t = tag.trim_start_matches('[').trim_start().to_ascii_lowercase();
    ["epoch", "iter", "step", "batch", "token=", "sample=", "it "].iter().any(|k| t.starts_with(k))
        && tag.bytes().any(|b| b.is_ascii_digit())
}

fn stamp_of(y: i64, mo: i64, d: i64, h: i64, mi: i64, sec: i64, frac: Option<&str>) -> Stamp {
    let days = days_from_civil(y, mo.clamp(1, 12), d.clamp(1, 31));
    let (f, res) = match frac {
        Some(f) if !f.is_empty() => (format!("0.{f}").parse::<f64>().unwrap_or(0.0), 1000.0 * 10f64.powi(-(f.len().min(3) as i32))),
        _ => (0.0, 1000.0),
    };
    Stamp { secs: (days * 86400 + h * 3600 + mi * 60 + sec) as f64 + f, resolution_ms: res }
}

/// Days since 1970-01-01 of a civil date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses a log: every line, every reader (or the one `--format` names).
pub fn parse_with(text: &str, opt: &Options) -> Result<Parsed> {
    if opt.format.is_none_or(|f| f == Format::HfTrainerState) {
        if let Some(p) = progress::trainer_state(text) {
            return p;
        }
        if opt.format == Some(Format::HfTrainerState) {
            bail!("not a Hugging Face trainer_state.json (a JSON object with `log_history` and `global_step`)");
        }
    }
    let mut records: Vec<(Format, Record)> = Vec::new();
    let mut facts = Facts::default();
    let (mut evals, mut skipped, mut lines, mut hf_dicts) = (0, 0, 0, 0);
    let mut session = 0;
    let text = blocks::join(text);
    for raw in text.split(['\n', '\r']) {
        if raw.trim().is_empty() {
            continue;
        }
        lines += 1;
        let (line, stamp) = clean(raw);
        facts.scan(&line);
        let hit = READERS.iter().filter(|(f, _)| opt.format.is_none_or(|x| reads(x, *f))).find_map(|(_, read)| {
            let (f, h) = read(&line)?;
            opt.format.is_none_or(|x| reads(x, f)).then_some((f, h))
        });
        match hit {
            // the fallback's line with a counter but no time and no timestamp says nothing
            Some((Format::Generic, Hit::Iter(r))) if r.time == Time::Timestamp && stamp.is_none() => skipped += 1,
            Some((_, Hit::Iter(r))) if !sound(&r.time) => skipped += 1,
            Some((f, Hit::Iter(mut r))) => {
                r.stamp = r.stamp.or(stamp);
                r.session = session;
                records.push((f, r));
            }
            Some((_, Hit::Eval)) => evals += 1,
            Some((f, Hit::Info)) => hf_dicts += usize::from(f == Format::HfTrainer),
            Some((_, Hit::Start)) => session += 1,
            None => skipped += 1,
        }
    }
    let Some(format) = choose_format(&records) else {
        if hf_dicts > 0 {
            bail!("{hf_dicts} Hugging Face Trainer loss lines but no time in them (they carry no step counter or clock): give the console's progress bar lines, or the run's trainer_state.json");
        }
        match opt.format {
            Some(f) => bail!("no {} iteration line in {lines} lines (--format {})", f.describe(), f.name()),
            None => bail!(
                "no training iteration line recognised in {lines} lines (read: nanoGPT, llm.c, gptrain, Hugging Face Trainer, Lightning, litgpt, torchtitan, Megatron-LM, DeepSpeed, modded-nanogpt, nanotron, fairseq, torchtune, Composer, OLMo, JSON lines of metrics, TensorBoard events, or any line with an iteration counter and a time, a rate or a timestamp)"
            ),
        }
    };
    let mut all = records.len();
    let mut mine: Vec<Record> = records.into_iter().filter(|(f, _)| *f == format).map(|(_, r)| r).collect();
    settle_units(&mut mine);
    if format == Format::Jsonl {
        let n = mine.len();
        jsonl::wandb_steps(&mut mine);
        all -= n - mine.len(); // W&B rows kept only for their time are no iteration lines
    }
    // TensorBoard events arrive as JSON lines of their scalars (`tensorboard::json_lines`)
    let format = if opt.format == Some(Format::Tensorboard) { Format::Tensorboard } else { format };
    // progress bars: the one with the most distinct counters is the training bar
    if let Some(best) = best_stream(&mine) {
        mine.retain(|r| r.stream == best);
    }
    let minus_100 = mine.iter().filter(|r| r.minus_100).count();
    let (meaning, samples) = samples(&mine, opt, &facts);
    if samples.is_empty() {
        bail!(
            "{} {} iteration lines, but no time in them to measure: {}",
            mine.len(),
            format.describe(),
            match meaning {
                Meaning::Throughput if mine.iter().any(|r| matches!(r.time, Time::Throughput { .. })) =>
                    "their throughput column needs the batch: give --batch-size/--block-size/--grad-accum/--gpus",
                _ => "fewer than two timed lines, or a clock that never advances",
            }
        );
    }
    Ok(Parsed {
        format,
        meaning,
        iter_lines: mine.len(),
        other_iter_lines: all - mine.len(),
        evals,
        skipped_lines: skipped,
        minus_100,
        first_iter: mine.first().map_or(0, |r| r.iter),
        from_start: from_start(&mine),
        last_iter: mine.last().map_or(0, |r| r.iter),
        total_from_log: mine.iter().find_map(|r| r.total),
        batch_from_lines: mine.iter().rev().find_map(|r| r.batch),
        samples,
        facts,
    })
}

/// Whether `--format forced` reads the lines of `reader`: its own; Lightning's, torchtune's
/// and fairseq's bars are read by the Hugging Face one's reader; TensorBoard events come as
/// JSON lines.
fn reads(forced: Format, reader: Format) -> bool {
    forced == reader
        || (matches!(forced, Format::Lightning | Format::Torchtune | Format::Fairseq) && reader == Format::HfTrainer)
        || (forced == Format::Tensorboard && reader == Format::Jsonl)
}

/// A time `v` written without a unit, in ms: seconds when `typical` (the line's own number,
/// then the log's median, [`settle_units`]) is under 50, else milliseconds.
pub(super) fn unitless_ms(v: f64, typical: f64) -> f64 {
    if typical < 50.0 {
        v * 1e3
    } else {
        v
    }
}

/// Times written without a unit take one unit for the whole log, by their median
/// ([`unitless_ms`]), so that a run of ~50 s steps is not read half in seconds and half in
/// milliseconds.
fn settle_units(records: &mut [Record]) {
    let mut raw: Vec<f64> = records.iter().filter_map(|r| r.unitless).collect();
    if raw.is_empty() {
        return;
    }
    raw.sort_by(f64::total_cmp);
    let median = raw[raw.len() / 2];
    for r in records.iter_mut() {
        if let (Some(v), Time::PerIter(_)) = (r.unitless, r.time) {
            r.time = Time::PerIter(unitless_ms(v, median));
        }
    }
}

fn from_start(records: &[Record]) -> bool {
    let mut iters = records.iter().map(|r| r.iter);
    let Some(first) = iters.next() else { return true };
    let gap = iters.find(|&i| i > first).map_or(0, |i| i - first);
    first <= (super::meter::MAX_WARMUP as u64).max(gap.saturating_mul(2))
}

/// A time a line can give: finite, and above zero (a clock from zero).
fn sound(t: &Time) -> bool {
    match *t {
        Time::PerIter(ms) | Time::IntervalAvg(ms) | Time::Window(ms) => ms.is_finite() && ms > 0.0,
        Time::Cumulative { ms, resolution_ms } => ms.is_finite() && ms >= 0.0 && resolution_ms > 0.0,
        Time::Throughput { per_s, .. } => per_s.is_finite() && per_s > 0.0,
        Time::Timestamp => true,
    }
}

/// Times each line itself (not only a timestamp or a rate).
fn explicit(t: &Time) -> bool {
    matches!(t, Time::PerIter(_) | Time::IntervalAvg(_) | Time::Window(_) | Time::Cumulative { .. })
}

/// The format read: a real format before the fallback, lines that time themselves before
/// timestamps and rates, then the most lines.
fn choose_format(records: &[(Format, Record)]) -> Option<Format> {
    Format::ALL
        .into_iter()
        .filter_map(|f| {
            let mine: Vec<&Record> = records.iter().filter(|(g, _)| *g == f).map(|(_, r)| r).collect();
            let timed = mine.iter().filter(|r| explicit(&r.time)).count();
            // JSON lines of metrics rank with the fallback: one JSON line in a text log is no format
            (!mine.is_empty()).then_some((!matches!(f, Format::Generic | Format::Jsonl), timed > 0, mine.len(), f))
        })
        .max_by_key(|&(real, timed, n, _)| (real, timed, n))
        .map(|x| x.3)
}

fn best_stream(records: &[Record]) -> Option<u64> {
    let mut streams: Vec<u64> = records.iter().map(|r| r.stream).collect();
    streams.sort_unstable();
    streams.dedup();
    if streams.len() < 2 {
        return None;
    }
    streams.into_iter().max_by_key(|s| {
        let mut iters: Vec<u64> = records.iter().filter(|r| r.stream == *s).map(|r| r.iter).collect();
        iters.sort_unstable();
        iters.dedup();
        (iters.len(), iters.last().copied().unwrap_or(0))
    })
}

fn sample(r: &Record, ms: f64, span: u64) -> Sample {
    Sample {
        iter: r.iter,
        ms,
        span,
        log_mfu: r.log_mfu,
        log_tflops: r.log_tflops,
        log_tok_s: r.log_tok_s,
        log_tok_s_per_gpu: r.log_tok_s_per_gpu,
        session: r.session,
    }
}

/// Per-iteration samples from one format's records, by what their numbers mean.
pub fn samples(records: &[Record], opt: &Options, facts: &Facts) -> (Meaning, Vec<Sample>) {
    let has = |f: fn(&Time) -> bool| records.iter().any(|r| f(&r.time));
    if has(|t| matches!(t, Time::PerIter(_))) {
        let each = records.iter().filter_map(|r| if let Time::PerIter(ms) = r.time { Some((r, ms)) } else { None });
        let s = if records.iter().any(|r| r.cycle.is_some()) {
            by_cycle(each.collect())
        } else {
            // a line printed twice (two log handlers, two ranks) is one iteration
            let mut last = None;
            each.filter(|&(r, ms)| last.replace((r.iter, ms)) != Some((r.iter, ms))).map(|(r, ms)| sample(r, ms, 1)).collect()
        };
        return (Meaning::PerIteration, s);
    }
    if has(|t| matches!(t, Time::Window(_))) {
        let s = records.iter().filter_map(|r| if let Time::Window(ms) = r.time { Some(sample(r, ms, 1)) } else { None }).collect();
        return (Meaning::WindowAverage, s);
    }
    if has(|t| matches!(t, Time::IntervalAvg(_))) {
        let mut out: Vec<Sample> = Vec::new();
        let mut prev: Option<u64> = None;
        for r in records {
            let Time::IntervalAvg(ms) = r.time else { continue };
            if prev.is_some_and(|p| r.iter <= p) {
                prev = Some(r.iter); // a repeated line (another rank) or a restart
                continue;
            }
            out.push(sample(r, ms, prev.map_or(0, |p| r.iter - p)));
            prev = Some(r.iter);
        }
        // the first line's interval is the next one's length (its start is not in the log)
        if out.len() > 1 && out[0].span == 0 {
            out[0].span = out[1].span;
        }
        for s in &mut out {
            s.span = s.span.max(1);
        }
        return (Meaning::IntervalAverage, out);
    }
    if has(|t| matches!(t, Time::Cumulative { .. })) {
        let clock: Vec<(&Record, f64, f64)> = records
            .iter()
            .filter_map(|r| if let Time::Cumulative { ms, resolution_ms } = r.time { Some((r, ms, resolution_ms)) } else { None })
            .collect();
        return (Meaning::CumulativeClock, difference(&clock));
    }
    let stamped: Vec<(&Record, f64, f64)> = records.iter().filter_map(|r| r.stamp.map(|s| (r, s.secs * 1e3, s.resolution_ms))).collect();
    if stamped.len() >= 2 {
        return (Meaning::Timestamps, difference(&stamped));
    }
    // a rate: time = units per iteration / rate
    // the flags' batch is per GPU times `--gpus`; without it, times the log's world size (else one)
    let more = if opt.gpus.is_none() { facts.world_size.map_or(1.0, |w| w as f64) } else { 1.0 };
    let per_iter = |u: Unit| match u {
        Unit::Samples => opt.samples_per_iter.map(|s| s * more).or(facts.global_batch.map(|b| b as f64)),
        Unit::Tokens => opt.tokens_per_iter.map(|t| t * more).or(facts.tokens_per_iter()),
        // the flags' tokens count `--gpus` GPUs (one when not given): per GPU, whatever the log's world size
        Unit::TokensPerGpu => opt.tokens_per_iter.map(|t| t / opt.gpus.unwrap_or(1.0)).or(facts.tokens_per_gpu_iter()),
    };
    let s = records
        .iter()
        .filter_map(|r| match r.time {
            Time::Throughput { per_s, unit } if per_s > 0.0 => per_iter(unit).map(|n| sample(r, n / per_s * 1e3, 1)),
            _ => None,
        })
        .collect();
    (Meaning::Throughput, s)
}

/// One sample per gradient-accumulation cycle ([`Record::cycle`]): the mean of its
/// consecutive iterations' times, standing for them all; only cycles of the usual length (the
/// most common), so that a cycle cut by the log's start or end, or by a gap in the lines,
/// does not read as a whole one with or without its optimiser step.
fn by_cycle(each: Vec<(&Record, f64)>) -> Vec<Sample> {
    let runs: Vec<&[(&Record, f64)]> =
        each.chunk_by(|(a, _), (b, _)| a.cycle.is_some() && a.cycle == b.cycle && b.iter == a.iter + 1 && a.session == b.session).collect();
    let mut lengths: Vec<usize> = runs.iter().map(|r| r.len()).collect();
    lengths.sort_unstable();
    let usual = lengths.chunk_by(|a, b| a == b).max_by_key(|g| (g.len(), g[0])).map_or(1, |g| g[0]);
    runs.into_iter()
        .filter(|run| run.len() == usual)
        .map(|run| {
            let (last, _) = run[run.len() - 1];
            sample(last, run.iter().map(|(_, ms)| ms).sum::<f64>() / run.len() as f64, run.len() as u64)
        })
        .collect()
}

/// Differences a clock (`(record, ms, resolution ms)`) between lines: each sample after the
/// first spans at least [`MIN_TICKS`] ticks of the clock; a line that repeats the window's first iteration moves
/// the window's start (a progress bar refreshed after an eval); a clock or counter that goes
/// back starts afresh.
fn difference(clock: &[(&Record, f64, f64)]) -> Vec<Sample> {
    let mut out = Vec::new();
    let Some(&(first, c0, _)) = clock.first() else { return out };
    let (mut start_iter, mut start_ms, mut last_iter, mut last_ms) = (first.iter, c0, first.iter, c0);
    // the first advance is a sample of its own, however short: it holds the run's start-up
    let mut first_window = true;
    for &(r, ms, res) in &clock[1..] {
        let paused = r.iter == last_iter && ms - last_ms >= MIN_TICKS * res;
        if r.iter < last_iter || ms < start_ms || (r.iter == start_iter && r.iter == last_iter) || paused {
            // a restart, the window's first iteration again, or the same iteration much later
            // (an eval in between): the window starts here
            (start_iter, start_ms, last_iter, last_ms) = (r.iter, ms, r.iter, ms);
            continue;
        }
        (last_iter, last_ms) = (r.iter, ms);
        let gap = r.iter - start_iter;
        if gap == 0 || (ms - start_ms < MIN_TICKS * res && !(first_window && ms > start_ms)) {
            continue;
        }
        first_window = false;
        out.push(sample(r, (ms - start_ms) / gap as f64, gap));
        (start_iter, start_ms) = (r.iter, ms);
    }
    out
}

/// The values, in order (for [`percentile`]).
fn sorted(xs: impl IntoIterator<Item = f64>) -> Vec<f64> {
    let mut v: Vec<f64> = xs.into_iter().collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Steady-state statistics of a parsed log.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Steady {
    /// Samples (timed lines, or windows of a clock) seen.
    pub iters_seen: usize,
    pub warmup_dropped: usize,
    pub outliers_dropped: usize,
    pub iters_dropped: usize,
    /// Iterations the kept samples stand for, by the counter.
    pub iters_counted: u64,
    /// False when the log ended before the time settled (then only the first sample counts
    /// as warm-up). Of its first session: a later session too short to settle is all warm-up.
    pub warmup_settled: bool,
    pub steady_ms_per_iter: f64,
    pub p10_ms: f64,
    pub p90_ms: f64,
    pub last_iter: u64,
    /// Median of the log's own MFU column over steady samples, if it has one.
    pub log_mfu: Option<f64>,
    pub log_tflops: Option<f64>,
    pub log_tok_s: Option<f64>,
    pub log_tok_s_per_gpu: Option<f64>,
    pub total_from_log: Option<u64>,
    /// Each session's share, in the file's order (one for most logs; a resumed gptrain run's
    /// metrics.jsonl holds one per process).
    pub sessions: Vec<SessionSteady>,
}

/// One session's share of the steady figures (a file with several: [`Steady::sessions`]).
#[derive(Clone, Debug, serde::Serialize)]
pub struct SessionSteady {
    pub first_iter: u64,
    pub last_iter: u64,
    pub samples: usize,
    pub warmup_dropped: usize,
    pub outliers_dropped: usize,
    /// Median ms/iter of its kept samples (NaN when none is kept).
    pub steady_ms_per_iter: f64,
}

/// Fewer kept samples than this make no steady figure: [`Steady::few_samples_warning`].
pub const MIN_STEADY_SAMPLES: usize = 3;

impl Steady {
    /// Samples the steady figures rest on.
    pub fn samples_kept(&self) -> usize {
        self.iters_seen - self.iters_dropped
    }

    /// A warning when the steady figure rests on fewer than [`MIN_STEADY_SAMPLES`] samples
    /// (a one-figure-for-the-whole-run log, trainer_state.json's, says so itself).
    pub fn few_samples_warning(&self, meaning: Meaning) -> Option<String> {
        let n = self.samples_kept();
        if n >= MIN_STEADY_SAMPLES || meaning == Meaning::RunAverage {
            return None;
        }
        let what = if n == 1 { "one sample".to_string() } else { format!("{n} samples") };
        Some(format!(
            "the steady figure rests on {what} ({} iteration{}): too few to be a steady state (it takes {MIN_STEADY_SAMPLES}); give a longer log",
            self.iters_counted,
            if self.iters_counted == 1 { "" } else { "s" }
        ))
    }

    /// A note when the file holds several sessions (a resumed gptrain run's metrics.jsonl):
    /// how the steady figures were formed, and each session's median.
    pub fn sessions_note(&self) -> Option<String> {
        if self.sessions.len() < 2 {
            return None;
        }
        let each: Vec<String> = self
            .sessions
            .iter()
            .map(|s| match s.steady_ms_per_iter {
                ms if ms.is_nan() => format!("iterations {}-{}: all warm-up", s.first_iter, s.last_iter),
                ms => format!("iterations {}-{}: {ms:.2} ms/iter", s.first_iter, s.last_iter),
            })
            .collect();
        Some(format!(
            "the file holds {} sessions (a start record each: the run was resumed); each has its own warm-up, outliers are judged within each, and the steady figures are over all their steady samples ({})",
            self.sessions.len(),
            each.join("; ")
        ))
    }
}

pub fn steady(p: &Parsed) -> Steady {
    let n = p.samples.len();
    let (mut kept, mut warmup_dropped, mut outliers_dropped, mut first_settled) = (Vec::<&Sample>::new(), 0, 0, true);
    let mut sessions = Vec::new();
    // each session (a process: a resumed run's metrics.jsonl holds several) starts cold
    for (i, run) in p.samples.chunk_by(|a, b| a.session == b.session).enumerate() {
        // warm-up: the live meter's rule, fed the samples in order
        let mut meter = Meter::new(1.0, 1.0, None);
        for l in run {
            if meter.is_warm() {
                break;
            }
            meter.record_iter(l.ms);
        }
        // the sample that settles the meter is the first steady one (as in the live log);
        // a log too short to settle keeps all but the first MIN_WARMUP samples (a later
        // session's are all warm-up: the earlier ones give the steady figures)
        let settled = meter.is_warm();
        let warm = if i == 0 && !p.from_start {
            0 // an excerpt from the middle of a run: its warm-up is not in the log
        } else if settled {
            meter.warmup_iters()
        } else if i == 0 {
            super::meter::MIN_WARMUP.min(run.len().saturating_sub(1))
        } else {
            run.len()
        };
        if i == 0 {
            first_settled = settled || !p.from_start;
        }
        // outliers: against the session's own median (sessions may have run at different speeds)
        let rest = &run[warm..];
        let med = percentile(&sorted(rest.iter().map(|l| l.ms)), 0.5);
        let mine: Vec<&Sample> = rest.iter().filter(|l| l.ms <= OUTLIER * med).collect();
        sessions.push(SessionSteady {
            first_iter: run[0].iter,
            last_iter: run[run.len() - 1].iter,
            samples: run.len(),
            warmup_dropped: warm,
            outliers_dropped: rest.len() - mine.len(),
            steady_ms_per_iter: percentile(&sorted(mine.iter().map(|l| l.ms)), 0.5),
        });
        warmup_dropped += warm;
        outliers_dropped += rest.len() - mine.len();
        kept.extend(mine);
    }
    let kt = sorted(kept.iter().map(|l| l.ms));
    let median_of = |f: fn(&Sample) -> Option<f64>| -> Option<f64> {
        let xs = sorted(kept.iter().filter_map(|s| f(s)));
        (!xs.is_empty()).then(|| percentile(&xs, 0.5))
    };
    Steady {
        iters_seen: n,
        warmup_dropped,
        outliers_dropped,
        iters_dropped: n - kept.len(),
        iters_counted: kept.iter().map(|s| s.span).sum(),
        warmup_settled: first_settled,
        steady_ms_per_iter: percentile(&kt, 0.5),
        p10_ms: percentile(&kt, 0.1),
        p90_ms: percentile(&kt, 0.9),
        last_iter: p.last_iter,
        log_mfu: median_of(|s| s.log_mfu),
        log_tflops: median_of(|s| s.log_tflops),
        log_tok_s: median_of(|s| s.log_tok_s),
        log_tok_s_per_gpu: median_of(|s| s.log_tok_s_per_gpu),
        total_from_log: p.total_from_log,
        sessions,
    }
}

/// A number as logs write it: `5,856`, `1.2e-3`, `+3`.
pub(crate) fn num(s: &str) -> Option<f64> {
    s.replace(',', "").parse().ok().filter(|x: &f64| x.is_finite())
}

#[cfg(test)]
mod tests;
