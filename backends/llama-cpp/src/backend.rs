//! The backend object: init, devices, model loading.

use std::ffi::{CStr, CString};
use std::path::Path;
use std::sync::{Arc, Once};

use corral_backend_api::{
    BackendError, Device, DeviceKind, ErrorKind, InitContext, LoadRequest, plugin::Backend,
};
use llama_cpp_sys_2 as sys;
use serde::Deserialize;

use crate::gguf_check::{self, check_gguf};
use crate::logging;
use crate::model::{KvSettings, LlamaModel, ModelInner};
use crate::rpc;

/// The plugin's options: the `[options]` table of its manifest, overridden by the host
/// config's `[backends.llama-cpp]` table. Unknown keys are ignored.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct LlamaOptions {
    /// Threads for single-token decoding when a context does not say (`0`: the number of
    /// CPUs the process may use).
    pub n_threads: u32,
    /// Threads for prompt batches when a context does not say (`0`: as `n_threads`).
    pub n_threads_batch: u32,
    /// Physical batch size (llama.cpp's `n_ubatch`; `0`: 512, capped at `n_batch`).
    pub n_ubatch: u32,
    /// Flash attention: `None` lets llama.cpp decide (its `auto`).
    pub flash_attn: Option<bool>,
    /// Vulkan builds: also use CPU-type Vulkan devices (Mesa's lavapipe), which llama.cpp
    /// skips by default. Sets `GGML_VK_VISIBLE_DEVICES=0` unless that is already set.
    pub allow_cpu_devices: bool,
    /// One KV buffer for all sequences (`true`: each sequence may use up to `n_ctx`), or
    /// one stream per sequence (`false`: each gets `n_ctx / n_seq_max` and attends over its
    /// own cells only, which is cheaper with many parallel sequences). Unset (default):
    /// shared for `new_context`, per sequence for `new_context_per_sequence` (the server).
    pub kv_unified: Option<bool>,
    /// Full-size caches for the sliding-window layers of models that have them (Gemma 2
    /// and 3, Mistral's, Llama 4...): `true` (unset: the default, llama.cpp's C API's)
    /// keeps every position there too, as the global layers do, so that llama.cpp can
    /// shift the context; `false` (llama-server's default) keeps only the window and a
    /// micro-batch, which saves their memory and attention work at long contexts, and a
    /// sequence can then only be cut back to a position whose window it still holds
    /// (`kv_remove` refuses the others, and the host evaluates that prompt anew).
    pub swa_full: Option<bool>,
    /// Skip the vocabulary checks made before llama.cpp sees a file (duplicate tokens,
    /// token count against the tensors, merges of missing tokens), which llama.cpp itself
    /// asserts on. Only for testing the host's isolation against a real abort.
    pub skip_vocabulary_check: bool,
}

impl LlamaOptions {
    /// Whether sliding-window layers keep full-size caches (the `swa_full` option).
    pub(crate) fn swa_full(&self) -> bool {
        self.swa_full.unwrap_or(true)
    }

    /// Threads to use when a caller asks for `requested` (`0`: the default).
    pub(crate) fn threads(&self, requested: u32) -> i32 {
        let n = if requested > 0 {
            requested
        } else if self.n_threads > 0 {
            self.n_threads
        } else {
            // ggml runs at most 512 threads (GGML_MAX_N_THREADS); a bigger machine's
            // default is that many, an explicit count above it is refused.
            std::thread::available_parallelism().map_or(4, |n| n.get() as u32).min(512)
        };
        n.min(i32::MAX as u32) as i32
    }

    /// Threads for prompt batches when a caller asks for `requested` (`0`: the default).
    pub(crate) fn threads_batch(&self, requested: u32) -> i32 {
        if requested == 0 && self.n_threads_batch > 0 {
            self.n_threads_batch.min(i32::MAX as u32) as i32
        } else {
            self.threads(requested)
        }
    }
}

/// The llama.cpp backend: an initialised llama.cpp and the plugin's options.
pub struct LlamaBackend {
    options: Arc<LlamaOptions>,
}

static INIT: Once = Once::new();

/// Initialises llama.cpp once per process: log routing and `llama_backend_init`.
pub(crate) fn init_llama(options: &LlamaOptions) {
    INIT.call_once(|| {
        if cfg!(feature = "vulkan")
            && options.allow_cpu_devices
            && std::env::var_os("GGML_VK_VISIBLE_DEVICES").is_none()
        {
            // SAFETY: set once, during init, before ggml reads it; the host initialises a
            // plugin before it starts threads that could read the environment concurrently.
            unsafe { std::env::set_var("GGML_VK_VISIBLE_DEVICES", "0") };
            log::info!("allow_cpu_devices: GGML_VK_VISIBLE_DEVICES=0 (CPU Vulkan devices allowed)");
        }
        logging::install();
        rpc::install_abort_message();
        // SAFETY: called once per process, before any other llama.cpp call of this plugin.
        unsafe { sys::llama_backend_init() };
    });
}

