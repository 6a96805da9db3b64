//! Runtime dispatch of plain loops to AVX-512 or AVX2 builds of the same code.
//!
//! The crate is compiled for baseline x86-64 (SSE2) so the binary runs on any x86-64 CPU; the
//! hot elementwise loops are written once as ordinary Rust and [`dispatch!`] compiles them again
//! with AVX-512 and with AVX2 enabled, chosen at run time by [`Isa::get`]. The arithmetic is the
//! same (Rust never contracts `a * b + c` into a fused multiply-add; where a kernel wants one it
//! writes `mul_add`, which rounds once on every path), so results do not depend on which version
//! runs.
//!
//! The bf16 matrix products pick their own tier ([`Bf16Isa`]: AMX, AVX-512 BF16 or portable)
//! under the same `GPTRAIN_ISA`.

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
    /// and the peak probe all switch; the other choices only steer the bf16 products,
    /// [`Bf16Isa`]). Fixed for the life of the process. An invalid `GPTRAIN_ISA` is reported by
    /// [`check_env`]; here it is ignored.
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

/// `GPTRAIN_ISA` as a cap on the f32 kernels: `None` when unset (or any choice at or above
/// `avx512`: no cap below what the CPU has).
fn cap_from_env() -> Result<Option<Isa>> {
    Ok(caps_from_env()?.map(|(isa, _)| isa))
}

/// `GPTRAIN_ISA` as caps on the f32 kernels and on the bf16 products; `None` when unset.
fn caps_from_env() -> Result<Option<(Isa, Bf16Isa)>> {
    let Some(v) = std::env::var_os("GPTRAIN_ISA").filter(|v| !v.is_empty()) else { return Ok(None) };
    parse_caps(&v).map(Some)
}

/// A `GPTRAIN_ISA` value as caps on the f32 kernels and on the bf16 products.
fn parse_caps(v: &std::ffi::OsStr) -> Result<(Isa, Bf16Isa)> {
    match v.to_str().map(str::to_ascii_lowercase).as_deref() {
        Some("amx") => Ok((Isa::Avx512, Bf16Isa::Amx)),
        Some("avx512bf16" | "avx-512-bf16") => Ok((Isa::Avx512, Bf16Isa::Avx512Bf16)),
        Some("avx512" | "avx-512") => Ok((Isa::Avx512, Bf16Isa::Portable)),
        Some("avx2") => Ok((Isa::Avx2, Bf16Isa::Portable)),
        _ => bail!(
            "GPTRAIN_ISA={v:?} is not a choice; hint: use `avx2` (run as an AVX2-only CPU would), `avx512` (no bf16 \
             instructions), `avx512bf16` (bf16 products without AMX) or `amx` (the best this CPU has), or unset it"
        ),
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

/// The instructions the bf16 matrix products use (`matmul_bf16.rs`), ordered narrow to wide.
/// Separate from [`Isa`], which the f32 kernels follow and which these choices leave alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Bf16Isa {
    /// No bf16 instructions: the f32 product of converted copies.
    Portable,
    /// AVX-512 BF16 dot products (`vdpbf16ps`), with AVX-512 F, VL, BW and DQ.
    Avx512Bf16,
    /// AMX tiles (`tdpbf16ps`), with everything `Avx512Bf16` needs.
    Amx,
}

impl Bf16Isa {
    /// What this CPU has (AMX before the OS is asked for it).
    pub fn detected() -> Bf16Isa {
        #[cfg(target_arch = "x86_64")]
        if Isa::detected() == Isa::Avx512 && std::is_x86_feature_detected!("avx512bf16") {
            // CPUID leaf 7: EDX bit 22 AMX-BF16, bit 24 AMX-TILE (std's detection of them is unstable)
            let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
            return if edx >> 22 & 1 == 1 && edx >> 24 & 1 == 1 { Bf16Isa::Amx } else { Bf16Isa::Avx512Bf16 };
        }
        Bf16Isa::Portable
    }

    /// What the bf16 products use: [`Bf16Isa::detected`], lowered by `GPTRAIN_ISA` (`amx` or
    /// unset: the best; `avx512bf16`: no AMX; `avx512` or `avx2`: portable) and to
    /// `Avx512Bf16` where the OS refuses AMX. Fixed for the life of the process.
    pub fn get() -> Bf16Isa {
        Bf16Isa::chosen().0
    }

    /// A short description of [`Bf16Isa::get`] and why it is that, for banners.
    pub fn describe() -> &'static str {
        &Bf16Isa::chosen().1
    }

    /// Whether this tier can run in this process: the CPU has it and, for `Amx`, Linux grants
    /// the tiles (asked once). `Err` says why not.
    pub fn can_run(self) -> Result<(), &'static str> {
        match self {
            _ if self <= Bf16Isa::Portable => Ok(()),
            _ if Bf16Isa::detected() < Bf16Isa::Avx512Bf16 => Err("this CPU has no AVX-512 BF16"),
            Bf16Isa::Amx if Bf16Isa::detected() < Bf16Isa::Amx => Err("this CPU has no AMX tiles with bf16"),
            Bf16Isa::Amx => amx_permission(),
            _ => Ok(()),
        }
    }

    /// The tier, and its description.
    fn chosen() -> &'static (Bf16Isa, String) {
        static CHOSEN: std::sync::OnceLock<(Bf16Isa, String)> = std::sync::OnceLock::new();
        CHOSEN.get_or_init(|| {
            let detected = Bf16Isa::detected();
            let cap = caps_from_env().ok().flatten().map_or(Bf16Isa::Amx, |(_, cap)| cap);
            let why = if cap < detected { " (held there by GPTRAIN_ISA)" } else { "" };
            match cap.min(detected) {
                Bf16Isa::Amx => match amx_permission() {
                    Ok(()) => (Bf16Isa::Amx, "AMX bf16 tiles".into()),
                    Err(e) => faster_of_avx512bf16_and_f32(&format!("AMX permission refused by the OS: {e}")),
                },
                // asked for by GPTRAIN_ISA: kept, to be measured
                Bf16Isa::Avx512Bf16 if !why.is_empty() => (Bf16Isa::Avx512Bf16, format!("AVX-512 BF16{why}")),
                Bf16Isa::Avx512Bf16 => faster_of_avx512bf16_and_f32("no AMX on this CPU"),
                Bf16Isa::Portable if why.is_empty() => {
                    (Bf16Isa::Portable, "portable f32 products of converted copies (no AVX-512 BF16 on this CPU)".into())
                }
                Bf16Isa::Portable => (Bf16Isa::Portable, format!("portable f32 products of converted copies{why}")),
            }
        })
    }
}

