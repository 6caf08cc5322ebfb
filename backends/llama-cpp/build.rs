//! Development layout: copies the manifest of the variant being built next to the library
//! cargo builds (`target/<profile>/llama-cpp.corral-plugin.toml`), so a `corral` binary
//! from the same target directory finds the plugin with no install step.
//!
//! The variant comes from `CORRAL_LLAMA_VARIANT` (set by build-variant.sh), else from the
//! cargo feature, else from the target CPU:
//!
//! - `-C target-cpu=native` (the repository's `.cargo/config.toml` gives it to every plain
//!   `cargo build`, as llama.cpp's own default build is native) is the `cpu-native`
//!   variant: llama-cpp-sys-2 then builds ggml with GGML_NATIVE, and the manifest written
//!   here requires every CPU feature the build could use (the build machine's, as rustc
//!   names them), so the library is refused, not crashed, on a machine that lacks one.
//! - another target CPU, or none (`RUSTFLAGS=`): llama.cpp's non-native build, which
//!   enables AVX, AVX2, FMA, F16C and BMI2 on its own, at least; the variant is the
//!   x86-64 level the target features reach (`cpu-x86-64-v3`, `-v4`, `-v4-vnni`).

/// CPU features a native build's manifest requires when the build machine has them
/// (Rust's names; the host normalises spellings to /proc/cpuinfo's). GGML_NATIVE compiles
/// with `-march=native`, which lets the C compiler use every extension of the build CPU,
/// so the list holds every x86 and Arm extension a compiler emits code for that the
/// host's probe reports (`probe/src/cpu.rs`: a feature it does not know would make the
/// plugin unavailable everywhere), not only the ones ggml names.
const NATIVE_FEATURES: &[&str] = &[
    "sse3",
    "ssse3",
    "sse4.1",
    "sse4.2",
    "popcnt",
    "pclmulqdq",
    "aes",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "bmi1",
    "bmi2",
    "lzcnt",
    "movbe",
    "sha",
    "gfni",
    "vaes",
    "vpclmulqdq",
    "avx512f",
    "avx512bw",
    "avx512cd",
    "avx512dq",
    "avx512vl",
    "avx512ifma",
    "avx512vbmi",
    "avx512vbmi2",
    "avx512vnni",
    "avx512bitalg",
    "avx512vpopcntdq",
    "avx512bf16",
    "avx512fp16",
    "avxvnni",
    "neon",
    "dotprod",
    "i8mm",
    "fp16",
    "sve",
    "sve2",
];

/// The x86-64 level variant a non-native CPU build is: llama.cpp enables AVX2, FMA, F16C
/// and BMI2 itself in a non-native build, so the floor is `cpu-x86-64-v3`; the target
/// features (from `-C target-cpu=...` or `target-feature`) may raise it.
fn x86_variant(features: &[&str]) -> &'static str {
    let has = |f: &[&str]| f.iter().all(|x| features.contains(x));
    let v4 = has(&["avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl", "avx2"]);
    if v4 && has(&["avx512vnni", "avx512vbmi"]) {
        "cpu-x86-64-v4-vnni"
    } else if v4 {
        "cpu-x86-64-v4"
    } else {
        "cpu-x86-64-v3"
    }
}

/// The manifest of a `-C target-cpu=native` build: the portable one's fields, with the
/// build machine's features as requirements.
fn native_manifest() -> String {
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    let used: Vec<String> = features
        .split(',')
        .filter(|f| NATIVE_FEATURES.contains(f))
        .map(|f| format!("\"{f}\""))
        .collect();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    format!(
        "# llama.cpp on the CPU built for the build machine (-C target-cpu=native, GGML_NATIVE):\n\
         # written by build.rs; it requires every extension of the build machine's CPU\n\
         # that the compiler may have used, so other CPUs refuse it instead of crashing.\n\
         name = \"llama-cpp\"\nvariant = \"cpu-native\"\nversion = \"0.1.0\"\nabi = \"1.3\"\n\
         library = \"libcorral_backend_llama_cpp.so\"\nformats = [\"gguf\"]\npriority = 16\n\
         description = \"llama.cpp on the CPU (built for this machine's CPU)\"\n\n\
         [requires]\narch = \"{arch}\"\ncpu_features = [{}]\n\n[options]\n",
        used.join(", ")
    )
}

