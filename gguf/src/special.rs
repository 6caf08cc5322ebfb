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

/// Total special-token text above which the matcher is built as a contiguous NFA rather
/// than whatever the builder picks (a DFA for few patterns, whose size grows with the
/// text times the alphabet). Real vocabularies hold a few KiB of special texts.
const DFA_BYTES: usize = 64 << 10;

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
            // A DFA (what the builder picks for few patterns) has a state per pattern byte
            // times the alphabet: a file with one special text of a megabyte held the
            // engine for minutes building it. Past DFA_BYTES of text, a contiguous NFA,
            // linear to build.
            let bytes: usize = tokens.iter().map(|t| t.text.len()).sum();
            let kind = (bytes > DFA_BYTES).then_some(aho_corasick::AhoCorasickKind::ContiguousNFA);
            aho_corasick::AhoCorasickBuilder::new()
                .kind(kind)
                .build(tokens.iter().map(|t| t.text.as_bytes()))
                .ok()
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

    /// The occurrences of special-token texts in `text` that llama.cpp takes as tokens
    /// (with `parse_special`, control and unknown tokens too), in order: (start, end,
    /// index into [`SpecialMatcher::tokens`]).
    ///
    /// Every overlapping occurrence is collected in one Aho-Corasick pass and accepted in
    /// llama.cpp's order. Texts whose special texts overlap densely (a vocabulary with
    /// tokens for runs of 1 to 31 newlines or spaces, as Gemma's has, over a long run of
    /// them: 31 occurrences a byte) would make that list far longer than the text, so past
    /// `len / 2 + 4096` occurrences it is dropped, and each token that occurs is instead
    /// searched for (`memchr::memmem`, leftmost and non-overlapping, as llama.cpp does) in
    /// the gaps the tokens before it left, in llama.cpp's order: exact too, and bounded in
    /// memory.
    pub fn find(&self, text: &[u8], parse_special: bool) -> Vec<(usize, usize, usize)> {
        let Some(matcher) = &self.matcher else { return Vec::new() };
        let cap = text.len() / 2 + 4096;
        let mut occurs = vec![false; self.tokens.len()];
        // (rank, start, end, token index), while under the cap.
        let mut found: Vec<(u32, u32, u32, u32)> = Vec::new();
        let mut dense = u32::try_from(text.len()).is_err();
        for m in matcher.find_overlapping_iter(text) {
            let i = m.pattern().as_usize();
            if !parse_special && self.tokens[i].only_when_parsing_special {
                continue;
            }
            occurs[i] = true;
            if !dense {
                if found.len() >= cap {
                    dense = true;
                    found = Vec::new();
                } else {
                    found.push((self.rank[i] as u32, m.start() as u32, m.end() as u32, i as u32));
                }
            }
        }
        // Accepted occurrences, start -> (end, token index); they never overlap.
        let mut taken: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
        if !dense {
            found.sort_unstable();
            for (_, start, end, i) in found {
                let (start, end) = (start as usize, end as usize);
                let clear_left =
                    taken.range(..=start).next_back().is_none_or(|(_, &(e, _))| e <= start);
                let clear_right = taken.range(start..).next().is_none_or(|(&s, _)| s >= end);
                if clear_left && clear_right {
                    taken.insert(start, (end, i as usize));
                }
            }
        } else {
            let mut order: Vec<usize> = (0..self.tokens.len()).filter(|&i| occurs[i]).collect();
            order.sort_by_key(|&i| self.rank[i]);
            for i in order {
                let finder = memchr::memmem::Finder::new(self.tokens[i].text.as_bytes());
                let mut gaps = Vec::new();
                let mut at = 0;
                for (&s, &(e, _)) in &taken {
                    gaps.push((at, s));
                    at = e;
                }
                gaps.push((at, text.len()));
                for (a, b) in gaps {
                    for hit in finder.find_iter(&text[a..b]) {
                        let start = a + hit;
                        taken.insert(start, (start + finder.needle().len(), i));
                    }
                }
            }
        }
        taken.into_iter().map(|(s, (e, i))| (s, e, i)).collect()
    }

    /// `text` cut at the special-token texts llama.cpp would take as tokens (with
    /// `parse_special`, control and unknown tokens too): [`SpecialMatcher::find`].
    pub fn partition<'a>(&self, text: &'a str, parse_special: bool) -> Vec<Fragment<'a>> {
        let taken = self.find(text.as_bytes(), parse_special);
        // Fragments, with the whitespace the tokens strip removed from their neighbours.
        let mut out = Vec::with_capacity(2 * taken.len() + 1);
        let mut at = 0;
        let mut strip_next = false;
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

    /// Tokens for runs of 1 to 31 newlines (Gemma's) over a long run: the dense path,
    /// which must give what the overlap list gives on a shorter text of the same kind.
    #[test]
    fn densely_overlapping_texts_take_the_gap_search_and_agree() {
        let runs: Vec<SpecialToken> = (1..=31)
            .map(|n| SpecialToken {
                text: "\n".repeat(n),
                id: 100 + n as u32,
                only_when_parsing_special: false,
                lstrip: false,
                rstrip: false,
            })
            .chain([tok("<s>", 1), tok("<ss>", 2)])
            .collect();
        let m = SpecialMatcher::new(runs);
        // A mixed text, short enough for the overlap list, and the same text repeated
        // past its cap: the repeated text's result is the short one's, repeated.
        let unit = "<s>a\n\n\nb<ss>\n<s><s>\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\nc";
        let short = m.find(unit.as_bytes(), true);
        assert!(short.len() < unit.len() / 2 + 4096);
        let long_text = unit.repeat(20_000);
        let long = m.find(long_text.as_bytes(), true);
        assert_eq!(long.len(), short.len() * 20_000);
        for (k, &(s, e, i)) in long.iter().enumerate() {
            let (s0, e0, i0) = short[k % short.len()];
            let shift = (k / short.len()) * unit.len();
            assert_eq!((s, e, i), (s0 + shift, e0 + shift, i0), "occurrence {k}");
        }
        // The longest run first: 34 newlines are 31 + 3.
        let t = "\n".repeat(34);
        let f: Vec<_> = m.find(t.as_bytes(), true).iter().map(|o| o.1 - o.0).collect();
        assert_eq!(f, vec![31, 3]);
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
