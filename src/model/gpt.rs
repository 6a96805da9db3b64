//! The GPT forward and backward passes: a flat list of kernel calls, and the same list reversed.

use super::{ActLayout, ModelConfig, ParamLayout, Recompute};
use crate::backend::ops::{
    token_order, AdamWStep, Attention, AttentionBackward, AttentionDecode, Embed, EmbedBackward, FusedClassifier, Gelu, GeluGrad,
    LayerNorm, LayerNormBackward, Matmul, MatmulBackward, Residual,
};
use crate::backend::{AdamW, Backend, BufId, Buffers, DType, Dropout, Host, Op, Precision, Role, Scalar, Span, Tensor, N_SCALARS};
use crate::rng;
use anyhow::Result;

/// Where dropout masks come from for one micro-step: the same context regenerates the same
/// masks in backward.
#[derive(Clone, Copy, Debug)]
pub struct DropoutCtx {
    pub p: f32,
    pub seed: u64,
    pub iter: u64,
    pub micro: u64,
}

impl DropoutCtx {
    /// The dropout for call site `site` of layer `layer` (site ids: 0 embedding, 1 attention
    /// probabilities, 2 attention output, 3 MLP output).
    fn at(ctx: Option<DropoutCtx>, layer: usize, site: u64) -> Dropout {
        match ctx {
            Some(c) if c.p > 0.0 => Dropout { p: c.p, key: rng::key(c.seed, rng::STREAM_DROPOUT, &[c.iter, c.micro, layer as u64, site]) },
            _ => Dropout::NONE,
        }
    }
}

/// Activations for one micro-batch shape: their layouts, where the batch's tokens go, and
/// whether the logits currently hold their gradient.
struct Acts {
    layout: ActLayout,
    /// The layout of `DActs`: one layer's worth, reused by every layer ([`ActLayout::one_layer`]).
    grad_layout: ActLayout,
    /// (3, B, T) u32 in [`BufId::Tokens`]: the inputs, the targets, and the inputs' positions
    /// sorted by token ([`token_order`], for the embedding backward).
    tokens: Tensor,
    /// Whether the last forward overwrote the logits with their gradient.
    logits_hold_grad: bool,
}

/// How a forward pass attends: over the whole causal window of the batch (training,
/// evaluation), or one new position against the KV cache (sampling).
#[derive(Clone, Copy, Debug)]
enum Attend {
    Causal(Option<DropoutCtx>),
    Cached { pos: usize },
}

/// A GPT-2 model on backend `B`: its buffers ([`BufId`]: parameters, gradients, AdamW
/// moments, activations and their gradients, token ids, step accumulators), each one
/// allocation owned here, and the ops that run over them. Under mixed precision
/// (`precision` bf16/f16) the buffers have ARCHITECTURE.md's storage types: low-precision
/// parameters beside f32 master weights, f32 gradients and moments, low-precision activations.
pub struct Gpt<B: Backend> {
    pub cfg: ModelConfig,
    /// The parameters' layout, in their storage type (the kernels' copy under mixed precision).
    pub layout: ParamLayout,
    pub backend: B,
    pub bufs: Buffers<B::Buf>,
    /// The compute precision (F32, or Bf16/F16 mixed precision).
    pub precision: Precision,
    /// The dynamic loss scale (float16 only; fixed at 1 otherwise): optimiser state, like the
    /// AdamW moments.
    pub scaler: crate::optim::LossScaler,
    /// Which activations the backward recomputes instead of keeping ([`Gpt::set_recompute`]).
    recompute: Recompute,
    acts: Option<Acts>,
    /// [`ParamLayout::pieces`]: the gradient norm's summands, and ZeRO-1's units.
    pieces: Vec<Span>,
    /// ZeRO-1 ([`Gpt::shard_optimizer`]): every rank's part of the parameter buffer, whole
    /// pieces each, and this rank's index into it. Empty: one process, or ranks that each keep
    /// the whole optimiser state.
    parts: Vec<Span>,
    rank: usize,
}

impl<B: Backend> Gpt<B> {
    /// A model with all parameters zero, in f32.
    pub fn zeros(backend: B, cfg: ModelConfig) -> Result<Self> {
        Self::zeros_in(backend, cfg, Precision::F32)
    }

    /// A model with all parameters zero, computing in `precision` (F32, Bf16 or F16; TF32 is a
    /// matmul mode some backends have on f32 storage).
    pub fn zeros_in(backend: B, cfg: ModelConfig, precision: Precision) -> Result<Self> {
        Self::zeros_sharded(backend, cfg, precision, None)
    }

    /// [`Gpt::zeros_in`], as rank `zero.1` of a ZeRO-1 run whose ranks own parts `zero.0`
    /// ([`Gpt::shard_optimizer`]): the master weights are allocated at the part's size at once.
    pub fn zeros_sharded(backend: B, cfg: ModelConfig, precision: Precision, zero: Option<(Vec<Span>, usize)>) -> Result<Self> {
        let low = precision.storage();
        let layout = ParamLayout::with_dtype(&cfg, low);
        let mut bufs = Buffers::default();
        bufs.set(BufId::Params, backend.alloc(layout.total, low)?);
        if low != DType::F32 && zero.is_none() {
            bufs.set(BufId::Master, backend.alloc(layout.total, DType::F32)?);
        }
        bufs.set(BufId::Grads, backend.alloc(layout.total, DType::F32)?);
        // the step sums, then one slot per piece for its sum of squares under ZeRO-1
        let pieces = layout.pieces();
        bufs.set(BufId::Scalars, backend.alloc(N_SCALARS + pieces.len(), DType::F64)?);
        let scaler = crate::optim::LossScaler::new(precision);
        let recompute = Recompute::Off;
        let mut g = Gpt { cfg, layout, backend, bufs, precision, scaler, recompute, acts: None, pieces, parts: Vec::new(), rank: 0 };
        if let Some((parts, rank)) = zero {
            g.shard_optimizer(parts, rank)?;
        }
        Ok(g)
    }

