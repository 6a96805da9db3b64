//! Packing bf16 operands into the blocks the kernels read (layouts in `matmul_bf16.rs`'s doc),
//! with zeros beyond the matrix. Fast paths for the unit strides the linear layers have, with
//! AVX-512 masked loads (the mask stops at the matrix's edge), 16-bit interleaves and 16 x 16
//! transposes of 32-bit pairs; a plain loop for any other strides. Every path writes the same
//! bits (the tests compare them).
//!
//! Which path each layout of the linear layers takes (lhs (m, k) @ rhs (k, n)):
//! forward `inp @ w^T`: lhs k-contiguous, rhs k-contiguous (pairs transposed);
//! `dinp = dout @ w`: lhs k-contiguous, rhs n-contiguous (rows interleaved);
//! `dw += dout^T @ inp`: lhs m-contiguous (interleaved, then transposed), rhs n-contiguous.

use super::{SrcBf16, BLOCK, KSTEP};
use std::arch::x86_64::*;

/// Elements of one step of a packed block or panel: 32 rows (or columns) of 32 k.
const STEP: usize = KSTEP * BLOCK;

/// Elements of one 16-column half of a packed rhs step: 16 k pairs x 16 columns x 2.
const HALF: usize = STEP / 2;

/// `permutex2var_epi16` indices that interleave elements 0..16 of x and y: x0 y0 x1 y1 ...
const INTERLEAVE_LO: [u16; 32] = interleave(0);
/// ... and elements 16..32: x16 y16 x17 y17 ...
const INTERLEAVE_HI: [u16; 32] = interleave(16);

const fn interleave(from: u16) -> [u16; 32] {
    let mut idx = [0u16; 32];
    let mut i = 0;
    while i < 16 {
        idx[2 * i] = from + i as u16; // x's element
        idx[2 * i + 1] = 32 + from + i as u16; // y's element (bit 5 picks y)
        i += 1;
    }
    idx
}

/// lhs block: rows i0..i0+32 of lhs(m, k) into `dst`, `[steps][32 rows][32 k]`, zeros beyond m
/// and k (`dst.len()` is steps * 1024).
///
/// # Safety
/// lhs's elements (i, j), i < m, j < k, must be valid for reads; i0 < m; the CPU must have
/// AVX-512 F, BW, VL and DQ.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
pub(super) unsafe fn pack_lhs(dst: &mut [u16], src: SrcBf16, m: usize, k: usize, i0: usize) {
    assert!(dst.len().is_multiple_of(STEP) && k <= dst.len() / BLOCK && i0 < m);
    let rows = BLOCK.min(m - i0);
    // SAFETY (each): the caller's contract; the checks above.
    match (src.cs, src.rs) {
        (1, _) => unsafe { lhs_k_contiguous(dst, src.at(i0, 0), rows, k) },
        (_, 1) => unsafe { lhs_m_contiguous(dst, src.at(i0, 0), rows, k) },
        _ => unsafe { pack_lhs_plain(dst, src, m, k, i0) },
    }
}

/// rhs panel: columns j0..j0+32 of rhs(k, n) into `dst`, `[steps][2][16 k pairs][16 columns][2]`,
/// zeros beyond n and k (`dst.len()` is steps * 1024).
///
/// # Safety
/// rhs's elements (i, j), i < k, j < n, must be valid for reads; j0 < n; the CPU must have
/// AVX-512 F, BW, VL and DQ.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
pub(super) unsafe fn pack_rhs(dst: &mut [u16], src: SrcBf16, k: usize, n: usize, j0: usize) {
    assert!(dst.len().is_multiple_of(STEP) && k <= dst.len() / BLOCK && j0 < n);
    let cols = BLOCK.min(n - j0);
    // SAFETY (each): the caller's contract; the checks above.
    match (src.cs, src.rs) {
        (1, _) => unsafe { rhs_n_contiguous(dst, src.at(0, j0), k, cols) },
        (_, 1) => unsafe { rhs_k_contiguous(dst, src.at(0, j0), k, cols) },
        _ => unsafe { pack_rhs_plain(dst, src, k, n, j0) },
    }
}

