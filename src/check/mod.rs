//! `gptrain check`: does this setup compute what the reference computes?
//!
//! llm.c's `dev/cuda/` checks each kernel against a CPU reference and then a few training steps
//! against PyTorch's; this is that check as a command, for any [`Backend`]. [`check_ops`] runs
//! every op of a training step and of sampling ([`cases`]) on a *candidate* backend and on the
//! *reference*, the CPU's readable kernels ([`Cpu::REFERENCE`]) in float32, from the same
//! starting values, and compares everything the op writes; [`check_training`] trains a tiny
//! model for ten steps on both and compares the losses step by step. [`Describe`] says what a
//! backend runs on.
//!
//! **Error.** For one output, with `c` the candidate's values and `r` the reference's:
//! `max_i |c_i - r_i| / max(S, 1e-6)` ([`FLOOR`]), where S is `max_i |r_i|` for an output the op
//! overwrites, and `max_i |r_i - s_i|`, the largest change, for one it adds into from starting
//! values `s` (parameter gradients, LayerNorm's `dinp`, the step accumulators, AdamW's weight
//! update), so that a wrong increment cannot hide under large starting values. An output stored
//! in bf16/fp16 is measured as overwritten: its rounding is relative to the whole value. A
//! non-finite value is an infinite error. An op's error is its worst output's.
//!
//! **Mixed precision.** At bf16/fp16 the candidate stores each buffer as ARCHITECTURE.md's
//! table says (starting values go in as f32 and the backend rounds them); the reference runs in
//! float32 from the values the candidate actually stored (downloaded, widened; parameters from
//! their f32 master weights, which AdamW updates), so the error is the op's own, not its
//! inputs' rounding.

mod cases;
mod training;

pub use training::{check_training, TrainCheck};

/// What the checks at a precision will ask of a backend (for [`Backend::prepare`]).
pub fn plans(p: Precision) -> Vec<crate::backend::Plan> {
    cases::plans(p)
}

use crate::backend::cpu::matmul::GemmLib;
use crate::backend::cpu::simd::Isa;
use crate::backend::cpu::Cpu;
use crate::backend::{Backend, BufId, Buffers, DType, Host, Precision};
use anyhow::{bail, Context, Result};
use cases::{Case, Kind, Layout};

/// The smallest scale an error is measured against (see the module doc).
pub const FLOOR: f64 = 1e-6;

/// The largest error an op may have at precision `p`: float32 kernels differ from the
/// reference only in summation order and vectorised `exp`/`tanh`; bf16 keeps 8 bits of
/// mantissa, fp16 11, in every stored activation.
pub fn tolerance(p: Precision) -> f64 {
    match p {
        Precision::F32 => 1e-5,
        Precision::Tf32 => 5e-3,
        Precision::Bf16 => 2e-2,
        Precision::F16 => 5e-3,
    }
}

/// A check's outcome.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub enum Verdict {
    /// Within tolerance.
    Pass,
    /// Outside it.
    Fail,
    /// The candidate could not run it: the error, in one line.
    Error(String),
    /// Not run, and why (not a pass).
    Skip(String),
}

impl Verdict {
    pub fn failed(&self) -> bool {
        matches!(self, Verdict::Fail | Verdict::Error(_))
    }
    fn of(err: f64, tol: f64) -> Verdict {
        if err <= tol {
            Verdict::Pass
        } else {
            Verdict::Fail
        }
    }
}

/// One op's check at one precision.
#[derive(Clone, Debug, serde::Serialize)]
pub struct OpCheck {
    /// The op and its variant, e.g. `matmul backward, no bias`.
    pub op: &'static str,
    /// Its shapes, e.g. `N=14 IC=24 OC=72`.
    pub shape: String,
    /// The precision, by [`Precision::name`].
    pub dtype: &'static str,
    /// The error (see the module doc) of the worst output; None when the op did not run.
    pub max_rel_err: Option<f64>,
    /// That output's name (`dw`, `out`, ...).
    pub worst: &'static str,
    pub tol: f64,
    pub verdict: Verdict,
}

/// Why `candidate` cannot run at precision `p` (it cannot allocate its storage type), or None
/// when it can.
pub fn unsupported<B: Backend>(candidate: &B, p: Precision) -> Option<String> {
    let dtype = p.storage();
    match candidate.alloc(1, dtype) {
        Ok(_) => None,
        Err(_) => Some(format!("this backend cannot store {} yet", p.name())),
    }
}

