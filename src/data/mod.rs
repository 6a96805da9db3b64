//! Token data: nanoGPT's on-disk format (`train.bin`/`val.bin`: raw little-endian uint16 ids,
//! uint32 when the vocabulary needs it; `meta.pkl` or our `meta.json`), memory-mapped, and
//! random-offset batches drawn from counter-based streams.

pub mod pickle;
pub mod prepare;

use crate::rng;
use crate::tokenizer::{Tokenizer, GPT2_VOCAB};
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// The built-in corpus: ~1 MB of Shakespeare (see corpus/NOTICE).
pub const BUILTIN_CORPUS: &str = include_str!("../../corpus/shakespeare.txt");

/// What a prepared directory's tokens mean.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Meta {
    /// `char` or `gpt2`.
    pub tokenizer: String,
    pub vocab_size: usize,
    /// The characters of a char vocabulary, by id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub itos: Option<Vec<String>>,
    /// Bytes per token id in the .bin files: 2 (uint16) or 4 (uint32).
    pub token_bytes: usize,
}

impl Meta {
    pub fn gpt2() -> Meta {
        Meta { tokenizer: "gpt2".into(), vocab_size: GPT2_VOCAB, itos: None, token_bytes: 2 }
    }
    pub fn char(itos: Vec<String>) -> Meta {
        let token_bytes = if itos.len() <= 1 << 16 { 2 } else { 4 };
        Meta { tokenizer: "char".into(), vocab_size: itos.len(), itos: Some(itos), token_bytes }
    }
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        match (self.tokenizer.as_str(), &self.itos) {
            ("char", Some(itos)) => Ok(Tokenizer::char(itos.clone())),
            ("gpt2", _) => Ok(Tokenizer::Gpt2),
            (t, _) => bail!("unknown tokenizer `{t}` in meta (expected `char` with `itos`, or `gpt2`)"),
        }
    }

    /// Reads `meta.json` (ours), else nanoGPT's `meta.pkl`, else assumes GPT-2 BPE in uint16
    /// as nanoGPT does for a directory without meta.
    pub fn load(dir: &Path) -> Result<Meta> {
        let json = dir.join("meta.json");
        if json.exists() {
            let text = std::fs::read_to_string(&json).with_context(|| format!("cannot read {}", json.display()))?;
            let meta: Meta = serde_json::from_str(&text).with_context(|| format!("{} is not a valid gptrain meta file", json.display()))?;
            if meta.token_bytes != 2 && meta.token_bytes != 4 {
                bail!("{}: token_bytes must be 2 or 4 (got {})", json.display(), meta.token_bytes);
            }
            if let Some(itos) = &meta.itos {
                if itos.len() != meta.vocab_size {
                    bail!("{}: itos has {} entries but vocab_size is {}", json.display(), itos.len(), meta.vocab_size);
                }
            }
            return Ok(meta);
        }
        let pkl = dir.join("meta.pkl");
        if pkl.exists() {
            return Self::from_pickle(&std::fs::read(&pkl)?).with_context(|| format!("cannot read nanoGPT meta file {}", pkl.display()));
        }
        Ok(Meta::gpt2())
    }

    fn from_pickle(bytes: &[u8]) -> Result<Meta> {
        let v = pickle::parse(bytes)?;
        let vocab = match v.get("vocab_size") {
            Some(pickle::Value::Int(n)) if *n > 0 && *n <= u32::MAX as i64 => *n as usize,
            _ => bail!("no positive integer `vocab_size`"),
        };
        let Some(pickle::Value::Dict(items)) = v.get("itos") else { bail!("no `itos` dict") };
        let mut itos = vec![String::new(); vocab];
        for (k, s) in items {
            match (k, s) {
                (pickle::Value::Int(i), pickle::Value::Str(s)) if (*i as usize) < vocab && *i >= 0 => itos[*i as usize] = s.clone(),
                _ => bail!("`itos` has an entry that is not (id < vocab_size, string)"),
            }
        }
        Ok(Meta::char(itos))
    }
}

