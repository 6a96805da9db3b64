//! Peak throughput and memory of the devices gptrain knows, each figure with its source, and a
//! probe that measures this CPU's peak.

use crate::backend::cpu::simd::Isa;
use crate::backend::Precision;
use anyhow::{bail, Result};

/// Which document's vocabulary names a card's peaks, and which dtypes it runs on tensor cores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Class {
    /// This machine's CPU: every peak is the measured f32 FMA rate.
    Cpu,
    /// GeForce (Ampere, Ada, Blackwell): TF32 tensor runs at the FP32 non-tensor rate, FP16/BF16
    /// tensor with FP32 accumulate at half the FP16-accumulate rate.
    GeForce,
    /// Datacenter Ampere/Ada/Hopper (A100, H100, H200, L4): TF32 and BF16/FP16 tensor cores.
    Datacenter,
    /// Turing (T4): FP16 tensor cores, no TF32 and no BF16.
    Turing,
    /// Volta (V100): the first tensor cores, FP16 only: no TF32 and no BF16.
    Volta,
}

/// One device's peaks. TFLOP/s are dense (no structured sparsity).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Device {
    pub name: String,
    pub description: String,
    pub class: Class,
    pub fp32_tflops: f64,
    pub tf32_tflops: f64,
    /// fp16/bf16 tensor-core matmul with fp32 accumulation (GeForce cards run this at half
    /// their fp16-accumulate rate).
    pub half_tflops: f64,
    pub memory_bytes: u64,
    pub bandwidth_gbs: f64,
    /// The document the peaks, memory and bandwidth come from.
    pub source: String,
    /// GB/s each way between one card and the others in a multi-GPU machine (NVLink, else the
    /// card's PCIe link): what a ring all-reduce moves its data over. 0: unknown.
    pub link_gbs: f64,
    pub link_source: String,
}

impl Device {
    /// Peak FLOP/s for matmuls in `dtype`.
    pub fn peak_flops(&self, dtype: Precision) -> f64 {
        1e12 * match dtype {
            Precision::F32 => self.fp32_tflops,
            Precision::Tf32 => self.tf32_tflops,
            // the CPU computes fp16 in f32 (no fp16 products): its peak is the f32 one
            Precision::F16 if self.class == Class::Cpu => self.fp32_tflops,
            Precision::F16 | Precision::Bf16 => self.half_tflops,
        }
    }

    /// Where *this dtype's* peak comes from: the document and the line of it that gives the
    /// figure.
    pub fn peak_source(&self, dtype: Precision) -> String {
        use Class::*;
        let line = match (self.class, dtype) {
            (Cpu, Precision::Bf16) => return self.source.clone(),
            (Cpu, _) => return format!("{} (fp32, tf32 and fp16 products run as f32 on the CPU: the f32 peak)", self.source),
            (GeForce, Precision::F32) => "Peak FP32 TFLOPS (non-Tensor)",
            (GeForce, Precision::Tf32) => "Peak TF32 Tensor TFLOPS (the FP32 rate on GeForce)",
            (GeForce, Precision::F16) => "Peak FP16 Tensor TFLOPS with FP32 Accumulate",
            (GeForce, Precision::Bf16) => "Peak BF16 Tensor TFLOPS with FP32 Accumulate",
            (Datacenter, Precision::F32) => "FP32 (non-tensor)",
            (Datacenter, Precision::Tf32) => "TF32 Tensor Core",
            (Datacenter, Precision::F16) => "FP16 Tensor Core",
            (Datacenter, Precision::Bf16) => "BF16 Tensor Core",
            (Turing, Precision::F32) => "Single-Precision (FP32)",
            (Turing, Precision::Tf32) => "no TF32 on Turing: tf32 matmuls run as FP32, Single-Precision (FP32)",
            (Turing, Precision::F16) => "Mixed-Precision (FP16/FP32) Tensor",
            (Turing, Precision::Bf16) => "no BF16 on Turing: the Mixed-Precision (FP16/FP32) Tensor figure, which bf16 does not reach",
            (Volta, Precision::F32) => "Single-Precision Performance",
            (Volta, Precision::Tf32) => "no TF32 on Volta: tf32 matmuls run as FP32, Single-Precision Performance",
            (Volta, Precision::F16) => "Tensor Performance (FP16 products, FP32 accumulate)",
            (Volta, Precision::Bf16) => "no BF16 on Volta: the FP16 Tensor Performance figure, which bf16 does not reach",
        };
        format!("{}: {line}", self.source)
    }

