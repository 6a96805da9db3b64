//! Linear layers through the `gemm` crate, with every transpose folded into strides (no copies).
//! A naive loop version is kept beside it as the algorithmic reference the tests compare with.

use rayon::prelude::*;

/// Columns per task when summing the bias gradient (each task sums all rows of its columns in
/// order: deterministic).
const BIAS_COLS: usize = 32;

/// dst(m,n) = alpha * lhs(m,k) @ rhs(k,n) (+ dst when `accumulate`), through the `gemm`
/// crate; every operand given by a pointer, a row stride and a column stride (in elements).
///
/// # Safety
/// Every element the strides address must be valid for reads (lhs, rhs) or writes (dst), and
/// `dst` must not overlap `lhs` or `rhs`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_raw(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: *const f32,
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: *const f32,
    rhs_rs: usize,
    rhs_cs: usize,
    alpha: f32,
    par: gemm::Parallelism,
) {
    // SAFETY: forwarded from the caller's contract; gemm computes dst := 1 * dst + alpha * lhs @ rhs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            alpha,
            false,
            false,
            false,
            par,
        )
    }
}

/// Products of fewer multiply-adds than this (m n k) split their rows across threads
/// themselves; larger ones use gemm's threading (measured on GPT shapes, 2 threads).
const SPLIT_ROWS_BELOW: f64 = 3e8;

/// ... unless every thread gets at least this many rows: then one single-threaded call per
/// thread wins again (the `small` config's 2048-row products, 1-4% per step in paired runs;
/// the 256-row products of `gpt2` stay with gemm's threading, which was 4-10% faster there).
const SPLIT_ROWS_MIN_PER_THREAD: usize = 512;

/// dst(m,n) (+)= lhs(m,k) @ rhs(k,n), all given by (row stride, column stride).
///
/// Below [`SPLIT_ROWS_BELOW`] (or with [`SPLIT_ROWS_MIN_PER_THREAD`] rows per thread), the rows of `dst` are split into one contiguous block per pool thread, each a
/// single-threaded `gemm` call: for the skinny shapes of small models this beats gemm's own
/// threading, and every output element is still computed by exactly one call (deterministic).
#[allow(clippy::too_many_arguments)]
fn gemm_strided(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: &[f32],
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: &[f32],
    rhs_rs: usize,
    rhs_cs: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    // Bounds: the last element each operand touches must lie inside its slice.
    assert!((m - 1) * dst_rs + n <= dst.len());
    assert!(k == 0 || (m - 1) * lhs_rs + (k - 1) * lhs_cs < lhs.len());
    assert!(k == 0 || (k - 1) * rhs_rs + (n - 1) * rhs_cs < rhs.len());
    // rows r0..r0+mi of the product into `d`, which starts at dst row r0
    let rows_into = |d: &mut [f32], r0: usize, mi: usize, par: gemm::Parallelism| {
        // SAFETY: `d` starts at row r0 of dst and spans mi rows (the last one possibly short of
        // its stride padding but holding its n elements); lhs rows r0..r0+mi and all of rhs are
        // inside their slices by the asserts above; `d` is borrowed exclusively, so it aliases
        // neither `lhs` nor `rhs`.
        unsafe {
            gemm_raw(
                mi,
                n,
                k,
                d.as_mut_ptr(),
                dst_rs,
                accumulate,
                lhs.as_ptr().add(r0 * lhs_rs),
                lhs_rs,
                lhs_cs,
                rhs.as_ptr(),
                rhs_rs,
                rhs_cs,
                1.0,
                par,
            )
        }
    };
    let threads = rayon::current_num_threads();
    if threads > 1 && (m * n * k) as f64 >= SPLIT_ROWS_BELOW && m / threads < SPLIT_ROWS_MIN_PER_THREAD {
        // big products: gemm's own threading splits them better
        return rows_into(dst, 0, m, gemm::Parallelism::Rayon(threads));
    }
    let rows = m.div_ceil(threads.min(m));
    dst[..(m - 1) * dst_rs + n]
        .par_chunks_mut(rows * dst_rs)
        .enumerate()
        .for_each(|(i, d)| rows_into(d, i * rows, rows.min(m - i * rows), gemm::Parallelism::None));
}

/// out(N,OC) = inp(N,IC) @ w(OC,IC)^T + b(OC).
pub fn matmul_forward(out: &mut [f32], inp: &[f32], w: &[f32], b: Option<&[f32]>, ic: usize) {
    let oc = w.len() / ic;
    let n = inp.len() / ic;
    if let Some(b) = b {
        out.par_chunks_mut(oc).for_each(|o| o.copy_from_slice(b));
    }
    // rhs = w^T: element (i, o) = w[o * IC + i]
    gemm_strided(n, oc, ic, out, oc, b.is_some(), inp, ic, 1, w, 1, ic);
}

