//! The CPU backend: the readable reference implementation of every kernel, host memory,
//! multi-threaded with rayon over the calling thread pool. Every reduction has a fixed order,
//! so results are bitwise reproducible for a given thread count. Kernels compute in f32; ops
//! over bf16/f16 operands (mixed precision, ARCHITECTURE.md) run the same kernels on operands
//! widened to f32 ([`widen`]), except the linear layers, which have bf16 kernels.

pub mod attention;
pub mod classifier;
pub mod convert;
pub mod encoder;
pub mod layernorm;
mod layernorm_mixed;
pub mod mathf;
pub mod matmul;
pub mod matmul_bf16;
mod matmul_mixed;
pub mod optimizer;
pub mod pointwise;
pub mod pool;
pub mod simd;
mod typed;
pub mod widen;
mod widen_chunked;

use super::ops::{AdamWStep, GeluBackward, GeluGrad, MatmulBackward};
use super::{Backend, Buffers, DType, DeviceInfo, Host, Op, Precision, Scalar, Span, Tensor};
use anyhow::Result;

/// Which implementation of each kernel the CPU backend runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kernels {
    /// The optimised kernels (the default).
    #[default]
    Fast,
    /// The readable `_naive` kernels the fast ones are tested against (matmuls through one
    /// plain sgemm call): the same math, slower, for checking that speed changed nothing.
    Reference,
}

impl Kernels {
    pub fn parse(s: &str) -> Option<Kernels> {
        match s {
            "fast" => Some(Kernels::Fast),
            "reference" => Some(Kernels::Reference),
            _ => None,
        }
    }
}

/// The CPU backend. Kernels run on the rayon pool of the calling thread.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu {
    pub kernels: Kernels,
}

impl Cpu {
    pub const FAST: Cpu = Cpu { kernels: Kernels::Fast };
    pub const REFERENCE: Cpu = Cpu { kernels: Kernels::Reference };
    fn fast(&self) -> bool {
        self.kernels == Kernels::Fast
    }
}

/// One CPU buffer: host memory of one element type.
#[derive(Clone, Debug)]
pub enum CpuBuf {
    F32(Vec<f32>),
    Bf16(Vec<half::bf16>),
    F16(Vec<half::f16>),
    U32(Vec<u32>),
    F64(Vec<f64>),
}

impl CpuBuf {
    fn dtype(&self) -> DType {
        match self {
            CpuBuf::F32(_) => DType::F32,
            CpuBuf::Bf16(_) => DType::Bf16,
            CpuBuf::F16(_) => DType::F16,
            CpuBuf::U32(_) => DType::U32,
            CpuBuf::F64(_) => DType::F64,
        }
    }
    fn u32(&self) -> &[u32] {
        match self {
            CpuBuf::U32(v) => v,
            b => panic!("a u32 tensor in a {:?} buffer", b.dtype()),
        }
    }
    fn f64_mut(&mut self) -> &mut [f64] {
        match self {
            CpuBuf::F64(v) => v,
            b => panic!("an f64 tensor in a {:?} buffer", b.dtype()),
        }
    }
}

type Bufs = Buffers<CpuBuf>;

/// The slices of one op's f32 operands: `outs` mutable, `ins` shared, all at once, as llm.c
/// passes several pointers into one activation buffer.
///
/// Panics if an operand is not f32, lies outside its buffer, or an output overlaps another
/// operand (a bug in a layout, never input).
fn io<const M: usize, const N: usize>(bufs: &mut Bufs, outs: [Tensor; M], ins: [Tensor; N]) -> ([&mut [f32]; M], [&[f32]; N]) {
    let p = typed::Ptrs::new(bufs, &outs, &ins);
    // SAFETY: `Ptrs::new` checked that every tensor lies inside an allocated buffer of its type
    // (`slice` asserts f32) and that no output shares an element with any other operand, so the
    // mutable slices alias nothing else handed out (inputs may overlap each other: both are
    // shared); all of them live no longer than the exclusive borrow of `bufs`.
    let o = outs.map(|t| unsafe { p.slice_mut::<f32>(t) });
    // SAFETY: see above.
    let i = ins.map(|t| unsafe { p.slice::<f32>(t) });
    (o, i)
}

/// A u32 operand's buffer (token ids), taken out while the op runs (its f32 operands are in
/// other buffers) and put back after; with the range of the tensor in it.
fn take_ids(bufs: &mut Bufs, t: Tensor) -> (CpuBuf, std::ops::Range<usize>) {
    assert_eq!(t.dtype, DType::U32, "{t:?}: token ids must be u32");
    let b = bufs.take(t.buf).unwrap_or_else(|| panic!("buffer {:?} is not allocated", t.buf));
    assert!(t.span.end() <= b.u32().len(), "{t:?} out of bounds");
    (b, t.span.off..t.span.end())
}

