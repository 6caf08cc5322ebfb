//! Engines in their own processes (`corral serve`'s default): an engine that aborts,
//! writes through a null pointer, exits or hangs ends only its own worker. The affected
//! request ends with an error that says what happened, the server keeps answering, a
//! second model keeps streaming, and the crashed model serves again on the next request.
//! The faults come from the example plugin's test triggers (lines of its toy model file).

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    time::{Duration, Instant},
};

use corral_e2e::*;
use serde_json::{Value, json};

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build().unwrap()
}

struct Env {
    dir: tempfile::TempDir,
    plugins: PathBuf,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    example_plugin_dir(&plugins);
    Env { dir, plugins }
}

impl Env {
    /// A toy model file whose lines are the example plugin's triggers.
    fn model(&self, name: &str, triggers: &str) -> String {
        let p = self.dir.path().join(format!("{name}.toy"));
        std::fs::write(&p, format!("toy weights {name}\n{triggers}\n")).unwrap();
        p.to_string_lossy().into_owned()
    }

    fn start(&self, vars: &[(&str, &str)]) -> Server {
        let store = self.dir.path().join("store").to_string_lossy().into_owned();
        let mut all: Vec<(&str, &str)> =
            vec![("CORRAL_MODELS", store.as_str()), ("CORRAL_ENGINE_TIMEOUT", "3s")];
        all.extend_from_slice(vars);
        Server::start(&[self.plugins.as_path()], &all, &[])
    }
}

