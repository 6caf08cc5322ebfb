//! `Client::pull`: manifest, then every missing blob in parallel ranges, resumable.

use std::collections::{BTreeSet, HashSet};
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::{Client, Ctx, MAX_BLOB_SIZE_ENV, Progress, ProgressFn};
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::manifest::{Layer, MEDIA_TYPE_LINK};
use crate::name::ModelName;
use crate::store::gc::{is_same_file, open_lock_file};
use crate::store::{Pin, Store};

/// What a pull did.
#[derive(Clone, Debug)]
pub struct PullOutcome {
    /// sha256 of the manifest bytes.
    pub manifest_digest: Digest,
    /// Bytes received from the registry for blobs (not counting what a resume reused).
    pub bytes_fetched: u64,
    /// Blobs downloaded (completely or by resuming).
    pub blobs_fetched: usize,
    /// Blobs that were already in the store.
    pub blobs_present: usize,
}

struct Part {
    start: u64,
    end: u64,
    done: AtomicU64,
}

struct Shared {
    parts: Vec<Part>,
    cancelled: AtomicBool,
    mx: Mutex<()>,
    cv: Condvar,
    fetched: AtomicU64,
    last_emit: AtomicU64,
}

impl Shared {
    fn completed(&self) -> u64 {
        self.parts.iter().map(|p| p.done.load(Ordering::Acquire)).sum()
    }
    fn notify(&self) {
        let _g = self.mx.lock();
        self.cv.notify_all();
    }
}

#[derive(Serialize, Deserialize)]
struct SavedState {
    size: u64,
    parts: Vec<(u64, u64, u64)>,
}

fn save_state(path: &Path, sh: &Shared, size: u64) {
    let st = SavedState {
        size,
        parts: sh.parts.iter().map(|p| (p.start, p.end, p.done.load(Ordering::Acquire))).collect(),
    };
    let tmp = path.with_extension("json.tmp");
    if let Ok(json) = serde_json::to_vec(&st)
        && fs::write(&tmp, json).is_ok()
    {
        let _ = fs::rename(&tmp, path);
    }
}

fn load_state(path: &Path, size: u64) -> Option<Vec<Part>> {
    let bytes = crate::store::read_bounded(path, 1 << 20).ok()?;
    let st: SavedState = serde_json::from_slice(&bytes).ok()?;
    if st.size != size {
        return None;
    }
    let mut expect = 0;
    for &(s, e, d) in &st.parts {
        if s != expect || e < s || d > e - s {
            return None;
        }
        expect = e;
    }
    if expect != size {
        return None;
    }
    Some(
        st.parts
            .into_iter()
            .map(|(start, end, d)| Part { start, end, done: AtomicU64::new(d) })
            .collect(),
    )
}

fn split(size: u64, parallel: usize, min_part: u64) -> Vec<Part> {
    if size == 0 {
        return Vec::new();
    }
    let n = size.div_ceil(min_part.max(1)).clamp(1, parallel.max(1) as u64);
    let step = size.div_ceil(n);
    (0..n)
        .map(|i| Part { start: i * step, end: ((i + 1) * step).min(size), done: AtomicU64::new(0) })
        .filter(|p| p.end > p.start)
        .collect()
}

/// Saves the progress and stops the hasher when the download ends in any way.
struct Guard {
    shared: Arc<Shared>,
    state_path: PathBuf,
    size: u64,
    save: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.shared.cancelled.store(true, Ordering::Release);
        self.shared.notify();
        if self.save {
            save_state(&self.state_path, &self.shared, self.size);
        }
    }
}

#[cfg(unix)]
fn write_at(f: &File, buf: &[u8], off: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(f, buf, off)
}
#[cfg(unix)]
fn read_at(f: &File, buf: &mut [u8], off: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(f, buf, off)
}
#[cfg(windows)]
fn write_at(f: &File, mut buf: &[u8], mut off: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        let n = std::os::windows::fs::FileExt::seek_write(f, buf, off)?;
        buf = &buf[n..];
        off += n as u64;
    }
    Ok(())
}
#[cfg(windows)]
fn read_at(f: &File, mut buf: &mut [u8], mut off: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        let n = std::os::windows::fs::FileExt::seek_read(f, buf, off)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf = &mut buf[n..];
        off += n as u64;
    }
    Ok(())
}

