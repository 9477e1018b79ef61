//! The custom-voice calls of DashScope: one synchronous JSON request/response,
//! `POST {base}/services/audio/tts/customization`, the surface named by the body's `model` and
//! the operation by `input.action` (the temporary upload a clone sample may need is in
//! `upload`).
//!
//! It owns the wire side of `crate::voices` (in that module's vocabulary: [`Surface`],
//! [`VoiceStatus`]): the request bodies of create / query / list / delete, the reading of their
//! answers, the upstream's ids and codes. An answer is an error when its status is not 2xx
//! **or** its body carries a non-empty top-level `code`. Creates are never retried (a duplicate
//! consumes quota); list/query/delete are retried on 429, 5xx and transport errors like
//! synthesis requests. It must not keep state or decide what a failure means for a client.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{Client, family, piece::backoff};
use crate::{
    engine::EngineError,
    voices::{
        VoiceStatus,
        surface::{ENROLLMENT_CLONE_MODELS, ENROLLMENT_DESIGN_MODELS, Surface},
    },
};

/// Path of the endpoint under the base URL.
pub const CUSTOMIZATION_PATH: &str = "/services/audio/tts/customization";
/// Largest response body read (design previews are inline base64).
const MAX_BODY: usize = 32 << 20;
/// Timeout of one design create (upstream takes 10–20 s).
const DESIGN_TIMEOUT: Duration = Duration::from_secs(90);
/// Timeout of other calls.
const CALL_TIMEOUT: Duration = Duration::from_secs(45);
/// Page size of upstream listings, and most pages read.
const LIST_PAGE: u64 = 100;
const LIST_PAGES: u64 = 10;
/// How long a search for a voice whose create answer was lost may take.
const ADOPT_TIMEOUT: Duration = Duration::from_secs(15);

/// A voice to create upstream.
#[derive(Clone, Copy, Debug)]
pub struct NewVoice<'a> {
    /// The surface that makes it.
    pub surface: Surface,
    /// The one model it will work with.
    pub target_model: &'a str,
    /// The requested name (`prefix` / `preferred_name`), already checked.
    pub name: &'a str,
    /// Its language, or empty.
    pub language: &'a str,
    /// What it is made from.
    pub source: NewVoiceSource<'a>,
}

/// What a new voice is made from.
#[derive(Clone, Copy, Debug)]
pub enum NewVoiceSource<'a> {
    /// A description (design).
    Design {
        /// The voice prompt.
        description: &'a str,
        /// Text of the preview upstream speaks with the new voice.
        preview_text: &'a str,
    },
    /// A sample (clone).
    Clone {
        /// Where upstream finds the sample.
        audio: CloneAudio<'a>,
        /// What the sample says (Qwen3-TTS-VC only), or empty.
        transcript: &'a str,
    },
}

/// How a clone's sample reaches upstream.
#[derive(Clone, Copy, Debug)]
pub enum CloneAudio<'a> {
    /// The caller's http(s) URL, or the sample as a base64 data URI.
    Inline(&'a str),
    /// An `oss://` temporary upload ([`Client::upload_temporary`]), which upstream resolves
    /// when the request says so.
    Uploaded(&'a str),
}

/// What a create answered.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Created {
    /// Upstream's id of the voice, what synthesis takes.
    pub voice_id: String,
    /// A designed voice's preview (WAV), empty when there is none.
    pub preview_wav: Vec<u8>,
    /// Set when upstream made the voice in fallback mode: its reason.
    pub fallback_reason: Option<String>,
}

/// One voice of an upstream listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamVoice {
    /// Upstream's id.
    pub id: String,
    /// The model it works with.
    pub target_model: String,
    /// Its state.
    pub status: VoiceStatus,
}

/// One call of the customization endpoint.
#[derive(Debug)]
struct Call {
    surface: Surface,
    input: Value,
    parameters: Option<Value>,
    /// Bounds each try.
    timeout: Duration,
    /// Bounds the whole call, retries included.
    deadline: Option<Instant>,
    /// The action may be sent again (list/query/delete; never a create).
    idempotent: bool,
    /// Send `X-DashScope-OssResourceResolve: enable` (the input names an `oss://` upload).
    oss_resolve: bool,
}

