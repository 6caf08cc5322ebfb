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
//! A cut is exact when it falls just before a special-token text that llama.cpp is sure to
//! take as a token and whose token does not strip the whitespace to its left: an
//! occurrence that no other occurrence of any special-token text overlaps (so no other
//! token's match can claim its bytes, whatever order llama.cpp tries them in) and that no
//! occurrence spans. llama.cpp then splits the text there itself, tokenizes the text on
//! each side as separate fragments, and (SentencePiece) treats the text after a special
//! token the same at the start of a call as in the middle. The first piece keeps the
//! tokens `add_special` adds in front and the last the ones it adds at the end
//! ([`Affixes`]).

use aho_corasick::AhoCorasick;

/// Texts up to this many bytes go to llama.cpp whole.
pub(crate) const WHOLE_BELOW: usize = 16 * 1024;
/// A piece ends at the first exact cut after this many special-token matches...
const MATCHES_PER_PIECE: usize = 512;
/// ... or after this many bytes.
const BYTES_PER_PIECE: usize = 256 * 1024;
/// Most matches one piece may hold when the text offers no exact cut (special-token
/// texts that overlap each other all along): llama.cpp's pass over 8,192 matches takes
/// about two seconds on the Gemma 3 vocabulary. More is refused.
pub(crate) const MAX_MATCHES_UNCUT: usize = 8192;

/// One special-token text of the vocabulary.
#[derive(Debug, Clone)]
pub(crate) struct SpecialText {
    /// Parsed only when the caller asks for special tokens (control and unknown tokens);
    /// user-defined tokens are parsed always, as llama.cpp does.
    pub(crate) only_when_parsing_special: bool,
    /// The token strips the whitespace before it (`LLAMA_TOKEN_ATTR_LSTRIP`).
    pub(crate) strips_left: bool,
}

/// The special-token texts of a vocabulary and a matcher over them.
pub(crate) struct SpecialSplitter {
    texts: Vec<SpecialText>,
    matcher: Option<AhoCorasick>,
}

impl SpecialSplitter {
    /// A splitter over `(text, kind)` pairs; empty texts are left out (llama.cpp cannot
    /// match them either).
    pub(crate) fn new(tokens: Vec<(Vec<u8>, SpecialText)>) -> SpecialSplitter {
        let tokens: Vec<_> = tokens.into_iter().filter(|(t, _)| !t.is_empty()).collect();
        let matcher = if tokens.is_empty() {
            None
        } else {
            // Standard semantics: every overlapping occurrence is reported.
            AhoCorasick::new(tokens.iter().map(|(t, _)| t.as_slice())).ok()
        };
        SpecialSplitter { texts: tokens.into_iter().map(|(_, k)| k).collect(), matcher }
    }

    /// Where to cut `text` (byte offsets, ascending, each strictly inside the text), or
    /// an error when a stretch without an exact cut holds more than [`MAX_MATCHES_UNCUT`]
    /// matches.
    pub(crate) fn cuts(&self, text: &[u8], parse_special: bool) -> Result<Vec<usize>, String> {
        let Some(matcher) = &self.matcher else { return Ok(Vec::new()) };
        // Every occurrence (start, end, strips_left), in order of start.
        let mut found: Vec<(usize, usize, bool)> = Vec::new();
        for m in matcher.find_overlapping_iter(text) {
            let kind = &self.texts[m.pattern().as_usize()];
            if kind.only_when_parsing_special && !parse_special {
                continue;
            }
            found.push((m.start(), m.end(), kind.strips_left));
        }
        found.sort_unstable();
        cut_points(&found, text.len(), MATCHES_PER_PIECE, BYTES_PER_PIECE, MAX_MATCHES_UNCUT)
    }
}

/// The exact cuts to make in a text of `len` bytes whose special-token occurrences are
/// `found` (start, end, strips_left; sorted by start): a cut before an occurrence that no
/// other overlaps and whose token keeps the whitespace to its left, taken once the piece
/// so far holds `per_piece` matches or `bytes_per_piece` bytes.
fn cut_points(
    found: &[(usize, usize, bool)],
    len: usize,
    per_piece: usize,
    bytes_per_piece: usize,
    max_uncut: usize,
) -> Result<Vec<usize>, String> {
    let mut cuts = Vec::new();
    let mut piece_start = 0usize;
    let mut piece_matches = 0usize;
    // The furthest end among the occurrences before the current one.
    let mut reach = 0usize;
    for (i, &(start, end, strips_left)) in found.iter().enumerate() {
        let clear_before = start >= reach;
        let clear_after = found.get(i + 1).is_none_or(|&(next, _, _)| next >= end);
        if clear_before
            && clear_after
            && !strips_left
            && start > piece_start
            && start < len
            && (piece_matches >= per_piece || start - piece_start >= bytes_per_piece)
        {
            cuts.push(start);
            piece_start = start;
            piece_matches = 0;
        }
        piece_matches += 1;
        if piece_matches > max_uncut {
            return Err(format!(
                "the text holds more than {max_uncut} special-token texts in a row that \
                 overlap each other; llama.cpp's tokenizer would take minutes over it"
            ));
        }
        reach = reach.max(end);
    }
    Ok(cuts)
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

    fn kind(only_special: bool, strips_left: bool) -> SpecialText {
        SpecialText { only_when_parsing_special: only_special, strips_left }
    }

    #[test]
    fn cuts_fall_before_isolated_special_texts_once_a_piece_is_full() {
        let s = SpecialSplitter::new(vec![
            (b"<s>".to_vec(), kind(true, false)),
            (b"<e>".to_vec(), kind(true, false)),
        ]);
        let text = "<s>hi<e>".repeat(1000);
        let cuts = s.cuts(text.as_bytes(), true).unwrap();
        // 2 matches per turn of 8 bytes: a cut every 512 matches, before a match.
        assert_eq!(cuts.len(), 3);
        assert!(cuts.windows(2).all(|w| w[1] - w[0] == 256 * 8));
        for &c in &cuts {
            assert_eq!(&text.as_bytes()[c..c + 3], b"<s>");
        }
        // Control tokens are not parsed without parse_special: nothing to cut.
        assert!(s.cuts(text.as_bytes(), false).unwrap().is_empty());
    }

    #[test]
    fn no_cut_inside_or_before_overlapping_texts_or_left_stripping_tokens() {
        // "<a>" and "a>b" overlap in "<a>b": neither is a safe place to cut.
        let found = [(0, 3, false), (1, 4, false), (10, 13, false), (20, 23, true)];
        assert_eq!(cut_points(&found, 30, 1, usize::MAX, 100).unwrap(), vec![10]);
        // An occurrence nested in another's span is not a cut either.
        let nested = [(0, 10, false), (2, 5, false), (12, 15, false)];
        assert_eq!(cut_points(&nested, 20, 1, usize::MAX, 100).unwrap(), vec![12]);
    }

    #[test]
    fn a_long_stretch_without_a_cut_is_refused() {
        let found: Vec<_> = (0..50).map(|i| (i, i + 2, false)).collect();
        assert!(cut_points(&found, 60, 4, usize::MAX, 40).is_err());
        assert!(cut_points(&found, 60, 4, usize::MAX, 50).is_ok());
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
