//! Remote models end to end: a second `corral serve` on another loopback port plays the
//! remote, as an `ollama`-kind remote and (the same server through `/v1`) as an
//! `openai`-kind one. Answers equal the remote's own; a remote that is down, slow,
//! refuses the key or redirects elsewhere gives a clear error and leaves local models
//! alone; servers of one remote share the load and fail over; a client that goes away
//! cancels the remote request; `CORRAL_NO_REMOTE` turns remotes off; no prompt or answer
//! reaches the log. Hostile fakes (a `TcpListener` in the test) check the bounds: every
//! body read ends by the remote's `timeout` (504), `num_predict` and a size cap end an
//! endless or huge answer, a remote's error text is cut and stripped of credentials, a
//! refused upstream key is a 502, and a remote that leads back here ends in a 508.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        mpsc::{Receiver, Sender},
    },
    time::{Duration, Instant},
};

use corral_e2e::*;
use serde_json::{Value, json};

fn client() -> reqwest::blocking::Client {
    http_client()
}

fn post(s: &Server, path: &str, body: &Value) -> (u16, Value) {
    post_json(&s.url, path, body)
}

fn get(s: &Server, path: &str) -> (u16, Value) {
    get_json(&s.url, path)
}

/// The lines of a streamed answer (NDJSON, or the `data:` events of SSE).
fn stream_lines(s: &Server, path: &str, body: &Value) -> Vec<Value> {
    let r = client().post(format!("{}{path}", s.url)).json(body).send().unwrap();
    assert_eq!(r.status().as_u16(), 200, "{path}");
    r.text()
        .unwrap()
        .lines()
        .map(|l| l.strip_prefix("data: ").unwrap_or(l))
        .filter(|l| !l.trim().is_empty() && *l != "[DONE]")
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

struct Env {
    dir: tempfile::TempDir,
    plugins: PathBuf,
    /// A toy model file (the example plugin's format): the remote serves it by path.
    model: String,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    example_plugin_dir(&plugins);
    let model = dir.path().join("big.toy");
    std::fs::write(&model, "toy weights of the big model").unwrap();
    Env { plugins, model: model.to_string_lossy().into_owned(), dir }
}

/// A server with the example plugin, its own store, and `config` (TOML) as its config.
fn serve(e: &Env, name: &str, config: &str, vars: &[(&str, &str)]) -> Server {
    let cfg = e.dir.path().join(format!("{name}.toml"));
    std::fs::write(&cfg, config).unwrap();
    let store = e.dir.path().join(format!("{name}-store"));
    let (cfg, store) = (cfg.to_string_lossy().into_owned(), store.to_string_lossy().into_owned());
    let mut all: Vec<(&str, &str)> = vec![("CORRAL_CONFIG", &cfg), ("CORRAL_MODELS", &store)];
    all.extend_from_slice(vars);
    Server::start(&[e.plugins.as_path()], &all, &[])
}

/// Creates remote model `name` for `model` on `remote` through `/api/create`.
fn create_remote(s: &Server, name: &str, remote: &str, model: &str) {
    let (st, v) = post(
        s,
        "/api/create",
        &json!({"model": name, "from": model, "remote_host": remote, "stream": false}),
    );
    assert_eq!(st, 200, "{v}");
}

fn gen_body(model: &str, prompt: &str, stream: bool) -> Value {
    json!({"model": model, "prompt": prompt, "stream": stream,
           "options": {"num_predict": 12, "temperature": 0}})
}

/// A request that runs until cancelled: a string schema too long to finish keeps the toy
/// model from ending.
fn endless(model: &str) -> Value {
    json!({"model": model, "prompt": "go on", "stream": true,
           "format": {"type": "string", "minLength": 900000},
           "options": {"num_predict": 100000, "temperature": 0}})
}

#[test]
fn remote_models_answer_as_the_remote_does_through_every_api() {
    let e = env();
    let remote = serve(&e, "remote", "", &[]);
    let config = format!(
        "[remotes.lab]\nurl = \"{0}\"\n\n[remotes.labv1]\nkind = \"openai\"\nurl = \"{0}/v1\"\n",
        remote.url
    );
    let s = serve(&e, "front", &config, &[]);
    create_remote(&s, "big", "lab", &e.model);
    create_remote(&s, "big-oai", "labv1", &e.model);
    // An unknown remote is refused at create time, naming the ones there are.
    let (st, v) =
        post(&s, "/api/create", &json!({"model": "x", "from": "m", "remote_host": "nope"}));
    assert_eq!(st, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("lab, labv1"), "{v}");

    // Ollama's generate, whole and streamed, from both kinds of remote: the remote's text.
    let (st, direct) = post(&remote, "/api/generate", &gen_body(&e.model, "Hello there", false));
    assert_eq!(st, 200, "{direct}");
    let want = direct["response"].as_str().unwrap().to_string();
    assert!(!want.is_empty());
    for name in ["big", "big-oai"] {
        let (st, v) = post(&s, "/api/generate", &gen_body(name, "Hello there", false));
        assert_eq!(st, 200, "{name}: {v}");
        assert_eq!(v["response"], want.as_str(), "{name}");
        assert_eq!(v["model"], format!("{name}:latest"));
        assert_eq!(v["done"], true);
        assert!(v["eval_count"].as_u64().unwrap() > 0, "{v}");
        let lines = stream_lines(&s, "/api/generate", &gen_body(name, "Hello there", true));
        let text: String = lines.iter().filter_map(|l| l["response"].as_str()).collect();
        assert_eq!(text, want, "{name} streamed");
        assert_eq!(lines.last().unwrap()["done"], true);
    }

    // Chat through Ollama's API and OpenAI's, on each remote.
    let chat = |model: &str| {
        json!({"model": model, "stream": false, "options": {"num_predict": 10, "temperature": 0},
               "messages": [{"role": "system", "content": "be brief"},
                            {"role": "user", "content": "What is 2+2?"}]})
    };
    let (_, direct) = post(&remote, "/api/chat", &chat(&e.model));
    let want = direct["message"]["content"].as_str().unwrap().to_string();
    for name in ["big", "big-oai"] {
        let (st, v) = post(&s, "/api/chat", &chat(name));
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["message"]["content"], want.as_str(), "{name}");
        let body = json!({"model": name, "max_tokens": 10, "temperature": 0,
            "messages": [{"role": "system", "content": "be brief"},
                         {"role": "user", "content": "What is 2+2?"}]});
        let (st, v) = post(&s, "/v1/chat/completions", &body);
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["choices"][0]["message"]["content"], want.as_str(), "{name} via /v1");
        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        let events = stream_lines(&s, "/v1/chat/completions", &streamed);
        let text: String =
            events.iter().filter_map(|e| e["choices"][0]["delta"]["content"].as_str()).collect();
        assert_eq!(text, want, "{name} streamed via /v1");
    }

    // Anthropic's Messages API and OpenAI's Responses API on remote models too.
    for name in ["big", "big-oai"] {
        let (st, v) = post(
            &s,
            "/v1/messages",
            &json!({"model": name, "max_tokens": 10,
            "temperature": 0, "system": "be brief",
            "messages": [{"role": "user", "content": "What is 2+2?"}]}),
        );
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["content"][0]["text"], want.as_str(), "{name} via /v1/messages");
        let (st, v) = post(
            &s,
            "/v1/responses",
            &json!({"model": name, "max_output_tokens": 10,
            "temperature": 0, "instructions": "be brief", "input": "What is 2+2?"}),
        );
        assert_eq!(st, 200, "{v}");
        let text = v["output"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o["type"] == "message")
            .flat_map(|o| o["content"].as_array().unwrap().clone())
            .filter_map(|c| c["text"].as_str().map(str::to_string))
            .collect::<String>();
        assert_eq!(text, want, "{name} via /v1/responses");
    }

    // Tool calls come back through both kinds of remote (forced with tool_choice), and
    // count_tokens counts on the remote what the local model would.
    let tools = json!([{"name": "get_weather", "description": "weather",
        "input_schema": {"type": "object",
                         "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
                         "required": ["city"]}}]);
    let (_, direct) = post(
        &remote,
        "/v1/messages/count_tokens",
        &json!({"model": e.model,
        "messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": tools}),
    );
    for name in ["big", "big-oai"] {
        let (st, v) = post(
            &s,
            "/v1/messages",
            &json!({"model": name, "max_tokens": 120,
            "messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": tools,
            "tool_choice": {"type": "any"}}),
        );
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["stop_reason"], "tool_use", "{name}: {v}");
        assert_eq!(v["content"][0]["name"], "get_weather", "{name}: {v}");
        let (st, v) = post(
            &s,
            "/v1/messages/count_tokens",
            &json!({"model": name,
            "messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": tools}),
        );
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["input_tokens"], direct["input_tokens"], "{name}");
    }

    // Embeddings.
    let (_, direct) = post(&remote, "/api/embed", &json!({"model": e.model, "input": ["a", "b"]}));
    for name in ["big", "big-oai"] {
        let (st, v) = post(&s, "/api/embed", &json!({"model": name, "input": ["a", "b"]}));
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["embeddings"].as_array().unwrap().len(), 2);
        let (a, b) = (&v["embeddings"][0], &direct["embeddings"][0]);
        for i in 0..4 {
            let d = a[i].as_f64().unwrap() - b[i].as_f64().unwrap();
            assert!(d.abs() < 1e-5, "{name}: {a} vs {b}");
        }
    }

    // Listed and shown as remote.
    let (_, tags) = get(&s, "/api/tags");
    let big = tags["models"].as_array().unwrap().iter().find(|m| m["name"] == "big:latest");
    let big = big.unwrap_or_else(|| panic!("{tags}"));
    assert_eq!(big["remote_host"], "lab");
    assert_eq!(big["remote_model"], e.model.as_str());
    let (_, models) = get(&s, "/v1/models");
    assert!(
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "big-oai:latest" && m["owned_by"] == "labv1"),
        "{models}"
    );
    let (st, show) = post(&s, "/api/show", &json!({"model": "big"}));
    assert_eq!(st, 200, "{show}");
    assert_eq!(show["remote_host"], "lab");
    // Nothing is loaded here for them.
    assert_eq!(get(&s, "/api/ps").1["models"], json!([]));

    // `corral create --remote` and `corral list` through the server.
    let store = e.dir.path().join("front-store");
    let host = s.url.trim_start_matches("http://").to_string();
    let spec = format!("lab:{}", e.model);
    let (code, _, err) = go(&store, &host, &["create", "big2", "--remote", &spec]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = go(&store, &host, &["list"]);
    assert_eq!(code, 0, "{err}");
    let row = out.lines().find(|l| l.starts_with("big2:latest")).unwrap_or_else(|| panic!("{out}"));
    assert!(row.contains("remote lab"), "{row}");
    let (st, v) = post(&s, "/api/generate", &gen_body("big2", "Hello there", false));
    assert_eq!(st, 200, "{v}");
    // `corral run NAME` through the server, as with a local model.
    let mut run = cli(&store, &host);
    run.args(["run", "big2", "Hello there", "--temperature", "0"]);
    let (out, stdout, stderr) = corral_e2e::run(run);
    assert!(out.status.success(), "{stderr}");
    assert!(!stdout.trim().is_empty(), "{stderr}");
}

