//! The gRPC server: herald.v1.Speech, grpc.health.v1 and server reflection, on unix sockets
//! and/or TCP.
//!
//! [`bind`] opens the listeners (so callers, and tests, learn the real addresses before serving);
//! [`Daemon::serve`] runs them until the shutdown future resolves, then stops accepting, cancels
//! every in-flight job, and waits for connections to close within the grace period. Engines are
//! built by [`Daemon::from_config`]. This module owns no audio and no engine logic.

pub mod cache;
mod speak;
pub mod speech;
pub mod status;
mod voices;

use std::{
    future::Future,
    io,
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use secrecy::{ExposeSecret, SecretString};
use tokio::{net::TcpListener, net::UnixListener, task::JoinSet};
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Server, server::TcpIncoming};

use crate::{
    cache::Cache,
    config::{Config, ListenAddr, TcpAuth},
    engine::{
        EngineError, Engines, Synthesizer, dashscope,
        espeak::{self, Espeak, EspeakConfig},
    },
    pb::{self, cache_server::CacheServer, speech_server::SpeechServer},
    playback::{PipelineSource, Playback, PlaybackSettings, Registry},
    provider::FallbackStep,
    provider::Provider,
};
pub use speech::{Settings, SpeechService};

/// HTTP/2 keepalive ping interval towards clients.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a keepalive ping may go unanswered.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// A listener could not be opened.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// An engine could not be set up.
    #[error("engine setup failed")]
    Engine(#[from] EngineError),
    /// The configuration names something that does not exist (e.g. the default model).
    #[error("{0}")]
    Config(String),
    /// Reflection could not be built from the descriptor set (a build problem).
    #[error("reflection service setup failed")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// A server task failed.
    #[error("gRPC server failed")]
    Transport(#[from] tonic::transport::Error),
}

/// An open listener, ready to serve.
#[derive(Debug)]
pub struct BoundListener {
    addr: ListenAddr,
    kind: ListenerKind,
    /// Passed by systemd (socket activation): its socket file belongs to systemd and is left
    /// in place at shutdown.
    activated: bool,
}

#[derive(Debug)]
enum ListenerKind {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl BoundListener {
    /// The address actually bound (with the real port when port 0 was asked for).
    pub fn addr(&self) -> &ListenAddr {
        &self.addr
    }
}

/// Open every listener. Unix sockets get `socket_mode`; a stale socket file left by an earlier
/// run is replaced, but any other kind of file is not touched.
pub async fn bind(
    addrs: &[ListenAddr],
    socket_mode: u32,
) -> Result<Vec<BoundListener>, ServeError> {
    bind_with(addrs, socket_mode, None).await
}

/// [`bind`], with unix sockets given to group `socket_group` (a gid).
pub async fn bind_with(
    addrs: &[ListenAddr],
    socket_mode: u32,
    socket_group: Option<u32>,
) -> Result<Vec<BoundListener>, ServeError> {
    let mut out = Vec::with_capacity(addrs.len());
    for addr in addrs {
        let err = |source| ServeError::Bind {
            addr: addr.to_string(),
            source,
        };
        let bound = match addr {
            ListenAddr::Tcp(a) => {
                let l = TcpListener::bind(a).await.map_err(err)?;
                let real = l.local_addr().map_err(err)?;
                BoundListener {
                    addr: ListenAddr::Tcp(real),
                    kind: ListenerKind::Tcp(l),
                    activated: false,
                }
            }
            ListenAddr::Unix(path) => {
                let l = bind_unix(path, socket_mode, socket_group).map_err(err)?;
                BoundListener {
                    addr: addr.clone(),
                    kind: ListenerKind::Unix(l),
                    activated: false,
                }
            }
        };
        out.push(bound);
    }
    Ok(out)
}

/// The sockets systemd passed (`LISTEN_FDS`, `LISTEN_FDNAMES`). Take it with
/// [`Activation::from_env`] before the process starts threads: the environment variables are
/// cleared so that children do not inherit them.
pub struct Activation {
    fds: listenfd::ListenFd,
    names: Vec<String>,
}

impl std::fmt::Debug for Activation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Activation")
            .field("fds", &self.fds.len())
            .field("names", &self.names)
            .finish()
    }
}

