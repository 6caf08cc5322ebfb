//! A client of a running `corral serve`, for the CLI: where the server is, whether one
//! answers, and JSON and NDJSON requests with the server's error messages passed on.
//!
//! The address is the one `corral serve` listens on: `CORRAL_HOST`, then the config's
//! `[server] host`, then Ollama's `OLLAMA_HOST`, then `127.0.0.1:11434` ([`server_url`],
//! [`host_setting`]). A value that is not an address, or a `CORRAL_API_KEY` that cannot be
//! sent, is an error ([`ClientError::Setting`], exit code 2), never a reason to use the
//! local store. An unspecified address (`0.0.0.0`, `::`: what a server listening on every
//! interface is given) is reached at loopback, as Ollama's client does.
//!
//! The CLI's rule for every command that touches models (`run`, `list`, `show`,
//! `create`, `cp`, `rm`, `pull`, `push`; `ps` and `stop` always): when a server answers
//! at that address, the command goes through it, so it sees and changes the server's
//! store and loaded models; when none answers, it works on the local store in-process.
//! `--local` forces the local store, and so do `--models DIR` and `--models-readonly`
//! (they name a local store).
//!
//! What answers must be corral: a request whose headers do not come within
//! [`HEADER_TIMEOUT`] (a generation, which may load a model first, within
//! [`LOAD_TIMEOUT`]) fails with one line; an error without a message, or an HTML page,
//! is said in one line naming the server; an answer that is not the JSON a command
//! expects, or a stream that ends before its last line, is an error.

use std::{
    net::{TcpStream, ToSocketAddrs},
    time::Duration,
};

use anyhow::{Context as _, Result};
use futures_util::StreamExt;
use serde_json::Value;

/// The address when nothing sets one.
pub const DEFAULT_HOST: &str = "127.0.0.1:11434";

/// How long a request waits for the server's answer to begin (its headers).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// The same for a request that may load a model or wait in the server's queue first
/// (`/api/chat`, `/api/generate`): once headers came, a stream waits for its tokens as
/// long as they take.
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// A client setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `CORRAL_HOST` (or `[server] host`) is not an address, or `CORRAL_API_KEY` cannot be
    /// sent as a header: the user's input (exit code 2).
    #[error("{0}")]
    Setting(String),
}

/// Ollama's variable for the same address, read where corral has no setting of its own.
pub const OLLAMA_HOST: &str = "OLLAMA_HOST";

/// The address setting and where it came from: `CORRAL_HOST`, else `config_host` (the
/// config's `[server] host`), else `OLLAMA_HOST` (so an Ollama user's environment keeps
/// working, without overriding anything written for corral), else `None` (the default).
/// Blank values count as unset. `serve` and the client commands read the same one.
pub fn host_setting(config_host: Option<&str>) -> Option<(String, &'static str)> {
    let env = |name: &str| std::env::var(name).ok().filter(|h| !h.trim().is_empty());
    if let Some(v) = env("CORRAL_HOST") {
        return Some((v, "CORRAL_HOST"));
    }
    if let Some(c) = config_host.filter(|h| !h.trim().is_empty()) {
        return Some((c.to_string(), "the config's [server] host"));
    }
    env(OLLAMA_HOST).map(|v| (v, "OLLAMA_HOST"))
}

/// The server's base URL (`http://host:port`) from [`host_setting`], else
/// [`DEFAULT_HOST`]: the address `corral serve` listens on. `CORRAL_HOST` and the config
/// are read as `serve` reads them ([`parse_address`]: a host without a port gets 11434);
/// `OLLAMA_HOST` as Ollama reads it ([`parse_ollama_host`]). An unspecified address
/// (`0.0.0.0`, `::`) is reached at loopback (`127.0.0.1`, `::1`).
pub fn server_url(config_host: Option<&str>) -> Result<String, ClientError> {
    server_address(config_host).map(|(url, _)| url)
}

/// [`server_url`] and the setting it came from (`CORRAL_HOST`, `OLLAMA_HOST`, ...), for
/// messages.
pub fn server_address(config_host: Option<&str>) -> Result<(String, &'static str), ClientError> {
    let (value, source) = host_setting(config_host)
        .unwrap_or_else(|| (DEFAULT_HOST.to_string(), "the default address"));
    let parsed =
        if source == OLLAMA_HOST { parse_ollama_host(&value) } else { parse_address(&value) };
    parsed.map(|u| (connectable(&u), source)).map_err(|why| {
        ClientError::Setting(format!(
            "{source} {value:?} is not a server address (HOST:PORT or http://HOST:PORT): {why}"
        ))
    })
}

