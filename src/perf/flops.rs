//! The FLOPs and memory model of the architecture: the single source of truth for `estimate`,
//! the live MFU in `train`, `logs` and `bench`.
//!
//! Conventions:
//! * A multiply-add is 2 FLOPs. Only matmuls count (LayerNorm, softmax, GELU, AdamW are
//!   bandwidth work, excluded as in the PaLM paper's MFU, appendix B,
//!   <https://arxiv.org/abs/2204.02311>), so recomputing GELU and LayerNorm in the backward
//!   (`recompute`) adds none.
//! * Training does 3x the forward matmul FLOPs (forward, then dinp and dweight in backward).
//! * Attention is counted dense over the full T x T (not only the causal half), as PaLM and
//!   nanoGPT do; the causal-exact count is given beside it.

use crate::model::{ActLayout, ModelConfig, ParamLayout, Recompute};

/// FLOPs per token of one forward pass, by part (whole model, all layers).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct FlopsPerToken {
    pub qkv: f64,
    pub attn_scores: f64,
    pub attn_values: f64,
    pub attn_proj: f64,
    pub mlp_fc: f64,
    pub mlp_proj: f64,
    pub lm_head: f64,
}

impl FlopsPerToken {
    pub fn forward(&self) -> f64 {
        self.qkv + self.attn_scores + self.attn_values + self.attn_proj + self.mlp_fc + self.mlp_proj + self.lm_head
    }
    /// Forward + backward matmuls.
    pub fn train(&self) -> f64 {
        3.0 * self.forward()
    }
}

/// Parameter counts.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Params {
    /// Every parameter, as stored (padded vocabulary rows included).
    pub total: usize,
    /// nanoGPT's count (`get_num_params`): position embeddings excluded.
    pub nanogpt: usize,
    /// Parameters that take part in matmuls (the "N" of 6N): linear weights and the tied lm_head.
    pub matmul: usize,
}

pub fn params(cfg: &ModelConfig) -> Params {
    let (l, c, vp, t) = (cfg.n_layer, cfg.n_embd, cfg.padded_vocab_size, cfg.block_size);
    let b = usize::from(cfg.bias);
    let per_layer = 12 * c * c + 2 * c + b * (2 * c + 3 * c + c + 4 * c + c); // weights, ln weights, biases
    let total = vp * c + t * c + l * per_layer + c + b * c;
    Params { total, nanogpt: total - t * c, matmul: l * 12 * c * c + vp * c }
}

/// Forward FLOPs per token at sequence length `t` (dense attention).
pub fn flops_per_token(cfg: &ModelConfig, t: usize) -> FlopsPerToken {
    let (l, c, vp) = (cfg.n_layer as f64, cfg.n_embd as f64, cfg.padded_vocab_size as f64);
    let t = t as f64;
    FlopsPerToken {
        qkv: l * 2.0 * c * 3.0 * c,
        attn_scores: l * 2.0 * t * c,
        attn_values: l * 2.0 * t * c,
        attn_proj: l * 2.0 * c * c,
        mlp_fc: l * 2.0 * c * 4.0 * c,
        mlp_proj: l * 2.0 * 4.0 * c * c,
        lm_head: 2.0 * c * vp,
    }
}

/// Training FLOPs per token with causal attention counted exactly (each query attends to
/// (T+1)/2 keys on average).
pub fn train_flops_per_token_causal(cfg: &ModelConfig, t: usize) -> f64 {
    let f = flops_per_token(cfg, t);
    let attn = f.attn_scores + f.attn_values;
    3.0 * (f.forward() - attn + attn * (t as f64 + 1.0) / (2.0 * t as f64))
}

/// nanoGPT's `estimate_mfu` numerator per token: 6N + 12 L H Q T (N = nanoGPT's parameter count),
/// from the PaLM paper, appendix B.
pub fn palm_flops_per_token(cfg: &ModelConfig, t: usize) -> f64 {
    let n = params(cfg).nanogpt as f64;
    6.0 * n + 12.0 * (cfg.n_layer * cfg.n_head * cfg.head_size() * t) as f64
}

