//! Which device a run uses: the config's `device` (`auto`, `cpu`, `cuda`, `cuda:N`), checked
//! against what this machine has, with a one-line reason for the start banner or a one-line
//! error. Nothing here panics when the driver or a library is missing: every probe asks
//! whether the library loads before cudarc touches it.

use super::libs;
use crate::backend::Precision;
use anyhow::{bail, Result};
use cudarc::driver::{result, sys};

/// The lowest compute capability the kernels are compiled for (Volta).
pub const MIN_CC: (i32, i32) = (7, 0);
/// The lowest compute capability with bfloat16 arithmetic (Ampere).
pub const BF16_CC: (i32, i32) = (8, 0);

/// The config's `device`, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// The first usable GPU, else the CPU.
    Auto,
    Cpu,
    /// A GPU: `cuda` (the first usable one) or `cuda:N`.
    Cuda(Option<usize>),
}

impl Choice {
    pub fn parse(s: &str) -> Result<Choice> {
        Ok(match s {
            "auto" => Choice::Auto,
            "cpu" => Choice::Cpu,
            "cuda" => Choice::Cuda(None),
            _ => match s.strip_prefix("cuda:").map(|n| n.parse::<usize>()) {
                Some(Ok(n)) => Choice::Cuda(Some(n)),
                _ => bail!("unknown device `{s}` (auto, cpu, cuda, cuda:N)"),
            },
        })
    }
}

/// Where a run goes, with the reason when `auto` chose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selected {
    Cpu { reason: Option<String> },
    Cuda { ordinal: usize, reason: Option<String> },
}

/// A GPU as the driver describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Card {
    pub ordinal: usize,
    pub name: String,
    pub cc: (i32, i32),
    /// Its memory in bytes, as the driver reports it (`cuDeviceTotalMem`; no context needed).
    pub memory: Option<u64>,
}

/// Resolves `device` for a run at precision `p`: `cpu` as is, `cuda`/`cuda:N` or an error
/// saying why not, `auto` the first usable GPU or the CPU with the reason.
pub fn select(device: &str, p: Precision) -> Result<Selected> {
    select_as(device, p, "or run on the CPU (`--set device=cpu`, or `--set device=auto`)")
}

/// [`select`] for a command that takes the CPU its own way: `or_cpu` ends the hint given when
/// the machine has no NVIDIA driver or GPU (`or run on the CPU (...)`).
pub fn select_as(device: &str, p: Precision, or_cpu: &str) -> Result<Selected> {
    match Choice::parse(device)? {
        Choice::Cpu => Ok(Selected::Cpu { reason: None }),
        Choice::Cuda(n) => {
            // `cuda` takes the card `auto` would (its libraries and kernels checked on the way);
            // `cuda:N` that one
            let card = n.map_or_else(|| usable_card(p), |i| find_card(Some(i))).map_err(|why| {
                // the way to a GPU only where there is none: a wrong index or a card too old
                // says its own fix, and the user has a driver and a GPU
                match driver_count() {
                    Ok(count) if count > 0 => anyhow::anyhow!("{why}"),
                    _ => anyhow::anyhow!("{why}; hint: device `{device}` needs an NVIDIA GPU and its driver, {or_cpu}"),
                }
            })?;
            check_card(&card, p)?;
            if n.is_some() {
                check_libraries().and_then(|()| compiles_for(&card)).map_err(anyhow::Error::msg)?;
            }
            Ok(Selected::Cuda { ordinal: card.ordinal, reason: None })
        }
        Choice::Auto => match usable_card(p) {
            Ok(card) => {
                check_card(&card, p)?;
                let reason = format!("auto: cuda:{} ({}, compute capability {}.{})", card.ordinal, card.name, card.cc.0, card.cc.1);
                Ok(Selected::Cuda { ordinal: card.ordinal, reason: Some(reason) })
            }
            Err(why) => Ok(Selected::Cpu { reason: Some(format!("auto: {why}, using the CPU")) }),
        },
    }
}

/// Whether the NVRTC found can compile for `card` (CUDA 13's has no Volta): said before the
/// run starts, so that `auto` can fall back to the CPU, rather than at the first kernel.
fn compiles_for(card: &Card) -> Result<(), String> {
    let version = super::compile::nvrtc()?;
    super::compile::unsupported_arch(version, card.cc).map_or(Ok(()), |why| Err(format!("cuda:{}: {why}", card.ordinal)))
}

