//! `corral run` and `corral bench`.

use std::{
    io::IsTerminal,
    path::PathBuf,
    sync::{Arc, atomic::AtomicBool},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use corral_backend_api::{BatchEntry, ContextParams, LoadOptions};
use corral_generation::{
    context::{ContextPolicy, context_length, exceeds_training, fit_prompt},
    options::SamplingOptions,
    sampler::Constraint,
    structured::{Grammar, JsonConstraint},
    thinking::{Effort, Think, ThinkingParser, template_thinks},
};
use serde::Serialize;

use corral_host::{
    engine_loop::{EngineHandle, Event, LoopConfig, Request, SpecSettings, Stats},
    models::{ModelRef, ModelsError},
    prompt::{self, Message},
    runtime::{Fit, GlobalOptions, Runtime},
};
use corral_plugin_host::{Isolation, Model};

use super::chat::ChatLine;

/// Options shared by `run` and `bench` for loading a model.
#[derive(Args, Debug, Clone)]
pub(crate) struct LoadArgs {
    /// Backend to use (name, variant or name:variant); default auto.
    #[arg(long, env = "CORRAL_BACKEND")]
    pub backend: Option<String>,
    /// Compute threads (default: the engine's choice).
    #[arg(long, short = 't')]
    pub threads: Option<u32>,
    /// Layers to offload to the GPU (-1 all, 0 none).
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    pub n_gpu_layers: i32,
    /// `json` or a JSON schema: the answer's format (Ollama's `--format`). Any other
    /// value is the model file's format, as `--model-format` gives it.
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<String>,
    /// Model file format (default: from the path: a directory or .onnx is onnx, else
    /// gguf).
    #[arg(long, value_name = "FORMAT")]
    pub model_format: Option<String>,
    /// Where the engine runs: `in-process` (the default here) or `process` (a worker
    /// process, as `corral serve` does); `bench` also takes `both`, and reports the
    /// ratio.
    #[arg(long, env = "CORRAL_ISOLATION", value_name = "MODE")]
    pub isolation: Option<String>,
    /// RPC workers (`corral worker` on other machines) whose devices the model may use
    /// beside this machine's: `host:port`, comma-separated or repeated; also `CORRAL_RPC`
    /// and the config's `[backends.llama-cpp] rpc`. `bench` measures the model spread
    /// over them against all of it here, in the same run.
    #[arg(long, env = "CORRAL_RPC", value_name = "HOST:PORT", value_delimiter = ',')]
    pub rpc: Vec<String>,
    /// Load without the RPC workers (bench's all-local comparison).
    #[arg(skip)]
    pub local_only: bool,
}

/// Whether a `--format` value is an answer's format (Ollama's meaning: `json` in any case,
/// or a JSON schema) rather than a model file's (`gguf`, `onnx`, a plugin's own).
fn is_response_format(v: &str) -> bool {
    v.trim().eq_ignore_ascii_case("json") || v.trim_start().starts_with('{')
}

/// The answer's format `--format` gives: the request's `format` value (`"json"` or the
/// schema) and its grammar, compiled once, here, so a schema this side cannot compile is
/// refused before anything loads or is sent.
pub(crate) struct ResponseFormat {
    /// The request's `format`.
    pub value: serde_json::Value,
    /// What holds a local run's answer to it.
    pub grammar: Arc<Grammar>,
}

impl LoadArgs {
    /// `--format` when it names the answer's format.
    pub(crate) fn response_format(&self) -> Option<&str> {
        self.format.as_deref().filter(|f| is_response_format(f))
    }

    /// The model file's format: `--model-format`, else `--format` when it is not the
    /// answer's format (corral's meaning of `--format` before Ollama's, kept).
    pub(crate) fn model_format(&self) -> Option<&str> {
        self.model_format
            .as_deref()
            .or_else(|| self.format.as_deref().filter(|f| !is_response_format(f)))
    }

    /// The answer's format, checked and compiled ([`ResponseFormat`]).
    pub(crate) fn response_format_compiled(&self) -> Result<Option<ResponseFormat>> {
        let Some(f) = self.response_format() else { return Ok(None) };
        let value = if f.trim().eq_ignore_ascii_case("json") {
            serde_json::Value::String("json".into())
        } else {
            serde_json::from_str::<serde_json::Value>(f).map_err(|e| {
                super::Usage(format!("--format is neither json nor a JSON schema: {e}"))
            })?
        };
        let grammar = Grammar::from_format(&value)
            .map_err(|e| super::Usage(format!("--format: {e}")))?
            .ok_or_else(|| super::Usage("--format: give json or a JSON schema".into()))?;
        Ok(Some(ResponseFormat { value, grammar: Arc::new(grammar) }))
    }
}

/// Resolves a model argument (the one resolution of [`corral_host::models`]) and loads
/// it through the chosen backend.
pub(crate) fn load_model(
    global: &GlobalOptions,
    load: &LoadArgs,
    arg: &str,
) -> Result<(ModelRef, Arc<Model>, std::time::Duration)> {
    let rt = Runtime::with_isolation(global, load.isolation.as_deref(), Isolation::InProcess)?;
    let mref = corral_host::models::resolve_for(global, Some(&rt.catalog), arg)?;
    let path = mref.path.as_path();
    let format = load.model_format().unwrap_or(mref.format.as_str());
    let selector = rt.selector(load.backend.as_deref(), Some(format));
    let remote = if load.local_only {
        corral_host::rpc::RemoteDevices::default()
    } else {
        corral_host::rpc::RemoteDevices::from_settings(&load.rpc, &rt.config)
    };
    let options = LoadOptions {
        n_threads: load.threads.unwrap_or(0),
        n_gpu_layers: load.n_gpu_layers,
        extra: remote
            .extra()
            .into_iter()
            .chain(mref.adapter_options())
            .map(|(k, v)| corral_backend_api::Tuple2(k.into(), v.into()))
            .collect(),
        ..Default::default()
    };
    let t = Instant::now();
    // The CLI has no KV cache settings: the engine's default cache.
    let kv = corral_host::kv_cache::KvSettings::default();
    let model = rt.load_model(&selector, &mref.name, (path, format), &options, |m| {
        Fit::judge(m, &mref, kv, &remote)
    })?;
    let plugin = model.plugin.clone();
    tracing::info!("backend {}", plugin.manifest.id());
    if let Some(w) = remote.unused_warning(model.capabilities, &plugin.manifest.id()) {
        tracing::warn!("{w}");
    }
    if let Some(p) = corral_host::rpc::Placement::of(&model.meta) {
        for s in &p.skipped {
            tracing::warn!("RPC worker {} not used: {}", s.endpoint, s.reason);
        }
        for line in p.lines() {
            tracing::info!("{line}");
        }
    }
    Ok((mref, Arc::new(model), t.elapsed()))
}

/// `corral run`.
#[derive(Args, Debug)]
pub(crate) struct RunArgs {
    /// Model: a GGUF file.
    pub model: String,
    /// Prompt; without one, read stdin (when it is not a terminal) or chat interactively.
    pub prompt: Vec<String>,
    #[command(flatten)]
    pub load: LoadArgs,
    /// Random seed (same seed, same text).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Temperature (0 = greedy).
    // A negative value reaches the range check (a clap error said "unexpected argument").
    #[arg(long, allow_hyphen_values = true)]
    pub temperature: Option<f32>,
    /// Tokens to generate at most (-1 no limit, -2 fill the context).
    #[arg(long, allow_hyphen_values = true)]
    pub num_predict: Option<i32>,
    /// Top-k.
    #[arg(long, allow_hyphen_values = true)]
    pub top_k: Option<i32>,
    /// Top-p.
    #[arg(long, allow_hyphen_values = true)]
    pub top_p: Option<f32>,
    /// Min-p.
    #[arg(long, allow_hyphen_values = true)]
    pub min_p: Option<f32>,
    /// Repeat penalty.
    #[arg(long, allow_hyphen_values = true)]
    pub repeat_penalty: Option<f32>,
    /// Context length.
    #[arg(long)]
    pub num_ctx: Option<u32>,
    /// Stop string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// More options as JSON, Ollama's names: '{"typical_p":0.9}'.
    #[arg(long, value_name = "JSON")]
    pub options: Option<String>,
    /// System prompt.
    #[arg(long)]
    pub system: Option<String>,
    /// Send the prompt as is, without the chat template.
    #[arg(long)]
    pub raw: bool,
    /// Refuse a prompt longer than the context instead of truncating it from the front.
    #[arg(long)]
    pub no_truncate: bool,
    /// Print timings and token rates after each answer.
    #[arg(long)]
    pub verbose: bool,
    /// Run in this process even when a `corral serve` answers at CORRAL_HOST.
    #[arg(long)]
    pub local: bool,
    /// Speak plain HTTP to the registry when the model is pulled (a model `run` does
    /// not find is pulled first, as `ollama run` does).
    #[arg(long)]
    pub insecure: bool,
    /// How long the server keeps the model loaded after this run (Ollama's
    /// `keep_alive`: 5m, 1h30m, 0 unloads it at once, -1 keeps it).
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub keepalive: Option<String>,
    /// Thinking models: `--think` (or `=true`) thinks, `--think=false` does not,
    /// `--think=high|medium|low` thinks at that effort level. Default: the model's way.
    #[arg(
        long,
        value_name = "LEVEL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub think: Option<String>,
    /// Do not show a thinking model's thinking (it still thinks).
    #[arg(long)]
    pub hidethinking: bool,
    /// Accepted as `ollama run` takes it; corral does not wrap words.
    #[arg(long)]
    pub nowordwrap: bool,
    /// The load flags given on the command line (not from the environment), which a run
    /// through a server cannot apply (filled in by `main` from [`LOAD_FLAGS`]).
    #[arg(skip)]
    pub load_flags: Vec<&'static str>,
}

/// The arguments of [`LoadArgs`] that set how this process loads the model (clap's id,
/// the flag): a server loads its models with its own settings.
pub(crate) const LOAD_FLAGS: [(&str, &str); 7] = [
    ("backend", "--backend"),
    ("threads", "--threads"),
    ("n_gpu_layers", "--n-gpu-layers"),
    // `--format json` (the answer's format) is not one: `remote` lets it through.
    ("format", "--format"),
    ("model_format", "--model-format"),
    ("isolation", "--isolation"),
    ("rpc", "--rpc"),
];

fn sampling_options(
    a: &RunArgs,
    defaults: &serde_json::Map<String, serde_json::Value>,
) -> Result<SamplingOptions> {
    let mut o = SamplingOptions::default();
    // The store model's PARAMETERs first; --options and flags override them.
    o.apply_json(&serde_json::Value::Object(defaults.clone()))
        .context("the model's PARAMETERs are not valid options")?;
    if let Some(json) = &a.options {
        let v: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| super::Usage(format!("--options is not valid JSON: {e}")))?;
        o.apply_json(&v)?;
    }
    // Flags are assigned directly (not through JSON, where NaN would become null).
    if let Some(v) = a.seed {
        o.seed = Some(v);
    }
    if let Some(v) = a.temperature {
        o.temperature = v;
    }
    if let Some(v) = a.num_predict {
        o.num_predict = v;
    }
    if let Some(v) = a.top_k {
        o.top_k = v;
    }
    if let Some(v) = a.top_p {
        o.top_p = v;
    }
    if let Some(v) = a.min_p {
        o.min_p = v;
    }
    if let Some(v) = a.repeat_penalty {
        o.repeat_penalty = v;
    }
    if let Some(v) = a.num_ctx {
        o.num_ctx = Some(v);
    }
    if !a.stop.is_empty() {
        o.stop = a.stop.clone();
    }
    o.validate()?;
    Ok(o)
}

