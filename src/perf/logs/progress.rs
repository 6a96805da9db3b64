//! Progress bars and the Hugging Face Trainer.
//! * A tqdm bar, `  2%|▎   | 10/400 [01:50<15:45,  2.43s/it]` (Hugging Face Trainer, no label)
//!   or `Epoch 3:  45%|████▌ | 450/1000 [02:13<02:43, 3.37it/s, loss=2.31, v_num=0]` (PyTorch
//!   Lightning). Its elapsed time is a cumulative clock read to the second: differenced between
//!   refreshes over at least ten seconds. The `s/it` rate is tqdm's smoothed rate, not used.
//!   Each bar (label and total) is its own stream; the one with the most steps is training
//!   (an eval bar is another). Lightning's step is `epoch x total + n`.
//!   Lightning's rich bar (`Epoch 3/9 ━━━━ 450/1000 0:02:13 • 0:02:43 3.37it/s`) likewise;
//!   torchtune's (`1|52|Loss: 2.37:   0%|▏   | 52/25880 [00:24<3:55:01,  1.83it/s]`: epoch,
//!   global step, loss) too, its clock restarting each epoch;
//!   NeMo's `train_step_timing in s=1.21` in the bar's postfix is one step's time.
//!   fairseq's (`epoch 001:  61%|▌| 18901/31098 [1:49:00<1:05:19,  3.11it/s, loss=4.404, ...,
//!   num_updates=18901, ...]`, printed when its output is a terminal) likewise, counting batches
//!   (updates times `--update-freq`) on from the epochs before: its postfix holds the stats of
//!   the last `--log-interval` (up to v0.9 the epoch's running averages) and is cut at the
//!   terminal's width, so it is not used.
//! * The Trainer's `{'loss': ..., 'grad_norm': ..., 'learning_rate': ..., 'epoch': ...}` dicts
//!   (untimed) and `{'eval_...': ...}` (evals).
//! * `trainer_state.json` as the file: no per-step times; the run's `train_runtime` less its
//!   `eval_runtime`s over `global_step` is the one figure.

use super::{Facts, Format, Hit, Meaning, Parsed, Record, Sample, Time};
use anyhow::{bail, Result};
use regex::Regex;
use std::sync::LazyLock;

static BAR: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(.*?)\s*(?:\d{1,3}%\|[^|]*\|\s*(\d+)/(\d+)|:?\s*(\d+)it)\s*\[(?:(\d+):)?(\d+):(\d+)\s*[<,\]]").unwrap());
/// Lightning's rich bar: `Epoch 3/9  ━━━━━━━━━━━━━━━ 450/1000 0:02:13 • 0:02:43 3.37it/s v_num: 0`.
static RICH: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^Epoch\s+(\d+)/\d+\s+\S*\s+(\d+)/(\d+)\s+(\d+):(\d+):(\d+)\s*•").unwrap());
/// NeMo's per-step time in Lightning's bar: `train_step_timing in s=1.21`.
static NEMO_STEP: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"train_step_timing in s=([\d.]+)").unwrap());
static EPOCH: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^Epoch\s+(\d+)").unwrap());
/// torchtune's bar label: `EPOCH|GLOBAL_STEP|Loss: X` (the epoch from 1).
static TORCHTUNE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^(\d+)\|\d+\|Loss: \S+$").unwrap());
/// fairseq's bar label: `epoch 001` (from 1; its valid bar's is `epoch 001 | valid on 'valid' subset`).
static FAIRSEQ: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^epoch (\d{3,})$").unwrap());

