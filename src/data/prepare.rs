//! `gptrain prepare`: text -> `train.bin`/`val.bin` + meta, streamed with bounded memory.
//!
//! Input is a text file, a folder of `.txt` files (each one document; GPT-2 BPE puts EOT after
//! each), or the built-in corpus. The first 90% goes to train, the rest to val: exactly 90% of
//! the characters for char-level (as nanoGPT's shakespeare_char), at the first line break after
//! 90% of the bytes for BPE. BPE runs in parallel over line-aligned chunks. In a folder, files
//! that are not `.txt` and empty `.txt` files are skipped (and reported). An output directory
//! that already holds a prepared dataset is overwritten only when its tokenizer is the same.

use super::{pickle, Meta, BUILTIN_CORPUS};
use crate::tokenizer::{bpe, GPT2_EOT};
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Bytes of text read per chunk (cut at the next line break).
const CHUNK: usize = 4 << 20;
/// Chunks encoded in parallel at a time (bounds memory to ~CHUNK x this).
const BATCH: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenizerKind {
    Char,
    Gpt2,
}

impl TokenizerKind {
    /// The name `meta.json` gives it.
    pub fn name(self) -> &'static str {
        match self {
            TokenizerKind::Char => "char",
            TokenizerKind::Gpt2 => "gpt2",
        }
    }
}

/// Why a file of an input folder was not read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Skip {
    NotTxt,
    Empty,
}

/// What `prepare` read and wrote.
#[derive(Debug)]
pub struct Report {
    pub meta: Meta,
    pub train_tokens: usize,
    pub val_tokens: usize,
    pub bytes: u64,
    /// Each document read (a file's path, or `the built-in corpus`) and its size in bytes.
    pub read: Vec<(String, u64)>,
    /// Files of an input folder that were not read, and why.
    pub skipped: Skipped,
    /// The meta of the dataset this run overwrote in the output directory (same tokenizer).
    pub replaced: Option<Meta>,
}

/// A text source: a file, or the built-in corpus.
enum Source {
    File(PathBuf),
    Builtin,
}

impl Source {
    fn len(&self) -> Result<u64> {
        Ok(match self {
            Source::File(p) => std::fs::metadata(p).with_context(|| format!("cannot read {}", p.display()))?.len(),
            Source::Builtin => BUILTIN_CORPUS.len() as u64,
        })
    }
    fn reader(&self) -> Result<Box<dyn BufRead>> {
        Ok(match self {
            Source::File(p) => {
                Box::new(BufReader::with_capacity(1 << 20, std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?))
            }
            Source::Builtin => Box::new(BUILTIN_CORPUS.as_bytes()),
        })
    }
    fn name(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Builtin => "the built-in corpus".into(),
        }
    }
}

/// Up to `n` of `paths`, comma-separated, with "and N more".
fn some_names(paths: &[&Path], n: usize) -> String {
    let mut s = paths.iter().take(n).map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
    if paths.len() > n {
        s.push_str(&format!(" and {} more", paths.len() - n));
    }
    s
}

/// Files of an input folder that are not read, and why.
type Skipped = Vec<(PathBuf, Skip)>;

