//! The engine through its Rust traits on generated models: batches mixing sequences equal
//! single decodes, KV edits, embeddings, tokenization, and bad files as clear errors.

use corral_backend_api::{
    BatchEntry, Capabilities, ContextParams, ErrorKind, LoadRequest,
    plugin::{Backend, Context, Model},
};
use corral_backend_cpu::{CpuBackend, CpuModel, CpuOptions};
use corral_gguf::generate::{GenerateOptions, ModelShape, WeightType, generate_llama};

fn model(dir: &std::path::Path, ty: WeightType) -> (CpuModel, std::path::PathBuf) {
    let path = dir.join(format!("tiny-{ty:?}.gguf"));
    let opts = GenerateOptions {
        shape: ModelShape::tiny(),
        weight_type: ty,
        seed: 3,
        name: "tiny".into(),
        ..Default::default()
    };
    generate_llama(&path, &opts).expect("generate");
    (load(&path).expect("load"), path)
}

fn load(path: &std::path::Path) -> Result<CpuModel, corral_backend_api::BackendError> {
    CpuBackend::with_options(CpuOptions::default())
        .load_model(&LoadRequest::new(path.to_string_lossy(), "gguf"))
}

/// Loads `path` with the load option `kv_cache_type` set to `kv`.
fn load_with_kv(
    path: &std::path::Path,
    kv: &str,
) -> Result<CpuModel, corral_backend_api::BackendError> {
    let mut request = LoadRequest::new(path.to_string_lossy(), "gguf");
    request.settings.extra.push((corral_backend_api::EXTRA_KV_CACHE_TYPE.into(), kv.into()));
    CpuBackend::with_options(CpuOptions::default()).load_model(&request)
}

fn params(n_seq: u32) -> ContextParams {
    ContextParams { n_ctx: 256, n_batch: 256, n_seq_max: n_seq, n_threads: 2, ..Default::default() }
}

fn prefill(c: &mut impl Context, seq: u32, start: u32, toks: &[u32]) -> Vec<f32> {
    let batch: Vec<BatchEntry> = toks
        .iter()
        .enumerate()
        .map(|(i, &t)| BatchEntry {
            token: t,
            pos: start + i as u32,
            seq,
            logits: i + 1 == toks.len(),
        })
        .collect();
    c.decode(&batch).expect("decode");
    c.logits(toks.len() as u32 - 1).expect("logits").to_vec()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn mixed_batch_and_token_by_token_agree() {
    let dir = tempfile::tempdir().unwrap();
    for ty in [WeightType::F32, WeightType::Q4_0] {
        let (m, _) = model(dir.path(), ty);
        let texts = ["Hello world, how are you", "Once upon a time", "fn main() {}"];
        let seqs: Vec<Vec<u32>> =
            texts.iter().map(|t| m.tokenize(t, true, false).unwrap()).collect();
        let single: Vec<Vec<f32>> = seqs
            .iter()
            .map(|s| {
                let mut c = m.new_context(&params(1)).unwrap();
                prefill(&mut c, 0, 0, s)
            })
            .collect();
        // Token by token in one sequence gives the same logits (other kernels).
        let mut c = m.new_context(&params(1)).unwrap();
        let mut last = Vec::new();
        for (i, &t) in seqs[0].iter().enumerate() {
            last = prefill(&mut c, 0, i as u32, &[t]);
        }
        let tol = if ty == WeightType::F32 { 1e-3 } else { 0.2 };
        assert!(max_diff(&last, &single[0]) < tol, "{ty:?}: {}", max_diff(&last, &single[0]));
        // Interleaved in one batch.
        let mut c = m.new_context(&params(3)).unwrap();
        let mut batch = Vec::new();
        let mut idx = [0usize; 3];
        for pos in 0..seqs.iter().map(Vec::len).max().unwrap() {
            for (s, toks) in seqs.iter().enumerate() {
                if let Some(&token) = toks.get(pos) {
                    let lastp = pos + 1 == toks.len();
                    if lastp {
                        idx[s] = batch.len();
                    }
                    batch.push(BatchEntry { token, pos: pos as u32, seq: s as u32, logits: lastp });
                }
            }
        }
        c.decode(&batch).unwrap();
        for s in 0..3 {
            let got = c.logits(idx[s] as u32).unwrap();
            assert!(max_diff(got, &single[s]) < 1e-4, "{ty:?} seq {s}");
        }
        assert!(c.logits(0).is_err() || batch[0].logits);
    }
}

#[test]
fn kv_edits_and_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    let (m, _) = model(dir.path(), WeightType::F16);
    let t = m.tokenize("The quick brown fox jumps", true, false).unwrap();
    let n = t.len();
    let mut c = m.new_context(&params(2)).unwrap();
    let full = prefill(&mut c, 0, 0, &t);
    assert_eq!(c.kv_pos_max(0), n as i32 - 1);
    // Remove the tail and re-decode it.
    c.kv_remove(0, n as i32 - 2, -1).unwrap();
    assert_eq!(c.kv_pos_max(0), n as i32 - 3);
    let again = prefill(&mut c, 0, n as u32 - 2, &t[n - 2..]);
    assert!(max_diff(&full, &again) < 1e-3);
    // Copy the prefix to sequence 1 and continue there.
    c.kv_copy(0, 1, 0, n as i32 - 1).unwrap();
    assert_eq!(c.kv_pos_max(1), n as i32 - 2);
    let copied = prefill(&mut c, 1, n as u32 - 1, &t[n - 1..]);
    assert!(max_diff(&full, &copied) < 1e-3);
    // Positions must continue a sequence.
    let gap = [BatchEntry { token: 1, pos: n as u32 + 5, seq: 0, logits: true }];
    assert_eq!(c.decode(&gap).unwrap_err().kind, ErrorKind::InvalidInput);
    c.kv_clear().unwrap();
    assert_eq!(c.kv_pos_max(0), -1);
    assert_eq!(c.kv_pos_max(1), -1);
    // A full cache.
    let mut small = m
        .new_context(&ContextParams { n_ctx: 8, n_batch: 8, n_seq_max: 2, ..Default::default() })
        .unwrap();
    prefill(&mut small, 0, 0, &t[..5.min(n)]);
    let more: Vec<BatchEntry> =
        (0..5).map(|i| BatchEntry { token: 1, pos: i, seq: 1, logits: false }).collect();
    assert_eq!(small.decode(&more).unwrap_err().kind, ErrorKind::ContextFull);

    // Embeddings: mean pooling per sequence.
    let mut e = m.new_context(&ContextParams { embeddings: true, ..params(2) }).unwrap();
    let a: Vec<BatchEntry> = t
        .iter()
        .enumerate()
        .map(|(i, &tok)| BatchEntry { token: tok, pos: i as u32, seq: 0, logits: false })
        .chain([BatchEntry { token: t[0], pos: 0, seq: 1, logits: false }])
        .collect();
    e.decode(&a).unwrap();
    let ea = e.embeddings(0).unwrap();
    let eb = e.embeddings(1).unwrap();
    assert_eq!(ea.len(), m.hparams().n_embd);
    assert_ne!(ea, eb);
    assert!(e.logits(0).is_err());
}

