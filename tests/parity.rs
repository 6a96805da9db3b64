//! The model against the PyTorch reference (tools/reference.py, fixtures written by
//! tools/make_fixtures.py): logits, loss, every gradient, and 10 AdamW steps with gradient
//! accumulation and clipping.
//!
//! Tolerances per backend precision (`common::Tol`; for f32: loss 1e-5 relative; logits and
//! each gradient tensor 1e-4 relative in L2 norm (||ours - torch|| / ||torch||); after 10 steps,
//! each parameter tensor 1e-4 relative in norm and each step's loss 1e-5 relative). Every check
//! runs on every backend (`backend_tests!`).
//!
//! Mixed precision: bf16 and fp16 runs against PyTorch's CPU autocast of the same case
//! (`tiny_bf16`, `tiny_fp16`: `python tools/make_fixtures.py --autocast`), at `common::BF16` /
//! `common::FP16`, and, against the fp32 truth, no less accurate than autocast itself.

mod common;

use common::{backend_tests, Tol};
use gptrain::backend::cpu::Cpu;
use gptrain::backend::{Backend, Precision};
use gptrain::model::{Gpt, ModelConfig};
use gptrain::optim::{train_step, OptimConfig};
use gptrain::tensorfile::{self, TensorFile};
use std::path::Path;

fn load(case: &str) -> (TensorFile, ModelConfig, usize, usize, serde_json::Value) {
    let f = tensorfile::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(format!("{case}.safetensors"))).unwrap();
    let c: serde_json::Value = serde_json::from_str(&f.metadata["config"]).unwrap();
    let u = |k: &str| c[k].as_u64().unwrap() as usize;
    let cfg = ModelConfig {
        n_layer: u("n_layer"),
        n_head: u("n_head"),
        n_embd: u("n_embd"),
        block_size: u("block_size"),
        vocab_size: u("vocab_size"),
        padded_vocab_size: u("padded_vocab_size"),
        bias: c["bias"].as_bool().unwrap(),
    };
    let b = f.metadata["B"].parse().unwrap();
    let t = f.metadata["T"].parse().unwrap();
    let train: serde_json::Value = serde_json::from_str(&f.metadata["train"]).unwrap();
    (f, cfg, b, t, train)
}

fn rel_err(ours: &[f32], want: &[f32]) -> f64 {
    assert_eq!(ours.len(), want.len());
    let diff: f64 = ours.iter().zip(want).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt();
    let norm: f64 = want.iter().map(|&b| (b as f64).powi(2)).sum::<f64>().sqrt();
    diff / norm.max(1e-30)
}

fn model_from<B: Backend>(f: &TensorFile, cfg: &ModelConfig, prefix: &str, backend: B, p: Precision) -> Gpt<B> {
    let mut m = Gpt::zeros_in(backend, cfg.clone(), p).unwrap();
    let mut host = vec![0.0; m.num_params()];
    for t in &m.layout.tensors {
        let src = f.get(&format!("{prefix}.{}", t.name)).unwrap();
        assert_eq!(src.shape, t.shape, "{}", t.name);
        host[t.span.off..t.span.end()].copy_from_slice(&src.data);
    }
    m.set_params(&host).unwrap();
    m
}

fn tokens(f: &TensorFile, name: &str) -> Vec<u32> {
    f.get(name).unwrap().data.iter().map(|&x| x as u32).collect()
}

/// The logits, loss and gradients (unscaled) of the case's batch, computing in `p`.
fn forward_backward<B: Backend>(
    f: &TensorFile,
    cfg: &ModelConfig,
    b: usize,
    t: usize,
    backend: B,
    p: Precision,
) -> (Vec<f32>, f32, Gpt<B>) {
    let mut m = model_from(f, cfg, "param", backend, p);
    let (x, y) = (tokens(f, "x"), tokens(f, "y"));
    m.zero_grad().unwrap();
    let loss = m.loss(&x, &y, b, t).unwrap();
    let logits = m.logits().unwrap();
    m.forward(None, Some(1.0)).unwrap();
    m.backward(None).unwrap();
    (logits, loss, m)
}

fn check_forward_backward<B: Backend>(case: &str, backend: B, tol: Tol) {
    check_forward_backward_in(case, backend, tol, Precision::F32)
}