/// A token file: memory-mapped from disk, or owned (the built-in corpus).
pub enum Tokens {
    Mapped(memmap2::Mmap, usize),
    Owned(Vec<u32>),
}

impl Tokens {
    /// Maps `path`; its length must be a whole number of ids, and every id below `vocab`.
    pub fn open(path: &Path, token_bytes: usize, vocab: usize) -> Result<Tokens> {
        let file = std::fs::File::open(path).with_context(|| {
            format!(
                "cannot open {}; hint: run `gptrain prepare --out {}` first",
                path.display(),
                path.parent().map_or(".".into(), |p| p.display().to_string())
            )
        })?;
        // SAFETY: the file is opened read-only and gptrain never writes a token file it is
        // reading; a file truncated by another process underneath would be a SIGBUS, the same
        // contract every mmap reader has.
        let map = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?;
        if !map.len().is_multiple_of(token_bytes) {
            bail!(
                "{} has {} bytes, not a whole number of {}-byte token ids (truncated or not a token file)",
                path.display(),
                map.len(),
                token_bytes
            );
        }
        let t = Tokens::Mapped(map, token_bytes);
        if let Some((pos, id)) = t.first_out_of_range(vocab) {
            bail!(
                "{}: token id {id} at position {pos} is >= the vocabulary size {vocab} (wrong meta, or a file from another tokenizer)",
                path.display()
            );
        }
        Ok(t)
    }

