//! Special-token texts in a text to tokenize, found as llama.cpp finds them, in time
//! linear in the text.
//!
//! llama.cpp (`tokenizer_st_partition`) takes the vocabulary's control, user-defined and
//! unknown tokens longest first and, for each, cuts every raw-text fragment at its
//! occurrences, leftmost first; a token may strip the whitespace to its left or right
//! (`LSTRIP`/`RSTRIP` attributes). Done that way (one search of the whole text per
//! special token, and per match) the pass is quadratic, and with a real vocabulary
//! (thousands of special tokens) a long chat takes minutes. [`SpecialMatcher`] finds
//! every occurrence of every special text in one Aho-Corasick pass, then accepts them in
//! llama.cpp's order (longer texts first, lower ids first among equal lengths; an
//! occurrence is taken when no accepted one overlaps it), which gives the same fragments.
//! Whitespace a token strips is removed from the text fragments beside it.

use std::collections::BTreeMap;

use aho_corasick::AhoCorasick;

/// A special token the tokenizer cuts texts at.
#[derive(Debug, Clone)]
pub struct SpecialToken {
    /// Its text (empty texts are never matched).
    pub text: String,
    /// Its id.
    pub id: u32,
    /// Matched only when the caller parses special tokens (control and unknown tokens;
    /// user-defined tokens are matched always, as llama.cpp does).
    pub only_when_parsing_special: bool,
    /// Strips the whitespace before it.
    pub lstrip: bool,
    /// Strips the whitespace after it.
    pub rstrip: bool,
}

/// A piece of a partitioned text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fragment<'a> {
    /// Text to tokenize normally (never empty).
    Text(&'a str),
    /// A special token.
    Token(u32),
}

/// The special tokens of a vocabulary and a matcher over their texts.
#[derive(Debug, Clone, Default)]
pub struct SpecialMatcher {
    tokens: Vec<SpecialToken>,
    /// Rank of each token in llama.cpp's order (0 first).
    rank: Vec<usize>,
    matcher: Option<AhoCorasick>,
}

/// C's `isspace` in the "C" locale, which llama.cpp's stripping uses.
fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

impl SpecialMatcher {
    /// A matcher over `tokens` (empty texts are left out).
    pub fn new(tokens: impl IntoIterator<Item = SpecialToken>) -> SpecialMatcher {
        let tokens: Vec<SpecialToken> = tokens.into_iter().filter(|t| !t.text.is_empty()).collect();
        let mut order: Vec<usize> = (0..tokens.len()).collect();
        order.sort_by(|&a, &b| {
            tokens[b].text.len().cmp(&tokens[a].text.len()).then(tokens[a].id.cmp(&tokens[b].id))
        });
        let mut rank = vec![0; tokens.len()];
        for (r, &i) in order.iter().enumerate() {
            rank[i] = r;
        }
        let matcher = if tokens.is_empty() {
            None
        } else {
            AhoCorasick::new(tokens.iter().map(|t| t.text.as_bytes())).ok()
        };
        SpecialMatcher { tokens, rank, matcher }
    }

    /// The special tokens of a GGUF vocabulary as llama.cpp takes them: its control,
    /// unknown and user-defined tokens (`tokenizer.ggml.token_type` 3, 2 and 4). With
    /// `phi3_rstrip` (llama.cpp's quirk for models whose `general.name` names Phi-3:
    /// [`crate::spm::is_phi3_name`]) every one strips the whitespace after it except
    /// `<unk>`, `<s>` and `<|endoftext|>`.
    pub fn from_vocab(tokens: &[String], types: &[i32], phi3_rstrip: bool) -> SpecialMatcher {
        const UNKNOWN: i32 = 2;
        const CONTROL: i32 = 3;
        const USER_DEFINED: i32 = 4;
        SpecialMatcher::new(
            tokens
                .iter()
                .zip(types)
                .enumerate()
                .filter(|(_, (_, ty))| matches!(**ty, UNKNOWN | CONTROL | USER_DEFINED))
                .map(|(id, (text, &ty))| SpecialToken {
                    text: text.clone(),
                    id: id as u32,
                    only_when_parsing_special: ty != USER_DEFINED,
                    lstrip: false,
                    rstrip: phi3_rstrip
                        && !["<unk>", "<s>", "<|endoftext|>"].contains(&text.as_str()),
                }),
        )
    }

    /// The special tokens, in the order given.
    pub fn tokens(&self) -> &[SpecialToken] {
        &self.tokens
    }

