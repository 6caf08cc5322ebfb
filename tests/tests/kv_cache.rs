//! KV cache types and flash attention as settings: global (`CORRAL_KV_CACHE_TYPE`, Ollama's
//! `OLLAMA_KV_CACHE_TYPE`, `--flash-attention`) and per model (`PARAMETER kv_cache_type`),
//! honoured by llama.cpp and the pure-Rust engine (memory per token in `/api/ps` follows
//! the type) and refused with a reason by an engine that cannot (the example plugin), by a
//! model whose heads are not whole blocks, or by a combination llama.cpp cannot do (a
//! quantized cache without flash attention).

use std::path::Path;

use corral_e2e::*;
use serde_json::{Value, json};

fn post(url: &str, path: &str, body: &Value) -> (u16, Value) {
    post_json(url, path, body)
}

fn ps(url: &str) -> Value {
    get_json(url, "/api/ps").1["models"][0].clone()
}

fn generate(url: &str, model: &str) -> (u16, Value) {
    post(
        url,
        "/api/generate",
        &json!({"model": model, "prompt": "Hello there", "stream": false,
        "options": {"num_predict": 8, "temperature": 0}}),
    )
}

/// A server with `vars` and `args` answers a generation with `model`; the cache
/// `/api/ps` then shows: its type, its bytes per token, and the engine.
fn cache_of(
    plugins: &[&Path],
    model: &str,
    vars: &[(&str, &str)],
    args: &[&str],
) -> (String, u64, String) {
    let s = Server::start(plugins, vars, args);
    let (st, v) = generate(&s.url, model);
    assert_eq!(st, 200, "{vars:?}: {v}");
    assert!(v["eval_count"].as_u64().unwrap() > 0);
    let p = ps(&s.url);
    (
        p["kv_cache_type"].as_str().unwrap().to_string(),
        p["kv_bytes_per_token"].as_u64().unwrap(),
        p["backend"].as_str().unwrap().to_string(),
    )
}

/// Creates `name` from `gguf` with extra Modelfile lines.
fn create(url: &str, name: &str, gguf: &Path, lines: &str) -> (u16, Value) {
    post(
        url,
        "/api/create",
        &json!({"model": name, "stream": false,
        "modelfile": format!("FROM {}\n{lines}", gguf.display())}),
    )
}

#[test]
fn llama_cpp_keeps_its_kv_cache_in_the_type_asked_and_ps_shows_the_memory() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_) = llama_cpp_plugin_dir(dir.path()) else { return };
    // Heads of 64 (a block of a quantized cache is 32 elements).
    let gguf = dir.path().join("small.gguf");
    generate_model(&gguf, "small", "q8_0");
    let model = gguf.to_string_lossy().into_owned();
    let plugins = [dir.path()];
    let per_token = |vars: &[(&str, &str)]| cache_of(&plugins, &model, vars, &[]);
    let (t, f16, _) = per_token(&[]);
    assert_eq!(t, "f16");
    let (t, q8, _) = per_token(&[("CORRAL_KV_CACHE_TYPE", "q8_0")]);
    assert_eq!(t, "q8_0");
    // 34 bytes per 32 elements against 64: about half.
    let ratio = q8 as f64 / f16 as f64;
    assert!((0.5..0.56).contains(&ratio), "q8_0/f16 per token = {ratio}");
    // Ollama's name for the setting works too.
    let (t, q4, _) = per_token(&[("OLLAMA_KV_CACHE_TYPE", "q4_0")]);
    assert_eq!(t, "q4_0");
    assert!(q4 < q8);

    // A quantized cache needs flash attention in llama.cpp: off is refused with the reason.
    let s =
        Server::start(&plugins, &[("CORRAL_KV_CACHE_TYPE", "q8_0")], &["--flash-attention", "off"]);
    let (st, v) = generate(&s.url, &model);
    assert_eq!(st, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("needs flash attention"), "{v}");
    drop(s);

    // A type the model's head size cannot take is the setting's error, with the reason.
    let tiny = dir.path().join("tiny.gguf");
    generate_model(&tiny, "tiny", "f32");
    let s = Server::start(&plugins, &[("CORRAL_KV_CACHE_TYPE", "q8_0")], &[]);
    let (st, v) = generate(&s.url, &tiny.to_string_lossy());
    assert_eq!(st, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("does not divide"), "{v}");
    drop(s);

    // A model's own PARAMETER wins over the global setting.
    let s = Server::start(&plugins, &[("CORRAL_KV_CACHE_TYPE", "q4_0")], &[]);
    let (st, v) = create(&s.url, "tiny-q8", &gguf, "PARAMETER kv_cache_type q8_0\n");
    assert_eq!(st, 200, "{v}");
    let (st, v) = generate(&s.url, "tiny-q8");
    assert_eq!(st, 200, "{v}");
    assert_eq!(ps(&s.url)["kv_cache_type"], "q8_0");
    let (st, v) = create(&s.url, "bad", &gguf, "PARAMETER kv_cache_type q5_9\n");
    assert_eq!(st, 200, "{v}");
    let (st, v) = generate(&s.url, "bad");
    assert_eq!(st, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("f16, q8_0 or q4_0"), "{v}");
}

