//! The OpenAI-compatible HTTP door: `POST /v1/audio/speech`, `GET /v1/models`,
//! `GET /v1/audio/voices` and `GET /v1/audio/models`, on the listeners of `[http] listen`.
//!
//! A thin adapter, like the gRPC door: [`wire`] translates OpenAI's JSON into a core
//! [`Request`](crate::synthesis::Request), the handler calls the same [`Core::synthesize`]
//! (herald's limits, deadline and metrics included) and streams the core's events back as
//! chunked audio bytes or server-sent events; [`errors`] maps domain errors to HTTP statuses and
//! OpenAI's error body. TCP listeners follow the rules of gRPC's ([`Access`]): the bearer token
//! when one is configured, TLS when a certificate is. The status is decided once the job's
//! source has accepted it (its first event), so upstream refusals get their own status; an
//! error after audio has started cuts the response short (audio) or ends it with an `error`
//! event (SSE).
//!
//! This module owns no engine, audio or job logic, and builds nothing it serves: the daemon
//! composes it ([`crate::daemon::Daemon::core`]).

pub mod errors;
mod listen;
pub mod wire;

use std::{future::IntoFuture, path::PathBuf, sync::Arc};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{ConnectInfo, DefaultBodyLimit, Path, State, rejection::BytesRejection},
    http::{HeaderMap, HeaderValue, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::Engine as _;
use futures::StreamExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use self::listen::{Peer, TlsError};
use self::{
    errors::{ApiError, axum_json},
    wire::{Names, StreamFormat},
};
use crate::{
    config::{ConnectionLimits, HttpSettings, ListenAddr},
    error::Error,
    service::{Access, BoundListener, ListenerKind, Refused, conn::Acceptor},
    synthesis::{Core, Event},
};

/// Errors serving the HTTP door.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DoorError {
    /// The access policy does not allow a listener.
    #[error("http.listen: {0}")]
    Refused(#[from] Refused),
    /// The TLS certificate or key is not usable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A listener failed.
    #[error("the HTTP listener failed")]
    Io(#[from] std::io::Error),
}

/// The HTTP door of one daemon.
#[derive(Clone)]
pub struct Door {
    shared: Arc<Shared>,
    limits: ConnectionLimits,
}

struct Shared {
    core: Arc<Core>,
    access: Access,
    names: Names,
    max_body: usize,
}

impl Door {
    /// The door over `core`, with `access` on its TCP listeners, `settings`' name maps, and
    /// request bodies up to `max_body` bytes (`server.max_message_bytes`).
    pub fn new(core: Arc<Core>, access: Access, settings: &HttpSettings, max_body: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                core,
                access,
                names: Names {
                    models: settings.models.clone(),
                    voices: settings.voices.clone(),
                },
                max_body,
            }),
            limits: ConnectionLimits::default(),
        }
    }

    /// The connection limits of its listeners (`server.max_connections`, the handshake and idle
    /// timeouts; see [`crate::service::conn`]).
    pub fn with_connections(mut self, limits: ConnectionLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Refuse listeners this door would not serve: a TCP listener the access policy does not
    /// allow, or TLS rustls does not take. [`Self::serve`] checks the same first.
    pub fn check(&self, listeners: &[BoundListener]) -> Result<(), DoorError> {
        let mut tcp = false;
        for l in listeners {
            if let ListenAddr::Tcp(addr) = l.addr() {
                self.shared.access.check(addr)?;
                tcp = true;
            }
        }
        if tcp && let Some((cert, key)) = self.shared.access.tls_pem() {
            listen::Tls::acceptor(cert, key)?;
        }
        Ok(())
    }

    /// The routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/audio/speech", post(speech))
            .route("/v1/models", get(models))
            .route("/v1/models/{id}", get(model))
            .route("/v1/audio/models", get(audio_models))
            .route("/v1/audio/voices", get(voices))
            .fallback(not_found)
            .layer(DefaultBodyLimit::max(self.shared.max_body))
            .with_state(Arc::clone(&self.shared))
    }

    /// Serve `listeners` until `shutdown` is cancelled, then stop accepting and wait for the
    /// open responses to end (the daemon's shutdown cancels their jobs). Unix socket files this
    /// door created are removed.
    pub async fn serve(
        self,
        listeners: Vec<BoundListener>,
        shutdown: CancellationToken,
    ) -> Result<(), DoorError> {
        self.check(&listeners)?;
        let mut servers = JoinSet::new();
        let mut socket_files: Vec<PathBuf> = Vec::new();
        for listener in listeners {
            let addr = listener.addr().clone();
            let app = self.router().into_make_service_with_connect_info::<Peer>();
            let stop = shutdown.clone().cancelled_owned();
            let (kind, activated) = listener.into_kind();
            let (name, limits) = (addr.to_string(), self.limits);
            let tls = self.shared.access.tls_pem();
            tracing::info!(%addr, tls = matches!(kind, ListenerKind::Tcp(_)) && tls.is_some(), "OpenAI-compatible HTTP at /v1");
            match kind {
                ListenerKind::Tcp(l) => match tls {
                    Some((cert, key)) => {
                        let l = listen::Tls::new(
                            Acceptor::new(l, name, limits),
                            listen::Tls::acceptor(cert, key)?,
                            limits.handshake_timeout,
                        );
                        servers.spawn(
                            axum::serve(l, app)
                                .with_graceful_shutdown(stop)
                                .into_future(),
                        );
                    }
                    None => {
                        servers.spawn(
                            axum::serve(listen::Tcp(Acceptor::new(l, name, limits)), app)
                                .with_graceful_shutdown(stop)
                                .into_future(),
                        );
                    }
                },
                ListenerKind::Unix(l) => {
                    if let ListenAddr::Unix(path) = &addr
                        && !activated
                    {
                        socket_files.push(path.clone());
                    }
                    servers.spawn(
                        axum::serve(listen::Unix(Acceptor::new(l, name, limits)), app)
                            .with_graceful_shutdown(stop)
                            .into_future(),
                    );
                }
            }
        }
        let mut failure = None;
        while let Some(done) = servers.join_next().await {
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "an HTTP listener failed");
                    failure.get_or_insert(DoorError::Io(e));
                    shutdown.cancel();
                }
                Err(e) => {
                    tracing::error!(error = %e, "an HTTP listener task failed");
                    shutdown.cancel();
                }
            }
        }
        for path in socket_files {
            let _ = std::fs::remove_file(path);
        }
        failure.map_or(Ok(()), Err)
    }
}

