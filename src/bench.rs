//! `gptrain bench`: times full training steps (forward, backward, clipping, AdamW) on synthetic
//! tokens, and optionally the share of each kernel (through [`Timed`], a backend wrapper).

use crate::backend::cpu::Cpu;
use crate::backend::{AdamW, Backend, DType, Dropout, Linear, Span};
use crate::model::{Gpt, ModelConfig};
use crate::optim::{train_step, OptimConfig};
use crate::perf::flops;
use crate::rng;
use anyhow::Result;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchResult {
    pub ms_per_step: f64,
    pub p10_ms: f64,
    pub p90_ms: f64,
    /// Model FLOPs of one step (one micro-batch), from `perf::flops`.
    pub flops_per_step: f64,
    pub peak_rss_bytes: u64,
    pub params: usize,
    /// (kernel, ms per step), largest first.
    pub profile: Vec<(String, f64)>,
}

/// Peak resident memory of this process (VmHWM), bytes.
pub fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()))
        .map_or(0, |kb| kb * 1024)
}

/// Times `steps` training steps of `model` at micro-batch `b` after `warmup` untimed ones.
pub fn run(model: &ModelConfig, b: usize, steps: usize, warmup: usize, profile: bool, cpu: Cpu) -> Result<BenchResult> {
    let t = model.block_size;
    let opt = OptimConfig {
        learning_rate: 1e-4,
        min_lr: 1e-5,
        warmup_iters: 0,
        lr_decay_iters: 1000,
        decay_lr: false,
        weight_decay: 0.1,
        beta1: 0.9,
        beta2: 0.95,
        grad_clip: 1.0,
    };
    let key = rng::key(0, rng::STREAM_TRAIN_BATCH, &[]);
    let batch = |i: u64| -> Vec<(Vec<u32>, Vec<u32>)> {
        let toks: Vec<u32> =
            (0..b * t + 1).map(|j| rng::below(rng::mix(key, i * 1_000_003 + j as u64), model.vocab_size as u64) as u32).collect();
        vec![(toks[..b * t].to_vec(), toks[1..].to_vec())]
    };
    let timer = Timer::default();
    let mut times = Vec::new();
    if profile {
        let mut g = Gpt::init(Timed { inner: cpu, timer: &timer }, model.clone(), 1);
        for i in 0..warmup + steps {
            if i == warmup {
                timer.reset();
            }
            let mb = batch(i as u64);
            let t0 = Instant::now();
            train_step(&mut g, &mb, b, t, i as u64, &opt, None);
            if i >= warmup {
                times.push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
    } else {
        let mut g = Gpt::init(cpu, model.clone(), 1);
        for i in 0..warmup + steps {
            let mb = batch(i as u64);
            let t0 = Instant::now();
            train_step(&mut g, &mb, b, t, i as u64, &opt, None);
            if i >= warmup {
                times.push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| quantile(&times, p);
    let mut prof: Vec<(String, f64)> = timer.0.lock().unwrap().iter().map(|(k, v)| (k.clone(), v / steps.max(1) as f64)).collect();
    prof.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(BenchResult {
        ms_per_step: q(0.5),
        p10_ms: q(0.1),
        p90_ms: q(0.9),
        flops_per_step: flops::flops_per_iter(model, b, t, 1),
        peak_rss_bytes: peak_rss(),
        params: flops::params(model).total,
        profile: prof,
    })
}

/// The linear layers of one training step alone (every layer's forward product, then its
/// input-gradient and weight-gradient products in reverse order, lm_head included), each layer
/// on its own buffers as in a real step: how fast the matmul library runs this model's shapes.
/// Returns (median ms per pass, model FLOPs per pass); `steps` must be at least 1.
pub fn run_linears(model: &ModelConfig, b: usize, steps: usize, warmup: usize) -> (f64, f64) {
    use crate::backend::cpu::matmul::{matmul_backward, matmul_forward};
    let (c, bt, vp) = (model.n_embd, b * model.block_size, model.padded_vocab_size);
    let key = rng::key(0, rng::STREAM_TRAIN_BATCH, &[]);
    let filled = |n: usize, salt: u64, scale: f32| -> Vec<f32> {
        (0..n).map(|i| (rng::below(rng::mix(key, salt * 1_000_003 + i as u64), 2001) as f32 / 1000.0 - 1.0) * scale).collect()
    };
    // (in features, out features) of each product: qkv, attention proj, fc, mlp proj
    let shapes = [(c, 3 * c), (c, c), (c, 4 * c), (4 * c, c)];
    struct Lin {
        inp: Vec<f32>,  // (BT, IC)
        w: Vec<f32>,    // (OC, IC)
        out: Vec<f32>,  // (BT, OC)
        dw: Vec<f32>,   // (OC, IC)
        dinp: Vec<f32>, // (BT, IC)
        ic: usize,
    }
    let mut salt = 0;
    let mut lin = |ic: usize, oc: usize| {
        salt += 2;
        Lin {
            inp: filled(bt * ic, salt, 1.0),
            w: filled(oc * ic, salt + 1, 0.02),
            out: vec![0.0; bt * oc], // written by the forward pass before the backward reads it
            dw: vec![0.0; oc * ic],
            dinp: vec![0.0; bt * ic],
            ic,
        }
    };
    let mut lins: Vec<Lin> = (0..model.n_layer).flat_map(|_| shapes).map(|(ic, oc)| lin(ic, oc)).collect();
    lins.push(lin(c, vp)); // lm_head: logits (BT, Vp) from wte (Vp, C)
    let mut times = Vec::new();
    for i in 0..warmup + steps {
        let t0 = Instant::now();
        for l in lins.iter_mut() {
            matmul_forward(&mut l.out, &l.inp, &l.w, None, l.ic);
        }
        // the forward's outputs stand in for the output gradients: same shapes, same traffic
        for l in lins.iter_mut().rev() {
            matmul_backward(&mut l.dinp, &mut l.dw, None, &l.out, &l.inp, &l.w, l.ic);
        }
        if i >= warmup {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let f = flops::flops_per_token(model, model.block_size);
    let linear_flops = 3.0 * (f.qkv + f.attn_proj + f.mlp_fc + f.mlp_proj + f.lm_head) * bt as f64;
    (quantile(&times, 0.5), linear_flops)
}

/// The profile's names for attention's two kernels.
const ATTENTION_FORWARD: &str = "attention forward";
const ATTENTION_BACKWARD: &str = "attention backward";

/// Model FLOPs per step behind the profile's rows that do matmul work, under the names
/// [`Timed`] gives them, from `perf::flops`: each linear layer's forward and both gradient
/// products, and attention's products with causal masking counted exactly (the kernels skip
/// the masked blocks, so dense counting would flatter them). Products that [`matmul_role`]
/// cannot tell apart by shape share a row, and their FLOPs add up there.
pub fn profile_flops(model: &ModelConfig, b: usize) -> Vec<(&'static str, f64)> {
    let (t, c, vp) = (model.block_size, model.n_embd, model.padded_vocab_size);
    let f = flops::flops_per_token(model, t);
    let tokens = (b * t) as f64;
    let attn = (f.attn_scores + f.attn_values) * (t as f64 + 1.0) / (2.0 * t as f64) * tokens;
    let rows = [
        (matmul_role(c, 3 * c), 3.0 * f.qkv * tokens),
        (matmul_role(c, c), 3.0 * f.attn_proj * tokens),
        (matmul_role(c, 4 * c), 3.0 * f.mlp_fc * tokens),
        (matmul_role(4 * c, c), 3.0 * f.mlp_proj * tokens),
        (matmul_role(c, vp), 3.0 * f.lm_head * tokens),
        (ATTENTION_FORWARD, attn),
        // scores and values each have two gradient products (model FLOPs: the scores the
        // backward recomputes, instead of storing them, are not counted)
        (ATTENTION_BACKWARD, 2.0 * attn),
    ];
    let mut out: Vec<(&'static str, f64)> = Vec::new();
    for (name, fl) in rows {
        match out.iter_mut().find(|r| r.0 == name) {
            Some(r) => r.1 += fl,
            None => out.push((name, fl)),
        }
    }
    out
}

/// The `p` quantile of sorted, non-empty `times` (nearest rank).
fn quantile(times: &[f64], p: f64) -> f64 {
    times[((times.len() - 1) as f64 * p).round() as usize]
}

/// Accumulated milliseconds per kernel name.
#[derive(Default)]
pub struct Timer(Mutex<BTreeMap<String, f64>>);

impl Timer {
    fn add(&self, name: &str, t0: Instant) {
        *self.0.lock().unwrap().entry(name.to_string()).or_default() += t0.elapsed().as_secs_f64() * 1e3;
    }
    fn reset(&self) {
        self.0.lock().unwrap().clear();
    }
}

/// A backend that times every kernel of the backend it wraps.
pub struct Timed<'a, B: Backend> {
    pub inner: B,
    pub timer: &'a Timer,
}

/// A matmul's role from its shape: output channels over input channels.
fn matmul_role(ic: usize, oc: usize) -> &'static str {
    match (4 * oc / ic, 4 * oc % ic) {
        (12, 0) => "matmul qkv",
        (4, 0) => "matmul attn proj",
        (16, 0) => "matmul mlp fc",
        (1, 0) => "matmul mlp proj",
        _ => "matmul lm_head",
    }
}

macro_rules! timed {
    ($self:ident, $name:expr, $call:expr) => {{
        let t0 = Instant::now();
        let r = $call;
        $self.timer.add($name, t0);
        r
    }};
}

impl<B: Backend> Backend for Timed<'_, B> {
    type Buf = B::Buf;
    fn step_scope<R>(f: impl FnOnce() -> R) -> R {
        B::step_scope(f)
    }
    fn name(&self) -> String {
        self.inner.name()
    }
    fn dtype(&self) -> DType {
        self.inner.dtype()
    }
    fn alloc(&self, n: usize) -> Self::Buf {
        self.inner.alloc(n)
    }
    fn upload(&self, dst: &mut Self::Buf, off: usize, src: &[f32]) {
        self.inner.upload(dst, off, src)
    }
    fn download(&self, src: &Self::Buf, span: Span) -> Vec<f32> {
        self.inner.download(src, span)
    }
    fn zero(&self, buf: &mut Self::Buf, span: Span) {
        timed!(self, "zero grads/activations", self.inner.zero(buf, span))
    }
    fn encoder_forward(
        &self,
        acts: &mut Self::Buf,
        out: Span,
        params: &Self::Buf,
        wte: Span,
        wpe: Span,
        tokens: &[u32],
        bt: (usize, usize),
        drop: Dropout,
    ) {
        timed!(self, "encoder", self.inner.encoder_forward(acts, out, params, wte, wpe, tokens, bt, drop))
    }
    fn encoder_backward(
        &self,
        grads: &mut Self::Buf,
        dwte: Span,
        dwpe: Span,
        dacts: &Self::Buf,
        dout: Span,
        tokens: &[u32],
        bt: (usize, usize),
    ) {
        timed!(self, "encoder", self.inner.encoder_backward(grads, dwte, dwpe, dacts, dout, tokens, bt))
    }
    fn dropout(&self, buf: &mut Self::Buf, x: Span, drop: Dropout) {
        timed!(self, "dropout", self.inner.dropout(buf, x, drop))
    }
    fn layernorm_forward(
        &self,
        acts: &mut Self::Buf,
        out: Span,
        mean: Span,
        rstd: Span,
        inp: Span,
        params: &Self::Buf,
        w: Span,
        b: Option<Span>,
    ) {
        timed!(self, "layernorm", self.inner.layernorm_forward(acts, out, mean, rstd, inp, params, w, b))
    }
    fn layernorm_backward(
        &self,
        dacts: &mut Self::Buf,
        dinp: Span,
        dout: Span,
        grads: &mut Self::Buf,
        dw: Span,
        db: Option<Span>,
        acts: &Self::Buf,
        inp: Span,
        mean: Span,
        rstd: Span,
        params: &Self::Buf,
        w: Span,
    ) {
        timed!(self, "layernorm", self.inner.layernorm_backward(dacts, dinp, dout, grads, dw, db, acts, inp, mean, rstd, params, w))
    }
    fn matmul_forward(&self, acts: &mut Self::Buf, out: Span, inp: Span, params: &Self::Buf, lin: Linear, ic: usize) {
        let role = matmul_role(ic, lin.w.len / ic);
        timed!(self, role, self.inner.matmul_forward(acts, out, inp, params, lin, ic))
    }
    fn matmul_backward(
        &self,
        dacts: &mut Self::Buf,
        dinp: Span,
        dout: Span,
        grads: &mut Self::Buf,
        dlin: Linear,
        acts: &Self::Buf,
        inp: Span,
        params: &Self::Buf,
        w: Span,
        ic: usize,
    ) {
        let role = matmul_role(ic, w.len / ic);
        timed!(self, role, self.inner.matmul_backward(dacts, dinp, dout, grads, dlin, acts, inp, params, w, ic))
    }
    fn attention_forward(
        &self,
        acts: &mut Self::Buf,
        out: Span,
        stats: Span,
        qkv: Span,
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
        drop: Dropout,
    ) {
        timed!(self, ATTENTION_FORWARD, self.inner.attention_forward(acts, out, stats, qkv, b, t, c, nh, drop))
    }
    fn attention_backward(
        &self,
        dacts: &mut Self::Buf,
        dqkv: Span,
        dout: Span,
        acts: &Self::Buf,
        qkv: Span,
        stats: Span,
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
        drop: Dropout,
    ) {
        timed!(self, ATTENTION_BACKWARD, self.inner.attention_backward(dacts, dqkv, dout, acts, qkv, stats, b, t, c, nh, drop))
    }
    fn gelu_forward(&self, acts: &mut Self::Buf, out: Span, inp: Span) {
        timed!(self, "gelu", self.inner.gelu_forward(acts, out, inp))
    }
    fn gelu_backward(&self, dacts: &mut Self::Buf, dinp: Span, dout: Span, acts: &Self::Buf, inp: Span) {
        timed!(self, "gelu", self.inner.gelu_backward(dacts, dinp, dout, acts, inp))
    }
    fn residual_forward(&self, acts: &mut Self::Buf, out: Span, a: Span, b: Span) {
        timed!(self, "residual", self.inner.residual_forward(acts, out, a, b))
    }
    fn copy(&self, buf: &mut Self::Buf, dst: Span, src: Span) {
        timed!(self, "residual", self.inner.copy(buf, dst, src))
    }
    fn crossentropy_forward(
        &self,
        acts: &mut Self::Buf,
        logits: Span,
        losses: Span,
        targets: &[u32],
        v: usize,
        vp: usize,
        grad_scale: Option<f32>,
    ) {
        timed!(self, "softmax + cross-entropy", self.inner.crossentropy_forward(acts, logits, losses, targets, v, vp, grad_scale))
    }
    fn classifier_backward(
        &self,
        dacts: &mut Self::Buf,
        dinp: Span,
        grads: &mut Self::Buf,
        dw: Span,
        acts: &Self::Buf,
        dlogits: Span,
        inp: Span,
        params: &Self::Buf,
        w: Span,
        ic: usize,
    ) {
        let role = matmul_role(ic, w.len / ic);
        timed!(self, role, self.inner.classifier_backward(dacts, dinp, grads, dw, acts, dlogits, inp, params, w, ic))
    }
    fn sum(&self, buf: &Self::Buf, span: Span) -> f64 {
        self.inner.sum(buf, span)
    }
    fn sum_squares(&self, buf: &Self::Buf, span: Span) -> f64 {
        timed!(self, "grad norm", self.inner.sum_squares(buf, span))
    }
    fn adamw_update(
        &self,
        params: &mut Self::Buf,
        grads: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        span: Span,
        hp: AdamW,
        step: u64,
        weight_decay: f32,
        grad_scale: f32,
    ) {
        timed!(self, "adamw (+ clip)", self.inner.adamw_update(params, grads, m, v, span, hp, step, weight_decay, grad_scale))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_flops_follow_the_profiles_names_and_add_up_when_shapes_collide() {
        let m = |vp| ModelConfig { n_layer: 2, n_head: 2, n_embd: 16, block_size: 8, vocab_size: vp, padded_vocab_size: vp, bias: false };
        let rows = profile_flops(&m(65), 3);
        let names: Vec<&str> = rows.iter().map(|r| r.0).collect();
        assert_eq!(
            names,
            [
                "matmul qkv",
                "matmul attn proj",
                "matmul mlp fc",
                "matmul mlp proj",
                "matmul lm_head",
                "attention forward",
                "attention backward"
            ]
        );
        // matmul work per step is the FLOPs model's, attention's counted causally
        let f = flops::flops_per_token(&m(65), 8);
        let total: f64 = rows.iter().map(|r| r.1).sum();
        let causal = (f.attn_scores + f.attn_values) * (9.0 / 16.0);
        assert!((total - (f.train() - 3.0 * (f.attn_scores + f.attn_values) + 3.0 * causal) * 24.0).abs() < 1e-6 * total);
        // a vocabulary of 4 C makes the classifier look like the MLP's first layer: one row
        let collided = profile_flops(&m(64), 3);
        assert_eq!(collided.len(), 6);
        let fc = collided.iter().find(|r| r.0 == "matmul mlp fc").unwrap().1;
        let g = flops::flops_per_token(&m(64), 8);
        assert!((fc - 3.0 * (g.mlp_fc + g.lm_head) * 24.0).abs() < 1e-6 * fc);
    }
}
