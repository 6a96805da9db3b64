//! The backend boundary: every numeric op of the model, over buffers the model owns.
//!
//! Modelled on llm.c: a model owns a few big buffers (parameters, gradients, AdamW moments,
//! activations, activation gradients, token ids, step accumulators; [`BufId`]) and names each
//! operand of an op as a [`Tensor`] of one of them (buffer, span, shape, element type). A
//! backend decides where buffers live (host memory for [`cpu::Cpu`], device memory for a GPU
//! backend) and how ops run; the model, the training loop and sampling only build [`Op`]s, so
//! they never assume host memory. Every call that can fail on a device (allocation, a launch,
//! a copy) returns a `Result`.

pub mod cpu;
pub mod cuda;
pub mod ops;
pub mod tensor;

pub use ops::{AdamW, Dropout, Op, Role};
pub use tensor::{BufId, Buffers, DType, Scalar, Shape, Span, Tensor, N_SCALARS};

use anyhow::Result;

/// The numeric precision a run computes in (the config's `dtype`, nanoGPT's names): what a
/// peak FLOP/s figure is quoted for. Storage types are [`DType`]; `Tf32` is a matmul math mode
/// on f32 storage, not a storage type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Precision {
    F32,
    Tf32,
    F16,
    Bf16,
}

impl Precision {
    pub fn parse(s: &str) -> Option<Precision> {
        match s.to_ascii_lowercase().as_str() {
            "fp32" | "float32" | "f32" => Some(Precision::F32),
            "tf32" | "tfloat32" => Some(Precision::Tf32),
            "fp16" | "float16" | "f16" | "half" => Some(Precision::F16),
            "bf16" | "bfloat16" => Some(Precision::Bf16),
            _ => None,
        }
    }
    pub fn name(&self) -> &'static str {
        match self {
            Precision::F32 => "fp32",
            Precision::Tf32 => "tf32",
            Precision::F16 => "fp16",
            Precision::Bf16 => "bf16",
        }
    }
    /// Bytes per element of the activations and matmul inputs at this precision.
    pub fn bytes(&self) -> usize {
        self.storage().bytes()
    }
    /// The storage type of the tensors that feed the matmuls.
    pub fn storage(&self) -> DType {
        match self {
            Precision::F32 | Precision::Tf32 => DType::F32,
            Precision::F16 => DType::F16,
            Precision::Bf16 => DType::Bf16,
        }
    }
    /// Whether f32 matmuls may use TF32 tensor cores.
    pub fn tf32_matmuls(&self) -> bool {
        *self == Precision::Tf32
    }
}

/// Host data moving to or from a backend buffer, in the buffer's element type.
#[derive(Clone, Debug, PartialEq)]
pub enum Host {
    F32(Vec<f32>),
    U32(Vec<u32>),
    F64(Vec<f64>),
}

impl Host {
    pub fn dtype(&self) -> DType {
        match self {
            Host::F32(_) => DType::F32,
            Host::U32(_) => DType::U32,
            Host::F64(_) => DType::F64,
        }
    }
    pub fn len(&self) -> usize {
        match self {
            Host::F32(v) => v.len(),
            Host::U32(v) => v.len(),
            Host::F64(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The f32 values (a bug, not input, if this is not f32 data).
    pub fn into_f32(self) -> Vec<f32> {
        match self {
            Host::F32(v) => v,
            h => panic!("expected f32 data, got {:?}", h.dtype()),
        }
    }
    pub fn into_f64(self) -> Vec<f64> {
        match self {
            Host::F64(v) => v,
            h => panic!("expected f64 data, got {:?}", h.dtype()),
        }
    }
}

/// What a backend runs on, for the start banner, MFU and the memory check.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub description: String,
    /// Peak FLOP/s at the run's precision (None when unknown: MFU n/a).
    pub peak_flops: Option<f64>,
    /// Peak memory bandwidth, bytes/s, from the device table (None when unknown, and on the CPU).
    pub bandwidth: Option<f64>,
    /// Where that peak comes from.
    pub peak_source: String,
    /// Which memory model of `perf::flops` describes this backend's buffers.
    pub memory_model: crate::perf::flops::Impl,
    /// Bytes the device has and has free (None when unknown).
    pub memory: Option<crate::perf::device::MemInfo>,
    /// Worker threads (CPU) or streaming multiprocessors (GPU), for the banner.
    pub workers: usize,
    /// How this backend computes at the precision asked (e.g. the CPU's bf16 matmul
    /// instructions), for the banner; empty when there is nothing to say.
    pub precision_note: String,
}

/// Device memory a backend's own allocations hold, counted exactly at each allocation and
/// free (bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemoryUse {
    /// Held now.
    pub current: u64,
    /// The most held at once since the backend opened.
    pub peak: u64,
    /// The driver's view: the device's free memory when the backend opened less its free memory
    /// now (allocator rounding and pools included, and other processes' use; None where unknown).
    pub driver: Option<u64>,
}

/// What a run will ask of a backend, said before it starts ([`Backend::prepare`]), so that the
/// backend can get ready meanwhile (the CUDA backend compiles the kernels it will launch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The micro-batch (sequences).
    pub batch: usize,
    pub n_embd: usize,
    pub n_head: usize,
    /// Whether the linear layers have biases.
    pub bias: bool,
    /// The activations' storage type.
    pub storage: DType,
    pub work: Work,
    /// The processes of a data-parallel run on this machine, which share its CPUs (1 alone).
    pub local_ranks: usize,
}

