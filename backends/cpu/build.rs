//! Development layout: copies the manifest for the target's architecture next to the
//! library cargo builds (`target/<profile>/cpu.corral-plugin.toml`), so a `corral` binary
//! from the same target directory finds the plugin with no install step, and packaging
//! (`build-variant.sh`, `scripts/dist.sh`) takes the same file. x86-64 builds get
//! `manifests/cpu.toml` (SIMD kernels: ranked above llama.cpp's CPU builds); others get
//! `manifests/cpu-portable.toml` (portable kernels only: ranked below them).

fn main() {
    println!("cargo:rerun-if-changed=manifests");
    let manifest = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "manifests/cpu.toml",
        _ => "manifests/cpu-portable.toml",
    };
    let Ok(out_dir) = std::env::var("OUT_DIR") else { return };
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out.
    let Some(profile_dir) = std::path::Path::new(&out_dir).ancestors().nth(3) else { return };
    if let Err(e) = std::fs::copy(manifest, profile_dir.join("cpu.corral-plugin.toml")) {
        println!("cargo:warning=could not install the dev manifest {manifest}: {e}");
    }
}
