//! Checks a model file before llama.cpp sees it.
//!
//! llama.cpp handles most bad files by returning null, but its messages go to the log and
//! some malformed input reaches asserts. So the plugin first checks, itself: that the file
//! exists ([`ErrorKind::NotFound`]), that it starts with the GGUF magic (`InvalidInput`,
//! "not a GGUF file"), that ggml's GGUF reader parses its header, key/values and tensor
//! table (metadata only, no tensor data is read), and that the file is long enough to
//! hold every tensor the table names ("truncated").

use std::ffi::{CStr, CString};
use std::path::Path;

use corral_backend_api::{BackendError, ErrorKind};
use corral_gguf::pooling::Pooling;
use corral_gguf::reader::GgufFile;
use llama_cpp_sys_2 as sys;

use crate::logging;

/// What the pre-check learned about a GGUF file.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufSummary {
    /// `general.architecture`, if present.
    pub architecture: Option<String>,
    /// `general.file_type` (llama.cpp's `llama_ftype`), if present.
    pub file_type: Option<u32>,
    /// Number of tensors in the file.
    pub n_tensors: u64,
    /// Array-valued keys, summarised as `[N × TYPE]` (llama.cpp's own metadata API skips
    /// arrays).
    pub arrays: Vec<(String, String)>,
    /// How a sequence embedding of this file pools, or why the file makes none
    /// ([`Pooling::for_sequence_embedding`]).
    pub embedding_pooling: Result<Pooling, String>,
    /// For a SentencePiece vocabulary that lacks byte tokens: what it cannot spell
    /// ([`SpmGaps`]); `None` for every other vocabulary.
    pub spm_gaps: Option<std::sync::Arc<SpmGaps>>,
}

/// The characters a SentencePiece vocabulary without all 256 byte tokens cannot spell.
/// llama.cpp's SPM tokenizer spells a character its vocabulary has no piece for as the
/// character's bytes, each as `<0xXX>` or the byte itself, and looks a missing one up
/// with `std::map::at`: the exception crosses its C API and ends the process. Such
/// vocabularies exist (SentencePiece models trained without byte fallback), and spell
/// most text, so the model loads and only a text holding such a character is refused.
#[derive(Debug, PartialEq)]
pub struct SpmGaps {
    /// The bytes with no token of their own.
    missing: [bool; 256],
    /// Every piece of the vocabulary (a character that is one is spelled by it).
    pieces: std::collections::HashSet<String>,
}

impl SpmGaps {
    /// The gaps of the file's vocabulary, or `None` when it is no SentencePiece one or
    /// has a token for every byte.
    fn of(g: &GgufFile) -> Option<SpmGaps> {
        if g.get_str("tokenizer.ggml.model") != Some("llama") {
            return None;
        }
        let tokens = g.get_str_array("tokenizer.ggml.tokens")?;
        let mut missing = [true; 256];
        for t in &tokens {
            let byte = match t.as_bytes() {
                [b'<', b'0', b'x', hex @ .., b'>'] if hex.len() == 2 => {
                    std::str::from_utf8(hex).ok().and_then(|h| u8::from_str_radix(h, 16).ok())
                }
                // The byte itself, as llama.cpp's fallback looks it up (ASCII only: a lone
                // byte above 0x7F is no UTF-8 string a vocabulary could hold).
                [b] if *b < 0x80 => Some(*b),
                [] => Some(0),
                _ => None,
            };
            if let Some(b) = byte {
                missing[b as usize] = false;
            }
        }
        missing
            .iter()
            .any(|&m| m)
            .then(|| SpmGaps { missing, pieces: tokens.iter().map(ToString::to_string).collect() })
    }

    /// The first character of `text` the vocabulary cannot spell (as text), with a byte
    /// it lacks. Spaces are spelled as SentencePiece's `▁`, which also starts the text;
    /// bytes that are no UTF-8 go one by one, as llama.cpp takes them.
    pub fn unspellable(&self, text: &[u8]) -> Option<(String, u8)> {
        let lacks = |bytes: &[u8]| bytes.iter().copied().find(|&b| self.missing[b as usize]);
        let mut buf = [0u8; 4];
        let mut check = |c: char| {
            let c = if c == ' ' { '\u{2581}' } else { c };
            let piece = c.encode_utf8(&mut buf);
            if self.pieces.contains(piece as &str) { None } else { lacks(piece.as_bytes()) }
                .map(|b| (c.to_string(), b))
        };
        if let Some(gap) = check(' ') {
            return Some(gap);
        }
        for chunk in text.utf8_chunks() {
            if let Some(gap) = chunk.valid().chars().find_map(&mut check) {
                return Some(gap);
            }
            if let Some(b) = lacks(chunk.invalid()) {
                return Some((format!("\\x{b:02X}"), b));
            }
        }
        None
    }
}