#[test]
fn a_remote_that_is_down_slow_or_refuses_the_key_says_so_and_local_models_go_on() {
    let e = env();
    // A port nothing listens on, a server that accepts and never answers, and a server
    // that wants a key.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in silent.incoming().flatten() {
            held.push(c);
        }
    });
    let keyed = serve(&e, "keyed", "", &[("CORRAL_API_KEYS", "right-key")]);
    let config = format!(
        "[remotes.down]\nurl = \"http://{closed}\"\n\n\
         [remotes.slow]\nurl = \"http://{silent_addr}\"\ntimeout = \"1s\"\n\n\
         [remotes.keyed]\nurl = \"{}\"\napi_key_env = \"TEST_REMOTE_KEY\"\n\n\
         [remotes.keyed-ok]\nurl = \"{}\"\napi_key_file = \"{}\"\n",
        keyed.url,
        keyed.url,
        e.dir.path().join("key.txt").display()
    );
    std::fs::write(e.dir.path().join("key.txt"), "right-key\n").unwrap();
    let s = serve(&e, "front", &config, &[("TEST_REMOTE_KEY", "wrong-key")]);
    for (name, remote) in [("d", "down"), ("sl", "slow"), ("k", "keyed"), ("ok", "keyed-ok")] {
        create_remote(&s, name, remote, &e.model);
    }
    let (st, v) = post(&s, "/api/generate", &gen_body("d", "hi", false));
    assert_eq!(st, 502, "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains("remote \"down\"") && msg.contains("not answering"), "{msg}");
    let t = Instant::now();
    let (st, v) = post(
        &s,
        "/api/chat",
        &json!({"model": "sl", "stream": false,
        "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(st, 504, "{v}");
    assert!(t.elapsed() < Duration::from_secs(20));
    assert!(v["error"].as_str().unwrap().contains("remote \"slow\""), "{v}");
    // The remote refusing this server's key is a 502: a 401 would tell the client that
    // its own key is wrong.
    let (st, v) = post(&s, "/api/generate", &gen_body("k", "hi", false));
    assert_eq!(st, 502, "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(
        msg.contains("refused this server's credentials") && msg.contains("$TEST_REMOTE_KEY"),
        "{msg}"
    );
    let (st, v) = post(&s, "/api/generate", &gen_body("ok", "hi", false));
    assert_eq!(st, 200, "{v}");
    // OpenAI's API gives the same errors in its own shape.
    let (st, v) = post(
        &s,
        "/v1/chat/completions",
        &json!({"model": "d",
        "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(st, 502, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("remote \"down\""), "{v}");
    // A local model on the same server is not disturbed.
    let (st, v) = post(&s, "/api/generate", &gen_body(&e.model, "hi", false));
    assert_eq!(st, 200, "{v}");
}

#[test]
fn servers_of_a_remote_share_the_load_and_fail_over() {
    let e = env();
    let mut a = serve(&e, "a", "", &[]);
    let b = serve(&e, "b", "", &[]);
    let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config =
        format!("[remotes.pool]\nurls = [\"http://{dead}\", \"{}\", \"{}\"]\n", a.url, b.url);
    let s = serve(&e, "front", &config, &[]);
    create_remote(&s, "big", "pool", &e.model);
    // The dead server is skipped: the request is served.
    let (st, v) = post(&s, "/api/generate", &gen_body("big", "hi", false));
    assert_eq!(st, 200, "{v}");
    // Two long streams at once go to different servers (least busy first).
    let open = |body: &Value| {
        let r = client().post(format!("{}/api/generate", s.url)).json(body).send().unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let mut lines = BufReader::new(r);
        let mut first = String::new();
        lines.read_line(&mut first).unwrap();
        assert!(first.contains("\"response\""), "{first}");
        lines
    };
    let s1 = open(&endless("big"));
    let s2 = open(&endless("big"));
    let active = |x: &Server| -> u64 {
        get(x, "/api/ps").1["models"]
            .as_array()
            .map_or(0, |m| m.iter().map(|m| m["active_sequences"].as_u64().unwrap_or(0)).sum())
    };
    assert_eq!((active(&a), active(&b)), (1, 1), "the streams were not spread");
    // Kill server a mid-stream: its stream ends with an error that names the remote; the
    // other stream goes on; the next request goes to b.
    let t = Instant::now();
    a.child.kill().unwrap();
    let _ = a.child.wait();
    // Each stream is read until it ends or 15 s pass: the one on a ends with an error,
    // the other does not.
    let readers: Vec<_> = [s1, s2]
        .into_iter()
        .map(|mut reader| {
            std::thread::spawn(move || {
                let t = Instant::now();
                let mut line = String::new();
                while t.elapsed() < Duration::from_secs(15) {
                    line.clear();
                    // The other stream may finish (at its context's end) with `done`.
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return None;
                    }
                    if line.contains("\"error\"") {
                        return Some(line);
                    }
                }
                None
            })
        })
        .collect();
    let ends: Vec<Option<String>> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    assert_eq!(ends.iter().filter(|e| e.is_some()).count(), 1, "{ends:?}");
    let failed = ends.into_iter().flatten().next();
    let failed = failed.expect("the stream on the killed server did not end with an error");
    assert!(failed.contains("pool"), "{failed}");
    assert!(t.elapsed() < Duration::from_secs(30));
    let (st, v) = post(&s, "/api/generate", &gen_body("big", "hi", false));
    assert_eq!(st, 200, "{v}");
}

#[test]
fn a_client_that_goes_away_cancels_the_remote_request() {
    let e = env();
    let remote = serve(&e, "remote", "", &[]);
    let s = serve(&e, "front", &format!("[remotes.lab]\nurl = \"{}\"\n", remote.url), &[]);
    create_remote(&s, "big", "lab", &e.model);
    let r = client().post(format!("{}/api/generate", s.url)).json(&endless("big")).send().unwrap();
    let mut reader = BufReader::new(r);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let busy = |x: &Server| -> u64 {
        get(x, "/api/ps").1["models"][0]["active_sequences"].as_u64().unwrap_or(0)
    };
    assert_eq!(busy(&remote), 1);
    drop(reader);
    let t = Instant::now();
    while busy(&remote) != 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "the remote still generates");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn no_remote_turns_remotes_off_and_cloud_names_go_to_the_default_remote() {
    let e = env();
    let remote = serve(&e, "remote", "", &[]);
    let config = format!("[remotes.lab]\nurl = \"{}\"\ndefault = true\n", remote.url);
    let s = serve(&e, "front", &config, &[]);
    create_remote(&s, "big", "lab", &e.model);
    // `MODEL:TAG-cloud` is MODEL:TAG on the default remote, which lacks it: its 404 names
    // the remote and the translated name.
    let (st, v) = post(&s, "/api/generate", &gen_body("qwen3:8b-cloud", "hi", false));
    assert_eq!(st, 404, "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains("remote \"lab\"") && msg.contains("\"qwen3:8b\""), "{msg}");
    drop(s);
    let off = serve(&e, "off", &config, &[("CORRAL_NO_REMOTE", "1")]);
    create_remote(&off, "big", "lab", &e.model);
    let (st, v) = post(&off, "/api/generate", &gen_body("big", "hi", false));
    assert_eq!(st, 503, "{v}");
    assert!(v["error"].as_str().unwrap().contains("CORRAL_NO_REMOTE"), "{v}");
    let (st, _) = post(&off, "/api/generate", &gen_body("qwen3:cloud", "hi", false));
    assert_eq!(st, 503);
    // A config switch does the same.
    let off2 = serve(&e, "off2", &format!("no_remote = true\n{config}"), &[]);
    create_remote(&off2, "big", "lab", &e.model);
    assert_eq!(post(&off2, "/api/generate", &gen_body("big", "hi", false)).0, 503);
}

/// The server's remote client takes the environment's proxies except for this machine,
/// as every corral HTTP client does: a remote on loopback answers with `HTTP_PROXY` and
/// `ALL_PROXY` pointing at a closed port and no `NO_PROXY`.
#[test]
fn a_remote_on_this_machine_is_reached_past_the_environments_proxies() {
    let e = env();
    let remote = serve(&e, "remote", "", &[]);
    let config = format!("[remotes.lab]\nurl = \"{}\"\n", remote.url);
    let closed = "http://127.0.0.1:9";
    let s = serve(
        &e,
        "front",
        &config,
        &[
            ("HTTP_PROXY", closed),
            ("http_proxy", closed),
            ("ALL_PROXY", closed),
            ("NO_PROXY", ""),
            ("no_proxy", ""),
        ],
    );
    create_remote(&s, "big", "lab", &e.model);
    let (st, v) = post(&s, "/api/generate", &gen_body("big", "hi", false));
    assert_eq!(st, 200, "{v}");
    assert!(v["response"].is_string(), "{v}");
}

/// A one-shot HTTP server that answers every request with `response` and records what
/// it received.
fn fake_server(response: &'static str) -> (String, std::sync::mpsc::Receiver<String>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = vec![0u8; 65536];
            let n = c.read(&mut buf).unwrap_or(0);
            let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
            let _ = c.write_all(response.as_bytes());
        }
    });
    (addr, rx)
}

