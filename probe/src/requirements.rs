//! Matching a plugin manifest's requirements against a probed machine.

use serde::{Deserialize, Serialize};

use crate::{GpuApi, GpuInfo, GpuVendor, MachineInfo, normalize_cpu_feature};

/// What a backend plugin needs of the machine (the `[requires]` table of its manifest).
/// Every field is optional; unknown fields are an error, so a typo in a manifest is
/// reported rather than silently ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Requirements {
    /// GPU vendor: `nvidia`, `amd`, `apple`, `intel`.
    pub gpu_vendor: Option<String>,
    /// GPU API: `cuda`, `rocm`, `vulkan` or `metal`. `vulkan` is met by any Vulkan
    /// device, CPU-type ones (lavapipe) included.
    pub gpu_api: Option<String>,
    /// Lowest GPU driver version, dotted (`525.60`).
    pub min_driver: Option<String>,
    /// Lowest NVIDIA compute capability (`7.5`).
    pub min_compute_capability: Option<String>,
    /// CPU features, any spelling [`normalize_cpu_feature`] accepts (`avx2`, `avx512f`).
    pub cpu_features: Vec<String>,
    /// Operating system as Rust names it (`linux`, `macos`, `windows`).
    pub os: Option<String>,
    /// CPU architecture (`x86_64`, `aarch64`; `amd64` and `arm64` are accepted).
    pub arch: Option<String>,
}

/// The requirements a machine does not meet, one sentence each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .reasons.join("; "))]
pub struct Unmet {
    /// One sentence per unmet requirement, e.g. "needs CPU feature avx512f, which this CPU
    /// lacks".
    pub reasons: Vec<String>,
}

/// A dotted version as numbers (`550.54.14` → `[550, 54, 14]`); `None` if not numeric.
fn parse_version(text: &str) -> Option<Vec<u64>> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    text.split('.').map(|p| p.trim().parse().ok()).collect()
}

/// `a >= b`, missing components counting as 0.
fn version_at_least(a: &[u64], b: &[u64]) -> bool {
    let len = a.len().max(b.len());
    for i in 0..len {
        let (x, y) = (a.get(i).copied().unwrap_or(0), b.get(i).copied().unwrap_or(0));
        if x != y {
            return x > y;
        }
    }
    true
}

fn normalize_arch(arch: &str) -> String {
    match arch.trim().to_ascii_lowercase().as_str() {
        "amd64" | "x64" | "x86-64" => "x86_64".to_string(),
        "arm64" => "aarch64".to_string(),
        other => other.to_string(),
    }
}

fn normalize_os(os: &str) -> String {
    match os.trim().to_ascii_lowercase().as_str() {
        "darwin" | "osx" | "macosx" => "macos".to_string(),
        other => other.to_string(),
    }
}

fn article(word: &str) -> &'static str {
    match word.chars().next().map(|c| c.to_ascii_uppercase()) {
        Some('A' | 'E' | 'I' | 'O' | 'U') => "an",
        // "NVIDIA" is read "en-vidia".
        Some('N') if word.starts_with("NVIDIA") => "an",
        _ => "a",
    }
}

/// Checks `req` against `machine`. `Ok` when every requirement is met; otherwise every
/// unmet requirement, each as a sentence a person can act on.
pub fn check(req: &Requirements, machine: &MachineInfo) -> Result<(), Unmet> {
    let mut reasons = Vec::new();

    if let Some(os) = &req.os
        && normalize_os(os) != machine.os
    {
        reasons.push(format!("needs operating system {os}, this is {}", machine.os));
    }
    if let Some(arch) = &req.arch
        && normalize_arch(arch) != machine.cpu.architecture
    {
        reasons
            .push(format!("needs CPU architecture {arch}, this is {}", machine.cpu.architecture));
    }
    for feature in &req.cpu_features {
        if !machine.cpu.has_feature(feature) {
            reasons.push(format!(
                "needs CPU feature {}, which this CPU lacks",
                normalize_cpu_feature(feature)
            ));
        }
    }
    check_gpu(req, machine, &mut reasons);

    if reasons.is_empty() { Ok(()) } else { Err(Unmet { reasons }) }
}

