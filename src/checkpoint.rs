//! Checkpoints: one directory `ckpt-<iteration>` per save, made visible by a single rename
//! once every file in it is written and fsynced.
//!
//! A checkpoint holds `model.safetensors` (Hugging Face GPT-2 names and Conv1D layout, so
//! `GPT2LMHeadModel.from_pretrained(dir)` loads it) with its `config.json`, `optim.safetensors`
//! (AdamW moments in gptrain's layout), `train_state.json` (iteration, losses, seed, the whole
//! config, the dataset meta) and `MANIFEST.json` (a CRC-32 of every other file, checked on load).

use crate::config::Config;
use crate::data::Meta;
use crate::model::{ModelConfig, ParamLayout};
use crate::tensorfile;
use anyhow::{bail, Context, Result};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const FORMAT_VERSION: u32 = 1;

/// Training state saved beside the weights.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TrainState {
    pub format: u32,
    /// Optimiser steps done; training resumes at this iteration.
    pub iter: u64,
    /// Val loss at this checkpoint (None when saved without an eval).
    pub val_loss: Option<f32>,
    pub best_val_loss: Option<f32>,
    /// Seed of every counter-based random stream; with `iter` it is the whole RNG and
    /// data-sampler state (batches and dropout masks are functions of seed and iteration).
    pub seed: u64,
    pub model: ModelConfig,
    pub config: Config,
    pub meta: Meta,
    /// Updates skipped so far (non-finite loss or norm, or the outlier guard).
    #[serde(default)]
    pub skipped_updates: u64,
    /// The outlier guard's windows (loss, gradient norm), so that a resumed run skips exactly
    /// what an uninterrupted one does.
    #[serde(default)]
    pub outliers: [crate::optim::OutlierDetector; 2],
    /// The float16 loss scaler (scale, clean-step count, overflow skips); absent in other
    /// precisions and in checkpoints older than mixed precision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scaler: Option<crate::optim::LossScaler>,
}

/// What a checkpoint holds in memory.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub state: TrainState,
    pub params: Vec<f32>,
    pub m: Option<Vec<f32>>,
    pub v: Option<Vec<f32>>,
}

/// Name of the checkpoint directory for an iteration.
pub fn dir_name(iter: u64) -> String {
    format!("ckpt-{iter:06}")
}

fn parse_dir_name(name: &str) -> Option<u64> {
    name.strip_prefix("ckpt-").and_then(|n| n.parse().ok())
}

/// Complete checkpoints in `out_dir`, newest first. Leftovers of interrupted writes
/// (`.tmp-*`) are not listed.
pub fn list(out_dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(out_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| parse_dir_name(&e.file_name().to_string_lossy()).map(|i| (i, e.path())))
        .filter(|(_, p)| p.is_dir())
        .collect();
    v.sort_by_key(|x| std::cmp::Reverse(x.0));
    v
}

/// Prefix of a checkpoint being replaced: `ckpt-N` is renamed to `.tmp-old-ckpt-N-<pid>` just
/// before the new `ckpt-N` is renamed in, and removed after.
const OLD_PREFIX: &str = ".tmp-old-";

/// Finishes or undoes interrupted writes; returns how many leftovers it handled. A checkpoint
/// that was being replaced when the process died (`.tmp-old-ckpt-N-*` with no `ckpt-N`) is
/// put back; every other leftover (`.tmp-ckpt-*` half-written, `.tmp-del-*` being pruned,
/// `.tmp-old-*` whose replacement is in place) is removed.
pub fn clean_leftovers(out_dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(out_dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(rest) = name.strip_prefix(OLD_PREFIX) {
            let dst = rest.rsplit_once('-').map(|(ckpt, _pid)| out_dir.join(ckpt));
            if let Some(dst) = dst.filter(|d| parse_dir_name(&d.file_name().unwrap_or_default().to_string_lossy()).is_some()) {
                if !dst.exists() && std::fs::rename(e.path(), &dst).is_ok() {
                    sync_dir(out_dir);
                    n += 1;
                    continue;
                }
            }
        }
        let leftover = [".tmp-ckpt-", ".tmp-del-", OLD_PREFIX].iter().any(|p| name.starts_with(p));
        if leftover && std::fs::remove_dir_all(e.path()).is_ok() {
            n += 1;
        }
    }
    n
}

// ---------------------------------------------------------------------------------------------
// Hugging Face GPT-2 naming

