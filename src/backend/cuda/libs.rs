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
//! A library is only taken if the driver can run it: a `.so.13` needs a driver for CUDA 13
//! (R580 or newer), so on a CUDA 12.x driver only the `.so.12` files are candidates. And since
//! cudarc asks the system loader by name (`.so.13` before `.so.12`), which may find another
//! file than the one opened here, [`verify`] checks the library cudarc actually uses.
//!
//! Search order: a folder given to [`prefer`] (the CUDA emulator's, in tests),
//! `$GPTRAIN_CUDA_LIB_DIR`, `$LD_LIBRARY_PATH`, `$CUDA_HOME/lib64`,
//! `$CUDA_PATH/lib64`, `$CONDA_PREFIX/lib` (an active conda environment), `/usr/local/cuda/lib64`,
//! then `nvidia/*/lib` (the `cu13/lib` of the CUDA 13 wheels included) under the site-packages
//! of `$VIRTUAL_ENV` and of `python3`.

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
    dirs_from(&|k| std::env::var_os(k), &site_packages())
}

/// [`search_dirs`] for the environment `env` gives and the Python `site_packages` folders.
fn dirs_from(env: &dyn Fn(&str) -> Option<std::ffi::OsString>, site_packages: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = PREFERRED.get().into_iter().cloned().collect();
    let var = |k: &str| env(k).filter(|v| !v.is_empty());
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
    // an active conda environment: conda's CUDA packages (cuda-nvrtc, libcublas, nccl, as
    // PyTorch's conda install pulls them in) put their libraries in its lib/
    if let Some(d) = var("CONDA_PREFIX") {
        dirs.push(Path::new(&d).join("lib"));
    }
    dirs.push("/usr/local/cuda/lib64".into());
    for sp in site_packages {
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

/// The CUDA version of the NVIDIA driver (12040 for 12.4), or None when there is no driver.
/// (`cuDriverGetVersion` needs no `cuInit`.)
pub fn driver_version() -> Option<i32> {
    // SAFETY: only tries to open libcuda with the system loader; nothing is called through it.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return None;
    }
    let mut v = 0;
    // SAFETY: the driver library loads (checked above); the call writes one int we own.
    let r = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
    (r == cudarc::driver::sys::CUresult::CUDA_SUCCESS).then_some(v)
}

/// `12040` as "12.4".
pub fn cuda_version(v: i32) -> String {
    format!("{}.{}", v / 1000, v % 1000 / 10)
}

/// The CUDA major version a library file is for: 13 for `libnvrtc.so.13`.
fn file_major(file: &str) -> i32 {
    file.rsplit('.').next().and_then(|m| m.parse().ok()).unwrap_or(0)
}

/// Opens `lib` from the first search folder that has one of its files the driver can run, or
/// says where it looked (and which files it passed over as too new for the driver).
pub fn open(lib: Lib) -> Result<PathBuf, String> {
    open_in(lib, &search_dirs(), driver_version())
}

/// [`open`] over `dirs` for a driver of CUDA version `driver` (None: any file will do).
fn open_in(lib: Lib, dirs: &[PathBuf], driver: Option<i32>) -> Result<PathBuf, String> {
    let mut opened = OPENED.lock().unwrap_or_else(|e| e.into_inner());
    let mut too_new = None;
    for d in dirs {
        for f in lib.files {
            let path = d.join(f);
            if driver.is_some_and(|v| file_major(f) * 1000 > v) {
                if too_new.is_none() && path.is_file() {
                    too_new = Some(path);
                }
                continue;
            }
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
    Err(match (too_new, driver) {
        (Some(p), Some(v)) => {
            let needs = p.file_name().map_or(0, |f| file_major(&f.to_string_lossy()));
            too_new_for_driver(lib, &p, &needs.to_string(), v)
        }
        _ => not_found(lib, dirs),
    })
}

/// The one-line error for a library at `path` built for CUDA `needs` ("13", "13.0"), which the
/// driver (CUDA version `driver`) cannot run.
pub fn too_new_for_driver(lib: Lib, path: &Path, needs: &str, driver: i32) -> String {
    let usable: Vec<&str> = lib.files.iter().copied().filter(|f| file_major(f) * 1000 <= driver).collect();
    let instead = match usable.is_empty() {
        true => String::new(),
        false => format!(", or `pip install {}` ({}) and set {LIB_DIR_VAR} to its folder", lib.wheel, usable.join(", ")),
    };
    format!(
        "{} {} is for CUDA {needs} and this NVIDIA driver supports CUDA {} at most: update the driver{instead}",
        lib.what,
        path.display(),
        cuda_version(driver)
    )
}

/// Checks the library cudarc uses for `lib`, which the system loader gave it by name and so
/// need not be the file [`open`] chose: its CUDA major version (`major`, shown as `shown`)
/// must be one the driver (CUDA version `driver`) can run.
pub fn verify(lib: Lib, major: i32, shown: &str, driver: Option<i32>) -> Result<(), String> {
    match driver {
        Some(v) if major * 1000 > v => Err(format!(
            "{} {shown} (CUDA {major}) was loaded by name from the system loader's path (LD_LIBRARY_PATH, or the ldconfig cache; an unversioned `.so` link is asked for first), but this NVIDIA driver supports CUDA {} at most: take CUDA {major}'s folder off LD_LIBRARY_PATH (or uninstall its package), or update the driver",
            lib.what,
            cuda_version(v)
        )),
        _ => Ok(()),
    }
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

    /// A folder of empty files named like the libraries (never loaded: a file too new for the
    /// driver is passed over before it is opened; one that fits fails to load, by its path).
    fn fake_libs(name: &str, files: &[&str]) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gptrain-libs-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        for f in files {
            std::fs::write(d.join(f), b"").unwrap();
        }
        d
    }

    #[test]
    fn a_library_too_new_for_the_driver_is_passed_over_and_named() {
        let d13 = fake_libs("13", &["libnvrtc.so.13"]);
        let e = open_in(NVRTC, std::slice::from_ref(&d13), Some(12040)).unwrap_err();
        assert_eq!(
            e,
            format!(
                "NVRTC {} is for CUDA 13 and this NVIDIA driver supports CUDA 12.4 at most: update the driver, or `pip install nvidia-cuda-nvrtc-cu12` (libnvrtc.so.12) and set {LIB_DIR_VAR} to its folder",
                d13.join("libnvrtc.so.13").display()
            )
        );
        // with a CUDA 12 file in a later folder, that one is taken (here: tried, and it is empty)
        let d12 = fake_libs("12", &["libnvrtc.so.12"]);
        let e = open_in(NVRTC, &[d13.clone(), d12.clone()], Some(12040)).unwrap_err();
        assert!(e.starts_with(&format!("{} could not be loaded", d12.join("libnvrtc.so.12").display())), "{e}");
        // a CUDA 13 driver, or none (compiling only), takes the newest
        for driver in [Some(13000), None] {
            let e = open_in(NVRTC, &[d13.clone(), d12.clone()], driver).unwrap_err();
            assert!(e.starts_with(&format!("{} could not be loaded", d13.join("libnvrtc.so.13").display())), "{e}");
        }
        // a CUDA 11 driver can run neither: no wheel to suggest
        let e = open_in(NVRTC, std::slice::from_ref(&d12), Some(11080)).unwrap_err();
        assert!(e.ends_with("supports CUDA 11.8 at most: update the driver"), "{e}");
        assert_eq!(verify(CUBLASLT, 13, "13.0.2", Some(13000)), Ok(()));
        assert_eq!(verify(CUBLASLT, 12, "12.8.4", None), Ok(()));
        let e = verify(CUBLASLT, 13, "13.0.2", Some(12080)).unwrap_err();
        assert!(e.starts_with("cuBLASLt 13.0.2 (CUDA 13) was loaded by name") && e.contains("supports CUDA 12.8 at most"), "{e}");
        for d in [d12, d13] {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    /// An active conda environment's lib/ is searched after the folders named for CUDA and
    /// before /usr/local/cuda and the pip wheels; a folder that does not exist is left out.
    #[test]
    fn an_active_conda_environment_is_searched() {
        let conda = fake_libs("conda", &[]);
        std::fs::create_dir_all(conda.join("lib")).unwrap();
        let home = fake_libs("cuda-home", &[]);
        std::fs::create_dir_all(home.join("lib64")).unwrap();
        let wheel = fake_libs("wheel", &[]);
        std::fs::create_dir_all(wheel.join("nvidia/cu13/lib")).unwrap();
        let env = |k: &str| match k {
            "CONDA_PREFIX" => Some(conda.clone().into_os_string()),
            "CUDA_HOME" => Some(home.clone().into_os_string()),
            _ => None,
        };
        let d = dirs_from(&env, std::slice::from_ref(&wheel));
        let at = |p: PathBuf| d.iter().position(|x| *x == p).unwrap_or_else(|| panic!("{} not in {d:?}", p.display()));
        let (h, c, w) = (at(home.join("lib64")), at(conda.join("lib")), at(wheel.join("nvidia/cu13/lib")));
        assert!(h < c && c < w, "{d:?}");
        // a conda environment without lib/ adds nothing
        std::fs::remove_dir_all(conda.join("lib")).unwrap();
        assert!(!dirs_from(&env, &[]).iter().any(|p| p.starts_with(&conda)));
        for x in [conda, home, wheel] {
            let _ = std::fs::remove_dir_all(x);
        }
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