/// Disk bytes a partial download of `d` already holds (0 when there is none).
fn partial_bytes(store: &Store, d: &Digest) -> u64 {
    let path = store.tmp_dir().join(format!("{}.partial", d.blob_file_name()));
    let Ok(meta) = fs::metadata(&path) else { return 0 };
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        // Allocated, not declared: a partial file is as long as its blob from the start.
        meta.blocks().saturating_mul(512).min(meta.len())
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        0
    }
}

/// Hashes the partial file in order, following the parts as they fill.
fn hash_follow(f: &File, sh: &Shared) -> std::io::Result<Option<Digest>> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    for p in &sh.parts {
        let mut pos = p.start;
        while pos < p.end {
            let avail = p.start + p.done.load(Ordering::Acquire);
            if pos < avail {
                let n = (avail - pos).min(buf.len() as u64) as usize;
                read_at(f, &mut buf[..n], pos)?;
                h.update(&buf[..n]);
                pos += n as u64;
                continue;
            }
            let g = sh.mx.lock().map_err(|_| std::io::Error::other("poisoned lock"))?;
            if sh.cancelled.load(Ordering::Acquire) {
                return Ok(None);
            }
            if p.start + p.done.load(Ordering::Acquire) <= pos {
                let _ = sh.cv.wait_timeout(g, Duration::from_millis(200));
            }
        }
    }
    Ok(Some(Digest::from_hasher(h)))
}

/// How one download of a blob ended (errors aside).
enum Fetched {
    /// The digest matched; the blob is in the store.
    Done,
    /// The bytes have another digest (`got`); the partial file is deleted. `resumed`: the
    /// download continued a partial file left earlier.
    Mismatch { resumed: bool, got: Digest },
}

enum PartErr {
    Retry(String),
    Fatal(Error),
}

struct BlobJob<'a> {
    ctx: &'a Ctx,
    url: String,
    layer: &'a Layer,
    file: &'a File,
    sh: &'a Shared,
    progress: ProgressFn<'a>,
    status: String,
}

impl BlobJob<'_> {
    fn emit(&self, force: bool) {
        let done = self.sh.completed();
        let step = (self.layer.size / 200).max(1 << 20);
        let last = self.sh.last_emit.load(Ordering::Relaxed);
        if force || done >= last + step || done == self.layer.size {
            self.sh.last_emit.store(done, Ordering::Relaxed);
            (self.progress)(&Progress {
                status: self.status.clone(),
                digest: Some(self.layer.digest.to_string()),
                total: Some(self.layer.size),
                completed: Some(done),
            });
        }
    }
}