#[test]
fn tokenizer_round_trips_and_specials() {
    let dir = tempfile::tempdir().unwrap();
    let (m, _) = model(dir.path(), WeightType::Q8_0);
    for text in ["héllo, wörld — 日本語 🦀", "  spaces\tand\nlines", ""] {
        let t = m.tokenize(text, false, false).unwrap();
        assert_eq!(m.detokenize(&t).unwrap(), text);
    }
    let sp = m.special_tokens();
    let bos = sp.bos.unwrap();
    let t = m.tokenize("<|im_start|>hi", true, true).unwrap();
    assert_eq!(t[0], bos);
    assert_eq!(m.detokenize(&t[1..2]).unwrap(), "<|im_start|>");
    assert!(sp.eog.contains(&sp.eos.unwrap()));
    assert!(sp.eog.contains(&sp.eot.unwrap()));
    assert_eq!(m.token_to_bytes(m.vocab_size()).unwrap_err().kind, ErrorKind::InvalidInput);
}

#[test]
fn bad_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (_, good) = model(dir.path(), WeightType::F32);
    let missing = load(&dir.path().join("missing.gguf")).err().unwrap();
    assert_eq!(missing.kind, ErrorKind::NotFound);
    let not = dir.path().join("not.gguf");
    std::fs::write(&not, b"hello, not a model").unwrap();
    let e = load(&not).err().unwrap();
    assert_eq!(e.kind, ErrorKind::InvalidInput);
    assert!(e.message().contains("not a GGUF file"), "{e}");
    let bytes = std::fs::read(&good).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = load(&cut).err().unwrap();
    assert_eq!(e.kind, ErrorKind::InvalidInput);
    assert!(e.message().contains("truncated"), "{e}");
    // Another architecture: patch the architecture string in the header.
    let mut patched = bytes.clone();
    let pos = patched.windows(5).position(|w| w == b"llama").unwrap();
    patched[pos..pos + 5].copy_from_slice(b"gemma");
    let other = dir.path().join("other.gguf");
    std::fs::write(&other, &patched).unwrap();
    let e = load(&other).err().unwrap();
    assert!(matches!(e.kind, ErrorKind::Unsupported | ErrorKind::InvalidInput), "{e}");
}

