//! `corral serve` end to end on the example plugin (format `toy`): the real binary, real
//! HTTP. Ollama and OpenAI endpoints, the bad inputs of issue 4, the scheduler
//! (keep_alive, LRU eviction, queue bound, disconnects) and shutdown.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use corral_e2e::*;
use serde_json::{Value, json};

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build().unwrap()
}

struct Env {
    _dir: tempfile::TempDir,
    plugins: PathBuf,
    models: PathBuf,
    model: String,
    model2: String,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    example_plugin_dir(&plugins);
    let model = dir.path().join("a.toy");
    std::fs::write(&model, "toy weights a").unwrap();
    let model2 = dir.path().join("b.toy");
    std::fs::write(&model2, "toy weights b").unwrap();
    let models = dir.path().join("store");
    Env {
        plugins,
        models,
        model: model.to_string_lossy().into_owned(),
        model2: model2.to_string_lossy().into_owned(),
        _dir: dir,
    }
}

fn start(e: &Env, vars: &[(&str, &str)]) -> Server {
    let store = e.models.to_string_lossy().into_owned();
    let mut all: Vec<(&str, &str)> = vec![("CORRAL_MODELS", store.as_str())];
    all.extend_from_slice(vars);
    Server::start(&[e.plugins.as_path()], &all, &[])
}

fn post(s: &Server, path: &str, body: &Value) -> (u16, Value) {
    let r = client().post(format!("{}{path}", s.url)).json(body).send().unwrap();
    let status = r.status().as_u16();
    let text = r.text().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Sends the headers of a POST announcing `len` body bytes, then a little of the body,
/// and returns the status and body of the server's answer.
fn oversized_request(s: &Server, path: &str, len: usize) -> (u16, String) {
    let mut body = b"{\"model\":\"x\",\"prompt\":\"".to_vec();
    body.extend(vec![b'a'; 64 << 10]);
    raw_post(s, path, &format!("Content-Length: {len}"), &body)
}

/// Sends a POST whose body is `chunks` (chunked transfer encoding, as written) and
/// returns the status and text of the answer.
fn chunked_request(s: &Server, path: &str, chunks: &str) -> (u16, String) {
    raw_post(s, path, "Transfer-Encoding: chunked", chunks.as_bytes())
}

/// Writes a POST with the framing header `framing` and these body bytes over a socket (a
/// client may announce what it never sends), and returns the status and text answered.
/// A POST written on a socket of its own (`framing`: the length or chunking header), the
/// socket returned unread.
fn send_raw_post(s: &Server, path: &str, framing: &str, body: &[u8]) -> std::net::TcpStream {
    use std::io::Write;
    let addr = s.url.trim_start_matches("http://");
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{framing}\r\nConnection: close\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).unwrap();
    // The server may answer before it has read everything and close the connection.
    let _ = tcp.write_all(body);
    tcp
}

fn raw_post(s: &Server, path: &str, framing: &str, body: &[u8]) -> (u16, String) {
    use std::io::Read;
    let mut tcp = send_raw_post(s, path, framing, body);
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, answer)
}

