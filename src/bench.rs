//! `gptrain bench`: times full training steps (forward, backward, clipping, AdamW) on synthetic
//! tokens, and optionally the share of each op (through [`Timed`], a backend wrapper that
//! names each op by [`Op::name`]).

use crate::backend::ops::{ATTENTION_BACKWARD, ATTENTION_FORWARD};
use crate::backend::{Backend, Buffers, DType, DeviceInfo, Host, Op, Precision, Role, Tensor};
use crate::model::{Gpt, ModelConfig, Recompute};
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
    /// Time and traffic per op name and step, largest time first (empty without `profile`).
    pub profile: Vec<ProfileRow>,
    /// What getting ready cost ([`Backend::warm_up_note`]: a GPU's kernels).
    pub warm_up_note: Option<String>,
}

/// One row of a profile: every op of one name ([`Op::name`]), per step.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProfileRow {
    pub name: String,
    /// The device's time on these ops (ms; see [`Backend::run_timed`]).
    pub ms: f64,
    /// The bytes their operands hold ([`op_bytes`]).
    pub bytes: f64,
}

/// Peak resident memory of this process (VmHWM), bytes.
pub fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()))
        .map_or(0, |kb| kb * 1024)
}

/// Times `steps` training steps of `model` at micro-batch `b` after `warmup` untimed ones, on
/// `backend`, computing in `precision` and recomputing what `recompute` names; a step is `accum` micro-batches (gradient
/// accumulation), then clipping and AdamW. (A step ends by reading its scalars, so on a GPU a
/// step's time is the GPU's; with `profile`, every op is timed by [`Backend::run_timed`] and
/// waited for, so the step's time includes one synchronisation per op, the ops' times do not.)
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
    recompute: Recompute,
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
    backend.prepare(&model.plan(b, precision, crate::backend::Work::Train)); // a GPU's kernels compile while the weights are made
    let timer = Timer::default();
    let (mut times, mut ends) = (Vec::new(), Vec::new());
    // the device memory the backend's allocations peaked at (None on the CPU), and what getting ready cost
    let (peak_device_bytes, note) = if profile {
        let mut g = Gpt::init_in(Timed { inner: backend, timer: &timer }, model.clone(), 1, precision)?;
        g.set_recompute(recompute);
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
        (g.backend.memory_use().map(|m| m.peak), g.backend.warm_up_note())
    } else {
        let mut g = Gpt::init_in(backend, model.clone(), 1, precision)?;
        g.set_recompute(recompute);
        for i in 0..warmup + steps {
            let mb = batch(i as u64);
            let t0 = Instant::now();
            train_step(&mut g, &mb, b, t, i as u64, &opt, None)?;
            times.push(t0.elapsed().as_secs_f64() * 1e3);
            ends.push(began.elapsed().as_secs_f64() * 1e3);
        }
        (g.backend.memory_use().map(|m| m.peak), g.backend.warm_up_note())
    };
    let mut timed = times[warmup..].to_vec();
    timed.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| quantile(&timed, p);
    let per_step = |x: f64| x / steps.max(1) as f64;
    let mut prof: Vec<ProfileRow> = timer
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|(name, &(ms, bytes))| ProfileRow { name: name.clone(), ms: per_step(ms), bytes: per_step(bytes) })
        .collect();
    prof.sort_by(|a, b| b.ms.total_cmp(&a.ms));
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
        warm_up_note: note,
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

/// A profile row's speed against the device's ceilings.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Rate {
    pub name: String,
    /// Per step (ms).
    pub ms: f64,
    /// Of the profiled ops' total time (percent).
    pub share: f64,
    /// Model FLOP/s / 1e12, for ops that do matmul work ([`profile_flops`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tflops: Option<f64>,
    /// Bytes moved / s / 1e9, for the others that move any ([`op_bytes`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gbs: Option<f64>,
    /// Those bytes, per step.
    pub bytes: f64,
    /// That rate as a percent of the device's peak FLOP/s or memory bandwidth (None when the
    /// device's ceiling is unknown).
    pub pct_of_peak: Option<f64>,
}

/// The rates of a profile's rows: TFLOP/s against `peak_flops` (FLOP/s) for the names in
/// `flops` (model FLOPs per step, from [`profile_flops`]), GB/s against `bandwidth` (bytes/s)
/// for the rest (none for a row that moves no bytes: dropout when off).
pub fn profile_rates(rows: &[ProfileRow], flops: &[(&str, f64)], peak_flops: Option<f64>, bandwidth: Option<f64>) -> Vec<Rate> {
    let total: f64 = rows.iter().map(|r| r.ms).sum();
    rows.iter()
        .map(|r| {
            let s = r.ms / 1e3;
            let (tflops, gbs, pct) = match flops.iter().find(|f| f.0 == r.name) {
                Some(f) => (Some(f.1 / s / 1e12), None, peak_flops.map(|p| f.1 / s / p * 100.0)),
                None if r.bytes > 0.0 => (None, Some(r.bytes / s / 1e9), bandwidth.map(|b| r.bytes / s / b * 100.0)),
                None => (None, None, None),
            };
            Rate { name: r.name.clone(), ms: r.ms, share: r.ms / total * 100.0, tflops, gbs, bytes: r.bytes, pct_of_peak: pct }
        })
        .collect()
}

