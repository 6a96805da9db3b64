//! Every backward kernel against central finite differences of an f64 reference of its forward,
//! on tiny shapes. For a kernel y = f(x), the test draws a random cotangent r and compares the
//! kernel's dx (with dout = r) to d/dx <r, f64_f(x)> estimated with step 1e-6.
//! Tolerance: max |ours - fd| <= 2e-3 * max(1, max |fd|) (f32 kernels, f64 differences).

mod common;

use gptrain::backend::cpu::{attention, classifier, encoder, layernorm, matmul, pointwise};
use gptrain::backend::Dropout;
use gptrain::rng;

fn randn(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let k = rng::key(seed, 99, &[]);
    (0..n).map(|i| scale * rng::normal(k, i as u64)).collect()
}

fn to64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// d<r, f(x)>/dx by central differences in f64.
fn fd(x: &[f32], r: &[f32], f: impl Fn(&[f64]) -> Vec<f64>) -> Vec<f64> {
    let h = 1e-6;
    let mut x64 = to64(x);
    let r64 = to64(r);
    (0..x.len())
        .map(|i| {
            let orig = x64[i];
            x64[i] = orig + h;
            let up: f64 = f(&x64).iter().zip(&r64).map(|(a, b)| a * b).sum();
            x64[i] = orig - h;
            let dn: f64 = f(&x64).iter().zip(&r64).map(|(a, b)| a * b).sum();
            x64[i] = orig;
            (up - dn) / (2.0 * h)
        })
        .collect()
}

fn assert_close(what: &str, ours: &[f32], want: &[f64]) {
    assert_eq!(ours.len(), want.len(), "{what}");
    let scale = want.iter().fold(1.0f64, |m, x| m.max(x.abs()));
    for (i, (a, b)) in ours.iter().zip(want).enumerate() {
        assert!((*a as f64 - b).abs() <= 2e-3 * scale, "{what}[{i}]: kernel {a} vs finite difference {b}");
    }
}

// ---- f64 references of the forward kernels -------------------------------------------------

fn layernorm64(x: &[f64], w: &[f64], b: &[f64]) -> Vec<f64> {
    let c = w.len();
    x.chunks(c)
        .flat_map(|row| {
            let m = row.iter().sum::<f64>() / c as f64;
            let v = row.iter().map(|x| (x - m).powi(2)).sum::<f64>() / c as f64;
            let s = 1.0 / (v + 1e-5).sqrt();
            row.iter().enumerate().map(move |(i, x)| (x - m) * s * w[i] + b[i]).collect::<Vec<_>>()
        })
        .collect()
}

fn matmul64(x: &[f64], w: &[f64], b: &[f64], ic: usize) -> Vec<f64> {
    let oc = w.len() / ic;
    x.chunks(ic).flat_map(|row| (0..oc).map(move |o| b[o] + (0..ic).map(|i| row[i] * w[o * ic + i]).sum::<f64>())).collect()
}

fn gelu64(x: &[f64]) -> Vec<f64> {
    x.iter().map(|&x| 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())).collect()
}

fn attention64(qkv: &[f64], b: usize, t: usize, c: usize, nh: usize, drop: Dropout) -> Vec<f64> {
    let hs = c / nh;
    let mut out = vec![0.0; b * t * c];
    for bi in 0..b {
        for h in 0..nh {
            for t1 in 0..t {
                let q = |i: usize| qkv[(bi * t + t1) * 3 * c + h * hs + i];
                let k = |t2: usize, i: usize| qkv[(bi * t + t2) * 3 * c + c + h * hs + i];
                let v = |t2: usize, i: usize| qkv[(bi * t + t2) * 3 * c + 2 * c + h * hs + i];
                let s: Vec<f64> = (0..=t1).map(|t2| (0..hs).map(|i| q(i) * k(t2, i)).sum::<f64>() / (hs as f64).sqrt()).collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                for (t2, sv) in s.iter().enumerate() {
                    let a = (sv - m).exp() / z * drop_scale(drop, ((bi * nh + h) * t + t1) * t + t2);
                    for i in 0..hs {
                        out[(bi * t + t1) * c + h * hs + i] += a * v(t2, i);
                    }
                }
            }
        }
    }
    out
}