impl Call {
    /// A call that may be retried, within `deadline`.
    fn idempotent(surface: Surface, input: Value, deadline: Instant) -> Self {
        Self {
            surface,
            input,
            parameters: None,
            timeout: CALL_TIMEOUT,
            deadline: Some(deadline),
            idempotent: true,
            oss_resolve: false,
        }
    }
}

impl Client {
    /// Create a voice. Never retried: a duplicate create consumes quota.
    pub async fn create_voice(
        &self,
        voice: &NewVoice<'_>,
        deadline: Instant,
    ) -> Result<Created, EngineError> {
        let surface = voice.surface;
        let mut input = create_input(surface, voice.target_model, voice.name, voice.language);
        let mut call = Call {
            surface,
            input: Value::Null,
            parameters: None,
            timeout: CALL_TIMEOUT,
            deadline: Some(deadline),
            idempotent: false,
            oss_resolve: false,
        };
        match voice.source {
            NewVoiceSource::Design {
                description,
                preview_text,
            } => {
                input["voice_prompt"] = json!(description);
                input["preview_text"] = json!(preview_text);
                call.parameters = Some(json!({"sample_rate": 24000, "response_format": "wav"}));
                call.timeout = DESIGN_TIMEOUT;
            }
            NewVoiceSource::Clone { audio, transcript } => {
                let audio = match audio {
                    CloneAudio::Inline(a) => a,
                    CloneAudio::Uploaded(a) => {
                        call.oss_resolve = true;
                        a
                    }
                };
                match surface {
                    Surface::Enrollment => input["url"] = json!(audio),
                    Surface::QwenClone | Surface::QwenDesign => {
                        input["audio"] = json!({"data": audio});
                    }
                }
                if !transcript.is_empty() && surface == Surface::QwenClone {
                    input["text"] = json!(transcript);
                }
            }
        }
        call.input = input;
        let body = self.call(call).await?;
        created(&body["output"])
    }