    /// nanoGPT's initialisation: N(0, 0.02) for embeddings and linear weights, N(0,
    /// 0.02/sqrt(2 n_layer)) for the residual projections (`c_proj`), zero biases, unit
    /// LayerNorm weights. Padding rows of `wte` are zero. In f32.
    pub fn init(backend: B, cfg: ModelConfig, seed: u64) -> Result<Self> {
        Self::init_in(backend, cfg, seed, Precision::F32)
    }

    /// [`Gpt::init`] computing in `precision`.
    pub fn init_in(backend: B, cfg: ModelConfig, seed: u64, precision: Precision) -> Result<Self> {
        let mut g = Self::zeros_in(backend, cfg, precision)?;
        let host = init_params(&g.cfg, &g.layout, seed);
        g.set_params(&host)?;
        Ok(g)
    }

    /// The storage type of parameters, activations and their gradients.
    fn low(&self) -> DType {
        self.layout.wte.dtype
    }

    /// Whether f32 master weights sit beside low-precision parameters.
    fn has_master(&self) -> bool {
        self.low() != DType::F32
    }

    pub fn num_params(&self) -> usize {
        self.layout.total
    }

    /// ZeRO-1: this model is rank `rank` of ranks whose optimisers own `parts` of the parameter
    /// buffer ([`crate::dist::zero::parts`] of [`ParamLayout::pieces`]: whole pieces, back to
    /// back). From here on it keeps AdamW moments (and f32 master weights under mixed precision)
    /// for its own part only, updates only that part, and its [`Gpt::optimizer_state`] and
    /// [`Gpt::owned_weights`] are of that part. Call before the weights are set.
    pub fn shard_optimizer(&mut self, parts: Vec<Span>, rank: usize) -> Result<()> {
        assert!(!self.bufs.has(BufId::AdamM), "shard the optimiser before it has state");
        assert_eq!(parts.iter().map(|p| p.len).sum::<usize>(), self.layout.total, "the parts cover the parameters");
        assert!(parts.windows(2).all(|w| w[0].end() == w[1].off), "the parts are back to back: {parts:?}");
        let own = parts[rank];
        let bounds = |x: usize| x == self.layout.total || self.pieces.iter().any(|p| p.off == x);
        assert!(own.len == 0 || bounds(own.off) && bounds(own.end()), "a part is whole pieces: {own:?}");
        (self.parts, self.rank) = (parts, rank);
        if self.has_master() {
            // a whole copy goes before the part is allocated: never both at once
            drop(self.bufs.take(BufId::Master));
            let buf = self.backend.alloc(own.len.max(1), DType::F32)?;
            self.bufs.set(BufId::Master, buf);
        }
        Ok(())
    }

    /// The part of the parameter buffer whose optimiser state this model keeps: all of it, or
    /// its rank's part under ZeRO-1.
    pub fn owned(&self) -> Span {
        self.parts.get(self.rank).copied().unwrap_or(Span::new(0, self.layout.total))
    }

    /// Every rank's part under ZeRO-1 ([`Gpt::shard_optimizer`]); empty otherwise.
    pub fn parts(&self) -> &[Span] {
        &self.parts
    }

    /// What this model's optimiser owns of each parameter tensor, in layout order: (weight decay
    /// applies, the span), all of each but under ZeRO-1.
    fn owned_segments(&self) -> Vec<(bool, Span)> {
        let own = self.owned();
        self.layout.tensors.iter().map(|t| (t.decay, t.span.intersect(&own))).filter(|(_, s)| s.len > 0).collect()
    }

    /// Span `s` of the parameter buffer in optimiser-state buffer `buf` (moments, master
    /// weights), which holds the owned part only; flat f32. `state_of(self.owned(), ..)` is the
    /// whole buffer.
    fn state_of(&self, s: Span, buf: BufId) -> Tensor {
        Tensor::new(buf, Span::new(s.off - self.owned().off, s.len), &[s.len], DType::F32)
    }

    /// `t` on the host as f32, or nothing when it is empty (an owned part of none).
    fn download_f32(&self, t: Tensor) -> Result<Vec<f32>> {
        Ok(if t.is_empty() { Vec::new() } else { self.backend.download(&self.bufs, t)?.into_f32() })
    }

    /// Runs one op on this model's buffers.
    fn run(&mut self, op: impl Into<Op>) -> Result<()> {
        self.backend.run(&mut self.bufs, &op.into())
    }

    /// Which activations the backward recomputes (the config's `recompute`); the activation
    /// buffers are laid out again at the next batch. Results are bitwise the same at every level.
    pub fn set_recompute(&mut self, recompute: Recompute) {
        self.recompute = recompute;
    }

    pub fn recompute(&self) -> Recompute {
        self.recompute
    }

