//! The llama.cpp backend through the real host: the conformance suite, and greedy
//! continuations through `corral run` equal to raw llama.cpp's on the same file.

use corral_e2e::*;

#[test]
fn conformance_suite_passes_on_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let Some(plugin) = llama_cpp_plugin_dir(dir.path()) else { return };
    assert_conformance_on_generated(&plugin, &["f32", "q8_0"], "12 passed, 0 failed", dir.path());
}

#[test]
fn greedy_run_equals_raw_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let Some(plugin) = llama_cpp_plugin_dir(dir.path()) else { return };
    let raw = profile_dir().join("llama-raw");
    assert!(raw.is_file(), "llama-raw is built with the llama.cpp plugin");
    assert_greedy_run_equals_raw(&plugin, &raw, "llama-cpp", dir.path());
}

#[test]
fn bad_model_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let Some(plugin) = llama_cpp_plugin_dir(dir.path()) else { return };
    let good = assert_bad_model_files_are_clear(&plugin, &[], dir.path());
    // Empty prompt and invalid options.
    for (args, expect) in [
        (vec![""], "empty"),
        (vec!["--top-k", "-1", "hi"], "top_k"),
        (vec!["--temperature", "NaN", "hi"], "temperature"),
    ] {
        let mut c = corral(&[&plugin]);
        c.args(["run", "--raw"]).arg(&good).args(&args);
        let (out, _, stderr) = run(c);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
    }
}

#[test]
fn a_chat_of_100000_turns_is_answered_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let Some(plugin) = llama_cpp_plugin_dir(dir.path()) else { return };
    assert_a_chat_of_100000_turns_is_answered_promptly(&plugin, dir.path());
}

#[test]
fn prompt_longer_than_context_is_truncated_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let Some(plugin) = llama_cpp_plugin_dir(dir.path()) else { return };
    let model = dir.path().join("tiny.gguf");
    generate_model(&model, "tiny", "f32");
    let long = "word ".repeat(400);
    let mut c = corral(&[&plugin]);
    c.args([
        "run",
        "--raw",
        "--temperature",
        "0",
        "--num-ctx",
        "128",
        "--num-predict",
        "4",
        "--no-truncate",
    ])
    .arg(&model)
    .arg(&long);
    let (out, _, stderr) = run(c);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("num_ctx") || stderr.contains("context"), "{stderr}");
    let mut c = corral(&[&plugin]);
    c.args([
        "run",
        "--raw",
        "--temperature",
        "0",
        "--num-ctx",
        "128",
        "--num-predict",
        "4",
        "--verbose",
    ])
    .arg(&model)
    .arg(&long);
    let (out, _, stderr) = run(c);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("done reason:"), "{stderr}");
}

