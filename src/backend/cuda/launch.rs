//! Kernel launches: a kernel looked up by name (its family's variant compiled, or read from
//! the cache, and loaded at first use), checked against what the driver says of it (threads
//! per block, shared memory: opted in past 48 KiB less its static shared memory), and
//! launched on the backend's stream with its arguments.

use super::{ahead, compile, Cuda};
use anyhow::{anyhow, bail, Result};
use cudarc::driver::{sys, CudaFunction, LaunchConfig, PushKernelArg};

/// Threads per block of the elementwise kernels.
const BLOCK: u32 = 256;

/// Dynamic shared memory a block may use without opting in (48 KiB on every card).
pub(super) const SHARED: usize = 48 << 10;

/// A loaded kernel and what the driver says of its launches.
pub(super) struct Kernel {
    f: CudaFunction,
    /// Dynamic shared memory per block it may use now (bytes): 48 KiB less its static shared
    /// memory (which the driver counts in the same 48 KiB), more once opted in.
    allowed: usize,
    /// Its static `__shared__` arrays (bytes, as the driver reports them; measured, not a
    /// documented rule: NVRTC 12.9's sm_90 CUBINs give the kernels with dynamic shared memory
    /// 1 KiB here).
    static_shared: usize,
    /// The most threads per block its registers allow.
    max_threads: u32,
}

/// What a launch with `dynamic` bytes of dynamic shared memory must opt in to (None: nothing)
/// for a kernel with `static_shared` bytes of its own that may use `allowed` dynamic bytes now,
/// on a card whose blocks may hold `optin` bytes in all once opted in; an error when static and
/// dynamic together exceed that.
fn opt_in(dynamic: usize, allowed: usize, static_shared: usize, optin: usize) -> Result<Option<usize>, String> {
    if dynamic <= allowed {
        return Ok(None);
    }
    if dynamic + static_shared > optin {
        return Err(format!(
            "needs {} KiB of shared memory per block and this GPU allows {} KiB: block_size is too long for attention with this head size (n_embd / n_head of 8, 16, 32 or 64 use kernels without the limit)",
            (dynamic + static_shared).div_ceil(1024),
            optin / 1024
        ));
    }
    Ok(Some(dynamic))
}

/// A kernel argument.
#[derive(Clone, Copy)]
pub(super) enum Arg {
    /// A device address (any pointer parameter; 0 for a null one).
    P(u64),
    U32(u32),
    U64(u64),
    F32(f32),
    I32(i32),
}

/// Blocks of `per` that cover `n` (at least one).
pub(super) fn blocks(n: usize, per: usize) -> u32 {
    n.div_ceil(per).max(1) as u32
}

impl Cuda {
    /// Launches kernel `name` with `grid` x `block` threads and `shared` bytes of dynamic
    /// shared memory.
    pub(super) fn launch(&self, name: &str, grid: (u32, u32), block: (u32, u32), shared: usize, args: &[Arg]) -> Result<()> {
        let f = self.func(name, block.0 * block.1, shared)?;
        let mut b = self.inner.stream.launch_builder(&f);
        for a in args {
            match a {
                Arg::P(x) | Arg::U64(x) => b.arg(x),
                Arg::U32(x) => b.arg(x),
                Arg::F32(x) => b.arg(x),
                Arg::I32(x) => b.arg(x),
            };
        }
        let cfg = LaunchConfig { grid_dim: (grid.0, grid.1, 1), block_dim: (block.0, block.1, 1), shared_mem_bytes: shared as u32 };
        // SAFETY: every kernel of kernels/*.cu takes exactly the arguments its call site below
        // passes, in order and type (pointers as 64-bit addresses of checked tensors); the
        // launch shape is one the kernel is written for (block sizes multiples of 32, shared
        // memory sized from the same T or pos the kernel indexes with) and one the driver said
        // it takes (`func`).
        unsafe { b.launch(cfg) }.map_err(|e| anyhow!("launch of {name}: {e:?}"))?;
        Ok(())
    }

    /// An elementwise kernel over `n` elements (grid-stride).
    pub(super) fn launch_1d(&self, name: &str, n: usize, args: &[Arg]) -> Result<()> {
        let grid = blocks(n, BLOCK as usize).min(self.inner.sms as u32 * 32);
        self.launch(name, (grid, 1), (BLOCK, 1), 0, args)
    }