    /// Ensures activation buffers for micro-batch shape (b, t) exist, laid out for the current
    /// recompute level.
    fn ensure_acts(&mut self, b: usize, t: usize) -> Result<()> {
        let r = self.recompute;
        if self.acts.as_ref().is_some_and(|a| a.layout.b == b && a.layout.t == t && a.layout.recompute == r) {
            return Ok(());
        }
        self.acts = None; // free the old ones first
        for id in [BufId::Acts, BufId::Stats, BufId::DActs, BufId::Tokens] {
            self.bufs.take(id);
        }
        let low = self.low();
        let layout = ActLayout::with_dtype(&self.cfg, b, t, low, r);
        let grad_layout = ActLayout::one_layer_in(&self.cfg, b, t, low);
        self.bufs.set(BufId::Acts, self.backend.alloc(layout.total, low)?);
        self.bufs.set(BufId::Stats, self.backend.alloc(layout.stats_total, DType::F32)?);
        self.bufs.set(BufId::DActs, self.backend.alloc(grad_layout.total, low)?);
        self.bufs.set(BufId::Tokens, self.backend.alloc(3 * b * t, DType::U32)?);
        let tokens = Tensor::new(BufId::Tokens, Span::new(0, 3 * b * t), &[3, b, t], DType::U32);
        self.acts = Some(Acts { layout, grad_layout, tokens, logits_hold_grad: false });
        Ok(())
    }

    /// Activation elements for micro-batch shape (b, t) (values, their statistics and their
    /// gradients) at a recompute level.
    pub fn activation_elements(cfg: &ModelConfig, b: usize, t: usize, recompute: Recompute) -> usize {
        let a = ActLayout::new(cfg, b, t, recompute);
        a.total + a.stats_total + ActLayout::one_layer(cfg, b, t).total
    }

    /// Uploads a micro-batch: `tokens(B,T)`, their `targets(B,T)` and the tokens' order (see
    /// [`token_order`]), in one copy, for the forward and backward passes that follow.
    pub fn set_batch(&mut self, tokens: &[u32], targets: &[u32], b: usize, t: usize) -> Result<()> {
        assert!(t <= self.cfg.block_size && tokens.len() == b * t && targets.len() == b * t);
        self.ensure_acts(b, t)?;
        let dst = self.acts.as_ref().unwrap().tokens;
        let all = Host::U32([tokens, targets, &token_order(tokens)].concat());
        self.backend.upload(&mut self.bufs, dst, &all)
    }

    /// Forward pass over the batch of [`Gpt::set_batch`]; adds its mean loss to
    /// [`Scalar::LossSum`]. With `grad_scale = Some(s)`, the fused classifier also writes
    /// dloss/dlogits scaled by `s` (e.g. `1 / grad_accum`) over the logits, ready for
    /// [`Gpt::backward`]; [`Gpt::logits`] then has nothing to give until a forward without it.
    pub fn forward(&mut self, dropout: Option<DropoutCtx>, grad_scale: Option<f32>) -> Result<()> {
        let a = self.acts.as_ref().expect("forward before set_batch");
        let (al, tokens) = (a.layout, a.tokens);
        let (b, t) = (al.b, al.t);
        self.embed(&al, tokens.index(0), 0, DropoutCtx::at(dropout, 0, 0))?;
        self.blocks(&al, Attend::Causal(dropout))?;
        self.head(&al)?;
        // d(mean loss)/d(loss of one position) = 1 / (B T), times the caller's scale and the
        // loss scale (float16: keeps small gradients representable; divided out at the update)
        let loss_scale = self.scaler.scale;
        let grad = grad_scale.map(|s| s * loss_scale / (b * t) as f32);
        let (v, targets) = (self.cfg.vocab_size, tokens.index(1));
        self.run(FusedClassifier { logits: al.logits, losses: al.losses, targets, vocab: v, grad_scale: grad })?;
        self.acts.as_mut().unwrap().logits_hold_grad = grad.is_some();
        self.run(Op::AddMeanLoss { losses: al.losses, into: Scalar::LossSum })
    }

    /// encoded(B,T,C) = wte[tokens] + wpe[pos0 + t], then embedding dropout.
    fn embed(&mut self, a: &ActLayout, tokens: Tensor, pos0: usize, drop: Dropout) -> Result<()> {
        let p = &self.layout;
        let op = Embed { out: a.encoded, wte: p.wte, wpe: p.wpe, tokens, pos0, drop };
        self.run(op)
    }

    /// The transformer blocks, from `encoded` to the last `residual3`.
    fn blocks(&mut self, a: &ActLayout, attend: Attend) -> Result<()> {
        let (p, nh) = (self.layout.clone(), self.cfg.n_head);
        for l in 0..self.cfg.n_layer {
            let residual = if l == 0 { a.encoded } else { a.residual3.index(l - 1) };
            // ln1, ln2 and fch_gelu may be one slot shared by every layer (recomputed in the
            // backward): each is read only by the matmul right after the op that writes it
            let (ln1, qkv, atty, attproj) = (a.ln1_at(l), a.qkv.index(l), a.atty.index(l), a.attproj.index(l));
            let (residual2, ln2, fch, fch_gelu) = (a.residual2.index(l), a.ln2_at(l), a.fch.index(l), a.fch_gelu_at(l));
            let fcproj = a.fcproj.index(l);
            let dropout = match attend {
                Attend::Causal(d) => d,
                Attend::Cached { .. } => None,
            };
            let (mean, rstd) = (a.ln1_mean.index(l), a.ln1_rstd.index(l));
            self.run(LayerNorm { out: ln1, mean, rstd, inp: residual, w: p.ln1w.index(l), b: p.ln1b.map(|x| x.index(l)) })?;
            self.run(Matmul { out: qkv, inp: ln1, w: p.qkvw.index(l), b: p.qkvb.map(|x| x.index(l)), role: Role::Qkv })?;
            match attend {
                Attend::Causal(d) => {
                    let drop = DropoutCtx::at(d, l, 1);
                    self.run(Attention { out: atty, stats: a.att_stats.index(l), qkv, n_head: nh, drop })?
                }
                Attend::Cached { pos } => {
                    let (k, v) = self.kv_cache(l);
                    self.run(AttentionDecode { out: atty, qkv, k, v, pos, n_head: nh })?
                }
            }
            let (w, b) = (p.attprojw.index(l), p.attprojb.map(|x| x.index(l)));
            self.run(Matmul { out: attproj, inp: atty, w, b, role: Role::AttnProj })?;
            self.run(Op::Dropout { x: attproj, drop: DropoutCtx::at(dropout, l, 2) })?;
            self.run(Residual { out: residual2, a: residual, b: attproj })?;
            let (mean, rstd) = (a.ln2_mean.index(l), a.ln2_rstd.index(l));
            self.run(LayerNorm { out: ln2, mean, rstd, inp: residual2, w: p.ln2w.index(l), b: p.ln2b.map(|x| x.index(l)) })?;
            self.run(Matmul { out: fch, inp: ln2, w: p.fcw.index(l), b: p.fcb.map(|x| x.index(l)), role: Role::MlpFc })?;
            self.run(Gelu { out: fch_gelu, inp: fch })?;
            let (w, b) = (p.fcprojw.index(l), p.fcprojb.map(|x| x.index(l)));
            self.run(Matmul { out: fcproj, inp: fch_gelu, w, b, role: Role::MlpProj })?;
            self.run(Op::Dropout { x: fcproj, drop: DropoutCtx::at(dropout, l, 3) })?;
            self.run(Residual { out: a.residual3.index(l), a: residual2, b: fcproj })?;
        }
        Ok(())
    }

