//! What every request passes before a handler runs, outermost first:
//!
//! 1. **Host** (`host_check`): while bound to a loopback address, the `Host` header must
//!    name this machine (the DNS-rebinding defence of CVE-2024-28224); 403 otherwise.
//! 2. **Origin** (`origin_check`): a request that carries an `Origin` that is not an
//!    allowed one (the local ones, plus `CORRAL_ORIGINS`), or that a browser marks
//!    `Sec-Fetch-Site: cross-site` without an allowed `Origin`, is refused with 403,
//!    whatever its method and content type: a web page cannot make a user's browser
//!    drive the server, preflight or not. Clients that send no `Origin` (curl, the SDKs)
//!    pass.
//! 3. **API key** (`api_key_check`): when keys are configured, every request but `GET /`,
//!    `HEAD /` and `/api/version` must carry one, as `Authorization: Bearer KEY` or
//!    `x-api-key: KEY` (what Anthropic's clients send); 401 otherwise, in the API's own
//!    error shape (Anthropic's for `/v1/messages`, OpenAI's for the rest of `/v1/`).
//!    Keys are compared in constant time (as SHA-256 digests, so their length leaks
//!    nothing) and never logged.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use super::{AppState, util::ApiError};

/// Whether `origin` is a local one (allowed by default), as Ollama's defaults.
pub fn is_local_origin(origin: &str) -> bool {
    for scheme in ["http://", "https://"] {
        if let Some(rest) = origin.strip_prefix(scheme) {
            let host = match rest.strip_prefix('[') {
                Some(r) => r.split(']').next().unwrap_or(""),
                None => rest.split(':').next().unwrap_or(""),
            };
            return matches!(host, "localhost" | "127.0.0.1" | "::1" | "0.0.0.0");
        }
    }
    ["app://", "file://", "tauri://", "vscode-webview://", "vscode-file://"]
        .iter()
        .any(|p| origin.starts_with(p))
}

/// An origin split into scheme, host and port (`None`: no explicit port).
fn split_origin(origin: &str) -> Option<(&str, &str, Option<&str>)> {
    let (scheme, rest) = origin.split_once("://")?;
    let rest = rest.trim_end_matches('/');
    if let Some(r) = rest.strip_prefix('[') {
        let (host, after) = r.split_once(']')?;
        return Some((scheme, host, after.strip_prefix(':')));
    }
    match rest.rsplit_once(':') {
        Some((host, port)) => Some((scheme, host, Some(port))),
        None => Some((scheme, rest, None)),
    }
}

/// Whether `origin` matches `pattern`: `*`; an exact origin; or `scheme://HOST[:PORT]`
/// where HOST is `*` (any host, any port), `*.example.com` (a host ending in whole labels
/// `.example.com`, so `app.example.com.evil.net` does not match) or a name, and PORT is
/// `*` or a number (no PORT: the origin has none).
pub fn origin_matches(origin: &str, pattern: &str) -> bool {
    if pattern == "*" || pattern == origin {
        return true;
    }
    let (Some((os, oh, op)), Some((ps, ph, pp))) = (split_origin(origin), split_origin(pattern))
    else {
        return false;
    };
    if !os.eq_ignore_ascii_case(ps) {
        return false;
    }
    let (oh, ph) = (oh.to_ascii_lowercase(), ph.to_ascii_lowercase());
    if ph == "*" {
        return true;
    }
    let host_ok = match ph.strip_prefix("*.") {
        Some(suffix) => oh.len() > suffix.len() + 1 && oh.ends_with(&format!(".{suffix}")),
        None => oh == ph,
    };
    let port_ok = match (pp, op) {
        (Some("*"), _) => true,
        (Some(p), Some(o)) => p == o,
        (None, None) => true,
        _ => false,
    };
    host_ok && port_ok
}

/// Whether `origin` may call the server: a local origin or one `extra` allows.
pub fn origin_allowed(origin: &str, extra: &[String]) -> bool {
    is_local_origin(origin) || extra.iter().any(|p| origin_matches(origin, p))
}

/// The DNS-rebinding check: with a loopback bind, `Host` must name this machine.
pub fn host_allowed(host: Option<&str>, bound: &SocketAddr) -> bool {
    if !bound.ip().is_loopback() {
        return true;
    }
    let Some(host) = host else { return true };
    let name = if let Some(r) = host.strip_prefix('[') {
        r.split(']').next().unwrap_or("")
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
            _ => host,
        }
    };
    let name = name.to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    match name.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback() || ip == bound.ip() || ip.is_unspecified(),
        Err(_) => false,
    }
}

pub(crate) async fn host_check(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok());
    if !host_allowed(host, &state.bound) {
        tracing::warn!(host = host.unwrap_or(""), "refused a request with a foreign Host header");
        return ApiError {
            status: StatusCode::FORBIDDEN,
            message: "forbidden: the Host header does not name this server".into(),
        }
        .into_response();
    }
    // How many servers forwarded the request here, for the remote requests it makes.
    super::remote::hops_layer(req, next).await
}