/// The bytes an op's operands hold: each tensor counted once, read or written (an output it
/// accumulates into is read too, and a kernel may read an operand more than once, so this is a
/// lower bound on its memory traffic). A dropout with nothing to drop moves nothing.
pub fn op_bytes(op: &Op) -> u64 {
    if let Op::Dropout { drop, .. } = op {
        if !drop.active() {
            return 0;
        }
    }
    op.operands().iter().map(|(t, _)| (t.len() * t.dtype.bytes()) as u64).sum()
}

/// The `p` quantile of sorted, non-empty `times` (nearest rank).
fn quantile(times: &[f64], p: f64) -> f64 {
    times[((times.len() - 1) as f64 * p).round() as usize]
}

/// Accumulated (milliseconds, bytes of operands) per op name.
#[derive(Default)]
pub struct Timer(Mutex<BTreeMap<String, (f64, f64)>>);

impl Timer {
    fn add(&self, name: &str, seconds: f64, bytes: u64) {
        let mut m = self.0.lock().unwrap();
        let e = m.entry(name.to_string()).or_default();
        e.0 += seconds * 1e3;
        e.1 += bytes as f64;
    }
    fn reset(&self) {
        self.0.lock().unwrap().clear();
    }
}

/// A backend that times every op of the backend it wraps (its device time, [`Backend::run_timed`])
/// and counts its operands' bytes, by the op's own name.
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
    fn auto_precision(&self) -> Precision {
        self.inner.auto_precision()
    }
    fn has_tf32(&self) -> bool {
        self.inner.has_tf32()
    }
    fn prepare(&self, plan: &crate::backend::Plan) {
        self.inner.prepare(plan)
    }
    fn warm_up_note(&self) -> Option<String> {
        self.inner.warm_up_note()
    }
    fn run(&self, bufs: &mut Buffers<Self::Buf>, op: &Op) -> Result<()> {
        let seconds = self.inner.run_timed(bufs, op)?;
        self.timer.add(op.name(), seconds, op_bytes(op));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BufId, Span};

    #[test]
    fn an_ops_bytes_are_its_operands_each_counted_once() {
        let t = |buf, n: usize, dims: &[usize], dtype| Tensor::new(buf, Span::new(0, n), dims, dtype);
        // (N, IC) = (6, 4) @ (OC, IC) = (8, 4)^T + b(8) in bf16: out 48, inp 24, w 32, b 8 elements
        let mm = Op::Matmul(crate::backend::ops::Matmul {
            out: t(BufId::Acts, 48, &[6, 8], DType::Bf16),
            inp: t(BufId::Acts, 24, &[6, 4], DType::Bf16),
            w: t(BufId::Params, 32, &[8, 4], DType::Bf16),
            b: Some(t(BufId::Params, 8, &[8], DType::Bf16)),
            role: Role::Qkv,
        });
        assert_eq!(op_bytes(&mm), (48 + 24 + 32 + 8) * 2);
        // the f32 statistics count at 4 bytes, the bf16 rows at 2; no bias
        let ln = Op::LayerNorm(crate::backend::ops::LayerNorm {
            out: t(BufId::Acts, 24, &[6, 4], DType::Bf16),
            mean: t(BufId::Stats, 6, &[6], DType::F32),
            rstd: t(BufId::Stats, 6, &[6], DType::F32),
            inp: t(BufId::Acts, 24, &[6, 4], DType::Bf16),
            w: t(BufId::Params, 4, &[4], DType::Bf16),
            b: None,
        });
        assert_eq!(op_bytes(&ln), (24 + 24 + 4) * 2 + (6 + 6) * 4);
        // dropout reads and writes its tensor in place, once on; off, it does nothing
        let x = t(BufId::Acts, 24, &[6, 4], DType::F32);
        assert_eq!(op_bytes(&Op::Dropout { x, drop: crate::backend::Dropout { p: 0.1, key: 7 } }), 24 * 4);
        assert_eq!(op_bytes(&Op::Dropout { x, drop: crate::backend::Dropout::NONE }), 0);
    }

    #[test]
    fn profile_rates_are_tflops_for_matmul_work_and_gbs_for_the_rest() {
        let row = |name: &str, ms: f64, bytes: f64| ProfileRow { name: name.into(), ms, bytes };
        let rows = [row("matmul qkv", 3.0, 1e6), row("layernorm", 1.0, 2e9)];
        let flops = [("matmul qkv", 1.5e12)];
        let r = profile_rates(&rows, &flops, Some(1e15), Some(4e12));
        // 1.5e12 FLOPs in 3 ms: 500 TFLOP/s, half of a 1000 TFLOP/s peak; 3 of 4 ms
        let near = |x: Option<f64>, y: f64| x.is_some_and(|x| (x - y).abs() < 1e-9 * y);
        assert!(near(r[0].tflops, 500.0) && r[0].gbs.is_none());
        assert!(near(r[0].pct_of_peak, 50.0) && near(Some(r[0].share), 75.0));
        // 2e9 bytes in 1 ms: 2000 GB/s, half of 4 TB/s
        assert!(near(r[1].gbs, 2000.0) && r[1].tflops.is_none());
        assert!(near(r[1].pct_of_peak, 50.0) && near(Some(r[1].share), 25.0));
        // an unknown card: rates without percentages
        let r = profile_rates(&rows, &flops, None, None);
        assert!(r.iter().all(|x| x.pct_of_peak.is_none() && x.tflops.or(x.gbs).is_some()));
        // an op that moves nothing has no rate
        let r = profile_rates(&[row("dropout", 0.001, 0.0)], &flops, Some(1e15), Some(4e12));
        assert!(r[0].tflops.is_none() && r[0].gbs.is_none() && r[0].pct_of_peak.is_none());
    }

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
