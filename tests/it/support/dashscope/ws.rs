//! The double's WebSocket side: DashScope's duplex run-task protocol (CosyVoice,
//! Qwen-Audio-TTS) on `/api-ws/v1/inference` and Qwen-TTS-Realtime sessions on
//! `/api-ws/v1/realtime?model=…`, on their own loopback port, as
//! `../shared/dashscope-realtime-api.md` describes them (and as `dashscope_double` checks with
//! the official Python SDK).
//!
//! - The key is checked at the handshake: a missing or wrong key gets HTTP 401 with the
//!   `InvalidApiKey` JSON body and no upgrade. Every upgraded connection is counted
//!   ([`WsLog::handshakes`]).
//! - run-task: `task-started`, then each sentence (split as [`super::split_sentences`] does)
//!   once complete — on a `continue-task` that completes it, a `flush`, or `finish-task` —
//!   as `sentence-begin`, `sentence-synthesis` + one binary frame per `chunk_ms` of audio,
//!   `sentence-end` (cumulative `usage.characters`); `task-finished` after `finish-task`; the
//!   connection then takes another `run-task`. `task-failed` closes the connection. With
//!   `word_timestamp_enabled`, each `sentence-end` carries its sentence's words (whitespace-
//!   separated, timed from the task's start like the audio), or, with
//!   [`Options::ws_words_in_task_finished`], `task-finished` carries all of the task's words
//!   instead (the two places the DashScope documents give).
//! - realtime: `session.created` on connect, `session.updated`, then per commit (explicit, or
//!   in `server_commit` mode each complete sentence) the `response.*` events with base64
//!   `response.audio.delta`s; `session.finish` voices what is left, sends `session.finished`
//!   and closes.
//!
//! Audio is the HTTP double's tone: `units × ms_per_unit` of a sine at `tone_hz` (or the
//! task's first `@<N>Hz` token; a sentence with its own token switches to that tone from
//! there), PCM or WAV (header in the first frame only).
//!
//! Faults (the HTTP double's [`FaultKind`]s, taken per task / session): `HttpError` →
//! `task-failed` / `error` with its code and message instead of `task-started` /
//! `session.updated`, then a close (realtime: the session is failed, later messages are
//! ignored and `session.finish` gets the close); `SseErrorAfter { frames }` → the same after `frames`
//! audio frames; `DropAfter { frames }` → the TCP connection cut after `frames` audio frames;
//! `StallAfter { frames }` → nothing more after `frames` audio frames; `SlowFirstByte` → that
//! delay before `task-started` / `session.updated`; `BadJsonAfter { frames }` → a text frame
//! that is not JSON after `frames` audio frames.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::Engine as _;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::{net::TcpStream, time::Instant};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message,
        handshake::server::{ErrorResponse, Request, Response},
        http::StatusCode,
    },
};

use super::{
    FaultKind, Options,
    audio::{s16le, tone_pcm, wav_header},
    server::Inner,
    split_sentences, text_units, tone_token,
};

/// Which protocol a task used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WsProtocol {
    RunTask,
    Realtime,
}

/// One run-task task or realtime session as the double saw it.
#[derive(Clone, Debug)]
pub struct WsTask {
    pub protocol: WsProtocol,
    /// Index of its connection (0-based, handshake order).
    pub connection: usize,
    pub model: String,
    /// run-task `parameters` / realtime `session` as sent.
    pub parameters: Value,
    /// All text received, concatenated.
    pub text: String,
    /// Text messages received (continue-task / append), in order.
    pub pieces: Vec<String>,
    /// When each of `pieces` was received.
    pub pieces_at: Vec<Instant>,
    /// When the first audio frame / delta was sent.
    pub first_audio_at: Option<Instant>,
    pub fault: Option<FaultKind>,
    /// Binary audio frames (run-task) or audio deltas (realtime) sent.
    pub audio_frames: usize,
    /// task-finished / session.finished sent.
    pub completed: bool,
    /// The client closed the connection (or it broke) while the task ran.
    pub disconnected: bool,
    /// finish-task with `directive: cancel`, or a new run-task while this one ran.
    pub cancelled: bool,
    pub ended_at: Option<Instant>,
}

/// What the WebSocket side has seen.
#[derive(Default)]
pub struct WsLog {
    /// Upgraded connections.
    pub handshakes: usize,
    /// Handshakes refused (bad key, unknown path).
    pub refused: usize,
    pub tasks: Vec<WsTask>,
}

pub(super) struct WsSide {
    pub(super) addr: SocketAddr,
    pub(super) log: Mutex<WsLog>,
    pub(super) changed: tokio::sync::watch::Sender<u64>,
}

