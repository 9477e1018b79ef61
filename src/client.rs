//! The client side of the daemon's gRPC services, used by every client command of the `herald`
//! binary (`say`, `voices`, `devices`, `stop`, `cache …`, `voice …`).
//!
//! It owns the client connection settings: where the daemon is (a unix socket, by default where
//! `herald serve` puts it, or TCP), the bearer token a TCP listener needs and the CA that
//! makes TCP use TLS. [`Target::resolve`] applies them in one order for every command (flags,
//! then `HERALD_*` variables, then defaults), and [`channel`] opens a [`Channel`] that sends
//! the token and explains connection failures ([`ConnectError`]: a missing daemon, a socket
//! the user may not open, a TLS mismatch) instead of passing transport errors through. It must
//! not hold daemon state or print anything, and must never print, log or `Debug`-format the
//! token.

use std::{
    fmt,
    future::Future,
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use secrecy::{ExposeSecret as _, SecretString};
use tonic::{
    Code, Status,
    body::Body,
    codegen::{Service, http},
    transport::{Certificate, ClientTlsConfig, Endpoint},
};

use crate::{
    config::{Env, client_socket_candidates},
    pb::speech_client::SpeechClient,
};

/// The daemon's unix socket (`--socket`).
pub const ENV_SOCKET: &str = "HERALD_SOCKET";
/// The daemon's TCP address, `HOST:PORT` (`--addr`).
pub const ENV_ADDR: &str = "HERALD_ADDR";
/// The bearer token of a TCP listener (`--token`, `--token-file`).
pub const ENV_TOKEN: &str = "HERALD_TOKEN";
/// A PEM CA certificate: TCP uses TLS and trusts this CA (`--tls-ca`).
pub const ENV_TLS_CA: &str = "HERALD_TLS_CA";

/// How long opening a connection (TCP, TLS, HTTP/2) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long asking a listener whether it speaks TLS may take (after a failure).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The connection settings given on the command line (`None`: not given). What is not given
/// comes from the environment, then the defaults ([`Target::resolve`]).
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// `--socket PATH`.
    pub socket: Option<PathBuf>,
    /// `--addr HOST:PORT`.
    pub addr: Option<String>,
    /// `--token TOKEN`.
    pub token: Option<SecretString>,
    /// `--token-file FILE`.
    pub token_file: Option<PathBuf>,
    /// `--tls-ca FILE`.
    pub tls_ca: Option<PathBuf>,
}

/// Where the daemon listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// A unix socket path.
    Unix(PathBuf),
    /// `HOST:PORT`.
    Tcp(String),
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Tcp(a) => write!(f, "{a}"),
        }
    }
}

/// Where a token came from (named in messages; the token itself never is).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// `--token`.
    Flag,
    /// `--token-file FILE`.
    File(PathBuf),
    /// `HERALD_TOKEN`.
    Env,
}

impl fmt::Display for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Flag => f.write_str("--token"),
            Self::File(p) => write!(f, "--token-file {}", p.display()),
            Self::Env => f.write_str(ENV_TOKEN),
        }
    }
}

/// A bearer token and where it came from. `Debug` shows only the source.
#[derive(Clone)]
struct Token {
    /// `Bearer <token>`, marked sensitive.
    header: http::HeaderValue,
    source: TokenSource,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("value", &"<redacted>")
            .field("source", &self.source)
            .finish()
    }
}

/// The CA a TLS connection trusts.
#[derive(Clone, Debug)]
struct TlsCa {
    file: PathBuf,
    pem: Vec<u8>,
}

/// The daemon and how to talk to it: resolved connection settings.
#[derive(Clone, Debug)]
pub struct Target {
    address: Address,
    token: Option<Token>,
    tls: Option<TlsCa>,
}