/// Whether the NVIDIA driver library can be loaded (nothing is called through it).
pub fn driver_present() -> bool {
    // SAFETY: only tries to open libcuda with the system loader; nothing is called through it.
    unsafe { sys::is_culib_present() }
}

/// How many GPUs the driver shows this process (after `CUDA_VISIBLE_DEVICES`), or why none.
pub fn gpu_count() -> Result<usize, String> {
    match driver_count()? {
        0 => Err("no CUDA GPU found (the NVIDIA driver sees none)".into()),
        n => Ok(n),
    }
}

/// Loads and initialises the driver and counts the GPUs it shows; or why it cannot.
fn driver_count() -> Result<usize, String> {
    // SAFETY: only tries to open libcuda with the system loader; nothing is called through it.
    if !unsafe { sys::is_culib_present() } {
        return Err("no NVIDIA driver found (libcuda.so.1 not loadable)".into());
    }
    result::init().map_err(|e| match e.0 {
        sys::CUresult::CUDA_ERROR_STUB_LIBRARY => {
            "the libcuda.so loaded is the CUDA toolkit's stub (its lib64/stubs folder), not the NVIDIA driver's: remove that folder from LD_LIBRARY_PATH".to_string()
        }
        _ => format!("the NVIDIA driver did not initialise ({e:?})"),
    })?;
    result::device::get_count().map(|n| n as usize).map_err(|e| format!("the NVIDIA driver cannot count GPUs ({e:?})"))
}

/// GPU `n`, or the first with compute capability at least [`MIN_CC`]; or why there is none.
pub fn find_card(n: Option<usize>) -> Result<Card, String> {
    match n {
        Some(i) => {
            let count = driver_count()?;
            if i >= count {
                return Err(out_of_range(i, count, std::env::var("CUDA_VISIBLE_DEVICES").ok().as_deref()));
            }
            card(i)
        }
        None => Ok(capable(&all_cards()?)?[0].clone()),
    }
}

/// Every GPU the driver shows this process, or why there is none.
fn all_cards() -> Result<Vec<Card>, String> {
    match driver_count()? {
        0 => Err("no CUDA GPU found (the NVIDIA driver sees none)".into()),
        count => (0..count).map(card).collect(),
    }
}

/// The cards of compute capability [`MIN_CC`] or newer among `cards` (at least one), in order;
/// or why there is none (the first card is too old).
fn capable(cards: &[Card]) -> Result<Vec<&Card>, String> {
    let ok: Vec<&Card> = cards.iter().filter(|c| c.cc >= MIN_CC).collect();
    if ok.is_empty() {
        return Err(too_old(&cards[0]));
    }
    Ok(ok)
}

/// GPU `i` (the driver initialised) as the driver describes it.
fn card(i: usize) -> Result<Card, String> {
    let dev = result::device::get(i as i32).map_err(|e| format!("cuda:{i}: {e:?}"))?;
    let name = result::device::get_name(dev).unwrap_or_else(|_| "unnamed GPU".into());
    let attr = |a| {
        // SAFETY: `dev` is a device handle the driver just returned; the attribute is a plain
        // integer query.
        unsafe { result::device::get_attribute(dev, a) }.map_err(|e| format!("cuda:{i}: {e:?}"))
    };
    let major = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
    let minor = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
    // SAFETY: `dev` is a device handle the driver just returned; the call only reads a size.
    let memory = unsafe { result::device::total_mem(dev) }.ok().map(|b| b as u64);
    Ok(Card { ordinal: i, name, cc: (major, minor), memory })
}

/// The GPU `auto` and `cuda` take: the first of compute capability [`MIN_CC`] or newer that
/// the NVRTC found compiles for (CUDA 13's has no Volta, so a V100 at cuda:0 leaves an A100 at
/// cuda:1) and that has precision `p` (else the first the kernels compile for, which
/// [`check_card`] then refuses, saying why); or why there is none (the first such card's
/// reason).
fn usable_card(p: Precision) -> Result<Card, String> {
    let cards = all_cards()?;
    let capable = capable(&cards)?;
    check_libraries()?;
    let mut why = None;
    let compiles: Vec<&Card> = capable.into_iter().filter(|c| compiles_for(c).map_err(|e| why.get_or_insert(e)).is_ok()).collect();
    let has_p = compiles.iter().position(|c| lacks(c, p).is_none()).unwrap_or(0);
    compiles.get(has_p).map(|&c| c.clone()).ok_or_else(|| why.unwrap_or_else(|| "no usable CUDA GPU".into()))
}

