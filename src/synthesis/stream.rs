//! A streamed-text job (`SynthesizeStream`): text arrives in pieces, sentences are cut as they
//! complete ([`super::segment`]) and synthesized one by one through the provider (cache →
//! engine → fallback), in order, with a bounded look-ahead, into one output stream.
//!
//! The door hands the core [`TextEvent`]s on a bounded channel ([`StreamInput`]); the job
//! answers with the same [`Event`]s as a `Synthesize` job: one `Info` (when the first sentence
//! has a source), `Audio`/`Words` (word offsets over the whole stream), one `Summary` whose
//! [`SentenceReport`]s say, per sentence, where its audio came from. Every sentence's audio
//! goes through one audio task ([`SegmentsTask`]: one encoder, resampler state carried
//! over, joins faded).
//!
//! Per sentence: the provider serves a cached sentence from the cache; a sentence whose engine
//! fails before its audio falls back as a `Synthesize` request would. When the engine fails
//! *after* a sentence's audio began (the upstream went away mid-stream), that sentence ends
//! where its audio stopped and every later sentence goes straight to the fallback chain (a
//! sentence boundary), unless the request forbids fallback: the error then ends the stream.
//!
//! Engines that take streamed text upstream (DashScope's WebSocket APIs,
//! [`Synthesizer::streams_text`](crate::engine::Synthesizer::streams_text)) get it streamed
//! first ([`upstream`]): one upstream task, opened at the first text, fed the cleaned
//! sentences as they complete, its audio one segment on the same audio task; what it
//! leaves (a failure, an idle pause) goes on sentence by sentence as above.
//! Must not know any door: no wire types, no status codes.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use bytes::Bytes;
use futures::StreamExt;
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

mod upstream;

use super::{
    Event, Info, Job, Start, Summary,
    job::{Events, event_of, failed},
    segment::Segmenter,
};
use crate::{
    audio::{InputEncoding, join::Joins},
    engine::{EngineError, SynthEvent, SynthesisRequest, WordTiming},
    error::{Error, ErrorKind},
    metrics::{self, metrics},
    pipeline::{ChannelSink, JobError, Segment, SegmentsTask},
    provider::{Opened, Provider, Served},
};

/// Sentences in flight at once: the one being forwarded and the ones opening ahead of it.
pub const SENTENCES_IN_FLIGHT: usize = 2;
/// Text events buffered between the door and the job.
pub const TEXT_EVENTS: usize = 16;
/// Engine byte chunks of one sentence in flight to the audio task.
const BYTES_IN_FLIGHT: usize = 16;

/// What a door hands a streamed-text job after its configuration.
#[derive(Debug)]
pub enum TextEvent {
    /// A piece of text, cut anywhere.
    Text(String),
    /// Synthesize what has arrived, even mid-sentence.
    Flush,
    /// The text is complete (the client half-closed).
    End,
    /// The client broke the protocol (the door says how): the stream ends with this error.
    Invalid(Error),
}

/// The door's side of a streamed-text job: send [`TextEvent`]s; dropping it without
/// [`TextEvent::End`] means the client went away.
pub type StreamInput = mpsc::Sender<TextEvent>;

/// The limits of one streamed text.
#[derive(Clone, Copy, Debug)]
pub struct StreamLimits {
    /// Most characters of text per stream (`synthesis.max_stream_text_chars`).
    pub max_text_chars: usize,
    /// Longest wait for the next text event (`synthesis.stream_idle_timeout_ms`).
    pub idle_timeout: Duration,
}

/// Where one sentence's audio came from, in the summary.
#[derive(Clone, Debug, PartialEq)]
pub struct SentenceReport {
    /// The sentence as synthesized (markdown removed).
    pub text: String,
    /// Its start in the stream, ms.
    pub begin_ms: u64,
    /// Its duration, ms.
    pub duration_ms: u64,
    /// Its source.
    pub served: Served,
    /// Its audio stopped early: the engine failed after it began (later sentences fell back).
    pub truncated: bool,
}

