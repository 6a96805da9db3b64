//! The AVX-512 BF16 kernel: the same 32 x 32 block as the AMX kernel, from the same packed
//! operands, with `vdpbf16ps`: each of 16 lanes adds the two products of a k pair. Registers
//! hold 8 rows x 32 columns of f32 (16 accumulators); the block is four such passes.

use super::{BLOCK, KSTEP};
use std::arch::x86_64::*;

/// Rows of dst per pass (two vectors of 16 columns each).
const ROWS: usize = 8;

/// c(32,32) = a @ b, or c += a @ b when `add`, as `amx::Tiles::block` (same operands, same
/// result within f32 rounding: here each element adds its k pairs in order).
///
/// # Safety
/// The CPU must have AVX-512 BF16, F, BW, VL and DQ.
#[target_feature(enable = "avx512bf16,avx512f,avx512bw,avx512vl,avx512dq")]
pub(super) unsafe fn block(steps: usize, a: &[u16], b: &[u16], c: &mut [f32; BLOCK * BLOCK], add: bool) {
    let step = KSTEP * BLOCK; // elements of a (or b) per step
    assert!(a.len() >= steps * step && b.len() >= steps * step);
    for r0 in (0..BLOCK).step_by(ROWS) {
        let mut acc = [[_mm512_setzero_ps(); 2]; ROWS];
        if add {
            for (r, acc) in acc.iter_mut().enumerate() {
                let row = &c[(r0 + r) * BLOCK..(r0 + r + 1) * BLOCK];
                // SAFETY: row holds 32 f32, two vectors of 16.
                *acc = unsafe { [_mm512_loadu_ps(row.as_ptr()), _mm512_loadu_ps(row.as_ptr().add(16))] };
            }
        }
        for s in 0..steps {
            // a: this pass's 8 rows of 32 k; b: [2 halves][16 pairs][16 columns][2]
            let a: &[u16; ROWS * KSTEP] = a[s * step + r0 * KSTEP..][..ROWS * KSTEP].try_into().unwrap();
            let b: &[u16; KSTEP * BLOCK] = b[s * step..][..step].try_into().unwrap();
            for p in 0..KSTEP / 2 {
                // SAFETY: b holds 2 halves of 16 pairs of 32 elements, so both 64-byte loads lie
                // inside it; __m512i and __m512bh are both 64 bytes of plain bits.
                let (b0, b1): (__m512bh, __m512bh) = unsafe {
                    let b0 = _mm512_loadu_si512(b.as_ptr().add(p * 32).cast());
                    let b1 = _mm512_loadu_si512(b.as_ptr().add(512 + p * 32).cast());
                    (std::mem::transmute::<__m512i, __m512bh>(b0), std::mem::transmute::<__m512i, __m512bh>(b1))
                };
                for (r, acc) in acc.iter_mut().enumerate() {
                    // the pair (k = 2p, 2p + 1) of row r0 + r, as one 32-bit element
                    let pair = u32::from(a[r * KSTEP + 2 * p]) | u32::from(a[r * KSTEP + 2 * p + 1]) << 16;
                    // SAFETY: as above.
                    let pair = unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(pair as i32)) };
                    acc[0] = _mm512_dpbf16_ps(acc[0], pair, b0);
                    acc[1] = _mm512_dpbf16_ps(acc[1], pair, b1);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let row = &mut c[(r0 + r) * BLOCK..(r0 + r + 1) * BLOCK];
            // SAFETY: row holds 32 f32, two vectors of 16.
            unsafe {
                _mm512_storeu_ps(row.as_mut_ptr(), acc[0]);
                _mm512_storeu_ps(row.as_mut_ptr().add(16), acc[1]);
            }
        }
    }
}
