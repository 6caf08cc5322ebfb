//! Bounded reads of files under the probe root.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Most bytes read from a small sysfs/procfs file.
pub(crate) const SMALL_FILE_LIMIT: u64 = 64 * 1024;
/// Most bytes read from /proc/cpuinfo (about 1.5 KiB per logical CPU; room for 2048).
pub(crate) const CPUINFO_LIMIT: u64 = 4 * 1024 * 1024;
/// Most directory entries looked at in one directory.
pub(crate) const DIR_ENTRY_LIMIT: usize = 4096;

/// `path` (absolute, as on a real system) placed under `root`.
pub(crate) fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// Reads at most `limit` bytes of a text file (invalid UTF-8 replaced).
pub(crate) fn read_limited(path: &Path, limit: u64) -> io::Result<String> {
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(limit).read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Reads a small file, trimmed; `None` when it is absent, unreadable or empty.
pub(crate) fn read_small(path: &Path) -> Option<String> {
    let text = read_limited(path, SMALL_FILE_LIMIT).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// Reads a small file holding one unsigned integer (decimal or `0x` hex).
pub(crate) fn read_u64(path: &Path) -> Option<u64> {
    parse_u64(&read_small(path)?)
}

/// Parses a decimal or `0x`-prefixed hexadecimal unsigned integer.
pub(crate) fn parse_u64(text: &str) -> Option<u64> {
    let text = text.trim();
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// Entries of a directory, sorted by name; empty when it cannot be read.
pub(crate) fn list_dir(path: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(path) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> =
        entries.take(DIR_ENTRY_LIMIT).filter_map(|e| e.ok().map(|e| e.path())).collect();
    out.sort();
    out
}

/// The value of `key` in a `key value` per-line file (KFD properties).
pub(crate) fn kv_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        let mut parts = line.split_whitespace();
        (parts.next() == Some(key)).then(|| parts.next()).flatten()
    })
}

/// The value after `key:` in a `key: value` per-line file (cpuinfo, nvidia information).
pub(crate) fn colon_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k.trim() == key).then(|| v.trim())
    })
}

/// Natural ordering of numbered directory names (`node10` after `node9`).
pub(crate) fn numeric_suffix(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let digits: String = name.chars().rev().take_while(char::is_ascii_digit).collect();
    let digits: String = digits.chars().rev().collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numbers_and_key_values() {
        assert_eq!(parse_u64("0x10de"), Some(0x10de));
        assert_eq!(parse_u64(" 42\n"), Some(42));
        assert_eq!(parse_u64("max"), None);
        assert_eq!(
            kv_value("simd_count 0\ngfx_target_version 110000\n", "gfx_target_version"),
            Some("110000")
        );
        assert_eq!(colon_value("Model: \t NVIDIA X\nIRQ: 3", "Model"), Some("NVIDIA X"));
        assert_eq!(under(Path::new("/fake"), "/proc/cpuinfo"), Path::new("/fake/proc/cpuinfo"));
        assert_eq!(numeric_suffix(Path::new("/a/nodes/12")), Some(12));
    }
}
