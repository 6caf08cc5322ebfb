//! The store endpoints, through corral-registry: pull, push, create, copy, delete, blobs.

use std::sync::Arc;

use axum::{
    body::{Body, Bytes},
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use corral_registry::{
    Digest, ModelName, Store,
    modelfile::{self, Command, Directive, Modelfile},
    oci,
};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    AppState,
    ollama::ndjson,
    util::{ApiError, parse_body},
};

fn store_of(state: &AppState) -> Result<Store, ApiError> {
    state.sched.store.clone().ok_or_else(|| {
        ApiError::internal(
            "no model store could be opened (set CORRAL_MODELS to a writable directory)",
        )
    })
}

fn name_of(s: &str) -> Result<ModelName, ApiError> {
    if s.trim().is_empty() {
        return Err(ApiError::bad_request("model is required"));
    }
    ModelName::parse(s).map_err(ApiError::from)
}

/// A name a model is written under (create, copy): a `@sha256:...` digest there would
/// be dropped (the manifest's digest is what it is), so it is refused.
fn destination_name(s: &str) -> Result<ModelName, ApiError> {
    let name = name_of(s)?;
    if name.digest().is_some() {
        return Err(ApiError::bad_request(format!(
            "{s:?}: a model is written under a name without a digest (drop the @sha256:...)"
        )));
    }
    Ok(name)
}

/// `POST /api/pull` and `/api/push` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    insecure: Option<bool>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// The transfer task of one `/api/pull` or `/api/push` request, aborted when dropped.
///
/// The handle lives in the request's handler (`"stream": false`) or in its response body
/// (streamed): when the client goes away, hyper drops them, and the transfer stops, as
/// Ollama's runs under its request's context. Without this a pull outlived its client
/// (a registry trickling bytes kept it, a hashing thread and its files, and the blob's
/// lock, for ever). What was downloaded stays as a partial file the next pull resumes;
/// the blob's lock is released, so a pull waiting for it goes on.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn transfer(state: Arc<AppState>, body: Bytes, push: bool) -> Result<Response, ApiError> {
    let req: TransferRequest = parse_body(&body)?;
    let _ = (&req.username, &req.password);
    let name = name_of(&req.model.or(req.name).unwrap_or_default())?;
    let insecure = req.insecure.unwrap_or(false);
    // A client must not make the server speak plain HTTP (to any host it names) unless
    // the operator allowed it.
    if insecure && !state.sched.settings.allow_insecure_registries {
        return Err(ApiError::forbidden(
            "this server does not speak plain HTTP to registries (insecure: true); its \
             operator can allow it with `corral serve --allow-insecure-registries`, \
             CORRAL_ALLOW_INSECURE_REGISTRIES=1 or `allow_insecure_registries = true` in \
             the config's [server] section",
        ));
    }
    let store = store_of(&state)?;
    if push {
        // A model that is missing or cannot be opened is refused with its status (404,
        // 400) before any registry is contacted or a stream starts.
        let (s, n) = (store.clone(), name.clone());
        tokio::task::spawn_blocking(move || s.check(&n))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(ApiError::from)?;
    }
    let client = oci::Client::new(oci::ClientOptions { insecure, ..Default::default() })
        .map_err(ApiError::from)?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let sched = state.sched.clone();
    let task = AbortOnDrop(tokio::spawn(async move {
        // The transfer's own "success" is left out: this task sends one when its work
        // is done (after the server forgets the model's old files).
        let progress = |p: &oci::Progress| {
            if p.status != "success" {
                let _ = tx.send(serde_json::to_value(p).unwrap_or_default());
            }
        };
        let result = if push {
            client.push(&store, &name, &progress).await.map(|_| ())
        } else {
            client.pull(&store, &name, &progress).await.map(|_| ())
        };
        match result {
            Ok(()) => {
                if !push {
                    sched.forget(&name.to_string());
                }
                let _ = tx.send(json!({"status": "success"}));
                Ok(())
            }
            Err(e) => Err(ApiError::from(e)),
        }
    }));
    if req.stream == Some(false) {
        let mut task = task;
        let result = (&mut task.0).await.map_err(|e| ApiError::internal(e.to_string()))?;
        result?;
        return Ok(axum::Json(json!({"status": "success"})).into_response());
    }
    // Progress lines, then an error line if the transfer failed. The tail owns the task:
    // the body dropped (the client left) aborts the transfer.
    let progress = tokio_stream_from(rx);
    let tail = futures_util::stream::once(async move {
        let mut task = task;
        match (&mut task.0).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(json!({"error": e.message, "code": e.status.as_u16()})),
            Err(e) => Some(json!({"error": e.to_string()})),
        }
    })
    .filter_map(|x| async move { x });
    Ok(ndjson(progress.chain(tail)))
}

