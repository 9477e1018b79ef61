//! An incremental Server-Sent Events parser for DashScope streams (the SSE framing DashScope's
//! streaming endpoints use, with its status comments).
//!
//! Bytes go in as they arrive, split anywhere (inside a line, inside a UTF-8 sequence, between
//! `\r` and `\n`); whole events come out. Lines end in `\n`, `\r\n` or `\r`. Besides the standard
//! fields (`id:`, `event:`, `data:`), DashScope sends a comment line `:HTTP_STATUS/NNN` that
//! carries the real status of the event (an `event:error` may come under HTTP 200); the parser
//! keeps it. Several `data:` lines in one event are kept apart: DashScope does not say whether
//! they join with `\n` (the SSE standard) or with nothing, so [`Event::json`] tries both.
//!
//! Lines and events are bounded ([`Limits`]): a peer that never ends a line cannot make herald
//! buffer without limit.
//!
//! Own code rather than `eventsource-stream`: that crate drops comment lines (where the status
//! lives), always joins `data:` with `\n`, and bounds neither lines nor events.
//!
//! It must not interpret the events' JSON (the families' decoders do).

use std::fmt;

/// Size bounds on what one peer can make the parser buffer.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Longest line, in bytes (without its terminator).
    pub max_line: usize,
    /// Largest event, in bytes of `data:` payload.
    pub max_event: usize,
}

impl Default for Limits {
    /// 8 MiB per line and per event: a `data:` line carries one base64 audio chunk, and
    /// MiniMax's final frame repeats the whole audio in hex (about 1 MB per minute at 16 kHz).
    fn default() -> Self {
        Self {
            max_line: 8 << 20,
            max_event: 8 << 20,
        }
    }
}

/// One event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// The `id:` field, if any.
    pub id: Option<String>,
    /// The `event:` field ("result", "error", ...); `None` when absent (SSE's "message").
    pub event: Option<String>,
    /// The status from a `:HTTP_STATUS/NNN` comment, if one came.
    pub http_status: Option<u16>,
    /// The `data:` lines, in order, without the field name (one leading space removed, as the
    /// SSE standard says).
    pub data: Vec<String>,
}

impl Event {
    /// True for `event:error`.
    pub fn is_error(&self) -> bool {
        self.event.as_deref().is_some_and(|e| e.trim() == "error")
    }

    /// The event's JSON payload: the `data:` lines joined with `\n` (the SSE standard), or, if
    /// that is not JSON, joined with nothing (a long line split anywhere). `None` when the
    /// event has no data; `Err` when neither reading is JSON.
    pub fn json(&self) -> Option<Result<serde_json::Value, serde_json::Error>> {
        match self.data.as_slice() {
            [] => None,
            [one] => Some(serde_json::from_str(one)),
            many => {
                let joined = many.join("\n");
                match serde_json::from_str(&joined) {
                    Ok(v) => Some(Ok(v)),
                    Err(e) => Some(serde_json::from_str(&many.concat()).map_err(|_| e)),
                }
            }
        }
    }
}

/// The stream broke a bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseError {
    /// A line grew past [`Limits::max_line`].
    LineTooLong(usize),
    /// An event's data grew past [`Limits::max_event`].
    EventTooLarge(usize),
}

impl fmt::Display for SseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LineTooLong(n) => write!(f, "an SSE line is longer than {n} bytes"),
            Self::EventTooLarge(n) => write!(f, "an SSE event is larger than {n} bytes"),
        }
    }
}

impl std::error::Error for SseError {}

/// The incremental parser.
#[derive(Debug, Default)]
pub struct Parser {
    limits: Limits,
    /// Bytes of the current, unfinished line.
    line: Vec<u8>,
    /// The previous chunk ended with `\r`: a `\n` at the start of the next one belongs to it.
    after_cr: bool,
    /// The event being built.
    current: Event,
    /// Bytes of data in `current`.
    current_size: usize,
    /// True once `current` has any field.
    has_fields: bool,
}

