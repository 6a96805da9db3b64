//! NCCL, loaded at run time, for the gradient sums of a data-parallel run's GPU ranks: one
//! communicator per rank, made from a unique id that rank 0 draws and the others receive over
//! the run's TCP group (`dist::Group`), and an in-place sum of the gradients on the device;
//! under ZeRO-1, sums to each part's owner and copies from it instead.
//!
//! gptrain calls NCCL itself (ten functions, by `libloading`) rather than through cudarc's
//! `nccl` feature, whose loader asks for `libnccl.so` and never for `libnccl.so.2`, the only
//! name NVIDIA's pip wheel (`nvidia-nccl-cu12`, which PyTorch installs) and the distributions'
//! runtime packages ship. The library is searched for as cuBLASLt and NVRTC are ([`libs`]),
//! then by the system loader.

use super::libs;
use anyhow::{bail, Result};
use std::ffi::{c_char, c_void, CStr};
use std::sync::{LazyLock, OnceLock};

pub const NCCL: libs::Lib = libs::Lib { what: "NCCL", files: &["libnccl.so.2"], wheel: "nvidia-nccl-cu12" };

/// `ncclUniqueId`: 128 bytes rank 0 draws and every rank passes to [`Comm::init`].
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UniqueId {
    pub internal: [c_char; 128],
}

/// `ncclUint8`, `ncclFloat32` and `ncclSum` (nccl.h).
const UINT8: i32 = 1;
const FLOAT32: i32 = 7;
const SUM: i32 = 0;
/// `ncclInProgress` (ncclResult_t 7): a non-blocking operation still under way.
const IN_PROGRESS: i32 = 7;

/// The NCCL functions gptrain calls (nccl.h's signatures; `ncclComm_t` and `cudaStream_t` are
/// pointers).
struct Api {
    version: String,
    /// The file it was loaded from (None: the system loader's, not found in /proc/self/maps).
    path: Option<std::path::PathBuf>,
    /// NCCL_VERSION_CODE as of 2.9 (major * 10000 + minor * 100 + patch).
    code: i32,
    get_unique_id: unsafe extern "C" fn(*mut UniqueId) -> i32,
    comm_init_rank: unsafe extern "C" fn(*mut *mut c_void, i32, UniqueId, i32) -> i32,
    all_reduce: unsafe extern "C" fn(*const c_void, *mut c_void, usize, i32, i32, *mut c_void, *mut c_void) -> i32,
    /// (send, recv, count, datatype, op, root, comm, stream)
    reduce: unsafe extern "C" fn(*const c_void, *mut c_void, usize, i32, i32, i32, *mut c_void, *mut c_void) -> i32,
    /// (send, recv, count, datatype, root, comm, stream)
    broadcast: unsafe extern "C" fn(*const c_void, *mut c_void, usize, i32, i32, *mut c_void, *mut c_void) -> i32,
    group_start: unsafe extern "C" fn() -> i32,
    group_end: unsafe extern "C" fn() -> i32,
    comm_abort: unsafe extern "C" fn(*mut c_void) -> i32,
    get_async_error: unsafe extern "C" fn(*mut c_void, *mut i32) -> i32,
    error_string: unsafe extern "C" fn(i32) -> *const c_char,
}

/// NCCL, loaded once per process, or why it cannot be.
fn api() -> Result<&'static Api, String> {
    static API: OnceLock<Result<Api, String>> = OnceLock::new();
    API.get_or_init(load).as_ref().map_err(|e| e.clone())
}

