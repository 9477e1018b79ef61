//! Who may use which listener: the bearer token TCP clients must send, TLS on TCP listeners,
//! and which TCP listeners may be served at all.
//!
//! [`Access`] is built from a validated configuration; [`BearerAuth`] checks the token in
//! constant time on every call of a TCP listener. Unix clients are guarded by the socket's mode
//! and group, and health checks never need a token. This module must not log or `Debug`-print
//! a token or a key, and must not open listeners ([`super::listen`] does).

use std::{net::SocketAddr, sync::Arc};

use secrecy::{ExposeSecret, SecretString};

use crate::config::{CREDENTIAL_AUTH_TOKEN, Config, TcpAuth};

/// Why a TCP listener may not be served (socket activation can pass any socket).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    /// No token is configured, so no TCP listener is served.
    #[error(
        "TCP listener {addr} requires a bearer token (server.auth_token_file, \
         HERALD_AUTH_TOKEN or the systemd credential {CREDENTIAL_AUTH_TOKEN})"
    )]
    NoToken {
        /// The listener.
        addr: SocketAddr,
    },
    /// rustls does not take the configured certificate and key (`Transport::tls_config`
    /// parses them; serving would fail on the first TCP listener).
    #[error("server.tls_cert, server.tls_key: the TLS certificate and key are not usable")]
    Tls(#[source] tonic::transport::Error),
    /// `--insecure-no-auth` serves loopback listeners only.
    #[error(
        "TCP listener {addr} is not loopback: --insecure-no-auth applies to loopback \
         only; configure a bearer token"
    )]
    NotLoopback {
        /// The listener.
        addr: SocketAddr,
    },
}

/// Who may use which listener: TCP clients need the bearer token (when one is configured), unix
/// clients are guarded by the socket's mode and group. Health checks never need a token.
#[derive(Clone, Default)]
pub struct Access {
    pub(super) token: Option<Arc<SecretString>>,
    /// No token is configured and TCP was not asked for: a TCP listener is refused.
    refuse_tcp: bool,
    /// No token, by `--insecure-no-auth`: TCP only on loopback.
    loopback_only: bool,
    /// PEM certificate chain and private key of TCP listeners.
    pub(super) tls: Option<(Vec<u8>, Arc<SecretString>)>,
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
    pub fn check(&self, addr: &SocketAddr) -> Result<(), Refused> {
        if self.refuse_tcp {
            return Err(Refused::NoToken { addr: *addr });
        }
        if self.loopback_only && !addr.ip().is_loopback() {
            return Err(Refused::NotLoopback { addr: *addr });
        }
        Ok(())
    }

    /// `builder` with the TLS identity of TCP listeners, when one is configured.
    /// TLS handshakes that take longer than `handshake_timeout` are abandoned.
    pub(super) fn with_tls(
        &self,
        builder: tonic::transport::Server,
        handshake_timeout: std::time::Duration,
    ) -> Result<tonic::transport::Server, Refused> {
        let Some((cert, key)) = &self.tls else {
            return Ok(builder);
        };
        let identity = tonic::transport::Identity::from_pem(cert, key.expose_secret());
        builder
            .tls_config(
                tonic::transport::ServerTlsConfig::new()
                    .identity(identity)
                    .timeout(handshake_timeout),
            )
            .map_err(Refused::Tls)
    }

    /// Refuse a TLS certificate and key rustls would not take, with the same call that sets up
    /// a TCP listener ([`Self::with_tls`]); nothing when no TLS is configured.
    pub fn check_tls(&self) -> Result<(), Refused> {
        self.with_tls(
            tonic::transport::Server::builder(),
            std::time::Duration::from_secs(10),
        )
        .map(drop)
    }

    /// The PEM certificate chain and private key of TCP listeners, when TLS is configured
    /// (the HTTP door builds its own rustls acceptor from them).
    pub fn tls_pem(&self) -> Option<(&[u8], &SecretString)> {
        self.tls
            .as_ref()
            .map(|(cert, key)| (cert.as_slice(), key.as_ref()))
    }

    /// Whether a TCP client presenting `authorization` (the header's value) may proceed: true
    /// when no token is configured, else when it is `Bearer <token>` (compared in constant
    /// time). Unix clients are not asked.
    pub fn authorizes(&self, authorization: Option<&[u8]>) -> Result<(), &'static str> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let Some(value) = authorization else {
            return Err(
                "authorization: missing; send \"Authorization: Bearer <token>\" (server.auth_token)",
            );
        };
        if presents(token, value) {
            Ok(())
        } else {
            Err("authorization: the bearer token is not valid")
        }
    }

    /// The interceptor of one listener: the token check on TCP, none on unix sockets.
    pub(super) fn interceptor(&self, tcp: bool) -> BearerAuth {
        BearerAuth(self.token.clone().filter(|_| tcp))
    }
}

/// Checks `authorization: Bearer <token>` in constant time (when a token is required).
#[derive(Clone)]
pub(super) struct BearerAuth(Option<Arc<SecretString>>);

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(token) = &self.0 else {
            return Ok(request);
        };
        let Some(value) = request.metadata().get("authorization") else {
            return Err(tonic::Status::unauthenticated(
                "authorization: missing; send \"authorization: Bearer <token>\" (server.auth_token)",
            ));
        };
        if presents(token, value.as_bytes()) {
            Ok(request)
        } else {
            Err(tonic::Status::unauthenticated(
                "authorization: the bearer token is not valid",
            ))
        }
    }
}

/// Whether an `authorization` value is `Bearer <token>` (either case of "Bearer"), compared in
/// constant time.
fn presents(token: &SecretString, authorization: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    let presented = authorization
        .strip_prefix(b"Bearer ")
        .or_else(|| authorization.strip_prefix(b"bearer "))
        .unwrap_or_default();
    bool::from(presented.ct_eq(token.expose_secret().as_bytes()))
}