impl Activation {
    /// The sockets of this process's socket activation, if any (none when `LISTEN_PID` names
    /// another process).
    pub fn from_env() -> Self {
        let names = std::env::var("LISTEN_FDNAMES")
            .map(|n| n.split(':').map(str::to_owned).collect())
            .unwrap_or_default();
        Self {
            fds: listenfd::ListenFd::from_env(),
            names,
        }
    }

    /// How many sockets were passed.
    pub fn len(&self) -> usize {
        self.fds.len()
    }

    /// No socket was passed.
    pub fn is_empty(&self) -> bool {
        self.fds.len() == 0
    }

    /// Every passed socket as a listener: TCP (IPv4/IPv6) or unix stream sockets, in order.
    pub fn listeners(mut self) -> Result<Vec<BoundListener>, ServeError> {
        let mut out = Vec::with_capacity(self.fds.len());
        for idx in 0..self.fds.len() {
            let name = self
                .names
                .get(idx)
                .cloned()
                .unwrap_or_else(|| format!("fd {}", idx + 3));
            let err = |source| ServeError::Bind {
                addr: format!("socket-activated {name}"),
                source,
            };
            if let Ok(Some(l)) = self.fds.take_tcp_listener(idx) {
                l.set_nonblocking(true).map_err(err)?;
                let l = TcpListener::from_std(l).map_err(err)?;
                let real = l.local_addr().map_err(err)?;
                out.push(BoundListener {
                    addr: ListenAddr::Tcp(real),
                    kind: ListenerKind::Tcp(l),
                    activated: true,
                });
                continue;
            }
            match self.fds.take_unix_listener(idx) {
                Ok(Some(l)) => {
                    l.set_nonblocking(true).map_err(err)?;
                    let path = l
                        .local_addr()
                        .ok()
                        .and_then(|a| a.as_pathname().map(Path::to_path_buf))
                        .unwrap_or_else(|| PathBuf::from(format!("@{name}")));
                    let l = UnixListener::from_std(l).map_err(err)?;
                    out.push(BoundListener {
                        addr: ListenAddr::Unix(path),
                        kind: ListenerKind::Unix(l),
                        activated: true,
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("not a TCP or unix stream socket: {e}"),
                    )));
                }
            }
        }
        Ok(out)
    }
}

fn bind_unix(path: &Path, mode: u32, group: Option<u32>) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            // A socket someone still answers on belongs to a running daemon: never steal it.
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use by another running process", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(_) => {}
    }
    // Bind under a temporary name, set the mode, then rename: the socket never appears at its
    // real path with the wrong permissions.
    let name = path
        .file_name()
        .map_or_else(Default::default, |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(&tmp, None, Some(gid)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot give the socket to group {gid}: {e}"),
            )
        })?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(listener)
}

