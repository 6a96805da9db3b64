//! Each tier against f64 loops over the same bf16 inputs (awkward shapes, every layout the
//! model uses, the model's own shapes), the tiers against each other, determinism, and the
//! accumulate semantics of dw and db. A tier this CPU cannot run prints why it was skipped.

use super::*;

const TIERS: [Bf16Isa; 3] = [Bf16Isa::Amx, Bf16Isa::Avx512Bf16, Bf16Isa::Portable];

/// Relative error allowed against the f64 sum, as a share of the sum of |products| (f32
/// accumulation over up to a few thousand terms rounds far less than this on these data).
const REL: f64 = 1e-5;

/// The tiers this CPU runs, with a line printed for each one it cannot.
fn runnable(test: &str) -> Vec<Bf16Isa> {
    let ok = |t: &Bf16Isa| t.can_run().map_err(|why| println!("{test}: {t:?} skipped: {why}")).is_ok();
    TIERS.into_iter().filter(ok).collect()
}

/// `n` bf16 values in [-1, 1] from seed `s` (a multiplicative hash: no pattern lines up with
/// the blocks).
pub(super) fn fill(n: usize, s: u32) -> Vec<bf16> {
    (0..n).map(|i| bf16::from_f32(((i as u32).wrapping_mul(2654435761).wrapping_add(s) % 2001) as f32 / 1000.0 - 1.0)).collect()
}

/// Elements a strided (rows, cols) matrix spans.
fn span(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    (rows.max(1) - 1) * rs + (cols.max(1) - 1) * cs + 1
}

/// Element (i, j) of the f64 product lhs @ rhs, and the sum of its |products|.
fn dot(k: usize, lhs: SrcBf16, rhs: SrcBf16, i: usize, j: usize) -> (f64, f64) {
    // SAFETY: the tests' operands are slices covering every element their strides address.
    let terms = (0..k).map(|p| unsafe { f64::from(lhs.get(i, p)) * f64::from(rhs.get(p, j)) });
    terms.fold((0.0, 0.0), |(s, a), t| (s + t, a + t.abs()))
}

/// Whether a bf16 result is what rounding some value within `tol` of `want` gives.
fn bf16_within(got: bf16, want: f64, tol: f64) -> bool {
    let round = |x: f64| bf16::from_f32(x as f32).to_f32();
    (round(want - tol)..=round(want + tol)).contains(&got.to_f32())
}

