//! Where every tensor lives in the one parameter buffer and the one activation buffer.

use super::ModelConfig;
use crate::backend::{Linear, Span};

/// One named parameter tensor.
#[derive(Clone, Debug)]
pub struct ParamTensor {
    /// Our name, e.g. `qkvw`; per-layer tensors are stacked along a leading `L` axis.
    pub name: &'static str,
    pub shape: Vec<usize>,
    pub span: Span,
    /// Weight decay applies (nanoGPT's configure_optimizers: tensors of 2 or more dims, per layer).
    pub decay: bool,
}

/// The parameter buffer, in llm.c's order. Linear weights are `(OC, IC)` like `nn.Linear`.
#[derive(Clone, Debug)]
pub struct ParamLayout {
    pub wte: Span,              // (Vp, C), tied to lm_head
    pub wpe: Span,              // (maxT, C)
    pub ln1w: Span,             // (L, C)
    pub ln1b: Option<Span>,     // (L, C)
    pub qkvw: Span,             // (L, 3C, C)
    pub qkvb: Option<Span>,     // (L, 3C)
    pub attprojw: Span,         // (L, C, C)
    pub attprojb: Option<Span>, // (L, C)
    pub ln2w: Span,             // (L, C)
    pub ln2b: Option<Span>,     // (L, C)
    pub fcw: Span,              // (L, 4C, C)
    pub fcb: Option<Span>,      // (L, 4C)
    pub fcprojw: Span,          // (L, C, 4C)
    pub fcprojb: Option<Span>,  // (L, C)
    pub lnfw: Span,             // (C)
    pub lnfb: Option<Span>,     // (C)
    pub tensors: Vec<ParamTensor>,
    pub total: usize,
    pub n_layer: usize,
}

impl ParamLayout {
    pub fn new(cfg: &ModelConfig) -> Self {
        let (l, c, vp, maxt) = (cfg.n_layer, cfg.n_embd, cfg.padded_vocab_size, cfg.block_size);
        let mut tensors = Vec::new();
        let mut off = 0;
        let mut add = |name: &'static str, shape: Vec<usize>, decay: bool, present: bool| -> Option<Span> {
            if !present {
                return None;
            }
            let len = shape.iter().product();
            let span = Span::new(off, len);
            off += len;
            tensors.push(ParamTensor { name, shape, span, decay });
            Some(span)
        };
        let b = cfg.bias;
        let wte = add("wte", vec![vp, c], true, true).unwrap();
        let wpe = add("wpe", vec![maxt, c], true, true).unwrap();
        let ln1w = add("ln1w", vec![l, c], false, true).unwrap();
        let ln1b = add("ln1b", vec![l, c], false, b);
        let qkvw = add("qkvw", vec![l, 3 * c, c], true, true).unwrap();
        let qkvb = add("qkvb", vec![l, 3 * c], false, b);
        let attprojw = add("attprojw", vec![l, c, c], true, true).unwrap();
        let attprojb = add("attprojb", vec![l, c], false, b);
        let ln2w = add("ln2w", vec![l, c], false, true).unwrap();
        let ln2b = add("ln2b", vec![l, c], false, b);
        let fcw = add("fcw", vec![l, 4 * c, c], true, true).unwrap();
        let fcb = add("fcb", vec![l, 4 * c], false, b);
        let fcprojw = add("fcprojw", vec![l, c, 4 * c], true, true).unwrap();
        let fcprojb = add("fcprojb", vec![l, c], false, b);
        let lnfw = add("lnfw", vec![c], false, true).unwrap();
        let lnfb = add("lnfb", vec![c], false, b);
        ParamLayout {
            wte,
            wpe,
            ln1w,
            ln1b,
            qkvw,
            qkvb,
            attprojw,
            attprojb,
            ln2w,
            ln2b,
            fcw,
            fcb,
            fcprojw,
            fcprojb,
            lnfw,
            lnfb,
            tensors,
            total: off,
            n_layer: l,
        }
    }

    pub fn tensor(&self, name: &str) -> Option<&ParamTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Layer `l` of a stacked linear layer.
    pub fn linear(&self, w: Span, b: Option<Span>, l: usize) -> Linear {
        Linear { w: w.part(l, self.n_layer), b: b.map(|b| b.part(l, self.n_layer)) }
    }

    /// Layer `l` of a stacked per-layer tensor.
    pub fn layer(&self, s: Span, l: usize) -> Span {
        s.part(l, self.n_layer)
    }
}

