//! The model's tokenizer from `tokenizer.json` (Hugging Face `tokenizers`), with the
//! byte-exact token pieces the host's incremental detokenizer needs.

use std::collections::HashMap;
use std::path::Path;

use corral_backend_api::BackendError;

/// Ids above this are refused unless the vocabulary is dense enough to fill a quarter of
/// the table (the largest real vocabularies hold about 260,000 tokens).
const MAX_TOKEN_ID_SPAN: usize = 1 << 20;

/// How token strings map to bytes, from the tokenizer's decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceKind {
    /// GPT-2 byte-level BPE: every char stands for one byte.
    ByteLevel,
    /// SentencePiece style: `▁` is a space, `<0xNN>` a raw byte.
    Metaspace,
    /// WordPiece: `##` continues a word, other tokens start one.
    WordPiece,
}

/// A loaded tokenizer.
pub struct Tok {
    /// Splits special tokens written in the text (parse_special = true).
    parse: tokenizers::Tokenizer,
    /// Treats special tokens' text as plain text (parse_special = false).
    plain: tokenizers::Tokenizer,
    /// Bytes of every token id (`None` past the tokenizer's own vocabulary).
    pieces: Vec<Vec<u8>>,
    /// How pieces were derived.
    pub kind: PieceKind,
    /// Ids of special added tokens.
    pub special_ids: Vec<u32>,
    /// Token text to id, added tokens included.
    pub vocab: HashMap<String, u32>,
}

/// Largest tokenizer.json accepted (real ones are a few MB; 64 MB leaves room).
const MAX_TOKENIZER_BYTES: u64 = 64 << 20;

