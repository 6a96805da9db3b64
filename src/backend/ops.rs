//! The ops of a GPT-2 training step (and of sampling with a KV cache), one argument struct
//! each, gathered in [`Op`]: what a backend runs.
//!
//! Every operand is a [`Tensor`] (buffer, span, shape, element type); sizes come from the
//! shapes, so an op carries only what a shape cannot say (head count, vocabulary, dropout).
//! Conventions, as in llm.c's CUDA trainer: outputs are overwritten, except parameter gradients
//! (`dw`, `db`), which backward ops *accumulate* (`+=`, for gradient accumulation), and
//! LayerNorm's `dinp`, which accumulates into the residual stream's gradient.
//!
//! Shape legend: B = micro-batch, T = sequence length, C = channels, NH = heads, V/Vp = the
//! vocabulary and its padded size, OC/IC = a linear layer's output/input features, N = rows.

use super::{Scalar, Tensor};

/// Dropout for one call site: drop probability `p` and a key that, mixed with the element index,
/// decides each element. The same key regenerates the same mask in backward, so masks are never
/// stored, and the result does not depend on how work is split across threads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    pub p: f32,
    pub key: u64,
}

impl Dropout {
    pub const NONE: Dropout = Dropout { p: 0.0, key: 0 };
    pub fn active(&self) -> bool {
        self.p > 0.0
    }
    /// The multiplier for element `idx`: 0 when dropped, 1/(1-p) when kept.
    #[inline]
    pub fn scale(&self, idx: usize) -> f32 {
        let u = crate::rng::uniform_f32(crate::rng::mix(self.key, idx as u64));
        if u < self.p {
            0.0
        } else {
            1.0 / (1.0 - self.p)
        }
    }
}

/// AdamW hyper-parameters for one step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
}

/// Which linear layer a matmul is (for profiles; the math is the same).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Qkv,
    AttnProj,
    MlpFc,
    MlpProj,
    /// The classifier (`wte` tied as lm_head).
    LmHead,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Qkv => "matmul qkv",
            Role::AttnProj => "matmul attn proj",
            Role::MlpFc => "matmul mlp fc",
            Role::MlpProj => "matmul mlp proj",
            Role::LmHead => "matmul lm_head",
        }
    }
}

/// out(B,T,C) = wte[tokens] + wpe[pos0 + t], then embedding dropout.
#[derive(Clone, Copy, Debug)]
pub struct Embed {
    pub out: Tensor,    // (B, T, C)
    pub wte: Tensor,    // (Vp, C)
    pub wpe: Tensor,    // (maxT, C)
    pub tokens: Tensor, // (B, T) u32
    /// Position of the first token (0 in training; the cache length when sampling).
    pub pos0: usize,
    pub drop: Dropout,
}

/// dwte[tokens] += dout, dwpe[t] += dout (dout already through the dropout mask).
#[derive(Clone, Copy, Debug)]
pub struct EmbedBackward {
    pub dwte: Tensor,   // (Vp, C)
    pub dwpe: Tensor,   // (maxT, C)
    pub dout: Tensor,   // (B, T, C)
    pub tokens: Tensor, // (B, T) u32
    /// (B, T) u32: the positions 0..B*T sorted by token, equal tokens in position order
    /// ([`token_order`]): each token's rows are one run of it (the GPU's grouping; the CPU
    /// does not need it).
    pub order: Tensor,
}

/// The positions of `tokens` sorted by token, equal tokens in position order (a stable sort),
/// for [`EmbedBackward::order`]: uploaded with the batch, so that the GPU's embedding backward
/// finds each token's rows without scanning the batch once per vocabulary row.
pub fn token_order(tokens: &[u32]) -> Vec<u32> {
    let mut keys: Vec<u64> = tokens.iter().enumerate().map(|(i, &t)| (t as u64) << 32 | i as u64).collect();
    keys.sort_unstable(); // unique keys: the same order as a stable sort by token
    keys.into_iter().map(|k| k as u32).collect()
}

