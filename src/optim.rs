//! The optimisation schedule and one training step: learning rate, gradient accumulation,
//! clipping and AdamW, as nanoGPT's train.py does them.

use crate::backend::{AdamW, Backend, Precision, Scalar, N_SCALARS};
use crate::dist::group::Group;
use crate::model::{DropoutCtx, Gpt};
use anyhow::Result;

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
    /// Whether AdamW ran (false: non-finite loss or norm, a float16 gradient overflow, or the
    /// outlier guard said no).
    pub updated: bool,
    /// float16: a gradient overflowed at the current loss scale, so the update was skipped and
    /// the scale halved (the loss scaler's business, not a non-finite loss).
    pub overflow: bool,
}

/// Dynamic loss scaling with PyTorch GradScaler's semantics, for float16 runs: the loss
/// gradient is multiplied by `scale` so that small gradients stay representable in f16; a step
/// whose gradients overflow (inf/NaN) is skipped and the scale halved; after
/// [`LossScaler::GROWTH_INTERVAL`] clean steps in a row the scale doubles. bfloat16 (the f32
/// exponent range) and float32 keep the scale at 1 and never skip. Saved in checkpoints.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossScaler {
    /// The factor the loss gradient is multiplied by.
    pub scale: f32,
    /// Whether the scale moves (float16).
    pub dynamic: bool,
    /// Clean steps since the scale last changed (GradScaler's growth tracker).
    pub clean: u64,
    /// Updates skipped for an overflow, over the whole run.
    pub skipped: u64,
}

impl LossScaler {
    /// GradScaler's defaults: init_scale, growth_interval (growth 2, backoff 0.5).
    pub const INIT: f32 = 65536.0;
    pub const GROWTH_INTERVAL: u64 = 2000;

    pub fn new(p: Precision) -> LossScaler {
        let dynamic = p == Precision::F16;
        LossScaler { scale: if dynamic { Self::INIT } else { 1.0 }, dynamic, clean: 0, skipped: 0 }
    }

    /// Records a step's outcome: `finite` = every gradient finite. Returns whether it was an
    /// overflow (dynamic scaling only), which skips the update.
    pub fn record(&mut self, finite: bool) -> bool {
        if !self.dynamic {
            return false;
        }
        if !finite {
            self.scale *= 0.5;
            self.clean = 0;
            self.skipped += 1;
            return true;
        }
        self.clean += 1;
        if self.clean == Self::GROWTH_INTERVAL {
            self.scale *= 2.0;
            self.clean = 0;
        }
        false
    }
}

/// One optimiser step at iteration `it` (0-based) over `micro_batches` of (tokens, targets),
/// each (B, T): forward+backward each with loss scaled by 1/accum, clip, AdamW. The loss and
/// the squared gradient norm accumulate on the backend and are read once, before the update.
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
) -> Result<StepStats> {
    train_step_guarded(model, micro_batches, b, t, it, opt, dropout, None, &mut |_, _| true)
}

/// A data-parallel rank's part of a step: its micro-batches are `first..` of the iteration's
/// `accum`, and its gradients and loss are summed with the other ranks' through `group` before
/// clipping and AdamW (so every rank takes the same update). Under ZeRO-1 (the model's
/// [`Gpt::parts`]) each rank updates the tensors it owns and then sends them to the others.
pub struct Shard<'g> {
    pub group: &'g mut Group,
    pub first: usize,
    pub accum: usize,
}

