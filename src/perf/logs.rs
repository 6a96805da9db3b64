//! `gptrain logs`: reads someone's training log and says how fast it really went.
//!
//! Recognised iteration lines (anything else is skipped and counted):
//! * nanoGPT: `iter N: loss X, time Yms, mfu Z%` (gptrain's own text lines have this shape);
//! * llm.c CUDA trainer: `step N/M | loss X | ... | Y ms | ... | T tok/s`;
//! * llm.c CPU trainer: `step N: train loss X (took Y ms)`;
//! * gptrain's `metrics.jsonl`: `{"type":"iter","iter":N,"loss":X,"ms":Y,...}`.
//!
//! Rule for steady state (stated in the output): the first iterations are warm-up until the
//! iteration time settles, by the same rule as the live meter ([`super::meter`]); of the rest,
//! iterations slower than `OUTLIER` x their median are dropped as outliers (eval and checkpoint
//! time that nanoGPT counts into the next iteration). Steady ms/iter is the median of what
//! remains, with its 10th and 90th percentiles.

use super::meter::Meter;
use anyhow::{bail, Result};

/// An iteration slower than this many times the median is an outlier.
pub const OUTLIER: f64 = 1.5;
/// nanoGPT's MFU column divides by an A100's bf16 peak whatever the card.
pub const NANOGPT_PEAK: f64 = 312e12;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    NanoGpt,
    LlmcCuda,
    LlmcCpu,
    Gptrain,
}

impl Format {
    /// The format as a person names it.
    pub fn name(self) -> &'static str {
        match self {
            Format::NanoGpt => "nanoGPT",
            Format::LlmcCuda => "llm.c (CUDA trainer)",
            Format::LlmcCpu => "llm.c (CPU trainer)",
            Format::Gptrain => "gptrain metrics.jsonl",
        }
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct IterLine {
    pub iter: u64,
    pub loss: f64,
    pub ms: f64,
    /// The log's own MFU column, as a fraction (nanoGPT's -100% placeholder is None).
    pub log_mfu: Option<f64>,
    /// The log's own tokens/s column (llm.c).
    pub log_tok_s: Option<f64>,
    /// llm.c's `N/M`: the run's total steps.
    pub total: Option<u64>,
}

/// What was read from a log.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Parsed {
    pub format: Format,
    pub iters: Vec<IterLine>,
    pub evals: usize,
    pub skipped_lines: usize,
    /// Lines with nanoGPT's `mfu -100.00%` placeholder.
    pub minus_100: usize,
}

fn num_after<'a>(s: &'a str, key: &str) -> Option<&'a str> {
    let i = s.find(key)? + key.len();
    let rest = s[i..].trim_start();
    let end = rest.find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E'))).unwrap_or(rest.len());
    Some(&rest[..end]).filter(|x| !x.is_empty())
}

fn parse_nanogpt(line: &str) -> Option<(IterLine, bool)> {
    let rest = line.trim().strip_prefix("iter ")?;
    let (n, rest) = rest.split_once(':')?;
    let iter = n.trim().parse().ok()?;
    let loss = num_after(rest, "loss")?.parse().ok()?;
    let ms = num_after(rest, "time")?.parse().ok()?;
    let mfu: Option<f64> = num_after(rest, "mfu").and_then(|x| x.parse().ok());
    let placeholder = mfu.is_some_and(|m| m <= -99.99);
    Some((IterLine { iter, loss, ms, log_mfu: mfu.filter(|_| !placeholder).map(|m| m / 100.0), log_tok_s: None, total: None }, placeholder))
}

fn parse_llmc_cuda(line: &str) -> Option<IterLine> {
    let rest = line.trim().strip_prefix("step")?;
    let fields: Vec<&str> = rest.split('|').map(str::trim).collect();
    if fields.len() < 3 {
        return None;
    }
    let (n, total) = fields[0].split_once('/')?;
    let iter = n.trim().parse().ok()?;
    let total = total.trim().parse().ok();
    let loss = fields.iter().find_map(|f| num_after(f, "loss"))?.parse().ok()?;
    let ms = fields.iter().find_map(|f| f.strip_suffix("ms").and_then(|x| x.trim().parse().ok()))?;
    let log_tok_s = fields.iter().find_map(|f| f.strip_suffix("tok/s").and_then(|x| x.trim().parse().ok()));
    let log_mfu =
        fields.iter().find_map(|f| f.contains("MFU").then(|| f.split('%').next()?.trim().parse::<f64>().ok()).flatten()).map(|m| m / 100.0);
    Some(IterLine { iter, loss, ms, log_mfu, log_tok_s, total })
}

