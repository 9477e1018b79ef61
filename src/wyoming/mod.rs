//! The Wyoming door (Home Assistant): the TTS side of the Wyoming protocol on TCP and unix
//! sockets.
//!
//! - `describe` → `info`: one `tts` program, herald, listing its voices ([`voices`]), with
//!   `supports_synthesize_streaming`.
//! - `synthesize` → `audio-start`, `audio-chunk`…, `audio-stop` (16-bit PCM at
//!   `wyoming.sample_rate`/`channels`, default the voice's native rate, mono).
//! - `synthesize-start`, `synthesize-chunk`…, `synthesize-stop` → one `audio-start`, the audio
//!   of each sentence as soon as the sentence is complete ([`sentences`]), one `audio-stop`,
//!   then `synthesize-stopped`. The `synthesize` a client sends inside a streaming session for
//!   older servers is ignored, as the protocol says.
//! - A domain error becomes an `error` event (`text`, and `code`: the kind in snake case); the
//!   connection stays open. A streaming session that failed ignores the rest of its text and
//!   still ends with `synthesize-stopped`.
//!
//! A thin adapter like the gRPC door: each request goes to the same [`Core::synthesize`], with
//! the caller's address (`ip:…`) or unix user (`uid:…`) as the peer for herald's limits. Each
//! connection reads events on its own task into a bounded channel, and writes audio as the job
//! yields it: a slow client slows its job (back-pressure), and a client that leaves stops it.
//! Wyoming has no authentication: non-loopback TCP needs `wyoming.allow_remote` (config).
//! This module must not hold engine or pipeline logic, nor gRPC types.

mod sentences;
mod session;
mod voices;
pub mod wire;

use std::{future::Future, path::PathBuf, sync::Arc};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

pub use self::sentences::Sentences;
use crate::{
    config::{ConnectionLimits, ListenAddr, WyomingSettings},
    service::{
        self, BoundListener, ListenerKind, ServeError,
        conn::{Acceptor, Listen},
    },
    synthesis::Core,
};

/// The Wyoming door's bound listeners.
#[derive(Debug)]
pub struct Listeners(Vec<BoundListener>);

impl Listeners {
    /// The addresses bound (real ports for port 0).
    pub fn addrs(&self) -> Vec<ListenAddr> {
        self.0.iter().map(|l| l.addr().clone()).collect()
    }

    /// The listeners.
    pub fn bound(&self) -> &[BoundListener] {
        &self.0
    }
}

/// Bind `settings.listen`; unix sockets get the gRPC sockets' `mode` and `group`.
pub async fn bind(
    settings: &WyomingSettings,
    mode: u32,
    group: Option<u32>,
) -> Result<Listeners, ServeError> {
    Ok(Listeners(
        service::bind_with(&settings.listen, mode, group).await?,
    ))
}

/// Serve the Wyoming door over `core` on `listeners`, each within `limits`, until `shutdown`
/// resolves; then connections are closed, their jobs dropped, and unix socket files removed.
pub async fn serve(
    core: Arc<Core>,
    settings: WyomingSettings,
    listeners: Listeners,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let stop = CancellationToken::new();
    let door = Arc::new(session::Door::new(core, settings));
    let mut tasks = JoinSet::new();
    let mut sockets: Vec<PathBuf> = Vec::new();
    for listener in listeners.0 {
        let addr = listener.addr().clone();
        tracing::info!(%addr, "wyoming door listening");
        match listener.into_kind().0 {
            ListenerKind::Tcp(l) => {
                let acceptor = Acceptor::new(l, addr.to_string(), limits);
                tasks.spawn(accept_loop(acceptor, Arc::clone(&door), stop.clone()));
            }
            ListenerKind::Unix(l) => {
                let acceptor = Acceptor::new(l, addr.to_string(), limits);
                if let ListenAddr::Unix(p) = addr {
                    sockets.push(p);
                }
                tasks.spawn(accept_loop(acceptor, Arc::clone(&door), stop.clone()));
            }
        }
    }
    shutdown.await;
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    for path in sockets {
        let _ = std::fs::remove_file(path);
    }
}

/// Serve `listener`'s connections within `limits` (the shared [`Acceptor`]: a cap, timeouts,
/// back-off on accept errors) until `stop`.
async fn accept_loop<L: Listen>(
    mut acceptor: Acceptor<L>,
    door: Arc<session::Door>,
    stop: CancellationToken,
) {
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = acceptor.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        connections.spawn(run(stream, peer, Arc::clone(&door), stop.clone()));
    }
    connections.shutdown().await;
}

async fn run<S>(stream: S, peer: String, door: Arc<session::Door>, stop: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    tracing::debug!(%peer, "wyoming: connection");
    if let Err(error) = session::Session::new(door, peer.clone())
        .run(stream, stop)
        .await
    {
        tracing::debug!(%peer, error = %crate::error::chain(&error), "wyoming: connection ended");
    }
}