/// Why GPU `i` does not exist among the `count` the driver shows this process, which
/// `CUDA_VISIBLE_DEVICES` (`visible`) may have chosen and renumbered from cuda:0.
fn out_of_range(i: usize, count: usize, visible: Option<&str>) -> String {
    let exist = match count {
        0 => return format!("device cuda:{i} does not exist: the NVIDIA driver sees no GPU"),
        1 => "only cuda:0 does".to_string(),
        n => format!("cuda:0 to cuda:{} do", n - 1),
    };
    let why = match visible {
        Some(v) => format!("CUDA_VISIBLE_DEVICES={v} leaves this process {count} GPU{}", if count == 1 { "" } else { "s" }),
        None => "CUDA_VISIBLE_DEVICES is not set: these are all the GPUs the NVIDIA driver sees".into(),
    };
    format!("device cuda:{i} does not exist: {exist} ({why})")
}

fn too_old(c: &Card) -> String {
    format!(
        "cuda:{} ({}) has compute capability {}.{}; gptrain's CUDA kernels need {}.{} or newer",
        c.ordinal, c.name, c.cc.0, c.cc.1, MIN_CC.0, MIN_CC.1
    )
}

/// Whether `card` can run at precision `p`.
pub fn check_card(card: &Card, p: Precision) -> Result<()> {
    if card.cc < MIN_CC {
        bail!("{}", too_old(card));
    }
    if let Some(why) = lacks(card, p) {
        bail!("{why}; use `--set dtype=float16`");
    }
    if p == Precision::Tf32 && card.cc < BF16_CC {
        bail!(
            "dtype tfloat32 needs compute capability 8.0 or newer, and cuda:{} ({}) has {}.{}; use `--set dtype=float32`",
            card.ordinal,
            card.name,
            card.cc.0,
            card.cc.1
        );
    }
    Ok(())
}

/// Why `card` cannot compute in `p` although gptrain's kernels run on it (bf16 came with
/// compute capability 8.0), or None: the rule `train` refuses a dtype by, which `gptrain check`
/// skips that dtype's rows by.
pub fn lacks(card: &Card, p: Precision) -> Option<String> {
    (p == Precision::Bf16 && card.cc < BF16_CC).then(|| {
        format!(
            "dtype bfloat16 needs compute capability {}.{} or newer, and cuda:{} ({}) has {}.{}",
            BF16_CC.0, BF16_CC.1, card.ordinal, card.name, card.cc.0, card.cc.1
        )
    })
}

/// The oldest driver gptrain runs on: CUDA 12.0 (its libraries are CUDA 12's or 13's).
pub const MIN_DRIVER: i32 = 12000;

/// Opens cuBLASLt and NVRTC (found by [`libs`], else by the system loader), or names the one
/// missing and where it was looked for; then checks that the ones cudarc uses are for a CUDA
/// this driver runs (a `.so.13` needs a CUDA 13 driver), and that the driver is CUDA 12 or newer.
pub fn check_libraries() -> Result<(), String> {
    let driver = libs::driver_version();
    if let Some(v) = driver.filter(|&v| v < MIN_DRIVER) {
        return Err(format!(
            "this NVIDIA driver supports CUDA {} at most, and gptrain needs CUDA {} or newer: update the driver (R525 or newer)",
            libs::cuda_version(v),
            libs::cuda_version(MIN_DRIVER)
        ));
    }
    let loaded = [
        (libs::CUBLASLT, cublaslt_present as fn() -> bool, cublaslt_version as fn() -> Result<(i32, String), String>),
        (libs::NVRTC, nvrtc_present, nvrtc_version),
    ];
    // every missing library named at once, not one per attempt
    let missing: Vec<String> = loaded.iter().filter_map(|&(lib, present, _)| libs::open(lib).err().filter(|_| !present())).collect();
    if !missing.is_empty() {
        return Err(missing.join("; and "));
    }
    for (lib, _, version) in loaded {
        let chosen = libs::open(lib);
        let (major, shown) = version()?;
        // where gptrain's own search failed, its message (a file too new, say) says more
        libs::verify(lib, major, &shown, driver).map_err(|e| chosen.err().unwrap_or(e))?;
    }
    Ok(())
}

/// The version of the cuBLASLt cudarc uses (loading it): (CUDA major, "major.minor.patch").
pub fn cublaslt_version() -> Result<(i32, String), String> {
    // SAFETY: the caller found the library present; the call takes no arguments and only
    // returns a number (CUBLASLT_VERSION: major * 10000 + minor * 100 + patch).
    let v = unsafe { cudarc::cublaslt::sys::cublasLtGetVersion() } as i32;
    Ok((v / 10000, format!("{}.{}.{}", v / 10000, v / 100 % 100, v % 100)))
}

