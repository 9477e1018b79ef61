//! The gRPC door: herald.v1.Speech, herald.v1.Cache, grpc.health.v1 and server reflection, on
//! unix sockets and/or TCP.
//!
//! [`bind`] opens the listeners (`listen`); [`Server::serve`] routes every listener to the
//! services, behind the access policy of [`Access`] (`auth`), until the shutdown future resolves, then
//! stops accepting, cancels every in-flight job, and waits for connections to close within the
//! grace period. The handlers are in [`speech`] and [`cache`], the mapping of domain errors to
//! gRPC statuses in [`status`].
//!
//! This module owns no audio and no engine logic, and builds nothing it serves: engines, the
//! cache, playback and custom voices are composed by [`crate::daemon`], which sits above it.

mod auth;
mod authority;
pub mod cache;
pub mod conn;
mod deadline;
mod health;
mod listen;
mod oversize;
mod speak;
pub mod speech;
pub mod status;
mod synthesize;
mod voices;

use std::{future::Future, path::PathBuf, time::Duration};

use tokio::task::JoinSet;
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server as Transport;

pub use self::{
    auth::{Access, Refused},
    listen::{Activation, BoundListener, ListenerKind, SocketFiles, bind, bind_with},
    speech::SpeechService,
};
use crate::{
    config::{ConnectionLimits, DEFAULT_MAX_MESSAGE_BYTES, ListenAddr},
    pb::{self, cache_server::CacheServer, speech_server::SpeechServer},
};

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
        source: std::io::Error,
    },
    /// The access policy does not allow serving a listener.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// Reflection could not be built from the descriptor set (a build problem).
    #[error("reflection service setup failed")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// A server task failed.
    #[error("gRPC server failed")]
    Transport(#[from] tonic::transport::Error),
    /// A server task panicked or was cancelled.
    #[error("server task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// The gRPC server of one daemon: the Speech and Cache services, the access policy of its
/// listeners, and the root cancellation token of all jobs.
pub struct Server {
    speech: SpeechService,
    cache: cache::CacheService,
    access: Access,
    max_message_bytes: usize,
    connections: ConnectionLimits,
    jobs: CancellationToken,
    grace: Duration,
}

impl Server {
    /// A server over `speech`, with no token, no TLS and 16 MiB messages. Shutdown cancels
    /// `jobs` and waits up to `grace` for connections to close.
    pub fn new(speech: SpeechService, jobs: CancellationToken, grace: Duration) -> Self {
        Self {
            cache: cache::CacheService::new(speech.clone()),
            speech,
            access: Access::default(),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            connections: ConnectionLimits::default(),
            jobs,
            grace,
        }
    }

    /// The Speech service (the fuzz targets reach request validation through it).
    pub(crate) fn speech(&self) -> &SpeechService {
        &self.speech
    }

    /// The largest request message accepted (default 16 MiB).
    pub fn with_max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// The connection limits of every listener (cap, timeouts, HTTP/2 streams, health
    /// watches); see [`conn`].
    pub fn with_connections(mut self, limits: ConnectionLimits) -> Self {
        self.connections = limits;
        self
    }

    /// Apply `access` (tokens and TLS on TCP listeners).
    pub fn with_access(mut self, access: Access) -> Self {
        self.access = access;
        self
    }

    /// Refuse `listeners` this server would not serve, before any is served (and before the
    /// daemon reports ready): a TCP listener the access policy does not allow (socket
    /// activation can pass any socket), or a TLS certificate and key rustls does not take.
    /// [`Self::serve`] checks the same first.
    pub fn check(&self, listeners: &[BoundListener]) -> Result<(), ServeError> {
        let mut tcp = false;
        for listener in listeners {
            if let ListenerKind::Tcp(_) = listener.kind
                && let ListenAddr::Tcp(addr) = &listener.addr
            {
                self.access.check(addr)?;
                tcp = true;
            }
        }
        if tcp {
            self.access.check_tls()?;
        }
        Ok(())
    }

    /// Serve on `listeners` until `shutdown` resolves (or a listener fails). Then: report
    /// NOT_SERVING, stop accepting, cancel every job (their clients get UNAVAILABLE), and wait
    /// up to the grace period for connections to close. Unix socket files are removed.
    pub async fn serve(
        self,
        listeners: Vec<BoundListener>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let reporter = tonic_health::server::HealthReporter::new();
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
        let health = health::BoundedHealth::server(
            reporter.clone(),
            self.connections.max_health_watches,
            stop_accepting.clone(),
        );
        let limits = self.connections;
        let mut servers = JoinSet::new();
        let mut socket_files: Vec<PathBuf> = Vec::new();
        self.check(&listeners)?;
        for listener in listeners {
            let tcp = matches!(listener.kind, ListenerKind::Tcp(_));
            let auth = self.access.interceptor(tcp);
            // A ping at least every half idle timeout: an open gRPC connection (a Speak stream
            // waiting in its queue) is never closed as idle.
            let mut builder = Transport::builder()
                .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL.min(limits.idle_timeout / 2)))
                .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
                .max_concurrent_streams(Some(limits.max_concurrent_streams));
            if tcp {
                builder = self.access.with_tls(builder, limits.handshake_timeout)?;
            }
            let router = builder
                .layer(oversize::layer())
                .add_service(health.clone())
                .add_service(InterceptedService::new(reflection_v1.clone(), auth.clone()))
                .add_service(InterceptedService::new(
                    reflection_v1alpha.clone(),
                    auth.clone(),
                ))
                .add_service(InterceptedService::new(
                    SpeechServer::new(self.speech.clone())
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
            let name = listener.addr.to_string();
            match listener.kind {
                ListenerKind::Tcp(l) => {
                    let incoming = conn::Acceptor::new(l, name, limits)
                        .into_stream()
                        .map(|accepted| accepted.map(|(conn, _peer)| conn));
                    servers.spawn(router.serve_with_incoming_shutdown(incoming, signal));
                }
                ListenerKind::Unix(l) => {
                    if let ListenAddr::Unix(path) = &listener.addr
                        && !listener.activated
                    {
                        socket_files.push(path.clone());
                    }
                    // Unix clients of gRPC core, grpc-java and grpcurl name the socket path
                    // as :authority, which h2 refuses (see `authority`).
                    let incoming =
                        conn::Acceptor::new(l, name, limits)
                            .into_stream()
                            .map(|accepted| {
                                accepted.map(|(conn, _peer)| authority::AuthorityFix::new(conn))
                            });
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
                    Err(e) => Some(ServeError::Task(e)),
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
