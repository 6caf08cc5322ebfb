//! Loading a model directory: the ONNX graph, its tokenizer and its configs, checked
//! against each other so a bad directory fails at load time with a clear reason.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use corral_backend_api::{BackendError, Capabilities, ContextParams, ModelInfo, SpecialTokenIds};
use ort::session::Session;
use ort::value::ValueType;
use serde_json::Value;

use crate::runtime::Provider;
use crate::tokenizer::{PieceKind, Tok};

/// Largest JSON config read (genai_config.json, config.json, ...).
const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// How an encoder's token vectors become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Average over the tokens.
    Mean,
    /// The first token (`[CLS]`).
    Cls,
    /// Element-wise maximum over the tokens.
    Max,
    /// Sum over the tokens divided by sqrt(length).
    MeanSqrtLen,
}

/// What a decoder graph takes and gives, by name.
#[derive(Debug, Clone)]
pub struct DecoderIo {
    /// `input_ids`.
    pub input_ids: String,
    /// `attention_mask`, when the graph has it.
    pub attention_mask: Option<String>,
    /// `position_ids`, when the graph has it.
    pub position_ids: Option<String>,
    /// `past_key_values.N.key` per layer.
    pub past_key: Vec<String>,
    /// `past_key_values.N.value` per layer.
    pub past_value: Vec<String>,
    /// `logits`.
    pub logits: String,
    /// `present.N.key` per layer.
    pub present_key: Vec<String>,
    /// `present.N.value` per layer.
    pub present_value: Vec<String>,
    /// A final hidden-state output (`last_hidden_state`), for embeddings.
    pub hidden: Option<String>,
    /// KV heads.
    pub n_kv_heads: usize,
    /// Head width.
    pub head_dim: usize,
    /// Whether the past/present tensors are float16 (GPU exports); float32 otherwise.
    pub kv_f16: bool,
}

/// What an encoder graph takes and gives.
#[derive(Debug, Clone)]
pub struct EncoderIo {
    /// `input_ids`.
    pub input_ids: String,
    /// `attention_mask`, when the graph has it.
    pub attention_mask: Option<String>,
    /// `token_type_ids`, when the graph has it.
    pub token_type_ids: Option<String>,
    /// The token-vector output (`last_hidden_state`, else the first output).
    pub output: String,
    /// Pooling from the sentence-transformers config (default mean).
    pub pooling: Pooling,
    /// Whether a Normalize module follows the pooling.
    pub normalize: bool,
    /// Longest input (max_position_embeddings / max_seq_length).
    pub max_len: usize,
}

/// The two model kinds.
#[derive(Debug, Clone)]
pub enum Kind {
    /// A decoder LLM in the onnxruntime-genai layout.
    Decoder(DecoderIo),
    /// A sentence encoder (BERT family).
    Encoder(EncoderIo),
}

/// Everything a model's contexts share.
pub struct Shared {
    /// The session (ONNX Runtime sessions run one call at a time here).
    pub session: Mutex<Session>,
    /// The tokenizer.
    pub tok: Tok,
    /// Decoder or encoder.
    pub kind: Kind,
    /// Vocabulary size (rows of the logits / embedding table).
    pub vocab: u32,
    /// Metadata.
    pub meta: ModelInfo,
    /// Special tokens.
    pub special: SpecialTokenIds,
    /// The execution provider the session runs on.
    pub provider: Provider,
}

/// A loaded ONNX model.
pub struct OnnxModel {
    pub(crate) shared: Arc<Shared>,
}

fn read_json(path: &Path) -> Result<Option<Value>, BackendError> {
    let Ok(meta) = std::fs::metadata(path) else { return Ok(None) };
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(BackendError::invalid(format!(
            "{} is larger than {} MB; not a config file",
            path.display(),
            MAX_CONFIG_BYTES >> 20
        )));
    }
    let bytes = std::fs::read(path)
        .map_err(|e| BackendError::not_found(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| BackendError::invalid(format!("{} is not valid JSON: {e}", path.display())))
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k)).and_then(Value::as_str)
}

