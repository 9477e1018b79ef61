//! The three DashScope management surfaces a custom voice is made on, which target models each
//! serves, and each surface's rules for the voice's name and language.
//!
//! It owns the routing (target model + clone/design → [`Surface`]) and the checks that need no
//! upstream call. It must not build request bodies (`engine::dashscope::custom` does) and must
//! not know any door's wire format.

use serde::{Deserialize, Serialize};

use super::registry::VoiceKind;
use crate::error::Error;

/// CosyVoice / Qwen-Audio-TTS clone targets (`voice-enrollment`).
pub const ENROLLMENT_CLONE_MODELS: &[&str] = &[
    "cosyvoice-v3.5-plus",
    "cosyvoice-v3.5-flash",
    "cosyvoice-v3-plus",
    "cosyvoice-v3-flash",
    "cosyvoice-v2",
    "qwen-audio-3.0-tts-plus",
    "qwen-audio-3.0-tts-flash",
];
/// CosyVoice / Qwen-Audio-TTS design targets (`voice-enrollment`).
pub const ENROLLMENT_DESIGN_MODELS: &[&str] = &[
    "cosyvoice-v3.5-plus",
    "cosyvoice-v3.5-flash",
    "cosyvoice-v3-plus",
    "cosyvoice-v3-flash",
    "qwen-audio-3.0-tts-plus",
    "qwen-audio-3.0-tts-flash",
    "qwen-audio-3.1-tts-flash",
];
/// Qwen3-TTS-VC targets herald can synthesize with (HTTP; the realtime ones need WebSocket).
pub const QWEN_CLONE_MODELS: &[&str] = &["qwen3-tts-vc-2026-01-22"];
/// Qwen3-TTS-VD targets herald can synthesize with.
pub const QWEN_DESIGN_MODELS: &[&str] = &["qwen3-tts-vd-2026-01-26"];
/// Languages of Qwen3-TTS-VC/VD.
const QWEN_LANGUAGES: &[&str] = &["zh", "en", "de", "it", "pt", "es", "ja", "ko", "fr", "ru"];
/// Longest URL accepted as a clone source.
pub const MAX_URL_CHARS: usize = 2048;
/// Longest transcript.
pub const MAX_TRANSCRIPT_CHARS: usize = 1000;

/// A DashScope management surface. Stored in the registry as its body `model`
/// (`voice-enrollment`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Surface {
    /// `voice-enrollment`: CosyVoice and Qwen-Audio-TTS, clones and designs; status polling.
    #[serde(rename = "voice-enrollment")]
    Enrollment,
    /// `qwen-voice-enrollment`: Qwen3-TTS-VC clones.
    #[serde(rename = "qwen-voice-enrollment")]
    QwenClone,
    /// `qwen-voice-design`: Qwen3-TTS-VD designs.
    #[serde(rename = "qwen-voice-design")]
    QwenDesign,
}

impl Surface {
    /// Every surface.
    pub const ALL: [Surface; 3] = [Self::Enrollment, Self::QwenClone, Self::QwenDesign];

    /// The body's `model`.
    pub fn model(self) -> &'static str {
        match self {
            Self::Enrollment => "voice-enrollment",
            Self::QwenClone => "qwen-voice-enrollment",
            Self::QwenDesign => "qwen-voice-design",
        }
    }

    /// The surface named `s`.
    pub fn from_model(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.model() == s)
    }

    /// The surface an upstream voice id belongs to, by its shape: `qwen-tts-vc-…` and
    /// `qwen-tts-vd-…` are Qwen's, anything else `voice-enrollment`'s.
    pub fn of_id(id: &str) -> Self {
        if id.starts_with("qwen-tts-vc-") {
            Self::QwenClone
        } else if id.starts_with("qwen-tts-vd-") {
            Self::QwenDesign
        } else {
            Self::Enrollment
        }
    }

    /// The surface that makes `kind` voices for `target_model`, or INVALID_ARGUMENT listing
    /// the models that can.
    pub fn route(target_model: &str, kind: VoiceKind) -> Result<Self, Error> {
        let (enroll, qwen, surface, what) = match kind {
            VoiceKind::Design => (
                ENROLLMENT_DESIGN_MODELS,
                QWEN_DESIGN_MODELS,
                Self::QwenDesign,
                "design",
            ),
            VoiceKind::Clone => (
                ENROLLMENT_CLONE_MODELS,
                QWEN_CLONE_MODELS,
                Self::QwenClone,
                "clone",
            ),
        };
        if enroll.contains(&target_model) {
            return Ok(Self::Enrollment);
        }
        if qwen.contains(&target_model) {
            return Ok(surface);
        }
        if target_model.is_empty() {
            return Err(Error::invalid("target_model: required"));
        }
        let all: Vec<&str> = enroll.iter().chain(qwen).copied().collect();
        Err(Error::invalid(format!(
            "target_model: {:?} cannot {what} voices; models that can: {}",
            truncate(target_model, 64),
            all.join(", ")
        )))
    }

    /// The surface's rule for the requested name: `voice-enrollment`'s `prefix` is
    /// `[a-z0-9]{1,9}` (the strictest reading of upstream's documentation), the Qwen surfaces'
    /// `preferred_name` is `[A-Za-z0-9_]{1,16}`.
    pub fn check_name(self, name: &str) -> Result<(), Error> {
        match self {
            Self::Enrollment => {
                let ok = (1..=9).contains(&name.len())
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
                if !ok {
                    return Err(Error::invalid(format!(
                        "name: {:?} must be 1..=9 lowercase ASCII letters or digits for \
                         CosyVoice / Qwen-Audio-TTS models",
                        truncate(name, 32)
                    )));
                }
            }
            Self::QwenClone | Self::QwenDesign => {
                let ok = (1..=16).contains(&name.len())
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !ok {
                    return Err(Error::invalid(format!(
                        "name: {:?} must be 1..=16 ASCII letters, digits or underscores for \
                         Qwen3-TTS-VC/VD models",
                        truncate(name, 32)
                    )));
                }
            }
        }
        Ok(())
    }

    /// The surface's rule for the voice's language (empty: none given, always fine).
    pub fn check_language(self, kind: VoiceKind, model: &str, language: &str) -> Result<(), Error> {
        if language.is_empty() {
            return Ok(());
        }
        let allowed: Vec<&str> = match self {
            Self::QwenClone | Self::QwenDesign => QWEN_LANGUAGES.to_vec(),
            Self::Enrollment if kind == VoiceKind::Design => vec!["zh", "en"],
            Self::Enrollment if model.starts_with("qwen-audio-") => vec![
                "zh", "en", "fr", "de", "ja", "ko", "ru", "pt", "th", "id", "vi", "it", "es", "ms",
                "fil", "ar",
            ],
            Self::Enrollment if model == "cosyvoice-v3-plus" => {
                vec!["zh", "en", "fr", "de", "ja", "ko", "ru"]
            }
            Self::Enrollment => vec![
                "zh", "en", "fr", "de", "ja", "ko", "ru", "pt", "th", "id", "vi",
            ],
        };
        if allowed.contains(&language) {
            Ok(())
        } else {
            Err(Error::invalid(format!(
                "language: {:?} is not taken here; {model} takes: {}",
                truncate(language, 16),
                allowed.join(" ")
            )))
        }
    }

    /// The longest design description and preview text the surface takes, in characters.
    pub fn design_limits(self) -> (usize, usize) {
        match self {
            Self::Enrollment => (500, 200),
            Self::QwenClone | Self::QwenDesign => (2048, 1024),
        }
    }
}

