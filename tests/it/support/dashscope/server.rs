//! The double's HTTP server: routing, the shared state behind the handlers, the request log
//! (every request read the same way by [`Incoming`]: key checked, headers redacted, JSON body
//! parsed), and response bodies written step by step at the pace the options ask for. What a
//! response says is decided in `request`, `wire` and `custom`.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{FromRequest, Path, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::Value;
use tokio::{sync::watch, task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;

use super::{
    Fault, FaultKind, LoggedRequest, MULTIMODAL_PATH, Options, TTS_PATH,
    custom::{self, CUSTOMIZATION_PATH, CustomState},
    request,
    wire::{Step, error_body},
};

/// Bind 127.0.0.1:0 and serve on the current tokio runtime until the token is cancelled.
pub(super) async fn spawn(api_key: &str) -> (Arc<Inner>, CancellationToken, JoinHandle<()>) {
    let listener = super::loopback_listener();
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
        .route(CUSTOMIZATION_PATH, post(custom::customization))
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
    (inner, shutdown, join)
}

/// What the handlers share.
pub(super) struct Inner {
    pub(super) api_key: String,
    pub(super) addr: SocketAddr,
    state: Mutex<ServerState>,
    /// Bumped whenever a logged request ends.
    pub(super) ended: watch::Sender<u64>,
    /// Cuts every response body (stalled ones included).
    pub(super) kill: CancellationToken,
}

pub(super) struct ServerState {
    pub(super) faults: Vec<Fault>,
    pub(super) options: Options,
    pub(super) log: Vec<LoggedRequest>,
    /// `<request_id>.<ext>` → (content type, bytes), served under `/oss/`.
    pub(super) files: HashMap<String, (&'static str, Bytes)>,
    /// The custom-voice endpoint's voices and knobs.
    pub(super) custom: CustomState,
}

impl Inner {
    pub(super) fn state(&self) -> MutexGuard<'_, ServerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Log a request that has already been answered whole.
    pub(super) fn log_answered(&self, entry: LoggedRequest) {
        self.state().log.push(entry);
        self.ended.send_modify(|n| *n += 1);
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

    /// The first fault `applies` to, consumed if counted.
    pub(super) fn take_fault(&self, applies: impl Fn(&Fault) -> bool) -> Option<FaultKind> {
        let mut state = self.state();
        let pos = state
            .faults
            .iter()
            .position(|f| f.times != Some(0) && applies(f))?;
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

/// A request as every logged endpoint reads it: whether it carries the key (`Authorization:
/// Bearer <key>`, the scheme in any case), its headers as logged (lowercase names; the
/// `authorization` value and the key anywhere else redacted), its JSON body and `model`, and the
/// request id the answer will carry.
pub(super) struct Incoming {
    pub(super) uri: Uri,
    headers: HeaderMap,
    logged_headers: Vec<(String, String)>,
    pub(super) authorized: bool,
    /// The body as JSON (`None`: not JSON).
    pub(super) json: Option<Value>,
    /// `""` when the body has none.
    pub(super) model: String,
    pub(super) request_id: String,
}

impl FromRequest<Arc<Inner>> for Incoming {
    type Rejection = Response;

    async fn from_request(req: Request, inner: &Arc<Inner>) -> Result<Self, Response> {
        let uri = req.uri().clone();
        let headers = req.headers().clone();
        let body = Bytes::from_request(req, inner)
            .await
            .map_err(IntoResponse::into_response)?;
        let authorized = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, key) = v.trim().split_once(' ')?;
                Some(scheme.eq_ignore_ascii_case("bearer") && key.trim() == inner.api_key)
            })
            .unwrap_or(false);
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
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        let model = json
            .as_ref()
            .and_then(|b| b.get("model"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        Ok(Incoming {
            uri,
            headers,
            logged_headers,
            authorized,
            json,
            model,
            request_id: uuid::Uuid::new_v4().to_string(),
        })
    }
}

impl Incoming {
    /// A request header, if present and text.
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Its log entry, as received: nothing answered yet.
    pub(super) fn log_entry(&self) -> LoggedRequest {
        LoggedRequest {
            path: self.uri.path().to_owned(),
            model: self.model.clone(),
            body: self.json.clone().unwrap_or(Value::Null),
            headers: self.logged_headers.clone(),
            authorized: self.authorized,
            sse: false,
            status: 0,
            fault: None,
            frames_sent: 0,
            first_frame_at: None,
            completed: false,
            disconnected: false,
            request_id: self.request_id.clone(),
            received_at: Instant::now(),
            ended_at: None,
        }
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

/// The synthesis endpoints (both paths): logged, answered as [`request::decide`] says, the
/// body paced by the options' `pace`.
async fn synthesize(State(inner): State<Arc<Inner>>, incoming: Incoming) -> Response {
    let sse = incoming
        .header("x-dashscope-sse")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("enable"));
    let (index, options) = {
        let mut state = inner.state();
        state.log.push(LoggedRequest {
            sse,
            ..incoming.log_entry()
        });
        (state.log.len() - 1, state.options.clone())
    };
    // From here on, dropping this (the client left early) logs a disconnect.
    let guard = EndGuard {
        inner: inner.clone(),
        index,
        finished: false,
    };

    let (reply, fault) = request::decide(&inner, &incoming, sse, &options);
    inner.update(index, |e| {
        e.status = reply.status;
        e.fault = fault.clone();
    });
    if let Some(FaultKind::SlowFirstByte { delay }) = fault {
        tokio::time::sleep(delay).await;
    }
    if let Some(FaultKind::Frozen) = fault {
        // Dropped here when the client leaves: `guard` logs the disconnect.
        inner.kill.cancelled().await;
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
    if let Ok(v) = HeaderValue::from_str(&incoming.request_id) {
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
        std::io::Error::other("DashScope double: connection dropped on purpose")
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
                    e.guard.inner.update(e.guard.index, |entry| {
                        entry.frames_sent += 1;
                        entry.first_frame_at.get_or_insert_with(Instant::now);
                    });
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
