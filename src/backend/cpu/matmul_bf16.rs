//! Matrix products of bf16 operands with f32 accumulation, for bf16 training on the CPU: the
//! linear layers' forward (`out = inp @ w^T + b`, rounded once to bf16) and backward (`dinp`
//! rounded to bf16; `dw` and `db` accumulated in f32), and a strided entry, [`gemm_bf16`], in
//! the style of `matmul.rs`'s `gemm_raw` (strides fold every transpose; no copies by the caller).
//!
//! Three tiers, chosen once per process by [`Bf16Isa::get`] (`GPTRAIN_ISA` can lower it):
//! - **AMX** (`amx.rs`): `tdpbf16ps` on tiles; each kernel call computes a 32 x 32 f32 block
//!   of dst in four 16 x 16 tiles, over k in steps of 32 (two lhs and two rhs tiles a step).
//!   Linux must grant the process AMX first ([`Bf16Isa::get`] asks once); if it refuses, the
//!   AVX-512 BF16 tier runs and [`Bf16Isa::describe`] says why.
//! - **AVX-512 BF16** (`avx512.rs`): `vdpbf16ps` (16 lanes, each the sum of a pair of
//!   products) on the same packed blocks, 8 rows x 32 columns of accumulators in registers.
//!   For CPUs without AMX: on Sapphire Rapids `vdpbf16ps` peaks at half the FLOP rate of f32
//!   FMAs (measured 118 against 236 GFLOP/s a core), so there this tier (about 115 a core,
//!   `bench.rs`) is slower than the f32 products.
//! - **Portable**: both operands converted to f32 and multiplied by `gemm_raw` (correct, not
//!   fast), for CPUs without AVX-512 BF16 or under `GPTRAIN_ISA=avx512`/`avx2`.
//!
//! Packing (the first two tiers, `pack.rs`), into buffers on cache-line boundaries that each
//! thread keeps between products (`buffers.rs`; tile rows astride two lines ran at about half
//! speed): k is padded
//! with zeros to a multiple of 32, m and n to multiples of 32. lhs is packed per 32-row block as
//! `[k/32][32 rows][32 k]` (an AMX A tile is 16 of those rows, 64 bytes each); rhs per 32-column
//! panel as `[k/32][2 halves][16 k pairs][16 columns][2]`, the "VNNI" layout AMX's B tiles want
//! (each 32-bit element holds the rhs values of two consecutive k of one column), which is
//! also what `vdpbf16ps` wants. rhs is packed a chunk of panels at a time (about half of L2),
//! by all threads, then each thread runs the kernel on its blocks of the chunk. Products deeper
//! than [`KC_MAX`] are cut into k blocks, packed in turn, each f32 block carried between them.
//!
//! Each block is stored through an f32 scratch block (`store.rs`): scaled by alpha, plus the
//! bias (bf16 dst) or the old value (f32 dst, accumulating), and only then rounded to bf16, once.
//!
//! Determinism: every element of dst is one sum over all of k in a fixed order (a kernel call,
//! or calls that go on from where the previous k block left off: the same bits), whichever
//! thread runs it; threads split dst's blocks (by rows, or by columns when there are fewer row
//! blocks than threads), never k. So results are the same bits run to run, and for any thread
//! count; the tiers differ from one another within f32 rounding (their sums run in different
//! orders). The AMX and AVX-512 BF16 instructions read bf16 subnormals as zero.

mod amx;
mod avx512;
#[cfg(test)]
mod bench;
mod buffers;
mod pack;
pub mod peak;
mod store;
#[cfg(test)]
mod tests;

use super::matmul::{gemm_raw, Dst, Par, Src};
use super::simd::Bf16Isa;
use buffers::{F32Block, Spare, Use};
use half::bf16;
use rayon::prelude::*;

/// Rows and columns of dst that one kernel call computes (two AMX tiles each way).
const BLOCK: usize = 32;

/// k per kernel step: one AMX tile row of bf16 (64 bytes).
const KSTEP: usize = 32;

/// Deepest k block packed at once: longer products (the `gpt2` lm_head's input gradient sums
/// over 50304 logits) are cut into k blocks of at most this many.
const KC_MAX: usize = 2048;

/// Bytes of packed rhs per chunk: about half of a 2 MiB L2, so that a chunk stays in each
/// core's L2 while that core's row blocks stream past it.
const RHS_CHUNK_BYTES: usize = 1 << 20;