impl WsSide {
    pub(super) fn log(&self) -> std::sync::MutexGuard<'_, WsLog> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, task: usize, f: impl FnOnce(&mut WsTask)) {
        if let Some(t) = self.log().tasks.get_mut(task) {
            f(t);
        }
        self.changed.send_modify(|n| *n += 1);
    }

    fn end(&self, task: usize, f: impl FnOnce(&mut WsTask)) {
        self.update(task, |t| {
            f(t);
            if t.ended_at.is_none() {
                t.ended_at = Some(Instant::now());
            }
        });
    }
}

/// Bind another loopback port and serve both WebSocket protocols there.
pub(super) async fn spawn(inner: Arc<Inner>) -> (Arc<WsSide>, tokio::task::JoinHandle<()>) {
    let listener = super::loopback_listener();
    let side = Arc::new(WsSide {
        addr: listener.local_addr().expect("local addr"),
        log: Mutex::new(WsLog::default()),
        changed: tokio::sync::watch::channel(0).0,
    });
    let s = Arc::clone(&side);
    let join = tokio::spawn(async move {
        let kill = inner.kill.clone();
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = kill.cancelled() => return,
            };
            let Ok((tcp, _)) = accepted else {
                return;
            };
            let _ = tcp.set_nodelay(true);
            let (inner, side) = (Arc::clone(&inner), Arc::clone(&s));
            tokio::spawn(async move {
                let kill = inner.kill.clone();
                tokio::select! {
                    () = serve(inner, side, tcp) => {}
                    () = kill.cancelled() => {}
                }
            });
        }
    });
    (side, join)
}

enum Route {
    RunTask,
    Realtime(String),
}

async fn serve(inner: Arc<Inner>, side: Arc<WsSide>, tcp: TcpStream) {
    let route: Arc<Mutex<Option<Route>>> = Arc::default();
    let r = Arc::clone(&route);
    let key = inner.api_key.clone();
    // The callback's signature is tungstenite's (`Callback`), large error included.
    #[allow(clippy::result_large_err)]
    let callback = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let authorized = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, k) = v.trim().split_once(' ')?;
                Some(scheme.eq_ignore_ascii_case("bearer") && k.trim() == key)
            })
            .unwrap_or(false);
        let refuse = |status: StatusCode, code: &str, message: &str| {
            let body = json!({"code": code, "message": message,
                              "request_id": uuid::Uuid::new_v4().to_string()});
            let mut e = ErrorResponse::new(Some(body.to_string()));
            *e.status_mut() = status;
            e.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            e
        };
        if !authorized {
            return Err(refuse(
                StatusCode::UNAUTHORIZED,
                "InvalidApiKey",
                "Invalid API-key provided.",
            ));
        }
        let path = req.uri().path().trim_end_matches('/');
        let route = match path {
            "/api-ws/v1/inference" => Route::RunTask,
            "/api-ws/v1/realtime" => {
                let model = req
                    .uri()
                    .query()
                    .unwrap_or("")
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("model="))
                    .unwrap_or("")
                    .to_owned();
                Route::Realtime(model)
            }
            _ => return Err(refuse(StatusCode::NOT_FOUND, "NotFound", "url error")),
        };
        *r.lock().unwrap() = Some(route);
        Ok(resp)
    };
    let ws = match tokio_tungstenite::accept_hdr_async(tcp, callback).await {
        Ok(ws) => ws,
        Err(_) => {
            side.log().refused += 1;
            side.changed.send_modify(|n| *n += 1);
            return;
        }
    };
    let connection = {
        let mut log = side.log();
        log.handshakes += 1;
        log.handshakes - 1
    };
    side.changed.send_modify(|n| *n += 1);
    let route = route.lock().unwrap().take();
    match route {
        Some(Route::RunTask) => run_tasks(inner, side, ws, connection).await,
        Some(Route::Realtime(model)) => realtime(inner, side, ws, connection, model).await,
        None => {}
    }
}

type Ws = WebSocketStream<TcpStream>;

/// What to do with the next queued output.
enum Out {
    Text(String),
    Audio(Vec<u8>),
    /// The fault's action, after its audio frames.
    Fault(FaultAct),
    /// Close the connection (after task-failed / session.finished).
    Close,
}

#[derive(Clone, Copy)]
enum FaultAct {
    Drop,
    Stall,
}

/// A task's audio state.
struct Synth {
    fmt: String,
    rate: u32,
    hz: f32,
    header_sent: bool,
    units: usize,
    options: Options,
}

impl Synth {
    /// The frames of one sentence's audio, `chunk_ms` each.
    fn sentence(&mut self, text: &str) -> Vec<Vec<u8>> {
        // A sentence with its own `@<N>Hz` token is voiced in that tone (and the task's later
        // sentences without one go on in it).
        if let Some(hz) = tone_token(text) {
            self.hz = hz;
        }
        let units = text_units(text);
        self.units += units;
        let ms = units as f64 * f64::from(self.options.ms_per_unit);
        let raw = s16le(&tone_pcm(self.hz, self.rate, 1, ms));
        let per = ((u64::from(self.rate) * u64::from(self.options.chunk_ms.max(1)) / 1000) * 2)
            .max(2) as usize;
        let mut frames: Vec<Vec<u8>> = raw.chunks(per).map(<[u8]>::to_vec).collect();
        if self.fmt == "wav" && !self.header_sent {
            self.header_sent = true;
            let mut h = wav_header(self.rate, 1, 0x7FFF_FFFF, 0x7FFF_FFFF - 36);
            if let Some(first) = frames.first_mut() {
                h.extend_from_slice(first);
                *first = h;
            } else {
                frames.push(h);
            }
        }
        frames
    }
}

