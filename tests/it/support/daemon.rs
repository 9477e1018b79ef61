//! A daemon running in this process, on 127.0.0.1:0 and a temp unix socket, with its own cache
//! and state directories; alone ([`spawn_daemon`]) or with its DashScope engines pointed at a
//! double ([`spawn_daemon_with_double`]). Configuration is TOML, layered ([`layered`]) from the
//! fragments the tests share.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use herald::{
    config::{self, Env, ListenAddr, LoadOptions, Overrides},
    daemon::Daemon,
    pb::speech_client::SpeechClient,
    service::{self, ServeError},
};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::transport::{Channel, Endpoint};

use super::dashscope::DashScopeDouble;

/// The DashScope API key every double of these tests expects and every daemon sends (never to
/// be seen in a log or a status message).
pub const API_KEY: &str = "sk-test-4b1d2c3e5f60718293a4b5c6d7e8f901";

/// Short upstream timers: retries after 10 ms, a dead stream noticed within 1 s.
pub const FAST_UPSTREAM: &str =
    "[dashscope]\nretry_base_ms = 10\nidle_timeout_ms = 1000\nfirst_event_timeout_ms = 1000\n";

/// Every request reaches the engine, and a failure is not papered over: no cache, no fallback.
pub const ENGINES_ONLY: &str = "[cache]\nenabled = false\n[fallback]\nchain = []\n";

