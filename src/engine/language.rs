//! Which language a request is in, and which voice of an engine speaks it: the rules the
//! fallback chain and language-only requests follow.
//!
//! A request's language is its `language` field; else its voice's language (a voice listing
//! several, such as CosyVoice's `zh,en` voices, gives the one the text's script is written in);
//! else the text's script's usual language. Never the first language of a bilingual voice
//! alone: English text for a `zh,en` voice is English. It must not call engines (only read
//! their voice lists).

use super::{Synthesizer, VoiceInfo};

/// A BCP-47 tag normalized for comparison: lowercase, `-` separators.
pub fn normalize(tag: &str) -> String {
    tag.trim().replace('_', "-").to_ascii_lowercase()
}

/// The primary subtag of `tag` (`en` of `en-US`), normalized.
pub fn primary(tag: &str) -> String {
    let tag = normalize(tag);
    tag.split('-').next().unwrap_or("").to_owned()
}

/// The language the script of `text` is most often written in, by its letters: Han (`zh`,
/// `ja` when kana are present), Hangul (`ko`), Cyrillic (`ru`), Greek (`el`), Arabic (`ar`),
/// Hebrew (`he`), Devanagari (`hi`), Thai (`th`), Latin (`en`). `None` without letters.
pub fn script_language(text: &str) -> Option<&'static str> {
    let mut counts: [(usize, &'static str); 10] = [
        (0, "zh"),
        (0, "ja"),
        (0, "ko"),
        (0, "ru"),
        (0, "el"),
        (0, "ar"),
        (0, "he"),
        (0, "hi"),
        (0, "th"),
        (0, "en"),
    ];
    for c in text.chars().filter(|c| c.is_alphabetic()) {
        let slot = match c as u32 {
            0x3040..=0x30FF | 0x31F0..=0x31FF => 1,
            0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x20000..=0x3FFFF => 0,
            0x1100..=0x11FF | 0x3130..=0x318F | 0xAC00..=0xD7AF => 2,
            0x0400..=0x052F => 3,
            0x0370..=0x03FF | 0x1F00..=0x1FFF => 4,
            0x0600..=0x06FF | 0x0750..=0x077F => 5,
            0x0590..=0x05FF => 6,
            0x0900..=0x097F => 7,
            0x0E00..=0x0E7F => 8,
            _ if c.is_ascii_alphabetic() || (0x00C0..=0x024F).contains(&(c as u32)) => 9,
            _ => continue,
        };
        counts[slot].0 += 1;
    }
    // Japanese mixes kanji and kana: any kana makes Han text Japanese.
    if counts[1].0 > 0 {
        counts[1].0 += counts[0].0;
        counts[0].0 = 0;
    }
    counts
        .iter()
        .filter(|(n, _)| *n > 0)
        .max_by_key(|(n, _)| *n)
        .map(|(_, l)| *l)
}

/// The language of a request: `language` when given; else the voice's (`voice_languages`), the
/// one of them the text's script is written in when it lists several; else the script's.
pub fn resolve(language: Option<&str>, voice_languages: &[String], text: &str) -> Option<String> {
    if let Some(l) = language.filter(|l| !l.trim().is_empty()) {
        return Some(normalize(l));
    }
    let script = script_language(text);
    let mut primaries: Vec<String> = voice_languages.iter().map(|l| primary(l)).collect();
    primaries.dedup();
    match primaries.as_slice() {
        [] => script.map(str::to_owned),
        [only] => voice_languages
            .first()
            .map(|l| normalize(l))
            .filter(|_| !only.is_empty()),
        several => match script {
            Some(s) => Some(
                several
                    .iter()
                    .find(|p| p.as_str() == s)
                    .cloned()
                    .unwrap_or_else(|| s.to_owned()),
            ),
            None => voice_languages.first().map(|l| normalize(l)),
        },
    }
}

/// True when `voice` lists `language` (or, for a bare primary tag such as `en`, any tag of it).
fn lists(voice: &VoiceInfo, language: &str, by_primary: bool) -> bool {
    voice.languages.iter().any(|l| {
        let l = normalize(l);
        if by_primary {
            primary(&l) == primary(language)
        } else {
            l == language
        }
    })
}

/// A voice of `engine`'s `model` that speaks `language`: the tag itself when the engine takes
/// it as a voice name (espeak-ng: `de`, `en-gb`), else the first listed voice with that exact
/// tag, else the primary subtag as a voice name, else the first voice of that primary language.
/// `None` when no voice speaks it.
pub fn voice_for(engine: &dyn Synthesizer, model: &str, language: &str) -> Option<String> {
    let tag = normalize(language);
    if tag.is_empty() {
        return None;
    }
    let voices: Vec<VoiceInfo> = engine
        .voices()
        .into_iter()
        .filter(|v| v.model == model)
        .collect();
    if engine.check_voice(model, &tag).is_ok() {
        return Some(tag);
    }
    if let Some(v) = voices.iter().find(|v| lists(v, &tag, false)) {
        return Some(v.name.clone());
    }
    let p = primary(&tag);
    if engine.check_voice(model, &p).is_ok() {
        return Some(p);
    }
    voices
        .iter()
        .find(|v| lists(v, &tag, true))
        .map(|v| v.name.clone())
}

/// Whether `voice` of `engine`'s `model` speaks `language` (by primary subtag). `false` when the
/// engine does not list the voice.
pub fn speaks(engine: &dyn Synthesizer, model: &str, voice: &str, language: &str) -> bool {
    engine
        .voices()
        .iter()
        .find(|v| v.model == model && v.name == voice)
        .is_some_and(|v| lists(v, &normalize(language), true))
}

/// The languages `engine` lists for `voice` of `model` (empty when it does not list it).
pub fn voice_languages(engine: &dyn Synthesizer, model: &str, voice: &str) -> Vec<String> {
    engine
        .voices()
        .into_iter()
        .find(|v| v.model == model && v.name == voice)
        .map(|v| v.languages)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts() {
        assert_eq!(script_language("Hello there, friend."), Some("en"));
        assert_eq!(script_language("Grüß Gott"), Some("en"));
        assert_eq!(script_language("你好，世界"), Some("zh"));
        assert_eq!(script_language("こんにちは世界"), Some("ja"));
        assert_eq!(script_language("안녕하세요"), Some("ko"));
        assert_eq!(script_language("Привет"), Some("ru"));
        assert_eq!(script_language("123 ..."), None);
    }

    #[test]
    fn resolution_never_takes_a_bilingual_voices_first_language() {
        let zh_en = ["zh".to_owned(), "en".to_owned()];
        assert_eq!(
            resolve(None, &zh_en, "Good morning.").as_deref(),
            Some("en")
        );
        assert_eq!(resolve(None, &zh_en, "早上好").as_deref(), Some("zh"));
        assert_eq!(
            resolve(Some("de-DE"), &zh_en, "Guten Morgen").as_deref(),
            Some("de-de")
        );
        let de = ["de".to_owned()];
        assert_eq!(resolve(None, &de, "Guten Morgen").as_deref(), Some("de"));
        assert_eq!(resolve(None, &[], "Good morning").as_deref(), Some("en"));
        let en_gb = ["en-gb".to_owned(), "en".to_owned()];
        assert_eq!(resolve(None, &en_gb, "Hi").as_deref(), Some("en-gb"));
    }
}
