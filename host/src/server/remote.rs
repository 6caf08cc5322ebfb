//! Remote models: a local name that stands for a model on another server.
//!
//! The config names remotes (`[remotes.NAME]`: a kind, one or more URLs, where the API
//! key comes from). A remote model is a store entry without weights whose config says
//! which remote and which model there (`corral create NAME --remote REMOTE:MODEL`, or
//! a Modelfile's `FROM MODEL` + `REMOTE REMOTE`; Ollama's `remote_host`/`remote_model`
//! fields), or a name in Ollama's cloud form (`MODEL:TAG-cloud`, `MODEL:cloud`), which
//! goes to the remotes marked `default`.
//!
//! A remote model is served through [`super::generation::start`] like a local one: the
//! request's messages, tools, format and options go to the remote in its own API
//! (`ollama`: `/api/chat`, `/api/generate`, `/api/embed`; `openai`:
//! `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`) and its answer comes
//! back as the same [`Piece`]s a local engine's does, so every endpoint (Ollama's,
//! OpenAI's, and any added later) works on remote models unchanged.
//!
//! Promises, each tested in `tests/tests/remote.rs`:
//! - nothing of a prompt or an answer is logged or written to disk: log lines carry the
//!   remote, the status, sizes and timings;
//! - a remote that is down (502), slow (504, after its `timeout`, for headers and every
//!   body read alike) or that refuses this server's key (502, with a hint naming the key's
//!   source: a 401 would tell the client its own key is wrong) gives an error that names
//!   it, and local models are not disturbed; several servers of one remote share the load
//!   (the least busy healthy one first) and a request moves on to the next when one does
//!   not answer;
//! - a remote's own error text reaches the client only as a short one-line excerpt, with
//!   this server's key and anything that looks like a credential cut out;
//! - a remote's answer is bounded: `num_predict` is enforced here too (the stream is cut
//!   with done reason `length`), an answer's text is at most [`MAX_ANSWER`] bytes (502),
//!   and a stream that brings no piece of the answer for `timeout` ends with a 504;
//! - a remote that leads back to this server (directly or through other corrals) ends
//!   after [`MAX_HOPS`] forwards with 508 Loop Detected: forwarded requests carry
//!   [`HOPS_HEADER`]; one server gets at most [`MAX_IN_FLIGHT`] requests at a time;
//! - a client that disconnects cancels the remote request (the connection is dropped);
//! - `CORRAL_NO_REMOTE=1` or `no_remote = true` turns every remote off (503);
//! - a key goes only to the server it belongs to: redirects are followed only within the
//!   same scheme, host and port.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::http::StatusCode;
use corral_generation::toolcall::ToolCall;
use corral_registry::ModelName;
use futures_util::StreamExt as _;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use super::{
    generation::{GenRequest, Piece, PromptSpec},
    scheduler::Scheduler,
    util::ApiError,
};
use crate::{config::Config, engine_loop::Stats, prompt::Message};

/// The environment variable that turns every remote off.
pub const NO_REMOTE_ENV: &str = "CORRAL_NO_REMOTE";
/// Longest line (NDJSON or SSE) read from a remote's stream.
const MAX_LINE: usize = 16 << 20;
/// Largest whole response (embeddings, `/api/show`, token counts) read from a remote.
const MAX_BODY: usize = 64 << 20;
/// Most text (and thinking) one generation of a remote may send back.
pub const MAX_ANSWER: usize = 16 << 20;
/// Most of a remote's own error text relayed to a client, in characters.
const MAX_EXCERPT: usize = 300;
/// The header that counts how many servers a request was forwarded through.
pub const HOPS_HEADER: &str = "x-corral-hops";
/// Forwards after which a request is refused (508): a remote leads back in a loop.
pub const MAX_HOPS: u32 = 4;
/// Requests in flight to one server of a remote at a time; more are refused (503).
pub const MAX_IN_FLIGHT: usize = 256;
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the servers of every remote are probed.
const HEALTH_INTERVAL: Duration = Duration::from_secs(15);

/// A config's remotes that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RemoteConfigError {
    /// A wrong value in `[remotes.NAME]`.
    #[error("[remotes.{remote}]: {message}")]
    Invalid {
        /// The remote.
        remote: String,
        /// What is wrong.
        message: String,
    },
}

/// The API a remote speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Ollama's (`/api/*`): another corral, or Ollama.
    Ollama,
    /// OpenAI's (`/v1/*`): llama-server, vLLM, a hosted API.
    OpenAi,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Ollama => "ollama",
            Kind::OpenAi => "openai",
        }
    }
}

/// One server of a remote.
pub struct RemoteServer {
    /// The remote it belongs to.
    pub remote: String,
    /// Its base URL (for `openai`, without a trailing `/v1`).
    pub url: reqwest::Url,
    kind: Kind,
    key: Option<String>,
    /// Where the key comes from, for the hint of a 401.
    key_source: String,
    timeout: Duration,
    in_flight: AtomicUsize,
    healthy: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl RemoteServer {
    fn endpoint(&self, path: &str) -> reqwest::Url {
        let mut u = self.url.clone();
        let base = u.path().trim_end_matches('/').to_string();
        u.set_path(&format!("{base}{path}"));
        u
    }

    fn mark(&self, ok: bool, error: Option<String>) {
        let was = self.healthy.swap(ok, Ordering::SeqCst);
        if was != ok {
            match &error {
                Some(e) => {
                    tracing::warn!(remote = %self.remote, server = %self.url, "remote server down: {e}");
                }
                None => {
                    tracing::info!(remote = %self.remote, server = %self.url, "remote server answering again");
                }
            }
        }
        if let Some(e) = error {
            *self.last_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e);
        }
    }

    fn label(&self) -> String {
        format!("remote \"{}\" ({})", self.remote, self.url)
    }

    /// The 504 of a request that took longer than this server's `timeout`.
    fn timed_out(&self) -> ApiError {
        ApiError {
            status: StatusCode::GATEWAY_TIMEOUT,
            message: format!(
                "{} did not answer within {} s (its timeout)",
                self.label(),
                self.timeout.as_secs()
            ),
        }
    }

    /// A remote's own text as it may reach a client (see [`excerpt`]).
    fn excerpt(&self, text: &str) -> String {
        excerpt(text, self.key.as_deref())
    }

    /// A request to `path` with this server's key; `body` is JSON.
    fn post(&self, client: &reqwest::Client, path: &str, body: Vec<u8>) -> reqwest::RequestBuilder {
        let mut b = client
            .post(self.endpoint(path))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(k) = &self.key {
            b = b.bearer_auth(k);
        }
        b
    }
}

/// The servers a remote model may be sent to, and its name there.
#[derive(Clone)]
pub struct Target {
    /// The local name (as requests name it).
    pub name: String,
    /// The remote's name(s), for messages and listings.
    pub remote: String,
    /// The model's name on the remote.
    pub model: String,
    servers: Vec<Arc<RemoteServer>>,
    /// The stub's SYSTEM, PARAMETERs and MESSAGEs (a store entry), applied here.
    system: Option<String>,
    params: Map<String, Value>,
    messages: Vec<Message>,
}

/// Every configured remote, with the HTTP client they share.
pub struct Remotes {
    pools: BTreeMap<String, Vec<Arc<RemoteServer>>>,
    defaults: Vec<String>,
    off: bool,
    client: reqwest::Client,
}

fn env_off() -> bool {
    std::env::var(NO_REMOTE_ENV).is_ok_and(|v| {
        matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
    })
}

tokio::task_local! {
    /// How many servers the request being handled was forwarded through already (its
    /// [`HOPS_HEADER`]); set by [`hops_layer`] around every handler.
    static HOPS: u32;
}

/// Middleware: reads the request's [`HOPS_HEADER`] (absent or unreadable: 0) for the
/// remote requests its handler makes. The header itself is never passed on: a remote
/// request carries this count plus one.
pub async fn hops_layer(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let hops = req
        .headers()
        .get(HOPS_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or(0);
    HOPS.scope(hops, next.run(req)).await
}

/// The forwards the request being handled has been through (0 outside a request).
fn current_hops() -> u32 {
    HOPS.try_with(|h| *h).unwrap_or(0)
}

/// `url` as it may be printed: a password is masked.
fn masked_url(u: &str) -> String {
    match reqwest::Url::parse(u) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("***"));
            }
            url.to_string()
        }
        // Unparsable: whatever sits between the scheme and an `@` may be credentials.
        Err(_) => match (u.find("://"), u.rfind('@')) {
            (Some(a), Some(b)) if a + 3 <= b => format!("{}***{}", &u[..a + 3], &u[b..]),
            _ => u.to_string(),
        },
    }
}

