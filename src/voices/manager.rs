//! The custom-voice manager: get, delete and list the voices herald made (create is in
//! `voices::create`), and the check a synthesis with a custom voice passes before any upstream
//! call.
//!
//! It owns the life of a record (DEPLOYING → READY | FAILED, then a tombstone) and the
//! classification of upstream failures for clients.
//!
//! Voices that exist upstream but have no record (a create cut short by a crash, a record the
//! disk could not take, a voice made elsewhere with the same key) are adopted: by every
//! ListVoices, and by a GetVoice/DeleteVoice that names one (not at start: a start costs no
//! upstream call). An adopted
//! record carries [`ADOPTED_WARNING`]. A record the registry file cannot take is kept in memory
//! and logged; the client gets its answer (with a warning on a create). It takes and returns domain types
//! ([`Record`], [`Deleted`], [`ListedVoice`]) and fails with [`crate::error::Error`]. It must
//! not build wire bodies (`engine::dashscope::custom` does) or know any door's wire format.

use std::{sync::Arc, time::Duration};

use crate::engine::dashscope::custom::UpstreamVoice;

use tokio::time::Instant;

use super::{
    Settings, VoiceKind,
    registry::{Record, Registry, VoiceStatus, now_ms},
    surface::{Surface, truncate},
};
use crate::{
    engine::{EngineError, dashscope},
    error::Error,
};

/// How long ListVoices waits for upstream's listings (all at once): a daemon whose upstream is
/// down or unreachable still answers its local voices in well under a second, and says which
/// listing is missing.
const LIST_TIMEOUT: Duration = Duration::from_millis(800);

/// How long a GetVoice/DeleteVoice of a voice herald has no record of looks for it upstream
/// (within the call's deadline).
const ADOPT_ON_DEMAND: Duration = Duration::from_secs(5);

/// The warning of an adopted record.
pub const ADOPTED_WARNING: &str = "adopted from upstream's listing: herald has no record of \
    creating it (a create cut short by a crash or a full disk, or a voice made elsewhere with \
    the same key); its description and preview, if any, are not known";

/// What a DeleteVoice did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deleted {
    /// The voice.
    pub name: String,
    /// Upstream no longer had it (deleted elsewhere, or never finished).
    pub already_gone_upstream: bool,
}

/// The custom voices of a ListVoices answer, and the upstream listings it lacks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// The voices.
    pub voices: Vec<ListedVoice>,
    /// Each listing that failed or did not answer in time, as "SOURCE: why".
    pub missing: Vec<String>,
}

/// A custom voice as ListVoices shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedVoice {
    /// Upstream's id, what synthesis takes.
    pub name: String,
    /// The requested name for voices herald made, else the id.
    pub display_name: String,
    /// The model it works with.
    pub model: String,
    /// Its language, or empty.
    pub language: String,
    /// Its state.
    pub status: VoiceStatus,
}

/// The custom-voice service state: the registry and the upstream client.
#[derive(Debug)]
pub struct Manager {
    pub(super) registry: Arc<Registry>,
    client: Option<Arc<dashscope::Client>>,
    pub(super) settings: Settings,
}

impl Manager {
    /// A manager over the registry in `settings.directory` and the DashScope client, if any.
    pub fn open(
        settings: Settings,
        client: Option<Arc<dashscope::Client>>,
    ) -> std::io::Result<Self> {
        let registry = Arc::new(Registry::open(settings.directory.clone())?);
        Ok(Self {
            registry,
            client,
            settings,
        })
    }

    /// A manager with no registry and no upstream (tests, embedding).
    pub fn disabled() -> Self {
        Self {
            registry: Arc::new(Registry::in_memory()),
            client: None,
            settings: Settings::default(),
        }
    }

    pub(super) fn client(&self) -> Result<&Arc<dashscope::Client>, Error> {
        self.client.as_ref().ok_or_else(|| {
            Error::failed_precondition(
                "custom voices need DashScope: configure dashscope.api_key (DASHSCOPE_API_KEY)",
            )
        })
    }

