//! OpenAI's `/v1/audio/speech` body → a core [`Request`]: the model and voice names mapped
//! (`[http.models]`, `[http.voices]`), the response format, the speed range, and herald's
//! extension fields. Only the translation lives here; every herald limit and default is the
//! core's (its messages name herald's fields, which [`super::errors`] turns into OpenAI's).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::{
    audio::encode::negotiate::{Codec, FormatRequest},
    provider::CachePolicy,
    synthesis::{PROSODY_RANGE, Request, truncate},
};

use super::errors::ApiError;

/// OpenAI's TTS model names, the default model unless `[http.models]` maps them.
pub const OPENAI_MODELS: &[&str] = &["tts-1", "tts-1-hd", "gpt-4o-mini-tts"];

/// OpenAI's voice names, the model's default voice unless `[http.voices]` maps them.
pub const OPENAI_VOICES: &[&str] = &[
    "alloy", "ash", "ballad", "cedar", "coral", "echo", "fable", "marin", "nova", "onyx", "sage",
    "shimmer", "verse",
];

/// The `response_format`s herald serves (OpenAI's `aac` is not among them: herald has no
/// well-kept AAC encoder).
pub const FORMATS: &[&str] = &["mp3", "opus", "flac", "wav", "pcm"];

/// The rate of `pcm`, as OpenAI documents it (24 kHz s16le mono).
pub const PCM_RATE: u32 = 24_000;

/// OpenAI's accepted `speed` range.
pub const OPENAI_SPEED: std::ops::RangeInclusive<f32> = 0.25..=4.0;

/// `voice`: a name, or (newer OpenAI SDKs, custom voices) `{"id": "..."}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Voice {
    /// A voice name.
    Name(String),
    /// A voice object.
    Id {
        /// Its id.
        id: String,
    },
}

/// The body of `POST /v1/audio/speech`: OpenAI's fields, then herald's extensions. Unknown
/// fields are ignored, as OpenAI-compatible servers do.
#[derive(Debug, Deserialize)]
pub struct SpeechBody {
    /// A herald model, or an OpenAI one (mapped).
    #[serde(default)]
    pub model: String,
    /// The text.
    pub input: String,
    /// A herald voice, or an OpenAI one (mapped).
    pub voice: Option<Voice>,
    /// Speaking instructions.
    #[serde(default)]
    pub instructions: String,
    /// mp3 (default), opus, flac, wav, pcm.
    pub response_format: Option<String>,
    /// 0.25..=4.0 (OpenAI); herald's engines take 0.5..=2.0.
    pub speed: Option<f32>,
    /// `audio` (default) or `sse`.
    pub stream_format: Option<String>,
    /// Extension: BCP-47 language hint.
    #[serde(default)]
    pub language: String,
    /// Extension: output rate, Hz (pcm: default 24000; others: the engine's native rate).
    pub sample_rate: Option<u32>,
    /// Extension: never serve this request from the fallback chain.
    #[serde(default)]
    pub no_fallback: bool,
    /// Extension: `use` (default), `refresh` or `bypass`.
    pub cache: Option<String>,
    /// Extension: pitch multiplier (0.5..=2.0).
    pub pitch: Option<f32>,
    /// Extension: linear gain (0 < volume <= 4).
    pub volume: Option<f32>,
}

/// How the audio is sent back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamFormat {
    /// The encoded bytes, chunked, as they are made.
    Audio,
    /// `speech.audio.delta` / `speech.audio.done` server-sent events.
    Sse,
}

/// A translated request.
#[derive(Debug)]
pub struct Speech {
    /// For the core.
    pub request: Request,
    /// The `response_format` name.
    pub format: &'static str,
    /// How to send it.
    pub stream: StreamFormat,
}

/// The names OpenAI clients use, mapped to herald's.
#[derive(Clone, Debug, Default)]
pub struct Names {
    /// `[http.models]`.
    pub models: BTreeMap<String, String>,
    /// `[http.voices]`.
    pub voices: BTreeMap<String, String>,
}

impl Names {
    /// The herald model for `asked` ("" = the core's default). A name a herald engine serves
    /// (`serves`) is used as is, unless `[http.models]` maps it.
    pub fn model(&self, asked: &str, serves: impl Fn(&str) -> bool) -> String {
        let asked = asked.trim();
        if let Some(m) = self.models.get(asked) {
            return m.clone();
        }
        if serves(asked) || !OPENAI_MODELS.contains(&asked) {
            return asked.to_owned();
        }
        String::new()
    }

