//! Whole-machine probes of the fake /proc and /sys trees in tests/fixtures.

use std::collections::BTreeMap;
use std::path::PathBuf;

use corral_probe::{GpuApi, GpuSource, GpuVendor, MachineInfo, ProbeOptions, probe};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn probe_fixture(name: &str, env: &[(&str, &str)]) -> MachineInfo {
    let mut opts = ProbeOptions::fake(fixture(name));
    opts.env =
        env.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect::<BTreeMap<_, _>>();
    let machine = probe(&opts);
    println!("{}", machine.render_text());
    machine
}

#[test]
fn two_nvidia_gpus_from_procfs_with_first_hidden() {
    let m = probe_fixture("nvidia-2gpu", &[("CUDA_VISIBLE_DEVICES", "1")]);
    assert_eq!(m.cpu.architecture, "x86_64");
    assert_eq!(m.cpu.vendor.as_deref(), Some("GenuineIntel"));
    assert_eq!(m.cpu.logical_cores, Some(4));
    assert_eq!(m.cpu.physical_cores, Some(2));
    assert_eq!(m.cpu.x86_64_level, Some(3));
    assert!(m.cpu.has_feature("avx2") && m.cpu.has_feature("avx_vnni"));
    assert!(!m.cpu.has_feature("avx512f"));

    // The Intel iGPU and the NVIDIA audio function are not NVIDIA GPUs.
    assert_eq!(m.gpus.len(), 2, "{:#?}", m.gpus);
    let (a, b) = (&m.gpus[0], &m.gpus[1]);
    assert_eq!(a.name, "NVIDIA GeForce RTX 4090");
    assert_eq!(b.name, "NVIDIA GeForce RTX 3060");
    for g in [a, b] {
        assert_eq!(g.vendor, GpuVendor::Nvidia);
        assert_eq!(g.source, GpuSource::Procfs);
        assert_eq!(g.api, GpuApi::Cuda);
        assert_eq!(g.driver_version.as_deref(), Some("550.54.14"));
    }
    assert_eq!((a.index, b.index), (0, 1));
    assert_eq!(a.uuid.as_deref(), Some("GPU-4090aaaa-1111-2222-3333-444455556666"));
    assert_eq!(a.pci_bus_id.as_deref(), Some("0000:01:00.0"));
    assert_eq!(a.compute_capability.as_deref(), Some("8.9"));
    assert_eq!(b.compute_capability.as_deref(), Some("8.6"));
    assert!(!a.visible);
    assert_eq!(a.hidden_by.as_deref(), Some("CUDA_VISIBLE_DEVICES=1"));
    assert!(b.visible);
    assert!(!m.libraries.nvml.loaded && !m.libraries.vulkan.loaded);
    assert!(m.notes.iter().any(|n| n.contains("NVML not available")), "{:?}", m.notes);
}

#[test]
fn cuda_visible_devices_by_uuid_and_hiding_all() {
    let m = probe_fixture("nvidia-2gpu", &[("CUDA_VISIBLE_DEVICES", "GPU-4090aaaa")]);
    assert!(m.gpus[0].visible && !m.gpus[1].visible);
    for hide_all in ["", "-1"] {
        let m = probe_fixture("nvidia-2gpu", &[("CUDA_VISIBLE_DEVICES", hide_all)]);
        assert!(m.gpus.iter().all(|g| !g.visible));
        assert!(m.notes.iter().any(|n| n.contains("hides every cuda device")));
    }
}

#[test]
fn amd_gfx1100_skips_the_cpu_node() {
    let m = probe_fixture("amd-gfx1100", &[]);
    assert_eq!(m.gpus.len(), 1, "{:#?}", m.gpus);
    let g = &m.gpus[0];
    assert_eq!(g.vendor, GpuVendor::Amd);
    assert_eq!(g.source, GpuSource::Kfd);
    assert_eq!(g.api, GpuApi::Rocm);
    assert_eq!(g.index, 0);
    assert_eq!(g.name, "AMD Radeon RX 7900 XTX");
    assert_eq!(g.gfx_target.as_deref(), Some("gfx1100"));
    assert_eq!(g.effective_gfx_target.as_deref(), Some("gfx1100"));
    assert_eq!(g.memory_total_bytes, Some(25_753_026_560));
    assert_eq!(g.memory_free_bytes, Some(25_753_026_560 - 1_073_741_824));
    assert_eq!(g.driver_version.as_deref(), Some("6.3.6"));
    assert_eq!(g.pci_bus_id.as_deref(), Some("0000:03:00.0"));
    assert!(g.uuid.as_deref().is_some_and(|u| u.starts_with("GPU-")));
    assert!(g.visible);
    assert_eq!(m.cpu.x86_64_level, Some(4));
    assert!(m.cpu.has_feature("avx512vnni") && m.cpu.has_feature("avx512_bf16"));
}

