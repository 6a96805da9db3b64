//! `gptrain bench`: times full training steps (forward, backward, clipping, AdamW) on synthetic
//! tokens, and optionally the share of each op (through [`Timed`], a backend wrapper that
//! names each op by [`Op::name`]).

use crate::backend::ops::{ATTENTION_BACKWARD, ATTENTION_FORWARD};
use crate::backend::{Backend, Buffers, DType, DeviceInfo, Host, Op, Precision, Role, Tensor};
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
    /// Every step's time in the order run, warm-up steps first (ms).
    pub times_ms: Vec<f64>,
    /// When each step ended, in ms since `run` began (the first ones include building the
    /// model on the device).
    pub ends_ms: Vec<f64>,
    /// Model FLOPs of one step (`accum` micro-batches), from `perf::flops`.
    pub flops_per_step: f64,
    pub peak_rss_bytes: u64,
    /// The most device memory the backend's allocations held at once (None on the CPU).
    pub peak_device_bytes: Option<u64>,
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

/// Times `steps` training steps of `model` at micro-batch `b` after `warmup` untimed ones, on
/// `backend`, computing in `precision`; a step is `accum` micro-batches (gradient
/// accumulation), then clipping and AdamW. (A step ends by reading its scalars, so on a GPU a
/// step's time is the GPU's; with `profile`, every op is waited for, so its time is its own plus
/// one synchronisation.)
#[allow(clippy::too_many_arguments)]
pub fn run<B: Backend>(
    model: &ModelConfig,
    b: usize,
    accum: usize,
    steps: usize,
    warmup: usize,
    profile: bool,
    backend: B,
    precision: Precision,
) -> Result<BenchResult> {
    let began = Instant::now();
    let t = model.block_size;
    let accum = accum.max(1);
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
        (0..accum as u64)
            .map(|m| {
                let at = (i * accum as u64 + m) * 1_000_003;
                let toks: Vec<u32> =
                    (0..b * t + 1).map(|j| rng::below(rng::mix(key, at + j as u64), model.vocab_size as u64) as u32).collect();
                (toks[..b * t].to_vec(), toks[1..].to_vec())
            })
            .collect()
    };
    let timer = Timer::default();
    let (mut times, mut ends) = (Vec::new(), Vec::new());
    // the device memory the backend's allocations peaked at (None on the CPU)
    let peak_device_bytes = if profile {
        let mut g = Gpt::init_in(Timed { inner: backend, timer: &timer }, model.clone(), 1, precision)?;
        for i in 0..warmup + steps {
            if i == warmup {
                timer.reset();
            }
            let mb = batch(i as u64);
            let t0 = Instant::now();
            train_step(&mut g, &mb, b, t, i as u64, &opt, None)?;
            times.push(t0.elapsed().as_secs_f64() * 1e3);
            ends.push(began.elapsed().as_secs_f64() * 1e3);
        }
        g.backend.memory_use().map(|m| m.peak)
    } else {
        let mut g = Gpt::init_in(backend, model.clone(), 1, precision)?;
        for i in 0..warmup + steps {
            let mb = batch(i as u64);
            let t0 = Instant::now();
            train_step(&mut g, &mb, b, t, i as u64, &opt, None)?;
            times.push(t0.elapsed().as_secs_f64() * 1e3);
            ends.push(began.elapsed().as_secs_f64() * 1e3);
        }
        g.backend.memory_use().map(|m| m.peak)
    };
    let mut timed = times[warmup..].to_vec();
    timed.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| quantile(&timed, p);
    let mut prof: Vec<(String, f64)> = timer.0.lock().unwrap().iter().map(|(k, v)| (k.clone(), v / steps.max(1) as f64)).collect();
    prof.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(BenchResult {
        ms_per_step: q(0.5),
        p10_ms: q(0.1),
        p90_ms: q(0.9),
        times_ms: times,
        ends_ms: ends,
        flops_per_step: flops::flops_per_iter(model, b, t, accum),
        peak_rss_bytes: peak_rss(),
        peak_device_bytes,
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

/// Model FLOPs per step behind the profile's rows that do matmul work, under the names
/// [`Op::name`] gives them, from `perf::flops`: each linear layer's forward and both gradient
/// products, and attention's products with causal masking counted exactly (the kernels skip
/// the masked blocks, so dense counting would flatter them).
pub fn profile_flops(model: &ModelConfig, b: usize) -> Vec<(&'static str, f64)> {
    let t = model.block_size;
    let f = flops::flops_per_token(model, t);
    let tokens = (b * t) as f64;
    let attn = (f.attn_scores + f.attn_values) * (t as f64 + 1.0) / (2.0 * t as f64) * tokens;
    vec![
        (Role::Qkv.name(), 3.0 * f.qkv * tokens),
        (Role::AttnProj.name(), 3.0 * f.attn_proj * tokens),
        (Role::MlpFc.name(), 3.0 * f.mlp_fc * tokens),
        (Role::MlpProj.name(), 3.0 * f.mlp_proj * tokens),
        (Role::LmHead.name(), 3.0 * f.lm_head * tokens),
        (ATTENTION_FORWARD, attn),
        // scores and values each have two gradient products (model FLOPs: the scores the
        // backward recomputes, instead of storing them, are not counted)
        (ATTENTION_BACKWARD, 2.0 * attn),
    ]
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

/// A backend that times every op of the backend it wraps, by the op's own name.
pub struct Timed<'a, B: Backend> {
    pub inner: B,
    pub timer: &'a Timer,
}

impl<B: Backend> Backend for Timed<'_, B> {
    type Buf = B::Buf;
    fn step_scope<R>(f: impl FnOnce() -> R) -> R {
        B::step_scope(f)
    }
    fn name(&self) -> String {
        self.inner.name()
    }
    fn device(&self, p: Precision) -> DeviceInfo {
        self.inner.device(p)
    }
    fn alloc(&self, n: usize, dtype: DType) -> Result<Self::Buf> {
        self.inner.alloc(n, dtype)
    }
    fn upload(&self, bufs: &mut Buffers<Self::Buf>, dst: Tensor, src: &Host) -> Result<()> {
        self.inner.upload(bufs, dst, src)
    }
    fn download(&self, bufs: &Buffers<Self::Buf>, src: Tensor) -> Result<Host> {
        self.inner.download(bufs, src)
    }
    fn synchronize(&self) -> Result<()> {
        self.inner.synchronize()
    }
    fn memory_use(&self) -> Option<crate::backend::MemoryUse> {
        self.inner.memory_use()
    }
    fn run(&self, bufs: &mut Buffers<Self::Buf>, op: &Op) -> Result<()> {
        let t0 = Instant::now();
        // waits for the op where ops run asynchronously (a GPU; a no-op on the CPU), so the
        // time is the op's own
        let r = self.inner.run(bufs, op).and_then(|()| self.inner.synchronize());
        self.timer.add(op.name(), t0);
        r
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
        // a vocabulary of 4 C has the MLP's first layer's shape; the op names its role, so the
        // classifier keeps its own row
        let same_shape = profile_flops(&m(64), 3);
        assert_eq!(same_shape.len(), 7);
        let g = flops::flops_per_token(&m(64), 8);
        let fc = same_shape.iter().find(|r| r.0 == "matmul mlp fc").unwrap().1;
        assert!((fc - 3.0 * g.mlp_fc * 24.0).abs() < 1e-6 * fc);
    }
}
