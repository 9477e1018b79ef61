//! The double's custom-voice endpoint, as the project's notes on DashScope custom voices
//! describe it: `POST /api/v1/services/audio/tts/customization`, the three surfaces
//! `voice-enrollment`, `qwen-voice-enrollment` and `qwen-voice-design`, with state, a scripted
//! DEPLOYING period, quotas, audio inspection of data URIs, temporary uploads (`oss://`), and
//! the synthesis side (a created voice is accepted only with its target model, and sounds as a
//! tone of its own, [`custom_voice_tone`]).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{
    FaultKind, LoggedRequest,
    audio::{encode_mp3, s16le, tone_pcm, wav_header},
    request::{INVALID_PARAMETER_MSG, Rejection, bad_voice},
    server::{Incoming, Inner},
    wire::error_body,
};

/// The endpoint's path.
pub const CUSTOMIZATION_PATH: &str = "/api/v1/services/audio/tts/customization";

/// Knobs of the custom-voice endpoint, see [`super::DashScopeDouble::set_custom_options`].
#[derive(Clone, Debug)]
pub struct CustomOptions {
    /// `voice-enrollment`: `query_voice` answers `DEPLOYING` this many times before `OK`.
    pub deploying_polls: usize,
    /// `voice-enrollment`: end `UNDEPLOYED` instead of `OK`.
    pub end_undeployed: bool,
    /// Voices per surface before `Throttling.AllocationQuota`.
    pub quota: usize,
    /// `voice-enrollment` takes a data URI in `url` (`false`: 500 `InternalError` "audio
    /// preprocess server error", as observed against the live API in December 2026).
    pub enrollment_data_uri: bool,
    /// Qwen VC creates answer `fallback_mode: true`.
    pub qwen_fallback_mode: bool,
    /// `model` not a surface: this status (400 or 404) with `Model not exist.`.
    pub unknown_model_status: u16,
}

impl Default for CustomOptions {
    fn default() -> Self {
        Self {
            deploying_polls: 1,
            end_undeployed: false,
            quota: 1000,
            enrollment_data_uri: true,
            qwen_fallback_mode: false,
            unknown_model_status: 400,
        }
    }
}

/// One voice the double holds.
#[derive(Clone, Debug)]
pub struct DoubleVoice {
    pub id: String,
    pub surface: &'static str,
    pub target_model: String,
    pub design: bool,
    /// The prefix / preferred_name given at creation (picks the tone).
    pub name: String,
    pub status: &'static str,
    pub polls_left: usize,
    pub gmt: String,
    pub voice_prompt: String,
    pub preview_text: String,
    pub language: String,
    pub resource_link: String,
}

/// The endpoint's state.
#[derive(Debug, Default)]
pub(super) struct CustomState {
    pub(super) options: CustomOptions,
    pub(super) voices: Vec<DoubleVoice>,
    /// Ids deleted so far.
    deleted: Vec<String>,
    /// Temporary uploads: object key → bytes.
    uploads: HashMap<String, Vec<u8>>,
    /// Upload form fields as received (without the file), for tests.
    pub(super) upload_forms: Vec<HashMap<String, String>>,
}

/// The tone (Hz) the double's synthesis plays for a created custom voice: derived from the
/// name given at creation (prefix / preferred_name), 300..=1080 Hz in 20 Hz steps, never the
/// default 440 Hz.
pub fn custom_voice_tone(name: &str) -> f32 {
    let h = name.bytes().fold(2_166_136_261u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(16_777_619)
    });
    let hz = 300.0 + (h % 40) as f32 * 20.0;
    if hz == 440.0 { 1100.0 } else { hz }
}

