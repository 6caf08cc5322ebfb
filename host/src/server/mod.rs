//! `corral serve`: Ollama's, OpenAI's and Anthropic's HTTP APIs over the scheduler and
//! engine loops.
//!
//! - [`ollama`]: `/api/generate`, `/api/chat`, `/api/embed`, `/api/embeddings`,
//!   `/api/tags`, `/api/show`, `/api/ps`, `/api/version`.
//! - [`openai`]: `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`,
//!   `/v1/models`, `/v1/models/{model}`.
//! - [`anthropic`]: Anthropic's Messages API, `/v1/messages`, `/v1/messages/count_tokens`.
//! - [`responses`]: OpenAI's Responses API, `/v1/responses`, `/v1/responses/{id}`, with
//!   the bounded in-memory store behind `previous_response_id`.
//! - [`store_api`]: `/api/pull`, `/api/push`, `/api/create`, `/api/copy`, `/api/delete`,
//!   `/api/blobs/{digest}`, through corral-registry.
//! - [`scheduler`]: loading, keep-alive, LRU eviction, memory estimate, queue bound.
//! - [`generation`]: prompt, options, constraint, submission, event streams.
//! - [`remote`]: remote models, sent to other servers (`[remotes.NAME]` of the config).
//! - [`metrics`]: `/metrics` in Prometheus text format.
//!
//! Safety nets: request bodies are bounded (32 MiB, 413 beyond; blob uploads are
//! streamed to disk instead), CORS allows local origins only unless `CORRAL_ORIGINS`
//! adds more, and while bound to a loopback address only requests whose `Host` is
//! `localhost`, a loopback IP or the bound address are served (403 otherwise: the DNS
//! rebinding defence of CVE-2024-28224). SIGINT/SIGTERM stop accepting connections, give
//! running requests a grace period (`CORRAL_SHUTDOWN_GRACE`, 10 s) and then cancel them.

pub mod anthropic;
pub mod generation;
pub mod guard;
pub mod logprobs;
pub mod metrics;
pub mod ollama;
pub mod openai;
pub mod remote;
pub mod responses;
pub mod scheduler;
pub mod store_api;
pub mod util;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result};
use axum::{
    Router,
    body::Body,
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    http::{HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, head, post},
};
use tower_http::cors::{AllowOrigin, CorsLayer};

use self::{metrics::Metrics, scheduler::Scheduler, util::ApiError};
use crate::runtime::Runtime;

pub use scheduler::Settings;

/// How long a request body may take to arrive, and a blob upload may go without a byte:
/// `CORRAL_READ_TIMEOUT` seconds, 60 by default.
pub fn read_timeout() -> Duration {
    std::env::var("CORRAL_READ_TIMEOUT")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&s| s > 0)
        .map_or(Duration::from_secs(60), Duration::from_secs)
}

/// Largest request body accepted (blob uploads excepted).
pub const MAX_BODY: usize = 32 << 20;

/// Everything the handlers share.
pub struct AppState {
    /// The scheduler (models, queue).
    pub sched: Arc<Scheduler>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Set at shutdown after the grace period: every running request is cancelled.
    pub cancel_all: Arc<AtomicBool>,
    /// Extra allowed CORS origins.
    pub origins: Vec<String>,
    /// The bound address.
    pub bound: SocketAddr,
    /// API keys; when any is set, requests must carry one.
    pub api_keys: guard::ApiKeys,
    /// Other servers that remote models are sent to.
    pub remotes: Arc<remote::Remotes>,
    /// Responses API answers kept for `previous_response_id` (bounded).
    pub responses: responses::ResponseStore,
}

impl AppState {
    /// Whether shutdown has cancelled the requests.
    pub fn shutting_down(&self) -> bool {
        self.cancel_all.load(Ordering::Relaxed)
    }
}

/// Server options beyond the scheduler's.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Listen address.
    pub host: String,
    /// Scheduler settings.
    pub settings: Settings,
    /// Extra CORS origins (`CORRAL_ORIGINS`, config `origins`).
    pub origins: Vec<String>,
    /// `--models DIR` of `serve`; `None` applies the store-root rule of [`crate::models::store_root`].
    pub models: Option<std::path::PathBuf>,
    /// Grace period at shutdown before running requests are cancelled.
    pub shutdown_grace: Duration,
    /// API keys (`CORRAL_API_KEYS`, `--api-key-file`, config `api_keys`/`api_key_file`).
    pub api_keys: guard::ApiKeys,
}

async fn count_requests(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "other".to_string(), |p| p.as_str().to_string());
    let method = req.method().clone();
    let t = std::time::Instant::now();
    let resp = next.run(req).await;
    state.metrics.request(&path, resp.status().as_u16());
    tracing::debug!(%method, %path, status = resp.status().as_u16(), ms = t.elapsed().as_millis() as u64, "request");
    resp
}

