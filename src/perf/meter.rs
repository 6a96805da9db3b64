//! The live meter: names warm-up iterations, keeps them out of throughput and MFU, and predicts
//! the time left from steady iterations plus the evals and checkpoints still to come.

/// Iterations always counted as warm-up at the start of a run (allocations, page faults, caches).
pub const MIN_WARMUP: usize = 1;
/// Warm-up ends when the last `SETTLE_WINDOW` iteration times are all within `SETTLE_TOL` of
/// their median, or after `MAX_WARMUP` iterations whatever happens. The iteration that ends it
/// is the first steady one; every iteration before it was reported as warm-up when it happened,
/// so it stays warm-up (the live log, metrics.jsonl and the summary count the same iterations).
pub const SETTLE_WINDOW: usize = 3;
pub const SETTLE_TOL: f64 = 0.10;
pub const MAX_WARMUP: usize = 10;
/// Steady ms/iter is the median of the last this many steady iterations.
pub const STEADY_WINDOW: usize = 100;

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// What the meter says after an iteration.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Reading {
    pub warmup: bool,
    /// Median ms of the recent steady iterations (None during warm-up).
    pub steady_ms: Option<f64>,
    pub tokens_per_sec: Option<f64>,
    /// Model FLOPs utilisation against the device's peak (None during warm-up or without a peak).
    pub mfu: Option<f64>,
    /// Seconds left: iterations x steady ms + evals and checkpoints to come.
    pub eta_s: Option<f64>,
}

/// Tracks iteration times of one run.
pub struct Meter {
    tokens_per_iter: f64,
    flops_per_iter: f64,
    peak_flops: Option<f64>,
    warmup_times: Vec<f64>,
    steady_times: Vec<f64>,
    warm: bool,
    eval_times: Vec<f64>,
    ckpt_times: Vec<f64>,
    /// Time spent per phase, seconds: warm-up, training, eval, checkpoint.
    pub phase_s: [f64; 4],
}

impl Meter {
    pub fn new(tokens_per_iter: f64, flops_per_iter: f64, peak_flops: Option<f64>) -> Self {
        Meter {
            tokens_per_iter,
            flops_per_iter,
            peak_flops,
            warmup_times: vec![],
            steady_times: vec![],
            warm: false,
            eval_times: vec![],
            ckpt_times: vec![],
            phase_s: [0.0; 4],
        }
    }

    pub fn is_warm(&self) -> bool {
        self.warm
    }
    pub fn warmup_iters(&self) -> usize {
        self.warmup_times.len()
    }

    /// Records one iteration's own time (seconds) and says whether it was warm-up.
    pub fn record_iter(&mut self, secs: f64) -> bool {
        let was_warm = self.warm;
        if self.warm {
            self.steady_times.push(secs);
            self.phase_s[1] += secs;
            return false;
        }
        self.warmup_times.push(secs);
        self.phase_s[0] += secs;
        let n = self.warmup_times.len();
        // warm-up is over once the last SETTLE_WINDOW times (after the first MIN_WARMUP)
        // agree, or after MAX_WARMUP; this iteration, not yet reported, is the first steady one
        let settled = n >= MIN_WARMUP + SETTLE_WINDOW && {
            let last = &self.warmup_times[n - SETTLE_WINDOW..];
            let m = median(last);
            last.iter().all(|&x| (x - m).abs() <= SETTLE_TOL * m)
        };
        if settled || n >= MAX_WARMUP {
            let t = self.warmup_times.pop().unwrap_or(secs);
            self.phase_s[0] -= t;
            self.phase_s[1] += t;
            self.steady_times.push(t);
            self.warm = true;
        }
        !was_warm && !self.warm
    }

    /// Records an evaluation of `secs` seconds, `ready_s` of which it waited for the backend to
    /// get ready (a GPU's kernels compiling at the run's first evaluation): that part is
    /// warm-up, and no later evaluation will pay it.
    pub fn record_eval(&mut self, secs: f64, ready_s: f64) {
        let ready = ready_s.clamp(0.0, secs);
        self.eval_times.push(secs - ready);
        self.phase_s[0] += ready;
        self.phase_s[2] += secs - ready;
    }
    pub fn record_checkpoint(&mut self, secs: f64) {
        self.ckpt_times.push(secs);
        self.phase_s[3] += secs;
    }

    /// Steady seconds per iteration over the whole run (median of every steady iteration), and
    /// how many there were: the run's summary (the live lines use the recent window).
    pub fn run_steady_s(&self) -> Option<(f64, usize)> {
        (self.warm && !self.steady_times.is_empty()).then(|| (median(&self.steady_times), self.steady_times.len()))
    }

