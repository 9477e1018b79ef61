//! The three DashScope model families: which endpoint, what request body, how to read the
//! events (dashscope-api.md §2–§4), and what each accepts (validation before any call).

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::split;
use crate::{
    audio::{AudioSpec, decode::wav_s16_header},
    engine::{EngineError, SynthesisRequest, WordTiming},
};

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

    /// The family serving `model` (design.md's routing by name).
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
    fn language(self, model: &str, tag: &str) -> Result<Value, String> {
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

    /// The request body for one piece of `req` (the piece's text is `text`), asking for s16
    /// PCM at `rate` where the family lets herald choose.
    pub fn body(self, req: &SynthesisRequest, text: &str, rate: u32) -> Value {
        let model = req.model.as_str();
        // `check` ran before; a language it accepted always maps.
        let language = req
            .language
            .as_deref()
            .and_then(|l| self.language(model, l).ok());
        match self {
            Self::CosyVoice => {
                let mut input = Map::new();
                input.insert("text".into(), json!(text));
                input.insert("voice".into(), json!(req.voice));
                input.insert("format".into(), json!("pcm"));
                input.insert("sample_rate".into(), json!(rate));
                input.insert("volume".into(), json!(50));
                input.insert("rate".into(), json!(req.speed));
                input.insert("pitch".into(), json!(req.pitch));
                if let Some(seed) = req.seed {
                    input.insert("seed".into(), json!(seed));
                }
                if req.word_timestamps {
                    input.insert("word_timestamp_enabled".into(), json!(true));
                }
                if let Some(l) = language {
                    input.insert("language_hints".into(), l);
                }
                if let Some(i) = &req.instructions {
                    input.insert("instruction".into(), json!(i));
                }
                let mut hot_fix = Map::new();
                if !req.pronunciations.is_empty() {
                    hot_fix.insert("pronunciation".into(), dict_objects(&req.pronunciations));
                }
                if !req.replacements.is_empty() {
                    hot_fix.insert("replace".into(), dict_objects(&req.replacements));
                }
                if !hot_fix.is_empty() {
                    input.insert("hot_fix".into(), Value::Object(hot_fix));
                }
                json!({"model": model, "input": input})
            }
            Self::Qwen => {
                let mut input = Map::new();
                input.insert("text".into(), json!(text));
                input.insert("voice".into(), json!(req.voice));
                if let Some(l) = language {
                    input.insert("language_type".into(), l);
                }
                let mut parameters = Map::new();
                parameters.insert("stream".into(), json!(true));
                // Undocumented but measured (dashscope-api.md §3.1): sent only when asked for.
                if req.speed != 1.0 {
                    parameters.insert("speech_rate".into(), json!(req.speed));
                }
                if req.pitch != 1.0 {
                    parameters.insert("pitch_rate".into(), json!(req.pitch));
                }
                // The official SDKs place instructions in `parameters`.
                if let Some(i) = &req.instructions {
                    parameters.insert("instructions".into(), json!(i));
                    parameters.insert(
                        "optimize_instructions".into(),
                        json!(req.optimize_instructions),
                    );
                }
                json!({"model": model, "input": input, "parameters": parameters})
            }
            Self::MiniMax => {
                let mut voice = Map::new();
                voice.insert("voice_id".into(), json!(req.voice));
                voice.insert("speed".into(), json!(req.speed));
                voice.insert("vol".into(), json!(1));
                voice.insert("pitch".into(), json!(minimax_pitch(req.pitch)));
                if let Some(e) = &req.emotion {
                    voice.insert("emotion".into(), json!(e));
                }
                let mut input = Map::new();
                input.insert("text".into(), json!(text));
                input.insert("voice_setting".into(), Value::Object(voice));
                input.insert(
                    "audio_setting".into(),
                    json!({"sample_rate": rate, "format": "pcm", "channel": 1}),
                );
                input.insert(
                    "stream_options".into(),
                    json!({"exclude_aggregated_audio": true}),
                );
                if let Some(l) = language {
                    input.insert("language_boost".into(), l);
                }
                if !req.pronunciations.is_empty() {
                    let tone: Vec<String> = req
                        .pronunciations
                        .iter()
                        .map(|(w, p)| format!("{w}/{p}"))
                        .collect();
                    input.insert("pronunciation_dict".into(), json!({ "tone": tone }));
                }
                json!({"model": model, "input": input})
            }
        }
    }
}

