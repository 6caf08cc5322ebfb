//! Stop strings matched across token boundaries.
//!
//! Text arrives in pieces (one detokenized token at a time) and a stop string can span
//! several pieces. [`StopMatcher`] holds back the end of the text while it could still be
//! the beginning of a stop string, and never emits any part of a matched stop string; the
//! text after a match (even in the same piece) is dropped, as Ollama does.

/// What one [`StopMatcher::push`] produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopStep {
    /// Text that is safe to send to the client now.
    pub emit: String,
    /// True when a stop string matched: generation should end (done reason "stop").
    pub stopped: bool,
}

/// Finds stop strings in streamed text.
#[derive(Debug, Clone)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not emitted: a possible start of a stop string.
    held: String,
    stopped: bool,
    /// The stop string that matched, once one has.
    matched: Option<usize>,
    /// The prefix function of each stop string ([`prefix_function`]).
    borders: Vec<Vec<usize>>,
}

impl StopMatcher {
    /// A matcher for `stops`; empty strings are ignored.
    pub fn new<I, S>(stops: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let stops: Vec<String> =
            stops.into_iter().map(Into::into).filter(|s: &String| !s.is_empty()).collect();
        let borders = stops.iter().map(|s| prefix_function(s.as_bytes())).collect();
        StopMatcher { stops, held: String::new(), stopped: false, matched: None, borders }
    }

    /// Feeds the next piece of text. Returns the text that can be emitted and whether a
    /// stop string has matched. After a match every further push returns nothing and
    /// `stopped: true`.
    pub fn push(&mut self, text: &str) -> StopStep {
        if self.stopped {
            return StopStep { emit: String::new(), stopped: true };
        }
        if self.stops.is_empty() {
            return StopStep { emit: text.to_owned(), stopped: false };
        }
        self.held.push_str(text);

        // The earliest match of any stop string; on equal starts the longer one.
        let mut best: Option<(usize, usize)> = None;
        for (i, stop) in self.stops.iter().enumerate() {
            if let Some(pos) = self.held.find(stop.as_str()) {
                let better = match best {
                    None => true,
                    Some((bpos, bi)) => {
                        pos < bpos || (pos == bpos && stop.len() > self.stops[bi].len())
                    }
                };
                if better {
                    best = Some((pos, i));
                }
            }
        }
        if let Some((pos, i)) = best {
            self.stopped = true;
            self.matched = Some(i);
            let mut emit = std::mem::take(&mut self.held);
            emit.truncate(pos);
            return StopStep { emit, stopped: true };
        }

        let hold = self.partial_suffix_len();
        let split = self.held.len() - hold;
        let tail = self.held.split_off(split);
        let emit = std::mem::replace(&mut self.held, tail);
        StopStep { emit, stopped: false }
    }

    /// Length in bytes of the longest suffix of the held text that is a proper prefix
    /// of some stop string (and starts on a character boundary). Per stop string, the
    /// prefix function (KMP) of the stop string followed by the held text's last bytes:
    /// linear in their lengths, where comparing every candidate length was quadratic.
    fn partial_suffix_len(&self) -> usize {
        let held = self.held.as_bytes();
        let mut best = 0;
        for (stop, pi) in self.stops.iter().zip(&self.borders) {
            let stop = stop.as_bytes();
            let tail = &held[held.len() - (stop.len() - 1).min(held.len())..];
            // Every length k such that the last k bytes of `tail` are the first k of
            // `stop`, longest first, through the prefix function's chain.
            let mut k = suffix_prefix_len(stop, pi, tail);
            while k > best {
                if self.held.is_char_boundary(held.len() - k) {
                    best = k;
                    break;
                }
                k = pi[k - 1];
            }
        }
        best
    }

    /// Ends the stream when generation stopped for another reason (length, end token):
    /// returns the held text, which turned out not to be a stop string. Empty after a
    /// match.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// True once a stop string has matched.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// The stop string that matched, if one has.
    pub fn matched(&self) -> Option<&str> {
        self.matched.map(|i| self.stops[i].as_str())
    }

    /// True when some text is held back as a possible start of a stop string.
    pub fn has_held(&self) -> bool {
        !self.held.is_empty()
    }
}

/// The prefix function of `s`: `pi[i]` is the length of the longest proper prefix of
/// `s[..=i]` that is also its suffix.
fn prefix_function(s: &[u8]) -> Vec<usize> {
    let mut pi = vec![0; s.len()];
    for i in 1..s.len() {
        let mut k = pi[i - 1];
        while k > 0 && s[i] != s[k] {
            k = pi[k - 1];
        }
        if s[i] == s[k] {
            k += 1;
        }
        pi[i] = k;
    }
    pi
}