/// llm.c's CPU trainer (`step N: train loss X (took Y ms)`) and its older CUDA trainer
/// (`step N/M: train loss X (Y ms, T tok/s)`).
fn parse_llmc_cpu(line: &str) -> Option<IterLine> {
    let rest = line.trim().strip_prefix("step ")?;
    let (n, rest) = rest.split_once(':')?;
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
    let log_tok_s = paren
        .split(',')
        .nth(1)
        .and_then(|f| f.trim().strip_suffix("tok/s)").or_else(|| f.trim().strip_suffix("tok/s")))
        .and_then(|x| x.trim().parse().ok());
    Some(IterLine { iter, loss, ms, log_mfu: None, log_tok_s, total })
}

fn parse_jsonl(line: &str) -> Option<IterLine> {
    let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
    if v["type"] != "iter" {
        return None;
    }
    Some(IterLine {
        iter: v["iter"].as_u64()?,
        loss: v["loss"].as_f64()?,
        ms: v["ms"].as_f64()?,
        log_mfu: v["mfu"].as_f64(),
        log_tok_s: None,
        total: None,
    })
}

fn is_eval(line: &str) -> bool {
    let l = line.trim();
    (l.starts_with("step ") && l.contains("val loss")) || l.contains("\"type\":\"eval\"") || l.starts_with("val loss")
}

/// Parses a log. A log with no recognisable iteration line is an error.
pub fn parse(text: &str) -> Result<Parsed> {
    let mut iters = Vec::new();
    let (mut evals, mut skipped, mut minus_100) = (0, 0, 0);
    let mut format = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if is_eval(line) {
            evals += 1;
            continue;
        }
        let got = if let Some((l, ph)) = parse_nanogpt(line) {
            minus_100 += usize::from(ph);
            Some((l, if line.contains(", norm ") { Format::Gptrain } else { Format::NanoGpt }))
        } else if let Some(l) = parse_llmc_cuda(line) {
            Some((l, Format::LlmcCuda))
        } else if let Some(l) = parse_llmc_cpu(line) {
            Some((l, Format::LlmcCpu))
        } else {
            parse_jsonl(line).map(|l| (l, Format::Gptrain))
        };
        match got {
            Some((l, f)) => {
                format.get_or_insert(f);
                iters.push(l);
            }
            None => skipped += 1,
        }
    }
    let Some(format) = format else {
        bail!("no training iteration line recognised in {} lines (expected nanoGPT `iter N: loss X, time Yms`, llm.c `step N/M | loss X | ... ms` or `step N: train loss X (took Y ms)`, or gptrain's metrics.jsonl)", skipped + evals);
    };
    Ok(Parsed { format, iters, evals, skipped_lines: skipped, minus_100 })
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
    pub iters_seen: usize,
    pub warmup_dropped: usize,
    pub outliers_dropped: usize,
    pub iters_dropped: usize,
    /// False when the log ended before iteration times settled (then only the first
    /// iteration counts as warm-up).
    pub warmup_settled: bool,
    pub steady_ms_per_iter: f64,
    pub p10_ms: f64,
    pub p90_ms: f64,
    pub last_iter: u64,
    /// Median of the log's own MFU column over steady iterations, if it has one.
    pub log_mfu: Option<f64>,
    pub log_tok_s: Option<f64>,
    pub total_from_log: Option<u64>,
}

