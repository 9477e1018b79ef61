//! CreateVoice: the request as the domain sees it, every check that needs no upstream call,
//! the one upstream create (with its temporary-upload fallback and the search for a voice
//! whose answer was lost), the record, and the wait for training.
//!
//! It must not build wire bodies (`engine::dashscope::custom` does) or retry a create: a
//! duplicate consumes upstream quota.

use base64::Engine as _;
use tokio::time::Instant;

use super::{
    Manager,
    manager::classify,
    registry::{Record, VoiceKind, VoiceStatus, now_ms},
    sample,
    surface::{MAX_TRANSCRIPT_CHARS, MAX_URL_CHARS, Surface},
};
use crate::{
    engine::{
        EngineError,
        dashscope::{
            self,
            custom::{CloneAudio, NewVoice, NewVoiceSource, data_uri_refused},
        },
    },
    error::Error,
};

/// A CreateVoice request, as the domain sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CreateVoice {
    /// The requested name (`prefix` / `preferred_name`).
    pub name: String,
    /// The one model the voice will work with.
    pub target_model: String,
    /// Its language, or empty.
    pub language: String,
    /// What it is made from; `None` when the request named nothing.
    pub source: Option<Source>,
    /// Wait until upstream finished training it (`voice-enrollment`), within the deadline.
    pub wait: bool,
}

/// What a voice is made from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// A sample of a speaker.
    Clone {
        /// The sample; `None` when the request gave neither audio nor URL.
        sample: Option<Sample>,
        /// What the sample says, or empty.
        transcript: String,
    },
    /// A description.
    Design {
        /// The voice prompt.
        description: String,
        /// The preview's text.
        preview_text: String,
    },
}

impl Source {
    /// The kind of voice this makes.
    pub fn kind(&self) -> VoiceKind {
        match self {
            Self::Clone { .. } => VoiceKind::Clone,
            Self::Design { .. } => VoiceKind::Design,
        }
    }
}

/// A clone's sample.
#[derive(Clone, Debug, PartialEq)]
pub enum Sample {
    /// An http(s) URL upstream fetches.
    Url(String),
    /// The audio file (WAV, MP3 or M4A).
    Audio(Vec<u8>),
}

impl Manager {
    /// CreateVoice: checks everything that needs no upstream call, creates the voice upstream
    /// (never twice), records it, and with `wait` polls until it is trained.
    pub async fn create(&self, req: CreateVoice, deadline: Instant) -> Result<Record, Error> {
        if self.registry.dir().is_none() {
            return Err(Error::failed_precondition(
                "voices.directory: no state directory for the voice registry (set \
                 voices.directory, STATE_DIRECTORY, XDG_STATE_HOME or HOME)",
            ));
        }
        let Some(source) = req.source else {
            return Err(Error::invalid("source: set clone or design"));
        };
        let kind = source.kind();
        let surface = Surface::route(&req.target_model, kind)?;
        surface.check_name(&req.name)?;
        surface.check_language(kind, &req.target_model, &req.language)?;
        let client = self.client()?;
        let model = req.target_model.as_str();
        // The checked sample, kept for the temporary-upload fallback.
        let mut upload: Option<sample::Prepared> = None;
        let audio;
        let (source, description) = match &source {
            Source::Design {
                description,
                preview_text,
            } => {
                check_design(surface, model, description, preview_text)?;
                let source = NewVoiceSource::Design {
                    description,
                    preview_text,
                };
                (source, description.clone())
            }
            Source::Clone { sample, transcript } => {
                let (inline, file) = clone_audio(surface, sample.as_ref()).await?;
                audio = inline;
                upload = file;
                let transcript_chars = transcript.chars().count();
                if transcript_chars > MAX_TRANSCRIPT_CHARS {
                    return Err(Error::invalid(format!(
                        "clone.transcript: {transcript_chars} characters exceeds the limit of {MAX_TRANSCRIPT_CHARS}"
                    )));
                }
                let source = NewVoiceSource::Clone {
                    audio: CloneAudio::Inline(&audio),
                    transcript,
                };
                (source, String::new())
            }
        };
        let voice = NewVoice {
            surface,
            target_model: model,
            name: &req.name,
            language: &req.language,
            source,
        };
        let created = self
            .create_upstream(client, &voice, upload, deadline)
            .await?;
        let name = created.voice_id.clone();
        let record = Record {
            name: name.clone(),
            target_model: req.target_model.clone(),
            surface,
            kind,
            requested_name: req.name.clone(),
            created_at_ms: now_ms(),
            status: initial_status(surface),
            language: req.language.clone(),
            description,
            preview_wav_b64: base64::engine::general_purpose::STANDARD
                .encode(&created.upstream.preview_wav),
            warning: created.warning(),
            deleted_at_ms: None,
        };
        tracing::info!(voice = %name, surface = surface.model(), "custom voice created");
        if let Err(e) = self.registry.put(record) {
            // The voice exists upstream (and costs quota): the client gets it, with a warning;
            // a failure here would make a retry create a duplicate.
            tracing::warn!(voice = %name, error = %e, "cannot write the voice registry; the new voice is kept in memory and adopted again from upstream's listing after a restart");
            let note = format!(
                "herald could not write its voice registry ({e}): the voice is kept in memory \
                 and adopted again from upstream's listing after a restart"
            );
            let _ = self.registry.update(&name, |r| {
                r.warning = if r.warning.is_empty() {
                    note
                } else {
                    format!("{}; {note}", r.warning)
                };
            });
        }
        if req.wait && polls_after_create(surface) {
            self.wait_ready(client, &name, deadline).await?;
        }
        self.live_record(&name)
    }

