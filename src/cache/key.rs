//! Cache keys: a SHA-256 over everything that changes the sound of a phrase.
//!
//! Key scheme (version 1, documented in the README): the lowercase hex SHA-256 of the JSON
//! object below, fields in this order, text normalized by [`normalize_text`], floats as their
//! IEEE-754 bit patterns (so 1.0 and 1.0000001 are different keys, and no float formatting is
//! involved), dictionaries sorted by key. Output format, volume and chunk size are not in the
//! key: herald applies them to the stored audio. A key must never contain the text itself,
//! only its hash.

use serde::Serialize;
use sha2::{Digest, Sha256};
use unicode_normalization::UnicodeNormalization;

use crate::engine::SynthesisRequest;

/// Version of the key scheme; part of every key.
pub const KEY_VERSION: u32 = 1;

#[derive(Serialize)]
struct KeyFields<'a> {
    v: u32,
    engine: &'a str,
    model: &'a str,
    voice: &'a str,
    text: &'a str,
    language: Option<&'a str>,
    instructions: Option<&'a str>,
    speed: u32,
    pitch: u32,
    emotion: Option<&'a str>,
    seed: Option<u32>,
    pronunciations: &'a [(String, String)],
    replacements: &'a [(String, String)],
    optimize_instructions: bool,
    /// Only when set, so keys of requests without a speaker stay as they were.
    #[serde(skip_serializing_if = "Option::is_none")]
    speaker: Option<&'a str>,
}

/// The text as the cache sees it: Unicode NFC, every run of whitespace one space, trimmed.
pub fn normalize_text(text: &str) -> String {
    let nfc: String = text.nfc().collect();
    nfc.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The cache key of `req` served by `engine`.
pub fn key(engine: &str, req: &SynthesisRequest) -> String {
    let text = normalize_text(&req.text);
    let mut pronunciations = req.pronunciations.clone();
    pronunciations.sort();
    let mut replacements = req.replacements.clone();
    replacements.sort();
    let fields = KeyFields {
        v: KEY_VERSION,
        engine,
        model: &req.model,
        voice: &req.voice,
        text: &text,
        language: req.language.as_deref(),
        instructions: req.instructions.as_deref(),
        speed: req.speed.to_bits(),
        pitch: req.pitch.to_bits(),
        emotion: req.emotion.as_deref(),
        seed: req.seed,
        pronunciations: &pronunciations,
        replacements: &replacements,
        optimize_instructions: req.optimize_instructions,
        speaker: req.speaker.as_deref(),
    };
    // Serializing plain strings, numbers and lists cannot fail.
    let json = serde_json::to_vec(&fields).unwrap_or_default();
    hex::encode(Sha256::digest(&json))
}

/// The hash of a phrase's normalized text alone, for "the same text in any voice" (fallback).
/// Entries store this, never the text itself.
pub fn text_hash(text: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"herald-text-v1\0");
    h.update(normalize_text(text).as_bytes());
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(text: &str) -> SynthesisRequest {
        SynthesisRequest {
            text: text.to_owned(),
            voice: "v".to_owned(),
            model: "m".to_owned(),
            speed: 1.0,
            pitch: 1.0,
            ..SynthesisRequest::default()
        }
    }

    #[test]
    fn whitespace_and_normalization_form_do_not_change_the_key() {
        let a = key("e", &req("Doors  closing.\n"));
        assert_eq!(a, key("e", &req(" Doors closing.")));
        // "é" precomposed vs e + combining acute.
        assert_eq!(key("e", &req("caf\u{e9}")), key("e", &req("cafe\u{301}")));
        assert_eq!(a.len(), 64);
        assert_eq!(text_hash("a  b"), text_hash("a b"));
    }

    #[test]
    fn every_sound_changing_field_changes_the_key() {
        let base = req("hello");
        let k = key("e", &base);
        assert_ne!(k, key("other", &base));
        let variants: [fn(&mut SynthesisRequest); 12] = [
            |r| r.text = "hullo".into(),
            |r| r.voice = "w".into(),
            |r| r.model = "n".into(),
            |r| r.language = Some("de".into()),
            |r| r.instructions = Some("slow".into()),
            |r| r.speed = 1.25,
            |r| r.pitch = 0.8,
            |r| r.emotion = Some("happy".into()),
            |r| r.seed = Some(7),
            |r| r.pronunciations = vec![("a".into(), "b".into())],
            |r| r.replacements = vec![("a".into(), "b".into())],
            |r| r.optimize_instructions = true,
        ];
        for (i, change) in variants.iter().enumerate() {
            let mut r = base.clone();
            change(&mut r);
            assert_ne!(key("e", &r), k, "variant {i} kept the key");
        }
        // Not in the key: request id, deadline, output rate, word timestamps.
        let mut r = base.clone();
        r.request_id = "x".into();
        r.output_sample_rate = 8000;
        r.word_timestamps = true;
        assert_eq!(key("e", &r), k);
    }
}
