//! A run's last checkpoint (at `max_iters` or on Ctrl-C) is tried again rather than lost, and
//! an interrupted run says how to resume.

use super::{Observer, WAITING_TO_SAVE};
use anyhow::Result;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often a run's failed last checkpoint is tried again.
pub(super) const RETRY_EVERY: Duration = Duration::from_secs(10);

/// Runs `attempt` (a run's last checkpoint) until it succeeds, `limit` has passed since the
/// first try, or `stop` becomes set while waiting (a Ctrl-C: give up; if `stop` was already set
/// on entry, this save is serving that interrupt, and a second Ctrl-C ends the process). The
/// first failure is reported with `what` to do about it.
pub(super) fn retry_last_save<T>(
    obs: &mut dyn Observer,
    limit: Duration,
    every: Duration,
    stop: &AtomicBool,
    what: &str,
    mut attempt: impl FnMut(&mut dyn Observer) -> Result<T>,
) -> Result<T> {
    let stop_on_entry = stop.load(Ordering::SeqCst);
    let t0 = Instant::now();
    let mut reported = false;
    loop {
        let err = match attempt(obs) {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if t0.elapsed() >= limit {
            return Err(err);
        }
        if !reported {
            obs.message(&format!(
                "warning: {err:#}\n{what}; trying again every {} s for up to {} s (`checkpoint_retry_s`); Ctrl-C gives up",
                every.as_secs_f64(),
                limit.as_secs()
            ));
            reported = true;
        }
        let wake = Instant::now() + every.min(limit.saturating_sub(t0.elapsed()));
        WAITING_TO_SAVE.store(!stop_on_entry, Ordering::SeqCst);
        while let Some(left) = wake.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
            if !stop_on_entry && stop.load(Ordering::SeqCst) {
                WAITING_TO_SAVE.store(false, Ordering::SeqCst);
                return Err(err.context("gave up on the interrupt"));
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
        WAITING_TO_SAVE.store(false, Ordering::SeqCst);
    }
}

/// The run stopped on a signal after writing a checkpoint.
#[derive(Debug)]
pub struct Interrupted {
    /// The last iteration the log shows (0-based, as every log line counts).
    pub last_logged: u64,
    pub path: PathBuf,
    /// Whether the run's own command resumes (`init_from = 'resume'`): then it resumes as it is.
    pub command_resumes: bool,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let how = if self.command_resumes { "the same command" } else { "the same command plus `--set init_from=resume`" };
        write!(
            f,
            "interrupted after iteration {}; checkpoint written to {} (resumes at iteration {}). Resume with {how}",
            self.last_logged,
            self.path.display(),
            self.last_logged + 1
        )
    }
}

impl std::error::Error for Interrupted {}

#[cfg(test)]
mod tests {
    use super::Interrupted;

    #[test]
    fn an_interrupted_resume_is_resumed_by_the_same_command() {
        let stop = |command_resumes| Interrupted { last_logged: 90, path: "out/ckpt-000091".into(), command_resumes }.to_string();
        assert!(stop(false).ends_with("Resume with the same command plus `--set init_from=resume`"), "{}", stop(false));
        assert!(stop(true).ends_with("Resume with the same command"), "{}", stop(true));
    }
}
