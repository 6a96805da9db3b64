//! Kernels compiled ahead: the variants a run says it will launch ([`Backend::prepare`]) are
//! compiled by NVRTC (or read from the cache) on background threads, longest first, while the
//! run sets up (its weights made or read, its data opened), so the first step waits for the
//! longest of them rather than for their sum. A variant launched before a thread has taken it
//! up is compiled by the launching thread; one a thread is compiling is waited for. Each one
//! loaded is counted ([`Ahead::note`]), so a run can say what its kernels cost it.
//!
//! [`Backend::prepare`]: crate::backend::Backend::prepare

use super::compile::{self, Variant};
use anyhow::Result;
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// A kernel family (a name of [`compile::SOURCES`]) and the variant of it.
pub type Key = (&'static str, Variant);

/// One variant's CUBIN as compiled (or read from the cache), with when.
pub struct Built {
    pub bin: Result<Vec<u8>>,
    /// When the compile (or the cache read) started, and how long it took (seconds).
    pub started: Instant,
    pub secs: f64,
    pub cached: bool,
}

/// Where a variant stands.
pub enum Taken {
    /// Compiled ahead (a thread had it: waited for, `waited` seconds).
    Ready(Built, f64),
    /// Planned, but no thread had started it: it is the caller's to compile now.
    Planned,
    /// Never planned.
    Unplanned,
}

/// How one loaded variant came to be.
#[derive(Clone, Copy, Debug)]
struct Load {
    key: Key,
    planned: bool,
    /// Compiled by a background thread before its first launch.
    ahead: bool,
    cached: bool,
    started: Instant,
    secs: f64,
    /// How long the launching thread waited for it (all of `secs` when it compiled it itself).
    waited: f64,
}

#[derive(Default)]
struct State {
    /// Planned and not yet taken up by a thread, longest first.
    queued: VecDeque<Key>,
    /// Being compiled by a thread.
    running: HashSet<Key>,
    /// Compiled by a thread, not yet loaded.
    done: HashMap<Key, Built>,
    /// Every variant ever planned.
    planned: HashSet<Key>,
    /// Every variant loaded, in order.
    loads: Vec<Load>,
    /// Threads started, in all, and those still at work.
    threads: usize,
    workers: usize,
}

/// The compiler of one card's kernels ahead of their launch (cheap to share: threads hold an
/// `Arc` of its state).
pub struct Ahead {
    cc: (i32, i32),
    cache: Option<PathBuf>,
    state: Arc<(Mutex<State>, Condvar)>,
    compiler: Compiler,
}

/// What compiles a variant: [`build`] (tests give a stand-in).
type Compiler = fn(Key, (i32, i32), Option<&Path>) -> Built;

/// How long a family's variant takes NVRTC, roughly, for the order they are started in
/// (PERFORMANCE.md, twenty-fourth session: on sm_90 the attention families take 3-6 s, LayerNorm
/// and the pointwise kernels 0.3-0.5 s, the rest a tenth or two).
fn cost(family: &str) -> u32 {
    match family {
        "attention_tc" | "attention" => 2,
        "layernorm" | "pointwise" => 1,
        _ => 0,
    }
}

/// Orders variants by [`cost`], longest first (in their order otherwise).
fn longest_first(keys: &mut [Key]) {
    keys.sort_by_key(|k| std::cmp::Reverse(cost(k.0)));
}

/// The compile of one variant, as the cache or NVRTC gives it.
fn build(key: Key, cc: (i32, i32), cache: Option<&Path>) -> Built {
    let started = Instant::now();
    let src = compile::SOURCES.iter().find(|(n, _)| *n == key.0).map(|&(_, s)| s).expect("a family of SOURCES");
    let out = compile::cubin(key.0, src, cc, Some(key.1), cache);
    let secs = started.elapsed().as_secs_f64();
    match out {
        Ok((bin, cached)) => Built { bin: Ok(bin), started, secs, cached },
        Err(e) => Built { bin: Err(e), started, secs, cached: false },
    }
}

impl Ahead {
    /// For a card of compute capability `cc`, cached in `cache`.
    pub fn new(cc: (i32, i32), cache: Option<PathBuf>) -> Ahead {
        Ahead::with(cc, cache, build)
    }

    fn with(cc: (i32, i32), cache: Option<PathBuf>, compiler: Compiler) -> Ahead {
        Ahead { cc, cache, state: Arc::new((Mutex::new(State::default()), Condvar::new())), compiler }
    }

    /// Variant `key` compiled by the calling thread (at its first launch, not compiled ahead).
    pub fn build_now(&self, key: Key) -> Built {
        (self.compiler)(key, self.cc, self.cache.as_deref())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Plans `keys` (those not planned before; none loaded yet) and starts threads to compile
    /// them, longest first: up to one per CPU, or per CPU's share when `local_ranks` processes
    /// of a data-parallel run share this machine (each compiles the same variants).
    pub fn start(&self, keys: &[Key], local_ranks: usize) {
        let mut st = self.lock();
        let new: Vec<Key> = keys.iter().copied().filter(|k| st.planned.insert(*k)).collect();
        if new.is_empty() {
            return;
        }
        st.queued.extend(new);
        longest_first(st.queued.make_contiguous());
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let spawn = st.queued.len().min((cpus / local_ranks.max(1)).max(1).saturating_sub(st.workers));
        st.threads += spawn;
        st.workers += spawn;
        drop(st);
        for _ in 0..spawn {
            let (state, cc, cache, compiler) = (self.state.clone(), self.cc, self.cache.clone(), self.compiler);
            // a thread that cannot start leaves its keys queued: their first launch compiles them
            let spawned =
                std::thread::Builder::new().name("gptrain-nvrtc".into()).spawn(move || worker(&state, cc, cache.as_deref(), compiler));
            if spawned.is_err() {
                let mut st = self.lock();
                st.workers -= 1;
                st.threads -= 1;
            }
        }
    }

    /// Variant `key` at its first launch: compiled ahead (waited for if a thread has it), or
    /// the caller's to compile.
    pub fn take(&self, key: Key) -> Taken {
        let t0 = Instant::now();
        let mut st = self.lock();
        if !st.planned.contains(&key) {
            return Taken::Unplanned;
        }
        if let Some(i) = st.queued.iter().position(|k| *k == key) {
            st.queued.remove(i);
            return Taken::Planned;
        }
        loop {
            if let Some(b) = st.done.remove(&key) {
                return Taken::Ready(b, t0.elapsed().as_secs_f64());
            }
            if !st.running.contains(&key) {
                // planned and loaded before (the caller's cache missed it), or its thread died
                return Taken::Planned;
            }
            st = self.state.1.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Notes that `key` has been loaded: `built` how it was compiled, `waited` how long the
    /// launching thread waited for it.
    pub fn loaded(&self, key: Key, ahead: bool, built: &Built, waited: f64) {
        let mut st = self.lock();
        let planned = st.planned.contains(&key);
        st.loads.push(Load { key, planned, ahead, cached: built.cached, started: built.started, secs: built.secs, waited });
    }

    /// Seconds launches have waited for kernels so far (compiling one themselves included):
    /// getting ready, which a run books as warm-up whatever it was doing.
    pub fn waited_s(&self) -> f64 {
        self.lock().loads.iter().map(|l| l.waited).sum()
    }

    /// What the kernels cost the run so far, for its log: how many were loaded; how many
    /// compiled, over how long (from the first compile's start to the last one's end, wall
    /// time), how many of them on background threads; how many read from the cache; how long
    /// launches waited for them; those compiled at their first launch without having been
    /// planned, and those planned and not (yet) launched. None before any was loaded.
    pub fn note(&self) -> Option<String> {
        let st = self.lock();
        if st.loads.is_empty() {
            return None;
        }
        let compiled: Vec<&Load> = st.loads.iter().filter(|l| !l.cached).collect();
        let waited: f64 = st.loads.iter().map(|l| l.waited).sum();
        let mut parts = Vec::new();
        if let Some(first) = compiled.iter().map(|l| l.started).min() {
            let span = compiled.iter().map(|l| (l.started - first).as_secs_f64() + l.secs).fold(0.0, f64::max);
            let ahead = compiled.iter().filter(|l| l.ahead).count();
            let plural = if st.threads == 1 { "" } else { "s" };
            let threads =
                if ahead > 0 { format!(" ({ahead} ahead of launch, on {} background thread{plural})", st.threads) } else { String::new() };
            parts.push(format!("{} compiled over {span:.1} s{threads}", compiled.len()));
        }
        let cached = st.loads.len() - compiled.len();
        if cached > 0 {
            parts.push(format!("{cached} from the cache"));
        }
        let (n, cc) = (st.loads.len(), self.cc);
        let mut s = format!("kernels: {n} variants for sm_{}{}: {}; launches waited {waited:.1} s for them", cc.0, cc.1, parts.join(", "));
        let unplanned: Vec<String> = st.loads.iter().filter(|l| !l.planned).map(|l| describe(l.key)).collect();
        if !unplanned.is_empty() {
            s += &format!("; not planned ahead: {}", unplanned.join(", "));
        }
        let loaded: HashSet<Key> = st.loads.iter().map(|l| l.key).collect();
        let mut unused: Vec<String> = st.planned.iter().filter(|k| !loaded.contains(k)).map(|&k| describe(k)).collect();
        if !unused.is_empty() {
            unused.sort();
            s += &format!("; planned and not launched: {}", unused.join(", "));
        }
        Some(s)
    }
}

/// `attention_tc bf16 hs64`: a variant, for a note.
fn describe((family, v): Key) -> String {
    if v.head > 0 {
        format!("{family} {} hs{}", v.storage, v.head)
    } else {
        format!("{family} {}", v.storage)
    }
}

/// A background thread: takes the next queued variant and compiles it, until none is left.
fn worker(state: &(Mutex<State>, Condvar), cc: (i32, i32), cache: Option<&Path>, compiler: Compiler) {
    loop {
        let key = {
            let mut st = state.0.lock().unwrap_or_else(|e| e.into_inner());
            let Some(key) = st.queued.pop_front() else {
                st.workers -= 1;
                return;
            };
            st.running.insert(key);
            key
        };
        // a panic inside is an error of this variant, never a launch waiting forever
        let started = Instant::now();
        let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| compiler(key, cc, cache))).unwrap_or_else(|_| Built {
            bin: Err(anyhow::anyhow!("compiling {} panicked", describe(key))),
            started,
            secs: started.elapsed().as_secs_f64(),
            cached: false,
        });
        let mut st = state.0.lock().unwrap_or_else(|e| e.into_inner());
        st.running.remove(&key);
        st.done.insert(key, built);
        drop(st);
        state.1.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// How many times [`fake`] compiled each variant (the tests' variants differ).
    static COMPILES: Mutex<Vec<(Key, usize)>> = Mutex::new(Vec::new());
    static PANICS: AtomicUsize = AtomicUsize::new(0);

    /// A stand-in for NVRTC: the family's name as the "CUBIN" after 20 ms (`reduce*` "from the
    /// cache"); `boom` panics.
    fn fake(key: Key, _cc: (i32, i32), _cache: Option<&Path>) -> Built {
        let started = Instant::now();
        if key.0 == "boom" {
            PANICS.fetch_add(1, Ordering::SeqCst);
            panic!("a compiler that panics");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut c = COMPILES.lock().unwrap();
        match c.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => c.push((key, 1)),
        }
        Built { bin: Ok(key.0.as_bytes().to_vec()), started, secs: 0.02, cached: key.0.starts_with("reduce") }
    }

    fn compiles(key: Key) -> usize {
        COMPILES.lock().unwrap().iter().find(|(k, _)| *k == key).map_or(0, |&(_, n)| n)
    }

    fn key(family: &'static str) -> Key {
        (family, Variant { storage: "bf16", head: if family.starts_with("attention") { 64 } else { 0 } })
    }

    /// What a launch does with a variant: takes it from the threads or compiles it, and notes it.
    fn launch(a: &Ahead, k: Key) -> Result<Vec<u8>> {
        let (built, early, waited) = match a.take(k) {
            Taken::Ready(b, w) => (b, true, w),
            Taken::Planned | Taken::Unplanned => (a.build_now(k), false, 0.02),
        };
        a.loaded(k, early, &built, waited);
        built.bin
    }

    #[test]
    fn planned_variants_are_compiled_once_each_whoever_gets_there_first() {
        let a = Ahead::with((9, 0), None, fake);
        let planned = ["pointwise", "attention_tc", "reduce", "layernorm", "encoder"].map(key);
        a.start(&planned, 1);
        a.start(&planned, 1); // planned again (the checkpoint's shape, the same): nothing new
                              // launched at once, so that some are still queued or running (taken or waited for)
        for k in planned {
            assert_eq!(launch(&a, k).unwrap(), k.0.as_bytes());
        }
        for k in planned {
            assert_eq!(compiles(k), 1, "{k:?} compiled {} times", compiles(k));
        }
        let note = a.note().unwrap();
        assert!(note.starts_with("kernels: 5 variants for sm_90: 4 compiled over "), "{note}");
        assert!(note.contains(", 1 from the cache; launches waited "), "{note}");
        assert!(!note.contains("not planned") && !note.contains("not launched"), "{note}");
        let st = a.lock();
        assert!(st.queued.is_empty() && st.running.is_empty() && st.done.is_empty());
    }

    #[test]
    fn ranks_sharing_a_machine_share_its_cpus() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let a = Ahead::with((9, 0), None, fake);
        let keys = ["classifier", "adamw", "encoder", "pointwise", "layernorm", "reduce"].map(|f| (f, Variant { storage: "f16", head: 0 }));
        a.start(&keys, 2 * cpus); // more ranks than CPUs: one thread each
        assert_eq!(a.lock().threads, 1);
        for k in keys {
            launch(&a, k).unwrap();
        }
        let b = Ahead::with((9, 0), None, fake);
        b.start(&keys.map(|(f, _)| (f, Variant { storage: "f32", head: 7 })), 1);
        assert_eq!(b.lock().threads, cpus.min(keys.len()));
    }

    #[test]
    fn a_note_names_what_was_not_planned_and_what_was_not_launched() {
        let a = Ahead::with((8, 9), None, fake);
        assert!(a.note().is_none(), "nothing loaded yet");
        a.start(&[key("classifier"), key("adamw")], 1);
        launch(&a, key("classifier")).unwrap();
        launch(&a, key("attention")).unwrap();
        let note = a.note().unwrap();
        assert!(note.contains("; not planned ahead: attention bf16 hs64"), "{note}");
        assert!(note.ends_with("; planned and not launched: adamw bf16"), "{note}");
    }

    #[test]
    fn a_compile_that_panics_is_an_error_of_its_variant_not_a_hang() {
        let a = Ahead::with((9, 0), None, fake);
        a.start(&[key("boom")], 1);
        // until the thread has taken it up (bounded: a thread that never runs fails the test)
        let t0 = Instant::now();
        while PANICS.load(Ordering::SeqCst) == 0 {
            assert!(t0.elapsed().as_secs() < 20, "no thread took the variant up");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        match a.take(key("boom")) {
            Taken::Ready(b, _) => assert!(b.bin.unwrap_err().to_string().contains("compiling boom bf16 panicked")),
            Taken::Planned => panic!("a thread had it"),
            Taken::Unplanned => panic!("it was planned"),
        }
    }

    #[test]
    fn the_longest_start_first() {
        let mut keys = ["reduce", "attention_tc", "layernorm", "encoder", "attention"].map(key);
        longest_first(&mut keys);
        assert_eq!(keys.map(|k| k.0), ["attention_tc", "attention", "layernorm", "reduce", "encoder"]);
    }
}
