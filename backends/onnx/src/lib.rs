//! # corral-backend-onnx
//!
//! A corral backend plugin on ONNX Runtime, through the `ort` crate with ONNX Runtime
//! loaded at run time (`load-dynamic`): the plugin links no ONNX Runtime, it finds
//! `libonnxruntime` when the host initialises it (see [`runtime`] for where it looks) and
//! reports which one it took.
//!
//! It runs two kinds of model directory:
//! - decoder LLMs in the onnxruntime-genai layout (`genai_config.json`, `model.onnx` with
//!   `past_key_values.N.key/value` inputs and `present.N.key/value` outputs), with a KV
//!   cache per sequence behind the backend-api context ([`context`]);
//! - sentence encoders (BERT family, as sentence-transformers export them), whose pooled
//!   and optionally normalised vectors come out of `embeddings(seq)`.
//!
//! Tokenizers come from `tokenizer.json`. Execution providers: the CPU always; CUDA,
//! TensorRT, ROCm, MIGraphX, CoreML and DirectML when the plugin is built with their
//! cargo feature and the loaded ONNX Runtime has them (see [`runtime::provider_plan`]);
//! the provider a model actually runs on is in its metadata and in `describe()`.
//!
//! Options (manifest `[options]`, overridden by the host config's `[backends.onnx]`):
//! `library_path` (file or directory of libonnxruntime), `execution_providers` (list,
//! most preferred first, e.g. `["cuda", "cpu"]`), `device_id` (GPU index), `n_threads`.

pub mod context;
pub mod model;
pub mod runtime;
pub mod tokenizer;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use corral_backend_api::{
    BackendError, Device, DeviceKind, InitContext, LoadRequest, plugin::Backend,
};
use serde::Deserialize;

pub use context::OnnxContext;
pub use model::OnnxModel;
pub use runtime::{Provider, Runtime};

/// The variant this build is, from its execution-provider features (it must equal the
/// manifest's `variant`).
pub const VARIANT: &str = if cfg!(feature = "tensorrt") || cfg!(feature = "cuda") {
    "cuda12"
} else if cfg!(feature = "rocm") || cfg!(feature = "migraphx") {
    "rocm"
} else if cfg!(feature = "coreml") {
    "coreml"
} else if cfg!(feature = "directml") {
    "directml"
} else {
    "cpu"
};

/// The plugin's options.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OnnxOptions {
    /// libonnxruntime to use: a file, or a directory holding it.
    pub library_path: Option<PathBuf>,
    /// Execution providers to try, most preferred first; the CPU is always last.
    pub execution_providers: Option<Vec<String>>,
    /// GPU index for GPU providers.
    pub device_id: i32,
    /// Intra-op threads (0: the host's n_threads, else ONNX Runtime's choice).
    pub n_threads: usize,
}

/// The ONNX Runtime backend.
pub struct OnnxBackend {
    runtime: Runtime,
    env: ort::environment::Environment,
    providers: Vec<Provider>,
    options: OnnxOptions,
    /// The provider the last loaded model runs on.
    last_provider: Mutex<Option<Provider>>,
}

impl OnnxBackend {
    /// Plugin entry point: finds and loads ONNX Runtime.
    pub fn init(init: &InitContext) -> Result<Self, BackendError> {
        let options: OnnxOptions = init.options()?;
        Self::with_options(options)
    }

    /// Initialises with explicit options (for tools and tests that use the crate directly).
    pub fn with_options(options: OnnxOptions) -> Result<Self, BackendError> {
        let runtime = runtime::load(options.library_path.as_deref())
            .map_err(|e| BackendError::not_found(e.to_string()))?;
        let providers = runtime::provider_plan(
            options.execution_providers.as_deref(),
            &runtime.available_providers,
        )
        .map_err(BackendError::invalid)?;
        let env = runtime::environment().ok_or_else(|| {
            BackendError::internal("the ONNX Runtime environment is gone after loading")
        })?;
        log::info!(
            "onnx backend ({VARIANT}): ONNX Runtime {} from {} ({}); providers to try: {}",
            runtime.version,
            runtime.path.display(),
            runtime.source,
            providers.iter().map(|p| p.key()).collect::<Vec<_>>().join(", ")
        );
        Ok(OnnxBackend { runtime, env, providers, options, last_provider: Mutex::new(None) })
    }

    /// The loaded ONNX Runtime.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The providers sessions try, most preferred first.
    pub fn providers(&self) -> &[Provider] {
        &self.providers
    }
}

fn total_memory() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/meminfo") else { return 0 };
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    field("MemTotal:")
}

fn available_memory() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/meminfo") else { return 0 };
    s.lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

impl Backend for OnnxBackend {
    type Model = OnnxModel;

    fn devices(&self) -> Vec<Device> {
        let mut out = vec![Device {
            index: 0,
            name: "CPU (ONNX Runtime CPUExecutionProvider)".into(),
            kind: DeviceKind::Cpu,
            memory_total: total_memory(),
            memory_free: available_memory(),
        }];
        if let Some(gpu) = self.providers.iter().find(|p| **p != Provider::Cpu) {
            out.push(Device {
                index: 1,
                name: format!("GPU {} ({})", self.options.device_id, gpu.ort_name()),
                kind: DeviceKind::Gpu,
                memory_total: 0,
                memory_free: 0,
            });
        }
        out
    }

    fn load_model(&self, request: &LoadRequest) -> Result<OnnxModel, BackendError> {
        if request.format != "onnx" {
            return Err(BackendError::unsupported(format!(
                "format {:?}: this backend runs ONNX models (a directory or a .onnx file)",
                request.format
            )));
        }
        let settings = &request.settings;
        let threads = if self.options.n_threads > 0 {
            self.options.n_threads
        } else {
            settings.n_threads as usize
        };
        // n_gpu_layers = 0 asks for no GPU: the CPU only.
        let cpu_only = [Provider::Cpu];
        let providers: &[Provider] =
            if settings.n_gpu_layers == 0 { &cpu_only } else { &self.providers };
        let session = model::SessionSettings {
            env: &self.env,
            providers,
            threads,
            device_id: if self.options.device_id != 0 {
                self.options.device_id
            } else {
                settings.main_gpu
            },
        };
        let m = OnnxModel::load(Path::new(&request.path), &session)?;
        *self.last_provider.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(m.shared.provider);
        Ok(m)
    }

    fn describe(&self) -> String {
        let used = self
            .last_provider
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .map_or_else(
                || {
                    format!(
                        "execution provider: {} (first of {})",
                        self.providers[0].ort_name(),
                        self.providers.iter().map(|p| p.key()).collect::<Vec<_>>().join(" > ")
                    )
                },
                |p| format!("execution provider in use: {}", p.ort_name()),
            );
        format!(
            "ONNX Runtime {} from {} (found via {}); {used}",
            self.runtime.version,
            self.runtime.path.display(),
            self.runtime.source
        )
    }
}

corral_backend_api::export_plugin! {
    name: "onnx",
    variant: VARIANT,
    version: env!("CARGO_PKG_VERSION"),
    init: OnnxBackend::init,
}
