//! `scripts/dist.sh` end to end: a distribution of the host and three plugin variants (the
//! pure-Rust engine, the example plugin and the llama.cpp build of this target directory,
//! taken with `--prebuilt` so nothing is compiled again), installed into fresh
//! directories twice: the tarballs unpacked into a prefix, and the .debs unpacked with
//! `dpkg -x` into a root (no root rights needed). In each, the installed `bin/corral` runs
//! with a clean environment (no plugin path, HOME and XDG pointing at empty temporary
//! directories), lists and ranks the three plugins from `../lib/corral/backends` beside
//! itself, explains the choice, and runs a chat on the chosen one.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use corral_e2e::{corral_bin, profile_dir, run};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repository root").to_path_buf()
}

/// Whether `tool` is on PATH.
fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success())
}

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let t = std::time::Instant::now();
    let r = f();
    eprintln!("TIMING {what}: {:.1}s", t.elapsed().as_secs_f64());
    r
}

/// Runs `scripts/dist.sh ARGS --out OUT --fast`; the packages directory.
fn dist(out: &Path, args: &[&str]) -> PathBuf {
    let mut c = Command::new("bash");
    c.arg(repo().join("scripts/dist.sh")).args(args).arg("--out").arg(out).arg("--fast");
    let (o, stdout, stderr) = run(c);
    assert!(o.status.success(), "dist.sh {args:?} failed:\n{stdout}\n{stderr}");
    eprintln!("{stderr}");
    out.join("packages")
}

/// The package files in `dir` whose names start with `prefix` and end with `suffix`.
fn packages(dir: &Path, prefix: &str, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("packages dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with(prefix) && f.ends_with(suffix))
        })
        .collect();
    v.sort();
    v
}

/// An installed `corral` with a clean environment: nothing of the user's, nothing of the
/// test harness's plugin settings, a store and a home of its own.
fn installed(bin: &Path, home: &Path) -> Command {
    let mut c = Command::new(bin);
    c.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_DATA_HOME", home.join(".local/share"))
        .env("CORRAL_MODELS", home.join("models"))
        // Nothing listens there: `run` works in-process, never on a server of the user's.
        .env("CORRAL_HOST", "127.0.0.1:9")
        .env("CORRAL_LOG", "info");
    c
}