/// A sentence being opened by the provider, on its own task (aborted when dropped: the
/// client left, and its upstream request goes with it).
struct Opening {
    text: String,
    task: tokio::task::JoinHandle<Result<Opened, EngineError>>,
}

impl Drop for Opening {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The sentence whose audio is being forwarded.
struct Current {
    text: String,
    served: Served,
    stream: crate::engine::SynthStream,
    /// Its segment on the audio task, once its first audio came.
    bytes: Option<(mpsc::Sender<Bytes>, InputEncoding)>,
    words: Arc<std::sync::Mutex<Vec<WordTiming>>>,
    joins: Joins,
    bytes_in: u64,
}

/// The text read so far: what the streamed-upstream phase hands the per-sentence one.
struct Read {
    segmenter: Segmenter,
    /// Complete sentences not yet given to an engine.
    waiting: VecDeque<String>,
    /// The client half-closed.
    input_done: bool,
    received_chars: usize,
    last_input: Instant,
}

impl Read {
    fn new() -> Self {
        Self {
            segmenter: Segmenter::new(),
            waiting: VecDeque::new(),
            input_done: false,
            received_chars: 0,
            last_input: Instant::now(),
        }
    }

    /// Take one text event (`None`: the client went away).
    fn take(&mut self, event: Option<TextEvent>, limits: StreamLimits) -> Result<(), Stop> {
        self.last_input = Instant::now();
        match event {
            None => return Err(Stop::Gone),
            Some(TextEvent::Invalid(e)) => return Err(Stop::Failed(e)),
            Some(TextEvent::Text(piece)) => {
                self.received_chars += piece.chars().count();
                if self.received_chars > limits.max_text_chars {
                    return Err(Stop::Failed(Error::invalid(format!(
                        "text: the stream's text exceeds the limit of {} characters \
                         (synthesis.max_stream_text_chars)",
                        limits.max_text_chars
                    ))));
                }
                self.waiting.extend(self.segmenter.push(&piece));
            }
            Some(TextEvent::Flush) => self.waiting.extend(self.segmenter.flush()),
            Some(TextEvent::End) => {
                self.input_done = true;
                self.waiting
                    .extend(std::mem::take(&mut self.segmenter).finish());
            }
        }
        Ok(())
    }
}

fn idle_exceeded(limits: StreamLimits) -> Stop {
    Stop::Failed(Error::deadline_exceeded(format!(
        "no text, flush or end of text for {} ms (synthesis.stream_idle_timeout_ms)",
        limits.idle_timeout.as_millis()
    )))
}

/// Resolves at `deadline`, or never.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn next_event(current: &mut Option<Current>) -> Option<Result<SynthEvent, EngineError>> {
    match current {
        Some(c) => c.stream.next().await,
        None => std::future::pending().await,
    }
}

async fn front_opened(
    opening: &mut VecDeque<Opening>,
    wanted: bool,
) -> Result<Result<Opened, EngineError>, tokio::task::JoinError> {
    match opening.front_mut() {
        Some(o) if wanted => (&mut o.task).await,
        _ => std::future::pending().await,
    }
}

/// The engine failed mid-stream: the sentences opened ahead (none of their audio has gone
/// out) are dropped, which drops their upstream requests, and go back to the front of the
/// queue, to be opened from the fallback chain.
fn reopen(opening: &mut VecDeque<Opening>, waiting: &mut VecDeque<String>) {
    for o in opening.drain(..).rev() {
        waiting.push_front(o.text.clone());
    }
}

