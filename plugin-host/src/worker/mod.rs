//! Engines in their own processes. In process isolation a plugin is never opened in the
//! host: each loaded model gets a worker process (the `corral` binary's hidden
//! `engine-worker` subcommand, [`serve::run_worker`]) that opens the plugin with the
//! same loader and checks and serves the backend calls over two Unix-socket channels,
//! with logits rows in shared memory ([`shm`]). The host's handles over it
//! ([`handles::WorkerBackend`]) implement the same interfaces as the in-process ones, so
//! the engine loop and the scheduler do not change. A worker that aborts, segfaults,
//! exits or hangs (no answer within the watchdog) fails the calls on its model with an
//! error that says what happened ([`process`]); the host and the other models go on.

pub mod handles;
pub mod process;
mod protocol;
pub mod serve;
mod shm;

/// How every message about a worker that died or hung begins.
pub const DEATH_MARK: &str = "the engine worker ";

pub use handles::WorkerBackend;
pub use process::WorkerCommand;
pub use protocol::{read_frame, write_frame};
pub use serve::{WorkerError, run_worker};
