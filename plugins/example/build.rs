//! Development layout: copies this plugin's manifest next to the library cargo builds
//! (`target/<profile>/`), named `<name>.corral-plugin.toml`, so that a `corral` binary
//! from the same target directory finds the plugin with no install step.

fn main() {
    let manifest = "manifests/example.toml";
    println!("cargo:rerun-if-changed={manifest}");
    let Ok(out_dir) = std::env::var("OUT_DIR") else { return };
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out.
    let Some(profile_dir) = std::path::Path::new(&out_dir).ancestors().nth(3) else { return };
    if let Err(e) = std::fs::copy(manifest, profile_dir.join("example.corral-plugin.toml")) {
        println!("cargo:warning=could not install the dev manifest: {e}");
    }
}
