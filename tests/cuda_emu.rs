//! The CUDA backend run through the binary as a user would, on `tools/cuda-emu`: the CPU
//! standing in for the NVIDIA driver, cuBLASLt and NVRTC, so that the backend's host code and
//! every kernel run on a machine without a GPU (CI's). What it proves is that the code does
//! what the CPU backend does, step by step; not that a GPU runs it fast, nor that a real
//! cuBLASLt or NVRTC agrees (`tools/gpu_check.sh` on a GPU machine does that).
//!
//! The emulator is the folder `GPTRAIN_CUDA_EMU` names (`.ci/run` builds it), else one built
//! here by `tools/cuda-emu/build.sh`; without a C++ compiler each test says it was skipped.

mod common;

use common::{emu_or_skip, on_emu, tmp};
use std::path::Path;

/// A small model on the built-in Shakespeare, logged every iteration, dropout on. Heads of 16
/// channels: in bf16/f16 attention runs on the tensor-core kernels (the emulator's `mma`).
const SMALL: [&str; 21] = [
    "train",
    "--set",
    "n_layer=2",
    "--set",
    "n_embd=32",
    "--set",
    "n_head=2",
    "--set",
    "block_size=16",
    "--set",
    "batch_size=4",
    "--set",
    "dropout=0.1",
    "--set",
    "eval_interval=5",
    "--set",
    "eval_iters=2",
    "--set",
    "log_interval=1",
    "--set",
    "max_new_tokens=0",
];

/// The `iter` records of a run's metrics.jsonl: (loss, grad norm) per iteration.
fn losses(metrics: &Path) -> Vec<(f64, f64)> {
    std::fs::read_to_string(metrics)
        .unwrap_or_else(|e| panic!("{}: {e}", metrics.display()))
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "iter")
        .map(|v| (v["loss"].as_f64().unwrap(), v["grad_norm"].as_f64().unwrap()))
        .collect()
}

/// The run's line on its kernels: `variants` loaded, every one planned ahead of its first
/// launch and every planned one launched (`Backend::prepare` knows what a run launches).
fn all_kernels_planned(out: &str, variants: usize) {
    let line = out.lines().find(|l| l.starts_with("kernels: ")).unwrap_or_else(|| panic!("no line on the kernels:\n{out}"));
    assert!(line.starts_with(&format!("kernels: {variants} variants for sm_90: ")), "{line}");
    assert!(line.contains("; launches waited ") && !line.contains("not planned") && !line.contains("not launched"), "{line}");
}

fn train(emu: &Path, dir: &Path, extra: &[&str]) -> String {
    let mut args = SMALL.to_vec();
    for s in extra {
        args.extend(["--set", s]);
    }
    let (code, out, err) = on_emu(emu, &args, dir, &[]);
    assert_eq!(code, 0, "gptrain {}:\n{out}\n{err}", args.join(" "));
    out
}

