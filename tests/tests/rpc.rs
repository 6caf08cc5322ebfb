//! One model over several machines, on llama.cpp's RPC backend: `corral worker`s on
//! loopback ports lend their devices, and `corral run` and `corral serve` spread a model
//! over them and this machine. Skips (with a message) when the llama.cpp plugin or
//! llama-raw is not built.

use std::io::{BufRead, Read, Write};

use corral_e2e::*;
use serde_json::json;

/// The tiny generated shape with 5 layers: 6 units to place (the output counts as one),
/// 2 per device over three devices of equal free memory.
const SHAPE: &str = "tiny:n_layer=5";

fn generate(dir: &std::path::Path) -> std::path::PathBuf {
    let model = dir.join("tiny5.gguf");
    generate_model(&model, SHAPE, "f32");
    model
}

/// Two workers and a server using both: greedy text equals single-process llama.cpp's,
/// the layers are reported over three devices, and killing one worker mid-stream ends
/// that stream with an error that says so, while the server keeps serving: another
/// model (one that does not use the workers) answers, and the spread model loads again
/// without the dead worker.
/// The model `/api/ps` lists with its devices (the one spread over workers), and the
/// whole answer for messages.
fn spread_model(server: &Server) -> (serde_json::Value, serde_json::Value) {
    let (_, ps) = get_json(&server.url, "/api/ps");
    let m = ps["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m.get("devices").is_some())
        .cloned()
        .unwrap_or_else(|| panic!("{ps:#}"));
    (m, ps)
}

#[test]
fn a_model_spread_over_two_workers_generates_as_llama_cpp_and_survives_losing_one() {
    let dir = tempfile::tempdir().unwrap();
    let Some(plugin) = llama_cpp_plugin_dir(dir.path()) else { return };
    let Some(raw) = llama_raw_bin() else { return };
    let model = generate(dir.path());
    let prompt = "The capital of France is";
    let expected = raw_greedy(&raw, &model, prompt, 24)["text"].as_str().unwrap().to_string();

    let mut w1 = Worker::start(&[&plugin], 1);
    let mut w2 = Worker::start(&[&plugin], 1);
    assert!(w1.log().contains("corral worker") && w1.log().contains(" (CPU), "), "{}", w1.log());
    let rpc = format!("{},{}", w1.endpoint, w2.endpoint);

    // `corral backends` (and `probe`) list what the workers lend.
    let mut c = corral(&[&plugin]);
    c.args(["backends", "--rpc", &rpc]);
    let (out, stdout, stderr) = run(c);
    assert!(out.status.success(), "{stderr}");
    for w in [&w1, &w2] {
        assert!(
            stdout.contains(&format!("{} device 0 (protocol 7.0.0): ", w.endpoint)),
            "{stdout}"
        );
    }
    let mut c = corral(&[&plugin]);
    c.args(["probe", "--json", "--rpc", &rpc]);
    let (out, stdout, stderr) = run(c);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["rpc_workers"].as_array().map(Vec::len), Some(2), "{v:#}");
    assert!(v["rpc_workers"][0]["worker"]["devices"][0]["memory_total"].as_u64() > Some(0));

    // `corral run` in this process, spread over both workers: llama.cpp's text.
    let mut c = corral(&[&plugin]);
    c.env("CORRAL_LOG", "info")
        .args(["run", "--raw", "--temperature", "0", "--repeat-penalty", "1"])
        .args(["--num-predict", "24", "--rpc", &rpc])
        .arg(&model)
        .arg(prompt);
    let (out, stdout, stderr) = run(c);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.strip_suffix('\n').unwrap_or(&stdout), expected, "corral run --rpc");
    assert!(stderr.contains(&format!("RPC0 {} (remote): layers 2-3", w1.endpoint)), "{stderr}");
    assert!(stderr.contains("(remote): layer 4 and the output"), "{stderr}");

    // A model of another engine, which does not use the workers.
    let example = example_plugin_dir(&dir.path().join("example"));
    let toy = dir.path().join("other.toy");
    std::fs::write(&toy, "toy weights").unwrap();

    let server = Server::start(&[&plugin, &example], &[], &["--rpc", &rpc]);
    let generate_body = |stream: bool, n: u32| {
        json!({
            "model": model.to_string_lossy(),
            "prompt": prompt,
            "raw": true,
            "stream": stream,
            "options": {"temperature": 0, "repeat_penalty": 1, "num_predict": n},
        })
    };
    let (status, v) = post_json(&server.url, "/api/generate", &generate_body(false, 24));
    assert_eq!(status, 200, "{v}\n{}", server.log());
    assert_eq!(v["response"].as_str().unwrap(), expected, "corral serve --rpc");

    // Three devices hold the layers: this machine's CPU and one per worker.
    let (m, ps) = spread_model(&server);
    let devices = m["devices"]["devices"].as_array().unwrap_or_else(|| panic!("{ps:#}"));
    let kinds: Vec<&str> = devices.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["cpu", "remote", "remote"], "{ps:#}");
    let endpoints: Vec<&str> = devices.iter().map(|d| d["endpoint"].as_str().unwrap()).collect();
    assert_eq!(endpoints, ["", w1.endpoint.as_str(), w2.endpoint.as_str()], "{ps:#}");
    let layers: Vec<u64> = devices.iter().map(|d| d["n_layers"].as_u64().unwrap()).collect();
    assert_eq!(layers, [2, 2, 2], "{ps:#}");
    assert!(devices.iter().all(|d| d["memory_total"].as_u64() > Some(0)), "{ps:#}");
    eprintln!("/api/ps devices: {}", m["devices"]);

    let toy_body = json!({"model": toy.to_string_lossy(), "prompt": "hi", "stream": false,
        "options": {"num_predict": 4}});
    let (status, v) = post_json(&server.url, "/api/generate", &toy_body);
    assert_eq!(status, 200, "{v}");
    assert!(server.log().contains("cannot use RPC workers"), "{}", server.log());

    // A long stream; one worker dies after its first tokens.
    let resp = http_client()
        .post(format!("{}/api/generate", server.url))
        .json(&generate_body(true, 100_000))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut lines = std::io::BufReader::new(resp).lines();
    for _ in 0..3 {
        let line = lines.next().expect("a first chunk").unwrap();
        assert!(line.contains("\"response\""), "{line}");
    }
    w1.kill();
    let t = std::time::Instant::now();
    let last = lines.map_while(Result::ok).last().unwrap_or_default();
    assert!(t.elapsed().as_secs() < 60, "the stream took {:?} to end", t.elapsed());
    let last: serde_json::Value = serde_json::from_str(&last).unwrap();
    let error = last["error"].as_str().unwrap_or_else(|| panic!("no error: {last}"));
    assert!(error.contains("an RPC worker was lost"), "{error}\n{}", server.log());
    eprintln!("the stream ended with: {error}");

    // The server keeps serving: the other model answers, and the spread model loads
    // again without the dead worker (skipped, with the reason).
    let (status, v) = post_json(&server.url, "/api/generate", &toy_body);
    assert_eq!(status, 200, "{v}");
    let (status, v) = post_json(&server.url, "/api/generate", &generate_body(false, 24));
    assert_eq!(status, 200, "{v}\n{}", server.log());
    assert_eq!(v["response"].as_str().unwrap(), expected, "after losing a worker");
    let (m, ps) = spread_model(&server);
    let skipped = m["devices"]["skipped"].as_array().unwrap();
    assert_eq!(skipped[0]["endpoint"].as_str(), Some(w1.endpoint.as_str()), "{ps:#}");
    assert!(skipped[0]["reason"].as_str().unwrap().contains("cannot be reached"), "{ps:#}");
    assert_eq!(m["devices"]["devices"].as_array().map(Vec::len), Some(2), "{ps:#}");

    // The other worker dies while the model sits idle: the engine learns it only at its
    // next step, before the request's first token, and the request is tried once more
    // on the model loaded again without that worker instead of failing.
    w2.kill();
    let (status, v) = post_json(&server.url, "/api/generate", &generate_body(false, 24));
    assert_eq!(status, 200, "{v}\n{}", server.log());
    assert_eq!(v["response"].as_str().unwrap(), expected, "after losing the other worker");
    assert!(server.log().contains("trying once more"), "{}", server.log());
    let (m, ps) = spread_model(&server);
    assert_eq!(m["devices"]["skipped"].as_array().map(Vec::len), Some(2), "{ps:#}");
}