/// The version of the NVRTC cudarc uses (loading it): (CUDA major, "major.minor").
fn nvrtc_version() -> Result<(i32, String), String> {
    super::compile::nvrtc().map(|(a, b)| (a, format!("{a}.{b}")))
}

fn cublaslt_present() -> bool {
    // SAFETY: only tries to open the library; nothing is called through it.
    unsafe { cudarc::cublaslt::sys::is_culib_present() }
}

pub(super) fn nvrtc_present() -> bool {
    // SAFETY: only tries to open the library; nothing is called through it.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse() {
        assert_eq!(Choice::parse("auto").unwrap(), Choice::Auto);
        assert_eq!(Choice::parse("cpu").unwrap(), Choice::Cpu);
        assert_eq!(Choice::parse("cuda").unwrap(), Choice::Cuda(None));
        assert_eq!(Choice::parse("cuda:3").unwrap(), Choice::Cuda(Some(3)));
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", "CUDA", "mps"] {
            let e = Choice::parse(bad).unwrap_err().to_string();
            assert_eq!(e, format!("unknown device `{bad}` (auto, cpu, cuda, cuda:N)"));
        }
    }

    #[test]
    fn card_errors_name_the_card_and_the_way_out() {
        let card = |cc| Card { ordinal: 1, name: "Tesla T4".into(), cc, memory: None };
        let e = check_card(&card((6, 1)), Precision::F32).unwrap_err().to_string();
        assert_eq!(e, "cuda:1 (Tesla T4) has compute capability 6.1; gptrain's CUDA kernels need 7.0 or newer");
        let e = check_card(&card((7, 5)), Precision::Bf16).unwrap_err().to_string();
        assert_eq!(e, "dtype bfloat16 needs compute capability 8.0 or newer, and cuda:1 (Tesla T4) has 7.5; use `--set dtype=float16`");
        check_card(&card((7, 5)), Precision::F16).unwrap();
        check_card(&card((8, 9)), Precision::Bf16).unwrap();
        // `check` skips by the same rule, without train's advice
        assert_eq!(
            lacks(&card((7, 5)), Precision::Bf16).unwrap(),
            "dtype bfloat16 needs compute capability 8.0 or newer, and cuda:1 (Tesla T4) has 7.5"
        );
        assert_eq!(lacks(&card((7, 5)), Precision::F16), None);
        assert_eq!(lacks(&card((8, 0)), Precision::Bf16), None);
        assert_eq!(
            out_of_range(4, 2, None),
            "device cuda:4 does not exist: cuda:0 to cuda:1 do (CUDA_VISIBLE_DEVICES is not set: these are all the GPUs the NVIDIA driver sees)"
        );
        assert_eq!(
            out_of_range(5, 1, Some("2")),
            "device cuda:5 does not exist: only cuda:0 does (CUDA_VISIBLE_DEVICES=2 leaves this process 1 GPU)"
        );
        assert_eq!(out_of_range(0, 0, None), "device cuda:0 does not exist: the NVIDIA driver sees no GPU");
    }

    #[test]
    fn without_a_driver_auto_is_the_cpu_and_cuda_an_error() {
        // SAFETY: only tries to open libcuda.
        if unsafe { sys::is_culib_present() } {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "without_a_driver_auto_is_the_cpu_and_cuda_an_error: skipped: this machine has an NVIDIA driver"
            );
            return;
        }
        let reason = "auto: no NVIDIA driver found (libcuda.so.1 not loadable), using the CPU".to_string();
        assert_eq!(select("auto", Precision::F32).unwrap(), Selected::Cpu { reason: Some(reason) });
        assert_eq!(select("cpu", Precision::Bf16).unwrap(), Selected::Cpu { reason: None });
        for d in ["cuda", "cuda:1"] {
            assert!(select(d, Precision::F32)
                .unwrap_err()
                .to_string()
                .starts_with("no NVIDIA driver found (libcuda.so.1 not loadable); hint:"));
        }
        // `gptrain check` takes the CPU as --device cpu
        let e = select_as("cuda", Precision::F32, "or check the CPU (`--device cpu`)").unwrap_err().to_string();
        assert!(e.ends_with("hint: device `cuda` needs an NVIDIA GPU and its driver, or check the CPU (`--device cpu`)"), "{e}");
    }
}
