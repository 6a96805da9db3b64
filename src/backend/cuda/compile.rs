//! The kernels' CUDA C sources and their compilation: NVRTC turns each family's source (with
//! `common.cuh` in front), for one storage type at a time, into a CUBIN for the device's exact
//! compute capability when a run first launches one of its kernels, cached on
//! disk under `$XDG_CACHE_HOME/gptrain/kernels` (or `~/.cache/gptrain/kernels`) by a hash of
//! the source, the architecture and the NVRTC version. A cache entry carries its length and
//! CRC-32; one that does not check out is compiled again and rewritten, never loaded.

use super::libs;
use anyhow::{bail, Context, Result};
use cudarc::nvrtc::{result, sys};
use std::ffi::CString;
use std::path::{Path, PathBuf};

/// What every kernel file starts with: storage types, reductions, the dropout hash.
pub const COMMON: &str = include_str!("kernels/common.cuh");

/// One source per kernel family: (name, CUDA C).
pub const SOURCES: [(&str, &str); 8] = [
    ("encoder", include_str!("kernels/encoder.cu")),
    ("layernorm", include_str!("kernels/layernorm.cu")),
    ("attention", include_str!("kernels/attention.cu")),
    ("attention_tc", include_str!("kernels/attention_tc.cu")),
    ("pointwise", include_str!("kernels/pointwise.cu")),
    ("classifier", include_str!("kernels/classifier.cu")),
    ("adamw", include_str!("kernels/adamw.cu")),
    ("reduce", include_str!("kernels/reduce.cu")),
];

/// The family (a name of [`SOURCES`]) that defines kernel `kernel`, by its name's prefix.
pub fn family(kernel: &str) -> Option<&'static str> {
    const BY_PREFIX: [(&str, &str); 14] = [
        ("encoder_", "encoder"),
        ("layernorm_", "layernorm"),
        ("attention_tc_", "attention_tc"), // before "attention_": the first prefix that matches wins
        ("attention_", "attention"),
        ("gelu_", "pointwise"),
        ("residual_", "pointwise"),
        ("dropout_", "pointwise"),
        ("bias_add_", "pointwise"),
        ("fused_classifier_", "classifier"),
        ("adamw_", "adamw"),
        ("bias_backward_", "reduce"),
        ("sum_squares_partial_", "reduce"),
        ("column_partials_", "reduce"),
        ("add_", "reduce"), // add_partials, add_mean_loss
    ];
    BY_PREFIX.iter().find(|(p, _)| kernel.starts_with(p)).map(|&(_, f)| f)
}

/// The storage type a kernel is typed for, by its name's suffix (None: an untyped kernel, in
/// every variant of its family).
pub fn storage(kernel: &str) -> Option<&'static str> {
    ["f32", "bf16", "f16"].into_iter().find(|t| kernel.strip_suffix(t).is_some_and(|k| k.ends_with('_')))
}

/// The part of a family a run compiles at once: one storage type's kernels, and of the
/// attention kernels written for fixed head sizes (attention.cu's tiled ones, attention_tc.cu)
/// those for one head size (0: none).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Variant {
    pub storage: &'static str,
    pub head: u32,
}

impl Variant {
    /// The variant that holds kernel `kernel` (an untyped kernel is in every one: f32's). The
    /// head size is the number of a name's word `tiled<HS>` or `hs<HS>`.
    pub fn of(kernel: &str) -> Variant {
        let head = kernel.split('_').find_map(|w| w.strip_prefix("tiled").or_else(|| w.strip_prefix("hs"))?.parse().ok()).unwrap_or(0);
        Variant { storage: storage(kernel).unwrap_or("f32"), head }
    }

    /// The defines that select it.
    fn defines(&self) -> String {
        format!("#define ONLY_{}\n#define HEAD_ONLY {}\n", self.storage.to_uppercase(), self.head)
    }
}

/// Compile options besides the architecture: no fused multiply-adds the source does not
/// write (the CPU reference never contracts either), C++17.
const OPTIONS: [&str; 2] = ["--fmad=false", "--std=c++17"];

