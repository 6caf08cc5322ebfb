//! CPU: /proc/cpuinfo under the root, cross-checked with runtime feature detection on the
//! real system.

use std::collections::BTreeSet;

use crate::fsutil::{self, CPUINFO_LIMIT, colon_value, under};
use crate::{CpuInfo, ProbeOptions};

/// x86 `/proc/cpuinfo` flags reported as features, with their normalised names.
const X86_FLAGS: &[(&str, &str)] = &[
    ("sse", "sse"),
    ("sse2", "sse2"),
    ("pni", "sse3"),
    ("ssse3", "ssse3"),
    ("sse4_1", "sse4_1"),
    ("sse4_2", "sse4_2"),
    ("popcnt", "popcnt"),
    ("aes", "aes"),
    ("pclmulqdq", "pclmulqdq"),
    ("avx", "avx"),
    ("avx2", "avx2"),
    ("fma", "fma"),
    ("f16c", "f16c"),
    ("bmi1", "bmi1"),
    ("bmi2", "bmi2"),
    ("abm", "lzcnt"),
    ("movbe", "movbe"),
    ("sha_ni", "sha"),
    ("gfni", "gfni"),
    ("vaes", "vaes"),
    ("vpclmulqdq", "vpclmulqdq"),
    ("avx512f", "avx512f"),
    ("avx512bw", "avx512bw"),
    ("avx512cd", "avx512cd"),
    ("avx512dq", "avx512dq"),
    ("avx512vl", "avx512vl"),
    ("avx512ifma", "avx512ifma"),
    ("avx512vbmi", "avx512vbmi"),
    ("avx512_vbmi2", "avx512vbmi2"),
    ("avx512_vnni", "avx512vnni"),
    ("avx512_bf16", "avx512bf16"),
    ("avx512_fp16", "avx512fp16"),
    ("avx512_bitalg", "avx512bitalg"),
    ("avx512_vpopcntdq", "avx512vpopcntdq"),
    ("avx_vnni", "avx_vnni"),
    ("avx_vnni_int8", "avx_vnni_int8"),
    ("amx_tile", "amx_tile"),
    ("amx_int8", "amx_int8"),
    ("amx_bf16", "amx_bf16"),
];

/// ARM `Features:` words reported as features, with their normalised names.
const ARM_FLAGS: &[(&str, &str)] = &[
    ("fp", "fp"),
    ("asimd", "neon"),
    ("asimdhp", "fp16"),
    ("asimddp", "dotprod"),
    ("i8mm", "i8mm"),
    ("bf16", "bf16"),
    ("sve", "sve"),
    ("sve2", "sve2"),
    ("sme", "sme"),
    ("aes", "aes"),
    ("sha2", "sha2"),
    ("crc32", "crc32"),
    ("atomics", "atomics"),
];

/// Normalises a CPU feature name so that manifests may use any common spelling:
/// lowercase, `.`/`-` become `_`, `avx512_vnni` becomes `avx512vnni`, and the
/// /proc/cpuinfo and Rust spellings map to one name (`pni` → `sse3`, `abm` → `lzcnt`,
/// `asimd` → `neon`, `avxvnni` → `avx_vnni`, `sse4.2` → `sse4_2`, ...).
pub fn normalize_cpu_feature(name: &str) -> String {
    let lower = name.trim().to_ascii_lowercase().replace(['.', '-'], "_");
    let aliased = match lower.as_str() {
        "pni" => "sse3",
        "abm" => "lzcnt",
        "sha_ni" => "sha",
        "asimd" => "neon",
        "asimdhp" | "fphp" => "fp16",
        "asimddp" => "dotprod",
        "avxvnni" => "avx_vnni",
        "avxvnniint8" => "avx_vnni_int8",
        other => other,
    };
    match aliased.strip_prefix("avx512_") {
        Some(rest) => format!("avx512{rest}"),
        None => aliased.to_string(),
    }
}

