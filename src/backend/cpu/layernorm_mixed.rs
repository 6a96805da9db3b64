//! LayerNorm over bf16/f16 activations: each row widened into a small f32 buffer, the f32 row
//! kernel of [`super::layernorm`], the result rounded back; statistics and the weight gradients
//! stay f32. The same rows, the same kernel and the same order of the weight gradients' partial
//! sums as [`super::widen`]'s whole-tensor path, so the same bits, without tensor-sized
//! scratch.

use super::convert::Low;
use super::layernorm::{add_partials, backward_blocks, layernorm_row, layernorm_row_backward};
use super::typed::{Elem, Ptrs};
use super::Bufs;
use crate::backend::{DType, Op, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;

/// Runs `op` when it is a LayerNorm (forward or backward) whose activations and weights share
/// one low-precision type; false (nothing done) otherwise.
pub fn run(bufs: &mut Bufs, op: &Op) -> bool {
    match *op {
        Op::LayerNorm(l) => match low(&[l.out, l.inp, l.w], l.b) {
            Some(DType::Bf16) => forward::<bf16>(bufs, op),
            Some(DType::F16) => forward::<f16>(bufs, op),
            _ => return false,
        },
        Op::LayerNormBackward(l) if l.dw.dtype == DType::F32 && l.db.is_none_or(|b| b.dtype == DType::F32) => {
            match low(&[l.dinp, l.dout, l.inp, l.w], None) {
                Some(DType::Bf16) => backward::<bf16>(bufs, op),
                Some(DType::F16) => backward::<f16>(bufs, op),
                _ => return false,
            }
        }
        _ => return false,
    }
    true
}

/// The one low-precision type of `ts` (and `b`), if they share one.
fn low(ts: &[Tensor], b: Option<Tensor>) -> Option<DType> {
    let d = ts[0].dtype;
    let same = ts.iter().chain(b.as_ref()).all(|t| t.dtype == d);
    (same && matches!(d, DType::Bf16 | DType::F16)).then_some(d)
}

/// `x` widened.
fn wide<T: Low>(x: &[T]) -> Vec<f32> {
    let mut v = vec![0.0; x.len()];
    T::widen(&mut v, x);
    v
}

fn forward<T: Elem + Low>(bufs: &mut Bufs, op: &Op) {
    let Op::LayerNorm(l) = *op else { unreachable!() };
    let b = l.b.unwrap_or(Tensor::empty(l.w.buf, l.w.span.off, l.w.dtype));
    let p = Ptrs::new(bufs, &[l.out, l.mean, l.rstd], &[l.inp, l.w, b]);
    // SAFETY: checked by `Ptrs::new` (types, bounds, outputs overlapping nothing); `bufs` is
    // borrowed for this whole function.
    let (out, mean, rstd, inp, w, b_) = unsafe {
        (
            p.slice_mut::<T>(l.out),
            p.slice_mut::<f32>(l.mean),
            p.slice_mut::<f32>(l.rstd),
            p.slice::<T>(l.inp),
            p.slice::<T>(l.w),
            p.slice::<T>(b),
        )
    };
    let (w, b) = (wide(w), if l.b.is_some() { wide(b_) } else { Vec::new() });
    let c = w.len();
    out.par_chunks_mut(c).zip(inp.par_chunks(c)).zip(mean.par_iter_mut().zip(rstd.par_iter_mut())).for_each_init(
        || (vec![0.0f32; c], vec![0.0f32; c]),
        |(x32, o32), ((o, x), (m, r))| {
            T::widen(x32, x);
            (*m, *r) = layernorm_row(o32, x32, &w, &b);
            T::narrow(o, o32);
        },
    );
}

fn backward<T: Elem + Low>(bufs: &mut Bufs, op: &Op) {
    let Op::LayerNormBackward(l) = *op else { unreachable!() };
    let db_t = l.db.unwrap_or(Tensor::empty(l.dw.buf, l.dw.span.off, DType::F32));
    let p = Ptrs::new(bufs, &[l.dinp, l.dw, db_t], &[l.dout, l.inp, l.mean, l.rstd, l.w]);
    // SAFETY: as in `forward`.
    let (dinp, dw, db, dout, inp, mean, rstd, w) = unsafe {
        (
            p.slice_mut::<T>(l.dinp),
            p.slice_mut::<f32>(l.dw),
            p.slice_mut::<f32>(db_t),
            p.slice::<T>(l.dout),
            p.slice::<T>(l.inp),
            p.slice::<f32>(l.mean),
            p.slice::<f32>(l.rstd),
            p.slice::<T>(l.w),
        )
    };
    let w = wide(w);
    let c = w.len();
    // as `layernorm_backward`: the same blocks of rows, each row widened into the task's scratch
    let scratch = || (vec![0.0f32; c], vec![0.0f32; c], vec![0.0f32; c]);
    let partials = backward_blocks(dinp, dout, inp, c, scratch, |(di32, d32, x32), row, di, d, x, part| {
        T::widen(di32, di);
        T::widen(d32, d);
        T::widen(x32, x);
        layernorm_row_backward(di32, part, d32, x32, &w, mean[row], rstd[row]);
        T::narrow(di, di32);
    });
    add_partials(&mut dw[..c], l.db.map(|_| db), &partials);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::{widen, Cpu};
    use crate::backend::{Backend, BufId, Span};

    #[test]
    fn rows_widened_one_by_one_give_the_whole_tensor_bits() {
        use crate::backend::ops::{LayerNorm, LayerNormBackward};
        use crate::backend::Host;
        let cpu = Cpu::FAST;
        let (n, c) = (5 * super::super::layernorm::ROWS_PER_PARTIAL + 37, 24);
        let act = |i: usize| Tensor::new(BufId::Acts, Span::new(i * n * c, n * c), &[n, c], DType::Bf16);
        let stat = |i: usize| Tensor::new(BufId::Stats, Span::new(i * n, n), &[n], DType::F32);
        let w = Tensor::new(BufId::Params, Span::new(0, c), &[c], DType::Bf16);
        let dw = Tensor::new(BufId::Grads, Span::new(0, c), &[c], DType::F32);
        let db = Tensor::new(BufId::Grads, Span::new(c, c), &[c], DType::F32);
        let op = Op::LayerNormBackward(LayerNormBackward {
            dinp: act(0),
            dw,
            db: Some(db),
            dout: act(1),
            inp: act(2),
            mean: stat(0),
            rstd: stat(1),
            w,
        });
        let fill = |k: usize, len: usize| -> Vec<f32> { (0..len).map(|i| (((i + k) * 7919) % 1001) as f32 / 400.0 - 1.2).collect() };
        let mut got = Vec::new();
        for by_rows in [true, false] {
            let mut bufs = Bufs::default();
            bufs.set(BufId::Acts, cpu.alloc(3 * n * c, DType::Bf16).unwrap());
            bufs.set(BufId::Stats, cpu.alloc(2 * n, DType::F32).unwrap());
            bufs.set(BufId::Params, cpu.alloc(c, DType::Bf16).unwrap());
            bufs.set(BufId::Grads, cpu.alloc(2 * c, DType::F32).unwrap());
            for (t, k) in [(act(0), 1), (act(1), 2), (act(2), 3), (stat(0), 4), (w, 5), (dw, 6), (db, 7)] {
                cpu.upload(&mut bufs, t, &Host::F32(fill(k, t.len()))).unwrap();
            }
            cpu.upload(&mut bufs, stat(1), &Host::F32(vec![0.7; n])).unwrap();
            // the forward (into act 1, the statistics) then the backward
            let fwd = Op::LayerNorm(LayerNorm { out: act(1), mean: stat(0), rstd: stat(1), inp: act(2), w, b: Some(w) });
            for op in [fwd, op] {
                if by_rows {
                    assert!(run(&mut bufs, &op));
                } else {
                    widen::run(&cpu, &mut bufs, &op).unwrap();
                }
            }
            got.push([act(0), act(1), stat(0), stat(1), dw, db].map(|t| cpu.download(&bufs, t).unwrap().into_f32()));
        }
        assert_eq!(got[0], got[1]);
    }
}
