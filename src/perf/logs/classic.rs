//! nanoGPT, llm.c and gptrain: each line is one iteration's time.
//! * nanoGPT: `iter N: loss X, time Yms, mfu Z%` (gptrain's own text lines have this shape,
//!   with `, norm`); llama2.c's `train.py` is nanoGPT's loop (the same counter, the last
//!   iteration's time, MFU against an A100's 312 TFLOP/s, -100% until the 5th iteration) and
//!   prints `N | loss X | lr L | Yms | mfu Z%`: read as nanoGPT's;
//! * llm.c CUDA trainer: `step N/M | loss X | ... | Y ms | Z% bf16 MFU | T tok/s` (`-100.0%` when
//!   it does not know the GPU: no MFU);
//! * llm.c CPU trainer: `step N: train loss X (took Y ms)`, and its older CUDA trainer's
//!   `step N/M: train loss X (Y ms, T tok/s)`;
//! * gptrain's `metrics.jsonl`: `{"type":"iter","iter":N,"loss":X,"ms":Y,...}`.

use super::{Format, Hit, Record, Time};

pub(super) fn num_after<'a>(s: &'a str, key: &str) -> Option<&'a str> {
    let i = s.find(key)? + key.len();
    let rest = s[i..].trim_start();
    let end = rest.find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E'))).unwrap_or(rest.len());
    Some(&rest[..end]).filter(|x| !x.is_empty())
}

pub(super) fn nanogpt(line: &str) -> Option<(Format, Hit)> {
    if let Some(hit) = llama2c(line) {
        return Some(hit);
    }
    let rest = line.strip_prefix("iter ")?;
    let (n, rest) = rest.split_once(':')?;
    let iter = n.trim().parse().ok()?;
    let loss = num_after(rest, "loss")?.parse().ok()?;
    let ms = num_after(rest, "time")?.parse().ok()?;
    let mfu: Option<f64> = num_after(rest, "mfu").and_then(|x| x.parse().ok());
    let placeholder = mfu.is_some_and(|m| m <= -99.99);
    let mut r = Record::new(iter, Time::PerIter(ms));
    r.loss = Some(loss);
    r.log_mfu = mfu.filter(|_| !placeholder).map(|m| m / 100.0);
    r.minus_100 = placeholder;
    let f = if rest.contains(", norm ") { Format::Gptrain } else { Format::NanoGpt };
    Some((f, Hit::Iter(r)))
}

/// llama2.c: `490 | loss 5.7543 | lr 4.900000e-05 | 8060.78ms | mfu 0.21%` (forks drop the mfu
/// or add `| 1.2GB memory`).
fn llama2c(line: &str) -> Option<(Format, Hit)> {
    let f: Vec<&str> = line.split(" | ").map(str::trim).collect();
    if f.len() < 4 || !f[1].starts_with("loss ") || !f[2].starts_with("lr ") {
        return None;
    }
    let ms: f64 = f[3].strip_suffix("ms")?.parse().ok()?;
    let mfu: Option<f64> = f.get(4).and_then(|m| m.strip_prefix("mfu ")?.strip_suffix('%')?.parse().ok());
    let mut r = Record::new(f[0].parse().ok()?, Time::PerIter(ms));
    r.loss = f[1][5..].parse().ok();
    r.minus_100 = mfu.is_some_and(|m| m <= -99.99);
    r.log_mfu = mfu.filter(|_| !r.minus_100).map(|m| m / 100.0);
    Some((Format::NanoGpt, Hit::Iter(r)))
}