impl Parser {
    /// A parser with these bounds.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Feed bytes; complete events are appended to `out`.
    pub fn push(&mut self, mut bytes: &[u8], out: &mut Vec<Event>) -> Result<(), SseError> {
        // An empty chunk (HTTP/2 allows empty DATA frames) must not forget a pending `\r`: a
        // `\r` | `` | `\n` split would otherwise read `\r\n` as two line ends (found by
        // fuzz/fuzz_targets/sse.rs).
        if bytes.is_empty() {
            return Ok(());
        }
        if self.after_cr {
            self.after_cr = false;
            if let Some(rest) = bytes.strip_prefix(b"\n") {
                bytes = rest;
            }
        }
        while let Some(pos) = memchr::memchr2(b'\n', b'\r', bytes) {
            self.extend_line(&bytes[..pos])?;
            let cr = bytes[pos] == b'\r';
            bytes = &bytes[pos + 1..];
            if cr {
                match bytes.first() {
                    Some(b'\n') => bytes = &bytes[1..],
                    None => self.after_cr = true,
                    Some(_) => {}
                }
            }
            let line = std::mem::take(&mut self.line);
            self.line_done(&line, out)?;
            self.line = line;
            self.line.clear();
        }
        self.extend_line(bytes)
    }

    /// The stream ended: an event still being built (no blank line after it) is returned, as
    /// browsers do not but a lenient client should (DashScope closes right after the last
    /// event).
    pub fn finish(mut self) -> Result<Option<Event>, SseError> {
        let mut out = Vec::new();
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.line_done(&line, &mut out)?;
        }
        if let Some(e) = out.pop() {
            return Ok(Some(e));
        }
        Ok(self.has_fields.then(|| std::mem::take(&mut self.current)))
    }

    fn extend_line(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.line.len() + bytes.len() > self.limits.max_line {
            return Err(SseError::LineTooLong(self.limits.max_line));
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<Event>) -> Result<(), SseError> {
        if line.is_empty() {
            if self.has_fields {
                out.push(std::mem::take(&mut self.current));
                self.current_size = 0;
                self.has_fields = false;
            }
            return Ok(());
        }
        // Valid UTF-8 (always, from DashScope) is checked by the fast path and borrowed.
        let line = match std::str::from_utf8(line) {
            Ok(line) => std::borrow::Cow::Borrowed(line),
            Err(_) => String::from_utf8_lossy(line),
        };
        if let Some(comment) = line.strip_prefix(':') {
            if let Some(code) = comment.trim().strip_prefix("HTTP_STATUS/") {
                self.current.http_status = code.trim().parse().ok();
                self.has_fields = true;
            }
            return Ok(());
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (&*line, ""),
        };
        match field {
            "data" => {
                self.current_size += value.len();
                if self.current_size > self.limits.max_event {
                    return Err(SseError::EventTooLarge(self.limits.max_event));
                }
                self.current.data.push(value.to_owned());
            }
            "event" => self.current.event = Some(value.to_owned()),
            "id" => self.current.id = Some(value.to_owned()),
            // `retry:` and unknown fields are ignored, as the SSE standard says.
            _ => return Ok(()),
        }
        self.has_fields = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "id:1\nevent:result\n:HTTP_STATUS/200\ndata:{\"a\":1}\n\n\
                          id:2\nevent:error\n:HTTP_STATUS/429\ndata:{\"code\":\"Throttling\"}\n\n";

    fn parse_in_pieces(bytes: &[u8], cuts: &[usize]) -> Vec<Event> {
        let mut p = Parser::default();
        let mut out = Vec::new();
        let mut start = 0;
        for &c in cuts.iter().chain(std::iter::once(&bytes.len())) {
            p.push(&bytes[start..c], &mut out).unwrap();
            start = c;
        }
        out.extend(p.finish().unwrap());
        out
    }

    #[test]
    fn dashscope_framing_with_status_comments() {
        let events = parse_in_pieces(STREAM.as_bytes(), &[]);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].id.as_deref(), Some("1"));
        assert_eq!(events[0].event.as_deref(), Some("result"));
        assert_eq!(events[0].http_status, Some(200));
        assert_eq!(events[0].json().unwrap().unwrap()["a"], 1);
        assert!(events[1].is_error());
        assert_eq!(events[1].http_status, Some(429));
    }

    #[test]
    fn an_empty_chunk_between_cr_and_lf_is_not_a_blank_line() {
        // Found by the `sse` fuzz target: `\r` | `` | `\n` used to end the event early.
        let text = STREAM.replace('\n', "\r\n");
        let bytes = text.as_bytes();
        let expected = parse_in_pieces(bytes, &[]);
        for (i, _) in text.match_indices("\r\n") {
            assert_eq!(
                parse_in_pieces(bytes, &[i + 1, i + 1]),
                expected,
                "cut at {i}"
            );
        }
    }

    #[test]
    fn every_split_point_and_line_ending_gives_the_same_events() {
        let expected = parse_in_pieces(STREAM.as_bytes(), &[]);
        for ending in ["\n", "\r\n", "\r"] {
            let text = STREAM.replace('\n', ending);
            let bytes = text.as_bytes();
            for cut in 0..=bytes.len() {
                assert_eq!(
                    parse_in_pieces(bytes, &[cut]),
                    expected,
                    "ending {ending:?}, cut at {cut}"
                );
            }
            // Byte by byte.
            let cuts: Vec<usize> = (1..bytes.len()).collect();
            assert_eq!(parse_in_pieces(bytes, &cuts), expected);
        }
    }

    #[test]
    fn multi_line_data_joins_with_newline_or_nothing() {
        let newline = "data:{\"a\":1,\ndata:\"b\":2}\n\n";
        let e = parse_in_pieces(newline.as_bytes(), &[]);
        assert_eq!(e[0].json().unwrap().unwrap()["b"], 2);
        // A base64 string split in the middle only parses when concatenated.
        let concat = "data:{\"audio\":\"QUJD\ndata:REVG\"}\n\n";
        let e = parse_in_pieces(concat.as_bytes(), &[]);
        assert_eq!(e[0].json().unwrap().unwrap()["audio"], "QUJDREVG");
        let bad = "data:{\"a\":\ndata:nope\n\n";
        assert!(
            parse_in_pieces(bad.as_bytes(), &[])[0]
                .json()
                .unwrap()
                .is_err()
        );
    }

    #[test]
    fn the_last_event_may_lack_its_blank_line() {
        let e = parse_in_pieces(b"id:7\ndata:{}", &[]);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].id.as_deref(), Some("7"));
        assert!(parse_in_pieces(b"", &[]).is_empty());
        assert!(parse_in_pieces(b"\n\n:keepalive\n\n", &[]).is_empty());
    }

    #[test]
    fn a_space_after_the_colon_is_tolerated_and_utf8_survives_splits() {
        let text = "event: result\ndata: {\"t\":\"你好\"}\n\n";
        let bytes = text.as_bytes();
        for cut in 0..=bytes.len() {
            let e = parse_in_pieces(bytes, &[cut]);
            assert_eq!(e[0].event.as_deref(), Some("result"));
            assert_eq!(e[0].json().unwrap().unwrap()["t"], "你好");
        }
    }

    #[test]
    fn lines_and_events_are_bounded() {
        let limits = Limits {
            max_line: 16,
            max_event: 24,
        };
        let mut p = Parser::new(limits);
        let mut out = Vec::new();
        // An endless line fails once past the bound, however it is split.
        p.push(b"data:0123456789", &mut out).unwrap();
        assert_eq!(p.push(b"abcdef", &mut out), Err(SseError::LineTooLong(16)));
        let mut p = Parser::new(limits);
        p.push(b"data:0123456789\ndata:0123456789\n", &mut out)
            .unwrap();
        assert_eq!(
            p.push(b"data:0123456789\n", &mut out),
            Err(SseError::EventTooLarge(24))
        );
    }
}
