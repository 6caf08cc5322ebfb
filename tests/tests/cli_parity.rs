//! `corral run` as `ollama run` behaves, with real pieces: a model the store lacks is
//! pulled from a real OCI registry (Debian's `docker-registry` on a loopback port) and
//! then run, in this process and through `corral serve`; a name the registry does not
//! have, or a registry nobody answers at, ends in one error line and its exit code; a
//! thinking model's thinking is shown as Ollama shows it. Every command runs with proxy
//! settings that point at a closed port: nothing on this machine is reached through a
//! proxy, so the tests pass the same with a CI machine's `HTTP_PROXY` or without one. The
//! fake-server checks of the same flags are in `cli_client.rs`. Skips (printing why)
//! without the registry binary or a GGUF engine plugin.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use corral_e2e::*;

/// A GGUF engine: the pure-Rust one, else llama.cpp's.
fn gguf_plugin(dir: &Path) -> Option<PathBuf> {
    cpu_plugin_dir(dir).or_else(|| llama_cpp_plugin_dir(dir))
}

/// Proxy settings that send everything to a closed port, as on a CI machine whose proxy
/// refuses what it does not know: the registry and the server are on this machine, so
/// nothing here may go through a proxy. `NO_PROXY` is set empty (it cannot be unset in a
/// server started by `Server::start`): it excludes nothing.
const CLOSED_PROXY: [(&str, &str); 4] = [
    ("HTTP_PROXY", "http://127.0.0.1:9"),
    ("HTTPS_PROXY", "http://127.0.0.1:9"),
    ("ALL_PROXY", "http://127.0.0.1:9"),
    ("NO_PROXY", ""),
];