/// A remote's own text (an error body, an error in its stream) as it may reach a client:
/// one line, at most [`MAX_EXCERPT`] characters, with `key` and whatever looks like a
/// credential (`Bearer …`, `Basic …`, the value after `x-api-key`, `api_key`,
/// `authorization` and the like) replaced by `[redacted]`.
fn excerpt(text: &str, key: Option<&str>) -> String {
    let mut t = text.to_string();
    if let Some(k) = key.filter(|k| k.len() >= 4) {
        t = t.replace(k, "[redacted]");
    }
    let t = redact_credentials(&t);
    let mut one_line = String::with_capacity(t.len().min(MAX_EXCERPT * 4));
    let mut space = false;
    for c in t.chars() {
        if c.is_whitespace() || c.is_control() {
            space = !one_line.is_empty();
            continue;
        }
        if space {
            one_line.push(' ');
            space = false;
        }
        one_line.push(c);
    }
    match one_line.char_indices().nth(MAX_EXCERPT) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}

/// Replaces the value after each credential-like word (see [`excerpt`]).
fn redact_credentials(text: &str) -> String {
    const WORDS: [&str; 8] = [
        "bearer",
        "basic",
        "x-api-key",
        "api-key",
        "api_key",
        "apikey",
        "authorization",
        "access_token",
    ];
    let lower = text.to_ascii_lowercase();
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut copied = 0;
    while i < bytes.len() {
        let word = WORDS.iter().find(|w| {
            lower.as_bytes()[i..].starts_with(w.as_bytes())
                && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric())
                && bytes.get(i + w.len()).is_none_or(|b| !b.is_ascii_alphanumeric())
        });
        let Some(word) = word else {
            i += 1;
            continue;
        };
        // Past the word: separators (`: `, `=`, `"`, spaces), then the value.
        let mut j = i + word.len();
        while j < bytes.len() && matches!(bytes[j], b' ' | b'\t' | b':' | b'=' | b'"' | b'\'') {
            j += 1;
        }
        let start = j;
        while j < bytes.len()
            && !matches!(bytes[j], b' ' | b'\t' | b'\r' | b'\n' | b'"' | b'\'' | b',' | b';' | b'}')
        {
            j += 1;
        }
        // `Authorization: Bearer xyz`: the scheme word is kept, its value cut next turn;
        // short values ("Basic realm") are words, not secrets.
        let value = &lower[start..j];
        if j - start >= 8 && !matches!(value, "bearer" | "basic") {
            out.push_str(&text[copied..start]);
            out.push_str("[redacted]");
            copied = j;
            i = j;
        } else {
            i = start.max(i + 1);
        }
    }
    out.push_str(&text[copied..]);
    out
}

/// Follows a redirect only to the same scheme, host and port: a key must never reach
/// another machine because a server said so.
fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let same = attempt.previous().first().is_some_and(|first| {
            first.scheme() == attempt.url().scheme()
                && first.host_str() == attempt.url().host_str()
                && first.port_or_known_default() == attempt.url().port_or_known_default()
        });
        if !same {
            let to = attempt.url().to_string();
            attempt.error(format!("redirected to another server ({to}), which is not followed"))
        } else if attempt.previous().len() >= 5 {
            attempt.error("too many redirects")
        } else {
            attempt.follow()
        }
    })
}

impl Remotes {
    /// No remotes.
    pub fn none() -> Remotes {
        Remotes {
            pools: BTreeMap::new(),
            defaults: Vec::new(),
            off: false,
            client: reqwest::Client::new(),
        }
    }

