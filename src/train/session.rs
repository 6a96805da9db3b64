//! One training run as named phases over its state: [`Session::open`] (start weights, model,
//! banner, recorders), [`Session::evaluate`], [`Session::step`], [`Session::log`],
//! [`Session::save`] and [`Session::finish`]. `super::run_with` is the loop over them.

use super::init::{initialise, Init};
use super::record::{Metrics, Recorders};
use super::save::{retry_last_save, RETRY_EVERY};
use super::{
    check_gpu_memory, check_memory, estimate_loss, memory_line, optim_config, train_batches_in, IterLog, Observer, StartInfo, Summary, STOP,
};
use crate::backend::{Backend, Plan, Work};
use crate::checkpoint::{self, TrainState};
use crate::config::Config;
use crate::data::Dataset;
use crate::dist::{group::Group, zero};
use crate::model::{Gpt, ModelConfig};
use crate::optim::{train_step_guarded, OptimConfig, OutlierDetector, Shard, StepStats};
use crate::perf::{device, flops, meter::Meter};
use crate::tensorboard::{self, TensorBoard};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One optimiser step's outcome, as the log reports it.
pub(super) struct Step {
    stats: StepStats,
    /// The step's own time.
    secs: f64,
    /// The outlier guard skipped the update.
    outlier: bool,
}

impl Step {
    /// Whether the step updated the weights (AdamW ran).
    pub(super) fn updated(&self) -> bool {
        self.stats.updated
    }
}

/// A run in progress: the model, where it stands, and what it reports to.
pub(super) struct Session<'a, B: Backend> {
    cfg: &'a Config,
    ds: Dataset,
    model: Gpt<B>,
    mc: ModelConfig,
    obs: Recorders<'a>,
    meter: Meter,
    opt: OptimConfig,
    /// (probability, seed) when dropout is on.
    dropout: Option<(f32, u64)>,
    out_dir: PathBuf,
    /// Optimiser steps done.
    pub(super) it: u64,
    first_iter: u64,
    /// Whether the checkpoint this run resumed from was evaluated at `first_iter`.
    first_evaluated: bool,
    best_val: Option<f32>,
    skipped: u64,
    outliers: [OutlierDetector; 2],
    last_eval: Option<(f32, f32)>,
    last_saved: Option<u64>,
    last_checkpoint: Option<PathBuf>,
    /// `perf::flops`'s figure for the backend's own allocations, and whether the measured peak
    /// has been reported beside it.
    memory_model: u64,
    memory_reported: bool,
    warm_up_reported: bool,
    t_run: Instant,
    /// The other ranks of a data-parallel run (None: this process trains alone).
    group: Option<Group>,
}

