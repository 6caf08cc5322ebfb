//! Pull and push over the OCI distribution protocol (reqwest + tokio).
//!
//! - Manifests: `GET/PUT /v2/<namespace>/<model>/manifests/<tag>`, at most
//!   [`MAX_MANIFEST_BYTES`](crate::store::MAX_MANIFEST_BYTES).
//! - Pull ([`Client::pull`]): every blob is fetched with `Range` requests in up to
//!   [`ClientOptions::parallel`] parts at once, written at its offset into a partial file
//!   in the store's temp area, and hashed (sha256) in order by a separate thread while the
//!   parts arrive. A stalled or broken part is retried from where it stopped, with
//!   exponential backoff. The progress of each part is saved beside the partial file, so
//!   an interrupted pull (cancelled, killed, network gone) resumes where it stopped. The
//!   blob becomes visible only after its digest matched; a mismatch deletes the partial
//!   file. The manifest is written last, byte for byte as the registry sent it.
//! - Push ([`Client::push`]): `HEAD` each blob, try a cross-repository mount from another
//!   repository of the same registry that holds it, else upload it in chunks (`POST`, then
//!   `PATCH` per chunk, then `PUT ?digest=`), and put the manifest last.
//! - Auth: a `401` answer's `WWW-Authenticate` challenge is followed: `Bearer` fetches a
//!   token from the realm (with basic credentials if there are any for the registry) and
//!   retries; `Basic` retries with the credentials of the [credentials file](Credentials).
//! - Bounds: manifests, token answers and error bodies are read with size limits, at most
//!   [`ClientOptions::max_redirects`] redirects are followed, blobs are never read past
//!   their announced size, and no content encoding is negotiated (reqwest is built without
//!   gzip/brotli/deflate), so no decompression bomb can be served.
//! - Several pulls of the same model at once are safe: a blob is downloaded under a lock
//!   file (`corral-tmp/sha256-<hex>.lock`); the others wait and then find it present.
//! - A pull pins every blob its manifest names (see [`crate::store::gc`]) before it checks
//!   for them, so `rm` or `prune` of another model cannot delete them before the manifest
//!   is written.
//! - Limits on what a registry can make us do: a layer larger than
//!   [`ClientOptions::max_blob_size`] (`CORRAL_MAX_BLOB_SIZE`, 256 GiB by default) is
//!   refused before any byte is written; every request has a connect timeout and a read
//!   timeout, the token request a total timeout; plain HTTP is spoken only with
//!   [`ClientOptions::insecure`]; a token realm or a redirect must use https (or http when
//!   insecure) and may not point at a loopback, link-local or unspecified address unless
//!   the registry itself is on one (see [`check_target`]).

mod pull;
mod push;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::name::ModelName;

pub use pull::PullOutcome;
pub use push::PushOutcome;

/// A progress event, as Ollama's `/api/pull` and `/api/push` stream them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// `pulling manifest`, `pulling <hex12>`, `verifying sha256 digest`, `writing
    /// manifest`, `pushing <hex12>`, `success`, ...
    pub status: String,
    /// The blob concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The blob's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// Bytes of it done so far (including what was present before a resume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<u64>,
}

impl Progress {
    pub(crate) fn status(s: impl Into<String>) -> Progress {
        Progress { status: s.into(), digest: None, total: None, completed: None }
    }
}

/// The progress callback: called from the pulling task, must be cheap.
pub type ProgressFn<'a> = &'a (dyn Fn(&Progress) + Send + Sync);

/// The environment variable that sets [`ClientOptions::max_blob_size`] (bytes, or with a
/// `K`, `M`, `G` or `T` suffix in powers of 1024, e.g. `300G`).
pub const MAX_BLOB_SIZE_ENV: &str = "CORRAL_MAX_BLOB_SIZE";

/// The default [`ClientOptions::max_blob_size`]: 256 GiB.
pub const DEFAULT_MAX_BLOB_SIZE: u64 = 256 << 30;

/// Parses a size: bytes, or a number with a `K`, `M`, `G` or `T` suffix (powers of 1024;
/// `KiB`, `KB` and the like are accepted too).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(digits);
    let n: u64 = n.parse().ok()?;
    let shift = match unit.trim().to_ascii_lowercase().trim_end_matches('b').trim_end_matches('i') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

fn max_blob_size_from_env() -> u64 {
    match std::env::var(MAX_BLOB_SIZE_ENV) {
        Ok(v) if !v.trim().is_empty() => parse_size(&v).unwrap_or_else(|| {
            tracing::warn!(
                "{MAX_BLOB_SIZE_ENV}={v:?} is not a size (e.g. 300G); using {DEFAULT_MAX_BLOB_SIZE}"
            );
            DEFAULT_MAX_BLOB_SIZE
        }),
        _ => DEFAULT_MAX_BLOB_SIZE,
    }
}