#[test]
fn a_key_never_follows_a_redirect_to_another_server_and_prompts_stay_out_of_the_log() {
    let e = env();
    let (elsewhere, seen_elsewhere) = fake_server("HTTP/1.1 500 x\r\nContent-Length: 0\r\n\r\n");
    let redirect: &'static str = Box::leak(
        format!(
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://{elsewhere}/api/generate\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .into_boxed_str(),
    );
    let (redirector, seen_here) = fake_server(redirect);
    let config = format!("[remotes.r]\nurl = \"http://{redirector}\"\napi_key_env = \"K\"\n");
    let s = serve(&e, "front", &config, &[("K", "the-secret-key")]);
    create_remote(&s, "big", "r", &e.model);
    let (st, v) = post(&s, "/api/generate", &gen_body("big", "hi", false));
    assert_eq!(st, 502, "{v}");
    assert!(v["error"].as_str().unwrap().contains("redirect"), "{v}");
    let first = seen_here.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(first.contains("the-secret-key"), "the remote itself gets the key");
    assert!(
        seen_elsewhere.recv_timeout(Duration::from_secs(1)).is_err(),
        "the redirect target was contacted"
    );

    // Prompts and answers never reach the log, even at debug level.
    let remote = serve(&e, "remote", "", &[]);
    let s = serve(
        &e,
        "front2",
        &format!("[remotes.lab]\nurl = \"{}\"\n", remote.url),
        &[("CORRAL_LOG", "debug")],
    );
    create_remote(&s, "big", "lab", &e.model);
    let secret = "MY-PRIVATE-PROMPT-7731";
    let (st, v) = post(&s, "/api/generate", &gen_body("big", secret, false));
    assert_eq!(st, 200, "{v}");
    let answer = v["response"].as_str().unwrap().to_string();
    let log = s.log();
    assert!(log.contains("remote request answered"), "{log}");
    assert!(!log.contains(secret), "the prompt is in the log:\n{log}");
    if answer.trim().len() >= 8 {
        assert!(!log.contains(answer.trim()), "the answer is in the log");
    }
    assert!(!Path::new(&e.dir.path().join("front2-store")).join(secret).exists());
}