/// Columns per task when summing the bias gradient (each task sums all rows of its columns in
/// order: deterministic).
const BIAS_COLS: usize = 64;

/// A bf16 matrix a product reads: element (i, j) at `ptr + i * rs + j * cs` (strides in
/// elements), so a transpose is the same memory with its strides swapped ([`SrcBf16::t`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct SrcBf16 {
    pub ptr: *const bf16,
    pub rs: usize,
    pub cs: usize,
}

// SAFETY: a SrcBf16 is an address and two strides; which elements a thread may read through it
// is the contract of the unsafe function that reads them ([`gemm_bf16`]).
unsafe impl Send for SrcBf16 {}
// SAFETY: as above.
unsafe impl Sync for SrcBf16 {}

impl SrcBf16 {
    /// A row-major matrix whose rows lie `ld` elements apart.
    pub fn rows(ptr: *const bf16, ld: usize) -> SrcBf16 {
        SrcBf16 { ptr, rs: ld, cs: 1 }
    }

    /// The transpose: the same memory, strides swapped.
    pub fn t(self) -> SrcBf16 {
        SrcBf16 { rs: self.cs, cs: self.rs, ..self }
    }

    /// The matrix from element (i, j) on (address arithmetic only: nothing is read).
    pub fn at(self, i: usize, j: usize) -> SrcBf16 {
        SrcBf16 { ptr: self.ptr.wrapping_add(i * self.rs + j * self.cs), ..self }
    }

    /// Element (i, j) as f32.
    ///
    /// # Safety
    /// The element must be valid for reads.
    unsafe fn get(self, i: usize, j: usize) -> f32 {
        // SAFETY: the caller's contract.
        unsafe { *self.ptr.add(i * self.rs + j * self.cs) }.to_f32()
    }
}

/// A bf16 matrix a product writes: row-major, rows `rs` elements apart.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DstBf16 {
    pub ptr: *mut bf16,
    pub rs: usize,
}

impl DstBf16 {
    /// A row-major matrix whose rows lie `ld` elements apart.
    pub fn rows(ptr: *mut bf16, ld: usize) -> DstBf16 {
        DstBf16 { ptr, rs: ld }
    }
}

/// Where a product goes, and what joins it there.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Out {
    /// f32: dst(m,n) = alpha * product, plus dst's old value when `accumulate` (one f32 add).
    F32 { dst: Dst, accumulate: bool },
    /// bf16: dst(m,n) = alpha * product + bias(n) (bias: n elements, when given), computed in
    /// f32 and rounded once.
    Bf16 { dst: DstBf16, bias: Option<*const bf16> },
}

// SAFETY: as for [`SrcBf16`]: which elements a thread may write through it is the contract of
// [`gemm_bf16`], which hands each thread disjoint blocks of dst.
unsafe impl Send for Out {}
// SAFETY: as above.
unsafe impl Sync for Out {}

/// out(N,OC) = inp(N,IC) @ w(OC,IC)^T + b(OC), f32 accumulation, each result rounded once to
/// bf16.
pub fn matmul_forward_bf16(out: &mut [bf16], inp: &[bf16], w: &[bf16], b: Option<&[bf16]>, ic: usize) {
    forward_on(Bf16Isa::get(), out, inp, w, b, ic)
}

/// dinp(N,IC) = dout(N,OC) @ w(OC,IC) (overwritten, rounded to bf16); dw(OC,IC) += dout^T @ inp
/// (f32: the f32 sum of the product and the old value); db(OC) += column sums of dout (f32,
/// summed over rows in order, then added).
pub fn matmul_backward_bf16(dinp: &mut [bf16], dw: &mut [f32], db: Option<&mut [f32]>, dout: &[bf16], inp: &[bf16], w: &[bf16], ic: usize) {
    backward_on(Bf16Isa::get(), dinp, dw, db, dout, inp, w, ic)
}

/// [`matmul_forward_bf16`] on the given tier (which must be runnable here: [`Bf16Isa::can_run`]).
fn forward_on(tier: Bf16Isa, out: &mut [bf16], inp: &[bf16], w: &[bf16], b: Option<&[bf16]>, ic: usize) {
    let oc = w.len() / ic;
    let n = inp.len() / ic;
    assert!(out.len() >= n * oc && w.len() == oc * ic && b.is_none_or(|b| b.len() >= oc));
    assert!(tier.can_run().is_ok(), "{tier:?} cannot run on this CPU");
    let out = Out::Bf16 { dst: DstBf16::rows(out.as_mut_ptr(), oc), bias: b.map(<[bf16]>::as_ptr) };
    let (inp, w) = (SrcBf16::rows(inp.as_ptr(), ic), SrcBf16::rows(w.as_ptr(), ic));
    // SAFETY: out is (n, oc), inp (n, ic), w (oc, ic), as the strides say (the asserts above);
    // out is borrowed exclusively; the tier can run (asserted).
    unsafe { gemm_bf16_on(tier, n, oc, ic, out, inp, w.t(), 1.0, Par::Split(rayon::current_num_threads())) }
}