/// `gptrain train` with nothing named runs nanoGPT README's CPU preset: with a GPU there it says
/// the GPU stays idle and how to use it; naming the device silences it.
#[test]
fn a_default_run_says_the_gpu_stays_idle() {
    let Some(emu) = emu_or_skip("a_default_run_says_the_gpu_stays_idle") else { return };
    let d = tmp("emu-idle");
    for (extra, said, out_dir) in [(None, true, "out_dir=a"), (Some("device=cpu"), false, "out_dir=b")] {
        let mut args =
            vec!["train", "--set", "max_iters=1", "--set", "eval_iters=1", "--set", "n_layer=1", "--set", "n_embd=32", "--set", out_dir];
        args.extend(extra.iter().flat_map(|s| ["--set", *s]));
        let (code, out, err) = on_emu(&emu, &args, &d, &[]);
        assert_eq!(code, 0, "{out}\n{err}");
        assert_eq!(err.contains("the GPU cuda:0 (cuda-emu") && err.contains("--preset shakespeare-char"), said, "{extra:?}: {err}");
    }
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn check_passes_on_the_emulated_gpu() {
    let Some(emu) = emu_or_skip("check_passes_on_the_emulated_gpu") else { return };
    let d = tmp("emu-check");
    // the blocks of each launch last first (`GPTRAIN_EMU_BLOCK_ORDER`): a GPU runs them in any
    // order, so no kernel may read what another block of its launch writes (the other tests
    // run them first first)
    let (code, out, err) =
        on_emu(&emu, &["check", "--device", "cuda", "--dtype", "all"], &d, &[("GPTRAIN_EMU_BLOCK_ORDER", Some("reverse"))]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("cuda:0: cuda-emu"), "{out}");
    assert!(out.contains("summary: 159 passed, 0 failed, 0 skipped (fp32, bf16, fp16)"), "{out}");
    all_kernels_planned(&out, 27);
    // a card before compute capability 8.0 has no bf16: `train` refuses it there, so `check`
    // skips it (with the reason) rather than passing it
    let t4 = [("GPTRAIN_EMU_CC", Some("7.5"))];
    let (code, out, err) = on_emu(&emu, &["check", "--device", "cuda", "--dtype", "bf16"], &d, &t4);
    // nothing was proven: not a success
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.starts_with("error: nothing checked: every check was skipped") && err.lines().count() == 1, "{err}");
    assert!(out.contains("summary: 0 passed, 0 failed, 53 skipped (bf16)"), "{out}");
    assert!(out.contains("SKIP: dtype bfloat16 needs compute capability 8.0 or newer, and cuda:0 (cuda-emu"), "{out}");
    // a failed check (an allocation the emulator refuses) says what to try next
    let fail = [("GPTRAIN_EMU_FAIL_ALLOC", Some("40"))];
    let (code, out, err) = on_emu(&emu, &["check", "--device", "cuda", "--dtype", "float32"], &d, &fail);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.starts_with("error: check failed: 1 of 53 checks") && err.lines().count() == 1, "{err}");
    let next = out.lines().find(|l| l.starts_with("next: ")).unwrap_or_else(|| panic!("no next step: {out}"));
    for step in ["GPTRAIN_CUDA_SYNC=1", "GPTRAIN_CUDA_ATTENTION=tiled", "GPTRAIN_CUDA_GELU_FUSION=0", "--set device=cpu", "--json"] {
        assert!(next.contains(step), "{next}");
    }
    // `estimate` without --device takes this machine's GPU: one not in the table is named,
    // with the way out; given a peak, it estimates for it
    let (code, _, err) = on_emu(&emu, &["estimate", "--preset", "shakespeare-char"], &d, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("this machine's GPU, cuda-emu") && err.contains("--peak-tflops") && err.lines().count() == 1, "{err}");
    let (code, out, err) = on_emu(&emu, &["estimate", "--preset", "shakespeare-char", "--peak-tflops", "100"], &d, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("device: cuda-emu") && out.contains("bf16 peak 100.0 TFLOP/s"), "{out}");
    // and with the card's memory as its driver reports it (the emulator's 16 GiB)
    assert!(out.contains(" of 16.00 GiB -> fits") && out.contains("largest micro-batch that fits"), "{out}");
    std::fs::remove_dir_all(d).ok();
}

/// fp32 on the (emulated) GPU follows the CPU iteration by iteration, gives bitwise the same
/// losses run after run, and its checkpoint resumes and samples on the CPU.
#[test]
fn fp32_training_on_the_gpu_follows_the_cpu_and_repeats_bitwise() {
    let Some(emu) = emu_or_skip("fp32_training_on_the_gpu_follows_the_cpu_and_repeats_bitwise") else { return };
    let d = tmp("emu-fp32");
    let run = |name: &str, device: &str| {
        let out = train(&emu, &d, &["max_iters=12", &format!("device={device}"), "dtype=float32", &format!("out_dir={name}")]);
        (out, losses(&d.join(name).join("metrics.jsonl")))
    };
    let (out, gpu) = run("gpu", "cuda");
    assert!(out.contains("device: cuda:0") || out.contains("cuda-emu"), "{out}");
    all_kernels_planned(&out, 7);
    let (_, cpu) = run("cpu", "cpu");
    let (_, again) = run("gpu2", "cuda");
    assert_eq!(gpu.len(), 12);
    assert_eq!(gpu, again, "two GPU runs of one seed differ");
    for (i, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
        let tol = common::CUDA_F32;
        assert!(((g.0 - c.0) / c.0).abs() <= tol.loss, "iteration {i}: loss {} on the GPU, {} on the CPU", g.0, c.0);
        assert!(((g.1 - c.1) / c.1).abs() <= tol.tensor, "iteration {i}: grad norm {} on the GPU, {} on the CPU", g.1, c.1);
    }
    assert!(gpu[11].0 < gpu[0].0, "the loss did not fall: {gpu:?}");
    // an evaluation alone plans (and launches) the forward's kernels only; with no kernel
    // cached, its wait for them is warm-up, not evaluation time
    let cold = d.join("cold-cache");
    let args = [
        SMALL.to_vec(),
        ["max_iters=12", "init_from=resume", "eval_only=true", "device=cuda", "dtype=float32", "out_dir=gpu"]
            .iter()
            .flat_map(|s| ["--set", s])
            .collect(),
    ]
    .concat();
    let (code, out, err) = on_emu(&emu, &args, &d, &[("XDG_CACHE_HOME", cold.to_str())]);
    assert_eq!(code, 0, "{out}\n{err}");
    all_kernels_planned(&out, 6);
    assert!(!out.contains("from the cache"), "{out}");
    let summary =
        std::fs::read_to_string(d.join("gpu/metrics.jsonl")).unwrap().lines().rev().find(|l| l.contains("\"summary\"")).map(String::from);
    let v: serde_json::Value = serde_json::from_str(&summary.unwrap()).unwrap();
    let (warm_up, eval) = (v["summary"]["warmup_s"].as_f64().unwrap(), v["summary"]["eval_s"].as_f64().unwrap());
    assert!(warm_up > eval, "the kernels' compile is warm-up: warm-up {warm_up} s, evaluation {eval} s");
    assert!(out.contains(&format!("(eval {}, warm-up ", gptrain::perf::meter::human_duration(eval))), "{out}");
    // the GPU's checkpoint goes on training on the CPU, and samples there
    let (_, resumed) = run_resumed(&emu, &d, "gpu", "cpu");
    assert_eq!(resumed.len(), 12 + 4);
    // and samples on either (the GPU's with its KV cache on the device)
    for device in ["device=cpu", "device=cuda"] {
        let args = ["sample", "--set", "out_dir=gpu", "--set", device, "--set", "num_samples=1", "--set", "max_new_tokens=20"];
        let (code, out, err) = on_emu(&emu, &args, &d, &[]);
        assert_eq!(code, 0, "{device}: {out}\n{err}");
        assert!(out.contains("---------------"), "{device}: {out}");
        // the samples alone on standard output; the GPU's kernels line on standard error
        assert!(!out.contains("kernels: "), "{device}: {out}");
        if device == "device=cuda" {
            assert!(err.contains("sampling on cuda-emu") && err.contains("in float32"), "{err}");
            all_kernels_planned(&err, 4); // sampling's forward, one position at a time
        }
    }
    std::fs::remove_dir_all(d).ok();
}

