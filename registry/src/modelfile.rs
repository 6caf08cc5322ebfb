//! The Modelfile: parsing, `create`, and `show --modelfile`.
//!
//! Syntax (Ollama's): one directive per line, directives are case-insensitive, `#`
//! starts a comment line, a value is either the rest of the line, a `"quoted string"`
//! (with `\"` and `\\` escapes) or a `"""triple-quoted"""` text that may span lines.
//!
//! ```text
//! FROM ./model.gguf            # or FROM llama3:latest
//! PARAMETER temperature 0.7
//! PARAMETER stop "<|eot_id|>"
//! TEMPLATE """{{ .Prompt }}"""
//! SYSTEM You are terse.
//! MESSAGE user Hello
//! LICENSE """MIT ..."""
//! ADAPTER ./lora.gguf
//! ```
//!
//! Every error carries the 1-based line and column it concerns.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::*;
use crate::name::ModelName;
use crate::store::{Message, Pin, ResolvedModel, Store, link_info_for};

/// One directive with its value.
#[derive(Clone, Debug, PartialEq)]
pub enum Directive {
    /// `FROM <path or model name>`.
    From(String),
    /// `PARAMETER <name> <value>`, the value already typed (number, bool or string).
    Parameter {
        /// Parameter name, lower case.
        name: String,
        /// Typed value.
        value: Value,
    },
    /// `TEMPLATE <text>`.
    Template(String),
    /// `SYSTEM <text>`.
    System(String),
    /// `MESSAGE <role> <text>`.
    Message {
        /// `system`, `user` or `assistant`.
        role: String,
        /// The text.
        content: String,
    },
    /// `LICENSE <text>`.
    License(String),
    /// `ADAPTER <path>`.
    Adapter(String),
    /// `REMOTE <remote>`: the model is the `FROM` model on that remote (a `[remotes.NAME]`
    /// of the server's config); no weights are stored.
    Remote(String),
}

/// A directive with its position in the file.
#[derive(Clone, Debug, PartialEq)]
pub struct Command {
    /// 1-based line of the directive keyword.
    pub line: usize,
    /// 1-based column of the directive keyword.
    pub column: usize,
    /// 1-based (line, column) of the value.
    pub value_pos: (usize, usize),
    /// The directive.
    pub directive: Directive,
}

/// A parsed Modelfile.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Modelfile {
    /// The directives in file order.
    pub commands: Vec<Command>,
}

impl Modelfile {
    /// Its PARAMETERs as one map, as a model stores them: several `stop` lines make one
    /// list; any other name given twice keeps the last value.
    pub fn parameters(&self) -> Map<String, Value> {
        let mut params = Map::new();
        for c in &self.commands {
            let Directive::Parameter { name, value } = &c.directive else { continue };
            if name == "stop" {
                let list = params.entry("stop").or_insert_with(|| Value::Array(Vec::new()));
                if let Value::Array(a) = list {
                    a.push(value.clone());
                }
            } else {
                params.insert(name.clone(), value.clone());
            }
        }
        params
    }
}

#[derive(Clone, Copy, PartialEq)]
enum ParamType {
    Int,
    Float,
    Bool,
    StringList,
    /// One string (checked by whoever uses it).
    Text,
}

/// Ollama's known parameters and their types.
fn param_type(name: &str) -> Option<ParamType> {
    use ParamType::*;
    Some(match name {
        "num_keep" | "seed" | "num_predict" | "top_k" | "repeat_last_n" | "mirostat"
        | "num_ctx" | "num_batch" | "num_gpu" | "main_gpu" | "num_thread" => Int,
        "temperature" | "top_p" | "min_p" | "typical_p" | "repeat_penalty" | "presence_penalty"
        | "frequency_penalty" | "mirostat_tau" | "mirostat_eta" | "tfs_z" => Float,
        "penalize_newline" | "numa" | "use_mmap" | "use_mlock" | "low_vram" | "f16_kv"
        | "vocab_only" | "logits_all" => Bool,
        "stop" => StringList,
        // corral's load settings: the KV cache's type and flash attention.
        "kv_cache_type" | "flash_attention" => Text,
        // corral's own: speculative decoding (see the README).
        "draft_model" | "speculative" => Text,
        "draft_max" => Int,
        _ => return None,
    })
}