/// What a run does with a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// Forward, backward and AdamW (and evaluation's forward).
    Train,
    /// Evaluation only: the forward and its loss.
    Evaluate,
    /// Sampling: the KV-cache forward, one position at a time.
    Sample,
}

/// A place that runs the model's ops over its buffers.
pub trait Backend: Send + Sync {
    /// One allocation of elements of one [`DType`] on this backend.
    type Buf: Send + Sync;

    fn name(&self) -> String;

    /// What this backend runs on, at precision `p`.
    fn device(&self, p: Precision) -> DeviceInfo;

    /// Runs `f`, one training step's (or evaluation batch's) calls into this backend. The
    /// default just calls it; the CPU backend keeps its idle worker threads polling for work
    /// meanwhile, so its parallel ops do not each pay for waking a sleeping thread.
    fn step_scope<R>(f: impl FnOnce() -> R) -> R
    where
        Self: Sized,
    {
        f()
    }

    /// `n` zeroed elements of type `dtype`.
    fn alloc(&self, n: usize, dtype: DType) -> Result<Self::Buf>;
    /// Copies `src` into tensor `dst` (same element type and length).
    fn upload(&self, bufs: &mut Buffers<Self::Buf>, dst: Tensor, src: &Host) -> Result<()>;
    /// Copies tensor `src` to the host (after the ops before it have finished).
    fn download(&self, bufs: &Buffers<Self::Buf>, src: Tensor) -> Result<Host>;
    /// Waits until every op issued so far has finished (a no-op where ops run synchronously).
    fn synchronize(&self) -> Result<()>;
    /// Runs one op.
    fn run(&self, bufs: &mut Buffers<Self::Buf>, op: &Op) -> Result<()>;

    /// Runs one op and returns the time the device spent on it (seconds), for profiles. The
    /// default is the host's wall time of `run` and a `synchronize` (on the CPU, the op's own
    /// time; where ops run asynchronously it also holds a launch and a wait); a GPU backend
    /// measures between events on its stream instead.
    fn run_timed(&self, bufs: &mut Buffers<Self::Buf>, op: &Op) -> Result<f64> {
        let t0 = std::time::Instant::now();
        self.run(bufs, op)?;
        self.synchronize()?;
        Ok(t0.elapsed().as_secs_f64())
    }

    /// The device memory this backend has allocated (None where it keeps no such count: the
    /// CPU, whose buffers are the process's heap).
    fn memory_use(&self) -> Option<MemoryUse> {
        None
    }

    /// Starts getting ready for a run of `plan` (the CUDA backend: compiling the kernels it will
    /// launch, on background threads), so its first step waits less; its first launches wait
    /// for what is not ready. Nothing to do by default.
    fn prepare(&self, _plan: &Plan) {}

    /// What getting ready has cost so far, for the run's log (the CUDA backend: its kernels,
    /// compiled or read from the cache, and how long the run waited for them); None where
    /// there is nothing to say.
    fn warm_up_note(&self) -> Option<String> {
        None
    }

    /// Seconds the work so far has waited for getting ready (a GPU's kernels compiling), which
    /// is warm-up whatever the run was doing: an evaluation that waits for the kernels books
    /// that wait as warm-up, not as evaluation time.
    fn warm_up_waited_s(&self) -> f64 {
        0.0
    }

    /// What `dtype = 'auto'` means here, nanoGPT's choice: float32 (the CPU); a GPU says
    /// bfloat16 where the card has it, else float16.
    fn auto_precision(&self) -> Precision {
        Precision::F32
    }

    /// Whether `dtype = 'tfloat32'` (TF32 tensor-core matmuls) exists here.
    fn has_tf32(&self) -> bool {
        false
    }

    /// Whether this backend has joined a data-parallel run's ranks with a device collective
    /// (the CUDA backend's NCCL), so that [`Backend::sum_over_ranks`] sums on the device; where
    /// not, the caller sums through host memory.
    fn joined_ranks(&self) -> bool {
        false
    }

    /// Sums f32 tensor `t` over the joined ranks, in place on the device, and waits for it.
    fn sum_over_ranks(&self, _bufs: &mut Buffers<Self::Buf>, _t: Tensor) -> Result<()> {
        anyhow::bail!("{} has joined no ranks", self.name())
    }

    /// ZeRO-1's gradient sum over the joined ranks: part `parts[r]` (element spans of f32 tensor
    /// `t`, one per rank) of rank r's `t` becomes the sum of every rank's, in place; the rest of
    /// its `t` is left as it was. Waits for it.
    fn reduce_to_owners(&self, _bufs: &mut Buffers<Self::Buf>, _t: Tensor, _parts: &[Span]) -> Result<()> {
        anyhow::bail!("{} has joined no ranks", self.name())
    }

    /// ZeRO-1's parameter exchange over the joined ranks: part `parts[r]` of every rank's `t`
    /// (any dtype) becomes rank r's, copied. Waits for it.
    fn gather_from_owners(&self, _bufs: &mut Buffers<Self::Buf>, _t: Tensor, _parts: &[Span]) -> Result<()> {
        anyhow::bail!("{} has joined no ranks", self.name())
    }
}
