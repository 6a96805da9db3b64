//! Where a run's record goes besides the caller's [`Observer`]: `out_dir/metrics.jsonl` (an
//! Observer itself) and TensorBoard event files, fanned out from one place by [`Recorders`].

use super::{IterLog, Observer, StartInfo, Summary};
use crate::tensorboard::TensorBoard;
use std::io::Write;
use std::path::Path;

/// Appends one JSON record per event to `out_dir/metrics.jsonl`. A write that fails (disk
/// full) turns it off: a full disk must not stop training; checkpoints report it.
pub struct Metrics(Option<std::fs::File>);

impl Metrics {
    /// Appends to `out_dir/metrics.jsonl` (off when it cannot be opened).
    pub fn open(out_dir: &Path) -> Metrics {
        Metrics(std::fs::OpenOptions::new().create(true).append(true).open(out_dir.join("metrics.jsonl")).ok())
    }

    /// Writes nothing (a data-parallel rank other than 0: rank 0 keeps the run's record).
    pub fn off() -> Metrics {
        Metrics(None)
    }

    fn write(&mut self, v: serde_json::Value) {
        if let Some(f) = &mut self.0 {
            if writeln!(f, "{v}").is_err() {
                self.0 = None;
            }
        }
    }
}

impl Observer for Metrics {
    fn message(&mut self, _: &str) {}
    fn start(&mut self, s: &StartInfo) {
        self.write(serde_json::json!({"type": "start", "iter": s.start_iter, "max_iters": s.max_iters, "tokens_per_iter": s.tokens_per_iter, "flops_per_iter": s.flops_per_iter, "peak_flops": s.peak_flops, "params": s.params, "config": s.config}));
    }
    fn iter(&mut self, l: &IterLog) {
        let r = &l.reading;
        self.write(serde_json::json!({"type": "iter", "iter": l.iter, "loss": l.loss, "lr": l.lr, "grad_norm": l.grad_norm, "ms": l.ms, "warmup": r.warmup, "steady_ms": r.steady_ms, "tokens_per_sec": r.tokens_per_sec, "mfu": r.mfu, "eta_s": r.eta_s, "skipped": l.skipped, "outlier": l.outlier, "overflow": l.overflow, "loss_scale": l.loss_scale}));
    }
    fn eval(&mut self, it: u64, train_loss: f32, val_loss: f32, secs: f64) {
        self.write(serde_json::json!({"type": "eval", "iter": it, "train_loss": train_loss, "val_loss": val_loss, "secs": secs}));
    }
    fn checkpoint(&mut self, iter: u64, path: &Path, secs: f64) {
        self.write(serde_json::json!({"type": "checkpoint", "iter": iter, "path": path, "secs": secs}));
    }
    fn finish(&mut self, summary: &Summary) {
        self.write(serde_json::json!({"type": "summary", "summary": summary}));
    }
}

/// The caller's observer, the metrics file and TensorBoard, as one observer; TensorBoard's
/// one warning (it turns itself off on a failed write) goes to the caller.
pub struct Recorders<'a> {
    pub user: &'a mut dyn Observer,
    pub metrics: Metrics,
    pub tensorboard: TensorBoard,
}

impl Observer for Recorders<'_> {
    fn message(&mut self, text: &str) {
        self.user.message(text);
    }
    fn start(&mut self, s: &StartInfo) {
        self.user.start(s);
        self.metrics.start(s);
    }
    fn iter(&mut self, l: &IterLog) {
        self.metrics.iter(l);
        if let Some(w) = self.tensorboard.iter(l) {
            self.user.message(&w);
        }
        self.user.iter(l);
    }
    fn eval(&mut self, it: u64, train_loss: f32, val_loss: f32, secs: f64) {
        self.user.eval(it, train_loss, val_loss, secs);
        self.metrics.eval(it, train_loss, val_loss, secs);
        if let Some(w) = self.tensorboard.eval(it, train_loss, val_loss) {
            self.user.message(&w);
        }
    }
    fn checkpoint(&mut self, iter: u64, path: &Path, secs: f64) {
        self.user.checkpoint(iter, path, secs);
        self.metrics.checkpoint(iter, path, secs);
    }
    fn finish(&mut self, summary: &Summary) {
        self.metrics.finish(summary);
        self.user.finish(summary);
    }
}
