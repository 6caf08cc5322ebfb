//! Finding and loading ONNX Runtime (`libonnxruntime`) at run time, and choosing the
//! execution providers sessions register.
//!
//! Search order, first found wins:
//! 1. the plugin option `library_path` (manifest `[options]` or the host config's
//!    `[backends.onnx]`): a file, or a directory holding the library;
//! 2. the `ORT_DYLIB_PATH` environment variable;
//! 3. a library shipped beside the plugin's own shared library;
//! 4. the `onnxruntime` Python package (`onnxruntime/capi/`), looked for in the
//!    site-packages of `$CORRAL_VENV`, `$VIRTUAL_ENV` and the usual venv places, then by
//!    asking `python3` where the package is;
//! 5. the system's library search path (`libonnxruntime.so`).
//!
//! A library that is missing, does not load, or is older than [`MIN_ORT_MINOR`] makes
//! init fail with the reason; an explicit `library_path` that fails is not replaced by
//! another candidate.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use thiserror::Error;

/// The oldest ONNX Runtime minor version (1.x) this plugin accepts: the `ort` API level
/// it is built with.
pub const MIN_ORT_MINOR: u32 = 20;

/// Why ONNX Runtime could not be used.
#[derive(Debug, Error)]
pub enum RuntimeError {
    /// No candidate library exists.
    #[error(
        "ONNX Runtime not found (looked in: {looked}); install it with `pip install onnxruntime` \
         (into $CORRAL_VENV or an active venv), set ORT_DYLIB_PATH, or set the plugin option \
         library_path"
    )]
    NotFound {
        /// Where it looked.
        looked: String,
    },
    /// A candidate exists but cannot be used.
    #[error("ONNX Runtime at {path} ({source_name}) cannot be used: {reason}")]
    Unusable {
        /// The library file.
        path: PathBuf,
        /// How it was found.
        source_name: String,
        /// What is wrong.
        reason: String,
    },
}

/// A loaded ONNX Runtime.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// The library file.
    pub path: PathBuf,
    /// How it was found, e.g. `ORT_DYLIB_PATH` or `python package onnxruntime`.
    pub source: String,
    /// Its version string, e.g. `1.31.1`.
    pub version: String,
    /// Execution providers compiled into this onnxruntime build.
    pub available_providers: Vec<String>,
}

/// A place to try, and how it was found.
#[derive(Debug, Clone)]
struct Candidate {
    path: PathBuf,
    source: String,
    explicit: bool,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
static ENVIRONMENT: OnceLock<ort::environment::Environment> = OnceLock::new();

/// The ONNX Runtime environment, once [`load`] succeeded.
pub fn environment() -> Option<ort::environment::Environment> {
    ENVIRONMENT.get().cloned()
}

/// Finds and loads ONNX Runtime once per process; later calls return the first result
/// (ONNX Runtime cannot be unloaded or swapped once loaded).
pub fn load(library_path: Option<&Path>) -> Result<Runtime, RuntimeError> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt.clone());
    }
    let candidates = candidates(library_path);
    if candidates.is_empty() {
        return Err(RuntimeError::NotFound { looked: searched_places(library_path) });
    }
    let mut failures = Vec::new();
    for c in &candidates {
        match try_load(c) {
            Ok(rt) => {
                let rt = RUNTIME.get_or_init(|| rt).clone();
                return Ok(rt);
            }
            Err(e) => {
                log::warn!("{e}");
                if c.explicit {
                    return Err(e);
                }
                failures.push(e);
            }
        }
    }
    // Report the first failure: the most preferred candidate's reason.
    Err(failures
        .into_iter()
        .next()
        .unwrap_or(RuntimeError::NotFound { looked: searched_places(library_path) }))
}

fn unusable(c: &Candidate, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::Unusable {
        path: c.path.clone(),
        source_name: c.source.clone(),
        reason: reason.into(),
    }
}