/// `[{word: value}, ...]`, CosyVoice's `hot_fix` shape.
fn dict_objects(entries: &[(String, String)]) -> Value {
    Value::Array(entries.iter().map(|(k, v)| json!({ k: v })).collect())
}

/// herald's pitch multiplier as MiniMax semitones (-12..=12).
fn minimax_pitch(pitch: f32) -> i32 {
    // The clamp keeps the value in -12..=12, so the cast cannot truncate.
    (12.0 * pitch.log2()).round().clamp(-12.0, 12.0) as i32
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

// === errors ===

/// The HTTP status an error code implies, for in-band errors that came under HTTP 200.
pub fn implied_status(code: &str) -> u16 {
    match code {
        "InvalidApiKey" => 401,
        c if c.starts_with("AccessDenied")
            || c.ends_with(".AccessDenied")
            || c.starts_with("AllocationQuota") =>
        {
            403
        }
        "ModelNotFound" | "WorkSpaceNotFound" => 404,
        "RequestTimeOut" => 408,
        "BadRequest.TooLarge" => 413,
        c if c.starts_with("Throttling")
            || c == "LimitRequests"
            || c.ends_with("BillOverdue")
            || c == "CommodityNotPurchased" =>
        {
            429
        }
        c if c.starts_with("InternalError") || c == "SystemError" => 500,
        "ModelUnavailable" => 503,
        _ => 400,
    }
}

/// The error an upstream JSON object carries, if any: a non-empty top-level `code` (or a
/// nested `error.code`), or, on an `event:error`, whatever it says. `http_status` is the status
/// the object came with (HTTP status, or the `:HTTP_STATUS/` comment of its event).
pub fn error_in(v: &Value, http_status: u16, error_event: bool) -> Option<EngineError> {
    let obj = match v.get("error") {
        Some(e @ Value::Object(_)) => e,
        _ => v,
    };
    let code = obj
        .get("code")
        .and_then(|c| match c {
            Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
        .filter(|c| c != "200");
    if code.is_none() && !error_event {
        return None;
    }
    let message = obj
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("no message")
        .to_owned();
    let request_id = v
        .get("request_id")
        .or_else(|| v.get("requestId"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let status = if http_status >= 400 {
        http_status
    } else {
        code.as_deref().map_or(500, implied_status)
    };
    Some(EngineError::Api {
        status,
        code,
        message: truncate(&message, 300),
        request_id,
    })
}

/// A MiniMax `base_resp` error, if `status_code` is not 0.
fn minimax_error(v: &Value) -> Option<EngineError> {
    let base = v.get("output")?.get("base_resp")?;
    let code = base.get("status_code")?.as_i64()?;
    if code == 0 {
        return None;
    }
    let status = match code {
        1002 | 1039 => 429,
        1004 => 401,
        1001 => 504,
        1000 | 1013 | 1027 => 500,
        _ => 400,
    };
    Some(EngineError::Api {
        status,
        code: Some(format!("MiniMax.{code}")),
        message: truncate(
            base.get("status_msg")
                .and_then(Value::as_str)
                .unwrap_or("no message"),
            300,
        ),
        request_id: v
            .get("request_id")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

// === decoding events ===

/// What one event meant.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Nothing for the client (sentence-begin/-end, empty chunks).
    Nothing,
    /// s16le PCM of `spec`.
    Audio {
        /// Rate and channels of `data`.
        spec: AudioSpec,
        /// Whole samples or not: split anywhere.
        data: Bytes,
    },
    /// The piece is complete.
    Finished,
}

/// Reads one piece's events, in order.
#[derive(Debug)]
pub struct Decoder {
    family: Family,
    /// The spec herald asked for (CosyVoice, MiniMax) or expects (Qwen raw PCM).
    spec: AudioSpec,
    /// Qwen: the first bytes, until we know whether they start with a WAV header.
    sniff: Option<Vec<u8>>,
    /// Audio bytes yielded so far.
    pub audio_bytes: u64,
    /// Billed characters the upstream reported last (cumulative).
    pub characters: Option<u32>,
    /// Upstream request id.
    pub request_id: Option<String>,
    /// Saw the final event.
    pub finished: bool,
    /// Word timings read and not yet taken, in ms from the start of this piece's audio.
    pub words: Vec<WordTiming>,
    /// Where the current sentence's audio began (CosyVoice `sentence-begin`), in ms.
    sentence_start_ms: Option<u32>,
}

/// Milliseconds of s16 audio of `spec` in `bytes`.
pub fn s16_ms(spec: AudioSpec, bytes: u64) -> u32 {
    let per_s = u64::from(spec.sample_rate) * 2 * u64::from(spec.channels);
    u32::try_from(bytes * 1000 / per_s.max(1)).unwrap_or(u32::MAX)
}

/// How far before its sentence's start a word may begin and still count as timed from the
/// request's start (the audio of a sentence-begin event may lag a little).
const SENTENCE_SLACK_MS: u32 = 50;

impl Decoder {
    /// A decoder for a piece asked at `rate`.
    pub fn new(family: Family, rate: u32) -> Self {
        Self {
            family,
            spec: AudioSpec {
                sample_rate: rate,
                channels: 1,
            },
            sniff: (family == Family::Qwen).then(Vec::new),
            audio_bytes: 0,
            characters: None,
            request_id: None,
            finished: false,
            words: Vec::new(),
            sentence_start_ms: None,
        }
    }

    /// ms of audio read so far.
    fn audio_ms(&self) -> u32 {
        s16_ms(self.spec, self.audio_bytes)
    }

    /// CosyVoice `sentence-end` events carry the sentence's words (with
    /// `word_timestamp_enabled`). Open point: the docs show times from 0 for the first sentence
    /// only, so whether later sentences count from the request's start or their own is not
    /// written down; times that fall before the sentence's own audio began are taken as
    /// sentence-relative and moved by the audio before it.
    fn read_words(&mut self, output: &Value) {
        if output.get("type").and_then(Value::as_str) != Some("sentence-end") {
            return;
        }
        let Some(words) = output
            .get("sentence")
            .and_then(|s| s.get("words"))
            .and_then(Value::as_array)
        else {
            return;
        };
        let ms = |w: &Value, key: &str| {
            w.get(key)
                .and_then(Value::as_u64)
                .map_or(0, |t| u32::try_from(t).unwrap_or(u32::MAX))
        };
        let mut read: Vec<WordTiming> = words
            .iter()
            .filter_map(|w| {
                let text = w.get("text").and_then(Value::as_str)?;
                let begin_ms = ms(w, "begin_time");
                Some(WordTiming {
                    text: text.to_owned(),
                    begin_ms,
                    end_ms: ms(w, "end_time").max(begin_ms),
                })
            })
            .collect();
        let start = self.sentence_start_ms.unwrap_or(0);
        if read
            .first()
            .is_some_and(|w| w.begin_ms + SENTENCE_SLACK_MS < start)
        {
            for w in &mut read {
                w.begin_ms = w.begin_ms.saturating_add(start);
                w.end_ms = w.end_ms.saturating_add(start);
            }
        }
        self.words.extend(read);
    }

    /// Read one event's JSON. `http_status` and `error_event` are the event's framing.
    pub fn event(
        &mut self,
        v: &Value,
        http_status: u16,
        error_event: bool,
    ) -> Result<Step, EngineError> {
        if let Some(e) = error_in(v, http_status, error_event) {
            return Err(e);
        }
        if let Some(id) = v.get("request_id").and_then(Value::as_str) {
            self.request_id = Some(id.to_owned());
        }
        if let Some(n) = v
            .get("usage")
            .and_then(|u| u.get("characters"))
            .and_then(Value::as_u64)
        {
            self.characters = u32::try_from(n).ok();
        }
        let output = v.get("output");
        match self.family {
            Family::CosyVoice | Family::Qwen => {
                if self.family == Family::CosyVoice
                    && let Some(o) = output
                {
                    if o.get("type").and_then(Value::as_str) == Some("sentence-begin") {
                        self.sentence_start_ms = Some(self.audio_ms());
                    }
                    self.read_words(o);
                }
                let audio = output
                    .and_then(|o| o.get("audio"))
                    .and_then(|a| a.get("data"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let finished = output
                    .and_then(|o| o.get("finish_reason"))
                    .and_then(Value::as_str)
                    == Some("stop");
                let step = if audio.is_empty() {
                    Step::Nothing
                } else {
                    let data = base64::engine::general_purpose::STANDARD
                        .decode(audio.trim())
                        .map_err(|e| {
                            EngineError::Protocol(format!("output.audio.data is not base64: {e}"))
                        })?;
                    self.audio(data)?
                };
                if finished {
                    self.finished = true;
                    if step == Step::Nothing {
                        return self.finish();
                    }
                }
                Ok(step)
            }
            Family::MiniMax => {
                if let Some(e) = minimax_error(v) {
                    return Err(e);
                }
                let data = output.and_then(|o| o.get("data"));
                let status = data
                    .and_then(|d| d.get("status"))
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                let hex_audio = data
                    .and_then(|d| d.get("audio"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if let Some(n) = output
                    .and_then(|o| o.get("extra_info"))
                    .and_then(|x| x.get("usage_characters"))
                    .and_then(Value::as_u64)
                    && self.characters.is_none()
                {
                    self.characters = u32::try_from(n).ok();
                }
                if status == 2 {
                    self.finished = true;
                    // The final frame repeats the whole audio unless herald's
                    // `exclude_aggregated_audio` was honoured: use it only if nothing came
                    // before (a stream that sent everything at once).
                    if self.audio_bytes == 0 && !hex_audio.is_empty() {
                        let bytes = decode_hex(hex_audio)?;
                        return self.audio(bytes);
                    }
                    return self.finish();
                }
                if hex_audio.is_empty() || hex_audio.starts_with("http") {
                    return Ok(Step::Nothing);
                }
                let bytes = decode_hex(hex_audio)?;
                self.audio(bytes)
            }
        }
    }

    /// Called when the upstream stream ended: `Ok` when the piece was complete.
    pub fn end(&mut self) -> Result<Step, EngineError> {
        if !self.finished {
            return Err(EngineError::Truncated);
        }
        self.finish()
    }

    fn finish(&mut self) -> Result<Step, EngineError> {
        if let Some(buf) = self.sniff.take()
            && !buf.is_empty()
        {
            // A Qwen piece shorter than a WAV header: raw PCM.
            let n = buf.len() as u64;
            self.audio_bytes += n;
            return self.check_even().map(|()| Step::Audio {
                spec: self.spec,
                data: Bytes::from(buf),
            });
        }
        self.check_even()?;
        Ok(Step::Finished)
    }

    fn check_even(&self) -> Result<(), EngineError> {
        if self.audio_bytes % 2 == 1 {
            return Err(EngineError::Protocol(format!(
                "{} bytes of 16-bit PCM: not a whole number of samples",
                self.audio_bytes
            )));
        }
        Ok(())
    }

    fn audio(&mut self, data: Vec<u8>) -> Result<Step, EngineError> {
        let data = match self.sniff.as_mut() {
            None => data,
            Some(buf) => {
                buf.extend_from_slice(&data);
                if buf.len() < 4 {
                    return Ok(Step::Nothing);
                }
                if &buf[..4] != b"RIFF" {
                    self.sniff.take().unwrap_or_default()
                } else {
                    match wav_s16_header(buf) {
                        Ok(Some((spec, offset))) => {
                            if spec.channels != 1 && spec.channels != 2 {
                                return Err(EngineError::Protocol(format!(
                                    "WAV stream with {} channels",
                                    spec.channels
                                )));
                            }
                            self.spec = spec;
                            let mut all = self.sniff.take().unwrap_or_default();
                            all.drain(..offset);
                            all
                        }
                        Ok(None) if buf.len() < 4096 => return Ok(Step::Nothing),
                        Ok(None) => {
                            return Err(EngineError::Protocol(
                                "WAV header longer than 4096 bytes".to_owned(),
                            ));
                        }
                        Err(e) => {
                            return Err(EngineError::Protocol(format!(
                                "bad WAV header in the first audio chunk: {e}"
                            )));
                        }
                    }
                }
            }
        };
        if data.is_empty() {
            return Ok(Step::Nothing);
        }
        self.audio_bytes += data.len() as u64;
        Ok(Step::Audio {
            spec: self.spec,
            data: Bytes::from(data),
        })
    }
}

fn decode_hex(s: &str) -> Result<Vec<u8>, EngineError> {
    hex::decode(s.trim())
        .map_err(|e| EngineError::Protocol(format!("output.data.audio is not hex: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(model: &str) -> SynthesisRequest {
        SynthesisRequest {
            text: "hi".into(),
            voice: "v".into(),
            model: model.into(),
            speed: 1.0,
            pitch: 1.0,
            ..Default::default()
        }
    }

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

    #[test]
    fn bodies_follow_the_spec() {
        let mut r = req("cosyvoice-v3-flash");
        r.seed = Some(42);
        r.pronunciations = vec![("天气".into(), "tian1 qi4".into())];
        let b = Family::CosyVoice.body(&r, "piece", 16000);
        assert_eq!(b["input"]["format"], "pcm");
        assert_eq!(b["input"]["sample_rate"], 16000);
        assert_eq!(b["input"]["text"], "piece");
        assert_eq!(b["input"]["seed"], 42);
        assert_eq!(
            b["input"]["hot_fix"]["pronunciation"][0]["天气"],
            "tian1 qi4"
        );
        let mut r = req("qwen3-tts-instruct-flash");
        r.instructions = Some("warm".into());
        r.language = Some("en".into());
        let b = Family::Qwen.body(&r, "piece", 24000);
        assert_eq!(b["parameters"]["instructions"], "warm");
        assert_eq!(b["input"]["language_type"], "English");
        let mut r = req("MiniMax/speech-02-hd");
        r.pitch = 2.0;
        r.emotion = Some("calm".into());
        let b = Family::MiniMax.body(&r, "piece", 16000);
        assert_eq!(b["input"]["voice_setting"]["pitch"], 12);
        assert_eq!(b["input"]["voice_setting"]["emotion"], "calm");
        assert_eq!(b["input"]["audio_setting"]["format"], "pcm");
        assert_eq!(
            b["input"]["stream_options"]["exclude_aggregated_audio"],
            true
        );
    }

    #[test]
    fn error_shapes_are_recognised() {
        let v = json!({"code":"Throttling.RateQuota","message":"slow down","request_id":"r1"});
        match error_in(&v, 200, false) {
            Some(EngineError::Api {
                status,
                code,
                request_id,
                ..
            }) => {
                assert_eq!(status, 429);
                assert_eq!(code.as_deref(), Some("Throttling.RateQuota"));
                assert_eq!(request_id.as_deref(), Some("r1"));
            }
            other => panic!("{other:?}"),
        }
        let v = json!({"code":"InvalidParameter","message":"m"});
        assert!(matches!(
            error_in(&v, 400, true),
            Some(EngineError::Api { status: 400, .. })
        ));
        assert!(error_in(&json!({"code":"", "output":{}}), 200, false).is_none());
        assert!(error_in(&json!({"output":{}}), 200, true).is_some());
        let mm = json!({"output":{"base_resp":{"status_code":1004,"status_msg":"auth"}}});
        let mut d = Decoder::new(Family::MiniMax, 16000);
        assert!(matches!(
            d.event(&mm, 200, false),
            Err(EngineError::Api { status: 401, .. })
        ));
    }

    #[test]
    fn minimax_final_frame_is_not_appended_twice() {
        let mut d = Decoder::new(Family::MiniMax, 16000);
        let chunk = json!({"output":{"base_resp":{"status_code":0},"data":{"audio":"01020304","status":1}}});
        let last = json!({"output":{"base_resp":{"status_code":0},"data":{"audio":"0102030401020304","status":2}},"usage":{"characters":5}});
        assert!(matches!(
            d.event(&chunk, 200, false).unwrap(),
            Step::Audio { .. }
        ));
        assert_eq!(d.event(&last, 200, false).unwrap(), Step::Finished);
        assert_eq!(d.audio_bytes, 4);
        assert_eq!(d.characters, Some(5));
        // Only a final frame: its audio is the audio.
        let mut d = Decoder::new(Family::MiniMax, 16000);
        assert!(matches!(
            d.event(&last, 200, false).unwrap(),
            Step::Audio { .. }
        ));
        assert_eq!(d.end().unwrap(), Step::Finished);
    }

    #[test]
    fn qwen_wav_header_is_sniffed_and_stripped_across_chunks() {
        let mut wav = Vec::new();
        wav.extend_from_slice(b"RIFF\xff\xff\xff\x7fWAVEfmt ");
        wav.extend_from_slice(&16u32.to_le_bytes());
        wav.extend_from_slice(&1u16.to_le_bytes());
        wav.extend_from_slice(&1u16.to_le_bytes());
        wav.extend_from_slice(&24000u32.to_le_bytes());
        wav.extend_from_slice(&48000u32.to_le_bytes());
        wav.extend_from_slice(&2u16.to_le_bytes());
        wav.extend_from_slice(&16u16.to_le_bytes());
        wav.extend_from_slice(b"data\xff\xff\xff\x7f");
        wav.extend_from_slice(&[1, 0, 2, 0]);
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let frame = |b: &[u8]| json!({"output":{"finish_reason":"null","audio":{"data": b64(b)}}});
        let mut d = Decoder::new(Family::Qwen, 24000);
        assert_eq!(
            d.event(&frame(&wav[..30]), 200, false).unwrap(),
            Step::Nothing
        );
        match d.event(&frame(&wav[30..]), 200, false).unwrap() {
            Step::Audio { spec, data } => {
                assert_eq!(spec.sample_rate, 24000);
                assert_eq!(&data[..], &[1, 0, 2, 0]);
            }
            other => panic!("{other:?}"),
        }
        let stop = json!({"output":{"finish_reason":"stop","audio":{"data":"","url":"http://x"}}});
        assert_eq!(d.event(&stop, 200, false).unwrap(), Step::Finished);
        // Raw PCM is passed through.
        let mut d = Decoder::new(Family::Qwen, 24000);
        assert!(matches!(
            d.event(&frame(&[5, 0, 6, 0, 7, 0]), 200, false).unwrap(),
            Step::Audio { .. }
        ));
        // Bad base64, an odd byte count and a missing final event are errors.
        let bad = json!({"output":{"audio":{"data":"@@@"}}});
        assert!(matches!(
            d.event(&bad, 200, false),
            Err(EngineError::Protocol(_))
        ));
        let mut d = Decoder::new(Family::CosyVoice, 16000);
        d.event(&frame(&[1, 2, 3]), 200, false).unwrap();
        assert!(matches!(d.end(), Err(EngineError::Truncated)));
        assert!(matches!(
            d.event(&stop, 200, false),
            Err(EngineError::Protocol(_))
        ));
    }

    #[test]
    fn word_times_of_later_sentences_count_from_the_request_either_way() {
        let b64 = |ms: usize| base64::engine::general_purpose::STANDARD.encode(vec![1u8; ms * 32]);
        let ev = |kind: &str, audio: String, words: Value| {
            json!({"output": {"type": kind, "sentence": {"index": 0, "words": words},
                "audio": {"data": audio}}})
        };
        let word = |t: &str, b: u64, e: u64| json!({"text": t, "begin_time": b, "end_time": e});
        for relative in [false, true] {
            let mut d = Decoder::new(Family::CosyVoice, 16000);
            let base = if relative { 0 } else { 1000 };
            let events = [
                ev("sentence-begin", String::new(), json!([])),
                ev("sentence-synthesis", b64(1000), json!([])),
                ev(
                    "sentence-end",
                    String::new(),
                    json!([word("one", 0, 600), word("two", 600, 1000)]),
                ),
                ev("sentence-begin", String::new(), json!([])),
                ev("sentence-synthesis", b64(500), json!([])),
                ev(
                    "sentence-end",
                    String::new(),
                    json!([word("three", base, base + 500)]),
                ),
            ];
            for e in &events {
                d.event(e, 200, false).unwrap();
            }
            let got: Vec<_> = d
                .words
                .iter()
                .map(|w| (w.text.as_str(), w.begin_ms, w.end_ms))
                .collect();
            assert_eq!(
                got,
                [("one", 0, 600), ("two", 600, 1000), ("three", 1000, 1500)],
                "relative: {relative}"
            );
        }
        // Words only from sentence-end events, and an end never before its begin.
        let mut d = Decoder::new(Family::CosyVoice, 16000);
        d.event(
            &ev("sentence-synthesis", b64(10), json!([word("x", 0, 5)])),
            200,
            false,
        )
        .unwrap();
        assert!(d.words.is_empty());
        d.event(
            &ev("sentence-end", String::new(), json!([word("y", 9, 3)])),
            200,
            false,
        )
        .unwrap();
        assert_eq!((d.words[0].begin_ms, d.words[0].end_ms), (9, 9));
    }

    #[test]
    fn word_timestamps_are_cosyvoice_only_and_reach_the_body() {
        let mut r = SynthesisRequest {
            model: "cosyvoice-v3-flash".into(),
            voice: "longanyang".into(),
            speed: 1.0,
            pitch: 1.0,
            word_timestamps: true,
            ..Default::default()
        };
        Family::CosyVoice.check(&r).unwrap();
        assert_eq!(
            Family::CosyVoice.body(&r, "hi", 16000)["input"]["word_timestamp_enabled"],
            true
        );
        r.model = "qwen3-tts-flash".into();
        assert!(
            Family::Qwen
                .check(&r)
                .unwrap_err()
                .starts_with("word_timestamps:")
        );
    }
}
