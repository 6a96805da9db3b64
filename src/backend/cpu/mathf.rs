//! Fast f32 transcendental functions written in plain arithmetic so loops over them vectorise
//! (the platform's `expf`/`tanhf` are scalar library calls). Accurate to a few ulp, far inside
//! the 1e-4 tolerances the PyTorch parity tests hold the model to.

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// 1.5 * 2^23: adding and subtracting it rounds an f32 of magnitude < 2^22 to the nearest integer.
const ROUND: f32 = 12_582_912.0;

/// e^x for x in about [-87, 88] (clamped outside): Cody-Waite range reduction to
/// r in [-ln2/2, ln2/2], a degree-6 Taylor polynomial, and 2^n built in the exponent bits.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    // n as an integer straight from the mantissa bits (no float-to-int conversion, so the
    // loop vectorises): shifted = 1.5 * 2^23 + n exactly
    let ni = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(ni.wrapping_add(127) << 23)
}

/// tanh(x) ~ x P(x^2) / Q(x^2) on [-9, 9] (|tanh| > 1 - 3e-8 beyond): a rational fit made by
/// `tools/fit_tanh.py`, max absolute error 2.8e-7 in f32. Cheaper than going through `exp` (one
/// division, nine fused multiply-adds). `mul_add` rounds once on every path, so the result does
/// not depend on whether the CPU has FMA (without it, it is a slower library call).
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    const P: [f32; 7] = [1.0, 0.130_999_03, 0.003_121_669, 1.133_828_3e-5, -2.096_232_5e-8, 5.626_993_7e-11, -9.368_097e-14];
    const Q: [f32; 4] = [1.0, 0.464_332_34, 0.024_565_827, 2.571_866_8e-4];
    let c = x.clamp(-9.0, 9.0);
    let t = c * c;
    let p = P[..6].iter().rev().fold(P[6], |acc, &k| acc.mul_add(t, k));
    let q = Q[..3].iter().rev().fold(Q[3], |acc, &k| acc.mul_add(t, k));
    (c * p / q).clamp(-1.0, 1.0)
}

/// Lanes of the vector reductions below: independent partial sums that the compiler keeps in
/// vector registers (a single running sum is a dependency chain it may not reorder).
pub const LANES: usize = 16;

/// The maximum of `x` (-inf when empty), by [`LANES`] running maxima: exact in any order, and it
/// vectorises where a single running `f32::max` does not. NaNs are skipped, as `f32::max` does.
#[inline(always)]
pub fn max(x: &[f32]) -> f32 {
    let full = x.len() / LANES * LANES;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    for chunk in x[..full].chunks_exact(LANES) {
        for (m, &v) in lanes.iter_mut().zip(chunk) {
            *m = if v > *m { v } else { *m };
        }
    }
    x[full..].iter().chain(&lanes).fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// sum_i f(x[i]) with [`LANES`] partial sums combined in a fixed order (deterministic).
#[inline(always)]
pub fn sum_by(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    sum_by3(x, x, x, |v, _, _| f(v))
}

/// sum_i f(a[i], b[i]) with [`LANES`] partial sums combined in a fixed order.
#[inline(always)]
pub fn sum_by2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    sum_by3(a, b, a, |x, y, _| f(x, y))
}

/// sum_i f(a[i], b[i], c[i]) with [`LANES`] partial sums combined in a fixed order.
#[inline(always)]
pub fn sum_by3(a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32, f32, f32) -> f32) -> f32 {
    let n = a.len().min(b.len()).min(c.len());
    let (a, b, c) = (&a[..n], &b[..n], &c[..n]);
    let mut acc = [0.0f32; LANES];
    let full = n / LANES * LANES;
    for ((ca, cb), cc) in a[..full].chunks_exact(LANES).zip(b[..full].chunks_exact(LANES)).zip(c[..full].chunks_exact(LANES)) {
        for i in 0..LANES {
            acc[i] += f(ca[i], cb[i], cc[i]);
        }
    }
    let mut s = 0.0f32;
    for v in acc {
        s += v;
    }
    for i in full..n {
        s += f(a[i], b[i], c[i]);
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn max_by_lanes_equals_the_running_max() {
        assert_eq!(super::max(&[]), f32::NEG_INFINITY);
        for n in [1usize, 15, 16, 17, 40, 257] {
            // values below zero, the largest at a different place for each length
            let x: Vec<f32> = (0..n).map(|i| -1.0 - ((i * 37 + n) % 101) as f32).collect();
            assert_eq!(super::max(&x), x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)), "n = {n}");
        }
        // NaNs are skipped, as f32::max skips them
        let mut x = vec![1.0f32; 33];
        x[3] = f32::NAN;
        x[20] = 2.0;
        x[32] = f32::NAN;
        assert_eq!(super::max(&x), 2.0);
    }

    #[test]
    fn exp_and_tanh_are_accurate() {
        let mut worst_exp = 0.0f64;
        let mut worst_tanh = 0.0f64;
        for i in -80_000..=80_000 {
            let x = i as f32 * 1e-3;
            let e = (x as f64).exp();
            worst_exp = worst_exp.max(((super::exp(x) as f64 - e) / e).abs());
            let t = super::tanh(x);
            assert!((-1.0..=1.0).contains(&t) && t == -super::tanh(-x), "tanh({x}) = {t}");
            worst_tanh = worst_tanh.max((t as f64 - (x as f64).tanh()).abs());
        }
        assert!(worst_exp < 5e-7, "exp relative error {worst_exp:e}");
        assert!(worst_tanh < 3.5e-7, "tanh absolute error {worst_tanh:e}");
    }
}
