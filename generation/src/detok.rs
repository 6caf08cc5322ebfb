//! Streaming detokenization: token byte strings in, complete UTF-8 text out.
//!
//! Byte-level BPE vocabularies split multi-byte characters across tokens (an emoji can be
//! three tokens). [`Detokenizer`] buffers an incomplete character until its last byte
//! arrives, so every string it returns is whole characters; bytes that can never form a
//! character come out as U+FFFD, as `String::from_utf8_lossy` would give them.

/// The longest UTF-8 encoding of one character; a longer incomplete tail is impossible.
const MAX_UTF8: usize = 4;

/// Turns a stream of token byte strings into a stream of complete UTF-8 text.
#[derive(Debug, Default, Clone)]
pub struct Detokenizer {
    /// Bytes of a character that is not complete yet (at most 3).
    pending: Vec<u8>,
}

impl Detokenizer {
    /// A decoder with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the bytes of one token (or any chunk) and returns the text that is now
    /// complete. An incomplete character at the end is kept for the next push; invalid
    /// bytes in the middle become U+FFFD.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::with_capacity(self.pending.len());
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // Cannot fail: the first `valid_up_to` bytes are valid UTF-8 by definition.
                    out.push_str(std::str::from_utf8(&rest[..valid]).unwrap_or_default());
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &rest[valid + bad..];
                        }
                        None => {
                            // An incomplete character at the end: keep it.
                            rest = &rest[valid..];
                            break;
                        }
                    }
                }
            }
        }
        debug_assert!(rest.len() < MAX_UTF8);
        let keep = rest.to_vec();
        self.pending = keep;
        out
    }

    /// True when bytes of an incomplete character are buffered.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Ends the stream: returns the buffered incomplete character as U+FFFD (one per
    /// invalid sequence), or an empty string when nothing is buffered.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emoji_split_across_three_pushes() {
        let bytes = "🦀".as_bytes();
        assert_eq!(bytes.len(), 4);
        let mut d = Detokenizer::new();
        assert_eq!(d.push(b"a"), "a");
        assert_eq!(d.push(&bytes[..1]), "");
        assert_eq!(d.push(&bytes[1..3]), "");
        assert!(d.has_pending());
        assert_eq!(d.push(&bytes[3..]), "🦀");
        assert!(!d.has_pending());
        assert_eq!(d.finish(), "");
    }

    #[test]
    fn text_before_and_after_split_char() {
        let mut d = Detokenizer::new();
        let e = "é".as_bytes();
        assert_eq!(d.push(&[b'x', e[0]]), "x");
        assert_eq!(d.push(&[e[1], b'y']), "éy");
    }

    #[test]
    fn invalid_bytes_become_replacement() {
        let mut d = Detokenizer::new();
        assert_eq!(d.push(&[b'a', 0xff, b'b']), "a\u{fffd}b");
        // A lead byte followed by a non-continuation byte is invalid right away.
        assert_eq!(d.push(&[0xe2, b'c']), "\u{fffd}c");
    }

    #[test]
    fn finish_flushes_incomplete_tail() {
        let mut d = Detokenizer::new();
        assert_eq!(d.push(&"€".as_bytes()[..2]), "");
        assert_eq!(d.finish(), "\u{fffd}");
        assert_eq!(d.finish(), "");
        assert_eq!(d.push(b"ok"), "ok");
    }
}
