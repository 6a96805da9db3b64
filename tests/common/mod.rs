//! What the backend-generic tests share (candle's `test_device!` is the model): the backends
//! this build has, each with the tolerances of the precision it computes in.
#![allow(dead_code)]

/// How close a backend must come to the PyTorch fp32 reference.
#[derive(Clone, Copy, Debug)]
pub struct Tol {
    /// Relative error of a loss.
    pub loss: f64,
    /// Relative L2 error of a tensor (logits, a gradient, parameters after training), and
    /// relative error of a gradient norm.
    pub tensor: f64,
    /// Max abs error of a logit between the KV-cache decode and the full forward.
    pub logit: f32,
}

/// An fp32 backend.
pub const F32: Tol = Tol { loss: 1e-5, tensor: 1e-4, logit: 1e-5 };

/// `backend_tests!(a, b, ...)`: for each generic test `fn a<B: Backend + Clone>(backend: B, tol:
/// Tol)` of the file, a module `a` with one `#[test]` per backend this build has: the CPU's fast
/// kernels and its reference kernels. (A CUDA backend adds its line here, and skips with a
/// message on a machine without a GPU.)
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn cpu_fast() {
                super::$name(gptrain::backend::cpu::Cpu::FAST, $crate::common::F32)
            }
            #[test]
            fn cpu_reference() {
                super::$name(gptrain::backend::cpu::Cpu::REFERENCE, $crate::common::F32)
            }
        }
    )*};
}
pub(crate) use backend_tests;
