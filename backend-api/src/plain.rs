//! Plain Rust counterparts of the FFI structs in [`crate::types`] and [`crate::ffi`].
//!
//! Plugin authors see only these: the traits of [`crate::plugin`] take and return
//! `String`, `Option<u32>`, `Vec<u32>` and `Vec<(String, String)>`, never abi_stable's
//! `RString`, `ROption`, `RVec` or `Tuple2`. The guard wrappers that
//! [`crate::export_plugin!`] generates convert at the boundary. The host uses the same
//! types on its side: every one converts from and into its FFI struct with `From`.
//!
//! | plain type | FFI struct |
//! | --- | --- |
//! | [`ModelInfo`] | [`ModelMetadata`] |
//! | [`SpecialTokenIds`] | [`SpecialTokens`] |
//! | [`Device`] | [`DeviceInfo`] |
//! | [`LoadRequest`] | [`ModelSpec`] |
//! | [`LoadSettings`] | [`LoadOptions`] |
//! | [`InitContext`] | [`HostServices`] (less its log sink) |

use abi_stable::std_types::{RString, RVec, Tuple2};

use crate::ffi::{HostServices, LogSinkBox};
use crate::types::*;

fn plain_kv(kv: RVec<Tuple2<RString, RString>>) -> Vec<(String, String)> {
    kv.into_iter().map(|Tuple2(k, v)| (k.into_string(), v.into_string())).collect()
}

fn ffi_kv(kv: Vec<(String, String)>) -> RVec<Tuple2<RString, RString>> {
    kv.into_iter().map(|(k, v)| Tuple2(RString::from(k), RString::from(v))).collect()
}

fn lookup<'a>(kv: &'a [(String, String)], key: &str) -> Option<&'a str> {
    kv.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// What the host needs to know about a model, plus its raw metadata: the plain form of
/// [`ModelMetadata`]. The default is all empty and zero (what the host sees when a
/// plugin's `metadata` panics).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModelInfo {
    /// Architecture, e.g. `llama`, `qwen2`, `bert`.
    pub architecture: String,
    /// The model's own name, if it carries one (else empty).
    pub name: String,
    /// Number of parameters.
    pub parameter_count: u64,
    /// Context length the model was trained for.
    pub context_length: u32,
    /// Width of the hidden state (the embedding length).
    pub embedding_length: u32,
    /// Layers.
    pub block_count: u32,
    /// Predominant quantization, e.g. `Q4_0`, `F16`.
    pub quantization: String,
    /// Size of the weights in bytes.
    pub size_bytes: u64,
    /// Raw key/values as the file carries them (GGUF metadata, ONNX config), values
    /// rendered as text. Long arrays are summarised. The host reads the chat template
    /// from `tokenizer.chat_template` here.
    pub kv: Vec<(String, String)>,
}

impl ModelInfo {
    /// The raw value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        lookup(&self.kv, key)
    }
}

impl From<ModelMetadata> for ModelInfo {
    fn from(m: ModelMetadata) -> Self {
        ModelInfo {
            architecture: m.architecture.into_string(),
            name: m.name.into_string(),
            parameter_count: m.parameter_count,
            context_length: m.context_length,
            embedding_length: m.embedding_length,
            block_count: m.block_count,
            quantization: m.quantization.into_string(),
            size_bytes: m.size_bytes,
            kv: plain_kv(m.kv),
        }
    }
}

impl From<&ModelMetadata> for ModelInfo {
    fn from(m: &ModelMetadata) -> Self {
        ModelInfo::from(m.clone())
    }
}

impl From<ModelInfo> for ModelMetadata {
    fn from(m: ModelInfo) -> Self {
        ModelMetadata {
            architecture: m.architecture.into(),
            name: m.name.into(),
            parameter_count: m.parameter_count,
            context_length: m.context_length,
            embedding_length: m.embedding_length,
            block_count: m.block_count,
            quantization: m.quantization.into(),
            size_bytes: m.size_bytes,
            kv: ffi_kv(m.kv),
        }
    }
}