    /// Whether the card has bf16 tensor cores (compute capability 8.0 and later), which is
    /// when nanoGPT picks bf16 (`torch.cuda.is_bf16_supported()`).
    pub fn has_bf16(&self) -> bool {
        matches!(self.class, Class::GeForce | Class::Datacenter)
    }

    pub fn is_gpu(&self) -> bool {
        self.class != Class::Cpu
    }
}

const GIB: u64 = 1 << 30;
const GB: u64 = 1_000_000_000;
/// The memory the driver reports (nvidia-smi's total, `cuMemGetInfo`'s), where it has been seen
/// on a card: what a run there actually has. An HBM card's "80GB" is binary gigabytes less what
/// the driver keeps (H100 SXM: 81559 MiB, 79.6 GiB; H200: 143771 MiB, 140.4 GiB; both read by
/// nvidia-smi on the machines lent to this project, driver 580), not 80e9 bytes (74.5 GiB), so the
/// datasheet's figure in decimal bytes would call fitting runs too big. Cards not yet seen keep
/// the datasheet's decimal figure: it errs low.
const MIB: u64 = 1 << 20;

/// One row of the device table.
pub struct Card {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub description: &'static str,
    pub class: Class,
    /// TFLOP/s: fp32, tf32, fp16/bf16 with fp32 accumulate (dense)
    pub fp32: f64,
    pub tf32: f64,
    pub half: f64,
    pub memory: u64,
    /// memory bandwidth, GB/s
    pub bandwidth: f64,
    pub source: &'static str,
    /// interconnect, GB/s each way, and where that comes from
    pub link: f64,
    pub link_source: &'static str,
}

const ADA: &str = "NVIDIA Ada Lovelace GPU architecture whitepaper v2.1, appendix A (dense)";
const AMPERE: &str = "NVIDIA Ampere GA102 GPU architecture whitepaper v2.1, appendix A (dense)";
const A100: &str = "NVIDIA A100 Tensor Core GPU datasheet (dense)";
const H100: &str = "NVIDIA H100 Tensor Core GPU datasheet (dense: half the sparsity figures)";
const H200: &str = "NVIDIA H200 Tensor Core GPU datasheet (dense: half the sparsity figures)";
const V100: &str = "NVIDIA Tesla V100 GPU datasheet (Volta; no TF32, no BF16)";
/// NVLink 2.0 on the SXM2 boards: the datasheet's 300 GB/s is both directions.
const NVLINK2: &str = "NVIDIA V100 datasheet: NVLink 300 GB/s (both directions), 150 GB/s each way";
const V100_PCIE_LINK: &str = "NVIDIA V100 datasheet: PCIe 32 GB/s (both directions), 15.8 GB/s each way (Gen3 x16); no NVLink";
const L4: &str = "NVIDIA L4 Tensor Core GPU datasheet (dense: half the sparsity figures)";

// PCIe: 8 GT/s (Gen3), 16 (Gen4), 32 (Gen5) per lane with 128b/130b encoding, each way (PCI-SIG
// base specifications). GeForce cards have no peer-to-peer over PCIe, so NCCL stages through
// host memory and reaches less than these.
const PCIE4_X16: &str = "PCIe 4.0 x16: 16 GT/s x 16 lanes, 128b/130b = 31.5 GB/s each way (PCI-SIG); no NVLink";
const PCIE4_X8: &str = "PCIe 4.0 x8 (the 4060 Ti's link): 16 GT/s x 8 lanes, 128b/130b = 15.8 GB/s each way (PCI-SIG)";
const PCIE5_X16: &str = "PCIe 5.0 x16: 32 GT/s x 16 lanes, 128b/130b = 63 GB/s each way (PCI-SIG); no NVLink";
const NVLINK3: &str = "NVIDIA A100 datasheet: NVLink 600 GB/s per GPU (both directions), 300 GB/s each way";
const NVLINK4: &str = "NVIDIA H100/H200 datasheets: NVLink 900 GB/s per GPU (both directions), 450 GB/s each way";