/// Checks `path` as described in the module docs and summarises its metadata.
pub fn check_gguf(path: &Path, vocabulary: bool) -> Result<GgufSummary, BackendError> {
    let meta = std::fs::metadata(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            BackendError::not_found(format!("model file {} does not exist", path.display()))
        } else {
            BackendError::invalid(format!("cannot read model file {}: {e}", path.display()))
        }
    })?;
    if !meta.is_file() {
        return Err(BackendError::invalid(format!(
            "{} is not a file (the llama-cpp backend loads single GGUF files)",
            path.display()
        )));
    }
    let mut file = std::fs::File::open(path).map_err(|e| {
        BackendError::invalid(format!("cannot open model file {}: {e}", path.display()))
    })?;
    let is_gguf = corral_gguf::reader::starts_with_magic(&mut file)
        .map_err(|e| BackendError::invalid(format!("cannot read {}: {e}", path.display())))?;
    if !is_gguf {
        return Err(BackendError::invalid(format!(
            "{} is not a GGUF file (it does not start with the GGUF magic bytes)",
            path.display()
        )));
    }
    drop(file);

    let cpath = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
        BackendError::invalid(format!("model path {} contains a NUL byte", path.display()))
    })?;
    let params = sys::gguf_init_params { no_alloc: true, ctx: std::ptr::null_mut() };
    logging::clear_errors();
    // SAFETY: `cpath` is a valid NUL-terminated path; with `no_alloc` and a null `ctx`
    // ggml reads only the header, key/values and tensor table.
    let ctx = unsafe { sys::gguf_init_from_file(cpath.as_ptr(), params) };
    if ctx.is_null() {
        let why = logging::take_errors().join("; ");
        return Err(BackendError::invalid(format!(
            "{} is a malformed or truncated GGUF file: {}",
            path.display(),
            if why.is_empty() { "ggml could not parse its header" } else { &why }
        )));
    }
    let guard = GgufCtx(ctx);
    // corral-gguf's bounded reader, for the checks ggml's reader gives no access to. A
    // file it refuses (beyond its bounds) that ggml parsed goes on unchecked.
    let file = GgufFile::open(path);
    let embedding_pooling = match &file {
        Ok(f) => Pooling::for_sequence_embedding(f),
        Err(e) => Err(format!("corral cannot read this file's metadata ({e}), so not its pooling")),
    };
    let spm_gaps = file.as_ref().ok().and_then(SpmGaps::of).map(std::sync::Arc::new);
    let summary = summarise(&guard, path, meta.len(), embedding_pooling, spm_gaps);
    drop(guard);
    let summary = summary?;
    if let Ok(file) = &file {
        check_hyperparameters(file, path)?;
        if vocabulary {
            check_vocabulary(file, path)?;
        }
    }
    Ok(summary)
}

/// Architectures whose graphs assert that RoPE turns the whole head
/// (`GGML_ASSERT(n_embd_head == n_rot)` in llama.cpp's `src/models/<arch>.cpp`), with `_`
/// written `-`.
#[rustfmt::skip]
const WHOLE_HEAD_ROPE: &[&str] = &[
    "apertus", "arcee", "arctic", "baichuan", "chameleon", "codeshell", "cogvlm",
    "cohere2moe", "dbrx", "deci", "deepseek", "dots1", "dream", "ernie4-5-moe", "ernie4-5",
    "exaone-moe", "exaone", "exaone4", "falcon", "granite-swa", "granite", "grok",
    "grovemoe", "hunyuan-moe", "internlm2", "jais2", "llada-moe", "llada", "llama",
    "llama4", "mellum", "minimax-m2", "mistral3", "nemotron", "olmo", "olmo2", "olmoe",
    "orion", "plamo", "qwen2", "qwen2moe", "qwen2vl", "qwen3", "qwen3moe", "qwen3vl",
    "qwen3vlmoe", "seed-oss", "smallthinker", "smollm3", "starcoder2", "xverse",
];

/// Architectures whose graphs assert that keys and values have the same head size
/// (`GGML_ASSERT(n_embd_head == hparams.n_embd_head_k())` in `src/models/<arch>.cpp`).
#[rustfmt::skip]
const EQUAL_KV_HEADS: &[&str] = &[
    "afmoe", "apertus", "arcee", "arctic", "baichuan", "bailingmoe2", "bert", "bitnet",
    "bloom", "chameleon", "chatglm", "clef", "codeshell", "cogvlm", "cohere2", "cohere2moe",
    "command-r", "dbrx", "deci", "deepseek", "dots1", "dream", "ernie4-5-moe", "ernie4-5",
    "eurobert", "exaone", "falcon", "glm4-moe", "glm4", "gpt2", "gptneox", "granite-hybrid",
    "granite-swa", "granite", "grok", "grovemoe", "hunyuan-moe", "hunyuan-vl", "internlm2",
    "jais", "jais2", "llada-moe", "llada", "llama", "llama4", "mellum", "minimax-01",
    "minimax-m2", "mistral3", "modern-bert", "mpt", "nemotron-h-moe", "nemotron-h",
    "nemotron", "neo-bert", "olmo", "olmo2", "olmoe", "openelm", "orion", "phi2", "phi3",
    "plamo", "qwen", "qwen2", "qwen2moe", "qwen2vl", "qwen3", "qwen3moe", "qwen3next",
    "qwen3vl", "qwen3vlmoe", "refact", "seed-oss", "smallthinker", "smollm3", "stablelm",
    "starcoder", "starcoder2", "t5", "xverse",
];