    /// The final LayerNorm and the logits(B,T,Vp) through `wte` (tied lm_head).
    fn head(&mut self, a: &ActLayout) -> Result<()> {
        let p = &self.layout;
        let last = a.residual3.index(self.cfg.n_layer - 1);
        let ln = LayerNorm { out: a.lnf, mean: a.lnf_mean, rstd: a.lnf_rstd, inp: last, w: p.lnfw, b: p.lnfb };
        let lm = Matmul { out: a.logits, inp: a.lnf, w: p.wte, b: None, role: Role::LmHead };
        self.run(ln)?;
        self.run(lm)
    }

    /// Backward pass for the last forward (which must have been given a `grad_scale`):
    /// accumulates into the parameter gradients.
    pub fn backward(&mut self, dropout: Option<DropoutCtx>) -> Result<()> {
        let ac = self.acts.as_ref().expect("backward before forward");
        assert!(ac.logits_hold_grad, "backward needs a forward with a grad_scale");
        let (a, g, tokens, order) = (ac.layout, ac.grad_layout, ac.tokens.index(0), ac.tokens.index(2));
        let (p, nh) = (self.layout.clone(), self.cfg.n_head);
        let grad = |t: Tensor| t.of(BufId::Grads, DType::F32);
        let ograd = |t: Option<Tensor>| t.map(grad);
        // Activation tensors are layer l's (in `a`); gradient tensors are the one layer's worth
        // in `g` (index 0) that every layer reuses. The residual stream's gradient lives in one
        // tensor, `dres` (llm.c's scheme): dL/d residual3_l on entry to layer l. A residual add
        // passes its gradient unchanged to both inputs, so the branch's matmul reads `dres` as
        // its output gradient (through a dropout-masked copy when dropout is on), and then the
        // branch's LayerNorm backward accumulates into `dres` itself, which turns it into the
        // gradient of the add's other input: dL/d residual2_l after the MLP half, dL/d
        // residual3_(l-1) after the attention half, and below layer 0 the embedding output's.
        // Other gradients are overwritten by the op that produces them; ln_f's LayerNorm
        // accumulates into a zeroed `dres`.
        let dres = g.residual3.index(0);
        self.run(Op::Zero(dres))?;
        // the classifier's output gradient is where the fused classifier left it: the logits
        let wte = p.wte;
        self.run(MatmulBackward {
            dinp: g.lnf,
            dw: grad(wte),
            db: None,
            dout: a.logits,
            inp: a.lnf,
            w: wte,
            gelu: None,
            role: Role::LmHead,
        })?;
        let last = a.residual3.index(self.cfg.n_layer - 1);
        let (dw, db) = (grad(p.lnfw), ograd(p.lnfb));
        self.run(LayerNormBackward { dinp: dres, dw, db, dout: g.lnf, inp: last, mean: a.lnf_mean, rstd: a.lnf_rstd, w: p.lnfw })?;
        for l in (0..self.cfg.n_layer).rev() {
            let residual = if l == 0 { a.encoded } else { a.residual3.index(l - 1) };
            let (residual2, fch, fch_gelu, ln2) = (a.residual2.index(l), a.fch.index(l), a.fch_gelu_at(l), a.ln2_at(l));
            let (atty, qkv, ln1) = (a.atty.index(l), a.qkv.index(l), a.ln1_at(l));
            // a recomputed activation is written again into its slot, by the forward's op on
            // the forward's (kept) inputs, just before the matmul backward that reads it; the
            // top layer's are still there (the forward wrote them last, and a backward always
            // follows its own forward: `logits_hold_grad`)
            let r = if l + 1 == self.cfg.n_layer { Recompute::Off } else { a.recompute };

            // residual3 = residual2 + dropout(fcproj)
            let dfcproj = self.branch(dres, g.fcproj.index(0), DropoutCtx::at(dropout, l, 3))?;
            let (w, b) = (p.fcprojw.index(l), p.fcprojb.map(|x| x.index(l)));
            let dfch_gelu = g.fch_gelu.index(0);
            if r.gelu() {
                self.run(Gelu { out: fch_gelu, inp: fch })?;
            }
            // dfch = (dfcproj @ w) * gelu'(fch): the projection's backward and GELU's in one op
            // (one cuBLASLt product on a GPU; the CPU puts the product in dfch_gelu first)
            let gelu = Some(GeluGrad { pre: fch, scratch: dfch_gelu });
            let dfch = g.fch.index(0);
            self.run(MatmulBackward { dinp: dfch, dw: grad(w), db: ograd(b), dout: dfcproj, inp: fch_gelu, w, gelu, role: Role::MlpProj })?;
            let (w, b) = (p.fcw.index(l), p.fcb.map(|x| x.index(l)));
            let dln2 = g.ln2.index(0);
            if r.layer_norm() {
                let (mean, rstd) = (a.ln2_mean.index(l), a.ln2_rstd.index(l));
                self.run(LayerNorm { out: ln2, mean, rstd, inp: residual2, w: p.ln2w.index(l), b: p.ln2b.map(|x| x.index(l)) })?;
            }
            self.run(MatmulBackward { dinp: dln2, dw: grad(w), db: ograd(b), dout: dfch, inp: ln2, w, gelu: None, role: Role::MlpFc })?;
            let (w, b) = (p.ln2w.index(l), p.ln2b.map(|x| x.index(l)));
            let (mean, rstd) = (a.ln2_mean.index(l), a.ln2_rstd.index(l));
            self.run(LayerNormBackward { dinp: dres, dw: grad(w), db: ograd(b), dout: dln2, inp: residual2, mean, rstd, w })?;
            // residual2 = residual + dropout(attproj)
            let dattproj = self.branch(dres, g.attproj.index(0), DropoutCtx::at(dropout, l, 2))?;
            let (w, b) = (p.attprojw.index(l), p.attprojb.map(|x| x.index(l)));
            let datty = g.atty.index(0);
            self.run(MatmulBackward {
                dinp: datty,
                dw: grad(w),
                db: ograd(b),
                dout: dattproj,
                inp: atty,
                w,
                gelu: None,
                role: Role::AttnProj,
            })?;
            let (dqkv, stats, drop) = (g.qkv.index(0), a.att_stats.index(l), DropoutCtx::at(dropout, l, 1));
            self.run(AttentionBackward { dqkv, dout: datty, qkv, stats, out: atty, n_head: nh, drop })?;
            let (w, b) = (p.qkvw.index(l), p.qkvb.map(|x| x.index(l)));
            let dln1 = g.ln1.index(0);
            if r.layer_norm() {
                let (mean, rstd) = (a.ln1_mean.index(l), a.ln1_rstd.index(l));
                self.run(LayerNorm { out: ln1, mean, rstd, inp: residual, w: p.ln1w.index(l), b: p.ln1b.map(|x| x.index(l)) })?;
            }
            self.run(MatmulBackward { dinp: dln1, dw: grad(w), db: ograd(b), dout: dqkv, inp: ln1, w, gelu: None, role: Role::Qkv })?;
            let (w, b) = (p.ln1w.index(l), p.ln1b.map(|x| x.index(l)));
            let (mean, rstd) = (a.ln1_mean.index(l), a.ln1_rstd.index(l));
            self.run(LayerNormBackward { dinp: dres, dw: grad(w), db: ograd(b), dout: dln1, inp: residual, mean, rstd, w })?;
        }
        self.run(Op::Dropout { x: dres, drop: DropoutCtx::at(dropout, 0, 0) })?;
        self.run(EmbedBackward { dwte: grad(p.wte), dwpe: grad(p.wpe), dout: dres, tokens, order })
    }

