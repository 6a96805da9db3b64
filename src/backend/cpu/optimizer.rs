//! AdamW and gradient-norm reduction.

use super::simd::dispatch;
use crate::backend::AdamW;
use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

/// Sum of squares in f64, over fixed chunks added in order (deterministic).
pub fn sum_squares(x: &[f32]) -> f64 {
    let parts: Vec<f64> = x.par_chunks(CHUNK).map(sum_squares_chunk).collect();
    parts.iter().sum()
}

dispatch! {
    /// One chunk's sum of squares in f64, with 8 partial sums combined in a fixed order.
    fn sum_squares_chunk(c: &[f32]) -> f64 {
        let mut acc = [0.0f64; 8];
        let full = c.len() / 8 * 8;
        for ch in c[..full].chunks_exact(8) {
            for i in 0..8 {
                acc[i] += (ch[i] as f64) * (ch[i] as f64);
            }
        }
        let mut s = 0.0f64;
        for a in acc {
            s += a;
        }
        for &v in &c[full..] {
            s += (v as f64) * (v as f64);
        }
        s
    }
}

/// One AdamW step with torch.optim.AdamW's arithmetic (non-fused, non-amsgrad):
/// p *= 1 - lr*wd; m = lerp(m, g, 1-b1); v = b2 v + (1-b2) g^2;
/// p -= (lr / (1-b1^t)) * m / (sqrt(v) / sqrt(1-b2^t) + eps).
/// <https://pytorch.org/docs/stable/generated/torch.optim.AdamW.html>
pub fn adamw(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], hp: AdamW, step: u64, wd: f32) {
    let bc1 = 1.0 - hp.beta1.powi(step as i32);
    let bc2 = 1.0 - hp.beta2.powi(step as i32);
    let k = [hp.beta1, hp.beta2, hp.eps, hp.lr / bc1, bc2.sqrt(), 1.0 - hp.lr * wd];
    p.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .for_each(|((p, g), (m, v))| adamw_chunk(p, g, m, v, k));
}

dispatch! {
    /// One chunk of the update; `k` = [beta1, beta2, eps, lr / (1-beta1^t), sqrt(1-beta2^t), 1-lr*wd].
    fn adamw_chunk(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: [f32; 6]) {
        let [beta1, beta2, eps, step_size, bc2_sqrt, decay] = k;
        let n = p.len().min(g.len()).min(m.len()).min(v.len());
        let (p, g, m, v) = (&mut p[..n], &g[..n], &mut m[..n], &mut v[..n]);
        for i in 0..n {
            let gi = g[i];
            p[i] *= decay;
            m[i] += (1.0 - beta1) * (gi - m[i]); // torch's lerp
            v[i] = beta2 * v[i] + (1.0 - beta2) * gi * gi;
            let denom = v[i].sqrt() / bc2_sqrt + eps;
            p[i] -= step_size * m[i] / denom;
        }
    }
}
