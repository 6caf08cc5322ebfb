//! `corral ps` and `corral stop`: clients of a running `corral serve` (at `CORRAL_HOST`, else
//! the config's `[server] host`, default 127.0.0.1:11434).

use std::time::SystemTime;

use anyhow::Result;
use clap::Args;

use corral_host::runtime::GlobalOptions;

/// `corral ps`.
#[derive(Args, Debug)]
pub(crate) struct PsArgs {
    /// Only the models whose name starts with this (as `ollama ps NAME`).
    pub prefix: Option<String>,
    /// Print the server's JSON.
    #[arg(long)]
    pub json: bool,
}

/// Where a loaded model is, as `ollama ps` says it: `100% GPU`, `100% CPU`, or the split
/// `48%/52% CPU/GPU`, from its size and the part of it in GPU memory.
pub(crate) fn processor(size: u64, size_vram: u64) -> String {
    if size_vram == 0 {
        "100% CPU".into()
    } else if size_vram == size {
        "100% GPU".into()
    } else if size_vram > size || size == 0 {
        "Unknown".into()
    } else {
        let cpu = ((size - size_vram) as f64 / size as f64 * 100.0).round() as u64;
        format!("{cpu}%/{}% CPU/GPU", 100 - cpu)
    }
}

/// When a loaded model unloads, as `ollama ps` says it: `4 minutes from now`, `Forever`
/// (kept loaded, or in use: corral's server then sends a far-off time), `Stopping...`
/// once the time has passed.
pub(crate) fn until(expires_at: &str, now: SystemTime) -> String {
    match super::models::parse_time(expires_at) {
        None => "-".into(),
        Some(t) if t <= now => "Stopping...".into(),
        Some(t) => super::models::human_time(t, now),
    }
}

/// Lists the models the server has loaded: NAME, ID, SIZE, PROCESSOR, CONTEXT, UNTIL, as
/// `ollama ps` prints them; the devices of a model spread over several (RPC workers)
/// below its row.
pub(crate) fn ps(global: &GlobalOptions, a: &PsArgs) -> Result<()> {
    let server = super::configured_server(global)?;
    let mut v = server.json(reqwest::Method::GET, "/api/ps", None)?;
    if !v.get("models").is_some_and(serde_json::Value::is_array) {
        return Err(server.unexpected("/api/ps", &v.to_string()));
    }
    // `ps NAME`: the models whose name starts with it, in the table and in the JSON alike.
    if let (Some(p), Some(models)) = (&a.prefix, v["models"].as_array_mut()) {
        models.retain(|m| model_name(m).starts_with(p.as_str()));
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let now = SystemTime::now();
    let mut rows = Vec::new();
    let mut below = Vec::new();
    for m in v["models"].as_array().into_iter().flatten() {
        let text = |k: &str| m.get(k).and_then(serde_json::Value::as_str).unwrap_or_default();
        let number = |k: &str| m.get(k).and_then(serde_json::Value::as_u64);
        let name = model_name(m);
        let digest = text("digest").trim_start_matches("sha256:");
        let size = number("size").unwrap_or(0);
        rows.push(vec![
            name.to_string(),
            if digest.is_empty() { "-".into() } else { digest.chars().take(12).collect() },
            super::models::human_bytes(size),
            processor(size, number("size_vram").unwrap_or(0)),
            number("context_length").map_or_else(|| "-".into(), |c| c.to_string()),
            until(text("expires_at"), now),
        ]);
        below.push(
            m.get("devices")
                .and_then(|d| serde_json::from_value::<corral_host::rpc::Placement>(d.clone()).ok())
                .map(|p| p.lines())
                .unwrap_or_default(),
        );
    }
    let lines = super::table(&["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"], &rows);
    let mut below = below.into_iter();
    for (i, line) in lines.iter().enumerate() {
        println!("{line}");
        if i > 0 {
            for extra in below.next().into_iter().flatten() {
                println!("    {extra}");
            }
        }
    }
    Ok(())
}

/// A loaded model's name in `/api/ps`: `name`, else `model`.
fn model_name(m: &serde_json::Value) -> &str {
    let text = |k: &str| m.get(k).and_then(serde_json::Value::as_str).unwrap_or_default();
    if text("name").is_empty() { text("model") } else { text("name") }
}

/// `corral stop`.
#[derive(Args, Debug)]
pub(crate) struct StopArgs {
    /// The model to unload.
    pub model: String,
}

/// Unloads a model from the server (a generate request with `keep_alive: 0`).
pub(crate) fn stop(global: &GlobalOptions, a: &StopArgs) -> Result<()> {
    let body =
        serde_json::json!({"model": a.model, "prompt": "", "keep_alive": 0, "stream": false});
    let server = super::configured_server(global)?;
    let v = server.json(reqwest::Method::POST, "/api/generate", Some(&body))?;
    if v.get("done").and_then(serde_json::Value::as_bool) != Some(true) {
        return Err(server.unexpected("/api/generate", &v.to_string()));
    }
    eprintln!("stopped {}", a.model);
    Ok(())
}
