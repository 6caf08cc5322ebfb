//! The `corral` command line. See `corral --help`. The commands live in [`cli`].
#![forbid(unsafe_code)]

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use corral_host::runtime::GlobalOptions;

mod cli;

use cli::{client as cli_client, models as cli_models, run as cli_run, serve as cli_serve, system};

/// Run language models on any hardware; engines are plugins.
///
/// The commands that touch models (run, list, show, create, cp, rm, pull, push; ps and
/// stop always) go through the `corral serve` at CORRAL_HOST (else the config's [server] host, else OLLAMA_HOST; default 127.0.0.1:11434)
/// when one answers there, so they see and change the server's store and loaded models.
/// When none answers, they work on the local model store in this process. `--local`
/// forces the local store, and so do `--models DIR` and `--models-readonly`.
#[derive(Parser, Debug)]
#[command(name = "corral", version, about)]
struct Cli {
    /// Config file (default: ~/.config/corral/config.toml, then /etc/corral/config.toml).
    #[arg(long, global = true, env = "CORRAL_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Extra directory to search for backend plugins (repeatable; also CORRAL_PLUGIN_PATH).
    #[arg(long = "plugin-dir", global = true, value_name = "DIR")]
    plugin_dirs: Vec<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one engine worker (started by corral itself for process isolation).
    #[command(name = "engine-worker", hide = true)]
    EngineWorker {
        /// The host's pid: the worker ends when it is gone.
        #[arg(long)]
        parent: u32,
    },
    /// Open one plugin library and print what was found as JSON (started by corral
    /// itself, so a library that crashes takes only this process down).
    #[command(name = "plugin-inspect", hide = true)]
    PluginInspect {
        /// The plugin's manifest.
        manifest: PathBuf,
        /// Also run the plugin's init with these options (a JSON object).
        #[arg(long)]
        init: Option<String>,
    },
    /// Render chat templates for the host in a sandbox (started by corral itself).
    #[command(name = "template-sandbox", hide = true)]
    TemplateSandbox {
        /// Address-space limit in bytes.
        #[arg(long)]
        memory: u64,
    },
    /// Show what hardware this machine has (CPU, memory, GPUs, Vulkan devices).
    Probe(system::ProbeArgs),
    /// List backend plugins, which one would be chosen, and why.
    Backends(system::BackendsArgs),
    /// Start the HTTP server (Ollama and OpenAI APIs).
    Serve(cli_serve::ServeArgs),
    /// Lend this machine's devices to corral servers on other machines (their --rpc).
    ///
    /// Runs ggml's RPC server through the llama.cpp backend chosen as `serve` chooses
    /// it, on loopback unless told otherwise. Stop it with Ctrl-C.
    Worker(cli::worker::WorkerArgs),
    /// Run a model: one-shot with a prompt, interactive chat without one.
    ///
    /// Through the `corral serve` at CORRAL_HOST when one answers there (the model stays
    /// loaded in it between runs); in this process otherwise, or with `--local`.
    Run(cli_run::RunArgs),
    /// Measure prompt processing and generation speed (pp512, tg128).
    Bench(cli_run::BenchArgs),
    /// List the models a running server has loaded.
    ///
    /// Always asks the `corral serve` at CORRAL_HOST (else the config's [server] host, else OLLAMA_HOST; default 127.0.0.1:11434).
    Ps(cli_client::PsArgs),
    /// Unload a model from a running server.
    ///
    /// Always asks the `corral serve` at CORRAL_HOST (else the config's [server] host, else OLLAMA_HOST; default 127.0.0.1:11434).
    Stop(cli_client::StopArgs),
    /// Plugin tools.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Model tools.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Create a model from a Modelfile.
    ///
    /// Through the `corral serve` at CORRAL_HOST (else the config's [server] host, else OLLAMA_HOST; default 127.0.0.1:11434) when one
    /// answers there, so it works on the server's store; on the local store otherwise,
    /// or with `--local`, `--models DIR` or `--models-readonly`.
    Create(cli_models::CreateArgs),
    /// List the models in the store.
    ///
    /// Through the `corral serve` at CORRAL_HOST (else the config's [server] host, else OLLAMA_HOST; default 127.0.0.1:11434) when one
    /// answers there, so it works on the server's store; on the local store otherwise,
    /// or with `--local`, `--models DIR` or `--models-readonly`.
    #[command(alias = "ls")]
    List(cli_models::ListArgs),
    /// Show a model's details, Modelfile, parameters, template, system or license.
    ///
    /// Through the `corral serve` at CORRAL_HOST (else the config's [server] host, else OLLAMA_HOST; default 127.0.0.1:11434) when one
    /// answers there, so it works on the server's store; on the local store otherwise,
    /// or with `--local`, `--models DIR` or `--models-readonly`.
    Show(cli_models::ShowArgs),
    /// Copy a model under a new name.
    ///
    /// Through the `corral serve` at CORRAL_HOST (else the config's [server] host, else OLLAMA_HOST; default 127.0.0.1:11434) when one
    /// answers there, so it works on the server's store; on the local store otherwise,
    /// or with `--local`, `--models DIR` or `--models-readonly`.
    Cp(cli_models::CpArgs),
    /// Remove models.
    ///
    /// Through the `corral serve` at CORRAL_HOST (else the config's [server] host, else OLLAMA_HOST; default 127.0.0.1:11434) when one
    /// answers there, so it works on the server's store; on the local store otherwise,
    /// or with `--local`, `--models DIR` or `--models-readonly`.
    Rm(cli_models::RmArgs),
    /// Pull a model from a registry.
    ///
    /// Through the `corral serve` at CORRAL_HOST (else the config's [server] host, else OLLAMA_HOST; default 127.0.0.1:11434) when one
    /// answers there, so it works on the server's store; on the local store otherwise,
    /// or with `--local`, `--models DIR` or `--models-readonly`.
    Pull(cli_models::TransferArgs),
    /// Push a model to a registry.
    ///
    /// Through the `corral serve` at CORRAL_HOST (else the config's [server] host, else OLLAMA_HOST; default 127.0.0.1:11434) when one
    /// answers there, so it works on the server's store; on the local store otherwise,
    /// or with `--local`, `--models DIR` or `--models-readonly`.
    Push(cli_models::TransferArgs),
}

