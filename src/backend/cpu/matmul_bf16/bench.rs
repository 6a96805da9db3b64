//! A micro-benchmark of the bf16 products against the f32 `gemm_raw`, on the linear layers of
//! the `small` and `gpt2` configs. It only prints (timing is no test), and only when asked:
//!
//! `GPTRAIN_BF16_BENCH=2 cargo test --release --lib bf16_gemm_bench -- --nocapture`
//!
//! (the value is the thread count). Each cell is the median and the best GFLOP/s (2 m n k per
//! product) of 11 calls after a warm-up call, the implementations taking turns call by call;
//! f32 is the faster of `gemm`'s own threading and [`Par::Split`] on f32 copies of the same
//! operands (f32 dst for every layout). `bf16_kernel_bench` times the kernels alone.

use super::tests::fill;
use super::*;
use std::time::Instant;

/// The model's linear layers: (config, layer, N = B * T, IC, OC).
const LAYERS: [(&str, &str, usize, usize, usize); 10] = [
    ("small", "qkv", 2048, 384, 1152),
    ("small", "attproj", 2048, 384, 384),
    ("small", "fc", 2048, 384, 1536),
    ("small", "fcproj", 2048, 1536, 384),
    ("small", "lm_head", 2048, 384, 128),
    ("gpt2", "qkv", 256, 768, 2304),
    ("gpt2", "attproj", 256, 768, 768),
    ("gpt2", "fc", 256, 768, 3072),
    ("gpt2", "fcproj", 256, 3072, 768),
    ("gpt2", "lm_head", 256, 768, 50304),
];

/// This thread's CPU time in seconds.
fn cpu_secs() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Median GFLOP/s of `f` by this thread's CPU time.
fn cpu_gflops(m: usize, n: usize, k: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut secs: Vec<f64> = (0..11)
        .map(|_| {
            let t = cpu_secs();
            f();
            cpu_secs() - t
        })
        .collect();
    secs.sort_by(f64::total_cmp);
    2.0 * (m * n * k) as f64 / secs[secs.len() / 2] / 1e9
}

/// GFLOP/s of each of `runs`, (m, n, k) products: (median, best) over 11 rounds after a
/// warm-up round, each round timing every run once in turn, so that all see the same machine
/// (other processes come and go).
fn gflops(m: usize, n: usize, k: usize, runs: &mut [&mut (dyn FnMut() + Send)]) -> Vec<(f64, f64)> {
    runs.iter_mut().for_each(|f| f());
    let mut secs = vec![Vec::new(); runs.len()];
    for _ in 0..11 {
        for (f, secs) in runs.iter_mut().zip(&mut secs) {
            let t = Instant::now();
            f();
            secs.push(t.elapsed().as_secs_f64());
        }
    }
    let rate = |s: f64| 2.0 * (m * n * k) as f64 / s / 1e9;
    secs.into_iter()
        .map(|mut s| {
            s.sort_by(f64::total_cmp);
            (rate(s[s.len() / 2]), rate(s[0]))
        })
        .collect()
}

