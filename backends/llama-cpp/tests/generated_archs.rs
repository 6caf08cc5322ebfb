//! Every architecture the model generator writes loads and runs in llama.cpp: each is
//! generated at a tiny shape (F16, and Q4_K_M at a 256-wide shape so the K types are
//! used, not their fallbacks) and run through `llama-raw` (this package's binary, raw
//! llama.cpp): the logits are finite and spread, greedy decoding does not repeat one
//! token, and llama.cpp tokenizes exactly as the generator's reference tokenizers
//! (`Bpe::encode`, `Spm::encode`) do, special tokens included.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use corral_gguf::bpe::{Bpe, PreTokenizer};
use corral_gguf::generate::{
    Arch, GenerateOptions, ModelShape, VocabKind, WeightType, generate_model,
};
use corral_gguf::spm::{SpecialStyle, Spm, is_phi3_name};
use serde_json::Value;

const LLAMA_RAW: &str = env!("CARGO_BIN_EXE_llama-raw");
const SEED: u64 = 5;
const TEXTS: [&str; 4] = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world, the café is open at 7:30 today!",
    "fn main() {\n    println!(\"{}\", 42);\n}",
    "naïve 日本語 🙂 résumé",
];

fn llama_raw(args: &[&str], stdin: Option<&str>) -> Value {
    let mut cmd = Command::new(LLAMA_RAW);
    cmd.args(args).args(["--threads", "2", "--ctx", "256", "--json"]);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run llama-raw");
    let mut pipe = child.stdin.take().expect("stdin");
    if let Some(s) = stdin {
        pipe.write_all(s.as_bytes()).expect("write stdin");
    }
    drop(pipe);
    let out = child.wait_with_output().expect("llama-raw output");
    assert!(
        out.status.success(),
        "llama-raw {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("llama-raw {args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout))
    })
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("token array")
        .iter()
        .map(|t| u32::try_from(t.as_i64().expect("token id")).expect("id"))
        .collect()
}

/// Runs a generated model and checks what llama.cpp computes.
fn check_runs(path: &Path, what: &str) {
    let p = path.to_str().expect("utf-8 path");
    let v = llama_raw(&["logits", p, "--prompt", TEXTS[0]], None);
    let logits: Vec<f64> = v["logits"]
        .as_array()
        .expect("logits")
        .iter()
        .map(|x| x.as_f64().expect("a number (NaN is printed as null)"))
        .collect();
    assert_eq!(logits.len() as u64, v["n_vocab"].as_u64().expect("n_vocab"), "{what}");
    let n = logits.len() as f64;
    let mean = logits.iter().sum::<f64>() / n;
    let std = (logits.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n).sqrt();
    let mut sorted = logits.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    println!("{what}: logits std {std:.2}, top-2 gap {:.3}", sorted[0] - sorted[1]);
    assert!(logits.iter().all(|x| x.is_finite()), "{what}: non-finite logits");
    assert!(std > 1.0, "{what}: logits barely spread (std {std})");
    assert!(sorted[0] > sorted[1], "{what}: greedy tie");

    let v = llama_raw(&["greedy", p, "--prompt", TEXTS[0], "--n", "24"], None);
    let mut toks = ids(&v["tokens"]);
    println!("{what}: greedy {:?} ({})", v["text"].as_str().unwrap_or(""), v["stop_reason"]);
    if v["stop_reason"] == "length" {
        toks.sort_unstable();
        toks.dedup();
        assert!(toks.len() >= 4, "{what}: degenerate greedy output {v}");
    }
}

/// Whether the file asks llama.cpp to add BOS (Qwen's files do not).
fn adds_bos(opts: &GenerateOptions) -> bool {
    opts.vocab_kind() == VocabKind::SentencePiece || !matches!(opts.arch, Arch::Qwen2 | Arch::Qwen3)
}

