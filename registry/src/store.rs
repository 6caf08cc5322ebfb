//! The local model store, laid out as Ollama lays it out.
//!
//! ```text
//! <root>/manifests/<host>/<namespace>/<model>/<tag>   Docker v2 manifest (JSON)
//! <root>/blobs/sha256-<hex>                           content-addressed blobs
//! <root>/corral-tmp/                                  temporary and partial files (ours)
//! ```
//!
//! Writes are atomic: a temporary file in `corral-tmp/` (same file system), written,
//! fsynced, then renamed into place, and the directory fsynced. A blob's sha256 is
//! computed while it is written and compared with the expected digest before the rename,
//! so a blob that is visible under `blobs/` always has the content its name says. A
//! failed write (disk full, I/O error, cancelled) leaves at most a temporary file, never
//! a visible blob or manifest; temporaries are removed on drop and by [`Store::prune`].
//!
//! # Linked models
//!
//! `corral create --link` registers a GGUF file without copying it. The manifest then
//! holds a layer of media type [`MEDIA_TYPE_LINK`] whose blob is a small JSON document,
//! [`LinkInfo`]: the file's absolute path, size, modification time and full sha256 (all
//! computed once, at create time). Opening the model compares size and modification time
//! with the file (cheap); a mismatch is an error telling the user to re-create the model
//! ([`Store::verify_link`] re-hashes the whole file when asked). A push uploads the linked
//! file as an ordinary `application/vnd.ollama.image.model` layer, so registries and
//! Ollama never see the link layer. A store made by Ollama never holds link layers and
//! opens unchanged.
//!
//! # Concurrent writers and collectors
//!
//! Writers that reference blobs in a new manifest hold a [`Pin`] on them, and
//! [`Store::remove`] / [`Store::prune`] keep every blob a manifest or a live pin names,
//! across processes; what a killed process left in `corral-tmp/` is swept when a store
//! opens. See [`gc`] for the rules and the locks.

use std::collections::{BTreeSet, HashSet};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::manifest::*;
use crate::name::ModelName;

pub mod gc;

pub use gc::{PARTIAL_KEEP, Pin};

/// Largest manifest accepted from disk or from a registry.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Largest text layer (template, system, license, messages, params, link) read into memory.
pub const MAX_TEXT_LAYER_BYTES: u64 = 16 << 20;

/// The environment variable that overrides the store location.
pub const MODELS_ENV: &str = "CORRAL_MODELS";

const TMP_DIR: &str = "corral-tmp";

/// How to open a store.
#[derive(Clone, Debug, Default)]
pub struct StoreOptions {
    /// Refuse every write (for pointing at someone else's Ollama store).
    pub read_only: bool,
}

/// A model store on disk. Cheap to clone; every method works on the file system directly,
/// so several processes can share a store.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
    read_only: bool,
}

/// One line of `corral list`.
#[derive(Clone, Debug)]
pub struct ModelSummary {
    /// The model's name.
    pub name: ModelName,
    /// sha256 of the manifest bytes (what `ollama list` shows as ID, first 12 chars).
    pub digest: Digest,
    /// Sum of the sizes of config and layers (a linked file counts with its size).
    pub size: u64,
    /// The manifest file's modification time.
    pub modified: SystemTime,
}

/// A chat message stored in a model (`MESSAGE` in a Modelfile).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// The blob of a [`MEDIA_TYPE_LINK`] layer: a GGUF file referenced in place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkInfo {
    /// Absolute path of the file.
    pub path: PathBuf,
    /// Size in bytes at create time.
    pub size: u64,
    /// Modification time at create time, nanoseconds since the Unix epoch.
    pub mtime_ns: u128,
    /// sha256 of the whole file at create time.
    pub digest: Digest,
}

/// Everything a model is made of, resolved to paths and values.
#[derive(Clone, Debug)]
pub struct ResolvedModel {
    /// The name it was opened under.
    pub name: ModelName,
    /// The manifest.
    pub manifest: Manifest,
    /// sha256 of the manifest bytes.
    pub manifest_digest: Digest,
    /// The parsed config blob (empty if the config is not Ollama's).
    pub config: ModelConfig,
    /// The GGUF to load: the model blob, or the linked file.
    pub model_path: PathBuf,
    /// The digest of the weights (of the linked file for a linked model).
    pub model_digest: Digest,
    /// Size of the weights in bytes.
    pub model_size: u64,
    /// Set for a model created with `--link`.
    pub link: Option<LinkInfo>,
    /// TEMPLATE (Go template syntax, as Ollama stores it).
    pub template: Option<String>,
    /// SYSTEM.
    pub system: Option<String>,
    /// PARAMETERs, a JSON object (`stop` is an array).
    pub params: serde_json::Map<String, serde_json::Value>,
    /// MESSAGEs.
    pub messages: Vec<Message>,
    /// LICENSE texts (a model may carry several).
    pub license: Vec<String>,
    /// ADAPTER blobs (LoRA, GGUF).
    pub adapters: Vec<PathBuf>,
    /// Projector blobs (multimodal).
    pub projectors: Vec<PathBuf>,
    /// The manifest file's modification time.
    pub modified: SystemTime,
}

