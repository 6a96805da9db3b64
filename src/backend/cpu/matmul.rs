//! Linear layers through a GEMM library, with every transpose folded into strides (no copies):
//! the `gemm` crate, except that on x86-64 CPUs with AVX2 but no AVX-512 every product goes
//! through `private-gemm-x86`'s AVX2 kernels, one single-threaded call per thread ([`Par::Split`])
//! or per attention head: faster there, also against `gemm`'s own threading (the measurements are
//! in PERFORMANCE.md). `GPTRAIN_ISA=avx2` runs the same on an AVX-512 CPU. A naive loop
//! version is kept beside it as the algorithmic reference the tests compare with.

use super::simd::Isa;
use anyhow::{bail, Result};
use rayon::prelude::*;

/// Columns per task when summing the bias gradient (each task sums all rows of its columns in
/// order: deterministic).
const BIAS_COLS: usize = 32;

/// The library behind the products (the `gemm` crate's own threading only with `Gemm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmLib {
    /// The `gemm` crate (its AVX-512, AVX2 or plain kernels, picked at run time).
    Gemm,
    /// `private-gemm-x86`'s AVX2+FMA kernels.
    Avx2Asm,
}

impl GemmLib {
    /// The default for this CPU: `Avx2Asm` where the kernels run AVX2 ([`Isa::get`]: a CPU with
    /// AVX2 and FMA but no AVX-512, where it was measured faster, or `GPTRAIN_ISA=avx2`), else
    /// `Gemm`. The environment variable `GPTRAIN_GEMM` = `gemm` or `avx2asm` overrides it (for
    /// benchmarks and tests; [`super::simd::check_env`] rejects a value that cannot hold).
    pub fn get() -> GemmLib {
        static LIB: std::sync::OnceLock<GemmLib> = std::sync::OnceLock::new();
        *LIB.get_or_init(|| match GemmLib::from_env().ok().flatten() {
            _ if Isa::is_capped() => GemmLib::Avx2Asm,
            Some(lib) => lib,
            None if Isa::get() == Isa::Avx2 => GemmLib::Avx2Asm,
            None => GemmLib::Gemm,
        })
    }

    /// `GPTRAIN_GEMM`, checked against this CPU and `GPTRAIN_ISA`; `None` when unset.
    pub fn from_env() -> Result<Option<GemmLib>> {
        let Some(v) = std::env::var_os("GPTRAIN_GEMM").filter(|v| !v.is_empty()) else { return Ok(None) };
        let lib = match v.to_str() {
            Some("gemm") => GemmLib::Gemm,
            Some("avx2asm") => GemmLib::Avx2Asm,
            _ => bail!("GPTRAIN_GEMM={v:?} is not a choice; hint: use `gemm` or `avx2asm`, or unset it"),
        };
        if lib == GemmLib::Avx2Asm && Isa::detected() < Isa::Avx2 {
            bail!("GPTRAIN_GEMM=avx2asm but this CPU has no AVX2 with FMA; hint: unset GPTRAIN_GEMM");
        }
        if lib == GemmLib::Gemm && Isa::is_capped() {
            bail!("GPTRAIN_GEMM=gemm cannot be held to GPTRAIN_ISA=avx2 (gemm uses the CPU's widest vectors); hint: unset one of them");
        }
        Ok(Some(lib))
    }

    /// For the bench's header.
    pub fn describe(self) -> &'static str {
        match self {
            GemmLib::Gemm => "gemm",
            GemmLib::Avx2Asm if Isa::is_capped() => "private-gemm-x86 AVX2 for every product (GPTRAIN_ISA=avx2)",
            GemmLib::Avx2Asm => "private-gemm-x86 AVX2 for every product",
        }
    }
}

