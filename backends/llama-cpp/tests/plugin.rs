//! The plugin through its Rust traits (as an rlib), on tiny models from corral's generator.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use corral_backend_api::plugin::{Backend, Context, Model};
use corral_backend_api::{
    BatchEntry, Capabilities, ContextParams, DeviceKind, ErrorKind, LoadRequest,
};
use corral_backend_llama_cpp::{LlamaBackend, LlamaContext, LlamaModel, LlamaOptions};
use corral_gguf::generate::{
    Arch, GenerateOptions, ModelShape, WeightType, generate_llama, generate_model,
};

const PROMPT: &str = "The quick brown fox jumps over the lazy dog.";

struct Fixture {
    _dir: tempfile::TempDir,
    f32_path: PathBuf,
    backend: LlamaBackend,
    model: LlamaModel,
    /// Largest relative difference allowed between logits that one computation reaches
    /// through two batch shapes: 1e-4 on the CPU; 5e-3 when the model runs on a GPU,
    /// whose matrix products change kernels (and precision: TF32, f16 accumulation)
    /// with the batch size (measured on an H200 with CUDA 13: 4.1e-4).
    tolerance: f32,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let f32_path = dir.path().join("tiny-f32.gguf");
        let opts = GenerateOptions {
            shape: ModelShape::tiny(),
            weight_type: WeightType::F32,
            seed: 7,
            name: "corral-test-tiny".into(),
            ..Default::default()
        };
        generate_llama(&f32_path, &opts).expect("generate tiny model");
        let backend =
            LlamaBackend::with_options(LlamaOptions { n_threads: 2, ..Default::default() })
                .expect("init");
        let model = backend.load_model(&spec(&f32_path)).expect("load tiny model");
        let on_gpu = backend.devices().iter().any(|d| d.kind != DeviceKind::Cpu);
        let tolerance = if on_gpu { 5e-3 } else { 1e-4 };
        Fixture { _dir: dir, f32_path, backend, model, tolerance }
    })
}

fn spec(path: &Path) -> LoadRequest {
    let mut r = LoadRequest::new(path.to_string_lossy(), "gguf");
    r.settings.n_threads = 2;
    r
}

fn ctx(n_seq_max: u32, embeddings: bool) -> LlamaContext {
    let p = ContextParams {
        n_ctx: 256,
        n_batch: 128,
        n_seq_max,
        n_threads: 2,
        n_threads_batch: 2,
        embeddings,
        seed: 0,
    };
    fixture().model.new_context(&p).expect("context")
}

fn entries(tokens: &[u32], seq: u32, start: u32) -> Vec<BatchEntry> {
    let n = tokens.len();
    tokens
        .iter()
        .enumerate()
        .map(|(i, &t)| BatchEntry { token: t, pos: start + i as u32, seq, logits: i + 1 == n })
        .collect()
}

fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn argmax(l: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in l.iter().enumerate() {
        if v > l[best] {
            best = i;
        }
    }
    best as u32
}

#[test]
fn loads_and_reports_metadata() {
    let f = fixture();
    let m = f.model.metadata();
    assert_eq!(m.architecture.as_str(), "llama");
    assert_eq!(m.name.as_str(), "corral-test-tiny");
    assert_eq!(m.quantization.as_str(), "F32");
    assert_eq!(m.block_count, 2);
    assert_eq!(m.embedding_length, 64);
    assert_eq!(m.context_length, 512);
    assert!(m.parameter_count > 100_000, "{}", m.parameter_count);
    assert!(m.size_bytes > 0);
    assert_eq!(m.get("general.architecture"), Some("llama"));
    let tokens = m.get("tokenizer.ggml.tokens").expect("array summary");
    assert!(tokens.starts_with("[512 "), "{tokens}");
    assert!(m.get("llama_cpp.description").is_some());
    assert_eq!(f.model.vocab_size(), 512);
    let sp = f.model.special_tokens();
    assert!(sp.bos.is_some() && sp.eos.is_some());
    assert!(sp.eog.contains(sp.eos.as_ref().unwrap()));
    let devices = f.backend.devices();
    assert!(!devices.is_empty());
    println!("devices: {devices:?}\n{}", f.backend.describe());
}

