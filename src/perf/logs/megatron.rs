//! Megatron-LM (and its DeepSpeed forks) and DeepSpeed's own lines.
//! * Megatron: ` iteration N/ M | consumed samples: ... | elapsed time per iteration (ms): X |
//!   ... | global batch size: B | lm loss: ... |`, logged every `--log-interval` iterations:
//!   X is the average over that interval. Megatron-DeepSpeed spells the loss `lm-loss` or
//!   `lm_loss` and may start the line with `samples/sec: ...`; newer Megatron adds
//!   `throughput per GPU (TFLOP/s/GPU): T`.
//! * DeepSpeed's pipeline engine: `steps: N loss: X iter time (s): Y samples/sec: Z`, every
//!   `steps_per_print` steps: Y is the interval's average.
//! * DeepSpeed's throughput timer, `[timer.py:...:stop] epoch=0/micro_step=M/global_step=N,
//!   RunningAvgSamplesPerSec=..., CurrSamplesPerSec=..., ...` (older: `0/N, SamplesPerSec=...`),
//!   and its `step=N, skipped=K, lr=[...]` lines: timed by their timestamps, else by the rate.

use super::{num, Format, Hit, Record, Time, Unit};
use regex::Regex;
use std::sync::LazyLock;

static ITERATION: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\biteration\s+(\d+)\s*/\s*(\d+)").unwrap());
static ELAPSED: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"elapsed time per iteration \((ms|s)\):\s*([\d.]+)").unwrap());
static BATCH: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"global batch size:\s*(\d+)").unwrap());
static LOSS: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\blm[ _-]loss:\s*([-\d.Ee+]+)").unwrap());
static TFLOPS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?:throughput per GPU \(TFLOP/s/GPU\):|approx flops per GPU:|TFLOPs:|tflops:)\s*([\d.]+)").unwrap());
static TGS: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"tokens per gpu per second \(tgs\):\s*([\d.]+)").unwrap());

pub(super) fn megatron(line: &str) -> Option<(Format, Hit)> {
    if line.contains("validation loss at") {
        return Some((Format::Megatron, Hit::Eval));
    }
    let it = ITERATION.captures(line)?;
    let e = ELAPSED.captures(line)?;
    let ms = num(&e[2])? * if &e[1] == "s" { 1e3 } else { 1.0 };
    let mut r = Record::new(it[1].parse().ok()?, Time::IntervalAvg(ms));
    r.total = it[2].parse().ok();
    r.batch = BATCH.captures(line).and_then(|c| c[1].parse().ok());
    r.loss = LOSS.captures(line).and_then(|c| num(&c[1]));
    r.log_tflops = TFLOPS.captures(line).and_then(|c| num(&c[1]));
    r.log_tok_s_per_gpu = TGS.captures(line).and_then(|c| num(&c[1]));
    Some((Format::Megatron, Hit::Iter(r)))
}

static PIPE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^steps:\s*(\d+)\s+loss:\s*([-\d.Ee+naif]+)\s+iter time \(s\):\s*([\d.]+)\s+samples/sec:\s*([\d.]+)").unwrap()
});
static TIMER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:epoch=\d+/micro_step=\d+/global_step=(\d+)|\d+/(\d+)),.*?\b(?:CurrSamplesPerSec|SamplesPerSec)=([\d.]+)").unwrap()
});
static STEP: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^(?:\[Rank \d+\]\s*)?step=(\d+), skipped=\d+").unwrap());

pub(super) fn deepspeed(line: &str) -> Option<(Format, Hit)> {
    if let Some(c) = PIPE.captures(line) {
        let secs = num(&c[3])?;
        let mut r = Record::new(c[1].parse().ok()?, Time::IntervalAvg(secs * 1e3));
        r.loss = num(&c[2]);
        r.batch = num(&c[4]).map(|sps| (sps * secs).round() as u64).filter(|b| *b > 0);
        return Some((Format::DeepSpeed, Hit::Iter(r)));
    }
    if let Some(c) = TIMER.captures(line) {
        let iter = c.get(1).or(c.get(2))?.as_str().parse().ok()?;
        let per_s = num(&c[3])?;
        return Some((Format::DeepSpeed, Hit::Iter(Record::new(iter, Time::Throughput { per_s, unit: Unit::Samples }))));
    }
    let c = STEP.captures(line)?;
    Some((Format::DeepSpeed, Hit::Iter(Record::new(c[1].parse().ok()?, Time::Timestamp))))
}
