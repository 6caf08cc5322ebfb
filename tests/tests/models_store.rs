//! The model store from the command line: `corral create/list/show/cp/rm`, `--link`, bad
//! Modelfiles and names, and a store laid out by hand the way Ollama lays it out, listed,
//! shown and run read-only.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use corral_e2e::*;
use sha2_free::sha256_hex;

/// A small sha256 so the test crate needs no new dependency (FIPS 180-4).
mod sha2_free {
    pub(crate) fn sha256_hex(data: &[u8]) -> String {
        const K: [u32; 64] = [
            0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
            0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
            0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
            0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
            0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
            0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
            0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
            0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
            0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
            0xc67178f2,
        ];
        let mut h: [u32; 8] = [
            0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
            0x5be0cd19,
        ];
        let mut msg = data.to_vec();
        let bits = (data.len() as u64).wrapping_mul(8);
        msg.push(0x80);
        while msg.len() % 64 != 56 {
            msg.push(0);
        }
        msg.extend_from_slice(&bits.to_be_bytes());
        for chunk in msg.chunks(64) {
            let mut w = [0u32; 64];
            for i in 0..16 {
                w[i] = u32::from_be_bytes([
                    chunk[4 * i],
                    chunk[4 * i + 1],
                    chunk[4 * i + 2],
                    chunk[4 * i + 3],
                ]);
            }
            for i in 16..64 {
                let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
                let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
                w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
            }
            let mut v = h;
            for i in 0..64 {
                let s1 = v[4].rotate_right(6) ^ v[4].rotate_right(11) ^ v[4].rotate_right(25);
                let ch = (v[4] & v[5]) ^ (!v[4] & v[6]);
                let t1 =
                    v[7].wrapping_add(s1).wrapping_add(ch).wrapping_add(K[i]).wrapping_add(w[i]);
                let s0 = v[0].rotate_right(2) ^ v[0].rotate_right(13) ^ v[0].rotate_right(22);
                let maj = (v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]);
                let t2 = s0.wrapping_add(maj);
                v[7] = v[6];
                v[6] = v[5];
                v[5] = v[4];
                v[4] = v[3].wrapping_add(t1);
                v[3] = v[2];
                v[2] = v[1];
                v[1] = v[0];
                v[0] = t1.wrapping_add(t2);
            }
            for i in 0..8 {
                h[i] = h[i].wrapping_add(v[i]);
            }
        }
        h.iter().map(|x| format!("{x:08x}")).collect()
    }

    #[test]
    fn known_vectors() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}

/// A `corral` command on the store at `store`, seeing only `plugins`.
fn cmd(store: &Path, plugins: &[&Path]) -> Command {
    let mut c = corral(plugins);
    c.env("CORRAL_MODELS", store).env_remove("CORRAL_MODELS_READONLY");
    c
}

/// Runs `corral ARGS` on `store` and returns (exit code, stdout, stderr).
fn go(store: &Path, args: &[&str]) -> (i32, String, String) {
    let mut c = cmd(store, &[]);
    c.args(args);
    let (out, stdout, stderr) = run(c);
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

/// Writes a tiny generated GGUF (random weights, real BPE vocabulary).
fn tiny_gguf(dir: &Path) -> PathBuf {
    let p = dir.join("tiny.gguf");
    let mut c = corral(&[]);
    c.args(["model", "generate"]).arg(&p).args(["--shape", "tiny", "--type", "f32"]);
    let (out, _, stderr) = run(c);
    assert!(out.status.success(), "generate failed: {stderr}");
    p
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return out };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

const PHI3: &str = "{{ if .System }}<|system|>\n{{ .System }}<|end|>\n{{ end }}{{ if .Prompt }}<|user|>\n{{ .Prompt }}<|end|>\n{{ end }}<|assistant|>\n{{ .Response }}<|end|>\n";

/// The plugin to run GGUF models with: llama-cpp when it is built (beside this test's
/// binaries or in the workspace's target/debug), else the example plugin with `--format
/// toy`. Returns the plugin directory and the extra `run` arguments.
pub fn gguf_runner(dir: &Path) -> (PathBuf, Vec<String>) {
    let lib = "libcorral_backend_llama_cpp.so";
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf);
    let candidates = [Some(profile_dir()), root.as_ref().map(|r| r.join("target/debug"))];
    let manifest = root.as_ref().map(|r| r.join("backends/llama-cpp/manifests/llama-cpp-cpu.toml"));
    for c in candidates.into_iter().flatten() {
        let l = c.join(lib);
        if let (true, Some(m)) = (l.is_file(), manifest.as_ref().filter(|m| m.is_file())) {
            let text = std::fs::read_to_string(m).expect("read llama-cpp manifest");
            return (plugin_dir(dir, "llama-cpp", &text, Some(&l)), Vec::new());
        }
    }
    eprintln!(
        "NOTE: the llama-cpp plugin is not built ({lib} not in {} or target/debug); running \
         with the example plugin (format toy) instead",
        profile_dir().display()
    );
    (example_plugin_dir(dir), vec!["--format".into(), "toy".into()])
}