/// Pending output and the fault being applied.
struct Outbox {
    queue: VecDeque<Out>,
    /// Audio frames sent in this task.
    audio: usize,
    fault: Option<FaultKind>,
    /// Stalled: nothing more is sent.
    stalled: bool,
    next_at: Instant,
    pace_ms: f64,
    /// When the first audio frame went out: frame `i` goes out at `first_at + i × pace`, as
    /// the HTTP double paces its events.
    first_at: Option<Instant>,
    /// Nothing goes out before this (`SlowFirstByte`).
    hold_until: Instant,
}

impl Outbox {
    fn new(fault: Option<FaultKind>, options: &Options) -> Self {
        Outbox {
            queue: VecDeque::new(),
            audio: 0,
            fault,
            stalled: false,
            next_at: Instant::now(),
            pace_ms: f64::from(options.chunk_ms) * f64::from(options.pace),
            first_at: None,
            hold_until: Instant::now(),
        }
    }

    /// When the front of the queue may go out: audio at its pace, the rest at once.
    fn gate(&self) -> Instant {
        let audio = match self.queue.front() {
            Some(Out::Audio(_)) => true,
            Some(Out::Text(t)) => t.contains("\"response.audio.delta\""),
            _ => false,
        };
        let at = if audio { self.next_at } else { Instant::now() };
        at.max(self.hold_until)
    }

    /// An audio frame went out: when the next may.
    fn paced(&mut self) {
        let first = *self.first_at.get_or_insert_with(Instant::now);
        self.next_at = first + Duration::from_secs_f64(self.pace_ms * self.audio as f64 / 1000.0);
    }

    /// Queue audio frames, with the fault's action in place of audio frame `frames`.
    fn audio(&mut self, frames: Vec<Vec<u8>>, before: impl Fn(Vec<u8>) -> Vec<Out>) {
        for f in frames {
            let n = self.audio + self.queued_audio();
            if let Some(act) = self.fault_at(n) {
                self.queue.extend(act);
                self.fault = None;
            }
            self.queue.extend(before(f));
        }
    }

    fn queued_audio(&self) -> usize {
        self.queue
            .iter()
            .filter(|o| {
                matches!(o, Out::Audio(_))
                    || matches!(o, Out::Text(t) if t.contains("response.audio.delta"))
            })
            .count()
    }

    /// The outputs a fault puts in place of audio frame `n`, if it is that frame's.
    fn fault_at(&self, n: usize) -> Option<Vec<Out>> {
        match self.fault.as_ref()? {
            FaultKind::SseErrorAfter {
                frames,
                code,
                message,
                ..
            } if *frames == n => Some(vec![Out::Text(fail_json(code, message)), Out::Close]),
            FaultKind::DropAfter { frames } if *frames == n => {
                Some(vec![Out::Fault(FaultAct::Drop)])
            }
            FaultKind::StallAfter { frames } if *frames == n => {
                Some(vec![Out::Fault(FaultAct::Stall)])
            }
            FaultKind::BadJsonAfter { frames } if *frames == n => Some(vec![Out::Text(
                "{not json: the double's malformed frame".to_owned(),
            )]),
            _ => None,
        }
    }

    /// A fault due at the end (fewer audio frames than `frames`): before the final event.
    fn fault_at_end(&mut self) {
        let n = self.audio + self.queued_audio();
        let frames = match self.fault.as_ref() {
            Some(
                FaultKind::SseErrorAfter { frames, .. }
                | FaultKind::DropAfter { frames }
                | FaultKind::StallAfter { frames }
                | FaultKind::BadJsonAfter { frames },
            ) => *frames,
            _ => return,
        };
        if frames >= n
            && let Some(act) = self.fault_at(frames)
        {
            self.queue.extend(act);
            self.fault = None;
        }
    }
}

/// The failure event of the current protocol is filled in by `fail_json`'s caller; this is
/// the marker text replaced when sent.
fn fail_json(code: &str, message: &str) -> String {
    json!({"__fail__": {"code": code, "message": message}}).to_string()
}

/// Wait until `at`; at once when it has passed (a timer would round up to the next ms).
async fn until(at: Instant) {
    if at > Instant::now() {
        tokio::time::sleep_until(at).await;
    }
}

