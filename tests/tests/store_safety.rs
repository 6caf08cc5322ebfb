//! A store that cannot lose data, end to end: a `corral pull` killed with SIGKILL (at the
//! start, in the middle of a transfer) leaves no model that `corral list` shows, and the
//! next pull completes; a model whose blob went missing is not listed; a server refuses
//! `insecure: true` unless its operator allowed plain-HTTP registries.
//!
//! The pull goes through a throttling TCP proxy in front of Debian's docker-registry, so
//! that it lasts long enough to be killed in the middle on any machine. Skips (printing
//! why) without the registry binary.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use corral_e2e::*;

/// Nothing listens here: the CLI works on its local store.
const NO_SERVER: &str = "127.0.0.1:9";

/// A TCP proxy on a free loopback port to `127.0.0.1:upstream` that sends what comes
/// back at most `rate` bytes per second per connection. Its threads end with the test
/// process.
fn throttled_proxy(upstream: u16, rate: u64) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(client) = conn else { continue };
            std::thread::spawn(move || {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { return };
                let (Ok(mut up_r), Ok(mut up_w)) = (client.try_clone(), server.try_clone()) else {
                    return;
                };
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut up_r, &mut up_w);
                    let _ = up_w.shutdown(Shutdown::Write);
                });
                let (mut down_r, mut down_w) = (server, client);
                let mut buf = [0u8; 16 << 10];
                let start = Instant::now();
                let mut sent = 0u64;
                loop {
                    let n = match down_r.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if down_w.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    sent += n as u64;
                    let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(start.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
                let _ = down_w.shutdown(Shutdown::Write);
            });
        }
    });
    port
}

/// Files in the store's temp area whose name ends with `suffix`.
fn temp_files(store: &Path, suffix: &str) -> Vec<PathBuf> {
    std::fs::read_dir(store.join("corral-tmp"))
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.to_string_lossy().ends_with(suffix))
                .collect()
        })
        .unwrap_or_default()
}

