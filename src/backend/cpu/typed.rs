//! Slices of an op's operands in their own element types (bf16, f16, f32 in one op), for the
//! kernels of mixed precision; the f32-only [`super::io`] is the model.

use super::{Bufs, CpuBuf};
use crate::backend::tensor::N_BUFS;
use crate::backend::{BufId, DType, Tensor};

/// The base address, length and type of every allocated buffer, with an op's operands checked.
pub(super) struct Ptrs {
    base: [(*mut u8, usize, DType); N_BUFS],
}

/// A Rust element type and the [`DType`] that stores it.
pub(super) trait Elem {
    const DTYPE: DType;
}
impl Elem for f32 {
    const DTYPE: DType = DType::F32;
}
impl Elem for half::bf16 {
    const DTYPE: DType = DType::Bf16;
}
impl Elem for half::f16 {
    const DTYPE: DType = DType::F16;
}

impl Ptrs {
    /// Checks that each tensor lies inside an allocated buffer of its own element type and that
    /// no output shares an element with any other operand (a layout bug otherwise: panics).
    pub fn new(bufs: &mut Bufs, outs: &[Tensor], ins: &[Tensor]) -> Ptrs {
        let mut base = [(std::ptr::null_mut(), 0, DType::F32); N_BUFS];
        for id in BufId::ALL {
            if bufs.has(id) {
                base[id.index()] = match bufs.get_mut(id) {
                    CpuBuf::F32(v) => (v.as_mut_ptr() as *mut u8, v.len(), DType::F32),
                    CpuBuf::Bf16(v) => (v.as_mut_ptr() as *mut u8, v.len(), DType::Bf16),
                    CpuBuf::F16(v) => (v.as_mut_ptr() as *mut u8, v.len(), DType::F16),
                    CpuBuf::U32(v) => (v.as_mut_ptr() as *mut u8, v.len(), DType::U32),
                    CpuBuf::F64(v) => (v.as_mut_ptr() as *mut u8, v.len(), DType::F64),
                };
            }
        }
        for t in outs.iter().chain(ins) {
            let (ptr, len, dtype) = base[t.buf.index()];
            assert!(!ptr.is_null() && dtype == t.dtype, "{t:?}: not in an allocated {:?} buffer", t.dtype);
            assert!(t.span.end() <= len, "{t:?} out of bounds ({len} elements)");
        }
        for (i, a) in outs.iter().enumerate() {
            for b in outs[i + 1..].iter().chain(ins) {
                assert!(!a.overlaps(b), "{a:?} and {b:?} overlap");
            }
        }
        Ptrs { base }
    }

    fn at<T: Elem>(&self, t: Tensor) -> *mut T {
        assert_eq!(t.dtype, T::DTYPE, "{t:?} read as {:?}", T::DTYPE);
        (self.base[t.buf.index()].0 as *mut T).wrapping_add(t.span.off)
    }

    /// An input's elements.
    ///
    /// # Safety
    /// `t` was checked by [`Ptrs::new`] (as an input or output); no mutable slice handed out
    /// overlaps it while this one lives, and `bufs` outlives it unchanged.
    pub unsafe fn slice<'a, T: Elem>(&self, t: Tensor) -> &'a [T] {
        // SAFETY: in bounds of a live buffer of T (checked in `new` and `at`); the caller
        // guarantees nothing writes it meanwhile.
        unsafe { std::slice::from_raw_parts(self.at::<T>(t), t.len()) }
    }

    /// An output's elements.
    ///
    /// # Safety
    /// `t` was checked by [`Ptrs::new`] as an output (it overlaps no other operand), is handed
    /// out once, and `bufs` outlives the slice unchanged.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice_mut<'a, T: Elem>(&self, t: Tensor) -> &'a mut [T] {
        // SAFETY: in bounds of a live buffer of T, aliasing nothing else handed out (the
        // caller's contract and `new`'s overlap check).
        unsafe { std::slice::from_raw_parts_mut(self.at::<T>(t), t.len()) }
    }
}