/// llama.cpp says the tiny llama model's memory can shift and its attention is causal;
/// the plugin makes per-sequence contexts unless `kv_unified = true` shares them all, and
/// every context takes the load's KV cache type, flash attention setting and LoRA
/// adapters.
#[test]
fn declares_capabilities_as_llama_cpp_answers() {
    let f = fixture();
    let caps = f.model.capabilities();
    assert_eq!(
        caps.names(),
        [
            "generation",
            "embeddings",
            "context-shift",
            "per-sequence-context",
            "kv-cache-types",
            "flash-attention",
            "lora-adapters"
        ],
        "{caps:?}"
    );
    assert_eq!(f.model.capabilities(), caps, "asked once, answered the same");
    let unified =
        LlamaBackend::with_options(LlamaOptions { kv_unified: Some(true), ..Default::default() })
            .expect("init");
    let m = unified.load_model(&spec(&f.f32_path)).expect("load");
    assert!(!m.capabilities().contains(Capabilities::PER_SEQUENCE_CONTEXT));
    assert!(m.capabilities().contains(Capabilities::GENERATION | Capabilities::CONTEXT_SHIFT));
}

#[test]
fn tokenize_detokenize_round_trip() {
    let m = &fixture().model;
    for text in [PROMPT, "héllo wörld — ünïcode ✓ 日本語", "  spaces\nand\ttabs  "] {
        let toks = m.tokenize(text, false, false).unwrap();
        assert!(!toks.is_empty());
        assert_eq!(m.detokenize(&toks).unwrap(), text);
        let bytes: Vec<u8> = toks.iter().flat_map(|&t| m.token_to_bytes(t).unwrap()).collect();
        assert_eq!(String::from_utf8(bytes).unwrap(), text);
    }
    let sp = m.special_tokens();
    let with = m.tokenize(PROMPT, true, false).unwrap();
    if sp.add_bos {
        assert_eq!(Some(with[0]), sp.bos);
    }
    // Special token text is parsed only when asked.
    let bos = sp.bos.unwrap();
    let bos_text = String::from_utf8(m.token_to_bytes(bos).unwrap()).unwrap();
    assert_eq!(m.tokenize(&bos_text, false, true).unwrap(), vec![bos]);
    assert_ne!(m.tokenize(&bos_text, false, false).unwrap(), vec![bos]);
    assert!(m.tokenize("", false, false).unwrap().is_empty());
}

#[test]
fn token_out_of_range_is_an_error() {
    let m = &fixture().model;
    assert_eq!(m.token_to_bytes(512).unwrap_err().kind, ErrorKind::InvalidInput);
    assert_eq!(m.detokenize(&[1, 99_999]).unwrap_err().kind, ErrorKind::InvalidInput);
}