/// Starts `corral pull NAME --insecure` on `store` (stderr to a file), kills it with
/// SIGKILL when `kill_when` says so (polled every 10 ms, for at most 60 s); returns what
/// it printed. Panics if the pull ended by itself.
fn pull_and_kill(
    store: &Path,
    name: &str,
    dir: &Path,
    mut kill_when: impl FnMut(Duration) -> bool,
) -> String {
    let log = dir.join("pull.log");
    let mut c = cli(store, NO_SERVER);
    c.args(["pull", name, "--insecure"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut child = c.spawn().expect("start corral pull");
    let t = Instant::now();
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "the pull ended ({st}) before it was killed:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if kill_when(t.elapsed()) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "never reached the point to kill at");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();
    std::fs::read_to_string(&log).unwrap_or_default()
}

#[test]
fn a_pull_killed_with_sigkill_leaves_no_broken_model_and_the_next_one_completes() {
    let Some(reg) = Registry::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    // About 20 MB of weights: through a proxy at 5 MB/s, a pull lasts about 4 seconds.
    let gguf = dir.path().join("small.gguf");
    generate_model(&gguf, "small", "f32");
    let weights = std::fs::read(&gguf).unwrap();
    let mf = dir.path().join("Modelfile");
    std::fs::write(&mf, "FROM ./small.gguf\nTEMPLATE \"{{ .Prompt }}\"\nPARAMETER temperature 0\n")
        .unwrap();
    let pushed = format!("127.0.0.1:{}/test/small:latest", reg.port);
    let (code, _, stderr) = go(&src, NO_SERVER, &["create", &pushed, "-f", mf.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = go(&src, NO_SERVER, &["push", &pushed, "--insecure"]);
    assert_eq!(code, 0, "{stderr}");
    let proxy = throttled_proxy(reg.port, 5 << 20);
    let name = format!("127.0.0.1:{proxy}/test/small:latest");

    // `corral list` does not show the model, and `show` fails (3: no such model).
    let assert_not_listed = |when: &str, show_code: i32| {
        let (code, stdout, stderr) = go(&dst, NO_SERVER, &["list"]);
        assert_eq!(code, 0, "{stderr}");
        assert!(!names(&stdout).contains(&name), "{when}: listed\n{stdout}");
        let (code, _, stderr) = go(&dst, NO_SERVER, &["show", &name]);
        assert_eq!(code, show_code, "{when}: show: {stderr}");
        stderr
    };

    // Killed at once (starting, fetching the manifest, or just started on the blobs).
    pull_and_kill(&dst, &name, dir.path(), |t| t >= Duration::from_millis(150));
    assert_not_listed("killed at the start", 3);

    // Killed in the middle of the transfer: a second after the partial file appeared.
    let mut seen: Option<Duration> = None;
    let log = pull_and_kill(&dst, &name, dir.path(), |t| {
        if seen.is_none() && !temp_files(&dst, ".partial").is_empty() {
            seen = Some(t);
        }
        seen.is_some_and(|s| t >= s + Duration::from_secs(1))
    });
    assert!(log.contains("pulling manifest"), "{log}");
    assert!(!temp_files(&dst, ".partial").is_empty(), "the partial download is kept to resume");
    assert_not_listed("killed mid-transfer", 3);

    // The next pull completes; the model opens with the exact weights.
    let (code, _, stderr) = go(&dst, NO_SERVER, &["pull", &name, "--insecure"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("success"), "{stderr}");
    let (code, stdout, stderr) = go(&dst, NO_SERVER, &["list"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(names(&stdout).contains(&name), "{stdout}");
    let (code, _, stderr) = go(&dst, NO_SERVER, &["show", &name, "--modelfile"]);
    assert_eq!(code, 0, "{stderr}");
    let blobs: Vec<PathBuf> =
        std::fs::read_dir(dst.join("blobs")).unwrap().map(|e| e.unwrap().path()).collect();
    let weights_blob = blobs
        .iter()
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.len() == weights.len() as u64))
        .expect("the weights blob");
    assert!(std::fs::read(weights_blob).unwrap() == weights, "the pulled weights differ");
    assert!(temp_files(&dst, ".partial").is_empty(), "partial files left after success");
    assert!(temp_files(&dst, ".partial.json").is_empty());

    // A model whose blob went missing is not listed as usable; pulling it again mends it.
    std::fs::remove_file(weights_blob).unwrap();
    let stderr = assert_not_listed("a blob missing", 1);
    assert!(stderr.contains("missing"), "{stderr}");
    let (code, _, stderr) = go(&dst, NO_SERVER, &["pull", &name, "--insecure"]);
    assert_eq!(code, 0, "{stderr}");
    let (_, stdout, _) = go(&dst, NO_SERVER, &["list"]);
    assert!(names(&stdout).contains(&name), "{stdout}");
}

fn post(url: &str, path: &str, body: serde_json::Value) -> (u16, String) {
    let r = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
        .post(format!("{url}{path}"))
        .json(&body)
        .send()
        .expect("request");
    (r.status().as_u16(), r.text().unwrap_or_default())
}

#[test]
fn insecure_registries_only_when_the_operator_allows_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("server-store");
    let store_env = store.to_str().unwrap();
    let server = Server::start(&[], &[("CORRAL_MODELS", store_env)], &[]);
    // Nothing listens on port 9: were the request let through, it would fail otherwise.
    let model = "127.0.0.1:9/test/m:latest";
    for path in ["/api/pull", "/api/push"] {
        let (status, body) =
            post(&server.url, path, serde_json::json!({"model": model, "insecure": true}));
        assert_eq!(status, 403, "{path}: {body}");
        assert!(
            body.contains("--allow-insecure-registries")
                && body.contains("CORRAL_ALLOW_INSECURE_REGISTRIES"),
            "{path}: {body}"
        );
    }
    // Without insecure, the request goes on (and fails to connect over HTTPS).
    let (status, body) = post(
        &server.url,
        "/api/pull",
        serde_json::json!({"model": model, "insecure": false, "stream": false}),
    );
    assert_ne!(status, 403, "{body}");
    // The CLI through that server: refused, exit code 2 (forbidden), the setting named.
    let host = server.url.trim_start_matches("http://").to_string();
    let shell = dir.path().join("shell-store");
    let (code, _, stderr) = go(&shell, &host, &["pull", model, "--insecure"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("allow-insecure-registries"), "{stderr}");

    // A server whose operator allows it: by the flag (the request goes on, and fails to
    // connect), ...
    let flagged =
        Server::start(&[], &[("CORRAL_MODELS", store_env)], &["--allow-insecure-registries"]);
    let (status, body) = post(
        &flagged.url,
        "/api/pull",
        serde_json::json!({"model": model, "insecure": true, "stream": false}),
    );
    assert_ne!(status, 403, "{body}");
    drop(flagged);
    // ... and by the environment variable, pulling from a plain-HTTP registry.
    let Some(reg) = Registry::start() else { return };
    let gguf = dir.path().join("tiny.gguf");
    generate_model(&gguf, "tiny", "f32");
    let mf = dir.path().join("Modelfile");
    std::fs::write(&mf, "FROM ./tiny.gguf\n").unwrap();
    let name = format!("127.0.0.1:{}/test/tiny:latest", reg.port);
    let (code, _, stderr) = go(&shell, NO_SERVER, &["create", &name, "-f", mf.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = go(&shell, NO_SERVER, &["push", &name, "--insecure"]);
    assert_eq!(code, 0, "{stderr}");
    let allowing = Server::start(
        &[],
        &[("CORRAL_MODELS", store_env), ("CORRAL_ALLOW_INSECURE_REGISTRIES", "1")],
        &[],
    );
    let (status, body) = post(
        &allowing.url,
        "/api/pull",
        serde_json::json!({"model": name, "insecure": true, "stream": false}),
    );
    assert_eq!(status, 200, "{body}\n{}", allowing.log());
    let host = allowing.url.trim_start_matches("http://").to_string();
    let (_, stdout, _) = go(&shell, &host, &["list"]);
    assert!(names(&stdout).contains(&name), "{stdout}");
}
