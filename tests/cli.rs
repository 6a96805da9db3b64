//! The binary answers bad input with one clear `error:` line and a non-zero exit, never a panic.

mod common;

use common::{gptrain, gptrain_env};
use gptrain::backend::cpu::simd::Isa;
use std::path::{Path, PathBuf};
use std::process::Command;

fn tmp(name: &str) -> PathBuf {
    common::tmp(&format!("cli-{name}"))
}

/// Runs and checks: exit 1, no panic, the last stderr line is one `error:` line containing `want`;
/// a run refused before it starts has not printed its config table first.
fn fails_with(args: &[&str], dir: &Path, want: &str) {
    let (code, out, err) = gptrain(args, dir);
    assert_eq!(code, 1, "{args:?}: exit {code}, stderr: {err}");
    assert!(!out.contains("config:\n"), "{args:?}: the config table before the error:\n{out}");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    let last = err.lines().last().unwrap_or("");
    assert!(last.starts_with("error: ") && last.contains(want), "{args:?}: {err}");
}

#[test]
fn bad_inputs_get_one_clear_line() {
    let d = tmp("bad");
    fails_with(&["train", "--set", "dataset=missing-dir"], &d, "is not a directory");
    fails_with(&["bench", "--steps", "0"], &d, "--steps must be at least 1");
    fails_with(&["train", "--set", "n_embd=100", "--set", "n_head=3"], &d, "divisible");
    fails_with(&["train", "--set", "n_embed=64"], &d, "did you mean `n_embd`");
    fails_with(&["train", "--set", "max_iters=ten"], &d, "`max_iters` must be a non-negative integer");
    fails_with(&["train", "--preset", "shakespeare"], &d, "did you mean `shakespeare-char`");
    fails_with(&["train", "--set", "init_from=resume"], &d, "no checkpoint");
    // no driver: "no NVIDIA driver found ..."; a GPU machine: "device cuda:99 does not exist: the NVIDIA driver sees ..."
    fails_with(&["train", "--set", "device=cuda:99"], &d, "NVIDIA driver");
    fails_with(&["train", "--set", "device=gpu"], &d, "unknown device `gpu` (auto, cpu, cuda, cuda:N)");
    fails_with(&["train", "--set", "device=cpu", "--set", "dtype=tfloat32"], &d, "GPU matmul mode");
    fails_with(&["bench", "--set", "recompute=3"], &d, "`recompute` must be 0, 1 or 2 (got 3); hint: 0 keeps every activation");
    let (_, _, err) = gptrain(&["train", "--set", "recompute=3"], &d);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    fails_with(&["sample"], &d, "no checkpoint in out-shakespeare-char to sample from");
    // an out_dir or a prepare --out that is a file; a shape past a limit names its key; a
    // preset name far from every preset gets no guess
    std::fs::write(d.join("a-file"), "x").unwrap();
    fails_with(&["train", "--set", "out_dir=a-file"], &d, "out_dir `a-file` is a file, not a folder; hint: --set out_dir=DIR");
    std::fs::write(d.join("in.txt"), "some text to prepare\n".repeat(50)).unwrap();
    fails_with(&["prepare", "--input", "in.txt", "--out", "a-file"], &d, "--out a-file is a file, not a folder");
    fails_with(&["train", "--set", "batch_size=100000000"], &d, "`batch_size` = 100000000 is above the most gptrain takes, 2^20 (1048576)");
    let (_, _, err) = gptrain(&["train", "--preset", "nope"], &d);
    assert!(err.contains("unknown preset `nope` (presets: ") && !err.contains("did you mean"), "{err}");
    // nanoGPT's init_from names: say how to get the weights (gptrain does not download)
    fails_with(&["train", "--set", "init_from=gpt2"], &d, "huggingface-cli download openai-community/gpt2 model.safetensors");
    fails_with(&["sample", "--set", "init_from=gpt2-xl"], &d, "--local-dir gpt2-xl");
    fails_with(&["sample", "--set", "init_from=weights/model.safetensors"], &d, "weights/model.safetensors does not exist");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nanogpt_char");
    fails_with(&["train", "--set", &format!("dataset={}", fixture.display()), "--set", "block_size=1000"], &d, "not more than block_size");
    // a truncated token file
    let data = d.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for f in ["meta.pkl", "train.bin", "val.bin"] {
        std::fs::copy(fixture.join(f), data.join(f)).unwrap();
    }
    let bin = std::fs::read(data.join("train.bin")).unwrap();
    std::fs::write(data.join("train.bin"), &bin[..bin.len() - 1]).unwrap();
    fails_with(&["train", "--set", "dataset=data", "--set", "block_size=8"], &d, "not a whole number");
    fails_with(&["prepare", "--input", "nope.txt", "--out", "x"], &d, "does not exist");
    std::fs::write(d.join("junk.log"), "hello\nworld\n").unwrap();
    fails_with(&["logs", "junk.log"], &d, "no training iteration line");
    fails_with(&["plot", "junk.log"], &d, "no iteration records");
    fails_with(&["estimate", "--device", "voodoo-2"], &d, "unknown device");
    fails_with(&["estimate", "--preset", "rtx4070-40m"], &d, "--device");
    // more memory than any machine has: an error before allocating, not an aborted allocation
    if std::path::Path::new("/proc/meminfo").exists() {
        fails_with(&["train", "--set", "batch_size=1000000", "--set", "max_iters=1"], &d, "more than this machine has");
        fails_with(&["bench", "--set", "batch_size=1000000", "--steps", "1"], &d, "more than this machine has");
    }
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn a_dataset_named_as_in_nanogpt_is_found_under_data() {
    let d = tmp("nanogpt-data");
    let text: String = (0..300).map(|i| format!("line {i}: all the world's a stage\n")).collect();
    std::fs::write(d.join("in.txt"), text).unwrap();
    let (code, _, err) = gptrain(&["prepare", "--input", "in.txt", "--out", "data/tiny_char"], &d);
    assert_eq!(code, 0, "{err}");
    let small = ["--set", "n_layer=1", "--set", "n_embd=16", "--set", "n_head=2", "--set", "block_size=8", "--set", "max_iters=2"];
    let mut args = vec!["train", "--set", "dataset=tiny_char", "--set", "eval_iters=1"];
    args.extend(small);
    let (code, out, err) = gptrain(&args, &d);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("data/tiny_char"), "the run says which directory it read: {out}");
    // estimate and bench read the vocabulary from the same directory
    let (code, out, err) = gptrain(&["estimate", "--device", "cpu", "--set", "dataset=tiny_char"], &d);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("vocab 50304"), "{out}");
    fails_with(&["train", "--set", "dataset=other_char"], &d, "nor is data/other_char");
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn prepare_then_train_then_sample() {
    let d = tmp("flow");
    let text: String = (0..400).map(|i| format!("line {i}: to be or not to be\n")).collect();
    std::fs::write(d.join("in.txt"), text).unwrap();
    let (code, out, err) = gptrain(&["prepare", "--input", "in.txt", "--out", "data"], &d);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("train has"), "{out}");
    assert!(d.join("data/train.bin").exists() && d.join("data/meta.pkl").exists() && d.join("data/meta.json").exists());
    let common = [
        "--set",
        "dataset=data",
        "--set",
        "n_layer=1",
        "--set",
        "n_embd=16",
        "--set",
        "n_head=2",
        "--set",
        "block_size=16",
        "--set",
        "out_dir=out",
        "--set",
        "eval_interval=5",
        "--set",
        "eval_iters=2",
        "--set",
        "max_new_tokens=20",
    ];
    let mut args = vec!["train", "--set", "max_iters=6"];
    args.extend(common);
    let (code, out, err) = gptrain(&args, &d);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("iter 0: loss ") && out.contains("step 5: train loss "), "{out}");
    assert!(out.contains("warm-up"), "{out}");
    assert!(out.contains("sample:"), "{out}");
    // the run's metrics: plotted, and read back by `logs`
    let (code, out, err) = gptrain(&["plot", "out/metrics.jsonl"], &d);
    assert_eq!(code, 0, "{err}");
    assert!(d.join("out/metrics.png").exists() && d.join("out/metrics.svg").exists(), "{out}");
    let (code, out, err) = gptrain(
        &["logs", "out/metrics.jsonl", "--json", "--batch-size", "12", "--block-size", "16", "--grad-accum", "40", "--max-iters", "6"],
        &d,
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["iters_seen"], 6);
    assert!(v["steady_ms_per_iter"].as_f64().unwrap() > 0.0 && v["mfu"].is_null());
    let mut args = vec!["sample", "--set", "num_samples=2", "--set", "start=line"];
    args.extend(common);
    let (code, out, err) = gptrain(&args, &d);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.matches("---------------").count(), 2, "{out}");
    // a prompt character outside the vocabulary
    let mut args = vec!["sample", "--set", "start=Z"];
    args.extend(common);
    let (code, _, err) = gptrain(&args, &d);
    assert_eq!(code, 1);
    assert!(err.contains("'Z' is not in this model's vocabulary"), "{err}");
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn gpt2_bpe_prepare_of_a_folder_puts_eot_between_documents() {
    let d = tmp("bpe");
    std::fs::create_dir_all(d.join("docs")).unwrap();
    for i in 0..3 {
        std::fs::write(d.join(format!("docs/{i}.txt")), "Hello world, this is a test.\n".repeat(20)).unwrap();
    }
    let (code, _, err) = gptrain(&["prepare", "--input", "docs", "--tokenizer", "gpt2", "--out", "data"], &d);
    assert_eq!(code, 0, "{err}");
    let read = |f: &str| -> Vec<u16> {
        std::fs::read(d.join("data").join(f)).unwrap().chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect()
    };
    let all: Vec<u16> = read("train.bin").into_iter().chain(read("val.bin")).collect();
    assert_eq!(all.iter().filter(|&&t| t == 50256).count(), 3);
    assert_eq!(&all[..8], &[15496, 995, 11, 428, 318, 257, 1332, 13]);
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn readme_lists_every_config_key() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    for (k, _) in gptrain::config::KNOBS {
        assert!(readme.contains(&format!("| `{k}` |")), "README does not list `{k}`");
    }
}

