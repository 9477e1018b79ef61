//! What a synthesis request may say: the endpoint of each model family, the known system
//! voices, formats, rates and the other parameters, checked the way DashScope checks them, and
//! the answer each check gives ([`decide`]).

use serde_json::Value;

use super::{
    FaultKind, Options, TTS_PATH, custom,
    server::{Incoming, Inner},
    text_units,
    wire::{self, Reply, Step, error_body, json_error, sse_error_event},
};

/// The message DashScope sends with `InvalidParameter` for a bad or missing parameter.
pub(super) const INVALID_PARAMETER_MSG: &str =
    "Required parameter(s) missing or invalid, please check the request parameters.";

/// The answer to a synthesis request (and the fault it took, if any): 401 without the key, the
/// endpoint and parameter checks, then the scripted fault or the audio.
pub(super) fn decide(
    inner: &Inner,
    incoming: &Incoming,
    sse: bool,
    options: &Options,
) -> (Reply, Option<FaultKind>) {
    let (model, rid) = (incoming.model.as_str(), incoming.request_id.as_str());
    if !incoming.authorized {
        return (
            json_error(401, "InvalidApiKey", "Invalid API-key provided.", rid),
            None,
        );
    }
    let Some(body) = incoming.json.as_ref().filter(|b| b.is_object()) else {
        return (
            json_error(400, "InvalidParameter", INVALID_PARAMETER_MSG, rid),
            None,
        );
    };
    if model.is_empty() {
        let reply = json_error(
            400,
            "BadRequest.EmptyModel",
            "Required parameter 'model' missing from request.",
            rid,
        );
        return (reply, None);
    }
    let family = match (family_of(model), incoming.uri.path() == TTS_PATH) {
        (Some(Family::Cosy), true) => Family::Cosy,
        (Some(f @ (Family::Qwen | Family::MiniMax)), false) => f,
        _ => return (json_error(400, "InvalidParameter", "url error", rid), None),
    };
    if !body.get("input").is_some_and(Value::is_object) {
        let reply = json_error(
            400,
            "BadRequest.EmptyInput",
            "Required input parameter missing from request.",
            rid,
        );
        return (reply, None);
    }
    let fault = inner.take_fault(|f| {
        f.model_prefix
            .as_deref()
            .is_none_or(|p| model.starts_with(p))
    });
    if let Some(FaultKind::HttpError {
        status,
        code,
        message,
    }) = &fault
    {
        return (json_error(*status, code, message, rid), fault);
    }
    let custom_tone = match family {
        Family::MiniMax => Ok(None),
        _ => custom::synthesis_voice(inner, model, body["input"]["voice"].as_str().unwrap_or("")),
    };
    let (req, custom_tone) =
        match custom_tone.and_then(|hz| Ok((parse_request(family, model, body)?, hz))) {
            Ok(r) => r,
            Err(rej) if rej.code == "InternalError" => {
                return (json_error(500, rej.code, &rej.message, rid), fault);
            }
            Err(rej) if rej.voice && sse && options.unknown_voice_as_sse_error => {
                let reply = Reply {
                    status: 200,
                    sse_body: true,
                    finished: true,
                    steps: vec![Step::Event(sse_error_event(
                        1,
                        400,
                        &error_body(rej.code, &rej.message, rid),
                    ))],
                };
                return (reply, fault);
            }
            Err(rej) => return (json_error(400, rej.code, &rej.message, rid), fault),
        };
    let mut options = options.clone();
    if let Some(hz) = custom_tone {
        options.tone_hz = hz;
    }
    let reply = wire::respond(inner, &req, sse, rid, &options, fault.as_ref());
    (reply, fault)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Family {
    /// CosyVoice / Qwen-Audio-TTS on SpeechSynthesizer.
    Cosy,
    /// Qwen-TTS on multimodal-generation.
    Qwen,
    /// MiniMax on multimodal-generation.
    MiniMax,
}

fn family_of(model: &str) -> Option<Family> {
    if model.starts_with("cosyvoice-") || model.starts_with("qwen-audio-") {
        Some(Family::Cosy)
    } else if model.starts_with("qwen3-tts") || model.starts_with("qwen-tts") {
        Some(Family::Qwen)
    } else if model.starts_with("MiniMax/") {
        Some(Family::MiniMax)
    } else {
        None
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Fmt {
    Pcm,
    Wav,
    Mp3,
}

impl Fmt {
    pub(super) fn ext(self) -> &'static str {
        match self {
            Fmt::Pcm => "pcm",
            Fmt::Wav => "wav",
            Fmt::Mp3 => "mp3",
        }
    }
    pub(super) fn content_type(self) -> &'static str {
        match self {
            Fmt::Pcm => "application/octet-stream",
            Fmt::Wav => "audio/wav",
            Fmt::Mp3 => "audio/mpeg",
        }
    }
}

/// A parameter problem found by validation.
pub(super) struct Rejection {
    pub(super) code: &'static str,
    pub(super) message: String,
    /// An unknown voice (may be reported in-stream, see `unknown_voice_as_sse_error`).
    pub(super) voice: bool,
}

pub(super) fn invalid(message: impl Into<String>) -> Rejection {
    Rejection {
        code: "InvalidParameter",
        message: message.into(),
        voice: false,
    }
}

pub(super) fn bad_voice(message: &str) -> Rejection {
    Rejection {
        code: "InvalidParameter",
        message: message.to_owned(),
        voice: true,
    }
}

/// A validated synthesis request.
pub(super) struct SynthRequest {
    pub(super) family: Family,
    pub(super) model: String,
    pub(super) text: String,
    pub(super) units: usize,
    pub(super) fmt: Fmt,
    pub(super) rate: u32,
    pub(super) channels: u16,
    /// MP3 bitrate (bps) to encode at.
    pub(super) bitrate: u32,
    /// MiniMax: no aggregated audio in the final frame.
    pub(super) exclude_aggregated: bool,
    /// MiniMax non-streaming `output_format: "url"`.
    pub(super) minimax_url: bool,
    /// CosyVoice `word_timestamp_enabled`: `sentence-end` events carry the words.
    pub(super) words: bool,
}

// Known system voices. Any voice starting with one of `CUSTOM_PREFIXES` is taken for a cloned or
// designed voice and accepted by every model.
const CUSTOM_PREFIXES: &[&str] = &["cosyvoice-", "qwen-tts-vc-", "qwen-tts-vd-", "custom-"];
const COSYVOICE_V3_VOICES: &[&str] = &[
    "longanyang",
    "longanhuan",
    "longanhuan_v3",
    "longhuhu_v3",
    "longjiaxin_v3",
    "longlaotie_v3",
    "longsanshu_v3",
    "longshuo_v3",
    "loongabby_v3",
    "loongbella_v3",
    "longshange_v3",
];
const COSYVOICE_V2_VOICES: &[&str] = &["longxiaochun_v2", "longwan_v2"];
const QWEN_AUDIO_VOICES: &[&str] = &[
    "longanfengyue",
    "longanyuanfei",
    "longanlingxi",
    "longanxiaoxin",
    "longanhuan_v3.6",
    "longjielidou_v3.6",
    "longpaopao_v3.6",
    "longhuohuo_v3.6",
    "longchuanshu_v3.6",
    "loongmary",
    "loongeva_v3.6",
    "loongjohn",
    "longanlingxin",
    "longanlufeng",
];
const QWEN3_VOICES: &[&str] = &[
    "Cherry",
    "Serena",
    "Ethan",
    "Chelsie",
    "Dylan",
    "Jada",
    "Sunny",
    "Nofish",
    "Jennifer",
    "Li",
    "Marcus",
    "Roy",
    "Peter",
    "Eric",
    "Rocky",
    "Kiki",
    "Ryan",
    "Katerina",
    "Elias",
    "Momo",
    "Moon",
    "Maia",
    "Kai",
    "Bella",
    "Aiden",
    "Eldric Sage",
    "Mia",
    "Mochi",
    "Bellona",
    "Vincent",
    "Bunny",
    "Neil",
    "Arthur",
    "Nini",
    "Ebona",
    "Seren",
    "Pip",
    "Stella",
    "Bodega",
    "Sonrisa",
    "Alek",
    "Dolce",
    "Sohee",
    "Ono Anna",
    "Lenn",
    "Emilien",
    "Andre",
    "Radio Gol",
    "Vivian",
];
const QWEN_TTS_LEGACY_VOICES: &[&str] = &[
    "Cherry", "Serena", "Ethan", "Chelsie", "Dylan", "Jada", "Sunny",
];
const MINIMAX_VOICES: &[&str] = &[
    "male-qn-qingse",
    "male-qn-jingying",
    "male-qn-badao",
    "male-qn-daxuesheng",
    "female-shaonv",
    "female-yujie",
    "female-chengshu",
    "female-tianmei",
    "presenter_male",
    "presenter_female",
    "audiobook_male_1",
    "audiobook_female_1",
    "English_Graceful_Lady",
    "English_Trustworthy_Man",
    "Chinese (Mandarin)_Lyrical_Voice",
];

fn voice_known(family: Family, model: &str, voice: &str) -> Result<(), Rejection> {
    if CUSTOM_PREFIXES.iter().any(|p| voice.starts_with(p)) {
        return Ok(());
    }
    let ok = match family {
        Family::Cosy if model.starts_with("cosyvoice-v3.5") => false,
        Family::Cosy if model.starts_with("cosyvoice-v2") => COSYVOICE_V2_VOICES.contains(&voice),
        Family::Cosy if model.starts_with("qwen-audio-3.1") => voice.ends_with("_v3.1"),
        Family::Cosy if model.starts_with("qwen-audio-") => {
            QWEN_AUDIO_VOICES.contains(&voice) || voice.starts_with("qwen-audio-3.0-tts-")
        }
        Family::Cosy => COSYVOICE_V3_VOICES.contains(&voice),
        Family::Qwen if model.starts_with("qwen-tts") => QWEN_TTS_LEGACY_VOICES.contains(&voice),
        Family::Qwen => QWEN3_VOICES.contains(&voice),
        Family::MiniMax => MINIMAX_VOICES.contains(&voice),
    };
    if ok {
        return Ok(());
    }
    Err(bad_voice(match family {
        Family::Cosy if model.starts_with("qwen-audio-") => "[cosyvoice:]Engine error [411]",
        Family::Cosy => "[cosyvoice:]Engine return error code: 418",
        Family::Qwen => "Invalid voice specified",
        Family::MiniMax => "voice id not exist",
    }))
}

/// An integer parameter (JSON number, integral), if present.
fn int_param(v: Option<&Value>, name: &str) -> Result<Option<u64>, Rejection> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .or_else(|| {
                v.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                    .map(|f| f as u64)
            })
            .map(Some)
            .ok_or_else(|| invalid(format!("{name} must be an integer"))),
    }
}