const ENROLL_CLONE: &[&str] = &[
    "cosyvoice-v3.5-plus",
    "cosyvoice-v3.5-flash",
    "cosyvoice-v3-plus",
    "cosyvoice-v3-flash",
    "cosyvoice-v2",
    "cosyvoice-v1",
    "qwen-audio-3.0-tts-plus",
    "qwen-audio-3.0-tts-flash",
];
const ENROLL_DESIGN: &[&str] = &[
    "cosyvoice-v3.5-plus",
    "cosyvoice-v3.5-flash",
    "cosyvoice-v3-plus",
    "cosyvoice-v3-flash",
    "qwen-audio-3.0-tts-plus",
    "qwen-audio-3.0-tts-flash",
    "qwen-audio-3.1-tts-flash",
];
const VC_MODELS: &[&str] = &[
    "qwen3-tts-vc-2026-01-22",
    "qwen3-tts-vc-realtime-2026-01-15",
    "qwen3-tts-vc-realtime-2025-11-27",
];
const VD_MODELS: &[&str] = &[
    "qwen3-tts-vd-2026-01-26",
    "qwen3-tts-vd-realtime-2026-01-15",
    "qwen3-tts-vd-realtime-2025-12-16",
];
const QWEN_LANGS: &[&str] = &["zh", "en", "de", "it", "pt", "es", "ja", "ko", "fr", "ru"];

struct Err4(u16, String, String);

fn e400(code: &str, message: impl Into<String>) -> Err4 {
    Err4(400, code.to_owned(), message.into())
}

fn bad_param(message: impl Into<String>) -> Err4 {
    e400("InvalidParameter", message)
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) and `yyyyMMddHHmmssSSS` of now.
fn timestamps() -> (String, String) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs();
    let ms = d.subsec_millis();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil from days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02}"),
        format!("{year:04}{month:02}{day:02}{h:02}{m:02}{s:02}{ms:03}"),
    )
}

fn b64d(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()
}

/// Inspect a sample given as a data URI, as DashScope checks uploads; `qwen` selects Qwen VC's
/// codes.
fn inspect(uri: &str, qwen: bool) -> Result<(), Err4> {
    let Some(rest) = uri.strip_prefix("data:") else {
        return Ok(());
    };
    let Some((mime, data)) = rest.split_once(";base64,") else {
        return Err(bad_param("url error, please check url！"));
    };
    if qwen && !["audio/wav", "audio/mpeg", "audio/mp4"].contains(&mime) {
        return Err(e400(
            "BadRequest.UnsupportedFileFormat",
            "File format unsupported.",
        ));
    }
    let Some(bytes) = b64d(data) else {
        return Err(e400("Audio.DecoderError", "Decoder audio file failed."));
    };
    inspect_bytes(&bytes, qwen)
}

/// Inspect a sample's bytes (data URI or temporary upload).
fn inspect_bytes(bytes: &[u8], qwen: bool) -> Result<(), Err4> {
    if bytes.len() > 10 * 1024 * 1024 {
        return Err(Err4(
            430,
            "Audio.FileSizeExceed".into(),
            "File too large".into(),
        ));
    }
    let wav = bytes.len() >= 44 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WAVE";
    let mp3 = bytes.starts_with(b"ID3") || (bytes.len() > 1 && bytes[0] == 0xFF);
    let m4a = bytes.len() > 8 && &bytes[4..8] == b"ftyp";
    if !(wav || mp3 || m4a) {
        return Err(e400(
            "BadRequest.UnsupportedFileFormat",
            "File format unsupported.",
        ));
    }
    if !wav {
        return Ok(());
    }
    let channels = u16::from_le_bytes([bytes[22], bytes[23]]).max(1);
    let rate = u32::from_le_bytes([bytes[24], bytes[25], bytes[26], bytes[27]]);
    let bits = u16::from_le_bytes([bytes[34], bytes[35]]);
    let pcm = &bytes[44..];
    let seconds = pcm.len() as f64 / (f64::from(rate.max(1)) * f64::from(channels) * 2.0);
    if bits != 16 {
        return Err(e400(
            "BadRequest.UnsupportedFileFormat",
            "File format unsupported.",
        ));
    }
    if qwen {
        if rate < 24_000 {
            return Err(e400("Audio.AudioRateError", "File sample rate unsupported"));
        }
        if seconds > 60.0 {
            return Err(e400(
                "Audio.DurationLimitError",
                "Audio duration exceeds maximum allowed limit.",
            ));
        }
        if pcm.iter().all(|b| *b == 0) {
            return Err(e400("Audio.PreprocessError", "Audio preprocess error."));
        }
    } else {
        if rate < 16_000 {
            return Err(Err4(
                430,
                "Audio.AudioRateError".into(),
                "File sample rate unsupported".into(),
            ));
        }
        if pcm.iter().all(|b| *b == 0) {
            return Err(Err4(
                430,
                "Audio.AudioSilentError".into(),
                "Silent file unsupported.".into(),
            ));
        }
        if seconds < 5.0 {
            return Err(e400("Audio.AudioShortError", "valid audio too short!"));
        }
        if seconds > 60.0 {
            return Err(Err4(
                500,
                "InternalError".into(),
                "audio preprocess server error".into(),
            ));
        }
    }
    Ok(())
}