/// Four concurrent greedy requests to `corral serve` (continuous batching over llama.cpp's
/// per-sequence KV streams, ABI 1.1) each continue exactly as raw llama.cpp does alone.
#[test]
fn parallel_server_streams_equal_raw_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let Some(plugin) = llama_cpp_plugin_dir(dir.path()) else { return };
    let raw = profile_dir().join("llama-raw");
    assert!(raw.is_file(), "llama-raw is built with the llama.cpp plugin");
    let model = dir.path().join("tiny-f32.gguf");
    generate_model(&model, "tiny", "f32");
    let prompts = ["Hello there", "The capital of France is", "Once upon a time", "fn main() {"];
    let expected: Vec<String> = prompts
        .iter()
        .map(|prompt| raw_greedy(&raw, &model, prompt, 24)["text"].as_str().unwrap().to_string())
        .collect();
    let server = Server::start(
        &[plugin.as_path()],
        &[("CORRAL_NUM_PARALLEL", "4"), ("CORRAL_BACKEND", "llama-cpp")],
        &[],
    );
    let model_path = model.to_string_lossy().into_owned();
    let answers: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = prompts
            .iter()
            .map(|prompt| {
                let (url, model_path) = (&server.url, &model_path);
                s.spawn(move || {
                    let body = serde_json::json!({
                        "model": model_path, "prompt": prompt, "raw": true, "stream": false,
                        "options": {"temperature": 0, "repeat_penalty": 1, "num_predict": 24}
                    });
                    let r = reqwest::blocking::Client::new()
                        .post(format!("{url}/api/generate"))
                        .json(&body)
                        .timeout(std::time::Duration::from_secs(120))
                        .send()
                        .unwrap();
                    assert_eq!(r.status().as_u16(), 200);
                    let v: serde_json::Value = r.json().unwrap();
                    v["response"].as_str().unwrap().to_string()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for ((prompt, got), want) in prompts.iter().zip(&answers).zip(&expected) {
        assert!(want.len() >= 8, "{prompt:?}: continuation too short to mean much: {want:?}");
        assert_eq!(got, want, "{prompt:?}: served in parallel vs llama-raw greedy alone");
    }
}

/// A generation that fills its window shifts the context (ABI 1.1 `kv_shift`, Ollama's
/// default) and keeps going to `num_predict`; with `"shift": false` it ends at the window.
#[test]
fn server_shifts_the_context_when_a_generation_fills_it() {
    let dir = tempfile::tempdir().unwrap();
    let Some(plugin) = llama_cpp_plugin_dir(dir.path()) else { return };
    let model = dir.path().join("tiny-f32.gguf");
    generate_model(&model, "tiny", "f32");
    let server = Server::start(
        &[plugin.as_path()],
        &[("CORRAL_CONTEXT_LENGTH", "64"), ("CORRAL_BACKEND", "llama-cpp")],
        &[],
    );
    let generate = |shift: bool| -> serde_json::Value {
        // A string schema too long to finish keeps the model from ending early.
        let body = serde_json::json!({
            "model": model.to_string_lossy(), "prompt": "Once upon a time", "raw": true,
            "stream": false, "shift": shift,
            "format": {"type": "string", "minLength": 900000},
            "options": {"temperature": 0.8, "seed": 1, "num_predict": 150}
        });
        let r = reqwest::blocking::Client::new()
            .post(format!("{}/api/generate", server.url))
            .json(&body)
            .timeout(std::time::Duration::from_secs(120))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.json().unwrap()
    };
    let shifted = generate(true);
    assert_eq!(shifted["done_reason"], "length", "{shifted}");
    assert_eq!(shifted["eval_count"], 150, "went past the 64-token window: {shifted}");
    let stopped = generate(false);
    assert_eq!(stopped["done_reason"], "length", "{stopped}");
    let used =
        stopped["eval_count"].as_u64().unwrap() + stopped["prompt_eval_count"].as_u64().unwrap();
    assert!((60..=64).contains(&used), "without shift the window ends it: {stopped}");
}

/// A Modelfile's MESSAGE lines are a conversation put before the request's, in
/// `/api/chat` as in `corral run` (they used to be dropped by the server). The TEMPLATE
/// renders every message's content in order, so the prompt grows by exactly the
/// MESSAGEs' tokens. A chat over the window drops whole old MESSAGE turns as it drops the
/// request's (Ollama's chatPrompt; they used to be kept, and the tokens cut mid-message).
#[test]
fn modelfile_messages_reach_api_chat() {
    let dir = tempfile::tempdir().unwrap();
    let Some(plugin) = llama_cpp_plugin_dir(dir.path()) else { return };
    let model = dir.path().join("tiny-f32.gguf");
    generate_model(&model, "tiny", "f32");
    let store = dir.path().join("store");
    let template = "{{ range .Messages }}[{{ .Role }}] {{ .Content }}\n{{ end }}";
    for (name, messages) in [
        ("plain", String::new()),
        ("primed", "MESSAGE user Where is Paris?\nMESSAGE assistant In France.\n".to_string()),
        (
            "long",
            format!(
                "PARAMETER num_ctx 256\nMESSAGE user {0}\nMESSAGE assistant {0}\n",
                "Tell me everything about the history of Paris. ".repeat(40)
            ),
        ),
    ] {
        let modelfile = dir.path().join(format!("{name}.Modelfile"));
        std::fs::write(
            &modelfile,
            format!("FROM {}\nTEMPLATE \"\"\"{template}\"\"\"\n{messages}", model.display()),
        )
        .unwrap();
        let mut c = corral(&[plugin.as_path()]);
        c.env("CORRAL_MODELS", &store).args(["create", name, "--local", "-f"]).arg(&modelfile);
        let (out, _, stderr) = run(c);
        assert!(out.status.success(), "create {name}: {stderr}");
    }
    let store_s = store.to_string_lossy().into_owned();
    let server = Server::start(
        &[plugin.as_path()],
        &[("CORRAL_MODELS", store_s.as_str()), ("CORRAL_BACKEND", "llama-cpp")],
        &[],
    );
    let prompt_tokens = |model: &str| {
        let body = serde_json::json!({
            "model": model, "stream": false,
            "messages": [{"role": "user", "content": "And Rome?"}],
            "options": {"temperature": 0, "num_predict": 1}
        });
        let r = reqwest::blocking::Client::new()
            .post(format!("{}/api/chat", server.url))
            .json(&body)
            .timeout(std::time::Duration::from_secs(120))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let v: serde_json::Value = r.json().unwrap();
        v["prompt_eval_count"].as_u64().unwrap()
    };
    let (plain, primed) = (prompt_tokens("plain"), prompt_tokens("primed"));
    // The same texts tokenized raw (BOS added, as the template's prompt gets it).
    let raw_tokens = |text: &str| {
        let mut c = corral(&[plugin.as_path()]);
        c.args(["run", "--local", "--raw", "--num-predict", "1", "--verbose"])
            .arg(&model)
            .arg(text);
        let (out, _, stderr) = run(c);
        assert!(out.status.success(), "{stderr}");
        stderr
            .lines()
            .find_map(|l| l.strip_prefix("prompt eval count:"))
            .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no prompt eval count in {stderr}"))
    };
    let want_plain = raw_tokens("[user] And Rome?\n");
    let want_primed =
        raw_tokens("[user] Where is Paris?\n[assistant] In France.\n[user] And Rome?\n");
    println!(
        "prompt tokens: plain {plain} (raw {want_plain}), with MESSAGEs {primed} (raw {want_primed})"
    );
    assert_eq!(plain, want_plain);
    assert_eq!(primed, want_primed, "the MESSAGEs come before the request's messages");
    // Both long MESSAGEs go whole; the request's message stays whole.
    let long = prompt_tokens("long");
    assert_eq!(long, want_plain, "{}", server.log());
    assert!(
        server.log().contains("chat of 3 messages truncated to its last 1"),
        "{}",
        server.log()
    );
}

/// The real case of an engine that aborts: a GGUF whose vocabulary holds one token
/// string twice makes llama.cpp abort while it loads (`GGML_ASSERT`). Two lines of
/// defence: the plugin checks the vocabulary first and refuses the file with a clear
/// error; with that check switched off (`skip_vocabulary_check`, for this test), llama.cpp
/// aborts, and in `corral serve`'s default process isolation that ends only the model's
/// worker. Either way the request gets a clear error and the server and a second model
/// keep serving, through `/api/generate` and through `/api/create` followed by
/// `/api/chat`.
#[test]
fn a_gguf_that_aborts_llama_cpp_ends_only_its_worker() {
    let dir = tempfile::tempdir().unwrap();
    let Some(plugin) = llama_cpp_plugin_dir(dir.path()) else { return };
    let good = dir.path().join("good.gguf");
    generate_model(&good, "tiny", "f32");
    let bad = dir.path().join("dup-vocab.gguf");
    duplicate_vocab_entry(&good, &bad);
    let unchecked = dir.path().join("unchecked.toml");
    std::fs::write(&unchecked, "[backends.llama-cpp]\nskip_vocabulary_check = true\n").unwrap();
    for (checked, says) in [(true, "appears twice"), (false, "GGML_ASSERT")] {
        let store = dir.path().join(format!("store-{checked}")).to_string_lossy().into_owned();
        let mut args: Vec<&str> = Vec::new();
        let unchecked_s = unchecked.to_string_lossy().into_owned();
        if !checked {
            args.extend(["--config", unchecked_s.as_str()]);
        }
        let server = Server::start(
            &[plugin.as_path()],
            &[("CORRAL_MODELS", store.as_str()), ("CORRAL_BACKEND", "llama-cpp")],
            &args,
        );
        let client = reqwest::blocking::Client::builder()
            .timeout(std::time::Duration::from_secs(120))
            .build()
            .unwrap();
        let post = |path: &str, body: serde_json::Value| {
            let r = client.post(format!("{}{path}", server.url)).json(&body).send().unwrap();
            let status = r.status().as_u16();
            let text = r.text().unwrap();
            (status, serde_json::from_str::<serde_json::Value>(&text).unwrap_or(text.into()))
        };
        let generate = |model: &str| {
            post(
                "/api/generate",
                serde_json::json!({"model": model, "prompt": "Hello", "stream": false,
                                   "options": {"num_predict": 4}}),
            )
        };
        let good_s = good.to_string_lossy().into_owned();
        assert_eq!(generate(&good_s).0, 200, "the good model serves");
        let (st, v) = generate(&bad.to_string_lossy());
        println!("vocabulary check {checked}: /api/generate: {st} {v}");
        assert!(st >= 400, "{v}");
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(msg.contains("could not load") && msg.contains(says), "{msg}");
        if !checked {
            assert!(msg.contains("SIGABRT"), "{msg}");
        }
        let r = client.get(format!("{}/api/version", server.url)).send().unwrap();
        assert_eq!(r.status().as_u16(), 200, "the server is still up");
        assert_eq!(generate(&good_s).0, 200, "the good model still serves");
        // Through the store: create from the bad file, then chat with it.
        let (st, v) =
            post("/api/create", serde_json::json!({"model": "dup", "from": bad, "stream": false}));
        assert_eq!(st, 200, "create: {v}");
        let (st, v) = post(
            "/api/chat",
            serde_json::json!({"model": "dup", "stream": false,
                               "messages": [{"role": "user", "content": "hi"}]}),
        );
        println!("vocabulary check {checked}: /api/chat on the created model: {st} {v}");
        assert!(st >= 400, "{v}");
        assert!(v["error"].as_str().unwrap_or_default().contains(says), "{v}");
        assert_eq!(generate(&good_s).0, 200, "the good model still serves after the chat");
    }
}

/// A model whose `num_ctx` asks for a KV cache larger than the machine's memory is
/// refused with the numbers (507, as an engine out of memory), before anything is
/// allocated; the server goes on serving.
#[test]
fn a_kv_cache_that_cannot_fit_is_refused_before_loading() {
    let dir = tempfile::tempdir().unwrap();
    let Some(plugin) = llama_cpp_plugin_dir(dir.path()) else { return };
    // Trained on 2e9 positions, so that num_ctx is not cut to the training context.
    let model = dir.path().join("tiny-f32.gguf");
    generate_model(&model, "tiny:ctx=2000000000", "f32");
    let store = dir.path().join("store");
    let modelfile = dir.path().join("Modelfile");
    std::fs::write(&modelfile, format!("FROM {}\nPARAMETER num_ctx 2000000000\n", model.display()))
        .unwrap();
    let mut c = corral(&[plugin.as_path()]);
    c.env("CORRAL_MODELS", &store).args(["create", "huge", "--local", "-f"]).arg(&modelfile);
    let (out, _, stderr) = run(c);
    assert!(out.status.success(), "{stderr}");
    let store_s = store.to_string_lossy().into_owned();
    let server = Server::start(
        &[plugin.as_path()],
        &[("CORRAL_MODELS", store_s.as_str()), ("CORRAL_BACKEND", "llama-cpp")],
        &[],
    );
    let post = |model: &str| {
        let r = reqwest::blocking::Client::new()
            .post(format!("{}/api/generate", server.url))
            .json(&serde_json::json!({"model": model, "prompt": "hi", "stream": false,
                                      "options": {"num_predict": 2}}))
            .timeout(std::time::Duration::from_secs(120))
            .send()
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json::<serde_json::Value>().unwrap())
    };
    let (st, v) = post("huge");
    println!("{st} {v}");
    assert_eq!(st, 507, "{v}");
    let msg = v["error"].as_str().unwrap_or_default();
    assert!(msg.contains("num_ctx") && msg.contains("MiB"), "{msg}");
    assert_eq!(post(&model.to_string_lossy()).0, 200, "the server still serves");
}

/// Files llama.cpp loads but then aborts on at their first use, each refused with a
/// message that says what is wrong, the server serving on: a file without a tokenizer
/// (`no_vocab`: its tokenizer asserts) and a pooling type llama.cpp does not define
/// (`GGML_ABORT` when the embedding graph is built). And a SentencePiece vocabulary
/// without a byte token, which llama.cpp looks up with `std::map::at` (its exception
/// crosses the C API) when it spells a character the vocabulary has no piece for: such
/// a model loads and answers, and only a text holding such a character is refused.
#[test]
fn ggufs_that_abort_llama_cpp_at_first_use_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let Some(plugin) = llama_cpp_plugin_dir(dir.path()) else { return };
    let spm = generate_arch_model(dir.path(), "gemma3.gguf", "gemma3");
    let bpe = generate_arch_model(dir.path(), "llama.gguf", "llama");
    let tokens: Vec<String> = corral_gguf::reader::GgufFile::open(&spm)
        .unwrap()
        .get_str_array("tokenizer.ggml.tokens")
        .unwrap()
        .into_iter()
        .map(|t| if t == "<0xE2>" { "<0xE2>gone".to_string() } else { t.to_string() })
        .collect();
    assert!(tokens.iter().any(|t| t == "<0xE2>gone"), "the generated vocabulary has <0xE2>");
    assert!(!tokens.iter().any(|t| t == "☕"), "☕ is spelled by its bytes");
    let no_byte = dir.path().join("no-byte.gguf");
    rewrite_metadata(
        &spm,
        &no_byte,
        &[("tokenizer.ggml.tokens", corral_gguf::Value::string_array(tokens))],
    );
    let no_vocab = dir.path().join("no-vocab.gguf");
    rewrite_metadata(
        &bpe,
        &no_vocab,
        &[("tokenizer.ggml.model", corral_gguf::Value::String("no_vocab".into()))],
    );
    let pooling = dir.path().join("pooling-7.gguf");
    rewrite_metadata(&bpe, &pooling, &[("llama.pooling_type", corral_gguf::Value::U32(7))]);

    let s = Server::start(&[plugin.as_path()], &[], &[]);
    let generate_text = |model: &std::path::Path, prompt: &str| {
        post_json(
            &s.url,
            "/api/generate",
            &serde_json::json!({"model": model, "prompt": prompt, "stream": false,
                                "options": {"num_predict": 4}}),
        )
    };
    let generate = |model: &std::path::Path| generate_text(model, "Café crème");
    let (status, v) = generate(&no_vocab);
    assert!((400..500).contains(&status), "no_vocab: {status} {v}");
    assert!(v["error"].as_str().unwrap_or_default().contains("no tokenizer"), "{v}");
    let (status, v) = generate_text(&no_byte, "Coffee ☕ please");
    assert_eq!(status, 400, "an unspellable text: {v}");
    let msg = v["error"].as_str().unwrap_or_default();
    assert!(msg.contains("cannot spell \"☕\"") && msg.contains("<0xE2>"), "{msg}");
    let (status, v) = generate_text(&no_byte, "Coffee, please");
    assert_eq!(status, 200, "a text the vocabulary spells: {v}");
    let (status, v) = post_json(
        &s.url,
        "/api/embed",
        &serde_json::json!({"model": pooling, "input": "Café crème"}),
    );
    assert!((400..500).contains(&status), "pooling 7: {status} {v}");
    assert!(v["error"].as_str().unwrap_or_default().contains("pooling type 7"), "{v}");
    // Nothing died: the good files still answer.
    let (status, v) = generate(&spm);
    assert_eq!(status, 200, "{v}");
    // A file with a pooling type is an embedding model (Ollama's rule): no generation.
    let (status, v) = generate(&pooling);
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap_or_default().contains("does not support generate"), "{v}");
    assert_eq!(metric(&s, "corral_worker_crashes_total"), 0.0, "no engine worker died");
}