    /// Tokens per second and MFU at `s` seconds per iteration.
    pub fn rates(&self, s: f64) -> (f64, Option<f64>) {
        (self.tokens_per_iter / s, self.peak_flops.map(|p| self.flops_per_iter / s / p))
    }

    /// Steady seconds per iteration (median of the recent window).
    pub fn steady_s(&self) -> Option<f64> {
        if !self.warm || self.steady_times.is_empty() {
            return None;
        }
        let n = self.steady_times.len();
        Some(median(&self.steady_times[n.saturating_sub(STEADY_WINDOW)..]))
    }

    /// The reading with `iters_left` iterations, `evals_left` evals and `ckpts_left`
    /// checkpoints still to come. Before any eval was timed, an eval is assumed to cost
    /// `eval_batches` forward passes at a third of a training micro-step each.
    pub fn reading(&self, iters_left: u64, evals_left: u64, ckpts_left: u64, eval_batches: f64, accum: f64) -> Reading {
        let Some(s) = self.steady_s() else {
            return Reading { warmup: !self.warm, steady_ms: None, tokens_per_sec: None, mfu: None, eta_s: None };
        };
        // the run's first evaluation also pays for first use (buffers, libraries, caches):
        // once there is another, the ones after it price those to come
        let evals = if self.eval_times.len() > 1 { &self.eval_times[1..] } else { &self.eval_times[..] };
        let eval_s = if evals.is_empty() { eval_batches * s / accum / 3.0 } else { evals.iter().sum::<f64>() / evals.len() as f64 };
        let ckpt_s = if self.ckpt_times.is_empty() { 0.0 } else { self.ckpt_times.iter().sum::<f64>() / self.ckpt_times.len() as f64 };
        Reading {
            warmup: false,
            steady_ms: Some(s * 1e3),
            tokens_per_sec: Some(self.tokens_per_iter / s),
            mfu: self.peak_flops.map(|p| self.flops_per_iter / s / p),
            eta_s: Some(iters_left as f64 * s + evals_left as f64 * eval_s + ckpts_left as f64 * ckpt_s),
        }
    }
}

/// A duration, one format per scale: `6.1s`, `4m05s`, `1h02m` (no seconds past an hour),
/// `1d19h58m` from a day up; `?` for no finite number.
pub fn human_duration(s: f64) -> String {
    if !s.is_finite() {
        return "?".into();
    }
    if s < 60.0 {
        return format!("{s:.1}s");
    }
    let t = s.round() as u64;
    let m = (t + 30) / 60; // to the nearest minute past an hour
    match t {
        ..3600 => format!("{}m{:02}s", t / 60, t % 60),
        _ if m < 24 * 60 => format!("{}h{:02}m", m / 60, m % 60),
        _ => format!("{}d{}h{:02}m", m / (24 * 60), m / 60 % 24, m % 60),
    }
}

/// Wall-clock time `s` seconds from now, `HH:MM:SS UTC` (with the date when not today).
pub fn finish_time(s: f64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let t = (now + s.max(0.0)) as u64;
    let (days_now, day) = ((now as u64) / 86400, t / 86400);
    let hms = format!("{:02}:{:02}:{:02} UTC", t / 3600 % 24, t / 60 % 60, t % 60);
    if day == days_now {
        hms
    } else {
        let (y, m, d) = civil_from_days(day as i64);
        format!("{y:04}-{m:02}-{d:02} {hms}")
    }
}

