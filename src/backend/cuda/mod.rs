//! The CUDA backend: buffers in GPU memory, every op a kernel of `kernels/*.cu` (compiled by
//! NVRTC for the card, see [`compile`]) or a cuBLASLt matmul ([`blas`]), all on one stream,
//! with no host synchronisation except in `download` and `synchronize`.
//!
//! Storage types follow ARCHITECTURE.md's mixed-precision table: a buffer holds f32, bf16, f16,
//! u32 or f64; `upload` of f32 host data into a bf16/f16 tensor rounds (to nearest even) and
//! `download` widens, so host code sees f32 only. Every reduction has a fixed order (no
//! atomics), so a run is bitwise reproducible on one card and library version.
//!
//! Everything here is loaded at run time (driver, cuBLASLt, NVRTC); [`select`] says whether
//! this machine can run it, and why not, before anything is called.
//!
//! Status: its kernels NVRTC-checked, and all of it run in CI on `tools/cuda-emu` (the CPU
//! standing in for the driver, cuBLASLt and NVRTC); it has not yet run on a GPU.

mod ahead;
pub mod blas;
pub mod compile;
mod launch;
pub mod libs;
pub mod nccl;
mod run;
pub mod select;

use super::{Backend, Buffers, DType, DeviceInfo, Host, MemoryUse, Op, Precision, Span, Tensor};
use crate::units::human_bytes;
use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::{
    result as drv, sys, CudaContext, CudaEvent, CudaModule, CudaSlice, CudaStream, DevicePtr, DeviceRepr, DriverError, ValidAsZeroBits,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Bytes the backend allocates when it opens, before any model buffer: cuBLASLt's workspace,
/// the sum of squares' per-block partials (f64) and the column sums' per-chunk partials (f32).
pub const SCRATCH_BYTES: usize = blas::WORKSPACE_BYTES + run::PARTIALS * run::PIECES_PER_LAUNCH * 8 + run::COLUMN_PARTIALS * 4;

/// One GPU buffer: `len` elements of `dtype` at device address `ptr` (owned by `mem`).
pub struct CudaBuf {
    /// Owns the allocation (freed, and uncounted, on drop).
    _mem: Counted<u8>,
    ptr: u64,
    len: usize,
    dtype: DType,
}

/// The bytes of device memory the backend has allocated: every model buffer, cuBLASLt's
/// workspace and the kernels' scratch, counted at each allocation and free.
#[derive(Default)]
struct Counter {
    current: AtomicU64,
    peak: AtomicU64,
}

/// A device allocation of `len` elements of `T`, counted in a [`Counter`] while it lives.
struct Counted<T> {
    slice: CudaSlice<T>,
    bytes: u64,
    counter: Arc<Counter>,
}

impl<T> Drop for Counted<T> {
    fn drop(&mut self) {
        self.counter.current.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl Counter {
    /// `len` zeroed elements of `T` on `stream`, counted here until dropped.
    fn alloc<T: DeviceRepr + ValidAsZeroBits>(self: &Arc<Self>, stream: &Arc<CudaStream>, len: usize) -> Result<Counted<T>, DriverError> {
        let slice = stream.alloc_zeros::<T>(len)?;
        let bytes = (len * std::mem::size_of::<T>()) as u64;
        let now = self.current.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
        Ok(Counted { slice, bytes, counter: self.clone() })
    }
}

/// The first rank of a data-parallel run whose process has ended, if any (watched while an NCCL
/// sum runs: NCCL itself does not report a peer on the same machine that died mid-sum; its
/// kernels wait for it).
pub type RankGone = Box<dyn Fn() -> Option<usize> + Send>;

/// The CUDA backend on one GPU (cheap to clone: the state is shared).
#[derive(Clone)]
pub struct Cuda {
    inner: Arc<Inner>,
}

struct Inner {
    /// The data-parallel run's NCCL communicator, once this rank has joined one
    /// ([`Cuda::join_ranks`]), how long a sum may take, and what says a rank has gone; freed
    /// before the context.
    ranks: Mutex<Option<(nccl::Comm, std::time::Duration, RankGone)>>,
    card: select::Card,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// Compiled kernel families by (family, variant: storage type and tiled head size), each
    /// loaded when a run first launches one of its kernels.
    modules: Mutex<HashMap<(&'static str, compile::Variant), Arc<CudaModule>>>,
    /// The variants a run has said it will launch ([`Backend::prepare`]), compiled (or read
    /// from the cache) on background threads meanwhile.
    ahead: ahead::Ahead,
    /// Kernels by name, looked up in `modules` on first use, with what the driver says of
    /// their launches.
    funcs: Mutex<HashMap<String, launch::Kernel>>,
    blas: blas::Blas,
    /// cuBLASLt's workspace, held for `blas`.
    _workspace: Counted<u8>,
    /// Small scratch the kernels need: the sum of squares' per-block partials (f64,
    /// [`run::PARTIALS`] for each of [`run::PIECES_PER_LAUNCH`] pieces) and attention backward's per-row dot products (f32, B x NH x T).
    partials: Counted<f64>,
    /// The column sums' (bias and LayerNorm gradients) partials, per chunk of rows (f32,
    /// [`run::COLUMN_PARTIALS`]).
    columns: Counted<f32>,
    rowdot: Mutex<Option<Counted<f32>>>,
    /// The two timing events `run_timed` records around an op (start, end), made on first use.
    timing: Mutex<Option<(CudaEvent, CudaEvent)>>,
    /// What all of the above and every `CudaBuf` hold (bytes).
    memory: Arc<Counter>,
    /// The device's free memory when the backend opened, after its context (bytes).
    free_at_open: Option<usize>,
    tf32: bool,
    /// Whether bf16/f16 attention may run on the tensor-core kernels (`run.rs`); false when
    /// `GPTRAIN_CUDA_ATTENTION=tiled` asks for the CUDA-core ones.
    tensor_cores: bool,
    /// Whether the MLP's GELU may run in cuBLASLt's epilogue (`run.rs`); false when
    /// `GPTRAIN_CUDA_GELU_FUSION=0`.
    gelu_fusion: bool,
    /// `GPTRAIN_CUDA_SYNC=1`: wait for each op's kernels, so a fault names its op.
    sync_each_op: bool,
    sms: usize,
    /// The most shared memory, static and dynamic, a block may use once its kernel opts in
    /// (bytes; 48 KiB without opting in).
    shared_optin: usize,
}

/// `GPTRAIN_CUDA_SYNC=1` waits for every op before the next is launched, so a kernel that
/// faults (an illegal address, a misaligned access) is reported with the op that launched it
/// rather than at the step's next copy; slow, for finding a fault. `0` or unset: ops queue.
fn sync_each_op() -> Result<bool> {
    match std::env::var("GPTRAIN_CUDA_SYNC").as_deref() {
        Err(_) | Ok("") | Ok("0") => Ok(false),
        Ok("1") => Ok(true),
        Ok(other) => bail!("GPTRAIN_CUDA_SYNC={other:?}: use 1 (wait for each op) or 0 (the default)"),
    }
}

/// `GPTRAIN_CUDA_ATTENTION`: `tensor` (or unset) lets bf16/f16 attention run on tensor cores,
/// `tiled` keeps it on the CUDA-core kernels (to compare the two on one card).
fn tensor_core_attention() -> Result<bool> {
    match std::env::var("GPTRAIN_CUDA_ATTENTION").as_deref() {
        Err(_) | Ok("") | Ok("tensor") => Ok(true),
        Ok("tiled") => Ok(false),
        Ok(other) => bail!("GPTRAIN_CUDA_ATTENTION={other:?}: use `tensor` (the default) or `tiled`"),
    }
}

/// `GPTRAIN_CUDA_GELU_FUSION`: `1` (or unset) lets bf16/f16 runs compute the MLP's GELU in
/// cuBLASLt's epilogue, `0` keeps gptrain's GELU kernels (to compare the two on one card).
fn gelu_fusion() -> Result<bool> {
    match std::env::var("GPTRAIN_CUDA_GELU_FUSION").as_deref() {
        Err(_) | Ok("") | Ok("1") => Ok(true),
        Ok("0") => Ok(false),
        Ok(other) => bail!("GPTRAIN_CUDA_GELU_FUSION={other:?}: use 1 (the default) or 0"),
    }
}

impl Cuda {
    /// The backend on GPU `ordinal` (checked by [`select::select`] first), computing f32
    /// matmuls with TF32 tensor cores when `tf32`. Kernels are compiled for the card (or read
    /// from the cache) a family and storage type at a time: those a run plans
    /// ([`Backend::prepare`]) on background threads, any other at its first launch.
    pub fn new(ordinal: usize, tf32: bool) -> Result<Cuda> {
        let card = select::find_card(Some(ordinal)).map_err(anyhow::Error::msg)?;
        let ctx = CudaContext::new(ordinal).map_err(|e| anyhow!("cuda:{ordinal}: could not create a context ({e:?})"))?;
        // SAFETY: gptrain issues all work on one stream, so cudarc's cross-stream events are not
        // needed; kernels get raw addresses, which its tracking does not see anyway.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        compile::nvrtc().map_err(anyhow::Error::msg)?; // kernels compile at run time: NVRTC must load
        let free_at_open = ctx.mem_get_info().ok().map(|(free, _)| free);
        let memory = Arc::new(Counter::default());
        let workspace =
            memory.alloc::<u8>(&stream, blas::WORKSPACE_BYTES).map_err(|e| anyhow!("cuda:{ordinal}: cuBLASLt workspace: {e:?}"))?;
        let blas = blas::Blas::new(address(&workspace.slice, &stream))?;
        let partials =
            memory.alloc::<f64>(&stream, run::PARTIALS * run::PIECES_PER_LAUNCH).map_err(|e| anyhow!("cuda:{ordinal}: scratch: {e:?}"))?;
        let columns = memory.alloc::<f32>(&stream, run::COLUMN_PARTIALS).map_err(|e| anyhow!("cuda:{ordinal}: scratch: {e:?}"))?;
        let sms = ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT).unwrap_or(1).max(1) as usize;
        let optin = ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN);
        let shared_optin = optin.map_or(0, |b| b.max(0) as usize).max(launch::SHARED);
        let cc = card.cc;
        if let Some(dir) = compile::cache_dir() {
            compile::tidy_cache(&dir);
        }
        let inner = Inner {
            ranks: Mutex::new(None),
            card,
            ctx,
            stream,
            modules: Mutex::new(HashMap::new()),
            ahead: ahead::Ahead::new(cc, compile::cache_dir()),
            funcs: Mutex::new(HashMap::new()),
            blas,
            _workspace: workspace,
            partials,
            columns,
            rowdot: Mutex::new(None),
            timing: Mutex::new(None),
            memory,
            free_at_open,
            tf32,
            tensor_cores: tensor_core_attention()?,
            gelu_fusion: gelu_fusion()?,
            sync_each_op: sync_each_op()?,
            sms,
            shared_optin,
        };
        Ok(Cuda { inner: Arc::new(inner) })
    }

    /// What `gptrain check` prints of this GPU: the card, its compute capability and memory, the
    /// driver's CUDA version, and the NVRTC and cuBLASLt it loaded (version, path).
    pub fn setup(&self) -> Vec<(String, String)> {
        let c = &self.inner.card;
        let gib = |b: usize| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64);
        let memory = self.inner.ctx.mem_get_info().map_or("unknown".into(), |(free, total)| format!("{} ({} free)", gib(total), gib(free)));
        let driver = libs::driver_version().map_or("unknown".into(), |v| format!("CUDA {}", libs::cuda_version(v)));
        let lib = |l: libs::Lib| libs::open(l).map_or_else(|e| e, |p| p.display().to_string());
        let nvrtc = compile::nvrtc().map_or_else(|e| e, |(a, b)| format!("{a}.{b}"));
        let cublaslt = select::cublaslt_version().map_or_else(|e| e, |(_, v)| v);
        [
            ("device", format!("cuda:{}: {}", c.ordinal, c.name)),
            ("compute", format!("capability {}.{}, {} SMs", c.cc.0, c.cc.1, self.inner.sms)),
            ("memory", memory),
            ("driver", driver),
            ("nvrtc", format!("{nvrtc} ({})", lib(libs::NVRTC))),
            ("cublaslt", format!("{cublaslt} ({})", lib(libs::CUBLASLT))),
            (
                "kernels",
                format!(
                    "{} families, compiled for sm_{}{} per storage type on parallel threads ahead of their first launch (cached in {})",
                    compile::SOURCES.len(),
                    c.cc.0,
                    c.cc.1,
                    compile::cache_dir().map_or("no cache".into(), |d| d.display().to_string())
                ),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The first usable GPU in f32, or why there is none (for tests: "skipped: ...").
    pub fn first() -> Result<Cuda> {
        match select::select("cuda", Precision::F32)? {
            select::Selected::Cuda { ordinal, .. } => Cuda::new(ordinal, false),
            select::Selected::Cpu { .. } => bail!("no CUDA device"),
        }
    }

    /// The device address of tensor `t`, after checking its buffer, type and bounds (a bug in
    /// a layout if not, never input).
    fn ptr(&self, bufs: &Buffers<CudaBuf>, t: Tensor) -> u64 {
        let b = bufs.get(t.buf);
        assert!(b.dtype == t.dtype, "{t:?} in a {:?} buffer", b.dtype);
        assert!(t.span.end() <= b.len, "{t:?} out of bounds ({} elements)", b.len);
        b.ptr + (t.span.off * t.dtype.bytes()) as u64
    }

    fn cu_stream(&self) -> sys::CUstream {
        self.inner.stream.cu_stream()
    }

    /// The one-line error for a failed allocation of `what`: out of memory says so, with the
    /// card's free memory and the way out (the run's checkpoints are left as they were).
    /// (Without the card's name: `run` and `alloc` put it in front.)
    fn alloc_error(&self, what: &str, e: cudarc::driver::DriverError) -> anyhow::Error {
        if e.0 != sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            return anyhow!("could not allocate {what} ({e:?})");
        }
        let free = self.inner.ctx.mem_get_info().map(|(f, t)| format!(" ({} free of {})", human_bytes(f as u64), human_bytes(t as u64)));
        anyhow!(
            "out of GPU memory allocating {what}{}; free the card (`nvidia-smi` lists the processes holding it) or make the run smaller (a lower batch_size, with more gradient accumulation for the same tokens per iteration, or block_size); checkpoints already written are intact",
            free.unwrap_or_default()
        )
    }

    /// Makes this GPU's context current on the calling thread (ops may come from any worker
    /// thread; the raw driver and cuBLASLt calls act on the current context).
    fn bind(&self) -> Result<()> {
        self.inner.ctx.bind_to_thread().map_err(|e| anyhow!("cuda:{}: binding the context ({e:?})", self.inner.card.ordinal))
    }

    /// The GPU's UUID (the driver's), the same for two ranks that share one card whatever
    /// their `CUDA_VISIBLE_DEVICES` numbering (NCCL refuses such ranks), and different for any
    /// two cards, on one machine or two.
    pub fn uuid(&self) -> Result<[u8; 16]> {
        let u = self.inner.ctx.uuid().map_err(|e| anyhow!("cuda:{}: the GPU's UUID ({e:?})", self.inner.card.ordinal))?;
        Ok(u.bytes.map(|b| b as u8))
    }

    /// Joins the NCCL communicator `id` names as rank `rank` of `size` (every rank must call it:
    /// it waits for all); from then on [`Backend::sum_over_ranks`] sums on the GPUs, each sum
    /// given at most `timeout` to finish and watched with `gone`.
    pub fn join_ranks(&self, rank: usize, size: usize, id: nccl::UniqueId, timeout: std::time::Duration, gone: RankGone) -> Result<()> {
        self.bind()?;
        let comm = nccl::Comm::init(rank, size, id).with_context(|| format!("cuda:{}", self.inner.card.ordinal))?;
        *self.inner.ranks.lock().unwrap_or_else(|e| e.into_inner()) = Some((comm, timeout, gone));
        Ok(())
    }

    /// Issues `call` (NCCL collectives on the backend's stream) with this rank's communicator,
    /// then waits for it ([`Cuda::wait_for_sum`]); on a failure, aborts the communicator (the
    /// other ranks' collectives fail rather than wait on this one) and says `what` failed.
    fn over_ranks(&self, what: &str, call: impl FnOnce(&nccl::Comm, *mut std::ffi::c_void) -> Result<()>) -> Result<()> {
        let mut ranks = self.inner.ranks.lock().unwrap_or_else(|e| e.into_inner());
        let Some((comm, timeout, gone)) = ranks.as_ref() else { bail!("cuda:{}: no NCCL communicator", self.inner.card.ordinal) };
        self.bind()?;
        let stream = self.cu_stream() as *mut std::ffi::c_void;
        let done = call(comm, stream).and_then(|()| self.wait_for_sum(comm, *timeout, gone));
        if let Err(e) = done {
            ranks.take(); // ncclCommAbort
            return Err(e.context(format!("cuda:{}: {what}", self.inner.card.ordinal)));
        }
        Ok(())
    }

    /// Waits for `stream`'s work (an NCCL sum among it) while watching `comm` and the ranks: an
    /// error NCCL reports, a rank whose process has ended (`gone`: NCCL's kernels would wait
    /// for it without an error), or no end within `timeout`, aborts the communicator and ends
    /// the run with one line.
    fn wait_for_sum(&self, comm: &nccl::Comm, timeout: std::time::Duration, gone: &RankGone) -> Result<()> {
        let start = std::time::Instant::now();
        let mut watched = start;
        loop {
            // SAFETY: the backend's stream, alive as long as the backend; a query has no effects.
            match unsafe { sys::cuStreamQuery(self.cu_stream()) } {
                sys::CUresult::CUDA_SUCCESS => return Ok(()),
                sys::CUresult::CUDA_ERROR_NOT_READY => {}
                e => bail!("waiting for the sum over ranks ({e:?})"),
            }
            comm.async_error()?;
            // the ranks' links every 20 ms (a system call per link), not at every poll
            if watched.elapsed() >= std::time::Duration::from_millis(20) {
                watched = std::time::Instant::now();
                if let Some(r) = gone() {
                    bail!("rank {r} stopped during NCCL's sum over the ranks (see its output for why)");
                }
            }
            if start.elapsed() > timeout {
                bail!(
                    "NCCL's collective over the ranks did not finish within {} s (GPTRAIN_DIST_TIMEOUT_S): a rank has gone or the network failed",
                    timeout.as_secs()
                );
            }
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
    }
}

impl Drop for Inner {
    /// Frees the NCCL communicator with this GPU's context current (NCCL would otherwise make
    /// GPU 0's current on a thread that has none, creating a context there).
    fn drop(&mut self) {
        let ranks = self.ranks.get_mut().unwrap_or_else(|e| e.into_inner());
        if ranks.is_some() {
            let _ = self.ctx.bind_to_thread();
            ranks.take();
        }
    }
}

/// `end - start` in milliseconds, for two events recorded with timing on the same stream;
/// waits for both. cudarc's `CudaEvent::elapsed_ms` calls `cuEventElapsedTime_v2`, which
/// drivers before CUDA 12.8 do not have (cudarc would panic looking it up). Both names take
/// the same arguments, and every driver has the first (CUDA 13's keep it for older programs),
/// so this calls `_v2` where the driver has it, else the first.
fn elapsed_ms(start: &CudaEvent, end: &CudaEvent) -> Result<f32, DriverError> {
    type ElapsedTime = unsafe extern "C" fn(*mut f32, sys::CUevent, sys::CUevent) -> sys::CUresult;
    static FUNC: OnceLock<Option<ElapsedTime>> = OnceLock::new();
    let func = FUNC.get_or_init(|| {
        // SAFETY: the driver is loaded (the events exist), so this opens the same library
        // again (by its soname) and keeps it open for the life of the process.
        let lib = unsafe { libloading::Library::new("libcuda.so.1") }.ok()?;
        let lib: &'static libloading::Library = Box::leak(Box::new(lib));
        // SAFETY: both symbols have the type above (cuda.h).
        let get = |name: &[u8]| unsafe { lib.get::<ElapsedTime>(name) }.ok().map(|f| *f);
        get(b"cuEventElapsedTime_v2").or_else(|| get(b"cuEventElapsedTime"))
    });
    let func = func.ok_or(DriverError(sys::CUresult::CUDA_ERROR_NOT_FOUND))?;
    start.synchronize()?;
    end.synchronize()?;
    let mut ms = 0f32;
    // SAFETY: both events were created with timing by this context and recorded, and the
    // waits above returned; the call writes one float we own.
    unsafe { func(&mut ms, start.cu_event(), end.cu_event()) }.result()?;
    Ok(ms)
}

/// The device address of `s`.
fn address<T>(s: &CudaSlice<T>, stream: &Arc<CudaStream>) -> u64 {
    let (p, _sync) = s.device_ptr(stream);
    p
}

/// The device-table entry for the driver's name of a card (`NVIDIA H100 80GB HBM3` -> h100),
/// trying the whole name, then without its last words.
pub fn table_device(driver_name: &str) -> Option<crate::perf::device::Device> {
    let words: Vec<&str> = driver_name.split_whitespace().collect();
    (1..=words.len()).rev().find_map(|n| crate::perf::device::lookup(&words[..n].join(" ")).ok()).filter(|d| d.is_gpu())
}

/// f32 values in storage type `t`, as bytes (bf16/f16 rounded to nearest even).
fn f32_bytes(v: &[f32], t: DType) -> Vec<u8> {
    match t {
        DType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::Bf16 => v.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect(),
        DType::F16 => v.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect(),
        t => panic!("f32 data into a {t:?} tensor"),
    }
}

/// Bytes of storage type `t` widened to f32.
fn bytes_f32(b: &[u8], t: DType) -> Vec<f32> {
    match t {
        DType::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        DType::Bf16 => b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        DType::F16 => b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        t => panic!("{t:?} data read as f32"),
    }
}

impl Backend for Cuda {
    type Buf = CudaBuf;

    fn joined_ranks(&self) -> bool {
        self.inner.ranks.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    fn sum_over_ranks(&self, bufs: &mut Buffers<CudaBuf>, t: Tensor) -> Result<()> {
        assert!(t.dtype == DType::F32, "ranks sum f32 tensors: {t:?}");
        // SAFETY: `ptr` checked `t` (f32, in bounds) in a buffer of this GPU, whose context made
        // the communicator; the stream is the backend's, so the sum follows the step's kernels.
        self.over_ranks("summing over ranks", |comm, stream| unsafe { comm.sum_f32(self.ptr(bufs, t), t.len(), stream) })
    }

    fn reduce_to_owners(&self, bufs: &mut Buffers<CudaBuf>, t: Tensor, parts: &[Span]) -> Result<()> {
        assert!(t.dtype == DType::F32, "ranks sum f32 tensors: {t:?}");
        assert!(parts.iter().all(|p| p.end() <= t.len()), "parts {parts:?} of {t:?}");
        let parts: Vec<(usize, usize)> = parts.iter().map(|p| (p.off, p.len)).collect();
        // SAFETY: `ptr` checked `t` (f32, in bounds) and every part lies in it (asserted), in a
        // buffer of this GPU, whose context made the communicator; the backend's stream.
        self.over_ranks("summing to the owners", |comm, stream| unsafe { comm.sum_to_owners(self.ptr(bufs, t), &parts, stream) })
    }

    fn gather_from_owners(&self, bufs: &mut Buffers<CudaBuf>, t: Tensor, parts: &[Span]) -> Result<()> {
        assert!(parts.iter().all(|p| p.end() <= t.len()), "parts {parts:?} of {t:?}");
        let e = t.dtype.bytes();
        let parts: Vec<(usize, usize)> = parts.iter().map(|p| (p.off * e, p.len * e)).collect();
        // SAFETY: `ptr` checked `t` (in bounds) and every part lies in it (asserted; bytes here),
        // in a buffer of this GPU, whose context made the communicator; the backend's stream.
        self.over_ranks("copying from the owners", |comm, stream| unsafe { comm.copy_from_owners(self.ptr(bufs, t), &parts, stream) })
    }

    fn name(&self) -> String {
        let c = &self.inner.card;
        format!("cuda:{} ({}, {} SMs)", c.ordinal, c.name, self.inner.sms)
    }

    fn prepare(&self, plan: &crate::backend::Plan) {
        let modules = self.inner.modules.lock().unwrap_or_else(|e| e.into_inner());
        let keys: Vec<_> = self.variants(plan).into_iter().filter(|k| !modules.contains_key(k)).collect();
        drop(modules);
        self.inner.ahead.start(&keys, plan.local_ranks);
    }

    fn warm_up_note(&self) -> Option<String> {
        self.inner.ahead.note()
    }

    fn warm_up_waited_s(&self) -> f64 {
        self.inner.ahead.waited_s()
    }

    fn device(&self, p: Precision) -> DeviceInfo {
        let c = &self.inner.card;
        let dev = table_device(&c.name);
        let memory = self.inner.ctx.mem_get_info().ok().map(|(free, total)| crate::perf::device::MemInfo {
            total: total as u64,
            available: free as u64,
            swap_free: 0,
        });
        DeviceInfo {
            description: format!("{} (cuda:{}, compute capability {}.{})", c.name, c.ordinal, c.cc.0, c.cc.1),
            peak_flops: dev.as_ref().map(|d| d.peak_flops(p)).filter(|x| *x > 0.0),
            bandwidth: dev.as_ref().map(|d| d.bandwidth_gbs * 1e9).filter(|x| *x > 0.0),
            peak_source: dev.as_ref().map_or_else(|| "not in the device table: MFU n/a".into(), |d| d.peak_source(p)),
            memory_model: crate::perf::flops::Impl::Gpu,
            memory,
            workers: self.inner.sms,
            precision_note: match p {
                Precision::F32 => "true fp32 matmuls (no TF32)",
                Precision::Tf32 => "TF32 matmuls, f32 storage",
                Precision::Bf16 => "bf16 storage and matmuls, f32 accumulation and master weights",
                Precision::F16 => "fp16 storage and matmuls, f32 accumulation and master weights, dynamic loss scaling",
            }
            .into(),
        }
    }

    fn alloc(&self, n: usize, dtype: DType) -> Result<CudaBuf> {
        let bytes = (n * dtype.bytes()).max(1);
        let what = format!("{n} {dtype:?} elements ({}) of a model buffer", human_bytes(bytes as u64));
        let card = self.inner.card.ordinal;
        let mem = self
            .inner
            .memory
            .alloc::<u8>(&self.inner.stream, bytes)
            .map_err(|e| self.alloc_error(&what, e).context(format!("cuda:{card}")))?;
        let ptr = address(&mem.slice, &self.inner.stream);
        Ok(CudaBuf { _mem: mem, ptr, len: n, dtype })
    }

    fn upload(&self, bufs: &mut Buffers<CudaBuf>, dst: Tensor, src: &Host) -> Result<()> {
        assert!(src.len() == dst.len(), "upload of {} elements into {dst:?}", src.len());
        let bytes = match (src, dst.dtype) {
            (Host::F32(v), t @ (DType::F32 | DType::Bf16 | DType::F16)) => f32_bytes(v, t),
            (Host::U32(v), DType::U32) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            (Host::F64(v), DType::F64) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            (s, t) => panic!("upload of {:?} data into a {t:?} tensor", s.dtype()),
        };
        let at = self.ptr(bufs, dst);
        self.bind()?;
        // SAFETY: `at` and the byte count lie inside the tensor's buffer (checked by `ptr`); a
        // copy from pageable host memory returns once `bytes` has been staged, so it may be
        // dropped after the call.
        unsafe { drv::memcpy_htod_async(at, &bytes, self.cu_stream()) }.map_err(|e| anyhow!("upload into {dst:?}: {e:?}"))?;
        Ok(())
    }

    fn download(&self, bufs: &Buffers<CudaBuf>, src: Tensor) -> Result<Host> {
        let at = self.ptr(bufs, src);
        let mut bytes = vec![0u8; src.len() * src.dtype.bytes()];
        self.bind()?;
        // SAFETY: the tensor lies inside its buffer (checked by `ptr`) and `bytes` has its size;
        // the stream is synchronised before `bytes` is read.
        unsafe { drv::memcpy_dtoh_async(&mut bytes, at, self.cu_stream()) }.map_err(|e| anyhow!("download of {src:?}: {e:?}"))?;
        self.synchronize().with_context(|| format!("download of {src:?}"))?;
        let words = |n: usize| bytes.chunks_exact(n);
        Ok(match src.dtype {
            DType::F32 | DType::Bf16 | DType::F16 => Host::F32(bytes_f32(&bytes, src.dtype)),
            DType::U32 => Host::U32(words(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
            DType::F64 => Host::F64(words(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()),
        })
    }

    fn auto_precision(&self) -> Precision {
        if self.inner.card.cc >= select::BF16_CC {
            Precision::Bf16
        } else {
            Precision::F16
        }
    }

    fn has_tf32(&self) -> bool {
        true
    }

    fn synchronize(&self) -> Result<()> {
        self.inner.stream.synchronize().map_err(|e| anyhow!("cuda:{}: a kernel or copy failed ({e:?})", self.inner.card.ordinal))
    }

    fn run(&self, bufs: &mut Buffers<CudaBuf>, op: &Op) -> Result<()> {
        self.bind()?;
        let name = || format!("cuda:{}: {}", self.inner.card.ordinal, op.name());
        self.run_op(bufs, op).with_context(name)?;
        if self.inner.sync_each_op {
            self.synchronize().with_context(|| format!("{} ({op:?})", name()))?;
        }
        Ok(())
    }

    /// The op's time on the GPU: between an event recorded on the stream before its kernels and
    /// one after them, so neither the launch nor the host's wait is counted. Waits for the op.
    fn run_timed(&self, bufs: &mut Buffers<CudaBuf>, op: &Op) -> Result<f64> {
        let ordinal = self.inner.card.ordinal;
        let mut timing = self.inner.timing.lock().unwrap();
        if timing.is_none() {
            // CU_EVENT_DEFAULT: events that record time (cudarc's default disables timing)
            let event = || self.inner.ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT));
            let pair = event().and_then(|start| Ok((start, event()?)));
            *timing = Some(pair.map_err(|e| anyhow!("cuda:{ordinal}: creating timing events ({e:?})"))?);
        }
        let (start, end) = timing.as_ref().expect("made above");
        let stream = &self.inner.stream;
        start.record(stream).map_err(|e| anyhow!("cuda:{ordinal}: recording an event ({e:?})"))?;
        self.run(bufs, op)?;
        end.record(stream).map_err(|e| anyhow!("cuda:{ordinal}: recording an event ({e:?})"))?;
        // waits for both events, so for the op
        let ms = elapsed_ms(start, end).map_err(|e| anyhow!("cuda:{ordinal}: {} failed or could not be timed ({e:?})", op.name()))?;
        Ok(ms as f64 / 1e3)
    }

    fn memory_use(&self) -> Option<MemoryUse> {
        let m = &self.inner.memory;
        let free_now = self.inner.ctx.mem_get_info().ok().map(|(free, _)| free);
        Some(MemoryUse {
            current: m.current.load(Ordering::Relaxed),
            peak: m.peak.load(Ordering::Relaxed),
            driver: self.inner.free_at_open.zip(free_now).map(|(open, now)| open.saturating_sub(now) as u64),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_names_find_their_table_entry() {
        for (driver, table) in [
            ("NVIDIA H100 80GB HBM3", "h100-sxm"),
            ("NVIDIA H100 PCIe", "h100-pcie"),
            ("NVIDIA H200", "h200"),
            ("NVIDIA GeForce RTX 4070", "rtx-4070"),
            ("NVIDIA A100-SXM4-80GB", "a100-80gb"),
            ("Tesla T4", "t4"),
        ] {
            assert_eq!(table_device(driver).map(|d| d.name), Some(table.to_string()), "{driver}");
        }
        assert!(table_device("NVIDIA Quadro GV100").is_none(), "an unlisted card: MFU n/a");
    }

    #[test]
    fn uploads_round_to_the_storage_type_and_downloads_widen() {
        let v = [1.0f32, 1.0 + 1.0 / 256.0 + 1e-6, -3.3, 65504.0];
        let bf = bytes_f32(&f32_bytes(&v, DType::Bf16), DType::Bf16);
        assert_eq!(bf, [1.0, 1.0 + 1.0 / 128.0, -(3.0 + 38.0 / 128.0), 65536.0]);
        let h = bytes_f32(&f32_bytes(&v, DType::F16), DType::F16);
        assert_eq!(h, [1.0, 1.0 + 1.0 / 256.0, -(3.0 + 308.0 / 1024.0), 65504.0]);
        assert_eq!(bytes_f32(&f32_bytes(&v, DType::F32), DType::F32), v);
    }
}
