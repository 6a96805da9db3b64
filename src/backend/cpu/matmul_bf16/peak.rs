//! The bf16 peak, measured with the instructions the bf16 products use ([`Bf16Isa::get`]): AMX
//! `tdpbf16ps` on tiles, or AVX-512 `vdpbf16ps` chains, on every pool thread at once. The
//! `bf16` MFU of a run is against this, as the fp32 MFU is against the FMA probe
//! (`perf::device::probe_cpu_peak`), and, like it, best of 5 rounds of ~20 ms after an untimed
//! one. None on the portable tier (no bf16 instructions: its peak is the f32 one).

use super::amx::Tiles;
use crate::backend::cpu::simd::Bf16Isa;

/// The bf16 instructions the products use, by name; None on the portable tier.
pub fn instructions() -> Option<&'static str> {
    match Bf16Isa::get() {
        Bf16Isa::Amx => Some("AMX tdpbf16ps"),
        Bf16Isa::Avx512Bf16 => Some("AVX-512 vdpbf16ps"),
        Bf16Isa::Portable => None,
    }
}

/// FLOP/s of the bf16 instructions the products use ([`instructions`]); None on the portable
/// tier.
pub fn probe_peak() -> Option<f64> {
    probe_tier(Bf16Isa::get())
}

/// FLOP/s of `tier`'s bf16 instructions (which must be runnable here: [`Bf16Isa::can_run`]);
/// None for the portable tier.
pub fn probe_tier(tier: Bf16Isa) -> Option<f64> {
    let per_thread: fn(u64) -> f64 = match tier {
        Bf16Isa::Amx => amx,
        Bf16Isa::Avx512Bf16 => avx512bf16,
        Bf16Isa::Portable => return None,
    };
    // iterations for ~20 ms a round: one tdpbf16ps retires every 16 cycles per core, a
    // vdpbf16ps chain step in about one
    let iters = if tier == Bf16Isa::Amx { 300_000 } else { 10_000_000 };
    Some(crate::perf::device::best_rate(|_| per_thread(iters)))
}

fn amx(iters: u64) -> f64 {
    // SAFETY: Bf16Isa::get says Amx only where the CPU has AMX and the OS granted the tiles.
    let tiles = unsafe { Tiles::load() };
    tiles.peak_loop(iters)
}

fn avx512bf16(iters: u64) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: Bf16Isa::get says Avx512Bf16 only where the CPU has AVX-512 BF16 and F.
        unsafe { dpbf16_chains(iters) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = iters;
        0.0
    }
}

/// `iters` rounds of 10 independent `vdpbf16ps` chains (16 lanes, 2 products each). Returns the
/// FLOPs done.
///
/// # Safety
/// The CPU must have AVX-512 BF16 and F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512bf16,avx512f")]
unsafe fn dpbf16_chains(iters: u64) -> f64 {
    use std::arch::x86_64::*;
    // bf16 pairs of 1.0 and a tiny value: the sums stay finite
    let a: __m512bh = std::mem::transmute(_mm512_set1_epi16(0x3f80));
    let b: __m512bh = std::mem::transmute(_mm512_set1_epi16(0x3380));
    let mut acc = [_mm512_setzero_ps(); 10];
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm512_dpbf16_ps(*x, a, b);
        }
    }
    let mut sum = _mm512_setzero_ps();
    for x in acc {
        sum = _mm512_add_ps(sum, x);
    }
    std::hint::black_box(sum);
    (iters * 10 * 16 * 2 * 2) as f64
}