#[test]
fn bf16_gemm_bench() {
    let Some(threads) = std::env::var("GPTRAIN_BF16_BENCH").ok().and_then(|v| v.parse::<usize>().ok()) else {
        println!("bf16_gemm_bench: not run; set GPTRAIN_BF16_BENCH=<threads> to print the benchmark");
        return;
    };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    let tiers: Vec<Bf16Isa> = [Bf16Isa::Portable, Bf16Isa::Avx512Bf16, Bf16Isa::Amx]
        .into_iter()
        .filter(|t| t.can_run().map_err(|why| println!("{t:?} not measured: {why}")).is_ok())
        .collect();
    println!("GFLOP/s on {threads} threads, median/best of 11 rounds; this process picks: {}", Bf16Isa::describe());
    println!(
        "{:<6} {:<8} {:<5} {:>14} {:>11} {:>11} {:>11} {:>11} {:>7}",
        "config", "layer", "", "m x n x k", "f32", "portable", "avx512bf16", "amx", "amx/f32"
    );
    for (config, layer, n_rows, ic, oc) in LAYERS {
        let (inp, w, dout) = (fill(n_rows * ic, 1), fill(oc * ic, 2), fill(n_rows * oc, 3));
        let f32s = |v: &[bf16]| v.iter().map(|x| x.to_f32()).collect::<Vec<f32>>();
        let (inp32, w32, dout32) = (f32s(&inp), f32s(&w), f32s(&dout));
        let (inp, w, dout) = (SrcBf16::rows(inp.as_ptr(), ic), SrcBf16::rows(w.as_ptr(), ic), SrcBf16::rows(dout.as_ptr(), oc));
        let (inp32, w32, dout32) = (Src::rows(inp32.as_ptr(), ic), Src::rows(w32.as_ptr(), ic), Src::rows(dout32.as_ptr(), oc));
        // (layout, m, n, k, lhs, rhs, f32 lhs, f32 rhs, into bf16 rather than f32 accumulated)
        let layouts = [
            ("fwd", n_rows, oc, ic, inp, w.t(), inp32, w32.t(), true),
            ("dinp", n_rows, ic, oc, dout, w, dout32, w32, true),
            ("dw", oc, ic, n_rows, dout.t(), inp, dout32.t(), inp32, false),
        ];
        for (layout, m, n, k, lhs, rhs, lhs32, rhs32, to_bf16) in layouts {
            let mut dst32 = vec![0.0f32; m * n];
            let mut dst16 = vec![bf16::ZERO; m * n];
            let dst = Dst::rows(dst32.as_mut_ptr(), n);
            let out = if to_bf16 {
                Out::Bf16 { dst: DstBf16::rows(dst16.as_mut_ptr(), n), bias: None }
            } else {
                Out::F32 { dst, accumulate: true }
            };
            // f32 with gemm's own threading and with one block per thread, then each tier
            // SAFETY (every run): each operand covers the elements its strides address; the
            // tiers can run (filtered).
            let f32_run = |par: Par| move || unsafe { gemm_raw(m, n, k, dst, !to_bf16, lhs32, rhs32, 1.0, par) };
            let tier_run = |tier: Bf16Isa| move || unsafe { gemm_bf16_on(tier, m, n, k, out, lhs, rhs, 1.0, Par::Split(threads)) };
            let (mut gemm, mut split) = (f32_run(Par::Gemm(threads)), f32_run(Par::Split(threads)));
            let mut tier_runs: Vec<_> = tiers.iter().map(|&t| tier_run(t)).collect();
            let mut runs: Vec<&mut (dyn FnMut() + Send)> = vec![&mut gemm, &mut split];
            runs.extend(tier_runs.iter_mut().map(|r| r as &mut (dyn FnMut() + Send)));
            let rates = pool.install(|| gflops(m, n, k, &mut runs));
            // f32: the faster (by median) of its two threadings
            let f32_rate = if rates[0].0 >= rates[1].0 { rates[0] } else { rates[1] };
            let mut cells = [f32_rate, (f64::NAN, f64::NAN), (f64::NAN, f64::NAN), (f64::NAN, f64::NAN)];
            for (&tier, &rate) in tiers.iter().zip(&rates[2..]) {
                cells[1 + tier as usize] = rate;
            }
            let ratio = cells[3].0 / cells[0].0;
            let [f32, portable, avx512bf16, amx] = cells.map(|(median, best)| format!("{median:.0}/{best:.0}"));
            let shape = format!("{m}x{n}x{k}");
            println!("{config:<6} {layer:<8} {layout:<5} {shape:>14} {f32:>11} {portable:>11} {avx512bf16:>11} {amx:>11} {ratio:>7.1}");
        }
    }
}

/// The kernels alone, one thread, on the same packed operands over and over (in L1 for k 128,
/// in L2 beyond), timed by this thread's CPU time (so other processes on the machine do not
/// count): what the blocking around them could reach at best.
#[test]
fn bf16_kernel_bench() {
    if std::env::var_os("GPTRAIN_BF16_BENCH").is_none() {
        println!("bf16_kernel_bench: not run; set GPTRAIN_BF16_BENCH=<threads> to print the benchmark");
        return;
    }
    for k in [128, 384, 2048] {
        let steps = k / KSTEP;
        let (mut a, mut b) = (Spare::take(Use::Lhs, steps * KSTEP * BLOCK), Spare::take(Use::Rhs, steps * KSTEP * BLOCK));
        let (a, b) = (a.as_mut(), b.as_mut());
        // values in [-1, 1] (the AMX unit runs faster on zeros, or on all ones)
        let len = a.len();
        a.iter_mut().zip(fill(len, 1)).for_each(|(a, v)| *a = v.to_bits());
        b.iter_mut().zip(fill(len, 2)).for_each(|(b, v)| *b = v.to_bits());
        let mut c = F32Block([0.0; BLOCK * BLOCK]);
        let c = &mut c.0;
        let calls = 2000;
        if Bf16Isa::Amx.can_run().is_ok() {
            // SAFETY: the tier can run.
            let tiles = unsafe { amx::Tiles::load() };
            let g = cpu_gflops(calls * BLOCK, BLOCK, k, || (0..calls).for_each(|_| tiles.block(steps, a, b, c, false)));
            println!("AMX kernel, k {k}: {g:.1} GFLOP/s on one thread");
        }
        if Bf16Isa::Avx512Bf16.can_run().is_ok() {
            // SAFETY: the tier can run.
            let g = cpu_gflops(calls * BLOCK, BLOCK, k, || (0..calls).for_each(|_| unsafe { avx512::block(steps, a, b, c, false) }));
            println!("AVX-512 BF16 kernel, k {k}: {g:.1} GFLOP/s on one thread");
        }
    }
}
