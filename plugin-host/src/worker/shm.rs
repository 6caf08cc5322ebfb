//! Shared memory for logits rows: a file on a memory-backed filesystem (`/dev/shm`, else
//! the temp directory) that the worker creates and maps, and the host opens, maps and
//! unlinks at once, so nothing is left behind however either process ends.

use std::{fs::File, path::Path};

use corral_backend_api::BackendError;
use memmap2::MmapMut;

/// `rows` logits rows of `n_vocab` floats, mapped.
pub(crate) struct SharedRows {
    map: MmapMut,
    rows: u32,
    n_vocab: u32,
}

fn err(what: &str, path: &Path, e: std::io::Error) -> BackendError {
    BackendError::internal(format!("shared memory {}: {what}: {e}", path.display()))
}

fn map(file: &File, path: &Path) -> Result<MmapMut, BackendError> {
    // SAFETY: the file is private to this host and its worker (created with a unique
    // name, unlinked as soon as the host has it open); its length is set once before
    // either side maps it and never changes, so the mapping stays valid. The two sides
    // never write a row at the same time: the worker writes rows while it answers a
    // decode, the host reads them after the answer and before its next call.
    unsafe { MmapMut::map_mut(file) }.map_err(|e| err("cannot map", path, e))
}

impl SharedRows {
    /// The worker side: creates a file for `rows` rows and maps it.
    pub(crate) fn create(
        rows: u32,
        n_vocab: u32,
    ) -> Result<(SharedRows, std::path::PathBuf), BackendError> {
        let dir = Path::new("/dev/shm");
        let dir = if dir.is_dir() { dir.to_path_buf() } else { std::env::temp_dir() };
        let file = tempfile::Builder::new()
            .prefix("corral-logits-")
            .tempfile_in(&dir)
            .map_err(|e| err("cannot create", &dir, e))?;
        let bytes = u64::from(rows.max(1)) * u64::from(n_vocab.max(1)) * 4;
        file.as_file().set_len(bytes).map_err(|e| err("cannot size", file.path(), e))?;
        let map = map(file.as_file(), file.path())?;
        // The host unlinks the file once it has it open.
        let (_, path) = file.keep().map_err(|e| err("cannot keep", &dir, e.error))?;
        Ok((SharedRows { map, rows: rows.max(1), n_vocab: n_vocab.max(1) }, path))
    }

    /// The host side: opens the worker's file, maps it, and unlinks it.
    pub(crate) fn open_host(
        path: &Path,
        rows: u32,
        n_vocab: u32,
    ) -> Result<SharedRows, BackendError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| err("cannot open", path, e));
        let _ = std::fs::remove_file(path);
        let file = file?;
        let want = u64::from(rows.max(1)) * u64::from(n_vocab.max(1)) * 4;
        let len = file.metadata().map_err(|e| err("cannot stat", path, e))?.len();
        if len != want {
            return Err(BackendError::internal(format!(
                "shared memory {} has {len} bytes, expected {want}",
                path.display()
            )));
        }
        Ok(SharedRows { map: map(&file, path)?, rows: rows.max(1), n_vocab: n_vocab.max(1) })
    }

    /// How many rows there are.
    pub(crate) fn rows(&self) -> u32 {
        self.rows
    }

    /// Row `row`, writable.
    pub(crate) fn row_mut(&mut self, row: usize) -> Result<&mut [f32], BackendError> {
        let n = self.n_vocab as usize;
        if row >= self.rows as usize {
            return Err(BackendError::internal(format!("logits row {row} is out of range")));
        }
        let floats: &mut [f32] = bytemuck::cast_slice_mut(&mut self.map[..]);
        Ok(&mut floats[row * n..(row + 1) * n])
    }
}