/// A base URL with an unspecified IP address (`0.0.0.0`, `[::]`) turned into loopback:
/// such an address is for listening on, and a client reaches that server at loopback.
fn connectable(url: &str) -> String {
    let Ok(mut u) = reqwest::Url::parse(url) else { return url.to_string() };
    let host = u.host_str().unwrap_or_default();
    let loopback = match host.trim_start_matches('[').trim_end_matches(']').parse() {
        Ok(std::net::IpAddr::V4(ip)) if ip.is_unspecified() => "127.0.0.1",
        Ok(std::net::IpAddr::V6(ip)) if ip.is_unspecified() => "[::1]",
        _ => return url.to_string(),
    };
    if u.set_host(Some(loopback)).is_err() {
        return url.to_string();
    }
    u.as_str().trim_end_matches('/').to_string()
}

/// `host[:port]` or `http(s)://host[:port]` (also a bare IPv6 address and `:PORT`) as a
/// base URL, or why it is not one: the one reading of `CORRAL_HOST`, for the client
/// commands and for `serve`'s listening address.
pub fn parse_address(value: &str) -> Result<String, String> {
    let v = value.trim().trim_end_matches('/');
    // The forms `serve --host` takes beside HOST:PORT: a bare IPv6 address and `:PORT`
    // (loopback).
    let v = if v.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{v}]")
    } else if v.starts_with(':') {
        format!("127.0.0.1{v}")
    } else {
        v.to_string()
    };
    let v = v.as_str();
    let url = if v.contains("://") { v.to_string() } else { format!("http://{v}") };
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", ""));
    if scheme != "http" && scheme != "https" {
        return Err(format!("the scheme must be http or https, not {scheme:?}"));
    }
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    if authority.is_empty() {
        return Err("it names no host".into());
    }
    // A port after the last ':' that is not inside an IPv6 literal's brackets.
    let has_port = authority.rsplit_once(':').is_some_and(|(_, p)| !p.contains(']'));
    let url = if has_port {
        url.clone()
    } else {
        let path = if path.is_empty() { String::new() } else { format!("/{path}") };
        format!("{scheme}://{authority}:11434{path}")
    };
    let parsed = reqwest::Url::parse(&url).map_err(|e| e.to_string())?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("it names no host".into());
    }
    if has_port {
        let port = authority.rsplit_once(':').map_or("", |(_, p)| p);
        if port.is_empty() || port.parse::<u16>().is_err() {
            return Err(format!("{port:?} is not a port number (1 to 65535)"));
        }
    }
    Ok(url)
}

/// Whether a base URL names this machine: `localhost` (and its subdomains) or a loopback
/// IP address; such a server is never reached through a proxy. The registry client makes
/// the same exception (one rule, in `corral_registry`).
pub use corral_registry::oci::is_loopback_url;

/// `OLLAMA_HOST` as Ollama reads it (`envconfig.Host`), as a base URL, or why it is not
/// one: blanks and quotes around it are dropped; without a scheme it is `http` and the
/// port defaults to 11434, with `http://` to 80 and with `https://` to 443; a port that is
/// not one (`:99999`) is that default, as Ollama takes it; `ollama.com` alone is
/// `https://ollama.com:443`; a path is kept (a server behind a reverse proxy). Unlike
/// Ollama, a scheme other than http and https is refused (this client speaks no other),
/// and an empty host (`:PORT`) is `127.0.0.1`, where Go's dialer goes.
pub fn parse_ollama_host(value: &str) -> Result<String, String> {
    read_ollama_host(value).map(|(url, _)| url)
}

