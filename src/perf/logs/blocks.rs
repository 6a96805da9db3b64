//! Trainers that print one step as a block of lines: a header, then one metric a line.
//! [`join`] makes each block one line (`header | name: value | name=value ...`) before the
//! lines are read, so their readers see a step at a time.
//!
//! * MosaicML Composer (llm-foundry): `[batch=10/4800]:` (or `[epoch=1][batch=5/5]:`,
//!   `[token=N/M]:`), then `\t Train name: value` lines; before v0.12 each metric was a line of
//!   its own behind the same header (`[epoch=0][batch=16/625]: Train loss/...: 9.12`). Its
//!   throughput is a rolling average over the last `window_size` batches (SpeedMonitor): the
//!   batch's time is the samples per batch (`time/sample` over `time/batch`) over
//!   `throughput/samples_per_sec` (four decimals), else one over `batches_per_sec`.
//! * OLMo: `[step=N/M,epoch=E]` (or `[step=N/M]`), then `    name=value` lines (numbers over
//!   1000 with thousands commas). `throughput/device/batches_per_second` is over its speed
//!   monitor's window (one step in most of its configs); the first step, and the first after a
//!   checkpoint or an eval, has none. OLMo-core adds `,eta=...` to the header; its
//!   `throughput/device/BPS` is the last step's alone.

use super::{num, Format, Hit, Record, Time};
use regex::Regex;
use std::borrow::Cow;
use std::sync::LazyLock;

/// A Composer header: `[epoch=E][batch=B/L]:`, `[batch=N/M]:`, `[token=N/M]:`, ...
static COMPOSER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\s*((?:\[epoch=\d+\])?\[(batch|token|sample|iteration)=(\d+)(?:/(\d+))?\]):(.*)$").unwrap());
/// An OLMo header: `[step=N/M]`, `[step=N/M,epoch=E]`, `[step=N/M,epoch=E,eta=4h58m]`.
static OLMO: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\[step=(\d+)/(\d+|\?\?\?)(?:,epoch=\d+)?(?:,eta=[^\]]*)?\]\s*$").unwrap());
/// A metric line under a Composer header: indented `Train name: value` (or `Eval`).
static COMPOSER_METRIC: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^[ \t]+(?:Train|Eval) \S[^:]*: \S").unwrap());
/// A metric line under an OLMo header: indented `name=value`.
static OLMO_METRIC: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^[ \t]+\S[^=]*=\S").unwrap());
/// A launcher's rank label at a line's start ([`super::RANK_LABEL`], as `clean` strips it), without
/// the spaces after it (the indentation of a metric line).
static LABEL: LazyLock<Regex> = LazyLock::new(|| Regex::new(super::RANK_LABEL).unwrap());
/// Composer's namespaced metrics (`loss/train/total: 9.1`): what tells its lines from look-alikes.
static COMPOSER_NAME: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?:^|\| |\]: )(?:Train |Eval )?\w+/[\w/.-]+: ").unwrap());
/// OLMo's namespaced metrics (`train/CrossEntropyLoss=7.5`).
static OLMO_NAME: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\| \w+/[^=|]+=").unwrap());

#[derive(PartialEq)]
enum Open {
    /// A Composer block, by its header (the old form repeats it on every metric's line).
    Composer(String),
    Olmo,
}

/// A line as the block readers match it: without colours and a launcher's rank label.
fn probe(line: &str) -> Cow<'_, str> {
    let line: Cow<str> =
        if line.contains('\x1b') { Cow::Owned(super::ANSI.replace_all(line, "").into_owned()) } else { Cow::Borrowed(line) };
    match LABEL.find(&line) {
        Some(m) => Cow::Owned(line[m.end()..].to_string()),
        None => line,
    }
}

/// `text` with each block's metric lines appended to its header's line, joined by ` | `; the
/// text itself when it has no block.
pub fn join(text: &str) -> Cow<'_, str> {
    if !(text.contains("[batch=") || text.contains("[step=") || text.contains("[token=") || text.contains("[sample=")) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut open: Option<Open> = None;
    for raw in text.split('\n') {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let p = probe(line);
        // a header first (behind a rank label, a header line is indented too)
        let header = COMPOSER.is_match(&p) || OLMO.is_match(&p);
        let metric = match open {
            Some(Open::Composer(_)) => COMPOSER_METRIC.is_match(&p),
            Some(Open::Olmo) => OLMO_METRIC.is_match(&p),
            None => false,
        };
        if metric && !header && !line.contains('\r') {
            out.push_str(" | ");
            out.push_str(p.trim());
            continue;
        }
        if let Some(c) = COMPOSER.captures(&p) {
            let rest = c[5].trim();
            if !rest.is_empty() && open == Some(Open::Composer(c[1].to_string())) {
                out.push_str(" | ");
                out.push_str(rest);
                continue;
            }
            open = Some(Open::Composer(c[1].to_string()));
        } else if OLMO.is_match(&p) {
            open = Some(Open::Olmo);
        } else {
            open = None;
        }
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(line);
    }
    Cow::Owned(out)
}

