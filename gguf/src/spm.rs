//! A SentencePiece vocabulary (`tokenizer.ggml.model = "llama"`) trained on the embedded
//! corpus, as Gemma, Phi-3 and Llama 2 files hold one.
//!
//! SentencePiece's BPE model, as llama.cpp reads it: every piece has a score, and the
//! tokenizer starts from the UTF-8 characters of the text (spaces written as `▁`,
//! U+2581) and repeatedly merges the adjacent pair whose concatenation is a piece of the
//! highest score (the leftmost on ties); characters that are no piece become byte
//! tokens `<0x00>`..`<0xFF>` (byte fallback).
//!
//! Training is BPE over the corpus split at whitespace, as SentencePiece does: each word
//! starts with its `▁`, newlines stand alone, and a merge never crosses a word. Piece `k`
//! (the k-th merge) gets score `-k`, so the tokenizer replays the merges in training
//! order. The corpus's characters are pieces too (scored below every merge). When the
//! corpus has no pair left to merge, seeded filler pieces join two existing pieces, so
//! every token is text and a model with random weights generates text, not control
//! tokens.
//!
//! Special tokens and layout ([`SpecialStyle`]):
//!
//! - Gemma: `<pad>` 0, `<eos>` 1, `<bos>` 2, `<unk>` 3, `<mask>` 4, `<start_of_turn>` 5,
//!   `<end_of_turn>` 6 (all CONTROL, score -1000), then the 256 byte tokens (BYTE), then
//!   the pieces; `add_space_prefix` false; llama.cpp takes `<end_of_turn>` as the
//!   end-of-turn token by its text.
//! - Phi-3: `<unk>` 0 (UNKNOWN), `<s>` 1, `</s>` 2 (CONTROL), the byte tokens, the
//!   pieces, then `<|endoftext|>` (EOS), `<|assistant|>`, `<|end|>` (end of turn),
//!   `<|user|>`, `<|system|>` (CONTROL), as Phi-3's added tokens.
//! - Llama (Llama 2 style): `<unk>`, `<s>`, `</s>`, the byte tokens, the pieces.

use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::corpus::CORPUS;
use crate::error::GgufError;
use crate::types::{Value, ValueType};
use crate::writer::GgufBuilder;

/// The word-boundary marker SentencePiece writes for a space (U+2581).
pub const SPACE: char = '\u{2581}';

/// llama.cpp's token types (`llama_token_type`): normal.
pub const TOKEN_TYPE_NORMAL: i32 = 1;
/// Unknown (`<unk>` in Llama-style vocabularies).
pub const TOKEN_TYPE_UNKNOWN: i32 = 2;
/// Control (BOS, EOS, turn markers).
pub const TOKEN_TYPE_CONTROL: i32 = 3;
/// User-defined (parsed as special, like control tokens).
pub const TOKEN_TYPE_USER_DEFINED: i32 = 4;
/// Byte fallback tokens `<0xXX>`.
pub const TOKEN_TYPE_BYTE: i32 = 6;

/// The score of Gemma's special tokens, as its files have it.
const GEMMA_SPECIAL_SCORE: f32 = -1000.0;

/// Gemma's chat format (`<start_of_turn>user ... <end_of_turn>`), the Gemma 3 template
/// for text content: a system message is prepended to the first user turn.
pub const GEMMA_TEMPLATE: &str = "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}\
{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\
{%- set loop_messages = messages[1:] -%}{%- else -%}{%- set first_user_prefix = \"\" -%}\
{%- set loop_messages = messages -%}{%- endif -%}{%- for message in loop_messages -%}\
{%- if (message['role'] == 'assistant') -%}{%- set role = \"model\" -%}{%- else -%}\
{%- set role = message['role'] -%}{%- endif -%}\
{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\
{{ message['content'] | trim }}{{ '<end_of_turn>\\n' }}{%- endfor -%}\
{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}";

/// Phi-3's chat format (`<|user|>\n...<|end|>\n<|assistant|>\n`).
pub const PHI3_TEMPLATE: &str = "{% for message in messages %}\
{% if message['role'] == 'system' %}{{'<|system|>\\n' + message['content'] + '<|end|>\\n'}}\
{% elif message['role'] == 'user' %}{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}\
{% elif message['role'] == 'assistant' %}{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}\
{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}\
{% else %}{{ eos_token }}{% endif %}";