fn load() -> Result<Api, String> {
    // gptrain's search first (pip wheels, CUDA homes), then the system loader by name
    let found = libs::open(NCCL);
    let name = found.as_ref().map_or_else(|_| "libnccl.so.2".into(), |p| p.clone().into_os_string());
    // SAFETY: loading NCCL runs its initialisers, which have no preconditions on this process;
    // the handle is leaked, so every function taken from it lives as long as the process.
    let lib = match unsafe { libloading::Library::new(&name) } {
        Ok(l) => Box::leak(Box::new(l)),
        Err(_) => return Err(found.err().unwrap_or_else(|| format!("{} could not be loaded", name.to_string_lossy()))),
    };
    macro_rules! get {
        ($name:literal) => {
            // SAFETY: the symbol's type is nccl.h's declaration of it, written out in `Api`.
            *unsafe { lib.get($name) }.map_err(|e| format!("NCCL has no {}: {e}", String::from_utf8_lossy($name)))?
        };
    }
    let get_version: unsafe extern "C" fn(*mut i32) -> i32 = get!(b"ncclGetVersion");
    let mut v = 0;
    // SAFETY: writes one int we own.
    unsafe { get_version(&mut v) };
    // NCCL_VERSION_CODE: major * 10000 + minor * 100 + patch since 2.9, major * 1000 +
    // minor * 100 + patch before
    let (version, code) = match v >= 20900 {
        true => (format!("{}.{}.{}", v / 10000, v / 100 % 100, v % 100), v),
        false => (format!("{}.{}.{}", v / 1000, v / 100 % 10, v % 100), v / 1000 * 10000 + v % 1000),
    };
    let path = found.ok().or_else(|| loaded_path("libnccl.so"));
    Ok(Api {
        version,
        path,
        code,
        get_unique_id: get!(b"ncclGetUniqueId"),
        comm_init_rank: get!(b"ncclCommInitRank"),
        all_reduce: get!(b"ncclAllReduce"),
        reduce: get!(b"ncclReduce"),
        broadcast: get!(b"ncclBroadcast"),
        group_start: get!(b"ncclGroupStart"),
        group_end: get!(b"ncclGroupEnd"),
        comm_abort: get!(b"ncclCommAbort"),
        get_async_error: get!(b"ncclCommGetAsyncError"),
        error_string: get!(b"ncclGetErrorString"),
    })
}

/// NCCL's version ("2.21.5"), or why it cannot be loaded (one line, with where it looked).
pub fn version() -> Result<String, String> {
    api().map(|a| a.version.clone())
}

/// NCCL's version as NCCL_VERSION_CODE of 2.9 on (22105 for 2.21.5), 0 when it cannot be
/// loaded: ranks must all run the same one (NCCL refuses a communicator of mixed versions).
pub fn version_code() -> i32 {
    api().map_or(0, |a| a.code)
}

/// A [`version_code`] as "2.21.5".
pub fn version_of(code: i32) -> String {
    format!("{}.{}.{}", code / 10000, code / 100 % 100, code % 100)
}

/// Whether this NCCL lets several ranks share one GPU: 2.30 and newer do when
/// `NCCL_MULTI_RANK_GPU_ENABLE=1` (older ones refuse such ranks).
pub fn ranks_may_share_a_gpu() -> bool {
    api().is_ok_and(|a| a.code >= 23000) && std::env::var("NCCL_MULTI_RANK_GPU_ENABLE").is_ok_and(|v| v == "1")
}

/// A failed NCCL call as one line; with the likely cause when this NCCL is built for a newer
/// CUDA than the driver's (the same `libnccl.so.2` name is shipped for CUDA 12 and 13).
fn check(a: &Api, what: &str, r: i32) -> Result<()> {
    if r == 0 {
        return Ok(());
    }
    // SAFETY: NCCL returns a static string for every result code.
    let s = unsafe { CStr::from_ptr((a.error_string)(r)) }.to_string_lossy().into_owned();
    let why = libs::driver_version().and_then(|driver| {
        let p = a.path.as_deref()?;
        too_new_for_driver(p, built_for(p)?, driver)
    });
    match why {
        Some(why) => bail!("NCCL {what} failed: {s} ({r}): {why}"),
        None => bail!("NCCL {what} failed: {s} ({r})"),
    }
}

/// The CUDA version (12040 for 12.4) that the NCCL at `path` was built for, from the version
/// string every build embeds ("NCCL version 2.21.5+cuda12.4"); None when it has none. Read in
/// 1 MiB chunks, each overlapping the last by more than the string's length.
fn built_for(path: &std::path::Path) -> Option<i32> {
    use std::io::Read;
    static VERSION: LazyLock<regex::bytes::Regex> =
        LazyLock::new(|| regex::bytes::Regex::new(r"NCCL version [0-9]+\.[0-9]+\.[0-9]+[^\x00+]{0,16}\+cuda([0-9]+)\.([0-9]+)").unwrap());
    const KEEP: usize = 64;
    let mut f = std::fs::File::open(path).ok()?;
    let mut buf = vec![0u8; 1 << 20];
    let mut have = 0; // bytes of buf in use: the previous chunk's tail, then this chunk's
    loop {
        let n = f.read(&mut buf[have..]).ok()?;
        let end = have + n;
        // a match that reaches the end of what has been read may be cut short: read on first
        if let Some(c) = VERSION.captures(&buf[..end]).filter(|c| n == 0 || c.get(0).unwrap().end() + 8 < end) {
            let int = |i: usize| std::str::from_utf8(&c[i]).ok()?.parse::<i32>().ok();
            return Some(int(1)? * 1000 + int(2)? * 10);
        }
        if n == 0 {
            return None;
        }
        let keep = end.min(KEEP);
        buf.copy_within(end - keep..end, 0);
        have = keep;
    }
}

