//! JSON lines of metrics: one object per line, as custom training loops, W&B's offline
//! `wandb-history.jsonl` and many trainers' `metrics.jsonl` files write them
//! (`{"step": 120, "loss": 3.21, "dt": 0.412, "tokens_per_sec": 39700}`). The keys are
//! matched by name, whole or after the last `/` or `.` (`train/loss`, `trainer/global_step`);
//! nested objects are read as `outer/inner`. gptrain's own `metrics.jsonl` and fairseq's JSON
//! lines have readers of their own, offered the line first.
//!
//! A line is an iteration when it has a step counter and a time, taken in this order:
//! * one iteration's time: `dt`, `step_time`, `iter_time`, `time_per_iteration`, ..., in the
//!   unit its name ends with (`_ms`, `_s`), else seconds when the log's median is below 50
//!   and milliseconds above (the generic reader's rule); or steps per second
//!   (`steps_per_second`, `it/s`);
//! * W&B's clock since the start, `_runtime`, in seconds: differenced (a timestamp written
//!   finer is used instead). Names such as `time` or `elapsed` are a clock in one loop and an
//!   interval's time in another: not guessed at, unless written `H:MM:SS` (LLaMA-Factory's
//!   `trainer_log.jsonl`: `"current_steps": 3210, "total_steps": 3235, ..., "elapsed_time":
//!   "5:14:24"`, to the second; its `throughput` is the run's average so far, not used);
//! * a rate: tokens (`tokens_per_second`, ...), tokens per GPU (`..._per_gpu`, or a rate under
//!   `device/`) or samples (`samples_per_second`) per second; but a line with a timestamp is
//!   timed by the timestamps (they need no batch size);
//! * a timestamp: `_timestamp` (W&B), `timestamp`, `time`, `wall_time`, as Unix seconds
//!   (milliseconds past 1e12, microseconds past 1e15, nanoseconds past 1e17) or a date-time
//!   string: differenced.
//!
//! The counter is the first of `global_step`, `step`, `iter`, ..., `current_steps` (`iter` with litgpt's
//! `iter_time`); W&B's `_step` counts `wandb.log` calls, so rows counted by it alone are
//! renumbered by logging event (the rows one step logged within a few ms of each other are one
//! step, [`wandb_steps`]), and such a row is a step only when it holds a training loss. A line with a validation loss (`val_loss`,
//! `eval/loss`, `evaluation/loss`, ...) and no training loss is an eval line. A clock or
//! timestamp written as a whole number is read to one unit (a second, W&B's whole-second
//! `_runtime`), one written with a fraction to a thousandth. The format ranks with the generic
//! fallback: a few JSON lines in a text log do not decide how it is read.

use super::{Format, Hit, Record, Stamp, Time, Unit};
use serde_json::{Map, Value};

/// The step counter's names, the most specific first. W&B's `_step` counts `wandb.log` calls,
/// so a row counted by it alone is a step only when it holds a training loss.
const STEP: &[&str] = &["global_step", "step", "iter", "iteration", "num_updates", "update", "steps", "current_steps", "_step"];
const PER_ITER: &[&str] = &[
    "dt",
    "dt_ms",
    "step_time",
    "step_time_ms",
    "step_time_s",
    "iter_time",
    "iter_time_ms",
    "iteration_time",
    "iteration-time",
    "time_per_step",
    "time_per_iteration",
    "time_per_iteration_ms",
    "elapsed_time_per_iteration_ms",
    "train_step_timing",
    "train_step_time",
    "step_duration",
    "batch_time",
];
const TOKENS_PER_S: &[&str] =
    &["tokens_per_second", "tokens_per_sec", "tok_per_sec", "tok_per_s", "tokens_per_s", "tok/s", "tok/sec", "tokens/s"];
const TOKENS_PER_GPU_S: &[&str] = &["tokens_per_second_per_gpu", "tokens_per_sec_per_gpu", "tok_per_sec_per_gpu", "tps_per_gpu"];
const SAMPLES_PER_S: &[&str] = &["samples_per_second", "samples_per_sec", "samples/s"];
const STEPS_PER_S: &[&str] = &["steps_per_second", "steps_per_sec", "it/s", "iters_per_sec"];
/// Clocks from the start: W&B's own only. Names such as `time` or `elapsed` are a clock in
/// one loop and the last interval's time in another, so they are not guessed at.
const CLOCK: &[&str] = &["_runtime"];
/// Clocks from the start written as text, `5:13:22` or `1 day, 2:03:04` (Python's
/// `str(timedelta)`: LLaMA-Factory's `trainer_log.jsonl`): a clock, whatever the name.
const CLOCK_TEXT: &[&str] = &["elapsed_time", "elapsed"];
const STAMP: &[&str] = &["_timestamp", "timestamp", "time", "wall_time", "ts"];
/// One iteration's time is believed between a microsecond and a day.
const MS_RANGE: std::ops::RangeInclusive<f64> = 1e-3..=86_400e3;

