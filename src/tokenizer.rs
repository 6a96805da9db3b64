//! Tokenizers: character-level (vocabulary from the text) and GPT-2 BPE (tiktoken's r50k_base,
//! compiled in, fully offline).

use anyhow::{bail, Result};
use std::collections::HashMap;

/// GPT-2's end-of-text token, written between documents.
pub const GPT2_EOT: u32 = 50256;
/// GPT-2's vocabulary size.
pub const GPT2_VOCAB: usize = 50257;

#[derive(Clone, Debug)]
pub enum Tokenizer {
    /// itos[i] is the character of id i (as a string, nanoGPT's meta.pkl `itos`).
    Char {
        itos: Vec<String>,
        stoi: HashMap<char, u32>,
    },
    Gpt2,
}

impl Tokenizer {
    pub fn char(itos: Vec<String>) -> Tokenizer {
        let stoi = itos.iter().enumerate().filter_map(|(i, s)| s.chars().next().map(|c| (c, i as u32))).collect();
        Tokenizer::Char { itos, stoi }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Char { itos, .. } => itos.len(),
            Tokenizer::Gpt2 => GPT2_VOCAB,
        }
    }

    /// Encodes text; a character outside a char vocabulary is an error naming it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Tokenizer::Char { stoi, .. } => text
                .chars()
                .map(|c| match stoi.get(&c) {
                    Some(&i) => Ok(i),
                    None => bail!("the character {c:?} is not in this model's vocabulary of {} characters", stoi.len()),
                })
                .collect(),
            Tokenizer::Gpt2 => Ok(bpe().encode_with_special_tokens(text)),
        }
    }

    /// Decodes ids; ids outside the vocabulary (padding) decode to nothing.
    pub fn decode(&self, ids: &[u32]) -> String {
        match self {
            Tokenizer::Char { itos, .. } => ids.iter().filter_map(|&i| itos.get(i as usize)).map(String::as_str).collect(),
            Tokenizer::Gpt2 => {
                let ids: Vec<u32> = ids.iter().copied().filter(|&i| (i as usize) < GPT2_VOCAB).collect();
                let bytes = bpe().decode_bytes(&ids).unwrap_or_default();
                String::from_utf8_lossy(&bytes).into_owned()
            }
        }
    }
}

/// The GPT-2 BPE (tiktoken's r50k_base), built once.
pub fn bpe() -> &'static tiktoken_rs::CoreBPE {
    tiktoken_rs::r50k_base_singleton()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_matches_known_ids() {
        let ids = Tokenizer::Gpt2.encode("Hello world, this is a test.").unwrap();
        assert_eq!(ids, vec![15496, 995, 11, 428, 318, 257, 1332, 13]);
        assert_eq!(Tokenizer::Gpt2.decode(&ids), "Hello world, this is a test.");
    }

    #[test]
    fn char_roundtrip_and_unknown() {
        let t = Tokenizer::char(vec!["\n".into(), " ".into(), "a".into(), "b".into()]);
        assert_eq!(t.encode("ab a\n").unwrap(), vec![2, 3, 1, 2, 0]);
        assert_eq!(t.decode(&[2, 3, 1, 2, 0]), "ab a\n");
        assert!(t.encode("z").unwrap_err().to_string().contains("'z'"));
    }
}
