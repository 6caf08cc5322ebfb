//! `corral-gguf`: everything corral needs to read and make GGUF model files.
//!
//! No model weights can be downloaded on the machines corral is tested on, so the
//! project generates its own: GGUF files with random weights, a real byte-level BPE
//! vocabulary learned from an embedded English corpus, and every key llama.cpp needs
//! to load them.
//!
//! - [`reader`]: a bounded GGUF v2/v3 parser ([`reader::GgufFile`]) that reads the
//!   header, metadata and tensor infos (never the tensor data) and summarises a model.
//! - [`writer`]: a streaming GGUF v3 writer that takes tensor data one tensor (or one
//!   chunk) at a time, so a 1B-parameter model never sits in memory whole.
//! - [`quant`]: f32 to F16, Q8_0 and Q4_0 in ggml's exact block layouts, and back.
//! - [`bpe`]: a GPT-2 style byte-level BPE vocabulary trained on an embedded corpus,
//!   with a reference encoder and decoder.
//! - [`generate`]: the llama-architecture model generator
//!   ([`generate::generate_llama`]).
//!
//! Shared types live in [`types`] ([`types::GgmlType`], [`types::Value`]) and errors
//! in [`error`] ([`GgufError`]).

pub mod bpe;
mod corpus;
pub mod error;
pub mod generate;
pub mod quant;
pub mod reader;
pub mod types;
pub mod writer;

pub use error::GgufError;
pub use types::{GgmlType, Value, ValueType};
