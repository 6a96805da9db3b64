//! Fused softmax + cross-entropy over the vocabulary (llm.c's fused classifier): probabilities
//! are never stored; the gradient of the logits is written in the same pass.

use super::mathf;
use super::simd::dispatch;
use rayon::prelude::*;

/// losses(N) = -log softmax(logits[:v])[target] per row of logits(N,Vp); padded columns
/// `v..vp` take no part. With `grad = Some((dlogits, s))`, dlogits(N,Vp) = s * (softmax -
/// onehot(target)), zero in the padded columns.
pub fn crossentropy_forward(logits: &[f32], losses: &mut [f32], targets: &[u32], v: usize, vp: usize, grad: Option<(&mut [f32], f32)>) {
    match grad {
        Some((dlogits, s)) => {
            losses.par_iter_mut().zip(logits.par_chunks(vp).zip(dlogits.par_chunks_mut(vp))).enumerate().for_each(
                |(row, (loss, (l, dl)))| {
                    *loss = crossentropy_row(l, dl, targets[row] as usize, v, s);
                },
            );
        }
        None => {
            losses.par_iter_mut().zip(logits.par_chunks(vp)).enumerate().for_each(|(row, (loss, l))| {
                *loss = crossentropy_row(l, &mut [], targets[row] as usize, v, 0.0);
            });
        }
    }
}

dispatch! {
    /// One row: returns its loss; with a non-empty `dl`, writes s * (softmax - onehot) there.
    fn crossentropy_row(l: &[f32], dl: &mut [f32], tgt: usize, v: usize, s: f32) -> f32 {
        let maxv = mathf::max(&l[..v]);
        let sum = mathf::sum_by(&l[..v], |x| mathf::exp(x - maxv));
        if !dl.is_empty() {
            let scale = s / sum;
            for (d, &x) in dl[..v].iter_mut().zip(&l[..v]) {
                *d = scale * mathf::exp(x - maxv);
            }
            dl[tgt] -= s;
            dl[v..].fill(0.0);
        }
        sum.ln() + maxv - l[tgt]
    }
}

/// The plain version of [`crossentropy_forward`]: one row at a time, the platform's exp.
pub fn crossentropy_forward_naive(
    logits: &[f32],
    losses: &mut [f32],
    targets: &[u32],
    v: usize,
    vp: usize,
    grad: Option<(&mut [f32], f32)>,
) {
    let mut grad = grad;
    for (row, (l, loss)) in logits.chunks(vp).zip(losses.iter_mut()).enumerate() {
        let tgt = targets[row] as usize;
        let maxv = l[..v].iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let sum: f32 = l[..v].iter().map(|&x| (x - maxv).exp()).sum();
        *loss = sum.ln() + maxv - l[tgt];
        if let Some((dl, s)) = grad.as_mut() {
            let dl = &mut dl[row * vp..(row + 1) * vp];
            for i in 0..v {
                dl[i] = *s * ((l[i] - maxv).exp() / sum - if i == tgt { 1.0 } else { 0.0 });
            }
            dl[v..].fill(0.0);
        }
    }
}
