//! One worker process as the host sees it: the child, its two channels, the tail of its
//! stderr, and what became of it. Every call that finds the worker gone (a closed
//! channel, a broken frame, no answer within the watchdog) ends it for good and turns
//! into a [`BackendError`] that says what happened; later calls get the same error.

use std::{
    collections::VecDeque,
    io::{BufRead, BufReader},
    os::unix::net::UnixStream,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use corral_backend_api::BackendError;

use super::protocol::{Answer, Call, Reply, read_message, write_message};

/// How many of a worker's last stderr lines are kept for the crash message.
const TAIL_LINES: usize = 200;

/// How to start a worker: the executable and the arguments that make it one (for
/// `corral`, its hidden `engine-worker` subcommand).
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    /// The executable.
    pub exe: std::path::PathBuf,
    /// Arguments before the ones the host adds.
    pub args: Vec<std::ffi::OsString>,
    /// How long a call may go unanswered before the worker counts as hung and is
    /// killed (a decode of a whole prompt chunk included).
    pub watchdog: Duration,
}

/// One of the worker's two channels.
pub(crate) struct Channel {
    stream: UnixStream,
}

/// A running worker, shared by the handles of what it serves.
pub(crate) struct WorkerProcess {
    /// `name:variant (pid N)`, for messages.
    pub(crate) label: String,
    child: Mutex<Child>,
    /// Calls about the model (tokenize, detokenize, ...), from any thread.
    pub(crate) model_channel: Mutex<Channel>,
    /// Calls about contexts (decode, logits, KV operations): the engine loop's.
    pub(crate) context_channel: Mutex<Channel>,
    tail: Arc<Mutex<VecDeque<String>>>,
    /// Why the worker is gone, once it is.
    dead: Mutex<Option<String>>,
    /// Set by [`WorkerProcess::shutdown`]: the worker's end from then on is ours, not a
    /// crash (a call racing the shutdown saw it exit with status 0 and reported a crash).
    closing: std::sync::atomic::AtomicBool,
}

