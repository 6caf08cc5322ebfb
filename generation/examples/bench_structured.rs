//! Times the structured-output mask (which tokens may come next under a JSON schema) per
//! token, for ordinary and adversarial schemas, over a real model's vocabulary.
//!
//! `cargo run --release -p corral-generation --example bench_structured -- MODEL.gguf`
//!
//! Without a GGUF it uses a synthetic vocabulary of 262,144 tokens (Gemma 3's size).
//! Every schema is walked through a document it accepts, one token at a time (the
//! cheapest token that keeps the document valid, so strings grow one character at a
//! time); the report is the mean and the worst time of one `mask` call, and the
//! matcher's live interpretations at the worst step.

use std::{sync::Arc, time::Instant};

use corral_generation::{
    sampler::Constraint,
    structured::{Grammar, JsonConstraint, TokenTable},
};
use serde_json::{Value, json};

/// Token byte strings from a GGUF's `tokenizer.ggml.tokens`, SentencePiece's `▁` as a
/// space and `<0xAB>` byte tokens as their byte.
fn gguf_vocab(path: &str) -> Vec<Vec<u8>> {
    let file = corral_gguf::reader::GgufFile::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let Some(corral_gguf::Value::Array { values, .. }) = file.get("tokenizer.ggml.tokens") else {
        panic!("{path} has no tokenizer.ggml.tokens");
    };
    values
        .iter()
        .map(|v| match v {
            corral_gguf::Value::String(s) => {
                if let Some(hex) = s.strip_prefix("<0x").and_then(|h| h.strip_suffix('>'))
                    && let Ok(b) = u8::from_str_radix(hex, 16)
                {
                    return vec![b];
                }
                s.replace('\u{2581}', " ").into_bytes()
            }
            _ => Vec::new(),
        })
        .collect()
}

/// 256 byte tokens and random words of 2 to 12 characters, like a large BPE vocabulary.
fn synthetic_vocab(n: usize) -> Vec<Vec<u8>> {
    let alphabet: &[u8] = b"etaoinshrdlucmfwypvbgkqjxz ETAOINSHRDLU0123456789\"{}[]:,.-_ ";
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut v: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    while v.len() < n {
        let len = 2 + (next() % 11) as usize;
        v.push((0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect());
    }
    v
}

fn schemas() -> Vec<(&'static str, Value)> {
    let many_strings: Vec<Value> =
        (0..64).map(|i| json!({"type": "string", "maxLength": 200 + i})).collect();
    let many_objects: Vec<Value> = (0..64)
        .map(|i| {
            json!({"type": "object", "properties": {format!("key{i}"): {"type": "string"}},
                   "required": [format!("key{i}")]})
        })
        .collect();
    let nested_arrays = (0..8).fold(
        json!({"type": "string"}),
        |inner, _| json!({"anyOf": [{"type": "array", "items": inner}, {"type": "string"}]}),
    );
    // The most an enum may hold: 65,535 strings sharing a 24-byte prefix.
    let big_enum: Vec<Value> =
        (0..65_535).map(|i| json!(format!("a-long-shared-prefix-for-{i:05}"))).collect();
    vec![
        ("any JSON (format: json)", json!("json")),
        (
            "an object with a string, a number and an enum",
            json!({"type": "object", "properties": {
                "name": {"type": "string"}, "age": {"type": "integer"},
                "role": {"enum": ["admin", "user", "guest"]}},
                "required": ["name", "age", "role"]}),
        ),
        ("anyOf 64 strings of different lengths", json!({"anyOf": many_strings})),
        ("anyOf 64 objects with different keys", json!({"anyOf": many_objects})),
        ("anyOf arrays or strings, 8 deep", nested_arrays),
        ("enum of 65,535 strings with a shared prefix", json!({"enum": big_enum})),
    ]
}

fn main() {
    let arg = std::env::args().nth(1);
    let vocab = match &arg {
        Some(path) => gguf_vocab(path),
        None => synthetic_vocab(262_144),
    };
    let source = arg.as_deref().unwrap_or("synthetic");
    println!("vocabulary: {} tokens ({source})", vocab.len());
    let eog = vocab.len() as u32;
    let mut by_id = vocab;
    by_id.push(b"<eos>".to_vec());
    let table = Arc::new(TokenTable::new(by_id.clone(), vec![eog], &[]));
    println!("| schema | steps | mean ms/token | worst ms/token |");
    println!("| --- | ---: | ---: | ---: |");
    for (name, format) in schemas() {
        let grammar = match Grammar::from_format(&format) {
            Ok(Some(g)) => Arc::new(g),
            other => panic!("{name}: {other:?}"),
        };
        let mut c = JsonConstraint::new(grammar, table.clone());
        let (mut total, mut worst, mut steps) = (0f64, 0f64, 0usize);
        let mut logits = vec![0f32; by_id.len()];
        for _ in 0..400 {
            logits.iter_mut().for_each(|l| *l = 0.0);
            let t = Instant::now();
            c.mask(&mut logits);
            let ms = t.elapsed().as_secs_f64() * 1e3;
            total += ms;
            worst = worst.max(ms);
            steps += 1;
            // The shortest allowed token (ties: the lowest id) keeps documents growing
            // slowly, so strings stay open and interpretations stay alive.
            let pick = (0..by_id.len())
                .filter(|&i| logits[i].is_finite())
                .min_by_key(|&i| (by_id[i].len(), i));
            match pick {
                Some(i) if i as u32 != eog => c.accept(i as u32),
                _ => break,
            }
        }
        println!("| {name} | {steps} | {:.2} | {worst:.2} |", total / steps as f64);
    }
}