/// Adds `x` to f64 scalar slot `into`.
fn add_scalar(bufs: &mut Bufs, into: Scalar, x: f64) {
    add_to(bufs, into.tensor(), x)
}

/// One f64 slot `t` += x.
fn add_to(bufs: &mut Bufs, t: Tensor, x: f64) {
    assert!(t.dtype == DType::F64 && t.len() == 1, "a step sum is one f64: {t:?}");
    bufs.get_mut(t.buf).f64_mut()[t.span.off] += x;
}

impl Backend for Cpu {
    type Buf = CpuBuf;

    fn step_scope<R>(f: impl FnOnce() -> R) -> R {
        pool::hot(f)
    }

    fn name(&self) -> String {
        format!("cpu ({} threads, {:?} kernels)", rayon::current_num_threads(), self.kernels)
    }

    fn device(&self, p: Precision) -> DeviceInfo {
        let dev = crate::perf::device::cpu();
        DeviceInfo {
            peak_flops: Some(dev.peak_flops(p)).filter(|x| *x > 0.0),
            bandwidth: None,
            peak_source: dev.source.clone(),
            description: dev.description,
            memory_model: crate::perf::flops::Impl::Cpu,
            memory: crate::perf::device::MemInfo::read(),
            workers: rayon::current_num_threads(),
            precision_note: match p {
                Precision::F32 | Precision::Tf32 => String::new(),
                Precision::Bf16 if self.fast() => {
                    format!("bf16 storage; matmuls on {}, f32 accumulation; other ops in f32", simd::Bf16Isa::describe())
                }
                Precision::Bf16 => "bf16 storage, f32 arithmetic (reference kernels)".into(),
                Precision::F16 => "f16 storage, f32 arithmetic (portable kernels), dynamic loss scaling".into(),
            },
        }
    }

    fn alloc(&self, n: usize, dtype: DType) -> Result<CpuBuf> {
        Ok(match dtype {
            DType::F32 => CpuBuf::F32(vec![0.0; n]),
            DType::U32 => CpuBuf::U32(vec![0; n]),
            DType::F64 => CpuBuf::F64(vec![0.0; n]),
            DType::Bf16 => CpuBuf::Bf16(vec![half::bf16::ZERO; n]),
            DType::F16 => CpuBuf::F16(vec![half::f16::ZERO; n]),
        })
    }

    fn upload(&self, bufs: &mut Bufs, dst: Tensor, src: &Host) -> Result<()> {
        assert_eq!(src.len(), dst.len(), "upload of {} {:?} into {dst:?}", src.len(), src.dtype());
        let low = matches!(dst.dtype, DType::Bf16 | DType::F16) && src.dtype() == DType::F32;
        assert!(low || src.dtype() == dst.dtype, "upload of {:?} data into {dst:?}", src.dtype());
        let r = dst.span.off..dst.span.end();
        match (bufs.get_mut(dst.buf), src) {
            (CpuBuf::F32(b), Host::F32(s)) => b[r].copy_from_slice(s),
            // f32 host data into low-precision storage: rounded to nearest even
            (b @ (CpuBuf::Bf16(_) | CpuBuf::F16(_)), Host::F32(s)) => widen::narrow(b, r.start, s),
            (CpuBuf::U32(b), Host::U32(s)) => b[r].copy_from_slice(s),
            (CpuBuf::F64(b), Host::F64(s)) => b[r].copy_from_slice(s),
            (b, _) => panic!("upload of {:?} data into a {:?} buffer", src.dtype(), b.dtype()),
        }
        Ok(())
    }

    fn download(&self, bufs: &Bufs, src: Tensor) -> Result<Host> {
        let r = src.span.off..src.span.end();
        Ok(match bufs.get(src.buf) {
            CpuBuf::F32(b) => Host::F32(b[r].to_vec()),
            // low-precision storage comes back widened to f32 (exactly)
            b @ (CpuBuf::Bf16(_) | CpuBuf::F16(_)) => Host::F32(widen::wide(b, r)),
            CpuBuf::U32(b) => Host::U32(b[r].to_vec()),
            CpuBuf::F64(b) => Host::F64(b[r].to_vec()),
        })
    }

    fn synchronize(&self) -> Result<()> {
        Ok(()) // every op has finished when its call returns
    }

