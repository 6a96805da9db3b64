//! The training loop end to end on the built-in corpus with a tiny model: resume is exact,
//! checkpoints are complete and loadable, GPT-2-layout files load, eval does not shift training,
//! recomputing activations in the backward changes no bit.

mod common;

use gptrain::backend::Backend;
use gptrain::config::{resolve, Config};
use gptrain::train::{self, IterLog, Observer, StartInfo, Summary};
use std::path::{Path, PathBuf};

#[derive(Default)]
struct Collect {
    losses: Vec<(u64, f32)>,
    evals: Vec<(u64, f32, f32)>,
    checkpoints: Vec<PathBuf>,
    messages: Vec<String>,
    outliers: Vec<u64>,
    /// (iteration, loss scale after it) of each fp16 overflow skip.
    overflows: Vec<(u64, f32)>,
    summary: Option<Summary>,
}

impl Observer for Collect {
    fn message(&mut self, text: &str) {
        self.messages.push(text.into());
    }
    fn start(&mut self, _: &StartInfo) {}
    fn iter(&mut self, l: &IterLog) {
        self.losses.push((l.iter, l.loss));
        if l.outlier {
            self.outliers.push(l.iter);
        }
        if l.overflow {
            self.overflows.push((l.iter, l.loss_scale.unwrap()));
        }
    }
    fn eval(&mut self, it: u64, t: f32, v: f32, _: f64) {
        self.evals.push((it, t, v));
    }
    fn checkpoint(&mut self, _: u64, p: &Path, _: f64) {
        self.checkpoints.push(p.to_path_buf());
    }
    fn finish(&mut self, s: &Summary) {
        self.summary = Some(s.clone());
    }
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gptrain-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn tiny(out: &Path, extra: &[&str]) -> Config {
    let mut sets: Vec<String> = [
        "n_layer=2",
        "n_head=2",
        "n_embd=32",
        "block_size=32",
        "batch_size=4",
        "gradient_accumulation_steps=2",
        "dropout=0.1",
        "eval_interval=10",
        "eval_iters=2",
        "log_interval=1",
        "warmup_iters=5",
        "lr_decay_iters=40",
        "always_save_checkpoint=true",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    sets.push(format!("out_dir={}", out.display()));
    sets.extend(extra.iter().map(|s| s.to_string()));
    resolve(Some("shakespeare-char-cpu"), None, &sets).unwrap().0
}

fn run(cfg: &Config) -> anyhow::Result<Collect> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let mut c = Collect::default();
    pool.install(|| train::run(cfg, &mut c))?;
    Ok(c)
}

/// [`run`] on a given backend.
fn run_on<B: Backend>(backend: B, cfg: &Config) -> anyhow::Result<Collect> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let mut c = Collect::default();
    pool.install(|| train::run_with(backend, cfg, &mut c))?;
    Ok(c)
}

fn resuming_gives_exactly_the_uninterrupted_losses<B: Backend + Clone>(backend: B, _tol: common::Tol) {
    let name = backend.name().replace(|c: char| !c.is_ascii_alphanumeric(), "");
    let (a, b) = (tmp(&format!("full{name}")), tmp(&format!("split{name}")));
    let full = run_on(backend.clone(), &tiny(&a, &["max_iters=40"])).unwrap();
    let first = run_on(backend.clone(), &tiny(&b, &["max_iters=20"])).unwrap();
    let second = run_on(backend, &tiny(&b, &["max_iters=40", "init_from=resume"])).unwrap();
    let split: Vec<(u64, f32)> = first.losses.iter().chain(&second.losses).copied().collect();
    assert_eq!(full.losses.len(), 40);
    assert_eq!(split, full.losses, "resumed losses differ (bitwise)");
    // evals at 30 and 40 match too: eval batches depend only on (seed, iteration)
    let tail = |c: &Collect| c.evals.iter().filter(|e| e.0 > 20).copied().collect::<Vec<_>>();
    assert_eq!(tail(&second), tail(&full));
    assert!(full.losses.last().unwrap().1 < full.losses[0].1, "loss did not fall");
    for d in [a, b] {
        std::fs::remove_dir_all(d).ok();
    }
}

