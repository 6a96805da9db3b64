//! A data-parallel rank's part in the run's setup: the GPU it takes, its connection to the
//! other ranks (`dist::Group`, over TCP), and, on GPUs, whether the gradients are summed by
//! NCCL on the devices or through host memory.

use super::Config;
use crate::backend::cuda::{nccl, Cuda};
use crate::dist::{group, group::Group, World};
use anyhow::{bail, Result};

/// The device rank `world.rank` opens: ranks that ask for `cuda`, or for `auto` where there is
/// a usable GPU, take one GPU each, `cuda:LOCAL_RANK`, as torchrun users set it, except where
/// the process sees a single GPU (`CUDA_VISIBLE_DEVICES` giving each rank its own, as batch
/// scripts do; or ranks sharing the only one): `cuda:0`. `gpus()`: the GPUs this process sees,
/// None without a usable one. A named `cuda:N` and `cpu` stay as they are, and so does
/// everything for one process.
pub(super) fn rank_device(device: &str, world: &World, gpus: impl FnOnce() -> Option<usize>) -> String {
    if world.size == 1 || !matches!(device, "cuda" | "auto") {
        return device.to_string();
    }
    match (device, gpus()) {
        (_, Some(1)) => "cuda:0".into(),
        (_, Some(_)) | ("cuda", None) => format!("cuda:{}", world.local_rank),
        (d, None) => d.to_string(),
    }
}

/// A note when the ranks of one machine all train on the one GPU `device` names (`cuda:N`)
/// while the machine has more (`gpus`): nanoGPT's train.py gives each DDP rank
/// `cuda:LOCAL_RANK` whatever the config says, so a config written for it can mean that.
pub(super) fn one_gpu_named(device: &str, world: &World, gpus: impl FnOnce() -> Option<usize>) -> Option<String> {
    let n: usize = device.strip_prefix("cuda:")?.parse().ok()?;
    let seen = gpus().filter(|&g| g > 1 && world.local_size > 1)?;
    Some(format!(
        "note: device={device} puts all {} ranks of this machine on GPU {n} of its {seen} (nanoGPT's train.py gives each rank cuda:LOCAL_RANK whatever its config says); --set device=cuda gives each rank its own",
        world.local_size
    ))
}

/// The connection to the other ranks, after checking the run can be shared out.
pub(super) fn connect(cfg: &Config, world: &World) -> Result<Group> {
    let accum = cfg.gradient_accumulation_steps;
    if !accum.is_multiple_of(world.size) {
        bail!(
            "gradient_accumulation_steps = {accum} does not split over {} ranks: make it a multiple of {} (each rank runs gradient_accumulation_steps / ranks micro-batches, as nanoGPT)",
            world.size,
            world.size
        );
    }
    let addr = group::rendezvous_addr(world, &|k| std::env::var(k).ok())?;
    Group::connect(world, &addr, config_check(cfg), group::timeout_from_env()?)
}