/// The default [`ClientOptions::min_speed`]: 8 KiB/s (averaged over
/// [`DEFAULT_SPEED_WINDOW`]). Below any link a model can usefully be pulled over (a 4 GB
/// model at 8 KiB/s takes six days), far above a registry dribbling bytes to hold a
/// download open.
pub const DEFAULT_MIN_SPEED: u64 = 8 << 10;

/// The default [`ClientOptions::speed_window`]: 120 s (so one stall of 30 s and a few
/// retries with backoff fit in a window without failing it).
pub const DEFAULT_SPEED_WINDOW: Duration = Duration::from_secs(120);

/// Options of a [`Client`].
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Use plain HTTP (for local registries such as `localhost:5000`).
    pub insecure: bool,
    /// The credentials file; `None` reads [`Credentials::default_path`] if it exists.
    pub credentials_file: Option<PathBuf>,
    /// Parts fetched in parallel per blob.
    pub parallel: usize,
    /// A blob is split into parts of at least this size.
    pub min_part_size: u64,
    /// A body that delivers nothing for this long is abandoned and retried.
    pub stall_timeout: Duration,
    /// Retries of one part (or request) without progress before giving up.
    pub max_retries: u32,
    /// First backoff delay; doubled at every retry, capped at 10 s.
    pub retry_backoff: Duration,
    /// Connect timeout of every request.
    pub connect_timeout: Duration,
    /// Read timeout of every request: the longest wait for an answer's headers, and for
    /// each read of its body (uploads get this plus time for their body at 256 KiB/s).
    pub read_timeout: Duration,
    /// Total timeout of a bearer-token request (a `WWW-Authenticate` realm).
    pub token_timeout: Duration,
    /// The largest blob a pull accepts: a manifest that declares a larger layer is refused
    /// before anything is written. Default: `CORRAL_MAX_BLOB_SIZE`, else 256 GiB.
    pub max_blob_size: u64,
    /// Redirects followed at most.
    pub max_redirects: usize,
    /// Chunk size of uploads.
    pub upload_chunk_size: u64,
    /// The slowest a blob download may be: if, over any [`ClientOptions::speed_window`],
    /// a blob receives less than `min_speed` bytes per second (and less than what it
    /// still lacked), the download is abandoned as an upstream failure (its partial file
    /// is kept for a later pull to resume). Without it a registry that sends one byte
    /// every few seconds never trips the [`stall_timeout`](ClientOptions::stall_timeout)
    /// and holds a download (a hashing thread, file descriptors, the blob's lock) for
    /// ever. Default: [`DEFAULT_MIN_SPEED`] (8 KiB/s) over [`DEFAULT_SPEED_WINDOW`] (120 s);
    /// 0 disables the check.
    pub min_speed: u64,
    /// The window over which [`ClientOptions::min_speed`] is measured. Default: 120 s.
    pub speed_window: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            insecure: false,
            credentials_file: None,
            parallel: 4,
            min_part_size: 32 << 20,
            stall_timeout: Duration::from_secs(30),
            max_retries: 5,
            retry_backoff: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            token_timeout: Duration::from_secs(30),
            max_blob_size: max_blob_size_from_env(),
            max_redirects: 10,
            upload_chunk_size: 64 << 20,
            min_speed: DEFAULT_MIN_SPEED,
            speed_window: DEFAULT_SPEED_WINDOW,
        }
    }
}

/// Registry credentials, read from a JSON file.
///
/// Location: `$CORRAL_REGISTRY_AUTH`, else `<config dir>/corral/registries.json`
/// (`~/.config/corral/registries.json` on Linux). Format (Docker's `config.json` form is
/// accepted too, so `~/.docker/config.json` can be pointed at):
///
/// ```json
/// {
///   "registries": { "localhost:5000": { "username": "me", "password": "secret" } },
///   "auths": { "ghcr.io": { "auth": "<base64 of user:password>" } }
/// }
/// ```
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    by_host: HashMap<String, (String, String)>,
}

#[derive(Deserialize)]
struct CredFile {
    #[serde(default)]
    registries: HashMap<String, UserPass>,
    #[serde(default)]
    auths: HashMap<String, DockerAuth>,
}
#[derive(Deserialize)]
struct UserPass {
    username: String,
    password: String,
}
#[derive(Deserialize)]
struct DockerAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