    /// The config's remotes; keys are read now (from their variable or file).
    pub fn from_config(cfg: &Config) -> Result<Remotes, RemoteConfigError> {
        // The environment's proxies, except for this machine (one rule for corral's
        // HTTP clients: `corral_registry::oci::with_env_proxies`).
        let client = corral_registry::oci::with_env_proxies(
            reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .redirect(same_origin_redirects()),
        )
        .build()
        .map_err(|e| RemoteConfigError::Invalid {
            remote: "*".into(),
            message: format!("cannot build an HTTP client: {e}"),
        })?;
        let mut pools = BTreeMap::new();
        let mut defaults = Vec::new();
        for (name, rc) in &cfg.remotes {
            let bad =
                |message: String| RemoteConfigError::Invalid { remote: name.clone(), message };
            if !corral_registry::modelfile::valid_remote_name(name) {
                return Err(bad(
                    "a remote's name is letters, digits, '-', '_' and '.', at most 64".into(),
                ));
            }
            let kind = match rc.kind.as_deref().unwrap_or("ollama") {
                "ollama" => Kind::Ollama,
                "openai" => Kind::OpenAi,
                other => return Err(bad(format!("kind {other:?}: use \"ollama\" or \"openai\""))),
            };
            let timeout = match &rc.timeout {
                None => Duration::from_secs(300),
                Some(t) => match super::util::parse_duration(t) {
                    Some(Some(d)) if !d.is_zero() => d,
                    _ => return Err(bad(format!("timeout {t:?} is not a duration like \"2m\""))),
                },
            };
            let (key, key_source) = match (&rc.api_key_env, &rc.api_key_file) {
                (Some(_), Some(_)) => {
                    return Err(bad("give api_key_env or api_key_file, not both".into()));
                }
                (Some(var), None) => match std::env::var(var) {
                    Ok(k) if !k.trim().is_empty() => {
                        (Some(k.trim().to_string()), format!("${var}"))
                    }
                    _ => {
                        tracing::warn!(remote = %name, "{var} is not set: requests to this remote carry no API key");
                        (None, format!("${var} (not set)"))
                    }
                },
                (None, Some(file)) => {
                    let mut text = String::new();
                    std::fs::File::open(file)
                        .and_then(|f| {
                            std::io::Read::read_to_string(
                                &mut std::io::Read::take(f, 64 << 10),
                                &mut text,
                            )
                        })
                        .map_err(|e| bad(format!("api_key_file {}: {e}", file.display())))?;
                    let k = text.lines().next().unwrap_or("").trim().to_string();
                    if k.is_empty() {
                        return Err(bad(format!("api_key_file {} is empty", file.display())));
                    }
                    (Some(k), file.display().to_string())
                }
                (None, None) => (None, "no key configured (api_key_env or api_key_file)".into()),
            };
            let mut urls: Vec<&String> = rc.urls.iter().collect();
            urls.extend(rc.url.iter());
            if urls.is_empty() {
                return Err(bad("url (or urls) is missing".into()));
            }
            let mut servers = Vec::new();
            for u in urls {
                // Printed with any password masked: these messages reach logs.
                let shown = masked_url(u);
                let mut url =
                    reqwest::Url::parse(u).map_err(|e| bad(format!("url {shown:?}: {e}")))?;
                if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                    return Err(bad(format!("url {shown:?}: only http:// and https:// URLs")));
                }
                if !url.username().is_empty() || url.password().is_some() {
                    return Err(bad(format!(
                        "url {shown:?} holds credentials: put the key in api_key_env or \
                         api_key_file"
                    )));
                }
                // `openai` URLs may be given with or without `/v1`.
                let path = url.path().trim_end_matches('/').to_string();
                let path = match kind {
                    Kind::OpenAi => path.strip_suffix("/v1").unwrap_or(&path).to_string(),
                    Kind::Ollama => path,
                };
                url.set_path(&path);
                url.set_query(None);
                servers.push(Arc::new(RemoteServer {
                    remote: name.clone(),
                    url,
                    kind,
                    key: key.clone(),
                    key_source: key_source.clone(),
                    timeout,
                    in_flight: AtomicUsize::new(0),
                    healthy: AtomicBool::new(true),
                    last_error: Mutex::new(None),
                }));
            }
            if rc.default {
                defaults.push(name.clone());
            }
            pools.insert(name.clone(), servers);
        }
        Ok(Remotes { pools, defaults, off: cfg.no_remote || env_off(), client })
    }

    /// Whether remotes are turned off.
    pub fn off(&self) -> bool {
        self.off
    }

    /// The configured remotes' names.
    pub fn names(&self) -> Vec<String> {
        self.pools.keys().cloned().collect()
    }

    /// 400 unless `name` is a configured remote (what `/api/create` checks).
    pub fn check_name(&self, name: &str) -> Result<(), ApiError> {
        if self.pools.contains_key(name) {
            return Ok(());
        }
        Err(ApiError::bad_request(format!(
            "no remote named \"{name}\" in the server's config ({}); add [remotes.{name}] with its url",
            if self.pools.is_empty() {
                "it has none".to_string()
            } else {
                format!("it has {}", self.names().join(", "))
            }
        )))
    }

    /// The servers of a remote given by config name, or by URL (an Ollama store's cloud
    /// model names `https://ollama.com:443`).
    fn servers_of(&self, host: &str) -> Option<Vec<Arc<RemoteServer>>> {
        if let Some(p) = self.pools.get(host) {
            return Some(p.clone());
        }
        let url = reqwest::Url::parse(host).ok()?;
        let matching: Vec<Arc<RemoteServer>> = self
            .pools
            .values()
            .flatten()
            .filter(|s| {
                s.url.host_str() == url.host_str()
                    && s.url.port_or_known_default() == url.port_or_known_default()
            })
            .cloned()
            .collect();
        (!matching.is_empty()).then_some(matching)
    }

    /// Whether `name` is a remote model, and where it goes. `Ok(None)`: a local model
    /// (or no model at all: the local path says so).
    pub fn resolve(&self, sched: &Scheduler, name: &str) -> Result<Option<Target>, ApiError> {
        let Ok(parsed) = ModelName::parse(name) else { return Ok(None) };
        if std::path::Path::new(name).is_absolute() {
            return Ok(None);
        }
        let local = parsed.to_string();
        // A model loaded here is local: no store lookup on the hot path.
        if sched.is_loaded(&crate::models::load_key(name)) {
            return Ok(None);
        }
        // Ollama's cloud naming, unless the store has a model of that very name.
        let cloud_base = local
            .strip_suffix(":cloud")
            .or_else(|| local.strip_suffix("-cloud").filter(|b| b.contains(':')))
            .map(str::to_string);
        let stored = match &sched.store {
            Some(store) => match store.get(&parsed) {
                Ok(r) => Some(r),
                Err(corral_registry::Error::ModelNotFound(_)) => None,
                // A broken entry: the local path reports it.
                Err(_) => return Ok(None),
            },
            None => None,
        };
        let target = match (stored, cloud_base) {
            (Some(r), _) if r.config.is_remote() => {
                let host = r.config.remote_host.clone();
                let servers = self.servers_of(&host);
                if self.off {
                    return Err(self.off_error(&local));
                }
                let Some(servers) = servers else {
                    return Err(ApiError::busy(format!(
                        "\"{local}\" is a model on remote \"{host}\", which the server's config \
                         does not name; add [remotes.{host}] with its url"
                    )));
                };
                Target {
                    name: local,
                    remote: host,
                    model: r.config.remote_model.clone(),
                    servers,
                    system: r.system.clone(),
                    params: r.params.clone(),
                    messages: r
                        .messages
                        .iter()
                        .map(|m| Message::new(&m.role, &m.content))
                        .collect(),
                }
            }
            (Some(_), _) | (None, None) => return Ok(None),
            (None, Some(base)) => {
                if self.off {
                    return Err(self.off_error(&local));
                }
                if self.defaults.is_empty() {
                    return Err(ApiError::not_found(format!(
                        "\"{local}\" names a cloud model, and no remote is marked default in \
                         the server's config (default = true in [remotes.NAME])"
                    )));
                }
                Target {
                    name: local,
                    remote: self.defaults.join(","),
                    model: base,
                    servers: self
                        .defaults
                        .iter()
                        .filter_map(|d| self.pools.get(d))
                        .flatten()
                        .cloned()
                        .collect(),
                    system: None,
                    params: Map::new(),
                    messages: Vec::new(),
                }
            }
        };
        Ok(Some(target))
    }

    fn off_error(&self, local: &str) -> ApiError {
        ApiError::busy(format!(
            "\"{local}\" is a remote model and remotes are turned off ({NO_REMOTE_ENV} or \
             no_remote in the config)"
        ))
    }

    /// Probes every server now and then (`GET /api/version` or `/v1/models`), so that a
    /// server that went down is skipped and one that came back is used again.
    pub fn spawn_health_checks(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        if self.pools.is_empty() || self.off {
            return None;
        }
        let me = self.clone();
        Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEALTH_INTERVAL).await;
                for s in me.pools.values().flatten() {
                    let path = match s.kind {
                        Kind::Ollama => "/api/version",
                        Kind::OpenAi => "/v1/models",
                    };
                    let mut req = me.client.get(s.endpoint(path)).timeout(Duration::from_secs(5));
                    if let Some(k) = &s.key {
                        req = req.bearer_auth(k);
                    }
                    match req.send().await {
                        Ok(r) if r.status().is_success() => s.mark(true, None),
                        Ok(r) => {
                            s.mark(false, Some(format!("health check answered {}", r.status())));
                        }
                        Err(e) => s.mark(false, Some(format!("health check failed: {e}"))),
                    }
                }
            }
        }))
    }
}

/// The order to try a target's servers in: healthy ones first, the least busy first.
fn order(servers: &[Arc<RemoteServer>]) -> Vec<Arc<RemoteServer>> {
    let mut v: Vec<Arc<RemoteServer>> = servers.to_vec();
    v.sort_by_key(|s| (!s.healthy.load(Ordering::SeqCst), s.in_flight.load(Ordering::SeqCst)));
    v
}

/// Counts a request in flight on a server while it lives; the request's deadline (its
/// start plus the server's `timeout`) bounds every read of a whole body.
struct InFlight(Arc<RemoteServer>, tokio::time::Instant);

impl InFlight {
    /// `None` when the server has [`MAX_IN_FLIGHT`] requests already.
    fn new(s: &Arc<RemoteServer>) -> Option<InFlight> {
        let before = s.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(s.clone(), tokio::time::Instant::now() + s.timeout);
        (before < MAX_IN_FLIGHT).then_some(guard)
    }

