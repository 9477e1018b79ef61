//! Splitting long text into pieces a model takes whole.
//!
//! CosyVoice accepts thousands of characters but silently truncates the audio past about 150
//! billed units per internal batch, so herald never sends it more than a configured budget
//! (120 units by default). Text is cut at sentence ends (Chinese and Latin punctuation, line
//! breaks); a sentence over budget is cut at clause marks (commas, semicolons, colons), then at
//! spaces, and only as a last resort between characters. Consecutive short sentences are packed
//! into one piece up to the budget, so the upstream keeps prosodic context and herald makes few
//! calls. Every character of the input ends up in exactly one piece, in order; pieces are
//! trimmed of surrounding whitespace and never empty.
//!
//! The sentence-end rules are the streamed-text segmenter's (`crate::synthesis::segment`): one
//! set of rules for whole and streamed text.
//!
//! It works on text only: it must not change what is said (no normalization, no dropped
//! characters) or know which upstream the pieces go to.

use crate::synthesis::segment::{
    is_cjk_sentence_end, is_clause_mark, is_closer, is_latin_sentence_end,
};

/// Billed units of `text` as DashScope counts them (its billing documentation): a CJK ideograph
/// counts 2, anything else (letters, digits, kana, hangul, punctuation, spaces) 1.
pub fn units(text: &str) -> usize {
    text.chars().map(char_units).sum()
}

/// Billed units of one character.
pub fn char_units(c: char) -> usize {
    if is_ideograph(c) { 2 } else { 1 }
}

/// CJK ideographs: Unified, Extension A, compatibility ideographs, Extensions B and beyond.
fn is_ideograph(c: char) -> bool {
    matches!(c as u32,
        0x3400..=0x4DBF
        | 0x4E00..=0x9FFF
        | 0xF900..=0xFAFF
        | 0x20000..=0x3FFFF)
}

/// Scripts written without spaces between words (ideographs, kana, hangul syllables, CJK and
/// fullwidth punctuation): pieces of them are re-joined without a space.
fn is_cjk(c: char) -> bool {
    is_ideograph(c)
        || matches!(c as u32,
            0x3000..=0x30FF      // CJK punctuation, hiragana, katakana
            | 0xAC00..=0xD7AF    // Hangul syllables
            | 0xFF00..=0xFFEF) // Fullwidth forms
}

/// Split `text` into pieces of at most `max_units` billed units each (see the module docs).
/// `max_units` below 8 is treated as 8.
pub fn split(text: &str, max_units: usize) -> Vec<String> {
    let max_units = max_units.max(8);
    let mut pieces = Vec::new();
    let mut current = String::new();
    let mut current_units = 0;
    for sentence in sentences(text) {
        let sentence = sentence.trim();
        if sentence.is_empty() {
            continue;
        }
        let n = units(sentence);
        if n > max_units {
            flush(&mut pieces, &mut current, &mut current_units);
            for part in split_long(sentence, max_units) {
                pieces.push(part);
            }
            continue;
        }
        let sep = usize::from(!current.is_empty() && needs_space(&current, sentence));
        if current_units + sep + n > max_units {
            flush(&mut pieces, &mut current, &mut current_units);
        }
        if !current.is_empty() && needs_space(&current, sentence) {
            current.push(' ');
            current_units += 1;
        }
        current.push_str(sentence);
        current_units += n;
    }
    flush(&mut pieces, &mut current, &mut current_units);
    pieces
}

fn flush(pieces: &mut Vec<String>, current: &mut String, units: &mut usize) {
    if !current.is_empty() {
        pieces.push(std::mem::take(current));
    }
    *units = 0;
}

/// Latin sentences are re-joined with a space; CJK ones need none.
fn needs_space(before: &str, after: &str) -> bool {
    let last = before.chars().next_back().is_some_and(|c| !is_cjk(c));
    let first = after.chars().next().is_some_and(|c| !is_cjk(c));
    last || first
}