/// Resumes the run in `out_dir` for 4 more iterations on `device`.
fn run_resumed(emu: &Path, dir: &Path, out_dir: &str, device: &str) -> (String, Vec<(f64, f64)>) {
    let out =
        train(emu, dir, &["max_iters=16", "init_from=resume", &format!("device={device}"), "dtype=float32", &format!("out_dir={out_dir}")]);
    (out, losses(&dir.join(out_dir).join("metrics.jsonl")))
}

/// bf16 and fp16 (with loss scaling) train on the GPU as on the CPU: the same losses within
/// the precision's rounding, the same loss-scale bookkeeping.
#[test]
fn bf16_and_fp16_train_on_the_gpu_as_on_the_cpu() {
    let Some(emu) = emu_or_skip("bf16_and_fp16_train_on_the_gpu_as_on_the_cpu") else { return };
    let d = tmp("emu-mixed");
    for (dtype, tol) in [("bfloat16", 2e-2), ("float16", 3e-3)] {
        let run = |device: &str| {
            let name = format!("{dtype}-{device}");
            let out =
                train(&emu, &d, &["max_iters=12", &format!("device={device}"), &format!("dtype={dtype}"), &format!("out_dir={name}")]);
            (out, losses(&d.join(&name).join("metrics.jsonl")))
        };
        let (out, gpu) = run("cuda");
        assert!(out.contains(&format!("dtype: {}", if dtype == "bfloat16" { "bf16" } else { "fp16" })), "{out}");
        all_kernels_planned(&out, 7);
        let (_, cpu) = run("cpu");
        for (i, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
            assert!(((g.0 - c.0) / c.0).abs() <= tol, "{dtype} iteration {i}: loss {} on the GPU, {} on the CPU", g.0, c.0);
        }
        assert!(gpu[11].0 < gpu[0].0, "{dtype}: the loss did not fall: {gpu:?}");
    }
    // a first step that overflows in fp16 runs no AdamW: the kernels are told after the first
    // update, with AdamW's among them
    let out = train(&emu, &d, &["max_iters=3", "device=cuda", "dtype=float16", "batch_size=1", "block_size=1", "out_dir=overflow"]);
    assert!(out.lines().any(|l| l.starts_with("iter 0:") && l.contains("update skipped")), "{out}");
    all_kernels_planned(&out, 7);
    std::fs::remove_dir_all(d).ok();
}

/// Ctrl-C on the GPU finishes the iteration, saves, and says how to resume, as on the CPU.
#[test]
fn sigint_on_the_gpu_saves_and_stops() {
    use std::io::BufRead;
    let Some(emu) = emu_or_skip("sigint_on_the_gpu_saves_and_stops") else { return };
    let d = tmp("emu-sigint");
    let mut args = SMALL.to_vec();
    args.extend(["--set", "max_iters=100000", "--set", "eval_interval=100000", "--set", "device=cuda", "--set", "out_dir=out"]);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gptrain"))
        .args(&args)
        .current_dir(&d)
        .env("XDG_CACHE_HOME", emu.join("cache"))
        .env("LD_LIBRARY_PATH", &emu)
        .env("GPTRAIN_CUDA_LIB_DIR", &emu)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().starts_with("iter 3:") {
            break;
        }
    }
    let drain = std::thread::spawn(move || lines.map_while(Result::ok).count());
    assert!(std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    drain.join().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("init_from=resume") && !err.contains("panicked"), "{err}");
    let it: u64 = err.split("interrupted after iteration ").nth(1).and_then(|s| s.split(';').next()).and_then(|s| s.parse().ok()).unwrap();
    assert!(d.join(format!("out/ckpt-{:06}/MANIFEST.json", it + 1)).exists(), "{err}");
    std::fs::remove_dir_all(d).ok();
}