/// The model's special tokens: the plain form of [`SpecialTokens`]. The default has
/// none and adds nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SpecialTokenIds {
    /// Beginning of sequence.
    pub bos: Option<u32>,
    /// End of sequence.
    pub eos: Option<u32>,
    /// End of turn, for chat models that have one distinct from eos.
    pub eot: Option<u32>,
    /// Every token that ends generation (eos, eot and any others).
    pub eog: Vec<u32>,
    /// Whether tokenize with `add_special` prepends bos.
    pub add_bos: bool,
    /// Whether tokenize with `add_special` appends eos.
    pub add_eos: bool,
}

impl From<SpecialTokens> for SpecialTokenIds {
    fn from(s: SpecialTokens) -> Self {
        SpecialTokenIds {
            bos: s.bos.into_option(),
            eos: s.eos.into_option(),
            eot: s.eot.into_option(),
            eog: s.eog.into_vec(),
            add_bos: s.add_bos,
            add_eos: s.add_eos,
        }
    }
}

impl From<&SpecialTokens> for SpecialTokenIds {
    fn from(s: &SpecialTokens) -> Self {
        SpecialTokenIds::from(s.clone())
    }
}

impl From<SpecialTokenIds> for SpecialTokens {
    fn from(s: SpecialTokenIds) -> Self {
        SpecialTokens {
            bos: s.bos.into(),
            eos: s.eos.into(),
            eot: s.eot.into(),
            eog: s.eog.into(),
            add_bos: s.add_bos,
            add_eos: s.add_eos,
        }
    }
}

/// A device a backend can compute on: the plain form of [`DeviceInfo`]. The default is
/// CPU 0 with no name and unknown memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Index the backend uses for it (e.g. for `main_gpu`).
    pub index: u32,
    /// Human-readable name, e.g. `NVIDIA H100 80GB HBM3` or `llvmpipe (LLVM 15.0.6, 256 bits)`.
    pub name: String,
    /// CPU, GPU or other accelerator.
    pub kind: DeviceKind,
    /// Total memory in bytes (0 when unknown).
    pub memory_total: u64,
    /// Free memory in bytes (0 when unknown).
    pub memory_free: u64,
}

impl Default for Device {
    fn default() -> Self {
        Device {
            index: 0,
            name: String::new(),
            kind: DeviceKind::Cpu,
            memory_total: 0,
            memory_free: 0,
        }
    }
}

impl From<DeviceInfo> for Device {
    fn from(d: DeviceInfo) -> Self {
        Device {
            index: d.index,
            name: d.name.into_string(),
            kind: d.kind,
            memory_total: d.memory_total,
            memory_free: d.memory_free,
        }
    }
}

impl From<&DeviceInfo> for Device {
    fn from(d: &DeviceInfo) -> Self {
        Device::from(d.clone())
    }
}

impl From<Device> for DeviceInfo {
    fn from(d: Device) -> Self {
        DeviceInfo {
            index: d.index,
            name: d.name.into(),
            kind: d.kind,
            memory_total: d.memory_total,
            memory_free: d.memory_free,
        }
    }
}

/// How to load a model: the plain form of [`LoadOptions`]. Fields an engine does not use
/// are ignored by it. The default offloads every layer, maps the file, locks nothing
/// and lets the engine choose its threads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadSettings {
    /// Layers to offload to the GPU: `-1` all, `0` none.
    pub n_gpu_layers: i32,
    /// Device index for the main GPU.
    pub main_gpu: i32,
    /// Map the file instead of reading it.
    pub use_mmap: bool,
    /// Lock the weights in memory.
    pub use_mlock: bool,
    /// Compute threads; `0` lets the engine choose.
    pub n_threads: u32,
    /// Engine-specific options as `key = value` pairs, for things this struct lacks.
    pub extra: Vec<(String, String)>,
}

impl LoadSettings {
    /// The value of the engine-specific option `key`, if given.
    pub fn extra(&self, key: &str) -> Option<&str> {
        lookup(&self.extra, key)
    }

