//! `corral ps` and `corral stop`: clients of a running `corral serve` (at `CORRAL_HOST`,
//! default 127.0.0.1:11434).

use anyhow::Result;
use clap::Args;

use corral_host::client::Server;

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
pub(crate) fn ps(a: &PsArgs) -> Result<()> {
    let v = Server::configured()?.json(reqwest::Method::GET, "/api/ps", None)?;
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
pub(crate) fn stop(a: &StopArgs) -> Result<()> {
    let body =
        serde_json::json!({"model": a.model, "prompt": "", "keep_alive": 0, "stream": false});
    Server::configured()?.json(reqwest::Method::POST, "/api/generate", Some(&body))?;
    eprintln!("stopped {}", a.model);
    Ok(())
}