/// The emulator itself: shuffles and barriers compute what a GPU does, a barrier not every
/// thread reaches is reported, a copy out of range is refused and a write past a buffer's end
/// stops the process (`tools/cuda-emu/selftest.cpp`).
#[test]
fn the_emulator_catches_deadlocks_and_out_of_bounds_accesses() {
    let Some(emu) = emu_or_skip("the_emulator_catches_deadlocks_and_out_of_bounds_accesses") else { return };
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cuda-emu-selftest-{}", std::process::id()));
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/cuda-emu/selftest.cpp");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let built = std::process::Command::new(&cxx)
        .args(["-std=c++17", "-O1", "-I"])
        .arg(&emu)
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .arg("-ldl")
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let out = std::process::Command::new(&exe).arg(&emu).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.lines().filter(|l| l.starts_with("ok ")).count(), 27, "{text}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("out-of-bounds access past the end of a device buffer"), "{err}");
    std::fs::remove_file(exe).ok();
}

/// The GPU's faster paths switch off, and fall back, and `check` passes every way: with
/// `GPTRAIN_CUDA_ATTENTION=tiled` no tensor-core attention kernel launches; with GELU's epilogue
/// refused by cuBLASLt (the emulator's `GPTRAIN_EMU_NO_EPILOGUE=1|2|3`) or turned off
/// (`GPTRAIN_CUDA_GELU_FUSION=0`) the fused backward runs gptrain's GELU kernel instead (by
/// default only the standalone GELU case launches it); with the bias epilogue refused for one
/// row, gptrain's bias kernel adds it. A bad value is one line, exit 1.
#[test]
fn the_fast_paths_switch_off_and_fall_back_and_check_still_passes() {
    let Some(emu) = emu_or_skip("the_fast_paths_switch_off_and_fall_back_and_check_still_passes") else { return };
    let d = tmp("emu-switches");
    let check = ["check", "--device", "cuda", "--dtype", "bf16"];
    let launches = |env: &[(&str, Option<&str>)], kernel: &str| {
        let mut all = vec![("GPTRAIN_EMU_TRACE", Some("1"))];
        all.extend_from_slice(env);
        let (code, out, err) = on_emu(&emu, &check, &d, &all);
        assert_eq!(code, 0, "{env:?}:\n{out}\n{err}");
        assert!(out.contains("0 failed, 0 skipped (bf16)"), "{env:?}:\n{out}");
        err.lines().filter(|l| l.starts_with("cuda-emu: ") && l.contains(kernel)).count()
    };
    assert!(launches(&[], "attention_tc_") >= 3, "the tensor-core attention never ran");
    assert_eq!(launches(&[("GPTRAIN_CUDA_ATTENTION", Some("tiled"))], "attention_tc_"), 0);
    assert_eq!(launches(&[], "gelu_backward_bf16"), 1, "GELU's backward ran outside the epilogue");
    let refused = launches(&[("GPTRAIN_EMU_NO_EPILOGUE", Some("1"))], "gelu_backward_bf16");
    assert!(refused > 1, "no fallback when cuBLASLt refuses the epilogue ({refused})");
    assert_eq!(launches(&[("GPTRAIN_CUDA_GELU_FUSION", Some("0"))], "gelu_backward_bf16"), refused);
    // refused as an invalid value by the heuristic, or only by the product itself: the same fallback
    for how in ["2", "3"] {
        assert_eq!(launches(&[("GPTRAIN_EMU_NO_EPILOGUE", Some(how))], "gelu_backward_bf16"), refused, "refused by {how}");
    }
    // a bias off 16-byte alignment is never given to the epilogue (check's unaligned case); a
    // biased product of one row refused by cuBLASLt's heuristic (INVALID_VALUE, as PyTorch
    // reports of it) runs alone too (check's one-row case); both then take gptrain's kernel
    assert_eq!(launches(&[], "bias_add_bf16"), 1, "the bias kernel ran for an aligned bias, or not for the unaligned one");
    // in every storage type (fp32's serves tf32 too)
    let refused = [("GPTRAIN_EMU_NO_BIAS_VECTOR", Some("1")), ("GPTRAIN_EMU_TRACE", Some("1"))];
    let (code, out, err) = on_emu(&emu, &["check", "--device", "cuda", "--dtype", "all"], &d, &refused);
    assert_eq!(code, 0, "{out}\n{err}");
    for s in ["f32", "bf16", "f16"] {
        let kernel = format!("bias_add_{s}");
        let n = err
            .lines()
            .filter(|l| l.starts_with("cuda-emu: ") && l.split(|c: char| !c.is_alphanumeric() && c != '_').any(|w| w == kernel))
            .count();
        assert_eq!(n, 2, "{kernel} ran {n} times");
    }
    // waiting for each op changes nothing but the time
    assert_eq!(launches(&[("GPTRAIN_CUDA_SYNC", Some("1"))], "gelu_backward_bf16"), 1);
    for (var, bad) in [("GPTRAIN_CUDA_ATTENTION", "fast"), ("GPTRAIN_CUDA_GELU_FUSION", "yes"), ("GPTRAIN_CUDA_SYNC", "on")] {
        let (code, _, err) = on_emu(&emu, &check, &d, &[(var, Some(bad))]);
        assert_eq!(code, 1, "{var}={bad}: {err}");
        assert!(err.contains(var) && err.trim().lines().count() == 1, "{var}={bad}: {err}");
    }
    std::fs::remove_dir_all(d).ok();
}