const TINY: [&str; 12] = [
    "--set",
    "n_layer=1",
    "--set",
    "n_embd=16",
    "--set",
    "n_head=2",
    "--set",
    "block_size=16",
    "--set",
    "out_dir=out",
    "--set",
    "eval_iters=2",
];

#[test]
fn sigint_finishes_the_iteration_and_leaves_a_checkpoint() {
    stops_with_a_checkpoint("sigint", &["-INT"]);
}

/// GNU `timeout` sends its signal to the process and then to its group: two at once are one
/// stop, and still leave the checkpoint.
#[test]
fn a_sigterm_delivered_twice_at_once_still_leaves_a_checkpoint() {
    stops_with_a_checkpoint("sigterm-twice", &["-TERM", "-TERM"]);
}

/// Starts gptrain with `args` in `d` (its own kernel cache there), stdout and stderr piped.
fn spawn(args: &[&str], d: &Path) -> std::process::Child {
    let piped = std::process::Stdio::piped;
    Command::new(env!("CARGO_BIN_EXE_gptrain"))
        .args(args)
        .current_dir(d)
        .env("XDG_CACHE_HOME", d)
        .stdout(piped())
        .stderr(piped())
        .spawn()
        .unwrap()
}

/// Trains, sends `signals` (one right after the other) after iteration 5, and checks the run
/// finished its iteration, wrote a checkpoint of it and said how to resume.
fn stops_with_a_checkpoint(name: &str, signals: &[&str]) {
    use std::io::BufRead;
    let d = tmp(name);
    let mut args = vec!["train", "--set", "max_iters=100000", "--set", "eval_interval=100000"];
    args.extend(TINY);
    let mut child = spawn(&args, &d);
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        if line.unwrap().starts_with("iter 5:") {
            break;
        }
    }
    let drain = std::thread::spawn(move || lines.map_while(Result::ok).filter(|l| l.starts_with("iter ")).last());
    let pid = child.id().to_string();
    for signal in signals {
        assert!(Command::new("kill").args([signal, pid.as_str()]).status().unwrap().success());
    }
    let out = child.wait_with_output().unwrap();
    let last_line = drain.join().unwrap().unwrap_or_default();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    let it: u64 = err
        .split("interrupted after iteration ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{err}"));
    assert!(it >= 5, "{err}");
    // the message names the last iteration the log shows; the checkpoint holds it done
    assert!(last_line.starts_with(&format!("iter {it}:")), "last log line {last_line:?}, {err}");
    assert!(d.join(format!("out/ckpt-{:06}/MANIFEST.json", it + 1)).exists(), "{err}");
    assert!(err.contains(&format!("resumes at iteration {}", it + 1)), "{err}");
    assert!(err.contains("init_from=resume"), "{err}");
    assert!(!err.contains("second interrupt") && !err.contains("error:"), "a stop asked for is no error: {err}");
    std::fs::remove_dir_all(d).ok();
}

