//! fairseq (`fairseq-train`) and metaseq (OPT), whose trainers share their meters.
//!
//! * Since 2020 (v0.10): `2020-07-17 07:11:02 | INFO | train_inner | epoch 001:   2800 / 160368
//!   loss=9.255, ..., wps=57.3, ups=0.04, wpb=1613, bsz=80, num_updates=2800, ..., train_wall=13,
//!   wall=1236` every `--log-interval` updates, or the same stats as a JSON object of strings
//!   (`--log-format json`; metaseq writes only that, after `slurm_procid 0 : `). The meters are
//!   reset after each line, so `wps` (tokens/s, all GPUs) and `wpb` (tokens per update) cover the
//!   interval since the previous line: `wpb / wps` is its seconds per update, exact where `ups`
//!   has two decimals. The first line of a run says `wps=0` (its meter has just started).
//! * Up to 2019 (v0.9): `| epoch 001:    450 / 1891 loss=..., wps=..., num_updates=445, ...,
//!   wall=882, train_wall=756` (or a bare JSON object), without a timestamp or `train_inner`;
//!   its rates are averages since the epoch's start, so the cumulative `wall` clock (seconds) is
//!   differenced instead.
//!
//! The counter is `num_updates`, the optimiser updates of the whole run (`epoch 001: i / n`
//! counts within the epoch). The epoch's summary (`train | epoch 001 | ...`, or JSON keys with
//! `train_`) is no iteration; `valid` lines are evals.

use super::{num, Format, Hit, Record, Time};
use regex::Regex;
use std::sync::LazyLock;

static SIMPLE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\bepoch \d+:\s+\d+ / \d+\s+(.*)$").unwrap());
static FIELD: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\b(\w+)=([^,\s]+)").unwrap());
/// `valid | epoch 001 | valid on 'valid' subset | ...` (v0.10 on), `epoch 001 | valid on 'valid' subset | ...` (v0.9)
static VALID: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^(?:valid(?:_\w+)? \| |epoch \d+ \| valid on ')").unwrap());

/// The stats of a line: `k=v` pairs, or a JSON object's (values are strings or numbers).
fn stats(line: &str) -> Option<Vec<(String, String)>> {
    if let Some(c) = SIMPLE.captures(line) {
        return Some(FIELD.captures_iter(&c[1]).map(|f| (f[1].to_string(), f[2].to_string())).collect());
    }
    let json = &line[line.find("{\"")?..];
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let o = v.as_object()?;
    o.contains_key("num_updates")
        .then(|| o.iter().map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_string))).collect())
}

pub(super) fn fairseq(line: &str) -> Option<(Format, Hit)> {
    if VALID.is_match(line) {
        return Some((Format::Fairseq, Hit::Eval));
    }
    if line.contains("\"train_num_updates\"") {
        return Some((Format::Fairseq, Hit::Info)); // the epoch's summary
    }
    let s = stats(line)?;
    let get = |k: &str| s.iter().find(|(n, _)| n == k).and_then(|(_, v)| num(v));
    let iter = get("num_updates")? as u64;
    // the interval's seconds per update; a line of the old form (no logger: v0.9's text or JSON,
    // whose rates run from the epoch's start): its clock
    let modern = line.contains("train_inner");
    let time = if modern {
        match (get("wpb"), get("wps")) {
            (Some(wpb), Some(wps)) if wps > 0.0 => Time::IntervalAvg(wpb / wps * 1e3),
            _ => return Some((Format::Fairseq, Hit::Info)), // the run's first line: no rate yet
        }
    } else {
        Time::Cumulative { ms: get("wall")? * 1e3, resolution_ms: 1e3 }
    };
    let mut r = Record::new(iter, time);
    r.loss = get("loss");
    r.log_tok_s = get("wps").filter(|_| modern);
    Some((Format::Fairseq, Hit::Iter(r)))
}
