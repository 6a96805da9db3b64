//! Causal multi-head self-attention, one batch row per task, storing the softmax matrix.
//! <https://github.com/karpathy/nanoGPT/blob/master/model.py> (CausalSelfAttention, the
//! non-flash branch), with attention dropout from a counter-based mask.

use crate::backend::Dropout;
use rayon::prelude::*;

/// out(B,T,C) and att(B,NH,T,T) from qkv(B,T,3C), where qkv holds q, k, v side by side.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward(out: &mut [f32], att: &mut [f32], qkv: &[f32], _b: usize, t: usize, c: usize, nh: usize, drop: Dropout) {
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
                        *a = super::mathf::exp(*a - maxv);
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

/// dqkv(B,T,3C) += gradients through attention; datt(B,NH,T,T) is scratch.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
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