/// What a fake remote does with one request (its request line and headers in `head`):
/// it writes its answer to the connection, and may report on `events`.
type Behaviour = fn(head: &str, c: &mut TcpStream, events: &Sender<String>);

/// A fake remote on a loopback port: every connection's request is read (and its head
/// sent on the channel), then `behave` answers it on a thread of its own. Health probes
/// (GETs) get a plain 200.
fn fake_remote(behave: Behaviour) -> (String, Receiver<String>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let Some(head) = read_request(&mut c) else { return };
                let _ = tx.send(head.clone());
                if head.starts_with("GET ") {
                    let _ = c.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
                    );
                    return;
                }
                behave(&head, &mut c, &tx);
            });
        }
    });
    (addr, rx)
}

/// Reads one request (head and a Content-Length body); returns its head.
fn read_request(c: &mut TcpStream) -> Option<String> {
    c.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = c.read(&mut chunk).ok().filter(|&n| n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let len = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(str::to_string))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while buf.len() < end + len {
        let n = c.read(&mut chunk).ok().filter(|&n| n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(head)
}

/// A request header's value in a request head.
fn header_of(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

/// Waits until this server drops the connection (or a minute passes).
fn hold(c: &mut TcpStream) {
    let _ = c.set_read_timeout(Some(Duration::from_secs(60)));
    let mut b = [0u8; 64];
    while matches!(c.read(&mut b), Ok(n) if n > 0) {}
}

const NDJSON_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nConnection: close\r\n\r\n";

fn json_answer(c: &mut TcpStream, status: &str, body: &str) {
    let _ = write!(
        c,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
}

/// A server of `remotes` (each `(name, address, timeout)`), with remote model `r-NAME`
/// for each; the remotes' key is `vars`' `FAKE_KEY`.
fn front(e: &Env, remotes: &[(&str, &str, &str)], vars: &[(&str, &str)]) -> Server {
    let config: String = remotes
        .iter()
        .map(|(name, addr, timeout)| {
            format!(
                "[remotes.{name}]\nurl = \"http://{addr}\"\ntimeout = \"{timeout}\"\n\
                 api_key_env = \"FAKE_KEY\"\n\n"
            )
        })
        .collect();
    let s = serve(e, "front", &config, vars);
    for (name, _, _) in remotes {
        create_remote(&s, &format!("r-{name}"), name, "m");
    }
    s
}

fn chat_body(model: &str, stream: bool, num_predict: Option<u32>) -> Value {
    let mut b = json!({"model": model, "stream": stream,
        "messages": [{"role": "user", "content": "hi"}]});
    if let Some(n) = num_predict {
        b["options"] = json!({"num_predict": n});
    }
    b
}

#[test]
fn a_remote_that_stops_mid_answer_ends_with_a_504_after_its_timeout_on_every_path() {
    let e = env();
    // Headers, then part of the body, then nothing (an error answer and a success).
    let (stall500, _) = fake_remote(|_, c, _| {
        let _ = c.write_all(
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 1000\r\n\r\n{\"error\": \"sl",
        );
        hold(c);
    });
    let (stall200, _) = fake_remote(|_, c, _| {
        let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{\"usa");
        hold(c);
    });
    // A stream that sends a space a second: bytes, but never a piece of an answer.
    let (trickle, _) = fake_remote(|_, c, _| {
        let _ = c.write_all(NDJSON_HEAD);
        while c.write_all(b" ").is_ok() {
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    let s = front(
        &e,
        &[
            ("stall500", &stall500, "2s"),
            ("stall200", &stall200, "2s"),
            ("trickle", &trickle, "2s"),
        ],
        &[],
    );
    let within = |what: &str, t: Instant, msg: &str| {
        assert!(t.elapsed() < Duration::from_secs(15), "{what} took {:?}", t.elapsed());
        assert!(
            msg.contains("did not") && msg.contains("within 2 s (its timeout)"),
            "{what}: {msg}"
        );
    };
    let cases: Vec<(&str, &str, Value)> = vec![
        ("stall500 chat", "/api/chat", chat_body("r-stall500", false, None)),
        ("stall500 openai", "/v1/chat/completions", chat_body("r-stall500", false, None)),
        ("stall200 chat", "/api/chat", chat_body("r-stall200", false, None)),
        ("stall200 show", "/api/show", json!({"model": "r-stall200"})),
        ("stall200 embed", "/api/embed", json!({"model": "r-stall200", "input": ["a"]})),
        (
            "stall200 count_tokens",
            "/v1/messages/count_tokens",
            json!({"model": "r-stall200", "messages": [{"role": "user", "content": "hi"}]}),
        ),
        ("trickle chat", "/api/chat", chat_body("r-trickle", false, Some(8))),
        ("trickle generate", "/api/generate", gen_body("r-trickle", "hi", false)),
    ];
    for (what, path, body) in cases {
        let t = Instant::now();
        let (st, v) = post(&s, path, &body);
        assert_eq!(st, 504, "{what}: {v}");
        let msg = v["error"].as_str().or(v["error"]["message"].as_str()).unwrap_or_default();
        within(what, t, msg);
    }
    // Streamed: the stream ends with the error.
    let t = Instant::now();
    let lines = stream_lines(&s, "/api/chat", &chat_body("r-trickle", true, None));
    let last = lines.last().unwrap();
    within("trickle streamed", t, last["error"].as_str().unwrap_or_default());
}

#[test]
fn a_remote_answer_is_bounded_by_num_predict_and_by_size() {
    let e = env();
    // Ignores num_predict and streams forever; reports when this server hangs up.
    let (infinite, closed) = fake_remote(|head, c, events| {
        let _ = c.write_all(NDJSON_HEAD);
        let line = if head.contains("/v1/") {
            "data: {\"choices\":[{\"delta\":{\"content\":\"tok \"}}]}\n\n"
        } else {
            "{\"message\":{\"role\":\"assistant\",\"content\":\"tok \"},\"done\":false}\n"
        };
        let t = Instant::now();
        while c.write_all(line.as_bytes()).is_ok() && t.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = events.send("hung up".into());
    });
    // 20 lines of 1 MiB each, then done.
    let (big, _) = fake_remote(|_, c, _| {
        let _ = c.write_all(NDJSON_HEAD);
        let line = format!(
            "{{\"message\":{{\"role\":\"assistant\",\"content\":\"{}\"}},\"done\":false}}\n",
            "B".repeat(1 << 20)
        );
        for _ in 0..20 {
            if c.write_all(line.as_bytes()).is_err() {
                return;
            }
        }
        let _ = c.write_all(b"{\"done\":true,\"done_reason\":\"stop\"}\n");
    });
    let config = format!(
        "[remotes.infinite]\nurl = \"http://{infinite}\"\ntimeout = \"5s\"\n\n\
         [remotes.infinite-oai]\nkind = \"openai\"\nurl = \"http://{infinite}\"\n\
         timeout = \"5s\"\n\n[remotes.big]\nurl = \"http://{big}\"\ntimeout = \"20s\"\n"
    );
    let s = serve(&e, "front", &config, &[]);
    for name in ["infinite", "infinite-oai", "big"] {
        create_remote(&s, &format!("r-{name}"), name, "m");
    }
    let hung_up = |what: &str| {
        // Drain the heads of requests; wait for the hang-up.
        let t = Instant::now();
        loop {
            match closed.recv_timeout(Duration::from_secs(10)) {
                Ok(ev) if ev == "hung up" => break,
                Ok(_) => {}
                Err(_) => panic!("{what}: the remote's stream was not dropped"),
            }
            assert!(t.elapsed() < Duration::from_secs(20), "{what}: not dropped");
        }
    };
    // Whole, through Ollama's API: the answer ends at num_predict, as `length`.
    let (st, v) = post(&s, "/api/chat", &chat_body("r-infinite", false, Some(8)));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["message"]["content"], "tok ".repeat(8), "{v}");
    assert_eq!(v["done_reason"], "length", "{v}");
    assert_eq!(v["eval_count"], 8, "{v}");
    hung_up("chat");
    // Streamed: it ends too, after num_predict pieces.
    let lines = stream_lines(
        &s,
        "/api/generate",
        &json!({"model": "r-infinite",
        "prompt": "hi", "options": {"num_predict": 5}}),
    );
    let text: String = lines.iter().filter_map(|l| l["response"].as_str()).collect();
    assert_eq!(text, "tok ".repeat(5));
    assert_eq!(lines.last().unwrap()["done_reason"], "length");
    hung_up("generate");
    // OpenAI's max_tokens, from an OpenAI-kind remote.
    let (st, v) = post(
        &s,
        "/v1/chat/completions",
        &json!({"model": "r-infinite-oai", "max_tokens": 3,
            "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "tok ".repeat(3), "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
    hung_up("openai");
    // An answer larger than this server takes: a clear 502, not 20 MiB held in memory.
    let (st, v) = post(&s, "/api/chat", &chat_body("r-big", false, None));
    assert_eq!(st, 502, "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains("remote \"big\"") && msg.contains("longer than 16 MiB"), "{msg}");
}

#[test]
fn a_remotes_error_text_is_cut_and_a_refused_key_is_the_servers_not_the_clients() {
    let e = env();
    let key = "sk-upstream-secret-0123456789";
    // Echoes the Authorization header it got, as some gateways do.
    let (echo401, _) = fake_remote(|head, c, _| {
        let auth = header_of(head, "authorization").unwrap_or_default();
        json_answer(
            c,
            "401 Unauthorized",
            &json!({"error": format!("bad key: {auth}")}).to_string(),
        );
    });
    // A long, many-line error page with a credential in it.
    let (leaky, _) = fake_remote(|_, c, _| {
        let body = format!("upstream exploded\nx-api-key: abcdefgh12345678\n{}", "Z".repeat(5000));
        json_answer(c, "500 Internal Server Error", &body);
    });
    // An error inside a stream, quoting the key.
    let (said, _) = fake_remote(|head, c, _| {
        let auth = header_of(head, "authorization").unwrap_or_default();
        let _ = c.write_all(NDJSON_HEAD);
        let line = json!({"error": format!("quota exceeded for {auth}")}).to_string();
        let _ = writeln!(c, "{line}");
    });
    let s = front(
        &e,
        &[("echo401", &echo401, "5s"), ("leaky", &leaky, "5s"), ("said", &said, "5s")],
        &[("FAKE_KEY", key)],
    );
    let no_secret = |what: &str, msg: &str| {
        assert!(!msg.contains("0123456789") && !msg.contains("abcdefgh12345678"), "{what}: {msg}");
        assert!(!msg.contains('\n') && msg.len() < 1500, "{what}: {msg}");
    };
    let chat = json!({"model": "r-echo401", "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}]});
    for path in ["/api/chat", "/v1/chat/completions", "/v1/messages"] {
        let (st, v) = post(&s, path, &chat);
        assert_eq!(st, 502, "{path}: {v}");
        let msg = v["error"].as_str().or(v["error"]["message"].as_str()).unwrap_or_default();
        assert!(
            msg.contains("refused this server's credentials") && msg.contains("$FAKE_KEY"),
            "{msg}"
        );
        no_secret(path, msg);
        if path == "/v1/messages" {
            assert_eq!(v["error"]["type"], "api_error", "{v}");
        }
        if path == "/v1/chat/completions" {
            assert_ne!(v["error"]["code"], "invalid_api_key", "{v}");
        }
    }
    let (st, v) = post(&s, "/api/chat", &chat_body("r-leaky", false, None));
    assert_eq!(st, 502, "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains("upstream exploded"), "{msg}");
    no_secret("leaky", msg);
    let (st, v) = post(&s, "/api/chat", &chat_body("r-said", false, None));
    assert_eq!(st, 502, "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains("quota exceeded"), "{msg}");
    no_secret("said", msg);
}

#[test]
fn a_remote_that_leads_back_here_is_refused_as_a_loop() {
    let e = env();
    // The forwards a request went through travel with it, plus one.
    let (recorder, heads) = fake_remote(|_, c, _| {
        let _ = c.write_all(NDJSON_HEAD);
        let _ = c.write_all(b"{\"message\":{\"content\":\"hi\"},\"done\":false}\n");
        let _ = c.write_all(b"{\"done\":true,\"done_reason\":\"stop\",\"eval_count\":1}\n");
    });
    // A forwarding proxy in front of this very server: the loop goes through a hop that
    // is not the server's own address.
    let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    let back: Arc<Mutex<Option<String>>> = Arc::default();
    let back2 = back.clone();
    std::thread::spawn(move || {
        for c in proxy.incoming().flatten() {
            let Some(to) = back2.lock().unwrap().clone() else { continue };
            let Ok(up) = TcpStream::connect(&to) else { continue };
            let (mut a, mut b) = (c.try_clone().unwrap(), up.try_clone().unwrap());
            let (mut c, mut up) = (c, up);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut a, &mut up);
                let _ = up.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut b, &mut c);
                let _ = c.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    let s = serve(
        &e,
        "front",
        &format!(
            "[remotes.rec]\nurl = \"http://{recorder}\"\n\n\
             [remotes.self]\nurl = \"http://{proxy_addr}\"\ntimeout = \"60s\"\n"
        ),
        &[],
    );
    *back.lock().unwrap() = Some(s.url.trim_start_matches("http://").to_string());
    create_remote(&s, "r-rec", "rec", "m");
    create_remote(&s, "r-self", "self", "r-self");
    let hops = |n: Option<u32>| {
        let mut r = client().post(format!("{}/api/chat", s.url));
        if let Some(n) = n {
            r = r.header("X-Corral-Hops", n.to_string());
        }
        let r = r.json(&chat_body("r-rec", false, None)).send().unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    let sent = |heads: &Receiver<String>| loop {
        let h = heads.recv_timeout(Duration::from_secs(5)).expect("the remote got no request");
        if h.starts_with("POST ") {
            return header_of(&h, "x-corral-hops");
        }
    };
    assert_eq!(hops(None).0, 200);
    assert_eq!(sent(&heads).as_deref(), Some("1"));
    assert_eq!(hops(Some(2)).0, 200);
    assert_eq!(sent(&heads).as_deref(), Some("3"));
    let (st, text) = hops(Some(4));
    assert_eq!(st, 508, "{text}");
    assert!(heads.recv_timeout(Duration::from_millis(300)).is_err(), "a looping request was sent");

    // The remote leads back here: a few forwards, then 508 naming the loop, at once.
    let t = Instant::now();
    for (path, body) in [
        ("/api/chat", chat_body("r-self", false, None)),
        ("/api/embed", json!({"model": "r-self", "input": ["a"]})),
        ("/v1/chat/completions", chat_body("r-self", false, None)),
    ] {
        let (st, v) = post(&s, path, &body);
        assert_eq!(st, 508, "{path}: {v}");
        let msg = v["error"].as_str().or(v["error"]["message"].as_str()).unwrap_or_default();
        assert!(msg.contains("remote \"self\"") && msg.contains("leads back"), "{msg}");
    }
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    // The server is fine.
    assert_eq!(get(&s, "/api/tags").0, 200);
}