/// `--think`'s value as a request's `think` (Ollama's values; `max`, which Ollama's
/// newest models take, no corral template reads).
pub(crate) fn think_of(a: &RunArgs) -> Result<Option<Think>> {
    let Some(v) = a.think.as_deref() else { return Ok(None) };
    match v.trim() {
        "" | "true" => Ok(Some(Think::On)),
        "false" => Ok(Some(Think::Off)),
        level => match Effort::of_ollama(level) {
            Some(e) => Ok(Some(Think::Level(e))),
            None => Err(super::Usage(format!(
                "invalid value for --think: {v:?} (must be true, false, high, medium or low)"
            ))
            .into()),
        },
    }
}

/// `--keepalive` checked as the server reads `keep_alive` (a Go duration or seconds); the
/// value to send: a bare number of seconds (`300`, `-1`) as a JSON number, a duration
/// (`5m`) as a string. Ollama reads a string with Go's `time.ParseDuration`, which refuses
/// a number without a unit, and a number as seconds; corral's server takes both.
pub(crate) fn keep_alive_of(a: &RunArgs) -> Result<Option<serde_json::Value>> {
    let Some(v) = a.keepalive.as_deref() else { return Ok(None) };
    if corral_host::server::util::parse_duration(v).is_none() {
        return Err(super::Usage(format!(
            "--keepalive {v:?} is not a duration: give e.g. 5m, 1h30m, 90s, 0 (unload when \
             done) or -1 (keep loaded)"
        ))
        .into());
    }
    let v = v.trim();
    if let Ok(n) = v.parse::<i64>() {
        return Ok(Some(n.into()));
    }
    match v.parse::<f64>() {
        // Any negative number is "forever" (`-inf` too, which JSON cannot carry).
        Ok(n) if n < 0.0 => Ok(Some((-1).into())),
        Ok(n) => Ok(Some(serde_json::Number::from_f64(n).map_or_else(|| v.into(), Into::into))),
        Err(_) => Ok(Some(v.into())),
    }
}