/// dinp(N,IC) = dout(N,OC) @ w(OC,IC); dw(OC,IC) += dout^T @ inp; db(OC) += sum_rows(dout).
pub fn matmul_backward(dinp: &mut [f32], dw: &mut [f32], db: Option<&mut [f32]>, dout: &[f32], inp: &[f32], w: &[f32], ic: usize) {
    let oc = w.len() / ic;
    let n = inp.len() / ic;
    gemm_strided(n, ic, oc, dinp, ic, false, dout, oc, 1, w, ic, 1);
    // lhs = dout^T: element (o, r) = dout[r * OC + o]
    gemm_strided(oc, ic, n, dw, ic, true, dout, 1, oc, inp, ic, 1);
    if let Some(db) = db {
        db.par_chunks_mut(BIAS_COLS).enumerate().for_each(|(blk, dbc)| {
            let c0 = blk * BIAS_COLS;
            for row in dout.chunks_exact(oc) {
                for (j, d) in dbc.iter_mut().enumerate() {
                    *d += row[c0 + j];
                }
            }
        });
    }
}

/// `matmul_forward` as one library sgemm call with gemm's own threading: the
/// `kernels = "reference"` path (the loop nests below are too slow for whole training runs).
pub fn matmul_forward_reference(out: &mut [f32], inp: &[f32], w: &[f32], b: Option<&[f32]>, ic: usize) {
    let oc = w.len() / ic;
    let n = inp.len() / ic;
    if let Some(b) = b {
        for o in out.chunks_mut(oc) {
            o.copy_from_slice(b);
        }
    }
    // SAFETY: out is (n, oc), inp (n, ic), w (oc, ic), as the strides say.
    unsafe {
        gemm_raw(
            n,
            oc,
            ic,
            out.as_mut_ptr(),
            oc,
            b.is_some(),
            inp.as_ptr(),
            ic,
            1,
            w.as_ptr(),
            1,
            ic,
            1.0,
            gemm::Parallelism::Rayon(rayon::current_num_threads()),
        )
    };
}

/// `matmul_backward` as library sgemm calls with gemm's own threading (the reference path).
pub fn matmul_backward_reference(
    dinp: &mut [f32],
    dw: &mut [f32],
    db: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    w: &[f32],
    ic: usize,
) {
    let oc = w.len() / ic;
    let n = inp.len() / ic;
    let par = gemm::Parallelism::Rayon(rayon::current_num_threads());
    // SAFETY: dinp (n, ic) = dout (n, oc) @ w (oc, ic); dw (oc, ic) += dout^T @ inp (n, ic).
    unsafe {
        gemm_raw(n, ic, oc, dinp.as_mut_ptr(), ic, false, dout.as_ptr(), oc, 1, w.as_ptr(), ic, 1, 1.0, par);
        gemm_raw(oc, ic, n, dw.as_mut_ptr(), ic, true, dout.as_ptr(), 1, oc, inp.as_ptr(), ic, 1, 1.0, par);
    }
    if let Some(db) = db {
        for row in dout.chunks_exact(oc) {
            for (d, &g) in db.iter_mut().zip(row) {
                *d += g;
            }
        }
    }
}

/// The plain loop nest `matmul_forward` computes, for tests.
pub fn matmul_forward_naive(out: &mut [f32], inp: &[f32], w: &[f32], b: Option<&[f32]>, ic: usize) {
    let oc = w.len() / ic;
    for (o, x) in out.chunks_mut(oc).zip(inp.chunks(ic)) {
        for j in 0..oc {
            let wr = &w[j * ic..(j + 1) * ic];
            o[j] = b.map_or(0.0, |b| b[j]) + x.iter().zip(wr).map(|(a, b)| a * b).sum::<f32>();
        }
    }
}

/// The plain loop nest `matmul_backward` computes, for tests.
pub fn matmul_backward_naive(dinp: &mut [f32], dw: &mut [f32], db: Option<&mut [f32]>, dout: &[f32], inp: &[f32], w: &[f32], ic: usize) {
    let oc = w.len() / ic;
    let mut db = db;
    dinp.fill(0.0);
    for (r, d) in dout.chunks(oc).enumerate() {
        for j in 0..oc {
            for i in 0..ic {
                dinp[r * ic + i] += d[j] * w[j * ic + i];
                dw[j * ic + i] += d[j] * inp[r * ic + i];
            }
            if let Some(db) = db.as_deref_mut() {
                db[j] += d[j];
            }
        }
    }
}