/// Turns axum's own rejections (413 from the body limit, 405, ...) into JSON errors.
async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if (status.is_client_error() || status.is_server_error()) && !is_json {
        let message = match status {
            StatusCode::PAYLOAD_TOO_LARGE => {
                format!("request body too large (the limit is {} MiB)", MAX_BODY >> 20)
            }
            StatusCode::METHOD_NOT_ALLOWED => "method not allowed".to_string(),
            StatusCode::NOT_FOUND => "404 page not found".to_string(),
            s => s.canonical_reason().unwrap_or("error").to_string(),
        };
        // HEAD answers and blob checks keep their bare status.
        if resp.headers().get(header::CONTENT_LENGTH).is_some_and(|l| l == "0")
            && status != StatusCode::PAYLOAD_TOO_LARGE
        {
            return resp;
        }
        return ApiError { status, message }.into_response();
    }
    resp
}

async fn metrics_handler(State(state): State<Arc<AppState>>) -> Response {
    let per_model: Vec<(String, usize, usize)> = state
        .sched
        .loaded()
        .iter()
        .map(|l| (l.model_ref.name.clone(), l.active(), l.queued()))
        .collect();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render(&per_model))
        .into_response()
}

/// Limits a handler's body by reading it here (so the limit answers 413 with JSON).
async fn limit_body(req: Request, next: Next) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    if let Some(len) = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok())
        && len.parse::<u64>().is_ok_and(|n| n > MAX_BODY as u64)
    {
        return Err(too_large());
    }
    // A client that sends its body slowly is dropped after the read timeout.
    let limit = read_timeout();
    let bytes = tokio::time::timeout(limit, axum::body::to_bytes(body, MAX_BODY))
        .await
        .map_err(|_| ApiError {
            status: StatusCode::REQUEST_TIMEOUT,
            message: format!("the request body did not arrive within {} s", limit.as_secs()),
        })?
        .map_err(|e| {
            // Over the limit is a 413; anything else is a body that could not be read (a
            // malformed chunked encoding, a connection cut mid-body): a 400.
            let e = e.into_inner();
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                too_large()
            } else {
                ApiError::bad_request(format!("the request body could not be read: {e}"))
            }
        })?;
    // Parsing costs memory per value: a body of many tiny values is refused unparsed.
    if util::json_values_up_to(&bytes, util::MAX_JSON_VALUES) > util::MAX_JSON_VALUES {
        return Err(ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!(
                "the request body holds more than {} JSON values",
                util::MAX_JSON_VALUES
            ),
        });
    }
    Ok(next.run(Request::from_parts(parts, Body::from(bytes))).await)
}

fn too_large() -> ApiError {
    ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        message: format!("request body too large (the limit is {} MiB)", MAX_BODY >> 20),
    }
}

/// The router with every endpoint and middleware.
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/api/generate", post(ollama::generate))
        .route("/api/chat", post(ollama::chat))
        .route("/api/embed", post(ollama::embed))
        .route("/api/embeddings", post(ollama::embeddings))
        .route("/api/show", post(ollama::show))
        .route("/api/pull", post(store_api::pull))
        .route("/api/push", post(store_api::push))
        .route("/api/create", post(store_api::create))
        .route("/api/copy", post(store_api::copy))
        .route("/api/delete", axum::routing::delete(store_api::delete))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(openai::embeddings))
        .layer(middleware::from_fn(limit_body))
        .layer(DefaultBodyLimit::max(MAX_BODY));
    // Anthropic's routes answer every error in Anthropic's shape.
    let anthropic_api = Router::new()
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/messages/count_tokens", post(anthropic::count_tokens))
        .layer(middleware::from_fn(limit_body))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        // `route_layer`: a layer would wrap this router's fallback too, and the merged
        // router's 404s (`/api/nope`) came out in another API's shape.
        .route_layer(middleware::from_fn(anthropic::error_shape));
    // So do the Responses API's, in OpenAI's.
    let responses_api = Router::new()
        .route("/v1/responses", post(responses::create))
        .layer(middleware::from_fn(limit_body))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .route("/v1/responses/{id}", get(responses::get).delete(responses::delete))
        .route("/v1/responses/{id}/input_items", get(responses::input_items))
        .route_layer(middleware::from_fn(responses::error_shape));
    let extra = state.origins.clone();
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin: &HeaderValue, _| {
            origin.to_str().is_ok_and(|o| guard::origin_allowed(o, &extra))
        }))
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::HEAD,
            Method::OPTIONS,
        ])
        .allow_headers(tower_http::cors::AllowHeaders::mirror_request());
    Router::new()
        .route("/", get(|| async { "corral is running" }).head(|| async { StatusCode::OK }))
        .route("/api/version", get(ollama::version))
        .route("/api/tags", get(ollama::tags))
        .route("/api/ps", get(ollama::ps))
        .route("/v1/models", get(openai::models))
        .route("/v1/models/{*model}", get(openai::model))
        .route("/metrics", get(metrics_handler))
        .route(
            "/api/blobs/{digest}",
            head(store_api::blob_head)
                .post(store_api::blob_post)
                .layer(DefaultBodyLimit::disable()),
        )
        .merge(api)
        .merge(anthropic_api)
        .merge(responses_api)
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn_with_state(state.clone(), guard::api_key_check))
        .layer(middleware::from_fn_with_state(state.clone(), count_requests))
        .layer(cors)
        .layer(middleware::from_fn_with_state(state.clone(), guard::origin_check))
        .layer(middleware::from_fn_with_state(state.clone(), guard::host_check))
        .with_state(state)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Accepts connections and serves `app` on each until `shutdown` completes, then waits for
