//! Where a run starts: from scratch, from its own newest checkpoint (resume), or from weights to
//! fine-tune (a gptrain checkpoint or a Hugging Face GPT-2 file); and the one-run-per-out_dir
//! rule a fresh run obeys.

use super::{model_config, Observer};
use crate::checkpoint;
use crate::config::Config;
use crate::data::Dataset;
use crate::model::ModelConfig;
use crate::optim::OutlierDetector;
use anyhow::{bail, Result};
use std::path::Path;

/// Knobs that fix the model's shape: they must match a checkpoint on resume.
const SHAPE_KEYS: &[&str] = &["n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "pad_vocab"];

/// Where training starts from.
pub(super) struct Init {
    pub(super) model_cfg: ModelConfig,
    pub(super) params: Vec<f32>,
    pub(super) m: Option<Vec<f32>>,
    pub(super) v: Option<Vec<f32>>,
    pub(super) start_iter: u64,
    pub(super) best_val: Option<f32>,
    pub(super) skipped: u64,
    pub(super) outliers: [OutlierDetector; 2],
    pub(super) loss_scaler: Option<crate::optim::LossScaler>,
    pub(super) resumed: bool,
    /// Whether the checkpoint resumed from was evaluated at its iteration (a save at an
    /// evaluation); one written on Ctrl-C, or at the end between evaluations, was not.
    pub(super) evaluated: bool,
}

impl Init {
    /// A run from iteration 0 with these weights (from scratch or from a GPT-2 file).
    fn fresh(model_cfg: ModelConfig, params: Vec<f32>) -> Self {
        Init {
            model_cfg,
            params,
            m: None,
            v: None,
            start_iter: 0,
            best_val: None,
            skipped: 0,
            outliers: Default::default(),
            loss_scaler: None,
            resumed: false,
            evaluated: false,
        }
    }
}

/// A fresh run (`scratch` or fine-tuning) must not mix its checkpoints with another run's in
/// the same out_dir: a save would replace theirs at equal iterations, pruning would delete its
/// own at lower ones, and a later resume would pick up theirs. Refuses, naming what is there
/// and the ways out, unless `replace_checkpoints` asks to delete them (done once the start
/// weights are in memory: a fine-tuning source may live in that out_dir).
fn check_fresh_out_dir(cfg: &Config, out_dir: &Path) -> Result<()> {
    let found = checkpoint::list(out_dir);
    let Some((_, newest)) = found.first() else { return Ok(()) };
    if cfg.replace_checkpoints || cfg.eval_only {
        return Ok(());
    }
    let n = found.len();
    bail!(
        "out_dir {} already holds {n} checkpoint{} of another run (newest: {}, {}); a new `{}` run there would mix its checkpoints with them. Choose one: `--set init_from=resume` continues that run, `--set out_dir=NEW_DIR` starts this one elsewhere, `--set replace_checkpoints=true` deletes them and starts over",
        out_dir.display(),
        if n == 1 { "" } else { "s" },
        newest.display(),
        checkpoint::describe(newest),
        if cfg.init_from == "scratch" { "scratch" } else { "fine-tuning" }
    )
}

/// A checkpoint's vocabulary must be the dataset's: the same token ids for the same text.
fn check_same_vocabulary(ck: &crate::data::Meta, ds: &crate::data::Meta, dir: &Path, hint: &str) -> Result<()> {
    if ck.tokenizer != ds.tokenizer || ck.vocab_size != ds.vocab_size || ck.itos != ds.itos {
        bail!(
            "the dataset's vocabulary ({} tokenizer, {} tokens) does not match the checkpoint's ({} tokenizer, {} tokens) in {}; hint: {hint}",
            ds.tokenizer,
            ds.vocab_size,
            ck.tokenizer,
            ck.vocab_size,
            dir.display()
        );
    }
    Ok(())
}

pub(super) fn initialise(cfg: &Config, ds: &Dataset, obs: &mut dyn Observer, writes: bool) -> Result<Init> {
    let out_dir = Path::new(&cfg.out_dir);
    // finish or undo what an interrupted write left, before anything reads the checkpoints
    // (by the process that writes checkpoints: rank 0 of a data-parallel run)
    let n = if writes { checkpoint::clean_leftovers(out_dir) } else { 0 };
    if n > 0 {
        obs.message(&format!("removed {n} unfinished checkpoint write(s) in {}", out_dir.display()));
    }
    if cfg.init_from != "resume" {
        check_fresh_out_dir(cfg, out_dir)?;
    }
    let init = initialise_from(cfg, ds, obs)?;
    if cfg.init_from != "resume" && cfg.replace_checkpoints && !cfg.eval_only && writes {
        let n = checkpoint::remove_all(out_dir)?;
        if n > 0 {
            let _ = std::fs::remove_file(out_dir.join("metrics.jsonl"));
            let _ = std::fs::remove_dir_all(out_dir.join("tensorboard"));
            obs.message(&format!(
                "deleted the {n} checkpoint{} (and metrics.jsonl and tensorboard/) of an earlier run in {}, as replace_checkpoints asks",
                if n == 1 { "" } else { "s" },
                out_dir.display()
            ));
        }
    }
    Ok(init)
}

/// A note when `vocab_size` (a GPT-2 preset's 50304) is set far above a character dataset's
/// vocabulary (the built-in corpus has 76 characters): the output layer and its time and memory are
/// the BPE run's, and the ids past the data's can never be a target.
fn vocab_note(vocab: Option<usize>, meta: &crate::data::Meta, source: &str) -> Option<String> {
    let v = vocab.filter(|&v| meta.tokenizer == "char" && v >= 8 * meta.vocab_size)?;
    Some(format!(
        "note: vocab_size = {v} but the data, {source}, has {} characters: the model's output layer, time and memory are a GPT-2 BPE run's; for BPE data, `gptrain prepare --tokenizer gpt2 --input TEXT --out DIR` and `--set dataset=DIR`, or `--set vocab_size=auto` for the characters",
        meta.vocab_size
    ))
}

fn initialise_from(cfg: &Config, ds: &Dataset, obs: &mut dyn Observer) -> Result<Init> {
    let out_dir = Path::new(&cfg.out_dir);
    match cfg.init_from.as_str() {
        "scratch" => {
            let model_cfg = model_config(cfg, ds.meta.vocab_size)?;
            if let Some(note) = vocab_note(cfg.vocab_size, &ds.meta, &ds.source) {
                obs.message(&note);
            }
            let layout = crate::model::ParamLayout::new(&model_cfg);
            let params = crate::model::gpt::init_params(&model_cfg, &layout, cfg.seed);
            Ok(Init::fresh(model_cfg, params))
        }
        "resume" => {
            let ck = checkpoint::load_latest(out_dir, cfg.resume_fallback, &mut |w| obs.message(&w))?;
            let saved = &ck.state.config;
            let (a, b) = (saved.entries(), cfg.entries());
            for key in SHAPE_KEYS {
                let (x, y) = (&a.iter().find(|e| e.0 == *key).unwrap().1, &b.iter().find(|e| e.0 == *key).unwrap().1);
                if x != y && !(*key == "vocab_size" && y == "auto") {
                    bail!("`{key}` is {y} but the checkpoint {} was trained with {x}; shape keys must match on resume", ck.dir.display());
                }
            }
            check_same_vocabulary(&ck.state.meta, &ds.meta, &ck.dir, "resume with the dataset the run was trained on")?;
            obs.message(&format!("resuming from {} (iteration {})", ck.dir.display(), ck.state.iter));
            Ok(Init {
                model_cfg: ck.state.model.clone(),
                params: ck.params,
                m: ck.m,
                v: ck.v,
                start_iter: ck.state.iter,
                best_val: ck.state.best_val_loss,
                skipped: ck.state.skipped_updates,
                outliers: ck.state.outliers.clone(),
                loss_scaler: ck.state.loss_scaler.clone(),
                resumed: true,
                evaluated: ck.state.val_loss.is_some(),
            })
        }
        path => {
            let w = checkpoint::load_weights(path, cfg.n_head)?;
            let file = &w.file;
            if let Some(state) = &w.state {
                // a gptrain checkpoint's tokenizer must be the dataset's
                let dir = file.parent().unwrap_or(Path::new("."));
                check_same_vocabulary(&state.meta, &ds.meta, dir, "fine-tune on data prepared with the checkpoint's tokenizer")?;
            }
            if w.model.vocab_size < ds.meta.vocab_size {
                bail!(
                    "{} has a vocabulary of {} tokens but the dataset's has {}: the model cannot read this data",
                    file.display(),
                    w.model.vocab_size,
                    ds.meta.vocab_size
                );
            }
            let file_block = w.model.block_size;
            let (model_cfg, params) = checkpoint::crop_block(&w.model, &w.params, cfg.block_size);
            obs.message(&format!(
                "initialised from {} ({} layers, {} heads, {} dims, vocab {}, context {} of {}); shape knobs come from the file",
                file.display(),
                model_cfg.n_layer,
                model_cfg.n_head,
                model_cfg.n_embd,
                model_cfg.vocab_size,
                model_cfg.block_size,
                file_block
            ));
            Ok(Init::fresh(model_cfg, params))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bpe_sized_vocabulary_over_character_data_is_noted() {
        let chars = crate::data::Meta::char((0..65).map(|i| i.to_string()).collect());
        let note = vocab_note(Some(50304), &chars, "built-in").unwrap();
        assert!(note.starts_with("note: vocab_size = 50304 but the data, built-in, has 65 characters"), "{note}");
        assert!(note.contains("--tokenizer gpt2") && note.contains("vocab_size=auto"), "{note}");
        // the data's own size, a little room, BPE data, or no vocab_size set: nothing to say
        assert_eq!(vocab_note(None, &chars, "x"), None);
        assert_eq!(vocab_note(Some(128), &chars, "x"), None);
        assert_eq!(vocab_note(Some(50304), &crate::data::Meta::gpt2(), "x"), None);
    }
}
