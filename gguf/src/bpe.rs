//! A GPT-2 style byte-level BPE vocabulary, learned from an embedded English corpus.
//!
//! Token ids 0..256 are the 256 bytes (id = byte value), written as text in GPT-2's
//! bytes-to-unicode mapping (a space is "Ġ", a newline "Ċ"). Then come the tokens made
//! by the learned merges, in rank order: BPE training on the corpus (pre-tokenized with
//! the GPT-2 regex) merges the most frequent adjacent pair again and again. When the
//! corpus has no pairs left before the requested size is reached, further merges are
//! drawn deterministically from a seed: each joins two existing tokens into a new one.
//! Four special tokens close the vocabulary: `<|begin_of_text|>` (BOS),
//! `<|end_of_text|>` (EOS), `<|im_start|>` and `<|im_end|>` (end of turn), all of token
//! type CONTROL.
//!
//! [`Bpe::encode`] is a reference encoder (GPT-2's rank-based merge loop), which gives
//! the same ids as llama.cpp's BPE tokenizer with the "gpt-2" pre-tokenizer.

use std::collections::HashMap;

use fancy_regex::Regex;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::corpus::CORPUS;
use crate::error::GgufError;
use crate::special::{Fragment, SpecialMatcher, SpecialToken};

/// Beginning of text; the BOS token.
pub const BOS_TOKEN: &str = "<|begin_of_text|>";
/// End of text; the EOS token.
pub const EOS_TOKEN: &str = "<|end_of_text|>";
/// Start of a ChatML turn.
pub const IM_START_TOKEN: &str = "<|im_start|>";
/// End of a ChatML turn (llama.cpp recognises it as end-of-turn by its text).
pub const IM_END_TOKEN: &str = "<|im_end|>";
/// The special tokens, in the order they close the vocabulary.
pub const SPECIAL_TOKENS: [&str; 4] = [BOS_TOKEN, EOS_TOKEN, IM_START_TOKEN, IM_END_TOKEN];

/// llama.cpp's token type of ordinary tokens.
pub const TOKEN_TYPE_NORMAL: i32 = 1;
/// llama.cpp's token type of control (special) tokens.
pub const TOKEN_TYPE_CONTROL: i32 = 3;

/// GPT-2's pre-tokenizer regex.
pub const GPT2_SPLIT_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// The value of `tokenizer.ggml.pre` that makes llama.cpp pre-tokenize with
/// [`GPT2_SPLIT_REGEX`], as [`Bpe::encode`] does.
pub const LLAMA_CPP_PRE: &str = "gpt-2";

/// Llama 3's pre-tokenizer regex, as llama.cpp adapts it (case-insensitive contractions
/// spelled out, numbers in groups of at most three digits).
pub const LLAMA3_SPLIT_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen 2's pre-tokenizer regex (Llama 3's with single digits).
pub const QWEN2_SPLIT_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizers this encoder reproduces (llama.cpp's `tokenizer.ggml.pre`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PreTokenizer {
    /// GPT-2's (`gpt-2`).
    Gpt2,
    /// Llama 3's (`llama-bpe`, also `llama3`, `llama-v3`): a pre-token that is itself in
    /// the vocabulary is taken whole, without merges (llama.cpp's `ignore_merges`).
    Llama3,
    /// Qwen 2's (`qwen2`, also `deepseek-r1-qwen`).
    Qwen2,
}