/// The x86-64 microarchitecture level (1..=4) a set of features meets. `has` answers
/// for normalised feature names and raw cpuinfo flags.
pub(crate) fn x86_64_level(has: impl Fn(&str) -> bool) -> Option<u8> {
    const V1: &[&str] = &["cmov", "cx8", "fpu", "fxsr", "mmx", "sse", "sse2"];
    const V2: &[&str] = &["cx16", "lahf_lm", "popcnt", "sse3", "sse4_1", "sse4_2", "ssse3"];
    const V3: &[&str] = &["avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "lzcnt", "movbe", "xsave"];
    const V4: &[&str] = &["avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"];
    let mut level = None;
    for (n, set) in [(1u8, V1), (2, V2), (3, V3), (4, V4)] {
        if set.iter().all(|f| has(f)) {
            level = Some(n);
        } else {
            break;
        }
    }
    level
}

/// What one /proc/cpuinfo says.
#[derive(Debug, Default)]
struct ParsedCpuinfo {
    model_name: Option<String>,
    vendor: Option<String>,
    architecture: Option<String>,
    logical: u32,
    physical: Option<u32>,
    raw_flags: BTreeSet<String>,
    features: BTreeSet<String>,
}

fn parse_cpuinfo(text: &str) -> ParsedCpuinfo {
    let mut out = ParsedCpuinfo::default();
    let mut cores = BTreeSet::new();
    let mut cores_complete = true;
    let mut implementer = None;
    let mut part = None;
    let mut arm_arch = None;
    for block in text.split("\n\n") {
        if colon_value(block, "processor").is_none() {
            // Trailing blocks (e.g. "Hardware" on ARM) may still name the model.
            if out.model_name.is_none() {
                out.model_name = colon_value(block, "Hardware").map(str::to_string);
            }
            continue;
        }
        out.logical += 1;
        if out.model_name.is_none() {
            out.model_name = colon_value(block, "model name")
                .or_else(|| colon_value(block, "Processor"))
                .filter(|s| !s.is_empty())
                .map(str::to_string);
        }
        if out.vendor.is_none() {
            out.vendor = colon_value(block, "vendor_id").map(str::to_string);
        }
        implementer = implementer.or_else(|| colon_value(block, "CPU implementer"));
        part = part.or_else(|| colon_value(block, "CPU part"));
        arm_arch = arm_arch.or_else(|| colon_value(block, "CPU architecture"));
        match (colon_value(block, "physical id"), colon_value(block, "core id")) {
            (Some(p), Some(c)) => {
                cores.insert((p.to_string(), c.to_string()));
            }
            _ => cores_complete = false,
        }
        if out.raw_flags.is_empty() {
            if let Some(flags) = colon_value(block, "flags") {
                let lm = flags.split_whitespace().any(|f| f == "lm");
                out.architecture = Some(if lm { "x86_64" } else { "x86" }.to_string());
                out.raw_flags = flags.split_whitespace().map(str::to_string).collect();
                for (flag, name) in X86_FLAGS {
                    if out.raw_flags.contains(*flag) {
                        out.features.insert((*name).to_string());
                    }
                }
            } else if let Some(flags) = colon_value(block, "Features") {
                out.raw_flags = flags.split_whitespace().map(str::to_string).collect();
                for (flag, name) in ARM_FLAGS {
                    if out.raw_flags.contains(*flag) {
                        out.features.insert((*name).to_string());
                    }
                }
            }
        }
    }
    if cores_complete && !cores.is_empty() {
        out.physical = u32::try_from(cores.len()).ok();
    }
    if out.architecture.is_none() && (implementer.is_some() || out.features.contains("neon")) {
        let arch = match arm_arch {
            Some(a) if a.trim().parse::<u32>().is_ok_and(|v| v < 8) => "arm",
            _ => "aarch64",
        };
        out.architecture = Some(arch.to_string());
    }
    if let Some(imp) = implementer {
        let imp_id = fsutil::parse_u64(imp);
        let vendor = arm_implementer(imp_id);
        if out.vendor.is_none() {
            out.vendor =
                Some(vendor.map_or_else(|| format!("ARM implementer {imp}"), str::to_string));
        }
        if out.model_name.is_none() {
            let part_name = part.and_then(fsutil::parse_u64).and_then(|p| arm_part(imp_id, p));
            out.model_name = match (vendor, part_name) {
                (Some(v), Some(p)) => Some(format!("{v} {p}")),
                (_, Some(p)) => Some(p.to_string()),
                _ => None,
            };
        }
    }
    out
}

fn arm_implementer(id: Option<u64>) -> Option<&'static str> {
    Some(match id? {
        0x41 => "ARM",
        0x42 => "Broadcom",
        0x43 => "Cavium",
        0x48 => "HiSilicon",
        0x4e => "NVIDIA",
        0x51 => "Qualcomm",
        0x61 => "Apple",
        0xc0 => "Ampere",
        _ => return None,
    })
}

