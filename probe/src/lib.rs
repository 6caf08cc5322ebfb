//! Hardware probing for corral.
//!
//! [`probe`] describes the machine: CPU (model, cores, SIMD features, x86-64 level), memory
//! (honouring cgroup limits) and GPUs (NVIDIA, AMD, Apple, and every Vulkan device). The
//! host uses the result for `corral probe`, `corral probe --json` and for choosing a backend
//! plugin through [`check`], which matches a plugin manifest's [`Requirements`] against a
//! [`MachineInfo`]. [`ggml`] holds the rule the llama.cpp plugin and the host's memory
//! estimate share for flash attention on the CPU.
//!
//! The crate links no GPU library. NVML (`libnvidia-ml.so.1`) and the Vulkan loader are
//! opened at run time only, and their absence is a normal result recorded as a note, never
//! an error: [`probe`] cannot fail. Everything read from disk is read under
//! [`ProbeOptions::root`], so tests describe whole machines with small fake `/proc` and
//! `/sys` trees.
//!
//! ```no_run
//! let machine = corral_probe::probe(&corral_probe::ProbeOptions::system());
//! println!("{}", machine.render_text());
//! ```

#![warn(missing_docs)]

mod amd;
#[cfg(target_os = "macos")]
mod apple;
mod cpu;
mod fsutil;
pub mod ggml;
mod memory;
mod nvidia;
mod render;
mod requirements;
pub mod rpc;
mod visibility;
mod vulkan;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use requirements::{Requirements, Unmet, check};

/// Environment variables that change what the probe reports (device visibility and the
/// AMD gfx override). [`ProbeOptions::system`] copies these from the process.
pub const VISIBILITY_VARIABLES: &[&str] = &[
    "CUDA_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "HSA_OVERRIDE_GFX_VERSION",
];

/// What to probe and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOptions {
    /// Root of the file system tree to read `/proc` and `/sys` from: `/` normally, a fake
    /// tree in tests.
    pub root: PathBuf,
    /// The visibility variables (see [`VISIBILITY_VARIABLES`]); other keys are ignored.
    pub env: BTreeMap<String, String>,
    /// Open NVML and the Vulkan loader at run time. Off in fake-tree tests, where only
    /// the files under `root` should count.
    pub use_runtime_libraries: bool,
}

impl ProbeOptions {
    /// Options for probing this machine: root `/`, the visibility variables from the
    /// process environment, runtime libraries on.
    pub fn system() -> Self {
        let env = VISIBILITY_VARIABLES
            .iter()
            .filter_map(|name| std::env::var(name).ok().map(|v| ((*name).to_string(), v)))
            .collect();
        Self { root: PathBuf::from("/"), env, use_runtime_libraries: true }
    }

    /// Options for probing a fake tree at `root` with no environment and no runtime
    /// libraries (what tests use).
    pub fn fake(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into(), env: BTreeMap::new(), use_runtime_libraries: false }
    }

    /// True when probing the running system rather than a fake tree.
    pub(crate) fn is_real_system(&self) -> bool {
        self.root == std::path::Path::new("/")
    }
}

/// Everything the probe learned about the machine. This is the `corral probe --json`
/// output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineInfo {
    /// Operating system, as Rust names it (`linux`, `macos`, `windows`).
    pub os: String,
    /// The CPU.
    pub cpu: CpuInfo,
    /// Main memory.
    pub memory: MemoryInfo,
    /// GPUs, one entry per device and per source: a discrete NVIDIA card is listed once
    /// from NVML (or procfs) and once more from Vulkan if a Vulkan driver exposes it.
    pub gpus: Vec<GpuInfo>,
    /// Whether the runtime libraries could be opened.
    pub libraries: RuntimeLibraries,
    /// Human-readable lines for everything that could not be probed, and why.
    pub notes: Vec<String>,
}

/// CPU description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuInfo {
    /// Model name (`model name` in /proc/cpuinfo), if known.
    pub model_name: Option<String>,
    /// Vendor (`GenuineIntel`, `AuthenticAMD`, an ARM implementer name...), if known.
    pub vendor: Option<String>,
    /// Architecture as Rust names it (`x86_64`, `aarch64`, ...).
    pub architecture: String,
    /// Logical processors (hardware threads).
    pub logical_cores: Option<u32>,
    /// Physical cores, if the topology could be read.
    pub physical_cores: Option<u32>,
    /// Threads this process may actually use (affinity mask and cgroup CPU quota); only
    /// on the real system.
    pub usable_threads: Option<u32>,
    /// SIMD and related features, normalised names (see [`normalize_cpu_feature`]),
    /// sorted.
    pub features: Vec<String>,
    /// The x86-64 microarchitecture level met (1..=4), x86-64 only.
    pub x86_64_level: Option<u8>,
}

impl CpuInfo {
    /// Whether the CPU has `feature` (any spelling [`normalize_cpu_feature`] accepts).
    pub fn has_feature(&self, feature: &str) -> bool {
        let wanted = normalize_cpu_feature(feature);
        self.features.contains(&wanted)
    }
}

