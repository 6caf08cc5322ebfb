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
    let plain = generate_arch_model(dir.path(), "qwen3.gguf", "qwen3");
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

/// A file whose pooling gives no sequence embedding (rank: a reranker's scores; none:
/// vectors per token) is a clear refusal on both engines, not a vector read past the
/// scores llama.cpp holds (its `llama_get_embeddings_seq` gives a reranker's `n_cls_out`
/// floats, not `n_embd`); the server goes on serving.
#[test]
fn rerankers_and_unpooled_files_are_refused_for_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    let Some(cpu) = cpu_plugin_dir(&dir.path().join("cpu")) else { return };
    let Some(llama) = llama_cpp_plugin_dir(&dir.path().join("llama")) else { return };
    let plain = generate_arch_model(dir.path(), "qwen3.gguf", "qwen3");
    for (v, name) in [(4, "rank"), (0, "no pooling")] {
        let path = dir.path().join(format!("qwen3-pooling-{v}.gguf"));
        rewrite_metadata(&plain, &path, &[("qwen3.pooling_type", corral_gguf::Value::U32(v))]);
        for plugin in [&cpu, &llama] {
            let s = Server::start(&[plugin], &[], &[]);
            let body = serde_json::json!({"model": path, "input": "The quick brown fox"});
            let (status, v) = post_json(&s.url, "/api/embed", &body);
            let msg = v["error"].as_str().unwrap_or_default().to_string();
            assert!((400..500).contains(&status), "{plugin:?} {name}: {status} {v}");
            assert!(msg.contains(name), "{plugin:?}: {msg}");
            // Still serving: the file without the pooling key generates text (one with
            // it is an embedding model, and refused generation as Ollama refuses it).
            let body = serde_json::json!({"model": plain, "prompt": "Hello", "stream": false,
                                          "options": {"num_predict": 4}});
            let (status, v) = post_json(&s.url, "/api/generate", &body);
            assert_eq!(status, 200, "{plugin:?} {name}: {v}");
        }
    }
}

/// A file whose weights make the embedding NaN (its output norm is NaN) is a 500 that
/// says so on both engines, not a vector of JSON nulls.
#[test]
fn a_nan_embedding_is_an_error_not_nulls() {
    let dir = tempfile::tempdir().unwrap();
    let Some(cpu) = cpu_plugin_dir(&dir.path().join("cpu")) else { return };
    let Some(llama) = llama_cpp_plugin_dir(&dir.path().join("llama")) else { return };
    let plain = generate_arch_model(dir.path(), "llama.gguf", "llama");
    let nan = dir.path().join("llama-nan.gguf");
    rewrite_gguf(&plain, &nan, &[], &|name, bytes| {
        if name == "output_norm.weight" {
            for f in bytes.chunks_exact_mut(4) {
                f.copy_from_slice(&f32::NAN.to_le_bytes());
            }
        }
    });
    for plugin in [&cpu, &llama] {
        let s = Server::start(&[plugin], &[], &[]);
        let body = serde_json::json!({"model": nan, "input": "The quick brown fox"});
        let (status, v) = post_json(&s.url, "/api/embed", &body);
        assert_eq!(status, 500, "{plugin:?}: {v}");
        assert!(v["error"].as_str().unwrap_or_default().contains("NaN"), "{plugin:?}: {v}");
        let (status, v) =
            post_json(&s.url, "/api/embed", &serde_json::json!({"model": plain, "input": "x"}));
        assert_eq!(status, 200, "{plugin:?}: still serving: {v}");
    }
}

