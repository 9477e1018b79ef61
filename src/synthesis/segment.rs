//! Sentences out of text that arrives in pieces (an LLM's answer, token by token).
//!
//! [`Segmenter::push`] takes a piece of text, cut anywhere (mid-word, mid-number, mid-marker),
//! and returns the sentences that are now *certainly* complete; [`Segmenter::flush`] (and
//! [`Segmenter::finish`], at the end of the text) returns whatever is pending. A boundary is
//! only certain once the character after it has arrived, so a piece ending in "3." waits for
//! the next one ("14" makes it a decimal). The rules, shared with the DashScope splitter
//! (`crate::engine::dashscope::split`), which cuts whole text with the same predicates:
//!
//! - `。！？；…` and a line break end a sentence wherever they appear (closing quotes and
//!   brackets after them stay with the sentence);
//! - `.!?;` end a sentence when followed by whitespace, except after an abbreviation ("Dr.",
//!   "e.g.", "U.S.", a single initial) or a list number at the start of a line ("1. ");
//! - a sentence longer than [`MAX_SENTENCE_CHARS`] is cut at its last clause mark or space, so
//!   a run-on text still starts speaking.
//!
//! Markdown is not spoken: code fences and what is inside them, heading marks, list bullets,
//! block quotes, emphasis marks, inline-code backticks, link targets (`[text](url)` → text),
//! table bars and horizontal rules are dropped; a sentence left with no letter or digit is not
//! emitted. This module works on text only: it must not know engines, audio or any door.

/// A sentence longer than this (in characters, before cleaning) is cut at a clause mark or a
/// space without waiting for its end.
pub const MAX_SENTENCE_CHARS: usize = 400;

/// Ends a sentence wherever it appears (CJK and other terminators, line breaks).
pub fn is_cjk_sentence_end(c: char) -> bool {
    matches!(c, '。' | '！' | '？' | '；' | '…' | '\n')
}

/// Ends a sentence when followed by whitespace or the end of text (so "3.14" and "e.g." inside
/// a word stay whole).
pub fn is_latin_sentence_end(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | ';')
}

/// Closing quotes and brackets (and markdown emphasis marks) that stay with the sentence
/// they close.
pub fn is_closer(c: char) -> bool {
    matches!(
        c,
        '”' | '」' | '』' | '）' | ')' | ']' | '"' | '\'' | '’' | '*' | '_' | '`'
    )
}

/// A clause boundary, where an over-long sentence may be cut.
pub fn is_clause_mark(c: char) -> bool {
    matches!(c, '，' | '、' | '：' | ',' | ':' | '—')
}

/// Words that end with a period without ending the sentence (compared lowercase, without the
/// period).
const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "vs", "fig", "approx", "dept", "gen",
    "col", "lt", "sgt", "capt", "rev", "hon", "cf", "al", "ca", "no", "vol", "pp",
];

/// Whether the sentence terminator at byte `i` of `text` ends a sentence, given what follows.
/// `None` when that cannot be known yet (the text ends right after it, or after its closers,
/// and `complete` is false); otherwise the byte index where the sentence ends (after its
/// closers), or `Some(None)` for "not a boundary".
fn boundary_at(
    text: &str,
    i: usize,
    c: char,
    complete: bool,
    starts_line: bool,
) -> Option<Option<usize>> {
    let cjk = is_cjk_sentence_end(c);
    if !cjk && !is_latin_sentence_end(c) {
        return Some(None);
    }
    let mut end = i + c.len_utf8();
    if c == '\n' {
        return Some(Some(end));
    }
    // Closers, and (for CJK) more terminators: "？！", "。」".
    let mut next = None;
    for (j, n) in text[end..].char_indices() {
        if is_closer(n) || (cjk && is_cjk_sentence_end(n) && n != '\n') {
            continue;
        }
        next = Some((end + j, n));
        break;
    }
    let Some((j, n)) = next else {
        // Nothing after it yet: certain only at the end of the text.
        return if complete {
            Some(Some(text.len()))
        } else {
            None
        };
    };
    end = j;
    if cjk {
        return Some(Some(end));
    }
    if !n.is_whitespace() {
        return Some(None);
    }
    if c == '.' && !ends_sentence_with_period(&text[..i], starts_line) {
        return Some(None);
    }
    Some(Some(end))
}

