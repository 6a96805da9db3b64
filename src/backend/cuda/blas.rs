//! Matmuls through cuBLASLt, f32 accumulation always: operands in their storage types (f32,
//! bf16 or f16), the output in its own (f32 for parameter gradients), a bias added by the
//! epilogue (so the output is rounded once; where cuBLASLt refuses the epilogue, as for one
//! row, or the bias is not 16-byte aligned, the caller adds it with a kernel after the product,
//! so a 16-bit output is rounded twice), split-K partial sums added in f32. `float32` runs compute in true fp32
//! (`CUBLAS_COMPUTE_32F`); `tfloat32` allows TF32 tensor cores (`..._FAST_TF32`).
//!
//! cuBLASLt is column-major; a row-major (R, C) matrix is a column-major (C, R) one, so every
//! product of the model is computed transposed (llm.c's convention): see [`super::run`].

use crate::backend::DType;
use anyhow::{anyhow, Result};
use cudarc::cublaslt::{result, sys};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Mutex;

/// Workspace cuBLASLt may use (32 MiB, llm.c's figure for Hopper).
pub const WORKSPACE_BYTES: usize = 32 << 20;

/// A cuBLASLt handle, its workspace, and a plan per product shape seen (see [`Plan`]).
pub struct Blas {
    handle: sys::cublasLtHandle_t,
    workspace: u64,
    plans: Mutex<HashMap<Key, Plan>>,
}

// SAFETY: the handle and the plans' descriptors are only used by calls made through `&Blas`
// on the backend's one stream, under the plans' lock; cuBLASLt handles and descriptors may be
// used from any thread, one call at a time.
unsafe impl Send for Blas {}
// SAFETY: as above.
unsafe impl Sync for Blas {}

/// More product shapes than a model has (gpt2-124m's training, eval and sampling use ~20): past
/// this the plans are dropped and made again, so that a caller varying shapes without end (none
/// does) cannot grow the cache without bound.
const MAX_PLANS: usize = 256;

/// D(m, n) = alpha * op(A) op(B) + beta * D (+ bias(m) broadcast over columns), column-major.
#[derive(Clone, Copy, Debug)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// A: (m, k) after `trans_a`; stored (k, m) when transposed. Device address and type.
    pub a: (u64, DType),
    pub trans_a: bool,
    pub lda: usize,
    pub b: (u64, DType),
    pub trans_b: bool,
    pub ldb: usize,
    pub d: (u64, DType),
    pub ldd: usize,
    /// 0: overwrite D; 1: accumulate into it.
    pub beta: f32,
    /// A bias of m elements, in D's type, added before the one rounding.
    pub bias: Option<u64>,
    /// GELU's backward in the epilogue (tanh form, as gptrain's): see [`Gelu`].
    pub gelu: Option<Gelu>,
    pub tf32: bool,
}

/// Whether cuBLASLt status `e` refuses what it was asked (NOT_SUPPORTED, INVALID_VALUE), as
/// opposed to failing at it (out of memory, a failed launch).
fn refusal(e: result::CublasError) -> bool {
    use sys::cublasStatus_t as S;
    matches!(e.0, S::CUBLAS_STATUS_NOT_SUPPORTED | S::CUBLAS_STATUS_INVALID_VALUE)
}

impl Gemm {
    /// Whether it has an epilogue its caller can do without (the bias, GELU's backward), so
    /// that cuBLASLt's refusal of it is a "no", not an error.
    fn optional_epilogue(&self) -> bool {
        self.bias.is_some() || self.gelu.is_some()
    }
}

/// GELU's backward in the epilogue (`CUBLASLT_EPILOGUE_DGELU`): D = the product * gelu'(aux),
/// `aux` the forward's GELU input, an (m, n) matrix (column-major, leading dimension `ld`, of
/// type `dtype`).
#[derive(Clone, Copy, Debug)]
pub struct Gelu {
    pub aux: u64,
    pub ld: usize,
    pub dtype: DType,
}

fn cuda_type(t: DType) -> Result<sys::cudaDataType> {
    Ok(match t {
        DType::F32 => sys::cudaDataType::CUDA_R_32F,
        DType::Bf16 => sys::cudaDataType::CUDA_R_16BF,
        DType::F16 => sys::cudaDataType::CUDA_R_16F,
        t => return Err(anyhow!("cuBLASLt matmul of {t:?} data")),
    })
}

/// The largest power of two (up to 256) that divides a device address.
fn alignment(addr: u64) -> u32 {
    1u32 << addr.trailing_zeros().min(8)
}