/// Llama 2's chat format (`[INST] ... [/INST]`).
pub const LLAMA2_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}\
{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}\
{% elif message['role'] == 'system' %}{{ '<<SYS>>\\n' + message['content'] + '\\n<</SYS>>\\n\\n' }}\
{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + ' ' + eos_token }}\
{% endif %}{% endfor %}";

/// Whether llama.cpp applies its Phi-3 special-token quirk to a model of this
/// `general.name` (it contains "phi-3" or "phi3", in any case): see
/// [`Spm::rstrip_specials`].
pub fn is_phi3_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.contains("phi-3") || n.contains("phi3")
}

/// Which family's special tokens and conventions the vocabulary follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpecialStyle {
    /// Gemma 2 / 3: `<pad>`, `<eos>`, `<bos>`, `<unk>`, `<mask>`, `<start_of_turn>`,
    /// `<end_of_turn>` first; no space prefix.
    Gemma,
    /// Phi-3: `<unk>`, `<s>`, `</s>` first, Phi-3's chat tokens last.
    Phi3,
    /// Llama 2: `<unk>`, `<s>`, `</s>`.
    Llama,
}

impl SpecialStyle {
    /// The special tokens before the byte tokens: (text, token type, score).
    fn leading(self) -> Vec<(&'static str, i32, f32)> {
        match self {
            SpecialStyle::Gemma => {
                ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
                    .into_iter()
                    .map(|t| (t, TOKEN_TYPE_CONTROL, GEMMA_SPECIAL_SCORE))
                    .collect()
            }
            SpecialStyle::Phi3 | SpecialStyle::Llama => vec![
                ("<unk>", TOKEN_TYPE_UNKNOWN, 0.0),
                ("<s>", TOKEN_TYPE_CONTROL, 0.0),
                ("</s>", TOKEN_TYPE_CONTROL, 0.0),
            ],
        }
    }

    /// The special tokens after the pieces (Phi-3's added tokens).
    fn trailing(self) -> &'static [&'static str] {
        match self {
            SpecialStyle::Phi3 => {
                &["<|endoftext|>", "<|assistant|>", "<|end|>", "<|user|>", "<|system|>"]
            }
            SpecialStyle::Gemma | SpecialStyle::Llama => &[],
        }
    }

    /// Whether llama.cpp prepends `▁` to the text (`tokenizer.ggml.add_space_prefix`).
    pub fn add_space_prefix(self) -> bool {
        self != SpecialStyle::Gemma
    }

    fn bos(self) -> &'static str {
        match self {
            SpecialStyle::Gemma => "<bos>",
            _ => "<s>",
        }
    }

    fn eos(self) -> &'static str {
        match self {
            SpecialStyle::Gemma => "<eos>",
            SpecialStyle::Phi3 => "<|endoftext|>",
            SpecialStyle::Llama => "</s>",
        }
    }

    /// The end-of-turn token, if the style has one.
    fn eot(self) -> Option<&'static str> {
        match self {
            SpecialStyle::Gemma => Some("<end_of_turn>"),
            SpecialStyle::Phi3 => Some("<|end|>"),
            SpecialStyle::Llama => None,
        }
    }

    fn template(self) -> &'static str {
        match self {
            SpecialStyle::Gemma => GEMMA_TEMPLATE,
            SpecialStyle::Phi3 => PHI3_TEMPLATE,
            SpecialStyle::Llama => LLAMA2_TEMPLATE,
        }
    }
}

/// A SentencePiece vocabulary: trained ([`Spm::train`]) or read from a file
/// ([`Spm::from_gguf`]).
#[derive(Debug, Clone)]
pub struct Spm {
    /// The style it was trained in; `None` when read from a file.
    style: Option<SpecialStyle>,
    tokens: Vec<String>,
    scores: Vec<f32>,
    types: Vec<i32>,
    ids: HashMap<String, u32>,
    learned: usize,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    eot: Option<u32>,
    pad: Option<u32>,
    add_space_prefix: bool,
    rstrip_specials: bool,
}

