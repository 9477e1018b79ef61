//! Piper's front end: text → sentences of clauses → espeak-ng IPA → phoneme ids.
//!
//! Piper phonemizes with espeak-ng's library, clause by clause, and appends each clause's
//! terminator (`. , ; : ! ?`) to its phonemes, with a space after a clause that does not end the
//! sentence; it then splits the phoneme string into Unicode NFD codepoints and maps each through
//! the voice's `phoneme_id_map`, as `^ _ p₁ _ p₂ _ … pₙ _ $` (BOS, PAD after every symbol,
//! EOS), dropping codepoints the map does not know. herald does the same through the `espeak-ng`
//! *process* (so it never links the GPL library): the text is cut into sentences and clauses
//! here, each clause is phonemized by one `espeak-ng -q --ipa` run (all clauses of a sentence
//! at once), and the punctuation the command line drops is put back from the text. What the
//! command line adds that the library's phonemes lack (language-switch flags such as `(en)`,
//! U+200D joiners, line breaks) is removed; anything else the map does not know is dropped, as
//! Piper does.
//!
//! It must not run a model or block a tokio worker (espeak-ng runs as an async child).

use std::{path::Path, process::Stdio, time::Duration};

use futures::{StreamExt, TryStreamExt};
use tokio::{io::AsyncWriteExt, process::Command, time::timeout};
use unicode_normalization::UnicodeNormalization;

use super::voice::Voice;
use crate::engine::EngineError;

/// Padding, after every symbol.
pub const PAD: &str = "_";
/// Beginning of sentence.
pub const BOS: &str = "^";
/// End of sentence.
pub const EOS: &str = "$";

/// espeak-ng processes running at once for one sentence.
const PHONEMIZE_AT_ONCE: usize = 4;

/// The longest text one inference gets, in characters: a longer sentence is cut at its clauses,
/// and a longer clause at spaces (Piper would run it whole; the model's memory grows with it).
const MAX_SENTENCE_CHARS: usize = 400;

/// How long one espeak-ng phonemization may take.
const ESPEAK_TIMEOUT: Duration = Duration::from_secs(10);

/// One clause: its text and the punctuation that ends it (`None`: the sentence's text ran out).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clause {
    /// The clause's text, without its terminator, trimmed.
    pub text: String,
    /// Its terminator.
    pub terminator: Option<char>,
}

/// A sentence: clauses, the last one ending it.
pub type Sentence = Vec<Clause>;

/// Ends a sentence (when followed by whitespace or the end of the text, so "3.14" stays whole).
fn ends_sentence(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | '。' | '！' | '？')
}

/// Ends a clause within a sentence (same rule).
fn ends_clause(c: char) -> bool {
    matches!(c, ',' | ';' | ':' | '，' | '；' | '：')
}

/// The terminator Piper keeps for `c` (CJK punctuation as its ASCII counterpart).
fn ascii_terminator(c: char) -> char {
    match c {
        '。' => '.',
        '！' => '!',
        '？' => '?',
        '，' => ',',
        '；' => ';',
        '：' => ':',
        other => other,
    }
}

/// Ends the clause being built in `current`: a clause with something speakable is added to
/// `sentence`; a bare terminator goes to the clause before it.
fn push_clause(current: &mut String, terminator: Option<char>, sentence: &mut Sentence) {
    let clause = current.trim();
    if clause.chars().any(char::is_alphanumeric) {
        sentence.push(Clause {
            text: clause.to_owned(),
            terminator,
        });
    } else if let (Some(t), Some(last)) = (terminator, sentence.last_mut()) {
        last.terminator = Some(t);
    }
    current.clear();
}

/// Cuts `text` into sentences of clauses. A terminator counts when whitespace or the end of
/// the text follows it (a run of terminators, "?!" or "...", counts once, by its last mark);
/// a blank line also ends a sentence. Clauses with nothing but whitespace are dropped.
pub fn sentences(text: &str) -> Vec<Sentence> {
    let mut out = Vec::new();
    let mut sentence = Vec::new();
    let mut current = String::new();
    let chars: Vec<char> = text.chars().collect();
    let is_mark = |c: char| ends_sentence(c) || ends_clause(c);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if is_mark(c) {
            // A run of marks ("?!", "..."): the last one is the terminator.
            let mut j = i;
            while chars.get(j + 1).copied().is_some_and(is_mark) {
                j += 1;
            }
            let at_break = chars.get(j + 1).is_none_or(|n| n.is_whitespace());
            let cjk = (i..=j).any(|k| !chars[k].is_ascii());
            if at_break || cjk {
                let sentence_end = (i..=j).any(|k| ends_sentence(chars[k]));
                push_clause(
                    &mut current,
                    Some(ascii_terminator(chars[j])),
                    &mut sentence,
                );
                if sentence_end && !sentence.is_empty() {
                    out.push(std::mem::take(&mut sentence));
                }
                i = j + 1;
                continue;
            }
        }
        if c == '\n' && chars.get(i + 1) == Some(&'\n') {
            push_clause(&mut current, None, &mut sentence);
            if !sentence.is_empty() {
                out.push(std::mem::take(&mut sentence));
            }
            i += 2;
            continue;
        }
        current.push(if c.is_whitespace() { ' ' } else { c });
        i += 1;
    }
    push_clause(&mut current, None, &mut sentence);
    if !sentence.is_empty() {
        out.push(sentence);
    }
    out.into_iter().flat_map(bound).collect()
}