/// A preview: 1 s of the voice's tone in `fmt` at `rate`.
fn preview(name: &str, params: &Value, rates: &[u64], formats: &[&str]) -> Result<Value, Err4> {
    let rate = params
        .get("sample_rate")
        .and_then(Value::as_u64)
        .unwrap_or(24_000);
    if !rates.contains(&rate) {
        return Err(bad_param(format!("Unsupported sample_rate: {rate}")));
    }
    let fmt = params
        .get("response_format")
        .and_then(Value::as_str)
        .unwrap_or("wav");
    if !formats.contains(&fmt) {
        return Err(bad_param(format!("Unsupported response_format: {fmt}")));
    }
    let rate = rate as u32;
    let pcm = tone_pcm(custom_voice_tone(name), rate, 1, 1000.0);
    let bytes = match fmt {
        "pcm" => s16le(&pcm),
        "mp3" => encode_mp3(&pcm, rate, 1, 64_000),
        "wav" => {
            let data = s16le(&pcm);
            let mut out = wav_header(rate, 1, 36 + data.len() as u32, data.len() as u32);
            out.extend_from_slice(&data);
            out
        }
        _ => return Err(bad_param(format!("the test double cannot render {fmt}"))),
    };
    Ok(json!({
        "data": base64::engine::general_purpose::STANDARD.encode(bytes),
        "sample_rate": rate,
        "response_format": fmt,
    }))
}

fn s<'a>(input: &'a Value, key: &str) -> &'a str {
    input.get(key).and_then(Value::as_str).unwrap_or("")
}

fn paging(input: &Value) -> (usize, usize) {
    let index = input.get("page_index").and_then(Value::as_u64).unwrap_or(0) as usize;
    let size = input.get("page_size").and_then(Value::as_u64).unwrap_or(10) as usize;
    (index, size)
}

fn hex4() -> String {
    format!("{:04x}", rand::random::<u16>())
}

