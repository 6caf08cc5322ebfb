//! Harness for corral's end-to-end tests: finds the built `corral` binary and plugins in
//! the cargo target directory, runs commands, and builds broken plugin fixtures.
//!
//! The tests need `cargo build --workspace` to have run first (the README's test command
//! does it), because cargo does not build other packages' binaries and cdylibs for a
//! test crate.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

/// `target/<profile>` of the build under test.
pub fn profile_dir() -> PathBuf {
    // This test binary lives in target/<profile>/deps/.
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent().and_then(Path::parent).expect("target/<profile>").to_path_buf()
}

/// The `corral` binary, which must have been built.
pub fn corral_bin() -> PathBuf {
    let p = profile_dir().join("corral");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --workspace` before the tests",
        p.display()
    );
    p
}

/// A built plugin library in the target directory, e.g. `libcorral_plugin_example.so`.
pub fn plugin_lib(file: &str) -> PathBuf {
    let p = profile_dir().join(file);
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --workspace` before the tests",
        p.display()
    );
    p
}

/// A `corral` command that sees only the plugins in `plugin_dirs` and no user config.
pub fn corral(plugin_dirs: &[&Path]) -> Command {
    let mut c = Command::new(corral_bin());
    c.env_remove("CORRAL_PLUGIN_PATH")
        .env_remove("CORRAL_BACKEND")
        .env_remove("CORRAL_CONFIG")
        .env("CORRAL_PLUGIN_PATH_ONLY", "1")
        .env("XDG_CONFIG_HOME", "/nonexistent-corral-test")
        .env("HOME", "/nonexistent-corral-test")
        .env("CORRAL_LOG", "warn")
        // `corral run` talks to a server at CORRAL_HOST when one answers; point it at a
        // port nothing listens on so tests run in-process unless they start a server.
        .env("CORRAL_HOST", "127.0.0.1:9");
    for d in plugin_dirs {
        c.arg("--plugin-dir").arg(d);
    }
    c
}

/// Runs a command, returning its output with stdout and stderr as text.
pub fn run(mut cmd: Command) -> (Output, String, String) {
    let out = cmd.output().expect("run corral");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

/// Writes a plugin directory `<dir>/<name>/` holding `manifest.toml` and, when given,
/// a copy of `library` under the manifest's library name.
pub fn plugin_dir(dir: &Path, name: &str, manifest: &str, library: Option<&Path>) -> PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).expect("mkdir");
    std::fs::write(d.join("manifest.toml"), manifest).expect("write manifest");
    if let Some(lib) = library {
        let file = manifest
            .lines()
            .find_map(|l| l.strip_prefix("library = "))
            .map(|v| v.trim().trim_matches('"').to_string())
            .expect("manifest names a library");
        std::fs::copy(lib, d.join(file)).expect("copy library");
    }
    d
}

/// The ABI (`MAJOR.MINOR`) this tree's plugins are built for, as their manifests say it:
/// corral-backend-api's `ABI_MAJOR.ABI_MINOR`.
pub const ABI: &str = "1.3";

/// A manifest for the example plugin under another identity or ABI.
pub fn example_manifest(variant: &str, abi: &str, library: &str) -> String {
    format!(
        "name = \"example\"\nvariant = \"{variant}\"\nversion = \"0.1.0\"\nabi = \"{abi}\"\nlibrary = \"{library}\"\nformats = [\"toy\"]\npriority = 0\n"
    )
}

/// Compiles a C shared library with the system C compiler; `None` when there is none.
pub fn cc_shared(dir: &Path, name: &str, source: &str, link: &[&str]) -> Option<PathBuf> {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).ok()?;
    let out = dir.join(format!("lib{name}.so"));
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&out)
        .arg(&src)
        .arg(format!("-L{}", dir.display()))
        .args(link)
        .status()
        .ok()?;
    status.success().then_some(out)
}