/// Where `corral serve` listens when its address comes from `OLLAMA_HOST` (nothing of
/// corral's sets one): `HOST:PORT`, and whether that is not what the value names (the
/// caller warns). A leftover `OLLAMA_HOST=0.0.0.0` (Ollama's FAQ sets it) must not open a
/// server without API keys to the network, so `serve` takes only a port from it:
///
/// - a loopback address (`127.0.0.1`, `localhost`, `::1`) is kept;
/// - an unspecified one (`0.0.0.0`, `::`) becomes the loopback address a client reading the
///   same value goes to ([`server_url`]: `127.0.0.1`, `[::1]`), with its port;
/// - any other host (another machine, a client-style `https://server`) becomes
///   `127.0.0.1` with the port the value writes, else 11434: a client reading that value
///   goes to the other machine anyway, and a scheme's own port (80, 443) is that
///   machine's web server's.
///
/// The scheme and a path are ignored (`serve` speaks plain HTTP).
pub fn ollama_host_listen_address(value: &str) -> Result<(String, bool), String> {
    let (url, port_written) = read_ollama_host(value)?;
    let u = reqwest::Url::parse(&url).map_err(|e| e.to_string())?;
    let port = u.port_or_known_default().unwrap_or(11434);
    let host = u.host_str().unwrap_or_default();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let unspecified = bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_unspecified());
    Ok(if is_loopback_url(&url) {
        (format!("{host}:{port}"), false)
    } else if unspecified {
        let loopback = if bare.contains(':') { "[::1]" } else { "127.0.0.1" };
        (format!("{loopback}:{port}"), true)
    } else {
        (format!("127.0.0.1:{}", if port_written { port } else { 11434 }), true)
    })
}

/// [`parse_ollama_host`], and whether the value writes its port.
fn read_ollama_host(value: &str) -> Result<(String, bool), String> {
    let s = value.trim().trim_matches(['"', '\'']).trim();
    let (scheme, hostport, default_port) = match s.split_once("://") {
        None if s == "ollama.com" => ("https", "ollama.com:443", 443),
        None => ("http", s, 11434),
        Some(("http", rest)) => ("http", rest, 80),
        Some(("https", rest)) => ("https", rest, 443),
        Some((other, _)) => return Err(format!("the scheme must be http or https, not {other:?}")),
    };
    let (hostport, path) = hostport.split_once('/').unwrap_or((hostport, ""));
    let (host, port) = match split_host_port(hostport) {
        Some((h, p)) => (h.to_string(), Some(p)),
        None => {
            let bare = hostport.trim_start_matches('[').trim_end_matches(']');
            match bare.parse::<std::net::IpAddr>() {
                Ok(ip) => (ip.to_string(), None),
                Err(_) => (hostport.to_string(), None),
            }
        }
    };
    let port_written = port.is_some_and(|p| p.parse::<u16>().is_ok());
    let port = match port.map(str::parse::<u16>) {
        None => default_port,
        Some(Ok(p)) => p,
        Some(Err(_)) => {
            let p = port.unwrap_or_default();
            tracing::warn!("OLLAMA_HOST {value:?}: invalid port {p:?}, using {default_port}");
            default_port
        }
    };
    let host = match host.as_str() {
        "" => "127.0.0.1".to_string(),
        h if h.contains(':') => format!("[{h}]"),
        h => h.to_string(),
    };
    let path = if path.is_empty() { String::new() } else { format!("/{path}") };
    let url = format!("{scheme}://{host}:{port}{path}");
    let parsed = reqwest::Url::parse(&url).map_err(|e| e.to_string())?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("it names no host".into());
    }
    Ok((url, port_written))
}

/// Go's `net.SplitHostPort`: `host:port` or `[v6]:port` (the host without brackets), or
/// `None` for anything else (a host alone, an IPv6 address without brackets).
fn split_host_port(hostport: &str) -> Option<(&str, &str)> {
    if let Some(rest) = hostport.strip_prefix('[') {
        let (host, port) = rest.split_once("]:")?;
        (!host.contains(['[', ']']) && !port.contains([':', '[', ']'])).then_some((host, port))
    } else {
        let (host, port) = hostport.rsplit_once(':')?;
        (!host.contains([':', '[', ']']) && !port.contains(['[', ']'])).then_some((host, port))
    }
}

/// The server URL when something accepts connections there within 300 ms (`Ok(None)`
/// when nothing does); an address that is not one is an error.
pub fn reachable_server(config_host: Option<&str>) -> Result<Option<String>, ClientError> {
    Ok(reachable_address(config_host)?.map(|(url, _)| url))
}