#[test]
fn every_tier_matches_f64_loops_on_awkward_shapes() {
    // (m, n, k): tiny, odd, ragged edges on every side, k odd or spanning several steps, k = 0,
    // and k in three blocks (KC_MAX)
    let shapes = [
        (1, 1, 1),
        (1, 1, 2),
        (2, 3, 1),
        (3, 5, 7),
        (17, 33, 31),
        (33, 17, 65),
        (31, 65, 33),
        (64, 64, 64),
        (65, 97, 127),
        (100, 37, 300),
        (3, 4, 0),
        (5, 40, 4100),
    ];
    for tier in runnable("every_tier_matches_f64_loops_on_awkward_shapes") {
        for (m, n, k) in shapes {
            // (lhs rs, cs, rhs rs, cs): plain (dinp), lhs transposed (dw), rhs transposed
            // (forward), both, and padded rows as in attention's views
            let layouts = [(k, 1, n, 1), (1, m, n, 1), (k, 1, 1, k), (1, m, 1, k), (k + 7, 1, n + 2, 1)];
            for (lrs, lcs, rrs, rcs) in layouts {
                let (l, r) = (fill(span(m, k, lrs, lcs), 1), fill(span(k, n, rrs, rcs), 2));
                let (lhs, rhs) = (SrcBf16 { ptr: l.as_ptr(), rs: lrs, cs: lcs }, SrcBf16 { ptr: r.as_ptr(), rs: rrs, cs: rcs });
                let bias = fill(n, 3);
                let what = format!("{tier:?} m{m} n{n} k{k} strides {:?}", (lrs, lcs, rrs, rcs));
                for par in [Par::None, Par::Split(2)] {
                    // f32 dst, rows n + 3 apart: overwritten (alpha 1) or accumulated (alpha 0.5)
                    for (accumulate, alpha) in [(false, 1.0f32), (true, 0.5)] {
                        let old: Vec<f32> = fill(m * (n + 3), 4).iter().map(|v| v.to_f32() * 4.0).collect();
                        let mut got = old.clone();
                        let out = Out::F32 { dst: Dst::rows(got.as_mut_ptr(), n + 3), accumulate };
                        // SAFETY: every operand covers the elements its strides address.
                        unsafe { gemm_bf16_on(tier, m, n, k, out, lhs, rhs, alpha, par) };
                        for (e, (&g, &o)) in got.iter().zip(&old).enumerate() {
                            let (i, j) = (e / (n + 3), e % (n + 3));
                            if j >= n {
                                assert_eq!(g.to_bits(), o.to_bits(), "{what}: padding ({i}, {j}) written");
                                continue;
                            }
                            let (s, a) = dot(k, lhs, rhs, i, j);
                            let old = if accumulate { f64::from(o) } else { 0.0 };
                            let want = old + f64::from(alpha) * s;
                            let tol = REL * (f64::from(alpha) * a + old.abs());
                            assert!((f64::from(g) - want).abs() <= tol, "{what} acc {accumulate} at ({i}, {j}): {g} vs {want}");
                        }
                    }
                    // bf16 dst: with the bias (alpha 1), without (alpha -2)
                    for (with_bias, alpha) in [(true, 1.0f32), (false, -2.0)] {
                        let mut got = vec![bf16::from_f32(9.0); m * n];
                        let out = Out::Bf16 { dst: DstBf16::rows(got.as_mut_ptr(), n), bias: with_bias.then_some(bias.as_ptr()) };
                        // SAFETY: as above.
                        unsafe { gemm_bf16_on(tier, m, n, k, out, lhs, rhs, alpha, par) };
                        for (e, &g) in got.iter().enumerate() {
                            let (i, j) = (e / n, e % n);
                            let (s, a) = dot(k, lhs, rhs, i, j);
                            let b = if with_bias { f64::from(bias[j].to_f32()) } else { 0.0 };
                            let want = f64::from(alpha) * s + b;
                            let tol = REL * (f64::from(alpha.abs()) * a + b.abs());
                            assert!(bf16_within(g, want, tol), "{what} bias {with_bias} at ({i}, {j}): {g} vs {want}");
                        }
                    }
                }
            }
        }
    }
}

/// The model's linear layers, (N, IC, OC): `small` (B=8, T=256, C=384: qkv, attention proj,
/// fc, fc proj, lm_head with vocab 65 and padded to 128) and `gpt2`'s (N = 4 * 64, C = 768).
const MODEL_SHAPES: [(usize, usize, usize); 8] = [
    (2048, 384, 1152),
    (2048, 384, 384),
    (2048, 384, 1536),
    (2048, 1536, 384),
    (2048, 384, 65),
    (2048, 384, 128),
    (256, 768, 2304),
    (256, 3072, 768),
];