/// What [`Store::prune`] or [`Store::remove`] removed, and what it kept for safety.
#[derive(Clone, Debug, Default)]
pub struct PruneReport {
    /// Blobs removed.
    pub removed: Vec<Digest>,
    /// Bytes freed.
    pub freed_bytes: u64,
    /// Temporary and partial files left by dead processes that were removed.
    pub removed_temporaries: Vec<PathBuf>,
    /// Why no blob was removed although some may be unused: a manifest or pin file that
    /// could not be read (its blobs are unknown, so every blob is kept).
    pub kept_because: Vec<String>,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temporary file inside the store that becomes visible only through [`TempFile::commit`].
/// Dropped uncommitted, it is removed.
pub(crate) struct TempFile {
    path: PathBuf,
    file: File,
    committed: bool,
}

impl TempFile {
    pub(crate) fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// fsync, rename onto `dest`, fsync the directory.
    pub(crate) fn commit(mut self, dest: &Path) -> Result<()> {
        self.file.sync_all().ctx("syncing", &self.path)?;
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).ctx("creating directory", parent)?;
        }
        fs::rename(&self.path, dest).ctx("renaming into place", dest)?;
        self.committed = true;
        if let Some(parent) = dest.parent() {
            sync_dir(parent);
        }
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// Reads at most `max` bytes of `path`; more is an error.
pub(crate) fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>> {
    let f = File::open(path).ctx("opening", path)?;
    let mut buf = Vec::new();
    f.take(max + 1).read_to_end(&mut buf).ctx("reading", path)?;
    if buf.len() as u64 > max {
        return Err(Error::io(
            "reading",
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("larger than {max} bytes"),
            ),
        ));
    }
    Ok(buf)
}

fn mtime_ns(meta: &fs::Metadata) -> u128 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos())
}

/// Hashes a whole file (streaming, 1 MiB buffer).
pub fn hash_file(path: &Path, mut progress: impl FnMut(u64)) -> Result<(Digest, u64)> {
    let mut f = File::open(path).ctx("opening", path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).ctx("reading", path)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
        progress(n);
    }
    Ok((Digest::from_hasher(h), n))
}

impl Store {
    /// Opens (and unless read-only, creates) a store at `root`.
    pub fn open(root: impl Into<PathBuf>, opts: StoreOptions) -> Result<Store> {
        let root = root.into();
        if opts.read_only {
            if !root.is_dir() {
                return Err(Error::io(
                    "opening model store",
                    &root,
                    std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
                ));
            }
        } else {
            for d in ["blobs", "manifests", TMP_DIR] {
                let p = root.join(d);
                fs::create_dir_all(&p).ctx("creating directory", &p)?;
            }
        }
        let store = Store { root, read_only: opts.read_only };
        if !store.read_only {
            store.clean_stale();
        }
        Ok(store)
    }

