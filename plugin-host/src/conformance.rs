//! The backend conformance suite: one set of checks every backend plugin must pass,
//! run through the real ABI. `cargo test` runs it on every plugin in the workspace;
//! `corral plugin check PATH --model FILE` runs it on a third party's plugin.

use std::path::Path;

use corral_backend_api::{BatchEntry, Capabilities, ContextParams, ErrorKind};
use serde::Serialize;

use crate::engine::{Context, Model};

/// Outcome of one check.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    /// Check name.
    pub name: &'static str,
    /// `pass`, `fail` or `skip`.
    pub outcome: Outcome,
    /// What was seen.
    pub detail: String,
}

/// Pass, fail or skip.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The plugin behaves as the contract says.
    Pass,
    /// It does not.
    Fail,
    /// The check does not apply (e.g. embeddings on an engine without them).
    Skip,
}

/// Tolerances for logits comparisons: `|a - b| <= atol + rtol * max|a|`.
#[derive(Debug, Clone, Copy)]
pub struct Tolerance {
    /// Absolute part.
    pub atol: f32,
    /// Relative part (to the largest magnitude in the reference vector).
    pub rtol: f32,
}

impl Tolerance {
    /// The tolerance for a model of the given predominant quantization. With quantized
    /// weights, engines quantize activations too and batched and single-token paths use
    /// different kernels (tiled GEMM vs dot products), whose rounding differs by up to a
    /// few percent of the logit range; a real bug still moves logits by O(1).
    pub fn for_quantization(quantization: &str) -> Tolerance {
        let q = quantization.to_ascii_uppercase();
        if q.is_empty() || q.starts_with("F32") || q.starts_with("F16") || q.starts_with("BF16") {
            Tolerance::default()
        } else {
            Tolerance { atol: 1e-2, rtol: 5e-2 }
        }
    }
}

impl Default for Tolerance {
    /// Batched and single-sequence decodes run different kernels (different reduction
    /// orders), so they may differ by float rounding; 1e-3 absolute plus 1% of the largest
    /// logit is far below what a real bug (a wrong position, a mixed-up sequence) causes,
    /// which moves logits by O(1).
    fn default() -> Self {
        Tolerance { atol: 1e-3, rtol: 1e-2 }
    }
}

type CheckFn = fn(&Model, &Tolerance) -> Result<String, String>;

const PROMPTS: [&str; 3] = [
    "The quick brown fox jumps over the lazy dog.",
    "Once upon a time, in a land far away",
    "fn main() { println!(\"héllo, wörld — 日本語 🦀\"); }",
];

/// Runs every check on `model`.
pub fn run_all(model: &Model, tol: &Tolerance) -> Vec<CheckResult> {
    let checks: [(&'static str, CheckFn); 12] = [
        ("tokenize_roundtrip", tokenize_roundtrip),
        ("token_bytes_concat", token_bytes_concat),
        ("determinism", determinism),
        ("batch_equals_sequential", batch_equals_sequential),
        ("per_sequence_context", per_sequence_context),
        ("kv_remove_redecode", kv_remove_redecode),
        ("kv_copy", kv_copy),
        ("kv_clear", kv_clear),
        ("kv_shift", kv_shift),
        ("invalid_input_errors", invalid_input_errors),
        ("other_thread", other_thread),
        ("embeddings", embeddings),
    ];
    checks
        .iter()
        .map(|(name, f)| {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(model, tol)));
            let (outcome, detail) = match r {
                Ok(Ok(d)) if d.starts_with("skip:") => (Outcome::Skip, d[5..].trim().to_string()),
                Ok(Ok(d)) => (Outcome::Pass, d),
                Ok(Err(d)) => (Outcome::Fail, d),
                Err(_) => (Outcome::Fail, "the check panicked in the host".to_string()),
            };
            CheckResult { name, outcome, detail }
        })
        .collect()
}