/// (architecture, key) pairs whose soft-cap llama.cpp divides by without checking for 0
/// (`models/gemma2.cpp`, `gemma3n.cpp`; grok's attention cap in `llama-graph.cpp`).
const UNGUARDED_SOFTCAPS: &[(&str, &str)] = &[
    ("gemma2", "attn_logit_softcapping"),
    ("gemma2", "final_logit_softcapping"),
    ("gemma3n", "final_logit_softcapping"),
    ("grok", "attn_logit_softcapping"),
];

/// A layer's attention weights (`blk.N.<name>.weight`, llama.cpp's `llama-arch.cpp`):
/// plain, fused, and multi-head latent attention's.
const ATTENTION_WEIGHTS: &[&str] = &[
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_qkv",
    "attn_kv",
    "attn_q_a",
    "attn_q_b",
    "attn_kv_a_mqa",
    "attn_kv_b",
    "attn_k_b",
    "attn_v_b",
];

/// llama.cpp's `LLAMA_MAX_LAYERS` and `LLAMA_MAX_EXPERTS`.
const MAX_LAYERS: i64 = 512;
const MAX_EXPERTS: i64 = 1024;

/// Hyperparameters that make llama.cpp divide by zero, allocate absurd buffers, overflow,
/// hang or abort (each rule below was a `GGML_ASSERT`, a segfault or a hang in a sweep of
/// mutated files): counts that are zero where they must not be, beyond any real model or
/// llama.cpp's limits, of a type no count has, or inconsistent (heads must divide the
/// embedding, KV heads the heads; experts used at most the experts; RoPE turns an even
/// number of a head's dimensions, the whole head where the graph asserts it); RoPE
/// scaling types and bases, norm epsilons and sliding-window patterns llama.cpp cannot
/// use; tensor data aligned below ggml's 32 bytes; weights declared as integers.
fn check_hyperparameters(g: &GgufFile, path: &Path) -> Result<(), BackendError> {
    let bad = |what: String| {
        BackendError::invalid(format!("{} has impossible hyperparameters: {what}", path.display()))
    };
    if let Some(a) = g.get("general.alignment") {
        match a.as_u64() {
            Some(n) if n >= 32 && n.is_power_of_two() => {}
            _ => {
                return Err(bad(format!(
                    "general.alignment is {}; llama.cpp maps tensors in place and needs a power \
                     of two of at least 32",
                    a.display_short()
                )));
            }
        }
    }
    use corral_gguf::GgmlType as T;
    if let Some(t) = g.tensors().iter().find(|t| {
        matches!(t.ggml_type, T::I8 | T::I16 | T::I32 | T::I64 | T::F64)
            && (t.name.ends_with(".weight") || t.name.ends_with(".bias"))
    }) {
        return Err(bad(format!("the weight {} is declared {:?}", t.name, t.ggml_type)));
    }
    // RoPE factor tensors go into ggml_rope_ext, which asserts F32.
    if let Some(t) = g.tensors().iter().find(|t| {
        t.ggml_type != T::F32
            && (t.name.starts_with("rope_freqs.") || t.name.starts_with("rope_factors_"))
    }) {
        return Err(bad(format!("the RoPE factors {} are {:?}, not F32", t.name, t.ggml_type)));
    }
    let Some(arch) = g.architecture().map(str::to_string) else { return Ok(()) };
    let key = |k: &str| format!("{arch}.{k}");
    // Soft-caps divide the scores; a cap of 0 where the graph divides by it regardless
    // turns every activation into NaN (elsewhere 0 means no cap, as gemma3's, gemma4's and
    // grok's final cap: llama.cpp skips it).
    for k in ["attn_logit_softcapping", "final_logit_softcapping"] {
        let Some(v) = g.get(&key(k)) else { continue };
        let zero_is_none = !UNGUARDED_SOFTCAPS.contains(&(arch.as_str(), k));
        if !v.as_f64().is_some_and(|x| x.is_finite() && (x >= 1e-3 || (x == 0.0 && zero_is_none))) {
            return Err(bad(format!(
                "{} is {}, not a cap of at least 0.001",
                key(k),
                v.display_short()
            )));
        }
    }
    if matches!(arch.as_str(), "gemma2" | "gemma3")
        && g.get(&key("attention.sliding_window")).and_then(corral_gguf::Value::as_u64) == Some(0)
    {
        return Err(bad(format!("{} is 0", key("attention.sliding_window"))));
    }
    // Every element of a count (a number, or per layer an array of numbers or flags).
    let ints = |k: &str| -> Result<Option<Vec<i64>>, BackendError> {
        let Some(v) = g.get(&key(k)) else { return Ok(None) };
        let one = |v: &corral_gguf::Value| match v {
            corral_gguf::Value::Bool(b) => Some(i64::from(*b)),
            v => v.as_i64(),
        };
        let all = match v {
            corral_gguf::Value::Array { values, .. } => values.iter().map(one).collect(),
            v => one(v).map(|x| vec![x]),
        };
        all.map(Some)
            .ok_or_else(|| bad(format!("{} is {}, not a count", key(k), v.display_short())))
    };
    let max_of = |k: &str| -> Result<Option<i64>, BackendError> {
        Ok(ints(k)?.map(|v| v.into_iter().max().unwrap_or(0)))
    };
    let first = |k: &str| -> Result<Option<i64>, BackendError> {
        Ok(ints(k)?.and_then(|v| v.first().copied()))
    };
    let limits: [(&str, i64); 11] = [
        ("block_count", MAX_LAYERS),
        ("attention.sliding_window", i64::from(i32::MAX)),
        ("embedding_length", 1 << 18),
        ("feed_forward_length", 1 << 20),
        ("attention.head_count", 1 << 14),
        ("attention.head_count_kv", 1 << 14),
        ("attention.key_length", 1 << 16),
        ("attention.value_length", 1 << 16),
        ("context_length", 1 << 31),
        ("expert_count", MAX_EXPERTS),
        ("expert_used_count", MAX_EXPERTS),
    ];
    for (k, max) in limits {
        for v in ints(k)?.unwrap_or_default() {
            if !(0..=max).contains(&v) {
                return Err(bad(format!("{} is {v}, beyond any real model (0 to {max})", key(k))));
            }
        }
    }
    if let Some(n) = first("block_count")?
        && n < 1
    {
        return Err(bad(format!("{} is 0", key("block_count"))));
    }
    // Experts, as llama.cpp's load_hparams asserts them.
    let experts = first("expert_count")?.unwrap_or(0);
    let used = max_of("expert_used_count")?.unwrap_or(0);
    if used > experts || (experts > 0 && used == 0) {
        return Err(bad(format!(
            "{} experts with {used} used per token ({} and {})",
            experts,
            key("expert_count"),
            key("expert_used_count")
        )));
    }
    let groups = first("expert_group_count")?.unwrap_or(0);
    let group_used = first("expert_group_used_count")?.unwrap_or(0);
    if experts > 0
        && (groups >= experts
            || (groups > 1 && (experts % groups != 0 || group_used == 0 || group_used >= groups)))
    {
        return Err(bad(format!(
            "{experts} experts in {groups} groups with {group_used} used ({})",
            key("expert_group_count")
        )));
    }
    if let Some(t) = g.get(&key("rope.scaling.type")) {
        let known = ["none", "linear", "yarn", "longrope"];
        if !t.as_str().is_some_and(|t| known.contains(&t)) {
            return Err(bad(format!(
                "{} is {}, not one of {}",
                key("rope.scaling.type"),
                t.display_short(),
                known.join(", ")
            )));
        }
    }
    // Each number finite and at least its minimum (a RoPE base below 1 or a NaN scale
    // turns every activation into NaN; a negative epsilon is a GGML_ASSERT).
    for (k, min, want) in [
        ("attention.layer_norm_rms_epsilon", 0.0, "a number >= 0"),
        ("attention.layer_norm_epsilon", 0.0, "a number >= 0"),
        ("rope.freq_base", 1.0, "a base >= 1"),
        ("rope.freq_base_swa", 1.0, "a base >= 1"),
        ("rope.scaling.factor", 0.0, "a number >= 0"),
        ("rope.scaling.attn_factor", 0.0, "a number >= 0"),
    ] {
        if let Some(v) = g.get(&key(k))
            && !v.as_f64().is_some_and(|x| x.is_finite() && x >= min)
        {
            return Err(bad(format!("{} is {}, not {want}", key(k), v.display_short())));
        }
    }
    // llama.cpp divides by the scaling factor: one so small that 1/factor overflows is no
    // factor.
    if let Some(v) = g.get(&key("rope.scaling.factor"))
        && v.as_f64().is_some_and(|x| x > 0.0 && x < 1e-6)
    {
        return Err(bad(format!("{} is {}", key("rope.scaling.factor"), v.display_short())));
    }
    if let Some(v) = g.get(&key("rope.scaling.attn_factor"))
        && v.as_f64().is_some_and(|x| x > 1e3)
    {
        return Err(bad(format!("{} is {}", key("rope.scaling.attn_factor"), v.display_short())));
    }
    // Heads per layer (a count, or an array per layer). A layer with attention weights
    // needs heads and KV heads that divide them; a layer without (a recurrent layer of a
    // hybrid model: Jamba, LFM2, Nemotron-H, granite-hybrid; DeciLM's skipped attention)
    // has 0 KV heads, and a model with none (Mamba, RWKV) 0 heads.
    let n_layer = usize::try_from(first("block_count")?.unwrap_or(0)).unwrap_or(0);
    let heads = ints("attention.head_count")?;
    let kv_heads = ints("attention.head_count_kv")?;
    let at = |v: &Option<Vec<i64>>, il: usize| match v.as_deref() {
        Some([one]) => Some(*one),
        Some(per_layer) => per_layer.get(il).copied(),
        None => None,
    };
    let attending: std::collections::HashSet<usize> = g
        .tensors()
        .iter()
        .filter_map(|t| {
            let (layer, name) = t.name.strip_prefix("blk.")?.split_once('.')?;
            let weight = name.strip_suffix(".weight")?;
            ATTENTION_WEIGHTS.contains(&weight).then(|| layer.parse().ok())?
        })
        .collect();
    for il in 0..n_layer {
        let Some(n_head) = at(&heads, il) else { break };
        let n_kv = at(&kv_heads, il).unwrap_or(n_head);
        if attending.contains(&il) && (n_head == 0 || n_kv == 0 || n_head % n_kv != 0) {
            return Err(bad(format!(
                "layer {il} has attention weights, {n_head} heads and {n_kv} KV heads ({} and \
                 {}); the heads must be a non-zero multiple of the KV heads",
                key("attention.head_count"),
                key("attention.head_count_kv")
            )));
        }
    }
    // The head size from layer 0's heads, as llama.cpp takes it; none without heads.
    let (Some(n_embd), Some(n_head)) = (first("embedding_length")?, at(&heads, 0)) else {
        return Ok(());
    };
    if n_head == 0 {
        return Ok(());
    }
    if n_embd == 0 {
        return Err(bad(format!("{arch}.embedding_length is 0")));
    }
    let head_key = first("attention.key_length")?;
    // Models with explicit head sizes (key_length) need not divide evenly.
    if head_key.is_none() && n_embd % n_head != 0 {
        return Err(bad(format!(
            "{arch}.embedding_length {n_embd} is not a multiple of head_count {n_head}"
        )));
    }
    let head = head_key.unwrap_or(n_embd / n_head);
    let head_v = first("attention.value_length")?.unwrap_or(n_embd / n_head);
    if head != head_v && EQUAL_KV_HEADS.contains(&arch.replace('_', "-").as_str()) {
        return Err(bad(format!(
            "keys of {head} and values of {head_v} per head ({} and {}); {arch} needs them equal",
            key("attention.key_length"),
            key("attention.value_length")
        )));
    }
    if let Some(n_rot) = first("rope.dimension_count")? {
        let whole = WHOLE_HEAD_ROPE.contains(&arch.replace('_', "-").as_str());
        if n_rot < 2 || n_rot % 2 != 0 || n_rot > head || (whole && n_rot != head) {
            return Err(bad(format!(
                "{} is {n_rot} for heads of {head}; RoPE turns an even number of a head's \
                 dimensions{}",
                key("rope.dimension_count"),
                if whole { format!(", and all of them in {arch}") } else { String::new() }
            )));
        }
    }
    // A sliding-window architecture whose pattern leaves no layer sliding (llama.cpp
    // asserts one when it makes the cache).
    if g.get(&key("attention.sliding_window")).is_some()
        && let Some(p) = ints("attention.sliding_window_pattern")?
    {
        let any_swa = match p.as_slice() {
            [n] if g
                .get(&key("attention.sliding_window_pattern"))
                .is_some_and(|v| !matches!(v, corral_gguf::Value::Array { .. })) =>
            {
                *n != 1
            }
            flags => flags.iter().any(|&f| f != 0),
        };
        if !any_swa {
            return Err(bad(format!(
                "{} leaves no layer with a sliding window",
                key("attention.sliding_window_pattern")
            )));
        }
    }
    Ok(())
}