/// How [`gemm_raw`] spreads a product over the pool's threads.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Par {
    /// One call on this thread.
    None,
    /// `gemm`'s own threading over this many threads (under `GPTRAIN_ISA=avx2`, which `gemm`
    /// cannot honour, [`Par::Split`] instead).
    Gemm(usize),
    /// dst split into one contiguous block per thread (at most this many blocks), each a
    /// single-threaded call: blocks of its columns where [`split_columns`] says so, else of its
    /// rows. Every output element is computed by exactly one call over all of k, in blocks that
    /// do not depend on scheduling (deterministic, and the same bits either way).
    Split(usize),
}

/// Rows of the AVX2 kernel's register tile in `private-gemm-x86` (it computes dst^T, so these
/// are columns of our dst): column blocks in whole multiples of it leave no ragged tiles inside.
const AVX2_TILE: usize = 24;

/// Products of at least this many multiply-adds (m n k) that [`Par::Split`] hands to
/// `private-gemm-x86` are split by columns rather than rows.
const SPLIT_COLUMNS_FROM: f64 = 1e8;

/// Whether [`Par::Split`] gives each of `threads` threads a block of dst's columns rather than
/// of its rows. With `private-gemm-x86` (AVX2), on products of at least [`SPLIT_COLUMNS_FROM`]
/// multiply-adds and 48 columns per thread, columns are faster (two threads: each streams all of
/// lhs and packs half of rhs, instead of packing all of rhs for half of lhs); smaller products
/// and `gemm`'s kernels are faster by rows (PERFORMANCE.md has the measurements).
fn split_columns(lib: GemmLib, m: usize, n: usize, k: usize, threads: usize) -> bool {
    lib == GemmLib::Avx2Asm && threads > 1 && n >= 2 * AVX2_TILE * threads && macs(m, n, k) >= SPLIT_COLUMNS_FROM
}

/// The multiply-adds of an (m, k) x (k, n) product, in f64 (no overflow on 32-bit targets).
fn macs(m: usize, n: usize, k: usize) -> f64 {
    m as f64 * n as f64 * k as f64
}

/// A matrix a product reads: element (i, j) at `ptr + i * rs + j * cs` (strides in elements),
/// so a transpose is the same memory with its strides swapped ([`Src::t`]), never a copy.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Src {
    pub ptr: *const f32,
    pub rs: usize,
    pub cs: usize,
}

// SAFETY: a Src is an address and two strides; which elements a thread may read through it is
// the contract of the unsafe function that reads them ([`gemm_raw`]).
unsafe impl Send for Src {}
// SAFETY: as above.
unsafe impl Sync for Src {}

impl Src {
    /// A row-major matrix whose rows lie `ld` elements apart.
    pub fn rows(ptr: *const f32, ld: usize) -> Src {
        Src { ptr, rs: ld, cs: 1 }
    }

    /// The transpose: the same memory, strides swapped.
    pub fn t(self) -> Src {
        Src { rs: self.cs, cs: self.rs, ..self }
    }

    /// The matrix from element (i, j) on (address arithmetic only: nothing is read).
    pub fn at(self, i: usize, j: usize) -> Src {
        Src { ptr: self.ptr.wrapping_add(i * self.rs + j * self.cs), ..self }
    }
}

/// The matrix a product writes: row-major, rows `rs` elements apart.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dst {
    pub ptr: *mut f32,
    pub rs: usize,
}

// SAFETY: as for [`Src`]: which elements a thread may write through it is the contract of the
// unsafe code that writes them ([`gemm_raw`], which hands each thread a disjoint block; the
// attention kernels, which hand each task its own (batch row, head) block).
unsafe impl Send for Dst {}
// SAFETY: as above.
unsafe impl Sync for Dst {}

impl Dst {
    /// A row-major matrix whose rows lie `ld` elements apart.
    pub fn rows(ptr: *mut f32, ld: usize) -> Dst {
        Dst { ptr, rs: ld }
    }

    /// The matrix from element (i, j) on (address arithmetic only: nothing is written).
    pub fn at(self, i: usize, j: usize) -> Dst {
        Dst { ptr: self.ptr.wrapping_add(i * self.rs + j), ..self }
    }
}