fn try_load(c: &Candidate) -> Result<Runtime, RuntimeError> {
    let version = library_version(&c.path).map_err(|r| unusable(c, r))?;
    let minor = version.split('.').nth(1).and_then(|m| m.parse::<u32>().ok()).unwrap_or(0);
    let major = version.split('.').next().and_then(|m| m.parse::<u32>().ok()).unwrap_or(0);
    if major < 1 || (major == 1 && minor < MIN_ORT_MINOR) {
        return Err(unusable(
            c,
            format!(
                "version {version} is too old: this plugin needs ONNX Runtime 1.{MIN_ORT_MINOR} or \
                 newer (pip install -U onnxruntime)"
            ),
        ));
    }
    let env = ort::init_from(&c.path)
        .map_err(|e| unusable(c, e.to_string()))?
        .with_name("corral")
        .build()
        .map_err(|e| unusable(c, format!("creating the environment failed: {e}")))?;
    let _ = ENVIRONMENT.set(env);
    let available_providers = available_providers();
    log::info!(
        "ONNX Runtime {version} loaded from {} (found via {}); providers in this build: {}",
        c.path.display(),
        c.source,
        available_providers.join(", ")
    );
    Ok(Runtime { path: c.path.clone(), source: c.source.clone(), version, available_providers })
}

/// Opens the library and reads `OrtGetApiBase()->GetVersionString()`.
fn library_version(path: &Path) -> Result<String, String> {
    // SAFETY: loading a shared library runs its initialisers; libonnxruntime's are benign,
    // and every candidate comes from a place only the user or root can write (the
    // configured path, ORT_DYLIB_PATH, beside the plugin, the user's venvs, system
    // directories; see `venv_prefixes`), so the file is the library it claims to be.
    // The library stays loaded (ort opens it again and keeps it for the process).
    let lib =
        unsafe { libloading::Library::new(path) }.map_err(|e| format!("dlopen failed: {e}"))?;
    type GetBase = unsafe extern "C" fn() -> *const ort::sys::OrtApiBase;
    // SAFETY: `OrtGetApiBase` has this signature in every ONNX Runtime release.
    let get: libloading::Symbol<'_, GetBase> = unsafe { lib.get(b"OrtGetApiBase") }
        .map_err(|_| "it does not export OrtGetApiBase: not an ONNX Runtime library".to_string())?;
    // SAFETY: calling the C entry point; it returns a static struct or null.
    let base = unsafe { get() };
    if base.is_null() {
        return Err("OrtGetApiBase returned null".into());
    }
    // SAFETY: `base` is non-null and points at ONNX Runtime's static OrtApiBase, whose
    // GetVersionString returns a static NUL-terminated string.
    let s = unsafe { std::ffi::CStr::from_ptr(((*base).GetVersionString)()) };
    let version = s.to_string_lossy().into_owned();
    // Keep the handle open: unloading and reloading libonnxruntime is not supported.
    std::mem::forget(lib);
    Ok(version)
}

/// The execution providers compiled into the loaded ONNX Runtime.
fn available_providers() -> Vec<String> {
    let mut out = Vec::new();
    let mut list: *mut *mut std::ffi::c_char = std::ptr::null_mut();
    let mut n: std::ffi::c_int = 0;
    let api = ort::api();
    // SAFETY: the API table comes from the loaded library; the out pointers are valid.
    let status = unsafe { (api.GetAvailableProviders)(&mut list, &mut n) };
    if !status.0.is_null() {
        // SAFETY: a non-null status must be released with ReleaseStatus.
        unsafe { (api.ReleaseStatus)(status.0) };
        return out;
    }
    if list.is_null() {
        return out;
    }
    for i in 0..n.max(0) as usize {
        // SAFETY: ONNX Runtime returned `n` valid C strings in `list`.
        let p = unsafe { *list.add(i) };
        if !p.is_null() {
            // SAFETY: `p` is a NUL-terminated string owned by ONNX Runtime.
            out.push(unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned());
        }
    }
    // SAFETY: releasing the list ONNX Runtime allocated, with its own count.
    let status = unsafe { (api.ReleaseAvailableProviders)(list, n) };
    if !status.0.is_null() {
        // SAFETY: as above.
        unsafe { (api.ReleaseStatus)(status.0) };
    }
    out
}

fn lib_names() -> &'static [&'static str] {
    if cfg!(target_os = "windows") {
        &["onnxruntime.dll"]
    } else if cfg!(target_os = "macos") {
        &["libonnxruntime.dylib"]
    } else {
        &["libonnxruntime.so"]
    }
}

