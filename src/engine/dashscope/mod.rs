//! DashScope (Alibaba Cloud Model Studio) engines: CosyVoice, Qwen-TTS and MiniMax over HTTP
//! with server-sent events (dashscope-api.md).
//!
//! One [`Client`] (one pooled reqwest client, the key, the base URL, the tuning) is shared by
//! three [`DashScopeEngine`]s, one per [`Family`]. A synthesis splits the text into pieces the
//! model takes whole ([`split`]), runs each piece as one streamed upstream request on its own
//! task with a bounded look-ahead, and a driver task forwards the pieces' audio strictly in
//! order, with short fades where two pieces meet so the joins do not click.
//!
//! Retries: a piece is retried (connect errors, 429, 5xx, timeouts; jittered exponential
//! backoff; at most `max_attempts` tries; never past the client's deadline) only while it has
//! sent no audio. Once a piece has sent audio, its failure ends the stream (UNAVAILABLE): audio
//! is never duplicated. Dropping the stream aborts every piece task, which drops their HTTP
//! requests at once.

pub mod custom;
pub mod family;
pub mod split;
pub mod sse;
pub mod voices;

use std::{collections::VecDeque, sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use tokio::{sync::mpsc, time::Instant};
use tokio_stream::wrappers::ReceiverStream;

pub use self::family::Family;
use self::{
    family::{Decoder, Step},
    sse::{Limits, Parser},
};
use super::{
    EngineError, SynthEvent, SynthStream, SynthesisRequest, Synthesizer, VoiceInfo, WordTiming,
};
use crate::audio::{AudioSpec, InputEncoding};

/// Timeouts, retries, splitting and look-ahead of the DashScope engines.
#[derive(Clone, Debug)]
pub struct Tuning {
    /// TCP + TLS connect.
    pub connect_timeout: Duration,
    /// From sending a request to its first SSE event.
    pub first_event_timeout: Duration,
    /// Longest silence between two reads of a stream.
    pub idle_timeout: Duration,
    /// Tries per piece, including the first (1 = no retries).
    pub max_attempts: u32,
    /// First backoff step; doubles per retry, with full jitter.
    pub retry_base: Duration,
    /// Longest backoff step.
    pub retry_max: Duration,
    /// Pieces in flight at once (the one streaming plus those synthesized ahead).
    pub lookahead: usize,
    /// Longest piece for CosyVoice / Qwen-Audio-TTS, in billed units.
    pub cosyvoice_piece_units: usize,
    /// Longest piece for Qwen-TTS, in billed units.
    pub qwen_piece_units: usize,
    /// Longest piece for MiniMax, in billed units.
    pub minimax_piece_units: usize,
    /// Fade length at the joins between pieces.
    pub join_fade: Duration,
    /// Most upstream HTTP requests at once, over all families and calls.
    pub max_concurrent_requests: usize,
    /// Longest wait for one of those slots.
    pub queue_timeout: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            first_event_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(10),
            max_attempts: 3,
            retry_base: Duration::from_millis(250),
            retry_max: Duration::from_secs(4),
            lookahead: 2,
            cosyvoice_piece_units: 120,
            qwen_piece_units: 600,
            minimax_piece_units: 3000,
            join_fade: Duration::from_millis(8),
            max_concurrent_requests: 32,
            queue_timeout: Duration::from_secs(10),
        }
    }
}

/// Connection settings: the one type the configuration validates into and the client runs
/// with. Its `Debug` never shows the key (`SecretString` prints `[REDACTED]`).
#[derive(Clone, Debug)]
pub struct Settings {
    /// API key.
    pub api_key: SecretString,
    /// Where the key came from (a variable, a file, a systemd credential), for `check-config`
    /// and logs; never the key itself.
    pub api_key_source: String,
    /// Base URL, `{WorkspaceId}` already filled, no trailing slash.
    pub base_url: String,
    /// Workspace id, sent as `X-DashScope-WorkSpace`.
    pub workspace_id: Option<String>,
    /// Timeouts and limits.
    pub tuning: Tuning,
}

/// The shared upstream client.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    settings: Settings,
    /// One permit per upstream HTTP request in flight (`Tuning::max_concurrent_requests`).
    slots: Arc<tokio::sync::Semaphore>,
}

