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
pub mod segment;
mod stream;

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
    stream::{SENTENCES_IN_FLIGHT, SentenceReport, StreamInput, StreamLimits, TextEvent},
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
    /// How long the requested engine may go without audio before the fallback chain is tried
    /// (`fallback.first_audio_budget_ms`).
    pub first_audio_budget: Duration,
    /// Most characters of text one `SynthesizeStream` may carry.
    pub max_stream_text_chars: usize,
    /// Longest wait for a `SynthesizeStream`'s next text piece (or flush, or end).
    pub stream_idle_timeout: Duration,
    /// Threads of the CPU pool for heavy audio stages (0 = one per core); see
    /// [`crate::pipeline::pool`].
    pub cpu_threads: usize,
}

/// Default of `synthesis.max_stream_text_chars`.
pub const DEFAULT_MAX_STREAM_TEXT_CHARS: usize = 100_000;
/// Default of `synthesis.stream_idle_timeout_ms`.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for Settings {
    fn default() -> Self {
        Self {
            default_model: crate::engine::espeak::MODEL.to_owned(),
            default_voice: None,
            max_text_chars: 20_000,
            max_concurrent: 64,
            max_concurrent_per_peer: 32,
            max_deadline: Duration::from_secs(300),
            first_audio_budget: crate::provider::DEFAULT_FIRST_AUDIO_BUDGET,
            max_stream_text_chars: DEFAULT_MAX_STREAM_TEXT_CHARS,
            stream_idle_timeout: DEFAULT_STREAM_IDLE_TIMEOUT,
            cpu_threads: 0,
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
        self.synthesize_via(crate::metrics::DOOR_GRPC, request, peer, asked)
    }

    /// [`Core::synthesize`] for a request that came through `door` (its metrics label).
    pub fn synthesize_via(
        &self,
        door: &'static str,
        request: Request,
        peer: String,
        asked: Option<Duration>,
    ) -> Result<Events, Error> {
        let received = Instant::now();
        let label = self.model_label(&request.model);
        self.admit(door, request, peer, asked, received, label.clone())
            .inspect_err(|e| metrics().door_outcome(door, &label, "", Err(e.kind())))
    }

    /// A `SynthesizeStream` job: validate `request` (its configuration: `text` must be empty),
    /// admit it for `peer` like a `Synthesize` stream, give it the client's deadline, and start
    /// it. The door sends the text on the returned [`StreamInput`].
    pub fn synthesize_stream(
        &self,
        request: Request,
        peer: String,
        asked: Option<Duration>,
    ) -> Result<(StreamInput, Events), Error> {
        let door = crate::metrics::DOOR_GRPC;
        let received = Instant::now();
        let label = self.model_label(&request.model);
        let started = (|| {
            if !request.text.is_empty() {
                return Err(Error::invalid(
                    "config.text: must be empty in SynthesizeStream; send the text in `text` \
                     messages after the config",
                ));
            }
            let (deadline, deadline_message) = self.deadline(received, asked);
            let job = self.prepare_options(request)?;
            let slots = self.limits.admit(peer)?;
            tracing::debug!(request_id = %job.request.request_id, model = %job.request.model, voice = %job.request.voice, "synthesize stream");
            Ok(stream::start_stream(
                Arc::clone(&self.provider),
                job,
                Start {
                    cancel: self.root.child_token(),
                    deadline: deadline.map(|d| (d, deadline_message)),
                    received,
                    buffer: EVENTS_IN_FLIGHT,
                    metrics_model: Some(label.clone()),
                    door,
                    slots: Some(slots),
                },
                StreamLimits {
                    max_text_chars: self.settings.max_stream_text_chars,
                    idle_timeout: self.settings.stream_idle_timeout,
                },
            ))
        })();
        started.inspect_err(|e| metrics().door_outcome(door, &label, "", Err(e.kind())))
    }

    /// A request's deadline (`asked`, capped at `synthesis.max_deadline_ms`) and what the
    /// client is told when it passes.
    fn deadline(&self, received: Instant, asked: Option<Duration>) -> (Option<Instant>, String) {
        let max = self.settings.max_deadline;
        let capped = asked.is_none_or(|d| d > max);
        let message = if capped {
            format!(
                "deadline exceeded: synthesis.max_deadline_ms limits a request to {} ms",
                max.as_millis()
            )
        } else {
            "deadline exceeded before synthesis finished".to_owned()
        };
        (
            received.checked_add(asked.map_or(max, |d| d.min(max))),
            message,
        )
    }

    fn admit(
        &self,
        door: &'static str,
        request: Request,
        peer: String,
        asked: Option<Duration>,
        received: Instant,
        label: String,
    ) -> Result<Events, Error> {
        let (deadline, deadline_message) = self.deadline(received, asked);
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
                door,
                slots: Some(slots),
            },
        ))
    }

    /// Put `job`'s audio in the cache unless it is there (or `refresh`): `WarmCache`. Each
    /// phrase being synthesized is admitted for `peer` like a `Synthesize` stream
    /// (`synthesis.max_concurrent`, `synthesis.max_concurrent_per_peer`): warming cannot run
    /// more syntheses (or espeak-ng processes) than clients could.
    pub async fn warm(&self, job: Job, refresh: bool, peer: String) -> Result<Warmed, WarmError> {
        let _slots = self.limits.admit(peer).map_err(WarmError::Refused)?;
        self.provider.warm(job.request, job.engine, refresh).await
    }
}