/// A server on the llama.cpp plugin with a model store in `dir`, and a generated llama
/// file to create models from; `None` when the plugin is not built.
fn server_with_a_store(dir: &std::path::Path) -> Option<(Server, std::path::PathBuf)> {
    let plugin = llama_cpp_plugin_dir(&dir.join("plugins"))?;
    let gguf = generate_arch_model(dir, "llama.gguf", "llama");
    let store = dir.join("store");
    let s = Server::start(&[plugin.as_path()], &[("CORRAL_MODELS", store.to_str()?)], &[]);
    Some((s, gguf))
}

/// Copying or creating onto the name of a loaded model makes the scheduler forget the
/// loaded one (the name now means other weights). That once held the scheduler's lock
/// into `loaded()`, which took it again: the copy and every later request hung until
/// SIGKILL. Both answer now, and the next request loads the model under its new meaning.
#[test]
fn copying_onto_a_loaded_models_name_does_not_hang_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let Some((s, gguf)) = server_with_a_store(dir.path()) else { return };
    let quick = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(20))
        .build()
        .unwrap();
    let post = |path: &str, body: &serde_json::Value| {
        let r = quick.post(format!("{}{path}", s.url)).json(body).send();
        let r = r.unwrap_or_else(|err| panic!("{path} hung: {err}\n{}", s.log()));
        (r.status().as_u16(), r.json::<serde_json::Value>().unwrap_or(serde_json::Value::Null))
    };
    for name in ["first", "second"] {
        let (st, v) = post(
            "/api/create",
            &serde_json::json!({"model": name, "modelfile": format!("FROM {}", gguf.display())}),
        );
        assert_eq!(st, 200, "{v}");
    }
    let generate = serde_json::json!({"model": "victim", "prompt": "hi", "stream": false, "options": {"num_predict": 2}});
    assert_eq!(
        post("/api/copy", &serde_json::json!({"source": "first", "destination": "victim"})).0,
        200
    );
    assert_eq!(post("/api/generate", &generate).0, 200, "victim loads");
    assert_eq!(
        post("/api/copy", &serde_json::json!({"source": "second", "destination": "victim"})).0,
        200
    );
    assert_eq!(post("/api/generate", &generate).0, 200, "victim loads again");
    let (st, v) = post(
        "/api/create",
        &serde_json::json!({"model": "victim", "from": "first", "stream": false}),
    );
    assert_eq!(st, 200, "create onto a loaded name: {v}");
    let r = quick.get(format!("{}/api/ps", s.url)).send().expect("the server still answers");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(post("/api/generate", &generate).0, 200);
}