/// Whether a model argument `run` does not find may be pulled: a registry name, not
/// something meant as a file (the one rule, [`corral_host::models::looks_like_path`]).
pub(crate) fn pullable(arg: &str) -> bool {
    !corral_host::models::looks_like_path(arg)
}

/// Pulls the model `run` was given when it is a registry name the local store lacks, as
/// `ollama run` does; anything else (a file, a model the store has, a name that is not
/// one) is left to the load, which says what is wrong with it.
fn pull_if_missing(global: &GlobalOptions, a: &RunArgs) -> Result<()> {
    if !pullable(&a.model) {
        return Ok(());
    }
    match corral_host::models::resolve_for(global, None, &a.model) {
        Err(e) if matches!(e.downcast_ref::<ModelsError>(), Some(ModelsError::NotFound(_))) => {
            let name = corral_registry::ModelName::parse(&a.model)?;
            super::models::pull_local(global, &name, a.insecure)
        }
        _ => Ok(()),
    }
}

/// Generates one answer, streaming its text to `out`. Returns the text and stats, or
/// `None` when `cancel` was set (Ctrl-C) before the answer was complete.
pub(crate) fn generate(
    engine: &EngineHandle,
    prompt: Vec<u32>,
    options: SamplingOptions,
    constraint: Option<Box<dyn Constraint>>,
    cancel: Arc<AtomicBool>,
    mut out: impl FnMut(&str),
) -> Result<Option<(String, Stats)>> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    engine.submit(Request {
        prompt,
        options,
        constraint,
        events: tx,
        cancel: cancel.clone(),
        submitted: Instant::now(),
        shift: true,
        logprobs: None,
        ignore_eos: false,
        cache_prompt: true,
    })?;
    let mut text = String::new();
    while let Some(ev) = rx.blocking_recv() {
        match ev {
            Event::PromptDone { .. } | Event::Logprob(_) => {}
            Event::Text(t) => {
                out(&t);
                text.push_str(&t);
            }
            Event::Done(stats) => return Ok(Some((text, stats))),
            Event::Error(e) => return Err(e.into()),
        }
    }
    // A cancelled request is dropped by the engine loop, which closes its events.
    if cancel.load(std::sync::atomic::Ordering::SeqCst) {
        return Ok(None);
    }
    bail!("the engine stopped before the answer was complete")
}