/// out(N,C), mean(N), rstd(N) = layernorm(inp(N,C)) with weight w(C) and optional bias b(C).
#[derive(Clone, Copy, Debug)]
pub struct LayerNorm {
    pub out: Tensor,
    pub mean: Tensor,
    pub rstd: Tensor,
    pub inp: Tensor,
    pub w: Tensor,
    pub b: Option<Tensor>,
}

/// dinp(N,C) += LayerNorm's input gradient; dw(C) += ..., db(C) += ... from dout(N,C) and the
/// forward's inp, mean, rstd and weight.
#[derive(Clone, Copy, Debug)]
pub struct LayerNormBackward {
    pub dinp: Tensor,
    pub dw: Tensor,
    pub db: Option<Tensor>,
    pub dout: Tensor,
    pub inp: Tensor,
    pub mean: Tensor,
    pub rstd: Tensor,
    pub w: Tensor,
}

/// out(N,OC) = inp(N,IC) @ w(OC,IC)^T + b(OC).
#[derive(Clone, Copy, Debug)]
pub struct Matmul {
    pub out: Tensor,
    pub inp: Tensor,
    pub w: Tensor,
    pub b: Option<Tensor>,
    pub role: Role,
}

/// dinp(N,IC) = dout(N,OC) @ w; dw(OC,IC) += dout^T @ inp; db(OC) += sum over rows of dout.
/// `dout` may be anywhere: the classifier's is in the activations, where [`FusedClassifier`]
/// left it in place of the logits. With `gelu` (this layer's input was gelu(pre)), dinp is the
/// gradient of `pre` instead: (dout @ w) * gelu'(pre), GELU's backward fused in (see [`GeluGrad`]).
#[derive(Clone, Copy, Debug)]
pub struct MatmulBackward {
    pub dinp: Tensor,
    pub dw: Tensor,
    pub db: Option<Tensor>,
    pub dout: Tensor,
    pub inp: Tensor,
    pub w: Tensor,
    pub gelu: Option<GeluGrad>,
    pub role: Role,
}

/// The GELU in front of a linear layer (the MLP's projection), for [`MatmulBackward`]: its input
/// `pre`(N,IC) from the forward, and `scratch`(N,IC) (dinp's type), where a backend that does
/// not fuse the two puts dout @ w before GELU's backward (the CPU: exactly the two ops the
/// model ran before). The CUDA backend fuses them in cuBLASLt's epilogue. (The forward's GELU
/// stays an op of its own: `recompute` reruns it, and a fused forward would compute it with
/// cuBLASLt's GELU the first time and gptrain's the second.)
#[derive(Clone, Copy, Debug)]
pub struct GeluGrad {
    pub pre: Tensor,
    pub scratch: Tensor,
}

/// Causal self-attention: out(B,T,C) from qkv(B,T,3C), and stats(B,NH,T,2), each attention
/// row's softmax maximum and 1/sum, from which the backward recomputes the probabilities (no
/// B x NH x T x T matrix is kept).
#[derive(Clone, Copy, Debug)]
pub struct Attention {
    pub out: Tensor,
    pub stats: Tensor,
    pub qkv: Tensor,
    pub n_head: usize,
    pub drop: Dropout,
}

/// dqkv(B,T,3C) from dout(B,T,C), the forward's qkv, its stats and its output out(B,T,C).
/// Each row's sum_j a_j dA_j is dout . out; the CUDA tensor-core kernels take it so (as
/// FlashAttention-2 does), the other kernels sum it over the row's keys and do not read `out`.
#[derive(Clone, Copy, Debug)]
pub struct AttentionBackward {
    pub dqkv: Tensor,
    pub dout: Tensor,
    pub qkv: Tensor,
    pub stats: Tensor,
    pub out: Tensor,
    pub n_head: usize,
    pub drop: Dropout,
}