pub use cpu::normalize_cpu_feature;

/// Main memory, in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryInfo {
    /// `MemTotal` of /proc/meminfo: the machine's memory.
    pub total_bytes: Option<u64>,
    /// `MemAvailable` of /proc/meminfo.
    pub available_bytes: Option<u64>,
    /// The cgroup memory limit of this process, when one is set.
    pub cgroup_limit_bytes: Option<u64>,
    /// The cgroup's current usage, when a limit is set.
    pub cgroup_usage_bytes: Option<u64>,
    /// The cgroup version (1 or 2) the limit came from.
    pub cgroup_version: Option<u8>,
    /// What this process can use in all: the smaller of the total and the cgroup limit.
    pub effective_total_bytes: Option<u64>,
    /// What is available to this process now: the smaller of `MemAvailable` and the room
    /// left under the cgroup limit (reclaimable page cache counted as free).
    pub effective_available_bytes: Option<u64>,
}

/// GPU vendor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuVendor {
    /// NVIDIA (PCI vendor 0x10de).
    Nvidia,
    /// AMD (PCI vendor 0x1002).
    Amd,
    /// Apple (Apple Silicon).
    Apple,
    /// Intel (PCI vendor 0x8086).
    Intel,
    /// Anything else, including software renderers such as Mesa's llvmpipe.
    Other,
}

impl GpuVendor {
    /// Vendor from a PCI / Vulkan vendor id.
    pub fn from_pci_id(id: u32) -> Self {
        match id {
            0x10de => Self::Nvidia,
            0x1002 | 0x1022 => Self::Amd,
            0x8086 => Self::Intel,
            0x106b => Self::Apple,
            _ => Self::Other,
        }
    }

    /// Parses a vendor name as written in a manifest (`nvidia`, `amd`, `apple`, `intel`,
    /// `other`), case-insensitively.
    pub fn parse(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "nvidia" => Some(Self::Nvidia),
            "amd" | "ati" => Some(Self::Amd),
            "apple" => Some(Self::Apple),
            "intel" => Some(Self::Intel),
            "other" => Some(Self::Other),
            _ => None,
        }
    }

    /// The lowercase name used in JSON and manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Nvidia => "nvidia",
            Self::Amd => "amd",
            Self::Apple => "apple",
            Self::Intel => "intel",
            Self::Other => "other",
        }
    }

    /// The name for people (`NVIDIA`, `AMD`, ...).
    pub fn display_name(self) -> &'static str {
        match self {
            Self::Nvidia => "NVIDIA",
            Self::Amd => "AMD",
            Self::Apple => "Apple",
            Self::Intel => "Intel",
            Self::Other => "other",
        }
    }
}

impl fmt::Display for GpuVendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a GPU entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuSource {
    /// NVIDIA Management Library, opened at run time.
    Nvml,
    /// `/proc/driver/nvidia` and `/sys/bus/pci` (NVIDIA without NVML).
    Procfs,
    /// The AMD KFD topology in `/sys/class/kfd` (ROCm's view).
    Kfd,
    /// A Vulkan physical device, from the Vulkan loader opened at run time.
    Vulkan,
    /// Apple Silicon on macOS.
    Metal,
}

impl GpuSource {
    /// The compute API a device from this source is used through.
    pub fn api(self) -> GpuApi {
        match self {
            Self::Nvml | Self::Procfs => GpuApi::Cuda,
            Self::Kfd => GpuApi::Rocm,
            Self::Vulkan => GpuApi::Vulkan,
            Self::Metal => GpuApi::Metal,
        }
    }
}

impl fmt::Display for GpuSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Nvml => "nvml",
            Self::Procfs => "procfs",
            Self::Kfd => "kfd",
            Self::Vulkan => "vulkan",
            Self::Metal => "metal",
        })
    }
}

/// A compute API a backend variant runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuApi {
    /// NVIDIA CUDA.
    Cuda,
    /// AMD ROCm / HIP.
    Rocm,
    /// Vulkan (any vendor, including CPU implementations such as lavapipe).
    Vulkan,
    /// Apple Metal.
    Metal,
}

impl GpuApi {
    /// Parses an API name as written in a manifest, case-insensitively (`hip` is accepted
    /// for `rocm`).
    pub fn parse(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "cuda" => Some(Self::Cuda),
            "rocm" | "hip" => Some(Self::Rocm),
            "vulkan" => Some(Self::Vulkan),
            "metal" => Some(Self::Metal),
            _ => None,
        }
    }
}

impl fmt::Display for GpuApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cuda => "cuda",
            Self::Rocm => "rocm",
            Self::Vulkan => "vulkan",
            Self::Metal => "metal",
        })
    }
}

