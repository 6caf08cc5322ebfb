//! FFI-safe data types shared by host and plugins.
//!
//! The structs that hold abi_stable containers (`RString`, `RVec`, `ROption`, `Tuple2`:
//! [`ModelMetadata`], [`SpecialTokens`], [`DeviceInfo`], [`ModelSpec`], [`LoadOptions`])
//! cross the boundary but never reach plugin code: authors use their plain counterparts
//! in [`crate::plain`], and the host converts with the same `From` impls. The rest
//! ([`ContextParams`], [`BatchEntry`], [`ErrorKind`], [`BackendError`],
//! [`Capabilities`], [`LogLevel`], [`DeviceKind`]) are used as they are on both sides.

use abi_stable::{
    StableAbi,
    std_types::{ROption, RString, RVec, Tuple2},
};

/// What kind of failure a [`BackendError`] reports. The host maps kinds to exit codes and
/// HTTP statuses (`InvalidInput` → 400, `NotFound` → 404, `OutOfMemory` → 507, ...).
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The caller passed something the engine cannot accept (a token id out of range, a
    /// position that is not allowed, a malformed option).
    InvalidInput,
    /// A file or resource named by the caller does not exist.
    NotFound,
    /// The engine could not allocate host or device memory.
    OutOfMemory,
    /// The request is valid but this engine does not implement it (an architecture, a
    /// quantization, embeddings, ...).
    Unsupported,
    /// The KV cache has no room left for the batch.
    ContextFull,
    /// A bug or unexpected state inside the engine.
    Internal,
    /// The plugin panicked. The object that panicked should be dropped, not used again.
    Panic,
}

impl ErrorKind {
    /// A short lowercase name, as used in messages and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::NotFound => "not found",
            ErrorKind::OutOfMemory => "out of memory",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::ContextFull => "context full",
            ErrorKind::Internal => "internal error",
            ErrorKind::Panic => "plugin panicked",
        }
    }
}

/// The error value every fallible plugin call returns: a kind and a message meant for a
/// person.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct BackendError {
    /// What went wrong, coarsely.
    pub kind: ErrorKind,
    /// What went wrong, for a person: say what was wrong and, where possible, what to do.
    pub message: RString,
}

impl BackendError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        BackendError { kind, message: RString::from(message.into()) }
    }
    /// Shorthand for [`ErrorKind::InvalidInput`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }
    /// Shorthand for [`ErrorKind::Unsupported`].
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }
    /// Shorthand for [`ErrorKind::Internal`].
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
    /// Shorthand for [`ErrorKind::NotFound`].
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    /// What went wrong, coarsely.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    /// The message for a person, as plain text.
    pub fn message(&self) -> &str {
        self.message.as_str()
    }
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

impl std::error::Error for BackendError {}

/// The result type of every fallible call across the plugin boundary.
pub type BackendResult<T> = abi_stable::std_types::RResult<T, BackendError>;

/// Identity of a plugin, as its library reports it.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    /// Backend name, e.g. `llama-cpp`. Must equal the manifest's `name`.
    pub name: RString,
    /// Build variant, e.g. `cpu`, `vulkan`, `cuda12`. Must equal the manifest's `variant`.
    pub variant: RString,
    /// The plugin's own version (its crate version, say).
    pub version: RString,
    /// The ABI major version the plugin was built against ([`crate::ABI_MAJOR`]).
    pub abi_major: u32,
    /// The ABI minor version the plugin was built against ([`crate::ABI_MINOR`]).
    pub abi_minor: u32,
}

/// Severity of a log record sent from a plugin to the host.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Something failed.
    Error,
    /// Something looks wrong.
    Warn,
    /// Normal operation worth telling.
    Info,
    /// Detail for developers.
    Debug,
    /// Very verbose detail.
    Trace,
}

/// What a compute device is.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// The host CPU.
    Cpu,
    /// A discrete or integrated GPU.
    Gpu,
    /// An accelerator that is not a GPU (NPU, ...).
    Accelerator,
}

