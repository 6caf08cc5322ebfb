//! What keeps a blob alive while a writer is about to reference it, how `rm` and `prune`
//! decide what to delete, and how what a killed process left in `corral-tmp/` is cleaned.
//!
//! # Pins
//!
//! A writer that adds blobs and then names them in a manifest (`create`, `pull`, `cp`)
//! holds a [`Pin`]: a file `corral-tmp/pins/<pid>.<n>.<random>.pin` that lists, one per
//! line, every digest the writer will reference, held under an exclusive OS file lock for
//! as long as the writer lives. A digest is added to the pin *before* the writer checks
//! that the blob is present or makes it visible, and the pin file is deleted only *after*
//! the manifest is written. A collector ([`Store::remove`], [`Store::prune`]) keeps every
//! blob that a manifest or a live pin names; a pin file whose lock nobody holds belongs
//! to a dead process and is deleted.
//!
//! # The collector lock
//!
//! `corral-tmp/gc.lock` orders the two, across threads and processes (the CLI and a
//! server on the same store):
//!
//! - shared, briefly, while a writer creates its pin file, appends digests to it, or
//!   creates a temporary file (a few system calls each, never for a whole download);
//! - exclusive while a collector reads the pins, then the manifests, then deletes.
//!
//! So a digest was either pinned before the collector looked (and is kept), or the
//! writer's presence check comes after the collector finished (and sees its deletions).
//! Pins are read before manifests, so a writer that writes its manifest and then drops
//! its pin during a collection is seen through one or the other. `rm` never waits for a
//! pull to finish: the exclusive section lasts as long as reading the manifests.
//!
//! The locks are the standard library's (`flock` on Unix, `LockFileEx` on Windows):
//! released by the kernel when a process dies, however it dies.
//!
//! # Temporaries
//!
//! When a writable store opens (if no collector is running) and at every [`Store::prune`],
//! `corral-tmp/` is swept of what no live writer holds, decided by the locks, not by age:
//!
//! - `*.tmp` files (atomic writes in progress): each is locked by its writer from the
//!   moment it exists (it is created under the shared collector lock), so one that can be
//!   locked is an orphan and is deleted;
//! - `sha256-<hex>.partial` downloads, their `.partial.json` progress and `.lock` file: a
//!   download is live while its `.lock` is held. An orphaned partial is kept for
//!   [`PARTIAL_KEEP`] (24 hours since its last write) so that the next pull resumes it,
//!   and deleted after that, or at once when its blob is already in the store; a `.lock`
//!   with nothing left to guard is deleted (a pull re-checks, after locking, that its
//!   lock file is still the one on disk).

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use super::{Store, read_bounded, read_dir_sorted};
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::manifest::Manifest;
use crate::name::ModelName;

/// The collector lock, in `corral-tmp/`.
const GC_LOCK: &str = "gc.lock";
/// The directory of pin files, in `corral-tmp/`.
const PINS_DIR: &str = "pins";
/// How long a partial download that no running pull holds is kept so that a later pull
/// resumes it; older ones are deleted when a store opens or is pruned.
pub const PARTIAL_KEEP: Duration = Duration::from_secs(24 * 3600);
/// The largest manifest-tree file read when deciding which blobs it keeps alive.
const MAX_SCANNED_FILE: u64 = 64 << 20;
/// The largest pin file read.
const MAX_PIN_FILE: u64 = 64 << 20;

static PIN_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A held lock on `corral-tmp/gc.lock`, released when dropped.
pub(crate) struct GcLock {
    _file: File,
}

/// What a collector must keep: the digests named by manifests and live pins, and what
/// it could not read (then nothing may be deleted).
#[derive(Default)]
pub(crate) struct Keep {
    pub(crate) digests: HashSet<Digest>,
    pub(crate) unknown: Vec<String>,
}

/// Opens (creating) a lock file.
pub(crate) fn open_lock_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .ctx("opening lock file", path)
}

