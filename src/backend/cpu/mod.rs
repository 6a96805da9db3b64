//! The CPU backend: the readable reference implementation of every kernel, f32, host memory,
//! multi-threaded with rayon over the calling thread pool. Every reduction has a fixed order,
//! so results are bitwise reproducible for a given thread count.

pub mod attention;
pub mod classifier;
pub mod encoder;
pub mod layernorm;
pub mod mathf;
pub mod matmul;
pub mod optimizer;
pub mod pointwise;
pub mod pool;
pub mod simd;

use super::{AdamW, Backend, DType, Dropout, Linear, Span};

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

/// Borrows `N` pairwise-disjoint spans of one buffer mutably at once, as llm.c passes several
/// pointers into one activation buffer.
///
/// Panics if a span is out of bounds or two non-empty spans overlap (a bug in a layout).
pub fn carve<const N: usize>(buf: &mut [f32], spans: [Span; N]) -> [&mut [f32]; N] {
    for (i, a) in spans.iter().enumerate() {
        assert!(a.end() <= buf.len(), "span {a:?} out of bounds ({})", buf.len());
        for b in &spans[i + 1..] {
            let disjoint = a.len == 0 || b.len == 0 || a.end() <= b.off || b.end() <= a.off;
            assert!(disjoint, "spans {a:?} and {b:?} overlap");
        }
    }
    let base = buf.as_mut_ptr();
    // SAFETY: every span lies inside `buf` and no two non-empty spans overlap (checked above), so
    // the returned slices alias neither each other nor anything else borrowed from `buf`, and
    // they live no longer than the exclusive borrow of `buf`.
    spans.map(|s| unsafe { std::slice::from_raw_parts_mut(base.add(s.off), s.len) })
}

fn at(buf: &[f32], s: Span) -> &[f32] {
    &buf[s.off..s.end()]
}

impl Backend for Cpu {
    type Buf = Vec<f32>;

    fn step_scope<R>(f: impl FnOnce() -> R) -> R {
        pool::hot(f)
    }

    fn name(&self) -> String {
        format!("cpu ({} threads, {:?} kernels)", rayon::current_num_threads(), self.kernels)
    }
    fn dtype(&self) -> DType {
        DType::F32
    }
    fn alloc(&self, n: usize) -> Vec<f32> {
        vec![0.0; n]
    }
    fn upload(&self, dst: &mut Vec<f32>, off: usize, src: &[f32]) {
        dst[off..off + src.len()].copy_from_slice(src);
    }
    fn download(&self, src: &Vec<f32>, span: Span) -> Vec<f32> {
        at(src, span).to_vec()
    }
    fn zero(&self, buf: &mut Vec<f32>, span: Span) {
        use rayon::prelude::*;
        buf[span.off..span.end()].par_chunks_mut(1 << 16).for_each(|c| c.fill(0.0));
    }

    fn encoder_forward(
        &self,
        acts: &mut Vec<f32>,
        out: Span,
        params: &Vec<f32>,
        wte: Span,
        wpe: Span,
        tokens: &[u32],
        bt: (usize, usize),
        drop: Dropout,
    ) {
        let c = out.len / (bt.0 * bt.1);
        encoder::encoder_forward(&mut acts[out.off..out.end()], at(params, wte), at(params, wpe), tokens, bt.1, c);
        if drop.active() {
            pointwise::dropout(&mut acts[out.off..out.end()], drop);
        }
    }
    fn encoder_backward(
        &self,
        grads: &mut Vec<f32>,
        dwte: Span,
        dwpe: Span,
        dacts: &Vec<f32>,
        dout: Span,
        tokens: &[u32],
        bt: (usize, usize),
    ) {
        let c = dout.len / (bt.0 * bt.1);
        let [dwte, dwpe] = carve(grads, [dwte, dwpe]);
        encoder::encoder_backward(dwte, dwpe, at(dacts, dout), tokens, bt.1, c);
    }
    fn dropout(&self, buf: &mut Vec<f32>, x: Span, drop: Dropout) {
        pointwise::dropout(&mut buf[x.off..x.end()], drop);
    }

    fn layernorm_forward(
        &self,
        acts: &mut Vec<f32>,
        out: Span,
        mean: Span,
        rstd: Span,
        inp: Span,
        params: &Vec<f32>,
        w: Span,
        b: Option<Span>,
    ) {
        let [out, mean, rstd, inp] = carve(acts, [out, mean, rstd, inp]);
        let f = if self.fast() { layernorm::layernorm_forward } else { layernorm::layernorm_forward_naive };
        f(out, mean, rstd, inp, at(params, w), b.map(|b| at(params, b)));
    }
    fn layernorm_backward(
        &self,
        dacts: &mut Vec<f32>,
        dinp: Span,
        dout: Span,
        grads: &mut Vec<f32>,
        dw: Span,
        db: Option<Span>,
        acts: &Vec<f32>,
        inp: Span,
        mean: Span,
        rstd: Span,
        params: &Vec<f32>,
        w: Span,
    ) {
        let [dinp, dout] = carve(dacts, [dinp, dout]);
        let [dw, db] = carve(grads, [dw, db.unwrap_or_default()]);
        let db = if db.is_empty() { None } else { Some(db) };
        let f = if self.fast() { layernorm::layernorm_backward } else { layernorm::layernorm_backward_naive };
        f(dinp, dw, db, dout, at(acts, inp), at(acts, mean), at(acts, rstd), at(params, w));
    }