/// A kernel's static shared memory counts in the 48 KiB a block may use without opting in, so
/// the generic attention kernels (heads of 12 here) opt in past 48 KiB less their static
/// memory: on sm_90 a real card reserves 1 KiB there, which 48 KiB of scores (block_size 3072)
/// would overflow. The emulator reports an oversized static size instead (cheaper than such
/// a block) and refuses, as a GPU does, a launch that exceeds its allowance: forward,
/// backward and sampling's decode each opt in. A kernel's threads per block, as the driver
/// reports them, are kept the same way: a launch over them is one error line, not a failed
/// launch.
#[test]
fn the_static_shared_memory_a_kernel_reports_counts_against_its_48_kib() {
    let Some(emu) = emu_or_skip("the_static_shared_memory_a_kernel_reports_counts_against_its_48_kib") else { return };
    let d = tmp("emu-static-shared");
    let args = [
        "train",
        "--set",
        "device=cuda",
        "--set",
        "dtype=float32",
        "--set",
        "n_layer=1",
        "--set",
        "n_embd=24",
        "--set",
        "n_head=2",
        "--set",
        "block_size=64",
        "--set",
        "batch_size=1",
        "--set",
        "max_iters=1",
        "--set",
        "eval_iters=1",
        "--set",
        "max_new_tokens=70",
    ];
    // 512 bytes left of 48 KiB: 4 warps' rows of 64 scores (1 KiB) must opt in
    let env = [("GPTRAIN_EMU_STATIC_SHARED", Some("48640")), ("GPTRAIN_EMU_TRACE", Some("1"))];
    let (code, out, err) = on_emu(&emu, &args, &d, &env);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!err.contains("dynamic shared memory, over"), "{err}");
    for kernel in ["attention_forward_f32", "attention_backward_q_f32", "attention_decode_f32"] {
        assert!(err.lines().any(|l| l.starts_with("cuda-emu: ") && l.contains(kernel)), "{kernel} never ran:\n{err}");
    }
    // past the card's limit for static and dynamic together (a Turing card's 64 KiB), one line
    // before the launch: 40 KiB static and 4 warps' rows of 2048 scores (32 KiB)
    let mut long = args.to_vec();
    long.extend(["--set", "block_size=2048", "--set", "out_dir=long"]);
    let turing = [("GPTRAIN_EMU_STATIC_SHARED", Some("40960")), ("GPTRAIN_EMU_CC", Some("7.5"))];
    let (code, out, err) = on_emu(&emu, &long, &d, &turing);
    assert_eq!((code, err.lines().count()), (1, 1), "{out}\n{err}");
    assert!(
        err.contains("attention_forward_f32 needs 72 KiB of shared memory per block and this GPU allows 64 KiB: block_size is too long"),
        "{err}"
    );
    // a card whose registers allow a kernel fewer threads per block than gptrain launches it
    // with: one line naming the kernel and both counts, before the launch
    let mut few = args.to_vec();
    few.extend(["--set", "out_dir=few"]);
    let (code, out, err) = on_emu(&emu, &few, &d, &[("GPTRAIN_EMU_MAX_THREADS", Some("128"))]);
    assert_eq!((code, err.lines().count()), (1, 1), "{out}\n{err}");
    assert!(err.contains("runs at most 128 threads per block on this GPU (its registers), and gptrain launched it with 256"), "{err}");
    assert!(!err.contains("cuda-emu:"), "the launch reached the driver:\n{err}");
    std::fs::remove_dir_all(d).ok();
}

