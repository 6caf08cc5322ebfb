//! The CLI as a client: which server it talks to (the address `serve` uses), what it
//! sends there (`run`'s flags, piped stdin, the interactive chat's commands), how Ctrl-C
//! and odd input behave in the chat, and what it makes of answers that are not corral's.
//! A small fake server in this file answers and records the requests, so each answer
//! can be exactly the odd one wanted; the chat in this process runs the example plugin.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Command, Stdio},
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, Instant},
};

use corral_e2e::*;
use serde_json::{Value, json};

/// What the fake server answers to one request.
#[derive(Clone)]
enum Answer {
    /// A status and a body, sent whole.
    Full(u16, &'static str, String),
    /// NDJSON lines, one every `gap`, then the end of the body.
    Lines(Vec<Value>, Duration),
    /// Accept, never answer.
    Silence,
}

/// A request the fake server saw: method, path, body.
type Seen = Arc<Mutex<Vec<(String, String, Value)>>>;

/// An HTTP server on a free loopback port that answers with `answer(method, path, body)`
/// and records every request. It runs until the test process ends.
fn fake_server(
    answer: impl Fn(&str, &str, &Value) -> Answer + Send + Sync + 'static,
) -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let seen: Seen = Arc::default();
    let (seen2, answer) = (seen.clone(), Arc::new(answer));
    std::thread::spawn(move || {
        for conn in listener.incoming().map_while(Result::ok) {
            let (seen, answer) = (seen2.clone(), answer.clone());
            std::thread::spawn(move || serve_one(conn, &seen, &*answer));
        }
    });
    (host, seen)
}

fn serve_one(conn: TcpStream, seen: &Seen, answer: &dyn Fn(&str, &str, &Value) -> Answer) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) =
        (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; length];
    let _ = reader.read_exact(&mut body);
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let a = answer(&method, &path, &body);
    seen.lock().unwrap().push((method, path, body));
    let mut w = conn;
    match a {
        Answer::Full(status, kind, text) => {
            let _ = write!(
                w,
                "HTTP/1.1 {status} X\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{text}",
                text.len()
            );
        }
        Answer::Lines(lines, gap) => {
            let _ = write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nConnection: close\r\n\r\n"
            );
            for l in lines {
                if writeln!(w, "{l}").and_then(|()| w.flush()).is_err() {
                    return;
                }
                std::thread::sleep(gap);
            }
        }
        Answer::Silence => std::thread::sleep(Duration::from_secs(120)),
    }
}

/// A chat answer streamed as corral streams it: `text`, one character a line, then the
/// `done` line unless `complete` is false.
fn chat_lines(text: &str, complete: bool) -> Vec<Value> {
    let mut v: Vec<Value> = text
        .chars()
        .map(|c| json!({"message": {"role": "assistant", "content": c.to_string()}, "done": false}))
        .collect();
    if complete {
        v.push(json!({"message": {"role": "assistant", "content": ""}, "done": true,
            "done_reason": "stop"}));
    }
    v
}

/// A fake corral: `/api/tags` lists `fake:latest`, `/api/show` shows it, `/api/chat`
/// answers "OK" at once, or 1,000 tokens 20 ms apart when the last message says "long",
/// or thinks "Let me see." before its "OK" when it says "think".
fn fake_corral() -> (String, Seen) {
    fake_server(|_, path, body| match path {
        "/api/tags" => Answer::Full(
            200,
            "application/json",
            json!({"models": [{"name": "fake:latest", "digest": "ab".repeat(32), "size": 1,
                "modified_at": "2024-06-01T10:00:00Z"}]})
            .to_string(),
        ),
        "/api/show" => Answer::Full(
            200,
            "application/json",
            json!({"modelfile": "FROM /fake/weights.gguf\nPARAMETER temperature 0.7\n",
                "parameters": "PARAMETER temperature 0.7\n", "template": "{{ .Prompt }}",
                "details": {"format": "gguf", "quantization_level": "F32"},
                "model_info": {"general.architecture": "llama"}})
            .to_string(),
        ),
        "/api/chat" => {
            let last = body["messages"].as_array().and_then(|m| m.last()).cloned();
            let text = last.and_then(|m| m["content"].as_str().map(str::to_string));
            if text.as_deref().is_some_and(|t| t.contains("think")) {
                // A thinking model's answer: thinking first, then the content.
                let line = |thinking: &str, content: &str| {
                    json!({"message": {"role": "assistant", "content": content,
                        "thinking": thinking}, "done": false})
                };
                let mut lines = vec![line("Let me", ""), line(" see.", ""), line("", "OK")];
                lines.extend(chat_lines("", true));
                Answer::Lines(lines, Duration::ZERO)
            } else if text.is_some_and(|t| t.contains("long")) {
                Answer::Lines(chat_lines(&"x".repeat(1000), true), Duration::from_millis(20))
            } else {
                Answer::Lines(chat_lines("OK", true), Duration::ZERO)
            }
        }
        _ => Answer::Full(404, "application/json", json!({"error": "no such path"}).to_string()),
    })
}

/// `corral ARGS` with `CORRAL_HOST` as given (`None`: unset, and `OLLAMA_HOST` too) and
/// a store of its own.
fn corral_at(host: Option<&str>, store: &Path, args: &[&str]) -> Command {
    let mut c = corral(&[]);
    match host {
        Some(h) => c.env("CORRAL_HOST", h),
        // Nor Ollama's variable, which stands in for it.
        None => c.env_remove("CORRAL_HOST").env_remove("OLLAMA_HOST"),
    };
    c.env("CORRAL_MODELS", store).env_remove("CORRAL_API_KEY").args(args);
    c
}