/// `sentence` as sentences of at most [`MAX_SENTENCE_CHARS`] characters each: cut between
/// clauses, and a clause longer than that at spaces (the pieces but the last have no
/// terminator).
fn bound(sentence: Sentence) -> Vec<Sentence> {
    let mut clauses = Vec::new();
    for clause in sentence {
        if clause.text.chars().count() <= MAX_SENTENCE_CHARS {
            clauses.push(clause);
            continue;
        }
        let mut piece = String::new();
        for word in clause.text.split(' ') {
            if !piece.is_empty()
                && piece.chars().count() + 1 + word.chars().count() > MAX_SENTENCE_CHARS
            {
                clauses.push(Clause {
                    text: std::mem::take(&mut piece),
                    terminator: None,
                });
            }
            if !piece.is_empty() {
                piece.push(' ');
            }
            piece.push_str(word);
        }
        clauses.push(Clause {
            text: piece,
            terminator: clause.terminator,
        });
    }
    let mut out = Vec::new();
    let mut current: Sentence = Vec::new();
    let mut chars = 0;
    for clause in clauses {
        let n = clause.text.chars().count();
        if !current.is_empty() && chars + n > MAX_SENTENCE_CHARS {
            out.push(std::mem::take(&mut current));
            chars = 0;
        }
        chars += n;
        current.push(clause);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The phonemes of `sentence` in `espeak_voice`, as Piper builds them: each clause's IPA, its
/// terminator, and a space after a clause that does not end the sentence.
pub async fn phonemize(
    binary: &Path,
    espeak_voice: &str,
    sentence: &Sentence,
) -> Result<String, EngineError> {
    // A few espeak-ng processes at once, however many clauses the sentence has.
    let runs: Vec<_> = sentence
        .iter()
        .map(|clause| {
            let (binary, voice, text) = (
                binary.to_owned(),
                espeak_voice.to_owned(),
                clause.text.clone(),
            );
            async move { ipa(&binary, &voice, &text).await }
        })
        .collect();
    let ipas: Vec<String> = futures::stream::iter(runs)
        .buffered(PHONEMIZE_AT_ONCE)
        .try_collect()
        .await?;
    let mut out = String::new();
    for (clause, ipa) in sentence.iter().zip(ipas) {
        out.push_str(&ipa);
        if let Some(t) = clause.terminator {
            out.push(t);
            if matches!(t, ',' | ';' | ':') {
                out.push(' ');
            }
        }
    }
    Ok(out)
}

/// espeak-ng's IPA for one clause: its output lines joined by spaces, with the language-switch
/// flags (`(en)`) removed.
async fn ipa(binary: &Path, espeak_voice: &str, text: &str) -> Result<String, EngineError> {
    let failed = |reason: String| EngineError::Failed {
        engine: super::NAME,
        reason,
    };
    let mut child = Command::new(binary)
        .args(["-q", "--ipa", "-v", espeak_voice, "--stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| EngineError::Unavailable {
            engine: super::NAME,
            reason: format!("cannot run {} for phonemes: {e}", binary.display()),
        })?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let input = text.to_owned();
    let run = async move {
        stdin.write_all(input.as_bytes()).await?;
        stdin.write_all(b"\n").await?;
        drop(stdin);
        child.wait_with_output().await
    };
    let output = timeout(ESPEAK_TIMEOUT, run)
        .await
        .map_err(|_| failed(format!("espeak-ng phonemes took over {ESPEAK_TIMEOUT:?}")))?
        .map_err(|e| failed(format!("espeak-ng phonemes: {e}")))?;
    if !output.status.success() {
        return Err(failed(format!(
            "espeak-ng phonemes failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut joined = String::new();
    for line in stdout.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if !joined.is_empty() {
            joined.push(' ');
        }
        joined.push_str(&strip_flags(line));
    }
    Ok(joined)
}

/// `line` without espeak-ng's language-switch flags: `(en)`, `(de)`, ... around foreign words.
fn strip_flags(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(open) = rest.find('(') {
        match rest[open..].find(')') {
            Some(close) if close > 1 => {
                out.push_str(&rest[..open]);
                rest = &rest[open + close + 1..];
            }
            _ => break,
        }
    }
    out.push_str(rest);
    out
}

/// Phoneme ids for `phonemes` (one sentence) in `voice`'s map: BOS PAD (id PAD)* EOS over the
/// NFD codepoints, skipping codepoints the map does not know (and the map's own BOS/PAD/EOS
/// symbols, should the text produce them). The second value counts the codepoints dropped.
pub fn to_ids(voice: &Voice, phonemes: &str) -> (Vec<i64>, usize) {
    let map = &voice.phoneme_ids;
    let mut ids = Vec::with_capacity(phonemes.len() * 2 + 3);
    ids.extend_from_slice(&map[BOS]);
    ids.extend_from_slice(&map[PAD]);
    let mut dropped = 0;
    let mut buf = [0u8; 4];
    for c in phonemes.nfd() {
        let key: &str = c.encode_utf8(&mut buf);
        if key == BOS || key == PAD || key == EOS {
            dropped += 1;
            continue;
        }
        match map.get(key) {
            Some(id) => {
                ids.extend_from_slice(id);
                ids.extend_from_slice(&map[PAD]);
            }
            None => dropped += 1,
        }
    }
    ids.extend_from_slice(&map[EOS]);
    (ids, dropped)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn clause(text: &str, terminator: Option<char>) -> Clause {
        Clause {
            text: text.to_owned(),
            terminator,
        }
    }

    #[test]
    fn cuts_sentences_and_clauses() {
        assert_eq!(
            sentences("Hello world, this is herald. Pi is 3.14! Really?! And then"),
            vec![
                vec![
                    clause("Hello world", Some(',')),
                    clause("this is herald", Some('.'))
                ],
                vec![clause("Pi is 3.14", Some('!'))],
                vec![clause("Really", Some('!'))],
                vec![clause("And then", None)],
            ]
        );
        assert_eq!(
            sentences("one\n\ntwo: three ..."),
            vec![
                vec![clause("one", None)],
                vec![clause("two", Some(':')), clause("three", Some('.'))],
            ]
        );
        assert!(sentences("  \n ... ").is_empty());
        assert_eq!(
            sentences("你好。世界，好"),
            vec![
                vec![clause("你好", Some('.'))],
                vec![clause("世界", Some(',')), clause("好", None)]
            ]
        );
    }

    #[test]
    fn long_sentences_are_cut_at_clauses_then_spaces() {
        let clause_text = "word ".repeat(60); // 300 characters
        let text = format!("{clause_text}, {clause_text}.");
        let got = sentences(&text);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0][0].terminator, Some(','));
        assert_eq!(got[1][0].terminator, Some('.'));
        let long = "word ".repeat(200); // 1000 characters, no punctuation
        let got = sentences(&long);
        assert_eq!(got.len(), 3);
        assert!(
            got.iter()
                .all(|s| s.iter().map(|c| c.text.chars().count()).sum::<usize>()
                    <= MAX_SENTENCE_CHARS)
        );
        let words: usize = got
            .iter()
            .flatten()
            .map(|c| c.text.split(' ').count())
            .sum();
        assert_eq!(words, 200, "no word lost");
    }

    #[test]
    fn strips_language_flags() {
        assert_eq!(strip_flags("(en)wˈɜːld(de) ʊnt"), "wˈɜːld ʊnt");
        assert_eq!(strip_flags("a(b"), "a(b");
    }

    fn voice() -> Voice {
        let json = r#"{"audio":{"sample_rate":22050},"espeak":{"voice":"en-us"},
            "phoneme_id_map":{"_":[0],"^":[1],"$":[2]," ":[3],",":[8],".":[10],
            "h":[20],"ə":[59],"l":[24],"ˈ":[120],"o":[27],"ʊ":[100],"̃":[141]}}"#;
        super::super::voice::parse("v", &PathBuf::from("/v.onnx"), json).unwrap()
    }

    #[test]
    fn maps_phonemes_as_piper_does() {
        // "həlˈoʊ," with a joiner espeak's command line may add, and a nasal vowel (NFD).
        let (ids, dropped) = to_ids(&voice(), "həl\u{200d}ˈoʊ, õ_x.");
        assert_eq!(
            ids,
            [
                1, 0, 20, 0, 59, 0, 24, 0, 120, 0, 27, 0, 100, 0, 8, 0, 3, 0, 27, 0, 141, 0, 10, 0,
                2
            ]
        );
        assert_eq!(dropped, 3, "the joiner, the pad symbol and x");
    }
}