fn post_raw(s: &Server, path: &str, body: Vec<u8>) -> (u16, Value) {
    let r = client()
        .post(format!("{}{path}", s.url))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn get(s: &Server, path: &str) -> (u16, Value) {
    let r = client().get(format!("{}{path}", s.url)).send().unwrap();
    let status = r.status().as_u16();
    let text = r.text().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn ndjson_lines(s: &Server, path: &str, body: &Value) -> Vec<Value> {
    let r = client().post(format!("{}{path}", s.url)).json(body).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    r.text().unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// A request that runs for `n` tokens: a string schema too long to finish keeps the toy
/// model from sampling its end-of-sequence token.
fn long_request(model: &str, prompt: &str, n: i64, stream: bool) -> Value {
    json!({"model": model, "prompt": prompt, "stream": stream,
           "format": {"type": "string", "minLength": 900000},
           "options": {"num_predict": n, "temperature": 0}})
}

fn ps_models(s: &Server) -> Vec<Value> {
    get(s, "/api/ps").1["models"].as_array().cloned().unwrap_or_default()
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn ollama_endpoints_answer_with_ollamas_fields() {
    let e = env();
    let s = start(&e, &[]);
    let r = client().get(&s.url).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().unwrap(), "corral is running");
    assert_eq!(client().head(&s.url).send().unwrap().status().as_u16(), 200);
    assert!(get(&s, "/api/version").1["version"].is_string());
    assert_eq!(get(&s, "/api/tags").1, json!({"models": []}));

    // Non-streaming generate: every field Ollama sends.
    let (st, v) = post(
        &s,
        "/api/generate",
        &json!({"model": e.model, "prompt": "hello", "stream": false,
                "options": {"num_predict": 8, "seed": 1, "temperature": 0}}),
    );
    assert_eq!(st, 200, "{v}");
    for k in [
        "model",
        "created_at",
        "response",
        "done",
        "done_reason",
        "context",
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    ] {
        assert!(v.get(k).is_some(), "missing {k} in {v}");
    }
    assert_eq!(v["done"], true);
    assert_eq!(v["eval_count"], 8);
    assert_eq!(v["done_reason"], "length");
    println!("generate: {v}");

    // Streaming: same text as greedy non-streaming, final line with stats.
    let lines = ndjson_lines(
        &s,
        "/api/generate",
        &json!({"model": e.model, "prompt": "hello",
                "options": {"num_predict": 8, "seed": 1, "temperature": 0}}),
    );
    let text: String = lines.iter().filter_map(|l| l["response"].as_str()).collect();
    assert_eq!(text, v["response"].as_str().unwrap());
    let last = lines.last().unwrap();
    assert_eq!(last["done"], true);
    assert!(lines[..lines.len() - 1].iter().all(|l| l["done"] == false));

    // Chat, streaming and not; a second turn reuses the cached prefix.
    let long = "Tell me a long story about a cat. ".repeat(12);
    let msgs = json!([{"role": "user", "content": long}]);
    let (st, c1) = post(
        &s,
        "/api/chat",
        &json!({"model": e.model, "messages": msgs, "stream": false,
                "options": {"num_predict": 6, "temperature": 0}}),
    );
    assert_eq!(st, 200, "{c1}");
    assert_eq!(c1["message"]["role"], "assistant");
    let first_prompt = c1["prompt_eval_count"].as_u64().unwrap();
    // Tokens run through the engine (prompt_eval_count is the whole prompt, as Ollama's).
    let evaluated = || metric(&s, "corral_prompt_tokens_total") as u64;
    let first_eval = evaluated();
    let mut turn2 = msgs.as_array().unwrap().clone();
    turn2.push(c1["message"].clone());
    turn2.push(json!({"role": "user", "content": "And then?"}));
    let lines = ndjson_lines(
        &s,
        "/api/chat",
        &json!({"model": e.model, "messages": turn2, "options": {"num_predict": 4, "temperature": 0}}),
    );
    let last = lines.last().unwrap();
    assert_eq!(last["done"], true, "{last}");
    assert!(last["prompt_eval_count"].as_u64().unwrap() > first_prompt, "{last}");
    let second_eval = evaluated() - first_eval;
    println!(
        "prefix reuse: turn 1 evaluated {first_eval} prompt tokens, turn 2 evaluated {second_eval}"
    );
    assert!(
        second_eval < first_eval,
        "turn 2 should reuse turn 1's prefix: {second_eval} vs {first_eval}"
    );

    // Embeddings (normalized) and the legacy endpoint.
    let (st, em) = post(&s, "/api/embed", &json!({"model": e.model, "input": ["a", "bc"]}));
    assert_eq!(st, 200, "{em}");
    let vecs = em["embeddings"].as_array().unwrap();
    assert_eq!(vecs.len(), 2);
    let norm: f64 = vecs[0].as_array().unwrap().iter().map(|x| x.as_f64().unwrap().powi(2)).sum();
    assert!((norm - 1.0).abs() < 1e-3, "{norm}");
    let (st, old) = post(&s, "/api/embeddings", &json!({"model": e.model, "prompt": "a"}));
    assert_eq!(st, 200);
    assert!(!old["embedding"].as_array().unwrap().is_empty());

    let (st, show) = post(&s, "/api/show", &json!({"model": e.model}));
    assert_eq!(st, 200, "{show}");
    assert!(show["modelfile"].as_str().unwrap().starts_with("FROM "));

    let ps = ps_models(&s);
    assert_eq!(ps.len(), 1);
    assert_eq!(ps[0]["name"], e.model.as_str());
    assert!(ps[0]["expires_at"].is_string());

    let m = client().get(format!("{}/metrics", s.url)).send().unwrap().text().unwrap();
    assert!(
        m.contains("corral_requests_total{endpoint=\"/api/generate\",status=\"200\"} 2"),
        "{m}"
    );
    assert!(m.contains("corral_time_to_first_token_seconds_count"), "{m}");
    assert!(m.contains("corral_loaded_models 1"), "{m}");
}

#[test]
fn openai_endpoints() {
    let e = env();
    let s = start(&e, &[]);
    let (st, v) = post(
        &s,
        "/v1/chat/completions",
        &json!({"model": e.model, "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 5, "seed": 3, "temperature": 0}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 5);

    // SSE with include_usage, ending in [DONE].
    let r = client()
        .post(format!("{}/v1/chat/completions", s.url))
        .json(&json!({"model": e.model, "messages": [{"role": "user", "content": "hi"}],
                      "max_tokens": 5, "stream": true, "stream_options": {"include_usage": true},
                      "seed": 3, "temperature": 0}))
        .send()
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let body = r.text().unwrap();
    let events: Vec<&str> = body.split("\n\n").filter(|x| !x.is_empty()).collect();
    assert_eq!(*events.last().unwrap(), "data: [DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
        .collect();
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 5);
    let text: String =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, v["choices"][0]["message"]["content"].as_str().unwrap());
    assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "length"));

    let (st, c) =
        post(&s, "/v1/completions", &json!({"model": e.model, "prompt": "abc", "max_tokens": 3}));
    assert_eq!(st, 200, "{c}");
    assert_eq!(c["object"], "text_completion");
    let (st, em) = post(&s, "/v1/embeddings", &json!({"model": e.model, "input": "abc"}));
    assert_eq!(st, 200, "{em}");
    assert_eq!(em["data"][0]["object"], "embedding");
    let (st, em64) = post(
        &s,
        "/v1/embeddings",
        &json!({"model": e.model, "input": "abc", "encoding_format": "base64"}),
    );
    assert_eq!(st, 200);
    assert!(em64["data"][0]["embedding"].is_string());
    let (st, models) = get(&s, "/v1/models");
    assert_eq!(st, 200);
    assert_eq!(models["object"], "list");
    // response_format json_schema.
    let schema =
        json!({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]});
    let (st, v) = post(
        &s,
        "/v1/chat/completions",
        &json!({"model": e.model, "messages": [{"role": "user", "content": "n?"}], "max_tokens": 200,
                "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}),
    );
    assert_eq!(st, 200, "{v}");
    let out: Value =
        serde_json::from_str(v["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert!(out["n"].is_i64(), "{out}");
    // Errors in OpenAI's shape.
    let (st, err) = post(
        &s,
        "/v1/chat/completions",
        &json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
    );
    assert_eq!(st, 404);
    assert!(err["error"]["message"].as_str().unwrap().contains("not found"), "{err}");
}

#[test]
fn bad_input_gets_clear_errors_and_the_server_stays_up() {
    let e = env();
    let s = start(&e, &[]);
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("/api/generate", b"{\"model\": ".to_vec(), 400, "invalid JSON"),
        ("/api/generate", b"".to_vec(), 400, "missing request body"),
        // Unknown fields are accepted (server_parity.rs); a known one of the wrong type
        // is a 400 that names it.
        (
            "/api/chat",
            br#"{"model":"x","messages":[],"keep_alive":true}"#.to_vec(),
            400,
            "keep_alive",
        ),
        ("/api/chat", br#"{"model":"x","messages":{}}"#.to_vec(), 400, "messages: invalid type"),
        ("/api/generate", br#"{"model":"x","prompt":5}"#.to_vec(), 400, "invalid type"),
        ("/api/generate", br#"{"model":"x","stream":"yes"}"#.to_vec(), 400, "invalid type"),
        ("/api/generate", br#"{"model":"nothere","prompt":"hi"}"#.to_vec(), 404, "not found"),
        (
            "/api/chat",
            br#"{"model":"/nonexistent/m.gguf","messages":[{"role":"user","content":"x"}]}"#
                .to_vec(),
            404,
            "not found",
        ),
        (
            "/api/chat",
            br#"{"model":"x","messages":[{"role":"wizard","content":"x"}]}"#.to_vec(),
            400,
            "unknown role",
        ),
        (
            "/api/generate",
            br#"{"model":"x","prompt":"hi","format":{"type":"strin"}}"#.to_vec(),
            400,
            "invalid JSON schema",
        ),
        (
            "/api/generate",
            br#"{"model":"x","prompt":"hi","format":"yaml"}"#.to_vec(),
            400,
            "format",
        ),
        (
            "/api/generate",
            br#"{"model":"x","prompt":"hi","keep_alive":"forever"}"#.to_vec(),
            400,
            "keep_alive",
        ),
        (
            "/v1/chat/completions",
            br#"{"model":"x","messages":[],"max_tokens":-3}"#.to_vec(),
            400,
            "messages",
        ),
    ];
    for (path, body, status, needle) in cases {
        let (st, v) = post_raw(&s, path, body.clone());
        assert_eq!(st, status, "{path} {}: {v}", String::from_utf8_lossy(&body));
        let msg =
            v["error"].as_str().map_or_else(|| v["error"]["message"].to_string(), str::to_string);
        assert!(msg.contains(needle), "{path}: {msg:?} should mention {needle:?}");
        println!("{status} {path}: {msg}");
    }
    // Options: a negative num_predict other than -1/-2 is refused, -1 and -2 work.
    let (st, v) = post(
        &s,
        "/api/generate",
        &json!({"model": e.model, "prompt": "x", "options": {"num_predict": -5}}),
    );
    assert_eq!(st, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("num_predict"), "{v}");
    let (st, v) = post(&s, "/api/generate", &long_request(&e.model, "x", -2, false));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["done_reason"], "length", "-2 fills the context");
    let (st, v) = post(
        &s,
        "/api/generate",
        &json!({"model": e.model, "prompt": "x", "options": {"temperature": "hot"}}),
    );
    assert_eq!(st, 400, "{v}");
    // Body over the limit: 413 with a JSON error.
    // The server may answer before it has read the body and close the connection, so a
    // client that insists on writing 33 MiB can see a broken pipe; announce the size and
    // read the answer instead, as a careful client does.
    let (st, text) = oversized_request(&s, "/api/generate", 33 << 20);
    assert_eq!(st, 413, "{text}");
    assert!(text.contains("too large"), "{text}");
    // A chunked body over the limit is a 413 too; one whose chunk sizes are no numbers is
    // malformed, a 400 (it was called "too large").
    let chunk = format!("{:x}\r\n{}\r\n", 1 << 20, "a".repeat(1 << 20));
    let (st, text) = chunked_request(&s, "/api/generate", &chunk.repeat(33));
    assert_eq!(st, 413, "{text}");
    for bad in ["zz\r\nabc\r\n0\r\n\r\n", "-5\r\nabc\r\n0\r\n\r\n"] {
        let (st, text) = chunked_request(&s, "/api/generate", bad);
        assert_eq!(st, 400, "{bad:?}: {text}");
        assert!(text.contains("could not be read"), "{text}");
    }
    // An unknown path is Ollama's 404 (`error` a string, as Ollama's clients read it), not
    // the Anthropic or Responses APIs' error object.
    for path in ["/api/nope", "/v1/nope", "/nope"] {
        let (st, v) = get(&s, path);
        assert_eq!((st, &v), (404, &json!({"error": "404 page not found"})), "{path}");
    }
    // DNS rebinding: a foreign Host header is refused.
    let r = client()
        .get(format!("{}/api/tags", s.url))
        .header("host", "evil.example:11434")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = client()
        .get(format!("{}/api/tags", s.url))
        .header("host", "localhost:11434")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // CORS: local origins are allowed, others are not.
    let r = client()
        .get(format!("{}/api/tags", s.url))
        .header("origin", "http://localhost:3000")
        .send()
        .unwrap();
    assert_eq!(
        r.headers().get("access-control-allow-origin").map(|v| v.to_str().unwrap()),
        Some("http://localhost:3000")
    );
    let r = client()
        .get(format!("{}/api/tags", s.url))
        .header("origin", "http://evil.example")
        .send()
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    // Still serving.
    let (st, _) = post(
        &s,
        "/api/generate",
        &json!({"model": e.model, "prompt": "x", "stream": false, "options": {"num_predict": 2}}),
    );
    assert_eq!(st, 200);
}

#[test]
fn structured_output_validates_against_its_schema() {
    let e = env();
    let s = start(&e, &[]);
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 10},
            "age": {"type": "integer"},
            "pets": {"type": "array", "items": {"enum": ["cat", "dog"]}, "maxItems": 3},
            "ok": {"type": "boolean"}
        },
        "required": ["name", "age", "ok"]
    });
    let validator = jsonschema::validator_for(&schema).unwrap();
    for seed in 0..20 {
        let (st, v) = post(
            &s,
            "/api/chat",
            &json!({"model": e.model, "messages": [{"role": "user", "content": "json please"}],
                    "format": schema, "stream": false,
                    "options": {"temperature": 1, "seed": seed, "num_predict": 400}}),
        );
        assert_eq!(st, 200, "{v}");
        let text = v["message"]["content"].as_str().unwrap();
        let out: Value =
            serde_json::from_str(text).unwrap_or_else(|e| panic!("seed {seed}: {e}: {text}"));
        assert!(validator.is_valid(&out), "seed {seed}: {text}");
        assert_eq!(v["done_reason"], "stop", "{v}");
    }
    let (st, v) = post(
        &s,
        "/api/generate",
        &json!({"model": e.model, "prompt": "x", "format": "json",
        "stream": false, "options": {"seed": 5, "num_predict": 400}}),
    );
    assert_eq!(st, 200);
    // Ollama's "json" is an object, as its grammar's root is.
    let out: Value = serde_json::from_str(v["response"].as_str().unwrap()).unwrap();
    assert!(out.is_object(), "{v}");
}

/// A schema whose every output is a call of `get_weather` (the toy model cannot decide
/// to call a tool, so structured output makes it), and the tool offered for it.
fn weather_tool_and_call_schema() -> (Value, Value) {
    let tool = json!({"type": "function", "function": {"name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}});
    let schema = json!({"type": "object",
        "properties": {"name": {"const": "get_weather"},
                       "arguments": {"type": "object",
                                     "properties": {"city": {"enum": ["Paris", "Oslo"]}},
                                     "required": ["city"]}},
        "required": ["name", "arguments"]});
    (tool, schema)
}

#[test]
fn tool_calls_in_the_output_come_back_as_tool_calls() {
    let e = env();
    let s = start(&e, &[]);
    let (tool, schema) = weather_tool_and_call_schema();
    let chat = |stream: bool, format: &Value| {
        json!({"model": e.model, "messages": [{"role": "user", "content": "weather?"}],
               "tools": [tool], "format": format, "stream": stream,
               "options": {"seed": 3, "num_predict": 200}})
    };
    let city_ok = |v: &Value| matches!(v.as_str(), Some("Paris" | "Oslo"));
    // Ollama, one object.
    let (st, v) = post(&s, "/api/chat", &chat(false, &schema));
    assert_eq!(st, 200, "{v}");
    let calls = v["message"]["tool_calls"].as_array().unwrap_or_else(|| panic!("{v}"));
    assert_eq!(calls.len(), 1, "{v}");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert!(city_ok(&calls[0]["function"]["arguments"]["city"]), "{v}");
    assert_eq!(v["message"]["content"], "", "{v}");
    // Ollama, streamed: no content chunks, one chunk with the call, then done.
    let lines = ndjson_lines(&s, "/api/chat", &chat(true, &schema));
    let with_calls: Vec<&Value> =
        lines.iter().filter(|l| l["message"].get("tool_calls").is_some()).collect();
    assert_eq!(with_calls.len(), 1, "{lines:?}");
    assert_eq!(with_calls[0]["message"]["tool_calls"][0]["function"]["name"], "get_weather");
    assert!(lines.iter().all(|l| l["message"]["content"] == ""), "{lines:?}");
    assert_eq!(lines.last().unwrap()["done"], true);
    // Output that is JSON but not a call stays content.
    let not_a_call = json!({"type": "object", "properties": {"answer": {"enum": ["sunny"]}},
                            "required": ["answer"]});
    let (st, v) = post(&s, "/api/chat", &chat(false, &not_a_call));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["message"]["content"], "{\"answer\":\"sunny\"}", "{v}");
    assert!(v["message"].get("tool_calls").is_none(), "{v}");
    // OpenAI, one object and streamed.
    let oai = |stream: bool| {
        json!({"model": e.model, "messages": [{"role": "user", "content": "weather?"}],
               "tools": [tool], "stream": stream, "seed": 3, "max_tokens": 200,
               "response_format": {"type": "json_schema",
                                   "json_schema": {"name": "call", "schema": schema}}})
    };
    let (st, v) = post(&s, "/v1/chat/completions", &oai(false));
    assert_eq!(st, 200, "{v}");
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{v}");
    assert_eq!(choice["message"]["content"], Value::Null, "{v}");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert!(call["id"].as_str().is_some_and(|id| id.starts_with("call_")), "{v}");
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(city_ok(&args["city"]), "{v}");
    let body =
        client().post(format!("{}/v1/chat/completions", s.url)).json(&oai(true)).send().unwrap();
    let text = body.text().unwrap();
    let events: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let deltas: Vec<&Value> =
        events.iter().filter(|e| e["choices"][0]["delta"].get("tool_calls").is_some()).collect();
    assert_eq!(deltas.len(), 1, "{text}");
    assert_eq!(deltas[0]["choices"][0]["delta"]["tool_calls"][0]["index"], 0);
    assert_eq!(events.last().unwrap()["choices"][0]["finish_reason"], "tool_calls", "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"));
}

#[test]
fn logprobs_of_every_token_in_both_apis() {
    let e = env();
    let s = start(&e, &[]);
    // Greedy without penalties: every sampled token is the most likely one.
    let opts = json!({"temperature": 0, "repeat_penalty": 1, "num_predict": 12, "seed": 1});
    let check = |entries: &[Value], top_n: usize| {
        for t in entries {
            let lp = t["logprob"].as_f64().unwrap();
            assert!(lp <= 0.0, "{t}");
            let top = t["top_logprobs"].as_array().unwrap();
            assert_eq!(top.len(), top_n, "{t}");
            assert!((top[0]["logprob"].as_f64().unwrap() - lp).abs() < 1e-5, "greedy: {t}");
            assert!(top.windows(2).all(|w| w[0]["logprob"].as_f64() >= w[1]["logprob"].as_f64()));
            let bytes: Vec<u8> =
                t["bytes"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u8).collect();
            assert_eq!(String::from_utf8_lossy(&bytes), t["token"].as_str().unwrap());
        }
    };
    let (st, v) = post(
        &s,
        "/api/generate",
        &json!({"model": e.model, "prompt": "hi", "stream": false, "logprobs": true,
                "top_logprobs": 3, "options": opts}),
    );
    assert_eq!(st, 200, "{v}");
    let entries = v["logprobs"].as_array().unwrap();
    assert_eq!(entries.len() as u64, v["eval_count"].as_u64().unwrap(), "{v}");
    check(entries, 3);
    // Tokens may split a character: their bytes together make the text.
    let bytes: Vec<u8> = entries
        .iter()
        .flat_map(|t| t["bytes"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u8))
        .collect();
    assert_eq!(String::from_utf8_lossy(&bytes), v["response"].as_str().unwrap());
    // Streamed chat: the chunks' lists add up to every token.
    let lines = ndjson_lines(
        &s,
        "/api/chat",
        &json!({"model": e.model, "messages": [{"role": "user", "content": "hi"}],
                "logprobs": true, "top_logprobs": 2, "options": opts}),
    );
    let streamed: Vec<Value> =
        lines.iter().flat_map(|l| l["logprobs"].as_array().cloned().unwrap_or_default()).collect();
    assert_eq!(streamed.len() as u64, lines.last().unwrap()["eval_count"].as_u64().unwrap());
    check(&streamed, 2);
    // Not asked for: no field.
    let (_, v) = post(
        &s,
        "/api/generate",
        &json!({"model": e.model, "prompt": "hi", "stream": false, "options": opts}),
    );
    assert!(v.get("logprobs").is_none(), "{v}");
    // OpenAI chat and legacy completions.
    let (st, v) = post(
        &s,
        "/v1/chat/completions",
        &json!({"model": e.model, "messages": [{"role": "user", "content": "hi"}],
                "logprobs": true, "top_logprobs": 2, "max_tokens": 8, "temperature": 0}),
    );
    assert_eq!(st, 200, "{v}");
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len() as u64, v["usage"]["completion_tokens"].as_u64().unwrap());
    let (st, v) = post(
        &s,
        "/v1/completions",
        &json!({"model": e.model, "prompt": "hi", "logprobs": 2, "max_tokens": 8,
                "temperature": 0}),
    );
    assert_eq!(st, 200, "{v}");
    let lp = &v["choices"][0]["logprobs"];
    let n = v["usage"]["completion_tokens"].as_u64().unwrap() as usize;
    assert_eq!(lp["tokens"].as_array().unwrap().len(), n, "{lp}");
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), n, "{lp}");
    assert_eq!(lp["text_offset"][0], 0);
    // Keyed by text: two alternatives that print the same share one key.
    assert!((1..=2).contains(&lp["top_logprobs"][0].as_object().unwrap().len()), "{lp}");
    // Bad requests.
    for (path, body, says) in [
        (
            "/api/generate",
            json!({"model": e.model, "prompt": "hi", "logprobs": true,
                                 "top_logprobs": 21}),
            "between 0 and 20",
        ),
        (
            "/v1/chat/completions",
            json!({"model": e.model, "top_logprobs": 2,
            "messages": [{"role": "user", "content": "hi"}]}),
            "needs logprobs: true",
        ),
    ] {
        let (st, v) = post(&s, path, &body);
        assert_eq!(st, 400, "{path}: {v}");
        assert!(v.to_string().contains(says), "{path}: {v}");
    }
}

/// `/v1/completions` takes a prompt of token ids (OpenAI's other shape, as llama-server
/// does): the tokens of a templated prompt give the same greedy token as that prompt.
#[test]
fn completions_take_token_id_prompts() {
    let e = env();
    let s = start(&e, &[]);
    let (st, g) = post(
        &s,
        "/api/generate",
        &json!({"model": e.model, "prompt": "Once upon a time", "stream": false,
                "options": {"temperature": 0, "num_predict": 1}}),
    );
    assert_eq!(st, 200, "{g}");
    let context: Vec<u64> =
        g["context"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect();
    let prompt = &context[..context.len() - 1];
    for shape in [json!(prompt), json!([prompt])] {
        let (st, v) = post(
            &s,
            "/v1/completions",
            &json!({"model": e.model, "prompt": shape, "max_tokens": 1, "temperature": 0}),
        );
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["choices"][0]["text"], g["response"], "{v}");
        assert_eq!(v["usage"]["prompt_tokens"].as_u64(), Some(prompt.len() as u64), "{v}");
    }
    for (bad, says) in [
        (json!([1, -2]), "whole numbers"),
        (json!([1, 4_000_000_000u64]), "beyond this model's vocabulary"),
        (json!([[1], [2]]), "a list of 2 items"),
        (json!([]), "a list of 0 items"),
    ] {
        let (st, v) = post(&s, "/v1/completions", &json!({"model": e.model, "prompt": bad}));
        assert_eq!(st, 400, "{bad}: {v}");
        assert!(v.to_string().contains(says), "{bad}: {v}");
    }
    let (st, v) =
        post(&s, "/v1/completions", &json!({"model": e.model, "prompt": [1, 2], "echo": true}));
    assert_eq!(st, 400, "{v}");
}

/// OpenAI's `logit_bias` (and the same option on Ollama's API, as llama-server takes it)
/// moves the sampler: -100 bans the greedy token, 100 forces another; bad ids and
/// values are 400s naming the option.
#[test]
fn logit_bias_bans_and_forces_tokens() {
    let e = env();
    let s = start(&e, &[]);
    // The greedy first token of the answer, by id (`context` ends with it).
    let next_token = |bias: Value| {
        let (st, v) = post(
            &s,
            "/api/generate",
            &json!({"model": e.model, "prompt": "Once upon a time", "stream": false,
                    "options": {"temperature": 0, "num_predict": 1, "logit_bias": bias}}),
        );
        assert_eq!(st, 200, "{v}");
        v["context"].as_array().unwrap().last().unwrap().as_u64().unwrap()
    };
    let greedy = next_token(Value::Null);
    let banned = next_token(json!({ greedy.to_string(): -100 }));
    assert_ne!(banned, greedy);
    let forced = (greedy + 7) % 200 + 10;
    assert_eq!(next_token(json!([[forced, 100]])), forced);
    assert_ne!(next_token(json!([[greedy, false]])), greedy);
    // Through the OpenAI API (the same prompt as a chat): the answer changes with the ban.
    let first = |bias: Value| {
        let (st, v) = post(
            &s,
            "/v1/chat/completions",
            &json!({"model": e.model, "messages": [{"role": "user", "content": "Once upon a time"}],
                    "max_tokens": 4, "temperature": 0, "logit_bias": bias}),
        );
        assert_eq!(st, 200, "{v}");
        v["choices"][0]["message"]["content"].as_str().unwrap().to_string()
    };
    let plain = first(Value::Null);
    assert_eq!(plain, first(json!({})));
    assert_ne!(plain, first(json!({ greedy.to_string(): -100 })));
    for (bias, says) in [
        (json!({"4000000000": 1}), "vocabulary"),
        (json!({"5": 500}), "between -100 and 100"),
        (json!({"hello": 1}), "token ids"),
        (json!("x"), "logit_bias"),
    ] {
        for path in ["/v1/chat/completions", "/v1/completions"] {
            let (st, v) = post(
                &s,
                path,
                &json!({"model": e.model, "logit_bias": bias, "prompt": "hi",
                        "messages": [{"role": "user", "content": "hi"}]}),
            );
            assert_eq!(st, 400, "{path} {bias}: {v}");
            assert!(v.to_string().contains(says), "{path} {bias}: {v}");
        }
    }
    // A streamed request too is refused before its stream starts.
    let (st, v) = post(
        &s,
        "/api/generate",
        &json!({"model": e.model, "prompt": "hi", "options": {"logit_bias": {"4000000000": 1}}}),
    );
    assert_eq!(st, 400, "{v}");
    assert!(v.to_string().contains("vocabulary"), "{v}");
}

#[test]
fn a_prompt_over_the_window_is_truncated_or_refused_as_asked() {
    let e = env();
    let s = start(&e, &[("CORRAL_CONTEXT_LENGTH", "32")]);
    let long = "word ".repeat(100);
    let body = |truncate: Option<bool>| {
        let mut b = json!({"model": e.model, "prompt": long, "raw": true, "stream": false,
                           "options": {"num_predict": 2}});
        if let Some(t) = truncate {
            b["truncate"] = json!(t);
        }
        b
    };
    let (st, v) = post(&s, "/api/generate", &body(None));
    assert_eq!(st, 200, "{v}");
    assert!(v["prompt_eval_count"].as_u64().unwrap() < 32, "{v}");
    let (st, v) = post(&s, "/api/generate", &body(Some(false)));
    assert_eq!(st, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("context window"), "{v}");
}

#[test]
fn thinking_is_split_out_for_thinking_templates_and_refused_for_others() {
    let e = env();
    let s = start(&e, &[]);
    let chat = |think: Value| {
        json!({"model": e.model, "messages": [{"role": "user", "content": "hi"}],
               "think": think, "stream": false, "options": {"num_predict": 6, "seed": 2}})
    };
    // The toy model's template does not think: as Ollama, 400 for think: true.
    let (st, v) = post(&s, "/api/chat", &chat(json!(true)));
    assert_eq!(st, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("does not support thinking"), "{v}");
    let (st, v) = post(&s, "/api/chat", &chat(json!("sideways")));
    assert_eq!(st, 400, "{v}");
    // Nor does it see images.
    let (st, v) = post(
        &s,
        "/api/chat",
        &json!({"model": e.model, "messages": [{"role": "user", "content": "what is this?",
                                                 "images": ["aGVsbG8="]}]}),
    );
    assert_eq!(st, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("does not support images"), "{v}");
    let (st, _) = post(
        &s,
        "/api/generate",
        &json!({"model": e.model, "prompt": "what is this?", "images": ["aGVsbG8="]}),
    );
    assert_eq!(st, 400);
    // Nor through Anthropic's and the Responses API's image blocks (they were dropped).
    let png = "iVBORw0KGgo=";
    let image = json!({"type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": png}});
    for path in ["/v1/messages", "/v1/messages/count_tokens"] {
        let (st, v) = post(
            &s,
            path,
            &json!({"model": e.model, "max_tokens": 4,
            "messages": [{"role": "user", "content": [image, {"type": "text", "text": "what?"}]}]}),
        );
        assert_eq!(st, 400, "{path}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("does not support images"), "{v}");
    }
    let (st, v) = post(
        &s,
        "/v1/responses",
        &json!({"model": e.model, "input": [{"role": "user",
        "content": [{"type": "input_image", "image_url": format!("data:image/png;base64,{png}")},
                    {"type": "input_text", "text": "what?"}]}]}),
    );
    assert_eq!(st, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("does not support images"), "{v}");
    let (st, v) = post(&s, "/api/chat", &chat(json!(false)));
    assert_eq!(st, 200, "{v}");
    assert!(v["message"].get("thinking").is_none(), "{v}");
    // A (Go) template that opens a <think> block: the whole output is thinking, unless
    // think is false.
    let generate = |think: Option<bool>, stream: bool| {
        let mut b = json!({"model": e.model, "prompt": "hi", "stream": stream,
            "template": "{{ .Prompt }}<think>", "options": {"num_predict": 6, "seed": 2}});
        if let Some(t) = think {
            b["think"] = json!(t);
        }
        b
    };
    let (st, v) = post(&s, "/api/generate", &generate(None, false));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["response"], "", "{v}");
    let thinking = v["thinking"].as_str().unwrap().to_string();
    assert!(!thinking.is_empty(), "{v}");
    let lines = ndjson_lines(&s, "/api/generate", &generate(Some(true), true));
    let streamed: String = lines.iter().filter_map(|l| l["thinking"].as_str()).collect();
    assert_eq!(streamed, thinking, "{lines:?}");
    let (_, v) = post(&s, "/api/generate", &generate(Some(false), false));
    assert_eq!(v["response"].as_str().unwrap(), thinking, "think: false leaves it as content");
    assert!(v.get("thinking").is_none(), "{v}");
}

#[test]
fn a_client_that_disconnects_frees_its_slot() {
    let e = env();
    let s = start(&e, &[("CORRAL_NUM_PARALLEL", "1"), ("CORRAL_CONTEXT_LENGTH", "100000")]);
    let r = client()
        .post(format!("{}/api/generate", s.url))
        .json(&long_request(&e.model, "go", -1, true))
        .send()
        .unwrap();
    let mut reader = BufReader::new(r);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.contains("\"done\":false"), "{line}");
    assert_eq!(ps_models(&s)[0]["active_sequences"], 1);
    drop(reader); // the client goes away mid-stream
    wait_until("the sequence to be freed", Duration::from_secs(5), || {
        ps_models(&s).first().is_some_and(|m| m["active_sequences"] == 0)
    });
    // The single slot serves the next request at once.
    let (st, v) = post(
        &s,
        "/api/generate",
        &json!({"model": e.model, "prompt": "x", "stream": false, "options": {"num_predict": 3}}),
    );
    assert_eq!(st, 200, "{v}");
    let m = client().get(format!("{}/metrics", s.url)).send().unwrap().text().unwrap();
    assert!(m.contains(&format!("corral_active_sequences{{model=\"{}\"}} 0", e.model)), "{m}");
}