/// What a product's plan depends on: all of a [`Gemm`] but its addresses and `beta`, with the
/// addresses' alignments, the epilogue's bias and auxiliary pointers' too (the heuristic
/// chooses the algorithm for them: cublasLt.h, of both pointer attributes).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    /// m, n, k, lda, ldb, ldd
    dims: [usize; 6],
    /// A's, B's and D's types
    types: [DType; 3],
    trans: [bool; 2],
    bias: bool,
    /// the auxiliary matrix's leading dimension and type
    gelu: Option<(usize, DType)>,
    tf32: bool,
    /// A's, B's, D's (= C's), the bias's and the auxiliary matrix's alignments in bytes (0: none)
    align: [u32; 5],
}

impl Key {
    fn of(g: &Gemm) -> Key {
        Key {
            dims: [g.m, g.n, g.k, g.lda, g.ldb, g.ldd],
            types: [g.a.1, g.b.1, g.d.1],
            trans: [g.trans_a, g.trans_b],
            bias: g.bias.is_some(),
            gelu: g.gelu.map(|x| (x.ld, x.dtype)),
            tf32: g.tf32,
            align: [
                alignment(g.a.0),
                alignment(g.b.0),
                alignment(g.d.0),
                g.bias.map_or(0, alignment),
                g.gelu.map_or(0, |x| alignment(x.aux)),
            ],
        }
    }
}

/// A product's descriptors (operation, epilogue, the three layouts) and the algorithm
/// cuBLASLt's heuristic chose for them (`None`: it answered NOT_SUPPORTED, or refused an
/// optional epilogue, which the caller then does with a kernel), made once per
/// [`Key`]: the heuristic costs tens of microseconds of host time, and a step makes ~150
/// products. The bias and auxiliary pointers are set on `desc` at each call.
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    layouts: [sys::cublasLtMatrixLayout_t; 3],
    algo: Option<sys::cublasLtMatmulAlgo_t>,
}

impl Plan {
    fn new(handle: sys::cublasLtHandle_t, g: &Gemm, key: &Key) -> Result<Plan> {
        let err = |what: &str, e: result::CublasError| anyhow!("cuBLASLt {what} ({g:?}): {e:?}");
        let compute =
            if g.tf32 { sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32 } else { sys::cublasComputeType_t::CUBLAS_COMPUTE_32F };
        let desc = result::create_matmul_desc(compute, sys::cudaDataType::CUDA_R_32F).map_err(|e| err("descriptor", e))?;
        // from here on, dropping `plan` destroys whatever was made
        let mut plan = Plan { desc, layouts: [std::ptr::null_mut(); 3], algo: None };
        let (rows_a, cols_a) = if g.trans_a { (g.k, g.m) } else { (g.m, g.k) };
        let (rows_b, cols_b) = if g.trans_b { (g.n, g.k) } else { (g.k, g.n) };
        let shapes = [(g.a.1, rows_a, cols_a, g.lda), (g.b.1, rows_b, cols_b, g.ldb), (g.d.1, g.m, g.n, g.ldd)];
        for (slot, (t, r, c, ld)) in plan.layouts.iter_mut().zip(shapes) {
            *slot = result::create_matrix_layout(cuda_type(t)?, r as u64, c as u64, ld as i64).map_err(|e| err("layout", e))?;
        }
        let op = |t: bool| t as i32; // cublasOperation_t: CUBLAS_OP_N = 0, CUBLAS_OP_T = 1
        let (op_a, op_b) = (op(g.trans_a), op(g.trans_b));
        use sys::cublasLtEpilogue_t as E;
        use sys::cublasLtMatmulDescAttributes_t as A;
        let epi = match (g.bias, g.gelu) {
            (None, None) => E::CUBLASLT_EPILOGUE_DEFAULT,
            (Some(_), None) => E::CUBLASLT_EPILOGUE_BIAS,
            (None, Some(_)) => E::CUBLASLT_EPILOGUE_DGELU,
            (Some(_), Some(_)) => return Err(anyhow!("a bias with GELU's backward epilogue: {g:?}")),
        };
        // SAFETY: `desc` was created above; each attribute buffer is a local of the attribute's
        // documented type and size, read by the call and not kept.
        unsafe {
            let set = |attr, p: *const c_void, n: usize| result::set_matmul_desc_attribute(desc, attr, p, n);
            let sz = std::mem::size_of::<i32>();
            set(A::CUBLASLT_MATMUL_DESC_TRANSA, &op_a as *const _ as *const c_void, sz).map_err(|e| err("attributes", e))?;
            set(A::CUBLASLT_MATMUL_DESC_TRANSB, &op_b as *const _ as *const c_void, sz).map_err(|e| err("attributes", e))?;
            let mut epilogue = Ok(());
            if epi != E::CUBLASLT_EPILOGUE_DEFAULT {
                epilogue = set(A::CUBLASLT_MATMUL_DESC_EPILOGUE, &epi as *const _ as *const c_void, std::mem::size_of_val(&epi));
            }
            if let Some(gelu) = g.gelu {
                // the auxiliary matrix (GELU's input) has D's type, cuBLASLt's default for it
                // (its AUX_DATA_TYPE attribute is documented for FP8 products): not set
                let ld = gelu.ld as i64;
                epilogue = epilogue.and_then(|()| set(A::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld as *const i64 as *const c_void, 8));
            }
            // the heuristic checks the epilogue's pointers are set: this call's, replaced at each
            epilogue = epilogue.and_then(|()| plan.point(g));
            if matches!(epilogue, Err(e) if refusal(e)) && g.optional_epilogue() {
                return Ok(plan); // a library that refuses the epilogue: the caller's kernel (algo None)
            }
            epilogue.map_err(|e| err("attributes", e))?;
        }
        plan.algo = plan.choose(handle, g, key)?;
        Ok(plan)
    }

