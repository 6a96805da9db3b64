//! `gptrain logs FILE --json` on real logs and on fixtures in the exact line shapes users posted.
//!
//! The three real logs live in `../shared/data/logs/` (read in place, never copied here); each
//! has a note with its source and a steady figure computed by hand. The fixtures in
//! `tests/fixtures/logs/` carry numbers of our own in real line shapes; each has a note
//! (`<name>.md`) with the address of a real example, and its hand-computed figure is stated
//! in the test below.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn gptrain(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gptrain")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn shared(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/logs").join(name)
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/logs").join(name)
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gptrain-logs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `logs FILE --json [extra]`, parsed.
fn read(file: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["logs", file.to_str().unwrap(), "--json"];
    args.extend(extra);
    let (code, out, err) = gptrain(&args);
    assert_eq!(code, 0, "{file:?}: {err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The steady figure is within `tol` (relative) of the hand computation, and the format and
/// time meaning are the ones named.
fn check(v: &serde_json::Value, format: &str, meaning: &str, hand_ms: f64, tol: f64) {
    assert_eq!((v["format"].as_str(), v["time_meaning"].as_str()), (Some(format), Some(meaning)), "{v}");
    let got = v["steady_ms_per_iter"].as_f64().unwrap();
    assert!((got - hand_ms).abs() <= tol * hand_ms, "{format}: steady {got} ms/iter, by hand {hand_ms}: {v}");
}

// ---- the three real logs, against their notes' hand figures (to 1%)

#[test]
fn real_megatron_lm_log_32xv100() {
    // note: iterations 10-30 are warm-up (skipped fp16 steps); median of the 17 interval
    // averages 40-200 = 1618.3 ms/iter; log interval 10
    let v = read(&shared("megatron-lm-32xv100-bigscience-n8.log"), &["--block-size", "1024", "--gpus", "32"]);
    check(&v, "megatron", "interval-average", 1618.3, 0.01);
    assert_eq!((v["warmup_dropped"].as_u64(), v["iters_counted"].as_u64()), (Some(3), Some(170)), "{v}");
    // 4 sequences of 1024 tokens (global batch size from the log, sequence length from the flag)
    assert_eq!(v["tokens_per_iter"].as_f64(), Some(4096.0), "{v}");
    assert!(v["tokens_per_iter_source"].as_str().unwrap().contains("global batch size 4"), "{v}");
    // 4096 / 1.6183 s = 2531 tokens/s (the note's figure)
    assert!((v["tokens_per_second"].as_f64().unwrap() - 2531.0).abs() < 2.0, "{v}");
}

#[test]
fn real_megatron_deepspeed_log_64xv100() {
    // note: iteration 1 is warm-up; median of iterations 2-49 = 137,103.55 ms/iter
    let v = read(&shared("megatron-deepspeed-64xv100-bigscience-n16-ds-on.log"), &[]);
    check(&v, "megatron", "interval-average", 137_103.55, 0.01);
    assert_eq!(v["max_iters"].as_u64(), Some(1000), "{v}");
}

#[test]
fn real_hf_trainer_console_log_behind_comment_markers() {
    // note: every line behind `    # `; the tqdm bar's elapsed clock differenced over the
    // 10-step logging intervals, the 133 s evals excluded: median 1100 ms/step
    let v = read(&shared("hf-trainer-chatglm3-6b-lora-1gpu.log"), &[]);
    check(&v, "hf-trainer", "cumulative-clock", 1100.0, 0.01);
    assert_eq!((v["last_iter"].as_u64(), v["max_iters"].as_u64(), v["evals"].as_u64()), (Some(400), Some(400), Some(2)), "{v}");
    // not the 2017 ms/step that train_runtime / 400 gives
    assert!(v["steady_ms_per_iter"].as_f64().unwrap() < 1200.0);
}

// ---- fixtures in real line shapes (numbers of our own; figures by hand)

#[test]
fn torchtitan_timed_by_its_timestamps() {
    // timestamps every 10 steps: (1700, 1400, 1390, 1401, 1405, 1396, 1401, 1402, 1395, 1400) ms;
    // the first three are warm-up; median of the other seven = 1401
    let v = read(&fixture("torchtitan.log"), &["--gpus", "8", "--device", "h100-sxm"]);
    check(&v, "torchtitan", "timestamps", 1401.0, 1e-9);
    // the log's mfu 34.2% with tflops 338.8: it assumed an H100's 989 TFLOP/s
    assert!((v["log_peak_flops_assumed"].as_f64().unwrap() / 1e12 - 989.0).abs() < 2.0, "{v}");
    // 8 x 8192 tokens per step (`Training starts at step 1, with local batch size 1, global
    // batch size 8, sequence length 8192`) / 1.401 s = 46,778 tokens/s, 5,847 per GPU as `tps`
    assert!((v["tokens_per_second"].as_f64().unwrap() - 65536.0 / 1.401).abs() < 1.0, "{v}");
}

#[test]
fn modded_nanogpt_cumulative_train_time() {
    // train_time differenced every 10 steps: 260, 230, 230 (warm-up), then 230.5, 230.5, 231,
    // 230, 231, 231, 230.5, [val line at step 100 moves the start to 23370 ms], 231, 230.5,
    // 230.5, 231, 230.5: six 230.5, five 231, one 230 -> median 230.5
    let v = read(&fixture("modded-nanogpt.log"), &[]);
    check(&v, "modded-nanogpt", "cumulative-clock", 230.5, 1e-9);
    assert_eq!(v["max_iters"].as_u64(), Some(500));
}

#[test]
fn llama2c_lines_read_as_nanogpt() {
    // iterations 0, 10, 20 warm-up; the eval-and-checkpoint line (61204.50 ms) an outlier;
    // median of the nine left (399.9 ... 402.2 ... 404.7) = 402.2
    let v = read(&fixture("llama2c.log"), &["--max-iters", "200"]);
    check(&v, "nanogpt", "per-iteration", 402.2, 1e-9);
    assert_eq!((v["warmup_dropped"].as_u64(), v["outliers_dropped"].as_u64(), v["evals"].as_u64()), (Some(3), Some(1), Some(2)), "{v}");
    // `tokens per iteration will be: 131,072`: 131072 / 0.4022 s
    assert!((v["tokens_per_second"].as_f64().unwrap() - 131_072.0 / 0.4022).abs() < 0.01, "{v}");
    assert!((v["log_mfu"].as_f64().unwrap() - 0.0414).abs() < 1e-9, "{v}");
    // 79 iterations left (121 done: 0-120) x 0.4022 s
    assert!((v["eta_seconds"].as_f64().unwrap() - 79.0 * 0.4022).abs() < 1e-6, "{v}");
}

#[test]
fn llamafactory_trainer_log_elapsed_clock() {
    // `elapsed_time` (H:MM:SS) differenced between training rows: 4.2, 4.2, 4.4 warm-up; of
    // 4.2, 4.2, 11.2 (the eval inside), 4.2, 4.4, 4.2 the 11.2 is an outlier; median 4.2 s
    let v = read(&fixture("llamafactory-trainer-log.jsonl"), &[]);
    check(&v, "jsonl", "cumulative-clock", 4200.0, 1e-9);
    assert_eq!((v["warmup_dropped"].as_u64(), v["outliers_dropped"].as_u64(), v["evals"].as_u64()), (Some(3), Some(1), Some(1)), "{v}");
    // `total_steps: 60`, 10 left
    assert_eq!(v["max_iters"].as_u64(), Some(60), "{v}");
    assert!((v["eta_seconds"].as_f64().unwrap() - 42.0).abs() < 1e-6, "{v}");
}

#[test]
fn litgpt_iter_time() {
    // one sample per 4-iteration cycle, its mean: 307.25, 113.125, 113.0 warm-up; median of
    // 112.825, 113.15, 112.8, 113.25, 112.925 = 112.925 (per single iteration: 97.0)
    let v = read(&fixture("litgpt.log"), &[]);
    check(&v, "litgpt", "per-iteration", 112.925, 1e-9);
    assert_eq!((v["evals"].as_u64(), v["iters_counted"].as_u64(), v["warmup_dropped"].as_u64()), (Some(1), Some(20), Some(3)), "{v}");
}

#[test]
fn lightning_progress_bar_over_two_epochs() {
    // 1-second clock, the first step alone then windows of >= 10 s: epoch 0 gives 8 s for
    // step 1, then 12 s / 4 steps x4 = 3.0; epoch 1's clock restarts: 13 s / 4 steps x4 = 3.25;
    // warm-up drops 8.0, 3.0, 3.0; median of (3.0, 3.0, 3.25, 3.25, 3.25, 3.25) = 3.25 s
    let v = read(&fixture("lightning.log"), &[]);
    check(&v, "lightning", "cumulative-clock", 3250.0, 1e-9);
}

#[test]
fn deepspeed_timer_lines_timed_by_their_timestamps() {
    // `step=N` and `timer.py ... 0/N, SamplesPerSec=` every 10 steps; per-step ms from the
    // timestamps: 1987, 1514, 1511 (warm-up), 1514.5, 1513.5, 1512, 1514, 1513, 1514.5
    let v = read(&fixture("deepspeed-timer.log"), &[]);
    check(&v, "deepspeed", "timestamps", 1513.75, 1e-9);
}

#[test]
fn deepspeed_pipeline_engine_interval_averages() {
    // `iter time (s)` every 10 steps: 2.871, 0.652, 0.641 warm-up; median of
    // 645, 648, 643, 650, 646, 699, 644 = 646
    let v = read(&fixture("deepspeed-pipe.log"), &[]);
    check(&v, "deepspeed", "interval-average", 646.0, 1e-9);
    assert_eq!(v["iters_counted"].as_u64(), Some(70), "{v}");
}

#[test]
fn hf_trainer_state_json_gives_the_run_average() {
    // (train_runtime 806.7695 - eval_runtime 133.2774 - 128.4112) s / global_step 400
    let v = read(&fixture("hf-trainer-state.json"), &[]);
    check(&v, "hf-trainer-state", "run-average", 1362.70225, 1e-9);
    assert_eq!(v["evals"].as_u64(), Some(2));
}

#[test]
fn megatron_args_dump_gives_tokens_gpus_and_the_model() {
    // interval averages every 5 iterations; three warm-up; median of the nine others = 2100.8
    let v = read(&fixture("megatron-lm-args.log"), &["--device", "h100-sxm"]);
    check(&v, "megatron", "interval-average", 2100.8, 1e-9);
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    assert_eq!((f("tokens_per_iter"), f("gpus")), (128.0 * 2048.0, 16.0), "{v}");
    assert!(v["flops_per_token_source"].as_str().unwrap().contains("n_layer 24"), "{v}");
    // a plausible MFU, not flagged
    assert!(f("mfu") > 0.01 && f("mfu") < 1.0 && v["mfu_suspect"].is_null(), "{v}");
    // one GPU instead of 16: above 100%, flagged
    let v = read(&fixture("megatron-lm-args.log"), &["--device", "h100-sxm", "--gpus", "1"]);
    assert!(v["mfu"].as_f64().unwrap() > 1.0 && v["mfu_suspect"].as_str().unwrap().contains("above 100%"), "{v}");
    // 8 GPUs: 1.55x the log's own TFLOP/s column, flagged
    let v = read(&fixture("megatron-lm-args.log"), &["--device", "h100-sxm", "--gpus", "8"]);
    assert!(v["mfu_suspect"].as_str().unwrap().contains("TFLOP/s column"), "{v}");
    let (code, out, _) = gptrain(&["logs", fixture("megatron-lm-args.log").to_str().unwrap(), "--device", "h100-sxm", "--gpus", "1"]);
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l.starts_with("warning: MFU")), "{out}");
}

