//! Sampling with a KV cache: each new token costs one position of compute.
//!
//! The context is cropped to `block_size` as nanoGPT's `generate` does. When the cache is full
//! it is rebuilt from the last `block_size / 2` tokens (positions restart at 0), so generation
//! never pays a full window per token.

use crate::backend::cpu::{layernorm, matmul, pointwise};
use crate::model::{ModelConfig, ParamLayout};
use crate::rng::Rng;

/// A model prepared for generation, with its K/V cache.
pub struct Sampler {
    cfg: ModelConfig,
    layout: ParamLayout,
    params: Vec<f32>,
    kcache: Vec<f32>, // (L, maxT, C)
    vcache: Vec<f32>, // (L, maxT, C)
    pos: usize,
    context: Vec<u32>,
}

impl Sampler {
    pub fn new(cfg: ModelConfig, params: Vec<f32>) -> Self {
        let layout = ParamLayout::new(&cfg);
        assert_eq!(params.len(), layout.total);
        let n = cfg.n_layer * cfg.block_size * cfg.n_embd;
        Sampler { cfg, layout, params, kcache: vec![0.0; n], vcache: vec![0.0; n], pos: 0, context: Vec::new() }
    }

    /// Clears the cache and context.
    pub fn reset(&mut self) {
        self.pos = 0;
        self.context.clear();
    }

    /// Feeds one token; returns the logits (V) for the next one.
    pub fn push(&mut self, token: u32) -> Vec<f32> {
        if self.pos == self.cfg.block_size {
            let keep = self.context[self.context.len() - self.cfg.block_size / 2..].to_vec();
            self.reset();
            for &t in &keep {
                self.forward_one(t);
            }
        }
        self.forward_one(token)
    }

    fn forward_one(&mut self, token: u32) -> Vec<f32> {
        let (c, nh, maxt) = (self.cfg.n_embd, self.cfg.n_head, self.cfg.block_size);
        let hs = c / nh;
        let (p, w) = (&self.layout, &self.params);
        let at = |s: crate::backend::Span| &w[s.off..s.end()];
        let pos = self.pos;
        // x(C) = wte[token] + wpe[pos]
        let mut x: Vec<f32> = (0..c).map(|i| w[p.wte.off + token as usize * c + i] + w[p.wpe.off + pos * c + i]).collect();
        let (mut ln, mut mean, mut rstd) = (vec![0.0; c], [0.0f32], [0.0f32]);
        let mut qkv = vec![0.0; 3 * c];
        let mut y = vec![0.0; c];
        let mut proj = vec![0.0; c];
        let mut fch = vec![0.0; 4 * c];
        let mut gelu = vec![0.0; 4 * c];
        let mut att = vec![0.0f32; pos + 1];
        for l in 0..self.cfg.n_layer {
            layernorm::layernorm_forward(&mut ln, &mut mean, &mut rstd, &x, at(p.layer(p.ln1w, l)), p.ln1b.map(|s| at(p.layer(s, l))));
            let lin = p.linear(p.qkvw, p.qkvb, l);
            matmul::matmul_forward(&mut qkv, &ln, at(lin.w), lin.b.map(at), c);
            let cache = (l * maxt + pos) * c;
            self.kcache[cache..cache + c].copy_from_slice(&qkv[c..2 * c]);
            self.vcache[cache..cache + c].copy_from_slice(&qkv[2 * c..]);
            let scale = 1.0 / (hs as f32).sqrt();
            for h in 0..nh {
                let q = &qkv[h * hs..(h + 1) * hs];
                let mut maxv = f32::NEG_INFINITY;
                for (t2, a) in att.iter_mut().enumerate() {
                    let k = &self.kcache[(l * maxt + t2) * c + h * hs..][..hs];
                    *a = q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale;
                    maxv = maxv.max(*a);
                }
                let mut sum = 0.0;
                for a in att.iter_mut() {
                    *a = (*a - maxv).exp();
                    sum += *a;
                }
                let yh = &mut y[h * hs..(h + 1) * hs];
                yh.fill(0.0);
                for (t2, a) in att.iter().enumerate() {
                    let v = &self.vcache[(l * maxt + t2) * c + h * hs..][..hs];
                    for (yi, vi) in yh.iter_mut().zip(v) {
                        *yi += a / sum * vi;
                    }
                }
            }
            let lin = p.linear(p.attprojw, p.attprojb, l);
            matmul::matmul_forward(&mut proj, &y, at(lin.w), lin.b.map(at), c);
            x.iter_mut().zip(&proj).for_each(|(x, p)| *x += p);
            layernorm::layernorm_forward(&mut ln, &mut mean, &mut rstd, &x, at(p.layer(p.ln2w, l)), p.ln2b.map(|s| at(p.layer(s, l))));
            let lin = p.linear(p.fcw, p.fcb, l);
            matmul::matmul_forward(&mut fch, &ln, at(lin.w), lin.b.map(at), c);
            pointwise::gelu_forward(&mut gelu, &fch);
            let lin = p.linear(p.fcprojw, p.fcprojb, l);
            matmul::matmul_forward(&mut proj, &gelu, at(lin.w), lin.b.map(at), 4 * c);
            x.iter_mut().zip(&proj).for_each(|(x, p)| *x += p);
        }
        layernorm::layernorm_forward(&mut ln, &mut mean, &mut rstd, &x, at(p.lnfw), p.lnfb.map(at));
        let mut logits = vec![0.0; self.cfg.padded_vocab_size];
        matmul::matmul_forward(&mut logits, &ln, at(p.wte), None, c);
        logits.truncate(self.cfg.vocab_size);
        self.pos += 1;
        self.context.push(token);
        logits
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
    ) -> Vec<u32> {
        self.reset();
        let mut logits = Vec::new();
        for &t in prompt {
            logits = self.push(t);
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let next = pick(&logits, temperature, top_k, rng);
            out.push(next);
            on_token(next);
            logits = self.push(next);
        }
        out
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
    use crate::model::Gpt;

    #[test]
    fn kv_cache_matches_the_full_forward() {
        let cfg = ModelConfig { n_layer: 2, n_head: 2, n_embd: 16, block_size: 8, vocab_size: 11, padded_vocab_size: 64, bias: true };
        let mut g = Gpt::init(Cpu::FAST, cfg.clone(), 3);
        let toks: Vec<u32> = vec![1, 5, 2, 9, 0, 3, 7];
        g.forward(&toks, &toks, 1, toks.len(), None, None);
        let full = g.logits();
        let mut s = Sampler::new(cfg.clone(), g.params_host());
        for (i, &t) in toks.iter().enumerate() {
            let l = s.push(t);
            let want = &full[i * 64..i * 64 + 11];
            for (a, b) in l.iter().zip(want) {
                assert!((a - b).abs() < 1e-5, "position {i}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn top_k_one_is_greedy_and_context_is_cropped() {
        let cfg = ModelConfig { n_layer: 1, n_head: 1, n_embd: 8, block_size: 4, vocab_size: 5, padded_vocab_size: 5, bias: false };
        let g = Gpt::init(Cpu::FAST, cfg.clone(), 1);
        let mut s = Sampler::new(cfg, g.params_host());
        let mut rng = Rng::new(0, 0);
        let out = s.generate(&[1], 20, 1.0, 1, &mut rng, |_| {});
        assert_eq!(out.len(), 20);
        assert!(s.pos <= 4);
        assert_eq!(pick(&[0.0, 3.0, 1.0], 1.0, 1, &mut rng), 1);
    }
}