    /// Kernel `name`, ready for a launch of `threads` per block with `shared` bytes of dynamic
    /// shared memory: over what it may use without opting in (48 KiB less its static shared
    /// memory) it opts in to more, once per kernel and size (the generic attention kernels keep
    /// a row of T scores per warp).
    fn func(&self, name: &str, threads: u32, shared: usize) -> Result<CudaFunction> {
        let mut funcs = self.inner.funcs.lock().unwrap_or_else(|e| e.into_inner());
        if !funcs.contains_key(name) {
            let family = compile::family(name).ok_or_else(|| anyhow!("no kernel family defines {name}"))?;
            let m = self.module(family, compile::Variant::of(name))?;
            let f = m.load_function(name).map_err(|e| anyhow!("no kernel named {name} in {family}.cu ({e:?})"))?;
            let asked = |a, what| f.get_attribute(a).map_err(|e| anyhow!("{name}: asking the driver for its {what}: {e:?}"));
            let static_shared = asked(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, "static shared memory")?;
            let max_threads = asked(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, "threads per block")?;
            // the dynamic shared memory a launch may take before opting in, as the driver keeps
            // it (48 KiB less the static: the two together are what the 48 KiB bounds)
            let allowed = asked(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, "dynamic shared memory")?;
            let (static_shared, allowed) = (static_shared.max(0) as usize, allowed.max(0) as usize);
            let kernel = Kernel {
                allowed: allowed.min(SHARED.saturating_sub(static_shared)),
                static_shared,
                max_threads: max_threads.max(0) as u32,
                f,
            };
            funcs.insert(name.to_string(), kernel);
        }
        let k = funcs.get_mut(name).expect("inserted above");
        if threads > k.max_threads {
            bail!(
                "{name} runs at most {} threads per block on this GPU (its registers), and gptrain launched it with {threads}: a gptrain bug, please report it",
                k.max_threads
            );
        }
        if let Some(ask) = opt_in(shared, k.allowed, k.static_shared, self.inner.shared_optin).map_err(|e| anyhow!("{name} {e}"))? {
            let max_dynamic = sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
            k.f.set_attribute(max_dynamic, ask as i32)
                .map_err(|e| anyhow!("{name}: asking for {ask} bytes of shared memory per block: {e:?}"))?;
            k.allowed = ask;
        }
        Ok(k.f.clone())
    }

    /// Variant `only` of kernel family `family`, compiled for the card (or read from the cache)
    /// and loaded on first use: compiled ahead when the run planned it ([`Backend::prepare`]),
    /// else here.
    ///
    /// [`Backend::prepare`]: crate::backend::Backend::prepare
    fn module(&self, family: &'static str, only: compile::Variant) -> Result<std::sync::Arc<cudarc::driver::CudaModule>> {
        let mut modules = self.inner.modules.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = modules.get(&(family, only)) {
            return Ok(m.clone());
        }
        let ahead = &self.inner.ahead;
        let (built, early, waited) = match ahead.take((family, only)) {
            ahead::Taken::Ready(b, waited) => (b, true, waited),
            ahead::Taken::Planned | ahead::Taken::Unplanned => {
                let b = ahead.build_now((family, only));
                let secs = b.secs;
                (b, false, secs)
            }
        };
        ahead.loaded((family, only), early, &built, waited);
        let bin = built.bin?;
        compile::check_cubin(family, &bin)?;
        let m = self
            .inner
            .ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(bin))
            .map_err(|e| anyhow!("loading kernels {family}.cu ({only:?}): {e:?}"))?;
        modules.insert((family, only), m.clone());
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel's static shared memory counts in the 48 KiB a block may use without opting in
    /// (sm_90 gives the generic attention kernels 1 KiB), so 48 KiB of scores then opts in;
    /// past the card's limit, static and dynamic together, it is an error naming both sizes.
    #[test]
    fn dynamic_shared_memory_opts_in_past_48_kib_less_the_static() {
        let h100 = 227 << 10;
        assert_eq!(opt_in(48 << 10, SHARED, 0, h100), Ok(None));
        assert_eq!(opt_in(48 << 10, SHARED - 1024, 1024, h100), Ok(Some(48 << 10)));
        assert_eq!(opt_in(47 << 10, SHARED - 1024, 1024, h100), Ok(None));
        // opted in once: a smaller launch asks nothing more
        assert_eq!(opt_in(40 << 10, 48 << 10, 1024, h100), Ok(None));
        assert_eq!(opt_in(226 << 10, SHARED - 1024, 1024, h100), Ok(Some(226 << 10)));
        let e = opt_in((226 << 10) + 1, SHARED - 1024, 1024, h100).unwrap_err();
        assert!(e.starts_with("needs 228 KiB of shared memory per block and this GPU allows 227 KiB"), "{e}");
    }
}
