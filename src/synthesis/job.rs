//! One synthesis job, owned from start to end: open the source through the provider (cache →
//! engine → fallback), run the pipeline, and yield [`Event`]s (info, audio, word timings,
//! summary) or one domain [`Error`], on a bounded channel.
//!
//! The job stops as soon as whoever reads the channel drops it (the client left), its token is
//! cancelled (shutdown, an interrupted announcement), or its deadline passes; stopping drops
//! the engine stream at once, which kills a subprocess or drops an HTTP request. Failures are
//! classified and logged here, once, with their whole error chain. Must not know any door:
//! no wire types, no status codes.

use std::{sync::Arc, time::Duration};

use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    audio::{OutputFormat, chunk::Chunk},
    engine::{SynthesisRequest, Synthesizer, WordTiming},
    error::{Error, ErrorKind, chain},
    metrics::{self, metrics},
    pipeline::{self, ChannelSink, JobError, Output, Render},
    provider::{self, Provider, Served},
};

use super::limits::Slots;

/// Everything one job needs, validated ([`super::Core::prepare`]).
#[derive(Clone)]
pub struct Job {
    /// What to synthesize.
    pub request: SynthesisRequest,
    /// The engine serving `request.model`.
    pub engine: Arc<dyn Synthesizer>,
    /// What the audio chain makes of the audio.
    pub render: Render,
    /// Cache policy and fallback permission.
    pub options: provider::Options,
    /// Characters of the request's text (billed when upstream does not say).
    pub characters: u32,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("request_id", &self.request.request_id)
            .field("model", &self.request.model)
            .field("engine", &self.engine.name())
            .field("render", &self.render)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// What a job yields, in order: one `Info`, then `Audio` and `Words`, then one `Summary`; or
/// an error in place of any of them, which ends the job.
#[derive(Debug)]
pub enum Event {
    /// The source accepted the request; the format and source of what follows.
    Info(Info),
    /// The next chunk of encoded audio.
    Audio(Chunk),
    /// Word timings (only when the request asked for them), before the audio that follows
    /// their arrival.
    Words(Vec<WordTiming>),
    /// The job finished.
    Summary(Summary),
}

/// The first event of a job.
#[derive(Clone, Debug, PartialEq)]
pub struct Info {
    /// The format of the audio.
    pub output: OutputFormat,
    /// Which source serves the request.
    pub served: Served,
    /// The request id.
    pub request_id: String,
    /// The model the request resolved to, before any fallback.
    pub requested_model: String,
    /// The voice the request resolved to, before any fallback.
    pub requested_voice: String,
}

/// The last event of a successful job.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// Frames sent, at the output rate.
    pub frames: u64,
    /// Their duration, ms (rounded).
    pub duration_ms: u64,
    /// Bytes of encoded audio sent.
    pub bytes: u64,
    /// Characters billed (upstream's count, else the request's).
    pub characters: u32,
    /// Upstream request ids.
    pub upstream_request_ids: Vec<String>,
    /// From the request's arrival to the first chunk handed out.
    pub time_to_first_audio: Option<Duration>,
    /// Which source served the request (a streamed text: its first sentence's, with
    /// `cache_hit` true only when every sentence came from the cache, and the first sentence's
    /// fallback reason, if any sentence fell back).
    pub served: Served,
    /// A streamed text's sentences, in order (empty for a whole text).
    pub sentences: Vec<super::stream::SentenceReport>,
}

/// How a job is run: who reads it, until when, and what it holds.
#[derive(Debug)]
pub struct Start {
    /// Stops the job (shutdown, an interrupted announcement).
    pub cancel: CancellationToken,
    /// When the job must have finished, and what the client is told if it has not.
    pub deadline: Option<(Instant, String)>,
    /// When the request arrived (time to first audio counts from here).
    pub received: Instant,
    /// Events buffered between the job and its reader.
    pub buffer: usize,
    /// Count the job in `herald_requests_total` under this model label.
    pub metrics_model: Option<String>,
    /// The door the job is counted under (`metrics::DOOR_GRPC`, `metrics::DOOR_HTTP`).
    pub door: &'static str,
    /// Admission slots, held until the job ends.
    pub slots: Option<Slots>,
}

impl Start {
    /// A job under `cancel`, with no deadline, slots or metrics.
    pub fn new(cancel: CancellationToken, buffer: usize) -> Self {
        Self {
            cancel,
            deadline: None,
            received: Instant::now(),
            buffer,
            metrics_model: None,
            door: metrics::DOOR_GRPC,
            slots: None,
        }
    }
}

/// The events of a running job, ending after its summary or its error (the audio chain may
/// still be flushing when a deadline ends the job; nothing of that reaches the reader).
/// Dropping it stops the job.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Result<Event, Error>>,
    ended: bool,
}

impl Events {
    /// The events `rx` receives.
    pub(super) fn new(rx: mpsc::Receiver<Result<Event, Error>>) -> Self {
        Self { rx, ended: false }
    }

    /// The next event; `None` after the summary or an error.
    pub async fn recv(&mut self) -> Option<Result<Event, Error>> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    fn poll_event(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Event, Error>>> {
        if self.ended {
            return std::task::Poll::Ready(None);
        }
        let item = std::task::ready!(self.rx.poll_recv(cx));
        if matches!(item, None | Some(Err(_)) | Some(Ok(Event::Summary(_)))) {
            self.ended = true;
            // Whatever is still on its way can go no further: its senders stop at once.
            self.rx.close();
        }
        std::task::Poll::Ready(item)
    }
}

impl futures::Stream for Events {
    type Item = Result<Event, Error>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.get_mut().poll_event(cx)
    }
}