#[test]
fn every_tier_computes_the_model_layers_forward_and_backward() {
    for tier in runnable("every_tier_computes_the_model_layers_forward_and_backward") {
        for (n, ic, oc) in MODEL_SHAPES {
            let what = format!("{tier:?} N{n} IC{ic} OC{oc}");
            let (inp, w, b, dout) = (fill(n * ic, 1), fill(oc * ic, 2), fill(oc, 3), fill(n * oc, 4));
            let mut out = vec![bf16::ZERO; n * oc];
            forward_on(tier, &mut out, &inp, &w, Some(&b), ic);
            let mut dinp = vec![bf16::from_f32(5.0); n * ic];
            let dw_old: Vec<f32> = fill(oc * ic, 5).iter().map(|v| v.to_f32()).collect();
            let db_old: Vec<f32> = fill(oc, 6).iter().map(|v| v.to_f32()).collect();
            let (mut dw, mut db) = (dw_old.clone(), db_old.clone());
            backward_on(tier, &mut dinp, &mut dw, Some(&mut db), &dout, &inp, &w, ic);
            let (inp, w, dout) = (SrcBf16::rows(inp.as_ptr(), ic), SrcBf16::rows(w.as_ptr(), ic), SrcBf16::rows(dout.as_ptr(), oc));
            // a sample of every output (the f64 loops over all of them would take minutes),
            // its first and last rows and columns always among it
            let sample = |rows: usize, cols: usize| {
                (0..rows * cols)
                    .map(move |e| (e / cols, e % cols))
                    .filter(move |&(i, j)| (i * 7 + j * 3) % 89 == 0 || i == 0 || j == 0 || i == rows - 1 || j == cols - 1)
            };
            for (i, j) in sample(n, oc) {
                let (s, a) = dot(ic, inp, w.t(), i, j);
                let bj = f64::from(b[j].to_f32());
                assert!(bf16_within(out[i * oc + j], s + bj, REL * (a + bj.abs())), "{what} out ({i}, {j})");
            }
            for (i, j) in sample(n, ic) {
                let (s, a) = dot(oc, dout, w, i, j);
                assert!(bf16_within(dinp[i * ic + j], s, REL * a), "{what} dinp ({i}, {j})");
            }
            for (i, j) in sample(oc, ic) {
                let (s, a) = dot(n, dout.t(), inp, i, j);
                let (got, old) = (f64::from(dw[i * ic + j]), f64::from(dw_old[i * ic + j]));
                assert!((got - old - s).abs() <= REL * (a + old.abs()), "{what} dw ({i}, {j}): {got} vs {}", old + s);
            }
            for j in 0..oc {
                // SAFETY: column j of dout, n rows.
                let (s, a) = (0..n).map(|i| f64::from(unsafe { dout.get(i, j) })).fold((0.0, 0.0), |(s, a), v| (s + v, a + v.abs()));
                let old = f64::from(db_old[j]);
                assert!((f64::from(db[j]) - old - s).abs() <= REL * (a + old.abs()), "{what} db {j}");
            }
        }
    }
}

#[test]
fn the_tiers_agree_and_repeat_bit_for_bit_on_any_thread_count() {
    let tiers = runnable("the_tiers_agree_and_repeat_bit_for_bit_on_any_thread_count");
    // the weight-gradient layout into f32 (no bf16 rounding to blur the comparison), k in two
    // blocks (KC_MAX), n in two chunks (RHS_CHUNK_BYTES)
    let (m, n, k) = (130, 600, 2500);
    let (l, r) = (fill(k * m, 1), fill(k * n, 2));
    let (lhs, rhs) = (SrcBf16::rows(l.as_ptr(), m).t(), SrcBf16::rows(r.as_ptr(), n));
    let run = |tier: Bf16Isa, threads: usize| {
        let mut got = vec![0.0f32; m * n];
        let out = Out::F32 { dst: Dst::rows(got.as_mut_ptr(), n), accumulate: false };
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        // SAFETY: every operand covers the elements its strides address.
        pool.install(|| unsafe { gemm_bf16_on(tier, m, n, k, out, lhs, rhs, 1.0, Par::Split(threads)) });
        got
    };
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let results: Vec<Vec<f32>> = tiers.iter().map(|&t| run(t, 2)).collect();
    for (&tier, first) in tiers.iter().zip(&results) {
        assert_eq!(bits(&run(tier, 2)), bits(first), "{tier:?}: a second run differs");
        if tier != Bf16Isa::Portable {
            // every element is one kernel call over all of k, whichever thread: no dependence
            for threads in [1, 3] {
                assert_eq!(bits(&run(tier, threads)), bits(first), "{tier:?}: {threads} threads differ from 2");
            }
        }
    }
    let abs: Vec<f64> = (0..m * n).map(|e| dot(k, lhs, rhs, e / n, e % n).1).collect();
    for (a, ra) in tiers.iter().zip(&results) {
        for (b, rb) in tiers.iter().zip(&results) {
            for (e, (x, y)) in ra.iter().zip(rb).enumerate() {
                assert!(f64::from((x - y).abs()) <= 2.0 * REL * abs[e], "{a:?} vs {b:?} at {e}: {x} vs {y}");
            }
        }
    }
}