/// (HF name without prefix, our tensor name, layer or None, is Conv1D (transposed)).
fn hf_names(cfg: &ModelConfig) -> Vec<(String, &'static str, Option<usize>, bool)> {
    let mut v = vec![("wte.weight".to_string(), "wte", None, false), ("wpe.weight".to_string(), "wpe", None, false)];
    for l in 0..cfg.n_layer {
        for (suffix, ours, conv) in [
            ("ln_1.weight", "ln1w", false),
            ("ln_1.bias", "ln1b", false),
            ("attn.c_attn.weight", "qkvw", true),
            ("attn.c_attn.bias", "qkvb", false),
            ("attn.c_proj.weight", "attprojw", true),
            ("attn.c_proj.bias", "attprojb", false),
            ("ln_2.weight", "ln2w", false),
            ("ln_2.bias", "ln2b", false),
            ("mlp.c_fc.weight", "fcw", true),
            ("mlp.c_fc.bias", "fcb", false),
            ("mlp.c_proj.weight", "fcprojw", true),
            ("mlp.c_proj.bias", "fcprojb", false),
        ] {
            v.push((format!("h.{l}.{suffix}"), ours, Some(l), conv));
        }
    }
    v.push(("ln_f.weight".into(), "lnfw", None, false));
    v.push(("ln_f.bias".into(), "lnfb", None, false));
    v
}

fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = x[r * cols + c];
        }
    }
    out
}

/// Our parameter buffer as HF GPT-2 tensors (zero biases where the model has none): slices of
/// `params` where HF lays a tensor out as we do, copies only where it transposes (Conv1D).
fn to_hf<'a>(cfg: &ModelConfig, layout: &ParamLayout, params: &'a [f32]) -> BTreeMap<String, (Vec<usize>, Cow<'a, [f32]>)> {
    let c = cfg.n_embd;
    let mut out = BTreeMap::new();
    for (name, ours, layer, conv) in hf_names(cfg) {
        let (shape, data) = match layout.tensor(ours) {
            Some(t) => {
                let span = match layer {
                    Some(l) => t.span.part(l, layout.n_layer),
                    None => t.span,
                };
                let x = &params[span.off..span.end()];
                let shape: Vec<usize> = if layer.is_some() { t.shape[1..].to_vec() } else { t.shape.clone() };
                if conv {
                    (vec![shape[1], shape[0]], Cow::Owned(transpose(x, shape[0], shape[1])))
                } else {
                    (shape, Cow::Borrowed(x))
                }
            }
            None => {
                // a bias the model does not have: zeros of the matching width
                let n = match ours {
                    "qkvb" => 3 * c,
                    "fcb" => 4 * c,
                    _ => c,
                };
                (vec![n], Cow::Owned(vec![0.0; n]))
            }
        };
        out.insert(format!("transformer.{name}"), (shape, data));
    }
    out
}

/// Hugging Face's config.json for a GPT2LMHeadModel of this shape.
fn hf_config(cfg: &ModelConfig, dropout: f64) -> serde_json::Value {
    let mut v = serde_json::json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.padded_vocab_size,
        "n_positions": cfg.block_size,
        "n_ctx": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": null,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": dropout,
        "embd_pdrop": dropout,
        "attn_pdrop": dropout,
        "initializer_range": 0.02,
        "tie_word_embeddings": true,
        "torch_dtype": "float32"
    });
    if cfg.padded_vocab_size > crate::tokenizer::GPT2_EOT as usize {
        // GPT-2's <|endoftext|> exists only in a GPT-2-sized vocabulary
        v["bos_token_id"] = crate::tokenizer::GPT2_EOT.into();
        v["eos_token_id"] = crate::tokenizer::GPT2_EOT.into();
    }
    v
}

// ---------------------------------------------------------------------------------------------
// Writing