impl Credentials {
    /// `$CORRAL_REGISTRY_AUTH`, else `<config dir>/corral/registries.json`.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("CORRAL_REGISTRY_AUTH").filter(|p| !p.is_empty()) {
            return Some(PathBuf::from(p));
        }
        dirs::config_dir().map(|d| d.join("corral").join("registries.json"))
    }

    /// Reads a credentials file (at most 1 MiB).
    pub fn load(path: &std::path::Path) -> Result<Credentials> {
        use base64::Engine as _;
        let bytes = crate::store::read_bounded(path, 1 << 20)?;
        let f: CredFile = serde_json::from_slice(&bytes).map_err(|e| {
            Error::io("parsing credentials file", path, std::io::Error::other(e.to_string()))
        })?;
        let mut by_host = HashMap::new();
        for (h, up) in f.auths {
            let pair = match (up.auth, up.username, up.password) {
                (_, Some(u), Some(p)) => Some((u, p)),
                (Some(a), _, _) => base64::engine::general_purpose::STANDARD
                    .decode(a.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .and_then(|s| s.split_once(':').map(|(u, p)| (u.to_string(), p.to_string()))),
                _ => None,
            };
            if let Some(pair) = pair {
                by_host.insert(strip_scheme(&h), pair);
            }
        }
        for (h, up) in f.registries {
            by_host.insert(strip_scheme(&h), (up.username, up.password));
        }
        Ok(Credentials { by_host })
    }

    /// Credentials from explicit pairs (host → (user, password)).
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String, String)>) -> Credentials {
        Credentials { by_host: pairs.into_iter().map(|(h, u, p)| (h, (u, p))).collect() }
    }

    fn get(&self, host: &str) -> Option<&(String, String)> {
        self.by_host.get(host)
    }
}

fn strip_scheme(h: &str) -> String {
    let h = h.trim_start_matches("https://").trim_start_matches("http://");
    h.split('/').next().unwrap_or(h).to_string()
}

#[derive(Clone, Debug)]
enum AuthState {
    Bearer(String),
    Basic,
}

/// An OCI registry client. One per process is enough; it is `Sync`.
pub struct Client {
    http: reqwest::Client,
    /// For uploads: no read timeout (the answer comes after the body is sent), a total
    /// timeout per request instead.
    upload_http: reqwest::Client,
    opts: ClientOptions,
    creds: Credentials,
    auth: Mutex<HashMap<String, AuthState>>,
}

/// Who a request is for: used in errors and for auth.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub(crate) host: String,
    pub(crate) model: String,
    pub(crate) repo: String,
    pub(crate) push: bool,
}

impl Ctx {
    pub(crate) fn new(name: &ModelName, push: bool) -> Ctx {
        Ctx {
            host: name.host().to_string(),
            model: name.fully_qualified(),
            repo: name.repository(),
            push,
        }
    }
    pub(crate) fn err(&self, message: impl Into<String>) -> Error {
        Error::Registry {
            registry: self.host.clone(),
            model: self.model.clone(),
            message: message.into(),
        }
    }
}

/// A readable description of a reqwest error, with its causes.
pub(crate) fn describe(e: &reqwest::Error) -> String {
    let mut s = if e.is_redirect() {
        "redirect refused".to_string()
    } else if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "could not connect".to_string()
    } else {
        e.to_string()
    };
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

impl Client {
    /// A client with these options. Reads the credentials file if there is one.
    pub fn new(opts: ClientOptions) -> Result<Client> {
        let creds = match opts.credentials_file.clone().or_else(Credentials::default_path) {
            Some(p) if p.is_file() => Credentials::load(&p)?,
            Some(p) if opts.credentials_file.is_some() => {
                return Err(Error::io(
                    "reading credentials file",
                    p,
                    std::io::Error::new(std::io::ErrorKind::NotFound, "not found"),
                ));
            }
            _ => Credentials::default(),
        };
        Self::with_credentials(opts, creds)
    }

    /// A client with explicit credentials.
    pub fn with_credentials(opts: ClientOptions, creds: Credentials) -> Result<Client> {
        let builder = || {
            reqwest::Client::builder()
                .user_agent(concat!("corral/", env!("CARGO_PKG_VERSION")))
                .redirect(redirect_policy(opts.max_redirects, opts.insecure))
                .connect_timeout(opts.connect_timeout)
                .tcp_nodelay(true)
        };
        let fail = |e: reqwest::Error| Error::Registry {
            registry: String::new(),
            model: String::new(),
            message: format!("building the HTTP client: {}", describe(&e)),
        };
        let builder = || with_env_proxies(builder());
        let http = builder().read_timeout(opts.read_timeout).build().map_err(fail)?;
        let upload_http = builder().build().map_err(fail)?;
        Ok(Client { http, upload_http, opts, creds, auth: Mutex::new(HashMap::new()) })
    }

    /// The total timeout of an upload request carrying `body_len` bytes: the read timeout
    /// plus the time to send the body at 256 KiB/s.
    pub(crate) fn upload_timeout(&self, body_len: u64) -> Duration {
        self.opts.read_timeout.saturating_add(Duration::from_secs(body_len / (256 << 10)))
    }

    /// [`describe`], plus a hint when a TLS handshake met plain HTTP (rustls reports it
    /// as "received corrupt message of type InvalidContentType", which says nothing to a
    /// person): the registry speaks plain HTTP and the client must be told to.
    pub(crate) fn describe(&self, e: &reqwest::Error) -> String {
        let s = describe(e);
        if !self.opts.insecure
            && (s.contains("InvalidContentType") || s.contains("corrupt message"))
        {
            format!(
                "{s} (the registry seems to speak plain HTTP, not HTTPS: pull or push with \
                 --insecure, or \"insecure\": true in /api/pull and /api/push)"
            )
        } else {
            s
        }
    }

