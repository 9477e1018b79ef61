//! A synthesis request as every door hands it to the core, and its validation into a [`Job`].
//!
//! The limits here are herald's, not a wire format's: gRPC, the OpenAI-compatible endpoint and
//! Wyoming all get the same defaults and the same INVALID_ARGUMENT messages, each naming the
//! field (by its herald.v1 name) and its limit. Doors translate their own enums first (an
//! unknown enum value is a door's error); nothing here knows a wire type.

use std::collections::HashMap;

use crate::{
    audio::encode::negotiate::{FormatRequest, negotiate},
    engine::SynthesisRequest,
    error::Error,
    pipeline::Render,
    provider::{self, CachePolicy},
};

use super::{Core, Job};

/// Default `chunk_ms`.
pub const DEFAULT_CHUNK_MS: u32 = 100;
/// Accepted `chunk_ms` range.
pub const CHUNK_MS_RANGE: std::ops::RangeInclusive<u32> = 10..=1000;
/// Accepted `speed` and `pitch` range (0 = default 1.0).
pub const PROSODY_RANGE: std::ops::RangeInclusive<f32> = 0.5..=2.0;
/// Highest accepted `volume` (0 = default 1.0).
pub const MAX_VOLUME: f32 = 4.0;
/// Longest accepted `instructions`, in characters.
pub const MAX_INSTRUCTIONS_CHARS: usize = 1000;
/// Longest accepted `request_id`, in characters.
pub const MAX_REQUEST_ID_CHARS: usize = 128;
/// Longest accepted `language` tag.
pub const MAX_LANGUAGE_CHARS: usize = 35;
/// Longest accepted `emotion`.
pub const MAX_EMOTION_CHARS: usize = 32;
/// Most entries of `pronunciations` / `replacements`.
pub const MAX_DICT_ENTRIES: usize = 100;
/// Longest key of `pronunciations` / `replacements`.
pub const MAX_DICT_KEY_CHARS: usize = 32;
/// Longest value of `pronunciations` / `replacements`.
pub const MAX_DICT_VALUE_CHARS: usize = 64;

/// What a client asks for, as received (empty strings and zeros mean "the default").
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// Text to speak.
    pub text: String,
    /// Voice ("" = the model's default).
    pub voice: String,
    /// Model ("" = the custom voice's model, else the configured default).
    pub model: String,
    /// BCP-47 language hint ("" = none).
    pub language: String,
    /// Speaking instructions ("" = none).
    pub instructions: String,
    /// Speaking rate multiplier (0 = 1.0).
    pub speed: f32,
    /// Pitch multiplier (0 = 1.0).
    pub pitch: f32,
    /// Linear gain (0 = 1.0).
    pub volume: f32,
    /// The output format asked for.
    pub format: FormatRequest,
    /// Target chunk duration, ms (0 = [`DEFAULT_CHUNK_MS`]).
    pub chunk_ms: u32,
    /// Request id ("" = a new UUID).
    pub request_id: String,
    /// The cache policy.
    pub cache: CachePolicy,
    /// Whether the fallback chain may serve the request.
    pub fallback: bool,
    /// Emotion ("" = none).
    pub emotion: String,
    /// Sampling seed (0 = none).
    pub seed: u32,
    /// Word → pronunciation.
    pub pronunciations: HashMap<String, String>,
    /// Word → replacement text.
    pub replacements: HashMap<String, String>,
    /// Let the upstream rewrite `instructions`.
    pub optimize_instructions: bool,
    /// Report word timings.
    pub word_timestamps: bool,
    /// Speaker of a multi-speaker voice ("" = the voice's default).
    pub speaker: String,
}

impl Default for Request {
    fn default() -> Self {
        Self {
            text: String::new(),
            voice: String::new(),
            model: String::new(),
            language: String::new(),
            instructions: String::new(),
            speed: 0.0,
            pitch: 0.0,
            volume: 0.0,
            format: FormatRequest::default(),
            chunk_ms: 0,
            request_id: String::new(),
            cache: CachePolicy::Use,
            fallback: true,
            emotion: String::new(),
            seed: 0,
            pronunciations: HashMap::new(),
            replacements: HashMap::new(),
            optimize_instructions: false,
            word_timestamps: false,
            speaker: String::new(),
        }
    }
}

impl Core {
    /// Turn a request into a [`Job`], or INVALID_ARGUMENT naming the field and its limit
    /// (FAILED_PRECONDITION for a custom voice that upstream rejected).
    pub fn prepare(&self, req: Request) -> Result<Job, Error> {
        let settings = &self.settings;
        if req.text.trim().is_empty() {
            return Err(Error::invalid("text: must not be empty"));
        }
        let chars = req.text.chars().count();
        if chars > settings.max_text_chars {
            return Err(Error::invalid(format!(
                "text: {chars} characters exceeds the limit of {} (synthesis.max_text_chars)",
                settings.max_text_chars
            )));
        }
        self.prepare_options(req)
    }

