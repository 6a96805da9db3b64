//! How each [`Op`] runs on the GPU: which kernel of `kernels/*.cu` (or which cuBLASLt
//! product), with what launch shape. Kernels are named `<kernel>_<storage>` (`f32`, `bf16`,
//! `f16`) after the type of the op's activations; parameter gradients, moments, master
//! weights and statistics are f32 whatever the run's precision.
//!
//! The linear layers, row-major as the model stores them, in cuBLASLt's column-major terms
//! (a row-major (R, C) matrix is a column-major (C, R) one):
//! - forward   out(N,OC) = inp(N,IC) @ w(OC,IC)^T  is  out^T = op_T(w) . inp^T, (OC x N)
//! - backward  dinp(N,IC) = dout(N,OC) @ w         is  dinp^T = w^T . dout^T, (IC x N)
//! - backward  dw(OC,IC) += dout^T @ inp           is  dw^T += inp^T . op_T(dout^T), (IC x OC)

use super::blas::Gemm;
use super::launch::{blocks, Arg, SHARED};
use super::{ahead, compile};
use super::{Cuda, CudaBuf};
use crate::backend::{Buffers, DType, Dropout, Op, Span, Tensor, Work};
use anyhow::{anyhow, bail, Result};
use cudarc::driver::result as drv;

/// Most blocks of the sum of squares' first pass (one per 1024 elements up to this): a number
/// that depends on the tensor's length only, so the sum's order never changes.
pub const PARTIALS: usize = 256;

/// Pieces of a sum of squares one launch takes (`PARTIALS` f64 of scratch each).
pub const PIECES_PER_LAUNCH: usize = 64;

/// f32 partials the column sums (bias and LayerNorm gradients) may use: chunks of rows x
/// columns x sums (4 MiB).
pub const COLUMN_PARTIALS: usize = 1 << 20;

/// Rows per chunk the column sums aim at: enough chunks that a few hundred columns (24 blocks
/// of 32) still fill a card, few enough that adding the chunks is cheap.
const CHUNK_ROWS: usize = 256;

/// How the column sums of `sums` (n, c) matrices split their rows: (chunks R, rows per chunk),
/// at most 64 chunks and within [`COLUMN_PARTIALS`]. It depends on the shape only, so a column's
/// sum has one order, every run.
fn column_chunks(n: usize, c: usize, sums: usize) -> (u32, u32) {
    assert!(c * sums <= COLUMN_PARTIALS, "column sums of {c} x {sums} columns exceed the scratch of {COLUMN_PARTIALS}");
    let r = n.div_ceil(CHUNK_ROWS).clamp(1, 64).min((COLUMN_PARTIALS / (c * sums).max(1)).max(1));
    let per = n.div_ceil(r).max(1);
    (n.div_ceil(per).max(1) as u32, per as u32)
}

/// The kernel-name suffix of a storage type.
fn sfx(t: DType) -> &'static str {
    match t {
        DType::F32 => "f32",
        DType::Bf16 => "bf16",
        DType::F16 => "f16",
        t => panic!("no kernel stores {t:?}"),
    }
}

/// The dropout probability a kernel takes (0: none) and its key.
fn drop_args(d: Dropout) -> [Arg; 2] {
    [Arg::F32(if d.active() { d.p } else { 0.0 }), Arg::U64(d.key)]
}

/// Warps per block (1 to 4) for kernels that keep `floats_per_warp` f32 in shared memory.
fn warps_for(floats_per_warp: usize) -> usize {
    (SHARED / (floats_per_warp * 4).max(1)).clamp(1, 4)
}

impl Cuda {
    /// out(c) (f32) += the sums over r chunks of the column partials at `part` (r x c, f32).
    fn add_columns(&self, bufs: &Buffers<CudaBuf>, out: Tensor, part: u64, r: u32, c: usize) -> Result<()> {
        assert!(out.dtype == DType::F32 && out.len() == c, "column sums go into f32 gradients of {c}: {out:?}");
        let args = [Arg::P(self.ptr(bufs, out)), Arg::P(part), Arg::U32(r), Arg::U32(c as u32)];
        self.launch("column_partials_add", (blocks(c, 256), 1), (256, 1), 0, &args)
    }

    /// Attention backward's row-dot scratch, at least `n` floats.
    fn rowdot(&self, n: usize) -> Result<u64> {
        let mut r = self.inner.rowdot.lock().unwrap_or_else(|e| e.into_inner());
        if r.as_ref().is_none_or(|s| s.slice.len() < n) {
            let scratch = self.inner.memory.alloc::<f32>(&self.inner.stream, n);
            *r = Some(scratch.map_err(|e| self.alloc_error(&format!("attention backward's scratch of {n} floats"), e))?);
        }
        Ok(super::address(&r.as_ref().expect("allocated above").slice, &self.inner.stream))
    }