fn u64_at(v: &Value, path: &[&str]) -> Option<u64> {
    path.iter().try_fold(v, |v, k| v.get(k)).and_then(Value::as_u64)
}

/// A count or id at `path` that must fit 32 bits: a larger number is a broken config (it
/// would otherwise be cut to its low bits), named in the error.
fn u32_at(v: &Value, path: &[&str]) -> Result<Option<u32>, BackendError> {
    u64_at(v, path)
        .map(|n| {
            u32::try_from(n).map_err(|_| {
                BackendError::invalid(format!("{} is {n}, beyond any model's", path.join(".")))
            })
        })
        .transpose()
}

/// Ids in a field that may be a number or a list of numbers.
fn ids_at(v: &Value, path: &[&str]) -> Vec<u32> {
    match path.iter().try_fold(v, |v, k| v.get(k)) {
        Some(Value::Number(n)) => {
            n.as_u64().and_then(|x| u32::try_from(x).ok()).into_iter().collect()
        }
        Some(Value::Array(a)) => {
            a.iter().filter_map(Value::as_u64).filter_map(|x| u32::try_from(x).ok()).collect()
        }
        _ => Vec::new(),
    }
}

/// A special token named in tokenizer_config.json (a string or `{content: ...}`).
fn token_name(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// The files of a model: graph, directory, configs.
struct Located {
    dir: PathBuf,
    graph: PathBuf,
    genai: Option<Value>,
}

fn locate(path: &Path) -> Result<Located, BackendError> {
    if !path.exists() {
        return Err(BackendError::not_found(format!("{} does not exist", path.display())));
    }
    if path.is_file() {
        if path.extension().is_none_or(|e| e != "onnx") {
            return Err(BackendError::invalid(format!(
                "{} is not an ONNX model: give a model directory or a .onnx file",
                path.display()
            )));
        }
        let dir = path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        let genai = read_json(&dir.join("genai_config.json"))?;
        return Ok(Located { dir, graph: path.to_path_buf(), genai });
    }
    let dir = path.to_path_buf();
    let genai = read_json(&dir.join("genai_config.json"))?;
    if let Some(g) = &genai {
        let file = str_at(g, &["model", "decoder", "filename"]).unwrap_or("model.onnx");
        if file.contains("..") || Path::new(file).is_absolute() {
            return Err(BackendError::invalid(format!(
                "genai_config.json names the model file {file:?}, which is outside the directory"
            )));
        }
        let graph = dir.join(file);
        if !graph.is_file() {
            return Err(BackendError::not_found(format!(
                "{} names the model file {file}, which {} does not hold",
                dir.join("genai_config.json").display(),
                dir.display()
            )));
        }
        return Ok(Located { dir, graph, genai });
    }
    for rel in ["model.onnx", "onnx/model.onnx"] {
        let graph = dir.join(rel);
        if graph.is_file() {
            return Ok(Located { dir, graph, genai });
        }
    }
    let mut onnx: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| BackendError::not_found(format!("cannot list {}: {e}", dir.display())))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    onnx.sort();
    match onnx.len() {
        1 => Ok(Located { dir, graph: onnx.remove(0), genai }),
        0 => Err(BackendError::not_found(format!(
            "{} holds no ONNX model (looked for genai_config.json, model.onnx, onnx/model.onnx and \
             *.onnx)",
            dir.display()
        ))),
        _ => Err(BackendError::invalid(format!(
            "{} holds several .onnx files ({}) and no genai_config.json or model.onnx saying which \
             is the model",
            dir.display(),
            onnx.iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Settings for opening sessions.
pub struct SessionSettings<'a> {
    /// The environment.
    pub env: &'a ort::environment::Environment,
    /// Providers to try, most preferred first (ends with the CPU).
    pub providers: &'a [Provider],
    /// Intra-op threads (0: ONNX Runtime's choice).
    pub threads: usize,
    /// GPU index.
    pub device_id: i32,
}

fn open_session(
    graph: &Path,
    s: &SessionSettings<'_>,
) -> Result<(Session, Provider), BackendError> {
    let mut last_err = String::new();
    for &p in s.providers {
        let r = (|| -> Result<Session, String> {
            let mut b = Session::builder(s.env).map_err(|e| e.to_string())?;
            if s.threads > 0 {
                b = b.with_intra_threads(s.threads).map_err(|e| e.to_string())?;
            }
            b = b
                .with_optimization_level(ort::session::builder::GraphOptimizationLevel::Level3)
                .map_err(|e| e.to_string())?;
            if let Some(d) = p.dispatch(s.device_id) {
                b = b
                    .with_execution_providers([d.error_on_failure()])
                    .map_err(|e| e.to_string())?;
            }
            b.commit_from_file(graph).map_err(|e| e.to_string())
        })();
        match r {
            Ok(sess) => return Ok((sess, p)),
            Err(e) if p == Provider::Cpu => {
                return Err(BackendError::invalid(format!(
                    "ONNX Runtime cannot load {}: {e}",
                    graph.display()
                )));
            }
            Err(e) => {
                log::warn!(
                    "execution provider {} not usable for {}: {e}",
                    p.key(),
                    graph.display()
                );
                last_err = e;
            }
        }
    }
    Err(BackendError::internal(format!("no execution provider could load the model: {last_err}")))
}

fn tensor_shape(t: &ValueType) -> Option<Vec<i64>> {
    match t {
        ValueType::Tensor { shape, .. } => Some(shape.iter().copied().collect()),
        _ => None,
    }
}

fn is_f16(t: &ValueType) -> bool {
    matches!(t, ValueType::Tensor { ty: ort::value::TensorElementType::Float16, .. })
}

fn is_f32(t: &ValueType) -> bool {
    matches!(t, ValueType::Tensor { ty: ort::value::TensorElementType::Float32, .. })
}

impl OnnxModel {
    /// Loads the model at `path` (a directory, or a `.onnx` file in one).
    pub fn load(path: &Path, s: &SessionSettings<'_>) -> Result<OnnxModel, BackendError> {
        let loc = locate(path)?;
        let tok_path = [loc.dir.join("tokenizer.json"), loc.graph.with_file_name("tokenizer.json")]
            .into_iter()
            .chain(loc.dir.parent().map(|p| p.join("tokenizer.json")).filter(|_| {
                loc.graph.parent().is_some_and(|g| g.file_name().is_some_and(|n| n == "onnx"))
            }))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                BackendError::not_found(format!(
                    "{} has no tokenizer.json beside the model; export it with the model (e.g. \
                     tokenizer.save_pretrained)",
                    loc.dir.display()
                ))
            })?;
        let tok = Tok::load(&tok_path)?;
        let config = read_json(&loc.dir.join("config.json"))?;
        let tok_config = read_json(&loc.dir.join("tokenizer_config.json"))?;
        let (session, provider) = open_session(&loc.graph, s)?;
        log::info!("{}: running on {}", loc.graph.display(), provider.ort_name());

        let inputs: Vec<(String, ValueType)> =
            session.inputs().iter().map(|o| (o.name().to_string(), o.dtype().clone())).collect();
        let outputs: Vec<(String, ValueType)> =
            session.outputs().iter().map(|o| (o.name().to_string(), o.dtype().clone())).collect();
        let has_in = |n: &str| inputs.iter().any(|(i, _)| i == n);
        let in_names = || inputs.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ");
        let out_names = || outputs.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ");
        let is_decoder =
            loc.genai.is_some() || inputs.iter().any(|(n, _)| n.contains("past_key_values"));

        let (kind, vocab, n_layer, hidden_size, ctx_len) = if is_decoder {
            let g = loc.genai.clone().unwrap_or(Value::Null);
            let name = |key: &str, default: &str| {
                str_at(&g, &["model", "decoder", "inputs", key]).unwrap_or(default).to_string()
            };
            let oname = |key: &str, default: &str| {
                str_at(&g, &["model", "decoder", "outputs", key]).unwrap_or(default).to_string()
            };
            let input_ids = name("input_ids", "input_ids");
            let mask = name("attention_mask", "attention_mask");
            let pos = name("position_ids", "position_ids");
            let pk = name("past_key_names", "past_key_values.%d.key");
            let pv = name("past_value_names", "past_key_values.%d.value");
            let logits = oname("logits", "logits");
            let ok = oname("present_key_names", "present.%d.key");
            let ov = oname("present_value_names", "present.%d.value");
            if !has_in(&input_ids) {
                return Err(BackendError::invalid(format!(
                    "the graph has no input {input_ids:?} (its inputs: {})",
                    in_names()
                )));
            }
            let n_layer = match u64_at(&g, &["model", "decoder", "num_hidden_layers"]) {
                // Two past inputs a layer: a count beyond that cannot be right, and the
                // names below are built before they are checked against the graph.
                Some(n) if n > (inputs.len() / 2) as u64 => {
                    return Err(BackendError::invalid(format!(
                        "genai_config.json says num_hidden_layers = {n}, but the graph has {} \
                         inputs (a layer takes a past key and a past value)",
                        inputs.len()
                    )));
                }
                Some(n) => n as usize,
                None => (0..).take_while(|i| has_in(&pk.replace("%d", &i.to_string()))).count(),
            };
            if n_layer == 0 {
                return Err(BackendError::invalid(format!(
                    "the decoder graph has no past key inputs named like {pk:?} (its inputs: {})",
                    in_names()
                )));
            }
            let per = |pat: &str| (0..n_layer).map(|i| pat.replace("%d", &i.to_string())).collect();
            let io = DecoderIo {
                attention_mask: has_in(&mask).then_some(mask),
                position_ids: has_in(&pos).then_some(pos),
                past_key: per(&pk),
                past_value: per(&pv),
                present_key: per(&ok),
                present_value: per(&ov),
                hidden: ["last_hidden_state", "hidden_states"]
                    .into_iter()
                    .find(|h| outputs.iter().any(|(n, _)| n == h))
                    .map(str::to_string),
                input_ids,
                logits,
                n_kv_heads: 0,
                head_dim: 0,
                kv_f16: false,
            };
            // Every name the config gives must be in the graph, and every graph input
            // must be one this backend feeds.
            let mut known: Vec<&str> = vec![&io.input_ids];
            known.extend(io.attention_mask.as_deref());
            known.extend(io.position_ids.as_deref());
            for n in io.past_key.iter().chain(&io.past_value) {
                if !has_in(n) {
                    return Err(BackendError::invalid(format!(
                        "the graph has no input {n:?}, which genai_config.json and \
                         num_hidden_layers = {n_layer} call for (its inputs: {})",
                        in_names()
                    )));
                }
                known.push(n);
            }
            for (n, _) in &inputs {
                if !known.contains(&n.as_str()) {
                    return Err(BackendError::invalid(format!(
                        "the graph has an input {n:?} that this backend does not know how to feed \
                         (it feeds: {})",
                        known.join(", ")
                    )));
                }
            }
            for n in std::iter::once(&io.logits).chain(&io.present_key).chain(&io.present_value) {
                if !outputs.iter().any(|(o, _)| o == n) {
                    return Err(BackendError::invalid(format!(
                        "the graph has no output {n:?} (its outputs: {})",
                        out_names()
                    )));
                }
            }
            let Some(past_t) = inputs.iter().find(|(n, _)| *n == io.past_key[0]).map(|(_, t)| t)
            else {
                return Err(BackendError::internal("past key input vanished"));
            };
            let kv_f16 = is_f16(past_t);
            if !is_f32(past_t) && !kv_f16 {
                return Err(BackendError::unsupported(format!(
                    "the KV cache inputs are {past_t:?}; this backend runs float32 and float16 KV \
                     caches"
                )));
            }
            let shape = tensor_shape(past_t).unwrap_or_default();
            let heads =
                shape.get(1).copied().filter(|&d| d > 0).map(|d| d as usize).or_else(|| {
                    u64_at(&g, &["model", "decoder", "num_key_value_heads"]).map(|d| d as usize)
                });
            let hd = shape
                .get(3)
                .copied()
                .filter(|&d| d > 0)
                .map(|d| d as usize)
                .or_else(|| u64_at(&g, &["model", "decoder", "head_size"]).map(|d| d as usize));
            let (Some(heads), Some(hd)) = (heads, hd) else {
                return Err(BackendError::invalid(format!(
                    "cannot tell the KV cache shape: {} has shape {shape:?} and genai_config.json \
                     gives no num_key_value_heads/head_size",
                    io.past_key[0]
                )));
            };
            let logits_t = outputs.iter().find(|(n, _)| *n == io.logits).map(|(_, t)| t);
            let from_graph = logits_t
                .and_then(tensor_shape)
                .and_then(|s| s.last().copied())
                .filter(|&d| d > 0)
                .and_then(|d| u32::try_from(d).ok());
            let from_cfg = u32_at(&g, &["model", "vocab_size"])?;
            if let (Some(a), Some(b)) = (from_graph, from_cfg)
                && a != b
            {
                return Err(BackendError::invalid(format!(
                    "genai_config.json says vocab_size {b} but the graph's logits have {a} columns"
                )));
            }
            let Some(vocab) = from_graph.or(from_cfg) else {
                return Err(BackendError::invalid(
                    "cannot tell the vocabulary size: the logits output has no fixed last \
                     dimension and genai_config.json has no model.vocab_size",
                ));
            };
            let hidden = u32_at(&g, &["model", "decoder", "hidden_size"])?.unwrap_or(0);
            let ctx = u32_at(&g, &["model", "context_length"])?.unwrap_or(0);
            let io = DecoderIo { n_kv_heads: heads, head_dim: hd, kv_f16, ..io };
            (Kind::Decoder(io), vocab, n_layer as u32, hidden, ctx)
        } else {
            if !has_in("input_ids") {
                return Err(BackendError::invalid(format!(
                    "the graph has no input \"input_ids\" (its inputs: {}); an encoder needs \
                     input_ids and optionally attention_mask and token_type_ids",
                    in_names()
                )));
            }
            for (n, _) in &inputs {
                if !["input_ids", "attention_mask", "token_type_ids"].contains(&n.as_str()) {
                    return Err(BackendError::invalid(format!(
                        "the graph has an input {n:?} that this backend does not know how to feed \
                         (an encoder gets input_ids, attention_mask, token_type_ids)"
                    )));
                }
            }
            let output = outputs
                .iter()
                .find(|(n, _)| n == "last_hidden_state" || n == "token_embeddings")
                .or(outputs.first())
                .map(|(n, _)| n.clone())
                .ok_or_else(|| BackendError::invalid("the graph has no outputs"))?;
            let (pooling, normalize) = sentence_transformers_config(&loc.dir)?;
            let c = config.clone().unwrap_or(Value::Null);
            let st = read_json(&loc.dir.join("sentence_bert_config.json"))?;
            let max_len = st
                .as_ref()
                .and_then(|v| u64_at(v, &["max_seq_length"]))
                .or_else(|| u64_at(&c, &["max_position_embeddings"]))
                .unwrap_or(512) as usize;
            let vocab = u32_at(&c, &["vocab_size"])?.unwrap_or(tok.len() as u32);
            let io = EncoderIo {
                input_ids: "input_ids".into(),
                attention_mask: has_in("attention_mask").then(|| "attention_mask".into()),
                token_type_ids: has_in("token_type_ids").then(|| "token_type_ids".into()),
                output,
                pooling,
                normalize,
                max_len,
            };
            let hidden = u32_at(&c, &["hidden_size"])?.unwrap_or(0);
            let layers = u32_at(&c, &["num_hidden_layers"])?.unwrap_or(0);
            (Kind::Encoder(io), vocab, layers, hidden, u32::try_from(max_len).unwrap_or(u32::MAX))
        };

        // The tokenizer must produce ids the graph can embed. A few padding rows beyond the
        // tokenizer (vocabularies rounded up to a multiple of 64 or so) are normal.
        let n_tok = tok.len() as u32;
        if n_tok > vocab {
            return Err(BackendError::invalid(format!(
                "{} has {n_tok} tokens but the model's vocabulary has {vocab}: the tokenizer does \
                 not belong to this model",
                tok_path.display()
            )));
        }
        if n_tok < vocab - vocab / 8 {
            return Err(BackendError::invalid(format!(
                "{} has {n_tok} tokens but the model's vocabulary has {vocab}: the tokenizer does \
                 not belong to this model",
                tok_path.display()
            )));
        }

        let special =
            special_tokens(&tok, loc.genai.as_ref(), tok_config.as_ref(), config.as_ref());
        let arch = loc
            .genai
            .as_ref()
            .and_then(|g| str_at(g, &["model", "type"]))
            .or_else(|| config.as_ref().and_then(|c| str_at(c, &["model_type"])))
            .unwrap_or(if matches!(kind, Kind::Decoder(_)) { "decoder" } else { "encoder" })
            .to_string();
        let name = config
            .as_ref()
            .and_then(|c| str_at(c, &["_name_or_path"]))
            .map(str::to_string)
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| {
                loc.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
            });
        let size_bytes = std::fs::read_dir(&loc.dir).map_or(0, |rd| {
            rd.filter_map(Result::ok)
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.ends_with(".onnx") || n.ends_with(".onnx.data") || n.ends_with(".data")
                })
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        });
        let mut kv: Vec<(String, String)> = vec![
            ("general.architecture".into(), arch.clone()),
            ("onnx.model_file".into(), loc.graph.display().to_string()),
            (
                "onnx.kind".into(),
                if matches!(kind, Kind::Decoder(_)) { "decoder" } else { "encoder" }.into(),
            ),
            ("onnx.execution_provider".into(), provider.ort_name().into()),
            ("onnx.tokenizer".into(), tok_path.display().to_string()),
        ];
        if let Kind::Encoder(e) = &kind {
            kv.push(("onnx.pooling".into(), format!("{:?}", e.pooling).to_lowercase()));
            kv.push(("onnx.normalize".into(), e.normalize.to_string()));
        }
        if let Some(t) = tok_config.as_ref().and_then(|c| str_at(c, &["chat_template"])) {
            kv.push(("tokenizer.chat_template".into(), t.to_string()));
        }
        let meta = ModelInfo {
            architecture: arch,
            name,
            parameter_count: size_bytes / 4,
            context_length: ctx_len,
            embedding_length: hidden_size,
            block_count: n_layer,
            quantization: match &kind {
                Kind::Decoder(d) if d.kv_f16 => "F16",
                _ => "F32",
            }
            .into(),
            size_bytes,
            kv,
        };
        Ok(OnnxModel {
            shared: Arc::new(Shared {
                session: Mutex::new(session),
                tok,
                kind,
                vocab,
                meta,
                special,
                provider,
            }),
        })
    }
}

