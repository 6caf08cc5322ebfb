//! Plugin loading, choice and every way a plugin can be broken: each ends with a clear
//! message, and the host keeps running (it lists the rest, or falls back).

use std::path::Path;

use corral_e2e::*;

fn example_lib() -> std::path::PathBuf {
    plugin_lib("libcorral_plugin_example.so")
}

fn backends_json(dirs: &[&Path], extra: &[&str]) -> serde_json::Value {
    let mut c = corral(dirs);
    c.args(["backends", "--json"]).args(extra);
    let (out, stdout, stderr) = run(c);
    assert!(out.status.success(), "corral backends failed: {stderr}");
    serde_json::from_str(&stdout).expect("backends --json prints JSON")
}

fn report<'a>(v: &'a serde_json::Value, variant: &str) -> &'a serde_json::Value {
    v["plugins"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["variant"] == variant))
        .unwrap_or_else(|| panic!("no plugin with variant {variant} in {v:#}"))
}

#[test]
fn example_plugin_is_listed_and_chosen() {
    let dir = tempfile::tempdir().unwrap();
    plugin_dir(
        dir.path(),
        "example",
        &example_manifest("cpu", ABI, "libexample.so"),
        Some(&example_lib()),
    );
    let v = backends_json(&[dir.path()], &[]);
    let r = report(&v, "cpu");
    assert_eq!(r["status"], "chosen", "{v:#}");
    assert_eq!(r["abi"], ABI);
    assert!(r["engine"].as_str().unwrap().contains("example toy engine"), "{r}");
}

#[test]
fn broken_plugins_are_each_explained_and_the_good_one_still_loads() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A good plugin, so the host has something to choose.
    plugin_dir(d, "good", &example_manifest("cpu", ABI, "libexample.so"), Some(&example_lib()));
    // A file that is not a shared library.
    let not_lib = d.join("notlib.so");
    std::fs::write(&not_lib, "this is text, not ELF").unwrap();
    plugin_dir(d, "notlib", &example_manifest("notlib", ABI, "libnotlib.so"), Some(&not_lib));
    // A shared library that is not a corral plugin.
    let plain = cc_shared(d, "plain", "int answer(void) { return 42; }\n", &[]);
    if let Some(plain) = &plain {
        plugin_dir(d, "plain", &example_manifest("plain", ABI, "libplain.so"), Some(plain));
    } else {
        eprintln!("skipping the not-a-plugin case: no C compiler (cc) on this machine");
    }
    // A plugin built against another ABI major (the exported major patched to 2).
    let abi2 = d.join("abi2.so");
    patch_abi_major(&example_lib(), &abi2, 2);
    plugin_dir(d, "abi2", &example_manifest("abi2", ABI, "libabi2.so"), Some(&abi2));
    // A manifest that declares another ABI.
    plugin_dir(
        d,
        "manifest-abi",
        &example_manifest("manifestabi", "2.0", "libexample.so"),
        Some(&example_lib()),
    );
    // A manifest that does not parse.
    plugin_dir(d, "garbled", "name = \"example\"\nvariant = [oops\n", None);
    // A manifest naming a library that is not there.
    plugin_dir(d, "nolib", &example_manifest("nolib", ABI, "libmissing-plugin.so"), None);
    // A plugin whose library needs a shared object the machine lacks.
    let needs_missing =
        cc_shared(d, "gone", "int gone(void) { return 1; }\n", &[]).and_then(|_| {
            let lib = cc_shared(
                d,
                "needy",
                "int gone(void);\nint needy(void) { return gone(); }\n",
                &["-lgone"],
            );
            std::fs::remove_file(d.join("libgone.so")).ok();
            lib
        });
    if let Some(lib) = &needs_missing {
        plugin_dir(d, "needy", &example_manifest("needy", ABI, "libneedy.so"), Some(lib));
    }

    let v = backends_json(&[d], &[]);
    assert_eq!(report(&v, "cpu")["status"], "chosen", "{v:#}");
    let reason = |variant: &str| {
        let r = report(&v, variant);
        assert_eq!(r["status"], "unavailable", "{r}");
        r["reason"].as_str().unwrap().to_string()
    };
    // Unavailable plugins are only opened when ranked above the chosen one; force each.
    let forced = |variant: &str| {
        let mut c = corral(&[d]);
        c.args(["backends", "--json", "--backend", variant]);
        let (out, stdout, stderr) = run(c);
        assert!(out.status.success(), "{stderr}");
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        report(&v, variant)["reason"].as_str().unwrap().to_string()
    };
    let r = forced("notlib");
    assert!(r.contains("is not a shared library"), "{r}");
    if plain.is_some() {
        let r = forced("plain");
        assert!(r.contains("not a corral plugin"), "{r}");
    }
    let r = forced("abi2");
    assert!(r.contains("built for corral plugin ABI 2.x") && r.contains("speaks ABI 1."), "{r}");
    let r = reason("manifestabi");
    assert!(r.contains("built for ABI 2.0") && r.contains("ABI 1."), "{r}");
    let garbled = v["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str().unwrap().contains("garbled"))
        .unwrap();
    assert!(
        garbled["reason"].as_str().unwrap().contains("does not parse")
            && garbled["reason"].as_str().unwrap().contains("line 2"),
        "{garbled}"
    );
    let r = reason("nolib");
    assert!(r.contains("libmissing-plugin.so does not exist"), "{r}");
    if needs_missing.is_some() {
        let r = forced("needy");
        assert!(
            r.contains("needs a shared library this machine lacks") && r.contains("libgone.so"),
            "{r}"
        );
    }
}

