//! Development layout: copies the manifest of the variant being built next to the library
//! cargo builds (`target/<profile>/llama-cpp.corral-plugin.toml`), so a `corral` binary
//! from the same target directory finds the plugin with no install step.
//!
//! The variant comes from `CORRAL_LLAMA_VARIANT` (set by build-variant.sh), else from the
//! cargo feature. A plain x86-64 build without build-variant.sh is llama.cpp's default
//! CPU build, which enables AVX, AVX2, FMA, F16C and BMI2: that is the x86-64-v3 variant,
//! so its manifest (and its requirements) are the ones used.

fn main() {
    println!("cargo:rerun-if-env-changed=CORRAL_LLAMA_VARIANT");
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
