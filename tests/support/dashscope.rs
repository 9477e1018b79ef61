//! A fake DashScope (Alibaba Cloud Model Studio) server: a test double of the speech-synthesis
//! HTTP APIs that herald's DashScope engines call, following the project's DashScope wire-format
//! spec (`dashscope-api.md`, §1–§5 and §8 "What a faithful test double must do"), and checked
//! against the official Python SDK by tests/dashscope_double.rs.
//!
//! # What it serves
//!
//! - `POST /api/v1/services/audio/tts/SpeechSynthesizer`: CosyVoice (`cosyvoice-*`) and
//!   Qwen-Audio-TTS (`qwen-audio-*`); parameters in `input`, per-sentence SSE framing.
//! - `POST /api/v1/services/aigc/multimodal-generation/generation`: Qwen-TTS (`qwen3-tts*`,
//!   `qwen-tts*`) and MiniMax (`MiniMax/*`, hex audio nested in `output`).
//! - `GET /oss/<request_id>.<ext>`: the audio a non-streaming response (or the final frame of a
//!   stream) points to.
//!
//! Audio is a sine tone (amplitude 0.5) lasting `units × ms_per_unit` in the requested format
//! and rate, where a CJK ideograph is 2 units and any other character 1 ([`text_units`]). A token
//! `@<N>Hz` in the text picks the tone's frequency for that request.
//!
//! Streaming happens iff the request has `X-DashScope-SSE: enable`. Every event is
//! `id:<n>\nevent:result\n:HTTP_STATUS/200\ndata:<json>\n\n`, written as its own body chunk.
//!
//! # Faults
//!
//! [`FakeDashScope::push_fault`] scripts failures (see [`FaultKind`]). In the `…After { frames }`
//! faults, `frames` counts *audio-carrying* events: the fault takes the place of audio event
//! number `frames` (0-based), so exactly `frames` audio events precede it; CosyVoice's
//! `sentence-begin`/`sentence-end` events in between are sent but not counted. When the stream
//! has no more than `frames` audio events the fault takes the place of the final
//! (`finish_reason: "stop"`) event. [`LoggedRequest::frames_sent`] counts every event.
#![allow(dead_code)]

#[path = "dashscope_custom.rs"]
mod custom;
pub use custom::*;

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::{sync::watch, task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;

/// The path of the CosyVoice / Qwen-Audio-TTS endpoint.
pub const TTS_PATH: &str = "/api/v1/services/audio/tts/SpeechSynthesizer";
/// The path of the Qwen-TTS / MiniMax endpoint.
pub const MULTIMODAL_PATH: &str = "/api/v1/services/aigc/multimodal-generation/generation";

/// The message DashScope sends with `InvalidParameter` for a bad or missing parameter.
const INVALID_PARAMETER_MSG: &str =
    "Required parameter(s) missing or invalid, please check the request parameters.";

/// A running fake DashScope server on 127.0.0.1.
pub struct FakeDashScope {
    addr: SocketAddr,
    inner: Arc<Inner>,
    /// Graceful shutdown of `axum::serve`.
    shutdown: CancellationToken,
    join: Option<JoinHandle<()>>,
}

/// One scripted fault.
#[derive(Clone, Debug)]
pub struct Fault {
    pub kind: FaultKind,
    /// How many requests it applies to; `None`: every matching request (never consumed).
    pub times: Option<usize>,
    /// Only requests whose `model` starts with this; `None`: any model.
    pub model_prefix: Option<String>,
}

impl Fault {
    /// A fault for the next matching request only.
    pub fn once(kind: FaultKind) -> Self {
        Self::times(kind, 1)
    }
    /// A fault for the next `n` matching requests.
    pub fn times(kind: FaultKind, n: usize) -> Self {
        Fault {
            kind,
            times: Some(n),
            model_prefix: None,
        }
    }
    /// A fault for every matching request until [`FakeDashScope::clear_faults`].
    pub fn always(kind: FaultKind) -> Self {
        Fault {
            kind,
            times: None,
            model_prefix: None,
        }
    }
    /// Restrict to models starting with `prefix`.
    pub fn for_model(mut self, prefix: &str) -> Self {
        self.model_prefix = Some(prefix.to_owned());
        self
    }
}

/// What a fault does to the response. Faults are applied after authentication and the
/// model/endpoint check (a 401 or `url error` request consumes no fault); `HttpError` is
/// answered before the parameters are validated, the others after.
#[derive(Clone, Debug, PartialEq)]
pub enum FaultKind {
    /// A JSON error body with this HTTP status, also when SSE was requested, e.g. 429
    /// `Throttling.RateQuota`, 500 `InternalError`, 503 `ModelUnavailable`, 400
    /// `DataInspectionFailed`, 401 `InvalidApiKey`.
    HttpError {
        status: u16,
        code: String,
        message: String,
    },
    /// HTTP 200 stream: `frames` audio events, then
    /// `id:<n>\nevent:error\n:HTTP_STATUS/<http_status_comment>\ndata:{code,message,request_id}`
    /// and the end of the body. Non-streaming: a JSON error with HTTP status
    /// `http_status_comment`.
    SseErrorAfter {
        frames: usize,
        http_status_comment: u16,
        code: String,
        message: String,
    },
    /// HTTP 200 whose (first and only) JSON object is `{"code","message","request_id"}`: one
    /// `event:result` frame when streaming, the body otherwise.
    OkWithCode { code: String, message: String },
    /// MiniMax's own error shape under HTTP 200: `output.base_resp.status_code != 0`, `data:null`
    /// (one frame when streaming). Used whatever the model.
    MiniMaxStatus {
        status_code: i64,
        status_msg: String,
    },
    /// Abort the connection after `frames` audio events: no chunked terminator. Non-streaming:
    /// after half of the JSON body.
    DropAfter { frames: usize },
    /// Send `frames` audio events, then nothing more until the client goes away (or the server
    /// stops). Non-streaming: the response head only.
    StallAfter { frames: usize },
    /// Wait this long before sending the response head.
    SlowFirstByte { delay: Duration },
    /// An extra event whose `data:` line is not JSON, inserted after `frames` audio events; the
    /// stream then goes on normally. Non-streaming: a truncated JSON body.
    BadJsonAfter { frames: usize },
    /// Audio event number `frames` (0-based; the last one if there are fewer) carries audio that
    /// is not valid base64 (not valid hex for MiniMax). Non-streaming MiniMax: the hex audio.
    BadBase64After { frames: usize },
    /// Audio bytes that are not valid for the declared format: garbage instead of the WAV
    /// header, MP3 bytes with no frame sync (and no ID3 tag), or PCM with an odd byte count.
    CorruptAudio,
    /// Not a failure: every event's JSON spread over several `data:` lines, split between the
    /// top-level members, so that both joining the lines with `"\n"` (the SSE rule) and with
    /// `""` give the same valid JSON.
    MultiLineData,
    /// Not a failure: every event's JSON spread over several `data:` lines, split inside a
    /// string (the audio, else the request id), so that only joining with `""` gives valid
    /// JSON.
    MultiLineDataConcat,
}

/// Behaviour knobs, see [`FakeDashScope::set_options`].
#[derive(Clone, Debug)]
pub struct Options {
    /// Tone frequency unless the text has an `@<N>Hz` token.
    pub tone_hz: f32,
    /// Audio duration per billed text unit (CJK ideograph = 2 units, others 1).
    pub ms_per_unit: u32,
    /// CosyVoice models (`cosyvoice-*`) silently truncate the audio to this many units' worth
    /// while still reporting `finish_reason: stop` and the full `usage.characters`.
    pub cosyvoice_truncate_units: Option<usize>,
    /// The Qwen-TTS WAV stream's first decoded chunk begins with a 44-byte WAV header with
    /// placeholder sizes (then raw PCM); `false`: raw PCM only.
    pub qwen_wav_header: bool,
    /// Audio per SSE event.
    pub chunk_ms: u32,
    /// 0.0: send as fast as possible; 1.0: audio events at real time (event `i` is sent when
    /// the audio before it has had time to play).
    pub pace: f32,
    /// Unknown voice in a streaming request: `false` → HTTP 400 JSON; `true` → HTTP 200 and one
    /// `event:error` frame with `:HTTP_STATUS/400`.
    pub unknown_voice_as_sse_error: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            tone_hz: 440.0,
            ms_per_unit: 40,
            cosyvoice_truncate_units: Some(150),
            qwen_wav_header: true,
            chunk_ms: 100,
            pace: 0.0,
            unknown_voice_as_sse_error: false,
        }
    }
}

