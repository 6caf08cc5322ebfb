//! `corral-gguf`: everything corral needs to read and make GGUF model files.
//!
//! No model weights can be downloaded on the machines corral is tested on, so the
//! project generates its own: GGUF files with random weights, a real vocabulary (byte-level
//! BPE or SentencePiece) learned from an embedded English corpus, and every key llama.cpp
//! needs to load them, in the architectures and quantizations real files have.
//!
//! - [`reader`]: a bounded GGUF v2/v3 parser ([`reader::GgufFile`]) that reads the
//!   header, metadata and tensor infos (never the tensor data) and summarises a model.
//! - [`writer`]: a streaming GGUF v3 writer that takes tensor data one tensor (or one
//!   chunk) at a time, so a 1B-parameter model never sits in memory whole.
//! - [`quant`]: f32 to F16, Q8_0, Q4_0, Q5_0, Q5_1 and the K types Q4_K, Q5_K, Q6_K,
//!   byte-identical to ggml's reference quantizers, and back.
//! - [`bpe`]: a GPT-2 style byte-level BPE vocabulary trained on an embedded corpus,
//!   with a reference encoder and decoder.
//! - [`spm`]: a SentencePiece vocabulary trained on the same corpus (Gemma, Phi-3), with
//!   llama.cpp's SPM tokenizer as reference.
//! - [`pooling`]: how a file's sequence embeddings pool ([`pooling::Pooling`]), one
//!   reading of `{arch}.pooling_type` for every engine.
//! - [`generate`]: the model generator ([`generate::generate_model`]): llama, Llama 3.1,
//!   qwen2, qwen3, gemma2, gemma3 and phi3 files, up to llama.cpp's Q4_K_M mix.
//!
//! Shared types live in [`types`] ([`types::GgmlType`], [`types::Value`]) and errors
//! in [`error`] ([`GgufError`]).

pub mod bpe;
mod corpus;
pub mod error;
pub mod generate;
pub mod kquant;
pub mod pooling;
pub mod quant;
pub mod reader;
pub mod special;
pub mod spm;
pub mod test_texts;
pub mod types;
pub mod writer;

pub use error::GgufError;
pub use types::{GgmlType, Value, ValueType};
