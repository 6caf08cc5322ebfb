//! The KV cache's element type and flash attention: settings of a loaded model, global
//! (`[server] kv_cache_type` / `flash_attention`, `CORRAL_KV_CACHE_TYPE` /
//! `CORRAL_FLASH_ATTENTION`, with Ollama's `OLLAMA_KV_CACHE_TYPE` /
//! `OLLAMA_FLASH_ATTENTION` as aliases) or per model (`PARAMETER kv_cache_type q8_0`,
//! `PARAMETER flash_attention on`).
//!
//! They reach the engine as the load options [`corral_backend_api::EXTRA_KV_CACHE_TYPE`]
//! and [`corral_backend_api::EXTRA_FLASH_ATTENTION`]; an engine that honours them
//! declares [`corral_backend_api::Capabilities::KV_CACHE_TYPES`] and
//! [`corral_backend_api::Capabilities::FLASH_ATTENTION`]. A model's own setting that its
//! engine cannot honour is refused with the reason; a global one falls back to the
//! default for that engine with a warning (as Ollama falls back to f16 where flash
//! attention is unavailable).

use serde_json::{Map, Value};

/// A setting that is not one of the accepted values.
#[derive(Debug, thiserror::Error)]
#[error("{name} {value:?}: use {expected}")]
pub struct KvSettingError {
    /// The setting.
    pub name: &'static str,
    /// What was given.
    pub value: String,
    /// What is accepted.
    pub expected: &'static str,
}

/// The KV cache's element type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KvCacheType {
    /// 16-bit floats (the default).
    #[default]
    F16,
    /// 8-bit blocks of 32 with a 16-bit scale (ggml's Q8_0): about half of f16.
    Q8_0,
    /// 4-bit blocks of 32 with a 16-bit scale (ggml's Q4_0): about a quarter of f16.
    Q4_0,
}

impl KvCacheType {
    /// Parses `f16`, `q8_0` or `q4_0` (any case).
    pub fn parse(s: &str) -> Result<KvCacheType, KvSettingError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f16" | "" => Ok(KvCacheType::F16),
            "q8_0" => Ok(KvCacheType::Q8_0),
            "q4_0" => Ok(KvCacheType::Q4_0),
            _ => Err(KvSettingError {
                name: "kv_cache_type",
                value: s.to_string(),
                expected: "f16, q8_0 or q4_0",
            }),
        }
    }

    /// The name the engines take.
    pub fn as_str(self) -> &'static str {
        match self {
            KvCacheType::F16 => "f16",
            KvCacheType::Q8_0 => "q8_0",
            KvCacheType::Q4_0 => "q4_0",
        }
    }

    /// Bytes per cached element (ggml's block sizes: 34 bytes per 32 for Q8_0, 18 for Q4_0).
    pub fn bytes_per_element(self) -> f64 {
        match self {
            KvCacheType::F16 => 2.0,
            KvCacheType::Q8_0 => 34.0 / 32.0,
            KvCacheType::Q4_0 => 18.0 / 32.0,
        }
    }
}

/// Flash attention.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FlashAttention {
    /// The engine decides (the default).
    #[default]
    Auto,
    /// On.
    On,
    /// Off.
    Off,
}

impl FlashAttention {
    /// Parses `on`, `off`, `auto`, and the booleans Ollama's `OLLAMA_FLASH_ATTENTION`
    /// takes (`1`, `true`, `0`, `false`).
    pub fn parse(s: &str) -> Result<FlashAttention, KvSettingError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(FlashAttention::Auto),
            "on" | "1" | "true" | "yes" => Ok(FlashAttention::On),
            "off" | "0" | "false" | "no" => Ok(FlashAttention::Off),
            _ => Err(KvSettingError {
                name: "flash_attention",
                value: s.to_string(),
                expected: "on, off or auto",
            }),
        }
    }

    /// The name the engines take.
    pub fn as_str(self) -> &'static str {
        match self {
            FlashAttention::Auto => "auto",
            FlashAttention::On => "on",
            FlashAttention::Off => "off",
        }
    }
}

