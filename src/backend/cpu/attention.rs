//! Causal multi-head self-attention that stores no T x T matrix: the forward keeps each
//! attention row's softmax maximum and 1/sum (`stats`, B x NH x T x 2) and the backward
//! recomputes the probabilities from them (flash attention's scheme: one more scores product per
//! head, in exchange for not keeping B x NH x T x T floats per layer; the time saved on that
//! memory about pays for the product, as PERFORMANCE.md measured).
//!
//! `attention_forward`/`attention_backward` run each (batch row, head) as a task of small
//! matmuls through `gemm` (scores, probabilities x values, and their gradients) over 64-row
//! query blocks whose scores live in a per-task scratch block, with the transposes and the
//! q/k/v interleaving of qkv(B,T,3C) folded into strides. The recomputed probabilities are the
//! forward's bits (the same products and the same row operations). The `_naive` versions are the
//! plain loop nests they are tested against.
//! <https://github.com/karpathy/nanoGPT/blob/master/model.py> (CausalSelfAttention, the
//! non-flash branch, whose math this is), with attention dropout from a counter-based mask.

use super::matmul::{gemm_raw, Dst, Par, Src};
use super::simd::dispatch;
use crate::backend::Dropout;
use rayon::prelude::*;

/// out(B,T,C) and stats(B,NH,T,2) from qkv(B,T,3C), where qkv holds q, k, v side by side and
/// stats holds each attention row's softmax maximum and 1/sum.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward_naive(out: &mut [f32], stats: &mut [f32], qkv: &[f32], _b: usize, t: usize, c: usize, nh: usize, drop: Dropout) {
    let hs = c / nh;
    let scale = 1.0 / (hs as f32).sqrt();
    let c3 = 3 * c;
    out.par_chunks_mut(t * c).zip(stats.par_chunks_mut(nh * t * 2)).zip(qkv.par_chunks(t * c3)).enumerate().for_each(
        |(bi, ((out, stats), qkv))| {
            let mut row = vec![0.0f32; t];
            for h in 0..nh {
                for t1 in 0..t {
                    // seek to q[b, t1, h, :]
                    let q = &qkv[t1 * c3 + h * hs..t1 * c3 + (h + 1) * hs];
                    let mut maxv = f32::NEG_INFINITY;
                    for t2 in 0..=t1 {
                        let k = &qkv[t2 * c3 + c + h * hs..t2 * c3 + c + (h + 1) * hs];
                        let s = q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale;
                        row[t2] = s;
                        maxv = maxv.max(s);
                    }
                    let mut sum = 0.0f32;
                    for a in &mut row[..=t1] {
                        *a = (*a - maxv).exp();
                        sum += *a;
                    }
                    let inv = 1.0 / sum;
                    for a in &mut row[..=t1] {
                        *a *= inv;
                    }
                    stats[(h * t + t1) * 2] = maxv;
                    stats[(h * t + t1) * 2 + 1] = inv;
                    // y[t1] = sum_t2 dropout(att[t1, t2]) * v[t2]
                    let y = &mut out[t1 * c + h * hs..t1 * c + (h + 1) * hs];
                    y.fill(0.0);
                    let base = mask_row(bi * nh + h, t, t1);
                    for t2 in 0..=t1 {
                        let a = if drop.active() { row[t2] * drop.scale(base + t2) } else { row[t2] };
                        let v = &qkv[t2 * c3 + 2 * c + h * hs..t2 * c3 + 2 * c + (h + 1) * hs];
                        for (y, &v) in y.iter_mut().zip(v) {
                            *y += a * v;
                        }
                    }
                }
            }
        },
    );
}

