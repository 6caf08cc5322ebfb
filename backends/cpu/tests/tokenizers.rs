//! The engine's BPE tokenizer against llama.cpp's on generated vocabularies with each
//! pre-tokenizer it reproduces: GPT-2's (`gpt-2`), Llama 3's (`llama-bpe`, with its
//! whole-word lookups) and Qwen 2's (`qwen2`), 1,000 varied strings each. Skips, saying
//! why, when `llama-raw` is missing.

mod common;

use common::{assert_tokenization_equals_llama_cpp, llama_raw, varied_strings};
use corral_gguf::generate::{Arch, GenerateOptions, ModelShape, WeightType, generate_model};
use corral_gguf::reader::GgufFile;

fn check(arch: Arch, pre: &str) {
    let Some(raw) = llama_raw() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{arch:?}.gguf"));
    let opts = GenerateOptions {
        arch,
        shape: ModelShape { n_vocab: 8000, ..ModelShape::tiny() },
        weight_type: WeightType::F32,
        seed: 5,
        ..Default::default()
    };
    generate_model(&path, &opts).unwrap();
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.get_str("tokenizer.ggml.pre"), Some(pre));
    assert_tokenization_equals_llama_cpp(&raw, &path, &varied_strings());
}

#[test]
fn gpt2_pre_tokenizer_equals_llama_cpp_on_1000_strings() {
    check(Arch::Llama, "gpt-2");
}

#[test]
fn llama3_pre_tokenizer_equals_llama_cpp_on_1000_strings() {
    check(Arch::Llama3, "llama-bpe");
}

#[test]
fn qwen2_pre_tokenizer_equals_llama_cpp_on_1000_strings() {
    check(Arch::Qwen2, "qwen2");
}
