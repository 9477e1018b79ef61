//! The three DashScope model families: which endpoint serves a model, which rates it
//! produces, and what each accepts (every option checked before any upstream call).
//!
//! The family's request bodies are in `body`, its in-band error shapes in `error`, and the
//! reading of its SSE events into audio in `events`. This module must not send anything: the
//! engine's piece tasks do that.

mod body;
mod error;
mod events;

use serde_json::{Value, json};

pub use self::{
    error::{error_in, implied_status},
    events::{Decoder, Step, s16_ms},
};
use super::split;
use crate::engine::SynthesisRequest;

/// Rates CosyVoice / Qwen-Audio-TTS produce (`input.sample_rate`).
pub const COSYVOICE_RATES: &[u32] = &[8000, 16000, 22050, 24000, 44100, 48000];
/// Rates MiniMax produces (`audio_setting.sample_rate`).
pub const MINIMAX_RATES: &[u32] = &[8000, 16000, 22050, 24000, 32000, 44100];
/// Qwen-TTS streams 24 kHz mono s16 (its rate parameter is undocumented, so herald never asks
/// for another one and resamples instead).
pub const QWEN_RATE: u32 = 24000;
/// Longest CosyVoice `instruction`, in billed units (CJK = 2).
pub const COSYVOICE_MAX_INSTRUCTION_UNITS: usize = 100;
/// Most `pronunciations` / `replacements` entries sent upstream.
pub const MAX_DICT_ENTRIES: usize = 100;

/// A DashScope model family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// CosyVoice and Qwen-Audio-TTS on `/services/audio/tts/SpeechSynthesizer`.
    CosyVoice,
    /// Qwen-TTS (`qwen3-tts-*`, `qwen-tts*`) on multimodal-generation.
    Qwen,
    /// MiniMax (`MiniMax/*`) on multimodal-generation.
    MiniMax,
}

impl Family {
    /// Every family.
    pub const ALL: [Family; 3] = [Family::CosyVoice, Family::Qwen, Family::MiniMax];

    /// The family serving `model`, by its name's prefix.
    pub fn for_model(model: &str) -> Option<Self> {
        if model.starts_with("cosyvoice-") || model.starts_with("qwen-audio-") {
            Some(Self::CosyVoice)
        } else if model.starts_with("qwen3-tts") || model.starts_with("qwen-tts") {
            Some(Self::Qwen)
        } else if model.starts_with("MiniMax/") {
            Some(Self::MiniMax)
        } else {
            None
        }
    }