/// The documents to read, and the files of a folder that are skipped (not `.txt`, or empty).
fn sources(input: Option<&Path>) -> Result<(Vec<Source>, Skipped)> {
    let Some(input) = input else { return Ok((vec![Source::Builtin], Vec::new())) };
    if input.is_file() {
        if Source::File(input.to_path_buf()).len()? == 0 {
            bail!("{} is empty (0 bytes): there is no text to prepare", input.display());
        }
        return Ok((vec![Source::File(input.to_path_buf())], Vec::new()));
    }
    if !input.is_dir() {
        bail!("input {} does not exist", input.display());
    }
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    let mut stack = vec![input.to_path_buf()];
    // a symlink back up the tree must not make the walk endless
    let mut seen = BTreeSet::new();
    while let Some(d) = stack.pop() {
        if !seen.insert(std::fs::canonicalize(&d).unwrap_or_else(|_| d.clone())) {
            continue;
        }
        for e in std::fs::read_dir(&d).with_context(|| format!("cannot list {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_none_or(|x| x != "txt") {
                skipped.push((p, Skip::NotTxt));
            } else if Source::File(p.clone()).len()? == 0 {
                skipped.push((p, Skip::Empty));
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    skipped.sort();
    if files.is_empty() {
        let empty: Vec<&Path> = skipped.iter().filter(|s| s.1 == Skip::Empty).map(|s| s.0.as_path()).collect();
        let other: Vec<&Path> = skipped.iter().filter(|s| s.1 == Skip::NotTxt).map(|s| s.0.as_path()).collect();
        if !empty.is_empty() {
            bail!("every .txt file in {} is empty: {}", input.display(), some_names(&empty, 5));
        }
        if !other.is_empty() {
            bail!("{} holds no .txt files (only {})", input.display(), some_names(&other, 5));
        }
        bail!("{} holds no .txt files", input.display());
    }
    Ok((files.into_iter().map(Source::File).collect(), skipped))
}

/// The dataset already prepared in `out`, if any: an error when it was made with another
/// tokenizer (its token ids would change meaning under a run's feet) or cannot be read.
fn existing(out: &Path, kind: TokenizerKind) -> Result<Option<Meta>> {
    let prepared = ["meta.json", "meta.pkl", "train.bin", "val.bin"].iter().any(|f| out.join(f).exists());
    if !out.is_dir() || !prepared {
        return Ok(None);
    }
    let way_out = format!("give another --out, or delete {} first", out.display());
    let old = Meta::load(out)
        .with_context(|| format!("{} holds a prepared dataset whose meta cannot be read; not overwriting it: {way_out}", out.display()))?;
    if old.tokenizer != kind.name() {
        bail!(
            "{} already holds a dataset prepared with the `{}` tokenizer; not overwriting it with `{}` tokens (what was trained on it would no longer match): {way_out}",
            out.display(),
            old.tokenizer,
            kind.name()
        );
    }
    Ok(Some(old))
}

/// Reads a source as line-aligned UTF-8 chunks of about CHUNK bytes.
fn for_each_chunk(src: &Source, mut f: impl FnMut(String) -> Result<()>) -> Result<()> {
    let mut r = src.reader()?;
    let mut offset = 0u64;
    loop {
        let mut buf = Vec::with_capacity(CHUNK + 4096);
        (&mut r).take(CHUNK as u64).read_to_end(&mut buf).with_context(|| format!("reading {}", src.name()))?;
        if buf.is_empty() {
            return Ok(());
        }
        if buf.last() != Some(&b'\n') {
            r.read_until(b'\n', &mut buf)?; // finish the line
        }
        let n = buf.len() as u64;
        let text = String::from_utf8(buf).map_err(|e| {
            anyhow::anyhow!("{} is not UTF-8 text (invalid byte at offset {})", src.name(), offset + e.utf8_error().valid_up_to() as u64)
        })?;
        offset += n;
        f(text)?;
    }
}

/// Char-level vocabulary and ids of a whole text held in memory (nanoGPT's shakespeare_char).
pub fn char_encode_all(text: &str) -> (Meta, Vec<u32>) {
    let chars: BTreeSet<char> = text.chars().collect();
    let itos: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
    let mut lut = std::collections::HashMap::new();
    for (i, c) in chars.iter().enumerate() {
        lut.insert(*c, i as u32);
    }
    (Meta::char(itos), text.chars().map(|c| lut[&c]).collect())
}

/// Token writer for one split.
struct Writer {
    out: BufWriter<std::fs::File>,
    path: PathBuf,
    bytes: usize,
    count: usize,
}

impl Writer {
    fn create(path: PathBuf, bytes: usize) -> Result<Writer> {
        let f = std::fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Writer { out: BufWriter::with_capacity(1 << 20, f), path, bytes, count: 0 })
    }
    fn write(&mut self, ids: &[u32]) -> Result<()> {
        for &id in ids {
            let r = if self.bytes == 2 { self.out.write_all(&(id as u16).to_le_bytes()) } else { self.out.write_all(&id.to_le_bytes()) };
            r.with_context(|| format!("writing {}", self.path.display()))?;
        }
        self.count += ids.len();
        Ok(())
    }
    fn finish(mut self) -> Result<usize> {
        self.out.flush().with_context(|| format!("writing {}", self.path.display()))?;
        self.out.get_ref().sync_all()?;
        Ok(self.count)
    }
}

/// Prepares `input` (None: the built-in corpus) into `out`.
pub fn prepare(input: Option<&Path>, kind: TokenizerKind, out: &Path, progress: &indicatif::ProgressBar) -> Result<Report> {
    let (srcs, skipped) = sources(input)?;
    let read: Vec<(String, u64)> = srcs.iter().map(|s| Ok((s.name(), s.len()?))).collect::<Result<_>>()?;
    let total: u64 = read.iter().map(|r| r.1).sum();
    if total == 0 {
        bail!("the input is empty");
    }
    if out.is_file() {
        bail!("--out {} is a file, not a folder; hint: --out DIR (a folder, made if missing)", out.display());
    }
    let replaced = existing(out, kind)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let many = srcs.len() > 1;
    let (meta, train_tokens, val_tokens) = match kind {
        TokenizerKind::Char => prepare_char(&srcs, total, out, progress),
        TokenizerKind::Gpt2 => prepare_gpt2(&srcs, total, many, out, progress),
    }?;
    Ok(Report { meta, train_tokens, val_tokens, bytes: total, read, skipped, replaced })
}

/// (meta, train tokens, val tokens) written.
type Written = (Meta, usize, usize);

fn prepare_char(srcs: &[Source], total: u64, out: &Path, progress: &indicatif::ProgressBar) -> Result<Written> {
    // pass 1: the vocabulary and the character count
    progress.set_length(2 * total);
    let mut chars = BTreeSet::new();
    let mut n_chars = 0usize;
    for s in srcs {
        for_each_chunk(s, |text| {
            n_chars += text.chars().count();
            chars.extend(text.chars());
            progress.inc(text.len() as u64);
            Ok(())
        })?;
    }
    let itos: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
    let meta = Meta::char(itos);
    let lut: std::collections::HashMap<char, u32> = chars.iter().enumerate().map(|(i, &c)| (c, i as u32)).collect();
    // pass 2: encode; the first 90% of characters go to train
    let split = n_chars * 9 / 10;
    let mut train = Writer::create(out.join("train.bin"), meta.token_bytes)?;
    let mut val = Writer::create(out.join("val.bin"), meta.token_bytes)?;
    let mut seen = 0usize;
    for s in srcs {
        for_each_chunk(s, |text| {
            let ids: Vec<u32> = text.chars().map(|c| lut[&c]).collect();
            let cut = split.saturating_sub(seen).min(ids.len());
            train.write(&ids[..cut])?;
            val.write(&ids[cut..])?;
            seen += ids.len();
            progress.inc(text.len() as u64);
            Ok(())
        })?;
    }
    write_meta(out, &meta)?;
    Ok((meta, train.finish()?, val.finish()?))
}

fn prepare_gpt2(srcs: &[Source], total: u64, eot_per_doc: bool, out: &Path, progress: &indicatif::ProgressBar) -> Result<Written> {
    progress.set_length(total);
    let meta = Meta::gpt2();
    let mut train = Writer::create(out.join("train.bin"), meta.token_bytes)?;
    let mut val = Writer::create(out.join("val.bin"), meta.token_bytes)?;
    let split_byte = total * 9 / 10;
    let mut seen = 0u64;
    // pieces waiting to be encoded: (text, goes to val, EOT after)
    let mut pending: Vec<(String, bool, bool)> = Vec::new();
    let flush = |pending: &mut Vec<(String, bool, bool)>, train: &mut Writer, val: &mut Writer| -> Result<()> {
        let encoded: Vec<Vec<u32>> = pending
            .par_iter()
            .map(|(t, _, eot)| {
                let mut ids = bpe().encode_ordinary(t);
                if *eot {
                    ids.push(GPT2_EOT);
                }
                ids
            })
            .collect();
        for ((t, to_val, _), ids) in pending.iter().zip(&encoded) {
            if *to_val {
                val.write(ids)?
            } else {
                train.write(ids)?
            }
            progress.inc(t.len() as u64);
        }
        pending.clear();
        Ok(())
    };
    for s in srcs {
        let mut last: Option<usize> = None;
        for_each_chunk(s, |text| {
            let start = seen;
            seen += text.len() as u64;
            if start < split_byte && seen > split_byte {
                // cut at the first line break at or after the split byte
                let at = (split_byte - start) as usize;
                let cut = text[at..].find('\n').map_or(text.len(), |i| at + i + 1);
                let (a, b) = text.split_at(cut);
                pending.push((a.to_string(), false, false));
                if !b.is_empty() {
                    pending.push((b.to_string(), true, false));
                }
            } else {
                pending.push((text, start >= split_byte, false));
            }
            last = Some(pending.len() - 1);
            if pending.len() >= BATCH {
                flush(&mut pending, &mut train, &mut val)?;
                last = None;
            }
            Ok(())
        })?;
        if eot_per_doc {
            match last {
                Some(i) => pending[i].2 = true,
                // the document's last chunk was already flushed: its EOT goes on its own
                None => pending.push((String::new(), seen > split_byte, true)),
            }
        }
    }
    flush(&mut pending, &mut train, &mut val)?;
    write_meta(out, &meta)?;
    Ok((meta, train.finish()?, val.finish()?))
}

/// Writes meta.json (ours) and, for char vocabularies, nanoGPT's meta.pkl (so nanoGPT's
/// train.py and sample.py read our directories).
fn write_meta(out: &Path, meta: &Meta) -> Result<()> {
    std::fs::write(out.join("meta.json"), serde_json::to_string_pretty(meta)?)?;
    if let Some(itos) = &meta.itos {
        std::fs::write(out.join("meta.pkl"), pickle::write_char_meta(itos))?;
    }
    Ok(())
}