/// [`pack_lhs`] by plain loops, for any strides (and the reference its fast paths are tested
/// against).
///
/// # Safety
/// As [`pack_lhs`], less the CPU features.
pub(super) unsafe fn pack_lhs_plain(dst: &mut [u16], src: SrcBf16, m: usize, k: usize, i0: usize) {
    for (e, d) in dst.iter_mut().enumerate() {
        let (s, r, kk) = (e / STEP, e % STEP / KSTEP, e % KSTEP);
        let (i, j) = (i0 + r, s * KSTEP + kk);
        // SAFETY: (i, j) lies inside lhs (m, k) (the caller's contract).
        *d = if i < m && j < k { unsafe { *src.ptr.add(i * src.rs + j * src.cs) }.to_bits() } else { 0 };
    }
}

/// [`pack_rhs`] by plain loops, for any strides.
///
/// # Safety
/// As [`pack_rhs`], less the CPU features.
pub(super) unsafe fn pack_rhs_plain(dst: &mut [u16], src: SrcBf16, k: usize, n: usize, j0: usize) {
    for (e, d) in dst.iter_mut().enumerate() {
        let (s, h, p, c, odd) = (e / STEP, e % STEP / HALF, e % HALF / 32, e % 32 / 2, e % 2);
        let (i, j) = (s * KSTEP + 2 * p + odd, j0 + 16 * h + c);
        // SAFETY: (i, j) lies inside rhs (k, n) (the caller's contract).
        *d = if i < k && j < n { unsafe { *src.ptr.add(i * src.rs + j * src.cs) }.to_bits() } else { 0 };
    }
}

/// The first `len` (at most 32) lanes of 32.
fn mask(len: usize) -> __mmask32 {
    if len >= 32 {
        u32::MAX
    } else {
        (1u32 << len) - 1
    }
}

/// The first `len` bf16 at `ptr` (no more than 32), zeros after; nothing is read when `len` is 0.
///
/// # Safety
/// Those `len` elements must be valid for reads; the CPU must have AVX-512 F and BW.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
unsafe fn load(ptr: *const half::bf16, len: usize) -> __m512i {
    // SAFETY: masked-off lanes are neither read nor fault (AVX-512 fault suppression).
    unsafe { _mm512_maskz_loadu_epi16(mask(len), ptr.cast()) }
}

/// Stores v at `dst[at..at + 32]`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
fn store(dst: &mut [u16], at: usize, v: __m512i) {
    let d = &mut dst[at..at + 32];
    // SAFETY: d holds 32 u16, 64 bytes.
    unsafe { _mm512_storeu_si512(d.as_mut_ptr().cast(), v) };
}

/// lhs with unit column stride: each row's k values are contiguous; copied 32 at a time.
///
/// # Safety
/// src's rows 0..rows, columns 0..k, valid for reads; AVX-512 F/BW/VL/DQ.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
unsafe fn lhs_k_contiguous(dst: &mut [u16], src: SrcBf16, rows: usize, k: usize) {
    for s in 0..dst.len() / STEP {
        let len = k.saturating_sub(s * KSTEP).min(KSTEP);
        for r in 0..BLOCK {
            // SAFETY: row r < rows holds k elements from column 0, so the `len` from s * 32 are
            // inside it; rows beyond read nothing (len 0).
            let v = unsafe { load(src.ptr.wrapping_add(r * src.rs + s * KSTEP), if r < rows { len } else { 0 }) };
            store(dst, s * STEP + r * KSTEP, v);
        }
    }
}