#[test]
fn init_error_falls_back_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    plugin_dir(
        dir.path(),
        "a",
        &example_manifest("cpu", ABI, "libexample.so"),
        Some(&example_lib()),
    );
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, "[backends.example]\nfail_init = true\n").unwrap();
    let mut c = corral(&[dir.path()]);
    c.arg("--config").arg(&cfg).args(["backends", "--json"]);
    let (out, stdout, stderr) = run(c);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let r = report(&v, "cpu");
    assert_eq!(r["status"], "unavailable");
    assert!(
        r["reason"].as_str().unwrap().contains("failed to initialise")
            && r["reason"].as_str().unwrap().contains("fail_init"),
        "{r}"
    );
}

#[test]
fn unknown_backend_fails_at_once_listing_what_is_installed() {
    let dir = tempfile::tempdir().unwrap();
    plugin_dir(
        dir.path(),
        "a",
        &example_manifest("cpu", ABI, "libexample.so"),
        Some(&example_lib()),
    );
    let mut c = corral(&[dir.path()]);
    c.args(["serve", "--backend", "nosuch", "--host", "127.0.0.1:0"]);
    let (out, _, stderr) = run(c);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("no installed backend is called \"nosuch\"")
            && stderr.contains("example:cpu"),
        "{stderr}"
    );
}

#[test]
fn config_syntax_error_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, "backend = \"auto\"\n[server]\nmax_queue = \"lots\"\n").unwrap();
    let mut c = corral(&[]);
    c.arg("--config").arg(&cfg).arg("backends");
    let (out, _, stderr) = run(c);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&cfg.display().to_string())
            && stderr.contains("line 3")
            && stderr.contains("max_queue"),
        "{stderr}"
    );
}

#[test]
fn panic_in_decode_is_an_error_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    plugin_dir(
        dir.path(),
        "a",
        &example_manifest("cpu", ABI, "libexample.so"),
        Some(&example_lib()),
    );
    let cfg = dir.path().join("config.toml");
    // Token 104 is the byte 'h'.
    std::fs::write(&cfg, "[backends.example]\npanic_on_token = 104\n").unwrap();
    let model = dir.path().join("model.toy");
    std::fs::write(&model, "toy weights").unwrap();
    let mut c = corral(&[dir.path()]);
    c.arg("--config")
        .arg(&cfg)
        .args(["run", "--format", "toy", "--temperature", "0", "--raw"])
        .arg(&model)
        .arg("hello");
    let (out, _, stderr) = run(c);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("plugin panicked in decode") && stderr.contains("panic_on_token"),
        "{stderr}"
    );
}

#[test]
fn conformance_suite_passes_on_the_example_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let p = plugin_dir(
        dir.path(),
        "a",
        &example_manifest("cpu", ABI, "libexample.so"),
        Some(&example_lib()),
    );
    let mut c = corral(&[]);
    c.args(["plugin", "check"]).arg(&p);
    let (out, stdout, stderr) = run(c);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("11 passed, 0 failed"), "{stdout}");
}