/// The library in `dir`: the plain name, else a versioned one (`libonnxruntime.so.1.31.1`,
/// as the Python wheel ships it).
pub fn library_in_dir(dir: &Path) -> Option<PathBuf> {
    for n in lib_names() {
        let p = dir.join(n);
        if p.is_file() {
            return Some(p);
        }
    }
    let mut versioned: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            lib_names().iter().any(|base| {
                name.starts_with(&format!("{base}."))
                    || (cfg!(target_os = "macos")
                        && name.starts_with("libonnxruntime.")
                        && name.ends_with(".dylib"))
            })
        })
        .collect();
    versioned.sort();
    versioned.pop()
}

/// Directory of the shared library this code is part of (the plugin), if it can be told.
fn plugin_dir() -> Option<PathBuf> {
    #[cfg(unix)]
    {
        let mut info: libc::Dl_info = libc::Dl_info {
            dli_fname: std::ptr::null(),
            dli_fbase: std::ptr::null_mut(),
            dli_sname: std::ptr::null(),
            dli_saddr: std::ptr::null_mut(),
        };
        let addr = plugin_dir as *const () as *const libc::c_void;
        // SAFETY: dladdr only reads the loader's tables; `info` is a valid out pointer.
        let ok = unsafe { libc::dladdr(addr, &mut info) };
        if ok == 0 || info.dli_fname.is_null() {
            return None;
        }
        // SAFETY: dli_fname is a NUL-terminated path owned by the loader.
        let name = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) };
        let path = PathBuf::from(name.to_string_lossy().into_owned());
        path.parent().map(Path::to_path_buf)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Site-packages directories of a venv or prefix.
fn site_packages(prefix: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for lib in ["lib", "lib64"] {
        let Ok(rd) = std::fs::read_dir(prefix.join(lib)) else { continue };
        let mut dirs: Vec<PathBuf> = rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("python3")))
            .collect();
        dirs.sort();
        for d in dirs.into_iter().rev() {
            out.push(d.join("site-packages"));
            out.push(d.join("dist-packages"));
        }
    }
    // Windows venvs.
    out.push(prefix.join("Lib").join("site-packages"));
    out
}

fn venv_prefixes() -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for var in ["CORRAL_VENV", "VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            out.push((PathBuf::from(v), format!("${var}")));
        }
    }
    // Nothing relative to the working directory and nothing under a world-writable
    // directory: a library found there is opened (its initialisers run) before any check,
    // so a `.venv` planted in the directory `corral serve` starts from, or a venv another
    // user created in /var/tmp, would run code as the server.
    if let Some(home) = std::env::var_os("HOME") {
        out.push((PathBuf::from(&home).join(".local"), "~/.local".into()));
    }
    out.push((PathBuf::from("/usr/local"), "/usr/local".into()));
    out.push((PathBuf::from("/usr"), "/usr".into()));
    out
}

/// Asks the Python interpreters on PATH where the `onnxruntime` package is (without
/// importing it).
fn python_package_dir() -> Option<PathBuf> {
    let code = "import importlib.util,os;s=importlib.util.find_spec('onnxruntime');\
                print(os.path.dirname(s.origin) if s and s.origin else '')";
    for py in ["python3", "python"] {
        // `-I`: isolated, so the working directory is not on the interpreter's path (an
        // `onnxruntime` directory planted there would be "found") and PYTHON* variables
        // are ignored.
        let Ok(out) = std::process::Command::new(py)
            .args(["-I", "-c", code])
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
        else {
            continue;
        };
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && !dir.is_empty() {
            return Some(PathBuf::from(dir));
        }
    }
    None
}

fn candidates(library_path: Option<&Path>) -> Vec<Candidate> {
    let mut out = Vec::new();
    if let Some(p) = library_path {
        let path = if p.is_dir() {
            library_in_dir(p).unwrap_or_else(|| p.join(lib_names()[0]))
        } else {
            p.to_path_buf()
        };
        // An explicit choice is the only candidate: it is used or init fails with why.
        out.push(Candidate { path, source: "plugin option library_path".into(), explicit: true });
        return out;
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()) {
        out.push(Candidate {
            path: PathBuf::from(p),
            source: "ORT_DYLIB_PATH".into(),
            explicit: true,
        });
        return out;
    }
    if let Some(dir) = plugin_dir()
        && let Some(p) = library_in_dir(&dir)
    {
        out.push(Candidate {
            path: p,
            source: "library shipped beside the plugin".into(),
            explicit: false,
        });
    }
    for (prefix, label) in venv_prefixes() {
        for sp in site_packages(&prefix) {
            let capi = sp.join("onnxruntime").join("capi");
            if let Some(p) = library_in_dir(&capi) {
                out.push(Candidate {
                    path: p,
                    source: format!("python package onnxruntime in {label}"),
                    explicit: false,
                });
            }
        }
    }
    if out.is_empty()
        && let Some(dir) = python_package_dir()
        && let Some(p) = library_in_dir(&dir.join("capi"))
    {
        out.push(Candidate {
            path: p,
            source: "python package onnxruntime (python3's path)".into(),
            explicit: false,
        });
    }
    for dir in [
        "/usr/local/lib",
        "/usr/lib",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/opt/homebrew/lib",
    ] {
        if let Some(p) = library_in_dir(Path::new(dir)) {
            out.push(Candidate {
                path: p,
                source: format!("system library in {dir}"),
                explicit: false,
            });
        }
    }
    out
}