    /// A whole body of the answer, at most `limit` bytes, by the request's deadline
    /// (504 after it, as when the headers are late).
    async fn body(&self, resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, ApiError> {
        let server = &self.0;
        match tokio::time::timeout_at(self.1, read_limited(resp, limit)).await {
            Err(_) => {
                server.mark(false, Some(format!("no whole answer within {:?}", server.timeout)));
                Err(server.timed_out())
            }
            Ok(Err(e)) => Err(ApiError {
                status: StatusCode::BAD_GATEWAY,
                message: format!("{}: {e}", server.label()),
            }),
            Ok(Ok(b)) => Ok(b),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why an attempt on one server failed: whether the next server should be tried.
struct Failure {
    error: ApiError,
    try_next: bool,
}

/// Sends `body` to `path` on the target's servers in turn until one answers with
/// success; returns the response and the server (counted in flight).
async fn send(
    client: &reqwest::Client,
    target: &Target,
    path_of: impl Fn(Kind) -> &'static str,
    body_of: impl Fn(Kind) -> Value,
) -> Result<(reqwest::Response, InFlight), ApiError> {
    // A request that went round through MAX_HOPS servers already is in a loop: each of
    // them would forward it again at once, until sockets run out.
    let hops = current_hops();
    if hops >= MAX_HOPS {
        tracing::warn!(remote = %target.remote, hops, "remote request refused: a forwarding loop");
        return Err(ApiError {
            status: StatusCode::LOOP_DETECTED,
            message: format!(
                "remote \"{}\": this request was forwarded {hops} times already ({HOPS_HEADER}); \
                 the remote leads back to this server, directly or through other servers: \
                 check its url, and the remotes of the servers it names",
                target.remote
            ),
        });
    }
    let mut last: Option<ApiError> = None;
    for server in order(&target.servers) {
        let started = Instant::now();
        let Some(guard) = InFlight::new(&server) else {
            last = Some(ApiError::busy(format!(
                "{} has {MAX_IN_FLIGHT} requests from this server in flight already (the most \
                 one server is sent at a time); try again later",
                server.label()
            )));
            continue;
        };
        let body = serde_json::to_vec(&body_of(server.kind)).unwrap_or_default();
        let request_bytes = body.len();
        let request = server.post(client, path_of(server.kind), body).header(HOPS_HEADER, hops + 1);
        let result = tokio::time::timeout_at(guard.1, request.send()).await;
        let failure = match result {
            Err(_) => {
                server.mark(false, Some(format!("no answer within {:?}", server.timeout)));
                Failure { error: server.timed_out(), try_next: true }
            }
            Ok(Err(e)) => {
                server.mark(false, Some(e.to_string()));
                Failure {
                    error: ApiError {
                        status: StatusCode::BAD_GATEWAY,
                        message: format!(
                            "{} is not answering: {}",
                            server.label(),
                            error_chain(&e)
                        ),
                    },
                    try_next: true,
                }
            }
            Ok(Ok(resp)) if resp.status().is_success() => {
                server.mark(true, None);
                tracing::info!(
                    remote = %server.remote,
                    server = %server.url,
                    status = resp.status().as_u16(),
                    request_bytes,
                    ms = started.elapsed().as_millis() as u64,
                    "remote request answered"
                );
                return Ok((resp, guard));
            }
            Ok(Ok(resp)) => refused(&guard, target, resp).await,
        };
        tracing::warn!(
            remote = %server.remote,
            server = %server.url,
            status = failure.error.status.as_u16(),
            ms = started.elapsed().as_millis() as u64,
            "remote request failed"
        );
        if !failure.try_next {
            return Err(failure.error);
        }
        last = Some(failure.error);
    }
    Err(last.unwrap_or_else(|| {
        ApiError::busy(format!("remote \"{}\" has no server configured", target.remote))
    }))
}

/// The sources of an error, joined (reqwest's own message hides the cause).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// A remote's non-success answer as this server's error. Its body is read by the
/// request's deadline, and only an excerpt of what it says is relayed.
async fn refused(guard: &InFlight, target: &Target, resp: reqwest::Response) -> Failure {
    let server = &guard.0;
    let status = resp.status();
    let text = match tokio::time::timeout_at(guard.1, read_limited(resp, 64 << 10)).await {
        Ok(t) => t.unwrap_or_default(),
        Err(_) => {
            server.mark(false, Some(format!("no whole answer within {:?}", server.timeout)));
            return Failure { error: server.timed_out(), try_next: true };
        }
    };
    let said = serde_json::from_slice::<Value>(&text)
        .ok()
        .and_then(|v| {
            v.get("error")
                .and_then(|e| {
                    e.as_str()
                        .map(str::to_string)
                        .or_else(|| e.get("message").and_then(Value::as_str).map(str::to_string))
                })
                .or_else(|| v.get("message").and_then(Value::as_str).map(str::to_string))
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&text).into_owned());
    let said = server.excerpt(&said);
    let label = server.label();
    match status.as_u16() {
        // This server's key, not the client's: a 401 would tell the client (and SDKs) that
        // its own key is wrong.
        401 | 403 => Failure {
            error: ApiError {
                status: StatusCode::BAD_GATEWAY,
                message: format!(
                    "{label} refused this server's credentials for it ({status}: {said}); the \
                     key comes from {}: check api_key_env/api_key_file in [remotes.{}]",
                    server.key_source, server.remote
                ),
            },
            try_next: true,
        },
        // A corral further on found the request in a loop: so is this one.
        508 => Failure {
            error: ApiError {
                status: StatusCode::LOOP_DETECTED,
                message: format!(
                    "{label} leads back to a server this request already passed through \
                     (508 Loop Detected after {MAX_HOPS} forwards): check the remote's url, \
                     and the remotes of the servers it names"
                ),
            },
            try_next: false,
        },
        404 => Failure {
            error: ApiError::not_found(format!(
                "{label} has no model \"{}\" ({said})",
                target.model
            )),
            try_next: true,
        },
        400 | 413 | 422 => Failure {
            error: ApiError::bad_request(format!("{label} refused the request: {said}")),
            try_next: false,
        },
        429 => Failure {
            error: ApiError::busy(format!("{label} is busy (429): {said}")),
            try_next: true,
        },
        _ => {
            server.mark(false, Some(format!("answered {status}")));
            Failure {
                error: ApiError {
                    status: StatusCode::BAD_GATEWAY,
                    message: format!("{label} failed ({status}): {said}"),
                },
                try_next: true,
            }
        }
    }
}

/// A response body, at most `limit` bytes (more is an error).
async fn read_limited(resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        if out.len() + chunk.len() > limit {
            return Err(format!("the answer is larger than {} MiB", limit >> 20));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Splits a byte stream into lines, each at most [`MAX_LINE`] bytes.
struct Lines {
    stream: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: Vec<u8>,
    ended: bool,
}

impl Lines {
    fn new(resp: reqwest::Response) -> Lines {
        Lines { stream: resp.bytes_stream().boxed(), buf: Vec::new(), ended: false }
    }

    /// The next line (without its end), `Ok(None)` at the end of the stream;
    /// [`Stop::TimedOut`] when it is not complete by `deadline` (bytes that make no line,
    /// a space a second, do not keep a stream alive).
    async fn next(&mut self, deadline: tokio::time::Instant) -> Result<Option<String>, Stop> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                let text = String::from_utf8_lossy(&line[..i]);
                return Ok(Some(text.trim_end_matches('\r').to_string()));
            }
            if self.ended {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let text = String::from_utf8_lossy(&self.buf).into_owned();
                self.buf.clear();
                return Ok(Some(text));
            }
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return Err(Stop::TimedOut),
                Ok(None) => self.ended = true,
                Ok(Some(Err(e))) => return Err(Stop::Failed(error_chain(&e))),
                Ok(Some(Ok(chunk))) => {
                    if self.buf.len() + chunk.len() > MAX_LINE {
                        return Err(Stop::Failed(format!(
                            "sent a line longer than {} MiB",
                            MAX_LINE >> 20
                        )));
                    }
                    self.buf.extend_from_slice(&chunk);
                }
            }
        }
    }
}

/// Options (Ollama's names) for the remote: the stub's PARAMETERs under the request's.
fn merged_options(target: &Target, options: Option<&Value>) -> Map<String, Value> {
    let mut o = target.params.clone();
    if let Some(Value::Object(req)) = options {
        for (k, v) in req {
            o.insert(k.clone(), v.clone());
        }
    }
    o
}

/// Ollama's keep_alive as JSON (`None`: the remote's default).
fn keep_alive_json(k: Option<Option<Duration>>) -> Option<Value> {
    match k? {
        None => Some(json!(-1)),
        Some(d) => Some(json!(format!("{}s", d.as_secs()))),
    }
}

/// Tool calls of a message in Ollama's shape (arguments an object).
fn ollama_calls(calls: &[Value]) -> Vec<Value> {
    calls
        .iter()
        .map(|c| {
            let f = c.get("function").unwrap_or(c);
            let name = f.get("name").cloned().unwrap_or(Value::Null);
            let args = match f.get("arguments") {
                Some(Value::String(s)) => serde_json::from_str(s).unwrap_or(json!({})),
                Some(v) => v.clone(),
                None => json!({}),
            };
            json!({"function": {"name": name, "arguments": args}})
        })
        .collect()
}

/// Messages in Ollama's shape.
fn ollama_messages(messages: &[Message]) -> Vec<Value> {
    messages
        .iter()
        .map(|m| {
            let mut v = serde_json::to_value(m).unwrap_or_else(|_| json!({}));
            if let Some(calls) = &m.tool_calls {
                v["tool_calls"] = Value::Array(ollama_calls(calls));
            }
            v
        })
        .collect()
}

/// Messages in OpenAI's shape: tool calls get ids (kept when given), and a tool result
/// without a `tool_call_id` answers the next call not yet answered.
fn openai_messages(messages: &[Message]) -> Vec<Value> {
    let mut out = Vec::with_capacity(messages.len());
    let mut unanswered: std::collections::VecDeque<String> = Default::default();
    let mut n = 0usize;
    for m in messages {
        let mut v = json!({"role": m.role, "content": m.content});
        if let Some(calls) = &m.tool_calls {
            let calls: Vec<Value> = calls
                .iter()
                .map(|c| {
                    let f = c.get("function").unwrap_or(c);
                    let id = c.get("id").and_then(Value::as_str).map_or_else(
                        || {
                            n += 1;
                            format!("call_{n}")
                        },
                        str::to_string,
                    );
                    unanswered.push_back(id.clone());
                    let args = match f.get("arguments") {
                        Some(Value::String(s)) => s.clone(),
                        Some(v) => v.to_string(),
                        None => "{}".into(),
                    };
                    json!({"id": id, "type": "function",
                        "function": {"name": f.get("name").cloned().unwrap_or(Value::Null), "arguments": args}})
                })
                .collect();
            if !calls.is_empty() {
                v["tool_calls"] = Value::Array(calls);
            }
        }
        if m.role == "tool" {
            let id = match m.extra.get("tool_call_id").and_then(Value::as_str) {
                Some(id) => {
                    unanswered.retain(|u| u != id);
                    id.to_string()
                }
                None => unanswered.pop_front().unwrap_or_else(|| "call_0".into()),
            };
            v["tool_call_id"] = json!(id);
        }
        out.push(v);
    }
    out
}

/// OpenAI's sampling fields from Ollama's options.
fn openai_sampling(body: &mut Value, o: &Map<String, Value>) {
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("seed", "seed"),
        ("presence_penalty", "presence_penalty"),
        ("frequency_penalty", "frequency_penalty"),
        // Extensions that llama-server and vLLM honour; sent only when asked for.
        ("top_k", "top_k"),
        ("min_p", "min_p"),
        ("repeat_penalty", "repetition_penalty"),
    ] {
        if let Some(v) = o.get(from) {
            body[to] = v.clone();
        }
    }
    if let Some(n) = o.get("num_predict").and_then(Value::as_i64).filter(|&n| n > 0) {
        body["max_tokens"] = json!(n);
    }
    if let Some(stop) = o.get("stop") {
        body["stop"] = stop.clone();
    }
    // `logit_bias` in OpenAI's shape (the options take llama-server's pairs and `false`
    // bans too; checked when the request was read).
    if let Some(bias) = o.get("logit_bias").filter(|b| !b.is_null()) {
        let mut parsed = corral_generation::options::SamplingOptions::default();
        if parsed.apply_json(&json!({ "logit_bias": bias })).is_ok()
            && !parsed.logit_bias.is_empty()
        {
            let shaped: Map<String, Value> = parsed
                .logit_bias
                .iter()
                .map(|&(id, b)| (id.to_string(), json!(b.clamp(-100.0, 100.0))))
                .collect();
            body["logit_bias"] = Value::Object(shaped);
        }
    }
}

/// OpenAI's `response_format` for Ollama's `format`.
fn response_format(format: &Value) -> Option<Value> {
    match format {
        Value::String(s) if s == "json" => Some(json!({"type": "json_object"})),
        Value::Object(_) => Some(json!({"type": "json_schema",
            "json_schema": {"name": "output", "schema": format, "strict": true}})),
        _ => None,
    }
}

/// The stub's SYSTEM and MESSAGEs before the request's messages.
fn chat_messages(target: &Target, asked: Vec<Message>) -> Vec<Message> {
    let mut messages = Vec::with_capacity(asked.len() + 1 + target.messages.len());
    if let Some(sys) = &target.system
        && asked.first().is_none_or(|m| m.role != "system")
    {
        messages.push(Message::new("system", sys));
    }
    messages.extend(target.messages.iter().cloned());
    messages.extend(asked);
    messages
}

/// What a request asks of the remote, independent of its API.
struct Ask {
    spec: PromptSpec,
    format: Option<Value>,
    options: Map<String, Value>,
    think: Option<corral_generation::thinking::Think>,
    keep_alive: Option<Value>,
}

impl Ask {
    /// (path, body) for a server of `kind`.
    fn request(&self, target: &Target, kind: Kind) -> (&'static str, Value) {
        match (kind, &self.spec) {
            (Kind::Ollama, PromptSpec::Chat { messages, tools, .. }) => {
                let mut b = json!({"model": target.model, "stream": true,
                    "messages": ollama_messages(&chat_messages(target, messages.clone()))});
                if let Some(t) = tools.as_ref().filter(|t| !t.is_empty()) {
                    b["tools"] = json!(t);
                }
                self.ollama_common(&mut b);
                ("/api/chat", b)
            }
            (Kind::Ollama, PromptSpec::Completion { prompt, system, raw, context, template }) => {
                let mut b = json!({"model": target.model, "stream": true, "prompt": prompt});
                if let Some(s) = system.clone().or_else(|| target.system.clone()) {
                    b["system"] = json!(s);
                }
                if *raw {
                    b["raw"] = json!(true);
                }
                if !context.is_empty() {
                    b["context"] = json!(context);
                }
                if let Some(t) = template {
                    b["template"] = json!(t);
                }
                self.ollama_common(&mut b);
                ("/api/generate", b)
            }
            (Kind::OpenAi, PromptSpec::Completion { prompt, raw: true, .. }) => {
                let mut b = json!({"model": target.model, "stream": true, "prompt": prompt,
                    "stream_options": {"include_usage": true}});
                openai_sampling(&mut b, &self.options);
                ("/v1/completions", b)
            }
            (Kind::OpenAi, spec) => {
                let (messages, tools) = match spec {
                    PromptSpec::Chat { messages, tools, .. } => {
                        (chat_messages(target, messages.clone()), tools.clone())
                    }
                    PromptSpec::Completion { prompt, system, .. } => {
                        let mut m = Vec::new();
                        if let Some(s) = system.clone().or_else(|| target.system.clone()) {
                            m.push(Message::new("system", s));
                        }
                        m.extend(target.messages.iter().cloned());
                        m.push(Message::new("user", prompt.clone()));
                        (m, None)
                    }
                };
                let mut b = json!({"model": target.model, "stream": true,
                    "messages": openai_messages(&messages),
                    "stream_options": {"include_usage": true}});
                if let Some(t) = tools.filter(|t| !t.is_empty()) {
                    b["tools"] = json!(t);
                }
                if let Some(f) = self.format.as_ref().and_then(response_format) {
                    b["response_format"] = f;
                }
                openai_sampling(&mut b, &self.options);
                ("/v1/chat/completions", b)
            }
        }
    }