    /// The upstream create. Never retried: a duplicate create consumes quota. One exception:
    /// a data URI that `voice-enrollment` refuses with a server error (HTTP 500, observed
    /// against the live API in December 2026, when this fallback was written) is uploaded to
    /// DashScope's temporary storage and the create sent again with the `oss://` URL; the
    /// first create failed, so nothing was created twice. An answer that was lost (connection
    /// cut, timeout) may still have created the voice: it is looked for in upstream's listing,
    /// never re-created.
    async fn create_upstream(
        &self,
        client: &dashscope::Client,
        voice: &NewVoice<'_>,
        upload: Option<sample::Prepared>,
        deadline: Instant,
    ) -> Result<Outcome, Error> {
        let first = client.create_voice(voice, deadline).await;
        let answer = match (first, upload, voice.source) {
            (Err(e), Some(file), NewVoiceSource::Clone { transcript, .. })
                if voice.surface == Surface::Enrollment && data_uri_refused(&e) =>
            {
                tracing::info!(
                    error = %crate::error::chain(&e),
                    "the data URI was refused; uploading the sample to temporary storage"
                );
                let file_name = format!("{}.{}", voice.name, file.format.extension());
                let url = client
                    .upload_temporary(
                        voice.surface,
                        &file_name,
                        file.format.mime(),
                        file.bytes,
                        deadline,
                    )
                    .await
                    .map_err(|e| classify(&e))?;
                let again = NewVoice {
                    source: NewVoiceSource::Clone {
                        audio: CloneAudio::Uploaded(&url),
                        transcript,
                    },
                    ..*voice
                };
                client.create_voice(&again, deadline).await
            }
            (first, ..) => first,
        };
        match answer {
            Ok(upstream) => Ok(Outcome {
                voice_id: upstream.voice_id.clone(),
                upstream,
                adopted: false,
            }),
            Err(e @ EngineError::Transport(_)) => {
                let found = client
                    .find_lost_create(voice, |id| self.registry.get(id).is_some())
                    .await;
                match found {
                    Some(id) => {
                        tracing::warn!(voice = %id, error = %crate::error::chain(&e), "the create's answer was lost; adopted the voice found upstream");
                        Ok(Outcome {
                            voice_id: id,
                            upstream: dashscope::custom::Created::default(),
                            adopted: true,
                        })
                    }
                    None => Err(classify(&e)),
                }
            }
            Err(e) => Err(classify(&e)),
        }
    }