fn check_forward_backward_in<B: Backend>(case: &str, backend: B, tol: Tol, p: Precision) {
    let (f, cfg, b, t, _) = load(case);
    let mut m = model_from(&f, &cfg, "param", backend, p);
    let (x, y) = (tokens(&f, "x"), tokens(&f, "y"));
    m.zero_grad().unwrap();
    // the logits from a forward without gradient (one with it overwrites them with dlogits)
    let loss = m.loss(&x, &y, b, t).unwrap();
    let e = rel_err(&m.logits().unwrap(), &f.get("logits").unwrap().data);
    assert!(e <= tol.tensor, "{case}: logits rel err {e:e}");
    let want = f.get("loss").unwrap().data[0];
    assert!(((loss - want) / want).abs() as f64 <= tol.loss, "{case}: loss {loss} vs torch {want}");
    m.forward(None, Some(1.0)).unwrap();
    m.backward(None).unwrap();
    // fp16 gradients carry the loss scale
    let grads: Vec<f32> = m.grads_host().unwrap().iter().map(|g| g / m.scaler.scale).collect();
    for p in &m.layout.tensors {
        let e = rel_err(&grads[p.span.off..p.span.end()], &f.get(&format!("grad.{}", p.name)).unwrap().data);
        assert!(e <= tol.tensor, "{case}: gradient of {} rel err {e:e}", p.name);
    }
}

fn check_training<B: Backend>(case: &str, backend: B, tol: Tol) {
    check_training_in(case, backend, tol, Precision::F32)
}

fn check_training_in<B: Backend>(case: &str, backend: B, tol: Tol, p: Precision) {
    let (f, cfg, b, t, tr) = load(case);
    let mut m = model_from(&f, &cfg, "param", backend, p);
    let g = |k: &str| tr[k].as_f64().unwrap();
    let opt = OptimConfig {
        learning_rate: g("lr") as f32,
        min_lr: g("min_lr") as f32,
        warmup_iters: g("warmup_iters") as u64,
        lr_decay_iters: g("lr_decay_iters") as u64,
        decay_lr: true,
        weight_decay: g("weight_decay") as f32,
        beta1: g("beta1") as f32,
        beta2: g("beta2") as f32,
        grad_clip: g("grad_clip") as f32,
    };
    let (steps, accum) = (g("steps") as usize, g("accum") as usize);
    let (xs, ys) = (tokens(&f, "train_x"), tokens(&f, "train_y"));
    let (want_lr, want_loss, want_norm) =
        (&f.get("train_lr").unwrap().data, &f.get("train_loss").unwrap().data, &f.get("train_norm").unwrap().data);
    let n = b * t;
    for step in 0..steps {
        let batches: Vec<(Vec<u32>, Vec<u32>)> = (0..accum)
            .map(|a| {
                let o = (step * accum + a) * n;
                (xs[o..o + n].to_vec(), ys[o..o + n].to_vec())
            })
            .collect();
        let s = train_step(&mut m, &batches, b, t, step as u64, &opt, None).unwrap();
        assert!(((s.lr - want_lr[step]) / want_lr[step]).abs() <= 1e-6, "{case} step {step}: lr {} vs {}", s.lr, want_lr[step]);
        assert!(
            ((s.loss - want_loss[step]) / want_loss[step]).abs() as f64 <= tol.loss,
            "{case} step {step}: loss {} vs torch {}",
            s.loss,
            want_loss[step]
        );
        assert!(
            ((s.grad_norm - want_norm[step]) / want_norm[step]).abs() as f64 <= tol.tensor,
            "{case} step {step}: grad norm {} vs torch {}",
            s.grad_norm,
            want_norm[step]
        );
        if let Ok(scales) = f.get("train_scale") {
            // GradScaler's scale after the step, and whether it skipped
            let skipped = f.get("train_skipped").unwrap().data[step] > 0.0;
            assert_eq!((m.scaler.scale, s.overflow), (scales.data[step], skipped), "{case} step {step}: loss scale");
        }
    }
    let params = m.params_host().unwrap();
    for pt in &m.layout.tensors {
        let (mut ours, mut want) =
            (params[pt.span.off..pt.span.end()].to_vec(), f.get(&format!("final.{}", pt.name)).unwrap().data.clone());
        if pt.name == "qkvb" {
            // The key bias has an exactly-zero gradient (it shifts every score of a softmax row
            // by the same amount), so both sides compute rounding noise of ~1e-12 for it, which
            // Adam's normalisation turns into different ~1e-6 values. Check that part is tiny on
            // both sides, and compare the query and value biases at the usual tolerance. In
            // bf16/fp16 that noise is the format's rounding, so each Adam step may move it by
            // up to the learning rate: the bound is then their sum.
            let c = cfg.n_embd;
            let bound = if p == Precision::F32 { 1e-4 } else { steps as f32 * opt.learning_rate };
            let key_bias = |v: &[f32]| v.chunks(3 * c).flat_map(|l| l[c..2 * c].to_vec()).collect::<Vec<f32>>();
            let qv = |v: &[f32]| v.chunks(3 * c).flat_map(|l| [&l[..c], &l[2 * c..]].concat()).collect::<Vec<f32>>();
            for kb in [key_bias(&ours), key_bias(&want)] {
                assert!(kb.iter().all(|x| x.abs() < bound), "{case}: key bias moved: {kb:?}");
            }
            if p != Precision::F32 {
                // The query bias's gradient is small too (a bias shared by every query moves
                // the scores of a row nearly uniformly), so in bf16/fp16 its rounding noise shows
                // after 10 Adam steps: measured against torch, 3% off in bf16 on every backend
                // (CPU and emulated CUDA alike), 0.3-1.7% in fp16, while the value bias agrees to
                // 0.13%. It is held to the bf16 bound, the value bias to the usual one.
                let q = |v: &[f32]| v.chunks(3 * c).flat_map(|l| l[..c].to_vec()).collect::<Vec<f32>>();
                let e = rel_err(&q(&ours), &q(&want));
                assert!(e <= common::BF16.trained, "{case}: query bias after {steps} steps rel err {e:e}");
                let v = |v: &[f32]| v.chunks(3 * c).flat_map(|l| l[2 * c..].to_vec()).collect::<Vec<f32>>();
                (ours, want) = (v(&ours), v(&want));
            } else {
                (ours, want) = (qv(&ours), qv(&want));
            }
        }
        let e = rel_err(&ours, &want);
        assert!(e <= tol.trained, "{case}: {} after {steps} steps rel err {e:e}", pt.name);
    }
}