fn str_param<'a>(v: Option<&'a Value>, name: &str) -> Result<Option<&'a str>, Rejection> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(format!("{name} must be a string"))),
    }
}

fn parse_fmt(s: &str, allowed: &[Fmt]) -> Result<Fmt, Rejection> {
    let fmt = match s.to_ascii_lowercase().as_str() {
        "pcm" => Fmt::Pcm,
        "wav" => Fmt::Wav,
        "mp3" => Fmt::Mp3,
        "opus" | "flac" => {
            return Err(invalid(format!(
                "format {s} is not implemented by the DashScope double"
            )));
        }
        _ => return Err(invalid(format!("Unsupported audio format: {s}"))),
    };
    if allowed.contains(&fmt) {
        Ok(fmt)
    } else {
        Err(invalid(format!("Unsupported audio format: {s}")))
    }
}

fn parse_request(family: Family, model: &str, body: &Value) -> Result<SynthRequest, Rejection> {
    let input = &body["input"];
    let params = body.get("parameters").unwrap_or(&Value::Null);
    let text = str_param(input.get("text"), "text")?
        .filter(|t| !t.is_empty())
        .ok_or_else(|| invalid(INVALID_PARAMETER_MSG))?
        .to_owned();
    let units = text_units(&text);
    let all = [Fmt::Pcm, Fmt::Wav, Fmt::Mp3];
    let mut req = SynthRequest {
        family,
        model: model.to_owned(),
        text,
        units,
        fmt: Fmt::Mp3,
        rate: 0,
        channels: 1,
        bitrate: 64_000,
        exclude_aggregated: false,
        minimax_url: false,
        words: false,
    };
    match family {
        Family::Cosy => {
            if units > 20_000 {
                return Err(invalid(format!(
                    "Each request sends text is limited: 20000, current: {units}"
                )));
            }
            let voice = str_param(input.get("voice"), "voice")?.unwrap_or("");
            if voice.is_empty() && !model.starts_with("cosyvoice-v3.5") {
                return Err(invalid(INVALID_PARAMETER_MSG));
            }
            voice_known(family, model, voice)?;
            req.fmt = parse_fmt(
                str_param(input.get("format"), "format")?.unwrap_or("mp3"),
                &all,
            )?;
            req.rate = int_param(input.get("sample_rate"), "sample_rate")?.unwrap_or(22_050) as u32;
            if ![8000, 16000, 22050, 24000, 44100, 48000].contains(&req.rate) {
                return Err(invalid(format!("Unsupported sample_rate: {}", req.rate)));
            }
            req.words = input
                .get("word_timestamp_enabled")
                .and_then(Value::as_bool)
                .unwrap_or(false);
        }
        Family::Qwen => {
            let voice = str_param(input.get("voice"), "voice")?.unwrap_or("");
            if voice.is_empty() {
                return Err(invalid(INVALID_PARAMETER_MSG));
            }
            voice_known(family, model, voice)?;
            let fmt = str_param(params.get("response_format"), "response_format")?;
            req.fmt = parse_fmt(fmt.unwrap_or("wav"), &all)?;
            req.rate =
                int_param(params.get("sample_rate"), "sample_rate")?.unwrap_or(24_000) as u32;
            if ![8000, 16000, 24000, 48000].contains(&req.rate) {
                return Err(invalid(format!("Unsupported sample_rate: {}", req.rate)));
            }
        }
        Family::MiniMax => {
            // MiniMax-native fields live in `input`; the Python SDK's MultiModalConversation can
            // only send `input.voice` and puts other keyword arguments in `parameters`, so those
            // places are read as fallbacks.
            let pick = |key: &str| {
                input
                    .get(key)
                    .filter(|v| !v.is_null())
                    .or_else(|| params.get(key).filter(|v| !v.is_null()))
            };
            let voice_setting = pick("voice_setting").unwrap_or(&Value::Null);
            let voice = str_param(voice_setting.get("voice_id"), "voice_id")?
                .or(str_param(input.get("voice"), "voice")?)
                .unwrap_or("");
            if voice.is_empty() {
                return Err(invalid(INVALID_PARAMETER_MSG));
            }
            voice_known(family, model, voice)?;
            let audio = pick("audio_setting").unwrap_or(&Value::Null);
            req.fmt = parse_fmt(
                str_param(audio.get("format"), "format")?.unwrap_or("mp3"),
                &all,
            )?;
            req.rate = int_param(audio.get("sample_rate"), "sample_rate")?.unwrap_or(32_000) as u32;
            if ![8000, 16000, 22050, 24000, 32000, 44100].contains(&req.rate) {
                return Err(invalid(format!("Unsupported sample_rate: {}", req.rate)));
            }
            req.channels = match int_param(audio.get("channel"), "channel")?.unwrap_or(1) {
                1 => 1,
                2 => 2,
                n => return Err(invalid(format!("Unsupported channel: {n}"))),
            };
            req.bitrate = int_param(audio.get("bitrate"), "bitrate")?.unwrap_or(128_000) as u32;
            if ![32_000, 64_000, 128_000, 256_000].contains(&req.bitrate) {
                return Err(invalid(format!("Unsupported bitrate: {}", req.bitrate)));
            }
            req.exclude_aggregated = pick("stream_options")
                .and_then(|o| o.get("exclude_aggregated_audio"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
            req.minimax_url = pick("output_format").and_then(Value::as_str) == Some("url");
        }
    }
    Ok(req)
}
