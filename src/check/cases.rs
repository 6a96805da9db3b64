//! The cases `gptrain check` runs: every op of a training step and of sampling, on small awkward
//! shapes, each operand in the buffer the model keeps it in and stored as ARCHITECTURE.md's
//! mixed-precision table says for the precision (in float32, everything f32).
//!
//! A case is a function of a [`Layout`], called once per precision: it must ask for the same
//! tensors in the same order every time (only their element types change), so that the
//! candidate's operands and the reference's correspond one to one.
//!
//! Shapes: B = 2, T = 7, C = 24, NH = 3 (head size 8), V = 13 padded to Vp = 16, maxT = 8.

use crate::backend::ops::{
    AdamWStep, Attention, AttentionBackward, AttentionDecode, Embed, EmbedBackward, FusedClassifier, Gelu, GeluBackward, GeluGrad,
    LayerNorm, LayerNormBackward, Matmul, MatmulBackward, Residual,
};
use crate::backend::tensor::N_BUFS;
use crate::backend::{AdamW, BufId, DType, Dropout, Host, Op, Plan, Precision, Role, Scalar, Span, Tensor, Work, N_SCALARS};
use crate::rng;

const B: usize = 2;
const T: usize = 7;
const C: usize = 24;
const NH: usize = 3;
const V: usize = 13;
const VP: usize = 16;
const MAXT: usize = 8;

/// The (B, T, C, NH) of the attention cases: head size 8 (the tiled kernels); the GPU's tiled and
/// tensor-core kernels at GPT-2's head size, over several blocks of query rows and tiles of
/// keys; a head size they are not compiled for (the one-warp-per-row kernels).
const ATTENTION: [(usize, usize, usize, usize); 3] = [(B, T, C, NH), (1, 200, 128, 2), (B, 9, 48, 2)];

/// What the cases at precision `p` will ask of a backend ([`crate::backend::Backend::prepare`]):
/// training at each attention shape, with biases, and sampling at the decode cases' shape.
pub(super) fn plans(p: Precision) -> Vec<Plan> {
    let storage = p.storage();
    let plan = |batch, n_embd, n_head, work| Plan { batch, n_embd, n_head, bias: true, storage, work, local_ranks: 1 };
    let train = ATTENTION.map(|(b, _, c, nh)| plan(b, c, nh, Work::Train));
    let decode = plan(1, C, NH, Work::Sample);
    train.into_iter().chain([decode]).collect()
}

/// The dropout of the cases that have one.
const DROP: Dropout = Dropout { p: 0.1, key: 0x5eed_0d20 };

/// How a tensor's first values are drawn.
#[derive(Clone, Copy, Debug)]
pub(super) enum Fill {
    /// Normal(0, s).
    Normal(f32),
    /// Uniform in [lo, hi).
    Uniform(f32, f32),
    /// Token ids in [0, n).
    Ids(u32),
    /// The positions of the ids `Ids(n)` draws from random stream `salt`, sorted by id
    /// (`token_order`: what `set_batch` uploads for the embedding backward).
    OrderOf(u32, u64),
}

/// How an output is compared with the reference's (see `super::rel_err`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// Overwritten by the op: the error is measured against the reference's largest value.
    Write,
    /// Added into (`+=`, from nonzero starting values): the error is measured against the
    /// largest change the reference made, so that a wrong increment cannot hide under large
    /// starting values.
    Add,
}

/// One tensor of a case, with how it starts.
#[derive(Clone, Copy, Debug)]
pub(super) struct Operand {
    pub tensor: Tensor,
    fill: Fill,
    /// Which random stream its values come from (equal for tensors that start equal).
    salt: u64,
}

/// n ids in [0, m) from random stream `salt`.
fn ids(salt: u64, n: usize, m: u32) -> Vec<u32> {
    let key = rng::key(0xc4ec, salt, &[]);
    (0..n).map(|i| rng::below(rng::mix(key, i as u64), m as u64) as u32).collect()
}