    /// The herald voice for `asked` ("" = the model's default).
    pub fn voice(&self, asked: &str) -> String {
        let asked = asked.trim();
        if let Some(v) = self.voices.get(asked) {
            return v.clone();
        }
        if OPENAI_VOICES.contains(&asked) {
            return String::new();
        }
        asked.to_owned()
    }
}

/// Parse and translate a `/v1/audio/speech` body.
pub fn speech(
    body: &[u8],
    names: &Names,
    serves: impl Fn(&str) -> bool,
) -> Result<Speech, ApiError> {
    let body: SpeechBody = serde_path_to_error::deserialize(
        &mut serde_json::Deserializer::from_slice(body),
    )
    .map_err(|e| {
        let message = format!("the body is not a valid speech request: {}", e.inner());
        // A wrong type names its field by path; a missing field only in the message.
        let path = e.path().to_string();
        let param = if path != "." && !path.is_empty() {
            path
        } else {
            let text = e.inner().to_string();
            ["input", "model", "voice"]
                .into_iter()
                .find(|f| text.contains(&format!("missing field `{f}`")))
                .unwrap_or("body")
                .to_owned()
        };
        ApiError::invalid(&param, message)
    })?;
    let format = body.response_format.as_deref().unwrap_or("mp3").trim();
    let (format, codec): (&'static str, Codec) = match format {
        "mp3" => ("mp3", Codec::Mp3),
        "opus" => ("opus", Codec::OggOpus),
        "flac" => ("flac", Codec::Flac),
        "wav" => ("wav", Codec::Wav),
        "pcm" => ("pcm", Codec::PcmS16Le),
        other => {
            return Err(ApiError::invalid(
                "response_format",
                format!(
                    "response_format: {:?} is not served by herald; use one of: {}",
                    truncate(other, 16),
                    FORMATS.join(", ")
                ),
            ));
        }
    };
    let stream = match body.stream_format.as_deref().map(str::trim) {
        None | Some("audio") => StreamFormat::Audio,
        Some("sse") => StreamFormat::Sse,
        Some(other) => {
            return Err(ApiError::invalid(
                "stream_format",
                format!(
                    "stream_format: {:?} is not \"audio\" or \"sse\"",
                    truncate(other, 16)
                ),
            ));
        }
    };
    let speed = match body.speed {
        None => 0.0,
        Some(s) if !s.is_finite() || !OPENAI_SPEED.contains(&s) => {
            return Err(ApiError::invalid(
                "speed",
                format!(
                    "speed: {s} is outside {}..={}",
                    OPENAI_SPEED.start(),
                    OPENAI_SPEED.end()
                ),
            ));
        }
        Some(s) if !PROSODY_RANGE.contains(&s) => {
            return Err(ApiError::invalid(
                "speed",
                format!(
                    "speed: {s} is beyond what herald's engines do; use {}..={}",
                    PROSODY_RANGE.start(),
                    PROSODY_RANGE.end()
                ),
            ));
        }
        Some(s) => s,
    };
    let cache = match body.cache.as_deref().map(str::trim) {
        None | Some("" | "use") => CachePolicy::Use,
        Some("refresh") => CachePolicy::Refresh,
        Some("bypass") => CachePolicy::Bypass,
        Some(other) => {
            return Err(ApiError::invalid(
                "cache",
                format!(
                    "cache: {:?} is not \"use\", \"refresh\" or \"bypass\"",
                    truncate(other, 16)
                ),
            ));
        }
    };
    let voice = match &body.voice {
        Some(Voice::Name(n)) => names.voice(n),
        Some(Voice::Id { id }) => names.voice(id),
        None => String::new(),
    };
    let sample_rate_hz = match (body.sample_rate, codec) {
        (Some(r), _) => r,
        (None, Codec::PcmS16Le) => PCM_RATE,
        (None, _) => 0,
    };
    Ok(Speech {
        request: Request {
            text: body.input,
            voice,
            model: names.model(&body.model, serves),
            language: body.language,
            instructions: body.instructions,
            speed,
            pitch: body.pitch.unwrap_or(0.0),
            volume: body.volume.unwrap_or(0.0),
            format: FormatRequest {
                codec,
                sample_rate_hz,
                channels: 1,
                ..FormatRequest::default()
            },
            cache,
            fallback: !body.no_fallback,
            ..Request::default()
        },
        format,
        stream,
    })
}

