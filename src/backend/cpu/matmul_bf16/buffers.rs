//! The buffers the packed operands and f32 blocks live in: on cache-line boundaries (so that
//! no 64-byte tile row straddles two lines), and kept from one product to the next on each
//! thread (so that repeated products neither zero nor fault in fresh pages).

use super::BLOCK;
use std::cell::Cell;

/// A 32 x 32 f32 block of dst, on a cache line boundary, so that the tile rows the AMX kernel
/// stores and loads never straddle two lines.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub(super) struct F32Block(pub [f32; BLOCK * BLOCK]);

/// A cache line of packed bf16 bits. Packed operands are vectors of these, so that every
/// 64-byte tile row starts on a line: the AMX kernel ran at about half the speed on operands
/// 16 or 32 bytes off the line (as a plain `Vec<u16>` from malloc is).
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub(super) struct Line(pub [u16; 32]);

/// What a spare buffer is for (a thread may hold one of each at once).
#[derive(Clone, Copy)]
pub(super) enum Use {
    /// A chunk of packed rhs panels.
    Rhs,
    /// Every packed lhs block of a k block, shared by the tasks.
    Lhs,
    /// One task's packed lhs block.
    OwnLhs,
}

thread_local! {
    /// This thread's spare buffers, one per [`Use`].
    static SPARES: [Cell<Vec<Line>>; 3] = const { [Cell::new(Vec::new()), Cell::new(Vec::new()), Cell::new(Vec::new())] };
}

/// A buffer of u16 on whole cache lines, taken from this thread's spare one for its [`Use`]
/// and given back when dropped. A product that runs inside another on the same thread (rayon
/// runs other tasks while one waits) finds the spare taken and makes a new one. The contents
/// are stale: callers write everything they read.
pub(super) struct Spare {
    use_: Use,
    lines: Vec<Line>,
    len: usize,
}

impl Spare {
    /// At least `len` u16 (a multiple of 32).
    pub fn take(use_: Use, len: usize) -> Spare {
        let mut lines = SPARES.with(|s| s[use_ as usize].take());
        if lines.len() * 32 < len {
            lines = vec![Line([0; 32]); len.div_ceil(32)];
        }
        Spare { use_, lines, len }
    }

    /// The buffer's first `len` u16.
    pub fn as_mut(&mut self) -> &mut [u16] {
        // SAFETY: a Line is 32 u16 and nothing else (repr(C), 64 bytes, no padding), so the
        // lines are lines.len() * 32 initialised u16 (len or more), borrowed exclusively.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<u16>(), self.len) }
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        let lines = std::mem::take(&mut self.lines);
        // (after the thread's locals are gone, the buffer is simply freed)
        let _ = SPARES.try_with(|s| s[self.use_ as usize].set(lines));
    }
}
