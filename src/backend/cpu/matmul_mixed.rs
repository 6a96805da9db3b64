//! The linear layers of a bf16 run on the bf16 products ([`super::matmul_bf16`]): bf16
//! activations and weights read as they are stored (no widened copies), f32 accumulation, the
//! outputs rounded once (activations) or added to in f32 (weight and bias gradients). Other
//! mixed operands (fp16, or a bf16 run on the reference kernels) take [`super::widen`].

use super::matmul_bf16::{matmul_backward_bf16, matmul_forward_bf16};
use super::{Bufs, CpuBuf};
use crate::backend::tensor::N_BUFS;
use crate::backend::{BufId, DType, Op, Tensor};
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
            let (out, inp, w, b_) = unsafe { (p.bf16_mut(m.out), p.bf16(m.inp), p.bf16(m.w), p.bf16(b)) };
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
            let (dinp, dw, db_, dout, inp, w) =
                unsafe { (p.bf16_mut(m.dinp), p.f32_mut(m.dw), p.f32_mut(db), p.bf16(m.dout), p.bf16(m.inp), p.bf16(m.w)) };
            matmul_backward_bf16(dinp, dw, m.db.map(|_| db_), dout, inp, w, m.inp.cols());
            true
        }
        _ => false,
    }
}

/// The base address and length of every allocated buffer, for operands of mixed types (the
/// f32-only [`super::io`] cannot hand out bf16 slices).
struct Ptrs {
    base: [(*mut u8, usize, DType); N_BUFS],
}

impl Ptrs {
    /// Checks that each tensor lies inside an allocated buffer of its own element type and that
    /// no output shares an element with any other operand (a layout bug otherwise: panics).
    fn new(bufs: &mut Bufs, outs: &[Tensor], ins: &[Tensor]) -> Ptrs {
        let mut base = [(std::ptr::null_mut(), 0, DType::F32); N_BUFS];
        for id in BufId::ALL {
            if bufs.has(id) {
                base[id.index()] = match bufs.get_mut(id) {
                    CpuBuf::F32(v) => (v.as_mut_ptr() as *mut u8, v.len(), DType::F32),
                    CpuBuf::Bf16(v) => (v.as_mut_ptr() as *mut u8, v.len(), DType::Bf16),
                    CpuBuf::F16(v) => (v.as_mut_ptr() as *mut u8, v.len(), DType::F16),
                    CpuBuf::U32(v) => (v.as_mut_ptr() as *mut u8, v.len(), DType::U32),
                    CpuBuf::F64(v) => (v.as_mut_ptr() as *mut u8, v.len(), DType::F64),
                };
            }
        }
        for t in outs.iter().chain(ins) {
            let (ptr, len, dtype) = base[t.buf.index()];
            assert!(!ptr.is_null() && dtype == t.dtype, "{t:?}: not in an allocated {:?} buffer", t.dtype);
            assert!(t.span.end() <= len, "{t:?} out of bounds ({len} elements)");
        }
        for (i, a) in outs.iter().enumerate() {
            for b in outs[i + 1..].iter().chain(ins) {
                assert!(!a.overlaps(b), "{a:?} and {b:?} overlap");
            }
        }
        Ptrs { base }
    }

    fn at<T>(&self, t: Tensor) -> *mut T {
        (self.base[t.buf.index()].0 as *mut T).wrapping_add(t.span.off)
    }

    /// # Safety
    /// `t` was checked by [`Ptrs::new`] as a bf16 input; no output handed out overlaps it.
    unsafe fn bf16<'a>(&self, t: Tensor) -> &'a [bf16] {
        // SAFETY: in bounds of a live bf16 buffer (checked in `new`); only read.
        unsafe { std::slice::from_raw_parts(self.at::<bf16>(t), t.len()) }
    }

    /// # Safety
    /// `t` was checked by [`Ptrs::new`] as a bf16 output: it overlaps no other operand.
    unsafe fn bf16_mut<'a>(&self, t: Tensor) -> &'a mut [bf16] {
        // SAFETY: in bounds of a live bf16 buffer, aliasing nothing else handed out.
        unsafe { std::slice::from_raw_parts_mut(self.at::<bf16>(t), t.len()) }
    }

    /// # Safety
    /// `t` was checked by [`Ptrs::new`] as an f32 output: it overlaps no other operand.
    unsafe fn f32_mut<'a>(&self, t: Tensor) -> &'a mut [f32] {
        // SAFETY: in bounds of a live f32 buffer, aliasing nothing else handed out.
        unsafe { std::slice::from_raw_parts_mut(self.at::<f32>(t), t.len()) }
    }
}
