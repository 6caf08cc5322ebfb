//! Generates the tiny model in every weight type and reads it back with the reader.

use std::time::Instant;

use corral_gguf::GgmlType;
use corral_gguf::bpe::{Bpe, IM_END_TOKEN};
use corral_gguf::generate::{GenerateOptions, ModelShape, WeightType, generate_llama};
use corral_gguf::quant;
use corral_gguf::reader::GgufFile;

#[test]
fn tiny_model_in_every_weight_type_reads_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let shape = ModelShape::tiny();
    for wt in WeightType::ALL {
        let path = dir.path().join(format!("tiny-{wt}.gguf"));
        let opts = GenerateOptions {
            shape,
            weight_type: wt,
            seed: 7,
            name: format!("tiny-{wt}"),
            ..Default::default()
        };
        let t0 = Instant::now();
        let report = generate_llama(&path, &opts).expect("generate");
        println!("{wt}: {report} (test saw {:?})", t0.elapsed());
        assert!(!dir.path().join(format!("tiny-{wt}.gguf.partial")).exists());

        let f = GgufFile::open(&path).expect("read back");
        assert_eq!(f.version(), 3);
        assert_eq!(f.file_len(), report.file_size);
        assert_eq!(f.alignment(), 32);
        assert_eq!(f.architecture(), Some("llama"));
        assert_eq!(f.get_str("general.name"), Some(opts.name.as_str()));
        assert_eq!(f.get_u32("general.file_type"), Some(wt.file_type()));
        assert_eq!(f.get_bool("general.random_weights"), Some(true));
        assert_eq!(f.get_u64("corral.generator.seed"), Some(7));
        assert_eq!(f.get_u32("llama.context_length"), Some(shape.n_ctx_train));
        assert_eq!(f.get_u32("llama.embedding_length"), Some(shape.n_embd));
        assert_eq!(f.get_u32("llama.block_count"), Some(shape.n_layer));
        assert_eq!(f.get_u32("llama.feed_forward_length"), Some(shape.n_ff));
        assert_eq!(f.get_u32("llama.attention.head_count"), Some(shape.n_head));
        assert_eq!(f.get_u32("llama.attention.head_count_kv"), Some(shape.n_head_kv));
        assert_eq!(f.get_u32("llama.rope.dimension_count"), Some(shape.n_embd / shape.n_head));
        assert_eq!(f.get_u32("llama.vocab_size"), Some(shape.n_vocab));
        assert_eq!(f.get_f64("llama.rope.freq_base"), Some(10000.0));
        let eps = f.get_f64("llama.attention.layer_norm_rms_epsilon").expect("eps");
        assert!((eps - 1e-5).abs() < 1e-9);
        assert_eq!(f.get_str("tokenizer.ggml.model"), Some("gpt2"));
        assert_eq!(f.get_str("tokenizer.ggml.pre"), Some("gpt-2"));
        let n_vocab = shape.n_vocab as usize;
        assert_eq!(f.get_array_len("tokenizer.ggml.tokens"), Some(n_vocab));
        assert_eq!(f.get_array_len("tokenizer.ggml.token_type"), Some(n_vocab));
        assert_eq!(f.get_array_len("tokenizer.ggml.merges"), Some(report.merges));
        let tokens = f.get_str_array("tokenizer.ggml.tokens").expect("tokens");
        assert_eq!(
            tokens[f.get_u32("tokenizer.ggml.eot_token_id").expect("eot") as usize],
            IM_END_TOKEN
        );
        assert_eq!(
            tokens[f.get_u32("tokenizer.ggml.bos_token_id").expect("bos") as usize],
            "<|begin_of_text|>"
        );
        assert_eq!(
            tokens[f.get_u32("tokenizer.ggml.eos_token_id").expect("eos") as usize],
            "<|end_of_text|>"
        );
        assert_eq!(f.get_bool("tokenizer.ggml.add_bos_token"), Some(true));
        let template = f.get_str("tokenizer.chat_template").expect("template");
        assert!(template.contains("<|im_start|>") && template.contains("add_generation_prompt"));

        // Tensors: names, dims, types, sizes, and the data ends at the end of the file.
        // The rows (64, 128 wide) are not whole 256-blocks: the K types fall back.
        let (e, v, ff, kv) = (64u64, 512u64, 128u64, 32u64);
        let mat = match wt {
            WeightType::Q4_K | WeightType::Q4_K_M => GgmlType::Q5_0,
            WeightType::Q5_K => GgmlType::Q5_1,
            WeightType::Q6_K => GgmlType::Q8_0,
            other => other.ggml_type(),
        };
        // Q4_K_M: the output Q8_0 (its Q6_K falls back), attn_v and ffn_down of the last
        // of the 2 layers Q6_K → Q8_0 (more bits).
        let (out, more) =
            if wt == WeightType::Q4_K_M { (GgmlType::Q8_0, GgmlType::Q8_0) } else { (mat, mat) };
        let mut expected = vec![
            ("token_embd.weight".to_string(), vec![e, v], mat),
            ("output_norm.weight".to_string(), vec![e], GgmlType::F32),
            ("output.weight".to_string(), vec![e, v], out),
        ];
        for i in 0..2 {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            expected.extend([
                (n("attn_norm"), vec![e], GgmlType::F32),
                (n("attn_q"), vec![e, e], mat),
                (n("attn_k"), vec![e, kv], mat),
                (n("attn_v"), vec![e, kv], if i == 1 { more } else { mat }),
                (n("attn_output"), vec![e, e], mat),
                (n("ffn_norm"), vec![e], GgmlType::F32),
                (n("ffn_gate"), vec![e, ff], mat),
                (n("ffn_up"), vec![e, ff], mat),
                (n("ffn_down"), vec![ff, e], if i == 1 { more } else { mat }),
            ]);
        }
        assert_eq!(f.tensors().len(), expected.len());
        let mut end = 0;
        for (name, dims, ty) in &expected {
            let t = f.tensor(name).unwrap_or_else(|| panic!("{wt}: missing {name}"));
            assert_eq!(&t.dims, dims, "{name}");
            assert_eq!(t.ggml_type, *ty, "{name}");
            let n: u64 = dims.iter().product();
            assert_eq!(t.size, n / ty.block_size() * ty.type_size(), "{name}");
            assert_eq!(t.offset % 32, 0);
            end = end.max(f.data_offset() + t.offset + t.size);
        }
        assert_eq!(end.div_ceil(32) * 32, f.file_len());
        assert_eq!(
            f.tensors().iter().map(corral_gguf::reader::TensorInfo::n_elements).sum::<u64>(),
            shape.parameter_count()
        );

        // The data decodes to what was intended: norms near 1, matrices spread.
        let norm = f.tensor("output_norm.weight").expect("norm");
        let vals = quant::dequantize(norm.ggml_type, &f.read_tensor_bytes(norm).expect("read"), 64)
            .expect("decode");
        assert!(vals.iter().all(|x| (0.7..1.3).contains(x)), "{vals:?}");
        let q = f.tensor("blk.1.attn_q.weight").expect("q");
        let vals = quant::dequantize(q.ggml_type, &f.read_tensor_bytes(q).expect("read"), 4096)
            .expect("decode");
        let rms = (vals.iter().map(|x| x * x).sum::<f32>() / vals.len() as f32).sqrt();
        assert!((rms - 0.125).abs() < 0.02, "{wt}: rms {rms}");

        let s = f.summary();
        assert_eq!(s.architecture.as_deref(), Some("llama"));
        let quantization = match wt {
            WeightType::Q4_K => "Q4_K_S",
            WeightType::Q5_K => "Q5_K_S",
            other => other.name(),
        };
        assert_eq!(s.quantization, quantization);
        assert_eq!(s.context_length, Some(512));
        assert_eq!(s.embedding_length, Some(64));
        assert_eq!(s.block_count, Some(2));
        assert_eq!(s.parameter_count, shape.parameter_count());
        assert!(s.chat_template.is_some());
    }
}