    /// Asks cuBLASLt's heuristic for the best algorithm within the workspace, for the key's
    /// alignments of `g`'s operands.
    fn choose(&self, handle: sys::cublasLtHandle_t, g: &Gemm, key: &Key) -> Result<Option<sys::cublasLtMatmulAlgo_t>> {
        let err = |what: &str, e: result::CublasError| anyhow!("cuBLASLt {what} ({g:?}): {e:?}");
        let pref = result::create_matmul_pref().map_err(|e| err("preference", e))?;
        let ws = WORKSPACE_BYTES as u64;
        // the heuristic assumes 256-byte aligned operands unless told: tensors start anywhere
        use sys::cublasLtMatmulPreferenceAttributes_t as P;
        let [a, b, d, ..] = key.align;
        let aligns = [
            (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, a),
            (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, b),
            (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, d),
            (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, d),
        ];
        let [la, lb, ld] = self.layouts;
        // SAFETY: `pref` was created above and is destroyed once below; each attribute buffer is a
        // local of the attribute's documented type and size; the descriptors are this plan's.
        unsafe {
            let mut r = result::set_matmul_pref_attribute(
                pref,
                P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws as *const u64 as *const c_void,
                std::mem::size_of::<u64>(),
            );
            for (attr, bytes) in aligns {
                r = r.and_then(|()| result::set_matmul_pref_attribute(pref, attr, &bytes as *const u32 as *const c_void, 4));
            }
            // a 16-bit D: split-K's partial sums added in f32 only (the INPLACE and OUTPUT_TYPE
            // schemes add them in D's type), so the product is rounded once, as documented above
            if g.d.1 != DType::F32 {
                let f32_sums = sys::cublasLtReductionScheme_t::CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE as u32;
                let mask = P::CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK;
                r = r.and_then(|()| result::set_matmul_pref_attribute(pref, mask, &f32_sums as *const u32 as *const c_void, 4));
            }
            let chosen = r.map_err(|e| err("attributes", e)).and_then(|()| {
                match result::get_matmul_algo_heuristic(handle, self.desc, la, lb, ld, ld, pref) {
                    Ok(h) => Ok(Some(h.algo)),
                    // no algorithm for this combination: the caller's other way; any other
                    // status is a product described wrongly, an error
                    Err(result::CublasError(sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED)) => Ok(None),
                    // an epilogue is an option with a fallback: a refusal of it is a no
                    // (PyTorch reports INVALID_VALUE for a biased product of one row or column)
                    Err(e) if g.optional_epilogue() && refusal(e) => Ok(None),
                    Err(e) => Err(err("found no algorithm", e)),
                }
            });
            let _ = result::destroy_matmul_pref(pref);
            chosen
        }
    }

