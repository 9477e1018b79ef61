//! Listeners: binding unix sockets and TCP addresses, and taking the sockets systemd passed
//! (socket activation).
//!
//! [`bind`] opens the listeners before serving, so callers (and tests) learn the real addresses
//! first. A unix socket appears at its path only with its final mode and group, and a socket
//! another running process still answers on is never replaced. This module must not serve
//! anything or decide who may connect ([`super::auth`] does).

use std::{
    io,
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::{Path, PathBuf},
};

use tokio::net::{TcpListener, UnixListener};

use super::ServeError;
use crate::config::ListenAddr;

/// An open listener, ready to serve.
#[derive(Debug)]
pub struct BoundListener {
    pub(super) addr: ListenAddr,
    pub(super) kind: ListenerKind,
    /// Passed by systemd (socket activation): its socket file belongs to systemd and is left
    /// in place at shutdown.
    pub(super) activated: bool,
}

/// The socket under a [`BoundListener`].
#[derive(Debug)]
pub enum ListenerKind {
    /// A TCP listener.
    Tcp(TcpListener),
    /// A unix stream socket listener.
    Unix(UnixListener),
}

impl BoundListener {
    /// The address actually bound (with the real port when port 0 was asked for).
    pub fn addr(&self) -> &ListenAddr {
        &self.addr
    }

    /// The socket, for a door that serves it itself (the HTTP and Wyoming doors), and
    /// whether it was passed by systemd (its socket file is then not ours to remove).
    pub fn into_kind(self) -> (ListenerKind, bool) {
        (self.kind, self.activated)
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

/// The socket files one start created ([`Self::track`]), removed when this is dropped if they
/// are still the same files (a later daemon's socket at the same path is left alone). Socket
/// files passed by systemd are not tracked.
#[derive(Debug, Default)]
pub struct SocketFiles(Vec<(PathBuf, u64, u64)>);

impl SocketFiles {
    /// Remove the unix socket files of `listeners` (those this process bound) on drop.
    pub fn track(&mut self, listeners: &[BoundListener]) {
        use std::os::unix::fs::MetadataExt;
        for l in listeners {
            if let (ListenAddr::Unix(path), false) = (&l.addr, l.activated)
                && let Ok(meta) = std::fs::symlink_metadata(path)
            {
                self.0.push((path.clone(), meta.dev(), meta.ino()));
            }
        }
    }
}

impl Drop for SocketFiles {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        for (path, dev, ino) in &self.0 {
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.dev() == *dev && m.ino() == *ino) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// Warn when others than the owner and group can reach a socket: a mode that gives "other"
/// any access, or a directory anyone may write to (anyone could then take the path first).
fn warn_if_exposed(path: &Path, mode: u32) {
    if mode & 0o007 != 0 {
        tracing::warn!(
            socket = %path.display(),
            mode = format!("{mode:04o}"),
            "server.socket_mode: the socket is open to every local user (mode beyond 0660)"
        );
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(meta) = std::fs::metadata(dir) {
        let bits = meta.permissions().mode();
        if bits & 0o002 != 0 {
            tracing::warn!(
                directory = %dir.display(),
                mode = format!("{:04o}", bits & 0o7777),
                sticky = bits & 0o1000 != 0,
                "server.listen: the socket's directory is world-writable; any local user could \
                 take the socket's path first: use a directory only herald can write \
                 (RuntimeDirectory=)"
            );
        }
    }
}

fn bind_unix(path: &Path, mode: u32, group: Option<u32>) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    warn_if_exposed(path, mode);
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
