//! `corral plugin check` on plugins that crash, hang, break the engine contract or are
//! not plugins at all: the suite runs the plugin in an engine worker, so each of these
//! ends in a FAIL line that names the check that was running and what happened, then
//! the summary (or valid JSON), never in a dead or hanging checker. And `plugin remove`
//! with a selector several installed plugins match.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use corral_e2e::*;

/// The example plugin in `dir`, and a toy model whose lines are `faults`.
fn example_with_model(dir: &Path, faults: &str) -> (PathBuf, PathBuf) {
    let plugin = plugin_dir(
        dir,
        "example",
        &example_manifest("cpu", ABI, "libexample.so"),
        Some(&plugin_lib("libcorral_plugin_example.so")),
    );
    let model = dir.join("model.toy");
    std::fs::write(&model, format!("toy weights\n{faults}\n")).unwrap();
    (plugin, model)
}

/// `corral plugin check PLUGIN --model MODEL [extra]`: status code, stdout, stderr.
fn check(plugin: &Path, model: Option<&Path>, env: &[(&str, &str)], extra: &[&str]) -> Checked {
    let mut c = corral(&[]);
    c.args(["plugin", "check"]).arg(plugin).args(extra);
    if let Some(m) = model {
        c.arg("--model").arg(m);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    let t = Instant::now();
    let (out, stdout, stderr) = run(c);
    Checked { code: out.status.code(), stdout, stderr, took: t.elapsed() }
}

struct Checked {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Checked {
    /// The line of check `name`, which must have `tag` (PASS, FAIL, SKIP, WARN).
    fn line(&self, tag: &str, name: &str) -> &str {
        self.stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{tag} {name} ")))
            .unwrap_or_else(|| panic!("no {tag} {name} line:\n{}\n{}", self.stdout, self.stderr))
    }
}

#[test]
fn a_plugin_that_crashes_or_hangs_fails_the_check_it_was_in() {
    let dir = tempfile::tempdir().unwrap();
    // Token 79 ('O') is in the second prompt only, which batch_equals_sequential is the
    // first check to decode.
    for (fault, env, says) in [
        ("segv", vec![], "killed by SIGSEGV"),
        ("abort", vec![], "killed by SIGABRT"),
        ("hang", vec![("CORRAL_ENGINE_TIMEOUT", "2s")], "hung: no answer within 2 s"),
    ] {
        let d = dir.path().join(fault);
        let (plugin, model) = example_with_model(&d, &format!("on_token=79:{fault}"));
        let r = check(&plugin, Some(&model), &env, &[]);
        assert_eq!(r.code, Some(1), "{fault}: {}\n{}", r.stdout, r.stderr);
        let line = r.line("FAIL", "batch_equals_sequential");
        assert!(line.contains(says) && line.contains("the engine worker example:cpu"), "{line}");
        // The checks before it passed; those after it were not run.
        r.line("PASS", "determinism");
        assert!(r.line("SKIP", "embeddings").contains("died in batch_equals_sequential"));
        assert!(r.stdout.contains("3 passed, 1 failed, 8 skipped"), "{}", r.stdout);
        assert!(r.stderr.contains("failed 1 conformance check(s)"), "{}", r.stderr);
        assert!(r.took < Duration::from_secs(30), "{fault} took {:?}", r.took);
    }
    // A crash in the model's load, with --json: valid JSON all the same.
    let d = dir.path().join("load");
    let (plugin, model) = example_with_model(&d, "on_load=abort");
    let r = check(&plugin, Some(&model), &[], &["--json"]);
    assert_eq!(r.code, Some(1), "{}\n{}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("--json prints JSON");
    let results = v.as_array().expect("an array of checks");
    assert_eq!(results[0]["name"], "load_model", "{v:#}");
    assert_eq!(results[0]["outcome"], "fail", "{v:#}");
    assert!(results[0]["detail"].as_str().unwrap().contains("SIGABRT"), "{v:#}");
    assert!(results[1..].iter().all(|c| c["outcome"] == "skip"), "{v:#}");
}

#[test]
fn a_truncated_library_or_a_fake_plugin_fails_init_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let lib = std::fs::read(plugin_lib("libcorral_plugin_example.so")).unwrap();
    let cut = dir.path().join("libcut.so");
    std::fs::write(&cut, &lib[..lib.len().min(100_000)]).unwrap();
    let plugin =
        plugin_dir(dir.path(), "cut", &example_manifest("cpu", ABI, "libexample.so"), Some(&cut));
    let r = check(&plugin, None, &[], &[]);
    assert_eq!(r.code, Some(1), "{}\n{}", r.stdout, r.stderr);
    let line = r.line("FAIL", "init");
    assert!(line.contains("example:cpu"), "{line}");
    assert!(r.stdout.contains("0 passed, 1 failed, 12 skipped"), "{}", r.stdout);
    // A library that exports the ABI symbol but was not built with export_plugin!.
    let Some(fake) =
        cc_shared(dir.path(), "fakeabi", "const unsigned int corral_plugin_abi_major = 1;\n", &[])
    else {
        eprintln!("skipping the fake-ABI case: no C compiler (cc) on this machine");
        return;
    };
    let plugin =
        plugin_dir(dir.path(), "fake", &example_manifest("cpu", ABI, "libexample.so"), Some(&fake));
    let r = check(&plugin, None, &[], &[]);
    let line = r.line("FAIL", "init");
    assert!(
        line.contains("not a corral plugin library (no abi_stable root module)")
            && !line.contains("layout check"),
        "{line}"
    );
}

#[test]
fn nan_logits_fail_a_check_named_for_them_and_panics_print_no_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let (plugin, model) = example_with_model(dir.path(), "on_decode=1:nan");
    let r = check(&plugin, Some(&model), &[], &[]);
    assert_eq!(r.code, Some(1), "{}\n{}", r.stdout, r.stderr);
    let line = r.line("FAIL", "logits_finite");
    assert!(line.contains("NaN") && line.contains("not finite"), "{line}");
    assert!(!r.stdout.contains("different logits"), "{}", r.stdout);
    // A plugin that panics in decode (the toy engine's panic_on_token), with backtraces
    // asked for: the check fails in one line and stderr holds no backtrace.
    let d = dir.path().join("panic");
    let (plugin, model) = example_with_model(&d, "");
    let cfg = d.join("config.toml");
    std::fs::write(&cfg, "[backends.example]\npanic_on_token = 79\n").unwrap();
    let cfg = cfg.to_string_lossy().into_owned();
    let r = check(&plugin, Some(&model), &[("RUST_BACKTRACE", "1")], &["--config", &cfg]);
    let line = r.line("FAIL", "batch_equals_sequential");
    assert!(line.contains("panic"), "{line}");
    assert!(!r.stderr.contains("stack backtrace"), "{}", r.stderr);
    assert!(r.stderr.lines().count() <= 3, "{}", r.stderr);
}

#[test]
fn the_example_plugin_passes_in_its_worker_and_lines_come_as_checks_end() {
    let dir = tempfile::tempdir().unwrap();
    let (plugin, model) = example_with_model(dir.path(), "");
    let r = check(&plugin, Some(&model), &[], &[]);
    assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.starts_with("conformance of example:cpu on "), "{}", r.stdout);
    assert!(r.stdout.contains("11 passed, 0 failed, 1 skipped"), "{}", r.stdout);
    assert!(!r.stdout.contains("FAIL") && !r.stdout.contains("WARN"), "{}", r.stdout);
}