/// Writes `bytes` to `path` and fsyncs it.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes).with_context(|| format!("cannot write {} ({} bytes)", path.display(), bytes.len()))?;
    f.sync_all().with_context(|| format!("cannot sync {}", path.display()))?;
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// The files of a checkpoint, serialised.
pub fn serialize(
    layout: &ParamLayout,
    state: &TrainState,
    params: &[f32],
    m: Option<&[f32]>,
    v: Option<&[f32]>,
) -> Result<Vec<(&'static str, Vec<u8>)>> {
    let hf = to_hf(&state.model, layout, params);
    let views: BTreeMap<String, (Vec<usize>, &[f32])> = hf.iter().map(|(k, (s, d))| (k.clone(), (s.clone(), d.as_ref()))).collect();
    let model = tensorfile::serialize(&views, Some(HashMap::from([("format".to_string(), "pt".to_string())])))?;
    let mut files =
        vec![("model.safetensors", model), ("config.json", serde_json::to_vec_pretty(&hf_config(&state.model, state.config.dropout))?)];
    if let (Some(m), Some(v)) = (m, v) {
        let n = vec![layout.total];
        let views = BTreeMap::from([("m".to_string(), (n.clone(), m)), ("v".to_string(), (n, v))]);
        files.push(("optim.safetensors", tensorfile::serialize(&views, None)?));
    }
    files.push(("train_state.json", serde_json::to_vec_pretty(state)?));
    let manifest: BTreeMap<&str, String> = files.iter().map(|(n, b)| (*n, format!("{:08x}", crc32fast::hash(b)))).collect();
    files.push(("MANIFEST.json", serde_json::to_vec_pretty(&manifest)?));
    Ok(files)
}

/// A hook the tests use to make writes fail (disk full, permissions) at a chosen file.
pub type WriteHook<'a> = &'a dyn Fn(&Path, &[u8]) -> Result<()>;