/// The pure-Rust engine keeps its cache as f16, q8_0 or q4_0: `/api/ps` shows the type
/// and the bytes per token (34 and 18 bytes per 32 values against 64), the answers come,
/// and a model whose heads are not whole blocks of 32 is refused with the reason.
#[test]
fn the_pure_rust_engine_keeps_its_kv_cache_in_the_type_asked() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_) = cpu_plugin_dir(dir.path()) else { return };
    let gguf = dir.path().join("heads-of-32.gguf");
    generate_model(&gguf, "tiny:head_dim=32", "q8_0");
    let model = gguf.to_string_lossy().into_owned();
    let plugins = [dir.path()];
    let per_token = |vars: &[(&str, &str)]| cache_of(&plugins, &model, vars, &["--backend", "cpu"]);
    let (t, f16, engine) = per_token(&[]);
    assert_eq!((t.as_str(), engine.starts_with("cpu")), ("f16", true), "{engine}");
    let (t, q8, engine) = per_token(&[("OLLAMA_KV_CACHE_TYPE", "q8_0")]);
    assert_eq!((t.as_str(), engine.starts_with("cpu")), ("q8_0", true), "{engine}");
    let ratio = q8 as f64 / f16 as f64;
    assert!((0.5..0.56).contains(&ratio), "q8_0/f16 per token = {ratio}");
    let (t, q4, _) = per_token(&[("CORRAL_KV_CACHE_TYPE", "q4_0")]);
    assert_eq!(t, "q4_0");
    let ratio = q4 as f64 / f16 as f64;
    assert!((0.25..0.3).contains(&ratio), "q4_0/f16 per token = {ratio}");

    // Heads of 16 values cannot be stored as blocks of 32.
    let tiny = dir.path().join("tiny.gguf");
    generate_model(&tiny, "tiny", "f32");
    let s = Server::start(&plugins, &[("CORRAL_KV_CACHE_TYPE", "q8_0")], &["--backend", "cpu"]);
    let (st, v) = generate(&s.url, &tiny.to_string_lossy());
    assert_eq!(st, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("multiple of 32"), "{v}");
}

/// An engine that declares no kv-cache-types (the example plugin) falls back to f16 with a
/// warning for a global setting, and refuses a model's own PARAMETER with the reason.
#[test]
fn an_engine_that_cannot_quantize_its_cache_refuses_a_models_setting_and_ignores_a_global_one() {
    let dir = tempfile::tempdir().unwrap();
    // The toy engine, declared for GGUF files too (it runs any file), so that a model
    // created from a GGUF file runs on it.
    let manifest = example_manifest("cpu", ABI, "libcorral_plugin_example.so")
        .replace(r#"formats = ["toy"]"#, r#"formats = ["toy", "gguf"]"#);
    plugin_dir(dir.path(), "example", &manifest, Some(&plugin_lib("libcorral_plugin_example.so")));
    let model = dir.path().join("tiny.gguf");
    generate_model(&model, "tiny", "f32");
    let plugins = [dir.path()];
    let s = Server::start(&plugins, &[("CORRAL_KV_CACHE_TYPE", "q8_0")], &[]);
    let (st, v) = generate(&s.url, &model.to_string_lossy());
    assert_eq!(st, 200, "{v}");
    assert_eq!(ps(&s.url)["kv_cache_type"], "f16", "a global setting falls back");
    assert!(s.log().contains("cannot keep its KV cache as q8_0"), "{}", s.log());
    let (st, v) = create(&s.url, "toy-q8", &model, "PARAMETER kv_cache_type q8_0\n");
    assert_eq!(st, 200, "{v}");
    let (st, v) = generate(&s.url, "toy-q8");
    assert_eq!(st, 400, "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains("cannot keep its KV cache as q8_0") && msg.contains("PARAMETER"), "{msg}");
}

#[test]
fn a_bad_global_setting_stops_serve_with_a_clear_message() {
    let mut c = corral(&[]);
    c.args(["serve", "--host", "127.0.0.1:0", "--kv-cache-type", "q3"]);
    let (out, _, stderr) = run(c);
    assert!(!out.status.success());
    assert!(stderr.contains("kv_cache_type \"q3\": use f16, q8_0 or q4_0"), "{stderr}");
}