impl<'a, B: Backend> Session<'a, B> {
    /// Opens the data, finds the start weights, builds the model on `backend` and announces the
    /// run; None when a resumed run is already at `max_iters` (said through `user`).
    pub(super) fn open(backend: B, cfg: &'a Config, user: &'a mut dyn Observer, mut group: Option<Group>) -> Result<Option<Self>> {
        let t_run = Instant::now();
        let ds = Dataset::open(&cfg.dataset)?;
        // the backend gets ready (a GPU's kernels compile) while the weights are made or read
        let work = if cfg.eval_only { Work::Evaluate } else { Work::Train };
        let local_ranks = Group::world_of(group.as_ref()).local_size.max(1);
        let plan = |mc: &ModelConfig, p| Plan { local_ranks, ..mc.plan(cfg.batch_size, p, work) };
        if let (Ok(mc), Ok(p)) = (super::model_config(cfg, ds.meta.vocab_size), super::precision_on(cfg, &backend)) {
            backend.prepare(&plan(&mc, p));
        }
        let init = initialise_ranks(cfg, &ds, user, group.as_mut())?;
        if init.resumed && init.start_iter >= cfg.max_iters && !cfg.eval_only {
            user.message(&format!(
                "nothing to do: the checkpoint is at iteration {} and max_iters is {}; raise max_iters (`--set max_iters=N`, an absolute count) to train further",
                init.start_iter, cfg.max_iters
            ));
            return Ok(None);
        }
        let mc = init.model_cfg.clone();
        ds.check_block_size(mc.block_size)?;
        let (b, t, accum) = (cfg.batch_size, mc.block_size, cfg.gradient_accumulation_steps);
        let out_dir = PathBuf::from(&cfg.out_dir);

        // telemetry: one FLOPs model, the real peak of the device the backend runs on, at the
        // run's precision
        let precision = super::precision_on(cfg, &backend)?;
        backend.prepare(&plan(&mc, precision)); // the checkpoint's shape, if it differs
        let dev = backend.device(precision);
        let (peak, peak_source) = super::peak_of(cfg, &dev);
        // MFU per device: a data-parallel run's FLOPs are shared by its ranks' devices
        let ranks = Group::world_of(group.as_ref()).size as f64;
        let flops_per_iter = flops::flops_per_iter(&mc, b, t, accum);
        let tokens_per_iter = b * t * accum;
        let d = precision.bytes() as u64;
        let recompute = cfg.recompute_level();
        // ZeRO-1: this rank's optimiser keeps its share of the parameters' pieces only
        let world = Group::world_of(group.as_ref()).clone();
        let parts = (cfg.zero_stage == 1 && world.size > 1).then(|| zero::parts(&crate::model::ParamLayout::new(&mc).pieces(), world.size));
        let full = flops::memory(&mc, b, t, d, recompute, dev.memory_model);
        let mem = match &parts {
            Some(p) => full.clone().sharded(p[world.rank].len as u64),
            None => full.clone(),
        };
        // a checkpoint's host copies, beside training's buffers (a device's run holds those on
        // the device, so its host figure is not this run's memory)
        let checkpoint = if dev.memory_model == flops::Impl::Gpu { 0 } else { flops::checkpoint_bytes(&mc) };
        // what the backend holds already (its workspace and scratch) is free for this run
        let held = backend.memory_use().map_or(0, |m| m.current);
        let device_memory = dev.memory.map(|m| device::MemInfo { available: m.available + held, ..m });
        match backend.memory_use() {
            // a device: what is still to allocate against what it has free
            Some(_) if dev.memory_model == flops::Impl::Gpu => check_gpu_memory(
                super::Caller::Train,
                &mc,
                b,
                accum,
                d,
                recompute,
                dev.memory,
                held,
                full.allocated() - mem.allocated(),
                // (NCCL_RUNTIME_CONNECT=0: NCCL allocated them at its start, before the card was read)
                if backend.joined_ranks() && std::env::var("NCCL_RUNTIME_CONNECT").map_or(true, |v| v.trim() != "0") {
                    flops::NCCL_BUFFER_BYTES
                } else {
                    0
                },
                &dev.description,
            )?,
            _ => {
                // training's buffers stay while a checkpoint is written: the peak is both
                if let Some(warning) = check_memory(mem.total() + checkpoint, dev.memory)? {
                    user.message(&warning);
                }
            }
        }

        if let Some(p) = &parts {
            let (own, largest, n) =
                (p[world.rank].len, p.iter().map(|s| s.len).max().unwrap_or(0), p.iter().map(|s| s.len).sum::<usize>().max(1));
            user.message(&format!(
                "ZeRO-1: the optimiser state split over the {} ranks; rank {} keeps {} of the {} parameters' ({:.0}%; the largest share {:.0}%)",
                world.size,
                world.rank,
                own,
                n,
                100.0 * own as f64 / n as f64,
                100.0 * largest as f64 / n as f64
            ));
        } else if cfg.zero_stage == 1 {
            user.message("note: zero_stage = 1 splits the optimiser state over a data-parallel run's ranks; one process keeps it whole");
        }
        let mut model = Gpt::zeros_sharded(backend, mc.clone(), precision, parts.map(|p| (p, world.rank)))?;
        model.set_recompute(recompute);
        model.set_params(&init.params)?;
        if let (Some(m), Some(v)) = (&init.m, &init.v) {
            model.set_optimizer_state(m, v)?;
        }
        // a float16 run resumes its loss scale; from another precision it starts afresh
        if model.scaler.dynamic {
            model.scaler.scale = cfg.init_loss_scale as f32;
        }
        if let Some(s) = init.loss_scaler.clone().filter(|s| s.dynamic == model.scaler.dynamic) {
            model.scaler = s;
        }
        if let Some(g) = group.as_mut() {
            same_weights(&model, g, init.start_iter, "did every rank read the same out_dir, with no rank writing it?")?;
        }
        std::fs::create_dir_all(&out_dir).with_context(|| format!("cannot create out_dir {}", out_dir.display()))?;
        let Init { start_iter, evaluated, best_val, skipped, outliers, .. } = init;
        let evaluates_first = evaluates_at(cfg, evaluated, start_iter, start_iter);
        let mut tensorboard = TensorBoard::off();
        // rank 0 of a data-parallel run keeps the run's record, as it keeps its checkpoints
        let root = Group::world_of(group.as_ref()).is_root();
        if cfg.tensorboard && root {
            let warning;
            (tensorboard, warning) = TensorBoard::open(&out_dir, start_iter, evaluates_first, &tensorboard::markdown_table(&cfg.entries()));
            if let Some(w) = warning {
                user.message(&w);
            }
        }
        let metrics = if root { Metrics::open(&out_dir) } else { Metrics::off() };
        let mut obs = Recorders { user, metrics, tensorboard };
        let p = flops::params(&mc);
        obs.start(&StartInfo {
            model: mc.clone(),
            params: p.total,
            params_nanogpt: p.nanogpt,
            tokens_per_iter,
            flops_per_iter,
            device: dev.description.clone(),
            on_gpu: dev.memory_model == flops::Impl::Gpu,
            precision,
            precision_note: dev.precision_note.clone(),
            peak_flops: peak,
            peak_source,
            threads: dev.workers,
            dataset: ds.source.clone(),
            start_iter,
            max_iters: cfg.max_iters,
            eval_only: cfg.eval_only,
            memory_bytes: mem.total(),
            memory_allocated_bytes: mem.allocated(),
            checkpoint_bytes: checkpoint,
            device_memory,
            config: cfg.clone(),
        });
        Ok(Some(Session {
            cfg,
            ds,
            model,
            mc,
            obs,
            meter: Meter::new(tokens_per_iter as f64, flops_per_iter, peak.map(|p| p * ranks)),
            opt: optim_config(cfg),
            dropout: (cfg.dropout > 0.0).then_some((cfg.dropout as f32, cfg.seed)),
            out_dir,
            it: start_iter,
            first_iter: start_iter,
            first_evaluated: evaluated,
            best_val,
            skipped,
            outliers,
            last_eval: None,
            last_saved: None,
            last_checkpoint: None,
            memory_model: mem.allocated(),
            memory_reported: false,
            warm_up_reported: false,
            t_run,
            group,
        }))
    }

