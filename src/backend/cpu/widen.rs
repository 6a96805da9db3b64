//! The portable mixed-precision path: an op over bf16/f16 operands runs the f32 kernel on
//! copies of those operands widened to f32, and its outputs are rounded back once (round to
//! nearest even), which is exactly the arithmetic ARCHITECTURE.md's mixed-precision design asks
//! of every kernel (read the storage type, compute in f32, round each result once). Correct on
//! any CPU; the conversions cost memory traffic, so the hot ops get kernels of their own.
//!
//! How: the low-precision operands of one buffer are gathered into one f32 scratch buffer
//! (their spans merged where they overlap, so that an output read by another operand is seen
//! once), the op's tensors are re-pointed into it, the op runs on the scratch buffers in the
//! buffers' places, and the written spans are rounded back into the real buffers.

use super::{Bufs, Cpu, CpuBuf};
use crate::backend::ops::{LayerNorm, LayerNormBackward};
use crate::backend::{Backend, BufId, DType, Op, Span, Tensor};
use anyhow::Result;
use rayon::prelude::*;

/// Whether `op` has a bf16/f16 operand and so takes this path (zeroing never does: it needs
/// no arithmetic).
pub fn needed(op: &Op) -> bool {
    !matches!(op, Op::Zero(_)) && op.operands().iter().any(|(t, _)| is_low(t.dtype))
}

fn is_low(d: DType) -> bool {
    matches!(d, DType::Bf16 | DType::F16)
}

/// Elements `r` of a low-precision buffer, widened to f32.
pub fn wide(b: &CpuBuf, r: std::ops::Range<usize>) -> Vec<f32> {
    let mut out = vec![0.0; r.len()];
    widen_into(&mut out, b, r.start);
    out
}

/// Elements per parallel task of a conversion.
const CHUNK: usize = 1 << 14;

/// `dst` = elements `off..` of a low-precision buffer, widened (exact).
fn widen_into(dst: &mut [f32], b: &CpuBuf, off: usize) {
    use half::slice::HalfFloatSliceExt;
    let r = off..off + dst.len();
    match b {
        CpuBuf::Bf16(v) => dst.par_chunks_mut(CHUNK).zip(v[r].par_chunks(CHUNK)).for_each(|(d, s)| s.convert_to_f32_slice(d)),
        CpuBuf::F16(v) => dst.par_chunks_mut(CHUNK).zip(v[r].par_chunks(CHUNK)).for_each(|(d, s)| s.convert_to_f32_slice(d)),
        _ => unreachable!("widen of a {:?} buffer", b.dtype()),
    }
}

/// Elements `off..off + src.len()` of a low-precision buffer = `src`, each rounded to nearest
/// even.
pub fn narrow(b: &mut CpuBuf, off: usize, src: &[f32]) {
    use half::slice::HalfFloatSliceExt;
    let r = off..off + src.len();
    match b {
        CpuBuf::Bf16(v) => v[r].par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(d, s)| d.convert_from_f32_slice(s)),
        CpuBuf::F16(v) => v[r].par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(d, s)| d.convert_from_f32_slice(s)),
        _ => unreachable!("narrow into a {:?} buffer", b.dtype()),
    }
}

/// The f32 scratch copy of one low-precision buffer's operands: the merged spans it holds
/// (sorted, disjoint) and where each starts in the scratch.
struct Scratch {
    id: BufId,
    /// (span in the real buffer, offset in the scratch)
    pieces: Vec<(Span, usize)>,
    len: usize,
}

impl Scratch {
    /// Merges the spans of `tensors` (all in buffer `id`).
    fn new(id: BufId, mut spans: Vec<Span>) -> Scratch {
        spans.sort_by_key(|s| s.off);
        let mut merged: Vec<Span> = Vec::new();
        for s in spans.into_iter().filter(|s| s.len > 0) {
            match merged.last_mut() {
                Some(m) if s.off <= m.end() => m.len = m.len.max(s.end() - m.off),
                _ => merged.push(s),
            }
        }
        let mut len = 0;
        let pieces = merged
            .into_iter()
            .map(|s| {
                len += s.len;
                (s, len - s.len)
            })
            .collect();
        Scratch { id, pieces, len }
    }

    /// Where `t` (inside one of the pieces) lies in the scratch, as an f32 tensor.
    fn moved(&self, t: Tensor) -> Tensor {
        if t.is_empty() {
            return Tensor { dtype: DType::F32, ..t };
        }
        let (s, at) =
            self.pieces.iter().find(|(s, _)| s.off <= t.span.off && t.span.end() <= s.end()).expect("a merged span holds every operand");
        Tensor { span: Span::new(at + t.span.off - s.off, t.len()), dtype: DType::F32, ..t }
    }
}

/// Rows per block of [`run_by_rows`]: a multiple of the LayerNorm backward's partial-sum blocks,
/// so that blocks add the weight gradients' partials in the order one call does.
const BLOCK_ROWS: usize = 8 * super::layernorm::ROWS_PER_PARTIAL;

