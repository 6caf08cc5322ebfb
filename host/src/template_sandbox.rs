//! Chat templates rendered in a sandbox process.
//!
//! A chat template is a program that comes with a model file or a request, and Jinja has
//! no bound on what one render may build: a list nested 100,000 deep (its drop recurses
//! until the stack overflows), a namespace that holds itself (printing it never ends), a
//! string doubled in a loop (gigabytes in a few instructions). The fuel limit in
//! [`corral_generation::template`] stops long loops and the output bound stops long
//! prompts, but memory and stack can only be bounded by the operating system. So the
//! server renders in `corral template-sandbox` processes: each runs with an address-space
//! limit ([`SandboxLimits::memory_bytes`]), renders on a thread with a known stack, and is
//! killed when a render takes longer than [`SandboxLimits::time`]. A sandbox that dies
//! takes only the request that killed it, which gets a 400 that says why; the next render
//! starts a fresh one.
//!
//! The wire: frames of a 4-byte little-endian length and JSON, one [`RenderRequest`] in,
//! one [`RenderReply`] out, over a Unix socket pair (the sandbox's stdin and stdout). A
//! sandbox ends at end of input, so it goes when its host does. Idle sandboxes are kept
//! for the next render (spawning one costs milliseconds; a round trip, tens of
//! microseconds); at most [`SandboxLimits::processes`] run at once, and templates that
//! come with a request ([`Origin::Request`]) take at most half of them, so clients who
//! send templates that run until the time limit cannot hold up the renders of the
//! models' own templates.
//!
//! Whether a render goes through a sandbox is process-wide: [`install`] (the `corral`
//! binary calls it at start) turns it on; without it [`render`] renders in-process, as
//! the library's unit tests do.

use std::{
    io::Read,
    os::unix::net::UnixStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Condvar, Mutex, OnceLock, PoisonError},
    time::Duration,
};

use corral_generation::template::{ChatInput, ChatTemplate, OwnedChatInput, TemplateError};
use corral_plugin_host::worker::{read_frame, write_frame};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The hidden subcommand that runs a sandbox.
pub const SANDBOX_SUBCOMMAND: &str = "template-sandbox";
/// The largest frame either side accepts (a conversation with images is large; 256 MiB is
/// past any prompt a model could take).
const MAX_FRAME: usize = 256 << 20;
/// Idle sandboxes kept for later renders.
const KEEP_IDLE: usize = 2;
/// Compiled templates a sandbox keeps (a server renders with a few models' templates).
const CACHED_TEMPLATES: usize = 8;
/// The stack of the sandbox's render thread.
const RENDER_STACK: usize = 16 << 20;

/// What a sandbox may use.
#[derive(Debug, Clone, Copy)]
pub struct SandboxLimits {
    /// Address space of one sandbox process (`RLIMIT_AS`).
    pub memory_bytes: u64,
    /// Wall time of one render before the sandbox is killed.
    pub time: Duration,
    /// Sandboxes running at once; more renders wait for one. Templates sent with requests
    /// use at most half of them (at least one).
    pub processes: usize,
}

/// Where a template came from, which decides the sandboxes it may wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The model's own (its file's, its Modelfile's, or a built-in one).
    Model,
    /// Sent with one request (`/api/generate`'s `template`).
    Request,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits { memory_bytes: 1 << 30, time: Duration::from_secs(10), processes: 4 }
    }
}

/// A render that did not produce a prompt.
#[derive(Debug, Error)]
pub enum SandboxError {
    /// The template failed, or its sandbox died or ran out of time: the request's fault.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// No sandbox could be started: the server's fault.
    #[error("cannot start a template sandbox ({exe}): {source}")]
    Unavailable {
        /// The executable tried.
        exe: String,
        /// Why it did not start.
        source: std::io::Error,
    },
}

/// One render, as sent to a sandbox.
#[derive(Debug, Serialize, Deserialize)]
pub struct RenderRequest {
    /// The template's Jinja source.
    pub source: String,
    /// What it renders.
    pub input: OwnedChatInput,
}

/// A sandbox's answer.
pub type RenderReply = Result<String, TemplateError>;

static SANDBOX: OnceLock<Sandbox> = OnceLock::new();

/// Renders every later [`render`] of this process in sandboxes started as
/// `exe template-sandbox`. The first call wins; later ones are ignored.
pub fn install(exe: PathBuf, limits: SandboxLimits) {
    let _ = SANDBOX.set(Sandbox {
        exe,
        limits,
        idle: Mutex::new(Vec::new()),
        running: Mutex::new(Running::default()),
        freed: Condvar::new(),
    });
}

/// Whether renders go through sandboxes.
pub fn installed() -> bool {
    SANDBOX.get().is_some()
}