    /// [`Core::prepare`] without the text checks: a streamed text's configuration (its text
    /// comes later, sentence by sentence).
    pub(super) fn prepare_options(&self, req: Request) -> Result<Job, Error> {
        let settings = &self.settings;
        let text = req.text;
        let chars = text.chars().count();

        // A custom voice herald created works with its one model only: checked here, before
        // any upstream call; an empty model takes the voice's.
        let custom_model = self.voices.check_synthesis(&req.voice, &req.model)?;
        let model = match (req.model.is_empty(), custom_model) {
            (false, _) => req.model,
            (true, Some(m)) => m,
            (true, None) => settings.default_model.clone(),
        };
        let engines = self.provider.engines();
        let Some(engine) = engines.for_model(&model) else {
            let known: Vec<&str> = engines.all().iter().map(|e| e.name()).collect();
            if let Some(family) = crate::engine::dashscope::Family::for_model(&model) {
                return Err(Error::failed_precondition(format!(
                    "model: {:?} is a DashScope ({}) model, and this daemon has no DashScope API \
                     key (set dashscope.api_key_file, DASHSCOPE_API_KEY or the systemd \
                     credential dashscope_api_key); this daemon serves: {}",
                    truncate(&model, 64),
                    family.engine_name(),
                    known.join(", ")
                )));
            }
            return Err(Error::invalid(format!(
                "model: unknown model {:?}; this daemon serves: {}",
                truncate(&model, 64),
                known.join(", ")
            )));
        };
        let named_voice = !req.voice.is_empty();
        let mut voice = match (req.voice.is_empty(), &settings.default_voice) {
            (false, _) => req.voice,
            (true, Some(v)) if model == settings.default_model => v.clone(),
            (true, _) => engine.default_voice(&model),
        };
        // No voice named but a language: a voice that speaks it, when the default does not
        // (espeak-ng's default `en` and `language: "de"` → its `de` voice).
        if !named_voice
            && let Some(l) = optional(&req.language)
            && !crate::engine::language::speaks(engine.as_ref(), &model, &voice, &l)
            && let Some(v) = crate::engine::language::voice_for(engine.as_ref(), &model, &l)
        {
            voice = v;
        }
        engine
            .check_voice(&model, &voice)
            .map_err(|refused| Error::from(refused).prefixed("voice: "))?;

        let language = optional(&req.language);
        if let Some(l) = &language
            && (l.chars().count() > MAX_LANGUAGE_CHARS
                || !l
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return Err(Error::invalid(format!(
                "language: {:?} is not a BCP-47 tag like \"en\" or \"zh-CN\" (at most {MAX_LANGUAGE_CHARS} characters)",
                truncate(l, 40)
            )));
        }
        let instructions = optional(&req.instructions);
        if let Some(i) = &instructions {
            let n = i.chars().count();
            if n > MAX_INSTRUCTIONS_CHARS {
                return Err(Error::invalid(format!(
                    "instructions: {n} characters exceeds the limit of {MAX_INSTRUCTIONS_CHARS}"
                )));
            }
        }
        let speed = prosody("speed", req.speed)?;
        let pitch = prosody("pitch", req.pitch)?;
        let gain = volume(req.volume)?;
        let chunk_ms = match req.chunk_ms {
            0 => DEFAULT_CHUNK_MS,
            c if CHUNK_MS_RANGE.contains(&c) => c,
            c => {
                return Err(Error::invalid(format!(
                    "chunk_ms: {c} is outside {}..={} (0 = default {DEFAULT_CHUNK_MS})",
                    CHUNK_MS_RANGE.start(),
                    CHUNK_MS_RANGE.end()
                )));
            }
        };
        let request_id = if req.request_id.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else if req.request_id.chars().count() > MAX_REQUEST_ID_CHARS
            || req.request_id.chars().any(char::is_control)
        {
            return Err(Error::invalid(format!(
                "request_id: must be at most {MAX_REQUEST_ID_CHARS} printable characters"
            )));
        } else {
            req.request_id
        };
        let options = provider::Options {
            cache: req.cache,
            fallback: req.fallback,
            first_audio_budget: settings.first_audio_budget,
        };

        let emotion = optional(&req.emotion);
        if let Some(e) = &emotion
            && e.chars().count() > MAX_EMOTION_CHARS
        {
            return Err(Error::invalid(format!(
                "emotion: at most {MAX_EMOTION_CHARS} characters"
            )));
        }
        let pronunciations = dictionary("pronunciations", req.pronunciations)?;
        let replacements = dictionary("replacements", req.replacements)?;

        let native_rate = engine.native_sample_rate(&model, &voice);
        let output = negotiate(req.format, native_rate)?;
        let request = SynthesisRequest {
            text,
            voice,
            model,
            language,
            instructions,
            speed,
            pitch,
            request_id,
            emotion,
            seed: (req.seed != 0).then_some(req.seed),
            pronunciations,
            replacements,
            optimize_instructions: req.optimize_instructions,
            word_timestamps: req.word_timestamps,
            speaker: Some(req.speaker).filter(|s| !s.trim().is_empty()),
            output_sample_rate: output.spec.sample_rate,
            deadline: None,
        };
        engine.check_request(&request)?;
        Ok(Job {
            request,
            engine: std::sync::Arc::clone(engine),
            render: Render {
                output,
                gain,
                chunk_ms,
                realtime: false,
            },
            options,
            characters: u32::try_from(chars).unwrap_or(u32::MAX),
        })
    }
}