    fn matmul_forward(&self, acts: &mut Vec<f32>, out: Span, inp: Span, params: &Vec<f32>, lin: Linear, ic: usize) {
        let [out, inp] = carve(acts, [out, inp]);
        let f = if self.fast() { matmul::matmul_forward } else { matmul::matmul_forward_reference };
        f(out, inp, at(params, lin.w), lin.b.map(|b| at(params, b)), ic);
    }
    fn matmul_backward(
        &self,
        dacts: &mut Vec<f32>,
        dinp: Span,
        dout: Span,
        grads: &mut Vec<f32>,
        dlin: Linear,
        acts: &Vec<f32>,
        inp: Span,
        params: &Vec<f32>,
        w: Span,
        ic: usize,
    ) {
        let [dinp, dout] = carve(dacts, [dinp, dout]);
        let [dw, db] = carve(grads, [dlin.w, dlin.b.unwrap_or_default()]);
        let db = if db.is_empty() { None } else { Some(db) };
        let f = if self.fast() { matmul::matmul_backward } else { matmul::matmul_backward_reference };
        f(dinp, dw, db, dout, at(acts, inp), at(params, w), ic);
    }

    fn attention_forward(
        &self,
        acts: &mut Vec<f32>,
        out: Span,
        stats: Span,
        qkv: Span,
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
        drop: Dropout,
    ) {
        let [out, stats, qkv] = carve(acts, [out, stats, qkv]);
        let f = if self.fast() { attention::attention_forward } else { attention::attention_forward_naive };
        f(out, stats, qkv, b, t, c, nh, drop);
    }
    fn attention_backward(
        &self,
        dacts: &mut Vec<f32>,
        dqkv: Span,
        dout: Span,
        acts: &Vec<f32>,
        qkv: Span,
        stats: Span,
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
        drop: Dropout,
    ) {
        let [dqkv, dout] = carve(dacts, [dqkv, dout]);
        let f = if self.fast() { attention::attention_backward } else { attention::attention_backward_naive };
        f(dqkv, dout, at(acts, qkv), at(acts, stats), b, t, c, nh, drop);
    }

    fn gelu_forward(&self, acts: &mut Vec<f32>, out: Span, inp: Span) {
        let [out, inp] = carve(acts, [out, inp]);
        let f = if self.fast() { pointwise::gelu_forward } else { pointwise::gelu_forward_naive };
        f(out, inp);
    }
    fn gelu_backward(&self, dacts: &mut Vec<f32>, dinp: Span, dout: Span, acts: &Vec<f32>, inp: Span) {
        let [dinp, dout] = carve(dacts, [dinp, dout]);
        let f = if self.fast() { pointwise::gelu_backward } else { pointwise::gelu_backward_naive };
        f(dinp, dout, at(acts, inp));
    }
    fn residual_forward(&self, acts: &mut Vec<f32>, out: Span, a: Span, b: Span) {
        let [out, a, b] = carve(acts, [out, a, b]);
        pointwise::residual_forward(out, a, b);
    }
    fn copy(&self, buf: &mut Vec<f32>, dst: Span, src: Span) {
        let [dst, src] = carve(buf, [dst, src]);
        pointwise::copy(dst, src);
    }

    fn crossentropy_forward(
        &self,
        acts: &mut Vec<f32>,
        logits: Span,
        losses: Span,
        targets: &[u32],
        v: usize,
        vp: usize,
        grad_scale: Option<f32>,
    ) {
        let [logits, losses] = carve(acts, [logits, losses]);
        let f = if self.fast() { classifier::crossentropy_forward } else { classifier::crossentropy_forward_naive };
        f(logits, losses, targets, v, vp, grad_scale);
    }
    fn classifier_backward(
        &self,
        dacts: &mut Vec<f32>,
        dinp: Span,
        grads: &mut Vec<f32>,
        dw: Span,
        acts: &Vec<f32>,
        dlogits: Span,
        inp: Span,
        params: &Vec<f32>,
        w: Span,
        ic: usize,
    ) {
        let f = if self.fast() { matmul::matmul_backward } else { matmul::matmul_backward_reference };
        f(&mut dacts[dinp.off..dinp.end()], &mut grads[dw.off..dw.end()], None, at(acts, dlogits), at(acts, inp), at(params, w), ic);
    }
    fn sum(&self, buf: &Vec<f32>, span: Span) -> f64 {
        at(buf, span).iter().map(|&x| x as f64).sum()
    }

    fn sum_squares(&self, buf: &Vec<f32>, span: Span) -> f64 {
        optimizer::sum_squares(at(buf, span))
    }
    fn adamw_update(
        &self,
        params: &mut Vec<f32>,
        grads: &Vec<f32>,
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
        span: Span,
        hp: AdamW,
        step: u64,
        weight_decay: f32,
        grad_scale: f32,
    ) {
        let r = span.off..span.end();
        optimizer::adamw(&mut params[r.clone()], &grads[r.clone()], &mut m[r.clone()], &mut v[r], hp, step, weight_decay, grad_scale);
    }
}
