//! Sampling with a KV cache: each new token costs one position of compute.
//!
//! The context is cropped to `block_size` as nanoGPT's `generate` does. When the cache is full
//! it is rebuilt from the last `block_size / 2` tokens (positions restart at 0), so generation
//! never pays a full window per token.

use crate::backend::{Backend, Precision, Work};
use crate::model::{Gpt, ModelConfig};
use crate::rng::Rng;
use anyhow::Result;

/// A model prepared for generation: its forward pass one position at a time against a KV
/// cache in the backend's buffers ([`Gpt::decode`]).
pub struct Sampler<B: Backend> {
    model: Gpt<B>,
    pos: usize,
    context: Vec<u32>,
}

impl<B: Backend> Sampler<B> {
    pub fn new(backend: B, cfg: ModelConfig, params: &[f32]) -> Result<Self> {
        backend.prepare(&cfg.plan(1, Precision::F32, Work::Sample)); // a GPU's kernels, on parallel threads
        let mut model = Gpt::zeros(backend, cfg)?;
        model.set_params(params)?;
        Ok(Sampler { model, pos: 0, context: Vec::new() })
    }

    /// What getting ready cost (a GPU's kernels: [`Backend::warm_up_note`]), once sampling has
    /// launched them.
    pub fn warm_up_note(&self) -> Option<String> {
        self.model.backend.warm_up_note()
    }

    /// Clears the cache and context.
    pub fn reset(&mut self) {
        self.pos = 0;
        self.context.clear();
    }

    /// Feeds one token; returns the logits (V) for the next one.
    pub fn push(&mut self, token: u32) -> Result<Vec<f32>> {
        let block = self.model.cfg.block_size;
        if self.pos == block {
            let keep = self.context[self.context.len() - block / 2..].to_vec();
            self.reset();
            for &t in &keep {
                self.step(t)?;
            }
        }
        self.step(token)
    }

    fn step(&mut self, token: u32) -> Result<Vec<f32>> {
        let logits = self.model.decode(token, self.pos)?;
        self.pos += 1;
        self.context.push(token);
        Ok(logits)
    }

    /// Generates `n` tokens after `prompt` (which must not be empty).
    pub fn generate(
        &mut self,
        prompt: &[u32],
        n: usize,
        temperature: f32,
        top_k: usize,
        rng: &mut Rng,
        mut on_token: impl FnMut(u32),
    ) -> Result<Vec<u32>> {
        self.reset();
        let mut logits = Vec::new();
        for &t in prompt {
            logits = self.push(t)?;
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let next = pick(&logits, temperature, top_k, rng);
            out.push(next);
            on_token(next);
            logits = self.push(next)?;
        }
        Ok(out)
    }
}

/// Samples from softmax(logits / temperature) restricted to the top k (0: all).
pub fn pick(logits: &[f32], temperature: f32, top_k: usize, rng: &mut Rng) -> u32 {
    let mut scaled: Vec<f32> = logits.iter().map(|l| l / temperature).collect();
    if top_k > 0 && top_k < scaled.len() {
        let mut sorted = scaled.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let kth = sorted[top_k - 1];
        scaled.iter_mut().filter(|x| **x < kth).for_each(|x| *x = f32::NEG_INFINITY);
    }
    let maxv = scaled.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let probs: Vec<f64> = scaled.iter().map(|&x| ((x - maxv) as f64).exp()).collect();
    let total: f64 = probs.iter().sum();
    let mut u = rng.next_f32() as f64 * total;
    for (i, p) in probs.iter().enumerate() {
        u -= p;
        if u < 0.0 {
            return i as u32;
        }
    }
    (probs.len() - 1) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;

    #[test]
    fn top_k_one_is_greedy_and_context_is_cropped() {
        let cfg = ModelConfig { n_layer: 1, n_head: 1, n_embd: 8, block_size: 4, vocab_size: 5, padded_vocab_size: 5, bias: false };
        let g = Gpt::init(Cpu::FAST, cfg.clone(), 1).unwrap();
        let mut s = Sampler::new(Cpu::FAST, cfg, &g.params_host().unwrap()).unwrap();
        let mut rng = Rng::new(0, 0);
        let out = s.generate(&[1], 20, 1.0, 1, &mut rng, |_| {}).unwrap();
        assert_eq!(out.len(), 20);
        assert!(s.pos <= 4);
        assert_eq!(pick(&[0.0, 3.0, 1.0], 1.0, 1, &mut rng), 1);
    }
}