/// Renders `input` with `template` from `origin`: in a sandbox when [`install`]ed, in
/// this process otherwise.
pub fn render(
    template: &ChatTemplate,
    input: &ChatInput<'_>,
    origin: Origin,
) -> Result<String, SandboxError> {
    match SANDBOX.get() {
        Some(sandbox) => sandbox.render(template.source(), input, origin),
        None => Ok(template.render(input)?),
    }
}

/// Sandboxes handed out, all and those rendering a request's template.
#[derive(Debug, Default)]
struct Running {
    all: usize,
    request: usize,
}

/// The sandboxes of this process.
struct Sandbox {
    exe: PathBuf,
    limits: SandboxLimits,
    idle: Mutex<Vec<SandboxProcess>>,
    /// Sandboxes handed out (idle ones not counted).
    running: Mutex<Running>,
    freed: Condvar,
}

impl Sandbox {
    fn render(
        &self,
        source: &str,
        input: &ChatInput<'_>,
        origin: Origin,
    ) -> Result<String, SandboxError> {
        let request = RenderRequest { source: source.to_owned(), input: OwnedChatInput::of(input) };
        let frame = json_frame(&request)
            .map_err(|e| TemplateError::Render(format!("cannot encode the conversation: {e}")))?;
        if frame.len() - 4 > MAX_FRAME {
            return Err(TemplateError::Render(format!(
                "the conversation is larger than {} MiB",
                MAX_FRAME >> 20
            ))
            .into());
        }
        let _slot = self.slot(origin);
        let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let mut process = match idle {
            Some(p) => p,
            None => self.spawn()?,
        };
        match process.exchange(frame, self.limits.time) {
            Ok(reply) => {
                let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
                if idle.len() < KEEP_IDLE {
                    idle.push(process);
                }
                Ok(reply?)
            }
            Err(failure) => Err(process.end(failure, &self.limits).into()),
        }
    }

    /// Waits until fewer than `processes` sandboxes are in use and, for a request's
    /// template, fewer than half of them render requests' templates.
    fn slot(&self, origin: Origin) -> Slot<'_> {
        let all = self.limits.processes.max(1);
        let request = (all / 2).max(1);
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        while running.all >= all || (origin == Origin::Request && running.request >= request) {
            running = self.freed.wait(running).unwrap_or_else(PoisonError::into_inner);
        }
        running.all += 1;
        running.request += usize::from(origin == Origin::Request);
        Slot(self, origin)
    }

    fn spawn(&self) -> Result<SandboxProcess, SandboxError> {
        let unavailable =
            |source| SandboxError::Unavailable { exe: self.exe.display().to_string(), source };
        let (host, child_end) = UnixStream::pair().map_err(unavailable)?;
        let child_out = child_end.try_clone().map_err(unavailable)?;
        let child = Command::new(&self.exe)
            .arg(SANDBOX_SUBCOMMAND)
            .arg("--memory")
            .arg(self.limits.memory_bytes.to_string())
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(child_end)))
            .stdout(Stdio::from(std::os::fd::OwnedFd::from(child_out)))
            .stderr(Stdio::piped())
            .env("RUST_BACKTRACE", "0")
            .spawn()
            .map_err(unavailable)?;
        Ok(SandboxProcess { child, stream: host })
    }
}

/// A place among the running sandboxes, given back on drop.
struct Slot<'a>(&'a Sandbox, Origin);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut running = self.0.running.lock().unwrap_or_else(PoisonError::into_inner);
        running.all = running.all.saturating_sub(1);
        if self.1 == Origin::Request {
            running.request = running.request.saturating_sub(1);
        }
        // Waiters differ in what they wait for: wake them all to look.
        self.0.freed.notify_all();
    }
}

/// How an exchange with a sandbox failed.
enum Failure {
    /// No answer in time.
    TimedOut,
    /// The channel broke or the answer made no sense.
    Broken(String),
}

/// One sandbox process and the host's end of its socket.
struct SandboxProcess {
    child: Child,
    stream: UnixStream,
}