/// The activation buffer for micro-batch `B` and sequence length `T`. The activation-gradient
/// buffer has the layout of [`ActLayout::one_layer`].
#[derive(Clone, Debug)]
pub struct ActLayout {
    pub b: usize,
    pub t: usize,
    pub encoded: Span,   // (B, T, C)
    pub ln1: Span,       // (L, B, T, C)
    pub ln1_mean: Span,  // (L, B, T)
    pub ln1_rstd: Span,  // (L, B, T)
    pub qkv: Span,       // (L, B, T, 3C)
    pub atty: Span,      // (L, B, T, C)
    pub att_stats: Span, // (L, B, NH, T, 2): each attention row's softmax max and 1/sum
    pub attproj: Span,   // (L, B, T, C)
    pub residual2: Span, // (L, B, T, C)
    pub ln2: Span,       // (L, B, T, C)
    pub ln2_mean: Span,  // (L, B, T)
    pub ln2_rstd: Span,  // (L, B, T)
    pub fch: Span,       // (L, B, T, 4C)
    pub fch_gelu: Span,  // (L, B, T, 4C)
    pub fcproj: Span,    // (L, B, T, C)
    pub residual3: Span, // (L, B, T, C)
    pub lnf: Span,       // (B, T, C)
    pub lnf_mean: Span,  // (B, T)
    pub lnf_rstd: Span,  // (B, T)
    pub logits: Span,    // (B, T, Vp)
    pub losses: Span,    // (B, T)
    pub total: usize,
    pub n_layer: usize,
}

impl ActLayout {
    pub fn new(cfg: &ModelConfig, b: usize, t: usize) -> Self {
        Self::with_layers(cfg, cfg.n_layer, false, b, t)
    }

    /// `L` layers' worth of each per-layer tensor; for the gradients (`grads`), `encoded`,
    /// `residual2` and `logits` are empty (see [`ActLayout::one_layer`]).
    fn with_layers(cfg: &ModelConfig, l: usize, grads: bool, b: usize, t: usize) -> Self {
        let (c, nh, vp) = (cfg.n_embd, cfg.n_head, cfg.padded_vocab_size);
        let bt = b * t;
        let mut off = 0;
        let mut add = |len: usize| {
            let s = Span::new(off, len);
            off += len;
            s
        };
        let encoded = add(if grads { 0 } else { bt * c });
        let ln1 = add(l * bt * c);
        let ln1_mean = add(l * bt);
        let ln1_rstd = add(l * bt);
        let qkv = add(l * bt * 3 * c);
        let atty = add(l * bt * c);
        let att_stats = add(l * b * nh * t * 2);
        let attproj = add(l * bt * c);
        let residual2 = add(if grads { 0 } else { l * bt * c });
        let ln2 = add(l * bt * c);
        let ln2_mean = add(l * bt);
        let ln2_rstd = add(l * bt);
        let fch = add(l * bt * 4 * c);
        let fch_gelu = add(l * bt * 4 * c);
        let fcproj = add(l * bt * c);
        let residual3 = add(l * bt * c);
        let lnf = add(bt * c);
        let lnf_mean = add(bt);
        let lnf_rstd = add(bt);
        let logits = add(if grads { 0 } else { bt * vp });
        let losses = add(bt);
        ActLayout {
            b,
            t,
            encoded,
            ln1,
            ln1_mean,
            ln1_rstd,
            qkv,
            atty,
            att_stats,
            attproj,
            residual2,
            ln2,
            ln2_mean,
            ln2_rstd,
            fch,
            fch_gelu,
            fcproj,
            residual3,
            lnf,
            lnf_mean,
            lnf_rstd,
            logits,
            losses,
            total: off,
            n_layer: l,
        }
    }

    /// The activation-gradient buffer: the same tensors with a single layer's worth of each
    /// per-layer one, which every layer's backward reuses in turn (each layer's gradients are
    /// produced and consumed within its own backward; only the residual stream's gradient
    /// crosses layers, and it lives in `residual3`, updated in place layer by layer). So
    /// the gradients need one layer's memory, not `L` layers' (llm.c's idea). No logits: their
    /// gradient overwrites the logits themselves (see `Backend::crossentropy_forward`). No
    /// `encoded` or `residual2`: the residual stream's gradient stays in `residual3` from the
    /// top of the model to the embeddings (see `Gpt::backward`).
    pub fn one_layer(cfg: &ModelConfig, b: usize, t: usize) -> Self {
        Self::with_layers(cfg, 1, true, b, t)
    }

    /// Layer `l` of a stacked activation.
    pub fn layer(&self, s: Span, l: usize) -> Span {
        s.part(l, self.n_layer)
    }
}
