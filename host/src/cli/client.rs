//! `corral ps` and `corral stop`: clients of a running `corral serve` (at `CORRAL_HOST`, else
//! the config's `[server] host`, default 127.0.0.1:11434).

use anyhow::Result;
use clap::Args;

use corral_host::runtime::GlobalOptions;

/// `corral ps`.
#[derive(Args, Debug)]
pub(crate) struct PsArgs {
    /// Print the server's JSON.
    #[arg(long)]
    pub json: bool,
}

fn human_size(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 { format!("{:.1} GB", n / 1e9) } else { format!("{:.0} MB", n / 1e6) }
}

/// Lists the models the server has loaded.
pub(crate) fn ps(global: &GlobalOptions, a: &PsArgs) -> Result<()> {
    let server = super::configured_server(global)?;
    let v = server.json(reqwest::Method::GET, "/api/ps", None)?;
    if !v.get("models").is_some_and(serde_json::Value::is_array) {
        return Err(server.unexpected("/api/ps", &v.to_string()));
    }
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
        if let Some(p) = m
            .get("devices")
            .and_then(|d| serde_json::from_value::<corral_host::rpc::Placement>(d.clone()).ok())
        {
            for line in p.lines() {
                println!("    {line}");
            }
        }
    }
    Ok(())
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