fn tiny_forward_backward_matches_torch<B: Backend>(backend: B, tol: Tol) {
    check_forward_backward("tiny", backend, tol);
}

fn padded_vocab_forward_backward_matches_torch<B: Backend>(backend: B, tol: Tol) {
    check_forward_backward("padded", backend, tol);
}

fn tiny_ten_adamw_steps_match_torch<B: Backend>(backend: B, tol: Tol) {
    check_training("tiny", backend, tol);
}

fn padded_vocab_ten_adamw_steps_match_torch<B: Backend>(backend: B, tol: Tol) {
    check_training("padded", backend, tol);
}

/// Sampling's one-position forward against the KV cache gives the full forward's logits.
fn sampling_with_a_kv_cache_gives_the_full_forwards_logits<B: Backend + Clone>(backend: B, tol: Tol) {
    let cfg = ModelConfig { n_layer: 2, n_head: 2, n_embd: 16, block_size: 8, vocab_size: 11, padded_vocab_size: 64, bias: true };
    let mut g = Gpt::init(backend.clone(), cfg.clone(), 3).unwrap();
    let toks: Vec<u32> = vec![1, 5, 2, 9, 0, 3, 7];
    g.loss(&toks, &toks, 1, toks.len()).unwrap();
    let full = g.logits().unwrap();
    let mut s = gptrain::sample::Sampler::new(backend, cfg, &g.params_host().unwrap()).unwrap();
    for (i, &t) in toks.iter().enumerate() {
        let l = s.push(t).unwrap();
        let want = &full[i * 64..i * 64 + 11];
        for (a, b) in l.iter().zip(want) {
            assert!((a - b).abs() < tol.logit, "position {i}: {a} vs {b}");
        }
    }
}

fn bf16_forward_backward_matches_torch_autocast<B: Backend>(backend: B, _: Tol) {
    check_forward_backward_in("tiny_bf16", backend, common::BF16, Precision::Bf16);
}

fn fp16_forward_backward_matches_torch_autocast<B: Backend>(backend: B, _: Tol) {
    check_forward_backward_in("tiny_fp16", backend, common::FP16, Precision::F16);
}

fn bf16_ten_adamw_steps_match_torch_autocast<B: Backend>(backend: B, _: Tol) {
    check_training_in("tiny_bf16", backend, common::BF16, Precision::Bf16);
}