fn searched_places(library_path: Option<&Path>) -> String {
    let mut places = Vec::new();
    if let Some(p) = library_path {
        places.push(format!("library_path {}", p.display()));
    }
    places.push("ORT_DYLIB_PATH (unset)".into());
    places.push("beside the plugin".into());
    places.push(
        "the onnxruntime python package in $CORRAL_VENV, $VIRTUAL_ENV, $CONDA_PREFIX, \
         ~/.local, /usr/local, /usr and python3's path"
            .into(),
    );
    places.push("/usr/lib, /usr/local/lib".into());
    places.join("; ")
}

/// An execution provider the plugin knows, in the names the config uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// NVIDIA TensorRT.
    TensorRt,
    /// NVIDIA CUDA.
    Cuda,
    /// AMD ROCm.
    Rocm,
    /// AMD MIGraphX.
    MiGraphX,
    /// Apple CoreML.
    CoreMl,
    /// Windows DirectML.
    DirectMl,
    /// The CPU (always available).
    Cpu,
}

impl Provider {
    /// Every provider, most preferred first.
    pub const ALL: [Provider; 7] = [
        Provider::TensorRt,
        Provider::Cuda,
        Provider::MiGraphX,
        Provider::Rocm,
        Provider::CoreMl,
        Provider::DirectMl,
        Provider::Cpu,
    ];

    /// The config name (`cuda`, `tensorrt`, ...).
    pub fn key(self) -> &'static str {
        match self {
            Provider::TensorRt => "tensorrt",
            Provider::Cuda => "cuda",
            Provider::Rocm => "rocm",
            Provider::MiGraphX => "migraphx",
            Provider::CoreMl => "coreml",
            Provider::DirectMl => "directml",
            Provider::Cpu => "cpu",
        }
    }

    /// ONNX Runtime's name for it.
    pub fn ort_name(self) -> &'static str {
        match self {
            Provider::TensorRt => "TensorrtExecutionProvider",
            Provider::Cuda => "CUDAExecutionProvider",
            Provider::Rocm => "ROCMExecutionProvider",
            Provider::MiGraphX => "MIGraphXExecutionProvider",
            Provider::CoreMl => "CoreMLExecutionProvider",
            Provider::DirectMl => "DmlExecutionProvider",
            Provider::Cpu => "CPUExecutionProvider",
        }
    }

    /// Parses a config name.
    pub fn parse(s: &str) -> Option<Provider> {
        let s = s.trim().to_ascii_lowercase();
        Provider::ALL.into_iter().find(|p| p.key() == s || p.ort_name().eq_ignore_ascii_case(&s))
    }

    /// Whether this plugin build has the code to register it (a cargo feature).
    pub fn compiled_in(self) -> bool {
        match self {
            Provider::TensorRt => cfg!(feature = "tensorrt"),
            Provider::Cuda => cfg!(feature = "cuda"),
            Provider::Rocm => cfg!(feature = "rocm"),
            Provider::MiGraphX => cfg!(feature = "migraphx"),
            Provider::CoreMl => cfg!(feature = "coreml"),
            Provider::DirectMl => cfg!(feature = "directml"),
            Provider::Cpu => true,
        }
    }

    /// The provider as an ort dispatch (`None` for the CPU, which needs no registration,
    /// and for providers this build lacks).
    pub fn dispatch(self, device_id: i32) -> Option<ort::ep::ExecutionProviderDispatch> {
        let _ = device_id;
        match self {
            #[cfg(feature = "tensorrt")]
            Provider::TensorRt => {
                Some(ort::ep::TensorRT::default().with_device_id(device_id).build())
            }
            #[cfg(feature = "cuda")]
            Provider::Cuda => Some(ort::ep::CUDA::default().with_device_id(device_id).build()),
            #[cfg(feature = "rocm")]
            Provider::Rocm => Some(ort::ep::ROCm::default().with_device_id(device_id).build()),
            #[cfg(feature = "migraphx")]
            Provider::MiGraphX => {
                Some(ort::ep::MIGraphX::default().with_device_id(device_id).build())
            }
            #[cfg(feature = "coreml")]
            Provider::CoreMl => Some(ort::ep::CoreML::default().build()),
            #[cfg(feature = "directml")]
            Provider::DirectMl => {
                Some(ort::ep::DirectML::default().with_device_id(device_id).build())
            }
            _ => None,
        }
    }
}

