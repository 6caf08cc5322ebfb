//! AMD: the KFD topology in /sys/class/kfd (what ROCm enumerates).

use std::path::Path;

use crate::fsutil::{self, kv_value, under};
use crate::{GpuApi, GpuInfo, GpuSource, GpuVendor, ProbeOptions};

/// `gfx_target_version` (`major*10000 + minor*100 + stepping`) → `gfx1100`; the stepping
/// is written in hex (`90010` → `gfx90a`).
pub(crate) fn gfx_from_target_version(version: u64) -> Option<String> {
    if version == 0 {
        return None;
    }
    let (major, minor, stepping) = (version / 10000, (version / 100) % 100, version % 100);
    Some(format!("gfx{major}{minor}{stepping:x}"))
}

/// `HSA_OVERRIDE_GFX_VERSION` (`10.3.0`) → `gfx1030`.
pub(crate) fn gfx_from_override(value: &str) -> Option<String> {
    let parts: Vec<u64> =
        value.trim().split('.').map(|p| p.parse().ok()).collect::<Option<Vec<_>>>()?;
    match parts.as_slice() {
        [major, minor, stepping] if *major > 0 && *minor < 100 && *stepping < 100 => {
            gfx_from_target_version(major * 10000 + minor * 100 + stepping)
        }
        _ => None,
    }
}

fn pci_bus_id(props: &str) -> Option<String> {
    let location: u64 = kv_value(props, "location_id")?.parse().ok()?;
    let domain: u64 = kv_value(props, "domain").and_then(|d| d.parse().ok()).unwrap_or(0);
    let (bus, dev, func) = ((location >> 8) & 0xff, (location >> 3) & 0x1f, location & 0x7);
    Some(format!("{domain:04x}:{bus:02x}:{dev:02x}.{func}"))
}

fn bank_sizes(node: &Path) -> Option<u64> {
    let mut total = None;
    for bank in fsutil::list_dir(&node.join("mem_banks")) {
        let size = fsutil::read_small(&bank.join("properties"))
            .and_then(|p| kv_value(&p, "size_in_bytes").and_then(|v| v.parse::<u64>().ok()));
        if let Some(size) = size {
            total = Some(total.unwrap_or(0u64).saturating_add(size));
        }
    }
    total
}

pub(crate) fn probe_amd(opts: &ProbeOptions, gpus: &mut Vec<GpuInfo>, notes: &mut Vec<String>) {
    let root = &opts.root;
    let nodes_dir = under(root, "/sys/class/kfd/kfd/topology/nodes");
    let mut nodes = fsutil::list_dir(&nodes_dir);
    if nodes.is_empty() {
        return;
    }
    nodes.sort_by_key(|n| fsutil::numeric_suffix(n));

    let driver = fsutil::read_small(&under(root, "/sys/module/amdgpu/version"));
    let override_value = opts.env.get("HSA_OVERRIDE_GFX_VERSION").map(|s| s.trim().to_string());
    let override_gfx = override_value.as_deref().filter(|v| !v.is_empty()).and_then(|v| {
        let gfx = gfx_from_override(v);
        if gfx.is_none() {
            notes.push(format!(
                "AMD: HSA_OVERRIDE_GFX_VERSION={v} is not a version like 10.3.0; ignored"
            ));
        }
        gfx
    });

    let mut index = 0u32;
    for node in nodes {
        let Some(props) = fsutil::read_small(&node.join("properties")) else {
            continue;
        };
        let simd: u64 = kv_value(&props, "simd_count").and_then(|v| v.parse().ok()).unwrap_or(0);
        if simd == 0 {
            continue; // a CPU node
        }
        let gfx_target = kv_value(&props, "gfx_target_version")
            .and_then(fsutil::parse_u64)
            .and_then(gfx_from_target_version);
        let drm = kv_value(&props, "drm_render_minor")
            .and_then(|m| m.parse::<u64>().ok())
            .map(|minor| under(root, &format!("/sys/class/drm/renderD{minor}/device")));
        let kfd_name = fsutil::read_small(&node.join("name"))
            .filter(|n| !n.eq_ignore_ascii_case("ip discovery"));
        let product = drm.as_ref().and_then(|d| fsutil::read_small(&d.join("product_name")));
        let name = product.or(kfd_name).unwrap_or_else(|| match &gfx_target {
            Some(gfx) => format!("AMD GPU ({gfx})"),
            None => "AMD GPU".to_string(),
        });
        if gfx_target.is_none() {
            notes.push(format!("AMD: {name} reports no gfx_target_version in the KFD topology"));
        }

        let vram_total =
            drm.as_ref().and_then(|d| fsutil::read_u64(&d.join("mem_info_vram_total")));
        let vram_used = drm.as_ref().and_then(|d| fsutil::read_u64(&d.join("mem_info_vram_used")));
        let memory_total_bytes = vram_total.or_else(|| bank_sizes(&node));
        let memory_free_bytes = match (memory_total_bytes, vram_used) {
            (Some(t), Some(u)) => Some(t.saturating_sub(u)),
            _ => None,
        };
        let uuid = kv_value(&props, "unique_id")
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|v| *v != 0)
            .map(|v| format!("GPU-{v:016x}"));

        gpus.push(GpuInfo {
            index,
            vendor: GpuVendor::Amd,
            source: GpuSource::Kfd,
            api: GpuApi::Rocm,
            uuid,
            pci_bus_id: pci_bus_id(&props),
            memory_total_bytes,
            memory_free_bytes,
            driver_version: driver.clone(),
            compute_capability: None,
            effective_gfx_target: override_gfx.clone().or_else(|| gfx_target.clone()),
            gfx_target,
            vulkan: None,
            visible: true,
            hidden_by: None,
            name,
        });
        index += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gfx_names() {
        assert_eq!(gfx_from_target_version(110000).as_deref(), Some("gfx1100"));
        assert_eq!(gfx_from_target_version(100300).as_deref(), Some("gfx1030"));
        assert_eq!(gfx_from_target_version(90010).as_deref(), Some("gfx90a"));
        assert_eq!(gfx_from_target_version(90402).as_deref(), Some("gfx942"));
        assert_eq!(gfx_from_target_version(0), None);
        assert_eq!(gfx_from_override("10.3.0").as_deref(), Some("gfx1030"));
        assert_eq!(gfx_from_override("11.0.0").as_deref(), Some("gfx1100"));
        assert_eq!(gfx_from_override("9.0.10").as_deref(), Some("gfx90a"));
        assert_eq!(gfx_from_override("gfx1030"), None);
        assert_eq!(gfx_from_override("10.3"), None);
    }

    #[test]
    fn bus_id_from_location() {
        let props = "location_id 768\ndomain 0\n";
        assert_eq!(pci_bus_id(props).as_deref(), Some("0000:03:00.0"));
    }
}
