//! What crosses the backend boundary: tensors that know their buffer, span, shape and element
//! type, and the buffers they live in.
//!
//! A model owns a few big buffers (llm.c's scheme), named by [`BufId`]. A [`Tensor`] is a view
//! of one of them: a contiguous span, a row-major shape of up to five dimensions, and the
//! element type the buffer stores. Ops take tensors, never raw offsets, so a backend can check
//! every operand (buffer, bounds, type, overlap) and a device backend can turn each into a
//! pointer, as llm.c's kernels take one pointer per tensor.

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
    /// Whether the two spans share an element.
    pub fn overlaps(&self, o: &Span) -> bool {
        self.len > 0 && o.len > 0 && self.off < o.end() && o.off < self.end()
    }
    /// The elements the two spans share (empty, at the later start, when none).
    pub fn intersect(&self, o: &Span) -> Span {
        let off = self.off.max(o.off);
        Span::new(off, self.end().min(o.end()).saturating_sub(off))
    }
}

/// The element type a buffer stores. Compute precision (fp32, TF32 matmuls, bf16/fp16 autocast)
/// is a separate notion: [`crate::backend::Precision`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum DType {
    F32,
    Bf16,
    F16,
    /// Token ids.
    U32,
    /// Step accumulators (loss sum, squared gradient norm), kept in f64 as the reductions are.
    F64,
}

impl DType {
    /// Bytes per element.
    pub fn bytes(&self) -> usize {
        match self {
            DType::Bf16 | DType::F16 => 2,
            DType::F32 | DType::U32 => 4,
            DType::F64 => 8,
        }
    }
}

/// The buffers of a model. Parameters and everything shaped like them share one layout
/// (`ParamLayout`), activations and their gradients another (`ActLayout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BufId {
    /// The weights the kernels read: f32, or a low-precision copy under mixed precision.
    Params,
    /// Gradients of the parameters, in the parameters' storage type.
    Grads,
    /// f32 master weights, beside low-precision `Params` (mixed precision only; absent in f32,
    /// where `Params` is the master).
    Master,
    /// AdamW's first and second moments, f32, allocated on the first update.
    AdamM,
    AdamV,
    /// The activations of one micro-batch shape, in the compute dtype.
    Acts,
    /// Their statistics, always f32: LayerNorm means and reciprocal deviations, attention
    /// rows' softmax maxima and sums, per-position losses.
    Stats,
    /// Their gradients: one layer's worth, reused by every layer.
    DActs,
    /// The micro-batch's token ids, targets and the ids' order by token, (3, B, T) u32, uploaded
    /// once per micro-batch.
    Tokens,
    /// Step accumulators, f64: see [`Scalar`].
    Scalars,
    /// Sampling's keys and values of the positions seen so far, (2, L, maxT, C).
    KvCache,
}

/// How many [`BufId`]s there are.
pub const N_BUFS: usize = 11;

impl BufId {
    pub const ALL: [BufId; N_BUFS] = [
        BufId::Params,
        BufId::Grads,
        BufId::Master,
        BufId::AdamM,
        BufId::AdamV,
        BufId::Acts,
        BufId::Stats,
        BufId::DActs,
        BufId::Tokens,
        BufId::Scalars,
        BufId::KvCache,
    ];
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The slots of the [`BufId::Scalars`] buffer: what a step accumulates on the backend and the
/// host reads once per optimiser step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scalar {
    /// Sum of the micro-batches' mean losses.
    LossSum = 0,
    /// Sum of squares of every gradient (the squared global norm).
    GradSquares = 1,
}

/// Slots in the [`BufId::Scalars`] buffer.
pub const N_SCALARS: usize = 2;

impl Scalar {
    /// The one-element tensor of this slot.
    pub fn tensor(self) -> Tensor {
        Tensor::new(BufId::Scalars, Span::new(self as usize, 1), &[1], DType::F64)
    }
}

/// A row-major shape of up to five dimensions.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    dims: [usize; 5],
    rank: u8,
}

impl Shape {
    pub fn new(dims: &[usize]) -> Shape {
        assert!(dims.len() <= 5, "shape {dims:?} has more than five dimensions");
        let mut d = [1; 5];
        d[..dims.len()].copy_from_slice(dims);
        Shape { dims: d, rank: dims.len() as u8 }
    }
    pub fn dims(&self) -> &[usize] {
        &self.dims[..self.rank as usize]
    }
    pub fn elements(&self) -> usize {
        self.dims().iter().product()
    }
}