    /// The options in use.
    pub fn options(&self) -> &ClientOptions {
        &self.opts
    }

    pub(crate) fn url(&self, ctx: &Ctx, rest: &str) -> String {
        let scheme = if self.opts.insecure { "http" } else { "https" };
        format!("{scheme}://{}/v2/{}/{rest}", ctx.host, ctx.repo)
    }

    /// The registry's base URL, `http(s)://<host>/`.
    fn registry_base(&self, ctx: &Ctx) -> Result<reqwest::Url> {
        let scheme = if self.opts.insecure { "http" } else { "https" };
        reqwest::Url::parse(&format!("{scheme}://{}/", ctx.host))
            .map_err(|e| ctx.err(format!("bad registry URL: {e}")))
    }

    /// Resolves a `Location` header (an upload URL) against the registry's base URL, and
    /// checks it with [`check_target`] as redirects and token realms are: a registry on
    /// the internet cannot steer a push (and its bytes) to our loopback or a metadata
    /// endpoint. (The registry's credentials go only to the registry's own host: see
    /// [`Client::send`].)
    pub(crate) fn resolve_location(&self, ctx: &Ctx, loc: &str) -> Result<String> {
        let url = self
            .registry_base(ctx)?
            .join(loc)
            .map_err(|e| ctx.err(format!("bad Location {loc:?}: {e}")))?;
        check_target(&ctx.host, &url, self.opts.insecure)
            .map_err(|m| ctx.err(format!("refusing the upload Location {loc:?}: {m}")))?;
        Ok(url.to_string())
    }

    /// Whether `url` is on the registry itself (same host and port), the only place its
    /// credentials and tokens may be sent.
    fn is_registry_url(&self, ctx: &Ctx, url: &reqwest::Url) -> bool {
        self.registry_base(ctx).is_ok_and(|b| {
            b.host_str() == url.host_str()
                && b.port_or_known_default() == url.port_or_known_default()
        })
    }

    fn apply_auth(&self, host: &str, rb: RequestBuilder) -> RequestBuilder {
        let state = self.auth.lock().ok().and_then(|m| m.get(host).cloned());
        match state {
            Some(AuthState::Bearer(t)) => rb.bearer_auth(t),
            Some(AuthState::Basic) => match self.creds.get(host) {
                Some((u, p)) => rb.basic_auth(u, Some(p)),
                None => rb,
            },
            None => rb,
        }
    }