/// A slice read as a matrix, as [`Src`] describes.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    /// A row-major matrix whose rows lie `ld` elements apart.
    pub fn rows(data: &'a [f32], ld: usize) -> Mat<'a> {
        Mat { data, rs: ld, cs: 1 }
    }

    /// The transpose: the same slice, strides swapped.
    pub fn t(self) -> Mat<'a> {
        Mat { rs: self.cs, cs: self.rs, ..self }
    }

    /// Its [`Src`], after checking that all of its first `rows` x `cols` elements lie in the slice.
    fn src(self, rows: usize, cols: usize) -> Src {
        assert!(rows == 0 || cols == 0 || (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len());
        Src { ptr: self.data.as_ptr(), rs: self.rs, cs: self.cs }
    }
}

/// dst(m,n) = alpha * lhs(m,k) @ rhs(k,n) (+ dst when `accumulate`), through the `gemm`
/// crate (or, single-threaded, the library [`GemmLib::get`] picks), threaded as `par` says.
///
/// # Safety
/// Every element the strides address must be valid for reads (lhs, rhs) or writes (dst), and
/// `dst` must not overlap `lhs` or `rhs`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_raw(m: usize, n: usize, k: usize, dst: Dst, accumulate: bool, lhs: Src, rhs: Src, alpha: f32, par: Par) {
    let par = match par {
        Par::Gemm(threads) if Isa::is_capped() => Par::Split(threads),
        par => par,
    };
    if let Par::Split(threads) = par {
        if m == 0 || n == 0 {
            return;
        }
        let by_cols = split_columns(GemmLib::get(), m, n, k, threads);
        // blocks along dst's columns (whole register tiles) or its rows, one per thread
        let (len, block) =
            if by_cols { (n, n.div_ceil(threads).next_multiple_of(AVX2_TILE)) } else { (m, m.div_ceil(threads.clamp(1, m))) };
        (0..len.div_ceil(block)).into_par_iter().for_each(|i| {
            let (start, size) = (i * block, block.min(len - i * block));
            let (r0, c0, mi, ni) = if by_cols { (0, start, m, size) } else { (start, 0, size, n) };
            // SAFETY: rows r0..r0+mi and columns c0..c0+ni of dst, the same rows of lhs and
            // columns of rhs, are parts of the caller's operands (the caller's contract); each
            // task writes only its own block of dst.
            unsafe { gemm_raw(mi, ni, k, dst.at(r0, c0), accumulate, lhs.at(r0, 0), rhs.at(0, c0), alpha, Par::None) }
        });
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if matches!(par, Par::None) && GemmLib::get() == GemmLib::Avx2Asm {
        // SAFETY: forwarded from the caller's contract; GemmLib::get picks Avx2Asm only where
        // the CPU has AVX2 and FMA.
        return unsafe { gemm_avx2asm(m, n, k, dst, accumulate, lhs, rhs, alpha) };
    }
    let par = match par {
        Par::Gemm(threads) => gemm::Parallelism::Rayon(threads),
        _ => gemm::Parallelism::None,
    };
    // SAFETY: forwarded from the caller's contract; gemm computes dst := 1 * dst + alpha * lhs @ rhs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.ptr,
            1,
            dst.rs as isize,
            accumulate,
            lhs.ptr,
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.ptr,
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            alpha,
            false,
            false,
            false,
            par,
        )
    }
}