/// The vocabulary checks llama.cpp asserts on instead of failing: a token string held
/// twice (`GGML_ASSERT(id_to_token.size() == token_to_id.size())` aborts the process), a
/// vocabulary whose size differs from the embedding and output tensors' rows, and BPE
/// merges that name tokens the vocabulary lacks. Metadata only, read with corral-gguf's
/// bounded reader.
fn check_vocabulary(g: &GgufFile, path: &Path) -> Result<(), BackendError> {
    let bad = |what: String| {
        BackendError::invalid(format!(
            "{} has a broken vocabulary: {what}; llama.cpp would abort on it",
            path.display()
        ))
    };
    let Some(tokens) = g.get_str_array("tokenizer.ggml.tokens") else { return Ok(()) };
    let mut ids: std::collections::HashMap<&str, usize> =
        std::collections::HashMap::with_capacity(tokens.len());
    for (id, t) in tokens.iter().enumerate() {
        if let Some(first) = ids.insert(t, id) {
            return Err(bad(format!("the token {t:?} appears twice (ids {first} and {id})")));
        }
    }
    for name in ["token_embd.weight", "output.weight"] {
        if let Some(rows) = g.tensor(name).and_then(|t| t.dims.get(1).copied())
            && rows != tokens.len() as u64
        {
            return Err(bad(format!(
                "it lists {} tokens but {name} has {rows} rows",
                tokens.len()
            )));
        }
    }
    // A tokenizer of another family than its tokens: a BERT (WordPiece) tokenizer over
    // byte tokens aborts while llama.cpp loads, an RWKV one over another model's tokens
    // hung it.
    let model = g.get_str("tokenizer.ggml.model");
    if model == Some("bert")
        && g.get("tokenizer.ggml.token_type").is_some_and(|t| match t {
            corral_gguf::Value::Array { values, .. } => {
                values.iter().any(|v| v.as_i64() == Some(6))
            }
            _ => false,
        })
    {
        return Err(bad("a WordPiece (bert) tokenizer over byte tokens".into()));
    }
    let arch = g.architecture().unwrap_or_default();
    if model == Some("rwkv") && !arch.contains("rwkv") {
        return Err(bad(format!("an RWKV tokenizer on a {arch} model")));
    }
    if let Some(merges) = g.get_str_array("tokenizer.ggml.merges") {
        for (i, m) in merges.iter().enumerate() {
            let Some((a, b)) = m.split_once(' ') else {
                return Err(bad(format!("merge {i} ({m:?}) is not two tokens")));
            };
            let joined = format!("{a}{b}");
            for part in [a, b, joined.as_str()] {
                if !ids.contains_key(part) {
                    return Err(bad(format!(
                        "merge {i} ({m:?}) names {part:?}, which is no token"
                    )));
                }
            }
        }
    }
    Ok(())
}