/// Why an NCCL built for CUDA `built` cannot run on a driver for CUDA `driver`, if it cannot
/// (a newer minor version runs on an older driver of the same major one).
fn too_new_for_driver(path: &std::path::Path, built: i32, driver: i32) -> Option<String> {
    (built / 1000 > driver / 1000).then(|| libs::too_new_for_driver(NCCL, path, &libs::cuda_version(built), driver))
}

/// The path of a loaded library whose file name starts with `name`, from /proc/self/maps.
fn loaded_path(name: &str) -> Option<std::path::PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    // a line's path is all from its first '/' (a path may hold spaces)
    maps.lines()
        .filter_map(|l| l.find('/').map(|i| &l[i..]))
        .find(|p| std::path::Path::new(p).file_name().is_some_and(|f| f.to_string_lossy().starts_with(name)))
        .map(std::path::PathBuf::from)
}

/// A fresh unique id (rank 0's, for the others to join).
pub fn unique_id() -> Result<UniqueId> {
    let a = api().map_err(anyhow::Error::msg)?;
    let mut id = UniqueId { internal: [0; 128] };
    // SAFETY: writes the 128-byte struct we own.
    check(a, "ncclGetUniqueId", unsafe { (a.get_unique_id)(&mut id) })?;
    Ok(id)
}

/// This rank's communicator, on the GPU current on this thread when it was made.
pub struct Comm {
    raw: *mut c_void,
}

// SAFETY: an NCCL communicator may be used from any thread, one call at a time; the backend
// keeps it behind a Mutex.
unsafe impl Send for Comm {}

impl Comm {
    /// Joins the communicator of `size` ranks that `id` names, as rank `rank`; the current
    /// CUDA context is the GPU's. Waits until every rank has joined.
    pub fn init(rank: usize, size: usize, id: UniqueId) -> Result<Comm> {
        let a = api().map_err(anyhow::Error::msg)?;
        let mut raw = std::ptr::null_mut();
        // SAFETY: writes one pointer we own; `id` is passed by value as nccl.h declares it.
        let r = unsafe { (a.comm_init_rank)(&mut raw, size as i32, id, rank as i32) };
        // a late failure may leave a half-made communicator: freed by the Drop
        let comm = Comm { raw };
        check(a, "ncclCommInitRank", r)?;
        Ok(comm)
    }

    /// An error NCCL met in the background (a peer gone, the network), if any.
    pub fn async_error(&self) -> Result<()> {
        let a = api().map_err(anyhow::Error::msg)?;
        let mut e = 0;
        // SAFETY: `raw` is a live communicator; the call writes one int we own.
        check(a, "ncclCommGetAsyncError", unsafe { (a.get_async_error)(self.raw, &mut e) })?;
        // ncclInProgress: an operation still under way (non-blocking communicators), not an error
        if e == IN_PROGRESS {
            return Ok(());
        }
        check(a, "a collective", e)
    }

    /// Sums the `count` f32 at device address `ptr` over the ranks, in place, on `stream`.
    ///
    /// # Safety
    /// `ptr` holds `count` f32 on this communicator's GPU, and `stream` is a stream of it.
    pub unsafe fn sum_f32(&self, ptr: u64, count: usize, stream: *mut c_void) -> Result<()> {
        let a = api().map_err(anyhow::Error::msg)?;
        let p = ptr as *mut c_void;
        // SAFETY: the caller's promise; in place is allowed (send == recv).
        check(a, "ncclAllReduce", unsafe { (a.all_reduce)(p, p, count, FLOAT32, SUM, self.raw, stream) })
    }