/// Both settings, and whether each came from the model (which makes an engine that
/// cannot honour it an error rather than a fallback).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvSettings {
    /// The cache's element type.
    pub cache_type: KvCacheType,
    /// Flash attention.
    pub flash_attention: FlashAttention,
    /// `cache_type` is the model's own PARAMETER.
    pub cache_type_is_models: bool,
    /// `flash_attention` is the model's own PARAMETER.
    pub flash_attention_is_models: bool,
}

impl KvSettings {
    /// Why an engine with `caps` (called `engine`) cannot keep the cache as these settings
    /// ask, if it cannot.
    pub fn not_honoured_by(
        &self,
        caps: corral_backend_api::Capabilities,
        engine: &str,
    ) -> Option<String> {
        (self.cache_type != KvCacheType::F16
            && !caps.contains(corral_backend_api::Capabilities::KV_CACHE_TYPES))
        .then(|| {
            format!(
                "the {engine} engine cannot keep its KV cache as {} (it declares no \
                 kv-cache-types capability)",
                self.cache_type.as_str()
            )
        })
    }

    /// The global settings: config values, overridden by the environment
    /// (`CORRAL_*`, then Ollama's names).
    pub fn global(
        kv_cache_type: Option<&str>,
        flash_attention: Option<&str>,
    ) -> Result<KvSettings, KvSettingError> {
        let env = |names: [&str; 2]| names.iter().find_map(|n| std::env::var(n).ok());
        let kv = env(["CORRAL_KV_CACHE_TYPE", "OLLAMA_KV_CACHE_TYPE"]);
        let fa = env(["CORRAL_FLASH_ATTENTION", "OLLAMA_FLASH_ATTENTION"]);
        Ok(KvSettings {
            cache_type: kv
                .as_deref()
                .or(kv_cache_type)
                .map(KvCacheType::parse)
                .transpose()?
                .unwrap_or_default(),
            flash_attention: fa
                .as_deref()
                .or(flash_attention)
                .map(FlashAttention::parse)
                .transpose()?
                .unwrap_or_default(),
            ..Default::default()
        })
    }

    /// These settings with a model's PARAMETERs (`kv_cache_type`, `flash_attention`)
    /// put over them.
    pub fn for_model(self, params: &Map<String, Value>) -> Result<KvSettings, KvSettingError> {
        let mut s = self;
        if let Some(v) = params.get("kv_cache_type") {
            s.cache_type = KvCacheType::parse(&text(v))?;
            s.cache_type_is_models = true;
        }
        if let Some(v) = params.get("flash_attention") {
            s.flash_attention = FlashAttention::parse(&text(v))?;
            s.flash_attention_is_models = true;
        }
        Ok(s)
    }

    /// The engine options that carry them (nothing for the defaults).
    pub fn extra(&self) -> Vec<(String, String)> {
        let mut v = Vec::new();
        if self.cache_type != KvCacheType::F16 {
            v.push((
                corral_backend_api::EXTRA_KV_CACHE_TYPE.to_string(),
                self.cache_type.as_str().to_string(),
            ));
        }
        if self.flash_attention != FlashAttention::Auto {
            v.push((
                corral_backend_api::EXTRA_FLASH_ATTENTION.to_string(),
                self.flash_attention.as_str().to_string(),
            ));
        }
        v
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn settings_parse_and_a_models_parameters_win() {
        assert_eq!(KvCacheType::parse("Q8_0").unwrap(), KvCacheType::Q8_0);
        assert!(KvCacheType::parse("q5_1").is_err());
        assert_eq!(FlashAttention::parse("1").unwrap(), FlashAttention::On);
        assert!(FlashAttention::parse("maybe").is_err());
        let global = KvSettings { cache_type: KvCacheType::Q4_0, ..Default::default() };
        let params: Map<String, Value> =
            serde_json::from_value(json!({"kv_cache_type": "q8_0"})).unwrap();
        let s = global.for_model(&params).unwrap();
        assert_eq!(s.cache_type, KvCacheType::Q8_0);
        assert!(s.cache_type_is_models && !s.flash_attention_is_models);
        assert_eq!(s.extra(), vec![("kv_cache_type".to_string(), "q8_0".to_string())]);
        assert!(KvSettings::default().extra().is_empty());
        // Q8_0 halves f16, near enough: 34 bytes per 32 elements against 64.
        assert!((KvCacheType::Q8_0.bytes_per_element() / 2.0 - 0.53).abs() < 0.01);
    }
}
