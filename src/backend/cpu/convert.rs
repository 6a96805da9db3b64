//! bf16 <-> f32 over slices, in loops the compiler vectorises (AVX-512 or AVX2 builds through
//! [`dispatch!`]): widening is exact (the bf16 bits are the f32's top half); narrowing rounds to
//! nearest even, and a NaN stays a quiet NaN of the same sign — the bits `half`'s conversions
//! give, tested against them. (`half` converts element by element, several times slower.)

use super::simd::dispatch;
use half::bf16;

dispatch! {
    /// dst = src widened (a signalling NaN comes back quiet, as `half` does), on this thread.
    pub fn widen_bf16(dst: &mut [f32], src: &[bf16]) {
        for (d, s) in dst.iter_mut().zip(src) {
            let b = s.to_bits();
            let nan = (b & 0x7fff) > 0x7f80;
            *d = f32::from_bits(((if nan { b | 0x0040 } else { b }) as u32) << 16);
        }
    }
}

dispatch! {
    /// dst = src rounded to nearest even (NaN: a quiet NaN of the same sign), on this thread.
    pub fn narrow_bf16(dst: &mut [bf16], src: &[f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            let b = s.to_bits();
            let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
            let nan = (b & 0x7fff_ffff) > 0x7f80_0000;
            *d = bf16::from_bits(if nan { ((b >> 16) as u16) | 0x0040 } else { rounded });
        }
    }
}

/// A low-precision storage type: its conversions from and to f32 over slices, on this thread.
pub trait Low: Copy + Send + Sync + 'static {
    fn widen(dst: &mut [f32], src: &[Self]);
    fn narrow(dst: &mut [Self], src: &[f32]);
}

impl Low for bf16 {
    fn widen(dst: &mut [f32], src: &[bf16]) {
        widen_bf16(dst, src)
    }
    fn narrow(dst: &mut [bf16], src: &[f32]) {
        narrow_bf16(dst, src)
    }
}

impl Low for half::f16 {
    fn widen(dst: &mut [f32], src: &[half::f16]) {
        half::slice::HalfFloatSliceExt::convert_to_f32_slice(src, dst)
    }
    fn narrow(dst: &mut [half::f16], src: &[f32]) {
        half::slice::HalfFloatSliceExt::convert_from_f32_slice(dst, src)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bits_are_halfs() {
        // every bf16 pattern widened; f32 patterns across the range (signs, zeros, denormals,
        // ties, the largest finite values, infinities, quiet and signalling NaNs) narrowed
        let all: Vec<bf16> = (0..=u16::MAX).map(bf16::from_bits).collect();
        let mut wide = vec![0.0f32; all.len()];
        widen_bf16(&mut wide, &all);
        for (w, b) in wide.iter().zip(&all) {
            assert_eq!(w.to_bits(), b.to_f32().to_bits(), "{:#06x}", b.to_bits());
        }
        let mut f: Vec<f32> = (0..200_000u32).map(|i| f32::from_bits(i.wrapping_mul(2_654_435_761))).collect();
        f.extend([0.0, -0.0, 1.0 + f32::EPSILON * 64.0, f32::MAX, f32::MIN, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -f32::NAN]);
        f.extend([0x7f80_0001u32, 0xff80_0001, 0x0000_8000, 0x3f80_8000, 0x3f81_8000, 0x7f7f_ffff].map(f32::from_bits));
        let mut narrow = vec![bf16::ZERO; f.len()];
        narrow_bf16(&mut narrow, &f);
        for (n, x) in narrow.iter().zip(&f) {
            let want = bf16::from_f32(*x);
            if x.is_nan() {
                assert!(n.is_nan() && n.is_sign_negative() == x.is_sign_negative(), "{:#010x}", x.to_bits());
            } else {
                assert_eq!(n.to_bits(), want.to_bits(), "{:#010x}", x.to_bits());
            }
        }
    }
}