    fn ollama_common(&self, b: &mut Value) {
        if !self.options.is_empty() {
            b["options"] = Value::Object(self.options.clone());
        }
        if let Some(f) = &self.format {
            b["format"] = f.clone();
        }
        if let Some(t) = self.think {
            b["think"] = t.to_ollama_json();
        }
        if let Some(k) = &self.keep_alive {
            b["keep_alive"] = k.clone();
        }
    }
}

/// Starts a generation on a remote model: the answer comes as [`Piece`]s on the
/// receiver; dropping it cancels the remote request.
pub async fn start(
    remotes: &Remotes,
    target: Target,
    req: GenRequest,
) -> Result<UnboundedReceiver<Piece>, ApiError> {
    let ask = Ask {
        format: req.grammar.as_ref().map(|g| g.format().clone()).filter(|f| !f.is_null()),
        options: merged_options(&target, req.options.as_ref()),
        think: req.think,
        keep_alive: keep_alive_json(req.keep_alive),
        spec: req.prompt,
    };
    if let PromptSpec::Completion { context, template, raw, .. } = &ask.spec
        && target.servers.iter().any(|s| s.kind == Kind::OpenAi)
    {
        if !context.is_empty() {
            return Err(ApiError::bad_request(format!(
                "\"{}\" is served by an OpenAI-kind remote, which takes no context tokens",
                target.name
            )));
        }
        if template.is_some() && !raw {
            return Err(ApiError::bad_request(format!(
                "\"{}\" is served by an OpenAI-kind remote, which takes no template",
                target.name
            )));
        }
    }
    let started = Instant::now();
    let (resp, in_flight) = send(
        &remotes.client,
        &target,
        |kind| ask.request(&target, kind).0,
        |kind| ask.request(&target, kind).1,
    )
    .await?;
    // The request's own cap on tokens, enforced here too: a remote may not honour it.
    let limit = ask
        .options
        .get("num_predict")
        .and_then(Value::as_i64)
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| n > 0);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let server = in_flight.0.clone();
    tokio::spawn(async move {
        let _in_flight = in_flight;
        let mut lines = Lines::new(resp);
        let mut reader = Reader::new(server.kind, started);
        reader.idle = server.timeout;
        reader.limit = limit;
        let outcome = tokio::select! {
            r = reader.run(&mut lines, &tx) => r,
            () = tx.closed() => Err(Stop::Cancelled),
        };
        match outcome {
            Ok(()) => {}
            Err(Stop::Cancelled) => {
                tracing::info!(remote = %server.remote, server = %server.url,
                    ms = started.elapsed().as_millis() as u64,
                    "client went away: remote request cancelled");
            }
            Err(Stop::Failed(why)) => {
                server.mark(false, Some(why.clone()));
                tracing::warn!(remote = %server.remote, server = %server.url,
                    ms = started.elapsed().as_millis() as u64, "remote stream failed");
                let _ = tx.send(Piece::Error(ApiError {
                    status: StatusCode::BAD_GATEWAY,
                    message: format!("{} stopped answering mid-answer: {why}", server.label()),
                }));
            }
            Err(Stop::TimedOut) => {
                server.mark(
                    false,
                    Some(format!("no piece of an answer within {:?}", server.timeout)),
                );
                tracing::warn!(remote = %server.remote, server = %server.url,
                    ms = started.elapsed().as_millis() as u64, "remote stream timed out");
                let _ = tx.send(Piece::Error(ApiError {
                    status: StatusCode::GATEWAY_TIMEOUT,
                    message: format!(
                        "{} did not go on answering within {} s (its timeout)",
                        server.label(),
                        server.timeout.as_secs()
                    ),
                }));
            }
            Err(Stop::Said(message)) => {
                let _ = tx.send(Piece::Error(ApiError {
                    status: StatusCode::BAD_GATEWAY,
                    message: format!("{}: {}", server.label(), server.excerpt(&message)),
                }));
            }
            Err(Stop::TooLarge) => {
                tracing::warn!(remote = %server.remote, server = %server.url,
                    ms = started.elapsed().as_millis() as u64, "remote answer too large");
                let _ = tx.send(Piece::Error(ApiError {
                    status: StatusCode::BAD_GATEWAY,
                    message: format!(
                        "{} sent an answer longer than {} MiB, more than this server takes \
                         from a remote; ask for fewer tokens (num_predict, max_tokens)",
                        server.label(),
                        MAX_ANSWER >> 20
                    ),
                }));
            }
            // `run` finishes the answer at the limit.
            Err(Stop::Limit) => {}
        }
        tracing::info!(remote = %server.remote, out_bytes = reader.out_bytes,
            tokens = reader.stats.eval_count, ms = started.elapsed().as_millis() as u64,
            "remote stream ended");
    });
    Ok(rx)
}

