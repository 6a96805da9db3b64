//! Bounded property tests: mutated and random inputs to every parser and loader give an error
//! or a value, never a panic. (The cargo-fuzz targets in fuzz/ run the same properties for as
//! long as one likes.)

mod common;

use gptrain::rng;
use std::path::PathBuf;

/// A deterministic stream of mutations of `base`: byte flips, truncations, insertions.
fn mutations(base: &[u8], n: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut r = rng::Rng::new(seed, 77);
    (0..n)
        .map(|_| {
            let mut v = base.to_vec();
            match r.next_u64() % 4 {
                0 if !v.is_empty() => {
                    let i = (r.next_u64() as usize) % v.len();
                    v[i] ^= 1 << (r.next_u64() % 8);
                }
                1 => v.truncate((r.next_u64() as usize) % (v.len() + 1)),
                2 => {
                    let i = (r.next_u64() as usize) % (v.len() + 1);
                    v.insert(i, r.next_u64() as u8);
                }
                _ => {
                    for _ in 0..4 {
                        if !v.is_empty() {
                            let i = (r.next_u64() as usize) % v.len();
                            v[i] = r.next_u64() as u8;
                        }
                    }
                }
            }
            v
        })
        .collect()
}

fn no_panic<T>(what: &str, f: impl FnOnce() -> T + std::panic::UnwindSafe) {
    assert!(std::panic::catch_unwind(f).is_ok(), "{what} panicked");
}