#[test]
fn plugin_remove_of_a_shared_variant_removes_nothing_and_a_name_wins() {
    let home = tempfile::tempdir().unwrap();
    let root = home.path().join(".local/lib/corral/backends");
    let install = |name: &str, variant: &str| {
        let manifest = format!(
            "name = \"{name}\"\nvariant = \"{variant}\"\nversion = \"0.1.0\"\nabi = \"{ABI}\"\n\
             library = \"lib{name}.so\"\nformats = [\"toy\"]\n"
        );
        plugin_dir(&root, &format!("{name}-{variant}"), &manifest, None)
    };
    let example = install("example", "cpu");
    let hostile = install("hostile", "cpu");
    let remove = |selector: &str| {
        let mut c = corral(&[]);
        c.env("HOME", home.path()).args(["plugin", "remove", selector]);
        run(c)
    };
    let (out, _, stderr) = remove("cpu");
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("example:cpu, hostile:cpu") && stderr.contains("nothing removed"));
    assert!(example.exists() && hostile.exists());
    // The in-tree plugin's name: the name wins over the variant the others carry.
    let cpu = install("cpu", "avx2");
    let (out, stdout, stderr) = remove("cpu");
    assert!(out.status.success() && stdout.contains("cpu-avx2"), "{stdout}\n{stderr}");
    assert!(!cpu.exists() && example.exists() && hostile.exists());
    let (out, stdout, _) = remove("hostile:cpu");
    assert!(out.status.success() && stdout.contains("hostile-cpu") && !hostile.exists());
    assert!(example.exists());
}