/// [`matmul_backward_bf16`] on the given tier (which must be runnable here).
#[allow(clippy::too_many_arguments)]
fn backward_on(
    tier: Bf16Isa,
    dinp: &mut [bf16],
    dw: &mut [f32],
    db: Option<&mut [f32]>,
    dout: &[bf16],
    inp: &[bf16],
    w: &[bf16],
    ic: usize,
) {
    let oc = w.len() / ic;
    let n = inp.len() / ic;
    assert!(dinp.len() >= n * ic && dw.len() >= oc * ic && dout.len() >= n * oc && w.len() == oc * ic);
    assert!(tier.can_run().is_ok(), "{tier:?} cannot run on this CPU");
    let par = Par::Split(rayon::current_num_threads());
    let (dout, inp, w) = (SrcBf16::rows(dout.as_ptr(), oc), SrcBf16::rows(inp.as_ptr(), ic), SrcBf16::rows(w.as_ptr(), ic));
    // SAFETY: dinp (n, ic) = dout (n, oc) @ w (oc, ic); dw (oc, ic) += dout^T @ inp (n, ic): the
    // strides address only elements inside the slices (the asserts above); the outputs are
    // borrowed exclusively; the tier can run (asserted).
    unsafe {
        gemm_bf16_on(tier, n, ic, oc, Out::Bf16 { dst: DstBf16::rows(dinp.as_mut_ptr(), ic), bias: None }, dout, w, 1.0, par);
        gemm_bf16_on(tier, oc, ic, n, Out::F32 { dst: Dst::rows(dw.as_mut_ptr(), ic), accumulate: true }, dout.t(), inp, 1.0, par);
    }
    if let Some(db) = db {
        // SAFETY: dout is n rows of oc (asserted above).
        let dout = unsafe { std::slice::from_raw_parts(dout.ptr, n * oc) };
        db[..oc].par_chunks_mut(BIAS_COLS).enumerate().for_each(|(blk, dbc)| {
            let c0 = blk * BIAS_COLS;
            let mut sums = [0.0f32; BIAS_COLS];
            for row in dout.chunks_exact(oc) {
                for (s, g) in sums.iter_mut().zip(&row[c0..c0 + dbc.len()]) {
                    *s += g.to_f32();
                }
            }
            for (d, s) in dbc.iter_mut().zip(sums) {
                *d += s;
            }
        });
    }
}

/// out (m,n) <- alpha * lhs(m,k) @ rhs(k,n), as [`Out`] says, on the tier [`Bf16Isa::get`]
/// picks, threaded as `par` says (`Par::None`: on this thread, no pool; otherwise over that
/// many blocks of dst on the rayon pool).
///
/// # Safety
/// Every element the strides address must be valid for reads (lhs, rhs, the bias) or writes
/// (dst), and dst must not overlap lhs, rhs or the bias.
#[allow(clippy::too_many_arguments)]
#[allow(dead_code)] // the entry for other kernels (attention's products may use it)
pub(crate) unsafe fn gemm_bf16(m: usize, n: usize, k: usize, out: Out, lhs: SrcBf16, rhs: SrcBf16, alpha: f32, par: Par) {
    // SAFETY: forwarded from the caller's contract; Bf16Isa::get only names a tier that can run.
    unsafe { gemm_bf16_on(Bf16Isa::get(), m, n, k, out, lhs, rhs, alpha, par) }
}

/// [`gemm_bf16`] on the given tier.
///
/// # Safety
/// As [`gemm_bf16`]; and `tier.can_run()` must be `Ok`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_bf16_on(tier: Bf16Isa, m: usize, n: usize, k: usize, out: Out, lhs: SrcBf16, rhs: SrcBf16, alpha: f32, par: Par) {
    if m == 0 || n == 0 {
        return;
    }
    let threads = match par {
        Par::None => 1,
        Par::Gemm(t) | Par::Split(t) => t.max(1),
    };
    match tier {
        // SAFETY: forwarded from the caller's contract.
        Bf16Isa::Portable => unsafe { portable(m, n, k, out, lhs, rhs, alpha, par) },
        // SAFETY: forwarded; the tier can run (the caller's contract).
        _ => unsafe { blocked(tier, m, n, k, out, lhs, rhs, alpha, threads) },
    }
}