/// Checks every op on `candidate` at `precision` against the reference: one row per case, in
/// the order a training step meets the ops, then sampling's. At a precision whose storage the
/// candidate cannot allocate, every row is skipped. An op the candidate fails to run is an
/// [`Verdict::Error`] row, not an error of this function.
pub fn check_ops<B: Backend>(candidate: &B, precision: Precision) -> Result<Vec<OpCheck>> {
    let (tol, skip) = (tolerance(precision), unsupported(candidate, precision));
    if precision == Precision::F32 {
        if let Some(why) = skip {
            bail!("the backend under check cannot allocate f32 buffers: {why}");
        }
    }
    if let Some(why) = skip {
        return Ok(skipped_ops(precision, &why));
    }
    let mut rows = Vec::new();
    for case in cases::all() {
        let (shape, dtype) = (case.shape.clone(), precision.name());
        let (max_rel_err, worst, verdict) = match run_case(candidate, &case, precision) {
            Ok((err, worst)) => (Some(err), worst, Verdict::of(err, tol)),
            Err(e) => (None, "", Verdict::Error(format!("{e:#}"))),
        };
        rows.push(OpCheck { op: case.op, shape, dtype, max_rel_err, worst, tol, verdict });
    }
    Ok(rows)
}

/// [`check_ops`]'s rows at `precision`, each skipped for `why` (a precision the device cannot
/// compute in, such as bf16 on a GPU before compute capability 8.0, which `train` refuses).
pub fn skipped_ops(precision: Precision, why: &str) -> Vec<OpCheck> {
    let tol = tolerance(precision);
    cases::all()
        .into_iter()
        .map(|case| OpCheck {
            op: case.op,
            shape: case.shape.clone(),
            dtype: precision.name(),
            max_rel_err: None,
            worst: "",
            tol,
            verdict: Verdict::Skip(why.to_string()),
        })
        .collect()
}

/// Runs one case on both backends: (the worst output's error, its name).
fn run_case<B: Backend>(candidate: &B, case: &Case, p: Precision) -> Result<(f64, &'static str)> {
    let reference = Cpu::REFERENCE;
    let (mut cl, mut rl) = (Layout::new(p), Layout::new(Precision::F32));
    let (cs, rs) = ((case.build)(&mut cl), (case.build)(&mut rl));
    assert!(
        cl.operands.len() == rl.operands.len() && cs.outputs.len() == rs.outputs.len(),
        "case `{}` builds other tensors at {}",
        case.op,
        p.name()
    );
    // the candidate's starting values, as it stores them
    let mut cb = alloc(candidate, &cl)?;
    let initial: Vec<Host> = cl.operands.iter().map(|o| o.initial()).collect();
    let mut stored = upload_and_read_back(candidate, &mut cb, &cl, &initial)?;
    if !rs.prep.is_empty() {
        let mut rb = alloc(&reference, &rl)?;
        let prepared = upload_and_run(&reference, &mut rb, &rl, &cl.for_reference(&stored), &rs.prep).context("the reference failed")?;
        stored = upload_and_read_back(candidate, &mut cb, &cl, &prepared)?;
    }
    let mut rb = alloc(&reference, &rl)?;
    upload(&reference, &mut rb, &rl, &cl.for_reference(&stored))?;
    let before: Vec<Vec<f64>> = rs.outputs.iter().map(|o| Ok(widen(reference.download(&rb, o.1)?))).collect::<Result<_>>()?;
    for op in &rs.ops {
        reference.run(&mut rb, op).context("the reference failed")?;
    }
    for op in &cs.ops {
        candidate.run(&mut cb, op)?;
    }
    candidate.synchronize()?;
    let mut worst = (-1.0, ""); // the first output's, at least
    for (((name, ct, kind), (_, rt, _)), s) in cs.outputs.iter().zip(&rs.outputs).zip(&before) {
        let (c, r) = (widen(candidate.download(&cb, *ct)?), widen(reference.download(&rb, *rt)?));
        // an addition into low-precision storage rounds the sum: measured as overwritten
        let kind = if ct.dtype == DType::Bf16 || ct.dtype == DType::F16 { Kind::Write } else { *kind };
        let err = rel_err(&c, &r, (kind == Kind::Add).then_some(s.as_slice()));
        if err > worst.0 {
            worst = (err, name);
        }
    }
    Ok(worst)
}

/// Every buffer `l` uses, allocated on `backend` in its storage type.
fn alloc<B: Backend>(backend: &B, l: &Layout) -> Result<Buffers<B::Buf>> {
    let mut bufs = Buffers::default();
    for id in BufId::ALL {
        if l.len(id) > 0 {
            bufs.set(id, backend.alloc(l.len(id), l.dtype(id))?);
        }
    }
    Ok(bufs)
}