/// Connection settings that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// No daemon address was given and no default socket exists.
    #[error(
        "no herald socket found (tried {tried}); is `herald serve` running? Use --socket PATH \
         ({ENV_SOCKET}) or --addr HOST:PORT ({ENV_ADDR})"
    )]
    NoSocket {
        /// The default locations tried, comma-separated.
        tried: String,
    },
    /// Both variables name the daemon and no flag decides.
    #[error(
        "both {ENV_SOCKET} and {ENV_ADDR} are set: unset one, or choose with --socket or --addr"
    )]
    SocketAndAddr,
    /// `--addr` is not `HOST:PORT`.
    #[error("{from} {addr:?} is not HOST:PORT (TLS is chosen by --tls-ca, not by a scheme)")]
    BadAddr {
        /// `--addr` or `HERALD_ADDR`.
        from: &'static str,
        /// What was given.
        addr: String,
    },
    /// The token file cannot be read.
    #[error("cannot read the token file {}: {source}", path.display())]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The token is empty or cannot be sent in a header.
    #[error("the token from {from} {why}")]
    BadToken {
        /// Where it came from.
        from: TokenSource,
        /// "is empty" or "has characters an HTTP header cannot carry".
        why: &'static str,
    },
    /// The CA file cannot be read or holds no certificate.
    #[error("the TLS CA {} ({from}): {why}", path.display())]
    TlsCa {
        /// The file.
        path: PathBuf,
        /// `--tls-ca` or `HERALD_TLS_CA`.
        from: &'static str,
        /// Why it cannot be used.
        why: String,
    },
    /// `--tls-ca` with a unix socket.
    #[error("--tls-ca applies to TCP (--addr HOST:PORT): unix sockets do not use TLS")]
    TlsOnUnix,
}

impl Target {
    /// The settings of `flags`, else of `env` (`HERALD_SOCKET`, `HERALD_ADDR`, `HERALD_TOKEN`,
    /// `HERALD_TLS_CA`), else the default socket: the first of the locations `herald serve`
    /// uses that exists. A socket flag beats an address variable and the other way round;
    /// `HERALD_TLS_CA` is ignored for a unix socket (`--tls-ca` is an error there). Reads the
    /// token file and the CA file.
    pub fn resolve(flags: Settings, env: &Env) -> Result<Self, SettingsError> {
        let address = Self::find_address(flags.socket, flags.addr, env)?;
        let token = match (flags.token, flags.token_file, env.get(ENV_TOKEN)) {
            (Some(t), _, _) => Some(Token::new(t.expose_secret(), TokenSource::Flag)?),
            (None, Some(path), _) => {
                let text =
                    std::fs::read_to_string(&path).map_err(|source| SettingsError::TokenFile {
                        path: path.clone(),
                        source,
                    })?;
                Some(Token::new(&text, TokenSource::File(path))?)
            }
            (None, None, Some(t)) => Some(Token::new(t, TokenSource::Env)?),
            (None, None, None) => None,
        };
        let tls = match (&address, flags.tls_ca, env.get(ENV_TLS_CA)) {
            (Address::Unix(_), Some(_), _) => return Err(SettingsError::TlsOnUnix),
            (Address::Unix(_), None, _) | (Address::Tcp(_), None, None) => None,
            (Address::Tcp(_), Some(file), _) => Some(TlsCa::read(file, "--tls-ca")?),
            (Address::Tcp(_), None, Some(file)) => Some(TlsCa::read(file.into(), ENV_TLS_CA)?),
        };
        Ok(Self {
            address,
            token,
            tls,
        })
    }

    fn find_address(
        socket: Option<PathBuf>,
        addr: Option<String>,
        env: &Env,
    ) -> Result<Address, SettingsError> {
        let tcp = |addr: String, from| {
            if addr.contains("://") || addr.is_empty() {
                Err(SettingsError::BadAddr { from, addr })
            } else {
                Ok(Address::Tcp(addr))
            }
        };
        match (socket, addr) {
            (_, Some(addr)) => return tcp(addr, "--addr"),
            (Some(path), None) => return Ok(Address::Unix(path)),
            (None, None) => {}
        }
        let non_empty = |name| env.get(name).filter(|v| !v.is_empty());
        match (non_empty(ENV_SOCKET), non_empty(ENV_ADDR)) {
            (Some(_), Some(_)) => return Err(SettingsError::SocketAndAddr),
            (Some(path), None) => return Ok(Address::Unix(path.into())),
            (None, Some(addr)) => return tcp(addr.to_owned(), ENV_ADDR),
            (None, None) => {}
        }
        let candidates = client_socket_candidates(env);
        candidates
            .iter()
            .find(|p| p.exists())
            .map(|p| Address::Unix(p.clone()))
            .ok_or_else(|| SettingsError::NoSocket {
                tried: candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Where the daemon listens.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Where the token came from, when one is sent.
    pub fn token_source(&self) -> Option<&TokenSource> {
        self.token.as_ref().map(|t| &t.source)
    }

    /// The CA file when TCP uses TLS.
    pub fn tls_ca(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.file.as_path())
    }

    fn endpoint(&self) -> Result<Endpoint, tonic::transport::Error> {
        let endpoint = match (&self.address, &self.tls) {
            (Address::Unix(path), _) => {
                Endpoint::from_shared(format!("unix://{}", absolute(path).display()))?
            }
            (Address::Tcp(addr), None) => Endpoint::from_shared(format!("http://{addr}"))?,
            (Address::Tcp(addr), Some(ca)) => Endpoint::from_shared(format!("https://{addr}"))?
                .tls_config(
                    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca.pem)),
                )?,
        };
        Ok(endpoint.connect_timeout(CONNECT_TIMEOUT))
    }

