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
    /// The f32 layout (checkpoints, the CPU backend, master weights).
    pub fn new(cfg: &ModelConfig) -> Self {
        Self::with_dtype(cfg, DType::F32)
    }

    /// The layout with parameters stored as `dtype` (a low-precision copy beside f32 master
    /// weights under mixed precision; offsets are in elements, so they are the f32 layout's).
    pub fn with_dtype(cfg: &ModelConfig, dtype: DType) -> Self {
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
            let tensor = t.of(BufId::Params, dtype);
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
        Tensor::new(BufId::Params, Span::new(0, self.total), &[self.total], self.wte.dtype)
    }

    /// The buffer in pieces, in layout order: each tensor cut along its leading axis into runs of
    /// rows of at most [`PIECE`] elements (at least one row), so a stacked tensor's layer, or
    /// about a million elements of the token embedding. The gradient norm is summed piece by
    /// piece, and ZeRO-1 gives each rank a run of whole pieces: they depend on the model only,
    /// so that norm has the same bits however many ranks share the pieces.
    pub fn pieces(&self) -> Vec<Span> {
        let mut out = Vec::new();
        for t in &self.tensors {
            let per = Self::piece_len(t);
            for off in (0..t.span.len).step_by(per.max(1)) {
                out.push(Span::new(t.span.off + off, per.min(t.span.len - off)));
            }
        }
        out
    }

    /// The length of `t`'s pieces ([`ParamLayout::pieces`]; its last piece may be shorter): the
    /// most whole rows of its leading axis within [`PIECE`] elements, at least one row.
    pub fn piece_len(t: &ParamTensor) -> usize {
        let rows = t.shape.first().copied().unwrap_or(1).max(1);
        let row = t.span.len / rows;
        row * (PIECE / row.max(1)).clamp(1, rows)
    }
}

/// The most elements in one of [`ParamLayout::pieces`], but where a single row is more.
pub const PIECE: usize = 1 << 20;

/// Which activations the backward recomputes instead of keeping them for every layer (llm.c's
/// `-r`; the config's `recompute` level). A recomputed tensor is stored for one layer only (a
/// leading axis of 1 instead of `L`): the forward writes each layer's into that one slot, where
/// the next matmul reads it at once, and the backward writes it again from the same kept inputs
/// just before its matmul's backward reads it. The same op on the same inputs: the results are
/// bitwise those of keeping it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Recompute {
    /// Level 0: every layer's activations are kept.
    #[default]
    Off,
    /// Level 1: GELU's output `fch_gelu` (`4 B T C` per layer), recomputed from `fch`.
    Gelu,
    /// Level 2: GELU's output and both LayerNorms' `ln1` and `ln2` (`6 B T C` per layer); their
    /// means and rstds stay kept (and are written again with the same values).
    GeluAndLayerNorm,
}

impl Recompute {
    /// The levels' meanings, for the error on a bad one.
    pub const LEVELS: &'static str = "0 keeps every activation, 1 recomputes GELU in the backward, 2 GELU and both LayerNorms";

    /// The config's level (0, 1, 2); None for any other.
    pub fn from_level(level: usize) -> Option<Self> {
        [Self::Off, Self::Gelu, Self::GeluAndLayerNorm].get(level).copied()
    }

    pub fn level(self) -> usize {
        self as usize
    }

    /// GELU's output is recomputed (levels 1 and 2).
    pub fn gelu(self) -> bool {
        self >= Self::Gelu
    }

    /// Both LayerNorm outputs are recomputed (level 2).
    pub fn layer_norm(self) -> bool {
        self == Self::GeluAndLayerNorm
    }

    /// What is recomputed, in words (None at level 0).
    pub fn describe(self) -> Option<&'static str> {
        match self {
            Self::Off => None,
            Self::Gelu => Some("GELU"),
            Self::GeluAndLayerNorm => Some("GELU and LayerNorm"),
        }
    }
}