    /// A tensor as a matmul operand: its address and storage type.
    fn operand(&self, bufs: &Buffers<CudaBuf>, t: Tensor) -> (u64, DType) {
        (self.ptr(bufs, t), t.dtype)
    }

    pub(super) fn run_op(&self, bufs: &mut Buffers<CudaBuf>, op: &Op) -> Result<()> {
        let p = |t: Tensor| Arg::P(self.ptr(bufs, t));
        let opt = |t: Option<Tensor>| Arg::P(t.map_or(0, |t| self.ptr(bufs, t)));
        let u32_ = |x: usize| Arg::U32(u32::try_from(x).expect("a size over 2^32 where a kernel takes 32 bits"));
        match *op {
            Op::Zero(x) => {
                // SAFETY: the tensor lies inside its buffer (checked by `ptr`).
                unsafe { drv::memset_d8_async(self.ptr(bufs, x), 0, x.len() * x.dtype.bytes(), self.cu_stream()) }
                    .map_err(|e| anyhow!("{e:?}"))?;
            }
            Op::Copy { dst, src } => {
                assert!(dst.dtype == src.dtype && dst.len() == src.len() && !dst.overlaps(&src), "copy {src:?} to {dst:?}");
                // SAFETY: both tensors lie inside their buffers (checked by `ptr`) and do not overlap.
                unsafe {
                    drv::memcpy_dtod_async(self.ptr(bufs, dst), self.ptr(bufs, src), dst.len() * dst.dtype.bytes(), self.cu_stream())
                }
                .map_err(|e| anyhow!("{e:?}"))?;
            }
            Op::Dropout { x, drop } => {
                if drop.active() {
                    let [dp, key] = drop_args(drop);
                    self.launch_1d(&format!("dropout_{}", sfx(x.dtype)), x.len(), &[p(x), Arg::U64(x.len() as u64), dp, key])?;
                }
            }
            Op::Embed(e) => {
                let (t, c) = (e.out.dims()[1], e.out.cols());
                assert_eq!(e.tokens.len(), e.out.rows(), "{e:?}");
                assert!((e.pos0 + t) * c <= e.wpe.len(), "positions {}..{} past wpe: {e:?}", e.pos0, e.pos0 + t);
                // dropout fused in: the sum is rounded to a bf16/f16 output once, as on the CPU
                let [dp, key] = drop_args(e.drop);
                let args =
                    [p(e.out), p(e.wte), p(e.wpe), p(e.tokens), Arg::U64(e.out.rows() as u64), u32_(t), u32_(c), u32_(e.pos0), dp, key];
                self.launch_1d(&format!("encoder_forward_{}", sfx(e.out.dtype)), e.out.len(), &args)?;
            }
            Op::EmbedBackward(e) => {
                let (b, t, c) = (e.dout.dims()[0], e.dout.dims()[1], e.dout.cols());
                let s = sfx(e.dout.dtype);
                assert!(e.dwte.dtype == DType::F32 && e.dwpe.dtype == DType::F32, "parameter gradients are f32: {e:?}");
                self.launch(
                    &format!("encoder_backward_wpe_{s}"),
                    (blocks(t * c, 256), 1),
                    (256, 1),
                    0,
                    &[p(e.dwpe), p(e.dout), u32_(b), u32_(t), u32_(c)],
                )?;
                // a warp per (position in token order, 256 channels), four warps a block: those
                // that start a token's run add it up
                assert_eq!(e.order.len(), b * t, "{e:?}");
                let args = [p(e.dwte), p(e.dout), p(e.tokens), p(e.order), Arg::U64((b * t) as u64), u32_(c)];
                self.launch(&format!("encoder_backward_wte_{s}"), (blocks(b * t, 4), blocks(c, 256)), (128, 1), 0, &args)?;
            }
            Op::LayerNorm(l) => {
                let (n, c) = (l.inp.rows(), l.inp.cols());
                let args = [p(l.out), p(l.mean), p(l.rstd), p(l.inp), p(l.w), opt(l.b), u32_(n), u32_(c)];
                self.launch(&format!("layernorm_forward_{}", sfx(l.inp.dtype)), (blocks(n, 4), 1), (128, 1), 0, &args)?;
            }
            Op::LayerNormBackward(l) => {
                let (n, c) = (l.inp.rows(), l.inp.cols());
                let s = sfx(l.inp.dtype);
                let args = [p(l.dinp), p(l.dout), p(l.inp), p(l.mean), p(l.rstd), p(l.w), u32_(n), u32_(c)];
                self.launch(&format!("layernorm_backward_dinp_{s}"), (blocks(n, 4), 1), (128, 1), 0, &args)?;
                let (r, per) = column_chunks(n, c, 2);
                let part = super::address(&self.inner.columns.slice, &self.inner.stream);
                let args = [Arg::P(part), p(l.dout), p(l.inp), p(l.mean), p(l.rstd), u32_(n), u32_(c), Arg::U32(per)];
                self.launch(&format!("layernorm_backward_dw_{s}"), (blocks(c, 32), r), (32, 32), 0, &args)?;
                self.add_columns(bufs, l.dw, part, r, c)?;
                if let Some(db) = l.db {
                    self.add_columns(bufs, db, part + (r as usize * c * 4) as u64, r, c)?;
                }
            }
            Op::Matmul(m) => {
                let (n, ic, oc) = (m.inp.rows(), m.inp.cols(), m.out.cols());
                let (out, inp, w) = (self.operand(bufs, m.out), self.operand(bufs, m.inp), self.operand(bufs, m.w));
                // cuBLASLt reads the bias in D's type (its default, which gptrain keeps)
                assert!(m.b.is_none_or(|b| b.dtype == m.out.dtype), "a linear layer's bias in another type than its output: {m:?}");
                // the bias in the epilogue when 16-byte aligned (Marian NMT found an A100's
                // epilogue needs it; small models' biases may sit anywhere) and cuBLASLt takes it
                // (it refuses one-row products, PyTorch reports: sampling's); else the product
                // alone, then the bias by gptrain's kernel
                let fused = m.b.map(|b| self.ptr(bufs, b)).filter(|a| a % 16 == 0);
                let g = linear_forward(n, ic, oc, out, inp, w, fused, self.inner.tf32);
                let in_epilogue = if self.inner.blas.gemm_if_supported(&g, self.cu_stream())? {
                    fused.is_some()
                } else if fused.is_some() {
                    self.inner.blas.gemm(&Gemm { bias: None, ..g }, self.cu_stream())?;
                    false
                } else {
                    bail!("cuBLASLt found no algorithm for {g:?}")
                };
                if let (Some(b), false) = (m.b, in_epilogue) {
                    let args = [p(m.out), p(b), Arg::U64((n * oc) as u64), u32_(oc)];
                    self.launch_1d(&format!("bias_add_{}", sfx(m.out.dtype)), n * oc, &args)?;
                }
            }
            Op::MatmulBackward(m) => {
                let (n, ic, oc) = (m.inp.rows(), m.inp.cols(), m.dout.cols());
                let (dout, inp, w) = (self.operand(bufs, m.dout), self.operand(bufs, m.inp), self.operand(bufs, m.w));
                if !m.dinp.is_empty() {
                    let dinp = self.operand(bufs, m.dinp);
                    let mut g = linear_dinp(n, ic, oc, dinp, dout, w, self.inner.tf32);
                    match m.gelu {
                        None => self.inner.blas.gemm(&g, self.cu_stream())?,
                        Some(gelu) => {
                            // dinp = (dout @ w) * gelu'(pre): in the epilogue when it can be, else the
                            // product into dinp and GELU's backward in place (the kernel reads each
                            // element before it writes it; `scratch` is not needed)
                            let pre = self.operand(bufs, gelu.pre);
                            g.gelu = Some(super::blas::Gelu { aux: pre.0, ld: ic, dtype: pre.1 });
                            if !self.gelu_fusion(&g) || !self.inner.blas.gemm_if_supported(&g, self.cu_stream())? {
                                g.gelu = None;
                                self.inner.blas.gemm(&g, self.cu_stream())?;
                                let args = [p(m.dinp), p(m.dinp), p(gelu.pre), Arg::U64(m.dinp.len() as u64)];
                                self.launch_1d(&format!("gelu_backward_{}", sfx(m.dinp.dtype)), m.dinp.len(), &args)?;
                            }
                        }
                    }
                }
                let g = linear_dw(n, ic, oc, self.operand(bufs, m.dw), dout, inp, self.inner.tf32);
                self.inner.blas.gemm(&g, self.cu_stream())?;
                if let Some(db) = m.db {
                    assert_eq!(db.dtype, DType::F32, "parameter gradients are f32: {db:?}");
                    let (r, per) = column_chunks(n, oc, 1);
                    let part = super::address(&self.inner.columns.slice, &self.inner.stream);
                    let args = [Arg::P(part), p(m.dout), u32_(n), u32_(oc), Arg::U32(per)];
                    self.launch(&format!("bias_backward_{}", sfx(m.dout.dtype)), (blocks(oc, 32), r), (32, 32), 0, &args)?;
                    self.add_columns(bufs, db, part, r, oc)?;
                }
            }
            Op::Attention(a) => {
                let (b, t, c) = bt_c(a.qkv, a.n_head);
                if b * t == 0 {
                    return Ok(()); // no rows (the kernels' key loops assume one)
                }
                if let Some(hs) = self.tensor_core_attention(b, c, a.n_head, a.qkv.dtype) {
                    let [dp, key] = drop_args(a.drop);
                    let args = [p(a.out), p(a.stats), p(a.qkv), u32_(t), u32_(c), u32_(a.n_head), dp, key];
                    let name = format!("attention_tc_forward_hs{hs}_{}", sfx(a.qkv.dtype));
                    return self.launch(&name, (blocks(t, 64), (b * a.n_head) as u32), (128, 1), 0, &args);
                }
                if let Some(hs) = tiled(b, c, a.n_head) {
                    let [dp, key] = drop_args(a.drop);
                    let args = [p(a.out), p(a.stats), p(a.qkv), u32_(b), u32_(t), u32_(c), u32_(a.n_head), dp, key];
                    let name = format!("attention_forward_tiled{hs}_{}", sfx(a.qkv.dtype));
                    return self.launch(&name, (blocks(t, 64), (b * a.n_head) as u32), (64, 1), 0, &args);
                }
                let w = warps_for(t);
                let [dp, key] = drop_args(a.drop);
                let args = [p(a.out), p(a.stats), p(a.qkv), u32_(b), u32_(t), u32_(c), u32_(a.n_head), dp, key];
                let grid = (blocks(b * a.n_head * t, w), 1);
                self.launch(&format!("attention_forward_{}", sfx(a.qkv.dtype)), grid, (32 * w as u32, 1), w * t * 4, &args)?;
            }
            Op::AttentionBackward(a) => {
                let (b, t, c) = bt_c(a.qkv, a.n_head);
                if b * t == 0 {
                    return Ok(());
                }
                let rows = b * a.n_head * t;
                let rowdot = Arg::P(self.rowdot(rows)?);
                let s = sfx(a.qkv.dtype);
                let [dp, key] = drop_args(a.drop);
                if let Some(hs) = self.tensor_core_attention(b, c, a.n_head, a.qkv.dtype) {
                    let (grid, (nh, tt, cc)) = ((blocks(t, 64), (b * a.n_head) as u32), (u32_(a.n_head), u32_(t), u32_(c)));
                    let args = [p(a.dqkv), rowdot, p(a.dout), p(a.out), p(a.qkv), p(a.stats), tt, cc, nh, dp, key];
                    self.launch(&format!("attention_tc_backward_q_hs{hs}_{s}"), grid, (128, 1), 0, &args)?;
                    let args = [p(a.dqkv), rowdot, p(a.dout), p(a.qkv), p(a.stats), tt, cc, nh, dp, key];
                    return self.launch(&format!("attention_tc_backward_kv_hs{hs}_{s}"), grid, (128, 1), 0, &args);
                }
                let args = [p(a.dqkv), rowdot, p(a.dout), p(a.qkv), p(a.stats), u32_(b), u32_(t), u32_(c), u32_(a.n_head), dp, key];
                if let Some(hs) = tiled(b, c, a.n_head) {
                    let bh = (b * a.n_head) as u32;
                    self.launch(&format!("attention_backward_q_tiled{hs}_{s}"), (blocks(t, 32), bh), (64, 1), 0, &args)?;
                    return self.launch(&format!("attention_backward_kv_tiled{hs}_{s}"), (blocks(t, 32), bh), (64, 1), 0, &args);
                }
                let w = warps_for(2 * t);
                self.launch(&format!("attention_backward_q_{s}"), (blocks(rows, w), 1), (32 * w as u32, 1), w * 2 * t * 4, &args)?;
                self.launch(&format!("attention_backward_kv_{s}"), (blocks(rows, 4), 1), (128, 1), 0, &args)?;
            }
            Op::AttentionDecode(a) => {
                let c = a.out.len();
                // the kernel writes cache row `pos`: checked here, as the CPU's slices do
                assert!(a.qkv.len() == 3 * c && (a.pos + 1) * c <= a.k.len().min(a.v.len()), "decode at {}: {a:?}", a.pos);
                let w = warps_for(a.pos + 1);
                let args = [p(a.out), p(a.k), p(a.v), p(a.qkv), u32_(a.pos), u32_(c), u32_(a.n_head)];
                let grid = (blocks(a.n_head, w), 1);
                self.launch(&format!("attention_decode_{}", sfx(a.qkv.dtype)), grid, (32 * w as u32, 1), w * (a.pos + 1) * 4, &args)?;
            }
            Op::Gelu(g) => self.launch_1d(
                &format!("gelu_forward_{}", sfx(g.inp.dtype)),
                g.inp.len(),
                &[p(g.out), p(g.inp), Arg::U64(g.inp.len() as u64)],
            )?,
            Op::GeluBackward(g) => {
                let args = [p(g.dinp), p(g.dout), p(g.inp), Arg::U64(g.inp.len() as u64)];
                self.launch_1d(&format!("gelu_backward_{}", sfx(g.inp.dtype)), g.inp.len(), &args)?
            }
            Op::Residual(r) => {
                let args = [p(r.out), p(r.a), p(r.b), Arg::U64(r.out.len() as u64)];
                self.launch_1d(&format!("residual_forward_{}", sfx(r.out.dtype)), r.out.len(), &args)?
            }
            Op::FusedClassifier(fc) => {
                let (n, vp) = (fc.logits.rows(), fc.logits.cols());
                let args = [
                    p(fc.logits),
                    p(fc.losses),
                    p(fc.targets),
                    u32_(fc.vocab),
                    u32_(vp),
                    Arg::I32(fc.grad_scale.is_some() as i32),
                    Arg::F32(fc.grad_scale.unwrap_or(0.0)),
                ];
                // one block per row; a thread per column, in whole warps, at most 512 (so a small
                // vocabulary leaves no thread idle)
                let threads = vp.next_multiple_of(32).clamp(32, 512) as u32;
                self.launch(&format!("fused_classifier_{}", sfx(fc.logits.dtype)), (n as u32, 1), (threads, 1), 0, &args)?;
            }
            Op::AddMeanLoss { losses, into } => {
                assert_eq!(losses.dtype, DType::F32, "losses are f32 statistics");
                self.launch("add_mean_loss", (1, 1), (1024, 1), 0, &[p(into.tensor()), p(losses), u32_(losses.len())])?;
            }
            Op::AddSquares { x, per, into } => {
                let pieces = x.len().div_ceil(per);
                assert!(into.dtype == DType::F64 && (into.len() == 1 || into.len() == pieces), "a slot, or one per piece: {into:?}");
                let partials = Arg::P(super::address(&self.inner.partials.slice, &self.inner.stream));
                let step = u32::from(into.len() > 1);
                // as many pieces a launch as the scratch holds; each piece's grid depends on its
                // length only, so its sum has one order, every run, however it is batched
                for first in (0..pieces).step_by(PIECES_PER_LAUNCH) {
                    let count = (pieces - first).min(PIECES_PER_LAUNCH);
                    let span = Span::new(x.span.off + first * per, (count * per).min(x.len() - first * per));
                    let xs = Tensor::new(x.buf, span, &[span.len], x.dtype);
                    let slot = Tensor::new(into.buf, Span::new(into.span.off + first * step as usize, 1), &[1], DType::F64);
                    let (n, per64, maxg) = (Arg::U64(span.len as u64), Arg::U64(per as u64), Arg::U32(PARTIALS as u32));
                    let grid = blocks(per.min(span.len), 1024).min(PARTIALS as u32);
                    let args = [partials, p(xs), n, per64, maxg];
                    self.launch(&format!("sum_squares_partial_{}", sfx(x.dtype)), (grid, count as u32), (1024, 1), 0, &args)?;
                    let args = [p(slot), partials, n, per64, Arg::U32(count as u32), maxg, Arg::U32(1024), Arg::U32(step)];
                    self.launch("add_partials", (1, 1), (32, 1), 0, &args)?;
                }
            }
            Op::AdamWStep(a) => {
                assert!(a.grads.dtype == DType::F32 && a.m.dtype == DType::F32 && a.v.dtype == DType::F32, "AdamW state is f32: {a:?}");
                assert!(a.master.is_some() || a.params.dtype == DType::F32, "low-precision parameters need f32 master weights: {a:?}");
                let hp = a.hp;
                let bc1 = 1.0 - hp.beta1.powi(a.step as i32);
                let bc2 = 1.0 - hp.beta2.powi(a.step as i32);
                let args = [
                    p(a.params),
                    opt(a.master),
                    p(a.grads),
                    p(a.m),
                    p(a.v),
                    Arg::U64(a.params.len() as u64),
                    Arg::F32(hp.beta1),
                    Arg::F32(hp.beta2),
                    Arg::F32(hp.eps),
                    Arg::F32(hp.lr / bc1),
                    Arg::F32(bc2.sqrt()),
                    Arg::F32(1.0 - hp.lr * a.weight_decay),
                    Arg::F32(a.grad_scale),
                ];
                self.launch_1d(&format!("adamw_{}", sfx(a.params.dtype)), a.params.len(), &args)?;
            }
        }
        Ok(())
    }
}