fn drop_scale(d: Dropout, i: usize) -> f64 {
    if d.active() {
        d.scale(i) as f64
    } else {
        1.0
    }
}

// ---- the checks ----------------------------------------------------------------------------

#[test]
fn layernorm_backward_matches_finite_differences() {
    let (n, c) = (3, 8);
    let x = randn(n * c, 1, 1.0);
    let w = randn(c, 2, 1.0);
    let b = randn(c, 3, 1.0);
    let r = randn(n * c, 4, 1.0);
    let (mut out, mut mean, mut rstd) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
    layernorm::layernorm_forward(&mut out, &mut mean, &mut rstd, &x, &w, Some(&b));
    let (mut dx, mut dw, mut db) = (vec![0.0; n * c], vec![0.0; c], vec![0.0; c]);
    layernorm::layernorm_backward(&mut dx, &mut dw, Some(&mut db), &r, &x, &mean, &rstd, &w);
    let (w64, b64, x64) = (to64(&w), to64(&b), to64(&x));
    assert_close("dinp", &dx, &fd(&x, &r, |x| layernorm64(x, &w64, &b64)));
    assert_close("dweight", &dw, &fd(&w, &r, |w| layernorm64(&x64, w, &b64)));
    assert_close("dbias", &db, &fd(&b, &r, |b| layernorm64(&x64, &w64, b)));
}

#[test]
fn matmul_backward_matches_finite_differences_and_naive() {
    let (n, ic, oc) = (5, 6, 7);
    let x = randn(n * ic, 1, 1.0);
    let w = randn(oc * ic, 2, 1.0);
    let b = randn(oc, 3, 1.0);
    let r = randn(n * oc, 4, 1.0);
    let (mut dx, mut dw, mut db) = (vec![0.0; n * ic], vec![0.0; oc * ic], vec![0.0; oc]);
    matmul::matmul_backward(&mut dx, &mut dw, Some(&mut db), &r, &x, &w, ic);
    let (x64, w64, b64) = (to64(&x), to64(&w), to64(&b));
    assert_close("dinp", &dx, &fd(&x, &r, |x| matmul64(x, &w64, &b64, ic)));
    assert_close("dweight", &dw, &fd(&w, &r, |w| matmul64(&x64, w, &b64, ic)));
    assert_close("dbias", &db, &fd(&b, &r, |b| matmul64(&x64, &w64, b, ic)));
    // the fast kernels against the naive loop nests
    let (mut out, mut out_naive) = (vec![0.0; n * oc], vec![0.0; n * oc]);
    matmul::matmul_forward(&mut out, &x, &w, Some(&b), ic);
    matmul::matmul_forward_naive(&mut out_naive, &x, &w, Some(&b), ic);
    assert_close("forward vs naive", &out, &to64(&out_naive));
    let (mut dx2, mut dw2, mut db2) = (vec![0.0; n * ic], vec![0.0; oc * ic], vec![0.0; oc]);
    matmul::matmul_backward_naive(&mut dx2, &mut dw2, Some(&mut db2), &r, &x, &w, ic);
    assert_close("dinp vs naive", &dx, &to64(&dx2));
    assert_close("dweight vs naive", &dw, &to64(&dw2));
}

#[test]
fn gelu_backward_matches_finite_differences() {
    let x = randn(40, 1, 2.0);
    let r = randn(40, 2, 1.0);
    let mut dx = vec![0.0; 40];
    pointwise::gelu_backward(&mut dx, &r, &x);
    assert_close("dinp", &dx, &fd(&x, &r, gelu64));
}

fn check_attention(drop: Dropout) {
    let (b, t, c, nh) = (2, 5, 8, 2);
    let qkv = randn(b * t * 3 * c, 1, 1.0);
    let r = randn(b * t * c, 2, 1.0);
    let (mut out, mut stats) = (vec![0.0; b * t * c], vec![0.0; b * nh * t * 2]);
    attention::attention_forward(&mut out, &mut stats, &qkv, b, t, c, nh, drop);
    assert_close("forward", &out, &attention64(&to64(&qkv), b, t, c, nh, drop));
    let mut dqkv = vec![0.0; qkv.len()];
    attention::attention_backward(&mut dqkv, &r, &qkv, &stats, b, t, c, nh, drop);
    assert_close("dqkv", &dqkv, &fd(&qkv, &r, |q| attention64(q, b, t, c, nh, drop)));
}