/// A training step talks to the GPU as little as the issue asks: one token upload per
/// micro-batch (inputs, targets and the inputs' order together) and one read-back per step
/// (loss and gradient norm), no round trip per kernel (counted by the emulator's trace of every
/// copy); and cuBLASLt's heuristic is asked once per kind of product, not at every product.
#[test]
fn a_step_uploads_tokens_once_per_micro_batch_and_reads_back_once() {
    let Some(emu) = emu_or_skip("a_step_uploads_tokens_once_per_micro_batch_and_reads_back_once") else { return };
    let d = tmp("emu-copies");
    let args = [
        "train",
        "--set",
        "n_layer=1",
        "--set",
        "n_embd=32",
        "--set",
        "n_head=2",
        "--set",
        "block_size=16",
        "--set",
        "batch_size=4",
        "--set",
        "max_iters=6",
        "--set",
        "gradient_accumulation_steps=3",
        "--set",
        "eval_interval=1000",
        "--set",
        "eval_iters=1",
        "--set",
        "device=cuda",
        "--set",
        "max_new_tokens=0",
        "--set",
        "out_dir=out",
    ];
    let (code, out, err) = on_emu(&emu, &args, &d, &[("GPTRAIN_EMU_TRACE", Some("1"))]);
    assert_eq!(code, 0, "{out}\n{err}");
    let copies = |what: &str, bytes: usize| err.lines().filter(|l| *l == format!("cuda-emu: {what} of {bytes} bytes")).count();
    // B x T tokens of inputs, targets and the inputs' order by token, u32: 4 x 16 x 3 x 4 bytes
    let (tokens, stats) = (4 * 16 * 3 * 4, 2 * 8);
    // the first evaluation (one batch of each split) and 6 steps of 3 micro-batches
    assert_eq!(copies("host-to-device copy", tokens), 2 + 6 * 3, "{err}");
    assert_eq!(copies("device-to-host copy", stats), 2 + 6, "{err}");
    // until the checkpoint is read back (the first large download), nothing else small crosses
    let sizes: Vec<(bool, usize)> = err
        .lines()
        .filter_map(|l| l.strip_prefix("cuda-emu: ")?.split_once(" copy of "))
        .map(|(what, n)| (what == "device-to-host", n.trim_end_matches(" bytes").parse().unwrap()))
        .collect();
    let training = sizes.iter().take_while(|&&(down, n)| !(down && n > stats));
    let other: Vec<_> = training.filter(|&&(_, n)| n < tokens && n != stats).collect();
    assert!(other.is_empty(), "small copies while training: {other:?}\n{err}");
    let asked: Vec<&str> = err.lines().filter_map(|l| l.strip_prefix("cuda-emu: cuBLASLt heuristic ")).collect();
    let kinds: std::collections::BTreeSet<&str> = asked.iter().copied().collect();
    let products = err.lines().filter(|l| l.starts_with("cuda-emu: cuBLASLt matmul ")).count();
    // forward and backward products of one layer, the classifier, and eval's
    assert!(!asked.is_empty() && asked.len() == kinds.len(), "a kind of product asked for twice: {asked:#?}");
    assert!(products >= 10 * asked.len(), "{products} products, {} heuristic queries", asked.len());
    std::fs::remove_dir_all(d).ok();
}

/// A card that runs out of memory in the middle of a step (the emulator fails the allocation
/// the first backward makes) ends the run with one line that says so and how to get out, and
/// the checkpoint already written still resumes.
#[test]
fn running_out_of_gpu_memory_mid_run_is_one_line_and_keeps_the_checkpoints() {
    let Some(emu) = emu_or_skip("running_out_of_gpu_memory_mid_run_is_one_line_and_keeps_the_checkpoints") else { return };
    let d = tmp("emu-oom");
    let run = |extra: &[&str], fail: Option<&str>| {
        let mut args = vec!["train"];
        for s in ["n_layer=1", "n_embd=32", "n_head=2", "block_size=16", "batch_size=4", "eval_interval=5", "eval_iters=1", "device=cuda"]
            .iter()
            .chain(["max_new_tokens=0", "out_dir=out", "always_save_checkpoint=true"].iter())
            .chain(extra)
        {
            args.extend(["--set", s]);
        }
        on_emu(&emu, &args, &d, &[("GPTRAIN_EMU_TRACE", Some("1")), ("GPTRAIN_EMU_FAIL_ALLOC", fail)])
    };
    let (code, out, err) = run(&["max_iters=5"], None);
    assert_eq!(code, 0, "{out}\n{err}");
    // the training backend's allocations: those before sampling opens a second one (its
    // cuBLASLt workspace comes first, as the training backend's did); the last of them is
    // the attention scratch the first backward allocates
    let allocs: Vec<&str> = err.lines().filter(|l| l.starts_with("cuda-emu: allocation of ")).collect();
    let training = 1 + allocs[1..].iter().position(|l| *l == allocs[0]).unwrap_or(allocs.len() - 1);
    let last = training.to_string();
    let (code, out, err) = run(&["max_iters=10", "init_from=resume"], Some(&last));
    let errors: Vec<&str> = err.lines().filter(|l| !l.starts_with("cuda-emu: ")).collect();
    assert_eq!(code, 1, "{out}\n{err}");
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        errors[0].starts_with("error: ")
            && errors[0].contains("out of GPU memory")
            && errors[0].contains("a lower batch_size")
            && errors[0].contains(" free of ")
            && !errors[0].contains("0.00 GiB"),
        "{err}"
    );
    assert!(out.contains("iterations 5 -> 10"), "it failed before the run started: {out}");
    // the checkpoint is whole: the same resume, with memory, trains on
    let (code, out, err) = run(&["max_iters=10", "init_from=resume"], None);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("resuming from out/ckpt-000005"), "{out}");
    std::fs::remove_dir_all(d).ok();
}