/// One new position of sampling: writes qkv(1,1,3C)'s key and value into row `pos` of the
/// caches k, v (maxT, C), then out(1,1,C) = attention of its query over rows 0..=pos.
#[derive(Clone, Copy, Debug)]
pub struct AttentionDecode {
    pub out: Tensor,
    pub qkv: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub pos: usize,
    pub n_head: usize,
}

/// out = gelu_tanh(inp), elementwise.
#[derive(Clone, Copy, Debug)]
pub struct Gelu {
    pub out: Tensor,
    pub inp: Tensor,
}

/// dinp = gelu'(inp) * dout.
#[derive(Clone, Copy, Debug)]
pub struct GeluBackward {
    pub dinp: Tensor,
    pub dout: Tensor,
    pub inp: Tensor,
}

/// out = a + b, elementwise (a residual connection).
#[derive(Clone, Copy, Debug)]
pub struct Residual {
    pub out: Tensor,
    pub a: Tensor,
    pub b: Tensor,
}

/// llm.c's fused classifier: softmax + cross-entropy over the first `vocab` of the Vp logits
/// of each row of logits(N,Vp), writing each row's loss into losses(N); with
/// `grad_scale = Some(s)` it then overwrites the logits with dlogits = s * (softmax -
/// onehot(target)) (zero in padded columns), so neither the probabilities nor a second (N,Vp)
/// buffer is ever needed.
#[derive(Clone, Copy, Debug)]
pub struct FusedClassifier {
    pub logits: Tensor,
    pub losses: Tensor,
    pub targets: Tensor, // (N) u32
    pub vocab: usize,
    pub grad_scale: Option<f32>,
}

/// One AdamW step (torch.optim.AdamW semantics) on one parameter tensor (or, under ZeRO-1, the
/// part of it a rank owns: the step is elementwise), each gradient
/// multiplied by `grad_scale` as it is read (gradient clipping fused into the update, as llm.c
/// does); writes the f32 `master` weights when there are any and the parameters the kernels
/// read from them.
#[derive(Clone, Copy, Debug)]
pub struct AdamWStep {
    pub params: Tensor,
    pub master: Option<Tensor>,
    pub grads: Tensor,
    pub m: Tensor,
    pub v: Tensor,
    pub hp: AdamW,
    /// Counts from 1.
    pub step: u64,
    pub weight_decay: f32,
    pub grad_scale: f32,
}

/// Every op a backend runs.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    /// x = 0.
    Zero(Tensor),
    /// dst = src (a residual branch's output gradient, copied before its dropout mask).
    Copy {
        dst: Tensor,
        src: Tensor,
    },
    /// Applies dropout in place on x (forward), or its mask to dx (backward: the same op).
    Dropout {
        x: Tensor,
        drop: Dropout,
    },
    Embed(Embed),
    EmbedBackward(EmbedBackward),
    LayerNorm(LayerNorm),
    LayerNormBackward(LayerNormBackward),
    Matmul(Matmul),
    MatmulBackward(MatmulBackward),
    Attention(Attention),
    AttentionBackward(AttentionBackward),
    AttentionDecode(AttentionDecode),
    Gelu(Gelu),
    GeluBackward(GeluBackward),
    Residual(Residual),
    FusedClassifier(FusedClassifier),
    /// Scalar `into` += the mean of losses(N), rounded to f32 (the precision a loss is
    /// reported in), in a fixed order.
    AddMeanLoss {
        losses: Tensor,
        into: Scalar,
    },
    /// The sums of squares of x's pieces (runs of `per` elements, the last the rest), each in a
    /// fixed order that depends on the piece alone, added to `into` (f64 of [`BufId::Scalars`]):
    /// one slot ([`Scalar::GradSquares`]) taking them one after another, or one slot per piece
    /// (ZeRO-1).
    AddSquares {
        x: Tensor,
        per: usize,
        into: Tensor,
    },
    AdamWStep(AdamWStep),
}

