//! `logprobs` in the Ollama and OpenAI answers: which requests get them, and their JSON.

use serde_json::{Value, json};

use super::util::ApiError;
use crate::engine_loop::TokenLogprob;

/// Most alternatives per token, as OpenAI and Ollama allow.
const MAX_TOP: u32 = 20;

/// What a request asks for: `None` (no log-probabilities) or the number of alternatives.
/// `strict` (OpenAI): `top_logprobs` without `logprobs: true` is an error; otherwise
/// (Ollama) it is ignored, as Ollama does.
pub fn requested(
    logprobs: Option<bool>,
    top_logprobs: Option<u32>,
    strict: bool,
) -> Result<Option<u8>, ApiError> {
    let top = top_logprobs.unwrap_or(0);
    if top > MAX_TOP {
        return Err(ApiError::bad_request(format!(
            "top_logprobs is {top}, but it must be between 0 and {MAX_TOP}"
        )));
    }
    match logprobs {
        Some(true) => Ok(Some(top as u8)),
        _ if strict && top_logprobs.is_some_and(|t| t > 0) => {
            Err(ApiError::bad_request("top_logprobs needs logprobs: true"))
        }
        _ => Ok(None),
    }
}

fn text_of(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// One token as OpenAI's chat `logprobs.content[]` and Ollama's `logprobs[]` write it:
/// `{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}`.
pub fn token_entry(lp: &TokenLogprob) -> Value {
    let top: Vec<Value> = lp
        .top
        .iter()
        .map(|(b, l)| json!({"token": text_of(b), "logprob": l, "bytes": b}))
        .collect();
    json!({"token": text_of(&lp.bytes), "logprob": lp.logprob, "bytes": lp.bytes,
           "top_logprobs": top})
}

/// A list of tokens as `[token_entry, ...]`.
pub fn entries(lps: &[TokenLogprob]) -> Value {
    Value::Array(lps.iter().map(token_entry).collect())
}

/// The legacy `/v1/completions` form: `{tokens, token_logprobs, top_logprobs, text_offset}`,
/// offsets in characters from `offset0`.
pub fn legacy(lps: &[TokenLogprob], offset0: usize) -> Value {
    let mut offset = offset0;
    let (mut tokens, mut logprobs, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
    for lp in lps {
        let t = text_of(&lp.bytes);
        offsets.push(offset);
        offset += t.chars().count();
        tokens.push(t);
        logprobs.push(lp.logprob);
        // Keyed by text, so tokens whose text is the same (two halves of different
        // characters both print as U+FFFD) share a key: the most likely one stays.
        let mut top = serde_json::Map::new();
        for (b, l) in lp.top.iter().rev() {
            top.insert(text_of(b), json!(l));
        }
        tops.push(Value::Object(top));
    }
    json!({"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": tops,
           "text_offset": offsets})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lp(text: &str, l: f32) -> TokenLogprob {
        TokenLogprob {
            bytes: text.as_bytes().to_vec(),
            logprob: l,
            top: vec![(text.as_bytes().to_vec(), l), (b"x".to_vec(), -3.0)],
        }
    }

    #[test]
    fn requests_are_validated_as_each_api_does() {
        assert_eq!(requested(None, None, true).unwrap(), None);
        assert_eq!(requested(Some(true), None, true).unwrap(), Some(0));
        assert_eq!(requested(Some(true), Some(5), false).unwrap(), Some(5));
        assert_eq!(requested(Some(false), Some(5), false).unwrap(), None);
        assert!(requested(Some(false), Some(5), true).is_err());
        assert!(requested(Some(true), Some(21), false).is_err());
    }

    #[test]
    fn json_shapes() {
        let v = token_entry(&lp("hé", -0.5));
        assert_eq!(v["token"], "hé");
        assert_eq!(v["bytes"], json!([104, 195, 169]));
        assert_eq!(v["top_logprobs"][1], json!({"token": "x", "logprob": -3.0, "bytes": [120]}));
        let l = legacy(&[lp("hé", -0.5), lp(" y", -1.0)], 4);
        assert_eq!(l["tokens"], json!(["hé", " y"]));
        assert_eq!(l["text_offset"], json!([4, 6]));
        assert_eq!(l["top_logprobs"][0]["x"], -3.0);
    }
}