#[cfg(test)]
mod tests {
    //! The core on its own: a tone engine that sends 16 kHz s16le in 20 ms pieces, behind a
    //! provider with no cache and no fallback.

    use std::sync::atomic::{AtomicBool, Ordering};

    use bytes::Bytes;
    use futures::StreamExt;

    use super::*;
    use crate::{
        audio::{AudioSpec, InputEncoding, encode::negotiate::Codec},
        engine::{
            EngineError, Engines, SynthEvent, SynthStream, SynthesisRequest, Synthesizer, VoiceInfo,
        },
        error::ErrorKind,
    };

    const RATE: u32 = 16_000;

    /// `n` × 20 ms of a constant level, then Finished; with `stall`, waits forever after the
    /// first piece. `dropped` is set when the stream is dropped.
    struct Tone {
        pieces: usize,
        stall: bool,
        dropped: Arc<AtomicBool>,
    }

    struct SetOnDrop(Arc<AtomicBool>);

    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[async_trait::async_trait]
    impl Synthesizer for Tone {
        fn name(&self) -> &'static str {
            "tone"
        }
        fn serves_model(&self, model: &str) -> bool {
            model == "tone"
        }
        fn default_voice(&self, _: &str) -> String {
            "a".into()
        }
        fn voices(&self) -> Vec<VoiceInfo> {
            vec![VoiceInfo {
                name: "a".into(),
                display_name: "A".into(),
                languages: vec!["en".into()],
                gender: String::new(),
                model: "tone".into(),
                native_sample_rate: RATE,
            }]
        }
        fn native_sample_rate(&self, _: &str, _: &str) -> u32 {
            RATE
        }
        async fn synthesize(&self, _: SynthesisRequest) -> Result<SynthStream, EngineError> {
            let spec = AudioSpec {
                sample_rate: RATE,
                channels: 1,
            };
            let piece = Bytes::from(
                std::iter::repeat_n(8192i16.to_le_bytes(), (RATE / 50) as usize)
                    .flatten()
                    .collect::<Vec<u8>>(),
            );
            let guard = SetOnDrop(Arc::clone(&self.dropped));
            let audio = futures::stream::iter((0..self.pieces).map(move |_| {
                Ok(SynthEvent::Audio {
                    encoding: InputEncoding::Pcm16Le(spec),
                    data: piece.clone(),
                })
            }));
            let end = if self.stall {
                futures::stream::pending().boxed()
            } else {
                futures::stream::once(async {
                    Ok(SynthEvent::Finished {
                        characters: None,
                        upstream_request_ids: Vec::new(),
                    })
                })
                .boxed()
            };
            Ok(audio
                .chain(end)
                .map(move |e| {
                    let _ = &guard;
                    e
                })
                .boxed())
        }
    }

    fn core(pieces: usize, stall: bool, settings: Settings) -> (Core, Arc<AtomicBool>) {
        let dropped = Arc::new(AtomicBool::new(false));
        let engine = Tone {
            pieces,
            stall,
            dropped: Arc::clone(&dropped),
        };
        let provider = Provider::new(Engines::new(vec![Arc::new(engine)]), None, Vec::new());
        let core = Core::new(
            Arc::new(provider),
            Arc::new(voices::Manager::disabled()),
            Settings {
                default_model: "tone".into(),
                ..settings
            },
            CancellationToken::new(),
        );
        (core, dropped)
    }

    fn request(codec: Codec, rate: u32) -> Request {
        Request {
            text: "hello".into(),
            format: crate::audio::encode::negotiate::FormatRequest {
                codec,
                sample_rate_hz: rate,
                ..Default::default()
            },
            ..Request::default()
        }
    }

    #[tokio::test]
    async fn a_job_yields_info_audio_then_a_summary_that_counts_it() {
        let (core, _) = core(10, false, Settings::default());
        let mut events = core
            .synthesize(request(Codec::PcmS16Le, 48_000), "t".into(), None)
            .unwrap();
        let Some(Ok(Event::Info(info))) = events.recv().await else {
            panic!("info first")
        };
        assert_eq!(info.output.spec.sample_rate, 48_000);
        assert_eq!(
            (info.served.engine.as_str(), info.served.native_sample_rate),
            ("tone", RATE)
        );
        let (mut frames, mut bytes) = (0u64, 0u64);
        let summary = loop {
            match events.recv().await {
                Some(Ok(Event::Audio(chunk))) => {
                    frames += u64::from(chunk.frames);
                    bytes += chunk.data.len() as u64;
                }
                Some(Ok(Event::Summary(s))) => break s,
                other => panic!("{other:?}"),
            }
        };
        // 200 ms at 16 kHz, resampled to 48 kHz exactly.
        assert_eq!(frames, 9_600);
        assert_eq!((summary.frames, summary.bytes), (frames, bytes));
        assert_eq!(bytes, frames * 2);
        assert_eq!(summary.duration_ms, 200);
        assert_eq!(summary.characters, 5);
        assert!(events.recv().await.is_none(), "nothing after the summary");
    }

    #[tokio::test]
    async fn dropping_the_events_stops_the_engine() {
        let (core, dropped) = core(1, true, Settings::default());
        let mut events = core
            .synthesize(request(Codec::Wav, 0), "t".into(), None)
            .unwrap();
        assert!(matches!(events.recv().await, Some(Ok(Event::Info(_)))));
        drop(events);
        for _ in 0..200 {
            if dropped.load(Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the engine stream was not dropped within 1 s of the reader leaving");
    }

    #[tokio::test]
    async fn a_deadline_ends_the_job_with_deadline_exceeded() {
        let (core, dropped) = core(1, true, Settings::default());
        let mut events = core
            .synthesize(
                request(Codec::PcmS16Le, 0),
                "t".into(),
                Some(Duration::from_millis(50)),
            )
            .unwrap();
        let last = loop {
            match events.recv().await {
                Some(Ok(_)) => {}
                Some(Err(e)) => break e,
                None => panic!("the job ended without an error"),
            }
        };
        assert_eq!(last.kind(), ErrorKind::DeadlineExceeded);
        assert_eq!(
            last.message(),
            "deadline exceeded before synthesis finished"
        );
        assert!(events.recv().await.is_none());
        assert!(
            dropped.load(Ordering::SeqCst),
            "the engine stream is dropped"
        );
    }

    #[tokio::test]
    async fn admission_is_refused_past_the_per_peer_limit_and_freed_when_a_job_ends() {
        let (core, _) = core(
            1,
            true,
            Settings {
                max_concurrent_per_peer: 1,
                ..Settings::default()
            },
        );
        let first = core
            .synthesize(request(Codec::PcmS16Le, 0), "p".into(), None)
            .unwrap();
        let e = core
            .synthesize(request(Codec::PcmS16Le, 0), "p".into(), None)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ResourceExhausted);
        assert!(e.message().starts_with("synthesis.max_concurrent_per_peer"));
        // Another caller is not affected.
        let _other = core
            .synthesize(request(Codec::PcmS16Le, 0), "q".into(), None)
            .unwrap();
        drop(first);
        // The slot comes back once the job has seen its reader leave.
        for _ in 0..200 {
            if core
                .synthesize(request(Codec::PcmS16Le, 0), "p".into(), None)
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the slot was not freed");
    }

    #[test]
    fn validation_names_the_field() {
        let (core, _) = core(1, false, Settings::default());
        let cases = [
            (Request::default(), "text: must not be empty"),
            (
                Request {
                    model: "nope".into(),
                    ..request(Codec::Wav, 0)
                },
                "model: unknown model \"nope\"",
            ),
            (
                Request {
                    voice: "b".into(),
                    ..request(Codec::Wav, 0)
                },
                "voice: voice \"b\" is not a voice of model \"tone\"",
            ),
            (
                Request {
                    chunk_ms: 5,
                    ..request(Codec::Wav, 0)
                },
                "chunk_ms: 5 is outside 10..=1000",
            ),
            (
                request(Codec::Mp3, 12_345),
                "format.sample_rate_hz: MP3 cannot carry",
            ),
        ];
        for (req, start) in cases {
            let e = core.prepare(req).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument);
            assert!(e.message().starts_with(start), "{}", e.message());
        }
    }

    #[test]
    fn a_cloud_model_without_its_key_names_the_key() {
        let (core, _) = core(1, false, Settings::default());
        let e = core
            .prepare(Request {
                model: "cosyvoice-v3-flash".into(),
                ..request(Codec::Wav, 0)
            })
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::FailedPrecondition);
        assert!(
            e.message().starts_with(
                "model: \"cosyvoice-v3-flash\" is a DashScope (cosyvoice) model, and this \
                 daemon has no DashScope API key (set dashscope.api_key_file, DASHSCOPE_API_KEY"
            ),
            "{}",
            e.message()
        );
    }
}
