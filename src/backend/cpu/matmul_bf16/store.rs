//! Storing a finished 32 x 32 f32 block into dst (the AMX and AVX-512 BF16 tiers): scaled by
//! alpha, plus the bias or dst's old value, and for a bf16 dst rounded once, 32 columns at a
//! time with `vcvtne2ps2bf16` (round to nearest even, as `half` rounds, except that it flushes
//! f32 subnormals to zero: values below 1.2e-38, which training never meets; both tiers read
//! bf16 subnormals as zero already). Masks clip the block to dst's edge.

use super::{Out, BLOCK};
use std::arch::x86_64::*;

/// The first `len` (at most 16) lanes of 16.
fn mask16(len: usize) -> __mmask16 {
    if len >= 16 {
        u16::MAX
    } else {
        (1u16 << len) - 1
    }
}

/// dst's rows i0..i0+rows, columns j0..j0+cols <- the f32 block `c` (rows 32 apart), as
/// [`Out`] says: alpha * c, plus the bias (bf16 dst, then rounded) or the old value (f32 dst,
/// accumulating).
///
/// # Safety
/// Those elements of dst (and of the bias) must be valid for writes (reads); the CPU must have
/// AVX-512 BF16, F, BW, VL and DQ.
#[target_feature(enable = "avx512bf16,avx512f,avx512bw,avx512vl,avx512dq")]
pub(super) unsafe fn store_block(c: &[f32; BLOCK * BLOCK], out: Out, i0: usize, j0: usize, rows: usize, cols: usize, alpha: f32) {
    let (lo, hi) = (mask16(cols), mask16(cols.saturating_sub(16))); // columns 0..16, 16..32
    let alpha = _mm512_set1_ps(alpha);
    // the block's row r, times alpha, as two vectors of 16 columns
    let scaled = |r: usize| {
        let row = &c[r * BLOCK..(r + 1) * BLOCK];
        // SAFETY: row holds 32 f32, two vectors of 16.
        unsafe { (_mm512_mul_ps(alpha, _mm512_loadu_ps(row.as_ptr())), _mm512_mul_ps(alpha, _mm512_loadu_ps(row.as_ptr().add(16)))) }
    };
    match out {
        Out::F32 { dst, accumulate } => {
            for r in 0..rows {
                let (mut x, mut y) = scaled(r);
                let d = dst.ptr.wrapping_add((i0 + r) * dst.rs + j0);
                // SAFETY: row i0 + r of dst holds `cols` elements from column j0; the masks
                // touch no others (masked-off lanes are neither read nor written).
                unsafe {
                    if accumulate {
                        x = _mm512_add_ps(_mm512_maskz_loadu_ps(lo, d), x);
                        y = _mm512_add_ps(_mm512_maskz_loadu_ps(hi, d.wrapping_add(16)), y);
                    }
                    _mm512_mask_storeu_ps(d, lo, x);
                    _mm512_mask_storeu_ps(d.wrapping_add(16), hi, y);
                }
            }
        }
        Out::Bf16 { dst, bias } => {
            // the bias as f32 (a bf16's bits are the top half of its f32's)
            let bias = bias.map(|b| {
                let widen = |v: __m256i| _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(v)));
                let b = b.wrapping_add(j0).cast::<i16>();
                // SAFETY: the bias holds `cols` elements from j0 (the caller's contract); the
                // masks read no others.
                unsafe { (widen(_mm256_maskz_loadu_epi16(lo, b)), widen(_mm256_maskz_loadu_epi16(hi, b.wrapping_add(16)))) }
            });
            let all = u32::from(lo) | u32::from(hi) << 16;
            for r in 0..rows {
                let (mut x, mut y) = scaled(r);
                if let Some((bx, by)) = bias {
                    (x, y) = (_mm512_add_ps(x, bx), _mm512_add_ps(y, by));
                }
                let v = _mm512_cvtne2ps_pbh(y, x); // columns 0..32
                let d = dst.ptr.wrapping_add((i0 + r) * dst.rs + j0).cast::<i16>();
                // SAFETY: as above; __m512bh and __m512i are both 64 bytes of plain bits.
                unsafe { _mm512_mask_storeu_epi16(d, all, std::mem::transmute::<__m512bh, __m512i>(v)) };
            }
        }
    }
}