fn post(s: &Server, path: &str, body: &Value) -> (u16, Value) {
    let r = client().post(format!("{}{path}", s.url)).json(body).send().unwrap();
    let status = r.status().as_u16();
    let text = r.text().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn generate(s: &Server, model: &str, prompt: &str, n: i64) -> (u16, Value) {
    post(
        s,
        "/api/generate",
        &json!({"model": model, "prompt": prompt, "stream": false, "raw": true,
                "options": {"num_predict": n, "temperature": 0}}),
    )
}

fn version_answers(s: &Server) {
    let r = client().get(format!("{}/api/version", s.url)).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

/// Streams a long generation from `model` in a thread; returns the largest gap between
/// two chunks, and how many chunks came.
fn stream_in_background(
    url: String,
    model: String,
    n: i64,
) -> std::thread::JoinHandle<(Duration, usize)> {
    std::thread::spawn(move || {
        let r = client()
            .post(format!("{url}/api/generate"))
            .json(&json!({"model": model, "prompt": "steady", "raw": true,
                          "options": {"num_predict": n, "temperature": 0}}))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let mut last = Instant::now();
        let (mut worst, mut chunks) = (Duration::ZERO, 0);
        for line in BufReader::new(r).lines() {
            let line = line.unwrap();
            let v: Value = serde_json::from_str(&line).unwrap();
            assert!(v.get("error").is_none(), "the healthy model's stream failed: {v}");
            if chunks > 0 {
                worst = worst.max(last.elapsed());
            }
            last = Instant::now();
            chunks += 1;
            if v["done"] == true {
                break;
            }
        }
        (worst, chunks)
    })
}

/// Each fault during decode: the request gets a clear error, the server and a second
/// model keep going, and the crashed model serves again on the next request.
#[test]
fn a_fault_during_decode_ends_only_that_models_worker() {
    let e = env();
    let healthy = e.model("healthy", "");
    // 'X' is token 88: the trigger fires when a batch holds it.
    let cases = [
        ("abort", "SIGABRT"),
        ("segv", "SIGSEGV"),
        ("exit", "exited with status 3"),
        ("hang", "hung"),
    ];
    let s = e.start(&[("CORRAL_MAX_LOADED_MODELS", "3")]);
    // Warm the healthy model up so its stream starts at once.
    assert_eq!(generate(&s, &healthy, "warm", 2).0, 200);
    for (fault, says) in cases {
        let faulty = e.model(&format!("faulty-{fault}"), &format!("on_token=88:{fault}"));
        assert_eq!(generate(&s, &faulty, "fine", 2).0, 200, "{fault}: loads and serves first");
        let bg = stream_in_background(s.url.clone(), healthy.clone(), 1500);
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        let (st, v) = generate(&s, &faulty, "boom X", 4);
        let took = t.elapsed();
        assert_eq!(st, 500, "{fault}: {v}");
        let msg = v["error"].as_str().unwrap_or_default().to_string();
        assert!(msg.contains(says), "{fault}: {msg:?} should say {says:?}");
        assert!(msg.contains("loaded again on the next request"), "{fault}: {msg}");
        version_answers(&s);
        let (worst, chunks) = bg.join().unwrap();
        println!(
            "{fault}: error after {:.2} s: {msg}\n  healthy stream: {chunks} chunks, largest gap {:.1} ms",
            took.as_secs_f64(),
            worst.as_secs_f64() * 1e3
        );
        assert!(chunks > 100, "{fault}: the healthy stream ended early ({chunks} chunks)");
        assert!(
            worst < Duration::from_millis(500),
            "{fault}: the healthy stream stalled {worst:?}"
        );
        // The next request loads the model again, in a new worker.
        let (st, v) = generate(&s, &faulty, "fine again", 3);
        assert_eq!(st, 200, "{fault}: after the crash: {v}");
    }
    assert!(metric(&s, "corral_worker_crashes_total") >= 4.0);
    assert!(metric(&s, "corral_worker_restarts_total") >= 4.0);
    // The worker's last words are in the server's log.
    let log = s.log();
    assert!(log.contains("on_token trigger"), "the worker's stderr is not in the log:\n{log}");
}

/// A streaming request whose engine dies mid-stream (the example engine aborts on its
/// sixth decode: the prompt, then five tokens) ends with an error object after the
/// chunks it already sent. Greedy: a sampled token may be the toy vocabulary's end of
/// sequence before the fault (seen once in CI: two chunks, then `done`).
#[test]
fn a_running_stream_ends_with_an_error_object() {
    let e = env();
    let faulty = e.model("faulty", "on_decode=6:abort");
    let s = e.start(&[]);
    let r = client()
        .post(format!("{}/api/chat", s.url))
        .json(&json!({"model": faulty, "messages": [{"role": "user", "content": "go on"}],
                      "options": {"num_predict": 50, "temperature": 0}}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let text = r.text().unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let last = lines.last().unwrap();
    let msg = last["error"].as_str().unwrap_or_default();
    assert!(msg.contains("SIGABRT"), "{text}");
    assert!(lines.len() >= 2, "chunks came before the error: {text}");
    println!("{} chunks, then: {msg}", lines.len() - 1);
    version_answers(&s);
}

/// Faults while loading: a clear error; after three crashing loads in a row the model
/// is refused for a while instead of being loaded in a loop.
#[test]
fn a_fault_while_loading_is_clear_and_does_not_loop() {
    let e = env();
    let s = e.start(&[]);
    for (fault, says) in [("abort", "SIGABRT"), ("segv", "SIGSEGV"), ("exit", "status 3")] {
        let m = e.model(&format!("load-{fault}"), &format!("on_load={fault}"));
        let (st, v) = generate(&s, &m, "hi", 2);
        assert_eq!(st, 500, "{fault}: {v}");
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(msg.contains(says), "{fault}: {msg}");
        println!("load {fault}: {msg}");
        version_answers(&s);
    }
    let m = e.model("load-loop", "on_load=abort");
    for i in 0..3 {
        let (st, v) = generate(&s, &m, "hi", 2);
        assert_eq!(st, 500, "attempt {i}: {v}");
    }
    let (st, v) = generate(&s, &m, "hi", 2);
    assert_eq!(st, 503, "{v}");
    let msg = v["error"].as_str().unwrap_or_default();
    assert!(msg.contains("3 times in a row"), "{msg}");
    println!("crash loop: {msg}");
    // A hang while loading is cut by the watchdog.
    let m = e.model("load-hang", "on_load=hang");
    let t = Instant::now();
    let (st, v) = generate(&s, &m, "hi", 2);
    assert_eq!(st, 500, "{v}");
    assert!(v["error"].as_str().unwrap_or_default().contains("hung"), "{v}");
    assert!(t.elapsed() < Duration::from_secs(20), "the watchdog took {:?}", t.elapsed());
    // An engine out of memory is a 507, as documented.
    let m = e.model("load-oom", "on_load=oom");
    let (st, v) = generate(&s, &m, "hi", 2);
    assert_eq!(st, 507, "{v}");
    let healthy = e.model("healthy", "");
    assert_eq!(generate(&s, &healthy, "still here", 2).0, 200);
}

fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        // The fields after the command's closing parenthesis: state, ppid, ...
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, std::iter::Iterator::count)
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, r)| !r.trim_start().starts_with('Z')))
}

/// Found by an outside sweep: a worker killed while its model was idle stayed a zombie,
/// `/api/ps` went on listing the model, and the next request got a 500 "crashed". The
/// reaper now notices the exit: the model leaves `/api/ps`, the process is reaped, and
/// the next request loads the model again.
#[test]
fn a_worker_killed_while_idle_is_noticed() {
    let e = env();
    let m = e.model("idle", "");
    let s = e.start(&[]);
    assert_eq!(generate(&s, &m, "hi", 2).0, 200);
    let workers = children_of(s.child.id());
    assert_eq!(workers.len(), 1, "{workers:?}");
    let _ = std::process::Command::new("kill").args(["-KILL", &workers[0].to_string()]).status();
    let listed = || {
        let ps: Value = client().get(format!("{}/api/ps", s.url)).send().unwrap().json().unwrap();
        ps["models"].as_array().map_or(0, Vec::len)
    };
    let t = Instant::now();
    while listed() > 0 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(listed(), 0, "the dead worker's model is still listed");
    assert!(
        std::fs::metadata(format!("/proc/{}", workers[0])).is_err(),
        "the dead worker was not reaped"
    );
    let (st, v) = generate(&s, &m, "hi", 2);
    assert_eq!(st, 200, "{v}");
}