/// A structured `PARAMETER` (Ollama's `/api/create` `parameters`): `value` as the JSON
/// type the parameter takes (an integer, a finite number, a bool, a string), as the
/// Modelfile parser types its text. An error names the parameter and what it must be.
pub fn typed_parameter(name: &str, value: &Value) -> Result<(), String> {
    let Some(ty) = param_type(name) else { return Err(format!("unknown parameter {name:?}")) };
    let (ok, want) = match ty {
        ParamType::Int => (value.is_i64() || value.is_u64(), "an integer"),
        ParamType::Float => (value.as_f64().is_some_and(f64::is_finite), "a number"),
        ParamType::Bool => (value.is_boolean(), "true or false"),
        ParamType::StringList | ParamType::Text => (value.is_string(), "a string"),
    };
    if ok { Ok(()) } else { Err(format!("parameter {name}: {value} is not {want}")) }
}

struct Scanner<'a> {
    s: &'a str,
    pos: usize,
    line: usize,
    col: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<char> {
        self.s[self.pos..].chars().next()
    }
    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        if c == '\n' {
            self.line += 1;
            self.col = 1;
        } else {
            self.col += 1;
        }
        Some(c)
    }
    fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }
    fn here(&self) -> (usize, usize) {
        (self.line, self.col)
    }
    fn err(&self, (line, column): (usize, usize), message: impl Into<String>) -> Error {
        Error::Modelfile { line, column, message: message.into() }
    }
    fn skip_blanks(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t' | '\r')) {
            self.bump();
        }
    }
    fn word(&mut self) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(|c| !c.is_whitespace()) {
            self.bump();
        }
        &self.s[start..self.pos]
    }
    fn skip_line(&mut self) {
        while let Some(c) = self.bump() {
            if c == '\n' {
                break;
            }
        }
    }
    /// After a value: only blanks (or a comment) may follow on the line.
    fn end_of_line(&mut self) -> Result<()> {
        self.skip_blanks();
        match self.peek() {
            None | Some('\n') => {
                self.bump();
                Ok(())
            }
            Some(_) => Err(self.err(self.here(), "unexpected text after the value")),
        }
    }

    fn value(&mut self, what: &str) -> Result<((usize, usize), String)> {
        self.skip_blanks();
        let pos = self.here();
        if self.rest().starts_with("\"\"\"") {
            for _ in 0..3 {
                self.bump();
            }
            let Some(end) = self.rest().find("\"\"\"") else {
                return Err(self.err(pos, format!("unterminated \"\"\" in {what}")));
            };
            let text = self.rest()[..end].to_string();
            let target = self.pos + end;
            while self.pos < target {
                self.bump();
            }
            for _ in 0..3 {
                self.bump();
            }
            self.end_of_line()?;
            return Ok((pos, text));
        }
        if self.peek() == Some('"') {
            self.bump();
            let mut out = String::new();
            loop {
                match self.bump() {
                    None | Some('\n') => {
                        return Err(self.err(pos, format!("unterminated quoted string in {what}")));
                    }
                    Some('\\') => match self.bump() {
                        Some('"') => out.push('"'),
                        Some('\\') => out.push('\\'),
                        Some('n') => out.push('\n'),
                        Some('t') => out.push('\t'),
                        Some(c) => {
                            out.push('\\');
                            out.push(c);
                        }
                        None => {
                            return Err(
                                self.err(pos, format!("unterminated quoted string in {what}"))
                            );
                        }
                    },
                    Some('"') => break,
                    Some(c) => out.push(c),
                }
            }
            self.end_of_line()?;
            return Ok((pos, out));
        }
        let start = self.pos;
        while self.peek().is_some_and(|c| c != '\n') {
            self.bump();
        }
        let text = self.s[start..self.pos].trim_end().to_string();
        self.bump();
        if text.is_empty() {
            return Err(self.err(pos, format!("missing value for {what}")));
        }
        Ok((pos, text))
    }
}