/// The portable tier: lhs and rhs converted to row-major f32 copies, multiplied by `gemm_raw`.
///
/// # Safety
/// As [`gemm_bf16`].
#[allow(clippy::too_many_arguments)]
unsafe fn portable(m: usize, n: usize, k: usize, out: Out, lhs: SrcBf16, rhs: SrcBf16, alpha: f32, par: Par) {
    // a row-major f32 copy of a (rows, cols) matrix
    let copy = |src: SrcBf16, rows: usize, cols: usize| -> Vec<f32> {
        // SAFETY: (i, j) lies inside src (the caller's contract: lhs is (m, k), rhs (k, n)).
        (0..rows).flat_map(|i| (0..cols).map(move |j| unsafe { src.get(i, j) })).collect()
    };
    let (a, b) = (copy(lhs, m, k), copy(rhs, k, n)); // (m, k), (k, n)
    let (a, b) = (Src::rows(a.as_ptr(), k), Src::rows(b.as_ptr(), n));
    match out {
        Out::F32 { dst, accumulate } if k == 0 => {
            if !accumulate {
                for i in 0..m {
                    // SAFETY: row i of dst holds n writable elements (the caller's contract).
                    unsafe { std::slice::from_raw_parts_mut(dst.ptr.add(i * dst.rs), n) }.fill(0.0);
                }
            }
        }
        // SAFETY: a and b are the copies above, (m, k) and (k, n); dst as the caller promised.
        Out::F32 { dst, accumulate } => unsafe { gemm_raw(m, n, k, dst, accumulate, a, b, alpha, par) },
        Out::Bf16 { dst, bias } => {
            let mut c = vec![0.0f32; m * n]; // (m, n)
            if k > 0 {
                // SAFETY: c is (m, n), a and b as above.
                unsafe { gemm_raw(m, n, k, Dst::rows(c.as_mut_ptr(), n), false, a, b, alpha, par) };
            }
            for (i, row) in c.chunks_exact(n).enumerate() {
                // SAFETY: row i of dst holds n writable elements, the bias n readable ones (the
                // caller's contract).
                let d = unsafe { std::slice::from_raw_parts_mut(dst.ptr.add(i * dst.rs), n) };
                for (j, (d, &v)) in d.iter_mut().zip(row).enumerate() {
                    // SAFETY: as above.
                    let b = bias.map_or(0.0, |b| unsafe { *b.add(j) }.to_f32());
                    *d = bf16::from_bits(round_bf16(v + b));
                }
            }
        }
    }
}

