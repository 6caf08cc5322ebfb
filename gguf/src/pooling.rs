//! How a sequence embedding pools its tokens: llama.cpp's `llama_pooling_type`, read from
//! a file's `{arch}.pooling_type`. One reading for every engine, so a file embeds (or is
//! refused) the same way on each.

use crate::reader::GgufFile;

/// llama.cpp's pooling types, with the numbers `{arch}.pooling_type` stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// No pooling (0): a vector per token.
    None,
    /// The mean of the sequence's tokens (1).
    Mean,
    /// The token at position 0 (2, CLS).
    Cls,
    /// The token at the sequence's highest position (3; Qwen3-Embedding and other
    /// decoder embedders).
    Last,
    /// A classifier head's scores (4, rerankers).
    Rank,
}

impl Pooling {
    /// The pooling that the stored number `v` names; `None` for a number llama.cpp does not
    /// define (its -1, "unspecified", is a context setting, not something a file declares).
    pub fn from_code(v: i64) -> Option<Pooling> {
        Some(match v {
            0 => Pooling::None,
            1 => Pooling::Mean,
            2 => Pooling::Cls,
            3 => Pooling::Last,
            4 => Pooling::Rank,
            _ => return None,
        })
    }

    /// The pooling a sequence embedding of `file` uses: the file's own
    /// `{arch}.pooling_type`, mean when it declares none (a decoder used as an embedder).
    /// An error names what the file asks for when that is not one vector per sequence
    /// (no pooling, a reranker's scores) or not a pooling llama.cpp defines (on which
    /// llama.cpp aborts while it makes the context).
    pub fn for_sequence_embedding(file: &GgufFile) -> Result<Pooling, String> {
        let key = format!("{}.pooling_type", file.architecture().unwrap_or_default());
        let Some(value) = file.get(&key) else { return Ok(Pooling::Mean) };
        let why = match value.as_i64().and_then(Pooling::from_code) {
            Some(p @ (Pooling::Mean | Pooling::Cls | Pooling::Last)) => return Ok(p),
            Some(Pooling::None) => "no pooling (vectors per token)".to_string(),
            Some(Pooling::Rank) => "rank pooling (a reranker's scores)".to_string(),
            None => {
                format!("pooling type {}, which llama.cpp does not define", value.display_short())
            }
        };
        Err(format!(
            "this model's file asks for {why} ({key}), not a sequence embedding; corral embeds \
             with mean, CLS or last-token pooling only"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::Pooling;
    use crate::reader::GgufFile;
    use crate::types::Value;
    use crate::writer::GgufBuilder;

    fn file_with(pooling: Option<Value>) -> GgufFile {
        let mut b = GgufBuilder::new();
        b.add_metadata("general.architecture", Value::String("qwen3".into())).unwrap();
        if let Some(v) = pooling {
            b.add_metadata("qwen3.pooling_type", v).unwrap();
        }
        let bytes = b.begin(Vec::new()).unwrap().finish().unwrap();
        GgufFile::from_bytes(&bytes).unwrap()
    }

    /// Mean, CLS and last embed; no key is mean; none, rank and numbers llama.cpp has no
    /// pooling for are refused, naming what the file asked for.
    #[test]
    fn only_mean_cls_and_last_pooling_embed() {
        assert_eq!(Pooling::for_sequence_embedding(&file_with(None)), Ok(Pooling::Mean));
        for (v, p) in [(1, Pooling::Mean), (2, Pooling::Cls), (3, Pooling::Last)] {
            let f = file_with(Some(Value::U32(v)));
            assert_eq!(Pooling::for_sequence_embedding(&f), Ok(p), "{v}");
        }
        let refused = |v: Value| Pooling::for_sequence_embedding(&file_with(Some(v))).unwrap_err();
        assert!(refused(Value::U32(0)).contains("no pooling"));
        assert!(refused(Value::I32(4)).contains("rank"));
        for bad in
            [Value::I32(-1), Value::U32(7), Value::U64(u64::MAX), Value::String("mean".into())]
        {
            let why = refused(bad);
            assert!(why.contains("does not define") && why.contains("qwen3.pooling_type"), "{why}");
        }
    }
}