#[test]
fn mixed_batch_matches_sequences_one_by_one() {
    let m = &fixture().model;
    let prompts = [
        m.tokenize(PROMPT, true, false).unwrap(),
        m.tokenize("Hello there", true, false).unwrap(),
        m.tokenize("One two three four five six seven", true, false).unwrap(),
    ];
    // Alone, one sequence at a time.
    let mut solo = ctx(1, false);
    let mut expected = Vec::new();
    for p in &prompts {
        solo.kv_clear().unwrap();
        solo.decode(&entries(p, 0, 0)).unwrap();
        let first = solo.logits(p.len() as u32 - 1).unwrap().to_vec();
        let next = argmax(&first);
        solo.decode(&entries(&[next], 0, p.len() as u32)).unwrap();
        expected.push((first, next, solo.logits(0).unwrap().to_vec()));
    }
    // Together: entries of the three sequences interleaved in one batch.
    let mut mixed = ctx(3, false);
    let mut batch = Vec::new();
    let longest = prompts.iter().map(Vec::len).max().unwrap();
    for i in 0..longest {
        for (s, p) in prompts.iter().enumerate() {
            if i < p.len() {
                batch.push(BatchEntry {
                    token: p[i],
                    pos: i as u32,
                    seq: s as u32,
                    logits: i + 1 == p.len(),
                });
            }
        }
    }
    mixed.decode(&batch).unwrap();
    for (s, p) in prompts.iter().enumerate() {
        let idx = batch.iter().position(|e| e.seq == s as u32 && e.pos == p.len() as u32 - 1);
        let got = mixed.logits(idx.unwrap() as u32).unwrap();
        let d = rel_diff(got, &expected[s].0);
        assert!(d < fixture().tolerance, "sequence {s}: relative difference {d}");
    }
    // One more step for all three in one batch.
    let step: Vec<BatchEntry> = prompts
        .iter()
        .enumerate()
        .map(|(s, p)| BatchEntry {
            token: expected[s].1,
            pos: p.len() as u32,
            seq: s as u32,
            logits: true,
        })
        .collect();
    mixed.decode(&step).unwrap();
    for (s, exp) in expected.iter().enumerate() {
        let d = rel_diff(mixed.logits(s as u32).unwrap(), &exp.2);
        assert!(d < fixture().tolerance, "sequence {s} step 2: relative difference {d}");
    }
    // Entries that did not ask for logits have none.
    mixed.decode(&entries(&[5, 6], 0, prompts[0].len() as u32 + 1)).unwrap();
    assert_eq!(mixed.logits(0).unwrap_err().kind, ErrorKind::InvalidInput);
    assert_eq!(mixed.logits(2).unwrap_err().kind, ErrorKind::InvalidInput);
}

#[test]
fn kv_remove_then_redecode_gives_identical_logits() {
    let m = &fixture().model;
    let p = m.tokenize(PROMPT, true, false).unwrap();
    let n = p.len() as u32;
    let mut c = ctx(1, false);
    c.decode(&entries(&p[..p.len() - 1], 0, 0)).unwrap();
    c.decode(&entries(&p[p.len() - 1..], 0, n - 1)).unwrap();
    let first = c.logits(0).unwrap().to_vec();
    assert_eq!(c.kv_pos_max(0), n as i32 - 1);
    c.kv_remove(0, n as i32 - 1, -1).unwrap();
    assert_eq!(c.kv_pos_max(0), n as i32 - 2);
    c.decode(&entries(&p[p.len() - 1..], 0, n - 1)).unwrap();
    assert_eq!(c.logits(0).unwrap(), &first[..]);
    // Remove everything of every sequence.
    c.kv_remove(-1, 0, -1).unwrap();
    assert_eq!(c.kv_pos_max(0), -1);
}