/// The length of the longest suffix of `text` that is a proper prefix of `pattern`
/// (`text` is at most `pattern.len() - 1` bytes), by running KMP (`pi`: the pattern's
/// prefix function) over `text`.
fn suffix_prefix_len(pattern: &[u8], pi: &[usize], text: &[u8]) -> usize {
    if pattern.is_empty() {
        return 0;
    }
    let mut k = 0;
    for &c in text {
        while k > 0 && (k == pattern.len() || pattern[k] != c) {
            k = pi[k - 1];
        }
        if pattern[k] == c {
            k += 1;
        }
    }
    if k == pattern.len() { pi[k - 1] } else { k }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The prefix-function search gives what comparing every length gives.
    #[test]
    fn partial_suffix_matches_the_direct_definition() {
        let direct = |held: &str, stop: &str| {
            (1..stop.len().min(held.len() + 1))
                .rev()
                .find(|&k| {
                    held.is_char_boundary(held.len() - k)
                        && held.as_bytes()[held.len() - k..] == stop.as_bytes()[..k]
                })
                .unwrap_or(0)
        };
        let cases = [
            ("xxaba", "abab"),
            ("aaaa", "aaaaa"),
            ("abcab", "abcabd"),
            ("zzz", "abc"),
            ("ab", "ab"),
            ("aab", "aabaab"),
            ("é»", "»»"),
            ("xa", "a"),
        ];
        for (held, stop) in cases {
            let m = StopMatcher { held: held.to_string(), ..StopMatcher::new([stop]) };
            assert_eq!(m.partial_suffix_len(), direct(held, stop), "{held:?} / {stop:?}");
        }
    }

    /// A 4 KiB stop string that the output keeps matching the start of: each piece costs
    /// time linear in the stop string, not quadratic.
    #[test]
    fn a_long_stop_string_held_back_for_long_is_linear() {
        let stop = "a".repeat(4095) + "b";
        let mut m = StopMatcher::new([stop.as_str()]);
        let started = std::time::Instant::now();
        for _ in 0..8000 {
            let step = m.push("a");
            assert!(!step.stopped);
        }
        assert!(m.push("b").stopped);
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool, String) {
        let mut m = StopMatcher::new(stops.iter().copied());
        let mut emitted = Vec::new();
        let mut stopped = false;
        for p in pieces {
            let step = m.push(p);
            emitted.push(step.emit);
            stopped = step.stopped;
            if stopped {
                break;
            }
        }
        let rest = m.finish();
        (emitted, stopped, rest)
    }

    #[test]
    fn stop_across_three_pieces() {
        let (emitted, stopped, rest) =
            run(&["\n\nUser:"], &["Hello", "\n", "\nUs", "er:", " more"]);
        assert!(stopped);
        assert_eq!(emitted, vec!["Hello", "", "", ""]);
        assert_eq!(rest, "");
    }

    #[test]
    fn held_text_released_when_it_diverges() {
        let mut m = StopMatcher::new(["\n\nUser:"]);
        assert_eq!(m.push("Hi\n").emit, "Hi");
        assert!(m.has_held());
        let step = m.push("\nUsually");
        assert_eq!(step.emit, "\n\nUsually");
        assert!(!step.stopped);
    }

    #[test]
    fn text_after_match_in_same_piece_is_dropped() {
        let mut m = StopMatcher::new(vec!["END".to_string()]);
        let step = m.push("abcENDxyz");
        assert_eq!(step, StopStep { emit: "abc".into(), stopped: true });
        assert_eq!(m.matched(), Some("END"));
        assert_eq!(m.push("more"), StopStep { emit: String::new(), stopped: true });
    }

    #[test]
    fn finish_releases_partial_match() {
        let (emitted, stopped, rest) = run(&["</s>"], &["answer", "</"]);
        assert!(!stopped);
        assert_eq!(emitted.concat(), "answer");
        assert_eq!(rest, "</");
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let mut m = StopMatcher::new(["bc", "abcd"]);
        assert_eq!(m.push("xa").emit, "x");
        let step = m.push("bcd");
        assert!(step.stopped);
        // "abcd" starts before "bc", so the text stops at "x".
        assert_eq!(step.emit, "");
        assert_eq!(m.matched(), Some("abcd"));
    }

    #[test]
    fn no_stops_passes_through_and_empty_stop_is_ignored() {
        let mut m = StopMatcher::new([""]);
        assert_eq!(m.push("abc"), StopStep { emit: "abc".into(), stopped: false });
    }

    #[test]
    fn multibyte_stop_and_text() {
        let mut m = StopMatcher::new(["»»"]);
        assert_eq!(m.push("é»").emit, "é");
        let step = m.push("»z");
        assert!(step.stopped);
        assert_eq!(step.emit, "");
    }
}
