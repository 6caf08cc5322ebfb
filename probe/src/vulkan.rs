//! Vulkan: the loader opened at run time through `ash` (libloading), an API 1.1 instance
//! with no layers, and every physical device it enumerates.

use std::ffi::CStr;
use std::sync::mpsc;
use std::time::Duration;

use ash::vk;

use crate::{
    GpuApi, GpuInfo, GpuSource, GpuVendor, LibraryStatus, ProbeOptions, VulkanDetails,
    VulkanDeviceType,
};

pub(crate) fn probe_vulkan(
    opts: &ProbeOptions,
    gpus: &mut Vec<GpuInfo>,
    notes: &mut Vec<String>,
) -> LibraryStatus {
    if !opts.use_runtime_libraries {
        notes.push("Vulkan: not probed (runtime libraries disabled)".to_string());
        return LibraryStatus::not_attempted();
    }
    match enumerate_with_timeout() {
        Ok((instance_version, devices, device_notes)) => {
            notes.extend(device_notes);
            if devices.is_empty() {
                notes.push(
                    "Vulkan: the loader works but no Vulkan driver offers a device".to_string(),
                );
            }
            gpus.extend(devices);
            LibraryStatus::ok(Some(instance_version))
        }
        Err(err) => {
            notes.push(format!("Vulkan: {err}"));
            LibraryStatus::failed(err)
        }
    }
}

/// How long Vulkan enumeration may take before the probe gives up on it (a broken
/// driver can hang in instance creation; the host must still start).
const VULKAN_TIMEOUT: Duration = Duration::from_secs(15);

/// [`enumerate`] on its own thread, abandoned (and reported) if it hangs.
fn enumerate_with_timeout() -> Result<Enumerated, String> {
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new().name("corral-probe-vulkan".into()).spawn(move || {
        // The receiver may be gone after a timeout; nothing to do then.
        let _ = tx.send(enumerate());
    });
    if let Err(e) = spawned {
        return Err(format!("could not start the Vulkan probe thread: {e}"));
    }
    match rx.recv_timeout(VULKAN_TIMEOUT) {
        Ok(result) => result,
        Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
            "Vulkan enumeration did not finish within {} s (a driver hangs); skipped",
            VULKAN_TIMEOUT.as_secs()
        )),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            Err("the Vulkan probe thread panicked (a driver crashed); skipped".to_string())
        }
    }
}

/// `major.minor.patch` of a Vulkan API version.
pub(crate) fn api_version_string(v: u32) -> String {
    format!(
        "{}.{}.{}",
        vk::api_version_major(v),
        vk::api_version_minor(v),
        vk::api_version_patch(v)
    )
}

/// A driver version in its vendor's encoding (NVIDIA packs 10.8.8.6 bits).
pub(crate) fn driver_version_string(vendor_id: u32, v: u32) -> String {
    if vendor_id == 0x10de {
        format!("{}.{}.{}", (v >> 22) & 0x3ff, (v >> 14) & 0xff, (v >> 6) & 0xff)
    } else {
        api_version_string(v)
    }
}