#[derive(Subcommand, Debug)]
enum PluginCommand {
    /// Run the backend conformance suite against a plugin.
    Check(system::CheckArgs),
    /// Write a new plugin crate (a toy engine to start from) that builds into a
    /// loadable plugin.
    New(system::NewArgs),
    /// Check a built plugin (manifest, ABI, that it loads, in a worker process) and copy
    /// it into the user's plugin directory (~/.local/lib/corral/backends).
    Install(system::InstallArgs),
    /// Remove a plugin from the user's plugin directory.
    Remove(system::RemoveArgs),
}

#[derive(Subcommand, Debug)]
enum ModelCommand {
    /// Write a GGUF model with random weights and a real vocabulary (any of the generator's
    /// architectures and weight types).
    Generate(GenerateArgs),
}

/// Arguments of `corral model generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Output file.
    pub output: PathBuf,
    /// Architecture: llama, llama3 (Llama 3.1 RoPE scaling), qwen2, qwen3, gemma2,
    /// gemma3, phi3.
    #[arg(long, default_value = "llama")]
    pub arch: String,
    /// Shape preset (tiny, small, medium, tinyllama), optionally with overrides:
    /// `tiny:n_layer=4,head_dim=32,swa=64`.
    #[arg(long, default_value = "tiny")]
    pub shape: String,
    /// Weight type: f32, f16, q8_0, q6_k, q5_k, q4_k_m (llama.cpp's mix), q4_k, q4_0.
    #[arg(long = "type", default_value = "f32")]
    pub weight_type: String,
    /// Vocabulary: bpe (byte-level BPE) or spm (SentencePiece); default: the
    /// architecture's (spm for gemma2, gemma3, phi3).
    #[arg(long)]
    pub vocab: Option<String>,
    /// Random seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// Logs go to stderr; `CORRAL_LOG` or `RUST_LOG` set the filter (default: `info` for