impl PreTokenizer {
    /// The name written to `tokenizer.ggml.pre`.
    pub fn name(self) -> &'static str {
        match self {
            PreTokenizer::Gpt2 => LLAMA_CPP_PRE,
            PreTokenizer::Llama3 => "llama-bpe",
            PreTokenizer::Qwen2 => "qwen2",
        }
    }

    /// The pre-tokenizer llama.cpp uses for a `tokenizer.ggml.pre` value, if this encoder
    /// reproduces it (a missing value is GPT-2's, as in llama.cpp's older files).
    pub fn from_gguf_name(name: Option<&str>) -> Option<PreTokenizer> {
        match name {
            None | Some("gpt-2") => Some(PreTokenizer::Gpt2),
            Some("llama-bpe" | "llama3" | "llama-v3") => Some(PreTokenizer::Llama3),
            Some("qwen2" | "deepseek-r1-qwen") => Some(PreTokenizer::Qwen2),
            Some(_) => None,
        }
    }

    fn regex(self) -> &'static str {
        match self {
            PreTokenizer::Gpt2 => GPT2_SPLIT_REGEX,
            PreTokenizer::Llama3 => LLAMA3_SPLIT_REGEX,
            PreTokenizer::Qwen2 => QWEN2_SPLIT_REGEX,
        }
    }
}

/// Longest token (in bytes) the seeded filler merges make.
const MAX_FILLER_TOKEN_BYTES: usize = 16;

/// GPT-2's mapping of bytes to printable characters: printable Latin-1 bytes map to
/// themselves, the others to U+0100 and up in byte order.
pub fn bytes_to_unicode() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        map[b as usize] = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(256 + n).unwrap_or('\u{FFFD}');
            n += 1;
            c
        };
    }
    map
}

/// A trained byte-level BPE vocabulary with its merges.
#[derive(Debug, Clone)]
pub struct Bpe {
    /// Token text as stored in GGUF (byte-level mapped; specials verbatim).
    tokens: Vec<String>,
    /// Raw bytes of each token (specials: their text).
    token_bytes: Vec<Vec<u8>>,
    token_types: Vec<i32>,
    /// Merges by rank: (left, right, result).
    merges: Vec<(u32, u32, u32)>,
    ranks: HashMap<(u32, u32), (u32, u32)>,
    learned_merges: usize,
    /// Token id of each byte value, if the vocabulary has one.
    byte_ids: [Option<u32>; 256],
    /// Control, unknown and user-defined tokens, found by [`Bpe::encode_with_special`].
    specials: SpecialMatcher,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    split: Regex,
    pre: PreTokenizer,
    /// Token ids by GGUF text, for [`PreTokenizer::Llama3`]'s whole-word lookups.
    text_ids: HashMap<String, u32>,
}