#[test]
fn the_vocabulary_in_the_file_encodes_like_the_reference() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("m.gguf");
    let opts = GenerateOptions { seed: 3, ..Default::default() };
    generate_llama(&path, &opts).expect("generate");
    let f = GgufFile::open(&path).expect("read");
    let bpe = Bpe::train(512, 3).expect("train");
    assert_eq!(f.get_str_array("tokenizer.ggml.tokens").expect("tokens"), bpe.tokens());
    assert_eq!(f.get_str_array("tokenizer.ggml.merges").expect("merges"), bpe.merges_text());
    let ids = bpe.encode("Hello world, the café is open.");
    assert_eq!(bpe.decode(&ids), "Hello world, the café is open.".as_bytes());
}

#[test]
fn tokenizer_loaded_from_the_file_matches_the_trained_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("m.gguf");
    let opts = GenerateOptions {
        shape: ModelShape::parse("tiny:n_vocab=3000").expect("shape"),
        seed: 11,
        ..Default::default()
    };
    generate_llama(&path, &opts).expect("generate");
    let f = GgufFile::open(&path).expect("read");
    let loaded = Bpe::from_gguf(&f).expect("tokenizer from file");
    let trained = Bpe::train(3000, 11).expect("train");
    assert_eq!(loaded.vocab_size(), 3000);
    assert_eq!(
        (loaded.bos_id(), loaded.eos_id(), loaded.eot_id()),
        (Some(2996), Some(2997), Some(2999))
    );
    for text in [
        "Hello world, the café is open.",
        "fn main() { let x = 42; }\n\n  indented",
        "naïve 日本語 🙂 ~!@#$%^&*()",
    ] {
        let ids = loaded.encode(text);
        assert_eq!(ids, trained.encode(text), "{text:?}");
        assert_eq!(loaded.decode(&ids), text.as_bytes());
    }
    let chat = "<|im_start|>user\nhi<|im_end|>\n";
    assert_eq!(loaded.encode_with_special(chat), trained.encode_with_special(chat));
}