/// An embedding request holds at most 10,000 texts (100,000 one-word inputs held a core
/// for minutes), and one whose client goes away stops at its next
/// input instead of embedding the rest for nobody while other requests wait behind it.
#[test]
fn embedding_requests_are_bounded_and_stop_when_the_client_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let Some(plugin) = llama_cpp_plugin_dir(&dir.path().join("plugins")) else { return };
    let gguf = generate_arch_model(dir.path(), "llama.gguf", "llama");
    let model = gguf.to_string_lossy().to_string();
    let s = Server::start(&[plugin.as_path()], &[], &[]);
    let too_many = vec!["word"; 10_001];
    for path in ["/api/embed", "/v1/embeddings"] {
        let (st, v) =
            post_json(&s.url, path, &serde_json::json!({"model": model, "input": too_many}));
        let v: String = v.to_string().chars().take(300).collect();
        assert_eq!(st, 400, "{path}: {v}");
        assert!(v.contains("10000"), "{path}: {v}");
    }
    // 2,048 long texts: ~27 s of work on a 2-core machine. The client leaves after half a
    // second; before, the next request waited for all of it.
    let long = "the quick brown fox jumps over the lazy dog ".repeat(40);
    let inputs = vec![long.as_str(); 2048];
    let impatient = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_millis(500))
        .build()
        .unwrap();
    let t = std::time::Instant::now();
    let r = impatient
        .post(format!("{}/api/embed", s.url))
        .json(&serde_json::json!({"model": model, "input": inputs}))
        .send();
    assert!(r.is_err(), "2,048 long texts took under half a second: the test needs more work");
    let (st, v) =
        post_json(&s.url, "/api/embed", &serde_json::json!({"model": model, "input": "hi"}));
    assert_eq!(st, 200, "{v}");
    let waited = t.elapsed();
    println!("a one-word embedding answered {waited:?} after the abandoned request began");
    assert!(
        waited < std::time::Duration::from_secs(10),
        "waited {waited:?} behind an abandoned request"
    );
}