/// out(N,OC) = inp(N,IC) @ w(OC,IC)^T (+ b): column-major out^T (OC x N) = op_T(w) . inp^T.
#[allow(clippy::too_many_arguments)]
pub fn linear_forward(
    n: usize,
    ic: usize,
    oc: usize,
    out: (u64, DType),
    inp: (u64, DType),
    w: (u64, DType),
    bias: Option<u64>,
    tf32: bool,
) -> Gemm {
    Gemm {
        m: oc,
        n,
        k: ic,
        a: w,
        trans_a: true,
        lda: ic,
        b: inp,
        trans_b: false,
        ldb: ic,
        d: out,
        ldd: oc,
        beta: 0.0,
        bias,
        gelu: None,
        tf32,
    }
}

/// dinp(N,IC) = dout(N,OC) @ w(OC,IC): column-major dinp^T (IC x N) = w^T . dout^T, w^T being
/// w's row-major storage read column-major.
pub fn linear_dinp(n: usize, ic: usize, oc: usize, dinp: (u64, DType), dout: (u64, DType), w: (u64, DType), tf32: bool) -> Gemm {
    Gemm {
        m: ic,
        n,
        k: oc,
        a: w,
        trans_a: false,
        lda: ic,
        b: dout,
        trans_b: false,
        ldb: oc,
        d: dinp,
        ldd: ic,
        beta: 0.0,
        bias: None,
        gelu: None,
        tf32,
    }
}

