//! What every door's listeners allow a connection: one accept loop ([`Acceptor`]) for the gRPC,
//! HTTP and Wyoming doors, TCP and unix alike.
//!
//! - **A cap per listener** (`server.max_connections`): a connection accepted beyond it is
//!   closed at once, and a warning says so (at most one per listener every
//!   [`WARN_EVERY`], with the count refused since the last one).
//! - **A handshake timeout** (`server.handshake_timeout_ms`): a connection that sends no byte
//!   within it is closed ([`Guarded`]), so silent connections cannot pile up.
//! - **An idle timeout** (`server.idle_timeout_ms`): a connection with no byte in either
//!   direction for that long is closed. The gRPC door pings its connections (HTTP/2 keepalive)
//!   at least every half idle timeout, so a live gRPC connection is never idle by this measure.
//! - **Accept errors back off**: a failed `accept` that concerns the listener (out of file
//!   descriptors: EMFILE, ENFILE; out of memory) is logged at warn (rate-limited) and retried
//!   after a pause growing to one second, instead of spinning on the error.
//!
//! [`raise_fd_limit`] raises the soft open-file limit to the hard one at start, and
//! [`fit_to_fd_limit`] lowers the cap when the limit cannot hold every listener's cap.
//!
//! This module must not decide who may connect ([`super::auth`] does) nor look at the bytes.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream, UnixListener, UnixStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};

use crate::config::ConnectionLimits;

/// Shortest time between two warnings of one listener about the same problem.
pub const WARN_EVERY: Duration = Duration::from_secs(10);
/// First pause after a listener-wide accept error; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(10);
/// Longest pause after a listener-wide accept error.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// File descriptors kept for everything but accepted connections (the cache, engines,
/// upstream connections, the log) when [`fit_to_fd_limit`] shares the limit among listeners.
const FD_RESERVE: u64 = 256;

/// A listening socket of some kind: what it accepts, and the peer's name for herald's
/// per-peer limits (`ip:ADDR` for TCP, `uid:N` for unix sockets).
pub trait Listen: Send + Sync + 'static {
    /// The accepted stream.
    type Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static;
    /// Accept one connection.
    fn accept_one(&self) -> impl Future<Output = io::Result<(Self::Stream, String)>> + Send;
}

impl Listen for TcpListener {
    type Stream = TcpStream;

    async fn accept_one(&self) -> io::Result<(TcpStream, String)> {
        let (stream, addr) = self.accept().await?;
        let _ = stream.set_nodelay(true);
        Ok((stream, format!("ip:{}", addr.ip())))
    }
}

impl Listen for UnixListener {
    type Stream = UnixStream;

    async fn accept_one(&self) -> io::Result<(UnixStream, String)> {
        let (stream, _) = self.accept().await?;
        let peer = stream
            .peer_cred()
            .map_or_else(|_| "local".to_owned(), |c| format!("uid:{}", c.uid()));
        Ok((stream, peer))
    }
}

/// The accept loop of one listener, with the cap, the timeouts and the back-off of the module
/// docs.
pub struct Acceptor<L> {
    listener: L,
    limits: ConnectionLimits,
    open: Arc<Semaphore>,
    /// The listener's name in logs.
    name: String,
    /// Connections refused at the cap since the last warning.
    refused: u64,
    last_cap_warning: Option<Instant>,
    last_error_warning: Option<Instant>,
    backoff: Duration,
}

impl<L: Listen> Acceptor<L> {
    /// Accept on `listener` (named `name` in logs) within `limits`.
    pub fn new(listener: L, name: String, limits: ConnectionLimits) -> Self {
        Self {
            listener,
            open: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
            name,
            refused: 0,
            last_cap_warning: None,
            last_error_warning: None,
            backoff: MIN_BACKOFF,
        }
    }

    /// The listening socket.
    pub fn listener(&self) -> &L {
        &self.listener
    }

