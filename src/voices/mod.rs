//! Custom voices: cloning and design through DashScope's customization endpoint
//! (dashscope-custom-voices.md), and herald's registry of the voices it created.
//!
//! - [`Surface`]: which of the three management surfaces serves a target model.
//! - [`sample`]: local checks and conversion of a clone sample before upload.
//! - [`registry`]: the on-disk record (state directory, atomic writes).
//! - [`Manager`]: CreateVoice / GetVoice / DeleteVoice, the ListVoices merge, and the check a
//!   Synthesize with a custom voice passes before any upstream call.

pub mod registry;
pub mod sample;

use std::{path::PathBuf, sync::Arc, time::Duration};

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::time::Instant;
use tonic::Status;

use self::registry::{Record, Registry, now_ms};
use crate::{
    engine::{EngineError, dashscope},
    pb,
    service::status::engine_status,
};

/// Settings of the custom-voice support (`[voices]`).
#[derive(Clone, Debug)]
pub struct Settings {
    /// The registry's directory; `None`: no state directory could be found.
    pub directory: Option<PathBuf>,
    /// First wait between two status polls.
    pub poll_initial: Duration,
    /// Longest wait between two status polls.
    pub poll_max: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            directory: None,
            poll_initial: Duration::from_secs(1),
            poll_max: Duration::from_secs(10),
        }
    }
}

/// CosyVoice / Qwen-Audio-TTS clone targets (`voice-enrollment`, §3.1).
pub const ENROLLMENT_CLONE_MODELS: &[&str] = &[
    "cosyvoice-v3.5-plus",
    "cosyvoice-v3.5-flash",
    "cosyvoice-v3-plus",
    "cosyvoice-v3-flash",
    "cosyvoice-v2",
    "qwen-audio-3.0-tts-plus",
    "qwen-audio-3.0-tts-flash",
];
/// CosyVoice / Qwen-Audio-TTS design targets (`voice-enrollment`, §3.2).
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
/// Timeout of one design create (upstream takes 10–20 s, §5.1).
const DESIGN_TIMEOUT: Duration = Duration::from_secs(90);
/// Timeout of other calls.
const CALL_TIMEOUT: Duration = Duration::from_secs(45);
/// Longest URL accepted as a clone source.
pub const MAX_URL_CHARS: usize = 2048;
/// Longest transcript.
pub const MAX_TRANSCRIPT_CHARS: usize = 1000;
/// Page size of upstream listings, and most pages read.
const LIST_PAGE: u64 = 100;
const LIST_PAGES: u64 = 10;

/// A DashScope management surface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Surface {
    /// `voice-enrollment`: CosyVoice and Qwen-Audio-TTS, clones and designs; status polling.
    Enrollment,
    /// `qwen-voice-enrollment`: Qwen3-TTS-VC clones.
    QwenClone,
    /// `qwen-voice-design`: Qwen3-TTS-VD designs.
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

    /// The surface that makes `kind` voices for `target_model`, or INVALID_ARGUMENT listing
    /// the models that can.
    pub fn route(target_model: &str, design: bool) -> Result<Self, Status> {
        let (enroll, qwen, surface, what) = if design {
            (
                ENROLLMENT_DESIGN_MODELS,
                QWEN_DESIGN_MODELS,
                Self::QwenDesign,
                "design",
            )
        } else {
            (
                ENROLLMENT_CLONE_MODELS,
                QWEN_CLONE_MODELS,
                Self::QwenClone,
                "clone",
            )
        };
        if enroll.contains(&target_model) {
            return Ok(Self::Enrollment);
        }
        if qwen.contains(&target_model) {
            return Ok(surface);
        }
        if target_model.is_empty() {
            return Err(invalid("target_model: required"));
        }
        let all: Vec<&str> = enroll.iter().chain(qwen).copied().collect();
        Err(invalid(format!(
            "target_model: {:?} cannot {what} voices; models that can: {}",
            truncate(target_model, 64),
            all.join(", ")
        )))
    }
}

/// The custom-voice service state: the registry and the upstream client.
#[derive(Debug)]
pub struct Manager {
    registry: Registry,
    client: Option<Arc<dashscope::Client>>,
    settings: Settings,
}

fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message)
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// The status of an upstream customization error: the surface's own codes first (quota full
/// → RESOURCE_EXHAUSTED; a rejected sample → INVALID_ARGUMENT with upstream's message), then
/// design.md's table.
pub fn upstream_status(error: &EngineError) -> Status {
    if let EngineError::Api {
        status,
        code: Some(code),
        message,
        request_id,
    } = error
    {
        let id = request_id
            .as_deref()
            .map(|r| format!(", request_id {r}"))
            .unwrap_or_default();
        let cause = format!("HTTP {status}, code {code}{id}");
        if code == "Throttling.AllocationQuota" {
            return Status::resource_exhausted(format!(
                "upstream's custom-voice quota is full ({cause}): {message}; delete voices \
                 (DeleteVoice) to make room"
            ));
        }
        let audio = code.starts_with("Audio.")
            || code == "BadRequest.UnsupportedFileFormat"
            || code == "BadRequest.InputDownloadFailed"
            || (code == "InternalError"
                && ["audio preprocess", "request asr failed", "download"]
                    .iter()
                    .any(|m| message.contains(m)));
        if audio {
            return invalid(format!(
                "clone: upstream rejected the sample audio ({cause}): {message}"
            ));
        }
    }
    engine_status(error)
}

fn status_str(s: &str) -> i32 {
    (match s {
        "READY" => pb::custom_voice::Status::Ready,
        "DEPLOYING" => pb::custom_voice::Status::Deploying,
        "FAILED" => pb::custom_voice::Status::Failed,
        _ => pb::custom_voice::Status::Unspecified,
    }) as i32
}

/// herald's status for upstream's `status` field.
fn from_upstream(s: Option<&str>) -> &'static str {
    match s {
        Some("OK") => "READY",
        Some("UNDEPLOYED") => "FAILED",
        _ => "DEPLOYING",
    }
}

impl Record {
    /// The record as the proto's CustomVoice.
    pub fn to_pb(&self) -> pb::CustomVoice {
        let preview = base64::engine::general_purpose::STANDARD
            .decode(&self.preview_wav_b64)
            .unwrap_or_default();
        pb::CustomVoice {
            name: self.name.clone(),
            target_model: self.target_model.clone(),
            status: status_str(&self.status),
            kind: self.kind.clone(),
            requested_name: self.requested_name.clone(),
            created_at_ms: self.created_at_ms,
            preview_format: (!preview.is_empty()).then(|| pb::AudioFormat {
                encoding: pb::audio_format::Encoding::Wav as i32,
                sample_rate_hz: wav_rate(&preview).unwrap_or(24_000),
                channels: 1,
            }),
            preview_audio: preview,
            surface: self.surface.clone(),
            warning: self.warning.clone(),
            description: self.description.clone(),
        }
    }
}

fn wav_rate(wav: &[u8]) -> Option<u32> {
    (wav.len() >= 28 && &wav[..4] == b"RIFF")
        .then(|| u32::from_le_bytes([wav[24], wav[25], wav[26], wav[27]]))
}

/// The name rules of each surface: CosyVoice `prefix` `[a-z0-9]{1,9}` (satisfies every reading
/// of §3.1), Qwen `preferred_name` `[A-Za-z0-9_]{1,16}`.
fn check_name(surface: Surface, name: &str) -> Result<(), Status> {
    match surface {
        Surface::Enrollment => {
            let ok = (1..=9).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
            if !ok {
                return Err(invalid(format!(
                    "name: {:?} must be 1..=9 lowercase ASCII letters or digits for CosyVoice / \
                     Qwen-Audio-TTS models",
                    truncate(name, 32)
                )));
            }
        }
        Surface::QwenClone | Surface::QwenDesign => {
            let ok = (1..=16).contains(&name.len())
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok {
                return Err(invalid(format!(
                    "name: {:?} must be 1..=16 ASCII letters, digits or underscores for \
                     Qwen3-TTS-VC/VD models",
                    truncate(name, 32)
                )));
            }
        }
    }
    Ok(())
}