/// dw(OC,IC) += dout(N,OC)^T @ inp(N,IC): column-major dw^T (IC x OC) += inp^T . op_T(dout^T).
pub fn linear_dw(n: usize, ic: usize, oc: usize, dw: (u64, DType), dout: (u64, DType), inp: (u64, DType), tf32: bool) -> Gemm {
    Gemm {
        m: ic,
        n: oc,
        k: n,
        a: inp,
        trans_a: false,
        lda: ic,
        b: dout,
        trans_b: true,
        ldb: oc,
        d: dw,
        ldd: ic,
        beta: 1.0,
        bias: None,
        gelu: None,
        tf32,
    }
}

/// The head sizes the tiled attention kernels are compiled for (`FOR_STORAGE(TILED_<HS>)` in
/// kernels/attention.cu).
const TILED_HS: [usize; 4] = [8, 16, 32, 64];

/// The head size, when the tiled attention kernels take this shape: a head size they are
/// compiled for, and B x NH within a grid's y dimension.
fn tiled(b: usize, c: usize, n_head: usize) -> Option<usize> {
    let hs = c / n_head;
    (TILED_HS.contains(&hs) && b * n_head <= 65535).then_some(hs)
}

impl Cuda {
    /// Whether a product may carry its GELU in cuBLASLt's epilogue: 16-bit storage (f32 runs
    /// keep gptrain's own GELU, to compare with the CPU), an auxiliary matrix as cuBLASLt wants
    /// it (16-byte aligned, leading dimension a multiple of 8), and not turned off by
    /// `GPTRAIN_CUDA_GELU_FUSION=0`. cuBLASLt may still have no algorithm for it: then the
    /// caller runs the product and gptrain's GELU kernel.
    fn gelu_fusion(&self, g: &Gemm) -> bool {
        let Some(gelu) = g.gelu else { return false };
        self.inner.gelu_fusion && g.d.1 != DType::F32 && gelu.dtype == g.d.1 && gelu.aux % 16 == 0 && gelu.ld % 8 == 0
    }
}

