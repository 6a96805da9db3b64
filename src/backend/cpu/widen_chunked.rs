//! The elementwise ops of mixed precision without tensor-sized scratch: GELU (and its
//! backward), the residual add and the copy over bf16/f16 operands of one length are converted
//! a chunk at a time (each chunk's inputs widened into small f32 buffers, the f32 kernel, the
//! result rounded into the output), in parallel over chunks. Elementwise, so the bits are the
//! ones [`super::widen`]'s whole-tensor path gives.

use super::convert::Low;
use super::{pointwise, Bufs, CpuBuf};
use crate::backend::{BufId, DType, Op, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;

/// Elements per task.
const CHUNK: usize = 1 << 13;

/// An f32 kernel over one output and up to two inputs of the same length.
type Kernel = fn(&mut [f32], &[f32], &[f32]);

/// Runs `op` chunk by chunk when it is an elementwise op whose operands all have the same
/// low-precision type and length; false (nothing done) otherwise.
pub fn run(bufs: &mut Bufs, op: &Op) -> bool {
    let (out, ins, kernel): (Tensor, Vec<Tensor>, Kernel) = match *op {
        // one chunk's kernel, on this thread (the chunks are the parallel tasks)
        Op::Gelu(g) => (g.out, vec![g.inp], |o, x, _| pointwise::gelu_forward_chunk(o, x)),
        Op::GeluBackward(g) => (g.dinp, vec![g.dout, g.inp], |o, d, x| pointwise::gelu_backward_chunk(o, d, x)),
        Op::Residual(r) => (r.out, vec![r.a, r.b], |o, a, b| o.iter_mut().zip(a).zip(b).for_each(|((o, a), b)| *o = a + b)),
        Op::Copy { dst, src } => (dst, vec![src], |o, s, _| o.copy_from_slice(s)),
        _ => return false,
    };
    if !ins.iter().all(|t| t.dtype == out.dtype && t.len() == out.len()) {
        return false;
    }
    match out.dtype {
        DType::Bf16 => chunked::<bf16>(bufs, out, &ins, kernel),
        DType::F16 => chunked::<f16>(bufs, out, &ins, kernel),
        _ => return false,
    }
    true
}

/// Element storage this path converts: bf16 or f16.
trait Half: Low {
    /// The buffer's elements (a bug, not input, if it holds another type).
    fn of(b: &mut CpuBuf) -> &mut [Self];
}

impl Half for bf16 {
    fn of(b: &mut CpuBuf) -> &mut [bf16] {
        match b {
            CpuBuf::Bf16(v) => v,
            b => panic!("a bf16 tensor in a {:?} buffer", b.dtype()),
        }
    }
}

impl Half for f16 {
    fn of(b: &mut CpuBuf) -> &mut [f16] {
        match b {
            CpuBuf::F16(v) => v,
            b => panic!("an f16 tensor in a {:?} buffer", b.dtype()),
        }
    }
}

/// A buffer's elements as an address (for operands that share a buffer).
#[derive(Clone, Copy)]
struct Base<T>(*mut T, usize);
// SAFETY: an address and a length; which elements a task touches through it is decided in
// `chunked`, where the output range of each task is disjoint from every other task's and
// from every input.
unsafe impl<T> Send for Base<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for Base<T> {}

impl<T> Base<T> {
    /// The address of element `i` (a method, so that closures capture the whole `Base`).
    fn at(&self, i: usize) -> *mut T {
        self.0.wrapping_add(i)
    }
}

fn chunked<T: Half>(bufs: &mut Bufs, out: Tensor, ins: &[Tensor], kernel: Kernel) {
    let mut base = |id: BufId| {
        let v = T::of(bufs.get_mut(id));
        Base(v.as_mut_ptr(), v.len())
    };
    let o = base(out.buf);
    let bases: Vec<Base<T>> = ins.iter().map(|t| base(t.buf)).collect();
    for (t, b) in ins.iter().zip(&bases).chain([(&out, &o)]) {
        assert!(t.span.end() <= b.1, "{t:?} out of bounds ({} elements)", b.1);
    }
    for t in ins {
        assert!(!t.overlaps(&out), "{t:?} and {out:?} overlap");
    }
    let n = out.len();
    let scratch = || [vec![0.0f32; CHUNK], vec![0.0f32; CHUNK], vec![0.0f32; CHUNK]];
    (0..n.div_ceil(CHUNK)).into_par_iter().for_each_init(scratch, |wide, c| {
        let r = c * CHUNK..((c + 1) * CHUNK).min(n);
        let [w_out, w_a, w_b] = wide;
        let (w_out, w_a, w_b) = (&mut w_out[..r.len()], &mut w_a[..r.len()], &mut w_b[..r.len()]);
        for (i, (t, b)) in ins.iter().zip(&bases).enumerate() {
            // SAFETY: in bounds (checked above); inputs are only read, and no task writes them
            // (the output overlaps no input)
            let src = unsafe { std::slice::from_raw_parts(b.at(t.span.off + r.start) as *const T, r.len()) };
            T::widen(if i == 0 { &mut *w_a } else { &mut *w_b }, src);
        }
        kernel(w_out, w_a, w_b);
        // SAFETY: in bounds; each task writes its own range `r` of the output, which no other
        // task reads or writes
        let dst = unsafe { std::slice::from_raw_parts_mut(o.at(out.span.off + r.start), r.len()) };
        T::narrow(dst, w_out);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::{widen, Cpu};
    use crate::backend::ops::GeluBackward;
    use crate::backend::{Backend, Host, Span};

    #[test]
    fn chunks_give_the_whole_tensor_paths_bits() {
        // three operands in one buffer, several chunks and a ragged end, in both formats
        let n = 3 * CHUNK + 5;
        for dtype in [DType::Bf16, DType::F16] {
            let cpu = Cpu::FAST;
            let t = |i: usize| Tensor::new(BufId::Acts, Span::new(i * n, n), &[n], dtype);
            let op = Op::GeluBackward(GeluBackward { dinp: t(2), dout: t(0), inp: t(1) });
            let mut results = Vec::new();
            for chunked in [true, false] {
                let mut bufs = Bufs::default();
                bufs.set(BufId::Acts, cpu.alloc(3 * n, dtype).unwrap());
                let x: Vec<f32> = (0..3 * n).map(|i| ((i * 7919) % 2001) as f32 / 500.0 - 2.0).collect();
                cpu.upload(&mut bufs, Tensor::new(BufId::Acts, Span::new(0, 3 * n), &[3 * n], dtype), &Host::F32(x)).unwrap();
                if chunked {
                    assert!(run(&mut bufs, &op));
                } else {
                    widen::run(&cpu, &mut bufs, &op).unwrap();
                }
                results.push(cpu.download(&bufs, t(2)).unwrap().into_f32());
            }
            assert_eq!(results[0], results[1], "{dtype:?}");
            assert!(results[0].iter().any(|&v| v != 0.0));
        }
    }
}
