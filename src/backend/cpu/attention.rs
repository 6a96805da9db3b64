//! Causal multi-head self-attention, storing the softmax matrix att(B,NH,T,T).
//!
//! `attention_forward`/`attention_backward` run each (batch row, head) as a task of small
//! matmuls through `gemm` (scores, probabilities x values, and their gradients), with the
//! transposes and the q/k/v interleaving of qkv(B,T,3C) folded into strides. The `_naive`
//! versions are the plain loop nests they are tested against.
//! <https://github.com/karpathy/nanoGPT/blob/master/model.py> (CausalSelfAttention, the
//! non-flash branch), with attention dropout from a counter-based mask.

use super::simd::dispatch;
use crate::backend::Dropout;
use rayon::prelude::*;

/// out(B,T,C) and att(B,NH,T,T) from qkv(B,T,3C), where qkv holds q, k, v side by side.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward_naive(out: &mut [f32], att: &mut [f32], qkv: &[f32], _b: usize, t: usize, c: usize, nh: usize, drop: Dropout) {
    let hs = c / nh;
    let scale = 1.0 / (hs as f32).sqrt();
    let c3 = 3 * c;
    out.par_chunks_mut(t * c).zip(att.par_chunks_mut(nh * t * t)).zip(qkv.par_chunks(t * c3)).enumerate().for_each(
        |(bi, ((out, att), qkv))| {
            for h in 0..nh {
                for t1 in 0..t {
                    // seek to q[b, t1, h, :] and att[b, h, t1, :]
                    let q = &qkv[t1 * c3 + h * hs..t1 * c3 + (h + 1) * hs];
                    let row = &mut att[(h * t + t1) * t..(h * t + t1 + 1) * t];
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
                    row[t1 + 1..].fill(0.0);
                    // y[t1] = sum_t2 dropout(att[t1, t2]) * v[t2]
                    let y = &mut out[t1 * c + h * hs..t1 * c + (h + 1) * hs];
                    y.fill(0.0);
                    let base = ((bi * nh + h) * t + t1) * t;
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

/// dqkv(B,T,3C) = gradients through attention; datt(B,NH,T,T) is scratch.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_naive(
    dqkv: &mut [f32],
    datt: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    att: &[f32],
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
        .zip(datt.par_chunks_mut(nh * t * t))
        .zip(dout.par_chunks(t * c).zip(qkv.par_chunks(t * c3)))
        .zip(att.par_chunks(nh * t * t))
        .enumerate()
        .for_each(|(bi, (((dqkv, datt), (dout, qkv)), att))| {
            for h in 0..nh {
                for t1 in 0..t {
                    let arow = &att[(h * t + t1) * t..(h * t + t1 + 1) * t];
                    let drow = &mut datt[(h * t + t1) * t..(h * t + t1 + 1) * t];
                    let dy = &dout[t1 * c + h * hs..t1 * c + (h + 1) * hs];
                    let base = ((bi * nh + h) * t + t1) * t;
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

/// A raw pointer that may cross threads; each task touches a disjoint region (see SAFETY notes).
#[derive(Clone, Copy)]
struct Ptr(*mut f32);
// SAFETY: used only to hand disjoint (batch, head) regions of one buffer to different tasks.
unsafe impl Send for Ptr {}
// SAFETY: as above; no two tasks write the same element.
unsafe impl Sync for Ptr {}

impl Ptr {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// dst(m,n) (+)= alpha * lhs(m,k) @ rhs(k,n), single-threaded (the caller is one task of many).
///
/// # Safety
/// As [`super::matmul::gemm_raw`].
#[allow(clippy::too_many_arguments)]
unsafe fn mm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: *const f32,
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: *const f32,
    rhs_rs: usize,
    rhs_cs: usize,
    alpha: f32,
) {
    // SAFETY: forwarded from the caller's contract.
    unsafe {
        super::matmul::gemm_raw(m, n, k, dst, dst_rs, accumulate, lhs, lhs_rs, lhs_cs, rhs, rhs_rs, rhs_cs, alpha, super::matmul::Par::None)
    }
}

dispatch! {
    /// row[..=t1] = softmax(row[..=t1]); row[t1+1..] = 0.
    fn softmax_causal_row(row: &mut [f32], t1: usize) {
        let (x, rest) = row.split_at_mut(t1 + 1);
        let maxv = super::mathf::max(x);
        for v in x.iter_mut() {
            *v = super::mathf::exp(*v - maxv);
        }
        let inv = 1.0 / super::mathf::sum_by(x, |v| v);
        x.iter_mut().for_each(|v| *v *= inv);
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

/// out(B,T,C) and att(B,NH,T,T) from qkv(B,T,3C); same contract as [`attention_forward_naive`].
#[allow(clippy::too_many_arguments)]
pub fn attention_forward(out: &mut [f32], att: &mut [f32], qkv: &[f32], b: usize, t: usize, c: usize, nh: usize, drop: Dropout) {
    let hs = c / nh;
    let scale = 1.0 / (hs as f32).sqrt();
    let c3 = 3 * c;
    assert!(out.len() == b * t * c && att.len() == b * nh * t * t && qkv.len() == b * t * c3);
    let (outp, qkvp) = (Ptr(out.as_mut_ptr()), Ptr(qkv.as_ptr() as *mut f32));
    att.par_chunks_mut(t * t).enumerate().for_each_init(
        || vec![0.0f32; if drop.active() { t * t } else { 0 }],
        |scratch, (bh, a)| {
            let (bi, h) = (bh / nh, bh % nh);
            let q = qkvp.get().wrapping_add(bi * t * c3 + h * hs);
            let k = q.wrapping_add(c);
            let v = q.wrapping_add(2 * c);
            // scores, by blocks of query rows: rows r0..r1 only see keys 0..r1 (causal)
            for (r0, r1) in query_blocks(t) {
                // SAFETY: q/k address rows of this batch row at this head's columns (inside
                // qkv, read-only); the destination is rows r0..r1 of this task's own T x T block.
                unsafe { mm(r1 - r0, r1, hs, a[r0 * t..].as_mut_ptr(), t, false, q.wrapping_add(r0 * c3), c3, 1, k, 1, c3, scale) };
            }
            for t1 in 0..t {
                softmax_causal_row(&mut a[t1 * t..(t1 + 1) * t], t1);
            }
            let p: &[f32] = if drop.active() {
                for (i, (s, &x)) in scratch.iter_mut().zip(a.iter()).enumerate() {
                    *s = x * drop.scale(bh * t * t + i);
                }
                scratch
            } else {
                a
            };
            let o = outp.get().wrapping_add(bi * t * c + h * hs);
            for (r0, r1) in query_blocks(t) {
                // SAFETY: this task alone writes rows r0..r1 of out for batch row bi at head h's
                // columns; p is T x T, v addresses this batch row's values (rows 0..r1).
                unsafe { mm(r1 - r0, hs, r1, o.wrapping_add(r0 * c), c, false, p[r0 * t..].as_ptr(), t, 1, v, c3, 1, 1.0) };
            }
        },
    );
}

/// dqkv(B,T,3C) = gradients through attention; datt(B,NH,T,T) is scratch. Same contract as
/// [`attention_backward_naive`].
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dqkv: &mut [f32],
    datt: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    att: &[f32],
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
    drop: Dropout,
) {
    let hs = c / nh;
    let scale = 1.0 / (hs as f32).sqrt();
    let c3 = 3 * c;
    assert!(
        dqkv.len() == b * t * c3
            && datt.len() == b * nh * t * t
            && dout.len() == b * t * c
            && qkv.len() == b * t * c3
            && att.len() == datt.len()
    );
    let dqkvp = Ptr(dqkv.as_mut_ptr());
    datt.par_chunks_mut(t * t).zip(att.par_chunks(t * t)).enumerate().for_each_init(
        || vec![0.0f32; if drop.active() { t * t } else { 0 }],
        |scratch, (bh, (da, a))| {
            let (bi, h) = (bh / nh, bh % nh);
            let off = bi * t * c3 + h * hs;
            let (q, k, v) = (qkv[off..].as_ptr(), qkv[off + c..].as_ptr(), qkv[off + 2 * c..].as_ptr());
            let dq = dqkvp.get().wrapping_add(off);
            let (dk, dv) = (dq.wrapping_add(c), dq.wrapping_add(2 * c));
            let dy = dout[bi * t * c + h * hs..].as_ptr();
            let p: &[f32] = if drop.active() {
                for (i, (s, &x)) in scratch.iter_mut().zip(a.iter()).enumerate() {
                    *s = x * drop.scale(bh * t * t + i);
                }
                scratch
            } else {
                a
            };
            // SAFETY (all products below): q/k/v/dy address this batch row and head inside
            // their slices; this task alone writes dq/dk/dv at (bi, h) and its own da block;
            // block r0..r1 of query rows touches keys/values 0..r1 only.
            // Blocks run last to first: the last one covers every key row 0..T, so its dk/dv
            // products overwrite (no zero fill of dqkv) and the earlier ones accumulate.
            for (r0, r1) in query_blocks(t).rev() {
                let first = r1 == t;
                // SAFETY: see above.
                unsafe {
                    // dv[0..r1] (+)= p[r0..r1, 0..r1]^T @ dy[r0..r1]
                    mm(r1, hs, r1 - r0, dv, c3, !first, p[r0 * t..].as_ptr(), 1, t, dy.wrapping_add(r0 * c), c, 1, 1.0);
                    // dp[r0..r1, 0..r1] = dy[r0..r1] @ v[0..r1]^T
                    mm(r1 - r0, r1, hs, da[r0 * t..].as_mut_ptr(), t, false, dy.wrapping_add(r0 * c), c, 1, v, 1, c3, 1.0);
                }
            }
            // through dropout, then softmax: ds = a * (dp - sum(a * dp)), causal entries only
            for t1 in 0..t {
                let (arow, drow) = (&a[t1 * t..(t1 + 1) * t], &mut da[t1 * t..(t1 + 1) * t]);
                if drop.active() {
                    for (t2, d) in drow[..=t1].iter_mut().enumerate() {
                        *d *= drop.scale(bh * t * t + t1 * t + t2);
                    }
                }
                softmax_backward_row(arow, drow, t1);
            }
            for (r0, r1) in query_blocks(t).rev() {
                let first = r1 == t;
                // SAFETY: as above.
                unsafe {
                    // dq[r0..r1] = scale * ds[r0..r1, 0..r1] @ k[0..r1] (each query row once)
                    mm(r1 - r0, hs, r1, dq.wrapping_add(r0 * c3), c3, false, da[r0 * t..].as_ptr(), t, 1, k, c3, 1, scale);
                    // dk[0..r1] (+)= scale * ds[r0..r1, 0..r1]^T @ q[r0..r1]
                    mm(r1, hs, r1 - r0, dk, c3, !first, da[r0 * t..].as_ptr(), 1, t, q.wrapping_add(r0 * c3), c3, 1, scale);
                }
            }
        },
    );
}