    /// Whether the loop evaluates at the current iteration.
    pub(super) fn evaluates_now(&self) -> bool {
        evaluates_at(self.cfg, self.first_evaluated, self.first_iter, self.it)
    }

    /// Evaluates both splits and reports it; checkpoints when val improved (every eval with
    /// `always_save_checkpoint`), except at iteration 0 and at `max_iters` (the final save does
    /// that). A failed mid-run save is reported and training goes on. Returns the val loss.
    pub(super) fn evaluate(&mut self) -> Result<f32> {
        let (cfg, it) = (self.cfg, self.it);
        let (t0, ready0) = (Instant::now(), self.model.backend.warm_up_waited_s());
        let (tl, vl) = estimate_loss(&mut self.model, &self.ds, cfg, it, self.group.as_mut())?;
        let secs = t0.elapsed().as_secs_f64();
        // the first evaluation launches the first kernels: its wait for them is warm-up, and
        // the eval's record (metrics.jsonl) gives its own time, as the summary does
        let ready = (self.model.backend.warm_up_waited_s() - ready0).clamp(0.0, secs);
        self.meter.record_eval(secs, ready);
        self.obs.eval(it, tl, vl, secs - ready);
        self.last_eval = Some((tl, vl));
        if let Some(g) = self.group.as_mut() {
            same_weights(&self.model, g, it, "their sums disagreed, which is a bug in gptrain: please report it with this run's log")?;
        }
        let improved = self.best_val.is_none_or(|b| vl < b);
        if improved {
            self.best_val = Some(vl);
        }
        if !cfg.eval_only && (improved || cfg.always_save_checkpoint) && it > 0 && it < cfg.max_iters {
            // every rank has its part to give under ZeRO-1; rank 0 writes
            let t0 = Instant::now();
            let Some(host) = self.host_state()? else { return Ok(vl) };
            // the previous checkpoint is intact when this one cannot be written
            match self.save(Some(vl), &host, t0) {
                Ok(p) => (self.last_saved, self.last_checkpoint) = (Some(it), Some(p)),
                Err(e) => self.obs.message(&format!("warning: {e:#}; training continues and will try again at the next checkpoint")),
            }
        }
        Ok(vl)
    }