/// Send the next output; `Err` ends the connection.
async fn send_next(
    ws: &mut Ws,
    out: &mut Outbox,
    side: &WsSide,
    task: Option<usize>,
    fail: &(dyn Fn(&str, &str) -> String + Sync),
) -> Result<(), ()> {
    let Some(next) = out.queue.pop_front() else {
        return Ok(());
    };
    match next {
        Out::Text(t) => {
            let t = match serde_json::from_str::<Value>(&t)
                .ok()
                .and_then(|v| v.get("__fail__").cloned())
            {
                Some(f) => fail(
                    f["code"].as_str().unwrap_or(""),
                    f["message"].as_str().unwrap_or(""),
                ),
                None => t,
            };
            let is_delta = t.contains("\"response.audio.delta\"");
            ws.send(Message::text(t)).await.map_err(|_| ())?;
            if is_delta {
                out.audio += 1;
                if let Some(i) = task {
                    side.update(i, |t| {
                        t.audio_frames += 1;
                        t.first_audio_at.get_or_insert_with(Instant::now);
                    });
                }
                out.paced();
            }
        }
        Out::Audio(a) => {
            ws.send(Message::binary(a)).await.map_err(|_| ())?;
            out.audio += 1;
            if let Some(i) = task {
                side.update(i, |t| {
                    t.audio_frames += 1;
                    t.first_audio_at.get_or_insert_with(Instant::now);
                });
            }
            out.paced();
        }
        Out::Fault(FaultAct::Drop) => return Err(()),
        Out::Fault(FaultAct::Stall) => out.stalled = true,
        Out::Close => {
            let _ = ws.close(None).await;
            return Err(());
        }
    }
    Ok(())
}

fn new_task(side: &WsSide, protocol: WsProtocol, connection: usize, model: &str) -> usize {
    let mut log = side.log();
    log.tasks.push(WsTask {
        protocol,
        connection,
        model: model.to_owned(),
        parameters: Value::Null,
        text: String::new(),
        pieces: Vec::new(),
        fault: None,
        audio_frames: 0,
        pieces_at: Vec::new(),
        first_audio_at: None,
        completed: false,
        disconnected: false,
        cancelled: false,
        ended_at: None,
    });
    let i = log.tasks.len() - 1;
    drop(log);
    side.changed.send_modify(|n| *n += 1);
    i
}

fn take_fault(inner: &Inner, model: &str) -> Option<FaultKind> {
    inner.take_fault(|f| {
        f.model_prefix
            .as_deref()
            .is_none_or(|p| model.starts_with(p))
    })
}

// ---------------------------------------------------------------------------------------------
// run-task

struct RunTask {
    index: usize,
    id: String,
    buffer: String,
    synth: Synth,
    finishing: bool,
    sentence: usize,
    /// `word_timestamp_enabled` was asked.
    words: bool,
    /// The task's words so far (for `task-finished` when `Options::ws_words_in_task_finished`).
    all_words: Vec<Value>,
}

/// The words of `sentence` (whitespace-separated) whose audio starts `units_before` units into
/// the task, timed from the task's start like the audio (`ms_per_unit` per unit, as the HTTP
/// double times them from the request's start); indexes are in units into the sentence.
fn sentence_words(sentence: &str, units_before: usize, ms_per_unit: u32) -> Vec<Value> {
    let t0 = units_before as f64 * f64::from(ms_per_unit);
    sentence
        .split_whitespace()
        .map(|w| {
            let at = w.as_ptr() as usize - sentence.as_ptr() as usize;
            let before = text_units(&sentence[..at]);
            let begin = t0 + before as f64 * f64::from(ms_per_unit);
            let end = begin + text_units(w) as f64 * f64::from(ms_per_unit);
            json!({"text": w, "begin_index": before, "end_index": before + text_units(w),
                   "begin_time": begin.round() as u64, "end_time": end.round() as u64})
        })
        .collect()
}

fn event(task_id: &str, name: &str, payload: Value) -> String {
    json!({"header": {"task_id": task_id, "event": name, "attributes": {}}, "payload": payload})
        .to_string()
}