/// Checks an installed prefix: `corral backends` lists and ranks the three plugins from
/// `<prefix>/lib/corral/backends` and says why; a chat runs on the chosen one.
fn check_installed(prefix: &Path, home: &Path, llama_variant: &str) {
    let bin = prefix.join("bin/corral");
    let backends_dir = prefix.join("lib/corral/backends");
    std::fs::create_dir_all(home).unwrap();

    let mut c = installed(&bin, home);
    c.arg("backends");
    let (o, text, stderr) = run(c);
    assert!(o.status.success(), "{text}\n{stderr}");
    eprintln!("{} backends:\n{text}", bin.display());

    let mut c = installed(&bin, home);
    c.args(["backends", "--json"]);
    let (o, stdout, stderr) = run(c);
    assert!(o.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("backends --json");
    let path: Vec<&str> =
        v["plugin_path"].as_array().unwrap().iter().filter_map(|p| p.as_str()).collect();
    assert!(path.contains(&backends_dir.to_str().unwrap()), "{path:?}");
    let plugins = v["plugins"].as_array().expect("plugins");
    let report = |name: &str| {
        plugins
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} is not listed: {v:#}"))
    };
    let (llama, cpu, example) = (report("llama-cpp"), report("cpu"), report("example"));
    assert_eq!(plugins.len(), 3, "{v:#}");
    for r in [llama, cpu, example] {
        assert!(r["manifest"].as_str().unwrap().starts_with(backends_dir.to_str().unwrap()), "{r}");
    }
    // Ranked for GGUF, each with its reason: on x86-64 the pure-Rust engine over
    // llama.cpp's CPU build (its SIMD kernels are faster; other models fall back to
    // llama.cpp per model), elsewhere llama.cpp over the portable pure-Rust kernels.
    assert_eq!(llama["variant"], llama_variant);
    let (first, second) = if cfg!(target_arch = "x86_64") { (cpu, llama) } else { (llama, cpu) };
    assert_eq!(first["status"], "chosen", "{first}");
    assert!(first["reason"].as_str().unwrap().contains("highest priority"), "{first}");
    assert!(first["priority"].as_i64() > second["priority"].as_i64(), "{v:#}");
    assert_eq!(second["status"], "available", "{second}");
    assert!(second["reason"].as_str().unwrap().contains("ranks higher"), "{second}");
    assert_eq!(example["status"], "available", "{example}");
    assert!(text.contains("chosen") && text.contains("highest priority"), "{text}");

    // The toy format is the example plugin's alone.
    let mut c = installed(&bin, home);
    c.args(["backends", "--json", "--format", "toy"]);
    let (o, stdout, stderr) = run(c);
    assert!(o.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let chosen: Vec<&str> = v["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["status"] == "chosen")
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(chosen, ["example"], "{v:#}");

    // A chat on the chosen engine, then on each engine by name.
    let model = home.join("tiny.gguf");
    if !model.is_file() {
        let mut c = installed(&bin, home);
        c.args(["model", "generate"]).arg(&model).args(["--shape", "tiny", "--type", "q8_0"]);
        let (o, stdout, stderr) = run(c);
        assert!(o.status.success(), "{stdout}\n{stderr}");
    }
    let llama_id = format!("llama-cpp:{llama_variant}");
    let chosen = if cfg!(target_arch = "x86_64") { "cpu:cpu" } else { llama_id.as_str() };
    for (backend, id) in
        [(None, chosen), (Some("cpu"), "cpu:cpu"), (Some("llama-cpp"), llama_id.as_str())]
    {
        let mut c = installed(&bin, home);
        c.arg("run").arg(&model).arg("Why is the sky blue?");
        c.args(["--temperature", "0", "--num-predict", "8"]);
        if let Some(b) = backend {
            c.args(["--backend", b]);
        }
        let (o, stdout, stderr) = timed(&format!("installed run on {id}"), || run(c));
        assert!(o.status.success(), "{stdout}\n{stderr}");
        assert!(!stdout.trim().is_empty(), "no answer:\n{stderr}");
        assert!(stderr.contains(&format!("backend {id}")), "not run on {id}:\n{stderr}");
    }
}

#[test]
fn a_distribution_installs_anywhere_and_runs() {
    for tool in ["tar", "gzip", "dpkg-deb", "dpkg"] {
        if !have(tool) {
            eprintln!("skipped: {tool} is not installed (scripts/install-deps.sh installs it)");
            return;
        }
    }
    let profile = profile_dir();
    corral_bin();
    let dev_manifest = profile.join("llama-cpp.corral-plugin.toml");
    assert!(
        dev_manifest.is_file(),
        "{} is missing: run `cargo build --workspace` before the tests",
        dev_manifest.display()
    );
    let llama_variant = std::fs::read_to_string(&dev_manifest)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("variant = ").map(|v| v.trim_matches('"').to_string()))
        .expect("the dev manifest names its variant");

    let tmp = tempfile::tempdir().unwrap();
    let pkgs = timed("dist.sh --prebuilt", || {
        dist(
            &tmp.path().join("out"),
            &["--prebuilt", profile.to_str().unwrap(), "--variants", "cpu-rust,example,llama-cpp"],
        )
    });
    let llama_pkg = format!("corral-backend-llama-cpp-{llama_variant}");
    for name in ["corral", "corral-backend-cpu-cpu", "corral-backend-example-cpu", &llama_pkg] {
        assert_eq!(packages(&pkgs, &format!("{name}-0."), ".tar.gz").len(), 1, "{name} tarball");
        assert_eq!(packages(&pkgs, &format!("{name}_"), ".deb").len(), 1, "{name} .deb");
    }
    assert_eq!(packages(&pkgs, "", ".deb").len(), 4);
    let sums = std::fs::read_to_string(pkgs.join("SHA256SUMS")).unwrap();
    assert_eq!(sums.lines().count(), 8, "{sums}");

    // 1. The tarballs, unpacked into a fresh prefix (one piece at a time, as a user would).
    let prefix = tmp.path().join("opt/corral");
    std::fs::create_dir_all(&prefix).unwrap();
    for t in packages(&pkgs, "", ".tar.gz") {
        let status =
            Command::new("tar").arg("-xzf").arg(&t).arg("-C").arg(&prefix).status().unwrap();
        assert!(status.success(), "tar -xzf {}", t.display());
    }
    timed("installed prefix", || {
        check_installed(&prefix, &tmp.path().join("home1"), &llama_variant);
    });

    // 2. The .debs, unpacked into a temporary root: /usr/bin/corral and
    // /usr/lib/corral/backends/..., with their Debian dependencies.
    let root = tmp.path().join("root");
    for d in packages(&pkgs, "", ".deb") {
        let status = Command::new("dpkg").arg("-x").arg(&d).arg(&root).status().unwrap();
        assert!(status.success(), "dpkg -x {}", d.display());
        let depends = Command::new("dpkg-deb").arg("-f").arg(&d).arg("Depends").output().unwrap();
        let depends = String::from_utf8_lossy(&depends.stdout).into_owned();
        let name = d.file_name().unwrap().to_string_lossy().into_owned();
        assert!(depends.contains("libc6"), "{name}: {depends}");
        if name.starts_with("corral-backend-") {
            assert!(depends.starts_with("corral, "), "{name}: {depends}");
        }
        if name.starts_with("corral-backend-llama-cpp") {
            assert!(depends.contains("libstdc++6"), "{name}: {depends}");
        }
    }
    assert!(root.join("usr/bin/corral").is_file());
    timed("installed .debs", || {
        check_installed(&root.join("usr"), &tmp.path().join("home2"), &llama_variant);
    });
}

/// The GPU variants' packages depend on their runtimes: the Vulkan loader, the CUDA
/// driver's library (cudart and cuBLAS are linked into the plugin). Packaged here from stand-ins (the example library under the llama.cpp
/// variants' manifests, in build-variant.sh's layout), since building them takes a
/// toolkit and many minutes; `--no-host` packages plugins alone.
#[test]
fn gpu_variant_packages_depend_on_their_runtimes() {
    if !have("dpkg-deb") {
        eprintln!("skipped: dpkg-deb is not installed (scripts/install-deps.sh installs it)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let built = tmp.path().join("built");
    let example = profile_dir().join("libcorral_plugin_example.so");
    assert!(example.is_file(), "{} is missing: run `cargo build --workspace`", example.display());
    for variant in ["vulkan", "cuda12", "cuda13"] {
        let dir = built.join(format!("llama-cpp-{variant}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(
            repo().join(format!("backends/llama-cpp/manifests/llama-cpp-{variant}.toml")),
            dir.join("manifest.toml"),
        )
        .unwrap();
        std::fs::copy(&example, dir.join("libcorral_backend_llama_cpp.so")).unwrap();
    }
    let pkgs = dist(
        &tmp.path().join("out"),
        &[
            "--prebuilt",
            built.to_str().unwrap(),
            "--no-host",
            "--no-strip",
            "--variants",
            "llama-cpp:vulkan,llama-cpp:cuda12,llama-cpp:cuda13",
        ],
    );
    assert!(packages(&pkgs, "corral", "").iter().all(|p| {
        let f = p.file_name().unwrap().to_string_lossy();
        f.starts_with("corral-backend-llama-cpp-")
    }));
    let depends = |variant: &str| {
        let deb = packages(&pkgs, &format!("corral-backend-llama-cpp-{variant}_"), ".deb");
        assert_eq!(deb.len(), 1, "{variant}: {deb:?}");
        let o = Command::new("dpkg-deb").arg("-f").arg(&deb[0]).arg("Depends").output().unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let vulkan = depends("vulkan");
    assert!(vulkan.starts_with("corral, libvulkan1"), "{vulkan}");
    // The CUDA runtime and cuBLAS are linked in; the driver's libcuda.so.1 is not.
    let cuda = depends("cuda12");
    assert!(cuda.starts_with("corral, libcuda1 (>= 525.60) | libcuda-12.0-1"), "{cuda}");
    // The CUDA 13 build links cuBLAS as a shared library no Debian package provides; the
    // description says where it may come from.
    let cuda13 = depends("cuda13");
    assert!(cuda13.starts_with("corral, libcuda1 (>= 580.65) | libcuda-13.0-1"), "{cuda13}");
}