/// Who may use which listener: TCP clients need the bearer token (when one is configured), unix
/// clients are guarded by the socket's mode and group. Health checks never need a token.
#[derive(Clone, Default)]
pub struct Access {
    token: Option<Arc<SecretString>>,
    /// No token is configured and TCP was not asked for: a TCP listener is refused.
    refuse_tcp: bool,
    /// No token, by `--insecure-no-auth`: TCP only on loopback.
    loopback_only: bool,
    tls: Option<(Vec<u8>, Arc<SecretString>)>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("refuse_tcp", &self.refuse_tcp)
            .field("loopback_only", &self.loopback_only)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Access {
    /// The policy of a validated configuration.
    pub fn from_config(config: &Config) -> Self {
        let tls = config
            .tls
            .as_ref()
            .map(|t| (t.cert_pem.clone(), Arc::new(t.key_pem.clone())));
        match &config.tcp_auth {
            TcpAuth::Token { token, .. } => Self {
                token: Some(Arc::new(token.clone())),
                tls,
                ..Self::default()
            },
            TcpAuth::InsecureLoopbackOnly => Self {
                loopback_only: true,
                tls,
                ..Self::default()
            },
            TcpAuth::Refuse => Self {
                refuse_tcp: true,
                tls,
                ..Self::default()
            },
        }
    }

    /// Refuse to serve a TCP listener the policy does not allow (socket activation can pass
    /// any socket).
    fn check(&self, addr: &std::net::SocketAddr) -> Result<(), ServeError> {
        if self.refuse_tcp {
            return Err(ServeError::Config(format!(
                "TCP listener {addr} requires a bearer token (server.auth_token_file, \
                 HERALD_AUTH_TOKEN or the systemd credential herald_auth_token)"
            )));
        }
        if self.loopback_only && !addr.ip().is_loopback() {
            return Err(ServeError::Config(format!(
                "TCP listener {addr} is not loopback: --insecure-no-auth applies to loopback \
                 only; configure a bearer token"
            )));
        }
        Ok(())
    }
}

/// Checks `authorization: Bearer <token>` in constant time (when a token is required).
#[derive(Clone)]
struct BearerAuth(Option<Arc<SecretString>>);

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        use subtle::ConstantTimeEq;
        let Some(token) = &self.0 else {
            return Ok(request);
        };
        let Some(value) = request.metadata().get("authorization") else {
            return Err(tonic::Status::unauthenticated(
                "authorization: missing; send \"authorization: Bearer <token>\" (server.auth_token)",
            ));
        };
        let presented = value
            .as_bytes()
            .strip_prefix(b"Bearer ")
            .or_else(|| value.as_bytes().strip_prefix(b"bearer "))
            .unwrap_or_default();
        if bool::from(presented.ct_eq(token.expose_secret().as_bytes())) {
            Ok(request)
        } else {
            Err(tonic::Status::unauthenticated(
                "authorization: the bearer token is not valid",
            ))
        }
    }
}

/// The default model when a DashScope key is configured and `synthesis.default_model` is not.
pub const DASHSCOPE_DEFAULT_MODEL: &str = "cosyvoice-v3-flash";

/// The daemon: engines, request settings, and the root cancellation token of all jobs.
pub struct Daemon {
    service: SpeechService,
    cache: cache::CacheService,
    access: Access,
    max_message_bytes: usize,
    jobs: CancellationToken,
    grace: Duration,
}

