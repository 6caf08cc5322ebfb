//! Long texts tokenized in pieces, so that llama.cpp's special-token pass stays linear.
//!
//! `llama_tokenize` first cuts the text at every special-token text it parses (control,
//! user-defined and unknown tokens: `tokenizer_st_partition`), keeping the pieces in a
//! `std::forward_list` that it walks from the front on every match; the pass is
//! quadratic in the number of matches. On the real Gemma 3 vocabulary a chat of 32,000
//! short turns (64,000 `<start_of_turn>`/`<end_of_turn>` texts, 1.2 MB) took 118 s, so
//! one request could hold an engine for minutes. This module finds where the text can be
//! cut without changing the result and the model tokenizes the pieces one by one.
//!
//! A cut is exact just before any special-token text that llama.cpp takes as a token,
//! unless that token strips the whitespace to its left: llama.cpp splits the text there
//! itself, and each side, tokenized alone, is cut at the same places (an occurrence taken
//! in the whole text is not overlapped by one taken before it, so none crosses the cut;
//! on each side every token finds the same leftmost occurrences in the same gaps). Which
//! occurrences llama.cpp takes is [`corral_gguf::special::SpecialMatcher::find`], the
//! same code the cpu engine tokenizes with. Text between special tokens is tokenized as a
//! separate fragment either way, and (SentencePiece) after a special token with the same
//! space prefix at the start of a call as in the middle. The first piece keeps the tokens
//! `add_special` adds in front and the last the ones it adds at the end ([`Affixes`]).
//! Token texts that are not UTF-8 (only a broken vocabulary has them) are left out of the
//! matcher.

use corral_gguf::special::{SpecialMatcher, SpecialToken};

/// Texts up to this many bytes go to llama.cpp whole.
pub(crate) const WHOLE_BELOW: usize = 16 * 1024;
/// A piece ends at the first cut after this many special tokens...
const TOKENS_PER_PIECE: usize = 512;
/// ... or after this many bytes.
const BYTES_PER_PIECE: usize = 256 * 1024;

/// Where to cut `text` for `llama_tokenize` (byte offsets, ascending, inside the text).
pub(crate) fn cuts(matcher: &SpecialMatcher, text: &[u8], parse_special: bool) -> Vec<usize> {
    let taken = matcher.find(text, parse_special);
    let strips_left: Vec<bool> = matcher.tokens().iter().map(|t| t.lstrip).collect();
    cut_points(
        taken.iter().map(|&(start, _, i)| (start, strips_left[i])),
        TOKENS_PER_PIECE,
        BYTES_PER_PIECE,
    )
}

/// The cuts before taken special tokens `(start, strips_left)` (in order): one once the
/// piece so far holds `per_piece` tokens or `bytes_per_piece` bytes, never before a
/// token that strips the whitespace to its left.
fn cut_points(
    taken: impl IntoIterator<Item = (usize, bool)>,
    per_piece: usize,
    bytes_per_piece: usize,
) -> Vec<usize> {
    let mut cuts = Vec::new();
    let (mut piece_start, mut piece_tokens) = (0usize, 0usize);
    for (start, strips_left) in taken {
        if !strips_left
            && start > piece_start
            && (piece_tokens >= per_piece || start - piece_start >= bytes_per_piece)
        {
            cuts.push(start);
            piece_start = start;
            piece_tokens = 0;
        }
        piece_tokens += 1;
    }
    cuts
}

/// The vocabulary's special tokens for [`cuts`]: `(text, id, attributes)` with
/// llama.cpp's attribute bits.
pub(crate) fn matcher(tokens: impl IntoIterator<Item = (Vec<u8>, u32, u32)>) -> SpecialMatcher {
    use llama_cpp_sys_2 as sys;
    SpecialMatcher::new(tokens.into_iter().filter_map(|(text, id, attr)| {
        let control = attr & (sys::LLAMA_TOKEN_ATTR_CONTROL | sys::LLAMA_TOKEN_ATTR_UNKNOWN);
        if control == 0 && attr & sys::LLAMA_TOKEN_ATTR_USER_DEFINED == 0 {
            return None;
        }
        Some(SpecialToken {
            text: String::from_utf8(text).ok()?,
            id,
            only_when_parsing_special: control != 0,
            lstrip: attr & sys::LLAMA_TOKEN_ATTR_LSTRIP != 0,
            rstrip: attr & sys::LLAMA_TOKEN_ATTR_RSTRIP != 0,
        })
    }))
}

/// The tokens `llama_tokenize(add_special = true)` adds before and after a text's own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Affixes {
    pub(crate) before: Vec<i32>,
    pub(crate) after: Vec<i32>,
}

impl Affixes {
    /// From the tokens of the empty text with `add_special` (`both`: what is added in
    /// all) and of one sample text with (`with`) and without (`bare`) it: the split of
    /// `both` for which `with == before + bare + after`, if there is one.
    pub(crate) fn derive(both: &[i32], with: &[i32], bare: &[i32]) -> Option<Affixes> {
        (0..=both.len()).find_map(|k| {
            let (before, after) = both.split_at(k);
            let fits = with.len() == before.len() + bare.len() + after.len()
                && with.starts_with(before)
                && with[before.len()..].starts_with(bare)
                && with.ends_with(after);
            fits.then(|| Affixes { before: before.to_vec(), after: after.to_vec() })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control(text: &str, id: u32) -> (Vec<u8>, u32, u32) {
        (text.as_bytes().to_vec(), id, llama_cpp_sys_2::LLAMA_TOKEN_ATTR_CONTROL)
    }

    #[test]
    fn cuts_fall_before_special_tokens_once_a_piece_is_full() {
        let m = matcher([control("<s>", 1), control("<e>", 2)]);
        let text = "<s>hi<e>".repeat(1000);
        let cuts = cuts(&m, text.as_bytes(), true);
        // 2 tokens per turn of 8 bytes: a cut every 512 tokens, before a token.
        assert_eq!(cuts.len(), 3);
        assert!(cuts.windows(2).all(|w| w[1] - w[0] == 256 * 8));
        for &c in &cuts {
            assert_eq!(&text.as_bytes()[c..c + 3], b"<s>");
        }
        // Control tokens are not parsed without parse_special: nothing to cut.
        assert!(super::cuts(&m, text.as_bytes(), false).is_empty());
    }

    #[test]
    fn no_cut_before_a_token_that_strips_the_whitespace_before_it() {
        let taken = [(0, false), (10, false), (20, true), (30, false)];
        assert_eq!(cut_points(taken, 1, usize::MAX), vec![10, 30]);
        // Nor at the very start.
        assert_eq!(cut_points([(0, false)], 0, 0), Vec::<usize>::new());
    }

    #[test]
    fn affixes_split_what_add_special_adds() {
        // bos only; bos and eos; cls and sep around.
        assert_eq!(
            Affixes::derive(&[1], &[1, 7, 8], &[7, 8]),
            Some(Affixes { before: vec![1], after: vec![] })
        );
        assert_eq!(
            Affixes::derive(&[1, 2], &[1, 7, 2], &[7]),
            Some(Affixes { before: vec![1], after: vec![2] })
        );
        assert_eq!(
            Affixes::derive(&[], &[7], &[7]),
            Some(Affixes { before: vec![], after: vec![] })
        );
        // No split explains the sample: no affixes (the caller then tokenizes whole).
        assert_eq!(Affixes::derive(&[1], &[9, 7], &[7]), None);
    }
}
