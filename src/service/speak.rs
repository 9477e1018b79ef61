//! Speak / StopSpeaking: the playback fields of the requests (the synthesis fields go through
//! the same validation as Synthesize), and playback events as protobuf. Queue rules live in
//! `playback`, never here.

use std::time::Duration;

use tokio::time::Instant;
use tonic::Status;

use crate::{
    pb::{self, speak_event, stop_speaking_request::Scope},
    playback::{Event, PlaybackSettings, Priority, Report, StopScope},
};

/// Longest `leading_silence_ms`.
pub const MAX_LEADING_SILENCE_MS: u32 = 5_000;
/// Longest `expires_after_ms` (one day).
pub const MAX_EXPIRES_AFTER_MS: u32 = 86_400_000;
/// Longest announcement `id`.
pub const MAX_ID_CHARS: usize = 128;

/// The playback part of a SpeakRequest, validated.
#[derive(Debug)]
pub struct SpeakParams {
    pub id: String,
    pub priority: Priority,
    pub volume: f32,
    pub chime: bool,
    pub leading_silence: Duration,
    pub expires_at: Option<Instant>,
}

fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message)
}

/// Check the playback fields of `req`; defaults from `settings`.
pub fn validate(
    req: &pb::SpeakRequest,
    settings: &PlaybackSettings,
) -> Result<SpeakParams, Status> {
    let priority = match pb::Priority::try_from(req.priority) {
        Ok(pb::Priority::Unspecified | pb::Priority::Message) => Priority::Message,
        Ok(pb::Priority::Important) => Priority::Important,
        Ok(pb::Priority::Text) => Priority::Text,
        Ok(pb::Priority::Notification) => Priority::Notification,
        Ok(pb::Priority::Progress) => Priority::Progress,
        Err(_) => {
            return Err(invalid(format!(
                "priority: {} is not a Priority (1..=5)",
                req.priority
            )));
        }
    };
    let chime = match pb::Chime::try_from(req.chime) {
        Ok(pb::Chime::Default) => settings.chime_by_default,
        Ok(pb::Chime::None) => false,
        Ok(pb::Chime::Play) => true,
        Err(_) => {
            return Err(invalid(format!(
                "chime: {} is not a Chime (0..=2)",
                req.chime
            )));
        }
    };
    let volume = crate::synthesis::volume(req.volume)?;
    let leading_silence = match req.leading_silence_ms {
        0 => settings.leading_silence,
        ms if ms <= MAX_LEADING_SILENCE_MS => Duration::from_millis(u64::from(ms)),
        ms => {
            return Err(invalid(format!(
                "leading_silence_ms: {ms} is outside 0..={MAX_LEADING_SILENCE_MS}"
            )));
        }
    };
    let expires_at = match req.expires_after_ms {
        0 => None,
        ms if ms <= MAX_EXPIRES_AFTER_MS => {
            Some(Instant::now() + Duration::from_millis(u64::from(ms)))
        }
        ms => {
            return Err(invalid(format!(
                "expires_after_ms: {ms} is outside 0..={MAX_EXPIRES_AFTER_MS}"
            )));
        }
    };
    let id = if req.id.is_empty() {
        uuid::Uuid::new_v4().to_string()
    } else if req.id.chars().count() > MAX_ID_CHARS || req.id.chars().any(char::is_control) {
        return Err(invalid(format!(
            "id: must be at most {MAX_ID_CHARS} printable characters"
        )));
    } else {
        req.id.clone()
    };
    Ok(SpeakParams {
        id,
        priority,
        volume,
        chime,
        leading_silence,
        expires_at,
    })
}

/// The scope of a StopSpeakingRequest.
pub fn stop_scope(req: &pb::StopSpeakingRequest) -> Result<StopScope, Status> {
    match Scope::try_from(req.scope) {
        Ok(Scope::Unspecified | Scope::Current) => Ok(StopScope::Current),
        Ok(Scope::All) => Ok(StopScope::All),
        Ok(Scope::Id) if req.id.is_empty() => Err(invalid("id: required when scope is ID")),
        Ok(Scope::Id) => Ok(StopScope::Id(req.id.clone())),
        Err(_) => Err(invalid(format!(
            "scope: {} is not a Scope (0..=3)",
            req.scope
        ))),
    }
}

/// A playback report as a SpeakEvent.
pub fn event_to_pb(report: Report) -> pb::SpeakEvent {
    use speak_event::Event as E;
    let event = match report.event {
        Event::Queued { position, device } => E::Queued(speak_event::Queued { position, device }),
        Event::Started => E::Started(speak_event::Started {}),
        Event::Finished { played_ms } => E::Finished(speak_event::Finished { played_ms }),
        Event::Interrupted { by_id, played_ms } => {
            E::Interrupted(speak_event::Interrupted { by_id, played_ms })
        }
        Event::Dropped { by_id } => E::Dropped(speak_event::Dropped { by_id }),
        Event::Expired => E::Expired(speak_event::Expired {}),
        Event::Failed { error } => E::Failed(speak_event::Failed {
            code: super::status::code(error.kind()) as i32,
            message: error.message().to_owned(),
        }),
    };
    pb::SpeakEvent {
        id: report.id,
        timestamp_ms: report.timestamp_ms,
        event: Some(event),
    }
}