/// A second interrupt a second or more after the first quits at once, without waiting for the
/// iteration (here a long one: 300 micro-steps on one thread): exit 130, said in one line,
/// nothing written.
#[test]
fn a_second_interrupt_a_second_later_quits_at_once() {
    use std::io::BufRead;
    let d = tmp("second-interrupt");
    let mut args = vec!["train", "--set", "max_iters=10", "--set", "gradient_accumulation_steps=300", "--set", "batch_size=16"];
    args.extend(TINY);
    // over TINY's: ~1.5e12 FLOPs an iteration, on one thread whatever the machine's cores
    args.extend(["--set", "n_embd=128", "--set", "block_size=128", "--set", "threads=1"]);
    let mut child = spawn(&args, &d);
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().starts_with("step 0:") {
            break; // iteration 0 is under way
        }
    }
    let drain = std::thread::spawn(move || lines.map_while(Result::ok).filter(|l| l.starts_with("iter ")).count());
    // stderr, line by line as it comes: the second interrupt waits for the first's answer
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let errs = std::thread::spawn(move || {
        stderr.lines().map_while(Result::ok).inspect(|l| drop(tx.send(l.clone()))).collect::<Vec<_>>().join("\n")
    });
    let pid = child.id().to_string();
    let kill = || assert!(Command::new("kill").args(["-INT", pid.as_str()]).status().unwrap().success());
    kill();
    let answered = rx.iter().any(|l| l.starts_with("interrupt: finishing this iteration"));
    assert!(answered, "no answer to the first interrupt");
    std::thread::sleep(std::time::Duration::from_millis(1200));
    kill();
    let status = child.wait().unwrap();
    let err = errs.join().unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("stopping now (second interrupt), without a checkpoint of this iteration"), "{err}");
    assert_eq!(drain.join().unwrap(), 0, "an iteration finished before the second interrupt (make it longer): {err}");
    assert!(!d.join("out/ckpt-000001").exists(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn an_absurd_learning_rate_aborts_or_skips() {
    let d = tmp("nan");
    let mut args = vec![
        "train",
        "--set",
        "max_iters=8",
        "--set",
        "eval_interval=4",
        "--set",
        "learning_rate=1e30",
        "--set",
        "warmup_iters=0",
        "--set",
        "grad_clip=0",
    ];
    args.extend(TINY);
    let (code, _, err) = gptrain(&args, &d);
    assert_eq!(code, 1, "{err}");
    let last = err.lines().last().unwrap();
    assert!(last.contains("non-finite") && last.contains("at iteration") && last.contains("learning rate 1.000e30"), "{err}");
    args.extend(["--set", "on_nonfinite=skip"]);
    let (code, out, err) = gptrain(&args, &d);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("skipped updates (non-finite loss or gradient, or outliers): "), "{out}");
    assert!(out.contains("NON-FINITE: update skipped"), "{out}");
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn estimate_says_the_rtx4070_run_takes_hours_and_100ms_is_impossible() {
    let d = tmp("estimate");
    let (code, out, err) =
        gptrain(&["estimate", "--preset", "rtx4070-40m", "--device", "RTX 4070", "--dtype", "fp16", "--expect-ms", "100", "--json"], &d);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("stdout holds only the JSON object");
    for k in [
        "params",
        "tokens_per_iter",
        "flops_per_iter",
        "floor_ms_per_iter",
        "ms_per_iter",
        "total_seconds",
        "memory_bytes",
        "device_memory_bytes",
        "fits",
        "max_micro_batch",
        "memory_pytorch_bytes",
        "fits_pytorch",
    ] {
        assert!(!v[k].is_null(), "missing {k}");
    }
    assert_eq!(v["tokens_per_iter"], 524_288);
    assert_eq!((v["batch_size"].as_u64(), v["grad_accum"].as_u64(), v["model"]["n_embd"].as_u64()), (Some(16), Some(32), Some(512)), "{v}");
    assert!(v["floor_ms_per_iter"].as_f64().unwrap() > 2000.0);
    assert!(v["total_seconds"].as_f64().unwrap() > 3.0 * 3600.0);
    assert_eq!(v["fits"], true);
    assert_eq!(v["expect_ms"]["possible"], false);
    let (code, out, _) =
        gptrain(&["estimate", "--preset", "rtx4070-40m", "--device", "rtx-4070", "--dtype", "fp16", "--expect-ms", "100"], &d);
    assert_eq!(code, 0);
    assert!(out.contains("impossible: 100 ms/iteration"), "{out}");
    assert!(out.contains("nanoGPT (PyTorch, torch.compile) at this micro-batch: about 7.00 GiB -> fits"), "{out}");
    // a device outside the table works with an explicit peak, and makes no memory verdict
    let (code, out, err) = gptrain(&["estimate", "--preset", "rtx4070-40m", "--device", "voodoo-9", "--peak-tflops", "100", "--json"], &d);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(v["fits"].is_null() && (v["floor_ms_per_iter"].as_f64().unwrap() - 1338.0).abs() < 1.0, "{v}");
    let (code, out, _) = gptrain(&["estimate", "--list-devices"], &d);
    assert_eq!(code, 0);
    for n in ["rtx-3060-12gb", "rtx-4070", "a100-80gb", "h100-sxm", "h200", "l4", "t4", "cpu"] {
        assert!(out.contains(n), "{n} not listed");
    }
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn logs_reads_a_real_nanogpt_log_from_an_h200() {
    // nanoGPT's own train.py with the rtx4070-40m run's shape (torch.compile, fp16, synthetic
    // tokens) on an H200, verbatim: a 20.7 s first iteration (compilation), `mfu -100.00%` until
    // iteration 5, then an MFU column against an A100's peak that reads 117%
    let d = tmp("logs-h200");
    let log = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nanogpt_h200_rtx4070-40m.log");
    let (code, out, err) = gptrain(&["logs", log.to_str().unwrap(), "--device", "h200", "--preset", "rtx4070-40m", "--json"], &d);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (v["format"].as_str(), v["iters_seen"].as_u64(), v["minus_100_lines"].as_u64()),
        (Some("nanogpt"), Some(21), Some(5)),
        "{v}"
    );
    // iterations 0-3 are warm-up: 4 settles the meter (2, 3 and 4 agree), as the live log would say
    assert_eq!((v["warmup_dropped"].as_u64(), v["outliers_dropped"].as_u64()), (Some(4), Some(0)), "{v}");
    let f = |k: &str| v[k].as_f64().unwrap();
    assert!((f("steady_ms_per_iter") - 366.58).abs() < 1e-9, "{v}");
    assert!((f("log_mfu") - 1.177).abs() < 0.001, "{v}");
    // the true MFU against the H200's fp16 peak, and what the log's column would have read there
    assert!((f("mfu") - 0.369).abs() < 0.001 && (f("log_mfu_on_device") - 0.371).abs() < 0.001, "{v}");
    // 5980 iterations left at the steady rate
    assert!((f("eta_seconds") - 5980.0 * 0.36658).abs() < 1.0, "{v}");
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn bench_prints_one_json_object_and_a_profile_by_kernel() {
    let d = tmp("bench");
    let shape = [
        "--set",
        "n_layer=2",
        "--set",
        "n_head=2",
        "--set",
        "n_embd=32",
        "--set",
        "block_size=16",
        "--set",
        "batch_size=2",
        "--set",
        "vocab_size=65",
        "--set",
        "bias=false",
    ];
    let mut args = vec!["bench", "--steps", "2", "--warmup", "1", "--threads", "1", "--json"];
    args.extend(shape);
    let (code, out, err) = gptrain(&args, &d);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("stdout holds only the JSON object");
    for k in ["ms_per_step", "tokens_per_second", "gflops", "mfu", "peak_rss_bytes", "peak_gflops"] {
        assert!(v[k].as_f64().is_some_and(|x| x > 0.0), "{k} = {}", v[k]);
    }
    // tokens/s is batch * block per step time
    let tps = 2.0 * 16.0 / (v["ms_per_step"].as_f64().unwrap() / 1e3);
    assert!((v["tokens_per_second"].as_f64().unwrap() / tps - 1.0).abs() < 1e-9);
    // L (12 C^2 + 2 C) + wte V C + wpe T C + ln_f C, no biases
    assert_eq!(v["params"], 2 * (12 * 32 * 32 + 2 * 32) + 65 * 32 + 16 * 32 + 32);
    // every step's time, warm-up first, and when the first timed one ended
    assert_eq!((v["warmup_ms"].as_array().unwrap().len(), v["steps_ms"].as_array().unwrap().len()), (1, 2), "{v}");
    let first = v["warmup_ms"][0].as_f64().unwrap() + v["steps_ms"][0].as_f64().unwrap();
    assert!(v["first_steady_ms"].as_f64().is_some_and(|x| x >= first), "{v}");
    assert_eq!(v["grad_accum"], 1);
    // with gradient accumulation a step is grad_accum micro-batches: tokens and FLOPs scale with it
    // ... and `--set peak_tflops` is the peak MFU is measured against, as `train` takes it
    let mut args =
        vec!["bench", "--steps", "2", "--warmup", "1", "--threads", "1", "--json", "--grad-accum", "3", "--set", "peak_tflops=2"];
    args.extend(shape);
    let (code, out, err) = gptrain(&args, &d);
    assert_eq!(code, 0, "{err}");
    let w: serde_json::Value = serde_json::from_str(out.trim()).expect("stdout holds only the JSON object");
    let ms = w["ms_per_step"].as_f64().unwrap();
    assert!((w["tokens_per_second"].as_f64().unwrap() / (3.0 * 2.0 * 16.0 / (ms / 1e3)) - 1.0).abs() < 1e-9, "{w}");
    let per_micro = |x: &serde_json::Value| x["gflops"].as_f64().unwrap() * x["ms_per_step"].as_f64().unwrap();
    assert!((per_micro(&w) / per_micro(&v) - 3.0).abs() < 1e-9, "{v} {w}");
    assert_eq!(w["grad_accum"], 3);
    assert_eq!(w["peak_gflops"], 2000.0, "{w}");
    assert!((w["mfu"].as_f64().unwrap() - w["gflops"].as_f64().unwrap() / 2000.0).abs() < 1e-12, "{w}");
    let mut args = vec!["bench", "--steps", "1", "--warmup", "0", "--threads", "1", "--profile"];
    args.extend(shape);
    let (code, out, err) = gptrain(&args, &d);
    assert_eq!(code, 0, "{err}");
    for kernel in
        ["matmul mlp fc", "matmul qkv", "attention forward", "attention backward", "layernorm", "gelu", "adamw", "softmax + cross-entropy"]
    {
        assert!(out.contains(kernel), "profile lacks {kernel}: {out}");
    }
    // the kernels doing matmul work carry their speed; the others do not
    let row = |k: &str| out.lines().find(|l| l.trim_start().starts_with(k)).unwrap_or_else(|| panic!("no row {k}: {out}")).to_string();
    for kernel in ["matmul mlp fc", "matmul qkv", "matmul lm_head", "attention forward", "attention backward"] {
        assert!(row(kernel).contains("GFLOP/s"), "{}", row(kernel));
    }
    assert!(!row("layernorm").contains("GFLOP/s"), "{}", row("layernorm"));
    let mut args = vec!["bench", "--steps", "1", "--warmup", "0", "--threads", "1", "--profile", "--json"];
    args.extend(shape);
    let (code, out, err) = gptrain(&args, &d);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("stdout holds only the JSON object");
    for kernel in ["matmul mlp proj", "matmul attn proj", "attention backward"] {
        assert!(v["profile_gflops"][kernel].as_f64().is_some_and(|g| g > 0.0), "{kernel}: {}", v["profile_gflops"]);
    }
    assert!(v["profile_gflops"]["gelu"].is_null());
    // `--set recompute=N` is honoured and said
    let mut args = vec!["bench", "--steps", "1", "--warmup", "0", "--threads", "1", "--json", "--set", "recompute=2"];
    args.extend(shape);
    let (code, out, err) = gptrain(&args, &d);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("stdout holds only the JSON object");
    assert_eq!(v["recompute"], 2, "{v}");
    let mut args = vec!["bench", "--steps", "1", "--warmup", "0", "--threads", "1", "--set", "recompute=1"];
    args.extend(shape);
    let (code, out, err) = gptrain(&args, &d);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("; GELU recomputed in the backward (recompute=1)"), "{out}");
}

#[test]
fn held_to_avx2_the_model_trains_to_the_same_loss() {
    let d = tmp("isa");
    // gptrain with GPTRAIN_ISA and GPTRAIN_GEMM set to these (None: unset)
    let run_with =
        |args: &[&str], isa: Option<&str>, gemm: Option<&str>| gptrain_env(args, &d, &[("GPTRAIN_ISA", isa), ("GPTRAIN_GEMM", gemm)]);
    let run = |args: &[&str], isa: Option<&str>| run_with(args, isa, None);
    let (code, _, err) = run(&["estimate"], Some("avx3"));
    assert_eq!(code, 1);
    assert!(err.trim_end().ends_with("or unset it") && err.contains("GPTRAIN_ISA=\"avx3\" is not a choice"), "{err}");
    let (code, _, err) = run_with(&["estimate"], Some(""), Some("blas"));
    assert_eq!(code, 1);
    assert!(err.contains("GPTRAIN_GEMM=\"blas\" is not a choice"), "{err}");
    if Isa::detected() == Isa::Avx512 {
        // gemm uses AVX-512 where the CPU has it, whatever GPTRAIN_ISA says
        let (code, _, err) = run_with(&["estimate"], Some("avx2"), Some("gemm"));
        assert_eq!(code, 1);
        assert!(err.contains("cannot be held to GPTRAIN_ISA=avx2"), "{err}");
    }
    let text: String = (0..300).map(|i| format!("line {i}: to be or not to be\n")).collect();
    std::fs::write(d.join("in.txt"), text).unwrap();
    assert_eq!(run(&["prepare", "--input", "in.txt", "--out", "data"], None).0, 0);
    let train = |out_dir: &str, isa: Option<&str>| {
        let kernels = if out_dir.ends_with("reference") { "kernels=reference" } else { "kernels=fast" };
        let out_dir = format!("out_dir={out_dir}");
        let mut args =
            vec!["train", "--set", "dataset=data", "--set", "max_iters=10", "--set", "eval_interval=10", "--set", "eval_iters=2"];
        args.extend(["--set", "n_layer=2", "--set", "n_embd=32", "--set", "n_head=2", "--set", "block_size=32", "--set", "threads=2"]);
        args.extend(["--set", "dropout=0", "--set", "max_new_tokens=0", "--set", &out_dir, "--set", kernels]);
        run(&args, isa)
    };
    let (code, _, err) = train("wide", None);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = train("avx2", Some("avx2"));
    if Isa::detected() < Isa::Avx2 {
        assert_eq!(code, 1);
        assert!(err.contains("this CPU has no AVX2"), "{err}");
        return;
    }
    assert_eq!(code, 0, "{err}");
    // the reference kernels' matmuls, threaded by rows when held to AVX2
    let (code, _, err) = train("avx2-reference", Some("avx2"));
    assert_eq!(code, 0, "{err}");
    // the last eval's losses: the same math in other vectors and matmul blockings
    let losses = |out_dir: &str| -> Vec<f64> {
        let metrics = std::fs::read_to_string(d.join(out_dir).join("metrics.jsonl")).unwrap();
        let last = metrics.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).rfind(|v| v["type"] == "eval").unwrap();
        assert_eq!(last["iter"], 10);
        vec![last["train_loss"].as_f64().unwrap(), last["val_loss"].as_f64().unwrap()]
    };
    let a = losses("wide");
    for run in ["avx2", "avx2-reference"] {
        let b = losses(run);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-5 * x.abs(), "default {a:?} against {run} {b:?}");
        }
    }
    // the bench names the vectors, and measures the peak in them
    let (code, out, err) = run(
        &[
            "bench",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--threads",
            "1",
            "--json",
            "--set",
            "n_layer=1",
            "--set",
            "n_embd=32",
            "--set",
            "n_head=2",
            "--set",
            "block_size=16",
            "--set",
            "batch_size=2",
        ],
        Some("avx2"),
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["isa"], "AVX2");
    assert!(v["matmul_library"].as_str().unwrap().contains("private-gemm-x86"), "{v}");
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn set_names_an_empty_key_or_value_and_suggests_keys_ignoring_case() {
    let d = tmp("set-empty");
    fails_with(&["train", "--set", "=3"], &d, "`--set =3`: the key is empty");
    fails_with(&["train", "--set", "max_iters="], &d, "`--set max_iters=`: the value is empty; `max_iters` takes a non-negative integer");
    fails_with(&["train", "--set", "dataset="], &d, "`--set dataset=`: the value is empty; `dataset` takes a string");
    fails_with(&["train", "--set", "MAX_ITERS=5"], &d, "unknown config key `MAX_ITERS`; did you mean `max_iters`?");
    fails_with(&["train", "--set", "Learning_Rate=1e-3"], &d, "did you mean `learning_rate`?");
    // the hint points at the command that lists the keys, not at the README
    fails_with(&["train", "--set", "n_embed=64"], &d, "`gptrain config` lists every key");
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn config_lists_every_key_with_its_default_and_every_preset() {
    let d = tmp("config-list");
    let (code, help, _) = gptrain(&["--help"], &d);
    assert_eq!(code, 0);
    assert!(help.lines().any(|l| l.trim_start().starts_with("config ") && l.contains("default and meaning")), "{help}");
    let (code, out, err) = gptrain(&["config"], &d);
    assert_eq!(code, 0, "{err}");
    let defaults = gptrain::config::Config::default().entries();
    for (k, doc) in gptrain::config::KNOBS {
        let line = out.lines().find(|l| l.starts_with(&format!("  {k} "))).unwrap_or_else(|| panic!("`{k}` not listed: {out}"));
        let first_words: String = doc.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        assert!(line.contains(&first_words), "`{k}`'s meaning: {line}");
        if !gptrain::config::is_inert(k) {
            let default = &defaults.iter().find(|e| e.0 == *k).unwrap().1;
            assert!(line.split_whitespace().nth(1) == Some(default.as_str()), "`{k}`'s default {default}: {line}");
        }
    }
    for (name, ..) in gptrain::config::PRESETS {
        assert!(out.lines().any(|l| l.starts_with(&format!("  {name} "))), "preset `{name}` not listed: {out}");
    }
    for (title, _) in gptrain::config::GROUPS {
        assert!(out.lines().any(|l| l == *title), "group `{title}`: {out}");
    }
    // with flags: the values they resolve to, beside the defaults they change
    let (code, out, err) = gptrain(&["config", "--preset", "shakespeare-char-cpu", "--set", "max_iters=7"], &d);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|l| l.trim_start().starts_with("max_iters") && l.contains("7 (default 600000)")), "{out}");
    assert!(out.lines().any(|l| l.trim_start().starts_with("n_layer") && l.contains("4 (default 12)")), "{out}");
    // a nanoGPT config whose wandb run name is a Python expression loads, with a note
    std::fs::write(d.join("ft.py"), "import time\nwandb_run_name = 'ft-' + str(time.time())\ninit_from = 'gpt2-xl' # big\n").unwrap();
    let (code, out, err) = gptrain(&["config", "--config", "ft.py"], &d);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("ft.py:2: `wandb_run_name` ignored"), "{err}");
    assert!(out.lines().any(|l| l.trim_start().starts_with("init_from") && l.contains("\"gpt2-xl\"")), "{out}");
    // ... and a key gptrain uses may not be an expression
    std::fs::write(d.join("bad.py"), "import time\nout_dir = 'out-' + str(time.time())\n").unwrap();
    fails_with(&["train", "--config", "bad.py"], &d, "bad.py:2: `out_dir = 'out-' + str(time.time())`");
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn prepare_lists_what_it_read_and_skipped_and_keeps_a_dataset_of_another_tokenizer() {
    let d = tmp("prepare-report");
    std::fs::create_dir_all(d.join("docs/sub")).unwrap();
    std::fs::write(d.join("docs/a.txt"), "to be or not to be\n".repeat(60_000)).unwrap();
    std::fs::write(d.join("docs/sub/b.txt"), "that is the question\n").unwrap();
    std::fs::write(d.join("docs/empty.txt"), "").unwrap();
    std::fs::write(d.join("docs/notes.md"), "# notes\n").unwrap();
    let (code, out, err) = gptrain(&["prepare", "--input", "docs", "--out", "data"], &d);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("read 1.1 MiB from 2 documents:"), "{out}");
    assert!(out.lines().any(|l| l.contains("docs/a.txt") && l.ends_with("1.1 MiB")), "{out}");
    assert!(out.lines().any(|l| l.contains("docs/sub/b.txt") && l.ends_with("21 B")), "{out}");
    assert!(out.contains("skipped 2 files:"), "{out}");
    assert!(out.lines().any(|l| l.contains("docs/empty.txt") && l.ends_with("empty")), "{out}");
    assert!(out.lines().any(|l| l.contains("docs/notes.md") && l.ends_with("not a .txt file")), "{out}");
    assert!(!out.contains("GiB") && !out.contains("overwrote"), "{out}");
    // the same tokenizer again: overwritten, and said so
    let (code, out, err) = gptrain(&["prepare", "--input", "docs/a.txt", "--out", "data"], &d);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("from docs/a.txt (1 document)"), "{out}");
    assert!(out.contains("overwrote the char dataset that was in data"), "{out}");
    // another tokenizer: refused, the directory untouched
    let before = std::fs::read(d.join("data/train.bin")).unwrap();
    fails_with(
        &["prepare", "--input", "docs", "--tokenizer", "gpt2", "--out", "data"],
        &d,
        "data already holds a dataset prepared with the `char` tokenizer; not overwriting it with `gpt2` tokens",
    );
    fails_with(&["prepare", "--input", "docs", "--tokenizer", "gpt2", "--out", "data"], &d, "give another --out, or delete data first");
    assert_eq!(std::fs::read(d.join("data/train.bin")).unwrap(), before);
    // an empty input is named
    fails_with(&["prepare", "--input", "docs/empty.txt", "--out", "x"], &d, "docs/empty.txt is empty");
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn logs_names_the_format_and_counts_with_plurals() {
    let d = tmp("logs-words");
    let log = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nanogpt_h200_rtx4070-40m.log");
    let (code, out, err) = gptrain(&["logs", log.to_str().unwrap()], &d);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(": nanoGPT log (format nanogpt), 21 iteration lines (iterations 0-20), 1 eval line, 26 other lines skipped"),
        "{out}"
    );
    assert!(out.contains("dropped 4 of 21 samples: 4 warm-up") && out.contains("0 outliers"), "{out}");
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn the_log_the_metrics_and_the_summary_agree_on_warmup_and_eval_only_trains_nothing() {
    let d = tmp("warmup");
    let mut args = vec!["train", "--set", "max_iters=12", "--set", "eval_interval=6"];
    args.extend(TINY);
    let (code, out, err) = gptrain(&args, &d);
    assert_eq!(code, 0, "{err}");
    let in_log = out.lines().filter(|l| l.starts_with("iter ") && l.contains("warm-up (not counted)")).count();
    let metrics = std::fs::read_to_string(d.join("out/metrics.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let in_metrics = records.iter().filter(|r| r["type"] == "iter" && r["warmup"] == true).count();
    let in_summary = records.iter().find(|r| r["type"] == "summary").unwrap()["summary"]["warmup_iters"].as_u64().unwrap() as usize;
    let done = out.lines().find(|l| l.starts_with("done: ")).unwrap();
    assert!(in_log >= 1, "{out}");
    assert_eq!((in_metrics, in_summary), (in_log, in_log), "{out}");
    let iters = if in_log == 1 { "iter" } else { "iters" };
    assert!(done.starts_with("done: 12 iterations") && done.contains(&format!("warm-up {in_log} {iters} ")), "{done}");
    // eval_only evaluates once and announces no training range
    let mut args = vec!["train", "--set", "init_from=resume", "--set", "eval_only=true"];
    args.extend(TINY);
    let (code, out, err) = gptrain(&args, &d);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("eval_only: one evaluation at iteration 12") && out.contains("step 12: train loss"), "{out}");
    assert!(!out.contains("->") && !out.contains("iter 12:"), "{out}");
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn more_threads_than_cpus_is_a_warning() {
    let d = tmp("threads");
    let cpus = std::thread::available_parallelism().unwrap().get();
    let many = format!("threads={}", 4 * cpus);
    let mut args = vec!["train", "--set", "max_iters=1", "--set", &many];
    args.extend(TINY);
    let (code, _, err) = gptrain(&args, &d);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(&format!("warning: threads = {} is more than this machine's {cpus} logical CPUs", 4 * cpus)), "{err}");
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn sample_reads_a_checkpoints_own_tokenizer_and_says_what_it_loaded() {
    let d = tmp("sample-ckpt");
    let mut args = vec!["train", "--set", "max_iters=4", "--set", "max_new_tokens=5"];
    args.extend(TINY);
    let (code, out, err) = gptrain(&args, &d);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("sampling from out/ckpt-000004 (iteration 4"), "the run samples its own checkpoint: {err}");
    assert!(out.contains("sample:"), "{out}");
    // a char-level checkpoint named as init_from: its char tokenizer, not GPT-2 BPE
    let (code, out, err) = gptrain(
        &[
            "sample",
            "--set",
            "init_from=out/ckpt-000004",
            "--set",
            "start=hello world",
            "--set",
            "num_samples=1",
            "--set",
            "max_new_tokens=8",
        ],
        &d,
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("sampling from out/ckpt-000004 (iteration 4") && err.contains("char tokenizer of"), "{err}");
    let sample = out.lines().next().unwrap();
    assert!(sample.starts_with("hello world") && sample.chars().count() <= "hello world".len() + 8, "{out}");
    // a Hugging Face directory without training state is GPT-2 BPE; its 40-token vocabulary
    // cannot hold the prompt's ids: one clear line
    let hf = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf_tiny");
    fails_with(
        &["sample", "--set", &format!("init_from={}", hf.display()), "--set", "start=hello world"],
        &d,
        "outside this model's vocabulary of 40 tokens",
    );
    fails_with(&["sample", "--set", &format!("init_from={}", hf.display()), "--set", "start=\"\""], &d, "<|endoftext|>");
    std::fs::remove_dir_all(d).ok();
}

/// `check` takes its device as `--device`: without a GPU its hint says so, not `--set device=`.
#[test]
fn check_without_a_gpu_points_to_its_own_cpu_flag() {
    if gptrain::backend::cuda::select::driver_present() {
        eprintln!("check_without_a_gpu_points_to_its_own_cpu_flag: skipped: this machine has an NVIDIA driver");
        return;
    }
    let d = tmp("check-no-gpu");
    for device in ["cuda", "cuda:1"] {
        let (code, _, err) = gptrain(&["check", "--device", device], &d);
        assert_eq!((code, err.lines().count()), (1, 1), "{err}");
        assert!(err.trim_end().ends_with("needs an NVIDIA GPU and its driver, or check the CPU (`--device cpu`)"), "{err}");
        assert!(!err.contains("--set device"), "{err}");
    }
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn check_passes_every_op_and_training_here_and_names_a_missing_gpu() {
    let d = tmp("check");
    let (code, out, err) = gptrain(&["check", "--threads", "2"], &d);
    assert_eq!(code, 0, "{out}{err}");
    for line in ["setup:", "  vectors ", "  matmuls ", "  threads   2", "summary: 159 passed, 0 failed, 0 skipped (fp32, bf16, fp16)"] {
        assert!(out.contains(line), "no `{line}` in: {out}");
    }
    let row = |op: &str| out.lines().find(|l| l.trim_start().starts_with(op)).unwrap_or_else(|| panic!("no row {op}: {out}")).to_string();
    for op in [
        "encoder backward",
        "layernorm backward, no bias",
        "matmul backward",
        "attention backward + dropout",
        "adamw step",
        "attention decode",
    ] {
        assert!(row(op).contains(" fp32 ") && row(op).ends_with("PASS"), "{}", row(op));
    }
    // the tolerance column lines up, however long the worst output's name
    let tols: std::collections::BTreeSet<usize> =
        out.lines().filter(|l| l.starts_with("  ") && l.contains(" fp32 ")).filter_map(|l| l.find(" 1e-5  ")).collect();
    assert_eq!(tols.len(), 1, "{out}");
    for t in ["training fp32:", "training bf16:", "training fp16:"] {
        assert!(row(t).ends_with("PASS"), "{}", row(t));
    }
    // one dtype on its own, as JSON
    let (code, out, err) = gptrain(&["check", "--threads", "1", "--dtype", "bfloat16", "--json"], &d);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("stdout holds only the JSON object");
    assert_eq!((v["failed"].as_u64(), v["ops"][0]["dtype"].as_str()), (Some(0), Some("bf16")), "{v}");
    assert_eq!(v["ops"][0]["verdict"], "Pass", "{v}");
    // without a GPU (this test's machines): one line naming what is missing
    if !gptrain::backend::cuda::select::driver_present() {
        fails_with(&["check", "--device", "cuda"], &d, "no NVIDIA driver found");
        fails_with(&["check", "--device", "cuda:1"], &d, "device `cuda:1` needs an NVIDIA GPU");
    }
    fails_with(&["check", "--device", "tpu"], &d, "unknown device `tpu`");
    fails_with(&["check", "--dtype", "tf32"], &d, "unknown dtype `tf32`");
    if !gptrain::backend::cuda::select::driver_present() {
        let (_, _, err) = gptrain(&["check", "--device", "cuda"], &d);
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    }
    std::fs::remove_dir_all(d).ok();
}

/// tools/bench_gpu.py's gptrain side on the CPU (no PyTorch needed): the harness finds the shape
/// in `estimate`, passes its gradient accumulation to `bench --grad-accum`, and reads every
/// number it prints from the bench JSON. Skipped where there is no python3.
#[test]
fn bench_gpu_harness_reads_gptrains_bench_on_the_cpu() {
    if Command::new("python3").arg("--version").output().map_or(true, |o| !o.status.success()) {
        eprintln!("SKIPPED: no python3");
        return;
    }
    let d = tmp("bench-gpu");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools").join("bench_gpu.py");
    let run = |extra: &[&str]| {
        let mut c = Command::new("python3");
        c.arg(&script)
            .args(["--device", "cpu", "--sides", "gptrain", "--gptrain", env!("CARGO_BIN_EXE_gptrain"), "--out"])
            .arg(d.join("out"));
        c.args(["--rounds", "2", "--warmup", "1", "--iters", "2", "--grad-accum", "2", "--threads", "1"]);
        for kv in ["n_layer=2", "n_head=2", "n_embd=32", "block_size=16", "batch_size=2"] {
            c.args(["--set", kv]);
        }
        c.args(extra);
        let out = c.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("grad accum 2 (the preset's is 1"), "{out}");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("out").join("results.json")).unwrap()).unwrap();
    let rounds = v["presets"][0]["results"]["gptrain"].as_array().unwrap();
    assert_eq!(rounds.len(), 2, "{v}");
    for r in rounds {
        // gptrain's own time to its first steady step, not the wall-clock bound for older binaries
        assert!(r["first_steady_s"].as_f64().is_some_and(|s| s > 0.0) && r["first_steady_bound"].is_null(), "{r}");
        // tokens per iteration are micro-batch x block x accumulation
        let tps = 2.0 * 16.0 * 2.0 / (r["ms"].as_f64().unwrap() / 1e3);
        assert!((r["tokens_per_second"].as_f64().unwrap() / tps - 1.0).abs() < 1e-9, "{r}");
    }
    let log = std::fs::read_to_string(d.join("out").join("shakespeare-char-cpu").join("round1-gptrain.log")).unwrap();
    assert!(log.contains("--grad-accum 2") && log.contains("\"grad_accum\":2"), "{log}");
    // a shape gptrain refuses stops the harness before any run, with one error line
    let (code, _, err) = run(&["--set", "n_head=3"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.trim().lines().last().unwrap().starts_with("error: gptrain estimate --preset shakespeare-char-cpu failed"), "{err}");
    std::fs::remove_dir_all(d).ok();
}