    /// The check of a Synthesize/Speak voice against the registry, before any upstream call.
    /// Returns the model to use (the voice's own when `model` is empty), or `None` when the
    /// voice is not a custom voice herald knows.
    pub fn check_synthesis(&self, voice: &str, model: &str) -> Result<Option<String>, Error> {
        let Some(r) = self.registry.get(voice) else {
            return Ok(None);
        };
        if r.deleted_at_ms.is_some() {
            return Err(Error::invalid(format!(
                "voice: custom voice {voice:?} was deleted (DeleteVoice); create a new one"
            )));
        }
        if !model.is_empty() && model != r.target_model {
            return Err(Error::invalid(format!(
                "voice: custom voice {voice:?} works only with model {:?} (its target model), \
                 not {:?}",
                r.target_model,
                truncate(model, 64)
            )));
        }
        if r.status == VoiceStatus::Failed {
            return Err(Error::failed_precondition(format!(
                "voice: custom voice {voice:?} was rejected upstream (FAILED); delete it and \
                 create another"
            )));
        }
        Ok(Some(r.target_model))
    }

    /// Custom voices for ListVoices: the registry's, plus upstream's listings (voices made
    /// elsewhere with the same key), asked for at once and awaited at most [`LIST_TIMEOUT`]. A
    /// listing that fails or is late is logged and named in [`Listing::missing`].
    /// `model`: the request's filter; a model DashScope does not serve skips the listings.
    pub async fn list(&self, model: &str) -> Listing {
        let mut out = Listing {
            voices: self.registry.live().into_iter().map(listed_voice).collect(),
            missing: Vec::new(),
        };
        let Some(client) = &self.client else {
            return out;
        };
        if !model.is_empty() && dashscope::Family::for_model(model).is_none() {
            return out;
        }
        let deadline = Instant::now() + LIST_TIMEOUT;
        let listings = Surface::ALL.map(|surface| async move {
            let listed = tokio::time::timeout_at(deadline, client.list_voices(surface, deadline))
                .await
                .map_err(|_| {
                    format!(
                        "DeadlineExceeded: no answer within {} ms",
                        LIST_TIMEOUT.as_millis()
                    )
                })
                .and_then(|r| {
                    r.map_err(|e| {
                        tracing::debug!(error = %crate::error::chain(&e), "listing failed");
                        let status = classify(&e);
                        format!("{:?}: {}", status.kind(), status.message())
                    })
                });
            (surface, listed)
        });
        for (surface, listed) in futures::future::join_all(listings).await {
            match listed {
                Ok(items) => {
                    for v in items {
                        if out.voices.iter().any(|o| o.name == v.id)
                            || !adopt(&self.registry, surface, &v)
                        {
                            continue;
                        }
                        if let Some(r) = self.registry.get(&v.id) {
                            out.voices.push(listed_voice(r));
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(surface = surface.model(), %error, "cannot list custom voices upstream");
                    out.missing
                        .push(format!("custom voices of {}: {error}", surface.model()));
                }
            }
        }
        out
    }

    /// GetVoice: the record, its status refreshed from upstream while DEPLOYING.
    pub async fn get(&self, name: &str, deadline: Instant) -> Result<Record, Error> {
        let r = self.known_record(name, deadline).await?;
        if !polls(&r) {
            return Ok(r);
        }
        let client = self.client()?;
        let status = client
            .query_voice(name, deadline)
            .await
            .map_err(|e| classify(&e))?;
        self.set_status(name, status)?;
        self.live_record(name)
    }

    pub(super) fn live_record(&self, name: &str) -> Result<Record, Error> {
        if name.is_empty() {
            return Err(Error::invalid("name: required"));
        }
        match self.registry.get(name) {
            Some(r) if r.deleted_at_ms.is_none() => Ok(r),
            _ => Err(Error::not_found(format!(
                "name: herald has no custom voice {:?} (ListVoices lists them)",
                truncate(name, 256)
            ))),
        }
    }

    /// The live record of `name`; one herald has none of (and no tombstone) is looked for in
    /// upstream's listing of the surface its id belongs to, and adopted.
    async fn known_record(&self, name: &str, deadline: Instant) -> Result<Record, Error> {
        let missing = match self.live_record(name) {
            Err(e) if self.registry.get(name).is_none() && self.client.is_some() => e,
            found => return found,
        };
        let Some(client) = &self.client else {
            return Err(missing);
        };
        let surface = Surface::of_id(name);
        let until = deadline.min(Instant::now() + ADOPT_ON_DEMAND);
        match tokio::time::timeout_at(until, client.list_voices(surface, until)).await {
            Ok(Ok(items)) => {
                if let Some(v) = items.iter().find(|v| v.id == name) {
                    adopt(&self.registry, surface, v);
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %crate::error::chain(&e), "cannot list upstream to look for an unknown voice");
            }
            Err(_) => tracing::debug!("no upstream listing in time to look for an unknown voice"),
        }
        self.live_record(name).map_err(|_| missing)
    }

    /// Record a new status. A registry file that cannot be written is logged; the status is
    /// kept in memory.
    pub(super) fn set_status(&self, name: &str, status: VoiceStatus) -> Result<(), Error> {
        if let Err(e) = self.registry.update(name, |r| r.status = status) {
            tracing::warn!(voice = %name, error = %e, "cannot write the voice registry; the new status is kept in memory");
        }
        Ok(())
    }

    /// DeleteVoice: upstream first (through the voice's surface), then the registry (a
    /// tombstone).
    pub async fn delete(&self, name: &str, deadline: Instant) -> Result<Deleted, Error> {
        let r = self.known_record(name, deadline).await?;
        let client = self.client()?;
        let gone = client
            .delete_voice(r.surface, name, deadline)
            .await
            .map_err(|e| classify(&e))?;
        if let Err(e) = self
            .registry
            .update(name, |r| r.deleted_at_ms = Some(now_ms()))
        {
            // Deleted upstream: the client's answer is that. After a restart the old record
            // is back; a DeleteVoice then finds the voice gone upstream.
            tracing::warn!(voice = %name, error = %e, "cannot write the voice registry; the deletion is kept in memory");
        }
        Ok(Deleted {
            name: name.to_owned(),
            already_gone_upstream: gone,
        })
    }
}

/// Whether GetVoice asks upstream for `r`'s state: only while a `voice-enrollment` voice is
/// DEPLOYING.
fn polls(r: &Record) -> bool {
    r.status == VoiceStatus::Deploying && r.surface == Surface::Enrollment
}

/// What an upstream customization failure means for the client: the surface's own codes
/// first (quota full → RESOURCE_EXHAUSTED; a rejected sample → INVALID_ARGUMENT with
/// upstream's message), then the engine's classification.
pub fn classify(error: &EngineError) -> Error {
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
            return Error::resource_exhausted(format!(
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
            return Error::invalid(format!(
                "clone: upstream rejected the sample audio ({cause}): {message}"
            ));
        }
    }
    error.classify()
}

/// A record as ListVoices shows it.
fn listed_voice(r: Record) -> ListedVoice {
    ListedVoice {
        display_name: if r.requested_name.is_empty() {
            r.name.clone()
        } else {
            r.requested_name
        },
        name: r.name,
        model: r.target_model,
        language: r.language,
        status: r.status,
    }
}

/// Adopt `v`, listed upstream on `surface`, unless the registry has a record of it (live or
/// a tombstone). `true` when it was adopted now.
fn adopt(registry: &Registry, surface: Surface, v: &UpstreamVoice) -> bool {
    let rest = v.id.strip_prefix(&v.target_model).unwrap_or(&v.id);
    let kind = match surface {
        Surface::QwenDesign => VoiceKind::Design,
        Surface::QwenClone => VoiceKind::Clone,
        Surface::Enrollment if rest.starts_with("-vd-") => VoiceKind::Design,
        Surface::Enrollment => VoiceKind::Clone,
    };
    let record = Record {
        name: v.id.clone(),
        target_model: v.target_model.clone(),
        surface,
        kind,
        requested_name: requested_name_of(surface, &v.id, &v.target_model),
        created_at_ms: now_ms(),
        status: v.status,
        language: String::new(),
        description: String::new(),
        preview_wav_b64: String::new(),
        warning: ADOPTED_WARNING.to_owned(),
        deleted_at_ms: None,
    };
    let adopted = match registry.put_new(record) {
        Ok(adopted) => adopted,
        Err(e) => {
            tracing::warn!(voice = %v.id, error = %e, "cannot write the voice registry; the adopted voice is kept in memory");
            true
        }
    };
    if adopted {
        tracing::info!(voice = %v.id, surface = surface.model(), "adopted a custom voice found upstream that herald had no record of");
    }
    adopted
}

/// The prefix / preferred name a voice was created with, read back from its id
/// (`{model}-[vd-]{prefix}-{uuid}`, `qwen-tts-v[cd]-{name}-voice-{time}-{hex}`); empty when the
/// id has another shape.
fn requested_name_of(surface: Surface, id: &str, target_model: &str) -> String {
    let name = match surface {
        Surface::Enrollment => id
            .strip_prefix(target_model)
            .and_then(|r| r.strip_prefix('-'))
            .map(|r| r.strip_prefix("vd-").unwrap_or(r))
            .and_then(|r| r.split_once('-'))
            .map(|(name, _)| name),
        Surface::QwenClone | Surface::QwenDesign => id
            .strip_prefix("qwen-tts-vc-")
            .or_else(|| id.strip_prefix("qwen-tts-vd-"))
            .and_then(|r| r.rsplit_once("-voice-"))
            .map(|(name, _)| name),
    };
    name.unwrap_or_default().to_owned()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::voices::VoiceKind;

    fn record(name: &str, surface: Surface, status: VoiceStatus) -> Record {
        Record {
            name: name.to_owned(),
            target_model: "cosyvoice-v3-flash".to_owned(),
            surface,
            kind: VoiceKind::Clone,
            requested_name: "kiosk".to_owned(),
            created_at_ms: 1,
            status,
            language: "zh".to_owned(),
            description: String::new(),
            preview_wav_b64: String::new(),
            warning: String::new(),
            deleted_at_ms: None,
        }
    }

    /// A manager over a registry in a fresh directory, with no upstream.
    pub(in crate::voices) fn manager(records: Vec<Record>) -> (Manager, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings {
            directory: Some(dir.path().to_owned()),
            ..Settings::default()
        };
        let m = Manager::open(settings, None).unwrap();
        for r in records {
            m.registry.put(r).unwrap();
        }
        (m, dir)
    }

    fn api(status: u16, code: &str, message: &str) -> EngineError {
        EngineError::Api {
            status,
            code: Some(code.to_owned()),
            message: message.to_owned(),
            request_id: Some("rid-9".to_owned()),
        }
    }

    /// A deadline no test reaches.
    pub(in crate::voices) fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn synthesis_checks_the_voice_against_the_registry() {
        let mut deleted = record("gone", Surface::Enrollment, VoiceStatus::Ready);
        deleted.deleted_at_ms = Some(2);
        let (m, _dir) = manager(vec![
            record("ready", Surface::Enrollment, VoiceStatus::Ready),
            record("training", Surface::Enrollment, VoiceStatus::Deploying),
            record("rejected", Surface::Enrollment, VoiceStatus::Failed),
            deleted,
        ]);
        assert_eq!(
            m.check_synthesis("longxiaochun", "cosyvoice-v3-flash"),
            Ok(None)
        );
        assert_eq!(
            m.check_synthesis("ready", ""),
            Ok(Some("cosyvoice-v3-flash".to_owned())),
            "an empty model takes the voice's"
        );
        assert_eq!(
            m.check_synthesis("training", "cosyvoice-v3-flash"),
            Ok(Some("cosyvoice-v3-flash".to_owned())),
            "a DEPLOYING voice is tried (upstream decides)"
        );
        let e = m.check_synthesis("ready", "cosyvoice-v3-plus").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(
            e.message()
                .contains("works only with model \"cosyvoice-v3-flash\""),
            "{e}"
        );
        let e = m.check_synthesis("gone", "").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.message().contains("deleted"), "{e}");
        let e = m.check_synthesis("rejected", "").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::FailedPrecondition);
        assert!(e.message().contains("FAILED"), "{e}");
    }