fn check_gpu(req: &Requirements, machine: &MachineInfo, reasons: &mut Vec<String>) {
    let needs_gpu = req.gpu_vendor.is_some()
        || req.gpu_api.is_some()
        || req.min_driver.is_some()
        || req.min_compute_capability.is_some();
    if !needs_gpu {
        return;
    }
    let vendor = match req.gpu_vendor.as_deref().map(|v| (v, GpuVendor::parse(v))) {
        Some((v, None)) => {
            reasons.push(format!(
                "names unknown GPU vendor '{v}' (expected nvidia, amd, apple or intel)"
            ));
            return;
        }
        Some((_, Some(v))) => Some(v),
        None => None,
    };
    let api = match req.gpu_api.as_deref().map(|a| (a, GpuApi::parse(a))) {
        Some((a, None)) => {
            reasons.push(format!(
                "names unknown GPU API '{a}' (expected cuda, rocm, vulkan or metal)"
            ));
            return;
        }
        Some((_, Some(a))) => Some(a),
        None => None,
    };
    let min_driver = match req.min_driver.as_deref().map(|d| (d, parse_version(d))) {
        Some((d, None)) => {
            reasons.push(format!("names a minimum driver '{d}' that is not a dotted version"));
            return;
        }
        Some((d, Some(v))) => Some((d, v)),
        None => None,
    };
    let min_cc = match req.min_compute_capability.as_deref().map(|c| (c, parse_version(c))) {
        Some((c, None)) => {
            reasons.push(format!("names a minimum compute capability '{c}' that is not a version"));
            return;
        }
        Some((c, Some(v))) => Some((c, v)),
        None => None,
    };

    // The API a vendor-only requirement implies, so one device is not counted twice (from
    // NVML and again from Vulkan): nvidia → cuda, amd → rocm, apple → metal.
    let api = api.or(match vendor {
        Some(GpuVendor::Nvidia) => Some(GpuApi::Cuda),
        Some(GpuVendor::Amd) => Some(GpuApi::Rocm),
        Some(GpuVendor::Apple) => Some(GpuApi::Metal),
        Some(GpuVendor::Intel | GpuVendor::Other) => Some(GpuApi::Vulkan),
        None if min_cc.is_some() => Some(GpuApi::Cuda),
        None => None,
    });
    let vendor = vendor.or(match api {
        Some(GpuApi::Cuda) => Some(GpuVendor::Nvidia),
        Some(GpuApi::Rocm) => Some(GpuVendor::Amd),
        Some(GpuApi::Metal) => Some(GpuVendor::Apple),
        _ => None,
    });

    // "an NVIDIA GPU with driver >= 525.60 and compute capability >= 7.5"
    let mut wanted = match (vendor, api) {
        (_, Some(GpuApi::Vulkan)) => match vendor {
            Some(v) => format!("{} {} Vulkan device", article(v.display_name()), v.display_name()),
            None => "a Vulkan device".to_string(),
        },
        (Some(v), _) => format!("{} {} GPU", article(v.display_name()), v.display_name()),
        (None, _) => "a GPU".to_string(),
    };
    let mut conditions = Vec::new();
    if let Some((d, _)) = &min_driver {
        conditions.push(format!("driver >= {d}"));
    }
    if let Some((c, _)) = &min_cc {
        conditions.push(format!("compute capability >= {c}"));
    }
    if !conditions.is_empty() {
        wanted = format!("{wanted} with {}", conditions.join(" and "));
    }

    let of_kind: Vec<&GpuInfo> = machine
        .gpus
        .iter()
        .filter(|g| api.is_none_or(|a| g.api == a))
        .filter(|g| vendor.is_none_or(|v| g.vendor == v))
        .collect();
    let visible: Vec<&GpuInfo> = of_kind.iter().copied().filter(|g| g.visible).collect();
    if visible.is_empty() {
        let why = if let Some(hidden) = of_kind.iter().find_map(|g| g.hidden_by.as_deref()) {
            format!(" visible ({} hidden by {hidden})", of_kind.len())
        } else {
            match api {
                Some(GpuApi::Vulkan) => library_reason("", &machine.libraries.vulkan.error),
                Some(GpuApi::Cuda) => {
                    library_reason("NVML not available: ", &machine.libraries.nvml.error)
                }
                _ => String::new(),
            }
        };
        reasons.push(format!("needs {wanted}, found none{why}"));
        return;
    }

    // CUDA needs the kernel driver loaded.
    let usable: Vec<&GpuInfo> = if api == Some(GpuApi::Cuda) {
        let with_driver: Vec<&GpuInfo> =
            visible.iter().copied().filter(|g| g.driver_version.is_some()).collect();
        if with_driver.is_empty() {
            reasons.push(format!(
                "needs {wanted}, found {} but no NVIDIA driver is loaded",
                describe_list(&visible)
            ));
            return;
        }
        with_driver
    } else {
        visible
    };

    let driver_ok = |g: &GpuInfo| match &min_driver {
        None => true,
        Some((_, min)) => g
            .driver_version
            .as_deref()
            .and_then(parse_version)
            .is_some_and(|v| version_at_least(&v, min)),
    };
    let cc_ok = |g: &GpuInfo| match &min_cc {
        None => true,
        Some((_, min)) => g
            .compute_capability
            .as_deref()
            .and_then(parse_version)
            .is_some_and(|v| version_at_least(&v, min)),
    };
    if usable.iter().any(|g| driver_ok(g) && cc_ok(g)) {
        return;
    }
    let mut found = Vec::new();
    if min_driver.is_some() && !usable.iter().any(|g| driver_ok(g)) {
        found.push(format!("driver {}", join_values(&usable, |g| g.driver_version.as_deref())));
    }
    if min_cc.is_some() && !usable.iter().any(|g| cc_ok(g)) {
        found.push(format!(
            "compute capability {}",
            join_values(&usable, |g| g.compute_capability.as_deref())
        ));
    }
    if found.is_empty() {
        found.push("no single GPU that meets all of it".to_string());
    }
    reasons.push(format!(
        "needs {wanted}, found {} ({})",
        found.join(" and "),
        describe_list(&usable)
    ));
}

