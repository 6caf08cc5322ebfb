//! `corral serve`: the HTTP server (grows into the Ollama and OpenAI APIs).

use std::sync::Arc;

use anyhow::{Context as _, Result};

use crate::{plugins::LoadedPlugin, runtime::Runtime};

/// Binds `host` and serves until SIGINT/SIGTERM.
pub fn serve_blocking(rt: Runtime, plugin: Arc<LoadedPlugin>, host: &str) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(host)
            .await
            .with_context(|| format!("cannot listen on {host}"))?;
        eprintln!("listening on http://{}", listener.local_addr()?);
        let _ = (&rt, &plugin);
        let app = axum::Router::new()
            .route("/", axum::routing::get(|| async { "corral is running" }))
            .route(
                "/api/version",
                axum::routing::get(|| async {
                    axum::Json(serde_json::json!({"version": env!("CARGO_PKG_VERSION")}))
                }),
            );
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        Ok(())
    })
}