    #[test]
    fn upstream_failures_are_classified_for_clients() {
        let e = classify(&api(400, "Throttling.AllocationQuota", "full"));
        assert_eq!(e.kind(), ErrorKind::ResourceExhausted);
        for w in [
            "quota",
            "Throttling.AllocationQuota",
            "rid-9",
            "DeleteVoice",
        ] {
            assert!(e.message().contains(w), "{w} not in {e}");
        }
        let e = classify(&api(
            400,
            "Audio.AudioSilentError",
            "Silent file unsupported.",
        ));
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(
            e.message()
                .starts_with("clone: upstream rejected the sample audio"),
            "{e}"
        );
        assert!(e.message().ends_with(": Silent file unsupported."), "{e}");
        for (code, message) in [
            ("BadRequest.UnsupportedFileFormat", "m"),
            ("BadRequest.InputDownloadFailed", "m"),
            ("InternalError", "audio preprocess failed"),
        ] {
            let e = classify(&api(400, code, message));
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{code}");
        }
        // Everything else as any engine failure.
        for (status, code, kind) in [
            (401, "InvalidApiKey", ErrorKind::FailedPrecondition),
            (429, "Throttling.RateQuota", ErrorKind::ResourceExhausted),
            (503, "ServiceUnavailable", ErrorKind::Unavailable),
            (500, "InternalError", ErrorKind::Unavailable),
            (400, "InvalidParameter", ErrorKind::InvalidArgument),
        ] {
            let error = api(status, code, "scripted");
            assert_eq!(classify(&error), error.classify(), "{code}");
            assert_eq!(classify(&error).kind(), kind, "{code}");
        }
        assert_eq!(
            classify(&EngineError::Protocol("x".into())).kind(),
            ErrorKind::Internal
        );
    }