/// Training FLOPs of one optimiser step.
pub fn flops_per_iter(cfg: &ModelConfig, batch: usize, t: usize, accum: usize) -> f64 {
    flops_per_token(cfg, t).train() * (batch * t * accum) as f64
}

// ---------------------------------------------------------------------------------------------
// Memory

/// Which implementation's memory to model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impl {
    /// gptrain's CPU backend: f32 everywhere, the exact buffers of `ActLayout` (two statistics
    /// per attention row instead of the T x T matrices, which the backward recomputes; full
    /// logits, overwritten by their gradient) and an activation-gradient buffer of one layer's
    /// worth (`ActLayout::one_layer`, reused by every layer). The attention kernels' per-thread
    /// scratch (three 64 x T blocks) is left out.
    Cpu,
    /// gptrain's CUDA backend, buffer by buffer (llm.c's design: flash attention, no T x T; a
    /// fused classifier that keeps logits in the compute dtype and overwrites them with their
    /// gradient; fp32 master weights, gradients and AdamW moments under mixed precision): the
    /// buffers of `ActLayout` as the CPU's, its scratch, and the CUDA context as `overhead`.
    /// The backend counts what it allocates (`Backend::memory_use`), which `allocated` models
    /// exactly (test: `tests/gpu_memory.rs` on the emulator).
    Gpu,
    /// PyTorch on a GPU as nanoGPT's train.py runs it (torch.compile, autocast, flash
    /// attention), to say whether *that* fits: llm.c's activations (see [`llmc`]), plus what
    /// PyTorch keeps and llm.c does not: fp32 parameters and gradients beside autocast's
    /// compute-dtype weight copies, and the cross-entropy's fp32 copy of the logits beside the
    /// compute-dtype ones. Within 5% of the peaks measured on an H200 (PERFORMANCE.md, "Estimates
    /// against a real GPU"); eager PyTorch kept 1.35-1.7x more there.
    Torch,
}

/// Bytes by part for one configuration.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Memory {
    pub weights: u64,
    pub master_weights: u64,
    pub gradients: u64,
    pub optimizer: u64,
    /// Saved activations of all layers for one micro-batch.
    pub activations: u64,
    /// Logits (and their gradient, in place) for one micro-batch.
    pub logits: u64,
    /// Gradient buffers of activations live during backward.
    pub backward_scratch: u64,
    /// Scratch the runtime allocates besides the model (the GPU's cuBLASLt workspace); 0 on CPU.
    pub workspace: u64,
    /// Runtime overhead outside the process's own allocations (the CUDA context and its
    /// kernels, allocator slack); 0 on CPU.
    pub overhead: u64,
}

impl Memory {
    pub fn total(&self) -> u64 {
        self.weights
            + self.master_weights
            + self.gradients
            + self.optimizer
            + self.activations
            + self.logits
            + self.backward_scratch
            + self.workspace
            + self.overhead
    }
    /// The bytes the process allocates itself: all but `overhead`. On the GPU, what the CUDA
    /// backend counts (`Backend::memory_use`), so the two can be compared.
    pub fn allocated(&self) -> u64 {
        self.total() - self.overhead
    }
    /// ZeRO-1 ([`crate::dist::zero`]): a rank that keeps the optimiser state (AdamW moments, f32
    /// master weights) of `own` of the parameters only (at least one element is allocated).
    pub fn sharded(self, own: u64) -> Memory {
        let own = own.max(1);
        Memory { master_weights: if self.master_weights > 0 { 4 * own } else { 0 }, optimizer: 8 * own, ..self }
    }
    /// (name, bytes) of each part, for tables.
    pub fn parts(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("weights", self.weights),
            ("master weights (fp32)", self.master_weights),
            ("gradients", self.gradients),
            ("AdamW moments (fp32)", self.optimizer),
            ("activations", self.activations),
            ("logits", self.logits),
            ("backward scratch", self.backward_scratch),
            ("workspace and scratch", self.workspace),
            ("runtime overhead", self.overhead),
        ]
    }
}

