//! Development layout: copies the default manifest next to the library cargo builds
//! (`target/<profile>/cpu.corral-plugin.toml`) with the variant this build reports, so a
//! `corral` binary from the same target directory finds the plugin with no install step.

fn main() {
    println!("cargo:rerun-if-changed=manifests");
    println!("cargo:rerun-if-env-changed=CORRAL_CPU_VARIANT");
    println!("cargo:rerun-if-env-changed=CARGO_CFG_TARGET_FEATURE");
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    let has = |f: &str| features.split(',').any(|x| x == f);
    let variant = std::env::var("CORRAL_CPU_VARIANT").unwrap_or_else(|_| {
        if has("avx512vnni") && has("avx512bw") {
            "cpu-x86-64-v4".into()
        } else if has("avx2") && has("fma") {
            "cpu-x86-64-v3".into()
        } else {
            "cpu".into()
        }
    });
    let manifest = format!("manifests/{variant}.toml");
    let Ok(out_dir) = std::env::var("OUT_DIR") else { return };
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out.
    let Some(profile_dir) = std::path::Path::new(&out_dir).ancestors().nth(3) else { return };
    if let Err(e) = std::fs::copy(&manifest, profile_dir.join("cpu.corral-plugin.toml")) {
        println!("cargo:warning=could not install the dev manifest {manifest}: {e}");
    }
}
