//! Model files with hostile metadata, found by a sweep of ~4,000 one-key mutations of
//! generated GGUF files: each made llama.cpp abort, segfault or hang (or the pure-Rust
//! engine hang or panic) before the checks these tests hold in place. Every one is now a
//! 4xx that names what is wrong, on both engines, with no engine worker lost.

use std::path::Path;

use corral_e2e::*;
use corral_gguf::Value;

#[test]
fn hostile_hyperparameters_are_refused_on_both_engines() {
    let dir = tempfile::tempdir().unwrap();
    let Some(llama_cpp) = llama_cpp_plugin_dir(&dir.path().join("llama-cpp")) else { return };
    let Some(cpu) = cpu_plugin_dir(&dir.path().join("cpu")) else { return };
    let llama = generate_arch_model(dir.path(), "llama.gguf", "llama");
    let qwen3 = generate_arch_model(dir.path(), "qwen3.gguf", "qwen3");
    let gemma3 = generate_arch_model(dir.path(), "gemma3.gguf", "gemma3");
    let qwen2 = generate_arch_model(dir.path(), "qwen2.gguf", "qwen2");
    let gemma2 = generate_arch_model(dir.path(), "gemma2.gguf", "gemma2");
    let head = |file: &Path, arch: &str| {
        corral_gguf::reader::GgufFile::open(file)
            .unwrap()
            .get_u64(&format!("{arch}.attention.key_length"))
            .map(|k| k as u32)
    };
    let qwen3_head = head(&qwen3, "qwen3").unwrap_or(16);
    let qwen2_head = {
        let g = corral_gguf::reader::GgufFile::open(&qwen2).unwrap();
        let n = |k: &str| g.get_u64(&format!("qwen2.{k}")).unwrap() as u32;
        n("embedding_length") / n("attention.head_count")
    };
    // (base, what was done, the keys set, a word the refusal says). What each did before
    // to llama.cpp is in the comment; last, whether the pure-Rust engine refuses it too (it
    // runs a sliding-window pattern without sliding layers as global attention, and a
    // soft-cap of 0 as none).
    type Case<'a> = (&'a Path, &'a str, Vec<(&'a str, Value)>, &'a str, bool);
    let cases: Vec<Case> = vec![
        // GGML_ASSERT(n_expert_used_max <= hparams.n_expert)
        (
            &llama,
            "more experts used than exist",
            vec![("llama.expert_count", Value::U32(4)), ("llama.expert_used_count", Value::U32(8))],
            "expert",
            true,
        ),
        // GGML_ASSERT(n_layer_all > 0 && n_layer_all <= LLAMA_MAX_LAYERS)
        (&llama, "no layers", vec![("llama.block_count", Value::U32(0))], "block_count", true),
        // GGML_ASSERT(rope_scaling_type_train != UNSPECIFIED)
        (
            &llama,
            "an unknown RoPE scaling",
            vec![("llama.rope.scaling.type", Value::String("bogus".into()))],
            "bogus",
            true,
        ),
        // GGML_ASSERT(eps >= 0.0f) at the first decode
        (
            &llama,
            "a negative norm epsilon",
            vec![("llama.attention.layer_norm_rms_epsilon", Value::F32(-1.0))],
            "epsilon",
            true,
        ),
        // NaN everywhere
        (
            &llama,
            "a RoPE base of 0",
            vec![("llama.rope.freq_base", Value::F32(0.0))],
            "freq_base",
            true,
        ),
        // GGML_ASSERT(n_embd_head == n_rot) at the first decode
        (
            &qwen3,
            "RoPE over half the head",
            vec![("qwen3.rope.dimension_count", Value::U32(qwen3_head / 2))],
            "rope",
            true,
        ),
        // llama.cpp hung at 100% CPU; the cpu engine panicked ("chunk size must be non-zero")
        (
            &gemma3,
            "RoPE over nothing",
            vec![("gemma3.rope.dimension_count", Value::U32(0))],
            "rope",
            true,
        ),
        // GGML_ASSERT(hparams.is_swa_any())
        (
            &gemma3,
            "a sliding-window pattern with no sliding layer",
            vec![("gemma3.attention.sliding_window_pattern", Value::U32(1))],
            "sliding",
            false,
        ),
        // GGML_ASSERT(n_embd_head == hparams.n_embd_head_k()) when the context is made
        (
            &qwen2,
            "keys twice as wide as values",
            vec![("qwen2.attention.key_length", Value::U32(2 * qwen2_head))],
            "values of",
            true,
        ),
        // NaN from the first token (scores divided by a cap of 0)
        (
            &gemma2,
            "a soft-cap of 0",
            vec![("gemma2.attn_logit_softcapping", Value::F32(0.0))],
            "softcapping",
            false,
        ),
        // the host estimated 2^31 heads' KV cache and answered 507 "lower num_ctx"
        (
            &llama,
            "2^31 KV heads",
            vec![("llama.attention.head_count_kv", Value::U32(1 << 31))],
            "impossible hyperparameters",
            true,
        ),
    ];
    for (plugin, engine) in [(&llama_cpp, "llama-cpp"), (&cpu, "cpu")] {
        let s = Server::start(&[plugin.as_path()], &[], &[]);
        for (i, (base, what, set, says, both)) in cases.iter().enumerate() {
            if engine == "cpu" && !both {
                continue;
            }
            let path = dir.path().join(format!("case-{i}.gguf"));
            rewrite_metadata(base, &path, set);
            let body = serde_json::json!({"model": path, "prompt": "Hello, café ☕ 123",
                                          "stream": false, "options": {"num_predict": 4}});
            let (status, v) = post_json(&s.url, "/api/generate", &body);
            let msg = v["error"].as_str().unwrap_or_default();
            assert!((400..500).contains(&status), "{engine}, {what}: {status} {v}");
            assert!(msg.contains(says), "{engine}, {what}: {msg}");
        }
        assert_eq!(
            metric(&s, "corral_worker_crashes_total"),
            0.0,
            "{engine}: no engine worker died"
        );
        // Still serving.
        let body = serde_json::json!({"model": llama, "prompt": "Hi", "stream": false,
                                      "options": {"num_predict": 2}});
        let (status, v) = post_json(&s.url, "/api/generate", &body);
        assert_eq!(status, 200, "{engine}: {v}");
    }
}