#[test]
fn generic_fallback_nanochat_and_maxtext_lines() {
    // nanochat `dt: ...ms`: four warm-up, median of the eight others = (992.91 + 993.00) / 2
    let v = read(&fixture("generic-nanochat.log"), &[]);
    check(&v, "generic", "per-iteration", 992.955, 1e-9);
    assert!((v["log_mfu"].as_f64().unwrap() - 0.7).abs() < 0.05, "{v}");
    // maxtext `seconds: 2.167`: four warm-up, median of 2.160 ... 2.171 = 2.1655 s
    let v = read(&fixture("generic-maxtext.log"), &[]);
    check(&v, "generic", "per-iteration", 2165.5, 1e-9);
    let (_, out, _) = gptrain(&["logs", fixture("generic-maxtext.log").to_str().unwrap()]);
    assert!(out.contains("generic fallback"), "{out}");
}

#[test]
fn nanotron_lines_old_and_new() {
    // one iteration's time a line: four warm-up, 673 (a data-stage switch) an outlier, median
    // of 40.6 ... 41.4 = 41.0
    let v = read(&fixture("nanotron-old.log"), &["--block-size", "256"]);
    check(&v, "nanotron", "per-iteration", 41.0, 1e-9);
    // 20 samples (the lines' global_batch_size) x 256 tokens
    assert_eq!(v["tokens_per_iter"].as_f64(), Some(5120.0), "{v}");
    assert!((v["tokens_per_second"].as_f64().unwrap() - 5120.0 / 0.041).abs() < 1e-6, "{v}");
    assert_eq!(v["max_iters"].as_u64(), Some(20));
    // since 2025: `time_per_iteration_ms`, ANSI colours, no year; an excerpt (no warm-up);
    // `global_batch_size: 1.6M` is tokens, rounded: no batch size is taken from it
    let v = read(&fixture("nanotron-new.log"), &[]);
    check(&v, "nanotron", "per-iteration", 8770.0, 1e-9);
    assert_eq!((v["warmup_dropped"].as_u64(), v["tokens_per_iter"].as_f64()), (Some(0), None), "{v}");
    let facts = v["log_facts"].as_array().unwrap();
    assert!(!facts.iter().any(|f| f.as_str().unwrap().starts_with("global batch size")), "{v}");
    assert!((v["eta_seconds"].as_f64().unwrap() - (1_500_000.0 - 211_370.0) * 8.77).abs() < 1e-3, "{v}");
}