/// Whether a period after `before` ends a sentence: not after an abbreviation, an initial, or
/// a list number at the start of a line (`starts_line`: `before` begins at one).
fn ends_sentence_with_period(before: &str, starts_line: bool) -> bool {
    if before.ends_with('.') {
        return true; // an ellipsis: "Wait..."
    }
    let word_start = before
        .char_indices()
        .rev()
        .find(|(_, c)| c.is_whitespace())
        .map_or(0, |(k, c)| k + c.len_utf8());
    let word = before[word_start..].trim_start_matches(|c: char| !c.is_alphanumeric());
    if word.is_empty() {
        return true;
    }
    let line_start = before[..word_start].trim_end_matches([' ', '\t']);
    if word.chars().all(|c| c.is_ascii_digit())
        && ((line_start.is_empty() && starts_line) || line_start.ends_with('\n'))
    {
        return false; // "1. First item"
    }
    let lower = word.to_lowercase();
    if lower.contains('.') {
        return false; // "e.g.", "U.S."
    }
    let mut chars = word.chars();
    if let (Some(first), None) = (chars.next(), chars.next())
        && first.is_alphabetic()
        && first.is_uppercase()
    {
        return false; // an initial: "J. Smith"
    }
    !ABBREVIATIONS.contains(&lower.as_str())
}

/// Turns text pieces into sentences (see the module docs).
#[derive(Debug, Default)]
pub struct Segmenter {
    /// Text received and not yet emitted.
    pending: String,
    /// Bytes of `pending` already scanned and known to hold no boundary.
    scanned: usize,
    /// `pending` starts at the beginning of a line.
    mid_line: bool,
    /// Inside a fenced code block.
    in_fence: bool,
}

impl Segmenter {
    /// A segmenter at the start of a text.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add `piece`; the sentences now complete, cleaned, in order.
    pub fn push(&mut self, piece: &str) -> Vec<String> {
        self.pending.push_str(piece);
        let mut out = Vec::new();
        self.cut(false, &mut out);
        out
    }

    /// Everything pending, now (a client's flush): the complete sentences and the rest.
    pub fn flush(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        self.cut(true, &mut out);
        let rest = std::mem::take(&mut self.pending);
        self.scanned = 0;
        self.emit(&rest, &mut out);
        out
    }

    /// The end of the text: everything pending.
    pub fn finish(mut self) -> Vec<String> {
        self.flush()
    }

    /// Characters received and not yet emitted.
    pub fn pending_chars(&self) -> usize {
        self.pending.chars().count()
    }

    /// Whether text is waiting for its sentence to end.
    pub fn has_pending(&self) -> bool {
        !self.pending.trim().is_empty()
    }

    fn cut(&mut self, complete: bool, out: &mut Vec<String>) {
        loop {
            let Some(end) = self.find_boundary(complete) else {
                return;
            };
            let sentence: String = self.pending.drain(..end).collect();
            self.scanned = 0;
            self.emit(&sentence, out);
        }
    }

    /// The end of the first certain sentence in `pending`.
    fn find_boundary(&mut self, complete: bool) -> Option<usize> {
        let text = self.pending.as_str();
        let (mut last_clause, mut last_space) = (None, None);
        let mut count = 0;
        for (i, c) in text.char_indices() {
            count += 1;
            if i >= self.scanned {
                match boundary_at(text, i, c, complete, !self.mid_line) {
                    Some(Some(end)) => return Some(end),
                    Some(None) => {}
                    // Undecided: look no further, and rescan from here next time.
                    None => {
                        self.scanned = i;
                        return None;
                    }
                }
            }
            if is_clause_mark(c) {
                last_clause = Some(i + c.len_utf8());
            } else if c.is_whitespace() && i > 0 {
                last_space = Some(i);
            }
            if count >= MAX_SENTENCE_CHARS {
                return Some(last_clause.or(last_space).unwrap_or(i + c.len_utf8()));
            }
        }
        self.scanned = text.len();
        None
    }

