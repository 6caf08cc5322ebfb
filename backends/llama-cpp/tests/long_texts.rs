//! Long texts full of special-token texts: the plugin tokenizes them in pieces (so that
//! llama.cpp's special-token pass, quadratic in its matches, cannot hold an engine for
//! minutes) and gets exactly the ids `llama_tokenize` gives for the whole text
//! (`llama-raw tokenize`, raw llama.cpp), on generated vocabularies of each kind and on the
//! real Gemma 3 file when it is in the model cache.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use corral_backend_api::LoadRequest;
use corral_backend_api::plugin::{Backend, Model};
use corral_backend_llama_cpp::{LlamaBackend, LlamaOptions};
use corral_gguf::generate::{Arch, GenerateOptions, ModelShape, generate_model};
use corral_gguf::test_texts;

const LLAMA_RAW: &str = env!("CARGO_BIN_EXE_llama-raw");

/// What raw llama.cpp gives for each text, whole (`add_special`, `parse_special`).
fn llama_cpp_tokens(model: &Path, texts: &[String]) -> Vec<Vec<u32>> {
    let mut child = Command::new(LLAMA_RAW)
        .args(["tokenize", model.to_str().expect("utf-8 path"), "--threads", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run llama-raw");
    let input = serde_json::to_vec(texts).expect("json");
    child.stdin.take().expect("stdin").write_all(&input).expect("write stdin");
    let out = child.wait_with_output().expect("llama-raw output");
    assert!(out.status.success(), "llama-raw tokenize failed");
    serde_json::from_slice(&out.stdout).expect("token lists")
}

fn load(path: &Path) -> corral_backend_llama_cpp::LlamaModel {
    let backend = LlamaBackend::with_options(LlamaOptions { n_threads: 1, ..Default::default() })
        .expect("init");
    let mut r = LoadRequest::new(path.to_string_lossy(), "gguf");
    r.settings.n_threads = 1;
    r.settings.n_gpu_layers = 0;
    backend.load_model(&r).expect("load")
}

/// A tiny generated llama model (byte-level BPE with ChatML's special tokens), loaded;
/// the directory holding its file comes first.
fn tiny_llama() -> (tempfile::TempDir, corral_backend_llama_cpp::LlamaModel) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("llama.gguf");
    let opts = GenerateOptions { shape: ModelShape::tiny(), seed: 3, ..Default::default() };
    generate_model(&path, &opts).expect("generate");
    let model = load(&path);
    (dir, model)
}

fn check_equal_to_llama_cpp(path: &Path, what: &str) {
    let model = load(path);
    let texts: Vec<String> =
        (0..3).map(|seed| test_texts::special_heavy(3000 + 500 * seed as usize, seed)).collect();
    let want = llama_cpp_tokens(path, &texts);
    for (text, want) in texts.iter().zip(&want) {
        assert!(text.len() > 32 * 1024, "the text is long enough to be cut");
        let got = model.tokenize(text, true, true).expect("tokenize");
        assert_eq!(got.len(), want.len(), "{what}: token count");
        let first_diff = got.iter().zip(want).position(|(a, b)| a != b);
        assert_eq!(first_diff, None, "{what}: first differing token");
    }
    println!("{what}: {} texts equal to llama.cpp's whole-text tokenization", texts.len());
}

#[test]
fn long_texts_tokenize_as_llama_cpp_does_whole_on_every_vocabulary_kind() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Byte-level BPE with BOS (llama), without (qwen2), SentencePiece in Gemma's and
    // Phi-3's styles (Phi-3's special tokens strip the whitespace after them).
    for arch in [Arch::Llama, Arch::Qwen2, Arch::Gemma3, Arch::Phi3] {
        let opts = GenerateOptions {
            arch,
            shape: ModelShape::tiny(),
            seed: 3,
            name: format!("corral-long-text-{}", arch.name()),
            ..Default::default()
        };
        let path = dir.path().join(format!("{}.gguf", arch.name()));
        generate_model(&path, &opts).expect("generate");
        check_equal_to_llama_cpp(&path, arch.name());
    }
}

#[test]
fn long_texts_tokenize_as_llama_cpp_does_whole_on_the_real_gemma_vocabulary() {
    let cache = std::env::var_os("CORRAL_MODEL_CACHE")
        .map_or_else(|| PathBuf::from("/var/tmp/corral-models"), PathBuf::from);
    let path = cache.join("gemma-3-270m-q4_k_m.gguf");
    if !path.is_file() {
        eprintln!("SKIP: {} missing (run scripts/fetch-models.sh)", path.display());
        return;
    }
    check_equal_to_llama_cpp(&path, "gemma-3-270m");
}

/// 200,000 special-token texts (a chat of 100,000 turns, 3.6 MB): llama.cpp's pass over
/// the whole text would take about 40 minutes here (37 s for 64,000 matches on this
/// vocabulary, growing with their square); in pieces it is a matter of seconds.
#[test]
fn a_chat_of_100000_turns_tokenizes_in_seconds() {
    let (_dir, model) = tiny_llama();
    let turn = "<|im_start|>user\nhi there<|im_end|>\n";
    let text = turn.repeat(100_000);
    let one = model.tokenize(turn, false, true).expect("one turn");
    let started = Instant::now();
    let ids = model.tokenize(&text, false, true).expect("tokenize");
    let took = started.elapsed();
    assert_eq!(ids.len(), one.len() * 100_000);
    assert_eq!(&ids[..one.len()], &one[..]);
    println!("100,000 turns ({} bytes): {} tokens in {took:?}", text.len(), ids.len());
    assert!(took < Duration::from_secs(60), "took {took:?}");
}

/// Special-token texts back to back, with no text between them, are each a place to cut.
#[test]
fn back_to_back_special_texts_are_cut() {
    let (_dir, model) = tiny_llama();
    let one = model.tokenize("<|im_end|>", false, true).expect("one");
    assert_eq!(one.len(), 1);
    let ids = model.tokenize(&"<|im_end|>".repeat(50_000), false, true).expect("tokenize");
    assert_eq!(ids, vec![one[0]; 50_000]);
}