/// Found by an outside sweep: a `context` with a token beyond the vocabulary joined the
/// shared batch and failed every request stepped with it (all 400 "batch entry N: token
/// 999999 is out of range"). It is refused alone, and the others finish.
#[test]
fn a_forged_context_fails_only_its_own_request() {
    let e = env();
    let s = start(&e, &[("CORRAL_NUM_PARALLEL", "4"), ("CORRAL_CONTEXT_LENGTH", "100000")]);
    let (url, model) = (s.url.clone(), e.model.clone());
    let others: Vec<_> = (0..3)
        .map(|i| {
            let (url, model) = (url.clone(), model.clone());
            std::thread::spawn(move || {
                let r = client()
                    .post(format!("{url}/api/generate"))
                    .json(&long_request(&model, &format!("go {i}"), 15_000, false))
                    .send()
                    .unwrap();
                (r.status().as_u16(), r.text().unwrap_or_default())
            })
        })
        .collect();
    wait_until("the requests to run", Duration::from_secs(10), || {
        ps_models(&s).first().is_some_and(|m| m["active_sequences"].as_u64() >= Some(1))
    });
    let (st, v) = post(
        &s,
        "/api/generate",
        &json!({"model": e.model, "prompt": "x", "stream": false, "context": [1, 999_999]}),
    );
    assert_eq!(st, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("token 999999 is beyond"), "{v}");
    for h in others {
        let (st, body) = h.join().unwrap();
        assert_eq!(st, 200, "{body}");
    }
}