    /// The default store location: `$CORRAL_MODELS` if set and not empty, else
    /// `<data dir>/corral/models` where the data dir is `$XDG_DATA_HOME` or
    /// `~/.local/share` on Linux, `~/Library/Application Support` on macOS and
    /// `%APPDATA%` on Windows.
    pub fn default_root() -> Result<PathBuf> {
        if let Some(v) = std::env::var_os(MODELS_ENV).filter(|v| !v.is_empty()) {
            return Ok(expand_tilde(PathBuf::from(v)));
        }
        dirs::data_dir().map(|d| d.join("corral").join("models")).ok_or_else(|| {
            Error::io(
                "locating the model store",
                "",
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no home or data directory; set CORRAL_MODELS",
                ),
            )
        })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether writes are refused.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// `<root>/blobs/sha256-<hex>`.
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs").join(d.blob_file_name())
    }

    /// The directory holding temporary and partial files.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join(TMP_DIR)
    }

    /// Whether a blob is present.
    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// The path of a model's manifest file. Names compare as Ollama compares them,
    /// ignoring case: when no manifest is spelled exactly so but one differs only in case,
    /// its path is the model's (Ollama's `getExistingName`), so `Llama3` runs, shows,
    /// copies, deletes and pulls onto the `llama3` already stored rather than beside it.
    pub fn manifest_path(&self, name: &ModelName) -> PathBuf {
        let exact = self.root.join(name.manifest_rel_path());
        if exact.is_file() {
            return exact;
        }
        self.manifest_files()
            .into_iter()
            .flatten()
            .find(|(stored, _)| stored.eq_ignore_case(name))
            .map_or(exact, |(_, path)| path)
    }

    /// An ONNX model is a directory of files; its layers are blobs, so the directory is
    /// made of symbolic links to them, named by each layer's path annotation, under
    /// `corral-tmp/onnx/<manifest hex>` (or the system temp dir for a read-only store).
    fn materialize_onnx(
        &self,
        manifest: &Digest,
        files: &[(String, PathBuf, u64)],
    ) -> Result<PathBuf> {
        let hex = manifest.to_string().trim_start_matches("sha256:").to_string();
        let dir = if self.read_only {
            std::env::temp_dir().join(format!("corral-onnx-{hex}"))
        } else {
            self.root.join("corral-tmp").join("onnx").join(&hex)
        };
        for (rel, blob, _) in files {
            let link = dir.join(rel);
            if let Some(parent) = link.parent() {
                fs::create_dir_all(parent).ctx("create the ONNX model directory", parent)?;
            }
            if fs::read_link(&link).ok().as_deref() == Some(blob.as_path()) {
                continue;
            }
            let _ = fs::remove_file(&link);
            std::os::unix::fs::symlink(blob, &link).ctx("link an ONNX model file", &link)?;
        }
        Ok(dir)
    }

    pub(crate) fn check_writable(&self) -> Result<()> {
        if self.read_only { Err(Error::ReadOnly(self.root.clone())) } else { Ok(()) }
    }

    /// A new uniquely named temporary file in the store's temp area, locked by this
    /// process for as long as it lives (so a cleaner knows it is not an orphan).
    pub(crate) fn temp_file(&self, prefix: &str) -> Result<TempFile> {
        self.check_writable()?;
        let dir = self.tmp_dir();
        fs::create_dir_all(&dir).ctx("creating directory", &dir)?;
        // Created and locked under the shared collector lock, so a cleaner (exclusive)
        // never sees it unlocked.
        let _gc = self.gc_shared()?;
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(
            "{prefix}.{}.{n}.{:08x}.tmp",
            std::process::id(),
            rand::random::<u32>()
        ));
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .ctx("creating temporary file", &path)?;
        let t = TempFile { path, file, committed: false };
        t.file
            .try_lock()
            .map_err(|e| Error::io("locking", &t.path, std::io::Error::other(e.to_string())))?;
        Ok(t)
    }

    /// Stores `bytes` as a blob and returns its digest. Nothing keeps an unreferenced
    /// blob from a concurrent `rm` or `prune`: a writer that will name it in a manifest
    /// uses [`Pin::write_blob_bytes`].
    pub fn write_blob_bytes(&self, bytes: &[u8]) -> Result<Digest> {
        self.write_blob_bytes_pinned(bytes, None)
    }

    pub(crate) fn write_blob_bytes_pinned(
        &self,
        bytes: &[u8],
        pin: Option<&Pin>,
    ) -> Result<Digest> {
        self.check_writable()?;
        let d = Digest::of_bytes(bytes);
        if let Some(pin) = pin {
            pin.add(&d)?;
        }
        if self.has_blob(&d) {
            return Ok(d);
        }
        let mut t = self.temp_file("blob")?;
        t.file().write_all(bytes).ctx("writing", &t.path)?;
        t.commit(&self.blob_path(&d))?;
        Ok(d)
    }

    /// Streams `reader` into a blob, hashing as it goes. With `expected`, the content must
    /// hash to it or nothing becomes visible ([`Error::DigestMismatch`]). `progress` gets
    /// the number of bytes written so far. Nothing keeps an unreferenced blob from a
    /// concurrent `rm` or `prune`: a writer that will name it in a manifest uses
    /// [`Pin::write_blob_from_reader`].
    pub fn write_blob_from_reader(
        &self,
        reader: impl Read,
        expected: Option<&Digest>,
        progress: impl FnMut(u64),
    ) -> Result<(Digest, u64)> {
        self.write_blob_from_reader_pinned(reader, expected, progress, None)
    }

    pub(crate) fn write_blob_from_reader_pinned(
        &self,
        mut reader: impl Read,
        expected: Option<&Digest>,
        mut progress: impl FnMut(u64),
        pin: Option<&Pin>,
    ) -> Result<(Digest, u64)> {
        let mut t = self.temp_file("blob")?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            let k = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("reading the source of a blob", "", e)),
            };
            h.update(&buf[..k]);
            let path = t.path.clone();
            t.file().write_all(&buf[..k]).ctx("writing", path)?;
            n += k as u64;
            progress(n);
        }
        let d = Digest::from_hasher(h);
        if let Some(e) = expected
            && *e != d
        {
            return Err(Error::DigestMismatch {
                what: "blob".into(),
                expected: e.to_string(),
                actual: d.to_string(),
            });
        }
        if let Some(pin) = pin {
            pin.add(&d)?;
        }
        if !self.has_blob(&d) {
            t.commit(&self.blob_path(&d))?;
        }
        Ok((d, n))
    }

    /// Copies a file into the store as a blob (unpinned: see [`Pin::import_file`]).
    pub fn import_file(&self, path: &Path, progress: impl FnMut(u64)) -> Result<(Digest, u64)> {
        let f = File::open(path).ctx("opening", path)?;
        self.write_blob_from_reader(f, None, progress)
    }

    /// Reads a blob into memory, refusing one larger than `max` bytes.
    pub fn read_blob(&self, d: &Digest, max: u64) -> Result<Vec<u8>> {
        read_bounded(&self.blob_path(d), max)
    }

    /// Bytes free to an unprivileged writer on the store's filesystem; `None` where it
    /// cannot be known.
    pub fn free_space(&self) -> Option<u64> {
        #[cfg(unix)]
        {
            let st = rustix::fs::statvfs(&self.root).ok()?;
            // A filesystem that reports no blocks at all (some FUSE mounts) does not say.
            (st.f_blocks > 0).then(|| st.f_bavail.saturating_mul(st.f_frsize))
        }
        #[cfg(not(unix))]
        {
            None
        }
    }

    /// Reads a model's manifest and the sha256 of its bytes.
    pub fn read_manifest(&self, name: &ModelName) -> Result<(Manifest, Digest)> {
        let path = self.manifest_path(name);
        if !path.is_file() {
            return Err(Error::ModelNotFound(name.to_string()));
        }
        let bytes = read_bounded(&path, MAX_MANIFEST_BYTES)?;
        let digest = Digest::of_bytes(&bytes);
        if let Some(want) = name.digest()
            && *want != digest
        {
            return Err(Error::DigestMismatch {
                what: format!("manifest of {name}"),
                expected: want.to_string(),
                actual: digest.to_string(),
            });
        }
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| Error::InvalidManifest {
            model: name.to_string(),
            reason: e.to_string(),
        })?;
        Ok((m, digest))
    }

    /// Writes a manifest (atomically) after checking that every blob it names is present.
    pub fn write_manifest(&self, name: &ModelName, m: &Manifest) -> Result<Digest> {
        for l in m.blobs() {
            if !self.has_blob(&l.digest) {
                return Err(Error::BlobMissing {
                    model: name.to_string(),
                    digest: l.digest.to_string(),
                    path: self.blob_path(&l.digest),
                });
            }
        }
        self.write_manifest_bytes(name, &m.to_json())
    }

    pub(crate) fn write_manifest_bytes(&self, name: &ModelName, bytes: &[u8]) -> Result<Digest> {
        // One the store could not read back would be a model nothing can show, load or
        // delete (a Modelfile of 100,000 LICENSE lines made a 14.5 MB manifest).
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(Error::InvalidManifest {
                model: name.to_string(),
                reason: format!(
                    "it would take {} bytes, more than the {MAX_MANIFEST_BYTES} a store reads \
                     back (too many layers: LICENSE, MESSAGE, ADAPTER, ...)",
                    bytes.len()
                ),
            });
        }
        let mut t = self.temp_file("manifest")?;
        t.file().write_all(bytes).ctx("writing", &t.path)?;
        t.commit(&self.manifest_path(name))?;
        Ok(Digest::of_bytes(bytes))
    }

    /// Every usable model in the store. Entries whose path is not a valid name, whose
    /// manifest cannot be read, or whose manifest names a blob the store lacks are skipped
    /// with a warning.
    pub fn list(&self) -> Result<Vec<ModelSummary>> {
        let mut out = Vec::new();
        for (name, path) in self.manifest_files()? {
            let meta = match fs::metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!("skipping {}: {e}", path.display());
                    continue;
                }
            };
            match self.read_manifest(&name) {
                Ok((m, _)) if m.blobs().any(|l| !self.has_blob(&l.digest)) => {
                    let missing: Vec<String> = m
                        .blobs()
                        .filter(|l| !self.has_blob(&l.digest))
                        .map(|l| l.digest.to_string())
                        .collect();
                    tracing::warn!(
                        "not listing {name}: blob(s) {} missing from the store; \
                         pull or create it again",
                        missing.join(", ")
                    );
                }
                Ok((m, digest)) => out.push(ModelSummary {
                    size: self.displayed_size(&m),
                    name,
                    digest,
                    modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                }),
                Err(e) => tracing::warn!("skipping {}: {e}", path.display()),
            }
        }
        out.sort_by_key(|m| std::cmp::Reverse(m.modified));
        Ok(out)
    }

    fn displayed_size(&self, m: &Manifest) -> u64 {
        m.blobs()
            .map(|l| {
                if l.media_type == MEDIA_TYPE_LINK {
                    self.read_link(&l.digest).map_or(l.size, |li| li.size)
                } else {
                    l.size
                }
            })
            // Sizes come from a manifest: saturate rather than overflow.
            .fold(0u64, u64::saturating_add)
    }

    /// (name, manifest path) of every manifest file with a valid name (others are logged
    /// and skipped; their blobs are still kept by collectors).
    fn manifest_files(&self) -> Result<Vec<(ModelName, PathBuf)>> {
        let mut out = Vec::new();
        for (path, name) in self.manifest_tree() {
            match name {
                Some(n) => out.push((n, path)),
                None => tracing::debug!(
                    "skipping {}: not named like a model (host/namespace/model/tag)",
                    path.display()
                ),
            }
        }
        Ok(out)
    }

    pub(crate) fn read_link(&self, d: &Digest) -> Result<LinkInfo> {
        let bytes = self.read_blob(d, MAX_TEXT_LAYER_BYTES)?;
        serde_json::from_slice(&bytes).map_err(|e| Error::InvalidManifest {
            model: String::new(),
            reason: format!("link layer {d}: {e}"),
        })
    }

    fn read_text(&self, name: &ModelName, l: &Layer) -> Result<String> {
        let path = self.blob_path(&l.digest);
        if !path.is_file() {
            return Err(Error::BlobMissing {
                model: name.to_string(),
                digest: l.digest.to_string(),
                path,
            });
        }
        let bytes = read_bounded(&path, MAX_TEXT_LAYER_BYTES)?;
        String::from_utf8(bytes).map_err(|_| Error::InvalidManifest {
            model: name.to_string(),
            reason: format!("layer {} ({}) is not UTF-8 text", l.digest, l.media_type),
        })
    }

    /// Checks a linked file cheaply: it exists, and its size and modification time are
    /// those recorded at create time.
    pub fn check_link(link: &LinkInfo) -> Result<()> {
        let meta = fs::metadata(&link.path).map_err(|e| Error::LinkBroken {
            path: link.path.clone(),
            reason: format!("{e}; re-create the model or remove it"),
        })?;
        if meta.len() != link.size || mtime_ns(&meta) != link.mtime_ns {
            return Err(Error::LinkBroken {
                path: link.path.clone(),
                reason: format!(
                    "the file changed since the model was created (size {} now, {} then); \
                     run `corral create` again",
                    meta.len(),
                    link.size
                ),
            });
        }
        Ok(())
    }

    /// Re-hashes a linked file and compares with the digest recorded at create time.
    pub fn verify_link(link: &LinkInfo) -> Result<()> {
        let (d, _) = hash_file(&link.path, |_| {})?;
        if d != link.digest {
            return Err(Error::DigestMismatch {
                what: format!("linked file {}", link.path.display()),
                expected: link.digest.to_string(),
                actual: d.to_string(),
            });
        }
        Ok(())
    }

    /// Opens a model: manifest, config, weights path, template, system, parameters,
    /// messages, license, adapters and projectors. Every referenced blob must exist.
    pub fn get(&self, name: &ModelName) -> Result<ResolvedModel> {
        let (manifest, manifest_digest) = self.read_manifest(name)?;
        let modified = fs::metadata(self.manifest_path(name))
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        self.resolve(name, manifest, manifest_digest, modified, true)
    }

    /// Checks that a stored model can be opened, by the rules of [`Store::get`] (without
    /// making an ONNX model's directory). Push runs it first, so that a model that could
    /// never be used is refused the same way through a server and locally.
    pub fn check(&self, name: &ModelName) -> Result<()> {
        let (manifest, digest) = self.read_manifest(name)?;
        self.resolve(name, manifest, digest, SystemTime::UNIX_EPOCH, false).map(|_| ())
    }

    /// Checks that a manifest about to be written (a pull's, whose blobs are all present)
    /// could be opened by [`Store::get`]: the same rules, so that no model is stored that
    /// every use would refuse.
    pub(crate) fn check_manifest(
        &self,
        name: &ModelName,
        manifest: &Manifest,
        digest: Digest,
    ) -> Result<()> {
        self.resolve(name, manifest.clone(), digest, SystemTime::UNIX_EPOCH, false).map(|_| ())
    }

    /// The one set of rules that turns a manifest into a [`ResolvedModel`] (`materialize`:
    /// also make an ONNX model's directory of links).
    fn resolve(
        &self,
        name: &ModelName,
        manifest: Manifest,
        manifest_digest: Digest,
        modified: SystemTime,
        materialize: bool,
    ) -> Result<ResolvedModel> {
        let missing = |l: &Layer| Error::BlobMissing {
            model: name.to_string(),
            digest: l.digest.to_string(),
            path: self.blob_path(&l.digest),
        };
        for l in manifest.blobs() {
            if !self.has_blob(&l.digest) {
                return Err(missing(l));
            }
        }
        let config = match self.read_blob(&manifest.config.digest, MAX_TEXT_LAYER_BYTES) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
            Err(_) => ModelConfig::default(),
        };
        let mut r = ResolvedModel {
            name: name.clone(),
            model_path: PathBuf::new(),
            model_digest: manifest.config.digest,
            model_size: 0,
            link: None,
            template: None,
            system: None,
            params: serde_json::Map::new(),
            messages: Vec::new(),
            license: Vec::new(),
            adapters: Vec::new(),
            projectors: Vec::new(),
            config,
            manifest_digest,
            modified,
            manifest: manifest.clone(),
        };
        let mut have_model = false;
        let mut onnx_files: Vec<(String, PathBuf, u64)> = Vec::new();
        for l in &manifest.layers {
            match l.media_type.as_str() {
                MEDIA_TYPE_ONNX_FILE => {
                    let title = l
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(ANNOTATION_TITLE))
                        .cloned()
                        .unwrap_or_default();
                    if !safe_relative_path(&title) {
                        return Err(Error::InvalidManifest {
                            model: name.to_string(),
                            reason: format!(
                                "ONNX file layer {} has an unsafe path {title:?}",
                                l.digest
                            ),
                        });
                    }
                    onnx_files.push((title, self.blob_path(&l.digest), l.size));
                    if !have_model && l.media_type == MEDIA_TYPE_ONNX_FILE {
                        r.model_digest = l.digest;
                    }
                }
                MEDIA_TYPE_MODEL if !have_model => {
                    have_model = true;
                    r.model_path = self.blob_path(&l.digest);
                    r.model_digest = l.digest;
                    r.model_size = l.size;
                }
                MEDIA_TYPE_LINK if !have_model => {
                    have_model = true;
                    let li = self.read_link(&l.digest).map_err(|e| Error::InvalidManifest {
                        model: name.to_string(),
                        reason: e.to_string(),
                    })?;
                    Store::check_link(&li)?;
                    r.model_path = li.path.clone();
                    r.model_digest = li.digest;
                    r.model_size = li.size;
                    r.link = Some(li);
                }
                MEDIA_TYPE_TEMPLATE => r.template = Some(self.read_text(name, l)?),
                MEDIA_TYPE_SYSTEM => r.system = Some(self.read_text(name, l)?),
                MEDIA_TYPE_LICENSE => r.license.push(self.read_text(name, l)?),
                MEDIA_TYPE_PARAMS => {
                    let t = self.read_text(name, l)?;
                    r.params = serde_json::from_str(&t).map_err(|e| Error::InvalidManifest {
                        model: name.to_string(),
                        reason: format!("params layer {}: {e}", l.digest),
                    })?;
                }
                MEDIA_TYPE_MESSAGES => {
                    let t = self.read_text(name, l)?;
                    r.messages = serde_json::from_str(&t).map_err(|e| Error::InvalidManifest {
                        model: name.to_string(),
                        reason: format!("messages layer {}: {e}", l.digest),
                    })?;
                }
                MEDIA_TYPE_ADAPTER => r.adapters.push(self.blob_path(&l.digest)),
                MEDIA_TYPE_PROJECTOR => r.projectors.push(self.blob_path(&l.digest)),
                _ => {}
            }
        }
        if let Some(reason) = onnx_title_clash(&onnx_files) {
            return Err(Error::InvalidManifest { model: name.to_string(), reason });
        }
        if !onnx_files.is_empty() && !have_model {
            have_model = true;
            r.model_size = onnx_files.iter().map(|f| f.2).fold(0u64, u64::saturating_add);
            if materialize {
                r.model_path = self.materialize_onnx(&r.manifest_digest, &onnx_files)?;
            }
            r.config.model_format = "onnx".into();
        }
        if !have_model && !r.config.is_remote() {
            return Err(Error::InvalidManifest {
                model: name.to_string(),
                reason: "the manifest has no model layer".into(),
            });
        }
        Ok(r)
    }

    /// Copies a model under a new name (the manifest only; blobs are shared). The blobs
    /// are pinned first, so a concurrent `rm` of the source cannot leave the copy without
    /// them.
    pub fn copy(&self, src: &ModelName, dst: &ModelName) -> Result<()> {
        self.check_writable()?;
        dst.check_destination()?;
        let path = self.manifest_path(src);
        if !path.is_file() {
            return Err(Error::ModelNotFound(src.to_string()));
        }
        let bytes = read_bounded(&path, MAX_MANIFEST_BYTES)?;
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| Error::InvalidManifest {
            model: src.to_string(),
            reason: e.to_string(),
        })?;
        let pin = self.pin()?;
        pin.add_all(m.blobs().map(|l| l.digest))?;
        for l in m.blobs() {
            if !self.has_blob(&l.digest) {
                return Err(Error::BlobMissing {
                    model: src.to_string(),
                    digest: l.digest.to_string(),
                    path: self.blob_path(&l.digest),
                });
            }
        }
        self.write_manifest_bytes(dst, &bytes)?;
        drop(pin);
        Ok(())
    }

    /// Removes a model, then the blobs it used that no other model and no running writer
    /// (a create, pull or copy holding a [`Pin`], in any process) references. If some
    /// manifest cannot be read, its blobs are unknown and every blob is kept (the report
    /// says why); the model is removed all the same.
    pub fn remove(&self, name: &ModelName) -> Result<PruneReport> {
        self.check_writable()?;
        // A manifest that cannot be read (too large, not JSON) still goes: its blobs are
        // unknown, so they are kept for a later prune.
        let own = match self.read_manifest(name) {
            Ok((m, _)) => Some(m),
            // A name pinned to a digest removes only the manifest with that digest.
            Err(e) if name.digest().is_some() || matches!(e, Error::ModelNotFound(_)) => {
                return Err(e);
            }
            Err(e) => {
                tracing::warn!(
                    "removing {name}, whose manifest cannot be read ({e}); its blobs stay"
                );
                None
            }
        };
        let path = self.manifest_path(name);
        fs::remove_file(&path).ctx("removing", &path)?;
        // Remove now-empty directories up to manifests/.
        let stop = self.root.join("manifests");
        let mut dir = path.parent().map(Path::to_path_buf);
        while let Some(d) = dir {
            if d == stop || fs::remove_dir(&d).is_err() {
                break;
            }
            dir = d.parent().map(Path::to_path_buf);
        }
        let candidates: BTreeSet<Digest> =
            own.iter().flat_map(|m| m.blobs().map(|l| l.digest)).collect();
        self.collect(Some(&candidates))
    }

    /// Deletes the `candidates` (every blob when `None`) that no manifest and no live pin
    /// names, under the exclusive collector lock.
    pub(crate) fn collect(&self, candidates: Option<&BTreeSet<Digest>>) -> Result<PruneReport> {
        let _gc = self.gc_exclusive()?;
        let keep = self.keep_set();
        let mut report = PruneReport::default();
        if !keep.unknown.is_empty() {
            for u in &keep.unknown {
                tracing::warn!("keeping every blob: {u}");
            }
            report.kept_because = keep.unknown;
            return Ok(report);
        }
        let all;
        let candidates = match candidates {
            Some(c) => c,
            None => {
                let blobs = self.root.join("blobs");
                all = read_dir_sorted(&blobs)?
                    .iter()
                    .filter_map(|p| p.file_name().and_then(|s| s.to_str()))
                    .filter_map(|n| Digest::from_blob_file_name(n).ok())
                    .collect::<BTreeSet<Digest>>();
                &all
            }
        };
        for d in candidates {
            if !keep.digests.contains(d) {
                self.remove_blob(d, &mut report);
            }
        }
        Ok(report)
    }

    fn remove_blob(&self, d: &Digest, report: &mut PruneReport) {
        let p = self.blob_path(d);
        let size = fs::metadata(&p).map_or(0, |m| m.len());
        if fs::remove_file(&p).is_ok() {
            report.removed.push(*d);
            report.freed_bytes += size;
        }
    }

    /// Repositories (`namespace/model`) of `host` other than `except` whose manifests
    /// reference blob `d` (candidates for a cross-repository mount).
    pub fn repositories_with_blob(&self, host: &str, d: &Digest, except: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (name, _) in self.manifest_files().unwrap_or_default() {
            let repo = name.repository();
            if name.host() != host || repo == except || out.contains(&repo) {
                continue;
            }
            if let Ok((m, _)) = self.read_manifest(&name)
                && m.blobs().any(|l| l.digest == *d)
            {
                out.push(repo);
            }
        }
        out
    }

    /// Digests referenced by any file of the manifests tree (whether or not its path is a
    /// valid model name) or by a running writer's [`Pin`]. Fails if a manifest cannot be
    /// read, so that nothing deletes blobs of a model it failed to understand.
    pub fn referenced_blobs(&self) -> Result<HashSet<Digest>> {
        let _gc = if self.read_only { None } else { Some(self.gc_exclusive()?) };
        let keep = self.keep_set();
        if let Some(u) = keep.unknown.first() {
            return Err(Error::io(
                "reading the manifests",
                self.root.join("manifests"),
                std::io::Error::other(u.clone()),
            ));
        }
        Ok(keep.digests)
    }

    /// Removes blobs that no manifest (whatever its file name) and no running writer
    /// references, and what dead processes left in `corral-tmp/`: temporary files nobody
    /// holds, and partial downloads nobody holds that are older than [`PARTIAL_KEEP`] or
    /// whose blob is complete (younger ones are kept so that a pull resumes them).
    pub fn prune(&self) -> Result<PruneReport> {
        self.check_writable()?;
        let mut report = self.collect(None)?;
        let _gc = self.gc_exclusive()?;
        report.removed_temporaries = self.clean_temporaries(SystemTime::now());
        Ok(report)
    }
}

