//! Where a request's audio comes from: the cache, the requested engine, or a fallback.
//!
//! [`Provider::open`] is what `Synthesize` and `Speak` call instead of an engine: it resolves
//! once some source has accepted the request, with an engine stream and a [`Served`] saying
//! which source that is. In order:
//!
//! 1. the cache (policy USE): a hit is replayed from disk, with no upstream call;
//! 2. the requested engine, through the cache's single flight when the phrase is cacheable (so
//!    concurrent identical requests share one upstream call and the result is stored once);
//! 3. the fallback chain (`[fallback] chain`), when the request allows it and step 2 either
//!    failed before any audio with a status a retry elsewhere can fix (UNAVAILABLE,
//!    RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED), or sent no audio within its budget ([`fallback_at`]:
//!    `fallback.first_audio_budget_ms`, or half the time left before the deadline, whichever is
//!    first; a hung upstream must not mean silence): `cache` (the same text in another voice of
//!    the same language), then models such as `piper` and `espeak-ng` (a voice of the request's
//!    language, options it cannot honour dropped; a model with no voice for it is skipped,
//!    except the chain's last). The language is the request's `language`, else its voice's (for
//!    a voice of several languages, the one the text's script is written in), else the text's
//!    script's (`crate::engine::language`). A fallback that opens drops the engine's attempt and
//!    its upstream request.
//!
//! A failure is "before any audio" because [`Provider::open`] waits for the first event of the
//! stream: an error there has sent nothing to the client yet. The provider must not run the
//! pipeline or know the client's format: the synthesis core does.

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;

use crate::{
    cache::{self, Cache, store::EntryStatus},
    engine::{
        EngineError, Engines, SynthEvent, SynthStream, SynthesisRequest, Synthesizer, language,
    },
    error::chain,
};
use futures::StreamExt;

/// One validated step of the fallback chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FallbackStep {
    /// The same text from the cache, in any voice.
    Cache,
    /// A model, with a voice or the best match for the request's language.
    Model {
        /// The model.
        model: String,
        /// The voice, if the step names one.
        voice: Option<String>,
    },
}

/// What a request says about the cache (`SynthesizeRequest.cache`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CachePolicy {
    /// Serve a hit; store a miss.
    #[default]
    Use,
    /// Never serve a hit; synthesize and replace the entry.
    Refresh,
    /// Neither read nor write the cache.
    Bypass,
}

/// Per-request choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// The cache policy.
    pub cache: CachePolicy,
    /// Whether the fallback chain may serve the request.
    pub fallback: bool,
    /// How long the requested engine may go without audio before the fallback chain is tried
    /// (`fallback.first_audio_budget_ms`).
    pub first_audio_budget: Duration,
}

/// Default of `fallback.first_audio_budget_ms`: DashScope's first audio normally comes
/// 0.4–0.7 s after the request (measured, see `dashscope-api.md`), so 1.5 s is under a second
/// beyond it.
pub const DEFAULT_FIRST_AUDIO_BUDGET: Duration = Duration::from_millis(1500);

impl Default for Options {
    fn default() -> Self {
        Self {
            cache: CachePolicy::Use,
            fallback: true,
            first_audio_budget: DEFAULT_FIRST_AUDIO_BUDGET,
        }
    }
}

/// When the fallback chain starts for an attempt that began at `started` and has sent no
/// audio: after `budget`, or after half the time left before `deadline`, whichever is first (so
/// that waiting on the engine, its retries included, never spends the whole deadline and the
/// fallback has time to speak).
pub fn fallback_at(started: Instant, budget: Duration, deadline: Option<Instant>) -> Instant {
    let by_budget = started + budget;
    match deadline {
        Some(d) => by_budget.min(started + d.saturating_duration_since(started) / 2),
        None => by_budget,
    }
}

