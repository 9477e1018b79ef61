//! One Wyoming connection: events in → core requests; core events → audio events out.
//!
//! The reader task parses events into a bounded channel; this loop answers them and writes the
//! audio of the job in flight, one job at a time, in order. While a one-shot `synthesize`
//! runs, at most one more event is read and held until it ends (clients send one request at a
//! time; reading on notices a client that leaves); during a streaming session
//! text keeps arriving while a sentence is spoken, and the text waiting is bounded by
//! `synthesis.max_text_chars`.

use std::{collections::VecDeque, sync::Arc};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncRead, AsyncWrite, BufReader, BufWriter, WriteHalf},
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;

use super::{
    sentences::Sentences,
    voices::{self, Asked, Voice},
    wire::{self, WireError},
};
use crate::{
    audio::encode::negotiate::{Codec, FormatRequest},
    config::WyomingSettings,
    error::{Error, ErrorKind},
    synthesis::{Core, Event, Events, Request},
};

/// Parsed events buffered between the reader task and the session.
const INCOMING: usize = 8;

/// What every connection of the door shares.
pub(super) struct Door {
    core: Arc<Core>,
    settings: WyomingSettings,
    /// The catalogue, read once: engines' voices do not change while herald runs.
    voices: Vec<Voice>,
    /// The `info` event's data.
    info: Value,
}

impl Door {
    pub(super) fn new(core: Arc<Core>, settings: WyomingSettings) -> Self {
        let voices = voices::catalogue(&core);
        let info = voices::info(&voices);
        Self {
            core,
            settings,
            voices,
            info,
        }
    }
}

/// The `code` of an `error` event: the kind's gRPC name in snake case.
pub(super) fn code(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidArgument => "invalid_argument",
        ErrorKind::NotFound => "not_found",
        ErrorKind::FailedPrecondition => "failed_precondition",
        ErrorKind::ResourceExhausted => "resource_exhausted",
        ErrorKind::Unavailable => "unavailable",
        ErrorKind::Internal => "internal",
        ErrorKind::DeadlineExceeded => "deadline_exceeded",
        ErrorKind::Cancelled => "cancelled",
        ErrorKind::Unauthenticated => "unauthenticated",
    }
}

/// A streaming session (`synthesize-start` … `synthesize-stop`).
#[derive(Default)]
struct Stream {
    /// The model and voice every sentence is spoken with.
    voice: (String, String),
    sentences: Sentences,
    /// Complete sentences not yet started.
    pending: VecDeque<String>,
    /// `synthesize-stop` has arrived.
    stopping: bool,
    /// An error was sent: the rest of the session's text is ignored.
    failed: bool,
}

impl Stream {
    fn waiting_chars(&self) -> usize {
        self.pending
            .iter()
            .map(|s| s.chars().count())
            .sum::<usize>()
            + self.sentences.pending_chars()
    }
}

enum Mode {
    Idle,
    /// A `synthesize` is being answered.
    Single,
    Stream(Stream),
}

/// One connection's state.
pub(super) struct Session {
    door: Arc<Door>,
    peer: String,
    mode: Mode,
    /// The job whose audio is being sent.
    job: Option<Events>,
    /// Rate and channels of the audio response under way (`audio-start` sent), if any.
    format: Option<(u32, u16)>,
    /// Frames sent in the audio response under way.
    frames: u64,
}

type Out<S> = BufWriter<WriteHalf<S>>;