/// Whether `file` is still the file at `path`: a lock file that a cleaner deleted (and
/// someone re-created) after we opened it is not, and locking it proves nothing.
#[cfg(unix)]
pub(crate) fn is_same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Whether `file` is still the file at `path` (lock files are never deleted on this
/// platform, so it always is).
#[cfg(not(unix))]
pub(crate) fn is_same_file(_file: &File, _path: &Path) -> bool {
    true
}

/// Tries to lock `file` exclusively: `Ok(true)` if locked, `Ok(false)` if someone holds it.
fn try_lock(file: &File, path: &Path) -> Result<bool> {
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(fs::TryLockError::WouldBlock) => Ok(false),
        Err(fs::TryLockError::Error(e)) => Err(Error::io("locking", path, e)),
    }
}

/// Every `sha256:<64 hex>` in `bytes` (for a manifest file that does not parse).
fn digests_in_text(bytes: &[u8]) -> Vec<Digest> {
    const PREFIX: &[u8] = b"sha256:";
    let mut out = Vec::new();
    let mut i = 0;
    while i + PREFIX.len() + 64 <= bytes.len() {
        if &bytes[i..i + PREFIX.len()] == PREFIX {
            let end = i + PREFIX.len() + 64;
            if let Ok(s) = std::str::from_utf8(&bytes[i..end])
                && let Ok(d) = Digest::parse(s)
            {
                out.push(d);
                i = end;
                continue;
            }
        }
        i += 1;
    }
    out
}

impl Store {
    fn gc_lock_file(&self) -> Result<(File, PathBuf)> {
        let dir = self.tmp_dir();
        fs::create_dir_all(&dir).ctx("creating directory", &dir)?;
        let path = dir.join(GC_LOCK);
        Ok((open_lock_file(&path)?, path))
    }

    /// The collector lock, shared (writers: pin, temporary file).
    pub(crate) fn gc_shared(&self) -> Result<GcLock> {
        let (f, path) = self.gc_lock_file()?;
        f.lock_shared().ctx("locking", &path)?;
        Ok(GcLock { _file: f })
    }

    /// The collector lock, exclusive (deciding and deleting), waiting for it.
    pub(crate) fn gc_exclusive(&self) -> Result<GcLock> {
        let (f, path) = self.gc_lock_file()?;
        f.lock().ctx("locking", &path)?;
        Ok(GcLock { _file: f })
    }

    /// The collector lock, exclusive, or `None` when someone holds it now.
    pub(crate) fn try_gc_exclusive(&self) -> Result<Option<GcLock>> {
        let (f, path) = self.gc_lock_file()?;
        Ok(try_lock(&f, &path)?.then_some(GcLock { _file: f }))
    }

    /// A new [`Pin`]: the blobs added to it stay in the store, whatever `rm` or `prune`
    /// do meanwhile in any process, until it is dropped.
    pub fn pin(&self) -> Result<Pin> {
        self.check_writable()?;
        let dir = self.tmp_dir().join(PINS_DIR);
        fs::create_dir_all(&dir).ctx("creating directory", &dir)?;
        // Created and locked under the shared collector lock: a collector never sees a
        // pin file that exists but is not yet locked (it would take it for a dead one).
        let _gc = self.gc_shared()?;
        let n = PIN_COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            dir.join(format!("{}.{n}.{:08x}.pin", std::process::id(), rand::random::<u32>()));
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .ctx("creating pin file", &path)?;
        if !try_lock(&file, &path)? {
            let _ = fs::remove_file(&path);
            return Err(Error::io(
                "locking",
                &path,
                std::io::Error::other("a new pin file is locked by someone else"),
            ));
        }
        Ok(Pin { store: self.clone(), path, file, pinned: Mutex::new(HashSet::new()) })
    }

