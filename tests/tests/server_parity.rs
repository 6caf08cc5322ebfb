//! Parity with what clients of Ollama, vLLM and llama-server send, end to end on the
//! example plugin (format `toy`): the real binary, real HTTP. Fields a client adds are
//! accepted (honoured when corral has the feature, else named in
//! `X-Corral-Ignored-Fields`), wrongly typed known fields are still a 400; `num_ctx`
//! reloads the model; `/api/embed`'s `dimensions` and `truncate`; `think` levels;
//! `/api/show`'s capabilities; `/api/ps`'s fields.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use corral_e2e::*;
use serde_json::{Value, json};

const HEADER: &str = "x-corral-ignored-fields";

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build().unwrap()
}

struct Env {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    plugins: PathBuf,
    model: String,
}

/// A plugin directory with the example plugin, also claiming GGUF files (so that
/// `/api/show` reads generated GGUF metadata and the memory check sees a GGUF estimate;
/// the toy engine never loads one).
fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let manifest = example_manifest("cpu", ABI, "libcorral_plugin_example.so")
        .replace("formats = [\"toy\"]", "formats = [\"toy\", \"gguf\"]");
    plugin_dir(&plugins, "example", &manifest, Some(&plugin_lib("libcorral_plugin_example.so")));
    let model = dir.path().join("a.toy");
    std::fs::write(&model, "toy weights a").unwrap();
    Env {
        dir: dir.path().to_path_buf(),
        plugins,
        model: model.to_string_lossy().into_owned(),
        _dir: dir,
    }
}

fn start(e: &Env, vars: &[(&str, &str)]) -> Server {
    Server::start(&[e.plugins.as_path()], vars, &[])
}

