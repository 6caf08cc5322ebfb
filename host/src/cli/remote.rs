//! `corral run` as a client: when a `corral serve` answers at `CORRAL_HOST` (default
//! 127.0.0.1:11434), `run` sends its prompts there, as `ollama run` does, so the model
//! stays loaded between runs (the rule of [`corral_host::client`]). `--local` runs
//! in-process instead.

use anyhow::{Result, bail};
use corral_host::client::{Server, ServerError};
use serde_json::{Map, Value, json};

use super::{chat::ChatLine, run::RunArgs};

fn options_json(a: &RunArgs) -> Result<Map<String, Value>> {
    let mut o = match &a.options {
        Some(text) => {
            match serde_json::from_str::<Value>(text)
                .map_err(|e| super::Usage(format!("--options is not valid JSON: {e}")))?
            {
                Value::Object(m) => m,
                _ => return Err(super::Usage("--options must be a JSON object".into()).into()),
            }
        }
        None => Map::new(),
    };
    let mut put = |k: &str, v: Value| {
        o.insert(k.to_string(), v);
    };
    if let Some(v) = a.seed {
        put("seed", json!(v));
    }
    if let Some(v) = a.temperature {
        if !v.is_finite() {
            return Err(corral_backend_api::BackendError::invalid(format!(
                "option `temperature` is {v}, but it must be a finite number >= 0"
            ))
            .into());
        }
        put("temperature", json!(v));
    }
    for (k, v) in [("num_predict", a.num_predict), ("top_k", a.top_k)] {
        if let Some(v) = v {
            put(k, json!(v));
        }
    }
    for (k, v) in [("top_p", a.top_p), ("min_p", a.min_p), ("repeat_penalty", a.repeat_penalty)] {
        if let Some(v) = v {
            put(k, json!(v));
        }
    }
    if let Some(v) = a.num_ctx {
        put("num_ctx", json!(v));
    }
    if !a.stop.is_empty() {
        put("stop", json!(a.stop));
    }
    Ok(o)
}

/// The model as the server knows it. A local file is uploaded (once: the server keeps
/// its blobs) and created as `<file stem>:<first 12 hex digits of its digest>`, since a
/// server takes model names, not paths of the client's disk.
fn model_arg(server: &Server, a: &RunArgs) -> Result<String> {
    let path = std::path::Path::new(&a.model);
    if !path.exists() {
        return Ok(a.model.clone());
    }
    if path.is_dir() {
        return Err(super::Usage(format!(
            "{} is a directory: run it in this process with --local, or create a model from it \
             on the server's machine",
            path.display()
        ))
        .into());
    }
    let digest = server.upload_file(path)?;
    let hex = digest.trim_start_matches("sha256:");
    let stem: String = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default()
        .chars()
        .map(
            |c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '-' },
        )
        .take(64)
        .collect();
    let stem = stem.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let mut name =
        format!("{}:{}", if stem.is_empty() { "model" } else { stem }, &hex[..12.min(hex.len())]);
    if corral_registry::ModelName::parse(&name).is_err() {
        name = format!("model:{}", &hex[..12.min(hex.len())]);
    }
    let known = server.json(reqwest::Method::POST, "/api/show", Some(&json!({"model": name})));
    if known.is_err() {
        let file = path
            .file_name()
            .map_or_else(|| "model.gguf".into(), |f| f.to_string_lossy().into_owned());
        let body = json!({"model": name, "files": {file: digest}, "stream": false});
        server.json(reqwest::Method::POST, "/api/create", Some(&body))?;
        eprintln!("corral: uploaded {} to the server at {} as {name}", path.display(), server.url);
    }
    Ok(name)
}

/// Streams one request's NDJSON answer, printing text (and thinking, unless
/// `hide_thinking`) as it comes; returns the answer's text without its thinking, or
/// `None` when Ctrl-C cancelled the answer. A stream that ends without its `done` line
/// is an error.
fn stream(
    server: &Server,
    path: &str,
    body: &Value,
    verbose: bool,
    hide_thinking: bool,
) -> Result<Option<String>> {
    let mut answer = super::output::Answer::new(hide_thinking);
    let turn = super::chat::start_turn();
    let last = server.ndjson(path, body, Some(&turn.0.notify), |v| {
        let field = |chat: &str, generate: &str| {
            v.pointer(chat).or_else(|| v.get(generate)).and_then(Value::as_str).unwrap_or("")
        };
        answer.thinking(field("/message/thinking", "thinking"));
        answer.content(field("/message/content", "response"));
        if v.get("done").and_then(Value::as_bool) == Some(true) && verbose {
            let ns = |k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(0.0) / 1e9;
            let n = |k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(0.0);
            eprintln!();
            eprintln!("load duration:        {:.3}s", ns("load_duration"));
            eprintln!("prompt eval count:    {} token(s)", n("prompt_eval_count"));
            eprintln!("prompt eval duration: {:.3}s", ns("prompt_eval_duration"));
            eprintln!("eval count:           {} token(s)", n("eval_count"));
            eprintln!("eval duration:        {:.3}s", ns("eval_duration"));
            if ns("eval_duration") > 0.0 {
                eprintln!(
                    "eval rate:            {:.2} tokens/s",
                    n("eval_count") / ns("eval_duration")
                );
            }
            eprintln!(
                "done reason:          {}",
                v.get("done_reason").and_then(Value::as_str).unwrap_or("-")
            );
        }
        Ok(())
    });
    let cancelled = turn.0.cancelled();
    drop(turn);
    let end_line = answer.finish();
    let last = last?;
    if end_line {
        println!();
    }
    if cancelled {
        return Ok(None);
    }
    match last {
        Some(v) if v.get("done").and_then(Value::as_bool) == Some(true) => Ok(Some(answer.content)),
        Some(_) => bail!(
            "the server at {}'s answer ended before it was complete (no line with \"done\": \
             true)",
            server.url
        ),
        None => Err(server.unexpected(path, "")),
    }
}