/// Copies a plugin library and rewrites its exported `corral_plugin_abi_major` static,
/// giving a library exactly like one built against another ABI major.
pub fn patch_abi_major(library: &Path, out: &Path, major: u32) {
    use object::{Object, ObjectSection, ObjectSymbol};
    let mut bytes = std::fs::read(library).expect("read library");
    let offset = {
        let file = object::File::parse(&*bytes).expect("parse ELF");
        let sym = file
            .dynamic_symbols()
            .find(|s| s.name() == Ok("corral_plugin_abi_major"))
            .expect("library exports corral_plugin_abi_major");
        let section =
            file.section_by_index(sym.section_index().expect("symbol section")).expect("section");
        let (sec_off, _) = section.file_range().expect("section in file");
        (sec_off + (sym.address() - section.address())) as usize
    };
    bytes[offset..offset + 4].copy_from_slice(&major.to_le_bytes());
    std::fs::write(out, bytes).expect("write patched library");
}

/// A running `corral serve` on a free loopback port, stopped (SIGTERM, then kill) when
/// dropped. Its stderr is collected in a background thread.
pub struct Server {
    /// The child process.
    pub child: std::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Everything the server printed on stderr so far.
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
    _store: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts `corral serve --host 127.0.0.1:0` seeing only `plugin_dirs`, with extra
    /// environment variables and arguments, and waits for its `listening on` line.
    pub fn start(plugin_dirs: &[&Path], env: &[(&str, &str)], args: &[&str]) -> Server {
        use std::io::BufRead;
        let mut c = corral(plugin_dirs);
        c.args(["serve", "--host", "127.0.0.1:0"]).args(args);
        c.env("CORRAL_LOG", "info");
        // Tests name their generated model files by path: allow the temp directory (a
        // server takes only store names unless told otherwise).
        c.env("CORRAL_ALLOW_MODEL_PATHS", std::env::temp_dir());
        // A store of its own unless the test names one: a test never writes to the
        // store of the user running it.
        let own_store = (!env.iter().any(|(k, _)| *k == "CORRAL_MODELS"))
            .then(|| tempfile::tempdir().expect("a temporary store"));
        if let Some(d) = &own_store {
            c.env("CORRAL_MODELS", d.path());
        }
        for (k, v) in env {
            c.env(k, v);
        }
        c.stderr(std::process::Stdio::piped()).stdout(std::process::Stdio::null());
        let mut child = c.spawn().expect("start corral serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
                let mut l = log2.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                l.push_str(&line);
                l.push('\n');
            }
        });
        let Ok(url) = rx.recv_timeout(std::time::Duration::from_secs(60)) else {
            let _ = child.kill();
            panic!("corral serve did not start:\n{}", log.lock().unwrap());
        };
        Server { child, url, log, _store: own_store }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit; true if it exited.
    pub fn terminate(&mut self, timeout: std::time::Duration) -> bool {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let t = std::time::Instant::now();
        while t.elapsed() < timeout {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.terminate(std::time::Duration::from_secs(5));
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A plugin directory holding the example plugin (format `toy`) under `dir/example`.
pub fn example_plugin_dir(dir: &Path) -> PathBuf {
    plugin_dir(
        dir,
        "example",
        &example_manifest("cpu", ABI, "libcorral_plugin_example.so"),
        Some(&plugin_lib("libcorral_plugin_example.so")),
    )
}

/// The repository root (parent of this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repo root").to_path_buf()
}

/// A plugin directory holding the llama.cpp plugin built by this build (cpu variant), or
/// `None` (with the reason printed) when it was not built.
pub fn llama_cpp_plugin_dir(dir: &Path) -> Option<PathBuf> {
    let lib = profile_dir().join("libcorral_backend_llama_cpp.so");
    if !lib.is_file() {
        eprintln!("SKIP: {} not built (cargo build --workspace builds it)", lib.display());
        return None;
    }
    let manifest = std::fs::read_to_string(
        repo_root().join("backends/llama-cpp/manifests/llama-cpp-cpu.toml"),
    )
    .expect("llama-cpp manifest");
    Some(plugin_dir(dir, "llama-cpp-cpu", &manifest, Some(&lib)))
}

/// Generates a model with `corral model generate`.
pub fn generate_model(path: &Path, shape: &str, weight_type: &str) {
    let mut c = corral(&[]);
    c.args(["model", "generate"]).arg(path).args(["--shape", shape, "--type", weight_type]);
    let (out, _, stderr) = run(c);
    assert!(out.status.success(), "model generate failed: {stderr}");
}

/// Generates a tiny model of architecture `arch` with `corral model generate --arch`, at
/// `dir/name`; its path.
pub fn generate_arch_model(dir: &Path, name: &str, arch: &str) -> PathBuf {
    let path = dir.join(name);
    let mut c = corral(&[]);
    c.args(["model", "generate"]).arg(&path).args(["--arch", arch]);
    let (out, _, stderr) = run(c);
    assert!(out.status.success(), "model generate --arch {arch} failed: {stderr}");
    path
}

/// A Python interpreter that has what the ONNX test-model generators need (onnx,
/// onnxruntime, numpy, tokenizers, gguf): `$CORRAL_VENV`, ./target/pyenv, the CI venv, then
/// `python3`. `None` (with the reason printed) when there is none.
pub fn onnx_python() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(v) = std::env::var_os("CORRAL_VENV").filter(|v| !v.is_empty()) {
        candidates.push(PathBuf::from(v).join("bin/python"));
    }
    candidates.push(repo_root().join("target/pyenv/bin/python"));
    candidates.push(PathBuf::from("/var/tmp/corral-ci-venv/bin/python"));
    candidates.push(PathBuf::from("python3"));
    for py in &candidates {
        let ok = Command::new(py)
            .args(["-c", "import onnx, onnxruntime, numpy, tokenizers, gguf"])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(py.clone());
        }
    }
    eprintln!(
        "SKIP: no Python with onnx, onnxruntime, numpy, tokenizers and gguf (tried {}); \
         scripts/install-deps.sh installs them",
        candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    );
    None
}