pub(super) fn jsonl(line: &str) -> Option<(Format, Hit)> {
    if !line.starts_with('{') || !line.ends_with('}') {
        return None;
    }
    let Value::Object(obj) = serde_json::from_str::<Value>(line).ok()? else { return None };
    let mut flat = Vec::new();
    flatten("", &obj, &mut flat);
    let get = |names: &[&str]| find(&flat, names, |_| true);
    let train_loss = flat.iter().find(|(k, _)| is_train_loss(k)).and_then(|(_, v)| v.as_f64());
    if train_loss.is_none() && flat.iter().any(|(k, _)| is_eval_loss(k)) {
        return Some((Format::Jsonl, Hit::Eval));
    }
    let positive = |names: &[&str], whose: fn(&str) -> bool| {
        find(&flat, names, whose).and_then(|(k, v)| Some((k, v.as_f64().filter(|x| x.is_finite() && *x > 0.0)?)))
    };
    let any = |_: &str| true;
    // litgpt's `iter_time` is a micro-batch's, counted by `iter` (its `step` counts optimiser steps)
    let per_iter = positive(PER_ITER, any);
    let counter = if per_iter.is_some_and(|(k, _)| leaf(k).starts_with("iter_time")) { get(&["iter"]).or(get(STEP)) } else { get(STEP) }?;
    let step = counter.1.as_f64().filter(|s| (0.0..=9.0e15).contains(s) && s.fract() == 0.0)?;
    // W&B's row counter: a row of other metrics (a learning-rate monitor's) is kept for its
    // time, to tell which rows one step logged (`wandb_steps`)
    let wandb_row = leaf(counter.0) == "_step";
    // a timestamp times the line whatever else it has: timestamps are differenced before a
    // rate is used (as torchtitan's are)
    let stamp = get(STAMP).and_then(|(_, v)| stamp_of(v));
    // tokens per second of the whole job, else per GPU (a key under `device/` or `gpu/` is per GPU)
    let tokens = positive(TOKENS_PER_S, |k| !per_device(k));
    let tokens_per_gpu = positive(TOKENS_PER_GPU_S, any).or(positive(TOKENS_PER_S, per_device));
    let time = if let Some((k, v)) = per_iter {
        Time::PerIter(ms_of(k, v))
    } else if let Some((_, v)) = positive(STEPS_PER_S, any) {
        Time::PerIter(1e3 / v)
    } else if let Some((ms, res)) = get(CLOCK).and_then(|(_, v)| clock(v)).filter(|&(_, res)| stamp.is_none_or(|s| res <= s.resolution_ms))
    {
        // a clock from the start, unless the timestamp is the finer (W&B's `_runtime` in whole seconds)
        Time::Cumulative { ms, resolution_ms: res }
    } else if let Some((ms, res)) = get(CLOCK_TEXT).and_then(|(_, v)| hms(v)) {
        Time::Cumulative { ms, resolution_ms: res }
    } else if let Some((_, v)) = tokens {
        Time::Throughput { per_s: v, unit: Unit::Tokens }
    } else if let Some((_, v)) = tokens_per_gpu {
        Time::Throughput { per_s: v, unit: Unit::TokensPerGpu }
    } else if let Some((_, v)) = positive(SAMPLES_PER_S, any) {
        Time::Throughput { per_s: v, unit: Unit::Samples }
    } else if stamp.is_some() {
        Time::Timestamp
    } else {
        return wandb_row.then_some((Format::Jsonl, Hit::Info));
    };
    if let Time::PerIter(ms) = time {
        if !MS_RANGE.contains(&ms) {
            return None;
        }
    }
    let mut r = Record::new(step as u64, time);
    r.unitless = per_iter.filter(|(k, _)| unit_of(k).is_none()).map(|(_, v)| v);
    r.stamp = stamp;
    r.loss = train_loss;
    r.log_tok_s = tokens.map(|(_, v)| v);
    r.log_tok_s_per_gpu = tokens_per_gpu.map(|(_, v)| v);
    r.log_mfu = positive(&["mfu"], any).map(|(_, m)| if m > 1.0 { m / 100.0 } else { m });
    r.log_tflops = positive(&["tflops", "tflops_per_gpu"], any).map(|(_, v)| v);
    r.batch = get(&["global_batch_size"]).and_then(|(_, v)| v.as_u64());
    r.wandb_row = wandb_row;
    r.total = get(&["total_steps", "max_steps"]).and_then(|(_, v)| v.as_u64()).filter(|t| *t > 0);
    Some((Format::Jsonl, Hit::Iter(r)))
}

