//! The pure-Rust cpu backend through the real host: the conformance suite on F32 and Q8_0
//! models, greedy continuations through `corral run` equal to raw llama.cpp's on F32 and
//! F16 files, bad model files as clear errors, and embedding models pooled as the file
//! says, as the llama.cpp plugin pools them.

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

/// A decoder embedding model (Qwen3-Embedding's kind: `qwen3.pooling_type` = 3, last
/// token) through `/api/embed` on the cpu engine gives the llama.cpp plugin's vector, and
/// not the mean-pooled one the same weights give without the key.
#[test]
fn a_last_token_embedding_model_embeds_as_on_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let Some(cpu) = cpu_plugin_dir(&dir.path().join("cpu")) else { return };
    let Some(llama) = llama_cpp_plugin_dir(&dir.path().join("llama")) else { return };
    let plain = dir.path().join("qwen3.gguf");
    let mut c = corral(&[]);
    c.args(["model", "generate"]).arg(&plain).args(["--arch", "qwen3"]);
    let (out, _, err) = run(c);
    assert!(out.status.success(), "{err}");
    let last = dir.path().join("qwen3-embed.gguf");
    rewrite_metadata(&plain, &last, &[("qwen3.pooling_type", corral_gguf::Value::U32(3))]);
    let embed = |plugin: &std::path::Path, model: &std::path::Path| -> Vec<f32> {
        let s = Server::start(&[plugin], &[], &[]);
        let body = serde_json::json!({"model": model, "input": "The quick brown fox jumps"});
        let (status, v) = post_json(&s.url, "/api/embed", &body);
        assert_eq!(status, 200, "{v}");
        serde_json::from_value(v["embeddings"][0].clone()).expect("an embedding")
    };
    let on_cpu = embed(&cpu, &last);
    let on_llama = embed(&llama, &last);
    let mean_on_cpu = embed(&cpu, &plain);
    let diff = |a: &[f32], b: &[f32]| {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
    };
    // Unit vectors (the host normalizes): the engines agree within float noise, and the
    // pooling moves the vector far beyond it.
    assert!(diff(&on_cpu, &on_llama) < 2e-3, "cpu vs llama.cpp: {}", diff(&on_cpu, &on_llama));
    assert!(diff(&on_cpu, &mean_on_cpu) > 2e-2, "last vs mean: {}", diff(&on_cpu, &mean_on_cpu));
}
