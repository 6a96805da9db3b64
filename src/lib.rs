//! gptrain: a GPT-2-family trainer that tells the truth about time.
//!
//! See ARCHITECTURE.md for the map. Only `cli` (and `main.rs`) print; everything else returns
//! values or errors.

pub mod backend;
pub mod bench;
pub mod check;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod data;
pub mod dist;
pub mod model;
pub mod optim;
pub mod perf;
pub mod plot;
pub mod rng;
pub mod sample;
pub mod tensorboard;
pub mod tensorfile;
pub mod tokenizer;
pub mod train;
pub mod units;