    /// Clean one raw sentence and emit it unless nothing speakable is left.
    fn emit(&mut self, raw: &str, out: &mut Vec<String>) {
        let at_line_start = !self.mid_line;
        self.mid_line = !raw.ends_with('\n');
        let trimmed = raw.trim();
        if at_line_start && (trimmed.starts_with("```") || trimmed.starts_with("~~~")) {
            self.in_fence = !self.in_fence;
            return;
        }
        if self.in_fence {
            return;
        }
        let text = clean(trimmed, at_line_start);
        if text.chars().any(char::is_alphanumeric) {
            out.push(text);
        }
    }
}

/// `sentence` without markdown, its whitespace collapsed.
fn clean(sentence: &str, at_line_start: bool) -> String {
    let mut s = sentence;
    if at_line_start {
        // Block quote, heading, bullet or list number: one of each at most, in that order.
        s = s.trim_start_matches('>').trim_start();
        let hashes = s.len() - s.trim_start_matches('#').len();
        if (1..=6).contains(&hashes) && s[hashes..].starts_with(' ') {
            s = s[hashes..].trim_start();
        }
        for bullet in ["- ", "* ", "+ ", "• "] {
            if let Some(rest) = s.strip_prefix(bullet) {
                s = rest.trim_start();
            }
        }
        let digits = s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits > 0
            && let Some(rest) = s[digits..]
                .strip_prefix(". ")
                .or_else(|| s[digits..].strip_prefix(") "))
        {
            s = rest.trim_start();
        }
    }
    if s.chars().all(|c| matches!(c, '-' | '*' | '_' | '=' | ' ')) {
        return String::new(); // a horizontal rule
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' | '`' | '|' => out.push(' '),
            '_' if chars.peek() == Some(&'_') => {
                chars.next();
                out.push(' ');
            }
            // Emphasis, unless inside a word (snake_case).
            '_' if !(out.chars().next_back().is_some_and(char::is_alphanumeric)
                && chars.peek().is_some_and(|n| n.is_alphanumeric())) => {}
            '~' if chars.peek() == Some(&'~') => {
                chars.next();
            }
            // A link: keep its text, drop its target.
            ']' if chars.peek() == Some(&'(') => {
                let mut depth = 0;
                for n in chars.by_ref() {
                    match n {
                        '(' => depth += 1,
                        ')' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
            }
            '[' => {}
            c => out.push(c),
        }
    }
    let mut collapsed = String::with_capacity(out.len());
    for word in out.split_whitespace() {
        let glue = !collapsed.is_empty()
            && !word.starts_with(['.', ',', '!', '?', ';', ':', '。', '，', '！', '？']);
        if glue {
            collapsed.push(' ');
        }
        collapsed.push_str(word);
    }
    collapsed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sentences of `pieces` fed in order, then finished.
    fn feed(pieces: &[&str]) -> Vec<String> {
        let mut s = Segmenter::new();
        let mut out = Vec::new();
        for p in pieces {
            out.extend(s.push(p));
        }
        out.extend(s.finish());
        out
    }

    /// Every way of cutting `text` into pieces of `n` characters gives `expected`.
    fn every_cut(text: &str, expected: &[&str]) {
        let chars: Vec<char> = text.chars().collect();
        for n in 1..=chars.len().max(1) {
            let pieces: Vec<String> = chars.chunks(n).map(|c| c.iter().collect()).collect();
            let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
            assert_eq!(feed(&refs), expected, "pieces of {n}: {refs:?}");
        }
    }

    #[test]
    fn sentences_come_out_when_certain_and_not_before() {
        let mut s = Segmenter::new();
        assert!(s.push("Hello wor").is_empty());
        assert!(
            s.push("ld.").is_empty(),
            "a period at the end may be a decimal"
        );
        assert_eq!(s.push(" How"), vec!["Hello world."]);
        assert!(s.push(" are you?").is_empty());
        assert_eq!(s.push("\n"), vec!["How are you?"]);
        assert!(!s.has_pending());
        assert!(s.finish().is_empty());
    }

    #[test]
    fn decimals_split_across_pieces_stay_whole() {
        let mut s = Segmenter::new();
        assert!(s.push("Pi is 3.").is_empty());
        assert!(s.push("14 exactly").is_empty());
        assert_eq!(s.push(". Next"), vec!["Pi is 3.14 exactly."]);
        assert!(s.push(" one.").is_empty());
        assert_eq!(s.finish(), vec!["Next one."]);
        every_cut(
            "It costs $4.99 today. Version 1.2.3 is out!",
            &["It costs $4.99 today.", "Version 1.2.3 is out!"],
        );
    }

    #[test]
    fn abbreviations_and_initials_do_not_end_sentences() {
        every_cut(
            "Dr. Smith met Mr. J. Jones in the U.S. on Monday. Use tools, e.g. a hammer. Done.",
            &[
                "Dr. Smith met Mr. J. Jones in the U.S. on Monday.",
                "Use tools, e.g. a hammer.",
                "Done.",
            ],
        );
    }

    #[test]
    fn cjk_and_other_terminators_end_sentences_with_their_closers() {
        every_cut(
            "今天天气很好。我们去公园吧！你觉得呢？！他说：“好的。”然后走了；再见…",
            &[
                "今天天气很好。",
                "我们去公园吧！",
                "你觉得呢？！",
                "他说：“好的。”",
                "然后走了；",
                "再见…",
            ],
        );
        every_cut(
            "Really?! Yes; fine. \"Quoted.\" Next",
            &["Really?!", "Yes;", "fine.", "\"Quoted.\"", "Next"],
        );
    }

    #[test]
    fn newlines_and_paragraphs_end_sentences() {
        every_cut(
            "First line without a period\nSecond line\n\nNew paragraph",
            &[
                "First line without a period",
                "Second line",
                "New paragraph",
            ],
        );
    }

    #[test]
    fn markdown_is_not_spoken() {
        let text = "# Title\n\nHere is **bold** and `code`. See [the docs](https://x.y/z).\n\
                    - first item\n* second item\n1. numbered one\n2) numbered two\n> quoted\n\
                    ---\n```rust\nlet x = 1. + 2.;\nfn f() {}\n```\nAfter the code.\n\
                    | a | b |\n";
        every_cut(
            text,
            &[
                "Title",
                "Here is bold and code.",
                "See the docs.",
                "first item",
                "second item",
                "numbered one",
                "numbered two",
                "quoted",
                "After the code.",
                "a b",
            ],
        );
    }

    #[test]
    fn emphasis_around_a_terminator_stays_with_its_sentence() {
        every_cut(
            "**Note.** This matters. _Really._ Yes",
            &["Note.", "This matters.", "Really.", "Yes"],
        );
    }

    #[test]
    fn flush_forces_out_what_is_pending_and_keeps_going() {
        let mut s = Segmenter::new();
        assert!(s.push("Half a sent").is_empty());
        assert_eq!(s.flush(), vec!["Half a sent"]);
        assert!(s.flush().is_empty(), "nothing twice");
        assert_eq!(s.push("ence. Then"), vec!["ence."]);
        assert!(s.push(" more.").is_empty());
        assert_eq!(s.flush(), vec!["Then more."]);
        assert!(s.finish().is_empty());
    }

    #[test]
    fn nothing_speakable_is_not_emitted() {
        assert!(feed(&["  ", "\n\n", "**", "...", "\n---\n"]).is_empty());
        assert!(feed(&[]).is_empty());
    }

    #[test]
    fn a_run_on_sentence_is_cut_at_a_clause_mark_or_a_space() {
        let clause = "word ".repeat(50);
        let text = format!("{clause}, {clause}, {clause}end.");
        let mut s = Segmenter::new();
        let first = s.push(&text);
        assert!(!first.is_empty(), "cut before its end arrived");
        for sentence in &first {
            assert!(sentence.chars().count() <= MAX_SENTENCE_CHARS, "{sentence}");
        }
        let mut all = first;
        all.extend(s.finish());
        let words: usize = all.iter().map(|s| s.split_whitespace().count()).sum();
        assert_eq!(words, 151, "no word lost: {all:?}");
        let cjk = "很".repeat(MAX_SENTENCE_CHARS + 10);
        let pieces = feed(&[&cjk]);
        assert_eq!(pieces.len(), 2);
        assert_eq!(pieces.concat(), cjk);
    }

    #[test]
    fn every_character_of_plain_text_is_kept_in_order() {
        let text = "One. Two! Three? Four; five 6.5 seven… 八。九！ ten";
        let out = feed(&[text]);
        let letters = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
        assert_eq!(letters(&out.concat()), letters(text));
        assert_eq!(out.len(), 8, "{out:?}");
    }
}
