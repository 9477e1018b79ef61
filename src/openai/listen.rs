//! The HTTP door's sockets as axum listeners: TCP (plain or TLS) and unix, each connection
//! labelled with its [`Peer`] (the caller's name for the per-peer limit, and whether it came
//! over TCP, where the bearer token is required).
//!
//! Accepting goes through the shared [`Acceptor`] (the connection cap, the handshake and idle
//! timeouts, the back-off on accept errors). TLS handshakes run in their own tasks, bounded in
//! time, so a slow client never holds up the accept loop. This module must not route or answer
//! requests.

use std::{io, sync::Arc, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use tokio::{
    net::{TcpListener, TcpStream, UnixListener, UnixStream},
    task::JoinSet,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use crate::service::conn::{Acceptor, Guarded};

/// Who is calling: the per-peer admission key (`ip:…` or `uid:…`, the gRPC door's names) and
/// whether the connection is TCP.
#[derive(Clone, Debug)]
pub struct Peer {
    /// The admission key.
    pub name: String,
    /// A TCP connection (the bearer token applies).
    pub tcp: bool,
}

/// Plain TCP.
pub struct Tcp(pub Acceptor<TcpListener>);

impl axum::serve::Listener for Tcp {
    type Io = Guarded<TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, name) = self.0.accept().await;
        (stream, Peer { name, tcp: true })
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.listener().local_addr().map(|a| Peer {
            name: a.to_string(),
            tcp: true,
        })
    }
}

/// TCP with TLS.
pub struct Tls {
    listener: Acceptor<TcpListener>,
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    handshakes: JoinSet<Option<(TlsStream<Guarded<TcpStream>>, Peer)>>,
}

impl Tls {
    /// `listener`, its connections accepted by `acceptor`, each handshake given
    /// `handshake_timeout`.
    pub fn new(
        listener: Acceptor<TcpListener>,
        acceptor: TlsAcceptor,
        handshake_timeout: Duration,
    ) -> Self {
        Self {
            listener,
            acceptor,
            handshake_timeout,
            handshakes: JoinSet::new(),
        }
    }

    /// The acceptor of the certificate chain and key of gRPC's TCP listeners (HTTP/1.1 by
    /// ALPN).
    pub fn acceptor(cert: &[u8], key: &SecretString) -> Result<TlsAcceptor, TlsError> {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(key.expose_secret().as_bytes())
            .map_err(|e| TlsError(e.to_string()))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| TlsError(e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// rustls does not take the certificate or key.
#[derive(Debug, thiserror::Error)]
#[error("server.tls_cert, server.tls_key: not usable for the HTTP listener: {0}")]
pub struct TlsError(String);

impl axum::serve::Listener for Tls {
    type Io = TlsStream<Guarded<TcpStream>>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                (stream, name) = self.listener.accept() => {
                    let peer = Peer { name, tcp: true };
                    let acceptor = self.acceptor.clone();
                    let timeout = self.handshake_timeout;
                    self.handshakes.spawn(async move {
                        match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => Some((tls, peer)),
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, peer = %peer.name, "http: TLS handshake failed");
                                None
                            }
                            Err(_) => None,
                        }
                    });
                }
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    if let Ok(Some(accepted)) = done {
                        return accepted;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.listener().local_addr().map(|a| Peer {
            name: a.to_string(),
            tcp: true,
        })
    }
}

/// A unix socket; the peer is the caller's uid.
pub struct Unix(pub Acceptor<UnixListener>);

impl axum::serve::Listener for Unix {
    type Io = Guarded<UnixStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, name) = self.0.accept().await;
        (stream, Peer { name, tcp: false })
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(Peer {
            name: "unix".to_owned(),
            tcp: false,
        })
    }
}

macro_rules! peer_of_connection {
    ($($listener:ty),*) => {$(
        impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, $listener>>
            for Peer
        {
            fn connect_info(stream: axum::serve::IncomingStream<'_, $listener>) -> Self {
                stream.remote_addr().clone()
            }
        }
    )*};
}

peer_of_connection!(Tcp, Tls, Unix);
