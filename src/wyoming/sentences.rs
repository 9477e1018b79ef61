//! Streamed text → complete sentences, for Wyoming's `synthesize-chunk`s: text arrives cut
//! anywhere, and a sentence is handed out as soon as its end is certain, so its audio can start
//! before the rest of the text has arrived.
//!
//! A sentence ends at `。！？；…` or a line break, or at `.!?;` followed by whitespace (so
//! "3.14" stays whole, and a final "." waits until the next chunk or the end of the text shows
//! what follows). Every character ends up in exactly one sentence, in order; sentences are
//! trimmed and never empty. Text only: it must not know engines or the wire.

/// The splitter of one streaming session.
#[derive(Debug, Default)]
pub struct Sentences {
    /// Text received and not yet handed out.
    pending: String,
}

/// Ends a sentence wherever it appears.
fn ends_anywhere(c: char) -> bool {
    matches!(c, '。' | '！' | '？' | '；' | '…' | '\n')
}

/// Ends a sentence when whitespace follows.
fn ends_before_space(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | ';')
}

impl Sentences {
    /// Add `text`; returns the sentences it completes.
    pub fn push(&mut self, text: &str) -> Vec<String> {
        self.pending.push_str(text);
        let mut out = Vec::new();
        let mut start = 0;
        let mut chars = self.pending.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            let end = if ends_anywhere(c) {
                Some(i + c.len_utf8())
            } else if ends_before_space(c) {
                chars
                    .peek()
                    .filter(|(_, next)| next.is_whitespace())
                    .map(|_| i + c.len_utf8())
            } else {
                None
            };
            if let Some(end) = end {
                let sentence = self.pending[start..end].trim();
                if !sentence.is_empty() {
                    out.push(sentence.to_owned());
                }
                start = end;
            }
        }
        self.pending.drain(..start);
        out
    }

    /// The rest of the text, when the session ends (`None` if only whitespace is left).
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.pending);
        let rest = rest.trim();
        (!rest.is_empty()).then(|| rest.to_owned())
    }

    /// Characters received and not yet handed out.
    pub fn pending_chars(&self) -> usize {
        self.pending.chars().count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sentence_is_out_once_what_follows_its_end_is_known() {
        let mut s = Sentences::default();
        assert!(s.push("Hello wor").is_empty());
        assert!(s.push("ld.").is_empty(), "a final '.' may be 3.14");
        assert_eq!(s.push(" It is 3.14 now"), vec!["Hello world."]);
        assert_eq!(s.push("! 好的。再"), vec!["It is 3.14 now!", "好的。"]);
        assert_eq!(s.finish().as_deref(), Some("再"));
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn every_character_is_kept_in_order() {
        let text = "One. Two?  Three!\nFour; five 六。七";
        for cut in 1..text.len() {
            if !text.is_char_boundary(cut) {
                continue;
            }
            let mut s = Sentences::default();
            let mut all = s.push(&text[..cut]);
            all.extend(s.push(&text[cut..]));
            all.extend(s.finish());
            assert_eq!(
                all,
                ["One.", "Two?", "Three!", "Four;", "five 六。", "七"],
                "cut at {cut}"
            );
        }
    }
}
