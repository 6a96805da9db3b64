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

/// One AdamW step with torch.optim.AdamW's arithmetic (non-fused, non-amsgrad), on the
/// gradients scaled by `grad_scale` (clip_grad_norm_'s coefficient, 1 when not clipping):
/// g = grad_scale * grad; p *= 1 - lr*wd; m = lerp(m, g, 1-b1); v = b2 v + (1-b2) g^2;
/// p -= (lr / (1-b1^t)) * m / (sqrt(v) / sqrt(1-b2^t) + eps).
/// <https://pytorch.org/docs/stable/generated/torch.optim.AdamW.html>
#[allow(clippy::too_many_arguments)]
pub fn adamw(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], hp: AdamW, step: u64, wd: f32, grad_scale: f32) {
    let bc1 = 1.0 - hp.beta1.powi(step as i32);
    let bc2 = 1.0 - hp.beta2.powi(step as i32);
    let k = [hp.beta1, hp.beta2, hp.eps, hp.lr / bc1, bc2.sqrt(), 1.0 - hp.lr * wd, grad_scale];
    p.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .for_each(|((p, g), (m, v))| adamw_chunk(p, g, m, v, k));
}

dispatch! {
    /// One chunk of the update; `k` = [beta1, beta2, eps, lr / (1-beta1^t), sqrt(1-beta2^t),
    /// 1-lr*wd, grad_scale].
    fn adamw_chunk(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: [f32; 7]) {
        let [beta1, beta2, eps, step_size, bc2_sqrt, decay, grad_scale] = k;
        let n = p.len().min(g.len()).min(m.len()).min(v.len());
        let (p, g, m, v) = (&mut p[..n], &g[..n], &mut m[..n], &mut v[..n]);
        for i in 0..n {
            let gi = g[i] * grad_scale; // the same product a separate clipping pass would store
            p[i] *= decay;
            m[i] += (1.0 - beta1) * (gi - m[i]); // torch's lerp
            v[i] = beta2 * v[i] + (1.0 - beta2) * gi * gi;
            let denom = v[i].sqrt() / bc2_sqrt + eps;
            p[i] -= step_size * m[i] / denom;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values in [-1, 1) from a fixed integer hash.
    fn filled(n: usize, salt: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 7919 + salt * 104_729) % 2001) as f32 / 1000.0 - 1.0).collect()
    }

    #[test]
    fn the_fused_clip_scale_gives_the_bits_of_a_separate_pass() {
        // a length that is not a multiple of the chunk or the lane count
        let n = 2 * CHUNK + 37;
        let g = filled(n, 1);
        let hp = AdamW { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8 };
        let coef = crate::optim::clip_coef(3.7, 1.0);
        assert!(coef < 1.0 && (coef - 1.0 / 3.7).abs() < 1e-6);
        assert_eq!(crate::optim::clip_coef(0.5, 1.0), 1.0);
        // the old way: scale the gradients in place, then step with them as they are
        let init = || (filled(n, 2), filled(n, 3), filled(n, 4).iter().map(|x| x.abs()).collect::<Vec<f32>>());
        let ((mut p1, mut m1, mut v1), (mut p2, mut m2, mut v2)) = (init(), init());
        let scaled: Vec<f32> = g.iter().map(|x| x * coef).collect();
        for step in 1..=3 {
            adamw(&mut p1, &scaled, &mut m1, &mut v1, hp, step, 0.1, 1.0);
            adamw(&mut p2, &g, &mut m2, &mut v2, hp, step, 0.1, coef);
        }
        assert!(p1.iter().zip(&p2).all(|(a, b)| a.to_bits() == b.to_bits()));
        assert!(m1.iter().zip(&m2).all(|(a, b)| a.to_bits() == b.to_bits()));
        assert!(v1.iter().zip(&v2).all(|(a, b)| a.to_bits() == b.to_bits()));
        // and the scale does act: the same step without it moves the moments elsewhere
        let ((mut p3, mut m3, mut v3), (mut p4, mut m4, mut v4)) = (init(), init());
        adamw(&mut p3, &g, &mut m3, &mut v3, hp, 1, 0.1, 1.0);
        adamw(&mut p4, &g, &mut m4, &mut v4, hp, 1, 0.1, coef);
        let moved = |a: &[f32], b: &[f32]| a.iter().zip(b).filter(|(x, y)| x != y).count();
        assert!(moved(&m3, &m4) > n / 2 && moved(&v3, &v4) > n / 2 && moved(&p3, &p4) > n / 2);
    }
}
