//! The one mapping from an error to what the user sees: the CLI's exit code and the
//! HTTP API's status. Every error type of the host and its libraries is classified
//! here, once; `main` and the server's `ApiError` both ask [`ErrorClass::of`].
//!
//! | class | exit code | HTTP |
//! | --- | --- | --- |
//! | bad input (options, names, config, templates, unsupported requests) | 2 | 400 |
//! | forbidden (a read-only store) | 2 | 403 |
//! | not found (model, file, registry model) | 3 | 404 |
//! | busy (queue full, every model in use) | 1 | 503 |
//! | out of memory (the engine could not allocate) | 1 | 507 |
//! | anything else | 1 | 500 |

use corral_backend_api::{BackendError, ErrorKind};

/// What kind of failure an error is, for exit codes and HTTP statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Input the user can fix.
    BadInput,
    /// Not allowed (a read-only store).
    Forbidden,
    /// A model, file or resource that does not exist.
    NotFound,
    /// The server is at capacity; retry later.
    Busy,
    /// The engine could not allocate memory.
    OutOfMemory,
    /// A failure at run time.
    Internal,
    /// Another server this one relies on (a registry) failed or could not be reached:
    /// HTTP 502, not the server's own fault.
    Upstream,
}

impl ErrorClass {
    /// The exit code of the CLI.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorClass::BadInput | ErrorClass::Forbidden => 2,
            ErrorClass::NotFound => 3,
            ErrorClass::Busy
            | ErrorClass::OutOfMemory
            | ErrorClass::Internal
            | ErrorClass::Upstream => 1,
        }
    }

    /// The HTTP status of the API.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorClass::BadInput => 400,
            ErrorClass::Forbidden => 403,
            ErrorClass::NotFound => 404,
            ErrorClass::Busy => 503,
            ErrorClass::OutOfMemory => 507,
            ErrorClass::Internal => 500,
            ErrorClass::Upstream => 502,
        }
    }

    /// The class of an error raised while turning a request into a prompt (templates,
    /// tokenizing): an engine's error keeps its class (an engine that died is a 500, not
    /// the client's fault); anything else is the request's, bad input.
    pub fn of_request(e: &anyhow::Error) -> ErrorClass {
        e.chain()
            .find_map(|c| c.downcast_ref::<BackendError>())
            .map_or(ErrorClass::BadInput, |b| ErrorClass::of_backend(b.kind))
    }

    /// The class of a backend error kind.
    pub fn of_backend(kind: ErrorKind) -> ErrorClass {
        match kind {
            ErrorKind::InvalidInput | ErrorKind::Unsupported => ErrorClass::BadInput,
            ErrorKind::NotFound => ErrorClass::NotFound,
            ErrorKind::OutOfMemory => ErrorClass::OutOfMemory,
            ErrorKind::ContextFull | ErrorKind::Internal | ErrorKind::Panic => ErrorClass::Internal,
        }
    }

    /// The class of a failed backend choice: an unknown `--backend` is the user's; no
    /// plugin able to run here is the installation's.
    pub fn of_no_backend(n: &corral_plugin_host::NoBackend) -> ErrorClass {
        match n {
            corral_plugin_host::NoBackend::Choice(_) => ErrorClass::BadInput,
            corral_plugin_host::NoBackend::None(_) => ErrorClass::Internal,
        }
    }

    /// The class of a registry or store error.
    pub fn of_registry(e: &corral_registry::Error) -> ErrorClass {
        use corral_registry::Error as E;
        // By variant only, never by words in a message: a registry's 500 whose body says
        // "model not found" is a failing registry (502), its 404 is `RegistryModelNotFound`.
        match e {
            // `DigestMismatch` is content the user gave (an uploaded blob, a linked file);
            // wrong bytes from a registry are a `Registry` error.
            // `InvalidManifest`: a stored model that cannot be opened (no model layer,
            // parameters that are not JSON, ...): the request names an unusable model,
            // the same answer for `show`, a load and `push`, locally and over HTTP.
            E::InvalidName { .. }
            | E::InvalidDigest { .. }
            | E::DigestMismatch { .. }
            | E::InvalidManifest { .. }
            | E::Modelfile { .. } => ErrorClass::BadInput,
            E::ReadOnly(_) => ErrorClass::Forbidden,
            E::ModelNotFound(_) | E::RegistryModelNotFound { .. } => ErrorClass::NotFound,
            E::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                ErrorClass::NotFound
            }
            // The registry answered with an error, sent what it must not, or could not be
            // reached.
            E::Registry { .. } => ErrorClass::Upstream,
            _ => ErrorClass::Internal,
        }
    }

    /// The class of one error value, without looking at its sources; `None` when the
    /// type is not one this mapping knows.
    fn of_one(e: &(dyn std::error::Error + 'static)) -> Option<ErrorClass> {
        if let Some(b) = e.downcast_ref::<BackendError>() {
            return Some(ErrorClass::of_backend(b.kind));
        }
        if let Some(r) = e.downcast_ref::<corral_registry::Error>() {
            return Some(ErrorClass::of_registry(r));
        }
        if let Some(s) = e.downcast_ref::<crate::client::ServerError>() {
            return Some(match s.status {
                400 | 413 | 422 => ErrorClass::BadInput,
                401 | 403 => ErrorClass::Forbidden,
                404 => ErrorClass::NotFound,
                503 => ErrorClass::Busy,
                507 => ErrorClass::OutOfMemory,
                _ => ErrorClass::Internal,
            });
        }
        if let Some(m) = e.downcast_ref::<crate::models::ModelsError>() {
            return Some(m.class());
        }
        if let Some(n) = e.downcast_ref::<corral_plugin_host::NoBackend>() {
            return Some(ErrorClass::of_no_backend(n));
        }
        if let Some(m) = e.downcast_ref::<crate::runtime::ModelLoadError>() {
            return Some(m.class());
        }
        let bad_input = e.is::<corral_plugin_host::ChoiceError>()
            || e.is::<crate::config::ConfigError>()
            || e.is::<corral_generation::context::ContextError>()
            || e.is::<corral_generation::options::OptionsError>()
            || e.is::<corral_generation::template::TemplateError>()
            || e.is::<corral_generation::structured::SchemaError>();
        bad_input.then_some(ErrorClass::BadInput)
    }

    /// The class of `e`: the first error in its chain that this mapping knows, else
    /// [`ErrorClass::Internal`].
    pub fn of(e: &anyhow::Error) -> ErrorClass {
        e.chain().find_map(ErrorClass::of_one).unwrap_or(ErrorClass::Internal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_statuses() {
        let oom = anyhow::Error::from(BackendError::new(ErrorKind::OutOfMemory, "no memory"));
        assert_eq!(ErrorClass::of(&oom).http_status(), 507);
        assert_eq!(ErrorClass::of(&oom).exit_code(), 1);
        let bad = anyhow::Error::from(BackendError::invalid("token 99")).context("decoding");
        assert_eq!(ErrorClass::of(&bad).http_status(), 400);
        assert_eq!(ErrorClass::of(&bad).exit_code(), 2);
        let missing = anyhow::Error::from(corral_registry::Error::ModelNotFound("x".into()));
        assert_eq!(
            (ErrorClass::of(&missing).exit_code(), ErrorClass::of(&missing).http_status()),
            (3, 404)
        );
        assert_eq!(ErrorClass::of(&anyhow::anyhow!("boom")).http_status(), 500);
    }

    /// A registry's faults are upstream (502, exit 1) whatever its message says; its 404
    /// is "not found"; an unusable stored model is the request's (400).
    #[test]
    fn registry_errors_by_variant_not_by_words() {
        use corral_registry::Error as E;
        let class = |e: E| ErrorClass::of_registry(&e);
        let upstream = E::Registry {
            registry: "r".into(),
            model: "m".into(),
            message: "fetching the manifest: 500: {\"error\":\"model not found\"}".into(),
        };
        assert_eq!(class(upstream), ErrorClass::Upstream);
        let gone = E::RegistryModelNotFound { registry: "r".into(), model: "m".into() };
        assert_eq!(class(gone).http_status(), 404);
        let unusable = E::InvalidManifest { model: "m".into(), reason: "no model layer".into() };
        assert_eq!((class(unusable).http_status(), ErrorClass::BadInput.exit_code()), (400, 2));
    }
}
