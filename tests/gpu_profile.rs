//! `bench --profile` on the CUDA backend: every op timed between CUDA events, and rated in
//! TFLOP/s (matmul work) or GB/s (the rest). In process on the emulator (`GPTRAIN_CUDA_EMU`, see
//! `common::cuda`) or a GPU; through the binary on the emulator (`common::emulator`: built here
//! when that variable names none); skipped, saying so, without either.

mod common;

use common::skipped;
use gptrain::backend::{Backend, Precision};
use gptrain::model::ModelConfig;

/// The op names a training step's profile has a row for (dropout only with dropout on).
const OPS: [&str; 16] = [
    "matmul qkv",
    "matmul attn proj",
    "matmul mlp fc",
    "matmul mlp proj",
    "matmul lm_head",
    "attention forward",
    "attention backward",
    "layernorm",
    "gelu",
    "residual",
    "encoder",
    "softmax + cross-entropy",
    "loss",
    "grad norm",
    "adamw (+ clip)",
    "zero grads/activations",
];

/// The rows that do matmul work (rated in TFLOP/s).
fn is_matmul_work(name: &str) -> bool {
    name.starts_with("matmul") || name.starts_with("attention")
}

#[test]
fn cuda_profile_times_every_op_by_events_and_rates_it() {
    let gpu = match common::cuda() {
        Ok(g) => g,
        Err(why) => return skipped("cuda_profile_times_every_op_by_events_and_rates_it", &why),
    };
    let mc = ModelConfig { n_layer: 2, n_head: 2, n_embd: 32, block_size: 16, vocab_size: 65, padded_vocab_size: 128, bias: true };
    let (b, p) = (2, Precision::Bf16);
    let info = gpu.device(p);
    let r = gptrain::bench::run(&mc, b, 1, 2, 1, true, gpu, p, gptrain::model::Recompute::Off).unwrap();
    let rates = gptrain::bench::profile_rates(&r.profile, &gptrain::bench::profile_flops(&mc, b), info.peak_flops, info.bandwidth);
    for op in OPS {
        assert!(rates.iter().any(|x| x.name == op), "no row for {op}: {rates:?}");
    }
    let share: f64 = rates.iter().map(|x| x.share).sum();
    assert!((share - 100.0).abs() < 1e-6, "shares add up to {share}%");
    for x in &rates {
        eprintln!("{:<28} {:>8.3} ms {:>5.1}% {:?} TFLOP/s {:?} GB/s", x.name, x.ms, x.share, x.tflops, x.gbs);
        if x.name == "dropout" {
            // off (the default), it moves nothing: no rate
            assert!(x.bytes == 0.0 && x.tflops.is_none() && x.gbs.is_none(), "{x:?}");
            continue;
        }
        let rate = if is_matmul_work(&x.name) { x.tflops.filter(|_| x.gbs.is_none()) } else { x.gbs.filter(|_| x.tflops.is_none()) };
        assert!(rate.is_some_and(|r| r > 0.0 && r.is_finite()), "{x:?}");
        // a card in the device table has both ceilings, an unknown one (the emulator) neither
        assert_eq!(x.pct_of_peak.is_some(), info.peak_flops.is_some() && info.bandwidth.is_some(), "{x:?}");
    }
}

/// `bench --profile` through the binary on the emulator: the text names what its times are, and
/// `--json` keeps `profile` as [name, ms] pairs beside `profile_rates`.
#[test]
fn the_binary_profiles_an_emulated_gpu_in_text_and_json() {
    let Some(emu) = common::emu_or_skip("the_binary_profiles_an_emulated_gpu_in_text_and_json") else { return };
    let d = common::tmp("gpu-profile");
    let mut args = vec!["bench", "--set", "device=cuda", "--steps", "1", "--warmup", "1", "--profile"];
    args.extend(["--set", "n_layer=1", "--set", "n_head=2", "--set", "n_embd=32", "--set", "block_size=16", "--set", "batch_size=2"]);
    let (code, out, err) = common::on_emu(&emu, &args, &d, &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("device time per op (CUDA events)"), "{out}");
    let row = |k: &str| out.lines().find(|l| l.trim_start().starts_with(k)).unwrap_or_else(|| panic!("no row {k}: {out}")).to_string();
    assert!(row("matmul qkv").contains("TFLOP/s") && row("layernorm").contains("GB/s"), "{out}");
    args.push("--json");
    let (code, out, err) = common::on_emu(&emu, &args, &d, &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("stdout holds only the JSON object");
    let pairs = v["profile"].as_array().expect("profile: [name, ms] pairs");
    assert!(pairs.iter().all(|p| p[0].is_string() && p[1].as_f64().is_some()), "{v}");
    let rates = v["profile_rates"].as_object().expect("profile_rates by name");
    assert_eq!(rates.len(), pairs.len(), "{v}");
    let share: f64 = rates.values().map(|x| x["share"].as_f64().unwrap()).sum();
    assert!((share - 100.0).abs() < 1e-6, "{v}");
    for (name, x) in rates.iter().filter(|(name, _)| *name != "dropout") {
        let key = if is_matmul_work(name) { "tflops" } else { "gbs" };
        assert!(x[key].as_f64().is_some_and(|r| r > 0.0), "{name}: {x}");
        // the emulator is no card of the device table: no percentages
        assert!(x["pct_of_peak"].is_null() && x["ms"].as_f64().is_some(), "{name}: {x}");
    }
    std::fs::remove_dir_all(d).ok();
}