/// Cut after every sentence end; the pieces, concatenated, are `text`.
fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let end = i + c.len_utf8();
        let boundary = if is_cjk_sentence_end(c) {
            true
        } else if is_latin_sentence_end(c) {
            chars.peek().is_none_or(|&(_, n)| n.is_whitespace())
        } else {
            false
        };
        if boundary {
            // Keep closing quotes and brackets with their sentence.
            let mut end = end;
            while let Some(&(j, n)) = chars.peek() {
                if is_closer(n) {
                    end = j + n.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(&text[start..end]);
            start = end;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// Split one over-budget sentence: at clause marks, then spaces, then anywhere.
fn split_long(sentence: &str, max_units: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut current_units = 0;
    for clause in cut_after(sentence, is_clause_mark) {
        let clause = clause.trim();
        if clause.is_empty() {
            continue;
        }
        let n = units(clause);
        if n > max_units {
            flush(&mut out, &mut current, &mut current_units);
            out.extend(split_words(clause, max_units));
            continue;
        }
        let sep = usize::from(!current.is_empty() && needs_space(&current, clause));
        if current_units + sep + n > max_units {
            flush(&mut out, &mut current, &mut current_units);
        }
        if !current.is_empty() && needs_space(&current, clause) {
            current.push(' ');
            current_units += 1;
        }
        current.push_str(clause);
        current_units += n;
    }
    flush(&mut out, &mut current, &mut current_units);
    out
}

/// Split at spaces; a word over budget (or CJK text, which has no spaces) between characters.
fn split_words(clause: &str, max_units: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut current_units = 0;
    for word in clause.split_whitespace() {
        let n = units(word);
        let sep = usize::from(!current.is_empty());
        if current_units + sep + n <= max_units {
            if sep == 1 {
                current.push(' ');
            }
            current.push_str(word);
            current_units += sep + n;
            continue;
        }
        flush(&mut out, &mut current, &mut current_units);
        if n <= max_units {
            current.push_str(word);
            current_units = n;
            continue;
        }
        for c in word.chars() {
            let cu = char_units(c);
            if current_units + cu > max_units {
                flush(&mut out, &mut current, &mut current_units);
            }
            current.push(c);
            current_units += cu;
        }
    }
    flush(&mut out, &mut current, &mut current_units);
    out
}

/// Cut `text` after every character matching `mark`.
fn cut_after(text: &str, mark: fn(char) -> bool) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if mark(c) {
            let end = i + c.len_utf8();
            out.push(&text[start..end]);
            start = end;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Non-whitespace characters, in order: splitting must neither lose nor reorder any.
    fn letters(s: &str) -> String {
        s.chars().filter(|c| !c.is_whitespace()).collect()
    }

    fn check(text: &str, max: usize) -> Vec<String> {
        let pieces = split(text, max);
        for p in &pieces {
            assert!(!p.is_empty());
            assert!(units(p) <= max, "{p:?} has {} units > {max}", units(p));
            assert_eq!(p.trim(), p);
        }
        assert_eq!(letters(&pieces.concat()), letters(text));
        pieces
    }

    #[test]
    fn units_count_cjk_twice() {
        assert_eq!(units("abc"), 3);
        assert_eq!(units("你好"), 4);
        assert_eq!(units("你好, world"), 11);
        assert_eq!(units("你好。"), 5, "punctuation counts 1");
        assert_eq!(units("こんにちは"), 5, "kana count 1");
        assert_eq!(units("안녕"), 2);
    }

    #[test]
    fn short_text_is_one_piece() {
        assert_eq!(
            check("Hello there. How are you?", 120),
            vec!["Hello there. How are you?"]
        );
        assert_eq!(check("  你好。  ", 120), vec!["你好。"]);
    }

    #[test]
    fn sentences_are_packed_up_to_the_budget() {
        let text = "One two three. Four five six. Seven eight nine. Ten.";
        let pieces = check(text, 30);
        assert_eq!(
            pieces,
            vec!["One two three. Four five six.", "Seven eight nine. Ten."]
        );
        let zh = "今天天气很好。我们去公园吧！你觉得怎么样？";
        let pieces = check(zh, 30);
        assert_eq!(
            pieces,
            vec!["今天天气很好。我们去公园吧！", "你觉得怎么样？"]
        );
    }

    #[test]
    fn decimals_and_abbreviations_inside_words_do_not_end_sentences() {
        let pieces = check("Pi is 3.14 exactly. Next.", 20);
        assert_eq!(pieces, vec!["Pi is 3.14 exactly.", "Next."]);
    }

    #[test]
    fn long_sentences_split_at_commas_then_spaces_then_characters() {
        let text = "alpha beta gamma, delta epsilon zeta, eta theta iota kappa lambda mu";
        let pieces = check(text, 24);
        assert_eq!(pieces[0], "alpha beta gamma,");
        assert_eq!(pieces[1], "delta epsilon zeta,");
        let zh = "这是一个非常非常长的句子没有任何标点符号但是必须被切开才能被模型完整地读出来";
        let pieces = check(zh, 20);
        assert_eq!(pieces.len(), 4, "{pieces:?}");
        let word = "a".repeat(50);
        let pieces = check(&word, 20);
        assert_eq!(pieces.len(), 3);
    }

    #[test]
    fn closing_quotes_stay_with_their_sentence() {
        let pieces = check("他说：“你好。”然后走了。", 16);
        assert_eq!(pieces[0], "他说：“你好。”");
    }

    #[test]
    fn long_mixed_text_respects_every_budget() {
        let mut text = String::new();
        for i in 0..60 {
            text.push_str(&format!(
                "Sentence number {i}, with a clause; 第{i}句话，很长很长。"
            ));
        }
        for max in [8, 20, 60, 120, 600] {
            check(&text, max);
        }
    }
}