/// Route one call; `Ok(output, usage_count)`.
fn handle(
    st: &mut CustomState,
    surface: &str,
    body: &Value,
    oss_resolve: bool,
) -> Result<(Value, Option<u64>), Err4> {
    let input = &body["input"];
    let params = body.get("parameters").cloned().unwrap_or(Value::Null);
    let action = s(input, "action");
    let opts = st.options.clone();
    let live =
        |st: &CustomState, surface: &str| st.voices.iter().filter(|v| v.surface == surface).count();
    match (surface, action) {
        ("voice-enrollment", "create_voice") => {
            let model = s(input, "target_model");
            let prefix = s(input, "prefix");
            let url = s(input, "url");
            let prompt = s(input, "voice_prompt");
            let design = !prompt.is_empty();
            if design && !url.is_empty() {
                return Err(bad_param("url and voice_prompt are mutually exclusive"));
            }
            let models = if design { ENROLL_DESIGN } else { ENROLL_CLONE };
            if !models.contains(&model) {
                return Err(bad_param(format!("target_model {model} is not supported")));
            }
            if prefix.is_empty()
                || prefix.len() > 10
                || !prefix
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            {
                return Err(bad_param(
                    "prefix must be digits and lowercase letters, at most 10",
                ));
            }
            if live(st, surface) >= opts.quota {
                return Err(e400(
                    "Throttling.AllocationQuota",
                    format!("您当前的配额为{}", opts.quota),
                ));
            }
            let uid = uuid::Uuid::new_v4().simple().to_string();
            let (gmt, _) = timestamps();
            let mut out = json!({});
            let id = if design {
                let preview_text = s(input, "preview_text");
                if prompt.chars().count() > 500 {
                    return Err(bad_param("voice_prompt exceeds 500 characters"));
                }
                if preview_text.is_empty() || preview_text.chars().count() > 200 {
                    return Err(bad_param("preview_text must be 1..=200 characters"));
                }
                let id = format!("{model}-vd-{prefix}-{uid}");
                out["preview_audio"] = preview(
                    prefix,
                    &params,
                    &[16_000, 24_000, 48_000],
                    &["pcm", "wav", "mp3"],
                )?;
                out["target_model"] = json!(model);
                id
            } else {
                if url.is_empty() {
                    return Err(bad_param(INVALID_PARAMETER_MSG));
                }
                if url.starts_with("data:") {
                    if !opts.enrollment_data_uri {
                        return Err(Err4(
                            500,
                            "InternalError".into(),
                            "audio preprocess server error".into(),
                        ));
                    }
                    inspect(url, false)?;
                } else if let Some(key) = url.strip_prefix("oss://") {
                    if !oss_resolve {
                        return Err(bad_param("url error, please check url！"));
                    }
                    let Some(bytes) = st.uploads.get(key) else {
                        return Err(e400(
                            "BadRequest.InputDownloadFailed",
                            "Failed to download the input file.",
                        ));
                    };
                    inspect_bytes(bytes, false)?;
                } else if !["http://", "https://"].iter().any(|p| url.starts_with(p)) {
                    return Err(bad_param("url error, please check url！"));
                }
                format!("{model}-{prefix}-{uid}")
            };
            out["voice_id"] = json!(id);
            let polls = opts.deploying_polls;
            st.voices.push(DoubleVoice {
                id,
                surface: "voice-enrollment",
                target_model: model.to_owned(),
                design,
                name: prefix.to_owned(),
                status: if polls == 0 { "OK" } else { "DEPLOYING" },
                polls_left: polls,
                gmt,
                voice_prompt: prompt.to_owned(),
                preview_text: s(input, "preview_text").to_owned(),
                language: String::new(),
                resource_link: if design {
                    String::new()
                } else if url.starts_with("data:") {
                    "data:…".into()
                } else {
                    url.to_owned()
                },
            });
            Ok((out, Some(1)))
        }
        ("voice-enrollment", "list_voice") => {
            let prefix = s(input, "prefix");
            let (index, size) = paging(input);
            let items: Vec<Value> = st
                .voices
                .iter()
                .rev()
                .filter(|v| v.surface == "voice-enrollment")
                .filter(|v| prefix.is_empty() || v.name == prefix)
                .skip(index * size)
                .take(size)
                .map(|v| {
                    let mut item = json!({"voice_id": v.id, "gmt_create": v.gmt, "gmt_modified": v.gmt, "status": v.status});
                    if v.design {
                        item["voice_prompt"] = json!(v.voice_prompt);
                        item["preview_text"] = json!(v.preview_text);
                    }
                    item
                })
                .collect();
            Ok((json!({"voice_list": items}), Some(1)))
        }
        ("voice-enrollment", "query_voice" | "update_voice" | "delete_voice") => {
            let id = s(input, "voice_id");
            let Some(pos) = st
                .voices
                .iter()
                .position(|v| v.surface == "voice-enrollment" && v.id == id)
            else {
                return Err(e400(
                    "BadRequest.ResourceNotExist",
                    "The Required resource not exist.",
                ));
            };
            match action {
                "query_voice" => {
                    let v = &mut st.voices[pos];
                    let status = v.status;
                    if v.status == "DEPLOYING" {
                        if v.polls_left > 1 {
                            v.polls_left -= 1;
                        } else {
                            v.polls_left = 0;
                            v.status = if opts.end_undeployed {
                                "UNDEPLOYED"
                            } else {
                                "OK"
                            };
                        }
                    }
                    let mut out = json!({"gmt_create": v.gmt, "gmt_modified": v.gmt, "target_model": v.target_model, "status": status});
                    if v.design {
                        out["voice_id"] = json!(v.id);
                        out["voice_prompt"] = json!(v.voice_prompt);
                        out["preview_text"] = json!(v.preview_text);
                    } else {
                        out["resource_link"] = json!(v.resource_link);
                    }
                    Ok((out, Some(1)))
                }
                "update_voice" => {
                    if st.voices[pos].design {
                        return Err(bad_param(
                            "update_voice is not supported for designed voices",
                        ));
                    }
                    let v = &mut st.voices[pos];
                    v.status = "DEPLOYING";
                    v.polls_left = opts.deploying_polls.max(1);
                    Ok((json!({}), Some(1)))
                }
                _ => {
                    let v = st.voices.remove(pos);
                    st.deleted.push(v.id);
                    Ok((json!({}), Some(1)))
                }
            }
        }
        ("qwen-voice-enrollment" | "qwen-voice-design", "create") => {
            let design = surface == "qwen-voice-design";
            let model = s(input, "target_model");
            let name = s(input, "preferred_name");
            let models = if design { VD_MODELS } else { VC_MODELS };
            if !models.contains(&model) {
                return Err(bad_param(format!("target_model {model} is not supported")));
            }
            if name.is_empty()
                || name.len() > 16
                || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(bad_param("preferred_name must be [A-Za-z0-9_]{1,16}"));
            }
            let language = s(input, "language");
            if !language.is_empty() && !QWEN_LANGS.contains(&language) {
                return Err(bad_param(format!("Unsupported language: {language}")));
            }
            if live(st, surface) >= opts.quota {
                return Err(e400(
                    "Throttling.AllocationQuota",
                    "Maximum voice storage limit exceeded, please delete existing voices.",
                ));
            }
            let (gmt, stamp) = timestamps();
            let kind = if design { "vd" } else { "vc" };
            let id = format!("qwen-tts-{kind}-{name}-voice-{stamp}-{}", hex4());
            let mut out = json!({"voice": id, "target_model": model});
            let (prompt, text) = (s(input, "voice_prompt"), s(input, "preview_text"));
            if design {
                if prompt.is_empty() || prompt.chars().count() > 2048 {
                    return Err(bad_param("voice_prompt must be 1..=2048 characters"));
                }
                if text.is_empty() || text.chars().count() > 1024 {
                    return Err(bad_param("preview_text must be 1..=1024 characters"));
                }
                out["preview_audio"] = preview(
                    name,
                    &params,
                    &[8000, 16_000, 24_000, 48_000],
                    &["pcm", "wav", "mp3", "opus"],
                )?;
            } else {
                let Some(data) = input
                    .get("audio")
                    .and_then(|a| a.get("data"))
                    .and_then(Value::as_str)
                else {
                    return Err(bad_param(INVALID_PARAMETER_MSG));
                };
                if data.starts_with("data:") {
                    inspect(data, true)?;
                } else if !(data.starts_with("http://") || data.starts_with("https://")) {
                    return Err(e400(
                        "BadRequest.InputDownloadFailed",
                        "Failed to download the input file.",
                    ));
                }
                if opts.qwen_fallback_mode {
                    out["fallback_mode"] = json!(true);
                    out["fallback_reason"] = json!("no_valid_asr_segments");
                }
            }
            st.voices.push(DoubleVoice {
                id,
                surface: if design {
                    "qwen-voice-design"
                } else {
                    "qwen-voice-enrollment"
                },
                target_model: model.to_owned(),
                design,
                name: name.to_owned(),
                status: "OK",
                polls_left: 0,
                gmt,
                voice_prompt: prompt.to_owned(),
                preview_text: text.to_owned(),
                language: if language.is_empty() {
                    "zh".into()
                } else {
                    language.to_owned()
                },
                resource_link: String::new(),
            });
            Ok((out, Some(1)))
        }
        ("qwen-voice-enrollment" | "qwen-voice-design", "list") => {
            let (index, size) = paging(input);
            let all: Vec<&DoubleVoice> = st
                .voices
                .iter()
                .rev()
                .filter(|v| v.surface == surface)
                .collect();
            let items: Vec<Value> = all
                .iter()
                .skip(index * size)
                .take(size)
                .map(|v| {
                    let mut item = json!({"voice": v.id, "gmt_create": v.gmt, "gmt_modified": v.gmt, "language": v.language, "target_model": v.target_model});
                    if v.design {
                        item["voice_prompt"] = json!(v.voice_prompt);
                        item["preview_text"] = json!(v.preview_text);
                    }
                    item
                })
                .collect();
            Ok((
                json!({"page_index": index, "page_size": size, "total_count": all.len(), "voice_list": items}),
                Some(0),
            ))
        }
        ("qwen-voice-design", "query")
        | ("qwen-voice-enrollment" | "qwen-voice-design", "delete") => {
            let id = s(input, "voice");
            let Some(pos) = st
                .voices
                .iter()
                .position(|v| v.surface == surface && v.id == id)
            else {
                return Err(if surface == "qwen-voice-design" {
                    e400("VoiceNotFound", format!("Voice not found: {id}"))
                } else {
                    e400(
                        "BadRequest.VoiceNotFound",
                        format!("Voice '{id}' not found."),
                    )
                });
            };
            if action == "query" {
                let v = &st.voices[pos];
                return Ok((
                    json!({"gmt_create": v.gmt, "gmt_modified": v.gmt, "language": v.language, "preview_text": v.preview_text, "target_model": v.target_model, "voice": v.id, "voice_prompt": v.voice_prompt}),
                    None,
                ));
            }
            let v = st.voices.remove(pos);
            st.deleted.push(v.id.clone());
            Ok((json!({"voice": v.id}), Some(0)))
        }
        _ => Err(bad_param(format!("Unsupported action: {action}"))),
    }
}