/// Start a streamed-text job: returns the door's input and the job's events.
pub(super) fn start_stream(
    provider: Arc<Provider>,
    job: Job,
    start: Start,
    limits: StreamLimits,
) -> (StreamInput, Events) {
    let (text_tx, text_rx) = mpsc::channel(TEXT_EVENTS);
    let (tx, rx) = mpsc::channel(start.buffer.max(1));
    let span = tracing::info_span!("synthesize_stream", request_id = %job.request.request_id);
    let state = State {
        provider,
        job,
        tx,
        sentences: Vec::new(),
        characters: 0,
        upstream_request_ids: Vec::new(),
        failed_engine: None,
        info_sent: false,
        audible: Vec::new(),
    };
    tokio::spawn(tracing::Instrument::instrument(
        state.run(start, limits, text_rx),
        span,
    ));
    (text_tx, Events::new(rx))
}

type Sender = mpsc::Sender<Result<Event, Error>>;

struct State {
    provider: Arc<Provider>,
    job: Job,
    tx: Sender,
    sentences: Vec<SentenceReport>,
    characters: u32,
    upstream_request_ids: Vec<String>,
    /// Why the requested engine is skipped for the rest of the stream (it failed mid-stream).
    failed_engine: Option<String>,
    info_sent: bool,
    /// Whether each sentence of `sentences` had audio (a segment on the audio task).
    audible: Vec<bool>,
}

/// How a job ended without a summary.
enum Stop {
    /// The client went away: nothing to send.
    Gone,
    /// This error ends the stream.
    Failed(Error),
}

impl State {
    async fn run(mut self, start: Start, limits: StreamLimits, text: mpsc::Receiver<TextEvent>) {
        let Start {
            cancel,
            deadline,
            received,
            buffer: _,
            metrics_model,
            door,
            slots,
        } = start;
        let _slots = slots;
        let _active = metrics_model
            .as_ref()
            .map(|_| metrics::ActiveStream::start());
        let (deadline, deadline_message) = match deadline {
            Some((at, message)) => (Some(at), message),
            None => (None, String::new()),
        };
        self.job.request.deadline = deadline;
        let request_id = self.job.request.request_id.clone();
        let count = |engine: &str, outcome: Result<(), ErrorKind>| {
            if let Some(model) = &metrics_model {
                metrics().door_outcome(door, model, engine, outcome);
            }
        };

        let (segments_tx, segments_rx) = mpsc::channel::<Segment>(1);
        // Each output waits for room in the bounded event channel: a slow client slows the
        // audio task, which slows the forwarding of each sentence's bytes.
        let sink = ChannelSink::new(self.tx.clone(), event_of);
        let audio = SegmentsTask::spawn(self.job.render, segments_rx, sink);

        let mut read = Read::new();
        let mut text = text;
        let mut outcome = Ok(());
        let probe = SynthesisRequest {
            text: String::new(),
            ..self.job.request.clone()
        };
        if self.job.engine.streams_text(&probe) {
            outcome = self
                .upstream_loop(
                    &mut text,
                    &mut read,
                    &segments_tx,
                    limits,
                    &cancel,
                    deadline,
                    &deadline_message,
                )
                .await;
        }
        if outcome.is_ok() {
            outcome = self
                .sentences_loop(
                    text,
                    read,
                    segments_tx,
                    limits,
                    &cancel,
                    deadline,
                    &deadline_message,
                )
                .await;
        }
        let engine = self
            .sentences
            .first()
            .map(|s| s.served.engine.clone())
            .unwrap_or_default();
        match outcome {
            Ok(()) => {}
            Err(Stop::Gone) => {
                cancel.cancel();
                tracing::debug!(%request_id, "client went away; streamed job cancelled");
                count(&engine, Err(ErrorKind::Cancelled));
                return;
            }
            Err(Stop::Failed(error)) => {
                cancel.cancel();
                count(&engine, Err(error.kind()));
                let _ = self.tx.send(Err(error)).await;
                return;
            }
        }
        // Every sentence is on the audio task: wait for its end (within the deadline).
        let report = tokio::select! {
            r = audio.join() => r,
            () = self.tx.closed() => {
                count(&engine, Err(ErrorKind::Cancelled));
                return;
            }
            () = until(deadline) => {
                count(&engine, Err(ErrorKind::DeadlineExceeded));
                let _ = self.tx.send(Err(Error::deadline_exceeded(deadline_message))).await;
                return;
            }
        };
        let report = match report {
            Ok(r) => r,
            Err(error) => {
                if matches!(error, JobError::ClientGone) {
                    count(&engine, Err(ErrorKind::Cancelled));
                    return;
                }
                let error = failed(&error);
                count(&engine, Err(error.kind()));
                let _ = self.tx.send(Err(error)).await;
                return;
            }
        };
        let mut spans = report.spans.iter();
        let mut end_ms = 0;
        for (sentence, audible) in self.sentences.iter_mut().zip(&self.audible) {
            match spans.next().filter(|_| *audible) {
                Some(span) => {
                    sentence.begin_ms = span.begin_ms;
                    sentence.duration_ms = span.duration_ms;
                    end_ms = span.begin_ms + span.duration_ms;
                }
                None => sentence.begin_ms = end_ms,
            }
        }
        let ttfa = report
            .first_chunk_at
            .map(|t| t.saturating_duration_since(received));
        let Some(first) = self.sentences.first() else {
            return;
        };
        let mut served = first.served.clone();
        served.cache_hit = self.sentences.iter().all(|s| s.served.cache_hit);
        served.fallback_reason = self
            .sentences
            .iter()
            .find_map(|s| s.served.fallback_reason.clone());
        let rate = u64::from(self.job.render.output.spec.sample_rate);
        count(&served.engine, Ok(()));
        tracing::info!(
            %request_id,
            frames = report.frames,
            sentences = self.sentences.len(),
            cached = self.sentences.iter().filter(|s| s.served.cache_hit).count(),
            fallback = self.sentences.iter().filter(|s| s.served.fallback_reason.is_some()).count(),
            ttfa_ms = ttfa.map(|d| d.as_secs_f64() * 1e3),
            "streamed synthesis finished"
        );
        let summary = Summary {
            frames: report.frames,
            duration_ms: (report.frames * 1000 + rate / 2) / rate,
            bytes: report.bytes,
            characters: self.characters,
            upstream_request_ids: std::mem::take(&mut self.upstream_request_ids),
            time_to_first_audio: ttfa,
            served,
            sentences: std::mem::take(&mut self.sentences),
        };
        let _ = self.tx.send(Ok(Event::Summary(summary))).await;
    }

