//! Requirement matching against probed fake trees and hand-made machines.

use std::path::PathBuf;

use corral_probe::{
    GpuApi, GpuInfo, GpuSource, GpuVendor, LibraryStatus, MachineInfo, ProbeOptions, Requirements,
    VulkanDetails, VulkanDeviceType, check, probe,
};

fn fixture(name: &str, env: &[(&str, &str)]) -> MachineInfo {
    let mut opts = ProbeOptions::fake(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name),
    );
    opts.env = env.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect();
    probe(&opts)
}

fn req(toml_like_json: &str) -> Requirements {
    serde_json::from_str(toml_like_json).expect("valid requirements")
}

fn reasons(r: &Requirements, m: &MachineInfo) -> Vec<String> {
    match check(r, m) {
        Ok(()) => Vec::new(),
        Err(unmet) => {
            println!("unmet: {unmet}");
            unmet.reasons
        }
    }
}

fn lavapipe() -> GpuInfo {
    GpuInfo {
        index: 0,
        vendor: GpuVendor::Other,
        name: "llvmpipe (LLVM 15.0.6, 256 bits)".into(),
        source: GpuSource::Vulkan,
        api: GpuApi::Vulkan,
        uuid: None,
        pci_bus_id: None,
        memory_total_bytes: Some(8 << 30),
        memory_free_bytes: None,
        driver_version: Some("0.0.1".into()),
        compute_capability: None,
        gfx_target: None,
        effective_gfx_target: None,
        vulkan: Some(VulkanDetails {
            device_type: VulkanDeviceType::Cpu,
            vendor_id: 0x10005,
            device_id: 0,
            api_version: "1.3.230".into(),
            driver_name: Some("llvmpipe".into()),
            driver_info: Some("Mesa 22.3.6 (LLVM 15.0.6)".into()),
        }),
        visible: true,
        hidden_by: None,
    }
}

#[test]
fn empty_requirements_are_always_met() {
    let m = fixture("cpu-cgroup-v2", &[]);
    assert_eq!(check(&Requirements::default(), &m), Ok(()));
    assert_eq!(check(&req("{}"), &m), Ok(()));
}