/// lhs with unit row stride (a transpose, as `dout^T`): for each k pair, the two rows of 32
/// values are interleaved into 32-bit pairs, then 16 pairs x 16 rows are transposed so that
/// each row of the block holds its k in order.
///
/// # Safety
/// src's rows 0..rows, columns 0..k, valid for reads; AVX-512 F/BW/VL/DQ.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
unsafe fn lhs_m_contiguous(dst: &mut [u16], src: SrcBf16, rows: usize, k: usize) {
    // SAFETY: constant tables of 32 u16 each.
    let (lo_idx, hi_idx) =
        unsafe { (_mm512_loadu_si512(INTERLEAVE_LO.as_ptr().cast()), _mm512_loadu_si512(INTERLEAVE_HI.as_ptr().cast())) };
    for s in 0..dst.len() / STEP {
        let (mut lo, mut hi) = ([_mm512_setzero_si512(); 16], [_mm512_setzero_si512(); 16]);
        for p in 0..16 {
            let kk = s * KSTEP + 2 * p;
            // column kk of src: `rows` contiguous values (none beyond k)
            // SAFETY: columns kk < k hold `rows` readable elements from row 0.
            let col = |kk: usize| unsafe { load(src.ptr.wrapping_add(kk * src.cs), if kk < k { rows } else { 0 }) };
            let (x, y) = (col(kk), col(kk + 1));
            lo[p] = _mm512_permutex2var_epi16(x, lo_idx, y); // rows 0..16: (x_r, y_r)
            hi[p] = _mm512_permutex2var_epi16(x, hi_idx, y); // rows 16..32
        }
        transpose16(&mut lo);
        transpose16(&mut hi);
        for r in 0..16 {
            store(dst, s * STEP + r * KSTEP, lo[r]);
            store(dst, s * STEP + (16 + r) * KSTEP, hi[r]);
        }
    }
}

/// rhs with unit column stride (as `w` or `inp` read as (k, n)): rows 2p and 2p + 1 of each
/// step, 32 columns each, interleaved into the 32-bit pairs of the two halves.
///
/// # Safety
/// src's rows 0..k, columns 0..cols, valid for reads; AVX-512 F/BW/VL/DQ.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
unsafe fn rhs_n_contiguous(dst: &mut [u16], src: SrcBf16, k: usize, cols: usize) {
    // SAFETY: constant tables of 32 u16 each.
    let (lo_idx, hi_idx) =
        unsafe { (_mm512_loadu_si512(INTERLEAVE_LO.as_ptr().cast()), _mm512_loadu_si512(INTERLEAVE_HI.as_ptr().cast())) };
    for s in 0..dst.len() / STEP {
        for p in 0..16 {
            let kk = s * KSTEP + 2 * p;
            // SAFETY: rows kk < k hold `cols` readable elements from column 0.
            let row = |kk: usize| unsafe { load(src.ptr.wrapping_add(kk * src.rs), if kk < k { cols } else { 0 }) };
            let (x, y) = (row(kk), row(kk + 1));
            store(dst, s * STEP + p * 32, _mm512_permutex2var_epi16(x, lo_idx, y));
            store(dst, s * STEP + HALF + p * 32, _mm512_permutex2var_epi16(x, hi_idx, y));
        }
    }
}

/// rhs with unit row stride (as `w^T` in the forward): each column's 32 k of a step are 16
/// pairs already; 16 columns x 16 pairs are transposed into the half's pair rows.
///
/// # Safety
/// src's rows 0..k, columns 0..cols, valid for reads; AVX-512 F/BW/VL/DQ.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
unsafe fn rhs_k_contiguous(dst: &mut [u16], src: SrcBf16, k: usize, cols: usize) {
    for s in 0..dst.len() / STEP {
        let len = k.saturating_sub(s * KSTEP).min(KSTEP);
        for h in 0..2 {
            let mut v = [_mm512_setzero_si512(); 16];
            for (c, v) in v.iter_mut().enumerate() {
                let j = 16 * h + c;
                // SAFETY: column j < cols holds k readable elements from row 0, so the `len`
                // from s * 32 are inside it; columns beyond read nothing.
                *v = unsafe { load(src.ptr.wrapping_add(j * src.cs + s * KSTEP), if j < cols { len } else { 0 }) };
            }
            transpose16(&mut v);
            for (p, v) in v.iter().enumerate() {
                store(dst, s * STEP + h * HALF + p * 32, *v);
            }
        }
    }
}