/// The head sizes the tensor-core attention kernels are compiled for (`TC_KERNELS(.., HS)` in
/// kernels/attention_tc.cu).
const TENSOR_CORE_HS: [usize; 3] = [16, 32, 64];

/// The lowest compute capability of the tensor-core attention kernels' products in f16
/// (`mma.m16n8k8`, Turing); bf16 needs `mma.m16n8k16.bf16` (Ampere, [`select::BF16_CC`]).
const TENSOR_CORE_F16_CC: (i32, i32) = (7, 5);

impl Cuda {
    /// The head size, when attention of this shape and storage type runs on the tensor-core
    /// kernels: bf16 or f16 (f32 stays true f32), a head size they are compiled for, a card
    /// with the products they use, B x NH within a grid's y dimension, and not turned off by
    /// `GPTRAIN_CUDA_ATTENTION=tiled` (to measure one against the other).
    fn tensor_core_attention(&self, b: usize, c: usize, n_head: usize, dtype: DType) -> Option<usize> {
        assert!(n_head > 0 && c.is_multiple_of(n_head), "{c} channels do not split into {n_head} heads");
        let hs = c / n_head;
        let cc = self.inner.card.cc;
        let card = match dtype {
            DType::Bf16 => cc >= super::select::BF16_CC,
            DType::F16 => cc >= TENSOR_CORE_F16_CC,
            _ => false,
        };
        (card && self.inner.tensor_cores && TENSOR_CORE_HS.contains(&hs) && b * n_head <= 65535).then_some(hs)
    }
}