impl Daemon {
    /// Build the engines the configuration asks for and resolve the default model.
    pub async fn from_config(config: &Config) -> Result<Self, ServeError> {
        let mut engines: Vec<Arc<dyn Synthesizer>> = Vec::new();
        if let Some(e) = &config.espeak {
            let engine = Espeak::new(EspeakConfig {
                binary: e.binary.clone(),
                default_voice: e.default_voice.clone(),
                timeout: e.timeout,
            })
            .await?;
            engines.push(Arc::new(engine));
        }
        let mut upstream = None;
        if let Some(key) = &config.dashscope.api_key {
            let client = dashscope::Client::new(dashscope::Settings {
                api_key: key.clone(),
                base_url: config.dashscope.base_url.clone(),
                workspace_id: config.dashscope.workspace_id.clone(),
                tuning: config.dashscope.tuning.clone(),
            })?;
            engines.extend(client.engines());
            upstream = Some(client);
        }
        let voices_settings = config.voices.clone();
        let voices = match tokio::task::spawn_blocking(move || {
            crate::voices::Manager::open(voices_settings, upstream)
        })
        .await
        {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                return Err(ServeError::Config(format!(
                    "voices.directory: cannot read the voice registry: {e}"
                )));
            }
            Err(e) => return Err(ServeError::Config(format!("voices: {e}"))),
        };
        let engines = Engines::new(engines);
        let default_model = match &config.default_model {
            Some(m) => {
                if engines.for_model(m).is_none() {
                    return Err(ServeError::Config(format!(
                        "synthesis.default_model: {m:?} is not served by any configured engine"
                    )));
                }
                m.clone()
            }
            // A configured key means the cloud is wanted: its fast CosyVoice model is the
            // default. Without one, the offline engine.
            None if engines.for_model(DASHSCOPE_DEFAULT_MODEL).is_some() => {
                DASHSCOPE_DEFAULT_MODEL.to_owned()
            }
            None if engines.for_model(espeak::MODEL).is_some() => espeak::MODEL.to_owned(),
            None => {
                return Err(ServeError::Config(
                    "no engine is available: enable [espeak] or configure a DashScope key"
                        .to_owned(),
                ));
            }
        };
        if let (Some(voice), Some(engine)) =
            (&config.default_voice, engines.for_model(&default_model))
        {
            engine
                .check_voice(&default_model, voice)
                .map_err(|m| ServeError::Config(format!("synthesis.default_voice: {m}")))?;
        }
        let settings = Settings {
            default_model,
            default_voice: config.default_voice.clone(),
            max_text_chars: config.max_text_chars,
            max_concurrent: config.max_concurrent,
            max_concurrent_per_peer: config.max_concurrent_per_peer,
            max_deadline: config.max_deadline,
        };
        let mut fallback = Vec::new();
        for step in &config.fallback {
            match step {
                FallbackStep::Model { model, .. } if engines.for_model(model).is_none() => {
                    tracing::warn!(%model, "fallback.chain: no configured engine serves this model; step skipped");
                }
                step => fallback.push(step.clone()),
            }
        }
        let cache = match &config.cache {
            None => {
                let why = config.cache_off.as_deref().unwrap_or("disabled");
                tracing::warn!(%why, "running without the audio cache");
                None
            }
            Some(c) => {
                let c = c.clone();
                let dir = c.directory.clone();
                match tokio::task::spawn_blocking(move || Cache::open(c)).await {
                    Ok(Ok(cache)) => {
                        tracing::info!(directory = %dir.display(), "cache open");
                        Some(Arc::new(cache))
                    }
                    Ok(Err(e)) => {
                        // A kiosk keeps speaking without its cache rather than not at all.
                        tracing::error!(directory = %dir.display(), error = %e, "cannot open the cache; running without it");
                        None
                    }
                    Err(e) => return Err(ServeError::Config(format!("cache: {e}"))),
                }
            }
        };
        Ok(Self::with_parts(
            Arc::new(Provider::new(engines, cache, fallback)),
            settings,
            config.playback.clone(),
            config.shutdown_grace,
            Arc::new(voices),
        )
        .with_access(Access::from_config(config))
        .with_max_message_bytes(config.max_message_bytes))
    }

    /// A daemon over explicit engines and settings, with default playback settings, no cache
    /// and no fallback (tests, embedding).
    pub fn new(engines: Engines, settings: Settings, grace: Duration) -> Self {
        Self::with_parts(
            Arc::new(Provider::new(engines, None, Vec::new())),
            settings,
            PlaybackSettings::default(),
            grace,
            Arc::new(crate::voices::Manager::disabled()),
        )
    }

    /// A daemon over a provider (engines, cache, fallback), settings and playback settings.
    pub fn with_parts(
        provider: Arc<Provider>,
        settings: Settings,
        playback: PlaybackSettings,
        grace: Duration,
        voices: Arc<crate::voices::Manager>,
    ) -> Self {
        let jobs = CancellationToken::new();
        let playback = Arc::new(Playback::new(
            playback.clone(),
            Arc::new(Registry::new(playback)),
            Arc::new(PipelineSource::new(Arc::clone(&provider))),
            jobs.clone(),
        ));
        let service = SpeechService::new(provider, settings, playback, jobs.clone(), voices);
        Self {
            cache: cache::CacheService::new(service.clone()),
            service,
            access: Access::default(),
            max_message_bytes: 4 << 20,
            jobs,
            grace,
        }
    }

    /// The Speech service (the fuzz targets reach request validation through it).
    pub(crate) fn speech(&self) -> &SpeechService {
        &self.service
    }

    /// What refreshes the metrics that mirror state (cache size) before a scrape.
    pub fn metrics_refresh(&self) -> Arc<dyn Fn() + Send + Sync> {
        let cache = self.service.provider().cache().cloned();
        Arc::new(move || {
            if let Some(cache) = &cache {
                let stats = cache.stats();
                let m = crate::metrics::metrics();
                m.cache_bytes
                    .set(i64::try_from(stats.store.bytes).unwrap_or(i64::MAX));
                m.cache_entries
                    .set(i64::try_from(stats.store.entries).unwrap_or(i64::MAX));
            }
        })
    }

    /// The largest request message accepted (default 4 MiB).
    pub fn with_max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// Apply `access` (tokens and TLS on TCP listeners).
    pub fn with_access(mut self, access: Access) -> Self {
        self.access = access;
        self
    }

    /// Serve on `listeners` until `shutdown` resolves (or a listener fails). Then: report
    /// NOT_SERVING, stop accepting, cancel every job (their clients get UNAVAILABLE), and wait
    /// up to the grace period for connections to close. Unix socket files are removed.
    pub async fn serve(
        self,
        listeners: Vec<BoundListener>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter.set_serving::<SpeechServer<SpeechService>>().await;
        reporter
            .set_serving::<CacheServer<cache::CacheService>>()
            .await;
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;

        let stop_accepting = CancellationToken::new();
        let mut servers = JoinSet::new();
        let mut socket_files: Vec<PathBuf> = Vec::new();
        for listener in &listeners {
            if let ListenerKind::Tcp(_) = listener.kind
                && let ListenAddr::Tcp(addr) = &listener.addr
            {
                self.access.check(addr)?;
            }
        }
        for listener in listeners {
            let tcp = matches!(listener.kind, ListenerKind::Tcp(_));
            let auth = BearerAuth(self.access.token.clone().filter(|_| tcp));
            let mut builder = Server::builder()
                .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
                .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
            if tcp && let Some((cert, key)) = &self.access.tls {
                let identity = tonic::transport::Identity::from_pem(cert, key.expose_secret());
                builder = builder
                    .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?;
            }
            let router = builder
                .add_service(health.clone())
                .add_service(InterceptedService::new(reflection_v1.clone(), auth.clone()))
                .add_service(InterceptedService::new(
                    reflection_v1alpha.clone(),
                    auth.clone(),
                ))
                .add_service(InterceptedService::new(
                    SpeechServer::new(self.service.clone())
                        .max_decoding_message_size(self.max_message_bytes),
                    auth.clone(),
                ))
                .add_service(InterceptedService::new(
                    CacheServer::new(self.cache.clone())
                        .max_decoding_message_size(self.max_message_bytes),
                    auth,
                ));
            let signal = stop_accepting.clone().cancelled_owned();
            tracing::info!(
                addr = %listener.addr,
                tls = tcp && self.access.tls.is_some(),
                token = tcp && self.access.token.is_some(),
                "listening"
            );
            match listener.kind {
                ListenerKind::Tcp(l) => {
                    let incoming = TcpIncoming::from(l).with_nodelay(Some(true));
                    servers.spawn(router.serve_with_incoming_shutdown(incoming, signal));
                }
                ListenerKind::Unix(l) => {
                    if let ListenAddr::Unix(path) = &listener.addr
                        && !listener.activated
                    {
                        socket_files.push(path.clone());
                    }
                    let incoming = UnixListenerStream::new(l);
                    servers.spawn(router.serve_with_incoming_shutdown(incoming, signal));
                }
            }
        }

        let mut failure = None;
        tokio::select! {
            () = shutdown => tracing::info!("shutting down"),
            Some(result) = servers.join_next() => {
                tracing::error!("a listener stopped unexpectedly; shutting down");
                failure = match result {
                    Ok(Err(e)) => Some(ServeError::Transport(e)),
                    Ok(Ok(())) => None,
                    Err(e) => Some(ServeError::Config(format!("server task failed: {e}"))),
                };
            }
        }
        reporter
            .set_not_serving::<SpeechServer<SpeechService>>()
            .await;
        reporter
            .set_not_serving::<CacheServer<cache::CacheService>>()
            .await;
        stop_accepting.cancel();
        self.jobs.cancel();
        let drained = tokio::time::timeout(self.grace, async {
            while servers.join_next().await.is_some() {}
        })
        .await;
        match drained {
            Ok(()) => tracing::info!("shutdown complete"),
            Err(_) => {
                tracing::warn!(grace = ?self.grace, "connections still open after the grace period; closing them");
                servers.abort_all();
            }
        }
        for path in socket_files {
            let _ = std::fs::remove_file(path);
        }
        failure.map_or(Ok(()), Err)
    }
}