#[test]
fn fairseq_and_metaseq_intervals() {
    // wpb / wps per 100-update interval: three warm-up, median of the other nine = 1002 ms;
    // the validation line is an eval; 8 GPUs and max_update 3000 from the start of the log
    let v = read(&fixture("fairseq.log"), &[]);
    check(&v, "fairseq", "interval-average", 1002.0, 1e-6);
    assert_eq!((v["evals"].as_u64(), v["iters_counted"].as_u64()), (Some(1), Some(900)), "{v}");
    assert_eq!((v["gpus"].as_f64(), v["max_iters"].as_u64()), (Some(8.0), Some(3000)), "{v}");
    assert!((v["tokens_per_second"].as_f64().unwrap() - 130_810.0).abs() < 1.0, "{v}");
    assert!((v["eta_seconds"].as_f64().unwrap() - 1800.0 * 1.002).abs() < 1e-3, "{v}");
    // up to v0.9: the cumulative `wall` clock over num_updates
    let v = read(&fixture("fairseq-0.9.log"), &[]);
    check(&v, "fairseq", "cumulative-clock", 1800.0, 1e-9);
    // metaseq's JSON behind `slurm_procid 0 : `: the first line (wps "0") has no time
    let v = read(&fixture("metaseq.log"), &[]);
    check(&v, "fairseq", "interval-average", 1420.0, 1e-5);
    assert_eq!(v["iters_seen"].as_u64(), Some(10), "{v}");
}