fn library_reason(prefix: &str, error: &Option<String>) -> String {
    match error {
        Some(e) => format!(" ({prefix}{e})"),
        None => String::new(),
    }
}

fn join_values(gpus: &[&GpuInfo], value: impl Fn(&GpuInfo) -> Option<&str>) -> String {
    let mut values: Vec<&str> = gpus.iter().map(|g| value(g).unwrap_or("unknown")).collect();
    values.dedup();
    values.join(", ")
}

fn describe_list(gpus: &[&GpuInfo]) -> String {
    gpus.iter().map(|g| g.name.as_str()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        let v = |s| parse_version(s).expect("version");
        assert!(version_at_least(&v("550.54.14"), &v("525.60")));
        assert!(version_at_least(&v("525.60"), &v("525.60.0")));
        assert!(!version_at_least(&v("470.82.01"), &v("525.60")));
        assert!(version_at_least(&v("10.0"), &v("9.0")));
        assert!(!version_at_least(&v("7.5"), &v("8.0")));
        assert_eq!(parse_version("abc"), None);
        assert_eq!(parse_version(""), None);
    }

    #[test]
    fn deserializes_and_rejects_unknown_fields() {
        let req: Requirements = serde_json::from_str(r#"{"gpu_api":"cuda","min_driver":"525.60"}"#)
            .expect("valid requirements");
        assert_eq!(req.gpu_api.as_deref(), Some("cuda"));
        assert!(req.cpu_features.is_empty());
        let err = serde_json::from_str::<Requirements>(r#"{"gpu_apis":"cuda"}"#);
        assert!(err.is_err());
    }

    #[test]
    fn articles() {
        assert_eq!(article("NVIDIA"), "an");
        assert_eq!(article("AMD"), "an");
        assert_eq!(article("Apple"), "an");
        assert_eq!(article("Intel"), "an");
        assert_eq!(article("Vulkan"), "a");
    }
}
