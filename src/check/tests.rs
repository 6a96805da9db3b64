//! The check passes the CPU's fast kernels, fails a backend with a wrong op, and covers every op.

use super::*;
use crate::backend::{DeviceInfo, Op, Tensor};

#[test]
fn the_fast_cpu_kernels_pass_every_op_in_float32() {
    let rows = check_ops(&Cpu::FAST, Precision::F32).unwrap();
    for r in &rows {
        assert_eq!(r.verdict, Verdict::Pass, "{r:?}");
        assert!(r.max_rel_err.unwrap() <= 1e-5 && !r.worst.is_empty(), "{r:?}");
    }
}

#[test]
fn every_op_variant_has_a_case() {
    let mut seen = [false; cases::N_VARIANTS];
    for case in cases::all() {
        for p in [Precision::F32, Precision::Bf16] {
            let spec = (case.build)(&mut Layout::new(p));
            for op in &spec.ops {
                seen[cases::variant(op)] = true;
            }
        }
    }
    let missing: Vec<usize> = (0..cases::N_VARIANTS).filter(|&i| !seen[i]).collect();
    assert!(missing.is_empty(), "Op variants without a case (see cases::variant): {missing:?}");
}

#[test]
fn at_bf16_and_fp16_every_op_and_training_pass_on_the_cpu() {
    // the CPU stores bf16/fp16 (mixed precision's portable path): every row runs, none skips
    for p in [Precision::Bf16, Precision::F16] {
        let rows = check_ops(&Cpu::FAST, p).unwrap();
        assert_eq!(rows.len(), cases::all().len());
        for r in rows {
            assert_eq!(r.verdict, Verdict::Pass, "{r:?}");
            assert!(r.max_rel_err.unwrap() > 0.0 || !r.op.contains("matmul"), "a product rounded to {} is not exact: {r:?}", p.name());
        }
        let t = check_training(Cpu::FAST, p).unwrap();
        assert_eq!(t.verdict, Verdict::Pass, "{t:?}");
        assert!(t.max_rel_diff.unwrap() > 0.0, "{} training is not bitwise fp32: {t:?}", p.name());
    }
}

#[test]
fn the_fast_cpu_kernels_train_as_the_reference_does() {
    let t = check_training(Cpu::FAST, Precision::F32).unwrap();
    assert_eq!(t.verdict, Verdict::Pass, "{t:?}");
    assert_eq!(t.losses.len(), 10);
    let (first, last) = (t.losses[0].1, t.losses[9].1);
    assert!(last < first, "the loss falls over the ten steps: {:?}", t.losses);
}

/// The bug a [`Broken`] backend has.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Bug {
    /// GELU's output 0.1% too large.
    GeluOff,
    /// The matmul weight gradient overwritten instead of accumulated.
    Overwrites,
}

/// The CPU backend with one bug.
#[derive(Clone, Copy)]
struct Broken {
    inner: Cpu,
    bug: Bug,
}

impl Backend for Broken {
    type Buf = <Cpu as Backend>::Buf;
    fn name(&self) -> String {
        format!("broken ({:?})", self.bug)
    }
    fn device(&self, p: Precision) -> DeviceInfo {
        self.inner.device(p)
    }
    fn alloc(&self, n: usize, dtype: DType) -> Result<Self::Buf> {
        self.inner.alloc(n, dtype)
    }
    fn upload(&self, bufs: &mut Buffers<Self::Buf>, dst: Tensor, src: &Host) -> Result<()> {
        self.inner.upload(bufs, dst, src)
    }
    fn download(&self, bufs: &Buffers<Self::Buf>, src: Tensor) -> Result<Host> {
        self.inner.download(bufs, src)
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    fn run(&self, bufs: &mut Buffers<Self::Buf>, op: &Op) -> Result<()> {
        match (self.bug, op) {
            (Bug::Overwrites, Op::MatmulBackward(m)) => self.inner.run(bufs, &Op::Zero(m.dw))?,
            (Bug::GeluOff, Op::Gelu(g)) => {
                self.inner.run(bufs, op)?;
                let out: Vec<f32> = self.download(bufs, g.out)?.into_f32().iter().map(|x| x * 1.001).collect();
                return self.upload(bufs, g.out, &Host::F32(out));
            }
            _ => {}
        }
        self.inner.run(bufs, op)
    }
}

#[test]
fn a_backend_with_a_wrong_op_fails_that_op_and_only_it() {
    for (bug, failing) in [
        (Bug::GeluOff, &["gelu forward"][..]),
        (Bug::Overwrites, &["matmul backward", "matmul backward, no bias", "matmul backward, 600 rows", "matmul backward + gelu"]),
    ] {
        let rows = check_ops(&Broken { inner: Cpu::FAST, bug }, Precision::F32).unwrap();
        for r in rows {
            let should_fail = failing.contains(&r.op);
            assert_eq!(r.verdict.failed(), should_fail, "{bug:?}: {r:?}");
            if should_fail {
                assert!(r.max_rel_err.unwrap() > 1e-4, "{r:?}");
            }
        }
    }
    // a gradient that forgets to accumulate over micro-batches trains differently
    let t = check_training(Broken { inner: Cpu::FAST, bug: Bug::Overwrites }, Precision::F32).unwrap();
    assert_eq!(t.verdict, Verdict::Fail, "{t:?}");
}

#[test]
fn the_error_is_relative_to_the_largest_value_or_change() {
    // overwritten: against max |r| = 4
    assert_eq!(rel_err(&[1.0, 4.5], &[1.0, 4.0], None), 0.125);
    // added into: against the largest change, 0.5, not the values
    assert!((rel_err(&[10.1, 4.0], &[10.0, 4.0], Some(&[9.5, 4.0])) - 0.2).abs() < 1e-12);
    // all-zero reference: against the floor; non-finite: infinite
    assert_eq!(rel_err(&[0.0], &[0.0], None), 0.0);
    assert!(rel_err(&[1e-9], &[0.0], None) > 1e-4);
    assert_eq!(rel_err(&[f64::NAN], &[1.0], None), f64::INFINITY);
}

#[test]
fn devices_are_cpu_cuda_or_cuda_n() {
    assert_eq!(Target::parse("cpu").unwrap(), Target::Cpu);
    assert_eq!(Target::parse("cuda").unwrap(), Target::Cuda(None));
    assert_eq!(Target::parse("cuda:1").unwrap(), Target::Cuda(Some(1)));
    assert!(Target::parse("cuda:x").is_err() && Target::parse("tpu").is_err());
    let labels: Vec<String> = Cpu::FAST.describe().into_iter().map(|r| r.0).collect();
    assert_eq!(labels, ["device", "vectors", "matmuls", "bf16", "threads", "memory", "kernels"]);
}
