//! The GPT forward and backward passes: a flat list of kernel calls, and the same list reversed.

use super::{ActLayout, ModelConfig, ParamLayout};
use crate::backend::{AdamW, Backend, Dropout, Span};
use crate::rng;

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

/// Activations for one micro-batch shape: layouts, values, gradients.
struct Acts<B: Backend> {
    layout: ActLayout,
    /// The layout of `dacts`: one layer's worth, reused by every layer ([`ActLayout::one_layer`]).
    grad_layout: ActLayout,
    acts: B::Buf,
    dacts: B::Buf,
    /// Whether the last forward overwrote the logits with their gradient.
    logits_hold_grad: bool,
}

/// A GPT-2 model on backend `B`: parameters, their gradients, AdamW moments and activations,
/// each one allocation owned here and handed to the backend's kernels as spans.
pub struct Gpt<B: Backend> {
    pub cfg: ModelConfig,
    pub layout: ParamLayout,
    pub backend: B,
    pub params: B::Buf,    // (total params)
    pub grads: B::Buf,     // (total params)
    pub m: Option<B::Buf>, // (total params), AdamW first moment, allocated on first update
    pub v: Option<B::Buf>, // (total params), AdamW second moment
    acts: Option<Acts<B>>,
}

impl<B: Backend> Gpt<B> {
    /// A model with all parameters zero.
    pub fn zeros(backend: B, cfg: ModelConfig) -> Self {
        let layout = ParamLayout::new(&cfg);
        let params = backend.alloc(layout.total);
        let grads = backend.alloc(layout.total);
        Gpt { cfg, layout, backend, params, grads, m: None, v: None, acts: None }
    }

    /// nanoGPT's initialisation: N(0, 0.02) for embeddings and linear weights, N(0,
    /// 0.02/sqrt(2 n_layer)) for the residual projections (`c_proj`), zero biases, unit
    /// LayerNorm weights. Padding rows of `wte` are zero.
    pub fn init(backend: B, cfg: ModelConfig, seed: u64) -> Self {
        let mut g = Self::zeros(backend, cfg);
        let host = init_params(&g.cfg, &g.layout, seed);
        g.backend.upload(&mut g.params, 0, &host);
        g
    }

    pub fn num_params(&self) -> usize {
        self.layout.total
    }

    /// Ensures activation buffers for micro-batch shape (b, t) exist.
    fn ensure_acts(&mut self, b: usize, t: usize) {
        if self.acts.as_ref().is_some_and(|a| a.layout.b == b && a.layout.t == t) {
            return;
        }
        self.acts = None; // free the old ones first
        let layout = ActLayout::new(&self.cfg, b, t);
        let grad_layout = ActLayout::one_layer(&self.cfg, b, t);
        let acts = self.backend.alloc(layout.total);
        let dacts = self.backend.alloc(grad_layout.total);
        self.acts = Some(Acts { layout, grad_layout, acts, dacts, logits_hold_grad: false });
    }

    /// Activation elements for micro-batch shape (b, t) (values and gradients), f32.
    pub fn activation_elements(cfg: &ModelConfig, b: usize, t: usize) -> usize {
        ActLayout::new(cfg, b, t).total + ActLayout::one_layer(cfg, b, t).total
    }