/// Found by an outside sweep: requests whose clients left while they waited kept their
/// places in the queue until a slot freed, so new requests got 503 behind requests nobody
/// waited for. They now leave the queue at once.
#[test]
fn a_request_whose_client_leaves_while_queued_leaves_the_queue() {
    let e = env();
    let s = start(
        &e,
        &[
            ("CORRAL_NUM_PARALLEL", "1"),
            ("CORRAL_MAX_QUEUE", "2"),
            ("CORRAL_CONTEXT_LENGTH", "400000"),
        ],
    );
    // One long stream holds the only slot.
    let long = client()
        .post(format!("{}/api/generate", s.url))
        .json(&long_request(&e.model, "go", 300_000, true))
        .send()
        .unwrap();
    let mut reader = BufReader::new(long);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    // Two more wait, then their clients go away.
    let body = serde_json::to_vec(&long_request(&e.model, "wait", 10, true)).unwrap();
    let length = format!("Content-Length: {}", body.len());
    let waiting: Vec<std::net::TcpStream> =
        (0..2).map(|_| send_raw_post(&s, "/api/generate", &length, &body)).collect();
    let queued = || ps_models(&s).first().map_or(0, |m| m["queued_requests"].as_u64().unwrap_or(0));
    wait_until("two requests to queue", Duration::from_secs(10), || queued() == 2);
    drop(waiting);
    wait_until("the abandoned requests to leave the queue", Duration::from_secs(5), || {
        queued() == 0
    });
    // The queue has room again while the long stream still runs.
    assert_eq!(ps_models(&s)[0]["active_sequences"], 1);
    drop(reader);
}

