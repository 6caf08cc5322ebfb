//! A server that is safe to expose, end to end against the real binary: API keys, no
//! cross-site requests, and no file paths from the network. After each attack the
//! server still serves.

use std::{path::Path, time::Duration};

use corral_e2e::*;
use serde_json::{Value, json};

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().unwrap()
}

fn status_and_json(r: reqwest::blocking::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// A server on a fresh store with the example plugin, a toy model file, and `vars`.
fn start(dir: &Path, vars: &[(&str, &str)]) -> (Server, String) {
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    example_plugin_dir(&plugins);
    let model = dir.join("m.toy");
    std::fs::write(&model, "toy weights").unwrap();
    let store = dir.join("store").to_string_lossy().into_owned();
    let mut all = vec![("CORRAL_MODELS", store.as_str())];
    all.extend_from_slice(vars);
    (Server::start(&[plugins.as_path()], &all, &[]), model.to_string_lossy().into_owned())
}

#[test]
fn api_keys_guard_every_endpoint_but_health_checks() {
    let dir = tempfile::tempdir().unwrap();
    let (s, model) = start(dir.path(), &[("CORRAL_API_KEYS", "k-one, k-two")]);
    let get = |path: &str, auth: Option<(&str, &str)>| {
        let mut r = client().get(format!("{}{path}", s.url));
        if let Some((h, v)) = auth {
            r = r.header(h, v);
        }
        status_and_json(r.send().unwrap())
    };
    // Health checks stay open.
    assert_eq!(get("/", None).0, 200);
    assert_eq!(get("/api/version", None).0, 200);
    assert_eq!(client().head(&s.url).send().unwrap().status().as_u16(), 200);
    // Everything else needs a key, in the API's own error shape.
    let (st, v) = get("/api/tags", None);
    assert_eq!(st, 401, "{v}");
    assert!(v["error"].as_str().unwrap().contains("API key"), "{v}");
    let (st, v) = get("/v1/models", None);
    assert_eq!(st, 401, "{v}");
    assert_eq!(v["error"]["code"], "invalid_api_key", "{v}");
    let (st, _) = get("/api/tags", Some(("Authorization", "Bearer wrong")));
    assert_eq!(st, 401);
    assert_eq!(get("/api/tags", Some(("Authorization", "Bearer k-one"))).0, 200);
    assert_eq!(get("/api/tags", Some(("authorization", "bearer k-two"))).0, 200);
    assert_eq!(get("/v1/models", Some(("x-api-key", "k-two"))).0, 200);
    let body =
        json!({"model": model, "prompt": "hi", "stream": false, "options": {"num_predict": 2}});
    let r = client().post(format!("{}/api/generate", s.url)).json(&body).send().unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = client()
        .post(format!("{}/api/generate", s.url))
        .bearer_auth("k-one")
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // The CLI sends CORRAL_API_KEY.
    let host = s.url.trim_start_matches("http://").to_string();
    let mut c = corral(&[]);
    c.env("CORRAL_HOST", &host).env("CORRAL_API_KEY", "k-two").arg("ps");
    let (out, stdout, stderr) = run(c);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("m.toy"), "{stdout}");
    let mut c = corral(&[]);
    c.env("CORRAL_HOST", &host).env_remove("CORRAL_API_KEY").arg("ps");
    let (out, _, stderr) = run(c);
    assert!(!out.status.success(), "ps without a key: {stderr}");
    assert!(stderr.contains("API key"), "{stderr}");
    // Keys never reach the log.
    let log = s.log();
    assert!(!log.contains("k-one") && !log.contains("k-two") && !log.contains("wrong"), "{log}");
}

#[test]
fn a_key_file_and_the_warning_for_an_open_network_address() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "# operators\nfile-key\n\n").unwrap();
    let keys_s = keys.to_string_lossy().into_owned();
    let (s, _) = start(dir.path(), &[("CORRAL_API_KEY_FILE", keys_s.as_str())]);
    let r = client().get(format!("{}/api/tags", s.url)).send().unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = client().get(format!("{}/api/tags", s.url)).bearer_auth("file-key").send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    drop(s);
    // Bound to every interface with no key: a warning that names the risk and the fix.
    let plugins = dir.path().join("plugins");
    let mut c = corral(&[plugins.as_path()]);
    c.args(["serve", "--host", "0.0.0.0:0"]).env("CORRAL_LOG", "info");
    c.stderr(std::process::Stdio::piped()).stdout(std::process::Stdio::null());
    let mut child = c.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut log = String::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
        log.push_str(&line);
        log.push('\n');
        if line.starts_with("listening on") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(log.contains("no API key") && log.contains("CORRAL_API_KEYS"), "{log}");
}