pub const TABLE: &[Card] = &[
    geforce("rtx-3060-12gb", &["3060", "rtx3060"], "GeForce RTX 3060 12GB", 12.7, 25.6, 12 * GIB, 360.0, AMPERE, 31.5, PCIE4_X16),
    geforce("rtx-3090", &["3090", "rtx3090"], "GeForce RTX 3090", 35.6, 71.0, 24 * GIB, 936.0, AMPERE, 31.5, PCIE4_X16),
    geforce(
        "rtx-4060-ti-16gb",
        &["4060 ti", "4060ti", "rtx4060ti"],
        "GeForce RTX 4060 Ti 16GB",
        22.1,
        44.1,
        16 * GIB,
        288.0,
        ADA,
        15.8,
        PCIE4_X8,
    ),
    geforce("rtx-4070", &["4070", "rtx4070"], "GeForce RTX 4070", 29.1, 58.3, 12 * GIB, 504.0, ADA, 31.5, PCIE4_X16),
    geforce("rtx-4070-ti", &["4070 ti", "4070ti", "rtx4070ti"], "GeForce RTX 4070 Ti", 40.1, 80.2, 12 * GIB, 504.0, ADA, 31.5, PCIE4_X16),
    geforce("rtx-4080", &["4080", "rtx4080"], "GeForce RTX 4080", 48.7, 97.5, 16 * GIB, 717.0, ADA, 31.5, PCIE4_X16),
    geforce("rtx-4090", &["4090", "rtx4090"], "GeForce RTX 4090", 82.6, 165.2, 24 * GIB, 1008.0, ADA, 31.5, PCIE4_X16),
    geforce(
        "rtx-5090",
        &["5090", "rtx5090"],
        "GeForce RTX 5090",
        104.8,
        209.5,
        32 * GIB,
        1792.0,
        "NVIDIA RTX Blackwell GPU architecture whitepaper v1.0, appendix A (dense)",
        63.0,
        PCIE5_X16,
    ),
    Card {
        name: "a100-40gb",
        aliases: &["a100", "a100 40gb", "a100-sxm4-40gb"],
        description: "A100 SXM4 40GB",
        class: Class::Datacenter,
        fp32: 19.5,
        tf32: 156.0,
        half: 312.0,
        memory: 40 * GB,
        bandwidth: 1555.0,
        source: A100,
        link: 300.0,
        link_source: NVLINK3,
    },
    Card {
        name: "a100-80gb",
        aliases: &["a100 80gb", "a100-sxm4-80gb"],
        description: "A100 SXM4 80GB",
        class: Class::Datacenter,
        fp32: 19.5,
        tf32: 156.0,
        half: 312.0,
        memory: 80 * GB,
        bandwidth: 2039.0,
        source: A100,
        link: 300.0,
        link_source: NVLINK3,
    },
    Card {
        name: "h100-sxm",
        aliases: &["h100", "h100 sxm", "h100-sxm5"],
        description: "H100 SXM5 80GB",
        class: Class::Datacenter,
        fp32: 67.0,
        tf32: 494.7,
        half: 989.4,
        memory: 81559 * MIB, // seen: see MIB
        bandwidth: 3350.0,
        source: H100,
        link: 450.0,
        link_source: NVLINK4,
    },
    Card {
        name: "h100-pcie",
        aliases: &["h100 pcie"],
        description: "H100 PCIe 80GB",
        class: Class::Datacenter,
        fp32: 51.2,
        tf32: 378.0,
        half: 756.0,
        memory: 80 * GB,
        bandwidth: 2000.0,
        source: H100,
        link: 63.0,
        link_source:
            "NVIDIA H100 datasheet: PCIe Gen5 128 GB/s (both directions), 63 GB/s each way; its optional NVLink bridge joins pairs only",
    },
    Card {
        name: "h200",
        aliases: &["h200 sxm", "h200-sxm"],
        description: "H200 SXM 141GB",
        class: Class::Datacenter,
        fp32: 67.0,
        tf32: 494.7,
        half: 989.4,
        memory: 143771 * MIB, // seen: see MIB
        bandwidth: 4800.0,
        source: H200,
        link: 450.0,
        link_source: NVLINK4,
    },
    Card {
        name: "l4",
        aliases: &["nvidia l4"],
        description: "L4 24GB",
        class: Class::Datacenter,
        fp32: 30.3,
        tf32: 60.0,
        half: 121.0,
        memory: 24 * GB,
        bandwidth: 300.0,
        source: L4,
        link: 31.5,
        link_source: "NVIDIA L4 datasheet: PCIe Gen4 x16 64 GB/s (both directions), 31.5 GB/s each way; no NVLink",
    },
    Card {
        name: "v100-sxm2-32gb",
        aliases: &["v100", "v100-32gb", "v100 32gb", "v100-sxm2", "v100-sxm", "tesla v100", "tesla v100-sxm2-32gb"],
        description: "Tesla V100 SXM2 32GB (no TF32, no BF16)",
        class: Class::Volta,
        fp32: 15.7,
        tf32: 15.7,
        half: 125.0,
        memory: 32 * GB,
        bandwidth: 900.0,
        source: V100,
        link: 150.0,
        link_source: NVLINK2,
    },
    Card {
        name: "v100-sxm2-16gb",
        aliases: &["v100-16gb", "v100 16gb", "tesla v100-sxm2-16gb"],
        description: "Tesla V100 SXM2 16GB (no TF32, no BF16)",
        class: Class::Volta,
        fp32: 15.7,
        tf32: 15.7,
        half: 125.0,
        memory: 16 * GB,
        bandwidth: 900.0,
        source: V100,
        link: 150.0,
        link_source: NVLINK2,
    },
    Card {
        name: "v100-pcie-32gb",
        aliases: &["v100 pcie", "v100-pcie", "tesla v100-pcie-32gb"],
        description: "Tesla V100 PCIe 32GB (no TF32, no BF16)",
        class: Class::Volta,
        fp32: 14.0,
        tf32: 14.0,
        half: 112.0,
        memory: 32 * GB,
        bandwidth: 900.0,
        source: V100,
        link: 15.8,
        link_source: V100_PCIE_LINK,
    },
    Card {
        name: "v100-pcie-16gb",
        aliases: &["tesla v100-pcie-16gb"],
        description: "Tesla V100 PCIe 16GB (no TF32, no BF16)",
        class: Class::Volta,
        fp32: 14.0,
        tf32: 14.0,
        half: 112.0,
        memory: 16 * GB,
        bandwidth: 900.0,
        source: V100,
        link: 15.8,
        link_source: V100_PCIE_LINK,
    },
    Card {
        name: "t4",
        aliases: &["tesla t4", "nvidia t4"],
        description: "Tesla T4 16GB (no TF32, no BF16)",
        class: Class::Turing,
        fp32: 8.1,
        tf32: 8.1,
        half: 65.0,
        memory: 16 * GB,
        bandwidth: 320.0,
        source: "NVIDIA T4 Tensor Core GPU datasheet",
        link: 15.8,
        link_source: "NVIDIA T4 datasheet: PCIe Gen3 x16, 32 GB/s interconnect (both directions), 15.8 GB/s each way; no NVLink",
    },
];