    fn run(&self, bufs: &mut Bufs, op: &Op) -> Result<()> {
        use rayon::prelude::*;
        let fast = self.fast();
        // a linear layer's backward with its input's GELU: the two ops it stands for, as the
        // model ran them before the CUDA backend fused them (the same arithmetic and roundings)
        if let Op::MatmulBackward(m @ MatmulBackward { gelu: Some(GeluGrad { pre, scratch }), .. }) = *op {
            self.run(bufs, &MatmulBackward { dinp: scratch, gelu: None, ..m }.into())?;
            return self.run(bufs, &GeluBackward { dinp: m.dinp, dout: scratch, inp: pre }.into());
        }
        if let Op::AdamWStep(a @ AdamWStep { master: Some(master), .. }) = *op {
            // mixed precision: the f32 master weights take the step, the parameters the kernels
            // read are their rounded copy
            let ([w, m, v], [g]) = io(bufs, [master, a.m, a.v], [a.grads]);
            optimizer::adamw(w, g, m, v, a.hp, a.step, a.weight_decay, a.grad_scale);
            let r = master.span.off..master.span.end();
            let CpuBuf::F32(w) = bufs.take(master.buf).expect("master weights") else { panic!("master weights must be f32") };
            widen::narrow(bufs.get_mut(a.params.buf), a.params.span.off, &w[r]);
            bufs.set(master.buf, CpuBuf::F32(w));
            return Ok(());
        }
        if let Op::Dropout { drop, .. } = op {
            if !drop.active() {
                return Ok(()); // a no-op in every precision
            }
        }
        if widen::needed(op) {
            let native = fast && (matmul_mixed::run(bufs, op) || layernorm_mixed::run(bufs, op));
            if native || widen_chunked::run(bufs, op) {
                return Ok(());
            }
            return widen::run(self, bufs, op);
        }
        match *op {
            Op::Zero(x) => {
                let r = x.span.off..x.span.end();
                match bufs.get_mut(x.buf) {
                    CpuBuf::F32(v) => v[r].par_chunks_mut(1 << 16).for_each(|c| c.fill(0.0)),
                    CpuBuf::Bf16(v) => v[r].fill(half::bf16::ZERO),
                    CpuBuf::F16(v) => v[r].fill(half::f16::ZERO),
                    CpuBuf::U32(v) => v[r].fill(0),
                    CpuBuf::F64(v) => v[r].fill(0.0),
                }
            }
            Op::Copy { dst, src } => {
                let ([dst], [src]) = io(bufs, [dst], [src]);
                pointwise::copy(dst, src);
            }
            Op::Dropout { x, drop } => {
                let ([x], []) = io(bufs, [x], []);
                pointwise::dropout(x, drop);
            }
            Op::Embed(e) => {
                let (ids, r) = take_ids(bufs, e.tokens);
                let (t, c) = (e.out.dims()[1], e.out.cols());
                assert_eq!(e.tokens.len(), e.out.rows(), "{e:?}");
                {
                    let ([out], [wte, wpe]) = io(bufs, [e.out], [e.wte, e.wpe]);
                    encoder::encoder_forward(out, wte, &wpe[e.pos0 * c..], &ids.u32()[r], t, c);
                    if e.drop.active() {
                        pointwise::dropout(out, e.drop);
                    }
                }
                bufs.set(e.tokens.buf, ids);
            }
            Op::EmbedBackward(e) => {
                let (ids, r) = take_ids(bufs, e.tokens);
                let (t, c) = (e.dout.dims()[1], e.dout.cols());
                {
                    let ([dwte, dwpe], [dout]) = io(bufs, [e.dwte, e.dwpe], [e.dout]);
                    encoder::encoder_backward(dwte, dwpe, dout, &ids.u32()[r], t, c);
                }
                bufs.set(e.tokens.buf, ids);
            }
            Op::LayerNorm(l) => {
                let b = or_empty(l.b, l.w);
                let ([out, mean, rstd], [inp, w, b_]) = io(bufs, [l.out, l.mean, l.rstd], [l.inp, l.w, b]);
                let f = if fast { layernorm::layernorm_forward } else { layernorm::layernorm_forward_naive };
                f(out, mean, rstd, inp, w, l.b.map(|_| b_));
            }
            Op::LayerNormBackward(l) => {
                let db = or_empty(l.db, l.dw);
                let ([dinp, dw, db_], [dout, inp, mean, rstd, w]) = io(bufs, [l.dinp, l.dw, db], [l.dout, l.inp, l.mean, l.rstd, l.w]);
                let f = if fast { layernorm::layernorm_backward } else { layernorm::layernorm_backward_naive };
                f(dinp, dw, l.db.map(|_| db_), dout, inp, mean, rstd, w);
            }
            Op::Matmul(m) => {
                let b = or_empty(m.b, m.w);
                let ([out], [inp, w, b_]) = io(bufs, [m.out], [m.inp, m.w, b]);
                let f = if fast { matmul::matmul_forward } else { matmul::matmul_forward_reference };
                f(out, inp, w, m.b.map(|_| b_), m.inp.cols());
            }
            Op::MatmulBackward(m) => {
                let db = or_empty(m.db, m.dw);
                let ([dinp, dw, db_], [dout, inp, w]) = io(bufs, [m.dinp, m.dw, db], [m.dout, m.inp, m.w]);
                let f = if fast { matmul::matmul_backward } else { matmul::matmul_backward_reference };
                f(dinp, dw, m.db.map(|_| db_), dout, inp, w, m.inp.cols());
            }
            Op::Attention(a) => {
                let (b, t, c) = bt_c(a.qkv);
                let ([out, stats], [qkv]) = io(bufs, [a.out, a.stats], [a.qkv]);
                let f = if fast { attention::attention_forward } else { attention::attention_forward_naive };
                f(out, stats, qkv, b, t, c, a.n_head, a.drop);
            }
            Op::AttentionBackward(a) => {
                let (b, t, c) = bt_c(a.qkv);
                let ([dqkv], [dout, qkv, stats]) = io(bufs, [a.dqkv], [a.dout, a.qkv, a.stats]);
                let f = if fast { attention::attention_backward } else { attention::attention_backward_naive };
                f(dqkv, dout, qkv, stats, b, t, c, a.n_head, a.drop);
            }
            Op::AttentionDecode(a) => {
                let ([out, k, v], [qkv]) = io(bufs, [a.out, a.k, a.v], [a.qkv]);
                attention::attention_decode(out, k, v, qkv, a.pos, a.n_head);
            }
            Op::Gelu(g) => {
                let ([out], [inp]) = io(bufs, [g.out], [g.inp]);
                let f = if fast { pointwise::gelu_forward } else { pointwise::gelu_forward_naive };
                f(out, inp);
            }
            Op::GeluBackward(g) => {
                let ([dinp], [dout, inp]) = io(bufs, [g.dinp], [g.dout, g.inp]);
                let f = if fast { pointwise::gelu_backward } else { pointwise::gelu_backward_naive };
                f(dinp, dout, inp);
            }
            Op::Residual(r) => {
                let ([out], [a, b]) = io(bufs, [r.out], [r.a, r.b]);
                pointwise::residual_forward(out, a, b);
            }
            Op::FusedClassifier(fc) => {
                let (ids, r) = take_ids(bufs, fc.targets);
                {
                    let ([logits, losses], []) = io(bufs, [fc.logits, fc.losses], []);
                    let f = if fast { classifier::fused_classifier } else { classifier::fused_classifier_naive };
                    f(logits, losses, &ids.u32()[r], fc.vocab, fc.logits.cols(), fc.grad_scale);
                }
                bufs.set(fc.targets.buf, ids);
            }
            Op::AddMeanLoss { losses, into } => {
                let ([], [l]) = io(bufs, [], [losses]);
                let mean = (l.iter().map(|&x| x as f64).sum::<f64>() / l.len() as f64) as f32;
                add_scalar(bufs, into, mean as f64);
            }
            Op::AddSquares { x, per, into } => {
                assert!(into.len() == 1 || into.len() == x.len().div_ceil(per), "a slot, or one per piece: {into:?}");
                let ([], [x]) = io(bufs, [], [x]);
                let sums: Vec<f64> = x.chunks(per).map(optimizer::sum_squares).collect();
                for (k, ss) in sums.into_iter().enumerate() {
                    let slot =
                        if into.len() == 1 { into } else { Tensor::new(into.buf, Span::new(into.span.off + k, 1), &[1], DType::F64) };
                    add_to(bufs, slot, ss);
                }
            }
            Op::AdamWStep(a) => {
                let ([p, m, v], [g]) = io(bufs, [a.params, a.m, a.v], [a.grads]);
                optimizer::adamw(p, g, m, v, a.hp, a.step, a.weight_decay, a.grad_scale);
            }
        }
        Ok(())
    }
}

/// An optional operand as a tensor for [`io`]: itself, or an empty one (which overlaps nothing)
/// in the buffer of `like`.
fn or_empty(t: Option<Tensor>, like: Tensor) -> Tensor {
    t.unwrap_or(Tensor::empty(like.buf, like.span.off, like.dtype))
}

/// (B, T, C) of a qkv(B, T, 3C) tensor.
fn bt_c(qkv: Tensor) -> (usize, usize, usize) {
    let d = qkv.dims();
    assert!(d.len() == 3 && d[2].is_multiple_of(3), "qkv must be (B, T, 3C): {qkv:?}");
    (d[0], d[1], d[2] / 3)
}
