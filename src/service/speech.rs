//! The herald.v1.Speech handlers: validate → start the job → return a stream.
//!
//! Handlers are thin (console-subscriber, tonic's streaming example): they turn the request into
//! domain types with precise INVALID_ARGUMENT messages (field name + limit), spawn the job under
//! a child of the daemon's cancellation token, and return a [`ReceiverStream`] so that a client
//! that goes away cancels its job. They hold no locks and no mutable shared state.

use std::{pin::Pin, sync::Arc, time::Duration};

use futures::Stream;
use tokio::{sync::mpsc, time::Instant};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, metadata::MetadataMap};

use crate::{
    audio::{self, AudioSpec, OutputEncoding, OutputFormat, encode},
    engine::SynthesisRequest,
    metrics::{self, metrics},
    pb::{self, audio_format::Encoding, synthesize_response::Payload},
    pipeline::{self, ChunkSink, Job, JobError, Output, Render},
    playback::{Announcement, Playback},
    provider::{self, CachePolicy, Provider},
    service::status,
};

/// Chunks buffered per stream between the audio thread and the client's HTTP/2 stream.
const CHUNKS_IN_FLIGHT: usize = 16;
/// Default `chunk_ms`.
pub const DEFAULT_CHUNK_MS: u32 = 100;
/// Accepted `chunk_ms` range.
pub const CHUNK_MS_RANGE: std::ops::RangeInclusive<u32> = 10..=1000;
/// Accepted `speed` and `pitch` range (0 = default 1.0).
pub const PROSODY_RANGE: std::ops::RangeInclusive<f32> = 0.5..=2.0;
/// Highest accepted `volume` (0 = default 1.0).
pub const MAX_VOLUME: f32 = 4.0;
/// Longest accepted `instructions`, in characters.
pub const MAX_INSTRUCTIONS_CHARS: usize = 1000;
/// Longest accepted `request_id`, in characters.
pub const MAX_REQUEST_ID_CHARS: usize = 128;
/// Longest accepted `language` tag.
pub const MAX_LANGUAGE_CHARS: usize = 35;
/// Longest accepted `emotion`.
pub const MAX_EMOTION_CHARS: usize = 32;
/// Most entries of `pronunciations` / `replacements`.
pub const MAX_DICT_ENTRIES: usize = 100;
/// Longest key of `pronunciations` / `replacements`.
pub const MAX_DICT_KEY_CHARS: usize = 32;
/// Longest value of `pronunciations` / `replacements`.
pub const MAX_DICT_VALUE_CHARS: usize = 64;

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

/// Running streams per peer.
#[derive(Debug, Default)]
struct Peers(std::sync::Mutex<std::collections::HashMap<String, usize>>);