    /// What a transport failure means for this target.
    fn classify(&self, error: tonic::transport::Error) -> ConnectError {
        let target = self.address.to_string();
        if let Some(io) = find::<io::Error>(&error) {
            match (io.kind(), &self.address) {
                (io::ErrorKind::PermissionDenied, Address::Unix(path)) => {
                    return ConnectError::PermissionDenied {
                        target,
                        advice: permission_advice(path),
                    };
                }
                (io::ErrorKind::NotFound, Address::Unix(_)) => {
                    return ConnectError::NotRunning {
                        target,
                        why: "no such socket",
                    };
                }
                (io::ErrorKind::ConnectionRefused, _) => {
                    return ConnectError::NotRunning {
                        target,
                        why: "connection refused",
                    };
                }
                _ => {}
            }
        }
        if let Some(tls) = &self.tls
            && let Some(rustls) = find_io_inner::<rustls::Error>(&error)
        {
            return match rustls {
                rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
                    ConnectError::UnexpectedPlaintext { target }
                }
                other => ConnectError::Tls {
                    target,
                    ca: tls.file.clone(),
                    why: other.to_string(),
                },
            };
        }
        ConnectError::Other { target, error }
    }

    /// [`Self::classify`], and for a plaintext TCP connection that failed otherwise: whether
    /// the listener speaks TLS (plaintext HTTP/2 sent to a TLS listener fails as an HTTP/2
    /// protocol error or a reset connection, depending on timing).
    async fn explain(&self, error: tonic::transport::Error) -> ConnectError {
        match (self.classify(error), &self.address) {
            (ConnectError::Other { target, error }, Address::Tcp(addr))
                if self.tls.is_none() && !unreachable(&error) =>
            {
                if speaks_tls(addr).await {
                    ConnectError::ExpectedTls { target }
                } else {
                    ConnectError::Other { target, error }
                }
            }
            (explained, _) => explained,
        }
    }
}

/// Whether `error` says the host could not be reached at all (no listener to ask about TLS).
fn unreachable(error: &tonic::transport::Error) -> bool {
    use io::ErrorKind::*;
    find::<io::Error>(error).is_some_and(|io| {
        matches!(
            io.kind(),
            TimedOut | HostUnreachable | NetworkUnreachable | AddrNotAvailable | NotFound
        )
    }) || error_line(error).contains("timed out")
}

/// Whether the listener at `addr` answers a TLS handshake with a certificate (one no CA is
/// trusted for: the handshake fails either way; how it fails tells).
async fn speaks_tls(addr: &str) -> bool {
    let Ok(endpoint) = Endpoint::from_shared(format!("https://{addr}"))
        .and_then(|e| e.tls_config(ClientTlsConfig::new()))
    else {
        return false;
    };
    match endpoint.connect_timeout(PROBE_TIMEOUT).connect().await {
        Ok(_) => true,
        Err(e) => matches!(
            find_io_inner::<rustls::Error>(&e),
            Some(rustls::Error::InvalidCertificate(_))
        ),
    }
}

impl Token {
    fn new(text: &str, source: TokenSource) -> Result<Self, SettingsError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(SettingsError::BadToken {
                from: source,
                why: "is empty",
            });
        }
        let mut header = http::HeaderValue::try_from(format!("Bearer {text}")).map_err(|_| {
            SettingsError::BadToken {
                from: source.clone(),
                why: "has characters an HTTP header cannot carry",
            }
        })?;
        header.set_sensitive(true);
        Ok(Self { header, source })
    }
}