    /// Read text, cut sentences, open them ahead, forward them in order; `Ok` once every
    /// sentence is on the audio task.
    #[allow(clippy::too_many_arguments)]
    async fn sentences_loop(
        &mut self,
        mut text: mpsc::Receiver<TextEvent>,
        mut read: Read,
        segments: mpsc::Sender<Segment>,
        limits: StreamLimits,
        cancel: &CancellationToken,
        deadline: Option<Instant>,
        deadline_message: &str,
    ) -> Result<(), Stop> {
        let mut opening: VecDeque<Opening> = VecDeque::new();
        let mut current: Option<Current> = None;
        loop {
            let input_done = read.input_done;
            // Top up the look-ahead.
            while opening.len() + usize::from(current.is_some()) < SENTENCES_IN_FLIGHT
                && let Some(sentence) = read.waiting.pop_front()
            {
                opening.push_back(self.open(sentence));
            }
            if input_done && read.waiting.is_empty() && opening.is_empty() && current.is_none() {
                if self.sentences.is_empty() {
                    return Err(Stop::Failed(Error::invalid(
                        "text: the stream ended without any text to speak",
                    )));
                }
                return Ok(());
            }
            let idle_at = read.last_input + limits.idle_timeout;
            tokio::select! {
                biased;
                () = cancel.cancelled() => {
                    return Err(Stop::Failed(Error::unavailable("herald is shutting down")));
                }
                () = self.tx.closed() => return Err(Stop::Gone),
                () = until(deadline) => {
                    tracing::info!("deadline exceeded; streamed job cancelled");
                    return Err(Stop::Failed(Error::deadline_exceeded(deadline_message)));
                }
                event = text.recv(), if !input_done => read.take(event, limits)?,
                () = tokio::time::sleep_until(idle_at), if !input_done => {
                    return Err(idle_exceeded(limits));
                }
                opened = front_opened(&mut opening, current.is_none()) => {
                    let Some(front) = opening.pop_front() else { continue };
                    let opened = match opened {
                        Ok(r) => r,
                        Err(_) => return Err(Stop::Failed(failed(&JobError::Panicked))),
                    };
                    match opened {
                        Ok(opened) => current = Some(self.begin(front.text.clone(), opened).await?),
                        Err(error) => {
                            if self.tx.is_closed() {
                                return Err(Stop::Gone);
                            }
                            return Err(Stop::Failed(failed(&JobError::Engine(error))));
                        }
                    }
                }
                event = next_event(&mut current) => {
                    let Some(c) = current.as_mut() else { continue };
                    match event {
                        Some(Ok(SynthEvent::Audio { encoding, data })) => {
                            self.audio(c, &segments, encoding, data, cancel, deadline, deadline_message).await?;
                        }
                        Some(Ok(SynthEvent::Words(w))) => crate::error::lock(&c.words).extend(w),
                        Some(Ok(SynthEvent::Boundary)) => {
                            if let Some((_, InputEncoding::Pcm16Le(spec))) = &c.bytes {
                                c.joins.push(c.bytes_in / (2 * u64::from(spec.channels)));
                            }
                        }
                        Some(Ok(SynthEvent::Finished { characters, upstream_request_ids })) => {
                            let chars = u32::try_from(c.text.chars().count()).unwrap_or(u32::MAX);
                            self.characters = self.characters.saturating_add(characters.unwrap_or(chars));
                            self.upstream_request_ids.extend(upstream_request_ids);
                            self.end_sentence(current.take(), false);
                        }
                        Some(Err(error)) => {
                            self.failed_mid_sentence(&mut current, error)?;
                            reopen(&mut opening, &mut read.waiting);
                        }
                        None => {
                            self.failed_mid_sentence(&mut current, EngineError::Truncated)?;
                            reopen(&mut opening, &mut read.waiting);
                        }
                    }
                }
            }
        }
    }