/// Which source serves a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    /// Engine that made the audio.
    pub engine: String,
    /// Its model.
    pub model: String,
    /// Its voice.
    pub voice: String,
    /// Rate of the audio the stream carries, Hz.
    pub native_sample_rate: u32,
    /// The audio comes from the cache.
    pub cache_hit: bool,
    /// Why the requested engine did not serve (`None`: it did).
    pub fallback_reason: Option<String>,
}

/// An accepted request: its source and its audio.
pub struct Opened {
    /// The source.
    pub served: Served,
    /// The audio, as an engine stream.
    pub stream: SynthStream,
}

/// What warming one phrase did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warmed {
    /// Its cache key.
    pub key: String,
    /// It was already cached (nothing synthesized).
    pub was_cached: bool,
    /// The entry now.
    pub status: EntryStatus,
    /// Its duration, ms.
    pub duration_ms: u64,
}

/// The cache, the engines and the fallback chain.
pub struct Provider {
    engines: Engines,
    cache: Option<Arc<Cache>>,
    fallback: Vec<FallbackStep>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("engines", &self.engines)
            .field("cache", &self.cache)
            .field("fallback", &self.fallback)
            .finish()
    }
}

/// The classified error when another source may succeed where `error` failed (UNAVAILABLE,
/// RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED).
fn falls_back(error: &EngineError) -> Option<crate::error::Error> {
    Some(error.classify()).filter(|e| e.kind().is_transient())
}

impl Provider {
    /// A provider over `engines`, with an optional cache and a fallback chain.
    pub fn new(engines: Engines, cache: Option<Arc<Cache>>, fallback: Vec<FallbackStep>) -> Self {
        Self {
            engines,
            cache,
            fallback,
        }
    }

    /// The engines.
    pub fn engines(&self) -> &Engines {
        &self.engines
    }

    /// The cache, when enabled.
    pub fn cache(&self) -> Option<&Arc<Cache>> {
        self.cache.as_ref()
    }

    /// Open `request` on `engine` (which serves `request.model`), falling back as configured.
    ///
    /// When a fallback may serve the request, the requested engine gets until
    /// [`Provider::fallback_at`] to produce its first audio: past it the chain is tried while
    /// the engine keeps going, and the first step that opens wins; the engine's attempt is then
    /// dropped, which drops its upstream request (a late answer is never used). When no step
    /// opens, the engine's attempt is awaited as if nothing had happened.
    pub async fn open(
        &self,
        request: SynthesisRequest,
        engine: Arc<dyn Synthesizer>,
        options: Options,
    ) -> Result<Opened, EngineError> {
        let may_fall_back = options.fallback && !self.fallback.is_empty();
        let mut primary =
            Box::pin(self.attempt(request.clone(), Arc::clone(&engine), options.cache));
        let error = if may_fall_back {
            let started = Instant::now();
            let at = fallback_at(started, options.first_audio_budget, request.deadline);
            tokio::select! {
                result = &mut primary => match result {
                    Ok(opened) => return Ok(opened),
                    Err(e) => e,
                },
                () = tokio::time::sleep_until(at) => {
                    let waited = at.saturating_duration_since(started);
                    let reason = format!(
                        "{} ({}) sent no audio within {} ms (fallback.first_audio_budget_ms, \
                         or half the time left before the deadline)",
                        request.model,
                        engine.name(),
                        waited.as_millis()
                    );
                    tracing::warn!(request_id = %request.request_id, %reason, "trying the fallback chain while the engine goes on");
                    if let Some(opened) = self.fall_back(&request, &engine, options, reason).await {
                        // Dropping `primary` drops the engine's stream and its upstream request.
                        drop(primary);
                        return Ok(opened);
                    }
                    // No step could serve: the engine's attempt is all there is.
                    return primary.await;
                }
            }
        } else {
            match primary.await {
                Ok(opened) => return Ok(opened),
                Err(e) => e,
            }
        };
        if !may_fall_back {
            return Err(error);
        }
        let Some(classified) = falls_back(&error) else {
            return Err(error);
        };
        let reason = format!(
            "{} ({}) failed: {}: {}",
            request.model,
            engine.name(),
            classified.kind().description(),
            classified.message()
        );
        tracing::warn!(request_id = %request.request_id, %reason, "trying the fallback chain");
        match self.fall_back(&request, &engine, options, reason).await {
            Some(opened) => Ok(opened),
            None => Err(error),
        }
    }

