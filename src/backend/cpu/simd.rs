//! Runtime dispatch of plain loops to AVX-512 or AVX2 builds of the same code.
//!
//! The crate is compiled for baseline x86-64 (SSE2) so the binary runs on any x86-64 CPU; the
//! hot elementwise loops are written once as ordinary Rust and [`dispatch!`] compiles them again
//! with AVX-512 and with AVX2 enabled, chosen at run time by [`Isa::get`]. The arithmetic is the
//! same (Rust never contracts `a * b + c` into a fused multiply-add; where a kernel wants one it
//! writes `mul_add`, which rounds once on every path), so results do not depend on which version
//! runs.

use anyhow::{bail, Result};

/// The widest vector instruction set gptrain's CPU kernels use, ordered narrow to wide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Plain x86-64 (SSE2) or another architecture: the loops as compiled.
    Baseline,
    /// AVX2 with FMA (256-bit vectors).
    Avx2,
    /// AVX-512 F, VL, BW and DQ (512-bit vectors).
    Avx512,
}

impl Isa {
    /// What this CPU has.
    pub fn detected() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            use std::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx512vl") && has!("avx512bw") && has!("avx512dq") && has!("avx2") && has!("fma") {
                return Isa::Avx512;
            }
            if has!("avx2") && has!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Baseline
    }

    /// What the kernels use: [`Isa::detected`], lowered to AVX2 by `GPTRAIN_ISA=avx2` (to
    /// measure on an AVX-512 machine what an AVX2-only one would do: the loops, the matmuls
    /// and the peak probe all switch). Fixed for the life of the process. An invalid
    /// `GPTRAIN_ISA` is reported by [`check_env`]; here it is ignored.
    pub fn get() -> Isa {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| cap_from_env().ok().flatten().map_or(Isa::detected(), |cap| cap.min(Isa::detected())))
    }

    /// Whether `GPTRAIN_ISA` holds the kernels below what the CPU has.
    pub fn is_capped() -> bool {
        Isa::get() < Isa::detected()
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Baseline => "baseline",
            Isa::Avx2 => "AVX2",
            Isa::Avx512 => "AVX-512",
        }
    }
}

/// `GPTRAIN_ISA` as a cap: `None` when unset (or `avx512`, no cap below what the CPU has).
fn cap_from_env() -> Result<Option<Isa>> {
    let Some(v) = std::env::var_os("GPTRAIN_ISA").filter(|v| !v.is_empty()) else { return Ok(None) };
    match v.to_str().map(str::to_ascii_lowercase).as_deref() {
        Some("avx512" | "avx-512") => Ok(None),
        Some("avx2") => Ok(Some(Isa::Avx2)),
        _ => bail!("GPTRAIN_ISA={v:?} is not a choice; hint: use `avx2` (run as an AVX2-only CPU would) or `avx512`, or unset it"),
    }
}

/// Checks the environment variables that steer the CPU kernels (`GPTRAIN_ISA`, `GPTRAIN_GEMM`),
/// so that a typo is an error instead of a silently ignored setting.
pub fn check_env() -> Result<()> {
    if cap_from_env()? == Some(Isa::Avx2) && Isa::detected() < Isa::Avx2 {
        bail!("GPTRAIN_ISA=avx2 but this CPU has no AVX2 with FMA; hint: unset GPTRAIN_ISA");
    }
    super::matmul::GemmLib::from_env()?;
    Ok(())
}

/// Defines `fn name(args) body` that runs the AVX-512 or AVX2 build of `body` that [`Isa::get`]
/// names, else `body` as compiled.
macro_rules! dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                let isa = $crate::backend::cpu::simd::Isa::get();
                #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if isa == $crate::backend::cpu::simd::Isa::Avx512 {
                    // SAFETY: Isa::get says Avx512 only where the CPU has these features.
                    return unsafe { avx512($($arg),*) };
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if isa == $crate::backend::cpu::simd::Isa::Avx2 {
                    // SAFETY: Isa::get says Avx2 only where the CPU has AVX2 and FMA.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

pub(crate) use dispatch;