/// One running stream of a peer; dropping it frees the slot.
struct PeerSlot {
    peers: Arc<Inner>,
    peer: String,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self.peers.peers.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

/// Who is calling: the TCP client's address, or the unix socket peer's user.
fn peer_of<T>(request: &Request<T>) -> String {
    if let Some(addr) = request.remote_addr() {
        return format!("ip:{}", addr.ip());
    }
    request
        .extensions()
        .get::<tonic::transport::server::UdsConnectInfo>()
        .and_then(|u| u.peer_cred)
        .map_or_else(|| "local".to_owned(), |c| format!("uid:{}", c.uid()))
}

/// The herald.v1.Speech service. Cheap to clone; every clone serves the same daemon.
#[derive(Clone)]
pub struct SpeechService {
    inner: Arc<Inner>,
}

struct Inner {
    /// The cache, the engines and the fallback chain.
    provider: Arc<Provider>,
    settings: Settings,
    /// Local playback: the announcement queues.
    playback: Arc<Playback>,
    /// One permit per running Synthesize stream.
    running: Arc<tokio::sync::Semaphore>,
    /// Running streams per peer.
    peers: Peers,
    /// Cancelled at shutdown; every job runs under a child token.
    root: CancellationToken,
    /// Custom voices: the registry and the customization client.
    voices: Arc<crate::voices::Manager>,
}

/// A validated Synthesize request.
pub(crate) struct Validated {
    pub(crate) job: Job,
    pub(crate) info: pb::AudioInfo,
    pub(crate) characters: u32,
    pub(crate) options: provider::Options,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

impl SpeechService {
    /// A service over `provider` and `playback`; jobs are cancelled when `root` is.
    pub fn new(
        provider: Arc<Provider>,
        settings: Settings,
        playback: Arc<Playback>,
        root: CancellationToken,
        voices: Arc<crate::voices::Manager>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                running: Arc::new(tokio::sync::Semaphore::new(settings.max_concurrent)),
                peers: Peers::default(),
                provider,
                settings,
                playback,
                root,
                voices,
            }),
        }
    }

    /// A slot for one more stream of `peer`, or RESOURCE_EXHAUSTED.
    fn peer_slot(&self, peer: String) -> Result<PeerSlot, Status> {
        let limit = self.inner.settings.max_concurrent_per_peer;
        let mut map = self.inner.peers.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(peer.clone()).or_insert(0);
        if *n >= limit {
            return Err(Status::resource_exhausted(format!(
                "synthesis.max_concurrent_per_peer: this client already runs {limit} syntheses; \
                 retry later"
            )));
        }
        *n += 1;
        drop(map);
        Ok(PeerSlot {
            peers: Arc::clone(&self.inner),
            peer,
        })
    }

    /// `Synthesize`: validate, take the slots, start the job; refusals are counted by the
    /// caller.
    async fn start_synthesis(
        &self,
        request: Request<pb::SynthesizeRequest>,
    ) -> Result<Response<BoxStream<pb::SynthesizeResponse>>, Status> {
        let received = Instant::now();
        let max = self.inner.settings.max_deadline;
        let asked = grpc_timeout(request.metadata());
        let capped = asked.is_none_or(|d| d > max);
        let deadline = received.checked_add(asked.map_or(max, |d| d.min(max)));
        let deadline_message = if capped {
            format!(
                "deadline exceeded: synthesis.max_deadline_ms limits a request to {} ms",
                max.as_millis()
            )
        } else {
            "deadline exceeded before synthesis finished".to_owned()
        };
        let peer = peer_of(&request);
        let Validated {
            mut job,
            mut info,
            characters,
            options,
        } = self.validate(request.into_inner())?;
        job.request.deadline = deadline;
        let peer_slot = self.peer_slot(peer)?;
        let permit = Arc::clone(&self.inner.running)
            .try_acquire_owned()
            .map_err(|_| {
                Status::resource_exhausted(format!(
                    "synthesis.max_concurrent: {} syntheses are already running; retry later",
                    self.inner.settings.max_concurrent
                ))
            })?;
        let rate = job.output.spec.sample_rate;
        let cancel = self.inner.root.child_token();
        let provider = Arc::clone(&self.inner.provider);
        let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        tracing::debug!(request_id = %info.request_id, model = %info.model, voice = %info.voice, "synthesize");

        let span = tracing::info_span!("synthesize", request_id = %info.request_id);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                // Held until this stream's job ends, whatever way it ends.
                let _permit = permit;
                let _peer_slot = peer_slot;
                let _active = metrics::ActiveStream::start();
                let request_id = info.request_id.clone();
                let model = info.requested_model.clone();
                let count =
                    |engine: &str, code: tonic::Code| metrics().request(&model, engine, code);
                let Job {
                    request,
                    engine,
                    output,
                    gain,
                    chunk_ms,
                } = job;
                let opened = tokio::select! {
                    r = provider.open(request, engine, options) => r.map_err(JobError::Engine),
                    () = cancel.cancelled() => Err(JobError::Cancelled),
                    () = tx.closed() => {
                        tracing::debug!(%request_id, "client went away before synthesis started");
                        count("", tonic::Code::Cancelled);
                        return;
                    }
                    () = until(deadline) => {
                        tracing::info!(%request_id, "deadline exceeded before synthesis started");
                        count("", tonic::Code::DeadlineExceeded);
                        let _ = tx.send(Err(Status::deadline_exceeded(deadline_message))).await;
                        return;
                    }
                };
                let opened = match opened {
                    Ok(o) => o,
                    Err(error) => {
                        let status = status::job_status(&error);
                        count("", status.code());
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                let served = opened.served;
                info.engine.clone_from(&served.engine);
                info.model.clone_from(&served.model);
                info.voice.clone_from(&served.voice);
                info.native_sample_rate_hz = served.native_sample_rate;
                info.cache_hit = served.cache_hit;
                info.fallback_used = served.fallback_reason.is_some();
                info.fallback_reason = served.fallback_reason.clone().unwrap_or_default();
                if tx.send(response(Payload::Info(info))).await.is_err() {
                    return;
                }
                let sink_tx = tx.clone();
                let sink: ChunkSink = Box::new(move |out| {
                    let msg = match out {
                        Output::Audio(chunk) => response(Payload::Audio(pb::AudioChunk {
                            data: chunk.data,
                            first_frame: chunk.first_frame,
                            frames: chunk.frames,
                        })),
                        Output::Words(words) => response(Payload::Words(pb::WordTimings {
                            words: words
                                .into_iter()
                                .map(|w| pb::WordTiming {
                                    text: w.text,
                                    begin_ms: w.begin_ms,
                                    end_ms: w.end_ms,
                                })
                                .collect(),
                        })),
                    };
                    sink_tx.blocking_send(msg).is_ok()
                });
                let render = Render {
                    output,
                    gain,
                    chunk_ms,
                };
                let result = tokio::select! {
                    r = pipeline::run_stream(opened.stream, render, cancel.clone(), sink) => r,
                    () = tx.closed() => {
                        // Client gone: dropping the job future stops the engine at once.
                        cancel.cancel();
                        tracing::debug!(%request_id, "client went away; job cancelled");
                        count(&served.engine, tonic::Code::Cancelled);
                        return;
                    }
                    () = until(deadline) => {
                        cancel.cancel();
                        tracing::info!(%request_id, "deadline exceeded; job cancelled");
                        count(&served.engine, tonic::Code::DeadlineExceeded);
                        let _ = tx.send(Err(Status::deadline_exceeded(deadline_message))).await;
                        return;
                    }
                };
                let msg = match result {
                    Ok(report) => {
                        let ttfa = report
                            .first_chunk_at
                            .map(|t| t.saturating_duration_since(received));
                        count(&served.engine, tonic::Code::Ok);
                        if let Some(t) = ttfa {
                            metrics()
                                .time_to_first_audio
                                .get_or_create(&metrics::TtfaLabels {
                                    engine: served.engine.clone(),
                                    cache_hit: served.cache_hit.to_string(),
                                })
                                .observe(t.as_secs_f64());
                        }
                        tracing::info!(
                            %request_id,
                            frames = report.frames,
                            engine = %served.engine,
                            cache_hit = served.cache_hit,
                            fallback = served.fallback_reason.is_some(),
                            ttfa_ms = ttfa.map(|d| d.as_secs_f64() * 1e3),
                            "synthesis finished"
                        );
                        response(Payload::Summary(pb::SynthesisSummary {
                            samples: report.frames,
                            duration_ms: (report.frames * 1000 + u64::from(rate) / 2)
                                / u64::from(rate),
                            characters: report.characters.unwrap_or(characters),
                            cache_hit: served.cache_hit,
                            fallback_used: served.fallback_reason.is_some(),
                            upstream_request_ids: report.upstream_request_ids,
                            time_to_first_audio_us: ttfa
                                .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
                            bytes: report.bytes,
                            engine: served.engine,
                        }))
                    }
                    Err(error) => {
                        let status = status::job_status(&error);
                        count(&served.engine, status.code());
                        Err(status)
                    }
                };
                let _ = tx.send(msg).await;
            },
            span,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    /// The provider requests go through.
    pub(crate) fn provider(&self) -> &Arc<Provider> {
        &self.inner.provider
    }

    /// Turn a request into domain types, or INVALID_ARGUMENT naming the field and its limit.
    pub(crate) fn validate(&self, req: pb::SynthesizeRequest) -> Result<Validated, Status> {
        let settings = &self.inner.settings;
        let text = req.text;
        if text.trim().is_empty() {
            return Err(invalid("text: must not be empty"));
        }
        let chars = text.chars().count();
        if chars > settings.max_text_chars {
            return Err(invalid(format!(
                "text: {chars} characters exceeds the limit of {} (synthesis.max_text_chars)",
                settings.max_text_chars
            )));
        }

        // A custom voice herald created works with its one model only: checked here, before
        // any upstream call; an empty model takes the voice's.
        let custom_model = self.inner.voices.check_synthesis(&req.voice, &req.model)?;
        let model = match (req.model.is_empty(), custom_model) {
            (false, _) => req.model,
            (true, Some(m)) => m,
            (true, None) => settings.default_model.clone(),
        };
        let engines = self.inner.provider.engines();
        let Some(engine) = engines.for_model(&model) else {
            let known: Vec<&str> = engines.all().iter().map(|e| e.name()).collect();
            return Err(invalid(format!(
                "model: unknown model {:?}; this daemon serves: {}",
                truncate(&model, 64),
                known.join(", ")
            )));
        };
        let voice = match (req.voice.is_empty(), &settings.default_voice) {
            (false, _) => req.voice,
            (true, Some(v)) if model == settings.default_model => v.clone(),
            (true, _) => engine.default_voice(&model),
        };
        engine
            .check_voice(&model, &voice)
            .map_err(|m| invalid(format!("voice: {m}")))?;

        let language = optional(&req.language);
        if let Some(l) = &language
            && (l.chars().count() > MAX_LANGUAGE_CHARS
                || !l
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return Err(invalid(format!(
                "language: {:?} is not a BCP-47 tag like \"en\" or \"zh-CN\" (at most {MAX_LANGUAGE_CHARS} characters)",
                truncate(l, 40)
            )));
        }
        let instructions = optional(&req.instructions);
        if let Some(i) = &instructions {
            let n = i.chars().count();
            if n > MAX_INSTRUCTIONS_CHARS {
                return Err(invalid(format!(
                    "instructions: {n} characters exceeds the limit of {MAX_INSTRUCTIONS_CHARS}"
                )));
            }
        }
        let speed = prosody("speed", req.speed)?;
        let pitch = prosody("pitch", req.pitch)?;
        let gain = match req.volume {
            0.0 => 1.0,
            v if v.is_finite() && v > 0.0 && v <= MAX_VOLUME => v,
            v => {
                return Err(invalid(format!(
                    "volume: {v} is outside 0.0 < volume <= {MAX_VOLUME} (0 = default 1.0)"
                )));
            }
        };
        let chunk_ms = match req.chunk_ms {
            0 => DEFAULT_CHUNK_MS,
            c if CHUNK_MS_RANGE.contains(&c) => c,
            c => {
                return Err(invalid(format!(
                    "chunk_ms: {c} is outside {}..={} (0 = default {DEFAULT_CHUNK_MS})",
                    CHUNK_MS_RANGE.start(),
                    CHUNK_MS_RANGE.end()
                )));
            }
        };
        let request_id = if req.request_id.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else if req.request_id.chars().count() > MAX_REQUEST_ID_CHARS
            || req.request_id.chars().any(char::is_control)
        {
            return Err(invalid(format!(
                "request_id: must be at most {MAX_REQUEST_ID_CHARS} printable characters"
            )));
        } else {
            req.request_id
        };

        let cache = match pb::CachePolicy::try_from(req.cache) {
            Ok(pb::CachePolicy::Unspecified | pb::CachePolicy::Use) => CachePolicy::Use,
            Ok(pb::CachePolicy::Refresh) => CachePolicy::Refresh,
            Ok(pb::CachePolicy::Bypass) => CachePolicy::Bypass,
            Err(_) => {
                return Err(invalid(format!(
                    "cache: unknown value {}; valid: USE, REFRESH, BYPASS",
                    req.cache
                )));
            }
        };
        let options = provider::Options {
            cache,
            fallback: !req.no_fallback,
        };

        let emotion = optional(&req.emotion);
        if let Some(e) = &emotion
            && e.chars().count() > MAX_EMOTION_CHARS
        {
            return Err(invalid(format!(
                "emotion: at most {MAX_EMOTION_CHARS} characters"
            )));
        }
        let pronunciations = dictionary("pronunciations", req.pronunciations)?;
        let replacements = dictionary("replacements", req.replacements)?;

        let native_rate = engine.native_sample_rate(&model, &voice);
        let output = output_format(
            req.format.unwrap_or_default(),
            native_rate,
            req.bitrate_bps,
            req.bits_per_sample,
        )?;
        let request = SynthesisRequest {
            text,
            voice,
            model,
            language,
            instructions,
            speed,
            pitch,
            request_id,
            emotion,
            seed: (req.seed != 0).then_some(req.seed),
            pronunciations,
            replacements,
            optimize_instructions: req.optimize_instructions,
            word_timestamps: req.word_timestamps,
            output_sample_rate: output.spec.sample_rate,
            deadline: None,
        };
        engine.check_request(&request).map_err(invalid)?;
        let info = pb::AudioInfo {
            format: Some(pb::AudioFormat {
                encoding: encoding_to_pb(output.encoding) as i32,
                sample_rate_hz: output.spec.sample_rate,
                channels: u32::from(output.spec.channels),
            }),
            model: request.model.clone(),
            voice: request.voice.clone(),
            engine: engine.name().to_owned(),
            request_id: request.request_id.clone(),
            native_sample_rate_hz: native_rate,
            requested_model: request.model.clone(),
            requested_voice: request.voice.clone(),
            ..Default::default()
        };
        Ok(Validated {
            job: Job {
                request,
                engine: Arc::clone(engine),
                output,
                gain,
                chunk_ms,
            },
            info,
            characters: u32::try_from(chars).unwrap_or(u32::MAX),
            options,
        })
    }
}

fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message)
}