/// The providers to try, most preferred first, ending with the CPU: the configured list
/// when given (unknown names are an error), else every provider this build has, each
/// kept only if the loaded ONNX Runtime has it.
pub fn provider_plan(
    configured: Option<&[String]>,
    available: &[String],
) -> Result<Vec<Provider>, String> {
    let mut plan = Vec::new();
    match configured {
        Some(list) if !list.is_empty() => {
            for name in list {
                let p = Provider::parse(name).ok_or_else(|| {
                    format!(
                        "unknown execution provider {name:?} in the option execution_providers \
                         (known: tensorrt, cuda, rocm, migraphx, coreml, directml, cpu)"
                    )
                })?;
                if !p.compiled_in() {
                    log::warn!(
                        "execution provider {} requested but this plugin build lacks it (build \
                         with --features {}); skipped",
                        p.key(),
                        p.key()
                    );
                    continue;
                }
                if !plan.contains(&p) {
                    plan.push(p);
                }
            }
        }
        _ => plan.extend(Provider::ALL.into_iter().filter(|p| p.compiled_in())),
    }
    plan.retain(|p| {
        let ok = *p == Provider::Cpu || available.iter().any(|a| a == p.ort_name());
        if !ok {
            log::info!(
                "execution provider {} skipped: the loaded ONNX Runtime has no {} (it has: {})",
                p.key(),
                p.ort_name(),
                available.join(", ")
            );
        }
        ok
    });
    if !plan.contains(&Provider::Cpu) {
        plan.push(Provider::Cpu);
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The library is opened before it can be checked: no place it is looked for may be
    /// one another user can write (/tmp, /var/tmp) or one the working directory chooses
    /// (the variables the user sets, `$CORRAL_VENV` and the like, are theirs to point).
    #[test]
    fn no_library_is_searched_where_others_or_the_working_directory_decide() {
        let cwd = std::env::current_dir().expect("a working directory");
        for (p, why) in venv_prefixes().into_iter().filter(|(_, why)| !why.starts_with('$')) {
            assert!(
                !p.starts_with("/tmp") && !p.starts_with("/var/tmp"),
                "{} ({why})",
                p.display()
            );
            assert!(!p.starts_with(&cwd) || cwd == Path::new("/"), "{} ({why})", p.display());
        }
    }

    #[test]
    fn provider_names_parse() {
        assert_eq!(Provider::parse("CUDA"), Some(Provider::Cuda));
        assert_eq!(Provider::parse("CPUExecutionProvider"), Some(Provider::Cpu));
        assert_eq!(Provider::parse("tpu"), None);
    }

    #[test]
    fn plan_ends_with_cpu_and_drops_missing() {
        let avail = vec!["CPUExecutionProvider".to_string()];
        let plan = provider_plan(None, &avail).unwrap();
        assert_eq!(plan.last(), Some(&Provider::Cpu));
        assert_eq!(plan, vec![Provider::Cpu]);
        let plan = provider_plan(Some(&["cuda".into(), "cpu".into()]), &avail).unwrap();
        assert_eq!(plan, vec![Provider::Cpu]);
        assert!(provider_plan(Some(&["warp-drive".into()]), &avail).is_err());
    }

    #[test]
    fn versioned_library_is_found() {
        let d = tempfile::tempdir().unwrap();
        assert!(library_in_dir(d.path()).is_none());
        std::fs::write(d.path().join(format!("{}.1.31.1", lib_names()[0])), b"x").unwrap();
        assert!(library_in_dir(d.path()).is_some());
    }
}