    /// Engine name in `AudioInfo.engine` and `Voice.engine`.
    pub fn engine_name(self) -> &'static str {
        match self {
            Self::CosyVoice => "cosyvoice",
            Self::Qwen => "qwen-tts",
            Self::MiniMax => "minimax",
        }
    }

    /// The endpoint, after the base URL.
    pub fn path(self) -> &'static str {
        match self {
            Self::CosyVoice => "/services/audio/tts/SpeechSynthesizer",
            Self::Qwen | Self::MiniMax => "/services/aigc/multimodal-generation/generation",
        }
    }

    /// The rate herald asks upstream for when the pipeline will output `output_rate`: that
    /// rate when the model can produce it (no resampling at all), else the next higher rate the
    /// model produces (resampling down loses nothing), else its highest.
    pub fn upstream_rate(self, output_rate: u32) -> u32 {
        let rates = match self {
            Self::CosyVoice => COSYVOICE_RATES,
            Self::MiniMax => MINIMAX_RATES,
            Self::Qwen => return QWEN_RATE,
        };
        rates
            .iter()
            .copied()
            .find(|&r| r >= output_rate)
            .unwrap_or(rates[rates.len() - 1])
    }

    /// What `sample_rate_hz = 0` resolves to.
    pub fn native_rate(self) -> u32 {
        match self {
            Self::CosyVoice | Self::Qwen => 24000,
            Self::MiniMax => 32000,
        }
    }

    /// Check every option of `req` against what `req.model` takes; messages start with the
    /// field name.
    pub fn check(self, req: &SynthesisRequest) -> Result<(), String> {
        let model = req.model.as_str();
        if let Some(lang) = &req.language {
            self.language(model, lang)?;
        }
        if let Some(e) = &req.emotion {
            if self != Self::MiniMax {
                return Err(format!(
                    "emotion: model {model:?} takes no emotion (MiniMax models do)"
                ));
            }
            let allowed = minimax_emotions(model);
            if !allowed.contains(&e.as_str()) {
                return Err(format!(
                    "emotion: {e:?} is not one of model {model:?}'s emotions: {}",
                    allowed.join(", ")
                ));
            }
        }
        if req.seed.is_some_and(|s| s != 0) && self != Self::CosyVoice {
            return Err(format!(
                "seed: model {model:?} takes no seed (CosyVoice models do)"
            ));
        }
        if let Some(seed) = req.seed
            && seed > 65535
        {
            return Err(format!("seed: {seed} is outside 0..=65535"));
        }
        if let Some(i) = &req.instructions {
            match self {
                Self::CosyVoice if model == "cosyvoice-v2" => {
                    return Err(format!(
                        "instructions: model {model:?} takes no instructions (cosyvoice-v3* and qwen-audio-* do)"
                    ));
                }
                Self::CosyVoice => {
                    let n = split::units(i);
                    if n > COSYVOICE_MAX_INSTRUCTION_UNITS {
                        return Err(format!(
                            "instructions: {n} units exceeds model {model:?}'s limit of \
                             {COSYVOICE_MAX_INSTRUCTION_UNITS} (CJK characters count 2)"
                        ));
                    }
                }
                Self::Qwen if is_qwen_instruct(model) => {}
                Self::Qwen | Self::MiniMax => {
                    return Err(format!(
                        "instructions: model {model:?} takes no instructions \
                         (qwen3-tts-instruct-flash, cosyvoice-v3* and qwen-audio-* do)"
                    ));
                }
            }
        }
        if req.word_timestamps && self != Self::CosyVoice {
            return Err(format!(
                "word_timestamps: model {model:?} gives no word timings \
                 (CosyVoice and Qwen-Audio-TTS models do)"
            ));
        }
        if req.optimize_instructions {
            if !(self == Self::Qwen && is_qwen_instruct(model)) {
                return Err(format!(
                    "optimize_instructions: model {model:?} does not take it (qwen3-tts-instruct-flash does)"
                ));
            }
            if req.instructions.is_none() {
                return Err("optimize_instructions: needs instructions".to_owned());
            }
        }
        if !req.pronunciations.is_empty() {
            let ok = match self {
                Self::CosyVoice => model != "cosyvoice-v2" && !model.starts_with("qwen-audio-"),
                Self::MiniMax => true,
                Self::Qwen => false,
            };
            if !ok {
                return Err(format!(
                    "pronunciations: model {model:?} takes no pronunciation dictionary \
                     (cosyvoice-v3* and MiniMax models do)"
                ));
            }
        }
        if !req.replacements.is_empty()
            && (self != Self::CosyVoice
                || model == "cosyvoice-v2"
                || model.starts_with("qwen-audio-"))
        {
            return Err(format!(
                "replacements: model {model:?} takes no replacements (cosyvoice-v3* models do)"
            ));
        }
        Ok(())
    }

    /// The upstream's language value for a BCP-47 tag.
    pub(in crate::engine::dashscope) fn language(
        self,
        model: &str,
        tag: &str,
    ) -> Result<Value, String> {
        let primary = tag
            .split(['-', '_'])
            .next()
            .unwrap_or(tag)
            .to_ascii_lowercase();
        let region = tag.split(['-', '_']).nth(1).map(str::to_ascii_uppercase);
        let table: &[(&str, &str)] = match self {
            Self::CosyVoice => &[
                ("zh", "zh"),
                ("en", "en"),
                ("fr", "fr"),
                ("de", "de"),
                ("ja", "ja"),
                ("ko", "ko"),
                ("ru", "ru"),
                ("pt", "pt"),
                ("th", "th"),
                ("id", "id"),
                ("vi", "vi"),
                ("es", "es"),
                ("it", "it"),
                ("ms", "ms"),
                ("fil", "fil"),
                ("ar", "ar"),
            ],
            Self::Qwen => &[
                ("zh", "Chinese"),
                ("en", "English"),
                ("de", "German"),
                ("it", "Italian"),
                ("pt", "Portuguese"),
                ("es", "Spanish"),
                ("ja", "Japanese"),
                ("ko", "Korean"),
                ("fr", "French"),
                ("ru", "Russian"),
            ],
            Self::MiniMax => &[
                ("zh", "Chinese"),
                ("yue", "Chinese,Yue"),
                ("en", "English"),
                ("ja", "Japanese"),
                ("ko", "Korean"),
                ("fr", "French"),
                ("de", "German"),
                ("es", "Spanish"),
                ("pt", "Portuguese"),
                ("it", "Italian"),
                ("ru", "Russian"),
                ("ar", "Arabic"),
                ("id", "Indonesian"),
                ("vi", "Vietnamese"),
                ("th", "Thai"),
                ("tr", "Turkish"),
                ("nl", "Dutch"),
                ("uk", "Ukrainian"),
                ("pl", "Polish"),
            ],
        };
        if self == Self::MiniMax && primary == "zh" && matches!(region.as_deref(), Some("HK")) {
            return Ok(json!("Chinese,Yue"));
        }
        match table.iter().find(|(k, _)| *k == primary) {
            Some((_, v)) => Ok(match self {
                Self::CosyVoice => json!([v]),
                _ => json!(v),
            }),
            None => Err(format!(
                "language: {tag:?} is not a language model {model:?} takes; it takes: {}",
                table.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
            )),
        }
    }
}