    /// One optimiser step over `gradient_accumulation_steps` micro-batches, with the non-finite
    /// and outlier guards.
    pub(super) fn step(&mut self) -> Result<Step> {
        let (cfg, it) = (self.cfg, self.it);
        let (b, t, accum) = (cfg.batch_size, self.mc.block_size, cfg.gradient_accumulation_steps);
        // a data-parallel rank takes its share of the iteration's micro-batches
        let (first, end) = Group::world_of(self.group.as_ref()).share(accum);
        let batches = train_batches_in(&self.ds, cfg.seed, it, first..end, b, t);
        let shard = self.group.as_mut().map(|group| Shard { group, first, accum });
        let t0 = Instant::now();
        // the outlier guard (llm.c's): z-scores against the last 128 iterations; both windows
        // see every finite value, skipped or not
        let mut outlier = false;
        let outliers = &mut self.outliers;
        let mut accept = |loss: f32, norm: f32| {
            let lz = outliers[0].update(loss as f64);
            let gz = outliers[1].update(norm as f64);
            let over = |z: Option<f64>, thr: f64| thr > 0.0 && z.is_some_and(|z| z > thr);
            outlier = over(lz, cfg.skip_update_lossz) || over(gz, cfg.skip_update_gradz);
            !outlier
        };
        let s = train_step_guarded(&mut self.model, &batches, b, t, it, &self.opt, self.dropout, shard, &mut accept)?;
        let secs = t0.elapsed().as_secs_f64();
        // a float16 overflow is the loss scaler's (counted there), not a non-finite loss
        let finite = s.loss.is_finite() && s.grad_norm.is_finite();
        if !s.overflow && !finite {
            if cfg.on_nonfinite == "abort" {
                bail!(
                    "non-finite {} at iteration {it} (loss {}, gradient norm {}, learning rate {:.3e}); no update was made and no checkpoint written. Likely cause: the learning rate is too high or the gradients exploded; try a lower learning_rate, grad_clip = 1.0, or `--set on_nonfinite=skip`",
                    if s.loss.is_finite() { "gradient norm" } else { "loss" },
                    s.loss,
                    s.grad_norm,
                    s.lr
                );
            }
            self.skipped += 1;
        }
        if outlier {
            self.skipped += 1;
        }
        self.meter.record_iter(secs);
        self.it += 1;
        Ok(Step { stats: s, secs, outlier })
    }