/// As [`gemm_raw`], single-threaded, through `private-gemm-x86`'s AVX2 kernels, in column
/// blocks of [`avx2asm_cols`].
///
/// # Safety
/// As [`gemm_raw`]; and the CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_avx2asm(m: usize, n: usize, k: usize, dst: Dst, accumulate: bool, lhs: Src, rhs: Src, alpha: f32) {
    use private_gemm_x86 as pg;
    if k == 0 {
        // the library leaves dst as it was for an empty sum; the product of nothing is zero
        if !accumulate {
            for i in 0..m {
                // SAFETY: row i of dst holds n writable elements (the caller's contract).
                unsafe { std::slice::from_raw_parts_mut(dst.ptr.add(i * dst.rs), n) }.fill(0.0);
            }
        }
        return;
    }
    let beta = if accumulate { pg::Accum::Add } else { pg::Accum::Replace };
    let cols = avx2asm_cols(n, k);
    for j0 in (0..n).step_by(cols) {
        // SAFETY: the block's columns (j0 onwards) of dst and rhs are columns of the caller's
        // operands (its contract: strides in elements, dst not overlapping lhs or rhs); null
        // row/column index arrays mean dense rows and columns, a null diagonal means none;
        // alpha is read as an f32 (DType::F32); one thread, no pool.
        unsafe {
            pg::gemm(
                pg::DType::F32,
                pg::IType::U64,
                pg::InstrSet::Avx256,
                m,
                cols.min(n - j0),
                k,
                dst.ptr.add(j0).cast(),
                dst.rs as isize,
                1,
                std::ptr::null(),
                std::ptr::null(),
                pg::DstKind::Full,
                beta,
                lhs.ptr.cast(),
                lhs.rs as isize,
                lhs.cs as isize,
                false,
                std::ptr::null(),
                0,
                rhs.ptr.add(j0 * rhs.cs).cast(),
                rhs.rs as isize,
                rhs.cs as isize,
                false,
                (&raw const alpha).cast(),
                1,
            )
        }
    }
}

/// Columns of dst per `private-gemm-x86` call. For a row-major dst it packs the rhs side, a
/// panel of n x min(k, 512) elements, and takes it whole when that fits its estimate of L2;
/// a panel near the size of L2 thrashes it (slower than the same product in column blocks;
/// PERFORMANCE.md has the measurements). So
/// each call's panel is held to half of L2, in equal blocks that are whole multiples of the
/// AVX2 kernel's 24 rows. Each element still sums over all of k in the same order (the
/// library's depth blocks depend on k alone), so the blocks change no bits.
#[cfg(target_arch = "x86_64")]
fn avx2asm_cols(n: usize, k: usize) -> usize {
    cols_within_half(n, k, gemm_common::cache::CACHE_INFO[1].cache_bytes.max(256 << 10))
}

/// See [`avx2asm_cols`]: column blocks of an n x min(k, 512) panel within half of `l2` bytes.
#[cfg(target_arch = "x86_64")]
fn cols_within_half(n: usize, k: usize, l2: usize) -> usize {
    let panel = n * k.min(512) * std::mem::size_of::<f32>();
    let blocks = panel.div_ceil(l2 / 2).max(1);
    n.div_ceil(blocks).next_multiple_of(AVX2_TILE).min(n).max(1)
}

/// With the `gemm` crate, products of fewer multiply-adds than this (m n k) split themselves
/// across threads ([`Par::Split`]); larger ones use gemm's threading (the faster of the two on
/// GPT shapes with 2 threads; PERFORMANCE.md).
const SPLIT_ROWS_BELOW: f64 = 3e8;

/// ... unless every thread gets at least this many rows: then one single-threaded call per
/// thread wins again (the `small` config's 2048-row products; the 256-row products of `gpt2`
/// stay with gemm's threading, faster there; PERFORMANCE.md).
const SPLIT_ROWS_MIN_PER_THREAD: usize = 512;

