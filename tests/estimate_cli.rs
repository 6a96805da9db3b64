//! `gptrain estimate --json` as a new user runs it: what it assumed, and the published points it
//! must meet (issue 20, item 3): each within 25% of the predicted range's middle.

mod common;

use common::gptrain;
use std::path::{Path, PathBuf};

/// An empty folder: no `data/` beside it, as on a fresh clone.
fn tmp(name: &str) -> PathBuf {
    common::tmp(&format!("estimate-{name}"))
}

fn json(args: &[&str], dir: &Path) -> serde_json::Value {
    let mut all = vec!["estimate", "--json"];
    all.extend(args);
    let (code, out, err) = gptrain(&all, dir);
    assert_eq!(code, 0, "{all:?}: {err}");
    serde_json::from_str(out.trim()).expect("stdout holds only the JSON object")
}

/// |published / predicted - 1| and |predicted / published - 1|, the larger.
fn off(predicted: f64, published: f64) -> f64 {
    (published / predicted - 1.0).abs().max((predicted / published - 1.0).abs())
}

fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn estimate_json_meets_the_published_points() {
    let d = tmp("published");
    // nanoGPT README: shakespeare-char "on one A100 GPU ... takes about 3 minutes", evals included
    let v = json(&["--preset", "shakespeare-char", "--device", "a100-40gb"], &d);
    assert_eq!((v["dtype"].as_str(), v["gpus"].as_u64(), v["evals"].as_u64()), (Some("bf16"), Some(1), Some(21)), "{v}");
    assert!(v["dtype_source"].as_str().unwrap().contains("nanoGPT's default"), "{v}");
    assert!(v["allreduce"].is_null());
    let total = f(&v["total_seconds"]);
    assert!(off(total, 180.0) < 0.25, "shakespeare-char: predicted {total:.0} s, published ~180 s");
    // nanoGPT README: GPT-2 124M "on a single 8XA100 40GB node in about 4 days"
    let v = json(&["--preset", "gpt2-124m", "--device", "a100-40gb", "--gpus", "8"], &d);
    assert_eq!((v["gpus"].as_u64(), v["grad_accum_per_gpu"].as_u64(), v["tokens_per_iter"].as_u64()), (Some(8), Some(5), Some(491_520)));
    let days = f(&v["total_seconds"]) / 86400.0;
    assert!(off(days, 4.0) < 0.25, "gpt2-124m on 8 A100s: predicted {days:.2} days, published ~4");
    let a = &v["allreduce"];
    assert!(f(&a["ms_per_iter"]) > 0.0 && f(&a["link_gbs"]) == 300.0, "{a}");
    assert!(a["link_source"].as_str().unwrap().contains("NVLink") && a["assumption"].as_str().unwrap().contains("not overlapped"), "{a}");
    // nanoGPT's train.py measured on an H200 (PERFORMANCE.md): the rtx4070-40m shape in fp16
    // and GPT-2 124M (with biases, as run there) in bf16, steady ms per iteration
    for (args, measured) in [(vec!["--preset", "rtx4070-40m"], 366.6), (vec!["--preset", "gpt2-124m", "--set", "bias=true"], 1067.5)] {
        let mut a = vec!["--device", "h200"];
        a.extend(args);
        let v = json(&a, &d);
        let (mid, lo, hi) = (f(&v["ms_per_iter"]), f(&v["ms_per_iter_range"][0]), f(&v["ms_per_iter_range"][1]));
        assert!(off(mid, measured) < 0.25 && lo <= measured && measured <= hi, "{a:?}: {lo:.0}-{hi:.0} (mid {mid:.0}) vs {measured}");
    }
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn estimate_says_where_the_vocabulary_comes_from() {
    let d = tmp("vocab");
    // a nanoGPT config naming no dataset: nanoGPT's default, openwebtext (GPT-2 BPE, 50304),
    // which is not here: an assumption that says how to override it
    std::fs::write(
        d.join("train_gpt2.py"),
        "batch_size = 12\nblock_size = 1024\ngradient_accumulation_steps = 5 * 8\nmax_iters = 600000\n",
    )
    .unwrap();
    let v = json(&["--config", "train_gpt2.py", "--device", "a100"], &d);
    let src = v["vocab"]["source"].as_str().unwrap();
    assert_eq!((v["vocab"]["size"].as_u64(), v["vocab"]["assumed"].as_bool()), (Some(50304), Some(true)), "{v}");
    assert!(src.contains("openwebtext") && src.contains("--set vocab_size="), "{src}");
    // a named dataset that is not on disk: nanoGPT's vocabulary for it, assumed
    std::fs::write(d.join("train_char.py"), "dataset = 'shakespeare_char'\nn_layer = 6\nn_head = 6\nn_embd = 384\nblock_size = 256\n")
        .unwrap();
    let v = json(&["--config", "train_char.py", "--device", "a100"], &d);
    assert_eq!((v["vocab"]["size"].as_u64(), v["vocab"]["assumed"].as_bool()), (Some(65), Some(true)), "{v}");
    assert!(v["vocab"]["source"].as_str().unwrap().contains("not on disk"), "{v}");
    // vocab_size given, and the built-in corpus: not assumptions
    let v = json(&["--preset", "gpt2-124m", "--device", "a100"], &d);
    assert_eq!((v["vocab"]["size"].as_u64(), v["vocab"]["assumed"].as_bool()), (Some(50304), Some(false)));
    let v = json(&["--device", "cpu"], &d);
    assert_eq!(v["vocab"]["assumed"], false);
    assert!(v["vocab"]["source"].as_str().unwrap().contains("built-in corpus"), "{v}");
    // the text output says it too
    let (code, out, _) = gptrain(&["estimate", "--config", "train_gpt2.py", "--device", "a100"], &d);
    assert_eq!(code, 0);
    assert!(out.contains("vocabulary: 50304 (assumed: "), "{out}");
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn estimate_labels_each_dtypes_peak_and_picks_nanogpts_dtype() {
    let d = tmp("dtype");
    // fp32 on an A100 is the non-tensor figure, not the fp16 tensor one
    let v = json(&["--preset", "shakespeare-char", "--device", "a100", "--dtype", "fp32"], &d);
    let src = v["peak_source"].as_str().unwrap();
    assert!(src.contains("FP32") && !src.contains("FP16") && f(&v["peak_flops"]) == 19.5e12, "{src}");
    assert_eq!(v["dtype_source"], "--dtype");
    assert_eq!(v["peaks"].as_array().unwrap().len(), 4);
    // a T4 has no TF32 and no bf16: it says so, and nanoGPT's default there is fp16
    let v = json(&["--preset", "shakespeare-char", "--device", "t4", "--dtype", "tf32"], &d);
    assert!(v["peak_source"].as_str().unwrap().contains("no TF32"), "{v}");
    let v = json(&["--preset", "shakespeare-char", "--device", "t4"], &d);
    assert_eq!(v["dtype"], "fp16");
    // a preset's dtype is kept
    assert_eq!(json(&["--preset", "rtx4070-40m", "--device", "a100"], &d)["dtype"], "fp16");
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn estimate_keeps_significant_digits_below_a_millisecond() {
    let d = tmp("tiny");
    let (code, out, err) = gptrain(&["estimate", "--device", "h100"], &d);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains(" 0 ms"), "{out}");
    let floor = out.lines().find(|l| l.starts_with("floor")).unwrap();
    assert!(floor.contains("0.0"), "{floor}");
    // below every measured run: the default MFU is a guess, and it says so
    assert!(out.contains("smaller than any measured"), "{out}");
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn bad_gpu_counts_get_one_clear_line() {
    let d = tmp("gpus");
    for (args, want) in [
        (vec!["--preset", "gpt2-124m", "--device", "a100", "--gpus", "0"], "--gpus must be at least 1"),
        (vec!["--preset", "gpt2-124m", "--device", "a100", "--gpus", "3"], "must be divisible by --gpus 3"),
        (vec!["--device", "cpu", "--gpus", "2"], "the CPU is one device"),
        (vec!["--preset", "gpt2-124m", "--device", "voodoo-9", "--peak-tflops", "100", "--gpus", "2"], "interconnect"),
    ] {
        let mut a = vec!["estimate"];
        a.extend(args);
        let (code, _, err) = gptrain(&a, &d);
        let last = err.lines().last().unwrap_or("");
        assert!(code == 1 && last.starts_with("error: ") && last.contains(want), "{a:?}: {err}");
    }
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn expect_total_answers_can_it_finish_in_ten_minutes() {
    // the founding case: 6000 iterations of rtx4070-40m on an RTX 4070 "in about 10 minutes"
    let d = tmp("expect-total");
    let run = ["estimate", "--preset", "rtx4070-40m", "--device", "rtx-4070", "--dtype", "fp16"];
    let with = |extra: &[&str]| {
        let mut a = run.to_vec();
        a.extend(extra);
        gptrain(&a, &d)
    };
    let (code, out, err) = with(&["--expect-total", "10m"]);
    // an impossible verdict is an answer, not an error
    assert_eq!(code, 0, "{err}");
    let last = out.lines().last().unwrap();
    assert!(last.starts_with("10m00s for 6000 iterations + 4 evals = 99.7 ms/iteration ("), "{last}");
    assert!(last.contains("impossible: 99.7 ms/iteration means") && last.contains("23.0x the rtx-4070 peak"), "{last}");
    // --expect-ms says the total it implies
    let (code, out, _) = with(&["--expect-ms", "100"]);
    assert_eq!(code, 0);
    assert!(out.lines().last().unwrap().starts_with("100 ms/iteration = 10m02s for 6000 iterations + 4 evals ("), "{out}");
    // --json: both times, the verdict, and what was given
    let v = json(&["--preset", "rtx4070-40m", "--device", "rtx-4070", "--dtype", "fp16", "--expect-total", "2h30m"], &d);
    let x = &v["expect_total"];
    assert_eq!(
        (x["given"].as_str(), x["total_seconds"].as_f64(), x["possible"].as_bool()),
        (Some("2h30m"), Some(9000.0), Some(false)),
        "{x}"
    );
    assert!((f(&x["ms"]) - 1500.0 * (1.0 - f(&x["eval_share"]))).abs() < 1e-6, "{x}");
    let v = json(&["--preset", "rtx4070-40m", "--device", "rtx-4070", "--dtype", "fp16", "--expect-total", "86400"], &d);
    assert_eq!(v["expect_total"]["possible"], true, "{v}");
    let v = json(&["--preset", "rtx4070-40m", "--device", "rtx-4070", "--dtype", "fp16", "--expect-ms", "100"], &d);
    assert!((f(&v["expect_ms"]["total_seconds"]) - 601.7).abs() < 0.5 && v["expect_ms"]["possible"] == false, "{v}");
    // a duration that is not one: one clear line
    let (code, _, err) = with(&["--expect-total", "ten minutes"]);
    let last = err.lines().last().unwrap_or("");
    assert!(code == 1 && last.starts_with("error: cannot read `ten minutes` as a duration") && last.contains("2h30m"), "{err}");
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn v100_is_in_the_table_and_the_cpu_has_no_gpu_words() {
    let d = tmp("v100");
    // the V100 has no bf16: nanoGPT's default there is fp16, at the 125 TFLOP/s tensor peak
    let v = json(&["--preset", "gpt2-124m", "--device", "v100"], &d);
    assert_eq!((v["device"].as_str(), v["dtype"].as_str(), f(&v["peak_flops"])), (Some("v100-sxm2-32gb"), Some("fp16"), 125e12), "{v}");
    assert!(v["peak_source"].as_str().unwrap().contains("V100"), "{v}");
    let v = json(&["--preset", "gpt2-124m", "--device", "v100-pcie-16gb", "--dtype", "fp32"], &d);
    assert_eq!((f(&v["peak_flops"]), v["device_memory_bytes"].as_u64()), (14e12, Some(16_000_000_000)), "{v}");
    let (code, out, _) = gptrain(&["estimate", "--list-devices"], &d);
    assert!(code == 0 && out.contains("v100-sxm2-32gb") && out.contains("v100-pcie-32gb"), "{out}");
    // no TF32 and no BF16 on Volta: the list says so in its columns
    let v100 = out.lines().find(|l| l.starts_with("v100-sxm2-32gb")).unwrap();
    assert!(v100.contains("tf32      -") && v100.contains("fp16 only  125.0"), "{v100}");
    let h100 = out.lines().find(|l| l.starts_with("h100-sxm")).unwrap();
    assert!(h100.contains("tf32  494.7") && h100.contains("fp16/bf16  989.4"), "{h100}");
    // the CPU is not a GPU
    let (code, out, err) = gptrain(&["estimate", "--device", "cpu"], &d);
    assert_eq!(code, 0, "{err}");
    let line = out.lines().find(|l| l.starts_with("device: cpu")).unwrap();
    assert!(!line.contains("per GPU"), "{line}");
    std::fs::remove_dir_all(d).ok();
}