/// What a model cannot do is refused with Ollama's 400s: generating or chatting with an
/// embedding model (it still embeds); tools offered, on every API, to a model whose
/// template has no place for them (the model would never see them), and counting such
/// a prompt. `/api/show` lists the capabilities the checks use; a generated model's own
/// template offers tools.
#[test]
fn requests_a_model_cannot_serve_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let Some(cpu) = cpu_plugin_dir(&dir.path().join("cpu")) else { return };
    let plain = generate_arch_model(dir.path(), "qwen3.gguf", "qwen3");
    let embedder = dir.path().join("qwen3-embed.gguf");
    rewrite_metadata(&plain, &embedder, &[("qwen3.pooling_type", corral_gguf::Value::U32(3))]);
    let store = dir.path().join("store").to_string_lossy().into_owned();
    let allow = dir.path().to_string_lossy().into_owned();
    let s = Server::start(
        &[cpu.as_path()],
        &[("CORRAL_MODELS", &store), ("CORRAL_ALLOW_MODEL_PATHS", &allow)],
        &[],
    );
    let msgs = serde_json::json!([{"role": "user", "content": "weather?"}]);
    let e = embedder.to_string_lossy();
    let (st, v) =
        post_json(&s.url, "/api/generate", &serde_json::json!({"model": e, "prompt": "hi"}));
    assert_eq!(
        (st, v["error"].as_str()),
        (400, Some(&*format!("\"{e}\" does not support generate")))
    );
    let (st, v) =
        post_json(&s.url, "/api/chat", &serde_json::json!({"model": e, "messages": msgs}));
    assert_eq!((st, v["error"].as_str()), (400, Some(&*format!("\"{e}\" does not support chat"))));
    let (st, v) = post_json(&s.url, "/api/embed", &serde_json::json!({"model": e, "input": "hi"}));
    assert_eq!(st, 200, "{v}");

    let modelfile = format!("FROM {}\nTEMPLATE \"{{{{ .Prompt }}}}\"\n", plain.display());
    let body = serde_json::json!({"model": "plain", "modelfile": modelfile, "stream": false});
    let (st, v) = post_json(&s.url, "/api/create", &body);
    assert_eq!(st, 200, "{v}");
    let (_, v) = post_json(&s.url, "/api/show", &serde_json::json!({"model": "plain"}));
    assert_eq!(v["capabilities"], serde_json::json!(["completion"]), "{v}");
    let tool = serde_json::json!({"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}});
    let chat = serde_json::json!({"model": "plain", "messages": msgs, "tools": [tool],
        "stream": false});
    let (st, v) = post_json(&s.url, "/api/chat", &chat);
    assert_eq!(st, 400, "{v}");
    assert!(v["error"].as_str().unwrap_or_default().ends_with("does not support tools"), "{v}");
    let (st, v) = post_json(&s.url, "/v1/chat/completions", &chat);
    assert_eq!((st, &v["error"]["type"]), (400, &serde_json::json!("invalid_request_error")));
    let anthropic_tool = serde_json::json!({"name": "get_weather",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}});
    for path in ["/v1/messages", "/v1/messages/count_tokens"] {
        let body = serde_json::json!({"model": "plain", "max_tokens": 4, "messages": msgs,
            "tools": [anthropic_tool]});
        let (st, v) = post_json(&s.url, path, &body);
        assert_eq!(st, 400, "{path}: {v}");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("does not support tools"), "{path}: {v}");
    }
    // Without tools, or with none: answered.
    let body = serde_json::json!({"model": "plain", "messages": msgs, "tools": [],
        "stream": false, "options": {"num_predict": 2}});
    assert_eq!(post_json(&s.url, "/api/chat", &body).0, 200);
    // The generated file's own template offers tools.
    let p = plain.to_string_lossy();
    let (_, v) = post_json(&s.url, "/api/show", &serde_json::json!({"model": p}));
    assert_eq!(v["capabilities"], serde_json::json!(["completion", "tools"]), "{v}");
}