/// Parses Modelfile text.
pub fn parse(text: &str) -> Result<Modelfile> {
    // Editors on Windows save a byte-order mark first.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut sc = Scanner { s: text, pos: 0, line: 1, col: 1 };
    let mut commands = Vec::new();
    loop {
        while sc.peek().is_some_and(char::is_whitespace) {
            sc.bump();
        }
        let Some(c) = sc.peek() else { break };
        if c == '#' {
            sc.skip_line();
            continue;
        }
        let (line, column) = sc.here();
        let kw = sc.word();
        let upper = kw.to_ascii_uppercase();
        let (value_pos, directive) = match upper.as_str() {
            "FROM" => sc.value("FROM").map(|(p, v)| (p, Directive::From(v)))?,
            "TEMPLATE" => sc.value("TEMPLATE").map(|(p, v)| (p, Directive::Template(v)))?,
            "SYSTEM" => sc.value("SYSTEM").map(|(p, v)| (p, Directive::System(v)))?,
            "LICENSE" => sc.value("LICENSE").map(|(p, v)| (p, Directive::License(v)))?,
            "ADAPTER" => sc.value("ADAPTER").map(|(p, v)| (p, Directive::Adapter(v)))?,
            "REMOTE" => sc.value("REMOTE").map(|(p, v)| (p, Directive::Remote(v)))?,
            "PARAMETER" => {
                sc.skip_blanks();
                let npos = sc.here();
                let name = sc.word().to_ascii_lowercase();
                if name.is_empty() {
                    return Err(sc.err(npos, "PARAMETER needs a name and a value"));
                }
                let Some(ty) = param_type(&name) else {
                    return Err(sc.err(npos, format!("unknown parameter {name:?}")));
                };
                let (vpos, raw) = sc.value(&format!("PARAMETER {name}"))?;
                let bad = |t: &str| sc.err(vpos, format!("PARAMETER {name}: {raw:?} is not {t}"));
                let value = match ty {
                    ParamType::Int => {
                        Value::from(raw.parse::<i64>().map_err(|_| bad("an integer"))?)
                    }
                    ParamType::Float => {
                        let f = raw.parse::<f64>().map_err(|_| bad("a number"))?;
                        serde_json::Number::from_f64(f)
                            .map(Value::Number)
                            .ok_or_else(|| bad("a finite number"))?
                    }
                    ParamType::Bool => {
                        Value::Bool(raw.parse::<bool>().map_err(|_| bad("true or false"))?)
                    }
                    ParamType::StringList | ParamType::Text => Value::String(raw),
                };
                (vpos, Directive::Parameter { name, value })
            }
            // Ollama's minimum-version line: accepted, and nothing here depends on it.
            "REQUIRES" => {
                let (_, version) = sc.value("REQUIRES")?;
                tracing::debug!(version, "REQUIRES ignored");
                continue;
            }
            "MESSAGE" => {
                sc.skip_blanks();
                let rpos = sc.here();
                let role = sc.word().to_ascii_lowercase();
                if !matches!(role.as_str(), "system" | "user" | "assistant") {
                    return Err(sc.err(
                        rpos,
                        format!("MESSAGE role {role:?} is not one of system, user, assistant"),
                    ));
                }
                let (vpos, content) = sc.value("MESSAGE")?;
                (vpos, Directive::Message { role, content })
            }
            _ => {
                return Err(sc.err(
                    (line, column),
                    format!(
                        "unknown directive {:?}; expected FROM, PARAMETER, TEMPLATE, SYSTEM, \
                         MESSAGE, LICENSE or ADAPTER",
                        kw.chars().take(40).collect::<String>()
                    ),
                ));
            }
        };
        commands.push(Command { line, column, value_pos, directive });
    }
    if !commands.iter().any(|c| matches!(c.directive, Directive::From(_))) {
        return Err(Error::Modelfile { line: 1, column: 1, message: "no FROM line".into() });
    }
    Ok(Modelfile { commands })
}

/// Options of [`create`].
#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    /// Reference a `FROM` GGUF file in place instead of copying it into the store.
    pub link: bool,
}

/// Whether a model argument (the CLI's, or a Modelfile's `FROM`) is meant as a file path
/// rather than a model name: it starts with `/`, `./`, `../`, `~` or a drive (`C:\`,
/// `C:/`; a drive only with its separator, since `m:7b` is a name with a tag), holds a
/// `\`, or ends with `.gguf`, `.onnx` or `.bin` (any case). The one rule for `corral`'s
/// CLI, the server's resolution and `create`: a path is never pulled, is a file for
/// `FROM`, and an argument that is neither an existing file nor a valid name is reported as
/// a missing file.
pub fn looks_like_path(arg: &str) -> bool {
    let b = arg.as_bytes();
    let drive =
        b.len() > 2 && b[0].is_ascii_alphabetic() && b[1] == b':' && matches!(b[2], b'\\' | b'/');
    arg.starts_with('/')
        || arg.starts_with("./")
        || arg.starts_with("../")
        || arg.starts_with('~')
        || arg.contains('\\')
        || drive
        || [".gguf", ".onnx", ".bin"].iter().any(|e| arg.to_ascii_lowercase().ends_with(e))
}

fn resolve_path(base_dir: &Path, v: &str) -> PathBuf {
    if let Some(rest) = v.strip_prefix("~/")
        && let Some(home) = dirs::home_dir()
    {
        return home.join(rest);
    }
    base_dir.join(v)
}

/// Most files an ONNX model directory may hold.
const MAX_ONNX_FILES: usize = 256;

