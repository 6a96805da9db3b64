//! The linear layers of a bf16 run on the bf16 products ([`super::matmul_bf16`]): bf16
//! activations and weights read as they are stored (no widened copies), f32 accumulation, the
//! outputs rounded once (activations) or added to in f32 (weight and bias gradients). Other
//! mixed operands (fp16, or a bf16 run on the reference kernels) take [`super::widen`].

use super::matmul_bf16::{matmul_backward_bf16, matmul_forward_bf16};
use super::typed::Ptrs;
use super::Bufs;
use crate::backend::{DType, Op, Tensor};
use half::bf16;

/// Runs `op` when it is a matmul whose activations and weights are bf16 (and whose gradients
/// are f32); false (nothing done) otherwise.
pub fn run(bufs: &mut Bufs, op: &Op) -> bool {
    let is = |t: &Tensor, d: DType| t.dtype == d;
    match *op {
        Op::Matmul(m)
            if is(&m.out, DType::Bf16) && is(&m.inp, DType::Bf16) && is(&m.w, DType::Bf16) && m.b.is_none_or(|b| is(&b, DType::Bf16)) =>
        {
            let b = m.b.unwrap_or(Tensor::empty(m.w.buf, m.w.span.off, DType::Bf16));
            let p = Ptrs::new(bufs, &[m.out], &[m.inp, m.w, b]);
            // SAFETY: `Ptrs::new` checked every tensor lies in its buffer of its type and the
            // output overlaps no other operand; the slices live while `bufs` is borrowed here.
            let (out, inp, w, b_) =
                unsafe { (p.slice_mut::<bf16>(m.out), p.slice::<bf16>(m.inp), p.slice::<bf16>(m.w), p.slice::<bf16>(b)) };
            matmul_forward_bf16(out, inp, w, m.b.map(|_| b_), m.inp.cols());
            true
        }
        Op::MatmulBackward(m)
            if [m.dinp, m.dout, m.inp, m.w].iter().all(|t| is(t, DType::Bf16))
                && is(&m.dw, DType::F32)
                && m.db.is_none_or(|b| is(&b, DType::F32)) =>
        {
            let db = m.db.unwrap_or(Tensor::empty(m.dw.buf, m.dw.span.off, DType::F32));
            let p = Ptrs::new(bufs, &[m.dinp, m.dw, db], &[m.dout, m.inp, m.w]);
            // SAFETY: as above (outputs overlap nothing; inputs may overlap each other: shared).
            let (dinp, dw, db_, dout, inp, w) = unsafe {
                (
                    p.slice_mut::<bf16>(m.dinp),
                    p.slice_mut::<f32>(m.dw),
                    p.slice_mut::<f32>(db),
                    p.slice::<bf16>(m.dout),
                    p.slice::<bf16>(m.inp),
                    p.slice::<bf16>(m.w),
                )
            };
            matmul_backward_bf16(dinp, dw, m.db.map(|_| db_), dout, inp, w, m.inp.cols());
            true
        }
        _ => false,
    }
}
