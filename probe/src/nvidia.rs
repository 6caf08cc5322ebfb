//! NVIDIA: NVML opened at run time, else /proc/driver/nvidia and /sys/bus/pci.

use std::collections::BTreeMap;

use crate::fsutil::{self, colon_value, under};
use crate::{GpuApi, GpuInfo, GpuSource, GpuVendor, LibraryStatus, ProbeOptions};

/// PCI vendor id of NVIDIA.
const NVIDIA_PCI_VENDOR: u64 = 0x10de;

pub(crate) fn probe_nvidia(
    opts: &ProbeOptions,
    gpus: &mut Vec<GpuInfo>,
    notes: &mut Vec<String>,
) -> LibraryStatus {
    let status = if opts.use_runtime_libraries {
        match probe_nvml(notes) {
            Ok((version, found)) => {
                gpus.extend(found);
                return LibraryStatus::ok(version);
            }
            Err(err) => LibraryStatus::failed(err),
        }
    } else {
        LibraryStatus::not_attempted()
    };
    let found = probe_procfs(opts, notes);
    let why = status.error.as_deref().unwrap_or("unknown error");
    if !found.is_empty() {
        notes.push(format!(
            "NVIDIA: NVML not available ({why}); GPUs read from /proc/driver/nvidia and sysfs, \
             without memory figures"
        ));
    } else if opts.use_runtime_libraries {
        notes.push(format!("NVIDIA: NVML not available ({why}); no NVIDIA GPU in procfs/sysfs"));
    }
    gpus.extend(found);
    status
}

/// `00000000:01:00.0` → `0000:01:00.0`, lowercase.
fn normalize_bus_id(bus_id: &str) -> String {
    let lower = bus_id.trim().to_ascii_lowercase();
    match lower.split_once(':') {
        Some((domain, rest)) if domain.len() > 4 && domain.starts_with("0000") => {
            format!("{}:{rest}", &domain[domain.len() - 4..])
        }
        _ => lower,
    }
}

fn probe_nvml(notes: &mut Vec<String>) -> Result<(Option<String>, Vec<GpuInfo>), String> {
    use nvml_wrapper::Nvml;
    use nvml_wrapper::error::NvmlError;

    let nvml = Nvml::init().map_err(|err| match err {
        NvmlError::LibloadingError(e) => e.to_string(),
        NvmlError::DriverNotLoaded => "the NVIDIA kernel driver is not loaded".to_string(),
        other => format!("NVML initialisation failed: {other}"),
    })?;
    let driver = nvml.sys_driver_version().ok();
    let version = nvml.sys_nvml_version().ok();
    let count = nvml.device_count().map_err(|e| format!("NVML device count failed: {e}"))?;
    let mut gpus = Vec::new();
    for index in 0..count {
        let device = match nvml.device_by_index(index) {
            Ok(d) => d,
            Err(e) => {
                notes.push(format!("NVIDIA: NVML could not open device {index}: {e}"));
                continue;
            }
        };
        let name = device.name().unwrap_or_else(|e| {
            notes.push(format!("NVIDIA: NVML could not read the name of device {index}: {e}"));
            "NVIDIA GPU".to_string()
        });
        let memory = device.memory_info();
        if let Err(e) = &memory {
            notes.push(format!("NVIDIA: NVML could not read the memory of {name}: {e}"));
        }
        let cc = device.cuda_compute_capability().ok().map(|c| format!("{}.{}", c.major, c.minor));
        gpus.push(GpuInfo {
            index,
            vendor: GpuVendor::Nvidia,
            source: GpuSource::Nvml,
            api: GpuApi::Cuda,
            uuid: device.uuid().ok(),
            pci_bus_id: device.pci_info().ok().map(|p| normalize_bus_id(&p.bus_id)),
            memory_total_bytes: memory.as_ref().ok().map(|m| m.total),
            memory_free_bytes: memory.as_ref().ok().map(|m| m.free),
            driver_version: driver.clone(),
            compute_capability: cc,
            gfx_target: None,
            effective_gfx_target: None,
            vulkan: None,
            visible: true,
            hidden_by: None,
            name,
        });
    }
    Ok((version, gpus))
}

/// The driver version from `/proc/driver/nvidia/version`
/// (`NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22 ...`).
fn parse_driver_version(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.starts_with("NVRM version"))?;
    line.split_whitespace()
        .find(|tok| {
            tok.contains('.')
                && tok.split('.').all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
        })
        .map(str::to_string)
}