/// [`train_step`], asking `accept(loss, grad_norm)` (finite values only) before updating: the
/// update is skipped when it answers false (the outlier guard).
#[allow(clippy::too_many_arguments)]
pub fn train_step_guarded<Bk: Backend>(
    model: &mut Gpt<Bk>,
    micro_batches: &[(Vec<u32>, Vec<u32>)],
    b: usize,
    t: usize,
    it: u64,
    opt: &OptimConfig,
    dropout: Option<(f32, u64)>,
    mut shard: Option<Shard>,
    accept: &mut dyn FnMut(f32, f32) -> bool,
) -> Result<StepStats> {
    // one scope for the whole step: the CPU backend keeps its workers awake through it
    Bk::step_scope(|| {
        // micro-batch `m` of this process is the iteration's `first + m` (its dropout masks too)
        let (first, accum) = shard.as_ref().map_or((0, micro_batches.len()), |s| (s.first, s.accum));
        model.zero_grad()?;
        model.reset_scalars()?;
        for (micro, (x, y)) in micro_batches.iter().enumerate() {
            let ctx = dropout.map(|(p, seed)| DropoutCtx { p, seed, iter: it, micro: (first + micro) as u64 });
            model.set_batch(x, y, b, t)?;
            model.forward(ctx, Some(1.0 / accum as f32))?;
            model.backward(ctx)?;
        }
        let zero = !model.parts().is_empty();
        if let Some(s) = shard.as_mut() {
            // on GPUs joined by NCCL, on the devices, once every rank has checked in over TCP
            // (so a rank that has gone is named there rather than hanging the device sum), each
            // part's sum to its owner only under ZeRO-1; otherwise through host memory and rank 0
            if model.sums_on_device() {
                s.group.barrier()?;
                match zero {
                    true => model.reduce_grads_to_owners()?,
                    false => model.sum_grads_over_ranks()?,
                }
            } else {
                let mut g = model.grads_host()?;
                match zero {
                    true => s.group.sum_f32_to_owners(&mut g, model.parts())?,
                    false => s.group.sum_f32(&mut g)?,
                }
                model.set_grads(&g)?;
            }
        }
        model.accumulate_grad_squares()?;
        let mut sums = model.read_scalars()?;
        let (l, q) = (Scalar::LossSum as usize, Scalar::GradSquares as usize);
        if let Some(s) = shard.as_mut().filter(|_| zero) {
            // ZeRO-1: each piece's sum of squares comes from its owner (the others add zeros,
            // exactly), and they add up in layout order from zero, as one process adds them
            let mut x = sums.clone();
            x[q] = 0.0;
            s.group.sum_f64(&mut x)?;
            sums[l] = x[l];
            sums[q] = squares_in_layout_order(&x[N_SCALARS..]);
        } else if let Some(s) = shard.as_mut() {
            // the losses add up; the squared norm is rank 0's (the others add 0), so that every
            // rank clips alike whatever its thread count (the norm's sum order follows it)
            let mut x = [sums[l], if s.group.world().is_root() { sums[q] } else { 0.0 }];
            s.group.sum_f64(&mut x)?;
            (sums[l], sums[q]) = (x[0], x[1]);
        }
        let loss = (sums[l] / accum as f64) as f32;
        // the gradients carry the loss scale (1 unless float16): the norm is of the true ones
        let loss_scale = model.scaler.scale;
        let squares = sums[q];
        let grad_norm = (squares.sqrt() / loss_scale as f64) as f32;
        let lr = opt.lr_at(it);
        let overflow = loss.is_finite() && model.scaler.record(squares.is_finite());
        let updated = !overflow && loss.is_finite() && grad_norm.is_finite() && accept(loss, grad_norm);
        if updated {
            let clip = if opt.grad_clip > 0.0 { clip_coef(grad_norm, opt.grad_clip) } else { 1.0 };
            let hp = AdamW { lr, beta1: opt.beta1, beta2: opt.beta2, eps: 1e-8 };
            model.update(hp, opt.weight_decay, it + 1, clip / loss_scale)?;
            // ZeRO-1: every rank's newly updated part to every rank
            if let Some(s) = shard.as_mut().filter(|_| zero) {
                if model.sums_on_device() {
                    // a check-in first, as before the sums: a rank that has gone is named here
                    s.group.barrier()?;
                    model.gather_params_from_owners()?;
                } else {
                    let all = s.group.gather_f32(&model.owned_kernel_params()?, true)?.expect("every rank gets the parts");
                    model.set_kernel_params(&all)?;
                }
            }
        }
        Ok(StepStats { loss, grad_norm, lr, updated, overflow })
    })
}

