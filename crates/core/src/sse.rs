//! A decoder for server-sent events (the WHATWG `text/event-stream` format).
//!
//! Bytes arrive split anywhere (inside a line, inside a UTF-8 character), so the decoder keeps
//! the unfinished tail between calls and yields only complete events.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, if any.
    pub event: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// Incremental decoder: feed it bytes as they come.
#[derive(Debug, Default)]
pub struct SseDecoder {
    pending: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
    has_data: bool,
}

/// A stream sending more than this without a line break is not an event stream; bounding the
/// buffer keeps a misbehaving server from growing our memory without limit.
pub const MAX_LINE_BYTES: usize = 4 << 20;

impl SseDecoder {
    /// A fresh decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes and returns the events they complete.
    ///
    /// Fails only when one line grows past [`MAX_LINE_BYTES`].
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, String> {
        self.pending.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(offset) =
            self.pending[start..].iter().position(|&b| b == b'\n' || b == b'\r')
        {
            let end = start + offset;
            // A "\r\n" pair is one line break; a lone "\r" at the very end may be half of one.
            let mut next = end + 1;
            if self.pending[end] == b'\r' {
                match self.pending.get(end + 1) {
                    Some(b'\n') => next += 1,
                    None => break,
                    Some(_) => {}
                }
            }
            let line = String::from_utf8_lossy(&self.pending[start..end]).into_owned();
            self.line(&line, &mut events);
            start = next;
        }
        self.pending.drain(..start);
        if self.pending.len() > MAX_LINE_BYTES {
            return Err(format!("an event-stream line exceeded {MAX_LINE_BYTES} bytes"));
        }
        Ok(events)
    }

    fn line(&mut self, line: &str, events: &mut Vec<SseEvent>) {
        if line.is_empty() {
            if self.has_data {
                events.push(SseEvent { event: self.event.take(), data: self.data.join("\n") });
            }
            self.event = None;
            self.data.clear();
            self.has_data = false;
            return;
        }
        if line.starts_with(':') {
            return; // a comment, used as keep-alive
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                self.data.push(value.to_string());
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_string()),
            _ => {} // id, retry and unknown fields do not matter to a generation stream
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut d = SseDecoder::new();
        chunks.iter().flat_map(|c| d.push(c).unwrap()).collect()
    }

    #[test]
    fn decodes_openai_style_events() {
        let events = decode_all(&[b"data: {\"a\":1}\n\ndata: [DONE]\n\n"]);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].data, "{\"a\":1}");
        assert_eq!(events[1].data, "[DONE]");
    }

    #[test]
    fn handles_crlf_comments_named_events_and_multiline_data() {
        let events =
            decode_all(&[b": keep-alive\r\n\r\nevent: error\r\ndata: a\r\ndata: b\r\n\r\n"]);
        assert_eq!(events, vec![SseEvent { event: Some("error".into()), data: "a\nb".into() }]);
    }

    #[test]
    fn a_crlf_split_across_reads_is_one_line_break() {
        let events = decode_all(&[b"data: x\r", b"\n\r\n"]);
        assert_eq!(events, vec![SseEvent { event: None, data: "x".into() }]);
    }

    #[test]
    fn an_unterminated_event_is_not_dispatched() {
        assert!(decode_all(&[b"data: partial"]).is_empty());
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut d = SseDecoder::new();
        let big = vec![b'a'; MAX_LINE_BYTES + 1];
        assert!(d.push(&big).is_err());
    }

    proptest! {
        /// However the bytes are split, the decoded events are the same.
        #[test]
        fn splitting_does_not_change_the_events(
            payloads in proptest::collection::vec("[a-zA-Z0-9 {}\":,é🙂]{0,40}", 1..8),
            cuts in proptest::collection::vec(0usize..400, 0..10),
        ) {
            let mut wire = Vec::new();
            for p in &payloads {
                wire.extend_from_slice(format!("data: {p}\r\n\n").as_bytes());
            }
            let whole = decode_all(&[&wire]);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (wire.len() + 1)).collect();
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut last = 0;
            for c in cuts { pieces.push(&wire[last..c]); last = c; }
            pieces.push(&wire[last..]);
            prop_assert_eq!(decode_all(&pieces), whole.clone());
            prop_assert_eq!(whole.len(), payloads.len());
            for (e, p) in whole.iter().zip(&payloads) { prop_assert_eq!(&e.data, p); }
        }

        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut d = SseDecoder::new();
            let _ = d.push(&bytes);
        }
    }
}
