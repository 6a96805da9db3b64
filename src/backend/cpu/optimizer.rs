//! AdamW and gradient-norm reduction.

use crate::backend::AdamW;
use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

/// Sum of squares in f64, over fixed chunks added in order (deterministic).
pub fn sum_squares(x: &[f32]) -> f64 {
    let parts: Vec<f64> = x.par_chunks(CHUNK).map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum()).collect();
    parts.iter().sum()
}

/// One AdamW step with torch.optim.AdamW's arithmetic (non-fused, non-amsgrad):
/// p *= 1 - lr*wd; m = lerp(m, g, 1-b1); v = b2 v + (1-b2) g^2;
/// p -= (lr / (1-b1^t)) * m / (sqrt(v) / sqrt(1-b2^t) + eps).
/// <https://pytorch.org/docs/stable/generated/torch.optim.AdamW.html>
pub fn adamw(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], hp: AdamW, step: u64, wd: f32) {
    let bc1 = 1.0 - hp.beta1.powi(step as i32);
    let bc2 = 1.0 - hp.beta2.powi(step as i32);
    let step_size = hp.lr / bc1;
    let bc2_sqrt = bc2.sqrt();
    let decay = 1.0 - hp.lr * wd;
    p.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK))).for_each(
        |((p, g), (m, v))| {
            for i in 0..p.len() {
                let gi = g[i];
                p[i] *= decay;
                m[i] += (1.0 - hp.beta1) * (gi - m[i]); // torch's lerp
                v[i] = hp.beta2 * v[i] + (1.0 - hp.beta2) * gi * gi;
                let denom = v[i].sqrt() / bc2_sqrt + hp.eps;
                p[i] -= step_size * m[i] / denom;
            }
        },
    );
}