fn is_qwen_instruct(model: &str) -> bool {
    model.starts_with("qwen3-tts-instruct")
}

/// MiniMax emotions for `model` (the 2.8 models have no `whisper`).
pub fn minimax_emotions(model: &str) -> &'static [&'static str] {
    const ALL: &[&str] = &[
        "happy",
        "sad",
        "angry",
        "fearful",
        "disgusted",
        "surprised",
        "calm",
        "whisper",
    ];
    if model.contains("speech-2.8") {
        &ALL[..7]
    } else {
        ALL
    }
}

/// A plain request for `model`, for the family's tests.
#[cfg(test)]
pub(super) fn test_request(model: &str) -> SynthesisRequest {
    SynthesisRequest {
        text: "hi".into(),
        voice: "v".into(),
        model: model.into(),
        speed: 1.0,
        pitch: 1.0,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::{test_request as req, *};

    #[test]
    fn routing_by_model_name() {
        assert_eq!(
            Family::for_model("cosyvoice-v3-flash"),
            Some(Family::CosyVoice)
        );
        assert_eq!(
            Family::for_model("qwen-audio-3.0-tts-flash"),
            Some(Family::CosyVoice)
        );
        assert_eq!(Family::for_model("qwen3-tts-flash"), Some(Family::Qwen));
        assert_eq!(Family::for_model("qwen-tts-latest"), Some(Family::Qwen));
        assert_eq!(
            Family::for_model("MiniMax/speech-2.8-hd"),
            Some(Family::MiniMax)
        );
        assert_eq!(Family::for_model("espeak-ng"), None);
    }

    #[test]
    fn upstream_rate_is_exact_when_possible() {
        assert_eq!(Family::CosyVoice.upstream_rate(16000), 16000);
        assert_eq!(Family::CosyVoice.upstream_rate(11025), 16000);
        assert_eq!(Family::CosyVoice.upstream_rate(32000), 44100);
        assert_eq!(Family::MiniMax.upstream_rate(48000), 44100);
        assert_eq!(Family::MiniMax.upstream_rate(32000), 32000);
        assert_eq!(Family::Qwen.upstream_rate(8000), 24000);
    }

    #[test]
    fn options_are_checked_per_model() {
        let mut r = req("MiniMax/speech-2.8-hd");
        r.emotion = Some("whisper".into());
        assert!(
            Family::MiniMax
                .check(&r)
                .unwrap_err()
                .starts_with("emotion:")
        );
        r.model = "MiniMax/speech-02-hd".into();
        Family::MiniMax.check(&r).unwrap();
        let mut r = req("cosyvoice-v3-flash");
        r.emotion = Some("happy".into());
        assert!(
            Family::CosyVoice
                .check(&r)
                .unwrap_err()
                .starts_with("emotion:")
        );
        let mut r = req("qwen3-tts-flash");
        r.instructions = Some("slowly".into());
        assert!(
            Family::Qwen
                .check(&r)
                .unwrap_err()
                .starts_with("instructions:")
        );
        r.model = "qwen3-tts-instruct-flash".into();
        r.optimize_instructions = true;
        Family::Qwen.check(&r).unwrap();
        let mut r = req("cosyvoice-v3-flash");
        r.instructions = Some("请".repeat(51));
        assert!(Family::CosyVoice.check(&r).unwrap_err().contains("100"));
        let mut r = req("qwen3-tts-flash");
        r.language = Some("xx".into());
        assert!(Family::Qwen.check(&r).unwrap_err().starts_with("language:"));
        r.language = Some("de-DE".into());
        Family::Qwen.check(&r).unwrap();
        let mut r = req("qwen3-tts-flash");
        r.seed = Some(7);
        assert!(Family::Qwen.check(&r).unwrap_err().starts_with("seed:"));
    }
}
