//! Reading and writing safetensors files of f32 tensors (f16/bf16/int inputs are converted).

use anyhow::{bail, Context, Result};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// A tensor read from a file, converted to f32.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// All tensors of a file plus its metadata.
pub struct TensorFile {
    pub tensors: HashMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
}

impl TensorFile {
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors.get(name).with_context(|| format!("tensor `{name}` is missing"))
    }
}

/// Reads a safetensors file. Errors name the file; a truncated or altered header is an error,
/// never a panic, and nothing is allocated from an unchecked header field.
pub fn read(path: &Path) -> Result<TensorFile> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse(&bytes).with_context(|| format!("{} is not a valid safetensors file", path.display()))
}

pub fn parse(bytes: &[u8]) -> Result<TensorFile> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        tensors.insert(
            name.clone(),
            Tensor { shape: view.shape().to_vec(), data: to_f32(&view).with_context(|| format!("tensor `{name}`"))? },
        );
    }
    Ok(TensorFile { tensors, metadata })
}

fn to_f32(v: &TensorView) -> Result<Vec<f32>> {
    let d = v.data();
    let out = match v.dtype() {
        Dtype::F32 => d.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => d.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => d.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::F64 => d.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32).collect(),
        Dtype::I32 => d.chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32).collect(),
        Dtype::I64 => d.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f32).collect(),
        Dtype::BOOL | Dtype::U8 => d.iter().map(|&b| b as f32).collect(),
        other => bail!("unsupported dtype {other:?}"),
    };
    Ok(out)
}

/// Serialises f32 tensors (name -> (shape, data)) with metadata into safetensors bytes: one
/// copy of the data, the file's (each tensor's bytes are its own memory, not a copy first).
pub fn serialize(tensors: &BTreeMap<String, (Vec<usize>, &[f32])>, metadata: Option<HashMap<String, String>>) -> Result<Vec<u8>> {
    let views = tensors.iter().map(|(n, (s, d))| (n.clone(), F32View { shape: s.clone(), data: d }));
    safetensors::serialize(views, metadata).map_err(|e| anyhow::anyhow!("{e}"))
}

/// An f32 tensor as safetensors' writer asks for it: little-endian bytes, borrowed where the
/// machine is little-endian, else made one tensor at a time.
struct F32View<'a> {
    shape: Vec<usize>,
    data: &'a [f32],
}

impl safetensors::View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        if cfg!(target_endian = "little") {
            // SAFETY: the bytes of `data`'s own memory (f32 has no padding, u8 no alignment),
            // borrowed for as long as `data`; on a little-endian machine they are the file's.
            std::borrow::Cow::Borrowed(unsafe { std::slice::from_raw_parts(self.data.as_ptr().cast::<u8>(), 4 * self.data.len()) })
        } else {
            std::borrow::Cow::Owned(self.data.iter().flat_map(|x| x.to_le_bytes()).collect())
        }
    }
    fn data_len(&self) -> usize {
        4 * self.data.len()
    }
}