    /// Sets `g`'s bias and auxiliary pointers on the descriptor.
    ///
    /// # Safety
    /// `self.desc` is live and not in use by another call.
    unsafe fn point(&self, g: &Gemm) -> std::result::Result<(), result::CublasError> {
        use sys::cublasLtMatmulDescAttributes_t as A;
        if let Some(bias) = &g.bias {
            // SAFETY: the caller's; the buffer is a u64, the attribute's type
            unsafe {
                result::set_matmul_desc_attribute(self.desc, A::CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias as *const u64 as *const c_void, 8)?
            };
        }
        if let Some(gelu) = &g.gelu {
            // SAFETY: as above
            unsafe {
                result::set_matmul_desc_attribute(
                    self.desc,
                    A::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER,
                    &gelu.aux as *const u64 as *const c_void,
                    8,
                )?
            };
        }
        Ok(())
    }
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: each descriptor was created by `Plan::new` (or is still null) and is destroyed
        // once, here.
        unsafe {
            for l in self.layouts {
                if !l.is_null() {
                    let _ = result::destroy_matrix_layout(l);
                }
            }
            let _ = result::destroy_matmul_desc(self.desc);
        }
    }
}

impl Blas {
    /// A handle, with `workspace` (device address of [`WORKSPACE_BYTES`] bytes) for its use.
    pub fn new(workspace: u64) -> Result<Blas> {
        // cublasLtMatmul documents a 256-byte aligned workspace (the driver's allocations are)
        anyhow::ensure!(workspace.is_multiple_of(256), "cuBLASLt's workspace at {workspace:#x} is not 256-byte aligned");
        let handle = result::create_handle().map_err(|e| anyhow!("cuBLASLt would not start: {e:?}"))?;
        Ok(Blas { handle, workspace, plans: Mutex::new(HashMap::new()) })
    }

    /// Runs `g` on `stream`.
    pub fn gemm(&self, g: &Gemm, stream: cudarc::driver::sys::CUstream) -> Result<()> {
        match self.gemm_if_supported(g, stream)? {
            true => Ok(()),
            false => Err(anyhow!("cuBLASLt found no algorithm for {g:?}")),
        }
    }

    /// Runs `g` on `stream` if cuBLASLt has an algorithm for it (false, nothing run, when its
    /// heuristic answers NOT_SUPPORTED, or refuses the bias or GELU epilogue with NOT_SUPPORTED
    /// or INVALID_VALUE, at the heuristic or the product: an epilogue the library or the card
    /// does not offer for these types or this shape, which the caller does with a kernel
    /// instead; any other refusal or failure is an error). The heuristic is asked once per
    /// [`Key`].
    pub fn gemm_if_supported(&self, g: &Gemm, stream: cudarc::driver::sys::CUstream) -> Result<bool> {
        let stream = stream as sys::cudaStream_t; // the same CUstream, in cuBLASLt's bindings
        let mut plans = self.plans.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let key = Key::of(g);
        if !plans.contains_key(&key) {
            if plans.len() >= MAX_PLANS {
                plans.clear();
            }
            plans.insert(key, Plan::new(self.handle, g, &key)?);
        }
        let plan = plans.get_mut(&key).expect("inserted above");
        let Some(algo) = plan.algo else { return Ok(false) };
        let [la, lb, ld] = plan.layouts;
        let alpha = 1.0f32;
        // SAFETY: the plan's descriptors are live and used under the lock; the attribute and
        // scalar buffers are locals of their documented types; the device addresses come from
        // live allocations of the backend whose bounds the caller checked, and the workspace is
        // WORKSPACE_BYTES long.
        unsafe {
            plan.point(g).map_err(|e| anyhow!("cuBLASLt attributes ({g:?}): {e:?}"))?;
            let done = result::matmul(
                self.handle,
                plan.desc,
                &alpha as *const f32 as *const c_void,
                &g.beta as *const f32 as *const c_void,
                g.a.0 as *const c_void,
                la,
                g.b.0 as *const c_void,
                lb,
                g.d.0 as *const c_void,
                ld,
                g.d.0 as *mut c_void,
                ld,
                &algo,
                self.workspace as *mut c_void,
                WORKSPACE_BYTES,
                stream,
            );
            match done {
                Ok(()) => {}
                // refused before launching anything: the epilogue is not for this library or
                // product after all; the caller's kernel from now on (a failure of another
                // kind, out of memory, is an error, not a reason to change paths for good)
                Err(e) if g.optional_epilogue() && refusal(e) => {
                    plan.algo = None;
                    return Ok(false);
                }
                Err(e) => return Err(anyhow!("cuBLASLt matmul ({g:?}): {e:?}")),
            }
        }
        Ok(true)
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        // the plans' descriptors go before the handle they were made for
        self.plans.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner()).clear();
        // SAFETY: the handle was created in `new` and is destroyed once, here.
        let _ = unsafe { result::destroy_handle(self.handle) };
    }
}