#[test]
fn a_flood_beyond_the_queue_gets_503_and_the_rest_complete() {
    let e = env();
    let s = start(
        &e,
        &[
            ("CORRAL_NUM_PARALLEL", "1"),
            ("CORRAL_MAX_QUEUE", "2"),
            ("CORRAL_CONTEXT_LENGTH", "8192"),
        ],
    );
    // Load first so that every request meets the queue, not the loader.
    post(&s, "/api/generate", &json!({"model": e.model, "prompt": ""}));
    let url = s.url.clone();
    let model = e.model.clone();
    let handles: Vec<_> = (0..10)
        .map(|i| {
            let (url, model) = (url.clone(), model.clone());
            std::thread::spawn(move || {
                let r = client()
                    .post(format!("{url}/api/generate"))
                    .json(&long_request(&model, &format!("p{i}"), 3000, false))
                    .send()
                    .unwrap();
                let st = r.status().as_u16();
                (st, r.text().unwrap())
            })
        })
        .collect();
    let results: Vec<(u16, String)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let busy: Vec<_> = results.iter().filter(|r| r.0 == 503).collect();
    println!("flood: {ok} completed, {} answered 503", busy.len());
    assert!(ok >= 3, "{results:?}");
    assert!(!busy.is_empty(), "expected some 503s: {results:?}");
    assert_eq!(ok + busy.len(), 10, "{results:?}");
    assert!(busy[0].1.contains("server busy"), "{}", busy[0].1);
    for r in results.iter().filter(|r| r.0 == 200) {
        let v: Value = serde_json::from_str(&r.1).unwrap();
        assert_eq!(v["eval_count"], 3000);
    }
}