/// With window-size caches for the sliding-window layers (`swa_full = false`, as llama-server),
/// a sequence can be cut back only to a position whose window it still holds: further
/// back `kv_remove` refuses (`InvalidInput`, which the host answers by evaluating the
/// prompt anew) and leaves the sequence as it was; a cut inside the window re-decodes to
/// what a fresh evaluation computes. Such a model cannot shift its context; with
/// `swa_full = true` it can, and every cut is allowed.
#[test]
fn sliding_window_caches_refuse_cuts_behind_their_window() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gemma3-swa.gguf");
    let opts = GenerateOptions {
        arch: Arch::Gemma3,
        shape: ModelShape { n_swa: Some(16), ..ModelShape::tiny() },
        weight_type: WeightType::F32,
        seed: 11,
        name: "corral-test-swa".into(),
        ..Default::default()
    };
    generate_model(&path, &opts).expect("generate");
    // 300 positions: more than the window cache's 256 cells (16 + a micro-batch, padded
    // to 256), so the oldest are gone.
    let tokens: Vec<u32> = (0..300u32).map(|i| 3 + (i * 7) % 400).collect();
    let params = ContextParams {
        n_ctx: 512,
        n_batch: 64,
        n_seq_max: 1,
        n_threads: 2,
        n_threads_batch: 2,
        embeddings: false,
        seed: 0,
    };
    let prefill = |c: &mut LlamaContext, upto: usize| {
        for start in (0..upto).step_by(64) {
            let end = (start + 64).min(upto);
            c.decode(&entries(&tokens[start..end], 0, start as u32)).unwrap();
        }
    };
    for swa_full in [false, true] {
        let backend = LlamaBackend::with_options(LlamaOptions {
            n_threads: 2,
            n_ubatch: 64,
            swa_full: Some(swa_full),
            ..Default::default()
        })
        .expect("init");
        let model = backend.load_model(&spec(&path)).expect("load");
        assert_eq!(
            model.capabilities().contains(Capabilities::CONTEXT_SHIFT),
            swa_full,
            "swa_full {swa_full}: context shift"
        );
        let mut c = model.new_context(&params).expect("context");
        prefill(&mut c, tokens.len());
        assert_eq!(c.kv_pos_max(0), 299);
        let behind = c.kv_remove(0, 20, -1);
        if swa_full {
            behind.expect("a full cache cuts anywhere");
            assert_eq!(c.kv_pos_max(0), 19);
        } else {
            let e = behind.expect_err("the window before position 20 is gone");
            assert_eq!(e.kind, ErrorKind::InvalidInput, "{e}");
            assert!(e.message.contains("sliding window"), "{e}");
            assert_eq!(c.kv_pos_max(0), 299, "a refused cut leaves the sequence");
            // Cut inside the window, re-decode the tail: as a fresh evaluation.
            c.kv_remove(0, 290, -1).expect("a cut inside the window");
            c.decode(&entries(&tokens[290..], 0, 290)).unwrap();
            let again = c.logits(9).unwrap().to_vec();
            let mut fresh = model.new_context(&params).expect("context");
            prefill(&mut fresh, tokens.len());
            let want = fresh.logits((tokens.len() - 1 - 256) as u32).unwrap().to_vec();
            let d = rel_diff(&again, &want);
            assert!(d < 1e-4, "re-decoded after a cut: relative difference {d}");
        }
    }
}

/// Prompt batches and single tokens on thread pools of different sizes (the decode pool
/// starts paused and is resumed by its first graph, the other paused in turn) compute
/// what one pool computes, through every switch between them.
#[test]
fn separate_prompt_and_decode_thread_pools_give_the_same_logits() {
    let m = &fixture().model;
    let p = m.tokenize(PROMPT, true, false).unwrap();
    let n = p.len() as u32;
    let run = |n_threads: u32| {
        let params = ContextParams {
            n_ctx: 256,
            n_batch: 128,
            n_seq_max: 1,
            n_threads,
            n_threads_batch: 2,
            embeddings: false,
            seed: 0,
        };
        let mut c = m.new_context(&params).expect("context");
        let mut rows = Vec::new();
        let mut pos = 0;
        for round in 0..2 {
            // A prompt chunk (the batch pool), then three single tokens (the decode pool).
            c.decode(&entries(&p, 0, pos)).unwrap();
            pos += n;
            rows.push(c.logits(n - 1).unwrap().to_vec());
            for t in 0..3 {
                c.decode(&entries(&[10 + t + round], 0, pos)).unwrap();
                pos += 1;
                rows.push(c.logits(0).unwrap().to_vec());
            }
        }
        rows
    };
    let (one_pool, two_pools) = (run(2), run(1));
    for (i, (a, b)) in one_pool.iter().zip(&two_pools).enumerate() {
        let d = rel_diff(a, b);
        assert!(d < fixture().tolerance, "step {i}: relative difference {d}");
    }
}

#[test]
fn kv_copy_shares_a_prefix() {
    let m = &fixture().model;
    let p = m.tokenize(PROMPT, true, false).unwrap();
    let n = p.len() as u32;
    let mut c = ctx(2, false);
    c.decode(&entries(&p, 0, 0)).unwrap();
    c.kv_copy(0, 1, 0, -1).unwrap();
    assert_eq!(c.kv_pos_max(1), n as i32 - 1);
    let t = 42;
    c.decode(&[
        BatchEntry { token: t, pos: n, seq: 0, logits: true },
        BatchEntry { token: t, pos: n, seq: 1, logits: true },
    ])
    .unwrap();
    let a = c.logits(0).unwrap().to_vec();
    let d = rel_diff(c.logits(1).unwrap(), &a);
    assert!(d < fixture().tolerance, "relative difference {d}");
    assert_eq!(c.kv_copy(0, 2, 0, -1).unwrap_err().kind, ErrorKind::InvalidInput);
    c.kv_clear().unwrap();
    assert_eq!(c.kv_pos_max(0), -1);
    assert_eq!(c.kv_pos_max(1), -1);
}

