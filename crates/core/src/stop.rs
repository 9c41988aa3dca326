//! Cutting a streamed reply at its first stop string.
//!
//! Backends differ: mistral.rs streams the stop string itself (and sometimes a token past it)
//! before it stops. The filter makes every backend keep the promise of
//! [`SamplingParams::stop`](crate::SamplingParams::stop): the reply ends right before the first
//! stop string, which is never shown. Text that might be the start of a stop string is held back
//! until the next chunk decides.

/// What a chunk released.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Released {
    /// Text safe to show now.
    pub text: String,
    /// A stop string was found: nothing after `text` may be shown.
    pub stopped: bool,
}

/// A streaming stop-string matcher.
#[derive(Debug, Clone)]
pub struct StopFilter {
    stops: Vec<String>,
    held: String,
    stopped: bool,
}

impl StopFilter {
    /// A filter for these stop strings (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
            stopped: false,
        }
    }

    /// Feeds the next chunk.
    pub fn push(&mut self, chunk: &str) -> Released {
        if self.stopped {
            return Released { text: String::new(), stopped: true };
        }
        self.held.push_str(chunk);
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            self.stopped = true;
            let text = self.held[..at].to_string();
            self.held.clear();
            return Released { text, stopped: true };
        }
        // Keep the longest tail that is a proper prefix of some stop string.
        let keep = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| self.stops.iter().any(|s| s.starts_with(&self.held[i..])))
            .unwrap_or(self.held.len());
        let text = self.held[..keep].to_string();
        self.held.drain(..keep);
        Released { text, stopped: false }
    }

    /// The stream ended without a stop string: whatever was held back is reply text after all.
    pub fn finish(&mut self) -> String {
        if self.stopped {
            String::new()
        } else {
            std::mem::take(&mut self.held)
        }
    }

    /// Whether a stop string was seen.
    pub fn stopped(&self) -> bool {
        self.stopped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(stops: &[&str], chunks: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut f = StopFilter::new(&stops);
        let mut out = String::new();
        for c in chunks {
            let r = f.push(c);
            out.push_str(&r.text);
            if r.stopped {
                return (out, true);
            }
        }
        out.push_str(&f.finish());
        (out, false)
    }

    #[test]
    fn a_stop_string_split_across_chunks_is_caught() {
        assert_eq!(run(&["\nUser:"], &["Sure thing!\nUs", "er: hi"]), ("Sure thing!".into(), true));
    }

    #[test]
    fn a_false_start_is_released_when_the_next_chunk_breaks_it() {
        assert_eq!(run(&["\nUser:"], &["a\nUs", "ually fine"]), ("a\nUsually fine".into(), false));
    }

    #[test]
    fn the_earliest_of_several_stops_wins() {
        assert_eq!(run(&["scales", "dragon"], &["a dragon with scales"]), ("a ".into(), true));
    }

    #[test]
    fn no_stops_passes_everything_through() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
    }

    proptest! {
        /// However the text is chunked, the output is the text up to its first stop string.
        #[test]
        fn chunking_never_changes_the_result(
            text in "[ab\\n:é]{0,40}",
            stop in "[ab\\n:é]{1,4}",
            cuts in proptest::collection::vec(0usize..60, 0..8),
        ) {
            let expected = match text.find(&stop) { Some(i) => (text[..i].to_string(), true), None => (text.clone(), false) };
            let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| bounds[c % bounds.len()]).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut last = 0;
            for c in cuts { chunks.push(&text[last..c]); last = c; }
            chunks.push(&text[last..]);
            prop_assert_eq!(run(&[stop.as_str()], &chunks), expected);
        }
    }
}