/// `name: value` (Composer) or `name=value` (OLMo) of a joined line, by the metric's name.
fn metric(line: &str, name: &str) -> Option<f64> {
    line.split(" | ").find_map(|m| {
        // the header's own metric (Composer's one-line form: `[batch=16/625]: Train loss...: 9.1`)
        let m = if m.starts_with('[') { m.split_once("]: ").map_or(m, |x| x.1) } else { m };
        let m = m.trim().strip_prefix("Train ").unwrap_or(m.trim());
        let v = m.strip_prefix(name)?.strip_prefix(": ").or_else(|| m.strip_prefix(name)?.strip_prefix('='))?;
        num(v.trim())
    })
}

pub(super) fn composer(line: &str) -> Option<(Format, Hit)> {
    if line.starts_with("Eval on ") {
        return Some((Format::Composer, Hit::Eval)); // `[Eval batch=k/N] Eval on eval data`, its tag gone
    }
    let c = COMPOSER.captures(line)?;
    if !COMPOSER_NAME.is_match(line) {
        return None; // another trainer's `[batch=3/100]: loss=2.3, ...`
    }
    let (unit, n, of) = (&c[2], c[3].parse::<u64>().ok()?, c.get(4).and_then(|m| m.as_str().parse::<u64>().ok()));
    let batches = metric(line, "time/batch");
    // per batch, from the run's totals so far: samples, tokens
    let per_batch = |what: &str| metric(line, what).zip(batches).filter(|(_, b)| *b > 0.0).map(|(x, b)| x / b);
    // the first window's batches have no throughput yet: a step, untimed (so the log is seen
    // to start at its run's start)
    let time = match (per_batch("time/sample"), metric(line, "throughput/samples_per_sec")) {
        (Some(spb), Some(sps)) if sps > 0.0 => Time::Window(spb / sps * 1e3),
        _ => match metric(line, "throughput/batches_per_sec") {
            Some(bps) if bps > 0.0 => Time::Window(1e3 / bps),
            _ => Time::Timestamp,
        },
    };
    // the counter in batches: the header's, else the batches so far (logged before the count moves)
    let (iter, total) = match (unit, c[1].starts_with("[epoch=")) {
        ("batch", false) => (n, of),
        _ => {
            let per = match unit {
                "token" => per_batch("time/token"),
                "sample" => per_batch("time/sample"),
                _ => None,
            };
            ((batches? as u64).saturating_add(1), of.zip(per).filter(|(_, p)| *p > 0.0).map(|(m, p)| (m as f64 / p).round() as u64))
        }
    };
    let mut r = Record::new(iter, time);
    r.total = total;
    r.loss = metric(line, "loss/train/total");
    r.log_tok_s = metric(line, "throughput/tokens_per_sec");
    r.log_tok_s_per_gpu = metric(line, "throughput/device/tokens_per_sec");
    r.log_mfu = metric(line, "throughput/device/mfu");
    Some((Format::Composer, Hit::Iter(r)))
}

pub(super) fn olmo(line: &str) -> Option<(Format, Hit)> {
    if line.contains("olmo.train") && line.contains("Running evaluation for '") {
        return Some((Format::Olmo, Hit::Eval));
    }
    let head = line.split(" | ").next()?;
    let c = OLMO.captures(head)?;
    if !(head.contains(",epoch=") || OLMO_NAME.is_match(line)) {
        return None; // another trainer's `[step=5/100]`
    }
    let time = if let Some(bps) = metric(line, "throughput/device/BPS").filter(|b| *b > 0.0) {
        Time::PerIter(1e3 / bps) // OLMo-core: the last step's
    } else if let Some(bps) = metric(line, "throughput/device/batches_per_second").filter(|b| *b > 0.0) {
        Time::Window(1e3 / bps)
    } else {
        Time::Timestamp // the first step (no throughput yet), a bare progress line: timed by its stamp
    };
    let mut r = Record::new(c[1].parse().ok()?, time);
    r.total = c[2].parse().ok();
    r.loss = metric(line, "train/CrossEntropyLoss").or_else(|| metric(line, "train/CE loss"));
    r.log_tok_s_per_gpu = metric(line, "throughput/device/tokens_per_second").or_else(|| metric(line, "throughput/device/TPS"));
    r.log_mfu = metric(line, "throughput/device/MFU").map(|m| m / 100.0);
    Some((Format::Olmo, Hit::Iter(r)))
}