#[test]
fn attention_backward_matches_finite_differences() {
    check_attention(Dropout::NONE);
}

#[test]
fn attention_with_dropout_backward_matches_finite_differences() {
    check_attention(Dropout { p: 0.3, key: 12345 });
}

#[test]
fn crossentropy_gradient_matches_finite_differences() {
    let (n, v, vp) = (4, 6, 8);
    let logits = randn(n * vp, 1, 2.0);
    let targets: Vec<u32> = vec![0, 5, 2, 3];
    let mut losses = vec![0.0; n];
    let mut dlogits = logits.clone(); // overwritten in place with the gradient
    classifier::fused_classifier(&mut dlogits, &mut losses, &targets, v, vp, Some(1.0));
    let ones = vec![1.0f32; n];
    let f = |l: &[f64]| -> Vec<f64> {
        l.chunks(vp)
            .zip(&targets)
            .map(|(row, &tg)| {
                let m = row[..v].iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = row[..v].iter().map(|x| (x - m).exp()).sum();
                z.ln() + m - row[tg as usize]
            })
            .collect()
    };
    assert_close("losses", &losses, &f(&to64(&logits)));
    assert_close("dlogits", &dlogits, &fd(&logits, &ones, f));
    assert!(dlogits.chunks(vp).all(|r| r[v..].iter().all(|&x| x == 0.0)), "padded columns get no gradient");
}

#[test]
fn encoder_backward_matches_finite_differences() {
    let (b, t, c, vocab) = (2, 3, 4, 5);
    let tokens: Vec<u32> = vec![1, 4, 1, 0, 1, 3];
    let wte = randn(vocab * c, 1, 1.0);
    let wpe = randn(t * c, 2, 1.0);
    let r = randn(b * t * c, 3, 1.0);
    let (mut dwte, mut dwpe) = (vec![0.0; wte.len()], vec![0.0; wpe.len()]);
    encoder::encoder_backward(&mut dwte, &mut dwpe, &r, &tokens, t, c);
    let tok = &tokens;
    let enc = |wte: &[f64], wpe: &[f64]| -> Vec<f64> {
        (0..b * t).flat_map(|row| (0..c).map(move |i| wte[tok[row] as usize * c + i] + wpe[(row % t) * c + i])).collect()
    };
    let (wte64, wpe64) = (to64(&wte), to64(&wpe));
    assert_close("dwte", &dwte, &fd(&wte, &r, |w| enc(w, &wpe64)));
    assert_close("dwpe", &dwpe, &fd(&wpe, &r, |w| enc(&wte64, w)));
    let mut out = vec![0.0; b * t * c];
    encoder::encoder_forward(&mut out, &wte, &wpe, &tokens, t, c);
    assert_close("forward", &out, &enc(&wte64, &wpe64));
}