/// The outcome of the whole suite on one plugin and model.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `name:variant` of the plugin.
    pub plugin: String,
    /// The model the checks ran on.
    pub model: std::path::PathBuf,
    /// Every check, in order.
    pub results: Vec<CheckResult>,
}

impl Report {
    /// Checks with `outcome`.
    pub fn count(&self, outcome: Outcome) -> usize {
        self.results.iter().filter(|r| r.outcome == outcome).count()
    }

    /// Whether no check failed.
    pub fn passed(&self) -> bool {
        self.count(Outcome::Fail) == 0
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "conformance of {} on {}:", self.plugin, self.model.display())?;
        for r in &self.results {
            let tag = match r.outcome {
                Outcome::Pass => "PASS",
                Outcome::Fail => "FAIL",
                Outcome::Skip => "SKIP",
            };
            writeln!(f, "  {tag} {:<26} {}", r.name, r.detail)?;
        }
        write!(
            f,
            "{} passed, {} failed, {} skipped",
            self.count(Outcome::Pass),
            self.count(Outcome::Fail),
            self.count(Outcome::Skip)
        )
    }
}

/// Why [`check_plugin`] could not run the suite at all.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// No manifest could be found for the path given.
    #[error("{0}")]
    NoManifest(String),
    /// The manifest does not parse.
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
    /// The plugin does not load.
    #[error(transparent)]
    Load(#[from] crate::loader::LoadError),
    /// The test model could not be written.
    #[error("cannot generate the test model: {0}")]
    Generate(String),
    /// The plugin cannot load the model.
    #[error("{plugin} could not load {model}: {error}")]
    LoadModel {
        /// `name:variant`.
        plugin: String,
        /// The model file.
        model: std::path::PathBuf,
        /// The plugin's error.
        error: corral_backend_api::BackendError,
    },
}