fn device_type(t: vk::PhysicalDeviceType) -> VulkanDeviceType {
    match t {
        vk::PhysicalDeviceType::DISCRETE_GPU => VulkanDeviceType::Discrete,
        vk::PhysicalDeviceType::INTEGRATED_GPU => VulkanDeviceType::Integrated,
        vk::PhysicalDeviceType::VIRTUAL_GPU => VulkanDeviceType::Virtual,
        vk::PhysicalDeviceType::CPU => VulkanDeviceType::Cpu,
        _ => VulkanDeviceType::Other,
    }
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`; for NVIDIA with the `GPU-` prefix NVML uses
/// (NVIDIA's Vulkan deviceUUID is the same 16 bytes, so entries can be matched).
fn uuid_string(vendor_id: u32, bytes: &[u8; 16]) -> Option<String> {
    if bytes.iter().all(|b| *b == 0) {
        return None;
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let prefix = if vendor_id == 0x10de { "GPU-" } else { "" };
    Some(format!(
        "{prefix}{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

fn c_str(result: Result<&CStr, std::ffi::FromBytesUntilNulError>) -> Option<String> {
    result.ok().map(|s| s.to_string_lossy().trim().to_string()).filter(|s| !s.is_empty())
}

type Enumerated = (String, Vec<GpuInfo>, Vec<String>);

fn enumerate() -> Result<Enumerated, String> {
    // SAFETY: loading the Vulkan loader runs its initialisers; libvulkan is a well-known
    // system library and we keep the Entry alive for every call made through it.
    let entry =
        unsafe { ash::Entry::load() }.map_err(|e| format!("Vulkan loader not found: {e}"))?;
    // SAFETY: a global command with no arguments, on a loaded entry.
    let instance_version = match unsafe { entry.try_enumerate_instance_version() } {
        Ok(Some(v)) => v,
        Ok(None) => vk::API_VERSION_1_0,
        Err(e) => return Err(format!("Vulkan instance version query failed: {e}")),
    };
    let api = if instance_version >= vk::API_VERSION_1_1 {
        vk::API_VERSION_1_1
    } else {
        vk::API_VERSION_1_0
    };
    let app_info = vk::ApplicationInfo::default()
        .application_name(c"corral-probe")
        .engine_name(c"corral")
        .api_version(api);
    let create_info = vk::InstanceCreateInfo::default().application_info(&app_info);
    // SAFETY: create_info and app_info live across the call; no layers or extensions.
    let instance = unsafe { entry.create_instance(&create_info, None) }
        .map_err(|e| format!("Vulkan instance creation failed ({e}); no usable driver"))?;

    let mut notes = Vec::new();
    let mut gpus = Vec::new();
    // SAFETY: the instance is valid until destroy_instance below.
    let physical = unsafe { instance.enumerate_physical_devices() };
    match physical {
        Ok(devices) => {
            for (index, pd) in devices.into_iter().enumerate() {
                let index = u32::try_from(index).unwrap_or(u32::MAX);
                gpus.push(describe(&instance, pd, index, api));
            }
        }
        Err(e) => notes.push(format!("Vulkan: enumerating physical devices failed: {e}")),
    }
    // SAFETY: nothing created from the instance outlives it; physical devices need no
    // destruction.
    unsafe { instance.destroy_instance(None) };
    Ok((api_version_string(instance_version), gpus, notes))
}

fn describe(instance: &ash::Instance, pd: vk::PhysicalDevice, index: u32, api: u32) -> GpuInfo {
    // SAFETY: `pd` was enumerated from the live `instance`.
    let props = unsafe { instance.get_physical_device_properties(pd) };
    // SAFETY: as above.
    let memory = unsafe { instance.get_physical_device_memory_properties(pd) };
    let heaps =
        &memory.memory_heaps[..memory.memory_heap_count.min(vk::MAX_MEMORY_HEAPS as u32) as usize];
    let local: u64 = heaps
        .iter()
        .filter(|h| h.flags.contains(vk::MemoryHeapFlags::DEVICE_LOCAL))
        .map(|h| h.size)
        .max()
        .unwrap_or(0);

    let mut uuid = None;
    let mut driver_name = None;
    let mut driver_info = None;
    if api >= vk::API_VERSION_1_1 && props.api_version >= vk::API_VERSION_1_1 {
        // SAFETY: `pd` is valid; the extension list is read into owned memory.
        let extensions =
            unsafe { instance.enumerate_device_extension_properties(pd) }.unwrap_or_default();
        let has_driver_props = props.api_version >= vk::API_VERSION_1_2
            || extensions.iter().any(|e| {
                e.extension_name_as_c_str().is_ok_and(|n| n == ash::khr::driver_properties::NAME)
            });
        let mut id_props = vk::PhysicalDeviceIDProperties::default();
        let mut drv_props = vk::PhysicalDeviceDriverProperties::default();
        let mut props2 = vk::PhysicalDeviceProperties2::default().push_next(&mut id_props);
        if has_driver_props {
            props2 = props2.push_next(&mut drv_props);
        }
        // SAFETY: the pNext chain holds structures the device supports (ID properties are
        // core in 1.1; driver properties only when 1.2 or VK_KHR_driver_properties is
        // available), all alive for the call.
        unsafe { instance.get_physical_device_properties2(pd, &mut props2) };
        uuid = uuid_string(props.vendor_id, &id_props.device_uuid);
        if has_driver_props {
            driver_name = c_str(drv_props.driver_name_as_c_str());
            driver_info = c_str(drv_props.driver_info_as_c_str());
        }
    }

    let name = c_str(props.device_name_as_c_str()).unwrap_or_else(|| "Vulkan device".to_string());
    GpuInfo {
        index,
        vendor: GpuVendor::from_pci_id(props.vendor_id),
        name,
        source: GpuSource::Vulkan,
        api: GpuApi::Vulkan,
        uuid,
        pci_bus_id: None,
        memory_total_bytes: (local > 0).then_some(local),
        memory_free_bytes: None,
        driver_version: Some(driver_version_string(props.vendor_id, props.driver_version)),
        compute_capability: None,
        gfx_target: None,
        effective_gfx_target: None,
        vulkan: Some(VulkanDetails {
            device_type: device_type(props.device_type),
            vendor_id: props.vendor_id,
            device_id: props.device_id,
            api_version: api_version_string(props.api_version),
            driver_name,
            driver_info,
        }),
        visible: true,
        hidden_by: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(api_version_string(vk::make_api_version(0, 1, 3, 230)), "1.3.230");
        let nv = (550 << 22) | (54 << 14) | (14 << 6);
        assert_eq!(driver_version_string(0x10de, nv), "550.54.14");
        assert_eq!(driver_version_string(0x10005, vk::make_api_version(0, 0, 0, 1)), "0.0.1");
    }

    #[test]
    fn uuids() {
        let mut b = [0u8; 16];
        assert_eq!(uuid_string(0x10de, &b), None);
        b[0] = 0xab;
        b[15] = 0x01;
        let nv = uuid_string(0x10de, &b);
        assert_eq!(nv.as_deref(), Some("GPU-ab000000-0000-0000-0000-000000000001"));
        let mesa = uuid_string(0x10005, &b);
        assert_eq!(mesa.as_deref(), Some("ab000000-0000-0000-0000-000000000001"));
    }
}