/// What llama.cpp loads without complaint but then asserts on at the first tokenization
/// (a `GGML_ASSERT` aborts the process): a file without a tokenizer
/// (`tokenizer.ggml.model` "no_vocab"), or one that asks to add a BOS, EOS or (BERT
/// vocabularies, which always add both) SEP token whose id llama.cpp disabled because it
/// is not in the vocabulary.
///
/// # Safety
///
/// `model` must be a live model.
pub(crate) unsafe fn check_loaded_vocab(model: *const sys::llama_model) -> Result<(), String> {
    // SAFETY: the caller's model is live; these read fields of its vocabulary.
    let (kind, bos, eos, sep, add_bos, add_eos) = unsafe {
        let v = sys::llama_model_get_vocab(model);
        (
            sys::llama_vocab_type(v),
            sys::llama_vocab_bos(v),
            sys::llama_vocab_eos(v),
            sys::llama_vocab_sep(v),
            sys::llama_vocab_get_add_bos(v),
            sys::llama_vocab_get_add_eos(v),
        )
    };
    // llama.h's LLAMA_TOKEN_NULL (a macro bindgen does not carry over).
    let null: sys::llama_token = -1;
    if kind == sys::LLAMA_VOCAB_TYPE_NONE {
        return Err("the file has no tokenizer (tokenizer.ggml.model is no_vocab or missing), \
                    so no text can be turned into its tokens"
            .into());
    }
    let wpm = kind == sys::LLAMA_VOCAB_TYPE_WPM;
    for (needed, id, what, key) in [
        (add_bos || wpm, bos, "BOS", "bos_token_id"),
        (add_eos, eos, "EOS", "eos_token_id"),
        (wpm, sep, "SEP", "seperator_token_id"),
    ] {
        if needed && id == null {
            return Err(format!(
                "its vocabulary adds a {what} token to every text but has none \
                 (tokenizer.ggml.{key} is missing or not a token id); llama.cpp would abort"
            ));
        }
    }
    Ok(())
}

