//! torchtitan, modded-nanogpt, litgpt, nanotron and torchtune.
//! * torchtitan: `step: N  loss: X  memory: ...GiB(..%)  tps: T  tflops: F  mfu: M%` every
//!   `log_freq` steps (older: `wps:`); `tps` is tokens/s per GPU over the interval. Its lines
//!   carry a timestamp (`[rank0]:[titan] 2025-06-16 22:30:50,322 - root - INFO - `): timed by
//!   them, else by `tps` with the tokens per GPU per step.
//! * modded-nanogpt: `step:N/M train_loss:X train_time:Tms step_avg:Ams` (and `val_loss` lines):
//!   `train_time` is a cumulative clock (paused during evals), differenced.
//! * litgpt: `iter N step M: loss X, iter time: Yms` (older) and
//!   `Epoch E | iter N step M | loss train: X, val: ... | iter time: Y ms`: one micro-batch
//!   iteration's time (`iter` counts micro-batches, `step` optimizer steps). The iteration
//!   that steps the optimiser (`(step)`, `(optimizer.step)`) is the slow one of its cycle, so
//!   a cycle's iterations are one sample, their mean ([`super::Record::cycle`]).
//! * nanotron and torchtune: see their readers.

use super::{num, Format, Hit, Record, Time, Unit};
use regex::Regex;
use std::sync::LazyLock;

static TITAN: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^step:\s*(\d+)\s+loss:\s*([-\d.Ee+naif]+)\s").unwrap());
static TITAN_TPS: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\b(?:tps|wps):\s*([\d,]+(?:\.\d+)?)").unwrap());
static TITAN_TFLOPS: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\btflops:\s*([\d.]+)").unwrap());
static TITAN_MFU: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\bmfu:\s*([\d.]+)%").unwrap());

pub(super) fn torchtitan(line: &str) -> Option<(Format, Hit)> {
    let c = TITAN.captures(line)?;
    let tps = num(&TITAN_TPS.captures(line)?[1])?;
    let mut r = Record::new(c[1].parse().ok()?, Time::Throughput { per_s: tps, unit: Unit::TokensPerGpu });
    r.loss = num(&c[2]);
    r.log_tok_s_per_gpu = Some(tps);
    r.log_tflops = TITAN_TFLOPS.captures(line).and_then(|c| num(&c[1]));
    r.log_mfu = TITAN_MFU.captures(line).and_then(|c| num(&c[1])).map(|m| m / 100.0);
    Some((Format::Torchtitan, Hit::Iter(r)))
}

static MODDED: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^step:(\d+)/(\d+)\b.*?\btrain_time:([\d.]+)ms").unwrap());
static MODDED_LOSS: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\btrain_loss:([-\d.Ee+]+)").unwrap());

pub(super) fn modded_nanogpt(line: &str) -> Option<(Format, Hit)> {
    let c = MODDED.captures(line)?;
    let mut r = Record::new(c[1].parse().ok()?, Time::Cumulative { ms: num(&c[3])?, resolution_ms: 1.0 });
    r.total = c[2].parse().ok();
    r.loss = MODDED_LOSS.captures(line).and_then(|c| num(&c[1]));
    Some((Format::ModdedNanogpt, Hit::Iter(r)))
}

static LITGPT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^(?:ep(?:och)?\s+\d+\s*\|\s*)?iter\s+(\d+)\s*\|?\s*step\s+(\d+)\s*[:|].*?\biter time:\s*([\d.]+)\s*(ms|s)\b(.*)$")
        .unwrap()
});
static LITGPT_LOSS: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\bloss(?: train)?(?: \(curr\))?:?\s*([-\d.Ee+]+)").unwrap());

pub(super) fn litgpt(line: &str) -> Option<(Format, Hit)> {
    let c = LITGPT.captures(line)?;
    let ms = num(&c[3])? * if c[4].eq_ignore_ascii_case("s") { 1e3 } else { 1.0 };
    let mut r = Record::new(c[1].parse().ok()?, Time::PerIter(ms));
    r.loss = LITGPT_LOSS.captures(line).and_then(|c| num(&c[1]));
    // the iteration that steps the optimiser says so, and already counts the new step: it
    // ends the cycle of the step before
    let step: u64 = c[2].parse().ok()?;
    let stepped = c[5].contains("step)");
    r.cycle = Some(if stepped { step.saturating_sub(1) } else { step });
    Some((Format::Litgpt, Hit::Iter(r)))
}