/// The reference tokenization of `text` as llama.cpp's `llama_tokenize` with
/// add_special and parse_special gives it: BOS first when the file asks for one, special
/// token texts as those tokens.
fn reference_tokens(opts: &GenerateOptions, text: &str) -> Vec<u32> {
    let n_vocab = opts.shape.n_vocab as usize;
    match opts.vocab_kind() {
        VocabKind::Bpe => {
            // The generator writes each family's pre-tokenizer (Llama 3's, Qwen 2's).
            let pre = match opts.arch {
                Arch::Llama3 => PreTokenizer::Llama3,
                Arch::Qwen2 | Arch::Qwen3 => PreTokenizer::Qwen2,
                _ => PreTokenizer::Gpt2,
            };
            let bpe = Bpe::train(n_vocab, opts.seed).and_then(|b| b.with_pre(pre)).expect("bpe");
            let bos = bpe.bos_id().filter(|_| adds_bos(opts));
            bos.into_iter().chain(bpe.encode_with_special(text)).collect()
        }
        VocabKind::SentencePiece => {
            let style = match opts.arch {
                Arch::Gemma2 | Arch::Gemma3 => SpecialStyle::Gemma,
                Arch::Phi3 => SpecialStyle::Phi3,
                _ => SpecialStyle::Llama,
            };
            let mut spm = Spm::train(n_vocab, style, opts.seed).expect("spm");
            spm.set_rstrip_specials(is_phi3_name(&opts.name));
            spm.bos_id().into_iter().chain(spm.encode_with_special(text)).collect()
        }
    }
}

#[test]
fn every_architecture_loads_runs_and_tokenizes_in_llama_cpp() {
    let dir = tempfile::tempdir().expect("tempdir");
    let k_shape = ModelShape::parse("tiny:n_embd=256,n_ff=256").expect("shape");
    for arch in Arch::ALL {
        let f16 = GenerateOptions {
            arch,
            weight_type: WeightType::F16,
            seed: SEED,
            name: format!("tiny-{arch}"),
            ..Default::default()
        };
        let path = dir.path().join(format!("{arch}-f16.gguf"));
        generate_model(&path, &f16).expect("generate");
        check_runs(&path, &format!("{arch} F16"));

        // Tokenization: llama.cpp agrees with the reference tokenizer.
        let texts: Vec<&str> = TEXTS.to_vec();
        let json = serde_json::to_string(&texts).expect("json");
        let p = path.to_str().expect("utf-8 path");
        let got = llama_raw(&["tokenize", p], Some(&json));
        for (i, text) in texts.iter().enumerate() {
            assert_eq!(ids(&got[i]), reference_tokens(&f16, text), "{arch}: {text:?}");
        }

        // A chat turn: the markers are single special tokens, as in the reference.
        let turn = match (f16.vocab_kind(), arch) {
            (VocabKind::Bpe, _) => "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
            (VocabKind::SentencePiece, Arch::Phi3) => "<|user|>\nHi there<|end|>\n<|assistant|>\n",
            (VocabKind::SentencePiece, _) => {
                "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n"
            }
        };
        let got = llama_raw(&["tokenize", p], Some(&serde_json::to_string(&[turn]).expect("json")));
        let reference = reference_tokens(&f16, turn);
        assert_eq!(ids(&got[0]), reference, "{arch}: {turn:?}");
        let markers = reference.iter().filter(|&&t| t >= f16.shape.n_vocab - 8 || t < 8).count();
        assert!(markers >= 3, "{arch}: {turn:?} -> {reference:?}");

        let q = GenerateOptions {
            shape: k_shape,
            weight_type: WeightType::Q4_K_M,
            name: format!("k-{arch}"),
            ..f16.clone()
        };
        let path = dir.path().join(format!("{arch}-q4_k_m.gguf"));
        let report = generate_model(&path, &q).expect("generate");
        let k_types = report.tensor_types.iter().filter(|(_, t)| t.name().ends_with("_K")).count();
        assert!(k_types > 0, "{arch}: no K-type tensor in {:?}", report.tensor_types);
        check_runs(&path, &format!("{arch} Q4_K_M"));
    }
}