#[test]
fn embeddings_context() {
    let m = &fixture().model;
    let a = m.tokenize(PROMPT, true, false).unwrap();
    let b = m.tokenize("Something else entirely", true, false).unwrap();
    let mut c = ctx(2, true);
    let mut batch = entries(&a, 0, 0);
    batch.extend(entries(&b, 1, 0));
    c.decode(&batch).unwrap();
    let ea = c.embeddings(0).unwrap();
    let eb = c.embeddings(1).unwrap();
    assert_eq!(ea.len(), 64);
    assert!(ea.iter().all(|x| x.is_finite()));
    assert_ne!(ea, eb);
    assert_eq!(c.embeddings(2).unwrap_err().kind, ErrorKind::InvalidInput);
    assert_eq!(c.logits(0).unwrap_err().kind, ErrorKind::Unsupported);
    // Same sequence alone gives the same pooled vector.
    let mut solo = ctx(1, true);
    solo.decode(&entries(&a, 0, 0)).unwrap();
    let d = rel_diff(&solo.embeddings(0).unwrap(), &ea);
    assert!(d < fixture().tolerance, "relative difference {d}");
    // A logits context has no embeddings.
    assert_eq!(ctx(1, false).embeddings(0).unwrap_err().kind, ErrorKind::InvalidInput);
}

#[test]
fn bad_batches_are_refused_before_llama_cpp() {
    let mut c = ctx(2, false);
    let n_ctx = c.params().n_ctx;
    let e = |token, pos, seq| BatchEntry { token, pos, seq, logits: true };
    let err = c.decode(&[e(512, 0, 0)]).unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidInput);
    assert!(err.message().contains("token 512"), "{}", err.message());
    let err = c.decode(&[e(1, 0, 2)]).unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidInput);
    assert!(err.message().contains("sequence id 2"), "{}", err.message());
    let err = c.decode(&[e(1, n_ctx, 0)]).unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidInput);
    assert!(err.message().contains("position"), "{}", err.message());
    assert_eq!(c.decode(&[]).unwrap_err().kind, ErrorKind::InvalidInput);
    let too_big: Vec<_> = (0..129).map(|i| e(1, i, 0)).collect();
    assert_eq!(c.decode(&too_big).unwrap_err().kind, ErrorKind::InvalidInput);
    // A position that does not continue the sequence: llama.cpp refuses it, no abort.
    c.decode(&[e(1, 0, 0)]).unwrap();
    let err = c.decode(&[e(1, 5, 0)]).unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidInput, "{}", err.message());
    // The context still works afterwards.
    c.decode(&[e(1, 1, 0)]).unwrap();
    assert_eq!(c.kv_remove(3, 0, -1).unwrap_err().kind, ErrorKind::InvalidInput);
    assert_eq!(c.kv_pos_max(7), -1);
}

#[test]
fn full_kv_cache_is_context_full() {
    let p = ContextParams {
        n_ctx: 64,
        n_batch: 64,
        n_seq_max: 2,
        n_threads: 2,
        n_threads_batch: 2,
        embeddings: false,
        seed: 0,
    };
    let mut c = fixture().model.new_context(&p).unwrap();
    let n_ctx = c.params().n_ctx;
    let fill: Vec<u32> = (0..n_ctx).map(|i| 10 + i % 100).collect();
    for (k, chunk) in fill.chunks(c.params().n_batch as usize).enumerate() {
        let start = (k * c.params().n_batch as usize) as u32;
        c.decode(&entries(chunk, 0, start)).unwrap();
    }
    let err = c.decode(&entries(&[1], 1, 0)).unwrap_err();
    assert_eq!(err.kind, ErrorKind::ContextFull, "{}", err.message());
    c.kv_remove(0, 0, -1).unwrap();
    c.decode(&entries(&[1], 1, 0)).unwrap();
}

