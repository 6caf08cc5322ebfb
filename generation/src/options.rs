//! Sampling and generation options with Ollama's names, defaults and JSON leniency.
//!
//! [`SamplingOptions`] parses the `options` object of an Ollama request (and a Modelfile's
//! `PARAMETER`s turned into JSON). Parsing is lenient the way Ollama is: integers may
//! arrive as integral floats (`"top_k": 40.0`, as Python clients send them), `null` means
//! "not given", `stop` may be a single string, and options this crate does not use
//! (`num_gpu`, `num_thread`, `mirostat`, ...) are kept in [`SamplingOptions::extra`] for
//! the host. Keys that are no option of Ollama's at all are kept there too, and
//! [`SamplingOptions::unknown_options`] names them (Ollama warns "invalid option provided"
//! and ignores them). Range checks live in [`SamplingOptions::validate`].

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use thiserror::Error;

use crate::speculative::{MAX_DRAFT_MAX, SpecMode};

/// An invalid option value; the message names the option, the value and what is allowed.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum OptionsError {
    /// The JSON value has the wrong type (e.g. a string where a number belongs).
    #[error("option `{name}` must be {expected}, got {got}")]
    WrongType {
        /// Option name as in the request (`top_k`).
        name: &'static str,
        /// What was expected, in words.
        expected: &'static str,
        /// The offending JSON value, rendered.
        got: String,
    },
    /// The value has the right type but is out of range.
    #[error("option `{name}` is {value}, but {allowed}")]
    OutOfRange {
        /// Option name as in the request.
        name: &'static str,
        /// The offending value, rendered.
        value: String,
        /// The allowed range, in words.
        allowed: &'static str,
    },
    /// The `options` value is not a JSON object.
    #[error("`options` must be a JSON object, got {0}")]
    NotAnObject(String),
}