    /// Digests named by live pins, under the exclusive collector lock. Pin files of dead
    /// writers (nobody holds their lock) are deleted.
    fn live_pins(&self, keep: &mut Keep) {
        let dir = self.tmp_dir().join(PINS_DIR);
        let Ok(entries) = read_dir_sorted(&dir) else { return };
        for p in entries {
            if p.extension().is_none_or(|e| e != "pin") {
                continue;
            }
            // Gone: its writer finished between the listing and now.
            let Ok(f) = File::open(&p) else { continue };
            match try_lock(&f, &p) {
                Ok(true) => {
                    if !self.read_only {
                        tracing::debug!(
                            "removing the pin of a writer that is gone: {}",
                            p.display()
                        );
                        let _ = fs::remove_file(&p);
                    }
                    continue;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!("{e}; counting the pin {} as live", p.display()),
            }
            match read_bounded(&p, MAX_PIN_FILE) {
                Ok(bytes) => keep.digests.extend(
                    String::from_utf8_lossy(&bytes)
                        .lines()
                        .filter_map(|l| Digest::parse(l.trim()).ok()),
                ),
                // Gone meanwhile: its writer finished (and wrote its manifest first).
                Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => keep.unknown.push(format!("pin file {}: {e}", p.display())),
            }
        }
    }

    /// Every file under `manifests/` (any depth up to 8, whatever its name), and the name
    /// it stands for when its path is a valid model name.
    pub(crate) fn manifest_tree(&self) -> Vec<(PathBuf, Option<ModelName>)> {
        fn walk(
            dir: &Path,
            depth: usize,
            parts: &mut Vec<String>,
            out: &mut Vec<(PathBuf, Vec<String>)>,
        ) {
            let Ok(entries) = read_dir_sorted(dir) else {
                tracing::warn!("cannot list {}", dir.display());
                return;
            };
            for p in entries {
                let Ok(meta) = fs::metadata(&p) else { continue };
                let name =
                    p.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                parts.push(name);
                if meta.is_dir() {
                    if depth < 8 {
                        walk(&p, depth + 1, parts, out);
                    } else {
                        tracing::warn!("{} is nested too deep in the manifests tree", p.display());
                    }
                } else if meta.is_file() {
                    out.push((p.clone(), parts.clone()));
                }
                parts.pop();
            }
        }
        let base = self.root.join("manifests");
        let mut files = Vec::new();
        if base.is_dir() {
            walk(&base, 1, &mut Vec::new(), &mut files);
        }
        files
            .into_iter()
            .map(|(path, parts)| {
                let name = match parts.as_slice() {
                    [h, n, m, t] => ModelName::from_parts(h, n, m, t).ok(),
                    _ => None,
                };
                (path, name)
            })
            .collect()
    }

    /// Digests named by every file of the manifests tree, valid name or not. A file whose
    /// name is not a model name still keeps its blobs (logged); one that is not a
    /// manifest keeps every digest its text holds; one that cannot be read at all is
    /// recorded in `keep.unknown`.
    fn manifest_references(&self, keep: &mut Keep) {
        for (path, name) in self.manifest_tree() {
            let bytes = match read_bounded(&path, MAX_SCANNED_FILE) {
                Ok(b) => b,
                Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                    continue;
                }
                Err(e) => {
                    keep.unknown.push(format!("manifest file {}: {e}", path.display()));
                    continue;
                }
            };
            if name.is_none() {
                tracing::warn!(
                    "{} is not named like a model (host/namespace/model/tag); \
                     keeping the blobs it names",
                    path.display()
                );
            }
            match serde_json::from_slice::<Manifest>(&bytes) {
                Ok(m) => keep.digests.extend(m.blobs().map(|l| l.digest)),
                Err(e) => {
                    let found = digests_in_text(&bytes);
                    tracing::warn!(
                        "{} is not a valid manifest ({e}); keeping the {} blob(s) it mentions",
                        path.display(),
                        found.len()
                    );
                    keep.digests.extend(found);
                }
            }
        }
    }

    /// What a collector must keep, read under the exclusive collector lock: pins first,
    /// then manifests (see the module documentation for why in this order).
    pub(crate) fn keep_set(&self) -> Keep {
        let mut keep = Keep::default();
        self.live_pins(&mut keep);
        self.manifest_references(&mut keep);
        keep
    }