impl Shared {
    /// The bearer token on TCP connections, when one is configured.
    fn authorize(&self, peer: &Peer, headers: &HeaderMap) -> Result<(), ApiError> {
        if !peer.tcp {
            return Ok(());
        }
        self.access
            .authorizes(
                headers
                    .get(header::AUTHORIZATION)
                    .map(HeaderValue::as_bytes),
            )
            .map_err(ApiError::unauthenticated)
    }

    /// Every model herald serves, in order, once.
    fn models(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for engine in self.core.provider().engines().all() {
            for v in engine.voices() {
                if !out.contains(&v.model) {
                    out.push(v.model);
                }
            }
        }
        out
    }
}

async fn speech(
    State(door): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // Every log line of the job carries the door and the caller.
    let span = tracing::info_span!("http", peer = %peer.name);
    match tracing::Instrument::instrument(speak(&door, peer, &headers, body), span).await {
        Ok(response) => response,
        Err(e) => {
            tracing::debug!(status = %e.status, message = %e.message, "http: speech refused");
            e.into_response()
        }
    }
}

async fn speak(
    door: &Shared,
    peer: Peer,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    door.authorize(&peer, headers)?;
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(door.max_body)
        } else {
            ApiError::invalid("body", e.body_text())
        }
    })?;
    let engines = door.core.provider().engines();
    let speech =
        wire::speech(&body, &door.names, |m| engines.for_model(m).is_some()).inspect_err(|_| {
            crate::metrics::metrics().door_outcome(
                crate::metrics::DOOR_HTTP,
                "unknown",
                "",
                Err(crate::error::ErrorKind::InvalidArgument),
            );
        })?;
    let mut events =
        door.core
            .synthesize_via(crate::metrics::DOOR_HTTP, speech.request, peer.name, None)?;
    // The status waits for the source to accept the job: an upstream refusal is its own status.
    let info = match events.recv().await {
        Some(Ok(Event::Info(info))) => info,
        Some(Err(e)) => return Err(e.into()),
        Some(Ok(_)) | None => {
            return Err(Error::internal("the job ended before it started").into());
        }
    };
    let mut response = match speech.stream {
        StreamFormat::Audio => {
            let bytes = events.filter_map(|e| async move {
                match e {
                    Ok(Event::Audio(chunk)) => Some(Ok(chunk.data)),
                    Ok(_) => None,
                    // Cut the response short: the client sees a body that did not end.
                    Err(e) => Some(Err(std::io::Error::other(e.message().to_owned()))),
                }
            });
            let mut r = Response::new(Body::from_stream(bytes));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(wire::content_type(speech.format)),
            );
            r
        }
        StreamFormat::Sse => {
            let frames = events.filter_map(|e| async move {
                let data = match e {
                    Ok(Event::Audio(chunk)) => serde_json::json!({
                        "type": "speech.audio.delta",
                        "audio": base64::engine::general_purpose::STANDARD.encode(&chunk.data),
                    }),
                    Ok(Event::Summary(s)) => serde_json::json!({
                        "type": "speech.audio.done",
                        "usage": {
                            "input_tokens": s.characters,
                            "output_tokens": 0,
                            "total_tokens": s.characters,
                        },
                    }),
                    Ok(_) => return None,
                    Err(e) => {
                        let mut body = ApiError::from(&e).body();
                        body["type"] = "error".into();
                        body
                    }
                };
                Some(Ok::<_, std::convert::Infallible>(Bytes::from(format!(
                    "data: {data}\n\n"
                ))))
            });
            let mut r = Response::new(Body::from_stream(frames));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            r
        }
    };
    let h = response.headers_mut();
    for (name, value) in [
        ("x-request-id", info.request_id.as_str()),
        ("x-herald-model", info.served.model.as_str()),
        ("x-herald-voice", info.served.voice.as_str()),
        ("x-herald-engine", info.served.engine.as_str()),
    ] {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    }
    h.insert(
        "x-herald-sample-rate",
        HeaderValue::from(info.output.spec.sample_rate),
    );
    if let Some(reason) = info
        .served
        .fallback_reason
        .as_deref()
        .and_then(|r| HeaderValue::from_str(r).ok())
    {
        h.insert("x-herald-fallback", reason);
    }
    Ok(response)
}

