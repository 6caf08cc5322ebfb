//! The engine's BPE tokenizer against llama.cpp's on generated vocabularies with each
//! pre-tokenizer it reproduces: GPT-2's (`gpt-2`), Llama 3's (`llama-bpe`, with its
//! whole-word lookups) and Qwen 2's (`qwen2`), and its SentencePiece tokenizer on Llama 2
//! style (space prefix) and Phi-3 style (special tokens strip the whitespace after them)
//! vocabularies: 1,000 varied strings each, and long texts dense with special-token texts
//! (found in one pass, as llama.cpp finds them one by one). Skips, saying why, when
//! `llama-raw` is missing.

mod common;

use common::{assert_tokenization_equals_llama_cpp, llama_raw, varied_strings};
use corral_gguf::generate::{
    Arch, GenerateOptions, ModelShape, VocabKind, WeightType, generate_model,
};
use corral_gguf::reader::GgufFile;
use corral_gguf::test_texts;

fn check(arch: Arch, pre: &str) {
    check_vocab(arch, None, Some(pre));
}

fn check_vocab(arch: Arch, vocab: Option<VocabKind>, pre: Option<&str>) {
    let Some(raw) = llama_raw() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{arch:?}.gguf"));
    let opts = GenerateOptions {
        arch,
        shape: ModelShape { n_vocab: 8000, ..ModelShape::tiny() },
        weight_type: WeightType::F32,
        seed: 5,
        vocab,
        name: format!("corral-{}", arch.name()),
        ..Default::default()
    };
    generate_model(&path, &opts).unwrap();
    let file = GgufFile::open(&path).unwrap();
    if let Some(pre) = pre {
        assert_eq!(file.get_str("tokenizer.ggml.pre"), Some(pre));
    }
    let mut texts = varied_strings();
    texts.extend((0..2).map(|seed| test_texts::special_heavy(4000, seed)));
    // Long pre-tokens: 200,000 random letters (one GPT-2 piece), digits, CJK.
    texts.extend(
        ["abcdefghijklmnopqrstuvwxyz", "0123456789", "日本語の文字列東京大阪"]
            .iter()
            .map(|alphabet| test_texts::random_word(alphabet, 200_000, 7)),
    );
    assert_tokenization_equals_llama_cpp(&raw, &path, &texts);
}

#[test]
fn llama2_style_sentencepiece_equals_llama_cpp() {
    check_vocab(Arch::Llama, Some(VocabKind::SentencePiece), None);
}

#[test]
fn phi3_sentencepiece_equals_llama_cpp() {
    check_vocab(Arch::Phi3, None, None);
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
