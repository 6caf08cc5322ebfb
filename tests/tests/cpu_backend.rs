//! The pure-Rust cpu backend through the real host: the conformance suite on F32 and Q8_0
//! models, greedy continuations through `corral run` equal to raw llama.cpp's on F32 and
//! F16 files, and bad model files as clear errors.

use corral_e2e::*;

#[test]
fn conformance_suite_passes_on_cpu_backend() {
    let dir = tempfile::tempdir().unwrap();
    let Some(plugin) = cpu_plugin_dir(dir.path()) else { return };
    for ty in ["f32", "q8_0", "q4_0", "f16"] {
        let model = dir.path().join(format!("tiny-{ty}.gguf"));
        generate_model(&model, "tiny", ty);
        let mut c = corral(&[]);
        c.args(["plugin", "check"]).arg(&plugin).arg("--model").arg(&model);
        let (out, stdout, stderr) = run(c);
        assert!(out.status.success(), "{ty}: {stdout}\n{stderr}");
        assert!(stdout.contains("12 passed, 0 failed"), "{ty}: {stdout}");
    }
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
    let not_gguf = dir.path().join("notes.gguf");
    std::fs::write(&not_gguf, "this is not a model").unwrap();
    let good = dir.path().join("tiny.gguf");
    generate_model(&good, "tiny", "f32");
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.path().join("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let cases: [(&std::path::Path, &str); 3] = [
        (&not_gguf, "not a GGUF file"),
        (&truncated, "truncated"),
        (std::path::Path::new("/nonexistent/model.gguf"), "does not exist"),
    ];
    for (path, expect) in cases {
        let mut c = corral(&[&plugin]);
        c.args(["run", "--backend", "cpu", "--raw", "--temperature", "0"]).arg(path).arg("hi");
        let (out, _, stderr) = run(c);
        assert!(!out.status.success(), "{}: accepted", path.display());
        assert!(out.status.code().is_some(), "{}: killed by a signal: {stderr}", path.display());
        assert!(
            stderr.to_lowercase().contains(&expect.to_lowercase()),
            "{}: {stderr}",
            path.display()
        );
    }
}