/// One GPU as seen by one source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    /// Index in its source's enumeration: the CUDA index for NVIDIA (PCI bus order), the
    /// ROCm index for AMD (KFD node order, CPU nodes skipped), the physical-device index
    /// for Vulkan. This is what `*_VISIBLE_DEVICES` indices refer to.
    pub index: u32,
    /// Vendor.
    pub vendor: GpuVendor,
    /// Device name, e.g. `NVIDIA GeForce RTX 4090`.
    pub name: String,
    /// Where this entry came from.
    pub source: GpuSource,
    /// The compute API this entry is used through (follows from `source`).
    pub api: GpuApi,
    /// Device UUID (`GPU-...`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// PCI address (`0000:01:00.0`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_bus_id: Option<String>,
    /// Device memory in bytes (unified memory on Apple; the device-local heap on Vulkan).
    pub memory_total_bytes: Option<u64>,
    /// Free device memory in bytes, when the source reports it.
    pub memory_free_bytes: Option<u64>,
    /// Driver version (NVIDIA `550.54.14`; amdgpu module version; Vulkan driver version).
    pub driver_version: Option<String>,
    /// NVIDIA CUDA compute capability, e.g. `8.9`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_capability: Option<String>,
    /// AMD gfx target of the hardware, e.g. `gfx1100`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gfx_target: Option<String>,
    /// AMD gfx target ROCm will use: `gfx_target`, or `HSA_OVERRIDE_GFX_VERSION` when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_gfx_target: Option<String>,
    /// Vulkan details, for entries from the Vulkan source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vulkan: Option<VulkanDetails>,
    /// Whether the device is visible to its API under the visibility variables.
    pub visible: bool,
    /// The variable that hides it, when not visible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_by: Option<String>,
}

/// Vulkan physical device type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VulkanDeviceType {
    /// A discrete GPU.
    Discrete,
    /// A GPU integrated with the CPU.
    Integrated,
    /// A virtual GPU (e.g. in a VM).
    Virtual,
    /// A CPU implementation, such as Mesa's lavapipe (`llvmpipe`).
    Cpu,
    /// Anything else.
    Other,
}

impl fmt::Display for VulkanDeviceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Discrete => "discrete",
            Self::Integrated => "integrated",
            Self::Virtual => "virtual",
            Self::Cpu => "cpu",
            Self::Other => "other",
        })
    }
}

/// What Vulkan says about a physical device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VulkanDetails {
    /// Device type.
    pub device_type: VulkanDeviceType,
    /// PCI-style vendor id (0x10005 is Mesa's software devices).
    pub vendor_id: u32,
    /// Device id.
    pub device_id: u32,
    /// Highest Vulkan version the device supports, e.g. `1.3.230`.
    pub api_version: String,
    /// Driver name (`llvmpipe`, `NVIDIA`, `radv`), when the driver reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_name: Option<String>,
    /// Driver information string (`Mesa 22.3.6 (LLVM 15.0.6)`), when reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_info: Option<String>,
}

/// Whether the runtime libraries could be opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeLibraries {
    /// NVML (`libnvidia-ml.so.1`).
    pub nvml: LibraryStatus,
    /// The Vulkan loader (`libvulkan.so.1`).
    pub vulkan: LibraryStatus,
}

/// Outcome of opening one runtime library.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LibraryStatus {
    /// Opened and initialised.
    pub loaded: bool,
    /// Its version (NVML library version; Vulkan instance version), when loaded.
    pub version: Option<String>,
    /// Why it is not loaded.
    pub error: Option<String>,
}

impl LibraryStatus {
    pub(crate) fn not_attempted() -> Self {
        Self {
            loaded: false,
            version: None,
            error: Some("not probed: runtime libraries disabled".to_string()),
        }
    }

    pub(crate) fn failed(error: impl Into<String>) -> Self {
        Self { loaded: false, version: None, error: Some(error.into()) }
    }

    pub(crate) fn ok(version: Option<String>) -> Self {
        Self { loaded: true, version, error: None }
    }
}

/// Probes the machine. Never fails: each part that cannot be read is left empty and
/// explained in [`MachineInfo::notes`].
pub fn probe(opts: &ProbeOptions) -> MachineInfo {
    let mut notes = Vec::new();
    let cpu = cpu::probe_cpu(opts, &mut notes);
    let memory = memory::probe_memory(opts, &mut notes);

    let mut gpus = Vec::new();
    let nvml = nvidia::probe_nvidia(opts, &mut gpus, &mut notes);
    amd::probe_amd(opts, &mut gpus, &mut notes);
    #[cfg(target_os = "macos")]
    apple::probe_apple(opts, &mut gpus, &mut notes);
    let vulkan = vulkan::probe_vulkan(opts, &mut gpus, &mut notes);
    visibility::apply(&opts.env, &mut gpus, &mut notes);

    MachineInfo {
        os: std::env::consts::OS.to_string(),
        cpu,
        memory,
        gpus,
        libraries: RuntimeLibraries { nvml, vulkan },
        notes,
    }
}

impl MachineInfo {
    /// GPUs visible to `api` (entries of that API not hidden by a visibility variable).
    pub fn visible_gpus(&self, api: GpuApi) -> impl Iterator<Item = &GpuInfo> {
        self.gpus.iter().filter(move |g| g.api == api && g.visible)
    }

    /// Text for `corral probe`.
    pub fn render_text(&self) -> String {
        render::render(self)
    }
}
