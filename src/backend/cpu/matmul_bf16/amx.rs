//! The AMX kernel: one 32 x 32 f32 block of dst in tiles 0-3, over packed lhs blocks and rhs
//! panels (layouts in `matmul_bf16.rs`'s doc), with `tdpbf16ps`. Rust's AMX intrinsics are
//! unstable, so the instructions are written with `asm!`; the tile registers are invisible to
//! the compiler, which never uses them itself.
//!
//! Tile configuration is per thread: [`Tiles::load`] loads it on the thread that runs the kernel
//! (a rayon worker) and releases the tiles when dropped; it cannot leave that thread.

use super::{BLOCK, KSTEP};
use std::arch::asm;
use std::marker::PhantomData;

/// Bytes of one packed 16-row tile: 16 rows of 64 bytes.
const TILE_BYTES: usize = 1024;

/// The configuration `ldtilecfg` reads: palette 1, tiles 0-7 each 16 rows of 64 bytes (tiles
/// 0-3: 16 x 16 f32 of dst; 4-5: two lhs tiles, 16 rows x 32 k; 6-7: two rhs tiles, 16 k pairs
/// x 16 columns x 2).
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    /// Every tile 16 rows of 64 bytes.
    fn all_16_by_64() -> TileConfig {
        let mut cfg = [0u8; 64];
        cfg[0] = 1; // palette 1
        for t in 0..8 {
            cfg[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes()); // bytes per row
            cfg[48 + t] = 16; // rows
        }
        TileConfig(cfg)
    }
}

/// The tile configuration, loaded on this thread; released when dropped. Not `Send`: the
/// configuration belongs to the thread that loaded it.
pub(super) struct Tiles(PhantomData<*const ()>);

impl Tiles {
    /// Loads the configuration on this thread.
    ///
    /// # Safety
    /// The CPU must have AMX-TILE and AMX-BF16 and the OS must have granted this process the
    /// tile data (`Bf16Isa::Amx.can_run()`).
    pub unsafe fn load() -> Tiles {
        let cfg = TileConfig::all_16_by_64();
        // SAFETY: cfg is a valid 64-byte configuration (palette 1, no reserved bits set); the
        // CPU and OS allow AMX (the caller's contract).
        unsafe { asm!("ldtilecfg [{}]", in(reg) &raw const cfg, options(nostack, readonly)) };
        Tiles(PhantomData)
    }

    /// c(32,32) = a @ b, or c += a @ b when `add`: `a` a packed lhs block
    /// `[steps][32 rows][32 k]`, `b` a packed rhs panel `[steps][2][16 k pairs][16 columns][2]`,
    /// c row-major (rows 32 apart). Each element sums its k in steps of 32, in order, onto
    /// c's value (exactly where a longer sum left off).
    pub fn block(&self, steps: usize, a: &[u16], b: &[u16], c: &mut [f32; BLOCK * BLOCK], add: bool) {
        let len = steps * KSTEP * BLOCK;
        assert!(steps > 0 && a.len() >= len && b.len() >= len);
        if add {
            // SAFETY: the configuration is loaded on this thread; the four loads read 16 rows
            // of 64 bytes, 128 bytes apart, from c's byte offsets 0, 64, 2048 and 2112: all
            // inside c's 4 KiB.
            unsafe {
                asm!(
                    "tileloadd tmm0, [{c} + {crow}*1]",
                    "tileloadd tmm1, [{c} + {crow}*1 + 64]",
                    "tileloadd tmm2, [{c} + {crow}*1 + 2048]",
                    "tileloadd tmm3, [{c} + {crow}*1 + 2112]",
                    c = in(reg) c.as_ptr(),
                    crow = in(reg) BLOCK * 4,
                    options(nostack, readonly),
                )
            }
        } else {
            // SAFETY: the configuration is loaded on this thread.
            unsafe { asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem)) }
        }
        // SAFETY: the configuration is loaded on this thread (self exists, and is not Send);
        // each step reads 2 KiB of a and of b, steps * 2 KiB in all (asserted above); the four
        // stores write 16 rows of 64 bytes, 128 bytes apart, from c's byte offsets 0, 64, 2048
        // and 2112: all inside c's 4 KiB.
        unsafe {
            asm!(
                "2:",
                "tileloadd tmm4, [{a} + {row}*1]",
                "tileloadd tmm6, [{b} + {row}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm7, [{b} + {row}*1 + {tile}]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tileloadd tmm5, [{a} + {row}*1 + {tile}]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "add {a}, {step}",
                "add {b}, {step}",
                "dec {steps}",
                "jnz 2b",
                "tilestored [{c} + {crow}*1], tmm0",
                "tilestored [{c} + {crow}*1 + 64], tmm1",
                "tilestored [{c} + {crow}*1 + 2048], tmm2",
                "tilestored [{c} + {crow}*1 + 2112], tmm3",
                a = inout(reg) a.as_ptr() => _,
                b = inout(reg) b.as_ptr() => _,
                steps = inout(reg) steps => _,
                c = in(reg) c.as_mut_ptr(),
                row = in(reg) 64usize,
                crow = in(reg) BLOCK * 4,
                tile = const TILE_BYTES,
                step = const 2 * TILE_BYTES,
                options(nostack),
            )
        };
    }
}

impl Tiles {
    /// The peak probe's loop: `iters` rounds of four independent `tdpbf16ps` on tiles that
    /// never leave the registers (16 x 16 x 32 multiply-adds each). Returns the FLOPs done.
    pub fn peak_loop(&self, iters: u64) -> f64 {
        if iters == 0 {
            return 0.0;
        }
        // SAFETY: the configuration is loaded on this thread (self exists, and is not Send); the
        // loop touches only tile registers (no memory).
        unsafe {
            asm!(
                "tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3",
                "tilezero tmm4", "tilezero tmm5", "tilezero tmm6", "tilezero tmm7",
                "2:",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "dec {n}",
                "jnz 2b",
                n = inout(reg) iters => _,
                options(nostack, nomem),
            )
        };
        (iters * 4 * 16 * 16 * 32 * 2) as f64
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: the configuration was loaded on this thread (Tiles::load); tilerelease returns
        // the tiles to their initial state.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}