    /// Forward pass over `tokens(B,T)` with `targets(B,T)`; returns the mean loss. With
    /// `grad_scale = Some(s)`, the fused classifier also writes dloss/dlogits scaled by `s`
    /// (e.g. `1 / grad_accum`) over the logits, ready for [`Gpt::backward`]; [`Gpt::logits`]
    /// then has nothing to give until a forward without it.
    pub fn forward(
        &mut self,
        tokens: &[u32],
        targets: &[u32],
        b: usize,
        t: usize,
        dropout: Option<DropoutCtx>,
        grad_scale: Option<f32>,
    ) -> f32 {
        assert!(t <= self.cfg.block_size && tokens.len() == b * t && targets.len() == b * t);
        self.ensure_acts(b, t);
        let Gpt { cfg, layout: p, backend: be, params, acts, .. } = self;
        let Acts { layout: a, acts, logits_hold_grad, .. } = acts.as_mut().unwrap();
        let (l_n, c) = (cfg.n_layer, cfg.n_embd);

        be.encoder_forward(acts, a.encoded, params, p.wte, p.wpe, tokens, (b, t), DropoutCtx::at(dropout, 0, 0));
        for l in 0..l_n {
            let residual = if l == 0 { a.encoded } else { a.layer(a.residual3, l - 1) };
            let ln1 = a.layer(a.ln1, l);
            let qkv = a.layer(a.qkv, l);
            let atty = a.layer(a.atty, l);
            let attproj = a.layer(a.attproj, l);
            let residual2 = a.layer(a.residual2, l);
            let ln2 = a.layer(a.ln2, l);
            let fch = a.layer(a.fch, l);
            let fch_gelu = a.layer(a.fch_gelu, l);
            let fcproj = a.layer(a.fcproj, l);

            be.layernorm_forward(
                acts,
                ln1,
                a.layer(a.ln1_mean, l),
                a.layer(a.ln1_rstd, l),
                residual,
                params,
                p.layer(p.ln1w, l),
                p.ln1b.map(|s| p.layer(s, l)),
            );
            be.matmul_forward(acts, qkv, ln1, params, p.linear(p.qkvw, p.qkvb, l), c);
            be.attention_forward(acts, atty, a.layer(a.att_stats, l), qkv, b, t, c, cfg.n_head, DropoutCtx::at(dropout, l, 1));
            be.matmul_forward(acts, attproj, atty, params, p.linear(p.attprojw, p.attprojb, l), c);
            be.dropout(acts, attproj, DropoutCtx::at(dropout, l, 2));
            be.residual_forward(acts, residual2, residual, attproj);
            be.layernorm_forward(
                acts,
                ln2,
                a.layer(a.ln2_mean, l),
                a.layer(a.ln2_rstd, l),
                residual2,
                params,
                p.layer(p.ln2w, l),
                p.ln2b.map(|s| p.layer(s, l)),
            );
            be.matmul_forward(acts, fch, ln2, params, p.linear(p.fcw, p.fcb, l), c);
            be.gelu_forward(acts, fch_gelu, fch);
            be.matmul_forward(acts, fcproj, fch_gelu, params, p.linear(p.fcprojw, p.fcprojb, l), 4 * c);
            be.dropout(acts, fcproj, DropoutCtx::at(dropout, l, 3));
            be.residual_forward(acts, a.layer(a.residual3, l), residual2, fcproj);
        }
        let last = a.layer(a.residual3, l_n - 1);
        be.layernorm_forward(acts, a.lnf, a.lnf_mean, a.lnf_rstd, last, params, p.lnfw, p.lnfb);
        be.matmul_forward(acts, a.logits, a.lnf, params, crate::backend::Linear { w: p.wte, b: None }, c);
        // d(mean loss)/d(loss of one position) = 1 / (B T), times the caller's scale
        let grad = grad_scale.map(|s| s / (b * t) as f32);
        be.crossentropy_forward(acts, a.logits, a.losses, targets, cfg.vocab_size, cfg.padded_vocab_size, grad);
        *logits_hold_grad = grad.is_some();
        (be.sum(acts, a.losses) / (b * t) as f64) as f32
    }

