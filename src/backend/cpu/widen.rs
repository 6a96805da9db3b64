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

use super::convert::Low;
use super::{Bufs, Cpu, CpuBuf};
use crate::backend::{Backend, BufId, DType, Op, Span, Tensor};
use anyhow::Result;
use rayon::prelude::*;

/// Whether `op` has a bf16/f16 operand and so takes this path (zeroing never does: it needs
/// no arithmetic).
pub fn needed(op: &Op) -> bool {
    // asked of every op of every run: a visit, no list of operands
    let mut low = false;
    let mut op = *op;
    op.visit(&mut |t, _| low |= is_low(t.dtype));
    low && !matches!(op, Op::Zero(_))
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
    let r = off..off + dst.len();
    match b {
        CpuBuf::Bf16(v) => dst.par_chunks_mut(CHUNK).zip(v[r].par_chunks(CHUNK)).for_each(|(d, s)| Low::widen(d, s)),
        CpuBuf::F16(v) => dst.par_chunks_mut(CHUNK).zip(v[r].par_chunks(CHUNK)).for_each(|(d, s)| Low::widen(d, s)),
        _ => unreachable!("widen of a {:?} buffer", b.dtype()),
    }
}

/// Elements `off..off + src.len()` of a low-precision buffer = `src`, each rounded to nearest
/// even.
pub fn narrow(b: &mut CpuBuf, off: usize, src: &[f32]) {
    let r = off..off + src.len();
    match b {
        CpuBuf::Bf16(v) => v[r].par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(d, s)| Low::narrow(d, s)),
        CpuBuf::F16(v) => v[r].par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(d, s)| Low::narrow(d, s)),
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
    // swap each low-precision buffer for its widened scratch: every operand the op reads is
    // widened into place (an output it only overwrites is not: whatever the reused scratch held
    // there is overwritten)
    let mut real = Vec::with_capacity(scratches.len());
    for s in &scratches {
        let b = bufs.take(s.id).unwrap_or_else(|| panic!("buffer {:?} is not allocated", s.id));
        let mut wide = reuse(s.len);
        for (t, _) in operands.iter().filter(|(t, _)| t.buf == s.id && !overwritten(op, t)) {
            let m = s.moved(*t);
            widen_into(&mut wide[m.span.off..m.span.end()], &b, t.span.off);
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
        give_back(wide);
    }
    result
}

/// Scratch buffers kept between ops: a fresh tensor-sized allocation would cost a page fault
/// per 4 KiB on every op.
static SCRATCH: std::sync::Mutex<Vec<Vec<f32>>> = std::sync::Mutex::new(Vec::new());

/// A scratch buffer of at least `len` elements (its old values: every element an op reads is
/// written first).
fn reuse(len: usize) -> Vec<f32> {
    let mut v = SCRATCH.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_default();
    if v.len() < len {
        v.resize(len, 0.0);
    }
    v
}

fn give_back(v: Vec<f32>) {
    SCRATCH.lock().unwrap_or_else(|e| e.into_inner()).push(v);
}

/// Whether `t` is an output `op` overwrites without reading it first (so its scratch needs no
/// widened copy). Outputs that accumulate (LayerNorm's `dinp`), change in place (dropout, the
/// classifier's logits, AdamW, the KV cache) or are only partly written are read.
fn overwritten(op: &Op, t: &Tensor) -> bool {
    let pure: &[Tensor] = match op {
        Op::Embed(e) => &[e.out],
        Op::LayerNorm(l) => &[l.out],
        Op::Matmul(m) => &[m.out],
        Op::MatmulBackward(m) => &[m.dinp],
        Op::Attention(a) => &[a.out],
        Op::AttentionBackward(a) => &[a.dqkv],
        Op::Gelu(g) => &[g.out],
        Op::GeluBackward(g) => &[g.dinp],
        Op::Residual(r) => &[r.out],
        Op::Copy { dst, .. } => &[*dst],
        _ => &[],
    };
    pure.contains(t)
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