impl Client {
    /// Pulls a model into `store`: the manifest, then every blob not already present,
    /// then the manifest is written. Dropping the future cancels the pull; a later pull
    /// resumes it.
    pub async fn pull(
        &self,
        store: &Store,
        name: &ModelName,
        progress: ProgressFn<'_>,
    ) -> Result<PullOutcome> {
        store.check_writable()?;
        let ctx = Ctx::new(name, false);
        progress(&Progress::status("pulling manifest"));
        let (m, bytes, manifest_digest) = self.fetch_manifest_ctx(&ctx, name).await?;
        if m.blobs().any(|l| l.media_type == MEDIA_TYPE_LINK) {
            return Err(
                ctx.err("the manifest holds a corral link layer, which only local models may have")
            );
        }
        // Declared sizes are checked before any byte is written (a partial file is
        // allocated at its declared size).
        let max = self.opts.max_blob_size;
        if let Some(l) = m.blobs().find(|l| l.size > max) {
            return Err(ctx.err(format!(
                "layer {} declares {} bytes, more than the largest blob this client accepts \
                 ({max} bytes; raise it with {MAX_BLOB_SIZE_ENV})",
                l.digest, l.size
            )));
        }
        // And the disk must hold them: a registry that declares (or sends) more than the
        // disk has would fill it.
        // A partial file an interrupted pull left holds some of its layer already.
        let mut missing = HashSet::new();
        let needed: u64 = m
            .blobs()
            .filter(|l| !store.has_blob(&l.digest) && missing.insert(l.digest))
            .map(|l| l.size.saturating_sub(partial_bytes(store, &l.digest)))
            .fold(0, u64::saturating_add);
        if let Some(free) = store.free_space()
            && needed > free
        {
            return Err(ctx.err(format!(
                "not enough disk space: the model's missing layers take {needed} bytes, and the \
                 store's filesystem has {free} free"
            )));
        }
        // Every blob the manifest names is pinned before its presence is checked, and
        // stays pinned until the manifest is written: a concurrent `rm` or `prune` (in
        // any process) cannot delete one in between. (Blocking file work: off the
        // async threads.)
        let digests: Vec<Digest> = m.blobs().map(|l| l.digest).collect();
        let pin_store = store.clone();
        let pin = tokio::task::spawn_blocking(move || -> Result<Pin> {
            let pin = pin_store.pin()?;
            pin.add_all(digests)?;
            Ok(pin)
        })
        .await
        .map_err(|e| ctx.err(format!("pinning the blobs: {e}")))??;
        let mut out =
            PullOutcome { manifest_digest, bytes_fetched: 0, blobs_fetched: 0, blobs_present: 0 };
        let mut seen = HashSet::new();
        let mut fetched_now = BTreeSet::new();
        for l in m.blobs() {
            if !seen.insert(l.digest) {
                continue;
            }
            if store.has_blob(&l.digest) {
                out.blobs_present += 1;
                progress(&Progress {
                    status: format!("pulling {}", &l.digest.hex()[..12]),
                    digest: Some(l.digest.to_string()),
                    total: Some(l.size),
                    completed: Some(l.size),
                });
                continue;
            }
            out.bytes_fetched += self.download_blob(&ctx, store, l, progress).await?;
            out.blobs_fetched += 1;
            fetched_now.insert(l.digest);
        }
        progress(&Progress::status("writing manifest"));
        for l in m.blobs() {
            if !store.has_blob(&l.digest) {
                return Err(
                    ctx.err(format!("blob {} vanished from the store during the pull", l.digest))
                );
            }
        }
        // The rules every later use applies (a model layer, JSON parameters, ONNX file
        // paths that fit in one directory, ...), checked before the manifest is stored: a
        // model that can never be opened is the registry's fault, not a model to list.
        let stored_as = name.without_digest();
        if let Err(e) = store.check_manifest(&stored_as, &m, manifest_digest) {
            drop(pin);
            // The blobs this pull brought serve no model: delete those nothing else uses.
            let _ = store.collect(Some(&fetched_now));
            let why = match e {
                Error::InvalidManifest { reason, .. } => reason,
                e => e.to_string(),
            };
            return Err(ctx.err(format!("the model cannot be used, so it was not stored: {why}")));
        }
        store.write_manifest_bytes(&stored_as, &bytes)?;
        drop(pin);
        progress(&Progress::status("success"));
        Ok(out)
    }

