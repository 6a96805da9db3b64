//! The CUDA backend.

pub mod compile;
pub mod libs;
pub mod select;
