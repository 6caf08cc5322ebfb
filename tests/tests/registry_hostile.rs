//! `corral serve`'s store endpoints against a hostile registry (a small fake one in this
//! process, plain HTTP on a loopback port): a pull or push stops when its client leaves
//! (streamed or not), a registry's faults are 502s and its 404 a 404, names that cannot
//! become store paths are 400s, a model that can never be opened is neither stored by a
//! pull nor pushed, `/api/create` applies `adapters` and refuses what it cannot do, and
//! the CLI's messages give the right hints.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use corral_e2e::*;
use serde_json::json;

fn sha256(bytes: &[u8]) -> String {
    // The e2e crate has no sha2: ask the system's sha256sum.
    let mut c = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum");
    c.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = c.wait_with_output().unwrap();
    format!("sha256:{}", String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap())
}

/// Bytes that start like a GGUF file.
fn gguf_like(len: usize, seed: u8) -> Vec<u8> {
    let mut v = b"GGUF\x03\0\0\0".to_vec();
    v.extend((0..len.saturating_sub(8)).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    v
}

fn layer(media_type: &str, bytes: &[u8]) -> String {
    format!(r#"{{"mediaType":"{media_type}","digest":"{}","size":{}}}"#, sha256(bytes), bytes.len())
}

fn manifest(config: &[u8], layers: &[String]) -> String {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{},"layers":[{}]}}"#,
        layer("application/vnd.docker.container.image.v1+json", config),
        layers.join(",")
    )
}

/// What the fake registry answers.
enum Reply {
    Full(u16, Vec<u8>),
    /// Announces the body's length, then sends one byte every `Duration`.
    Drip(Vec<u8>, Duration),
}

/// Blob connections the fake registry is dripping into right now.
static DRIPPING: AtomicUsize = AtomicUsize::new(0);

