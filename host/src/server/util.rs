//! Shared pieces of the HTTP layer: the error type with Ollama's status codes, request
//! body parsing with clear messages, the fields a request sent that the server ignores
//! ([`Ignored`]), durations (`keep_alive`) and timestamps.

use crate::errors::ErrorClass;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::{
    http::{HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// An error answered as `{"error": "..."}` with a status code.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// The message a person reads.
    pub message: String,
}

impl ApiError {
    /// 400.
    pub fn bad_request(msg: impl Into<String>) -> Self {
        ApiError { status: StatusCode::BAD_REQUEST, message: msg.into() }
    }
    /// 404.
    pub fn not_found(msg: impl Into<String>) -> Self {
        ApiError { status: StatusCode::NOT_FOUND, message: msg.into() }
    }
    /// 500.
    pub fn internal(msg: impl Into<String>) -> Self {
        ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, message: msg.into() }
    }
    /// 503.
    pub fn busy(msg: impl Into<String>) -> Self {
        ApiError { status: StatusCode::SERVICE_UNAVAILABLE, message: msg.into() }
    }
    /// 403 with `msg`.
    pub fn forbidden(msg: impl Into<String>) -> Self {
        ApiError { status: StatusCode::FORBIDDEN, message: msg.into() }
    }
    /// The model was not found (Ollama's wording).
    pub fn model_not_found(name: &str) -> Self {
        Self::not_found(format!("model \"{name}\" not found, try pulling it first"))
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}

impl ApiError {
    /// An error of `class` (see [`crate::errors`]) with `message`.
    pub fn of_class(class: ErrorClass, message: impl Into<String>) -> Self {
        let status =
            StatusCode::from_u16(class.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError { status, message: message.into() }
    }
}

impl From<corral_backend_api::BackendError> for ApiError {
    fn from(e: corral_backend_api::BackendError) -> Self {
        ApiError::of_class(ErrorClass::of_backend(e.kind), e.to_string())
    }
}

impl From<corral_generation::options::OptionsError> for ApiError {
    fn from(e: corral_generation::options::OptionsError) -> Self {
        ApiError::bad_request(e.to_string())
    }
}

impl From<corral_registry::Error> for ApiError {
    fn from(e: corral_registry::Error) -> Self {
        ApiError::of_class(ErrorClass::of_registry(&e), e.to_string())
    }
}

impl From<crate::models::ModelsError> for ApiError {
    fn from(e: crate::models::ModelsError) -> Self {
        ApiError::of_class(e.class(), e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message });
        (self.status, axum::Json(body)).into_response()
    }
}

/// Parses a JSON request body into `T`, with a message that says what is wrong and where
/// (the field, for a value of the wrong type: `invalid request: top_k: invalid type:
/// ...`). An empty body is refused (Ollama: "missing request body").
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("missing request body"));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let what = match e.inner().classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                "invalid JSON in the request body"
            }
            _ => "invalid request",
        };
        let path = e.path().to_string();
        let at = if path.is_empty() || path == "." { String::new() } else { format!("{path}: ") };
        ApiError::bad_request(format!("{what}: {at}{}", e.inner()))
    })?;
    de.end()
        .map_err(|e| ApiError::bad_request(format!("invalid JSON in the request body: {e}")))?;
    Ok(parsed)
}

/// Most JSON values (objects, arrays, strings, keys, numbers, literals) a request body
/// may hold. Parsing costs memory per value, not per byte: 31 MiB of `{},{},...` in a
/// `tools` array parsed into 890 MB; at this bound a body parses into at most ~200 MB.
/// Real bodies hold far fewer (an image is one string; a 100,000-message conversation
/// about half a million).
pub const MAX_JSON_VALUES: usize = 1 << 21;

/// The JSON values `body` holds, counted up to `limit` without parsing (a value past
/// `limit` stops the count): an object, an array, a string (a key counts as one), or a
/// number or literal. Malformed JSON counts somehow; the parser reports it.
pub fn json_values_up_to(body: &[u8], limit: usize) -> usize {
    let mut count = 0;
    let mut in_string = false;
    let mut escaped = false;
    // Whether the last structural byte outside strings opens a place for a value.
    let mut value_may_start = true;
    for &b in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                count += 1;
                value_may_start = false;
            }
            b'{' | b'[' => {
                count += 1;
                value_may_start = true;
            }
            b',' | b':' => value_may_start = true,
            b'}' | b']' => value_may_start = false,
            b' ' | b'\t' | b'\n' | b'\r' => {}
            _ => {
                if value_may_start {
                    count += 1;
                    value_may_start = false;
                }
            }
        }
        if count > limit {
            break;
        }
    }
    count
}

