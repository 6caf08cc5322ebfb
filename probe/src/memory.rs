//! Memory: /proc/meminfo and the cgroup (v2 or v1) memory limit of this process.

use std::path::{Path, PathBuf};

use crate::fsutil::{self, under};
use crate::{MemoryInfo, ProbeOptions};

/// Limits at or above this are "no limit" (cgroup v1 writes 0x7FFFFFFFFFFFF000).
const UNLIMITED: u64 = 1 << 62;

/// A value in bytes from a `Key:   123 kB` meminfo line.
fn meminfo_bytes(text: &str, key: &str) -> Option<u64> {
    let value = fsutil::colon_value(text, key)?;
    let mut parts = value.split_whitespace();
    let number: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => number.checked_mul(1024),
        None => Some(number),
        Some(_) => None,
    }
}

#[derive(Debug, PartialEq, Eq)]
struct CgroupMemory {
    version: u8,
    limit: u64,
    usage: Option<u64>,
    reclaimable: u64,
}

/// Paths of this process's cgroup for v2 (`0::/path`) and the v1 memory controller.
fn own_cgroup_paths(root: &Path) -> (Option<String>, Option<String>) {
    let Some(text) = fsutil::read_small(&under(root, "/proc/self/cgroup")) else {
        return (None, None);
    };
    let mut v2 = None;
    let mut v1 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.is_empty() {
            v2 = Some(path.to_string());
        } else if controllers.split(',').any(|c| c == "memory") {
            v1 = Some(path.to_string());
        }
    }
    (v2, v1)
}

/// `mount/<path>`, then each ancestor up to `mount` itself (deepest first).
fn cgroup_dirs(mount: &Path, path: Option<&str>) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(path) = path {
        let mut rel = PathBuf::from(path.trim_start_matches('/'));
        // A path with ".." cannot be trusted to stay under the mount.
        if rel.components().all(|c| matches!(c, std::path::Component::Normal(_))) {
            loop {
                if rel.as_os_str().is_empty() {
                    break;
                }
                dirs.push(mount.join(&rel));
                if !rel.pop() {
                    break;
                }
            }
        }
    }
    dirs.push(mount.to_path_buf());
    dirs
}

/// The tightest limit among `dirs` (a cgroup and its ancestors), with usage and
/// reclaimable page cache from the deepest directory that has them.
fn read_limits(
    dirs: &[PathBuf],
    version: u8,
    limit_file: &str,
    usage_file: &str,
    inactive_key: &str,
) -> Option<CgroupMemory> {
    let mut limit: Option<u64> = None;
    let mut usage = None;
    let mut reclaimable = None;
    for dir in dirs {
        let Some(text) = fsutil::read_small(&dir.join(limit_file)) else {
            continue;
        };
        if usage.is_none() {
            usage = fsutil::read_u64(&dir.join(usage_file));
            reclaimable = fsutil::read_small(&dir.join("memory.stat"))
                .and_then(|s| fsutil::kv_value(&s, inactive_key).and_then(|v| v.parse().ok()));
        }
        if text == "max" {
            continue;
        }
        if let Some(value) = fsutil::parse_u64(&text).filter(|v| *v < UNLIMITED) {
            limit = Some(limit.map_or(value, |l| l.min(value)));
        }
    }
    Some(CgroupMemory { version, limit: limit?, usage, reclaimable: reclaimable.unwrap_or(0) })
}