/// the open connections to finish their requests.
///
/// hyper's HTTP/1 connection with a timer, rather than `axum::serve`, which sets none: a
/// client must send a request's headers within `header_timeout` of starting it (or of
/// the previous response on a kept-alive connection), so a client that opens
/// connections and trickles header bytes cannot hold them open (slowloris); bodies have
/// their own timeout in [`limit_body`].
async fn serve_connections(
    listener: tokio::net::TcpListener,
    app: Router,
    header_timeout: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection from {peer} ended: {e}");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Binds and serves until SIGINT/SIGTERM.
pub fn serve_blocking(rt: Runtime, opts: ServeOptions) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&opts.host)
            .await
            .with_context(|| format!("cannot listen on {}", opts.host))?;
        let bound = listener.local_addr()?;
        // The one store-root rule (`--models`, `CORRAL_MODELS`, the config, the default).
        // A store that cannot be opened stops the server here, as Ollama's does: serving
        // without one answered `list` with an empty store and `create` with a broken pipe.
        let store =
            crate::models::open_store(opts.models.as_deref(), false, &rt.config).map_err(|e| {
                crate::config::ConfigError::Setting(format!(
                    "the model store cannot be opened: {e}; set --models or CORRAL_MODELS to a \
                     writable directory (CORRAL_MODELS_READONLY=1 for a read-only one)"
                ))
            })?;
        let store = Some(store);
        let remotes = Arc::new(remote::Remotes::from_config(&rt.config)?);
        let health = remotes.spawn_health_checks();
        if remotes.off() && !remotes.names().is_empty() {
            tracing::info!("remotes are turned off: remote models answer 503");
        }
        let metrics = Arc::new(Metrics::default());
        let sched = Arc::new(Scheduler::new(opts.settings.clone(), rt, store, metrics.clone()));
        let state = Arc::new(AppState {
            sched: sched.clone(),
            metrics,
            cancel_all: generation::new_cancel_flag(),
            origins: opts.origins.clone(),
            bound,
            api_keys: opts.api_keys.clone(),
            remotes,
            responses: responses::ResponseStore::default(),
        });
        let reaper = {
            let sched = sched.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    sched.reap().await;
                }
            })
        };
        tracing::info!(
            num_parallel = opts.settings.num_parallel,
            max_loaded_models = opts.settings.max_loaded_models,
            max_queue = opts.settings.max_queue,
            keep_alive = ?opts.settings.keep_alive,
            "scheduler settings"
        );
        if !bound.ip().is_loopback() && !opts.api_keys.required() {
            tracing::warn!(
                "listening on {bound}, which other machines can reach, with no API key: anyone \
                 who can reach it can run, pull, push and delete models; set CORRAL_API_KEYS \
                 (or --api-key-file, or [server] api_keys) to require a key"
            );
        }
        // One write of the whole line: scripts and tests wait for it, and `eprintln!` writes
        // its pieces one by one to the unbuffered stderr, so a reader could see half of it.
        {
            use std::io::Write as _;
            let line = format!("listening on http://{bound}\n");
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
        let app = router(state.clone());
        let cancel = state.cancel_all.clone();
        let grace = opts.shutdown_grace;
        let shutdown = async move {
            shutdown_signal().await;
            tracing::info!("shutting down: waiting up to {grace:?} for running requests");
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                tracing::info!("grace period over: cancelling running requests");
                cancel.store(true, Ordering::SeqCst);
            });
        };
        serve_connections(listener, app, read_timeout(), shutdown).await;
        reaper.abort();
        if let Some(h) = health {
            h.abort();
        }
        sched.unload_all().await;
        tracing::info!("stopped");
        Ok(())
    })
}
