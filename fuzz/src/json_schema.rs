//! Structured output: a request's `format` (`"json"` or a JSON schema) compiled into a
//! grammar, and the matcher and token constraint driven over bytes.
//!
//! Input: one JSON value (the `format`), then optionally one newline, then the bytes of
//! a document to feed (e.g. `{"type":"integer"}` + `\n` + `-12`).

use std::sync::{Arc, OnceLock};

use corral_generation::sampler::Constraint;
use corral_generation::structured::{Grammar, JsonConstraint, Matcher, TokenTable};
use serde_json::Value;

/// Most document bytes fed to the matcher.
const MAX_DOC: usize = 4096;
/// Most tokens sampled through the constraint.
const MAX_STEPS: usize = 48;

/// Multi-byte tokens, as a BPE vocabulary has them.
#[rustfmt::skip]
const MULTI_BYTE: &[&str] = &[
    "{\"", "\":", "\",\"", "\"}", "true", "false", "null", "name", "12", "\"a\"", ",\"",
    "}", "]", "[\"", "[]", "{}", "hello", " world", "0.5", "-0", "e+", "E-", "\\n",
    "\\\"", "\\u00", "é", "日本", "\u{1F600}", "\"\"", "1e5", "00",
];

/// Byte tokens, some multi-byte tokens as a BPE vocabulary has, an end-of-generation
/// token and a control token that is never allowed.
struct Vocab {
    table: Arc<TokenTable>,
    bytes: Vec<Vec<u8>>,
    eog: u32,
}

fn vocab() -> &'static Vocab {
    static VOCAB: OnceLock<Vocab> = OnceLock::new();
    VOCAB.get_or_init(|| {
        let mut bytes: Vec<Vec<u8>> = (0u8..=255).map(|b| vec![b]).collect();
        bytes.extend(MULTI_BYTE.iter().map(|s| s.as_bytes().to_vec()));
        let eog = bytes.len() as u32;
        bytes.push(b"</s>".to_vec());
        let never = bytes.len() as u32;
        bytes.push(b"<s>".to_vec());
        let table = Arc::new(TokenTable::new(bytes.clone(), vec![eog], &[never]));
        Vocab { table, bytes, eog }
    })
}

/// Compiles the format and drives a matcher and a token constraint over the document.
pub fn json_schema(data: &[u8]) {
    let mut values = serde_json::Deserializer::from_slice(data).into_iter::<Value>();
    let Some(Ok(format)) = values.next() else { return };
    let rest = &data[values.byte_offset()..];
    let doc = rest.strip_prefix(b"\n").unwrap_or(rest);
    let doc = &doc[..doc.len().min(MAX_DOC)];
    let grammar = match Grammar::from_format(&format) {
        Ok(Some(g)) => Arc::new(g),
        Ok(None) | Err(_) => return,
    };
    feed_bytes(&grammar, doc);
    sample(&grammar, doc);
}

/// The matcher byte by byte: whenever it calls the bytes so far complete, they must be
/// one JSON value (what the constraint promises of every output).
fn feed_bytes(grammar: &Arc<Grammar>, doc: &[u8]) {
    let mut m = Matcher::new(grammar.clone());
    check_complete(&m, b"");
    for (i, b) in doc.iter().enumerate() {
        let complete = m.is_complete();
        if !m.feed(std::slice::from_ref(b)) {
            assert_eq!(m.is_complete(), complete, "a refused byte changed the matcher");
            assert!(!m.is_dead(), "a refused byte killed the matcher");
            break;
        }
        check_complete(&m, &doc[..=i]);
    }
    // The whole document at once takes the same path.
    let mut whole = Matcher::new(grammar.clone());
    let _ = whole.feed(doc);
}

fn check_complete(m: &Matcher, bytes: &[u8]) {
    if m.is_complete()
        && let Err(e) = serde_json::from_slice::<Value>(bytes)
    {
        panic!(
            "the matcher calls {:?} a complete document, but it is not JSON: {e}",
            String::from_utf8_lossy(bytes)
        );
    }
}

/// The token constraint, as the sampler uses it: at each step the allowed tokens, then
/// the longest allowed token that continues `doc` (or, once `doc` is used up or
/// refused, the first allowed token), until end-of-generation.
fn sample(grammar: &Arc<Grammar>, doc: &[u8]) {
    let v = vocab();
    let mut c = JsonConstraint::new(grammar.clone(), v.table.clone());
    let mut out: Vec<u8> = Vec::new();
    let mut pos = 0;
    for _ in 0..MAX_STEPS {
        let allowed = c.allowed();
        assert_eq!(allowed.len(), v.bytes.len(), "allowed() has the wrong length");
        let from_doc = (0..v.bytes.len())
            .filter(|&i| allowed[i] && i as u32 != v.eog && doc[pos..].starts_with(&v.bytes[i]))
            .max_by_key(|&i| v.bytes[i].len());
        let next = from_doc.or_else(|| allowed.iter().position(|&a| a));
        let Some(token) = next else {
            panic!("no token allowed, not even end-of-generation, after {out:?}");
        };
        let mut logits = vec![0.0f32; v.bytes.len()];
        c.mask(&mut logits);
        assert!(logits[token].is_finite(), "mask() forbids a token allowed() allows");
        c.accept(token as u32);
        if token as u32 == v.eog {
            break;
        }
        if from_doc.is_some() {
            pos += v.bytes[token].len();
        } else {
            pos = doc.len();
        }
        out.extend_from_slice(&v.bytes[token]);
    }
}