#[test]
fn dropout_is_its_own_backward_and_drops_about_p() {
    let d = Dropout { p: 0.25, key: 7 };
    let mut x = vec![1.0f32; 100_000];
    pointwise::dropout(&mut x, d);
    let dropped = x.iter().filter(|&&v| v == 0.0).count() as f64 / x.len() as f64;
    assert!((dropped - 0.25).abs() < 0.01, "{dropped}");
    assert!(x.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
    // the same key gives the same mask (backward regenerates it)
    let mut y = vec![1.0f32; 100_000];
    pointwise::dropout(&mut y, d);
    assert_eq!(x, y);
}

/// The whole model's backward (every op, dropout included) against a central difference of its
/// forward along a random direction, on every backend.
fn whole_model_gradient_matches_a_directional_finite_difference<B: gptrain::backend::Backend>(backend: B, _tol: common::Tol) {
    use gptrain::model::{DropoutCtx, Gpt, ModelConfig};
    let cfg = ModelConfig { n_layer: 2, n_head: 2, n_embd: 16, block_size: 8, vocab_size: 13, padded_vocab_size: 64, bias: true };
    let mut g = Gpt::init(backend, cfg, 5).unwrap();
    let (b, t) = (2, 8);
    let x: Vec<u32> = (0..16).map(|i| (i * 7 % 13) as u32).collect();
    let y: Vec<u32> = (0..16).map(|i| (i * 5 % 13) as u32).collect();
    let ctx = Some(DropoutCtx { p: 0.1, seed: 3, iter: 0, micro: 0 });
    g.zero_grad().unwrap();
    g.set_batch(&x, &y, b, t).unwrap();
    g.forward(ctx, Some(1.0)).unwrap();
    g.backward(ctx).unwrap();
    let grad = g.grads_host().unwrap();
    let p0 = g.params_host().unwrap();
    let dir = randn(p0.len(), 9, 0.01);
    let analytic: f64 = grad.iter().zip(&dir).map(|(a, b)| (*a as f64) * (*b as f64)).sum();
    let h = 1e-2f32;
    let mut loss_at = |s: f32| {
        let p: Vec<f32> = p0.iter().zip(&dir).map(|(p, d)| p + s * d).collect();
        g.set_params(&p).unwrap();
        g.reset_scalars().unwrap();
        g.forward(ctx, None).unwrap();
        g.read_scalars().unwrap()[0]
    };
    let numeric = (loss_at(h) - loss_at(-h)) / (2.0 * h as f64);
    assert!(
        (analytic - numeric).abs() <= 2e-3 * analytic.abs().max(1e-3),
        "directional derivative: backward {analytic} vs finite difference {numeric}"
    );
}

#[test]
fn fast_attention_matches_the_naive_loops() {
    for drop in [Dropout::NONE, Dropout { p: 0.2, key: 99 }] {
        let (b, t, c, nh) = (3, 7, 12, 3);
        let qkv = randn(b * t * 3 * c, 11, 1.0);
        let dout = randn(b * t * c, 12, 1.0);
        let (mut o1, mut s1, mut o2, mut s2) =
            (vec![0.0; b * t * c], vec![0.0; b * nh * t * 2], vec![0.0; b * t * c], vec![0.0; b * nh * t * 2]);
        attention::attention_forward(&mut o1, &mut s1, &qkv, b, t, c, nh, drop);
        attention::attention_forward_naive(&mut o2, &mut s2, &qkv, b, t, c, nh, drop);
        assert_close("out", &o1, &to64(&o2));
        assert_close("stats (row max, 1/sum)", &s1, &to64(&s2));
        // gradients start dirty: the kernels must overwrite, not accumulate
        let (mut d1, mut d2) = (vec![0.5; qkv.len()], vec![0.5; qkv.len()]);
        attention::attention_backward(&mut d1, &dout, &qkv, &s1, b, t, c, nh, drop);
        attention::attention_backward_naive(&mut d2, &dout, &qkv, &s2, b, t, c, nh, drop);
        assert_close("dqkv", &d1, &to64(&d2));
    }
}

#[test]
fn fast_attention_matches_the_naive_loops_across_query_blocks() {
    // T = 150 spans three 64-row query blocks, the last one partial
    let (b, t, c, nh) = (1, 150, 8, 2);
    let qkv = randn(b * t * 3 * c, 21, 1.0);
    let dout = randn(b * t * c, 22, 1.0);
    let (mut o1, mut s1, mut o2, mut s2) =
        (vec![0.0; b * t * c], vec![0.0; b * nh * t * 2], vec![0.0; b * t * c], vec![0.0; b * nh * t * 2]);
    attention::attention_forward(&mut o1, &mut s1, &qkv, b, t, c, nh, Dropout::NONE);
    attention::attention_forward_naive(&mut o2, &mut s2, &qkv, b, t, c, nh, Dropout::NONE);
    assert_close("out", &o1, &to64(&o2));
    assert_close("stats (row max, 1/sum)", &s1, &to64(&s2));
    // gradients start dirty: the kernels must overwrite, not accumulate
    let (mut d1, mut d2) = (vec![0.5; qkv.len()], vec![0.5; qkv.len()]);
    attention::attention_backward(&mut d1, &dout, &qkv, &s1, b, t, c, nh, Dropout::NONE);
    attention::attention_backward_naive(&mut d2, &dout, &qkv, &s2, b, t, c, nh, Dropout::NONE);
    assert_close("dqkv", &d1, &to64(&d2));
}

common::backend_tests!(whole_model_gradient_matches_a_directional_finite_difference);
