//! Elementwise kernels: GELU, residual add, dropout, scaling.

use super::mathf;
use super::simd::dispatch;
use crate::backend::Dropout;
use rayon::prelude::*;

/// Elements per parallel task for elementwise work.
const CHUNK: usize = 1 << 14;

/// sqrt(2/pi), for the tanh approximation of GELU (GPT-2's "gelu_new").
const GELU_SCALE: f32 = 0.797_884_6;

/// out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
/// <https://pytorch.org/docs/stable/generated/torch.nn.GELU.html> (approximate='tanh').
pub fn gelu_forward(out: &mut [f32], inp: &[f32]) {
    out.par_chunks_mut(CHUNK).zip(inp.par_chunks(CHUNK)).for_each(|(o, x)| gelu_forward_chunk(o, x));
}

dispatch! {
    pub(super) fn gelu_forward_chunk(o: &mut [f32], x: &[f32]) {
        for (o, &x) in o.iter_mut().zip(x) {
            let cube = 0.044715 * x * x * x;
            *o = 0.5 * x * (1.0 + mathf::tanh(GELU_SCALE * (x + cube)));
        }
    }
}

/// dinp = gelu'(inp) * dout.
pub fn gelu_backward(dinp: &mut [f32], dout: &[f32], inp: &[f32]) {
    dinp.par_chunks_mut(CHUNK)
        .zip(dout.par_chunks(CHUNK))
        .zip(inp.par_chunks(CHUNK))
        .for_each(|((di, d), x)| gelu_backward_chunk(di, d, x));
}

dispatch! {
    pub(super) fn gelu_backward_chunk(di: &mut [f32], d: &[f32], x: &[f32]) {
        for ((di, &d), &x) in di.iter_mut().zip(d).zip(x) {
            let cube = 0.044715 * x * x * x;
            let tanh_arg = GELU_SCALE * (x + cube);
            let tanh_out = mathf::tanh(tanh_arg);
            let sech2 = 1.0 - tanh_out * tanh_out;
            let grad = 0.5 * (1.0 + tanh_out) + x * 0.5 * sech2 * GELU_SCALE * (1.0 + 3.0 * 0.044715 * x * x);
            *di = grad * d;
        }
    }
}

/// The plain version of [`gelu_forward`] (the platform's tanh).
pub fn gelu_forward_naive(out: &mut [f32], inp: &[f32]) {
    for (o, &x) in out.iter_mut().zip(inp) {
        *o = 0.5 * x * (1.0 + (GELU_SCALE * (x + 0.044715 * x * x * x)).tanh());
    }
}

/// The plain version of [`gelu_backward`]: dinp = gelu'(inp) * dout.
pub fn gelu_backward_naive(dinp: &mut [f32], dout: &[f32], inp: &[f32]) {
    for ((di, &d), &x) in dinp.iter_mut().zip(dout).zip(inp) {
        let tanh_arg = GELU_SCALE * (x + 0.044715 * x * x * x);
        let sech = 1.0 / tanh_arg.cosh();
        let grad = 0.5 * (1.0 + tanh_arg.tanh()) + x * 0.5 * sech * sech * GELU_SCALE * (1.0 + 3.0 * 0.044715 * x * x);
        *di = grad * d;
    }
}

/// out = a + b.
pub fn residual_forward(out: &mut [f32], a: &[f32], b: &[f32]) {
    out.par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK)).zip(b.par_chunks(CHUNK)).for_each(|((o, a), b)| {
        for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
            *o = a + b;
        }
    });
}

/// dst = src.
pub fn copy(dst: &mut [f32], src: &[f32]) {
    dst.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(d, s)| d.copy_from_slice(s));
}

/// x[i] *= mask(i): zero with probability p, else 1/(1-p). Forward and backward are the same op.
pub fn dropout(x: &mut [f32], drop: Dropout) {
    if !drop.active() {
        return;
    }
    x.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, x)| {
        for (j, x) in x.iter_mut().enumerate() {
            *x *= drop.scale(ci * CHUNK + j);
        }
    });
}