/// The first `max` characters of `s` (client input quoted in messages stays short).
pub(super) fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn each_target_model_routes_to_its_surface() {
        use VoiceKind::{Clone, Design};
        assert_eq!(
            Surface::route("cosyvoice-v3-flash", Clone),
            Ok(Surface::Enrollment)
        );
        assert_eq!(
            Surface::route("cosyvoice-v3-flash", Design),
            Ok(Surface::Enrollment)
        );
        assert_eq!(
            Surface::route("qwen3-tts-vc-2026-01-22", Clone),
            Ok(Surface::QwenClone)
        );
        assert_eq!(
            Surface::route("qwen3-tts-vd-2026-01-26", Design),
            Ok(Surface::QwenDesign)
        );
        // cosyvoice-v2 clones but does not design.
        assert_eq!(
            Surface::route("cosyvoice-v2", Clone),
            Ok(Surface::Enrollment)
        );
        let e = Surface::route("cosyvoice-v2", Design).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.message().contains("cannot design"), "{e}");
        let e = Surface::route("qwen3-tts-flash", Clone).unwrap_err();
        assert!(e.message().starts_with("target_model:"), "{e}");
        assert!(e.message().contains("qwen3-tts-vc-2026-01-22"), "{e}");
        let e = Surface::route("", Clone).unwrap_err();
        assert_eq!(e.message(), "target_model: required");
        let e = Surface::route(&"m".repeat(500), Clone).unwrap_err();
        assert!(e.message().len() < 400, "the model is quoted short: {e}");
    }

    #[test]
    fn names_follow_each_surfaces_rule() {
        Surface::Enrollment.check_name("kiosk1").unwrap();
        for bad in ["", "Upper", "toolongname", "under_s", "ü"] {
            let e = Surface::Enrollment.check_name(bad).unwrap_err();
            assert!(e.message().contains("1..=9 lowercase"), "{bad:?}: {e}");
        }
        Surface::QwenClone.check_name("Kiosk_Voice_16ch").unwrap();
        Surface::QwenDesign.check_name("a").unwrap();
        for bad in ["", "with-dash", "seventeen_chars_x", "sp ace"] {
            let e = Surface::QwenClone.check_name(bad).unwrap_err();
            assert!(e.message().starts_with("name:"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn languages_depend_on_surface_kind_and_model() {
        use VoiceKind::{Clone, Design};
        let s = Surface::Enrollment;
        s.check_language(Clone, "cosyvoice-v3-flash", "").unwrap();
        s.check_language(Clone, "cosyvoice-v3-flash", "th").unwrap();
        assert!(s.check_language(Clone, "cosyvoice-v3-plus", "th").is_err());
        s.check_language(Clone, "qwen-audio-3.0-tts-flash", "ar")
            .unwrap();
        let e = s
            .check_language(Design, "cosyvoice-v3-flash", "fr")
            .unwrap_err();
        assert!(e.message().starts_with("language:"), "{e}");
        assert!(e.message().ends_with("takes: zh en"), "{e}");
        Surface::QwenDesign
            .check_language(Design, "qwen3-tts-vd-2026-01-26", "ru")
            .unwrap();
        assert!(
            Surface::QwenClone
                .check_language(Clone, "qwen3-tts-vc-2026-01-22", "th")
                .is_err()
        );
    }

    #[test]
    fn surfaces_are_stored_under_their_upstream_names() {
        for s in Surface::ALL {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("{:?}", s.model()));
            assert_eq!(serde_json::from_str::<Surface>(&json).unwrap(), s);
            assert_eq!(Surface::from_model(s.model()), Some(s));
        }
        assert_eq!(Surface::from_model("voice-cloning"), None);
    }
}