/// Days since 1970-01-01 to (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_is_the_whole_run_and_the_live_line_the_recent_window() {
        let mut m = Meter::new(1000.0, 1e9, Some(1e10));
        m.record_iter(1.0); // warm-up
        for _ in 0..3 {
            m.record_iter(0.05);
        }
        for _ in 0..(STEADY_WINDOW + 40) {
            m.record_iter(0.05);
        }
        for _ in 0..STEADY_WINDOW {
            m.record_iter(0.09); // the machine slows down for the last hundred
        }
        assert!((m.steady_s().unwrap() - 0.09).abs() < 1e-12, "live: the last {STEADY_WINDOW}");
        let (s, n) = m.run_steady_s().unwrap();
        assert!((s - 0.05).abs() < 1e-12 && n > 2 * STEADY_WINDOW, "the run: {s} over {n}");
        assert_eq!(m.rates(0.05), (20_000.0, Some(2.0)));
    }

    #[test]
    fn slow_first_iterations_are_warmup_and_excluded() {
        let mut m = Meter::new(1000.0, 1e9, Some(1e10));
        assert!(m.record_iter(1.0)); // first: always warm-up
        assert!(m.record_iter(0.5));
        assert!(m.record_iter(0.1));
        assert!(m.record_iter(0.1));
        assert!(!m.record_iter(0.1)); // settles here: the last three agree; the first steady one
        assert!(m.is_warm());
        assert!(!m.record_iter(0.1));
        let r = m.reading(10, 0, 0, 0.0, 1.0);
        assert!((r.steady_ms.unwrap() - 100.0).abs() < 1e-9);
        assert!((r.tokens_per_sec.unwrap() - 10_000.0).abs() < 1e-6);
        assert!((r.mfu.unwrap() - 1.0).abs() < 1e-9);
        assert!((r.eta_s.unwrap() - 1.0).abs() < 1e-9);
        // what was reported as warm-up is what the summary counts, and its time is warm-up time
        assert_eq!(m.warmup_iters(), 4);
        assert!((m.phase_s[0] - 1.7).abs() < 1e-9 && (m.phase_s[1] - 0.2).abs() < 1e-9, "{:?}", m.phase_s);
    }

    #[test]
    fn warmup_ends_after_max_warmup_iterations_whatever_the_times() {
        let mut m = Meter::new(1.0, 1.0, None);
        let reported: Vec<bool> = (0..MAX_WARMUP + 2).map(|i| m.record_iter(if i % 2 == 0 { 1.0 } else { 3.0 })).collect();
        assert_eq!(reported.iter().filter(|w| **w).count(), MAX_WARMUP - 1);
        assert_eq!(m.warmup_iters(), MAX_WARMUP - 1);
        assert!(!reported[MAX_WARMUP - 1] && m.is_warm());
    }

    #[test]
    fn no_mfu_during_warmup() {
        let mut m = Meter::new(1.0, 1.0, Some(1.0));
        m.record_iter(1.0);
        let r = m.reading(1, 0, 0, 0.0, 1.0);
        assert!(r.warmup && r.mfu.is_none() && r.eta_s.is_none());
    }

    #[test]
    fn eta_counts_evals_and_checkpoints() {
        let mut m = Meter::new(1.0, 1.0, None);
        for _ in 0..5 {
            m.record_iter(0.2);
        }
        m.record_eval(3.0, 0.0);
        m.record_checkpoint(1.0);
        let r = m.reading(10, 2, 1, 0.0, 1.0);
        assert!((r.eta_s.unwrap() - (2.0 + 6.0 + 1.0)).abs() < 1e-9);
        assert!(r.mfu.is_none());
    }

    #[test]
    fn the_first_evaluations_wait_for_the_kernels_is_warm_up() {
        let mut m = Meter::new(1.0, 1.0, None);
        for _ in 0..5 {
            m.record_iter(0.2);
        }
        let warm_up = m.phase_s[0];
        // the first evaluation: 14 s, 12 of them waiting for kernels to compile
        m.record_eval(14.0, 12.0);
        assert!((m.phase_s[0] - warm_up - 12.0).abs() < 1e-9 && (m.phase_s[2] - 2.0).abs() < 1e-9, "{:?}", m.phase_s);
        // alone, it prices the evaluations to come at its own 2 s
        assert!((m.reading(0, 3, 0, 0.0, 1.0).eta_s.unwrap() - 6.0).abs() < 1e-9);
        // once another was timed, the first (first use of everything) is left out of the price
        m.record_eval(1.0, 0.0);
        m.record_eval(1.5, 0.0);
        assert!((m.reading(0, 4, 0, 0.0, 1.0).eta_s.unwrap() - 5.0).abs() < 1e-9);
        // a wait longer than the evaluation (clock granularity) books no negative time
        m.record_eval(0.5, 0.7);
        assert!(m.phase_s.iter().all(|&p| p >= 0.0));
    }

    #[test]
    fn durations_and_dates_format() {
        let cases = [
            (6.14, "6.1s"),
            (65.0, "1m05s"),
            (3599.0, "59m59s"),
            (3723.0, "1h02m"),
            (86_369.0, "23h59m"),
            (86_390.0, "1d0h00m"),
            // a new GPU user's walkthrough saw 43h57m51s beside 2d10h37m
            (158_271.0, "1d19h58m"),
            (210_620.0, "2d10h30m"),
        ];
        for (s, want) in cases {
            assert_eq!(human_duration(s), want, "{s} s");
        }
        assert_eq!(human_duration(f64::INFINITY), "?");
        assert_eq!(civil_from_days(20_000), (2024, 10, 4));
    }
}
