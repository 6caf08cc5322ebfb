//! Tokenization from the GGUF vocabulary: GPT-2 style byte-level BPE (`tokenizer.ggml.model`
//! = `gpt2`, through `corral_gguf::bpe::Bpe`, which reproduces llama.cpp's tokenization of
//! such files) and SentencePiece-style llama vocabularies (`llama`: score-ordered merges
//! with byte fallback, as llama.cpp's SPM tokenizer does).

use std::collections::HashMap;

use corral_backend_api::SpecialTokenIds;
use corral_gguf::special::{Fragment, SpecialMatcher};
use corral_gguf::spm::{is_phi3_name, merge_by_score};
use corral_gguf::{bpe::Bpe, reader::GgufFile};

use crate::Error;

/// ggml token types.
const TYPE_NORMAL: i32 = 1;
const TYPE_UNKNOWN: i32 = 2;
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;
const TYPE_BYTE: i32 = 6;

/// Token texts that llama.cpp treats as ending generation wherever they appear.
const EOG_TEXTS: [&str; 13] = [
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
];
/// Token texts llama.cpp takes as the end-of-turn token when the file names none.
const EOT_TEXTS: [&str; 7] =
    ["<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<EOT>", "_<EOT>"];

/// A model's tokenizer.
pub enum Tokenizer {
    /// Byte-level BPE.
    Bpe(Box<Bpe>),
    /// SentencePiece-style BPE over scores.
    Spm(Box<Spm>),
}

impl Tokenizer {
    /// The tokenizer the file describes.
    pub fn from_gguf(file: &GgufFile) -> Result<Tokenizer, Error> {
        match file.get_str("tokenizer.ggml.model") {
            Some("gpt2") => Ok(Tokenizer::Bpe(Box::new(
                Bpe::from_gguf(file).map_err(|e| Error::Invalid(e.to_string()))?,
            ))),
            Some("llama") => Ok(Tokenizer::Spm(Box::new(Spm::from_gguf(file)?))),
            Some(other) => Err(Error::Unsupported(format!(
                "tokenizer model '{other}' is not supported by the cpu backend (it reads \
                 'gpt2' byte-level BPE and 'llama' SentencePiece vocabularies)"
            ))),
            None => Err(Error::Invalid("tokenizer.ggml.model is missing".into())),
        }
    }

    /// Number of tokens.
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Bpe(b) => b.vocab_size(),
            Tokenizer::Spm(s) => s.tokens.len(),
        }
    }

    fn texts(&self) -> Vec<&str> {
        match self {
            Tokenizer::Bpe(b) => b.tokens().iter().map(String::as_str).collect(),
            Tokenizer::Spm(s) => s.tokens.iter().map(String::as_str).collect(),
        }
    }

    fn types(&self) -> &[i32] {
        match self {
            Tokenizer::Bpe(b) => b.token_types(),
            Tokenizer::Spm(s) => &s.types,
        }
    }

    /// The bytes of a token as llama.cpp renders it with special tokens shown.
    pub fn token_bytes(&self, id: u32) -> Option<Vec<u8>> {
        match self {
            Tokenizer::Bpe(b) => b.token_bytes(id).map(<[u8]>::to_vec),
            Tokenizer::Spm(s) => s.token_bytes(id),
        }
    }

    /// Tokens to text the way `llama_detokenize` does with special tokens rendered: for a
    /// SentencePiece vocabulary with a space prefix, the first token's leading space goes.
    pub fn detokenize(&self, tokens: &[u32]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, &t) in tokens.iter().enumerate() {
            let b = self.token_bytes(t).unwrap_or_default();
            match self {
                Tokenizer::Spm(s) if i == 0 && s.add_space_prefix && b.first() == Some(&b' ') => {
                    out.extend_from_slice(&b[1..]);
                }
                _ => out.extend_from_slice(&b),
            }
        }
        out
    }

    /// Text to tokens: with `add_special`, BOS/EOS as the vocabulary asks; with
    /// `parse_special`, control-token texts become their tokens.
    pub fn tokenize(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
        special: &SpecialTokenIds,
    ) -> Vec<u32> {
        let mut out = Vec::new();
        if let (true, Some(b)) = (add_special && special.add_bos, special.bos) {
            out.push(b);
        }
        match self {
            Tokenizer::Bpe(b) => out.extend(b.encode_parsing(text, parse_special)),
            Tokenizer::Spm(s) => s.encode(text, parse_special, &mut out),
        }
        if let (true, Some(e)) = (add_special && special.add_eos, special.eos) {
            out.push(e);
        }
        out
    }

    /// The special tokens, as llama.cpp derives them from the file.
    pub fn special_tokens(&self, file: &GgufFile) -> SpecialTokenIds {
        let n = self.vocab_size();
        let id = |k: &str| file.get_u32(k).filter(|&t| (t as usize) < n);
        let texts = self.texts();
        let types = self.types();
        let find = |list: &[&str]| texts.iter().position(|t| list.contains(t)).map(|i| i as u32);
        let is_spm = matches!(self, Tokenizer::Spm(_));
        let bos = id("tokenizer.ggml.bos_token_id").or(if is_spm {
            Some(1).filter(|_| n > 1)
        } else {
            None
        });
        let eos = id("tokenizer.ggml.eos_token_id").or(if is_spm {
            Some(2).filter(|_| n > 2)
        } else {
            None
        });
        let eot = id("tokenizer.ggml.eot_token_id").or_else(|| find(&EOT_TEXTS));
        let mut eog: Vec<u32> = texts
            .iter()
            .enumerate()
            .filter(|(i, t)| {
                EOG_TEXTS.contains(t)
                    && types
                        .get(*i)
                        .is_some_and(|&ty| ty == TYPE_CONTROL || ty == TYPE_USER_DEFINED)
            })
            .map(|(i, _)| i as u32)
            .collect();
        eog.extend(eos.iter().chain(eot.iter()).copied());
        eog.sort_unstable();
        eog.dedup();
        SpecialTokenIds {
            bos,
            eos,
            eot,
            eog,
            add_bos: file.get_bool("tokenizer.ggml.add_bos_token").unwrap_or(is_spm),
            add_eos: file.get_bool("tokenizer.ggml.add_eos_token").unwrap_or(false),
        }
    }
}