/// Writes a checkpoint atomically: into `.tmp-ckpt-N-<pid>`, every file fsynced, then one
/// rename to `ckpt-N` and an fsync of `out_dir`. On error the previous checkpoints are
/// untouched and the temporary directory is removed.
pub fn save(out_dir: &Path, files: &[(&'static str, Vec<u8>)], iter: u64, hook: Option<WriteHook>) -> Result<PathBuf> {
    std::fs::create_dir_all(out_dir).with_context(|| format!("cannot create out_dir {}", out_dir.display()))?;
    let name = dir_name(iter);
    let tmp = out_dir.join(format!(".tmp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let result = (|| -> Result<()> {
        std::fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        for (fname, bytes) in files {
            let p = tmp.join(fname);
            match hook {
                Some(h) => h(&p, bytes)?,
                None => write_synced(&p, bytes)?,
            }
        }
        sync_dir(&tmp);
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        let need: usize = files.iter().map(|f| f.1.len()).sum();
        let previous = match list(out_dir).first() {
            Some((_, p)) => format!("the previous checkpoint, {}, is intact", p.display()),
            None => "there is no earlier checkpoint in it".to_string(),
        };
        return Err(e.context(format!("checkpoint {name} was not written ({need} bytes needed in {}); {previous}", out_dir.display())));
    }
    let dst = out_dir.join(&name);
    install(out_dir, &tmp, &dst, usize::MAX)?;
    Ok(dst)
}

/// Renames the complete checkpoint `tmp` to `dst`. An existing `dst` (a corrupt checkpoint a
/// fallback resume skipped, or one of this iteration from an interrupted run) is replaced: it
/// is renamed aside, the new one renamed in, and the old one removed after, so a kill at any
/// point leaves one complete `ckpt-N`, old or new ([`clean_leftovers`] puts an old one back).
/// `steps` stops after that many file-system steps: the tests' stand-in for a kill.
fn install(out_dir: &Path, tmp: &Path, dst: &Path, steps: usize) -> Result<()> {
    let old = dst.exists().then(|| {
        let name = dst.file_name().unwrap_or_default().to_string_lossy();
        out_dir.join(format!("{OLD_PREFIX}{name}-{}", std::process::id()))
    });
    let mut step = 0;
    let mut next = || {
        step += 1;
        step <= steps
    };
    if let Some(old) = &old {
        let _ = std::fs::remove_dir_all(old);
        if !next() {
            return Ok(());
        }
        std::fs::rename(dst, old).with_context(|| format!("cannot move the existing {} aside to replace it", dst.display()))?;
    }
    if !next() {
        return Ok(());
    }
    if let Err(e) = std::fs::rename(tmp, dst) {
        if let Some(old) = &old {
            let _ = std::fs::rename(old, dst); // put the previous one back
        }
        let _ = std::fs::remove_dir_all(tmp);
        return Err(e).with_context(|| format!("cannot rename {} to {}", tmp.display(), dst.display()));
    }
    sync_dir(out_dir);
    if !next() {
        return Ok(());
    }
    if let Some(old) = &old {
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(())
}

/// Deletes all but the newest `keep` checkpoints and the best by val loss (`keep` = 0: deletes
/// none). `written`, the checkpoint just saved, is never deleted, whatever older runs or
/// skipped corrupt checkpoints sort after it.
pub fn prune(out_dir: &Path, keep: usize, written: u64) {
    let all = list(out_dir);
    if keep == 0 || all.len() <= keep {
        return;
    }
    let best = all
        .iter()
        .filter_map(|(i, p)| read_state(p).ok().and_then(|s| s.val_loss).map(|v| (v, *i)))
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .map(|x| x.1);
    for (i, p) in all.iter().skip(keep) {
        if Some(*i) != best && *i != written {
            let _ = remove(out_dir, *i, p); // a checkpoint pruning cannot remove stays
        }
    }
}

/// Deletes every checkpoint in `out_dir` (a fresh run told to replace an earlier run's with
/// `replace_checkpoints`); returns how many.
pub fn remove_all(out_dir: &Path) -> Result<usize> {
    let all = list(out_dir);
    for (i, p) in &all {
        remove(out_dir, *i, p).with_context(|| format!("cannot remove {}", p.display()))?;
    }
    sync_dir(out_dir);
    Ok(all.len())
}

/// Deletes checkpoint `dir` (of iteration `iter`) by renaming it first (atomic), so a kill
/// mid-delete leaves a `.tmp-del-` leftover, never a half-deleted `ckpt-N`.
fn remove(out_dir: &Path, iter: u64, dir: &Path) -> std::io::Result<()> {
    let doomed = out_dir.join(format!(".tmp-del-{}-{}", dir_name(iter), std::process::id()));
    std::fs::rename(dir, &doomed)?;
    let _ = std::fs::remove_dir_all(&doomed);
    Ok(())
}

/// What a checkpoint directory holds, in a few words (`iteration 300, val loss 1.4752`), for
/// messages about it; the words say so when it cannot be read.
pub fn describe(dir: &Path) -> String {
    read_state(dir).map_or("unreadable".into(), |s| s.describe())
}

impl TrainState {
    /// `iteration 300, val loss 1.4752`.
    pub fn describe(&self) -> String {
        match self.val_loss {
            Some(v) => format!("iteration {}, val loss {v:.4}", self.iter),
            None => format!("iteration {}", self.iter),
        }
    }
}

/// Whether `dir` is a gptrain checkpoint (it holds a `train_state.json` beside its weights),
/// rather than a Hugging Face GPT-2 directory.
pub fn is_gptrain_checkpoint(dir: &Path) -> bool {
    dir.join("train_state.json").is_file() && dir.join("MANIFEST.json").is_file()
}

// ---------------------------------------------------------------------------------------------
// Reading

fn read_state(dir: &Path) -> Result<TrainState> {
    let p = dir.join("train_state.json");
    let text = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("{} is corrupt", p.display()))
}

/// Reads a file of a checkpoint and checks it against the manifest.
fn read_verified(dir: &Path, name: &str, manifest: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let p = dir.join(name);
    let bytes = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
    let want = manifest.get(name).with_context(|| format!("{} is not in the checkpoint's manifest", p.display()))?;
    let got = format!("{:08x}", crc32fast::hash(&bytes));
    if &got != want {
        bail!(
            "checkpoint {} failed verification: {name} has checksum {got}, the manifest says {want} (the file was altered or truncated)",
            dir.display()
        );
    }
    Ok(bytes)
}

/// Loads and verifies a checkpoint directory.
pub fn load(dir: &Path) -> Result<Checkpoint> {
    let mp = dir.join("MANIFEST.json");
    let manifest: BTreeMap<String, String> =
        serde_json::from_slice(&std::fs::read(&mp).with_context(|| format!("cannot read {}", mp.display()))?)
            .with_context(|| format!("{} is corrupt", mp.display()))?;
    // every file the manifest lists must verify, read or not
    let mut files: HashMap<String, Vec<u8>> = HashMap::new();
    for name in manifest.keys() {
        if name.contains('/') || name.contains("..") {
            bail!("{} lists an invalid file name `{name}`", mp.display());
        }
        files.insert(name.clone(), read_verified(dir, name, &manifest)?);
    }
    let file = |name: &str| files.get(name).with_context(|| format!("checkpoint {} has no {name}", dir.display()));
    let state: TrainState =
        serde_json::from_slice(file("train_state.json")?).with_context(|| format!("{}/train_state.json is corrupt", dir.display()))?;
    if state.format != FORMAT_VERSION {
        bail!("checkpoint {} has format {}, this gptrain reads format {FORMAT_VERSION}", dir.display(), state.format);
    }
    let model_cfg = state.model.clone().validate()?;
    let layout = ParamLayout::new(&model_cfg);
    let tf = tensorfile::parse(file("model.safetensors")?).with_context(|| format!("{}/model.safetensors", dir.display()))?;
    let params = from_hf(&tf, &model_cfg, &layout).with_context(|| format!("{}/model.safetensors", dir.display()))?;
    let (m, v) = if files.contains_key("optim.safetensors") {
        let o = tensorfile::parse(file("optim.safetensors")?)?;
        let m = o.get("m")?.data.clone();
        let v = o.get("v")?.data.clone();
        if m.len() != layout.total || v.len() != layout.total {
            bail!("{}/optim.safetensors does not match the model's {} parameters", dir.display(), layout.total);
        }
        (Some(m), Some(v))
    } else {
        (None, None)
    };
    Ok(Checkpoint { dir: dir.to_path_buf(), state, params, m, v })
}

/// Loads the newest checkpoint in `out_dir`. With `fallback`, a checkpoint that fails to load
/// is reported and the next older one is tried.
pub fn load_latest(out_dir: &Path, fallback: bool, warn: &mut dyn FnMut(String)) -> Result<Checkpoint> {
    let all = list(out_dir);
    if all.is_empty() {
        bail!(
            "no checkpoint in {} to resume from; hint: train first (init_from = \"scratch\"), or set out_dir to the run's directory",
            out_dir.display()
        );
    }
    let mut last_err = None;
    for (_, dir) in &all {
        match load(dir) {
            Ok(c) => return Ok(c),
            Err(e) if fallback => {
                warn(format!("warning: skipping {}: {e:#}", dir.display()));
                last_err = Some(e);
            }
            Err(e) => bail!("{e:#}; hint: `--set resume_fallback=true` resumes from the newest checkpoint that verifies"),
        }
    }
    Err(last_err.unwrap().context("no checkpoint in the directory verifies"))
}

/// Reads HF GPT-2 tensors (with or without the `transformer.` prefix, any float dtype) into
/// our layout for `cfg`. Missing biases are an error only if the model has biases; the old
/// `attn.bias`/`attn.masked_bias` buffers and `lm_head.weight` (tied) are ignored.
pub fn from_hf(tf: &tensorfile::TensorFile, cfg: &ModelConfig, layout: &ParamLayout) -> Result<Vec<f32>> {
    let mut params = vec![0.0f32; layout.total];
    for (name, ours, layer, conv) in hf_names(cfg) {
        let Some(t) = layout.tensor(ours) else { continue };
        let src = tf
            .tensors
            .get(&format!("transformer.{name}"))
            .or_else(|| tf.tensors.get(&name))
            .with_context(|| format!("tensor `{name}` is missing"))?;
        let span = match layer {
            Some(l) => t.span.part(l, layout.n_layer),
            None => t.span,
        };
        let want: Vec<usize> = if layer.is_some() { t.shape[1..].to_vec() } else { t.shape.clone() };
        let dst = &mut params[span.off..span.end()];
        if conv {
            if src.shape != [want[1], want[0]] {
                bail!("`{name}` has shape {:?}, expected {:?} (Conv1D layout)", src.shape, [want[1], want[0]]);
            }
            dst.copy_from_slice(&transpose(&src.data, want[1], want[0]));
        } else if ours == "wte" || ours == "wpe" {
            // fewer rows in the file than in the model: vocabulary padding or a longer context
            // is kept zero; more rows: a cropped context (nanoGPT's crop_block_size)
            if src.shape.len() != 2 || src.shape[1] != want[1] {
                bail!("`{name}` has shape {:?}, expected [_, {}]", src.shape, want[1]);
            }
            let n = src.data.len().min(dst.len());
            dst[..n].copy_from_slice(&src.data[..n]);
        } else {
            if src.shape != want {
                bail!("`{name}` has shape {:?}, expected {:?}", src.shape, want);
            }
            dst.copy_from_slice(&src.data);
        }
    }
    Ok(params)
}

/// The weights file `init_from` names: a `model.safetensors` file, or a directory holding one
/// (as `huggingface-cli download` leaves it). A missing one is an error that says how to get it;
/// gptrain does not download.
pub fn hf_weights_file(init_from: &str) -> Result<PathBuf> {
    let p = PathBuf::from(init_from);
    let file = if p.is_dir() { p.join("model.safetensors") } else { p };
    if file.is_file() {
        return Ok(file);
    }
    let repo = match init_from {
        "gpt2" => Some("openai-community/gpt2"),
        "gpt2-medium" => Some("openai-community/gpt2-medium"),
        "gpt2-large" => Some("openai-community/gpt2-large"),
        "gpt2-xl" => Some("openai-community/gpt2-xl"),
        _ => None,
    };
    match repo {
        Some(repo) => bail!(
            "init_from = `{init_from}`: no such file or directory here; gptrain does not download (nanoGPT's `{init_from}` comes from Hugging Face); hint: `huggingface-cli download {repo} model.safetensors config.json --local-dir {init_from}` makes the directory this setting names"
        ),
        None => bail!(
            "init_from = `{init_from}`: {} does not exist (expected `scratch`, `resume`, or a GPT-2 model.safetensors or the directory holding it)",
            file.display()
        ),
    }
}

/// Weights named by a path: fine-tuning's start and `sample`'s model.
pub struct Weights {
    /// The `model.safetensors` file.
    pub file: PathBuf,
    pub model: ModelConfig,
    pub params: Vec<f32>,
    /// The training state of a gptrain checkpoint (its tokenizer and vocabulary); None for
    /// Hugging Face GPT-2 weights, which are GPT-2 BPE.
    pub state: Option<TrainState>,
}

/// Loads the weights `path` names ([`hf_weights_file`]): a gptrain checkpoint directory (or
/// its `model.safetensors`) is loaded and verified whole, its shape (bias, true vocabulary)
/// from its training state; any other GPT-2 file gets its shape from the tensors
/// ([`hf_shape`], `n_head_default` without a `config.json`).
pub fn load_weights(path: &str, n_head_default: usize) -> Result<Weights> {
    let file = hf_weights_file(path)?;
    let dir = file.parent().unwrap_or(Path::new("."));
    if is_gptrain_checkpoint(dir) {
        let ck = load(dir)?;
        return Ok(Weights { file, model: ck.state.model.clone(), params: ck.params, state: Some(ck.state) });
    }
    let tf = tensorfile::read(&file)?;
    let model = hf_shape(&tf, dir, n_head_default).with_context(|| format!("{}", file.display()))?;
    let params = from_hf(&tf, &model, &ParamLayout::new(&model)).with_context(|| format!("{}", file.display()))?;
    Ok(Weights { file, model, params, state: None })
}

/// `params` of `model` with the context cut to `block` positions (nanoGPT's
/// `crop_block_size`): every tensor as it is but `wpe`, which keeps its first `block` rows.
pub fn crop_block(model: &ModelConfig, params: &[f32], block: usize) -> (ModelConfig, Vec<f32>) {
    let cropped = ModelConfig { block_size: block.min(model.block_size), ..model.clone() };
    let (from, to) = (ParamLayout::new(model), ParamLayout::new(&cropped));
    let mut out = vec![0.0f32; to.total];
    for (a, b) in from.tensors.iter().zip(&to.tensors) {
        // tensors are row-major with the positions leading in `wpe`: its first rows come first
        out[b.span.off..b.span.end()].copy_from_slice(&params[a.span.off..a.span.off + b.span.len]);
    }
    (cropped, out)
}

/// The model shape of a Hugging Face GPT-2 file: from the tensors, plus `n_head` from a
/// `config.json` beside it (else `n_head_default`).
pub fn hf_shape(tf: &tensorfile::TensorFile, dir: &Path, n_head_default: usize) -> Result<ModelConfig> {
    let get = |n: &str| tf.tensors.get(&format!("transformer.{n}")).or_else(|| tf.tensors.get(n));
    let wte = get("wte.weight").context("no `wte.weight`: not a GPT-2 model file")?;
    let wpe = get("wpe.weight").context("no `wpe.weight`: not a GPT-2 model file")?;
    if wte.shape.len() != 2 || wpe.shape.len() != 2 {
        bail!("`wte.weight`/`wpe.weight` must be 2-D");
    }
    let n_layer = (0..).take_while(|l| get(&format!("h.{l}.ln_1.weight")).is_some()).count();
    let bias = get("h.0.attn.c_attn.bias").is_some();
    let n_head = std::fs::read(dir.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["n_head"].as_u64())
        .map_or(n_head_default, |n| n as usize);
    let cfg = ModelConfig {
        n_layer,
        n_head,
        n_embd: wte.shape[1],
        block_size: wpe.shape[0],
        vocab_size: wte.shape[0],
        padded_vocab_size: wte.shape[0],
        bias,
    };
    cfg.validate()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `perf::flops::checkpoint_bytes`, the host memory a checkpoint takes while written, is
    /// what `serialize` makes of a model (its files), beside the weights and moments copied out
    /// for it and the transposed Conv1D weights, to within the files' headers.
    #[test]
    fn the_checkpoint_memory_model_counts_what_serialize_makes() {
        let mc = ModelConfig { n_layer: 2, n_head: 2, n_embd: 32, block_size: 16, vocab_size: 50, padded_vocab_size: 64, bias: true };
        let layout = ParamLayout::new(&mc);
        let params = crate::model::gpt::init_params(&mc, &layout, 1);
        let state = TrainState {
            format: FORMAT_VERSION,
            iter: 1,
            val_loss: None,
            best_val_loss: None,
            seed: 1,
            model: mc.clone(),
            config: Config::default(),
            meta: Meta::char((0..50).map(|i| i.to_string()).collect()),
            skipped_updates: 0,
            outliers: Default::default(),
            loss_scaler: None,
        };
        let m = vec![0.0; layout.total];
        let files = serialize(&layout, &state, &params, Some(&m), Some(&m)).unwrap();
        let tensors: usize = files.iter().filter(|f| f.0.ends_with(".safetensors")).map(|f| f.1.len()).sum();
        let (n, conv) = (layout.total, 12 * mc.n_layer * mc.n_embd * mc.n_embd);
        let made = (12 * n + tensors + 4 * conv) as u64;
        let model = crate::perf::flops::checkpoint_bytes(&mc);
        assert!(model <= made && made - model < 8 << 10, "model {model}, serialize {made}");
    }

    fn files() -> Vec<(&'static str, Vec<u8>)> {
        vec![("a.bin", vec![1u8; 1000]), ("MANIFEST.json", b"{}".to_vec())]
    }

    #[test]
    fn a_failed_first_write_does_not_claim_an_earlier_checkpoint() {
        let d = std::env::temp_dir().join(format!("gptrain-ckpt-fail-first-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let disk_full = |p: &Path, _: &[u8]| -> Result<()> { bail!("cannot write {}: No space left on device (os error 28)", p.display()) };
        let err = format!("{:#}", save(&d, &files(), 10, Some(&disk_full)).unwrap_err());
        assert!(err.contains("no earlier checkpoint") && !err.contains("intact"), "{err}");
        assert!(list(&d).is_empty());
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn a_failed_write_names_the_path_and_bytes_and_keeps_the_previous_checkpoint() {
        let d = std::env::temp_dir().join(format!("gptrain-ckpt-fail-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        save(&d, &files(), 10, None).unwrap();
        let disk_full = |p: &Path, _: &[u8]| -> Result<()> {
            if p.ends_with("MANIFEST.json") {
                bail!("cannot write {}: No space left on device (os error 28)", p.display());
            }
            Ok(())
        };
        let err = format!("{:#}", save(&d, &files(), 20, Some(&disk_full)).unwrap_err());
        assert!(err.contains("MANIFEST.json") && err.contains("No space left") && err.contains("1002 bytes needed"), "{err}");
        assert!(err.contains("previous checkpoint") && err.contains("ckpt-000010, is intact"), "{err}");
        assert_eq!(list(&d).iter().map(|x| x.0).collect::<Vec<_>>(), vec![10]);
        assert!(
            std::fs::read_dir(&d).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().starts_with(".tmp")),
            "temporary directory left behind"
        );
        std::fs::remove_dir_all(&d).ok();
    }

    fn tmp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gptrain-ckpt-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// A checkpoint directory's one file, `a.bin`: which save wrote it.
    fn content(dir: &Path) -> Vec<u8> {
        std::fs::read(dir.join("a.bin")).unwrap()
    }

    fn files_with(byte: u8) -> Vec<(&'static str, Vec<u8>)> {
        vec![("a.bin", vec![byte; 10])]
    }

    fn leftovers(d: &Path) -> Vec<String> {
        let names = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned());
        names.filter(|n| n.starts_with(".tmp")).collect()
    }

    #[test]
    fn a_save_replaces_an_existing_checkpoint_of_that_iteration() {
        // e.g. a fallback resume past a corrupt ckpt-N: the save must write, not claim it
        let d = tmp_dir("replace");
        save(&d, &files_with(1), 30, None).unwrap();
        let p = save(&d, &files_with(2), 30, None).unwrap();
        assert_eq!(p, d.join("ckpt-000030"));
        assert_eq!(content(&p), vec![2; 10], "the save reported a directory it did not write");
        assert!(leftovers(&d).is_empty(), "{:?}", leftovers(&d));
        std::fs::remove_dir_all(d).ok();
    }

    #[test]
    fn a_kill_at_any_point_of_a_replace_leaves_one_complete_checkpoint() {
        // the replace is three file-system steps (old aside, new in, old removed); stopping
        // after each is what a kill -9 there leaves on disk; the next run's clean-up must find
        // exactly one ckpt-N, the old (save not finished) or the new one
        for steps in 0..=3 {
            let d = tmp_dir(&format!("kill{steps}"));
            save(&d, &files_with(1), 30, None).unwrap();
            let tmp = d.join(".tmp-ckpt-000030-1");
            std::fs::create_dir_all(&tmp).unwrap();
            std::fs::write(tmp.join("a.bin"), vec![2u8; 10]).unwrap();
            install(&d, &tmp, &d.join("ckpt-000030"), steps).unwrap();
            clean_leftovers(&d);
            assert_eq!(list(&d).iter().map(|x| x.0).collect::<Vec<_>>(), vec![30], "killed after {steps} steps");
            let want = if steps >= 2 { 2 } else { 1 };
            assert_eq!(content(&d.join("ckpt-000030")), vec![want; 10], "killed after {steps} steps");
            assert!(leftovers(&d).is_empty(), "killed after {steps} steps: {:?}", leftovers(&d));
            std::fs::remove_dir_all(d).ok();
        }
    }

    #[test]
    fn pruning_keeps_the_checkpoint_just_written_and_zero_keeps_all() {
        // an older run's (or skipped corrupt) checkpoints at later iterations sort first
        let d = tmp_dir("prune");
        for it in [100, 200, 300, 10] {
            save(&d, &files_with(it as u8), it, None).unwrap();
        }
        prune(&d, 0, 10);
        assert_eq!(list(&d).len(), 4, "keep_checkpoints = 0 keeps every checkpoint");
        prune(&d, 2, 10);
        let left: Vec<u64> = list(&d).iter().map(|x| x.0).collect();
        assert_eq!(left, vec![300, 200, 10], "the newest two and the one just written");
        std::fs::remove_dir_all(d).ok();
    }

    #[test]
    fn cropping_the_context_keeps_what_reading_the_file_at_that_context_gives() {
        // nanoGPT's crop_block_size on our layout equals from_hf at the shorter context
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf_tiny");
        let w = load_weights(dir.to_str().unwrap(), 12).unwrap();
        assert!(w.state.is_none() && w.model.block_size == 16);
        let (cropped, params) = crop_block(&w.model, &w.params, 5);
        assert_eq!(cropped.block_size, 5);
        let tf = tensorfile::read(&w.file).unwrap();
        assert_eq!(params, from_hf(&tf, &cropped, &ParamLayout::new(&cropped)).unwrap());
        assert_eq!(crop_block(&w.model, &w.params, 100), (w.model.clone(), w.params.clone()), "a longer context crops nothing");
    }

    #[test]
    fn leftovers_are_ignored_and_cleaned() {
        let d = std::env::temp_dir().join(format!("gptrain-ckpt-left-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        save(&d, &files(), 10, None).unwrap();
        std::fs::create_dir_all(d.join(".tmp-ckpt-000020-999")).unwrap();
        std::fs::create_dir_all(d.join(".tmp-del-ckpt-000005-999")).unwrap();
        assert_eq!(list(&d).len(), 1);
        assert_eq!(clean_leftovers(&d), 2);
        std::fs::remove_dir_all(&d).ok();
    }
}