/// A hash of every setting but `threads` (a machine's cores shared out among its ranks), which
/// the ranks compare when they connect (FNV-1a).
fn config_check(cfg: &Config) -> u64 {
    let table = cfg.table();
    let kept = table.lines().filter(|l| l.split_whitespace().next() != Some("threads"));
    kept.flat_map(|l| l.bytes().chain([b'\n'])).fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Checks that every rank of `group` trains on the same kind of device (`on_gpu`): ranks on
/// the CPU and on GPUs sum differently (`device=auto` on machines with and without a GPU).
pub(super) fn same_kind_of_device(group: &mut Group, on_gpu: bool) -> Result<()> {
    let gpus = group.gather_f64(&[f64::from(u8::from(on_gpu))])?;
    if let Some(r) = gpus.iter().position(|&g| g != gpus[0]) {
        let on = |g: f64| if g == 1.0 { "a GPU" } else { "the CPU" };
        bail!(
            "rank {r} trains on {} and rank 0 on {}: every rank must use the same kind of device (set `device` to `cuda` or `cpu`, not `auto`, on machines that differ)",
            on(gpus[r]),
            on(gpus[0])
        );
    }
    Ok(())
}

/// How a rank's GPU sums its gradients with the others': NCCL where every rank can (each has
/// NCCL, and no two share a GPU, which NCCL refuses), else through host memory and rank 0 (the
/// reason given). All ranks reach the same answer, from every rank's facts summed over
/// `group`. NCCL that then fails to start on one rank ends the run on every rank: the others,
/// waiting inside NCCL's start, see its connection close ([`while_ranks_live`]). Returns how the
/// sums go, for the start banner.
pub(super) fn join_gpus(cuda: &Cuda, group: &mut Group) -> Result<String> {
    let world = group.world().clone();
    let off = std::env::var("GPTRAIN_DIST_NCCL").is_ok_and(|v| v == "0");
    let nccl = if off { Err("GPTRAIN_DIST_NCCL=0".to_string()) } else { nccl::version() };
    // each rank's facts: NCCL loads here (1 or 0), which GPU it is (its UUID, hashed), whether
    // its NCCL lets ranks share a GPU (1 or 0), and its NCCL's version
    let (gpu, share) = (gpu_key(cuda.uuid()?), nccl.is_ok() && nccl::ranks_may_share_a_gpu());
    let code = if nccl.is_ok() { nccl::version_code() } else { 0 };
    let mine =
        [f64::from(u8::from(nccl.is_ok())), (gpu >> 32) as f64, (gpu & 0xffff_ffff) as f64, f64::from(u8::from(share)), f64::from(code)];
    let facts = group.gather_f64(&mine)?;
    let slot = |f: &[f64]| Slot { nccl: f[0] == 1.0, gpu: ((f[1] as u64) << 32) | f[2] as u64, share: f[3] == 1.0, version: f[4] as i32 };
    let slots: Vec<Slot> = facts.chunks(mine.len()).map(slot).collect();
    if let Some(why) = host_reason(&slots, world.rank, nccl.as_ref().err()) {
        return Ok(staged(&why));
    }
    // rank 0's unique id, to every rank (bytes are exact in f64)
    let mut id = [0.0f64; 129];
    if world.is_root() {
        match nccl::unique_id() {
            Ok(u) => {
                id[0] = 1.0;
                for (x, b) in id[1..].iter_mut().zip(u.internal) {
                    *x = f64::from(b as u8);
                }
            }
            Err(e) => eprintln!("rank 0: {e:#}"),
        }
    }
    group.broadcast_f64(&mut id)?;
    if id[0] != 1.0 {
        return Ok(staged("rank 0 could not draw an NCCL id"));
    }
    let mut u = nccl::UniqueId { internal: [0; 128] };
    for (b, x) in u.internal.iter_mut().zip(&id[1..]) {
        *b = *x as u8 as std::ffi::c_char;
    }
    let timeout = group::timeout_from_env()?;
    let joining = cuda.clone();
    let (rank, size) = (world.rank, world.size);
    // each sum watches the ranks' connections: NCCL does not say when a peer dies mid-sum
    let gone = Box::new(group.watcher()?);
    while_ranks_live(group, "NCCL's start", timeout, move || joining.join_ranks(rank, size, u, timeout, gone))
        .map_err(|e| anyhow::anyhow!("{e:#}; `GPTRAIN_DIST_NCCL=0` sums through host memory instead"))?;
    Ok(format!("gradients summed by NCCL {} on the GPUs, losses through rank 0", nccl.unwrap_or_default()))
}

/// Runs `work` (a call that waits for every rank, such as NCCL's start, which cannot be
/// cancelled) on a thread of its own while watching `group`: a rank whose process ends
/// meanwhile, or no end within `limit`, ends the wait with one line saying so (`what`: what
/// was waited for), leaving `work` blocked on its thread until the process exits.
pub(super) fn while_ranks_live<T: Send + 'static>(
    group: &Group,
    what: &str,
    limit: std::time::Duration,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let start = std::time::Instant::now();
    // the main thread's stack size: NCCL's start ran there before, and keeps large structures
    // on the stack in some versions
    let handle = std::thread::Builder::new().name("ranks-wait".into()).stack_size(8 << 20).spawn(work)?;
    let left = |e: anyhow::Error| {
        LEFT_BEHIND.store(true, std::sync::atomic::Ordering::SeqCst);
        Err(e)
    };
    loop {
        if handle.is_finished() {
            return handle.join().unwrap_or_else(|_| bail!("the thread of {what} panicked"));
        }
        if let Some(r) = group.gone() {
            return left(anyhow::anyhow!("rank {r} stopped during {what} (see its output for why)"));
        }
        if super::STOP.load(std::sync::atomic::Ordering::SeqCst) {
            return left(anyhow::anyhow!("stopped by a signal during {what}; nothing was trained yet"));
        }
        if start.elapsed() > limit {
            let e = anyhow::anyhow!(
                "{what} did not end within {} s ({}): a rank is stuck or cannot reach the others",
                limit.as_secs(),
                group::TIMEOUT_VAR
            );
            return left(e);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Set when [`while_ranks_live`] returned with its work still running (inside NCCL).
static LEFT_BEHIND: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether a thread was left inside a wait for the ranks (NCCL's start): the process must then
/// exit without running the libraries' teardown.
pub fn left_a_thread_in_nccl() -> bool {
    LEFT_BEHIND.load(std::sync::atomic::Ordering::SeqCst)
}

/// The banner's words for sums through host memory, and why.
fn staged(why: &str) -> String {
    format!("gradients and losses summed through rank 0, the gradients from the GPUs through host memory ({why})")
}

/// What a rank tells the others before they choose how to sum.
struct Slot {
    /// NCCL loads there.
    nccl: bool,
    /// Its GPU ([`gpu_key`]).
    gpu: u64,
    /// Its NCCL lets ranks share a GPU ([`nccl::ranks_may_share_a_gpu`]).
    share: bool,
    /// Its NCCL's [`nccl::version_code`].
    version: i32,
}

/// Why the ranks cannot sum by NCCL, from every rank's [`Slot`] and the reason NCCL does not
/// load on this rank (`me`), if it does not; None when they can.
fn host_reason(slots: &[Slot], me: usize, here: Option<&String>) -> Option<String> {
    if let Some(why) = here {
        return Some(format!("NCCL is not usable on rank {me}: {why}"));
    }
    if let Some(r) = slots.iter().position(|s| !s.nccl) {
        return Some(format!("NCCL is not usable on rank {r}"));
    }
    if let Some(r) = slots.iter().position(|s| s.version != slots[0].version) {
        return Some(format!(
            "rank 0 has NCCL {} and rank {r} NCCL {}, and NCCL joins only ranks of one version",
            nccl::version_of(slots[0].version),
            nccl::version_of(slots[r].version)
        ));
    }
    if slots.iter().all(|s| s.share) {
        return None;
    }
    for (i, a) in slots.iter().enumerate() {
        if let Some(j) = slots[i + 1..].iter().position(|b| b.gpu == a.gpu) {
            return Some(format!(
                "ranks {i} and {} share one GPU, which NCCL allows only from 2.30 with NCCL_MULTI_RANK_GPU_ENABLE=1",
                i + 1 + j
            ));
        }
    }
    None
}

/// A GPU's UUID as one number (FNV-1a, 53 bits, so that it survives the trip through f64
/// sums): equal for two ranks on one card.
fn gpu_key(uuid: [u8; 16]) -> u64 {
    uuid.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)) & ((1 << 53) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_gpu_shared_by_a_machines_ranks_beside_others_is_noted() {
        let w = |local_size| World { rank: 0, size: 8, local_rank: 0, local_size, source: "torchrun" };
        let note = one_gpu_named("cuda:0", &w(8), || Some(8)).unwrap();
        assert!(note.starts_with("note: device=cuda:0 puts all 8 ranks of this machine on GPU 0 of its 8"), "{note}");
        assert!(note.contains("--set device=cuda gives each rank its own"), "{note}");
        // one GPU to share, one rank a machine, or every rank given its own: nothing to say
        assert_eq!(one_gpu_named("cuda:0", &w(8), || Some(1)), None);
        assert_eq!(one_gpu_named("cuda:0", &w(1), || Some(8)), None);
        assert_eq!(one_gpu_named("cuda", &w(8), || Some(8)), None);
        assert_eq!(one_gpu_named("cpu", &w(8), || Some(8)), None);
    }

    #[test]
    fn ranks_asking_for_a_gpu_take_their_local_ranks() {
        let w = |rank, size, local_rank| World { rank, size, local_rank, local_size: size, source: "torchrun" };
        let never = || -> Option<usize> { panic!("asked for the GPUs") };
        assert_eq!(rank_device("cuda", &w(3, 4, 1), || Some(2)), "cuda:1");
        assert_eq!(rank_device("cuda", &w(3, 4, 1), || None), "cuda:1"); // then an error naming it
        assert_eq!(rank_device("cuda", &w(3, 4, 1), || Some(1)), "cuda:0"); // one GPU per process, or shared
        assert_eq!(rank_device("auto", &w(3, 4, 1), || Some(4)), "cuda:1");
        assert_eq!(rank_device("auto", &w(3, 4, 1), || Some(1)), "cuda:0");
        assert_eq!(rank_device("auto", &w(3, 4, 1), || None), "auto");
        for d in ["cuda:0", "cuda:2", "cpu"] {
            assert_eq!(rank_device(d, &w(3, 4, 1), never), d);
        }
        for d in ["cuda", "auto", "cuda:1", "cpu"] {
            assert_eq!(rank_device(d, &World::ALONE, never), d);
        }
    }

    #[test]
    fn ranks_sum_by_nccl_only_when_every_rank_can_and_no_two_share_a_gpu() {
        let s = |nccl, gpu, share| Slot { nccl, gpu, share, version: 22105 };
        assert!(host_reason(&[s(true, 1, false), s(true, 2, false), s(true, 3, false)], 0, None).is_none());
        let no = "NCCL library not found".to_string();
        let e = host_reason(&[s(true, 1, false), s(false, 2, false)], 1, Some(&no)).unwrap();
        assert_eq!(e, "NCCL is not usable on rank 1: NCCL library not found");
        assert_eq!(host_reason(&[s(true, 1, true), s(false, 2, true)], 0, None).unwrap(), "NCCL is not usable on rank 1");
        let e = host_reason(&[s(true, 1, false), s(true, 2, true), s(true, 1, true)], 1, None).unwrap();
        assert_eq!(e, "ranks 0 and 2 share one GPU, which NCCL allows only from 2.30 with NCCL_MULTI_RANK_GPU_ENABLE=1");
        assert!(host_reason(&[s(true, 1, true), s(true, 1, true)], 1, None).is_none());
        // NCCL refuses ranks of different versions (environments that differ by node)
        let older = Slot { version: 21903, ..s(true, 3, false) };
        let e = host_reason(&[s(true, 1, false), s(true, 2, false), older], 0, None).unwrap();
        assert_eq!(e, "rank 0 has NCCL 2.21.5 and rank 2 NCCL 2.19.3, and NCCL joins only ranks of one version");
        let (a, b) = (gpu_key([1; 16]), gpu_key([2; 16]));
        assert_ne!(a, b);
        assert_eq!(a, gpu_key([1; 16]));
        assert!(a < 1 << 53 && ((a >> 32) as f64 as u64) << 32 | (a & 0xffff_ffff) as f64 as u64 == a);
    }
}