/// A GeForce row: TF32 tensor at the FP32 rate (the whitepapers' dense figures).
#[allow(clippy::too_many_arguments)]
const fn geforce(
    name: &'static str,
    aliases: &'static [&'static str],
    description: &'static str,
    fp32: f64,
    half: f64,
    memory: u64,
    bandwidth: f64,
    source: &'static str,
    link: f64,
    link_source: &'static str,
) -> Card {
    Card { name, aliases, description, class: Class::GeForce, fp32, tf32: fp32, half, memory, bandwidth, source, link, link_source }
}

fn normalise(s: &str) -> String {
    s.to_ascii_lowercase().replace(['_', ' '], "-").replace("nvidia-", "").replace("geforce-", "")
}

/// Looks a device up by name or alias, forgivingly (`"RTX 4070"`, `4070`, `rtx-4070`).
/// `cpu` is this machine (see [`cpu`]). An unknown name is an error listing the known ones.
pub fn lookup(name: &str) -> Result<Device> {
    let n = normalise(name);
    if n == "cpu" || n == "this-cpu" {
        return Ok(cpu());
    }
    for c in TABLE {
        if normalise(c.name) == n
            || c.aliases.iter().any(|a| normalise(a) == n)
            || n.replace("rtx-", "") == normalise(c.name).replace("rtx-", "")
        {
            return Ok(Device {
                name: c.name.into(),
                description: c.description.into(),
                class: c.class,
                fp32_tflops: c.fp32,
                tf32_tflops: c.tf32,
                half_tflops: c.half,
                memory_bytes: c.memory,
                bandwidth_gbs: c.bandwidth,
                source: c.source.into(),
                link_gbs: c.link,
                link_source: c.link_source.into(),
            });
        }
    }
    bail!(
        "unknown device `{name}`; known: cpu, {} (hint: `--peak-tflops X` supplies a peak for any other device)",
        TABLE.iter().map(|r| r.name).collect::<Vec<_>>().join(", ")
    )
}