#[test]
fn create_list_show_cp_rm() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let gguf = tiny_gguf(dir.path());
    let template = "{{ .System }} {{ .Prompt }} {{ .Response }}";
    std::fs::write(
        dir.path().join("Modelfile"),
        format!(
            "FROM ./tiny.gguf\nPARAMETER temperature 0.3\nPARAMETER stop \"<|end|>\"\n\
             SYSTEM \"\"\"You are terse.\"\"\"\nTEMPLATE \"\"\"{template}\"\"\"\n\
             LICENSE \"\"\"MIT test license\nsecond line\"\"\"\n"
        ),
    )
    .unwrap();
    let mf = dir.path().join("Modelfile");
    let (code, _, stderr) = go(&store, &["create", "tiny", "-f", mf.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("success"), "{stderr}");

    let (code, stdout, stderr) = go(&store, &["list"]);
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("NAME") && lines[0].contains("MODIFIED"), "{stdout}");
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(row[0], "tiny:latest", "{stdout}");
    assert_eq!(row[1].len(), 12, "{stdout}");
    assert!(row[1].chars().all(|c| c.is_ascii_hexdigit()), "{stdout}");
    assert!(["B", "KB", "MB"].contains(&row[3]), "{stdout}");
    assert!(stdout.contains("ago"), "{stdout}");

    let (code, stdout, stderr) = go(&store, &["show", "tiny"]);
    assert_eq!(code, 0, "{stderr}");
    for needle in [
        "architecture        llama",
        "parameters",
        "context length",
        "quantization        F32",
        "Parameters",
        "temperature",
        "System",
        "You are terse.",
        "License",
        "MIT test license",
    ] {
        assert!(stdout.contains(needle), "show lacks {needle:?}:\n{stdout}");
    }
    let (_, modelfile, _) = go(&store, &["show", "tiny", "--modelfile"]);
    assert!(modelfile.contains("FROM /"), "{modelfile}");
    assert!(modelfile.contains(&format!("TEMPLATE \"\"\"{template}\"\"\"")), "{modelfile}");
    assert!(modelfile.contains("PARAMETER temperature 0.3"), "{modelfile}");
    let (_, params, _) = go(&store, &["show", "tiny", "--parameters"]);
    assert!(params.contains("PARAMETER temperature 0.3"), "{params}");
    assert!(params.contains("PARAMETER stop \"<|end|>\""), "{params}");
    let (_, t, _) = go(&store, &["show", "tiny", "--template"]);
    assert_eq!(t.trim_end(), template);
    let (_, s, _) = go(&store, &["show", "tiny", "--system"]);
    assert_eq!(s.trim_end(), "You are terse.");
    let (_, l, _) = go(&store, &["show", "tiny", "--license"]);
    assert_eq!(l.trim_end(), "MIT test license\nsecond line");

    // A copy shares the blobs; removing the original keeps them.
    let (code, stdout, stderr) = go(&store, &["cp", "tiny", "tiny2:v1"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("copied 'tiny' to 'tiny2:v1'"), "{stdout}");
    let (_, stdout, _) = go(&store, &["list"]);
    assert!(stdout.contains("tiny:latest") && stdout.contains("tiny2:v1"), "{stdout}");
    let (code, stdout, stderr) = go(&store, &["rm", "tiny"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("deleted 'tiny'"), "{stdout}");
    let (code, _, stderr) = go(&store, &["show", "tiny"]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("model \"tiny\" not found, try pulling it first"), "{stderr}");
    let (code, stdout, stderr) = go(&store, &["show", "tiny2:v1"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("llama"), "{stdout}");
    let gguf_len = std::fs::metadata(&gguf).unwrap().len();
    assert!(
        files_under(&store.join("blobs"))
            .iter()
            .any(|f| std::fs::metadata(f).unwrap().len() == gguf_len),
        "the copied weights are in the store"
    );
    let (code, _, stderr) = go(&store, &["rm", "tiny2:v1"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(files_under(&store.join("blobs")), Vec::<PathBuf>::new(), "blobs pruned");
    let (_, stdout, _) = go(&store, &["list"]);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
}

#[test]
fn link_keeps_no_copy_and_from_an_existing_model() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let gguf = tiny_gguf(dir.path());
    let mf = dir.path().join("Modelfile");
    std::fs::write(&mf, format!("FROM {}\nPARAMETER num_ctx 256\n", gguf.display())).unwrap();
    let (code, _, stderr) = go(&store, &["create", "linked", "-f", mf.to_str().unwrap(), "--link"]);
    assert_eq!(code, 0, "{stderr}");
    let blobs = files_under(&store.join("blobs"));
    assert!(!blobs.is_empty());
    for b in &blobs {
        assert!(std::fs::metadata(b).unwrap().len() < 4096, "{} is a copy", b.display());
    }
    let (_, modelfile, _) = go(&store, &["show", "linked", "--modelfile"]);
    let canon = gguf.canonicalize().unwrap();
    assert!(modelfile.contains(&format!("FROM {}", canon.display())), "{modelfile}");
    let (code, stdout, stderr) = go(&store, &["show", "linked"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("linked file"), "{stdout}");

    // FROM an existing model name, overriding a parameter.
    let mf2 = dir.path().join("Modelfile2");
    std::fs::write(&mf2, "FROM linked\nPARAMETER temperature 0.9\n").unwrap();
    let (code, _, stderr) = go(&store, &["create", "derived", "-f", mf2.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let (_, params, _) = go(&store, &["show", "derived", "--parameters"]);
    assert!(params.contains("temperature 0.9"), "{params}");
}

#[test]
fn bad_modelfiles_names_and_missing_models_have_clear_errors_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let gguf = tiny_gguf(dir.path());
    let mf = dir.path().join("Modelfile");

    std::fs::write(&mf, format!("FROM {}\n  FROBNICATE yes\n", gguf.display())).unwrap();
    let (code, _, stderr) = go(&store, &["create", "m", "-f", mf.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("line 2, column 3"), "{stderr}");
    assert!(stderr.to_lowercase().contains("frobnicate"), "{stderr}");

    std::fs::write(&mf, "# comment\nFROM ./does-not-exist.gguf\n").unwrap();
    let (code, _, stderr) = go(&store, &["create", "m", "-f", mf.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("line 2"), "{stderr}");
    assert!(stderr.contains("does-not-exist.gguf"), "{stderr}");

    let missing = dir.path().join("NoModelfile");
    let (code, _, stderr) = go(&store, &["create", "m", "-f", missing.to_str().unwrap()]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("NoModelfile"), "{stderr}");

    std::fs::write(&mf, format!("FROM {}\n", gguf.display())).unwrap();
    for bad in ["../x", "a/b/c/d", "a b", "-x", "x:..", ""] {
        let (code, _, stderr) = go(&store, &["create", "-f", mf.to_str().unwrap(), "--", bad]);
        assert_eq!(code, 2, "{bad:?}: {stderr}");
        assert!(stderr.contains("invalid model name"), "{bad:?}: {stderr}");
    }
    // Nothing was written for the refused names.
    let (_, stdout, _) = go(&store, &["list"]);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");

    for args in [vec!["show", "nope"], vec!["rm", "nope"], vec!["cp", "nope", "other"]] {
        let (code, _, stderr) = go(&store, &args);
        assert_eq!(code, 3, "{args:?}: {stderr}");
        // `rm` gets no advice to pull what it was asked to remove.
        let want = if args[0] == "rm" {
            "model \"nope\" not found\n"
        } else {
            "model \"nope\" not found, try pulling it first"
        };
        assert!(stderr.contains(want), "{stderr}");
    }
    let (code, _, stderr) = go(&store, &["run", "./missing.gguf", "hi"]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
    let (code, _, stderr) = go(&store, &["show", "a/b/c/d"]);
    assert_eq!(code, 2, "{stderr}");
}

/// Writes `bytes` as a blob of an Ollama-layout store; returns the digest.
fn blob(store: &Path, bytes: &[u8]) -> String {
    let hex = sha256_hex(bytes);
    std::fs::create_dir_all(store.join("blobs")).unwrap();
    std::fs::write(store.join("blobs").join(format!("sha256-{hex}")), bytes).unwrap();
    format!("sha256:{hex}")
}

/// Lays out a store exactly as Ollama does: manifests/registry.ollama.ai/library/NAME/latest
/// and blobs/sha256-<hex>, with Ollama's media types, a Go TEMPLATE, SYSTEM and params.
fn ollama_store(store: &Path, name: &str, gguf: &Path) {
    let weights = std::fs::read(gguf).unwrap();
    let layers = [
        ("application/vnd.ollama.image.model", weights),
        ("application/vnd.ollama.image.template", PHI3.as_bytes().to_vec()),
        ("application/vnd.ollama.image.system", b"You are a test model.".to_vec()),
        (
            "application/vnd.ollama.image.params",
            br#"{"stop":["<|end|>","<|user|>"],"temperature":0.7}"#.to_vec(),
        ),
        ("application/vnd.ollama.image.license", b"Test license".to_vec()),
    ];
    let mut layer_json = Vec::new();
    let mut diff_ids = Vec::new();
    for (media, bytes) in &layers {
        let d = blob(store, bytes);
        layer_json
            .push(format!(r#"{{"mediaType":"{media}","digest":"{d}","size":{}}}"#, bytes.len()));
        diff_ids.push(format!("\"{d}\""));
    }
    let config = format!(
        r#"{{"model_format":"gguf","model_family":"llama","model_families":["llama"],"model_type":"1M","file_type":"F32","architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        diff_ids.join(",")
    );
    let config_digest = blob(store, config.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{config_digest}","size":{}}},"layers":[{}]}}"#,
        config.len(),
        layer_json.join(",")
    );
    let dir = store.join("manifests/registry.ollama.ai/library").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("latest"), manifest).unwrap();
}

fn snapshot(dir: &Path) -> Vec<(PathBuf, u64)> {
    files_under(dir)
        .into_iter()
        .map(|p| {
            let len = std::fs::metadata(&p).unwrap().len();
            (p, len)
        })
        .collect()
}

#[test]
fn an_ollama_store_lists_shows_and_runs_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("ollama-models");
    let gguf = tiny_gguf(dir.path());
    ollama_store(&store, "tiny", &gguf);
    let before = snapshot(&store);
    let ro = |args: &[&str], plugins: &[&Path]| {
        let mut c = cmd(&store, plugins);
        c.env("CORRAL_MODELS_READONLY", "1").args(args);
        let (out, stdout, stderr) = run(c);
        (out.status.code().unwrap_or(-1), stdout, stderr)
    };

    let (code, stdout, stderr) = ro(&["list"], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.lines().nth(1).is_some_and(|l| l.starts_with("tiny:latest")), "{stdout}");
    let (code, stdout, stderr) = ro(&["show", "tiny"], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("architecture        llama"), "{stdout}");
    assert!(stdout.contains("You are a test model."), "{stdout}");
    assert!(stdout.contains("temperature 0.7"), "{stdout}");
    let (_, t, _) = ro(&["show", "tiny", "--template"], &[]);
    assert_eq!(t.trim_end(), PHI3.trim_end());
    // Also by its full name, and through the --models flag instead of the environment.
    let mut c = corral(&[]);
    c.args(["show", "registry.ollama.ai/library/tiny:latest", "--models-readonly", "--models"])
        .arg(&store);
    let (out, _, stderr) = run(c);
    assert!(out.status.success(), "{stderr}");

    // Writes are refused with a clear message.
    let (code, _, stderr) = ro(&["cp", "tiny", "other"], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("read-only"), "{stderr}");

    // It runs, with its Go template, SYSTEM and params as defaults.
    let (plugins, extra) = gguf_runner(dir.path());
    let mut args = vec!["run", "tiny", "hi", "--temperature", "0", "--num-predict", "5"];
    args.extend(extra.iter().map(String::as_str));
    let (code, stdout, stderr) = ro(&args, &[plugins.as_path()]);
    assert_eq!(code, 0, "run failed: {stderr}");
    assert!(!stdout.trim().is_empty() || stderr.is_empty(), "{stdout} {stderr}");
    assert_eq!(snapshot(&store), before, "the read-only store was written to");
}

#[test]
fn run_applies_the_store_models_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let gguf = tiny_gguf(dir.path());
    let mf = dir.path().join("Modelfile");
    std::fs::write(
        &mf,
        format!(
            "FROM {}\nTEMPLATE \"\"\"{PHI3}\"\"\"\nPARAMETER num_predict 3\nPARAMETER temperature 0\n",
            gguf.display()
        ),
    )
    .unwrap();
    let (code, _, stderr) = go(&store, &["create", "t", "-f", mf.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let (plugins, extra) = gguf_runner(dir.path());
    let mut c = cmd(&store, &[plugins.as_path()]);
    c.args(["run", "t", "hello", "--verbose"]).args(&extra);
    let (out, stdout, stderr) = run(c);
    assert!(out.status.success(), "{stderr}");
    // PARAMETER num_predict 3 is the default: at most 3 tokens.
    let count = stderr
        .lines()
        .find_map(|l| l.strip_prefix("eval count:"))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse::<u32>().ok()));
    assert!(count.is_some_and(|n| n <= 3), "eval count {count:?}: {stdout}\n{stderr}");
    // A flag overrides it.
    let mut c = cmd(&store, &[plugins.as_path()]);
    c.args(["run", "t", "hello", "--verbose", "--num-predict", "6"]).args(&extra);
    let (out, _, stderr) = run(c);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("eval count:"), "{stderr}");
}