/// The regular files of an ONNX model directory (recursively, at most 3 levels, hidden
/// files skipped), as (relative path with `/`, absolute path); an error when there is no
/// `.onnx` file.
fn onnx_dir_files(dir: &Path) -> std::result::Result<Vec<(String, PathBuf)>, String> {
    fn walk(
        dir: &Path,
        prefix: &str,
        depth: usize,
        out: &mut Vec<(String, PathBuf)>,
    ) -> std::result::Result<(), String> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(std::result::Result::ok)
            .collect();
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let rel = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
            let ty = e.file_type().map_err(|err| format!("{}: {err}", e.path().display()))?;
            if ty.is_dir() && depth < 3 {
                walk(&e.path(), &rel, depth + 1, out)?;
            } else if ty.is_file() || (ty.is_symlink() && e.path().is_file()) {
                out.push((rel, e.path()));
            }
            if out.len() > MAX_ONNX_FILES {
                return Err(format!("{} holds more than {MAX_ONNX_FILES} files", dir.display()));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, "", 0, &mut out)?;
    if !out.iter().any(|(rel, _)| rel.ends_with(".onnx")) {
        return Err(format!(
            "{} is a directory without a .onnx model (an ONNX model directory holds model.onnx and its tokenizer and config)",
            dir.display()
        ));
    }
    Ok(out)
}

fn check_gguf(path: &Path, cmd: &Command) -> Result<()> {
    let at =
        |m: String| Error::Modelfile { line: cmd.value_pos.0, column: cmd.value_pos.1, message: m };
    let meta = std::fs::metadata(path).map_err(|e| at(format!("{}: {e}", path.display())))?;
    if meta.is_dir() {
        return Err(at(format!(
            "{} is a directory; only GGUF files are supported (convert safetensors to GGUF first)",
            path.display()
        )));
    }
    let mut magic = [0u8; 4];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map_err(|e| at(format!("{}: {e}", path.display())))?;
    if &magic != b"GGUF" {
        return Err(at(format!("{} is not a GGUF file (bad magic)", path.display())));
    }
    Ok(())
}

fn text_layer(pin: &Pin, media_type: &str, text: &str) -> Result<Layer> {
    let digest = pin.write_blob_bytes(text.as_bytes())?;
    Ok(Layer {
        media_type: media_type.into(),
        digest,
        size: text.len() as u64,
        from: None,
        annotations: None,
    })
}

