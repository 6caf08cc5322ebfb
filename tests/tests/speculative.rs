//! Speculative decoding through the real server: greedy text is the same with and
//! without it (prompt lookup on the example plugin, whose logits hash everything a
//! sequence's cache holds, so a rejected draft left in the cache would change the
//! answer; and on llama.cpp with a generated model), a draft model, the counters, and a
//! client that goes away in the middle of a speculating generation.

use std::{io::Read, path::Path, time::Duration};

use corral_e2e::*;
use serde_json::{Value, json};

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(300)).build().unwrap()
}

fn generate(url: &str, model: &str, prompt: &str, options: Value) -> Value {
    let r = client()
        .post(format!("{url}/api/generate"))
        .json(&json!({"model": model, "prompt": prompt, "raw": true, "stream": false,
                      "options": options}))
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().unwrap();
    assert_eq!(status, 200, "{v}");
    v
}

/// A counter of `/metrics`.
fn metric(url: &str, name: &str) -> u64 {
    let text = client().get(format!("{url}/metrics")).send().unwrap().text().unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

/// The same greedy request with speculation off, prompt lookup forced and the default
/// (auto): the same text and token count; prompt lookup decoded drafts. Returns
/// (drafted, accepted) of the forced run.
fn same_greedy_text(
    plugins: &Path,
    model: &str,
    prompt: &str,
    mut base: Value,
    env: &[(&str, &str)],
) -> (u64, u64) {
    let s = Server::start(&[plugins], env, &[]);
    base["temperature"] = json!(0);
    let n = base["num_predict"].as_u64().unwrap();
    let with = |mode: Option<&str>| {
        let mut o = base.clone();
        if let Some(m) = mode {
            o["speculative"] = json!(m);
        }
        generate(&s.url, model, prompt, o)
    };
    let off = with(Some("off"));
    assert_eq!(metric(&s.url, "corral_draft_tokens_total"), 0, "off drafts nothing");
    let on = with(Some("ngram"));
    let drafted = metric(&s.url, "corral_draft_tokens_total");
    let accepted = metric(&s.url, "corral_draft_accepted_total");
    let auto = with(None);
    for v in [&on, &auto] {
        assert_eq!(v["response"], off["response"], "speculation changed greedy text");
        assert_eq!(v["eval_count"], off["eval_count"]);
        assert_eq!(v["done_reason"], off["done_reason"]);
        assert!(v["eval_duration"].as_u64().unwrap() > 0);
    }
    // The toy model may end early with its end-of-sequence token.
    assert!(on["eval_count"].as_u64().unwrap() <= n, "{on}");
    assert!(on["eval_count"].as_u64().unwrap() > 10, "{on}");
    assert!(drafted > 0, "ngram speculation drafted nothing");
    assert!(accepted <= drafted);
    (drafted, accepted)
}

fn example_setup(dir: &Path) -> (std::path::PathBuf, String) {
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    example_plugin_dir(&plugins);
    let model = dir.join("m.toy");
    std::fs::write(&model, "toy weights").unwrap();
    (plugins, model.to_string_lossy().into_owned())
}

#[test]
fn greedy_text_is_the_same_with_and_without_speculation_on_the_example_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let (plugins, model) = example_setup(dir.path());
    // Bytes are tokens: a prompt with repeats, so lookups find continuations.
    let prompt: String = (0..40).map(|i| format!("ab{}cd ", i % 7)).collect();
    // Penalties over a short window: they see each position's own history, and leave
    // room for repeats (the toy model's greedy text never repeats under a long one).
    let options = json!({"num_predict": 200, "repeat_penalty": 1.3, "repeat_last_n": 6,
                         "presence_penalty": 0.2, "frequency_penalty": 0.1});
    let (drafted, _) = same_greedy_text(&plugins, &model, &prompt, options, &[]);
    println!("example plugin: {drafted} draft tokens");
    // And with several sequences at once in one batch.
    let s = Server::start(&[&plugins], &[("CORRAL_NUM_PARALLEL", "3")], &[]);
    let prompts: Vec<String> = (0..3).map(|i| format!("{prompt} variant {i} {prompt}")).collect();
    let alone: Vec<Value> = prompts
        .iter()
        .map(|p| {
            let o = json!({"temperature": 0, "num_predict": 64, "repeat_penalty": 1.0,
                           "speculative": "off"});
            generate(&s.url, &model, p, o)
        })
        .collect();
    let threads: Vec<_> = prompts
        .iter()
        .map(|p| {
            let (url, model, p) = (s.url.clone(), model.clone(), p.clone());
            std::thread::spawn(move || {
                let o = json!({"temperature": 0, "num_predict": 64, "repeat_penalty": 1.0,
                               "speculative": "ngram"});
                generate(&url, &model, &p, o)
            })
        })
        .collect();
    for (t, a) in threads.into_iter().zip(&alone) {
        let v = t.join().unwrap();
        assert_eq!(v["response"], a["response"]);
        assert_eq!(v["eval_count"], a["eval_count"]);
    }
}

