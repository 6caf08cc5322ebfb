//! `corral serve` refuses settings it cannot honour at startup, with one line naming the
//! setting and exit 2, instead of starting with a default in their place: a key file
//! without keys (which left an exposed server open), thread and sequence counts beyond
//! the machine or llama.cpp, environment variables that do not parse (a typo in
//! `CORRAL_MODELS_READONLY` left the store writable), a store that cannot be opened. The
//! listening address takes the forms the client commands take from the same variable.

use corral_e2e::*;

/// Runs `corral serve` with `args` and `env` (on a free port unless `args` names one):
/// its exit code and stderr, or `None` when it started listening (then it is stopped).
fn serve_outcome(args: &[&str], env: &[(&str, &str)]) -> Option<(i32, String)> {
    use std::io::BufRead;
    let store = tempfile::tempdir().unwrap();
    let mut c = corral(&[]);
    c.arg("serve");
    if !args.contains(&"--host") {
        c.args(["--host", "127.0.0.1:0"]);
    }
    c.args(args).env("CORRAL_MODELS", store.path());
    for (k, v) in env {
        c.env(k, v);
    }
    c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut err = String::new();
    for line in std::io::BufReader::new(child.stderr.take().unwrap()).lines().map_while(Result::ok)
    {
        if line.starts_with("listening on ") {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        err.push_str(&line);
        err.push('\n');
    }
    let status = child.wait().unwrap();
    Some((status.code().unwrap_or(-1), err))
}

fn refused(args: &[&str], env: &[(&str, &str)], says: &str) {
    let Some((code, err)) = serve_outcome(args, env) else {
        panic!("serve {args:?} {env:?} started; it should refuse ({says})");
    };
    assert_eq!(code, 2, "{args:?} {env:?}: {err}");
    assert!(err.contains(says), "{args:?} {env:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn unusable_settings_stop_serve_with_the_settings_name() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.txt");
    std::fs::write(&keys, "# the keys\n\n   \n").unwrap();
    let keys = keys.to_string_lossy().into_owned();
    refused(&["--api-key-file", &keys], &[], "holds no key");
    refused(&[], &[("CORRAL_API_KEYS", " , ,")], "are all blank");
    refused(&["--threads", "100000"], &[], "--threads 100000");
    refused(&["--num-parallel", "100000"], &[], "--num-parallel 100000");
    refused(&[], &[("CORRAL_MODELS_READONLY", "maybe")], "CORRAL_MODELS_READONLY");
    refused(&[], &[("CORRAL_READ_TIMEOUT", "-5")], "CORRAL_READ_TIMEOUT");
    refused(&[], &[("CORRAL_TEMPLATE_TIMEOUT", "abc")], "CORRAL_TEMPLATE_TIMEOUT");
    refused(&[], &[("CORRAL_MAX_BLOB_SIZE", "lots")], "CORRAL_MAX_BLOB_SIZE");
    refused(&[], &[("CORRAL_ISOLATION", "bogus")], "bogus");
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let file = file.to_string_lossy().into_owned();
    let (code, err) = serve_outcome(&["--models", &file], &[]).expect("serve refuses");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("model store cannot be opened"), "{err}");
    refused(&[], &[("CORRAL_TEMPLATE_TIMEOUT", "0s")], "CORRAL_TEMPLATE_TIMEOUT");
    refused(&["--host", "127.0.0.1:99999"], &[], "cannot listen on");
    // A key file with a key starts; so does a plain one.
    std::fs::write(dir.path().join("keys.txt"), "# the keys\nsecret-1\n").unwrap();
    assert!(serve_outcome(&["--api-key-file", &keys], &[]).is_none());
}

#[test]
fn the_listening_address_takes_the_clients_forms() {
    use std::io::BufRead;
    for form in ["http://127.0.0.1:{port}", "127.0.0.1:{port}/", "[::1]:{port}"] {
        let port = free_port();
        let host = form.replace("{port}", &port.to_string());
        let store = tempfile::tempdir().unwrap();
        let mut c = corral(&[]);
        c.args(["serve", "--host", &host]).env("CORRAL_MODELS", store.path());
        c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        let lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let listening = lines.map_while(Result::ok).find(|l| l.starts_with("listening on "));
        let _ = child.kill();
        let _ = child.wait();
        let line = listening.unwrap_or_else(|| panic!("{host}: serve did not listen"));
        assert!(line.ends_with(&format!(":{port}")), "{host}: {line}");
    }
    refused(&["--host", "ftp://127.0.0.1:1"], &[], "cannot listen on");
}

/// Unloading (`keep_alive: 0` with no prompt, what `corral stop` sends) a model that does
/// not exist is a 404, as Ollama answers, not a success.
#[test]
fn unloading_a_model_that_does_not_exist_is_404() {
    let s = Server::start(&[], &[], &[]);
    for path in ["/api/generate", "/api/chat"] {
        let (st, v) =
            post_json(&s.url, path, &serde_json::json!({"model": "nosuch", "keep_alive": 0}));
        assert_eq!(st, 404, "{path}: {v}");
    }
}