/// The axum handler of the customization endpoint.
pub(super) async fn customization(State(inner): State<Arc<Inner>>, incoming: Incoming) -> Response {
    let (model, rid) = (incoming.model.as_str(), incoming.request_id.as_str());
    let fault = if incoming.authorized {
        take_surface_fault(&inner, model)
    } else {
        None
    };
    let oss_resolve = incoming
        .header("x-dashscope-ossresourceresolve")
        .is_some_and(|v| v.eq_ignore_ascii_case("enable"));
    let (status, reply) = {
        let mut state = inner.state();
        let answer = if !incoming.authorized {
            Err(Err4(
                401,
                "InvalidApiKey".into(),
                "Invalid API-key provided.".into(),
            ))
        } else if let Some(FaultKind::HttpError {
            status,
            code,
            message,
        }) = &fault
        {
            Err(Err4(*status, code.clone(), message.clone()))
        } else {
            match incoming.json.as_ref().filter(|b| b.is_object()) {
                None => Err(bad_param(INVALID_PARAMETER_MSG)),
                Some(_) if model.is_empty() => Err(e400(
                    "BadRequest.EmptyModel",
                    "Required parameter 'model' missing from request.",
                )),
                Some(b) if !b.get("input").is_some_and(Value::is_object) => Err(e400(
                    "BadRequest.EmptyInput",
                    "Required input parameter missing from request.",
                )),
                Some(_)
                    if ![
                        "voice-enrollment",
                        "qwen-voice-enrollment",
                        "qwen-voice-design",
                    ]
                    .contains(&model) =>
                {
                    Err(Err4(
                        state.custom.options.unknown_model_status,
                        "InvalidParameter".into(),
                        "Model not exist.".into(),
                    ))
                }
                Some(b) => handle(&mut state.custom, model, b, oss_resolve),
            }
        };
        let (status, reply) = match answer {
            Ok((output, count)) => {
                let usage = count.map_or(json!({}), |c| json!({"count": c}));
                (
                    200,
                    json!({"output": output, "usage": usage, "request_id": rid}),
                )
            }
            Err(Err4(status, code, message)) => (status, error_body(&code, &message, rid)),
        };
        match &fault {
            Some(FaultKind::OkWithCode { code, message }) => (200, error_body(code, message, rid)),
            _ => (status, reply),
        }
    };
    inner.log_answered(LoggedRequest {
        status,
        fault: fault.clone(),
        frames_sent: 1,
        first_frame_at: None,
        completed: true,
        ended_at: Some(Instant::now()),
        ..incoming.log_entry()
    });
    // `SlowFirstByte`: the call took effect (a create stored its voice), and the answer comes
    // only after the delay (a client can be killed while it waits).
    if let Some(FaultKind::SlowFirstByte { delay }) = &fault {
        tokio::time::sleep(*delay).await;
    }
    // `DropAfter`: the call took effect (a create stored its voice), but the connection is cut
    // before the answer's body: the client never learns the result.
    let body = if matches!(fault, Some(FaultKind::DropAfter { .. })) {
        Body::from_stream(futures::stream::once(async {
            Err::<Bytes, std::io::Error>(std::io::Error::other("connection cut by the fault"))
        }))
    } else {
        Body::from(reply.to_string())
    };
    let mut response = Response::new(body);
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(rid) {
        h.insert("x-request-id", v);
    }
    response
}

