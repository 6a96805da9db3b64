//! Keeping the thread pool awake through a training step.
//!
//! A rayon worker with nothing to do sleeps after some tens of microseconds of searching, and
//! waking it for the next parallel op costs a hundred times more than reaching an awake one. A
//! step of a small model is hundreds of short ops, so those wake-ups add up. [`hot`] runs the
//! step with every other worker polling for work, yielding to the OS between polls so that a
//! busy machine loses little; PyTorch's OpenMP threads spin the same way. (The measurements are
//! in PERFORMANCE.md.)

use rayon::Yield;
use std::sync::atomic::{AtomicBool, Ordering};

/// Runs `f` on this thread while the pool's other workers poll for its parallel work.
pub fn hot<R>(f: impl FnOnce() -> R) -> R {
    let threads = rayon::current_num_threads();
    let Some(me) = rayon::current_thread_index() else {
        return f(); // not on a pool thread: nothing to keep warm
    };
    if threads < 2 {
        return f();
    }
    let done = AtomicBool::new(false);
    rayon::in_place_scope(|s| {
        for _ in 1..threads {
            s.spawn(|_| {
                // A poller picked up by this very thread (it can only be, once f has returned
                // and the scope drains its jobs) must not wait for a flag only it could set.
                if rayon::current_thread_index() == Some(me) {
                    return;
                }
                while !done.load(Ordering::Acquire) {
                    if rayon::yield_now() != Some(Yield::Executed) {
                        std::thread::yield_now();
                    }
                }
            });
        }
        /// Raises `done` when dropped, also when `f` panics, so the pollers always stop.
        struct Done<'a>(&'a AtomicBool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Release);
            }
        }
        let _done = Done(&done);
        f()
    })
}

#[cfg(test)]
mod tests {
    use rayon::prelude::*;

    #[test]
    fn parallel_work_inside_runs_and_returns() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        let sum = pool.install(|| super::hot(|| (0..10_000u64).into_par_iter().map(|x| x * x).sum::<u64>()));
        assert_eq!(sum, (0..10_000u64).map(|x| x * x).sum::<u64>());
        // outside any pool it just calls f
        assert_eq!(super::hot(|| 7), 7);
    }

    #[test]
    fn a_panic_inside_stops_the_pollers() {
        // run on another thread and wait with a deadline: a poller left spinning would make
        // the scope wait forever
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
            let r = pool.install(|| std::panic::catch_unwind(|| super::hot(|| panic!("step failed"))));
            let after = pool.install(|| super::hot(|| (0..100).into_par_iter().count()));
            tx.send((r.is_err(), after)).unwrap();
        });
        let got = rx.recv_timeout(std::time::Duration::from_secs(60));
        assert_eq!(got, Ok((true, 100)), "hot() did not return after a panic inside it");
    }
}