impl LlamaBackend {
    /// Initialises llama.cpp (once per process) with options from the host.
    pub fn init(init: &InitContext) -> Result<Self, BackendError> {
        let options: LlamaOptions = init.options()?;
        Self::with_options(options)
    }

    /// Initialises llama.cpp (once per process) with `options`; what tests call.
    pub fn with_options(options: LlamaOptions) -> Result<Self, BackendError> {
        init_llama(&options);
        let backend = LlamaBackend { options: Arc::new(options) };
        log::info!("{}", backend.describe());
        Ok(backend)
    }

    /// The options in effect.
    pub fn options(&self) -> &LlamaOptions {
        &self.options
    }
}

pub(crate) fn cstr_or_empty(p: *const std::ffi::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: ggml returns NUL-terminated strings that live as long as the device registry.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Whether ggml registered a GPU (discrete or integrated) that layers can be offloaded to.
fn has_gpu_device() -> bool {
    // SAFETY: the registry is initialised by llama_backend_init; indices stay below the
    // count it reports.
    unsafe {
        (0..sys::ggml_backend_dev_count()).any(|i| {
            let dev = sys::ggml_backend_dev_get(i);
            !dev.is_null()
                && matches!(
                    sys::ggml_backend_dev_type(dev),
                    sys::GGML_BACKEND_DEVICE_TYPE_GPU | sys::GGML_BACKEND_DEVICE_TYPE_IGPU
                )
        })
    }
}

impl Backend for LlamaBackend {
    type Model = LlamaModel;

    fn devices(&self) -> Vec<Device> {
        let mut gpus = Vec::new();
        let mut others = Vec::new();
        // SAFETY: the registry is initialised by llama_backend_init; indices stay below the
        // count it reports, and the out-pointers of dev_memory point to live locals.
        unsafe {
            for i in 0..sys::ggml_backend_dev_count() {
                let dev = sys::ggml_backend_dev_get(i);
                if dev.is_null() {
                    continue;
                }
                let name = cstr_or_empty(sys::ggml_backend_dev_name(dev));
                let desc = cstr_or_empty(sys::ggml_backend_dev_description(dev));
                let (mut free, mut total) = (0usize, 0usize);
                sys::ggml_backend_dev_memory(dev, &mut free, &mut total);
                let kind = match sys::ggml_backend_dev_type(dev) {
                    sys::GGML_BACKEND_DEVICE_TYPE_CPU => DeviceKind::Cpu,
                    sys::GGML_BACKEND_DEVICE_TYPE_GPU | sys::GGML_BACKEND_DEVICE_TYPE_IGPU => {
                        DeviceKind::Gpu
                    }
                    _ => DeviceKind::Accelerator,
                };
                let label =
                    if desc.is_empty() || desc == name { name } else { format!("{desc} ({name})") };
                let info = Device {
                    index: 0,
                    name: label,
                    kind,
                    memory_total: total as u64,
                    memory_free: free as u64,
                };
                if kind == DeviceKind::Gpu { gpus.push(info) } else { others.push(info) }
            }
        }
        // GPUs first, numbered as llama.cpp's `main_gpu` counts them; then the rest.
        gpus.into_iter()
            .chain(others)
            .enumerate()
            .map(|(i, mut d)| {
                d.index = i as u32;
                d
            })
            .collect()
    }

    fn load_model(&self, request: &LoadRequest) -> Result<LlamaModel, BackendError> {
        if !request.format.is_empty() && !request.format.eq_ignore_ascii_case("gguf") {
            return Err(BackendError::unsupported(format!(
                "the llama-cpp backend loads GGUF files, not '{}'",
                request.format
            )));
        }
        let path = Path::new(&request.path);
        let opts = &request.settings;
        // Checked before anything is read: a bad setting is the request's error.
        let kv = KvSettings::from_extra(opts)?;
        let summary = check_gguf(path, !self.options.skip_vocabulary_check)?;
        let cpath = CString::new(request.path.as_str())
            .map_err(|_| BackendError::invalid("model path contains a NUL byte"))?;

        // SAFETY: returns a plain struct by value.
        let mut params = unsafe { sys::llama_model_default_params() };
        params.n_gpu_layers = opts.n_gpu_layers;
        params.main_gpu = opts.main_gpu;
        params.load_mode = match (opts.use_mmap, opts.use_mlock) {
            (true, true) => sys::LLAMA_LOAD_MODE_MMAP_MLOCK,
            (true, false) => sys::LLAMA_LOAD_MODE_MMAP,
            (false, true) => sys::LLAMA_LOAD_MODE_MLOCK,
            (false, false) => sys::LLAMA_LOAD_MODE_NONE,
        };
        if opts.main_gpu < 0 {
            return Err(BackendError::invalid(format!(
                "main_gpu must be 0 or more, got {}",
                opts.main_gpu
            )));
        }

        // Other machines' devices (`rpc`) or a split of its own (`tensor_split`): the
        // devices and the split are planned here, and must outlive the load.
        let endpoints = opts
            .extra(corral_backend_api::EXTRA_RPC)
            .map(corral_probe::rpc::parse_endpoints)
            .unwrap_or_default();
        let split_given = opts
            .extra(corral_backend_api::EXTRA_TENSOR_SPLIT)
            .is_some_and(|t| !t.trim().is_empty());
        let mut plan = if endpoints.is_empty() && !split_given {
            None
        } else {
            Some(rpc::plan_load(path, &endpoints, opts)?)
        };
        if let Some(plan) = plan.as_mut() {
            params.devices = plan.devices.as_mut_ptr();
            params.tensor_split = plan.tensor_split.as_ptr();
            params.n_gpu_layers = plan.n_gpu_layers;
            params.split_mode = sys::LLAMA_SPLIT_MODE_LAYER;
            rpc::log_placement(&plan.placement);
        }

        logging::clear_errors();
        // SAFETY: `cpath` is a valid C string; params is a fully initialised struct whose
        // pointers are the defaults (null) or point into `plan`, alive until this returns
        // (llama.cpp copies both arrays).
        let model = unsafe { sys::llama_model_load_from_file(cpath.as_ptr(), params) };
        if model.is_null() {
            let errors = logging::take_errors();
            let kind = gguf_check::load_error_kind(&errors);
            let arch = summary.architecture.as_deref().unwrap_or("(none)");
            let detail = if errors.is_empty() {
                "llama.cpp gave no reason".to_string()
            } else {
                errors.join("; ")
            };
            let message = match kind {
                ErrorKind::Unsupported => format!(
                    "llama.cpp does not support the model architecture '{arch}' of {}: {detail}",
                    path.display()
                ),
                _ => format!("llama.cpp could not load {}: {detail}", path.display()),
            };
            return Err(BackendError::new(kind, message));
        }
        // SAFETY: `model` is live and not shared yet; it is freed here when refused.
        if let Err(why) = unsafe { gguf_check::check_loaded_vocab(model) } {
            // SAFETY: as above; nothing else holds the model.
            unsafe { sys::llama_model_free(model) };
            return Err(BackendError::invalid(format!("{}: {why}", path.display())));
        }
        // Every layer on this machine's CPU: no split over devices or machines, and no GPU
        // to offload to (or offloading turned off).
        let cpu_only = plan.is_none() && (params.n_gpu_layers == 0 || !has_gpu_device());
        let placement = plan.map(|p| (p.placement, !endpoints.is_empty()));
        // The adapters load onto the model once it is owned (an error then frees it with
        // `ModelInner`'s drop), checked against the architecture llama.cpp read.
        let mut inner = ModelInner::new(
            model,
            summary,
            self.options.clone(),
            kv,
            placement,
            cpu_only,
            crate::lora::Adapters::default(),
        );
        let arch = inner.metadata.architecture.clone();
        // SAFETY: `inner` owns the live model and outlives the adapters' use (llama.cpp
        // frees them with it).
        inner.adapters = unsafe {
            crate::lora::Adapters::load(
                inner.ptr,
                &arch,
                opts.extra_all(corral_backend_api::EXTRA_LORA_ADAPTER),
            )
        }?;
        Ok(LlamaModel::new(Arc::new(inner)))
    }

    fn lend_devices(
        &self,
        endpoint: &str,
        settings: &corral_backend_api::LoadSettings,
    ) -> Result<(), BackendError> {
        rpc::lend(&self.options, endpoint, settings)
    }

    fn describe(&self) -> String {
        // SAFETY: both return static NUL-terminated strings.
        let (version, system) = unsafe {
            (cstr_or_empty(sys::llama_version()), cstr_or_empty(sys::llama_print_system_info()))
        };
        format!("llama.cpp {version} ({}; {})", crate::VARIANT, system.trim())
    }
}