/// [`reachable_server`] with the setting the address came from.
fn reachable_address(
    config_host: Option<&str>,
) -> Result<Option<(String, &'static str)>, ClientError> {
    let (url, source) = server_address(config_host)?;
    // The port as the URL implies it (`http://h` is port 80, as `OLLAMA_HOST` may say).
    let target = reqwest::Url::parse(&url).ok().and_then(|u| {
        let host = u.host_str()?.trim_start_matches('[').trim_end_matches(']').to_string();
        Some((host, u.port_or_known_default()?))
    });
    let Some(addr) = target.and_then(|t| t.to_socket_addrs().ok()).and_then(|mut a| a.next())
    else {
        return Ok(None);
    };
    Ok(TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok().map(|_| (url, source)))
}

/// A connection to one server.
pub struct Server {
    /// Its base URL.
    pub url: String,
    /// The setting the address came from (`CORRAL_HOST`, `OLLAMA_HOST`, ...).
    source: &'static str,
    http: reqwest::Client,
    rt: tokio::runtime::Runtime,
}

/// One line of a server's answer for a message: an HTML page's title or text, the first
/// line of anything else, at most 200 characters.
fn one_line(text: &str) -> String {
    let t = text.trim();
    let lower = t.to_ascii_lowercase();
    let plain = if t.starts_with('<') {
        let title = lower
            .find("<title>")
            .and_then(|s| lower[s..].find("</title>").map(|e| (s + 7, s + e)))
            .and_then(|(s, e)| t.get(s..e))
            .map(str::to_string);
        title.unwrap_or_else(|| {
            let mut out = String::new();
            let mut in_tag = false;
            for c in t.chars() {
                match c {
                    '<' => in_tag = true,
                    '>' => {
                        in_tag = false;
                        out.push(' ');
                    }
                    c if !in_tag => out.push(c),
                    _ => {}
                }
            }
            out
        })
    } else {
        t.lines().next().unwrap_or("").to_string()
    };
    let plain = plain.split_whitespace().collect::<Vec<_>>().join(" ");
    if plain.chars().count() > 200 {
        format!("{}…", plain.chars().take(200).collect::<String>())
    } else {
        plain
    }
}

/// The message of an error answer: the server's `error`, else what the body says, in
/// one line, naming the server.
fn error_message(url: &str, status: u16, text: &str) -> String {
    if let Some(e) = serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
        .filter(|e| !e.trim().is_empty())
    {
        return e;
    }
    let line = one_line(text);
    if line.is_empty() {
        format!("the server at {url} answered HTTP {status} with no message (is it corral?)")
    } else {
        format!("the server at {url} answered HTTP {status}: {line} (is it corral?)")
    }
}

impl Server {
    /// The server at the configured address when one answers there; `Ok(None)` when
    /// none does.
    pub fn reachable(config_host: Option<&str>) -> Result<Option<Server>> {
        match reachable_address(config_host)? {
            Some((url, source)) => Ok(Some(Server::at(url, source)?)),
            None => Ok(None),
        }
    }

    /// The server at the configured address, answering or not (requests then fail with
    /// a message that says so).
    pub fn configured(config_host: Option<&str>) -> Result<Server> {
        let (url, source) = server_address(config_host)?;
        Server::at(url, source)
    }

    fn at(url: String, source: &'static str) -> Result<Server> {
        let mut headers = reqwest::header::HeaderMap::new();
        // The key the server requires, if it does (`CORRAL_API_KEY`).
        if let Some(key) = std::env::var("CORRAL_API_KEY").ok().filter(|k| !k.trim().is_empty()) {
            let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", key.trim()))
                .map_err(|_| {
                ClientError::Setting(
                    "CORRAL_API_KEY holds characters an HTTP header cannot carry (a control \
                     character, a line break or a non-ASCII one)"
                        .into(),
                )
            })?;
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        // A server on this machine is never reached through `HTTP_PROXY`/`HTTPS_PROXY` (a
        // proxy cannot reach this machine's loopback, and Go's clients, Ollama's among them,
        // make the same exception); other addresses follow the proxy settings as usual.
        let http = corral_registry::oci::with_env_proxies(
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .default_headers(headers),
        )
        .build()?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(Server { url, source, http, rt })
    }

    /// Runs a future on this client's runtime.
    pub fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.rt.block_on(f)
    }