fn expand_tilde(p: PathBuf) -> PathBuf {
    if let Ok(rest) = p.strip_prefix("~")
        && let Some(home) = dirs::home_dir()
    {
        return home.join(rest);
    }
    p
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> =
        fs::read_dir(dir).ctx("listing", dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    v.sort();
    Ok(v)
}

/// Builds a [`LinkInfo`] for a file by hashing it once.
pub fn link_info_for(path: &Path, progress: impl FnMut(u64)) -> Result<LinkInfo> {
    let abs = fs::canonicalize(path).ctx("resolving", path)?;
    let meta = fs::metadata(&abs).ctx("reading metadata of", &abs)?;
    let (digest, size) = hash_file(&abs, progress)?;
    let after = fs::metadata(&abs).ctx("reading metadata of", &abs)?;
    if after.len() != size || mtime_ns(&after) != mtime_ns(&meta) {
        return Err(Error::LinkBroken {
            path: abs,
            reason: "the file changed while it was being hashed".into(),
        });
    }
    Ok(LinkInfo { path: abs, size, mtime_ns: mtime_ns(&meta), digest })
}

/// Two ONNX file layers whose paths cannot both be files of one directory: the same path
/// twice (`a` and `a/`), or one path inside another (`a` and `a/b`: `a` cannot be a file
/// and a directory). The paths have passed [`safe_relative_path`].
fn onnx_title_clash(files: &[(String, PathBuf, u64)]) -> Option<String> {
    let mut paths: Vec<(Vec<&str>, &str)> = files
        .iter()
        .map(|(t, _, _)| {
            (Path::new(t).components().filter_map(|c| c.as_os_str().to_str()).collect(), t.as_str())
        })
        .collect();
    paths.sort();
    paths.windows(2).find(|w| w[1].0.starts_with(&w[0].0)).map(|w| {
        format!(
            "ONNX file layers {:?} and {:?} cannot both be files of one directory",
            w[0].1, w[1].1
        )
    })
}

/// Whether a layer's path annotation is a plain relative path (no `..`, not absolute).
fn safe_relative_path(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 1024
        && !p.contains('\0')
        && Path::new(p).components().all(|c| matches!(c, std::path::Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
        (dir, s)
    }

    /// Temporary files in the temp area (not the collector lock or the pins directory).
    fn temporaries(s: &Store) -> usize {
        fs::read_dir(s.tmp_dir())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "tmp"))
            .count()
    }

    #[test]
    fn blob_digest_checked_before_visible() {
        let (_d, s) = store();
        let wrong = Digest::of_bytes(b"other");
        let e = s.write_blob_from_reader(&b"hello"[..], Some(&wrong), |_| {}).unwrap_err();
        assert!(matches!(e, Error::DigestMismatch { .. }), "{e}");
        assert!(!s.has_blob(&wrong));
        assert!(!s.has_blob(&Digest::of_bytes(b"hello")));
        assert_eq!(temporaries(&s), 0, "temp file left behind");
    }

    struct FailingReader(usize);
    impl Read for FailingReader {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("No space left on device (simulated)"));
            }
            let k = buf.len().min(self.0).min(1000);
            buf[..k].fill(7);
            self.0 -= k;
            Ok(k)
        }
    }

    #[test]
    fn failed_write_leaves_nothing() {
        let (_d, s) = store();
        assert!(s.write_blob_from_reader(FailingReader(5000), None, |_| {}).is_err());
        assert_eq!(fs::read_dir(s.root.join("blobs")).unwrap().count(), 0);
        assert_eq!(temporaries(&s), 0);
    }

    /// Found by an outside sweep: a manifest too large to read back was written (a
    /// Modelfile of 100,000 LICENSE lines), and the model could then not be deleted.
    #[test]
    fn manifests_too_large_to_read_are_not_written_and_unreadable_ones_are_removed() {
        let (_d, s) = store();
        let name = ModelName::parse("big").unwrap();
        let huge = vec![b' '; MAX_MANIFEST_BYTES as usize + 1];
        let e = s.write_manifest_bytes(&name, &huge).unwrap_err();
        assert!(matches!(e, Error::InvalidManifest { .. }), "{e}");
        assert!(!s.manifest_path(&name).exists());
        // One that is there but unreadable (written by another program) is removed.
        let path = s.manifest_path(&name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, &huge).unwrap();
        assert!(s.read_manifest(&name).is_err());
        s.remove(&name).unwrap();
        assert!(!path.exists());
        assert!(matches!(s.remove(&name), Err(Error::ModelNotFound(_))));
    }

    #[test]
    fn write_list_get_copy_remove_prune() {
        let (_d, s) = store();
        let model = s.write_blob_bytes(b"GGUF fake weights").unwrap();
        let tmpl = s.write_blob_bytes(b"{{ .Prompt }}").unwrap();
        let cfg = s.write_blob_bytes(br#"{"model_format":"gguf"}"#).unwrap();
        let orphan = s.write_blob_bytes(b"orphan").unwrap();
        let m = Manifest::new(
            Layer {
                media_type: MEDIA_TYPE_CONFIG.into(),
                digest: cfg,
                size: 23,
                from: None,
                annotations: None,
            },
            vec![
                Layer {
                    media_type: MEDIA_TYPE_MODEL.into(),
                    digest: model,
                    size: 17,
                    from: None,
                    annotations: None,
                },
                Layer {
                    media_type: MEDIA_TYPE_TEMPLATE.into(),
                    digest: tmpl,
                    size: 13,
                    from: None,
                    annotations: None,
                },
            ],
        );
        let a = ModelName::parse("a").unwrap();
        s.write_manifest(&a, &m).unwrap();
        let r = s.get(&a).unwrap();
        assert_eq!(r.template.as_deref(), Some("{{ .Prompt }}"));
        assert_eq!(fs::read(&r.model_path).unwrap(), b"GGUF fake weights");
        assert_eq!(r.config.model_format, "gguf");
        let b = ModelName::parse("ns/b:1").unwrap();
        s.copy(&a, &b).unwrap();
        let names: Vec<String> = s.list().unwrap().iter().map(|m| m.name.to_string()).collect();
        assert_eq!(names.len(), 2);
        assert!(names.contains(&"a:latest".to_string()) && names.contains(&"ns/b:1".to_string()));
        let rep = s.remove(&a).unwrap();
        assert!(rep.removed.is_empty(), "blobs still used by b");
        assert!(s.get(&b).is_ok());
        let rep = s.prune().unwrap();
        assert_eq!(rep.removed, vec![orphan]);
        let rep = s.remove(&b).unwrap();
        assert_eq!(rep.removed.len(), 3);
        assert!(s.list().unwrap().is_empty());
        assert!(matches!(s.get(&b), Err(Error::ModelNotFound(_))));
    }

    /// Names compare as Ollama's do, ignoring case: a model stored as `Mistral:Q4` is
    /// found, copied, overwritten and removed as `mistral:q4`, and no second manifest
    /// appears beside it.
    #[test]
    fn names_ignore_case() {
        let (_d, s) = store();
        let weights = s.write_blob_bytes(b"GGUF weights").unwrap();
        let cfg = s.write_blob_bytes(br#"{"model_format":"gguf"}"#).unwrap();
        let layer = |digest: &Digest, media: &str, size| Layer {
            media_type: media.into(),
            digest: *digest,
            size,
            from: None,
            annotations: None,
        };
        let m = Manifest::new(
            layer(&cfg, MEDIA_TYPE_CONFIG, 23),
            vec![layer(&weights, MEDIA_TYPE_MODEL, 12)],
        );
        let stored = ModelName::parse("Team/Mistral:Q4").unwrap();
        s.write_manifest(&stored, &m).unwrap();
        let lower = ModelName::parse("team/mistral:q4").unwrap();
        assert_eq!(s.manifest_path(&lower), s.manifest_path(&stored));
        assert!(s.get(&lower).is_ok());
        // Written again under another case: the one manifest is replaced.
        s.write_manifest(&lower, &m).unwrap();
        assert_eq!(s.list().unwrap().len(), 1);
        assert_eq!(s.list().unwrap()[0].name.to_string(), "Team/Mistral:Q4");
        s.copy(&ModelName::parse("TEAM/MISTRAL:q4").unwrap(), &ModelName::parse("b").unwrap())
            .unwrap();
        s.remove(&ModelName::parse("team/MISTRAL:Q4").unwrap()).unwrap();
        let names: Vec<String> = s.list().unwrap().iter().map(|m| m.name.to_string()).collect();
        assert_eq!(names, ["b:latest"]);
        assert!(matches!(s.get(&lower), Err(Error::ModelNotFound(_))));
    }

    /// A copy to `name@sha256:...` is refused (the digest was dropped silently).
    #[test]
    fn copy_to_a_name_with_a_digest_is_refused() {
        let (_d, s) = store();
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let src = ModelName::parse("a").unwrap();
        let dst = ModelName::parse(&format!("b@{d}")).unwrap();
        let e = s.copy(&src, &dst).unwrap_err();
        assert!(matches!(e, Error::InvalidName { .. }), "{e}");
        assert!(!s.manifest_path(&dst).exists());
    }

    #[test]
    fn manifest_with_missing_blob_refused() {
        let (_d, s) = store();
        let d = Digest::of_bytes(b"nope");
        let m = Manifest::new(
            Layer {
                media_type: MEDIA_TYPE_CONFIG.into(),
                digest: d,
                size: 4,
                from: None,
                annotations: None,
            },
            vec![],
        );
        let e = s.write_manifest(&ModelName::parse("x").unwrap(), &m).unwrap_err();
        assert!(matches!(e, Error::BlobMissing { .. }), "{e}");
    }

    #[test]
    fn read_only_refuses_writes() {
        let (d, _s) = store();
        let ro = Store::open(d.path(), StoreOptions { read_only: true }).unwrap();
        assert!(matches!(ro.write_blob_bytes(b"x"), Err(Error::ReadOnly(_))));
        assert!(matches!(ro.prune(), Err(Error::ReadOnly(_))));
    }
}