/// The corpus cut into SentencePiece "words": `▁` + word, or a lone newline; the
/// pieces never cross these.
fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in text.chars() {
        match c {
            ' ' => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                cur.push(SPACE);
            }
            '\n' => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                out.push("\n".into());
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

impl Spm {
    /// Trains a vocabulary of exactly `vocab_size` tokens on the embedded corpus. The
    /// same size, style and seed (for the filler pieces) always give the same vocabulary.
    pub fn train(vocab_size: usize, style: SpecialStyle, seed: u64) -> Result<Spm, GgufError> {
        let fixed = style.leading().len() + 256 + style.trailing().len();
        // Every character of the corpus must fit, and room for some merges.
        let mut counts: HashMap<String, u64> = HashMap::new();
        for w in words(CORPUS) {
            *counts.entry(w).or_insert(0) += 1;
        }
        let mut chars: Vec<char> = counts.keys().flat_map(|w| w.chars()).collect();
        chars.sort_unstable();
        chars.dedup();
        let min = fixed + chars.len() + 1;
        if vocab_size < min {
            return Err(GgufError::Generate(format!(
                "a {style:?} SentencePiece vocabulary needs at least {min} tokens ({} special, \
                 256 bytes, {} characters of the corpus), not {vocab_size}",
                fixed - 256,
                chars.len()
            )));
        }
        let n_pieces = vocab_size - fixed;

        // BPE over the words: symbols are indices into `pieces`.
        let mut pieces: Vec<String> = chars.iter().map(char::to_string).collect();
        let mut index: HashMap<String, usize> =
            pieces.iter().enumerate().map(|(i, p)| (p.clone(), i)).collect();
        let mut corpus: Vec<(Vec<usize>, u64)> = {
            let mut v: Vec<(String, u64)> = counts.into_iter().collect();
            v.sort_unstable();
            v.into_iter()
                .map(|(w, n)| (w.chars().map(|c| index[&c.to_string()]).collect(), n))
                .collect()
        };
        let mut merged: Vec<String> = Vec::new();
        let mut pairs: HashMap<(usize, usize), u64> = HashMap::new();
        for (syms, n) in &corpus {
            for w in syms.windows(2) {
                *pairs.entry((w[0], w[1])).or_default() += n;
            }
        }
        // Merge until every word is one piece (or the vocabulary is full).
        while pieces.len() < n_pieces {
            // The most frequent pair, ties broken by the text of the new piece, then by
            // the pair (two pairs can spell the same piece).
            let best = pairs
                .iter()
                .map(|(&(a, b), &n)| (n, format!("{}{}", pieces[a], pieces[b]), a, b))
                .max_by(|x, y| {
                    x.0.cmp(&y.0).then_with(|| y.1.cmp(&x.1)).then_with(|| y.2.cmp(&x.2))
                });
            let Some((_, text, a, b)) = best else { break };
            let id = match index.get(&text) {
                Some(&id) => id,
                None => {
                    pieces.push(text.clone());
                    index.insert(text.clone(), pieces.len() - 1);
                    merged.push(text);
                    pieces.len() - 1
                }
            };
            for (syms, n) in &mut corpus {
                if !syms.windows(2).any(|w| w[0] == a && w[1] == b) {
                    continue;
                }
                for w in syms.windows(2) {
                    if let Some(c) = pairs.get_mut(&(w[0], w[1])) {
                        *c -= *n;
                    }
                }
                let mut out = Vec::with_capacity(syms.len());
                let mut i = 0;
                while i < syms.len() {
                    if i + 1 < syms.len() && syms[i] == a && syms[i + 1] == b {
                        out.push(id);
                        i += 2;
                    } else {
                        out.push(syms[i]);
                        i += 1;
                    }
                }
                for w in out.windows(2) {
                    *pairs.entry((w[0], w[1])).or_default() += *n;
                }
                *syms = out;
            }
            pairs.retain(|_, c| *c > 0);
        }
        let learned = merged.len();

        // Filler: two existing pieces joined, the right one not starting a word.
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x7370_6d5f_6669_6c6c);
        let mut guard = 0usize;
        while pieces.len() < n_pieces {
            let a = &pieces[rng.random_range(0..pieces.len())];
            let b = &pieces[rng.random_range(0..pieces.len())];
            guard += 1;
            if guard > 1000 * n_pieces + 1_000_000 {
                return Err(GgufError::Generate(format!(
                    "could not find new pieces to reach {vocab_size} tokens"
                )));
            }
            // Keep the pieces plausible: `▁` only starts one, no newlines, none huge.
            if b.starts_with(SPACE) || a == "\n" || b == "\n" || a.len() + b.len() > 24 {
                continue;
            }
            let text = format!("{a}{b}");
            if index.contains_key(&text) {
                continue;
            }
            index.insert(text.clone(), pieces.len());
            pieces.push(text.clone());
            merged.push(text);
        }

        // Layout: leading specials, bytes, merged pieces best first, characters, trailing
        // specials. Scores: merges -k; characters below every merge.
        let mut tokens = Vec::with_capacity(vocab_size);
        let mut scores = Vec::with_capacity(vocab_size);
        let mut types = Vec::with_capacity(vocab_size);
        for (t, ty, score) in style.leading() {
            tokens.push(t.to_string());
            types.push(ty);
            scores.push(score);
        }
        for byte in 0..=255u8 {
            tokens.push(format!("<0x{byte:02X}>"));
            types.push(TOKEN_TYPE_BYTE);
            scores.push(0.0);
        }
        for (k, p) in merged.iter().enumerate() {
            tokens.push(p.clone());
            types.push(TOKEN_TYPE_NORMAL);
            scores.push(-(k as f32));
        }
        for (k, c) in chars.iter().enumerate() {
            tokens.push(c.to_string());
            types.push(TOKEN_TYPE_NORMAL);
            scores.push(-((merged.len() + k) as f32));
        }
        for t in style.trailing() {
            tokens.push((*t).to_string());
            types.push(TOKEN_TYPE_CONTROL);
            scores.push(0.0);
        }
        debug_assert_eq!(tokens.len(), vocab_size);
        let ids: HashMap<String, u32> =
            tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let id = |t: &str| ids.get(t).copied();
        let pad = match style {
            SpecialStyle::Gemma => id("<pad>"),
            SpecialStyle::Phi3 => id(style.eos()),
            SpecialStyle::Llama => None,
        };
        Ok(Spm {
            style: Some(style),
            bos: id(style.bos()),
            eos: id(style.eos()),
            unk: id("<unk>"),
            eot: style.eot().and_then(id),
            pad,
            add_space_prefix: style.add_space_prefix(),
            rstrip_specials: false,
            tokens,
            scores,
            types,
            ids,
            learned,
        })
    }

    /// Reads the SentencePiece vocabulary of a GGUF file (`tokenizer.ggml.model`
    /// "llama": tokens, scores, token types, the special ids, `add_space_prefix`), to
    /// tokenize as llama.cpp does.
    pub fn from_gguf(file: &crate::reader::GgufFile) -> Result<Spm, GgufError> {
        let model = file.get_str("tokenizer.ggml.model").unwrap_or("");
        if model != "llama" {
            return Err(GgufError::Invalid(format!(
                "tokenizer.ggml.model is '{model}', not SentencePiece ('llama')"
            )));
        }
        let tokens: Vec<String> = file
            .get_str_array("tokenizer.ggml.tokens")
            .ok_or_else(|| {
                GgufError::Invalid("tokenizer.ggml.tokens is missing or not strings".into())
            })?
            .into_iter()
            .map(str::to_string)
            .collect();
        let n = tokens.len();
        let numbers = |key: &str| -> Result<Option<Vec<f64>>, GgufError> {
            let Some(v) = file.get(key) else { return Ok(None) };
            let values = v
                .as_array()
                .and_then(|a| a.iter().map(Value::as_f64).collect::<Option<Vec<f64>>>())
                .ok_or_else(|| GgufError::Invalid(format!("{key} is not an array of numbers")))?;
            if values.len() != n {
                return Err(GgufError::Invalid(format!(
                    "{n} tokens but {} values in {key}",
                    values.len()
                )));
            }
            Ok(Some(values))
        };
        let scores: Vec<f32> = numbers("tokenizer.ggml.scores")?
            .map_or_else(|| vec![0.0; n], |v| v.into_iter().map(|x| x as f32).collect());
        let types: Vec<i32> = numbers("tokenizer.ggml.token_type")?.map_or_else(
            || vec![TOKEN_TYPE_NORMAL; n],
            |v| v.into_iter().map(|x| x as i32).collect(),
        );
        let special = |key: &str| file.get_u32(key).filter(|&id| (id as usize) < n);
        let ids: HashMap<String, u32> =
            tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        // llama.cpp takes a token spelled like an end of turn as the end of turn.
        let eot = special("tokenizer.ggml.eot_token_id").or_else(|| {
            ["<end_of_turn>", "<|end|>", "<|eot_id|>", "<|im_end|>"]
                .iter()
                .find_map(|t| ids.get(*t).copied())
        });
        Ok(Spm {
            style: None,
            bos: special("tokenizer.ggml.bos_token_id"),
            eos: special("tokenizer.ggml.eos_token_id"),
            unk: special("tokenizer.ggml.unknown_token_id"),
            eot,
            pad: special("tokenizer.ggml.padding_token_id"),
            add_space_prefix: file.get_bool("tokenizer.ggml.add_space_prefix").unwrap_or(true),
            rstrip_specials: file.get_str("general.name").is_some_and(is_phi3_name),
            learned: 0,
            tokens,
            scores,
            types,
            ids,
        })
    }

    /// The special-token style it was trained in (`None` when read from a file).
    pub fn style(&self) -> Option<SpecialStyle> {
        self.style
    }

    /// Whether a `▁` is prepended to the text (and after each special token).
    pub fn add_space_prefix(&self) -> bool {
        self.add_space_prefix
    }

    /// Whether [`Spm::encode_with_special`] drops the whitespace after special tokens
    /// other than `<unk>`, `<s>` and `<|endoftext|>`, as llama.cpp does for a model whose
    /// `general.name` contains "phi-3" or "phi3" (whatever its vocabulary).
    /// [`Spm::from_gguf`] sets it from the file's name; a trained vocabulary starts
    /// without it.
    pub fn rstrip_specials(&self) -> bool {
        self.rstrip_specials
    }

    /// Sets [`Spm::rstrip_specials`] (for a file whose `general.name` will be
    /// `name`, `Spm::set_rstrip_specials(is_phi3_name(name))`).
    pub fn set_rstrip_specials(&mut self, on: bool) {
        self.rstrip_specials = on;
    }

    /// Number of tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// Token texts (pieces with `▁` for spaces, `<0xXX>` byte tokens, specials).
    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }

    /// Token scores (`tokenizer.ggml.scores`).
    pub fn scores(&self) -> &[f32] {
        &self.scores
    }

    /// Token types (`tokenizer.ggml.token_type`, llama.cpp's numbering).
    pub fn token_types(&self) -> &[i32] {
        &self.types
    }

    /// Pieces learned from the corpus (the rest of the normal pieces are filler).
    pub fn learned_pieces(&self) -> usize {
        self.learned
    }

    /// The id of a token text.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    /// BOS id.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// EOS id.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// `<unk>` id.
    pub fn unk_id(&self) -> Option<u32> {
        self.unk
    }

    /// End-of-turn id (`<end_of_turn>`, `<|end|>`), if there is one.
    pub fn eot_id(&self) -> Option<u32> {
        self.eot
    }

    /// Padding id, if there is one.
    pub fn pad_id(&self) -> Option<u32> {
        self.pad
    }

    /// Tokenizes `text` (no special-token parsing, no BOS) as llama.cpp's SPM tokenizer
    /// does: spaces to `▁`, a leading `▁` when the vocabulary adds a space prefix, then
    /// the highest-scoring merges, then byte fallback.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.encode_fragment(text, self.add_space_prefix)
    }

    /// Tokenizes `text` as `llama_tokenize(..., add_special = false, parse_special =
    /// true)` does: the texts of control, user-defined and unknown tokens become those
    /// tokens (longest first), and the text between them is encoded, with a `▁` prefix
    /// after each special token when the vocabulary adds a space prefix. Add BOS
    /// yourself ([`Spm::bos_id`]).
    pub fn encode_with_special(&self, text: &str) -> Vec<u32> {
        use crate::special::{Fragment as Frag, SpecialMatcher};
        let frags = SpecialMatcher::from_vocab(&self.tokens, &self.types, self.rstrip_specials)
            .partition(text, true);
        let mut out = Vec::new();
        let mut prev_special = true;
        for f in frags {
            match f {
                Frag::Text(t) => {
                    out.extend(self.encode_fragment(t, self.add_space_prefix && prev_special));
                    prev_special = false;
                }
                Frag::Token(id) => {
                    out.push(id);
                    prev_special = true;
                }
            }
        }
        out
    }

    fn encode_fragment(&self, text: &str, space_prefix: bool) -> Vec<u32> {
        if text.is_empty() {
            return Vec::new();
        }
        let mut s = String::with_capacity(text.len() + 3);
        if space_prefix {
            s.push(SPACE);
        }
        s.extend(text.chars().map(|c| if c == ' ' { SPACE } else { c }));
        let syms: Vec<&str> =
            merge_by_score(&s, |piece| self.ids.get(piece).map(|&id| self.scores[id as usize]))
                .into_iter()
                .map(|r| &s[r])
                .collect();
        let mut out = Vec::with_capacity(syms.len());
        for sym in syms {
            match self.ids.get(sym) {
                Some(&id) => out.push(id),
                None => {
                    out.extend(sym.bytes().filter_map(|b| {
                        self.ids.get(&format!("<0x{b:02X}>")).copied().or(self.unk)
                    }));
                }
            }
        }
        out
    }

    /// The bytes of tokens, as llama.cpp's detokenizer gives them without special
    /// tokens: `▁` to a space, byte tokens to their byte, control tokens to nothing, and
    /// the space prefix removed from the start.
    pub fn decode(&self, ids: &[u32]) -> Vec<u8> {
        let mut out = Vec::new();
        for &id in ids {
            let Some(t) = self.tokens.get(id as usize) else { continue };
            match self.types[id as usize] {
                TOKEN_TYPE_BYTE => {
                    if let Ok(b) = u8::from_str_radix(&t[3..5], 16) {
                        out.push(b);
                    }
                }
                TOKEN_TYPE_NORMAL => {
                    out.extend(t.replace(SPACE, " ").bytes());
                }
                _ => {}
            }
        }
        if self.add_space_prefix && out.first() == Some(&b' ') {
            out.remove(0);
        }
        out
    }

    /// Writes the `tokenizer.*` keys: model `llama`, pre `default`, tokens, scores,
    /// types, the special ids, `add_bos_token` true, `add_eos_token` false,
    /// `add_space_prefix` (Gemma: false), and the chat template (`template`, else the
    /// style's; Llama 2's for a vocabulary read from a file).
    pub fn add_metadata(
        &self,
        b: &mut GgufBuilder,
        template: Option<&str>,
    ) -> Result<(), GgufError> {
        b.add_metadata("tokenizer.ggml.model", Value::String("llama".into()))?;
        b.add_metadata("tokenizer.ggml.pre", Value::String("default".into()))?;
        b.add_metadata("tokenizer.ggml.tokens", Value::string_array(self.tokens.iter().cloned()))?;
        b.add_metadata(
            "tokenizer.ggml.scores",
            Value::Array {
                elem_type: ValueType::F32,
                values: self.scores.iter().map(|&s| Value::F32(s)).collect(),
            },
        )?;
        b.add_metadata("tokenizer.ggml.token_type", Value::i32_array(self.types.iter().copied()))?;
        let ids = [
            ("tokenizer.ggml.bos_token_id", self.bos),
            ("tokenizer.ggml.eos_token_id", self.eos),
            ("tokenizer.ggml.unknown_token_id", self.unk),
            ("tokenizer.ggml.padding_token_id", self.pad),
            ("tokenizer.ggml.eot_token_id", self.eot),
        ];
        for (key, id) in ids {
            if let Some(id) = id {
                b.add_metadata(key, Value::U32(id))?;
            }
        }
        b.add_metadata("tokenizer.ggml.add_bos_token", Value::Bool(self.bos.is_some()))?;
        b.add_metadata("tokenizer.ggml.add_eos_token", Value::Bool(false))?;
        if !self.add_space_prefix {
            b.add_metadata("tokenizer.ggml.add_space_prefix", Value::Bool(false))?;
        }
        let template =
            template.unwrap_or_else(|| self.style.unwrap_or(SpecialStyle::Llama).template());
        b.add_metadata("tokenizer.chat_template", Value::String(template.into()))?;
        Ok(())
    }
}