    /// ZeRO-1's gradient sum: for each rank r, the f32 at `ptr` + `parts[r]` (element offset,
    /// count) summed over the ranks into rank r's, in place, on `stream` (one NCCL group of
    /// reduces, one per root: a reduce-scatter whose parts may differ in size).
    ///
    /// # Safety
    /// `ptr` holds every part's f32 on this communicator's GPU, and `stream` is a stream of it.
    pub unsafe fn sum_to_owners(&self, ptr: u64, parts: &[(usize, usize)], stream: *mut c_void) -> Result<()> {
        let a = api().map_err(anyhow::Error::msg)?;
        self.grouped(a, parts, |root, (off, count)| {
            let p = (ptr + 4 * off as u64) as *mut c_void;
            // SAFETY: the caller's promise; in place is allowed (send == recv).
            check(a, "ncclReduce", unsafe { (a.reduce)(p, p, count, FLOAT32, SUM, root, self.raw, stream) })
        })
    }

    /// ZeRO-1's parameter exchange: for each rank r, the bytes at `ptr` + `parts[r]` (byte
    /// offset, count) copied from rank r to every rank, in place, on `stream` (one NCCL group of
    /// broadcasts, one per root: an all-gather whose parts may differ in size).
    ///
    /// # Safety
    /// `ptr` holds every part's bytes on this communicator's GPU, and `stream` is a stream of it.
    pub unsafe fn copy_from_owners(&self, ptr: u64, parts: &[(usize, usize)], stream: *mut c_void) -> Result<()> {
        let a = api().map_err(anyhow::Error::msg)?;
        self.grouped(a, parts, |root, (off, count)| {
            let p = (ptr + off as u64) as *mut c_void;
            // SAFETY: the caller's promise; in place is allowed (send == recv).
            check(a, "ncclBroadcast", unsafe { (a.broadcast)(p, p, count, UINT8, root, self.raw, stream) })
        })
    }

    /// `call(root, part)` for each non-empty part, between ncclGroupStart and ncclGroupEnd (so
    /// NCCL runs them together rather than one root after another).
    fn grouped(&self, a: &Api, parts: &[(usize, usize)], mut call: impl FnMut(i32, (usize, usize)) -> Result<()>) -> Result<()> {
        // SAFETY: no arguments; every group start is ended below, also on an error
        check(a, "ncclGroupStart", unsafe { (a.group_start)() })?;
        let each = parts.iter().enumerate().filter(|(_, p)| p.1 > 0).try_for_each(|(r, &p)| call(r as i32, p));
        // SAFETY: ends the group started above
        let end = check(a, "ncclGroupEnd", unsafe { (a.group_end)() });
        each.and(end)
    }
}

impl Drop for Comm {
    /// `ncclCommAbort`, which frees the communicator without waiting for the other ranks (the
    /// caller has waited for its own sums; a rank that has gone must not hang this one).
    fn drop(&mut self) {
        if self.raw.is_null() {
            return;
        }
        if let Ok(a) = api() {
            // SAFETY: `raw` came from ncclCommInitRank and is freed once, here.
            unsafe { (a.comm_abort)(self.raw) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cuda_an_nccl_is_built_for_is_read_from_its_version_string() {
        let dir = std::env::temp_dir().join(format!("gptrain-nccl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("libnccl.so.2");
        // the string across the first read's 1 MiB boundary, after a false start
        let mut bytes = vec![7u8; (1 << 20) - 20];
        bytes.extend_from_slice(b"NCCL version \0\0");
        bytes.extend_from_slice(b"NCCL version 2.28.3+cuda13.0\0tail");
        std::fs::write(&file, &bytes).unwrap();
        assert_eq!(built_for(&file), Some(13000));
        std::fs::write(&file, b"xxNCCL version 2.21.5+cuda12.4\0").unwrap();
        assert_eq!(built_for(&file), Some(12040));
        std::fs::write(&file, b"no version here").unwrap();
        assert_eq!(built_for(&file), None);
        std::fs::remove_dir_all(&dir).unwrap();

        let e = too_new_for_driver(&file, 13000, 12040).unwrap();
        assert!(e.contains("is for CUDA 13.0") && e.contains("supports CUDA 12.4") && e.contains("nvidia-nccl-cu12"), "{e}");
        assert_eq!(too_new_for_driver(&file, 12090, 12040), None); // minor versions run on older 12.x drivers
        assert_eq!(too_new_for_driver(&file, 12040, 13000), None);
    }
}