impl Cuda {
    /// The kernel variants a run of `plan` launches, which [`Backend::prepare`] compiles ahead:
    /// every family it uses in the activations' storage type (the reductions also in f32, for
    /// the gradients and the loss), and the attention kernels its shape runs on, as the ops
    /// above choose them. The emulator's tests check that a run launches exactly these.
    ///
    /// [`Backend::prepare`]: crate::backend::Backend::prepare
    pub(super) fn variants(&self, plan: &crate::backend::Plan) -> Vec<ahead::Key> {
        let s = sfx(plan.storage);
        let v = |storage: &'static str, head: usize| compile::Variant { storage, head: head as u32 };
        let (b, c, nh) = (plan.batch, plan.n_embd, plan.n_head);
        if plan.work == Work::Sample {
            // the KV-cache forward: one position at a time through the decode kernels
            return vec![("encoder", v(s, 0)), ("layernorm", v(s, 0)), ("attention", v(s, 0)), ("pointwise", v(s, 0))];
        }
        let attention = match (self.tensor_core_attention(b, c, nh, plan.storage), tiled(b, c, nh)) {
            (Some(hs), _) => ("attention_tc", v(s, hs)),
            (None, Some(hs)) => ("attention", v(s, hs)),
            (None, None) => ("attention", v(s, 0)),
        };
        let mut keys = vec![attention];
        keys.extend(["encoder", "layernorm", "pointwise", "classifier"].map(|f| (f, v(s, 0))));
        keys.push(("reduce", v("f32", 0))); // the loss's sum (and the gradients' norm)
        if plan.work == Work::Train {
            keys.push(("adamw", v(s, 0)));
            if plan.bias && s != "f32" {
                keys.push(("reduce", v(s, 0))); // the bias gradients' column sums of 16-bit outputs
            }
        }
        keys
    }
}

