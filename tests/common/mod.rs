//! What the test files share: the backends this build has, each with the tolerances of the
//! precision it computes in (candle's `test_device!` is the model), and running the binary as a
//! user would.
#![allow(dead_code, unused_macros, unused_imports)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `gptrain ARGS` in `dir` (its CPU-peak cache there too): (exit code, stdout, stderr).
pub fn gptrain(args: &[&str], dir: &Path) -> (i32, String, String) {
    gptrain_env(args, dir, &[])
}

/// As [`gptrain`], with each of `env`'s variables set (Some) or removed (None).
pub fn gptrain_env(args: &[&str], dir: &Path, env: &[(&str, Option<&str>)]) -> (i32, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gptrain"));
    c.args(args).current_dir(dir).env("XDG_CACHE_HOME", dir);
    for &(var, value) in env {
        match value {
            Some(v) => c.env(var, v),
            None => c.env_remove(var),
        };
    }
    let out = c.output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A new empty folder for test `name` of this process (no `data/` beside it, as on a fresh
/// clone).
pub fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gptrain-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// How close a backend must come to the PyTorch fp32 reference.
#[derive(Clone, Copy, Debug)]
pub struct Tol {
    /// Relative error of a loss.
    pub loss: f64,
    /// Relative L2 error of a tensor (logits, a gradient, parameters after training), and
    /// relative error of a gradient norm.
    pub tensor: f64,
    /// Max abs error of a logit between the KV-cache decode and the full forward.
    pub logit: f32,
    /// Relative L2 error of a parameter tensor after 10 AdamW steps. Adam divides each gradient
    /// by its running RMS, so a bias whose gradient is small and noisy moves by about the
    /// learning rate whatever that gradient's rounding: under bf16 autocast PyTorch's own `fcb`
    /// ends 1.2% off its fp32 run (fp16: 0.1%).
    pub trained: f64,
}

/// An fp32 backend.
pub const F32: Tol = Tol { loss: 1e-5, tensor: 1e-4, logit: 1e-5, trained: 1e-4 };

/// bf16 mixed precision against PyTorch's bf16 autocast of the same case: both round to 8
/// significant bits (relative step 2^-8 = 3.9e-3) at different places, each ~0.4% off the fp32
/// truth; a tensor may differ by a few of those steps, a mean loss by far less.
pub const BF16: Tol = Tol { loss: 2e-3, tensor: 2e-2, logit: 3e-2, trained: 5e-2 };

/// fp16 mixed precision against PyTorch's fp16 autocast: 11 significant bits (2^-11 = 4.9e-4).
pub const FP16: Tol = Tol { loss: 3e-4, tensor: 3e-3, logit: 4e-3, trained: 1e-2 };

/// The CUDA backend in f32: cuBLASLt's fp32 products and the kernels' sums run in another order
/// than the CPU's, so a little looser than [`F32`]. (Untested on a GPU so far: a first GPU run
/// may show these need adjusting.)
pub const CUDA_F32: Tol = Tol { loss: 1e-4, tensor: 1e-3, logit: 1e-4, trained: 1e-3 };

/// Says a test was skipped, on the terminal even while the test harness captures output (it
/// captures `print!`/`eprint!`, not writes to the stderr handle), so a skip is never silent.
pub fn skipped(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{test}: skipped: {why}");
}

/// The variable naming a folder built by `tools/cuda-emu/build.sh`: the `cuda` tests then run
/// on that emulator (the CPU standing in for the driver, cuBLASLt and NVRTC) instead of a GPU.
pub const CUDA_EMU: &str = "GPTRAIN_CUDA_EMU";

/// The emulator's folder: the one [`CUDA_EMU`] names (`.ci/run` builds it), else one built here
/// by `tools/cuda-emu/build.sh` (once per test process); or why there is none.
pub fn emulator() -> Result<PathBuf, String> {
    static EMU: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    EMU.get_or_init(|| {
        if let Some(d) = std::env::var_os(CUDA_EMU).filter(|d| !d.is_empty()) {
            return Ok(PathBuf::from(d));
        }
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cuda-emu");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/cuda-emu/build.sh");
        let out = Command::new("bash").arg(&script).arg(&dir).output().map_err(|e| format!("bash: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "tools/cuda-emu/build.sh failed (a C++17 compiler is needed): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(dir)
    })
    .clone()
}

/// The emulator, or None after saying `test` was skipped (a failure when [`CUDA_EMU`] names one).
pub fn emu_or_skip(test: &str) -> Option<PathBuf> {
    match emulator() {
        Ok(d) => Some(d),
        Err(why) if std::env::var_os(CUDA_EMU).is_some() => panic!("{CUDA_EMU} is set: {why}"),
        Err(why) => {
            skipped(test, &why);
            None
        }
    }
}

/// Runs `gptrain ARGS` in `dir` with the emulator `emu` as its CUDA (kernels cached beside it),
/// and `env`'s variables set or removed as [`gptrain_env`] does.
pub fn on_emu(emu: &Path, args: &[&str], dir: &Path, env: &[(&str, Option<&str>)]) -> (i32, String, String) {
    let e = emu.to_str().expect("a UTF-8 path");
    let cache = emu.join("cache");
    let mut all = vec![("LD_LIBRARY_PATH", Some(e)), ("GPTRAIN_CUDA_LIB_DIR", Some(e)), ("XDG_CACHE_HOME", cache.to_str())];
    all.extend_from_slice(env);
    gptrain_env(args, dir, &all)
}

/// The backend the `cuda` tests run on: the emulator when [`CUDA_EMU`] names one, else the
/// first usable GPU, else why not (for "skipped: ..."). A broken emulator fails the test.
pub fn cuda() -> Result<gptrain::backend::cuda::Cuda, String> {
    if let Some(dir) = std::env::var_os(CUDA_EMU).filter(|d| !d.is_empty()) {
        // asked for, so a failure fails the test (never a skip)
        gptrain::backend::cuda::libs::prefer(Path::new(&dir)).unwrap_or_else(|e| panic!("{CUDA_EMU}: {e}"));
        return Ok(gptrain::backend::cuda::Cuda::first().unwrap_or_else(|e| panic!("{CUDA_EMU} is set but its emulated GPU failed: {e:#}")));
    }
    gptrain::backend::cuda::Cuda::first()
        .map_err(|why| format!("no CUDA device ({why}); {CUDA_EMU}=<folder of tools/cuda-emu/build.sh> runs them on the CPU emulator"))
}

/// `backend_tests!(a, b, ...)`: for each generic test `fn a<B: Backend + Clone>(backend: B, tol:
/// Tol)` of the file, a module `a` with one `#[test]` per backend this build has: the CPU's fast
/// kernels, its reference kernels, and the CUDA backend ([`cuda`]: the emulator if asked for,
/// else the first usable GPU; "skipped: no CUDA device" on a machine without either).
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn cpu_fast() {
                super::$name(gptrain::backend::cpu::Cpu::FAST, $crate::common::F32)
            }
            #[test]
            fn cpu_reference() {
                super::$name(gptrain::backend::cpu::Cpu::REFERENCE, $crate::common::F32)
            }
            #[test]
            fn cuda() {
                match $crate::common::cuda() {
                    Ok(gpu) => super::$name(gpu, $crate::common::CUDA_F32),
                    Err(why) => $crate::common::skipped(concat!(stringify!($name), "::cuda"), &why),
                }
            }
        }
    )*};
}
pub(crate) use backend_tests;