fn optional(s: &str) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// A word → text dictionary, bounded ([`MAX_DICT_ENTRIES`], [`MAX_DICT_KEY_CHARS`],
/// [`MAX_DICT_VALUE_CHARS`]) and sorted (protobuf maps have no order; sorting makes the
/// upstream request deterministic).
fn dictionary(
    field: &str,
    map: std::collections::HashMap<String, String>,
) -> Result<Vec<(String, String)>, Status> {
    if map.len() > MAX_DICT_ENTRIES {
        return Err(invalid(format!(
            "{field}: {} entries exceeds the limit of {MAX_DICT_ENTRIES}",
            map.len()
        )));
    }
    let mut entries: Vec<(String, String)> = map.into_iter().collect();
    entries.sort();
    for (k, v) in &entries {
        let (kn, vn) = (k.chars().count(), v.chars().count());
        if k.trim().is_empty() || kn > MAX_DICT_KEY_CHARS {
            return Err(invalid(format!(
                "{field}: key {:?} must be 1..={MAX_DICT_KEY_CHARS} characters",
                truncate(k, 40)
            )));
        }
        if v.trim().is_empty() || vn > MAX_DICT_VALUE_CHARS {
            return Err(invalid(format!(
                "{field}: the value for {:?} must be 1..={MAX_DICT_VALUE_CHARS} characters",
                truncate(k, 40)
            )));
        }
    }
    Ok(entries)
}

