//! Development layout: copies the manifest next to the library cargo builds
//! (`target/<profile>/cpu.corral-plugin.toml`), so a `corral` binary from the same target
//! directory finds the plugin with no install step.

fn main() {
    println!("cargo:rerun-if-changed=manifests");
    let manifest = "manifests/cpu.toml";
    let Ok(out_dir) = std::env::var("OUT_DIR") else { return };
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out.
    let Some(profile_dir) = std::path::Path::new(&out_dir).ancestors().nth(3) else { return };
    if let Err(e) = std::fs::copy(manifest, profile_dir.join("cpu.corral-plugin.toml")) {
        println!("cargo:warning=could not install the dev manifest {manifest}: {e}");
    }
}