impl WorkerProcess {
    /// Starts a worker.
    pub(crate) fn spawn(cmd: &WorkerCommand, label: &str) -> Result<WorkerProcess, BackendError> {
        let io = |what: &str, e: std::io::Error| {
            BackendError::internal(format!("cannot start an engine worker ({what}): {e}"))
        };
        let (model_host, model_child) = UnixStream::pair().map_err(|e| io("socket", e))?;
        let (ctx_host, ctx_child) = UnixStream::pair().map_err(|e| io("socket", e))?;
        for s in [&model_host, &ctx_host] {
            s.set_read_timeout(Some(cmd.watchdog)).map_err(|e| io("socket", e))?;
        }
        let mut command = Command::new(&cmd.exe);
        command
            .args(&cmd.args)
            .arg("--parent")
            .arg(std::process::id().to_string())
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(model_child)))
            .stdout(Stdio::from(std::os::fd::OwnedFd::from(ctx_child)))
            .stderr(Stdio::piped());
        let mut child =
            spawn_from_keeper(command).map_err(|e| io(&cmd.exe.display().to_string(), e))?;
        let label = format!("{label} (pid {})", child.id());
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        if let Some(stderr) = child.stderr.take() {
            let (tail, label) = (tail.clone(), label.clone());
            let _ = std::thread::Builder::new().name("corral-worker-log".into()).spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    tracing::info!(target: "corral::worker", worker = %label, "{line}");
                    let mut t = tail.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if t.len() == TAIL_LINES {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            });
        }
        Ok(WorkerProcess {
            label,
            child: Mutex::new(child),
            model_channel: Mutex::new(Channel { stream: model_host }),
            context_channel: Mutex::new(Channel { stream: ctx_host }),
            tail,
            dead: Mutex::new(None),
            closing: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The worker's pid.
    pub(crate) fn pid(&self) -> u32 {
        self.child.lock().unwrap_or_else(std::sync::PoisonError::into_inner).id()
    }

    /// Why the worker is gone, if it is.
    pub(crate) fn dead(&self) -> Option<String> {
        self.dead.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Why the worker is gone, noticing an exit that no call has seen yet: a worker
    /// killed while idle (the OOM killer, an operator's `kill`) was otherwise found only
    /// by the next request, which failed with a 500, while `/api/ps` listed it loaded.
    pub(crate) fn exited(&self) -> Option<String> {
        if let Some(why) = self.dead() {
            return Some(why);
        }
        if self.closing.load(std::sync::atomic::Ordering::SeqCst) {
            return None;
        }
        let gone = matches!(
            self.child.lock().unwrap_or_else(std::sync::PoisonError::into_inner).try_wait(),
            Ok(Some(_))
        );
        gone.then(|| self.fail(None).message.to_string())
    }

    /// Makes one call on `channel` and waits for its answer.
    pub(crate) fn call(
        &self,
        channel: &Mutex<Channel>,
        call: &Call,
    ) -> Result<Answer, BackendError> {
        if let Some(why) = self.dead() {
            return Err(BackendError::internal(why));
        }
        let mut ch = channel.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let t = Instant::now();
        let outcome = write_message(&mut ch.stream, call)
            .and_then(|()| read_message::<Reply>(&mut ch.stream));
        match outcome {
            Ok(Some(Ok(answer))) => Ok(answer),
            Ok(Some(Err(e))) => Err(e.into()),
            Ok(None) => Err(self.fail(None)),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Err(self.fail(Some(t.elapsed())))
            }
            // A frame over the bound, or one that does not decode (a string that is not
            // UTF-8, say): the channel is out of step now, so the worker goes, with why.
            Err(e) if e.kind() == std::io::ErrorKind::Other => Err(self.fail_with(
                None,
                Some(format!("sent an answer the host cannot read ({e}), killed")),
            )),
            Err(_) => Err(self.fail(None)),
        }
    }

    /// Records that the worker is gone (killing it when it hangs) and returns the error
    /// that says so.
    fn fail(&self, hung_for: Option<Duration>) -> BackendError {
        self.fail_with(hung_for, None)
    }

    /// [`WorkerProcess::fail`], with `unreadable` saying why the worker was killed when it
    /// answered something the host could not read.
    fn fail_with(&self, hung_for: Option<Duration>, unreadable: Option<String>) -> BackendError {
        if self.closing.load(std::sync::atomic::Ordering::SeqCst) {
            return BackendError::internal(format!(
                "{} was stopped: its model was unloaded",
                self.label
            ));
        }
        let mut dead = self.dead.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(why) = dead.as_ref() {
            return BackendError::internal(why.clone());
        }
        let mut child = self.child.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let how = match (hung_for, unreadable) {
            (Some(d), _) => {
                let _ = child.kill();
                let _ = child.wait();
                format!("hung: no answer within {:.0} s, killed", d.as_secs_f64())
            }
            (None, Some(why)) => {
                let _ = child.kill();
                let _ = child.wait();
                why
            }
            (None, None) => exit_description(&mut child),
        };
        // Give the log thread a moment to read the last lines the worker wrote.
        std::thread::sleep(Duration::from_millis(50));
        let last = self.last_words();
        let mark = super::DEATH_MARK;
        let why = if last.is_empty() {
            format!("{mark}{} {how}", self.label)
        } else {
            format!("{mark}{} {how}; its last output: {last}", self.label)
        };
        tracing::error!("{why}");
        *dead = Some(why.clone());
        BackendError::internal(why)
    }

    /// The most telling of the worker's last stderr lines: an assertion or a panic
    /// first, then an error line that is not part of a backtrace, else the last line.
    fn last_words(&self) -> String {
        let tail = self.tail.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let strong = ["GGML_ASSERT", "GGML_ABORT", "panicked at", "Assertion", "terminate called"];
        let in_backtrace = |l: &str| {
            let t = l.trim_start();
            t.starts_with('#')
                || t.starts_with(|c: char| c.is_ascii_digit())
                || t.starts_with("at ")
        };
        let weak = |l: &&String| {
            let lower = l.to_ascii_lowercase();
            !in_backtrace(l)
                && ["error", "abort", "fault", "fatal"].iter().any(|w| lower.contains(w))
        };
        // Only a line that tells why: the last line of a worker killed from outside is
        // whatever it logged last (a llama.cpp warning, with paths and colour codes),
        // which says nothing of the death and reached every client.
        tail.iter()
            .rev()
            .find(|l| strong.iter().any(|m| l.contains(m)))
            .or_else(|| tail.iter().rev().find(weak))
            .map(|l| without_ansi(l).chars().take(400).collect())
            .unwrap_or_default()
    }

    /// Ends the worker: closes its channels (it exits on end of stream), waits up to two
    /// seconds, then kills it. Reaps the process either way.
    pub(crate) fn shutdown(&self) {
        self.closing.store(true, std::sync::atomic::Ordering::SeqCst);
        for ch in [&self.model_channel, &self.context_channel] {
            let ch = ch.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let _ = ch.stream.shutdown(std::net::Shutdown::Both);
        }
        let mut child = self.child.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// `line` without ANSI escape sequences (the colours of a worker's log lines).
fn without_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // Parameters and intermediates, then one final byte in @..~.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Spawns `command` from one thread that lives as long as the process. A worker asks the
/// kernel to kill it when its parent dies (`PR_SET_PDEATHSIG`), and "parent" there means
/// the thread that forked it: a worker spawned from a pool thread that later exits (tokio's
/// blocking threads do after 10 s idle) would be killed with it.
fn spawn_from_keeper(command: Command) -> std::io::Result<Child> {
    type Job = (Command, std::sync::mpsc::Sender<std::io::Result<Child>>);
    static KEEPER: std::sync::OnceLock<Mutex<std::sync::mpsc::Sender<Job>>> =
        std::sync::OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let started =
            std::thread::Builder::new().name("corral-worker-spawner".into()).spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
            });
        if let Err(e) = started {
            tracing::error!("cannot start the worker spawner thread: {e}");
        }
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = std::sync::mpsc::channel();
    keeper
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .send((command, reply_tx))
        .map_err(|_| std::io::Error::other("the worker spawner thread is gone"))?;
    reply_rx.recv().map_err(|_| std::io::Error::other("the worker spawner thread is gone"))?
}

/// "exited with status 3" / "was killed by SIGABRT", after waiting up to a second for
/// the process to end (a closed channel may come just before the exit).
fn exit_description(child: &mut Child) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    let deadline = Instant::now() + Duration::from_secs(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => break None,
        }
    };
    match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("crashed: it exited with status {code}"),
            (None, Some(sig)) => format!("crashed: it was killed by {}", signal_name(sig)),
            _ => "crashed".to_string(),
        },
        None => {
            let _ = child.kill();
            let _ = child.wait();
            "stopped answering (its channel broke), killed".to_string()
        }
    }
}

/// `SIGABRT` for 6, and so on; `signal N` for others.
pub(crate) fn signal_name(sig: i32) -> String {
    let name = match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        _ => return format!("signal {sig}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::without_ansi;

    #[test]
    fn log_colours_are_taken_out() {
        let line = "\u{1b}[2m2026-12-01T18:03:44Z\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m load: x";
        assert_eq!(without_ansi(line), "2026-12-01T18:03:44Z  WARN load: x");
        assert_eq!(without_ansi("GGML_ASSERT(a) failed"), "GGML_ASSERT(a) failed");
    }
}