enum Stop {
    /// The client went away.
    Cancelled,
    /// The connection failed or the stream was cut.
    Failed(String),
    /// No piece of the answer came for the server's `timeout`.
    TimedOut,
    /// The remote reported an error in its stream.
    Said(String),
    /// The answer's text passed [`MAX_ANSWER`].
    TooLarge,
    /// The answer passed the request's `num_predict`: it ends there, as `length`.
    Limit,
}

/// Turns a remote's stream (Ollama's NDJSON or OpenAI's SSE) into pieces.
struct Reader {
    kind: Kind,
    started: Instant,
    first_token: Option<Instant>,
    stats: Stats,
    /// OpenAI tool-call deltas by index: (name, arguments text).
    calls: BTreeMap<u64, (String, String)>,
    done_reason: Option<corral_generation::DoneReason>,
    out_bytes: usize,
    /// How long the stream may go without a piece of the answer.
    idle: Duration,
    /// When the last piece came (or the headers).
    progress: tokio::time::Instant,
    /// The request's `num_predict`.
    limit: Option<usize>,
    /// Lines (events) that brought text: a remote's tokens, near enough.
    tokens: usize,
    /// Whether the line being read brought text.
    line_text: bool,
}

impl Reader {
    fn new(kind: Kind, started: Instant) -> Reader {
        Reader {
            kind,
            started,
            first_token: None,
            stats: Stats::default(),
            calls: BTreeMap::new(),
            done_reason: None,
            out_bytes: 0,
            idle: Duration::from_secs(300),
            progress: tokio::time::Instant::now(),
            limit: None,
            tokens: 0,
            line_text: false,
        }
    }

    fn emit(&mut self, tx: &UnboundedSender<Piece>, p: Piece) -> Result<(), Stop> {
        if let Piece::Text(t) | Piece::Thinking(t) = &p {
            if t.is_empty() {
                return Ok(());
            }
            if self.limit.is_some_and(|n| self.tokens >= n) {
                return Err(Stop::Limit);
            }
            if self.out_bytes + t.len() > MAX_ANSWER {
                return Err(Stop::TooLarge);
            }
            self.out_bytes += t.len();
            self.line_text = true;
            self.first_token.get_or_insert_with(Instant::now);
        }
        self.progress = tokio::time::Instant::now();
        tx.send(p).map_err(|_| Stop::Cancelled)
    }

    /// Reads the stream to its end; at the request's `num_predict` the answer ends
    /// there (done reason `length`) and the rest is not read.
    async fn run(&mut self, lines: &mut Lines, tx: &UnboundedSender<Piece>) -> Result<(), Stop> {
        match self.read(lines, tx).await {
            Err(Stop::Limit) => {
                self.calls.clear();
                self.done_reason = Some(corral_generation::DoneReason::Length);
                self.stats.eval_count = self.stats.eval_count.max(self.tokens);
                self.finish(tx)
            }
            r => r,
        }
    }

    async fn read(&mut self, lines: &mut Lines, tx: &UnboundedSender<Piece>) -> Result<(), Stop> {
        loop {
            if self.line_text {
                self.tokens += 1;
                self.line_text = false;
            }
            let line = lines.next(self.progress + self.idle).await?;
            let Some(line) = line else {
                return Err(Stop::Failed("the stream ended before the answer was complete".into()));
            };
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let json_text = match self.kind {
                Kind::Ollama => line,
                Kind::OpenAi => match line.strip_prefix("data:") {
                    Some(d) => d.trim(),
                    // SSE comments, `event:` and `id:` lines.
                    None => continue,
                },
            };
            if self.kind == Kind::OpenAi && json_text == "[DONE]" {
                return self.finish(tx);
            }
            let v: Value = serde_json::from_str(json_text)
                .map_err(|e| Stop::Failed(format!("sent a line that is not JSON: {e}")))?;
            if let Some(e) = v.get("error") {
                let msg = e
                    .as_str()
                    .map(str::to_string)
                    .or_else(|| e.get("message").and_then(Value::as_str).map(str::to_string))
                    .unwrap_or_else(|| e.to_string());
                return Err(Stop::Said(msg));
            }
            let done = match self.kind {
                Kind::Ollama => self.ollama_line(&v, tx)?,
                Kind::OpenAi => {
                    self.openai_line(&v, tx)?;
                    false
                }
            };
            if done {
                return self.finish(tx);
            }
        }
    }