/// The AMX and AVX-512 BF16 tiers. k is taken a block of at most [`KC_MAX`] at a time, and
/// within it dst's columns a chunk of rhs panels at a time: the chunk of rhs is packed (by all
/// threads), then dst's blocks in the chunk are split between `threads` tasks, each running the
/// kernel on every (row block, column panel) pair it owns. lhs blocks are packed by the tasks
/// as they go where there is one chunk, else once per k block beforehand (by all threads) for
/// every chunk to read. With several k blocks, each f32 block is carried from one k block to
/// the next, where the kernel goes on adding to it: every element is still one sum over all of
/// k in order.
///
/// # Safety
/// As [`gemm_bf16`]; and `tier.can_run()` must be `Ok` (it is `Amx` or `Avx512Bf16`).
#[allow(clippy::too_many_arguments)]
unsafe fn blocked(tier: Bf16Isa, m: usize, n: usize, k: usize, out: Out, lhs: SrcBf16, rhs: SrcBf16, alpha: f32, threads: usize) {
    // k = 0 packs one step of zeros: the product of nothing is zero
    let steps = k.max(1).div_ceil(KSTEP);
    let kblocks = steps.div_ceil(KC_MAX / KSTEP);
    let kb_steps = steps.div_ceil(kblocks); // steps per k block (the last may have fewer)
    let panel = kb_steps * KSTEP * BLOCK; // elements of one packed lhs block or rhs panel
    let (row_blocks, col_blocks) = (m.div_ceil(BLOCK), n.div_ceil(BLOCK));
    // equal chunks of at most RHS_CHUNK_BYTES (or one panel)
    let chunks = col_blocks.div_ceil((RHS_CHUNK_BYTES / (2 * panel)).max(1));
    let per_chunk = col_blocks.div_ceil(chunks);
    let mut rhs_packed = Spare::take(Use::Rhs, per_chunk * panel);
    let rhs_packed = rhs_packed.as_mut();
    let mut lhs_packed = Spare::take(Use::Lhs, if chunks > 1 { row_blocks * panel } else { 0 });
    let lhs_packed = lhs_packed.as_mut();
    // the f32 blocks carried between k blocks: [row block][column block]
    let mut carried = vec![F32Block([0.0; BLOCK * BLOCK]); if kblocks > 1 { row_blocks * col_blocks } else { 0 }];
    let carry = Carry { ptr: carried.as_mut_ptr(), col_blocks };
    let each = |len: usize, f: &(dyn Fn(usize) + Sync)| {
        if threads > 1 {
            (0..len).into_par_iter().for_each(f);
        } else {
            (0..len).for_each(f);
        }
    };
    for kb in 0..kblocks {
        let ksteps = kb_steps.min(steps - kb * kb_steps);
        let (k0, klen) = (kb * kb_steps * KSTEP, k.saturating_sub(kb * kb_steps * KSTEP).min(ksteps * KSTEP));
        let part = Part { ksteps, klen, first: kb == 0, last: kb == kblocks - 1 };
        let (lhs, rhs) = (lhs.at(0, k0), rhs.at(k0, 0)); // (m, klen) and (klen, n)
        let len = ksteps * KSTEP * BLOCK;
        if !lhs_packed.is_empty() {
            let dst = Shared(lhs_packed.as_mut_ptr());
            each(row_blocks, &|ib| {
                // SAFETY: block ib of lhs_packed (row_blocks blocks of `panel`) is this task's
                // alone; lhs is (m, klen) (the caller's contract); the tier implies AVX-512.
                unsafe { pack::pack_lhs(dst.slice(ib * panel, len), lhs, m, klen, ib * BLOCK) }
            });
        }
        for c0 in (0..col_blocks).step_by(per_chunk) {
            let chunk = per_chunk.min(col_blocks - c0);
            let dst = Shared(rhs_packed.as_mut_ptr());
            each(chunk, &|p| {
                // SAFETY: panel p of rhs_packed (per_chunk panels of `panel`) is this task's
                // alone; rhs is (klen, n) (the caller's contract); the tier implies AVX-512.
                unsafe { pack::pack_rhs(dst.slice(p * panel, len), rhs, klen, n, (c0 + p) * BLOCK) }
            });
            let rhs_packed = &rhs_packed[..chunk * panel];
            let lhs_packed = &*lhs_packed;
            // few row blocks: split the chunk's columns instead
            let (row_parts, col_parts) = if row_blocks >= threads { (threads, 1) } else { (1, threads.min(chunk)) };
            each(row_parts * col_parts, &|t| {
                let (rows, cols) = (share(row_blocks, row_parts, t / col_parts), share(chunk, col_parts, t % col_parts));
                let task = Task { tier, rows, cols, c0, panel, part };
                let lhs = if lhs_packed.is_empty() { Lhs::Pack(lhs) } else { Lhs::Packed(lhs_packed) };
                // SAFETY: the task's blocks are parts of the caller's operands; the tasks'
                // blocks of dst and of `carried` are disjoint; the tier can run.
                unsafe { blocks(task, m, n, out, lhs, rhs_packed, carry, alpha) }
            });
        }
    }
}

/// A buffer that parallel tasks write in disjoint parts, each the part its index names.
#[derive(Clone, Copy)]
struct Shared(*mut u16);

// SAFETY: an address; each task writes only its own part (the SAFETY notes where it is used).
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl Shared {
    /// Elements `at..at + len` of the buffer.
    ///
    /// # Safety
    /// They must lie inside the buffer, which must outlive 'a, and no one else may use them
    /// meanwhile.
    unsafe fn slice<'a>(self, at: usize, len: usize) -> &'a mut [u16] {
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(at), len) }
    }
}

/// Part `i` of `parts` near-equal contiguous parts of `0..len`.
fn share(len: usize, parts: usize, i: usize) -> std::ops::Range<usize> {
    i * len / parts..(i + 1) * len / parts
}