/// Pooling and normalisation from the sentence-transformers files.
fn sentence_transformers_config(dir: &Path) -> Result<(Pooling, bool), BackendError> {
    let modules = read_json(&dir.join("modules.json"))?;
    let mut pooling_dir = dir.join("1_Pooling");
    let mut normalize = false;
    if let Some(Value::Array(mods)) = &modules {
        for m in mods {
            let ty = str_at(m, &["type"]).unwrap_or("");
            if ty.ends_with("Pooling")
                && let Some(p) = str_at(m, &["path"])
                && !p.contains("..")
            {
                pooling_dir = dir.join(p);
            }
            if ty.ends_with("Normalize") {
                normalize = true;
            }
        }
    }
    let pooling = match read_json(&pooling_dir.join("config.json"))? {
        Some(p) => {
            let on = |k: &str| p.get(k).and_then(Value::as_bool).unwrap_or(false);
            if on("pooling_mode_cls_token") {
                Pooling::Cls
            } else if on("pooling_mode_max_tokens") {
                Pooling::Max
            } else if on("pooling_mode_mean_sqrt_len_tokens") && !on("pooling_mode_mean_tokens") {
                Pooling::MeanSqrtLen
            } else {
                Pooling::Mean
            }
        }
        None => Pooling::Mean,
    };
    Ok((pooling, normalize))
}