/// dqkv(B,T,3C) = gradients through attention, from the forward's qkv and stats.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_naive(
    dqkv: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    stats: &[f32],
    _b: usize,
    t: usize,
    c: usize,
    nh: usize,
    drop: Dropout,
) {
    let hs = c / nh;
    let scale = 1.0 / (hs as f32).sqrt();
    let c3 = 3 * c;
    dqkv.fill(0.0);
    dqkv.par_chunks_mut(t * c3)
        .zip(dout.par_chunks(t * c).zip(qkv.par_chunks(t * c3)))
        .zip(stats.par_chunks(nh * t * 2))
        .enumerate()
        .for_each(|(bi, ((dqkv, (dout, qkv)), stats))| {
            let (mut arow, mut drow) = (vec![0.0f32; t], vec![0.0f32; t]);
            for h in 0..nh {
                for t1 in 0..t {
                    // the probabilities again, from the scores and the forward's statistics
                    let (maxv, inv) = (stats[(h * t + t1) * 2], stats[(h * t + t1) * 2 + 1]);
                    let q = &qkv[t1 * c3 + h * hs..t1 * c3 + (h + 1) * hs];
                    for t2 in 0..=t1 {
                        let k = &qkv[t2 * c3 + c + h * hs..t2 * c3 + c + (h + 1) * hs];
                        let s = q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale;
                        arow[t2] = (s - maxv).exp() * inv;
                    }
                    let dy = &dout[t1 * c + h * hs..t1 * c + (h + 1) * hs];
                    let base = mask_row(bi * nh + h, t, t1);
                    // backward through y = sum dropout(att) * v
                    for t2 in 0..=t1 {
                        let m = if drop.active() { drop.scale(base + t2) } else { 1.0 };
                        let v_off = t2 * c3 + 2 * c + h * hs;
                        let v = &qkv[v_off..v_off + hs];
                        drow[t2] = m * v.iter().zip(dy).map(|(a, b)| a * b).sum::<f32>();
                        let a = arow[t2] * m;
                        for (dv, &g) in dqkv[v_off..v_off + hs].iter_mut().zip(dy) {
                            *dv += a * g;
                        }
                    }
                    // softmax backward: dpre[t2] = att[t2] * (datt[t2] - sum_t3 att[t3] datt[t3])
                    let dot = arow[..=t1].iter().zip(&drow[..=t1]).map(|(a, d)| a * d).sum::<f32>();
                    let q_off = t1 * c3 + h * hs;
                    for t2 in 0..=t1 {
                        let dpre = arow[t2] * (drow[t2] - dot) * scale;
                        let k_off = t2 * c3 + c + h * hs;
                        for i in 0..hs {
                            dqkv[q_off + i] += dpre * qkv[k_off + i];
                            dqkv[k_off + i] += dpre * qkv[q_off + i];
                        }
                    }
                }
            }
        });
}

/// Query rows per block: a block of rows r0..r1 needs only keys 0..r1.
const QBLOCK: usize = 64;

/// The (r0, r1) row ranges of [`QBLOCK`]-row query blocks covering 0..t.
fn query_blocks(t: usize) -> impl DoubleEndedIterator<Item = (usize, usize)> {
    (0..t).step_by(QBLOCK).map(move |r0| (r0, (r0 + QBLOCK).min(t)))
}

dispatch! {
    /// row[..=t1] = softmax(row[..=t1]); row[t1+1..] = 0. Returns the maximum and 1/sum.
    fn softmax_causal_row(row: &mut [f32], t1: usize) -> (f32, f32) {
        let (x, rest) = row.split_at_mut(t1 + 1);
        let maxv = super::mathf::max(x);
        for v in x.iter_mut() {
            *v = super::mathf::exp(*v - maxv);
        }
        let inv = 1.0 / super::mathf::sum_by(x, |v| v);
        x.iter_mut().for_each(|v| *v *= inv);
        rest.fill(0.0);
        (maxv, inv)
    }
}

dispatch! {
    /// row[..=t1] = exp(row[..=t1] - maxv) * inv (the probabilities [`softmax_causal_row`]
    /// made, the same bits); row[t1+1..] = 0.
    fn probs_causal_row(row: &mut [f32], t1: usize, maxv: f32, inv: f32) {
        let (x, rest) = row.split_at_mut(t1 + 1);
        for v in x.iter_mut() {
            *v = super::mathf::exp(*v - maxv) * inv;
        }
        rest.fill(0.0);
    }
}