/// A device a backend can compute on.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Index the backend uses for it (e.g. for `main_gpu`).
    pub index: u32,
    /// Human-readable name, e.g. `NVIDIA H100 80GB HBM3` or `llvmpipe (LLVM 15.0.6, 256 bits)`.
    pub name: RString,
    /// CPU, GPU or other accelerator.
    pub kind: DeviceKind,
    /// Total memory in bytes (0 when unknown).
    pub memory_total: u64,
    /// Free memory in bytes (0 when unknown).
    pub memory_free: u64,
}

/// How to load a model. Fields that an engine does not use are ignored by it.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct LoadOptions {
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
    pub extra: RVec<Tuple2<RString, RString>>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            n_gpu_layers: -1,
            main_gpu: 0,
            use_mmap: true,
            use_mlock: false,
            n_threads: 0,
            extra: RVec::new(),
        }
    }
}

/// A model to load: its file (or directory), its format and how to load it.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// Path of the model file (GGUF) or directory (ONNX).
    pub path: RString,
    /// `gguf` or `onnx`: one of the formats the plugin's manifest lists.
    pub format: RString,
    /// Load options.
    pub options: LoadOptions,
}

/// The engine-specific load option (`LoadOptions::extra`) naming the KV cache's element
/// type: `f16` (the default), `q8_0` or `q4_0`. Engines that declare
/// [`Capabilities::KV_CACHE_TYPES`] honour it.
pub const EXTRA_KV_CACHE_TYPE: &str = "kv_cache_type";
/// The engine-specific load option turning flash attention `on`, `off` or `auto` (the
/// engine decides). Engines that declare [`Capabilities::FLASH_ATTENTION`] honour it.
pub const EXTRA_FLASH_ATTENTION: &str = "flash_attention";
/// The engine-specific load option naming remote workers whose devices the model may
/// use beside the local ones: `host:port` endpoints separated by commas (llama.cpp: ggml
/// RPC servers, which `corral worker` runs). Engines that declare
/// [`Capabilities::REMOTE_DEVICES`] honour it.
pub const EXTRA_RPC: &str = "rpc";
/// What an engine writes in its abort message when a remote worker it computed on was
/// lost (the engine process ends): the host tries the request that met it once more,
/// on the model loaded again without that worker, when no output was sent yet.
pub const RPC_WORKER_LOST: &str = "an RPC worker was lost";
/// The engine-specific load option that overrides how a model's layers are split over
/// its devices: one non-negative proportion per device, comma-separated, in the order
/// the engine documents (llama.cpp: the local devices, then each worker's).
pub const EXTRA_TENSOR_SPLIT: &str = "tensor_split";
/// The option of [`crate::plugin::Backend::lend_devices`] naming a directory where the
/// engine may cache what peers send it (llama.cpp: tensors by hash, so a reload of the
/// same model sends hashes instead of weights).
pub const EXTRA_CACHE_DIR: &str = "cache_dir";
/// The engine-specific load option naming a LoRA adapter (a GGUF file of `lora_a` /
/// `lora_b` pairs, as Ollama's Modelfile `ADAPTER` and llama.cpp's `--lora` take) to apply
/// at scale 1 to every context of the model; repeated once per adapter
/// ([`crate::LoadSettings::extra_all`]). Engines that declare
/// [`Capabilities::LORA_ADAPTERS`] honour it; the host refuses a model with adapters on
/// any other.
pub const EXTRA_LORA_ADAPTER: &str = "lora_adapter";
/// The metadata key (`ModelInfo::kv`) under which an engine says where a model's layers
/// are: a JSON array of objects `{name, kind, endpoint, memory_total, memory_free,
/// layers: [first, last], n_layers, output}` (`endpoint` empty for a local device), one
/// per device that holds layers. The host shows it in `/api/ps` and `corral run`'s
/// verbose output.
pub const META_PLACEMENT: &str = "corral.placement";

/// Parameters of a context: the KV cache and the batch it decodes.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct ContextParams {
    /// KV cache size in tokens, shared by all sequences (each may use up to this many).
    pub n_ctx: u32,
    /// Largest batch `decode` accepts, in entries.
    pub n_batch: u32,
    /// Number of distinct sequence ids (`0..n_seq_max`) the context accepts.
    pub n_seq_max: u32,
    /// Threads for single-token decoding; `0` lets the engine choose.
    pub n_threads: u32,
    /// Threads for prompt batches; `0` lets the engine choose.
    pub n_threads_batch: u32,
    /// Compute pooled sequence embeddings (mean pooling) instead of logits.
    pub embeddings: bool,
    /// Random seed for anything in the engine that draws (most engines draw nothing).
    pub seed: u64,
}