/// A plugin whose manifest needs a Vulkan device is chosen when one exists (Mesa's
/// lavapipe counts) and asked for, and skipped with the reason when the machine has none,
/// falling back to the next candidate.
#[test]
fn vulkan_requirement_is_matched_against_the_probe() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    plugin_dir(d, "cpu", &example_manifest("cpu", ABI, "libexample.so"), Some(&example_lib()));
    let vk =
        example_manifest("vulkan", ABI, "libexample.so") + "[requires]\ngpu_api = \"vulkan\"\n";
    plugin_dir(d, "vulkan", &vk, Some(&example_lib()));

    // No Vulkan driver visible: the vulkan variant is unavailable, cpu is chosen.
    let mut c = corral(&[d]);
    c.env("VK_DRIVER_FILES", "/nonexistent/icd.json")
        .env("VK_ICD_FILENAMES", "/nonexistent/icd.json")
        .args(["backends", "--json", "--backend", "vulkan"]);
    let (out, stdout, stderr) = run(c);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report(&v, "cpu")["status"], "chosen", "{v:#}");
    let r = report(&v, "vulkan");
    assert_eq!(r["status"], "unavailable");
    assert!(r["reason"].as_str().unwrap().contains("Vulkan"), "{r}");

    // With the machine's own Vulkan devices (lavapipe on a CI machine), it is chosen.
    let mut c = corral(&[]);
    c.args(["probe", "--json"]);
    let (_, probe, _) = run(c);
    let has_vulkan = probe.contains("\"vulkan\"") && probe.contains("llvmpipe")
        || probe.contains("\"source\": \"vulkan\"");
    if !has_vulkan {
        eprintln!(
            "SKIP (second half): this machine has no Vulkan device (install mesa-vulkan-drivers)"
        );
        return;
    }
    let v = backends_json(&[d], &["--backend", "vulkan"]);
    assert_eq!(report(&v, "vulkan")["status"], "chosen", "{v:#}");
    assert!(report(&v, "vulkan")["reason"].as_str().unwrap().contains("asked for"), "{v:#}");
}

/// Copies `from` (a directory of sources) to `to`, leaving out `target/`.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type().unwrap().is_dir() {
            if entry.file_name() != "target" {
                copy_tree(&src, &dst);
            }
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// The minors after 1.0, whose appended items are marked `// abi-1.N {` ... `// abi-1.N }`
/// in backend-api's sources.
const LATER_MINORS: [u32; 3] = [1, 2, 3];

/// The vtable method a fixture of ABI 1.4 (newer than this host) appends to `FfiModel`,
/// with a body so the guards need not implement it; this host never calls it.
const ABI_1_4_METHOD: &str = "    // abi-1.4 {\n    /// A call of a future minor.\n    fn future_call(&self) -> u32 {\n        14\n    }\n    // abi-1.4 }\n";

/// backend-api's sources as they were at ABI 1.`minor`: the `// abi-1.N {` ... `// abi-1.N }`
/// blocks of every later minor (the vtable methods they appended, and the guard code that
/// forwards them) removed and the version constants set to 1.`minor`. Author-side items
/// that are no part of a vtable stay (the `Capabilities` type and the required
/// `Model::capabilities`), so the example, which implements that method, still builds.
/// A minor past the current one keeps every block and appends [`ABI_1_4_METHOD`] to
/// `FfiModel` after its last block.
fn source_at_abi(src: &str, minor: u32) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in src.lines() {
        let t = line.trim_start();
        if LATER_MINORS.iter().any(|m| *m > minor && t.starts_with(&format!("// abi-1.{m} {{"))) {
            skipping = true;
        } else if LATER_MINORS
            .iter()
            .any(|m| *m > minor && t.starts_with(&format!("// abi-1.{m} }}")))
        {
            skipping = false;
        } else if !skipping {
            if t.starts_with("pub const ABI_MINOR: u32 =") {
                out.push_str(&format!("pub const ABI_MINOR: u32 = {minor};"));
            } else if t.starts_with("pub const ABI_VERSION: &str =") {
                out.push_str(&format!("pub const ABI_VERSION: &str = \"1.{minor}.0\";"));
            } else {
                out.push_str(line);
            }
            out.push('\n');
            if minor == 4 && t.starts_with("// abi-1.2 }") {
                out.push_str(ABI_1_4_METHOD);
            }
        }
    }
    assert!(!skipping, "an `// abi-1.N {{` block is not closed");
    out
}