    /// Every value of the engine-specific option `key`, in the order given (options such
    /// as [`crate::EXTRA_LORA_ADAPTER`] are repeated once per item).
    pub fn extra_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.extra.iter().filter(move |(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

impl Default for LoadSettings {
    fn default() -> Self {
        LoadSettings::from(LoadOptions::default())
    }
}

impl From<LoadOptions> for LoadSettings {
    fn from(o: LoadOptions) -> Self {
        LoadSettings {
            n_gpu_layers: o.n_gpu_layers,
            main_gpu: o.main_gpu,
            use_mmap: o.use_mmap,
            use_mlock: o.use_mlock,
            n_threads: o.n_threads,
            extra: plain_kv(o.extra),
        }
    }
}

impl From<&LoadOptions> for LoadSettings {
    fn from(o: &LoadOptions) -> Self {
        LoadSettings::from(o.clone())
    }
}

impl From<LoadSettings> for LoadOptions {
    fn from(s: LoadSettings) -> Self {
        LoadOptions {
            n_gpu_layers: s.n_gpu_layers,
            main_gpu: s.main_gpu,
            use_mmap: s.use_mmap,
            use_mlock: s.use_mlock,
            n_threads: s.n_threads,
            extra: ffi_kv(s.extra),
        }
    }
}

/// A model to load: its file (or directory), its format and how to load it. The plain
/// form of [`ModelSpec`]; what `Backend::load_model` receives.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoadRequest {
    /// Path of the model file (GGUF) or directory (ONNX).
    pub path: String,
    /// `gguf` or `onnx`: one of the formats the plugin's manifest lists.
    pub format: String,
    /// How to load it.
    pub settings: LoadSettings,
}

impl LoadRequest {
    /// A request for `path` in `format` with the default [`LoadSettings`].
    pub fn new(path: impl Into<String>, format: impl Into<String>) -> Self {
        LoadRequest { path: path.into(), format: format.into(), settings: LoadSettings::default() }
    }
}

impl From<ModelSpec> for LoadRequest {
    fn from(s: ModelSpec) -> Self {
        LoadRequest {
            path: s.path.into_string(),
            format: s.format.into_string(),
            settings: s.options.into(),
        }
    }
}

impl From<&ModelSpec> for LoadRequest {
    fn from(s: &ModelSpec) -> Self {
        LoadRequest::from(s.clone())
    }
}

impl From<LoadRequest> for ModelSpec {
    fn from(r: LoadRequest) -> Self {
        ModelSpec { path: r.path.into(), format: r.format.into(), options: r.settings.into() }
    }
}

/// What a plugin's init function receives: its options and the host's version. The
/// plain form of [`HostServices`] without the log sink, which
/// [`crate::export_plugin!`] has already installed as the plugin's `log` logger (so
/// `log::info!` and friends reach the host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitContext {
    options_json: String,
    host_version: String,
    max_log_level: LogLevel,
}

impl Default for InitContext {
    /// No options (`{}`), an unknown host version, and `Info` as the most verbose level.
    fn default() -> Self {
        InitContext::new("{}", "")
    }
}

impl InitContext {
    /// An init context with `options_json` (a JSON object; empty text counts as `{}`) and
    /// `host_version`, at log level `Info`. For tests and tools that initialise a backend
    /// without a host.
    pub fn new(options_json: impl Into<String>, host_version: impl Into<String>) -> Self {
        InitContext {
            options_json: options_json.into(),
            host_version: host_version.into(),
            max_log_level: LogLevel::Info,
        }
    }

    /// The same context with another most verbose log level.
    pub fn with_max_log_level(mut self, level: LogLevel) -> Self {
        self.max_log_level = level;
        self
    }

    /// Deserialises the plugin's options: the manifest's `[options]` table overridden by
    /// the host config's `[backends.NAME]` table. With `#[serde(default)]` on `T`, an
    /// empty table gives `T::default()`; whether unknown keys are an error is the
    /// plugin's call (`#[serde(deny_unknown_fields)]`). A mismatch is
    /// [`ErrorKind::InvalidInput`], which the host reports as a failed init.
    pub fn options<T: serde::de::DeserializeOwned>(&self) -> Result<T, BackendError> {
        parse_options(&self.options_json)
    }