impl Client {
    /// A client (one connection pool for all families).
    pub fn new(settings: Settings) -> Result<Arc<Self>, EngineError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(settings.tuning.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| EngineError::Unavailable {
                engine: "dashscope",
                reason: format!("cannot build the HTTP client: {e}"),
            })?;
        let slots = Arc::new(tokio::sync::Semaphore::new(
            settings.tuning.max_concurrent_requests.max(1),
        ));
        Ok(Arc::new(Self {
            http,
            settings,
            slots,
        }))
    }

    /// The three engines over this client.
    pub fn engines(self: &Arc<Self>) -> Vec<Arc<dyn Synthesizer>> {
        Family::ALL
            .into_iter()
            .map(|family| {
                Arc::new(DashScopeEngine {
                    family,
                    client: Arc::clone(self),
                }) as Arc<dyn Synthesizer>
            })
            .collect()
    }

    fn piece_units(&self, family: Family) -> usize {
        let t = &self.settings.tuning;
        match family {
            Family::CosyVoice => t.cosyvoice_piece_units,
            Family::Qwen => t.qwen_piece_units,
            Family::MiniMax => t.minimax_piece_units,
        }
    }
}

/// One family's engine.
#[derive(Debug)]
pub struct DashScopeEngine {
    family: Family,
    client: Arc<Client>,
}

#[async_trait::async_trait]
impl Synthesizer for DashScopeEngine {
    fn name(&self) -> &'static str {
        self.family.engine_name()
    }

    fn serves_model(&self, model: &str) -> bool {
        Family::for_model(model) == Some(self.family)
    }

    fn default_voice(&self, model: &str) -> String {
        voices::default_voice(model).to_owned()
    }

    fn voices(&self) -> Vec<VoiceInfo> {
        voices::catalogue(self.family)
    }

    fn native_sample_rate(&self, _model: &str, _voice: &str) -> u32 {
        self.family.native_rate()
    }

    fn check_voice(&self, model: &str, voice: &str) -> Result<(), String> {
        voices::check(self.family, model, voice)
    }

    fn check_request(&self, req: &SynthesisRequest) -> Result<(), String> {
        self.family.check(req)
    }

    async fn synthesize(&self, req: SynthesisRequest) -> Result<SynthStream, EngineError> {
        let pieces = split::split(&req.text, self.client.piece_units(self.family));
        if pieces.is_empty() {
            return Err(EngineError::Protocol("nothing to say".to_owned()));
        }
        let rate = self.family.upstream_rate(req.output_sample_rate);
        tracing::debug!(
            request_id = %req.request_id,
            model = %req.model,
            pieces = pieces.len(),
            upstream_rate = rate,
            "dashscope synthesis"
        );
        let job = Arc::new(Job {
            client: Arc::clone(&self.client),
            family: self.family,
            req,
            rate,
        });
        let (tx, rx) = mpsc::channel(16);
        let mut driver = Driver::new(job, pieces);
        // The first piece must be accepted (first audio, or its end) before the stream is
        // handed out, so request errors (bad key, unknown voice, throttling after retries)
        // arrive as an error status before any audio.
        let first = driver.first().await?;
        tokio::spawn(async move { driver.run(first, tx).await });
        Ok(ReceiverStream::new(rx).boxed())
    }
}

/// What one synthesis needs, shared by its piece tasks.
#[derive(Debug)]
struct Job {
    client: Arc<Client>,
    family: Family,
    req: SynthesisRequest,
    rate: u32,
}

/// What a piece task sends to the driver.
#[derive(Debug)]
enum PieceMsg {
    Audio {
        spec: AudioSpec,
        data: Bytes,
    },
    /// Word timings, in ms from the start of the piece's audio.
    Words(Vec<WordTiming>),
    Done {
        characters: Option<u32>,
        request_id: Option<String>,
    },
}

type PieceRx = mpsc::Receiver<Result<PieceMsg, EngineError>>;