    /// After a create whose answer was lost (connection cut, timeout): the newest voice
    /// upstream that matches `voice` (surface, target model, name in the id's place) and that
    /// `known` does not know, if any. Never re-creates: a duplicate costs quota.
    pub async fn find_lost_create(
        &self,
        voice: &NewVoice<'_>,
        known: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + ADOPT_TIMEOUT;
        let (name, model) = (voice.name, voice.target_model);
        let prefix = match (voice.surface, voice.source) {
            (Surface::Enrollment, NewVoiceSource::Design { .. }) => format!("{model}-vd-{name}-"),
            (Surface::Enrollment, NewVoiceSource::Clone { .. }) => format!("{model}-{name}-"),
            (Surface::QwenClone, _) => format!("qwen-tts-vc-{name}-voice-"),
            (Surface::QwenDesign, _) => format!("qwen-tts-vd-{name}-voice-"),
        };
        match self.list_voices(voice.surface, deadline).await {
            Ok(items) => items
                .into_iter()
                .find(|v| v.target_model == model && v.id.starts_with(&prefix) && !known(&v.id))
                .map(|v| v.id),
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "cannot list upstream to find a voice whose create answer was lost");
                None
            }
        }
    }

    /// The state of a `voice-enrollment` voice.
    pub async fn query_voice(
        &self,
        id: &str,
        deadline: Instant,
    ) -> Result<VoiceStatus, EngineError> {
        let body = self
            .call(Call::idempotent(
                Surface::Enrollment,
                json!({"action": "query_voice", "voice_id": id}),
                deadline,
            ))
            .await?;
        Ok(status_of(body["output"]["status"].as_str()))
    }

    /// Delete a voice upstream: `Ok(true)` when upstream no longer had it.
    pub async fn delete_voice(
        &self,
        surface: Surface,
        id: &str,
        deadline: Instant,
    ) -> Result<bool, EngineError> {
        let input = match surface {
            Surface::Enrollment => json!({"action": "delete_voice", "voice_id": id}),
            Surface::QwenClone | Surface::QwenDesign => json!({"action": "delete", "voice": id}),
        };
        match self.call(Call::idempotent(surface, input, deadline)).await {
            Ok(_) => Ok(false),
            Err(EngineError::Api { code: Some(c), .. })
                if c.ends_with("VoiceNotFound") || c == "BadRequest.ResourceNotExist" =>
            {
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    /// One surface's voices upstream (at most ten pages of a hundred).
    pub async fn list_voices(
        &self,
        surface: Surface,
        deadline: Instant,
    ) -> Result<Vec<UpstreamVoice>, EngineError> {
        let mut out = Vec::new();
        for page in 0..LIST_PAGES {
            let action = match surface {
                Surface::Enrollment => "list_voice",
                Surface::QwenClone | Surface::QwenDesign => "list",
            };
            let input = json!({"action": action, "page_index": page, "page_size": LIST_PAGE});
            let body = self
                .call(Call::idempotent(surface, input, deadline))
                .await?;
            let items = body["output"]["voice_list"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            out.extend(items.iter().filter_map(|item| listed(surface, item)));
            let n = items.len() as u64;
            let total = body["output"]["total_count"].as_u64();
            if n < LIST_PAGE || total.is_some_and(|t| (page + 1) * LIST_PAGE >= t) {
                break;
            }
        }
        Ok(out)
    }

    /// One call of the customization endpoint; the whole JSON body on success.
    async fn call(&self, call: Call) -> Result<Value, EngineError> {
        let mut body = json!({"model": call.surface.model(), "input": call.input});
        if let Some(p) = call.parameters {
            body["parameters"] = p;
        }
        let body = serde_json::to_vec(&body).map_err(|e| EngineError::Protocol(e.to_string()))?;
        let tuning = self.tuning();
        let mut attempt = 1;
        loop {
            let result = self
                .call_once(&body, call.timeout, call.deadline, call.oss_resolve)
                .await;
            let error = match result {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let delay = backoff(tuning, attempt);
            let in_time = call.deadline.is_none_or(|d| Instant::now() + delay < d);
            if !(call.idempotent
                && error.is_retryable()
                && attempt < tuning.max_attempts
                && in_time)
            {
                return Err(error);
            }
            tracing::info!(
                surface = call.surface.model(),
                attempt,
                error = %crate::error::chain(&error),
                "customization call failed; retrying"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    async fn call_once(
        &self,
        body: &[u8],
        timeout: Duration,
        deadline: Option<Instant>,
        oss_resolve: bool,
    ) -> Result<Value, EngineError> {
        let mut request = self
            .post(CUSTOMIZATION_PATH)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "application/json")
            .body(body.to_vec());
        if oss_resolve {
            request = request.header("X-DashScope-OssResourceResolve", "enable");
        }
        let mut until = Instant::now() + timeout;
        if let Some(d) = deadline {
            until = until.min(d);
        }
        read_json(request, until, timeout).await
    }
}

/// A create refused in a way a temporary upload may cure: a server error (HTTP 5xx or
/// `InternalError`) or a `url` complaint. Not the `Audio.*` verdicts: they judge the audio,
/// which another way of handing it over does not change.
pub fn data_uri_refused(e: &EngineError) -> bool {
    match e {
        EngineError::Api {
            status,
            code,
            message,
            ..
        } => {
            let code = code.as_deref().unwrap_or("");
            !code.starts_with("Audio.")
                && (*status >= 500
                    || code == "InternalError"
                    || (code == "InvalidParameter" && message.contains("url")))
        }
        _ => false,
    }
}

/// The fields every create request of `surface` carries: the action, the target model, the
/// voice's name (`prefix` for voice-enrollment, `preferred_name` for the Qwen surfaces) and,
/// when given, the language (`language_hints` list, or `language`).
fn create_input(surface: Surface, model: &str, name: &str, language: &str) -> Value {
    let mut input = match surface {
        Surface::Enrollment => {
            json!({"action": "create_voice", "target_model": model, "prefix": name})
        }
        Surface::QwenClone | Surface::QwenDesign => {
            json!({"action": "create", "target_model": model, "preferred_name": name})
        }
    };
    if !language.is_empty() {
        match surface {
            Surface::Enrollment => input["language_hints"] = json!([language]),
            Surface::QwenClone | Surface::QwenDesign => input["language"] = json!(language),
        }
    }
    input
}

/// The `output` of a create answer.
fn created(output: &Value) -> Result<Created, EngineError> {
    let voice_id = output
        .get("voice_id")
        .or_else(|| output.get("voice"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| EngineError::Protocol("the create answer has no voice id".to_owned()))?
        .to_owned();
    let preview_wav = match output.get("preview_audio").and_then(|p| p.get("data")) {
        Some(Value::String(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| EngineError::Protocol(format!("preview_audio.data is not base64: {e}")))?,
        _ => Vec::new(),
    };
    let fallback_reason = (output.get("fallback_mode").and_then(Value::as_bool) == Some(true))
        .then(|| {
            output
                .get("fallback_reason")
                .and_then(Value::as_str)
                .unwrap_or("no reason given")
                .to_owned()
        });
    Ok(Created {
        voice_id,
        preview_wav,
        fallback_reason,
    })
}

/// herald's state for upstream's `status` field.
fn status_of(s: Option<&str>) -> VoiceStatus {
    match s {
        Some("OK") => VoiceStatus::Ready,
        Some("UNDEPLOYED") => VoiceStatus::Failed,
        _ => VoiceStatus::Deploying,
    }
}

/// One item of a listing; `None` when it has no id, or no model herald can tell.
fn listed(surface: Surface, item: &Value) -> Option<UpstreamVoice> {
    let id = item
        .get("voice_id")
        .or_else(|| item.get("voice"))
        .and_then(Value::as_str)?;
    let target_model = item
        .get("target_model")
        .and_then(Value::as_str)
        .or_else(|| model_of_id(id))?
        .to_owned();
    let status = match surface {
        Surface::Enrollment => status_of(item["status"].as_str()),
        Surface::QwenClone | Surface::QwenDesign => VoiceStatus::Ready,
    };
    Some(UpstreamVoice {
        id: id.to_owned(),
        target_model,
        status,
    })
}

/// The model of an upstream `voice-enrollment` id (`{target_model}-…`), longest match.
fn model_of_id(id: &str) -> Option<&'static str> {
    ENROLLMENT_CLONE_MODELS
        .iter()
        .chain(ENROLLMENT_DESIGN_MODELS)
        .filter(|m| id.starts_with(&format!("{m}-")))
        .max_by_key(|m| m.len())
        .copied()
}

pub(super) fn timed_out(timeout: Duration) -> EngineError {
    EngineError::Transport(Box::new(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no complete answer from upstream within {timeout:?}"),
    )))
}

/// Send `request` and read its JSON answer; an error when the status is not 2xx or the body
/// carries a non-empty `code`.
pub(super) async fn read_json(
    request: reqwest::RequestBuilder,
    until: Instant,
    timeout: Duration,
) -> Result<Value, EngineError> {
    let timed_out = || timed_out(timeout);
    let mut response = tokio::time::timeout_at(until, request.send())
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| EngineError::Transport(Box::new(e.without_url())))?;
    let status = response.status().as_u16();
    let header_request_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut bytes = Vec::new();
    loop {
        let chunk = tokio::time::timeout_at(until, response.chunk())
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| EngineError::Transport(Box::new(e.without_url())))?;
        let Some(chunk) = chunk else { break };
        if bytes.len() + chunk.len() > MAX_BODY {
            return Err(EngineError::Protocol(
                "customization response body too large".to_owned(),
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
    let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
    if let Some(v) = &parsed
        && let Some(EngineError::Api {
            status: s,
            code,
            message,
            request_id,
        }) = family::error_in(v, status, false)
    {
        return Err(EngineError::Api {
            status: s,
            code,
            message,
            request_id: request_id.or(header_request_id),
        });
    }
    if !(200..300).contains(&status) {
        return Err(EngineError::Api {
            status,
            code: None,
            message: format!("HTTP {status} without a DashScope error body"),
            request_id: header_request_id,
        });
    }
    match parsed {
        Some(v @ Value::Object(_)) => Ok(v),
        _ => Err(EngineError::Protocol(
            "customization response body is not a JSON object".to_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_inputs_name_the_voice_the_surfaces_way() {
        let e = create_input(Surface::Enrollment, "cosyvoice-v3-flash", "kiosk", "zh");
        assert_eq!(
            e,
            json!({"action": "create_voice", "target_model": "cosyvoice-v3-flash",
                   "prefix": "kiosk", "language_hints": ["zh"]})
        );
        let q = create_input(Surface::QwenClone, "qwen3-tts-vc-2026-01-22", "Kiosk_1", "");
        assert_eq!(
            q,
            json!({"action": "create", "target_model": "qwen3-tts-vc-2026-01-22",
                   "preferred_name": "Kiosk_1"})
        );
        let d = create_input(Surface::QwenDesign, "qwen3-tts-vd-2026-01-26", "x", "en");
        assert_eq!(d["language"], "en");
    }

    #[test]
    fn create_answers_are_read() {
        let c = created(&json!({"voice_id": "v-1"})).unwrap();
        assert_eq!(
            c,
            Created {
                voice_id: "v-1".to_owned(),
                ..Created::default()
            }
        );
        let c = created(
            &json!({"voice": "q-1", "preview_audio": {"data": "UklGRg=="},
            "fallback_mode": true}),
        )
        .unwrap();
        assert_eq!(c.voice_id, "q-1");
        assert_eq!(c.preview_wav, b"RIFF");
        assert_eq!(c.fallback_reason.as_deref(), Some("no reason given"));
        let e = created(&json!({"voice_id": ""})).unwrap_err();
        assert!(matches!(e, EngineError::Protocol(m) if m.contains("no voice id")));
        let e = created(&json!({"voice_id": "v", "preview_audio": {"data": "@@"}})).unwrap_err();
        assert!(matches!(e, EngineError::Protocol(m) if m.contains("not base64")));
    }

    #[test]
    fn upstream_states_and_listings_are_read() {
        assert_eq!(status_of(Some("OK")), VoiceStatus::Ready);
        assert_eq!(status_of(Some("UNDEPLOYED")), VoiceStatus::Failed);
        assert_eq!(status_of(Some("DEPLOYING")), VoiceStatus::Deploying);
        assert_eq!(status_of(None), VoiceStatus::Deploying);
        let item = json!({"voice_id": "cosyvoice-v3.5-flash-kiosk-abc", "status": "OK"});
        assert_eq!(
            listed(Surface::Enrollment, &item),
            Some(UpstreamVoice {
                id: "cosyvoice-v3.5-flash-kiosk-abc".to_owned(),
                target_model: "cosyvoice-v3.5-flash".to_owned(),
                status: VoiceStatus::Ready,
            }),
            "the longest model that prefixes the id"
        );
        let item =
            json!({"voice": "qwen-tts-vc-x-voice-1", "target_model": "qwen3-tts-vc-2026-01-22"});
        assert_eq!(
            listed(Surface::QwenClone, &item).map(|v| v.status),
            Some(VoiceStatus::Ready)
        );
        assert_eq!(
            listed(Surface::Enrollment, &json!({"voice_id": "other-1"})),
            None
        );
    }

    #[test]
    fn only_server_errors_and_url_complaints_call_for_an_upload() {
        let api = |status, code: &str, message: &str| EngineError::Api {
            status,
            code: Some(code.to_owned()),
            message: message.to_owned(),
            request_id: None,
        };
        assert!(data_uri_refused(&api(500, "InternalError", "x")));
        assert!(data_uri_refused(&api(400, "InvalidParameter", "bad url")));
        assert!(!data_uri_refused(&api(
            400,
            "InvalidParameter",
            "bad prefix"
        )));
        assert!(!data_uri_refused(&api(500, "Audio.DecodeError", "x")));
        assert!(!data_uri_refused(&EngineError::Truncated));
    }
}