    /// Sends a request built by `build`, following one auth challenge. The registry's
    /// credentials (basic or a bearer token) are attached only when the request goes to
    /// the registry's own host and port: an upload `Location` may name another host (a
    /// storage back end), which must not receive them.
    pub(crate) async fn send(
        &self,
        ctx: &Ctx,
        what: &str,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Response> {
        self.send_on(&self.http, ctx, what, build).await
    }

    /// [`Client::send`] on the upload client (no read timeout: `build` sets a total one,
    /// see [`Client::upload_timeout`]).
    pub(crate) async fn send_upload(
        &self,
        ctx: &Ctx,
        what: &str,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Response> {
        self.send_on(&self.upload_http, ctx, what, build).await
    }

    async fn send_on(
        &self,
        http: &reqwest::Client,
        ctx: &Ctx,
        what: &str,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Response> {
        let mut challenged = false;
        loop {
            let fail = |e: reqwest::Error| ctx.err(format!("{what}: {}", self.describe(&e)));
            let req = build(http).build().map_err(fail)?;
            let own = self.is_registry_url(ctx, req.url());
            let rb = RequestBuilder::from_parts(http.clone(), req);
            let rb = if own { self.apply_auth(&ctx.host, rb) } else { rb };
            let resp = rb.send().await.map_err(fail)?;
            if resp.status() == StatusCode::UNAUTHORIZED && !challenged {
                challenged = true;
                let header = resp
                    .headers()
                    .get(reqwest::header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                match header {
                    Some(h) => self.answer_challenge(ctx, &h).await?,
                    None => {
                        return Err(
                            ctx.err(format!("{what}: 401 Unauthorized without a challenge"))
                        );
                    }
                }
                continue;
            }
            if resp.status() == StatusCode::UNAUTHORIZED || resp.status() == StatusCode::FORBIDDEN {
                let hint = match Credentials::default_path() {
                    Some(p) => format!("; add credentials for {} to {}", ctx.host, p.display()),
                    None => String::new(),
                };
                return Err(ctx.err(format!("{what}: {} (access denied){hint}", resp.status())));
            }
            return Ok(resp);
        }
    }

    async fn answer_challenge(&self, ctx: &Ctx, header: &str) -> Result<()> {
        let (scheme, params) = parse_challenge(header);
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => {
                if self.creds.get(&ctx.host).is_none() {
                    let p = Credentials::default_path()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default();
                    return Err(ctx.err(format!(
                        "the registry asks for a user name and password; add them for {} to {p}",
                        ctx.host
                    )));
                }
                self.set_auth(&ctx.host, AuthState::Basic);
                Ok(())
            }
            "bearer" => {
                let realm = params
                    .get("realm")
                    .ok_or_else(|| ctx.err("Bearer challenge without a realm"))?;
                let mut url = reqwest::Url::parse(realm)
                    .map_err(|e| ctx.err(format!("bad token realm {realm:?}: {e}")))?;
                check_realm(&ctx.host, &url, self.opts.insecure)
                    .await
                    .map_err(|m| ctx.err(format!("refusing the token realm {realm:?}: {m}")))?;
                let default_scope = format!(
                    "repository:{}:{}",
                    ctx.repo,
                    if ctx.push { "pull,push" } else { "pull" }
                );
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(s) = params.get("service") {
                        q.append_pair("service", s);
                    }
                    q.append_pair(
                        "scope",
                        params.get("scope").map_or(&default_scope, String::as_str),
                    );
                }
                let mut rb = self.http.get(url.clone()).timeout(self.opts.token_timeout);
                if let Some((u, p)) = self.creds.get(&ctx.host) {
                    rb = rb.basic_auth(u, Some(p));
                }
                let resp = rb.send().await.map_err(|e| {
                    ctx.err(format!("fetching a token from {realm}: {}", self.describe(&e)))
                })?;
                if !resp.status().is_success() {
                    return Err(
                        ctx.err(format!("fetching a token from {realm}: {}", resp.status()))
                    );
                }
                let body = read_limited(resp, 1 << 20)
                    .await
                    .map_err(|m| ctx.err(format!("fetching a token from {realm}: {m}")))?;
                #[derive(Deserialize)]
                struct Tok {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let t: Tok = serde_json::from_slice(&body)
                    .map_err(|e| ctx.err(format!("token answer from {realm}: {e}")))?;
                let token = t
                    .token
                    .or(t.access_token)
                    .ok_or_else(|| ctx.err(format!("token answer from {realm} holds no token")))?;
                self.set_auth(&ctx.host, AuthState::Bearer(token));
                Ok(())
            }
            _ => Err(ctx.err(format!("unsupported authentication scheme {scheme:?}"))),
        }
    }

    fn set_auth(&self, host: &str, s: AuthState) {
        if let Ok(mut m) = self.auth.lock() {
            m.insert(host.to_string(), s);
        }
    }

    /// Fetches a manifest: (parsed, raw bytes, digest of the bytes).
    pub async fn fetch_manifest(
        &self,
        name: &ModelName,
    ) -> Result<(crate::Manifest, Vec<u8>, crate::Digest)> {
        let ctx = Ctx::new(name, false);
        self.fetch_manifest_ctx(&ctx, name).await
    }

    pub(crate) async fn fetch_manifest_ctx(
        &self,
        ctx: &Ctx,
        name: &ModelName,
    ) -> Result<(crate::Manifest, Vec<u8>, crate::Digest)> {
        let reference = match name.digest() {
            Some(d) => d.to_string(),
            None => name.tag().to_string(),
        };
        let url = self.url(ctx, &format!("manifests/{reference}"));
        let accept = format!(
            "{}, {}",
            crate::manifest::MEDIA_TYPE_MANIFEST,
            crate::manifest::MEDIA_TYPE_OCI_MANIFEST
        );
        let resp = self
            .send(ctx, "fetching the manifest", |c| {
                c.request(Method::GET, &url)
                    .header(reqwest::header::ACCEPT, &accept)
                    .timeout(Duration::from_secs(120))
            })
            .await?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return Err(Error::RegistryModelNotFound {
                registry: ctx.host.clone(),
                model: ctx.model.clone(),
            });
        }
        if !status.is_success() {
            let body = error_body(resp).await;
            return Err(ctx.err(format!("fetching the manifest: {status}{body}")));
        }
        let max = crate::store::MAX_MANIFEST_BYTES;
        let bytes = read_limited(resp, max)
            .await
            .map_err(|m| ctx.err(format!("reading the manifest: {m}")))?;
        let digest = crate::Digest::of_bytes(&bytes);
        // The registry sent other bytes than the digest asked for: its fault (upstream),
        // not the request's.
        if let Some(want) = name.digest()
            && *want != digest
        {
            return Err(ctx.err(format!(
                "the manifest the registry sent does not match the digest asked for: \
                 expected {want}, got {digest}"
            )));
        }
        let m: crate::Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| ctx.err(format!("the manifest is not valid: {e}")))?;
        if m.layers.len() > 10_000 {
            return Err(ctx.err("the manifest lists more than 10000 layers"));
        }
        Ok((m, bytes, digest))
    }
}

/// Whether `host` (a host name or an IP address, IPv6 in brackets or not) names this
/// machine: `localhost` (and its subdomains) or a loopback IP address. No request to such a
/// host goes through a proxy (`HTTP_PROXY`, ...: a proxy cannot reach this machine's
/// loopback, and Go's clients, Ollama's among them, make the same exception): the registry
/// client's ([`LOOPBACK_NO_PROXY`]) and `corral`'s client of a `corral serve`.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        // An IPv4-mapped loopback (`::ffff:127.0.0.1`) too, as Go counts it.
        Ok(std::net::IpAddr::V6(v6)) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Ok(ip) => ip.is_loopback(),
        Err(_) => {
            let name = host.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
    }
}