    /// Sweeps `corral-tmp/` of what no live writer holds (see the module documentation);
    /// the caller holds the exclusive collector lock. Returns the paths removed.
    pub(crate) fn clean_temporaries(&self, now: SystemTime) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        let dir = self.tmp_dir();
        let Ok(entries) = read_dir_sorted(&dir) else { return removed };
        let remove = |p: &Path, removed: &mut Vec<PathBuf>| {
            if fs::remove_file(p).is_ok() {
                tracing::info!("removed {}, left by a process that is gone", p.display());
                removed.push(p.to_path_buf());
            }
        };
        // Download families, by blob: sha256-<hex>.{partial,partial.json,partial.json.tmp,lock}.
        let mut families: BTreeMap<Digest, Vec<PathBuf>> = BTreeMap::new();
        for p in entries {
            if !p.symlink_metadata().is_ok_and(|m| m.is_file()) {
                continue;
            }
            let Some(fname) = p.file_name().and_then(|s| s.to_str()) else { continue };
            if fname == GC_LOCK {
                continue;
            }
            if let Some(d) = fname.get(..71).and_then(|k| Digest::from_blob_file_name(k).ok()) {
                families.entry(d).or_default().push(p);
                continue;
            }
            if fname.ends_with(".tmp") {
                let Ok(f) = File::open(&p) else { continue };
                if try_lock(&f, &p).unwrap_or(false) {
                    remove(&p, &mut removed);
                }
            }
        }
        for (d, files) in families {
            let lock_path = dir.join(format!("{}.lock", d.blob_file_name()));
            // Taken (created if need be) like a pull takes it, so that a pull starting
            // now waits for this cleaning, and one running now makes us skip the blob.
            let Ok(lock) = open_lock_file(&lock_path) else { continue };
            if !try_lock(&lock, &lock_path).unwrap_or(false) {
                continue; // a pull is working on it
            }
            let partial = dir.join(format!("{}.partial", d.blob_file_name()));
            let old = fs::metadata(&partial)
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > PARTIAL_KEEP);
            let drop_partial = old || !partial.exists() || self.has_blob(&d);
            for p in &files {
                let is_lock = *p == lock_path;
                let is_partial_data = p.extension().is_some_and(|e| e == "partial")
                    || p.to_string_lossy().ends_with(".partial.json");
                if is_lock || (is_partial_data && !drop_partial) {
                    continue;
                }
                remove(p, &mut removed);
            }
            // The lock file goes last, while we hold it, once there is nothing to guard.
            #[cfg(unix)]
            if !partial.exists() && is_same_file(&lock, &lock_path) {
                let _ = fs::remove_file(&lock_path);
            }
            drop(lock);
        }
        removed
    }

    /// Cleans what dead processes left (pins and temporaries), unless a collector is
    /// running right now. Called when a writable store opens; never fails.
    pub(crate) fn clean_stale(&self) {
        match self.try_gc_exclusive() {
            Ok(Some(_gc)) => {
                self.live_pins(&mut Keep::default());
                self.clean_temporaries(SystemTime::now());
            }
            Ok(None) => tracing::debug!("a collector is running; not cleaning temporaries now"),
            Err(e) => tracing::warn!("not cleaning temporaries: {e}"),
        }
    }
}