/// One synthesis request as the server saw and answered it.
#[derive(Clone, Debug)]
pub struct LoggedRequest {
    pub path: String,
    /// `""` when the body has none.
    pub model: String,
    /// The JSON body (`Null` if it was not JSON).
    pub body: Value,
    /// Lowercase names; the `authorization` value is `"<redacted>"`.
    pub headers: Vec<(String, String)>,
    pub authorized: bool,
    /// The request asked for SSE (`X-DashScope-SSE: enable`).
    pub sse: bool,
    /// HTTP status sent.
    pub status: u16,
    pub fault: Option<FaultKind>,
    /// SSE events written (result and error events).
    pub frames_sent: usize,
    /// The response body was fully written.
    pub completed: bool,
    /// The client went away before the body ended.
    pub disconnected: bool,
    pub request_id: String,
    pub received_at: Instant,
    pub ended_at: Option<Instant>,
}

impl FakeDashScope {
    /// Bind 127.0.0.1:0 and serve on the current tokio runtime; requests must carry
    /// `Authorization: Bearer <api_key>`.
    pub async fn start(api_key: &str) -> FakeDashScope {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake DashScope");
        let addr = listener.local_addr().expect("local addr");
        let (ended, _) = watch::channel(0u64);
        let inner = Arc::new(Inner {
            api_key: api_key.to_owned(),
            addr,
            state: Mutex::new(ServerState {
                faults: Vec::new(),
                options: Options::default(),
                log: Vec::new(),
                files: HashMap::new(),
                custom: CustomState::default(),
            }),
            ended,
            kill: CancellationToken::new(),
        });
        let app = Router::new()
            .route(TTS_PATH, post(synthesize))
            .route(MULTIMODAL_PATH, post(synthesize))
            .route(custom::CUSTOMIZATION_PATH, post(custom::customization))
            .route("/api/v1/uploads", get(custom::upload_policy))
            .route("/oss-upload", post(custom::oss_upload))
            .route("/oss/{file}", get(oss_file))
            .fallback(not_found)
            .with_state(inner.clone());
        let shutdown = CancellationToken::new();
        let signal = shutdown.clone();
        let join = tokio::spawn(async move {
            // TCP_NODELAY, as production HTTP servers set it: without it, each paced SSE event
            // after the first waits for the client's delayed ACK (~40 ms on Linux).
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { signal.cancelled().await })
                .await;
        });
        FakeDashScope {
            addr,
            inner,
            shutdown,
            join: Some(join),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/api/v1`
    pub fn base_url(&self) -> String {
        format!("http://{}/api/v1", self.addr)
    }

    /// Queue a fault; each synthesis request takes the first fault whose `model_prefix` matches.
    pub fn push_fault(&self, fault: Fault) {
        self.inner.state().faults.push(fault);
    }

    pub fn clear_faults(&self) {
        self.inner.state().faults.clear();
    }

    pub fn set_options(&self, options: Options) {
        self.inner.state().options = options;
    }

    pub fn options(&self) -> Options {
        self.inner.state().options.clone()
    }

    /// Every synthesis request received so far, in arrival order.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.inner.state().log.clone()
    }

    /// Wait until request `index` (0-based, arrival order) has ended — completed, aborted or
    /// the client went away — or `timeout` passes.
    pub async fn wait_ended(&self, index: usize, timeout: Duration) -> Option<LoggedRequest> {
        let deadline = Instant::now() + timeout;
        let mut rx = self.inner.ended.subscribe();
        loop {
            rx.borrow_and_update();
            if let Some(entry) = self.inner.state().log.get(index)
                && entry.ended_at.is_some()
            {
                return Some(entry.clone());
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }

    /// Stop gracefully: in-flight responses get 2 s to finish, then are cut.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let Some(mut join) = self.join.take() else {
            return;
        };
        if tokio::time::timeout(Duration::from_secs(2), &mut join)
            .await
            .is_ok()
        {
            return;
        }
        self.inner.kill.cancel();
        if tokio::time::timeout(Duration::from_secs(2), &mut join)
            .await
            .is_err()
        {
            join.abort();
        }
    }
}

impl Drop for FakeDashScope {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.inner.kill.cancel();
        if let Some(join) = self.join.take() {
            join.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Text helpers (public: tests compute expected durations with them)

/// Billed units of `text`: 2 per CJK ideograph, 1 per other character.
pub fn text_units(text: &str) -> usize {
    text.chars().map(|c| if is_cjk(c) { 2 } else { 1 }).sum()
}

fn is_cjk(c: char) -> bool {
    matches!(u32::from(c), 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x20000..=0x3134F)
}

/// The frequency of the first `@<N>Hz` token in `text`.
pub fn tone_token(text: &str) -> Option<f32> {
    let mut rest = text;
    while let Some(at) = rest.find('@') {
        let after = &rest[at + 1..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0
            && after[digits..].starts_with("Hz")
            && let Ok(n) = after[..digits].parse::<u32>()
        {
            return Some(n as f32);
        }
        rest = after;
    }
    None
}

/// The sentences DashScope's CosyVoice framing reports: split after `。！？.!?` (a run of them
/// stays together); leading whitespace goes with the next sentence, a trailing remainder with
/// the last one. Concatenated they give `text` back.
pub fn split_sentences(text: &str) -> Vec<String> {
    const ENDS: &[char] = &['。', '！', '？', '.', '!', '?'];
    let mut out: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        cur.push(c);
        if ENDS.contains(&c) && !chars.peek().is_some_and(|n| ENDS.contains(n)) {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        match out.last_mut() {
            Some(last) if cur.trim().is_empty() => last.push_str(&cur),
            _ => out.push(cur),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Server state

struct Inner {
    api_key: String,
    addr: SocketAddr,
    state: Mutex<ServerState>,
    /// Bumped whenever a logged request ends.
    ended: watch::Sender<u64>,
    /// Cuts every response body (stalled ones included).
    kill: CancellationToken,
}

struct ServerState {
    faults: Vec<Fault>,
    options: Options,
    log: Vec<LoggedRequest>,
    /// `<request_id>.<ext>` → (content type, bytes), served under `/oss/`.
    files: HashMap<String, (&'static str, Bytes)>,
    /// The custom-voice endpoint's voices and knobs.
    custom: CustomState,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, ServerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, index: usize, f: impl FnOnce(&mut LoggedRequest)) {
        if let Some(entry) = self.state().log.get_mut(index) {
            f(entry);
        }
    }

    fn end(&self, index: usize, completed: bool, disconnected: bool) {
        self.update(index, |e| {
            if e.ended_at.is_none() {
                e.completed = completed;
                e.disconnected = disconnected;
                e.ended_at = Some(Instant::now());
            }
        });
        self.ended.send_modify(|n| *n += 1);
    }

    /// The first fault matching `model`, consumed if counted.
    fn take_fault(&self, model: &str) -> Option<FaultKind> {
        let mut state = self.state();
        let pos = state.faults.iter().position(|f| {
            f.times != Some(0)
                && f.model_prefix
                    .as_deref()
                    .is_none_or(|p| model.starts_with(p))
        })?;
        let fault = &mut state.faults[pos];
        let kind = fault.kind.clone();
        if let Some(n) = fault.times.as_mut() {
            *n -= 1;
            if *n == 0 {
                state.faults.remove(pos);
            }
        }
        Some(kind)
    }
}

/// Ends a log entry exactly once: by the body stream (completed / aborted) or, when dropped
/// before that, as a client disconnect.
struct EndGuard {
    inner: Arc<Inner>,
    index: usize,
    finished: bool,
}

impl EndGuard {
    fn finish(&mut self, completed: bool) {
        if !self.finished {
            self.finished = true;
            self.inner.end(self.index, completed, false);
        }
    }
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.inner.end(self.index, false, true);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Request handling

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Family {
    /// CosyVoice / Qwen-Audio-TTS on SpeechSynthesizer.
    Cosy,
    /// Qwen-TTS on multimodal-generation.
    Qwen,
    /// MiniMax on multimodal-generation.
    MiniMax,
}

fn family_of(model: &str) -> Option<Family> {
    if model.starts_with("cosyvoice-") || model.starts_with("qwen-audio-") {
        Some(Family::Cosy)
    } else if model.starts_with("qwen3-tts") || model.starts_with("qwen-tts") {
        Some(Family::Qwen)
    } else if model.starts_with("MiniMax/") {
        Some(Family::MiniMax)
    } else {
        None
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fmt {
    Pcm,
    Wav,
    Mp3,
}

impl Fmt {
    fn ext(self) -> &'static str {
        match self {
            Fmt::Pcm => "pcm",
            Fmt::Wav => "wav",
            Fmt::Mp3 => "mp3",
        }
    }
    fn content_type(self) -> &'static str {
        match self {
            Fmt::Pcm => "application/octet-stream",
            Fmt::Wav => "audio/wav",
            Fmt::Mp3 => "audio/mpeg",
        }
    }
}

/// What to send after the response head.
enum Step {
    /// Do not go on before this much audio (ms) has had time to play (scaled by `pace`).
    At(f64),
    /// One SSE event (counted in `frames_sent`).
    Event(Bytes),
    /// A non-SSE body chunk.
    Raw(Bytes),
    /// Send nothing more until the client leaves.
    Stall,
    /// Abort the connection.
    Abort,
}

struct Reply {
    status: u16,
    sse_body: bool,
    /// `x-dashscope-finished`.
    finished: bool,
    steps: Vec<Step>,
}

impl Reply {
    fn json(status: u16, body: &Value) -> Reply {
        Reply {
            status,
            sse_body: false,
            finished: true,
            steps: vec![Step::Raw(Bytes::from(body.to_string()))],
        }
    }
}

fn error_body(code: &str, message: &str, request_id: &str) -> Value {
    json!({"code": code, "message": message, "request_id": request_id})
}

fn json_error(status: u16, code: &str, message: &str, request_id: &str) -> Reply {
    Reply::json(status, &error_body(code, message, request_id))
}

/// A parameter problem found by validation.
struct Rejection {
    code: &'static str,
    message: String,
    /// An unknown voice (may be reported in-stream, see `unknown_voice_as_sse_error`).
    voice: bool,
}

fn invalid(message: impl Into<String>) -> Rejection {
    Rejection {
        code: "InvalidParameter",
        message: message.into(),
        voice: false,
    }
}

fn bad_voice(message: &str) -> Rejection {
    Rejection {
        code: "InvalidParameter",
        message: message.to_owned(),
        voice: true,
    }
}

async fn not_found(uri: Uri) -> Response {
    let rid = uuid::Uuid::new_v4().to_string();
    let body = error_body("InvalidURL", &format!("Not found: {}", uri.path()), &rid);
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn oss_file(State(inner): State<Arc<Inner>>, Path(file): Path<String>) -> Response {
    let found = inner.state().files.get(&file).cloned();
    match found {
        Some((ctype, bytes)) => {
            (StatusCode::OK, [(header::CONTENT_TYPE, ctype)], bytes).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "application/xml")],
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchKey</Code></Error>",
        )
            .into_response(),
    }
}

async fn synthesize(
    State(inner): State<Arc<Inner>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, key) = v.trim().split_once(' ')?;
            Some(scheme.eq_ignore_ascii_case("bearer") && key.trim() == inner.api_key)
        })
        .unwrap_or(false);
    let sse = headers
        .get("x-dashscope-sse")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("enable"));
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let model = parsed
        .as_ref()
        .and_then(|b| b.get("model"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let request_id = uuid::Uuid::new_v4().to_string();
    let logged_headers = headers
        .iter()
        .map(|(name, value)| {
            let name = name.as_str().to_ascii_lowercase();
            let value = if name == "authorization" {
                "<redacted>".to_owned()
            } else {
                String::from_utf8_lossy(value.as_bytes()).replace(&inner.api_key, "<redacted>")
            };
            (name, value)
        })
        .collect();
    let (index, options) = {
        let mut state = inner.state();
        state.log.push(LoggedRequest {
            path: path.clone(),
            model: model.clone(),
            body: parsed.clone().unwrap_or(Value::Null),
            headers: logged_headers,
            authorized,
            sse,
            status: 0,
            fault: None,
            frames_sent: 0,
            completed: false,
            disconnected: false,
            request_id: request_id.clone(),
            received_at: Instant::now(),
            ended_at: None,
        });
        (state.log.len() - 1, state.options.clone())
    };
    // From here on, dropping this (the client left early) logs a disconnect.
    let guard = EndGuard {
        inner: inner.clone(),
        index,
        finished: false,
    };

    let mut fault = None;
    let reply = decide(
        &inner,
        &path,
        authorized,
        sse,
        parsed.as_ref(),
        &model,
        &request_id,
        &options,
        &mut fault,
    );
    inner.update(index, |e| {
        e.status = reply.status;
        e.fault = fault.clone();
    });
    if let Some(FaultKind::SlowFirstByte { delay }) = fault {
        tokio::time::sleep(delay).await;
    }

    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = if reply.sse_body {
        "text/event-stream;charset=UTF-8"
    } else {
        "application/json"
    };
    let stream = body_stream(reply.steps, guard, options.pace, inner.kill.clone());
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert("x-request-id", v);
    }
    h.insert(
        "x-dashscope-finished",
        HeaderValue::from_static(if reply.finished { "true" } else { "false" }),
    );
    h.insert("x-dashscope-call-gateway", HeaderValue::from_static("true"));
    h.insert(header::SERVER, HeaderValue::from_static("istio-envoy"));
    response
}

/// The response body: `steps` in order, paced, with the log entry ended by `guard`.
fn body_stream(
    steps: Vec<Step>,
    guard: EndGuard,
    pace: f32,
    kill: CancellationToken,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    struct Emit {
        steps: VecDeque<Step>,
        guard: EndGuard,
        start: Instant,
        pace: f64,
        kill: CancellationToken,
    }
    fn abort(e: &mut Emit) -> std::io::Error {
        e.steps.clear();
        e.guard.finish(false);
        std::io::Error::other("fake DashScope: connection dropped on purpose")
    }
    let emit = Emit {
        steps: steps.into(),
        guard,
        start: Instant::now(),
        pace: f64::from(pace.max(0.0)),
        kill,
    };
    futures::stream::unfold(emit, |mut e| async move {
        loop {
            let Some(step) = e.steps.pop_front() else {
                e.guard.finish(true);
                return None;
            };
            match step {
                Step::At(ms) => {
                    if e.pace > 0.0 {
                        let at = e.start + Duration::from_secs_f64(ms * e.pace / 1000.0);
                        tokio::select! {
                            () = tokio::time::sleep_until(at) => {}
                            () = e.kill.cancelled() => {
                                let err = abort(&mut e);
                                return Some((Err(err), e));
                            }
                        }
                    }
                }
                Step::Event(bytes) => {
                    e.guard
                        .inner
                        .update(e.guard.index, |entry| entry.frames_sent += 1);
                    return Some((Ok(bytes), e));
                }
                Step::Raw(bytes) => return Some((Ok(bytes), e)),
                Step::Stall => {
                    e.kill.cancelled().await;
                    let err = abort(&mut e);
                    return Some((Err(err), e));
                }
                Step::Abort => {
                    // Let the server flush what it has before the connection goes.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let err = abort(&mut e);
                    return Some((Err(err), e));
                }
            }
        }
    })
}

#[allow(clippy::too_many_arguments)]
fn decide(
    inner: &Inner,
    path: &str,
    authorized: bool,
    sse: bool,
    body: Option<&Value>,
    model: &str,
    rid: &str,
    options: &Options,
    fault_out: &mut Option<FaultKind>,
) -> Reply {
    if !authorized {
        return json_error(401, "InvalidApiKey", "Invalid API-key provided.", rid);
    }
    let Some(body) = body.filter(|b| b.is_object()) else {
        return json_error(400, "InvalidParameter", INVALID_PARAMETER_MSG, rid);
    };
    if model.is_empty() {
        return json_error(
            400,
            "BadRequest.EmptyModel",
            "Required parameter 'model' missing from request.",
            rid,
        );
    }
    let family = match (family_of(model), path == TTS_PATH) {
        (Some(Family::Cosy), true) => Family::Cosy,
        (Some(f @ (Family::Qwen | Family::MiniMax)), false) => f,
        _ => return json_error(400, "InvalidParameter", "url error", rid),
    };
    if !body.get("input").is_some_and(Value::is_object) {
        return json_error(
            400,
            "BadRequest.EmptyInput",
            "Required input parameter missing from request.",
            rid,
        );
    }
    let fault = inner.take_fault(model);
    *fault_out = fault.clone();
    if let Some(FaultKind::HttpError {
        status,
        code,
        message,
    }) = &fault
    {
        return json_error(*status, code, message, rid);
    }
    let custom_tone = match family {
        Family::MiniMax => Ok(None),
        _ => custom::synthesis_voice(inner, model, body["input"]["voice"].as_str().unwrap_or("")),
    };
    let req = match custom_tone.and_then(|_| parse_request(family, model, body)) {
        Ok(r) => r,
        Err(rej) if rej.code == "InternalError" => {
            return json_error(500, rej.code, &rej.message, rid);
        }
        Err(rej) => {
            if rej.voice && sse && options.unknown_voice_as_sse_error {
                return Reply {
                    status: 200,
                    sse_body: true,
                    finished: true,
                    steps: vec![Step::Event(sse_error_event(
                        1,
                        400,
                        &error_body(rej.code, &rej.message, rid),
                    ))],
                };
            }
            return json_error(400, rej.code, &rej.message, rid);
        }
    };
    let mut options = options.clone();
    if let Ok(Some(hz)) =
        custom::synthesis_voice(inner, model, body["input"]["voice"].as_str().unwrap_or(""))
        && family != Family::MiniMax
    {
        options.tone_hz = hz;
    }
    respond(inner, &req, sse, rid, &options, fault.as_ref())
}

/// A validated synthesis request.
struct SynthRequest {
    family: Family,
    model: String,
    text: String,
    units: usize,
    fmt: Fmt,
    rate: u32,
    channels: u16,
    /// MP3 bitrate (bps) to encode at.
    bitrate: u32,
    /// MiniMax: no aggregated audio in the final frame.
    exclude_aggregated: bool,
    /// MiniMax non-streaming `output_format: "url"`.
    minimax_url: bool,
    /// CosyVoice `word_timestamp_enabled`: `sentence-end` events carry the words.
    words: bool,
}

// Known system voices. Any voice starting with one of `CUSTOM_PREFIXES` is taken for a cloned or
// designed voice and accepted by every model.
const CUSTOM_PREFIXES: &[&str] = &["cosyvoice-", "qwen-tts-vc-", "qwen-tts-vd-", "custom-"];
const COSYVOICE_V3_VOICES: &[&str] = &[
    "longanyang",
    "longanhuan",
    "longanhuan_v3",
    "longhuhu_v3",
    "longjiaxin_v3",
    "longlaotie_v3",
    "longsanshu_v3",
    "longshuo_v3",
    "loongabby_v3",
    "loongbella_v3",
    "longshange_v3",
];
const COSYVOICE_V2_VOICES: &[&str] = &["longxiaochun_v2", "longwan_v2"];
const QWEN_AUDIO_VOICES: &[&str] = &[
    "longanfengyue",
    "longanyuanfei",
    "longanlingxi",
    "longanxiaoxin",
    "longanhuan_v3.6",
    "longjielidou_v3.6",
    "longpaopao_v3.6",
    "longhuohuo_v3.6",
    "longchuanshu_v3.6",
    "loongmary",
    "loongeva_v3.6",
    "loongjohn",
    "longanlingxin",
    "longanlufeng",
];
const QWEN3_VOICES: &[&str] = &[
    "Cherry",
    "Serena",
    "Ethan",
    "Chelsie",
    "Dylan",
    "Jada",
    "Sunny",
    "Nofish",
    "Jennifer",
    "Li",
    "Marcus",
    "Roy",
    "Peter",
    "Eric",
    "Rocky",
    "Kiki",
    "Ryan",
    "Katerina",
    "Elias",
    "Momo",
    "Moon",
    "Maia",
    "Kai",
    "Bella",
    "Aiden",
    "Eldric Sage",
    "Mia",
    "Mochi",
    "Bellona",
    "Vincent",
    "Bunny",
    "Neil",
    "Arthur",
    "Nini",
    "Ebona",
    "Seren",
    "Pip",
    "Stella",
    "Bodega",
    "Sonrisa",
    "Alek",
    "Dolce",
    "Sohee",
    "Ono Anna",
    "Lenn",
    "Emilien",
    "Andre",
    "Radio Gol",
    "Vivian",
];
const QWEN_TTS_LEGACY_VOICES: &[&str] = &[
    "Cherry", "Serena", "Ethan", "Chelsie", "Dylan", "Jada", "Sunny",
];
const MINIMAX_VOICES: &[&str] = &[
    "male-qn-qingse",
    "male-qn-jingying",
    "male-qn-badao",
    "male-qn-daxuesheng",
    "female-shaonv",
    "female-yujie",
    "female-chengshu",
    "female-tianmei",
    "presenter_male",
    "presenter_female",
    "audiobook_male_1",
    "audiobook_female_1",
    "English_Graceful_Lady",
    "English_Trustworthy_Man",
    "Chinese (Mandarin)_Lyrical_Voice",
];

fn voice_known(family: Family, model: &str, voice: &str) -> Result<(), Rejection> {
    if CUSTOM_PREFIXES.iter().any(|p| voice.starts_with(p)) {
        return Ok(());
    }
    let ok = match family {
        Family::Cosy if model.starts_with("cosyvoice-v3.5") => false,
        Family::Cosy if model.starts_with("cosyvoice-v2") => COSYVOICE_V2_VOICES.contains(&voice),
        Family::Cosy if model.starts_with("qwen-audio-3.1") => voice.ends_with("_v3.1"),
        Family::Cosy if model.starts_with("qwen-audio-") => {
            QWEN_AUDIO_VOICES.contains(&voice) || voice.starts_with("qwen-audio-3.0-tts-")
        }
        Family::Cosy => COSYVOICE_V3_VOICES.contains(&voice),
        Family::Qwen if model.starts_with("qwen-tts") => QWEN_TTS_LEGACY_VOICES.contains(&voice),
        Family::Qwen => QWEN3_VOICES.contains(&voice),
        Family::MiniMax => MINIMAX_VOICES.contains(&voice),
    };
    if ok {
        return Ok(());
    }
    Err(bad_voice(match family {
        Family::Cosy if model.starts_with("qwen-audio-") => "[cosyvoice:]Engine error [411]",
        Family::Cosy => "[cosyvoice:]Engine return error code: 418",
        Family::Qwen => "Invalid voice specified",
        Family::MiniMax => "voice id not exist",
    }))
}

/// An integer parameter (JSON number, integral), if present.
fn int_param(v: Option<&Value>, name: &str) -> Result<Option<u64>, Rejection> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .or_else(|| {
                v.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                    .map(|f| f as u64)
            })
            .map(Some)
            .ok_or_else(|| invalid(format!("{name} must be an integer"))),
    }
}

fn str_param<'a>(v: Option<&'a Value>, name: &str) -> Result<Option<&'a str>, Rejection> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(format!("{name} must be a string"))),
    }
}

fn parse_fmt(s: &str, allowed: &[Fmt]) -> Result<Fmt, Rejection> {
    let fmt = match s.to_ascii_lowercase().as_str() {
        "pcm" => Fmt::Pcm,
        "wav" => Fmt::Wav,
        "mp3" => Fmt::Mp3,
        "opus" | "flac" => {
            return Err(invalid(format!(
                "format {s} is not implemented by the fake DashScope server"
            )));
        }
        _ => return Err(invalid(format!("Unsupported audio format: {s}"))),
    };
    if allowed.contains(&fmt) {
        Ok(fmt)
    } else {
        Err(invalid(format!("Unsupported audio format: {s}")))
    }
}

fn parse_request(family: Family, model: &str, body: &Value) -> Result<SynthRequest, Rejection> {
    let input = &body["input"];
    let params = body.get("parameters").unwrap_or(&Value::Null);
    let text = str_param(input.get("text"), "text")?
        .filter(|t| !t.is_empty())
        .ok_or_else(|| invalid(INVALID_PARAMETER_MSG))?
        .to_owned();
    let units = text_units(&text);
    let all = [Fmt::Pcm, Fmt::Wav, Fmt::Mp3];
    let mut req = SynthRequest {
        family,
        model: model.to_owned(),
        text,
        units,
        fmt: Fmt::Mp3,
        rate: 0,
        channels: 1,
        bitrate: 64_000,
        exclude_aggregated: false,
        minimax_url: false,
        words: false,
    };
    match family {
        Family::Cosy => {
            if units > 20_000 {
                return Err(invalid(format!(
                    "Each request sends text is limited: 20000, current: {units}"
                )));
            }
            let voice = str_param(input.get("voice"), "voice")?.unwrap_or("");
            if voice.is_empty() && !model.starts_with("cosyvoice-v3.5") {
                return Err(invalid(INVALID_PARAMETER_MSG));
            }
            voice_known(family, model, voice)?;
            req.fmt = parse_fmt(
                str_param(input.get("format"), "format")?.unwrap_or("mp3"),
                &all,
            )?;
            req.rate = int_param(input.get("sample_rate"), "sample_rate")?.unwrap_or(22_050) as u32;
            if ![8000, 16000, 22050, 24000, 44100, 48000].contains(&req.rate) {
                return Err(invalid(format!("Unsupported sample_rate: {}", req.rate)));
            }
            req.words = input
                .get("word_timestamp_enabled")
                .and_then(Value::as_bool)
                .unwrap_or(false);
        }
        Family::Qwen => {
            let voice = str_param(input.get("voice"), "voice")?.unwrap_or("");
            if voice.is_empty() {
                return Err(invalid(INVALID_PARAMETER_MSG));
            }
            voice_known(family, model, voice)?;
            let fmt = str_param(params.get("response_format"), "response_format")?;
            req.fmt = parse_fmt(fmt.unwrap_or("wav"), &all)?;
            req.rate =
                int_param(params.get("sample_rate"), "sample_rate")?.unwrap_or(24_000) as u32;
            if ![8000, 16000, 24000, 48000].contains(&req.rate) {
                return Err(invalid(format!("Unsupported sample_rate: {}", req.rate)));
            }
        }
        Family::MiniMax => {
            // MiniMax-native fields live in `input`; the Python SDK's MultiModalConversation can
            // only send `input.voice` and puts other keyword arguments in `parameters`, so those
            // places are read as fallbacks.
            let pick = |key: &str| {
                input
                    .get(key)
                    .filter(|v| !v.is_null())
                    .or_else(|| params.get(key).filter(|v| !v.is_null()))
            };
            let voice_setting = pick("voice_setting").unwrap_or(&Value::Null);
            let voice = str_param(voice_setting.get("voice_id"), "voice_id")?
                .or(str_param(input.get("voice"), "voice")?)
                .unwrap_or("");
            if voice.is_empty() {
                return Err(invalid(INVALID_PARAMETER_MSG));
            }
            voice_known(family, model, voice)?;
            let audio = pick("audio_setting").unwrap_or(&Value::Null);
            req.fmt = parse_fmt(
                str_param(audio.get("format"), "format")?.unwrap_or("mp3"),
                &all,
            )?;
            req.rate = int_param(audio.get("sample_rate"), "sample_rate")?.unwrap_or(32_000) as u32;
            if ![8000, 16000, 22050, 24000, 32000, 44100].contains(&req.rate) {
                return Err(invalid(format!("Unsupported sample_rate: {}", req.rate)));
            }
            req.channels = match int_param(audio.get("channel"), "channel")?.unwrap_or(1) {
                1 => 1,
                2 => 2,
                n => return Err(invalid(format!("Unsupported channel: {n}"))),
            };
            req.bitrate = int_param(audio.get("bitrate"), "bitrate")?.unwrap_or(128_000) as u32;
            if ![32_000, 64_000, 128_000, 256_000].contains(&req.bitrate) {
                return Err(invalid(format!("Unsupported bitrate: {}", req.bitrate)));
            }
            req.exclude_aggregated = pick("stream_options")
                .and_then(|o| o.get("exclude_aggregated_audio"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
            req.minimax_url = pick("output_format").and_then(Value::as_str) == Some("url");
        }
    }
    Ok(req)
}

// ---------------------------------------------------------------------------------------------
// Audio

/// Rendered audio for one request.
struct Audio {
    /// What the stream's decoded chunks concatenate to.
    stream: Vec<u8>,
    /// Leading container bytes of `stream` (WAV header) sent with the first chunk.
    stream_header: usize,
    /// The file behind the URL.
    file: Vec<u8>,
    /// Bytes per sample frame (split points of PCM stay aligned); 1 for MP3.
    align: usize,
    /// Audio duration in ms.
    ms: f64,
}

fn tone_pcm(hz: f32, rate: u32, channels: u16, ms: f64) -> Vec<i16> {
    let frames = (f64::from(rate) * ms / 1000.0).round() as usize;
    let mut out = Vec::with_capacity(frames * usize::from(channels));
    let step = 2.0 * std::f64::consts::PI * f64::from(hz) / f64::from(rate);
    for n in 0..frames {
        let s = ((n as f64 * step).sin() * 0.5 * 32767.0).round() as i16;
        for _ in 0..channels {
            out.push(s);
        }
    }
    out
}

fn s16le(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// A 44-byte PCM WAV header with the given RIFF and data sizes.
fn wav_header(rate: u32, channels: u16, riff_size: u32, data_size: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(44);
    h.extend_from_slice(b"RIFF");
    h.extend_from_slice(&riff_size.to_le_bytes());
    h.extend_from_slice(b"WAVEfmt ");
    h.extend_from_slice(&16u32.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&channels.to_le_bytes());
    h.extend_from_slice(&rate.to_le_bytes());
    h.extend_from_slice(&(rate * u32::from(channels) * 2).to_le_bytes());
    h.extend_from_slice(&(channels * 2).to_le_bytes());
    h.extend_from_slice(&16u16.to_le_bytes());
    h.extend_from_slice(b"data");
    h.extend_from_slice(&data_size.to_le_bytes());
    h
}

/// The streaming-WAV placeholder sizes Qwen-TTS sends (the header reads as ~44739 s at 24 kHz).
const WAV_PLACEHOLDER_DATA: u32 = 0x7FFF_FFFF - 36;

/// The ID3v2.4 tag (TSSE "Lavf60.16.100", 10 bytes padding) that begins DashScope's MP3s.
fn id3_tag() -> Vec<u8> {
    let text = b"\x03Lavf60.16.100\x00";
    let mut t = Vec::new();
    t.extend_from_slice(b"ID3\x04\x00\x00");
    t.extend_from_slice(&[0, 0, 0, 35]);
    t.extend_from_slice(b"TSSE");
    t.extend_from_slice(&[0, 0, 0, text.len() as u8, 0, 0]);
    t.extend_from_slice(text);
    t.extend_from_slice(&[0; 10]);
    t
}

fn encode_mp3(pcm: &[i16], rate: u32, channels: u16, bitrate: u32) -> Vec<u8> {
    use mp3lame_encoder::{Bitrate, Builder, FlushGap, InterleavedPcm, Mode, MonoPcm, Quality};
    // MPEG-2/2.5 (rates below 32 kHz) stop at 160 kbps.
    let kbps = if rate < 32_000 {
        (bitrate / 1000).min(160)
    } else {
        bitrate / 1000
    };
    let brate = match kbps {
        0..=32 => Bitrate::Kbps32,
        33..=64 => Bitrate::Kbps64,
        65..=128 => Bitrate::Kbps128,
        129..=160 => Bitrate::Kbps160,
        _ => Bitrate::Kbps256,
    };
    let mut b = Builder::new().expect("lame_init");
    b.set_num_channels(channels as u8).expect("channels");
    b.set_sample_rate(rate).expect("rate");
    b.set_output_sample_rate(std::num::NonZeroU32::new(rate))
        .expect("output rate");
    b.set_brate(brate).expect("bitrate");
    b.set_mode(if channels == 1 {
        Mode::Mono
    } else {
        Mode::JointStereo
    })
    .expect("mode");
    b.set_quality(Quality::Good).expect("quality");
    b.set_vbr_mode(mp3lame_encoder::VbrMode::Off).expect("cbr");
    b.set_to_write_vbr_tag(false).expect("no vbr tag");
    let mut lame = b.build().expect("lame build");
    let mut out = id3_tag();
    let frames = pcm.len() / usize::from(channels);
    out.reserve(mp3lame_encoder::max_required_buffer_size(frames));
    if channels == 1 {
        lame.encode_to_vec(MonoPcm(pcm), &mut out)
            .expect("lame encode");
    } else {
        lame.encode_to_vec(InterleavedPcm(pcm), &mut out)
            .expect("lame encode");
    }
    out.reserve(mp3lame_encoder::max_required_buffer_size(0));
    lame.flush_to_vec::<FlushGap>(&mut out).expect("lame flush");
    out
}

fn render_audio(req: &SynthRequest, options: &Options, corrupt: bool) -> Audio {
    let hz = tone_token(&req.text).unwrap_or(options.tone_hz);
    let mut audio_units = req.units;
    if req.model.starts_with("cosyvoice-")
        && let Some(max) = options.cosyvoice_truncate_units
    {
        audio_units = audio_units.min(max);
    }
    let ms = audio_units as f64 * f64::from(options.ms_per_unit);
    let pcm = tone_pcm(hz, req.rate, req.channels, ms);
    let raw = s16le(&pcm);
    let align = 2 * usize::from(req.channels);
    let data = raw.len() as u32;
    let (mut stream, mut stream_header, mut file) = match req.fmt {
        Fmt::Pcm => (raw.clone(), 0, raw),
        Fmt::Wav if req.family == Family::Qwen => {
            let mut file = wav_header(
                req.rate,
                req.channels,
                WAV_PLACEHOLDER_DATA + 36,
                WAV_PLACEHOLDER_DATA,
            );
            file.extend_from_slice(&raw);
            if options.qwen_wav_header {
                (file.clone(), 44, file)
            } else {
                (raw, 0, file)
            }
        }
        Fmt::Wav => {
            let mut file = wav_header(req.rate, req.channels, data + 36, data);
            file.extend_from_slice(&raw);
            (file.clone(), 44, file)
        }
        Fmt::Mp3 => {
            let mp3 = encode_mp3(&pcm, req.rate, req.channels, req.bitrate);
            (mp3.clone(), 0, mp3)
        }
    };
    if corrupt {
        for bytes in [&mut stream, &mut file] {
            match req.fmt {
                Fmt::Pcm => bytes.push(0x5A),
                Fmt::Wav => {
                    let junk = b"JUNKJUNK this is not a WAV header, only junk!";
                    let n = bytes.len().min(44);
                    bytes[..n].copy_from_slice(&junk[..n]);
                }
                Fmt::Mp3 => {
                    // No 0xFF byte: no frame sync anywhere, and no ID3 tag.
                    for (i, b) in bytes.iter_mut().enumerate() {
                        *b = (i % 0x7F) as u8;
                    }
                }
            }
        }
        if req.fmt == Fmt::Pcm {
            stream_header = 0;
        }
    }
    Audio {
        stream,
        stream_header,
        file,
        align: if req.fmt == Fmt::Mp3 { 1 } else { align },
        ms,
    }
}

/// Byte offset in `audio.stream` at time `t` ms.
fn byte_at(audio: &Audio, t: f64) -> usize {
    let len = audio.stream.len();
    if t <= 0.0 || audio.ms <= 0.0 {
        return 0;
    }
    if t >= audio.ms {
        return len;
    }
    let payload = len - audio.stream_header;
    let pos = (payload as f64 * t / audio.ms) as usize;
    audio.stream_header + pos - pos % audio.align
}

/// The audio pieces of the span `[t0, t1)` ms: `(start ms, bytes)`, one per `chunk_ms`.
fn pieces(audio: &Audio, t0: f64, t1: f64, chunk_ms: u32) -> Vec<(f64, Vec<u8>)> {
    let t1 = t1.min(audio.ms);
    let chunk = f64::from(chunk_ms.max(1));
    let mut out = Vec::new();
    let mut t = t0;
    while t < t1 {
        let end = (t + chunk).min(t1);
        let (a, b) = (byte_at(audio, t), byte_at(audio, end));
        // A corrupt PCM's odd last byte goes with the last piece.
        let b = if end >= audio.ms {
            audio.stream.len()
        } else {
            b
        };
        if b > a {
            out.push((t, audio.stream[a..b].to_vec()));
        }
        t = end;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Responses

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One event of a stream before serialization.
enum Ev {
    Result {
        /// Top-level members in wire order.
        members: Vec<(&'static str, Value)>,
        /// Audio carried (base64 or hex), if any.
        audio: Option<String>,
        /// Audio time (ms) at which this event starts, for pacing.
        at_ms: f64,
    },
    Error {
        status: u16,
        body: Value,
    },
    BadJson,
    Drop,
    Stall,
}

impl Ev {
    fn carries_audio(&self) -> bool {
        matches!(self, Ev::Result { audio: Some(a), .. } if !a.is_empty())
    }
}

fn sse_event(id: usize, event: &str, status: u16, lines: &[String]) -> Bytes {
    let mut s = format!("id:{id}\nevent:{event}\n:HTTP_STATUS/{status}\n");
    for line in lines {
        s.push_str("data:");
        s.push_str(line);
        s.push('\n');
    }
    s.push('\n');
    Bytes::from(s)
}

fn sse_error_event(id: usize, status: u16, body: &Value) -> Bytes {
    sse_event(id, "error", status, &[body.to_string()])
}

fn members_json(members: &[(&'static str, Value)]) -> Vec<String> {
    members
        .iter()
        .map(|(k, v)| format!("{}:{}", Value::from(*k), v))
        .collect()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Split {
    None,
    Members,
    Concat,
}

fn data_lines(members: &[(&'static str, Value)], audio: Option<&str>, split: Split) -> Vec<String> {
    let parts = members_json(members);
    let one = format!("{{{}}}", parts.join(","));
    match split {
        Split::None => vec![one],
        Split::Members => {
            let n = parts.len();
            parts
                .into_iter()
                .enumerate()
                .map(|(i, p)| {
                    let open = if i == 0 { "{" } else { "" };
                    let close = if i + 1 == n { "}" } else { "," };
                    format!("{open}{p}{close}")
                })
                .collect()
        }
        Split::Concat => {
            // Split inside a long string: the audio, else the request id.
            let target = audio
                .filter(|a| a.len() >= 3)
                .map(|a| format!("\"{a}\""))
                .or_else(|| {
                    members
                        .iter()
                        .find(|(k, _)| *k == "request_id")
                        .map(|(_, v)| v.to_string())
                });
            let Some(target) = target.filter(|t| t.len() >= 5) else {
                return vec![one];
            };
            let Some(start) = one.find(&target) else {
                return vec![one];
            };
            let inner = target.len() - 2;
            let a = start + 1 + inner / 3;
            let b = start + 1 + (2 * inner) / 3;
            vec![
                one[..a].to_owned(),
                one[a..b].to_owned(),
                one[b..].to_owned(),
            ]
        }
    }
}

fn usage_members(req: &SynthRequest, characters: usize, audio_ms: f64) -> Value {
    if req.family == Family::Qwen && req.model.starts_with("qwen-tts") {
        // Legacy qwen-tts bills tokens (≈50 audio tokens per second).
        let input = req.units;
        let output = (audio_ms / 20.0).ceil() as usize;
        json!({
            "total_tokens": input + output,
            "input_tokens_details": {"text_tokens": input},
            "output_tokens": output,
            "input_tokens": input,
            "output_tokens_details": {"audio_tokens": output, "text_tokens": 0},
        })
    } else {
        json!({"characters": characters})
    }
}

fn word_count(text: &str) -> usize {
    let cjk = text.chars().filter(|c| is_cjk(*c)).count();
    let words = text
        .split(|c: char| !c.is_alphanumeric() || is_cjk(c))
        .filter(|w| !w.is_empty())
        .count();
    cjk + words
}

fn minimax_output(audio: &str, status: u8, extra: Option<Value>, trace_id: &str) -> Value {
    let mut out = json!({
        "base_resp": {"status_code": 0, "status_msg": "success"},
        "data": {"audio": audio, "status": status},
    });
    if let Some(extra) = extra {
        out["extra_info"] = extra;
    }
    out["trace_id"] = Value::from(trace_id);
    out
}

fn minimax_extra(req: &SynthRequest, audio: &Audio) -> Value {
    json!({
        "audio_channel": req.channels,
        "audio_format": req.fmt.ext(),
        "audio_length": audio.ms.round() as u64,
        "audio_sample_rate": req.rate,
        "audio_size": audio.file.len(),
        "bitrate": req.bitrate,
        "invisible_character_ratio": 0,
        "usage_characters": req.units,
        "word_count": word_count(&req.text),
    })
}

/// What the response builders share for one request.
struct Ctx<'a> {
    req: &'a SynthRequest,
    options: &'a Options,
    audio: Audio,
    rid: &'a str,
    now: u64,
    audio_id: String,
    /// Where `/oss/` serves the audio.
    url: String,
    /// MiniMax's trace id.
    trace_id: String,
}

fn respond(
    inner: &Inner,
    req: &SynthRequest,
    sse: bool,
    rid: &str,
    options: &Options,
    fault: Option<&FaultKind>,
) -> Reply {
    let audio = render_audio(req, options, matches!(fault, Some(FaultKind::CorruptAudio)));
    let now = now_secs();
    let file_name = format!("{rid}.{}", req.fmt.ext());
    let url = format!(
        "http://{}/oss/{file_name}?Expires={}&OSSAccessKeyId=LTAI5tFakeDashScope&Signature=ZmFrZQ%3D%3D",
        inner.addr,
        now + 86_400
    );
    inner.state().files.insert(
        file_name,
        (req.fmt.content_type(), Bytes::from(audio.file.clone())),
    );
    let ctx = Ctx {
        req,
        options,
        audio,
        rid,
        now,
        audio_id: format!("audio_{rid}"),
        url,
        trace_id: rid.replace('-', ""),
    };
    if !sse {
        return non_stream_reply(&ctx, fault);
    }
    let mut evs = stream_events(&ctx);
    let split = apply_stream_fault(&ctx, &mut evs, fault);
    sse_reply(evs, split)
}

/// The JSON answer of a non-streaming request, with `fault` applied.
fn non_stream_reply(c: &Ctx<'_>, fault: Option<&FaultKind>) -> Reply {
    let (req, audio, rid, now) = (c.req, &c.audio, c.rid, c.now);
    let (audio_id, url, trace_id) = (&c.audio_id, &c.url, &c.trace_id);
    let body = match req.family {
        Family::Cosy => format!(
            "{{\"request_id\":{},\"output\":{},\"usage\":{}}}",
            Value::from(rid),
            json!({"finish_reason": "stop", "audio": {"data": "", "url": url, "id": audio_id, "expires_at": now + 86_400}}),
            json!({"characters": req.units}),
        ),
        Family::Qwen => format!(
            "{{\"output\":{},\"usage\":{},\"request_id\":{}}}",
            json!({"audio": {"data": "", "expires_at": now + 86_400, "id": audio_id, "url": url}, "finish_reason": "stop"}),
            usage_members(req, req.units, audio.ms),
            Value::from(rid),
        ),
        Family::MiniMax => {
            let data = if matches!(fault, Some(FaultKind::BadBase64After { .. })) {
                "zz-this-is-not-hex".to_owned()
            } else if req.minimax_url {
                url.clone()
            } else {
                hex::encode(&audio.file)
            };
            format!(
                "{{\"output\":{},\"usage\":{},\"request_id\":{}}}",
                minimax_output(&data, 2, Some(minimax_extra(req, audio)), trace_id),
                json!({"characters": req.units}),
                Value::from(rid),
            )
        }
    };
    let half = body.len() / 2;
    match fault {
        Some(FaultKind::OkWithCode { code, message }) => {
            Reply::json(200, &error_body(code, message, rid))
        }
        Some(FaultKind::MiniMaxStatus {
            status_code,
            status_msg,
        }) => Reply::json(200, &minimax_error(*status_code, status_msg, rid)),
        Some(FaultKind::SseErrorAfter {
            http_status_comment,
            code,
            message,
            ..
        }) => json_error(*http_status_comment, code, message, rid),
        Some(FaultKind::DropAfter { .. }) => Reply {
            status: 200,
            sse_body: false,
            finished: true,
            steps: vec![Step::Raw(Bytes::from(body).slice(..half)), Step::Abort],
        },
        Some(FaultKind::StallAfter { .. }) => Reply {
            status: 200,
            sse_body: false,
            finished: true,
            steps: vec![Step::Stall],
        },
        Some(FaultKind::BadJsonAfter { .. }) => Reply {
            status: 200,
            sse_body: false,
            finished: true,
            steps: vec![Step::Raw(Bytes::from(body).slice(..half))],
        },
        _ => Reply {
            status: 200,
            sse_body: false,
            finished: true,
            steps: vec![Step::Raw(Bytes::from(body))],
        },
    }
}

/// The events of a clean stream.
fn stream_events(c: &Ctx<'_>) -> Vec<Ev> {
    let (req, options, audio, rid, now) = (c.req, c.options, &c.audio, c.rid, c.now);
    let (audio_id, url, trace_id) = (&c.audio_id, &c.url, &c.trace_id);
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let mut evs: Vec<Ev> = Vec::new();
    match req.family {
        Family::Cosy => {
            let sentences = split_sentences(&req.text);
            let mut cum = 0usize;
            for (index, sentence) in sentences.iter().enumerate() {
                let t0 = cum as f64 * f64::from(options.ms_per_unit);
                cum += text_units(sentence);
                let t1 = cum as f64 * f64::from(options.ms_per_unit);
                let usage = json!({"characters": cum});
                // Words (whitespace-separated), timed from the request's start like the audio:
                // `ms_per_unit` per text unit from where the word starts in its sentence.
                let words: Vec<Value> = if req.words {
                    sentence
                        .split_whitespace()
                        .map(|w| {
                            let at = w.as_ptr() as usize - sentence.as_ptr() as usize;
                            let begin = t0 + text_units(&sentence[..at]) as f64 * f64::from(options.ms_per_unit);
                            let end = begin + text_units(w) as f64 * f64::from(options.ms_per_unit);
                            let units_before = text_units(&sentence[..at]);
                            json!({"text": w, "begin_index": units_before, "end_index": units_before + w.chars().count(),
                                "begin_time": begin.round() as u64, "end_time": end.round() as u64})
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                let framing = |kind: &str, at_ms: f64| Ev::Result {
                    members: vec![
                        (
                            "output",
                            json!({"finish_reason": "null", "type": kind, "original_text": sentence,
                                "sentence": {"index": index, "words": if kind == "sentence-end" { words.clone() } else { Vec::new() }},
                                "audio": {"data": "", "id": audio_id, "expires_at": now}}),
                        ),
                        ("usage", usage.clone()),
                        ("request_id", Value::from(rid)),
                    ],
                    audio: None,
                    at_ms,
                };
                evs.push(framing("sentence-begin", t0.min(audio.ms)));
                for (at, bytes) in pieces(audio, t0, t1, options.chunk_ms) {
                    let data = b64(&bytes);
                    evs.push(Ev::Result {
                        members: vec![
                            (
                                "output",
                                json!({"finish_reason": "null", "type": "sentence-synthesis",
                                    "sentence": {"index": index, "words": []},
                                    "audio": {"data": data, "id": audio_id, "expires_at": now}}),
                            ),
                            ("usage", usage.clone()),
                            ("request_id", Value::from(rid)),
                        ],
                        audio: Some(data),
                        at_ms: at,
                    });
                }
                evs.push(framing("sentence-end", t1.min(audio.ms)));
            }
            evs.push(Ev::Result {
                members: vec![
                    (
                        "output",
                        json!({"finish_reason": "stop", "audio": {"data": "", "url": url, "id": audio_id, "expires_at": now + 86_400}}),
                    ),
                    ("usage", json!({"characters": req.units})),
                    ("request_id", Value::from(rid)),
                ],
                audio: None,
                at_ms: audio.ms,
            });
        }
        Family::Qwen => {
            for (at, bytes) in pieces(audio, 0.0, audio.ms, options.chunk_ms) {
                let data = b64(&bytes);
                let end_ms = at + f64::from(options.chunk_ms);
                evs.push(Ev::Result {
                    members: vec![
                        (
                            "output",
                            json!({"finish_reason": "null", "audio": {"data": data, "expires_at": now, "id": audio_id}}),
                        ),
                        ("usage", usage_members(req, req.units, end_ms.min(audio.ms))),
                        ("request_id", Value::from(rid)),
                    ],
                    audio: Some(data),
                    at_ms: at,
                });
            }
            evs.push(Ev::Result {
                members: vec![
                    (
                        "output",
                        json!({"finish_reason": "stop", "audio": {"expires_at": now + 86_400, "id": audio_id, "data": "", "url": url}}),
                    ),
                    ("usage", usage_members(req, req.units, audio.ms)),
                    ("request_id", Value::from(rid)),
                ],
                audio: None,
                at_ms: audio.ms,
            });
        }
        Family::MiniMax => {
            let usage = json!({"characters": req.units});
            for (at, bytes) in pieces(audio, 0.0, audio.ms, options.chunk_ms) {
                let data = hex::encode(&bytes);
                evs.push(Ev::Result {
                    members: vec![
                        ("output", minimax_output(&data, 1, None, trace_id)),
                        ("usage", usage.clone()),
                        ("request_id", Value::from(rid)),
                    ],
                    audio: Some(data),
                    at_ms: at,
                });
            }
            let aggregated = if req.exclude_aggregated {
                String::new()
            } else {
                hex::encode(&audio.stream)
            };
            evs.push(Ev::Result {
                members: vec![
                    (
                        "output",
                        minimax_output(&aggregated, 2, Some(minimax_extra(req, audio)), trace_id),
                    ),
                    ("usage", usage),
                    ("request_id", Value::from(rid)),
                ],
                // The aggregate repeats audio already sent: not an audio event for fault counting.
                audio: None,
                at_ms: audio.ms,
            });
        }
    }

    evs
}

/// Apply `fault` to the events of a stream; returns how to write `data:` lines.
fn apply_stream_fault(c: &Ctx<'_>, evs: &mut Vec<Ev>, fault: Option<&FaultKind>) -> Split {
    let (req, rid) = (c.req, c.rid);
    // Where an `…After { frames }` fault goes: audio event number `frames`, else the final event.
    let audio_positions: Vec<usize> = evs
        .iter()
        .enumerate()
        .filter(|(_, e)| e.carries_audio())
        .map(|(i, _)| i)
        .collect();
    let last = evs.len() - 1;
    let at = |k: usize| audio_positions.get(k).copied().unwrap_or(last);
    let mut split = Split::None;
    match fault {
        Some(FaultKind::SseErrorAfter {
            frames,
            http_status_comment,
            code,
            message,
        }) => {
            evs.truncate(at(*frames));
            evs.push(Ev::Error {
                status: *http_status_comment,
                body: error_body(code, message, rid),
            });
        }
        Some(FaultKind::OkWithCode { code, message }) => {
            *evs = vec![Ev::Result {
                members: vec![
                    ("code", Value::from(code.as_str())),
                    ("message", Value::from(message.as_str())),
                    ("request_id", Value::from(rid)),
                ],
                audio: None,
                at_ms: 0.0,
            }];
        }
        Some(FaultKind::MiniMaxStatus {
            status_code,
            status_msg,
        }) => {
            let body = minimax_error(*status_code, status_msg, rid);
            *evs = vec![Ev::Result {
                members: vec![
                    ("output", body["output"].clone()),
                    ("request_id", Value::from(rid)),
                ],
                audio: None,
                at_ms: 0.0,
            }];
        }
        Some(FaultKind::DropAfter { frames }) => {
            evs.truncate(at(*frames));
            evs.push(Ev::Drop);
        }
        Some(FaultKind::StallAfter { frames }) => {
            evs.truncate(at(*frames));
            evs.push(Ev::Stall);
        }
        Some(FaultKind::BadJsonAfter { frames }) => {
            let pos = at(*frames);
            evs.insert(pos, Ev::BadJson);
        }
        Some(FaultKind::BadBase64After { frames }) => {
            if let Some(&pos) = audio_positions
                .get(*frames)
                .or_else(|| audio_positions.last())
                && let Ev::Result { members, audio, .. } = &mut evs[pos]
            {
                let bad = if req.family == Family::MiniMax {
                    "zz-this-is-not-hex"
                } else {
                    "@@@ this is not base64 @@@"
                };
                let output = &mut members[0].1;
                if req.family == Family::MiniMax {
                    output["data"]["audio"] = Value::from(bad);
                } else {
                    output["audio"]["data"] = Value::from(bad);
                }
                *audio = Some(bad.to_owned());
            }
        }
        Some(FaultKind::MultiLineData) => split = Split::Members,
        Some(FaultKind::MultiLineDataConcat) => split = Split::Concat,
        _ => {}
    }

    split
}

/// The SSE reply writing `evs`, numbered from 1.
fn sse_reply(evs: Vec<Ev>, split: Split) -> Reply {
    let mut steps = Vec::new();
    for (i, ev) in evs.into_iter().enumerate() {
        let id = i + 1;
        match ev {
            Ev::Result {
                members,
                audio,
                at_ms,
            } => {
                steps.push(Step::At(at_ms));
                let lines = data_lines(&members, audio.as_deref(), split);
                steps.push(Step::Event(sse_event(id, "result", 200, &lines)));
            }
            Ev::Error { status, body } => {
                steps.push(Step::Event(sse_error_event(id, status, &body)))
            }
            Ev::BadJson => steps.push(Step::Event(sse_event(
                id,
                "result",
                200,
                &[
                    "{\"output\":{\"finish_reason\":\"null\",\"audio\":{\"data\":\"UklGR"
                        .to_owned(),
                ],
            ))),
            Ev::Drop => steps.push(Step::Abort),
            Ev::Stall => steps.push(Step::Stall),
        }
    }
    Reply {
        status: 200,
        sse_body: true,
        finished: false,
        steps,
    }
}

fn minimax_error(status_code: i64, status_msg: &str, rid: &str) -> Value {
    json!({
        "output": {
            "base_resp": {"status_code": status_code, "status_msg": status_msg},
            "data": null,
            "trace_id": rid.replace('-', ""),
        },
        "request_id": rid,
    })
}