    /// Reports the step just taken, every `log_interval` iterations, at `max_iters`, and always
    /// when the run is stopping (so an interrupt names an iteration the log shows).
    pub(super) fn log(&mut self, step: &Step, stopping: bool) {
        let (cfg, it) = (self.cfg, self.it);
        if !((it - 1).is_multiple_of(cfg.log_interval) || it == cfg.max_iters || stopping) {
            return;
        }
        let iters_left = cfg.max_iters - it;
        let evals_left = (it..=cfg.max_iters).filter(|i| i.is_multiple_of(cfg.eval_interval)).count() as u64;
        let ckpts_left = if cfg.always_save_checkpoint { evals_left } else { 1 };
        let accum = cfg.gradient_accumulation_steps as f64;
        let reading = self.meter.reading(iters_left, evals_left, ckpts_left, 2.0 * cfg.eval_iters as f64, accum);
        let s = &step.stats;
        let log = IterLog {
            iter: it - 1,
            max_iters: cfg.max_iters,
            loss: s.loss,
            lr: s.lr,
            grad_norm: s.grad_norm,
            ms: step.secs * 1e3,
            skipped: !s.updated,
            outlier: step.outlier,
            overflow: s.overflow,
            loss_scale: self.model.scaler.dynamic.then_some(self.model.scaler.scale),
            reading,
        };
        self.obs.iter(&log);
    }

    /// Once, what getting ready cost, where the backend has something to say (a GPU's
    /// kernels): when `complete`, after the first iteration that updated the weights (it has
    /// launched every kernel a run uses; an fp16 overflow or a skipped non-finite step has not
    /// run AdamW), or when the run ends without one (an `eval_only` run, say).
    pub(super) fn report_warm_up(&mut self, complete: bool) {
        if complete && !self.warm_up_reported {
            self.warm_up_reported = true;
            if let Some(note) = self.model.backend.warm_up_note() {
                self.obs.message(&note);
            }
        }
    }

    /// Once, after the first steady iteration: the measured peak of the backend's allocations
    /// beside `perf::flops`'s figure (a device backend only: the CPU keeps no such count).
    pub(super) fn report_memory(&mut self) {
        if self.memory_reported || !self.meter.is_warm() {
            return;
        }
        self.memory_reported = true;
        if let Some(used) = self.model.backend.memory_use() {
            self.obs.message(&memory_line(used, self.memory_model));
        }
    }

    /// The checkpoint of the current iteration (`val`: the val loss of an eval just made there),
    /// from `host` ([`Session::host_state`]).
    fn save(&mut self, val: Option<f32>, host: &HostState, t0: Instant) -> Result<PathBuf> {
        let st = self.state(val);
        save_with(&self.model.layout, host, t0, &st, self.cfg, &self.out_dir, &mut self.meter, &mut self.obs)
    }

    /// The weights and AdamW moments on the host, for a checkpoint: on rank 0 (None on the
    /// others). Under ZeRO-1 every rank must call it: each sends rank 0 its part.
    fn host_state(&mut self) -> Result<Option<HostState>> {
        let root = self.is_root();
        let Some(g) = self.group.as_mut().filter(|_| !self.model.parts().is_empty()) else {
            return Ok(match root {
                true => Some((self.model.params_host()?, self.model.optimizer_state()?)),
                false => None,
            });
        };
        // the parts are back to back in rank order: put together, they are the whole
        let weights = g.gather_f32(&self.model.owned_weights()?, false)?;
        let moments = match self.model.optimizer_state()? {
            Some((m, v)) => Some((g.gather_f32(&m, false)?, g.gather_f32(&v, false)?)),
            None => None,
        };
        Ok(weights.map(|w| (w, moments.map(|(m, v)| (m.unwrap_or_default(), v.unwrap_or_default())))))
    }

    /// The run's last checkpoint (at `max_iters`, or on Ctrl-C): tried again every
    /// `RETRY_EVERY` for `checkpoint_retry_s` rather than lost (a failed write is reported
    /// with what to do about it).
    pub(super) fn save_last(&mut self, val: Option<f32>) -> Result<PathBuf> {
        let t0 = Instant::now();
        let Some(host) = self.host_state()? else {
            return Ok(self.out_dir.clone()); // rank 0 writes the checkpoints
        };
        let st = self.state(val);
        let unsaved = format!(
            "the training since the last checkpoint exists only in memory: free space in {} (or fix its permissions)",
            self.out_dir.display()
        );
        let limit = Duration::from_secs(self.cfg.checkpoint_retry_s);
        let (layout, cfg, out_dir, meter) = (&self.model.layout, self.cfg, &self.out_dir, &mut self.meter);
        let path = retry_last_save(&mut self.obs, limit, RETRY_EVERY, &STOP, &unsaved, |obs| {
            save_with(layout, &host, t0, &st, cfg, out_dir, meter, obs)
        })?;
        (self.last_saved, self.last_checkpoint) = (Some(self.it), Some(path.clone()));
        Ok(path)
    }