/// ZeRO-1's squared gradient norm from each piece's sum of squares
/// ([`crate::model::ParamLayout::pieces`]), in layout order: added from zero in that order, as
/// one process's backend adds them into [`Scalar::GradSquares`] (each `+=` an f64 add), so
/// that the norm, hence the clipping, has the same bits.
pub fn squares_in_layout_order(per_piece: &[f64]) -> f64 {
    per_piece.iter().fold(0.0, |acc, s| acc + s)
}

/// torch.nn.utils.clip_grad_norm_'s coefficient: gradients of global norm `norm` are scaled by
/// min(1, max_norm / (norm + 1e-6)). The scaling itself happens inside the AdamW update.
pub fn clip_coef(norm: f32, max_norm: f32) -> f32 {
    (max_norm / (norm + 1e-6)).min(1.0)
}

/// llm.c's outlier detector: the z-score of a new value against the previous [`Self::WINDOW`]
/// values (a ring buffer, summed in index order so that a resumed run computes the same bits).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OutlierDetector {
    /// The last values, at most WINDOW; once full, `next` is the oldest slot.
    window: Vec<f64>,
    next: usize,
}

impl OutlierDetector {
    pub const WINDOW: usize = 128;

    /// The z-score of `x` against the window (None until the window is full or when its spread
    /// is zero); then `x` joins the window. Non-finite values are scored as None and not kept.
    pub fn update(&mut self, x: f64) -> Option<f64> {
        if !x.is_finite() {
            return None;
        }
        let z = (self.window.len() == Self::WINDOW).then(|| {
            let n = Self::WINDOW as f64;
            let mean = self.window.iter().sum::<f64>() / n;
            let var = self.window.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
            (var > 0.0).then(|| (x - mean) / var.sqrt())
        });
        if self.window.len() < Self::WINDOW {
            self.window.push(x);
        } else {
            self.window[self.next] = x;
            self.next = (self.next + 1) % Self::WINDOW;
        }
        z.flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::{LossScaler, OutlierDetector};
    use crate::backend::Precision;

    #[test]
    fn the_loss_scale_follows_grad_scaler() {
        let mut s = LossScaler::new(Precision::F16);
        assert_eq!((s.scale, s.dynamic), (65536.0, true));
        assert!(s.record(false), "an overflow skips");
        assert_eq!((s.scale, s.skipped, s.clean), (32768.0, 1, 0));
        for _ in 0..LossScaler::GROWTH_INTERVAL - 1 {
            assert!(!s.record(true));
        }
        assert_eq!(s.scale, 32768.0, "not yet 2000 clean steps");
        s.record(true);
        assert_eq!((s.scale, s.clean), (65536.0, 0), "doubles after 2000 clean steps");
        s.record(true);
        s.record(false);
        assert_eq!((s.scale, s.clean, s.skipped), (32768.0, 0, 2), "an overflow resets the count");
        for p in [Precision::F32, Precision::Bf16] {
            let mut fixed = LossScaler::new(p);
            assert!(!fixed.record(false) && fixed.scale == 1.0 && fixed.skipped == 0, "{p:?} never scales or skips");
        }
    }

    #[test]
    fn outlier_z_scores_need_a_full_window_and_match_the_formula() {
        let mut d = OutlierDetector::default();
        // values 0, 1, 0, 1, ...: mean 0.5, population std 0.5
        for i in 0..OutlierDetector::WINDOW {
            assert_eq!(d.update((i % 2) as f64), None, "no score before the window is full");
        }
        // (3 - 0.5) / 0.5
        assert_eq!(d.update(3.0), Some(5.0));
        // the window slid: it now holds 1, 0, 1, ..., 0, 3 (the first 0 left)
        let w: Vec<f64> = (1..OutlierDetector::WINDOW).map(|i| (i % 2) as f64).chain([3.0]).collect();
        let mean = w.iter().sum::<f64>() / w.len() as f64;
        let std = (w.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
        let z = d.update(0.25).unwrap();
        assert!((z - (0.25 - mean) / std).abs() < 1e-12, "{z}");
        assert_eq!(d.update(f64::NAN), None, "non-finite values are not scored or kept");
        let mut flat = OutlierDetector::default();
        for _ in 0..OutlierDetector::WINDOW {
            flat.update(2.0);
        }
        assert_eq!(flat.update(9.0), None, "zero spread gives no score");
    }
}