/// The load flags given on the command line, which a server cannot apply: it loads its
/// models with its own settings.
fn refuse_load_flags(server: &Server, a: &RunArgs) -> Result<()> {
    // `--format json` (or a schema) is the answer's format, which a request carries.
    let answer_format = a.load.response_format().is_some();
    let flags: Vec<&str> =
        a.load_flags.iter().copied().filter(|f| !(answer_format && *f == "--format")).collect();
    if flags.is_empty() {
        return Ok(());
    }
    Err(super::Usage(format!(
        "{} {} to a local run (--local) only: the model runs in the corral serve at {}, which \
         loads it with its own settings",
        flags.join(", "),
        if flags.len() == 1 { "applies" } else { "apply" },
        server.url
    ))
    .into())
}

/// Pulls `model` into the server's store when the server does not have it and it is a
/// registry name, as `ollama run` does (`showOrPullModel`: a 404 from `/api/show`, then
/// `/api/pull` with its progress). A file path is the server's to refuse.
fn pull_if_missing(server: &Server, model: &str, a: &RunArgs) -> Result<()> {
    if !super::run::pullable(model) {
        return Ok(());
    }
    match server.json(reqwest::Method::POST, "/api/show", Some(&json!({"model": model}))) {
        Ok(v) if v.is_object() => Ok(()),
        Ok(v) => Err(server.unexpected("/api/show", &v.to_string())),
        Err(e) if e.downcast_ref::<ServerError>().is_some_and(|s| s.status == 404) => {
            super::models::pull_through(server, model, a.insecure)
        }
        Err(e) => Err(e),
    }
}

/// `corral run` against `server`.
pub(crate) fn run(server: &Server, a: &RunArgs) -> Result<()> {
    refuse_load_flags(server, a)?;
    let mut options = options_json(a)?;
    // Ollama's request fields: `think`, `keep_alive`, `format`.
    let mut fields = Map::new();
    if let Some(t) = super::run::think_of(a)? {
        fields.insert("think".into(), t.to_ollama_json());
    }
    if let Some(k) = super::run::keep_alive_of(a)? {
        fields.insert("keep_alive".into(), k);
    }
    // Compiled here only to refuse what the server would refuse, before anything is sent.
    if let Some(f) = a.load.response_format_compiled()? {
        fields.insert("format".into(), f.value);
    }
    let model = model_arg(server, a)?;
    pull_if_missing(server, &model, a)?;
    let url = &server.url;
    let one_shot = super::run::one_shot_prompt(&a.prompt)?;
    let mut messages: Vec<Value> = Vec::new();
    if let Some(s) = &a.system {
        messages.push(json!({"role": "system", "content": s}));
    }
    // `--no-truncate`: the server refuses a prompt longer than the context.
    let truncate = !a.no_truncate;
    let turn = |prompt: &str,
                messages: &mut Vec<Value>,
                options: &Map<String, Value>|
     -> Result<()> {
        if prompt.trim().is_empty() {
            return Err(corral_backend_api::BackendError::invalid("the prompt is empty").into());
        }
        let with_fields = |mut body: Value| {
            if let Some(b) = body.as_object_mut() {
                b.extend(fields.clone());
            }
            body
        };
        if a.raw {
            let body = with_fields(json!({"model": model, "prompt": prompt, "raw": true,
                "stream": true, "options": options, "truncate": truncate}));
            stream(server, "/api/generate", &body, a.verbose, a.hidethinking)?;
        } else {
            messages.push(json!({"role": "user", "content": prompt}));
            let body = with_fields(json!({"model": model, "messages": messages, "stream": true,
                "options": options, "truncate": truncate}));
            match stream(server, "/api/chat", &body, a.verbose, a.hidethinking) {
                Ok(Some(answer)) => messages.push(json!({"role": "assistant", "content": answer})),
                // Ctrl-C: the turn is forgotten.
                Ok(None) => {
                    messages.pop();
                }
                Err(e) => {
                    messages.pop();
                    return Err(e);
                }
            }
        }
        Ok(())
    };
    if let Some(p) = one_shot {
        return turn(&p, &mut messages, &options);
    }
    eprintln!("corral: chatting with {model} on {url} (type /bye to leave, /? for help)");
    super::chat::chat_loop(|input| match input {
        ChatLine::Clear => {
            messages.retain(|m| m["role"] == "system");
            Ok(())
        }
        ChatLine::Text(line) => turn(line, &mut messages, &options),
        ChatLine::SetParameter(name, value) => {
            options.insert(name.to_string(), value);
            Ok(())
        }
        ChatLine::SetSystem(text) => {
            let system = json!({"role": "system", "content": text});
            match messages.iter_mut().find(|m| m["role"] == "system") {
                Some(m) => *m = system,
                None => messages.insert(0, system),
            }
            Ok(())
        }
        ChatLine::Show(part) => {
            let name = corral_registry::ModelName::parse(&model)?;
            let mut data = super::models::remote_show(server, &name, &model)?;
            if let Some(s) = messages.iter().find(|m| m["role"] == "system") {
                data.system = s["content"].as_str().map(str::to_string);
            }
            print!("{}", super::models::render_show(&data, Some(part)));
            Ok(())
        }
    })
}
