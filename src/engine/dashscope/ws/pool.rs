//! Open WebSocket connections kept for the next task, so a request does not pay the TCP, TLS
//! and WebSocket handshakes.
//!
//! A run-task connection goes back to the pool after `task-finished` (DashScope runs any
//! number of tasks in sequence on one connection and closes it after 60 s without a task);
//! one that saw `task-failed`, a close or an error is dropped. A realtime session ends with its
//! connection, so after each session one connection to the same URL is pre-opened in the
//! background for the next one. Connections idle longer than [`Pool::MAX_IDLE`] are dropped
//! unused (the server's own limit is 60 s); at most [`Pool::MAX_IDLE_CONNECTIONS`] are kept.
//!
//! It owns the connecting (headers with the key, TLS with the platform's roots as reqwest
//! does, the connect timeout) and must not read or write task messages.

use std::{
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use tokio::{net::TcpStream, time::Instant};
use tokio_tungstenite::{
    Connector, MaybeTlsStream, WebSocketStream,
    tungstenite::{client::IntoClientRequest, http::HeaderValue},
};

use super::{connect_error, timed_out};
use crate::engine::EngineError;

/// An open connection.
pub(super) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A connection and whether it came from the pool.
pub(super) struct Conn {
    pub(super) ws: Ws,
    pub(super) url: String,
    pub(super) reused: bool,
}

struct Idle {
    url: String,
    ws: Ws,
    since: Instant,
}

/// The idle connections of one client.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<Idle>>,
    tls: OnceLock<Result<Arc<rustls::ClientConfig>, String>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("idle", &self.lock().len())
            .finish()
    }
}

impl Pool {
    /// Longest a connection waits unused.
    pub const MAX_IDLE: Duration = Duration::from_secs(45);
    /// Most idle connections kept (over all URLs).
    pub const MAX_IDLE_CONNECTIONS: usize = 8;

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An idle connection to `url`, the most recently used first, if one is fresh enough.
    pub(super) fn take(&self, url: &str) -> Option<Conn> {
        let mut idle = self.lock();
        let now = Instant::now();
        idle.retain(|c| now.duration_since(c.since) < Self::MAX_IDLE);
        let pos = idle.iter().rposition(|c| c.url == url)?;
        let c = idle.remove(pos);
        Some(Conn {
            ws: c.ws,
            url: c.url,
            reused: true,
        })
    }

    /// Keep `conn` for the next task.
    pub(super) fn put(&self, conn: Conn) {
        let mut idle = self.lock();
        if idle.len() >= Self::MAX_IDLE_CONNECTIONS {
            idle.remove(0);
        }
        idle.push(Idle {
            url: conn.url,
            ws: conn.ws,
            since: Instant::now(),
        });
    }

    /// An idle connection to `url`, else a new one.
    pub(super) async fn get(
        &self,
        url: &str,
        headers: &Headers,
        timeout: Duration,
    ) -> Result<Conn, EngineError> {
        if let Some(c) = self.take(url) {
            return Ok(c);
        }
        self.connect(url, headers, timeout).await
    }

    /// A new connection to `url` within `timeout` (TCP, TLS and the WebSocket handshake,
    /// where the key is checked).
    pub(super) async fn connect(
        &self,
        url: &str,
        headers: &Headers,
        timeout: Duration,
    ) -> Result<Conn, EngineError> {
        let mut request = url
            .into_client_request()
            .map_err(|e| EngineError::Transport(Box::new(e)))?;
        let h = request.headers_mut();
        h.insert("Authorization", headers.authorization.clone());
        h.insert(
            "User-Agent",
            HeaderValue::from_static(concat!("herald/", env!("CARGO_PKG_VERSION"))),
        );
        if let Some(ws) = &headers.workspace {
            h.insert("X-DashScope-WorkSpace", ws.clone());
        }
        let connector = if url.starts_with("wss://") {
            let tls = self.tls.get_or_init(tls_config).clone().map_err(|e| {
                EngineError::Transport(Box::new(std::io::Error::other(format!(
                    "no TLS configuration for the WebSocket transport: {e}"
                ))))
            })?;
            Some(Connector::Rustls(tls))
        } else {
            Some(Connector::Plain)
        };
        let connecting =
            tokio_tungstenite::connect_async_tls_with_config(request, None, true, connector);
        let (ws, _response) = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| timed_out("no WebSocket handshake", timeout))?
            .map_err(connect_error)?;
        crate::metrics::metrics()
            .upstream_requests
            .get_or_create(&crate::metrics::UpstreamLabels {
                family: "dashscope-websocket".to_owned(),
                outcome: "connected".to_owned(),
            })
            .inc();
        Ok(Conn {
            ws,
            url: url.to_owned(),
            reused: false,
        })
    }

    /// Open a connection to `url` in the background and keep it (realtime sessions: the next
    /// session finds it open).
    pub(super) fn preopen(self: &Arc<Self>, url: String, headers: Headers, timeout: Duration) {
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            if let Ok(conn) = pool.connect(&url, &headers, timeout).await {
                pool.put(conn);
            }
        });
    }
}

/// The handshake headers (the key already formatted; `HeaderValue` marked sensitive so it is
/// never printed).
#[derive(Clone)]
pub(super) struct Headers {
    pub(super) authorization: HeaderValue,
    pub(super) workspace: Option<HeaderValue>,
}

impl Headers {
    pub(super) fn new(
        key: &secrecy::SecretString,
        workspace: Option<&str>,
    ) -> Result<Self, EngineError> {
        use secrecy::ExposeSecret as _;
        let mut authorization = HeaderValue::try_from(format!("Bearer {}", key.expose_secret()))
            .map_err(|_| {
                EngineError::Protocol("the API key is not a valid header value".to_owned())
            })?;
        authorization.set_sensitive(true);
        let workspace = match workspace {
            Some(w) => Some(HeaderValue::try_from(w).map_err(|_| {
                EngineError::Protocol(
                    "dashscope.workspace_id is not a valid header value".to_owned(),
                )
            })?),
            None => None,
        };
        Ok(Self {
            authorization,
            workspace,
        })
    }
}

/// rustls with the platform's certificate verifier (the roots reqwest uses), aws-lc-rs.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_platform_verifier::BuilderVerifierExt as _;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_platform_verifier()
        .map_err(|e| e.to_string())?
        .with_no_client_auth();
    Ok(Arc::new(config))
}