/// A vocabulary entry of a megabyte (the last token, a control token in the generated
/// vocabulary) held the pure-Rust engine for minutes while it built its special-token
/// matcher (an Aho-Corasick DFA grows with the text times the alphabet); it now loads
/// and answers as llama.cpp does.
#[test]
fn a_megabyte_vocabulary_entry_loads_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let Some(cpu) = cpu_plugin_dir(&dir.path().join("cpu")) else { return };
    let llama = generate_arch_model(dir.path(), "llama.gguf", "llama");
    let mut tokens: Vec<String> = corral_gguf::reader::GgufFile::open(&llama)
        .unwrap()
        .get_str_array("tokenizer.ggml.tokens")
        .unwrap()
        .into_iter()
        .map(str::to_string)
        .collect();
    if let Some(last) = tokens.last_mut() {
        *last = "☕".repeat(333_333);
    }
    let long = dir.path().join("long-token.gguf");
    rewrite_metadata(&llama, &long, &[("tokenizer.ggml.tokens", Value::string_array(tokens))]);
    let s = Server::start(&[cpu.as_path()], &[], &[]);
    let client = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .unwrap();
    let body = serde_json::json!({"model": long, "prompt": "Hello ☕", "stream": false,
                                  "options": {"num_predict": 2}});
    let r = client.post(format!("{}/api/generate", s.url)).json(&body).send();
    let r = r.expect("an answer within a minute");
    assert_eq!(r.status().as_u16(), 200, "{:?}", r.text());
}

/// A chat template that does not compile (a syntax error; nesting past the parser's
/// limit) used to fail the model's load with a 500, so the file could not even embed or
/// generate raw. Now the template chosen from the vocabulary stands in (as llama.cpp
/// falls back to its built-in formats), `/api/show` says so, and every endpoint answers.
#[test]
fn a_chat_template_that_does_not_compile_falls_back() {
    let dir = tempfile::tempdir().unwrap();
    let Some(llama_cpp) = llama_cpp_plugin_dir(&dir.path().join("llama-cpp")) else { return };
    let qwen3 = generate_arch_model(dir.path(), "qwen3.gguf", "qwen3");
    let s = Server::start(&[llama_cpp.as_path()], &[], &[]);
    let nested = format!("{}x{}", "{% if true %}".repeat(2000), "{% endif %}".repeat(2000));
    for (what, template) in [("syntax", "{{ messages[0]['content'] }"), ("nesting", &nested)] {
        let path = dir.path().join(format!("broken-{what}.gguf"));
        let set = [("tokenizer.chat_template", Value::String(template.to_string()))];
        rewrite_metadata(&qwen3, &path, &set);
        let model = path.to_string_lossy().to_string();
        let chat = serde_json::json!({"model": model, "stream": false, "options": {"num_predict": 3},
            "messages": [{"role": "user", "content": "Hello"}]});
        let (status, v) = post_json(&s.url, "/api/chat", &chat);
        assert_eq!(status, 200, "{what}: chat {v}");
        let raw = serde_json::json!({"model": model, "prompt": "Hello", "raw": true,
                                     "stream": false, "options": {"num_predict": 3}});
        let (status, v) = post_json(&s.url, "/api/generate", &raw);
        assert_eq!(status, 200, "{what}: raw generate {v}");
        let (status, v) =
            post_json(&s.url, "/api/embed", &serde_json::json!({"model": model, "input": "Hello"}));
        assert_eq!(status, 200, "{what}: embed {v}");
        let (status, v) = post_json(&s.url, "/api/show", &serde_json::json!({"model": model}));
        assert_eq!(status, 200, "{what}: show {v}");
        let shown = v.to_string();
        assert!(shown.contains("chatml") && shown.contains("does not compile"), "{what}: {shown}");
    }
}