    /// The next connection within the cap, with its peer name. Never fails: connections over
    /// the cap are closed, accept errors are retried (module docs).
    pub async fn accept(&mut self) -> (Guarded<L::Stream>, String) {
        loop {
            match self.listener.accept_one().await {
                Ok((stream, peer)) => {
                    self.backoff = MIN_BACKOFF;
                    match Arc::clone(&self.open).try_acquire_owned() {
                        Ok(permit) => return (Guarded::new(stream, &self.limits, permit), peer),
                        Err(_) => {
                            drop(stream);
                            self.refused += 1;
                            if due(&mut self.last_cap_warning) {
                                tracing::warn!(
                                    listener = %self.name,
                                    limit = self.limits.max_connections,
                                    refused = self.refused,
                                    "server.max_connections: the listener is full; new connections are closed at once"
                                );
                                self.refused = 0;
                            }
                        }
                    }
                }
                Err(e) if per_connection(&e) => {}
                Err(error) => {
                    if due(&mut self.last_error_warning) {
                        let hint = if matches!(error.raw_os_error(), Some(23 | 24)) {
                            "out of file descriptors: lower server.max_connections or raise \
                             LimitNOFILE="
                        } else {
                            "retrying"
                        };
                        tracing::warn!(listener = %self.name, %error, pause = ?self.backoff, "accept failed; {hint}");
                    }
                    tokio::time::sleep(self.backoff).await;
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// The accepted connections as a stream (what tonic serves), forever.
    pub fn into_stream(
        self,
    ) -> impl futures::Stream<Item = io::Result<(Guarded<L::Stream>, String)>> + Send {
        futures::stream::unfold(self, |mut acceptor| async move {
            let accepted = acceptor.accept().await;
            Some((Ok(accepted), acceptor))
        })
    }
}

/// True when a warning is due (none in the last [`WARN_EVERY`]); then records it.
fn due(last: &mut Option<Instant>) -> bool {
    let now = Instant::now();
    if last.is_some_and(|t| now.duration_since(t) < WARN_EVERY) {
        return false;
    }
    *last = Some(now);
    true
}

/// An accept error that concerns one connection only (hyper's and axum's rule): go on at once.
fn per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// An accepted connection under the handshake and idle timeouts, holding its place under the
/// listener's cap until it is dropped. A timeout surfaces as a `TimedOut` read or write error,
/// which ends the connection in any server.
pub struct Guarded<S> {
    inner: S,
    timer: Pin<Box<Sleep>>,
    /// When the first bytes must have arrived by; `None` once they have.
    handshake_by: Option<Instant>,
    idle: Duration,
    /// The last byte read or written.
    last: Instant,
    _permit: OwnedSemaphorePermit,
}

impl<S> Guarded<S> {
    fn new(inner: S, limits: &ConnectionLimits, permit: OwnedSemaphorePermit) -> Self {
        let now = Instant::now();
        let handshake_by = now + limits.handshake_timeout;
        Self {
            inner,
            timer: Box::pin(tokio::time::sleep_until(handshake_by)),
            handshake_by: Some(handshake_by),
            idle: limits.idle_timeout,
            last: now,
            _permit: permit,
        }
    }

    /// The stream under the guard.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    fn deadline(&self) -> Instant {
        self.handshake_by.unwrap_or(self.last + self.idle)
    }

    /// The timeout that has passed, if one has; otherwise the timer is armed to wake `cx`.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return None;
            }
            let deadline = self.deadline();
            if Instant::now() >= deadline {
                let what = if self.handshake_by.is_some() {
                    "no bytes within server.handshake_timeout_ms"
                } else {
                    "idle for server.idle_timeout_ms"
                };
                return Some(io::Error::new(io::ErrorKind::TimedOut, what));
            }
            self.timer.as_mut().reset(deadline);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.last = Instant::now();
                    this.handshake_by = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.last = Instant::now();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.last = Instant::now();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for Guarded<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Raise the soft open-file limit to the hard one (each connection is a descriptor), and
/// return the soft limit in force. Logs what it did.
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let (soft, hard) = (limit.current, limit.maximum);
    match (soft, hard) {
        (Some(s), Some(h)) if s < h => {
            let raised = rustix::process::Rlimit {
                current: Some(h),
                maximum: Some(h),
            };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => {
                    tracing::info!(from = s, to = h, "open-file limit raised to the hard limit");
                    Some(h)
                }
                Err(error) => {
                    tracing::warn!(soft = s, hard = h, %error, "cannot raise the open-file limit");
                    Some(s)
                }
            }
        }
        (Some(s), _) => {
            tracing::info!(limit = s, "open-file limit (already the hard limit)");
            Some(s)
        }
        (None, _) => None,
    }
}

/// `limits` with `max_connections` lowered, with a warning, when `listeners` listeners at the
/// cap would use more descriptors than `fd_limit` leaves after a reserve: so that a flood on
/// one listener never takes the descriptors the others (the unix socket, health checks) need.
pub fn fit_to_fd_limit(
    mut limits: ConnectionLimits,
    listeners: usize,
    fd_limit: Option<u64>,
) -> ConnectionLimits {
    let (Some(fd_limit), Ok(n)) = (fd_limit, u64::try_from(listeners.max(1))) else {
        return limits;
    };
    let share = fd_limit.saturating_sub(FD_RESERVE).max(n * 8) / n;
    let share = usize::try_from(share).unwrap_or(usize::MAX);
    if share < limits.max_connections {
        tracing::warn!(
            configured = limits.max_connections,
            used = share,
            fd_limit,
            listeners,
            "server.max_connections: lowered so that every listener fits the open-file limit \
             (raise LimitNOFILE= to serve more)"
        );
        limits.max_connections = share;
    }
    limits
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn limits(max: usize, handshake_ms: u64, idle_ms: u64) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: max,
            handshake_timeout: Duration::from_millis(handshake_ms),
            idle_timeout: Duration::from_millis(idle_ms),
            ..ConnectionLimits::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_times_out_and_a_talking_one_goes_idle_later() {
        let sem = Arc::new(Semaphore::new(2));
        let (client, server) = tokio::io::duplex(64);
        let mut g = Guarded::new(
            server,
            &limits(2, 1_000, 5_000),
            Arc::clone(&sem).try_acquire_owned().unwrap(),
        );
        let mut buf = [0u8; 8];
        let e = g.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("handshake_timeout"), "{e}");
        drop(g);
        assert_eq!(
            sem.available_permits(),
            2,
            "the place under the cap is given back"
        );
        drop(client);

        let (mut client, server) = tokio::io::duplex(64);
        let mut g = Guarded::new(
            server,
            &limits(2, 1_000, 5_000),
            Arc::clone(&sem).try_acquire_owned().unwrap(),
        );
        client.write_all(b"hi").await.unwrap();
        assert_eq!(g.read(&mut buf).await.unwrap(), 2);
        let started = Instant::now();
        let e = g.read(&mut buf).await.unwrap_err();
        assert!(e.to_string().contains("idle_timeout"), "{e}");
        assert!(started.elapsed() >= Duration::from_millis(5_000));
    }