#[test]
fn every_architecture_writes_what_llama_cpp_reads() {
    use corral_gguf::generate::{Arch, VocabKind, generate_model};
    use corral_gguf::spm::{SpecialStyle, Spm};
    let dir = tempfile::tempdir().expect("temp dir");
    for arch in Arch::ALL {
        let opts = GenerateOptions { arch, seed: 4, ..Default::default() };
        let path = dir.path().join(format!("{arch}.gguf"));
        let report = generate_model(&path, &opts).expect("generate");
        let again = dir.path().join(format!("{arch}-again.gguf"));
        generate_model(&again, &opts).expect("generate");
        assert_eq!(std::fs::read(&path).expect("read"), std::fs::read(&again).expect("read"));

        let f = GgufFile::open(&path).expect("read back");
        let a = arch.gguf_name();
        assert_eq!(f.architecture(), Some(a));
        let key = |k: &str| f.get(&format!("{a}.{k}")).is_some();
        for k in ["context_length", "embedding_length", "block_count", "feed_forward_length"] {
            assert!(key(k), "{arch}: {k}");
        }
        let has = |n: &str| f.tensor(n).is_some();
        let tied = matches!(arch, Arch::Gemma2 | Arch::Gemma3);
        assert_eq!(!has("output.weight"), tied, "{arch}: tied embeddings");
        assert_eq!(has("rope_freqs.weight"), arch == Arch::Llama3);
        assert_eq!(has("blk.1.attn_qkv.weight"), arch == Arch::Phi3);
        assert_eq!(has("blk.1.ffn_gate.weight"), arch != Arch::Phi3);
        assert_eq!(has("blk.1.attn_k.bias"), arch == Arch::Qwen2);
        let qk_norm = matches!(arch, Arch::Qwen3 | Arch::Gemma3);
        assert_eq!(has("blk.1.attn_q_norm.weight"), qk_norm, "{arch}");
        let post = matches!(arch, Arch::Gemma2 | Arch::Gemma3);
        assert_eq!(has("blk.1.post_attention_norm.weight"), post, "{arch}");
        assert_eq!(has("blk.1.post_ffw_norm.weight"), post, "{arch}");
        assert_eq!(key("attention.sliding_window"), post, "{arch}");
        assert_eq!(key("final_logit_softcapping"), arch == Arch::Gemma2, "{arch}");
        assert_eq!(key("attn_logit_softcapping"), arch == Arch::Gemma2, "{arch}");
        assert_eq!(key("rope.freq_base_swa"), arch == Arch::Gemma3, "{arch}");
        assert_eq!(
            key("attention.key_length"),
            matches!(arch, Arch::Qwen3 | Arch::Gemma2 | Arch::Gemma3)
        );
        assert_eq!(
            f.tensors().iter().map(corral_gguf::reader::TensorInfo::n_elements).sum::<u64>(),
            report.parameter_count
        );

        let spm = matches!(arch, Arch::Gemma2 | Arch::Gemma3 | Arch::Phi3);
        assert_eq!(report.vocab_kind == VocabKind::SentencePiece, spm);
        let tokens = f.get_str_array("tokenizer.ggml.tokens").expect("tokens");
        if spm {
            assert_eq!(f.get_str("tokenizer.ggml.model"), Some("llama"));
            let style = if arch == Arch::Phi3 { SpecialStyle::Phi3 } else { SpecialStyle::Gemma };
            let reference = Spm::train(512, style, 4).expect("spm");
            assert_eq!(tokens, reference.tokens());
            assert_eq!(f.get_array_len("tokenizer.ggml.scores"), Some(512));
            assert_eq!(f.get_u32("tokenizer.ggml.eos_token_id"), reference.eos_id());
            let template = f.get_str("tokenizer.chat_template").expect("template");
            let marker = if arch == Arch::Phi3 { "<|assistant|>" } else { "<start_of_turn>" };
            assert!(template.contains(marker), "{arch}: {template}");
        } else {
            assert_eq!(f.get_str("tokenizer.ggml.model"), Some("gpt2"));
            assert_eq!(tokens, Bpe::train(512, 4).expect("bpe").tokens());
        }
    }
}

