//! The human-readable `corral probe` output.

use std::fmt::Write;

use crate::{GpuInfo, LibraryStatus, MachineInfo};

/// `24.0 GiB`, `512 MiB`.
pub(crate) fn bytes(n: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    const MIB: f64 = (1u64 << 20) as f64;
    let f = n as f64;
    if f >= GIB { format!("{:.1} GiB", f / GIB) } else { format!("{:.0} MiB", f / MIB) }
}

fn opt_bytes(n: Option<u64>) -> String {
    n.map_or_else(|| "unknown".to_string(), bytes)
}

fn library(status: &LibraryStatus) -> String {
    match (status.loaded, &status.version, &status.error) {
        (true, Some(v), _) => format!("loaded ({v})"),
        (true, None, _) => "loaded".to_string(),
        (false, _, Some(e)) => format!("not loaded ({e})"),
        (false, _, None) => "not loaded".to_string(),
    }
}

fn gpu_lines(out: &mut String, g: &GpuInfo) {
    let mut head = format!("  [{} {}] {} ({})", g.api, g.index, g.name, g.source);
    if let Some(hidden) = &g.hidden_by {
        let _ = write!(head, " - hidden by {hidden}");
    }
    let _ = writeln!(out, "{head}");
    let mut facts = Vec::new();
    if let Some(v) = &g.vulkan {
        facts.push(format!("{} device, Vulkan {}", v.device_type, v.api_version));
    }
    if let Some(total) = g.memory_total_bytes {
        match g.memory_free_bytes {
            Some(free) => facts.push(format!("{} ({} free)", bytes(total), bytes(free))),
            None => facts.push(bytes(total)),
        }
    }
    let driver = g.vulkan.as_ref().and_then(|v| v.driver_info.clone()).or(g.driver_version.clone());
    if let Some(d) = driver {
        facts.push(format!("driver {d}"));
    }
    if let Some(cc) = &g.compute_capability {
        facts.push(format!("compute capability {cc}"));
    }
    match (&g.gfx_target, &g.effective_gfx_target) {
        (Some(real), Some(eff)) if real != eff => {
            facts.push(format!("{real}, used as {eff} (HSA_OVERRIDE_GFX_VERSION)"));
        }
        (Some(real), _) => facts.push(real.clone()),
        (None, Some(eff)) => facts.push(format!("used as {eff}")),
        (None, None) => {}
    }
    if let Some(bus) = &g.pci_bus_id {
        facts.push(format!("PCI {bus}"));
    }
    if !facts.is_empty() {
        let _ = writeln!(out, "      {}", facts.join(", "));
    }
}

pub(crate) fn render(m: &MachineInfo) -> String {
    let mut out = String::new();
    let cpu = &m.cpu;
    let _ = writeln!(out, "System:   {} {}", m.os, cpu.architecture);
    let model = cpu.model_name.as_deref().unwrap_or("unknown model");
    let vendor = cpu.vendor.as_deref().map(|v| format!(" ({v})")).unwrap_or_default();
    let count = |n: Option<u32>| n.map_or_else(|| "?".to_string(), |n| n.to_string());
    let mut cores = format!(
        "{} logical / {} physical cores",
        count(cpu.logical_cores),
        count(cpu.physical_cores)
    );
    if let Some(usable) = cpu.usable_threads.filter(|u| Some(*u) != cpu.logical_cores) {
        let _ = write!(cores, ", {usable} usable");
    }
    let _ = writeln!(out, "CPU:      {model}{vendor}, {cores}");
    let level = cpu.x86_64_level.map(|l| format!("x86-64-v{l}; ")).unwrap_or_default();
    let features =
        if cpu.features.is_empty() { "none known".to_string() } else { cpu.features.join(" ") };
    let _ = writeln!(out, "          {level}features: {features}");

    let mem = &m.memory;
    let mut memory = format!(
        "{} total, {} available",
        opt_bytes(mem.total_bytes),
        opt_bytes(mem.available_bytes)
    );
    if let Some(limit) = mem.cgroup_limit_bytes {
        let _ = write!(
            memory,
            "; cgroup v{} limit {} -> effective {} total, {} available",
            mem.cgroup_version.unwrap_or(0),
            bytes(limit),
            opt_bytes(mem.effective_total_bytes),
            opt_bytes(mem.effective_available_bytes)
        );
    }
    let _ = writeln!(out, "Memory:   {memory}");

    if m.gpus.is_empty() {
        let _ = writeln!(out, "GPUs:     none found");
    } else {
        let _ = writeln!(out, "GPUs:");
        for g in &m.gpus {
            gpu_lines(&mut out, g);
        }
    }
    let _ = writeln!(out, "Libraries: NVML {}", library(&m.libraries.nvml));
    let _ = writeln!(out, "           Vulkan {}", library(&m.libraries.vulkan));
    if !m.notes.is_empty() {
        let _ = writeln!(out, "Notes:");
        for note in &m.notes {
            let _ = writeln!(out, "  - {note}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        assert_eq!(bytes(24 << 30), "24.0 GiB");
        assert_eq!(bytes(512 << 20), "512 MiB");
    }
}
