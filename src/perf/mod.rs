//! Performance truth: the FLOPs/memory model, the device table, the live meter, the estimator
//! and the log reader.

pub mod device;
pub mod estimate;
pub mod flops;
pub mod logs;
pub mod meter;