impl Bpe {
    /// Trains a vocabulary of exactly `vocab_size` tokens (the 256 bytes, merges, and
    /// the 4 special tokens). Merges beyond what the corpus yields are drawn from
    /// `seed`. The result is a pure function of the two arguments.
    pub fn train(vocab_size: usize, seed: u64) -> Result<Bpe, GgufError> {
        let min = 256 + SPECIAL_TOKENS.len();
        if vocab_size < min {
            return Err(GgufError::Generate(format!(
                "a byte-level BPE vocabulary needs at least {min} tokens, not {vocab_size}"
            )));
        }
        let split = Regex::new(GPT2_SPLIT_REGEX)
            .map_err(|e| GgufError::Generate(format!("GPT-2 split regex: {e}")))?;
        let n_normal = vocab_size - SPECIAL_TOKENS.len();
        let mut token_bytes: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        let mut known: HashMap<Vec<u8>, u32> =
            token_bytes.iter().enumerate().map(|(i, b)| (b.clone(), i as u32)).collect();
        let mut merges: Vec<(u32, u32, u32)> = Vec::new();

        // Word frequencies of the pre-tokenized corpus, sorted for determinism.
        let mut freq: HashMap<&[u8], i64> = HashMap::new();
        for piece in split_pieces(&split, CORPUS) {
            *freq.entry(piece.as_bytes()).or_default() += 1;
        }
        let mut words: Vec<(Vec<u32>, i64)> =
            freq.into_iter().map(|(w, f)| (w.iter().map(|&b| u32::from(b)).collect(), f)).collect();
        words.sort();

        let mut pairs: HashMap<(u32, u32), i64> = HashMap::new();
        for (w, f) in &words {
            for p in w.windows(2) {
                *pairs.entry((p[0], p[1])).or_default() += f;
            }
        }

        while token_bytes.len() < n_normal {
            // Most frequent pair; ties go to the smallest ids.
            let best = pairs
                .iter()
                .filter(|&(_, &c)| c > 0)
                .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
                .map(|(&p, _)| p);
            let Some((a, b)) = best else { break };
            let mut joined = token_bytes[a as usize].clone();
            joined.extend_from_slice(&token_bytes[b as usize]);
            let id = match known.get(&joined) {
                Some(&id) => id,
                None => {
                    let id = token_bytes.len() as u32;
                    known.insert(joined.clone(), id);
                    token_bytes.push(joined);
                    id
                }
            };
            merges.push((a, b, id));
            for (w, f) in &mut words {
                if !w.windows(2).any(|p| p[0] == a && p[1] == b) {
                    continue;
                }
                for p in w.windows(2) {
                    *pairs.entry((p[0], p[1])).or_default() -= *f;
                }
                let mut merged = Vec::with_capacity(w.len());
                let mut i = 0;
                while i < w.len() {
                    if i + 1 < w.len() && w[i] == a && w[i + 1] == b {
                        merged.push(id);
                        i += 2;
                    } else {
                        merged.push(w[i]);
                        i += 1;
                    }
                }
                for p in merged.windows(2) {
                    *pairs.entry((p[0], p[1])).or_default() += *f;
                }
                *w = merged;
            }
            pairs.retain(|_, c| *c > 0);
        }
        let learned_merges = merges.len();

        // The corpus ran out of pairs: join random existing tokens.
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x6270_655f_6669_6c6c);
        let mut attempts: u64 = 0;
        let budget = 1000 * (n_normal as u64) + 1_000_000;
        while token_bytes.len() < n_normal {
            attempts += 1;
            if attempts > budget {
                return Err(GgufError::Generate(format!(
                    "could not find new merges to reach {vocab_size} tokens"
                )));
            }
            let n = token_bytes.len();
            let a = rng.random_range(0..n) as u32;
            let b = rng.random_range(0..n) as u32;
            let (ta, tb) = (&token_bytes[a as usize], &token_bytes[b as usize]);
            // Keep the tokens plausible: a space only starts a token, and no huge ones.
            if tb.first() == Some(&b' ') || ta.len() + tb.len() > MAX_FILLER_TOKEN_BYTES {
                continue;
            }
            let mut joined = ta.clone();
            joined.extend_from_slice(tb);
            if known.contains_key(&joined) {
                continue;
            }
            let id = n as u32;
            known.insert(joined.clone(), id);
            token_bytes.push(joined);
            merges.push((a, b, id));
        }