/// A clock since the start in seconds (under 1e9): (ms, resolution ms).
fn clock(v: &Value) -> Option<(f64, f64)> {
    let x = v.as_f64().filter(|x| x.is_finite() && *x >= 0.0 && *x < 1e9)?;
    Some((x * 1e3, resolution_ms(v, 1e3)))
}

/// Rows logged within this many ms of the row before are one logging event (one step's).
const SAME_EVENT_MS: f64 = 5.0;

/// W&B's `_step` counts `wandb.log` calls: a loop that logs twice a step (its loss, then its
/// learning rate) writes two rows a step, and counting by `_step` halves every figure. Rows
/// counted by `_step` alone are renumbered by logging event: a row logged within
/// [`SAME_EVENT_MS`] (or a quarter of the typical time between loss rows, if less) of the row
/// before is the same step's. Only where every such row is timed to a millisecond or finer
/// (`_timestamp`, a float `_runtime`): whole seconds cannot tell one step's rows from the
/// next's, and `_step` stands. Then the rows without a training loss go. A loop that logs
/// once every N steps still counts one step a row: nothing in the rows says N.
pub(super) fn wandb_steps(records: &mut Vec<Record>) {
    let rows: Vec<usize> = (0..records.len()).filter(|&i| records[i].wandb_row).collect();
    if rows.is_empty() {
        return;
    }
    // each row's time, ms: its timestamp, else its clock
    let when = |r: &Record| match (r.stamp, r.time) {
        (Some(s), _) => Some((s.secs * 1e3, s.resolution_ms)),
        (None, Time::Cumulative { ms, resolution_ms }) => Some((ms, resolution_ms)),
        _ => None,
    };
    let times: Option<Vec<f64>> = rows.iter().map(|&i| when(&records[i]).filter(|&(_, res)| res <= 1.0).map(|(ms, _)| ms)).collect();
    if let Some(t) = times {
        let loss_t: Vec<f64> = rows.iter().zip(&t).filter(|(&i, _)| records[i].loss.is_some()).map(|(_, &x)| x).collect();
        let gaps = super::sorted(loss_t.windows(2).map(|w| w[1] - w[0]).filter(|g| *g > 0.0));
        if !gaps.is_empty() {
            let same = SAME_EVENT_MS.min(0.25 * super::percentile(&gaps, 0.5));
            let base = records[rows[0]].iter;
            let mut event = 0;
            for (k, &i) in rows.iter().enumerate() {
                if k > 0 && !(t[k] >= t[k - 1] && t[k] - t[k - 1] <= same) {
                    event += 1;
                }
                records[i].iter = base + event;
            }
        }
    }
    records.retain(|r| !r.wandb_row || r.loss.is_some());
}

/// A clock written as Python's `str(timedelta)`: `5:13:22`, `1 day, 2:03:04`, `3 days, 0:00:09`
/// (LLaMA-Factory writes whole seconds): (ms, resolution ms).
fn hms(v: &Value) -> Option<(f64, f64)> {
    let s = v.as_str()?.trim();
    let (days, rest) = match s.split_once(", ") {
        Some((d, rest)) => (d.strip_suffix(" days").or(d.strip_suffix(" day"))?.parse::<f64>().ok()?, rest),
        None => (0.0, s),
    };
    let parts: Vec<f64> = rest.split(':').map(|x| x.parse::<f64>().ok().filter(|x| x.is_finite() && *x >= 0.0)).collect::<Option<_>>()?;
    let [h, m, sec] = parts[..] else { return None };
    Some(((((days * 24.0 + h) * 60.0 + m) * 60.0 + sec) * 1e3, 1e3))
}

/// `obj`'s scalar members, nested objects' as `outer/inner`, names in lower case.
fn flatten(prefix: &str, obj: &Map<String, Value>, out: &mut Vec<(String, Value)>) {
    for (k, v) in obj {
        let key = if prefix.is_empty() { k.to_ascii_lowercase() } else { format!("{prefix}/{}", k.to_ascii_lowercase()) };
        match v {
            Value::Object(inner) => flatten(&key, inner, out),
            Value::Number(_) | Value::String(_) => out.push((key, v.clone())),
            _ => {}
        }
    }
}