    /// Poll upstream with backoff until READY or FAILED, within `deadline`. A poll that fails
    /// is not a failed voice: it is retried until the deadline.
    async fn wait_ready(
        &self,
        client: &dashscope::Client,
        name: &str,
        deadline: Instant,
    ) -> Result<(), Error> {
        let mut delay = self.settings.poll_initial;
        loop {
            if Instant::now() + delay >= deadline {
                return Err(Error::deadline_exceeded(format!(
                    "voice {name:?} is still DEPLOYING upstream at the call's deadline; it is \
                     recorded: ask again with GetVoice"
                )));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(self.settings.poll_max);
            match client.query_voice(name, deadline).await {
                Ok(status) => {
                    self.set_status(name, status)?;
                    if status != VoiceStatus::Deploying {
                        return Ok(());
                    }
                }
                Err(e) => {
                    tracing::warn!(voice = %name, error = %crate::error::chain(&e), "status poll failed; polling on");
                }
            }
        }
    }
}

/// What the upstream create gave.
struct Outcome {
    voice_id: String,
    upstream: dashscope::custom::Created,
    /// The answer was lost and the voice found in upstream's listing.
    adopted: bool,
}

impl Outcome {
    /// The warning recorded with the voice (empty: none).
    fn warning(&self) -> String {
        if let Some(reason) = &self.upstream.fallback_reason {
            format!("upstream created the voice in fallback mode ({reason}); it may sound poor")
        } else if self.adopted {
            "the create's answer was lost; herald found the voice in upstream's listing and \
             recorded it (a design's preview is lost)"
                .to_owned()
        } else {
            String::new()
        }
    }
}

/// A new voice's state: `voice-enrollment` trains it first, the Qwen surfaces answer when it
/// is ready.
fn initial_status(surface: Surface) -> VoiceStatus {
    match surface {
        Surface::Enrollment => VoiceStatus::Deploying,
        Surface::QwenClone | Surface::QwenDesign => VoiceStatus::Ready,
    }
}

/// Whether a create with `wait` polls: only `voice-enrollment` voices are trained after the
/// create.
fn polls_after_create(surface: Surface) -> bool {
    surface == Surface::Enrollment
}

/// The limits of a design's description and preview text on `surface`.
fn check_design(
    surface: Surface,
    model: &str,
    description: &str,
    preview_text: &str,
) -> Result<(), Error> {
    let (max_desc, max_preview) = surface.design_limits();
    let desc_chars = description.chars().count();
    if description.trim().is_empty() {
        return Err(Error::invalid("design.description: required"));
    }
    if desc_chars > max_desc {
        return Err(Error::invalid(format!(
            "design.description: {desc_chars} characters exceeds the limit of {max_desc} for {model}"
        )));
    }
    let preview_chars = preview_text.chars().count();
    if preview_text.trim().is_empty() {
        return Err(Error::invalid("design.preview_text: required"));
    }
    if preview_chars > max_preview {
        return Err(Error::invalid(format!(
            "design.preview_text: {preview_chars} characters exceeds the limit of {max_preview} for {model}"
        )));
    }
    Ok(())
}

/// The `url` / `audio.data` value of a clone: a caller URL as is, or the checked (and, when
/// needed, converted) sample as a base64 data URI, with the sample kept for a temporary upload.
async fn clone_audio(
    surface: Surface,
    sample: Option<&Sample>,
) -> Result<(String, Option<sample::Prepared>), Error> {
    match sample {
        None => Err(Error::invalid("clone: set audio or url")),
        Some(Sample::Url(url)) => check_url(url).map(|()| (url.clone(), None)),
        Some(Sample::Audio(bytes)) => {
            let rules = match surface {
                Surface::QwenClone => sample::Rules {
                    min_rate: 24_000,
                    mono: true,
                    min_seconds: sample::MIN_SECONDS_QWEN,
                },
                Surface::Enrollment | Surface::QwenDesign => sample::Rules {
                    min_rate: 16_000,
                    mono: false,
                    min_seconds: sample::MIN_SECONDS_ENROLLMENT,
                },
            };
            let bytes = bytes.clone();
            let prepared = tokio::task::spawn_blocking(move || sample::prepare(&bytes, rules))
                .await
                .map_err(|_| Error::internal("internal error while checking the sample"))?
                .map_err(|e| Error::invalid(e.to_string()))?;
            let b64 = base64::engine::general_purpose::STANDARD.encode(&prepared.bytes);
            let uri = format!("data:{};base64,{b64}", prepared.format.mime());
            if uri.len() > sample::MAX_DATA_URI_BYTES {
                return Err(Error::invalid(format!(
                    "clone.audio: {} bytes base64-encoded exceeds upstream's limit of {} bytes",
                    uri.len(),
                    sample::MAX_DATA_URI_BYTES
                )));
            }
            Ok((uri, Some(prepared)))
        }
    }
}

/// A clone's URL: http(s), and not absurdly long.
fn check_url(url: &str) -> Result<(), Error> {
    let chars = url.chars().count();
    if chars > MAX_URL_CHARS {
        return Err(Error::invalid(format!(
            "clone.url: {chars} characters exceeds the limit of {MAX_URL_CHARS}"
        )));
    }
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(Error::invalid(
            "clone.url: must be an http:// or https:// URL",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        error::ErrorKind,
        voices::manager::tests::{far, manager},
    };

    #[tokio::test]
    async fn creates_are_checked_before_any_upstream_call() {
        let clone = |model: &str, name: &str| CreateVoice {
            name: name.to_owned(),
            target_model: model.to_owned(),
            source: Some(Source::Clone {
                sample: Some(Sample::Url("https://example.com/a.wav".to_owned())),
                transcript: String::new(),
            }),
            ..CreateVoice::default()
        };
        let e = Manager::disabled()
            .create(clone("cosyvoice-v3-flash", "kiosk"), far())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::FailedPrecondition);
        assert!(e.message().starts_with("voices.directory:"), "{e}");
        let (m, _dir) = manager(Vec::new());
        let cases = [
            (
                CreateVoice {
                    source: None,
                    ..clone("cosyvoice-v3-flash", "kiosk")
                },
                "source: set clone or design",
            ),
            (clone("qwen3-tts-flash", "kiosk"), "target_model:"),
            (clone("cosyvoice-v3-flash", "Kiosk"), "name:"),
            (
                CreateVoice {
                    language: "xx".to_owned(),
                    ..clone("cosyvoice-v3-flash", "kiosk")
                },
                "language:",
            ),
        ];
        for (req, want) in cases {
            let e = m.create(req, far()).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
            assert!(e.message().starts_with(want), "{want}: {e}");
        }
        // Valid, but no upstream configured.
        let e = m
            .create(clone("cosyvoice-v3-flash", "kiosk"), far())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::FailedPrecondition);
        assert!(e.message().contains("dashscope.api_key"), "{e}");
        assert!(m.registry.live().is_empty());
    }