/// With both engines installed and no backend named, each model runs on the first engine
/// that can run it: the pure-Rust engine (which ranks first) runs what it supports; a
/// file it refuses (YaRN RoPE scaling) and a KV cache type it cannot keep (q8_0) go to
/// llama.cpp, through the server and `corral run` alike; a file neither reads gets the
/// first engine's error with the next one's after it. Named with `--backend cpu`, the
/// refusal is the answer: a 400 and exit code 2 that say which engine and why.
#[test]
fn the_automatic_choice_runs_each_model_on_the_first_engine_that_can() {
    let dir = tempfile::tempdir().unwrap();
    let Some(cpu) = cpu_plugin_dir(&dir.path().join("cpu")) else { return };
    let Some(llama) = llama_cpp_plugin_dir(&dir.path().join("llama")) else { return };
    // Heads of 32, which llama.cpp's q8_0 cache needs (blocks of 32).
    let plain = dir.path().join("llama.gguf");
    generate_model(&plain, "tiny:head_dim=32", "f32");
    let yarn = dir.path().join("yarn.gguf");
    rewrite_metadata(
        &plain,
        &yarn,
        &[
            ("llama.rope.scaling.type", corral_gguf::Value::String("yarn".into())),
            ("llama.rope.scaling.factor", corral_gguf::Value::F32(2.0)),
        ],
    );
    let allow = dir.path().to_string_lossy().into_owned();
    let backend_of = |env: &[(&str, &str)], args: &[&str], model: &std::path::Path| {
        let store = tempfile::tempdir().unwrap();
        let store_path = store.path().to_string_lossy().into_owned();
        let mut env = env.to_vec();
        env.extend([("CORRAL_MODELS", &*store_path), ("CORRAL_ALLOW_MODEL_PATHS", &*allow)]);
        let s = Server::start(&[cpu.as_path(), llama.as_path()], &env, args);
        let body = serde_json::json!({"model": model, "prompt": "Hello", "stream": false,
            "options": {"num_predict": 3, "temperature": 0}});
        let (status, v) = post_json(&s.url, "/api/generate", &body);
        if status != 200 {
            return (status, v["error"].as_str().unwrap_or_default().to_string());
        }
        let (_, ps) = get_json(&s.url, "/api/ps");
        (status, ps["models"][0]["backend"].as_str().unwrap_or_default().to_string())
    };
    let (status, engine) = backend_of(&[], &[], &plain);
    assert_eq!(status, 200, "{engine}");
    assert!(engine.starts_with("cpu"), "a llama file runs on the pure-Rust engine: {engine}");
    let (status, engine) = backend_of(&[], &[], &yarn);
    assert_eq!(status, 200, "{engine}");
    assert!(engine.starts_with("llama-cpp"), "YaRN runs on llama.cpp: {engine}");
    let (status, engine) = backend_of(&[("OLLAMA_KV_CACHE_TYPE", "q8_0")], &[], &plain);
    assert_eq!(status, 200, "{engine}");
    assert!(engine.starts_with("cpu"), "the pure-Rust engine keeps a q8_0 cache too: {engine}");
    // A file no engine reads: the first engine's error, the next one's after it.
    let not_gguf = dir.path().join("notes.gguf");
    std::fs::write(&not_gguf, "this is not a model").unwrap();
    let (status, error) = backend_of(&[], &[], &not_gguf);
    assert_eq!(status, 400, "{error}");
    assert!(
        error.starts_with("cpu:cpu could not load") && error.contains("; then llama-cpp"),
        "{error}"
    );
    let (status, error) = backend_of(&[], &["--backend", "cpu"], &yarn);
    assert_eq!(status, 400, "{error}");
    assert!(
        error.contains("cpu") && error.contains("YaRN") && error.contains("choose another backend"),
        "{error}"
    );

    // `corral run`, in-process, follows the same rule.
    let run = |args: &[&str]| {
        let mut c = corral(&[cpu.as_path(), llama.as_path()]);
        c.arg("run").arg(&yarn).args(["Hello", "--num-predict", "2", "--temperature", "0"]);
        c.args(args).env("CORRAL_LOG", "info");
        run(c)
    };
    let (out, _, stderr) = run(&[]);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("backend llama-cpp"), "{stderr}");
    let (out, _, stderr) = run(&["--backend", "cpu"]);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("YaRN"), "{stderr}");
}