impl Op {
    /// The op's name in profiles (`bench --profile`): matmuls by the layer they compute.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Zero(_) => "zero grads/activations",
            Op::Copy { .. } | Op::Residual(_) => "residual",
            Op::Dropout { .. } => "dropout",
            Op::Embed(_) | Op::EmbedBackward(_) => "encoder",
            Op::LayerNorm(_) | Op::LayerNormBackward(_) => "layernorm",
            Op::Matmul(m) => m.role.name(),
            Op::MatmulBackward(m) => m.role.name(),
            Op::Attention(_) => ATTENTION_FORWARD,
            Op::AttentionBackward(_) => ATTENTION_BACKWARD,
            Op::AttentionDecode(_) => "attention decode",
            Op::Gelu(_) | Op::GeluBackward(_) => "gelu",
            Op::FusedClassifier(_) => "softmax + cross-entropy",
            Op::AddMeanLoss { .. } => "loss",
            Op::AddSquares { .. } => "grad norm",
            Op::AdamWStep(_) => "adamw (+ clip)",
        }
    }
}

/// Calls `f(tensor, written)` on every tensor operand of an argument struct (`written`: the op
/// writes it, whether it overwrites, accumulates into or updates it in place).
macro_rules! operands {
    ($t:ident { out: [$($o:ident),*], out_opt: [$($oo:ident),*], ins: [$($i:ident),*], in_opt: [$($io:ident),*] }) => {
        impl $t {
            fn visit(&mut self, f: &mut dyn FnMut(&mut Tensor, bool)) {
                $( f(&mut self.$o, true); )*
                $( if let Some(t) = self.$oo.as_mut() { f(t, true); } )*
                $( f(&mut self.$i, false); )*
                $( if let Some(t) = self.$io.as_mut() { f(t, false); } )*
            }
        }
    };
}
operands!(Embed { out: [out], out_opt: [], ins: [wte, wpe, tokens], in_opt: [] });
operands!(EmbedBackward { out: [dwte, dwpe], out_opt: [], ins: [dout, tokens, order], in_opt: [] });
operands!(LayerNorm { out: [out, mean, rstd], out_opt: [], ins: [inp, w], in_opt: [b] });
operands!(LayerNormBackward { out: [dinp, dw], out_opt: [db], ins: [dout, inp, mean, rstd, w], in_opt: [] });
operands!(Matmul { out: [out], out_opt: [], ins: [inp, w], in_opt: [b] });

impl MatmulBackward {
    fn visit(&mut self, f: &mut dyn FnMut(&mut Tensor, bool)) {
        f(&mut self.dinp, true);
        f(&mut self.dw, true);
        if let Some(t) = self.db.as_mut() {
            f(t, true);
        }
        if let Some(g) = self.gelu.as_mut() {
            f(&mut g.scratch, true);
            f(&mut g.pre, false);
        }
        f(&mut self.dout, false);
        f(&mut self.inp, false);
        f(&mut self.w, false);
    }
}
operands!(Attention { out: [out, stats], out_opt: [], ins: [qkv], in_opt: [] });
operands!(AttentionBackward { out: [dqkv], out_opt: [], ins: [dout, qkv, stats, out], in_opt: [] });
operands!(AttentionDecode { out: [out, k, v], out_opt: [], ins: [qkv], in_opt: [] });
operands!(Gelu { out: [out], out_opt: [], ins: [inp], in_opt: [] });
operands!(GeluBackward { out: [dinp], out_opt: [], ins: [dout, inp], in_opt: [] });
operands!(Residual { out: [out], out_opt: [], ins: [a, b], in_opt: [] });
operands!(FusedClassifier { out: [logits, losses], out_opt: [], ins: [targets], in_opt: [] });
operands!(AdamWStep { out: [params, m, v], out_opt: [master], ins: [grads], in_opt: [] });