/// AVX-512 BF16's products, unless its dot product (`vdpbf16ps`) is measured slower than the f32
/// FMA here (on some CPUs it runs at half the FMA rate): then the portable path, whose products
/// are f32. `why`: why AMX is not used.
fn faster_of_avx512bf16_and_f32(why: &str) -> (Bf16Isa, String) {
    let bf16 = super::matmul_bf16::peak::probe_tier(Bf16Isa::Avx512Bf16).unwrap_or(0.0);
    let f32 = crate::perf::device::probe_cpu_peak();
    if prefers_f32(bf16, f32) {
        let what = format!("portable f32 products of converted copies ({why}; AVX-512 BF16's vdpbf16ps measured at {:.0} GFLOP/s, below the f32 FMA's {:.0})", bf16 / 1e9, f32 / 1e9);
        (Bf16Isa::Portable, what)
    } else {
        (Bf16Isa::Avx512Bf16, format!("AVX-512 BF16 ({why})"))
    }
}

/// Whether bf16 products should run as f32 ones: the bf16 dot product's measured peak (two
/// products per lane) is below the f32 FMA's.
fn prefers_f32(bf16_flops: f64, f32_flops: f64) -> bool {
    bf16_flops < f32_flops
}

/// Asks Linux, once, for this process's permission to use the AMX tile data (`arch_prctl`
/// `ARCH_REQ_XCOMP_PERM` for `XFEATURE_XTILEDATA`), which every thread then has.
fn amx_permission() -> Result<(), &'static str> {
    static GRANTED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    GRANTED.get_or_init(request_amx).as_ref().map_err(String::as_str).copied()
}

/// The request [`amx_permission`] makes.
fn request_amx() -> Result<(), String> {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: arch_prctl with ARCH_REQ_XCOMP_PERM takes a feature number and touches no
        // memory of ours; it only changes which register state the kernel lets us use.
        let rc = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) };
        if rc == 0 {
            return Ok(());
        }
        Err(std::io::Error::last_os_error().to_string())
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    Err("only Linux is asked for AMX".into())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gptrain_isa_caps_the_f32_kernels_and_the_bf16_products_apart() {
        let caps = |v: &str| parse_caps(std::ffi::OsStr::new(v)).ok();
        assert_eq!(caps("amx"), Some((Isa::Avx512, Bf16Isa::Amx)));
        assert_eq!(caps("AVX512BF16"), Some((Isa::Avx512, Bf16Isa::Avx512Bf16)));
        // avx512 keeps the f32 kernels where they were and takes the bf16 instructions away
        assert_eq!(caps("avx512"), Some((Isa::Avx512, Bf16Isa::Portable)));
        assert_eq!(caps("avx2"), Some((Isa::Avx2, Bf16Isa::Portable)));
        let err = parse_caps(std::ffi::OsStr::new("avx3")).unwrap_err().to_string();
        assert!(err.contains("`avx512bf16`") && err.contains("`amx`") && err.ends_with("or unset it"), "{err}");
        // what the products run is never above what this CPU and OS allow
        println!("bf16 products: {}", Bf16Isa::describe());
        assert!(Bf16Isa::get().can_run().is_ok(), "{}", Bf16Isa::describe());
        assert!(Bf16Isa::Portable.can_run().is_ok());
    }
}