fn tokio_stream_from(
    rx: tokio::sync::mpsc::UnboundedReceiver<Value>,
) -> impl futures_util::Stream<Item = Value> + Send + 'static {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

/// `POST /api/pull`.
pub async fn pull(State(state): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    transfer(state, body, false).await
}

/// `POST /api/push`.
pub async fn push(State(state): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    transfer(state, body, true).await
}

/// `POST /api/create` body: a Modelfile, or Ollama's structured fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    modelfile: Option<String>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    files: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    adapters: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    template: Option<String>,
    #[serde(default)]
    system: Option<String>,
    #[serde(default)]
    license: Option<Value>,
    #[serde(default)]
    parameters: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    messages: Option<Vec<Value>>,
    #[serde(default)]
    quantize: Option<String>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    path: Option<String>,
    /// A remote model: `from` is the model's name on this remote (Ollama's field).
    #[serde(default)]
    remote_host: Option<String>,
}

fn cmd(directive: Directive) -> Command {
    Command { line: 1, column: 1, value_pos: (1, 1), directive }
}

/// The store path of a blob a client uploaded (`POST /api/blobs/DIGEST`), named in
/// `files` or `adapters` as `name → digest`.
fn uploaded_blob(store: &Store, field: &str, file: &str, digest: &str) -> Result<String, ApiError> {
    let d = Digest::parse(digest)
        .map_err(|e| ApiError::bad_request(format!("{field}: {file:?}: {e}")))?;
    if !store.has_blob(&d) {
        return Err(ApiError::bad_request(format!(
            "{field}: {file:?}: blob {d} was not uploaded (POST /api/blobs/{d} first)"
        )));
    }
    Ok(store.blob_path(&d).to_string_lossy().into_owned())
}