dispatch! {
    /// drow[..=t1] = arow * (drow - <arow, drow>); drow[t1+1..] = 0.
    fn softmax_backward_row(arow: &[f32], drow: &mut [f32], t1: usize) {
        let (d, rest) = drow.split_at_mut(t1 + 1);
        let a = &arow[..=t1];
        let dot = super::mathf::sum_by2(a, d, |x, y| x * y);
        for (d, &a) in d.iter_mut().zip(a) {
            *d = a * (*d - dot);
        }
        rest.fill(0.0);
    }
}

/// One task's scratch: a query block's scores/probabilities, their dropped-out copy and (in
/// the backward) their gradient, each QBLOCK x T (row stride T).
struct Scratch {
    p: Vec<f32>,
    dropped: Vec<f32>,
    dp: Vec<f32>,
}

impl Scratch {
    fn new(t: usize, drop: Dropout, backward: bool) -> Scratch {
        let block = QBLOCK.min(t) * t;
        Scratch {
            p: vec![0.0; block],
            dropped: vec![0.0; if drop.active() { block } else { 0 }],
            dp: vec![0.0; if backward { block } else { 0 }],
        }
    }
}

/// One head's operands: its q, k and v, each T x hs inside qkv at batch row `bi`, head `h`
/// (rows 3C apart).
#[derive(Clone, Copy)]
struct Head {
    q: Src,
    k: Src,
    v: Src,
    t: usize,
    hs: usize,
    scale: f32,
}

impl Head {
    /// Batch row `bi`, head `h` of qkv(B,T,3C) (the callers check qkv's length).
    fn new(qkv: &[f32], bi: usize, h: usize, t: usize, c: usize, nh: usize) -> Head {
        let hs = c / nh;
        let q = Src::rows(qkv.as_ptr(), 3 * c).at(bi * t, h * hs);
        Head { q, k: q.at(0, c), v: q.at(0, 2 * c), t, hs, scale: 1.0 / (hs as f32).sqrt() }
    }

    /// p[0..r1-r0, 0..r1] = probabilities of query rows r0..r1 (rows T apart), zero past the
    /// diagonal: by softmax, keeping each row's (max, 1/sum) in `stats`, or recomputed from them.
    ///
    /// # Safety
    /// q/k must address T rows of hs elements.
    unsafe fn probs(self, p: &mut [f32], r0: usize, r1: usize, mut stats: RowStats) {
        let t = self.t;
        // SAFETY: q/k address rows r0..r1 and 0..r1 of this head (the caller's contract); p
        // holds (r1 - r0) rows of T.
        unsafe { gemm_raw(r1 - r0, r1, self.hs, Dst::rows(p.as_mut_ptr(), t), false, self.q.at(r0, 0), self.k.t(), self.scale, Par::None) };
        for (row, t1) in p.chunks_exact_mut(t).zip(r0..r1) {
            match &mut stats {
                RowStats::Keep(s) => (s[2 * t1], s[2 * t1 + 1]) = softmax_causal_row(&mut row[..r1], t1),
                RowStats::Recompute(s) => probs_causal_row(&mut row[..r1], t1, s[2 * t1], s[2 * t1 + 1]),
            }
        }
    }
}