/// `corral ARGS` with `plugin`, store `store`, the server at `host` and [`CLOSED_PROXY`].
fn go_with(plugin: &Path, store: &Path, host: &str, args: &[&str]) -> (i32, String, String) {
    let mut c = corral(&[plugin]);
    c.env("CORRAL_MODELS", store)
        .env("CORRAL_HOST", host)
        .env_remove("CORRAL_MODELS_READONLY")
        .env_remove("no_proxy")
        .envs(CLOSED_PROXY)
        .args(args);
    let (out, stdout, stderr) = run(c);
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

/// The only `error:` line of `stderr`, which must be its last.
fn one_error_line(stderr: &str) -> String {
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert_eq!(stderr.trim_end().lines().last(), Some(errors[0]), "{stderr}");
    errors[0].to_string()
}

#[test]
fn run_pulls_a_missing_model_from_a_registry_in_this_process_and_through_a_server() {
    let Some(reg) = Registry::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let Some(plugin) = gguf_plugin(dir.path()) else { return };
    let gguf = dir.path().join("tiny.gguf");
    generate_model(&gguf, "tiny", "f32");
    let mf = dir.path().join("Modelfile");
    std::fs::write(&mf, format!("FROM {}\nPARAMETER temperature 0\n", gguf.display())).unwrap();
    let name = format!("127.0.0.1:{}/test/tiny:latest", reg.port);
    let nobody = "127.0.0.1:9";

    // Published from a store of its own.
    let publisher = dir.path().join("publisher");
    let (code, _, stderr) =
        go_with(&plugin, &publisher, nobody, &["create", &name, "-f", mf.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = go_with(&plugin, &publisher, nobody, &["push", &name, "--insecure"]);
    assert_eq!(code, 0, "{stderr}");

    // In this process: the empty store gets the model, with the pull's progress, and it
    // runs; the next run finds it there.
    let store = dir.path().join("store");
    let args = ["run", "--insecure", name.as_str(), "hi", "--num-predict", "4"];
    let (code, stdout, stderr) = go_with(&plugin, &store, nobody, &args);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stdout.trim().is_empty(), "no answer: {stderr}");
    for needle in ["pulling manifest", "verifying sha256 digest", "writing manifest", "success"] {
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
    let (_, list, _) = go_with(&plugin, &store, nobody, &["list"]);
    assert_eq!(names(&list), [name.as_str()], "{list}");
    let (code, _, stderr) = go_with(&plugin, &store, nobody, &args);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("pulling"), "pulled again: {stderr}");

    // A name the registry does not have: not found (3); a registry nobody answers at: 1,
    // at once; one error line each, after the progress, and nothing is loaded.
    let closed = format!("127.0.0.1:{}/test/tiny", free_port());
    let missing = format!("127.0.0.1:{}/test/nosuch", reg.port);
    for (model, expected, says) in [(&missing, 3, "not found"), (&closed, 1, "connect")] {
        let t = Instant::now();
        let (code, stdout, stderr) =
            go_with(&plugin, &store, nobody, &["run", "--insecure", model, "hi"]);
        assert_eq!(code, expected, "{model}: {stderr}");
        assert!(one_error_line(&stderr).contains(says), "{stderr}");
        assert!(stdout.is_empty(), "{stdout}");
        assert!(t.elapsed() < Duration::from_secs(120), "{model}: {:?}", t.elapsed());
    }
    // A missing path is not pulled.
    let (code, _, stderr) = go_with(&plugin, &store, nobody, &["run", "./absent.gguf", "hi"]);
    assert_eq!(code, 3, "{stderr}");
    assert!(!stderr.contains("pulling"), "{stderr}");

    // Through a server: its store gets the model (the shell's store is not touched); it
    // too reaches the registry on this machine without the proxy.
    let server = Server::start(&[&plugin], &CLOSED_PROXY, &["--allow-insecure-registries"]);
    let host = server.url.trim_start_matches("http://").to_string();
    let shell_store = dir.path().join("shell-store");
    let (code, stdout, stderr) = go_with(&plugin, &shell_store, &host, &args);
    assert_eq!(code, 0, "{stderr}\n{}", server.log());
    assert!(!stdout.trim().is_empty(), "no answer: {stderr}");
    for needle in ["pulling manifest", "success"] {
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
    let (code, ps, stderr) = go_with(&plugin, &shell_store, &host, &["ps"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(names(&ps), [name.as_str()], "{ps}");
    assert!(ps.contains("100% CPU"), "{ps}");
    let (code, _, stderr) =
        go_with(&plugin, &shell_store, &host, &["run", "--insecure", &missing, "hi"]);
    assert_eq!(code, 3, "{stderr}");
    assert!(one_error_line(&stderr).contains("not found"), "{stderr}");
    assert!(!shell_store.exists(), "the shell's store was written");
}

#[test]
fn a_thinking_models_thinking_is_shown_as_ollama_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let Some(plugin) = gguf_plugin(dir.path()) else { return };
    let gguf = dir.path().join("tiny.gguf");
    generate_model(&gguf, "tiny", "f32");
    // A template that opens the thinking block: everything the model writes is thinking
    // until it writes `</think>` (random weights never do).
    let mf = dir.path().join("Modelfile");
    std::fs::write(
        &mf,
        format!(
            "FROM {}\nTEMPLATE \"\"\"{{{{ .Prompt }}}}<think>\n\"\"\"\nPARAMETER temperature 0\n",
            gguf.display()
        ),
    )
    .unwrap();
    let store = dir.path().join("store");
    let nobody = "127.0.0.1:9";
    let (code, _, stderr) =
        go_with(&plugin, &store, nobody, &["create", "thinker", "-f", mf.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let server = Server::start(&[&plugin], &[("CORRAL_MODELS", store.to_str().unwrap())], &[]);
    let host = server.url.trim_start_matches("http://").to_string();
    for (place, host) in [("in this process", nobody), ("through a server", host.as_str())] {
        let run = |extra: &[&str]| {
            let mut args = vec!["run", "thinker", "hi", "--num-predict", "8"];
            args.extend_from_slice(extra);
            let (code, stdout, stderr) = go_with(&plugin, &store, host, &args);
            assert_eq!(code, 0, "{place} {extra:?}: {stderr}");
            stdout
        };
        let shown = run(&[]);
        let thinking = shown.strip_prefix("Thinking...\n").unwrap_or_else(|| {
            panic!("{place}: the thinking is not shown as Ollama shows it: {shown:?}")
        });
        assert!(!thinking.trim().is_empty(), "{place}: {shown:?}");
        // Hidden: nothing of it.
        assert_eq!(run(&["--hidethinking"]).trim(), "", "{place}");
        // `--think=false`: the template is told so, and the text is not split.
        assert!(!run(&["--think=false"]).contains("Thinking..."), "{place}");
    }
}