/// `recompute` 1 and 2 (GELU, then LayerNorm too, recomputed in the backward) train bitwise as
/// level 0 does, dropout on and two micro-batches a step: the same losses, evals, weights and
/// AdamW moments, in float32 and in bfloat16; and a run resumes at another level with the
/// uninterrupted run's losses.
fn recomputing_gives_bitwise_the_same_training<B: Backend + Clone>(backend: B, _tol: common::Tol) {
    let name = backend.name().replace(|c: char| !c.is_ascii_alphanumeric(), "");
    let files = |c: &Collect| {
        let dir = c.summary.as_ref().unwrap().last_checkpoint.clone().unwrap();
        ["model.safetensors", "optim.safetensors"].map(|f| std::fs::read(dir.join(f)).unwrap())
    };
    let at = |level: usize, dtype: &str| {
        let d = tmp(&format!("recompute{level}{dtype}{name}"));
        let c = run_on(backend.clone(), &tiny(&d, &["max_iters=12", &format!("recompute={level}"), &format!("dtype={dtype}")])).unwrap();
        (d, c)
    };
    let (d0, kept) = at(0, "float32");
    assert_eq!((kept.losses.len(), kept.evals.len()), (12, 2));
    for level in [1, 2] {
        let (d, c) = at(level, "float32");
        assert_eq!(c.losses, kept.losses, "recompute={level}: losses differ (bitwise)");
        assert_eq!(c.evals, kept.evals, "recompute={level}: evals differ");
        assert!(files(&c) == files(&kept), "recompute={level}: the final weights or moments differ");
        std::fs::remove_dir_all(d).ok();
    }
    let ((d, bf16_kept), (d2, bf16_recomputed)) = (at(0, "bfloat16"), at(2, "bfloat16"));
    assert_eq!(bf16_recomputed.losses, bf16_kept.losses, "bfloat16: losses differ (bitwise)");
    assert!(files(&bf16_recomputed) == files(&bf16_kept), "bfloat16: the final weights or moments differ");
    assert_ne!(bf16_kept.losses, kept.losses, "bfloat16 is not float32");
    for d in [d, d2] {
        std::fs::remove_dir_all(d).ok();
    }
    // a checkpoint of a recomputing run resumes without it, and the reverse
    let split = tmp(&format!("recompute-split{name}"));
    let first = run_on(backend.clone(), &tiny(&split, &["max_iters=6", "recompute=2", "dtype=float32"])).unwrap();
    let second = run_on(backend.clone(), &tiny(&split, &["max_iters=9", "init_from=resume", "dtype=float32"])).unwrap();
    let third = run_on(backend, &tiny(&split, &["max_iters=12", "init_from=resume", "recompute=1", "dtype=float32"])).unwrap();
    let losses: Vec<(u64, f32)> = first.losses.iter().chain(&second.losses).chain(&third.losses).copied().collect();
    assert_eq!(losses, kept.losses, "resumed at other levels, the losses differ (bitwise)");
    assert!(files(&third) == files(&kept), "resumed at other levels, the final weights differ");
    for d in [d0, split] {
        std::fs::remove_dir_all(d).ok();
    }
}