fn check_language(
    surface: Surface,
    design: bool,
    model: &str,
    language: &str,
) -> Result<(), Status> {
    if language.is_empty() {
        return Ok(());
    }
    let allowed: Vec<&str> = match surface {
        Surface::QwenClone | Surface::QwenDesign => QWEN_LANGUAGES.to_vec(),
        Surface::Enrollment if design => vec!["zh", "en"],
        Surface::Enrollment if model.starts_with("qwen-audio-") => vec![
            "zh", "en", "fr", "de", "ja", "ko", "ru", "pt", "th", "id", "vi", "it", "es", "ms",
            "fil", "ar",
        ],
        Surface::Enrollment if model == "cosyvoice-v3-plus" => {
            vec!["zh", "en", "fr", "de", "ja", "ko", "ru"]
        }
        Surface::Enrollment => vec![
            "zh", "en", "fr", "de", "ja", "ko", "ru", "pt", "th", "id", "vi",
        ],
    };
    if allowed.contains(&language) {
        Ok(())
    } else {
        Err(invalid(format!(
            "language: {:?} is not taken here; {model} takes: {}",
            truncate(language, 16),
            allowed.join(" ")
        )))
    }
}

impl Manager {
    /// A manager over the registry in `settings.directory` and the DashScope client, if any.
    pub fn open(
        settings: Settings,
        client: Option<Arc<dashscope::Client>>,
    ) -> std::io::Result<Self> {
        let registry = Registry::open(settings.directory.clone())?;
        Ok(Self {
            registry,
            client,
            settings,
        })
    }

    /// A manager with no registry and no upstream (tests, embedding).
    pub fn disabled() -> Self {
        Self {
            registry: Registry::in_memory(),
            client: None,
            settings: Settings::default(),
        }
    }

