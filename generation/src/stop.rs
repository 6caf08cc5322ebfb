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
}

impl StopMatcher {
    /// A matcher for `stops`; empty strings are ignored.
    pub fn new<I, S>(stops: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let stops = stops.into_iter().map(Into::into).filter(|s: &String| !s.is_empty()).collect();
        StopMatcher { stops, held: String::new(), stopped: false, matched: None }
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
    /// of some stop string (and starts on a character boundary).
    fn partial_suffix_len(&self) -> usize {
        let held = self.held.as_bytes();
        let mut best = 0;
        for stop in &self.stops {
            let stop = stop.as_bytes();
            let max = (stop.len() - 1).min(held.len());
            for len in (best + 1..=max).rev() {
                let start = held.len() - len;
                if self.held.is_char_boundary(start) && held[start..] == stop[..len] {
                    best = len;
                    break;
                }
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

#[cfg(test)]
mod tests {
    use super::*;

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