    /// Start opening `text` on its own task.
    fn open(&self, text: String) -> Opening {
        let provider = Arc::clone(&self.provider);
        let engine = Arc::clone(&self.job.engine);
        let options = self.job.options;
        let request = SynthesisRequest {
            text: text.clone(),
            ..self.job.request.clone()
        };
        let failed_engine = self.failed_engine.clone();
        let task = tokio::spawn(async move {
            if let Some(reason) = failed_engine
                && let Some(opened) = provider
                    .open_fallback(&request, &engine, options, reason)
                    .await
            {
                return Ok(opened);
            }
            provider.open(request, engine, options).await
        });
        Opening { text, task }
    }

    /// The front sentence has a source: it becomes the current one (the first sends `Info`).
    async fn begin(&mut self, text: String, opened: Opened) -> Result<Current, Stop> {
        self.info(&opened.served).await?;
        if opened.served.fallback_reason.is_some() && self.failed_engine.is_none() {
            tracing::info!(reason = ?opened.served.fallback_reason, "a sentence fell back");
        }
        Ok(Current {
            text,
            served: opened.served,
            stream: opened.stream,
            bytes: None,
            words: Arc::default(),
            joins: Joins::default(),
            bytes_in: 0,
        })
    }

    /// Send `Info` (with `served`), unless it went out already.
    async fn info(&mut self, served: &Served) -> Result<(), Stop> {
        if self.info_sent {
            return Ok(());
        }
        self.info_sent = true;
        let info = Info {
            output: self.job.render.output,
            served: served.clone(),
            request_id: self.job.request.request_id.clone(),
            requested_model: self.job.request.model.clone(),
            requested_voice: self.job.request.voice.clone(),
        };
        if self.tx.send(Ok(Event::Info(info))).await.is_err() {
            return Err(Stop::Gone);
        }
        Ok(())
    }