    /// Open `request` straight from the fallback chain, skipping `engine` (which failed
    /// earlier in the same streamed text, for `reason`): the later sentences of a
    /// `SynthesizeStream` fall back at a sentence boundary. `None` when the request forbids
    /// fallback or no step opens.
    pub async fn open_fallback(
        &self,
        request: &SynthesisRequest,
        engine: &Arc<dyn Synthesizer>,
        options: Options,
        reason: String,
    ) -> Option<Opened> {
        if !options.fallback {
            return None;
        }
        self.fall_back(request, engine, options, reason).await
    }

    /// The first step of the fallback chain that opens `request` (which `engine` did not serve
    /// for `reason`), or `None`.
    async fn fall_back(
        &self,
        request: &SynthesisRequest,
        engine: &Arc<dyn Synthesizer>,
        options: Options,
        reason: String,
    ) -> Option<Opened> {
        let language = language::resolve(
            request.language.as_deref(),
            &language::voice_languages(engine.as_ref(), &request.model, &request.voice),
            &request.text,
        );
        let last_model = self
            .fallback
            .iter()
            .rposition(|s| matches!(s, FallbackStep::Model { .. }));
        for (index, step) in self.fallback.iter().enumerate() {
            match step {
                FallbackStep::Cache => {
                    // BYPASS means the cache is not read, not even as a fallback.
                    let Some(cache) = self
                        .cache
                        .as_ref()
                        .filter(|_| options.cache != CachePolicy::Bypass)
                    else {
                        continue;
                    };
                    let same_language = |meta: &cache::entry::EntryMeta| {
                        self.entry_speaks(meta, &request.text, language.as_deref())
                    };
                    if let Some((_, entry)) = cache
                        .find_any_voice_where(&request.text, same_language)
                        .await
                    {
                        let served = Served {
                            engine: entry.meta.engine.clone(),
                            model: entry.meta.model.clone(),
                            voice: entry.meta.voice.clone(),
                            native_sample_rate: entry.meta.sample_rate,
                            cache_hit: true,
                            fallback_reason: Some(reason),
                        };
                        return Some(Opened {
                            served,
                            stream: cache::replay(entry, false),
                        });
                    }
                }
                FallbackStep::Model { model, voice } => {
                    let Some(alt) = self.engines.for_model(model) else {
                        continue;
                    };
                    let last = last_model == Some(index);
                    let Some(alt_request) =
                        self.adapt(request, alt, model, voice, language.as_deref(), last)
                    else {
                        continue;
                    };
                    if alt.name() == engine.name()
                        && alt_request.model == request.model
                        && alt_request.voice == request.voice
                    {
                        continue;
                    }
                    let policy = match options.cache {
                        CachePolicy::Bypass => CachePolicy::Bypass,
                        _ => CachePolicy::Use,
                    };
                    match self.attempt(alt_request, Arc::clone(alt), policy).await {
                        Ok(mut opened) => {
                            opened.served.fallback_reason = Some(reason);
                            return Some(opened);
                        }
                        Err(e) => {
                            tracing::warn!(
                                request_id = %request.request_id,
                                fallback = %model,
                                error = %chain(&e),
                                "fallback step failed"
                            );
                        }
                    }
                }
            }
        }
        None
    }

