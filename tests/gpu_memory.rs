//! The CUDA backend's memory against `perf::flops`'s GPU model: the bytes it allocates, counted
//! exactly, within 10% of the model in every precision, and lower by exactly the model's amount
//! at each `recompute` level; and a run the card cannot hold is one
//! error line naming the largest micro-batch that fits, before the model allocates anything.
//! In process on the emulator (`GPTRAIN_CUDA_EMU`, see `common::cuda`) or a GPU; through the
//! binary on the emulator (`common::emulator`: built here when that variable names none);
//! skipped, saying so, without either.

mod common;

use common::skipped;
use gptrain::backend::Precision;
use gptrain::model::{ModelConfig, Recompute};
use gptrain::perf::flops::{self, Impl};

fn model(n_layer: usize, n_embd: usize, block_size: usize) -> ModelConfig {
    ModelConfig { n_layer, n_head: 4, n_embd, block_size, vocab_size: 65, padded_vocab_size: 128, bias: true }
}

/// One training step (forward, backward, clipping, AdamW: every buffer a step allocates) of
/// each shape in each precision: the backend's peak against the model's bytes for it; at each
/// `recompute` level of the deeper shape, the peak is lower than at level 0 by exactly what the
/// model says.
#[test]
fn cuda_peak_is_within_10_percent_of_the_model_in_every_precision() {
    if let Err(why) = common::cuda() {
        return skipped("cuda_peak_is_within_10_percent_of_the_model_in_every_precision", &why);
    }
    for p in [Precision::F32, Precision::Bf16, Precision::F16] {
        for (mc, b, levels) in [(model(1, 32, 16), 2, 1), (model(2, 64, 32), 4, 3)] {
            let mut at_level_0 = (0, 0);
            for r in [Recompute::Off, Recompute::Gelu, Recompute::GeluAndLayerNorm].into_iter().take(levels) {
                // a fresh backend each time: its count starts at what it holds when it opens
                let gpu = common::cuda().unwrap();
                let run = gptrain::bench::run(&mc, b, 1, 1, 0, false, gpu, p, r).unwrap();
                let peak = run.peak_device_bytes.expect("the CUDA backend counts its allocations");
                let model = flops::memory(&mc, b, mc.block_size, p.bytes() as u64, r, Impl::Gpu).allocated();
                let off = peak as f64 / model as f64 - 1.0;
                eprintln!(
                    "{} {}x{} block {} batch {b} recompute {}: measured {peak} bytes, model {model} ({:+.2}%)",
                    p.name(),
                    mc.n_layer,
                    mc.n_embd,
                    mc.block_size,
                    r.level(),
                    off * 100.0
                );
                assert!(off.abs() <= 0.10, "{}: measured peak {peak} bytes, model {model} ({:+.1}%)", p.name(), off * 100.0);
                if r == Recompute::Off {
                    at_level_0 = (peak, model);
                } else {
                    assert!(model < at_level_0.1, "{r:?} saves something");
                    assert_eq!(at_level_0.0 - peak, at_level_0.1 - model, "{} {r:?}: measured saving against the model's", p.name());
                }
            }
        }
    }
}