/// What a process holds on the card besides its own allocations (the CUDA context with its
/// loaded kernels, allocator slack), as seen with llm.c and PyTorch. Not measured with gptrain
/// yet: its counter sees only its own buffers.
pub const GPU_OVERHEAD_BYTES: u64 = 600 << 20;

/// Host memory a checkpoint takes while it is written, beside the run's own: the weights and
/// AdamW moments copied out (12 bytes a parameter), the model file (4) and the optimiser file
/// (8) serialised, and the Conv1D weights Hugging Face's layout transposes (`12 C^2` a layer,
/// 4 bytes each). Measured on the CPU with the rtx4070-40m shape: 0.96-0.98 GB over training's
/// peak, against 0.98 GB here.
pub fn checkpoint_bytes(cfg: &ModelConfig) -> u64 {
    let n = params(cfg).total as u64;
    let conv = 12 * (cfg.n_layer * cfg.n_embd * cfg.n_embd) as u64;
    24 * n + 4 * conv
}

/// What a data-parallel rank keeps free on its card for NCCL's buffers, which NCCL (2.22 on,
/// `NCCL_RUNTIME_CONNECT=1`) allocates at the first sum, after gptrain's memory check: its
/// ring and tree buffers per channel, and NVLS's (288 MiB a rank on 8 H100s, as vLLM's issue
/// 9699 logs). A reserve, not a measurement: to be measured on a multi-GPU machine. Not kept
/// when `NCCL_RUNTIME_CONNECT=0` (NCCL then allocates them at its start, before the check).
pub const NCCL_BUFFER_BYTES: u64 = 1 << 30;

/// Memory of training `cfg` with micro-batch `b` at length `t`, compute dtype bytes `d`
/// (4 for fp32/tf32, 2 for fp16/bf16), with the activations `recompute` names kept for one
/// layer only (gptrain's [`ActLayout`]; for [`Impl::Torch`], nanoGPT keeps everything and
/// `recompute` is ignored).
pub fn memory(cfg: &ModelConfig, b: usize, t: usize, d: u64, recompute: Recompute, imp: Impl) -> Memory {
    let n = params(cfg).total as u64;
    let (vp, nh) = (cfg.padded_vocab_size as u64, cfg.n_head as u64);
    let bt = (b * t) as u64;
    match imp {
        Impl::Cpu => {
            // ARCHITECTURE.md's mixed-precision table: activations, their gradients and the
            // parameters in `d` bytes, statistics, gradients and moments in f32, f32 master
            // weights when `d` < 4
            let (a, g) = (ActLayout::new(cfg, b, t, recompute), ActLayout::one_layer(cfg, b, t));
            let logits = (a.logits.len() + g.logits.len()) as u64 * d;
            let acts = (a.total - a.logits.len() + g.total - g.logits.len()) as u64 * d + a.stats_total as u64 * 4;
            Memory {
                weights: d * n,
                master_weights: if d < 4 { 4 * n } else { 0 },
                gradients: 4 * n,
                optimizer: 8 * n,
                activations: acts,
                logits,
                backward_scratch: 0,
                workspace: 0,
                overhead: 0,
            }
        }
        Impl::Gpu => {
            // what `Gpt` allocates on the CUDA backend: ARCHITECTURE.md's mixed-precision table
            // as on the CPU (parameters in `d` bytes beside f32 master weights when `d` < 4; f32
            // gradients and moments; activations, logits and one layer of activation gradients
            // in `d` bytes, their statistics in f32)
            let (a, g) = (ActLayout::new(cfg, b, t, recompute), ActLayout::one_layer(cfg, b, t));
            let logits = a.logits.len() as u64;
            let tokens = 3 * bt * 4; // inputs, targets and the inputs' order by token, u32 (3, B, T)
            let rowdot = bt * nh * 4; // attention backward's row dot products, f32 (B, NH, T)
                                      // the step sums, then a slot per piece for ZeRO-1's per-piece sums of squares
            let scalars = (crate::backend::N_SCALARS + ParamLayout::new(cfg).pieces().len()) as u64 * 8;
            Memory {
                weights: n * d,
                master_weights: if d < 4 { 4 * n } else { 0 },
                gradients: 4 * n,
                optimizer: 8 * n,
                activations: (a.total as u64 - logits) * d + a.stats_total as u64 * 4 + tokens,
                logits: logits * d,
                backward_scratch: g.total as u64 * d + rowdot,
                workspace: crate::backend::cuda::SCRATCH_BYTES as u64 + scalars,
                overhead: GPU_OVERHEAD_BYTES,
            }
        }
        Impl::Torch => {
            let g = llmc(cfg, b, t, d);
            let casts = if d < 4 { n * d } else { 0 };
            Memory { weights: 4 * n + casts, master_weights: 0, gradients: 4 * n, logits: g.logits + bt * vp * 4, ..g }
        }
    }
}

