//! LayerNorm over the last dimension, eps 1e-5, optional bias (nanoGPT's `LayerNorm(ndim, bias)`).

use super::mathf;
use super::simd::dispatch;
use rayon::prelude::*;

pub const EPS: f32 = 1e-5;

/// Rows per partial sum of the weight gradients: a fixed split, so the order of the reduction
/// never depends on thread scheduling.
pub(super) const ROWS_PER_PARTIAL: usize = 64;

/// out(N,C) = (inp - mean) * rstd * w + b; also stores mean(N) and rstd(N) for backward.
pub fn layernorm_forward(out: &mut [f32], mean: &mut [f32], rstd: &mut [f32], inp: &[f32], w: &[f32], b: Option<&[f32]>) {
    let c = w.len();
    let b = b.unwrap_or(&[]);
    out.par_chunks_mut(c).zip(inp.par_chunks(c)).zip(mean.par_iter_mut().zip(rstd.par_iter_mut())).for_each(|((o, x), (m, r))| {
        (*m, *r) = layernorm_row(o, x, w, b);
    });
}

dispatch! {
    /// One row: returns (mean, rstd); `b` is empty when there is no bias.
    pub(super) fn layernorm_row(o: &mut [f32], x: &[f32], w: &[f32], b: &[f32]) -> (f32, f32) {
        let c = w.len();
        // equal-length slices, so the loops below have no bounds checks and vectorise
        let (o, x) = (&mut o[..c], &x[..c]);
        let mu = mathf::sum_by(x, |v| v) / c as f32;
        let var = mathf::sum_by(x, |v| (v - mu) * (v - mu)) / c as f32;
        let s = 1.0 / (var + EPS).sqrt();
        if b.is_empty() {
            for ((o, &x), &w) in o.iter_mut().zip(x).zip(w) {
                *o = (x - mu) * s * w;
            }
        } else {
            for (((o, &x), &w), &b) in o.iter_mut().zip(x).zip(w).zip(&b[..c]) {
                *o = (x - mu) * s * w + b;
            }
        }
        (mu, s)
    }
}

/// dinp += ...; dw += sum_rows(dout * norm); db += sum_rows(dout).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    dinp: &mut [f32],
    dw: &mut [f32],
    db: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    mean: &[f32],
    rstd: &[f32],
    w: &[f32],
) {
    let c = w.len();
    let partials = backward_blocks(
        dinp,
        dout,
        inp,
        c,
        || (),
        |_, row, di, d, x, part| {
            layernorm_row_backward(di, part, d, x, w, mean[row], rstd[row]);
        },
    );
    add_partials(dw, db, &partials);
}

/// The backward's rows of (N, C) `dinp`, `dout`, `inp` in fixed blocks of [`ROWS_PER_PARTIAL`]
/// rows, one task each: `row(scratch, index, dinp, dout, inp, part)` on each row of a block, with
/// the block's partial weight/bias gradient `part` ([dw (C), db (C)]) and a task's `scratch`;
/// returns the partials in block order (to add with [`add_partials`]), so the reduction's order
/// never depends on scheduling.
pub(super) fn backward_blocks<T: Send + Sync, S>(
    dinp: &mut [T],
    dout: &[T],
    inp: &[T],
    c: usize,
    scratch: impl Fn() -> S + Sync + Send,
    row: impl Fn(&mut S, usize, &mut [T], &[T], &[T], &mut [f32]) + Sync + Send,
) -> Vec<Vec<f32>> {
    let rows = ROWS_PER_PARTIAL * c;
    dinp.par_chunks_mut(rows)
        .zip(dout.par_chunks(rows))
        .zip(inp.par_chunks(rows))
        .enumerate()
        .map(|(blk, ((di, d), x))| {
            let (mut part, mut s) = (vec![0.0f32; 2 * c], scratch());
            for (r, ((di, d), x)) in di.chunks_mut(c).zip(d.chunks(c)).zip(x.chunks(c)).enumerate() {
                row(&mut s, blk * ROWS_PER_PARTIAL + r, di, d, x, &mut part);
            }
            part
        })
        .collect()
}

