//! torchtitan, modded-nanogpt and litgpt.
//! * torchtitan: `step: N  loss: X  memory: ...GiB(..%)  tps: T  tflops: F  mfu: M%` every
//!   `log_freq` steps (older: `wps:`); `tps` is tokens/s per GPU over the interval. Its lines
//!   carry a timestamp (`[rank0]:[titan] 2025-06-16 22:30:50,322 - root - INFO - `): timed by
//!   them, else by `tps` with the tokens per GPU per step.
//! * modded-nanogpt: `step:N/M train_loss:X train_time:Tms step_avg:Ams` (and `val_loss` lines):
//!   `train_time` is a cumulative clock (paused during evals), differenced.
//! * litgpt: `iter N step M: loss X, iter time: Yms` (older) and
//!   `Epoch E | iter N step M | loss train: X, val: ... | iter time: Y ms`: one micro-batch
//!   iteration's time (`iter` counts micro-batches, `step` optimizer steps).

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
    Regex::new(r"(?i)^(?:ep(?:och)?\s+\d+\s*\|\s*)?iter\s+(\d+)\s*\|?\s*step\s+\d+\s*[:|].*?\biter time:\s*([\d.]+)\s*(ms|s)\b").unwrap()
});
static LITGPT_LOSS: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\bloss(?: train)?(?: \(curr\))?:?\s*([-\d.Ee+]+)").unwrap());

pub(super) fn litgpt(line: &str) -> Option<(Format, Hit)> {
    let c = LITGPT.captures(line)?;
    let ms = num(&c[2])? * if c[3].eq_ignore_ascii_case("s") { 1e3 } else { 1.0 };
    let mut r = Record::new(c[1].parse().ok()?, Time::PerIter(ms));
    r.loss = LITGPT_LOSS.captures(line).and_then(|c| num(&c[1]));
    Some((Format::Litgpt, Hit::Iter(r)))
}