async fn run_tasks(inner: Arc<Inner>, side: Arc<WsSide>, mut ws: Ws, connection: usize) {
    let mut task: Option<RunTask> = None;
    let mut out = Outbox::new(None, &Options::default());
    let fail_id: Arc<Mutex<String>> = Arc::default();
    let fid = Arc::clone(&fail_id);
    let fail = move |code: &str, message: &str| {
        json!({"header": {"task_id": *fid.lock().unwrap(), "event": "task-failed",
                          "error_code": code, "error_message": message, "attributes": {}},
               "payload": {}})
        .to_string()
    };
    loop {
        let can_send = !out.queue.is_empty() && !out.stalled;
        let msg = tokio::select! {
            m = ws.next() => m,
            () = until(out.gate()), if can_send => {
                if send_next(&mut ws, &mut out, &side, task.as_ref().map(|t| t.index), &fail).await.is_err() {
                    if let Some(t) = task.take() {
                        side.end(t.index, |_| {});
                    }
                    return;
                }
                if out.queue.is_empty() && task.as_ref().is_some_and(|t| t.finishing) {
                    // task-finished went out: the connection takes another run-task.
                    if let Some(t) = task.take() {
                        side.end(t.index, |w| w.completed = true);
                    }
                }
                continue;
            }
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t.to_string(),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                if let Some(t) = task.take() {
                    side.end(t.index, |w| w.disconnected = true);
                }
                return;
            }
            Some(Ok(_)) => continue,
        };
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            let _ = ws
                .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                    code: 1007.into(),
                    reason: "invalid payload".into(),
                }))
                .await;
            return;
        };
        let header = &v["header"];
        let payload = &v["payload"];
        let task_id = header["task_id"].as_str().unwrap_or("").to_owned();
        match header["action"].as_str() {
            Some("run-task") => {
                if let Some(old) = task.take() {
                    // A new run-task ends the running one; its pending audio is dropped.
                    out.queue.clear();
                    side.end(old.index, |w| w.cancelled = true);
                }
                let model = payload["model"].as_str().unwrap_or("").to_owned();
                let index = new_task(&side, WsProtocol::RunTask, connection, &model);
                let params = payload["parameters"].clone();
                let options = inner.state().options.clone();
                *fail_id.lock().unwrap() = task_id.clone();
                let fault = take_fault(&inner, &model);
                side.update(index, |w| {
                    w.parameters = params.clone();
                    w.fault = fault.clone();
                });
                out = Outbox::new(fault.clone(), &options);
                let reject = |code: &str, message: &str| {
                    vec![Out::Text(fail_json(code, message)), Out::Close]
                };
                let fmt = params["format"].as_str().unwrap_or("mp3").to_owned();
                let rate = params["sample_rate"].as_u64().unwrap_or(22050) as u32;
                let problem =
                    if !(model.starts_with("cosyvoice-") || model.starts_with("qwen-audio-")) {
                        Some(("ModelNotFound", "Model not found".to_owned()))
                    } else if task_id.is_empty() || !payload["input"].is_object() {
                        Some(("InvalidParameter", "task can not be null".to_owned()))
                    } else if params["voice"].as_str().is_none_or(str::is_empty) {
                        Some(("InvalidParameter", "Request voice is invalid!".to_owned()))
                    } else if !["pcm", "wav"].contains(&fmt.as_str()) {
                        Some((
                            "InvalidParameter",
                            format!("the double serves pcm and wav, not {fmt}"),
                        ))
                    } else if ![8000, 16000, 22050, 24000, 44100, 48000].contains(&rate) {
                        Some((
                            "InvalidParameter",
                            format!("sample_rate {rate} is not supported"),
                        ))
                    } else {
                        None
                    };
                if let Some((code, message)) = problem {
                    out.queue.extend(reject(code, &message));
                    continue;
                }
                match &fault {
                    Some(FaultKind::HttpError { code, message, .. }) => {
                        out.queue.extend(reject(code, message));
                        continue;
                    }
                    Some(FaultKind::SlowFirstByte { delay }) => {
                        out.hold_until = Instant::now() + *delay;
                    }
                    _ => {}
                }
                out.queue
                    .push_back(Out::Text(event(&task_id, "task-started", json!({}))));
                task = Some(RunTask {
                    index,
                    id: task_id,
                    buffer: String::new(),
                    synth: Synth {
                        fmt,
                        rate,
                        hz: options.tone_hz,
                        header_sent: false,
                        units: 0,
                        options,
                    },
                    finishing: false,
                    sentence: 0,
                    words: params["word_timestamp_enabled"].as_bool() == Some(true),
                    all_words: Vec::new(),
                });
            }
            Some("continue-task") => {
                let Some(t) = task.as_mut().filter(|t| t.id == task_id && !t.finishing) else {
                    continue;
                };
                let input = &payload["input"];
                if let Some(piece) = input["text"].as_str() {
                    t.buffer.push_str(piece);
                    let idx = t.index;
                    let p = piece.to_owned();
                    side.update(idx, |w| {
                        w.text.push_str(&p);
                        w.pieces.push(p.clone());
                        w.pieces_at.push(Instant::now());
                    });
                }
                let flush = input["flush"].as_bool() == Some(true);
                synthesize_ready(t, &mut out, flush, &side);
            }
            Some("finish-task") => {
                let Some(t) = task.as_mut().filter(|t| t.id == task_id) else {
                    continue;
                };
                if payload["input"]["directive"].as_str() == Some("cancel") {
                    out.queue.clear();
                    let idx = t.index;
                    side.update(idx, |w| w.cancelled = true);
                    let id = t.id.clone();
                    out.queue.push_back(Out::Text(event(
                        &id,
                        "task-finished",
                        json!({"output": {}}),
                    )));
                    t.finishing = true;
                    continue;
                }
                if t.synth.units == 0 && t.buffer.trim().is_empty() {
                    out.queue.extend([
                        Out::Text(fail_json(
                            "InvalidParameter",
                            "Please ensure input text is valid.",
                        )),
                        Out::Close,
                    ]);
                    continue;
                }
                synthesize_ready(t, &mut out, true, &side);
                out.fault_at_end();
                let request_uuid = uuid::Uuid::new_v4().to_string();
                let words = if t.synth.options.ws_words_in_task_finished {
                    std::mem::take(&mut t.all_words)
                } else {
                    Vec::new()
                };
                out.queue.push_back(Out::Text(
                    json!({"header": {"task_id": t.id, "event": "task-finished",
                                      "attributes": {"request_uuid": request_uuid}},
                           "payload": {"output": {"sentence": {"index": t.sentence, "words": words}},
                                       "usage": {"characters": t.synth.units}}})
                    .to_string(),
                ));
                t.finishing = true;
            }
            _ => {
                let _ = ws
                    .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                        code: 1007.into(),
                        reason: "unknown action".into(),
                    }))
                    .await;
                if let Some(t) = task.take() {
                    side.end(t.index, |_| {});
                }
                return;
            }
        }
    }
}