#[test]
fn sampled_requests_speculate_and_bad_settings_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (plugins, model) = example_setup(dir.path());
    let s = Server::start(
        &[&plugins],
        &[("CORRAL_SPECULATIVE", "ngram"), ("CORRAL_DRAFT_MAX", "4")],
        &[],
    );
    let prompt: String = (0..30).map(|i| format!("xy{} ", i % 3)).collect();
    let a = generate(&s.url, &model, &prompt, json!({"seed": 7, "num_predict": 80}));
    let n = a["eval_count"].as_u64().unwrap();
    assert!(n == 80 || a["done_reason"] == "stop", "{a}");
    assert_eq!(a["prompt_eval_count"].as_u64(), Some(1 + prompt.len() as u64), "{a}");
    assert!(metric(&s.url, "corral_draft_tokens_total") > 0, "the server's ngram default drafts");
    // The same seed gives the same text with speculation (the RNG is consumed the same way).
    let b = generate(&s.url, &model, &prompt, json!({"seed": 7, "num_predict": 80}));
    assert_eq!(a["response"], b["response"]);
    // A structured-output request does not speculate (exactness would need the grammar
    // at every draft), and still answers.
    let before = metric(&s.url, "corral_draft_tokens_total");
    let r = client()
        .post(format!("{}/api/generate", s.url))
        .json(&json!({"model": model, "prompt": prompt, "raw": true, "stream": false,
                      "format": "json", "options": {"num_predict": 20, "temperature": 0}}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        metric(&s.url, "corral_draft_tokens_total"),
        before,
        "a grammar turns speculation off"
    );
    for bad in [json!({"speculative": "fast"}), json!({"draft_max": 0}), json!({"draft_max": 65})] {
        let r = client()
            .post(format!("{}/api/generate", s.url))
            .json(&json!({"model": model, "prompt": "x", "stream": false, "options": bad}))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{bad}");
    }
    drop(s);
    // A bad server setting is refused at start.
    let mut c = corral(&[plugins.as_path()]);
    c.args(["serve", "--host", "127.0.0.1:0"]).env("CORRAL_SPECULATIVE", "sometimes");
    let (out, _, stderr) = run(c);
    assert!(!out.status.success());
    assert!(stderr.contains("sometimes") && stderr.contains("ngram"), "{stderr}");
}

/// A client that goes away while its sequence speculates frees the sequence: the model's
/// only slot serves the next request.
#[test]
fn a_client_that_disconnects_mid_speculation_frees_its_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let (plugins, model) = example_setup(dir.path());
    let s = Server::start(&[&plugins], &[("CORRAL_NUM_PARALLEL", "1")], &[]);
    let prompt: String = (0..60).map(|i| format!("ab{} ", i % 5)).collect();
    // The prompt makes the sequence speculate.
    let o = json!({"temperature": 0, "num_predict": 200, "repeat_penalty": 1.0, "speculative": "ngram"});
    let v = generate(&s.url, &model, &prompt, o);
    let drafted = metric(&s.url, "corral_draft_tokens_total");
    assert!(drafted > 0, "it speculates: {v}");
    let n = v["eval_count"].as_u64().unwrap();
    let mut r = client()
        .post(format!("{}/api/generate", s.url))
        .json(&json!({"model": model, "prompt": prompt, "raw": true, "stream": true,
                      "options": {"temperature": 0, "num_predict": -1, "repeat_penalty": 1.0,
                                  "speculative": "ngram"}}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let mut buf = [0u8; 2048];
    let mut got = 0u64;
    // Half of what the whole answer streams: the sequence is still running.
    let whole = n * 100;
    while got < whole / 2 {
        let n = r.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended early");
        got += n as u64;
    }
    drop(r);
    // The one slot is free again: a new request answers promptly.
    let t = std::time::Instant::now();
    let v = generate(&s.url, &model, "hello", json!({"temperature": 0, "num_predict": 5}));
    assert_eq!(v["eval_count"], 5);
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    // Nothing is active any more.
    let ps: Value = client().get(format!("{}/api/ps", s.url)).send().unwrap().json().unwrap();
    assert_eq!(ps["models"][0]["active_sequences"], 0, "{ps}");
}

#[test]
fn greedy_text_is_the_same_with_and_without_speculation_on_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let Some(plugins) = llama_cpp_plugin_dir(dir.path()) else { return };
    let model = dir.path().join("tiny.gguf");
    generate_model(&model, "tiny", "f32");
    let passage = "The quick brown fox jumps over the lazy dog. ";
    let prompt = format!("Repeat: {passage}{passage}{passage}{passage}");
    let options = json!({"num_predict": 120, "repeat_penalty": 1.1, "repeat_last_n": 16});
    let env = [("CORRAL_BACKEND", "llama-cpp")];
    let (drafted, accepted) =
        same_greedy_text(&plugins, &model.to_string_lossy(), &prompt, options, &env);
    println!("llama.cpp: {accepted} of {drafted} draft tokens accepted");
}