#[test]
fn cross_site_requests_are_refused_before_any_handler() {
    let dir = tempfile::tempdir().unwrap();
    let (s, model) = start(dir.path(), &[("CORRAL_ORIGINS", "https://*.example.com")]);
    // A model loaded, so the server is warm.
    let body = json!({"model": model, "prompt": "", "stream": false});
    assert_eq!(
        client()
            .post(format!("{}/api/generate", s.url))
            .json(&body)
            .send()
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    let copy = |headers: &[(&str, &str)], dst: &str| {
        let mut r = client()
            .post(format!("{}/api/copy", s.url))
            .header("Content-Type", "text/plain")
            .body(json!({"source": "nothing-here", "destination": dst}).to_string());
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        status_and_json(r.send().unwrap())
    };
    // A simple (no-preflight) cross-site POST from a page the user visits.
    let (st, v) = copy(&[("Origin", "https://evil.example")], "stolen");
    assert_eq!(st, 403, "{v}");
    assert!(v["error"].as_str().unwrap().contains("evil.example"), "{v}");
    let (st, _) = copy(&[("Sec-Fetch-Site", "cross-site")], "stolen");
    assert_eq!(st, 403);
    let (st, _) = copy(&[("Origin", "https://app.example.com.evil.net")], "stolen");
    assert_eq!(st, 403);
    let (st, _) = copy(&[("Origin", "null")], "stolen");
    assert_eq!(st, 403);
    // The same preflight is refused too.
    let r = client()
        .request(reqwest::Method::OPTIONS, format!("{}/api/delete", s.url))
        .header("Origin", "https://evil.example")
        .header("Access-Control-Request-Method", "DELETE")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    // Allowed origins and clients without one reach the handler (which says the source
    // model is missing: 404, not 403).
    for headers in [
        vec![("Origin", "http://localhost:3000")],
        vec![("Origin", "https://app.example.com")],
        vec![("Sec-Fetch-Site", "same-origin")],
        vec![],
    ] {
        let (st, v) = copy(&headers, "fine");
        assert_eq!(st, 404, "{headers:?}: {v}");
    }
    // curl -d without a content type still works.
    let r = client()
        .post(format!("{}/api/show", s.url))
        .body(json!({"model": "nothing-here"}).to_string())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let (st, tags) = status_and_json(client().get(format!("{}/api/tags", s.url)).send().unwrap());
    assert_eq!(st, 200);
    assert!(!tags.to_string().contains("stolen"), "{tags}");
}

#[test]
fn model_names_are_never_paths_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    // No --allow-model-paths: the test helper's default (the temp directory) is cleared.
    let (s, model) = start(dir.path(), &[("CORRAL_ALLOW_MODEL_PATHS", "")]);
    let post = |path: &str, body: Value| {
        status_and_json(client().post(format!("{}{path}", s.url)).json(&body).send().unwrap())
    };
    for name in [model.as_str(), "/etc/passwd", "/nonexistent/x.gguf"] {
        let (st, v) =
            post("/api/generate", json!({"model": name, "prompt": "hi", "stream": false}));
        assert_eq!(st, 403, "{name}: {v}");
        assert!(v["error"].as_str().unwrap().contains("--allow-model-paths"), "{v}");
    }
    let (st, v) = post("/api/create", json!({"model": "x", "modelfile": "FROM /etc/passwd\n"}));
    assert_eq!(st, 403, "{v}");
    let (st, v) = post("/api/create", json!({"model": "x", "from": model}));
    assert_eq!(st, 403, "{v}");
    let (st, v) = post("/api/create", json!({"model": "x", "modelfile": "FROM ../../etc/hosts\n"}));
    assert_eq!(st, 403, "{v}");
    drop(s);
    // Allowed under one directory: files there work, others do not.
    let allowed = dir.path().join("allowed");
    std::fs::create_dir_all(&allowed).unwrap();
    let inside = allowed.join("in.toy");
    std::fs::write(&inside, "toy weights inside").unwrap();
    let allowed_s = allowed.to_string_lossy().into_owned();
    let (s, outside) = start(dir.path(), &[("CORRAL_ALLOW_MODEL_PATHS", allowed_s.as_str())]);
    let post = |path: &str, body: Value| {
        status_and_json(client().post(format!("{}{path}", s.url)).json(&body).send().unwrap())
    };
    let (st, v) = post(
        "/api/generate",
        json!({"model": inside, "prompt": "hi", "stream": false, "options": {"num_predict": 2}}),
    );
    assert_eq!(st, 200, "{v}");
    let (st, _) = post("/api/generate", json!({"model": outside, "prompt": "hi", "stream": false}));
    assert_eq!(st, 403);
    // A symbolic link out of the allowed directory does not count as inside.
    let link = allowed.join("escape.toy");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let (st, _) = post("/api/generate", json!({"model": link, "prompt": "hi", "stream": false}));
    assert_eq!(st, 403);
    let r = client().get(format!("{}/api/version", s.url)).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

/// The request that used to overflow the server's stack: a template of 20,000 nested
/// blocks. It gets a 400 that says why, and the server goes on serving.
#[test]
fn a_hostile_template_is_refused_and_the_server_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let (s, model) = start(dir.path(), &[]);
    let post = |body: Value| {
        status_and_json(
            client().post(format!("{}/api/generate", s.url)).json(&body).send().unwrap(),
        )
    };
    for (what, template) in [
        (
            "20,000 nested blocks",
            format!("{}x{}", "{{if .System}}".repeat(20_000), "{{end}}".repeat(20_000)),
        ),
        (
            "2,000 nested blocks",
            format!("{}x{}", "{{if .System}}".repeat(2_000), "{{end}}".repeat(2_000)),
        ),
        (
            "deep Jinja",
            format!("{}x{}", "{% if true %}".repeat(5_000), "{% endif %}".repeat(5_000)),
        ),
    ] {
        let (st, v) =
            post(json!({"model": model, "prompt": "hi", "stream": false, "template": template}));
        println!("{what}: {st} {}", v["error"]);
        assert_eq!(st, 400, "{what}: {v}");
    }
    let (st, v) = post(
        json!({"model": model, "prompt": "hi", "stream": false, "options": {"num_predict": 2}}),
    );
    assert_eq!(st, 200, "{v}");
}

