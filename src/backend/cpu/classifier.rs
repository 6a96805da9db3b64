//! Fused softmax + cross-entropy over the vocabulary (llm.c's fused classifier): probabilities
//! are never stored; the gradient of the logits is written in the same pass.

use super::mathf;
use super::simd::dispatch;
use rayon::prelude::*;

/// losses(N) = -log softmax(logits[:v])[target] per row of logits(N,Vp); padded columns
/// `v..vp` take no part. With `grad = Some(s)`, each row of logits is then overwritten with its
/// gradient s * (softmax - onehot(target)), zero in the padded columns (llm.c's fused classifier
/// works in place too): after a training forward the buffer holds dlogits, not logits.
pub fn fused_classifier(logits: &mut [f32], losses: &mut [f32], targets: &[u32], v: usize, vp: usize, grad: Option<f32>) {
    losses.par_iter_mut().zip(logits.par_chunks_mut(vp)).enumerate().for_each(|(row, (loss, l))| {
        *loss = crossentropy_row(l, targets[row] as usize, v, grad);
    });
}

dispatch! {
    /// One row: returns its loss; with `grad = Some(s)`, then overwrites the row with
    /// s * (softmax - onehot).
    fn crossentropy_row(l: &mut [f32], tgt: usize, v: usize, grad: Option<f32>) -> f32 {
        let maxv = mathf::max(&l[..v]);
        let sum = mathf::sum_by(&l[..v], |x| mathf::exp(x - maxv));
        let loss = sum.ln() + maxv - l[tgt];
        if let Some(s) = grad {
            let scale = s / sum;
            for x in l[..v].iter_mut() {
                *x = scale * mathf::exp(*x - maxv);
            }
            l[tgt] -= s;
            l[v..].fill(0.0);
        }
        loss
    }
}

/// The plain version of [`fused_classifier`]: one row at a time, the platform's exp.
pub fn fused_classifier_naive(logits: &mut [f32], losses: &mut [f32], targets: &[u32], v: usize, vp: usize, grad: Option<f32>) {
    for (row, (l, loss)) in logits.chunks_mut(vp).zip(losses.iter_mut()).enumerate() {
        let tgt = targets[row] as usize;
        let maxv = l[..v].iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let sum: f32 = l[..v].iter().map(|&x| (x - maxv).exp()).sum();
        *loss = sum.ln() + maxv - l[tgt];
        if let Some(s) = grad {
            for (i, x) in l[..v].iter_mut().enumerate() {
                *x = s * ((*x - maxv).exp() / sum - if i == tgt { 1.0 } else { 0.0 });
            }
            l[v..].fill(0.0);
        }
    }
}