#[test]
fn dw_and_db_are_the_f32_sums_of_their_old_values_and_the_new_gradients() {
    let (n, ic, oc) = (70, 48, 65);
    let (inp, w, dout) = (fill(n * ic, 1), fill(oc * ic, 2), fill(n * oc, 3));
    for tier in runnable("dw_and_db_are_the_f32_sums_of_their_old_values_and_the_new_gradients") {
        let mut dinp = vec![bf16::ZERO; n * ic];
        let (mut dw0, mut db0) = (vec![0.0f32; oc * ic], vec![0.0f32; oc]);
        backward_on(tier, &mut dinp, &mut dw0, Some(&mut db0), &dout, &inp, &w, ic);
        let dinp0 = dinp.clone();
        let dw_old: Vec<f32> = fill(oc * ic, 4).iter().map(|v| v.to_f32() * 3.0).collect();
        let db_old: Vec<f32> = fill(oc, 5).iter().map(|v| v.to_f32() * 3.0).collect();
        let (mut dw, mut db) = (dw_old.clone(), db_old.clone());
        backward_on(tier, &mut dinp, &mut dw, Some(&mut db), &dout, &inp, &w, ic);
        assert_eq!(dinp, dinp0, "{tier:?}: dinp is overwritten, not accumulated");
        for ((&got, &old), &new) in dw.iter().zip(&dw_old).zip(&dw0) {
            assert_eq!(got.to_bits(), (old + new).to_bits(), "{tier:?} dw: {got} vs {old} + {new}");
        }
        for ((&got, &old), &new) in db.iter().zip(&db_old).zip(&db0) {
            assert_eq!(got.to_bits(), (old + new).to_bits(), "{tier:?} db: {got} vs {old} + {new}");
        }
        // without a bias, db is not needed and nothing else changes
        let mut dw_nob = vec![0.0f32; oc * ic];
        backward_on(tier, &mut dinp, &mut dw_nob, None, &dout, &inp, &w, ic);
        assert_eq!(dw_nob, dw0, "{tier:?}");
    }
}

#[test]
fn the_public_entries_run_the_tier_this_process_picked() {
    let (n, ic, oc) = (40, 33, 20);
    let (inp, w, b) = (fill(n * ic, 1), fill(oc * ic, 2), fill(oc, 3));
    let (mut got, mut want) = (vec![bf16::ZERO; n * oc], vec![bf16::ZERO; n * oc]);
    matmul_forward_bf16(&mut got, &inp, &w, Some(&b), ic);
    forward_on(Bf16Isa::get(), &mut want, &inp, &w, Some(&b), ic);
    assert_eq!(got, want, "{}", Bf16Isa::describe());
    // the strided entry: the same product, its transposes folded into strides
    let mut strided = vec![bf16::ZERO; n * oc];
    let out = Out::Bf16 { dst: DstBf16::rows(strided.as_mut_ptr(), oc), bias: Some(b.as_ptr()) };
    let (lhs, rhs) = (SrcBf16::rows(inp.as_ptr(), ic), SrcBf16::rows(w.as_ptr(), ic).t());
    // SAFETY: inp (n, ic), w (oc, ic) read transposed, out (n, oc), bias (oc).
    unsafe { gemm_bf16(n, oc, ic, out, lhs, rhs, 1.0, Par::Split(2)) };
    assert_eq!(strided, want);
}

#[test]
fn rounding_to_bf16_is_half_s_round_to_nearest_even() {
    let specials = [0.0, -0.0, 1.0, f32::MAX, f32::MIN, f32::MIN_POSITIVE, 1e-40, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -f32::NAN];
    let sweep = (0..=u32::MAX).step_by(65_521).map(f32::from_bits);
    // ties (bit 15 set, below it zero) both ways, and just past them
    let ties = [0x3f80_8000u32, 0x3f81_8000, 0x3f80_8001, 0xbf81_8000, 0x7f7f_8000].map(f32::from_bits);
    for x in specials.into_iter().chain(sweep).chain(ties) {
        assert_eq!(round_bf16(x), bf16::from_f32(x).to_bits(), "{x:e} ({:#010x})", x.to_bits());
    }
}