/// [`is_loopback_host`] for a URL (`false` when it is not one).
pub fn is_loopback_url(url: &str) -> bool {
    reqwest::Url::parse(url).ok().and_then(|u| u.host_str().map(is_loopback_host)).unwrap_or(false)
}

/// The hosts of [`is_loopback_host`] as `NO_PROXY` entries (a name matches itself and its
/// subdomains, an address block its addresses). The registry client talks to many hosts
/// (token realms, storage redirects), so the exception is made per request by the proxies'
/// exclusion list: reqwest 0.12's per-URL proxy (`Proxy::custom`) would drop the user's own
/// `NO_PROXY`.
pub const LOOPBACK_NO_PROXY: &str = "localhost,localhost.,127.0.0.0/8,::1,::ffff:127.0.0.0/104";

/// The proxies of the environment as reqwest reads them (`HTTP_PROXY`, `HTTPS_PROXY`,
/// `ALL_PROXY` for what those leave, `NO_PROXY`; upper case first, then lower; none in a
/// CGI program, where `REQUEST_METHOD` is set), with the hosts of [`LOOPBACK_NO_PROXY`]
/// added to the exclusions. `var` reads a variable. A value reqwest cannot use as a proxy
/// is ignored, as reqwest ignores it.
/// `builder` with the environment's proxies, the same reqwest would take, except for this
/// machine ([`is_loopback_host`]), which no proxy can reach: the one proxy rule of every
/// HTTP client corral builds (the registry's, the CLI's talking to a server).
pub fn with_env_proxies(builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
    env_proxies(&|name| std::env::var(name).ok())
        .into_iter()
        .fold(builder.no_proxy(), reqwest::ClientBuilder::proxy)
}

fn env_proxies(var: &dyn Fn(&str) -> Option<String>) -> Vec<reqwest::Proxy> {
    if var("REQUEST_METHOD").is_some() {
        return Vec::new();
    }
    // The first of the names that is set, even when blank (as reqwest reads them).
    let first = |names: [&str; 2]| names.iter().find_map(|n| var(n));
    let given = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
    let all = given(first(["ALL_PROXY", "all_proxy"]));
    let http = given(first(["HTTP_PROXY", "http_proxy"])).or_else(|| all.clone());
    let https = given(first(["HTTPS_PROXY", "https_proxy"])).or(all);
    let user_list = first(["NO_PROXY", "no_proxy"]).unwrap_or_default();
    let except = reqwest::NoProxy::from_string(&format!("{user_list},{LOOPBACK_NO_PROXY}"));
    let mut proxies = Vec::new();
    if let Some(Ok(p)) = http.map(|p| reqwest::Proxy::http(p.trim())) {
        proxies.push(p.no_proxy(except.clone()));
    }
    if let Some(Ok(p)) = https.map(|p| reqwest::Proxy::https(p.trim())) {
        proxies.push(p.no_proxy(except));
    }
    proxies
}

/// Whether `host` (a host name or an IP address, IPv6 in brackets or not) is a loopback,
/// link-local or unspecified address, or `localhost`: the machine's own services and
/// cloud metadata endpoints (169.254.169.254), where a registry must not send us.
pub fn is_local_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    match h.parse::<std::net::IpAddr>() {
        Ok(ip) => is_local_ip(ip),
        Err(_) => {
            let h = h.trim_end_matches('.').to_ascii_lowercase();
            h == "localhost" || h.ends_with(".localhost")
        }
    }
}

fn is_local_ip(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            v4.is_loopback() || v4.is_link_local() || v4.is_unspecified() || v4.octets()[0] == 0
        }
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6.to_ipv4_mapped().is_some_and(|v4| is_local_ip(v4.into()))
        }
    }
}

/// The host part of a registry (`host[:port]`, `[v6]:port`).
fn registry_host_is_local(registry: &str) -> bool {
    reqwest::Url::parse(&format!("http://{registry}/"))
        .ok()
        .and_then(|u| u.host_str().map(is_local_host))
        .unwrap_or(false)
}

