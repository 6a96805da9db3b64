//! How training reads on a terminal (a progress bar with lines above it) and in a log file
//! (plain lines, nanoGPT's shapes).

use crate::model::Recompute;
use crate::perf::meter::{finish_time, human_duration};
use crate::train::{IterLog, Observer, StartInfo, Summary};
use crate::units::{count, human_bytes};
use std::io::IsTerminal;
use std::path::Path;

/// println! that never panics: a closed stdout (`gptrain train | head`) must not kill a run.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}
pub(crate) use say;

pub struct Printer {
    bar: Option<indicatif::ProgressBar>,
    max_iters: u64,
    eval_only: bool,
}

impl Printer {
    pub fn new() -> Self {
        Printer { bar: None, max_iters: 0, eval_only: false }
    }

    fn line(&self, s: &str) {
        match &self.bar {
            Some(b) => b.println(s),
            None => say!("{s}"),
        }
    }
}

/// `12,345`.
pub fn thousands(x: f64) -> String {
    let s = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

pub fn si(x: f64) -> String {
    match x.abs() {
        v if v >= 1e12 => format!("{:.2}T", x / 1e12),
        v if v >= 1e9 => format!("{:.2}G", x / 1e9),
        v if v >= 1e6 => format!("{:.2}M", x / 1e6),
        v if v >= 1e3 => format!("{:.2}k", x / 1e3),
        _ => format!("{x:.0}"),
    }
}

/// `; GELU recomputed in the backward (recompute=1)` for a nonzero level, else nothing: what the
/// memory lines of `estimate`, `bench` and `train` add.
pub fn recompute_note(r: Recompute) -> String {
    r.describe().map_or(String::new(), |what| format!("; {what} recomputed in the backward (recompute={})", r.level()))
}

/// What a run on a GPU says under its device, once. Remove it (and its uses) once
/// tools/gpu_check.sh has passed on a GPU: until then the emulator is all the backend has run on.
pub const UNVALIDATED_GPU: &str = "note: gptrain's CUDA backend has not yet been validated on a real GPU; `gptrain check --device cuda` compares it with the CPU, and --set device=cpu is the tested path";

/// A rate of FLOPs: `989.0 TFLOP/s` from 1 TFLOP/s up (a GPU's), else `151.2 GFLOP/s`.
pub fn flops_rate(x: f64) -> String {
    if x >= 1e12 {
        format!("{:.1} TFLOP/s", x / 1e12)
    } else {
        format!("{:.1} GFLOP/s", x / 1e9)
    }
}

/// The peak MFU is measured against, at dtype `p`, and where it comes from (`source`); or, when
/// unknown, how to give one. `train`'s banner and `bench` say it alike.
pub fn peak_text(peak: Option<f64>, p: crate::backend::Precision, source: &str) -> String {
    match peak {
        Some(x) => format!("peak {} at {} ({source})", flops_rate(x), p.name()),
        None => {
            // the backend's reason may end as this line does
            let why = source.trim_end_matches(": MFU n/a").trim();
            let why = if why.is_empty() { String::new() } else { format!(" ({why})") };
            format!("peak unknown{why}: MFU n/a; `--set peak_tflops=N` (the card's dense TFLOP/s at {}) gives one", p.name())
        }
    }
}

pub fn gib(b: u64) -> String {
    format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
}

impl Observer for Printer {
    fn message(&mut self, text: &str) {
        self.line(text);
    }

    fn start(&mut self, s: &StartInfo) {
        // the config comes once the run has opened its data and weights, so that an error
        // there is not the last line under a screenful of settings
        say!("config:\n{}", s.config.table());
        let m = &s.model;
        say!(
            "model: {} layers, {} heads, {} dims, block {}, vocab {}{}, bias {}",
            m.n_layer,
            m.n_head,
            m.n_embd,
            m.block_size,
            m.vocab_size,
            if m.padded_vocab_size != m.vocab_size { format!(" (padded to {})", m.padded_vocab_size) } else { String::new() },
            m.bias
        );
        say!(
            "number of parameters: {:.2}M ({:.2}M without position embeddings, as nanoGPT counts)",
            s.params as f64 / 1e6,
            s.params_nanogpt as f64 / 1e6
        );
        say!("data: {}", s.dataset);
        say!("tokens per iteration: {} ; FLOPs per iteration: {}", thousands(s.tokens_per_iter as f64), si(s.flops_per_iter));
        say!("device: {} ; {}", s.device, peak_text(s.peak_flops, s.precision, &s.peak_source));
        if s.on_gpu {
            say!("{UNVALIDATED_GPU}");
        }
        // `dtype = 'auto'` on a GPU is nanoGPT's choice, which the line names
        let auto = (s.on_gpu && s.config.dtype.eq_ignore_ascii_case("auto"))
            .then(|| match s.precision {
                crate::backend::Precision::Bf16 => "auto: the card has bf16".to_string(),
                p => format!("auto: no bf16 before compute capability 8.0, so {}", p.name()),
            })
            .into_iter();
        let notes: Vec<String> = auto.chain(Some(s.precision_note.clone()).filter(|n| !n.is_empty())).collect();
        if notes.is_empty() {
            say!("dtype: {}", s.precision.name());
        } else {
            say!("dtype: {} ({})", s.precision.name(), notes.join("; "));
        }
        // perf::flops's figure for the run, and the device's memory
        let b = human_bytes;
        let free = |then: &str| s.device_memory.map_or(String::new(), |m| format!("; {} free of {}{then}", b(m.available), b(m.total)));
        let recomputed = recompute_note(s.config.recompute_level());
        match s.memory_bytes - s.memory_allocated_bytes {
            0 => say!(
                "memory: about {} for weights, optimizer and activations{}{}{recomputed}",
                b(s.memory_bytes),
                if s.checkpoint_bytes > 0 {
                    format!(", {} more while a checkpoint is written", b(s.checkpoint_bytes))
                } else {
                    String::new()
                },
                free("")
            ),
            // the CUDA context exists by now: the device's free memory is what the buffers get
            _ => say!(
                "memory: about {} for gptrain's buffers, {} with the CUDA context (estimated){}{recomputed}",
                b(s.memory_allocated_bytes),
                b(s.memory_bytes),
                free(" with the context in place")
            ),
        }
        if s.eval_only {
            say!("eval_only: one evaluation at iteration {}, no training", s.start_iter);
            self.eval_only = true;
            return;
        }
        say!(
            "iterations {} -> {}; the first iterations are warm-up and are not counted in throughput, MFU or ETA",
            s.start_iter,
            s.max_iters
        );
        self.max_iters = s.max_iters;
        if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(s.max_iters);
            bar.set_position(s.start_iter);
            bar.set_style(indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}").unwrap());
            self.bar = Some(bar);
        }
    }

    fn iter(&mut self, l: &IterLog) {
        let mut s = format!("iter {}: loss {:.4}, time {:.2}ms, lr {:.2e}, norm {:.4}", l.iter, l.loss, l.ms, l.lr, l.grad_norm);
        let r = &l.reading;
        if r.warmup {
            s.push_str(", warm-up (not counted)");
        } else {
            if let (Some(ms), Some(tps)) = (r.steady_ms, r.tokens_per_sec) {
                s.push_str(&format!(", steady {ms:.2}ms/iter, {} tok/s", thousands(tps)));
            }
            match r.mfu {
                Some(m) => s.push_str(&format!(", mfu {:.1}%", m * 100.0)),
                None => s.push_str(", mfu n/a"),
            }
            if let Some(eta) = r.eta_s {
                s.push_str(&format!(", eta {} (done {})", human_duration(eta), finish_time(eta)));
            }
        }
        if l.outlier {
            s.push_str(", OUTLIER (z-score over skip_update_lossz/gradz): update skipped");
        } else if l.overflow {
            s.push_str(&format!(", fp16 gradient overflow: update skipped, loss scale now {}", l.loss_scale.unwrap_or(0.0)));
        } else if l.skipped {
            s.push_str(", NON-FINITE: update skipped");
        }
        self.line(&s);
        if let Some(b) = &self.bar {
            // the bar counts iterations done; its loss is the last of them, its ETA the meter's
            // (none once training is over: the final eval and checkpoint follow)
            b.set_position(l.iter + 1);
            b.set_message(match r.eta_s {
                _ if l.iter + 1 >= self.max_iters => format!("iter {} loss {:.4}, done", l.iter, l.loss),
                Some(e) => format!("iter {} loss {:.4}, eta {}", l.iter, l.loss, human_duration(e)),
                None => format!("iter {} loss {:.4}, warm-up", l.iter, l.loss),
            });
        }
    }

    fn eval(&mut self, it: u64, train_loss: f32, val_loss: f32, _secs: f64) {
        self.line(&format!("step {it}: train loss {train_loss:.4}, val loss {val_loss:.4}"));
    }

    fn checkpoint(&mut self, _iter: u64, path: &Path, secs: f64) {
        self.line(&format!("saved checkpoint to {} ({:.2}s)", path.display(), secs));
    }

    fn finish(&mut self, s: &Summary) {
        if let Some(b) = self.bar.take() {
            b.abandon(); // stays on screen as it is: at 100%, "done"
        }
        if self.eval_only {
            // a GPU's first evaluation waits for its kernels: warm-up, said apart
            let warm_up = if s.warmup_s >= 0.05 { format!(", warm-up {}", human_duration(s.warmup_s)) } else { String::new() };
            say!("done: evaluation in {} (eval {}{warm_up})", human_duration(s.total_s), human_duration(s.eval_s));
            if let (Some(t), Some(v)) = (s.final_train_loss, s.final_val_loss) {
                say!("train loss {t:.4}, val loss {v:.4}");
            }
            return;
        }
        say!(
            "done: {} in {} (warm-up {} {}, training {}, eval {}, checkpoints {})",
            count(s.iters as usize, "iteration"),
            human_duration(s.total_s),
            count(s.warmup_iters, "iter"),
            human_duration(s.warmup_s),
            human_duration(s.train_s),
            human_duration(s.eval_s),
            human_duration(s.checkpoint_s)
        );
        if let (Some(ms), Some(tps)) = (s.steady_ms, s.tokens_per_sec) {
            say!(
                "steady: {ms:.2} ms/iter (median of the run's {}), {} tok/s, MFU {}",
                count(s.steady_iters, "steady iteration"),
                thousands(tps),
                s.mfu.map_or("n/a".into(), |m| format!("{:.1}%", m * 100.0))
            );
        }
        if let (Some(t), Some(v)) = (s.final_train_loss, s.final_val_loss) {
            say!("final: train loss {t:.4}, val loss {v:.4}");
        }
        if s.skipped_updates > 0 {
            say!("skipped updates (non-finite loss or gradient, or outliers): {}", s.skipped_updates);
        }
        if let Some(scale) = s.loss_scale {
            say!(
                "fp16 loss scaling: {} skipped for a gradient overflow, loss scale now {scale}",
                count(s.overflow_skips as usize, "update")
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Precision;

    #[test]
    fn peaks_read_in_tflops_on_a_gpu_with_their_dtype_and_an_unknown_one_says_how_to_give_it() {
        assert_eq!(flops_rate(989e12), "989.0 TFLOP/s");
        assert_eq!(flops_rate(151.23e9), "151.2 GFLOP/s");
        assert_eq!(peak_text(Some(989e12), Precision::Bf16, "--set peak_tflops"), "peak 989.0 TFLOP/s at bf16 (--set peak_tflops)");
        assert_eq!(
            peak_text(None, Precision::Bf16, "not in the device table: MFU n/a"),
            "peak unknown (not in the device table): MFU n/a; `--set peak_tflops=N` (the card's dense TFLOP/s at bf16) gives one"
        );
        assert!(peak_text(None, Precision::F32, "").starts_with("peak unknown: MFU n/a; `--set peak_tflops=N`"));
    }
}
