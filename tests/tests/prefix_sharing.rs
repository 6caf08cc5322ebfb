//! Work shared across requests: a prompt prefix that another sequence holds, or is
//! computing right now, is copied into the new request's sequence instead of computed
//! again, and the answers are exactly those computed without sharing. On the example
//! plugin (whose logits hash everything a sequence's cache holds, so a wrong copy
//! changes the answer) and on llama.cpp (which copies between per-sequence streams only
//! whole: the host copies the whole sequence and cuts it).

use std::path::Path;

use corral_e2e::*;
use serde_json::{Value, json};

fn generate(url: &str, model: &str, prompt: &str) -> Value {
    let (status, v) = post_json(
        url,
        "/api/generate",
        &json!({"model": model, "prompt": prompt,
        "raw": true, "stream": false, "options": {"num_predict": 12, "temperature": 0}}),
    );
    assert_eq!(status, 200, "{v}");
    v
}

/// Sends `prompts` at once; returns (response, prompt_eval_count) in order.
fn concurrently(url: &str, model: &str, prompts: &[String]) -> Vec<(String, u64)> {
    let threads: Vec<_> = prompts
        .iter()
        .map(|p| {
            let (url, model, p) = (url.to_string(), model.to_string(), p.clone());
            std::thread::spawn(move || {
                let v = generate(&url, &model, &p);
                (
                    v["response"].as_str().unwrap().to_string(),
                    v["prompt_eval_count"].as_u64().unwrap(),
                )
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// Four requests sharing a long prefix, one by one on fresh servers and then at once:
/// the same answers, and the shared part computed about once.
fn check_sharing(plugins: &Path, model: &str, shared: &str) {
    let prompts: Vec<String> =
        (0..4).map(|i| format!("{shared} Question {i}: what is item {i}?")).collect();
    let vars = [("CORRAL_NUM_PARALLEL", "4")];
    // Tokens run through the engine: the server's counter (prompt_eval_count is the whole
    // prompt, cached prefix included, as Ollama reports it).
    let evaluated = |s: &Server| metric(s, "corral_prompt_tokens_total") as u64;
    let alone: Vec<(String, u64)> = prompts
        .iter()
        .map(|p| {
            let s = Server::start(&[plugins], &vars, &[]);
            let v = generate(&s.url, model, p);
            (v["response"].as_str().unwrap().to_string(), evaluated(&s))
        })
        .collect();
    let s = Server::start(&[plugins], &vars, &[]);
    let together = concurrently(&s.url, model, &prompts);
    for i in 0..4 {
        assert_eq!(together[i].0, alone[i].0, "prompt {i}: sharing changed the answer");
        assert_eq!(together[i].1, alone[i].1, "prompt {i}: the whole prompt is reported");
    }
    let total = evaluated(&s);
    let one = alone.iter().map(|r| r.1).min().unwrap();
    // Computed about once: far less than four times.
    assert!(
        total < one * 2,
        "{total} prompt tokens evaluated for 4 prompts of ~{one}: {together:?}"
    );
}

#[test]
fn a_shared_prefix_is_computed_once_and_answers_do_not_change_on_the_example_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    example_plugin_dir(&plugins);
    let model = dir.path().join("m.toy");
    std::fs::write(&model, "toy weights").unwrap();
    // The toy tokenizer is bytes: 1,500 tokens of shared prompt.
    let shared: String = (0..150).map(|i| format!("line {i:04}.")).collect();
    check_sharing(&plugins, &model.to_string_lossy(), &shared);
}

#[test]
fn a_shared_prefix_is_computed_once_and_answers_do_not_change_on_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_) = llama_cpp_plugin_dir(dir.path()) else { return };
    let model = dir.path().join("tiny.gguf");
    generate_model(&model, "tiny", "f32");
    let shared: String = (0..50).map(|i| format!("Fact {i}: the sky is blue. ")).collect();
    // About 400 tokens: inside the generated model's 512-token window.
    check_sharing(dir.path(), &model.to_string_lossy(), &shared);
}

/// With llama.cpp's CPU flash attention on, prompt chunks are cut to its 64-row tiles
/// (`LoopConfig::prompt_quantum`): prompts of a tile and a little more, two tiles and
/// more, sent while others decode, all finish with the answers they get alone.
#[test]
fn prompts_cut_to_attention_tiles_answer_as_alone_on_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_) = llama_cpp_plugin_dir(dir.path()) else { return };
    let model = dir.path().join("tiny.gguf");
    generate_model(&model, "tiny", "f32");
    let model = model.to_string_lossy().into_owned();
    let vars = [("CORRAL_NUM_PARALLEL", "4"), ("CORRAL_FLASH_ATTENTION", "on")];
    // Unrelated prompts of different lengths: no prefix to share.
    let prompts: Vec<String> = [9, 17, 26, 40]
        .iter()
        .enumerate()
        .map(|(i, &n)| (0..n).map(|k| format!("w{i}x{k} ")).collect())
        .collect();
    let alone: Vec<String> = prompts
        .iter()
        .map(|p| {
            let s = Server::start(&[dir.path()], &vars, &[]);
            generate(&s.url, &model, p)["response"].as_str().unwrap().to_string()
        })
        .collect();
    let s = Server::start(&[dir.path()], &vars, &[]);
    let together = concurrently(&s.url, &model, &prompts);
    assert!(s.log().contains("attention tiles of 64 rows"), "{}", s.log());
    for (i, (response, evaluated)) in together.iter().enumerate() {
        println!("prompt {i}: {evaluated} tokens");
        assert_eq!(response, &alone[i], "prompt {i}: the chunking changed the answer");
    }
}