/// The synthesis side: `Err` when a created (or deleted) custom voice is used
/// wrongly, else the tone to play for it (`None`: not a custom voice the double made).
pub(super) fn synthesis_voice(
    inner: &Inner,
    model: &str,
    voice: &str,
) -> Result<Option<f32>, Rejection> {
    let state = inner.state();
    let cosy = model.starts_with("cosyvoice-") || model.starts_with("qwen-audio-");
    let wrong = || {
        if model.starts_with("qwen-audio-") {
            bad_voice("[cosyvoice:]Engine error [411]: TTS speak operation failed")
        } else if cosy {
            bad_voice("[cosyvoice:]Engine return error code: 418")
        } else {
            bad_voice("Invalid voice specified")
        }
    };
    if state.custom.deleted.iter().any(|d| d == voice) {
        return Err(if cosy {
            Rejection {
                code: "InternalError",
                message: "Remote cancelled grpc stream.".to_owned(),
                voice: true,
            }
        } else {
            wrong()
        });
    }
    let Some(v) = state.custom.voices.iter().find(|v| v.id == voice) else {
        return Ok(None);
    };
    if v.target_model != model || (v.surface == "voice-enrollment" && v.status != "OK") {
        return Err(wrong());
    }
    Ok(Some(custom_voice_tone(&v.name)))
}