/// A head's per-row softmax statistics, (max, 1/sum) for each of its T rows: written by the
/// forward, read by the backward to recompute the probabilities.
enum RowStats<'a> {
    Keep(&'a mut [f32]),
    Recompute(&'a [f32]),
}

/// Where row `row` of (batch x head) task `bh`'s T x T attention-dropout mask starts in the
/// mask's counter space (element (row, col) is this + col): the forward and the backward, the
/// naive and the blocked kernels, all draw the same mask through it.
fn mask_row(bh: usize, t: usize, row: usize) -> usize {
    (bh * t + row) * t
}

/// `p` with dropout applied (into `dropped`), rows r0..r1 of task `bh`'s T x T mask; or `p`.
fn dropout_block<'a>(p: &'a [f32], dropped: &'a mut [f32], drop: Dropout, bh: usize, t: usize, r0: usize, r1: usize) -> &'a [f32] {
    if !drop.active() {
        return p;
    }
    for (i, (d, x)) in dropped.chunks_exact_mut(t).zip(p.chunks_exact(t)).take(r1 - r0).enumerate() {
        let base = mask_row(bh, t, r0 + i);
        for (j, (d, &x)) in d[..r1].iter_mut().zip(&x[..r1]).enumerate() {
            *d = x * drop.scale(base + j);
        }
    }
    dropped
}

/// out(B,T,C) and stats(B,NH,T,2) from qkv(B,T,3C); same contract as [`attention_forward_naive`].
#[allow(clippy::too_many_arguments)]
pub fn attention_forward(out: &mut [f32], stats: &mut [f32], qkv: &[f32], b: usize, t: usize, c: usize, nh: usize, drop: Dropout) {
    let hs = c / nh;
    let c3 = 3 * c;
    assert!(out.len() == b * t * c && stats.len() == b * nh * t * 2 && qkv.len() == b * t * c3);
    // out as (B T, C); each task writes only its own (batch row, head) block of it
    let out = Dst::rows(out.as_mut_ptr(), c);
    stats.par_chunks_mut(t * 2).enumerate().for_each_init(
        || Scratch::new(t, drop, false),
        |Scratch { p, dropped, .. }, (bh, st)| {
            let (bi, h) = (bh / nh, bh % nh);
            let head = Head::new(qkv, bi, h, t, c, nh);
            let o = out.at(bi * t, h * hs);
            for (r0, r1) in query_blocks(t) {
                // SAFETY: q/k/v address rows 0..T of batch row bi at head h's columns, inside qkv.
                unsafe { head.probs(p, r0, r1, RowStats::Keep(st)) };
                let p = dropout_block(p, dropped, drop, bh, t, r0, r1);
                // SAFETY: this task alone writes rows r0..r1 of out for batch row bi at head h's
                // columns; p holds rows r0..r1 (T apart), v this batch row's values 0..r1.
                unsafe { gemm_raw(r1 - r0, hs, r1, o.at(r0, 0), false, Src::rows(p.as_ptr(), t), head.v, 1.0, Par::None) };
            }
        },
    );
}

/// dqkv(B,T,3C) = gradients through attention, from the forward's qkv and stats. Same contract
/// as [`attention_backward_naive`].
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dqkv: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    stats: &[f32],
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
    drop: Dropout,
) {
    let hs = c / nh;
    let c3 = 3 * c;
    assert!(dqkv.len() == b * t * c3 && dout.len() == b * t * c && qkv.len() == b * t * c3 && stats.len() == b * nh * t * 2);
    // dqkv as (B T, 3C); each task writes only its own (batch row, head) columns of it
    let dqkv = Dst::rows(dqkv.as_mut_ptr(), c3);
    stats.par_chunks(t * 2).enumerate().for_each_init(
        || Scratch::new(t, drop, true),
        |Scratch { p, dropped, dp }, (bh, st)| {
            let (bi, h) = (bh / nh, bh % nh);
            let head = Head::new(qkv, bi, h, t, c, nh);
            let dq = dqkv.at(bi * t, h * hs);
            let (dk, dv) = (dq.at(0, c), dq.at(0, 2 * c));
            let dy = Src::rows(dout[bi * t * c + h * hs..].as_ptr(), c);
            // Blocks run last to first: the last one covers every key row 0..T, so its dk/dv
            // products overwrite (no zero fill of dqkv) and the earlier ones accumulate.
            for (r0, r1) in query_blocks(t).rev() {
                let first = r1 == t;
                // SAFETY (this block): q/k/v/dy address rows 0..T of batch row bi at head h's
                // columns inside their slices; this task alone writes dq/dk/dv at (bi, h); the
                // scratch blocks hold rows r0..r1 (T apart), and block r0..r1 of query rows
                // touches keys/values 0..r1 only.
                unsafe {
                    head.probs(p, r0, r1, RowStats::Recompute(st));
                    let pd = dropout_block(p, dropped, drop, bh, t, r0, r1);
                    // dv[0..r1] (+)= pd[r0..r1, 0..r1]^T @ dy[r0..r1]
                    gemm_raw(r1, hs, r1 - r0, dv, !first, Src::rows(pd.as_ptr(), t).t(), dy.at(r0, 0), 1.0, Par::None);
                    // dp[r0..r1, 0..r1] = dy[r0..r1] @ v[0..r1]^T
                    gemm_raw(r1 - r0, r1, hs, Dst::rows(dp.as_mut_ptr(), t), false, dy.at(r0, 0), head.v.t(), 1.0, Par::None);
                }
                // through dropout, then softmax: ds = p * (dp - sum(p * dp)), causal entries only
                for (i, (prow, drow)) in p.chunks_exact(t).zip(dp.chunks_exact_mut(t)).take(r1 - r0).enumerate() {
                    let t1 = r0 + i;
                    if drop.active() {
                        let base = mask_row(bh, t, t1);
                        for (t2, d) in drow[..=t1].iter_mut().enumerate() {
                            *d *= drop.scale(base + t2);
                        }
                    }
                    softmax_backward_row(&prow[..r1], &mut drow[..r1], t1);
                }
                // SAFETY: as above.
                unsafe {
                    // dq[r0..r1] = scale * ds[r0..r1, 0..r1] @ k[0..r1] (each query row once)
                    gemm_raw(r1 - r0, hs, r1, dq.at(r0, 0), false, Src::rows(dp.as_ptr(), t), head.k, head.scale, Par::None);
                    // dk[0..r1] (+)= scale * ds[r0..r1, 0..r1]^T @ q[r0..r1]
                    gemm_raw(r1, hs, r1 - r0, dk, !first, Src::rows(dp.as_ptr(), t).t(), head.q.at(r0, 0), head.scale, Par::None);
                }
            }
        },
    );
}

