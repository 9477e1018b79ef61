//! The daemon names request fields in its messages ("format.sample_rate_hz: 96000 is outside
//! 8000..=48000"); `herald say` users know flags. This module adds the flag next to each field
//! a message names: "format.sample_rate_hz (--rate): 96000 is outside ...".
//!
//! It owns the table of SynthesizeRequest / SpeakRequest fields and the `say` flags that set
//! them. It must not change what a message says otherwise, or its status code.

/// Request fields (as the daemon's messages spell them) and the `herald say` flag that sets
/// each.
const FIELD_FLAGS: &[(&str, &str)] = &[
    ("text", "TEXT"),
    ("voice", "-v/--voice"),
    ("model", "--model"),
    ("language", "--language"),
    ("instructions", "--instructions"),
    ("optimize_instructions", "--optimize-instructions"),
    ("speed", "--speed"),
    ("pitch", "--pitch"),
    ("volume", "--volume"),
    ("format", "--format"),
    ("format.encoding", "--format"),
    ("format.sample_rate_hz", "--rate"),
    ("format.channels", "--channels"),
    ("chunk_ms", "--chunk-ms"),
    ("bitrate_bps", "--bitrate"),
    ("bits_per_sample", "--bits"),
    ("emotion", "--emotion"),
    ("seed", "--seed"),
    ("word_timestamps", "--word-timestamps"),
    ("pronunciations", "--pronounce"),
    ("replacements", "--replace"),
    ("cache", "--cache"),
    ("no_fallback", "--no-fallback"),
    ("speaker", "--speaker"),
    // SpeakRequest (`--play`)
    ("device", "--device"),
    ("priority", "--priority"),
    ("chime", "--chime"),
    ("leading_silence_ms", "--leading-silence"),
    ("expires_after_ms", "--expires-after"),
];

/// The flag that sets `field`.
fn flag_of(field: &str) -> Option<&'static str> {
    FIELD_FLAGS
        .iter()
        .find(|(f, _)| *f == field)
        .map(|(_, flag)| *flag)
}

fn is_field_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '.'
}

/// `message` with " (FLAG)" after every request field it names as "field:" (how the daemon
/// names the field a message is about). Other words are left alone, even when they spell a
/// field ("needs instructions"), and so are config keys ("cache.max_text_chars").
pub(super) fn name_flags(message: &str) -> String {
    let mut out = String::with_capacity(message.len() + 16);
    let mut rest = message;
    let mut prev: Option<char> = None;
    while let Some(c) = rest.chars().next() {
        if c.is_ascii_alphabetic() && !prev.is_some_and(is_field_char) {
            let word_len = rest.find(|c| !is_field_char(c)).unwrap_or(rest.len());
            let word = &rest[..word_len];
            out.push_str(word);
            if rest[word_len..].starts_with(':')
                && let Some(flag) = flag_of(word)
            {
                out.push_str(" (");
                out.push_str(flag);
                out.push(')');
            }
            prev = word.chars().last();
            rest = &rest[word_len..];
            continue;
        }
        out.push(c);
        prev = Some(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// `status` with its message's fields named as flags ([`name_flags`]).
pub(super) fn status(status: tonic::Status) -> tonic::Status {
    tonic::Status::new(status.code(), name_flags(status.message()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_say_field_has_a_flag() {
        for (field, flag) in [
            ("text", "TEXT"),
            ("voice", "-v/--voice"),
            ("model", "--model"),
            ("language", "--language"),
            ("speed", "--speed"),
            ("pitch", "--pitch"),
            ("volume", "--volume"),
            ("format.encoding", "--format"),
            ("format.sample_rate_hz", "--rate"),
            ("format.channels", "--channels"),
            ("bitrate_bps", "--bitrate"),
            ("bits_per_sample", "--bits"),
            ("chunk_ms", "--chunk-ms"),
            ("seed", "--seed"),
            ("emotion", "--emotion"),
            ("instructions", "--instructions"),
            ("optimize_instructions", "--optimize-instructions"),
            ("pronunciations", "--pronounce"),
            ("replacements", "--replace"),
            ("word_timestamps", "--word-timestamps"),
            ("cache", "--cache"),
            ("no_fallback", "--no-fallback"),
            ("device", "--device"),
            ("leading_silence_ms", "--leading-silence"),
            ("expires_after_ms", "--expires-after"),
        ] {
            assert_eq!(flag_of(field), Some(flag), "{field}");
        }
        assert_eq!(flag_of("request_id"), None, "no flag sets it");
    }

    #[test]
    fn the_flag_follows_each_field_the_message_is_about() {
        for (message, named) in [
            (
                "format.sample_rate_hz: 96000 is outside 8000..=48000 (0 = the engine's native rate)",
                "format.sample_rate_hz (--rate): 96000 is outside 8000..=48000 (0 = the engine's native rate)",
            ),
            (
                "bitrate_bps: 1 is outside 6000..=510000",
                "bitrate_bps (--bitrate): 1 is outside 6000..=510000",
            ),
            (
                "optimize_instructions: needs instructions",
                "optimize_instructions (--optimize-instructions): needs instructions",
            ),
            (
                "text: longer than cache.max_text_chars (2000), so it is never cached",
                "text (TEXT): longer than cache.max_text_chars (2000), so it is never cached",
            ),
            (
                "device: unknown device \"nowhere\"; known: null, wav",
                "device (--device): unknown device \"nowhere\"; known: null, wav",
            ),
            (
                "voice: custom voice \"v\" works only with model \"m\"",
                "voice (-v/--voice): custom voice \"v\" works only with model \"m\"",
            ),
            // Not about a field: unchanged.
            (
                "upstream unavailable: HTTP 503",
                "upstream unavailable: HTTP 503",
            ),
            ("x.voice: y", "x.voice: y"),
            ("request_id: too long", "request_id: too long"),
            ("语音 voice: 龙", "语音 voice (-v/--voice): 龙"),
        ] {
            assert_eq!(name_flags(message), named, "{message}");
        }
    }

    #[test]
    fn a_status_keeps_its_code() {
        let s = status(tonic::Status::invalid_argument(
            "seed: 70000 is outside 0..=65535",
        ));
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert_eq!(s.message(), "seed (--seed): 70000 is outside 0..=65535");
    }
}