/// Owns a `gguf_context` and frees it.
struct GgufCtx(*mut sys::gguf_context);

impl Drop for GgufCtx {
    fn drop(&mut self) {
        // SAFETY: the pointer came from gguf_init_from_file and is freed once, here.
        unsafe { sys::gguf_free(self.0) };
    }
}

fn cstr(p: *const std::ffi::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: ggml returns NUL-terminated strings owned by the gguf context, alive while
    // the context is.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn summarise(
    g: &GgufCtx,
    path: &Path,
    file_len: u64,
    embedding_pooling: Result<Pooling, String>,
    spm_gaps: Option<std::sync::Arc<SpmGaps>>,
) -> Result<GgufSummary, BackendError> {
    let ctx = g.0;
    let mut s = GgufSummary {
        architecture: None,
        file_type: None,
        n_tensors: 0,
        arrays: Vec::new(),
        embedding_pooling,
        spm_gaps,
    };
    // SAFETY (all calls below): `ctx` is a live gguf context; indices are in range of the
    // counts ggml reports.
    unsafe {
        let data_offset = sys::gguf_get_data_offset(ctx) as u64;
        let n_tensors = sys::gguf_get_n_tensors(ctx).max(0);
        s.n_tensors = n_tensors as u64;
        let mut data_end = data_offset;
        for i in 0..n_tensors {
            let off = sys::gguf_get_tensor_offset(ctx, i) as u64;
            let size = sys::gguf_get_tensor_size(ctx, i) as u64;
            let end = data_offset.saturating_add(off).saturating_add(size);
            data_end = data_end.max(end);
        }
        if data_end > file_len {
            return Err(BackendError::invalid(format!(
                "{} is a truncated GGUF file: its tensors need {data_end} bytes but the file \
                 has {file_len}; download or generate it again",
                path.display()
            )));
        }
        for i in 0..sys::gguf_get_n_kv(ctx).max(0) {
            let key = cstr(sys::gguf_get_key(ctx, i));
            let ty = sys::gguf_get_kv_type(ctx, i);
            if ty == sys::GGUF_TYPE_ARRAY {
                let at = sys::gguf_get_arr_type(ctx, i);
                let n = sys::gguf_get_arr_n(ctx, i);
                let tname = cstr(sys::gguf_type_name(at));
                s.arrays.push((key, format!("[{n} × {tname}]")));
            } else if key == "general.architecture" && ty == sys::GGUF_TYPE_STRING {
                s.architecture = Some(cstr(sys::gguf_get_val_str(ctx, i)));
            } else if key == "general.file_type" {
                s.file_type = match ty {
                    sys::GGUF_TYPE_UINT32 => Some(sys::gguf_get_val_u32(ctx, i)),
                    sys::GGUF_TYPE_INT32 => u32::try_from(sys::gguf_get_val_i32(ctx, i)).ok(),
                    _ => None,
                };
            }
        }
    }
    Ok(s)
}

