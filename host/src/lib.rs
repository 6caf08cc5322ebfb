//! # corral (the host)
//!
//! The `corral` binary: CLI, config, hardware probe, plugin discovery/loading/choice,
//! the engine loop over a plugin's contexts, the conformance suite, and (in `serve`)
//! the HTTP APIs. It links no engine and no GPU library: engines are plugins opened at
//! run time through `corral-backend-api`.
//!
//! Code map: [`config`] (TOML file), [`manifest`] and [`plugins`] (discovery, loading,
//! choice), [`engine`] (safe handles over plugin objects), [`conformance`] (the shared
//! backend suite), [`runtime`] (what every command does first: config, probe, choice).

pub mod cli_run;
pub mod config;
pub mod conformance;
pub mod engine;
pub mod engine_loop;
pub mod gotemplate;
pub mod manifest;
pub mod models;
pub mod plugins;
pub mod prompt;
pub mod remote;
pub mod runtime;
pub mod server;