/// Start `job` on `provider`: spawns the job and returns its events.
pub fn start(provider: Arc<Provider>, job: Job, start: Start) -> Events {
    let (tx, rx) = mpsc::channel(start.buffer.max(1));
    let span = tracing::info_span!("synthesize", request_id = %job.request.request_id);
    tokio::spawn(tracing::Instrument::instrument(
        run(provider, job, start, tx),
        span,
    ));
    Events { rx, ended: false }
}

/// The classified error of a failed job, logged once with its whole chain.
pub(super) fn failed(error: &JobError) -> Error {
    let classified = error.classify();
    match classified.kind() {
        ErrorKind::Cancelled => tracing::debug!(error = %chain(error), "job ended: client gone"),
        ErrorKind::Internal => tracing::error!(error = %chain(error), "job failed"),
        kind => tracing::warn!(error = %chain(error), ?kind, "job failed"),
    }
    classified
}

/// A pipeline output as the event a reader gets.
pub(super) fn event_of(out: Output) -> Result<Event, Error> {
    Ok(match out {
        Output::Audio(chunk) => Event::Audio(chunk),
        Output::Words(words) => Event::Words(words),
    })
}

/// Resolves at `deadline`, or never.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

type Sender = mpsc::Sender<Result<Event, Error>>;

/// An uncounted job (an announcement) stopped by its owner has nothing to report: its reader
/// is gone or about to go.
fn quiet(tx: &Sender, cancel: &CancellationToken, uncounted: bool) -> bool {
    uncounted && (tx.is_closed() || cancel.is_cancelled())
}

async fn run(provider: Arc<Provider>, job: Job, start: Start, tx: Sender) {
    let Start {
        cancel,
        deadline,
        received,
        buffer: _,
        metrics_model,
        door,
        slots,
    } = start;
    // Held until this job ends, whatever way it ends.
    let _slots = slots;
    let _active = metrics_model
        .as_ref()
        .map(|_| metrics::ActiveStream::start());
    let count = |engine: &str, outcome: Result<(), ErrorKind>| {
        if let Some(model) = &metrics_model {
            metrics().door_outcome(door, model, engine, outcome);
        }
    };
    let (deadline, deadline_message) = match deadline {
        Some((at, message)) => (Some(at), message),
        None => (None, String::new()),
    };
    let Job {
        mut request,
        engine,
        render,
        options,
        characters,
    } = job;
    request.deadline = deadline;
    let request_id = request.request_id.clone();
    let (requested_model, requested_voice) = (request.model.clone(), request.voice.clone());

    let opened = tokio::select! {
        r = provider.open(request, engine, options) => r.map_err(JobError::Engine),
        () = cancel.cancelled() => Err(JobError::Cancelled),
        () = tx.closed() => {
            tracing::debug!(%request_id, "client went away before synthesis started");
            count("", Err(ErrorKind::Cancelled));
            return;
        }
        () = until(deadline) => {
            tracing::info!(%request_id, "deadline exceeded before synthesis started");
            count("", Err(ErrorKind::DeadlineExceeded));
            let _ = tx.send(Err(Error::deadline_exceeded(deadline_message))).await;
            return;
        }
    };
    let opened = match opened {
        Ok(o) => o,
        Err(error) => {
            if quiet(&tx, &cancel, metrics_model.is_none()) {
                return;
            }
            let error = failed(&error);
            count("", Err(error.kind()));
            let _ = tx.send(Err(error)).await;
            return;
        }
    };
    let served = opened.served;
    let info = Info {
        output: render.output,
        served: served.clone(),
        request_id: request_id.clone(),
        requested_model,
        requested_voice,
    };
    if tx.send(Ok(Event::Info(info))).await.is_err() {
        return;
    }
    // Each output waits for room in the bounded event channel: a slow client slows the job.
    let sink = ChannelSink::new(tx.clone(), event_of);
    let result = tokio::select! {
        r = pipeline::run_stream(opened.stream, render, cancel.clone(), sink) => r,
        () = tx.closed() => {
            // Reader gone: dropping the pipeline future stops the engine at once.
            cancel.cancel();
            tracing::debug!(%request_id, "client went away; job cancelled");
            count(&served.engine, Err(ErrorKind::Cancelled));
            return;
        }
        () = until(deadline) => {
            cancel.cancel();
            tracing::info!(%request_id, "deadline exceeded; job cancelled");
            count(&served.engine, Err(ErrorKind::DeadlineExceeded));
            let _ = tx.send(Err(Error::deadline_exceeded(deadline_message))).await;
            return;
        }
    };
    let event = match result {
        Ok(report) => {
            let ttfa = report
                .first_chunk_at
                .map(|t| t.saturating_duration_since(received));
            count(&served.engine, Ok(()));
            if let (Some(t), Some(_)) = (ttfa, &metrics_model) {
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
            let rate = u64::from(render.output.spec.sample_rate);
            Ok(Event::Summary(Summary {
                frames: report.frames,
                duration_ms: (report.frames * 1000 + rate / 2) / rate,
                bytes: report.bytes,
                characters: report.characters.unwrap_or(characters),
                upstream_request_ids: report.upstream_request_ids,
                time_to_first_audio: ttfa,
                served,
                sentences: Vec::new(),
            }))
        }
        Err(error) => {
            if quiet(&tx, &cancel, metrics_model.is_none()) {
                return;
            }
            let error = failed(&error);
            count(&served.engine, Err(error.kind()));
            Err(error)
        }
    };
    let _ = tx.send(event).await;
}