    fn client(&self) -> Result<&Arc<dashscope::Client>, Status> {
        self.client.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "custom voices need DashScope: configure dashscope.api_key (DASHSCOPE_API_KEY)",
            )
        })
    }

    /// The check of a Synthesize/Speak voice against the registry, before any upstream call.
    /// Returns the model to use (the voice's own when `model` is empty), or `None` when the
    /// voice is not a custom voice herald knows.
    pub fn check_synthesis(
        &self,
        voice: &str,
        model: &str,
    ) -> Result<Option<String>, crate::error::Error> {
        let Some(r) = self.registry.get(voice) else {
            return Ok(None);
        };
        if r.deleted_at_ms.is_some() {
            return Err(crate::error::Error::invalid(format!(
                "voice: custom voice {voice:?} was deleted (DeleteVoice); create a new one"
            )));
        }
        if !model.is_empty() && model != r.target_model {
            return Err(crate::error::Error::invalid(format!(
                "voice: custom voice {voice:?} works only with model {:?} (its target model), \
                 not {:?}",
                r.target_model,
                truncate(model, 64)
            )));
        }
        if r.status == "FAILED" {
            return Err(crate::error::Error::failed_precondition(format!(
                "voice: custom voice {voice:?} was rejected upstream (FAILED); delete it and \
                 create another"
            )));
        }
        Ok(Some(r.target_model))
    }

    /// Live registry voices, as ListVoices entries.
    fn registry_voices(&self) -> Vec<pb::Voice> {
        self.registry
            .live()
            .into_iter()
            .map(|r| {
                custom_voice_entry(
                    &r.name,
                    &r.target_model,
                    &r.language,
                    status_str(&r.status),
                    &r.requested_name,
                )
            })
            .collect()
    }

    /// Custom voices for ListVoices: the registry's, plus upstream's listings (voices made
    /// elsewhere with the same key). An upstream listing that fails is logged and skipped.
    /// `model`: the request's filter; a model DashScope does not serve skips the listings.
    pub async fn list(&self, model: &str) -> Vec<pb::Voice> {
        let mut out = self.registry_voices();
        let Some(client) = &self.client else {
            return out;
        };
        if !model.is_empty() && dashscope::Family::for_model(model).is_none() {
            return out;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for surface in Surface::ALL {
            match list_upstream(client, surface, deadline).await {
                Ok(items) => {
                    for (name, model, status) in items {
                        if self.registry.get(&name).is_some() || out.iter().any(|v| v.name == name)
                        {
                            continue;
                        }
                        out.push(custom_voice_entry(&name, &model, "", status, ""));
                    }
                }
                Err(e) => {
                    tracing::warn!(surface = surface.model(), error = %crate::error::chain(&e), "cannot list custom voices upstream")
                }
            }
        }
        out
    }

    /// GetVoice: the record, its status refreshed from upstream while DEPLOYING.
    pub async fn get(&self, name: &str, deadline: Instant) -> Result<pb::CustomVoice, Status> {
        let r = self.live_record(name)?;
        if r.status != "DEPLOYING" || r.surface != Surface::Enrollment.model() {
            return Ok(r.to_pb());
        }
        let client = self.client()?;
        let status = query_status(client, name, deadline)
            .await
            .map_err(|e| upstream_status(&e))?;
        self.set_status(name, status)?;
        Ok(self.live_record(name)?.to_pb())
    }

    fn live_record(&self, name: &str) -> Result<Record, Status> {
        if name.is_empty() {
            return Err(invalid("name: required"));
        }
        match self.registry.get(name) {
            Some(r) if r.deleted_at_ms.is_none() => Ok(r),
            _ => Err(Status::not_found(format!(
                "name: herald has no custom voice {:?} (ListVoices lists them)",
                truncate(name, 256)
            ))),
        }
    }

    fn set_status(&self, name: &str, status: &str) -> Result<(), Status> {
        self.registry
            .update(name, |r| r.status = status.to_owned())
            .map_err(registry_error)?;
        Ok(())
    }

    /// DeleteVoice: upstream first (through the voice's surface), then the registry (§10.7).
    pub async fn delete(
        &self,
        name: &str,
        deadline: Instant,
    ) -> Result<pb::DeleteVoiceResponse, Status> {
        let r = self.live_record(name)?;
        let client = self.client()?;
        let surface = Surface::from_model(&r.surface).unwrap_or(Surface::Enrollment);
        let input = match surface {
            Surface::Enrollment => json!({"action": "delete_voice", "voice_id": name}),
            _ => json!({"action": "delete", "voice": name}),
        };
        let gone = match client
            .customize(
                surface.model(),
                input,
                None,
                CALL_TIMEOUT,
                true,
                Some(deadline),
            )
            .await
        {
            Ok(_) => false,
            Err(EngineError::Api { code: Some(c), .. })
                if c.ends_with("VoiceNotFound") || c == "BadRequest.ResourceNotExist" =>
            {
                true
            }
            Err(e) => return Err(upstream_status(&e)),
        };
        self.registry
            .update(name, |r| r.deleted_at_ms = Some(now_ms()))
            .map_err(registry_error)?;
        Ok(pb::DeleteVoiceResponse {
            name: name.to_owned(),
            already_gone_upstream: gone,
        })
    }

    /// CreateVoice.
    pub async fn create(
        &self,
        req: pb::CreateVoiceRequest,
        deadline: Instant,
    ) -> Result<pb::CustomVoice, Status> {
        if self.registry.dir().is_none() {
            return Err(Status::failed_precondition(
                "voices.directory: no state directory for the voice registry (set \
                 voices.directory, STATE_DIRECTORY, XDG_STATE_HOME or HOME)",
            ));
        }
        let Some(source) = req.source else {
            return Err(invalid("source: set clone or design"));
        };
        let design = matches!(source, pb::create_voice_request::Source::Design(_));
        let surface = Surface::route(&req.target_model, design)?;
        check_name(surface, &req.name)?;
        check_language(surface, design, &req.target_model, &req.language)?;
        let client = self.client()?;
        let model = req.target_model.clone();
        let language = req.language.clone();
        // The checked sample, kept for the temporary-upload fallback.
        let mut upload: Option<sample::Prepared> = None;
        let (input, parameters, description) = match source {
            pb::create_voice_request::Source::Design(d) => {
                let (max_desc, max_preview) = match surface {
                    Surface::Enrollment => (500, 200),
                    _ => (2048, 1024),
                };
                let desc_chars = d.description.chars().count();
                if d.description.trim().is_empty() {
                    return Err(invalid("design.description: required"));
                }
                if desc_chars > max_desc {
                    return Err(invalid(format!(
                        "design.description: {desc_chars} characters exceeds the limit of {max_desc} for {model}"
                    )));
                }
                let preview_chars = d.preview_text.chars().count();
                if d.preview_text.trim().is_empty() {
                    return Err(invalid("design.preview_text: required"));
                }
                if preview_chars > max_preview {
                    return Err(invalid(format!(
                        "design.preview_text: {preview_chars} characters exceeds the limit of {max_preview} for {model}"
                    )));
                }
                let mut input = create_input(surface, &model, &req.name, &language);
                input["voice_prompt"] = json!(d.description);
                input["preview_text"] = json!(d.preview_text);
                (
                    input,
                    Some(json!({"sample_rate": 24000, "response_format": "wav"})),
                    d.description,
                )
            }
            pb::create_voice_request::Source::Clone(c) => {
                let (audio, file) = self.clone_audio(surface, c.sample.as_ref()).await?;
                upload = file;
                let transcript_chars = c.transcript.chars().count();
                if transcript_chars > MAX_TRANSCRIPT_CHARS {
                    return Err(invalid(format!(
                        "clone.transcript: {transcript_chars} characters exceeds the limit of {MAX_TRANSCRIPT_CHARS}"
                    )));
                }
                let mut input = create_input(surface, &model, &req.name, &language);
                match surface {
                    Surface::Enrollment => input["url"] = json!(audio),
                    _ => input["audio"] = json!({"data": audio}),
                }
                if !c.transcript.is_empty() && surface == Surface::QwenClone {
                    input["text"] = json!(c.transcript);
                }
                (input, None, String::new())
            }
        };
        let timeout = if design { DESIGN_TIMEOUT } else { CALL_TIMEOUT };
        // Never retried: a duplicate create consumes quota (§9). One exception: a data URI
        // that `voice-enrollment` refuses with a server error (ANSELM saw HTTP 500 live) is
        // uploaded to DashScope's temporary storage and the create sent again with `oss://`
        // (§6.2's second way); the first create failed, so nothing was created twice.
        let first = client
            .customize(
                surface.model(),
                input.clone(),
                parameters.clone(),
                timeout,
                false,
                Some(deadline),
            )
            .await;
        let body = match (first, upload) {
            (Err(e), Some(file)) if surface == Surface::Enrollment && data_uri_refused(&e) => {
                tracing::info!(
                    error = %crate::error::chain(&e),
                    "the data URI was refused; uploading the sample to temporary storage"
                );
                let name = format!("{}.{}", req.name, file.format.extension());
                let url = client
                    .upload_temporary(
                        surface.model(),
                        &name,
                        file.format.mime(),
                        file.bytes,
                        deadline,
                    )
                    .await
                    .map_err(|e| upstream_status(&e))?;
                let mut input = input;
                input["url"] = json!(url);
                client
                    .customize_with(
                        surface.model(),
                        input,
                        parameters,
                        timeout,
                        false,
                        Some(deadline),
                        true,
                    )
                    .await
            }
            (first, _) => first,
        };
        // The answer was lost (connection cut, timeout): the voice may exist upstream all the
        // same. Never re-create (a duplicate costs quota); look for it in the listing (§10.5).
        let mut adopted = false;
        let body = match body {
            Ok(b) => b,
            Err(e @ EngineError::Transport(_)) => {
                match adopt(client, surface, &req.name, &model, design, |id| {
                    self.registry.get(id).is_some()
                })
                .await
                {
                    Some(id) => {
                        tracing::warn!(voice = %id, error = %crate::error::chain(&e), "the create's answer was lost; adopted the voice found upstream");
                        adopted = true;
                        json!({"output": {"voice_id": id}})
                    }
                    None => return Err(upstream_status(&e)),
                }
            }
            Err(e) => return Err(upstream_status(&e)),
        };
        let output = &body["output"];
        let name = output
            .get("voice_id")
            .or_else(|| output.get("voice"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                Status::internal("upstream protocol error: the create answer has no voice id")
            })?
            .to_owned();
        let preview = match output.get("preview_audio").and_then(|p| p.get("data")) {
            Some(Value::String(b64)) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .map_err(|e| {
                        Status::internal(format!(
                            "upstream protocol error: preview_audio.data is not base64: {e}"
                        ))
                    })?;
                base64::engine::general_purpose::STANDARD.encode(bytes)
            }
            _ => String::new(),
        };
        let warning = if output.get("fallback_mode").and_then(Value::as_bool) == Some(true) {
            format!(
                "upstream created the voice in fallback mode ({}); it may sound poor",
                output
                    .get("fallback_reason")
                    .and_then(Value::as_str)
                    .unwrap_or("no reason given")
            )
        } else if adopted {
            "the create's answer was lost; herald found the voice in upstream's listing and \
             recorded it (a design's preview is lost)"
                .to_owned()
        } else {
            String::new()
        };
        let record = Record {
            name: name.clone(),
            target_model: model,
            surface: surface.model().to_owned(),
            kind: if design { "design" } else { "clone" }.to_owned(),
            requested_name: req.name,
            created_at_ms: now_ms(),
            status: if surface == Surface::Enrollment {
                "DEPLOYING"
            } else {
                "READY"
            }
            .to_owned(),
            language,
            description,
            preview_wav_b64: preview,
            warning,
            deleted_at_ms: None,
        };
        self.registry.put(record).map_err(registry_error)?;
        tracing::info!(voice = %name, surface = surface.model(), "custom voice created");
        if req.wait && surface == Surface::Enrollment {
            self.wait_ready(client, &name, deadline).await?;
        }
        Ok(self.live_record(&name)?.to_pb())
    }

    /// Poll `query_voice` with backoff until READY or FAILED, within `deadline` (§3.6). A poll
    /// that fails is not a failed voice: it is retried until the deadline.
    async fn wait_ready(
        &self,
        client: &dashscope::Client,
        name: &str,
        deadline: Instant,
    ) -> Result<(), Status> {
        let mut delay = self.settings.poll_initial;
        loop {
            if Instant::now() + delay >= deadline {
                return Err(Status::deadline_exceeded(format!(
                    "voice {name:?} is still DEPLOYING upstream at the call's deadline; it is \
                     recorded: ask again with GetVoice"
                )));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(self.settings.poll_max);
            match query_status(client, name, deadline).await {
                Ok(status) => {
                    self.set_status(name, status)?;
                    if status != "DEPLOYING" {
                        return Ok(());
                    }
                }
                Err(e) => {
                    tracing::warn!(voice = %name, error = %crate::error::chain(&e), "status poll failed; polling on");
                }
            }
        }
    }

    /// The `url` / `audio.data` value of a clone: a caller URL as is, or the checked (and,
    /// when needed, converted) sample as a base64 data URI (§6.2, first way).
    async fn clone_audio(
        &self,
        surface: Surface,
        sample: Option<&pb::clone_source::Sample>,
    ) -> Result<(String, Option<sample::Prepared>), Status> {
        match sample {
            None => Err(invalid("clone: set audio or url")),
            Some(pb::clone_source::Sample::Url(url)) => {
                let chars = url.chars().count();
                if chars > MAX_URL_CHARS {
                    return Err(invalid(format!(
                        "clone.url: {chars} characters exceeds the limit of {MAX_URL_CHARS}"
                    )));
                }
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    return Err(invalid("clone.url: must be an http:// or https:// URL"));
                }
                Ok((url.clone(), None))
            }
            Some(pb::clone_source::Sample::Audio(bytes)) => {
                let rules = match surface {
                    Surface::QwenClone => sample::Rules {
                        min_rate: 24_000,
                        mono: true,
                        min_seconds: sample::MIN_SECONDS_QWEN,
                    },
                    _ => sample::Rules {
                        min_rate: 16_000,
                        mono: false,
                        min_seconds: sample::MIN_SECONDS_ENROLLMENT,
                    },
                };
                let bytes = bytes.clone();
                let prepared = tokio::task::spawn_blocking(move || sample::prepare(&bytes, rules))
                    .await
                    .map_err(|_| Status::internal("internal error while checking the sample"))?
                    .map_err(invalid)?;
                let b64 = base64::engine::general_purpose::STANDARD.encode(&prepared.bytes);
                let uri = format!("data:{};base64,{b64}", prepared.format.mime());
                if uri.len() > sample::MAX_DATA_URI_BYTES {
                    return Err(invalid(format!(
                        "clone.audio: {} bytes base64-encoded exceeds upstream's limit of {} bytes",
                        uri.len(),
                        sample::MAX_DATA_URI_BYTES
                    )));
                }
                Ok((uri, Some(prepared)))
            }
        }
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
        _ => json!({"action": "create", "target_model": model, "preferred_name": name}),
    };
    if !language.is_empty() {
        match surface {
            Surface::Enrollment => input["language_hints"] = json!([language]),
            _ => input["language"] = json!(language),
        }
    }
    input
}