    /// The output gradient of a residual branch: `dres` itself, or a copy of it in `copy` under
    /// the branch's dropout mask.
    fn branch(&mut self, dres: Tensor, copy: Tensor, drop: Dropout) -> Result<Tensor> {
        if !drop.active() {
            return Ok(dres);
        }
        self.run(Op::Copy { dst: copy, src: dres })?;
        self.run(Op::Dropout { x: copy, drop })?;
        Ok(copy)
    }

    pub fn zero_grad(&mut self) -> Result<()> {
        let all = self.layout.all().of(BufId::Grads, DType::F32);
        self.run(Op::Zero(all))
    }

    /// Zeroes the step accumulators ([`Scalar`]).
    pub fn reset_scalars(&mut self) -> Result<()> {
        let n = N_SCALARS + self.pieces.len();
        let all = Tensor::new(BufId::Scalars, Span::new(0, n), &[n], DType::F64);
        self.run(Op::Zero(all))
    }

    /// Adds the sum of squares of every gradient to [`Scalar::GradSquares`], piece by piece
    /// ([`ParamLayout::pieces`]) in layout order. Under ZeRO-1, each owned piece's sum goes to
    /// its own slot instead ([`Gpt::read_scalars`]), for [`crate::optim`] to add in layout order
    /// once every rank's are in: the same additions.
    pub fn accumulate_grad_squares(&mut self) -> Result<()> {
        let (sharded, own) = (!self.parts.is_empty(), self.owned());
        // one op per tensor (the owned part of it, whole pieces), over its pieces
        for t in self.layout.tensors.clone() {
            let s = t.span.intersect(&own);
            if s.len == 0 {
                continue;
            }
            let per = ParamLayout::piece_len(&t);
            let into = match sharded {
                true => {
                    let first = self.pieces.iter().position(|p| p.off == s.off).expect("parts are whole pieces");
                    Tensor::new(BufId::Scalars, Span::new(N_SCALARS + first, s.len.div_ceil(per)), &[s.len.div_ceil(per)], DType::F64)
                }
                false => Scalar::GradSquares.tensor(),
            };
            self.run(Op::AddSquares { x: Tensor::new(BufId::Grads, s, &[s.len], DType::F32), per, into })?;
        }
        Ok(())
    }