impl Operand {
    /// Its starting values, as the host data an upload of its element type takes: f32 for
    /// every float type (a low-precision buffer rounds them), u32 ids, f64 scalars.
    pub fn initial(&self) -> Host {
        let key = rng::key(0xc4ec, self.salt, &[]);
        let n = self.tensor.len();
        let x = |i: usize| match self.fill {
            Fill::Normal(s) => s * rng::normal(key, i as u64),
            Fill::Uniform(lo, hi) => lo + (hi - lo) * rng::uniform_f32(rng::mix(key, i as u64)),
            Fill::Ids(_) | Fill::OrderOf(..) => unreachable!("ids are u32"),
        };
        match (self.tensor.dtype, self.fill) {
            (DType::U32, Fill::Ids(m)) => Host::U32(ids(self.salt, n, m)),
            (DType::U32, Fill::OrderOf(m, salt)) => Host::U32(crate::backend::ops::token_order(&ids(salt, n, m))),
            (DType::F64, _) => Host::F64((0..n).map(|i| x(i) as f64).collect()),
            (DType::U32, _) | (_, Fill::Ids(_) | Fill::OrderOf(..)) => panic!("{self:?}: ids and u32 tensors go together"),
            _ => Host::F32((0..n).map(x).collect()),
        }
    }
}

/// The storage type of buffer `buf` in a run at precision `p` (ARCHITECTURE.md's table).
pub(super) fn storage(buf: BufId, p: Precision) -> DType {
    match buf {
        BufId::Params | BufId::Acts | BufId::DActs | BufId::KvCache => p.storage(),
        BufId::Grads | BufId::Master | BufId::AdamM | BufId::AdamV | BufId::Stats => DType::F32,
        BufId::Tokens => DType::U32,
        BufId::Scalars => DType::F64,
    }
}

/// One case's tensors at one precision, one after another in each buffer.
pub(super) struct Layout {
    precision: Precision,
    /// Elements used in each buffer, by [`BufId::index`].
    len: [usize; N_BUFS],
    pub operands: Vec<Operand>,
    /// (parameters, their master copy) as operand indices, under mixed precision.
    masters: Vec<(usize, usize)>,
}

impl Layout {
    pub fn new(precision: Precision) -> Layout {
        Layout { precision, len: [0; N_BUFS], operands: Vec::new(), masters: Vec::new() }
    }

    /// Elements the case uses in buffer `buf` (0: the case does not use it).
    pub fn len(&self, buf: BufId) -> usize {
        self.len[buf.index()]
    }

    /// The storage type of buffer `buf` in this layout.
    pub fn dtype(&self, buf: BufId) -> DType {
        storage(buf, self.precision)
    }

    fn push(&mut self, buf: BufId, dims: &[usize], fill: Fill, salt: u64) -> Tensor {
        let n = dims.iter().product();
        let tensor = Tensor::new(buf, Span::new(self.len[buf.index()], n), dims, self.dtype(buf));
        self.len[buf.index()] += n;
        self.operands.push(Operand { tensor, fill, salt });
        tensor
    }

    /// A new tensor of shape `dims` in `buf`, starting from values drawn by `fill`.
    fn t(&mut self, buf: BufId, dims: &[usize], fill: Fill) -> Tensor {
        let salt = self.operands.len() as u64;
        self.push(buf, dims, fill, salt)
    }

    /// Two elements in each of `bufs` before their next tensors, so that those start 4 bytes
    /// (bf16/f16) or 8 (f32) off a 16-byte boundary: the GPU kernels' unaligned paths.
    fn pad(&mut self, bufs: &[BufId]) {
        for &b in bufs {
            self.t(b, &[2], Fill::Normal(1.0));
        }
    }

    /// The positions of token ids `tokens` (a tensor of this layout filled by `Ids`) sorted by
    /// id, as `set_batch` uploads them beside the batch.
    fn order_of(&mut self, tokens: Tensor) -> Tensor {
        let o = *self.operands.iter().find(|o| o.tensor == tokens).expect("ids of this layout");
        let Fill::Ids(m) = o.fill else { panic!("the order of {o:?}, not ids") };
        self.t(BufId::Tokens, tokens.dims(), Fill::OrderOf(m, o.salt))
    }

    /// The f32 master copy of parameters `params` (starting from the same values): `Some` under
    /// mixed precision, `None` in float32, where the parameters are the master weights. Its
    /// space is taken either way, so the operands correspond at every precision.
    fn master(&mut self, params: Tensor) -> Option<Tensor> {
        let i = self.operands.iter().position(|o| o.tensor == params).expect("master of a tensor of this layout");
        let o = self.operands[i];
        let m = self.push(BufId::Master, params.dims(), o.fill, o.salt);
        let mixed = self.precision.storage() != DType::F32;
        if mixed {
            self.masters.push((i, self.operands.len() - 1));
        }
        mixed.then_some(m)
    }