    /// One NDJSON line of `/api/chat` or `/api/generate`; true at `done`.
    fn ollama_line(&mut self, v: &Value, tx: &UnboundedSender<Piece>) -> Result<bool, Stop> {
        let (text, thinking, calls) = match v.get("message") {
            Some(m) => (m.get("content"), m.get("thinking"), m.get("tool_calls")),
            None => (v.get("response"), v.get("thinking"), None),
        };
        if let Some(t) = thinking.and_then(Value::as_str) {
            self.emit(tx, Piece::Thinking(t.to_string()))?;
        }
        if let Some(t) = text.and_then(Value::as_str) {
            self.emit(tx, Piece::Text(t.to_string()))?;
        }
        if let Some(Value::Array(calls)) = calls {
            let calls: Vec<ToolCall> = calls.iter().filter_map(tool_call_of).collect();
            if !calls.is_empty() {
                self.emit(tx, Piece::ToolCalls(calls))?;
            }
        }
        if v.get("done").and_then(Value::as_bool) != Some(true) {
            return Ok(false);
        }
        let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        self.stats.prompt_tokens = n("prompt_eval_count") as usize;
        self.stats.eval_count = n("eval_count") as usize;
        self.stats.prompt_eval = Duration::from_nanos(n("prompt_eval_duration"));
        self.stats.eval = Duration::from_nanos(n("eval_duration"));
        self.done_reason = Some(match v.get("done_reason").and_then(Value::as_str) {
            Some("length") => corral_generation::DoneReason::Length,
            _ => corral_generation::DoneReason::Stop,
        });
        if let Some(Value::Array(ctx)) = v.get("context") {
            self.stats.tokens = ctx
                .iter()
                .take(1 << 20)
                .filter_map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok()))
                .collect();
        }
        Ok(true)
    }

    /// One SSE event of `/v1/chat/completions` or `/v1/completions`.
    fn openai_line(&mut self, v: &Value, tx: &UnboundedSender<Piece>) -> Result<(), Stop> {
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0) as usize;
            self.stats.prompt_tokens = n("prompt_tokens");
            self.stats.eval_count = n("completion_tokens");
        }
        let Some(choice) = v.get("choices").and_then(Value::as_array).and_then(|c| c.first())
        else {
            return Ok(());
        };
        if let Some(d) = choice.get("delta") {
            for key in ["reasoning_content", "reasoning"] {
                if let Some(t) = d.get(key).and_then(Value::as_str) {
                    self.emit(tx, Piece::Thinking(t.to_string()))?;
                }
            }
            if let Some(t) = d.get("content").and_then(Value::as_str) {
                self.emit(tx, Piece::Text(t.to_string()))?;
            }
            for c in d.get("tool_calls").and_then(Value::as_array).into_iter().flatten().take(256) {
                let index = c.get("index").and_then(Value::as_u64).unwrap_or(0);
                let entry = self.calls.entry(index).or_default();
                if let Some(f) = c.get("function") {
                    if let Some(n) = f.get("name").and_then(Value::as_str) {
                        entry.0.push_str(n);
                    }
                    if let Some(a) = f.get("arguments").and_then(Value::as_str) {
                        if entry.1.len() + a.len() > MAX_LINE {
                            return Err(Stop::Failed("sent tool-call arguments too long".into()));
                        }
                        entry.1.push_str(a);
                        // Arguments streaming in are the answer going on, though nothing is
                        // emitted until the call is whole.
                        if !a.is_empty() {
                            self.progress = tokio::time::Instant::now();
                        }
                    }
                }
            }
        }
        if let Some(t) = choice.get("text").and_then(Value::as_str) {
            self.emit(tx, Piece::Text(t.to_string()))?;
        }
        if let Some(r) = choice.get("finish_reason").and_then(Value::as_str) {
            self.done_reason = Some(match r {
                "length" => corral_generation::DoneReason::Length,
                _ => corral_generation::DoneReason::Stop,
            });
        }
        Ok(())
    }

    fn finish(&mut self, tx: &UnboundedSender<Piece>) -> Result<(), Stop> {
        if !self.calls.is_empty() {
            let calls: Vec<ToolCall> = std::mem::take(&mut self.calls)
                .into_values()
                .filter(|(name, _)| !name.is_empty())
                .map(|(name, args)| ToolCall {
                    name,
                    arguments: serde_json::from_str::<Map<String, Value>>(&args)
                        .unwrap_or_default(),
                })
                .collect();
            if !calls.is_empty() {
                self.emit(tx, Piece::ToolCalls(calls))?;
            }
        }
        let mut stats = std::mem::take(&mut self.stats);
        if stats.eval.is_zero() {
            // An OpenAI-kind remote reports no timings: measured here.
            let first = self.first_token.unwrap_or_else(Instant::now);
            stats.prompt_eval = first.duration_since(self.started);
            stats.eval = first.elapsed();
        }
        stats.done_reason = Some(self.done_reason.unwrap_or(corral_generation::DoneReason::Stop));
        self.emit(tx, Piece::Done(stats))
    }
}

/// A tool call in Ollama's shape (`{"function": {"name", "arguments"}}`).
fn tool_call_of(c: &Value) -> Option<ToolCall> {
    let f = c.get("function")?;
    let name = f.get("name")?.as_str()?.to_string();
    let arguments = match f.get("arguments") {
        Some(Value::Object(m)) => m.clone(),
        Some(Value::String(s)) => serde_json::from_str(s).unwrap_or_default(),
        _ => Map::new(),
    };
    Some(ToolCall { name, arguments })
}

/// Embeds `inputs` on a remote model; returns the vectors and the tokens counted.
pub async fn embed(
    remotes: &Remotes,
    target: &Target,
    inputs: Vec<String>,
    truncate: bool,
) -> Result<(Vec<Vec<f32>>, usize), ApiError> {
    let (resp, in_flight) = send(
        &remotes.client,
        target,
        |kind| match kind {
            Kind::Ollama => "/api/embed",
            Kind::OpenAi => "/v1/embeddings",
        },
        |kind| match kind {
            Kind::Ollama => json!({"model": target.model, "input": inputs, "truncate": truncate}),
            Kind::OpenAi => json!({"model": target.model, "input": inputs}),
        },
    )
    .await?;
    let server = in_flight.0.clone();
    let bad = |why: String| ApiError {
        status: StatusCode::BAD_GATEWAY,
        message: format!("{}: {why}", server.label()),
    };
    let body = in_flight.body(resp, MAX_BODY).await?;
    drop(in_flight);
    let v: Value =
        serde_json::from_slice(&body).map_err(|e| bad(format!("answered no JSON: {e}")))?;
    let floats = |a: &Value| -> Option<Vec<f32>> {
        a.as_array()?.iter().map(|x| x.as_f64().map(|f| f as f32)).collect()
    };
    let (vectors, count) = match server.kind {
        Kind::Ollama => (
            v.get("embeddings")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(floats).collect()),
            v.get("prompt_eval_count").and_then(Value::as_u64).unwrap_or(0) as usize,
        ),
        Kind::OpenAi => (
            v.get("data")
                .and_then(Value::as_array)
                .map(|d| d.iter().filter_map(|e| e.get("embedding").and_then(floats)).collect()),
            v.pointer("/usage/prompt_tokens").and_then(Value::as_u64).unwrap_or(0) as usize,
        ),
    };
    let vectors: Vec<Vec<f32>> = vectors.unwrap_or_default();
    if vectors.len() != inputs.len() {
        return Err(bad(format!(
            "answered {} embeddings for {} inputs",
            vectors.len(),
            inputs.len()
        )));
    }
    Ok((vectors, count))
}

/// The prompt tokens a chat takes on a remote model (Anthropic's `count_tokens`). No API
/// that every kind of server speaks counts tokens, but every one (Ollama, corral,
/// llama-server, vLLM, hosted APIs) serves OpenAI's chat completions and reports the
/// whole prompt in `usage.prompt_tokens`: a one-token completion of the same chat.
pub async fn count_tokens(
    remotes: &Remotes,
    target: &Target,
    messages: Vec<Message>,
    tools: Option<Vec<Value>>,
) -> Result<usize, ApiError> {
    let mut body = json!({"model": target.model, "stream": false, "max_tokens": 1,
        "messages": openai_messages(&chat_messages(target, messages))});
    if let Some(t) = tools.filter(|t| !t.is_empty()) {
        body["tools"] = json!(t);
    }
    let (resp, in_flight) =
        send(&remotes.client, target, |_| "/v1/chat/completions", |_| body.clone()).await?;
    let bad = |why: String| ApiError {
        status: StatusCode::BAD_GATEWAY,
        message: format!("{}: {why}", in_flight.0.label()),
    };
    let bytes = in_flight.body(resp, MAX_BODY).await?;
    let v: Value =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("answered no JSON: {e}")))?;
    v.pointer("/usage/prompt_tokens")
        .and_then(Value::as_u64)
        .map(|n| n as usize)
        .ok_or_else(|| bad("reported no usage.prompt_tokens to count the tokens with".into()))
}

/// `/api/show` of a remote model: what the remote reports, marked remote.
pub async fn show(remotes: &Remotes, target: &Target) -> Result<Value, ApiError> {
    let mut v = match order(&target.servers).first().map(|s| s.kind) {
        Some(Kind::Ollama) => {
            let (resp, in_flight) =
                send(&remotes.client, target, |_| "/api/show", |_| json!({"model": target.model}))
                    .await?;
            let body = in_flight.body(resp, MAX_BODY).await?;
            serde_json::from_slice::<Value>(&body).unwrap_or_else(|_| json!({}))
        }
        _ => {
            json!({"details": {"format": "remote"}, "model_info": {}, "capabilities": ["completion"]})
        }
    };
    if let Some(o) = v.as_object_mut() {
        o.insert("remote_host".into(), json!(target.remote));
        o.insert("remote_model".into(), json!(target.model));
        o.insert(
            "modelfile".into(),
            json!(format!("FROM {}\nREMOTE {}\n", target.model, target.remote)),
        );
    }
    Ok(v)
}