impl Default for ContextParams {
    fn default() -> Self {
        ContextParams {
            n_ctx: 2048,
            n_batch: 512,
            n_seq_max: 1,
            n_threads: 0,
            n_threads_batch: 0,
            embeddings: false,
            seed: 0,
        }
    }
}

/// One entry of a batch: a token at a position of a sequence.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchEntry {
    /// Token id, `< vocab_size`.
    pub token: u32,
    /// Position of the token in its sequence, `< n_ctx`.
    pub pos: u32,
    /// Sequence id, `< n_seq_max`.
    pub seq: u32,
    /// Whether the caller will read the logits of this entry after `decode`.
    pub logits: bool,
}

/// What the host needs to know about a model, plus its raw metadata.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct ModelMetadata {
    /// Architecture, e.g. `llama`, `qwen2`, `bert`.
    pub architecture: RString,
    /// The model's own name, if it carries one.
    pub name: RString,
    /// Number of parameters.
    pub parameter_count: u64,
    /// Context length the model was trained for.
    pub context_length: u32,
    /// Width of the hidden state (the embedding length).
    pub embedding_length: u32,
    /// Layers.
    pub block_count: u32,
    /// Predominant quantization, e.g. `Q4_0`, `F16`.
    pub quantization: RString,
    /// Size of the weights in bytes.
    pub size_bytes: u64,
    /// Raw key/values as the file carries them (GGUF metadata, ONNX config), values
    /// rendered as text. Long arrays are summarised.
    pub kv: RVec<Tuple2<RString, RString>>,
}

impl ModelMetadata {
    /// The raw value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.kv.iter().find(|t| t.0.as_str() == key).map(|t| t.1.as_str())
    }
}

/// The model's special tokens.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq, Default)]
pub struct SpecialTokens {
    /// Beginning of sequence.
    pub bos: ROption<u32>,
    /// End of sequence.
    pub eos: ROption<u32>,
    /// End of turn, for chat models that have one distinct from eos.
    pub eot: ROption<u32>,
    /// Every token that ends generation (eos, eot and any others).
    pub eog: RVec<u32>,
    /// Whether tokenize with `add_special` prepends bos.
    pub add_bos: bool,
    /// Whether tokenize with `add_special` appends eos.
    pub add_eos: bool,
}

/// What a model can do, as its engine declares it (ABI 1.2: `Model::capabilities`).
///
/// A set of flags over a `u64`, so that the host can say "this model cannot embed" or
/// "this engine cannot shift its context" before it tries. Later ABI minors may append
/// flags (new bits, never a reused one); a host ignores the bits it does not know, and
/// [`Capabilities::names`] lists the known ones only. A plugin built before ABI 1.2 has
/// no `capabilities` call at all; the host checks the plugin's minor first.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Capabilities {
    bits: u64,
}