impl SandboxProcess {
    /// Sends one request and reads its reply.
    fn exchange(&mut self, frame: Vec<u8>, time: Duration) -> Result<RenderReply, Failure> {
        let io = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => Failure::TimedOut,
            _ => Failure::Broken(e.to_string()),
        };
        self.stream.set_write_timeout(Some(time)).map_err(io)?;
        self.stream.set_read_timeout(Some(time)).map_err(io)?;
        write_frame(&mut self.stream, frame, MAX_FRAME).map_err(io)?;
        let reply = read_frame(&mut self.stream, MAX_FRAME).map_err(io)?;
        let Some(reply) = reply else { return Err(Failure::Broken("end of stream".into())) };
        serde_json::from_slice(&reply).map_err(|e| Failure::Broken(e.to_string()))
    }

    /// Kills the sandbox and says, as a template error, what became of the render.
    fn end(mut self, failure: Failure, limits: &SandboxLimits) -> TemplateError {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if matches!(failure, Failure::TimedOut) {
            let _ = self.child.kill();
        }
        let status = wait_briefly(&mut self.child);
        let mut stderr = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            let _ = err.by_ref().take(64 << 10).read_to_string(&mut stderr);
        }
        let why = match failure {
            Failure::TimedOut => {
                format!("it took longer than {} s and was stopped", limits.time.as_secs_f64())
            }
            Failure::Broken(_) if stderr.contains("overflowed its stack") => {
                "it nests too deep: the render overflowed the renderer's stack".to_string()
            }
            Failure::Broken(_) if stderr.contains("memory allocation of") => format!(
                "it needed more than {} MiB of memory and was stopped",
                limits.memory_bytes >> 20
            ),
            Failure::Broken(detail) => {
                let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
                format!("its renderer failed ({status}; {detail}) {last}").trim_end().to_string()
            }
        };
        tracing::warn!("template sandbox (pid {}) ended: {why}", self.child.id());
        TemplateError::Render(why)
    }
}

impl Drop for SandboxProcess {
    fn drop(&mut self) {
        // End of input makes the sandbox exit; reap it without blocking for long.
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Waits up to a second for the sandbox to end, then kills it; describes how it ended.
fn wait_briefly(child: &mut Child) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            _ => break None,
        }
    };
    match status.map(|s| (s.code(), s.signal())) {
        Some((Some(code), _)) => format!("exit status {code}"),
        Some((_, Some(sig))) => format!("signal {sig}"),
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            "killed".to_string()
        }
    }
}

/// `v` as JSON after 4 placeholder bytes, ready for [`write_frame`].
fn json_frame<T: Serialize>(v: &T) -> serde_json::Result<Vec<u8>> {
    let mut framed = vec![0u8; 4];
    serde_json::to_writer(&mut framed, v)?;
    Ok(framed)
}

/// The sandbox's side (`corral template-sandbox`): limits its own address space to
/// `memory_bytes`, then renders requests from stdin to stdout until end of input.
pub fn run_sandbox(memory_bytes: u64) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use rustix::process::{Resource, Rlimit, setrlimit};
    let cap = Rlimit { current: Some(memory_bytes), maximum: Some(memory_bytes) };
    setrlimit(Resource::As, cap).context("cannot limit the sandbox's memory")?;
    // A crash here is expected now and then; no core file for it.
    let _ = setrlimit(Resource::Core, Rlimit { current: Some(0), maximum: Some(0) });
    let worker = std::thread::Builder::new()
        .name("corral-template-render".into())
        .stack_size(RENDER_STACK)
        .spawn(serve_renders)
        .context("cannot start the render thread")?;
    match worker.join() {
        Ok(result) => result,
        Err(_) => anyhow::bail!("the render thread panicked"),
    }
}

/// Reads requests from stdin and writes replies to stdout until end of input.
fn serve_renders() -> anyhow::Result<()> {
    let mut input = std::io::stdin().lock();
    let mut output = std::io::stdout().lock();
    let mut cache: Vec<ChatTemplate> = Vec::with_capacity(CACHED_TEMPLATES);
    while let Some(frame) = read_frame(&mut input, MAX_FRAME)? {
        let reply: RenderReply = match serde_json::from_slice::<RenderRequest>(&frame) {
            Err(e) => Err(TemplateError::Render(format!("a malformed render request: {e}"))),
            Ok(request) => {
                let at = cache.iter().position(|t| t.source() == request.source);
                let compiled = match at {
                    Some(i) => Ok(cache.remove(i)),
                    None => ChatTemplate::new(request.source),
                };
                match compiled {
                    Err(e) => Err(e),
                    Ok(template) => {
                        let reply = template.render(&request.input.as_input());
                        if cache.len() == CACHED_TEMPLATES {
                            cache.remove(0);
                        }
                        cache.push(template);
                        reply
                    }
                }
            }
        };
        write_frame(&mut output, json_frame(&reply)?, MAX_FRAME)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_install_renders_in_process() {
        let t = ChatTemplate::chatml();
        let msgs = [corral_generation::template::ChatMessage::new("user", "hi")];
        let input =
            ChatInput { messages: &msgs, add_generation_prompt: true, ..Default::default() };
        let text = render(&t, &input, Origin::Model).unwrap();
        assert!(text.contains("<|im_start|>user\nhi<|im_end|>"), "{text}");
    }
}