/// Uploads `values` (one per operand of `l`).
fn upload<B: Backend>(backend: &B, bufs: &mut Buffers<B::Buf>, l: &Layout, values: &[Host]) -> Result<()> {
    for (o, v) in l.operands.iter().zip(values) {
        backend.upload(bufs, o.tensor, v)?;
    }
    Ok(())
}

/// Uploads `values`, then downloads every operand: what the backend stores (rounded, then
/// widened to f32, in a low-precision buffer).
fn upload_and_read_back<B: Backend>(backend: &B, bufs: &mut Buffers<B::Buf>, l: &Layout, values: &[Host]) -> Result<Vec<Host>> {
    upload(backend, bufs, l, values)?;
    l.operands.iter().map(|o| backend.download(bufs, o.tensor)).collect()
}

/// Uploads `values`, runs `ops`, downloads every operand.
fn upload_and_run<B: Backend>(
    backend: &B,
    bufs: &mut Buffers<B::Buf>,
    l: &Layout,
    values: &[Host],
    ops: &[crate::backend::Op],
) -> Result<Vec<Host>> {
    upload(backend, bufs, l, values)?;
    for op in ops {
        backend.run(bufs, op)?;
    }
    l.operands.iter().map(|o| backend.download(bufs, o.tensor)).collect()
}

fn widen(h: Host) -> Vec<f64> {
    match h {
        Host::F32(v) => v.into_iter().map(f64::from).collect(),
        Host::U32(v) => v.into_iter().map(f64::from).collect(),
        Host::F64(v) => v,
    }
}

/// The error of `c` against `r` (see the module doc): measured against the largest change from
/// `start` when given (an output added into), else against the largest `|r|`.
pub fn rel_err(c: &[f64], r: &[f64], start: Option<&[f64]>) -> f64 {
    assert_eq!(c.len(), r.len());
    let scale = match start {
        Some(s) => r.iter().zip(s).map(|(r, s)| (r - s).abs()).fold(0.0, f64::max),
        None => r.iter().map(|r| r.abs()).fold(0.0, f64::max),
    };
    let mut diff = 0.0f64;
    for (c, r) in c.iter().zip(r) {
        let d = (c - r).abs();
        if !d.is_finite() {
            return f64::INFINITY;
        }
        diff = diff.max(d);
    }
    diff / scale.max(FLOOR)
}

// ---------------------------------------------------------------------------------------------
// Where a check runs

/// The device `--device` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Cpu,
    /// `cuda` (None) or `cuda:N`.
    Cuda(Option<usize>),
}

impl Target {
    pub fn parse(s: &str) -> Result<Target> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(Target::Cpu),
            "cuda" => Ok(Target::Cuda(None)),
            d => match d.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Target::Cuda(Some(n))),
                _ => bail!("unknown device `{s}`; use cpu, cuda or cuda:N"),
            },
        }
    }
}

/// What a backend runs on, as (label, value) lines for `gptrain check`'s setup: a backend
/// implements it beside [`Backend`] (a CUDA backend: the card, its compute capability, driver
/// and memory).
pub trait Describe {
    fn describe(&self) -> Vec<(String, String)>;
}

impl Describe for crate::backend::cuda::Cuda {
    fn describe(&self) -> Vec<(String, String)> {
        self.setup()
    }
}

impl Describe for Cpu {
    fn describe(&self) -> Vec<(String, String)> {
        let gib = |b: u64| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64);
        let capped =
            if Isa::is_capped() { format!(" (held there by GPTRAIN_ISA; the CPU has {})", Isa::detected().name()) } else { String::new() };
        let memory =
            crate::perf::device::MemInfo::read().map_or("unknown".into(), |m| format!("{} ({} available)", gib(m.total), gib(m.available)));
        let rows = [
            ("device", format!("cpu: {}", crate::perf::device::cpu_model())),
            ("vectors", format!("{}{capped}", Isa::get().name())),
            ("matmuls", GemmLib::get().describe().to_string()),
            ("bf16", format!("matmuls on {}", crate::backend::cpu::simd::Bf16Isa::describe())),
            ("threads", rayon::current_num_threads().to_string()),
            ("memory", memory),
            ("kernels", format!("{:?} (checked against the Reference kernels)", self.kernels)),
        ];
        rows.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }
}

#[cfg(test)]
mod tests;