fn go_at(host: Option<&str>, store: &Path, args: &[&str]) -> (i32, String, String) {
    let (out, stdout, stderr) = run(corral_at(host, store, args));
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

/// The chat requests the fake server saw.
fn chats(seen: &Seen) -> Vec<Value> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|(_, p, _)| p == "/api/chat")
        .map(|(_, _, b)| b.clone())
        .collect()
}

#[test]
fn client_commands_use_the_address_serve_uses_and_refuse_bad_settings() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (host, _) = fake_corral();
    // The config's `[server] host` moves the client as it moves `serve`.
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, format!("[server]\nhost = \"{host}\"\n")).unwrap();
    let (code, stdout, stderr) = go_at(None, &store, &["--config", cfg.to_str().unwrap(), "list"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(names(&stdout), ["fake:latest"], "{stdout}");
    // CORRAL_HOST comes first.
    let (code, _, stderr) =
        go_at(Some("127.0.0.1:9"), &store, &["--config", cfg.to_str().unwrap(), "ps"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("127.0.0.1:9"), "{stderr}");

    // A proxy in the environment is not used for a server on this machine (a proxy cannot
    // reach its loopback; here the proxy is a closed port, so using it would fail).
    for proxy_var in ["HTTP_PROXY", "http_proxy", "ALL_PROXY"] {
        let mut c = corral_at(Some(&host), &store, &["list"]);
        c.env(proxy_var, "http://127.0.0.1:9").env_remove("NO_PROXY").env_remove("no_proxy");
        let (out, stdout, stderr) = run(c);
        assert_eq!(out.status.code(), Some(0), "{proxy_var}: {stderr}");
        assert_eq!(names(&stdout), ["fake:latest"], "{stdout}");
    }

    // An address that is not one is an error, never the local store.
    for bad in ["127.0.0.1:99999", "garbage::::", "ftp://127.0.0.1:1"] {
        for cmd in [&["list"][..], &["ps"], &["rm", "x"], &["run", "m", "hi"]] {
            let (code, _, stderr) = go_at(Some(bad), &store, cmd);
            assert_eq!(code, 2, "{bad} {cmd:?}: {stderr}");
            assert!(
                stderr.contains("CORRAL_HOST") && stderr.trim().lines().count() == 1,
                "{stderr}"
            );
        }
    }
    // A key that cannot be sent as a header.
    let mut c = corral_at(Some(&host), &store, &["list"]);
    c.env("CORRAL_API_KEY", "bad\u{1}key");
    let (out, _, stderr) = run(c);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("CORRAL_API_KEY"), "{stderr}");
}

#[test]
fn answers_that_are_not_corral_are_errors_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (empty404, _) = fake_server(|_, _, _| Answer::Full(404, "text/plain", String::new()));
    let html = "<!DOCTYPE HTML>\n<html>\n<head><title>Error response</title></head>\n<body>\n\
                <h1>Error response</h1>\n<p>Error code: 501</p>\n</body>\n</html>\n";
    let (html501, _) = fake_server(move |_, _, _| Answer::Full(501, "text/html", html.into()));
    let (garbage, _) = fake_server(|_, path, _| match path {
        "/api/tags" | "/api/ps" => {
            Answer::Full(200, "application/json", r#"{"models":"oops"}"#.into())
        }
        "/api/chat" => Answer::Lines(chat_lines("cut", false), Duration::ZERO),
        // `run` asks whether the model is there (and pulls it if not) before it chats;
        // `show` gets an object that is not a model's.
        "/api/show" => Answer::Full(200, "application/json", "{}".into()),
        _ => Answer::Full(200, "text/plain", "not json at all".into()),
    });
    for cmd in [&["list"][..], &["ps"], &["show", "m"], &["rm", "m"], &["run", "m", "hi"]] {
        let (code, _, stderr) = go_at(Some(&empty404), &store, cmd);
        assert_eq!(code, 3, "{cmd:?}: {stderr}");
        assert_eq!(
            stderr.trim(),
            format!(
                "error: the server at http://{empty404} answered HTTP 404 with no message (is it corral?)"
            )
        );
        let (code, _, stderr) = go_at(Some(&html501), &store, cmd);
        assert_eq!(code, 1, "{cmd:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains("HTTP 501: Error response"), "{stderr}");
    }
    // A 200 that is not what the command expects is not success.
    for cmd in
        [&["list"][..], &["ps"], &["show", "m"], &["rm", "m"], &["cp", "m", "n"], &["stop", "m"]]
    {
        let (code, stdout, stderr) = go_at(Some(&garbage), &store, cmd);
        assert_eq!(code, 1, "{cmd:?}: {stdout}{stderr}");
        assert!(stderr.contains("is it corral?") && !stdout.contains("deleted"), "{stderr}");
    }
    // A stream that ends without its `done` line.
    let (code, _, stderr) = go_at(Some(&garbage), &store, &["run", "m", "hi"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("ended before it was complete"), "{stderr}");

    // A server that accepts and never answers: one line after the header timeout.
    let (silent, _) = fake_server(|_, _, _| Answer::Silence);
    let t = Instant::now();
    let (code, _, stderr) = go_at(Some(&silent), &store, &["list"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("did not answer within 30 s"), "{stderr}");
    assert!(t.elapsed() < Duration::from_secs(60), "{:?}", t.elapsed());
}

#[test]
fn run_through_a_server_sends_what_the_api_carries_and_refuses_load_flags() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (host, seen) = fake_corral();
    for flags in [
        &["--threads", "4"][..],
        &["--backend", "cpu"],
        &["--n-gpu-layers", "0"],
        &["--isolation", "process"],
        &["--rpc", "127.0.0.1:50052"],
        // A model file's format; `--format json` is the answer's (tests/tests/cli_parity.rs).
        &["--format", "gguf"],
        &["--model-format", "gguf"],
    ] {
        let mut args = vec!["run", "fake", "hi"];
        args.extend_from_slice(flags);
        let (code, _, stderr) = go_at(Some(&host), &store, &args);
        assert_eq!(code, 2, "{flags:?}: {stderr}");
        assert!(stderr.contains(flags[0]) && stderr.contains("--local"), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
    assert!(chats(&seen).is_empty(), "a refused run sent a request");
    // The same settings from the environment are the server's business, not refused.
    let mut c = corral_at(Some(&host), &store, &["run", "fake", "hi"]);
    c.env("CORRAL_BACKEND", "cpu").env("CORRAL_ISOLATION", "process");
    let (out, stdout, stderr) = run(c);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.trim(), "OK");

    // --no-truncate is the request's truncate setting.
    let (code, _, stderr) = go_at(Some(&host), &store, &["run", "fake", "hi", "--no-truncate"]);
    assert_eq!(code, 0, "{stderr}");
    let sent = chats(&seen);
    assert_eq!(sent[sent.len() - 2]["truncate"], json!(true), "{sent:?}");
    assert_eq!(sent[sent.len() - 1]["truncate"], json!(false), "{sent:?}");

    // --options that is not JSON is bad input.
    let (code, _, stderr) = go_at(Some(&host), &store, &["run", "fake", "hi", "--options", "{bad"]);
    assert_eq!(code, 2, "{stderr}");

    // Piped stdin goes before the prompt, a blank line between; bytes that are not UTF-8
    // are decoded lossily.
    let mut c = corral_at(Some(&host), &store, &["run", "fake", "Summarize:"]);
    c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"caf\xe9 notes\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sent = chats(&seen);
    let content = &sent[sent.len() - 1]["messages"][0]["content"];
    assert_eq!(content, &json!("caf\u{fffd} notes\n\nSummarize:"));
}

/// Drives `cmd` through a pseudo-terminal with python3's `pty` (the steps: bytes to type,
/// `sleep` in seconds, `ctrlc`, typed as the terminal's interrupt character); returns its
/// exit code (-1: killed after the steps, -SIG: killed by a signal) and everything it
/// wrote. `None` when there is no python3.
fn in_a_terminal(cmd: &Command, steps: &Value) -> Option<(i32, String)> {
    const DRIVER: &str = r#"
import json, os, pty, select, sys, time
steps = json.loads(sys.argv[1]); cmd = sys.argv[2:]
pid, fd = pty.fork()
if pid == 0:
    os.execvp(cmd[0], cmd)
out = b""
def pump(t):
    global out
    end = time.time() + t
    while time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.05)
        if r:
            try:
                d = os.read(fd, 65536)
            except OSError:
                return False
            if not d:
                return False
            out += d
    return True
def wait_for(text, t):
    end = time.time() + t
    while text.encode() not in out and time.time() < end:
        if not pump(0.1):
            return
for kind, arg in steps:
    if kind == "type":
        os.write(fd, bytes.fromhex(arg))
    elif kind == "sleep":
        pump(arg)
    elif kind == "ctrlc":
        os.write(fd, b"\x03")
    elif kind == "wait_for":
        wait_for(arg, 60)
status = None
end = time.time() + 30
while time.time() < end:
    p, st = os.waitpid(pid, os.WNOHANG)
    if p:
        status = os.waitstatus_to_exitcode(st)
        break
    pump(0.1)
if status is None:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    status = -1
pump(0.2)
sys.stdout.write(json.dumps({"status": status, "out": out.decode("utf-8", "replace")}))
"#;
    let mut c = Command::new("python3");
    c.arg("-c").arg(DRIVER).arg(steps.to_string()).arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    let out = match c.output() {
        Ok(o) if o.status.success() => o,
        _ => {
            eprintln!("SKIP: no python3 with pty to drive a terminal");
            return None;
        }
    };
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    Some((v["status"].as_i64().unwrap_or(-1) as i32, v["out"].as_str().unwrap_or("").to_string()))
}

/// Typed text as the driver's hex.
fn typed(text: &[u8]) -> Value {
    json!(["type", text.iter().map(|b| format!("{b:02x}")).collect::<String>()])
}

#[test]
fn the_chat_through_a_server_has_ollamas_commands_and_survives_ctrl_c_and_bad_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (host, seen) = fake_corral();
    let cmd = corral_at(Some(&host), &store, &["run", "fake"]);
    let steps = json!([
        ["wait_for", ">>> "],
        typed(b"/?\n"),
        ["wait_for", "Available Commands"],
        typed(b"/nosuch thing\n"),
        ["wait_for", "Unknown command '/nosuch'. Type /? for help"],
        typed(b"/set parameter temperature 0.25\n"),
        ["wait_for", "Set parameter 'temperature' to '0.25'"],
        typed(b"/set parameter temperature hot\n"),
        ["wait_for", "Couldn't set parameter"],
        typed(b"/set system Be brief.\n"),
        ["wait_for", "Set system message."],
        typed(b"/show modelfile\n"),
        ["wait_for", "FROM /fake/weights.gguf"],
        typed(b"\"\"\"first line\n"),
        ["wait_for", "... "],
        typed(b"second line\"\"\"\n"),
        ["wait_for", "OK"],
        // Ctrl-C during a long answer cancels it; the chat goes on.
        typed(b"a long one\n"),
        ["sleep", 1.0],
        ["ctrlc", null],
        ["sleep", 0.5],
        // At an empty prompt it says how to leave.
        ["ctrlc", null],
        ["wait_for", "Use Ctrl + d or /bye to exit."],
        typed(b"caf\xe9 au lait\n"),
        ["sleep", 1.0],
        typed(b"/bye\n"),
    ]);
    let t = Instant::now();
    let Some((status, out)) = in_a_terminal(&cmd, &steps) else { return };
    assert_eq!(status, 0, "{out}");
    assert!(t.elapsed() < Duration::from_secs(20), "the long answer was not cancelled: {out}");
    let sent = chats(&seen);
    // Only messages reached the model: no command, and the cancelled turn is forgotten.
    let users: Vec<String> = sent
        .iter()
        .map(|b| {
            b["messages"].as_array().unwrap().last().unwrap()["content"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(users, ["first line\nsecond line", "a long one", "caf\u{fffd} au lait"], "{out}");
    let last = &sent[2];
    assert_eq!(last["options"]["temperature"], json!(0.25), "{last}");
    let roles: Vec<&str> =
        last["messages"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"], "{last}");
    assert_eq!(last["messages"][0]["content"], json!("Be brief."));
}

#[test]
fn ctrl_c_in_a_chat_in_this_process_cancels_the_answer_only() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = example_plugin_dir(dir.path());
    // The toy engine, 20 ms a token: 1,000 tokens take 20 s.
    let model = dir.path().join("slow.toy");
    std::fs::write(&model, "toy weights slow\ntoken_cost=20000\n").unwrap();
    let mut cmd = corral(&[&plugin]);
    cmd.arg("run").arg(&model).args(["--temperature", "0", "--num-predict", "1000"]);
    // An engine worker shares the terminal too: Ctrl-C must not end it.
    cmd.args(["--isolation", "process"]);
    let steps = json!([
        ["wait_for", ">>> "],
        typed(b"hello\n"),
        ["sleep", 1.5],
        ["ctrlc", null],
        ["sleep", 0.5],
        ["ctrlc", null],
        ["wait_for", "Use Ctrl + d or /bye to exit."],
        typed(b"/show info\n"),
        ["wait_for", "format"],
        typed(b"/bogus\n"),
        ["wait_for", "Unknown command '/bogus'"],
        typed(b"\xff\xfe\n"),
        ["sleep", 1.0],
        ["ctrlc", null],
        ["sleep", 0.5],
        typed(b"/bye\n"),
    ]);
    let t = Instant::now();
    let Some((status, out)) = in_a_terminal(&cmd, &steps) else { return };
    assert_eq!(status, 0, "{out}");
    assert!(t.elapsed() < Duration::from_secs(18), "the answer was not cancelled: {out}");
    assert!(!out.contains("error"), "{out}");
}

#[test]
fn worker_that_cannot_lend_says_so_without_a_banner() {
    let dir = tempfile::tempdir().unwrap();
    let Some(plugin) = cpu_plugin_dir(dir.path()) else { return };
    let listen = format!("127.0.0.1:{}", free_port());
    let mut c = corral(&[&plugin]);
    c.args(["worker", "--backend", "cpu", "--listen", &listen]);
    let (out, stdout, stderr) = run(c);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(!stderr.contains("listening"), "{stderr}");
    assert!(stderr.contains("cannot lend"), "{stderr}");
}

#[test]
fn model_generate_names_the_bad_argument_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("g.gguf");
    let generate = |args: &[&str]| {
        let mut c = corral(&[]);
        c.args(["model", "generate"]).arg(&out_file).args(args);
        let (out, _, stderr) = run(c);
        (out.status.code(), stderr)
    };
    for (args, needle) in [
        (&["--shape", "tiny:n_layer=0"][..], "n_layer must be at least 1"),
        (&["--shape", "tiny:n_layer=99999999999"], "n_layer is too large"),
        (&["--shape", "tiny:n_head=3"], "n_embd must be n_head times"),
        (&["--shape", "tiny:n_embd=4000000,n_ff=4000000"], "free"),
        (&["--type", "q9"], "--type"),
    ] {
        let (code, stderr) = generate(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle) && !stderr.contains("ModelShape"), "{args:?}: {stderr}");
    }
    // A directory as the output: refused, and no `.partial` beside it.
    let mut c = corral(&[]);
    c.args(["model", "generate"]).arg(dir.path());
    let (out, _, stderr) = run(c);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(dir.path().parent().unwrap())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&*dir.path().file_name().unwrap().to_string_lossy())
        })
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(!out_file.exists());
}