/// llm.c's buffers (`train_gpt2.cu`), the base of [`Impl::Torch`]: compute-dtype parameters
/// and gradients beside fp32 master weights and moments, a few activations fewer than
/// gptrain's (no stored attention or MLP projection outputs: llm.c fuses them into the
/// residual) and a few scratch buffers for the activation gradients.
fn llmc(cfg: &ModelConfig, b: usize, t: usize, d: u64) -> Memory {
    let n = params(cfg).total as u64;
    let (l, c, vp, nh) = (cfg.n_layer as u64, cfg.n_embd as u64, cfg.padded_vocab_size as u64, cfg.n_head as u64);
    let bt = (b * t) as u64;
    // per layer, in units of B*T*C: ln1 1, qkv 3, atty 1, residual2 1, ln2 1, fch 4,
    // fch_gelu 4, residual3 1 (llm.c's ActivationTensors, kept whole as PyTorch keeps them)
    let units = 16;
    let per_layer = units * bt * c * d + 4 * bt * 4 + bt * nh * 4; // + LN stats, attention LSE in fp32
    Memory {
        weights: n * d,
        master_weights: if d < 4 { 4 * n } else { 0 },
        gradients: n * d,
        optimizer: 8 * n,
        activations: l * per_layer + bt * c * d, // + the embedding output
        logits: bt * vp * d,
        // llm.c reuses a few B*T*4C-sized buffers for activation gradients
        backward_scratch: 2 * bt * 4 * c * d + bt * c * d,
        workspace: 0,
        overhead: GPU_OVERHEAD_BYTES,
    }
}