/// The manifest of the plugin at `path`: a manifest file, a plugin directory holding
/// `manifest.toml`, or a library with a manifest beside it that names it.
pub fn find_manifest(path: &Path) -> Result<std::path::PathBuf, CheckError> {
    use crate::discovery::DIR_MANIFEST_NAME;
    let none = |m: String| Err(CheckError::NoManifest(m));
    if path.is_dir() {
        let m = path.join(DIR_MANIFEST_NAME);
        if m.is_file() {
            return Ok(m);
        }
        return none(format!("{} holds no {DIR_MANIFEST_NAME}", path.display()));
    }
    if !path.exists() {
        return none(format!("{} does not exist", path.display()));
    }
    if path.extension().is_some_and(|e| e == "toml") {
        return Ok(path.to_path_buf());
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let lib = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    for d in crate::discovery::discover(&[dir.to_path_buf()]) {
        if d.manifest.as_ref().is_ok_and(|m| m.library == lib) {
            return Ok(d.manifest_path);
        }
    }
    let own = dir.join(DIR_MANIFEST_NAME);
    if own.is_file() {
        return Ok(own);
    }
    none(format!(
        "no manifest beside {} names it; a plugin ships a manifest TOML with its library",
        path.display()
    ))
}

/// Loads the plugin at `plugin` (see [`find_manifest`]) in this process with
/// `options_json` for its init, and runs the whole suite on `model`, or on a tiny
/// generated F32 GGUF model when `model` is `None`. This is what `corral plugin check`
/// runs, and what a third party calls from its own `cargo test`.
pub fn check_plugin_with(
    plugin: &Path,
    model: Option<&Path>,
    options_json: Option<String>,
) -> Result<Report, CheckError> {
    let manifest_path = find_manifest(plugin)?;
    let manifest = crate::manifest::Manifest::load(&manifest_path)?;
    let options = options_json.unwrap_or_else(|| {
        crate::choice::merged_options(&manifest, &crate::choice::BackendOptions::new())
    });
    let loaded = std::sync::Arc::new(crate::loader::load(&manifest, &manifest_path, options)?);
    let _tmp;
    let model_path = match model {
        Some(m) => m.to_path_buf(),
        None => {
            let dir = tempfile::tempdir().map_err(|e| CheckError::Generate(e.to_string()))?;
            let p = dir.path().join("tiny.gguf");
            let opts = corral_gguf::generate::GenerateOptions {
                weight_type: corral_gguf::generate::WeightType::F32,
                ..Default::default()
            };
            corral_gguf::generate::generate_llama(&p, &opts)
                .map_err(|e| CheckError::Generate(e.to_string()))?;
            _tmp = dir;
            p
        }
    };
    let sniffed =
        crate::format::sniff(&model_path, None, &|f| manifest.formats.iter().any(|x| x == f));
    let format = if manifest.formats.contains(&sniffed) {
        sniffed
    } else {
        manifest.formats.first().cloned().unwrap_or_else(|| "gguf".into())
    };
    let model = Model::load(
        loaded,
        &model_path.to_string_lossy(),
        &format,
        corral_backend_api::LoadOptions::default(),
    )
    .map_err(|error| CheckError::LoadModel {
        plugin: manifest.id(),
        model: model_path.clone(),
        error,
    })?;
    let tolerance = Tolerance::for_quantization(&model.meta.quantization);
    let results = run_all(&model, &tolerance);
    Ok(Report { plugin: manifest.id(), model: model_path, results })
}

/// [`check_plugin_with`] with the manifest's default options.
pub fn check_plugin(plugin: &Path, model: Option<&Path>) -> Result<Report, CheckError> {
    check_plugin_with(plugin, model, None)
}

fn ctx(model: &Model, n_seq: u32) -> Result<Context, String> {
    model
        .new_context(&ContextParams {
            n_ctx: 512,
            n_batch: 512,
            n_seq_max: n_seq,
            ..Default::default()
        })
        .map_err(|e| format!("new_context failed: {e}"))
}

fn toks(model: &Model, text: &str) -> Result<Vec<u32>, String> {
    let t = model.tokenize(text, true, false).map_err(|e| format!("tokenize failed: {e}"))?;
    if t.len() < 3 {
        return Err(format!("tokenize({text:?}) gave only {} tokens", t.len()));
    }
    Ok(t)
}

/// Logits of the last token of `tokens` decoded alone in seq 0 of a fresh context.
fn single(model: &Model, tokens: &[u32]) -> Result<Vec<f32>, String> {
    let mut c = ctx(model, 1)?;
    let i = c.prefill(0, 0, tokens).map_err(|e| format!("decode failed: {e}"))?;
    c.logits(i).map(<[f32]>::to_vec).map_err(|e| format!("logits failed: {e}"))
}

fn compare(what: &str, reference: &[f32], got: &[f32], tol: &Tolerance) -> Result<f32, String> {
    if reference.len() != got.len() {
        return Err(format!("{what}: logits length {} vs {}", got.len(), reference.len()));
    }
    let scale = reference.iter().fold(0f32, |m, x| m.max(x.abs()));
    let mut worst = 0f32;
    for (i, (a, b)) in reference.iter().zip(got).enumerate() {
        let d = (a - b).abs();
        if !d.is_finite() || d > tol.atol + tol.rtol * scale {
            return Err(format!(
                "{what}: logit {i} differs: {a} vs {b} (tolerance {} + {} x {scale})",
                tol.atol, tol.rtol
            ));
        }
        worst = worst.max(d);
    }
    Ok(worst)
}

fn tokenize_roundtrip(model: &Model, _: &Tolerance) -> Result<String, String> {
    for text in PROMPTS.iter().chain(&["  leading spaces", "tabs\tand\nnewlines\n"]) {
        let t = model.tokenize(text, false, false).map_err(|e| e.to_string())?;
        let back = model.detokenize(&t).map_err(|e| e.to_string())?;
        if back != *text {
            return Err(format!("detokenize(tokenize({text:?})) = {back:?}"));
        }
    }
    Ok("5 texts round-trip exactly".into())
}

fn token_bytes_concat(model: &Model, _: &Tolerance) -> Result<String, String> {
    let text = PROMPTS[2];
    let t = model.tokenize(text, false, false).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    for &tok in &t {
        bytes.extend(model.token_bytes(tok).map_err(|e| e.to_string())?);
    }
    if bytes != text.as_bytes() {
        return Err(format!("token bytes concatenate to {:?}", String::from_utf8_lossy(&bytes)));
    }
    Ok(format!("{} tokens' bytes rebuild the UTF-8 text", t.len()))
}

fn determinism(model: &Model, _: &Tolerance) -> Result<String, String> {
    let t = toks(model, PROMPTS[0])?;
    let (a, b) = (single(model, &t)?, single(model, &t)?);
    if a != b {
        return Err("two fresh contexts gave different logits for the same prompt".into());
    }
    Ok("identical logits from two contexts".into())
}

fn batch_equals_sequential(model: &Model, tol: &Tolerance) -> Result<String, String> {
    let seqs: Vec<Vec<u32>> = PROMPTS.iter().map(|p| toks(model, p)).collect::<Result<_, _>>()?;
    let mut c = ctx(model, 3)?;
    let worst = interleaved_matches_single(model, &mut c, &seqs, tol)?;
    Ok(format!("3 interleaved sequences match single decodes (max |diff| {worst:.2e})"))
}

/// ABI 1.1's per-sequence context (the server's) decodes like single contexts: the three
/// prompts interleaved in one batch, then one more token of each in a batch of three, as
/// the server's decode steps do.
fn per_sequence_context(model: &Model, tol: &Tolerance) -> Result<String, String> {
    let seqs: Vec<Vec<u32>> = PROMPTS.iter().map(|p| toks(model, p)).collect::<Result<_, _>>()?;
    let mut c = model
        .new_context_per_sequence(&ContextParams {
            n_ctx: 3 * 256,
            n_batch: 512,
            n_seq_max: 3,
            ..Default::default()
        })
        .map_err(|e| format!("new_context_per_sequence failed: {e}"))?;
    let mut worst = interleaved_matches_single(model, &mut c, &seqs, tol)?;
    let next = [seqs[1][1], seqs[2][1], seqs[0][1]];
    let step: Vec<BatchEntry> = (0..3)
        .map(|s| BatchEntry {
            token: next[s],
            pos: seqs[s].len() as u32,
            seq: s as u32,
            logits: true,
        })
        .collect();
    c.decode(&step).map_err(|e| format!("a step of 3 sequences failed: {e}"))?;
    for (s, seq) in seqs.iter().enumerate() {
        let mut longer = seq.clone();
        longer.push(next[s]);
        let reference = single(model, &longer)?;
        let got = c.logits(s).map_err(|e| e.to_string())?.to_vec();
        worst = worst.max(compare(&format!("step of sequence {s}"), &reference, &got, tol)?);
    }
    // Copying part of a sequence may be unsupported here, but must not bring the
    // process down (llama.cpp asserts on it between KV streams).
    match c.kv_copy(0, 1, 0, 2) {
        Ok(()) => {}
        Err(e) if e.kind == ErrorKind::Unsupported => {}
        Err(e) => return Err(format!("partial kv_copy failed: {e}")),
    }
    Ok(format!(
        "3 sequences in a per-sequence context match single decodes, prompt and step \
         (max |diff| {worst:.2e})"
    ))
}

/// Decodes `seqs` interleaved in one batch of `c` (sequence i as id i) and compares each
/// one's last logits with a single decode; the largest difference.
fn interleaved_matches_single(
    model: &Model,
    c: &mut Context,
    seqs: &[Vec<u32>],
    tol: &Tolerance,
) -> Result<f32, String> {
    let reference: Vec<Vec<f32>> =
        seqs.iter().map(|s| single(model, s)).collect::<Result<_, _>>()?;
    // Interleave the sequences' tokens in one batch.
    let mut batch = Vec::new();
    let mut last = vec![0usize; seqs.len()];
    let longest = seqs.iter().map(Vec::len).max().unwrap_or(0);
    for pos in 0..longest {
        for (s, toks) in seqs.iter().enumerate() {
            if let Some(&token) = toks.get(pos) {
                let is_last = pos + 1 == toks.len();
                if is_last {
                    last[s] = batch.len();
                }
                batch.push(BatchEntry { token, pos: pos as u32, seq: s as u32, logits: is_last });
            }
        }
    }
    c.decode(&batch).map_err(|e| format!("mixed batch decode failed: {e}"))?;
    let mut worst = 0f32;
    for (s, &index) in last.iter().enumerate() {
        let got = c.logits(index).map_err(|e| e.to_string())?.to_vec();
        worst = worst.max(compare(&format!("sequence {s}"), &reference[s], &got, tol)?);
    }
    Ok(worst)
}

fn kv_remove_redecode(model: &Model, tol: &Tolerance) -> Result<String, String> {
    let t = toks(model, PROMPTS[1])?;
    let n = t.len();
    let mut c = ctx(model, 1)?;
    let i = c.prefill(0, 0, &t).map_err(|e| e.to_string())?;
    let first = c.logits(i).map_err(|e| e.to_string())?.to_vec();
    if c.kv_pos_max(0) != n as i32 - 1 {
        return Err(format!("kv_pos_max = {} after {n} tokens", c.kv_pos_max(0)));
    }
    // Drop the last 2 positions, then decode them again.
    c.kv_remove(0, n as i32 - 2, -1).map_err(|e| e.to_string())?;
    if c.kv_pos_max(0) != n as i32 - 3 {
        return Err(format!("kv_pos_max = {} after removing the tail", c.kv_pos_max(0)));
    }
    let i = c.prefill(0, n as u32 - 2, &t[n - 2..]).map_err(|e| e.to_string())?;
    let again = c.logits(i).map_err(|e| e.to_string())?.to_vec();
    let worst = compare("re-decode after kv_remove", &first, &again, tol)?;
    // A different token in the re-decoded slot must change the logits.
    c.kv_remove(0, n as i32 - 1, -1).map_err(|e| e.to_string())?;
    let other = (t[n - 1] + 1) % model.vocab_size;
    c.decode(&[BatchEntry { token: other, pos: n as u32 - 1, seq: 0, logits: true }])
        .map_err(|e| e.to_string())?;
    let changed = c.logits(0).map_err(|e| e.to_string())?.to_vec();
    if compare("", &first, &changed, &Tolerance { atol: 1e-6, rtol: 0.0 }).is_ok() {
        return Err(
            "replacing the last token did not change the logits: kv_remove had no effect".into()
        );
    }
    Ok(format!("removed tail re-decodes to the same logits (max |diff| {worst:.2e})"))
}

fn kv_copy(model: &Model, tol: &Tolerance) -> Result<String, String> {
    let t = toks(model, PROMPTS[0])?;
    let n = t.len();
    let mut c = ctx(model, 2)?;
    let i = c.prefill(0, 0, &t).map_err(|e| e.to_string())?;
    let reference = c.logits(i).map_err(|e| e.to_string())?.to_vec();
    // Share all but the last token with seq 1, then decode the last token there.
    c.kv_copy(0, 1, 0, n as i32 - 1).map_err(|e| e.to_string())?;
    if c.kv_pos_max(1) != n as i32 - 2 {
        return Err(format!(
            "kv_pos_max(1) = {} after copying {} positions",
            c.kv_pos_max(1),
            n - 1
        ));
    }
    c.decode(&[BatchEntry { token: t[n - 1], pos: n as u32 - 1, seq: 1, logits: true }])
        .map_err(|e| e.to_string())?;
    let got = c.logits(0).map_err(|e| e.to_string())?.to_vec();
    let worst = compare("copied sequence", &reference, &got, tol)?;
    Ok(format!("a copied prefix continues like the original (max |diff| {worst:.2e})"))
}

fn kv_clear(model: &Model, _: &Tolerance) -> Result<String, String> {
    let t = toks(model, PROMPTS[0])?;
    let mut c = ctx(model, 2)?;
    c.prefill(0, 0, &t).map_err(|e| e.to_string())?;
    c.prefill(1, 0, &t).map_err(|e| e.to_string())?;
    c.kv_clear().map_err(|e| e.to_string())?;
    if c.kv_pos_max(0) != -1 || c.kv_pos_max(1) != -1 {
        return Err("sequences not empty after kv_clear".into());
    }
    c.prefill(0, 0, &t).map_err(|e| e.to_string())?;
    c.kv_remove(-1, 0, -1).map_err(|e| e.to_string())?;
    if c.kv_pos_max(0) != -1 {
        return Err("kv_remove(-1, 0, -1) left sequence 0 non-empty".into());
    }
    Ok("clear and remove-all empty every sequence".into())
}

/// ABI 1.1's `kv_shift`: a whole sequence moved up by 7 positions continues exactly as
/// before (position encodings like RoPE depend on distances only, so only the rounding of
/// the re-encoded keys differs), and moved back down again too. Skipped for engines that
/// answer `Unsupported`. (A shift after cutting a hole cannot be checked this way: the
/// kept tokens' states attended to the cut ones.)
fn kv_shift(model: &Model, tol: &Tolerance) -> Result<String, String> {
    let t = toks(model, PROMPTS[1])?;
    let n = t.len();
    let reference = single(model, &t)?;
    let mut c = ctx(model, 1)?;
    c.prefill(0, 0, &t[..n - 1]).map_err(|e| e.to_string())?;
    let declared = model.capabilities.contains(Capabilities::CONTEXT_SHIFT);
    match c.kv_shift(0, 0, -1, 7) {
        Err(e) if e.kind == ErrorKind::Unsupported && !declared => {
            return Ok(format!("skip: the engine does not declare context-shift ({e})"));
        }
        Err(e) if e.kind == ErrorKind::Unsupported => {
            return Err(format!("the engine declares context-shift but kv_shift says: {e}"));
        }
        r => r.map_err(|e| format!("kv_shift(0, 0, -1, 7) failed: {e}"))?,
    }
    let pos_max = c.kv_pos_max(0);
    if pos_max != (n - 2 + 7) as i32 {
        return Err(format!("after a shift by 7, kv_pos_max is {pos_max}, not {}", n - 2 + 7));
    }
    let step = |c: &mut Context, pos: usize| -> Result<Vec<f32>, String> {
        c.decode(&[BatchEntry { token: t[n - 1], pos: pos as u32, seq: 0, logits: true }])
            .map_err(|e| format!("decode after the shift failed: {e}"))?;
        c.logits(0).map(<[f32]>::to_vec).map_err(|e| e.to_string())
    };
    let up = step(&mut c, n - 1 + 7)?;
    let mut worst = compare("sequence shifted by +7", &reference, &up, tol)?;
    // Back down: drop the last token, shift by -7, decode it again at its first position.
    c.kv_remove(0, (n - 1 + 7) as i32, -1).map_err(|e| e.to_string())?;
    c.kv_shift(0, 7, -1, -7).map_err(|e| format!("kv_shift(0, 7, -1, -7) failed: {e}"))?;
    let down = step(&mut c, n - 1)?;
    worst = worst.max(compare("sequence shifted back by -7", &reference, &down, tol)?);
    Ok(format!(
        "a sequence moved up 7 positions and back continues as before (max |diff| {worst:.2e})"
    ))
}

fn expect_invalid(
    what: &str,
    r: Result<(), corral_backend_api::BackendError>,
) -> Result<(), String> {
    match r {
        Err(e) if e.kind == ErrorKind::InvalidInput => Ok(()),
        Err(e) => Err(format!("{what}: expected an invalid-input error, got {e}")),
        Ok(()) => Err(format!("{what}: accepted")),
    }
}

fn invalid_input_errors(model: &Model, _: &Tolerance) -> Result<String, String> {
    let mut c = ctx(model, 2)?;
    let n_ctx = c.params.n_ctx;
    let e = |token, pos, seq| [BatchEntry { token, pos, seq, logits: true }];
    expect_invalid("token == vocab_size", c.decode(&e(model.vocab_size, 0, 0)))?;
    expect_invalid("token u32::MAX", c.decode(&e(u32::MAX, 0, 0)))?;
    expect_invalid("position == n_ctx", c.decode(&e(1, n_ctx, 0)))?;
    expect_invalid("sequence == n_seq_max", c.decode(&e(1, 0, 2)))?;
    expect_invalid("empty batch", c.decode(&[]))?;
    expect_invalid("token_to_bytes(vocab_size)", model.token_bytes(model.vocab_size).map(|_| ()))?;
    // The context still works afterwards.
    c.decode(&e(1, 0, 0)).map_err(|e| format!("context unusable after errors: {e}"))?;
    if c.logits(5).is_ok() {
        return Err("logits of a batch entry that does not exist were returned".into());
    }
    Ok("bad tokens, positions, sequences and empty batches are refused; context still usable"
        .into())
}

fn other_thread(model: &Model, tol: &Tolerance) -> Result<String, String> {
    let t = toks(model, PROMPTS[2])?;
    let reference = single(model, &t)?;
    let c = ctx(model, 1)?;
    let got = std::thread::scope(|s| {
        s.spawn(move || {
            let mut c = c;
            let i = c.prefill(0, 0, &t).map_err(|e| e.to_string())?;
            c.logits(i).map(<[f32]>::to_vec).map_err(|e| e.to_string())
        })
        .join()
        .map_err(|_| "the other thread panicked".to_string())?
    })?;
    let worst = compare("decode on another thread", &reference, &got, tol)?;
    Ok(format!("a context moved to another thread decodes the same (max |diff| {worst:.2e})"))
}

fn embeddings(model: &Model, _: &Tolerance) -> Result<String, String> {
    let params = ContextParams {
        n_ctx: 512,
        n_batch: 512,
        n_seq_max: 2,
        embeddings: true,
        ..Default::default()
    };
    let declared = model.capabilities.contains(Capabilities::EMBEDDINGS);
    let skip = |e: &corral_backend_api::BackendError| -> Result<String, String> {
        if declared {
            Err(format!("the engine declares embeddings but answers: {e}"))
        } else {
            Ok(format!("skip: the engine does not declare embeddings ({e})"))
        }
    };
    let mut c = match model.new_context(&params) {
        Ok(c) => c,
        Err(e) if e.kind == ErrorKind::Unsupported => return skip(&e),
        Err(e) => return Err(format!("embeddings context: {e}")),
    };
    let a = toks(model, PROMPTS[0])?;
    let b = toks(model, PROMPTS[1])?;
    let mut batch: Vec<BatchEntry> = a
        .iter()
        .enumerate()
        .map(|(i, &t)| BatchEntry { token: t, pos: i as u32, seq: 0, logits: true })
        .collect();
    batch.extend(b.iter().enumerate().map(|(i, &t)| BatchEntry {
        token: t,
        pos: i as u32,
        seq: 1,
        logits: true,
    }));
    match c.decode(&batch) {
        Ok(()) => {}
        Err(e) if e.kind == ErrorKind::Unsupported => return skip(&e),
        Err(e) => return Err(format!("embeddings decode: {e}")),
    }
    let ea = c.embeddings(0).map_err(|e| e.to_string())?;
    let eb = c.embeddings(1).map_err(|e| e.to_string())?;
    if ea.is_empty() || ea.len() != eb.len() || ea.iter().any(|x| !x.is_finite()) {
        return Err(format!("bad embedding vectors (len {} and {})", ea.len(), eb.len()));
    }
    if ea == eb {
        return Err("two different texts gave the same embedding".into());
    }
    Ok(format!("two sequences pooled to {}-dimensional vectors", ea.len()))
}