#[test]
fn exit_codes_follow_the_error_classes_and_causes_are_said_once() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let plugin = example_plugin_dir(dir.path());
    let model = dir.path().join("m.toy");
    std::fs::write(&model, "toy weights\n").unwrap();
    let code = |args: &[&str]| {
        let mut c = corral(&[&plugin]);
        c.env("HOME", &home).args(args);
        let (out, _, stderr) = run(c);
        (out.status.code(), stderr)
    };
    let m = model.to_str().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, "x").unwrap();
    let f = file.to_str().unwrap();
    for (args, expected, once) in [
        (&["plugin", "check", "no-such-engine"][..], 3, ""),
        (&["plugin", "install", "/nonexistent/plugin"], 3, ""),
        (&["plugin", "remove", "no-such-engine"], 3, ""),
        (&["plugin", "new", "Bad Name", "--dir", "/nonexistent/x"], 2, ""),
        (&["run", m, "hi", "--temperature", "-1"], 2, ""),
        (&["run", m, "hi", "--options", "{bad"], 2, ""),
        (&["list", "--models", f], 1, "Not a directory"),
        (&["--config", dir.path().to_str().unwrap(), "list"], 2, "Is a directory"),
    ] {
        let (got, stderr) = code(args);
        assert_eq!(got, Some(expected), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(once.is_empty() || stderr.matches(once).count() == 1, "{args:?}: {stderr}");
    }
}