/// Every device name, for `--list-devices`.
pub fn names() -> Vec<&'static str> {
    std::iter::once("cpu").chain(TABLE.iter().map(|r| r.name)).collect()
}

// ---------------------------------------------------------------------------------------------
// This CPU

/// This machine's memory, bytes, from /proc/meminfo (or a GPU's, from its driver, with no swap).
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct MemInfo {
    pub total: u64,
    pub available: u64,
    pub swap_free: u64,
}

impl MemInfo {
    /// None where /proc/meminfo is missing or unreadable (not Linux).
    pub fn read() -> Option<MemInfo> {
        let s = std::fs::read_to_string("/proc/meminfo").ok()?;
        let field = |name: &str| -> Option<u64> {
            let kb: u64 = s.lines().find(|l| l.starts_with(name))?.split_whitespace().nth(1)?.parse().ok()?;
            Some(kb * 1024)
        };
        Some(MemInfo { total: field("MemTotal:")?, available: field("MemAvailable:")?, swap_free: field("SwapFree:").unwrap_or(0) })
    }
}

/// This CPU with the current rayon pool, its peak measured by [`probe_cpu_peak`] (~0.1 s) on
/// every call. A busy machine only ever makes the probe read low, so the best value seen on
/// this CPU model and thread count is kept in `$XDG_CACHE_HOME/gptrain` (or `~/.cache/gptrain`)
/// and used when larger: a probe taken in a slow minute does not inflate the MFU of later runs.
pub fn cpu() -> Device {
    let threads = rayon::current_num_threads();
    let peak = peak_with_cache(cache_path(threads).as_deref(), probe_cpu_peak);
    // bf16/fp16: the bf16 instructions the products use (fp16, and CPUs without them, compute
    // in f32: the f32 peak)
    let bf16 = crate::backend::cpu::matmul_bf16::peak::instructions().map(|name| {
        let probe = || crate::backend::cpu::matmul_bf16::peak::probe_peak().unwrap_or(0.0);
        (peak_with_cache(bf16_cache_path(threads, name).as_deref(), probe), name)
    });
    let mem = MemInfo::read().map_or(0, |m| m.total);
    Device {
        name: "cpu".into(),
        description: format!("{} ({threads} threads)", cpu_model()),
        fp32_tflops: peak / 1e12,
        tf32_tflops: peak / 1e12,
        half_tflops: bf16.map_or(peak, |b| b.0) / 1e12,
        memory_bytes: mem,
        bandwidth_gbs: 0.0,
        class: Class::Cpu,
        link_gbs: 0.0,
        link_source: "one CPU: no interconnect".into(),
        source: format!(
            "measured: {:.1} GFLOP/s f32 FMA peak on {threads} threads with {}{}{} (gptrain's probe, best seen)",
            peak / 1e9,
            Isa::get().name(),
            if Isa::is_capped() { ", held there by GPTRAIN_ISA" } else { "" },
            bf16.map_or(String::new(), |(f, name)| format!("; bf16 {:.1} GFLOP/s with {name}", f / 1e9))
        ),
    }
}

pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// Where the best bf16 peak seen with instructions `name` on this CPU and thread count is kept.
fn bf16_cache_path(threads: usize, name: &str) -> Option<std::path::PathBuf> {
    let f32_path = cache_path(threads)?;
    let tier: String = name.chars().filter(|c| c.is_ascii_alphanumeric()).collect::<String>().to_ascii_lowercase();
    let file = f32_path.file_name()?.to_str()?.replace("cpu-peak-v3-", &format!("cpu-peak-bf16-{tier}-v1-"));
    Some(f32_path.with_file_name(file))
}

fn cache_path(threads: usize) -> Option<std::path::PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))?;
    let key: String = cpu_model().chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    // a run held to AVX2 keeps its own best (its peak is half the AVX-512 one)
    let isa = if Isa::is_capped() { format!("-{}", Isa::get().name().to_ascii_lowercase()) } else { String::new() };
    Some(base.join("gptrain").join(format!("cpu-peak-v3-{key}-{threads}t{isa}.json")))
}