fn print_stats(load: std::time::Duration, s: &Stats) {
    let rate = |n: usize, d: std::time::Duration| {
        if d.as_secs_f64() > 0.0 { n as f64 / d.as_secs_f64() } else { 0.0 }
    };
    let evaluated = s.prompt_tokens - s.cached_tokens;
    eprintln!("load duration:        {:.3}s", load.as_secs_f64());
    eprintln!("prompt eval count:    {} token(s) ({} cached)", s.prompt_tokens, s.cached_tokens);
    eprintln!("prompt eval duration: {:.3}s", s.prompt_eval.as_secs_f64());
    eprintln!("prompt eval rate:     {:.2} tokens/s", rate(evaluated, s.prompt_eval));
    eprintln!("eval count:           {} token(s)", s.eval_count);
    eprintln!("eval duration:        {:.3}s", s.eval.as_secs_f64());
    eprintln!("eval rate:            {:.2} tokens/s", rate(s.eval_count, s.eval));
    eprintln!(
        "done reason:          {}",
        s.done_reason.map_or("-", corral_generation::DoneReason::as_str)
    );
}

/// `corral run`.
pub(crate) fn run(global: &GlobalOptions, a: RunArgs) -> Result<()> {
    if !a.local
        && let Some(server) = super::reachable_server(global)?
    {
        return super::remote::run(&server, &a);
    }
    // The flags are checked before a model is pulled or loaded.
    let think = think_of(&a)?;
    let grammar = a.load.response_format_compiled()?.map(|f| f.grammar);
    if keep_alive_of(&a)?.is_some() {
        eprintln!(
            "corral: --keepalive is for a model in a corral serve; this run loads the model in \
             this process, and it unloads when the run ends"
        );
    }
    pull_if_missing(global, &a)?;
    let (mref, model, load_time) = load_model(global, &a.load, &a.model)?;
    let mut options = sampling_options(&a, &mref.params)?;
    // The one context-length rule; `corral run` has no server-wide setting.
    let num_ctx = context_length(options.num_ctx, None, model.meta.context_length);
    if let Some(asked) = exceeds_training(options.num_ctx, None, model.meta.context_length) {
        tracing::warn!(
            "num_ctx {asked} is past the model's training context; using {num_ctx} (its own)"
        );
    }
    let engine = EngineHandle::start(
        model.clone(),
        LoopConfig {
            n_parallel: 1,
            num_ctx,
            n_batch: 512,
            n_threads: a.load.threads.unwrap_or(0),
            model_name: mref.name.clone(),
            // The server's environment settings; a draft model is the server's alone.
            speculation: SpecSettings::parse(
                std::env::var("CORRAL_SPECULATIVE").ok().as_deref(),
                match std::env::var("CORRAL_DRAFT_MAX") {
                    Ok(v) => Some(v.trim().parse().map_err(|_| {
                        anyhow::anyhow!("CORRAL_DRAFT_MAX={v:?} is not a number from 1 to 64")
                    })?),
                    Err(_) => None,
                },
            )
            .map_err(|e| anyhow::anyhow!("invalid speculative decoding setting: {e}"))?,
            draft: None,
            // A single stream: prompts in the engine's own chunks.
            prompt_quantum: 1,
        },
    )?;
    // The engine's thread frees its context when it ends: wait for that before `run`
    // returns, so no context is freed while the process exits. A GPU context freed then
    // aborts the process (CUDA's driver is already shutting down and ggml aborts on the
    // error: seen with the cuda13 variant on an H200).
    struct JoinEngineOnReturn<'a>(&'a EngineHandle);
    impl Drop for JoinEngineOnReturn<'_> {
        fn drop(&mut self) {
            self.0.shutdown();
        }
    }
    let _join_engine = JoinEngineOnReturn(&engine);
    let policy = if a.no_truncate { ContextPolicy::Refuse } else { ContextPolicy::Truncate };
    // The store model's TEMPLATE (Go templates translated), SYSTEM and MESSAGEs are the
    // defaults; --system overrides SYSTEM.
    let template = match mref.template.as_deref() {
        Some(t) => prompt::Templater::with_source(&model, Some(t)).or_else(|e| {
            tracing::warn!("the model's TEMPLATE is not usable ({e:#}); using the file's own");
            prompt::Templater::for_model(&model)
        })?,
        None => prompt::Templater::for_model(&model)?,
    };
    let mut history: Vec<Message> = Vec::new();
    if let Some(s) = a.system.as_ref().or(mref.system.as_ref()) {
        history.push(Message::new("system", s));
    }
    history.extend(mref.messages.iter().map(|m| Message::new(&m.role, &m.content)));

    let one_shot = one_shot_prompt(&a.prompt)?;

    // A thinking model's thinking is split from its answer, as the server splits it
    // (unless `--think=false`, which leaves it in the text).
    let thinks = !a.raw && template_thinks(template.template.source());
    if think.is_some_and(Think::enabled) && !thinks {
        return Err(corral_backend_api::BackendError::invalid(format!(
            "\"{}\" does not support thinking{}",
            mref.name,
            if a.raw { " without its template (--raw)" } else { "" }
        ))
        .into());
    }
    // `--format`: the answer is held to the grammar, over the model's token bytes.
    let tokens_table =
        grammar.as_ref().map(|_| Arc::new(corral_host::server::scheduler::token_table(&model)));
    let constraint = || -> Option<Box<dyn Constraint>> {
        match (&grammar, &tokens_table) {
            (Some(g), Some(t)) => Some(Box::new(JsonConstraint::new(g.clone(), t.clone()))),
            _ => None,
        }
    };

    let turn = |user: &str, history: &mut Vec<Message>, options: &SamplingOptions| -> Result<()> {
        if user.trim().is_empty() {
            return Err(corral_backend_api::BackendError::invalid("the prompt is empty").into());
        }
        // On an error or Ctrl-C the conversation is as it was before this turn.
        let before = history.len();
        let mut answer = || -> Result<()> {
            let (tokens, opens_think) = if a.raw {
                (model.tokenize(user, true, true)?, false)
            } else {
                history.push(Message::new("user", user));
                let text = template.render_thinking(history, None, None, true, think)?;
                let opens = corral_generation::thinking::opens_think(&text);
                (template.tokenize(&model, &text)?, opens)
            };
            let tokens = fit_prompt(
                &tokens,
                num_ctx as usize,
                options.num_keep,
                options.num_predict,
                policy,
            )?;
            let mut parser =
                (thinks && think != Some(Think::Off)).then(|| ThinkingParser::new(opens_think));
            let mut shown = super::output::Answer::new(a.hidethinking);
            let turn = super::chat::start_turn();
            let cancel = turn.0.cancel.clone();
            let done =
                generate(&engine, tokens, options.clone(), constraint(), cancel, |t| match parser
                    .as_mut()
                {
                    Some(p) => {
                        let split = p.push(t);
                        shown.thinking(&split.thinking);
                        shown.content(&split.content);
                    }
                    None => shown.content(t),
                });
            drop(turn);
            if let Some(p) = parser.take() {
                let split = p.finish();
                shown.thinking(&split.thinking);
                shown.content(&split.content);
            }
            let end_line = shown.finish();
            let done = done?;
            if end_line {
                println!();
            }
            let Some((_, stats)) = done else {
                history.truncate(before);
                return Ok(());
            };
            if !a.raw {
                // The answer without its thinking, as Ollama keeps the conversation.
                history.push(Message::new("assistant", &shown.content));
            }
            if a.verbose {
                print_stats(load_time, &stats);
            }
            Ok(())
        };
        answer().inspect_err(|_| history.truncate(before))
    };

    if let Some(p) = one_shot {
        return turn(&p, &mut history, &options);
    }
    eprintln!("corral: chatting with {} (type /bye to leave, /? for help)", mref.name);
    super::chat::chat_loop(|input| match input {
        ChatLine::Clear => {
            history.retain(|m| m.role == "system");
            Ok(())
        }
        ChatLine::Text(line) => turn(line, &mut history, &options),
        ChatLine::SetParameter(name, value) => {
            if name == "num_ctx" {
                return Err(super::Usage(
                    "num_ctx is fixed while the chat runs (its context is allocated): start \
                     `corral run` again with --num-ctx"
                        .into(),
                )
                .into());
            }
            let mut o = options.clone();
            o.apply_json(&serde_json::json!({ name: value }))?;
            o.validate()?;
            options = o;
            Ok(())
        }
        ChatLine::SetSystem(text) => {
            match history.iter_mut().find(|m| m.role == "system") {
                Some(m) => *m = Message::new("system", text),
                None => history.insert(0, Message::new("system", text)),
            }
            Ok(())
        }
        ChatLine::Show(part) => {
            let mut data = super::models::run_show_data(&mref);
            data.system = history.iter().find(|m| m.role == "system").map(|m| m.content.clone());
            print!("{}", super::models::render_show(&data, Some(part)));
            Ok(())
        }
    })
}