        let map = bytes_to_unicode();
        let mut tokens: Vec<String> =
            token_bytes.iter().map(|t| t.iter().map(|&b| map[b as usize]).collect()).collect();
        let mut token_types = vec![TOKEN_TYPE_NORMAL; tokens.len()];
        for s in SPECIAL_TOKENS {
            tokens.push(s.to_string());
            token_bytes.push(s.as_bytes().to_vec());
            token_types.push(TOKEN_TYPE_CONTROL);
        }
        let n = n_normal as u32;
        Ok(Bpe::assemble(
            tokens,
            token_bytes,
            token_types,
            merges,
            learned_merges,
            [Some(n), Some(n + 1), Some(n + 3)],
            split,
            PreTokenizer::Gpt2,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        tokens: Vec<String>,
        token_bytes: Vec<Vec<u8>>,
        token_types: Vec<i32>,
        merges: Vec<(u32, u32, u32)>,
        learned_merges: usize,
        [bos, eos, eot]: [Option<u32>; 3],
        split: Regex,
        pre: PreTokenizer,
    ) -> Bpe {
        let ranks =
            merges.iter().enumerate().map(|(r, &(a, b, id))| ((a, b), (r as u32, id))).collect();
        let mut byte_ids = [None; 256];
        for (id, (b, ty)) in token_bytes.iter().zip(&token_types).enumerate().rev() {
            if let ([byte], true) = (b.as_slice(), *ty != TOKEN_TYPE_CONTROL) {
                byte_ids[*byte as usize] = Some(id as u32);
            }
        }
        let specials = SpecialMatcher::from_vocab(&tokens, &token_types, false);
        let text_ids = if pre == PreTokenizer::Llama3 {
            tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect()
        } else {
            HashMap::new()
        };
        Bpe {
            tokens,
            token_bytes,
            token_types,
            merges,
            ranks,
            learned_merges,
            byte_ids,
            specials,
            bos,
            eos,
            eot,
            split,
            pre,
            text_ids,
        }
    }

    /// Builds the tokenizer of a GGUF file with a GPT-2 style vocabulary
    /// (`tokenizer.ggml.model` "gpt2": tokens, token types and merges). Use it to
    /// tokenize the way llama.cpp does for files made by [`crate::generate`] (whose
    /// `tokenizer.ggml.pre` is "gpt-2"), and for files with Llama 3's or Qwen 2's
    /// pre-tokenizer ([`PreTokenizer`]); other pre-tokenizers are refused.
    pub fn from_gguf(file: &crate::reader::GgufFile) -> Result<Bpe, GgufError> {
        let model = file.get_str("tokenizer.ggml.model").unwrap_or("");
        if model != "gpt2" {
            return Err(GgufError::Invalid(format!(
                "tokenizer.ggml.model is '{model}', not a GPT-2 style BPE ('gpt2')"
            )));
        }
        let pre_name = file.get_str("tokenizer.ggml.pre");
        let pre = PreTokenizer::from_gguf_name(pre_name).ok_or_else(|| {
            GgufError::Invalid(format!(
                "pre-tokenizer '{}' (tokenizer.ggml.pre) is not reproduced; known: gpt-2, \
                 llama-bpe, qwen2",
                pre_name.unwrap_or_default()
            ))
        })?;
        let tokens = file.get_str_array("tokenizer.ggml.tokens").ok_or_else(|| {
            GgufError::Invalid("tokenizer.ggml.tokens is missing or not strings".into())
        })?;
        let types: Vec<i32> = match file.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .as_array()
                .and_then(|a| a.iter().map(|x| x.as_i64().map(|t| t as i32)).collect())
                .ok_or_else(|| {
                    GgufError::Invalid("tokenizer.ggml.token_type is not integers".into())
                })?,
            None => vec![TOKEN_TYPE_NORMAL; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(GgufError::Invalid(format!(
                "{} tokens but {} token types",
                tokens.len(),
                types.len()
            )));
        }
        let merges_text = file.get_str_array("tokenizer.ggml.merges").unwrap_or_default();
        let reverse: HashMap<char, u8> =
            bytes_to_unicode().iter().enumerate().map(|(b, &c)| (c, b as u8)).collect();
        let token_bytes: Vec<Vec<u8>> = tokens
            .iter()
            .zip(&types)
            .map(|(t, &ty)| {
                let mapped: Option<Vec<u8>> = t.chars().map(|c| reverse.get(&c).copied()).collect();
                match mapped {
                    Some(b) if ty != TOKEN_TYPE_CONTROL => b,
                    _ => t.as_bytes().to_vec(),
                }
            })
            .collect();
        let ids: HashMap<&str, u32> =
            tokens.iter().enumerate().map(|(i, t)| (*t, i as u32)).collect();
        let mut merges = Vec::with_capacity(merges_text.len());
        for m in merges_text {
            // llama.cpp splits at the first space after the first character.
            let Some(pos) = m.char_indices().skip(1).find(|&(_, c)| c == ' ').map(|(i, _)| i)
            else {
                continue;
            };
            let (l, r) = (&m[..pos], &m[pos + 1..]);
            let joined = format!("{l}{r}");
            if let (Some(&a), Some(&b), Some(&id)) =
                (ids.get(l), ids.get(r), ids.get(joined.as_str()))
            {
                merges.push((a, b, id));
            }
        }
        let n_tokens = tokens.len();
        let special = |key: &str| file.get_u32(key).filter(|&id| (id as usize) < n_tokens);
        let tokens: Vec<String> = tokens.into_iter().map(str::to_string).collect();
        let split = Regex::new(pre.regex())
            .map_err(|e| GgufError::Invalid(format!("{} split regex: {e}", pre.name())))?;
        let n_merges = merges.len();
        Ok(Bpe::assemble(
            tokens,
            token_bytes,
            types,
            merges,
            n_merges,
            [
                special("tokenizer.ggml.bos_token_id"),
                special("tokenizer.ggml.eos_token_id"),
                special("tokenizer.ggml.eot_token_id"),
            ],
            split,
            pre,
        ))
    }

    /// The same vocabulary with pre-tokenizer `pre` (what the generator writes to
    /// `tokenizer.ggml.pre` and [`Bpe::encode`] splits with).
    pub fn with_pre(mut self, pre: PreTokenizer) -> Result<Bpe, GgufError> {
        self.split = Regex::new(pre.regex())
            .map_err(|e| GgufError::Generate(format!("{} split regex: {e}", pre.name())))?;
        self.text_ids = if pre == PreTokenizer::Llama3 {
            self.tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect()
        } else {
            HashMap::new()
        };
        self.pre = pre;
        Ok(self)
    }

    /// The pre-tokenizer.
    pub fn pre(&self) -> PreTokenizer {
        self.pre
    }

    /// Number of tokens, special ones included.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// Token texts as stored in `tokenizer.ggml.tokens`.
    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }

    /// Token types as stored in `tokenizer.ggml.token_type` (1 normal, 3 control).
    pub fn token_types(&self) -> &[i32] {
        &self.token_types
    }

    /// The raw bytes of token `id` (a special token's bytes are its text).
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.token_bytes.get(id as usize).map(Vec::as_slice)
    }

    /// The id of the token with GGUF text `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.tokens.iter().position(|t| t == text).map(|i| i as u32)
    }

    /// The merges in rank order, as "left right" strings for `tokenizer.ggml.merges`.
    pub fn merges_text(&self) -> Vec<String> {
        self.merges
            .iter()
            .map(|&(a, b, _)| format!("{} {}", self.tokens[a as usize], self.tokens[b as usize]))
            .collect()
    }

    /// Number of merges.
    pub fn n_merges(&self) -> usize {
        self.merges.len()
    }

    /// How many merges were learned from the corpus (the rest are seeded filler).
    pub fn learned_merges(&self) -> usize {
        self.learned_merges
    }

    /// Id of the BOS token (`<|begin_of_text|>` in a trained vocabulary).
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// Id of the EOS token (`<|end_of_text|>` in a trained vocabulary).
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Id of the end-of-turn token (`<|im_end|>` in a trained vocabulary).
    pub fn eot_id(&self) -> Option<u32> {
        self.eot
    }

    /// The control, unknown and user-defined tokens, in id order.
    pub fn special_tokens(&self) -> &[SpecialToken] {
        self.specials.tokens()
    }

    /// Encodes `text` as plain text (no BOS is added): special-token strings in it are
    /// encoded as ordinary text, never as special tokens.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        for piece in split_pieces(&self.split, text) {
            if self.pre == PreTokenizer::Llama3 {
                let mapped: String =
                    piece.bytes().map(|b| bytes_to_unicode()[b as usize]).collect();
                if let Some(&id) = self.text_ids.get(&mapped) {
                    out.push(id);
                    continue;
                }
            }
            self.encode_piece(piece.as_bytes(), &mut out);
        }
        out
    }

    /// Encodes `text` as `llama_tokenize(..., add_special = false, parse_special = true)`
    /// does: the texts of control, unknown and user-defined tokens become those tokens
    /// (found as llama.cpp finds them: [`SpecialMatcher::partition`]), the text between
    /// them is encoded.
    pub fn encode_with_special(&self, text: &str) -> Vec<u32> {
        self.encode_parsing(text, true)
    }

    /// Encodes `text` as `llama_tokenize(..., add_special = false, parse_special)` does:
    /// user-defined tokens' texts become those tokens always, control and unknown
    /// tokens' only with `parse_special`.
    pub fn encode_parsing(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        for fragment in self.specials.partition(text, parse_special) {
            match fragment {
                Fragment::Text(t) => out.extend(self.encode(t)),
                Fragment::Token(id) => out.push(id),
            }
        }
        out
    }

    /// GPT-2's merge loop on one pre-token: repeatedly merge the adjacent pair of lowest
    /// rank, leftmost first. As llama.cpp's `llm_tokenizer_bpe_session` does it: the
    /// adjacent pairs in a heap by (rank, position), the lowest merged first and its new
    /// neighbours pushed, so a piece of n bytes takes O(n log n) (merging every occurrence
    /// of the best pair per pass over the piece took O(n) per merge rank used: a 1.6 MB
    /// word took 21 s).
    fn encode_piece(&self, bytes: &[u8], out: &mut Vec<u32>) {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        const NONE: usize = usize::MAX;
        // A byte without a token (never in a trained vocabulary) is dropped.
        let mut syms: Vec<u32> = bytes.iter().filter_map(|&b| self.byte_ids[b as usize]).collect();
        let n = syms.len();
        if n < 2 {
            out.extend(syms);
            return;
        }
        let mut next: Vec<usize> = (1..=n).map(|j| if j < n { j } else { NONE }).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| if i > 0 { i - 1 } else { NONE }).collect();
        let mut alive = vec![true; n];
        // (rank, left position, left id, right id, merged id), lowest first.
        type Pair = (u32, usize, u32, u32, u32);
        let mut heap: BinaryHeap<Reverse<Pair>> = BinaryHeap::new();
        let pair = |syms: &[u32], i: usize, j: usize| {
            let (a, b) = (syms[i], syms[j]);
            self.ranks.get(&(a, b)).map(|&(r, id)| Reverse((r, i, a, b, id)))
        };
        heap.extend((0..n - 1).filter_map(|i| pair(&syms, i, i + 1)));
        while let Some(Reverse((_, i, a, b, id))) = heap.pop() {
            let j = next[i];
            // Skip a pair one of whose symbols has since been merged away or changed.
            if !alive[i] || j == NONE || syms[i] != a || syms[j] != b {
                continue;
            }
            syms[i] = id;
            alive[j] = false;
            next[i] = next[j];
            if next[j] != NONE {
                prev[next[j]] = i;
            }
            if prev[i] != NONE {
                heap.extend(pair(&syms, prev[i], i));
            }
            if next[i] != NONE {
                heap.extend(pair(&syms, i, next[i]));
            }
        }
        let mut i = 0;
        while i != NONE {
            out.push(syms[i]);
            i = next[i];
        }
    }

    /// The bytes of a token sequence; unknown ids are skipped. Special tokens decode to
    /// their text.
    pub fn decode(&self, ids: &[u32]) -> Vec<u8> {
        let mut out = Vec::new();
        for &id in ids {
            if let Some(b) = self.token_bytes.get(id as usize) {
                out.extend_from_slice(b);
            }
        }
        out
    }
}