/// TOML fragments merged key by key, later ones winning: `layered(&[FAST_UPSTREAM,
/// "[dashscope]\nretry_base_ms = 3000\n"])` keeps the short timeouts but retries slowly.
pub fn layered(layers: &[&str]) -> String {
    fn merge(into: &mut toml::Table, from: toml::Table) {
        for (key, value) in from {
            match (into.get_mut(&key), value) {
                (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
                (_, value) => {
                    into.insert(key, value);
                }
            }
        }
    }
    let mut table = toml::Table::new();
    for layer in layers {
        let parsed: toml::Table = layer
            .parse()
            .unwrap_or_else(|e| panic!("a TOML layer of the test ({e}): {layer}"));
        merge(&mut table, parsed);
    }
    toml::to_string(&table).expect("TOML")
}

/// A daemon running in this process.
pub struct TestDaemon {
    pub tcp: SocketAddr,
    /// The OpenAI-compatible HTTP door's TCP address, when the configuration has
    /// `[http] listen` (`127.0.0.1:0` picks a port).
    pub http: Option<SocketAddr>,
    pub unix: PathBuf,
    /// The Wyoming door's listeners (`[wyoming] listen` of the configuration), as bound.
    pub wyoming: Vec<ListenAddr>,
    wyoming_stop: tokio_util::sync::CancellationToken,
    shutdown: Option<oneshot::Sender<()>>,
    join: Option<JoinHandle<Result<(), ServeError>>>,
    _dir: tempfile::TempDir,
}

/// Start a daemon with the default configuration plus `env` (HERALD_* variables).
pub async fn spawn_daemon_with(env: &[(&str, &str)]) -> TestDaemon {
    spawn_daemon_config("", env).await
}

/// Start a daemon with the default configuration.
pub async fn spawn_daemon() -> TestDaemon {
    spawn_daemon_with(&[]).await
}

/// Start a double expecting [`API_KEY`] and a daemon (configuration `toml`) whose DashScope
/// engines call it.
pub async fn spawn_daemon_with_double(toml: &str) -> (DashScopeDouble, TestDaemon) {
    let double = DashScopeDouble::start(API_KEY).await;
    let daemon = spawn_daemon_against(&double, toml, &[]).await;
    (double, daemon)
}

/// Start a daemon (configuration `toml`, environment `env`) whose DashScope engines call
/// `double` with [`API_KEY`].
pub async fn spawn_daemon_against(
    double: &DashScopeDouble,
    toml: &str,
    env: &[(&str, &str)],
) -> TestDaemon {
    let base_url = double.base_url();
    let mut pairs = vec![
        ("DASHSCOPE_API_KEY", API_KEY),
        ("DASHSCOPE_HTTP_BASE_URL", base_url.as_str()),
    ];
    pairs.extend_from_slice(env);
    spawn_daemon_config(toml, &pairs).await
}

/// Start a daemon with the DashScope engines only and short upstream timers, under
/// `dashscope.transport = transport`, whose HTTP and WebSocket URLs are `double`'s, plus `env`.
pub async fn spawn_daemon_on_transport(
    double: &DashScopeDouble,
    transport: &str,
    env: &[(&str, &str)],
) -> TestDaemon {
    let ws = double.ws_base_url();
    let toml = layered(&[
        FAST_UPSTREAM,
        ENGINES_ONLY,
        &format!("[dashscope]\ntransport = \"{transport}\"\n"),
    ]);
    let mut pairs = vec![("DASHSCOPE_WEBSOCKET_BASE_URL", ws.as_str())];
    pairs.extend_from_slice(env);
    spawn_daemon_against(double, &toml, &pairs).await
}

/// Start a daemon with the configuration file `toml` plus `env`.
pub async fn spawn_daemon_config(toml: &str, env: &[(&str, &str)]) -> TestDaemon {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("herald.sock");
    let config_file = dir.path().join("herald.toml");
    if !toml.is_empty() {
        std::fs::write(&config_file, toml).expect("write config");
    }
    let options = LoadOptions {
        config_path: Some(config_file).filter(|p| p.exists()),
        overrides: Overrides {
            listen: vec!["127.0.0.1:0".to_owned(), format!("unix:{}", sock.display())],
            insecure_no_auth: true,
            ..Overrides::default()
        },
    };
    // Every daemon gets its own cache directory (unless the test names one).
    let cache_dir = dir.path().join("cache").display().to_string();
    let mut pairs: Vec<(&str, &str)> = env.to_vec();
    if !env.iter().any(|(k, _)| *k == "CACHE_DIRECTORY") {
        pairs.push(("CACHE_DIRECTORY", &cache_dir));
    }
    // ... and its own state directory (the custom-voice registry).
    let state_dir = dir.path().join("state").display().to_string();
    if !env.iter().any(|(k, _)| *k == "STATE_DIRECTORY") {
        pairs.push(("STATE_DIRECTORY", &state_dir));
    }
    let config = config::load(&options, &Env::from_pairs(pairs)).expect("config");
    let daemon = Daemon::from_config(&config).await.expect("daemon");
    let listeners = service::bind(&config.listen, config.socket_mode)
        .await
        .expect("bind");
    let tcp = listeners
        .iter()
        .find_map(|l| match l.addr() {
            ListenAddr::Tcp(a) => Some(*a),
            ListenAddr::Unix(_) => None,
        })
        .expect("tcp listener");
    let wyoming_stop = tokio_util::sync::CancellationToken::new();
    let mut wyoming = Vec::new();
    if !config.wyoming.listen.is_empty() {
        let bound = herald::wyoming::bind(&config.wyoming, config.socket_mode, None)
            .await
            .expect("bind wyoming");
        wyoming = bound.addrs();
        tokio::spawn(herald::wyoming::serve(
            daemon.core(),
            config.wyoming.clone(),
            bound,
            config.connections,
            wyoming_stop.clone().cancelled_owned(),
        ));
    }
    let http_stop = tokio_util::sync::CancellationToken::new();
    let mut http = None;
    if !config.http.listen.is_empty() {
        let door = herald::openai::Door::new(
            daemon.core(),
            service::Access::from_config(&config),
            &config.http,
            config.max_message_bytes,
        );
        let bound = service::bind(&config.http.listen, config.socket_mode)
            .await
            .expect("bind http");
        http = bound.iter().find_map(|l| match l.addr() {
            ListenAddr::Tcp(a) => Some(*a),
            ListenAddr::Unix(_) => None,
        });
        tokio::spawn(door.serve(bound, http_stop.clone()));
    }
    let (tx, rx) = oneshot::channel::<()>();
    let join = tokio::spawn(daemon.serve(listeners, async move {
        let _ = rx.await;
        http_stop.cancel();
    }));
    TestDaemon {
        tcp,
        http,
        unix: sock,
        wyoming,
        wyoming_stop,
        shutdown: Some(tx),
        join: Some(join),
        _dir: dir,
    }
}

impl TestDaemon {
    /// A client over TCP.
    pub async fn client(&self) -> SpeechClient<Channel> {
        let ch = Endpoint::from_shared(format!("http://{}", self.tcp))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect tcp");
        SpeechClient::new(ch)
    }

    /// A raw channel over the unix socket.
    pub async fn unix_channel(&self) -> Channel {
        Endpoint::from_shared(format!("unix://{}", self.unix.display()))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect unix")
    }

    /// A client over the unix socket.
    pub async fn unix_client(&self) -> SpeechClient<Channel> {
        SpeechClient::new(self.unix_channel().await)
    }

    /// Signal shutdown and wait for `serve` to return (bounded).
    pub async fn stop(mut self) -> Result<(), ServeError> {
        self.wyoming_stop.cancel();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let join = self.join.take().expect("join handle");
        tokio::time::timeout(Duration::from_secs(10), join)
            .await
            .expect("daemon stops within 10 s")
            .expect("serve task")
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        self.wyoming_stop.cancel();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