/// dst(m,n) (+)= lhs(m,k) @ rhs(k,n), dst row-major and contiguous.
///
/// Below [`SPLIT_ROWS_BELOW`] (or with [`SPLIT_ROWS_MIN_PER_THREAD`] rows per thread), and
/// always with `private-gemm-x86`, `dst` is split into one contiguous block per pool thread
/// ([`Par::Split`]: rows, or columns where [`split_columns`] says so): for the skinny shapes of
/// small models this beats gemm's own threading. With AVX2, `gemm`'s threading (its AVX2
/// kernels) lost to `private-gemm-x86` split by columns on `gpt2`'s 256-row products as well
/// (PERFORMANCE.md).
fn gemm_strided(m: usize, n: usize, k: usize, dst: &mut [f32], accumulate: bool, lhs: Mat, rhs: Mat) {
    if m == 0 || n == 0 {
        return;
    }
    // Bounds: every element each operand touches must lie inside its slice.
    assert!(m * n <= dst.len());
    let (lhs, rhs) = (lhs.src(m, k), rhs.src(k, n));
    let threads = rayon::current_num_threads();
    let gemm_threads = GemmLib::get() == GemmLib::Gemm && macs(m, n, k) >= SPLIT_ROWS_BELOW;
    let par = if threads > 1 && gemm_threads && m / threads < SPLIT_ROWS_MIN_PER_THREAD {
        Par::Gemm(threads) // big products: gemm's own threading splits them better
    } else {
        Par::Split(threads)
    };
    // SAFETY: every element the strides address lies inside its slice (the asserts above);
    // `dst` is borrowed exclusively, so it aliases neither `lhs` nor `rhs`.
    unsafe { gemm_raw(m, n, k, Dst::rows(dst.as_mut_ptr(), n), accumulate, lhs, rhs, 1.0, par) }
}

/// out(N,OC) = inp(N,IC) @ w(OC,IC)^T + b(OC).
pub fn matmul_forward(out: &mut [f32], inp: &[f32], w: &[f32], b: Option<&[f32]>, ic: usize) {
    let oc = w.len() / ic;
    let n = inp.len() / ic;
    if let Some(b) = b {
        out.par_chunks_mut(oc).for_each(|o| o.copy_from_slice(b));
    }
    gemm_strided(n, oc, ic, out, b.is_some(), Mat::rows(inp, ic), Mat::rows(w, ic).t());
}