/// llama.cpp's SentencePiece merge (`llm_tokenizer_spm_session`) over `text`: start from
/// its characters and repeatedly join the adjacent pair whose joined text is a token
/// (`score_of` gives its score) with the highest score, the leftmost among equals. The
/// pairs wait in a heap and a popped pair whose symbols have since changed is skipped (its
/// size no longer matches), so a text of n characters takes O(n log n); rescanning every
/// pair after each merge was quadratic (80,000 letters: 16 s). The symbols, as byte ranges
/// of `text`, in order.
pub fn merge_by_score(
    text: &str,
    score_of: impl Fn(&str) -> Option<f32>,
) -> Vec<std::ops::Range<usize>> {
    const NONE: usize = usize::MAX;
    let mut spans: Vec<(usize, usize)> = Vec::with_capacity(text.len());
    let mut starts = text.char_indices().map(|(i, _)| i).peekable();
    while let Some(a) = starts.next() {
        spans.push((a, starts.peek().copied().unwrap_or(text.len())));
    }
    let n = spans.len();
    let mut next: Vec<usize> = (1..=n).map(|j| if j < n { j } else { NONE }).collect();
    let mut prev: Vec<usize> = (0..n).map(|i| if i > 0 { i - 1 } else { NONE }).collect();
    let mut heap = std::collections::BinaryHeap::new();
    let bigram = |spans: &[(usize, usize)], left: usize, right: usize| {
        let joined = &text[spans[left].0..spans[right].1];
        score_of(joined).map(|score| Bigram { score, left, right, size: joined.len() })
    };
    heap.extend((1..n).filter_map(|i| bigram(&spans, i - 1, i)));
    while let Some(b) = heap.pop() {
        let (l, r) = (spans[b.left], spans[b.right]);
        if l.0 == l.1 || r.0 == r.1 || (l.1 - l.0) + (r.1 - r.0) != b.size {
            continue;
        }
        spans[b.left].1 = r.1;
        spans[b.right] = (r.1, r.1);
        next[b.left] = next[b.right];
        if next[b.right] != NONE {
            prev[next[b.right]] = b.left;
        }
        if prev[b.left] != NONE {
            heap.extend(bigram(&spans, prev[b.left], b.left));
        }
        if next[b.left] != NONE {
            heap.extend(bigram(&spans, b.left, next[b.left]));
        }
    }
    let mut out = Vec::new();
    let mut i = if n > 0 { 0 } else { NONE };
    while i != NONE {
        out.push(spans[i].0..spans[i].1);
        i = next[i];
    }
    out
}