/// Ollama's structured create as a Modelfile. `files` (name → digest of an uploaded
/// blob) is one GGUF model file, the FROM; `adapters` (the same, LoRA GGUF files) become
/// ADAPTER layers, as a Modelfile's ADAPTER lines do. What this server cannot do is
/// refused by name, never dropped: several model files (a safetensors set, to convert),
/// `files` beside `from`.
fn structured_modelfile(store: &Store, req: &CreateRequest) -> Result<Modelfile, ApiError> {
    let mut commands = Vec::new();
    let files = req.files.as_ref().filter(|f| !f.is_empty());
    let from = match (&req.from, files) {
        (Some(f), Some(_)) if !f.is_empty() => {
            return Err(ApiError::bad_request(
                "give either from (a model) or files (uploaded model files), not both",
            ));
        }
        (Some(f), None) if !f.is_empty() => f.clone(),
        (_, Some(files)) => {
            if files.len() > 1 {
                let names: Vec<&str> = files.keys().map(String::as_str).take(10).collect();
                return Err(ApiError::bad_request(format!(
                    "files names {} files ({}); this server creates a model from one GGUF \
                     file (converting safetensors or other multi-file models is not \
                     supported)",
                    files.len(),
                    names.join(", ")
                )));
            }
            let Some((file, digest)) = files.iter().next() else {
                return Err(ApiError::bad_request("files is empty"));
            };
            uploaded_blob(store, "files", file, digest)?
        }
        _ => return Err(ApiError::bad_request("neither from nor files nor modelfile given")),
    };
    commands.push(cmd(Directive::From(from)));
    for (file, digest) in req.adapters.iter().flatten() {
        commands.push(cmd(Directive::Adapter(uploaded_blob(store, "adapters", file, digest)?)));
    }
    if let Some(r) = req.remote_host.as_ref().filter(|r| !r.is_empty()) {
        commands.push(cmd(Directive::Remote(r.clone())));
    }
    if let Some(t) = &req.template {
        commands.push(cmd(Directive::Template(t.clone())));
    }
    if let Some(s) = &req.system {
        commands.push(cmd(Directive::System(s.clone())));
    }
    // Typed as the Modelfile parser types a PARAMETER line: a model whose stored
    // parameter has the wrong type failed every later request with a 400 that blamed the
    // request (`check_parameter_ranges` then checks the values for both paths).
    let bad = |what: String| ApiError::bad_request(what);
    for (k, v) in req.parameters.iter().flatten() {
        let values = match v {
            Value::Array(a) => a.iter().collect(),
            v => vec![v],
        };
        for x in values {
            modelfile::typed_parameter(k, x).map_err(bad)?;
            commands.push(cmd(Directive::Parameter { name: k.clone(), value: x.clone() }));
        }
    }
    for m in req.messages.iter().flatten() {
        if !m.is_object() {
            return Err(bad(format!("messages: {m} is not a message object")));
        }
        let text = |key: &str| match m.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(bad(format!("messages: {key} must be a string, not {other}"))),
        };
        let role = text("role")?.unwrap_or_else(|| "user".into());
        if !matches!(role.as_str(), "system" | "user" | "assistant") {
            return Err(bad(format!(
                "messages: role {role:?} is not one of system, user, assistant"
            )));
        }
        let content = text("content")?.unwrap_or_default();
        commands.push(cmd(Directive::Message { role, content }));
    }
    match &req.license {
        Some(Value::String(s)) => commands.push(cmd(Directive::License(s.clone()))),
        Some(Value::Array(a)) => {
            for l in a {
                let l = l.as_str().ok_or_else(|| bad(format!("license: {l} is not a string")))?;
                commands.push(cmd(Directive::License(l.to_string())));
            }
        }
        None | Some(Value::Null) => {}
        Some(other) => return Err(bad(format!("license: {other} is not a string or a list"))),
    }
    Ok(Modelfile { commands })
}

/// Refuses PARAMETERs a request's options would refuse (a temperature below 0, a `top_p`
/// above 1, ...): stored in the model, they would fail every request on it with a 400 that
/// blames the request.
fn check_parameter_ranges(mf: &Modelfile) -> Result<(), ApiError> {
    let mut options = corral_generation::options::SamplingOptions::default();
    options
        .apply_json(&Value::Object(mf.parameters()))
        .and_then(|()| options.validate())
        .map_err(|e| ApiError::bad_request(format!("PARAMETER {e}")))
}

/// Refuses a Modelfile whose `FROM` or `ADAPTER` names a file of the server's machine
/// outside the directories `--allow-model-paths` allows: over the network a model comes
/// from the store or from blobs the client uploaded, never from an arbitrary path.
fn check_local_files(
    mf: &Modelfile,
    store: &Store,
    allowed: &crate::models::PathRule,
) -> Result<(), ApiError> {
    let blobs = store.root().join("blobs");
    // A remote model's FROM is a name on the remote, never a file here.
    let remote = mf.commands.iter().any(|c| matches!(c.directive, Directive::Remote(_)));
    for cmd in &mf.commands {
        if remote && matches!(cmd.directive, Directive::From(_)) {
            continue;
        }
        let (Directive::From(v) | Directive::Adapter(v)) = &cmd.directive else { continue };
        let p = std::path::Path::new(v);
        let path_like = p.is_absolute()
            || v.starts_with("./")
            || v.starts_with("../")
            || v.starts_with('~')
            || v.to_ascii_lowercase().ends_with(".gguf")
            || std::path::Path::new("/").join(p).exists() && v.contains('/');
        if !path_like {
            continue;
        }
        let uploaded =
            p.canonicalize().is_ok_and(|c| blobs.canonicalize().is_ok_and(|b| c.starts_with(b)));
        if uploaded || (p.is_absolute() && p.exists() && allowed.allows(p)) {
            // A pipe or a device would block the create (or never end) while it is hashed.
            if std::fs::metadata(p).is_ok_and(|m| !m.is_file() && !m.is_dir()) {
                return Err(ApiError::bad_request(format!(
                    "line {}: {v:?} is not a regular file (a pipe, a device or a socket)",
                    cmd.line
                )));
            }
            continue;
        }
        return Err(ApiError::forbidden(format!(
            "line {}: {v:?} is a file path; over HTTP a model comes from the store or from uploaded blobs \
             (POST /api/blobs/DIGEST, then files in /api/create; `corral create` does this), or from \
             files under a directory the server allows with --allow-model-paths",
            cmd.line
        )));
    }
    Ok(())
}

