//! The custom-voice RPCs (CreateVoice, GetVoice, DeleteVoice) and the custom half of
//! ListVoices, in gRPC terms: wire request → domain request, domain result → wire message,
//! domain error → status (through `service::status`).
//!
//! It owns only that mapping. It must not hold rules or state: `crate::voices::Manager`
//! decides, checks and records.

use tokio::time::Instant;
use tonic::Status;

use crate::{
    engine::dashscope::Family,
    pb,
    voices::{CreateVoice, Deleted, ListedVoice, Manager, Record, Sample, Source, VoiceStatus},
};

/// CreateVoice.
pub async fn create(
    voices: &Manager,
    request: pb::CreateVoiceRequest,
    deadline: Instant,
) -> Result<pb::CustomVoice, Status> {
    let record = voices.create(create_request(request), deadline).await?;
    Ok(custom_voice(&record))
}

/// GetVoice.
pub async fn get(
    voices: &Manager,
    request: pb::GetVoiceRequest,
    deadline: Instant,
) -> Result<pb::CustomVoice, Status> {
    let record = voices.get(&request.name, deadline).await?;
    Ok(custom_voice(&record))
}

/// DeleteVoice.
pub async fn delete(
    voices: &Manager,
    request: pb::DeleteVoiceRequest,
    deadline: Instant,
) -> Result<pb::DeleteVoiceResponse, Status> {
    let deleted = voices.delete(&request.name, deadline).await?;
    Ok(delete_response(deleted))
}

/// The custom voices of a ListVoices answer (before the request's filters), and the listings
/// that failed (`ListVoicesResponse.missing`).
pub async fn list(voices: &Manager, model: &str) -> (Vec<pb::Voice>, Vec<String>) {
    let listing = voices.list(model).await;
    (
        listing.voices.into_iter().map(voice).collect(),
        listing.missing,
    )
}

/// The domain request of a CreateVoice.
fn create_request(req: pb::CreateVoiceRequest) -> CreateVoice {
    use pb::{clone_source::Sample as PbSample, create_voice_request::Source as PbSource};
    let source = req.source.map(|source| match source {
        PbSource::Clone(c) => Source::Clone {
            sample: c.sample.map(|s| match s {
                PbSample::Url(url) => Sample::Url(url),
                PbSample::Audio(bytes) => Sample::Audio(bytes),
            }),
            transcript: c.transcript,
        },
        PbSource::Design(d) => Source::Design {
            description: d.description,
            preview_text: d.preview_text,
        },
    });
    CreateVoice {
        name: req.name,
        target_model: req.target_model,
        language: req.language,
        source,
        wait: req.wait,
    }
}

/// A record as the proto's CustomVoice.
fn custom_voice(r: &Record) -> pb::CustomVoice {
    let preview = r.preview_wav();
    pb::CustomVoice {
        name: r.name.clone(),
        target_model: r.target_model.clone(),
        status: status(r.status),
        kind: r.kind.as_str().to_owned(),
        requested_name: r.requested_name.clone(),
        created_at_ms: r.created_at_ms,
        preview_format: (!preview.is_empty()).then(|| pb::AudioFormat {
            encoding: pb::audio_format::Encoding::Wav as i32,
            sample_rate_hz: wav_rate(&preview).unwrap_or(24_000),
            channels: 1,
        }),
        preview_audio: preview,
        surface: r.surface.model().to_owned(),
        warning: r.warning.clone(),
        description: r.description.clone(),
    }
}

/// The rate a WAV header announces (the preview is upstream's WAV, reported as is).
fn wav_rate(bytes: &[u8]) -> Option<u32> {
    crate::audio::wav::parse(bytes)
        .ok()
        .flatten()
        .map(|(header, _)| header.spec.sample_rate)
}

fn delete_response(d: Deleted) -> pb::DeleteVoiceResponse {
    pb::DeleteVoiceResponse {
        name: d.name,
        already_gone_upstream: d.already_gone_upstream,
    }
}

/// A custom voice as a ListVoices entry.
fn voice(v: ListedVoice) -> pb::Voice {
    let family = Family::for_model(&v.model);
    pb::Voice {
        languages: if v.language.is_empty() {
            Vec::new()
        } else {
            vec![v.language]
        },
        engine: family.map_or("dashscope", |f| f.engine_name()).to_owned(),
        native_sample_rate_hz: family.map_or(24_000, |f| f.native_rate()),
        name: v.name,
        display_name: v.display_name,
        model: v.model,
        gender: String::new(),
        custom: true,
        custom_status: status(v.status),
    }
}

fn status(s: VoiceStatus) -> i32 {
    (match s {
        VoiceStatus::Ready => pb::custom_voice::Status::Ready,
        VoiceStatus::Deploying => pb::custom_voice::Status::Deploying,
        VoiceStatus::Failed => pb::custom_voice::Status::Failed,
    }) as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::voices::{Surface, VoiceKind};

    #[test]
    fn records_map_to_the_proto() {
        let r = Record {
            name: "cosyvoice-v3-flash-vd-x-1".to_owned(),
            target_model: "cosyvoice-v3-flash".to_owned(),
            surface: Surface::Enrollment,
            kind: VoiceKind::Design,
            requested_name: "x".to_owned(),
            created_at_ms: 7,
            status: VoiceStatus::Deploying,
            language: "zh".to_owned(),
            description: "calm".to_owned(),
            preview_wav_b64: String::new(),
            warning: String::new(),
            deleted_at_ms: None,
        };
        let pb = custom_voice(&r);
        assert_eq!(pb.status, pb::custom_voice::Status::Deploying as i32);
        assert_eq!(pb.kind, "design");
        assert_eq!(pb.surface, "voice-enrollment");
        assert_eq!(pb.preview_format, None);
        let v = voice(ListedVoice {
            name: "q".to_owned(),
            display_name: "q".to_owned(),
            model: "MiniMax/speech-02-hd".to_owned(),
            language: String::new(),
            status: VoiceStatus::Ready,
        });
        assert_eq!(
            (v.engine.as_str(), v.native_sample_rate_hz),
            ("minimax", 32000)
        );
        assert!(v.custom && v.languages.is_empty());
    }
}