/// A writer's hold on blobs it is about to reference in a manifest.
///
/// Every digest added with [`Pin::add`] (or written through the pin's own write methods)
/// stays in the store while the pin lives, whatever `rm` or `prune` run meanwhile, in this
/// process or another: add a digest *before* checking that its blob is present, write the
/// manifest, then drop the pin. A pin of a process that died is ignored and removed by the
/// next collector.
pub struct Pin {
    store: Store,
    path: PathBuf,
    file: File,
    pinned: Mutex<HashSet<Digest>>,
}

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pin").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Pin {
    /// The store this pin belongs to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Pins one digest.
    pub fn add(&self, d: &Digest) -> Result<()> {
        self.add_all([*d])
    }

    /// Pins digests (each is recorded once).
    pub fn add_all(&self, digests: impl IntoIterator<Item = Digest>) -> Result<()> {
        let mut pinned = self.pinned.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut fresh = Vec::new();
        for d in digests {
            if !pinned.contains(&d) && !fresh.contains(&d) {
                fresh.push(d);
            }
        }
        if fresh.is_empty() {
            return Ok(());
        }
        let text: String = fresh.iter().map(|d| format!("{d}\n")).collect();
        let _gc = self.store.gc_shared()?;
        (&self.file).write_all(text.as_bytes()).ctx("writing", &self.path)?;
        pinned.extend(fresh);
        Ok(())
    }

    /// [`Store::write_blob_bytes`], the blob pinned.
    pub fn write_blob_bytes(&self, bytes: &[u8]) -> Result<Digest> {
        self.store.write_blob_bytes_pinned(bytes, Some(self))
    }

    /// [`Store::write_blob_from_reader`], the blob pinned.
    pub fn write_blob_from_reader(
        &self,
        reader: impl std::io::Read,
        expected: Option<&Digest>,
        progress: impl FnMut(u64),
    ) -> Result<(Digest, u64)> {
        self.store.write_blob_from_reader_pinned(reader, expected, progress, Some(self))
    }

    /// [`Store::import_file`], the blob pinned.
    pub fn import_file(&self, path: &Path, progress: impl FnMut(u64)) -> Result<(Digest, u64)> {
        let f = File::open(path).ctx("opening", path)?;
        self.write_blob_from_reader(f, None, progress)
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        // The manifest (if any) is written by now; a collector that still sees this pin
        // keeps its blobs once more, one that does not sees the manifest.
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Layer, MEDIA_TYPE_CONFIG, MEDIA_TYPE_MODEL};
    use crate::modelfile;
    use crate::store::StoreOptions;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().join("store"), StoreOptions::default()).unwrap();
        (dir, s)
    }

    fn layer(media_type: &str, d: Digest, size: usize) -> Layer {
        Layer {
            media_type: media_type.into(),
            digest: d,
            size: size as u64,
            from: None,
            annotations: None,
        }
    }

    /// A model named `name` whose weights are `weights` (shared with any model of the
    /// same weights) and whose config is its own.
    fn model(s: &Store, name: &str, weights: &[u8]) -> (ModelName, Digest) {
        let w = s.write_blob_bytes(weights).unwrap();
        let cfg = format!(r#"{{"model_format":"gguf","name":"{name}"}}"#);
        let c = s.write_blob_bytes(cfg.as_bytes()).unwrap();
        let m = Manifest::new(
            layer(MEDIA_TYPE_CONFIG, c, cfg.len()),
            vec![layer(MEDIA_TYPE_MODEL, w, weights.len())],
        );
        let n = ModelName::parse(name).unwrap();
        s.write_manifest(&n, &m).unwrap();
        (n, w)
    }

    #[test]
    fn finds_digests_in_text() {
        let d = Digest::of_bytes(b"x");
        let text = format!("garbage {d} more sha256:zz {d}sha256:{}", "a".repeat(63));
        assert_eq!(digests_in_text(text.as_bytes()), vec![d, d]);
    }

    #[test]
    fn rm_keeps_blobs_a_writer_has_pinned() {
        let (_d, s) = store();
        let (a, w) = model(&s, "a", b"GGUF shared weights");
        // A writer (create, pull) about to reference the blob a already has.
        let pin = s.pin().unwrap();
        pin.add(&w).unwrap();
        assert!(s.has_blob(&w));
        // Meanwhile, in another thread, `rm a`: the blob is a's only, but it is pinned.
        let s2 = s.clone();
        let a2 = a.clone();
        let rep = std::thread::spawn(move || s2.remove(&a2).unwrap()).join().unwrap();
        assert!(!rep.removed.contains(&w), "a pinned blob was deleted: {rep:?}");
        assert!(s.has_blob(&w));
        assert!(!s.prune().unwrap().removed.contains(&w));
        // The writer references it and lets go: the model is whole.
        let (b, _) = model(&s, "b", b"GGUF shared weights");
        drop(pin);
        assert!(s.get(&b).is_ok());
        assert!(s.prune().unwrap().removed.is_empty());
        // Unpinned and unreferenced, it goes.
        assert_eq!(s.remove(&b).unwrap().removed.len(), 2);
        assert!(!s.has_blob(&w));
    }

    #[test]
    fn the_pin_of_a_dead_writer_keeps_nothing() {
        let (_d, s) = store();
        let (a, w) = model(&s, "a", b"GGUF weights");
        // A pin file whose lock nobody holds: its process died.
        let dir = s.tmp_dir().join(PINS_DIR);
        fs::create_dir_all(&dir).unwrap();
        let stale = dir.join("999999.0.00000000.pin");
        fs::write(&stale, format!("{w}\n")).unwrap();
        let rep = s.remove(&a).unwrap();
        assert!(rep.removed.contains(&w), "{rep:?}");
        assert!(!stale.exists(), "the dead writer's pin file is removed");
    }

    #[test]
    fn pinned_writes_and_copy_survive_concurrent_rm() {
        // Two threads race for a while: one creates and removes model `a`, the other
        // creates `b` from the same weights and copies it; every model that exists at
        // any point must open (no manifest ever names a missing blob).
        let (d, s) = store();
        let gguf = d.path().join("w.gguf");
        let mut bytes = b"GGUF\x03\0\0\0".to_vec();
        bytes.extend((0..4096u32).flat_map(u32::to_le_bytes));
        fs::write(&gguf, &bytes).unwrap();
        let mf = modelfile::parse(&format!("FROM {}\nSYSTEM hi\n", gguf.display())).unwrap();
        let create = |s: &Store, name: &str| {
            let n = ModelName::parse(name).unwrap();
            modelfile::create(s, &n, &mf, d.path(), &Default::default(), &mut |_| {}).map(|_| n)
        };
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|sc| {
            sc.spawn(|| {
                // Stops the other loop however this one ends (a panic included).
                struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);
                impl Drop for StopOnDrop<'_> {
                    fn drop(&mut self) {
                        self.0.store(true, Ordering::Relaxed);
                    }
                }
                let _stop = StopOnDrop(&stop);
                for _ in 0..40 {
                    let a = create(&s, "a").unwrap();
                    s.remove(&a).unwrap();
                }
            });
            let mut rounds = 0;
            while !stop.load(Ordering::Relaxed) || rounds < 5 {
                rounds += 1;
                let b = create(&s, "b").unwrap();
                let c = ModelName::parse("c").unwrap();
                s.copy(&b, &c).unwrap();
                for n in [&b, &c] {
                    s.get(n).unwrap_or_else(|e| panic!("{n} broken after a concurrent rm: {e}"));
                }
                s.remove(&c).unwrap();
                s.remove(&b).unwrap();
            }
        });
        assert!(s.list().unwrap().is_empty());
    }

    #[test]
    fn odd_manifest_names_keep_their_blobs() {
        let (_d, s) = store();
        let (a, w) = model(&s, "a", b"GGUF weights of a");
        let (m, _) = s.read_manifest(&a).unwrap();
        let bytes = fs::read(s.manifest_path(&a)).unwrap();
        // Someone's manifest under a path corral cannot parse as a name, at the usual
        // depth and at another one, and a broken one that still mentions a digest.
        let manifests = s.root().join("manifests");
        let odd = manifests.join("registry.ollama.ai/library/Bad Name!/latest");
        fs::create_dir_all(odd.parent().unwrap()).unwrap();
        fs::write(&odd, &bytes).unwrap();
        let shallow = manifests.join("weird-host/only-a-tag");
        fs::create_dir_all(shallow.parent().unwrap()).unwrap();
        fs::write(&shallow, &bytes).unwrap();
        let other = s.write_blob_bytes(b"only the broken manifest names me").unwrap();
        let broken = manifests.join("registry.ollama.ai/library/x/broken");
        fs::create_dir_all(broken.parent().unwrap()).unwrap();
        fs::write(&broken, format!("{{ truncated ... {other}")).unwrap();

        let names: Vec<String> = s.list().unwrap().iter().map(|m| m.name.to_string()).collect();
        assert_eq!(names, ["a:latest"], "odd entries are not listed (nor do they break list)");
        let rep = s.remove(&a).unwrap();
        assert!(rep.removed.is_empty(), "blobs of odd manifests were deleted: {rep:?}");
        let rep = s.prune().unwrap();
        assert!(rep.removed.is_empty(), "{rep:?}");
        for l in m.blobs() {
            assert!(s.has_blob(&l.digest));
        }
        assert!(s.has_blob(&other) && s.has_blob(&w));
        assert!(s.referenced_blobs().unwrap().contains(&w));

        for f in [&odd, &shallow, &broken] {
            fs::remove_file(f).unwrap();
        }
        let rep = s.prune().unwrap();
        assert_eq!(rep.removed.len(), 3, "{rep:?}");
    }

    #[test]
    fn list_skips_a_model_whose_blobs_are_missing() {
        let (_d, s) = store();
        let (_a, _) = model(&s, "a", b"GGUF a");
        let (b, w) = model(&s, "b", b"GGUF b");
        fs::remove_file(s.blob_path(&w)).unwrap();
        let names: Vec<String> = s.list().unwrap().iter().map(|m| m.name.to_string()).collect();
        assert_eq!(names, ["a:latest"]);
        assert!(matches!(s.get(&b), Err(Error::BlobMissing { .. })));
    }

    fn set_age(p: &Path, age: Duration) {
        let f = OpenOptions::new().write(true).open(p).unwrap();
        f.set_modified(SystemTime::now() - age).unwrap();
    }

    #[test]
    fn stale_temporaries_are_cleaned_when_a_store_opens() {
        let (d, s) = store();
        let tmp = s.tmp_dir();
        let day = Duration::from_secs(24 * 3600);
        // An atomic write of a process that died, and one of a live writer.
        let dead_tmp = tmp.join("blob.4242.0.0badf00d.tmp");
        fs::write(&dead_tmp, b"half a blob").unwrap();
        let live = s.temp_file("blob").unwrap();
        // Downloads: a dead one from two days ago, a dead one from a minute ago (kept to
        // resume), an old one a live pull holds, and one whose blob is complete.
        let fam = |seed: &[u8]| {
            let d = Digest::of_bytes(seed);
            let base = tmp.join(d.blob_file_name());
            let p = |ext: &str| PathBuf::from(format!("{}{ext}", base.display()));
            for ext in [".partial", ".partial.json", ".lock"] {
                fs::write(p(ext), b"").unwrap();
            }
            (d, p(".partial"), p(".partial.json"), p(".lock"))
        };
        let old = fam(b"old");
        set_age(&old.1, 2 * day);
        let recent = fam(b"recent");
        set_age(&recent.1, Duration::from_secs(60));
        let held = fam(b"held");
        set_age(&held.1, 2 * day);
        let holder = File::open(&held.3).unwrap();
        holder.lock().unwrap();
        let done = s.write_blob_bytes(b"complete").unwrap();
        let done_partial = tmp.join(format!("{}.partial", done.blob_file_name()));
        fs::write(&done_partial, b"").unwrap();
        // A pin of a dead writer.
        fs::create_dir_all(tmp.join(PINS_DIR)).unwrap();
        let dead_pin = tmp.join(PINS_DIR).join("4242.0.00000000.pin");
        fs::write(&dead_pin, b"").unwrap();

        let s2 = Store::open(d.path().join("store"), StoreOptions::default()).unwrap();
        assert!(!dead_tmp.exists(), "an orphaned .tmp is removed");
        assert!(live.path.exists(), "a live writer's .tmp is kept");
        assert!(!old.1.exists() && !old.2.exists() && !old.3.exists(), "an old dead download goes");
        assert!(recent.1.exists() && recent.2.exists(), "a recent dead download is kept to resume");
        assert!(held.1.exists() && held.2.exists() && held.3.exists(), "a live download is kept");
        assert!(!done_partial.exists(), "a partial of a complete blob goes");
        assert!(!dead_pin.exists(), "a dead writer's pin goes");
        assert!(s2.has_blob(&done));
        drop(live);
        drop(holder);
        // A read-only open touches nothing.
        fs::write(&dead_tmp, b"x").unwrap();
        let _ro = Store::open(d.path().join("store"), StoreOptions { read_only: true }).unwrap();
        assert!(dead_tmp.exists());
    }
}