    /// The step accumulators, read once (a synchronisation on a device): indexed by [`Scalar`],
    /// then (ZeRO-1) each piece's sum of squares, in layout order (0 for pieces not owned).
    pub fn read_scalars(&self) -> Result<Vec<f64>> {
        let n = N_SCALARS + if self.parts.is_empty() { 0 } else { self.pieces.len() };
        let all = Tensor::new(BufId::Scalars, Span::new(0, n), &[n], DType::F64);
        Ok(self.backend.download(&self.bufs, all)?.into_f64())
    }

    /// The mean loss of `tokens(B,T)` against `targets(B,T)` (a forward without gradient).
    pub fn loss(&mut self, tokens: &[u32], targets: &[u32], b: usize, t: usize) -> Result<f32> {
        self.set_batch(tokens, targets, b, t)?;
        self.reset_scalars()?;
        self.forward(None, None)?;
        Ok(self.read_scalars()?[Scalar::LossSum as usize] as f32)
    }

    /// One AdamW step (`step` counts from 1) on the gradients times `grad_scale` (see
    /// [`crate::optim::clip_coef`]; 1 for none); weight decay on the 2-D tensors only.
    pub fn update(&mut self, hp: AdamW, weight_decay: f32, step: u64, grad_scale: f32) -> Result<()> {
        for id in [BufId::AdamM, BufId::AdamV] {
            if !self.bufs.has(id) {
                let buf = self.backend.alloc(self.owned().len.max(1), DType::F32)?;
                self.bufs.set(id, buf);
            }
        }
        // under ZeRO-1 the owned part of each tensor only (AdamW is elementwise: the same bits);
        // its moments and master weights are at their offsets within the owned part
        for (decay, s) in self.owned_segments() {
            let wd = if decay { weight_decay } else { 0.0 };
            let params = Tensor::new(BufId::Params, s, &[s.len], self.low());
            let master = self.has_master().then(|| self.state_of(s, BufId::Master));
            let grads = Tensor::new(BufId::Grads, s, &[s.len], DType::F32);
            let (m, v) = (self.state_of(s, BufId::AdamM), self.state_of(s, BufId::AdamV));
            self.run(AdamWStep { params, master, grads, m, v, hp, step, weight_decay: wd, grad_scale })?;
        }
        Ok(())
    }

    /// The logits of the last forward, (B, T, Vp); that forward must have had no `grad_scale`
    /// (one with it leaves their gradient in their place).
    pub fn logits(&self) -> Result<Vec<f32>> {
        let a = self.acts.as_ref().expect("logits before forward");
        assert!(!a.logits_hold_grad, "logits after a forward with a grad_scale, which overwrote them with their gradient");
        Ok(self.backend.download(&self.bufs, a.layout.logits)?.into_f32())
    }

    /// The per-position losses of the last forward, (B, T).
    pub fn losses(&self) -> Result<Vec<f32>> {
        let a = self.acts.as_ref().expect("losses before forward");
        Ok(self.backend.download(&self.bufs, a.layout.losses)?.into_f32())
    }

    fn download_all(&self, buf: BufId) -> Result<Vec<f32>> {
        Ok(self.backend.download(&self.bufs, self.layout.all().of(buf, DType::F32))?.into_f32())
    }
    /// The weights, f32: the master weights under mixed precision. Not under ZeRO-1 (no rank
    /// holds all the master weights): [`Gpt::owned_weights`] there.
    pub fn params_host(&self) -> Result<Vec<f32>> {
        assert!(self.parts.is_empty(), "a ZeRO-1 rank holds its own part of the weights only");
        self.download_all(if self.has_master() { BufId::Master } else { BufId::Params })
    }

    /// The f32 weights of the owned part ([`Gpt::owned`]): the master weights under mixed
    /// precision. Rank by rank, in rank order, they make the whole of [`Gpt::params_host`].
    pub fn owned_weights(&self) -> Result<Vec<f32>> {
        match self.has_master() {
            true => self.download_f32(self.state_of(self.owned(), BufId::Master)),
            false => self.owned_kernel_params(), // the f32 parameters themselves
        }
    }

    /// The parameters as the kernels hold them (the low-precision copy under mixed precision),
    /// widened to f32 exactly: the same on every rank.
    pub fn kernel_params_host(&self) -> Result<Vec<f32>> {
        Ok(self.backend.download(&self.bufs, self.layout.all())?.into_f32())
    }

    /// Sets the kernels' parameters (rounded to their storage type) from f32: under ZeRO-1,
    /// after an update, the ranks' [`Gpt::owned_kernel_params`] put together (exactly: those
    /// values are representable). [`Gpt::set_params`] sets the master weights first.
    pub fn set_kernel_params(&mut self, host: &[f32]) -> Result<()> {
        assert_eq!(host.len(), self.layout.total);
        let all = self.layout.all();
        self.backend.upload(&mut self.bufs, all, &Host::F32(host.to_vec()))
    }

    /// The owned part of the kernels' parameters, widened to f32 exactly.
    pub fn owned_kernel_params(&self) -> Result<Vec<f32>> {
        let own = self.owned();
        self.download_f32(Tensor::new(BufId::Params, own, &[own.len], self.low()))
    }