    /// Sends a request and waits at most `limit` for its answer's headers; an error
    /// status becomes a [`ServerError`].
    async fn answer(
        &self,
        req: reqwest::RequestBuilder,
        limit: Duration,
    ) -> Result<reqwest::Response> {
        let resp = match tokio::time::timeout(limit, req.send()).await {
            Err(_) => anyhow::bail!(
                "the server at {} accepted the connection but did not answer within {} s (is \
                 it corral? is it stuck?)",
                self.url,
                limit.as_secs()
            ),
            Ok(r) => r.with_context(|| {
                // Where the address came from, so the right setting is changed.
                let set = match self.source {
                    OLLAMA_HOST => "the address is OLLAMA_HOST's: set CORRAL_HOST or OLLAMA_HOST",
                    "CORRAL_HOST" => "set CORRAL_HOST",
                    s if s.starts_with("the config") => {
                        "the address is the config's [server] host: set it or CORRAL_HOST"
                    }
                    _ => "set CORRAL_HOST",
                };
                format!("could not reach corral at {} (is `corral serve` running? {set})", self.url)
            })?,
        };
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            let message = error_message(&self.url, status.as_u16(), &text);
            return Err(ServerError { status: status.as_u16(), message }.into());
        }
        Ok(resp)
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<reqwest::Response> {
        let url = format!("{}{path}", self.url);
        let mut req = self.http.request(method, &url);
        if let Some(b) = body {
            req = req.json(b);
        }
        let limit = if matches!(path, "/api/chat" | "/api/generate") {
            LOAD_TIMEOUT
        } else {
            HEADER_TIMEOUT
        };
        self.answer(req, limit).await
    }

    /// One request with a JSON answer (`null` for an empty body); an answer that is not
    /// JSON is an error.
    pub fn json(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Result<Value> {
        self.block_on(async {
            let resp = self.send(method, path, body).await?;
            let text = resp.text().await.context("reading the server's answer")?;
            if text.trim().is_empty() {
                return Ok(Value::Null);
            }
            serde_json::from_str(&text).map_err(|_| self.unexpected(path, &text))
        })
    }

    /// The error for an answer to `path` that is not what a corral server sends.
    pub fn unexpected(&self, path: &str, text: &str) -> anyhow::Error {
        let line = one_line(text);
        let shown = if line.is_empty() { "nothing".to_string() } else { format!("{line:?}") };
        anyhow::anyhow!(
            "the server at {} answered {path} with {shown}, which is not what corral sends (is \
             it corral?)",
            self.url
        )
    }

    /// A request whose answer is a stream of JSON lines, each given to `on_line` as it
    /// arrives; a line with an `error` ends the stream with that error. Returns the last
    /// line (`None` for an empty stream), so callers check that the stream was complete;
    /// `None` too when `cancel` was notified, which ends the request.
    pub fn ndjson(
        &self,
        path: &str,
        body: &Value,
        cancel: Option<&tokio::sync::Notify>,
        mut on_line: impl FnMut(&Value) -> Result<()>,
    ) -> Result<Option<Value>> {
        let work = async {
            let resp = self.send(reqwest::Method::POST, path, Some(body)).await?;
            let mut bytes = resp.bytes_stream();
            let mut buf = Vec::new();
            let mut last = None;
            let mut ended = false;
            while !ended {
                match bytes.next().await {
                    Some(chunk) => {
                        buf.extend_from_slice(&chunk.context("the server's stream broke off")?);
                    }
                    // What follows the last newline is a line too.
                    None => {
                        buf.push(b'\n');
                        ended = true;
                    }
                }
                while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=nl).collect();
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let v: Value = serde_json::from_slice(&line)
                        .map_err(|_| self.unexpected(path, &String::from_utf8_lossy(&line)))?;
                    if let Some(e) = v.get("error").and_then(Value::as_str) {
                        // Error lines carry the status the error would have had as an
                        // answer (`code`); older servers send none.
                        return match v.get("code").and_then(Value::as_u64) {
                            Some(code) => Err(ServerError {
                                status: u16::try_from(code).unwrap_or(500),
                                message: e.to_string(),
                            }
                            .into()),
                            None => Err(anyhow::anyhow!("{e}")),
                        };
                    }
                    on_line(&v)?;
                    last = Some(v);
                }
            }
            Ok(last)
        };
        self.block_on(async {
            match cancel {
                Some(c) => tokio::select! {
                    r = work => r,
                    () = c.notified() => Ok(None),
                },
                None => work.await,
            }
        })
    }

    /// Hashes a local file and uploads it as a blob (unless the server has it); returns
    /// its digest (`sha256:...`).
    pub fn upload_file(&self, path: &std::path::Path) -> Result<String> {
        let (digest, _) = corral_registry::store::hash_file(path, |_| {})
            .with_context(|| format!("cannot read {}", path.display()))?;
        let digest = digest.to_string();
        self.upload_blob(path, &digest)?;
        Ok(digest)
    }

    /// Uploads a file as a blob (`HEAD` first: a blob the server has is not sent).
    pub fn upload_blob(&self, path: &std::path::Path, digest: &str) -> Result<()> {
        let url = format!("{}/api/blobs/{digest}", self.url);
        self.block_on(async {
            match self.answer(self.http.head(&url), HEADER_TIMEOUT).await {
                Ok(_) => return Ok(()),
                // 404: the server does not have it.
                Err(e) if e.downcast_ref::<ServerError>().is_some() => {}
                Err(e) => return Err(e),
            }
            let file = tokio::fs::File::open(path)
                .await
                .with_context(|| format!("cannot open {}", path.display()))?;
            let len = file.metadata().await?.len();
            let body = reqwest::Body::from(file);
            let resp = self
                .http
                .post(&url)
                .header(reqwest::header::CONTENT_LENGTH, len)
                .body(body)
                .send()
                .await
                .with_context(|| format!("cannot upload {} to {url}", path.display()))?;
            if !resp.status().is_success() {
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap_or_default();
                let message = error_message(&self.url, status, &text);
                return Err(ServerError { status, message }.into());
            }
            Ok(())
        })
    }
}