#[test]
fn torchtune_throughput_needs_the_tokens_per_step() {
    let f = fixture("torchtune.log");
    let (code, _, err) = gptrain(&["logs", f.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("needs the batch: give --batch-size/--block-size"), "{err}");
    // 2 x 512 tokens per GPU per step / tokens_per_second_per_gpu: median 1024 / 409.0
    let v = read(&f, &["--batch-size", "2", "--block-size", "512"]);
    check(&v, "torchtune", "throughput", 1024.0 / 409.0 * 1e3, 1e-9);
    assert_eq!(v["evals"].as_u64(), Some(1), "{v}");
    // per GPU whatever the GPU count: --gpus 4 counts 4 x the tokens over 4 GPUs
    let v = read(&f, &["--batch-size", "2", "--block-size", "512", "--gpus", "4"]);
    check(&v, "torchtune", "throughput", 1024.0 / 409.0 * 1e3, 1e-9);
    let (_, out, _) = gptrain(&["logs", f.to_str().unwrap(), "--batch-size", "2", "--block-size", "512"]);
    assert!(out.contains("counts the labels' tokens only"), "{out}");
    // its tqdm bar (`epoch|global step|Loss: x`), as a file gets it: each refresh twice, the
    // second with the new description; 1.8 s a step read to the second (windows of >= 10 s:
    // 1667 to 2000 ms), the clock restarting at epoch 2, and the Step lines beside it
    let d = tmp("torchtune-bar");
    let mut text = String::new();
    for (epoch, steps) in [(1u64, 40u64), (2, 20)] {
        for n in 1..=steps {
            let ms = 6000 + 1800 * n;
            let step = (epoch - 1) * 40 + n;
            for shown in [step - 1, step] {
                text += &format!(
                    "{epoch}|{shown}|Loss: 2.{n:02}:  {:2}%|#   | {n}/40 [{:02}:{:02}<01:00,  1.80s/it]\r",
                    n * 100 / 40,
                    ms / 60000,
                    ms / 1000 % 60
                );
            }
            text += &format!("\nStep {step} | loss:2.{n:02} lr:2e-05 tokens_per_second_per_gpu:569.0 \n");
        }
    }
    std::fs::write(d.join("bar.log"), text).unwrap();
    let v = read(&d.join("bar.log"), &[]);
    check(&v, "torchtune", "cumulative-clock", 1800.0, 0.1);
    assert!(v["iters_counted"].as_u64().unwrap() >= 40, "{v}");
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn composer_and_olmo_blocks() {
    // Composer's blocks: 256 samples a batch / samples_per_sec, batches 11-25 (1-10 have no
    // throughput yet); three warm-up, median of the twelve others
    let v = read(&fixture("composer.log"), &[]);
    check(&v, "composer", "window-average", (256.0 / 105.2287 + 256.0 / 105.2261) / 2.0 * 1e3, 1e-9);
    assert_eq!((v["warmup_dropped"].as_u64(), v["iters_seen"].as_u64()), (Some(3), Some(15)), "{v}");
    assert_eq!((v["max_iters"].as_u64(), v["evals"].as_u64()), (Some(4800), Some(5)), "{v}");
    assert!((v["log_mfu"].as_f64().unwrap() - 0.4123).abs() < 0.002, "{v}");
    // OLMo's blocks behind a tab-separated prefix: 1000 / batches_per_second, median 2391.2
    let v = read(&fixture("olmo.log"), &[]);
    check(&v, "olmo", "window-average", 1000.0 / 0.4182, 1e-9);
    assert_eq!((v["max_iters"].as_u64(), v["warmup_dropped"].as_u64(), v["evals"].as_u64()), (Some(20000), Some(3), Some(1)), "{v}");
}

#[test]
fn new_readers_leave_look_alikes_alone_and_read_behind_labels() {
    let d = tmp("lookalikes");
    let w = |name: &str, text: &str| {
        std::fs::write(d.join(name), text).unwrap();
        d.join(name)
    };
    // another trainer's `Step N | name: value` and `[batch=N/M]: name=value` lines: the fallback's
    let steps =
        w("steps.log", "Step 1 | loss: 2.99 | time: 121.5ms\nStep 2 | loss: 2.91 | time: 120.5ms\nStep 3 | loss: 2.90 | time: 120.7ms\n");
    check(&read(&steps, &[]), "generic", "per-iteration", 120.6, 1e-9);
    let batches = w(
        "batches.log",
        "[batch=3/100]: loss=2.3, time=120.1ms\n[batch=4/100]: loss=2.3, time=121.1ms\n[batch=5/100]: loss=2.3, time=120.5ms\n",
    );
    check(&read(&batches, &[]), "generic", "per-iteration", 120.8, 1e-9);
    // Composer and OLMo blocks behind a launcher's rank label and colours: the same figures
    let composer = std::fs::read_to_string(fixture("composer.log")).unwrap();
    let labelled: String = composer.lines().map(|l| format!("[rank0]: {l}\n")).collect();
    check(&read(&w("composer.log", &labelled), &[]), "composer", "window-average", (256.0 / 105.2287 + 256.0 / 105.2261) / 2.0 * 1e3, 1e-9);
    let olmo = std::fs::read_to_string(fixture("olmo.log")).unwrap();
    let labelled: String = olmo.lines().map(|l| format!("0: \x1b[2m{l}\x1b[0m\n")).collect();
    check(&read(&w("olmo.log", &labelled), &[]), "olmo", "window-average", 1000.0 / 0.4182, 1e-9);
    // a rate of almost nothing is no time (never `NaN ms/iter`)
    let text = std::fs::read_to_string(fixture("fairseq.log")).unwrap();
    let fairseq = text.replace("wps=130549.8", "wps=1e-320");
    assert_ne!(fairseq, text);
    let v = read(&w("fairseq.log", &fairseq), &[]);
    assert!(v["steady_ms_per_iter"].as_f64().is_some_and(f64::is_finite), "{v}");
    assert_eq!(v["iters_seen"].as_u64(), Some(11), "{v}");
    // litgpt's config dict (`'global_batch_size': 16`) is not taken as its iteration's batch
    let v = read(&fixture("litgpt.log"), &[]);
    assert!(v["tokens_per_iter"].is_null(), "{v}");
    std::fs::remove_dir_all(d).ok();
}

// ---- noise, forced formats, errors

#[test]
fn prefixes_and_carriage_returns_do_not_stop_a_line() {
    let d = tmp("noise");
    // the real Megatron log behind a quote, a rank label and a timestamp: the same figure
    let text = std::fs::read_to_string(shared("megatron-lm-32xv100-bigscience-n8.log")).unwrap();
    let noisy: String = text.lines().map(|l| format!("> [rank0]: 2021-05-23 08:24:00,123 INFO {l}\n")).collect();
    std::fs::write(d.join("quoted.log"), noisy).unwrap();
    check(&read(&d.join("quoted.log"), &[]), "megatron", "interval-average", 1618.3, 1e-9);
    // a Trainer's bar refreshed in place with carriage returns, a warning between refreshes:
    // 1.2 s per step read to the second, over windows of >= 10 s
    let mut raw = String::from("  0%|          | 0/100 [00:00<?, ?it/s]");
    for n in 1..=60u32 {
        let ms = 5000 + 1200 * n;
        raw += &format!("\r{:3}%|#         | {n}/100 [{:02}:{:02}<01:00,  1.20s/it]", n, ms / 60000, ms / 1000 % 60);
        if n == 30 {
            raw += "\nUserWarning: something\n{'loss': 2.1, 'grad_norm': 0.9, 'learning_rate': 1e-05, 'epoch': 0.3}\n";
        }
    }
    std::fs::write(d.join("cr.log"), raw).unwrap();
    let v = read(&d.join("cr.log"), &[]);
    // windows of >= 10 s read to the second: 9 steps in 10 or 11 s, or 8 steps in 10 s,
    // i.e. 1111 to 1250 ms: within 10% of 1200
    check(&v, "hf-trainer", "cumulative-clock", 1200.0, 0.1);
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn format_flag_and_errors() {
    let meg = shared("megatron-lm-32xv100-bigscience-n8.log");
    let v = read(&meg, &["--format", "megatron"]);
    assert_eq!(v["format"].as_str(), Some("megatron"));
    let (code, _, err) = gptrain(&["logs", meg.to_str().unwrap(), "--format", "nanogpt"]);
    assert_eq!(code, 1);
    assert!(err.lines().last().unwrap().contains("no nanoGPT iteration line"), "{err}");
    let (code, _, err) = gptrain(&["logs", meg.to_str().unwrap(), "--format", "keras"]);
    assert_eq!(code, 1);
    assert!(err.lines().last().unwrap().starts_with("error: unknown --format"), "{err}");
    let (code, _, err) = gptrain(&["logs", "/nonexistent/x.log"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn gptrain_metrics_jsonl_states_its_tokens_flops_and_max_iters() {
    let d = tmp("jsonl");
    let mut text = String::from(
        r#"{"type":"start","iter":0,"max_iters":100,"tokens_per_iter":8192,"flops_per_iter":4.0e12,"peak_flops":1e13,"params":1000,"config":{}}"#,
    );
    text.push('\n');
    for (i, ms) in [900.0, 500.0, 400.0, 400.0, 410.0, 405.0, 400.0].iter().enumerate() {
        text += &format!("{{\"type\":\"iter\",\"iter\":{i},\"loss\":4.0,\"ms\":{ms}}}\n");
    }
    std::fs::write(d.join("metrics.jsonl"), text).unwrap();
    let v = read(&d.join("metrics.jsonl"), &["--peak-tflops", "100"]);
    // 0-3 warm-up (4 settles: 400, 400, 410 agree); median of 410, 405, 400 = 405
    check(&v, "gptrain", "per-iteration", 405.0, 1e-9);
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    assert_eq!(f("tokens_per_iter"), 8192.0, "{v}");
    assert_eq!(v["max_iters"].as_u64(), Some(100), "{v}");
    // 4e12 FLOPs per iteration / 0.405 s / 100 TFLOP/s
    assert!((f("mfu") - 4.0e12 / 0.405 / 1e14).abs() < 1e-9, "{v}");
    // 93 iterations left (iterations 0-99, last logged 6)
    assert!((f("eta_seconds") - 93.0 * 0.405).abs() < 1e-6, "{v}");
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn follow_reprints_as_lines_arrive() {
    let d = tmp("follow");
    let log = d.join("run.log");
    std::fs::write(&log, "starting\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gptrain"))
        .args(["logs", "--follow", log.to_str().unwrap(), "--max-iters", "100"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    let wait_for = |want: &str| -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(l) if l.contains(want) => return Some(l),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    };
    // first batch: warm-up and three agreeing iterations -> 200 ms
    for (i, ms) in [900.0, 200.0, 200.0, 200.0].iter().enumerate() {
        writeln!(f, "iter {i}: loss 4.0, time {ms:.2}ms, mfu -100.00%").unwrap();
    }
    f.flush().unwrap();
    let first = wait_for("iter 3: steady 200.00 ms/iter");
    // more lines, and a half-written one that must wait for its newline
    for i in 4..8 {
        writeln!(f, "iter {i}: loss 4.0, time 300.00ms, mfu 1.00%").unwrap();
    }
    write!(f, "iter 8: loss 4.0, time 9").unwrap();
    f.flush().unwrap();
    // steady over 200, 300, 300, 300, 300 = 300; 92 iterations left at 0.3 s
    let second = wait_for("iter 7: steady 300.00 ms/iter");
    // Ctrl-C: the full report, then a clean exit
    let interrupted = Command::new("kill").args(["-INT", &child.id().to_string()]).status().is_ok_and(|s| s.success());
    let report = interrupted.then(|| wait_for("steady: 300.00 ms/iter")).flatten();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            _ if Instant::now() > deadline => break None,
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    std::fs::remove_dir_all(d).ok();
    assert!(first.is_some(), "no first summary");
    let second = second.expect("no second summary");
    assert!(second.contains("ETA to 100: 27.6s"), "{second}");
    assert!(interrupted && report.is_some(), "no report after Ctrl-C");
    assert_eq!(status.and_then(|s| s.code()), Some(0), "not a clean exit on Ctrl-C");
}

#[test]
fn json_lines_of_metrics() {
    // a custom loop's metrics.jsonl: each line's dt_ms; four warm-up, median of 21 = 1050.3
    let v = read(&fixture("jsonl-loop.jsonl"), &[]);
    check(&v, "jsonl", "per-iteration", 1050.3, 1e-9);
    assert_eq!((v["warmup_dropped"].as_u64(), v["evals"].as_u64(), v["iters_seen"].as_u64()), (Some(4), Some(1), Some(25)), "{v}");
    assert_eq!((v["log_mfu"].as_f64(), v["log_tokens_per_second"].as_f64()), (Some(0.412), Some(499179.3)), "{v}");
    // W&B history rows: `_runtime` differenced; the row holding the eval is an outlier; 812.5
    let v = read(&fixture("jsonl-wandb.jsonl"), &[]);
    check(&v, "jsonl", "cumulative-clock", 812.5, 1e-9);
    assert_eq!((v["warmup_dropped"].as_u64(), v["outliers_dropped"].as_u64()), (Some(3), Some(1)), "{v}");
    // the same rows without `_runtime`: timed by `_timestamp`, the same figure
    let d = tmp("jsonl");
    let text = std::fs::read_to_string(fixture("jsonl-wandb.jsonl")).unwrap();
    let no_clock: String = text
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("_runtime");
            format!("{v}\n")
        })
        .collect();
    std::fs::write(d.join("stamps.jsonl"), &no_clock).unwrap();
    check(&read(&d.join("stamps.jsonl"), &[]), "jsonl", "timestamps", 812.5, 1e-6);
    // a rate only: tokens/s with the flags' tokens per step (16 x 1024 x 32 = 524,288)
    let rate_only: String = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.retain(|k, _| k == "_step" || k == "train/loss");
            o.insert("tokens_per_second".into(), serde_json::json!(if i == 0 { 200000.0 } else { 524288.0 / 0.8125 }));
            format!("{v}\n")
        })
        .collect();
    std::fs::write(d.join("rate.jsonl"), &rate_only).unwrap();
    let flags = ["--batch-size", "16", "--block-size", "1024", "--grad-accum", "32"];
    check(&read(&d.join("rate.jsonl"), &flags), "jsonl", "throughput", 812.5, 1e-9);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn tensorboard_events_are_read_by_their_wall_times() {
    use gptrain::tensorboard::{frame, Event, Summary, Value};
    let event = |wall: f64, step: i64, tags: &[(&str, f32)]| {
        let value = tags.iter().map(|(t, v)| Value { tag: t.to_string(), simple_value: Some(*v), ..Default::default() }).collect();
        frame(&prost::Message::encode_to_vec(&Event { wall_time: wall, step, summary: Some(Summary { value }), ..Default::default() }))
    };
    // as the Hugging Face Trainer logs (logging_steps=1): train/loss and train/learning_rate per
    // step; an evaluation at step 10, logged 3 s after that step's training scalars
    let t0 = 1764982800.0;
    let ms = [1500.0, 250.0, 251.0, 249.0, 250.0, 250.5, 249.5, 250.0, 251.0, 249.0, 250.0, 250.0, 249.5, 250.5, 250.0, 251.0];
    let mut bytes =
        frame(&prost::Message::encode_to_vec(&Event { wall_time: t0, file_version: Some("brain.Event:2".into()), ..Default::default() }));
    let mut wall = t0;
    for (i, dt) in ms.iter().enumerate() {
        let step = i as i64 + 1;
        wall += dt / 1e3;
        bytes.extend(event(wall, step, &[("train/loss", 3.0 - step as f32 * 0.01), ("train/learning_rate", 5e-5)]));
        if step == 10 {
            wall += 3.0;
            bytes.extend(event(wall, step, &[("eval/loss", 2.95), ("eval/runtime", 3.0), ("eval/steps_per_second", 4.2)]));
        }
    }
    let d = tmp("tensorboard");
    let file = d.join("events.out.tfevents.1764982800.host.1.0");
    std::fs::write(&file, &bytes).unwrap();
    // steps 2-16 apart by their times (step 1 has no earlier line); step 11's interval starts
    // after the evaluation logged at step 10 (not an outlier: not counted at all)
    let v = read(&file, &[]);
    assert_eq!((v["format"].as_str(), v["time_meaning"].as_str()), (Some("tensorboard"), Some("timestamps")), "{v}");
    let mut steady: Vec<f64> = ms[1..].to_vec();
    steady.drain(..3); // warm-up: 250, 251, 249 agree: three dropped (the meter's rule)
    steady.sort_by(f64::total_cmp);
    let median = steady[steady.len() / 2];
    let got = v["steady_ms_per_iter"].as_f64().unwrap();
    assert!((got - median).abs() < 1e-3, "steady {got}, by hand {median}: {v}");
    assert_eq!((v["outliers_dropped"].as_u64(), v["iters_seen"].as_u64(), v["evals"].as_u64()), (Some(0), Some(15), Some(1)), "{v}");
    // the same through a folder: the events' own, Hugging Face's `output/runs/<run>/`, an
    // out_dir's `tensorboard/`; a folder above two runs names them
    let name = "events.out.tfevents.1764982800.host.1.0";
    for sub in ["hf/output/runs/Dec06_10-00-00_host", "run/tensorboard"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
        std::fs::copy(&file, d.join(sub).join(name)).unwrap();
    }
    for p in [d.join("hf/output/runs/Dec06_10-00-00_host"), d.join("hf"), d.join("run")] {
        assert_eq!(read(&p, &[])["steady_ms_per_iter"].as_f64(), Some(got), "{p:?}");
    }
    let (code, _, err) = gptrain(&["logs", d.to_str().unwrap()]);
    assert!(code == 1 && err.contains("holds 2 runs' TensorBoard event files") && err.contains("give one of these folders"), "{err}");
    // an out_dir with its metrics.jsonl: that is read (it states tokens per step)
    let metrics = "{\"type\":\"iter\",\"iter\":1,\"loss\":3.0,\"ms\":100.0}\n{\"type\":\"iter\",\"iter\":2,\"loss\":2.9,\"ms\":101.0}\n{\"type\":\"iter\",\"iter\":3,\"loss\":2.8,\"ms\":100.5}\n";
    std::fs::write(d.join("run/metrics.jsonl"), metrics).unwrap();
    assert_eq!(read(&d.join("run"), &[])["format"].as_str(), Some("gptrain"));
    assert_eq!(read(&d.join("run"), &["--format", "tensorboard"])["format"].as_str(), Some("tensorboard"));
    // a log read from a pipe: read once
    let text = std::fs::read(fixture("generic-maxtext.log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gptrain"))
        .args(["logs", "/dev/stdin", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&text).unwrap();
    let out = child.wait_with_output().unwrap();
    let piped: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(piped["steady_ms_per_iter"], read(&fixture("generic-maxtext.log"), &[])["steady_ms_per_iter"]);
    // a cut-off last record (a run still writing) loses only that record
    let mut cut = bytes.clone();
    cut.extend(&event(wall + 0.25, 17, &[("train/loss", 2.8)])[..20]);
    std::fs::write(d.join("cut.tfevents"), &cut).unwrap();
    let v = read(&d.join("cut.tfevents"), &[]);
    assert_eq!((v["last_iter"].as_u64(), v["steady_ms_per_iter"].as_f64()), (Some(16), Some(got)), "{v}");
    // --format that is not this one, --format tensorboard on a text log, --follow: one line each
    let (code, _, err) = gptrain(&["logs", file.to_str().unwrap(), "--format", "nanogpt"]);
    assert!(code == 1 && err.contains("holds TensorBoard events: read it with --format tensorboard"), "{err}");
    let text = fixture("jsonl-loop.jsonl");
    let (code, _, err) = gptrain(&["logs", text.to_str().unwrap(), "--format", "tensorboard"]);
    assert!(code == 1 && err.contains("is not a TensorBoard events file"), "{err}");
    let (code, _, err) = gptrain(&["logs", file.to_str().unwrap(), "--follow"]);
    assert!(code == 1 && err.contains("--follow reads a text log"), "{err}");
    // events without a scalar (only the file's version, as a run killed at once leaves it)
    let empty = d.join("empty.tfevents");
    let version =
        frame(&prost::Message::encode_to_vec(&Event { wall_time: t0, file_version: Some("brain.Event:2".into()), ..Default::default() }));
    std::fs::write(&empty, &version).unwrap();
    let (code, _, err) = gptrain(&["logs", empty.to_str().unwrap()]);
    assert!(code == 1 && err.contains("TensorBoard events without a scalar"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn keras_tf2_tensor_scalars_in_train_and_validation_folders_are_one_run() {
    // see the fixture's note: 12 epochs of a Keras fit, scalars stored as TF2 tensors; train/
    // and validation/ are one run, its iterations the epochs, its evals validation/'s rows
    let run = fixture("keras/fit/20261206-101500");
    for p in [fixture("keras"), run.clone()] {
        let v = read(&p, &[]);
        check(&v, "tensorboard", "timestamps", 4105.0, 1e-6);
        let n = |k: &str| v[k].as_u64().unwrap_or(u64::MAX);
        // epochs done: epoch 0's scalars (at step 0) end the first
        assert_eq!((n("first_iter"), n("last_iter"), n("iters_seen"), n("evals")), (1, 12, 11, 12), "{p:?}: {v}");
        assert_eq!((n("warmup_dropped"), n("outliers_dropped"), n("iters_counted")), (3, 0, 8), "{p:?}: {v}");
    }
    // so a fit of 12 epochs that logged its 12th has nothing left; at 13, one epoch
    for (epochs, eta) in [("12", 0.0), ("13", 4.105)] {
        let v = read(&run, &["--max-iters", epochs]);
        assert!((v["eta_seconds"].as_f64().unwrap() - eta).abs() < 1e-6, "{epochs}: {v}");
    }
    // the train folder alone: the same epochs (a Keras run by the model it holds), no evaluation
    let v = read(&run.join("train"), &[]);
    check(&v, "tensorboard", "timestamps", 4105.0, 1e-6);
    assert_eq!((v["evals"].as_u64(), v["first_iter"].as_u64()), (Some(0), Some(1)), "{v}");
    // a torch SummaryWriter loop's `epoch_loss` at its own (1-based) steps is not shifted
    let torch = tmp("keras-like");
    let mut w = gptrain::tensorboard::EventWriter::create(&torch).unwrap();
    for step in 1..=6i64 {
        let value = vec![gptrain::tensorboard::Value { tag: "epoch_loss".into(), simple_value: Some(2.0), ..Default::default() }];
        let summary = Some(gptrain::tensorboard::Summary { value });
        w.write(&gptrain::tensorboard::Event { wall_time: 1e9 + step as f64, step, summary, ..Default::default() }).unwrap();
    }
    let v = read(&torch, &[]);
    assert_eq!((v["first_iter"].as_u64(), v["last_iter"].as_u64()), (Some(1), Some(6)), "{v}");
    let _ = std::fs::remove_dir_all(&torch);
    // two Keras runs side by side: refused, naming the runs' folders (not their train/, validation/)
    let d = tmp("keras");
    for name in ["A", "B"] {
        for sub in ["train", "validation"] {
            let to = d.join("fit").join(name).join(sub);
            std::fs::create_dir_all(&to).unwrap();
            for f in std::fs::read_dir(run.join(sub)).unwrap() {
                let f = f.unwrap().path();
                std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
            }
        }
    }
    let (code, _, err) = gptrain(&["logs", d.to_str().unwrap()]);
    let runs = format!("({}, {})", d.join("fit/A").display(), d.join("fit/B").display());
    assert!(code == 1 && err.contains(&format!("holds 2 runs' TensorBoard event files {runs}")), "{err}");
    assert_eq!(read(&d.join("fit/B"), &[])["steady_ms_per_iter"].as_f64(), Some(4105.0));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn gptrain_resumed_metrics_jsonl_is_read_session_by_session() {
    // see the fixture's note: two sessions (a start record each), ~80 and ~50 ms/iter
    let v = read(&fixture("gptrain-resumed.jsonl"), &[]);
    check(&v, "gptrain", "per-iteration", 50.3, 1e-9);
    let n = |k: &str| v[k].as_u64().unwrap_or(u64::MAX);
    // each session's warm-up (5 + 4), and no outlier: the slower first session is kept
    assert_eq!((n("iters_seen"), n("warmup_dropped"), n("outliers_dropped"), n("iters_counted")), (40, 9, 0, 31), "{v}");
    assert_eq!(v["warmup_settled"].as_bool(), Some(true), "{v}");
    assert_eq!(v["p90_ms"].as_f64(), Some(80.5), "{v}");
    let sessions: Vec<(u64, f64)> = v["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["first_iter"].as_u64().unwrap(), s["steady_ms_per_iter"].as_f64().unwrap()))
        .collect();
    assert_eq!(sessions, [(0, 80.25), (15, 50.1)], "{v}");
    assert!(v["few_samples_warning"].is_null(), "{v}");
    // the last start record states the run: max_iters 40
    assert_eq!((v["tokens_per_iter"].as_f64(), v["max_iters"].as_u64()), (Some(384.0), Some(40)), "{v}");
}

#[test]
fn gptrain_text_log_states_its_flops_per_iteration() {
    let d = tmp("gptrain-text");
    let mut text = String::from(
        "model: 4 layers, 4 heads, 128 dims, block 64, vocab 65, bias false\ntokens per iteration: 768 ; FLOPs per iteration: 3.97G\n",
    );
    for (i, ms) in [900.0, 120.0, 100.0, 101.0, 100.0, 99.0, 100.0, 100.5].iter().enumerate() {
        text += &format!("iter {i}: loss 4.0000, time {ms:.2}ms, lr 1.00e-3, norm 0.5000\n");
    }
    std::fs::write(d.join("train.log"), text).unwrap();
    let v = read(&d.join("train.log"), &["--device", "cpu"]);
    assert_eq!(v["format"].as_str(), Some("gptrain"), "{v}");
    let facts: Vec<&str> = v["log_facts"].as_array().unwrap().iter().filter_map(|f| f.as_str()).collect();
    assert!(facts.contains(&"FLOPs per iteration 3.97G (`FLOPs per iteration: 3.97G`)"), "{v}");
    assert_eq!(v["tokens_per_iter"].as_f64(), Some(768.0), "{v}");
    std::fs::remove_dir_all(d).ok();
}

// ---- new-user report items 3, 10, 11, 12: the V100 logs' device, flags asked for, CPU wording

#[test]
fn v100_logs_get_an_mfu_and_an_unknown_device_is_said_in_the_mfu_line() {
    let meg = shared("megatron-lm-32xv100-bigscience-n8.log");
    // the note's model (48 layers, 7168 wide, 32 heads, vocab 50257) on 32 V100 32GB in fp16:
    // ~11% of the 125 TFLOP/s fp16 tensor peak (the note's rough 6N figure)
    let shape =
        ["--set", "n_layer=48", "--set", "n_embd=7168", "--set", "n_head=32", "--set", "vocab_size=50257", "--set", "block_size=1024"];
    let mut args = vec!["--device", "v100", "--block-size", "1024", "--gpus", "32"];
    args.extend(shape);
    let v = read(&meg, &args);
    assert_eq!((v["device"].as_str(), v["peak_flops"].as_f64()), (Some("v100-sxm2-32gb"), Some(125e12)), "{v}");
    let mfu = v["mfu"].as_f64().unwrap();
    assert!((0.10..0.13).contains(&mfu), "{v}");
    // an unknown device: said in the MFU line itself, no warning after the report
    let (code, out, err) = gptrain(&["logs", meg.to_str().unwrap(), "--device", "v100x"]);
    assert_eq!(code, 0, "{err}");
    let line = out.lines().find(|l| l.starts_with("MFU:")).unwrap_or_default();
    assert!(
        line.starts_with("MFU: n/a (unknown device `v100x`: give --peak-tflops or one of cpu, ") && line.contains("v100-sxm2-32gb"),
        "{out}"
    );
    assert!(!out.contains("name the GPU with --device") && !err.contains("unknown device"), "{out}\n{err}");
    assert_eq!(read(&meg, &["--device", "v100x"])["device_unknown"].as_str(), Some("v100x"));
}

#[test]
fn logs_asks_only_for_the_flags_it_lacks() {
    // the log states the global batch (4): only the sequence length is missing
    let meg = shared("megatron-lm-32xv100-bigscience-n8.log");
    let (code, out, err) = gptrain(&["logs", meg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("tokens/iter: unknown (give --block-size: the log states the global batch)\n"), "{out}");
    assert!(out.contains("tokens/s: unknown (give --block-size: the log states the global batch)\n"), "{out}");
    assert!(out.contains("GPUs: 1 (assumed; give --gpus for a multi-GPU run)\n"), "{out}");
    let (_, out, _) = gptrain(&["logs", meg.to_str().unwrap(), "--block-size", "1024"]);
    assert!(out.contains("tokens/iter: 4,096 "), "{out}");
}

#[test]
fn a_cpu_log_is_one_device_not_a_gpu() {
    let d = tmp("cpu-words");
    let mut text =
        String::from(r#"{"type":"start","iter":0,"max_iters":100,"tokens_per_iter":768,"flops_per_iter":4.0e9,"params":1000,"config":{}}"#);
    text.push('\n');
    for (i, ms) in [900.0, 500.0, 400.0, 400.0, 410.0, 405.0, 400.0].iter().enumerate() {
        text += &format!("{{\"type\":\"iter\",\"iter\":{i},\"loss\":4.0,\"ms\":{ms}}}\n");
    }
    std::fs::write(d.join("metrics.jsonl"), text).unwrap();
    let (code, out, err) = gptrain(&["logs", d.join("metrics.jsonl").to_str().unwrap(), "--device", "cpu"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("GPU") && !out.contains("(("), "{out}");
    assert!(out.contains("devices: 1 (the CPU)\n") && out.contains("true MFU on cpu (fp32): "), "{out}");
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn logs_and_bench_help_describe_every_flag() {
    for (cmd, flags) in [
        ("logs", &["--dtype", "--peak-tflops", "--block-size", "--grad-accum", "--max-iters", "--json"][..]),
        ("bench", &["--threads", "--json"][..]),
    ] {
        let (code, out, _) = gptrain(&[cmd, "--help"]);
        assert_eq!(code, 0);
        let lines: Vec<&str> = out.lines().collect();
        for f in flags {
            // `  --flag <VALUE>    description` (clap's short help), or the description on the next line
            let i = lines.iter().position(|l| l.trim_start().starts_with(&format!("{f} ")) || l.trim() == *f).unwrap();
            let rest = lines[i].trim_start()[f.len()..].trim_start();
            let rest = if rest.starts_with('<') { rest.split_once('>').map_or("", |x| x.1) } else { rest }.trim();
            let next = lines.get(i + 1).copied().unwrap_or("").trim();
            assert!(!rest.is_empty() || !(next.is_empty() || next.starts_with('-')), "{cmd} {f} has no description:\n{out}");
        }
    }
}

// ---- the report's lines: a resumed run's sessions, a too-thin steady figure, MFU from gptrain's banner

#[test]
fn a_gptrain_text_log_gets_its_mfu_from_the_flops_banner() {
    let d = tmp("gptrain-text-mfu");
    let mut text = String::from("tokens per iteration: 768 ; FLOPs per iteration: 3.97G\n");
    for (i, ms) in [900.0, 120.0, 100.0, 101.0, 100.0, 99.0, 100.0, 100.5].iter().enumerate() {
        text += &format!("iter {i}: loss 4.0000, time {ms:.2}ms, lr 1.00e-3, norm 0.5000\n");
    }
    std::fs::write(d.join("train.log"), text).unwrap();
    let v = read(&d.join("train.log"), &["--peak-tflops", "1"]);
    // 3.97e9 FLOPs / 768 tokens; 768 tokens / 0.1 s (median of 100, 99, 100, 100.5... = 100)
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    assert!((f("flops_per_token") - 3.97e9 / 768.0).abs() < 1e-6, "{v}");
    assert!((f("mfu") - 3.97e9 / (f("steady_ms_per_iter") / 1e3) / 1e12).abs() < 1e-9, "{v}");
    assert!(v["flops_per_token_source"].as_str().unwrap().contains("FLOPs per iteration: 3.97G"), "{v}");
    let (code, out, _) = gptrain(&["logs", d.join("train.log").to_str().unwrap(), "--device", "cpu"]);
    assert_eq!(code, 0);
    assert!(out.contains("true MFU on cpu (fp32): "), "{out}");
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn a_resumed_run_is_noted_and_one_sample_is_no_steady_state() {
    let (code, out, _) = gptrain(&["logs", fixture("gptrain-resumed.jsonl").to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        out.contains("note: the file holds 2 sessions (a start record each: the run was resumed)")
            && out.contains("(iterations 0-14: 80.25 ms/iter; iterations 15-39: 50.10 ms/iter)"),
        "{out}"
    );
    assert!(out.contains("steady: 50.30 ms/iter (median of 31 samples covering 31 iterations;"), "{out}");
    assert!(!out.contains("warning:"), "{out}");
    // one fairseq line (as README's format table quotes): a figure, not a steady state
    let d = tmp("one-sample");
    let line = "2020-07-17 07:11:02 | INFO | train_inner | epoch 001:   2800 / 160368 loss=9.255, wps=57.3, ups=0.04, wpb=1613, bsz=80, num_updates=2800, wall=1236\n";
    std::fs::write(d.join("one.log"), line).unwrap();
    let (code, out, _) = gptrain(&["logs", d.join("one.log").to_str().unwrap()]);
    std::fs::remove_dir_all(d).ok();
    assert_eq!(code, 0);
    assert!(out.contains("(median of 1 sample covering 1 iteration;"), "{out}");
    assert!(out.contains("warning: the steady figure rests on one sample (1 iteration): too few to be a steady state"), "{out}");
}