/// One k block of a product, as [`blocks`] runs it.
#[derive(Clone, Copy)]
struct Part {
    /// Kernel steps (k / 32, rounded up; at least 1).
    ksteps: usize,
    /// k of this block (0 for an empty product).
    klen: usize,
    /// Whether this is the first k block (the kernel starts from zero), and the last (the
    /// blocks are stored to dst).
    first: bool,
    last: bool,
}

/// What one task of [`blocked`] computes: the (row block, column panel) pairs of `rows` x
/// `cols`, in the chunk whose first panel is dst's column block `c0`, for one k block.
struct Task {
    tier: Bf16Isa,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    c0: usize,
    /// Elements from one packed block or panel to the next.
    panel: usize,
    part: Part,
}

/// Where a task's lhs blocks come from.
enum Lhs<'a> {
    /// lhs (m, klen) itself: the task packs each row block before its panels.
    Pack(SrcBf16),
    /// Every row block, packed beforehand, `panel` elements apart.
    Packed(&'a [u16]),
}

/// The f32 blocks [`blocked`] carries between k blocks: block (row block `ib`, column block
/// `jb`) at `ptr + ib * col_blocks + jb`.
#[derive(Clone, Copy)]
struct Carry {
    ptr: *mut F32Block,
    col_blocks: usize,
}

// SAFETY: an address and a count; each task of `blocked` reads and writes only its own blocks.
unsafe impl Send for Carry {}
// SAFETY: as above.
unsafe impl Sync for Carry {}

/// One task of [`blocked`]: for each row block, its lhs block (packed here or beforehand), then
/// the kernel on each of the task's column panels, and the block stored to dst after the last
/// k block.
///
/// # Safety
/// As [`blocked`]; and no other thread touches these blocks of dst and of `carry` (which holds
/// row_blocks x col_blocks blocks when there are several k blocks).
#[allow(clippy::too_many_arguments)]
unsafe fn blocks(task: Task, m: usize, n: usize, out: Out, lhs: Lhs, rhs_packed: &[u16], carry: Carry, alpha: f32) {
    let Task { tier, rows, cols, c0, panel, part } = task;
    let len = part.ksteps * KSTEP * BLOCK;
    let mut own = Spare::take(Use::OwnLhs, if matches!(lhs, Lhs::Pack(_)) { len } else { 0 });
    let own = own.as_mut(); // [ksteps][32 rows][32 k]
    let mut scratch = F32Block([0.0; BLOCK * BLOCK]); // (32, 32)
                                                      // SAFETY: the tier can run (the caller's contract): for Amx, the OS has granted tiles.
    let tiles = (tier == Bf16Isa::Amx).then(|| unsafe { amx::Tiles::load() });
    for ib in rows {
        let a: &[u16] = match lhs {
            Lhs::Pack(src) => {
                // SAFETY: lhs is (m, klen) (the caller's contract); the tier implies AVX-512.
                unsafe { pack::pack_lhs(own, src, m, part.klen, ib * BLOCK) };
                own
            }
            Lhs::Packed(all) => &all[ib * panel..][..len],
        };
        for jb in cols.clone() {
            let b = &rhs_packed[jb * panel..][..len];
            let c = if part.first && part.last {
                &mut scratch.0
            } else {
                // SAFETY: block (ib, c0 + jb) of `carry` is this task's alone (the caller's
                // contract).
                unsafe { &mut (*carry.ptr.add(ib * carry.col_blocks + c0 + jb)).0 }
            };
            match &tiles {
                Some(tiles) => tiles.block(part.ksteps, a, b, c, !part.first),
                // SAFETY: the tier is Avx512Bf16, which the CPU has.
                None => unsafe { avx512::block(part.ksteps, a, b, c, !part.first) },
            }
            if part.last {
                let (i0, j0) = (ib * BLOCK, (c0 + jb) * BLOCK);
                // SAFETY: the block's rows and columns of dst (clipped to m, n) are the caller's
                // and this task's alone; the tier implies AVX-512 BF16, F, BW, VL and DQ.
                unsafe { store::store_block(c, out, i0, j0, BLOCK.min(m - i0), BLOCK.min(n - j0), alpha) };
            }
        }
    }
}

/// `bf16::from_f32(x).to_bits()` (round to nearest even; NaN stays a quiet NaN), without
/// branches, so that the loops that use it vectorize.
#[inline(always)]
fn round_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
    if x.is_nan() {
        (b >> 16) as u16 | 0x40
    } else {
        rounded
    }
}
