//! `corral run` as a client of a running `corral serve`, the way `ollama run` works, and
//! the same greedy text as the in-process path.

use corral_e2e::*;

#[test]
fn run_talks_to_a_running_server_and_agrees_with_local_run() {
    let dir = tempfile::tempdir().unwrap();
    let Some(plugin) = llama_cpp_plugin_dir(dir.path()) else { return };
    let model = dir.path().join("tiny.gguf");
    generate_model(&model, "tiny", "f32");
    let args = ["--raw", "--temperature", "0", "--repeat-penalty", "1", "--num-predict", "16"];

    let mut c = corral(&[&plugin]);
    c.arg("run").args(args).arg("--local").arg(&model).arg("Hello there");
    let (out, local, stderr) = run(c);
    assert!(out.status.success(), "{stderr}");

    // The server's own store, so the upload below happens on every run.
    let store = dir.path().join("server-store").to_string_lossy().into_owned();
    let server = Server::start(&[&plugin], &[("CORRAL_MODELS", store.as_str())], &[]);
    let host = server.url.trim_start_matches("http://").to_string();
    let mut c = corral(&[]);
    c.env("CORRAL_HOST", &host)
        .arg("run")
        .args(args)
        .arg("--verbose")
        .arg(&model)
        .arg("Hello there");
    let (out, remote, stderr) = run(c);
    assert!(out.status.success(), "{stderr}\nserver log:\n{}", server.log());
    assert_eq!(remote, local, "the server's greedy text differs from the in-process run");
    assert!(stderr.contains("eval count:"), "{stderr}");
    assert!(stderr.contains("uploaded"), "{stderr}");

    // The file was uploaded and created as `tiny:<digest>`; it stays loaded in the
    // server: `corral ps` lists it.
    let mut c = corral(&[]);
    c.env("CORRAL_HOST", &host).arg("ps");
    let (out, ps, stderr) = run(c);
    assert!(out.status.success(), "{stderr}");
    assert!(ps.contains("tiny:"), "{ps}");
}
