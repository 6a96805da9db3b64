//! Runtime dispatch of plain loops to AVX-512 or AVX2 builds of the same code.
//!
//! The crate is compiled for baseline x86-64 (SSE2) so the binary runs on any x86-64 CPU; the
//! hot elementwise loops are written once as ordinary Rust and [`dispatch!`] compiles them again
//! with AVX-512 and with AVX2 enabled, chosen at run time. The arithmetic is the same (Rust never
//! contracts `a * b + c` into a fused multiply-add; where a kernel wants one it writes `mul_add`,
//! which rounds once on every path), so results do not depend on which version runs.

/// Defines `fn name(args) body` that runs an AVX-512 or AVX2 build of `body` when the CPU has it.
macro_rules! dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vl") && std::is_x86_feature_detected!("avx512bw") && std::is_x86_feature_detected!("avx512dq") {
                    // SAFETY: the CPU supports these AVX-512 subsets (checked just above).
                    return unsafe { avx512($($arg),*) };
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

pub(crate) use dispatch;
