//! Development layout: copies the manifest of the variant being built next to the library
//! cargo builds (`target/<profile>/llama-cpp.corral-plugin.toml`), so a `corral` binary
//! from the same target directory finds the plugin with no install step.
//!
//! The variant comes from `CORRAL_LLAMA_VARIANT` (set by build-variant.sh), else from the
//! cargo feature. A plain x86-64 build without build-variant.sh is llama.cpp's default
//! CPU build, which enables AVX, AVX2, FMA, F16C and BMI2: that is the x86-64-v3 variant,
//! so its manifest (and its requirements) are the ones used. A build with `-C
//! target-cpu=native` (what `scripts/quickstart.sh` does, as llama.cpp's own default
//! build is native) is the `cpu-native` variant: llama-cpp-sys-2 then builds ggml with
//! GGML_NATIVE, and the manifest written here requires exactly the CPU features the
//! build used, so the library is refused, not crashed, on a machine that lacks one.

/// CPU features a native build's manifest requires when the build used them (Rust's
/// names; the host normalises spellings).
const NATIVE_FEATURES: &[&str] = &[
    "sse4.2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "bmi2",
    "movbe",
    "avx512f",
    "avx512bw",
    "avx512cd",
    "avx512dq",
    "avx512vl",
    "avx512vnni",
    "avx512vbmi",
    "avx512bf16",
    "avxvnni",
    "neon",
    "dotprod",
    "i8mm",
    "sve",
];

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
         # written by build.rs; it requires the CPU features the build used.\n\
         name = \"llama-cpp\"\nvariant = \"cpu-native\"\nversion = \"0.1.0\"\nabi = \"1.3\"\n\
         library = \"libcorral_backend_llama_cpp.so\"\nformats = [\"gguf\"]\npriority = 16\n\
         description = \"llama.cpp on the CPU (built for this machine's CPU)\"\n\n\
         [requires]\narch = \"{arch}\"\ncpu_features = [{}]\n\n[options]\n",
        used.join(", ")
    )
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
    let native = std::env::var("CARGO_ENCODED_RUSTFLAGS")
        .is_ok_and(|f| f.split('\x1f').any(|f| f.ends_with("target-cpu=native")));
    if native && std::env::var("CORRAL_LLAMA_VARIANT").is_err() {
        println!("cargo:rustc-env=CORRAL_LLAMA_VARIANT=cpu-native");
        let Ok(out_dir) = std::env::var("OUT_DIR") else { return };
        let Some(profile_dir) = std::path::Path::new(&out_dir).ancestors().nth(3) else { return };
        if let Err(e) =
            std::fs::write(profile_dir.join("llama-cpp.corral-plugin.toml"), native_manifest())
        {
            println!("cargo:warning=could not install the dev manifest: {e}");
        }
        return;
    }
    let feature = |f: &str| std::env::var_os(format!("CARGO_FEATURE_{f}")).is_some();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let variant = match std::env::var("CORRAL_LLAMA_VARIANT") {
        Ok(v) if !v.is_empty() => v,
        _ if feature("VULKAN") => "vulkan".into(),
        _ if feature("CUDA") => "cuda12".into(),
        _ if feature("ROCM") => "rocm6".into(),
        _ if feature("METAL") => "metal".into(),
        _ if arch == "x86_64" => {
            println!("cargo:rustc-env=CORRAL_LLAMA_VARIANT=cpu-x86-64-v3");
            "cpu-x86-64-v3".into()
        }
        _ => "cpu".into(),
    };
    let manifest = format!("manifests/llama-cpp-{variant}.toml");
    println!("cargo:rerun-if-changed={manifest}");
    let Ok(out_dir) = std::env::var("OUT_DIR") else { return };
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out.
    let Some(profile_dir) = std::path::Path::new(&out_dir).ancestors().nth(3) else { return };
    if let Err(e) = std::fs::copy(&manifest, profile_dir.join("llama-cpp.corral-plugin.toml")) {
        println!("cargo:warning=could not install the dev manifest {manifest}: {e}");
    }
}