/// Transposes 16 x 16 32-bit elements: element j of `r[i]` becomes element i of `r[j]`.
/// Three rounds: 32-bit then 64-bit unpacks (within 128-bit lanes), then two rounds of
/// 128-bit lane shuffles.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
fn transpose16(r: &mut [__m512i; 16]) {
    let mut t = [_mm512_setzero_si512(); 16];
    for q in 0..8 {
        t[2 * q] = _mm512_unpacklo_epi32(r[2 * q], r[2 * q + 1]);
        t[2 * q + 1] = _mm512_unpackhi_epi32(r[2 * q], r[2 * q + 1]);
    }
    // u[4g + c], lane L: rows 4g..4g+4 of column 4L + c
    let mut u = [_mm512_setzero_si512(); 16];
    for g in 0..4 {
        u[4 * g] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
        u[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
        u[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
        u[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
    }
    // column 4L + c gathers lane L of u[c], u[4 + c], u[8 + c], u[12 + c]
    for c in 0..4 {
        let x0 = _mm512_shuffle_i32x4::<0x88>(u[c], u[4 + c]); // lanes 0, 2 of each
        let x1 = _mm512_shuffle_i32x4::<0xdd>(u[c], u[4 + c]); // lanes 1, 3
        let x2 = _mm512_shuffle_i32x4::<0x88>(u[8 + c], u[12 + c]);
        let x3 = _mm512_shuffle_i32x4::<0xdd>(u[8 + c], u[12 + c]);
        r[c] = _mm512_shuffle_i32x4::<0x88>(x0, x2);
        r[8 + c] = _mm512_shuffle_i32x4::<0xdd>(x0, x2);
        r[4 + c] = _mm512_shuffle_i32x4::<0x88>(x1, x3);
        r[12 + c] = _mm512_shuffle_i32x4::<0xdd>(x1, x3);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::simd::Bf16Isa;
    use half::bf16;

    #[test]
    fn every_fast_packing_path_writes_what_the_plain_loops_write() {
        if let Err(why) = Bf16Isa::Avx512Bf16.can_run() {
            println!("skipped: the packing fast paths need AVX-512 ({why})");
            return;
        }
        // (rows, cols, k): whole blocks, ragged edges, odd k, k = 1, and several steps
        for (rows, cols, k) in [(32, 32, 32usize), (5, 7, 3), (40, 70, 65), (1, 1, 1), (33, 31, 100)] {
            let data: Vec<bf16> = (0..(rows.max(cols) + 3) * (k + 5) * 2).map(|i| bf16::from_f32(i as f32 * 0.25 - 7.0)).collect();
            let steps = k.div_ceil(KSTEP);
            // (row stride, column stride) of a (rows, k) lhs or a (k, cols) rhs: row-major,
            // transposed, padded rows, and neither stride 1
            let lhs_layouts = [(k, 1), (1, rows), (k + 5, 1), (1, rows + 3), (2 * k, 2)];
            for (rs, cs) in lhs_layouts {
                let src = SrcBf16 { ptr: data.as_ptr(), rs, cs };
                for i0 in (0..rows).step_by(BLOCK) {
                    let (mut fast, mut plain) = (vec![1u16; steps * STEP], vec![2u16; steps * STEP]);
                    // SAFETY: every address (i, j), i < rows, j < k, lies inside data.
                    unsafe {
                        pack_lhs(&mut fast, src, rows, k, i0);
                        pack_lhs_plain(&mut plain, src, rows, k, i0);
                    }
                    assert_eq!(fast, plain, "lhs {rows}x{k} strides ({rs}, {cs}) from row {i0}");
                }
            }
            let rhs_layouts = [(cols, 1), (1, k), (cols + 5, 1), (1, k + 3), (2 * cols, 2)];
            for (rs, cs) in rhs_layouts {
                let src = SrcBf16 { ptr: data.as_ptr(), rs, cs };
                for j0 in (0..cols).step_by(BLOCK) {
                    let (mut fast, mut plain) = (vec![1u16; steps * STEP], vec![2u16; steps * STEP]);
                    // SAFETY: every address (i, j), i < k, j < cols, lies inside data.
                    unsafe {
                        pack_rhs(&mut fast, src, k, cols, j0);
                        pack_rhs_plain(&mut plain, src, k, cols, j0);
                    }
                    assert_eq!(fast, plain, "rhs {k}x{cols} strides ({rs}, {cs}) from column {j0}");
                }
            }
        }
    }
}