/// One new position of sampling with a KV cache: stores qkv(3C)'s key and value as row `pos` of
/// k(maxT, C) and v(maxT, C), then out(C) = each head's attention of the query over rows
/// 0..=pos (causal by construction: later rows are not there yet).
pub fn attention_decode(out: &mut [f32], k: &mut [f32], v: &mut [f32], qkv: &[f32], pos: usize, nh: usize) {
    let c = out.len();
    let hs = c / nh;
    assert!(qkv.len() == 3 * c && (pos + 1) * c <= k.len() && k.len() == v.len());
    k[pos * c..(pos + 1) * c].copy_from_slice(&qkv[c..2 * c]);
    v[pos * c..(pos + 1) * c].copy_from_slice(&qkv[2 * c..]);
    let scale = 1.0 / (hs as f32).sqrt();
    let mut att = vec![0.0f32; pos + 1];
    for h in 0..nh {
        let q = &qkv[h * hs..(h + 1) * hs];
        let mut maxv = f32::NEG_INFINITY;
        for (t2, a) in att.iter_mut().enumerate() {
            let kr = &k[t2 * c + h * hs..][..hs];
            *a = q.iter().zip(kr).map(|(a, b)| a * b).sum::<f32>() * scale;
            maxv = maxv.max(*a);
        }
        let mut sum = 0.0;
        for a in att.iter_mut() {
            *a = (*a - maxv).exp();
            sum += *a;
        }
        let yh = &mut out[h * hs..(h + 1) * hs];
        yh.fill(0.0);
        for (t2, a) in att.iter().enumerate() {
            let vr = &v[t2 * c + h * hs..][..hs];
            for (yi, vi) in yh.iter_mut().zip(vr) {
                *yi += a / sum * vi;
            }
        }
    }
}
