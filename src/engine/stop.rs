//! Stop strings, matched on decoded text as it streams out.
//!
//! Text that could still turn out to be the start of a stop string is held back, so a stop string
//! split across tokens is caught and no part of it is ever emitted.

/// Emits text up to the first stop string.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

/// What [`StopMatcher::push`] lets out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    /// Text that is certainly not part of a stop string.
    pub text: String,
    /// A stop string was found; `text` ends right before it.
    pub stopped: bool,
}

impl StopMatcher {
    /// `stops` must not contain the empty string (the generator checks).
    pub fn new(stops: &[String]) -> Self {
        StopMatcher { stops: stops.to_vec(), held: String::new() }
    }

    pub fn push(&mut self, piece: &str) -> Released {
        self.held.push_str(piece);
        // Earliest occurrence of any stop string: with overlapping stops, the one that starts first
        // is the one a reader would see first.
        let first = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min();
        if let Some(at) = first {
            let text = self.held[..at].to_string();
            self.held.clear();
            return Released { text, stopped: true };
        }
        let keep = self.longest_stop_prefix_suffix();
        let cut = self.held.len() - keep;
        let text = self.held[..cut].to_string();
        self.held.drain(..cut);
        Released { text, stopped: false }
    }

    /// The text still held back, when generation ends for another reason.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Bytes at the end of `held` that are a proper prefix of some stop string.
    fn longest_stop_prefix_suffix(&self) -> usize {
        let mut best = 0;
        for stop in &self.stops {
            for (k, _) in stop.char_indices().skip(1) {
                if k > best && self.held.ends_with(&stop[..k]) {
                    best = k;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out = Vec::new();
        for p in pieces {
            let r = m.push(p);
            out.push(r.text);
            if r.stopped {
                return (out, true);
            }
        }
        out.push(m.flush());
        (out, false)
    }

    #[test]
    fn stop_split_across_pieces_is_caught_and_not_emitted() {
        let (out, stopped) = run(&["END"], &["abc E", "N", "D tail"]);
        assert!(stopped);
        assert_eq!(out.concat(), "abc ");
        // "E" was held back until it was known to start "END".
        assert_eq!(out, vec!["abc ", "", ""]);
    }

    #[test]
    fn false_start_is_released_once_it_cannot_match() {
        let (out, stopped) = run(&["END"], &["xE", "Nd", "!"]);
        assert!(!stopped);
        assert_eq!(out, vec!["x", "ENd", "!", ""]);
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let (out, stopped) = run(&["world", "lo w"], &["hello world"]);
        assert!(stopped);
        assert_eq!(out.concat(), "hel");
    }

    #[test]
    fn multibyte_stops_hold_back_on_char_boundaries() {
        let (out, stopped) = run(&["日本語"], &["a日", "本", "x"]);
        assert!(!stopped);
        assert_eq!(out, vec!["a", "", "日本x", ""]);
        let (out, stopped) = run(&["日本語"], &["a日", "本語b"]);
        assert!(stopped);
        assert_eq!(out.concat(), "a");
    }

    #[test]
    fn held_text_comes_out_at_flush() {
        let (out, stopped) = run(&["\n\n"], &["line\n"]);
        assert!(!stopped);
        assert_eq!(out, vec!["line", "\n"]);
    }
}