/// dinp(N,IC) = dout(N,OC) @ w(OC,IC); dw(OC,IC) += dout^T @ inp; db(OC) += sum_rows(dout).
pub fn matmul_backward(dinp: &mut [f32], dw: &mut [f32], db: Option<&mut [f32]>, dout: &[f32], inp: &[f32], w: &[f32], ic: usize) {
    let oc = w.len() / ic;
    let n = inp.len() / ic;
    gemm_strided(n, ic, oc, dinp, false, Mat::rows(dout, oc), Mat::rows(w, ic));
    gemm_strided(oc, ic, n, dw, true, Mat::rows(dout, oc).t(), Mat::rows(inp, ic));
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
        let (out, inp, w) = (Dst::rows(out.as_mut_ptr(), oc), Src::rows(inp.as_ptr(), ic), Src::rows(w.as_ptr(), ic));
        gemm_raw(n, oc, ic, out, b.is_some(), inp, w.t(), 1.0, Par::Gemm(rayon::current_num_threads()))
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
    let par = Par::Gemm(rayon::current_num_threads());
    // SAFETY: dinp (n, ic) = dout (n, oc) @ w (oc, ic); dw (oc, ic) += dout^T @ inp (n, ic).
    unsafe {
        let (dout, inp, w) = (Src::rows(dout.as_ptr(), oc), Src::rows(inp.as_ptr(), ic), Src::rows(w.as_ptr(), ic));
        gemm_raw(n, ic, oc, Dst::rows(dinp.as_mut_ptr(), ic), false, dout, w, 1.0, par);
        gemm_raw(oc, ic, n, Dst::rows(dw.as_mut_ptr(), ic), true, dout.t(), inp, 1.0, par);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// dst(m,n) (+)= alpha * lhs @ rhs by loops, dst's rows `dst_rs` apart.
    #[allow(clippy::too_many_arguments)]
    fn plain(m: usize, n: usize, k: usize, dst: &mut [f32], dst_rs: usize, acc: bool, l: Mat, r: Mat, alpha: f32) {
        for i in 0..m {
            for j in 0..n {
                let s: f32 = (0..k).map(|p| l.data[i * l.rs + p * l.cs] * r.data[p * r.rs + j * r.cs]).sum();
                let d = &mut dst[i * dst_rs + j];
                *d = if acc { *d + alpha * s } else { alpha * s };
            }
        }
    }

    /// `n` values in [-1, 1] from seed `s`.
    fn fill(n: usize, s: u32) -> Vec<f32> {
        (0..n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(s) % 1999) as f32 / 999.0 - 1.0).collect()
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_kernels_compute_every_layout_the_model_uses() {
        if Isa::detected() < Isa::Avx2 {
            return; // nothing to test on this CPU: GemmLib never picks them here
        }
        // (m, n, k): odd sizes to cover the kernels' edges, and a k that spans two depth blocks
        for (m, n, k) in [(37, 29, 19), (64, 48, 128), (5, 3, 1), (70, 33, 600), (3, 70, 0)] {
            // (lhs row stride, lhs col stride, rhs row stride, rhs col stride): plain, lhs
            // transposed (weight gradients), rhs transposed (forward), both, and a padded lhs
            // row stride as in attention's q/k/v views
            let layouts = [(k, 1, n, 1), (1, m, n, 1), (k, 1, 1, k), (1, m, 1, k), (k + 7, 1, n, 1)];
            for (lrs, lcs, rrs, rcs) in layouts {
                let l = fill((m.max(1) - 1) * lrs + (k.max(1) - 1) * lcs + 1, 1);
                let r = fill((k.max(1) - 1) * rrs + (n.max(1) - 1) * rcs + 1, 2);
                for (acc, alpha, dst_rs) in [(false, 1.0, n), (true, 0.5, n + 3)] {
                    let mut want = fill(m * dst_rs, 3);
                    let mut got = want.clone();
                    let (lm, rm) = (Mat { data: &l, rs: lrs, cs: lcs }, Mat { data: &r, rs: rrs, cs: rcs });
                    plain(m, n, k, &mut want, dst_rs, acc, lm, rm, alpha);
                    // SAFETY: every operand is a slice covering the elements its strides address.
                    unsafe { gemm_avx2asm(m, n, k, Dst::rows(got.as_mut_ptr(), dst_rs), acc, lm.src(m, k), rm.src(k, n), alpha) };
                    // (the padding columns of dst_rs > n must come back untouched too)
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        let at = (i / dst_rs, i % dst_rs);
                        assert!(
                            (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                            "m{m} n{n} k{k} {:?} acc {acc} at {at:?}: {g} vs {w}",
                            (lrs, lcs, rrs, rcs)
                        );
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn column_blocks_hold_the_panel_to_half_of_l2() {
        let mib = 1 << 20;
        // small's qkv forward (1152 x 384, 1.7 MiB) on a 2 MiB L2: two blocks of 576
        assert_eq!(cols_within_half(1152, 384, 2 * mib), 576);
        // fc forward, 1536 x 384: three blocks, whole multiples of 24 (528, 528, 480)
        assert_eq!(cols_within_half(1536, 384, 2 * mib), 528);
        // weight gradients reduce over 2048 rows in depth blocks of 512: 384 x 512 fits
        assert_eq!(cols_within_half(384, 2048, 2 * mib), 384);
        // a larger L2, or a narrow product: one call
        assert_eq!(cols_within_half(1152, 384, 4 * mib), 1152);
        assert_eq!(cols_within_half(7, 100_000, 256 << 10), 7);
        // an empty product still steps forward
        assert_eq!(cols_within_half(0, 384, 2 * mib), 1);
    }

    #[test]
    fn only_large_avx2_products_split_by_columns() {
        let avx2 = GemmLib::Avx2Asm;
        // small's linear layers (2048 rows): forward, input and weight gradients
        assert!(split_columns(avx2, 2048, 1152, 384, 2));
        assert!(split_columns(avx2, 2048, 384, 1536, 2));
        assert!(split_columns(avx2, 1536, 384, 2048, 2));
        // gpt2's 256-row products, its lm_head included
        assert!(split_columns(avx2, 256, 768, 768, 2));
        assert!(split_columns(avx2, 256, 50304, 768, 2));
        // tiny's largest (768 x 512 x 128), one thread, too few columns, or `gemm`'s kernels
        assert!(!split_columns(avx2, 768, 512, 128, 2));
        assert!(!split_columns(avx2, 2048, 1152, 384, 1));
        assert!(!split_columns(avx2, 1 << 20, 64, 384, 2));
        assert!(!split_columns(GemmLib::Gemm, 2048, 1152, 384, 2));
    }

    #[test]
    fn a_product_split_across_threads_matches_the_loops() {
        // large enough for the column rule with the AVX2 library (m n k >= 1e8), odd-sized
        // blocks; weight-gradient layout (lhs transposed) and forward layout (rhs transposed)
        let (m, n, k) = (500, 470, 430);
        for (lrs, lcs, rrs, rcs) in [(1, m, n, 1), (k, 1, 1, k)] {
            let (l, r) = (fill(m * k, 1), fill(k * n, 2));
            let mut want = vec![0.0f32; m * n];
            let (lm, rm) = (Mat { data: &l, rs: lrs, cs: lcs }, Mat { data: &r, rs: rrs, cs: rcs });
            plain(m, n, k, &mut want, n, false, lm, rm, 1.0);
            let (ls, rs) = (lm.src(m, k), rm.src(k, n));
            let mut whole = vec![0.0f32; m * n];
            // SAFETY: every operand is a slice covering the elements its strides address.
            unsafe { gemm_raw(m, n, k, Dst::rows(whole.as_mut_ptr(), n), false, ls, rs, 1.0, Par::None) };
            for threads in [2, 3] {
                let mut got = vec![0.0f32; m * n];
                // SAFETY: as above.
                unsafe { gemm_raw(m, n, k, Dst::rows(got.as_mut_ptr(), n), false, ls, rs, 1.0, Par::Split(threads)) };
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!((g - w).abs() <= 1e-3 * (1.0 + w.abs()), "{threads} threads, at {i}: {g} vs {w}");
                }
                // with the AVX2 library every element sums over k in the same order whichever
                // block holds it (rows or columns): the split changes no bits
                if GemmLib::get() == GemmLib::Avx2Asm {
                    assert!(got.iter().zip(&whole).all(|(a, b)| a.to_bits() == b.to_bits()), "{threads} threads");
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn column_blocks_change_no_bits() {
        if Isa::detected() < Isa::Avx2 {
            return; // GemmLib never picks the AVX2 kernels on this CPU
        }
        // the model's forward layout (rhs = w^T); 600 spans two depth blocks of 512
        let (m, n, k) = (50, 100, 600);
        let (l, r) = (fill(m * k, 1), fill(n * k, 2));
        let (mut whole, mut blocks) = (vec![0.0f32; m * n], vec![0.0f32; m * n]);
        // SAFETY: every operand is a slice covering the elements its strides address.
        let (ls, rs) = (Src::rows(l.as_ptr(), k), Src::rows(r.as_ptr(), k).t());
        unsafe {
            gemm_avx2asm(m, n, k, Dst::rows(whole.as_mut_ptr(), n), false, ls, rs, 1.0);
            gemm_avx2asm(m, 48, k, Dst::rows(blocks.as_mut_ptr(), n), false, ls, rs, 1.0);
            gemm_avx2asm(m, n - 48, k, Dst::rows(blocks.as_mut_ptr(), n).at(0, 48), false, ls, rs.at(0, 48), 1.0);
        }
        assert!(whole.iter().zip(&blocks).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}
