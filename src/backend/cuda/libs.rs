//! Finding the CUDA libraries gptrain loads at run time: cuBLASLt and NVRTC from a CUDA
//! toolkit or from NVIDIA's pip wheels (the driver, `libcuda.so.1`, comes with the driver and
//! is found by the system loader).
//!
//! cudarc opens each library by file name (`libnvrtc.so.13`, then `.so.12`, ...), which the
//! system loader resolves against `LD_LIBRARY_PATH` as it was when the process started. So
//! that the folders below need not be in that variable, gptrain opens the library it finds by
//! its full path first and keeps it open: the loader then answers cudarc's request by file
//! name with the library already loaded (it matches the library's `soname`).
//!
//! Search order: a folder given to [`prefer`] (the CUDA emulator's, in tests),
//! `$GPTRAIN_CUDA_LIB_DIR`, `$LD_LIBRARY_PATH`, `$CUDA_HOME/lib64`,
//! `$CUDA_PATH/lib64`, `/usr/local/cuda/lib64`, then `nvidia/*/lib` (the `cu13/lib` of the
//! CUDA 13 wheels included) under the site-packages of `$VIRTUAL_ENV` and of `python3`.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The variable that names a folder to search first.
pub const LIB_DIR_VAR: &str = "GPTRAIN_CUDA_LIB_DIR";

/// A library gptrain needs: what to call it in messages, its file names (newest first), and
/// the pip wheel that ships it.
#[derive(Clone, Copy, Debug)]
pub struct Lib {
    pub what: &'static str,
    pub files: &'static [&'static str],
    pub wheel: &'static str,
}

pub const NVRTC: Lib = Lib { what: "NVRTC", files: &["libnvrtc.so.13", "libnvrtc.so.12"], wheel: "nvidia-cuda-nvrtc-cu12" };
pub const CUBLASLT: Lib = Lib { what: "cuBLASLt", files: &["libcublasLt.so.13", "libcublasLt.so.12"], wheel: "nvidia-cublas-cu12" };

/// The folder [`prefer`] put first.
static PREFERRED: OnceLock<PathBuf> = OnceLock::new();

/// Makes this process take its CUDA libraries from `dir` before any other folder, the driver
/// (`libcuda.so.1`) included, which is opened here: cudarc's later request for the driver by
/// file name is then answered with it. For `tools/cuda-emu`, whose stand-ins for the driver,
/// cuBLASLt and NVRTC run the CUDA backend on the CPU; call it before anything touches CUDA.
/// An error if `dir` has no driver or another folder was preferred first.
pub fn prefer(dir: &Path) -> Result<(), String> {
    let driver = dir.join("libcuda.so.1");
    if PREFERRED.get().is_some_and(|d| d != dir) {
        return Err(format!(
            "CUDA libraries were already taken from {}",
            PREFERRED.get().map_or(String::new(), |d| d.display().to_string())
        ));
    }
    // SAFETY: as in `open`: the library's initialisers have no preconditions and the handle is
    // kept for the life of the process.
    let lib = unsafe { libloading::Library::new(&driver) }.map_err(|e| format!("{} could not be loaded: {e}", driver.display()))?;
    OPENED.lock().unwrap_or_else(|e| e.into_inner()).push((driver, lib));
    let _ = PREFERRED.set(dir.to_path_buf());
    Ok(())
}

/// The folders searched, in order (existing ones only, each once).
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = PREFERRED.get().into_iter().cloned().collect();
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(d) = var(LIB_DIR_VAR) {
        dirs.push(d.into());
    }
    if let Some(p) = var("LD_LIBRARY_PATH") {
        dirs.extend(std::env::split_paths(&p));
    }
    for k in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(d) = var(k) {
            dirs.push(Path::new(&d).join("lib64"));
        }
    }
    dirs.push("/usr/local/cuda/lib64".into());
    for sp in site_packages() {
        if let Ok(rd) = std::fs::read_dir(sp.join("nvidia")) {
            let mut found: Vec<PathBuf> = rd.flatten().map(|e| e.path().join("lib")).collect();
            found.sort(); // cu13 before cuda_nvrtc, cublas: any fixed order
            dirs.extend(found);
        }
    }
    let mut seen = Vec::new();
    dirs.retain(|d| {
        d.is_dir() && !seen.contains(d) && {
            seen.push(d.clone());
            true
        }
    });
    dirs
}

/// The site-packages folders of the active virtual environment and of `python3` (asked once).
fn site_packages() -> Vec<PathBuf> {
    static SP: OnceLock<Vec<PathBuf>> = OnceLock::new();
    SP.get_or_init(|| {
        let mut out = Vec::new();
        if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
            if let Ok(rd) = std::fs::read_dir(Path::new(&venv).join("lib")) {
                out.extend(rd.flatten().map(|e| e.path().join("site-packages")));
            }
        }
        let script = "import site,sys\nfor p in site.getsitepackages()+[site.getusersitepackages()]: print(p)";
        if let Ok(o) = std::process::Command::new("python3").args(["-c", script]).output() {
            out.extend(String::from_utf8_lossy(&o.stdout).lines().map(PathBuf::from));
        }
        out
    })
    .clone()
}

/// The libraries opened so far (kept open for the life of the process), by full path.
static OPENED: Mutex<Vec<(PathBuf, libloading::Library)>> = Mutex::new(Vec::new());

/// Opens `lib` from the first search folder that has one of its files, or says where it looked.
pub fn open(lib: Lib) -> Result<PathBuf, String> {
    let dirs = search_dirs();
    let mut opened = OPENED.lock().unwrap_or_else(|e| e.into_inner());
    for d in &dirs {
        for f in lib.files {
            let path = d.join(f);
            if let Some((p, _)) = opened.iter().find(|(p, _)| *p == path) {
                return Ok(p.clone());
            }
            if !path.is_file() {
                continue;
            }
            // SAFETY: loading a CUDA library runs its initialisers, which have no preconditions
            // on this process; the handle is kept for the life of the process, so nothing that
            // resolves symbols through it outlives it.
            match unsafe { libloading::Library::new(&path) } {
                Ok(l) => {
                    opened.push((path.clone(), l));
                    return Ok(path);
                }
                Err(e) => return Err(format!("{} could not be loaded: {e}", path.display())),
            }
        }
    }
    Err(not_found(lib, &dirs))
}

/// The one-line error for a library found nowhere.
pub fn not_found(lib: Lib, dirs: &[PathBuf]) -> String {
    let looked = if dirs.is_empty() {
        "no such folder exists".to_string()
    } else {
        dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
    };
    format!(
        "{} library not found ({}); looked in: {looked}; install the CUDA toolkit or `pip install {}`, or set {LIB_DIR_VAR} to its folder",
        lib.what,
        lib.files.join(" or "),
        lib.wheel
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_is_named_with_where_it_was_looked_for() {
        let e = not_found(NVRTC, &[PathBuf::from("/opt/x/lib")]);
        assert!(e.starts_with("NVRTC library not found (libnvrtc.so.13 or libnvrtc.so.12); looked in: /opt/x/lib;"), "{e}");
        assert!(e.contains("pip install nvidia-cuda-nvrtc-cu12") && e.contains(LIB_DIR_VAR), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn search_folders_exist_and_appear_once() {
        let d = search_dirs();
        assert!(d.iter().all(|p| p.is_dir()));
        let mut u = d.clone();
        u.dedup();
        assert_eq!(u.len(), d.len());
    }
}