fn probe_procfs(opts: &ProbeOptions, notes: &mut Vec<String>) -> Vec<GpuInfo> {
    let root = &opts.root;
    let driver = fsutil::read_small(&under(root, "/proc/driver/nvidia/version"))
        .and_then(|t| parse_driver_version(&t));

    // bus id → (information file text, PCI device id)
    let mut devices: BTreeMap<String, (Option<String>, Option<u64>)> = BTreeMap::new();
    for dir in fsutil::list_dir(&under(root, "/proc/driver/nvidia/gpus")) {
        let Some(bus) = dir.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let info = fsutil::read_small(&dir.join("information"));
        devices.entry(normalize_bus_id(bus)).or_default().0 = info;
    }
    for dir in fsutil::list_dir(&under(root, "/sys/bus/pci/devices")) {
        let Some(bus) = dir.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let vendor = fsutil::read_u64(&dir.join("vendor"));
        let class = fsutil::read_u64(&dir.join("class"));
        if vendor == Some(NVIDIA_PCI_VENDOR) && class.is_some_and(|c| c >> 16 == 0x03) {
            devices.entry(normalize_bus_id(bus)).or_default().1 =
                fsutil::read_u64(&dir.join("device"));
        }
    }
    if !devices.is_empty() && driver.is_none() {
        notes.push(
            "NVIDIA: GPU present on the PCI bus but no NVIDIA kernel driver is loaded \
             (/proc/driver/nvidia/version missing)"
                .to_string(),
        );
    }

    let mut gpus = Vec::new();
    for (index, (bus, (info, device_id))) in devices.into_iter().enumerate() {
        let info = info.unwrap_or_default();
        let name = colon_value(&info, "Model").filter(|m| !m.is_empty()).map_or_else(
            || match device_id {
                Some(id) => format!("NVIDIA GPU [10de:{id:04x}]"),
                None => "NVIDIA GPU".to_string(),
            },
            str::to_string,
        );
        if colon_value(&info, "GPU Excluded").is_some_and(|v| v.eq_ignore_ascii_case("yes")) {
            notes.push(format!("NVIDIA: {name} at {bus} is excluded by the driver"));
        }
        let compute_capability = compute_capability_from_name(&name);
        if let Some(cc) = &compute_capability {
            notes.push(format!(
                "NVIDIA: compute capability {cc} of {name} inferred from its model name"
            ));
        }
        gpus.push(GpuInfo {
            index: u32::try_from(index).unwrap_or(u32::MAX),
            vendor: GpuVendor::Nvidia,
            source: GpuSource::Procfs,
            api: GpuApi::Cuda,
            uuid: colon_value(&info, "GPU UUID").filter(|u| !u.is_empty()).map(str::to_string),
            pci_bus_id: Some(bus),
            memory_total_bytes: None,
            memory_free_bytes: None,
            driver_version: driver.clone(),
            compute_capability,
            gfx_target: None,
            effective_gfx_target: None,
            vulkan: None,
            visible: true,
            hidden_by: None,
            name,
        });
    }
    gpus
}

/// Compute capability of well-known NVIDIA GPUs, from the model name (used only when NVML,
/// which reports it exactly, is not available).
pub(crate) fn compute_capability_from_name(name: &str) -> Option<String> {
    let upper = name.to_ascii_uppercase();
    let tokens: Vec<&str> = upper.split(|c: char| c.is_whitespace() || c == '-').collect();
    let has = |t: &str| tokens.contains(&t);
    let after = |t: &str| tokens.iter().position(|x| *x == t).and_then(|i| tokens.get(i + 1));
    let cc = if has("ADA") {
        "8.9"
    } else if has("BLACKWELL") && has("RTX") {
        "12.0"
    } else if let Some(model) = after("RTX").filter(|_| !has("QUADRO")) {
        if model.starts_with('A') {
            "8.6"
        } else {
            match model.get(..2) {
                Some("50") => "12.0",
                Some("40") => "8.9",
                Some("30") => "8.6",
                Some("20") => "7.5",
                _ => return None,
            }
        }
    } else if let Some(model) = after("GTX") {
        match model.get(..2) {
            Some("16") => "7.5",
            Some("10") => "6.1",
            _ => return None,
        }
    } else if has("QUADRO") && has("RTX") {
        "7.5"
    } else {
        let table: &[(&[&str], &str)] = &[
            (&["H100", "H200", "H800", "H20", "GH200"], "9.0"),
            (&["B100", "B200", "GB200"], "10.0"),
            (&["A100", "A800", "A30"], "8.0"),
            (&["A10", "A10G", "A16", "A40", "A2"], "8.6"),
            (&["L4", "L40", "L40S", "L20"], "8.9"),
            (&["T4"], "7.5"),
            (&["V100"], "7.0"),
            (&["P100"], "6.0"),
            (&["P40", "P4"], "6.1"),
        ];
        table.iter().find(|(names, _)| names.iter().any(|n| has(n))).map(|(_, cc)| *cc)?
    };
    Some(cc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_version_lines() {
        let closed = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22 \
                      01:44:30 UTC 2024\nGCC version:  gcc version 12.2.0\n";
        assert_eq!(parse_driver_version(closed).as_deref(), Some("550.54.14"));
        let open = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  535.104.05  \
                    Release Build  (dvs-builder@U16-T02-35-3)  Sat Aug 19 01:13:33 UTC 2023\n";
        assert_eq!(parse_driver_version(open).as_deref(), Some("535.104.05"));
    }

    #[test]
    fn bus_ids() {
        assert_eq!(normalize_bus_id("00000000:01:00.0"), "0000:01:00.0");
        assert_eq!(normalize_bus_id("0000:0A:00.0"), "0000:0a:00.0");
    }

    #[test]
    fn compute_capabilities_by_name() {
        let cc = |n| compute_capability_from_name(n);
        assert_eq!(cc("NVIDIA GeForce RTX 4090").as_deref(), Some("8.9"));
        assert_eq!(cc("NVIDIA GeForce RTX 3060").as_deref(), Some("8.6"));
        assert_eq!(cc("NVIDIA H100 80GB HBM3").as_deref(), Some("9.0"));
        assert_eq!(cc("NVIDIA A100-SXM4-80GB").as_deref(), Some("8.0"));
        assert_eq!(cc("Tesla T4").as_deref(), Some("7.5"));
        assert_eq!(cc("Quadro RTX 4000").as_deref(), Some("7.5"));
        assert_eq!(cc("NVIDIA RTX 4000 Ada Generation").as_deref(), Some("8.9"));
        assert_eq!(cc("NVIDIA RTX A6000").as_deref(), Some("8.6"));
        assert_eq!(cc("NVIDIA L4").as_deref(), Some("8.9"));
        assert_eq!(cc("Mystery Card"), None);
    }
}