/// A worker of another RPC protocol version is one clear line on each side, not a crash:
/// the client skips it and says why; the worker refuses an older client and says why.
#[test]
fn another_protocol_version_is_one_clear_line_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let Some(plugin) = llama_cpp_plugin_dir(dir.path()) else { return };
    let model = generate(dir.path());

    // A "worker" of protocol 6.1.0: answers HELLO and nothing else.
    let fake = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let fake_ep = fake.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for s in fake.incoming() {
            let Ok(mut s) = s else { return };
            let mut head = [0u8; 9 + 24];
            if s.read_exact(&mut head).is_ok() {
                let mut answer = (28u64).to_le_bytes().to_vec();
                answer.extend_from_slice(&[6, 1, 0, 0]);
                answer.extend_from_slice(&[0u8; 24]);
                let _ = s.write_all(&answer);
            }
        }
    });
    let mut c = corral(&[&plugin]);
    c.args(["run", "--raw", "--temperature", "0", "--num-predict", "4", "--rpc", &fake_ep])
        .arg(&model)
        .arg("Hello");
    let (out, stdout, stderr) = run(c);
    assert!(out.status.success(), "{stderr}");
    assert!(!stdout.trim().is_empty());
    let line = format!("RPC worker {fake_ep} speaks RPC protocol 6.1.0, this corral speaks 7.0.0");
    assert!(stderr.contains(&line), "{stderr}");

    // An older client (protocol 3 to 6 sent an empty HELLO) at a real worker.
    let w = Worker::start(&[&plugin], 1);
    let mut s = std::net::TcpStream::connect(&w.endpoint).unwrap();
    let mut hello = vec![14u8];
    hello.extend_from_slice(&0u64.to_le_bytes());
    s.write_all(&hello).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(s.read(&mut buf).unwrap_or(0), 0, "the worker answered an older client");
    let t = std::time::Instant::now();
    while !w.log().contains("another RPC protocol version was refused") {
        assert!(t.elapsed().as_secs() < 10, "no line on the worker's side:\n{}", w.log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // And it goes on serving: a client of this version is answered.
    let mut c = corral(&[&plugin]);
    c.args(["backends", "--rpc", &w.endpoint]);
    let (_, stdout, _) = run(c);
    assert!(stdout.contains(&format!("{} device 0", w.endpoint)), "{stdout}");
}

/// `corral worker` listens on loopback; another address needs the explicit flag.
#[test]
fn a_worker_refuses_a_network_address_without_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let Some(plugin) = llama_cpp_plugin_dir(dir.path()) else { return };
    let mut c = corral(&[&plugin]);
    c.args(["worker", "--listen", &format!("0.0.0.0:{}", free_port())]);
    let (out, _, stderr) = run(c);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refusing to listen on 0.0.0.0"), "{stderr}");
    assert!(stderr.contains("--allow-unauthenticated-network"), "{stderr}");
    assert!(stderr.contains("ssh -N -L"), "{stderr}");
}