#[test]
fn the_outlier_guard_skips_updates_and_resumes_exactly() {
    // with a tiny constant learning rate and a z-score threshold of 0.01 on the gradient norm,
    // updates become "outliers" once the 128-iteration window is full (here: most of them);
    // the windows travel in the checkpoint
    let (a, b) = (tmp("zfull"), tmp("zsplit"));
    let guard = ["skip_update_gradz=0.01", "eval_interval=50", "learning_rate=1e-5", "decay_lr=false"];
    fn with<'a>(guard: &[&'a str], n: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        [guard, &[n], extra].concat()
    }
    let full = run(&tiny(&a, &with(&guard, "max_iters=140", &[]))).unwrap();
    let first = run(&tiny(&b, &with(&guard, "max_iters=131", &[]))).unwrap();
    let second = run(&tiny(&b, &with(&guard, "max_iters=140", &["init_from=resume"]))).unwrap();
    assert!(full.outliers.iter().all(|&i| i >= 128), "scored before the window filled: {:?}", full.outliers);
    assert!(!second.outliers.is_empty(), "no update was skipped after the resume");
    let split: Vec<(u64, f32)> = first.losses.iter().chain(&second.losses).copied().collect();
    assert_eq!(split, full.losses, "resumed losses differ (bitwise)");
    assert_eq!([first.outliers, second.outliers].concat(), full.outliers);
    // without the guard the same run updates at those iterations, so later losses differ
    let c = tmp("znone");
    let none = run(&tiny(&c, &["eval_interval=50", "learning_rate=1e-5", "decay_lr=false", "max_iters=140"])).unwrap();
    assert!(none.outliers.is_empty());
    assert_ne!(none.losses.last(), full.losses.last());
    for d in [a, b, c] {
        std::fs::remove_dir_all(d).ok();
    }
}

#[test]
fn evaluating_does_not_shift_training() {
    let (a, b) = (tmp("evalA"), tmp("evalB"));
    let often = run(&tiny(&a, &["max_iters=12", "eval_interval=3"])).unwrap();
    let rarely = run(&tiny(&b, &["max_iters=12", "eval_interval=100"])).unwrap();
    assert_eq!(often.losses, rarely.losses);
    for d in [a, b] {
        std::fs::remove_dir_all(d).ok();
    }
}