#[test]
fn config_text_never_panics() {
    let base = b"n_layer = 4\nn_head = 4\nlearning_rate = 1e-3\ndataset = \"x\"\nbias = false\n";
    let dir = std::env::temp_dir().join(format!("gptrain-hostile-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (i, m) in mutations(base, 300, 1).into_iter().enumerate() {
        for ext in ["toml", "py"] {
            let f = dir.join(format!("c{i}.{ext}"));
            std::fs::write(&f, &m).unwrap();
            no_panic("config file", || gptrain::config::resolve(None, Some(&f), &[]).map(|_| ()));
        }
        let s = String::from_utf8_lossy(&m).replace('\n', " ");
        no_panic("--set", move || gptrain::config::resolve(None, None, &[s]).map(|_| ()));
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn odd_python_config_lines_and_set_strings_never_panic() {
    let dir = std::env::temp_dir().join(format!("gptrain-hostile-py-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("c.py");
    let lines = [
        "out_dir = 'unterminated",
        "out_dir = '#'",
        "out_dir = \"a'b\"",
        "wandb_run_name = ",
        "wandb_project = )(",
        "compile = not a value at all = 3",
        "= 3",
        "n_layer = 4 * * 2",
        "n_layer = *",
        "n_layer = 9223372036854775807 * 2",
        "dropout = .",
        "dropout = 1e999",
        "max_iters = -1",
        "batch_size = 5. * 8",
        "# only a comment = 3",
        "\u{feff}n_layer = 2",
    ];
    for line in lines {
        std::fs::write(&f, format!("{line}\n")).unwrap();
        let f = f.clone();
        no_panic(line, move || gptrain::config::resolve(None, Some(&f), &[]).map(|_| ()));
    }
    for s in ["=", "==", "=3", "max_iters=", " = ", "--=1", "MAX_ITERS=", "\u{e9}=1", "max_iters=\"\""] {
        no_panic(s, move || gptrain::config::resolve(None, None, &[s.to_string()]).map(|_| ()));
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn safetensors_and_pickle_bytes_never_panic() {
    let files = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let st = std::fs::read(files.join("hf_tiny/model.safetensors")).unwrap();
    for m in mutations(&st, 300, 2) {
        no_panic("safetensors", move || {
            if let Ok(tf) = gptrain::tensorfile::parse(&m) {
                let dir = std::path::Path::new(".");
                if let Ok(cfg) = gptrain::checkpoint::hf_shape(&tf, dir, 2) {
                    if cfg.n_layer < 64 && cfg.n_embd < 4096 && cfg.padded_vocab_size < 1 << 20 && cfg.block_size < 1 << 16 {
                        let _ = gptrain::checkpoint::from_hf(&tf, &cfg, &gptrain::model::ParamLayout::new(&cfg));
                    }
                }
            }
        });
    }
    let pkl = std::fs::read(files.join("nanogpt_char/meta.pkl")).unwrap();
    for m in mutations(&pkl, 500, 3) {
        no_panic("pickle", move || gptrain::data::pickle::parse(&m).map(|_| ()));
    }
}

#[test]
fn altered_or_truncated_checkpoints_are_errors() {
    use gptrain::checkpoint;
    let d = std::env::temp_dir().join(format!("gptrain-hostile-ckpt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    // a real checkpoint of a tiny model
    let cfg = gptrain::config::resolve(
        Some("shakespeare-char-cpu"),
        None,
        &["n_layer=1".into(), "n_embd=16".into(), "n_head=2".into(), "block_size=8".into()],
    )
    .unwrap()
    .0;
    let mc =
        gptrain::model::ModelConfig { n_layer: 1, n_head: 2, n_embd: 16, block_size: 8, vocab_size: 10, padded_vocab_size: 10, bias: true };
    let layout = gptrain::model::ParamLayout::new(&mc);
    let params = gptrain::model::gpt::init_params(&mc, &layout, 1);
    let state = checkpoint::TrainState {
        format: checkpoint::FORMAT_VERSION,
        iter: 5,
        val_loss: Some(2.0),
        best_val_loss: Some(2.0),
        seed: 1,
        model: mc.clone(),
        config: cfg,
        meta: gptrain::data::Meta::char((0..10).map(|i| i.to_string()).collect()),
        skipped_updates: 0,
        outliers: Default::default(),
        loss_scaler: None,
    };
    let m = vec![0.0; layout.total];
    let files = checkpoint::serialize(&layout, &state, &params, Some(&m), Some(&m)).unwrap();
    let good = checkpoint::save(&d, &files, 5, None).unwrap();
    assert!(checkpoint::load(&good).is_ok());
    let names: Vec<&str> = files.iter().map(|f| f.0).collect();
    let mut r = rng::Rng::new(4, 4);
    for k in 0..120 {
        let name = names[k % names.len()];
        let original = std::fs::read(good.join(name)).unwrap();
        let bad = &mutations(&original, 1, r.next_u64())[0];
        if *bad == original {
            continue;
        }
        std::fs::write(good.join(name), bad).unwrap();
        let g = good.clone();
        let res = std::panic::catch_unwind(move || checkpoint::load(&g).map(|_| ()));
        assert!(res.is_ok(), "loading a checkpoint with an altered {name} panicked");
        assert!(res.unwrap().is_err(), "an altered {name} was accepted");
        std::fs::write(good.join(name), &original).unwrap();
    }
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn token_files_and_logs_never_panic() {
    let dir = std::env::temp_dir().join(format!("gptrain-hostile-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base: Vec<u8> = (0..200u16).flat_map(|i| (i % 50).to_le_bytes()).collect();
    for (i, m) in mutations(&base, 200, 5).into_iter().enumerate() {
        let f = dir.join(format!("t{i}.bin"));
        std::fs::write(&f, &m).unwrap();
        for bytes in [2, 4] {
            let f = f.clone();
            no_panic("token file", move || gptrain::data::Tokens::open(&f, bytes, 50).map(|_| ()));
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    let log = b"step 0: train loss 4.2, val loss 4.2\niter 0: loss 4.2, time 100.0ms, mfu -100.00%\niter 1: loss 4.1, time 90.5ms, mfu 3.1%\nstep    2/74 | loss 7.1 | norm 1.2 | lr 6.00e-04 | 60.00 ms | 52.0% bf16 MFU | 210000 tok/s\nstep 3: train loss 4.3 (took 12.5 ms)\n{\"type\":\"iter\",\"iter\":4,\"loss\":3.0,\"ms\":10.0}\n";
    for m in mutations(log, 1000, 6) {
        no_panic("log", move || {
            gptrain::perf::logs::parse(&String::from_utf8_lossy(&m)).map(|p| gptrain::perf::logs::steady(&p)).map(|_| ())
        });
    }
}

/// `gptrain ARGS` in `dir`: (exit code, stderr).
fn gptrain(args: &[&str], dir: &std::path::Path) -> (i32, String) {
    let (code, _, err) = common::gptrain(args, dir);
    (code, err)
}

#[test]
fn any_checkpoint_with_any_prompt_samples_or_says_why() {
    let d = std::env::temp_dir().join(format!("gptrain-hostile-sample-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let small = ["--set", "n_layer=1", "--set", "n_embd=16", "--set", "n_head=2", "--set", "block_size=8", "--set", "max_iters=2"];
    let small = small.iter().chain(&["--set", "eval_iters=1", "--set", "max_new_tokens=3"]).copied();
    // a char-level run on the built-in corpus, and a GPT-2 BPE one on a prepared folder
    let char_run: Vec<&str> = ["train", "--set", "out_dir=char"].into_iter().chain(small.clone()).collect();
    assert_eq!(gptrain(&char_run, &d).0, 0);
    std::fs::write(d.join("doc.txt"), "Hello world, this is a test of the GPT-2 tokenizer.\n".repeat(40)).unwrap();
    assert_eq!(gptrain(&["prepare", "--input", "doc.txt", "--tokenizer", "gpt2", "--out", "bpe-data"], &d).0, 0);
    let bpe_run: Vec<&str> = ["train", "--set", "out_dir=bpe", "--set", "dataset=bpe-data"].into_iter().chain(small).collect();
    assert_eq!(gptrain(&bpe_run, &d).0, 0);
    let hf = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf_tiny");
    let sources = [
        "init_from=char/ckpt-000002".to_string(),
        "init_from=char/ckpt-000002/model.safetensors".to_string(),
        "out_dir=char".to_string(),
        "init_from=bpe/ckpt-000002".to_string(),
        "out_dir=bpe".to_string(),
        format!("init_from={}", hf.display()),
        format!("init_from={}", hf.join("model.safetensors").display()),
    ];
    let long = "To be, or not to be: that is the question. ".repeat(20);
    let prompts =
        ["", "\n", "hello world", "Z", "héllo ☃ 日本語", "<|endoftext|>", "\u{7f}\u{1b}[31m", "FILE:no-such-file.txt", long.as_str()];
    for src in &sources {
        for prompt in prompts {
            // an empty `--set` value is an error; the empty prompt is the TOML string ""
            let start = if prompt.is_empty() { "start=\"\"".to_string() } else { format!("start={prompt}") };
            let args = ["sample", "--set", src, "--set", &start, "--set", "num_samples=1", "--set", "max_new_tokens=3"];
            let (code, err) = gptrain(&args, &d);
            assert!(!err.contains("panicked"), "{src} x {prompt:?} panicked: {err}");
            let last = err.lines().last().unwrap_or("");
            assert!(code == 0 || (code == 1 && last.starts_with("error: ")), "{src} x {prompt:?}: exit {code}, {err}");
            assert!(code != 0 || err.contains("sampling from "), "{src} x {prompt:?}: {err}");
        }
    }
    std::fs::remove_dir_all(&d).ok();
}