    /// ZeRO-1 on a device collective: the ranks' gradients summed into each owner's part.
    pub fn reduce_grads_to_owners(&mut self) -> Result<()> {
        let grads = self.layout.all().of(BufId::Grads, DType::F32);
        self.backend.reduce_to_owners(&mut self.bufs, grads, &self.parts)
    }

    /// ZeRO-1 on a device collective, after an update: each owner's part of the kernels'
    /// parameters to every rank.
    pub fn gather_params_from_owners(&mut self) -> Result<()> {
        let all = self.layout.all();
        self.backend.gather_from_owners(&mut self.bufs, all, &self.parts)
    }
    pub fn grads_host(&self) -> Result<Vec<f32>> {
        self.download_all(BufId::Grads)
    }
    /// Whether the backend sums over a data-parallel run's ranks on the device (NCCL).
    pub fn sums_on_device(&self) -> bool {
        self.backend.joined_ranks()
    }
    /// Sums the gradients over the ranks on the device ([`Gpt::sums_on_device`]).
    pub fn sum_grads_over_ranks(&mut self) -> Result<()> {
        let grads = self.layout.all().of(BufId::Grads, DType::F32);
        self.backend.sum_over_ranks(&mut self.bufs, grads)
    }
    /// Sets the gradients (f32; a data-parallel step puts the ranks' sum back).
    pub fn set_grads(&mut self, host: &[f32]) -> Result<()> {
        assert_eq!(host.len(), self.layout.total);
        let grads = self.layout.all().of(BufId::Grads, DType::F32);
        self.backend.upload(&mut self.bufs, grads, &Host::F32(host.to_vec()))
    }
    /// Sets the weights (f32): the master weights (of the owned part, under ZeRO-1) and their
    /// rounded copy under mixed precision.
    pub fn set_params(&mut self, host: &[f32]) -> Result<()> {
        assert_eq!(host.len(), self.layout.total);
        let own = self.owned();
        if self.has_master() && own.len > 0 {
            let mine = Host::F32(host[own.off..own.end()].to_vec());
            let dst = self.state_of(own, BufId::Master);
            self.backend.upload(&mut self.bufs, dst, &mine)?;
        }
        self.set_kernel_params(host)
    }

    /// The AdamW moments (m, v) of the owned part ([`Gpt::owned`]: all of them but under
    /// ZeRO-1) on the host, when an update has made them.
    pub fn optimizer_state(&self) -> Result<Option<(Vec<f32>, Vec<f32>)>> {
        if !self.bufs.has(BufId::AdamM) {
            return Ok(None);
        }
        let own = self.owned();
        Ok(Some((self.download_f32(self.state_of(own, BufId::AdamM))?, self.download_f32(self.state_of(own, BufId::AdamV))?)))
    }

    /// Restores AdamW moments saved by [`Gpt::optimizer_state`]: all of them, of which the owned
    /// part is kept.
    pub fn set_optimizer_state(&mut self, m: &[f32], v: &[f32]) -> Result<()> {
        let own = self.owned();
        for (id, x) in [(BufId::AdamM, m), (BufId::AdamV, v)] {
            assert_eq!(x.len(), self.layout.total);
            let buf = self.backend.alloc(own.len.max(1), DType::F32)?;
            self.bufs.set(id, buf);
            if own.len > 0 {
                let dst = self.state_of(own, id);
                self.backend.upload(&mut self.bufs, dst, &Host::F32(x[own.off..own.end()].to_vec()))?;
            }
        }
        Ok(())
    }

    /// Layer `l`'s key and value caches, (maxT, C) each, allocated on first use.
    fn kv_cache(&mut self, l: usize) -> (Tensor, Tensor) {
        let (nl, maxt, c) = (self.cfg.n_layer, self.cfg.block_size, self.cfg.n_embd);
        let all = Tensor::new(BufId::KvCache, Span::new(0, 2 * nl * maxt * c), &[2, nl, maxt, c], self.low());
        (all.index(0).index(l), all.index(1).index(l))
    }

    /// Sampling: feeds `token` at position `pos` (the KV cache holds positions 0..pos) and
    /// returns the logits (V) for the next one. The same blocks as training, with attention
    /// against the cache.
    pub fn decode(&mut self, token: u32, pos: usize) -> Result<Vec<f32>> {
        assert!(pos < self.cfg.block_size, "position {pos} past the context of {}", self.cfg.block_size);
        if !self.bufs.has(BufId::KvCache) {
            let n = 2 * self.cfg.n_layer * self.cfg.block_size * self.cfg.n_embd;
            let buf = self.backend.alloc(n, self.low())?;
            self.bufs.set(BufId::KvCache, buf);
        }
        self.set_batch(&[token], &[0], 1, 1)?;
        let a = self.acts.as_ref().unwrap();
        let (al, tokens) = (a.layout, a.tokens);
        self.embed(&al, tokens.index(0), pos, Dropout::NONE)?;
        self.blocks(&al, Attend::Cached { pos })?;
        self.head(&al)?;
        self.acts.as_mut().unwrap().logits_hold_grad = false;
        let mut logits = self.logits()?;
        logits.truncate(self.cfg.vocab_size);
        Ok(logits)
    }
}