/// Jinja templates that exhaust a process: values nested 20,000 deep (their print, drop,
/// comparison or `tojson` overflows any stack), a namespace that holds itself, strings of
/// gigabytes, `format` padding, renders that run for seconds. Every template that crashes
/// the in-process renderer (the fuzz target's open regressions) is sent to a server, which
/// renders in a sandbox process: each request gets a 400 that names the bound it hit, and
/// a stream of another model that runs meanwhile goes on undisturbed.
#[test]
fn templates_that_exhaust_a_renderer_end_in_a_400_and_the_server_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let (s, model) =
        start(dir.path(), &[("CORRAL_TEMPLATE_TIMEOUT", "3s"), ("CORRAL_TEMPLATE_MEMORY", "512")]);
    let other = dir.path().join("other.toy");
    std::fs::write(&other, "other weights").unwrap();
    // Streams on the other model, one after another, while the hostile renders run: the
    // longest gap between two chunks is measured.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let streaming = {
        let url = format!("{}/api/generate", s.url);
        let other = other.to_string_lossy().into_owned();
        let stop = stop.clone();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            let (mut streams, mut longest) = (0, Duration::ZERO);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = client()
                    .post(&url)
                    .json(&json!({"model": other, "prompt": "go", "options": {"num_predict": 64}}))
                    .send()
                    .unwrap();
                assert_eq!(r.status().as_u16(), 200);
                let mut last = String::new();
                let mut at = std::time::Instant::now();
                for line in std::io::BufReader::new(r).lines() {
                    last = line.unwrap();
                    longest = longest.max(at.elapsed());
                    at = std::time::Instant::now();
                }
                assert!(last.contains("\"done\":true"), "a stream ended with {last}");
                streams += 1;
            }
            (streams, longest)
        })
    };
    let open = repo_root().join("fuzz/regressions/chat_template/open");
    let mut files: Vec<_> = std::fs::read_dir(&open)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jinja"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "{}", open.display());
    let mut deep = vec![
        (
            "a list nested 1,000,000 deep".to_string(),
            "{% set ns = namespace(v=1) %}{% for i in range(1000) %}{% for j in range(1000) %}\
             {% set ns.v = [ns.v] %}{% endfor %}{% endfor %}{{ ns.v | length }}"
                .to_string(),
        ),
        (
            "a string doubled 40 times".to_string(),
            "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}\
             {% endfor %}{{ ns.s | length }}"
                .to_string(),
        ),
        (
            "endless output".to_string(),
            "{% for i in range(10000) %}{% for j in range(10000) %}xxxxxxxxxxxxxxxx{% endfor %}\
             {% endfor %}"
                .into(),
        ),
        (
            "seconds of work".to_string(),
            "{% for i in range(1000) %}{{ ('x' * 99999999) | length }}{% endfor %}".into(),
        ),
    ];
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        deep.push((name, String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned()));
    }
    for (what, template) in deep {
        let t = std::time::Instant::now();
        let r = client()
            .post(format!("{}/api/generate", s.url))
            .json(&json!({"model": model, "prompt": "hi", "stream": false, "template": template}))
            .send()
            .unwrap();
        let (st, v) = status_and_json(r);
        println!("{what}: {st} in {:.1} s: {}", t.elapsed().as_secs_f64(), v["error"]);
        assert!(st == 400 || st == 200, "{what}: {st} {v}");
        if st == 400 {
            assert!(v["error"].as_str().unwrap().contains("template"), "{what}: {v}");
        }
        assert!(t.elapsed() < Duration::from_secs(20), "{what}");
        let r = client().get(format!("{}/api/version", s.url)).send().unwrap();
        assert_eq!(r.status().as_u16(), 200, "after {what}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (streams, longest) = streaming.join().unwrap();
    println!("the other model: {streams} streams, longest gap {longest:?}");
    assert!(streams > 3, "{streams}");
    assert!(longest < Duration::from_secs(2), "a stream stalled for {longest:?}");
    // The model whose templates were hostile serves with its own template.
    let r = client()
        .post(format!("{}/api/generate", s.url))
        .json(&json!({"model": model, "prompt": "hi", "stream": false, "options": {"num_predict": 2}}))
        .send()
        .unwrap();
    let (st, v) = status_and_json(r);
    assert_eq!(st, 200, "{v}");
    // No sandbox outlives the server's need: at most the idle ones remain.
    let sandboxes = std::process::Command::new("pgrep")
        .args(["-f", "-P", &s.child.id().to_string(), "template-sandbox"])
        .output()
        .map_or(0, |o| String::from_utf8_lossy(&o.stdout).lines().count());
    assert!(sandboxes <= 2, "{sandboxes} sandboxes");
}

/// Found by an outside sweep: six requests whose own templates run until the time limit
/// held every sandbox, so a plain chat with the model's own template waited for them. A
/// request's template takes at most half of the sandboxes; the model's template renders at
/// once beside them.
#[test]
fn slow_request_templates_leave_sandboxes_for_the_models_own() {
    let dir = tempfile::tempdir().unwrap();
    let (s, model) = start(dir.path(), &[("CORRAL_TEMPLATE_TIMEOUT", "4s")]);
    let chat = || {
        let t = std::time::Instant::now();
        let r = client()
            .post(format!("{}/api/chat", s.url))
            .json(&json!({"model": model, "stream": false, "options": {"num_predict": 2},
                          "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .unwrap();
        (status_and_json(r), t.elapsed())
    };
    // Loaded first, so the slow renders start at once.
    let ((st, v), _) = chat();
    assert_eq!(st, 200, "{v}");
    let slow = "{% for i in range(100000) %}{{ ('x' * 99999999) | length }}{% endfor %}";
    let bombs: Vec<_> = (0..6)
        .map(|_| {
            let url = format!("{}/api/generate", s.url);
            let model = model.clone();
            std::thread::spawn(move || {
                let r = client()
                    .post(&url)
                    .json(&json!({"model": model, "prompt": "hi", "stream": false,
                                  "template": slow, "options": {"num_predict": 1}}))
                    .send()
                    .unwrap();
                status_and_json(r)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(800));
    let ((st, v), waited) = chat();
    println!("the chat waited {waited:?} beside six slow renders");
    assert_eq!(st, 200, "{v}");
    assert!(waited < Duration::from_secs(3), "the chat waited {waited:?} for the slow renders");
    for b in bombs {
        let (st, v) = b.join().unwrap();
        assert_eq!(st, 400, "{v}");
        assert!(v["error"].as_str().unwrap().contains("longer than"), "{v}");
    }
}

/// Uploads are bounded: a blob over `CORRAL_MAX_BLOB_SIZE` is refused with 413, and a
/// client that stops sending mid-body is dropped after `CORRAL_READ_TIMEOUT`; the server
/// serves on.
#[test]
fn uploads_and_bodies_are_bounded_in_size_and_time() {
    use std::io::{Read as _, Write as _};
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = start(dir.path(), &[("CORRAL_MAX_BLOB_SIZE", "1k"), ("CORRAL_READ_TIMEOUT", "2")]);
    let digest = format!("sha256:{}", "ab".repeat(32));
    let url = format!("{}/api/blobs/{digest}", s.url);
    let r = client().post(&url).body(vec![b'x'; 4096]).send().unwrap();
    assert_eq!(r.status().as_u16(), 413, "{}", r.text().unwrap_or_default());
    // Headers announce 1000 bytes; 10 come, then nothing.
    let addr = s.url.trim_start_matches("http://").to_string();
    for (path, ctype) in [
        (format!("/api/blobs/{digest}"), "application/octet-stream"),
        ("/api/show".to_string(), "application/json"),
    ] {
        let mut tcp = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            tcp,
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {ctype}\r\nContent-Length: 1000\r\n\r\n0123456789"
        )
        .unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let t = std::time::Instant::now();
        let mut answer = String::new();
        let _ = tcp.read_to_string(&mut answer);
        println!(
            "{path}: answered after {:.1} s: {}",
            t.elapsed().as_secs_f64(),
            answer.lines().next().unwrap_or("")
        );
        assert!(answer.starts_with("HTTP/1.1 408"), "{path}: {answer}");
        assert!(t.elapsed() < Duration::from_secs(15));
    }
    // Headers, or a request line, that trickle in (a byte every 0.9 s):
    // both closed after the read timeout.
    for (what, start) in
        [("trickled headers", "GET /api/version HTTP/1.1\r\n"), ("a trickled request line", "")]
    {
        let mut tcp = std::net::TcpStream::connect(&addr).unwrap();
        tcp.write_all(start.as_bytes()).unwrap();
        tcp.set_read_timeout(Some(Duration::from_millis(900))).unwrap();
        let t = std::time::Instant::now();
        let mut closed = false;
        while t.elapsed() < Duration::from_secs(15) {
            let _ = tcp.write_all(b"X");
            let mut buf = [0u8; 512];
            match tcp.read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        println!("{what}: closed after {:.1} s", t.elapsed().as_secs_f64());
        assert!(closed && t.elapsed() < Duration::from_secs(6), "{what}: {:?}", t.elapsed());
    }
    let r = client().get(format!("{}/api/version", s.url)).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

/// A body of many tiny JSON values (31 MiB of `{},` parsed into 890 MB) is refused
/// before it is parsed, with a 413 in each API's shape; a body with many values under
/// the bound is served as before.
#[test]
fn bodies_of_many_tiny_values_are_refused_unparsed() {
    let dir = tempfile::tempdir().unwrap();
    let (s, model) = start(dir.path(), &[]);
    let values = vec!["{}"; (1 << 21) + 1].join(",");
    let tools = format!(r#"{{"model":"m","messages":[],"tools":[{values}]}}"#);
    for path in ["/api/chat", "/v1/chat/completions", "/v1/messages", "/v1/responses"] {
        let r = client()
            .post(format!("{}{path}", s.url))
            .header("content-type", "application/json")
            .body(tools.clone())
            .send()
            .unwrap();
        let (st, v) = status_and_json(r);
        assert_eq!(st, 413, "{path}: {v}");
        let message = v["error"]["message"].as_str().or(v["error"].as_str()).unwrap_or_default();
        assert!(message.contains("more than 2097152 JSON values"), "{path}: {v}");
    }
    // 100,000 numbers in `context` are parsed and answered.
    let context: Vec<u32> = (0..100_000).map(|i| i % 7).collect();
    let r = client()
        .post(format!("{}/api/generate", s.url))
        .json(&json!({"model": model, "prompt": "hi", "context": context, "stream": false,
                      "options": {"num_predict": 2}}))
        .send()
        .unwrap();
    let (st, v) = status_and_json(r);
    assert_eq!(st, 200, "{v}");
    let r = client().get(format!("{}/api/version", s.url)).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

/// A model path or a Modelfile's FROM that names a named pipe (or a device) under an
/// allowed directory is refused at once: reading it would block the request forever.
#[cfg(unix)]
#[test]
fn pipes_and_devices_are_not_model_files() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = start(dir.path(), &[]);
    let fifo = dir.path().join("pipe.gguf");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|st| st.success()) {
        eprintln!("SKIP: mkfifo is not available");
        return;
    }
    let fifo = fifo.to_string_lossy().into_owned();
    let t = std::time::Instant::now();
    let r = client()
        .post(format!("{}/api/generate", s.url))
        .json(&json!({"model": fifo, "prompt": "hi", "stream": false}))
        .send()
        .unwrap();
    let (st, v) = status_and_json(r);
    assert_eq!(st, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("not a regular file"), "{v}");
    let modelfile = format!("FROM {fifo}\n");
    let r = client()
        .post(format!("{}/api/create", s.url))
        .json(&json!({"model": "piped", "modelfile": modelfile, "stream": false}))
        .send()
        .unwrap();
    let (st, v) = status_and_json(r);
    assert_eq!(st, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("not a regular file"), "{v}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}