/// A CUDA 12.4 driver (the emulator's `cuda12/`: no `cuEventElapsedTime_v2`, which came in
/// 12.8) runs with CUDA 12 libraries, `bench --profile`'s event timing included; CUDA 13
/// libraries (which need a CUDA 13 driver) are refused in one line, whether gptrain's search
/// would pick them or the system loader hands them to cudarc by name.
#[test]
fn a_cuda_12_driver_runs_with_cuda_12_libraries_and_refuses_cuda_13_ones() {
    let Some(emu) = emu_or_skip("a_cuda_12_driver_runs_with_cuda_12_libraries_and_refuses_cuda_13_ones") else { return };
    let old = emu.join("cuda12");
    assert!(old.join("libcuda.so.1").is_file(), "{}: no cuda12/ (rebuild it with tools/cuda-emu/build.sh)", emu.display());
    let d = tmp("cuda12");
    let (e13, e12) = (emu.to_str().unwrap(), old.to_str().unwrap());
    let on_12 = [("LD_LIBRARY_PATH", Some(e12)), ("GPTRAIN_CUDA_LIB_DIR", Some(e12))];
    let (code, out, err) = on_emu(&emu, &["check", "--device", "cuda", "--dtype", "f32"], &d, &on_12);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("driver    CUDA 12.4") && out.contains("nvrtc     12.99") && out.contains("cublaslt  12.0.99"), "{out}");
    let bench = ["bench", "--set", "device=cuda", "--set", "n_layer=1", "--set", "n_embd=32", "--set", "n_head=2"];
    let bench = [&bench[..], &["--set", "block_size=16", "--set", "batch_size=2", "--steps", "1", "--warmup", "0", "--profile"]].concat();
    let (code, out, err) = on_emu(&emu, &bench, &d, &on_12);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("matmul lm_head") && out.contains("TFLOP/s"), "no profile: {out}");
    // the driver alone on the loader's path, CUDA 13 libraries where gptrain looks
    let driver_only = d.join("driver");
    std::fs::create_dir_all(&driver_only).unwrap();
    std::os::unix::fs::symlink(old.join("libcuda.so.1"), driver_only.join("libcuda.so.1")).unwrap();
    let env = [("LD_LIBRARY_PATH", driver_only.to_str()), ("GPTRAIN_CUDA_LIB_DIR", Some(e13))];
    let (code, out, err) = on_emu(&emu, &["check", "--device", "cuda"], &d, &env);
    assert_eq!((code, err.lines().count()), (1, 1), "{out}\n{err}");
    let want = format!("error: cuBLASLt {e13}/libcublasLt.so.13 is for CUDA 13 and this NVIDIA driver supports CUDA 12.4 at most: update the driver, or `pip install nvidia-cublas-cu12`");
    assert!(err.starts_with(&want), "{err}");
    // neither library anywhere: both named in the one line
    let empty = d.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let env = [("LD_LIBRARY_PATH", driver_only.to_str()), ("GPTRAIN_CUDA_LIB_DIR", empty.to_str())];
    let (code, out, err) = on_emu(&emu, &["check", "--device", "cuda"], &d, &env);
    assert_eq!((code, err.lines().count()), (1, 1), "{out}\n{err}");
    assert!(err.contains("cuBLASLt library not found") && err.contains("; and NVRTC library not found"), "{err}");
    // gptrain picks CUDA 12's, but the loader's path has CUDA 13's, which cudarc asks for first
    let env = [("LD_LIBRARY_PATH", Some(format!("{e12}:{e13}"))), ("GPTRAIN_CUDA_LIB_DIR", Some(e12.to_string()))];
    let env: Vec<(&str, Option<&str>)> = env.iter().map(|(k, v)| (*k, v.as_deref())).collect();
    let (code, out, err) = on_emu(&emu, &["train", "--set", "device=cuda", "--set", "max_iters=1"], &d, &env);
    assert_eq!((code, err.lines().count()), (1, 1), "{out}\n{err}");
    assert!(err.starts_with("error: cuBLASLt 13.0.99 (CUDA 13) was loaded by name") && err.contains("supports CUDA 12.4 at most"), "{err}");
    std::fs::remove_dir_all(d).ok();
}