    /// At `max_iters`: the final checkpoint, unless this iteration is saved already or the run
    /// trained nothing. `evaluated` is the val loss of an eval made at this iteration.
    pub(super) fn save_final(&mut self, evaluated: Option<f32>) -> Result<()> {
        if self.last_saved != Some(self.it) && self.it > self.first_iter {
            self.save_last(evaluated)?;
        }
        Ok(())
    }

    /// Whether this process writes the checkpoints: the only one, or rank 0 of a data-parallel run.
    pub(super) fn is_root(&self) -> bool {
        Group::world_of(self.group.as_ref()).is_root()
    }

    /// Whether every rank stops now: any rank that was told to (Ctrl-C, SIGTERM) stops them all
    /// at the same iteration.
    pub(super) fn agree_to_stop(&mut self, stop: bool) -> Result<bool> {
        let Some(g) = self.group.as_mut() else { return Ok(stop) };
        let mut x = [f64::from(u8::from(stop))];
        g.sum_f64(&mut x)?;
        Ok(x[0] > 0.0)
    }

    /// Waits until every rank is here (after rank 0's last checkpoint: the launcher may stop
    /// the others as soon as one exits), as long as rank 0 may retry that checkpoint
    /// (`checkpoint_retry_s`) more than the ranks' usual wait.
    pub(super) fn barrier(&mut self) -> Result<()> {
        let retries = Duration::from_secs(self.cfg.checkpoint_retry_s);
        self.group.as_mut().map_or(Ok(()), |g| g.barrier_allowing(retries))
    }

    /// The closing summary, reported and returned.
    pub(super) fn finish(mut self) -> Summary {
        let m = &self.meter;
        let run = m.run_steady_s();
        let (tokens_per_sec, mfu) = run.map_or((None, None), |(s, _)| {
            let (tps, mfu) = m.rates(s);
            (Some(tps), mfu)
        });
        let used = self.model.backend.memory_use();
        let summary = Summary {
            iters: self.it - self.first_iter,
            warmup_iters: m.warmup_iters(),
            warmup_s: m.phase_s[0],
            train_s: m.phase_s[1],
            eval_s: m.phase_s[2],
            checkpoint_s: m.phase_s[3],
            total_s: self.t_run.elapsed().as_secs_f64(),
            steady_ms: run.map(|(s, _)| s * 1e3),
            steady_iters: run.map_or(0, |(_, n)| n),
            tokens_per_sec,
            mfu,
            final_train_loss: self.last_eval.map(|e| e.0),
            final_val_loss: self.last_eval.map(|e| e.1),
            skipped_updates: self.skipped,
            overflow_skips: self.model.scaler.skipped,
            loss_scale: self.model.scaler.dynamic.then_some(self.model.scaler.scale),
            out_dir: self.out_dir.display().to_string(),
            last_checkpoint: self.last_checkpoint.clone(),
            peak_memory_bytes: used.map(|m| m.peak),
            memory_model_bytes: used.map(|_| self.memory_model),
        };
        self.obs.finish(&summary);
        summary
    }

    /// What a checkpoint of the current iteration records besides the weights.
    fn state(&self, val: Option<f32>) -> TrainState {
        TrainState {
            format: checkpoint::FORMAT_VERSION,
            iter: self.it,
            val_loss: val,
            best_val_loss: self.best_val,
            seed: self.cfg.seed,
            model: self.mc.clone(),
            config: self.cfg.clone(),
            meta: self.ds.meta.clone(),
            skipped_updates: self.skipped,
            outliers: self.outliers.clone(),
            loss_scaler: self.model.scaler.dynamic.then(|| self.model.scaler.clone()),
        }
    }
}