/// dw += each block's partial weight gradient, db += its partial bias gradient (`[dw (C), db
/// (C)]` per block), in block order.
pub(super) fn add_partials(dw: &mut [f32], mut db: Option<&mut [f32]>, partials: &[Vec<f32>]) {
    let c = dw.len();
    for part in partials {
        for i in 0..c {
            dw[i] += part[i];
        }
        if let Some(db) = db.as_deref_mut() {
            for i in 0..c {
                db[i] += part[c + i];
            }
        }
    }
}

dispatch! {
    /// One row of the backward: dinp += ..., part[..C] += dout * norm, part[C..] += dout.
    pub(super) fn layernorm_row_backward(di: &mut [f32], part: &mut [f32], d: &[f32], x: &[f32], w: &[f32], mu: f32, s: f32) {
        let c = w.len();
        // equal-length slices, so the loop below has no bounds checks and vectorises
        let (di, d, x) = (&mut di[..c], &d[..c], &x[..c]);
        let (pw, pb) = part[..2 * c].split_at_mut(c);
        // two reductions: mean(dnorm) and mean(dnorm * norm), dnorm = w * dout
        let dnorm_mean = mathf::sum_by2(w, d, |wi, di| wi * di) / c as f32;
        let dnorm_norm_mean = mathf::sum_by3(w, d, x, |wi, di, xi| wi * di * ((xi - mu) * s)) / c as f32;
        for (((((di, &d), &x), &w), pw), pb) in di.iter_mut().zip(d).zip(x).zip(w).zip(pw).zip(pb) {
            let norm = (x - mu) * s;
            let dnorm = w * d;
            *pw += norm * d;
            *pb += d;
            *di += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * s;
        }
    }
}

/// The plain version of [`layernorm_forward`] (sequential sums), the reference it is tested
/// against and the `kernels = "reference"` path.
pub fn layernorm_forward_naive(out: &mut [f32], mean: &mut [f32], rstd: &mut [f32], inp: &[f32], w: &[f32], b: Option<&[f32]>) {
    let c = w.len();
    out.par_chunks_mut(c).zip(inp.par_chunks(c)).zip(mean.par_iter_mut().zip(rstd.par_iter_mut())).for_each(|((o, x), (m, r))| {
        let mu = x.iter().sum::<f32>() / c as f32;
        let var = x.iter().map(|&v| (v - mu) * (v - mu)).sum::<f32>() / c as f32;
        let s = 1.0 / (var + EPS).sqrt();
        for i in 0..c {
            o[i] = (x[i] - mu) * s * w[i] + b.map_or(0.0, |b| b[i]);
        }
        (*m, *r) = (mu, s);
    });
}

/// The plain version of [`layernorm_backward`]: rows in order, sequential sums.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward_naive(
    dinp: &mut [f32],
    dw: &mut [f32],
    db: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    mean: &[f32],
    rstd: &[f32],
    w: &[f32],
) {
    let c = w.len();
    let mut db = db;
    for (row, ((di, d), x)) in dinp.chunks_mut(c).zip(dout.chunks(c)).zip(inp.chunks(c)).enumerate() {
        let (mu, s) = (mean[row], rstd[row]);
        let mut dnorm_mean = 0.0f32;
        let mut dnorm_norm_mean = 0.0f32;
        for i in 0..c {
            let norm = (x[i] - mu) * s;
            dnorm_mean += w[i] * d[i];
            dnorm_norm_mean += w[i] * d[i] * norm;
        }
        dnorm_mean /= c as f32;
        dnorm_norm_mean /= c as f32;
        for i in 0..c {
            let norm = (x[i] - mu) * s;
            dw[i] += norm * d[i];
            if let Some(db) = db.as_deref_mut() {
                db[i] += d[i];
            }
            di[i] += (w[i] * d[i] - dnorm_mean - norm * dnorm_norm_mean) * s;
        }
    }
}