fn arm_part(implementer: Option<u64>, part: u64) -> Option<&'static str> {
    if implementer != Some(0x41) {
        return None;
    }
    Some(match part {
        0xd03 => "Cortex-A53",
        0xd05 => "Cortex-A55",
        0xd08 => "Cortex-A72",
        0xd0b => "Cortex-A76",
        0xd0c => "Neoverse-N1",
        0xd0d => "Cortex-A77",
        0xd40 => "Neoverse-V1",
        0xd41 => "Cortex-A78",
        0xd49 => "Neoverse-N2",
        0xd4f => "Neoverse-V2",
        _ => return None,
    })
}

/// Physical cores from sysfs topology, when cpuinfo does not say.
fn physical_from_sysfs(opts: &ProbeOptions) -> Option<u32> {
    let dir = under(&opts.root, "/sys/devices/system/cpu");
    let mut cores = BTreeSet::new();
    for cpu in fsutil::list_dir(&dir) {
        let name = cpu.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if !name
            .strip_prefix("cpu")
            .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
        {
            continue;
        }
        let topo = cpu.join("topology");
        let package = fsutil::read_small(&topo.join("physical_package_id"))?;
        let core = fsutil::read_small(&topo.join("core_id"))?;
        let cluster = fsutil::read_small(&topo.join("cluster_id")).unwrap_or_default();
        cores.insert((package, cluster, core));
    }
    u32::try_from(cores.len()).ok().filter(|n| *n > 0)
}

pub(crate) fn probe_cpu(opts: &ProbeOptions, notes: &mut Vec<String>) -> CpuInfo {
    let path = under(&opts.root, "/proc/cpuinfo");
    let parsed = match fsutil::read_limited(&path, CPUINFO_LIMIT) {
        Ok(text) => parse_cpuinfo(&text),
        Err(err) => {
            if cfg!(target_os = "linux") || !opts.is_real_system() {
                notes.push(format!("CPU: could not read {}: {err}", path.display()));
            }
            ParsedCpuinfo::default()
        }
    };
    let ParsedCpuinfo { model_name, vendor, architecture, logical, physical, raw_flags, features } =
        parsed;
    let mut features = features;
    let real = opts.is_real_system();

    let architecture = if real {
        std::env::consts::ARCH.to_string()
    } else {
        architecture.unwrap_or_else(|| {
            notes.push(
                "CPU: architecture not recognisable from cpuinfo; assuming the host's".into(),
            );
            std::env::consts::ARCH.to_string()
        })
    };
    let logical_cores = (logical > 0).then_some(logical);
    let physical_cores = physical.or_else(|| physical_from_sysfs(opts));
    #[cfg(target_os = "macos")]
    let (model_name, vendor, logical_cores, physical_cores) = {
        let mut cpu = (model_name, vendor, logical_cores, physical_cores);
        if real {
            crate::apple::fill_cpu(&mut cpu.0, &mut cpu.1, &mut cpu.2, &mut cpu.3, notes);
        }
        cpu
    };

    let usable_threads = if real {
        std::thread::available_parallelism().ok().and_then(|n| u32::try_from(n.get()).ok())
    } else {
        None
    };
    // Without /proc/cpuinfo (not Linux), the standard library's count is the best there is.
    let logical_cores = logical_cores.or(usable_threads);
    if real {
        runtime_cross_check(&mut features, notes);
    }
    if logical_cores.is_none() {
        notes.push("CPU: logical core count unknown".into());
    } else if physical_cores.is_none() {
        notes.push("CPU: physical core count unknown (no core ids in cpuinfo or sysfs)".into());
    }

    let x86_64_level = (architecture == "x86_64")
        .then(|| x86_64_level(|f| features.contains(f) || raw_flags.contains(f)))
        .flatten();

    CpuInfo {
        model_name,
        vendor,
        architecture,
        logical_cores,
        physical_cores,
        usable_threads,
        features: features.into_iter().collect(),
        x86_64_level,
    }
}

/// Reconciles cpuinfo with what the running CPU (and OS) actually enables. Runtime
/// detection wins: it also checks that the OS saves the wider registers.
fn runtime_cross_check(features: &mut BTreeSet<String>, notes: &mut Vec<String>) {
    let detected = runtime_features();
    if detected.is_empty() {
        return;
    }
    let mut differences = Vec::new();
    for (name, present) in detected {
        let listed = features.contains(name);
        if present && !listed {
            features.insert(name.to_string());
            differences.push(format!("+{name}"));
        } else if !present && listed {
            features.remove(name);
            differences.push(format!("-{name}"));
        }
    }
    if !differences.is_empty() {
        notes.push(format!(
            "CPU: runtime feature detection differs from /proc/cpuinfo ({}); using runtime \
             detection",
            differences.join(" ")
        ));
    }
}

