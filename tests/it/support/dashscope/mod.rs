//! A test double of DashScope (Alibaba Cloud Model Studio): the speech-synthesis and
//! custom-voice HTTP APIs that herald's DashScope engines call, as the project's notes on the
//! DashScope wire format describe them (what a faithful double must do included), checked
//! against the official Python SDK by `dashscope_double` and `voices_double`.
//!
//! This module is the double's public face: start it ([`DashScopeDouble::start`]), script
//! faults and knobs, read its request log. It owns nothing of herald and must not depend on the
//! rest of the test support: the load and soak benches include it on its own.
//!
//! - `server`: the HTTP server, its state and request log, and the paced response bodies;
//! - `request`: what a synthesis request may say (models, voices, formats, rates);
//! - `audio`: the tone it renders (PCM, WAV, MP3);
//! - `wire`: the response bodies and SSE events of each family, with faults applied;
//! - `custom`: the custom-voice endpoint (cloning, design, temporary uploads).
//!
//! # What it serves
//!
//! - `POST /api/v1/services/audio/tts/SpeechSynthesizer`: CosyVoice (`cosyvoice-*`) and
//!   Qwen-Audio-TTS (`qwen-audio-*`); parameters in `input`, per-sentence SSE framing.
//! - `POST /api/v1/services/aigc/multimodal-generation/generation`: Qwen-TTS (`qwen3-tts*`,
//!   `qwen-tts*`) and MiniMax (`MiniMax/*`, hex audio nested in `output`).
//! - `POST /api/v1/services/audio/tts/customization`: custom voices (see `custom`).
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
//! [`DashScopeDouble::push_fault`] scripts failures (see [`FaultKind`]). In the
//! `…After { frames }` faults, `frames` counts *audio-carrying* events: the fault takes the place
//! of audio event number `frames` (0-based), so exactly `frames` audio events precede it;
//! CosyVoice's `sentence-begin`/`sentence-end` events in between are sent but not counted. When
//! the stream has no more than `frames` audio events the fault takes the place of the final
//! (`finish_reason: "stop"`) event. [`LoggedRequest::frames_sent`] counts every event.

mod audio;
mod custom;
mod request;
mod server;
mod wire;
mod ws;

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use serde_json::Value;
use tokio::{task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;

/// A loopback listener on a free port with an accept queue of 4096 (the kernel caps it at
/// `net.core.somaxconn`), not tokio's 1024: the load bench opens up to 4000 upstream
/// connections within 2.2 s, and an overflowing queue drops SYNs, which the client resends
/// after 1, 3, 7… s: seconds of TTFA that belong to the double, not to herald. A real
/// DashScope endpoint is a fleet behind a load balancer and shows no such queue.
fn loopback_listener() -> tokio::net::TcpListener {
    let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket for the double");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind the DashScope double");
    socket.listen(4096).expect("listen")
}

pub use custom::{CUSTOMIZATION_PATH, CustomOptions, DoubleVoice, custom_voice_tone};
pub use ws::{WsProtocol, WsTask};

/// The path of the CosyVoice / Qwen-Audio-TTS endpoint.
pub const TTS_PATH: &str = "/api/v1/services/audio/tts/SpeechSynthesizer";
/// The path of the Qwen-TTS / MiniMax endpoint.
pub const MULTIMODAL_PATH: &str = "/api/v1/services/aigc/multimodal-generation/generation";

/// A running DashScope double on 127.0.0.1.
pub struct DashScopeDouble {
    addr: SocketAddr,
    inner: Arc<server::Inner>,
    /// Graceful shutdown of `axum::serve`.
    shutdown: CancellationToken,
    join: Option<JoinHandle<()>>,
    /// The WebSocket protocols, on their own port (`ws`).
    ws: Arc<ws::WsSide>,
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
    /// A fault for every matching request until [`DashScopeDouble::clear_faults`].
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
    /// A hung upstream: accept the request and never answer (no response head, no byte) until
    /// the client goes away (logged as `disconnected`) or the double is killed.
    Frozen,
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

/// Behaviour knobs, see [`DashScopeDouble::set_options`].
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
    /// WebSocket run-task with `word_timestamp_enabled`: `false` → each `sentence-end` carries
    /// its sentence's words; `true` → they all come in `task-finished` instead.
    pub ws_words_in_task_finished: bool,
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
            ws_words_in_task_finished: false,
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
    /// When the first of them was written.
    pub first_frame_at: Option<Instant>,
    /// The response body was fully written.
    pub completed: bool,
    /// The client went away before the body ended.
    pub disconnected: bool,
    pub request_id: String,
    pub received_at: Instant,
    pub ended_at: Option<Instant>,
}

impl DashScopeDouble {
    /// Bind 127.0.0.1:0 and serve on the current tokio runtime; requests must carry
    /// `Authorization: Bearer <api_key>`.
    pub async fn start(api_key: &str) -> DashScopeDouble {
        let (inner, shutdown, join) = server::spawn(api_key).await;
        let (ws, _) = ws::spawn(Arc::clone(&inner)).await;
        DashScopeDouble {
            ws,
            addr: inner.addr,
            inner,
            shutdown,
            join: Some(join),
        }
    }

    /// Where it listens.
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

    /// Forget every queued fault.
    pub fn clear_faults(&self) {
        self.inner.state().faults.clear();
    }

    /// Change the behaviour knobs for the requests that follow.
    pub fn set_options(&self, options: Options) {
        self.inner.state().options = options;
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

    /// Change the custom-voice endpoint's knobs.
    pub fn set_custom_options(&self, options: CustomOptions) {
        self.inner.state().custom.options = options;
    }

    /// Every custom voice the double holds now.
    pub fn custom_voices(&self) -> Vec<DoubleVoice> {
        self.inner.state().custom.voices.clone()
    }

    /// Requests that reached the synthesis endpoints (not the customization one).
    pub fn synthesis_requests(&self) -> Vec<LoggedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.path != CUSTOMIZATION_PATH)
            .collect()
    }

    /// Requests that reached the customization endpoint.
    pub fn customization_requests(&self) -> Vec<LoggedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == CUSTOMIZATION_PATH)
            .collect()
    }

    /// Upload forms received so far (field name → value, without the file).
    pub fn upload_forms(&self) -> Vec<HashMap<String, String>> {
        self.inner.state().custom.upload_forms.clone()
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

impl Drop for DashScopeDouble {
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

/// A CJK ideograph (billed as 2 units).
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