    /// Backward pass for the last forward (which must have been given a `grad_scale`):
    /// accumulates into the parameter gradients.
    pub fn backward(&mut self, tokens: &[u32], dropout: Option<DropoutCtx>) {
        let Gpt { cfg, layout: p, backend: be, params, grads, acts, .. } = self;
        let Acts { layout: a, grad_layout: g, acts, dacts, logits_hold_grad } = acts.as_mut().expect("backward before forward");
        assert!(*logits_hold_grad, "backward needs a forward with a grad_scale");
        let (l_n, c, b, t) = (cfg.n_layer, cfg.n_embd, a.b, a.t);
        // Activation spans are layer l's (in `a`); gradient spans are the one layer's worth
        // in `g` that every layer reuses. The residual stream's gradient lives in one span,
        // `dres` (llm.c's scheme): dL/d residual3_l on entry to layer l. A residual add passes
        // its gradient unchanged to both inputs, so the branch's matmul reads `dres` as its
        // output gradient (through a dropout-masked copy when dropout is on), and then the
        // branch's LayerNorm backward accumulates into `dres` itself, which turns it into the
        // gradient of the add's other input: dL/d residual2_l after the MLP half, dL/d
        // residual3_(l-1) after the attention half, and below layer 0 the embedding output's.
        // Other gradients are overwritten by the op that produces them; ln_f's LayerNorm
        // accumulates into a zeroed `dres`.
        let dres = g.residual3;
        be.zero(dacts, dres);
        be.classifier_backward(dacts, g.lnf, grads, p.wte, acts, a.logits, a.lnf, params, p.wte, c);
        let last = a.layer(a.residual3, l_n - 1);
        be.layernorm_backward(dacts, dres, g.lnf, grads, p.lnfw, p.lnfb, acts, last, a.lnf_mean, a.lnf_rstd, params, p.lnfw);
        // The output gradient of a residual branch: `dres` itself, or a copy of it under
        // the branch's dropout mask.
        let branch = |be: &B, dacts: &mut B::Buf, copy: Span, drop: Dropout| {
            if !drop.active() {
                return dres;
            }
            be.copy(dacts, copy, dres);
            be.dropout(dacts, copy, drop);
            copy
        };
        for l in (0..l_n).rev() {
            let residual = if l == 0 { a.encoded } else { a.layer(a.residual3, l - 1) };
            let residual2 = a.layer(a.residual2, l);
            let fch = a.layer(a.fch, l);
            let fch_gelu = a.layer(a.fch_gelu, l);
            let ln2 = a.layer(a.ln2, l);
            let atty = a.layer(a.atty, l);
            let qkv = a.layer(a.qkv, l);
            let ln1 = a.layer(a.ln1, l);

            // residual3 = residual2 + dropout(fcproj)
            let dfcproj = branch(be, dacts, g.fcproj, DropoutCtx::at(dropout, l, 3));
            be.matmul_backward(
                dacts,
                g.fch_gelu,
                dfcproj,
                grads,
                p.linear(p.fcprojw, p.fcprojb, l),
                acts,
                fch_gelu,
                params,
                p.layer(p.fcprojw, l),
                4 * c,
            );
            be.gelu_backward(dacts, g.fch, g.fch_gelu, acts, fch);
            be.matmul_backward(dacts, g.ln2, g.fch, grads, p.linear(p.fcw, p.fcb, l), acts, ln2, params, p.layer(p.fcw, l), c);
            be.layernorm_backward(
                dacts,
                dres,
                g.ln2,
                grads,
                p.layer(p.ln2w, l),
                p.ln2b.map(|s| p.layer(s, l)),
                acts,
                residual2,
                a.layer(a.ln2_mean, l),
                a.layer(a.ln2_rstd, l),
                params,
                p.layer(p.ln2w, l),
            );
            // residual2 = residual + dropout(attproj)
            let dattproj = branch(be, dacts, g.attproj, DropoutCtx::at(dropout, l, 2));
            be.matmul_backward(
                dacts,
                g.atty,
                dattproj,
                grads,
                p.linear(p.attprojw, p.attprojb, l),
                acts,
                atty,
                params,
                p.layer(p.attprojw, l),
                c,
            );
            be.attention_backward(
                dacts,
                g.qkv,
                g.atty,
                acts,
                qkv,
                a.layer(a.att_stats, l),
                b,
                t,
                c,
                cfg.n_head,
                DropoutCtx::at(dropout, l, 1),
            );
            be.matmul_backward(dacts, g.ln1, g.qkv, grads, p.linear(p.qkvw, p.qkvb, l), acts, ln1, params, p.layer(p.qkvw, l), c);
            be.layernorm_backward(
                dacts,
                dres,
                g.ln1,
                grads,
                p.layer(p.ln1w, l),
                p.ln1b.map(|s| p.layer(s, l)),
                acts,
                residual,
                a.layer(a.ln1_mean, l),
                a.layer(a.ln1_rstd, l),
                params,
                p.layer(p.ln1w, l),
            );
        }
        be.dropout(dacts, dres, DropoutCtx::at(dropout, 0, 0));
        be.encoder_backward(grads, p.wte, p.wpe, dacts, dres, tokens, (b, t));
    }