impl std::fmt::Debug for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{:?}", self.dims())
    }
}

/// A view of a buffer: which buffer, where in it, what shape, what element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tensor {
    pub buf: BufId,
    pub span: Span,
    pub shape: Shape,
    pub dtype: DType,
}

impl Tensor {
    pub fn new(buf: BufId, span: Span, dims: &[usize], dtype: DType) -> Tensor {
        let shape = Shape::new(dims);
        assert_eq!(shape.elements(), span.len, "shape {dims:?} does not fit a span of {} elements", span.len);
        Tensor { buf, span, shape, dtype }
    }
    /// The empty tensor (a gradient layout's slot for a tensor that has none).
    pub fn empty(buf: BufId, off: usize, dtype: DType) -> Tensor {
        Tensor::new(buf, Span::new(off, 0), &[0], dtype)
    }
    pub fn len(&self) -> usize {
        self.span.len
    }
    pub fn is_empty(&self) -> bool {
        self.span.len == 0
    }
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }
    /// The last dimension: a row's length (channels, or a linear layer's input features).
    pub fn cols(&self) -> usize {
        *self.dims().last().unwrap_or(&1)
    }
    /// Elements over the last dimension: the row count of a `(.., cols)` tensor.
    pub fn rows(&self) -> usize {
        self.len() / self.cols().max(1)
    }
    /// Entry `i` along the leading axis (layer `i` of an `(L, ...)` tensor).
    pub fn index(&self, i: usize) -> Tensor {
        let d = self.dims();
        assert!(d.len() >= 2 && i < d[0], "index {i} of a tensor of shape {d:?}");
        Tensor::new(self.buf, self.span.part(i, d[0]), &d[1..], self.dtype)
    }
    /// The same place in another buffer of the same layout (a parameter's gradient, moment or
    /// master copy), with that buffer's element type.
    pub fn of(&self, buf: BufId, dtype: DType) -> Tensor {
        Tensor { buf, dtype, ..*self }
    }
    /// The same elements seen with another shape of the same size.
    pub fn reshape(&self, dims: &[usize]) -> Tensor {
        Tensor::new(self.buf, self.span, dims, self.dtype)
    }
    /// Whether the two tensors share an element.
    pub fn overlaps(&self, o: &Tensor) -> bool {
        self.buf == o.buf && self.span.overlaps(&o.span)
    }
}

/// Every buffer of a model, by [`BufId`], each present once allocated.
pub struct Buffers<B> {
    bufs: [Option<B>; N_BUFS],
}

impl<B> Default for Buffers<B> {
    fn default() -> Self {
        Buffers { bufs: Default::default() }
    }
}

impl<B> Buffers<B> {
    pub fn has(&self, id: BufId) -> bool {
        self.bufs[id.index()].is_some()
    }
    /// The buffer `id`; panics when it was never allocated (a bug in the model, not input).
    pub fn get(&self, id: BufId) -> &B {
        self.bufs[id.index()].as_ref().unwrap_or_else(|| panic!("buffer {id:?} is not allocated"))
    }
    pub fn get_mut(&mut self, id: BufId) -> &mut B {
        self.bufs[id.index()].as_mut().unwrap_or_else(|| panic!("buffer {id:?} is not allocated"))
    }
    pub fn set(&mut self, id: BufId, buf: B) {
        self.bufs[id.index()] = Some(buf);
    }
    /// Frees buffer `id` (returns it, if it was there).
    pub fn take(&mut self, id: BufId) -> Option<B> {
        self.bufs[id.index()].take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tensor_knows_its_rows_layers_and_overlaps() {
        let t = Tensor::new(BufId::Params, Span::new(10, 2 * 3 * 4), &[2, 3, 4], DType::F32);
        assert_eq!((t.rows(), t.cols()), (6, 4));
        let l1 = t.index(1);
        assert_eq!((l1.span, l1.dims()), (Span::new(22, 12), &[3, 4][..]));
        assert!(t.overlaps(&l1) && !l1.overlaps(&t.index(0)));
        assert!(!t.overlaps(&t.of(BufId::Grads, DType::F32)), "same span, another buffer");
        assert!(!Tensor::empty(BufId::Params, 12, DType::F32).overlaps(&t), "an empty tensor overlaps nothing");
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn a_shape_must_fit_its_span() {
        Tensor::new(BufId::Acts, Span::new(0, 5), &[2, 3], DType::F32);
    }
}