/// (B, T, C) of a qkv(B, T, 3C) tensor, and a check that a head fits the attention kernels
/// (at most 256 channels: eight per lane of a warp).
fn bt_c(qkv: Tensor, n_head: usize) -> (usize, usize, usize) {
    let d = qkv.dims();
    assert!(d.len() == 3 && d[2].is_multiple_of(3), "qkv must be (B, T, 3C): {qkv:?}");
    let c = d[2] / 3;
    assert!(c / n_head <= 256, "the CUDA attention kernels take heads of at most 256 channels, not {}", c / n_head);
    (d[0], d[1], c)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What cuBLASLt computes for `g` (column-major, as documented), with each operand's
    /// "address" an index into `mats`.
    fn column_major(g: &Gemm, mats: &mut [Vec<f32>]) {
        let (a, b) = (mats[g.a.0 as usize].clone(), mats[g.b.0 as usize].clone());
        let bias = g.bias.map(|i| mats[i as usize].clone());
        let d = &mut mats[g.d.0 as usize];
        for i in 0..g.m {
            for j in 0..g.n {
                let mut s = 0.0f32;
                for p in 0..g.k {
                    let x = if g.trans_a { a[p + i * g.lda] } else { a[i + p * g.lda] };
                    let y = if g.trans_b { b[j + p * g.ldb] } else { b[p + j * g.ldb] };
                    s += x * y;
                }
                let at = i + j * g.ldd;
                d[at] = g.beta * d[at] + s + bias.as_ref().map_or(0.0, |b| b[i]);
            }
        }
    }

    /// Every kernel name this file launches is defined by a source: the typed ones (named with
    /// `sfx`) as `NAME_##S` in a `FOR_STORAGE` macro, the others verbatim.
    #[test]
    fn every_launched_kernel_exists_in_the_sources() {
        let me = include_str!("run.rs");
        let sources: String = super::super::compile::SOURCES.iter().map(|(_, s)| *s).collect();
        let typed = regex::Regex::new(r#"format!\("([a-z_]+)_\{s?\}""#).unwrap();
        let plain = regex::Regex::new(r#"launch\("([a-z_]+)""#).unwrap();
        let mut n = 0;
        // and the family `compile::family` compiles it from is the one that defines it
        let family_source = |kernel: &str| {
            let f = compile::family(kernel).unwrap_or_else(|| panic!("no family for {kernel}"));
            compile::SOURCES.iter().find(|(n, _)| *n == f).unwrap().1
        };
        for c in typed.captures_iter(me) {
            let want = format!("void {}_##S(", &c[1]);
            assert!(family_source(&format!("{}_bf16", &c[1])).contains(&want), "its family's source does not define {want}");
            n += 1;
        }
        for c in plain.captures_iter(me) {
            let want = format!("void {}(", &c[1]);
            assert!(family_source(&c[1]).contains(&want), "its family's source does not define {want}");
            n += 1;
        }
        assert_eq!(compile::storage("attention_forward_tiled64_bf16"), Some("bf16"));
        assert_eq!(compile::storage("adamw_f16"), Some("f16"));
        assert_eq!(compile::storage("add_partials"), None);
        assert_eq!(compile::Variant::of("attention_backward_kv_tiled64_f16"), compile::Variant { storage: "f16", head: 64 });
        assert_eq!(compile::Variant::of("attention_decode_bf16"), compile::Variant { storage: "bf16", head: 0 });
        assert_eq!(compile::Variant::of("add_mean_loss"), compile::Variant { storage: "f32", head: 0 });
        assert!(n >= 20, "found only {n} launches: has this test's pattern gone stale?");
        // the tiled attention kernels, named with their head size
        for hs in TILED_HS {
            assert!(sources.contains(&format!("FOR_STORAGE(TILED_{hs})")), "no tiled attention kernels for heads of {hs}");
        }
        for k in ["attention_forward_tiled", "attention_backward_q_tiled", "attention_backward_kv_tiled"] {
            assert!(me.contains(&format!("\"{k}{{hs}}_")) && sources.contains(&format!("void {k}##HS##_##S(")), "{k}");
        }
        // the tensor-core ones, in their own family, for 16-bit storage and their head sizes
        for hs in TENSOR_CORE_HS {
            assert!(sources.contains(&format!("TC_FOR(TC_{hs})")), "no tensor-core attention kernels for heads of {hs}");
        }
        for k in ["attention_tc_forward_hs", "attention_tc_backward_q_hs", "attention_tc_backward_kv_hs"] {
            assert!(me.contains(&format!("\"{k}{{hs}}_")) && sources.contains(&format!("void {k}##HS##_##S(")), "{k}");
            assert_eq!(compile::family(&format!("{k}64_bf16")), Some("attention_tc"));
        }
        assert_eq!(compile::Variant::of("attention_tc_forward_hs32_bf16"), compile::Variant { storage: "bf16", head: 32 });
    }

    /// Every row lies in exactly one chunk, no chunk is empty, and the partials fit the scratch.
    #[test]
    fn column_sums_split_rows_into_chunks_that_fit() {
        for (n, c, sums) in [(1, 1, 1), (14, 72, 1), (600, 24, 2), (12288, 768, 2), (12288, 3072, 1), (16384, 6400, 1), (5, 1 << 19, 2)] {
            let (r, per) = column_chunks(n, c, sums);
            let (r, per) = (r as usize, per as usize);
            assert!((1..=64).contains(&r) && r * per >= n && (r - 1) * per < n, "n={n} c={c}: {r} chunks of {per}");
            assert!(r * c * sums <= COLUMN_PARTIALS, "n={n} c={c}: {r} chunks overflow");
        }
        assert_eq!(column_chunks(12288, 768, 2), (48, 256));
        assert_eq!(column_chunks(600, 24, 2), (3, 200));
    }

    #[test]
    fn the_linear_layers_column_major_products_are_the_row_major_ones() {
        let (n, ic, oc) = (5, 3, 4);
        let fill = |len: usize, salt: usize| (0..len).map(|i| ((i * 7 + salt * 13) % 11) as f32 - 5.0).collect::<Vec<f32>>();
        // 0 inp(N,IC) 1 w(OC,IC) 2 b(OC) 3 out(N,OC) 4 dout(N,OC) 5 dinp(N,IC) 6 dw(OC,IC)
        let mut m =
            vec![fill(n * ic, 1), fill(oc * ic, 2), fill(oc, 3), vec![0.0; n * oc], fill(n * oc, 4), vec![9.0; n * ic], fill(oc * ic, 5)];
        let f32_ = |i: u64| (i, DType::F32);
        let (inp, w, b, dout, dw0) = (m[0].clone(), m[1].clone(), m[2].clone(), m[4].clone(), m[6].clone());
        column_major(&linear_forward(n, ic, oc, f32_(3), f32_(0), f32_(1), Some(2), false), &mut m);
        column_major(&linear_dinp(n, ic, oc, f32_(5), f32_(4), f32_(1), false), &mut m);
        column_major(&linear_dw(n, ic, oc, f32_(6), f32_(4), f32_(0), false), &mut m);
        for r in 0..n {
            for o in 0..oc {
                let want: f32 = (0..ic).map(|i| inp[r * ic + i] * w[o * ic + i]).sum::<f32>() + b[o];
                assert_eq!(m[3][r * oc + o], want, "out[{r},{o}]");
            }
            for i in 0..ic {
                let want: f32 = (0..oc).map(|o| dout[r * oc + o] * w[o * ic + i]).sum();
                assert_eq!(m[5][r * ic + i], want, "dinp[{r},{i}]");
            }
        }
        for o in 0..oc {
            for i in 0..ic {
                let want: f32 = dw0[o * ic + i] + (0..n).map(|r| dout[r * oc + o] * inp[r * ic + i]).sum::<f32>();
                assert_eq!(m[6][o * ic + i], want, "dw[{o},{i}] accumulates");
            }
        }
    }
}