/// A linear gain: 0 = 1.0, else within `0 < volume <= MAX_VOLUME`. Shared by every request
/// that carries a `volume` (Synthesize, Speak).
pub fn volume(value: f32) -> Result<f32, Error> {
    match value {
        0.0 => Ok(1.0),
        v if v.is_finite() && v > 0.0 && v <= MAX_VOLUME => Ok(v),
        v => Err(Error::invalid(format!(
            "volume: {v} is outside 0.0 < volume <= {MAX_VOLUME} (0 = default 1.0)"
        ))),
    }
}

fn optional(s: &str) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

/// At most `max` characters of `s`, for echoing client input in messages.
pub fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// A word → text dictionary, bounded ([`MAX_DICT_ENTRIES`], [`MAX_DICT_KEY_CHARS`],
/// [`MAX_DICT_VALUE_CHARS`]) and sorted (maps have no order; sorting makes the upstream
/// request deterministic).
fn dictionary(field: &str, map: HashMap<String, String>) -> Result<Vec<(String, String)>, Error> {
    if map.len() > MAX_DICT_ENTRIES {
        return Err(Error::invalid(format!(
            "{field}: {} entries exceeds the limit of {MAX_DICT_ENTRIES}",
            map.len()
        )));
    }
    let mut entries: Vec<(String, String)> = map.into_iter().collect();
    entries.sort();
    for (k, v) in &entries {
        let (kn, vn) = (k.chars().count(), v.chars().count());
        if k.trim().is_empty() || kn > MAX_DICT_KEY_CHARS {
            return Err(Error::invalid(format!(
                "{field}: key {:?} must be 1..={MAX_DICT_KEY_CHARS} characters",
                truncate(k, 40)
            )));
        }
        if v.trim().is_empty() || vn > MAX_DICT_VALUE_CHARS {
            return Err(Error::invalid(format!(
                "{field}: the value for {:?} must be 1..={MAX_DICT_VALUE_CHARS} characters",
                truncate(k, 40)
            )));
        }
    }
    Ok(entries)
}

fn prosody(field: &str, value: f32) -> Result<f32, Error> {
    if value == 0.0 {
        Ok(1.0)
    } else if value.is_finite() && PROSODY_RANGE.contains(&value) {
        Ok(value)
    } else {
        Err(Error::invalid(format!(
            "{field}: {value} is outside {}..={} (0 = default 1.0)",
            PROSODY_RANGE.start(),
            PROSODY_RANGE.end()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn volume_and_prosody_defaults_and_limits() {
        assert_eq!(volume(0.0).unwrap(), 1.0);
        assert_eq!(volume(4.0).unwrap(), 4.0);
        for bad in [-1.0, 4.01, f32::NAN, f32::INFINITY] {
            let e = volume(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument);
            assert!(e.message().starts_with("volume: "), "{}", e.message());
        }
        assert_eq!(prosody("speed", 0.0).unwrap(), 1.0);
        assert!(
            prosody("pitch", 2.5)
                .unwrap_err()
                .message()
                .starts_with("pitch: 2.5")
        );
    }

    #[test]
    fn dictionaries_are_sorted_and_bounded() {
        let map: HashMap<String, String> = [("b", "2"), ("a", "1")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(
            dictionary("replacements", map).unwrap(),
            vec![("a".into(), "1".into()), ("b".into(), "2".into())]
        );
        let too_many: HashMap<String, String> = (0..=MAX_DICT_ENTRIES)
            .map(|i| (i.to_string(), "x".to_owned()))
            .collect();
        let e = dictionary("pronunciations", too_many).unwrap_err();
        assert!(
            e.message().starts_with("pronunciations: 101 entries"),
            "{}",
            e.message()
        );
    }
}