#[test]
fn bad_files_are_clear_errors() {
    let f = fixture();
    let b = &f.backend;
    let dir = tempfile::tempdir().unwrap();

    let missing = dir.path().join("missing.gguf");
    let err = b.load_model(&spec(&missing)).err().unwrap();
    assert_eq!(err.kind, ErrorKind::NotFound);

    let not_gguf = dir.path().join("model.bin");
    std::fs::write(&not_gguf, b"\x89PNG\r\n\x1a\nthis is no model").unwrap();
    let err = b.load_model(&spec(&not_gguf)).err().unwrap();
    assert_eq!(err.kind, ErrorKind::InvalidInput);
    assert!(err.message().contains("not a GGUF file"), "{}", err.message());

    let bytes = std::fs::read(&f.f32_path).unwrap();
    let truncated = dir.path().join("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = b.load_model(&spec(&truncated)).err().unwrap();
    assert_eq!(err.kind, ErrorKind::InvalidInput);
    assert!(err.message().contains("truncated"), "{}", err.message());

    let header_only = dir.path().join("header.gguf");
    std::fs::write(&header_only, &bytes[..100]).unwrap();
    let err = b.load_model(&spec(&header_only)).err().unwrap();
    assert_eq!(err.kind, ErrorKind::InvalidInput, "{}", err.message());

    // Same file, architecture renamed to one llama.cpp does not know.
    let needle = b"general.architecture";
    let at = bytes.windows(needle.len()).position(|w| w == needle).unwrap();
    let value = at + needle.len() + 4 + 8; // type (u32) and string length (u64)
    assert_eq!(&bytes[value..value + 5], b"llama");
    let mut other = bytes.clone();
    other[value..value + 5].copy_from_slice(b"zzzzz");
    let unknown = dir.path().join("unknown-arch.gguf");
    std::fs::write(&unknown, &other).unwrap();
    let err = b.load_model(&spec(&unknown)).err().unwrap();
    assert_eq!(err.kind, ErrorKind::Unsupported, "{}", err.message());
    assert!(err.message().contains("zzzzz"), "{}", err.message());

    let mut onnx = spec(&f.f32_path);
    onnx.format = "onnx".into();
    assert_eq!(b.load_model(&onnx).err().unwrap().kind, ErrorKind::Unsupported);
}

/// Greedy continuation through the plugin equals `llama-raw greedy` on the same file.
#[test]
fn greedy_matches_llama_raw() {
    let f = fixture();
    let m = &f.model;
    let n = 24;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_llama-raw"))
        .arg("greedy")
        .arg(&f.f32_path)
        .args(["--prompt", PROMPT, "--n", &n.to_string(), "--ctx", "256", "--threads", "2"])
        .arg("--json")
        .output()
        .expect("run llama-raw");
    assert!(out.status.success(), "llama-raw: {}", String::from_utf8_lossy(&out.stderr));
    let raw: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let raw_prompt: Vec<u32> = serde_json::from_value(raw["prompt_tokens"].clone()).unwrap();
    let raw_tokens: Vec<u32> = serde_json::from_value(raw["tokens"].clone()).unwrap();

    let prompt = m.tokenize(PROMPT, true, true).unwrap();
    assert_eq!(prompt, raw_prompt);
    let eog = m.special_tokens().eog;
    let mut c = ctx(1, false);
    c.decode(&entries(&prompt, 0, 0)).unwrap();
    let mut got = Vec::new();
    let mut last = (prompt.len() - 1) as u32;
    for i in 0..n {
        let t = argmax(c.logits(last).unwrap());
        if eog.contains(&t) {
            break;
        }
        got.push(t);
        c.decode(&entries(&[t], 0, (prompt.len() + i) as u32)).unwrap();
        last = 0;
    }
    assert_eq!(got, raw_tokens);
    assert_eq!(m.detokenize(&got).unwrap(), raw["text"].as_str().unwrap());
    println!("greedy: {:?}", raw["text"]);
}
