//! # corral (the host library)
//!
//! Everything `corral` does between its command line and the engines, with no `unsafe`
//! code (the plugin ABI's unsafe half lives in `corral-plugin-host`) and no CLI types
//! (those live in the binary, `src/cli/`).
//!
//! - [`config`]: the TOML config file.
//! - [`runtime`]: config + probe + plugin catalog, what every command does first.
//! - [`models`]: the one model resolution (argument → [`models::ModelRef`]) and the
//!   store-root rule.
//! - [`errors`]: the one mapping from an error to an exit code and an HTTP status.
//! - [`prompt`]: chat templates → tokens.
//! - [`template_sandbox`]: untrusted templates rendered in a sandbox process with bounded
//!   memory, stack and time.
//! - [`engine_loop`]: continuous batching over one model's context, one thread per
//!   loaded model.
//! - [`client`]: talking to a running `corral serve` (finding it, requests, streams).
//! - [`server`]: `corral serve`: the HTTP APIs and the scheduler.
#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod engine_loop;
pub mod errors;
pub mod kv_cache;
pub mod models;
pub mod prompt;
pub mod rpc;
pub mod runtime;
pub mod server;
pub mod template_sandbox;
