//! The shared DashScope client: its settings ([`Settings`], [`Tuning`]), one pooled HTTP
//! client, the API key and the cap on concurrent upstream requests.
//!
//! It owns the connection pool and the upstream request slots (`max_concurrent_requests`): a
//! synthesis is admitted by taking one ([`Client::admit`]) and holds it to its end; its
//! look-ahead pieces take spare ones. It must not know what a request means: building
//! bodies and reading answers belongs to the engine (`family`, `piece`) and to `custom`.

use std::{sync::Arc, time::Duration};

use secrecy::SecretString;

use super::{DashScopeEngine, Family};

/// Idle upstream connections kept per host (beyond those in use).
const IDLE_CONNECTIONS: usize = 64;
use crate::engine::{EngineError, Synthesizer};
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
    /// Most upstream HTTP requests at once, over all families. A synthesis holds one of these
    /// slots from its admission to its end (its pieces take turns on it, so an admitted text is
    /// never starved by newcomers); its look-ahead pieces use spare slots only.
    pub max_concurrent_requests: usize,
    /// Longest wait of a new synthesis for its slot (never more than half the time left before
    /// its deadline); past it, RESOURCE_EXHAUSTED before any audio.
    pub queue_timeout: Duration,
    /// HTTP/SSE or WebSocket (`dashscope.transport`, the rule in [`super::ws::protocol_for`]).
    pub transport: super::ws::Transport,
    /// The run-task WebSocket URL (`…/api-ws/v1/inference`); `None`: derived from the HTTP
    /// base URL. The realtime URL replaces `/inference` by `/realtime`.
    pub websocket_base_url: Option<String>,
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
            max_concurrent_requests: 32,
            queue_timeout: Duration::from_secs(10),
            transport: super::ws::Transport::Auto,
            websocket_base_url: None,
        }
    }
}

/// Connection settings.
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
    pub(super) http: reqwest::Client,
    pub(super) settings: Settings,
    /// One permit per upstream HTTP request in flight (`Tuning::max_concurrent_requests`).
    pub(super) slots: Arc<tokio::sync::Semaphore>,
    /// Idle WebSocket connections (the WebSocket transport, `ws`).
    pub(super) ws_pool: Arc<super::ws::Pool>,
}

/// A client whose base URL nothing listens on (nothing may be sent), for unit tests.
#[cfg(test)]
pub(crate) fn unreachable_client() -> Arc<Client> {
    Client::new(Settings {
        api_key: SecretString::from("k"),
        api_key_source: "test".to_owned(),
        base_url: "http://127.0.0.1:9".to_owned(),
        workspace_id: None,
        tuning: Tuning::default(),
    })
    .expect("a client of the default tuning")
}

impl Client {
    /// A client (one connection pool for all families).
    pub fn new(settings: Settings) -> Result<Arc<Self>, EngineError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(settings.tuning.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            // After a burst the pool would keep every connection of its peak (each with its
            // read buffer, grown under load) for the idle timeout; steady traffic reuses
            // connections at once and never has many idle (benches/notes.md, "Memory").
            .pool_max_idle_per_host(IDLE_CONNECTIONS)
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
            ws_pool: Arc::default(),
        }))
    }

    /// The three engines over this client.
    pub fn engines(self: &Arc<Self>) -> Vec<Arc<dyn Synthesizer>> {
        Family::ALL
            .into_iter()
            .map(|family| {
                Arc::new(DashScopeEngine::new(family, Arc::clone(self))) as Arc<dyn Synthesizer>
            })
            .collect()
    }

    /// Admit a new synthesis: the request slot it holds until it ends, or
    /// [`EngineError::Saturated`] when none frees up within `queue_timeout` (or half the time
    /// left before `deadline`).
    pub(super) async fn admit(
        &self,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, EngineError> {
        let tuning = self.tuning();
        let now = tokio::time::Instant::now();
        let wait = match deadline {
            Some(d) => tuning
                .queue_timeout
                .min(d.saturating_duration_since(now) / 2),
            None => tuning.queue_timeout,
        };
        match tokio::time::timeout(wait, Arc::clone(&self.slots).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(EngineError::Saturated {
                limit: tuning.max_concurrent_requests,
                waited: wait,
            }),
        }
    }

    /// Timeouts, retries and limits.
    pub(super) fn tuning(&self) -> &Tuning {
        &self.settings.tuning
    }

    /// The run-task WebSocket URL (configured, or derived from the HTTP base URL).
    pub(super) fn websocket_base(&self) -> String {
        match &self.settings.tuning.websocket_base_url {
            Some(url) => url.clone(),
            None => super::ws::derived_websocket_base(&self.settings.base_url),
        }
    }

    /// The WebSocket pool.
    pub(super) fn ws_pool(&self) -> &Arc<super::ws::Pool> {
        &self.ws_pool
    }

    /// The WebSocket protocol serving `model` of `family`, or `None` for HTTP/SSE.
    pub(super) fn websocket_protocol(
        &self,
        family: Family,
        model: &str,
    ) -> Option<super::ws::Protocol> {
        super::ws::protocol_for(
            self.settings.tuning.transport,
            &self.settings.base_url,
            &self.websocket_base(),
            family,
            model,
        )
    }

    /// The WebSocket protocol that takes a streamed text of `model` as it is written, or
    /// `None` ([`super::ws::protocol_for_streamed_text`]).
    pub(super) fn streamed_text_protocol(
        &self,
        family: Family,
        model: &str,
    ) -> Option<super::ws::Protocol> {
        super::ws::protocol_for_streamed_text(self.settings.tuning.transport, family, model)
    }

    /// The longest piece `family` takes, in billed units.
    pub(super) fn piece_units(&self, family: Family) -> usize {
        let t = &self.settings.tuning;
        match family {
            Family::CosyVoice => t.cosyvoice_piece_units,
            Family::Qwen => t.qwen_piece_units,
            Family::MiniMax => t.minimax_piece_units,
        }
    }

    /// A POST to `path` under the base URL, with the key and the workspace header.
    pub(super) fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.authorized(self.http.post(format!("{}{path}", self.settings.base_url)))
    }

    /// A GET of `path` under the base URL, with the key and the workspace header.
    pub(super) fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.authorized(self.http.get(format!("{}{path}", self.settings.base_url)))
    }

    /// `request` with the bearer key and the workspace header (when one is configured).
    pub(super) fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        use secrecy::ExposeSecret as _;
        let request = request.bearer_auth(self.settings.api_key.expose_secret());
        match &self.settings.workspace_id {
            Some(ws) => request.header("X-DashScope-WorkSpace", ws),
            None => request,
        }
    }
}
