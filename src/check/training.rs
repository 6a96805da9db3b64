//! The end-to-end half of `gptrain check`: ten optimiser steps of a tiny model on the
//! candidate and on the reference, as the training loop takes them (`optim::train_step`:
//! gradient accumulation, dropout, clipping, AdamW), with the losses compared step by step.

use super::{tolerance, Verdict};
use crate::backend::cpu::Cpu;
use crate::backend::{Backend, Precision};
use crate::model::{Gpt, ModelConfig};
use crate::optim::{train_step, OptimConfig};
use crate::rng;
use anyhow::Result;

/// Steps, micro-batch shape (B, T), micro-batches per step, dropout and seed of the run.
const STEPS: u64 = 10;
const B: usize = 2;
const T: usize = 7;
const ACCUM: usize = 2;
const DROPOUT: f32 = 0.1;
const SEED: u64 = 1337;

/// The training check at one precision.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TrainCheck {
    pub dtype: &'static str,
    /// The model and run, in words.
    pub what: String,
    /// Each step's mean loss: (candidate, reference).
    pub losses: Vec<(f32, f32)>,
    /// The largest `|candidate - reference| / |reference|` over the steps' losses; None when
    /// the candidate did not train.
    pub max_rel_diff: Option<f64>,
    /// The step (from 0) where it is.
    pub worst_step: usize,
    pub tol: f64,
    pub verdict: Verdict,
}

impl TrainCheck {
    /// The training check at `precision`, skipped for `why` (see [`super::skipped_ops`]).
    pub fn skipped(precision: Precision, why: &str) -> TrainCheck {
        let what = "not run".to_string();
        let (dtype, tol) = (precision.name(), tolerance(precision));
        TrainCheck { dtype, what, losses: Vec::new(), max_rel_diff: None, worst_step: 0, tol, verdict: Verdict::Skip(why.to_string()) }
    }
}

/// The tiny model: 2 layers, 3 heads, 24 channels, a 13-token vocabulary padded to 16, biases.
fn tiny() -> ModelConfig {
    ModelConfig { n_layer: 2, n_head: 3, n_embd: 24, block_size: 8, vocab_size: 13, padded_vocab_size: 16, bias: true }
}

/// Trains the tiny model for ten steps on `candidate` in `precision` and on the reference in
/// float32 and compares the losses (at the precision's tolerance).
pub fn check_training<B: Backend>(candidate: B, precision: Precision) -> Result<TrainCheck> {
    let cfg = tiny();
    let what = format!(
        "{STEPS} steps of a {}-layer model (C={}, NH={}, V={} padded to {}), {ACCUM} micro-batches of B={B} T={T}, dropout {DROPOUT}",
        cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.vocab_size, cfg.padded_vocab_size
    );
    let tol = tolerance(precision);
    let mut check =
        TrainCheck { dtype: precision.name(), what, losses: Vec::new(), max_rel_diff: None, worst_step: 0, tol, verdict: Verdict::Pass };
    let reference = losses(Cpu::REFERENCE, &cfg, Precision::F32)?;
    let candidate = match losses(candidate, &cfg, precision) {
        Ok(l) => l,
        Err(e) => {
            check.verdict = Verdict::Error(format!("{e:#}"));
            return Ok(check);
        }
    };
    let mut worst = (0.0f64, 0);
    for (step, (&c, &r)) in candidate.iter().zip(&reference).enumerate() {
        let d = (c as f64 - r as f64).abs() / (r as f64).abs().max(super::FLOOR);
        let d = if d.is_finite() { d } else { f64::INFINITY };
        if d > worst.0 || step == 0 {
            worst = (d, step);
        }
    }
    check.losses = candidate.into_iter().zip(reference).collect();
    (check.max_rel_diff, check.worst_step) = (Some(worst.0), worst.1);
    check.verdict = Verdict::of(worst.0, tol);
    Ok(check)
}

/// The mean loss of each of the ten steps of the tiny model on `backend`.
fn losses<B: Backend>(backend: B, cfg: &ModelConfig, precision: Precision) -> Result<Vec<f32>> {
    let opt = OptimConfig {
        learning_rate: 1e-2,
        min_lr: 1e-3,
        warmup_iters: 2,
        lr_decay_iters: STEPS,
        decay_lr: true,
        weight_decay: 0.1,
        beta1: 0.9,
        beta2: 0.95,
        grad_clip: 1.0,
    };
    let key = rng::key(SEED, rng::STREAM_TRAIN_BATCH, &[]);
    let v = cfg.vocab_size as u64;
    // micro-batch (it, micro): B rows of T + 1 ids, inputs and targets shifted by one
    let batch = |it: u64, micro: usize| -> (Vec<u32>, Vec<u32>) {
        let row = |r: usize| -> Vec<u32> {
            let k = rng::mix(key, (it * ACCUM as u64 + micro as u64) * B as u64 + r as u64);
            (0..=T).map(|j| rng::below(rng::mix(k, j as u64), v) as u32).collect()
        };
        let rows: Vec<Vec<u32>> = (0..B).map(row).collect();
        (rows.iter().flat_map(|r| r[..T].to_vec()).collect(), rows.iter().flat_map(|r| r[1..].to_vec()).collect())
    };
    let mut g = Gpt::init_in(backend, cfg.clone(), SEED, precision)?;
    (0..STEPS)
        .map(|it| {
            let micro: Vec<_> = (0..ACCUM).map(|m| batch(it, m)).collect();
            Ok(train_step(&mut g, &micro, B, T, it, &opt, Some((DROPOUT, SEED)))?.loss)
        })
        .collect()
}
