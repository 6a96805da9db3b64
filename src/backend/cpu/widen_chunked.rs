//! The elementwise ops of mixed precision without tensor-sized scratch: GELU (and its
//! backward), the residual add and the copy over bf16/f16 operands of one length are converted
//! a chunk at a time (each chunk's inputs widened into small f32 buffers, the f32 kernel, the
//! result rounded into the output), in parallel over chunks. Elementwise, so the bits are the
//! ones [`super::widen`]'s whole-tensor path gives.

use super::convert::Low;
use super::typed::{Elem, Ptrs};
use super::{pointwise, Bufs};
use crate::backend::{DType, Op, Tensor};
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

fn chunked<T: Elem + Low>(bufs: &mut Bufs, out: Tensor, ins: &[Tensor], kernel: Kernel) {
    let p = Ptrs::new(bufs, &[out], ins);
    // SAFETY: checked by `Ptrs::new` (types, bounds, the output overlapping no input); `bufs`
    // is borrowed for this whole function.
    let (o, srcs) = unsafe { (p.slice_mut::<T>(out), ins.iter().map(|t| p.slice::<T>(*t)).collect::<Vec<&[T]>>()) };
    let scratch = || [vec![0.0f32; CHUNK], vec![0.0f32; CHUNK], vec![0.0f32; CHUNK]];
    o.par_chunks_mut(CHUNK).enumerate().for_each_init(scratch, |wide, (c, dst)| {
        let r = c * CHUNK..c * CHUNK + dst.len();
        let [w_out, w_a, w_b] = wide;
        let (w_out, w_a, w_b) = (&mut w_out[..r.len()], &mut w_a[..r.len()], &mut w_b[..r.len()]);
        for (i, src) in srcs.iter().enumerate() {
            T::widen(if i == 0 { &mut *w_a } else { &mut *w_b }, &src[r.clone()]);
        }
        kernel(w_out, w_a, w_b);
        T::narrow(dst, w_out);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::{widen, Cpu};
    use crate::backend::ops::GeluBackward;
    use crate::backend::{Backend, BufId, Host, Span};

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
