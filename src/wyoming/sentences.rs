//! Streamed text → complete sentences, for Wyoming's `synthesize-chunk`s: text arrives cut
//! anywhere, and a sentence is handed out as soon as its end is certain, so its audio can start
//! before the rest of the text has arrived.
//!
//! The rules are the core's streamed-text segmenter's ([`crate::synthesis::segment`], the same
//! as `SynthesizeStream`'s): a sentence ends at `。！？；…` or a line break, or at `.!?;` followed
//! by whitespace (so "3.14" and "Dr. Smith" stay whole, and a final "." waits until the next
//! chunk or the end of the text shows what follows); markdown markers are not spoken. Text
//! only: it must not know engines or the wire.

use crate::synthesis::segment::Segmenter;

/// The splitter of one streaming session.
#[derive(Debug, Default)]
pub struct Sentences {
    segmenter: Segmenter,
}

impl Sentences {
    /// Add `text`; returns the sentences it completes.
    pub fn push(&mut self, text: &str) -> Vec<String> {
        self.segmenter.push(text)
    }

    /// The rest of the text, when the session ends.
    pub fn finish(&mut self) -> Vec<String> {
        self.segmenter.flush()
    }

    /// Characters received and not yet handed out.
    pub fn pending_chars(&self) -> usize {
        self.segmenter.pending_chars()
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
        assert_eq!(s.finish(), vec!["再"]);
        assert!(s.finish().is_empty());
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
