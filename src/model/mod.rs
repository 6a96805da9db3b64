//! GPT-2 as nanoGPT's model.py defines it: shapes, the parameter and activation layouts, and
//! the forward/backward pass over a [`Backend`](crate::backend::Backend).

pub mod gpt;
pub mod layout;

pub use gpt::{DropoutCtx, Gpt};
pub use layout::{ActLayout, ParamLayout, ParamTensor, Recompute};

use crate::backend::{Plan, Precision, Work};
use anyhow::{bail, Result};

/// The shape of a model. `vocab_size` is the real vocabulary (softmax runs over it);
/// `padded_vocab_size` >= it is the row count of `wte` (padding rows take no part in the loss).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModelConfig {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    pub block_size: usize,
    pub vocab_size: usize,
    pub padded_vocab_size: usize,
    pub bias: bool,
}

impl ModelConfig {
    /// Checks the shape and returns it; the error names the knob to change.
    pub fn validate(self) -> Result<Self> {
        if self.n_layer == 0 || self.n_head == 0 || self.n_embd == 0 || self.block_size == 0 {
            bail!(
                "n_layer, n_head, n_embd and block_size must all be at least 1 (got {}, {}, {}, {})",
                self.n_layer,
                self.n_head,
                self.n_embd,
                self.block_size
            );
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            bail!(
                "n_embd ({}) must be divisible by n_head ({}); hint: try n_head = {}",
                self.n_embd,
                self.n_head,
                largest_divisor_at_most(self.n_embd, self.n_head)
            );
        }
        if self.vocab_size == 0 || self.vocab_size > u32::MAX as usize {
            bail!("vocab_size must be between 1 and 2^32-1 (got {})", self.vocab_size);
        }
        if self.padded_vocab_size < self.vocab_size {
            bail!("padded vocabulary ({}) is smaller than the vocabulary ({})", self.padded_vocab_size, self.vocab_size);
        }
        Ok(self)
    }

    pub fn head_size(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// What a run of this model says to its backend before it starts ([`Backend::prepare`]):
    /// `work` at micro-batch `batch` in `precision`, one process on this machine.
    ///
    /// [`Backend::prepare`]: crate::backend::Backend::prepare
    pub fn plan(&self, batch: usize, precision: Precision, work: Work) -> Plan {
        Plan { batch, n_embd: self.n_embd, n_head: self.n_head, bias: self.bias, storage: precision.storage(), work, local_ranks: 1 }
    }
}

fn largest_divisor_at_most(n: usize, k: usize) -> usize {
    (1..=k.min(n)).rev().find(|d| n.is_multiple_of(*d)).unwrap_or(1)
}

/// Rounds a vocabulary up to a multiple of 64, as llm.c and nanoGPT's 50304 do.
pub fn pad_vocab(v: usize) -> usize {
    v.div_ceil(64) * 64
}