fn special_tokens(
    tok: &Tok,
    genai: Option<&Value>,
    tok_config: Option<&Value>,
    config: Option<&Value>,
) -> SpecialTokenIds {
    let by_name = |key: &str| tok_config.and_then(|c| token_name(c, key)).and_then(|n| tok.id(&n));
    let mut eos_ids = genai.map(|g| ids_at(g, &["model", "eos_token_id"])).unwrap_or_default();
    if eos_ids.is_empty() {
        eos_ids = config.map(|c| ids_at(c, &["eos_token_id"])).unwrap_or_default();
    }
    if let Some(e) = by_name("eos_token")
        && !eos_ids.contains(&e)
    {
        eos_ids.insert(0, e);
    }
    let bos = genai
        .and_then(|g| u64_at(g, &["model", "bos_token_id"]))
        .and_then(|b| u32::try_from(b).ok())
        .or_else(|| by_name("bos_token"))
        .or_else(|| {
            config.and_then(|c| u64_at(c, &["bos_token_id"])).and_then(|b| u32::try_from(b).ok())
        });
    let eot = ["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"]
        .into_iter()
        .find_map(|t| tok.id(t));
    let mut eog = eos_ids.clone();
    if let Some(t) = eot
        && !eog.contains(&t)
    {
        eog.push(t);
    }
    let eos = eos_ids.first().copied();
    // Whether the post-processor adds bos/eos: look at what it does to a plain word.
    let probe = tok.encode("a", true, false).unwrap_or_default();
    let bare = tok.encode("a", false, false).unwrap_or_default();
    let add_bos = probe.len() > bare.len() && bos.is_some_and(|b| probe.first() == Some(&b));
    let add_eos = probe.len() > bare.len() && eos.is_some_and(|e| probe.last() == Some(&e));
    SpecialTokenIds { bos, eos, eot, eog, add_bos, add_eos }
}