#[test]
fn keep_alive_expiry_unload_and_lru_eviction() {
    let e = env();
    let s = start(&e, &[("CORRAL_MAX_LOADED_MODELS", "1")]);
    // keep_alive 1s: loaded, then gone.
    let (st, v) =
        post(&s, "/api/generate", &json!({"model": e.model, "prompt": "", "keep_alive": "1s"}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["done_reason"], "load");
    assert_eq!(ps_models(&s).len(), 1);
    wait_until("keep_alive expiry", Duration::from_secs(5), || ps_models(&s).is_empty());
    // LRU: loading b evicts a (max 1 loaded).
    post(&s, "/api/generate", &json!({"model": e.model, "prompt": ""}));
    post(&s, "/api/generate", &json!({"model": e.model2, "prompt": "", "keep_alive": -1}));
    let ps = ps_models(&s);
    assert_eq!(ps.len(), 1, "{ps:?}");
    assert_eq!(ps[0]["name"], e.model2.as_str());
    assert!(ps[0]["expires_at"].as_str().unwrap().starts_with("2318"), "{ps:?}");
    assert!(s.log().contains("evicting the least recently used model"), "{}", s.log());
    // keep_alive 0 unloads at once (what `corral stop` sends).
    let (st, v) =
        post(&s, "/api/generate", &json!({"model": e.model2, "prompt": "", "keep_alive": 0}));
    assert_eq!(st, 200);
    assert_eq!(v["done_reason"], "unload");
    assert!(ps_models(&s).is_empty());
}

#[test]
fn ps_and_stop_talk_to_a_running_server() {
    let e = env();
    let s = start(&e, &[]);
    post(&s, "/api/generate", &json!({"model": e.model, "prompt": ""}));
    let host = s.url.trim_start_matches("http://").to_string();
    let mut c = corral(&[]);
    c.env("CORRAL_HOST", &host).arg("ps");
    let (out, stdout, stderr) = run(c);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("a.toy"), "{stdout}");
    println!("{stdout}");
    let mut c = corral(&[]);
    c.env("CORRAL_HOST", &host).args(["stop", &e.model]);
    let (out, _, stderr) = run(c);
    assert!(out.status.success(), "{stderr}");
    assert!(ps_models(&s).is_empty());
    // No server: a clear message.
    let mut c = corral(&[]);
    c.env("CORRAL_HOST", "127.0.0.1:9").arg("ps");
    let (out, _, stderr) = run(c);
    assert!(!out.status.success());
    assert!(stderr.contains("is `corral serve` running?"), "{stderr}");
}