fn prosody(field: &str, value: f32) -> Result<f32, Status> {
    if value == 0.0 {
        Ok(1.0)
    } else if value.is_finite() && PROSODY_RANGE.contains(&value) {
        Ok(value)
    } else {
        Err(invalid(format!(
            "{field}: {value} is outside {}..={} (0 = default 1.0)",
            PROSODY_RANGE.start(),
            PROSODY_RANGE.end()
        )))
    }
}

fn output_format(
    format: pb::AudioFormat,
    native_rate: u32,
    bitrate_bps: u32,
    bits_per_sample: u32,
) -> Result<OutputFormat, Status> {
    let encoding = match Encoding::try_from(format.encoding) {
        Ok(Encoding::Unspecified | Encoding::PcmS16le) => Encoding::PcmS16le,
        Ok(e) => e,
        Err(_) => {
            return Err(invalid(format!(
                "format.encoding: unknown value {}",
                format.encoding
            )));
        }
    };
    let rate = match format.sample_rate_hz {
        0 if encoding == Encoding::Mp3 => nearest_mp3_rate(native_rate),
        0 => native_rate,
        r if (audio::MIN_SAMPLE_RATE..=audio::MAX_SAMPLE_RATE).contains(&r) => r,
        r => {
            return Err(invalid(format!(
                "format.sample_rate_hz: {r} is outside {}..={} (0 = the engine's native rate)",
                audio::MIN_SAMPLE_RATE,
                audio::MAX_SAMPLE_RATE
            )));
        }
    };
    let channels = match format.channels {
        0 => 1,
        c if c <= u32::from(audio::MAX_CHANNELS) => c as u16,
        c => {
            return Err(invalid(format!(
                "format.channels: {c} is outside 1..={} (0 = mono)",
                audio::MAX_CHANNELS
            )));
        }
    };
    let spec = AudioSpec::new(rate, channels)
        .ok_or_else(|| Status::internal("engine reported a native sample rate of 0"))?;
    let name = encoding.as_str_name();
    if bitrate_bps != 0 && !matches!(encoding, Encoding::Mp3 | Encoding::OggOpus) {
        return Err(invalid(format!(
            "bitrate_bps: {name} has no bitrate; set it only for MP3 and OGG_OPUS (0 = default)"
        )));
    }
    if bits_per_sample != 0 && encoding != Encoding::Flac {
        return Err(invalid(format!(
            "bits_per_sample: {name} has a fixed sample format; set it only for FLAC (0 = 16)"
        )));
    }
    let encoding = match encoding {
        Encoding::Unspecified | Encoding::PcmS16le => OutputEncoding::PcmS16Le,
        Encoding::PcmF32le => OutputEncoding::PcmF32Le,
        Encoding::Wav => OutputEncoding::Wav,
        Encoding::Mulaw => OutputEncoding::Mulaw,
        Encoding::Alaw => OutputEncoding::Alaw,
        Encoding::Mp3 => {
            if !encode::mp3::SAMPLE_RATES.contains(&rate) {
                return Err(invalid(format!(
                    "format.sample_rate_hz: MP3 cannot carry {rate} Hz; valid MP3 rates: {}",
                    list(&encode::mp3::SAMPLE_RATES)
                )));
            }
            let allowed = encode::mp3::bitrates(rate);
            let bitrate_bps = match bitrate_bps {
                0 => encode::mp3::default_bitrate(spec),
                b if allowed.contains(&b) => b,
                b => {
                    return Err(invalid(format!(
                        "bitrate_bps: {b} is not an MP3 bitrate at {rate} Hz; valid: {} (0 = default)",
                        list(&allowed)
                    )));
                }
            };
            OutputEncoding::Mp3 { bitrate_bps }
        }
        Encoding::OggOpus => {
            let range = encode::opus::BITRATE_RANGE;
            let bitrate_bps = match bitrate_bps {
                0 => encode::opus::default_bitrate(spec),
                b if range.contains(&b) => b,
                b => {
                    return Err(invalid(format!(
                        "bitrate_bps: {b} is outside {}..={} for OGG_OPUS (0 = default)",
                        range.start(),
                        range.end()
                    )));
                }
            };
            OutputEncoding::OggOpus { bitrate_bps }
        }
        Encoding::Flac => {
            let bits_per_sample = match bits_per_sample {
                0 | 16 => 16,
                24 => 24,
                b => {
                    return Err(invalid(format!(
                        "bits_per_sample: {b} is not supported for FLAC; valid: 16, 24 (0 = 16)"
                    )));
                }
            };
            OutputEncoding::Flac { bits_per_sample }
        }
    };
    Ok(OutputFormat { encoding, spec })
}