/// An RFC 3339 UTC time `secs` seconds from now (negative: ago), as servers send times.
fn rfc3339_in(secs: i64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let t = now.as_secs() as i64 + secs;
    let (days, rem) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    // Days since 1970-01-01 as a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

/// The cell of `row` in the column whose header is `name` (columns start where their
/// header starts, as Ollama's tables align them).
fn cell<'a>(header: &str, row: &'a str, name: &str) -> &'a str {
    let at = header.find(name).unwrap_or_else(|| panic!("no {name} in {header:?}"));
    let rest = row.get(at..).unwrap_or_else(|| panic!("{row:?} is shorter than {header:?}"));
    let end = rest.find("    ").unwrap_or(rest.len());
    rest[..end].trim_end()
}

#[test]
fn ps_and_list_print_ollamas_columns_and_relative_times() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (in_10m, ago_2h, ago_3d) = (rfc3339_in(630), rfc3339_in(-7260), rfc3339_in(-259_300));
    let (host, _) = fake_server(move |_, path, _| match path {
        "/api/ps" => Answer::Full(
            200,
            "application/json",
            json!({"models": [
                {"name": "alpha:latest", "model": "alpha:latest", "digest": "ab".repeat(32),
                 "size": 2_000_000_000u64, "size_vram": 0, "context_length": 4096,
                 "expires_at": in_10m},
                {"name": "beta:7b", "digest": "cd".repeat(32), "size": 4_700_000_000u64,
                 "size_vram": 4_700_000_000u64, "context_length": 8192,
                 "expires_at": "2318-08-23T00:00:00Z"},
                {"name": "gamma:1b", "digest": "ef".repeat(32), "size": 1_000_000_000u64,
                 "size_vram": 750_000_000u64, "context_length": 2048,
                 "expires_at": "2001-01-01T00:00:00Z"},
            ]})
            .to_string(),
        ),
        "/api/tags" => Answer::Full(
            200,
            "application/json",
            json!({"models": [
                {"name": "beta:7b", "digest": "cd".repeat(32), "size": 4_700_000_000u64,
                 "modified_at": ago_3d},
                {"name": "Alpha:latest", "digest": "ab".repeat(32), "size": 620_000_000u64,
                 "modified_at": ago_2h},
            ]})
            .to_string(),
        ),
        _ => Answer::Full(404, "application/json", json!({"error": "no"}).to_string()),
    });

    // `ollama ps`: NAME, ID, SIZE, PROCESSOR, CONTEXT, UNTIL.
    let (code, stdout, stderr) = go_at(Some(&host), &store, &["ps"]);
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"],
        "{stdout}"
    );
    assert_eq!(lines.len(), 4, "{stdout}");
    let row = |name: &str| *lines.iter().find(|l| l.starts_with(name)).unwrap();
    let h = lines[0];
    for (name, id, size, processor, context, until) in [
        ("alpha:latest", "abababababab", "2 GB", "100% CPU", "4096", "10 minutes from now"),
        ("beta:7b", "cdcdcdcdcdcd", "4.7 GB", "100% GPU", "8192", "Forever"),
        ("gamma:1b", "efefefefefef", "1 GB", "25%/75% CPU/GPU", "2048", "Stopping..."),
    ] {
        let r = row(name);
        assert_eq!(cell(h, r, "ID"), id, "{stdout}");
        assert_eq!(cell(h, r, "SIZE"), size, "{stdout}");
        assert_eq!(cell(h, r, "PROCESSOR"), processor, "{stdout}");
        assert_eq!(cell(h, r, "CONTEXT"), context, "{stdout}");
        // A slow machine may print it a minute later than it was sent.
        let u = cell(h, r, "UNTIL");
        assert!(
            u == until || (until.contains("minutes") && u.ends_with("minutes from now")),
            "{u}"
        );
    }
    // `ollama ps NAME`: the models whose name starts with it.
    let (code, stdout, _) = go_at(Some(&host), &store, &["ps", "be"]);
    assert_eq!(code, 0);
    assert_eq!(names(&stdout), ["beta:7b"], "{stdout}");
    // And in the JSON too.
    let (code, stdout, stderr) = go_at(Some(&host), &store, &["ps", "be", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    let listed: Vec<&str> =
        v["models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(listed, ["beta:7b"], "{stdout}");

    // `ollama list`: NAME, ID, SIZE, MODIFIED, newest first, times relative.
    let (code, stdout, stderr) = go_at(Some(&host), &store, &["list"]);
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["NAME", "ID", "SIZE", "MODIFIED"],
        "{stdout}"
    );
    assert_eq!(names(&stdout), ["Alpha:latest", "beta:7b"], "{stdout}");
    assert_eq!(cell(lines[0], lines[1], "MODIFIED"), "2 hours ago", "{stdout}");
    assert_eq!(cell(lines[0], lines[2], "MODIFIED"), "3 days ago", "{stdout}");
    assert_eq!(cell(lines[0], lines[1], "SIZE"), "620 MB", "{stdout}");
    // `ollama list NAME`, any case.
    let (_, stdout, _) = go_at(Some(&host), &store, &["list", "al"]);
    assert_eq!(names(&stdout), ["Alpha:latest"], "{stdout}");
}

#[test]
fn run_through_a_server_sends_ollamas_think_keepalive_and_format() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (host, seen) = fake_corral();
    for (flags, key, want) in [
        (&["--keepalive", "10m"][..], "keep_alive", json!("10m")),
        // A bare number is seconds, sent as a JSON number: Ollama reads a string with Go's
        // ParseDuration, which refuses "-1" and "300".
        (&["--keepalive", "-1"], "keep_alive", json!(-1)),
        (&["--keepalive", "300"], "keep_alive", json!(300)),
        (&["--keepalive", "1.5"], "keep_alive", json!(1.5)),
        (&["--think"], "think", json!(true)),
        (&["--think=true"], "think", json!(true)),
        (&["--think=false"], "think", json!(false)),
        (&["--think=high"], "think", json!("high")),
        (&["--format", "json"], "format", json!("json")),
        (&["--format", "JSON"], "format", json!("json")),
        (&["--format", "Json"], "format", json!("json")),
        (&["--format", r#"{"type":"object"}"#], "format", json!({"type": "object"})),
        // Accepted and without effect: corral does not wrap words.
        (&["--nowordwrap"], "format", Value::Null),
        (&[], "think", Value::Null),
    ] {
        let mut args = vec!["run", "fake", "hi"];
        args.extend_from_slice(flags);
        let (code, stdout, stderr) = go_at(Some(&host), &store, &args);
        assert_eq!(code, 0, "{flags:?}: {stderr}");
        assert_eq!(stdout, "OK\n", "{flags:?}");
        let sent = chats(&seen);
        let body = sent.last().unwrap();
        assert_eq!(body.get(key).cloned().unwrap_or(Value::Null), want, "{flags:?}: {body}");
    }
    // Values that are not Ollama's are refused before anything is sent.
    let before = chats(&seen).len();
    for flags in [
        &["--think=maybe"][..],
        &["--think=max"],
        &["--keepalive", "soon"],
        &["--format", "{not json"],
        &["--format", r#"{"type":"object","required":["a"],"additionalProperties":false}"#],
    ] {
        let mut args = vec!["run", "fake", "hi"];
        args.extend_from_slice(flags);
        let (code, _, stderr) = go_at(Some(&host), &store, &args);
        assert_eq!(code, 2, "{flags:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{flags:?}: {stderr}");
        assert!(stderr.contains(flags[0].split('=').next().unwrap()), "{stderr}");
    }
    assert_eq!(chats(&seen).len(), before, "a refused run sent a request");

    // Thinking is shown as `ollama run` shows it (plain: stdout is not a terminal), or
    // not at all with --hidethinking; the conversation keeps the answer only.
    let (code, stdout, stderr) = go_at(Some(&host), &store, &["run", "fake", "think"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "Thinking...\nLet me see.\n...done thinking.\n\nOK\n");
    let (code, stdout, stderr) =
        go_at(Some(&host), &store, &["run", "fake", "think", "--hidethinking"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "OK\n");
}

#[test]
fn run_through_a_server_pulls_a_model_the_server_does_not_have() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let pulled = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let p2 = pulled.clone();
    let (host, seen) = fake_server(move |_, path, body| {
        let model = body["model"].as_str().unwrap_or_default().to_string();
        let status = |s: &str| json!({"status": s});
        match path {
            "/api/show" if model == "known" || (model == "new" && p2.load(Ordering::SeqCst)) => {
                Answer::Full(200, "application/json", json!({"modelfile": "FROM x\n"}).to_string())
            }
            "/api/show" => Answer::Full(
                404,
                "application/json",
                json!({"error": format!("model '{model}' not found")}).to_string(),
            ),
            "/api/pull" if model == "new" => {
                p2.store(true, Ordering::SeqCst);
                let part = |done: u64| {
                    json!({"status": "pulling 0123456789ab", "digest": "sha256:0123456789ab",
                        "total": 1000, "completed": done})
                };
                Answer::Lines(
                    vec![
                        status("pulling manifest"),
                        part(0),
                        part(500),
                        part(1000),
                        status("verifying sha256 digest"),
                        status("writing manifest"),
                        status("success"),
                    ],
                    Duration::ZERO,
                )
            }
            "/api/pull" => {
                let (error, code) = if model == "gone" {
                    ("registry r, model gone: model not found on the registry (manifest 404)", 404)
                } else {
                    ("registry r, model down: could not connect", 502)
                };
                Answer::Lines(
                    vec![status("pulling manifest"), json!({"error": error, "code": code})],
                    Duration::ZERO,
                )
            }
            "/api/chat" => Answer::Lines(chat_lines("OK", true), Duration::ZERO),
            _ => Answer::Full(404, "application/json", json!({"error": "no"}).to_string()),
        }
    });
    let paths = |seen: &Seen| -> Vec<String> {
        // (The client's probe connects without a request: no path.)
        let seen = seen.lock().unwrap();
        seen.iter()
            .filter(|(_, p, _)| !p.is_empty())
            .map(|(_, p, b)| format!("{p} {}", b["model"]))
            .collect()
    };

    // Missing: shown, pulled with its progress, then run.
    let (code, stdout, stderr) = go_at(Some(&host), &store, &["run", "new", "hi", "--insecure"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "OK\n");
    for needle in ["pulling manifest", "verifying sha256 digest", "writing manifest", "success"] {
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
    assert_eq!(
        paths(&seen),
        ["/api/show \"new\"", "/api/pull \"new\"", "/api/chat \"new\""],
        "{stderr}"
    );
    let pull = seen.lock().unwrap().iter().find(|(_, p, _)| p == "/api/pull").unwrap().2.clone();
    assert_eq!(pull["insecure"], json!(true), "{pull}");
    seen.lock().unwrap().clear();

    // There: not pulled.
    let (code, _, stderr) = go_at(Some(&host), &store, &["run", "known", "hi"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("pulling"), "{stderr}");
    assert_eq!(paths(&seen), ["/api/show \"known\"", "/api/chat \"known\""]);
    seen.lock().unwrap().clear();

    // Not on the registry (404: exit 3) or the registry unreachable (502: exit 1): the
    // registry's message in one error line, and nothing is run.
    for (model, expected) in [("gone", 3), ("down", 1)] {
        let (code, _, stderr) = go_at(Some(&host), &store, &["run", model, "hi"]);
        assert_eq!(code, expected, "{stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        assert!(stderr.trim_end().ends_with(errors[0]), "the error is not the last line: {stderr}");
        assert!(errors[0].contains(model), "{stderr}");
    }
    assert!(chats(&seen).is_empty(), "a model that could not be pulled was run");
    seen.lock().unwrap().clear();

    // A path is not a registry name: neither looked up nor pulled.
    let (_, _, stderr) = go_at(Some(&host), &store, &["run", "./absent.gguf", "hi"]);
    assert!(!paths(&seen).iter().any(|p| p.starts_with("/api/pull")), "{stderr}");
}

#[test]
fn ollama_host_is_the_address_when_corral_has_none() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (host, _) = fake_corral();
    let port = host.rsplit(':').next().unwrap().to_string();
    let with_ollama_host = |corral_host: Option<&str>, value: &str, args: &[&str]| {
        let mut c = corral_at(corral_host, &store, args);
        c.env("OLLAMA_HOST", value);
        let (out, stdout, stderr) = run(c);
        (out.status.code().unwrap_or(-1), stdout, stderr)
    };
    // Alone, in the forms Ollama takes; an address to listen on everywhere is reached at
    // loopback.
    for value in [host.clone(), format!("http://{host}"), format!("0.0.0.0:{port}")] {
        let (code, stdout, stderr) = with_ollama_host(None, &value, &["list"]);
        assert_eq!(code, 0, "{value}: {stderr}");
        assert_eq!(names(&stdout), ["fake:latest"], "{value}: {stdout}");
    }
    // CORRAL_HOST comes first.
    let (code, _, stderr) = with_ollama_host(Some("127.0.0.1:9"), &host, &["ps"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("127.0.0.1:9"), "{stderr}");
    // So does the config's [server] host.
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, format!("[server]\nhost = \"{host}\"\n")).unwrap();
    let cfg_arg = ["--config", cfg.to_str().unwrap(), "list"];
    let (code, stdout, stderr) = with_ollama_host(None, "127.0.0.1:9", &cfg_arg);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(names(&stdout), ["fake:latest"], "{stdout}");
    // A value that is not an address is an error that names it.
    let (code, _, stderr) = with_ollama_host(None, "garbage::::", &["list"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("OLLAMA_HOST") && stderr.trim().lines().count() == 1, "{stderr}");

    // A server that does not answer there: the message names the setting to change.
    let (code, _, stderr) = with_ollama_host(None, "127.0.0.1:9", &["ps"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("could not reach") && stderr.contains("OLLAMA_HOST"), "{stderr}");
    // Read with Ollama's rules: a scheme without a port is 80 for http, 443 for https
    // (corral's CORRAL_HOST keeps 11434); `ps` always asks the server, so its error names
    // where it looked.
    for (value, port) in [("http://127.0.0.1", ":80"), ("https://127.0.0.1", ":443")] {
        let (code, _, stderr) = with_ollama_host(None, value, &["ps"]);
        assert_ne!(code, 0, "{stderr}");
        assert!(stderr.contains(&format!("127.0.0.1{port}")), "{value}: {stderr}");
    }

    // `serve` listens where the client commands look: OLLAMA_HOST when nothing of
    // corral's names an address.
    let store = dir.path().join("server-store");
    let listen = format!("127.0.0.1:{}", free_port());
    let (line, log, (code, stdout, stderr)) =
        serve_with_ollama_host(&listen, &store, || with_ollama_host(None, &listen, &["list"]));
    assert!(line.contains(&listen), "{line}");
    assert!(!log.contains("OLLAMA_HOST"), "{log}");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");

    // But only its port when it names anything else: a leftover OLLAMA_HOST=0.0.0.0
    // (Ollama's FAQ has people set it) does not put a server without API keys on the
    // network, and a client-style value does not stop serve. One warning says how to
    // listen on the network; the clients reading the same value find the server.
    for (value, port) in [
        ("0.0.0.0:{}", free_port()),
        ("http://0.0.0.0:{}", free_port()),
        ("https://ollama.example.com:{}/ollama", free_port()),
    ] {
        let value = value.replace("{}", &port.to_string());
        let reached = value.contains("0.0.0.0");
        let (line, log, listed) = serve_with_ollama_host(&value, &store, || {
            reached.then(|| with_ollama_host(None, &value, &["list"]))
        });
        assert!(line.contains(&format!("http://127.0.0.1:{port}")), "{value}: {line}\n{log}");
        let warnings: Vec<&str> = log.lines().filter(|l| l.contains("OLLAMA_HOST")).collect();
        assert_eq!(warnings.len(), 1, "{value}: {log}");
        assert!(warnings[0].contains("CORRAL_HOST") && warnings[0].contains("API key"), "{log}");
        assert!(!log.contains("which other machines can reach"), "{log}");
        if let Some((code, stdout, stderr)) = listed {
            assert_eq!(code, 0, "{value}: {stderr}");
            assert_eq!(stdout.lines().count(), 1, "{stdout}");
        }
    }
}

/// Starts `corral serve` with `OLLAMA_HOST=value` and nothing of corral's naming an
/// address, runs `beside` while it listens, and stops it: its `listening on` line, what it
/// wrote before that line, and what `beside` returned.
fn serve_with_ollama_host<T>(
    value: &str,
    store: &Path,
    beside: impl FnOnce() -> T,
) -> (String, String, T) {
    let mut c = corral(&[]);
    c.env_remove("CORRAL_HOST")
        .env("OLLAMA_HOST", value)
        .env("CORRAL_MODELS", store)
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut before = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("listening on") {
                let _ = tx.send((line, before.clone()));
            } else {
                before.push_str(&line);
                before.push('\n');
            }
        }
        // Ended without listening.
        let _ = tx.send((String::new(), before));
    });
    let got = rx.recv_timeout(Duration::from_secs(120));
    let besides = matches!(&got, Ok((line, _)) if !line.is_empty()).then(beside);
    let _ = child.kill();
    let _ = child.wait();
    let (line, log) = got.expect("corral serve said nothing within 120 s");
    let Some(besides) = besides else { panic!("corral serve {value:?} did not listen:\n{log}") };
    (line, log, besides)
}

#[test]
fn create_refuses_quantize_instead_of_ignoring_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let gguf = dir.path().join("tiny.gguf");
    std::fs::write(&gguf, b"GGUF not really").unwrap();
    let mf = dir.path().join("Modelfile");
    std::fs::write(&mf, "FROM ./tiny.gguf\n").unwrap();
    let mf = mf.to_str().unwrap();
    let (host, seen) = fake_corral();
    for (host, args) in [
        (Some(host.as_str()), &["create", "m", "-f", mf, "-q", "q4_K_M"][..]),
        (Some(host.as_str()), &["create", "m", "-f", mf, "--quantize", "q8_0"]),
        (None, &["create", "m", "-f", mf, "-q", "q4_K_M", "--local"]),
    ] {
        let (code, _, stderr) = go_at(host, &store, args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains("--quantize") && stderr.contains("llama-quantize"), "{stderr}");
    }
    assert!(seen.lock().unwrap().is_empty(), "a refused create sent a request");
    assert!(!store.exists(), "a refused create wrote the store");
}

#[test]
fn run_in_this_process_takes_ollamas_flags() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = example_plugin_dir(dir.path());
    let model = dir.path().join("m.toy");
    std::fs::write(&model, "toy weights\n").unwrap();
    let m = model.to_str().unwrap();
    let go = |args: &[&str]| {
        let mut c = corral(&[&plugin]);
        c.env_remove("OLLAMA_HOST").arg("run").args(args);
        let (out, stdout, stderr) = run(c);
        (out.status.code().unwrap_or(-1), stdout, stderr)
    };
    let fixed = ["--temperature", "0", "--num-predict", "48"];
    // --format json holds the toy engine's random text to a JSON object.
    let (code, free, stderr) = go(&[&[m, "hi"][..], &fixed].concat());
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, stderr) = go(&[&[m, "hi", "--format", "json"][..], &fixed].concat());
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.trim_start().starts_with('{') && stdout != free, "{stdout:?}");
    // In any case, as Ollama's `--format JSON`: the answer's format, not a file's.
    let (code, upper, stderr) = go(&[&[m, "hi", "--format", "JSON"][..], &fixed].concat());
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(upper, stdout);
    // `bench` has no answer to hold to a format: refused, not ignored.
    for format in ["json", "JSON", r#"{"type":"object"}"#] {
        let mut c = corral(&[&plugin]);
        c.env_remove("OLLAMA_HOST").args(["bench", m, "--no-raw", "--reps", "1", "--format"]);
        c.args([format, "--pp", "4", "--tg", "4"]);
        let (out, _, stderr) = run(c);
        assert_eq!(out.status.code(), Some(2), "{format}: {stderr}");
        assert!(stderr.contains("--format") && stderr.contains("bench"), "{stderr}");
    }
    // --format's older meaning, the model file's format, stays; --model-format says it
    // beside an answer's format.
    let plain = dir.path().join("weights");
    std::fs::copy(&model, &plain).unwrap();
    let p = plain.to_str().unwrap();
    let (code, _, stderr) = go(&[&[p, "hi", "--format", "toy"][..], &fixed].concat());
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, stderr) =
        go(&[&[p, "hi", "--model-format", "toy", "--format", "json"][..], &fixed].concat());
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.trim_start().starts_with('{'), "{stdout:?}");
    // --keepalive has no model to keep here: said, not an error; --nowordwrap is accepted.
    let (code, _, stderr) =
        go(&[&[m, "hi", "--keepalive", "5m", "--nowordwrap"][..], &fixed].concat());
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("--keepalive"), "{stderr}");
    // A model whose template does not think is refused thinking (exit 2), not answered
    // without it; --think=false and --hidethinking are fine.
    let (code, _, stderr) = go(&[&[m, "hi", "--think"][..], &fixed].concat());
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("does not support thinking"), "{stderr}");
    let (code, stdout, stderr) =
        go(&[&[m, "hi", "--think=false", "--hidethinking"][..], &fixed].concat());
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, free);
}
