//! The CLI talks to one place: with a `corral serve` answering at `CORRAL_HOST`, the store
//! commands (`create`, `list`, `show`, `cp`, `rm`, `pull`, `push`) and `run` go through
//! it and its store, whatever `CORRAL_MODELS` the shell has; without one (or with
//! `--local` / `--models DIR`) they work on the local store.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use corral_e2e::*;

const TEMPLATE: &str = "{{ if .System }}<|system|>\n{{ .System }}<|end|>\n{{ end }}{{ if .Prompt }}<|user|>\n{{ .Prompt }}<|end|>\n{{ end }}<|assistant|>\n{{ .Response }}<|end|>\n";

/// A plugin that runs GGUF models (llama.cpp, else the pure-Rust cpu engine), if built.
fn gguf_plugin(dir: &Path) -> Option<PathBuf> {
    llama_cpp_plugin_dir(dir).or_else(|| cpu_plugin_dir(dir))
}

/// Nothing listens here: the CLI works on its local store.
const NO_SERVER: &str = "127.0.0.1:9";

#[test]
fn store_commands_and_run_go_through_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let (store_a, store_b) = (dir.path().join("server-store"), dir.path().join("shell-store"));
    generate_model(&dir.path().join("tiny.gguf"), "tiny", "f32");
    let mf = dir.path().join("Modelfile");
    std::fs::write(
        &mf,
        format!(
            "FROM ./tiny.gguf\nTEMPLATE \"\"\"{TEMPLATE}\"\"\"\nSYSTEM \"\"\"You are terse.\"\"\"\n\
             PARAMETER temperature 0.3\nPARAMETER stop \"<|end|>\"\nPARAMETER stop \"User:\"\n\
             LICENSE \"\"\"MIT test license\nsecond line\"\"\"\nMESSAGE user \"Hi there\"\n"
        ),
    )
    .unwrap();
    let mf = mf.to_str().unwrap();

    // The shell's own store holds another model, created without a server.
    let (code, _, stderr) = go(&store_b, NO_SERVER, &["create", "shell-only", "-f", mf]);
    assert_eq!(code, 0, "{stderr}");

    let plugin = gguf_plugin(dir.path());
    let plugins: Vec<&Path> = plugin.iter().map(PathBuf::as_path).collect();
    let store_a_env = store_a.to_str().unwrap();
    let mut server = Server::start(&plugins, &[("CORRAL_MODELS", store_a_env)], &[]);
    let host = server.url.trim_start_matches("http://").to_string();
    let log = |s: &Server| format!("\nserver log:\n{}", s.log());

    // create lands in the server's store, not the shell's.
    let (code, _, stderr) = go(&store_b, &host, &["create", "m", "-f", mf]);
    assert_eq!(code, 0, "{stderr}{}", log(&server));
    for needle in ["transferring model data", "writing manifest", "success"] {
        assert!(stderr.contains(needle), "create output lacks {needle:?}:\n{stderr}");
    }
    let (_, a_list, _) = go(&store_b, &host, &["list", "--models", store_a_env]);
    assert!(names(&a_list).contains(&"m:latest".to_string()), "store A: {a_list}");
    let (_, b_list, _) = go(&store_b, &host, &["list", "--local"]);
    assert_eq!(names(&b_list), ["shell-only:latest"], "store B: {b_list}");

    // list shows the server's models, in the same table.
    let (code, stdout, stderr) = go(&store_b, &host, &["list"]);
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("NAME") && lines[0].contains("MODIFIED"), "{stdout}");
    assert_eq!(names(&stdout), ["m:latest"], "{stdout}");
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert!(row[1].len() == 12 && row[1].chars().all(|c| c.is_ascii_hexdigit()), "{stdout}");
    assert!(stdout.contains("ago"), "{stdout}");

    // show: the same sections as the local store's, and each part alone.
    let (code, remote_show, stderr) = go(&store_b, &host, &["show", "m"]);
    assert_eq!(code, 0, "{stderr}");
    let (_, local_show, _) = go(&store_b, &host, &["show", "m", "--models", store_a_env]);
    assert_eq!(remote_show, local_show, "show through the server differs from local");
    for needle in [
        "architecture        llama",
        "context length",
        "quantization        F32",
        "Parameters",
        "temperature 0.3",
        "System",
        "You are terse.",
        "License",
        "MIT test license",
    ] {
        assert!(remote_show.contains(needle), "show lacks {needle:?}:\n{remote_show}");
    }
    let (_, t, _) = go(&store_b, &host, &["show", "m", "--template"]);
    assert_eq!(t.trim_end(), TEMPLATE.trim_end());
    let (_, s, _) = go(&store_b, &host, &["show", "m", "--system"]);
    assert_eq!(s.trim_end(), "You are terse.");
    let (_, p, _) = go(&store_b, &host, &["show", "m", "--parameters"]);
    for needle in
        ["PARAMETER temperature 0.3", "PARAMETER stop \"<|end|>\"", "PARAMETER stop \"User:\""]
    {
        assert!(p.contains(needle), "{p}");
    }
    let (_, l, _) = go(&store_b, &host, &["show", "m", "--license"]);
    assert_eq!(l.trim_end(), "MIT test license\nsecond line");
    let (_, modelfile, _) = go(&store_b, &host, &["show", "m", "--modelfile"]);
    assert!(modelfile.contains(&format!("FROM {}", store_a.display())), "{modelfile}");
    assert!(modelfile.contains("MESSAGE user \"Hi there\""), "{modelfile}");

    // A model the server does not have: its message, exit code 3.
    let (code, _, stderr) = go(&store_b, &host, &["show", "nope"]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("model \"nope\" not found, try pulling it first"), "{stderr}");
    let (code, _, stderr) = go(&store_b, &host, &["show", "shell-only"]);
    assert_eq!(code, 3, "the shell's store is not consulted: {stderr}");

    // cp and rm change the server's store.
    let (code, stdout, stderr) = go(&store_b, &host, &["cp", "m", "m2"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("copied 'm' to 'm2'"), "{stdout}");
    let (_, stdout, _) = go(&store_b, &host, &["list"]);
    assert_eq!(names(&stdout).len(), 2, "{stdout}");
    assert!(names(&stdout).contains(&"m2:latest".to_string()), "{stdout}");
    let (code, stdout, stderr) = go(&store_b, &host, &["rm", "m2"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("deleted 'm2'"), "{stdout}");
    let (_, stdout, _) = go(&store_b, &host, &["list", "--models", store_a_env]);
    assert_eq!(names(&stdout), ["m:latest"], "{stdout}");
    let (code, _, stderr) = go(&store_b, &host, &["rm", "m2"]);
    assert_eq!(code, 3, "{stderr}");
    let (code, _, stderr) = go(&store_b, &host, &["cp", "nope", "x"]);
    assert_eq!(code, 3, "{stderr}");

    // FROM a model of the server's store, overriding a parameter.
    let mf2 = dir.path().join("Modelfile2");
    std::fs::write(&mf2, "FROM m\nPARAMETER temperature 0.9\n").unwrap();
    let (code, _, stderr) =
        go(&store_b, &host, &["create", "derived", "-f", mf2.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let (_, p, _) = go(&store_b, &host, &["show", "derived", "--parameters"]);
    assert!(p.contains("temperature 0.9") && !p.contains("0.3"), "{p}");
    let (_, t, _) = go(&store_b, &host, &["show", "derived", "--template"]);
    assert_eq!(t.trim_end(), TEMPLATE.trim_end());
    // FROM a model only the shell's store has: the server says it is not there.
    std::fs::write(&mf2, "FROM shell-only\n").unwrap();
    let (code, _, stderr) = go(&store_b, &host, &["create", "x", "-f", mf2.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("shell-only"), "{stderr}");

    // What the API cannot carry is refused with the way out.
    let onnx_dir = dir.path().join("onnx-model");
    std::fs::create_dir_all(&onnx_dir).unwrap();
    std::fs::write(onnx_dir.join("model.onnx"), b"x").unwrap();
    std::fs::write(&mf2, "FROM ./onnx-model\n").unwrap();
    let (code, _, stderr) = go(&store_b, &host, &["create", "x", "-f", mf2.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--local") && stderr.contains("line 1"), "{stderr}");
    std::fs::write(&mf2, "FROM ./tiny.gguf\nFROM ./tiny.gguf\n").unwrap();
    let (code, _, stderr) = go(&store_b, &host, &["create", "x", "-f", mf2.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("second FROM") && stderr.contains("--local"), "{stderr}");
    // An ADAPTER that is not a GGUF file is the Modelfile's error, named by its line
    // (a GGUF one is uploaded as a blob: tests/tests/lora.rs).
    std::fs::write(dir.path().join("notes.txt"), "not a model").unwrap();
    std::fs::write(&mf2, "FROM ./tiny.gguf\nADAPTER ./notes.txt\n").unwrap();
    let (code, _, stderr) = go(&store_b, &host, &["create", "x", "-f", mf2.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("line 2") && stderr.contains("not a GGUF"), "{stderr}");
    let (code, _, stderr) = go(&store_b, &host, &["create", "x", "-f", mf, "--link"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--local"), "{stderr}");
    std::fs::write(&mf2, "FROM ./missing.gguf\n").unwrap();
    let (code, _, stderr) = go(&store_b, &host, &["create", "x", "-f", mf2.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("missing.gguf") && stderr.contains("line 1"), "{stderr}");

    // run answers through the server, which then has the model loaded.
    if plugin.is_some() {
        let (code, _, stderr) = go(&store_b, &host, &["run", "m", "hi", "--num-predict", "3"]);
        assert_eq!(code, 0, "{stderr}{}", log(&server));
        let (code, ps, stderr) = go(&store_b, &host, &["ps"]);
        assert_eq!(code, 0, "{stderr}");
        assert!(ps.contains("m:latest"), "{ps}");
    } else {
        eprintln!("SKIP: run through the server (no GGUF engine plugin built)");
    }

    // With the server gone, the same commands work on the shell's store.
    assert!(server.terminate(Duration::from_secs(10)), "the server did not stop");
    let (code, stdout, stderr) = go(&store_b, &host, &["list"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(names(&stdout), ["shell-only:latest"], "{stdout}");
    let (code, _, stderr) = go(&store_b, &host, &["show", "m"]);
    assert_eq!(code, 3, "{stderr}");
}

#[test]
fn push_and_pull_go_through_a_running_server() {
    let Some(reg) = Registry::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (store_a, store_b) = (dir.path().join("server-store"), dir.path().join("shell-store"));
    generate_model(&dir.path().join("tiny.gguf"), "tiny", "f32");
    let mf = dir.path().join("Modelfile");
    std::fs::write(&mf, format!("FROM ./tiny.gguf\nTEMPLATE \"\"\"{TEMPLATE}\"\"\"\n")).unwrap();
    let store_a_env = store_a.to_str().unwrap();
    // The test registry speaks plain HTTP: the operator allows it (a client cannot).
    let server = Server::start(
        &[],
        &[("CORRAL_MODELS", store_a_env), ("CORRAL_ALLOW_INSECURE_REGISTRIES", "1")],
        &[],
    );
    let host = server.url.trim_start_matches("http://").to_string();
    let name = format!("127.0.0.1:{}/test/tiny:latest", reg.port);

    let (code, _, stderr) = go(&store_b, &host, &["create", &name, "-f", mf.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = go(&store_b, &host, &["push", &name, "--insecure"]);
    assert_eq!(code, 0, "push failed: {stderr}\nserver log:\n{}", server.log());
    assert!(stderr.contains("pushing") && stderr.contains("success"), "{stderr}");
    let (code, _, stderr) = go(&store_b, &host, &["rm", &name]);
    assert_eq!(code, 0, "{stderr}");
    let (_, stdout, _) = go(&store_b, &host, &["list"]);
    assert!(names(&stdout).is_empty(), "{stdout}");

    let (code, _, stderr) = go(&store_b, &host, &["pull", &name, "--insecure"]);
    assert_eq!(code, 0, "pull failed: {stderr}\nserver log:\n{}", server.log());
    for needle in
        ["pulling manifest", "pulling ", "verifying sha256 digest", "writing manifest", "success"]
    {
        assert!(stderr.contains(needle), "pull output lacks {needle:?}:\n{stderr}");
    }
    let (_, stdout, _) = go(&store_b, &host, &["list", "--models", store_a_env]);
    assert_eq!(names(&stdout), std::slice::from_ref(&name), "the server's store: {stdout}");
    let (_, stdout, _) = go(&store_b, &host, &["list", "--local"]);
    assert!(names(&stdout).is_empty(), "the shell's store: {stdout}");
    let (_, t, _) = go(&store_b, &host, &["show", &name, "--template"]);
    assert_eq!(t.trim_end(), TEMPLATE.trim_end());

    // Not found, exit code 3: a model the registry lacks, one the server lacks.
    let missing = format!("127.0.0.1:{}/test/absent:latest", reg.port);
    let (code, _, stderr) = go(&store_b, &host, &["pull", &missing, "--insecure"]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("not found"), "{stderr}");
    let (code, _, stderr) = go(&store_b, &host, &["push", &missing, "--insecure"]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("not found"), "{stderr}");
}