/// (normalised name, detected) for the features the standard library can detect here.
#[cfg(target_arch = "x86_64")]
fn runtime_features() -> Vec<(&'static str, bool)> {
    macro_rules! detect {
        ($($name:literal => $rust:tt),* $(,)?) => {
            vec![$(($name, std::arch::is_x86_feature_detected!($rust))),*]
        };
    }
    detect![
        "sse3" => "sse3",
        "ssse3" => "ssse3",
        "sse4_1" => "sse4.1",
        "sse4_2" => "sse4.2",
        "popcnt" => "popcnt",
        "avx" => "avx",
        "avx2" => "avx2",
        "fma" => "fma",
        "f16c" => "f16c",
        "bmi1" => "bmi1",
        "bmi2" => "bmi2",
        "lzcnt" => "lzcnt",
        "movbe" => "movbe",
        "avx512f" => "avx512f",
        "avx512bw" => "avx512bw",
        "avx512cd" => "avx512cd",
        "avx512dq" => "avx512dq",
        "avx512vl" => "avx512vl",
        "avx512vnni" => "avx512vnni",
        "avx512bf16" => "avx512bf16",
        "avx512fp16" => "avx512fp16",
        "avx_vnni" => "avxvnni",
    ]
}

#[cfg(target_arch = "aarch64")]
fn runtime_features() -> Vec<(&'static str, bool)> {
    macro_rules! detect {
        ($($name:literal => $rust:tt),* $(,)?) => {
            vec![$(($name, std::arch::is_aarch64_feature_detected!($rust))),*]
        };
    }
    detect![
        "neon" => "neon",
        "fp16" => "fp16",
        "dotprod" => "dotprod",
        "i8mm" => "i8mm",
        "sve" => "sve",
        "sve2" => "sve2",
        "bf16" => "bf16",
    ]
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn runtime_features() -> Vec<(&'static str, bool)> {
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    const X86: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Test CPU\n\
physical id\t: 0\ncore id\t\t: 0\nflags\t\t: fpu cmov cx8 fxsr mmx sse sse2 lm cx16 lahf_lm \
popcnt pni sse4_1 sse4_2 ssse3 avx avx2 bmi1 bmi2 f16c fma abm movbe xsave avx512_vnni\n\n\
processor\t: 1\nvendor_id\t: GenuineIntel\nmodel name\t: Test CPU\nphysical id\t: 0\n\
core id\t\t: 0\nflags\t\t: fpu\n";

    #[test]
    fn x86_cpuinfo() {
        let p = parse_cpuinfo(X86);
        assert_eq!(p.logical, 2);
        assert_eq!(p.physical, Some(1));
        assert_eq!(p.architecture.as_deref(), Some("x86_64"));
        assert!(p.features.contains("sse3") && p.features.contains("lzcnt"));
        assert!(p.features.contains("avx512vnni"));
        let level = x86_64_level(|f| p.features.contains(f) || p.raw_flags.contains(f));
        assert_eq!(level, Some(3));
    }

    #[test]
    fn levels() {
        assert_eq!(x86_64_level(|_| false), None);
        assert_eq!(x86_64_level(|_| true), Some(4));
        assert_eq!(x86_64_level(|f| f != "avx2"), Some(2));
    }

    #[test]
    fn normalises_names() {
        assert_eq!(normalize_cpu_feature("AVX512_VNNI"), "avx512vnni");
        assert_eq!(normalize_cpu_feature("sse4.2"), "sse4_2");
        assert_eq!(normalize_cpu_feature("asimd"), "neon");
        assert_eq!(normalize_cpu_feature("avxvnni"), "avx_vnni");
        assert_eq!(normalize_cpu_feature("avx_vnni"), "avx_vnni");
        assert_eq!(normalize_cpu_feature("amx-tile"), "amx_tile");
    }

    #[test]
    fn arm_cpuinfo_names_the_core() {
        let text = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd asimddp\n\
CPU implementer\t: 0x41\nCPU architecture: 8\nCPU part\t: 0xd0c\n";
        let p = parse_cpuinfo(text);
        assert_eq!(p.architecture.as_deref(), Some("aarch64"));
        assert_eq!(p.model_name.as_deref(), Some("ARM Neoverse-N1"));
        assert!(p.features.contains("neon") && p.features.contains("dotprod"));
        assert_eq!(p.physical, None);
    }
}