/// The last part of a key: after its last `/` or `.`.
fn leaf(key: &str) -> &str {
    key.rsplit(['/', '.']).next().unwrap_or(key)
}

/// The first of `names` (in their order) that a key is, whole or as its leaf, and that
/// `whose` accepts. A key whose other parts say validation (`val/step_time`) does not count.
fn find<'a>(flat: &'a [(String, Value)], names: &[&str], whose: impl Fn(&str) -> bool) -> Option<(&'a str, &'a Value)> {
    names
        .iter()
        .find_map(|n| flat.iter().find(|(k, _)| (k == n || leaf(k) == *n) && !is_eval_part(k) && whose(k)).map(|(k, v)| (k.as_str(), v)))
}

/// Whether a metric's name (in lower case) says validation (a part `val`, `eval`, `test`,
/// ...): TensorBoard events' evaluation tags are set apart by it.
pub fn is_eval_part(key: &str) -> bool {
    key.split(['/', '.', '_', '-'])
        .any(|p| matches!(p, "val" | "valid" | "validation" | "eval" | "evaluation" | "test" | "dev" | "holdout"))
}

/// A rate under `device/`, `gpu/`, `per_device`... is one GPU's (OLMo's and Composer's
/// `throughput/device/tokens_per_second`).
fn per_device(key: &str) -> bool {
    key.split(['/', '.']).rev().skip(1).any(|p| matches!(p, "device" | "gpu" | "per_device" | "per_gpu"))
}

/// A training loss: a name with a part ending in `loss` (`loss`, `train/loss`, `lm_loss`,
/// `train/CrossEntropyLoss`, torch's `Loss/train`, Composer's `loss/train/total`), not a
/// validation's.
fn is_train_loss(key: &str) -> bool {
    key.split(['/', '.']).any(|p| p.ends_with("loss")) && !is_eval_part(key)
}

/// Whether a metric's name (in lower case) is one a step counter goes by (`global_step`,
/// `trainer/global_step`).
pub fn is_counter(key: &str) -> bool {
    STEP.contains(&leaf(key))
}

fn is_eval_loss(key: &str) -> bool {
    is_eval_part(key) && (key.contains("loss") || key.contains("ppl") || key.contains("perplexity") || key.contains("bpb"))
}

/// Milliseconds per unit of a time key, when its name says (`_ms`, `_s`, NeMo's seconds).
fn unit_of(key: &str) -> Option<f64> {
    if key.ends_with("_ms") {
        Some(1.0)
    } else if key.ends_with("_s") || key.ends_with("_sec") || key.ends_with("_seconds") || leaf(key) == "train_step_timing" {
        Some(1e3)
    } else {
        None
    }
}

/// One iteration's time in ms, in the unit the key's name ends with, else by the generic rule
/// (the whole log's median decides in the end, `settle_units`).
fn ms_of(key: &str, v: f64) -> f64 {
    unit_of(key).map_or_else(|| super::unitless_ms(v, v), |ms_per_unit| v * ms_per_unit)
}

/// The resolution of a clock's number whose unit is `ms_per_unit` ms, in ms (1 us at finest):
/// one unit for a whole number (`12`), a thousandth of one for a number written with a
/// fraction. Not its decimals: writers drop trailing zeros, so a float timestamp
/// `1764982801.5` is as fine as its neighbour `1764982801.749512`.
fn resolution_ms(v: &Value, ms_per_unit: f64) -> f64 {
    let units = if v.is_f64() { 1e-3 } else { 1.0 };
    (units * ms_per_unit).max(1e-3)
}

/// A timestamp: Unix seconds (milliseconds past 1e12, microseconds past 1e15, nanoseconds
/// past 1e17), or a date-time string.
fn stamp_of(v: &Value) -> Option<Stamp> {
    match v {
        Value::Number(_) => {
            let x = v.as_f64()?;
            // (above, units per second): ns, us, ms, s
            let (_, per_s) = [(1e17, 1e9), (1e15, 1e6), (1e12, 1e3), (1e9, 1.0)].into_iter().find(|&(above, _)| x > above)?;
            Some(Stamp { secs: x / per_s, resolution_ms: resolution_ms(v, 1e3 / per_s) })
        }
        Value::String(s) => super::clean(s).1,
        _ => None,
    }
}