/// A running piece: its events, and its task (aborted when dropped).
struct Running {
    rx: PieceRx,
    _task: AbortOnDrop,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the pieces with look-ahead and forwards their audio in order.
struct Driver {
    job: Arc<Job>,
    pending: VecDeque<String>,
    running: VecDeque<Running>,
    /// The spec of the stream (that of its first audio).
    spec: Option<AudioSpec>,
    characters: Option<u32>,
    request_ids: Vec<String>,
    /// Piece index being forwarded (0-based).
    index: usize,
    pieces: usize,
    joins: Joiner,
    /// Audio bytes forwarded so far.
    bytes_out: u64,
    /// Where the current piece's audio starts in the stream, in ms.
    piece_start_ms: u32,
}

impl Driver {
    fn new(job: Arc<Job>, pieces: Vec<String>) -> Self {
        let fade = job.client.settings.tuning.join_fade;
        Self {
            pieces: pieces.len(),
            job,
            pending: pieces.into(),
            running: VecDeque::new(),
            spec: None,
            characters: None,
            request_ids: Vec::new(),
            index: 0,
            joins: Joiner::new(fade),
            bytes_out: 0,
            piece_start_ms: 0,
        }
    }

    /// Keep `lookahead` pieces in flight.
    fn start_pieces(&mut self) {
        let lookahead = self.job.client.settings.tuning.lookahead.max(1);
        while self.running.len() < lookahead {
            let Some(text) = self.pending.pop_front() else {
                break;
            };
            let (tx, rx) = mpsc::channel(32);
            let job = Arc::clone(&self.job);
            let task = tokio::spawn(async move { run_piece(job, text, tx).await });
            self.running.push_back(Running {
                rx,
                _task: AbortOnDrop(task),
            });
        }
    }

    /// The first message of the first piece (or its error).
    async fn first(&mut self) -> Result<Option<Result<PieceMsg, EngineError>>, EngineError> {
        self.start_pieces();
        let msg = self.running[0].rx.recv().await;
        match msg {
            Some(Err(e)) => Err(e),
            other => Ok(other),
        }
    }