impl Remotes {
    /// The API (`ollama`, `openai`) of the remote a stored remote model names, if configured.
    pub fn kind_of(&self, host: &str) -> Option<&'static str> {
        self.servers_of(host).and_then(|s| s.first().map(|s| s.kind.as_str()))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn logit_bias_goes_to_an_openai_remote_in_openais_shape() {
        let mut body = serde_json::json!({});
        let o = serde_json::json!({"logit_bias": [[15, false], [7, 2.5]]});
        super::openai_sampling(&mut body, o.as_object().unwrap());
        assert_eq!(body["logit_bias"], serde_json::json!({"15": -100.0, "7": 2.5}));
        let mut body = serde_json::json!({});
        super::openai_sampling(
            &mut body,
            serde_json::json!({"logit_bias": null}).as_object().unwrap(),
        );
        assert!(body.get("logit_bias").is_none());
    }

    use super::*;

    fn msg(v: Value) -> Message {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn tool_results_answer_calls_in_order_for_openai() {
        let m = vec![
            msg(json!({"role": "user", "content": "weather?"})),
            msg(json!({"role": "assistant", "content": "", "tool_calls": [
                {"function": {"name": "w", "arguments": {"city": "Paris"}}},
                {"function": {"name": "w", "arguments": {"city": "Rome"}}}]})),
            msg(json!({"role": "tool", "content": "sunny"})),
            msg(json!({"role": "tool", "content": "rain"})),
        ];
        let out = openai_messages(&m);
        assert_eq!(out[1]["tool_calls"][0]["id"], "call_1");
        assert_eq!(out[1]["tool_calls"][0]["function"]["arguments"], "{\"city\":\"Paris\"}");
        assert_eq!(out[2]["tool_call_id"], "call_1");
        assert_eq!(out[3]["tool_call_id"], "call_2");
        let o = ollama_messages(&m);
        assert_eq!(o[1]["tool_calls"][1]["function"]["arguments"]["city"], "Rome");
    }

    #[test]
    fn options_map_onto_openai_fields() {
        let mut b = json!({});
        let o: Map<String, Value> = serde_json::from_value(json!({"temperature": 0.2,
            "num_predict": 7, "stop": ["x"], "repeat_penalty": 1.1, "num_ctx": 99}))
        .unwrap();
        openai_sampling(&mut b, &o);
        assert_eq!(
            b,
            json!({"temperature": 0.2, "max_tokens": 7, "stop": ["x"],
            "repetition_penalty": 1.1})
        );
        assert_eq!(response_format(&json!("json")), Some(json!({"type": "json_object"})));
    }

    #[test]
    fn openai_stream_pieces_accumulate_tool_calls() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut r = Reader::new(Kind::OpenAi, Instant::now());
        for line in [
            json!({"choices": [{"delta": {"content": "Hi"}}]}),
            json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "x",
                "function": {"name": "get", "arguments": "{\"a\":"}}]}}]}),
            json!({"choices": [{"delta": {"tool_calls": [{"index": 0,
                "function": {"arguments": "1}"}}]}, "finish_reason": "tool_calls"}]}),
            json!({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3}}),
        ] {
            r.openai_line(&line, &tx).ok().unwrap();
        }
        r.finish(&tx).ok().unwrap();
        assert!(matches!(rx.try_recv(), Ok(Piece::Text(t)) if t == "Hi"));
        match rx.try_recv() {
            Ok(Piece::ToolCalls(c)) => {
                assert_eq!(c[0].name, "get");
                assert_eq!(c[0].arguments["a"], 1);
            }
            _ => panic!("no tool calls"),
        }
        match rx.try_recv() {
            Ok(Piece::Done(s)) => assert_eq!((s.prompt_tokens, s.eval_count), (5, 3)),
            _ => panic!("no end"),
        }
    }

    #[test]
    fn a_remotes_text_reaches_clients_as_a_short_line_without_credentials() {
        let key = "sk-live-0123456789abcdef";
        let said = format!(
            "bad key: Bearer {key}\nAuthorization: Basic dXNlcjpwYXNzd29yZA==\n\
             {{\"x-api-key\": \"abcdefgh12345678\", \"api_key\":\"zyxwvuts98765432\"}}\n\
             your key {key} was refused; token 256 is out of range; Basic realm"
        );
        let e = excerpt(&said, Some(key));
        for secret in [key, "dXNlcjpwYXNzd29yZA", "abcdefgh12345678", "zyxwvuts98765432"] {
            assert!(!e.contains(secret), "{secret} in {e}");
        }
        assert!(!e.contains('\n'), "{e}");
        // Ordinary words stay.
        assert!(e.contains("token 256 is out of range") && e.contains("Basic realm"), "{e}");
        assert!(e.starts_with("bad key: Bearer [redacted] Authorization: Basic [redacted]"), "{e}");
        // A key with no marker around it is cut too, and the excerpt is bounded.
        let long = format!("{}{key}", "é".repeat(5000));
        let e = excerpt(&long, Some(key));
        assert!(e.chars().count() <= MAX_EXCERPT + 1 && !e.contains("sk-live"), "{e}");
        assert_eq!(excerpt("plain\r\n\t text  here", None), "plain text here");
    }

    #[test]
    fn a_stream_past_num_predict_ends_as_length() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut r = Reader::new(Kind::Ollama, Instant::now());
        r.limit = Some(2);
        let line = json!({"message": {"content": "tok "}, "done": false});
        let mut outcome = Ok(false);
        for _ in 0..5 {
            // What `read` does between lines.
            if r.line_text {
                r.tokens += 1;
                r.line_text = false;
            }
            outcome = r.ollama_line(&line, &tx);
            if outcome.is_err() {
                break;
            }
        }
        assert!(matches!(outcome, Err(Stop::Limit)));
        assert_eq!(r.tokens, 2);
        let mut text = String::new();
        while let Ok(Piece::Text(t)) = rx.try_recv() {
            text.push_str(&t);
        }
        assert_eq!(text, "tok tok ");
        // Too much text in all is refused, whatever the limit.
        let mut r = Reader::new(Kind::Ollama, Instant::now());
        let big = json!({"message": {"content": "x".repeat(MAX_ANSWER / 2 + 1)}, "done": false});
        assert!(r.ollama_line(&big, &tx).is_ok());
        assert!(matches!(r.ollama_line(&big, &tx), Err(Stop::TooLarge)));
    }

    #[test]
    fn config_is_checked() {
        let cfg = |t: &str| Config::parse(t, std::path::Path::new("c.toml")).unwrap();
        assert!(
            Remotes::from_config(&cfg("[remotes.a]\nkind = \"grpc\"\nurl = \"http://h\"\n"))
                .is_err()
        );
        assert!(Remotes::from_config(&cfg("[remotes.a]\nkind = \"ollama\"\n")).is_err());
        assert!(Remotes::from_config(&cfg("[remotes.a]\nurl = \"ftp://h\"\n")).is_err());
        assert!(Remotes::from_config(&cfg("[remotes.a]\nurl = \"http://u:p@h\"\n")).is_err());
        // A refused URL is printed with its password masked.
        for url in ["http://alice:S3cretPass@h:1", "http://alice:S3cretPass@h:bad"] {
            let e = Remotes::from_config(&cfg(&format!("[remotes.a]\nurl = \"{url}\"\n")))
                .err()
                .unwrap()
                .to_string();
            assert!(!e.contains("S3cretPass") && e.contains("***"), "{e}");
        }
        let r = Remotes::from_config(&cfg(
            "[remotes.a]\nkind = \"openai\"\nurl = \"http://h:8080/v1/\"\ndefault = true\n",
        ))
        .unwrap();
        assert_eq!(r.pools["a"][0].endpoint("/v1/models").as_str(), "http://h:8080/v1/models");
        assert_eq!(r.defaults, vec!["a".to_string()]);
    }
}