/// A SentencePiece-style vocabulary (`tokenizer.ggml.model` = `llama`): pieces with
/// scores, `▁` for spaces, `<0xXX>` byte tokens as fallback.
pub struct Spm {
    tokens: Vec<String>,
    types: Vec<i32>,
    scores: Vec<f32>,
    ids: HashMap<String, u32>,
    byte_ids: [Option<u32>; 256],
    unk: Option<u32>,
    add_space_prefix: bool,
    /// Control, unknown and user-defined tokens, found as llama.cpp finds them.
    specials: SpecialMatcher,
}

impl Spm {
    fn from_gguf(file: &GgufFile) -> Result<Spm, Error> {
        let tokens: Vec<String> = file
            .get_str_array("tokenizer.ggml.tokens")
            .ok_or_else(|| Error::Invalid("tokenizer.ggml.tokens is missing".into()))?
            .into_iter()
            .map(str::to_string)
            .collect();
        let n = tokens.len();
        let ints = |k: &str| -> Option<Vec<i32>> {
            file.get(k)?.as_array()?.iter().map(|v| v.as_i64().map(|x| x as i32)).collect()
        };
        let types = ints("tokenizer.ggml.token_type").unwrap_or_else(|| vec![TYPE_NORMAL; n]);
        let scores: Vec<f32> = match file.get("tokenizer.ggml.scores").and_then(|v| v.as_array()) {
            Some(a) => a.iter().map(|v| v.as_f64().unwrap_or(0.0) as f32).collect(),
            None => vec![0.0; n],
        };
        if types.len() != n || scores.len() != n {
            return Err(Error::Invalid(format!(
                "{n} tokens but {} types and {} scores",
                types.len(),
                scores.len()
            )));
        }
        let ids: HashMap<String, u32> =
            tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let mut byte_ids = [None; 256];
        for (b, slot) in byte_ids.iter_mut().enumerate() {
            *slot = ids.get(&format!("<0x{b:02X}>")).copied();
        }
        // llama.cpp's Phi-3 quirk: special tokens strip the whitespace after them.
        let phi3 = file.get_str("general.name").is_some_and(is_phi3_name);
        let specials = SpecialMatcher::from_vocab(&tokens, &types, phi3);
        let unk = file
            .get_u32("tokenizer.ggml.unknown_token_id")
            .or_else(|| types.iter().position(|&t| t == TYPE_UNKNOWN).map(|i| i as u32))
            .filter(|&t| (t as usize) < n);
        Ok(Spm {
            tokens,
            types,
            scores,
            ids,
            byte_ids,
            unk,
            add_space_prefix: file.get_bool("tokenizer.ggml.add_space_prefix").unwrap_or(true),
            specials,
        })
    }

    fn token_bytes(&self, id: u32) -> Option<Vec<u8>> {
        let t = self.tokens.get(id as usize)?;
        let ty = self.types[id as usize];
        if ty == TYPE_BYTE {
            let hex = t.strip_prefix("<0x").and_then(|s| s.strip_suffix('>'))?;
            return u8::from_str_radix(hex, 16).ok().map(|b| vec![b]);
        }
        if ty == TYPE_CONTROL {
            return Some(t.as_bytes().to_vec());
        }
        Some(t.replace('\u{2581}', " ").into_bytes())
    }

    /// llama.cpp's SPM over the fragments between special tokens: a space prefix (when
    /// the vocabulary adds one) at the start and after every special token.
    fn encode(&self, text: &str, parse_special: bool, out: &mut Vec<u32>) {
        let mut prev_special = true;
        for fragment in self.specials.partition(text, parse_special) {
            match fragment {
                Fragment::Text(piece) => {
                    self.encode_fragment(piece, prev_special && self.add_space_prefix, out);
                    prev_special = false;
                }
                Fragment::Token(id) => {
                    out.push(id);
                    prev_special = true;
                }
            }
        }
    }

    /// llama.cpp's SPM: start from characters, repeatedly merge the adjacent pair whose
    /// joined text is a token with the highest score (leftmost on ties), then resegment
    /// pieces that are not tokens into byte tokens.
    fn encode_fragment(&self, text: &str, space_prefix: bool, out: &mut Vec<u32>) {
        let mut s = String::with_capacity(text.len() + 3);
        if space_prefix {
            s.push('\u{2581}');
        }
        s.push_str(&text.replace(' ', "\u{2581}"));
        // llama.cpp's merge by score, O(n log n) in the characters.
        let spans =
            merge_by_score(&s, |piece| self.ids.get(piece).map(|&id| self.scores[id as usize]));
        for range in spans {
            let piece = &s[range];
            match self.ids.get(piece) {
                Some(&id) => out.push(id),
                None => {
                    for byte in piece.bytes() {
                        if let Some(id) = self.byte_ids[byte as usize].or(self.unk) {
                            out.push(id);
                        }
                    }
                }
            }
        }
    }
}