/// Deleting a model while requests run on it: they finish (the engine was stopped under
/// requests still being set up, which answered 500 "the engine loop has stopped"), the
/// model leaves `/api/ps` (a request that resolved the name before the delete loaded a
/// deleted model back), the next request is a 404, and no worker "crash" is reported
/// for an engine the server stopped itself.
#[test]
fn deleting_a_model_in_use_lets_its_requests_finish() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let Some((s, gguf)) = server_with_a_store(dir.path()) else { return };
    let modelfile = format!("FROM {}", gguf.display());
    let (st, v) = post_json(
        &s.url,
        "/api/create",
        &serde_json::json!({"model": "victim", "modelfile": modelfile}),
    );
    assert_eq!(st, 200, "{v}");
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let streams: Vec<_> = (0..20)
        .map(|i| {
            let url = s.url.clone();
            let started = started_tx.clone();
            std::thread::spawn(move || {
                let options = serde_json::json!({"num_predict": 300, "temperature": 0});
                let content = format!("story {i}");
                let (path, body) = if i % 2 == 0 {
                    let body = serde_json::json!({"model": "victim", "prompt": content, "options": options});
                    ("/api/generate", body)
                } else {
                    let messages = [serde_json::json!({"role": "user", "content": content})];
                    let body = serde_json::json!({"model": "victim", "messages": messages, "options": options});
                    ("/api/chat", body)
                };
                let r = http_client().post(format!("{url}{path}")).json(&body).send().unwrap();
                let status = r.status().as_u16();
                let mut last = serde_json::Value::Null;
                for line in std::io::BufReader::new(r).lines() {
                    let _ = started.send(());
                    last = serde_json::from_str(&line.unwrap()).unwrap_or_default();
                }
                (status, last)
            })
        })
        .collect();
    // Delete while they stream (and, for the ones still starting, while they set up).
    started_rx.recv_timeout(std::time::Duration::from_secs(60)).expect("a stream started");
    let r = http_client()
        .delete(format!("{}/api/delete", s.url))
        .json(&serde_json::json!({"model": "victim"}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    for t in streams {
        let (status, last) = t.join().unwrap();
        assert_eq!(status, 200, "{last}");
        assert_eq!(last["done"], true, "a request running when its model was deleted: {last}");
    }
    let (st, ps) = get_json(&s.url, "/api/ps");
    assert_eq!(st, 200);
    assert!(!ps.to_string().contains("victim"), "a deleted model stays loaded: {ps}");
    let again = serde_json::json!({"model": "victim", "prompt": "hi", "stream": false});
    assert_eq!(post_json(&s.url, "/api/generate", &again).0, 404);
    assert_eq!(metric(&s, "corral_worker_crashes_total"), 0.0, "{}", s.log());
    assert!(!s.log().contains("crashed"), "{}", s.log());
}
