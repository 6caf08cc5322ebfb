//! Every architecture the engine runs, on generated models (`corral_gguf::generate`),
//! against llama.cpp (`llama-raw`: `CORRAL_LLAMA_RAW`, else built beside these tests by
//! the llama-cpp backend crate). For each architecture and weight type (F32, F16, Q8_0):
//! the prompt tokenizes to llama.cpp's tokens, the last prompt position's logits are
//! within tolerance of llama.cpp's, and greedy continuations equal llama.cpp's, where a
//! fork is accepted only at a near-tie (the two tokens' logits within the same
//! tolerance). Then what the generator does not write on its own: LongRoPE factors with an
//! attention factor (phi3, short and long contexts), linear RoPE scaling, and the files
//! the engine must refuse. The comparisons skip, saying why, when `llama-raw` is missing.
//!
//! Tolerances: F32 and F16 `1e-3 + 1e-2 · max|logit|` (the conformance suite's float
//! tolerance, see the crate README); quantized types `5e-2 · max|logit|` (activations are
//! quantized to 8 bits, so both engines round differently now and then; the suite allows
//! 5%). `CORRAL_TEST_WEIGHT_TYPES=f32,q4_0,q4_k_m` compares other weight types.
mod common;

use common::{argmax, llama_raw};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use corral_backend_api::{
    BatchEntry, ContextParams, ErrorKind, LoadRequest,
    plugin::{Backend, Context, Model},
};
use corral_backend_cpu::{CpuBackend, CpuModel, CpuOptions};
use corral_gguf::generate::{Arch, GenerateOptions, ModelShape, WeightType, generate_model};
use corral_gguf::reader::GgufFile;
use corral_gguf::writer::GgufBuilder;
use corral_gguf::{GgmlType, Value};

/// Greedy tokens compared per prompt.
const N_GREEDY: usize = 24;

/// Prompts: prose, code, and a long one (~300 tokens) so that positions reach far enough
/// for the sliding window to hide most of the context and for Llama 3's scaled
/// low-frequency RoPE pairs to turn visibly.
fn prompts() -> Vec<String> {
    let long = "It was the best of times, it was the worst of times, it was the age of \
                wisdom, it was the age of foolishness, it was the epoch of belief, it was \
                the epoch of incredulity. "
        .repeat(4);
    vec![
        "The quick brown fox jumps over the lazy dog".into(),
        "fn main() { let x = vec![1, 2, 3]; println!(\"{x:?}\"); }".into(),
        long,
    ]
}