pub(super) fn bar(line: &str) -> Option<(Format, Hit)> {
    if let Some(c) = RICH.captures(line) {
        let n = |i: usize| c[i].parse::<u64>().ok();
        let (epoch, step, total) = (n(1)?, n(2)?, n(3)?);
        let ms = ((n(4)? * 60 + n(5)?) * 60 + n(6)?) as f64 * 1e3;
        let mut r = Record::new(epoch.checked_mul(total)?.checked_add(step)?, Time::Cumulative { ms, resolution_ms: 1000.0 });
        r.stream = total;
        return Some((Format::Lightning, Hit::Iter(r)));
    }
    let c = BAR.captures(line)?;
    let label = c[1].trim().trim_end_matches(':').trim();
    let n: u64 = c.get(2).or(c.get(4))?.as_str().parse().ok()?;
    let total: u64 = c.get(3).map_or(Some(0), |m| m.as_str().parse().ok())?;
    let t = |i: usize| c.get(i).map_or(0.0, |m| m.as_str().parse::<f64>().unwrap_or(0.0));
    let ms = (t(5) * 3600.0 + t(6) * 60.0 + t(7)) * 1e3;
    let (format, iter, key) = if label.is_empty() {
        (Format::HfTrainer, n, "")
    } else if let Some(e) = EPOCH.captures(label) {
        (Format::Lightning, e[1].parse::<u64>().ok()?.checked_mul(total)?.checked_add(n)?, "Epoch")
    } else if let Some((e, format)) =
        TORCHTUNE.captures(label).map(|e| (e, Format::Torchtune)).or_else(|| FAIRSEQ.captures(label).map(|e| (e, Format::Fairseq)))
    {
        // torchtune's steps or fairseq's batches in the epoch (the epoch from 1), on from the
        // epochs before: the clock restarts each epoch (torchtune's label's global step lags
        // the count by one on a file's second copy of each refresh; one stream with its `Step`
        // lines)
        let before = e[1].parse::<u64>().ok()?.checked_sub(1)?.checked_mul(total)?;
        let r = Record::new(before.checked_add(n)?, Time::Cumulative { ms, resolution_ms: 1000.0 });
        return Some((format, Hit::Iter(r)));
    } else if ["Training", "Train", "train", "Steps", "Iteration", "Iter", "Step"].contains(&label) {
        // Hugging Face's older example scripts (`Iteration:`), Accelerate and diffusers (`Steps:`)
        (Format::HfTrainer, n, label)
    } else {
        return None; // another bar: loading shards, tokenising, ...
    };
    let time = match NEMO_STEP.captures(line).and_then(|c| super::num(&c[1])) {
        Some(secs) => Time::PerIter(secs * 1e3),
        None => Time::Cumulative { ms, resolution_ms: 1000.0 },
    };
    let mut r = Record::new(iter, time);
    r.total = (total > 0 && format == Format::HfTrainer).then_some(total);
    r.stream = key.bytes().fold(total.wrapping_mul(1_000_003), |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    Some((format, Hit::Iter(r)))
}

pub(super) fn hf_dict(line: &str) -> Option<(Format, Hit)> {
    let i = line.find("{'")?;
    let rest = &line[i + 2..];
    if rest.starts_with("eval_") {
        Some((Format::HfTrainer, Hit::Eval))
    } else if ["loss'", "train_runtime'", "train_loss'", "grad_norm'", "learning_rate'"].iter().any(|k| rest.starts_with(k)) {
        Some((Format::HfTrainer, Hit::Info))
    } else {
        None
    }
}

/// A `trainer_state.json`, or None when the text is not one.
pub(super) fn trainer_state(text: &str) -> Option<Result<Parsed>> {
    if !text.trim_start().starts_with('{') || !text.contains("\"log_history\"") {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let history = v["log_history"].as_array()?;
    let step = v["global_step"].as_u64()?;
    Some(run_average(&v, history, step))
}

fn run_average(v: &serde_json::Value, history: &[serde_json::Value], step: u64) -> Result<Parsed> {
    let Some(runtime) = history.iter().rev().find_map(|e| e["train_runtime"].as_f64()) else {
        bail!("trainer_state.json has {} log_history entries to step {step} but no `train_runtime` (the run has not finished, or this is a checkpoint's copy): no time to measure", history.len());
    };
    if step == 0 {
        bail!("trainer_state.json: global_step is 0");
    }
    let evals: Vec<f64> = history.iter().filter_map(|e| e["eval_runtime"].as_f64()).collect();
    let ms = (runtime - evals.iter().sum::<f64>()).max(0.0) * 1e3 / step as f64;
    let mut facts = Facts { total_iters: v["max_steps"].as_u64(), ..Facts::default() };
    if let Some(b) = v["train_batch_size"].as_u64() {
        facts.sources.push(format!("per-device batch size: `train_batch_size: {b}` (trainer_state.json)"));
    }
    if let Some(t) = v["num_input_tokens_seen"].as_u64().filter(|t| *t > 0) {
        facts.stated_tokens_per_iter = Some(t / step);
        facts.sources.push(format!("tokens per iteration: `num_input_tokens_seen: {t}` / {step} steps"));
    }
    let loss_lines = history.iter().filter(|e| e["loss"].is_number()).count();
    Ok(Parsed {
        format: Format::HfTrainerState,
        meaning: Meaning::RunAverage,
        samples: vec![Sample {
            iter: step,
            ms,
            span: step,
            log_mfu: None,
            log_tflops: None,
            log_tok_s: None,
            log_tok_s_per_gpu: None,
            session: 0,
        }],
        iter_lines: loss_lines,
        other_iter_lines: 0,
        evals: evals.len(),
        skipped_lines: 0,
        minus_100: 0,
        first_iter: 0,
        from_start: true,
        last_iter: step,
        total_from_log: v["max_steps"].as_u64(),
        batch_from_lines: None,
        facts,
    })
}