/// the server, `warn` for one-shot commands), `CORRAL_LOG_FORMAT=json` for JSON lines.
fn init_tracing(default_filter: &str) {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = std::env::var("CORRAL_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| default_filter.to_string());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("warn"));
    let json = std::env::var("CORRAL_LOG_FORMAT").is_ok_and(|f| f == "json");
    // Colours only on a terminal: an engine worker's stderr is a pipe to the server,
    // whose log showed its escape codes as text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true)
        .with_ansi(ansi);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// The template sandboxes' limits: the defaults, or `CORRAL_TEMPLATE_TIMEOUT` (a duration
/// such as `10s`) and `CORRAL_TEMPLATE_MEMORY` (MiB).
fn template_limits() -> corral_host::template_sandbox::SandboxLimits {
    let mut limits = corral_host::template_sandbox::SandboxLimits::default();
    if let Some(t) = std::env::var("CORRAL_TEMPLATE_TIMEOUT")
        .ok()
        .and_then(|v| humantime::parse_duration(v.trim()).ok())
        .filter(|t| !t.is_zero())
    {
        limits.time = t;
    }
    if let Some(mib) =
        std::env::var("CORRAL_TEMPLATE_MEMORY").ok().and_then(|v| v.trim().parse::<u64>().ok())
    {
        limits.memory_bytes = mib.saturating_mul(1 << 20).max(64 << 20);
    }
    limits
}

/// `corral list | head` closes stdout early; `println!` then panics. End quietly instead,
/// as a Unix tool killed by SIGPIPE does (Rust ignores SIGPIPE, and resetting it takes
/// `unsafe`, which this crate forbids).
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let text = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if text.starts_with("failed printing to std") && text.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

/// The exit code of an error: the command line's own bad input (2) and missing things
/// (3), a client setting that is not usable (2), else the one mapping of
/// [`corral_host::errors`].
fn exit_code(e: &anyhow::Error) -> u8 {
    use corral_host::client::ClientError;
    for cause in e.chain() {
        if cause.is::<cli::Usage>() || cause.is::<ClientError>() {
            return 2;
        }
        if cause.is::<cli::Missing>() {
            return 3;
        }
    }
    corral_host::errors::ErrorClass::of(e).exit_code()
}

/// Parses the command line; `run` learns which load flags were given on it (not from
/// the environment), since a run through a server refuses those.
fn parse() -> Cli {
    use clap::{CommandFactory as _, FromArgMatches as _, parser::ValueSource};
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let (Command::Run(a), Some(("run", m))) = (&mut cli.command, matches.subcommand()) {
        a.load_flags = cli_run::LOAD_FLAGS
            .iter()
            .filter(|(id, _)| m.value_source(id) == Some(ValueSource::CommandLine))
            .map(|(_, flag)| *flag)
            .collect();
    }
    cli
}

/// The helpers corral starts (engine workers, template sandboxes) share the terminal's
/// process group, so Ctrl-C reaches them too: it must not end them while `corral run`'s
/// chat cancels only an answer. They end with their parent instead. (A handler stays
/// installed after its listener is dropped, and signals nobody reads are ignored.)
fn ignore_ctrl_c() {
    let caught = tokio::runtime::Builder::new_current_thread().enable_all().build().map(|rt| {
        rt.block_on(async {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        })
    });
    if let Err(e) | Ok(Err(e)) = caught {
        tracing::debug!("cannot ignore Ctrl-C: {e}");
    }
}

fn main() -> ExitCode {
    quiet_on_broken_pipe();
    let cli = parse();
    init_tracing(if matches!(cli.command, Command::Serve(_)) { "info" } else { "warn" });
    if matches!(cli.command, Command::EngineWorker { .. } | Command::TemplateSandbox { .. }) {
        ignore_ctrl_c();
    }
    if let Command::EngineWorker { parent } = cli.command {
        return match corral_plugin_host::worker::run_worker(parent) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        };
    }
    if let Command::PluginInspect { manifest, init } = cli.command {
        let ok = corral_plugin_host::inspect::run_inspect_worker(&manifest, init);
        return if ok { ExitCode::SUCCESS } else { ExitCode::from(1) };
    }
    if let Command::TemplateSandbox { memory } = cli.command {
        return match corral_host::template_sandbox::run_sandbox(memory) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        };
    }
    // Chat templates come from model files and requests: render them in sandboxes.
    if let Ok(exe) = std::env::current_exe() {
        corral_host::template_sandbox::install(exe, template_limits());
    }
    let global = GlobalOptions { config: cli.config, plugin_dirs: cli.plugin_dirs };
    let result: Result<()> = match cli.command {
        Command::EngineWorker { .. }
        | Command::TemplateSandbox { .. }
        | Command::PluginInspect { .. } => Ok(()),
        Command::Probe(a) => system::probe(&global, &a),
        Command::Backends(a) => system::backends(&global, &a),
        Command::Serve(a) => cli_serve::serve(&global, a),
        Command::Worker(a) => cli::worker::worker(&global, &a),
        Command::Run(a) => cli_run::run(&global, a),
        Command::Bench(a) => cli_run::bench(&global, &a),
        Command::Ps(a) => cli_client::ps(&global, &a),
        Command::Stop(a) => cli_client::stop(&global, &a),
        Command::Plugin(PluginCommand::Check(a)) => system::plugin_check(&global, &a),
        Command::Plugin(PluginCommand::New(a)) => system::plugin_new(&a),
        Command::Plugin(PluginCommand::Install(a)) => system::plugin_install(&global, &a),
        Command::Plugin(PluginCommand::Remove(a)) => system::plugin_remove(&a),
        Command::Model(ModelCommand::Generate(a)) => system::generate_model(&a),
        Command::Create(a) => cli_models::create(&global, &a),
        Command::List(a) => cli_models::list(&global, &a),
        Command::Show(a) => cli_models::show(&global, &a),
        Command::Cp(a) => cli_models::cp(&global, &a),
        Command::Rm(a) => cli_models::rm(&global, &a),
        Command::Pull(a) => cli_models::pull(&global, &a),
        Command::Push(a) => cli_models::push(&global, &a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", cli::error_line(&e));
            ExitCode::from(exit_code(&e))
        }
    }
}