/// What a GPU user reads: a wrong index or too old a card gets its own fix, not a hint to
/// install a driver; a run on the GPU, and `bench` there, say the backend is not yet validated
/// (a CPU run does not); `bench` takes `--set peak_tflops` as `train` does, and a run too big
/// for the card gets advice in bench's own flags.
#[test]
fn a_gpu_user_gets_advice_for_their_card_and_command() {
    let Some(emu) = emu_or_skip("a_gpu_user_gets_advice_for_their_card_and_command") else { return };
    let d = tmp("emu-advice");
    let one_line = |args: &[&str], env: &[(&str, Option<&str>)]| {
        let (code, out, err) = on_emu(&emu, args, &d, env);
        assert_eq!((code, err.lines().count()), (1, 1), "{out}\n{err}");
        assert!(!err.contains("hint:"), "the user has a driver and a GPU: {err}");
        err
    };
    let err = one_line(&["train", "--set", "device=cuda:5"], &[("CUDA_VISIBLE_DEVICES", None)]);
    assert!(err.starts_with("error: device cuda:5 does not exist: only cuda:0 does (CUDA_VISIBLE_DEVICES is not set"), "{err}");
    let err = one_line(&["train", "--set", "device=cuda:2"], &[("CUDA_VISIBLE_DEVICES", Some("1"))]);
    assert!(err.contains("only cuda:0 does (CUDA_VISIBLE_DEVICES=1 leaves this process 1 GPU)"), "{err}");
    let err = one_line(&["train", "--set", "device=cuda"], &[("GPTRAIN_EMU_CC", Some("6.1"))]);
    assert!(err.contains("has compute capability 6.1; gptrain's CUDA kernels need 7.0 or newer"), "{err}");
    // a Volta card with CUDA 13's NVRTC (the emulator's): refused before the run starts (no
    // config table), and `auto` takes the CPU saying why
    let (volta, small) = ([("GPTRAIN_EMU_CC", Some("7.0"))], ["--set", "n_layer=1", "--set", "n_embd=32", "--set", "max_iters=0"]);
    let err = one_line(&[&["train", "--set", "device=cuda"][..], &small].concat(), &volta);
    assert!(err.starts_with("error: cuda:0: NVRTC 13.") && err.contains("cannot compile for compute capability 7.0"), "{err}");
    let (code, out, err) = on_emu(&emu, &[&["train", "--set", "device=auto", "--set", "out_dir=volta"][..], &small].concat(), &d, &volta);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("auto: cuda:0: NVRTC 13.") && out.contains(", using the CPU"), "{out}");
    // with a newer card beside it, `auto` takes that one
    let pair = [("GPTRAIN_EMU_CC", Some("7.0,9.0")), ("GPTRAIN_EMU_GPUS", Some("2"))];
    let (code, out, err) = on_emu(&emu, &[&["train", "--set", "device=auto", "--set", "out_dir=pair"][..], &small].concat(), &d, &pair);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("auto: cuda:1 (cuda-emu (the CPU emulating a GPU), compute capability 9.0)"), "{out}");
    // and so does `cuda` (no index), which took cuda:0 and failed
    let (code, out, err) = on_emu(&emu, &[&["train", "--set", "device=cuda", "--set", "out_dir=pair2"][..], &small].concat(), &d, &pair);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("(cuda:1, compute capability 9.0)"), "{out}");
    // bench ignores gradient_accumulation_steps: its advice is --grad-accum, per step
    let err = one_line(&["bench", "--preset", "gpt2-124m", "--set", "device=cuda", "--set", "batch_size=512"], &[]);
    assert!(err.contains("--grad-accum ") && err.contains("sequences per step") && !err.contains("gradient_accumulation_steps"), "{err}");
    assert!(err.contains("gptrain's memory model") && !err.contains("perf::flops"), "{err}");

    let tiny = ["--set", "n_layer=1", "--set", "n_embd=32", "--set", "n_head=2", "--set", "block_size=16", "--set", "batch_size=2"];
    let bench = [&["bench", "--set", "device=cuda", "--steps", "1", "--warmup", "0", "--set", "peak_tflops=100"][..], &tiny].concat();
    let (code, out, err) = on_emu(&emu, &bench, &d, &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("; peak 100.0 TFLOP/s at bf16 (--set peak_tflops)") && out.contains("MFU 0.0%"), "{out}");
    assert!(out.contains("note: gptrain's CUDA backend has not yet been validated on a real GPU"), "{out}");
    let train = [&["train", "--set", "max_iters=0", "--set", "eval_iters=1", "--set", "max_new_tokens=0"][..], &tiny].concat();
    for (device, on_gpu) in [("cuda", true), ("cpu", false)] {
        let (dev, out_dir) = (format!("device={device}"), format!("out_dir=out-{device}"));
        let args = [&train[..], &["--set", &dev, "--set", &out_dir]].concat();
        let (code, out, err) = on_emu(&emu, &args, &d, &[]);
        assert_eq!(code, 0, "{out}\n{err}");
        assert_eq!(out.contains("note: gptrain's CUDA backend has not yet been validated"), on_gpu, "{device}: {out}");
        if on_gpu {
            assert!(out.contains("peak unknown (not in the device table): MFU n/a; `--set peak_tflops=N`"), "{out}");
            // dtype 'auto' says why it chose (the emulated card has bf16)
            assert!(out.contains("\ndtype: bf16 (auto: the card has bf16; "), "{out}");
        }
    }
    std::fs::remove_dir_all(d).ok();
}