/// Checks a URL a registry sends us to (a `WWW-Authenticate` token realm, a redirect):
///
/// - its scheme must be `https`, or `http` when `insecure` (plain HTTP allowed);
/// - its host may not be a loopback, link-local or unspecified address, or `localhost`
///   ([`is_local_host`]), unless the registry itself (`registry`, `host[:port]`) is on
///   one: a registry on the internet cannot make us call the services of our own machine
///   or a cloud metadata endpoint.
///
/// Returns why it is refused.
pub fn check_target(
    registry: &str,
    target: &reqwest::Url,
    insecure: bool,
) -> std::result::Result<(), String> {
    match target.scheme() {
        "https" => {}
        "http" if insecure => {}
        "http" => {
            return Err("plain http is not allowed (the client is not in insecure mode)".into());
        }
        s => return Err(format!("the scheme {s:?} is neither https nor http")),
    }
    let host = target.host_str().unwrap_or("");
    if host.is_empty() {
        return Err("no host".into());
    }
    if is_local_host(host) && !registry_host_is_local(registry) {
        return Err(format!(
            "{host} is a loopback, link-local or unspecified address and the registry \
             {registry} is not"
        ));
    }
    Ok(())
}

/// [`check_target`] for a token realm, plus the same rule for the addresses its host
/// name resolves to now (a check of intent: the request resolves the name again).
async fn check_realm(
    registry: &str,
    realm: &reqwest::Url,
    insecure: bool,
) -> std::result::Result<(), String> {
    check_target(registry, realm, insecure)?;
    let Some(host) = realm.host_str() else { return Ok(()) };
    if registry_host_is_local(registry)
        || host.starts_with('[')
        || host.parse::<std::net::IpAddr>().is_ok()
    {
        return Ok(());
    }
    let port = realm.port_or_known_default().unwrap_or(443);
    let lookup =
        tokio::time::timeout(Duration::from_secs(10), tokio::net::lookup_host((host, port)));
    if let Ok(Ok(addrs)) = lookup.await {
        for a in addrs {
            if is_local_ip(a.ip()) {
                return Err(format!(
                    "{host} resolves to {}, a loopback, link-local or unspecified address, and \
                     the registry {registry} is not on one",
                    a.ip()
                ));
            }
        }
    }
    Ok(())
}

/// Follows at most `max` redirects, each allowed by [`check_target`] against the host of
/// the first URL of the chain (the registry, or the token realm already checked).
fn redirect_policy(max: usize, insecure: bool) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= max {
            return attempt.error(format!("more than {max} redirects (redirect loop?)"));
        }
        let origin = attempt
            .previous()
            .first()
            .and_then(|u| {
                u.host_str().map(|h| match u.port() {
                    Some(p) => format!("{h}:{p}"),
                    None => h.to_string(),
                })
            })
            .unwrap_or_default();
        match check_target(&origin, attempt.url(), insecure) {
            Ok(()) => attempt.follow(),
            Err(m) => {
                let m = format!("to {}: {m}", attempt.url());
                attempt.error(m)
            }
        }
    })
}

