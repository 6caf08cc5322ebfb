//! The command line: one file per command family. The library (`corral_host`) holds no
//! clap types; these modules turn arguments into its calls and print the results.
//!
//! - `system` holds `probe`, `backends`, `plugin check` and `model generate`;
//! - `serve` holds `serve`;
//! - `worker` holds `worker` (lending this machine's devices over RPC);
//! - `run` holds `run` and `bench` in this process;
//! - `remote` holds `run` through a running server;
//! - `models` holds `create`, `list`, `show`, `cp`, `rm`, `pull` and `push`;
//! - `client` holds `ps` and `stop`.

pub(crate) mod client;
pub(crate) mod models;
pub(crate) mod remote;
pub(crate) mod run;
pub(crate) mod scaffold;
pub(crate) mod serve;
pub(crate) mod system;
pub(crate) mod worker;