/// The initial parameters on the host (a pure function of the config and seed).
pub fn init_params(cfg: &ModelConfig, layout: &ParamLayout, seed: u64) -> Vec<f32> {
    let mut host = vec![0.0f32; layout.total];
    let proj_std = 0.02 / (2.0 * cfg.n_layer as f32).sqrt();
    for (ti, t) in layout.tensors.iter().enumerate() {
        let dst = &mut host[t.span.off..t.span.end()];
        let key = rng::key(seed, rng::STREAM_INIT, &[ti as u64]);
        match t.name {
            "ln1w" | "ln2w" | "lnfw" => dst.fill(1.0),
            "wte" | "wpe" | "qkvw" | "fcw" | "attprojw" | "fcprojw" => {
                let std = if t.name.ends_with("projw") { proj_std } else { 0.02 };
                let rows_used = if t.name == "wte" { cfg.vocab_size * cfg.n_embd } else { dst.len() };
                for (i, x) in dst[..rows_used].iter_mut().enumerate() {
                    *x = std * rng::normal(key, i as u64);
                }
            }
            _ => {} // biases: zero
        }
    }
    host
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;

    fn tiny() -> (Gpt<Cpu>, Vec<u32>) {
        let cfg = ModelConfig { n_layer: 2, n_head: 2, n_embd: 8, block_size: 4, vocab_size: 7, padded_vocab_size: 8, bias: false };
        (Gpt::init(Cpu::FAST, cfg, 1).unwrap(), vec![1, 2, 3, 4, 5, 6, 0, 1])
    }

    #[test]
    fn a_forward_with_gradient_leaves_dlogits_where_the_logits_were() {
        let (mut g, x) = tiny();
        g.loss(&x, &x, 2, 4).unwrap();
        let logits = g.logits().unwrap();
        g.forward(None, Some(1.0)).unwrap();
        let a = g.acts.as_ref().unwrap();
        let dlogits = g.backend.download(&g.bufs, a.layout.logits).unwrap().into_f32();
        // each row of dlogits is (softmax - onehot) / (B T), and zero in the padded column
        for (row, (l, d)) in logits.chunks(8).zip(dlogits.chunks(8)).enumerate() {
            let z: f32 = l[..7].iter().map(|v| v.exp()).sum();
            for i in 0..7 {
                let want = (l[i].exp() / z - if i == x[row] as usize { 1.0 } else { 0.0 }) / 8.0;
                assert!((d[i] - want).abs() < 1e-6, "row {row}, column {i}: {} vs {want}", d[i]);
            }
            assert_eq!(d[7], 0.0, "the padded column gets no gradient");
        }
    }

    #[test]
    #[should_panic(expected = "overwrote them with their gradient")]
    fn the_logits_are_not_read_after_a_forward_with_gradient() {
        let (mut g, x) = tiny();
        g.set_batch(&x, &x, 2, 4).unwrap();
        g.forward(None, Some(1.0)).unwrap();
        let _ = g.logits();
    }

    /// ZeRO-1's pieces, three ranks in one process: each rank's step sums hold its own pieces'
    /// sums of squares (zero elsewhere), which add up to the whole model's norm bit for bit; and
    /// each rank's update of its part gives the whole model's weights and moments there.
    #[test]
    fn zero_1_parts_give_the_whole_models_norm_and_update() {
        for precision in [Precision::F32, Precision::Bf16] {
            let cfg = ModelConfig { n_layer: 2, n_head: 2, n_embd: 8, block_size: 4, vocab_size: 7, padded_vocab_size: 8, bias: true };
            let x = vec![1, 2, 3, 4, 5, 6, 0, 1];
            let step = |g: &mut Gpt<Cpu>| -> Vec<f64> {
                g.zero_grad().unwrap();
                g.reset_scalars().unwrap();
                g.set_batch(&x, &x[1..].iter().chain(&[2]).copied().collect::<Vec<_>>(), 2, 4).unwrap();
                g.forward(None, Some(1.0)).unwrap();
                g.backward(None).unwrap();
                g.accumulate_grad_squares().unwrap();
                g.read_scalars().unwrap()
            };
            let hp = AdamW { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8 };
            let mut whole = Gpt::init_in(Cpu::FAST, cfg.clone(), 1, precision).unwrap();
            let start = whole.params_host().unwrap();
            let norm = step(&mut whole)[Scalar::GradSquares as usize];
            whole.update(hp, 0.1, 1, 1.0).unwrap();
            let (w, (m, _)) = (whole.params_host().unwrap(), whole.optimizer_state().unwrap().unwrap());
            let spans = whole.layout.pieces();
            let parts = crate::dist::zero::parts(&spans, 3);
            let mut per_piece = vec![0.0; spans.len()];
            for (r, own) in parts.iter().enumerate() {
                let mut g = Gpt::zeros_in(Cpu::FAST, cfg.clone(), precision).unwrap();
                g.shard_optimizer(parts.clone(), r).unwrap();
                g.set_params(&start).unwrap();
                let sums = step(&mut g);
                assert_eq!(sums[Scalar::GradSquares as usize], 0.0);
                for (i, t) in spans.iter().enumerate() {
                    let mine = t.off >= own.off && t.end() <= own.end();
                    assert_eq!(sums[N_SCALARS + i] != 0.0, mine, "{precision:?}: rank {r}, piece {i}");
                    per_piece[i] += sums[N_SCALARS + i];
                }
                g.update(hp, 0.1, 1, 1.0).unwrap();
                let range = own.off..own.end();
                assert_eq!(g.owned_weights().unwrap(), w[range.clone()], "{precision:?}: rank {r}'s weights");
                assert_eq!(g.optimizer_state().unwrap().unwrap().0, m[range], "{precision:?}: rank {r}'s moments");
            }
            assert_eq!(crate::optim::squares_in_layout_order(&per_piece).to_bits(), norm.to_bits(), "{precision:?}");
        }
    }

    #[test]
    #[should_panic(expected = "backward needs a forward with a grad_scale")]
    fn backward_needs_a_forward_with_gradient() {
        let (mut g, x) = tiny();
        g.loss(&x, &x, 2, 4).unwrap();
        let _ = g.backward(None);
    }
}