/// A create refused in a way a temporary upload may cure: a server error (HTTP 5xx or
/// `InternalError`) or a `url` complaint. Not the `Audio.*` verdicts: they judge the audio,
/// which another way of handing it over does not change.
fn data_uri_refused(e: &EngineError) -> bool {
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

fn registry_error(e: std::io::Error) -> Status {
    tracing::error!(error = %e, "cannot write the voice registry");
    Status::unavailable(format!("cannot write the voice registry: {e}"))
}

fn custom_voice_entry(
    name: &str,
    model: &str,
    language: &str,
    status: i32,
    display: &str,
) -> pb::Voice {
    pb::Voice {
        name: name.to_owned(),
        display_name: if display.is_empty() { name } else { display }.to_owned(),
        languages: if language.is_empty() {
            Vec::new()
        } else {
            vec![language.to_owned()]
        },
        engine: dashscope::Family::for_model(model)
            .map_or("dashscope", |f| f.engine_name())
            .to_owned(),
        model: model.to_owned(),
        native_sample_rate_hz: dashscope::Family::for_model(model)
            .map_or(24_000, |f| f.native_rate()),
        gender: String::new(),
        custom: true,
        custom_status: status,
    }
}

/// `query_voice` of a `voice-enrollment` voice → herald's status.
async fn query_status(
    client: &dashscope::Client,
    name: &str,
    deadline: Instant,
) -> Result<&'static str, EngineError> {
    let body = client
        .customize(
            Surface::Enrollment.model(),
            json!({"action": "query_voice", "voice_id": name}),
            None,
            CALL_TIMEOUT,
            true,
            Some(deadline),
        )
        .await?;
    Ok(from_upstream(body["output"]["status"].as_str()))
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

/// One surface's voices upstream: (id, model, status).
async fn list_upstream(
    client: &dashscope::Client,
    surface: Surface,
    deadline: Instant,
) -> Result<Vec<(String, String, i32)>, EngineError> {
    let mut out = Vec::new();
    for page in 0..LIST_PAGES {
        let input = match surface {
            Surface::Enrollment => {
                json!({"action": "list_voice", "page_index": page, "page_size": LIST_PAGE})
            }
            _ => json!({"action": "list", "page_index": page, "page_size": LIST_PAGE}),
        };
        let body = client
            .customize(
                surface.model(),
                input,
                None,
                CALL_TIMEOUT,
                true,
                Some(deadline),
            )
            .await?;
        let items = body["output"]["voice_list"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let n = items.len() as u64;
        for item in items {
            let Some(id) = item
                .get("voice_id")
                .or_else(|| item.get("voice"))
                .and_then(Value::as_str)
            else {
                continue;
            };
            let model = item
                .get("target_model")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or_else(|| model_of_id(id).map(str::to_owned));
            let Some(model) = model else { continue };
            let status = match surface {
                Surface::Enrollment => status_str(from_upstream(item["status"].as_str())),
                _ => status_str("READY"),
            };
            out.push((id.to_owned(), model, status));
        }
        let total = body["output"]["total_count"].as_u64();
        if n < LIST_PAGE || total.is_some_and(|t| (page + 1) * LIST_PAGE >= t) {
            break;
        }
    }
    Ok(out)
}

/// After a create whose answer was lost: the newest voice upstream that matches what was asked
/// (surface, target model, name in the id's place) and that herald has not recorded.
async fn adopt(
    client: &dashscope::Client,
    surface: Surface,
    name: &str,
    model: &str,
    design: bool,
    known: impl Fn(&str) -> bool,
) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let prefix = match surface {
        Surface::Enrollment if design => format!("{model}-vd-{name}-"),
        Surface::Enrollment => format!("{model}-{name}-"),
        Surface::QwenClone => format!("qwen-tts-vc-{name}-voice-"),
        Surface::QwenDesign => format!("qwen-tts-vd-{name}-voice-"),
    };
    match list_upstream(client, surface, deadline).await {
        Ok(items) => items
            .into_iter()
            .find(|(id, m, _)| m == model && id.starts_with(&prefix) && !known(id))
            .map(|(id, ..)| id),
        Err(e) => {
            tracing::warn!(error = %crate::error::chain(&e), "cannot list upstream to find a voice whose create answer was lost");
            None
        }
    }
}