/// The prompt of a one-shot run: the arguments joined, after all of stdin when it is
/// not a terminal (a blank line between them: `cat notes | corral run m "Summarize:"`);
/// `None` means an interactive chat. Bytes that are not UTF-8 are decoded lossily.
pub(crate) fn one_shot_prompt(args: &[String]) -> Result<Option<String>> {
    let piped = if std::io::stdin().is_terminal() {
        None
    } else {
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut raw).context("cannot read stdin")?;
        Some(String::from_utf8_lossy(&raw).into_owned())
    };
    Ok(match (piped, args.is_empty()) {
        (None, true) => None,
        (None, false) => Some(args.join(" ")),
        (Some(input), true) => Some(input),
        (Some(input), false) if input.trim().is_empty() => Some(args.join(" ")),
        (Some(input), false) => {
            Some(format!("{}\n\n{}", input.trim_end_matches(['\n', '\r']), args.join(" ")))
        }
    })
}

/// `corral bench`.
#[derive(Args, Debug, Clone)]
pub(crate) struct BenchArgs {
    /// Model: a GGUF file.
    pub model: String,
    #[command(flatten)]
    pub load: LoadArgs,
    /// Prompt tokens per prompt-processing test.
    #[arg(long, default_value_t = 512)]
    pub pp: u32,
    /// Tokens per generation test.
    #[arg(long, default_value_t = 128)]
    pub tg: u32,
    /// Repetitions of each test.
    #[arg(long, short = 'r', default_value_t = 5)]
    pub reps: u32,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Do not measure raw llama.cpp beside corral.
    #[arg(long)]
    pub no_raw: bool,
    /// The raw llama.cpp bench binary (default: `llama-raw` beside corral, beside the
    /// chosen plugin's library, or on PATH).
    #[arg(long, value_name = "PATH")]
    pub raw_bin: Option<PathBuf>,
}