    /// `request` rewritten for the fallback model `model` on `alt`: the step's voice, else one
    /// speaking `language` (none: the step is skipped, unless it is the chain's `last` model,
    /// which then takes its default voice); options the model cannot honour are dropped.
    /// `None` when it still cannot take it.
    fn adapt(
        &self,
        request: &SynthesisRequest,
        alt: &Arc<dyn Synthesizer>,
        model: &str,
        voice: &Option<String>,
        language: Option<&str>,
        last: bool,
    ) -> Option<SynthesisRequest> {
        let voice = match voice {
            Some(v) => v.clone(),
            None => match language.and_then(|l| language::voice_for(alt.as_ref(), model, l)) {
                Some(v) => v,
                None if language.is_none() || last => alt.default_voice(model),
                None => return None,
            },
        };
        alt.check_voice(model, &voice).ok()?;
        let mut out = SynthesisRequest {
            voice,
            model: model.to_owned(),
            instructions: None,
            emotion: None,
            seed: None,
            pronunciations: Vec::new(),
            replacements: Vec::new(),
            optimize_instructions: false,
            ..request.clone()
        };
        if alt.check_request(&out).is_err() {
            out.word_timestamps = false;
            out.language = None;
            out.pitch = 1.0;
            out.speaker = None;
        }
        alt.check_request(&out).ok()?;
        Some(out)
    }

    /// Whether the cached rendering `meta` of `text` is in `language` (any, when `None`): the
    /// language its voice gives the text, by the rules of [`language::resolve`].
    fn entry_speaks(
        &self,
        meta: &cache::entry::EntryMeta,
        text: &str,
        language: Option<&str>,
    ) -> bool {
        let Some(wanted) = language else {
            return true;
        };
        let voice_languages = self
            .engines
            .for_model(&meta.model)
            .map(|e| language::voice_languages(e.as_ref(), &meta.model, &meta.voice))
            .unwrap_or_default();
        language::resolve(None, &voice_languages, text)
            .is_some_and(|l| language::primary(&l) == language::primary(wanted))
    }

    /// One source: the cache and the engine (shared flight), or the engine alone.
    async fn attempt(
        &self,
        request: SynthesisRequest,
        engine: Arc<dyn Synthesizer>,
        policy: CachePolicy,
    ) -> Result<Opened, EngineError> {
        let native = engine.native_sample_rate(&request.model, &request.voice);
        let mut served = Served {
            engine: engine.name().to_owned(),
            model: request.model.clone(),
            voice: request.voice.clone(),
            native_sample_rate: native,
            cache_hit: false,
            fallback_reason: None,
        };
        let cache = self
            .cache
            .as_ref()
            .filter(|c| policy != CachePolicy::Bypass && c.accepts_text(&request.text));
        let stream = match cache {
            None => engine.synthesize(request).await?,
            Some(cache) => {
                let key = cache::key::key(engine.name(), &request);
                if policy == CachePolicy::Use
                    && let Some((entry, _)) = cache.lookup(&key, request.word_timestamps).await
                {
                    served.cache_hit = true;
                    served.native_sample_rate = entry.meta.sample_rate;
                    return Ok(Opened {
                        served,
                        stream: cache::replay(entry, request.word_timestamps),
                    });
                }
                join_flight(cache, key, engine, request).stream()
            }
        };
        Ok(Opened {
            served,
            stream: first_event(stream).await?,
        })
    }

    /// Synthesize `request` into the cache unless it is there (or `refresh`): what `herald cache
    /// warm` does for each phrase.
    pub async fn warm(
        &self,
        request: SynthesisRequest,
        engine: Arc<dyn Synthesizer>,
        refresh: bool,
    ) -> Result<Warmed, WarmError> {
        let cache = self.cache.as_ref().ok_or(WarmError::Disabled)?;
        if !cache.accepts_text(&request.text) {
            return Err(WarmError::TooLong(cache.max_text_chars()));
        }
        let key = cache::key::key(engine.name(), &request);
        if !refresh && let Some((entry, status)) = cache.peek(&key).await {
            return Ok(Warmed {
                key,
                was_cached: true,
                status,
                duration_ms: entry.duration_ms(),
            });
        }
        let subscription = join_flight(cache, key.clone(), engine, request);
        let stored = subscription.stored();
        let mut stream = subscription.stream();
        while let Some(event) = stream.next().await {
            event.map_err(WarmError::Engine)?;
        }
        drop(stream);
        let status = stored.await.map_err(WarmError::NotStored)?;
        let duration_ms = cache
            .peek(&key)
            .await
            .map_or(0, |(entry, _)| entry.duration_ms());
        Ok(Warmed {
            key,
            was_cached: false,
            status,
            duration_ms,
        })
    }
}