impl TlsCa {
    fn read(file: PathBuf, from: &'static str) -> Result<Self, SettingsError> {
        let error = |why: String| SettingsError::TlsCa {
            path: file.clone(),
            from,
            why,
        };
        let pem = std::fs::read(&file).map_err(|e| error(e.to_string()))?;
        if !pem
            .windows(b"-----BEGIN CERTIFICATE-----".len())
            .any(|w| w == b"-----BEGIN CERTIFICATE-----")
        {
            return Err(error("holds no PEM certificate".to_owned()));
        }
        Ok(Self { file, pem })
    }
}

fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_owned();
    }
    std::env::current_dir().map_or_else(|_| path.to_owned(), |d| d.join(path))
}

// === impl ConnectError ===

/// Why the daemon cannot be reached (or a call could not reach it). Each message says what to
/// do; none names the token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// Nothing listens there.
    #[error("cannot connect to herald at {target}: {why}; is `herald serve` running?")]
    NotRunning {
        /// The address.
        target: String,
        /// "no such socket", "connection refused".
        why: &'static str,
    },
    /// The unix socket's mode or group keep this user out.
    #[error("cannot connect to herald at {target}: permission denied: {advice}")]
    PermissionDenied {
        /// The address.
        target: String,
        /// Which group to join (or what else to do).
        advice: String,
    },
    /// Plaintext HTTP/2 was sent to a TLS listener.
    #[error(
        "cannot connect to herald at {target}: TLS mismatch: the daemon speaks TLS; pass its CA \
         with --tls-ca FILE ({ENV_TLS_CA})"
    )]
    ExpectedTls {
        /// The address.
        target: String,
    },
    /// TLS was sent to a plaintext listener.
    #[error(
        "cannot connect to herald at {target}: TLS mismatch: the daemon does not speak TLS; \
         drop --tls-ca (or unset {ENV_TLS_CA})"
    )]
    UnexpectedPlaintext {
        /// The address.
        target: String,
    },
    /// The TLS handshake failed (an untrusted certificate, a name mismatch, …).
    #[error(
        "cannot connect to herald at {target}: TLS handshake failed (trusting the CA {}): {why}",
        ca.display()
    )]
    Tls {
        /// The address.
        target: String,
        /// The CA file trusted.
        ca: PathBuf,
        /// rustls's reason.
        why: String,
    },
    /// Anything else, with the transport's error as its source.
    #[error("cannot connect to herald at {target}")]
    Other {
        /// The address.
        target: String,
        /// The transport's error.
        #[source]
        error: tonic::transport::Error,
    },
}

impl ConnectError {
    /// The status a call that failed this way ends with: UNAVAILABLE, this message.
    fn into_status(self) -> Status {
        let message = error_line(&self);
        let mut status = Status::unavailable(message);
        status.set_source(Arc::new(self));
        status
    }
}

/// `error` and its causes on one line, each once: a cause whose text is already on the line
/// is left out (transport errors repeat their source's text at every layer).
pub fn error_line(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = String::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if !text.is_empty() && !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        next = e.source();
    }
    line
}

/// The first error of type `E` in `error`'s source chain (itself included).
fn find<'a, E: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        next = e.source();
    }
    None
}

/// The `E` an `io::Error` of the chain wraps (TLS errors arrive that way; `io::Error::source`
/// skips them).
fn find_io_inner<'a, E: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(inner) = e
            .downcast_ref::<io::Error>()
            .and_then(io::Error::get_ref)
            .and_then(|i| i.downcast_ref::<E>())
        {
            return Some(inner);
        }
        next = e.source();
    }
    None
}

// === permission advice ===

/// What to do about a socket this process may not open: which group to join, from the
/// socket's owner group and mode and this process's groups.
fn permission_advice(socket: &Path) -> String {
    let Ok(meta) = std::fs::metadata(socket) else {
        return format!(
            "cannot even look at {} (its directory is closed to this user): ask the \
             administrator for access, or use --addr HOST:PORT",
            socket.display()
        );
    };
    let gid = meta.gid();
    let name = group_name(
        gid,
        &std::fs::read_to_string("/etc/group").unwrap_or_default(),
    );
    let member = own_groups().is_some_and(|g| g.contains(&gid));
    socket_advice(
        &name.unwrap_or_else(|| gid.to_string()),
        gid,
        meta.mode(),
        member,
    )
}