/// A fake registry: `route(method, path)` answers each request (one per connection);
/// a request that is not HTTP (a TLS handshake) gets a 400. Returns its port.
fn fake_registry(route: impl Fn(&str, &str) -> Reply + Send + Sync + 'static) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let route = Arc::new(route);
    std::thread::spawn(move || {
        for sock in listener.incoming() {
            let Ok(mut sock) = sock else { continue };
            let route = route.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut tmp) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                    // Not HTTP (a TLS handshake): answer at once.
                    if buf.len() > 65536 || !buf[0].is_ascii_uppercase() {
                        break;
                    }
                }
                let text = String::from_utf8_lossy(&buf).to_string();
                let mut first = text.lines().next().unwrap_or("").split(' ');
                let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
                let reply = if path.starts_with('/') {
                    route(method, path)
                } else {
                    Reply::Full(400, b"not HTTP".to_vec())
                };
                match reply {
                    Reply::Full(status, body) => {
                        let _ = write!(
                            sock,
                            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        if method != "HEAD" {
                            let _ = sock.write_all(&body);
                        }
                    }
                    Reply::Drip(body, every) => {
                        let _ = write!(
                            sock,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        DRIPPING.fetch_add(1, Ordering::SeqCst);
                        for b in body {
                            if sock.write_all(&[b]).and_then(|()| sock.flush()).is_err() {
                                break;
                            }
                            std::thread::sleep(every);
                        }
                        DRIPPING.fetch_sub(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    port
}

fn server(store: &Path) -> Server {
    Server::start(
        &[],
        &[("CORRAL_MODELS", store.to_str().unwrap()), ("CORRAL_ALLOW_INSECURE_REGISTRIES", "1")],
        &[],
    )
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends `POST path` with a JSON body on a raw connection, returned open.
fn raw_post(url: &str, path: &str, body: &serde_json::Value) -> TcpStream {
    let addr = url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    let body = body.to_string();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    s
}

/// A pull whose client goes away (streamed or not) stops: the registry's connection is
/// closed, and the next pull of the same blob does not wait for the abandoned one, and
/// resumes what it downloaded. (A pull ran in a detached task: a registry trickling
/// bytes kept it, its hashing thread and the blob's lock for ever, and the next pull
/// waited "for another download" for ever.)
#[test]
fn a_pull_stops_when_its_client_leaves() {
    let blob = gguf_like(4000, 1);
    let config = b"{}".to_vec();
    let m = manifest(&config, &[layer("application/vnd.ollama.image.model", &blob)]);
    let cfg = sha256(&config);
    let honest = Arc::new(AtomicBool::new(false));
    let h2 = honest.clone();
    let b2 = blob.clone();
    let port = fake_registry(move |_, path| {
        if path.contains("/manifests/") {
            Reply::Full(200, m.clone().into_bytes())
        } else if path.ends_with(&cfg) {
            Reply::Full(200, config.clone())
        } else if h2.load(Ordering::SeqCst) {
            Reply::Full(200, b2.clone())
        } else {
            Reply::Drip(b2.clone(), Duration::from_millis(100))
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path());
    let model = format!("127.0.0.1:{port}/x/drip:1");
    for stream in [true, false] {
        let conn = raw_post(
            &s.url,
            "/api/pull",
            &json!({"model": model, "insecure": true, "stream": stream}),
        );
        wait_for("the blob download starting", Duration::from_secs(60), || {
            DRIPPING.load(Ordering::SeqCst) == 1
        });
        std::thread::sleep(Duration::from_millis(500));
        drop(conn);
        wait_for(
            &format!("the registry connection closing after the client left (stream {stream})"),
            Duration::from_secs(15),
            || DRIPPING.load(Ordering::SeqCst) == 0,
        );
    }
    // The next pull finds the blob unlocked and finishes it.
    honest.store(true, Ordering::SeqCst);
    let (status, body) =
        post_json(&s.url, "/api/pull", &json!({"model": model, "insecure": true, "stream": false}));
    assert_eq!(status, 200, "{body}");
    let (_, tags) = get_json(&s.url, "/api/tags");
    assert!(tags.to_string().contains("x/drip:1"), "{tags}");
}

/// Statuses: a registry's faults are 502 (wrong blob bytes, a 500 whatever its body
/// says, a manifest no use could open), its 404 a 404; a port that is not a port, a host
/// too long for a file name and a digest in a destination name are 400s.
#[test]
fn registry_faults_are_502_and_bad_names_400() {
    let blob = gguf_like(3000, 2);
    let config = b"{}".to_vec();
    let good = manifest(&config, &[layer("application/vnd.ollama.image.model", &blob)]);
    let template = b"{{ .Prompt }}".to_vec();
    let no_model = manifest(&config, &[layer("application/vnd.ollama.image.template", &template)]);
    let cfg = sha256(&config);
    let tpl = sha256(&template);
    let port = fake_registry(move |_, path| {
        if path.contains("/manifests/notfound") {
            Reply::Full(404, b"{}".to_vec())
        } else if path.contains("/manifests/broken") {
            Reply::Full(500, br#"{"errors":[{"message":"model not found"}]}"#.to_vec())
        } else if path.contains("/manifests/nomodel") {
            Reply::Full(200, no_model.clone().into_bytes())
        } else if path.contains("/manifests/") {
            Reply::Full(200, good.clone().into_bytes())
        } else if path.ends_with(&cfg) {
            Reply::Full(200, config.clone())
        } else if path.ends_with(&tpl) {
            Reply::Full(200, template.clone())
        } else {
            Reply::Full(200, vec![b'x'; 3000])
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path());
    let pull = |model: &str| {
        post_json(&s.url, "/api/pull", &json!({"model": model, "insecure": true, "stream": false}))
    };
    for (tag, want, needle) in [
        ("mismatch", 502, "digest mismatch"),
        ("broken", 502, "500"),
        ("notfound", 404, "not found"),
        ("nomodel", 502, "no model layer"),
    ] {
        let (status, body) = pull(&format!("127.0.0.1:{port}/x/m:{tag}"));
        assert_eq!(status, want, "{tag}: {body}");
        assert!(body.to_string().contains(needle), "{tag}: {body}");
    }
    let (_, tags) = get_json(&s.url, "/api/tags");
    assert_eq!(tags["models"].as_array().map(Vec::len), Some(0), "{tags}");

    let (status, body) = pull("127.0.0.1:99999/x/y:z");
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("port"), "{body}");

    let long = format!("{}/n/m", "a".repeat(350));
    let (status, body) =
        post_json(&s.url, "/api/copy", &json!({"source": "whatever", "destination": long}));
    assert_eq!(status, 400, "{body}");
    assert!(!body.to_string().contains(dir.path().to_str().unwrap()), "{body}");

    let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let (status, body) =
        post_json(&s.url, "/api/copy", &json!({"source": "a", "destination": format!("b@{d}")}));
    assert_eq!(status, 400, "{body}");
    let (status, body) = post_json(
        &s.url,
        "/api/create",
        &json!({"model": format!("b@{d}"), "from": "a", "stream": false}),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("digest"), "{body}");
}

/// A stored model that cannot be opened (written by hand: a pull refuses it) is not
/// pushed: 400 through the server (streamed or not) and exit code 2 from the CLI, both
/// through the server and with --local (which pushed it).
#[test]
fn an_unusable_model_is_not_pushed() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let config = b"{}".to_vec();
    let template = b"{{ .Prompt }}".to_vec();
    let m = manifest(&config, &[layer("application/vnd.ollama.image.template", &template)]);
    let blobs = store.join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    for b in [&config, &template] {
        std::fs::write(blobs.join(sha256(b).replace(':', "-")), b).unwrap();
    }
    let pushed = Arc::new(AtomicUsize::new(0));
    let p2 = pushed.clone();
    let port = fake_registry(move |method, _| {
        if method != "GET" && method != "HEAD" {
            p2.fetch_add(1, Ordering::SeqCst);
        }
        Reply::Full(404, Vec::new())
    });
    let mdir = store.join(format!("manifests/127.0.0.1:{port}/x/nomodel"));
    std::fs::create_dir_all(&mdir).unwrap();
    std::fs::write(mdir.join("1"), &m).unwrap();
    let name = format!("127.0.0.1:{port}/x/nomodel:1");

    let s = server(&store);
    for stream in [false, true] {
        let (status, body) = post_json(
            &s.url,
            "/api/push",
            &json!({"model": name, "insecure": true, "stream": stream}),
        );
        assert_eq!(status, 400, "stream {stream}: {body}");
        assert!(body.to_string().contains("no model layer"), "{body}");
    }
    let host = s.url.trim_start_matches("http://").to_string();
    let (code, _, stderr) = go(&store, &host, &["push", &name, "--insecure"]);
    assert_eq!(code, 2, "{stderr}");
    let (code, _, stderr) = go(&store, &host, &["push", &name, "--insecure", "--local"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no model layer"), "{stderr}");
    assert_eq!(pushed.load(Ordering::SeqCst), 0, "something was pushed");
}

/// `/api/create`: `adapters` become ADAPTER layers (they were dropped), several `files`
/// are refused by name (only one was used), and a Modelfile with files is refused.
#[test]
fn create_applies_adapters_and_refuses_several_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let s = server(&store);
    let model = gguf_like(2000, 3);
    let lora = gguf_like(1000, 4);
    let (dm, dl) = (sha256(&model), sha256(&lora));
    for (d, b) in [(&dm, &model), (&dl, &lora)] {
        let r =
            http_client().post(format!("{}/api/blobs/{d}", s.url)).body(b.clone()).send().unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }
    let (status, body) = post_json(
        &s.url,
        "/api/create",
        &json!({"model": "two", "files": {"a.gguf": dm, "b.gguf": dl}, "stream": false}),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("a.gguf") && body.to_string().contains("b.gguf"), "{body}");
    let (status, body) = post_json(
        &s.url,
        "/api/create",
        &json!({"model": "mf", "modelfile": "FROM x", "files": {"a.gguf": dm}, "stream": false}),
    );
    assert_eq!(status, 400, "{body}");

    let (status, body) = post_json(
        &s.url,
        "/api/create",
        &json!({"model": "withlora", "files": {"m.gguf": dm}, "adapters": {"l.gguf": dl}, "stream": false}),
    );
    assert_eq!(status, 200, "{body}");
    let manifest =
        std::fs::read_to_string(store.join("manifests/registry.ollama.ai/library/withlora/latest"))
            .unwrap();
    assert!(manifest.contains("application/vnd.ollama.image.adapter"), "{manifest}");
    assert!(manifest.contains(&dl), "{manifest}");
}

/// CLI hints: a plain-HTTP registry without --insecure says to use it (not only
/// "received corrupt message of type InvalidContentType"); `rm` of a missing model does
/// not say to pull it.
#[test]
fn cli_hints() {
    let port = fake_registry(|_, _| Reply::Full(404, Vec::new()));
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (code, _, stderr) =
        go(&store, "127.0.0.1:9", &["pull", &format!("127.0.0.1:{port}/x/y:z"), "--local"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("--insecure"), "{stderr}");
    let (code, _, stderr) = go(&store, "127.0.0.1:9", &["rm", "nonexistent", "--local"]);
    assert_eq!(code, 3, "{stderr}");
    assert!(!stderr.contains("pull"), "{stderr}");
    std::fs::create_dir_all(&store).unwrap();
    let (code, _, stderr) = go(&store, "127.0.0.1:9", &["rm", "nonexistent", "--local"]);
    assert_eq!(code, 3, "{stderr}");
    assert!(!stderr.contains("pull"), "{stderr}");
}

/// A registry whose layers declare more bytes than the store's disk has free is refused
/// before any byte is written, with a message that says so (it filled the disk before).
#[test]
fn a_pull_larger_than_the_free_disk_is_refused() {
    let config = b"{}".to_vec();
    // 32 PiB: larger than any test machine's disk, under the raised blob limit.
    let huge = format!(
        r#"{{"mediaType":"application/vnd.ollama.image.model","digest":"sha256:{}","size":{}}}"#,
        "ab".repeat(32),
        1u64 << 55
    );
    let body = manifest(&config, &[huge]);
    let cfg = sha256(&config);
    let port = fake_registry(move |_, path| {
        if path.contains("/manifests/") {
            Reply::Full(200, body.clone().into_bytes())
        } else if path.ends_with(&cfg) {
            Reply::Full(200, config.clone())
        } else {
            Reply::Full(200, vec![b'x'; 3000])
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &[],
        &[
            ("CORRAL_MODELS", dir.path().to_str().unwrap()),
            ("CORRAL_ALLOW_INSECURE_REGISTRIES", "1"),
            ("CORRAL_MAX_BLOB_SIZE", "65536T"),
        ],
        &[],
    );
    let model = format!("127.0.0.1:{port}/x/m:huge");
    let (status, body) =
        post_json(&s.url, "/api/pull", &json!({"model": model, "insecure": true, "stream": false}));
    assert_eq!(status, 502, "{body}");
    assert!(body.to_string().contains("not enough disk space"), "{body}");
    let blobs = dir.path().join("blobs");
    let written = std::fs::read_dir(&blobs).map_or(0, Iterator::count);
    assert_eq!(written, 0, "nothing is written");
}