/// POST; the status, the ignored-fields header and the body.
fn post_h(s: &Server, path: &str, body: &Value) -> (u16, Option<String>, Value) {
    let r = client().post(format!("{}{path}", s.url)).json(body).send().unwrap();
    let status = r.status().as_u16();
    let header = r.headers().get(HEADER).map(|v| v.to_str().unwrap().to_string());
    let text = r.text().unwrap();
    (status, header, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn post(s: &Server, path: &str, body: &Value) -> (u16, Value) {
    let (st, _, v) = post_h(s, path, body);
    (st, v)
}

fn ps_models(s: &Server) -> Vec<Value> {
    let r = client().get(format!("{}/api/ps", s.url)).send().unwrap();
    let v: Value = r.json().unwrap();
    v["models"].as_array().cloned().unwrap_or_default()
}

/// A GGUF holding only metadata (no tensors): enough for `/api/show` and the memory
/// estimate.
fn metadata_gguf(path: &Path, kv: &[(&str, corral_gguf::Value)]) {
    let mut b = corral_gguf::writer::GgufBuilder::new();
    for (k, v) in kv {
        b.add_metadata(*k, v.clone()).unwrap();
    }
    let file = std::fs::File::create(path).unwrap();
    b.begin(file).unwrap().finish().unwrap();
}

fn text_of(v: &Value) -> String {
    v["choices"][0]["text"].as_str().unwrap().to_string()
}

#[test]
fn openai_sampling_extensions_are_honoured() {
    let e = env();
    let s = start(&e, &[("CORRAL_NUM_PARALLEL", "1")]);
    let complete = |extra: Value| {
        let mut b = json!({"model": e.model, "prompt": "Once upon a time", "max_tokens": 24});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let (st, h, v) = post_h(&s, "/v1/completions", &b);
        assert_eq!(st, 200, "{v}");
        (h, v)
    };
    let (h, greedy) = complete(json!({"temperature": 0}));
    assert_eq!(h, None, "nothing ignored, no header");
    let greedy = text_of(&greedy);
    // top_k 1 and min_p 1 are greedy at any temperature; without them, a seeded draw at
    // temperature 2 is not.
    let (h, v) = complete(json!({"temperature": 2, "seed": 3, "top_k": 1}));
    assert_eq!(h, None);
    assert_eq!(text_of(&v), greedy);
    let (_, v) = complete(json!({"temperature": 2, "seed": 3, "top_k": 0, "min_p": 1.0}));
    assert_eq!(text_of(&v), greedy);
    let (_, v) = complete(json!({"temperature": 2, "seed": 3, "top_k": -1}));
    assert_ne!(text_of(&v), greedy, "vLLM's top_k -1 is all tokens");
    // The same on chat completions.
    let chat = |extra: Value| {
        let mut b = json!({"model": e.model, "messages": [{"role": "user", "content": "hi"}],
                           "max_tokens": 16});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let (st, v) = post(&s, "/v1/chat/completions", &b);
        assert_eq!(st, 200, "{v}");
        v["choices"][0]["message"]["content"].as_str().unwrap().to_string()
    };
    assert_eq!(
        chat(json!({"temperature": 2, "seed": 9, "top_k": 1})),
        chat(json!({"temperature": 0}))
    );
    // repetition_penalty (vLLM) and repeat_penalty (llama-server) reach the sampler.
    let plain = text_of(&complete(json!({"temperature": 0, "repetition_penalty": 1.0})).1);
    let (_, strong) = complete(json!({"temperature": 0, "repetition_penalty": 100.0,
                                      "repeat_last_n": 64}));
    assert_ne!(text_of(&strong), plain, "a strong penalty changes a greedy text");
    let (_, strong2) = complete(json!({"temperature": 0, "repeat_penalty": 100.0}));
    assert_eq!(text_of(&strong2), text_of(&strong));
    // Out-of-range values are checked as options: they are read.
    for (field, value, named) in [
        ("repetition_penalty", json!(0), "repeat_penalty"),
        ("typical_p", json!(0), "typical_p"),
        ("min_p", json!(2), "min_p"),
        ("repeat_last_n", json!(-5), "repeat_last_n"),
    ] {
        let (st, v) = post(
            &s,
            "/v1/completions",
            &json!({"model": e.model, "prompt": "x", "max_tokens": 2, field: value}),
        );
        assert_eq!(st, 400, "{field}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(named), "{v}");
    }
    // ignore_eos: the toy model samples its end-of-sequence tokens now and then at
    // temperature 2; with ignore_eos every answer runs to max_tokens.
    let mut stopped_early = 0;
    for seed in 0..12 {
        let body = |ignore: bool| {
            json!({"model": e.model, "prompt": "Tell", "max_tokens": 150, "temperature": 2,
                   "top_k": 0, "seed": seed, "ignore_eos": ignore})
        };
        let (st, v) = post(&s, "/v1/completions", &body(false));
        assert_eq!(st, 200, "{v}");
        if v["usage"]["completion_tokens"].as_u64().unwrap() < 150 {
            assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
            stopped_early += 1;
        }
        let (st, v) = post(&s, "/v1/completions", &body(true));
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["usage"]["completion_tokens"], 150, "{v}");
        assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
    }
    assert!(stopped_early > 0, "some seed ends early without ignore_eos");
    let (st, v) = post(
        &s,
        "/v1/chat/completions",
        &json!({"model": e.model, "messages": [{"role": "user", "content": "x"}],
                "max_tokens": 100, "temperature": 2, "top_k": 0, "seed": 1, "ignore_eos": true}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 100, "{v}");
    // cache_prompt: true (the default) reuses the cached prefix; false evaluates it anew.
    let cached = |cache: bool| {
        let (st, v) = post(
            &s,
            "/v1/completions",
            &json!({"model": e.model, "prompt": "The same long prompt, twice over.",
                    "max_tokens": 2, "temperature": 0, "cache_prompt": cache}),
        );
        assert_eq!(st, 200, "{v}");
        v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap()
    };
    cached(true);
    assert!(cached(true) > 0);
    assert_eq!(cached(false), 0);
    assert!(cached(true) > 0);
}

#[test]
fn unknown_fields_are_accepted_and_named_and_wrong_types_refused() {
    let e = env();
    let s = start(&e, &[]);
    let m = e.model.as_str();
    let cases = [
        (
            "/api/generate",
            json!({"model": m, "prompt": "hi", "stream": false, "newer_field": {"a": 1},
                   "options": {"num_predict": 3, "tmperature": 0.5, "num_gpu": 1}}),
            "newer_field, options.tmperature",
        ),
        (
            "/api/chat",
            json!({"model": m, "messages": [{"role": "user", "content": "hi"}], "stream": false,
                   "foo": 1, "options": {"num_predict": 3}}),
            "foo",
        ),
        ("/api/embed", json!({"model": m, "input": "hi", "foo": true}), "foo"),
        ("/api/embeddings", json!({"model": m, "prompt": "hi", "bar": null}), "bar"),
        ("/api/show", json!({"model": m, "baz": 1}), "baz"),
        (
            "/v1/chat/completions",
            json!({"model": m, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
                   "mirostat": 2, "chat_template_kwargs": {}, "cache_prompt": true}),
            "mirostat, chat_template_kwargs",
        ),
        (
            "/v1/completions",
            json!({"model": m, "prompt": "hi", "max_tokens": 3, "n_probs": 3,
                   "stream_options": {"include_usage": true, "continuous_usage_stats": true},
                   "stream": true}),
            "n_probs, stream_options.continuous_usage_stats",
        ),
        (
            "/v1/embeddings",
            json!({"model": m, "input": "hi", "truncate_prompt_tokens": 5}),
            "truncate_prompt_tokens",
        ),
    ];
    for (path, body, named) in cases {
        let (st, h, v) = post_h(&s, path, &body);
        assert_eq!(st, 200, "{path}: {v}");
        // In the order the body has them (this client's serde_json may sort keys).
        let sorted = |h: &str| {
            let mut v: Vec<String> = h.split(", ").map(str::to_string).collect();
            v.sort();
            v
        };
        assert_eq!(h.as_deref().map(sorted), Some(sorted(named)), "{path}");
    }
    assert!(s.log().contains("invalid option provided"), "{}", s.log());
    // The header comes with errors too.
    let (st, h, _) =
        post_h(&s, "/api/generate", &json!({"model": "nothere", "prompt": "x", "zz": 1}));
    assert_eq!((st, h.as_deref()), (404, Some("zz")));
    // A known field of the wrong type is still a 400 that names it.
    for (path, body, named) in [
        ("/api/generate", json!({"model": m, "prompt": "hi", "stream": "yes"}), "stream"),
        ("/api/chat", json!({"model": m, "messages": "hi"}), "messages"),
        ("/api/embed", json!({"model": m, "input": "hi", "dimensions": "4"}), "dimensions"),
        ("/api/show", json!({"model": 5}), "model"),
        (
            "/v1/chat/completions",
            json!({"model": m, "messages": [{"role": "user", "content": "hi"}], "top_k": "x"}),
            "top_k",
        ),
        ("/v1/completions", json!({"model": m, "prompt": "hi", "ignore_eos": "yes"}), "ignore_eos"),
        ("/v1/completions", json!({"model": m, "prompt": "hi", "cache_prompt": 1}), "cache_prompt"),
        ("/v1/embeddings", json!({"model": m, "input": "hi", "dimensions": -1}), "dimensions"),
        (
            "/api/generate",
            json!({"model": m, "prompt": "hi", "options": {"top_k": "many"}}),
            "top_k",
        ),
    ] {
        let (st, v) = post(&s, path, &body);
        assert_eq!(st, 400, "{path} {body}: {v}");
        let msg = v["error"].as_str().or_else(|| v["error"]["message"].as_str()).unwrap();
        assert!(msg.contains(named), "{path}: {msg}");
    }
}

#[test]
fn num_ctx_reloads_the_model_and_shows_in_ps() {
    let e = env();
    let s = start(&e, &[("CORRAL_NUM_PARALLEL", "1")]);
    let generate = |options: Value| {
        post(
            &s,
            "/api/generate",
            &json!({"model": e.model, "prompt": "hi", "stream": false,
                                          "options": options}),
        )
    };
    let (st, v) = generate(json!({"num_predict": 2}));
    assert_eq!(st, 200, "{v}");
    let ps = ps_models(&s);
    assert_eq!(ps.len(), 1);
    assert_eq!(ps[0]["context_length"], 4096, "the toy model's default");
    // Another num_ctx reloads it with that context.
    let (st, v) = generate(json!({"num_predict": 2, "num_ctx": 512}));
    assert_eq!(st, 200, "{v}");
    assert!(v["load_duration"].as_u64().unwrap() > 0, "{v}");
    let ps = ps_models(&s);
    assert_eq!(ps.len(), 1, "{ps:?}");
    assert_eq!(ps[0]["context_length"], 512);
    // The same num_ctx, or none, uses the loaded model as it is.
    let (_, v) = generate(json!({"num_predict": 2, "num_ctx": 512}));
    assert_eq!(v["load_duration"], 0, "{v}");
    let (_, v) = generate(json!({"num_predict": 2}));
    assert_eq!(v["load_duration"], 0, "{v}");
    assert_eq!(ps_models(&s)[0]["context_length"], 512);
    // The window is the new one: a prompt longer than it is refused without truncate.
    let (st, v) = post(
        &s,
        "/api/generate",
        &json!({"model": e.model, "prompt": "x".repeat(100), "stream": false, "truncate": false,
                "options": {"num_ctx": 64, "num_predict": 2}}),
    );
    assert_eq!(st, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("(num_ctx) is 64"), "{v}");
    assert_eq!(ps_models(&s)[0]["context_length"], 64);
    // A load-only request (no prompt) takes num_ctx too, and so does chat.
    let (st, v) = post(
        &s,
        "/api/chat",
        &json!({"model": e.model, "messages": [],
                                               "options": {"num_ctx": 256}}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["done_reason"], "load");
    assert_eq!(ps_models(&s)[0]["context_length"], 256);
    // A context too big for the memory is a clear 507 before anything loads, and the
    // loaded model stays as it was.
    let big = e.dir.join("big.gguf");
    use corral_gguf::Value as G;
    metadata_gguf(
        &big,
        &[
            ("general.architecture", G::String("llama".into())),
            ("llama.context_length", G::U32(1_000_000_000)),
            ("llama.block_count", G::U32(32)),
            ("llama.embedding_length", G::U32(4096)),
            ("llama.attention.head_count", G::U32(32)),
        ],
    );
    let big = big.to_string_lossy().into_owned();
    let (st, v) = post(
        &s,
        "/api/generate",
        &json!({"model": big, "prompt": "hi",
                                                   "options": {"num_ctx": 1_000_000_000}}),
    );
    assert_eq!(st, 507, "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains("options.num_ctx") && msg.contains("MiB"), "{msg}");
    assert_eq!(ps_models(&s).len(), 1);
    assert!(s.log().contains("reloading the model"), "{}", s.log());
}

#[test]
fn embed_dimensions_and_truncate() {
    let e = env();
    let s = start(&e, &[]);
    let embed = |extra: Value| {
        let mut b = json!({"model": e.model, "input": ["hello", "world"]});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        post(&s, "/api/embed", &b)
    };
    let (st, full) = embed(json!({}));
    assert_eq!(st, 200, "{full}");
    // As Ollama's: one empty string is no input; a list holding one is embedded.
    let (st, v) = embed(json!({"input": ""}));
    assert_eq!((st, v["embeddings"].as_array().map(Vec::len)), (200, Some(0)), "{v}");
    let (st, v) = embed(json!({"input": [""]}));
    assert_eq!(st, 200, "{v}");
    let n = full["embeddings"][0].as_array().unwrap().len();
    assert_eq!(n, 16, "the toy model's embedding size");
    let (st, v) = embed(json!({"dimensions": 4}));
    assert_eq!(st, 200, "{v}");
    for emb in v["embeddings"].as_array().unwrap() {
        let xs: Vec<f64> = emb.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_eq!(xs.len(), 4);
        let norm: f64 = xs.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4, "re-normalized: {norm}");
    }
    // The first values of the full vector, scaled.
    let scale =
        v["embeddings"][0][0].as_f64().unwrap() / full["embeddings"][0][0].as_f64().unwrap();
    for i in 0..4 {
        let a = v["embeddings"][0][i].as_f64().unwrap();
        let b = full["embeddings"][0][i].as_f64().unwrap() * scale;
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
    let (st, v) = embed(json!({"dimensions": 16}));
    assert_eq!(st, 200);
    assert_eq!(v["embeddings"], full["embeddings"]);
    let (st, v) = embed(json!({"dimensions": 17}));
    assert_eq!(st, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("16 dimensions"), "{v}");
    // OpenAI's dimensions, the same.
    let (st, v) =
        post(&s, "/v1/embeddings", &json!({"model": e.model, "input": "hello", "dimensions": 4}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 4);
    let (st, _) =
        post(&s, "/v1/embeddings", &json!({"model": e.model, "input": "hello", "dimensions": 99}));
    assert_eq!(st, 400);
    // truncate: an input longer than the context is cut (default) or refused.
    let long = "y".repeat(100);
    let (st, v) = post(
        &s,
        "/api/embed",
        &json!({"model": e.model, "input": long,
                                                "options": {"num_ctx": 32}}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["prompt_eval_count"], 32, "{v}");
    let (st, v) = post(
        &s,
        "/api/embed",
        &json!({"model": e.model, "input": long,
                                                "truncate": false, "options": {"num_ctx": 32}}),
    );
    assert_eq!(st, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("context length 32"), "{v}");
}

/// The bytes of the prompt part of a `/api/generate` answer's `context` (the toy
/// tokenizer: one token per byte, specials above 255).
fn prompt_text(v: &Value) -> String {
    let ctx = v["context"].as_array().unwrap();
    let n = ctx.len() - v["eval_count"].as_u64().unwrap() as usize;
    let bytes: Vec<u8> =
        ctx[..n].iter().filter_map(|t| u8::try_from(t.as_u64().unwrap()).ok()).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[test]
fn think_levels_reach_the_template_as_reasoning_effort() {
    let e = env();
    let s = start(&e, &[]);
    let generate = |think: Value| {
        post(
            &s,
            "/api/generate",
            &json!({"model": e.model, "prompt": "hi", "stream": false,
            "template": "{{ .Prompt }}<think>{{ .ThinkLevel }}|", "think": think,
            "options": {"num_predict": 3, "seed": 1}}),
        )
    };
    for level in ["low", "medium", "high"] {
        let (st, v) = generate(json!(level));
        assert_eq!(st, 200, "{v}");
        assert_eq!(prompt_text(&v), format!("hi<think>{level}|"), "{v}");
    }
    let (st, v) = generate(json!(true));
    assert_eq!(st, 200, "{v}");
    assert_eq!(prompt_text(&v), "hi<think>|");
    for bad in [json!("extreme"), json!(3), json!("HIGH")] {
        let (st, v) = generate(bad.clone());
        assert_eq!(st, 400, "{bad}: {v}");
        assert!(v["error"].as_str().unwrap().contains("think must be"), "{v}");
    }
    // A model whose template does not think refuses any level, as Ollama does.
    let (st, v) = post(
        &s,
        "/api/chat",
        &json!({"model": e.model, "think": "low",
        "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(st, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("does not support thinking"), "{v}");
}

#[test]
fn show_lists_capabilities() {
    let e = env();
    let s = start(&e, &[]);
    let caps = |model: &str| {
        let (st, v) = post(&s, "/api/show", &json!({"model": model}));
        assert_eq!(st, 200, "{v}");
        v["capabilities"].clone()
    };
    assert_eq!(caps(&e.model), json!(["completion"]));
    use corral_gguf::Value as G;
    let file = |name: &str, kv: &[(&str, G)]| {
        let p = e.dir.join(name);
        metadata_gguf(&p, kv);
        p.to_string_lossy().into_owned()
    };
    let chat = file(
        "chat.gguf",
        &[
            ("general.architecture", G::String("llama".into())),
            (
                "tokenizer.chat_template",
                G::String(
                    "{% if tools %}{{ tools | tojson }}{% endif %}{% for m in messages %}\
                     {{ m.content }}{% endfor %}<think>"
                        .into(),
                ),
            ),
        ],
    );
    assert_eq!(caps(&chat), json!(["completion", "tools", "thinking"]));
    let embedder = file(
        "embed.gguf",
        &[("general.architecture", G::String("bert".into())), ("bert.pooling_type", G::U32(1))],
    );
    assert_eq!(caps(&embedder), json!(["embedding"]));
    let vision = file(
        "vision.gguf",
        &[
            ("general.architecture", G::String("gemma3".into())),
            ("gemma3.vision.block_count", G::U32(2)),
        ],
    );
    let v = caps(&vision);
    assert_eq!(v[0], "completion");
    assert!(v.as_array().unwrap().contains(&json!("vision")), "{v}");
    let plain = file("plain.gguf", &[("general.architecture", G::String("llama".into()))]);
    assert!(!caps(&plain).as_array().unwrap().contains(&json!("vision")));
}

#[test]
fn ps_shows_context_vram_and_expiry() {
    let e = env();
    let s = start(&e, &[]);
    let (st, v) = post(
        &s,
        "/api/generate",
        &json!({"model": e.model, "prompt": "hi",
        "stream": false, "keep_alive": "10m", "options": {"num_predict": 2}}),
    );
    assert_eq!(st, 200, "{v}");
    let now = v["created_at"].as_str().unwrap().to_string();
    let ps = ps_models(&s);
    let m = &ps[0];
    assert_eq!(m["context_length"], 4096);
    assert_eq!(m["size_vram"], 0, "the toy engine computes on the CPU");
    let expires = m["expires_at"].as_str().unwrap();
    // RFC 3339 in UTC, about ten minutes on.
    assert!(expires.ends_with('Z') && expires.len() == now.len(), "{expires} / {now}");
    assert!(expires > now.as_str(), "{expires} / {now}");
    // keep_alive -1: far in the future.
    let (st, _) = post(&s, "/api/generate", &json!({"model": e.model, "keep_alive": -1}));
    assert_eq!(st, 200);
    let expires = ps_models(&s)[0]["expires_at"].as_str().unwrap().to_string();
    assert!(expires.as_str() > "2200", "{expires}");
}