/// The advice for a socket of group `group` (id `gid`) and `mode`, for a process that is (or
/// is not) a `member` of that group.
fn socket_advice(group: &str, gid: u32, mode: u32, member: bool) -> String {
    let mode = mode & 0o777;
    if member && mode & 0o060 != 0o060 {
        return format!(
            "the socket's mode {mode:04o} keeps its group {group} out; the daemon's \
             server.socket_mode should be 0660"
        );
    }
    if member {
        return format!(
            "this process is in the socket's group {group} and still may not open it; check \
             the socket's directory"
        );
    }
    if gid == 0 {
        return format!(
            "the socket belongs to group {group}; set the daemon's server.socket_group \
             (HERALD_SOCKET_GROUP) to a group for its users, then join that group: \
             `sudo usermod -aG GROUP $USER` (and log in again)"
        );
    }
    format!(
        "the socket belongs to group {group}; join it with `sudo usermod -aG {group} $USER` \
         and log in again (or run `newgrp {group}`)"
    )
}

/// The name of group `gid` in an `/etc/group` text.
fn group_name(gid: u32, etc_group: &str) -> Option<String> {
    etc_group.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        (fields.nth(1)?.parse::<u32>().ok()? == gid).then(|| name.to_owned())
    })
}

/// This process's effective and supplementary group ids (from /proc/self/status).
fn own_groups() -> Option<Vec<u32>> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let ids = |key: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|rest| {
                rest.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    // "Gid: real effective saved fs"
    let mut groups = ids("Gid:").get(1).copied().into_iter().collect::<Vec<_>>();
    groups.extend(ids("Groups:"));
    Some(groups)
}

// === impl Channel ===

/// A channel to the daemon (for any of its services): it sends the bearer token with every call
/// and turns transport failures into UNAVAILABLE statuses that say what went wrong (a TLS
/// mismatch shows up only at the first call). An UNAUTHENTICATED answer gets a hint on which
/// setting carries the token.
#[derive(Clone)]
pub struct Channel {
    inner: tonic::transport::Channel,
    target: Arc<Target>,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Service<http::Request<Body>> for Channel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Not ready only when the channel's worker is gone: nothing to explain.
        self.inner.poll_ready(cx).map_err(BoxError::from)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        if let Some(token) = &self.target.token {
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, token.header.clone());
        }
        let call = self.inner.call(request);
        let target = self.target.clone();
        Box::pin(async move {
            match call.await {
                Ok(response) => Ok(explain_unauthenticated(response, &target)),
                Err(e) => Err(Box::new(target.explain(e).await.into_status()) as BoxError),
            }
        })
    }
}

/// A trailers-only UNAUTHENTICATED response (the daemon's token check) with a hint appended to
/// its message; any other response as it is.
fn explain_unauthenticated(
    response: http::Response<Body>,
    target: &Target,
) -> http::Response<Body> {
    match Status::from_header_map(response.headers()) {
        Some(status) if status.code() == Code::Unauthenticated => Status::unauthenticated(format!(
            "{}; {}",
            status.message(),
            token_hint(target.token_source())
        ))
        .into_http(),
        _ => response,
    }
}

/// What to do when the daemon refuses the call for want of the right token.
fn token_hint(source: Option<&TokenSource>) -> String {
    match source {
        None => format!(
            "this listener needs the daemon's bearer token: pass --token TOKEN or \
             --token-file FILE, or set {ENV_TOKEN}"
        ),
        Some(source) => format!(
            "the daemon refused the token from {source}: pass its server.auth_token with \
             --token, --token-file or {ENV_TOKEN}"
        ),
    }
}

/// Open a channel to the daemon (for any of its services).
pub async fn channel(target: &Target) -> Result<Channel, ConnectError> {
    let endpoint = target.endpoint().map_err(|error| ConnectError::Other {
        target: target.address.to_string(),
        error,
    })?;
    let inner = match endpoint.connect().await {
        Ok(inner) => inner,
        Err(e) => return Err(target.explain(e).await),
    };
    Ok(Channel {
        inner,
        target: Arc::new(target.clone()),
    })
}