    #[test]
    fn new_voices_start_deploying_only_on_voice_enrollment() {
        assert_eq!(initial_status(Surface::Enrollment), VoiceStatus::Deploying);
        assert_eq!(initial_status(Surface::QwenClone), VoiceStatus::Ready);
        assert_eq!(initial_status(Surface::QwenDesign), VoiceStatus::Ready);
        assert!(polls_after_create(Surface::Enrollment));
        assert!(!polls_after_create(Surface::QwenDesign));
    }

    #[tokio::test]
    async fn clone_sources_and_designs_have_limits() {
        let e = clone_audio(Surface::Enrollment, None).await.unwrap_err();
        assert_eq!(e.message(), "clone: set audio or url");
        let url = Sample::Url("ftp://example.com/a.wav".to_owned());
        let e = clone_audio(Surface::Enrollment, Some(&url))
            .await
            .unwrap_err();
        assert!(e.message().starts_with("clone.url: must be"), "{e}");
        let long = Sample::Url(format!("https://{}", "a".repeat(MAX_URL_CHARS)));
        let e = clone_audio(Surface::Enrollment, Some(&long))
            .await
            .unwrap_err();
        assert!(e.message().contains("exceeds the limit of 2048"), "{e}");
        let ok = Sample::Url("https://example.com/a.wav".to_owned());
        let (audio, upload) = clone_audio(Surface::Enrollment, Some(&ok)).await.unwrap();
        assert_eq!(
            (audio.as_str(), upload.is_none()),
            ("https://example.com/a.wav", true)
        );
        let ogg = Sample::Audio(b"OggS0000000000000".to_vec());
        let e = clone_audio(Surface::QwenClone, Some(&ogg))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.message().starts_with("clone.audio"), "{e}");

        let m = "cosyvoice-v3-flash";
        check_design(Surface::Enrollment, m, "calm", "hello").unwrap();
        let e = check_design(Surface::Enrollment, m, &"x".repeat(501), "hi").unwrap_err();
        assert!(e.message().starts_with("design.description: 501"), "{e}");
        assert!(e.message().contains("500"), "{e}");
        check_design(Surface::QwenDesign, m, &"x".repeat(2048), "hi").unwrap();
        let e = check_design(Surface::Enrollment, m, "calm", &"x".repeat(201)).unwrap_err();
        assert!(e.message().starts_with("design.preview_text: 201"), "{e}");
        let e = check_design(Surface::Enrollment, m, " ", "hi").unwrap_err();
        assert_eq!(e.message(), "design.description: required");
        let e = check_design(Surface::Enrollment, m, "calm", "").unwrap_err();
        assert_eq!(e.message(), "design.preview_text: required");
    }

    #[test]
    fn warnings_say_why_a_voice_may_disappoint() {
        let outcome = |fallback: Option<&str>, adopted| Outcome {
            voice_id: "v".to_owned(),
            upstream: dashscope::custom::Created {
                fallback_reason: fallback.map(str::to_owned),
                ..Default::default()
            },
            adopted,
        };
        assert_eq!(outcome(None, false).warning(), "");
        assert!(
            outcome(Some("short sample"), false)
                .warning()
                .contains("fallback mode (short sample)")
        );
        assert!(outcome(None, true).warning().contains("answer was lost"));
    }
}
