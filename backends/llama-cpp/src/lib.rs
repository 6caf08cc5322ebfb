//! # corral-backend-llama-cpp
//!
//! The corral backend plugin on [llama.cpp](https://github.com/ggml-org/llama.cpp), through
//! the `llama-cpp-sys-2` crate (llama.cpp linked statically into the plugin library).
//!
//! It implements the whole `corral-backend-api` contract: devices from ggml's backend
//! registry, model loading with GPU layer offload, llama.cpp's own tokenizer, contexts
//! that decode batches mixing several sequences, per-entry logits, pooled embeddings, and
//! the KV cache sequence operations of llama.cpp's `llama_memory_*` API.
//!
//! One crate, several builds ("variants"): the cargo features `cpu` (default), `vulkan`,
//! `cuda`, `rocm` and `metal` pick the GPU backend; for the CPU build, the x86-64 level
//! given through `RUSTFLAGS=-C target-cpu=...` picks the SIMD code llama.cpp is compiled
//! with (see `build-variant.sh` and the README). [`VARIANT`] names the build.
//!
//! The crate is also an rlib so tests (and the `llama-raw` reference binary's siblings)
//! can call the plugin's Rust types directly: [`LlamaBackend`], [`LlamaModel`],
//! [`LlamaContext`].

mod backend;
mod context;
mod gguf_check;
mod logging;
mod lora;
mod model;
mod rpc;
mod special_split;

pub use backend::{LlamaBackend, LlamaOptions};
pub use context::LlamaContext;
pub use gguf_check::{GgufSummary, check_gguf};
pub use model::LlamaModel;

/// The plugin's variant name, as its manifest must spell it. It follows the GPU feature,
/// and for CPU builds the x86-64 level the crate was compiled for; the build-time
/// environment variable `CORRAL_LLAMA_VARIANT` overrides it.
pub const VARIANT: &str = variant();

const fn variant() -> &'static str {
    // A packager may name the build explicitly (build-variant.sh does), e.g. `cuda11`.
    if let Some(v) = option_env!("CORRAL_LLAMA_VARIANT") {
        return v;
    }
    if cfg!(feature = "cuda") {
        "cuda12"
    } else if cfg!(feature = "rocm") {
        "rocm6"
    } else if cfg!(feature = "metal") {
        "metal"
    } else if cfg!(feature = "vulkan") {
        "vulkan"
    } else if cfg!(all(
        target_arch = "x86_64",
        target_feature = "avx512f",
        target_feature = "avx512bw",
        target_feature = "avx512vl",
        target_feature = "avx512dq",
        target_feature = "avx512vnni",
        target_feature = "avx512vbmi",
        target_feature = "avx2"
    )) {
        "cpu-x86-64-v4-vnni"
    } else if cfg!(all(
        target_arch = "x86_64",
        target_feature = "avx512f",
        target_feature = "avx512bw",
        target_feature = "avx512vl",
        target_feature = "avx512dq",
        target_feature = "avx2"
    )) {
        "cpu-x86-64-v4"
    } else if cfg!(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c",
        target_feature = "bmi2"
    )) {
        "cpu-x86-64-v3"
    } else {
        "cpu"
    }
}

corral_backend_api::export_plugin! {
    name: "llama-cpp",
    variant: VARIANT,
    version: env!("CARGO_PKG_VERSION"),
    init: LlamaBackend::init,
}