/// Connect to the daemon's speech service (herald.v1.Speech).
pub async fn connect(target: &Target) -> Result<SpeechClient<Channel>, ConnectError> {
    Ok(SpeechClient::new(channel(target).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "tok-0123456789abcdef-secret";

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_pairs(pairs.iter().copied())
    }

    fn tcp() -> Settings {
        Settings {
            addr: Some("127.0.0.1:1".into()),
            ..Settings::default()
        }
    }

    #[test]
    fn flags_beat_variables_beat_defaults() {
        let e = env(&[(ENV_ADDR, "10.0.0.1:9"), (ENV_TOKEN, TOKEN)]);
        let t = Target::resolve(Settings::default(), &e).unwrap();
        assert_eq!(t.address(), &Address::Tcp("10.0.0.1:9".into()));
        assert_eq!(t.token_source(), Some(&TokenSource::Env));

        let flags = Settings {
            socket: Some("/tmp/x.sock".into()),
            token: Some(SecretString::from("other-token")),
            ..Settings::default()
        };
        let t = Target::resolve(flags, &e).unwrap();
        assert_eq!(t.address(), &Address::Unix("/tmp/x.sock".into()));
        assert_eq!(t.token_source(), Some(&TokenSource::Flag));

        let t = Target::resolve(tcp(), &env(&[(ENV_SOCKET, "/tmp/y.sock")])).unwrap();
        assert_eq!(t.address(), &Address::Tcp("127.0.0.1:1".into()));
        let t = Target::resolve(Settings::default(), &env(&[(ENV_SOCKET, "/tmp/y.sock")])).unwrap();
        assert_eq!(t.address(), &Address::Unix("/tmp/y.sock".into()));

        let e = Target::resolve(
            Settings::default(),
            &env(&[(ENV_SOCKET, "/tmp/y.sock"), (ENV_ADDR, "h:1")]),
        )
        .unwrap_err();
        assert!(matches!(e, SettingsError::SocketAndAddr), "{e}");
    }

    #[test]
    fn without_settings_the_default_socket_or_a_message_naming_the_flags() {
        let dir = tempfile::tempdir().unwrap();
        let e = env(&[("RUNTIME_DIRECTORY", dir.path().to_str().unwrap())]);
        match Target::resolve(Settings::default(), &e) {
            // Only when a system daemon's socket exists on this machine.
            Ok(t) => assert!(matches!(t.address(), Address::Unix(_))),
            Err(err) => {
                let m = err.to_string();
                assert!(m.contains("--socket") && m.contains("--addr"), "{m}");
                assert!(m.contains(ENV_SOCKET) && m.contains(ENV_ADDR), "{m}");
            }
        }
        std::fs::write(dir.path().join("herald.sock"), "").unwrap();
        let t = Target::resolve(Settings::default(), &e).unwrap();
        assert_eq!(t.address(), &Address::Unix(dir.path().join("herald.sock")));
    }

    #[test]
    fn tokens_from_a_file_are_trimmed_and_bad_ones_are_refused_unnamed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
        let flags = Settings {
            token_file: Some(file.clone()),
            ..tcp()
        };
        let t = Target::resolve(flags, &env(&[(ENV_TOKEN, "ignored-token")])).unwrap();
        assert_eq!(t.token_source(), Some(&TokenSource::File(file.clone())));
        let header = &t.token.as_ref().unwrap().header;
        assert_eq!(header.as_bytes(), format!("Bearer {TOKEN}").as_bytes());
        assert!(header.is_sensitive());

        let missing = Settings {
            token_file: Some(dir.path().join("nope")),
            ..tcp()
        };
        let m = Target::resolve(missing, &env(&[])).unwrap_err().to_string();
        assert!(m.contains("token file") && m.contains("nope"), "{m}");

        for (bad, why) in [("  \n", "is empty"), ("a\nb-secret", "cannot carry")] {
            let flags = Settings {
                token: Some(SecretString::from(bad)),
                ..tcp()
            };
            let m = Target::resolve(flags, &env(&[])).unwrap_err().to_string();
            assert!(m.contains("--token") && m.contains(why), "{m}");
            assert!(!m.contains("secret"), "{m}");
        }
    }

    #[test]
    fn debug_never_shows_the_token() {
        let flags = Settings {
            token: Some(SecretString::from(TOKEN)),
            ..tcp()
        };
        let text = format!("{flags:?}");
        assert!(!text.contains(TOKEN), "{text}");
        let t = Target::resolve(flags, &env(&[])).unwrap();
        let text = format!("{t:?}");
        assert!(!text.contains(TOKEN) && text.contains("redacted"), "{text}");
    }

    #[test]
    fn tls_ca_is_read_for_tcp_and_refused_for_an_explicit_socket() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let t = Target::resolve(tcp(), &env(&[(ENV_TLS_CA, ca.to_str().unwrap())])).unwrap();
        assert_eq!(t.tls_ca(), Some(ca.as_path()));
        assert!(t.endpoint().is_ok());

        // The variable is ignored for a unix socket; the flag is an error.
        let unix = Settings {
            socket: Some("/tmp/s".into()),
            ..Settings::default()
        };
        let t = Target::resolve(unix.clone(), &env(&[(ENV_TLS_CA, ca.to_str().unwrap())]));
        assert!(t.unwrap().tls_ca().is_none());
        let with_flag = Settings {
            tls_ca: Some(ca.clone()),
            ..unix
        };
        let e = Target::resolve(with_flag, &env(&[])).unwrap_err();
        assert!(matches!(e, SettingsError::TlsOnUnix), "{e}");

        let not_pem = dir.path().join("x.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let flags = Settings {
            tls_ca: Some(not_pem),
            ..tcp()
        };
        let m = Target::resolve(flags, &env(&[])).unwrap_err().to_string();
        assert!(
            m.contains("--tls-ca") && m.contains("no PEM certificate"),
            "{m}"
        );
    }

    #[test]
    fn error_lines_print_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("{0}")]
        struct Layer(&'static str, #[source] Option<Box<Layer>>);
        let chain = Layer(
            "cannot connect to herald at unix:/x",
            Some(Box::new(Layer(
                "transport error",
                Some(Box::new(Layer(
                    "No such file (os error 2)",
                    Some(Box::new(Layer("No such file (os error 2)", None))),
                ))),
            ))),
        );
        assert_eq!(
            error_line(&chain),
            "cannot connect to herald at unix:/x: transport error: No such file (os error 2)"
        );
    }

    #[test]
    fn addresses_with_a_scheme_are_refused() {
        let flags = Settings {
            addr: Some("https://h:1".into()),
            ..Settings::default()
        };
        let m = Target::resolve(flags, &env(&[])).unwrap_err().to_string();
        assert!(m.contains("HOST:PORT") && m.contains("--tls-ca"), "{m}");
    }

    #[test]
    fn permission_advice_names_the_group_to_join() {
        let etc_group = "root:x:0:\naudio:x:29:pulse\nherald:x:998:alice,bob\n";
        assert_eq!(group_name(998, etc_group).as_deref(), Some("herald"));
        assert_eq!(group_name(5, etc_group), None);

        let m = socket_advice("herald", 998, 0o140660, false);
        assert!(m.contains("`sudo usermod -aG herald $USER`"), "{m}");
        let m = socket_advice("root", 0, 0o140660, false);
        assert!(m.contains("server.socket_group"), "{m}");
        let m = socket_advice("herald", 998, 0o140600, true);
        assert!(m.contains("0600") && m.contains("socket_mode"), "{m}");
    }

    #[test]
    fn unauthenticated_answers_say_which_setting_carries_the_token() {
        let m = token_hint(None);
        assert!(m.contains("--token") && m.contains(ENV_TOKEN), "{m}");
        let m = token_hint(Some(&TokenSource::File("/etc/herald/token".into())));
        assert!(m.contains("--token-file /etc/herald/token"), "{m}");

        let t = Target::resolve(tcp(), &env(&[(ENV_TOKEN, TOKEN)])).unwrap();
        let response = Status::unauthenticated("authorization: the bearer token is not valid")
            .into_http::<Body>();
        let response = explain_unauthenticated(response, &t);
        let status = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), Code::Unauthenticated);
        assert!(
            status
                .message()
                .starts_with("authorization: the bearer token is not valid; ")
                && status.message().contains(ENV_TOKEN),
            "{}",
            status.message()
        );
        assert!(!status.message().contains(TOKEN));
    }
}
