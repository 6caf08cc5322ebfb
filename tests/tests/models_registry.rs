//! `corral push` and `corral pull` against a real OCI registry: Debian's `docker-registry`
//! (the reference distribution registry) on a loopback port. Push a generated model,
//! remove it locally, pull it back, run it. Skips (printing why) without the binary.

use std::path::{Path, PathBuf};

use corral_e2e::*;

fn go(store: &Path, plugins: &[&Path], args: &[&str]) -> (i32, String, String) {
    let mut c = corral(plugins);
    c.env("CORRAL_MODELS", store).env_remove("CORRAL_MODELS_READONLY").args(args);
    let (out, stdout, stderr) = run(c);
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

/// llama-cpp when built (here or in the workspace's target/debug), else the example
/// plugin with `--format toy`.
fn gguf_runner(dir: &Path) -> (PathBuf, Vec<String>) {
    let lib = "libcorral_backend_llama_cpp.so";
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf);
    let manifest = root.as_ref().map(|r| r.join("backends/llama-cpp/manifests/llama-cpp-cpu.toml"));
    for c in
        [Some(profile_dir()), root.as_ref().map(|r| r.join("target/debug"))].into_iter().flatten()
    {
        let l = c.join(lib);
        if let (true, Some(m)) = (l.is_file(), manifest.as_ref().filter(|m| m.is_file())) {
            let text = std::fs::read_to_string(m).expect("read llama-cpp manifest");
            return (plugin_dir(dir, "llama-cpp", &text, Some(&l)), Vec::new());
        }
    }
    eprintln!("NOTE: llama-cpp plugin not built; running with the example plugin (format toy)");
    (example_plugin_dir(dir), vec!["--format".into(), "toy".into()])
}

#[test]
fn push_remove_pull_and_run_against_a_real_registry() {
    let Some(reg) = Registry::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let gguf = dir.path().join("tiny.gguf");
    let mut c = corral(&[]);
    c.args(["model", "generate"]).arg(&gguf).args(["--shape", "tiny", "--type", "f32"]);
    let (out, _, stderr) = run(c);
    assert!(out.status.success(), "{stderr}");
    let mf = dir.path().join("Modelfile");
    std::fs::write(
        &mf,
        format!(
            "FROM {}\nTEMPLATE \"\"\"{{{{ if .Prompt }}}}<|user|>\n{{{{ .Prompt }}}}<|end|>\n\
             {{{{ end }}}}<|assistant|>\n{{{{ .Response }}}}<|end|>\"\"\"\nPARAMETER temperature 0\n",
            gguf.display()
        ),
    )
    .unwrap();
    let name = format!("127.0.0.1:{}/test/tiny:latest", reg.port);
    let (code, _, stderr) = go(&store, &[], &["create", &name, "-f", mf.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");

    // Without --insecure the client speaks HTTPS to a plain-HTTP registry and fails.
    let (code, _, stderr) = go(&store, &[], &["push", &name]);
    assert_ne!(code, 0, "{stderr}");

    let (code, _, stderr) = go(&store, &[], &["push", &name, "--insecure"]);
    assert_eq!(code, 0, "push failed: {stderr}");
    assert!(stderr.contains("pushing"), "{stderr}");
    assert!(stderr.contains("success"), "{stderr}");

    let (code, stdout, stderr) = go(&store, &[], &["rm", &name]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("deleted"), "{stdout}");
    let (_, stdout, _) = go(&store, &[], &["list"]);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");

    let (code, _, stderr) = go(&store, &[], &["pull", &name, "--insecure"]);
    assert_eq!(code, 0, "pull failed: {stderr}");
    for needle in
        ["pulling manifest", "pulling ", "verifying sha256 digest", "writing manifest", "success"]
    {
        assert!(stderr.contains(needle), "pull output lacks {needle:?}:\n{stderr}");
    }
    let (_, stdout, _) = go(&store, &[], &["list"]);
    assert!(stdout.contains(&name), "{stdout}");
    let (_, t, _) = go(&store, &[], &["show", &name, "--template"]);
    assert!(t.contains("{{ .Prompt }}"), "{t}");

    let (plugins, extra) = gguf_runner(dir.path());
    let mut args = vec!["run", name.as_str(), "hi", "--num-predict", "4"];
    args.extend(extra.iter().map(String::as_str));
    let (code, _, stderr) = go(&store, &[plugins.as_path()], &args);
    assert_eq!(code, 0, "run of the pulled model failed: {stderr}");

    // A model the registry does not have: not found, exit code 3.
    let missing = format!("127.0.0.1:{}/test/absent:latest", reg.port);
    let (code, _, stderr) = go(&store, &[], &["pull", &missing, "--insecure"]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("not found"), "{stderr}");
}