/// Creates (or replaces) model `name` from a parsed Modelfile. Relative paths are taken
/// from `base_dir` (the Modelfile's directory). `progress` receives status lines such as
/// `copying model data` or `writing manifest`.
pub fn create(
    store: &Store,
    name: &ModelName,
    modelfile: &Modelfile,
    base_dir: &Path,
    opts: &CreateOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<ResolvedModel> {
    store.check_writable()?;
    name.check_destination()?;
    // Every blob the new manifest will name is pinned before it is checked or written,
    // so a concurrent `rm` or `prune` (any process) cannot delete it meanwhile.
    let pin = store.pin()?;
    progress("parsing modelfile");
    let mut layers: Vec<Layer> = Vec::new();
    let mut config = ModelConfig {
        model_format: "gguf".into(),
        architecture: "amd64".into(),
        os: "linux".into(),
        ..Default::default()
    };
    let mut params: Map<String, Value> = Map::new();
    let mut messages: Vec<Message> = Vec::new();
    let mut new_messages = false;

    // `REMOTE r` makes the FROM a model name on remote `r`: nothing is read here.
    let remote = remote_of(modelfile)?;
    for cmd in &modelfile.commands {
        let at = |m: String| Error::Modelfile {
            line: cmd.value_pos.0,
            column: cmd.value_pos.1,
            message: m,
        };
        match &cmd.directive {
            Directive::Remote(_) => {}
            Directive::From(v) if remote.is_some() => {
                check_remote_model(v).map_err(at)?;
                config.model_format = "remote".into();
                config.remote_host = remote.clone().unwrap_or_default();
                config.remote_model = v.clone();
            }
            Directive::Adapter(_) | Directive::Template(_) if remote.is_some() => {
                return Err(at(
                    "a remote model (REMOTE) takes no ADAPTER or TEMPLATE: the remote server \
                     applies its own"
                        .into(),
                ));
            }
            Directive::From(v) => {
                let path = resolve_path(base_dir, v);
                if path.is_dir() {
                    // An ONNX model directory: every file becomes a layer of its own.
                    let files = onnx_dir_files(&path).map_err(at)?;
                    layers.retain(|l| {
                        l.media_type != MEDIA_TYPE_MODEL
                            && l.media_type != MEDIA_TYPE_LINK
                            && l.media_type != MEDIA_TYPE_ONNX_FILE
                    });
                    progress(&format!("copying {} ONNX model files", files.len()));
                    for (rel, abs) in files {
                        let (digest, size) = pin.import_file(&abs, |_| {})?;
                        let mut ann = std::collections::BTreeMap::new();
                        ann.insert(ANNOTATION_TITLE.to_string(), rel);
                        layers.push(Layer {
                            media_type: MEDIA_TYPE_ONNX_FILE.into(),
                            digest,
                            size,
                            from: None,
                            annotations: Some(ann),
                        });
                    }
                    config.model_format = "onnx".into();
                } else if looks_like_path(v) || path.is_file() {
                    check_gguf(&path, cmd)?;
                    layers.retain(|l| {
                        l.media_type != MEDIA_TYPE_MODEL && l.media_type != MEDIA_TYPE_LINK
                    });
                    let layer = if opts.link {
                        progress("hashing model file");
                        let li = link_info_for(&path, |_| {})?;
                        let json = serde_json::to_vec(&li).unwrap_or_default();
                        let digest = pin.write_blob_bytes(&json)?;
                        progress(&format!("linking {}", li.path.display()));
                        Layer {
                            media_type: MEDIA_TYPE_LINK.into(),
                            digest,
                            size: json.len() as u64,
                            from: None,
                            annotations: None,
                        }
                    } else {
                        progress("copying model data");
                        let (digest, size) = pin.import_file(&path, |_| {})?;
                        Layer {
                            media_type: MEDIA_TYPE_MODEL.into(),
                            digest,
                            size,
                            from: None,
                            annotations: None,
                        }
                    };
                    layers.insert(0, layer);
                } else {
                    let base = ModelName::parse(v).map_err(|e| {
                        at(format!("FROM {v:?} is neither an existing file nor a model name: {e}"))
                    })?;
                    let r = store.get(&base).map_err(|e| match e {
                        Error::ModelNotFound(_) => at(format!(
                            "FROM {v}: no such file ({}) and no model {base} in the store",
                            path.display()
                        )),
                        other => other,
                    })?;
                    progress(&format!("using existing model {base}"));
                    // Pinned now; `write_manifest` below checks that they are all still
                    // here (a concurrent `rm` of the base may have won the race before).
                    pin.add_all(r.manifest.blobs().map(|l| l.digest))?;
                    layers = r
                        .manifest
                        .layers
                        .iter()
                        .filter(|l| {
                            l.media_type != MEDIA_TYPE_PARAMS && l.media_type != MEDIA_TYPE_MESSAGES
                        })
                        .cloned()
                        .collect();
                    params = r.params;
                    messages = r.messages;
                    config = ModelConfig { rootfs: None, ..r.config };
                }
            }
            Directive::Adapter(v) => {
                let path = resolve_path(base_dir, v);
                check_gguf(&path, cmd)?;
                progress("copying adapter");
                let (digest, size) = pin.import_file(&path, |_| {})?;
                layers.push(Layer {
                    media_type: MEDIA_TYPE_ADAPTER.into(),
                    digest,
                    size,
                    from: None,
                    annotations: None,
                });
            }
            Directive::Template(t) => {
                layers.retain(|l| l.media_type != MEDIA_TYPE_TEMPLATE);
                layers.push(text_layer(&pin, MEDIA_TYPE_TEMPLATE, t)?);
            }
            Directive::System(t) => {
                layers.retain(|l| l.media_type != MEDIA_TYPE_SYSTEM);
                layers.push(text_layer(&pin, MEDIA_TYPE_SYSTEM, t)?);
            }
            Directive::License(t) => layers.push(text_layer(&pin, MEDIA_TYPE_LICENSE, t)?),
            Directive::Message { role, content } => {
                if !new_messages {
                    messages.clear();
                    new_messages = true;
                }
                messages.push(Message { role: role.clone(), content: content.clone() });
            }
            // Taken together below (`Modelfile::parameters`).
            Directive::Parameter { .. } => {}
        }
    }
    let new_params = modelfile.parameters();
    // Stop lists from the base are replaced, not extended.
    if new_params.contains_key("stop") {
        params.remove("stop");
    }
    params.extend(new_params);
    if !params.is_empty() {
        let json = serde_json::to_string(&params).unwrap_or_default();
        layers.push(text_layer(&pin, MEDIA_TYPE_PARAMS, &json)?);
    }
    if !messages.is_empty() {
        let json = serde_json::to_string(&messages).unwrap_or_default();
        layers.push(text_layer(&pin, MEDIA_TYPE_MESSAGES, &json)?);
    }
    if remote.is_some() && config.remote_model.is_empty() {
        return Err(Error::Modelfile {
            line: 1,
            column: 1,
            message: "REMOTE needs a FROM that names the model on the remote".into(),
        });
    }
    if !config.is_remote()
        && !layers.iter().any(|l| {
            l.media_type == MEDIA_TYPE_MODEL
                || l.media_type == MEDIA_TYPE_LINK
                || l.media_type == MEDIA_TYPE_ONNX_FILE
        })
    {
        return Err(Error::Modelfile {
            line: 1,
            column: 1,
            message: "the FROM model has no weights".into(),
        });
    }
    config.rootfs = Some(RootFs {
        kind: "layers".into(),
        diff_ids: layers.iter().map(|l| l.digest).collect::<Vec<Digest>>(),
    });
    let cfg_json = serde_json::to_vec(&config).unwrap_or_default();
    let cfg_digest = pin.write_blob_bytes(&cfg_json)?;
    let manifest = Manifest::new(
        Layer {
            media_type: MEDIA_TYPE_CONFIG.into(),
            digest: cfg_digest,
            size: cfg_json.len() as u64,
            from: None,
            annotations: None,
        },
        layers,
    );
    progress("writing manifest");
    store.write_manifest(&name.without_digest(), &manifest)?;
    drop(pin);
    let r = store.get(&name.without_digest())?;
    progress("success");
    Ok(r)
}

/// The `REMOTE` of a Modelfile (the last one wins), checked as a remote's name.
fn remote_of(modelfile: &Modelfile) -> Result<Option<String>> {
    let mut remote = None;
    for cmd in &modelfile.commands {
        if let Directive::Remote(r) = &cmd.directive {
            if !valid_remote_name(r) {
                return Err(Error::Modelfile {
                    line: cmd.value_pos.0,
                    column: cmd.value_pos.1,
                    message: format!(
                        "REMOTE {r:?} is not a remote's name (letters, digits, '-', '_' and \
                         '.', at most 64)"
                    ),
                });
            }
            remote = Some(r.clone());
        }
    }
    Ok(remote)
}

/// Whether `name` can name a remote: `[remotes.NAME]` of a config.
pub fn valid_remote_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A model name on a remote: any server's naming (`llama3:70b`, `org/model`,
/// `gpt-4o-mini`), but one line of printable text of bounded length.
pub fn check_remote_model(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > 256 || name.chars().any(|c| c.is_control() || c == ' ') {
        return Err(format!(
            "FROM {name:?}: a remote model's name is 1 to 256 characters without spaces"
        ));
    }
    Ok(())
}

/// Reads and parses a Modelfile from disk (at most 16 MiB).
pub fn parse_file(path: &Path) -> Result<Modelfile> {
    let bytes = crate::store::read_bounded(path, 16 << 20)?;
    let text = String::from_utf8(bytes).map_err(|e| {
        Error::io("reading", path, std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    })?;
    parse(&text)
}

fn quote(s: &str) -> String {
    if !s.contains("\"\"\"") && (s.contains('\n') || s.contains('"')) {
        return format!("\"\"\"{s}\"\"\"");
    }
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn param_lines(out: &mut String, params: &Map<String, Value>) {
    for (k, v) in params {
        let items: Vec<&Value> = match v {
            Value::Array(a) => a.iter().collect(),
            v => vec![v],
        };
        for item in items {
            let text = match item {
                Value::String(s) => quote(s),
                other => other.to_string(),
            };
            out.push_str(&format!("PARAMETER {k} {text}\n"));
        }
    }
}

/// The PARAMETER lines of a model (`corral show --parameters`).
pub fn parameters_text(r: &ResolvedModel) -> String {
    let mut out = String::new();
    param_lines(&mut out, &r.params);
    out
}

/// Renders a model as a Modelfile (`corral show --modelfile`), in Ollama's style.
pub fn to_modelfile(r: &ResolvedModel) -> String {
    let mut out = String::new();
    out.push_str("# Modelfile generated by \"corral show\"\n");
    out.push_str("# To build a new Modelfile based on this, replace FROM with:\n");
    out.push_str(&format!("# FROM {}\n\n", r.name));
    if r.config.is_remote() {
        out.push_str(&format!("FROM {}\nREMOTE {}\n", r.config.remote_model, r.config.remote_host));
    } else {
        out.push_str(&format!("FROM {}\n", r.model_path.display()));
    }
    for a in &r.adapters {
        out.push_str(&format!("ADAPTER {}\n", a.display()));
    }
    if let Some(t) = &r.template {
        out.push_str(&format!("TEMPLATE \"\"\"{t}\"\"\"\n"));
    }
    if let Some(s) = &r.system {
        out.push_str(&format!("SYSTEM \"\"\"{s}\"\"\"\n"));
    }
    param_lines(&mut out, &r.params);
    for m in &r.messages {
        out.push_str(&format!("MESSAGE {} {}\n", m.role, quote(&m.content)));
    }
    for l in &r.license {
        out.push_str(&format!("LICENSE \"\"\"{l}\"\"\"\n"));
    }
    out
}

/// Verifies that a path given to `FROM` exists (for a friendly early error in the CLI).
pub fn from_path_exists(base_dir: &Path, v: &str) -> bool {
    resolve_path(base_dir, v).exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreOptions;

    /// One rule for paths: a one-letter name with a tag is a name, not a drive; a drive
    /// with its separator, backslashes and model-file endings are paths.
    #[test]
    fn paths_and_names() {
        for p in ["./m.gguf", "/abs", "../up", "~/m", "m.GGUF", "C:\\m", "c:/m", "a\\b", "x.onnx"] {
            assert!(looks_like_path(p), "{p}");
        }
        for n in ["m:7b", "llama3", "ns/model:tag", "registry.example.com/ns/m:q4"] {
            assert!(!looks_like_path(n), "{n}");
        }
    }

    const MF: &str = r#"
# a comment
from ./m.gguf
PARAMETER temperature 0.5
parameter stop "<|eot|>"
PARAMETER stop "User:"
PARAMETER num_ctx 4096
TEMPLATE """{{ if .System }}{{ .System }}
{{ end }}{{ .Prompt }}"""
SYSTEM You are "terse".
MESSAGE user Hi
MESSAGE assistant """Hello
there"""
LICENSE """MIT"""
"#;

    #[test]
    fn a_remote_model_stores_no_weights_and_names_its_remote() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s"), StoreOptions::default()).unwrap();
        let mf =
            parse("FROM llama3.1:70b\nREMOTE lab\nSYSTEM be brief\nPARAMETER temperature 0.2\n")
                .unwrap();
        let name = ModelName::parse("big").unwrap();
        let r =
            create(&store, &name, &mf, dir.path(), &CreateOptions::default(), &mut |_| {}).unwrap();
        assert!(r.config.is_remote());
        assert_eq!(
            (r.config.remote_host.as_str(), r.config.remote_model.as_str()),
            ("lab", "llama3.1:70b")
        );
        assert_eq!(r.system.as_deref(), Some("be brief"));
        assert_eq!(r.model_size, 0);
        assert!(store.list().unwrap().iter().any(|m| m.name.to_string() == "big:latest"));
        assert!(to_modelfile(&r).contains("FROM llama3.1:70b\nREMOTE lab\n"));
        // A bad remote name, a TEMPLATE, and REMOTE without FROM are refused.
        for bad in ["FROM m\nREMOTE a/b\n", "FROM m\nREMOTE lab\nTEMPLATE x\n", "REMOTE lab\n"] {
            let created = parse(bad).and_then(|mf| {
                create(&store, &name, &mf, dir.path(), &CreateOptions::default(), &mut |_| {})
            });
            assert!(created.is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn parses_all_directives() {
        let m = parse(MF).unwrap();
        assert_eq!(m.commands.len(), 10);
        assert_eq!(m.commands[0].directive, Directive::From("./m.gguf".into()));
        assert_eq!((m.commands[0].line, m.commands[0].column), (3, 1));
        assert_eq!(
            m.commands[5].directive,
            Directive::Template("{{ if .System }}{{ .System }}\n{{ end }}{{ .Prompt }}".into())
        );
        assert_eq!(m.commands[6].directive, Directive::System("You are \"terse\".".into()));
        assert_eq!(m.commands[6].line, 10);
        assert_eq!(
            m.commands[8].directive,
            Directive::Message { role: "assistant".into(), content: "Hello\nthere".into() }
        );
    }

    fn err_pos(text: &str) -> (usize, usize, String) {
        match parse(text).unwrap_err() {
            Error::Modelfile { line, column, message } => (line, column, message),
            e => panic!("unexpected {e}"),
        }
    }

    /// Found by an outside sweep: a byte-order mark and Ollama's REQUIRES line were
    /// "unknown directive" errors.
    #[test]
    fn a_byte_order_mark_and_requires_are_accepted() {
        let m = parse("\u{feff}FROM x\nREQUIRES 0.5.0\nSYSTEM hi\n").unwrap();
        assert_eq!(m.commands.len(), 2);
        assert_eq!(m.commands[0].directive, Directive::From("x".into()));
    }

    #[test]
    fn errors_have_positions() {
        let (l, c, m) = err_pos("FROM x\n  BOGUS y\n");
        assert_eq!((l, c), (2, 3));
        assert!(m.contains("unknown directive"), "{m}");
        let (l, c, m) = err_pos("FROM x\nPARAMETER temperature hot\n");
        assert_eq!((l, c), (2, 23));
        assert!(m.contains("not a number"), "{m}");
        let (l, c, _) = err_pos("FROM x\nPARAMETER nonsense 1\n");
        assert_eq!((l, c), (2, 11));
        let (l, c, m) = err_pos("FROM x\nTEMPLATE \"\"\"abc\n\n");
        assert_eq!((l, c), (2, 10));
        assert!(m.contains("unterminated"), "{m}");
        let (l, _, m) = err_pos("FROM x\nMESSAGE robot hi\n");
        assert_eq!(l, 2);
        assert!(m.contains("role"), "{m}");
        let (l, _, m) = err_pos("FROM x\nSYSTEM\n");
        assert_eq!(l, 2);
        assert!(m.contains("missing value"), "{m}");
        let (_, _, m) = err_pos("SYSTEM hi\n");
        assert!(m.contains("no FROM"), "{m}");
        let (l, c, _) = err_pos("FROM x\nSYSTEM \"a\" b\n");
        assert_eq!((l, c), (2, 12));
    }

    #[test]
    fn create_copy_link_from_model_and_render() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store"), StoreOptions::default()).unwrap();
        let gguf = dir.path().join("m.gguf");
        std::fs::write(&gguf, b"GGUF\x03\0\0\0 random weights").unwrap();
        let mf = parse(MF).unwrap();
        let name = ModelName::parse("tiny").unwrap();
        let mut lines = Vec::new();
        let r = create(&store, &name, &mf, dir.path(), &CreateOptions::default(), &mut |s| {
            lines.push(s.to_string());
        })
        .unwrap();
        assert!(lines.contains(&"success".to_string()));
        assert!(r.model_path.starts_with(store.root()));
        assert_eq!(r.params["stop"], serde_json::json!(["<|eot|>", "User:"]));
        assert_eq!(r.params["num_ctx"], serde_json::json!(4096));
        assert_eq!(r.system.as_deref(), Some("You are \"terse\"."));
        assert_eq!(r.messages.len(), 2);

        // Round trip through show --modelfile.
        let text = to_modelfile(&r);
        let again = parse(&text).unwrap();
        let r2 = create(
            &store,
            &ModelName::parse("tiny2").unwrap(),
            &again,
            dir.path(),
            &CreateOptions::default(),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(r2.params, r.params);
        assert_eq!(r2.template, r.template);
        assert_eq!(r2.messages, r.messages);
        assert_eq!(r2.model_digest, r.model_digest);

        // FROM an existing model, overriding the system prompt.
        let mf = parse("FROM tiny\nSYSTEM other\nPARAMETER temperature 0.1").unwrap();
        let r3 = create(
            &store,
            &ModelName::parse("tiny3").unwrap(),
            &mf,
            dir.path(),
            &CreateOptions::default(),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(r3.system.as_deref(), Some("other"));
        assert_eq!(r3.params["stop"], serde_json::json!(["<|eot|>", "User:"]));
        assert_eq!(r3.params["temperature"], serde_json::json!(0.1));
        assert_eq!(r3.model_path, r.model_path);

        // --link: nothing copied, path is the file itself.
        let mf = parse("FROM ./m.gguf").unwrap();
        let r4 = create(
            &store,
            &ModelName::parse("linked").unwrap(),
            &mf,
            dir.path(),
            &CreateOptions { link: true },
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(r4.model_path, std::fs::canonicalize(&gguf).unwrap());
        assert_eq!(r4.model_digest, r.model_digest);
        Store::verify_link(r4.link.as_ref().unwrap()).unwrap();
        // Changing the file breaks the link with a clear error.
        std::fs::write(&gguf, b"GGUF\x03\0\0\0 other weights, longer").unwrap();
        let e = store.get(&ModelName::parse("linked").unwrap()).unwrap_err();
        assert!(matches!(e, Error::LinkBroken { .. }), "{e}");

        // Errors.
        let mf = parse("FROM ./missing.gguf").unwrap();
        let e = create(&store, &name, &mf, dir.path(), &CreateOptions::default(), &mut |_| {})
            .unwrap_err();
        assert!(matches!(e, Error::Modelfile { line: 1, column: 6, .. }), "{e}");
        let mf = parse("FROM nosuchmodel").unwrap();
        let e = create(&store, &name, &mf, dir.path(), &CreateOptions::default(), &mut |_| {})
            .unwrap_err();
        assert!(e.to_string().contains("no model"), "{e}");
        std::fs::write(dir.path().join("bad.gguf"), b"nope").unwrap();
        let mf = parse("FROM ./bad.gguf").unwrap();
        let e = create(&store, &name, &mf, dir.path(), &CreateOptions::default(), &mut |_| {})
            .unwrap_err();
        assert!(e.to_string().contains("not a GGUF"), "{e}");
    }
}