    /// A listener whose every accept fails with EMFILE (out of file descriptors).
    struct Exhausted(std::sync::atomic::AtomicUsize);

    impl Listen for Exhausted {
        type Stream = tokio::io::DuplexStream;

        async fn accept_one(&self) -> io::Result<(Self::Stream, String)> {
            let n = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if n > 1000 {
                // A spinning loop would get here at once; stop it from hanging the test.
                std::future::pending::<()>().await;
            }
            Err(io::Error::from_raw_os_error(24))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn accept_errors_back_off_instead_of_spinning() {
        let mut acceptor = Acceptor::new(
            Exhausted(std::sync::atomic::AtomicUsize::new(0)),
            "test".to_owned(),
            limits(8, 1_000, 5_000),
        );
        let waited = tokio::time::timeout(Duration::from_secs(3), acceptor.accept()).await;
        assert!(waited.is_err(), "nothing to accept");
        let calls = acceptor
            .listener()
            .0
            .load(std::sync::atomic::Ordering::Relaxed);
        // 10, 20, 40 … 640 ms, then once a second: 9 or 10 tries in 3 s.
        assert!((5..=12).contains(&calls), "{calls} accept calls in 3 s");
    }

    #[test]
    fn the_cap_is_shared_out_of_the_fd_limit() {
        let l = limits(512, 1_000, 5_000);
        assert_eq!(fit_to_fd_limit(l, 2, Some(1_000_000)).max_connections, 512);
        assert_eq!(fit_to_fd_limit(l, 2, Some(1024)).max_connections, 384);
        assert_eq!(fit_to_fd_limit(l, 3, None).max_connections, 512);
    }
}