    /// `text` cut at the special-token texts llama.cpp would take as tokens (with
    /// `parse_special`, control and unknown tokens too).
    pub fn partition<'a>(&self, text: &'a str, parse_special: bool) -> Vec<Fragment<'a>> {
        let Some(matcher) = &self.matcher else {
            return if text.is_empty() { Vec::new() } else { vec![Fragment::Text(text)] };
        };
        // Every occurrence: (rank, start, end, token index).
        let mut found: Vec<(usize, usize, usize, usize)> = matcher
            .find_overlapping_iter(text)
            .filter_map(|m| {
                let i = m.pattern().as_usize();
                let usable = parse_special || !self.tokens[i].only_when_parsing_special;
                usable.then(|| (self.rank[i], m.start(), m.end(), i))
            })
            .collect();
        found.sort_unstable();
        // Accepted occurrences, start -> (end, token index); they never overlap.
        let mut taken: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
        for (_, start, end, i) in found {
            let clear_left =
                taken.range(..=start).next_back().is_none_or(|(_, &(e, _))| e <= start);
            let clear_right = taken.range(start..).next().is_none_or(|(&s, _)| s >= end);
            if clear_left && clear_right {
                taken.insert(start, (end, i));
            }
        }
        // Fragments, with the whitespace the tokens strip removed from their neighbours.
        let mut out = Vec::with_capacity(2 * taken.len() + 1);
        let mut at = 0;
        let mut strip_next = false;
        let taken: Vec<(usize, usize, usize)> =
            taken.into_iter().map(|(s, (e, i))| (s, e, i)).collect();
        for &(start, end, i) in &taken {
            let mut piece = &text[at..start];
            if strip_next {
                piece = piece.trim_start_matches(is_c_space);
            }
            if self.tokens[i].lstrip {
                piece = piece.trim_end_matches(is_c_space);
            }
            if !piece.is_empty() {
                out.push(Fragment::Text(piece));
            }
            out.push(Fragment::Token(self.tokens[i].id));
            strip_next = self.tokens[i].rstrip;
            at = end;
        }
        let mut rest = &text[at..];
        if strip_next {
            rest = rest.trim_start_matches(is_c_space);
        }
        if !rest.is_empty() {
            out.push(Fragment::Text(rest));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(text: &str, id: u32) -> SpecialToken {
        SpecialToken {
            text: text.into(),
            id,
            only_when_parsing_special: true,
            lstrip: false,
            rstrip: false,
        }
    }

    #[test]
    fn cuts_at_special_texts() {
        let m = SpecialMatcher::new([tok("<s>", 1), tok("<e>", 2)]);
        assert_eq!(
            m.partition("<s>hi<e>\n<s>", true),
            vec![
                Fragment::Token(1),
                Fragment::Text("hi"),
                Fragment::Token(2),
                Fragment::Text("\n"),
                Fragment::Token(1)
            ]
        );
        assert_eq!(m.partition("<s>hi", false), vec![Fragment::Text("<s>hi")]);
        assert!(m.partition("", true).is_empty());
    }

    #[test]
    fn longer_texts_win_overlaps_as_in_llama_cpp() {
        // llama.cpp takes "bcd" (longer) first, then "ab" no longer fits.
        let m = SpecialMatcher::new([tok("ab", 1), tok("bcd", 2)]);
        assert_eq!(m.partition("abcd", true), vec![Fragment::Text("a"), Fragment::Token(2)]);
        // Equal lengths: the lower id first; leftmost non-overlapping within one token.
        let m = SpecialMatcher::new([tok("bc", 2), tok("ab", 1)]);
        assert_eq!(m.partition("abc", true), vec![Fragment::Token(1), Fragment::Text("c")]);
        let m = SpecialMatcher::new([tok("aa", 1)]);
        assert_eq!(m.partition("aaa", true), vec![Fragment::Token(1), Fragment::Text("a")]);
    }

    #[test]
    fn user_defined_tokens_match_without_parse_special_and_strip_whitespace() {
        let user = SpecialToken {
            text: "<u>".into(),
            id: 5,
            only_when_parsing_special: false,
            lstrip: true,
            rstrip: true,
        };
        let m = SpecialMatcher::new([user, tok("<c>", 6)]);
        assert_eq!(
            m.partition("a \t<u>\n b<c>", false),
            vec![Fragment::Text("a"), Fragment::Token(5), Fragment::Text("b<c>")]
        );
    }

    #[test]
    fn a_long_text_of_many_special_texts_is_linear() {
        let specials: Vec<SpecialToken> =
            (0..5000).map(|i| tok(&format!("<unused{i}>"), i)).chain([tok("<s>", 9999)]).collect();
        let m = SpecialMatcher::new(specials);
        let text = "<s>hi <unused12>".repeat(100_000);
        let frags = m.partition(&text, true);
        assert_eq!(frags.len(), 300_000);
        assert_eq!(frags[1], Fragment::Text("hi "));
        assert_eq!(frags[2], Fragment::Token(12));
    }
}