/// The response header that names the request fields the server ignored.
pub const IGNORED_FIELDS_HEADER: &str = "x-corral-ignored-fields";

/// Names at most this many ignored fields in [`IGNORED_FIELDS_HEADER`] (then `...`).
const MAX_IGNORED_NAMED: usize = 32;
/// Characters of one field name kept in the header.
const MAX_IGNORED_NAME: usize = 64;

/// The fields of a request that the server accepted without acting on them: top-level
/// fields the endpoint does not know (a newer client's, another server's extension, a
/// typo) and keys of Ollama's `options` that are no option at all. Each is logged at
/// debug level, and [`Ignored::apply`] names them in the [`IGNORED_FIELDS_HEADER`]
/// response header, so that a typo can still be found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Ignored {
    endpoint: &'static str,
    names: Vec<String>,
}

impl Ignored {
    /// The unknown top-level fields of a request to `endpoint` (its flattened `extra`).
    pub fn of(endpoint: &'static str, extra: &Map<String, Value>) -> Self {
        let mut me = Ignored { endpoint, names: Vec::new() };
        me.add("", extra.keys().cloned());
        me
    }

    /// Adds ignored `names` found under `prefix` (`"options."`, `"stream_options."`).
    pub fn add(&mut self, prefix: &str, names: impl IntoIterator<Item = String>) {
        for name in names {
            let name = format!("{prefix}{name}");
            tracing::debug!(endpoint = self.endpoint, field = %name, "ignoring a request field");
            self.names.push(name);
        }
    }

    /// Adds the keys of Ollama's `options` object that are no option (Ollama warns
    /// "invalid option provided" and ignores them; so does corral). An `options` value
    /// that does not parse is left to the request's own check (a 400).
    pub fn add_options(&mut self, options: Option<&Value>) {
        let Some(o) = options else { return };
        let Ok(parsed) = corral_generation::options::SamplingOptions::from_json(o) else {
            return;
        };
        let unknown: Vec<String> = parsed.unknown_options().map(str::to_string).collect();
        for name in &unknown {
            tracing::warn!(endpoint = self.endpoint, option = %name, "invalid option provided; ignored");
        }
        self.add("options.", unknown);
    }

    /// The names, in the order found.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The header's value: the names (control characters, commas and non-ASCII shown as
    /// `?`, each cut at 64 characters), at most 32 of them; `None` when there are none.
    pub fn header_value(&self) -> Option<HeaderValue> {
        if self.names.is_empty() {
            return None;
        }
        let mut parts: Vec<String> = self
            .names
            .iter()
            .take(MAX_IGNORED_NAMED)
            .map(|n| {
                n.chars()
                    .take(MAX_IGNORED_NAME)
                    .map(|c| if c.is_ascii_graphic() && c != ',' { c } else { '?' })
                    .collect()
            })
            .collect();
        if self.names.len() > MAX_IGNORED_NAMED {
            parts.push("...".into());
        }
        HeaderValue::from_str(&parts.join(", ")).ok()
    }

    /// `resp` with the [`IGNORED_FIELDS_HEADER`] header when fields were ignored.
    pub fn apply(&self, mut resp: Response) -> Response {
        if let Some(v) = self.header_value() {
            resp.headers_mut().insert(IGNORED_FIELDS_HEADER, v);
        }
        resp
    }
}

/// A request body that accepts fields it does not know (see [`Ignored`]): they land in a
/// flattened `extra` map.
pub trait Lenient {
    /// The request's unknown top-level fields.
    fn extra(&self) -> &Map<String, Value>;
    /// Ollama's `options`, whose unknown keys are named too.
    fn options(&self) -> Option<&Value> {
        None
    }
    /// Adds ignored fields of nested objects (`stream_options.x`).
    fn nested(&self, _ignored: &mut Ignored) {}
}

/// Parses `body` as a `T`, runs `handler` on it and names the fields it ignored in the
/// response ([`IGNORED_FIELDS_HEADER`], errors included). A body that does not parse,
/// or a known field of the wrong type, is a 400 in the endpoint's error shape (`E`).
pub async fn lenient<T, E, Fut>(
    endpoint: &'static str,
    body: &[u8],
    handler: impl FnOnce(T) -> Fut,
) -> Response
where
    T: DeserializeOwned + Lenient,
    E: IntoResponse + From<ApiError>,
    Fut: std::future::Future<Output = Result<Response, E>>,
{
    let req: T = match parse_body(body) {
        Ok(r) => r,
        Err(e) => return E::from(e).into_response(),
    };
    let mut ignored = Ignored::of(endpoint, req.extra());
    ignored.add_options(req.options());
    req.nested(&mut ignored);
    ignored.apply(handler(req).await.unwrap_or_else(IntoResponse::into_response))
}

