//! The pure-Rust cpu backend through the real host: the conformance suite on F32 and Q8_0
//! models, greedy continuations through `corral run` equal to raw llama.cpp's on F32 and
//! F16 files, and bad model files as clear errors.

use corral_e2e::*;

#[test]
fn conformance_suite_passes_on_cpu_backend() {
    let dir = tempfile::tempdir().unwrap();
    let Some(plugin) = cpu_plugin_dir(dir.path()) else { return };
    assert_conformance_on_generated(
        &plugin,
        &["f32", "q8_0", "q4_0", "f16"],
        "12 passed, 0 failed",
        dir.path(),
    );
}

#[test]
fn a_chat_of_100000_turns_is_answered_promptly_on_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let Some(plugin) = cpu_plugin_dir(dir.path()) else { return };
    assert_a_chat_of_100000_turns_is_answered_promptly(&plugin, dir.path());
}

#[test]
fn greedy_run_on_cpu_equals_raw_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let Some(plugin) = cpu_plugin_dir(dir.path()) else { return };
    let Some(raw) = llama_raw_bin() else { return };
    assert_greedy_run_equals_raw(&plugin, &raw, "cpu", dir.path());
}

#[test]
fn bad_model_files_are_clear_errors_on_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let Some(plugin) = cpu_plugin_dir(dir.path()) else { return };
    assert_bad_model_files_are_clear(&plugin, &["--backend", "cpu"], dir.path());
}