/// Workers end with their model, and leave no process or file descriptor behind after
/// 100 load/unload cycles; they end with the server even when it is killed with SIGKILL.
#[test]
fn workers_leave_nothing_behind() {
    let e = env();
    let m = e.model("cycled", "");
    let s = e.start(&[]);
    let pid = s.child.id();
    // One cycle first, so lazily created things (thread pools, ...) exist before counting.
    let cycle = |i: usize| {
        let (st, v) =
            post(&s, "/api/generate", &json!({"model": m, "prompt": "", "keep_alive": "1m"}));
        assert_eq!(st, 200, "cycle {i}: {v}");
        let (st, v) =
            post(&s, "/api/generate", &json!({"model": m, "prompt": "", "keep_alive": 0}));
        assert_eq!(st, 200, "cycle {i}: {v}");
    };
    cycle(0);
    std::thread::sleep(Duration::from_millis(300));
    let (procs0, fds0) = (children_of(pid).len(), open_fds(pid));
    let t = Instant::now();
    for i in 1..=100 {
        cycle(i);
    }
    std::thread::sleep(Duration::from_millis(500));
    let (procs1, fds1) = (children_of(pid).len(), open_fds(pid));
    println!(
        "100 load/unload cycles in {:.1} s: child processes {procs0} -> {procs1}, open fds {fds0} -> {fds1}",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(procs1, procs0, "worker processes left behind");
    assert_eq!(fds1, fds0, "file descriptors left behind");
    let shm_left: Vec<_> = std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("corral-logits-"))
                .count()
        })
        .into_iter()
        .collect();
    println!("shared-memory files left in /dev/shm: {shm_left:?}");

    // Two models loaded, then the server is killed: their workers go with it.
    let other = e.model("other", "");
    for model in [&m, &other] {
        assert_eq!(generate(&s, model, "hi", 2).0, 200);
    }
    let workers = children_of(pid);
    assert_eq!(workers.len(), 2, "one worker per loaded model: {workers:?}");
    let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    let t = Instant::now();
    while workers.iter().any(|&w| alive(w)) && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!workers.iter().any(|&w| alive(w)), "workers outlived a SIGKILLed server");
    println!("workers gone {:.0} ms after SIGKILL", t.elapsed().as_secs_f64() * 1e3);
}

/// `corral backends --check` opens each plugin in a worker: a garbage library is
/// unavailable with the reason, not "available".
#[test]
fn backends_check_reports_a_garbage_library() {
    let e = env();
    let garbage = e.dir.path().join("libgarbage.so");
    std::fs::write(&garbage, b"this is not a shared library").unwrap();
    plugin_dir(
        &e.plugins,
        "garbage",
        &example_manifest("garbage", "1.2", "libgarbage.so"),
        Some(&garbage),
    );
    let json_of = |args: &[&str]| {
        let mut c = corral(&[e.plugins.as_path()]);
        c.args(["backends", "--json", "--format", "toy"]).args(args);
        let (out, stdout, stderr) = run(c);
        assert!(out.status.success(), "{stderr}");
        serde_json::from_str::<Value>(&stdout).unwrap()
    };
    let status_of = |v: &Value| {
        v["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["variant"] == "garbage")
            .map(|p| (p["status"].as_str().unwrap_or("").to_string(), p["reason"].to_string()))
            .unwrap()
    };
    let (before, _) = status_of(&json_of(&[]));
    let (after, reason) = status_of(&json_of(&["--check"]));
    println!("without --check: {before}; with --check: {after}: {reason}");
    assert_eq!(after, "unavailable", "{reason}");
    assert!(reason.contains("not a shared library"), "{reason}");
}

/// The server shows where engines run: `/api/ps` per model.
#[test]
fn ps_shows_the_isolation_mode() {
    let e = env();
    let m = e.model("shown", "");
    for (mode, want) in [(None, "process"), (Some("in-process"), "in-process")] {
        let vars: Vec<(&str, &str)> = mode.map(|m| ("CORRAL_ISOLATION", m)).into_iter().collect();
        let s = e.start(&vars);
        assert_eq!(generate(&s, &m, "hi", 2).0, 200);
        let v: Value = client().get(format!("{}/api/ps", s.url)).send().unwrap().json().unwrap();
        assert_eq!(v["models"][0]["isolation"], want, "{v}");
    }
}

/// A worker outlives the thread that started it: the kernel's parent-death signal
/// follows the spawning thread, and the server's blocking threads end after 10 s idle.
/// A model left idle for longer still answers, and no worker died meanwhile.
#[test]
fn a_worker_survives_its_spawning_thread() {
    let e = env();
    let m = e.model("patient", "");
    let s = e.start(&[]);
    assert_eq!(generate(&s, &m, "hi", 2).0, 200);
    std::thread::sleep(Duration::from_secs(13));
    let (st, v) = generate(&s, &m, "still there?", 2);
    assert_eq!(st, 200, "{v}");
    assert_eq!(metric(&s, "corral_worker_crashes_total"), 0.0);
}