/// Reads a whole body, refusing more than `max` bytes.
pub(crate) async fn read_limited(
    mut resp: Response,
    max: u64,
) -> std::result::Result<Vec<u8>, String> {
    if let Some(len) = resp.content_length()
        && len > max
    {
        return Err(format!("answer of {len} bytes exceeds the limit of {max} bytes"));
    }
    let mut out = Vec::new();
    while let Some(chunk) =
        resp.chunk().await.map_err(|e| format!("body cut short: {}", describe(&e)))?
    {
        if out.len() as u64 + chunk.len() as u64 > max {
            return Err(format!("answer exceeds the limit of {max} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The start of an error body (registries explain errors in JSON), for messages.
pub(crate) async fn error_body(resp: Response) -> String {
    match read_limited(resp, 64 << 10).await {
        Ok(b) if !b.is_empty() => {
            let s = String::from_utf8_lossy(&b);
            let s: String = s.chars().take(300).collect();
            format!(": {}", s.trim())
        }
        _ => String::new(),
    }
}

/// Parses `Bearer realm="...",service="...",scope="..."`.
pub(crate) fn parse_challenge(h: &str) -> (String, HashMap<String, String>) {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            val.push(n);
                        }
                    }
                    '"' => break,
                    c => val.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                val.push(*c);
                chars.next();
            }
        }
        params.insert(key.trim().to_ascii_lowercase(), val.trim().to_string());
    }
    (scheme.to_string(), params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(s, "Bearer");
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        let (s, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!(s, "Basic");
        assert_eq!(p["realm"], "Registry Realm");
    }

    /// An upload `Location` is checked as redirects and token realms are: a registry
    /// that is not on a loopback address cannot send a push to one (or to a metadata
    /// endpoint), nor downgrade it to plain HTTP; a local test registry may.
    #[test]
    fn upload_locations_are_checked_like_redirects() {
        let client = |insecure| {
            Client::with_credentials(
                ClientOptions { insecure, ..Default::default() },
                Credentials::default(),
            )
            .unwrap()
        };
        let ctx = |host: &str| Ctx {
            host: host.into(),
            model: format!("{host}/ns/m:1"),
            repo: "ns/m".into(),
            push: true,
        };
        let c = client(true);
        let remote = ctx("192.0.2.2:5000");
        for bad in [
            "http://127.0.0.1:9/v2/ns/m/blobs/uploads/1",
            "http://localhost:9/x",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]:9/x",
            "file:///etc/passwd",
        ] {
            let e = c.resolve_location(&remote, bad).unwrap_err().to_string();
            assert!(e.contains("refusing the upload Location"), "{bad}: {e}");
        }
        assert_eq!(
            c.resolve_location(&remote, "/v2/ns/m/blobs/uploads/1?x=1").unwrap(),
            "http://192.0.2.2:5000/v2/ns/m/blobs/uploads/1?x=1"
        );
        assert!(c.resolve_location(&remote, "http://storage.example/up").is_ok());
        let e = client(false)
            .resolve_location(&ctx("registry.example"), "http://storage.example/up")
            .unwrap_err()
            .to_string();
        assert!(e.contains("plain http"), "{e}");
        assert!(c.resolve_location(&ctx("127.0.0.1:5000"), "http://127.0.0.1:6000/u").is_ok());
    }

    #[test]
    fn credentials_file_formats() {
        use base64::Engine as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.json");
        let enc = base64::engine::general_purpose::STANDARD.encode("bob:pw2");
        std::fs::write(
            &p,
            format!(
                r#"{{"registries":{{"localhost:5000":{{"username":"al","password":"pw"}}}},
                   "auths":{{"https://ghcr.io":{{"auth":"{enc}"}}}}}}"#
            ),
        )
        .unwrap();
        let c = Credentials::load(&p).unwrap();
        assert_eq!(c.get("localhost:5000"), Some(&("al".to_string(), "pw".to_string())));
        assert_eq!(c.get("ghcr.io"), Some(&("bob".to_string(), "pw2".to_string())));
    }

    #[test]
    fn loopback_hosts_are_known() {
        for url in [
            "http://127.0.0.1:1",
            "http://127.8.9.1",
            "http://[::1]:11434",
            "http://[::ffff:127.0.0.1]:1",
            "http://localhost:1",
            "https://LocalHost./",
            "http://a.localhost:2",
        ] {
            assert!(is_loopback_url(url), "{url}");
        }
        for url in [
            "http://10.0.0.1:1",
            "http://0.0.0.127:11434",
            "http://example.com",
            "http://localhost.example.com",
            "http://[::2]:1",
            "not a url",
        ] {
            assert!(!is_loopback_url(url), "{url}");
        }
    }

    /// The environment's proxies are used, except for this machine's hosts and what
    /// `NO_PROXY` names; a proxy that is a closed port makes the difference visible.
    #[tokio::test]
    async fn proxies_skip_this_machine() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                    let mut buf = [0u8; 4096];
                    let _ = conn.read(&mut buf).await;
                    let _ = conn
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        )
                        .await;
                });
            }
        });
        let client = |env: &[(&str, &str)]| {
            let env: Vec<(String, String)> =
                env.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect();
            let proxies =
                env_proxies(&|n| env.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone()));
            proxies
                .into_iter()
                .fold(reqwest::Client::builder().no_proxy(), reqwest::ClientBuilder::proxy)
                .build()
                .unwrap()
        };
        let closed = "http://127.0.0.1:9";
        // An IPv4-mapped loopback too, where this machine's IPv6 reaches the listener.
        let mut hosts = vec!["127.0.0.1", "localhost", "127.0.0.1."];
        if std::net::TcpStream::connect(("::ffff:127.0.0.1", port)).is_ok() {
            hosts.push("[::ffff:127.0.0.1]");
        } else {
            eprintln!("no IPv4-mapped IPv6 here: that host is not checked");
        }
        for var in ["HTTP_PROXY", "http_proxy", "ALL_PROXY"] {
            let c = client(&[(var, closed)]);
            for host in &hosts {
                let r = c.get(format!("http://{host}:{port}/")).send().await;
                assert!(r.is_ok_and(|r| r.status() == 200), "{var} {host}");
            }
            // Elsewhere the proxy is used: the closed port refuses, no name is looked up.
            let e = c.get("http://registry.invalid/").send().await.unwrap_err();
            assert!(e.is_connect() && !describe(&e).contains("dns"), "{var}: {}", describe(&e));
        }
        // NO_PROXY still excludes what it names (then the name is looked up, and fails).
        let c = client(&[("HTTP_PROXY", closed), ("NO_PROXY", "registry.invalid")]);
        let e = c.get("http://registry.invalid/").send().await.unwrap_err();
        assert!(describe(&e).contains("dns"), "{}", describe(&e));
        // In a CGI program the environment's proxies are not taken.
        assert!(
            env_proxies(&|n| (n == "REQUEST_METHOD" || n == "HTTP_PROXY").then(|| closed.into()))
                .is_empty()
        );
    }
}
