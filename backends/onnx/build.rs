//! Development layout: copies the manifest of the variant being built next to the library
//! cargo builds (`target/<profile>/onnx.corral-plugin.toml`), so that a `corral` binary
//! from the same target directory finds the plugin with no install step.

fn main() {
    let feature =
        |f: &str| std::env::var_os(format!("CARGO_FEATURE_{}", f.to_uppercase())).is_some();
    let manifest = if feature("cuda") || feature("tensorrt") {
        "manifests/onnx-cuda12.toml"
    } else if feature("rocm") || feature("migraphx") {
        "manifests/onnx-rocm.toml"
    } else if feature("coreml") {
        "manifests/onnx-coreml.toml"
    } else if feature("directml") {
        "manifests/onnx-directml.toml"
    } else {
        "manifests/onnx-cpu.toml"
    };
    println!("cargo:rerun-if-changed={manifest}");
    let Ok(out_dir) = std::env::var("OUT_DIR") else { return };
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out.
    let Some(profile_dir) = std::path::Path::new(&out_dir).ancestors().nth(3) else { return };
    if let Err(e) = std::fs::copy(manifest, profile_dir.join("onnx.corral-plugin.toml")) {
        println!("cargo:warning=could not install the dev manifest: {e}");
    }
}