    /// The starting values of the float32 reference from the values `stored` in this layout:
    /// the same, except that parameters start from their master weights, as AdamW reads them
    /// (not from their rounded copy).
    pub fn for_reference(&self, stored: &[Host]) -> Vec<Host> {
        let mut v = stored.to_vec();
        for &(params, master) in &self.masters {
            v[params] = stored[master].clone();
        }
        v
    }

    /// The step accumulators ([`Scalar`]), starting nonzero.
    fn scalars(&mut self) {
        assert_eq!(self.len(BufId::Scalars), 0, "one set of scalars per case");
        self.t(BufId::Scalars, &[N_SCALARS], Fill::Uniform(0.5, 2.0));
    }
}

/// What a case runs and what it compares.
pub(super) struct Spec {
    /// Ops run on the reference alone first, to make inputs that belong together (the
    /// statistics a forward leaves for its backward); both backends then start from the result.
    pub prep: Vec<Op>,
    /// The ops under test, run on both backends.
    pub ops: Vec<Op>,
    /// What the ops write: (name, tensor, how it is compared).
    pub outputs: Vec<(&'static str, Tensor, Kind)>,
}

impl Spec {
    fn new(ops: Vec<Op>, outputs: Vec<(&'static str, Tensor, Kind)>) -> Spec {
        Spec { prep: Vec::new(), ops, outputs }
    }
    fn after(mut self, prep: Op) -> Spec {
        self.prep.push(prep);
        self
    }
}

/// One row of the report: the op, its shapes, and how to build it at a precision.
pub(super) struct Case {
    pub op: &'static str,
    pub shape: String,
    pub build: Box<dyn Fn(&mut Layout) -> Spec + Send + Sync>,
}

fn case(op: &'static str, shape: String, build: impl Fn(&mut Layout) -> Spec + Send + Sync + 'static) -> Case {
    Case { op, shape, build: Box::new(build) }
}

/// Every case, in the order a training step meets the ops, then sampling's.
pub(super) fn all() -> Vec<Case> {
    use BufId::*;
    use Fill::*;
    use Kind::*;
    let btc = format!("B={B} T={T} C={C}");
    let mut v = Vec::new();

    for (op, drop) in [("encoder forward", Dropout::NONE), ("encoder forward + dropout", DROP)] {
        v.push(case(op, format!("{btc} Vp={VP} maxT={MAXT}"), move |l| {
            let out = l.t(Acts, &[B, T, C], Normal(1.0));
            let (wte, wpe) = (l.t(Params, &[VP, C], Normal(1.0)), l.t(Params, &[MAXT, C], Normal(1.0)));
            let tokens = l.t(Tokens, &[B, T], Ids(V as u32));
            Spec::new(vec![Embed { out, wte, wpe, tokens, pos0: 0, drop }.into()], vec![("out", out, Write)])
        }));
    }
    v.push(case("encoder backward", format!("{btc} Vp={VP}, repeated ids"), |l| {
        let (dwte, dwpe) = (l.t(Grads, &[VP, C], Normal(1.0)), l.t(Grads, &[MAXT, C], Normal(1.0)));
        let dout = l.t(DActs, &[B, T, C], Normal(1.0));
        let tokens = l.t(Tokens, &[B, T], Ids(5)); // 14 ids of 5: rows that several positions add into
        let order = l.order_of(tokens);
        let op = EmbedBackward { dwte, dwpe, dout, tokens, order };
        Spec::new(vec![op.into()], vec![("dwte", dwte, Add), ("dwpe", dwpe, Add)])
    }));
    // more rows than a warp scans at once and more channels than one warp's 256 (the GPU's
    // per-token warps); and LayerNorm's and the bias's column sums over more rows than a block
    // has threads down, in three chunks of 200 rows (the GPU's two-pass column sums)
    let (b2, t2, c2) = (2, 40, 300);
    let (b3, t3) = (2, 300);
    // ... and, with two ids, runs of ~40 positions: longer than the 32 a GPU warp reads at once
    for (op, ids) in [("encoder backward, 80 rows", V as u32), ("encoder backward, long runs", 2)] {
        v.push(case(op, format!("B={b2} T={t2} C={c2} Vp={VP} ids<{ids}"), move |l| {
            let (dwte, dwpe) = (l.t(Grads, &[VP, c2], Normal(1.0)), l.t(Grads, &[t2, c2], Normal(1.0)));
            let dout = l.t(DActs, &[b2, t2, c2], Normal(1.0));
            let tokens = l.t(Tokens, &[b2, t2], Ids(ids));
            let order = l.order_of(tokens);
            let op = EmbedBackward { dwte, dwpe, dout, tokens, order };
            Spec::new(vec![op.into()], vec![("dwte", dwte, Add), ("dwpe", dwpe, Add)])
        }));
    }

    // the GPU's LayerNorm reads a row in 16-byte packs when C allows (30 channels do not) and
    // every row is 16-byte aligned (not when the tensors start 2 elements in: "unaligned")
    let ln_shapes = [(C, false), (30, false), (C, true)];
    for (op, bias, (c, misalign)) in [
        ("layernorm forward", true, ln_shapes[0]),
        ("layernorm forward, no bias", false, ln_shapes[0]),
        ("layernorm forward, 30 channels", true, ln_shapes[1]),
        ("layernorm forward, unaligned", true, ln_shapes[2]),
    ] {
        v.push(case(op, format!("B={B} T={T} C={c}"), move |l| {
            if misalign {
                l.pad(&[Acts, Params]);
            }
            let (out, inp) = (l.t(Acts, &[B, T, c], Normal(1.0)), l.t(Acts, &[B, T, c], Normal(2.0)));
            let (mean, rstd) = (l.t(Stats, &[B, T], Normal(1.0)), l.t(Stats, &[B, T], Normal(1.0)));
            let (w, b) = (l.t(Params, &[c], Normal(1.0)), l.t(Params, &[c], Normal(0.5)));
            let op = LayerNorm { out, mean, rstd, inp, w, b: bias.then_some(b) };
            Spec::new(vec![op.into()], vec![("out", out, Write), ("mean", mean, Write), ("rstd", rstd, Write)])
        }));
    }
    for (op, (b, t), bias, (c, misalign)) in [
        ("layernorm backward", (B, T), true, ln_shapes[0]),
        ("layernorm backward, no bias", (B, T), false, ln_shapes[0]),
        ("layernorm backward, 600 rows", (b3, t3), true, ln_shapes[0]),
        ("layernorm backward, 30 channels", (B, T), true, ln_shapes[1]),
        ("layernorm backward, unaligned", (B, T), true, ln_shapes[2]),
    ] {
        v.push(case(op, format!("B={b} T={t} C={c}"), move |l| {
            if misalign {
                l.pad(&[DActs, Acts, Params]);
            }
            let (dinp, dout) = (l.t(DActs, &[b, t, c], Normal(1.0)), l.t(DActs, &[b, t, c], Normal(1.0)));
            let (dw, db) = (l.t(Grads, &[c], Normal(1.0)), l.t(Grads, &[c], Normal(1.0)));
            let (inp, fwd_out) = (l.t(Acts, &[b, t, c], Normal(2.0)), l.t(Acts, &[b, t, c], Normal(1.0)));
            let (mean, rstd) = (l.t(Stats, &[b, t], Normal(1.0)), l.t(Stats, &[b, t], Normal(1.0)));
            let w = l.t(Params, &[c], Normal(1.0));
            let forward = LayerNorm { out: fwd_out, mean, rstd, inp, w, b: None };
            let db = bias.then_some(db);
            let op = LayerNormBackward { dinp, dw, db, dout, inp, mean, rstd, w };
            let mut outputs = vec![("dinp", dinp, Add), ("dw", dw, Add)];
            outputs.extend(db.map(|db| ("db", db, Add)));
            Spec::new(vec![op.into()], outputs).after(forward.into())
        }));
    }

    // the qkv layer's shape with a bias; the tied lm_head's (OC = Vp) without; one row, as
    // sampling's products are (biased: PyTorch reports cuBLASLt refusing those); and a bias off
    // 16-byte alignment (the CUDA backend adds those two biases with its own kernel)
    let n = B * T;
    for (op, n, oc, bias, misalign) in [
        ("matmul forward", n, 3 * C, true, false),
        ("matmul forward, no bias", n, VP, false, false),
        ("matmul forward, one row", 1, 3 * C, true, false),
        ("matmul forward, unaligned bias", n, 3 * C, true, true),
    ] {
        v.push(case(op, format!("N={n} IC={C} OC={oc}"), move |l| {
            let (out, inp) = (l.t(Acts, &[n, oc], Normal(1.0)), l.t(Acts, &[n, C], Normal(1.0)));
            let w = l.t(Params, &[oc, C], Normal(0.3));
            if misalign {
                l.pad(&[Params]);
            }
            let b = l.t(Params, &[oc], Normal(0.3));
            let op = Matmul { out, inp, w, b: bias.then_some(b), role: if bias { Role::Qkv } else { Role::LmHead } };
            Spec::new(vec![op.into()], vec![("out", out, Write)])
        }));
    }
    for (op, n, oc, bias) in [
        ("matmul backward", n, 3 * C, true),
        ("matmul backward, no bias", n, VP, false),
        ("matmul backward, 600 rows", b3 * t3, 3 * C, true),
    ] {
        v.push(case(op, format!("N={n} IC={C} OC={oc}"), move |l| {
            let (dinp, dout) = (l.t(DActs, &[n, C], Normal(1.0)), l.t(DActs, &[n, oc], Normal(1.0)));
            let (dw, db) = (l.t(Grads, &[oc, C], Normal(1.0)), l.t(Grads, &[oc], Normal(1.0)));
            let (inp, w) = (l.t(Acts, &[n, C], Normal(1.0)), l.t(Params, &[oc, C], Normal(0.3)));
            let db = bias.then_some(db);
            let op = MatmulBackward { dinp, dw, db, dout, inp, w, gelu: None, role: if bias { Role::Qkv } else { Role::LmHead } };
            let mut outputs = vec![("dinp", dinp, Write), ("dw", dw, Add)];
            outputs.extend(db.map(|db| ("db", db, Add)));
            Spec::new(vec![op.into()], outputs)
        }));
    }

    // the MLP projection's backward with its input's GELU, one op (the CUDA backend fuses the
    // GELU's backward into cuBLASLt's epilogue where it can; the CPU runs the two ops)
    let c4 = 4 * C;
    v.push(case("matmul backward + gelu", format!("N={n} IC={c4} OC={C}"), move |l| {
        let (dinp, scratch) = (l.t(DActs, &[n, c4], Normal(1.0)), l.t(DActs, &[n, c4], Normal(1.0)));
        let dout = l.t(DActs, &[n, C], Normal(1.0));
        let (dw, db) = (l.t(Grads, &[C, c4], Normal(1.0)), l.t(Grads, &[C], Normal(1.0)));
        let (inp, pre, w) = (l.t(Acts, &[n, c4], Normal(1.0)), l.t(Acts, &[n, c4], Normal(1.5)), l.t(Params, &[C, c4], Normal(0.3)));
        let gelu = Some(GeluGrad { pre, scratch });
        let op = MatmulBackward { dinp, dw, db: Some(db), dout, inp, w, gelu, role: Role::MlpProj };
        Spec::new(vec![op.into()], vec![("dinp", dinp, Write), ("dw", dw, Add), ("db", db, Add)])
    }));

    let names = ["attention forward", "attention forward + dropout", "attention backward", "attention backward + dropout"];
    attention_cases(&mut v, ATTENTION[0], names, false);
    // the GPU's tiled kernels at GPT-2's head size, over several blocks of query rows and tiles of
    // keys (four 64-row key tiles: the tensor-core kernels' double buffer is refilled while warps
    // may still read it, which a missing barrier turns into NaN on the emulator; the dropout cases with their tensors 4 bytes off a 16-byte boundary, so the tensor-core
    // kernels' 4-byte tile copies run as well as their 16-byte ones); and a head size they are
    // not compiled for (the one-warp-per-row kernels)
    let names =
        ["attention fwd, 64-wide heads", "attention fwd + drop, 64-wide", "attention bwd, 64-wide heads", "attention bwd + drop, 64-wide"];
    attention_cases(&mut v, ATTENTION[1], names, true);
    let names =
        ["attention fwd, 24-wide heads", "attention fwd + drop, 24-wide", "attention bwd, 24-wide heads", "attention bwd + drop, 24-wide"];
    attention_cases(&mut v, ATTENTION[2], names, false);

    let bt4c = format!("B={B} T={T} 4C={}", 4 * C);
    v.push(case("gelu forward", bt4c.clone(), |l| {
        let (out, inp) = (l.t(Acts, &[B, T, 4 * C], Normal(1.0)), l.t(Acts, &[B, T, 4 * C], Normal(1.5)));
        Spec::new(vec![Gelu { out, inp }.into()], vec![("out", out, Write)])
    }));
    v.push(case("gelu backward", bt4c, |l| {
        let (dinp, dout) = (l.t(DActs, &[B, T, 4 * C], Normal(1.0)), l.t(DActs, &[B, T, 4 * C], Normal(1.0)));
        let inp = l.t(Acts, &[B, T, 4 * C], Normal(1.5));
        Spec::new(vec![GeluBackward { dinp, dout, inp }.into()], vec![("dinp", dinp, Write)])
    }));
    v.push(case("residual", btc.clone(), |l| {
        let (out, a, b) = (l.t(Acts, &[B, T, C], Normal(1.0)), l.t(Acts, &[B, T, C], Normal(1.0)), l.t(Acts, &[B, T, C], Normal(1.0)));
        Spec::new(vec![Residual { out, a, b }.into()], vec![("out", out, Write)])
    }));
    v.push(case("copy", btc.clone(), |l| {
        let (dst, src) = (l.t(DActs, &[B, T, C], Normal(1.0)), l.t(DActs, &[B, T, C], Normal(1.0)));
        Spec::new(vec![Op::Copy { dst, src }], vec![("dst", dst, Write)])
    }));
    v.push(case("dropout", format!("{btc} p={}", DROP.p), |l| {
        let x = l.t(DActs, &[B, T, C], Normal(1.0));
        Spec::new(vec![Op::Dropout { x, drop: DROP }], vec![("x", x, Write)])
    }));
    // the elementwise kernels' two loops on the GPU: 16-byte packs then a tail one at a time (x
    // starts aligned, its length is no multiple of 8), and one at a time throughout (b and out
    // start 6 bytes off a 16-byte boundary in bf16/fp16)
    let odd = B * T * C + 3;
    v.push(case("dropout, packs and a tail", format!("N={odd} p={}", DROP.p), move |l| {
        let x = l.t(DActs, &[odd], Normal(1.0));
        Spec::new(vec![Op::Dropout { x, drop: DROP }], vec![("x", x, Write)])
    }));
    v.push(case("residual, unaligned", format!("N={odd}"), move |l| {
        let (a, b, out) = (l.t(Acts, &[odd], Normal(1.0)), l.t(Acts, &[odd], Normal(1.0)), l.t(Acts, &[odd], Normal(1.0)));
        Spec::new(vec![Residual { out, a, b }.into()], vec![("out", out, Write)])
    }));

    let btv = format!("B={B} T={T} V={V} Vp={VP}");
    for (op, grad) in [("classifier (loss)", None), ("classifier (loss + dlogits)", Some(1.0 / (B * T) as f32))] {
        v.push(case(op, btv.clone(), move |l| {
            let (logits, losses) = (l.t(Acts, &[B, T, VP], Normal(2.0)), l.t(Stats, &[B, T], Normal(1.0)));
            let targets = l.t(Tokens, &[B, T], Ids(V as u32));
            let op = FusedClassifier { logits, losses, targets, vocab: V, grad_scale: grad };
            Spec::new(vec![op.into()], vec![("losses", losses, Write), ("logits", logits, Write)])
        }));
    }
    // a long row, several 16-byte packs per thread on the GPU, and a second row that starts off
    // a 16-byte boundary (one column at a time)
    let (vl, vpl) = (9001, 9011);
    v.push(case("classifier, long rows", format!("N=2 V={vl} Vp={vpl}"), move |l| {
        let (logits, losses) = (l.t(Acts, &[2, vpl], Normal(2.0)), l.t(Stats, &[2], Normal(1.0)));
        let targets = l.t(Tokens, &[2], Ids(vl as u32));
        let op = FusedClassifier { logits, losses, targets, vocab: vl, grad_scale: Some(0.5) };
        Spec::new(vec![op.into()], vec![("losses", losses, Write), ("logits", logits, Write)])
    }));
    v.push(case("add mean loss", format!("B={B} T={T}"), |l| {
        let losses = l.t(Stats, &[B, T], Uniform(1.0, 4.0));
        l.scalars();
        Spec::new(vec![Op::AddMeanLoss { losses, into: Scalar::LossSum }], vec![("loss sum", Scalar::LossSum.tensor(), Add)])
    }));
    v.push(case("add squares", format!("{}x{C}", 3 * C), |l| {
        let x = l.t(Grads, &[3 * C, C], Normal(0.1));
        l.scalars();
        let into = Scalar::GradSquares.tensor();
        Spec::new(vec![Op::AddSquares { x, per: x.len(), into }], vec![("grad squares", into, Add)])
    }));
    v.push(case("add squares, in pieces", format!("{}x{C} in pieces of {}, a slot each", 3 * C, 2 * C * C), |l| {
        let x = l.t(Grads, &[3 * C, C], Normal(0.1));
        l.scalars();
        // two pieces (2 C x C, then C x C), into the two step sums' slots
        let into = Tensor::new(BufId::Scalars, Span::new(0, 2), &[2], DType::F64);
        Spec::new(vec![Op::AddSquares { x, per: 2 * C * C, into }], vec![("pieces' squares", into, Add)])
    }));
    v.push(case("adamw step", format!("{}x{C}, decay 0.1, grad scale 0.7", 3 * C), |l| {
        let params = l.t(Params, &[3 * C, C], Normal(0.5));
        let master = l.master(params);
        let (grads, m) = (l.t(Grads, &[3 * C, C], Normal(0.1)), l.t(AdamM, &[3 * C, C], Normal(0.01)));
        let v = l.t(AdamV, &[3 * C, C], Uniform(0.0, 1e-3));
        let hp = AdamW { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8 };
        let op = AdamWStep { params, master, grads, m, v, hp, step: 3, weight_decay: 0.1, grad_scale: 0.7 };
        // in float32 the parameters are the master weights: "master" compares them again
        let outputs = vec![("params", params, Add), ("master", master.unwrap_or(params), Add), ("m", m, Write), ("v", v, Write)];
        Spec::new(vec![op.into()], outputs)
    }));
    v.push(case("zero", format!("{btc}, and C={C} f32"), |l| {
        let (x, g) = (l.t(Acts, &[B, T, C], Normal(1.0)), l.t(Grads, &[C], Normal(1.0)));
        Spec::new(vec![Op::Zero(x), Op::Zero(g)], vec![("activations", x, Write), ("gradients", g, Write)])
    }));

    // sampling: one position (5) against a KV cache that holds positions 0..5
    let pos = 5;
    v.push(case("encoder forward (sampling)", format!("B=1 T=1 C={C} pos={pos}"), move |l| {
        let out = l.t(Acts, &[1, 1, C], Normal(1.0));
        let (wte, wpe) = (l.t(Params, &[VP, C], Normal(1.0)), l.t(Params, &[MAXT, C], Normal(1.0)));
        let tokens = l.t(Tokens, &[1, 1], Ids(V as u32));
        let op = Embed { out, wte, wpe, tokens, pos0: pos, drop: Dropout::NONE };
        Spec::new(vec![op.into()], vec![("out", out, Write)])
    }));
    v.push(case("attention decode", format!("C={C} NH={NH} maxT={MAXT} pos={pos}"), move |l| {
        let (out, qkv) = (l.t(Acts, &[1, 1, C], Normal(1.0)), l.t(Acts, &[1, 1, 3 * C], Normal(1.0)));
        let (k, v) = (l.t(KvCache, &[MAXT, C], Normal(1.0)), l.t(KvCache, &[MAXT, C], Normal(1.0)));
        let op = AttentionDecode { out, qkv, k, v, pos, n_head: NH };
        Spec::new(vec![op.into()], vec![("out", out, Write), ("k cache", k, Write), ("v cache", v, Write)])
    }));
    // a cache longer than 12288 positions: on the GPU a row of scores is over the 48 KiB of
    // shared memory a block gets without opting in to more
    let (long, pos) = (12_400, 12_300);
    v.push(case("attention decode, long cache", format!("C={C} NH={NH} maxT={long} pos={pos}"), move |l| {
        let (out, qkv) = (l.t(Acts, &[1, 1, C], Normal(1.0)), l.t(Acts, &[1, 1, 3 * C], Normal(1.0)));
        let (k, v) = (l.t(KvCache, &[long, C], Normal(1.0)), l.t(KvCache, &[long, C], Normal(1.0)));
        let op = AttentionDecode { out, qkv, k, v, pos, n_head: NH };
        Spec::new(vec![op.into()], vec![("out", out, Write), ("k cache", k, Write), ("v cache", v, Write)])
    }));
    v
}

#[cfg(test)]
/// Which variant of [`Op`] `op` is, as an index below [`N_VARIANTS`]: a new variant fails to
/// compile here, and the test that every variant has a case then fails until it gets one.
pub(super) fn variant(op: &Op) -> usize {
    match op {
        Op::Zero(_) => 0,
        Op::Copy { .. } => 1,
        Op::Dropout { .. } => 2,
        Op::Embed(_) => 3,
        Op::EmbedBackward(_) => 4,
        Op::LayerNorm(_) => 5,
        Op::LayerNormBackward(_) => 6,
        Op::Matmul(_) => 7,
        Op::MatmulBackward(_) => 8,
        Op::Attention(_) => 9,
        Op::AttentionBackward(_) => 10,
        Op::AttentionDecode(_) => 11,
        Op::Gelu(_) => 12,
        Op::GeluBackward(_) => 13,
        Op::Residual(_) => 14,
        Op::FusedClassifier(_) => 15,
        Op::AddMeanLoss { .. } => 16,
        Op::AddSquares { .. } => 17,
        Op::AdamWStep(_) => 18,
    }
}

#[cfg(test)]
/// How many variants [`Op`] has.
pub(super) const N_VARIANTS: usize = 19;

/// The attention forward and backward cases, without and with dropout (`names` in that order),
/// on a (B, T, C, NH) shape; with `misalign`, the dropout cases' tensors start 2 elements into
/// their buffers (`Layout::pad`).
fn attention_cases(v: &mut Vec<Case>, (b, t, c, nh): (usize, usize, usize, usize), names: [&'static str; 4], misalign: bool) {
    use BufId::*;
    use Fill::*;
    use Kind::*;
    let att = format!("B={b} T={t} C={c} NH={nh}");
    let pad = move |l: &mut Layout, drop: Dropout| {
        if misalign && drop.p > 0.0 {
            l.pad(&[Acts, DActs]);
        }
    };
    for (op, drop) in [(names[0], Dropout::NONE), (names[1], DROP)] {
        v.push(case(op, att.clone(), move |l| {
            pad(l, drop);
            let (out, qkv) = (l.t(Acts, &[b, t, c], Normal(1.0)), l.t(Acts, &[b, t, 3 * c], Normal(1.0)));
            let stats = l.t(Stats, &[b, nh, t, 2], Normal(1.0));
            let op = Attention { out, stats, qkv, n_head: nh, drop };
            Spec::new(vec![op.into()], vec![("out", out, Write), ("stats", stats, Write)])
        }));
    }
    for (op, drop) in [(names[2], Dropout::NONE), (names[3], DROP)] {
        v.push(case(op, att.clone(), move |l| {
            pad(l, drop);
            let (dqkv, dout) = (l.t(DActs, &[b, t, 3 * c], Normal(1.0)), l.t(DActs, &[b, t, c], Normal(1.0)));
            let (qkv, fwd_out) = (l.t(Acts, &[b, t, 3 * c], Normal(1.0)), l.t(Acts, &[b, t, c], Normal(1.0)));
            let stats = l.t(Stats, &[b, nh, t, 2], Normal(1.0));
            let forward = Attention { out: fwd_out, stats, qkv, n_head: nh, drop };
            let op = AttentionBackward { dqkv, dout, qkv, stats, out: fwd_out, n_head: nh, drop };
            Spec::new(vec![op.into()], vec![("dqkv", dqkv, Write)]).after(forward.into())
        }));
    }
}