// nanotron: `iteration: N / M | consumed_tokens: 5.24M | elapsed_time_per_iteration_ms: 812 |
// tokens_per_sec: 646K | tokens_per_sec_per_gpu: 80.7K | global_batch_size: 512 | lm_loss: 9.1 |
// ...` (since 2025: `time_per_iteration_ms`, the batch in tokens, `eta: ...`). Each line's time
// is that one iteration's (nanotron restarts its timer every iteration); numbers have three
// significant figures and a K/M/G(B)/T suffix.
static NANOTRON: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\biteration:\s*(\d+)\s*/\s*(\d+)\s*\|").unwrap());
static NANOTRON_TIME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b(?:elapsed_)?time_per_iteration_ms:\s*([\d.]+[KMGBTPE]?)(?:\s|\||$)").unwrap());
static NANOTRON_FIELD: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\b(\w+):\s*([-\d.e]+[KMGBTPE]?)(?:\s|\||$)").unwrap());

/// nanotron's `human_format`: `11.5K` is 11500, `85.8G` and `480B` are billions.
fn human(s: &str) -> Option<f64> {
    let (digits, scale) = match s.chars().last()? {
        'K' => (&s[..s.len() - 1], 1e3),
        'M' => (&s[..s.len() - 1], 1e6),
        'G' | 'B' => (&s[..s.len() - 1], 1e9),
        'T' => (&s[..s.len() - 1], 1e12),
        'P' => (&s[..s.len() - 1], 1e15),
        'E' => (&s[..s.len() - 1], 1e18),
        _ => (s, 1.0),
    };
    num(digits).map(|v| v * scale)
}

pub(super) fn nanotron(line: &str) -> Option<(Format, Hit)> {
    let c = NANOTRON.captures(line)?;
    let ms = human(&NANOTRON_TIME.captures(line)?[1])?;
    let mut r = Record::new(c[1].parse().ok()?, Time::PerIter(ms));
    r.total = c[2].parse().ok();
    let old = line.contains("elapsed_time_per_iteration_ms");
    for f in NANOTRON_FIELD.captures_iter(line) {
        let v = human(&f[2]);
        match &f[1] {
            "lm_loss" => r.loss = v,
            "tokens_per_sec" => r.log_tok_s = v,
            "tokens_per_sec_per_gpu" => r.log_tok_s_per_gpu = v,
            "model_tflops_per_gpu" => r.log_tflops = v,
            // samples before 2025 (tokens since): only a whole number is exact
            "global_batch_size" if old && f[2].bytes().all(|b| b.is_ascii_digit()) => r.batch = f[2].parse().ok(),
            _ => {}
        }
    }
    Some((Format::Nanotron, Hit::Iter(r)))
}

// torchtune's metric logger: `Step N | loss:X lr:Y tokens_per_second_per_gpu:Z ...` (its
// DiskLogger file, or stdout), one optimiser step's throughput per GPU, of the labels' tokens
// (padding and masked prompt tokens are not counted); validation writes `Step N | val_loss:X`.
static TORCHTUNE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\bStep (\d+) \| ((?:\w+:\S+ ?)+)$").unwrap());
static TORCHTUNE_TPS: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\btokens_per_second_per_gpu:([-\d.eE+]+)").unwrap());
static TORCHTUNE_LOSS: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\bloss:([-\d.eE+]+)").unwrap());

/// Only torchtune's shape: `name:value` pairs, no space after the colon (other trainers'
/// `Step N | loss: 2.9 | time: 121ms` lines are the fallback's).
pub(super) fn torchtune(line: &str) -> Option<(Format, Hit)> {
    let c = TORCHTUNE.captures(line)?;
    let rest = &c[2];
    if rest.starts_with("val_") {
        return Some((Format::Torchtune, Hit::Eval));
    }
    let Some(tps) = TORCHTUNE_TPS.captures(rest).and_then(|t| num(&t[1])) else {
        return Some((Format::Torchtune, Hit::Info)); // an older line without throughput, memory lines
    };
    let mut r = Record::new(c[1].parse().ok()?, Time::Throughput { per_s: tps, unit: Unit::TokensPerGpu });
    r.loss = TORCHTUNE_LOSS.captures(rest).and_then(|l| num(&l[1]));
    r.log_tok_s_per_gpu = Some(tps);
    Some((Format::Torchtune, Hit::Iter(r)))
}
