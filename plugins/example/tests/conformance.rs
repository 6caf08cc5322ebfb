//! The backend conformance suite on this plugin, run the way a third party runs it on
//! theirs: `corral-plugin-host` as a dev-dependency, the library and manifest that
//! `cargo build` put in the target directory, a tiny generated model.

use std::path::PathBuf;

/// The profile directory (`target/debug`) that holds the built library and the manifest
/// `build.rs` copied beside it.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>").to_path_buf()
}

#[test]
fn the_example_plugin_passes_the_conformance_suite() {
    let manifest = profile_dir().join("example.corral-plugin.toml");
    let library = profile_dir().join("libcorral_plugin_example.so");
    if !library.is_file() {
        eprintln!(
            "SKIP: {} not built yet (cargo build -p corral-plugin-example)",
            library.display()
        );
        return;
    }
    // The toy engine runs any file; the suite's own model is a generated GGUF.
    let report = corral_plugin_host::conformance::check_plugin(&manifest, None)
        .expect("the plugin and its model load");
    println!("{report}");
    assert!(report.passed(), "{report}");
    assert!(report.count(corral_plugin_host::conformance::Outcome::Pass) >= 8, "{report}");
}