/// `probe()`, or the value cached at `path` when that is larger; the result is written back
/// (best effort: an unwritable or absent cache is no error, just the probe).
fn peak_with_cache(path: Option<&std::path::Path>, probe: impl FnOnce() -> f64) -> f64 {
    let cached = path
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v["flops"].as_f64())
        .filter(|&v| v > 0.0 && v.is_finite());
    let peak = probe().max(cached.unwrap_or(0.0));
    if let Some(p) = path {
        let _ = std::fs::create_dir_all(p.parent().unwrap_or(p));
        let json = serde_json::json!({ "flops": peak, "cpu": cpu_model(), "threads": rayon::current_num_threads() });
        // written aside and renamed, so a run reading it meanwhile never sees half a file
        let tmp = p.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, json.to_string()).and_then(|()| std::fs::rename(&tmp, p)).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    peak
}

/// Measures the f32 FMA peak: every pool thread runs independent FMA chains at once; one
/// untimed round (wakes the pool's threads and the cores' wide-vector clocks), then the best
/// of 5 rounds of ~20 ms (long enough that a brief turbo burst does not set the peak).
pub fn probe_cpu_peak() -> f64 {
    best_rate(|i| fma_chains(10_000_000, i as f32))
}

/// A probe's FLOP/s: `per_thread(i)` (returning the FLOPs it did) on every pool thread at once,
/// one untimed round, then the best of 5 timed ones.
pub fn best_rate(per_thread: impl Fn(usize) -> f64 + Sync) -> f64 {
    use rayon::prelude::*;
    let threads = rayon::current_num_threads();
    let round = || (0..threads).into_par_iter().map(&per_thread).sum::<f64>();
    round();
    let mut best = 0.0f64;
    for _ in 0..5 {
        let t0 = std::time::Instant::now();
        let flops = round();
        best = best.max(flops / t0.elapsed().as_secs_f64());
    }
    best
}

/// Runs `iters` rounds of independent FMA chains; returns the FLOPs done.
fn fma_chains(iters: u64, seed: f32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        // the vectors the kernels use (GPTRAIN_ISA=avx2 lowers both)
        match Isa::get() {
            // SAFETY: Isa::get says Avx512 only where the CPU has AVX-512F (and more).
            Isa::Avx512 => return unsafe { fma_chains_avx512(iters, seed) },
            // SAFETY: Isa::get says Avx2 only where the CPU has AVX2 and FMA.
            Isa::Avx2 => return unsafe { fma_chains_avx2(iters, seed) },
            Isa::Baseline => {}
        }
    }
    fma_chains_portable(iters, seed)
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_chains_avx2(iters: u64, seed: f32) -> f64 {
    use std::arch::x86_64::*;
    // 10 independent accumulators hide the FMA latency (4-5 cycles x 2 ports)
    let a = _mm256_set1_ps(0.999_999);
    let b = _mm256_set1_ps(1e-7);
    let mut acc = [_mm256_set1_ps(seed); 10];
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm256_fmadd_ps(*x, a, b);
        }
    }
    let mut sum = _mm256_setzero_ps();
    for x in acc {
        sum = _mm256_add_ps(sum, x);
    }
    let mut out = [0.0f32; 8];
    _mm256_storeu_ps(out.as_mut_ptr(), sum);
    std::hint::black_box(out);
    (iters * 10 * 8 * 2) as f64
}

/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_chains_avx512(iters: u64, seed: f32) -> f64 {
    use std::arch::x86_64::*;
    let a = _mm512_set1_ps(0.999_999);
    let b = _mm512_set1_ps(1e-7);
    let mut acc = [_mm512_set1_ps(seed); 10];
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm512_fmadd_ps(*x, a, b);
        }
    }
    let mut sum = _mm512_setzero_ps();
    for x in acc {
        sum = _mm512_add_ps(sum, x);
    }
    std::hint::black_box(_mm512_reduce_add_ps(sum));
    (iters * 10 * 16 * 2) as f64
}

