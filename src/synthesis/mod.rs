//! The synthesis core: the one owner of a synthesis job, below every door.
//!
//! A door (gRPC `Synthesize`/`Speak`/`WarmCache`, and the HTTP and Wyoming doors to come)
//! translates its wire request into a [`Request`], and then:
//! - [`Core::synthesize`] validates it ([`Core::prepare`]), admits it under herald's limits,
//!   sets its deadline, and starts the [`Job`]: the door maps the [`Event`]s it yields;
//! - [`Core::prepare`] + [`start`] run a job with no admission (playback's announcements);
//! - [`Core::prepare`] + [`Core::warm`] put a phrase in the cache.
//!
//! Every error is a domain [`Error`]; a door maps it once to its wire format. This module must
//! not depend on tonic, prost, the generated `pb` types, or any door.

mod job;
mod limits;
mod request;

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use self::{
    job::{Event, Events, Info, Job, Start, Summary, start},
    limits::Slots,
    request::{
        CHUNK_MS_RANGE, DEFAULT_CHUNK_MS, MAX_DICT_ENTRIES, MAX_DICT_KEY_CHARS,
        MAX_DICT_VALUE_CHARS, MAX_EMOTION_CHARS, MAX_INSTRUCTIONS_CHARS, MAX_LANGUAGE_CHARS,
        MAX_REQUEST_ID_CHARS, MAX_VOLUME, PROSODY_RANGE, Request, truncate, volume,
    },
};
use crate::{
    error::Error,
    metrics::metrics,
    provider::{Provider, WarmError, Warmed},
    voices,
};

/// Events buffered per `Synthesize` stream between the job and the door.
const EVENTS_IN_FLIGHT: usize = 16;

/// Request defaults and limits, from the configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Model used when a request names none.
    pub default_model: String,
    /// Voice used with the default model when a request names none (`None` = engine default).
    pub default_voice: Option<String>,
    /// Longest accepted text, in Unicode scalar values.
    pub max_text_chars: usize,
    /// Most `Synthesize` streams at once.
    pub max_concurrent: usize,
    /// Most `Synthesize` streams of one peer at once.
    pub max_concurrent_per_peer: usize,
    /// Longest request deadline (also the deadline of requests that set none).
    pub max_deadline: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            default_model: crate::engine::espeak::MODEL.to_owned(),
            default_voice: None,
            max_text_chars: 20_000,
            max_concurrent: 64,
            max_concurrent_per_peer: 32,
            max_deadline: Duration::from_secs(300),
        }
    }
}

/// The core: the provider (cache, engines, fallback), custom voices, the settings and the
/// admission limits. Shared by every door.
pub struct Core {
    provider: Arc<Provider>,
    voices: Arc<voices::Manager>,
    settings: Settings,
    limits: limits::Limits,
    /// Cancelled at shutdown; every job runs under a child token.
    root: CancellationToken,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("provider", &self.provider)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Core {
    /// A core over `provider` and `voices`; its jobs are cancelled when `root` is.
    pub fn new(
        provider: Arc<Provider>,
        voices: Arc<voices::Manager>,
        settings: Settings,
        root: CancellationToken,
    ) -> Self {
        Self {
            limits: limits::Limits::new(settings.max_concurrent, settings.max_concurrent_per_peer),
            provider,
            voices,
            settings,
            root,
        }
    }

    /// The provider jobs go through.
    pub fn provider(&self) -> &Arc<Provider> {
        &self.provider
    }

    /// Custom voices.
    pub fn voices(&self) -> &Arc<voices::Manager> {
        &self.voices
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The token every job runs under (a child of it).
    pub fn root(&self) -> &CancellationToken {
        &self.root
    }

    /// The model label a request is counted under in the metrics: a model no engine serves
    /// is `unknown`, so clients cannot grow the metrics without bound.
    pub fn model_label(&self, asked: &str) -> String {
        match self.provider.engines().for_model(asked) {
            Some(_) => asked.to_owned(),
            None if asked.is_empty() => self.settings.default_model.clone(),
            None => "unknown".to_owned(),
        }
    }

    /// A `Synthesize` job: validate `request`, admit it for `peer` (the door's name for the
    /// caller), give it the client's deadline (`asked`, capped at `synthesis.max_deadline_ms`)
    /// and start it. Refusals are counted in the metrics here.
    pub fn synthesize(
        &self,
        request: Request,
        peer: String,
        asked: Option<Duration>,
    ) -> Result<Events, Error> {
        let received = Instant::now();
        let label = self.model_label(&request.model);
        self.admit(request, peer, asked, received, label.clone())
            .inspect_err(|e| metrics().outcome(&label, "", Err(e.kind())))
    }

    fn admit(
        &self,
        request: Request,
        peer: String,
        asked: Option<Duration>,
        received: Instant,
        label: String,
    ) -> Result<Events, Error> {
        let max = self.settings.max_deadline;
        let capped = asked.is_none_or(|d| d > max);
        let deadline_message = if capped {
            format!(
                "deadline exceeded: synthesis.max_deadline_ms limits a request to {} ms",
                max.as_millis()
            )
        } else {
            "deadline exceeded before synthesis finished".to_owned()
        };
        let deadline = received.checked_add(asked.map_or(max, |d| d.min(max)));
        let job = self.prepare(request)?;
        let slots = self.limits.admit(peer)?;
        tracing::debug!(request_id = %job.request.request_id, model = %job.request.model, voice = %job.request.voice, "synthesize");
        Ok(start(
            Arc::clone(&self.provider),
            job,
            Start {
                cancel: self.root.child_token(),
                deadline: deadline.map(|d| (d, deadline_message)),
                received,
                buffer: EVENTS_IN_FLIGHT,
                metrics_model: Some(label),
                slots: Some(slots),
            },
        ))
    }

    /// Put `job`'s audio in the cache unless it is there (or `refresh`): `WarmCache`.
    pub async fn warm(&self, job: Job, refresh: bool) -> Result<Warmed, WarmError> {
        self.provider.warm(job.request, job.engine, refresh).await
    }
}