/// The MP3 rate used when a client asks for MP3 at the engine's native rate: the native rate
/// itself when MP3 can carry it, else the nearest MP3 rate above it (or 48 kHz).
fn nearest_mp3_rate(native: u32) -> u32 {
    encode::mp3::SAMPLE_RATES
        .iter()
        .copied()
        .find(|&r| r >= native)
        .unwrap_or(audio::MAX_SAMPLE_RATE)
}

fn list(values: &[u32]) -> String {
    values
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn encoding_to_pb(e: OutputEncoding) -> Encoding {
    match e {
        OutputEncoding::PcmS16Le => Encoding::PcmS16le,
        OutputEncoding::PcmF32Le => Encoding::PcmF32le,
        OutputEncoding::Wav => Encoding::Wav,
        OutputEncoding::Mulaw => Encoding::Mulaw,
        OutputEncoding::Alaw => Encoding::Alaw,
        OutputEncoding::Mp3 { .. } => Encoding::Mp3,
        OutputEncoding::OggOpus { .. } => Encoding::OggOpus,
        OutputEncoding::Flac { .. } => Encoding::Flac,
    }
}

/// The client's deadline from the `grpc-timeout` header, if any.
fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    // The gRPC spec allows at most 8 digits; anything else is ignored, as tonic does.
    if digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Resolves at `deadline`, or never.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl SpeechService {
    /// The deadline of a custom-voice call: the client's (`grpc-timeout`) less a tenth (so
    /// herald answers DEADLINE_EXCEEDED itself, before the transport cancels the call), capped
    /// at `synthesis.max_deadline_ms`.
    fn voice_deadline(&self, metadata: &MetadataMap) -> Instant {
        let max = self.inner.settings.max_deadline;
        let budget = grpc_timeout(metadata).map_or(max, |t| t.saturating_sub(t / 10).min(max));
        Instant::now() + budget
    }
}

fn response(payload: Payload) -> Result<pb::SynthesizeResponse, Status> {
    Ok(pb::SynthesizeResponse {
        payload: Some(payload),
    })
}

#[tonic::async_trait]
impl pb::speech_server::Speech for SpeechService {
    type SynthesizeStream = BoxStream<pb::SynthesizeResponse>;
    type SpeakStream = BoxStream<pb::SpeakEvent>;

    async fn synthesize(
        &self,
        request: Request<pb::SynthesizeRequest>,
    ) -> Result<Response<Self::SynthesizeStream>, Status> {
        // A label of a model no engine serves would let clients grow the metrics without bound.
        let asked = &request.get_ref().model;
        let model_label = match self.inner.provider.engines().for_model(asked) {
            Some(_) => asked.clone(),
            None if asked.is_empty() => self.inner.settings.default_model.clone(),
            None => "unknown".to_owned(),
        };
        self.start_synthesis(request).await.inspect_err(|status| {
            metrics().request(&model_label, "", status.code());
        })
    }

    async fn list_voices(
        &self,
        request: Request<pb::ListVoicesRequest>,
    ) -> Result<Response<pb::ListVoicesResponse>, Status> {
        let req = request.into_inner();
        let language = req.language.trim().to_ascii_lowercase();
        let voices = self
            .inner
            .provider
            .engines()
            .all()
            .iter()
            .flat_map(|engine| {
                let name = engine.name();
                engine.voices().into_iter().map(move |v| (name, v))
            })
            .filter(|(_, v)| req.model.is_empty() || v.model == req.model)
            .filter(|(_, v)| {
                language.is_empty()
                    || v.languages.iter().any(|l| {
                        let l = l.to_ascii_lowercase();
                        l == language || l.starts_with(&format!("{language}-"))
                    })
            })
            .map(|(engine, v)| pb::Voice {
                name: v.name,
                display_name: v.display_name,
                languages: v.languages,
                engine: engine.to_owned(),
                model: v.model,
                native_sample_rate_hz: v.native_sample_rate,
                gender: v.gender,
                custom: false,
                custom_status: 0,
            })
            .collect::<Vec<_>>();
        let mut voices = voices;
        let custom = super::voices::list(&self.inner.voices, &req.model).await;
        voices.extend(
            custom
                .into_iter()
                .filter(|v| req.model.is_empty() || v.model == req.model)
                .filter(|v| {
                    language.is_empty()
                        || v.languages.iter().any(|l| {
                            let l = l.to_ascii_lowercase();
                            l == language || l.starts_with(&format!("{language}-"))
                        })
                }),
        );
        Ok(Response::new(pb::ListVoicesResponse { voices }))
    }

    async fn speak(
        &self,
        request: Request<pb::SpeakRequest>,
    ) -> Result<Response<Self::SpeakStream>, Status> {
        let req = request.into_inner();
        let playback = Arc::clone(&self.inner.playback);
        let device = playback
            .resolve(&req.device)
            .map_err(|m| invalid(format!("device: {m}")))?;
        let speak = super::speak::validate(&req, playback.settings())?;
        let Validated { job, .. } = self.validate(pb::SynthesizeRequest {
            text: req.text,
            voice: req.voice,
            model: req.model,
            language: req.language,
            instructions: req.instructions,
            speed: req.speed,
            pitch: req.pitch,
            ..Default::default()
        })?;
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let id = speak.id.clone();
        playback
            .enqueue(
                &device,
                Announcement {
                    id: speak.id,
                    priority: speak.priority,
                    request: job.request,
                    engine: job.engine,
                    volume: speak.volume,
                    chime: speak.chime,
                    leading_silence: speak.leading_silence,
                    expires_at: speak.expires_at,
                    events: events_tx,
                },
            )
            .map_err(|e| {
                Status::failed_precondition(format!("device: no usable output device: {e}"))
            })?;
        tracing::debug!(%id, %device, "speak queued");
        let (tx, rx) = mpsc::channel(8);
        let cancel_on_disconnect = req.cancel_on_disconnect;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    report = events.recv() => {
                        let Some(report) = report else { return };
                        let last = report.event.is_final();
                        if tx.send(Ok(super::speak::event_to_pb(report))).await.is_err() && !last {
                            if cancel_on_disconnect {
                                playback.stop(&device, crate::playback::StopScope::Id(id.clone())).await;
                            }
                            return;
                        }
                        if last {
                            return;
                        }
                    }
                    () = tx.closed() => {
                        if cancel_on_disconnect {
                            tracing::debug!(%id, "speak client left; cancelling its announcement");
                            playback.stop(&device, crate::playback::StopScope::Id(id.clone())).await;
                        }
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn stop_speaking(
        &self,
        request: Request<pb::StopSpeakingRequest>,
    ) -> Result<Response<pb::StopSpeakingResponse>, Status> {
        let req = request.into_inner();
        let playback = &self.inner.playback;
        let device = playback
            .resolve(&req.device)
            .map_err(|m| invalid(format!("device: {m}")))?;
        let scope = super::speak::stop_scope(&req)?;
        let stopped_ids = playback.stop(&device, scope).await;
        Ok(Response::new(pb::StopSpeakingResponse { stopped_ids }))
    }

    async fn create_voice(
        &self,
        request: Request<pb::CreateVoiceRequest>,
    ) -> Result<Response<pb::CustomVoice>, Status> {
        let deadline = self.voice_deadline(request.metadata());
        super::voices::create(&self.inner.voices, request.into_inner(), deadline)
            .await
            .map(Response::new)
    }

    async fn get_voice(
        &self,
        request: Request<pb::GetVoiceRequest>,
    ) -> Result<Response<pb::CustomVoice>, Status> {
        let deadline = self.voice_deadline(request.metadata());
        super::voices::get(&self.inner.voices, request.into_inner(), deadline)
            .await
            .map(Response::new)
    }

    async fn delete_voice(
        &self,
        request: Request<pb::DeleteVoiceRequest>,
    ) -> Result<Response<pb::DeleteVoiceResponse>, Status> {
        let deadline = self.voice_deadline(request.metadata());
        super::voices::delete(&self.inner.voices, request.into_inner(), deadline)
            .await
            .map(Response::new)
    }

    async fn list_output_devices(
        &self,
        _request: Request<pb::ListOutputDevicesRequest>,
    ) -> Result<Response<pb::ListOutputDevicesResponse>, Status> {
        let (list, default) = self.inner.playback.devices();
        let mut devices: Vec<pb::OutputDevice> = list
            .into_iter()
            .map(|d| pb::OutputDevice {
                is_default: d.name == default,
                name: d.name,
                description: d.description,
                sample_rates_hz: d.sample_rates,
                channels: d.channels,
            })
            .collect();
        if !devices.iter().any(|d| d.name == "default") {
            devices.insert(
                0,
                pb::OutputDevice {
                    name: "default".to_owned(),
                    description: "The system's default output device".to_owned(),
                    is_default: default == "default",
                    sample_rates_hz: Vec::new(),
                    channels: Vec::new(),
                },
            );
        }
        Ok(Response::new(pb::ListOutputDevicesResponse { devices }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        let mut m = MetadataMap::new();
        m.insert("grpc-timeout", "1500m".parse().unwrap());
        assert_eq!(grpc_timeout(&m), Some(Duration::from_millis(1500)));
        m.insert("grpc-timeout", "2S".parse().unwrap());
        assert_eq!(grpc_timeout(&m), Some(Duration::from_secs(2)));
        m.insert("grpc-timeout", "x".parse().unwrap());
        assert_eq!(grpc_timeout(&m), None);
        m.insert("grpc-timeout", "18446744073709551615S".parse().unwrap());
        assert_eq!(grpc_timeout(&m), None, "more than 8 digits");
        m.insert("grpc-timeout", "99999999H".parse().unwrap());
        assert!(grpc_timeout(&m).is_some());
    }
}