#[test]
fn sigterm_cancels_running_requests_after_the_grace_period() {
    let e = env();
    let store = e.models.to_string_lossy().into_owned();
    let mut s = Server::start(
        &[e.plugins.as_path()],
        &[("CORRAL_MODELS", store.as_str()), ("CORRAL_CONTEXT_LENGTH", "100000")],
        &["--shutdown-grace", "1"],
    );
    let url = s.url.clone();
    let model = e.model.clone();
    let h = std::thread::spawn(move || {
        let r = client()
            .post(format!("{url}/api/generate"))
            .json(&long_request(&model, "go", -1, true))
            .send()
            .unwrap();
        r.text().unwrap_or_default()
    });
    wait_until("the request to run", Duration::from_secs(10), || {
        ps_models(&s).first().is_some_and(|m| m["active_sequences"] == 1)
    });
    let t = Instant::now();
    assert!(s.terminate(Duration::from_secs(15)), "server did not exit:\n{}", s.log());
    println!("exited {:.1}s after SIGTERM", t.elapsed().as_secs_f64());
    let body = h.join().unwrap();
    let last = body.lines().last().unwrap_or("");
    assert!(last.contains("shutting down"), "last line: {last}");
    assert!(s.log().contains("grace period over"), "{}", s.log());
}