    pub fn len(&self) -> usize {
        match self {
            Tokens::Mapped(m, b) => m.len() / b,
            Tokens::Owned(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    pub fn get(&self, i: usize) -> u32 {
        match self {
            Tokens::Mapped(m, 2) => u16::from_le_bytes([m[2 * i], m[2 * i + 1]]) as u32,
            Tokens::Mapped(m, _) => u32::from_le_bytes([m[4 * i], m[4 * i + 1], m[4 * i + 2], m[4 * i + 3]]),
            Tokens::Owned(v) => v[i],
        }
    }

    fn first_out_of_range(&self, vocab: usize) -> Option<(usize, u32)> {
        const CH: usize = 1 << 20;
        let n = self.len();
        (0..n.div_ceil(CH)).into_par_iter().find_map_first(|c| {
            (c * CH..((c + 1) * CH).min(n)).find_map(|i| Some((i, self.get(i))).filter(|&(_, id)| id as usize >= vocab))
        })
    }
}

/// Which split a batch comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Val,
}

/// A prepared dataset: meta plus train and val tokens.
pub struct Dataset {
    pub meta: Meta,
    pub train: Tokens,
    pub val: Tokens,
    /// Where it came from (for messages).
    pub source: String,
}

/// The prepared-data directory `dataset` names: that path, or, for a relative name that is not
/// a directory here, `data/<name>` as nanoGPT's configs name it (`dataset = 'openwebtext'`).
pub fn find_dir(dataset: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(dataset);
    if dir.is_dir() {
        return Some(dir);
    }
    let nanogpt = Path::new("data").join(dataset);
    (dir.is_relative() && nanogpt.is_dir()).then_some(nanogpt)
}

impl Dataset {
    /// `builtin` (the built-in corpus, char-level, prepared in memory) or a prepared directory.
    pub fn open(dataset: &str) -> Result<Dataset> {
        if dataset == "builtin" || dataset == "builtin:shakespeare-char" {
            return Ok(Self::builtin());
        }
        let Some(dir) = find_dir(dataset) else {
            let also =
                if Path::new(dataset).is_relative() { format!(" (nor is data/{dataset}, where nanoGPT keeps it)") } else { String::new() };
            bail!(
                "dataset `{dataset}` is not a directory{also}; hint: `gptrain prepare --input FILE --out {dataset}` makes one, or use `--set dataset=builtin`"
            );
        };
        let meta = Meta::load(&dir)?;
        let train = Tokens::open(&dir.join("train.bin"), meta.token_bytes, meta.vocab_size)?;
        let val = Tokens::open(&dir.join("val.bin"), meta.token_bytes, meta.vocab_size)?;
        Ok(Dataset { meta, train, val, source: dir.display().to_string() })
    }

    /// The built-in corpus, char-level, 90/10 split, in memory.
    pub fn builtin() -> Dataset {
        let (meta, ids) = prepare::char_encode_all(BUILTIN_CORPUS);
        let n = ids.len() * 9 / 10;
        Dataset {
            meta,
            train: Tokens::Owned(ids[..n].to_vec()),
            val: Tokens::Owned(ids[n..].to_vec()),
            source: "built-in Shakespeare corpus (char-level)".into(),
        }
    }

    pub fn split(&self, s: Split) -> &Tokens {
        match s {
            Split::Train => &self.train,
            Split::Val => &self.val,
        }
    }

    /// Checks that both splits can hold a (block_size + 1)-token window.
    pub fn check_block_size(&self, block_size: usize) -> Result<()> {
        for (name, t) in [("train", &self.train), ("val", &self.val)] {
            if t.len() <= block_size {
                bail!(
                    "the {name} split of {} has {} tokens, not more than block_size ({block_size}); use a smaller block_size or more data",
                    self.source,
                    t.len()
                );
            }
        }
        Ok(())
    }

    /// A batch of `b` windows of `t` tokens at random offsets (inputs, targets shifted by
    /// one), drawn under `key` (a pure function of the key: reproducible and resumable).
    pub fn batch(&self, split: Split, key: u64, b: usize, t: usize) -> (Vec<u32>, Vec<u32>) {
        let data = self.split(split);
        let hi = (data.len() - t) as u64; // offsets in [0, len - T), as nanoGPT's randint
        let mut x = Vec::with_capacity(b * t);
        let mut y = Vec::with_capacity(b * t);
        for i in 0..b {
            let off = rng::below(rng::mix(key, i as u64), hi) as usize;
            x.extend((off..off + t).map(|j| data.get(j)));
            y.extend((off + 1..off + 1 + t).map(|j| data.get(j)));
        }
        (x, y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
    }

    #[test]
    fn reads_a_nanogpt_prepared_directory() {
        let ds = Dataset::open(fixture("nanogpt_char").to_str().unwrap()).unwrap();
        assert_eq!(ds.meta.tokenizer, "char");
        assert_eq!(ds.meta.vocab_size, 30);
        assert_eq!(ds.train.len() + ds.val.len(), 243);
        let tok = ds.meta.tokenizer().unwrap();
        let text: String = tok.decode(&(0..14).map(|i| ds.train.get(i)).collect::<Vec<_>>());
        assert_eq!(text, "First Citizen:");
    }

    #[test]
    fn builtin_corpus_is_char_level_shakespeare() {
        let ds = Dataset::builtin();
        assert!(ds.train.len() > 900_000, "{}", ds.train.len());
        assert_eq!(ds.train.len() + ds.val.len(), BUILTIN_CORPUS.chars().count());
        assert!(ds.meta.vocab_size > 60 && ds.meta.vocab_size < 100);
    }

    #[test]
    fn batches_are_shifted_windows_and_reproducible() {
        let ds = Dataset::builtin();
        let (x, y) = ds.batch(Split::Train, 7, 4, 16);
        assert_eq!(x.len(), 64);
        for r in 0..4 {
            assert_eq!(&x[r * 16 + 1..r * 16 + 16], &y[r * 16..r * 16 + 15]);
        }
        assert_eq!(ds.batch(Split::Train, 7, 4, 16), (x, y.clone()));
        assert_ne!(ds.batch(Split::Train, 8, 4, 16).1, y);
    }

    #[test]
    fn bad_token_files_are_errors() {
        let dir = std::env::temp_dir().join(format!("gptrain-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("odd.bin"), [1u8, 0, 2]).unwrap();
        let e = Tokens::open(&dir.join("odd.bin"), 2, 10).err().unwrap().to_string();
        assert!(e.contains("not a whole number"), "{e}");
        std::fs::write(dir.join("big.bin"), [1u8, 0, 20, 0]).unwrap();
        let e = Tokens::open(&dir.join("big.bin"), 2, 10).err().unwrap().to_string();
        assert!(e.contains("token id 20 at position 1"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