/// `gptrain train` on an emulated card of 0.05 GiB: a model whose micro-batch 64 does not fit is
/// refused with the largest micro-batch that does; one that fits prints its measured peak beside
/// the model after the first steady iteration, and keeps it in the summary; `bench --json`
/// reports it too.
#[test]
fn the_binary_refuses_a_run_the_card_cannot_hold_and_reports_the_peak_of_one_it_can() {
    let Some(emu) = common::emu_or_skip("the_binary_refuses_a_run_the_card_cannot_hold_and_reports_the_peak_of_one_it_can") else {
        return;
    };
    let d = common::tmp("gpu-memory");
    let env = [("GPTRAIN_EMU_MEMORY_GIB", Some("0.05"))];
    let shape = ["--set", "device=cuda", "--set", "dtype=float32", "--set", "n_layer=2", "--set", "n_head=4", "--set", "n_embd=128"];
    let run = |extra: &[&str]| {
        let mut args = vec!["train"];
        args.extend(shape);
        args.extend(["--set", "out_dir=out", "--set", "eval_iters=1", "--set", "eval_interval=1000"]);
        args.extend(extra);
        common::on_emu(&emu, &args, &d, &env)
    };
    let (code, out, err) = run(&["--set", "block_size=128", "--set", "batch_size=64", "--set", "gradient_accumulation_steps=2"]);
    assert_eq!(code, 1, "{out}\n{err}");
    let last = err.lines().last().unwrap_or("");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(last.starts_with("error: this run needs about") && last.contains("keeps 128 sequences per iteration"), "{err}");
    assert!(!out.contains("model:") && !d.join("out").exists(), "refused before the model was built: {out}");
    // the micro-batch it names fits
    let fits: usize =
        last.split("the largest micro-batch that fits is ").nth(1).and_then(|s| s.split(':').next()).unwrap().parse().unwrap();
    // the built-in corpus's characters, unpadded; no biases: the defaults
    let v = gptrain::data::prepare::char_encode_all(gptrain::data::BUILTIN_CORPUS).0.vocab_size;
    let mc = ModelConfig { n_layer: 2, n_head: 4, n_embd: 128, block_size: 128, vocab_size: v, padded_vocab_size: v, bias: false };
    let model = |b: usize| flops::memory(&mc, b, 128, 4, Recompute::Off, Impl::Gpu).allocated();
    let card = (0.05 * (1u64 << 30) as f64) as u64;
    assert!(fits > 0 && model(fits) <= card && model(fits + 1) > card, "{last}");

    // a small run fits, and reports its peak once warm (by iteration 10 at the latest)
    let (code, out, err) = run(&["--set", "block_size=32", "--set", "batch_size=4", "--set", "max_iters=11"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let line = out.lines().find(|l| l.contains("measured peak")).unwrap_or_else(|| panic!("no memory line: {out}"));
    let pct: f64 = line.split('(').nth(2).and_then(|s| s.split('%').next()).unwrap().parse().unwrap();
    assert!(pct.abs() <= 10.0, "{line}");
    let metrics = std::fs::read_to_string(d.join("out/metrics.jsonl")).unwrap();
    let summary: serde_json::Value =
        metrics.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).find(|r| r["type"] == "summary").unwrap();
    assert!(summary["summary"]["peak_memory_bytes"].as_u64().unwrap() > 0, "{summary}");

    // bench's JSON has the peak (tools/bench_gpu.py reads `peak_device_bytes`) beside the model
    let args =
        ["bench", "--set", "device=cuda", "--set", "n_layer=1", "--set", "n_embd=32", "--set", "block_size=16", "--set", "batch_size=2"];
    let bench = |extra: &[&str]| {
        let (code, out, err) = common::on_emu(&emu, &[&args[..], &["--steps", "1", "--warmup", "0", "--json"], extra].concat(), &d, &env);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        let (peak, model) = (v["peak_device_bytes"].as_u64().unwrap(), v["memory_model_bytes"].as_u64().unwrap());
        assert!((peak as f64 / model as f64 - 1.0).abs() <= 0.10, "{v}");
        (peak, model, v["recompute"].as_u64().unwrap())
    };
    let (peak, model, level) = bench(&["--set", "n_layer=2"]);
    assert_eq!(level, 0);
    // `--set recompute=2` is honoured: less memory (one layer of the two), by the model's amount
    let (peak2, model2, level2) = bench(&["--set", "n_layer=2", "--set", "recompute=2"]);
    assert!(level2 == 2 && model2 < model && peak - peak2 == model - model2, "{peak} {model} -> {peak2} {model2}");
    std::fs::remove_dir_all(d).ok();
}

/// A ZeRO-1 rank's step on the CUDA backend (here rank 1 of 3 of a model whose token embedding
/// is two pieces): its peak against the model with that rank's share of the optimiser
/// state (`Memory::sharded`), and its saving against a whole rank's, exactly the model's.
#[test]
fn a_zero_1_ranks_peak_is_the_model_with_its_share_of_the_optimiser_state() {
    use gptrain::backend::{AdamW, Backend};
    use gptrain::model::{Gpt, ParamLayout};
    if let Err(why) = common::cuda() {
        return skipped("a_zero_1_ranks_peak_is_the_model_with_its_share_of_the_optimiser_state", &why);
    }
    // a vocabulary of 16384 x 128: the token embedding in two pieces, cut between ranks
    let mc = ModelConfig { vocab_size: 16000, padded_vocab_size: 16384, ..model(2, 128, 16) };
    let b = 2;
    let parts = gptrain::dist::zero::parts(&ParamLayout::new(&mc).pieces(), 3);
    let own = parts[1].len as u64;
    assert!(own > 0 && own < ParamLayout::new(&mc).total as u64 / 2, "{parts:?}");
    for p in [Precision::F32, Precision::Bf16] {
        let peak = |zero: Option<(Vec<gptrain::backend::Span>, usize)>| -> u64 {
            let mut g = Gpt::zeros_sharded(common::cuda().unwrap(), mc.clone(), p, zero).unwrap();
            g.set_params(&vec![0.01; g.num_params()]).unwrap();
            let x: Vec<u32> = (0..(b * mc.block_size) as u32).map(|i| i * 997 % 16000).collect();
            g.zero_grad().unwrap();
            g.reset_scalars().unwrap();
            g.set_batch(&x, &x, b, mc.block_size).unwrap();
            g.forward(None, Some(1.0)).unwrap();
            g.backward(None).unwrap();
            g.accumulate_grad_squares().unwrap();
            g.read_scalars().unwrap();
            g.update(AdamW { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8 }, 0.1, 1, 1.0).unwrap();
            g.backend.memory_use().unwrap().peak
        };
        let (whole, split) = (peak(None), peak(Some((parts.clone(), 1))));
        let full = flops::memory(&mc, b, mc.block_size, p.bytes() as u64, Recompute::Off, Impl::Gpu);
        let share = full.clone().sharded(own);
        eprintln!(
            "{} rank 1 of 3: measured {split} bytes, model {} (whole rank: {whole}, model {})",
            p.name(),
            share.allocated(),
            full.allocated()
        );
        assert!((split as f64 / share.allocated() as f64 - 1.0).abs() <= 0.10, "{}: {split} against {}", p.name(), share.allocated());
        assert_eq!(whole - split, full.allocated() - share.allocated(), "{}: the saving, measured and modelled", p.name());
    }
}