#[test]
fn store_endpoints_create_copy_show_delete() {
    let e = env();
    let gguf = e.models.parent().unwrap().join("tiny.gguf");
    let mut c = corral(&[]);
    c.args(["model", "generate"]).arg(&gguf);
    let (out, _, stderr) = run(c);
    assert!(out.status.success(), "{stderr}");
    let s = start(&e, &[]);
    // Upload the file as a blob, then create from it (what ollama-python's create does).
    let bytes = std::fs::read(&gguf).unwrap();
    let digest = format!("sha256:{}", sha256_hex(&gguf));
    let url = format!("{}/api/blobs/{digest}", s.url);
    assert_eq!(client().head(&url).send().unwrap().status().as_u16(), 404);
    assert_eq!(client().post(&url).body(bytes.clone()).send().unwrap().status().as_u16(), 201);
    assert_eq!(client().head(&url).send().unwrap().status().as_u16(), 200);
    let bad = format!("{}/api/blobs/sha256:{}", s.url, "0".repeat(64));
    assert_eq!(client().post(&bad).body(bytes).send().unwrap().status().as_u16(), 400);
    let r =
        client().head(format!("{}/api/blobs/sha256:..%2F..%2Fetc%2Fpasswd", s.url)).send().unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let lines = ndjson_lines(
        &s,
        "/api/create",
        &json!({"model": "tiny", "files": {"tiny.gguf": digest}, "system": "be brief",
                "parameters": {"temperature": 0.5, "stop": ["<x>"]}}),
    );
    assert_eq!(lines.last().unwrap()["status"], "success", "{lines:?}");
    let (st, tags) = get(&s, "/api/tags");
    assert_eq!(st, 200);
    assert_eq!(tags["models"][0]["name"], "tiny:latest", "{tags}");
    assert_eq!(tags["models"][0]["details"]["format"], "gguf");
    // Names ignore case, as Ollama's do (loaded once whatever the spelling: `load_key`).
    for name in ["TINY", "Tiny:Latest"] {
        let (st, show) = post(&s, "/api/show", &json!({"model": name}));
        assert_eq!(st, 200, "{name}: {show}");
        assert_eq!(show["system"], "be brief");
    }
    // A streamed create ends with one "success", as Ollama's.
    let lines = ndjson_lines(&s, "/api/create", &json!({"model": "tiny3", "from": "tiny"}));
    let successes = lines.iter().filter(|l| l["status"] == "success").count();
    assert_eq!(successes, 1, "{lines:?}");
    assert_eq!(lines.last().unwrap()["status"], "success", "{lines:?}");
    let (st, _) = post(&s, "/api/copy", &json!({"source": "tiny", "destination": "tiny2:v1"}));
    assert_eq!(st, 200);
    let (st, show) = post(&s, "/api/show", &json!({"model": "tiny2:v1"}));
    assert_eq!(st, 200, "{show}");
    assert!(show["parameters"].as_str().unwrap().contains("temperature"), "{show}");
    assert_eq!(show["system"], "be brief");
    // model_info as Ollama's: typed values, the vocabulary's arrays empty unless verbose,
    // no name or chat template.
    let info = &show["model_info"];
    assert_eq!(info["tokenizer.ggml.add_bos_token"], json!(true), "{info}");
    assert_eq!(info["tokenizer.ggml.model"], "gpt2", "{info}");
    assert!(info["tokenizer.ggml.pre"].is_string(), "{info}");
    assert_eq!(info["tokenizer.ggml.tokens"], json!([]), "{info}");
    assert!(info["llama.block_count"].is_u64(), "{info}");
    assert!(info.get("general.name").is_none() && info.get("tokenizer.chat_template").is_none());
    let (_, verbose) = post(&s, "/api/show", &json!({"model": "tiny2:v1", "verbose": true}));
    let tokens = verbose["model_info"]["tokenizer.ggml.tokens"].as_array().unwrap();
    assert!(tokens.len() > 256 && tokens.iter().all(Value::is_string), "{}", tokens.len());
    let (st, m) = get(&s, "/v1/models/tiny2:v1");
    assert_eq!(st, 200, "{m}");
    let r = client()
        .delete(format!("{}/api/delete", s.url))
        .json(&json!({"model": "tiny2:v1"}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = client()
        .delete(format!("{}/api/delete", s.url))
        .json(&json!({"model": "tiny2:v1"}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let (st, _) = post(&s, "/api/create", &json!({"model": "bad/../name", "from": "tiny"}));
    assert_eq!(st, 400);
    let (st, v) =
        post(&s, "/api/create", &json!({"model": "x", "modelfile": "FROM tiny\nBOGUS 1\n"}));
    assert_eq!(st, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("line 2"), "{v}");
    // A TEMPLATE that can never render is refused as Ollama refuses it; valid Go the
    // translation lacks is stored (the model renders with its own template).
    for (template, status) in
        [("{{ if .Prompt }}open", 400), ("{{ nosuch .Prompt }}", 400), ("{{ js .Prompt }}", 200)]
    {
        let (st, v) = post(
            &s,
            "/api/create",
            &json!({"model": "tmpl", "from": "tiny", "template": template, "stream": false}),
        );
        assert_eq!(st, status, "{template}: {v}");
        if status == 400 {
            assert!(v["error"].as_str().unwrap().contains("TEMPLATE"), "{v}");
        }
    }
    // Parameters, messages and licenses of the wrong type or out of range are refused
    // when the model is made, not stored to fail every later request on it.
    for (body, says) in [
        (json!({"parameters": {"num_ctx": "x"}}), "num_ctx"),
        (json!({"parameters": {"stop": 5}}), "stop"),
        (json!({"parameters": {"top_k": "abc"}}), "top_k"),
        (json!({"parameters": {"temperature": -5}}), "temperature"),
        (json!({"parameters": {"nope": 1}}), "nope"),
        (json!({"messages": [1]}), "messages"),
        (json!({"messages": [{"role": 5}]}), "role"),
        (json!({"license": ["a", 1]}), "license"),
    ] {
        let mut body = body;
        body["model"] = json!("typed");
        body["from"] = json!("tiny");
        body["stream"] = json!(false);
        let (st, v) = post(&s, "/api/create", &body);
        assert_eq!(st, 400, "{body}: {v}");
        assert!(v["error"].as_str().unwrap_or_default().contains(says), "{body}: {v}");
    }
    let (st, v) = post(
        &s,
        "/api/create",
        &json!({"model": "x", "modelfile": "FROM tiny\nPARAMETER top_p 7\n"}),
    );
    assert_eq!(st, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("top_p"), "{v}");
    let (st, v) = post(
        &s,
        "/api/create",
        &json!({"model": "typed", "from": "tiny", "stream": false,
        "parameters": {"temperature": 0.3, "stop": ["a", "b"], "num_ctx": 512}}),
    );
    assert_eq!(st, 200, "good parameters: {v}");
    // A registry that cannot be reached is the upstream's failure: 502, saying so.
    let port = free_port();
    let (st, v) = post(
        &s,
        "/api/pull",
        &json!({"model": format!("127.0.0.1:{port}/ns/m:t"), "stream": false}),
    );
    assert_eq!(st, 502, "{v}");
    assert!(v["error"].as_str().unwrap_or_default().contains("127.0.0.1"), "{v}");
}

fn sha256_hex(p: &Path) -> String {
    let out = std::process::Command::new("sha256sum").arg(p).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

/// A request for a loaded model is served while another model loads: the scheduler's
/// request path takes no global lock. The second model's load takes 3 s (the example
/// plugin's `on_load=delay:3000` trigger); requests to the first answer meanwhile.
#[test]
fn a_loaded_model_answers_while_another_loads() {
    let e = env();
    let slow = e.models.parent().unwrap().join("slow.toy");
    std::fs::write(&slow, "toy weights slow\non_load=delay:3000\n").unwrap();
    let slow = slow.to_string_lossy().into_owned();
    let s = start(&e, &[]);
    let generate = |model: &str| {
        post(
            &s,
            "/api/generate",
            &json!({"model": model, "prompt": "hi", "stream": false, "options": {"num_predict": 2}}),
        )
    };
    assert_eq!(generate(&e.model).0, 200);
    let url = s.url.clone();
    let loading = std::thread::spawn(move || {
        let t = Instant::now();
        let r = client()
            .post(format!("{url}/api/generate"))
            .json(&json!({"model": slow, "prompt": "hi", "stream": false,
                          "options": {"num_predict": 2}}))
            .send()
            .unwrap();
        (r.status().as_u16(), t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(500));
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        let t = Instant::now();
        let (st, v) = generate(&e.model);
        assert_eq!(st, 200, "{v}");
        worst = worst.max(t.elapsed());
    }
    let (st, load_took) = loading.join().unwrap();
    assert_eq!(st, 200);
    println!(
        "while another model loaded for {:.2} s, the loaded model answered within {:.1} ms",
        load_took.as_secs_f64(),
        worst.as_secs_f64() * 1e3
    );
    assert!(load_took >= Duration::from_millis(2900), "the slow load took {load_took:?}");
    assert!(worst < Duration::from_millis(1000), "the loaded model waited {worst:?}");
}

/// `corral serve` initialises the chosen plugin once (in-process engines: the startup
/// choice and the scheduler share one plugin catalog).
#[test]
fn serve_initialises_the_plugin_once() {
    let e = env();
    let s = start(&e, &[("CORRAL_ISOLATION", "in-process")]);
    for model in [&e.model, &e.model2] {
        let (st, v) = post(
            &s,
            "/api/generate",
            &json!({"model": model, "prompt": "hi", "stream": false, "options": {"num_predict": 2}}),
        );
        assert_eq!(st, 200, "{v}");
    }
    let log = s.log();
    let inits = log.matches("example backend initialised").count();
    assert_eq!(inits, 1, "init ran {inits} times:\n{log}");
}

/// A conversation continued through `context` holds one BOS, at its start (Ollama
/// tokenizes the earlier text and the new together): the continuation's template text
/// is tokenized without the tokenizer's BOS or a template's leading BOS text.
#[test]
fn context_continuations_hold_one_bos() {
    let e = env();
    let s = start(&e, &[]);
    // The toy tokenizer: bytes, and BOS = 256; a template that writes BOS too.
    let body = |prompt: &str, context: &Value| {
        json!({"model": e.model, "prompt": prompt, "stream": false, "context": context,
               "template": "{{ bos_token }}{% for m in messages %}<{{ m.content }}>{% endfor %}", "options": {"num_predict": 2, "seed": 1}})
    };
    let (st, first) = post(&s, "/api/generate", &body("My name is Bob.", &json!([])));
    assert_eq!(st, 200, "{first}");
    let bos_count = |v: &Value| {
        v["context"].as_array().unwrap().iter().filter(|t| t.as_u64() == Some(256)).count()
    };
    assert_eq!(bos_count(&first), 1, "{first}");
    assert_eq!(first["context"][0], 256, "{first}");
    let (st, second) = post(&s, "/api/generate", &body("Who am I?", &first["context"]));
    assert_eq!(st, 200, "{second}");
    assert_eq!(bos_count(&second), 1, "{second}");
    // Raw text has no template, system or context (Ollama's 400), and gives no context.
    for extra in
        [json!({"system": "S"}), json!({"template": "{{ .Prompt }}"}), json!({"context": [1]})]
    {
        let mut b = json!({"model": e.model, "prompt": "x", "raw": true, "stream": false});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let (st, v) = post(&s, "/api/generate", &b);
        assert_eq!(st, 400, "{extra}: {v}");
        assert!(v["error"].as_str().unwrap().contains("raw mode"), "{v}");
    }
    let (st, v) = post(
        &s,
        "/api/generate",
        &json!({"model": e.model, "prompt": "x", "raw": true,
        "stream": false, "options": {"num_predict": 2}}),
    );
    assert_eq!(st, 200, "{v}");
    assert!(v.get("context").is_none(), "{v}");
    let n = first["context"].as_array().unwrap().len();
    assert_eq!(
        second["context"].as_array().unwrap()[..n],
        first["context"].as_array().unwrap()[..],
        "the earlier tokens come first"
    );
}
