//! corral-registry: model names, the local model store, the Modelfile, and the OCI
//! registry client (pull and push).
//!
//! This is the only crate that knows the store's layout and the OCI distribution
//! protocol. The host's CLI (`corral create/list/show/cp/rm/pull/push`) and HTTP API
//! (`/api/pull`, `/api/push`, `/api/create`, `/api/tags`, `/api/show`, `/api/copy`,
//! `/api/delete`) call into it.
//!
//! - [`name`]: [`ModelName`], Ollama's `[host/][namespace/]model[:tag][@digest]`.
//! - [`digest`]: [`Digest`], `sha256:` + 64 hex, validated before it is ever a path.
//! - [`manifest`]: Docker v2 manifests and Ollama's media types.
//! - [`store`]: [`Store`], Ollama's on-disk layout with atomic, verified writes.
//! - [`modelfile`]: the Modelfile parser, [`modelfile::create`] and
//!   [`modelfile::to_modelfile`].
//! - [`oci`]: [`oci::Client`], pull and push over the OCI distribution protocol.
//!
//! The store is synchronous (local file-system work; call it from `spawn_blocking` in
//! async code); everything that talks to the network is async (tokio + reqwest).

pub mod digest;
pub mod error;
pub mod manifest;
pub mod modelfile;
pub mod name;
pub mod oci;
pub mod store;

pub use digest::Digest;
pub use error::{Error, Result};
pub use manifest::{Layer, Manifest};
pub use name::ModelName;
pub use store::{ResolvedModel, Store, StoreOptions};