/// The activation buffers for micro-batch `B` and sequence length `T`: the activations in
/// [`BufId::Acts`] (in the compute dtype) and their statistics in [`BufId::Stats`] (always f32:
/// LayerNorm means and rstds, attention row statistics, losses), so each buffer holds one
/// element type. The activation-gradient buffer ([`BufId::DActs`]) has the layout of
/// [`ActLayout::one_layer`]. Per-layer tensors have a leading `L` axis ([`Tensor::index`]),
/// or 1 for those the backward recomputes ([`Recompute`]; reach them through
/// [`ActLayout::ln1_at`], [`ActLayout::ln2_at`] and [`ActLayout::fch_gelu_at`]).
#[derive(Clone, Copy, Debug)]
pub struct ActLayout {
    pub b: usize,
    pub t: usize,
    pub recompute: Recompute,
    pub encoded: Tensor,   // (B, T, C)
    pub ln1: Tensor,       // (L, B, T, C); (1, B, T, C) when recomputed
    pub ln1_mean: Tensor,  // (L, B, T)
    pub ln1_rstd: Tensor,  // (L, B, T)
    pub qkv: Tensor,       // (L, B, T, 3C)
    pub atty: Tensor,      // (L, B, T, C)
    pub att_stats: Tensor, // (L, B, NH, T, 2): each attention row's softmax max and 1/sum
    pub attproj: Tensor,   // (L, B, T, C)
    pub residual2: Tensor, // (L, B, T, C)
    pub ln2: Tensor,       // (L, B, T, C); (1, B, T, C) when recomputed
    pub ln2_mean: Tensor,  // (L, B, T)
    pub ln2_rstd: Tensor,  // (L, B, T)
    pub fch: Tensor,       // (L, B, T, 4C)
    pub fch_gelu: Tensor,  // (L, B, T, 4C); (1, B, T, 4C) when recomputed
    pub fcproj: Tensor,    // (L, B, T, C)
    pub residual3: Tensor, // (L, B, T, C)
    pub lnf: Tensor,       // (B, T, C)
    pub lnf_mean: Tensor,  // (B, T)
    pub lnf_rstd: Tensor,  // (B, T)
    pub logits: Tensor,    // (B, T, Vp)
    pub losses: Tensor,    // (B, T)
    /// Elements of the activation buffer.
    pub total: usize,
    /// Elements of the statistics buffer (none in the gradient layout: statistics have no
    /// gradient).
    pub stats_total: usize,
}

impl ActLayout {
    /// The f32 layout.
    pub fn new(cfg: &ModelConfig, b: usize, t: usize, recompute: Recompute) -> Self {
        Self::with_dtype(cfg, b, t, DType::F32, recompute)
    }

    /// The layout with the activations that feed matmuls (and the residual stream and logits)
    /// stored as `dtype`; LayerNorm statistics, attention statistics and losses stay f32
    /// whatever it is (llm.c's mixed precision). What `recompute` names is kept for one layer.
    pub fn with_dtype(cfg: &ModelConfig, b: usize, t: usize, dtype: DType, recompute: Recompute) -> Self {
        Self::with_layers(cfg, cfg.n_layer, false, b, t, dtype, recompute)
    }

    /// Layer `l`'s first LayerNorm output (B, T, C): the shared slot when recomputed.
    pub fn ln1_at(&self, l: usize) -> Tensor {
        self.ln1.index(if self.recompute.layer_norm() { 0 } else { l })
    }

    /// Layer `l`'s second LayerNorm output (B, T, C): the shared slot when recomputed.
    pub fn ln2_at(&self, l: usize) -> Tensor {
        self.ln2.index(if self.recompute.layer_norm() { 0 } else { l })
    }

    /// Layer `l`'s GELU output (B, T, 4C): the shared slot when recomputed.
    pub fn fch_gelu_at(&self, l: usize) -> Tensor {
        self.fch_gelu.index(if self.recompute.gelu() { 0 } else { l })
    }