pub(super) fn llmc_cuda(line: &str) -> Option<(Format, Hit)> {
    if (line.starts_with("step ") && line.contains("val loss")) || line.starts_with("val loss") {
        return Some((Format::LlmcCuda, Hit::Eval));
    }
    let rest = line.strip_prefix("step")?;
    let fields: Vec<&str> = rest.split('|').map(str::trim).collect();
    if fields.len() < 3 {
        return None;
    }
    let (n, total) = fields[0].split_once('/')?;
    let iter = n.trim().parse().ok()?;
    let loss = fields.iter().find_map(|f| num_after(f, "loss"))?.parse().ok()?;
    let ms = fields.iter().find_map(|f| f.strip_suffix("ms").and_then(|x| x.trim().parse().ok()))?;
    let mut r = Record::new(iter, Time::PerIter(ms));
    r.loss = Some(loss);
    r.total = total.trim().parse().ok();
    r.log_tok_s = fields.iter().find_map(|f| f.strip_suffix("tok/s").and_then(|x| x.trim().parse().ok()));
    // llm.c prints -100% when it does not know the GPU's peak: no measurement
    r.log_mfu = fields
        .iter()
        .find_map(|f| f.contains("MFU").then(|| f.split('%').next()?.trim().parse::<f64>().ok()).flatten())
        .filter(|m| *m > 0.0)
        .map(|m| m / 100.0);
    Some((Format::LlmcCuda, Hit::Iter(r)))
}

pub(super) fn llmc_cpu(line: &str) -> Option<(Format, Hit)> {
    let rest = line.strip_prefix("step ")?;
    let (n, rest) = rest.split_once(':')?;
    if rest.contains("val loss") {
        return Some((Format::LlmcCpu, Hit::Eval));
    }
    let (iter, total) = match n.split_once('/') {
        Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()),
        None => (n.trim().parse().ok()?, None),
    };
    let loss = num_after(rest, "train loss")?.parse().ok()?;
    let paren = &rest[rest.find('(')?..];
    let ms = num_after(paren, "(took").or_else(|| num_after(paren, "("))?.parse().ok()?;
    if !paren.contains("ms") {
        return None;
    }
    let mut r = Record::new(iter, Time::PerIter(ms));
    r.loss = Some(loss);
    r.total = total;
    r.log_tok_s = paren
        .split(',')
        .nth(1)
        .and_then(|f| f.trim().strip_suffix("tok/s)").or_else(|| f.trim().strip_suffix("tok/s")))
        .and_then(|x| x.trim().parse().ok());
    Some((Format::LlmcCpu, Hit::Iter(r)))
}

pub(super) fn gptrain_jsonl(line: &str) -> Option<(Format, Hit)> {
    if !line.starts_with('{') || !line.contains("\"type\"") {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    match v["type"].as_str()? {
        "iter" => {
            let mut r = Record::new(v["iter"].as_u64()?, Time::PerIter(v["ms"].as_f64()?));
            r.loss = v["loss"].as_f64();
            r.log_mfu = v["mfu"].as_f64();
            r.log_tok_s = v["tokens_per_sec"].as_f64();
            Some((Format::Gptrain, Hit::Iter(r)))
        }
        "eval" => Some((Format::Gptrain, Hit::Eval)),
        "start" => Some((Format::Gptrain, Hit::Start)),
        "checkpoint" | "summary" => Some((Format::Gptrain, Hit::Info)),
        _ => None, // another loop's `"type"` (the JSON-lines reader's)
    }
}

/// gptrain's `metrics.jsonl` states its run in its first record (`"type":"start"`): tokens and
/// FLOPs per iteration, `max_iters`, the peak it measured MFU against, and the whole config.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct GptrainStart {
    pub tokens_per_iter: Option<f64>,
    pub flops_per_iter: Option<f64>,
    pub max_iters: Option<u64>,
    pub peak_flops: Option<f64>,
}

/// The last `start` record of a gptrain metrics.jsonl (a resumed run appends another).
pub fn gptrain_start(text: &str) -> Option<GptrainStart> {
    text.lines()
        .rev()
        .filter(|l| l.starts_with('{') && l.contains("\"start\""))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["type"] == "start")
        .map(|v| GptrainStart {
            tokens_per_iter: v["tokens_per_iter"].as_f64(),
            flops_per_iter: v["flops_per_iter"].as_f64(),
            max_iters: v["max_iters"].as_u64(),
            peak_flops: v["peak_flops"].as_f64(),
        })
}