/// Join (or start) the shared upstream call that synthesizes `request` into the cache under
/// `key`: at the engine's own rate (the canonical form), one flight per key and word-timing
/// choice.
fn join_flight(
    cache: &Cache,
    key: String,
    engine: Arc<dyn Synthesizer>,
    mut request: SynthesisRequest,
) -> cache::flight::Subscription {
    request.output_sample_rate = engine.native_sample_rate(&request.model, &request.voice);
    let flight_key = format!("{key}/{}", u8::from(request.word_timestamps));
    let (subscription, _) = cache.flight(&flight_key, move || cache::flight::Start {
        engine,
        request,
        key,
    });
    subscription
}

/// Why a phrase could not be warmed.
#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    /// The cache is off.
    #[error("cache.enabled is false in the daemon's configuration")]
    Disabled,
    /// The text is longer than the cache takes.
    #[error("text: longer than cache.max_text_chars ({0}), so it is never cached")]
    TooLong(usize),
    /// The engine failed.
    #[error(transparent)]
    Engine(EngineError),
    /// herald's own admission limits refused the phrase (RESOURCE_EXHAUSTED naming the
    /// setting).
    #[error(transparent)]
    Refused(crate::error::Error),
    /// The audio was synthesized but not stored.
    #[error("not stored")]
    NotStored(#[source] cache::flight::NotStored),
}

/// Wait for the stream's first event: an error there is returned (nothing has been sent), an
/// event is put back in front.
async fn first_event(mut stream: SynthStream) -> Result<SynthStream, EngineError> {
    match stream.next().await {
        None => Err(EngineError::Truncated),
        Some(Err(e)) => Err(e),
        Some(Ok(event)) => Ok(
            futures::stream::once(async move { Ok::<SynthEvent, _>(event) })
                .chain(stream)
                .boxed(),
        ),
    }
}

#[cfg(test)]
mod tests {
    //! The first-audio budget on its own, in paused time: an engine that never answers, and a
    //! fallback engine that answers at once (or cannot serve).

    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use bytes::Bytes;

    use super::*;
    use crate::{
        audio::{AudioSpec, InputEncoding},
        engine::{SynthEvent, VoiceInfo},
    };

    /// Serves `model`: either one 20 ms piece of audio then the end, or (`hang`) a stream that
    /// never yields; `refuse` makes every call fail with RESOURCE_EXHAUSTED. `dropped` counts
    /// streams dropped.
    struct Fake {
        model: &'static str,
        hang: bool,
        refuse: bool,
        dropped: Arc<AtomicUsize>,
    }