/// Queue the complete sentences of the buffer (all of it when `all`).
fn synthesize_ready(t: &mut RunTask, out: &mut Outbox, all: bool, side: &WsSide) {
    if t.synth.units == 0
        && let Some(hz) = side
            .log()
            .tasks
            .get(t.index)
            .and_then(|w| tone_token(&w.text))
    {
        t.synth.hz = hz;
    }
    let mut sentences = split_sentences(&t.buffer);
    let complete_last = sentences
        .last()
        .is_some_and(|s| s.trim_end().ends_with(['。', '！', '？', '.', '!', '?']));
    let keep = if all || complete_last {
        String::new()
    } else {
        sentences.pop().unwrap_or_default()
    };
    t.buffer = keep;
    for s in sentences {
        if s.trim().is_empty() {
            continue;
        }
        let index = t.sentence;
        t.sentence += 1;
        let id = t.id.clone();
        out.queue.push_back(Out::Text(event(
            &id,
            "result-generated",
            json!({"output": {"sentence": {"index": index, "words": []}, "type": "sentence-begin",
                              "original_text": s}}),
        )));
        let units_before = t.synth.units;
        let frames = t.synth.sentence(&s);
        let mut words = Vec::new();
        if t.words {
            words = sentence_words(&s, units_before, t.synth.options.ms_per_unit);
            if t.synth.options.ws_words_in_task_finished {
                t.all_words.append(&mut words);
            }
        }
        let synth_event = event(
            &id,
            "result-generated",
            json!({"output": {"sentence": {"index": index, "words": []}, "type": "sentence-synthesis"}}),
        );
        out.audio(frames, |f| {
            vec![Out::Text(synth_event.clone()), Out::Audio(f)]
        });
        out.queue.push_back(Out::Text(event(
            &id,
            "result-generated",
            json!({"output": {"sentence": {"index": index, "words": words}, "type": "sentence-end",
                              "original_text": s},
                   "usage": {"characters": t.synth.units}}),
        )));
    }
}

// ---------------------------------------------------------------------------------------------
// realtime