/// One measured test.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub(crate) struct BenchResult {
    /// `corral (llama-cpp:cpu)` or `llama.cpp (raw)`.
    pub engine: String,
    /// `pp512` or `tg128`.
    pub test: String,
    /// Median tokens/s.
    pub median_tps: f64,
    /// Standard deviation of tokens/s.
    pub stddev_tps: f64,
    /// Every repetition's tokens/s.
    pub samples: Vec<f64>,
}

fn summarize(engine: &str, test: String, samples: Vec<f64>) -> BenchResult {
    let mut s = samples.clone();
    s.sort_by(f64::total_cmp);
    let median = if s.is_empty() {
        0.0
    } else if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    let mean = s.iter().sum::<f64>() / s.len().max(1) as f64;
    let var = s.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (s.len().max(2) - 1) as f64;
    BenchResult {
        engine: engine.to_string(),
        test,
        median_tps: median,
        stddev_tps: var.sqrt(),
        samples,
    }
}

/// Measures pp and tg through corral's plugin path, the way llama-bench does.
pub(crate) fn bench_corral(model: &Model, a: &BenchArgs) -> Result<Vec<BenchResult>> {
    // Exactly the size the test needs, as llama-raw (and llama-bench) ask for: not cut
    // to the training context as a served model's window is.
    let n_ctx = (a.pp + a.tg).max(16);
    let threads = a.load.threads.unwrap_or(0);
    let mut ctx = model.new_context(&ContextParams {
        n_ctx,
        n_batch: a.pp.max(1),
        n_seq_max: 1,
        n_threads: threads,
        n_threads_batch: threads,
        ..Default::default()
    })?;
    let vocab = model.vocab_size.max(2);
    // Deterministic pseudo-random tokens, as llama-bench uses random tokens.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next_token = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % u64::from(vocab - 1)) as u32 + 1
    };
    let engine = engine_label(model);
    // Warm-up, as llama-bench and llama-raw do: one prompt of the test's size, then one
    // token (a GPU loads each kernel at its first use, and the prompt's matrix kernels
    // are not the single token's).
    if a.pp > 0 {
        ctx.kv_clear()?;
        let tokens: Vec<u32> = (0..a.pp).map(|_| next_token()).collect();
        let i = ctx.prefill(0, 0, &tokens)?;
        ctx.logits(i)?;
    }
    ctx.kv_clear()?;
    ctx.decode(&[BatchEntry { token: next_token(), pos: 0, seq: 0, logits: true }])?;
    let mut out = Vec::new();
    if a.pp > 0 {
        let mut samples = Vec::new();
        for _ in 0..a.reps {
            ctx.kv_clear()?;
            let tokens: Vec<u32> = (0..a.pp).map(|_| next_token()).collect();
            let t = Instant::now();
            let i = ctx.prefill(0, 0, &tokens)?;
            ctx.logits(i)?;
            samples.push(f64::from(a.pp) / t.elapsed().as_secs_f64());
        }
        out.push(summarize(&engine, format!("pp{}", a.pp), samples));
    }
    if a.tg > 0 {
        let mut samples = Vec::new();
        for _ in 0..a.reps {
            ctx.kv_clear()?;
            let t = Instant::now();
            for pos in 0..a.tg {
                ctx.decode(&[BatchEntry { token: next_token(), pos, seq: 0, logits: true }])?;
                ctx.logits(0)?;
            }
            samples.push(f64::from(a.tg) / t.elapsed().as_secs_f64());
        }
        out.push(summarize(&engine, format!("tg{}", a.tg), samples));
    }
    Ok(out)
}