    /// The options as the JSON text the host sent.
    pub fn options_json(&self) -> &str {
        &self.options_json
    }

    /// The host's version, for messages.
    pub fn host_version(&self) -> &str {
        &self.host_version
    }

    /// The most verbose level the host will show (the `log` crate's max level is already
    /// set to it).
    pub fn max_log_level(&self) -> LogLevel {
        self.max_log_level
    }

    /// The FFI struct the host passes to a plugin's init, with `log` as the sink of the
    /// plugin's log records.
    pub fn into_host_services(self, log: LogSinkBox) -> HostServices {
        HostServices {
            log,
            options_json: self.options_json.into(),
            host_version: self.host_version.into(),
            max_log_level: self.max_log_level,
        }
    }
}

impl From<&HostServices> for InitContext {
    fn from(s: &HostServices) -> Self {
        InitContext {
            options_json: s.options_json.to_string(),
            host_version: s.host_version.to_string(),
            max_log_level: s.max_log_level,
        }
    }
}

impl From<HostServices> for InitContext {
    fn from(s: HostServices) -> Self {
        InitContext::from(&s)
    }
}

/// Options JSON to `T`; empty text is `{}`.
pub(crate) fn parse_options<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, BackendError> {
    let text = if json.trim().is_empty() { "{}" } else { json };
    serde_json::from_str(text)
        .map_err(|e| BackendError::invalid(format!("invalid backend options: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_info_round_trips() {
        let info = ModelInfo {
            architecture: "llama".into(),
            name: "tiny".into(),
            parameter_count: 7,
            context_length: 2048,
            embedding_length: 64,
            block_count: 2,
            quantization: "Q4_0".into(),
            size_bytes: 1234,
            kv: vec![("general.architecture".into(), "llama".into())],
        };
        let ffi = ModelMetadata::from(info.clone());
        assert_eq!(ffi.get("general.architecture"), Some("llama"));
        assert_eq!(ModelInfo::from(&ffi), info);
        assert_eq!(ModelInfo::from(ffi).get("general.architecture"), Some("llama"));
        assert_eq!(info.get("missing"), None);
    }

    #[test]
    fn special_tokens_round_trip() {
        let s = SpecialTokenIds {
            bos: Some(1),
            eos: Some(2),
            eot: None,
            eog: vec![2, 7],
            add_bos: true,
            add_eos: false,
        };
        let ffi = SpecialTokens::from(s.clone());
        assert_eq!(ffi.bos, abi_stable::std_types::ROption::RSome(1));
        assert_eq!(ffi.eot, abi_stable::std_types::ROption::RNone);
        assert_eq!(SpecialTokenIds::from(ffi), s);
        assert_eq!(SpecialTokenIds::from(SpecialTokens::default()), SpecialTokenIds::default());
    }

    #[test]
    fn device_and_load_request_round_trip() {
        let d = Device { index: 1, name: "gpu".into(), kind: DeviceKind::Gpu, ..Device::default() };
        assert_eq!(Device::from(DeviceInfo::from(d.clone())), d);

        let mut r = LoadRequest::new("/m.gguf", "gguf");
        assert_eq!(r.settings, LoadSettings::from(LoadOptions::default()));
        r.settings.extra.push(("k".into(), "v".into()));
        let spec = ModelSpec::from(r.clone());
        assert_eq!(spec.options.extra.len(), 1);
        assert_eq!(LoadRequest::from(&spec), r);
        assert_eq!(r.settings.extra("k"), Some("v"));
    }

    #[test]
    fn init_context_parses_options() {
        #[derive(serde::Deserialize, Default, Debug, PartialEq)]
        #[serde(default)]
        struct Opts {
            n: u32,
        }
        assert_eq!(InitContext::new("", "1").options::<Opts>().unwrap(), Opts::default());
        assert_eq!(InitContext::new(r#"{"n": 3}"#, "1").options::<Opts>().unwrap().n, 3);
        let e = InitContext::new(r#"{"n": "x"}"#, "1").options::<Opts>().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.message().contains("invalid backend options"), "{e}");
        assert_eq!(InitContext::new("{}", "0.3.0").host_version(), "0.3.0");
    }
}
