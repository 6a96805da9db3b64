//! The fallback: any line with an iteration counter (`iter N`, `step N/M`, `iteration: N`,
//! `global_step=N`, `Batch [N/M]`) and
//! one of: a per-iteration time (`dt: 989ms`, `iter time 0.41s`, `seconds: 2.167`, verl's
//! `timing_s/step:96.551`, NeMo 2's `train_step_timing in s: 0.0315` (its line also holds the
//! last `val_loss`: it stays a training line),
//! `time (ms): 350`), a rate (`3.1it/s`, `2.54s/it`, `1.2 s/step`, `17.053 sec/step`, `tok/sec: 529,882`, `12.5 samples/s`;
//! per GPU: `tokens/gpu/sec: 9,400`, `Tokens/s/device: 36,650`), or only the line's timestamp. Times without a unit are seconds when their median over the log
//! is below 50, else milliseconds.
//! `total time` and `data time` are not an iteration's time, nor is the `sec` of a rate's unit.

use super::{num, Format, Hit, Record, Time, Unit};
use regex::Regex;
use std::sync::LazyLock;

static COUNTER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(?:global[_ ]?)?(?:iter(?:ation)?|step|update|batch)s?\b\s*[:=#\[]?\s*(\d+)(?:\s*(?:/|of)\s*(\d+))?").unwrap()
});
static TIME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(dt|timing_s/step|train_step_timing(?: in s)?|iter(?:ation)?[_ ]?time|step[_ ]?time|time[_ /]per[_ ](?:iter(?:ation)?|step)|time|elapsed|seconds|sec|duration|took|latency)\b\s*(?:\((ms|s|sec)\))?\s*[:=]?\s*([\d.]+)\s*(ms|s|sec|seconds)?\b").unwrap()
});
static RATE_AFTER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)([\d,]*\.?\d+)\s*(ms/(?:it|iter|step)|s/(?:it|iter|step)|sec/(?:it|iter|step)|it/s|steps/s|tok/s|tokens/s|tok/sec|tokens/sec|tokens per second|samples/s|samples/sec|samples per second)\b",
    )
    .unwrap()
});
static RATE_BEFORE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(tok(?:ens)?/(?:gpu|device)/s(?:ec)?|tok(?:ens)?/s(?:ec)?/(?:gpu|device)|tokens_per_sec(?:ond)?_per_(?:gpu|device)|s/it|it/s|tok/s|tokens/s|tok/sec|tokens/sec|tokens_per_sec(?:ond)?|tps|samples/s|samples/sec|samples_per_sec(?:ond)?)\s*[:=]\s*([\d,]*\.?\d+)").unwrap()
});
static LOSS: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?i)\b(?:train[_ ])?loss\s*[:=]?\s*([-\d.Ee+]+)").unwrap());
static MFU: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?i)\bmfu\s*[:=]?\s*([\d.]+)\s*(%)?").unwrap());
static TFLOPS: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?i)\bTFLOP/?s(?:/GPU)?\s*[:=]\s*([\d.]+)").unwrap());

/// One iteration's time in ms, and the number when it came without a unit.
fn per_iter_ms(line: &str) -> Option<(f64, Option<f64>)> {
    for c in TIME.captures_iter(line) {
        let start = c.get(0).unwrap().start();
        let before = line[..start].to_ascii_lowercase();
        let key = c[1].to_ascii_lowercase();
        // `total time`, `data time`; the `sec` of `tokens/gpu/sec:` is a rate's unit
        if before.ends_with("total ")
            || before.ends_with("total_")
            || before.ends_with("data ")
            || before.ends_with("eval ")
            || (before.ends_with('/') && key.starts_with("sec"))
        {
            continue;
        }
        let v = num(&c[3])?;
        let unit = c.get(2).or(c.get(4)).map(|m| m.as_str().to_ascii_lowercase());
        let ms = match unit.as_deref() {
            Some("ms") => (v, None),
            Some(_) => (v * 1e3, None),
            None if key.starts_with("sec") || key.starts_with("timing_s") || key.starts_with("train_step_timing") => (v * 1e3, None),
            None => (super::unitless_ms(v, v), Some(v)),
        };
        return Some(ms);
    }
    None
}

fn rate(line: &str) -> Option<Time> {
    let (v, unit) = if let Some(c) = RATE_AFTER.captures(line) {
        (num(&c[1])?, c[2].to_ascii_lowercase())
    } else {
        let c = RATE_BEFORE.captures(line)?;
        (num(&c[2])?, c[1].to_ascii_lowercase())
    };
    if v <= 0.0 {
        return None;
    }
    Some(match unit.as_str() {
        u if u.starts_with("ms/") => Time::PerIter(v),
        u if u.starts_with("s/") || u.starts_with("sec/") => Time::PerIter(v * 1e3),
        "it/s" | "steps/s" => Time::PerIter(1e3 / v),
        u if u.starts_with("sample") => Time::Throughput { per_s: v, unit: Unit::Samples },
        u if u.ends_with("gpu") || u.ends_with("device") || u.contains("/gpu/") || u.contains("/device/") => {
            Time::Throughput { per_s: v, unit: Unit::TokensPerGpu }
        }
        _ => Time::Throughput { per_s: v, unit: Unit::Tokens },
    })
}

static EVAL: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?i)\bval(?:idation)?[_ ]?(?:loss|bpb|ppl)").unwrap());

pub(super) fn line(line: &str) -> Option<(Format, Hit)> {
    // NeMo 2's training line carries the last validation's `val_loss` beside its step time
    if EVAL.is_match(line) && !line.contains("train_step_timing") {
        return Some((Format::Generic, Hit::Eval));
    }
    let c = COUNTER.captures(line)?;
    let iter = c[1].parse().ok()?;
    let per_iter = per_iter_ms(line);
    let time = per_iter.map(|(ms, _)| Time::PerIter(ms)).or_else(|| rate(line)).unwrap_or(Time::Timestamp);
    let mut r = Record::new(iter, time);
    r.unitless = per_iter.and_then(|(_, raw)| raw);
    r.total = c.get(2).and_then(|m| m.as_str().parse().ok());
    r.loss = LOSS.captures(line).and_then(|c| num(&c[1]));
    r.log_mfu = MFU.captures(line).and_then(|c| num(&c[1]).map(|m| if c.get(2).is_some() || m > 1.0 { m / 100.0 } else { m }));
    r.log_tflops = TFLOPS.captures(line).and_then(|c| num(&c[1]));
    match rate(line) {
        Some(Time::Throughput { per_s, unit: Unit::Tokens }) => r.log_tok_s = Some(per_s),
        Some(Time::Throughput { per_s, unit: Unit::TokensPerGpu }) => r.log_tok_s_per_gpu = Some(per_s),
        _ => {}
    }
    Some((Format::Generic, Hit::Iter(r)))
}