/// `corral (llama-cpp:cpu, in-process)`, with `, RPC ×2` when the model is spread over
/// two workers' devices.
fn engine_label(model: &Model) -> String {
    let workers = corral_host::rpc::Placement::of(&model.meta).map_or(0, |p| {
        let mut eps: Vec<&str> = p
            .devices
            .iter()
            .filter(|d| !d.endpoint.is_empty())
            .map(|d| d.endpoint.as_str())
            .collect();
        eps.dedup();
        eps.len()
    });
    let rpc = if workers > 0 { format!(", RPC ×{workers}") } else { String::new() };
    format!("corral ({}, {}{rpc})", model.plugin.id(), model.plugin.backend.isolation())
}

fn find_raw_bin(a: &BenchArgs, model: &Model) -> Option<PathBuf> {
    if let Some(p) = &a.raw_bin {
        return Some(p.clone());
    }
    let mut dirs = Vec::new();
    if let Some(d) = model.plugin.library_path.parent() {
        dirs.push(d.to_path_buf());
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(d) = exe.parent()
    {
        dirs.push(d.to_path_buf());
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.into_iter().map(|d| d.join("llama-raw")).find(|p| p.is_file())
}

/// Runs `llama-raw bench` on the same file and parses its JSON results.
pub(crate) fn bench_raw(
    bin: &std::path::Path,
    path: &std::path::Path,
    a: &BenchArgs,
) -> Result<Vec<BenchResult>> {
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("bench").arg(path).args([
        "--pp",
        &a.pp.to_string(),
        "--tg",
        &a.tg.to_string(),
        "--reps",
        &a.reps.to_string(),
        "--json",
    ]);
    if let Some(t) = a.load.threads {
        cmd.args(["--threads", &t.to_string()]);
    }
    cmd.args(["--gpu-layers", &a.load.n_gpu_layers.to_string()]);
    let out = cmd.output().with_context(|| format!("cannot run {}", bin.display()))?;
    if !out.status.success() {
        bail!("{} failed: {}", bin.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{} printed unexpected output", bin.display()))?;
    let mut results = Vec::new();
    for key in ["pp", "tg"] {
        let Some(t) = v.get(key) else { continue };
        let n = t.get("n_tokens").and_then(serde_json::Value::as_u64).unwrap_or(0);
        let stats = &t["stats"];
        let f = |k: &str| stats.get(k).and_then(serde_json::Value::as_f64).unwrap_or(0.0);
        results.push(BenchResult {
            engine: "llama.cpp (raw C API)".to_string(),
            test: format!("{key}{n}"),
            median_tps: f("median_tps"),
            stddev_tps: f("stddev_tps"),
            samples: stats
                .get("samples_tps")
                .and_then(serde_json::Value::as_array)
                .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
                .unwrap_or_default(),
        });
    }
    if results.is_empty() {
        bail!("{} printed no pp/tg results", bin.display());
    }
    Ok(results)
}

/// `corral bench`.
pub(crate) fn bench(global: &GlobalOptions, a: &BenchArgs) -> Result<()> {
    if a.reps == 0 {
        bail!("--reps must be at least 1");
    }
    // An answer's format has no answer to hold here: refused, not ignored.
    if let Some(f) = a.load.response_format() {
        return Err(super::Usage(format!(
            "--format {f:?} is an answer's format (json or a JSON schema), which bench does not \
             produce (it times prompt processing and generation); for the model file's format \
             give --model-format"
        ))
        .into());
    }
    // `--isolation both`: the engine in this process and in a worker, measured in turn.
    let modes: Vec<Option<String>> = match a.load.isolation.as_deref() {
        Some("both") => vec![Some("in-process".into()), Some("process".into())],
        other => vec![other.map(str::to_string)],
    };
    let mut models = Vec::new();
    let mut path = PathBuf::new();
    // With RPC workers: the model all here, and spread over the workers, in turn.
    let spreads: &[bool] = if a.load.rpc.is_empty() { &[false] } else { &[false, true] };
    for isolation in modes {
        for &spread in spreads {
            let load = LoadArgs {
                isolation: isolation.clone(),
                local_only: spreads.len() > 1 && !spread,
                ..a.load.clone()
            };
            let (mref, model, _) = load_model(global, &load, &a.model)?;
            path = mref.path;
            models.push(model);
        }
    }
    let model = models[0].clone();
    let raw_bin = if a.no_raw { None } else { find_raw_bin(a, &model) };
    let raw_note = (raw_bin.is_none() && !a.no_raw).then(|| {
        "llama-raw not found (build backends/llama-cpp or pass --raw-bin); no ratio".to_string()
    });
    // Repetitions alternate between corral and raw llama.cpp, so a change in the
    // machine's load affects both sides alike.
    let one = BenchArgs { reps: 1, ..a.clone() };
    let mut samples: Vec<(String, String, Vec<f64>)> = Vec::new();
    let mut add = |rs: Vec<BenchResult>| {
        for r in rs {
            match samples.iter_mut().find(|(e, t, _)| *e == r.engine && *t == r.test) {
                Some((_, _, v)) => v.extend(r.samples),
                None => samples.push((r.engine, r.test, r.samples)),
            }
        }
    };
    for _ in 0..a.reps {
        for m in &models {
            add(bench_corral(m, &one)?);
        }
        if let Some(bin) = &raw_bin {
            add(bench_raw(bin, &path, &one)?);
        }
    }
    drop(model);
    drop(models);
    let results: Vec<BenchResult> =
        samples.into_iter().map(|(e, t, v)| summarize(&e, t, v)).collect();
    let raw_of = |test: &str| {
        results
            .iter()
            .find(|r| r.engine.starts_with("llama.cpp") && r.test == test)
            .map(|r| r.median_tps)
    };
    if a.json {
        let rows: Vec<serde_json::Value> = results
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                if let (Some(raw), Some(obj)) = (raw_of(&r.test), v.as_object_mut()) {
                    obj.insert("ratio_to_llama_cpp".into(), serde_json::json!(r.median_tps / raw));
                }
                v
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"model": path, "threads": a.load.threads, "results": rows})
            )?
        );
    } else {
        println!(
            "model: {}  threads: {}  reps: {}",
            path.display(),
            a.load.threads.map_or("auto".into(), |t| t.to_string()),
            a.reps
        );
        println!(
            "| {:<28} | {:<6} | {:>10} | {:>8} | {:>9} |",
            "engine", "test", "t/s", "±", "vs raw"
        );
        println!("|{:-<30}|{:-<8}|{:-<12}|{:-<10}|{:-<11}|", "", "", "", "", "");
        for r in &results {
            let ratio =
                raw_of(&r.test).map_or("-".into(), |raw| format!("{:.3}", r.median_tps / raw));
            println!(
                "| {:<28} | {:<6} | {:>10.2} | {:>8.2} | {:>9} |",
                r.engine, r.test, r.median_tps, r.stddev_tps, ratio
            );
        }
        if let Some(n) = raw_note {
            println!("note: {n}");
        }
        // With both isolation modes measured: the worker's cost as a ratio.
        for r in results.iter().filter(|r| r.engine.ends_with(", process)")) {
            let inproc = results.iter().find(|x| {
                x.test == r.test && x.engine.ends_with(", in-process)") && x.median_tps > 0.0
            });
            if let Some(x) = inproc {
                println!("{}: process / in-process = {:.3}", r.test, r.median_tps / x.median_tps);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_means_the_answer_for_json_and_schemas_else_the_file() {
        let load = |f: &str| LoadArgs {
            backend: None,
            threads: None,
            n_gpu_layers: -1,
            format: Some(f.into()),
            model_format: None,
            isolation: None,
            rpc: Vec::new(),
            local_only: false,
        };
        for answer in ["json", " json ", "JSON", "Json", r#"{"type":"object"}"#] {
            assert_eq!(load(answer).response_format(), Some(answer), "{answer}");
            assert_eq!(load(answer).model_format(), None, "{answer}");
        }
        for file in ["gguf", "onnx", "toy", "jsonl"] {
            assert_eq!(load(file).response_format(), None, "{file}");
            assert_eq!(load(file).model_format(), Some(file), "{file}");
        }
        let both = LoadArgs { model_format: Some("toy".into()), ..load("json") };
        assert_eq!((both.model_format(), both.response_format()), (Some("toy"), Some("json")));
        assert!(load("{oops").response_format_compiled().is_err());
        let json = load("JSON").response_format_compiled().unwrap().unwrap();
        assert_eq!(json.value, serde_json::json!("json"));
    }

    #[test]
    fn only_registry_names_are_pulled() {
        for name in ["llama3", "qwen2.5:7b", "registry.example.com/ns/m:tag", "127.0.0.1:5000/a/b"]
        {
            assert!(pullable(name), "{name}");
        }
        for path in
            ["./m.gguf", "/models/x", "~/m", "m.GGUF", "m.onnx", "w.bin", "C:\\m", "a\\b", "D:/m"]
        {
            assert!(!pullable(path), "{path}");
        }
    }
}