    #[tokio::test]
    async fn a_record_lives_deploying_then_ready_or_failed_then_as_a_tombstone() {
        assert!(polls(&record(
            "a",
            Surface::Enrollment,
            VoiceStatus::Deploying
        )));
        assert!(!polls(&record(
            "a",
            Surface::Enrollment,
            VoiceStatus::Ready
        )));
        assert!(!polls(&record(
            "a",
            Surface::QwenClone,
            VoiceStatus::Deploying
        )));

        let (m, dir) = manager(vec![
            record("a", Surface::Enrollment, VoiceStatus::Deploying),
            record("b", Surface::QwenClone, VoiceStatus::Ready),
        ]);
        // Settled voices are answered from the registry, with no upstream at all.
        assert_eq!(m.get("b", far()).await.unwrap().status, VoiceStatus::Ready);
        // A DEPLOYING one needs upstream to be refreshed.
        let e = m.get("a", far()).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::FailedPrecondition);
        m.set_status("a", VoiceStatus::Ready).unwrap();
        assert_eq!(m.get("a", far()).await.unwrap().status, VoiceStatus::Ready);
        let reopened = Registry::open(Some(dir.path().to_owned())).unwrap();
        assert_eq!(reopened.get("a").unwrap().status, VoiceStatus::Ready);
        m.registry
            .update("a", |r| r.deleted_at_ms = Some(3))
            .unwrap();
        let e = m.get("a", far()).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(
            e.message().starts_with("name: herald has no custom voice"),
            "{e}"
        );
        assert_eq!(
            m.get("", far()).await.unwrap_err().message(),
            "name: required"
        );
        let e = m.delete("b", far()).await.unwrap_err();
        assert_eq!(
            e.kind(),
            ErrorKind::FailedPrecondition,
            "delete needs upstream"
        );
        assert_eq!(
            m.delete("a", far()).await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
    }

