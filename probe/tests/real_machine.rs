//! The full probe of the machine the tests run on, with NVML and the Vulkan loader opened
//! at run time. It must succeed whatever is (not) installed; it prints what it found.

use corral_probe::{GpuSource, ProbeOptions, VulkanDeviceType, probe};

#[test]
fn probe_this_machine() {
    let opts = ProbeOptions::system();
    let machine = probe(&opts);
    println!("{}", machine.render_text());
    println!(
        "{}",
        serde_json::to_string_pretty(&machine).unwrap_or_else(|e| format!("JSON failed: {e}"))
    );

    assert_eq!(machine.cpu.architecture, std::env::consts::ARCH);
    if cfg!(target_os = "linux") {
        assert!(machine.cpu.logical_cores.is_some_and(|n| n > 0), "{:?}", machine.cpu);
        assert!(machine.memory.total_bytes.is_some_and(|n| n > 0), "{:?}", machine.memory);
    }
    if cfg!(target_arch = "x86_64") {
        assert!(machine.cpu.x86_64_level.is_some(), "every x86_64 CPU meets v1");
        // Runtime detection is authoritative on the real system.
        assert_eq!(machine.cpu.has_feature("avx2"), std::arch::is_x86_feature_detected!("avx2"));
    }
    // Every library either loaded or says why not.
    for lib in [&machine.libraries.nvml, &machine.libraries.vulkan] {
        assert!(lib.loaded || lib.error.is_some(), "{lib:?}");
    }
    let vulkan: Vec<_> = machine.gpus.iter().filter(|g| g.source == GpuSource::Vulkan).collect();
    if !machine.libraries.vulkan.loaded {
        println!("skipping Vulkan checks: {:?}", machine.libraries.vulkan.error);
    }
    for g in &vulkan {
        assert!(g.vulkan.is_some(), "Vulkan entry without details: {g:?}");
    }
    let cpu_devices = vulkan
        .iter()
        .filter(|g| g.vulkan.as_ref().is_some_and(|v| v.device_type == VulkanDeviceType::Cpu));
    println!("Vulkan devices: {}, of which CPU-type: {}", vulkan.len(), cpu_devices.count());
}

/// `vulkaninfo --summary`, when installed, and our probe agree on the device names.
#[test]
fn vulkan_devices_match_vulkaninfo() {
    let Ok(out) = std::process::Command::new("vulkaninfo").arg("--summary").output() else {
        println!("skipping: vulkaninfo is not installed");
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let names: Vec<String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("deviceName"))
        .filter_map(|l| l.split_once('=').map(|(_, v)| v.trim().to_string()))
        .collect();
    let machine = probe(&ProbeOptions::system());
    let ours: Vec<&str> = machine
        .gpus
        .iter()
        .filter(|g| g.source == GpuSource::Vulkan)
        .map(|g| g.name.as_str())
        .collect();
    println!("vulkaninfo: {names:?}; probe: {ours:?}");
    for name in &names {
        assert!(ours.contains(&name.as_str()), "vulkaninfo lists {name}, the probe does not");
    }
}
