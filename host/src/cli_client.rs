//! `corral ps` and `corral stop`: clients of a running `corral serve` (at `CORRAL_HOST`,
//! default 127.0.0.1:11434).

use anyhow::{Context as _, Result, bail};
use clap::Args;

use corral_host::remote::server_url;

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

async fn call(
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value> {
    let url = format!("{}{path}", server_url());
    let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(120)).build()?;
    let mut req = client.request(method, &url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.with_context(|| {
        format!(
            "could not reach corral at {} (is `corral serve` running? set CORRAL_HOST)",
            server_url()
        )
    })?;
    let status = resp.status();
    let text = resp.text().await.context("reading the server's answer")?;
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    if !status.is_success() {
        let msg = v
            .get("error")
            .and_then(|e| e.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string());
        bail!("server answered {status}: {msg}");
    }
    Ok(v)
}

/// `corral ps`.
#[derive(Args, Debug)]
pub struct PsArgs {
    /// Print the server's JSON.
    #[arg(long)]
    pub json: bool,
}

fn human_size(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 { format!("{:.1} GB", n / 1e9) } else { format!("{:.0} MB", n / 1e6) }
}

/// Lists the models the server has loaded.
pub fn ps(a: &PsArgs) -> Result<()> {
    let v = runtime()?.block_on(call(reqwest::Method::GET, "/api/ps", None))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("{:<40} {:<14} {:>10} {:>8} {:>7}  UNTIL", "NAME", "ID", "SIZE", "CONTEXT", "ACTIVE");
    for m in v["models"].as_array().into_iter().flatten() {
        let digest = m["digest"].as_str().unwrap_or("");
        println!(
            "{:<40} {:<14} {:>10} {:>8} {:>7}  {}",
            m["name"].as_str().unwrap_or("?"),
            &digest[..digest.len().min(12)],
            human_size(m["size"].as_u64().unwrap_or(0)),
            m["context_length"].as_u64().unwrap_or(0),
            m["active_sequences"].as_u64().unwrap_or(0),
            m["expires_at"].as_str().unwrap_or(""),
        );
    }
    Ok(())
}

/// `corral stop`.
#[derive(Args, Debug)]
pub struct StopArgs {
    /// The model to unload.
    pub model: String,
}

/// Unloads a model from the server (a generate request with `keep_alive: 0`).
pub fn stop(a: &StopArgs) -> Result<()> {
    let body =
        serde_json::json!({"model": a.model, "prompt": "", "keep_alive": 0, "stream": false});
    runtime()?.block_on(call(reqwest::Method::POST, "/api/generate", Some(body)))?;
    eprintln!("stopped {}", a.model);
    Ok(())
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