/// Splits `text` with the GPT-2 regex. Should the regex engine give up on some input
/// (its backtracking limit), the rest of the text becomes one piece, which still
/// encodes losslessly.
fn split_pieces<'t>(re: &Regex, text: &'t str) -> Vec<&'t str> {
    let mut out = Vec::new();
    let mut last = 0;
    for m in re.find_iter(text) {
        match m {
            Ok(m) => {
                if m.start() > last {
                    out.push(&text[last..m.start()]);
                }
                out.push(m.as_str());
                last = m.end();
            }
            Err(_) => break,
        }
    }
    if last < text.len() {
        out.push(&text[last..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::OnceLock;

    fn bpe() -> &'static Bpe {
        static B: OnceLock<Bpe> = OnceLock::new();
        B.get_or_init(|| Bpe::train(1024, 42).unwrap())
    }

    #[test]
    fn byte_mapping_is_gpt2s() {
        let m = bytes_to_unicode();
        assert_eq!(m[b' ' as usize], 'Ġ');
        assert_eq!(m[b'\n' as usize], 'Ċ');
        assert_eq!(m[b'a' as usize], 'a');
        assert_eq!(m[0], 'Ā');
        assert_eq!(m[0xAD], 'Ń');
        let distinct: HashSet<char> = m.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }

    #[test]
    fn vocabulary_layout() {
        let b = bpe();
        assert_eq!(b.vocab_size(), 1024);
        assert_eq!(b.tokens()[b'a' as usize], "a");
        assert_eq!(b.tokens()[b' ' as usize], "Ġ");
        assert_eq!(b.bos_id(), Some(1020));
        assert_eq!(b.tokens()[1020], BOS_TOKEN);
        assert_eq!(b.eos_id(), Some(1021));
        assert_eq!(b.tokens()[1021], EOS_TOKEN);
        assert_eq!(b.token_id(IM_START_TOKEN), Some(1022));
        assert_eq!(b.eot_id(), Some(1023));
        assert_eq!(b.tokens()[1023], IM_END_TOKEN);
        assert_eq!(b.token_types()[1022], TOKEN_TYPE_CONTROL);
        assert_eq!(b.token_types()[300], TOKEN_TYPE_NORMAL);
        let unique: HashSet<&String> = b.tokens().iter().collect();
        assert_eq!(unique.len(), b.vocab_size(), "token texts must be unique");
        // Frequent English pieces are learned early.
        assert!(b.token_id("Ġthe").is_some_and(|id| id < 400), "{:?}", &b.tokens()[256..300]);
        // Merges are "left right" with both sides tokens, and the result a token.
        for m in b.merges_text() {
            let (l, r) = m.split_once(' ').unwrap();
            assert!(b.token_id(l).is_some() && b.token_id(r).is_some(), "{m}");
            assert!(b.token_id(&format!("{l}{r}")).is_some(), "{m}");
        }
        // Multi-byte characters of the corpus got merged into tokens.
        assert!(b.token_id("é").is_some() || b.token_id("Ã©").is_some());
    }

    #[test]
    fn deterministic_and_any_size() {
        let a = Bpe::train(300, 1).unwrap();
        let b = Bpe::train(300, 1).unwrap();
        assert_eq!(a.tokens(), b.tokens());
        assert_eq!(a.merges_text(), b.merges_text());
        assert!(Bpe::train(259, 1).is_err());
        let min = Bpe::train(260, 1).unwrap();
        assert_eq!(min.n_merges(), 0);
        assert_eq!(min.encode("hi"), [u32::from(b'h'), u32::from(b'i')]);
    }

    #[test]
    fn filler_merges_beyond_the_corpus() {
        let b = Bpe::train(8000, 3).unwrap();
        assert_eq!(b.vocab_size(), 8000);
        assert!(b.learned_merges() > 500 && b.learned_merges() < b.n_merges());
        let c = Bpe::train(8000, 4).unwrap();
        assert_eq!(b.tokens()[..256 + b.learned_merges()], c.tokens()[..256 + c.learned_merges()]);
        assert_ne!(b.tokens(), c.tokens(), "filler merges depend on the seed");
        let unique: HashSet<&String> = b.tokens().iter().collect();
        assert_eq!(unique.len(), 8000);
    }

    #[test]
    fn round_trips_arbitrary_utf8() {
        let b = bpe();
        let texts = [
            "",
            "Hello, world!",
            "The quick brown fox jumps over the lazy dog.",
            "  leading spaces and trailing   ",
            "tabs\tand\nnewlines\r\n\n",
            "café naïve 日本語 Привет 🙂🚀 ∑∫√",
            "fn main() { println!(\"{}\", 1 + 2); }",
            "numbers 1234567890 3.14159 -42 1e-5",
            "it's we've they're I'll he'd",
            "\u{0}\u{1}\u{7f}\u{80}\u{ffff}\u{10ffff}",
        ];
        for t in texts {
            let ids = b.encode(t);
            assert_eq!(b.decode(&ids), t.as_bytes(), "{t:?}");
        }
        // Pseudo-random strings of arbitrary characters.
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(9);
        for _ in 0..200 {
            let len = rng.random_range(0..40);
            let s: String = (0..len)
                .map(|_| {
                    loop {
                        let c = match rng.random_range(0..4) {
                            0 => rng.random_range(0x20..0x7f),
                            1 => rng.random_range(0..0x20),
                            2 => rng.random_range(0x80..0x800),
                            _ => rng.random_range(0x800..0x110000),
                        };
                        if let Some(c) = char::from_u32(c) {
                            break c;
                        }
                    }
                })
                .collect();
            assert_eq!(b.decode(&b.encode(&s)), s.as_bytes(), "{s:?}");
        }
    }

    #[test]
    fn merges_are_used() {
        let b = bpe();
        let text = "The quick brown fox jumps over the lazy dog.";
        let ids = b.encode(text);
        assert!(ids.len() < text.len() / 2, "{} tokens for {} bytes", ids.len(), text.len());
        assert!(ids.iter().any(|&id| id >= 256));
        let the = b.token_id("Ġthe").unwrap();
        assert!(b.encode(" the").contains(&the));
        // Pre-tokenization keeps words apart: no token spans "x y".
        for id in b.encode("hello world") {
            let t = b.token_bytes(id).unwrap();
            assert!(!t[1..].contains(&b' '));
        }
    }

    /// One pre-token of 4 MB (random letters: a single GPT-2 piece) is merged in
    /// seconds: the heap takes O(n log n); a pass per merge rank took minutes.
    #[test]
    fn a_word_of_four_megabytes_encodes_in_seconds() {
        let b = Bpe::train(32_000, 3).unwrap();
        let word = crate::test_texts::random_word("abcdefghijklmnopqrstuvwxyz", 4 << 20, 1);
        let started = std::time::Instant::now();
        let ids = b.encode(&word);
        let took = started.elapsed();
        assert_eq!(b.decode(&ids), word.as_bytes());
        assert!(ids.len() < word.len(), "merges applied");
        assert!(took < std::time::Duration::from_secs(30), "took {took:?}");
    }

    #[test]
    fn special_tokens() {
        let b = bpe();
        let ids = b.encode_with_special("<|im_start|>user\nhi<|im_end|>");
        assert_eq!(ids[0], 1022);
        assert_eq!(*ids.last().unwrap(), 1023);
        assert_eq!(b.decode(&ids), b"<|im_start|>user\nhi<|im_end|>");
        // As plain text they are not special.
        assert!(!b.encode("<|im_end|>").contains(&1023));
    }

    #[test]
    fn gpt2_split() {
        let re = Regex::new(GPT2_SPLIT_REGEX).unwrap();
        assert_eq!(
            split_pieces(&re, "Hello world's  3.5 café!!\n\n  x"),
            ["Hello", " world", "'s", " ", " 3", ".", "5", " café", "!!", "\n\n ", " x"]
        );
    }
}
