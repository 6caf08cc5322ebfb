//! Docker v2 manifests with Ollama's media types.

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// Media type of the manifest itself (Docker image manifest v2, schema 2).
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// OCI image manifest, accepted when reading.
pub const MEDIA_TYPE_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of the config blob.
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// The model weights (a GGUF file).
pub const MEDIA_TYPE_MODEL: &str = "application/vnd.ollama.image.model";
/// A prompt template (Go template text).
pub const MEDIA_TYPE_TEMPLATE: &str = "application/vnd.ollama.image.template";
/// A default system prompt.
pub const MEDIA_TYPE_SYSTEM: &str = "application/vnd.ollama.image.system";
/// Default generation parameters (a JSON object).
pub const MEDIA_TYPE_PARAMS: &str = "application/vnd.ollama.image.params";
/// Example messages (a JSON array of `{role, content}`).
pub const MEDIA_TYPE_MESSAGES: &str = "application/vnd.ollama.image.messages";
/// License text.
pub const MEDIA_TYPE_LICENSE: &str = "application/vnd.ollama.image.license";
/// A LoRA adapter (GGUF).
pub const MEDIA_TYPE_ADAPTER: &str = "application/vnd.ollama.image.adapter";
/// A multimodal projector (GGUF).
pub const MEDIA_TYPE_PROJECTOR: &str = "application/vnd.ollama.image.projector";
/// corral's link layer: a small JSON blob ([`crate::store::LinkInfo`]) naming a GGUF
/// file outside the store. Only in local manifests; never pushed.
pub const MEDIA_TYPE_LINK: &str = "application/vnd.corral.link";

/// One file of an ONNX model directory (model.onnx, tokenizer.json, genai_config.json,
/// ...), its path inside the directory in the [`ANNOTATION_TITLE`] annotation.
pub const MEDIA_TYPE_ONNX_FILE: &str = "application/vnd.corral.onnx.file";
/// The OCI annotation naming a layer's file.
pub const ANNOTATION_TITLE: &str = "org.opencontainers.image.title";

/// One layer (or the config) of a manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Layer {
    /// What the blob holds (one of the `MEDIA_TYPE_*` constants, or any other string).
    pub media_type: String,
    /// The blob's digest.
    pub digest: Digest,
    /// The blob's size in bytes.
    pub size: u64,
    /// Where a layer was taken from (Ollama writes this for layers from a parent model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// OCI annotations; ONNX model files carry their relative path in
    /// [`ANNOTATION_TITLE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<std::collections::BTreeMap<String, String>>,
}

/// A Docker v2 image manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// [`MEDIA_TYPE_MANIFEST`].
    #[serde(default = "default_manifest_media_type")]
    pub media_type: String,
    /// The config blob.
    pub config: Layer,
    /// The layers, in order.
    pub layers: Vec<Layer>,
}

fn default_manifest_media_type() -> String {
    MEDIA_TYPE_MANIFEST.to_string()
}

impl Manifest {
    /// A new manifest with the given config and layers.
    pub fn new(config: Layer, layers: Vec<Layer>) -> Manifest {
        Manifest { schema_version: 2, media_type: MEDIA_TYPE_MANIFEST.into(), config, layers }
    }

    /// Every blob the manifest references: the config then the layers.
    pub fn blobs(&self) -> impl Iterator<Item = &Layer> {
        std::iter::once(&self.config).chain(self.layers.iter())
    }

    /// The first layer of a media type.
    pub fn layer(&self, media_type: &str) -> Option<&Layer> {
        self.layers.iter().find(|l| l.media_type == media_type)
    }

    /// Total size of config and layers, saturating: the sizes are what the manifest says.
    pub fn total_size(&self) -> u64 {
        self.blobs().fold(0u64, |n, l| n.saturating_add(l.size))
    }

    /// Serializes as compact JSON (the bytes that are hashed and stored).
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain structs of strings and numbers to a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The config blob Ollama writes (`ConfigV2`); every field is optional when reading.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// `gguf`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model_format: String,
    /// E.g. `llama`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model_family: String,
    /// All families.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_families: Option<Vec<String>>,
    /// E.g. `8B`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model_type: String,
    /// E.g. `Q4_0`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub file_type: String,
    /// Docker field, `amd64`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub architecture: String,
    /// Docker field, `linux`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub os: String,
    /// Docker field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<RootFs>,
    /// A remote model: the server that runs it (Ollama's field; corral stores the name of
    /// a remote of its config here, Ollama a URL).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub remote_host: String,
    /// A remote model: the model's name on that server.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub remote_model: String,
}

impl ModelConfig {
    /// Whether this is a remote model (no weights here; requests go to `remote_host`).
    pub fn is_remote(&self) -> bool {
        !self.remote_host.is_empty()
    }
}

/// Docker's rootfs description in the config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    /// `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Digests of the layers.
    pub diff_ids: Vec<Digest>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_ollama_manifest() {
        let json = r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0},"layers":[{"mediaType":"application/vnd.ollama.image.model","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0,"from":"/x"}]}"#;
        let m: Manifest = serde_json::from_str(json).unwrap();
        assert_eq!(m.layers[0].media_type, MEDIA_TYPE_MODEL);
        assert!(m.layer(MEDIA_TYPE_TEMPLATE).is_none());
        let bad = json.replace("sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\",\"size\":0,\"from", "sha256:../../etc/passwd\",\"size\":0,\"from");
        assert!(serde_json::from_str::<Manifest>(&bad).is_err());
    }

    /// Found with the fuzz target (fuzz/regressions/oci_manifest/): sizes that add past
    /// u64::MAX made `total_size` panic with overflow checks on (and wrap without).
    #[test]
    fn total_size_saturates() {
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let json = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"x","digest":"{d}","size":18446744073709551615}},"layers":[{{"mediaType":"y","digest":"{d}","size":1}}]}}"#
        );
        let m: Manifest = serde_json::from_str(&json).unwrap();
        assert_eq!(m.total_size(), u64::MAX);
    }
}