/// A draft model (`PARAMETER draft_model`): the same greedy text; the target itself as
/// its own draft is accepted almost always; a draft of another vocabulary is refused.
#[test]
fn a_draft_model_on_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let Some(plugins) = llama_cpp_plugin_dir(dir.path()) else { return };
    let target = dir.path().join("target.gguf");
    generate_model(&target, "tiny", "f32");
    let small = dir.path().join("draft.gguf");
    let mut c = corral(&[]);
    c.args(["model", "generate"]).arg(&small).args(["--shape", "tiny:n_layer=1", "--seed", "7"]);
    assert!(run(c).0.status.success());
    let other_vocab = dir.path().join("spm.gguf");
    let mut c = corral(&[]);
    c.args(["model", "generate"]).arg(&other_vocab).args(["--vocab", "spm"]);
    assert!(run(c).0.status.success());
    let store = dir.path().join("store");
    let create = |name: &str, draft: &Path| {
        let modelfile = dir.path().join(format!("{name}.Modelfile"));
        std::fs::write(
            &modelfile,
            format!("FROM {}\nPARAMETER draft_model {}\n", target.display(), draft.display()),
        )
        .unwrap();
        let mut c = corral(&[plugins.as_path()]);
        c.env("CORRAL_MODELS", &store).args(["create", name, "--local", "-f"]).arg(&modelfile);
        let (out, _, stderr) = run(c);
        assert!(out.status.success(), "{stderr}");
    };
    create("with-small", &small);
    create("with-self", &target);
    create("with-spm", &other_vocab);
    let store_s = store.to_string_lossy().into_owned();
    let s = Server::start(
        &[plugins.as_path()],
        &[("CORRAL_MODELS", store_s.as_str()), ("CORRAL_BACKEND", "llama-cpp")],
        &[],
    );
    let prompt = "Once upon a time there was a little model that";
    let greedy = |model: &str, mode: &str| {
        generate(
            &s.url,
            model,
            prompt,
            json!({"temperature": 0, "num_predict": 48, "speculative": mode}),
        )
    };
    let off = greedy(&target.to_string_lossy(), "off");
    let small_run = greedy("with-small", "draft");
    let after_small = metric(&s.url, "corral_draft_tokens_total");
    assert!(after_small > 0, "the draft model drafted");
    let accepted_small = metric(&s.url, "corral_draft_accepted_total");
    let self_run = greedy("with-self", "draft");
    let drafted = metric(&s.url, "corral_draft_tokens_total") - after_small;
    let accepted = metric(&s.url, "corral_draft_accepted_total") - accepted_small;
    for v in [&small_run, &self_run] {
        assert_eq!(v["response"], off["response"], "a draft model changed greedy text");
        assert_eq!(v["eval_count"], off["eval_count"]);
    }
    println!(
        "small draft: {accepted_small} accepted of {after_small}; self-draft: {accepted} of {drafted}"
    );
    assert!(accepted * 2 > drafted, "the target as its own draft is mostly accepted");
    // A draft model's weights and cache count in its model's memory (`/api/ps`, and so
    // in what the scheduler evicts for): the target as its own draft costs twice the
    // target alone.
    let ps: Value = client().get(format!("{}/api/ps", s.url)).send().unwrap().json().unwrap();
    let size_of = |name: &str| {
        ps["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name || m["name"] == format!("{name}:latest"))
            .and_then(|m| m["size"].as_u64())
            .unwrap_or_else(|| panic!("{name} is not in {ps}"))
    };
    let alone = size_of(&target.to_string_lossy());
    assert_eq!(size_of("with-self"), 2 * alone, "{ps}");
    assert!(size_of("with-small") > alone, "{ps}");
    // Sampling with a draft model answers with the right count.
    let v = generate(
        &s.url,
        "with-small",
        prompt,
        json!({"seed": 3, "num_predict": 30, "speculative": "draft"}),
    );
    assert_eq!(v["eval_count"], 30);
    // Another vocabulary is refused with a clear message.
    let r = client()
        .post(format!("{}/api/generate", s.url))
        .json(&json!({"model": "with-spm", "prompt": prompt, "stream": false}))
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().unwrap();
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("vocabulary"), "{v}");
}