/// The capabilities the engine declares are the ones it has: logits, embeddings, a
/// working `kv_shift` and KV cache types (tested below); no per-sequence context of its
/// own.
#[test]
fn declared_capabilities_hold() {
    let dir = tempfile::tempdir().unwrap();
    let (m, _) = model(dir.path(), WeightType::F32);
    let caps = m.capabilities();
    assert_eq!(caps.names(), ["generation", "embeddings", "context-shift", "kv-cache-types"]);
    assert!(!caps.contains(Capabilities::PER_SEQUENCE_CONTEXT));
    let toks = m.tokenize("Once upon a time there was", true, false).unwrap();
    let mut c = m.new_context(&params(1)).unwrap();
    prefill(&mut c, 0, 0, &toks);
    c.kv_remove(0, 1, 3).unwrap();
    c.kv_shift(0, 3, -1, -2).unwrap();
    assert_eq!(c.kv_pos_max(0), toks.len() as i32 - 3);
    let mut e = m.new_context(&ContextParams { embeddings: true, ..params(1) }).unwrap();
    e.decode(&[BatchEntry { token: toks[0], pos: 0, seq: 0, logits: false }]).unwrap();
    assert_eq!(e.embeddings(0).unwrap().len(), m.hparams().n_embd);
}

/// A Q8_0 or Q4_0 KV cache (`kv_cache_type`) gives logits close to the F16 cache's, in
/// one batch and token by token, and every KV edit works on it: removing and re-decoding
/// a tail, copying a prefix to another sequence, and a context shift (keys read, rotated
/// and quantized again) against decoding at the shifted positions from the start. A head
/// that is not whole blocks of 32, and a type the engine does not know, are refused with
/// the reason.
#[test]
fn quantized_kv_caches_follow_f16_through_decoding_and_kv_edits() {
    let dir = tempfile::tempdir().unwrap();
    // Heads of 32 (one block) and of 64 (two blocks, kept under llama.cpp's Hadamard
    // rotation, which a context shift takes out and puts back).
    for head in [32, 64] {
        let path = dir.path().join(format!("heads-of-{head}.gguf"));
        let shape = ModelShape { n_embd_head: Some(head), ..ModelShape::tiny() };
        let opts = GenerateOptions {
            shape,
            weight_type: WeightType::F32,
            seed: 5,
            name: "tiny".into(),
            ..Default::default()
        };
        generate_llama(&path, &opts).expect("generate");
        follows_f16(&path);
    }
    let (_, tiny) = model(dir.path(), WeightType::F32);
    let e = load_with_kv(&tiny, "q4_0").err().expect("heads of 16");
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert!(e.message().contains("multiple of 32") && e.message().contains("f16"), "{e}");
    let e = load_with_kv(&tiny, "q5_9").err().expect("an unknown type");
    assert_eq!(e.kind, ErrorKind::InvalidInput);
    assert!(e.message().contains("f16, q8_0 or q4_0"), "{e}");
}

/// The checks of `quantized_kv_caches_follow_f16_through_decoding_and_kv_edits` on the
/// model at `path`.
fn follows_f16(path: &std::path::Path) {
    let f16 = load_with_kv(path, "f16").expect("load f16");
    let toks = f16.tokenize("The quick brown fox jumps over the lazy dog", true, false).unwrap();
    let n = toks.len();
    let reference = prefill(&mut f16.new_context(&params(1)).unwrap(), 0, 0, &toks);
    let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (ty, tol) in [("q8_0", 0.02), ("q4_0", 0.15)] {
        let m = load_with_kv(path, ty).expect("load");
        let close = |what: &str, got: &[f32], want: &[f32], tol: f32| {
            let d = max_diff(got, want);
            println!("{ty}: {what}: {d:.2e} (of logits up to {scale:.2})");
            assert!(d < tol * scale, "{ty}: {what} differs by {d}");
        };
        let mut c = m.new_context(&params(2)).unwrap();
        let full = prefill(&mut c, 0, 0, &toks);
        close("one batch against f16", &full, &reference, tol);
        let mut t = m.new_context(&params(1)).unwrap();
        let mut last = Vec::new();
        for (i, &tok) in toks.iter().enumerate() {
            last = prefill(&mut t, 0, i as u32, &[tok]);
        }
        close("token by token against f16", &last, &reference, tol);
        close("token by token against one batch", &last, &full, tol / 4.0);
        // Remove the tail and decode it again; copy the prefix and continue elsewhere.
        c.kv_remove(0, n as i32 - 2, -1).unwrap();
        assert_eq!(c.kv_pos_max(0), n as i32 - 3);
        let again = prefill(&mut c, 0, n as u32 - 2, &toks[n - 2..]);
        close("tail decoded again", &again, &full, 1e-3);
        c.kv_copy(0, 1, 0, n as i32 - 1).unwrap();
        let copied = prefill(&mut c, 1, n as u32 - 1, &toks[n - 1..]);
        close("copied prefix", &copied, &full, 1e-3);
        // Shift by 37 against the prompt decoded at 37.. from the start.
        let mut s = m.new_context(&params(1)).unwrap();
        prefill(&mut s, 0, 0, &toks[..n - 1]);
        s.kv_shift(0, 0, -1, 37).unwrap();
        let shifted = prefill(&mut s, 0, 36 + n as u32, &toks[n - 1..]);
        let fresh = prefill(&mut m.new_context(&params(1)).unwrap(), 0, 37, &toks);
        close("context shift", &shifted, &fresh, tol);
    }
}