/// Builds the example plugin against backend-api 1.`minor` (this tree's backend-api cut
/// back, or for 1.4 extended, by [`source_at_abi`]) in a workspace of its own; every
/// fixture shares one target directory, so the dependencies build once. The library's
/// path. Built once per test process and minor.
fn example_for_abi(minor: u32) -> std::path::PathBuf {
    static BUILT: std::sync::Mutex<Vec<(u32, std::path::PathBuf)>> =
        std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, p)) = built.iter().find(|(m, _)| *m == minor) {
        return p.clone();
    }
    let lib = build_example_for_abi(minor);
    built.push((minor, lib.clone()));
    lib
}

fn build_example_for_abi(minor: u32) -> std::path::PathBuf {
    let root = repo_root();
    let base = profile_dir().parent().unwrap().join("abi-fixtures");
    let tree = base.join(format!("src-1.{minor}"));
    let _ = std::fs::remove_dir_all(&tree);
    copy_tree(&root.join("backend-api"), &tree.join("backend-api"));
    copy_tree(&root.join("plugins/example"), &tree.join("plugins/example"));
    // The fixture builds the library only: no tests, dev-dependencies or workspace lints.
    let _ = std::fs::remove_dir_all(tree.join("plugins/example/tests"));
    for krate in ["backend-api", "plugins/example"] {
        let toml = tree.join(krate).join("Cargo.toml");
        let mut kept = String::new();
        let mut dropping = false;
        for line in std::fs::read_to_string(&toml).unwrap().lines() {
            if line.starts_with('[') {
                dropping = matches!(line.trim(), "[dev-dependencies]" | "[lints]");
            }
            if !dropping {
                kept.push_str(line);
                kept.push('\n');
            }
        }
        std::fs::write(&toml, kept).unwrap();
    }
    for file in ["ffi.rs", "plugin.rs", "lib.rs"] {
        let p = tree.join("backend-api/src").join(file);
        let changed = source_at_abi(&std::fs::read_to_string(&p).unwrap(), minor);
        let gone: &[&str] = match (file, minor) {
            ("ffi.rs", 0) => &[
                "fn new_context_per_sequence",
                "fn kv_shift",
                "fn capabilities",
                "fn lend_devices",
            ],
            ("ffi.rs", 1) => &["fn capabilities", "fn lend_devices"],
            ("ffi.rs" | "plugin.rs", 2) => &["fn lend_devices"],
            _ => &[],
        };
        for item in gone {
            assert!(!changed.contains(item), "{file} still has `{item}` at ABI 1.{minor}");
        }
        if file == "ffi.rs" && minor == 4 {
            assert!(changed.contains("fn future_call"), "the 1.4 method was not appended");
        }
        if file == "lib.rs" {
            assert!(changed.contains(&format!("pub const ABI_VERSION: &str = \"1.{minor}.0\";")));
        }
        std::fs::write(&p, changed).unwrap();
    }
    let toml = tree.join("backend-api/Cargo.toml");
    let t: String = std::fs::read_to_string(&toml)
        .unwrap()
        .lines()
        .map(|l| {
            if l.starts_with("version = ") {
                format!("version = \"1.{minor}.0\"\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&toml, t).unwrap();
    // A workspace of the two crates, with the root's versions of their dependencies.
    let root_toml = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let dep = |name: &str| {
        root_toml
            .lines()
            .find(|l| l.starts_with(&format!("{name} = ")))
            .unwrap_or_else(|| panic!("{name} is not in the root [workspace.dependencies]"))
            .to_string()
    };
    let ws = format!(
        "[workspace]\nresolver = \"3\"\nmembers = [\"backend-api\", \"plugins/example\"]\n\n\
         [workspace.package]\nedition = \"2024\"\nlicense = \"MIT OR Apache-2.0\"\n\n\
         [workspace.dependencies]\n{}\n{}\n{}\n{}\n",
        dep("abi_stable"),
        dep("log"),
        dep("serde"),
        dep("serde_json")
    );
    std::fs::write(tree.join("Cargo.toml"), ws).unwrap();
    std::fs::copy(root.join("Cargo.lock"), tree.join("Cargo.lock")).unwrap();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target = base.join("target");
    let out = std::process::Command::new(cargo)
        .args(["build", "--offline", "-p", "corral-plugin-example", "--manifest-path"])
        .arg(tree.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .env_remove("RUSTFLAGS")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The fixtures share a target directory: keep this one's library under its own name.
    let lib = base.join(format!("libexample-abi-1.{minor}.so"));
    std::fs::copy(target.join("debug/libcorral_plugin_example.so"), &lib).unwrap();
    lib
}

/// The text a greedy `corral run` of the toy engine gives with the plugin in `dir`.
fn toy_run(dir: &Path, model: &Path) -> String {
    let mut c = corral(&[dir]);
    c.args(["run", "--format", "toy", "--temperature", "0", "--raw", "--num-predict", "12"])
        .arg(model)
        .arg("hello");
    let (out, stdout, stderr) = run(c);
    assert!(out.status.success(), "corral run failed: {stderr}");
    assert!(!stdout.trim().is_empty(), "corral run printed nothing; stderr: {stderr}");
    stdout
}

/// Plugins really built against ABI 1.0 and 1.1 (before `new_context_per_sequence`,
/// `kv_shift` and `capabilities` were appended to the vtables), 1.2 (before
/// `lend_devices`) and 1.4 (a method this host does not know appended) load in this 1.3 host and work: `corral backends` chooses
/// each, the conformance suite passes (the host answers the calls an older plugin lacks:
/// a shared context for a per-sequence one, `Unsupported` for `kv_shift`, capabilities
/// derived), `corral run` gives the same text as the current build of the same engine,
/// and `corral serve` (engines in worker processes) answers `/api/generate` with it.
#[test]
fn plugins_of_older_and_newer_abi_minors_load_and_work() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.toy");
    std::fs::write(&model, "toy weights").unwrap();
    let current = dir.path().join("current");
    plugin_dir(&current, "ex", &example_manifest("cpu", ABI, "libex.so"), Some(&example_lib()));
    let expected = toy_run(&current, &model);

    for minor in [0, 1, 2, 4] {
        let lib = example_for_abi(minor);
        let abi = format!("1.{minor}");
        let plugins = dir.path().join(format!("abi-{abi}"));
        let p = plugin_dir(&plugins, "ex", &example_manifest("cpu", &abi, "libex.so"), Some(&lib));

        let v = backends_json(&[plugins.as_path()], &["--check"]);
        let r = report(&v, "cpu");
        assert_eq!(r["status"], "chosen", "ABI {abi}: {v:#}");

        let mut c = corral(&[]);
        c.args(["plugin", "check"]).arg(&p);
        let (out, stdout, stderr) = run(c);
        assert!(out.status.success(), "ABI {abi}: {stdout}\n{stderr}");
        assert!(stdout.contains(" 0 failed"), "ABI {abi}: {stdout}");
        // The calls a 1.0 plugin lacks are answered by the host: no context shift.
        let shift = stdout.lines().find(|l| l.contains("kv_shift")).unwrap_or_default();
        assert!(shift.contains("SKIP"), "ABI {abi}: {stdout}");
        if minor == 0 {
            assert!(shift.contains("built against corral-backend-api 1.0"), "{stdout}");
        }
        assert!(!stderr.contains("manifest says abi"), "ABI {abi}: {stderr}");

        assert_eq!(toy_run(&plugins, &model), expected, "ABI {abi}: another text");

        let server = Server::start(&[plugins.as_path()], &[], &[]);
        let body = serde_json::json!({
            "model": model.to_string_lossy(),
            "prompt": "hello",
            "raw": true,
            "stream": false,
            "options": {"temperature": 0, "num_predict": 12},
        });
        let resp = reqwest::blocking::Client::new()
            .post(format!("{}/api/generate", server.url))
            .json(&body)
            .send()
            .unwrap();
        let status = resp.status();
        let v: serde_json::Value = resp.json().unwrap();
        assert!(status.is_success(), "ABI {abi}: {status} {v}\n{}", server.log());
        assert_eq!(v["response"].as_str().unwrap_or_default(), expected.trim_end_matches('\n'));
    }
}

/// A manifest whose `abi` is not what the library was built for: the plugin loads (the
/// library's header decides), and the host says they disagree.
#[test]
fn a_manifest_abi_that_disagrees_with_the_library_is_reported() {
    let lib = example_for_abi(0);
    let dir = tempfile::tempdir().unwrap();
    let p = plugin_dir(dir.path(), "old", &example_manifest("cpu", ABI, "libold.so"), Some(&lib));
    let mut c = corral(&[]);
    c.args(["plugin", "check"]).arg(&p);
    let (out, stdout, stderr) = run(c);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "its manifest says abi = \"{ABI}\" but the library was built for ABI 1.0"
        )),
        "{stderr}"
    );
    let v = backends_json(&[dir.path()], &[]);
    let r = report(&v, "cpu");
    assert_eq!(r["status"], "chosen", "{v:#}");
    assert!(r["reason"].as_str().unwrap().contains("the library was built for ABI 1.0"), "{r}");
}

/// The default `corral backends` (no `--check`, nothing forced) opens every plugin it
/// lists as available in a worker process, and reports one whose library cannot be
/// loaded as unavailable with the reason; a `.toml` that looks like a manifest under
/// another name gets a warning.
#[test]
fn the_default_listing_reports_libraries_that_cannot_load() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    plugin_dir(d, "good", &example_manifest("cpu", ABI, "libexample.so"), Some(&example_lib()));
    let not_lib = d.join("notlib.so");
    std::fs::write(&not_lib, "this is text, not ELF").unwrap();
    plugin_dir(d, "notlib", &example_manifest("notlib", ABI, "libnotlib.so"), Some(&not_lib));
    let abi2 = d.join("abi2.so");
    patch_abi_major(&example_lib(), &abi2, 2);
    plugin_dir(d, "abi2", &example_manifest("abi2", ABI, "libabi2.so"), Some(&abi2));
    // A plugin whose manifest is misnamed: not read, but warned about.
    let misnamed = d.join("misnamed");
    std::fs::create_dir_all(&misnamed).unwrap();
    std::fs::write(misnamed.join("example.toml"), example_manifest("mis", ABI, "libx.so")).unwrap();

    let mut c = corral(&[d]);
    c.args(["backends", "--json"]);
    let (out, stdout, stderr) = run(c);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report(&v, "cpu")["status"], "chosen", "{v:#}");
    let r = report(&v, "notlib");
    assert_eq!(r["status"], "unavailable", "{r}");
    assert!(r["reason"].as_str().unwrap().contains("is not a shared library"), "{r}");
    let r = report(&v, "abi2");
    assert_eq!(r["status"], "unavailable", "{r}");
    assert!(r["reason"].as_str().unwrap().contains("built for corral plugin ABI 2.x"), "{r}");
    assert!(v["plugins"].as_array().unwrap().iter().all(|p| p["variant"] != "mis"), "{v:#}");
    assert!(
        stderr.contains("example.toml looks like a plugin manifest but is not read")
            && stderr.contains("manifest.toml"),
        "{stderr}"
    );
    assert!(v["warnings"].as_array().is_some_and(|w| w.len() == 1), "{v:#}");
}

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let t = std::time::Instant::now();
    let r = f();
    eprintln!("TIMING {what}: {:.1}s", t.elapsed().as_secs_f64());
    r
}