/// The first fault scripted for exactly this surface (`Fault::for_model("voice-enrollment")`),
/// consumed if counted. Faults without a model are left to the synthesis endpoints.
fn take_surface_fault(inner: &Inner, surface: &str) -> Option<FaultKind> {
    inner.take_fault(|f| f.model_prefix.as_deref() == Some(surface))
}

/// `GET /api/v1/uploads?action=getPolicy&model=…` (PY-OSS): a policy for one upload.
pub(super) async fn upload_policy(State(inner): State<Arc<Inner>>, incoming: Incoming) -> Response {
    let rid = &incoming.request_id;
    let query = incoming.uri.query().unwrap_or("");
    let model = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("model="))
        .unwrap_or("")
        .to_owned();
    let (status, body) = if !incoming.authorized {
        (
            401,
            error_body("InvalidApiKey", "Invalid API-key provided.", rid),
        )
    } else if !query.split('&').any(|kv| kv == "action=getPolicy") || model.is_empty() {
        (
            400,
            error_body("InvalidParameter", INVALID_PARAMETER_MSG, rid),
        )
    } else {
        let dir = format!("dashscope-instant/{}/{}", rand::random::<u32>(), model);
        (
            200,
            json!({"request_id": rid, "data": {
                "policy": "eyJleHBpcmF0aW9uIjoiMjAyNi0xMi0wN1QwMzowMDowMFoifQ==",
                "signature": "c2lnbmF0dXJl",
                "upload_dir": dir,
                "upload_host": format!("http://{}/oss-upload", inner.addr),
                "expire_in_seconds": 300,
                "max_file_size_mb": 100,
                "capacity_limit_mb": 999_999_999,
                "oss_access_key_id": "LTAI-fake",
                "x_oss_object_acl": "private",
                "x_oss_forbid_overwrite": "true",
            }}),
        )
    };
    inner.log_answered(LoggedRequest {
        model,
        status,
        frames_sent: 1,
        first_frame_at: None,
        completed: true,
        ended_at: Some(Instant::now()),
        ..incoming.log_entry()
    });
    (
        StatusCode::from_u16(status).unwrap(),
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// `POST /oss-upload`: the OSS form upload (multipart/form-data, `file` last).
pub(super) async fn oss_upload(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let boundary = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split("boundary=").nth(1))
        .map(|b| b.trim_matches('"').to_owned());
    let Some(boundary) = boundary else {
        return (StatusCode::BAD_REQUEST, "no multipart boundary").into_response();
    };
    let delim = format!("--{boundary}");
    let mut fields = HashMap::new();
    let mut file = None;
    let mut parts = Vec::new();
    let mut rest: &[u8] = &body;
    while let Some(pos) = find(rest, delim.as_bytes()) {
        parts.push(&rest[..pos]);
        rest = &rest[pos + delim.len()..];
    }
    for part in parts.into_iter().skip(1) {
        let part = part.strip_prefix(b"\r\n").unwrap_or(part);
        let part = part.strip_suffix(b"\r\n").unwrap_or(part);
        let Some(split) = find(part, b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&part[..split]).into_owned();
        let value = &part[split + 4..];
        let Some(name) = head
            .split("name=\"")
            .nth(1)
            .and_then(|n| n.split('"').next())
        else {
            continue;
        };
        if name == "file" {
            file = Some(value.to_vec());
        } else {
            fields.insert(name.to_owned(), String::from_utf8_lossy(value).into_owned());
        }
    }
    let required = [
        "OSSAccessKeyId",
        "Signature",
        "policy",
        "key",
        "success_action_status",
    ];
    let (Some(file), true) = (file, required.iter().all(|k| fields.contains_key(*k))) else {
        return (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "application/xml")],
            "<Error><Code>InvalidArgument</Code></Error>",
        )
            .into_response();
    };
    let mut state = inner.state();
    state.custom.uploads.insert(fields["key"].clone(), file);
    state.custom.upload_forms.push(fields);
    StatusCode::OK.into_response()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