impl Capabilities {
    /// Next-token decoding: contexts made with `embeddings: false` give logits for the
    /// batch entries that ask for them, so the model can generate text.
    pub const GENERATION: Capabilities = Capabilities { bits: 1 << 0 };
    /// Pooled embeddings: contexts made with `embeddings: true` answer
    /// `embeddings(seq)` with one vector per sequence.
    pub const EMBEDDINGS: Capabilities = Capabilities { bits: 1 << 1 };
    /// Context shift: `kv_shift` moves positions of a sequence (re-encoding what depends
    /// on them) instead of answering [`ErrorKind::Unsupported`].
    pub const CONTEXT_SHIFT: Capabilities = Capabilities { bits: 1 << 2 };
    /// `new_context_per_sequence` gives a real per-sequence KV split (each sequence
    /// attends over its own cells), rather than falling back to a shared context.
    pub const PER_SEQUENCE_CONTEXT: Capabilities = Capabilities { bits: 1 << 3 };
    /// The model's contexts keep their KV cache in the type the load's
    /// [`EXTRA_KV_CACHE_TYPE`] names (`f16`, `q8_0`, `q4_0`); without this flag the host
    /// refuses any type but the default. (A bit added within 1.2: the layout is unchanged.)
    pub const KV_CACHE_TYPES: Capabilities = Capabilities { bits: 1 << 4 };
    /// The model's contexts follow the load's [`EXTRA_FLASH_ATTENTION`] (`on`, `off`,
    /// `auto`); without this flag the host refuses `on`. (A bit added within 1.2.)
    pub const FLASH_ATTENTION: Capabilities = Capabilities { bits: 1 << 5 };
    /// The model was loaded over the remote workers the load's [`EXTRA_RPC`] named (those
    /// that answered), as well as the local devices; its metadata says where each layer
    /// went under [`META_PLACEMENT`]. Without this flag the host warns that the workers
    /// were not used. (A bit of 1.3: the layout is unchanged.)
    pub const REMOTE_DEVICES: Capabilities = Capabilities { bits: 1 << 6 };
    /// Every context of the model applies the LoRA adapters the load's
    /// [`EXTRA_LORA_ADAPTER`] options named. Without this flag the host refuses a model
    /// that has adapters rather than run it without them. (A bit added within 1.3: the
    /// layout is unchanged.)
    pub const LORA_ADAPTERS: Capabilities = Capabilities { bits: 1 << 7 };

    /// Every flag this version of the crate knows, with its name for messages.
    const NAMED: [(Capabilities, &'static str); 8] = [
        (Capabilities::GENERATION, "generation"),
        (Capabilities::EMBEDDINGS, "embeddings"),
        (Capabilities::CONTEXT_SHIFT, "context-shift"),
        (Capabilities::PER_SEQUENCE_CONTEXT, "per-sequence-context"),
        (Capabilities::KV_CACHE_TYPES, "kv-cache-types"),
        (Capabilities::FLASH_ATTENTION, "flash-attention"),
        (Capabilities::REMOTE_DEVICES, "remote-devices"),
        (Capabilities::LORA_ADAPTERS, "lora-adapters"),
    ];

    /// No capability at all (what a panicking `capabilities` call gives).
    pub const fn empty() -> Capabilities {
        Capabilities { bits: 0 }
    }

    /// The set with exactly these bits, unknown ones included (they are kept, and
    /// ignored by [`Capabilities::names`]).
    pub const fn from_bits(bits: u64) -> Capabilities {
        Capabilities { bits }
    }

    /// The raw bits.
    pub const fn bits(self) -> u64 {
        self.bits
    }

    /// Whether no flag is set.
    pub const fn is_empty(self) -> bool {
        self.bits == 0
    }

    /// Whether every flag of `other` is set in `self` (true for an empty `other`).
    pub const fn contains(self, other: Capabilities) -> bool {
        self.bits & other.bits == other.bits
    }

    /// The flags of both sets; the same as `self | other`.
    pub const fn union(self, other: Capabilities) -> Capabilities {
        Capabilities { bits: self.bits | other.bits }
    }

    /// The flags set in both.
    pub const fn intersection(self, other: Capabilities) -> Capabilities {
        Capabilities { bits: self.bits & other.bits }
    }

    /// The names of the known flags that are set, in bit order, for messages:
    /// `["generation", "context-shift"]`.
    pub fn names(self) -> Vec<&'static str> {
        Self::NAMED.iter().filter(|(c, _)| self.contains(*c)).map(|(_, n)| *n).collect()
    }
}

impl std::ops::BitOr for Capabilities {
    type Output = Capabilities;
    fn bitor(self, rhs: Capabilities) -> Capabilities {
        self.union(rhs)
    }
}

impl std::ops::BitOrAssign for Capabilities {
    fn bitor_assign(&mut self, rhs: Capabilities) {
        *self = self.union(rhs);
    }
}

impl std::fmt::Debug for Capabilities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Capabilities({:#x}: {})", self.bits, self)
    }
}

/// The known names joined with `, `, or `none`.
impl std::fmt::Display for Capabilities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = self.names();
        if names.is_empty() { f.write_str("none") } else { f.write_str(&names.join(", ")) }
    }
}