    struct OnDrop(Arc<AtomicUsize>);

    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[async_trait::async_trait]
    impl Synthesizer for Fake {
        fn name(&self) -> &'static str {
            self.model
        }
        fn serves_model(&self, model: &str) -> bool {
            model == self.model
        }
        fn default_voice(&self, _: &str) -> String {
            "v".into()
        }
        fn voices(&self) -> Vec<VoiceInfo> {
            vec![VoiceInfo {
                name: "v".into(),
                display_name: "V".into(),
                languages: vec!["en".into()],
                gender: String::new(),
                model: self.model.into(),
                native_sample_rate: 16_000,
            }]
        }
        fn native_sample_rate(&self, _: &str, _: &str) -> u32 {
            16_000
        }
        async fn synthesize(&self, _: SynthesisRequest) -> Result<SynthStream, EngineError> {
            if self.refuse {
                return Err(EngineError::Busy {
                    engine: "fake",
                    setting: "fake.max",
                    limit: 0,
                });
            }
            let guard = OnDrop(Arc::clone(&self.dropped));
            if self.hang {
                return Ok(futures::stream::pending()
                    .map(move |e| {
                        let _ = &guard;
                        e
                    })
                    .boxed());
            }
            let spec = AudioSpec {
                sample_rate: 16_000,
                channels: 1,
            };
            let events = vec![
                Ok(SynthEvent::Audio {
                    encoding: InputEncoding::Pcm16Le(spec),
                    data: Bytes::from(vec![0u8; 640]),
                }),
                Ok(SynthEvent::Finished {
                    characters: None,
                    upstream_request_ids: Vec::new(),
                }),
            ];
            Ok(futures::stream::iter(events)
                .map(move |e| {
                    let _ = &guard;
                    e
                })
                .boxed())
        }
    }

    fn provider(refuse_fallback: bool) -> (Provider, Arc<dyn Synthesizer>, Arc<AtomicUsize>) {
        let dropped = Arc::new(AtomicUsize::new(0));
        let cloud: Arc<dyn Synthesizer> = Arc::new(Fake {
            model: "cloud",
            hang: true,
            refuse: false,
            dropped: Arc::clone(&dropped),
        });
        let local: Arc<dyn Synthesizer> = Arc::new(Fake {
            model: "local",
            hang: false,
            refuse: refuse_fallback,
            dropped: Arc::new(AtomicUsize::new(0)),
        });
        let p = Provider::new(
            Engines::new(vec![Arc::clone(&cloud), local]),
            None,
            vec![FallbackStep::Model {
                model: "local".into(),
                voice: None,
            }],
        );
        (p, cloud, dropped)
    }

    fn request(deadline: Option<Duration>) -> SynthesisRequest {
        SynthesisRequest {
            text: "hello".into(),
            model: "cloud".into(),
            voice: "v".into(),
            deadline: deadline.map(|d| Instant::now() + d),
            ..Default::default()
        }
    }

    #[test]
    fn the_fallback_starts_at_the_budget_or_half_the_deadline() {
        let t = Instant::now();
        let budget = Duration::from_millis(1500);
        let at = |d: Option<u64>| fallback_at(t, budget, d.map(|s| t + Duration::from_secs(s)));
        assert_eq!(at(None), t + budget);
        assert_eq!(at(Some(2)), t + Duration::from_secs(1));
        assert_eq!(at(Some(10)), t + budget);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_engine_falls_back_after_the_budget_and_is_dropped() {
        let (p, cloud, dropped) = provider(false);
        let started = Instant::now();
        let opened = p
            .open(
                request(Some(Duration::from_secs(10))),
                cloud,
                Options::default(),
            )
            .await
            .expect("the fallback serves");
        assert_eq!(started.elapsed(), DEFAULT_FIRST_AUDIO_BUDGET);
        assert_eq!(opened.served.engine, "local");
        assert!(
            opened
                .served
                .fallback_reason
                .as_deref()
                .is_some_and(|r| r.contains("sent no audio within 1500 ms")),
            "{:?}",
            opened.served.fallback_reason
        );
        assert_eq!(
            dropped.load(Ordering::SeqCst),
            1,
            "the hung stream is dropped"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_fallback_the_engine_keeps_waiting() {
        let (p, cloud, dropped) = provider(true);
        let open = p.open(
            request(Some(Duration::from_secs(10))),
            cloud,
            Options::default(),
        );
        // The fallback cannot serve: the engine's attempt is still awaited (here: forever).
        assert!(
            tokio::time::timeout(Duration::from_secs(60), open)
                .await
                .is_err()
        );
        assert_eq!(dropped.load(Ordering::SeqCst), 1, "dropped with the call");
        let (p, cloud, _) = provider(false);
        let forbidden = Options {
            fallback: false,
            ..Options::default()
        };
        let waited = AtomicBool::new(false);
        let open = async {
            let r = p.open(request(None), cloud, forbidden).await;
            waited.store(true, Ordering::SeqCst);
            r
        };
        assert!(
            tokio::time::timeout(Duration::from_secs(60), open)
                .await
                .is_err()
        );
        assert!(!waited.load(Ordering::SeqCst));
    }
}