#[test]
fn q4_k_m_types_follow_llama_cpp() {
    use corral_gguf::generate::{Arch, generate_model};
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("m.gguf");
    let opts = GenerateOptions {
        arch: Arch::Qwen3,
        shape: ModelShape::parse("small:n_layer=8,n_vocab=1024").expect("shape"),
        weight_type: WeightType::Q4_K_M,
        ..Default::default()
    };
    let report = generate_model(&path, &opts).expect("generate");
    let f = GgufFile::open(&path).expect("read");
    for (name, ty) in &report.tensor_types {
        assert_eq!(f.tensor(name).expect("tensor").ggml_type, *ty);
    }
    let ty = |n: &str| f.tensor(n).expect("tensor").ggml_type;
    assert_eq!(ty("output.weight"), GgmlType::Q6_K);
    assert_eq!(ty("token_embd.weight"), GgmlType::Q4_K);
    assert_eq!(ty("blk.0.attn_norm.weight"), GgmlType::F32);
    // 8 layers: layers 0 and 7, and (i - 1) % 3 == 2 → 3 and 6, get Q6_K.
    for i in 0..8 {
        let want = if [0, 3, 6, 7].contains(&i) { GgmlType::Q6_K } else { GgmlType::Q4_K };
        assert_eq!(ty(&format!("blk.{i}.attn_v.weight")), want, "attn_v {i}");
        assert_eq!(ty(&format!("blk.{i}.ffn_down.weight")), want, "ffn_down {i}");
        assert_eq!(ty(&format!("blk.{i}.attn_q.weight")), GgmlType::Q4_K);
    }
    assert_eq!(f.get_u32("general.file_type"), Some(15));
    assert_eq!(f.summary().quantization, "Q4_K_M");
}