/// The largest micro-batch whose memory fits in `capacity` bytes (0 if even 1 does not).
pub fn max_micro_batch(cfg: &ModelConfig, t: usize, d: u64, recompute: Recompute, imp: Impl, capacity: u64) -> usize {
    let (mut lo, mut hi) = (0usize, 1usize);
    while memory(cfg, hi, t, d, recompute, imp).total() <= capacity && hi < 1 << 20 {
        lo = hi;
        hi *= 2;
    }
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if memory(cfg, mid, t, d, recompute, imp).total() <= capacity {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(l: usize, h: usize, c: usize, t: usize, v: usize, bias: bool) -> ModelConfig {
        ModelConfig { n_layer: l, n_head: h, n_embd: c, block_size: t, vocab_size: v, padded_vocab_size: v, bias }
    }

    #[test]
    fn the_cpu_memory_model_counts_the_buffers_gpt_allocates() {
        use crate::backend::cpu::Cpu;
        use crate::model::Gpt;
        let off = Recompute::Off;
        for (c, b, t) in [(cfg(3, 2, 16, 8, 11, true), 2, 8), (cfg(2, 4, 32, 16, 65, false), 3, 5)] {
            let m = memory(&c, b, t, 4, off, Impl::Cpu);
            assert_eq!(m.activations + m.logits, 4 * Gpt::<Cpu>::activation_elements(&c, b, t, off) as u64);
            assert_eq!(m.weights, 4 * params(&c).total as u64);
            // the activations' gradients are one layer's worth: a deeper model needs more
            // memory for the values only
            let deeper = ModelConfig { n_layer: c.n_layer + 1, ..c.clone() };
            let a = ActLayout::new(&c, b, t, off);
            let (values, grads) = (a.total + a.stats_total, ActLayout::one_layer(&c, b, t).total);
            assert_eq!(Gpt::<Cpu>::activation_elements(&c, b, t, off), values + grads);
            assert_eq!(ActLayout::one_layer(&c, b, t).stats_total, 0, "statistics have no gradient");
            assert_eq!(ActLayout::one_layer(&deeper, b, t).total, grads);
            assert!(ActLayout::new(&deeper, b, t, off).total > a.total && grads < values);
            // recomputation keeps one layer of GELU outputs (4 B T C elements a layer), and at
            // level 2 of both LayerNorm outputs (C each) too: (L - 1) layers' worth fewer
            for (r, per_layer) in [(Recompute::Gelu, 4), (Recompute::GeluAndLayerNorm, 6)] {
                let fewer = ((c.n_layer - 1) * per_layer * b * t * c.n_embd) as u64;
                let mr = memory(&c, b, t, 4, r, Impl::Cpu);
                assert_eq!(m.activations - mr.activations, 4 * fewer, "{r:?}");
                assert_eq!(mr.activations + mr.logits, 4 * Gpt::<Cpu>::activation_elements(&c, b, t, r) as u64);
                assert_eq!(m.total() - mr.total(), 4 * fewer);
                let g = memory(&c, b, t, 2, r, Impl::Gpu);
                assert_eq!(memory(&c, b, t, 2, off, Impl::Gpu).total() - g.total(), 2 * fewer, "{r:?}");
            }
        }
    }

    /// A backend that adds up the bytes the model asks it to allocate (nothing is freed during
    /// training).
    struct Counting<'a> {
        inner: crate::backend::cpu::Cpu,
        bytes: &'a std::sync::atomic::AtomicU64,
    }

    impl crate::backend::Backend for Counting<'_> {
        type Buf = <crate::backend::cpu::Cpu as crate::backend::Backend>::Buf;
        fn name(&self) -> String {
            self.inner.name()
        }
        fn device(&self, p: crate::backend::Precision) -> crate::backend::DeviceInfo {
            self.inner.device(p)
        }
        fn alloc(&self, n: usize, dtype: crate::backend::DType) -> anyhow::Result<Self::Buf> {
            self.bytes.fetch_add((n * dtype.bytes()) as u64, std::sync::atomic::Ordering::Relaxed);
            self.inner.alloc(n, dtype)
        }
        fn upload(
            &self,
            bufs: &mut crate::backend::Buffers<Self::Buf>,
            dst: crate::backend::Tensor,
            src: &crate::backend::Host,
        ) -> anyhow::Result<()> {
            self.inner.upload(bufs, dst, src)
        }
        fn download(&self, bufs: &crate::backend::Buffers<Self::Buf>, src: crate::backend::Tensor) -> anyhow::Result<crate::backend::Host> {
            self.inner.download(bufs, src)
        }
        fn synchronize(&self) -> anyhow::Result<()> {
            self.inner.synchronize()
        }
        fn run(&self, bufs: &mut crate::backend::Buffers<Self::Buf>, op: &crate::backend::Op) -> anyhow::Result<()> {
            self.inner.run(bufs, op)
        }
    }

    /// What the model asks of a backend in one training step, in each precision and at each
    /// recompute level, is the GPU model's figure less the CUDA backend's own scratch (its
    /// workspace, partials and attention row dots; `tests/gpu_memory.rs` counts those too, on
    /// the emulator or a GPU).
    #[test]
    fn the_gpu_memory_model_counts_every_buffer_the_model_allocates() {
        use crate::backend::Precision;
        for (c, b) in [(cfg(2, 4, 32, 16, 65, false), 3), (cfg(1, 2, 16, 8, 11, true), 2)] {
            for p in [Precision::F32, Precision::Bf16, Precision::F16] {
                for r in [Recompute::Off, Recompute::Gelu, Recompute::GeluAndLayerNorm] {
                    let bytes = std::sync::atomic::AtomicU64::new(0);
                    let backend = Counting { inner: crate::backend::cpu::Cpu::REFERENCE, bytes: &bytes };
                    crate::bench::run(&c, b, 1, 1, 0, false, backend, p, r).unwrap();
                    let m = memory(&c, b, c.block_size, p.bytes() as u64, r, Impl::Gpu);
                    let backend_scratch = crate::backend::cuda::SCRATCH_BYTES as u64 + (b * c.block_size * c.n_head * 4) as u64;
                    assert_eq!(bytes.into_inner(), m.allocated() - backend_scratch, "{} {r:?} {c:?}", p.name());
                }
            }
        }
    }

    #[test]
    fn param_counts_match_known_models() {
        // GPT-2 124M as nanoGPT reports it: "number of parameters: 123.65M" (vocab 50257, bias)
        let p = params(&cfg(12, 12, 768, 1024, 50257, true));
        assert_eq!(p.nanogpt, 123_653_376);
        assert_eq!(p.total, 124_439_808);
        // the RTX 4070 run: ~38.9M with vocab 50304, no bias
        let p = params(&cfg(4, 8, 512, 1024, 50304, false));
        assert!((38_800_000..39_000_000).contains(&p.total), "{}", p.total);
    }

    #[test]
    fn param_count_matches_the_layout() {
        for bias in [false, true] {
            let c = cfg(3, 4, 64, 32, 100, bias);
            assert_eq!(params(&c).total, crate::model::ParamLayout::new(&c).total);
        }
    }

    #[test]
    fn rtx4070_iteration_is_over_1e14_flops() {
        let c = cfg(4, 8, 512, 1024, 50304, false);
        let f = flops_per_iter(&c, 16, 1024, 32);
        assert!(f > 1.2e14 && f < 1.5e14, "{f:e}");
        // the 6N + 12LHQT convention agrees within a few percent
        let palm = palm_flops_per_token(&c, 1024) * (16 * 1024 * 32) as f64;
        assert!((palm / f - 1.0).abs() < 0.05, "{palm:e} vs {f:e}");
    }

    #[test]
    fn the_pytorch_memory_model_matches_what_an_h200_measured() {
        // `tools/gpu_calibrate.py` on an H200 (PERFORMANCE.md, "Estimates against a real GPU"):
        // torch.cuda.max_memory_allocated of compiled bf16 training, which leaves out the CUDA
        // context that `overhead` stands for
        for (c, b, measured_gib) in [(cfg(4, 8, 512, 1024, 50304, false), 16, 6.55), (cfg(12, 12, 768, 1024, 50304, true), 12, 9.56)] {
            let m = memory(&c, b, 1024, 2, Recompute::Off, Impl::Torch);
            let model_gib = (m.total() - m.overhead) as f64 / (1u64 << 30) as f64;
            assert!((model_gib / measured_gib - 1.0).abs() < 0.06, "{model_gib:.2} GiB modelled, {measured_gib} measured");
        }
    }

    #[test]
    fn more_batch_needs_more_memory_and_max_fits() {
        let c = cfg(4, 8, 512, 1024, 50304, false);
        let cap = 12u64 << 30;
        let m = max_micro_batch(&c, 1024, 2, Recompute::Off, Impl::Gpu, cap);
        assert!(m >= 16, "{m}");
        assert!(memory(&c, m, 1024, 2, Recompute::Off, Impl::Gpu).total() <= cap);
        assert!(memory(&c, m + 1, 1024, 2, Recompute::Off, Impl::Gpu).total() > cap);
    }
}