/// The newcomer's path of `plugins/example/README.md`: `corral plugin new` into a
/// directory outside the repository, `cargo build` there (offline: every dependency is in
/// the lock file `plugin new` writes and cargo's cache), the crate's own `cargo test`,
/// which runs the conformance suite's library (vendored) on the library it built, `corral plugin install` into a temporary HOME,
/// `corral backends` lists it from the default search path, `corral plugin check` passes
/// on the installed copy, `corral plugin remove` takes it away.
#[test]
fn a_new_plugin_builds_installs_and_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let krate = dir.path().join("my-engine");
    let user = |c: &mut std::process::Command| {
        c.env_remove("CORRAL_PLUGIN_PATH_ONLY").env("HOME", &home);
    };
    timed("plugin new", || {
        let mut c = corral(&[]);
        c.args(["plugin", "new", "my-engine", "--dir"]).arg(&krate);
        let (out, stdout, stderr) = run(c);
        assert!(
            out.status.success(),
            "{stdout}
{stderr}"
        );
    });
    let target = profile_dir().parent().unwrap().join("abi-fixtures/target");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    for args in [&["build", "--offline"][..], &["test", "--offline"][..]] {
        timed(&format!("cargo {}", args[0]), || {
            let out = std::process::Command::new(&cargo)
                .args(args)
                .args(["--", "--nocapture"].iter().filter(|_| args[0] == "test"))
                // From the crate's own directory, as its author runs it: no setting of
                // this repository's (.cargo/config.toml) applies.
                .current_dir(&krate)
                .env("CARGO_TARGET_DIR", &target)
                .env_remove("RUSTFLAGS")
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "cargo {args:?}: {stdout}
{}",
                String::from_utf8_lossy(&out.stderr)
            );
            // The crate's test ran the suite (vendored corral-plugin-host) on its library.
            if args[0] == "test" {
                assert!(
                    stdout.contains(" 0 failed") && stdout.contains("test result: ok. 1 passed"),
                    "{stdout}"
                );
            }
        });
    }
    let lib = target.join("debug/libmy_engine.so");
    assert!(target.join("debug/my-engine.corral-plugin.toml").is_file());
    timed("plugin install", || {
        let mut c = corral(&[]);
        user(&mut c);
        c.args(["plugin", "install"]).arg(&lib);
        let (out, stdout, stderr) = run(c);
        assert!(
            out.status.success(),
            "{stdout}
{stderr}"
        );
        assert!(stdout.contains(&format!("installed my-engine:cpu (ABI {ABI}")), "{stdout}");
    });
    let installed = home.join(".local/lib/corral/backends/my-engine-cpu");
    assert!(
        installed.join("manifest.toml").is_file() && installed.join("libmy_engine.so").is_file()
    );
    let v = timed("backends", || {
        let mut c = corral(&[]);
        user(&mut c);
        c.args(["backends", "--json", "--format", "toy", "--backend", "my-engine"]);
        let (out, stdout, stderr) = run(c);
        assert!(out.status.success(), "{stderr}");
        serde_json::from_str::<serde_json::Value>(&stdout).unwrap()
    });
    let r = v["plugins"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == "my-engine"))
        .unwrap_or_else(|| panic!("my-engine is not listed: {v:#}"));
    assert_eq!(r["status"], "chosen", "{r}");
    assert!(r["manifest"].as_str().unwrap().starts_with(&home.display().to_string()), "{r}");
    timed("plugin check", || {
        let mut c = corral(&[]);
        user(&mut c);
        c.args(["plugin", "check"]).arg(&installed);
        let (out, stdout, stderr) = run(c);
        assert!(
            out.status.success(),
            "{stdout}
{stderr}"
        );
        assert!(stdout.contains(" 0 failed"), "{stdout}");
    });
    // By name, as `--backend` names it; a name nothing carries is one clear error.
    let mut c = corral(&[]);
    user(&mut c);
    c.args(["plugin", "check", "my-engine"]);
    let (out, stdout, stderr) = run(c);
    assert!(out.status.success() && stdout.contains(" 0 failed"), "{stdout}\n{stderr}");
    let mut c = corral(&[]);
    user(&mut c);
    c.args(["plugin", "check", "no-such-engine"]);
    let (out, _, stderr) = run(c);
    assert!(
        !out.status.success() && stderr.contains("neither a path nor a plugin on the plugin path"),
        "{stderr}"
    );
    let mut c = corral(&[]);
    user(&mut c);
    c.args(["plugin", "remove", "my-engine"]);
    let (out, stdout, stderr) = run(c);
    assert!(
        out.status.success() && stdout.contains("removed"),
        "{stdout}
{stderr}"
    );
    assert!(!installed.exists());
    let mut c = corral(&[]);
    user(&mut c);
    c.args(["plugin", "remove", "my-engine"]);
    let (out, _, stderr) = run(c);
    assert!(!out.status.success() && stderr.contains("no plugin called"), "{stderr}");
}