fn fma_chains_portable(iters: u64, seed: f32) -> f64 {
    let mut acc = [seed; 32];
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = *x * 0.999_999 + 1e-7;
        }
    }
    std::hint::black_box(acc);
    (iters * 32 * 2) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_forgivingly() {
        for n in ["rtx-4070", "RTX 4070", "4070", "rtx4070", "NVIDIA GeForce RTX 4070"] {
            assert_eq!(lookup(n).unwrap().name, "rtx-4070", "{n}");
        }
        assert_eq!(lookup("A100 80GB").unwrap().name, "a100-80gb");
        assert_eq!(lookup("h100").unwrap().name, "h100-sxm");
        assert_eq!(lookup("RTX 3060 12GB").unwrap().name, "rtx-3060-12gb");
        assert!(lookup("voodoo-2").unwrap_err().to_string().contains("--peak-tflops"));
    }

    #[test]
    fn geforce_half_precision_is_half_rate() {
        let d = lookup("rtx-4070").unwrap();
        assert!((d.peak_flops(Precision::F16) / 1e12 - 58.3).abs() < 0.1);
        assert_eq!(d.memory_bytes, 12 << 30);
    }

    #[test]
    fn every_card_has_a_sourced_link_and_its_dtypes() {
        for c in TABLE {
            assert!(c.link > 0.0 && c.link_source.contains("GB/s"), "{}", c.name);
            // a link figure is each way: at most half of what a datasheet gives for both
            assert!(c.link <= 450.0, "{}", c.name);
        }
        // the memory a run has on the cards seen: the driver's total, not the datasheet's in 10^9 bytes
        assert_eq!((lookup("h100").unwrap().memory_bytes, lookup("h200").unwrap().memory_bytes), (81559 << 20, 143771 << 20));
        let (a100, t4, rtx) = (lookup("a100").unwrap(), lookup("t4").unwrap(), lookup("rtx-4070").unwrap());
        assert!(a100.has_bf16() && rtx.has_bf16() && !t4.has_bf16());
        assert!(a100.link_source.contains("NVLink") && rtx.link_source.contains("PCIe"));
        // four dtypes, four different lines of the document
        let lines: std::collections::BTreeSet<String> =
            [Precision::F32, Precision::Tf32, Precision::F16, Precision::Bf16].map(|d| a100.peak_source(d)).into();
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn v100s_are_in_the_table_without_bf16() {
        for (n, want) in [
            ("v100", "v100-sxm2-32gb"),
            ("V100 32GB", "v100-sxm2-32gb"),
            ("Tesla V100-SXM2-32GB", "v100-sxm2-32gb"),
            ("v100-16gb", "v100-sxm2-16gb"),
            ("Tesla V100-PCIE-16GB", "v100-pcie-16gb"),
            ("v100 pcie", "v100-pcie-32gb"),
        ] {
            assert_eq!(lookup(n).unwrap().name, want, "{n}");
        }
        let (sxm, pcie) = (lookup("v100").unwrap(), lookup("v100-pcie-32gb").unwrap());
        assert_eq!((sxm.peak_flops(Precision::F16), sxm.peak_flops(Precision::F32)), (125e12, 15.7e12));
        assert_eq!((pcie.peak_flops(Precision::F16), pcie.peak_flops(Precision::F32)), (112e12, 14e12));
        assert_eq!((sxm.memory_bytes, sxm.bandwidth_gbs), (32 * GB, 900.0));
        assert!(!sxm.has_bf16() && sxm.peak_source(Precision::Bf16).contains("no BF16"));
        assert!(sxm.peak_source(Precision::F16).contains("V100 GPU datasheet"));
    }

    #[test]
    fn the_cached_peak_is_the_best_probe_seen() {
        let dir = std::env::temp_dir().join(format!("gptrain-peak-{}", std::process::id()));
        let path = dir.join("sub").join("peak.json");
        let p = Some(path.as_path());
        // no cache yet: the probe, written (the folder created)
        assert_eq!(peak_with_cache(p, || 2e11), 2e11);
        // a lower probe (a busy minute) keeps the cached value; a higher one replaces it
        assert_eq!(peak_with_cache(p, || 1.5e11), 2e11);
        assert_eq!(peak_with_cache(p, || 3e11), 3e11);
        assert_eq!(peak_with_cache(p, || 0.0), 3e11);
        // a corrupt cache is ignored and replaced
        std::fs::write(&path, "not json").unwrap();
        assert_eq!(peak_with_cache(p, || 1e11), 1e11);
        assert_eq!(peak_with_cache(p, || 0.0), 1e11);
        // no cache location: just the probe
        assert_eq!(peak_with_cache(None, || 4e11), 4e11);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cpu_probe_measures_something_plausible() {
        let p = probe_cpu_peak();
        assert!(p > 1e8 && p < 1e13, "{p:e}");
    }
}
