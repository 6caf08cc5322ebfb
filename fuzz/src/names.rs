//! Model names and digests, which arrive in every request and manifest and become paths
//! in the store: whatever parses must map to a path inside it, and read back the same.

use std::path::{Component, Path};
use std::sync::OnceLock;

use corral_registry::store::{Store, StoreOptions};
use corral_registry::{Digest, ModelName};

/// A read-only store (nothing is written) at the temp dir, for its path functions.
fn store() -> &'static Store {
    static STORE: OnceLock<Store> = OnceLock::new();
    STORE.get_or_init(|| {
        Store::open(std::env::temp_dir(), StoreOptions { read_only: true })
            .unwrap_or_else(|e| panic!("opening a read-only store at the temp dir: {e}"))
    })
}

/// Parses `data` as a model name, a digest and a blob file name, and (split on newlines)
/// as the four parts of a name.
pub fn names_digests(data: &[u8]) {
    let s = crate::text(data);
    if let Ok(name) = ModelName::parse(&s) {
        check_name(&name);
        if let Ok(other) = name.with_tag(name.model()) {
            check_name(&other);
        }
    }
    if let Ok(d) = Digest::parse(&s) {
        assert_eq!(d.to_string(), s, "a digest does not print as it was written");
        check_digest(&d);
    }
    if let Ok(d) = Digest::from_blob_file_name(&s) {
        assert_eq!(d.blob_file_name(), s, "a blob file name does not print as it was written");
        check_digest(&d);
    }
    let parts: Vec<&str> = s.splitn(4, '\n').collect();
    if let [host, namespace, model, tag] = parts[..]
        && let Ok(name) = ModelName::from_parts(host, namespace, model, tag)
    {
        check_name(&name);
    }
}

fn check_name(name: &ModelName) {
    let rel = name.manifest_rel_path();
    let parts: Vec<Component<'_>> = rel.components().collect();
    assert_eq!(parts.len(), 5, "{name:?}: manifest path {rel:?} is not 5 parts");
    assert!(
        parts.iter().all(|c| matches!(c, Component::Normal(_))),
        "{name:?}: manifest path {rel:?} has a part that is not a plain name"
    );
    let s = store();
    let path = s.manifest_path(name);
    assert_inside(&path, &s.root().join("manifests"), name);
    for part in [name.host(), name.namespace(), name.model(), name.tag()] {
        assert!(
            !part.is_empty() && !part.contains(['/', '\\', '\0']) && part != "." && part != "..",
            "{name:?}: part {part:?}"
        );
    }
    // The printed forms parse back to the same name.
    let fq = name.fully_qualified();
    let again = ModelName::parse(&fq).unwrap_or_else(|e| panic!("{fq:?} does not parse: {e}"));
    assert_eq!(&again, name, "the fully qualified form {fq:?} parses to another name");
    let short = name.to_string();
    let again =
        ModelName::parse(&short).unwrap_or_else(|e| panic!("{short:?} does not parse: {e}"));
    assert_eq!(&again, name, "the short form {short:?} parses to another name");
    assert!(again.eq_ignore_case(name));
    let _ = name.repository();
    if let Some(d) = name.digest() {
        check_digest(d);
    }
    let _ = name.without_digest();
}

fn check_digest(d: &Digest) {
    let s = store();
    let path = s.blob_path(d);
    let blobs = s.root().join("blobs");
    assert_eq!(path.parent(), Some(blobs.as_path()), "{d:?}: blob path {path:?}");
    assert_eq!(
        path.file_name().and_then(|f| f.to_str()),
        Some(d.blob_file_name().as_str()),
        "{d:?}: blob path {path:?}"
    );
    assert!(!d.blob_file_name().contains(['/', '\\', '\0']));
    assert_eq!(Digest::parse(&d.to_string()).ok(), Some(*d), "{d:?} does not read back");
    assert_eq!(Digest::from_blob_file_name(&d.blob_file_name()).ok(), Some(*d));
    assert_eq!(d.hex().len(), 64);
}

/// `path` is `base` plus plain names only (no `..`, no root, no prefix).
fn assert_inside(path: &Path, base: &Path, name: &ModelName) {
    let rest = path
        .strip_prefix(base)
        .unwrap_or_else(|_| panic!("{name:?}: {path:?} is not under {base:?}"));
    assert!(
        rest.components().all(|c| matches!(c, Component::Normal(_))),
        "{name:?}: {path:?} leaves {base:?}"
    );
}