fn cgroup_memory(root: &Path) -> Option<CgroupMemory> {
    let (v2_path, v1_path) = own_cgroup_paths(root);
    let v2_mount = under(root, "/sys/fs/cgroup");
    if v2_mount.join("cgroup.controllers").exists() || v2_mount.join("memory.max").exists() {
        let dirs = cgroup_dirs(&v2_mount, v2_path.as_deref());
        if let Some(found) = read_limits(&dirs, 2, "memory.max", "memory.current", "inactive_file")
        {
            return Some(found);
        }
    }
    let v1_mount = under(root, "/sys/fs/cgroup/memory");
    let dirs = cgroup_dirs(&v1_mount, v1_path.as_deref());
    read_limits(&dirs, 1, "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
}

pub(crate) fn probe_memory(opts: &ProbeOptions, notes: &mut Vec<String>) -> MemoryInfo {
    let path = under(&opts.root, "/proc/meminfo");
    let (total, available) = match fsutil::read_limited(&path, fsutil::SMALL_FILE_LIMIT) {
        Ok(text) => {
            let total = meminfo_bytes(&text, "MemTotal");
            let available = meminfo_bytes(&text, "MemAvailable");
            if total.is_none() {
                notes.push(format!("memory: no MemTotal in {}", path.display()));
            }
            (total, available)
        }
        Err(err) => {
            if cfg!(target_os = "linux") || !opts.is_real_system() {
                notes.push(format!("memory: could not read {}: {err}", path.display()));
            }
            (None, None)
        }
    };
    #[cfg(target_os = "macos")]
    let (total, available) = {
        let (mut total, available) = (total, available);
        if opts.is_real_system() {
            crate::apple::fill_memory(&mut total, notes);
        }
        (total, available)
    };

    let cgroup = cgroup_memory(&opts.root);
    let limit = cgroup.as_ref().map(|c| c.limit);
    let effective_total = match (total, limit) {
        (Some(t), Some(l)) => Some(t.min(l)),
        (t, l) => t.or(l),
    };
    let room = cgroup.as_ref().map(|c| match c.usage {
        Some(u) => c.limit.saturating_sub(u.saturating_sub(c.reclaimable)),
        None => c.limit,
    });
    let effective_available = match (available, room) {
        (Some(a), Some(r)) => Some(a.min(r)),
        (a, r) => a.or(r),
    };
    MemoryInfo {
        total_bytes: total,
        available_bytes: available,
        cgroup_limit_bytes: limit,
        cgroup_usage_bytes: cgroup.as_ref().and_then(|c| c.usage),
        cgroup_version: cgroup.as_ref().map(|c| c.version),
        effective_total_bytes: effective_total,
        effective_available_bytes: effective_available,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, path: &str, text: &str) {
        let p = under(root, path);
        std::fs::create_dir_all(p.parent().expect("fixture path has a parent")).expect("mkdir");
        std::fs::write(p, text).expect("write fixture");
    }

    #[test]
    fn meminfo_units() {
        let text = "MemTotal:       16384 kB\nMemAvailable:    8192 kB\n";
        assert_eq!(meminfo_bytes(text, "MemTotal"), Some(16384 * 1024));
        assert_eq!(meminfo_bytes(text, "Nope"), None);
    }

    #[test]
    fn cgroup_v1_nested_path_and_unlimited_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(root, "/proc/self/cgroup", "5:memory:/docker/abc\n0::/\n");
        write(root, "/sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n");
        write(root, "/sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes", "2147483648\n");
        write(root, "/sys/fs/cgroup/memory/docker/abc/memory.usage_in_bytes", "1073741824\n");
        write(
            root,
            "/sys/fs/cgroup/memory/docker/abc/memory.stat",
            "total_inactive_file 536870912\n",
        );
        let cg = cgroup_memory(root).expect("limit found");
        assert_eq!(
            cg,
            CgroupMemory {
                version: 1,
                limit: 2 << 30,
                usage: Some(1 << 30),
                reclaimable: 512 << 20
            }
        );
    }

    #[test]
    fn cgroup_v2_parent_limit_is_tighter() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(root, "/proc/self/cgroup", "0::/user.slice/app\n");
        write(root, "/sys/fs/cgroup/cgroup.controllers", "memory\n");
        write(root, "/sys/fs/cgroup/user.slice/memory.max", "1073741824\n");
        write(root, "/sys/fs/cgroup/user.slice/app/memory.max", "max\n");
        write(root, "/sys/fs/cgroup/user.slice/app/memory.current", "1000\n");
        let cg = cgroup_memory(root).expect("limit found");
        assert_eq!(cg.limit, 1 << 30);
        assert_eq!(cg.usage, Some(1000));
        assert_eq!(cg.version, 2);
    }

    #[test]
    fn no_cgroup_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "/sys/fs/cgroup/memory.max", "max\n");
        assert_eq!(cgroup_memory(dir.path()), None);
    }
}
