//! The optimisation schedule and one training step: learning rate, gradient accumulation,
//! clipping and AdamW, as nanoGPT's train.py does them.

use crate::backend::{AdamW, Backend};
use crate::model::{DropoutCtx, Gpt};

/// Hyper-parameters of the optimiser and schedule (nanoGPT's names).
#[derive(Clone, Debug)]
pub struct OptimConfig {
    pub learning_rate: f32,
    pub min_lr: f32,
    pub warmup_iters: u64,
    pub lr_decay_iters: u64,
    pub decay_lr: bool,
    pub weight_decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    /// Clip the global gradient norm to this; 0 disables.
    pub grad_clip: f32,
}

impl OptimConfig {
    /// nanoGPT's get_lr: linear warmup over `warmup_iters`, cosine decay to `min_lr` at
    /// `lr_decay_iters`, then `min_lr`.
    pub fn lr_at(&self, it: u64) -> f32 {
        if !self.decay_lr {
            return self.learning_rate;
        }
        if it < self.warmup_iters {
            return self.learning_rate * (it + 1) as f32 / (self.warmup_iters + 1) as f32;
        }
        if it > self.lr_decay_iters {
            return self.min_lr;
        }
        let span = self.lr_decay_iters.saturating_sub(self.warmup_iters).max(1) as f64;
        let ratio = (it - self.warmup_iters) as f64 / span;
        let coeff = 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos());
        (self.min_lr as f64 + coeff * (self.learning_rate - self.min_lr) as f64) as f32
    }
}

/// What one optimiser step reports.
#[derive(Clone, Copy, Debug)]
pub struct StepStats {
    /// Mean loss over the micro-batches.
    pub loss: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    pub lr: f32,
}

/// One optimiser step at iteration `it` (0-based) over `micro_batches` of (tokens, targets),
/// each (B, T): forward+backward each with loss scaled by 1/accum, clip, AdamW.
/// When the loss or the gradient norm is not finite, no update is made (the caller decides
/// whether to abort or count the skip).
pub fn train_step<Bk: Backend>(
    model: &mut Gpt<Bk>,
    micro_batches: &[(Vec<u32>, Vec<u32>)],
    b: usize,
    t: usize,
    it: u64,
    opt: &OptimConfig,
    dropout: Option<(f32, u64)>,
) -> StepStats {
    let accum = micro_batches.len();
    model.zero_grad();
    let mut loss_sum = 0.0f64;
    for (micro, (x, y)) in micro_batches.iter().enumerate() {
        let ctx = dropout.map(|(p, seed)| DropoutCtx { p, seed, iter: it, micro: micro as u64 });
        loss_sum += model.forward(x, y, b, t, ctx, Some(1.0 / accum as f32)) as f64;
        model.backward(x, ctx);
    }
    let loss = (loss_sum / accum as f64) as f32;
    let grad_norm = model.grad_norm();
    let lr = opt.lr_at(it);
    if loss.is_finite() && grad_norm.is_finite() {
        if opt.grad_clip > 0.0 {
            model.clip_grads(grad_norm, opt.grad_clip);
        }
        let hp = AdamW { lr, beta1: opt.beta1, beta2: opt.beta2, eps: 1e-8 };
        model.update(hp, opt.weight_decay, it + 1);
    }
    StepStats { loss, grad_norm, lr }
}