/// Options that shape one generation, with Ollama's names and defaults.
///
/// `Default` gives Ollama's defaults. Deserialize from the request's `options` object
/// (`serde_json::from_value`), or layer several sources with
/// [`apply_json`](Self::apply_json) (model defaults first, then the request).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SamplingOptions {
    /// Softmax temperature; 0 means greedy. Default 0.8.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 disables. Default 40.
    pub top_k: i32,
    /// Nucleus sampling: keep the smallest set whose probability reaches `top_p`, in (0, 1].
    /// 1 disables. Default 0.9.
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` times the top token's; 0 disables.
    pub min_p: f32,
    /// Locally typical sampling, in (0, 1]; 1 disables.
    pub typical_p: f32,
    /// How many of the last tokens the penalties look at: -1 = `num_ctx`, 0 = off. Default 64.
    pub repeat_last_n: i32,
    /// Multiplicative penalty on repeated tokens (llama.cpp style); 1 disables. Default 1.1.
    pub repeat_penalty: f32,
    /// Subtracted once from the logit of every token seen in the window.
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per occurrence in the window.
    pub frequency_penalty: f32,
    /// RNG seed; `None` (or a negative seed in JSON, Ollama's -1) draws one at random.
    #[serde(serialize_with = "ser_seed")]
    pub seed: Option<u64>,
    /// Maximum tokens to generate: -1 = unlimited, -2 = until the context is full.
    pub num_predict: i32,
    /// Stop strings; generation ends before the first occurrence of any of them.
    pub stop: Vec<String>,
    /// Context window in tokens; `None` = the default of
    /// [`crate::context::context_length`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_ctx: Option<u32>,
    /// Tokens at the start of the prompt kept when the context is truncated or shifted;
    /// -1 = the whole prompt. Default 4.
    pub num_keep: i32,
    /// Speculative decoding for this request (`"off"`, `"auto"`, `"ngram"`, `"draft"`, or
    /// a boolean: `true` = ngram); `None` = the server's setting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speculative: Option<SpecMode>,
    /// Most draft tokens per speculation round (1 to 64); `None` = the server's setting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draft_max: Option<u32>,
    /// Added to the logits of these tokens before sampling (OpenAI's and llama-server's
    /// `logit_bias`): -100 all but bans a token, 100 all but forces it; `false` (as
    /// llama-server takes it) bans it outright ([`LOGIT_BAN`]: finite, so a structured
    /// output whose every allowed token is banned still picks one of them rather than a
    /// token its grammar forbids). At most [`MAX_LOGIT_BIAS`] tokens.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub logit_bias: Vec<(u32, f32)>,
    /// Options this crate does not interpret (runner options such as `num_gpu`,
    /// `num_thread`, `num_batch`, or unsupported samplers such as `mirostat`), as given.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        SamplingOptions {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.9,
            min_p: 0.0,
            typical_p: 1.0,
            repeat_last_n: 64,
            repeat_penalty: 1.1,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
            num_predict: -1,
            stop: Vec::new(),
            num_ctx: None,
            num_keep: 4,
            speculative: None,
            draft_max: None,
            logit_bias: Vec::new(),
            extra: BTreeMap::new(),
        }
    }
}

/// Options of Ollama's API that this crate does not interpret: runner settings the host
/// chooses for itself (`num_gpu`, `num_thread`, ...) and samplers it does not have
/// (`mirostat`, `tfs_z`, ...). They are accepted and kept in [`SamplingOptions::extra`];
/// any other key is an unknown option ([`SamplingOptions::unknown_options`]).
pub const UNINTERPRETED_OPTIONS: &[&str] = &[
    "num_batch",
    "num_gpu",
    "main_gpu",
    "use_mmap",
    "use_mlock",
    "num_thread",
    "numa",
    "low_vram",
    "f16_kv",
    "logits_all",
    "vocab_only",
    "num_gqa",
    "rope_frequency_base",
    "rope_frequency_scale",
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
    "penalize_newline",
    "tfs_z",
];

fn ser_seed<S: Serializer>(seed: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match seed {
        Some(v) => s.serialize_u64(*v),
        None => s.serialize_i64(-1),
    }
}

impl<'de> Deserialize<'de> for SamplingOptions {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = Map::<String, Value>::deserialize(d)?;
        let mut opts = SamplingOptions::default();
        opts.apply_map(&map).map_err(serde::de::Error::custom)?;
        Ok(opts)
    }
}

/// Renders a JSON value for an error message, bounded in length.
fn show(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 80 {
        let mut cut = 77;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

fn get_f32(name: &'static str, v: &Value) -> Result<f32, OptionsError> {
    v.as_f64().map(|x| x as f32).ok_or_else(|| OptionsError::WrongType {
        name,
        expected: "a number",
        got: show(v),
    })
}

/// An integer, also accepting integral floats (`40.0`) as Ollama does.
fn get_i64(name: &'static str, v: &Value) -> Result<i64, OptionsError> {
    if let Some(i) = v.as_i64() {
        return Ok(i);
    }
    if let Some(f) = v.as_f64()
        && f.fract() == 0.0
        && f.abs() < 9.0e15
    {
        return Ok(f as i64);
    }
    Err(OptionsError::WrongType { name, expected: "an integer", got: show(v) })
}

fn get_i32(name: &'static str, v: &Value) -> Result<i32, OptionsError> {
    let i = get_i64(name, v)?;
    i32::try_from(i).map_err(|_| OptionsError::OutOfRange {
        name,
        value: i.to_string(),
        allowed: "it must fit in a 32-bit integer",
    })
}

impl SamplingOptions {
    /// Parses an Ollama `options` object (or `null`, giving the defaults).
    pub fn from_json(value: &Value) -> Result<Self, OptionsError> {
        let mut opts = SamplingOptions::default();
        opts.apply_json(value)?;
        Ok(opts)
    }

    /// Overlays the options present in `value` (a JSON object, or `null` for none) onto
    /// `self`, leaving the others as they are. Call it with the model's defaults first,
    /// then with the request's options. Does not range-check; call
    /// [`validate`](Self::validate) after the last layer.
    pub fn apply_json(&mut self, value: &Value) -> Result<(), OptionsError> {
        match value {
            Value::Null => Ok(()),
            Value::Object(map) => self.apply_map(map),
            other => Err(OptionsError::NotAnObject(show(other))),
        }
    }

    fn apply_map(&mut self, map: &Map<String, Value>) -> Result<(), OptionsError> {
        for (key, v) in map {
            if v.is_null() {
                continue;
            }
            match key.as_str() {
                "temperature" => self.temperature = get_f32("temperature", v)?,
                "top_k" => self.top_k = get_i32("top_k", v)?,
                "top_p" => self.top_p = get_f32("top_p", v)?,
                "min_p" => self.min_p = get_f32("min_p", v)?,
                "typical_p" => self.typical_p = get_f32("typical_p", v)?,
                "repeat_last_n" => self.repeat_last_n = get_i32("repeat_last_n", v)?,
                "repeat_penalty" => self.repeat_penalty = get_f32("repeat_penalty", v)?,
                "presence_penalty" => self.presence_penalty = get_f32("presence_penalty", v)?,
                "frequency_penalty" => self.frequency_penalty = get_f32("frequency_penalty", v)?,
                "seed" => {
                    self.seed = match v.as_u64() {
                        Some(u) => Some(u),
                        None => u64::try_from(get_i64("seed", v)?).ok(),
                    };
                }
                "num_predict" => self.num_predict = get_i32("num_predict", v)?,
                "stop" => self.stop = parse_stop(v)?,
                "logit_bias" => self.logit_bias = parse_logit_bias(v)?,
                "num_ctx" => {
                    let n = get_i64("num_ctx", v)?;
                    self.num_ctx =
                        Some(u32::try_from(n).map_err(|_| OptionsError::OutOfRange {
                            name: "num_ctx",
                            value: n.to_string(),
                            allowed: "it must be between 1 and 4294967295",
                        })?);
                }
                "num_keep" => self.num_keep = get_i32("num_keep", v)?,
                "speculative" => self.speculative = Some(parse_spec(v)?),
                "draft_max" => {
                    let n = get_i64("draft_max", v)?;
                    self.draft_max =
                        Some(u32::try_from(n).map_err(|_| OptionsError::OutOfRange {
                            name: "draft_max",
                            value: n.to_string(),
                            allowed: "it must be between 1 and 64",
                        })?);
                }
                _ => {
                    self.extra.insert(key.clone(), v.clone());
                }
            }
        }
        Ok(())
    }

    /// Checks every value's range; the error names the option, its value and what is
    /// allowed, so it can go back to the user as a 400.
    pub fn validate(&self) -> Result<(), OptionsError> {
        fn range(
            name: &'static str,
            value: impl fmt::Display,
            ok: bool,
            allowed: &'static str,
        ) -> Result<(), OptionsError> {
            if ok {
                Ok(())
            } else {
                Err(OptionsError::OutOfRange { name, value: value.to_string(), allowed })
            }
        }
        let t = self.temperature;
        range("temperature", t, t.is_finite() && t >= 0.0, "it must be a finite number >= 0")?;
        range("top_k", self.top_k, self.top_k >= 0, "it must be >= 0 (0 disables top_k)")?;
        let p = self.top_p;
        range("top_p", p, p > 0.0 && p <= 1.0, "it must be in (0, 1] (1 disables top_p)")?;
        let m = self.min_p;
        range("min_p", m, (0.0..=1.0).contains(&m), "it must be in [0, 1] (0 disables min_p)")?;
        let ty = self.typical_p;
        range("typical_p", ty, ty > 0.0 && ty <= 1.0, "it must be in (0, 1] (1 disables it)")?;
        range(
            "repeat_last_n",
            self.repeat_last_n,
            self.repeat_last_n >= -1,
            "it must be >= -1 (-1 = num_ctx, 0 = off)",
        )?;
        let rp = self.repeat_penalty;
        range(
            "repeat_penalty",
            rp,
            rp.is_finite() && rp > 0.0,
            "it must be a finite number > 0 (1 disables it)",
        )?;
        let pp = self.presence_penalty;
        range("presence_penalty", pp, pp.is_finite(), "it must be a finite number")?;
        let fp = self.frequency_penalty;
        range("frequency_penalty", fp, fp.is_finite(), "it must be a finite number")?;
        range(
            "num_predict",
            self.num_predict,
            self.num_predict >= -2,
            "it must be >= -2 (-1 = unlimited, -2 = fill the context)",
        )?;
        if let Some(n) = self.num_ctx {
            range("num_ctx", n, n >= 1, "it must be >= 1")?;
        }
        range("num_keep", self.num_keep, self.num_keep >= -1, "it must be >= -1 (-1 = all)")?;
        if let Some(n) = self.draft_max {
            range("draft_max", n, (1..=MAX_DRAFT_MAX).contains(&n), "it must be between 1 and 64")?;
        }
        Ok(())
    }

    /// The keys of [`extra`](Self::extra) that are no option of Ollama's (neither one
    /// this crate interprets nor one of [`UNINTERPRETED_OPTIONS`]): typos, or options of
    /// another program. They have no effect.
    pub fn unknown_options(&self) -> impl Iterator<Item = &str> {
        self.extra.keys().map(String::as_str).filter(|k| !UNINTERPRETED_OPTIONS.contains(k))
    }

    /// True when sampling is greedy (temperature 0 or top_k 1).
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || self.top_k == 1
    }
}

fn parse_spec(v: &Value) -> Result<SpecMode, OptionsError> {
    match v {
        Value::Bool(true) => Ok(SpecMode::Ngram),
        Value::Bool(false) => Ok(SpecMode::Off),
        Value::String(s) => s.parse().map_err(|_| OptionsError::OutOfRange {
            name: "speculative",
            value: show(v),
            allowed: "it must be one of off, auto, ngram, draft (or true / false)",
        }),
        _ => Err(OptionsError::WrongType {
            name: "speculative",
            expected: "a string (off, auto, ngram, draft) or a boolean",
            got: show(v),
        }),
    }
}

/// The bias of a token banned with `false`: below any logit, still finite.
pub const LOGIT_BAN: f32 = -1.0e30;

/// Most tokens one request's `logit_bias` may name.
pub const MAX_LOGIT_BIAS: usize = 4096;

/// `logit_bias` as OpenAI sends it (`{"15043": -100}`: token ids as strings) or as
/// llama-server also takes it (`[[15043, -100], [50256, false]]`); `null` is none. A bias
/// is a number in [-100, 100], or `false` for a ban.
fn parse_logit_bias(v: &Value) -> Result<Vec<(u32, f32)>, OptionsError> {
    let wrong = |got: &Value| OptionsError::WrongType {
        name: "logit_bias",
        expected: "an object of token ids to numbers in [-100, 100] (or a list of \
                   [token id, number] pairs)",
        got: show(got),
    };
    let bias = |b: &Value| -> Result<f32, OptionsError> {
        match b {
            Value::Bool(false) => Ok(LOGIT_BAN),
            Value::Number(n) => match n.as_f64() {
                Some(x) if (-100.0..=100.0).contains(&x) => Ok(x as f32),
                _ => Err(OptionsError::OutOfRange {
                    name: "logit_bias",
                    value: n.to_string(),
                    allowed: "a bias must be between -100 and 100",
                }),
            },
            other => Err(wrong(other)),
        }
    };
    let id = |t: &Value| -> Result<u32, OptionsError> {
        let parsed = match t {
            Value::String(s) => s.trim().parse::<u32>().ok(),
            Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            _ => None,
        };
        parsed.ok_or_else(|| OptionsError::OutOfRange {
            name: "logit_bias",
            value: show(t),
            allowed: "its keys must be token ids (whole numbers)",
        })
    };
    let pairs: Vec<(u32, f32)> = match v {
        Value::Null => Vec::new(),
        Value::Object(m) if m.len() <= MAX_LOGIT_BIAS => m
            .iter()
            .map(|(k, b)| Ok((id(&Value::String(k.clone()))?, bias(b)?)))
            .collect::<Result<_, OptionsError>>()?,
        Value::Array(a) if a.len() <= MAX_LOGIT_BIAS => a
            .iter()
            .map(|pair| match pair.as_array().map(Vec::as_slice) {
                Some([t, b]) => Ok((id(t)?, bias(b)?)),
                _ => Err(wrong(pair)),
            })
            .collect::<Result<_, OptionsError>>()?,
        Value::Object(_) | Value::Array(_) => {
            return Err(OptionsError::OutOfRange {
                name: "logit_bias",
                value: "more tokens".into(),
                allowed: "at most 4096 tokens may be biased",
            });
        }
        other => return Err(wrong(other)),
    };
    Ok(pairs)
}

/// Most stop strings one request may give.
pub const MAX_STOP_STRINGS: usize = 64;
/// Longest stop string, in bytes.
pub const MAX_STOP_BYTES: usize = 4096;

fn parse_stop(v: &Value) -> Result<Vec<String>, OptionsError> {
    let wrong = || OptionsError::WrongType {
        name: "stop",
        expected: "a string or a list of strings",
        got: show(v),
    };
    let stops: Vec<String> = match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map(str::to_owned).ok_or_else(wrong))
            .collect::<Result<_, _>>()?,
        _ => return Err(wrong()),
    };
    if stops.len() > MAX_STOP_STRINGS {
        return Err(OptionsError::OutOfRange {
            name: "stop",
            value: format!("a list of {} strings", stops.len()),
            allowed: "at most 64 stop strings are accepted",
        });
    }
    if let Some(long) = stops.iter().find(|s| s.len() > MAX_STOP_BYTES) {
        return Err(OptionsError::OutOfRange {
            name: "stop",
            value: format!("a string of {} bytes", long.len()),
            allowed: "a stop string may be at most 4096 bytes",
        });
    }
    Ok(stops)
}

#[cfg(test)]
mod tests {
    #[test]
    fn logit_bias_takes_openais_and_llama_servers_shapes() {
        let parse = |v: Value| {
            let mut o = SamplingOptions::default();
            o.apply_json(&serde_json::json!({ "logit_bias": v })).map(|()| o.logit_bias)
        };
        assert_eq!(parse(serde_json::json!({"15043": -100, "7": 2.5})).unwrap().len(), 2);
        let pairs = parse(serde_json::json!([[15043, -100], [50256, false]])).unwrap();
        assert_eq!(pairs, [(15043, -100.0), (50256, LOGIT_BAN)]);
        assert!(parse(Value::Null).unwrap().is_empty());
        for bad in [
            serde_json::json!({"hello": 1}),
            serde_json::json!({"1": 101}),
            serde_json::json!({"-1": 1}),
            serde_json::json!({"1": "x"}),
            serde_json::json!([[1]]),
            serde_json::json!("x"),
        ] {
            assert!(parse(bad.clone()).is_err(), "{bad}");
        }
        let many: serde_json::Map<String, Value> =
            (0..=MAX_LOGIT_BIAS).map(|i| (i.to_string(), Value::from(1))).collect();
        assert!(parse(Value::Object(many)).is_err());
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_are_ollamas() {
        let o = SamplingOptions::default();
        assert_eq!(o.temperature, 0.8);
        assert_eq!(o.top_k, 40);
        assert_eq!(o.top_p, 0.9);
        assert_eq!(o.min_p, 0.0);
        assert_eq!(o.typical_p, 1.0);
        assert_eq!(o.repeat_last_n, 64);
        assert_eq!(o.repeat_penalty, 1.1);
        assert_eq!(o.seed, None);
        assert_eq!(o.num_predict, -1);
        assert_eq!(o.num_keep, 4);
        assert_eq!(o.num_ctx, None);
        assert!(o.validate().is_ok());
    }

    #[test]
    fn parses_request_options() {
        let o: SamplingOptions = serde_json::from_value(json!({
            "temperature": 0, "top_k": 20.0, "top_p": 0.5, "seed": 42,
            "stop": ["\n", "User:"], "num_ctx": 4096, "num_predict": 128,
            "num_gpu": 99, "mirostat": 0, "min_p": null
        }))
        .unwrap();
        assert_eq!(o.temperature, 0.0);
        assert_eq!(o.top_k, 20);
        assert_eq!(o.top_p, 0.5);
        assert_eq!(o.seed, Some(42));
        assert_eq!(o.stop, vec!["\n".to_string(), "User:".to_string()]);
        assert_eq!(o.num_ctx, Some(4096));
        assert_eq!(o.num_predict, 128);
        assert_eq!(o.min_p, 0.0);
        assert_eq!(o.extra.get("num_gpu"), Some(&json!(99)));
        assert!(o.is_greedy());
    }

    #[test]
    fn unknown_options_are_kept_and_named() {
        let o = SamplingOptions::from_json(
            &json!({"num_gpu": 1, "mirostat": 2, "tmperature": 0.5, "top_k": 3}),
        )
        .unwrap();
        assert_eq!(o.top_k, 3);
        assert_eq!(o.unknown_options().collect::<Vec<_>>(), ["tmperature"]);
        assert_eq!(o.extra.len(), 3);
        assert!(o.validate().is_ok());
    }

    #[test]
    fn stop_strings_are_bounded_in_count_and_length() {
        let many: Vec<String> = (0..65).map(|i| i.to_string()).collect();
        let e = SamplingOptions::from_json(&json!({ "stop": many })).unwrap_err();
        assert!(e.to_string().contains("at most 64"), "{e}");
        let long = "x".repeat(MAX_STOP_BYTES + 1);
        let e = SamplingOptions::from_json(&json!({ "stop": long })).unwrap_err();
        assert!(e.to_string().contains("4096 bytes"), "{e}");
        let ok: Vec<String> = (0..64).map(|_| "y".repeat(MAX_STOP_BYTES)).collect();
        assert_eq!(SamplingOptions::from_json(&json!({ "stop": ok })).unwrap().stop.len(), 64);
    }

    #[test]
    fn negative_seed_is_random_and_stop_may_be_a_string() {
        let o = SamplingOptions::from_json(&json!({"seed": -1, "stop": "###"})).unwrap();
        assert_eq!(o.seed, None);
        assert_eq!(o.stop, vec!["###".to_string()]);
        let big = SamplingOptions::from_json(&json!({"seed": u64::MAX})).unwrap();
        assert_eq!(big.seed, Some(u64::MAX));
    }

    #[test]
    fn layering_keeps_earlier_values() {
        let mut o =
            SamplingOptions::from_json(&json!({"temperature": 0.2, "num_ctx": 8192})).unwrap();
        o.apply_json(&json!({"top_k": 5})).unwrap();
        assert_eq!(o.temperature, 0.2);
        assert_eq!(o.num_ctx, Some(8192));
        assert_eq!(o.top_k, 5);
        o.apply_json(&Value::Null).unwrap();
        assert!(o.apply_json(&json!([1])).is_err());
    }

    #[test]
    fn type_errors_name_the_option() {
        let e = SamplingOptions::from_json(&json!({"top_k": "many"})).unwrap_err();
        assert_eq!(e.to_string(), "option `top_k` must be an integer, got \"many\"");
        let e = SamplingOptions::from_json(&json!({"top_k": 1.5})).unwrap_err();
        assert!(e.to_string().contains("top_k"));
        let e = SamplingOptions::from_json(&json!({"stop": [1]})).unwrap_err();
        assert!(e.to_string().contains("a string or a list of strings"));
        let e = serde_json::from_value::<SamplingOptions>(json!({"temperature": "hot"}));
        assert!(e.unwrap_err().to_string().contains("temperature"));
    }

    fn invalid(f: impl FnOnce(&mut SamplingOptions)) -> String {
        let mut o = SamplingOptions::default();
        f(&mut o);
        o.validate().unwrap_err().to_string()
    }

    #[test]
    fn validation_errors() {
        assert_eq!(
            invalid(|o| o.top_k = -1),
            "option `top_k` is -1, but it must be >= 0 (0 disables top_k)"
        );
        assert!(invalid(|o| o.temperature = f32::NAN).starts_with("option `temperature` is NaN"));
        assert!(invalid(|o| o.temperature = -0.5).contains("temperature"));
        assert!(invalid(|o| o.top_p = 0.0).contains("(0, 1]"));
        assert!(invalid(|o| o.top_p = 1.5).contains("top_p"));
        assert!(invalid(|o| o.min_p = -0.1).contains("min_p"));
        assert!(invalid(|o| o.typical_p = 0.0).contains("typical_p"));
        assert!(invalid(|o| o.repeat_last_n = -2).contains("repeat_last_n"));
        assert!(invalid(|o| o.repeat_penalty = 0.0).contains("repeat_penalty"));
        assert!(invalid(|o| o.presence_penalty = f32::INFINITY).contains("presence_penalty"));
        assert!(invalid(|o| o.num_predict = -3).contains("num_predict"));
        assert!(invalid(|o| o.num_ctx = Some(0)).contains("num_ctx"));
        assert!(invalid(|o| o.num_keep = -2).contains("num_keep"));
        let mut ok = SamplingOptions { temperature: 0.0, top_p: 1.0, ..Default::default() };
        ok.num_predict = -2;
        assert!(ok.validate().is_ok());
    }

    #[test]
    fn speculation_options() {
        let o =
            SamplingOptions::from_json(&json!({"speculative": "ngram", "draft_max": 4.0})).unwrap();
        assert_eq!((o.speculative, o.draft_max), (Some(SpecMode::Ngram), Some(4)));
        assert!(o.validate().is_ok());
        let o = SamplingOptions::from_json(&json!({"speculative": false})).unwrap();
        assert_eq!(o.speculative, Some(SpecMode::Off));
        let e = SamplingOptions::from_json(&json!({"speculative": "fast"})).unwrap_err();
        assert!(e.to_string().contains("off, auto, ngram, draft"), "{e}");
        assert!(SamplingOptions::from_json(&json!({"speculative": 3})).is_err());
        assert!(invalid(|o| o.draft_max = Some(0)).contains("draft_max"));
        assert!(invalid(|o| o.draft_max = Some(65)).contains("draft_max"));
        assert!(SamplingOptions::from_json(&json!({"draft_max": -1})).is_err());
        let v = serde_json::to_value(&o).unwrap();
        assert_eq!(v["speculative"], json!("off"));
        assert_eq!(serde_json::from_value::<SamplingOptions>(v).unwrap(), o);
    }

    #[test]
    fn serializes_back() {
        let o = SamplingOptions { seed: Some(7), ..Default::default() };
        let v = serde_json::to_value(&o).unwrap();
        assert_eq!(v["seed"], json!(7));
        assert_eq!(v["top_k"], json!(40));
        let back: SamplingOptions = serde_json::from_value(v).unwrap();
        assert_eq!(back, o);
        let v = serde_json::to_value(SamplingOptions::default()).unwrap();
        assert_eq!(v["seed"], json!(-1));
    }
}
