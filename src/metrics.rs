//! Prometheus metrics (the `prometheus-client` crate's registry and text exposition), served
//! on an optional HTTP listener (`server.metrics_listen`, `--metrics-listen`) at `/metrics`.
//!
//! One registry per process ([`metrics`]): the daemon is one per machine, and the instruments
//! sit where the events happen (service, provider, DashScope engine, playback) without being
//! passed around. Gauges that mirror state (cache size) are refreshed at scrape time.
//! Labels never carry request text, voices of custom clients or secrets: only model, engine,
//! family, status code and device names.

use std::sync::{Arc, LazyLock};

use crate::error::ErrorKind;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

/// Labels of a finished `Synthesize` call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Requested model ("" when the request was refused before it named one).
    pub model: String,
    /// Engine that served it ("" when none did).
    pub engine: String,
    /// gRPC status code name ("OK", "INVALID_ARGUMENT", ...).
    pub code: String,
    /// The door the request came through: "grpc", "http" (OpenAI-compatible).
    pub door: String,
}

/// The `door` label of requests that came through gRPC.
pub const DOOR_GRPC: &str = "grpc";
/// The `door` label of requests that came through the OpenAI-compatible HTTP door.
pub const DOOR_HTTP: &str = "http";
/// The Wyoming door's label.
pub const DOOR_WYOMING: &str = "wyoming";

/// Labels of a time to first audio.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TtfaLabels {
    /// Engine that served it.
    pub engine: String,
    /// "true" for a cache hit.
    pub cache_hit: String,
}

/// Labels of an upstream (DashScope) HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    /// Engine family ("cosyvoice", "qwen-tts", "minimax").
    pub family: String,
    /// "ok", "http_`<status>`", "transport", "timeout", "protocol", "saturated".
    pub outcome: String,
}

/// Labels of an engine family.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyLabels {
    /// Engine family.
    pub family: String,
}

/// Labels of a playback device.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceLabels {
    /// Device name ("default", "alsa:…", "wav", "null").
    pub device: String,
}