/// Checks that every rank of `group` holds the weights rank 0 holds (a CRC-32 of the f32
/// weights, compared through the group) at iteration `it`: the ranks never send weights, so
/// they stay equal only while every rank starts from the same ones and takes the same
/// updates. An error naming the first rank that differs, with `hint`.
fn same_weights<B: Backend>(model: &Gpt<B>, g: &mut Group, it: u64, hint: &str) -> Result<()> {
    let mut h = crc32fast::Hasher::new();
    // under ZeRO-1 no rank holds all the f32 weights: the kernels' copy, which every rank has
    let weights = if model.parts().is_empty() { model.params_host()? } else { model.kernel_params_host()? };
    for chunk in weights.chunks(1 << 14) {
        h.update(&chunk.iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>());
    }
    let all = g.gather_f64(&[f64::from(h.finalize())])?;
    if let Some(r) = all.iter().position(|&c| c != all[0]) {
        bail!("rank {r}'s weights differ from rank 0's at iteration {it}: {hint}");
    }
    Ok(())
}

/// [`initialise`] on every rank of `group` (or alone): rank 0 first, as it alone tidies
/// `out_dir` (an interrupted write's leftovers, `replace_checkpoints`), then the others; and a
/// check that every rank starts from the same iteration.
fn initialise_ranks(cfg: &Config, ds: &Dataset, user: &mut dyn Observer, group: Option<&mut Group>) -> Result<Init> {
    let Some(g) = group else { return initialise(cfg, ds, user, true) };
    let root = g.world().is_root();
    if !root {
        g.barrier()?;
    }
    let init = initialise(cfg, ds, user, root)?;
    if root {
        g.barrier()?;
    }
    // rank 0's start iteration, to every rank
    let mut start = [init.start_iter as f64];
    g.broadcast_f64(&mut start)?;
    if start[0] != init.start_iter as f64 {
        bail!(
            "this rank would start from iteration {} and rank 0 from {}: every rank must read the same out_dir",
            init.start_iter,
            start[0]
        );
    }
    Ok(init)
}

/// Whether a run evaluates at iteration `it`: every `eval_interval`, except at a resumed run's
/// first iteration when its checkpoint was evaluated there before it was written (`first_evaluated`:
/// a Ctrl-C checkpoint at an evaluation's iteration was not, and is evaluated on resume);
/// always with `eval_only`.
fn evaluates_at(cfg: &Config, first_evaluated: bool, first_iter: u64, it: u64) -> bool {
    it.is_multiple_of(cfg.eval_interval) && !(first_evaluated && it == first_iter) || cfg.eval_only
}

/// The f32 weights, and the AdamW moments (m, v) once an update has made them.
type HostState = (Vec<f32>, Option<(Vec<f32>, Vec<f32>)>);

/// Writes the checkpoint `st` of `host` (weights and moments laid out as `layout`, copied to the
/// host from `t0` on) into `out_dir`, prunes, and reports it.
#[allow(clippy::too_many_arguments)]
fn save_with(
    layout: &crate::model::ParamLayout,
    host: &HostState,
    t0: Instant,
    st: &TrainState,
    cfg: &Config,
    out_dir: &Path,
    meter: &mut Meter,
    obs: &mut dyn Observer,
) -> Result<PathBuf> {
    let (params, mv) = host;
    let (m, v) = (mv.as_ref().map(|x| x.0.as_slice()), mv.as_ref().map(|x| x.1.as_slice()));
    let files = checkpoint::serialize(layout, st, params, m, v)?;
    let path = checkpoint::save(out_dir, &files, st.iter, None)?;
    checkpoint::prune(out_dir, cfg.keep_checkpoints, st.iter);
    let secs = t0.elapsed().as_secs_f64();
    meter.record_checkpoint(secs);
    obs.checkpoint(st.iter, &path, secs);
    Ok(path)
}