/// Opens NVRTC (see [`libs`]) and returns its version, or why it cannot be used.
pub fn nvrtc() -> Result<(i32, i32), String> {
    if let Err(e) = libs::open(libs::NVRTC) {
        if !super::select::nvrtc_present() {
            return Err(e);
        }
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC is loadable (checked above); the call writes two ints we own.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }.result().map_err(|e| format!("nvrtcVersion failed: {e:?}"))?;
    Ok((major, minor))
}

/// The CUBIN of kernel family `name` (source `src`) for compute capability `cc`, variant `only`
/// of it (None: every kernel), from the cache in `cache` when it holds a sound one, else
/// compiled (and stored there); and whether it came from the cache.
pub fn cubin(name: &str, src: &str, cc: (i32, i32), only: Option<Variant>, cache: Option<&Path>) -> Result<(Vec<u8>, bool)> {
    let version = nvrtc().map_err(anyhow::Error::msg)?;
    if let Some(e) = unsupported_arch(version, cc) {
        bail!("{e}");
    }
    let key = {
        let mut h = crc32fast::Hasher::new();
        h.update(COMMON.as_bytes());
        h.update(src.as_bytes());
        let a = crc32fast::hash(format!("sm_{}{} nvrtc {}.{} {:?} {only:?}", cc.0, cc.1, version.0, version.1, OPTIONS).as_bytes());
        ((h.finalize() as u64) << 32) | a as u64
    };
    let part = only.map_or("all".to_string(), |v| if v.head > 0 { format!("{}-hs{}", v.storage, v.head) } else { v.storage.to_string() });
    let path = cache.map(|d| d.join(format!("{name}-{part}-sm_{}{}-{key:016x}.cubin", cc.0, cc.1)));
    if let Some(bin) = path.as_deref().and_then(read_entry) {
        return Ok((bin, true));
    }
    let bin = compile(name, src, cc, only)?;
    if let Some(p) = &path {
        let _ = write_entry(p, &bin); // a cache that cannot be written only costs time
    }
    Ok((bin, false))
}

/// Why NVRTC `version` cannot compile for compute capability `cc`, if it cannot: CUDA 13
/// dropped Volta (7.0, 7.2), which CUDA 12's NVRTC still compiles for.
pub fn unsupported_arch(version: (i32, i32), cc: (i32, i32)) -> Option<String> {
    (version.0 >= 13 && cc < (7, 5)).then(|| {
        format!(
            "NVRTC {}.{} cannot compile for compute capability {}.{} (CUDA 13 dropped it); use CUDA 12's: `pip install {}` and set {} to its lib folder",
            version.0,
            version.1,
            cc.0,
            cc.1,
            libs::NVRTC.wheel,
            libs::LIB_DIR_VAR
        )
    })
}

/// Compiles `COMMON + src` to a CUBIN for `sm_XY` (variant `only` of it, or all); a compile
/// error carries NVRTC's log.
pub fn compile(name: &str, src: &str, cc: (i32, i32), only: Option<Variant>) -> Result<Vec<u8>> {
    let define = only.map_or(String::new(), |v| v.defines());
    let code = CString::new(format!("{define}{COMMON}\n{src}")).context("a kernel source holds a NUL byte")?;
    let cname = CString::new(format!("{name}.cu")).expect("no NUL in a kernel name");
    let prog = result::create_program(&code, Some(&cname)).map_err(|e| anyhow::anyhow!("NVRTC: {e:?}"))?;
    let mut opts = vec![format!("--gpu-architecture=sm_{}{}", cc.0, cc.1)];
    opts.extend(OPTIONS.iter().map(|s| s.to_string()));
    // SAFETY: `prog` was just created and is destroyed once, at the end of this block; the
    // buffers NVRTC writes into are sized by its own size queries.
    unsafe {
        let compiled = result::compile_program(prog, &opts);
        let out = match compiled {
            Ok(()) => {
                let mut size = 0usize;
                sys::nvrtcGetCUBINSize(prog, &mut size).result().map_err(|e| anyhow::anyhow!("NVRTC: {e:?}"))?;
                let mut bin = vec![0u8; size];
                sys::nvrtcGetCUBIN(prog, bin.as_mut_ptr() as *mut _).result().map_err(|e| anyhow::anyhow!("NVRTC: {e:?}"))?;
                Ok(bin)
            }
            Err(e) => {
                let log = result::get_program_log(prog).unwrap_or_default();
                let log: Vec<u8> = log.iter().map(|&c| c as u8).take_while(|&c| c != 0).collect();
                Err(anyhow::anyhow!(
                    "NVRTC could not compile {name}.cu for sm_{}{} ({e:?}):\n{}",
                    cc.0,
                    cc.1,
                    String::from_utf8_lossy(&log)
                ))
            }
        };
        let _ = result::destroy_program(prog);
        out
    }
}