/// Runs llama-raw with `args` (and any extra arguments in `CORRAL_TEST_RAW_ARGS`,
/// whitespace-separated, e.g. `--threads 1`) and parses its JSON.
fn raw_json(raw: &Path, args: &[&str]) -> serde_json::Value {
    let extra = std::env::var("CORRAL_TEST_RAW_ARGS").unwrap_or_default();
    let out = Command::new(raw)
        .args(args)
        .args(extra.split_whitespace())
        .stderr(Stdio::piped())
        .output()
        .expect("run llama-raw");
    assert!(
        out.status.success(),
        "llama-raw {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("llama-raw prints JSON")
}

fn generate(dir: &Path, arch: Arch, shape: ModelShape, ty: WeightType) -> PathBuf {
    let path = dir.join(format!("{arch}-{ty:?}.gguf"));
    let opts = GenerateOptions {
        arch,
        shape,
        weight_type: ty,
        seed: 7,
        name: format!("test-{arch}"),
        ..Default::default()
    };
    generate_model(&path, &opts).expect("generate");
    path
}

fn load(path: &Path) -> Result<CpuModel, corral_backend_api::BackendError> {
    CpuBackend::with_options(CpuOptions::default())
        .load_model(&LoadRequest::new(path.to_string_lossy(), "gguf"))
}

fn max_abs(l: &[f32]) -> f32 {
    l.iter().fold(0f32, |a, &b| a.max(b.abs()))
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

/// The engine on `prompt_tokens` in a context of `n_ctx` cells: the last position's
/// logits, then greedy decoding of up to `n` tokens as llama-raw does it, with the logits
/// each choice was made from. An end-of-generation token ends it (the last step then
/// holds that token).
fn engine_greedy(
    m: &CpuModel,
    prompt: &[u32],
    n: usize,
    n_ctx: u32,
) -> (Vec<f32>, Vec<(u32, Vec<f32>)>) {
    let (mut c, first) = common::decode_prompt(m, prompt, n_ctx);
    let eog = m.special_tokens().eog;
    let mut steps = Vec::new();
    let mut logits = first.clone();
    for i in 0..n {
        let t = argmax(&logits);
        steps.push((t, logits.clone()));
        if eog.contains(&t) {
            break;
        }
        if i + 1 < n {
            let pos = (prompt.len() + i) as u32;
            c.decode(&[BatchEntry { token: t, pos, seq: 0, logits: true }]).expect("decode");
            logits = c.logits(0).expect("logits").to_vec();
        }
    }
    (first, steps)
}

/// What one comparison measured.
#[derive(Default)]
struct Agreement {
    /// Greedy tokens equal to llama.cpp's, and tokens llama.cpp produced.
    equal: usize,
    total: usize,
    /// Prompts whose continuations forked at a near-tie.
    near_ties: usize,
    /// Largest |Δlogit| over the prompts, and the largest relative to max|logit|.
    max_diff: f32,
    max_rel: f32,
}

/// Compares the engine with llama.cpp on `path` for every prompt (llama.cpp's context:
/// `ctx`, or prompt + greedy + 8 when 0), asserting the tokenization, the logits within
/// `rel_tol · max|logit| + abs_tol`, and greedy continuations equal up to a near-tie.
fn compare(raw: &Path, path: &Path, rel_tol: f32, abs_tol: f32, ctx: u32) -> Agreement {
    let m = load(path).unwrap_or_else(|e| panic!("the cpu engine loads {}: {e}", path.display()));
    let model = path.to_string_lossy().into_owned();
    let n = N_GREEDY.to_string();
    let ctx_s = ctx.to_string();
    let mut agg = Agreement::default();
    for prompt in prompts() {
        let mut extra: Vec<&str> = Vec::new();
        if ctx > 0 {
            extra.extend(["--ctx", &ctx_s]);
        }
        let mut args = vec!["greedy", &model, "--prompt", &prompt, "--n", &n, "--json"];
        args.extend(&extra);
        let want = raw_json(raw, &args);
        let mut args = vec!["logits", &model, "--prompt", &prompt, "--json"];
        args.extend(&extra);
        let want_logits: Vec<f32> = serde_json::from_value(raw_json(raw, &args)["logits"].clone())
            .expect("llama-raw logits");
        let prompt_tokens: Vec<u32> =
            serde_json::from_value(want["prompt_tokens"].clone()).expect("prompt tokens");
        let want_tokens: Vec<u32> =
            serde_json::from_value(want["tokens"].clone()).expect("greedy tokens");
        assert_eq!(
            m.tokenize(&prompt, true, true).expect("tokenize"),
            prompt_tokens,
            "{model}: {prompt:?} tokenizes differently"
        );
        let n_ctx = if ctx > 0 { ctx } else { (prompt_tokens.len() + N_GREEDY + 8) as u32 };
        let (first, steps) = engine_greedy(&m, &prompt_tokens, N_GREEDY, n_ctx);

        let scale = max_abs(&want_logits);
        let tol = abs_tol + rel_tol * scale;
        let diff = max_diff(&first, &want_logits);
        assert!(
            diff <= tol,
            "{model}: {prompt:?}: last-position logits differ by {diff} (tolerance {tol}, \
             max|logit| {scale})"
        );
        if std::env::var_os("CORRAL_TEST_VERBOSE").is_some() {
            println!(
                "  {}: {:?}... ({} tokens): max |diff| {diff:.2e} of max|logit| {scale:.1}",
                path.file_name().unwrap_or_default().to_string_lossy(),
                prompt.chars().take(16).collect::<String>(),
                prompt_tokens.len()
            );
        }
        agg.max_diff = agg.max_diff.max(diff);
        agg.max_rel = agg.max_rel.max(diff / scale);

        // Both sequences of choices, an end of generation as None.
        let eog = m.special_tokens().eog;
        let ours: Vec<Option<u32>> =
            steps.iter().map(|s| Some(s.0).filter(|t| !eog.contains(t))).collect();
        let mut theirs: Vec<Option<u32>> = want_tokens.iter().copied().map(Some).collect();
        if want["stop_reason"] == "eog" {
            theirs.push(None);
        }
        agg.total += want_tokens.len();
        let same = ours.iter().zip(&theirs).take_while(|(a, b)| a == b).count();
        agg.equal += same.min(want_tokens.len());
        if same < ours.len().max(theirs.len()) {
            // A fork: accepted only where llama.cpp's choice was a near-tie in the
            // engine's logits at that step.
            let (our_token, logits) = &steps[same.min(steps.len() - 1)];
            let their_token = match theirs.get(same) {
                Some(Some(t)) => *t,
                // llama.cpp ended there: its choice was one of the end tokens.
                _ => *eog
                    .iter()
                    .max_by(|a, b| logits[**a as usize].total_cmp(&logits[**b as usize]))
                    .expect("an end-of-generation token"),
            };
            let margin = logits[*our_token as usize] - logits[their_token as usize];
            let step_tol = abs_tol + rel_tol * max_abs(logits);
            assert!(
                margin <= step_tol,
                "{model}: {prompt:?}: greedy forks at token {same}: the engine picks \
                 {our_token}, llama.cpp {their_token}, {margin} apart in the engine's logits \
                 (a near-tie would be within {step_tol})"
            );
            println!(
                "  {}: {:?}...: fork at token {same}: {our_token} vs llama.cpp's \
                 {their_token}, {margin:.2e} apart in the engine's logits",
                path.file_name().unwrap_or_default().to_string_lossy(),
                prompt.chars().take(16).collect::<String>(),
            );
            agg.near_ties += 1;
        }
    }
    agg
}

/// The tolerance of a weight type: (relative to max|logit|, absolute).
fn tolerance(ty: WeightType) -> (f32, f32) {
    match ty {
        WeightType::F32 | WeightType::F16 => (1e-2, 1e-3),
        _ => (5e-2, 0.0),
    }
}

/// The weight types compared: F32, F16 and Q8_0, or the comma-separated list in
/// `CORRAL_TEST_WEIGHT_TYPES` (names as `corral model generate --type` takes them, e.g.
/// `f32,q4_0,q4_k_m`).
fn weight_types() -> Vec<WeightType> {
    match std::env::var("CORRAL_TEST_WEIGHT_TYPES") {
        Ok(list) => list
            .split(',')
            .map(|t| {
                WeightType::parse(t).unwrap_or_else(|e| panic!("CORRAL_TEST_WEIGHT_TYPES: {e}"))
            })
            .collect(),
        Err(_) => vec![WeightType::F32, WeightType::F16, WeightType::Q8_0],
    }
}

/// Generates `arch` at `shape` in each of [`weight_types`] and compares it with llama.cpp.
fn check_arch(arch: Arch, shape: ModelShape) {
    let Some(raw) = llama_raw() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    for ty in weight_types() {
        let path = generate(dir.path(), arch, shape, ty);
        let (rel, abs) = tolerance(ty);
        let a = compare(&raw, &path, rel, abs, 0);
        println!(
            "{arch} {ty:?}: greedy {}/{} tokens equal llama.cpp's ({} prompts, {} forked at a \
             near-tie); last-position logits max |diff| {:.2e} ({:.2e} of max|logit|)",
            a.equal,
            a.total,
            prompts().len(),
            a.near_ties,
            a.max_diff,
            a.max_rel
        );
    }
}

#[test]
fn qwen3_equals_llama_cpp() {
    // Heads of 32 with 4 heads over a width of 64: the query width (128) differs from
    // n_embd, as in real Qwen3 models.
    check_arch(Arch::Qwen3, ModelShape { n_embd_head: Some(32), ..ModelShape::tiny() });
}

#[test]
fn gemma2_equals_llama_cpp() {
    // A window of 8: the long prompt and the continuations reach far beyond it.
    let shape = ModelShape { n_swa: Some(8), ..ModelShape::tiny() };
    check_arch(Arch::Gemma2, shape);
    // The real caps (50 on attention scores, 30 on logits) hardly bind on a random tiny
    // model's scores; caps of 1 and 5 bind everywhere.
    let Some(raw) = llama_raw() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    for ty in [WeightType::F32, WeightType::F16] {
        let src = generate(dir.path(), Arch::Gemma2, shape, ty);
        let path = dir.path().join(format!("gemma2-tight-caps-{ty:?}.gguf"));
        rewrite(&src, &path, &tight_caps(), &[], &[]);
        let (rel, abs) = tolerance(ty);
        let a = compare(&raw, &path, rel, abs, 0);
        println!(
            "gemma2 {ty:?}, soft-caps 1 and 5: greedy {}/{} equal ({} near-tie forks), logits \
             max |diff| {:.2e}",
            a.equal, a.total, a.near_ties, a.max_diff
        );
    }
}

/// gemma2 soft-caps that bind: 1 on attention scores, 5 on logits.
fn tight_caps() -> Vec<(&'static str, Value)> {
    vec![
        ("gemma2.attn_logit_softcapping", Value::F32(1.0)),
        ("gemma2.final_logit_softcapping", Value::F32(5.0)),
    ]
}

#[test]
fn phi3_equals_llama_cpp() {
    // The file sets a sliding window, which llama.cpp ignores for phi3 (and so must the
    // engine).
    check_arch(Arch::Phi3, ModelShape { n_swa: Some(8), ..ModelShape::tiny() });
}

#[test]
fn llama3_rope_factors_equal_llama_cpp() {
    check_arch(Arch::Llama3, ModelShape::tiny());
}

#[test]
fn gemma3_qwen2_llama_equal_llama_cpp() {
    check_arch(Arch::Gemma3, ModelShape { n_swa: Some(8), ..ModelShape::tiny() });
    check_arch(Arch::Qwen2, ModelShape::tiny());
    check_arch(Arch::Llama, ModelShape::tiny());
}

/// A copy of the GGUF file `src` at `dst`, with the metadata `set` (replacing or adding
/// keys), without the tensors `drop`, and with the F32 vectors `add`.
fn rewrite(src: &Path, dst: &Path, set: &[(&str, Value)], drop: &[&str], add: &[(&str, Vec<f32>)]) {
    let file = GgufFile::open(src).expect("open");
    let mut b = GgufBuilder::new();
    for (k, v) in file.metadata() {
        if !set.iter().any(|(s, _)| s == k) {
            b.add_metadata(k.clone(), v.clone()).expect("metadata");
        }
    }
    for (k, v) in set {
        b.add_metadata(*k, v.clone()).expect("metadata");
    }
    let kept: Vec<_> = file.tensors().iter().filter(|t| !drop.contains(&t.name.as_str())).collect();
    for t in &kept {
        b.add_tensor(t.name.clone(), &t.dims, t.ggml_type).expect("tensor");
    }
    for (name, v) in add {
        b.add_tensor(*name, &[v.len() as u64], GgmlType::F32).expect("tensor");
    }
    let out = std::fs::File::create(dst).expect("create");
    let mut w = b.begin(std::io::BufWriter::new(out)).expect("begin");
    for t in &kept {
        w.write_tensor(&t.name, &file.read_tensor_bytes(t).expect("read")).expect("write");
    }
    for (name, v) in add {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        w.write_tensor(name, &bytes).expect("write");
    }
    w.finish().expect("finish");
}

/// Phi-3's LongRoPE (Phi-3-mini-128k, Phi-3.5): `rope_factors_short`/`long` and an
/// attention factor on the rotations. llama.cpp uses the short factors for contexts up
/// to `rope.scaling.original_context_length` (512 here) and the long ones above it; so
/// does the engine.
#[test]
fn phi3_longrope_equals_llama_cpp() {
    let Some(raw) = llama_raw() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let src = generate(dir.path(), Arch::Phi3, ModelShape::tiny(), WeightType::F32);
    let half = (ModelShape::tiny().n_embd / ModelShape::tiny().n_head / 2) as usize;
    let short: Vec<f32> = (0..half).map(|i| 1.0 + 0.25 * i as f32).collect();
    let long: Vec<f32> = (0..half).map(|i| 1.0 + 3.0 * i as f32).collect();
    let path = dir.path().join("phi3-longrope.gguf");
    rewrite(
        &src,
        &path,
        &[("phi3.rope.scaling.attn_factor", Value::F32(1.19))],
        &[],
        &[("rope_factors_long.weight", long), ("rope_factors_short.weight", short)],
    );
    let (rel, abs) = tolerance(WeightType::F32);
    for ctx in [0, 1024] {
        let a = compare(&raw, &path, rel, abs, ctx);
        println!(
            "phi3 LongRoPE, context {}: greedy {}/{} equal, logits max |diff| {:.2e}",
            if ctx == 0 { "short".to_string() } else { ctx.to_string() },
            a.equal,
            a.total,
            a.max_diff
        );
    }
}

/// `rope.scaling.type = linear` with a factor: positions are divided by it.
#[test]
fn linear_rope_scaling_equals_llama_cpp() {
    let Some(raw) = llama_raw() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let src = generate(dir.path(), Arch::Llama, ModelShape::tiny(), WeightType::F32);
    let path = dir.path().join("llama-linear.gguf");
    rewrite(
        &src,
        &path,
        &[
            ("llama.rope.scaling.type", Value::String("linear".into())),
            ("llama.rope.scaling.factor", Value::F32(4.0)),
        ],
        &[],
        &[],
    );
    let (rel, abs) = tolerance(WeightType::F32);
    let a = compare(&raw, &path, rel, abs, 0);
    println!(
        "llama linear x4: greedy {}/{} equal, logits max |diff| {:.2e}",
        a.equal, a.total, a.max_diff
    );
}

/// The comparisons above can tell: without its `rope_freqs` factors the Llama 3 file's
/// logits move by far more than the tolerance, and without soft-capping and the window
/// gemma2's would too.
#[test]
fn the_architecture_details_matter() {
    let dir = tempfile::tempdir().expect("temp dir");
    let prompt = prompts().pop().expect("a prompt");
    let logits = |path: &Path| {
        let m = load(path).expect("load");
        let toks = m.tokenize(&prompt, true, true).expect("tokenize");
        engine_greedy(&m, &toks, 0, toks.len() as u32 + 8).0
    };
    let (rel, abs) = tolerance(WeightType::F32);
    let matters = |what: &str, a: &[f32], b: &[f32]| {
        let (d, tol) = (max_diff(a, b), abs + rel * max_abs(a));
        println!("without the {what}: logits move by {d:.3} (the F32 tolerance is {tol:.3})");
        assert!(d > 2.0 * tol, "{what}: {d} (tolerance {tol})");
    };
    let src = generate(dir.path(), Arch::Llama3, ModelShape::tiny(), WeightType::F32);
    let plain = dir.path().join("llama3-without-factors.gguf");
    rewrite(&src, &plain, &[], &["rope_freqs.weight"], &[]);
    matters("rope_freqs factors", &logits(&src), &logits(&plain));

    let shape = ModelShape { n_swa: Some(8), ..ModelShape::tiny() };
    let generated = generate(dir.path(), Arch::Gemma2, shape, WeightType::F32);
    let src = dir.path().join("gemma2-tight-caps.gguf");
    rewrite(&generated, &src, &tight_caps(), &[], &[]);
    for (what, key, value) in [
        ("attention soft-capping", "gemma2.attn_logit_softcapping", Value::F32(1e9)),
        ("final soft-capping", "gemma2.final_logit_softcapping", Value::F32(1e9)),
        ("sliding window", "gemma2.attention.sliding_window", Value::U32(4096)),
    ] {
        let other = dir.path().join("gemma2-variant.gguf");
        let mut set = tight_caps();
        set.retain(|(k, _)| *k != key);
        set.push((key, value));
        rewrite(&generated, &other, &set, &[], &[]);
        matters(what, &logits(&src), &logits(&other));
    }
}

/// What the engine cannot run is refused when loading, with a message that says what and
/// what to do.
#[test]
fn unsupported_variants_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = generate(dir.path(), Arch::Llama, ModelShape::tiny(), WeightType::F32);
    let refused = |set: &[(&str, Value)], add: &[(&str, Vec<f32>)]| {
        let path = dir.path().join("variant.gguf");
        rewrite(&src, &path, set, &[], add);
        match load(&path) {
            Ok(_) => panic!("{set:?} {:?} loaded", add.iter().map(|a| a.0).collect::<Vec<_>>()),
            Err(e) => e,
        }
    };
    // A tensor llama does not read (llama.cpp refuses the file too).
    let e = refused(&[], &[("blk.0.attn_q_norm.weight", vec![1.0; 16])]);
    assert_eq!(e.kind, ErrorKind::Unsupported, "{e}");
    assert!(
        e.message.contains("blk.0.attn_q_norm.weight") && e.message.contains("llama-cpp"),
        "{e}"
    );
    // YaRN.
    let e = refused(&[("llama.rope.scaling.type", Value::String("yarn".into()))], &[]);
    assert_eq!(e.kind, ErrorKind::Unsupported, "{e}");
    assert!(e.message.contains("YaRN") && e.message.contains("llama-cpp"), "{e}");
    // Mixture of experts.
    let e = refused(&[("llama.expert_count", Value::U32(8))], &[]);
    assert_eq!(e.kind, ErrorKind::Unsupported, "{e}");
    assert!(e.message.contains("mixture-of-experts"), "{e}");
    // Another architecture: the message lists the ones the engine runs.
    let e = refused(&[("general.architecture", Value::String("mamba".into()))], &[]);
    assert_eq!(e.kind, ErrorKind::Unsupported, "{e}");
    for a in ["qwen3", "gemma2", "phi3", "llama-cpp"] {
        assert!(e.message.contains(a), "{a}: {e}");
    }
    // Frequency factors must be F32 and n_rot/2 long.
    let e = refused(&[], &[("rope_freqs.weight", vec![1.0; 3])]);
    assert_eq!(e.kind, ErrorKind::InvalidInput, "{e}");
    assert!(e.message.contains("rope_freqs.weight"), "{e}");
}

/// Logits of the last of `toks` decoded in one batch at positions `start..` of sequence
/// `seq` in `c`.
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

fn params(n_seq: u32) -> ContextParams {
    ContextParams { n_ctx: 512, n_batch: 512, n_seq_max: n_seq, n_threads: 2, ..Default::default() }
}

/// For each new architecture: token-by-token decoding equals one prefill, two sequences
/// interleaved in one batch equal their single decodes (the sliding window and the
/// soft-caps are per sequence and position), and a context shift (`kv_shift`, which
/// re-rotates cached keys with each layer's RoPE base, scale and factors) equals decoding
/// at the shifted positions from the start.
#[test]
fn batches_and_context_shift_agree() {
    let dir = tempfile::tempdir().expect("temp dir");
    let windowed = ModelShape { n_swa: Some(8), ..ModelShape::tiny() };
    let cases = [
        (Arch::Qwen3, ModelShape { n_embd_head: Some(32), ..ModelShape::tiny() }),
        (Arch::Gemma2, windowed),
        (Arch::Gemma3, windowed),
        (Arch::Phi3, ModelShape::tiny()),
        (Arch::Llama3, ModelShape::tiny()),
    ];
    for (arch, shape) in cases {
        let path = generate(dir.path(), arch, shape, WeightType::F32);
        let m = load(&path).expect("load");
        let texts = ["The quick brown fox jumps over the lazy dog again", "fn main() {}"];
        let seqs: Vec<Vec<u32>> =
            texts.iter().map(|t| m.tokenize(t, true, false).expect("tokenize")).collect();
        let single: Vec<Vec<f32>> = seqs
            .iter()
            .map(|s| prefill(&mut m.new_context(&params(1)).expect("context"), 0, 0, s))
            .collect();
        let scale = max_abs(&single[0]);

        let mut c = m.new_context(&params(1)).expect("context");
        let mut last = Vec::new();
        for (i, &t) in seqs[0].iter().enumerate() {
            last = prefill(&mut c, 0, i as u32, &[t]);
        }
        let d = max_diff(&last, &single[0]);
        assert!(d < 1e-3 * scale.max(1.0), "{arch}: token by token differs by {d}");

        let mut c = m.new_context(&params(2)).expect("context");
        let mut batch = Vec::new();
        let mut last_index = [0usize; 2];
        for pos in 0..seqs.iter().map(Vec::len).max().unwrap_or(0) {
            for (s, toks) in seqs.iter().enumerate() {
                if let Some(&token) = toks.get(pos) {
                    let is_last = pos + 1 == toks.len();
                    if is_last {
                        last_index[s] = batch.len();
                    }
                    let (pos, seq) = (pos as u32, s as u32);
                    batch.push(BatchEntry { token, pos, seq, logits: is_last });
                }
            }
        }
        c.decode(&batch).expect("decode");
        for s in 0..2 {
            let d = max_diff(c.logits(last_index[s] as u32).expect("logits"), &single[s]);
            assert!(d < 1e-4 * scale.max(1.0), "{arch}: sequence {s} in a mixed batch: {d}");
        }

        // Shift: the prompt but its last token at 0.., moved by +37, then the last token;
        // against the whole prompt decoded at 37.. from the start.
        let toks = &seqs[0];
        let n = toks.len();
        let delta = 37;
        let mut c = m.new_context(&params(1)).expect("context");
        prefill(&mut c, 0, 0, &toks[..n - 1]);
        c.kv_shift(0, 0, -1, delta).expect("shift");
        let shifted = prefill(&mut c, 0, delta as u32 + n as u32 - 1, &toks[n - 1..]);
        let fresh =
            prefill(&mut m.new_context(&params(1)).expect("context"), 0, delta as u32, toks);
        let d = max_diff(&shifted, &fresh);
        println!("{arch}: context shift by {delta}: logits differ by {d:.2e} from a fresh decode");
        // The shifted keys are rounded to F16 twice.
        assert!(d < 1e-2 * scale.max(1.0), "{arch}: shifted differs by {d}");
    }
}

/// The engine's pooled embedding of `prompt` (one batch, as the host embeds).
fn engine_embedding(
    m: &CpuModel,
    prompt: &str,
) -> Result<Vec<f32>, corral_backend_api::BackendError> {
    let toks = m.tokenize(prompt, true, true)?;
    let mut c = m.new_context(&ContextParams { embeddings: true, ..params(1) })?;
    let batch: Vec<BatchEntry> = toks
        .iter()
        .enumerate()
        .map(|(i, &t)| BatchEntry { token: t, pos: i as u32, seq: 0, logits: true })
        .collect();
    c.decode(&batch)?;
    c.embeddings(0)
}

/// Embeddings pool as the file says (`{arch}.pooling_type`: mean, CLS, last; mean when
/// absent) and attend as it says (`{arch}.attention.causal = false`: every token sees the
/// whole text), equal to llama.cpp's within the float tolerance; the poolings the engine
/// cannot give (none, rank) refuse an embedding context.
#[test]
fn embeddings_pool_and_attend_as_llama_cpp() {
    let dir = tempfile::tempdir().expect("temp dir");
    let prompt = "The quick brown fox jumps over the lazy dog";
    let (rel, abs) = tolerance(WeightType::F32);
    type Variant<'a> = (Arch, &'a str, &'a [(&'a str, Value)]);
    let variants: [Variant; 5] = [
        (Arch::Llama, "no key: mean", &[]),
        (Arch::Llama, "cls", &[("llama.pooling_type", Value::U32(2))]),
        (Arch::Qwen3, "last", &[("qwen3.pooling_type", Value::U32(3))]),
        (
            Arch::Qwen2,
            "mean, not causal",
            &[
                ("qwen2.pooling_type", Value::U32(1)),
                ("qwen2.attention.causal", Value::Bool(false)),
            ],
        ),
        (
            Arch::Qwen2,
            "last, not causal",
            &[
                ("qwen2.pooling_type", Value::U32(3)),
                ("qwen2.attention.causal", Value::Bool(false)),
            ],
        ),
    ];
    let raw = llama_raw();
    let mut seen: Vec<Vec<f32>> = Vec::new();
    for (i, (arch, what, set)) in variants.iter().enumerate() {
        let src = generate(dir.path(), *arch, ModelShape::tiny(), WeightType::F32);
        let path = dir.path().join(format!("embed-{i}.gguf"));
        rewrite(&src, &path, set, &[], &[]);
        let m = load(&path).unwrap_or_else(|e| panic!("{what}: load: {e}"));
        let got = engine_embedding(&m, prompt).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(got.iter().all(|x| x.is_finite()), "{what}: not finite");
        // Each variant changes the vector (so the comparison below can tell them apart).
        for s in seen.iter().filter(|s| s.len() == got.len()) {
            assert!(max_diff(s, &got) > 1e-3, "{what}: same vector as an earlier variant");
        }
        seen.push(got.clone());
        if let Some(raw) = &raw {
            let model = path.to_string_lossy().into_owned();
            let want: Vec<f32> = serde_json::from_value(
                raw_json(raw, &["embed", &model, "--prompt", prompt])["embedding"].clone(),
            )
            .expect("llama-raw embedding");
            let tol = abs + rel * max_abs(&want);
            let diff = max_diff(&got, &want);
            println!("{arch} {what}: max |diff| {diff:.2e} (tolerance {tol:.2e})");
            assert!(diff <= tol, "{arch} {what}: embedding differs from llama.cpp's by {diff}");
        }
    }
    // Pooling none (per-token vectors) and rank (a classifier's scores): refused.
    let src = generate(dir.path(), Arch::Llama, ModelShape::tiny(), WeightType::F32);
    for (v, name) in [(0, "no pooling"), (4, "rank pooling")] {
        let path = dir.path().join(format!("embed-{name}.gguf"));
        rewrite(&src, &path, &[("llama.pooling_type", Value::U32(v))], &[], &[]);
        let m = load(&path).expect("a generator with any pooling loads");
        let e = engine_embedding(&m, prompt).expect_err("no sequence embedding");
        assert_eq!(e.kind, ErrorKind::Unsupported, "{e}");
        assert!(e.message.contains(name) && e.message.contains("pooling_type"), "{e}");
        // Generation is unaffected.
        assert!(m.new_context(&params(1)).is_ok());
    }
    // A value llama.cpp does not define: no embedding either (llama.cpp aborts on it).
    let path = dir.path().join("embed-bad.gguf");
    rewrite(&src, &path, &[("llama.pooling_type", Value::U32(9))], &[], &[]);
    let m = load(&path).expect("generation does not read the pooling");
    let e = engine_embedding(&m, prompt).expect_err("pooling type 9 embeds nothing");
    assert_eq!(e.kind, ErrorKind::Unsupported, "{e}");
    assert!(e.message.contains("does not define") && e.message.contains("pooling_type"), "{e}");
}
