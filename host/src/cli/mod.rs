//! The command line: one file per command family. The library (`corral_host`) holds no
//! clap types; these modules turn arguments into its calls and print the results.
//!
//! - `system` holds `probe`, `backends`, `plugin check` and `model generate`;
//! - `serve` holds `serve`;
//! - `worker` holds `worker` (lending this machine's devices over RPC);
//! - `run` holds `run` and `bench` in this process;
//! - `chat` holds the interactive chat of `run` (both paths): its commands and Ctrl-C;
//! - `remote` holds `run` through a running server;
//! - `output` holds what `run` writes on both paths: the answer, its thinking;
//! - `models` holds `create`, `list`, `show`, `cp`, `rm`, `pull` and `push`;
//! - `client` holds `ps` and `stop`.

pub(crate) mod chat;
pub(crate) mod client;
pub(crate) mod models;
pub(crate) mod output;
pub(crate) mod remote;
pub(crate) mod run;
pub(crate) mod scaffold;
pub(crate) mod serve;
pub(crate) mod system;
pub(crate) mod worker;

use anyhow::Result;
use corral_host::{client::Server, runtime::GlobalOptions};

/// An argument the user can fix, found by the command line itself: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Usage(pub String);

/// A file or plugin the user named that does not exist: exit code 3.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Missing(pub String);

/// The config's `[server] host` (the config loaded and checked as every command loads
/// it), for the address the client commands use: the one `serve` listens on.
pub(crate) fn config_host(global: &GlobalOptions) -> Result<Option<String>> {
    let (config, _) = corral_host::config::Config::load(global.config.as_deref())?;
    Ok(config.server.host)
}

/// The `corral serve` at the configured address when one answers there.
pub(crate) fn reachable_server(global: &GlobalOptions) -> Result<Option<Server>> {
    Server::reachable(config_host(global)?.as_deref())
}

/// The `corral serve` at the configured address, answering or not.
pub(crate) fn configured_server(global: &GlobalOptions) -> Result<Server> {
    Server::configured(config_host(global)?.as_deref())
}

/// An error as one line: each cause once (a context that already quotes its cause,
/// `cannot read X: Is a directory`, is not followed by `: Is a directory` again).
pub(crate) fn error_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if s.trim().is_empty() || parts.iter().any(|p| p.contains(s.as_str())) {
            continue;
        }
        parts.push(s);
    }
    parts.join(": ")
}

/// A table as Ollama prints `list` and `ps` (its tablewriter settings): the header, then
/// the rows, every column left-aligned and padded to its widest cell, four spaces between
/// columns, no borders and no trailing blanks. One line each: the header's first.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    let header: Vec<String> = header.iter().map(|h| (*h).to_string()).collect();
    let mut widths = vec![0usize; header.len()];
    for r in std::iter::once(&header).chain(rows) {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = Vec::new();
    for r in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (c, w)) in r.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("    ");
            }
            line.push_str(c);
            if i + 1 < r.len() {
                line.extend(std::iter::repeat_n(' ', w.saturating_sub(c.chars().count())));
            }
        }
        out.push(line.trim_end().to_string());
    }
    out
}
