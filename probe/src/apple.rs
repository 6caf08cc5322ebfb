//! Apple Silicon on macOS: `sysctl` for the CPU, memory and the (unified-memory) GPU.

use crate::{GpuApi, GpuInfo, GpuSource, GpuVendor, ProbeOptions};

/// `sysctl -n <name>`, trimmed; `None` on any failure.
fn sysctl(name: &str) -> Option<String> {
    let out = std::process::Command::new("/usr/sbin/sysctl").arg("-n").arg(name).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!text.is_empty()).then_some(text)
}

pub(crate) fn fill_cpu(
    model: &mut Option<String>,
    vendor: &mut Option<String>,
    logical: &mut Option<u32>,
    physical: &mut Option<u32>,
    notes: &mut Vec<String>,
) {
    if physical.is_none() {
        *physical = sysctl("hw.physicalcpu").and_then(|v| v.parse().ok());
    }
    if model.is_none() {
        *model = sysctl("machdep.cpu.brand_string");
    }
    if vendor.is_none() {
        *vendor = sysctl("machdep.cpu.vendor").or_else(|| {
            model.as_deref().filter(|m| m.starts_with("Apple")).map(|_| "Apple".to_string())
        });
    }
    if logical.is_none() {
        *logical = sysctl("hw.logicalcpu").and_then(|v| v.parse().ok());
    }
    if model.is_none() {
        notes.push("CPU: sysctl machdep.cpu.brand_string failed".to_string());
    }
}

pub(crate) fn fill_memory(total: &mut Option<u64>, notes: &mut Vec<String>) {
    if total.is_none() {
        *total = sysctl("hw.memsize").and_then(|v| v.parse().ok());
        if total.is_none() {
            notes.push("memory: sysctl hw.memsize failed".to_string());
        }
    }
}

pub(crate) fn probe_apple(opts: &ProbeOptions, gpus: &mut Vec<GpuInfo>, notes: &mut Vec<String>) {
    if !opts.is_real_system() || std::env::consts::ARCH != "aarch64" {
        return;
    }
    let chip = sysctl("machdep.cpu.brand_string");
    let model = sysctl("hw.model");
    let Some(chip) = chip.filter(|c| c.starts_with("Apple")) else {
        notes.push("Apple: not an Apple Silicon chip; no Metal GPU reported".to_string());
        return;
    };
    let memory = sysctl("hw.memsize").and_then(|v| v.parse().ok());
    let name = match model {
        Some(m) => format!("{chip} GPU ({m})"),
        None => format!("{chip} GPU"),
    };
    gpus.push(GpuInfo {
        index: 0,
        vendor: GpuVendor::Apple,
        name,
        source: GpuSource::Metal,
        api: GpuApi::Metal,
        uuid: None,
        pci_bus_id: None,
        memory_total_bytes: memory,
        memory_free_bytes: None,
        driver_version: sysctl("kern.osproductversion").map(|v| format!("macOS {v}")),
        compute_capability: None,
        gfx_target: None,
        effective_gfx_target: None,
        vulkan: None,
        visible: true,
        hidden_by: None,
    });
}