#[test]
fn cpu_features_os_and_arch() {
    let m = fixture("nvidia-2gpu", &[]);
    let r = req(r#"{"cpu_features":["avx2","FMA","sse4.2"],"os":"linux","arch":"amd64"}"#);
    if cfg!(target_os = "linux") {
        assert_eq!(check(&r, &m), Ok(()));
    }
    let r = req(r#"{"cpu_features":["avx2","avx512f","avx512_vnni"],"arch":"aarch64"}"#);
    let got = reasons(&r, &m);
    assert!(
        got.contains(&"needs CPU feature avx512f, which this CPU lacks".to_string()),
        "{got:?}"
    );
    assert!(got.contains(&"needs CPU feature avx512vnni, which this CPU lacks".to_string()));
    assert!(got.contains(&"needs CPU architecture aarch64, this is x86_64".to_string()));
    assert_eq!(got.len(), 3);

    let arm = fixture("aarch64", &[]);
    assert_eq!(check(&req(r#"{"cpu_features":["neon"],"arch":"arm64"}"#), &arm), Ok(()));
}

#[test]
fn cuda_with_driver_and_compute_capability() {
    let m = fixture("nvidia-2gpu", &[]);
    let ok = req(r#"{"gpu_api":"cuda","min_driver":"525.60","min_compute_capability":"8.9"}"#);
    assert_eq!(check(&ok, &m), Ok(()));
    let vendor = req(r#"{"gpu_vendor":"nvidia","min_driver":"525.60"}"#);
    assert_eq!(check(&vendor, &m), Ok(()));

    let newer = req(r#"{"gpu_api":"cuda","min_driver":"560.28"}"#);
    assert_eq!(
        reasons(&newer, &m),
        ["needs an NVIDIA GPU with driver >= 560.28, found driver 550.54.14 \
          (NVIDIA GeForce RTX 4090, NVIDIA GeForce RTX 3060)"]
    );
}

#[test]
fn cuda_visibility_counts() {
    // Only the RTX 3060 (8.6) is visible, so 8.9 is unmet.
    let m = fixture("nvidia-2gpu", &[("CUDA_VISIBLE_DEVICES", "1")]);
    let r = req(r#"{"gpu_api":"cuda","min_compute_capability":"8.9"}"#);
    assert_eq!(
        reasons(&r, &m),
        ["needs an NVIDIA GPU with compute capability >= 8.9, found compute capability 8.6 \
          (NVIDIA GeForce RTX 3060)"]
    );
    let m = fixture("nvidia-2gpu", &[("CUDA_VISIBLE_DEVICES", "")]);
    let got = reasons(&req(r#"{"gpu_api":"cuda"}"#), &m);
    assert_eq!(
        got,
        ["needs an NVIDIA GPU, found none visible (2 hidden by CUDA_VISIBLE_DEVICES=)"]
    );
}

#[test]
fn no_gpu_at_all() {
    let m = fixture("cpu-cgroup-v2", &[]);
    let got = reasons(&req(r#"{"gpu_vendor":"nvidia","min_driver":"525.60"}"#), &m);
    assert_eq!(got.len(), 1);
    assert!(got[0].starts_with("needs an NVIDIA GPU with driver >= 525.60, found none"), "{got:?}");

    let got = reasons(&req(r#"{"gpu_api":"vulkan"}"#), &m);
    assert_eq!(got, ["needs a Vulkan device, found none (not probed: runtime libraries disabled)"]);

    let mut no_loader = m.clone();
    no_loader.libraries.vulkan = LibraryStatus {
        loaded: false,
        version: None,
        error: Some("Vulkan loader not found".into()),
    };
    let got = reasons(&req(r#"{"gpu_api":"vulkan"}"#), &no_loader);
    assert_eq!(got, ["needs a Vulkan device, found none (Vulkan loader not found)"]);
}

#[test]
fn vulkan_is_met_by_a_cpu_device() {
    let mut m = fixture("cpu-cgroup-v2", &[]);
    m.gpus.push(lavapipe());
    assert_eq!(check(&req(r#"{"gpu_api":"vulkan"}"#), &m), Ok(()));
    // But lavapipe is not a CUDA device.
    assert!(check(&req(r#"{"gpu_api":"cuda"}"#), &m).is_err());
}

#[test]
fn rocm_on_the_amd_machine() {
    let m = fixture("amd-gfx1100", &[]);
    assert_eq!(check(&req(r#"{"gpu_api":"rocm"}"#), &m), Ok(()));
    assert_eq!(check(&req(r#"{"gpu_vendor":"AMD"}"#), &m), Ok(()));
    let got = reasons(&req(r#"{"gpu_api":"cuda"}"#), &m);
    assert_eq!(got.len(), 1);
    assert!(got[0].starts_with("needs an NVIDIA GPU, found none"));
    let hidden = fixture("amd-gfx1100", &[("ROCR_VISIBLE_DEVICES", "-1")]);
    assert!(check(&req(r#"{"gpu_api":"rocm"}"#), &hidden).is_err());
}

#[test]
fn bad_manifest_values_are_reported() {
    let m = fixture("nvidia-2gpu", &[]);
    let got = reasons(&req(r#"{"gpu_api":"opencl"}"#), &m);
    assert_eq!(got, ["names unknown GPU API 'opencl' (expected cuda, rocm, vulkan or metal)"]);
    let got = reasons(&req(r#"{"gpu_vendor":"matrox"}"#), &m);
    assert!(got[0].contains("unknown GPU vendor 'matrox'"));
    let got = reasons(&req(r#"{"gpu_api":"cuda","min_driver":"new"}"#), &m);
    assert!(got[0].contains("not a dotted version"));
    assert!(serde_json::from_str::<Requirements>(r#"{"min_drivers":"1"}"#).is_err());
}

#[test]
fn unmet_lists_every_reason() {
    let m = fixture("cpu-cgroup-v2", &[]);
    let r = req(r#"{"gpu_api":"cuda","cpu_features":["amx_tile"],"os":"windows"}"#);
    let unmet = check(&r, &m).expect_err("three unmet");
    assert_eq!(unmet.reasons.len(), 3, "{unmet}");
    assert!(unmet.to_string().contains("; "));
}