/// An error answer of the server: its status and its message.
#[derive(Debug)]
pub struct ServerError {
    /// The HTTP status.
    pub status: u16,
    /// The server's `error` message.
    pub message: String,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A message made here for an answer without one already names the status.
        if self.message.contains(&format!("answered HTTP {}", self.status)) {
            f.write_str(&self.message)
        } else {
            write!(f, "{} (server answered {})", self.message, self.status)
        }
    }
}

impl std::error::Error for ServerError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_as_serve_takes_them() {
        let ok = |v: &str| parse_address(v).unwrap();
        assert_eq!(ok("127.0.0.1:12100"), "http://127.0.0.1:12100");
        assert_eq!(ok("example.com"), "http://example.com:11434");
        assert_eq!(ok("http://example.com/"), "http://example.com:11434");
        assert_eq!(ok("https://h:443"), "https://h:443");
        assert_eq!(ok("[::1]:8080"), "http://[::1]:8080");
        assert_eq!(ok("[::1]"), "http://[::1]:11434");
        assert_eq!(ok("::1"), "http://[::1]:11434");
        assert_eq!(ok(":8080"), "http://127.0.0.1:8080");
        for bad in ["127.0.0.1:99999", "garbage::::", "h:", "ftp://h:1", "http://", ":"] {
            assert!(parse_address(bad).is_err(), "{bad}");
        }
    }

    /// Ollama's own cases (`envconfig/config_test.go`, `TestHost`), where corral reads
    /// them alike.
    #[test]
    fn ollama_host_as_ollama_reads_it() {
        for (value, want) in [
            ("1.2.3.4", "http://1.2.3.4:11434"),
            (":1234", "http://127.0.0.1:1234"),
            ("1.2.3.4:1234", "http://1.2.3.4:1234"),
            ("example.com", "http://example.com:11434"),
            ("example.com:1234", "http://example.com:1234"),
            (":0", "http://127.0.0.1:0"),
            (":66000", "http://127.0.0.1:11434"),
            (":-1", "http://127.0.0.1:11434"),
            ("[::1]", "http://[::1]:11434"),
            ("[::]", "http://[::]:11434"),
            ("::1", "http://[::1]:11434"),
            ("[::1]:1337", "http://[::1]:1337"),
            (" 1.2.3.4 ", "http://1.2.3.4:11434"),
            ("\"1.2.3.4\"", "http://1.2.3.4:11434"),
            (" \" 1.2.3.4 \" ", "http://1.2.3.4:11434"),
            ("'1.2.3.4'", "http://1.2.3.4:11434"),
            ("http://1.2.3.4", "http://1.2.3.4:80"),
            ("http://1.2.3.4:4321", "http://1.2.3.4:4321"),
            ("https://1.2.3.4", "https://1.2.3.4:443"),
            ("https://1.2.3.4:4321", "https://1.2.3.4:4321"),
            ("https://example.com/ollama", "https://example.com:443/ollama"),
            ("ollama.com", "https://ollama.com:443"),
            ("http://localhost", "http://localhost:80"),
            ("0.0.0.0", "http://0.0.0.0:11434"),
            ("http://", "http://127.0.0.1:80"),
        ] {
            assert_eq!(parse_ollama_host(value).as_deref(), Ok(want), "{value:?}");
        }
        for bad in ["garbage::::", "ftp://h:1", "http://a b"] {
            assert!(parse_ollama_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn serve_takes_only_a_port_from_ollama_host() {
        let at = |v: &str| ollama_host_listen_address(v).unwrap();
        for (value, want) in [
            ("127.0.0.1:8080", "127.0.0.1:8080"),
            ("127.0.0.2", "127.0.0.2:11434"),
            ("localhost:5", "localhost:5"),
            ("[::1]:7", "[::1]:7"),
            (":8080", "127.0.0.1:8080"),
            ("http://127.0.0.1", "127.0.0.1:80"),
        ] {
            assert_eq!(at(value), (want.to_string(), false), "{value}");
        }
        for (value, want) in [
            ("0.0.0.0", "127.0.0.1:11434"),
            ("0.0.0.0:8080", "127.0.0.1:8080"),
            ("http://0.0.0.0:8080", "127.0.0.1:8080"),
            ("[::]:9", "[::1]:9"),
            ("192.168.1.5:8080", "127.0.0.1:8080"),
            ("example.com", "127.0.0.1:11434"),
            ("https://ollama.example.com", "127.0.0.1:11434"),
            ("https://ollama.example.com:8443/ollama", "127.0.0.1:8443"),
        ] {
            assert_eq!(at(value), (want.to_string(), true), "{value}");
        }
        // Every address a client reading the same value reaches at this machine is where
        // serve listens.
        for value in ["0.0.0.0:8080", "[::]:9", "127.0.0.1:3", "http://0.0.0.0"] {
            let client = connectable(&parse_ollama_host(value).unwrap());
            let u = reqwest::Url::parse(&client).unwrap();
            let reached =
                format!("{}:{}", u.host_str().unwrap(), u.port_or_known_default().unwrap());
            assert_eq!(at(value).0, reached, "{value}");
        }
    }

    #[test]
    fn unspecified_addresses_are_reached_at_loopback() {
        assert_eq!(connectable("http://0.0.0.0:11434"), "http://127.0.0.1:11434");
        assert_eq!(connectable("http://[::]:8080"), "http://[::1]:8080");
        assert_eq!(connectable("http://0.0.0.0:1/base"), "http://127.0.0.1:1/base");
        assert_eq!(connectable("http://10.0.0.1:1"), "http://10.0.0.1:1");
        assert_eq!(connectable("http://example.com:1"), "http://example.com:1");
    }

    #[test]
    fn answers_of_other_servers_in_one_line() {
        let u = "http://127.0.0.1:1";
        assert_eq!(
            error_message(u, 404, ""),
            "the server at http://127.0.0.1:1 answered HTTP 404 with no message (is it corral?)"
        );
        assert_eq!(error_message(u, 400, r#"{"error":"bad name"}"#), "bad name");
        let html = "<!DOCTYPE HTML>\n<html>\n<head><title>Error response</title></head>\n\
                    <body>\n<h1>Error 501</h1>\n<p>Message: Unsupported method</p>\n</body>\n</html>\n";
        let m = error_message(u, 501, html);
        assert!(m.contains("Error response") && !m.contains('\n'), "{m}");
        let long = "x".repeat(5000);
        assert!(error_message(u, 500, &long).chars().count() < 300);
    }
}