pub fn steady(p: &Parsed) -> Steady {
    // warm-up: the live meter's rule, fed the log's times in order
    let mut meter = Meter::new(1.0, 1.0, None);
    let mut warm = 0;
    for l in &p.iters {
        if !meter.is_warm() && meter.record_iter(l.ms) {
            warm += 1;
        } else {
            break;
        }
    }
    // the iteration that settles the meter is the first steady one (as in the live log);
    // a log too short to settle keeps all but the first MIN_WARMUP iterations
    let settled = meter.is_warm();
    let warm = if settled { warm.min(meter.warmup_iters()) } else { super::meter::MIN_WARMUP.min(p.iters.len().saturating_sub(1)) };
    let rest: Vec<&IterLine> = p.iters[warm..].iter().collect();
    let mut times: Vec<f64> = rest.iter().map(|l| l.ms).collect();
    times.sort_by(|a, b| a.total_cmp(b));
    let med = percentile(&times, 0.5);
    let kept: Vec<&&IterLine> = rest.iter().filter(|l| l.ms <= OUTLIER * med).collect();
    let mut kt: Vec<f64> = kept.iter().map(|l| l.ms).collect();
    kt.sort_by(|a, b| a.total_cmp(b));
    let median_of = |xs: Vec<f64>| -> Option<f64> {
        let mut xs = xs;
        xs.sort_by(|a, b| a.total_cmp(b));
        (!xs.is_empty()).then(|| percentile(&xs, 0.5))
    };
    Steady {
        iters_seen: p.iters.len(),
        warmup_dropped: warm,
        outliers_dropped: rest.len() - kept.len(),
        iters_dropped: p.iters.len() - kept.len(),
        warmup_settled: settled,
        steady_ms_per_iter: percentile(&kt, 0.5),
        p10_ms: percentile(&kt, 0.1),
        p90_ms: percentile(&kt, 0.9),
        last_iter: p.iters.last().map_or(0, |l| l.iter),
        log_mfu: median_of(kept.iter().filter_map(|l| l.log_mfu).collect()),
        log_tok_s: median_of(kept.iter().filter_map(|l| l.log_tok_s).collect()),
        total_from_log: p.iters.iter().find_map(|l| l.total),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NANOGPT: &str = "Overriding config with config/train_shakespeare_char.py:
tokens per iteration will be: 16,384
number of parameters: 10.65M
step 0: train loss 4.2874, val loss 4.2823
iter 0: loss 4.2654, time 29681.23ms, mfu -100.00%
iter 10: loss 3.2425, time 102.37ms, mfu -100.00%
iter 20: loss 2.7945, time 101.89ms, mfu 3.65%
iter 30: loss 2.6115, time 103.02ms, mfu 3.65%
iter 40: loss 2.5349, time 102.51ms, mfu 3.65%
iter 50: loss 2.5123, time 102.10ms, mfu 3.66%
step 60: train loss 2.4, val loss 2.4
iter 60: loss 2.4895, time 2050.00ms, mfu 3.30%
iter 70: loss 2.4701, time 101.70ms, mfu 3.31%
";

    #[test]
    fn nanogpt_log_steady_state_drops_warmup_and_eval_spike() {
        let p = parse(NANOGPT).unwrap();
        assert_eq!(p.format, Format::NanoGpt);
        assert_eq!((p.iters.len(), p.evals, p.minus_100, p.skipped_lines), (8, 2, 2, 3));
        let s = steady(&p);
        // iterations 0, 10 and 20 are warm-up: 30 settles the meter (10, 20, 30 agree)
        assert_eq!(s.warmup_dropped, 3);
        assert_eq!(s.outliers_dropped, 1);
        // hand computation: median of 103.02, 102.51, 102.10, 101.70
        assert!((s.steady_ms_per_iter - (102.10 + 102.51) / 2.0).abs() < 1e-9, "{}", s.steady_ms_per_iter);
    }

    #[test]
    fn a_short_unsettled_log_still_has_a_steady_figure() {
        let p = parse("iter 0: loss 4, time 500ms, mfu -100.00%\niter 1: loss 4, time 100ms, mfu -100.00%\niter 2: loss 4, time 150ms, mfu -100.00%\n").unwrap();
        let s = steady(&p);
        assert!(!s.warmup_settled);
        assert_eq!(s.warmup_dropped, 1);
        assert!((s.steady_ms_per_iter - 125.0).abs() < 1e-9, "{}", s.steady_ms_per_iter);
    }

    #[test]
    fn llmc_logs_parse() {
        let cuda = "step    1/74 | loss 7.577 (+nanz)| norm 1.7 (+nanz)| lr 6.00e-04 | 68.60 ms | 51.4% bf16 MFU | 203213 tok/s\nstep    2/74 | loss 7.1 | norm 1.2 | lr 6.00e-04 | 60.00 ms | 52.0% bf16 MFU | 210000 tok/s\n";
        let p = parse(cuda).unwrap();
        assert_eq!(p.format, Format::LlmcCuda);
        assert_eq!(p.iters[0].total, Some(74));
        assert!((p.iters[1].ms - 60.0).abs() < 1e-9 && (p.iters[1].log_mfu.unwrap() - 0.52).abs() < 1e-9);
        let cpu = "train dataset num_batches: 1192\nstep 0: train loss 5.356082 (took 1452.121 ms)\nstep 1: train loss 4.300639 (took 1398.32 ms)\n";
        let p = parse(cpu).unwrap();
        assert_eq!(p.format, Format::LlmcCpu);
        assert_eq!(p.iters.len(), 2);
        let old_cuda = "step    1/37: train loss 4.406481 (80.952 ms, 6324 tok/s)\nstep    2/37: train loss 4.1 (60.5 ms, 8400 tok/s)\n";
        let p = parse(old_cuda).unwrap();
        assert_eq!((p.iters.len(), p.iters[1].total, p.iters[1].log_tok_s), (2, Some(37), Some(8400.0)));
        assert!((p.iters[0].ms - 80.952).abs() < 1e-9);
    }

    #[test]
    fn a_log_without_iterations_is_an_error() {
        assert!(parse("hello\nworld\n").unwrap_err().to_string().contains("no training iteration line"));
        assert!(parse("").is_err());
    }
}