/// Aborts the reader task when the session ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Session {
    pub(super) fn new(door: Arc<Door>, peer: String) -> Self {
        Self {
            door,
            peer,
            mode: Mode::Idle,
            job: None,
            format: None,
            frames: 0,
        }
    }

    /// Serve the connection until the client leaves, its framing breaks, or `stop`.
    pub(super) async fn run<S>(mut self, stream: S, stop: CancellationToken) -> std::io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (r, w) = tokio::io::split(stream);
        let (tx, mut rx) = mpsc::channel::<Result<wire::Event, WireError>>(INCOMING);
        let _reader = AbortOnDrop(tokio::spawn(async move {
            let mut r = BufReader::new(r);
            loop {
                let item = match wire::read(&mut r).await {
                    Ok(Some(e)) => Ok(e),
                    Ok(None) => break,
                    Err(e) => Err(e),
                };
                let last = item.is_err();
                if tx.send(item).await.is_err() || last {
                    break;
                }
            }
        }));
        let mut out = BufWriter::new(w);
        // An event that arrived while a `synthesize` was answered: handled after it. Reading
        // goes on meanwhile (for one event), so a client that leaves stops its job at once.
        let mut deferred: Option<wire::Event> = None;
        loop {
            let single = matches!(self.mode, Mode::Single);
            if !single && let Some(event) = deferred.take() {
                self.on_event(event, &mut out).await?;
                self.advance(&mut out).await?;
                continue;
            }
            let reading = deferred.is_none();
            tokio::select! {
                biased;
                () = stop.cancelled() => return Ok(()),
                item = next(&mut self.job), if self.job.is_some() => {
                    self.on_job(item, &mut out).await?;
                }
                msg = rx.recv(), if reading => match msg {
                    // The client left: nobody reads what is in flight.
                    None => return Ok(()),
                    Some(Err(WireError::Io(e))) => return Err(e),
                    Some(Err(e)) => {
                        // The framing is lost: say why and close.
                        let text = e.to_string();
                        send_error(&mut out, &Error::invalid(text)).await?;
                        return Ok(());
                    }
                    Some(Ok(event)) if matches!(self.mode, Mode::Single) => deferred = Some(event),
                    Some(Ok(event)) => self.on_event(event, &mut out).await?,
                },
            }
            self.advance(&mut out).await?;
        }
    }

    fn start(&self, text: String, voice: &(String, String)) -> Result<Events, Error> {
        let s = &self.door.settings;
        let (rate, channels) = self.format.unwrap_or((s.sample_rate, s.channels));
        let request = Request {
            text,
            model: voice.0.clone(),
            voice: voice.1.clone(),
            format: FormatRequest {
                codec: Codec::PcmS16Le,
                sample_rate_hz: rate,
                channels: u32::from(channels),
                ..FormatRequest::default()
            },
            ..Request::default()
        };
        self.door.core.synthesize_via(
            crate::metrics::DOOR_WYOMING,
            request,
            self.peer.clone(),
            None,
        )
    }

    async fn on_event<S: AsyncWrite>(
        &mut self,
        event: wire::Event,
        out: &mut Out<S>,
    ) -> std::io::Result<()> {
        let text = || match event.data.get("text") {
            Some(Value::String(t)) => Ok(t.clone()),
            _ => Err(Error::invalid("text: missing or not a string")),
        };
        match event.kind.as_str() {
            "describe" => wire::write(out, "info", self.door.info.clone(), &[]).await?,
            "ping" => wire::write(out, "pong", json!({}), &[]).await?,
            "synthesize" if matches!(self.mode, Mode::Stream(_)) => {
                // Sent inside a streaming session for servers without streaming: the chunks
                // already carry its text.
                tracing::debug!(peer = %self.peer, "wyoming: synthesize inside a streaming session ignored");
            }
            "synthesize" => {
                let started = text().and_then(|t| {
                    let asked = Asked::from_data(&event.data);
                    let voice = voices::resolve(&self.door.core, &self.door.voices, &asked)?;
                    self.start(t, &voice)
                });
                match started {
                    Ok(events) => {
                        self.job = Some(events);
                        self.mode = Mode::Single;
                    }
                    Err(e) => send_error(out, &e).await?,
                }
            }
            "synthesize-start" => {
                if matches!(self.mode, Mode::Stream(_)) {
                    return send_error(
                        out,
                        &Error::invalid("synthesize-start: a streaming session is already open"),
                    )
                    .await;
                }
                let asked = Asked::from_data(&event.data);
                let mut stream = Stream::default();
                match voices::resolve(&self.door.core, &self.door.voices, &asked) {
                    Ok(voice) => stream.voice = voice,
                    Err(e) => {
                        stream.failed = true;
                        send_error(out, &e).await?;
                    }
                }
                self.mode = Mode::Stream(stream);
            }
            "synthesize-chunk" => {
                let max = self.door.core.settings().max_text_chars;
                let Mode::Stream(s) = &mut self.mode else {
                    tracing::debug!(peer = %self.peer, "wyoming: synthesize-chunk outside a session ignored");
                    return Ok(());
                };
                if s.failed {
                    return Ok(());
                }
                match text() {
                    Ok(t) => {
                        let complete = s.sentences.push(&t);
                        s.pending.extend(complete);
                        if s.waiting_chars() > max {
                            s.failed = true;
                            s.pending.clear();
                            s.sentences = Sentences::default();
                            let e = Error::invalid(format!(
                                "text: more than {max} characters waiting to be spoken \
                                 (synthesis.max_text_chars)"
                            ));
                            send_error(out, &e).await?;
                        }
                    }
                    Err(e) => {
                        s.failed = true;
                        s.pending.clear();
                        send_error(out, &e).await?;
                    }
                }
            }
            "synthesize-stop" => {
                if let Mode::Stream(s) = &mut self.mode {
                    if !s.failed {
                        let rest = s.sentences.finish();
                        s.pending.extend(rest);
                    }
                    s.stopping = true;
                }
            }
            other => {
                tracing::debug!(peer = %self.peer, kind = %other, "wyoming: event ignored");
            }
        }
        Ok(())
    }

    async fn on_job<S: AsyncWrite>(
        &mut self,
        item: Option<Result<Event, Error>>,
        out: &mut Out<S>,
    ) -> std::io::Result<()> {
        match item {
            Some(Ok(Event::Info(info))) => {
                if self.format.is_none() {
                    let spec = info.output.spec;
                    self.format = Some((spec.sample_rate, spec.channels));
                    self.frames = 0;
                    let data = json!({"rate": spec.sample_rate, "width": 2, "channels": spec.channels, "timestamp": 0});
                    wire::write(out, "audio-start", data, &[]).await?;
                }
            }
            Some(Ok(Event::Audio(chunk))) => {
                let (rate, channels) = self.format.unwrap_or((1, 1));
                let data = json!({
                    "rate": rate, "width": 2, "channels": channels, "timestamp": self.timestamp(),
                });
                self.frames += u64::from(chunk.frames);
                wire::write(out, "audio-chunk", data, &chunk.data).await?;
            }
            Some(Ok(Event::Words(_))) => {}
            Some(Ok(Event::Summary(_))) | None => {
                self.job = None;
                if matches!(self.mode, Mode::Single) {
                    self.finish_audio(out).await?;
                    self.mode = Mode::Idle;
                }
            }
            Some(Err(e)) => {
                self.job = None;
                send_error(out, &e).await?;
                match &mut self.mode {
                    Mode::Stream(s) => {
                        s.failed = true;
                        s.pending.clear();
                    }
                    _ => {
                        self.mode = Mode::Idle;
                        self.format = None;
                    }
                }
            }
        }
        Ok(())
    }

    /// With no job in flight: start the next sentence of a streaming session, or end the
    /// session once it is stopped and spoken.
    async fn advance<S: AsyncWrite>(&mut self, out: &mut Out<S>) -> std::io::Result<()> {
        if self.job.is_some() {
            return Ok(());
        }
        let Mode::Stream(s) = &mut self.mode else {
            return Ok(());
        };
        if !s.failed
            && let Some(sentence) = s.pending.pop_front()
        {
            let voice = s.voice.clone();
            match self.start(sentence, &voice) {
                Ok(events) => self.job = Some(events),
                Err(e) => {
                    if let Mode::Stream(s) = &mut self.mode {
                        s.failed = true;
                        s.pending.clear();
                    }
                    send_error(out, &e).await?;
                }
            }
            return Ok(());
        }
        if s.stopping {
            if s.failed {
                self.format = None;
            } else {
                self.finish_audio(out).await?;
            }
            self.mode = Mode::Idle;
            wire::write(out, "synthesize-stopped", json!({}), &[]).await?;
        }
        Ok(())
    }

    /// `audio-stop` for the response under way, if it started.
    async fn finish_audio<S: AsyncWrite>(&mut self, out: &mut Out<S>) -> std::io::Result<()> {
        if self.format.is_some() {
            let data = json!({"timestamp": self.timestamp()});
            wire::write(out, "audio-stop", data, &[]).await?;
        }
        self.format = None;
        self.frames = 0;
        Ok(())
    }

    /// Milliseconds of audio sent in the response under way.
    fn timestamp(&self) -> u64 {
        let rate = self.format.map_or(1, |(r, _)| u64::from(r.max(1)));
        self.frames * 1000 / rate
    }
}

/// The next event of the job in flight (never resolves without one).
async fn next(job: &mut Option<Events>) -> Option<Result<Event, Error>> {
    match job {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}

async fn send_error<S: AsyncWrite>(out: &mut Out<S>, e: &Error) -> std::io::Result<()> {
    tracing::debug!(code = code(e.kind()), error = %e.message(), "wyoming: error event");
    wire::write(
        out,
        "error",
        json!({"text": e.message(), "code": code(e.kind())}),
        &[],
    )
    .await
}
