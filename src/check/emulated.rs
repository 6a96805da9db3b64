//! A test backend that stores bf16/fp16 as ARCHITECTURE.md's mixed-precision design says
//! (rounded to nearest even on every write, f32 arithmetic), by rounding around the CPU's f32
//! kernels: what lets the tests run `check_ops` at bf16 and fp16 before the CPU backend
//! stores them itself.

use crate::backend::cpu::{Cpu, CpuBuf};
use crate::backend::{Backend, Buffers, DType, DeviceInfo, Host, Op, Precision, Tensor};
use anyhow::Result;

/// The CPU with low-precision buffers emulated: an f32 buffer whose values are always
/// representable in the tensor's type.
#[derive(Clone, Copy)]
pub(super) struct Rounding(pub Cpu);

/// `x` rounded to `dtype` (to nearest even), as f32.
fn round(x: f32, dtype: DType) -> f32 {
    match dtype {
        DType::Bf16 => half::bf16::from_f32(x).to_f32(),
        DType::F16 => half::f16::from_f32(x).to_f32(),
        _ => x,
    }
}

fn low(t: &Tensor) -> bool {
    matches!(t.dtype, DType::Bf16 | DType::F16)
}

/// Every tensor operand of `op`.
fn tensors(op: &mut Op) -> Vec<&mut Tensor> {
    let mut v: Vec<&mut Tensor> = Vec::new();
    match op {
        Op::Zero(x) => v.push(x),
        Op::Copy { dst, src } => v.extend([dst, src]),
        Op::Dropout { x, .. } => v.push(x),
        Op::Embed(e) => v.extend([&mut e.out, &mut e.wte, &mut e.wpe, &mut e.tokens]),
        Op::EmbedBackward(e) => v.extend([&mut e.dwte, &mut e.dwpe, &mut e.dout, &mut e.tokens]),
        Op::LayerNorm(l) => v.extend([&mut l.out, &mut l.mean, &mut l.rstd, &mut l.inp, &mut l.w].into_iter().chain(l.b.as_mut())),
        Op::LayerNormBackward(l) => {
            v.extend([&mut l.dinp, &mut l.dw, &mut l.dout, &mut l.inp, &mut l.mean, &mut l.rstd, &mut l.w].into_iter().chain(l.db.as_mut()))
        }
        Op::Matmul(m) => v.extend([&mut m.out, &mut m.inp, &mut m.w].into_iter().chain(m.b.as_mut())),
        Op::MatmulBackward(m) => v.extend([&mut m.dinp, &mut m.dw, &mut m.dout, &mut m.inp, &mut m.w].into_iter().chain(m.db.as_mut())),
        Op::Attention(a) => v.extend([&mut a.out, &mut a.stats, &mut a.qkv]),
        Op::AttentionBackward(a) => v.extend([&mut a.dqkv, &mut a.dout, &mut a.qkv, &mut a.stats]),
        Op::AttentionDecode(a) => v.extend([&mut a.out, &mut a.qkv, &mut a.k, &mut a.v]),
        Op::Gelu(g) => v.extend([&mut g.out, &mut g.inp]),
        Op::GeluBackward(g) => v.extend([&mut g.dinp, &mut g.dout, &mut g.inp]),
        Op::Residual(r) => v.extend([&mut r.out, &mut r.a, &mut r.b]),
        Op::FusedClassifier(f) => v.extend([&mut f.logits, &mut f.losses, &mut f.targets]),
        Op::AddMeanLoss { losses, .. } => v.push(losses),
        Op::AddSquares { x, .. } => v.push(x),
        Op::AdamWStep(a) => v.extend([&mut a.params, &mut a.grads, &mut a.m, &mut a.v].into_iter().chain(a.master.as_mut())),
    }
    v
}

impl Rounding {
    /// Rounds tensor `t` of the f32 buffer to its own type.
    fn round_in_place(&self, bufs: &mut Buffers<CpuBuf>, t: Tensor) -> Result<()> {
        let f = t.of(t.buf, DType::F32);
        let x: Vec<f32> = self.0.download(bufs, f)?.into_f32().into_iter().map(|x| round(x, t.dtype)).collect();
        self.0.upload(bufs, f, &Host::F32(x))
    }
}

impl Backend for Rounding {
    type Buf = CpuBuf;
    fn name(&self) -> String {
        format!("{} with emulated bf16/fp16 storage", self.0.name())
    }
    fn device(&self, p: Precision) -> DeviceInfo {
        self.0.device(p)
    }
    fn alloc(&self, n: usize, dtype: DType) -> Result<CpuBuf> {
        self.0.alloc(n, if matches!(dtype, DType::Bf16 | DType::F16) { DType::F32 } else { dtype })
    }
    fn upload(&self, bufs: &mut Buffers<CpuBuf>, dst: Tensor, src: &Host) -> Result<()> {
        self.0.upload(bufs, dst.of(dst.buf, if low(&dst) { DType::F32 } else { dst.dtype }), src)?;
        if low(&dst) {
            self.round_in_place(bufs, dst)?;
        }
        Ok(())
    }
    fn download(&self, bufs: &Buffers<CpuBuf>, src: Tensor) -> Result<Host> {
        self.0.download(bufs, src.of(src.buf, if low(&src) { DType::F32 } else { src.dtype }))
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    fn run(&self, bufs: &mut Buffers<CpuBuf>, op: &Op) -> Result<()> {
        let mut op = *op;
        // the CPU keeps no master weights: update them as the parameters, then round a copy
        if let Op::AdamWStep(a) = &mut op {
            if let Some(master) = a.master.take() {
                let params = a.params;
                a.params = master;
                self.0.run(bufs, &op)?;
                self.0.run(bufs, &Op::Copy { dst: params.of(params.buf, DType::F32), src: master })?;
                return self.round_in_place(bufs, params);
            }
        }
        let lows: Vec<Tensor> = tensors(&mut op).into_iter().filter(|t| low(t)).map(|t| *t).collect();
        for t in tensors(&mut op) {
            if low(t) {
                t.dtype = DType::F32;
            }
        }
        self.0.run(bufs, &op)?;
        // inputs are already representable: rounding every low-precision operand rounds the outputs
        for t in lows {
            self.round_in_place(bufs, t)?;
        }
        Ok(())
    }
}