    pub fn zero_grad(&mut self) {
        let n = self.layout.total;
        self.backend.zero(&mut self.grads, Span::new(0, n));
    }

    /// Global L2 norm of all gradients.
    pub fn grad_norm(&self) -> f32 {
        let ss: f64 = self.layout.tensors.iter().map(|t| self.backend.sum_squares(&self.grads, t.span)).sum();
        ss.sqrt() as f32
    }

    /// One AdamW step (`step` counts from 1) on the gradients times `grad_scale` (see
    /// [`crate::optim::clip_coef`]; 1 for none); weight decay on the 2-D tensors only.
    pub fn update(&mut self, hp: AdamW, weight_decay: f32, step: u64, grad_scale: f32) {
        let n = self.layout.total;
        let m = self.m.get_or_insert_with(|| self.backend.alloc(n));
        let v = self.v.get_or_insert_with(|| self.backend.alloc(n));
        for t in &self.layout.tensors {
            let wd = if t.decay { weight_decay } else { 0.0 };
            self.backend.adamw_update(&mut self.params, &self.grads, m, v, t.span, hp, step, wd, grad_scale);
        }
    }

    /// The logits of the last forward, (B, T, Vp); that forward must have had no `grad_scale`
    /// (one with it leaves their gradient in their place).
    pub fn logits(&self) -> Vec<f32> {
        let a = self.acts.as_ref().expect("logits before forward");
        assert!(!a.logits_hold_grad, "logits after a forward with a grad_scale, which overwrote them with their gradient");
        self.backend.download(&a.acts, a.layout.logits)
    }

    /// The per-position losses of the last forward, (B, T).
    pub fn losses(&self) -> Vec<f32> {
        let a = self.acts.as_ref().expect("losses before forward");
        self.backend.download(&a.acts, a.layout.losses)
    }

    pub fn params_host(&self) -> Vec<f32> {
        self.backend.download(&self.params, Span::new(0, self.layout.total))
    }
    pub fn grads_host(&self) -> Vec<f32> {
        self.backend.download(&self.grads, Span::new(0, self.layout.total))
    }
    pub fn set_params(&mut self, host: &[f32]) {
        assert_eq!(host.len(), self.layout.total);
        self.backend.upload(&mut self.params, 0, host);
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
        (Gpt::init(Cpu::FAST, cfg, 1), vec![1, 2, 3, 4, 5, 6, 0, 1])
    }

    #[test]
    fn a_forward_with_gradient_leaves_dlogits_where_the_logits_were() {
        let (mut g, x) = tiny();
        g.forward(&x, &x, 2, 4, None, None);
        let logits = g.logits();
        g.forward(&x, &x, 2, 4, None, Some(1.0));
        let a = g.acts.as_ref().unwrap();
        let dlogits = g.backend.download(&a.acts, a.layout.logits);
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
        g.forward(&x, &x, 2, 4, None, Some(1.0));
        g.logits();
    }

    #[test]
    #[should_panic(expected = "backward needs a forward with a grad_scale")]
    fn backward_needs_a_forward_with_gradient() {
        let (mut g, x) = tiny();
        g.forward(&x, &x, 2, 4, None, None);
        g.backward(&x, None);
    }
}