/// The libonnxruntime of `python`'s onnxruntime package.
pub fn onnxruntime_library(python: &Path) -> Option<PathBuf> {
    let out = Command::new(python)
        .args(["-c", "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))"])
        .output()
        .ok()?;
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("capi");
    let mut libs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libonnxruntime.so"))
        })
        .collect();
    libs.sort();
    libs.pop()
}

/// Runs a generator script of tests/python/gen_onnx with `python`; panics with its output
/// when it fails.
pub fn gen_onnx(python: &Path, script: &str, args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(python)
        .arg(repo_root().join("tests/python/gen_onnx").join(script))
        .args(args)
        .output()
        .expect("run the ONNX generator");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A plugin directory holding the ONNX Runtime plugin built by this build (cpu variant),
/// its manifest's `library_path` set to `library` when given; `None` (with the reason
/// printed) when the plugin was not built.
pub fn onnx_plugin_dir(dir: &Path, library: Option<&Path>) -> Option<PathBuf> {
    let lib = profile_dir().join("libcorral_backend_onnx.so");
    if !lib.is_file() {
        eprintln!("SKIP: {} not built (cargo build --workspace builds it)", lib.display());
        return None;
    }
    let mut manifest =
        std::fs::read_to_string(repo_root().join("backends/onnx/manifests/onnx-cpu.toml"))
            .expect("onnx manifest");
    if let Some(l) = library {
        manifest = manifest.replace(
            "[options]\n",
            &format!("[options]\nlibrary_path = {:?}\n", l.display().to_string()),
        );
    }
    Some(plugin_dir(dir, "onnx-cpu", &manifest, Some(&lib)))
}

/// A plugin directory holding the pure-Rust cpu plugin built by this build (its dev
/// manifest `cpu.corral-plugin.toml` names the variant the build reports), or `None`
/// (with the reason printed) when it was not built.
pub fn cpu_plugin_dir(dir: &Path) -> Option<PathBuf> {
    let lib = profile_dir().join("libcorral_backend_cpu.so");
    if !lib.is_file() {
        eprintln!("SKIP: {} not built (cargo build --workspace builds it)", lib.display());
        return None;
    }
    let dev_manifest = profile_dir().join("cpu.corral-plugin.toml");
    let manifest = std::fs::read_to_string(&dev_manifest).unwrap_or_else(|_| {
        std::fs::read_to_string(repo_root().join("backends/cpu/manifests/cpu.toml"))
            .expect("cpu manifest")
    });
    Some(plugin_dir(dir, "cpu", &manifest, Some(&lib)))
}

/// A chat of 100,000 short turns (200,000 special-token texts in its ChatML prompt,
/// 3.7 MB) sent to `corral serve` with `plugin`'s engine: answered (truncated to its
/// `num_ctx`) within a minute, and the engine answers the next request, instead of being
/// held for the better part of an hour by a tokenizer's special-token pass (llama.cpp's is
/// quadratic in the matches; the engine worker's watchdog would kill it after five
/// minutes and every request on the model would fail meanwhile); then one word of 2 MB
/// (a BPE merge loop that rescans the word per merge is quadratic too).
pub fn assert_a_chat_of_100000_turns_is_answered_promptly(plugin: &Path, dir: &Path) {
    let model = dir.join("chat.gguf");
    generate_model(&model, "tiny", "f32");
    assert_huge_prompts_are_answered_promptly(plugin, &model);
}

/// [`assert_a_chat_of_100000_turns_is_answered_promptly`] on a given model (a file or a
/// model directory that `plugin`'s engine runs).
pub fn assert_huge_prompts_are_answered_promptly(plugin: &Path, model: &Path) {
    let model = model.to_string_lossy().into_owned();
    let server = Server::start(&[plugin], &[], &[]);
    let messages: Vec<serde_json::Value> = (0..100_000)
        .map(|i| {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            serde_json::json!({"role": role, "content": "hi there"})
        })
        .chain([serde_json::json!({"role": "user", "content": "and now?"})])
        .collect();
    let started = std::time::Instant::now();
    let (status, v) = post_json(
        &server.url,
        "/api/chat",
        &serde_json::json!({"model": model, "messages": messages, "stream": false,
            "options": {"num_ctx": 512, "num_predict": 2, "temperature": 0}}),
    );
    let took = started.elapsed();
    assert_eq!(status, 200, "{v}\n{}", server.log());
    assert_eq!(v["done"], true, "{v}");
    println!(
        "a chat of 100,000 turns: {took:?}, {} prompt tokens evaluated",
        v["prompt_eval_count"]
    );
    assert!(took < std::time::Duration::from_secs(60), "took {took:?}");
    // One word of 2 MB (a single pre-token): merged in O(n log n), as llama.cpp does.
    let word = corral_gguf::test_texts::random_word("abcdefghijklmnopqrstuvwxyz", 2 << 20, 1);
    let started = std::time::Instant::now();
    let (status, v) = post_json(
        &server.url,
        "/api/generate",
        &serde_json::json!({"model": model, "prompt": word, "raw": true, "stream": false,
            "options": {"num_ctx": 512, "num_predict": 2}}),
    );
    let took = started.elapsed();
    assert_eq!(status, 200, "{v}");
    println!("a word of 2 MB: {took:?}");
    assert!(took < std::time::Duration::from_secs(60), "took {took:?}");
    let (status, v) = post_json(
        &server.url,
        "/api/generate",
        &serde_json::json!({"model": model, "prompt": "hello", "stream": false,
            "options": {"num_predict": 2}}),
    );
    assert_eq!(status, 200, "{v}");
}

/// The `llama-raw` reference binary: `CORRAL_LLAMA_RAW` if set, else the one built beside
/// the tests; `None` (with the reason printed) when there is none.
pub fn llama_raw_bin() -> Option<PathBuf> {
    let p = std::env::var_os("CORRAL_LLAMA_RAW")
        .map_or_else(|| profile_dir().join("llama-raw"), PathBuf::from);
    if p.is_file() {
        Some(p)
    } else {
        eprintln!(
            "SKIP: {} not found (build corral-backend-llama-cpp or set CORRAL_LLAMA_RAW)",
            p.display()
        );
        None
    }
}

/// Raw llama.cpp's greedy continuation of `prompt` (`llama-raw greedy --json`): `text`,
/// `tokens`, `prompt_tokens`, `stop_reason`.
pub fn raw_greedy(raw: &Path, model: &Path, prompt: &str, n: usize) -> serde_json::Value {
    let out = Command::new(raw)
        .arg("greedy")
        .arg(model)
        .args(["--prompt", prompt, "--n", &n.to_string(), "--json"])
        .output()
        .expect("run llama-raw");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("llama-raw prints JSON")
}

/// `corral run --backend BACKEND --raw` at temperature 0 without repeat penalty equals
/// raw llama.cpp's greedy text on generated tiny F32 and F16 models, two prompts each.
pub fn assert_greedy_run_equals_raw(plugin: &Path, raw: &Path, backend: &str, dir: &Path) {
    for ty in ["f32", "f16"] {
        let model = dir.join(format!("tiny-{ty}.gguf"));
        generate_model(&model, "tiny", ty);
        for prompt in ["Hello there", "The capital of France is"] {
            let v = raw_greedy(raw, &model, prompt, 32);
            let expected = v["text"].as_str().unwrap_or_default();
            assert!(
                v["tokens"].as_array().map_or(0, Vec::len) >= 8,
                "continuation too short to mean much: {v}"
            );
            let mut c = corral(&[plugin]);
            // Pure argmax: temperature 0 and no repeat penalty (Ollama's default 1.1
            // applies even at temperature 0).
            c.args(["run", "--backend", backend, "--raw", "--temperature", "0"])
                .args(["--repeat-penalty", "1", "--num-predict", "32"])
                .arg(&model)
                .arg(prompt);
            let (out, stdout, stderr) = run(c);
            assert!(out.status.success(), "{stderr}");
            let got = stdout.strip_suffix('\n').unwrap_or(&stdout);
            assert_eq!(got, expected, "{ty} {prompt:?}: corral run ({backend}) vs llama-raw");
        }
    }
}

/// `corral plugin check PLUGIN --model M` on a generated tiny model of each weight type
/// passes, printing `expected` (e.g. "12 passed, 0 failed").
pub fn assert_conformance_on_generated(plugin: &Path, types: &[&str], expected: &str, dir: &Path) {
    for ty in types {
        let model = dir.join(format!("tiny-{ty}.gguf"));
        generate_model(&model, "tiny", ty);
        let mut c = corral(&[]);
        c.args(["plugin", "check"]).arg(plugin).arg("--model").arg(&model);
        let (out, stdout, stderr) = run(c);
        assert!(out.status.success(), "{ty}: {stdout}\n{stderr}");
        assert!(stdout.contains(expected), "{ty}: {stdout}");
    }
}

/// `corral run` with `run_args` (e.g. `--backend cpu`) on a file that is not GGUF, a
/// truncated one and a missing one: each fails with an exit code (no signal) and a
/// message saying which. Returns a good generated tiny F32 model for further checks.
pub fn assert_bad_model_files_are_clear(plugin: &Path, run_args: &[&str], dir: &Path) -> PathBuf {
    let not_gguf = dir.join("notes.gguf");
    std::fs::write(&not_gguf, "this is not a model").expect("write a test file");
    let good = dir.join("tiny.gguf");
    generate_model(&good, "tiny", "f32");
    let bytes = std::fs::read(&good).expect("read the generated model");
    let truncated = dir.join("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write a test file");
    let cases: [(&Path, &str); 3] = [
        (&not_gguf, "not a GGUF file"),
        (&truncated, "truncated"),
        (Path::new("/nonexistent/model.gguf"), "does not exist"),
    ];
    for (path, expect) in cases {
        let mut c = corral(&[plugin]);
        c.arg("run").args(run_args).args(["--raw", "--temperature", "0"]).arg(path).arg("hi");
        let (out, _, stderr) = run(c);
        assert!(!out.status.success(), "{}: accepted", path.display());
        assert!(out.status.code().is_some(), "{}: killed by a signal: {stderr}", path.display());
        assert!(
            stderr.to_lowercase().contains(&expect.to_lowercase()),
            "{}: {stderr}",
            path.display()
        );
    }
    good
}

/// Copies the GGUF model `src` to `dst` with the metadata `set` (keys replaced or added).
pub fn rewrite_metadata(src: &Path, dst: &Path, set: &[(&str, corral_gguf::Value)]) {
    rewrite_gguf(src, dst, set, &|_, _| {});
}

/// Copies the GGUF model `src` to `dst` with the metadata `set` (keys replaced or added),
/// every tensor's bytes passed through `edit(name, bytes)` on the way.
pub fn rewrite_gguf(
    src: &Path,
    dst: &Path,
    set: &[(&str, corral_gguf::Value)],
    edit: &dyn Fn(&str, &mut Vec<u8>),
) {
    let file = corral_gguf::reader::GgufFile::open(src).expect("read the model");
    let mut b = corral_gguf::writer::GgufBuilder::new();
    for (k, v) in file.metadata() {
        if !set.iter().any(|(s, _)| s == k) {
            b.add_metadata(k.clone(), v.clone()).expect("metadata");
        }
    }
    for (k, v) in set {
        b.add_metadata(*k, v.clone()).expect("metadata");
    }
    for t in file.tensors() {
        b.add_tensor(t.name.clone(), &t.dims, t.ggml_type).expect("tensor");
    }
    let out = std::fs::File::create(dst).expect("create the model");
    let mut w = b.begin(std::io::BufWriter::new(out)).expect("begin");
    for t in file.tensors() {
        let mut bytes = file.read_tensor_bytes(t).expect("read");
        edit(&t.name, &mut bytes);
        w.write_tensor(&t.name, &bytes).expect("write");
    }
    w.finish().expect("finish");
}

/// Copies the GGUF model `src` to `dst` with one vocabulary entry overwritten by another
/// of the same length, so the vocabulary holds one token string twice: a file that makes
/// llama.cpp abort while it loads (`GGML_ASSERT` in its vocabulary code).
pub fn duplicate_vocab_entry(src: &Path, dst: &Path) {
    let g = corral_gguf::reader::GgufFile::open(src).expect("read the model");
    let tokens = g.get_str_array("tokenizer.ggml.tokens").expect("a vocabulary");
    let mut bytes = std::fs::read(src).expect("read the model");
    // Two distinct plain tokens of the same length, the second of which occurs once as a
    // length-prefixed string in the file.
    let framed = |t: &str| {
        let mut f = (t.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(t.as_bytes());
        f
    };
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    let count =
        |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).filter(|w| *w == needle).count();
    for (i, a) in tokens.iter().enumerate().skip(300) {
        if a.len() < 3 || a.contains('<') {
            continue;
        }
        let Some(b) = tokens.iter().skip(i + 1).find(|b| b.len() == a.len() && *b != a) else {
            continue;
        };
        let fb = framed(b);
        if count(&bytes, &fb) != 1 {
            continue;
        }
        let at = find(&bytes, &fb).expect("found once");
        bytes[at + 8..at + fb.len()].copy_from_slice(a.as_bytes());
        std::fs::write(dst, bytes).expect("write the model");
        return;
    }
    panic!("no pair of tokens to duplicate in {}", src.display());
}

/// A running docker-registry with a temporary filesystem store, killed on drop.
pub struct Registry {
    child: std::process::Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts one, or `None` (with the reason printed) when the binary is missing.
    pub fn start() -> Option<Registry> {
        let bin = std::env::var_os("CORRAL_DOCKER_REGISTRY").map_or_else(
            || std::path::PathBuf::from("/usr/bin/docker-registry"),
            std::path::PathBuf::from,
        );
        if !bin.is_file() {
            eprintln!(
                "SKIP: {} not found (install Debian's docker-registry package)",
                bin.display()
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let cfg = dir.path().join("config.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  \
                 filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: \
                 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg(&cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let reg = Registry { child, port, _dir: dir };
        let t = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t.elapsed() < std::time::Duration::from_secs(20),
                "docker-registry did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Some(reg)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `corral` command whose own store is `store` and whose server is `host`.
pub fn cli(store: &Path, host: &str) -> Command {
    let mut c = corral(&[]);
    c.env("CORRAL_MODELS", store).env("CORRAL_HOST", host).env_remove("CORRAL_MODELS_READONLY");
    c
}

/// Runs `corral ARGS` with `store` and `host`; (exit code, stdout, stderr).
pub fn go(store: &Path, host: &str, args: &[&str]) -> (i32, String, String) {
    let mut c = cli(store, host);
    c.args(args);
    let (out, stdout, stderr) = run(c);
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

/// The NAME column of `corral list`'s output.
pub fn names(list: &str) -> Vec<String> {
    list.lines().skip(1).filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect()
}

/// A blocking HTTP client for the end-to-end tests (a generous timeout: debug builds
/// under load are slow).
pub fn http_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(300))
        .build()
        .expect("an HTTP client")
}

/// The value of the Prometheus metric `name` on `s`'s `/metrics` (e.g.
/// `corral_worker_crashes_total`).
pub fn metric(s: &Server, name: &str) -> f64 {
    let text = http_client().get(format!("{}/metrics", s.url)).send().unwrap().text().unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

/// `POST url+path` with a JSON body: the status and the answer as JSON (a string when
/// it is not JSON).
pub fn post_json(url: &str, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let r = http_client().post(format!("{url}{path}")).json(body).send().expect("POST");
    let status = r.status().as_u16();
    let text = r.text().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}

/// `GET url+path`: the status and the answer as JSON (a string when it is not JSON).
pub fn get_json(url: &str, path: &str) -> (u16, serde_json::Value) {
    let r = http_client().get(format!("{url}{path}")).send().expect("GET");
    let status = r.status().as_u16();
    let text = r.text().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}

/// A free loopback port (bound and released; another process may take it first, which
/// the callers' start-up checks notice).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local address").port()
}

/// A running `corral worker` (ggml's RPC server) on a loopback port, killed when dropped.
pub struct Worker {
    /// The child process.
    pub child: std::process::Child,
    /// `127.0.0.1:PORT`.
    pub endpoint: String,
    /// What it printed on stdout and stderr so far.
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Worker {
    /// Starts `corral worker --listen 127.0.0.1:PORT --threads THREADS` seeing only
    /// `plugin_dirs`, and waits until it accepts connections.
    pub fn start(plugin_dirs: &[&Path], threads: u32) -> Worker {
        use std::io::BufRead;
        let endpoint = format!("127.0.0.1:{}", free_port());
        let mut c = corral(plugin_dirs);
        c.args(["worker", "--listen", &endpoint, "--threads", &threads.to_string()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().expect("start corral worker");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let pipes: [Box<dyn std::io::Read + Send>; 2] = [
            Box::new(child.stdout.take().expect("stdout")),
            Box::new(child.stderr.take().expect("stderr")),
        ];
        for pipe in pipes {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut l = log.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let t = std::time::Instant::now();
        let mut w = Worker { child, endpoint, log };
        // Listening once its line is out and a connection is accepted (ggml's server
        // then sees a client that closes at once, and waits for the next).
        while t.elapsed() < std::time::Duration::from_secs(60) {
            if let Ok(Some(status)) = w.child.try_wait() {
                panic!("corral worker exited ({status}):\n{}", w.log());
            }
            if w.log().contains("listening on") && std::net::TcpStream::connect(&w.endpoint).is_ok()
            {
                return w;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("corral worker did not start listening:\n{}", w.log());
    }

    /// What it printed so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Kills it (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}
