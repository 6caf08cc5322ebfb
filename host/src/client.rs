//! A client of a running `corral serve`, for the CLI: where the server is
//! (`CORRAL_HOST`, default `127.0.0.1:11434`), whether one answers, and JSON and NDJSON
//! requests with the server's error messages passed on.
//!
//! The CLI's rule for every command that touches models (`run`, `list`, `show`,
//! `create`, `cp`, `rm`, `pull`, `push`; `ps` and `stop` always): when a server answers
//! at `CORRAL_HOST`, the command goes through it, so it sees and changes the server's
//! store and loaded models; when none answers, it works on the local store in-process.
//! `--local` forces the local store, and so do `--models DIR` and `--models-readonly`
//! (they name a local store).

use std::{
    net::{TcpStream, ToSocketAddrs},
    time::Duration,
};

use anyhow::{Context as _, Result};
use futures_util::StreamExt;
use serde_json::Value;

/// The server's base URL from `CORRAL_HOST` (`host:port`, `http://host:port` or a host).
pub fn server_url() -> String {
    let host = std::env::var("CORRAL_HOST").ok().filter(|h| !h.trim().is_empty());
    let host = host.unwrap_or_else(|| "127.0.0.1:11434".to_string());
    let host = host.trim_end_matches('/');
    let url = if host.contains("://") { host.to_string() } else { format!("http://{host}") };
    let after = url.split("://").nth(1).unwrap_or("");
    if after.contains(':') { url } else { format!("{url}:11434") }
}

/// The server URL when something accepts connections there within 300 ms.
pub fn reachable_server() -> Option<String> {
    let url = server_url();
    let authority = url.split("://").nth(1)?.split('/').next()?.to_string();
    let addr = authority.to_socket_addrs().ok()?.next()?;
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()?;
    Some(url)
}

/// A connection to one server.
pub struct Server {
    /// Its base URL.
    pub url: String,
    http: reqwest::Client,
    rt: tokio::runtime::Runtime,
}

impl Server {
    /// The server at `CORRAL_HOST` when one answers there.
    pub fn reachable() -> Option<Server> {
        Server::at(reachable_server()?).ok()
    }

    /// The server at `CORRAL_HOST`, answering or not (requests then fail with a message
    /// that says so).
    pub fn configured() -> Result<Server> {
        Server::at(server_url())
    }

    fn at(url: String) -> Result<Server> {
        let mut headers = reqwest::header::HeaderMap::new();
        // The key the server requires, if it does (`CORRAL_API_KEY`).
        if let Some(key) = std::env::var("CORRAL_API_KEY").ok().filter(|k| !k.trim().is_empty()) {
            let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", key.trim()))
                .context("CORRAL_API_KEY holds characters a header cannot carry")?;
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .default_headers(headers)
            .build()?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(Server { url, http, rt })
    }

    /// Runs a future on this client's runtime.
    pub fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.rt.block_on(f)
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
        let resp = req.send().await.with_context(|| {
            format!(
                "could not reach corral at {} (is `corral serve` running? set CORRAL_HOST)",
                self.url
            )
        })?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            let msg = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
                .unwrap_or(text);
            return Err(ServerError { status: status.as_u16(), message: msg }.into());
        }
        Ok(resp)
    }

    /// One request with a JSON answer (`null` for an empty body).
    pub fn json(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Result<Value> {
        self.block_on(async {
            let resp = self.send(method, path, body).await?;
            let text = resp.text().await.context("reading the server's answer")?;
            if text.trim().is_empty() {
                return Ok(Value::Null);
            }
            Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
        })
    }

    /// A request whose answer is a stream of JSON lines, each given to `on_line` as it
    /// arrives; a line with an `error` ends the stream with that error.
    pub fn ndjson(
        &self,
        path: &str,
        body: &Value,
        mut on_line: impl FnMut(&Value) -> Result<()>,
    ) -> Result<()> {
        self.block_on(async {
            let resp = self.send(reqwest::Method::POST, path, Some(body)).await?;
            let mut bytes = resp.bytes_stream();
            let mut buf = Vec::new();
            while let Some(chunk) = bytes.next().await {
                buf.extend_from_slice(&chunk.context("the server's stream broke off")?);
                while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=nl).collect();
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let v: Value = serde_json::from_slice(&line)
                        .context("the server sent a line that is not JSON")?;
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
                }
            }
            Ok(())
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
            let head =
                self.http.head(&url).send().await.with_context(|| format!("cannot reach {url}"))?;
            if head.status().is_success() {
                return Ok(());
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
                let message = resp.text().await.unwrap_or_default();
                return Err(ServerError { status, message }.into());
            }
            Ok(())
        })
    }
}

/// An error answer of the server: its status and its message.
#[derive(Debug, thiserror::Error)]
#[error("{message} (server answered {status})")]
pub struct ServerError {
    /// The HTTP status.
    pub status: u16,
    /// The server's `error` message.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        // Only the pure formatting; the env var is process-global, so not set here.
        assert!(server_url().starts_with("http://"));
    }
}