/// LayerNorm (forward and backward) over low-precision operands, one block of rows at a time
/// through [`run`]: the widened scratch is a block, not the tensor. Each row is independent and
/// the weight-gradient partials are added in the same order as by one call over all rows, so
/// the bits are [`run`]'s. False (nothing done) for other ops.
pub fn run_by_rows(cpu: &Cpu, bufs: &mut Bufs, op: &Op) -> Result<bool> {
    let n = match op {
        Op::LayerNorm(l) => l.mean.len(),
        Op::LayerNormBackward(l) => l.mean.len(),
        _ => return Ok(false),
    };
    // rows of an (N, ...) tensor; the (C)-shaped weights and their gradients stay whole
    let block = |t: Tensor, r: &std::ops::Range<usize>| -> Tensor {
        let per_row = t.len() / n;
        Tensor::new(t.buf, Span::new(t.span.off + r.start * per_row, r.len() * per_row), &[r.len(), per_row], t.dtype)
    };
    for start in (0..n).step_by(BLOCK_ROWS) {
        let r = start..(start + BLOCK_ROWS).min(n);
        let sub = match *op {
            Op::LayerNorm(l) => Op::LayerNorm(LayerNorm {
                out: block(l.out, &r),
                mean: block(l.mean, &r),
                rstd: block(l.rstd, &r),
                inp: block(l.inp, &r),
                ..l
            }),
            Op::LayerNormBackward(l) => Op::LayerNormBackward(LayerNormBackward {
                dinp: block(l.dinp, &r),
                dout: block(l.dout, &r),
                inp: block(l.inp, &r),
                mean: block(l.mean, &r),
                rstd: block(l.rstd, &r),
                ..l
            }),
            _ => unreachable!(),
        };
        run(cpu, bufs, &sub)?;
    }
    Ok(true)
}

/// Runs `op` on f32 copies of its low-precision operands (see the module doc).
pub fn run(cpu: &Cpu, bufs: &mut Bufs, op: &Op) -> Result<()> {
    let operands = op.operands();
    let mut scratches: Vec<Scratch> = Vec::new();
    for (t, _) in operands.iter().filter(|(t, _)| is_low(t.dtype)) {
        if !scratches.iter().any(|s| s.id == t.buf) {
            let spans = operands.iter().filter(|(u, _)| u.buf == t.buf).map(|(u, _)| u.span).collect();
            scratches.push(Scratch::new(t.buf, spans));
        }
    }
    // swap each low-precision buffer for its widened scratch
    let mut real = Vec::with_capacity(scratches.len());
    for s in &scratches {
        let b = bufs.take(s.id).unwrap_or_else(|| panic!("buffer {:?} is not allocated", s.id));
        // (zeroed memory comes from the allocator as untouched pages: no pass over it)
        let mut wide = vec![0.0f32; s.len];
        for (span, at) in &s.pieces {
            widen_into(&mut wide[*at..*at + span.len], &b, span.off);
        }
        bufs.set(s.id, CpuBuf::F32(wide));
        real.push(b);
    }
    let moved = op.map(&mut |t, _| scratches.iter().find(|s| s.id == t.buf && is_low(t.dtype)).map_or(t, |s| s.moved(t)));
    let result = cpu.run(bufs, &moved);
    // round what the op wrote back into the real buffers, and put them back
    for (s, mut b) in scratches.iter().zip(real) {
        let CpuBuf::F32(wide) = bufs.take(s.id).expect("the scratch is in place") else { unreachable!() };
        for (t, _) in operands.iter().filter(|(t, w)| *w && t.buf == s.id && is_low(t.dtype)) {
            let m = s.moved(*t);
            narrow(&mut b, t.span.off, &wide[m.span.off..m.span.end()]);
        }
        bufs.set(s.id, b);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    #[test]
    fn overlapping_spans_merge_and_operands_keep_their_places() {
        let s = Scratch::new(BufId::Acts, vec![Span::new(10, 4), Span::new(0, 2), Span::new(12, 6), Span::new(30, 1)]);
        assert_eq!(s.pieces, vec![(Span::new(0, 2), 0), (Span::new(10, 8), 2), (Span::new(30, 1), 10)]);
        assert_eq!(s.len, 11);
        let t = Tensor::new(BufId::Acts, Span::new(12, 6), &[2, 3], DType::Bf16);
        let m = s.moved(t);
        assert_eq!((m.span, m.dtype, m.dims()), (Span::new(4, 6), DType::F32, &[2, 3][..]));
    }

    #[test]
    fn layernorm_by_blocks_of_rows_gives_the_whole_tensor_bits() {
        use crate::backend::ops::LayerNormBackward;
        use crate::backend::Host;
        let cpu = Cpu::FAST;
        let (n, c) = (2 * BLOCK_ROWS + 37, 24);
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
            if by_rows {
                assert!(run_by_rows(&cpu, &mut bufs, &op).unwrap());
            } else {
                run(&cpu, &mut bufs, &op).unwrap();
            }
            got.push([act(0), dw, db].map(|t| cpu.download(&bufs, t).unwrap().into_f32()));
        }
        assert_eq!(got[0], got[1]);
    }

    #[test]
    fn a_low_precision_op_equals_the_f32_op_on_rounded_inputs() {
        // gelu on bf16 storage: widen, the f32 kernel, one rounding of the result
        let cpu = Cpu::FAST;
        let x: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) * 0.173).collect();
        let rounded: Vec<f32> = x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
        let mut want = vec![0.0; 37];
        super::super::pointwise::gelu_forward(&mut want, &rounded);
        let mut bufs = Bufs::default();
        bufs.set(BufId::Acts, cpu.alloc(100, DType::Bf16).unwrap());
        let inp = Tensor::new(BufId::Acts, Span::new(50, 37), &[37], DType::Bf16);
        let out = Tensor::new(BufId::Acts, Span::new(3, 37), &[37], DType::Bf16);
        cpu.upload(&mut bufs, inp, &crate::backend::Host::F32(x)).unwrap();
        cpu.run(&mut bufs, &Op::Gelu(crate::backend::ops::Gelu { out, inp })).unwrap();
        let got = cpu.download(&bufs, out).unwrap().into_f32();
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(*g, bf16::from_f32(*w).to_f32());
        }
        assert_eq!(cpu.download(&bufs, inp).unwrap().into_f32(), rounded, "the input is untouched");
    }
}