#[test]
fn a_kernel_call_that_adds_goes_on_where_a_longer_sum_left_off() {
    // one call over 5 steps of k, against 2 steps and then 3 more added onto them
    let (a, b) = (fill(5 * 1024, 1), fill(5 * 1024, 2));
    let (a, b): (Vec<u16>, Vec<u16>) = (a.iter().map(|v| v.to_bits()).collect(), b.iter().map(|v| v.to_bits()).collect());
    // (the portable tier has no kernel of its own)
    for tier in runnable("a_kernel_call_that_adds_goes_on_where_a_longer_sum_left_off").into_iter().filter(|&t| t != Bf16Isa::Portable) {
        let run = |steps: usize, a: &[u16], b: &[u16], c: &mut [f32; 1024], add: bool| match tier {
            // SAFETY: the tier can run (runnable).
            Bf16Isa::Amx => unsafe { amx::Tiles::load() }.block(steps, a, b, c, add),
            // SAFETY: as above.
            _ => unsafe { avx512::block(steps, a, b, c, add) },
        };
        let (mut whole, mut parts) = ([0.0f32; 1024], [7.0f32; 1024]);
        run(5, &a, &b, &mut whole, false);
        run(2, &a, &b, &mut parts, false);
        run(3, &a[2048..], &b[2048..], &mut parts, true);
        assert!(whole.iter().zip(&parts).all(|(x, y)| x.to_bits() == y.to_bits()), "{tier:?}");
    }
}

#[test]
fn a_stored_block_is_rounded_as_half_rounds_and_clipped_to_dst() {
    if let Err(why) = Bf16Isa::Avx512Bf16.can_run() {
        println!("a_stored_block_is_rounded_as_half_rounds_and_clipped_to_dst: skipped: {why}");
        return;
    }
    // values with every low half: ties to even both ways, just past them, -0.0, large, NaN
    let mut c = [0.0f32; BLOCK * BLOCK];
    for (e, c) in c.iter_mut().enumerate() {
        let bits = 0x3f80_0000u32 | (e as u32).wrapping_mul(2654435761) & 0x007f_ffff;
        *c = f32::from_bits(if e % 2 == 0 { bits } else { bits | 0x8000_0000 });
    }
    (c[0], c[1], c[2], c[3], c[4]) = (-0.0, f32::from_bits(0x3f80_8000), f32::from_bits(0x3f81_8000), f32::NAN, 3e38);
    let bias = fill(40, 7);
    // a 5 x 19 corner of the block into a 7 x 40 dst from (1, 3); the rest must stay
    for (with_bias, alpha) in [(false, 1.0f32), (true, 1.0), (false, -0.5)] {
        let (rows, cols, i0, j0) = (5, 19, 1, 3);
        let mut dst = vec![bf16::from_f32(42.0); 7 * 40];
        let out = Out::Bf16 { dst: DstBf16::rows(dst.as_mut_ptr(), 40), bias: with_bias.then_some(bias.as_ptr()) };
        // SAFETY: the corner lies inside dst and the bias; the CPU has AVX-512 BF16 (checked).
        unsafe { store::store_block(&c, out, i0, j0, rows, cols, alpha) };
        for (e, &got) in dst.iter().enumerate() {
            let (i, j) = (e / 40, e % 40);
            let want = if (i0..i0 + rows).contains(&i) && (j0..j0 + cols).contains(&j) {
                let b = if with_bias { bias[j].to_f32() } else { 0.0 };
                let v = alpha * c[(i - i0) * BLOCK + j - j0];
                bf16::from_bits(round_bf16(if with_bias { v + b } else { v }))
            } else {
                bf16::from_f32(42.0)
            };
            assert_eq!(got.to_bits(), want.to_bits(), "bias {with_bias} alpha {alpha} at ({i}, {j})");
        }
    }
}