    /// Downloads one blob into the store, under its lock file (a second pull of the same
    /// blob waits for the lock, then finds the blob, or resumes the partial the first one
    /// left if that one failed or was cancelled: dropping the future releases the lock).
    async fn download_blob(
        &self,
        ctx: &Ctx,
        store: &Store,
        layer: &Layer,
        progress: ProgressFn<'_>,
    ) -> Result<u64> {
        let d = layer.digest;
        let tmp = store.tmp_dir();
        fs::create_dir_all(&tmp).ctx("creating directory", &tmp)?;
        let base = d.blob_file_name();
        let lock_path = tmp.join(format!("{base}.lock"));
        let mut told = false;
        let lock = loop {
            let lock = open_lock_file(&lock_path)?;
            match lock.try_lock() {
                // A cleaner may have deleted the (then unheld) lock file after we opened
                // it: locking that one proves nothing, so open the current one again.
                Ok(()) if !is_same_file(&lock, &lock_path) => {}
                Ok(()) => break lock,
                Err(fs::TryLockError::WouldBlock) => {
                    if !told {
                        told = true;
                        progress(&Progress::status(format!(
                            "waiting for another download of {}",
                            &d.hex()[..12]
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(fs::TryLockError::Error(e)) => return Err(Error::io("locking", &lock_path, e)),
            }
        };
        if store.has_blob(&d) {
            return Ok(0);
        }
        // A partial may have been left by a pull from another registry (or a broken
        // one): if a download that resumed it ends with the wrong digest, the partial is
        // discarded and the blob downloaded once more from its first byte, so a hostile
        // registry cannot spoil the next honest pull of the same digest. (Simpler than
        // keeping partials per registry, and it also mends a partial spoiled by a disk
        // or a registry's glitch; the cost, one more download, is paid only on a
        // mismatch after a resume.)
        let mut fetched = 0;
        let mut allow_resume = true;
        loop {
            let (n, result) =
                self.download_locked(ctx, store, layer, progress, allow_resume).await?;
            fetched += n;
            match result {
                Fetched::Done => break,
                Fetched::Mismatch { resumed: true, got } if allow_resume => {
                    tracing::warn!(
                        "{}: blob {d} resumed from an earlier partial download has digest \
                         {got}; downloading it again from the start",
                        ctx.model
                    );
                    allow_resume = false;
                }
                Fetched::Mismatch { got, .. } => {
                    return Err(ctx.err(format!(
                        "blob {d}: the registry sent bytes whose digest is {got} (digest \
                         mismatch); the download was discarded"
                    )));
                }
            }
        }
        drop(lock);
        Ok(fetched)
    }

    /// One download of a blob whose lock is held: resumes the partial file (when
    /// `allow_resume` and its saved progress fits), else starts from zero. Returns the
    /// bytes received and whether the digest matched (then the blob is in place).
    async fn download_locked(
        &self,
        ctx: &Ctx,
        store: &Store,
        layer: &Layer,
        progress: ProgressFn<'_>,
        allow_resume: bool,
    ) -> Result<(u64, Fetched)> {
        let d = layer.digest;
        let size = layer.size;
        let tmp = store.tmp_dir();
        let base = d.blob_file_name();
        let part_path = tmp.join(format!("{base}.partial"));
        let state_path = tmp.join(format!("{base}.partial.json"));
        let resumable = allow_resume && fs::metadata(&part_path).is_ok_and(|m| m.len() == size);
        let parts = if resumable { load_state(&state_path, size) } else { None };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&part_path)
            .ctx("opening partial file", &part_path)?;
        let parts = match parts {
            Some(p) => p,
            None => {
                file.set_len(0).ctx("truncating", &part_path)?;
                file.set_len(size).ctx("allocating", &part_path)?;
                split(size, self.opts.parallel, self.opts.min_part_size)
            }
        };
        let shared = Arc::new(Shared {
            parts,
            cancelled: AtomicBool::new(false),
            mx: Mutex::new(()),
            cv: Condvar::new(),
            fetched: AtomicU64::new(0),
            last_emit: AtomicU64::new(0),
        });
        let resumed = shared.completed() > 0;
        let mut guard =
            Guard { shared: shared.clone(), state_path: state_path.clone(), size, save: true };
        save_state(&state_path, &shared, size);

        let (tx, rx) = tokio::sync::oneshot::channel();
        let hfile = file.try_clone().ctx("opening", &part_path)?;
        let hsh = shared.clone();
        std::thread::Builder::new()
            .name("corral-sha256".into())
            .spawn(move || {
                let _ = tx.send(hash_follow(&hfile, &hsh));
            })
            .map_err(|e| Error::io("starting the hashing thread", &part_path, e))?;

        let job = BlobJob {
            ctx,
            url: self.url(ctx, &format!("blobs/{d}")),
            layer,
            file: &file,
            sh: &shared,
            progress,
            status: format!("pulling {}", &d.hex()[..12]),
        };
        job.emit(true);
        let mut tasks: FuturesUnordered<_> =
            (0..shared.parts.len()).map(|i| self.fetch_part(&job, i, &state_path)).collect();
        // The throughput floor (`min_speed` over `speed_window`): a registry that keeps
        // every part alive with a trickle of bytes is abandoned (the guard keeps the
        // partial for a later pull).
        let window = self.opts.speed_window;
        let check_speed = self.opts.min_speed > 0 && !window.is_zero();
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + window, window);
        let mut window_fetched = 0u64;
        let mut window_missing = size - shared.completed().min(size);
        loop {
            tokio::select! {
                r = tasks.next() => match r {
                    Some(r) => r?,
                    None => break,
                },
                _ = ticker.tick(), if check_speed => {
                    let now = shared.fetched.load(Ordering::Acquire);
                    let got = now - window_fetched;
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
                    let floor = (self.opts.min_speed as f64 * window.as_secs_f64()) as u64;
                    if got < floor.min(window_missing) {
                        return Err(ctx.err(format!(
                            "downloading blob {d}: the registry sent {got} bytes in the last \
                             {} s, less than the {} bytes/s this client requires; download \
                             abandoned (a later pull resumes it)",
                            window.as_secs_f64(),
                            self.opts.min_speed
                        )));
                    }
                    window_fetched = now;
                    window_missing = size - shared.completed().min(size);
                }
            }
        }
        drop(tasks);
        job.emit(true);
        let fetched = shared.fetched.load(Ordering::Acquire);

        progress(&Progress::status("verifying sha256 digest"));
        let got = match rx.await {
            Ok(Ok(Some(g))) => g,
            Ok(Ok(None)) => return Err(Error::Cancelled),
            Ok(Err(e)) => return Err(Error::io("hashing", &part_path, e)),
            Err(_) => return Err(ctx.err("the hashing thread stopped")),
        };
        guard.save = false;
        drop(guard);
        if got != d {
            drop(file);
            let _ = fs::remove_file(&part_path);
            let _ = fs::remove_file(&state_path);
            return Ok((fetched, Fetched::Mismatch { resumed, got }));
        }
        file.sync_all().ctx("syncing", &part_path)?;
        drop(file);
        let dest = store.blob_path(&d);
        fs::rename(&part_path, &dest).ctx("moving the finished blob into place", &dest)?;
        if let Some(p) = dest.parent()
            && let Ok(dir) = File::open(p)
        {
            let _ = dir.sync_all();
        }
        let _ = fs::remove_file(&state_path);
        Ok((fetched, Fetched::Done))
    }

    async fn fetch_part(&self, job: &BlobJob<'_>, i: usize, state_path: &Path) -> Result<()> {
        let p = &job.sh.parts[i];
        let mut failures = 0u32;
        loop {
            let before = p.start + p.done.load(Ordering::Acquire);
            if before >= p.end {
                return Ok(());
            }
            match self.fetch_range(job, p, state_path).await {
                Ok(()) => {}
                Err(PartErr::Fatal(e)) => return Err(e),
                Err(PartErr::Retry(msg)) => {
                    let now = p.start + p.done.load(Ordering::Acquire);
                    failures = if now > before { 1 } else { failures + 1 };
                    if failures > self.opts.max_retries {
                        return Err(job.ctx.err(format!(
                            "downloading blob {}: {msg} (gave up after {} attempts without progress)",
                            job.layer.digest, failures
                        )));
                    }
                    let delay = self
                        .opts
                        .retry_backoff
                        .saturating_mul(1 << (failures - 1).min(16))
                        .min(Duration::from_secs(10));
                    tracing::warn!(
                        "{}: blob {} bytes {now}-{}: {msg}; retrying in {delay:?}",
                        job.ctx.model,
                        job.layer.digest,
                        p.end
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn fetch_range(
        &self,
        job: &BlobJob<'_>,
        p: &Part,
        state_path: &Path,
    ) -> std::result::Result<(), PartErr> {
        let off = p.start + p.done.load(Ordering::Acquire);
        let range = format!("bytes={off}-{}", p.end - 1);
        let mut resp = self
            .send(job.ctx, "fetching a blob", |c| {
                c.get(&job.url).header(reqwest::header::RANGE, &range)
            })
            .await
            // The message only: the error of the whole download names the registry and
            // the model once.
            .map_err(|e| PartErr::Retry(registry_message(e)))?;
        let status = resp.status();
        let mut skip = match status {
            StatusCode::PARTIAL_CONTENT => {
                let cr = resp
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if !cr.starts_with(&format!("bytes {off}-")) {
                    return Err(PartErr::Fatal(job.ctx.err(format!(
                        "blob {}: asked for {range}, the registry answered Content-Range {cr:?}",
                        job.layer.digest
                    ))));
                }
                0
            }
            // Range ignored: the whole blob comes; skip to our offset.
            StatusCode::OK => off,
            StatusCode::NOT_FOUND => {
                return Err(PartErr::Fatal(job.ctx.err(format!(
                    "blob {} named by the manifest does not exist on the registry (404)",
                    job.layer.digest
                ))));
            }
            s if s.is_server_error()
                || s == StatusCode::TOO_MANY_REQUESTS
                || s == StatusCode::REQUEST_TIMEOUT =>
            {
                return Err(PartErr::Retry(format!("HTTP {s}")));
            }
            s => {
                let body = super::error_body(resp).await;
                return Err(PartErr::Fatal(
                    job.ctx.err(format!("fetching blob {}: HTTP {s}{body}", job.layer.digest)),
                ));
            }
        };
        let mut pos = off;
        let mut since_save = 0u64;
        loop {
            let chunk = match tokio::time::timeout(self.opts.stall_timeout, resp.chunk()).await {
                Err(_) => {
                    return Err(PartErr::Retry(format!(
                        "no data for {:?} (stalled)",
                        self.opts.stall_timeout
                    )));
                }
                Ok(Err(e)) => return Err(PartErr::Retry(self.describe(&e))),
                Ok(Ok(None)) => break,
                Ok(Ok(Some(c))) => c,
            };
            let mut c = &chunk[..];
            if skip > 0 {
                let k = (skip.min(c.len() as u64)) as usize;
                c = &c[k..];
                skip -= k as u64;
            }
            if c.is_empty() {
                continue;
            }
            let take = ((p.end - pos).min(c.len() as u64)) as usize;
            write_at(job.file, &c[..take], pos).map_err(|e| {
                PartErr::Fatal(Error::io(
                    "writing the partial blob",
                    state_path.with_extension(""),
                    e,
                ))
            })?;
            pos += take as u64;
            p.done.fetch_add(take as u64, Ordering::AcqRel);
            job.sh.fetched.fetch_add(take as u64, Ordering::Relaxed);
            job.sh.notify();
            job.emit(false);
            since_save += take as u64;
            if since_save >= 16 << 20 {
                since_save = 0;
                save_state(state_path, job.sh, job.layer.size);
            }
            if pos == p.end {
                return Ok(());
            }
        }
        Err(PartErr::Retry(format!(
            "the body ended early (truncated) at byte {pos}, expected up to {}",
            p.end
        )))
    }
}

/// What a registry error says, without the "registry X, model Y:" its `Display` starts
/// with (for messages that are wrapped in another registry error).
fn registry_message(e: Error) -> String {
    match e {
        Error::Registry { message, .. } => message,
        e => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_everything() {
        for (size, par, min) in
            [(0u64, 4, 10), (1, 4, 10), (100, 4, 10), (101, 4, 10), (99, 3, 1000), (1000, 7, 1)]
        {
            let parts = split(size, par, min);
            let mut expect = 0;
            for p in &parts {
                assert_eq!(p.start, expect);
                assert!(p.end > p.start);
                expect = p.end;
            }
            assert_eq!(expect, size);
            assert!(parts.len() <= par);
        }
    }
}