/// Name of a `llama_ftype` (`general.file_type`), as llama.cpp and Ollama print it;
/// `ftype N` for one this build does not know.
pub(crate) fn file_type_name(ftype: u32) -> String {
    corral_gguf::types::file_type_name(ftype)
        .map_or_else(|| format!("ftype {ftype}"), str::to_string)
}

/// Whether llama.cpp's load errors say the architecture is unknown to it.
pub(crate) fn is_unsupported_arch(errors: &[String]) -> bool {
    errors.iter().any(|e| e.contains("unknown model architecture"))
}

/// Kind for a load that llama.cpp refused.
pub(crate) fn load_error_kind(errors: &[String]) -> ErrorKind {
    if is_unsupported_arch(errors) {
        ErrorKind::Unsupported
    } else if errors.iter().any(|e| e.contains("failed to allocate") || e.contains("out of memory"))
    {
        ErrorKind::OutOfMemory
    } else {
        ErrorKind::InvalidInput
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_gguf::Value;

    #[test]
    fn missing_file_is_not_found() {
        let e = check_gguf(Path::new("/nonexistent/model.gguf"), true).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
    }

    #[test]
    fn non_gguf_is_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.gguf");
        std::fs::write(&p, b"PK\x03\x04 not a model").unwrap();
        let e = check_gguf(&p, true).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        assert!(e.message().contains("not a GGUF file"), "{}", e.message());
        std::fs::write(&p, b"GG").unwrap();
        assert!(check_gguf(&p, true).unwrap_err().message().contains("not a GGUF file"));
    }

    #[test]
    fn garbage_after_magic_is_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.gguf");
        std::fs::write(&p, b"GGUF\x03\x00\x00\x00\xff\xff").unwrap();
        let e = check_gguf(&p, true).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
    }

    /// A file of `arch` with these keys, and for each listed layer the named weights
    /// (1-element F32 tensors: only the table matters here).
    fn metadata_file(arch: &str, keys: Vec<(&str, Value)>, weights: &[(usize, &str)]) -> GgufFile {
        use corral_gguf::writer::GgufBuilder;
        let mut b = GgufBuilder::new();
        b.add_metadata("general.architecture", Value::String(arch.into())).unwrap();
        for (k, v) in keys {
            b.add_metadata(format!("{arch}.{k}"), v).unwrap();
        }
        for (il, w) in weights {
            b.add_tensor(format!("blk.{il}.{w}.weight"), &[1], corral_gguf::GgmlType::F32).unwrap();
        }
        let mut w = b.begin(Vec::new()).unwrap();
        for _ in weights {
            w.write_data(&[0; 4]).unwrap();
        }
        GgufFile::from_bytes(&w.finish().unwrap()).unwrap()
    }

    fn heads(n: &[i64]) -> Value {
        Value::Array {
            elem_type: corral_gguf::ValueType::I32,
            values: n.iter().map(|&h| Value::I32(h as i32)).collect(),
        }
    }

    /// Real models the head rules must not refuse: recurrent models without heads (Mamba),
    /// hybrids whose recurrent layers have 0 KV heads (Jamba, LFM2, Nemotron-H), per-layer
    /// heads (OpenELM), and 0 as "no final soft-cap" where llama.cpp skips the cap.
    #[test]
    fn real_head_layouts_and_disabled_caps_pass() {
        let path = Path::new("m.gguf");
        let base = |n_layer: u32| {
            vec![
                ("block_count", Value::U32(n_layer)),
                ("embedding_length", Value::U32(64)),
                ("rope.dimension_count", Value::U32(16)),
            ]
        };
        let mut mamba = base(2);
        mamba.push(("attention.head_count", Value::U32(0)));
        mamba.push(("attention.head_count_kv", Value::U32(0)));
        mamba.retain(|(k, _)| *k != "rope.dimension_count");
        let f = metadata_file("mamba", mamba, &[(0, "ssm_in"), (1, "ssm_in")]);
        check_hyperparameters(&f, path).expect("mamba");

        let mut jamba = base(4);
        jamba.push(("attention.head_count", Value::U32(4)));
        jamba.push(("attention.head_count_kv", heads(&[0, 0, 2, 0])));
        let f = metadata_file(
            "jamba",
            jamba,
            &[(0, "ssm_in"), (1, "ssm_in"), (2, "attn_q"), (3, "ssm_in")],
        );
        check_hyperparameters(&f, path).expect("jamba");

        let mut openelm = base(3);
        openelm.push(("attention.key_length", Value::U32(16)));
        openelm.push(("attention.value_length", Value::U32(16)));
        openelm.push(("attention.head_count", heads(&[3, 4, 6])));
        openelm.push(("attention.head_count_kv", heads(&[3, 2, 3])));
        let f =
            metadata_file("openelm", openelm, &[(0, "attn_qkv"), (1, "attn_qkv"), (2, "attn_qkv")]);
        check_hyperparameters(&f, path).expect("openelm");

        let mut gemma3 = base(1);
        gemma3.push(("attention.head_count", Value::U32(4)));
        gemma3.push(("final_logit_softcapping", Value::F32(0.0)));
        gemma3.retain(|(k, _)| *k != "rope.dimension_count");
        let f = metadata_file("gemma3", gemma3, &[(0, "attn_q")]);
        check_hyperparameters(&f, path).expect("gemma3 without a final cap");
    }

    /// What llama.cpp divides by zero on or asserts: an attending layer without (KV)
    /// heads, heads that are no multiple of the KV heads, a cap of 0 where it always divides.
    #[test]
    fn heads_an_attending_layer_cannot_use_are_refused() {
        let path = Path::new("m.gguf");
        let file = |arch: &str, kv: Value, extra: Vec<(&str, Value)>| {
            let mut keys = vec![
                ("block_count", Value::U32(2)),
                ("embedding_length", Value::U32(64)),
                ("attention.head_count", Value::U32(4)),
                ("attention.head_count_kv", kv),
            ];
            keys.extend(extra);
            metadata_file(arch, keys, &[(0, "attn_q"), (1, "attn_q")])
        };
        for (kv, what) in [
            (Value::U32(0), "0 KV heads"),
            (heads(&[2, 0]), "layer 1"),
            (Value::U32(3), "3 KV heads"),
        ] {
            let e = check_hyperparameters(&file("llama", kv, vec![]), path).unwrap_err();
            assert!(e.message().contains(what), "{what}: {}", e.message());
        }
        let capped = vec![("final_logit_softcapping", Value::F32(0.0))];
        let e = check_hyperparameters(&file("gemma2", Value::U32(2), capped), path).unwrap_err();
        assert!(e.message().contains("final_logit_softcapping"), "{}", e.message());
    }

    /// A SentencePiece vocabulary without every byte token spells what its pieces or
    /// byte tokens cover and names the first character it cannot, with the byte it lacks;
    /// spaces are `▁`; bytes that are no UTF-8 go one by one.
    #[test]
    fn spm_gaps_name_what_the_vocabulary_cannot_spell() {
        use corral_gguf::writer::GgufBuilder;
        let vocab = |tokens: Vec<String>| {
            let mut b = GgufBuilder::new();
            b.add_metadata("tokenizer.ggml.model", Value::String("llama".into())).unwrap();
            b.add_metadata("tokenizer.ggml.tokens", Value::string_array(tokens)).unwrap();
            GgufFile::from_bytes(&b.begin(Vec::new()).unwrap().finish().unwrap()).unwrap()
        };
        let all: Vec<String> = (0..=255u8).map(|b| format!("<0x{b:02X}>")).collect();
        assert!(SpmGaps::of(&vocab(all.clone())).is_none(), "every byte has its token");
        let mut tokens: Vec<String> =
            all.into_iter().filter(|t| t != "<0xE2>" && t != "<0xFF>").collect();
        tokens.extend(["\u{2581}", "é", "☕"].map(String::from));
        let gaps = SpmGaps::of(&vocab(tokens.clone())).expect("two bytes lack tokens");
        assert_eq!(gaps.unspellable("a café ☕ ok".as_bytes()), None, "☕ is a piece");
        assert_eq!(gaps.unspellable("a – b".as_bytes()), Some(("–".into(), 0xE2)));
        assert_eq!(gaps.unspellable(b"ok \xFF"), Some(("\\xFF".into(), 0xFF)));
        // Without a `▁` piece every text needs <0xE2>: the space prefix is one.
        tokens.retain(|t| t != "\u{2581}");
        let gaps = SpmGaps::of(&vocab(tokens)).unwrap();
        assert_eq!(gaps.unspellable(b"ok"), Some(("\u{2581}".into(), 0xE2)));
    }

    #[test]
    fn arch_errors_are_unsupported() {
        let errs = vec!["error loading model architecture: unknown model architecture: 'x'".into()];
        assert_eq!(load_error_kind(&errs), ErrorKind::Unsupported);
        assert_eq!(file_type_name(2), "Q4_0");
    }
}