/// The content type of a `response_format`.
pub fn content_type(format: &str) -> &'static str {
    match format {
        "mp3" => "audio/mpeg",
        "opus" => "audio/ogg",
        "flac" => "audio/flac",
        "wav" => "audio/wav",
        _ => "audio/pcm",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names {
            models: [("tts-1-hd".to_owned(), "qwen3-tts-flash".to_owned())].into(),
            voices: [("nova".to_owned(), "Cherry".to_owned())].into(),
        }
    }

    fn parse(json: &str) -> Result<Speech, ApiError> {
        speech(json.as_bytes(), &names(), |m| m == "espeak-ng")
    }

    #[test]
    fn openai_names_map_to_herald_names_or_defaults() {
        let n = names();
        let serves = |m: &str| m == "espeak-ng";
        assert_eq!(n.model("tts-1", serves), "");
        assert_eq!(n.model("gpt-4o-mini-tts", serves), "");
        assert_eq!(n.model("tts-1-hd", serves), "qwen3-tts-flash");
        assert_eq!(n.model("espeak-ng", serves), "espeak-ng");
        assert_eq!(
            n.model("whatever", serves),
            "whatever",
            "the core refuses it"
        );
        assert_eq!(n.voice("alloy"), "");
        assert_eq!(n.voice("nova"), "Cherry");
        assert_eq!(n.voice("en-us"), "en-us");
    }

    #[test]
    fn formats_speed_and_extensions() {
        let s = parse(r#"{"model":"tts-1","input":"hi","voice":"alloy"}"#).unwrap();
        assert_eq!((s.format, s.stream), ("mp3", StreamFormat::Audio));
        assert_eq!(s.request.format.codec, Codec::Mp3);
        assert_eq!(s.request.speed, 0.0);
        let s = parse(
            r#"{"input":"hi","voice":{"id":"nova"},"response_format":"pcm","stream_format":"sse",
               "speed":1.5,"language":"en","no_fallback":true,"cache":"bypass"}"#,
        )
        .unwrap();
        assert_eq!(s.request.format.sample_rate_hz, PCM_RATE);
        assert_eq!(s.request.format.channels, 1);
        assert_eq!(s.request.voice, "Cherry");
        assert_eq!(s.stream, StreamFormat::Sse);
        assert_eq!(s.request.speed, 1.5);
        assert!(!s.request.fallback);
        assert_eq!(s.request.cache, CachePolicy::Bypass);
        let s = parse(r#"{"input":"hi","response_format":"opus","sample_rate":16000}"#).unwrap();
        assert_eq!(s.request.format.codec, Codec::OggOpus);
        assert_eq!(s.request.format.sample_rate_hz, 16_000);
    }

    #[test]
    fn refusals_name_their_param() {
        for (json, param, start) in [
            (
                r#"{"input":"hi","response_format":"aac"}"#,
                "response_format",
                "response_format: \"aac\" is not served by herald; use one of: mp3, opus, flac, wav, pcm",
            ),
            (
                r#"{"input":"hi","speed":5}"#,
                "speed",
                "speed: 5 is outside 0.25..=4",
            ),
            (
                r#"{"input":"hi","speed":0.3}"#,
                "speed",
                "speed: 0.3 is beyond what herald's engines do; use 0.5..=2",
            ),
            (
                r#"{"input":"hi","stream_format":"x"}"#,
                "stream_format",
                "stream_format: ",
            ),
            (r#"{"input":"hi","cache":"x"}"#, "cache", "cache: "),
            (
                r#"{"model":"tts-1"}"#,
                "input",
                "the body is not a valid speech request: missing field `input`",
            ),
            (
                r#"{"input":5}"#,
                "input",
                "the body is not a valid speech request: invalid type",
            ),
            (
                r#"{"input":"hi","speed":"fast"}"#,
                "speed",
                "the body is not a valid speech request",
            ),
            (r#"["#, "body", "the body is not a valid speech request"),
        ] {
            let e = parse(json).unwrap_err();
            assert_eq!(e.status.as_u16(), 400, "{json}");
            assert_eq!(e.param.as_deref(), Some(param), "{json}");
            assert!(e.message.starts_with(start), "{json}: {}", e.message);
        }
    }
}