/// Labels of the build.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Every instrument.
pub struct Metrics {
    registry: Registry,
    /// `Synthesize` calls by requested model, serving engine and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Time from a `Synthesize` request to its first audio chunk.
    pub time_to_first_audio: Histograms<TtfaLabels>,
    /// `Synthesize` streams running now.
    pub active_streams: Gauge,
    /// Upstream HTTP requests by family and outcome.
    pub upstream_requests: Family<UpstreamLabels, Counter>,
    /// Time from sending an upstream request to its response head.
    pub upstream_latency: Histograms<FamilyLabels>,
    /// Upstream retries.
    pub upstream_retries: Family<FamilyLabels, Counter>,
    /// Upstream answers that throttled (HTTP 429).
    pub upstream_throttled: Family<FamilyLabels, Counter>,
    /// Cache hits.
    pub cache_hits: Counter,
    /// Cache misses.
    pub cache_misses: Counter,
    /// Requests that joined a running upstream call.
    pub cache_shared: Counter,
    /// Bytes in the cache (refreshed at scrape).
    pub cache_bytes: Gauge,
    /// Entries in the cache (refreshed at scrape).
    pub cache_entries: Gauge,
    /// Announcements queued or playing, by device.
    pub queue_depth: Family<DeviceLabels, Gauge>,
    /// Playback underruns (silence because audio was late), by device.
    pub underruns: Family<DeviceLabels, Counter>,
    /// Tasks alive on the tokio runtime that serves the scrape (refreshed at scrape): a leak
    /// detector for soak and fault tests.
    pub runtime_tasks: Gauge,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "herald_synthesize_requests",
            "Synthesize calls (and OpenAI-compatible speech requests) by requested model, serving \
             engine, gRPC status code and door",
            requests.clone(),
        );
        let time_to_first_audio: Histograms<TtfaLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "herald_time_to_first_audio_seconds",
            "Time from a Synthesize request to its first audio chunk",
            time_to_first_audio.clone(),
        );
        let active_streams = Gauge::default();
        registry.register(
            "herald_active_streams",
            "Synthesize streams running now",
            active_streams.clone(),
        );
        let upstream_requests = Family::<UpstreamLabels, Counter>::default();
        registry.register(
            "herald_upstream_requests",
            "Upstream (DashScope) HTTP requests by family and outcome",
            upstream_requests.clone(),
        );
        let upstream_latency: Histograms<FamilyLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "herald_upstream_latency_seconds",
            "Time from sending an upstream request to its response head",
            upstream_latency.clone(),
        );
        let upstream_retries = Family::<FamilyLabels, Counter>::default();
        registry.register(
            "herald_upstream_retries",
            "Upstream requests retried before any audio",
            upstream_retries.clone(),
        );
        let upstream_throttled = Family::<FamilyLabels, Counter>::default();
        registry.register(
            "herald_upstream_throttled",
            "Upstream answers that throttled (HTTP 429)",
            upstream_throttled.clone(),
        );
        let cache_hits = Counter::default();
        registry.register(
            "herald_cache_hits",
            "Requests served from the cache",
            cache_hits.clone(),
        );
        let cache_misses = Counter::default();
        registry.register(
            "herald_cache_misses",
            "Requests that looked in the cache and did not find their phrase",
            cache_misses.clone(),
        );
        let cache_shared = Counter::default();
        registry.register(
            "herald_cache_shared_calls",
            "Requests that joined an upstream call already running for the same phrase",
            cache_shared.clone(),
        );
        let cache_bytes = Gauge::default();
        registry.register(
            "herald_cache_bytes",
            "Bytes stored in the cache",
            cache_bytes.clone(),
        );
        let cache_entries = Gauge::default();
        registry.register(
            "herald_cache_entries",
            "Entries stored in the cache",
            cache_entries.clone(),
        );
        let queue_depth = Family::<DeviceLabels, Gauge>::default();
        registry.register(
            "herald_playback_queue_depth",
            "Announcements queued or playing, by device",
            queue_depth.clone(),
        );
        let underruns = Family::<DeviceLabels, Counter>::default();
        registry.register(
            "herald_playback_underruns",
            "Playback blocks padded with silence because audio was late, by device",
            underruns.clone(),
        );
        let runtime_tasks = Gauge::default();
        registry.register(
            "herald_runtime_tasks",
            "Tasks alive on the daemon's tokio runtime (refreshed at scrape)",
            runtime_tasks.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        registry.register("herald_build_info", "herald's version", build);
        Self {
            registry,
            requests,
            time_to_first_audio,
            active_streams,
            upstream_requests,
            upstream_latency,
            upstream_retries,
            upstream_throttled,
            cache_hits,
            cache_misses,
            cache_shared,
            cache_bytes,
            cache_entries,
            queue_depth,
            underruns,
            runtime_tasks,
        }
    }

    /// Count a finished (or refused) `Synthesize` call.
    pub fn request(&self, model: &str, engine: &str, code: tonic::Code) {
        self.requests
            .get_or_create(&RequestLabels {
                model: model.to_owned(),
                engine: engine.to_owned(),
                code: code_name(code).to_owned(),
                door: DOOR_GRPC.to_owned(),
            })
            .inc();
    }

    /// Count one finished (or refused) request by the domain outcome: the same series as
    /// [`Metrics::request`], labelled with the gRPC code name of the kind.
    pub fn outcome(&self, model: &str, engine: &str, outcome: Result<(), ErrorKind>) {
        self.door_outcome(DOOR_GRPC, model, engine, outcome);
    }

    /// [`Metrics::outcome`] of a request that came through `door`.
    pub fn door_outcome(
        &self,
        door: &str,
        model: &str,
        engine: &str,
        outcome: Result<(), ErrorKind>,
    ) {
        let code = match outcome {
            Ok(()) => "OK",
            Err(kind) => kind_name(kind),
        };
        self.requests
            .get_or_create(&RequestLabels {
                model: model.to_owned(),
                engine: engine.to_owned(),
                code: code.to_owned(),
                door: door.to_owned(),
            })
            .inc();
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let tasks = handle.metrics().num_alive_tasks();
            self.runtime_tasks
                .set(i64::try_from(tasks).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// The canonical upper-case name of a gRPC status code.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The label of a domain error kind: the name of the gRPC code it maps to.
pub fn kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidArgument => "INVALID_ARGUMENT",
        ErrorKind::NotFound => "NOT_FOUND",
        ErrorKind::FailedPrecondition => "FAILED_PRECONDITION",
        ErrorKind::ResourceExhausted => "RESOURCE_EXHAUSTED",
        ErrorKind::Unavailable => "UNAVAILABLE",
        ErrorKind::Internal => "INTERNAL",
        ErrorKind::DeadlineExceeded => "DEADLINE_EXCEEDED",
        ErrorKind::Cancelled => "CANCELLED",
        ErrorKind::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Counts one running stream for as long as it lives.
pub struct ActiveStream(());

impl ActiveStream {
    /// One more stream.
    pub fn start() -> Self {
        metrics().active_streams.inc();
        Self(())
    }
}

impl Drop for ActiveStream {
    fn drop(&mut self) {
        metrics().active_streams.dec();
    }
}

/// Serve `/metrics` on `listener` until `shutdown` resolves; `refresh` runs before each scrape
/// (to update gauges that mirror state).
pub async fn serve(
    listener: tokio::net::TcpListener,
    limits: crate::config::ConnectionLimits,
    refresh: Arc<dyn Fn() + Send + Sync>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::{http::header, response::IntoResponse, routing::get};
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let refresh = Arc::clone(&refresh);
            async move {
                refresh();
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics().encode(),
                )
                    .into_response()
            }
        }),
    );
    let name = listener
        .local_addr()
        .map_or_else(|_| "metrics".to_owned(), |a| a.to_string());
    let listener = Limited(crate::service::conn::Acceptor::new(listener, name, limits));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// The metrics listener under the connection limits every door has (`service::conn`): the
/// endpoint needs no token, so silent connections must not pile up there either.
struct Limited(crate::service::conn::Acceptor<tokio::net::TcpListener>);

impl axum::serve::Listener for Limited {
    type Io = crate::service::conn::Guarded<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, _) = self.0.accept().await;
        let addr = stream
            .get_ref()
            .peer_addr()
            .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
        (stream, addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.listener().local_addr()
    }
}