fn fp16_ten_adamw_steps_with_loss_scaling_match_torch_autocast<B: Backend>(backend: B, _: Tol) {
    check_training_in("tiny_fp16", backend, common::FP16, Precision::F16);
}

/// Against the fp32 truth (the `tiny` fixture), a bf16/fp16 run's logits and gradients are no
/// further off than PyTorch autocast's of the same case, with a margin of 2x (autocast rounds
/// other intermediates than ours: attention probabilities, GELU outputs), plus a floor of a
/// tenth of the format's rounding step (2^-8 bf16, 2^-11 fp16) for tensors autocast happens
/// to get almost exact.
fn mixed_precision_is_as_accurate_as_torch_autocast<B: Backend + Clone>(backend: B, _: Tol) {
    let (truth, cfg, b, t, _) = load("tiny");
    for (case, p, floor) in [("tiny_bf16", Precision::Bf16, 0.1 / 256.0), ("tiny_fp16", Precision::F16, 0.1 / 2048.0)] {
        let (amp, ..) = load(case);
        let (logits, _, m) = forward_backward(&truth, &cfg, b, t, backend.clone(), p);
        let grads: Vec<f32> = m.grads_host().unwrap().iter().map(|g| g / m.scaler.scale).collect();
        let mut pairs =
            vec![("logits".to_string(), logits, truth.get("logits").unwrap().data.clone(), amp.get("logits").unwrap().data.clone())];
        for pt in &m.layout.tensors {
            let k = format!("grad.{}", pt.name);
            pairs.push((
                k.clone(),
                grads[pt.span.off..pt.span.end()].to_vec(),
                truth.get(&k).unwrap().data.clone(),
                amp.get(&k).unwrap().data.clone(),
            ));
        }
        for (name, ours, want, torch) in pairs {
            let (e_ours, e_torch) = (rel_err(&ours, &want), rel_err(&torch, &want));
            assert!(e_ours <= 2.0 * e_torch + floor, "{case}: {name} is {e_ours:.2e} off the fp32 truth, autocast {e_torch:.2e}");
        }
    }
}

backend_tests!(
    bf16_forward_backward_matches_torch_autocast,
    fp16_forward_backward_matches_torch_autocast,
    bf16_ten_adamw_steps_match_torch_autocast,
    fp16_ten_adamw_steps_with_loss_scaling_match_torch_autocast,
    mixed_precision_is_as_accurate_as_torch_autocast,
    tiny_forward_backward_matches_torch,
    padded_vocab_forward_backward_matches_torch,
    tiny_ten_adamw_steps_match_torch,
    padded_vocab_ten_adamw_steps_match_torch,
    sampling_with_a_kv_cache_gives_the_full_forwards_logits,
);

/// Speed did not change the math: 30 training steps with the fast kernels give the losses of
/// the reference kernels within 1e-4 (relative), on the built-in corpus.
#[test]
fn fast_and_reference_kernels_train_the_same() {
    use gptrain::data::Dataset;
    let ds = Dataset::builtin();
    let cfg = ModelConfig {
        n_layer: 2,
        n_head: 4,
        n_embd: 64,
        block_size: 96,
        vocab_size: ds.meta.vocab_size,
        padded_vocab_size: 128,
        bias: true,
    };
    let opt = OptimConfig {
        learning_rate: 1e-3,
        min_lr: 1e-4,
        warmup_iters: 5,
        lr_decay_iters: 30,
        decay_lr: true,
        weight_decay: 0.1,
        beta1: 0.9,
        beta2: 0.99,
        grad_clip: 1.0,
    };
    let losses = |cpu: Cpu| -> Vec<f32> {
        let mut m = Gpt::init(cpu, cfg.clone(), 7).unwrap();
        (0..30)
            .map(|it| {
                train_step(&mut m, &gptrain::train::train_batches(&ds, 7, it, 2, 4, 96), 4, 96, it, &opt, Some((0.1, 7))).unwrap().loss
            })
            .collect()
    };
    let (fast, reference) = (losses(Cpu::FAST), losses(Cpu::REFERENCE));
    for (i, (a, b)) in fast.iter().zip(&reference).enumerate() {
        assert!(((a - b) / b).abs() <= 1e-4, "step {i}: fast {a} vs reference {b}");
    }
}