/// `POST /api/create`.
pub async fn create(State(state): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let req: CreateRequest = parse_body(&body)?;
    let _ = &req.path;
    if req.quantize.as_deref().is_some_and(|q| !q.is_empty()) {
        return Err(ApiError::bad_request("quantize is not supported"));
    }
    let has_modelfile = req.modelfile.as_ref().is_some_and(|t| !t.trim().is_empty());
    let non_empty = |m: &Option<std::collections::BTreeMap<String, String>>| {
        m.as_ref().is_some_and(|m| !m.is_empty())
    };
    if has_modelfile && (non_empty(&req.files) || non_empty(&req.adapters)) {
        return Err(ApiError::bad_request(
            "give either a modelfile or files/adapters, not both (name the blobs in the \
             Modelfile's FROM and ADAPTER lines, or use the structured fields only)",
        ));
    }
    let name = destination_name(&req.model.clone().or(req.name.clone()).unwrap_or_default())?;
    let store = store_of(&state)?;
    let stream = req.stream != Some(false);
    let created = name.to_string();
    let allowed = crate::models::PathRule::Under(state.sched.settings.allow_model_paths.clone());
    let remotes = state.remotes.clone();
    let lines = tokio::task::spawn_blocking(move || -> Result<Vec<Value>, ApiError> {
        let mf = match &req.modelfile {
            Some(text) if !text.trim().is_empty() => {
                modelfile::parse(text).map_err(ApiError::from)?
            }
            _ => structured_modelfile(&store, &req)?,
        };
        // A remote model must name a remote this server knows.
        for c in &mf.commands {
            if let Directive::Remote(r) = &c.directive {
                remotes.check_name(r)?;
            }
        }
        check_local_files(&mf, &store, &allowed)?;
        check_parameter_ranges(&mf)?;
        crate::models::check_templates(&mf).map_err(ApiError::from)?;
        let mut lines = Vec::new();
        // One "success", at the end (the create's own is left out).
        let mut progress = |s: &str| {
            if s != "success" {
                lines.push(json!({"status": s}));
            }
        };
        modelfile::create(
            &store,
            &name,
            &mf,
            std::path::Path::new("/"),
            &modelfile::CreateOptions::default(),
            &mut progress,
        )
        .map_err(|e| match e {
            // A FROM that names no model is a Modelfile error with its line; a model
            // missing later was deleted while this create ran (a race with /api/delete).
            corral_registry::Error::ModelNotFound(m) => ApiError::busy(format!(
                "model {m} was deleted while {name} was being created; try again"
            )),
            e => ApiError::from(e),
        })?;
        lines.push(json!({"status": "success"}));
        Ok(lines)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    state.sched.forget(&created);
    if !stream {
        return Ok(axum::Json(json!({"status": "success"})).into_response());
    }
    Ok(ndjson(futures_util::stream::iter(lines)))
}

/// `POST /api/copy` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyRequest {
    source: String,
    destination: String,
}

/// `POST /api/copy`.
pub async fn copy(State(state): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let req: CopyRequest = parse_body(&body)?;
    let (src, dst) = (name_of(&req.source)?, destination_name(&req.destination)?);
    let store = store_of(&state)?;
    let copied = dst.to_string();
    tokio::task::spawn_blocking(move || store.copy(&src, &dst))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(ApiError::from)?;
    state.sched.forget(&copied);
    Ok(StatusCode::OK.into_response())
}

/// `DELETE /api/delete` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

/// `DELETE /api/delete`.
pub async fn delete(State(state): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let req: DeleteRequest = parse_body(&body)?;
    let name = name_of(&req.model.or(req.name).unwrap_or_default())?;
    let store = store_of(&state)?;
    let key = name.to_string();
    // Under the model's load lock, so that a load that resolved the name before it is
    // removed is in the map (and unloaded below), not put back after.
    let hold = state.sched.hold_loads(&key).await;
    let removed = tokio::task::spawn_blocking(move || store.remove(&name)).await;
    drop(hold);
    state.sched.release_loads(&key);
    removed.map_err(|e| ApiError::internal(e.to_string()))?.map_err(ApiError::from)?;
    // Requests running on it finish; new ones find no such model.
    state.sched.unload(&key).await;
    Ok(StatusCode::OK.into_response())
}

/// `HEAD /api/blobs/{digest}`: 200 if the store has it, else 404.
pub async fn blob_head(State(state): State<Arc<AppState>>, Path(digest): Path<String>) -> Response {
    let (Ok(store), Ok(d)) = (store_of(&state), Digest::parse(&digest)) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    if store.has_blob(&d) { StatusCode::OK } else { StatusCode::NOT_FOUND }.into_response()
}

struct ChanReader {
    rx: std::sync::mpsc::Receiver<Bytes>,
    cur: Bytes,
}

impl std::io::Read for ChanReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.recv() {
                Ok(b) => self.cur = b,
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

/// `POST /api/blobs/{digest}`: streams the body into the store, verified against the
/// digest (201 when stored, 400 on a mismatch), at most `CORRAL_MAX_BLOB_SIZE` bytes (413
/// beyond), each chunk within the read timeout ([`super::read_timeout`]) of the last (408
/// otherwise).
pub async fn blob_post(
    State(state): State<Arc<AppState>>,
    Path(digest): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let d = Digest::parse(&digest).map_err(ApiError::from)?;
    let store = store_of(&state)?;
    if store.has_blob(&d) {
        return Ok(StatusCode::OK.into_response());
    }
    let (tx, rx) = std::sync::mpsc::sync_channel::<Bytes>(8);
    let d2 = d;
    let writer = tokio::task::spawn_blocking(move || {
        store.write_blob_from_reader(ChanReader { rx, cur: Bytes::new() }, Some(&d2), |_| {})
    });
    let max = corral_registry::oci::ClientOptions::default().max_blob_size;
    let idle = super::read_timeout();
    let mut s = body.into_data_stream();
    let mut failed = None;
    let mut received = 0u64;
    loop {
        // A client that stops sending is dropped: each chunk must come within the read
        // timeout of the last.
        let chunk = match tokio::time::timeout(idle, s.next()).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(_) => {
                failed = Some(ApiError {
                    status: StatusCode::REQUEST_TIMEOUT,
                    message: format!(
                        "upload stalled: no data for {} s; send the blob again",
                        idle.as_secs()
                    ),
                });
                break;
            }
        };
        match chunk {
            Ok(c) => {
                received += c.len() as u64;
                if received > max {
                    failed = Some(ApiError {
                        status: StatusCode::PAYLOAD_TOO_LARGE,
                        message: format!(
                            "blob larger than the server's limit of {max} bytes \
                             (CORRAL_MAX_BLOB_SIZE)"
                        ),
                    });
                    break;
                }
                let tx = tx.clone();
                // A bounded channel: wait off the async threads when the writer lags.
                if tokio::task::spawn_blocking(move || tx.send(c))
                    .await
                    .map_or(true, |r| r.is_err())
                {
                    break;
                }
            }
            Err(e) => {
                failed = Some(ApiError::bad_request(format!("upload interrupted: {e}")));
                break;
            }
        }
    }
    drop(tx);
    if let Some(e) = failed {
        // The writer sees the channel close early and discards its partial file.
        let _ = writer.await;
        return Err(e);
    }
    writer.await.map_err(|e| ApiError::internal(e.to_string()))?.map_err(ApiError::from)?;
    Ok(StatusCode::CREATED.into_response())
}