pub(crate) async fn origin_check(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let origin = req.headers().get(header::ORIGIN).map(|o| o.to_str().unwrap_or("\u{fffd}"));
    let cross_site = req
        .headers()
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
    let refused = match origin {
        // `null` (sandboxed frames, some redirects) is no origin we can allow.
        Some(o) => !origin_allowed(o, &state.origins),
        None => cross_site,
    };
    if refused {
        tracing::warn!(
            origin = origin.unwrap_or(""),
            path = req.uri().path(),
            "refused a cross-site request"
        );
        let message = match origin {
            Some(o) => format!(
                "forbidden: origin {o:?} is not allowed (local origins are; add others with CORRAL_ORIGINS)"
            ),
            None => "forbidden: cross-site requests are not allowed".to_string(),
        };
        return ApiError { status: StatusCode::FORBIDDEN, message }.into_response();
    }
    next.run(req).await
}

/// The API keys a server accepts, kept as SHA-256 digests.
#[derive(Clone, Default)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} key(s))", self.digests.len())
    }
}

impl ApiKeys {
    /// Keys from any number of sources; blank entries are ignored.
    pub fn new<'a>(keys: impl IntoIterator<Item = &'a str>) -> ApiKeys {
        let digests = keys
            .into_iter()
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| Sha256::digest(k.as_bytes()).into())
            .collect();
        ApiKeys { digests }
    }

    /// Whether any key is configured (then every guarded request needs one).
    pub fn required(&self) -> bool {
        !self.digests.is_empty()
    }

    /// Whether `key` is one of the keys, in time that does not depend on which part of
    /// it matched.
    pub fn accepts(&self, key: &str) -> bool {
        let d: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut ok = subtle::Choice::from(0u8);
        for k in &self.digests {
            ok |= k.ct_eq(&d);
        }
        ok.into()
    }
}

/// The key a request presents: `Authorization: Bearer KEY` or `x-api-key: KEY`.
fn presented_key(req: &Request) -> Option<&str> {
    let h = req.headers();
    if let Some(v) = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") {
            return Some(v[7..].trim());
        }
    }
    h.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim)
}

/// Paths that stay open without a key (health checks).
fn open_path(req: &Request) -> bool {
    let path = req.uri().path();
    path == "/" || path == "/api/version"
}

pub(crate) async fn api_key_check(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    if !state.api_keys.required() || open_path(&req) {
        return next.run(req).await;
    }
    let message = match presented_key(&req) {
        Some(k) if state.api_keys.accepts(k) => return next.run(req).await,
        Some(_) => "unauthorized: the API key is not valid",
        None => {
            "unauthorized: this server requires an API key (Authorization: Bearer KEY or x-api-key: KEY)"
        }
    };
    tracing::warn!(path = req.uri().path(), "refused a request without a valid API key");
    let mut resp = if req.uri().path().starts_with("/v1/messages") {
        // Anthropic's shape.
        let body = super::anthropic::error_body(StatusCode::UNAUTHORIZED, message);
        (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
    } else if req.uri().path().starts_with("/v1/") {
        // OpenAI's shape.
        let body = serde_json::json!({"error": {
            "message": message, "type": "invalid_request_error", "param": null,
            "code": "invalid_api_key"}});
        (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
    } else {
        ApiError { status: StatusCode::UNAUTHORIZED, message: message.into() }.into_response()
    };
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_header_check() {
        let lo: SocketAddr = "127.0.0.1:11434".parse().unwrap();
        for ok in
            ["localhost", "localhost:11434", "127.0.0.1:11434", "[::1]:11434", "app.localhost"]
        {
            assert!(host_allowed(Some(ok), &lo), "{ok}");
        }
        for bad in ["evil.com", "evil.com:11434", "127.0.0.1.nip.io", "localhost.evil.com"] {
            assert!(!host_allowed(Some(bad), &lo), "{bad}");
        }
        assert!(host_allowed(None, &lo));
        let any: SocketAddr = "0.0.0.0:11434".parse().unwrap();
        assert!(host_allowed(Some("evil.com"), &any));
    }

    #[test]
    fn cors_origins() {
        assert!(is_local_origin("http://localhost:3000"));
        assert!(is_local_origin("https://127.0.0.1"));
        assert!(is_local_origin("http://[::1]:8080"));
        assert!(!is_local_origin("http://evil.com"));
        assert!(!is_local_origin("http://localhost.evil.com"));
        assert!(origin_allowed("https://chat.example.org", &["https://chat.example.org".into()]));
        assert!(origin_allowed("https://a.example.org", &["https://*".into()]));
        assert!(!origin_allowed("https://chat.example.org", &[]));
    }

    #[test]
    fn patterns_match_whole_labels() {
        let p = "https://*.example.com";
        assert!(origin_matches("https://app.example.com", p));
        assert!(origin_matches("https://a.b.example.com", p));
        assert!(!origin_matches("https://app.example.com.evil.net", p));
        assert!(!origin_matches("https://evilexample.com", p));
        assert!(!origin_matches("https://example.com", p));
        assert!(!origin_matches("http://app.example.com", p));
        assert!(!origin_matches("https://app.example.com:8443", p));
        assert!(origin_matches("https://app.example.com:8443", "https://*.example.com:*"));
        assert!(origin_matches("http://host:3000", "http://host:3000"));
        assert!(!origin_matches("http://host:3001", "http://host:3000"));
    }

    #[test]
    fn keys_compare_by_digest() {
        let keys = ApiKeys::new(["alpha", " beta ", ""]);
        assert!(keys.required());
        assert!(keys.accepts("alpha") && keys.accepts("beta"));
        assert!(!keys.accepts("alph") && !keys.accepts("alphaa") && !keys.accepts(""));
        assert!(!ApiKeys::default().required());
        assert_eq!(format!("{keys:?}"), "ApiKeys(2 key(s))");
    }
}
