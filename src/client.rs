//! The client side of the daemon's gRPC services, used by every client command of the `herald`
//! binary (`say`, `voices`, `devices`, `stop`, `cache …`, `voice …`).
//!
//! It finds the daemon ([`Target`]: a unix socket, by default where `herald serve` puts it, or
//! TCP) and opens a channel to it. It must not hold daemon state or print anything: everything
//! goes through the public gRPC interface, and the commands in `src/cli/` do the output.

use std::path::{Path, PathBuf};

use tonic::transport::{Channel, Endpoint};

use crate::{
    config::{Env, client_socket_candidates},
    pb::speech_client::SpeechClient,
};

/// Where the daemon is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A unix socket path.
    Unix(PathBuf),
    /// `HOST:PORT` over plain-text HTTP/2.
    Tcp(String),
}

impl Target {
    /// `--socket`/`--addr` if given, else the first default socket location that exists.
    pub fn resolve(
        socket: Option<PathBuf>,
        addr: Option<String>,
        env: &Env,
    ) -> Result<Self, String> {
        if let Some(addr) = addr {
            return Ok(Self::Tcp(addr));
        }
        if let Some(path) = socket {
            return Ok(Self::Unix(path));
        }
        let candidates = client_socket_candidates(env);
        candidates
            .iter()
            .find(|p| p.exists())
            .map(|p| Self::Unix(p.clone()))
            .ok_or_else(|| {
                let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
                format!(
                    "no herald socket found (tried {}); is `herald serve` running? Use --socket PATH or --addr HOST:PORT",
                    tried.join(", ")
                )
            })
    }

    fn endpoint(&self) -> Result<Endpoint, tonic::transport::Error> {
        match self {
            Self::Unix(path) => {
                Endpoint::from_shared(format!("unix://{}", absolute(path).display()))
            }
            Self::Tcp(addr) => Endpoint::from_shared(format!("http://{addr}")),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Tcp(a) => write!(f, "{a}"),
        }
    }
}

fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_owned();
    }
    std::env::current_dir().map_or_else(|_| path.to_owned(), |d| d.join(path))
}

/// Open a channel to the daemon (for any of its services).
pub async fn channel(target: &Target) -> Result<Channel, tonic::transport::Error> {
    target.endpoint()?.connect().await
}

/// Connect to the daemon's speech service (herald.v1.Speech).
pub async fn connect(target: &Target) -> Result<SpeechClient<Channel>, tonic::transport::Error> {
    Ok(SpeechClient::new(channel(target).await?))
}