impl corral_backend_api::plugin::Model for OnnxModel {
    type Context = crate::context::OnnxContext;

    fn metadata(&self) -> ModelInfo {
        self.shared.meta.clone()
    }

    fn vocab_size(&self) -> u32 {
        self.shared.vocab
    }

    fn special_tokens(&self) -> SpecialTokenIds {
        self.shared.special.clone()
    }

    /// A decoder generates; it also embeds when its graph has a hidden-state output
    /// (`last_hidden_state`), which embedding contexts mean-pool. An encoder embeds only.
    /// Neither shifts (`kv_shift` keeps the default `Unsupported`: the cached keys are
    /// RoPE'd inside the graph) nor has a per-sequence context of its own
    /// (`new_context_per_sequence` keeps the default, a shared context).
    fn capabilities(&self) -> Capabilities {
        match &self.shared.kind {
            Kind::Decoder(d) if d.hidden.is_some() => {
                Capabilities::GENERATION | Capabilities::EMBEDDINGS
            }
            Kind::Decoder(_) => Capabilities::GENERATION,
            Kind::Encoder(_) => Capabilities::EMBEDDINGS,
        }
    }

    fn tokenize(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, BackendError> {
        self.shared.tok.encode(text, add_special, parse_special)
    }

    fn token_to_bytes(&self, token: u32) -> Result<Vec<u8>, BackendError> {
        if token >= self.shared.vocab {
            return Err(BackendError::invalid(format!(
                "token {token} is out of range (vocabulary size {})",
                self.shared.vocab
            )));
        }
        // Padding rows past the tokenizer's vocabulary have no text.
        Ok(self.shared.tok.piece(token).map(<[u8]>::to_vec).unwrap_or_default())
    }

    fn detokenize(&self, tokens: &[u32]) -> Result<String, BackendError> {
        if let Some(&t) = tokens.iter().find(|&&t| t >= self.shared.vocab) {
            return Err(BackendError::invalid(format!(
                "token {t} is out of range (vocabulary size {})",
                self.shared.vocab
            )));
        }
        if self.shared.tok.kind == PieceKind::WordPiece {
            return self.shared.tok.decode(tokens);
        }
        let mut bytes = Vec::new();
        for &t in tokens {
            bytes.extend_from_slice(self.shared.tok.piece(t).unwrap_or_default());
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn new_context(&self, params: &ContextParams) -> Result<Self::Context, BackendError> {
        crate::context::OnnxContext::new(self.shared.clone(), params)
    }
}