#[test]
fn checkpoints_are_complete_and_hold_hf_gpt2_tensors() {
    let d = tmp("ckpt");
    let c = run(&tiny(&d, &["max_iters=20", "keep_checkpoints=1", "bias=false"])).unwrap();
    assert_eq!(
        c.checkpoints.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect::<Vec<_>>(),
        vec!["ckpt-000010", "ckpt-000020"]
    );
    // keep_checkpoints=1 keeps the newest plus the best by val loss
    let left: Vec<_> = gptrain::checkpoint::list(&d).into_iter().map(|x| x.0).collect();
    assert!(left.contains(&20) && left.len() <= 2, "{left:?}");
    let ck = d.join("ckpt-000020");
    for f in ["model.safetensors", "config.json", "optim.safetensors", "train_state.json", "MANIFEST.json"] {
        assert!(ck.join(f).exists(), "{f} missing");
    }
    let tf = gptrain::tensorfile::read(&ck.join("model.safetensors")).unwrap();
    assert_eq!(tf.get("transformer.h.0.attn.c_attn.weight").unwrap().shape, vec![32, 96]); // Conv1D (in, out)
    assert!(tf.get("transformer.h.1.mlp.c_fc.bias").unwrap().data.iter().all(|&x| x == 0.0)); // bias=false: zeros
    let loaded = gptrain::checkpoint::load(&ck).unwrap();
    assert_eq!(loaded.state.iter, 20);
    assert!(!d.read_dir().unwrap().any(|e| e.unwrap().file_name().to_string_lossy().starts_with(".tmp")));
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn an_altered_checkpoint_is_reported_and_fallback_is_opt_in() {
    let d = tmp("altered");
    run(&tiny(&d, &["max_iters=20"])).unwrap();
    let f = d.join("ckpt-000020/model.safetensors");
    let mut bytes = std::fs::read(&f).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 0x40;
    std::fs::write(&f, bytes).unwrap();
    let err = run(&tiny(&d, &["max_iters=30", "init_from=resume"])).err().unwrap();
    let msg = format!("{err:#}");
    assert!(msg.contains("ckpt-000020") && msg.contains("failed verification"), "{msg}");
    // the cause first, then what to do about it
    let (cause, hint) = (msg.find("failed verification").unwrap(), msg.find("resume_fallback=true").unwrap());
    assert!(cause < hint, "{msg}");
    let c = run(&tiny(&d, &["max_iters=30", "init_from=resume", "resume_fallback=true"])).unwrap();
    assert_eq!(c.losses[0].0, 10, "resumed from the older checkpoint");
    // its save at 20 replaced the corrupt directory instead of claiming it
    assert!(c.checkpoints.contains(&d.join("ckpt-000020")), "{:?}", c.checkpoints);
    let ck = gptrain::checkpoint::load(&d.join("ckpt-000020")).unwrap();
    assert_eq!(ck.state.iter, 20);
    assert!(gptrain::checkpoint::load(&d.join("ckpt-000030")).is_ok());
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn resume_rejects_another_vocabulary_and_a_missing_checkpoint() {
    let d = tmp("vocab");
    let err = run(&tiny(&d, &["init_from=resume"])).err().unwrap();
    assert!(format!("{err:#}").contains("no checkpoint"), "{err:#}");
    run(&tiny(&d, &["max_iters=10"])).unwrap();
    // a dataset with another character vocabulary
    let other = d.join("other-data");
    let txt = d.join("other.txt");
    std::fs::write(&txt, "abc de\n".repeat(200)).unwrap();
    gptrain::data::prepare::prepare(Some(&txt), gptrain::data::prepare::TokenizerKind::Char, &other, &indicatif::ProgressBar::hidden())
        .unwrap();
    let err = run(&tiny(&d, &["max_iters=20", "init_from=resume", &format!("dataset={}", other.display())])).err().unwrap();
    let msg = format!("{err:#}");
    assert!(msg.contains("does not match the checkpoint's") && msg.contains("vocabulary"), "{msg}");
    // a shape key that differs from the checkpoint
    let err = run(&tiny(&d, &["max_iters=20", "init_from=resume", "n_embd=64"])).err().unwrap();
    assert!(format!("{err:#}").contains("`n_embd` is 64 but the checkpoint"), "{err:#}");
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn a_gpt2_layout_safetensors_file_loads_and_gives_the_reference_logits() {
    use gptrain::backend::cpu::Cpu;
    use gptrain::model::Gpt;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf_tiny");
    let tf = gptrain::tensorfile::read(&dir.join("model.safetensors")).unwrap();
    let cfg = gptrain::checkpoint::hf_shape(&tf, &dir, 12).unwrap();
    assert_eq!((cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.vocab_size, cfg.bias), (2, 2, 32, 16, 40, true));
    let params = gptrain::checkpoint::from_hf(&tf, &cfg, &gptrain::model::ParamLayout::new(&cfg)).unwrap();
    let mut g = Gpt::zeros(Cpu::FAST, cfg).unwrap();
    g.set_params(&params).unwrap();
    let exp = gptrain::tensorfile::read(&dir.join("expected.safetensors")).unwrap();
    let x: Vec<u32> = exp.get("x").unwrap().data.iter().map(|&v| v as u32).collect();
    g.loss(&x, &x, 1, x.len()).unwrap();
    let want = &exp.get("logits").unwrap().data;
    let got = g.logits().unwrap();
    let err = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(err < 1e-4, "max abs logit error {err}");
}

#[test]
fn fine_tuning_from_a_gpt2_file_trains() {
    // the hf_tiny model has a 40-token vocabulary: train it on the nanoGPT fixture (30 chars)
    let d = tmp("finetune");
    let hf = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf_tiny/model.safetensors");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nanogpt_char");
    let c =
        run(&tiny(&d, &["max_iters=5", "block_size=16", &format!("init_from={}", hf.display()), &format!("dataset={}", data.display())]))
            .unwrap();
    assert_eq!(c.losses.len(), 5);
    assert!(c.messages.iter().any(|m| m.contains("initialised from")));
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn a_new_run_never_mixes_its_checkpoints_with_another_runs() {
    let d = tmp("mixed");
    run(&tiny(&d, &["max_iters=20"])).unwrap();
    let old = std::fs::read(d.join("ckpt-000020/model.safetensors")).unwrap();
    // a scratch run into that out_dir refuses, naming what it found and the ways out
    let err = format!("{:#}", run(&tiny(&d, &["max_iters=10", "seed=7"])).err().unwrap());
    for want in ["already holds 2 checkpoints", "ckpt-000020", "iteration 20", "init_from=resume", "out_dir=", "replace_checkpoints=true"] {
        assert!(err.contains(want), "`{want}` missing: {err}");
    }
    assert_eq!(std::fs::read(d.join("ckpt-000020/model.safetensors")).unwrap(), old, "the old run's checkpoint changed");
    // so does fine-tuning from one of them into the same out_dir
    let src = d.join("ckpt-000020");
    let err = format!("{:#}", run(&tiny(&d, &["max_iters=30", &format!("init_from={}", src.display())])).err().unwrap());
    assert!(err.contains("fine-tuning") && err.contains("already holds"), "{err}");
    // replaced on purpose: the old checkpoints go, and only the new run's remain
    let c = run(&tiny(&d, &["max_iters=10", "seed=7", "replace_checkpoints=true"])).unwrap();
    assert!(c.messages.iter().any(|m| m.contains("deleted the 2 checkpoints")), "{:?}", c.messages);
    let left: Vec<u64> = gptrain::checkpoint::list(&d).into_iter().map(|x| x.0).collect();
    assert_eq!(left, vec![10]);
    assert_eq!(gptrain::checkpoint::load(&d.join("ckpt-000010")).unwrap().state.seed, 7);
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn fine_tuning_from_a_gptrain_checkpoint_keeps_its_shape_and_vocabulary() {
    let (a, b) = (tmp("ft-src"), tmp("ft-dst"));
    run(&tiny(&a, &["max_iters=10", "bias=false"])).unwrap();
    let src = a.join("ckpt-000010");
    // the config says bias=true (the default preset's); the checkpoint has none and keeps none
    let c = run(&tiny(&b, &["max_iters=13", "bias=true", &format!("init_from={}", src.display())])).unwrap();
    assert!(c.messages.iter().any(|m| m.contains("initialised from")), "{:?}", c.messages);
    let ck = gptrain::checkpoint::load(&b.join("ckpt-000013")).unwrap();
    assert!(!ck.state.model.bias, "fine-tuning from a bias-free checkpoint added biases");
    assert_eq!(ck.state.model.vocab_size, gptrain::checkpoint::load(&src).unwrap().state.model.vocab_size);
    // a dataset with another character vocabulary cannot be read by that model
    let other = a.join("other-data");
    let txt = a.join("other.txt");
    std::fs::write(&txt, "abc de\n".repeat(200)).unwrap();
    gptrain::data::prepare::prepare(Some(&txt), gptrain::data::prepare::TokenizerKind::Char, &other, &indicatif::ProgressBar::hidden())
        .unwrap();
    let c = tmp("ft-other");
    let err = run(&tiny(&c, &["max_iters=12", &format!("init_from={}", src.display()), &format!("dataset={}", other.display())]));
    let msg = format!("{:#}", err.err().unwrap());
    assert!(msg.contains("does not match the checkpoint's"), "{msg}");
    for d in [a, b, c] {
        std::fs::remove_dir_all(d).ok();
    }
}

#[test]
fn resuming_a_finished_run_says_there_is_nothing_to_do() {
    let d = tmp("finished");
    run(&tiny(&d, &["max_iters=10"])).unwrap();
    let c = run(&tiny(&d, &["max_iters=5", "init_from=resume"])).unwrap();
    assert!(c.losses.is_empty() && c.checkpoints.is_empty());
    assert!(
        c.messages.iter().any(|m| m.contains("nothing to do") && m.contains("iteration 10") && m.contains("max_iters is 5")),
        "{:?}",
        c.messages
    );
    std::fs::remove_dir_all(d).ok();
}

/// A resumed run skips the evaluation at its first iteration only when its checkpoint was
/// evaluated there: one saved between evaluations (here: at the end, with another
/// eval_interval; a Ctrl-C checkpoint is the other kind) is evaluated on resume.
#[test]
fn a_checkpoint_saved_without_an_evaluation_is_evaluated_on_resume() {
    let d = tmp("resume-eval");
    let first = run(&tiny(&d, &["max_iters=20", "eval_interval=7"])).unwrap();
    assert_eq!(first.evals.iter().map(|e| e.0).collect::<Vec<_>>(), vec![0, 7, 14]);
    let second = run(&tiny(&d, &["max_iters=30", "init_from=resume"])).unwrap();
    assert_eq!(second.evals.iter().map(|e| e.0).collect::<Vec<_>>(), vec![20, 30], "the eval at 20 was never made");
    // a checkpoint saved at an evaluation is not evaluated again
    let third = run(&tiny(&d, &["max_iters=40", "init_from=resume"])).unwrap();
    assert_eq!(third.evals.iter().map(|e| e.0).collect::<Vec<_>>(), vec![40]);
    std::fs::remove_dir_all(d).ok();
}

/// Mixed precision keeps the loop's promises: bf16 and fp16 runs resume bitwise (the fp16 loss
/// scale travels in the checkpoint), their checkpoints are f32 and resume in another precision,
/// and the loss falls.
#[test]
fn mixed_precision_resumes_exactly_and_its_checkpoints_change_precision() {
    for dtype in ["bfloat16", "float16"] {
        let set = format!("dtype={dtype}");
        let (a, b) = (tmp(&format!("mp-full-{dtype}")), tmp(&format!("mp-split-{dtype}")));
        let full = run(&tiny(&a, &["max_iters=31", &set])).unwrap();
        let first = run(&tiny(&b, &["max_iters=15", &set])).unwrap();
        let second = run(&tiny(&b, &["max_iters=30", "init_from=resume", &set])).unwrap();
        let split: Vec<(u64, f32)> = first.losses.iter().chain(&second.losses).copied().collect();
        assert_eq!(split, full.losses[..30], "{dtype}: resumed losses differ (bitwise)");
        assert!(full.losses[29].1 < full.losses[0].1 - 0.5, "{dtype}: loss did not fall: {:?}", full.losses);
        // the checkpoint holds f32 weights: it resumes in float32 (the reverse direction is the
        // same code), and its iteration 30 sees the mixed run's loss within rounding
        let f32_run = run(&tiny(&b, &["max_iters=31", "init_from=resume", "dtype=float32"])).unwrap();
        let (mixed, f32) = (full.losses[30], f32_run.losses[0]);
        assert!(mixed.0 == f32.0 && (mixed.1 - f32.1).abs() < 0.02, "{dtype}: iteration 30: {mixed:?} mixed, {f32:?} float32");
        for d in [a, b] {
            std::fs::remove_dir_all(d).ok();
        }
    }
}

/// An fp16 gradient overflow halves the loss scale and skips the update, as GradScaler does: it
/// is reported, counted in the summary and never taken for a non-finite loss (`on_nonfinite`
/// stays `abort`).
#[test]
fn fp16_overflows_halve_the_loss_scale_and_skip_without_aborting() {
    let d = tmp("fp16-overflow");
    let c = run(&tiny(&d, &["max_iters=30", "dtype=float16", "init_loss_scale=1e12", "dropout=0"])).unwrap();
    let n = c.overflows.len();
    assert!(n > 5, "a 1e12 scale overflows f16 gradients: {:?}", c.overflows);
    let want: Vec<(u64, f32)> = (0..n as u64).map(|i| (i, (1e12f32 / 2f32.powi(i as i32 + 1)))).collect();
    assert_eq!(c.overflows, want, "the first steps skip, halving the scale each time");
    let s = c.summary.unwrap();
    assert_eq!((s.overflow_skips, s.skipped_updates, s.loss_scale), (n as u64, 0, Some(want[n - 1].1)));
    assert!(c.losses.last().unwrap().1 < c.losses[n].1 - 0.1, "trains once the scale fits: {:?}", c.losses);
    std::fs::remove_dir_all(d).ok();
}

/// metrics.jsonl's scalars as the TensorBoard tags hold them: (tag, step) -> value, the latest
/// record per step winning.
fn metrics_scalars(out: &Path) -> std::collections::BTreeMap<(String, i64), f32> {
    let tags = [
        ("iter", "loss", "train/loss"),
        ("iter", "lr", "train/lr"),
        ("iter", "grad_norm", "train/grad_norm"),
        ("iter", "steady_ms", "perf/steady_ms_per_iter"),
        ("iter", "tokens_per_sec", "perf/tokens_per_sec"),
        ("iter", "mfu", "perf/mfu"),
        ("eval", "val_loss", "val/loss"),
        ("eval", "train_loss", "val/train_loss"),
    ];
    let mut latest = std::collections::BTreeMap::new();
    for line in std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        if let (Some(kind), Some(it)) = (r["type"].as_str(), r["iter"].as_i64()) {
            latest.insert((kind.to_string(), it), r);
        }
    }
    let mut out = std::collections::BTreeMap::new();
    for ((kind, it), r) in latest {
        for (k, field, tag) in tags {
            if let (true, Some(x)) = (k == kind, r[field].as_f64()) {
                out.insert((tag.to_string(), it), x as f32);
            }
        }
    }
    out
}

#[test]
fn a_resumed_run_appends_tensorboard_events_without_duplicating_steps() {
    use gptrain::tensorboard::{event_files, read_records, read_scalars};
    let d = tmp("tensorboard");
    run(&tiny(&d, &["max_iters=20"])).unwrap();
    let tb = d.join("tensorboard");
    let fresh = read_scalars(&tb);
    let want: Vec<_> = metrics_scalars(&d).into_iter().collect();
    let got: Vec<_> = fresh.iter().map(|(k, v)| (k.clone(), v.1)).collect();
    assert_eq!(got, want);
    assert!(
        fresh.contains_key(&("perf/tokens_per_sec".into(), 19)) && !fresh.contains_key(&("perf/tokens_per_sec".into(), 0)),
        "steady state only"
    );
    assert_eq!(fresh.keys().filter(|k| k.0 == "val/loss").map(|k| k.1).collect::<Vec<_>>(), vec![0, 10, 20]);

    // steps 10..19 and the eval at 20 are logged again by a run resumed from ckpt-10
    std::fs::remove_dir_all(d.join("ckpt-000020")).unwrap();
    run(&tiny(&d, &["max_iters=20", "init_from=resume"])).unwrap();
    let files = event_files(&tb);
    assert_eq!(files.len(), 2);
    let mut raw_loss_12 = 0;
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        let (records, err) = read_records(&bytes);
        assert_eq!(err, None, "{}", f.display());
        for rec in records {
            let ev = <gptrain::tensorboard::Event as prost::Message>::decode(rec).unwrap();
            let values = ev.summary.map(|s| s.value).unwrap_or_default();
            raw_loss_12 += values.iter().filter(|v| v.tag == "train/loss" && ev.step == 12).count();
        }
    }
    assert_eq!(raw_loss_12, 2, "both runs logged step 12; the reader keeps the second");
    // what makes TensorBoard's reader drop the first run's steps >= 10: a session START there
    let second = std::fs::read(&files[1]).unwrap();
    let start = <gptrain::tensorboard::Event as prost::Message>::decode(read_records(&second).0[1]).unwrap();
    assert_eq!((start.step, start.session_log.map(|s| s.status)), (10, Some(gptrain::tensorboard::SESSION_START)));
    let resumed = read_scalars(&tb);
    let want: Vec<_> = metrics_scalars(&d).into_iter().collect();
    let got: Vec<_> = resumed.iter().map(|(k, v)| (k.clone(), v.1)).collect();
    assert_eq!(got, want);
    // the checkpoint's own eval, carried over from the first file
    assert_eq!(resumed[&("val/loss".to_string(), 10)], fresh[&("val/loss".to_string(), 10)]);
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn a_tensorboard_directory_that_cannot_be_written_is_one_warning() {
    let d = tmp("tensorboard-blocked");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("tensorboard"), "not a directory").unwrap();
    let c = run(&tiny(&d, &["max_iters=3"])).unwrap();
    assert_eq!(c.losses.len(), 3);
    let warnings: Vec<_> = c.messages.iter().filter(|m| m.contains("TensorBoard")).collect();
    assert_eq!(warnings.len(), 1, "{:?}", c.messages);
    assert!(warnings[0].contains("training goes on"), "{}", warnings[0]);
    let off = tmp("tensorboard-off");
    run(&tiny(&off, &["max_iters=3", "tensorboard=false"])).unwrap();
    assert!(!off.join("tensorboard").exists());
    std::fs::remove_dir_all(d).ok();
    std::fs::remove_dir_all(off).ok();
}

/// The gradient norm's summands (`ParamLayout::pieces`): one `AddSquares` over a run of pieces
/// (`per` elements each, the last fewer) gives each piece's sum bit for bit as that piece alone
/// gives it, into a slot each or into one slot that takes them in order, however many pieces a
/// launch holds (71: more than the CUDA backend's 64 a launch). So a ZeRO-1 rank, which sums
/// only its own pieces, computes what one process computes.
fn squares_in_pieces_are_each_pieces_own_sum<B: Backend + Clone>(backend: B, _tol: common::Tol) {
    use gptrain::backend::{BufId, Buffers, DType, Host, Op, Span, Tensor};
    let f64s = |off: usize, n: usize| Tensor::new(BufId::Scalars, Span::new(off, n), &[n], DType::F64);
    for (n, per) in [(10_000usize, 3000usize), (71 * 100 - 37, 100), (5000, 5000)] {
        let pieces = n.div_ceil(per);
        let mut bufs = Buffers::default();
        bufs.set(BufId::Grads, backend.alloc(n, DType::F32).unwrap());
        bufs.set(BufId::Scalars, backend.alloc(2 * pieces + 1, DType::F64).unwrap());
        let all = Tensor::new(BufId::Grads, Span::new(0, n), &[n], DType::F32);
        let x: Vec<f32> = (0..n).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3).collect();
        backend.upload(&mut bufs, all, &Host::F32(x)).unwrap();
        backend.run(&mut bufs, &Op::Zero(f64s(0, 2 * pieces + 1))).unwrap();
        backend.run(&mut bufs, &Op::AddSquares { x: all, per, into: f64s(0, pieces) }).unwrap();
        for k in 0..pieces {
            let len = per.min(n - k * per);
            let piece = Tensor::new(BufId::Grads, Span::new(k * per, len), &[len], DType::F32);
            backend.run(&mut bufs, &Op::AddSquares { x: piece, per: len, into: f64s(pieces + k, 1) }).unwrap();
        }
        backend.run(&mut bufs, &Op::AddSquares { x: all, per, into: f64s(2 * pieces, 1) }).unwrap();
        let v = backend.download(&bufs, f64s(0, 2 * pieces + 1)).unwrap().into_f64();
        for k in 0..pieces {
            assert_eq!(v[k].to_bits(), v[pieces + k].to_bits(), "{n}/{per}: piece {k}");
        }
        assert!(v[0] > 0.0);
        let in_order = v[pieces..2 * pieces].iter().fold(0.0, |a, b| a + b);
        assert_eq!(v[2 * pieces].to_bits(), in_order.to_bits(), "{n}/{per}: one slot");
    }
}

common::backend_tests!(
    resuming_gives_exactly_the_uninterrupted_losses,
    recomputing_gives_bitwise_the_same_training,
    squares_in_pieces_are_each_pieces_own_sum
);