    #[tokio::test]
    async fn listing_shows_live_records_under_their_requested_names() {
        let mut gone = record("gone", Surface::Enrollment, VoiceStatus::Ready);
        gone.deleted_at_ms = Some(1);
        let mut unnamed = record("unnamed", Surface::QwenClone, VoiceStatus::Ready);
        unnamed.requested_name.clear();
        let (m, _dir) = manager(vec![
            record("a", Surface::Enrollment, VoiceStatus::Deploying),
            gone,
            unnamed,
        ]);
        let listed = m.list("").await;
        assert!(listed.missing.is_empty());
        assert_eq!(
            listed.voices,
            vec![
                ListedVoice {
                    name: "a".to_owned(),
                    display_name: "kiosk".to_owned(),
                    model: "cosyvoice-v3-flash".to_owned(),
                    language: "zh".to_owned(),
                    status: VoiceStatus::Deploying,
                },
                ListedVoice {
                    name: "unnamed".to_owned(),
                    display_name: "unnamed".to_owned(),
                    model: "cosyvoice-v3-flash".to_owned(),
                    language: "zh".to_owned(),
                    status: VoiceStatus::Ready,
                },
            ]
        );
    }

    #[test]
    fn adopted_voices_get_their_kind_and_requested_name_from_the_id() {
        let (m, dir) = manager(vec![]);
        let listed = |id: &str, model: &str| UpstreamVoice {
            id: id.to_owned(),
            target_model: model.to_owned(),
            status: VoiceStatus::Deploying,
        };
        let cases = [
            (
                Surface::Enrollment,
                listed("cosyvoice-v3-flash-kiosk-0123abcd", "cosyvoice-v3-flash"),
                VoiceKind::Clone,
                "kiosk",
            ),
            (
                Surface::Enrollment,
                listed("cosyvoice-v3-flash-vd-calm-0123abcd", "cosyvoice-v3-flash"),
                VoiceKind::Design,
                "calm",
            ),
            (
                Surface::QwenClone,
                listed(
                    "qwen-tts-vc-my_voice-voice-20261207-1a2b",
                    "qwen3-tts-vc-2026-01-22",
                ),
                VoiceKind::Clone,
                "my_voice",
            ),
            (
                Surface::QwenDesign,
                listed("qwen-tts-vd-x-voice-1-ff", "qwen3-tts-vd-2026-01-26"),
                VoiceKind::Design,
                "x",
            ),
            (
                Surface::Enrollment,
                listed("odd", "cosyvoice-v2"),
                VoiceKind::Clone,
                "",
            ),
        ];
        for (surface, v, kind, name) in cases {
            assert_eq!(Surface::of_id(&v.id), surface, "{}", v.id);
            assert!(adopt(&m.registry, surface, &v), "{}", v.id);
            assert!(!adopt(&m.registry, surface, &v), "once: {}", v.id);
            let r = m.registry.get(&v.id).unwrap();
            assert_eq!(
                (r.kind, r.requested_name.as_str()),
                (kind, name),
                "{}",
                v.id
            );
            assert_eq!((r.surface, r.status), (surface, VoiceStatus::Deploying));
            assert_eq!(r.warning, ADOPTED_WARNING);
        }
        // Persisted; a tombstone is never adopted again.
        let reopened = Registry::open(Some(dir.path().to_owned())).unwrap();
        assert_eq!(reopened.live().len(), 5);
        m.registry
            .update("odd", |r| r.deleted_at_ms = Some(1))
            .unwrap();
        assert!(!adopt(
            &m.registry,
            Surface::Enrollment,
            &listed("odd", "cosyvoice-v2")
        ));
        assert!(m.registry.get("odd").unwrap().deleted_at_ms.is_some());
    }
}
