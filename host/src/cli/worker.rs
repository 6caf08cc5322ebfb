//! `corral worker`: lends this machine's devices to `corral serve`, `run` and `bench` on
//! other machines (their `--rpc HOST:PORT`), through the chosen engine's remote protocol
//! (llama.cpp: ggml's RPC server). It runs in the foreground, in this process: it is the
//! worker, with nothing else to protect, and Ctrl-C (SIGINT) or SIGTERM end it.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use clap::Args;
use corral_backend_api::{DeviceKind, LoadOptions, Tuple2};
use corral_host::runtime::{GlobalOptions, Runtime};

/// The port llama.cpp's own `rpc-server` listens on by default.
const DEFAULT_LISTEN: &str = "127.0.0.1:50052";

/// `corral worker`.
#[derive(Args, Debug)]
pub(crate) struct WorkerArgs {
    /// Address and port to listen on. Loopback by default: the RPC protocol has no
    /// authentication, so reach it through an SSH tunnel, or see
    /// --allow-unauthenticated-network.
    #[arg(long, env = "CORRAL_WORKER_LISTEN", default_value = DEFAULT_LISTEN, value_name = "ADDR:PORT")]
    pub listen: String,
    /// Compute threads (default: the engine's choice, all the CPUs it may use).
    #[arg(long, short = 't')]
    pub threads: Option<u32>,
    /// Keep the tensors peers send here, by hash, so that loading the same model again
    /// sends hashes instead of weights.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Backend to lend through (name, variant or name:variant); default: the one `serve`
    /// would choose for GGUF models.
    #[arg(long, env = "CORRAL_BACKEND")]
    pub backend: Option<String>,
    /// Listen on an address other machines can reach. The RPC protocol has no
    /// authentication or encryption and trusts its peer completely: anyone who can
    /// connect can use this machine's devices and read or write their memory. Use it only
    /// on a private network that only trusted machines reach.
    #[arg(long)]
    pub allow_unauthenticated_network: bool,
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
}

/// Runs the worker until it is stopped.
pub(crate) fn worker(global: &GlobalOptions, a: &WorkerArgs) -> Result<()> {
    let loopback = corral_probe::rpc::is_loopback(&a.listen)
        .with_context(|| format!("--listen {}", a.listen))?;
    if !loopback && !a.allow_unauthenticated_network {
        bail!(
            "refusing to listen on {}: the RPC protocol has no authentication or encryption, \
             and whoever connects can use this machine's devices and read and write their \
             memory. Listen on loopback and reach it through an SSH tunnel (on the server's \
             machine: ssh -N -L 50052:127.0.0.1:50052 THIS-HOST, then --rpc \
             127.0.0.1:50052), or, on a private network only trusted machines reach, add \
             --allow-unauthenticated-network",
            a.listen
        );
    }
    let rt = Runtime::new(global)?;
    let (plugin, _) = rt.choose(&rt.selector(a.backend.as_deref(), Some("gguf")))?;
    // Said before serving, so a port in use is one clear line (ggml's server only prints
    // "Failed to create server socket"). ggml binds with SO_REUSEADDR, as std does.
    drop(
        std::net::TcpListener::bind(&a.listen)
            .with_context(|| format!("cannot listen on {}", a.listen))?,
    );
    let devices = plugin.devices();
    let gpus: Vec<_> = devices.iter().filter(|d| d.kind != DeviceKind::Cpu).collect();
    let lent: Vec<_> = if gpus.is_empty() {
        devices.iter().filter(|d| d.kind == DeviceKind::Cpu).collect()
    } else {
        gpus
    };
    // An engine reports no free memory for the CPU: the machine's memory available now
    // (its cgroup's limit included) is what the CPU can give.
    let ram_free = || {
        corral_probe::probe(&corral_probe::ProbeOptions {
            use_runtime_libraries: false,
            ..corral_probe::ProbeOptions::system()
        })
        .memory
        .effective_available_bytes
    };
    let what: Vec<String> = lent
        .iter()
        .map(|d| {
            let free = if d.kind == DeviceKind::Cpu && d.memory_free == 0 {
                ram_free().unwrap_or(0)
            } else {
                d.memory_free
            };
            if free == 0 { d.name.clone() } else { format!("{}, {} free", d.name, gib(free)) }
        })
        .collect();
    let mut extra = Vec::new();
    if let Some(dir) = &a.cache_dir {
        extra.push(Tuple2(
            corral_backend_api::EXTRA_CACHE_DIR.into(),
            dir.to_string_lossy().into_owned().into(),
        ));
    }
    let options = LoadOptions {
        n_threads: a.threads.unwrap_or(0),
        extra: extra.into(),
        ..Default::default()
    };
    // The engine serves until it is stopped; one that cannot lend its devices says so at
    // once. The banner (on stderr, with the logs: stdout carries no data here) comes only
    // once the engine has taken the work, so a script never sees "listening" from a
    // worker that is not.
    let (tx, rx) = std::sync::mpsc::channel();
    let listen = a.listen.clone();
    let lender = plugin.clone();
    let serving = std::thread::Builder::new()
        .name("rpc-server".into())
        .spawn(move || {
            let r = lender.backend.lend_devices(&listen, options);
            let _ = tx.send(());
            r
        })
        .context("cannot start the worker's thread")?;
    let id = plugin.id();
    let refused = |r: std::thread::Result<Result<(), corral_backend_api::BackendError>>| match r {
        Ok(r) => r.with_context(|| format!("{id} cannot lend devices")),
        Err(_) => Err(anyhow::anyhow!("{id} failed while lending its devices")),
    };
    if rx.recv_timeout(std::time::Duration::from_millis(500)).is_ok() {
        return refused(serving.join());
    }
    eprintln!(
        "corral worker {} ({id}, RPC protocol {}): lends {}; listening on {}",
        env!("CARGO_PKG_VERSION"),
        corral_probe::rpc::PROTOCOL,
        if what.is_empty() { "its devices".to_string() } else { what.join("; ") },
        a.listen
    );
    if !loopback {
        eprintln!(
            "warning: {} is reachable from the network without authentication; only trusted \
             machines may reach it",
            a.listen
        );
    }
    refused(serving.join())
}