    /// Forward one piece of the current sentence's audio (its first opens its segment).
    #[allow(clippy::too_many_arguments)]
    async fn audio(
        &mut self,
        c: &mut Current,
        segments: &mpsc::Sender<Segment>,
        encoding: InputEncoding,
        data: Bytes,
        cancel: &CancellationToken,
        deadline: Option<Instant>,
        deadline_message: &str,
    ) -> Result<(), Stop> {
        let tx = match &c.bytes {
            Some((tx, first)) => {
                if *first != encoding {
                    return Err(Stop::Failed(failed(&JobError::Engine(
                        EngineError::Protocol(format!(
                            "audio encoding changed mid-stream from {first:?} to {encoding:?}"
                        )),
                    ))));
                }
                tx.clone()
            }
            None => {
                let (tx, rx) = mpsc::channel(BYTES_IN_FLIGHT);
                let segment = Segment {
                    encoding,
                    bytes: rx,
                    words: Arc::clone(&c.words),
                    joins: c.joins.clone(),
                };
                let sent = tokio::select! {
                    r = segments.send(segment) => r.is_ok(),
                    () = cancel.cancelled() => false,
                    () = until(deadline) => {
                        return Err(Stop::Failed(Error::deadline_exceeded(deadline_message)));
                    }
                };
                if !sent {
                    return Err(self.audio_thread_gone());
                }
                c.bytes = Some((tx.clone(), encoding));
                tx
            }
        };
        c.bytes_in += data.len() as u64;
        let sent = tokio::select! {
            r = tx.send(data) => r.is_ok(),
            () = cancel.cancelled() => false,
            () = until(deadline) => {
                return Err(Stop::Failed(Error::deadline_exceeded(deadline_message)));
            }
        };
        if sent {
            Ok(())
        } else {
            Err(self.audio_thread_gone())
        }
    }

    /// The audio task stopped early: the client left, or the audio was malformed (its error
    /// comes when the thread is joined, which the caller's drop of everything leads to).
    fn audio_thread_gone(&self) -> Stop {
        if self.tx.is_closed() {
            Stop::Gone
        } else {
            Stop::Failed(Error::internal(
                "upstream protocol error: the audio of a sentence could not be processed",
            ))
        }
    }

    fn end_sentence(&mut self, current: Option<Current>, truncated: bool) {
        if let Some(c) = current {
            self.audible.push(c.bytes.is_some());
            // Dropping its bytes sender ends its segment on the audio task.
            self.sentences.push(SentenceReport {
                text: c.text,
                begin_ms: 0,
                duration_ms: 0,
                served: c.served,
                truncated,
            });
        }
    }

    /// The current sentence's engine failed after the sentence opened. With fallback allowed
    /// and a failure another source may fix, the sentence ends here and the rest of the
    /// stream skips the engine; otherwise the stream ends with the error.
    fn failed_mid_sentence(
        &mut self,
        current: &mut Option<Current>,
        error: EngineError,
    ) -> Result<(), Stop> {
        let classified = error.classify();
        let may = self.job.options.fallback && classified.kind().is_transient();
        let from_engine = current
            .as_ref()
            .is_some_and(|c| c.served.fallback_reason.is_none() && !c.served.cache_hit);
        if !may || !from_engine {
            if self.tx.is_closed() {
                return Err(Stop::Gone);
            }
            return Err(Stop::Failed(failed(&JobError::Engine(error))));
        }
        let reason = format!(
            "{} ({}) failed mid-stream: {}: {}",
            self.job.request.model,
            self.job.engine.name(),
            classified.kind().description(),
            classified.message()
        );
        tracing::warn!(%reason, "the rest of the streamed text falls back");
        self.failed_engine = Some(reason);
        self.end_sentence(current.take(), true);
        Ok(())
    }
}