#[test]
fn amd_hsa_override_changes_the_effective_target_only() {
    let m = probe_fixture("amd-gfx1100", &[("HSA_OVERRIDE_GFX_VERSION", "10.3.0")]);
    let g = &m.gpus[0];
    assert_eq!(g.gfx_target.as_deref(), Some("gfx1100"));
    assert_eq!(g.effective_gfx_target.as_deref(), Some("gfx1030"));
    assert!(m.render_text().contains("gfx1100, used as gfx1030"));

    let m = probe_fixture("amd-gfx1100", &[("HSA_OVERRIDE_GFX_VERSION", "banana")]);
    assert_eq!(m.gpus[0].effective_gfx_target.as_deref(), Some("gfx1100"));
    assert!(m.notes.iter().any(|n| n.contains("HSA_OVERRIDE_GFX_VERSION=banana")));
}

#[test]
fn amd_visibility_variables() {
    let m = probe_fixture("amd-gfx1100", &[("ROCR_VISIBLE_DEVICES", "0")]);
    assert!(m.gpus[0].visible);
    let m = probe_fixture("amd-gfx1100", &[("HIP_VISIBLE_DEVICES", "1")]);
    assert!(!m.gpus[0].visible);
    assert_eq!(m.gpus[0].hidden_by.as_deref(), Some("HIP_VISIBLE_DEVICES=1"));
    let m = probe_fixture("amd-gfx1100", &[("ROCR_VISIBLE_DEVICES", "-1")]);
    assert!(!m.gpus[0].visible);
}

#[test]
fn cpu_only_with_cgroup_v2_limit() {
    let m = probe_fixture("cpu-cgroup-v2", &[]);
    assert!(m.gpus.is_empty());
    let mem = &m.memory;
    assert_eq!(mem.total_bytes, Some(16 << 30));
    assert_eq!(mem.available_bytes, Some(12 << 30));
    assert_eq!(mem.cgroup_version, Some(2));
    assert_eq!(mem.cgroup_limit_bytes, Some(4 << 30));
    assert_eq!(mem.cgroup_usage_bytes, Some(1 << 30));
    assert_eq!(mem.effective_total_bytes, Some(4 << 30));
    // 4 GiB limit - (1 GiB used - 128 MiB reclaimable page cache)
    assert_eq!(mem.effective_available_bytes, Some((4 << 30) - (1 << 30) + (128 << 20)));
    assert_eq!(m.cpu.logical_cores, Some(8));
    assert_eq!(m.cpu.physical_cores, Some(4));
    assert_eq!(m.cpu.x86_64_level, Some(4));
    assert!(m.render_text().contains("cgroup v2 limit 4.0 GiB"));
}

#[test]
fn aarch64_reports_neon() {
    let m = probe_fixture("aarch64", &[]);
    assert_eq!(m.cpu.architecture, "aarch64");
    assert_eq!(m.cpu.model_name.as_deref(), Some("ARM Neoverse-N1"));
    assert_eq!(m.cpu.vendor.as_deref(), Some("ARM"));
    assert_eq!(m.cpu.logical_cores, Some(4));
    assert_eq!(m.cpu.physical_cores, Some(4));
    assert_eq!(m.cpu.x86_64_level, None);
    for f in ["neon", "asimd", "fp16", "dotprod", "crc32"] {
        assert!(m.cpu.has_feature(f), "missing {f}: {:?}", m.cpu.features);
    }
    assert!(!m.cpu.has_feature("sve"));
    assert_eq!(m.memory.total_bytes, Some(8 << 30));
    assert_eq!(m.memory.cgroup_limit_bytes, None);
    assert_eq!(m.memory.effective_total_bytes, Some(8 << 30));
}

#[test]
fn missing_tree_is_notes_not_errors() {
    let m = probe_fixture("does-not-exist", &[]);
    assert!(m.gpus.is_empty());
    assert_eq!(m.cpu.logical_cores, None);
    assert_eq!(m.memory.total_bytes, None);
    assert!(m.notes.iter().any(|n| n.contains("cpuinfo")));
    assert!(m.notes.iter().any(|n| n.contains("meminfo")));
}

#[test]
fn json_round_trip() {
    let m = probe_fixture("amd-gfx1100", &[("HSA_OVERRIDE_GFX_VERSION", "10.3.0")]);
    let json = serde_json::to_string_pretty(&m).expect("serialises");
    println!("{json}");
    assert!(json.contains("\"vendor\": \"amd\""));
    assert!(json.contains("\"source\": \"kfd\""));
    assert!(json.contains("\"effective_gfx_target\": \"gfx1030\""));
    let back: MachineInfo = serde_json::from_str(&json).expect("deserialises");
    assert_eq!(back, m);
}