async fn realtime(
    inner: Arc<Inner>,
    side: Arc<WsSide>,
    mut ws: Ws,
    connection: usize,
    model: String,
) {
    let eid = || format!("event_{}", uuid::Uuid::new_v4().simple());
    let fail = move |code: &str, message: &str| {
        json!({"event_id": format!("event_{}", uuid::Uuid::new_v4().simple()), "type": "error",
               "error": {"type": "invalid_request_error", "code": code, "message": message}})
        .to_string()
    };
    let session_id = format!("sess_{}", uuid::Uuid::new_v4().simple());
    let mut session = json!({"object": "realtime.session", "mode": "server_commit", "model": model,
                             "voice": "Cherry", "response_format": "pcm", "sample_rate": 24000,
                             "id": session_id});
    let created =
        json!({"event_id": eid(), "type": "session.created", "session": session}).to_string();
    if ws.send(Message::text(created)).await.is_err() {
        return;
    }
    let mut options = inner.state().options.clone();
    let index = new_task(&side, WsProtocol::Realtime, connection, &model);
    // The fault is taken when the session is configured (a connection may be opened ahead).
    let mut fault = None;
    let mut out = Outbox::new(None, &options);
    let mut synth = Synth {
        fmt: "pcm".to_owned(),
        rate: 24000,
        hz: options.tone_hz,
        header_sent: false,
        units: 0,
        options: options.clone(),
    };
    let mut buffer = String::new();
    let mut updated = false;
    let mut finishing = false;
    let mut failed = false;
    loop {
        let can_send = !out.queue.is_empty() && !out.stalled;
        let msg = tokio::select! {
            m = ws.next() => m,
            () = until(out.gate()), if can_send => {
                if send_next(&mut ws, &mut out, &side, Some(index), &fail).await.is_err() {
                    side.end(index, |_| {});
                    return;
                }
                if finishing && out.queue.is_empty() {
                    side.end(index, |w| w.completed = true);
                    let _ = ws.close(None).await;
                    return;
                }
                continue;
            }
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t.to_string(),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                side.end(index, |w| w.disconnected = true);
                return;
            }
            Some(Ok(_)) => continue,
        };
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            out.queue
                .push_back(Out::Text(fail("invalid_request_error", "not JSON")));
            continue;
        };
        match v["type"].as_str() {
            _ if failed => {
                if v["type"].as_str() == Some("session.finish") {
                    out.queue.push_back(Out::Close);
                }
            }
            Some("session.update") => {
                if updated && synth.units > 0 {
                    out.queue.push_back(Out::Text(fail(
                        "invalid_value",
                        "Session update error: session already started or finished or failed.",
                    )));
                    continue;
                }
                let s = &v["session"];
                if !updated {
                    options = inner.state().options.clone();
                    fault = take_fault(&inner, &model);
                    out = Outbox::new(fault.clone(), &options);
                    synth.options = options.clone();
                    synth.hz = options.tone_hz;
                }
                side.update(index, |w| {
                    w.parameters = s.clone();
                    w.fault = fault.clone();
                });
                if let Some(obj) = s.as_object() {
                    for (k, val) in obj {
                        session[k] = val.clone();
                    }
                }
                let voice = s["voice"].as_str().unwrap_or("");
                let fmt = s["response_format"].as_str().unwrap_or("pcm");
                let rate = s["sample_rate"].as_u64().unwrap_or(24000) as u32;
                let problem = if !model.contains("realtime") {
                    Some(("invalid_value", format!("Model not found: {model}")))
                } else if voice.is_empty() {
                    Some(("invalid_value", "voice is required".to_owned()))
                } else if voice.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                    && !voice.starts_with("qwen-tts-")
                {
                    Some((
                        "invalid_value",
                        format!("The requested voice '{voice}' is not supported."),
                    ))
                } else if !["pcm", "wav"].contains(&fmt) {
                    Some((
                        "invalid_value",
                        format!("the double serves pcm and wav, not {fmt}"),
                    ))
                } else if ![8000, 16000, 24000, 48000].contains(&rate) {
                    Some((
                        "invalid_value",
                        format!("sample_rate {rate} is not supported"),
                    ))
                } else {
                    None
                };
                if let Some((code, message)) = problem {
                    out.queue
                        .extend([Out::Text(fail(code, &message)), Out::Close]);
                    continue;
                }
                if let Some(FaultKind::HttpError { code, message, .. }) = &fault {
                    // The session has failed: what the client sends next is ignored, and its
                    // session.finish is answered by a close (no session.finished).
                    out.queue.push_back(Out::Text(fail(code, message)));
                    failed = true;
                    continue;
                }
                if let Some(FaultKind::SlowFirstByte { delay }) = &fault {
                    out.hold_until = Instant::now() + *delay;
                }
                synth.fmt = fmt.to_owned();
                synth.rate = rate;
                updated = true;
                out.queue.push_back(Out::Text(
                    json!({"event_id": eid(), "type": "session.updated", "session": session})
                        .to_string(),
                ));
            }
            Some("input_text_buffer.append") => {
                let piece = v["text"].as_str().unwrap_or("").to_owned();
                buffer.push_str(&piece);
                side.update(index, |w| {
                    w.text.push_str(&piece);
                    w.pieces.push(piece.clone());
                    w.pieces_at.push(Instant::now());
                });
                if synth.units == 0
                    && let Some(hz) = tone_token(&buffer)
                {
                    synth.hz = hz;
                }
                if session["mode"].as_str() != Some("commit") {
                    let mut sentences = split_sentences(&buffer);
                    let complete = sentences
                        .last()
                        .is_some_and(|s| s.trim_end().ends_with(['。', '！', '？', '.', '!', '?']));
                    buffer = if complete {
                        String::new()
                    } else {
                        sentences.pop().unwrap_or_default()
                    };
                    for s in sentences {
                        respond(&mut out, &mut synth, &s, true);
                    }
                }
            }
            Some("input_text_buffer.commit") => {
                if buffer.trim().is_empty() {
                    out.queue.push_back(Out::Text(fail(
                        "invalid_value",
                        "input text buffer is empty",
                    )));
                    continue;
                }
                let b = std::mem::take(&mut buffer);
                respond(&mut out, &mut synth, &b, true);
            }
            Some("input_text_buffer.clear") => {
                buffer.clear();
                out.queue.push_back(Out::Text(
                    json!({"event_id": eid(), "type": "input_text_buffer.cleared"}).to_string(),
                ));
            }
            Some("session.finish") => {
                if session["mode"].as_str() != Some("commit") && !buffer.trim().is_empty() {
                    let b = std::mem::take(&mut buffer);
                    respond(&mut out, &mut synth, &b, true);
                }
                out.fault_at_end();
                out.queue.push_back(Out::Text(
                    json!({"event_id": eid(), "type": "session.finished"}).to_string(),
                ));
                finishing = true;
            }
            _ => {
                out.queue.push_back(Out::Text(fail(
                    "invalid_request_error",
                    "unknown event type",
                )));
            }
        }
    }
}