    /// `L` layers' worth of each per-layer tensor (one of those `recompute` names); for the
    /// gradients (`grads`), `encoded`, `residual2` and `logits` are empty (see
    /// [`ActLayout::one_layer`]).
    fn with_layers(cfg: &ModelConfig, l: usize, grads: bool, b: usize, t: usize, x: DType, recompute: Recompute) -> Self {
        let (c, nh, vp) = (cfg.n_embd, cfg.n_head, cfg.padded_vocab_size);
        let buf = if grads { BufId::DActs } else { BufId::Acts };
        let (mut off, mut stats_off) = (0, 0);
        // activations (`x`: in the compute dtype) in `buf`; statistics and losses (`f`) in
        // f32 in `Stats`, or nowhere for the gradients
        let (x, f) = (Some(x), None);
        let mut at = |dims: &[usize], dtype: Option<DType>| {
            let (b, off, dtype, dims) = match dtype {
                Some(d) => (buf, &mut off, d, dims),
                None if grads => (BufId::Stats, &mut stats_off, DType::F32, &[0][..]),
                None => (BufId::Stats, &mut stats_off, DType::F32, dims),
            };
            let len = dims.iter().product();
            let tensor = Tensor::new(b, Span::new(*off, len), dims, dtype);
            *off += len;
            tensor
        };
        let (none, keep) = (&[0][..], !grads);
        // layers of the recomputed tensors: one slot that every layer reuses
        let l_ln = if recompute.layer_norm() { 1 } else { l };
        let l_gelu = if recompute.gelu() { 1 } else { l };
        let encoded = if keep { at(&[b, t, c], x) } else { at(none, x) };
        let ln1 = at(&[l_ln, b, t, c], x);
        let ln1_mean = at(&[l, b, t], f);
        let ln1_rstd = at(&[l, b, t], f);
        let qkv = at(&[l, b, t, 3 * c], x);
        let atty = at(&[l, b, t, c], x);
        let att_stats = at(&[l, b, nh, t, 2], f);
        let attproj = at(&[l, b, t, c], x);
        let residual2 = if keep { at(&[l, b, t, c], x) } else { at(none, x) };
        let ln2 = at(&[l_ln, b, t, c], x);
        let ln2_mean = at(&[l, b, t], f);
        let ln2_rstd = at(&[l, b, t], f);
        let fch = at(&[l, b, t, 4 * c], x);
        let fch_gelu = at(&[l_gelu, b, t, 4 * c], x);
        let fcproj = at(&[l, b, t, c], x);
        let residual3 = at(&[l, b, t, c], x);
        let lnf = at(&[b, t, c], x);
        let lnf_mean = at(&[b, t], f);
        let lnf_rstd = at(&[b, t], f);
        let logits = if keep { at(&[b, t, vp], x) } else { at(none, x) };
        let losses = at(&[b, t], f);
        ActLayout {
            b,
            t,
            recompute,
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
            stats_total: stats_off,
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
        Self::one_layer_in(cfg, b, t, DType::F32)
    }

    /// [`ActLayout::one_layer`] with the gradients stored as `dtype` (the activations' type).
    pub fn one_layer_in(cfg: &ModelConfig, b: usize, t: usize, dtype: DType) -> Self {
        Self::with_layers(cfg, 1, true, b, t, dtype, Recompute::Off)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_buffer_in_order_a_layer_or_a_million_elements_each() {
        let gpt2 =
            ModelConfig { n_layer: 12, n_head: 12, n_embd: 768, block_size: 1024, vocab_size: 50257, padded_vocab_size: 50304, bias: true };
        for cfg in [gpt2.clone(), cfg()] {
            let l = ParamLayout::new(&cfg);
            let pieces = l.pieces();
            let mut next = 0;
            for p in &pieces {
                assert_eq!(p.off, next);
                assert!(p.len > 0);
                next = p.end();
                // never across tensors
                let t = l.tensors.iter().find(|t| t.span.off <= p.off && p.off < t.span.end()).unwrap();
                assert!(p.end() <= t.span.end(), "{p:?} crosses {}", t.name);
            }
            assert_eq!(next, l.total);
        }
        let l = ParamLayout::new(&gpt2);
        let of = |name: &str| {
            let t = l.tensor(name).unwrap().span;
            l.pieces().into_iter().filter(|p| p.off >= t.off && p.end() <= t.end()).map(|p| p.len).collect::<Vec<_>>()
        };
        // a stacked tensor: a piece per layer (a layer's rows are over a million elements)
        assert_eq!(of("fcw"), vec![4 * 768 * 768; 12]);
        // a small stacked one is a piece; the embedding is 1365 rows a piece, the rest last
        assert_eq!(of("ln1w"), vec![12 * 768]);
        let wte = of("wte");
        assert_eq!((wte.len(), wte[0], *wte.last().unwrap()), (37, 1365 * 768, (50304 - 36 * 1365) * 768));
    }

    fn cfg() -> ModelConfig {
        ModelConfig { n_layer: 2, n_head: 2, n_embd: 8, block_size: 4, vocab_size: 7, padded_vocab_size: 8, bias: true }
    }

    #[test]
    fn each_tensor_has_its_storage_type_and_each_buffer_one_type() {
        // under bf16 the activations and parameters are bf16; statistics and losses stay f32
        // in their own buffer, so every buffer holds one element type
        let a = ActLayout::with_dtype(&cfg(), 2, 4, DType::Bf16, Recompute::Off);
        for t in [a.encoded, a.ln1, a.qkv, a.atty, a.attproj, a.residual2, a.ln2, a.fch, a.fch_gelu, a.fcproj, a.residual3, a.lnf, a.logits]
        {
            assert_eq!((t.buf, t.dtype), (BufId::Acts, DType::Bf16), "{t:?}");
        }
        for t in [a.ln1_mean, a.ln1_rstd, a.att_stats, a.ln2_mean, a.ln2_rstd, a.lnf_mean, a.lnf_rstd, a.losses] {
            assert_eq!((t.buf, t.dtype), (BufId::Stats, DType::F32), "{t:?}");
        }
        let f32_layout = ActLayout::new(&cfg(), 2, 4, Recompute::Off);
        assert_eq!((a.total, a.stats_total), (f32_layout.total, f32_layout.stats_total), "offsets are in elements");
        let p = ParamLayout::with_dtype(&cfg(), DType::Bf16);
        assert_eq!((p.qkvw.dtype, p.all().dtype, p.total), (DType::Bf16, DType::Bf16, ParamLayout::new(&cfg()).total));
    }

    #[test]
    fn recomputed_tensors_keep_one_layer_and_every_layer_maps_to_it() {
        let (c, bt) = (cfg(), 2 * 4);
        let full = ActLayout::new(&c, 2, 4, Recompute::Off);
        for (r, dropped) in [(Recompute::Gelu, 4 * bt * 8), (Recompute::GeluAndLayerNorm, 6 * bt * 8)] {
            let a = ActLayout::new(&c, 2, 4, r);
            // (L - 1) layers' worth fewer elements; statistics are all kept
            assert_eq!(full.total - a.total, (c.n_layer - 1) * dropped, "{r:?}");
            assert_eq!((a.stats_total, a.ln1_mean.dims()[0], a.ln2_rstd.dims()[0]), (full.stats_total, 2, 2));
            assert_eq!(a.fch_gelu.dims(), [1, 2, 4, 32]);
            assert_eq!(a.fch_gelu_at(1), a.fch_gelu_at(0));
            assert_eq!(a.ln1_at(1) == a.ln1_at(0), r.layer_norm(), "{r:?}");
            assert_eq!(a.ln2.dims()[0], if r.layer_norm() { 1 } else { 2 });
        }
        assert_ne!(full.fch_gelu_at(1), full.fch_gelu_at(0));
        assert_eq!(full.ln2_at(1), full.ln2.index(1));
        let levels: Vec<_> = (0..4).map(Recompute::from_level).collect();
        assert_eq!(levels, [Some(Recompute::Off), Some(Recompute::Gelu), Some(Recompute::GeluAndLayerNorm), None]);
        assert!(levels.iter().flatten().enumerate().all(|(i, r)| r.level() == i));
    }
}