/// CUDA builds against a toolkit without cuBLAS's static archives (NVIDIA's PyPI wheels,
/// assembled by cuda-toolkit.sh, which puts empty stand-ins where llama-cpp-sys-2 expects
/// them): link the plugin, llama-raw and the tests to the shared cuBLAS in
/// `CORRAL_CUDA_SHARED_CUBLAS`, and to the driver's libcuda.so.1 through the stub there.
fn link_shared_cublas() {
    println!("cargo:rerun-if-env-changed=CORRAL_CUDA_SHARED_CUBLAS");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let Some(dir) = std::env::var_os("CORRAL_CUDA_SHARED_CUBLAS") else { return };
    let dir = std::path::PathBuf::from(dir);
    println!("cargo:rustc-link-arg=-L{}", dir.display());
    // $ORIGIN: a package may ship libcublas.so.13 and libcublasLt.so.13 beside the plugin.
    for arg in ["-lcublas", "-lcublasLt", "-lcuda", "-Wl,-rpath,$ORIGIN"] {
        println!("cargo:rustc-link-arg={arg}");
    }
}

fn main() {
    println!("cargo:rerun-if-env-changed=CORRAL_LLAMA_VARIANT");
    // ggml's RPC backend (corral worker, `rpc` workers) is part of every variant; the
    // workspace's .cargo/config.toml sets GGML_RPC=ON, which llama-cpp-sys-2 forwards to
    // CMake. Without it the plugin would not link.
    println!("cargo:rerun-if-env-changed=GGML_RPC");
    if !std::env::var("GGML_RPC").is_ok_and(|v| v.eq_ignore_ascii_case("ON")) {
        panic!(
            "GGML_RPC=ON is needed to build the llama.cpp plugin (ggml's RPC backend): run \
             cargo from the repository, whose .cargo/config.toml sets it, or export \
             GGML_RPC=ON"
        );
    }
    link_shared_cublas();
    let target_cpu = std::env::var("CARGO_ENCODED_RUSTFLAGS").ok().and_then(|flags| {
        flags.split('\x1f').find_map(|f| f.split("target-cpu=").nth(1).map(str::to_string))
    });
    let explicit = std::env::var("CORRAL_LLAMA_VARIANT").ok().filter(|v| !v.is_empty());
    let Ok(out_dir) = std::env::var("OUT_DIR") else { return };
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out.
    let Some(profile_dir) = std::path::Path::new(&out_dir).ancestors().nth(3) else { return };
    let dev_manifest = profile_dir.join("llama-cpp.corral-plugin.toml");
    if target_cpu.as_deref() == Some("native") && explicit.is_none() {
        println!("cargo:rustc-env=CORRAL_LLAMA_VARIANT=cpu-native");
        if let Err(e) = std::fs::write(&dev_manifest, native_manifest()) {
            println!("cargo:warning=could not install the dev manifest: {e}");
        }
        return;
    }
    let feature = |f: &str| std::env::var_os(format!("CARGO_FEATURE_{f}")).is_some();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let target_features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    let variant = match explicit {
        Some(v) => v,
        None if feature("VULKAN") => "vulkan".into(),
        None if feature("CUDA") => "cuda12".into(),
        None if feature("ROCM") => "rocm6".into(),
        None if feature("METAL") => "metal".into(),
        None if arch == "x86_64" => {
            let v = x86_variant(&target_features.split(',').collect::<Vec<_>>());
            println!("cargo:rustc-env=CORRAL_LLAMA_VARIANT={v}");
            v.into()
        }
        None => "cpu".into(),
    };
    let manifest = format!("manifests/llama-cpp-{variant}.toml");
    println!("cargo:rerun-if-changed={manifest}");
    if let Err(e) = std::fs::copy(&manifest, &dev_manifest) {
        println!("cargo:warning=could not install the dev manifest {manifest}: {e}");
    }
}
