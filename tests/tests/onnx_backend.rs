//! The ONNX Runtime backend through the real host: the conformance suite on a genai-layout
//! decoder made from a generated GGUF, greedy continuations equal to llama.cpp's on the
//! same weights (and decoder embeddings equal to llama.cpp's), sentence embeddings equal to
//! onnxruntime's Python API with numpy pooling,
//! clear errors for bad model directories, and a missing or too old ONNX Runtime reported
//! as the reason the plugin is unavailable.
//!
//! Each test skips (printing why) when the plugin was not built or no Python has onnx,
//! onnxruntime, numpy, tokenizers and gguf.

use std::path::{Path, PathBuf};

use corral_e2e::*;

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    python: PathBuf,
    plugin: PathBuf,
}

fn setup() -> Option<Setup> {
    let python = onnx_python()?;
    let Some(lib) = onnxruntime_library(&python) else {
        eprintln!("SKIP: {} has onnxruntime but no libonnxruntime.so in it", python.display());
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let plugin = onnx_plugin_dir(&root, Some(&lib))?;
    Some(Setup { _dir: dir, root, python, plugin })
}

/// A tiny llama GGUF (F32 unless told) and the genai-layout ONNX decoder made from it.
fn llama_pair(s: &Setup, ty: &str) -> (PathBuf, PathBuf) {
    let gguf = s.root.join(format!("tiny-{ty}.gguf"));
    generate_model(&gguf, "tiny", ty);
    let onnx = s.root.join(format!("llama-{ty}"));
    gen_onnx(&s.python, "gen_llama.py", &[gguf.as_os_str(), onnx.as_os_str()]);
    (gguf, onnx)
}

fn bert(s: &Setup, name: &str, args: &[&str]) -> PathBuf {
    let out = s.root.join(name);
    let mut a: Vec<&std::ffi::OsStr> = vec![out.as_os_str()];
    a.extend(args.iter().map(std::ffi::OsStr::new));
    gen_onnx(&s.python, "gen_bert.py", &a);
    out
}

#[test]
fn conformance_suite_passes_on_onnx_decoder() {
    let Some(s) = setup() else { return };
    let (gguf, f32_io) = llama_pair(&s, "f32");
    // The same weights with float16 KV cache and logits tensors, as GPU exports have them.
    let f16_io = s.root.join("llama-f16-io");
    gen_onnx(
        &s.python,
        "gen_llama.py",
        &[gguf.as_os_str(), f16_io.as_os_str(), "--f16-io".as_ref()],
    );
    for model in [f32_io, f16_io] {
        let mut c = corral(&[]);
        c.args(["plugin", "check"]).arg(&s.plugin).arg("--model").arg(&model);
        let (out, stdout, stderr) = run(c);
        assert!(out.status.success(), "{}: {stdout}\n{stderr}", model.display());
        assert!(stdout.contains("11 passed, 0 failed, 1 skipped"), "{}: {stdout}", model.display());
        assert!(stdout.contains("PASS embeddings"), "{stdout}");
    }
}

/// A 100,000-turn chat and a 2 MB word (Hugging Face `tokenizers` behind the engine) are
/// answered within a minute and the engine serves on.
#[test]
fn huge_prompts_are_answered_promptly_on_onnx() {
    let Some(s) = setup() else { return };
    let (_, onnx) = llama_pair(&s, "f32");
    assert_huge_prompts_are_answered_promptly(&s.plugin, &onnx);
}

#[test]
fn greedy_run_equals_llama_cpp_on_the_same_weights() {
    let Some(s) = setup() else { return };
    let Some(llama) = llama_cpp_plugin_dir(&s.root) else { return };
    for ty in ["f32", "f16"] {
        let (gguf, onnx) = llama_pair(&s, ty);
        for prompt in ["Hello there", "The capital of France is", "fn main() { println!(\"hi\"); }"]
        {
            let greedy = |plugin: &Path, model: &Path| {
                let mut c = corral(&[plugin]);
                c.args(["run", "--raw", "--temperature", "0", "--repeat-penalty", "1"])
                    .args(["--num-predict", "32"])
                    .arg(model)
                    .arg(prompt);
                let (out, stdout, stderr) = run(c);
                assert!(out.status.success(), "{}: {stderr}", model.display());
                stdout
            };
            let reference = greedy(&llama, &gguf);
            let got = greedy(&s.plugin, &onnx);
            assert_eq!(got, reference, "{ty} {prompt:?}: onnx vs llama.cpp greedy continuation");
            assert!(reference.chars().count() >= 8, "continuation too short to mean much");
        }
    }
}

fn embed_http(url: &str, path: &str, body: serde_json::Value) -> serde_json::Value {
    let r =
        reqwest::blocking::Client::new().post(format!("{url}{path}")).json(&body).send().unwrap();
    let status = r.status();
    let v: serde_json::Value = r.json().unwrap();
    assert!(status.is_success(), "{path}: {status} {v}");
    v
}

fn max_diff(a: &serde_json::Value, b: &serde_json::Value) -> f64 {
    let (a, b) = (a.as_array().unwrap(), b.as_array().unwrap());
    assert_eq!(a.len(), b.len(), "vector lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x.as_f64().unwrap() - y.as_f64().unwrap()).abs())
        .fold(0.0, f64::max)
}

#[test]
fn embeddings_match_onnxruntime_python_reference() {
    let Some(s) = setup() else { return };
    let mean = bert(&s, "bert-mean", &[]);
    let cls = bert(&s, "bert-cls", &["--pooling", "cls", "--no-normalize", "--seed", "1"]);
    let texts = [
        "The quick brown fox jumps over the lazy dog.",
        "hello there",
        "Once upon a time, in a land far away, people wrote sentences!",
    ];
    let server = Server::start(&[&s.plugin], &[], &[]);
    for (model, normalized) in [(&mean, true), (&cls, false)] {
        let mut args: Vec<&std::ffi::OsStr> = vec![model.as_os_str()];
        args.extend(texts.iter().map(std::ffi::OsStr::new));
        let reference: serde_json::Value =
            serde_json::from_str(&gen_onnx(&s.python, "reference_embed.py", &args)).unwrap();
        let name = model.display().to_string();
        // /api/embeddings returns the backend's vector as is (pooled, normalised only if
        // the model's config says so).
        for (i, text) in texts.iter().enumerate() {
            let v = embed_http(
                &server.url,
                "/api/embeddings",
                serde_json::json!({"model": name, "prompt": text}),
            );
            let d = max_diff(&v["embedding"], &reference["embeddings"][i]);
            assert!(d < 1e-4, "{name} {text:?}: max |diff| {d} vs the onnxruntime reference");
        }
        if normalized {
            let v = embed_http(
                &server.url,
                "/api/embed",
                serde_json::json!({"model": name, "input": texts}),
            );
            for i in 0..texts.len() {
                let d = max_diff(&v["embeddings"][i], &reference["embeddings"][i]);
                assert!(d < 1e-4, "{name} /api/embed {i}: max |diff| {d}");
            }
            let v = embed_http(
                &server.url,
                "/v1/embeddings",
                serde_json::json!({"model": name, "input": texts[0]}),
            );
            let d = max_diff(&v["data"][0]["embedding"], &reference["embeddings"][0]);
            assert!(d < 1e-4, "{name} /v1/embeddings: max |diff| {d}");
        }
    }
}

#[test]
fn bad_model_directories_are_clear_errors() {
    let Some(s) = setup() else { return };
    let (_, good) = llama_pair(&s, "f32");
    let enc = bert(&s, "bert", &[]);
    let copy = |name: &str| {
        let d = s.root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for f in ["model.onnx", "genai_config.json", "tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(good.join(f), d.join(f)).unwrap();
        }
        d
    };
    let empty = s.root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let garbage = copy("garbage");
    std::fs::write(garbage.join("model.onnx"), "this is not an ONNX model").unwrap();
    let more_layers = copy("more-layers");
    let cfg = std::fs::read_to_string(more_layers.join("genai_config.json")).unwrap();
    std::fs::write(
        more_layers.join("genai_config.json"),
        cfg.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3"),
    )
    .unwrap();
    // A layer count no graph has: refused before a name per layer is built (10^12 of them
    // would exhaust memory and abort the process).
    let huge_layers = copy("huge-layers");
    std::fs::write(
        huge_layers.join("genai_config.json"),
        cfg.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1000000000000"),
    )
    .unwrap();
    let renamed = copy("renamed-input");
    let cfg = std::fs::read_to_string(renamed.join("genai_config.json")).unwrap();
    std::fs::write(
        renamed.join("genai_config.json"),
        cfg.replace("\"input_ids\": \"input_ids\"", "\"input_ids\": \"tokens\""),
    )
    .unwrap();
    let wrong_tok = copy("wrong-tokenizer");
    std::fs::copy(enc.join("tokenizer.json"), wrong_tok.join("tokenizer.json")).unwrap();
    let no_tok = copy("no-tokenizer");
    std::fs::remove_file(no_tok.join("tokenizer.json")).unwrap();
    let cases: [(&Path, &str); 8] = [
        (&empty, "holds no ONNX model"),
        (&garbage, "Protobuf parsing failed"),
        (&more_layers, "has no input \"past_key_values.2.key\""),
        (&huge_layers, "num_hidden_layers = 1000000000000"),
        (&renamed, "has no input \"tokens\""),
        (&wrong_tok, "the tokenizer does not belong to this model"),
        (&no_tok, "no tokenizer.json"),
        (Path::new("/nonexistent/model-dir"), "does not exist"),
    ];
    for (path, expect) in cases {
        let mut c = corral(&[&s.plugin]);
        c.args(["run", "--raw", "--temperature", "0", "--format", "onnx"]).arg(path).arg("hi");
        let (out, _, stderr) = run(c);
        assert!(!out.status.success(), "{}: accepted", path.display());
        assert!(out.status.code().is_some(), "{}: killed by a signal: {stderr}", path.display());
        assert!(stderr.contains(expect), "{}: expected {expect:?} in: {stderr}", path.display());
    }
    // An encoder has no logits: generation is refused with the reason.
    let mut c = corral(&[&s.plugin]);
    c.args(["run", "--raw", "--temperature", "0"]).arg(&enc).arg("hi");
    let (out, _, stderr) = run(c);
    assert!(!out.status.success());
    assert!(stderr.contains("embedding model"), "{stderr}");
}

/// `corral backends`' line for the onnx plugin, with the given extra environment.
fn backends_line(plugin: &Path, env: &[(&str, &str)]) -> String {
    let mut c = corral(&[plugin]);
    c.arg("backends").env_remove("ORT_DYLIB_PATH");
    for (k, v) in env {
        c.env(k, v);
    }
    let (_, stdout, stderr) = run(c);
    let mut lines = stdout.lines().skip_while(|l| !l.starts_with("onnx "));
    let first = lines.next().unwrap_or_else(|| panic!("no onnx line in: {stdout}\n{stderr}"));
    let engine = lines.next().unwrap_or_default();
    format!("{first}\n{engine}")
}

const FAKE_OLD_ORT: &str = r#"
typedef struct { const void *(*GetApi)(unsigned); const char *(*GetVersionString)(void); } OrtApiBase;
static const void *get_api(unsigned v) { (void)v; return 0; }
static const char *version(void) { return "1.16.3"; }
static const OrtApiBase base = { get_api, version };
const OrtApiBase *OrtGetApiBase(void) { return &base; }
"#;

#[test]
fn runtime_found_missing_or_too_old_is_reported() {
    let Some(s) = setup() else { return };
    // Found: the manifest's library_path; describe() names it and the provider.
    let line = backends_line(&s.plugin, &[]);
    assert!(line.contains("plugin option library_path"), "{line}");
    assert!(line.contains("CPUExecutionProvider"), "{line}");
    // Without the option, ORT_DYLIB_PATH is next; a missing file is the reason given.
    let bare = onnx_plugin_dir(&s.root.join("bare"), None).unwrap();
    let line = backends_line(&bare, &[("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")]);
    assert!(
        line.contains("unavailable") && line.contains("/nonexistent/libonnxruntime.so"),
        "{line}"
    );
    // A library that is not ONNX Runtime, and one that is too old.
    let line = backends_line(
        &bare,
        &[(
            "ORT_DYLIB_PATH",
            &profile_dir().join("libcorral_plugin_example.so").display().to_string(),
        )],
    );
    assert!(line.contains("not an ONNX Runtime library"), "{line}");
    match cc_shared(&s.root, "fakeort", FAKE_OLD_ORT, &[]) {
        Some(fake) => {
            let line = backends_line(&bare, &[("ORT_DYLIB_PATH", &fake.display().to_string())]);
            assert!(line.contains("1.16.3 is too old"), "{line}");
        }
        None => eprintln!("SKIP (too-old case): no C compiler"),
    }
    // Nothing anywhere: every place looked is named, with how to install it.
    let line = backends_line(
        &bare,
        &[
            ("CORRAL_VENV", "/nonexistent"),
            ("VIRTUAL_ENV", "/nonexistent"),
            ("PATH", "/nonexistent"),
        ],
    );
    if line.contains("unavailable") {
        assert!(line.contains("pip install onnxruntime"), "{line}");
    } else {
        eprintln!("note: this machine has onnxruntime in a system place: {line}");
    }
}

#[test]
fn decoder_embeddings_equal_llama_cpp_on_the_same_weights() {
    let Some(s) = setup() else { return };
    let Some(llama) = llama_cpp_plugin_dir(&s.root) else { return };
    let (gguf, onnx) = llama_pair(&s, "f32");
    // One server, both backends: GGUF files go to llama.cpp, ONNX directories to onnx.
    let server = Server::start(&[&s.plugin, &llama], &[], &[]);
    let texts = ["The quick brown fox jumps over the lazy dog.", "Once upon a time"];
    let embed = |model: &Path| {
        let body = serde_json::json!({"model": model.display().to_string(), "input": texts});
        embed_http(&server.url, "/api/embed", body)
    };
    let (a, b) = (embed(&gguf), embed(&onnx));
    for i in 0..texts.len() {
        // Mean-pooled final hidden state, normalised; llama.cpp's F16 KV cache is the
        // difference (measured about 9e-5).
        let d = max_diff(&a["embeddings"][i], &b["embeddings"][i]);
        assert!(d < 1e-3, "text {i}: onnx vs llama.cpp embedding max |diff| {d}");
    }
}