/// Parses a JSON request body (an object) into `T` for the APIs that accept fields they
/// do not know: a malformed known field is a 400 that names it
/// (`messages[2].content: invalid type: ...`); the names of the top-level fields not in
/// `known` are returned (for a debug log), and otherwise ignored.
pub fn parse_body_lenient<T: DeserializeOwned>(
    body: &[u8],
    known: &[&str],
) -> Result<(T, Vec<String>), ApiError> {
    let value: serde_json::Value = parse_body(body)?;
    let Some(fields) = value.as_object() else {
        return Err(ApiError::bad_request("the request body must be a JSON object"));
    };
    let unknown = fields.keys().filter(|k| !known.contains(&k.as_str())).cloned().collect();
    let parsed = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            ApiError::bad_request(format!("invalid request: {}", e.inner()))
        } else {
            ApiError::bad_request(format!("invalid request: {path}: {}", e.inner()))
        }
    })?;
    Ok((parsed, unknown))
}

/// `keep_alive` as Ollama accepts it: a number of seconds, or a Go duration string
/// (`"5m"`, `"1h30m"`, `"10s"`, `"-1"`, `"0"`). `None` means "forever" (negative).
pub fn parse_keep_alive(v: &serde_json::Value) -> Result<Option<Duration>, ApiError> {
    let bad = || {
        ApiError::bad_request(format!(
            "invalid keep_alive {v}: use a number of seconds or a duration such as \"5m\" (negative keeps the model loaded forever)"
        ))
    };
    match v {
        serde_json::Value::Number(n) => {
            let secs = n.as_f64().ok_or_else(bad)?;
            if secs < 0.0 {
                Ok(None)
            } else if secs.is_finite() && secs < 1e12 {
                Ok(Some(Duration::from_secs_f64(secs)))
            } else {
                Err(bad())
            }
        }
        serde_json::Value::String(s) => parse_duration(s).ok_or_else(bad),
        _ => Err(bad()),
    }
}

/// A Go-style duration string (`1h2m3.5s`, `300ms`, `-1m`, a bare number of seconds).
/// `Some(None)` for a negative duration (forever).
pub fn parse_duration(s: &str) -> Option<Option<Duration>> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(n) = s.parse::<f64>() {
        if n < 0.0 {
            return Some(None);
        }
        return (n.is_finite() && n < 1e12).then(|| Some(Duration::from_secs_f64(n)));
    }
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let mut total = 0f64;
    while !rest.is_empty() {
        let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if end == 0 {
            return None;
        }
        let n: f64 = rest[..end].parse().ok()?;
        rest = &rest[end..];
        let uend = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = match &rest[..uend] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[uend..];
        total += n * unit;
    }
    if neg && total > 0.0 {
        return Some(None);
    }
    (total.is_finite() && total < 1e12).then(|| Some(Duration::from_secs_f64(total)))
}

/// RFC 3339 time with nanoseconds in UTC, as Ollama writes `created_at`.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}

