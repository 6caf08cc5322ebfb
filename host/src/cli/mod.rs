//! The command line: one file per command family. The library (`corral_host`) holds no
//! clap types; these modules turn arguments into its calls and print the results.
//!
//! - [`system`]: `probe`, `backends`, `plugin check`, `model generate`.
//! - [`serve`]: `serve`.
//! - [`run`]: `run` and `bench` in this process.
//! - [`remote`]: `run` through a running server.
//! - [`models`]: `create`, `list`, `show`, `cp`, `rm`, `pull`, `push`.
//! - [`client`]: `ps`, `stop`.

pub mod client;
pub mod models;
pub mod remote;
pub mod run;
pub mod serve;
pub mod system;
