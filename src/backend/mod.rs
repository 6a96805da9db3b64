//! The backend boundary: every numeric op of the model, over buffers the caller owns.
//!
//! Modelled on llm.c: the model owns a few big buffers (parameters, gradients, optimizer
//! moments, activations, activation gradients) and passes *spans* of them to kernels.
//! A backend decides where buffers live (host memory for [`cpu::Cpu`], device memory for the
//! CUDA backend to come) and how the kernels run; the model and the training loop only name
//! buffers and spans, so they never assume host memory.
//!
//! Legend used in shape comments: B = micro-batch size, T = sequence length, C = channels
//! (`n_embd`), NH = heads, HS = head size (C / NH), L = layers, V = vocabulary size, Vp = padded
//! vocabulary size (the row count of `wte`), OC/IC = output/input channels of a linear layer.

pub mod cpu;

/// A contiguous range `[off, off + len)` of a buffer, in elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Span {
    pub off: usize,
    pub len: usize,
}

impl Span {
    pub const fn new(off: usize, len: usize) -> Self {
        Span { off, len }
    }
    pub const fn end(&self) -> usize {
        self.off + self.len
    }
    /// The `i`-th of `n` equal consecutive parts of this span (e.g. one layer of an `(L, ...)` tensor).
    pub fn part(&self, i: usize, n: usize) -> Span {
        debug_assert!(self.len.is_multiple_of(n) && i < n);
        let each = self.len / n;
        Span::new(self.off + i * each, each)
    }
}

/// Element type a backend stores and computes in. The CPU backend implements `F32` only; the
/// CUDA backend will add mixed precision (`F16`/`BF16` activations with f32 master weights).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    Tf32,
    F16,
    Bf16,
}

impl DType {
    pub fn parse(s: &str) -> Option<DType> {
        match s.to_ascii_lowercase().as_str() {
            "fp32" | "float32" | "f32" => Some(DType::F32),
            "tf32" => Some(DType::Tf32),
            "fp16" | "float16" | "f16" | "half" => Some(DType::F16),
            "bf16" | "bfloat16" => Some(DType::Bf16),
            _ => None,
        }
    }
    pub fn name(&self) -> &'static str {
        match self {
            DType::F32 => "fp32",
            DType::Tf32 => "tf32",
            DType::F16 => "fp16",
            DType::Bf16 => "bf16",
        }
    }
    /// Bytes per element of this storage type.
    pub fn bytes(&self) -> usize {
        match self {
            DType::F32 | DType::Tf32 => 4,
            DType::F16 | DType::Bf16 => 2,
        }
    }
}

/// Dropout for one call site: drop probability `p` and a key that, mixed with the element index,
/// decides each element. The same key regenerates the same mask in backward, so masks are never
/// stored, and the result does not depend on how work is split across threads.
#[derive(Clone, Copy, Debug)]
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

/// A linear layer's parameters: weight `(OC, IC)` and optional bias `(OC)`.
#[derive(Clone, Copy, Debug)]
pub struct Linear {
    pub w: Span,
    pub b: Option<Span>,
}

/// The kernels of a GPT-2 training step. Every op writes its outputs into caller-owned spans.
/// As in llm.c's CUDA trainer, backward ops *accumulate* (`+=`) into parameter gradients (which
/// gradient accumulation needs) and *overwrite* the activation gradients they produce, except
/// LayerNorm's `dinp`, which accumulates (it completes a residual-stream gradient). `acts`/`dacts` are the activation buffer and its gradient, `params`/`grads` the
/// parameter buffer and its gradient.
pub trait Backend: Send + Sync {
    /// One allocation of elements on this backend.
    type Buf: Send + Sync;

    fn name(&self) -> String;
    fn dtype(&self) -> DType;

    /// Runs `f`, one training step's (or evaluation batch's) calls into this backend. The
    /// default just calls it; the CPU backend keeps its idle worker threads polling for work
    /// meanwhile, so its parallel ops do not each pay for waking a sleeping thread.
    fn step_scope<R>(f: impl FnOnce() -> R) -> R
    where
        Self: Sized,
    {
        f()
    }

    fn alloc(&self, n: usize) -> Self::Buf;
    fn upload(&self, dst: &mut Self::Buf, off: usize, src: &[f32]);
    fn download(&self, src: &Self::Buf, span: Span) -> Vec<f32>;
    fn zero(&self, buf: &mut Self::Buf, span: Span);

    /// out(B,T,C) = wte[tokens] + wpe[t], then embedding dropout.
    #[allow(clippy::too_many_arguments)]
    fn encoder_forward(
        &self,
        acts: &mut Self::Buf,
        out: Span,
        params: &Self::Buf,
        wte: Span,
        wpe: Span,
        tokens: &[u32],
        bt: (usize, usize),
        drop: Dropout,
    );
    /// dwte[tokens] += dout, dwpe[t] += dout (dout already through the dropout mask).
    #[allow(clippy::too_many_arguments)]
    fn encoder_backward(
        &self,
        grads: &mut Self::Buf,
        dwte: Span,
        dwpe: Span,
        dacts: &Self::Buf,
        dout: Span,
        tokens: &[u32],
        bt: (usize, usize),
    );
    /// Applies dropout in place on `x` (forward), or its mask to `dx` (backward: same op).
    fn dropout(&self, buf: &mut Self::Buf, x: Span, drop: Dropout);