/// GPT-2's bytes_to_unicode table, inverted: char → byte.
fn unicode_to_byte() -> HashMap<char, u8> {
    let mut bs: Vec<u32> =
        (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    bs.iter().zip(&cs).filter_map(|(&b, &c)| char::from_u32(c).map(|ch| (ch, b as u8))).collect()
}

fn decoder_kind(json: &serde_json::Value) -> PieceKind {
    fn kinds(v: &serde_json::Value, out: &mut Vec<String>) {
        if let Some(t) = v.get("type").and_then(|t| t.as_str()) {
            out.push(t.to_string());
        }
        for key in ["decoders", "pretokenizers"] {
            if let Some(list) = v.get(key).and_then(|l| l.as_array()) {
                for d in list {
                    kinds(d, out);
                }
            }
        }
    }
    let mut found = Vec::new();
    if let Some(d) = json.get("decoder") {
        kinds(d, &mut found);
    }
    if found.is_empty()
        && let Some(p) = json.get("pre_tokenizer")
    {
        kinds(p, &mut found);
    }
    if found.iter().any(|k| k == "ByteLevel") {
        PieceKind::ByteLevel
    } else if found.iter().any(|k| k == "WordPiece" || k == "BertPreTokenizer") {
        PieceKind::WordPiece
    } else {
        PieceKind::Metaspace
    }
}

impl Tok {
    /// Loads `tokenizer.json`.
    pub fn load(path: &Path) -> Result<Tok, BackendError> {
        let meta = std::fs::metadata(path).map_err(|e| {
            BackendError::not_found(format!("cannot read the tokenizer {}: {e}", path.display()))
        })?;
        if meta.len() > MAX_TOKENIZER_BYTES {
            return Err(BackendError::invalid(format!(
                "{} is {} MB, more than the {} MB a tokenizer may be",
                path.display(),
                meta.len() >> 20,
                MAX_TOKENIZER_BYTES >> 20
            )));
        }
        let bytes = std::fs::read(path).map_err(|e| {
            BackendError::not_found(format!("cannot read the tokenizer {}: {e}", path.display()))
        })?;
        let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            BackendError::invalid(format!("{} is not valid JSON: {e}", path.display()))
        })?;
        let mut parse = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| {
            BackendError::invalid(format!("{} is not a usable tokenizer: {e}", path.display()))
        })?;
        // sentence-transformers exports often pad to a fixed length (128 [PAD]s) and
        // truncate there: the engine wants a text's own tokens (the context length and
        // `truncate` are the host's business), and pads nothing it then attends to.
        parse.with_padding(None);
        parse
            .with_truncation(None)
            .map_err(|e| BackendError::invalid(format!("{}: {e}", path.display())))?;
        let mut plain = parse.clone();
        plain.set_encode_special_tokens(true);
        let kind = decoder_kind(&json);
        let vocab = parse.get_vocab(true);
        let added = parse.get_added_tokens_decoder();
        let n = vocab.values().copied().max().map_or(0, |m| m as usize + 1);
        // The table is indexed by id: a file whose ids leave most of it empty (one id of
        // 4,294,967,295 would ask for 100 GB) is not a vocabulary.
        if n > MAX_TOKEN_ID_SPAN.max(4 * vocab.len()) {
            return Err(BackendError::invalid(format!(
                "{}: token ids reach {} for {} tokens; a vocabulary's ids are dense",
                path.display(),
                n - 1,
                vocab.len()
            )));
        }
        let mut pieces = vec![Vec::new(); n];
        let u2b = unicode_to_byte();
        for (text, &id) in &vocab {
            let bytes = if let Some(a) = added.get(&id) {
                a.content.as_bytes().to_vec()
            } else {
                piece_bytes(kind, text, &u2b)
            };
            pieces[id as usize] = bytes;
        }
        let mut special_ids: Vec<u32> =
            added.iter().filter(|(_, a)| a.special).map(|(&id, _)| id).collect();
        special_ids.sort_unstable();
        Ok(Tok { parse, plain, pieces, kind, special_ids, vocab })
    }

    /// Number of token ids the tokenizer can produce (highest id + 1).
    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    /// Whether the tokenizer has no tokens.
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// Text to ids.
    pub fn encode(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, BackendError> {
        let t = if parse_special { &self.parse } else { &self.plain };
        let enc = t
            .encode(text, add_special)
            .map_err(|e| BackendError::invalid(format!("tokenization failed: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The bytes of a token; `None` for an id the tokenizer lacks.
    pub fn piece(&self, id: u32) -> Option<&[u8]> {
        self.pieces.get(id as usize).map(Vec::as_slice)
    }

    /// Ids to text through the tokenizer's own decoder (special tokens kept).
    pub fn decode(&self, ids: &[u32]) -> Result<String, BackendError> {
        self.parse
            .decode(ids, false)
            .map_err(|e| BackendError::invalid(format!("detokenization failed: {e}")))
    }

    /// The id of a token text, if the vocabulary has it.
    pub fn id(&self, text: &str) -> Option<u32> {
        self.vocab.get(text).copied()
    }
}

fn piece_bytes(kind: PieceKind, text: &str, u2b: &HashMap<char, u8>) -> Vec<u8> {
    match kind {
        PieceKind::ByteLevel => {
            let mapped: Option<Vec<u8>> = text.chars().map(|c| u2b.get(&c).copied()).collect();
            mapped.unwrap_or_else(|| text.as_bytes().to_vec())
        }
        PieceKind::Metaspace => {
            if let Some(hex) = text.strip_prefix("<0x").and_then(|s| s.strip_suffix('>'))
                && hex.len() == 2
                && let Ok(b) = u8::from_str_radix(hex, 16)
            {
                return vec![b];
            }
            text.replace('\u{2581}', " ").into_bytes()
        }
        PieceKind::WordPiece => match text.strip_prefix("##") {
            Some(rest) => rest.as_bytes().to_vec(),
            None => format!(" {text}").into_bytes(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_covers_every_byte() {
        let t = unicode_to_byte();
        assert_eq!(t.len(), 256);
        assert_eq!(t[&'\u{120}'], b' ');
        assert_eq!(t[&'a'], b'a');
        assert_eq!(piece_bytes(PieceKind::ByteLevel, "\u{120}the", &t), b" the");
    }

    #[test]
    fn metaspace_and_wordpiece_pieces() {
        let t = HashMap::new();
        assert_eq!(piece_bytes(PieceKind::Metaspace, "<0x0A>", &t), b"\n");
        assert_eq!(piece_bytes(PieceKind::Metaspace, "\u{2581}hi", &t), b" hi");
        assert_eq!(piece_bytes(PieceKind::WordPiece, "##ing", &t), b"ing");
        assert_eq!(piece_bytes(PieceKind::WordPiece, "run", &t), b" run");
    }

    /// A tokenizer.json whose ids are sparse (one id of 4,294,967,295 would size the
    /// pieces table at 100 GB and abort the process) is refused; a dense one loads.
    #[test]
    fn sparse_token_ids_are_refused_before_a_table_is_sized_by_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = |ids: [u64; 3]| {
            let json = format!(
                r#"{{"version":"1.0","model":{{"type":"WordLevel","unk_token":"[UNK]",
                "vocab":{{"[UNK]":{},"a":{},"b":{}}}}},
                "pre_tokenizer":{{"type":"Whitespace"}}}}"#,
                ids[0], ids[1], ids[2]
            );
            let path = dir.path().join(format!("tok-{}.json", ids[2]));
            std::fs::write(&path, json).expect("write");
            path
        };
        assert!(Tok::load(&file([0, 1, 2])).is_ok());
        let e = Tok::load(&file([0, 1, 4_294_967_295])).err().expect("refused");
        assert!(e.message.contains("dense"), "{e}");
    }
}
