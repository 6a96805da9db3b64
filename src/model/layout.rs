//! Where every tensor lives in the one parameter buffer and the one activation buffer.

use super::ModelConfig;
use crate::backend::{BufId, DType, Span, Tensor};

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

impl ParamTensor {
    /// This tensor in buffer `buf` (parameters, gradients, moments: one layout) of type `dtype`.
    pub fn of(&self, buf: BufId, dtype: DType) -> Tensor {
        Tensor::new(buf, self.span, &self.shape, dtype)
    }
}

/// The parameter buffer, in llm.c's order, as tensors of [`BufId::Params`]. Linear weights are
/// `(OC, IC)` like `nn.Linear`. Gradients, AdamW moments and master weights share this layout
/// ([`Tensor::of`] names the same place in their buffers).
#[derive(Clone, Debug)]
pub struct ParamLayout {
    pub wte: Tensor,              // (Vp, C), tied to lm_head
    pub wpe: Tensor,              // (maxT, C)
    pub ln1w: Tensor,             // (L, C)
    pub ln1b: Option<Tensor>,     // (L, C)
    pub qkvw: Tensor,             // (L, 3C, C)
    pub qkvb: Option<Tensor>,     // (L, 3C)
    pub attprojw: Tensor,         // (L, C, C)
    pub attprojb: Option<Tensor>, // (L, C)
    pub ln2w: Tensor,             // (L, C)
    pub ln2b: Option<Tensor>,     // (L, C)
    pub fcw: Tensor,              // (L, 4C, C)
    pub fcb: Option<Tensor>,      // (L, 4C)
    pub fcprojw: Tensor,          // (L, C, 4C)
    pub fcprojb: Option<Tensor>,  // (L, C)
    pub lnfw: Tensor,             // (C)
    pub lnfb: Option<Tensor>,     // (C)
    pub tensors: Vec<ParamTensor>,
    pub total: usize,
    pub n_layer: usize,
}

impl ParamLayout {
    pub fn new(cfg: &ModelConfig) -> Self {
        let (l, c, vp, maxt) = (cfg.n_layer, cfg.n_embd, cfg.padded_vocab_size, cfg.block_size);
        let mut tensors = Vec::new();
        let mut off = 0;
        let mut add = |name: &'static str, shape: Vec<usize>, decay: bool, present: bool| -> Option<Tensor> {
            if !present {
                return None;
            }
            let len = shape.iter().product();
            let t = ParamTensor { name, shape, span: Span::new(off, len), decay };
            off += len;
            let tensor = t.of(BufId::Params, DType::F32);
            tensors.push(t);
            Some(tensor)
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

    /// Every parameter tensor of the whole buffer, flat.
    pub fn all(&self) -> Tensor {
        Tensor::new(BufId::Params, Span::new(0, self.total), &[self.total], DType::F32)
    }
}

/// The activation buffer for micro-batch `B` and sequence length `T`, as tensors of
/// [`BufId::Acts`]; the activation-gradient buffer ([`BufId::DActs`]) has the layout of
/// [`ActLayout::one_layer`]. Per-layer tensors have a leading `L` axis ([`Tensor::index`]).
#[derive(Clone, Debug)]
pub struct ActLayout {
    pub b: usize,
    pub t: usize,
    pub encoded: Tensor,   // (B, T, C)
    pub ln1: Tensor,       // (L, B, T, C)
    pub ln1_mean: Tensor,  // (L, B, T)
    pub ln1_rstd: Tensor,  // (L, B, T)
    pub qkv: Tensor,       // (L, B, T, 3C)
    pub atty: Tensor,      // (L, B, T, C)
    pub att_stats: Tensor, // (L, B, NH, T, 2): each attention row's softmax max and 1/sum
    pub attproj: Tensor,   // (L, B, T, C)
    pub residual2: Tensor, // (L, B, T, C)
    pub ln2: Tensor,       // (L, B, T, C)
    pub ln2_mean: Tensor,  // (L, B, T)
    pub ln2_rstd: Tensor,  // (L, B, T)
    pub fch: Tensor,       // (L, B, T, 4C)
    pub fch_gelu: Tensor,  // (L, B, T, 4C)
    pub fcproj: Tensor,    // (L, B, T, C)
    pub residual3: Tensor, // (L, B, T, C)
    pub lnf: Tensor,       // (B, T, C)
    pub lnf_mean: Tensor,  // (B, T)
    pub lnf_rstd: Tensor,  // (B, T)
    pub logits: Tensor,    // (B, T, Vp)
    pub losses: Tensor,    // (B, T)
    pub total: usize,
}

impl ActLayout {
    pub fn new(cfg: &ModelConfig, b: usize, t: usize) -> Self {
        Self::with_layers(cfg, cfg.n_layer, false, b, t)
    }

    /// `L` layers' worth of each per-layer tensor; for the gradients (`grads`), `encoded`,
    /// `residual2` and `logits` are empty (see [`ActLayout::one_layer`]).
    fn with_layers(cfg: &ModelConfig, l: usize, grads: bool, b: usize, t: usize) -> Self {
        let (c, nh, vp) = (cfg.n_embd, cfg.n_head, cfg.padded_vocab_size);
        let buf = if grads { BufId::DActs } else { BufId::Acts };
        let mut off = 0;
        let mut add = |dims: &[usize]| {
            let len = dims.iter().product();
            let x = Tensor::new(buf, Span::new(off, len), dims, DType::F32);
            off += len;
            x
        };
        let (none, keep) = (&[0][..], !grads);
        let encoded = if keep { add(&[b, t, c]) } else { add(none) };
        let ln1 = add(&[l, b, t, c]);
        let ln1_mean = add(&[l, b, t]);
        let ln1_rstd = add(&[l, b, t]);
        let qkv = add(&[l, b, t, 3 * c]);
        let atty = add(&[l, b, t, c]);
        let att_stats = add(&[l, b, nh, t, 2]);
        let attproj = add(&[l, b, t, c]);
        let residual2 = if keep { add(&[l, b, t, c]) } else { add(none) };
        let ln2 = add(&[l, b, t, c]);
        let ln2_mean = add(&[l, b, t]);
        let ln2_rstd = add(&[l, b, t]);
        let fch = add(&[l, b, t, 4 * c]);
        let fch_gelu = add(&[l, b, t, 4 * c]);
        let fcproj = add(&[l, b, t, c]);
        let residual3 = add(&[l, b, t, c]);
        let lnf = add(&[b, t, c]);
        let lnf_mean = add(&[b, t]);
        let lnf_rstd = add(&[b, t]);
        let logits = if keep { add(&[b, t, vp]) } else { add(none) };
        let losses = add(&[b, t]);
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
        }
    }

    /// The activation-gradient buffer: the same tensors with a single layer's worth of each
    /// per-layer one, which every layer's backward reuses in turn (each layer's gradients are
    /// produced and consumed within its own backward; only the residual stream's gradient
    /// crosses layers, and it lives in `residual3`, updated in place layer by layer). So
    /// the gradients need one layer's memory, not `L` layers' (llm.c's idea). No logits: their
    /// gradient overwrites the logits themselves (see `ops::FusedClassifier`). No `encoded` or
    /// `residual2`: the residual stream's gradient stays in `residual3` from the top of the
    /// model to the embeddings (see `Gpt::backward`).
    pub fn one_layer(cfg: &ModelConfig, b: usize, t: usize) -> Self {
        Self::with_layers(cfg, 1, true, b, t)
    }
}