/// A pair of adjacent symbols whose joined text is a token, in [`merge_by_score`]'s heap:
/// the highest score first, the leftmost among equal scores (llama.cpp's order).
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.score.total_cmp(&other.score).then(other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Bigram {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_sizes() {
        for (style, n) in
            [(SpecialStyle::Gemma, 512), (SpecialStyle::Phi3, 1000), (SpecialStyle::Llama, 4096)]
        {
            let s = Spm::train(n, style, 1).unwrap();
            assert_eq!(s.vocab_size(), n);
            assert_eq!(s.scores().len(), n);
            assert_eq!(s.token_types().len(), n);
            let lead = style.leading().len();
            assert_eq!(s.tokens()[lead], "<0x00>");
            assert_eq!(s.tokens()[lead + 255], "<0xFF>");
            let mut uniq = s.tokens().to_vec();
            uniq.sort();
            uniq.dedup();
            assert_eq!(uniq.len(), n, "token texts are unique");
            assert!(s.learned_pieces() > 0);
        }
        let g = Spm::train(512, SpecialStyle::Gemma, 1).unwrap();
        assert_eq!(
            (g.bos_id(), g.eos_id(), g.unk_id(), g.eot_id(), g.pad_id()),
            (Some(2), Some(1), Some(3), Some(6), Some(0))
        );
        let p = Spm::train(1000, SpecialStyle::Phi3, 1).unwrap();
        assert_eq!((p.unk_id(), p.bos_id(), p.eos_id()), (Some(0), Some(1), Some(995)));
        assert_eq!(p.eot_id(), Some(997));
        assert!(
            Spm::train(300, SpecialStyle::Gemma, 1).unwrap_err().to_string().contains("at least")
        );
    }

    #[test]
    fn same_inputs_same_vocabulary() {
        let a = Spm::train(3000, SpecialStyle::Gemma, 5).unwrap();
        let b = Spm::train(3000, SpecialStyle::Gemma, 5).unwrap();
        let c = Spm::train(3000, SpecialStyle::Gemma, 6).unwrap();
        assert_eq!(a.tokens(), b.tokens());
        assert_eq!(a.scores(), b.scores());
        assert_ne!(a.tokens(), c.tokens(), "filler depends on the seed");
    }

    #[test]
    fn encodes_words_into_few_pieces_and_round_trips() {
        let s = Spm::train(4096, SpecialStyle::Gemma, 0).unwrap();
        let ids = s.encode("The quick brown fox jumps over the lazy dog.");
        assert!(ids.len() <= 12, "{ids:?}");
        let the = s.token_id("\u{2581}the").expect("▁the is a piece");
        assert!(ids.contains(&the));
        for text in ["Hello world, the café is open.", "naïve 日本語 🙂 ~!@#", "a\n\n  b\tc", "Ω"]
        {
            let ids = s.encode(text);
            assert_eq!(s.decode(&ids), text.as_bytes(), "{text:?} -> {ids:?}");
        }
        // A character outside the corpus falls back to its bytes.
        let ids = s.encode("\u{10348}");
        assert_eq!(ids.len(), 4);
        assert!(ids.iter().all(|&i| s.token_types()[i as usize] == TOKEN_TYPE_BYTE));
        let l = Spm::train(1000, SpecialStyle::Llama, 0).unwrap();
        let ids = l.encode("Hello world");
        assert!(l.tokens()[ids[0] as usize].starts_with(SPACE));
        assert_eq!(l.decode(&ids), b"Hello world");
    }

    #[test]
    fn scores_order_merges() {
        let s = Spm::train(2000, SpecialStyle::Llama, 0).unwrap();
        let normal: Vec<f32> = s
            .token_types()
            .iter()
            .zip(s.scores())
            .filter(|(t, _)| **t == TOKEN_TYPE_NORMAL)
            .map(|(_, &sc)| sc)
            .collect();
        assert!(normal.windows(2).all(|w| w[0] > w[1]), "normal pieces best first");
    }

    #[test]
    fn special_tokens_parse_like_llama_cpp() {
        let g = Spm::train(1024, SpecialStyle::Gemma, 2).unwrap();
        let ids = g.encode_with_special("<start_of_turn>user\nHi<end_of_turn>\n");
        assert_eq!(ids.first(), g.token_id("<start_of_turn>").as_ref());
        assert!(ids.contains(&g.eot_id().unwrap()));
        assert_eq!(g.decode(&ids), b"user\nHi\n");
        // With a space prefix, text after a special token gets its `▁` again.
        let mut p = Spm::train(1024, SpecialStyle::Phi3, 2).unwrap();
        let ids = p.encode_with_special("<|user|>Hi<|end|>");
        assert_eq!(ids[1..ids.len() - 1], p.encode("Hi")[..]);
        // llama.cpp's Phi-3 quirk: whitespace after <|user|> and <|end|> is dropped.
        let plain = p.encode_with_special("<|user|>\n Hi<|end|>\n");
        p.set_rstrip_specials(true);
        let stripped = p.encode_with_special("<|user|>\n Hi<|end|>\n");
        assert_eq!(stripped, p.encode_with_special("<|user|>Hi<|end|>"));
        assert!(plain.len() > stripped.len());
        assert!(is_phi3_name("Phi-3 mini") && is_phi3_name("corral-random-phi3-tiny"));
    }

    #[test]
    fn a_vocabulary_read_from_a_file_tokenizes_the_same() {
        for style in [SpecialStyle::Gemma, SpecialStyle::Phi3, SpecialStyle::Llama] {
            let s = Spm::train(800, style, 3).unwrap();
            let mut b = GgufBuilder::new();
            b.add_metadata("general.architecture", Value::String("llama".into())).unwrap();
            s.add_metadata(&mut b, None).unwrap();
            let bytes = b.begin(Vec::new()).unwrap().finish().unwrap();
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("v.gguf");
            std::fs::write(&path, bytes).unwrap();
            let f = crate::reader::GgufFile::open(&path).unwrap();
            let r = Spm::from_gguf(&f).unwrap();
            assert_eq!(r.tokens(), s.tokens());
            assert_eq!((r.bos_id(), r.eos_id(), r.eot_id()), (s.bos_id(), s.eos_id(), s.eot_id()));
            assert_eq!(r.add_space_prefix(), s.add_space_prefix());
            for text in ["Hello world, the café is open.", "<|user|>x<end_of_turn> y"] {
                assert_eq!(r.encode(text), s.encode(text));
                assert_eq!(r.encode_with_special(text), s.encode_with_special(text));
            }
        }
    }
}