    async fn run(
        mut self,
        first: Option<Result<PieceMsg, EngineError>>,
        tx: mpsc::Sender<Result<SynthEvent, EngineError>>,
    ) {
        let mut next = first;
        loop {
            let msg = match next.take() {
                Some(m) => Some(m),
                None => {
                    let Some(current) = self.running.front_mut() else {
                        break;
                    };
                    tokio::select! {
                        m = current.rx.recv() => m,
                        () = tx.closed() => return,
                    }
                }
            };
            let out = match msg {
                None => Err(EngineError::Protocol(
                    "a piece task ended without a result".to_owned(),
                )),
                Some(Err(e)) => Err(e),
                Some(Ok(PieceMsg::Audio { spec, data })) => self.audio(spec, data),
                Some(Ok(PieceMsg::Words(mut words))) => {
                    // The pieces before this one are all out: their audio is the offset.
                    let offset = self.piece_start_ms;
                    for w in &mut words {
                        w.begin_ms = w.begin_ms.saturating_add(offset);
                        w.end_ms = w.end_ms.saturating_add(offset);
                    }
                    if tx.send(Ok(SynthEvent::Words(words))).await.is_err() {
                        return;
                    }
                    continue;
                }
                Some(Ok(PieceMsg::Done {
                    characters,
                    request_id,
                })) => {
                    if let Some(c) = characters {
                        self.characters = Some(self.characters.unwrap_or(0).saturating_add(c));
                    }
                    self.request_ids.extend(request_id);
                    self.running.pop_front();
                    self.index += 1;
                    let last = self.index == self.pieces;
                    let tail = self.joins.piece_end(!last);
                    self.piece_start_ms = self.audio_ms(self.bytes_out + tail.len() as u64);
                    if !last {
                        self.start_pieces();
                    }
                    Ok(tail)
                }
            };
            let data = match out {
                Ok(data) => data,
                Err(e) => {
                    let e = if self.joins.sent_any && !matches!(e, EngineError::Protocol(_)) {
                        EngineError::Interrupted(Box::new(e))
                    } else {
                        e
                    };
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            if !data.is_empty() {
                self.bytes_out += data.len() as u64;
                let encoding = InputEncoding::Pcm16Le(self.spec.unwrap_or(AudioSpec {
                    sample_rate: self.job.rate,
                    channels: 1,
                }));
                if tx
                    .send(Ok(SynthEvent::Audio { encoding, data }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if self.index == self.pieces {
                let _ = tx
                    .send(Ok(SynthEvent::Finished {
                        characters: self.characters,
                        upstream_request_ids: std::mem::take(&mut self.request_ids),
                    }))
                    .await;
                return;
            }
        }
    }

    /// ms of s16 audio in `bytes` at the stream's spec.
    fn audio_ms(&self, bytes: u64) -> u32 {
        let spec = self.spec.unwrap_or(AudioSpec {
            sample_rate: self.job.rate,
            channels: 1,
        });
        family::s16_ms(spec, bytes)
    }

    fn audio(&mut self, spec: AudioSpec, data: Bytes) -> Result<Bytes, EngineError> {
        match self.spec {
            None => {
                self.spec = Some(spec);
                self.joins.set_spec(spec);
            }
            Some(s) if s != spec => {
                return Err(EngineError::Protocol(format!(
                    "piece {} is {} Hz × {} but the stream is {} Hz × {}",
                    self.index + 1,
                    spec.sample_rate,
                    spec.channels,
                    s.sample_rate,
                    s.channels
                )));
            }
            Some(_) => {}
        }
        Ok(self.joins.push(&data))
    }
}

/// Fades where two pieces meet: the last `fade` of a piece that has a successor fades out,
/// the first `fade` of a piece that has a predecessor fades in (raised cosine), so the step
/// between two independently synthesized pieces is never a click. Works on whole s16 frames;
/// holds back only the last `fade` of audio until the piece ends.
#[derive(Debug)]
struct Joiner {
    fade: Duration,
    fade_frames: usize,
    channels: usize,
    /// Bytes not yet sent (at most a fade's worth plus a partial frame).
    held: BytesMut,
    /// Frames of fade-in still to apply to the current piece.
    fade_in_left: usize,
    /// Any audio sent yet.
    sent_any: bool,
}

impl Joiner {
    fn new(fade: Duration) -> Self {
        Self {
            fade,
            fade_frames: 0,
            channels: 1,
            held: BytesMut::new(),
            fade_in_left: 0,
            sent_any: false,
        }
    }

    fn set_spec(&mut self, spec: AudioSpec) {
        self.channels = usize::from(spec.channels);
        // Rates are at most a few hundred kHz and fades a few ms: no overflow.
        self.fade_frames =
            (u128::from(spec.sample_rate) * self.fade.as_micros() / 1_000_000) as usize;
    }

    fn frame_bytes(&self) -> usize {
        2 * self.channels
    }

    /// Take `data`; return what can be sent now.
    fn push(&mut self, data: &[u8]) -> Bytes {
        self.held.extend_from_slice(data);
        let fb = self.frame_bytes();
        let keep = self.fade_frames * fb + self.held.len() % fb;
        if self.held.len() <= keep {
            return Bytes::new();
        }
        let mut out = self.held.split_to(self.held.len() - keep);
        self.apply_fade_in(&mut out);
        self.sent_any |= !out.is_empty();
        out.freeze()
    }

    /// The current piece ended; return its held tail (faded out when `more` pieces follow).
    fn piece_end(&mut self, more: bool) -> Bytes {
        let mut out = std::mem::take(&mut self.held);
        self.apply_fade_in(&mut out);
        if more {
            let fb = self.frame_bytes();
            let frames = out.len() / fb;
            let n = frames.min(self.fade_frames);
            for i in 0..n {
                let g = fade_gain(i, self.fade_frames);
                let frame = frames - 1 - i;
                scale_frame(&mut out[frame * fb..(frame + 1) * fb], g);
            }
            // A partial frame at a piece's end cannot be joined to the next piece's samples.
            out.truncate(frames * fb);
            self.fade_in_left = self.fade_frames;
        }
        self.sent_any |= !out.is_empty();
        out.freeze()
    }

    fn apply_fade_in(&mut self, out: &mut BytesMut) {
        if self.fade_in_left == 0 {
            return;
        }
        let fb = self.frame_bytes();
        let frames = out.len() / fb;
        let done = self.fade_frames - self.fade_in_left;
        let n = frames.min(self.fade_in_left);
        for i in 0..n {
            let g = fade_gain(done + i, self.fade_frames);
            scale_frame(&mut out[i * fb..(i + 1) * fb], g);
        }
        self.fade_in_left -= n;
    }
}

/// Raised-cosine gain of frame `i` of an `n`-frame fade-in (0 → 1).
fn fade_gain(i: usize, n: usize) -> f32 {
    let x = (i as f32 + 0.5) / n as f32;
    0.5 - 0.5 * (std::f32::consts::PI * x).cos()
}

fn scale_frame(frame: &mut [u8], gain: f32) {
    for s in frame.chunks_exact_mut(2) {
        let v = f32::from(i16::from_le_bytes([s[0], s[1]])) * gain;
        // |v| <= 32768, so the cast saturates at most at the boundary.
        s.copy_from_slice(&(v.round() as i16).to_le_bytes());
    }
}

/// Run one piece with retries, sending its audio and end to `tx`.
async fn run_piece(job: Arc<Job>, text: String, tx: mpsc::Sender<Result<PieceMsg, EngineError>>) {
    let tuning = &job.client.settings.tuning;
    let mut attempt = 1;
    loop {
        let mut sent = false;
        let result = attempt_piece(&job, &text, &tx, &mut sent).await;
        let error = match result {
            Ok(()) => return,
            Err(e) => e,
        };
        if tx.is_closed() {
            return;
        }
        let retry = !sent && error.is_retryable() && attempt < tuning.max_attempts;
        let delay = backoff(tuning, attempt);
        let in_time = job.req.deadline.is_none_or(|d| Instant::now() + delay < d);
        if !(retry && in_time) {
            let _ = tx.send(Err(error)).await;
            return;
        }
        tracing::info!(
            request_id = %job.req.request_id,
            attempt,
            error = %crate::error::chain(&error),
            delay_ms = delay.as_millis() as u64,
            "upstream failed before any audio; retrying"
        );
        crate::metrics::metrics()
            .upstream_retries
            .get_or_create(&crate::metrics::FamilyLabels {
                family: job.family.engine_name().to_owned(),
            })
            .inc();
        tokio::time::sleep(delay).await;
        attempt += 1;
    }
}

/// Count one upstream request's outcome.
fn upstream_outcome(family: Family, outcome: &str) {
    crate::metrics::metrics()
        .upstream_requests
        .get_or_create(&crate::metrics::UpstreamLabels {
            family: family.engine_name().to_owned(),
            outcome: outcome.to_owned(),
        })
        .inc();
}

/// Full-jitter exponential backoff before try `attempt + 1`.
fn backoff(tuning: &Tuning, attempt: u32) -> Duration {
    let cap = tuning
        .retry_base
        .saturating_mul(1 << (attempt - 1).min(16))
        .min(tuning.retry_max);
    let ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::rng().random_range(ms / 2..=ms.max(1)))
}

/// One try at a piece.
async fn attempt_piece(
    job: &Job,
    text: &str,
    tx: &mpsc::Sender<Result<PieceMsg, EngineError>>,
    sent: &mut bool,
) -> Result<(), EngineError> {
    let client = &job.client;
    let tuning = &client.settings.tuning;
    // Held for the whole attempt: at most max_concurrent_requests upstream requests at once.
    let _slot = match tokio::time::timeout(
        tuning.queue_timeout,
        Arc::clone(&client.slots).acquire_owned(),
    )
    .await
    {
        Ok(Ok(permit)) => permit,
        _ => {
            upstream_outcome(job.family, "saturated");
            return Err(EngineError::Saturated {
                limit: tuning.max_concurrent_requests,
                waited: tuning.queue_timeout,
            });
        }
    };
    let body = job.family.body(&job.req, text, job.rate);
    let url = format!("{}{}", client.settings.base_url, job.family.path());
    let mut request = client
        .http
        .post(&url)
        .bearer_auth(client.settings.api_key.expose_secret())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(reqwest::header::ACCEPT, "text/event-stream")
        .header("X-DashScope-SSE", "enable")
        .header("X-Accel-Buffering", "no")
        .body(serde_json::to_vec(&body).map_err(|e| EngineError::Protocol(e.to_string()))?);
    if let Some(ws) = &client.settings.workspace_id {
        request = request.header("X-DashScope-WorkSpace", ws);
    }
    let started = Instant::now();
    let first_deadline = started + tuning.first_event_timeout;
    let mut response = tokio::time::timeout_at(first_deadline, request.send())
        .await
        .map_err(|_| {
            upstream_outcome(job.family, "timeout");
            timed_out("no response", tuning.first_event_timeout)
        })?
        .map_err(|e| {
            upstream_outcome(job.family, "transport");
            EngineError::Transport(Box::new(e.without_url()))
        })?;
    let status = response.status().as_u16();
    let family = crate::metrics::FamilyLabels {
        family: job.family.engine_name().to_owned(),
    };
    let m = crate::metrics::metrics();
    m.upstream_latency
        .get_or_create(&family)
        .observe(started.elapsed().as_secs_f64());
    if status == 429 {
        m.upstream_throttled.get_or_create(&family).inc();
    }
    upstream_outcome(
        job.family,
        &if status == 200 {
            "ok".to_owned()
        } else {
            format!("http_{status}")
        },
    );
    let is_sse = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let header_request_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if status != 200 && !is_sse {
        return Err(http_error(response, status, header_request_id).await);
    }

    let mut decoder = Decoder::new(job.family, job.rate);
    let mut parser = Parser::new(Limits::default());
    let mut events = Vec::new();
    let mut body_json = Vec::new();
    let mut got_event = false;
    loop {
        let wait = if got_event {
            Instant::now() + tuning.idle_timeout
        } else {
            first_deadline
        };
        let chunk = tokio::time::timeout_at(wait, response.chunk())
            .await
            .map_err(|_| {
                if got_event {
                    timed_out("the stream went silent", tuning.idle_timeout)
                } else {
                    timed_out("no event", tuning.first_event_timeout)
                }
            })?
            .map_err(|e| EngineError::Transport(Box::new(e.without_url())))?;
        let Some(chunk) = chunk else { break };
        if !is_sse {
            // HTTP 200 with one JSON body: the upstream ignored the SSE header.
            if body_json.len() + chunk.len() > Limits::default().max_event {
                return Err(EngineError::Protocol("response body too large".to_owned()));
            }
            body_json.extend_from_slice(&chunk);
            continue;
        }
        parser
            .push(&chunk, &mut events)
            .map_err(|e| EngineError::Protocol(e.to_string()))?;
        for event in events.drain(..) {
            got_event = true;
            let Some(json) = event.json() else {
                if event.is_error() {
                    return Err(EngineError::Api {
                        status: event.http_status.unwrap_or(500),
                        code: None,
                        message: "error event without data".to_owned(),
                        request_id: header_request_id.clone(),
                    });
                }
                continue;
            };
            let json = json.map_err(|e| {
                EngineError::Protocol(format!("an SSE event's data is not JSON: {e}"))
            })?;
            let ev_status = event.http_status.unwrap_or(status);
            let step = decoder.event(&json, ev_status.max(status), event.is_error())?;
            if forward(step, &mut decoder, tx, sent).await? {
                return Ok(());
            }
        }
    }
    if is_sse {
        if let Some(event) = parser
            .finish()
            .map_err(|e| EngineError::Protocol(e.to_string()))?
            && let Some(json) = event.json()
        {
            let json = json.map_err(|e| {
                EngineError::Protocol(format!("an SSE event's data is not JSON: {e}"))
            })?;
            let step =
                decoder.event(&json, event.http_status.unwrap_or(status), event.is_error())?;
            if forward(step, &mut decoder, tx, sent).await? {
                return Ok(());
            }
        }
    } else {
        let json: serde_json::Value = serde_json::from_slice(&body_json)
            .map_err(|e| EngineError::Protocol(format!("response body is not JSON: {e}")))?;
        let step = decoder.event(&json, status, false)?;
        if forward(step, &mut decoder, tx, sent).await? {
            return Ok(());
        }
    }
    let step = decoder.end()?;
    forward(step, &mut decoder, tx, sent).await?;
    Ok(())
}

/// Send a step to the driver; `Ok(true)` when the piece is complete.
async fn forward(
    step: Step,
    decoder: &mut Decoder,
    tx: &mpsc::Sender<Result<PieceMsg, EngineError>>,
    sent: &mut bool,
) -> Result<bool, EngineError> {
    if !decoder.words.is_empty() {
        send(tx, PieceMsg::Words(std::mem::take(&mut decoder.words))).await?;
    }
    let step = match step {
        Step::Audio { .. } if decoder.finished => {
            send(tx, step_msg(step, decoder)).await?;
            *sent = true;
            decoder.end()?
        }
        other => other,
    };
    match step {
        Step::Nothing => Ok(false),
        Step::Audio { .. } => {
            send(tx, step_msg(step, decoder)).await?;
            *sent = true;
            Ok(false)
        }
        Step::Finished => {
            send(tx, step_msg(Step::Finished, decoder)).await?;
            Ok(true)
        }
    }
}

fn step_msg(step: Step, decoder: &Decoder) -> PieceMsg {
    match step {
        Step::Audio { spec, data } => PieceMsg::Audio { spec, data },
        Step::Nothing | Step::Finished => PieceMsg::Done {
            characters: decoder.characters,
            request_id: decoder.request_id.clone(),
        },
    }
}

async fn send(
    tx: &mpsc::Sender<Result<PieceMsg, EngineError>>,
    msg: PieceMsg,
) -> Result<(), EngineError> {
    tx.send(Ok(msg))
        .await
        .map_err(|_| EngineError::Protocol("the synthesis was dropped".to_owned()))
}

fn timed_out(what: &str, after: Duration) -> EngineError {
    EngineError::Transport(Box::new(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what} from upstream within {after:?}"),
    )))
}

/// The error of a non-200, non-SSE response: its JSON body's code and message when it has
/// them (dashscope-api.md §1.7 a).
async fn http_error(
    mut response: reqwest::Response,
    status: u16,
    header_request_id: Option<String>,
) -> EngineError {
    let mut body = Vec::new();
    while body.len() < 64 * 1024 {
        match response.chunk().await {
            Ok(Some(c)) => body.extend_from_slice(&c),
            _ => break,
        }
    }
    let parsed: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    if let Some(v) = &parsed
        && let Some(EngineError::Api {
            code,
            message,
            request_id,
            ..
        }) = family::error_in(v, status, true)
    {
        return EngineError::Api {
            status,
            code,
            message,
            request_id: request_id.or(header_request_id),
        };
    }
    EngineError::Api {
        status,
        code: None,
        message: format!("HTTP {status} without a DashScope error body"),
        request_id: header_request_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcm(samples: &[i16]) -> Vec<u8> {
        samples.iter().flat_map(|s| s.to_le_bytes()).collect()
    }

    fn samples(bytes: &[u8]) -> Vec<i16> {
        bytes
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect()
    }

    #[test]
    fn joins_fade_out_and_in_and_keep_every_frame() {
        let mut j = Joiner::new(Duration::from_millis(1)); // 16 frames at 16 kHz
        j.set_spec(AudioSpec {
            sample_rate: 16000,
            channels: 1,
        });
        let loud = vec![10000i16; 100];
        let bytes = pcm(&loud);
        let mut out = Vec::new();
        // Split at an odd byte to exercise partial frames.
        out.extend_from_slice(&j.push(&bytes[..51]));
        out.extend_from_slice(&j.push(&bytes[51..]));
        out.extend_from_slice(&j.piece_end(true));
        out.extend_from_slice(&j.push(&bytes));
        out.extend_from_slice(&j.piece_end(false));
        let s = samples(&out);
        assert_eq!(s.len(), 200);
        assert_eq!(s[0], 10000, "the stream's start is not faded");
        assert!(
            s[99].abs() < 200 && s[100].abs() < 200,
            "{} {}",
            s[99],
            s[100]
        );
        assert_eq!(s[199], 10000, "the stream's end is not faded");
        let max_step = s.windows(2).map(|w| (w[1] - w[0]).abs()).max().unwrap();
        assert!(max_step < 2000, "largest step {max_step}");
    }

    #[test]
    fn backoff_grows_and_stays_capped() {
        let t = Tuning::default();
        for attempt in 1..10 {
            let d = backoff(&t, attempt);
            assert!(d <= t.retry_max, "{d:?}");
        }
        assert!(backoff(&t, 1) <= Duration::from_millis(250));
    }
}
