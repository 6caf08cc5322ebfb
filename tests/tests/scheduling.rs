//! How the engine loop schedules prompts: requests that arrive together have their
//! prompts evaluated one after the other, so the first streams after its own prompt, not
//! after everyone's, and the work done is the same. The example plugin's `token_cost`
//! trigger makes every decode take a fixed time per batch entry, as a compute-bound engine
//! does, so the times are the schedule's and not the machine's.

use std::{
    io::{BufRead, BufReader},
    time::{Duration, Instant},
};

use corral_e2e::*;
use serde_json::{Value, json};

/// Time per batch entry of the toy engine.
const TOKEN_COST_US: u64 = 4000;

/// Streams one generation; returns (seconds to the first streamed text, final chunk).
fn stream_generate(url: &str, model: &str, prompt: &str, start: Instant) -> (f64, Value) {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("http client");
    let body = json!({"model": model, "prompt": prompt, "raw": true, "stream": true,
                      "options": {"num_predict": 3, "temperature": 0}});
    let resp = client.post(format!("{url}/api/generate")).json(&body).send().expect("request");
    assert_eq!(resp.status().as_u16(), 200);
    let mut first = None;
    let mut last = Value::Null;
    for line in BufReader::new(resp).lines() {
        let line = line.expect("stream line");
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line).expect("NDJSON line");
        assert!(v.get("error").is_none(), "{v}");
        if first.is_none() && v["response"].as_str().is_some_and(|s| !s.is_empty()) {
            first = Some(start.elapsed().as_secs_f64());
        }
        last = v;
    }
    (first.unwrap_or_else(|| start.elapsed().as_secs_f64()), last)
}

#[test]
fn prompts_that_arrive_together_are_evaluated_one_after_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    example_plugin_dir(&plugins);
    let model = dir.path().join("slow.toy");
    std::fs::write(&model, format!("toy weights slow\ntoken_cost={TOKEN_COST_US}\n")).unwrap();
    let model = model.to_string_lossy().into_owned();
    let store = dir.path().join("store").to_string_lossy().into_owned();
    let s = Server::start(
        &[plugins.as_path()],
        &[("CORRAL_MODELS", store.as_str()), ("CORRAL_NUM_PARALLEL", "4")],
        &[],
    );
    // Load the model first, so the four requests find it loaded.
    stream_generate(&s.url, &model, "warm", Instant::now());

    // Four prompts of about 100 tokens (the toy engine's tokens are bytes), sharing
    // nothing (each starts with its own letter), sent at once.
    let prompts: Vec<String> = (0..4u8)
        .map(|i| {
            let c = char::from(b'a' + i);
            format!("{c} {}", "some words of a prompt ".repeat(4))
        })
        .collect();
    let start = Instant::now();
    let threads: Vec<_> = prompts
        .iter()
        .map(|p| {
            let (url, model, p) = (s.url.clone(), model.clone(), p.clone());
            std::thread::spawn(move || stream_generate(&url, &model, &p, start))
        })
        .collect();
    let results: Vec<(f64, Value)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let wall = start.elapsed().as_secs_f64();
    for (_, last) in &results {
        assert_eq!(last["done"], true, "{last}");
        assert_eq!(last["eval_count"], 3, "{last}");
    }
    // The server's time to the first token: everything before the first sampled token
    // (the toy engine's first bytes may be held back as incomplete text, so the first
    // streamed text can come a step later).
    let server_ttft = |v: &Value| {
        (v["total_duration"].as_f64().unwrap() - v["eval_duration"].as_f64().unwrap()) / 1e9
    };
    let mut ttft: Vec<f64> = results.iter().map(|r| server_ttft(&r.1)).collect();
    ttft.sort_by(f64::total_cmp);
    let prompt_tokens: u64 =
        results.iter().map(|r| r.1["prompt_eval_count"].as_u64().unwrap()).sum();
    let one_prompt = prompt_tokens as f64 / 4.0 * TOKEN_COST_US as f64 / 1e6;
    eprintln!("times to first token {ttft:?}, wall {wall:.2} s, one prompt {one_prompt:.2} s");
    // One after the other: the first token of the first request comes after about one
    // prompt's time, the second after about two; evaluated all together, the first three
    // would come after the second-to-last prompt at the earliest.
    assert!(ttft[0] < 1.8 * one_prompt, "first after {:.2} s: {ttft:?}", ttft[0]);
    assert!(ttft[1] < 2.8 * one_prompt, "second after {:.2} s: {ttft:?}", ttft[1]);
    assert!(ttft[1] < 0.8 * ttft[3], "not one after the other: {ttft:?}");
    // The same work as evaluating them together: four prompts and three tokens each,
    // in steps that cost per entry.
    let work = 4.0 * one_prompt + 12.0 * TOKEN_COST_US as f64 / 1e6;
    assert!(wall < work * 1.5 + 1.0, "wall {wall:.2} s for {work:.2} s of work");
}