impl Op {
    /// Calls `f(tensor, written)` on every tensor operand (see [`Op::map`]).
    pub fn visit(&mut self, f: &mut dyn FnMut(&mut Tensor, bool)) {
        match self {
            Op::Zero(x) => f(x, true),
            Op::Copy { dst, src } => {
                f(dst, true);
                f(src, false)
            }
            Op::Dropout { x, .. } => f(x, true),
            Op::Embed(o) => o.visit(f),
            Op::EmbedBackward(o) => o.visit(f),
            Op::LayerNorm(o) => o.visit(f),
            Op::LayerNormBackward(o) => o.visit(f),
            Op::Matmul(o) => o.visit(f),
            Op::MatmulBackward(o) => o.visit(f),
            Op::Attention(o) => o.visit(f),
            Op::AttentionBackward(o) => o.visit(f),
            Op::AttentionDecode(o) => o.visit(f),
            Op::Gelu(o) => o.visit(f),
            Op::GeluBackward(o) => o.visit(f),
            Op::Residual(o) => o.visit(f),
            Op::FusedClassifier(o) => o.visit(f),
            Op::AddMeanLoss { losses, .. } => f(losses, false),
            Op::AddSquares { x, .. } => f(x, false),
            Op::AdamWStep(o) => o.visit(f),
        }
    }

    /// The op with every tensor operand replaced by `f(tensor, written)`: how a backend moves
    /// operands somewhere else (the CPU's widening of low-precision operands to f32).
    pub fn map(&self, f: &mut dyn FnMut(Tensor, bool) -> Tensor) -> Op {
        let mut op = *self;
        op.visit(&mut |t, w| *t = f(*t, w));
        op
    }

    /// Every tensor operand, with whether the op writes it.
    pub fn operands(&self) -> Vec<(Tensor, bool)> {
        let mut v = Vec::new();
        let mut op = *self;
        op.visit(&mut |t, w| v.push((*t, w)));
        v
    }
}

/// The profile's names for attention's two kernels.
pub const ATTENTION_FORWARD: &str = "attention forward";
pub const ATTENTION_BACKWARD: &str = "attention backward";

macro_rules! into_op {
    ($($t:ident),*) => { $( impl From<$t> for Op { fn from(x: $t) -> Op { Op::$t(x) } } )* };
}
into_op!(
    Embed,
    EmbedBackward,
    LayerNorm,
    LayerNormBackward,
    Matmul,
    MatmulBackward,
    Attention,
    AttentionBackward,
    AttentionDecode,
    Gelu,
    GeluBackward,
    Residual,
    FusedClassifier,
    AdamWStep
);

#[cfg(test)]
mod tests {
    use super::token_order;

    /// The GPU's embedding backward lets one warp add a token's whole run: two runs of one token
    /// would race on its row, and a run out of row order would change the sum's bits. So the
    /// order is a permutation, sorted by token, and in row order within a token.
    #[test]
    fn token_order_is_a_stable_sort_of_the_positions_by_token() {
        let tokens = [5u32, 1, 5, 0, 1, 5, 7, 0, 0, 5];
        let order = token_order(&tokens);
        assert_eq!(order, [3, 7, 8, 1, 4, 0, 2, 5, 9, 6]);
        let many: Vec<u32> = (0..5000u32).map(|i| i.wrapping_mul(2_654_435_761) % 97).collect();
        let order = token_order(&many);
        let mut seen = vec![false; many.len()];
        for w in order.windows(2) {
            let (a, b) = (w[0] as usize, w[1] as usize);
            assert!((many[a], a) < (many[b], b), "{a} before {b}");
        }
        for &i in &order {
            assert!(!std::mem::replace(&mut seen[i as usize], true), "{i} twice");
        }
        assert!(seen.iter().all(|&s| s));
        assert!(token_order(&[]).is_empty());
    }
}
