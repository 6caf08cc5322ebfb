//! The ONNX decoder's logits against llama.cpp's on the same weights: a GGUF from the
//! project's generator, the genai-layout ONNX graph written from it by
//! tests/python/gen_onnx/gen_llama.py, this crate's backend for the ONNX side and
//! `llama-raw logits` (the llama.cpp plugin's raw tool) for the reference.
//!
//! Tolerance: |onnx - llama.cpp| <= 1e-2 + 1e-3 x max|llama.cpp| per logit (about 2e-2 for
//! these logits of magnitude about 10), and the same argmax. llama.cpp keeps its KV cache
//! in F16 and, with F16 weights, rounds activations to F16 for the matrix products, so the
//! engines differ by float rounding (measured: at most 4.3e-3 with F32 weights, 7.1e-3
//! with F16); a real bug (a wrong rotary convention, head grouping or mask) moves logits
//! by O(1).
//!
//! Skips, printing why, when no Python has the generator's packages, when ONNX Runtime
//! cannot be found, or when `llama-raw` was not built into this target directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use corral_backend_api::plugin::{Backend, Context, Model};
use corral_backend_api::{BatchEntry, Capabilities, ContextParams, LoadRequest};
use corral_backend_onnx::{OnnxBackend, OnnxOptions};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python() -> Option<PathBuf> {
    let mut c: Vec<PathBuf> = Vec::new();
    if let Some(v) = std::env::var_os("CORRAL_VENV").filter(|v| !v.is_empty()) {
        c.push(PathBuf::from(v).join("bin/python"));
    }
    c.push(repo_root().join("target/pyenv/bin/python"));
    c.push(PathBuf::from("/var/tmp/corral-ci-venv/bin/python"));
    c.push(PathBuf::from("python3"));
    c.into_iter().find(|py| {
        Command::new(py)
            .args(["-c", "import onnx, onnxruntime, numpy, tokenizers, gguf"])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

fn onnx_lib(py: &Path) -> Option<PathBuf> {
    let out = Command::new(py)
        .args(["-c", "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))"])
        .output()
        .ok()?;
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("capi");
    corral_backend_onnx::runtime::library_in_dir(&dir)
}

fn llama_raw() -> Option<PathBuf> {
    // This test binary is target/<profile>/deps/<name>.
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.parent()?.join("llama-raw");
    p.is_file().then_some(p)
}

fn onnx_logits(backend: &OnnxBackend, dir: &Path, prompt: &str) -> (Vec<u32>, Vec<f32>) {
    let model = backend.load_model(&LoadRequest::new(dir.display().to_string(), "onnx")).unwrap();
    assert!(model.capabilities().contains(Capabilities::GENERATION));
    assert!(!model.capabilities().contains(Capabilities::CONTEXT_SHIFT));
    let tokens = model.tokenize(prompt, true, false).unwrap();
    let mut ctx = model.new_context(&ContextParams::default()).unwrap();
    // Feed the prompt in two batches to exercise the KV cache path too.
    let split = tokens.len() / 2;
    for (start, chunk) in [(0, &tokens[..split]), (split, &tokens[split..])] {
        let batch: Vec<BatchEntry> = chunk
            .iter()
            .enumerate()
            .map(|(i, &t)| BatchEntry {
                token: t,
                pos: (start + i) as u32,
                seq: 0,
                logits: start + i + 1 == tokens.len(),
            })
            .collect();
        ctx.decode(&batch).unwrap();
    }
    let last = tokens.len() - split - 1;
    (tokens, ctx.logits(last as u32).unwrap().to_vec())
}

#[test]
fn logits_agree_with_llama_cpp() {
    let Some(py) = python() else {
        eprintln!("SKIP: no Python with onnx, onnxruntime, numpy, tokenizers, gguf");
        return;
    };
    let Some(raw) = llama_raw() else {
        eprintln!(
            "SKIP: llama-raw not built in this target dir (cargo build -p corral-backend-llama-cpp)"
        );
        return;
    };
    let backend = match OnnxBackend::with_options(OnnxOptions {
        library_path: onnx_lib(&py),
        ..Default::default()
    }) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("SKIP: {e}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    for (ty, wt) in [
        ("f32", corral_gguf::generate::WeightType::F32),
        ("f16", corral_gguf::generate::WeightType::F16),
    ] {
        let gguf = dir.path().join(format!("tiny-{ty}.gguf"));
        let opts = corral_gguf::generate::GenerateOptions { weight_type: wt, ..Default::default() };
        corral_gguf::generate::generate_llama(&gguf, &opts).unwrap();
        let onnx = dir.path().join(format!("onnx-{ty}"));
        let out = Command::new(&py)
            .arg(repo_root().join("tests/python/gen_onnx/gen_llama.py"))
            .arg(&gguf)
            .arg(&onnx)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mut worst = 0f32;
        for prompt in [
            "Hello there",
            "The quick brown fox jumps over the lazy dog.",
            "fn main() { println!(\"héllo, wörld — 日本語 🦀\"); }",
            &"Once upon a time, in a land far away, ".repeat(6),
        ] {
            let out = Command::new(&raw)
                .arg("logits")
                .arg(&gguf)
                .args(["--prompt", prompt, "--json"])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let reference: Vec<f32> = v["logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            let ref_tokens: Vec<u32> = v["prompt_tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            let (tokens, got) = onnx_logits(&backend, &onnx, prompt);
            assert_eq!(tokens, ref_tokens, "{ty} {prompt:?}: tokenization differs from llama.cpp");
            assert_eq!(got.len(), reference.len());
            let scale = reference.iter().fold(0f32, |m, x| m.max(x.abs()));
            let tol = 1e-2 + 1e-3 * scale;
            let d = reference.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            println!(
                "{ty} {:>3} tokens: max |diff| {d:.2e} (max |logit| {scale:.2}, tolerance {tol:.2e})",
                tokens.len()
            );
            assert!(d <= tol, "{ty} {prompt:?}: max |diff| {d} > {tol}");
            let argmax =
                |v: &[f32]| v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i);
            assert_eq!(argmax(&got), argmax(&reference), "{ty} {prompt:?}: argmax differs");
            worst = worst.max(d);
        }
        println!("{ty}: worst max |diff| {worst:.2e}");
    }
}