fn model_object(id: &str, owned_by: &str) -> serde_json::Value {
    serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": owned_by})
}

/// herald's models, then the OpenAI names it accepts (owned by "herald (alias of …)").
fn model_list(door: &Shared) -> Vec<serde_json::Value> {
    let mut data: Vec<serde_json::Value> = door
        .models()
        .iter()
        .map(|m| model_object(m, "herald"))
        .collect();
    let default = &door.core.settings().default_model;
    let mut aliases: Vec<(&str, &str)> = wire::OPENAI_MODELS
        .iter()
        .filter(|m| !door.names.models.contains_key(**m))
        .map(|m| (*m, default.as_str()))
        .collect();
    aliases.extend(
        door.names
            .models
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    data.extend(
        aliases
            .into_iter()
            .map(|(alias, to)| model_object(alias, &format!("herald (alias of {to})"))),
    );
    data
}

async fn models(
    State(door): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = door.authorize(&peer, &headers) {
        return e.into_response();
    }
    axum_json(&serde_json::json!({"object": "list", "data": model_list(&door)}))
}

async fn model(
    State(door): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(e) = door.authorize(&peer, &headers) {
        return e.into_response();
    }
    match model_list(&door)
        .into_iter()
        .find(|m| m["id"] == id.as_str())
    {
        Some(m) => axum_json(&m),
        None => ApiError::not_found(format!(
            "model: {:?} is not a model of this daemon (see GET /v1/models)",
            crate::synthesis::truncate(&id, 64)
        ))
        .into_response(),
    }
}

/// `GET /v1/audio/models`: the shape Open WebUI reads (`{"models": [{"id"}]}`).
async fn audio_models(
    State(door): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = door.authorize(&peer, &headers) {
        return e.into_response();
    }
    let models: Vec<serde_json::Value> = model_list(&door)
        .into_iter()
        .map(|m| serde_json::json!({"id": m["id"]}))
        .collect();
    axum_json(&serde_json::json!({ "models": models }))
}

/// `GET /v1/audio/voices[?model=M]`: herald's voices, in the shape OpenAI-compatible servers
/// use (`{"voices": [{"id", "name", ...}]}`).
async fn voices(
    State(door): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    if let Err(e) = door.authorize(&peer, &headers) {
        return e.into_response();
    }
    let model = query_param(&uri, "model").unwrap_or_default();
    let engines = door.core.provider().engines();
    let model = if model.is_empty() {
        model
    } else {
        door.names.model(&model, |m| engines.for_model(m).is_some())
    };
    let model = if model.is_empty() && query_param(&uri, "model").is_some() {
        door.core.settings().default_model.clone()
    } else {
        model
    };
    let voices: Vec<serde_json::Value> = engines
        .all()
        .iter()
        .flat_map(|e| {
            let engine = e.name();
            e.voices().into_iter().map(move |v| (engine, v))
        })
        .filter(|(_, v)| model.is_empty() || v.model == model)
        .map(|(engine, v)| {
            serde_json::json!({
                "id": v.name,
                "name": v.display_name,
                "model": v.model,
                "engine": engine,
                "languages": v.languages,
                "gender": v.gender,
            })
        })
        .collect();
    axum_json(&serde_json::json!({ "voices": voices }))
}

/// The value of `name` in the query string, percent-decoded.
fn query_param(uri: &Uri, name: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 3;
                }
                Err(_) => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn not_found(uri: Uri) -> Response {
    ApiError::not_found(format!(
        "{} is not a path of this server; herald serves POST /v1/audio/speech, GET /v1/models, \
         GET /v1/audio/voices and GET /v1/audio/models",
        crate::synthesis::truncate(uri.path(), 100)
    ))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded() {
        let uri: Uri = "/v1/audio/voices?x=1&model=MiniMax%2Fspeech-2.8-hd"
            .parse()
            .unwrap();
        assert_eq!(
            query_param(&uri, "model").as_deref(),
            Some("MiniMax/speech-2.8-hd")
        );
        assert_eq!(query_param(&uri, "y"), None);
        assert_eq!(percent_decode("a%2"), "a%2");
    }
}
