//! OCI manifests, as a registry sends them (`pull`) and as the store reads them back, and
//! the config blob and layer descriptions inside them.

use std::sync::OnceLock;

use corral_registry::Manifest;
use corral_registry::manifest::{Layer, MEDIA_TYPE_MODEL, MEDIA_TYPE_TEMPLATE, ModelConfig};
use corral_registry::store::{Store, StoreOptions};

fn store() -> &'static Store {
    static STORE: OnceLock<Store> = OnceLock::new();
    STORE.get_or_init(|| {
        Store::open(std::env::temp_dir(), StoreOptions { read_only: true })
            .unwrap_or_else(|e| panic!("opening a read-only store at the temp dir: {e}"))
    })
}

/// Parses `data` as a manifest, a config blob and a layer; a manifest that parses must
/// survive its own JSON, and each of its blobs must map to a file in the store's blobs.
pub fn oci_manifest(data: &[u8]) {
    if let Ok(m) = serde_json::from_slice::<Manifest>(data) {
        let _ = m.total_size();
        let _ = (m.layer(MEDIA_TYPE_MODEL), m.layer(MEDIA_TYPE_TEMPLATE));
        let blobs = store().root().join("blobs");
        for l in m.blobs() {
            let path = store().blob_path(&l.digest);
            assert_eq!(path.parent(), Some(blobs.as_path()), "blob path {path:?}");
        }
        let json = m.to_json();
        let again: Manifest = serde_json::from_slice(&json).unwrap_or_else(|e| {
            panic!("a manifest's own JSON does not parse: {e}: {}", String::from_utf8_lossy(&json))
        });
        assert_eq!(again, m, "a manifest changes through its own JSON");
    }
    if let Ok(c) = serde_json::from_slice::<ModelConfig>(data) {
        let json = serde_json::to_vec(&c).unwrap_or_else(|e| panic!("config to JSON: {e}"));
        let again: ModelConfig = serde_json::from_slice(&json)
            .unwrap_or_else(|e| panic!("a config's own JSON does not parse: {e}"));
        assert_eq!(again, c, "a config changes through its own JSON");
    }
    let _ = serde_json::from_slice::<Layer>(data);
}
