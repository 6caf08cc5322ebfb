//! Writes the GGUF seed corpus (`fuzz/seeds/gguf_reader/`) with corral-gguf's own writer
//! and model generator: small files that reach every value type, nested arrays, every
//! tensor type the generator writes, a custom alignment, GGUF v2, and a real generated
//! llama model at the smallest shape the generator takes.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --bin gen_seeds [-- DIR]`

use std::path::{Path, PathBuf};

use corral_gguf::generate::{GenerateOptions, ModelShape, WeightType, generate_llama};
use corral_gguf::writer::{GgufBuilder, tensor_size};
use corral_gguf::{GgmlType, GgufError, Value, ValueType};

fn main() {
    let dir = std::env::args_os().nth(1).map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/gguf_reader"),
        PathBuf::from,
    );
    if let Err(e) = run(&dir) {
        eprintln!("gen_seeds: {e}");
        std::process::exit(1);
    }
}

fn run(dir: &Path) -> Result<(), GgufError> {
    std::fs::create_dir_all(dir).map_err(|e| GgufError::io("creating the seed folder", e))?;
    let save = |name: &str, bytes: Vec<u8>| -> Result<(), GgufError> {
        let path = dir.join(name);
        std::fs::write(&path, &bytes).map_err(|e| GgufError::io("writing a seed", e))?;
        println!("{} ({} bytes)", path.display(), bytes.len());
        Ok(())
    };

    save("empty.gguf", build(GgufBuilder::new())?)?;

    let mut b = GgufBuilder::new();
    b.add_metadata("general.architecture", Value::String("llama".into()))?;
    let mut v2 = build(b)?;
    v2[4..8].copy_from_slice(&2u32.to_le_bytes());
    save("version2.gguf", v2)?;

    let mut b = GgufBuilder::new();
    b.add_metadata("u8", Value::U8(200))?;
    b.add_metadata("i8", Value::I8(-5))?;
    b.add_metadata("u16", Value::U16(60_000))?;
    b.add_metadata("i16", Value::I16(-300))?;
    b.add_metadata("u32", Value::U32(4_000_000_000))?;
    b.add_metadata("i32", Value::I32(-70_000))?;
    b.add_metadata("f32", Value::F32(1.5))?;
    b.add_metadata("bool", Value::Bool(true))?;
    b.add_metadata("string", Value::String("héllo\0world".into()))?;
    b.add_metadata("u64", Value::U64(u64::MAX))?;
    b.add_metadata("i64", Value::I64(i64::MIN))?;
    b.add_metadata("f64", Value::F64(-0.25))?;
    b.add_metadata("empty", ValueType::U32.empty_array())?;
    b.add_metadata(
        "nested",
        Value::Array {
            elem_type: ValueType::Array,
            values: vec![
                Value::Array { elem_type: ValueType::I16, values: vec![Value::I16(1)] },
                Value::Array {
                    elem_type: ValueType::String,
                    values: vec![Value::String("a".into()), Value::String(String::new())],
                },
            ],
        },
    )?;
    b.add_tensor("f32", &[4], GgmlType::F32)?;
    b.add_tensor("f16", &[8, 2], GgmlType::F16)?;
    b.add_tensor("q8_0", &[32, 2], GgmlType::Q8_0)?;
    b.add_tensor("q4_0", &[32], GgmlType::Q4_0)?;
    b.add_tensor("q4_k", &[256], GgmlType::Q4_K)?;
    b.add_tensor("i32.3d", &[2, 2, 2], GgmlType::I32)?;
    save("every_type.gguf", build(b)?)?;

    let mut b = GgufBuilder::new();
    b.add_metadata("general.alignment", Value::U32(64))?;
    b.add_metadata("general.architecture", Value::String("qwen2".into()))?;
    b.add_metadata("general.file_type", Value::U32(7))?;
    b.add_tensor("blk.0.attn_q.weight", &[32, 4], GgmlType::Q8_0)?;
    b.add_tensor("output_norm.weight", &[32], GgmlType::F32)?;
    save("alignment64.gguf", build(b)?)?;

    let mut b = GgufBuilder::new();
    b.add_metadata("general.architecture", Value::String("llama".into()))?;
    b.add_metadata("general.name", Value::String("seed".into()))?;
    b.add_metadata("llama.context_length", Value::U32(128))?;
    b.add_metadata("llama.embedding_length", Value::U32(8))?;
    b.add_metadata("llama.block_count", Value::U32(1))?;
    b.add_metadata("tokenizer.ggml.model", Value::String("gpt2".into()))?;
    let tokens = ["<s>", "</s>", "a", "b", "ab", "Ġ", "<|im_start|>", "<|im_end|>"];
    b.add_metadata(
        "tokenizer.ggml.tokens",
        Value::Array {
            elem_type: ValueType::String,
            values: tokens.iter().map(|t| Value::String((*t).into())).collect(),
        },
    )?;
    b.add_metadata(
        "tokenizer.ggml.token_type",
        Value::Array {
            elem_type: ValueType::I32,
            values: [3, 3, 1, 1, 1, 1, 3, 3].into_iter().map(Value::I32).collect(),
        },
    )?;
    b.add_metadata(
        "tokenizer.ggml.merges",
        Value::Array { elem_type: ValueType::String, values: vec![Value::String("a b".into())] },
    )?;
    b.add_metadata("tokenizer.ggml.bos_token_id", Value::U32(0))?;
    b.add_metadata("tokenizer.ggml.eos_token_id", Value::U32(1))?;
    b.add_metadata("tokenizer.chat_template", Value::String(chatml().into()))?;
    b.add_tensor("token_embd.weight", &[8, 8], GgmlType::F16)?;
    b.add_tensor("output_norm.weight", &[8], GgmlType::F32)?;
    save("llama_small.gguf", build(b)?)?;

    // A real generated model at the smallest shape: 260 tokens, 8 wide, one layer.
    let shape = ModelShape {
        n_vocab: 260,
        n_embd: 8,
        n_layer: 1,
        n_ff: 8,
        n_head: 2,
        n_head_kv: 1,
        n_ctx_train: 64,
        ..ModelShape::tiny()
    };
    let path = dir.join("generated_llama.gguf");
    let opts = GenerateOptions {
        shape,
        weight_type: WeightType::F16,
        seed: 1,
        name: "seed".into(),
        ..Default::default()
    };
    let report = generate_llama(&path, &opts)?;
    println!("{} ({} bytes)", path.display(), report.file_size);
    Ok(())
}

/// ChatML, the template the generator writes by default.
fn chatml() -> &'static str {
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + \
     message['content'] + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}\
     {{ '<|im_start|>assistant\\n' }}{% endif %}"
}

/// The bytes of the file `b` describes, every tensor filled with a byte pattern.
fn build(b: GgufBuilder) -> Result<Vec<u8>, GgufError> {
    let tensors: Vec<(String, u64)> = b
        .tensors()
        .iter()
        .map(|t| (t.name.clone(), tensor_size(&t.dims, t.ggml_type).unwrap_or(t.size)))
        .collect();
    let mut w = b.begin(Vec::new())?;
    for (name, size) in tensors {
        let bytes: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        w.write_tensor(&name, &bytes)?;
    }
    w.finish()
}