    /// out(N,C), mean(N), rstd(N) = layernorm(inp(N,C)) with weight(C) and optional bias(C).
    #[allow(clippy::too_many_arguments)]
    fn layernorm_forward(
        &self,
        acts: &mut Self::Buf,
        out: Span,
        mean: Span,
        rstd: Span,
        inp: Span,
        params: &Self::Buf,
        w: Span,
        b: Option<Span>,
    );
    #[allow(clippy::too_many_arguments)]
    fn layernorm_backward(
        &self,
        dacts: &mut Self::Buf,
        dinp: Span,
        dout: Span,
        grads: &mut Self::Buf,
        dw: Span,
        db: Option<Span>,
        acts: &Self::Buf,
        inp: Span,
        mean: Span,
        rstd: Span,
        params: &Self::Buf,
        w: Span,
    );

    /// out(N,OC) = inp(N,IC) @ w(OC,IC)^T + b(OC).
    fn matmul_forward(&self, acts: &mut Self::Buf, out: Span, inp: Span, params: &Self::Buf, lin: Linear, ic: usize);
    /// dinp = dout @ w; dw += dout^T @ inp; db += sum_rows(dout).
    #[allow(clippy::too_many_arguments)]
    fn matmul_backward(
        &self,
        dacts: &mut Self::Buf,
        dinp: Span,
        dout: Span,
        grads: &mut Self::Buf,
        dlin: Linear,
        acts: &Self::Buf,
        inp: Span,
        params: &Self::Buf,
        w: Span,
        ic: usize,
    );

    /// Causal self-attention: out(B,T,C) from qkv(B,T,3C), and stats(B,NH,T,2), each attention
    /// row's softmax maximum and 1/sum, from which the backward recomputes the probabilities
    /// (no B x NH x T x T matrix is kept).
    #[allow(clippy::too_many_arguments)]
    fn attention_forward(
        &self,
        acts: &mut Self::Buf,
        out: Span,
        stats: Span,
        qkv: Span,
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
        drop: Dropout,
    );
    /// dqkv(B,T,3C) from dout(B,T,C), the forward's qkv and its stats.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        dacts: &mut Self::Buf,
        dqkv: Span,
        dout: Span,
        acts: &Self::Buf,
        qkv: Span,
        stats: Span,
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
        drop: Dropout,
    );

    /// out = gelu_tanh(inp), elementwise.
    fn gelu_forward(&self, acts: &mut Self::Buf, out: Span, inp: Span);
    /// dinp = gelu'(inp) * dout.
    fn gelu_backward(&self, dacts: &mut Self::Buf, dinp: Span, dout: Span, acts: &Self::Buf, inp: Span);
    /// out = a + b, elementwise.
    fn residual_forward(&self, acts: &mut Self::Buf, out: Span, a: Span, b: Span);
    /// dst = src (a residual branch's output gradient, copied before its dropout mask).
    fn copy(&self, buf: &mut Self::Buf, dst: Span, src: Span);

    /// Fused softmax + cross-entropy over the first `v` of `vp` logits per row of logits(N,Vp):
    /// writes each row's loss into `losses(N)`; with `grad_scale = Some(s)` it then overwrites
    /// the logits with `dlogits = s * (softmax - onehot(target))` (zero in padded columns), so
    /// neither the probabilities nor a second (N,Vp) buffer are ever needed.
    #[allow(clippy::too_many_arguments)]
    fn crossentropy_forward(
        &self,
        acts: &mut Self::Buf,
        logits: Span,
        losses: Span,
        targets: &[u32],
        v: usize,
        vp: usize,
        grad_scale: Option<f32>,
    );

    /// The classifier's [`Backend::matmul_backward`] (no bias), reading its output gradient
    /// where [`Backend::crossentropy_forward`] left it, in place of the logits in `acts`:
    /// dinp(N,IC) = dlogits(N,OC) @ w(OC,IC) into `dacts`; dw(OC,IC) += dlogits^T @ inp.
    #[allow(clippy::too_many_arguments)]
    fn classifier_backward(
        &self,
        dacts: &mut Self::Buf,
        dinp: Span,
        grads: &mut Self::Buf,
        dw: Span,
        acts: &Self::Buf,
        dlogits: Span,
        inp: Span,
        params: &Self::Buf,
        w: Span,
        ic: usize,
    );
    /// Sum of `span`, reduced in a fixed order (deterministic); used for the mean loss.
    fn sum(&self, buf: &Self::Buf, span: Span) -> f64;

    /// Sum of squares of `span`, reduced in a fixed order (deterministic).
    fn sum_squares(&self, buf: &Self::Buf, span: Span) -> f64;
    /// One AdamW step (torch.optim.AdamW semantics) over `span` of params/grads/m/v, each
    /// gradient multiplied by `grad_scale` as it is read (gradient clipping fused into the
    /// update, as llm.c does: no separate pass over the gradients; `grads` is left as it is).
    #[allow(clippy::too_many_arguments)]
    fn adamw_update(
        &self,
        params: &mut Self::Buf,
        grads: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        span: Span,
        hp: AdamW,
        step: u64,
        weight_decay: f32,
        grad_scale: f32,
    );
}

/// AdamW hyper-parameters for one step.
#[derive(Clone, Copy, Debug)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
}
