//! # corral-backend-cpu
//!
//! corral's pure-Rust CPU engine: a backend plugin that runs GGUF models (llama with
//! Llama 3's RoPE factors, mistral, qwen2, qwen3, gemma2, gemma3, phi3; see
//! [`model::Arch`]) in F32, F16, BF16, Q8_0, Q4_0, Q5_0, Q5_1 and the k-quants Q2_K to Q6_K
//! with no C or C++ code and no system library. It builds with cargo alone.
//!
//! - [`model`]: loads a GGUF file by memory-mapping it; weights are used in place.
//! - [`tokenizer`]: byte-level BPE (`gpt2`) and SentencePiece-style (`llama`) vocabularies.
//! - [`forward`]: the transformer over a batch that mixes sequences.
//! - [`kernels`]: the dot products (llama.cpp's quantized scheme) and the run-time choice
//!   of their instruction set ([`kernels::isa`]): AVX-512 VNNI and AVX2/FMA/F16C kernels
//!   (`simd`, compiled into every build with `#[target_feature]`) or portable code, so one
//!   library built by a plain `cargo build` runs at full speed on every x86-64 CPU.
//! - [`weights`]: the threaded matrix multiplication over mapped weights.
//! - [`kv`]: the per-sequence KV cache, in f16, q8_0 or q4_0 (the load's `kv_cache_type`).
//! - [`context`]: the backend-api context: validation, decode, logits, embeddings, KV ops.
//!
//! Options (`[backends.cpu]` in the host config, or `[options]` in the manifest):
//! `n_threads`, `n_threads_batch` (used when a context asks for 0 threads).

pub mod context;
pub mod forward;
pub mod ggml_order;
pub mod kernels;
pub mod kquants;
pub mod kv;
pub mod model;
#[cfg(target_arch = "x86_64")]
mod simd;
pub mod tokenizer;
pub mod weights;

use corral_backend_api::{
    BackendError, Device, DeviceKind, InitContext, LoadRequest, plugin::Backend,
};
use serde::Deserialize;

pub use context::CpuContext;
pub use model::CpuModel;

/// Errors inside the engine, before they become [`BackendError`]s.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file asks for something this engine does not implement.
    #[error("{0}")]
    Unsupported(String),
    /// The file is malformed.
    #[error("{0}")]
    Invalid(String),
}

/// The SIMD level the kernels use on this CPU ([`kernels::isa`]), for logs and
/// device names.
pub fn simd() -> &'static str {
    match kernels::isa() {
        kernels::Isa::Avx512Vnni => "AVX-512 VNNI",
        kernels::Isa::Avx2 => "AVX2+FMA",
        kernels::Isa::Portable => "portable",
    }
}

/// The variant name this build reports: `CORRAL_CPU_VARIANT` at build time, else `cpu`
/// (the one variant: its kernels are chosen at run time, see [`kernels::isa`]).
pub const VARIANT: &str = match option_env!("CORRAL_CPU_VARIANT") {
    Some(v) => v,
    None => "cpu",
};

/// Engine options from the host config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CpuOptions {
    /// Threads for single-token decodes when a context asks for 0.
    pub n_threads: Option<u32>,
    /// Threads for batches when a context asks for 0.
    pub n_threads_batch: Option<u32>,
    /// Whether the matmul weights are copied at load into the engine's memory (huge
    /// pages; Q4_K interleaved for the decode kernels: `weights::Weight::copy_to_memory`;
    /// default on). Off: every weight is read in place from the mapped file.
    pub copy_weights: Option<bool>,
    /// Matrix products of Q5_0, Q8_0, Q4_K and Q6_K weights in llama.cpp's float order
    /// (`ggml_order`), so that greedy text equals llama.cpp's on x86 (default off: the
    /// engine's own kernels are faster). `CORRAL_CPU_MATCH_LLAMA_CPP=1` turns it on too.
    pub match_llama_cpp: Option<bool>,
}

/// The backend.
pub struct CpuBackend {
    options: CpuOptions,
}

impl CpuBackend {
    /// Plugin entry point.
    pub fn init(init: &InitContext) -> Result<Self, BackendError> {
        let options: CpuOptions = init.options()?;
        apply_match_llama_cpp(&options);
        log::info!("cpu backend {} ({VARIANT}, {}) initialised", env!("CARGO_PKG_VERSION"), simd());
        Ok(CpuBackend { options })
    }

    /// A backend with the given options, for use without the host.
    pub fn with_options(options: CpuOptions) -> Self {
        apply_match_llama_cpp(&options);
        CpuBackend { options }
    }
}

/// Sets the process-wide agreement mode from the options or `CORRAL_CPU_MATCH_LLAMA_CPP`
/// (an engine worker serves one backend, so process-wide is per backend there).
fn apply_match_llama_cpp(options: &CpuOptions) {
    let env = std::env::var("CORRAL_CPU_MATCH_LLAMA_CPP").ok();
    let on = options.match_llama_cpp.unwrap_or(false)
        || env.as_deref().is_some_and(|v| !matches!(v.trim(), "" | "0" | "false"));
    if on {
        log::info!("cpu backend: matrix products in llama.cpp's float order (match_llama_cpp)");
    }
    ggml_order::set_match_llama_cpp(on);
}

impl Backend for CpuBackend {
    type Model = CpuModel;

    fn devices(&self) -> Vec<Device> {
        vec![Device {
            index: 0,
            name: format!("CPU ({})", simd()),
            kind: DeviceKind::Cpu,
            memory_total: 0,
            memory_free: 0,
        }]
    }

    fn load_model(&self, request: &LoadRequest) -> Result<CpuModel, BackendError> {
        if !request.format.eq_ignore_ascii_case("gguf") {
            return Err(BackendError::unsupported(format!(
                "the cpu backend runs GGUF models, not '{}'",
                request.format
            )));
        }
        let mut options = self.options.clone();
        if request.settings.n_threads > 0 && options.n_threads.is_none() {
            options.n_threads = Some(request.settings.n_threads);
        }
        let kv_type =
            kv::KvType::parse(request.settings.extra(corral_backend_api::EXTRA_KV_CACHE_TYPE))
                .map_err(BackendError::invalid)?;
        model::load(&request.path, options, kv_type)
    }

    fn describe(&self) -> String {
        format!("corral cpu engine {} ({VARIANT}, {})", env!("CARGO_PKG_VERSION"), simd())
    }
}

corral_backend_api::export_plugin! {
    name: "cpu",
    variant: VARIANT,
    version: env!("CARGO_PKG_VERSION"),
    init: CpuBackend::init,
}