/// Now, RFC 3339.
pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Nanoseconds of a duration as Ollama's integer fields carry them.
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Standard base64 (with padding), for OpenAI's `encoding_format: "base64"`.
pub fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 { T[(n >> 6) as usize & 63] as char } else { '=' });
        out.push(if c.len() > 2 { T[n as usize & 63] as char } else { '=' });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("5m"), Some(Some(Duration::from_secs(300))));
        assert_eq!(parse_duration("1h30m"), Some(Some(Duration::from_secs(5400))));
        assert_eq!(parse_duration("250ms"), Some(Some(Duration::from_millis(250))));
        assert_eq!(parse_duration("0"), Some(Some(Duration::ZERO)));
        assert_eq!(parse_duration("-1"), Some(None));
        assert_eq!(parse_duration("-1m"), Some(None));
        assert_eq!(parse_duration("10"), Some(Some(Duration::from_secs(10))));
        assert_eq!(parse_duration("abc"), None);
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn keep_alive_numbers_and_strings() {
        use serde_json::json;
        assert_eq!(parse_keep_alive(&json!(0)).unwrap(), Some(Duration::ZERO));
        assert_eq!(parse_keep_alive(&json!(-1)).unwrap(), None);
        assert_eq!(parse_keep_alive(&json!("2s")).unwrap(), Some(Duration::from_secs(2)));
        assert!(parse_keep_alive(&json!(true)).is_err());
    }

    #[test]
    fn timestamps_and_base64() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_251_200); // 2024-03-01
        assert_eq!(&rfc3339(t)[..10], "2024-03-01");
        assert_eq!(base64(b"hello"), "aGVsbG8=");
        assert_eq!(base64(b"hi!"), "aGkh");
        assert_eq!(base64(b"h"), "aA==");
    }

    #[test]
    fn ignored_fields_are_named_in_a_bounded_header() {
        use serde_json::json;
        let extra: Map<String, Value> =
            serde_json::from_value(json!({"foo": 1, "b\u{e9}r,\n": true})).unwrap();
        let mut ig = Ignored::of("/test", &extra);
        ig.add_options(Some(&json!({"top_k": 3, "num_gpu": 1, "tmperature": 0.1})));
        // In the request's order (serde_json keeps it: `preserve_order`).
        assert_eq!(ig.names(), ["foo", "b\u{e9}r,\n", "options.tmperature"]);
        let v = ig.header_value().unwrap();
        assert_eq!(v.to_str().unwrap(), "foo, b?r??, options.tmperature");
        let resp = ig.apply(axum::http::StatusCode::OK.into_response());
        assert_eq!(resp.headers()[IGNORED_FIELDS_HEADER], "foo, b?r??, options.tmperature");
        // Wrongly typed options are the request's 400, not an ignored field.
        let mut ig = Ignored::default();
        ig.add_options(Some(&json!({"top_k": "x", "bogus": 1})));
        assert!(ig.header_value().is_none());
        let many: Map<String, Value> = (0..40).map(|i| (format!("f{i:02}"), json!(i))).collect();
        let v = Ignored::of("/t", &many).header_value().unwrap();
        assert!(v.to_str().unwrap().ends_with("f31, ..."), "{v:?}");
        let long: Map<String, Value> = [("x".repeat(200), json!(1))].into_iter().collect();
        assert_eq!(Ignored::of("/t", &long).header_value().unwrap().len(), 64);
    }

    #[test]
    fn body_errors_are_clear() {
        let e = parse_body::<serde_json::Value>(b"{oops").unwrap_err();
        assert!(e.message.contains("invalid JSON"), "{}", e.message);
        let e = parse_body::<serde_json::Value>(b"").unwrap_err();
        assert!(e.message.contains("missing request body"));
        let e = parse_body::<serde_json::Value>(b"{} x").unwrap_err();
        assert!(e.message.contains("invalid JSON"), "{}", e.message);
        #[derive(serde::Deserialize, Debug)]
        struct Req {
            #[allow(dead_code)]
            top_k: Option<i64>,
            #[serde(flatten)]
            extra: Map<String, Value>,
        }
        let e = parse_body::<Req>(br#"{"top_k": "x", "foo": 1}"#).unwrap_err();
        assert!(e.message.starts_with("invalid request: top_k: invalid type"), "{}", e.message);
        let ok = parse_body::<Req>(br#"{"top_k": 1, "foo": 1}"#).unwrap();
        assert_eq!(ok.extra.keys().collect::<Vec<_>>(), ["foo"]);
    }

    #[test]
    fn json_values_are_counted_without_parsing() {
        assert_eq!(json_values_up_to(b"{}", 10), 1);
        // The object, 2 keys, a string, an array and its 3 numbers and literals.
        assert_eq!(json_values_up_to(br#"{"a": "x,[{", "b": [1, -2.5e3, true]}"#, 100), 8);
        // Escaped quotes stay inside the string.
        assert_eq!(json_values_up_to(br#"["a\"b,c", null]"#, 100), 3);
        // 1,000 empty objects and their array; the count stops past the limit.
        let many = format!("[{}]", vec!["{}"; 1000].join(","));
        assert_eq!(json_values_up_to(many.as_bytes(), 10_000), 1001);
        assert_eq!(json_values_up_to(many.as_bytes(), 10), 11);
        // Numbers, with and without spaces around the commas.
        assert_eq!(json_values_up_to(b"[1,2 , 3,\n4]", 100), 5);
    }

    #[test]
    fn lenient_bodies_name_the_bad_field_and_list_unknown_ones() {
        #[derive(serde::Deserialize, Debug)]
        struct Body {
            #[allow(dead_code)]
            n: Option<i64>,
        }
        let (_, unknown) = parse_body_lenient::<Body>(br#"{"n": 1, "x": 2}"#, &["n"]).unwrap();
        assert_eq!(unknown, ["x"]);
        let e = parse_body_lenient::<Body>(br#"{"n": "one"}"#, &["n"]).unwrap_err();
        assert!(e.message.starts_with("invalid request: n: invalid type"), "{}", e.message);
        assert!(parse_body_lenient::<Body>(b"[1]", &["n"]).is_err());
    }
}