/// Where compiled kernels are cached.
pub fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
    Some(base.join("gptrain").join("kernels"))
}

const MAGIC: &[u8; 8] = b"gptcubin";

/// A cache entry's CUBIN, if the file is there and its length and CRC-32 check out.
fn read_entry(path: &Path) -> Option<Vec<u8>> {
    let data = std::fs::read(path).ok()?;
    if data.len() < 16 || &data[..8] != MAGIC {
        return None;
    }
    let len = u32::from_le_bytes(data[8..12].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(data[12..16].try_into().ok()?);
    let bin = &data[16..];
    (bin.len() == len && crc32fast::hash(bin) == crc).then(|| bin.to_vec())
}

/// Writes a cache entry (magic, length, CRC-32, CUBIN) by rename, so a reader never sees half.
fn write_entry(path: &Path, bin: &[u8]) -> Result<()> {
    let dir = path.parent().context("a cache path has a folder")?;
    std::fs::create_dir_all(dir)?;
    let mut data = Vec::with_capacity(bin.len() + 16);
    data.extend_from_slice(MAGIC);
    data.extend_from_slice(&(bin.len() as u32).to_le_bytes());
    data.extend_from_slice(&crc32fast::hash(bin).to_le_bytes());
    data.extend_from_slice(bin);
    let tmp = dir.join(format!(".tmp-{}-{}", std::process::id(), path.file_name().and_then(|s| s.to_str()).unwrap_or("cubin")));
    std::fs::write(&tmp, &data)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Removes from cache folder `dir` the temporary files of writes that never finished (a
/// process killed between [`write_entry`]'s write and its rename) once they are an hour old, so
/// that no live write is touched. Errors only cost disk space, so they are ignored.
pub fn tidy_cache(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for e in entries.flatten() {
        let stale = e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t < hour_ago);
        if stale && e.file_name().to_string_lossy().starts_with(".tmp-") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Checks a CUBIN's ELF header, so a CUBIN that is not one fails here with a clear message.
pub fn check_cubin(name: &str, bin: &[u8]) -> Result<()> {
    if bin.len() < 4 || &bin[..4] != b"\x7fELF" {
        bail!("NVRTC returned no CUBIN for {name}.cu");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cuda_13_nvrtc_is_refused_for_volta_with_the_way_out() {
        let e = unsupported_arch((13, 0), (7, 0)).unwrap();
        assert_eq!(
            e,
            "NVRTC 13.0 cannot compile for compute capability 7.0 (CUDA 13 dropped it); use CUDA 12's: `pip install nvidia-cuda-nvrtc-cu12` and set GPTRAIN_CUDA_LIB_DIR to its lib folder"
        );
        assert!(unsupported_arch((13, 0), (7, 2)).is_some());
        for (v, cc) in [((13, 0), (7, 5)), ((12, 8), (7, 0)), ((13, 1), (9, 0))] {
            assert_eq!(unsupported_arch(v, cc), None, "{v:?} {cc:?}");
        }
    }

    /// Every kernel family compiles for Volta (Turing with a CUDA 13 NVRTC, which has no
    /// Volta), Ampere, Ada and Hopper, when NVRTC is here (no GPU needed); otherwise each test
    /// says it was skipped and where it looked. One test per architecture, so the test harness
    /// compiles them on parallel threads (NVRTC is thread-safe across programs).
    fn every_kernel_compiles_for(cc: (i32, i32), test: &str) {
        use std::io::Write;
        let version = match nvrtc() {
            Ok(v) => v,
            Err(why) => {
                // to the stderr handle, which the test harness does not capture: never a silent pass
                let _ = writeln!(std::io::stderr(), "{test}: skipped: libnvrtc not found ({why})");
                return;
            }
        };
        // CUDA 13 dropped Volta: its NVRTC compiles for sm_75 and newer only
        let cc = if unsupported_arch(version, cc).is_some() { (7, 5) } else { cc };
        for (name, src) in SOURCES {
            let bin = compile(name, src, cc, None).unwrap_or_else(|e| panic!("{e}"));
            check_cubin(name, &bin).unwrap();
        }
        let _ = writeln!(
            std::io::stderr(),
            "compiled {} kernel files for sm_{}{} with NVRTC {}.{}",
            SOURCES.len(),
            cc.0,
            cc.1,
            version.0,
            version.1
        );
    }

    #[test]
    fn every_kernel_compiles_for_sm_70() {
        every_kernel_compiles_for((7, 0), "every_kernel_compiles_for_sm_70");
    }

    #[test]
    fn every_kernel_compiles_for_sm_80() {
        every_kernel_compiles_for((8, 0), "every_kernel_compiles_for_sm_80");
    }

    #[test]
    fn every_kernel_compiles_for_sm_89() {
        every_kernel_compiles_for((8, 9), "every_kernel_compiles_for_sm_89");
    }

    #[test]
    fn every_kernel_compiles_for_sm_90() {
        every_kernel_compiles_for((9, 0), "every_kernel_compiles_for_sm_90");
    }

    /// A shared array of a storage type (`T`, bf16_t, f16_t: 2-byte structs) is declared
    /// `__align__(16)`: kernels fill such arrays by `cp.async` copies of up to 16 bytes and read
    /// rows of 16 bytes (`ldmatrix`), and without it the compiler may place them on a 2-byte
    /// boundary (PTX `.align 2`), where a GPU faults.
    #[test]
    fn shared_arrays_of_16_bit_values_are_aligned() {
        let mut n = 0;
        for (name, src) in SOURCES {
            for line in src.lines().filter(|l| l.contains("__shared__")) {
                let sixteen = ["__shared__ T ", "bf16_t ", "f16_t "].iter().any(|t| line.replace("__align__(16) ", "").contains(t));
                if sixteen {
                    assert!(line.contains("__align__(16)"), "{name}.cu: a 16-bit shared array without __align__(16): {}", line.trim());
                    n += 1;
                }
            }
        }
        assert!(n >= 6, "found only {n} 16-bit shared arrays: has this test's pattern gone stale?");
    }

    #[test]
    fn unfinished_writes_are_tidied_away_once_an_hour_old() {
        let dir = std::env::temp_dir().join(format!("gptrain-cubin-tidy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        for name in [".tmp-1-old.cubin", ".tmp-2-new.cubin", "kept-old.cubin"] {
            let f = std::fs::File::create(dir.join(name)).unwrap();
            if name.contains("old") {
                f.set_modified(old).unwrap();
            }
        }
        tidy_cache(&dir);
        let mut left: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        left.sort();
        assert_eq!(left, [".tmp-2-new.cubin", "kept-old.cubin"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_cache_entry_is_never_trusted() {
        let dir = std::env::temp_dir().join(format!("gptrain-cubin-cache-{}", std::process::id()));
        let p = dir.join("x.cubin");
        write_entry(&p, b"\x7fELF some code").unwrap();
        assert_eq!(read_entry(&p).as_deref(), Some(&b"\x7fELF some code"[..]));
        let mut data = std::fs::read(&p).unwrap();
        *data.last_mut().unwrap() ^= 1;
        std::fs::write(&p, &data).unwrap();
        assert_eq!(read_entry(&p), None, "a flipped bit");
        std::fs::write(&p, &data[..20]).unwrap();
        assert_eq!(read_entry(&p), None, "a truncated file");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