/// Queue one response (commit → response events with the audio of `text`).
fn respond(out: &mut Outbox, synth: &mut Synth, text: &str, committed: bool) {
    let eid = || format!("event_{}", uuid::Uuid::new_v4().simple());
    let item = format!("item_{}", uuid::Uuid::new_v4().simple());
    let resp = format!("resp_{}", uuid::Uuid::new_v4().simple());
    if committed {
        out.queue.push_back(Out::Text(
            json!({"event_id": eid(), "type": "input_text_buffer.committed", "item_id": item})
                .to_string(),
        ));
    }
    out.queue.push_back(Out::Text(
        json!({"event_id": eid(), "type": "response.created",
               "response": {"id": resp, "object": "realtime.response", "conversation_id": "",
                            "status": "in_progress", "voice": "Cherry", "output": []}})
        .to_string(),
    ));
    out.queue.push_back(Out::Text(
        json!({"event_id": eid(), "type": "response.output_item.added", "response_id": resp,
               "output_index": 0, "item": {"id": item, "object": "realtime.item", "type": "message",
               "status": "in_progress", "role": "assistant", "content": []}})
        .to_string(),
    ));
    out.queue.push_back(Out::Text(
        json!({"event_id": eid(), "type": "response.content_part.added", "response_id": resp,
               "item_id": item, "output_index": 0, "content_index": 0,
               "part": {"type": "audio", "text": ""}})
        .to_string(),
    ));
    let units_before = synth.units;
    let frames = synth.sentence(text);
    let (r, i) = (resp.clone(), item.clone());
    out.audio(frames, move |f| {
        vec![Out::Text(
            json!({"event_id": format!("event_{}", uuid::Uuid::new_v4().simple()),
                   "type": "response.audio.delta", "response_id": r, "item_id": i,
                   "output_index": 0, "content_index": 0,
                   "delta": base64::engine::general_purpose::STANDARD.encode(f)})
            .to_string(),
        )]
    });
    for t in ["response.audio.done", "response.content_part.done"] {
        out.queue.push_back(Out::Text(
            json!({"event_id": eid(), "type": t, "response_id": resp, "item_id": item,
                   "output_index": 0, "content_index": 0})
            .to_string(),
        ));
    }
    out.queue.push_back(Out::Text(
        json!({"event_id": eid(), "type": "response.output_item.done", "response_id": resp,
               "output_index": 0, "item": {"id": item, "object": "realtime.item", "type": "message",
               "status": "completed", "role": "assistant", "content": [{"type": "audio", "text": ""}]}})
        .to_string(),
    ));
    out.queue.push_back(Out::Text(
        json!({"event_id": eid(), "type": "response.done",
               "response": {"id": resp, "object": "realtime.response", "conversation_id": "",
                            "status": "completed", "modalities": ["text", "audio"], "voice": "Cherry",
                            "output": [{"id": item, "object": "realtime.item", "type": "message",
                                        "status": "completed", "role": "assistant",
                                        "content": [{"type": "audio", "transcript": ""}]}],
                            "usage": {"characters": synth.units - units_before}}})
        .to_string(),
    ));
}

// ---------------------------------------------------------------------------------------------
// The double's WebSocket face

impl super::DashScopeDouble {
    /// The run-task URL, `ws://127.0.0.1:PORT/api-ws/v1/inference` (the realtime one replaces
    /// `/inference` by `/realtime`): `dashscope.websocket_base_url` /
    /// `DASHSCOPE_WEBSOCKET_BASE_URL`.
    pub fn ws_base_url(&self) -> String {
        format!("ws://{}/api-ws/v1/inference", self.ws.addr)
    }

    /// WebSocket connections upgraded so far.
    pub fn ws_handshakes(&self) -> usize {
        self.ws.log().handshakes
    }

    /// WebSocket handshakes refused (bad key, unknown path).
    pub fn ws_refused(&self) -> usize {
        self.ws.log().refused
    }

    /// Every run-task task and realtime session so far, in start order.
    pub fn ws_tasks(&self) -> Vec<WsTask> {
        self.ws.log().tasks.clone()
    }

    /// Wait until task `index` has ended (finished, failed, cancelled or cut), or `timeout`.
    pub async fn wait_ws_task_ended(&self, index: usize, timeout: Duration) -> Option<WsTask> {
        let deadline = Instant::now() + timeout;
        let mut rx = self.ws.changed.subscribe();
        loop {
            rx.borrow_and_update();
            if let Some(t) = self.ws.log().tasks.get(index)
                && t.ended_at.is_some()
            {
                return Some(t.clone());
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }
}
