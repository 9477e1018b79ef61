//! The `herald` binary: `serve` (the daemon) and `check-config` here, and the gRPC client
//! commands (`say`, `voices`, `devices`, `stop`, `cache …`, `voice …`) in [`cli`].
//!
//! A thin shell over the library: it parses the command line and maps errors to exit codes. It
//! must not hold daemon logic (that lives in the library, where the tests drive it). `anyhow` is
//! used in this binary only.

#![forbid(unsafe_code)]

mod cli;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use herald::{daemon::Daemon, service, shutdown, systemd, telemetry};

use crate::cli::{Cli, Command, ConfigArgs};

/// jemalloc, with background threads purging freed pages after 1 s and no per-thread caches
/// (.cargo/config.toml): chosen by measurement at 1000 streams (benches/notes.md, "Memory"),
/// where 10 s after the load glibc's malloc still held 124 MB and jemalloc 25 MB (idle: 16 MB).
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// mimalloc, for comparisons (`--features mimalloc`).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// sysexits.h EX_USAGE: bad configuration or arguments.
const EX_USAGE: u8 = 64;
/// sysexits.h EX_UNAVAILABLE: the daemon cannot be reached.
const EX_UNAVAILABLE: u8 = 69;
/// tokio's blocking threads (cache file I/O, piper inference, voice preparation): a modest cap,
/// since no stream holds one.
const BLOCKING_THREADS: usize = 32;

/// An error with the exit code it maps to.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Self {
            code: 1,
            error: e.into(),
        }
    }
}

fn fail(code: u8, error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code,
        error: error.into(),
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `error` and its causes on one line, each cause once.
fn render(error: &anyhow::Error) -> String {
    herald::client::error_line(error.as_ref())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print to stdout and succeed; a bad command line (unknown or
        // conflicting flags, a missing argument) is a usage error: EX_USAGE, not clap's 2.
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EX_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // systemd socket activation: take the passed sockets while the process has one thread
    // (taking them clears LISTEN_FDS / LISTEN_PID from the environment).
    let activation = matches!(cli.command, Command::Serve(_)).then(service::Activation::from_env);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        // No stream holds a thread: the audio chain runs in its job task, heavy stages on the
        // CPU pool (`synthesis.cpu_threads`). Blocking threads serve only short or rare work:
        // cache file reads and writes, piper inference (≤ `piper.max_concurrent`), custom
        // voice sample preparation, startup scans. Made on demand, gone after 10 s idle.
        .max_blocking_threads(BLOCKING_THREADS)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args, activation).await,
            Command::CheckConfig(args) => check_config(args).await,
            Command::Say(args) => cli::say::run(*args).await,
            Command::Voices(args) => cli::voices::run(args).await,
            Command::Devices(args) => cli::devices::list(args).await,
            Command::Stop(args) => cli::devices::stop(args).await,
            Command::Cache(command) => cli::cache::run(command).await,
            Command::Voice(command) => cli::voice::run(command).await,
        }
    });
    // Do not wait for lingering blocking threads (an audio thread finishing a cancelled job).
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away (`herald voices | head`): done, as for any Unix
        // filter.
        Err(Failure { error, .. }) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(Failure { code, error }) => {
            eprintln!("herald: {}", render(&error));
            ExitCode::from(code)
        }
    }
}

/// What `serve` checks before opening anything, and nothing more: it creates no file or
/// directory and binds nothing (it runs as `ExecStartPre=`, and by hand).
async fn check_config(args: ConfigArgs) -> Result<(), Failure> {
    let config = args.load()?;
    herald::daemon::preflight(&config)
        .await
        .map_err(|e| fail(EX_USAGE, e))?;
    print!("{}", config.render());
    Ok(())
}

async fn serve(args: ConfigArgs, activation: Option<service::Activation>) -> Result<(), Failure> {
    // Before anything slow: a SIGTERM during start-up must stop us cleanly too.
    let stop = shutdown::signal();
    shutdown::ignore_hangup();
    let config = args.load()?;
    telemetry::init(&config.log_level, config.log_format);
    // Before the first job: the pool starts at the first heavy work item.
    herald::pipeline::pool::configure(config.synthesis.cpu_threads);
    let fd_limit = service::conn::raise_fd_limit();
    let daemon = Daemon::from_config(&config)
        .await
        .map_err(|e| fail(EX_USAGE, e))?;
    // Socket files this start created are removed however it ends (a later listener that
    // cannot be bound, a refused configuration, shutdown): none is left behind stale.
    let mut sockets = service::SocketFiles::default();
    let listeners = match activation.filter(|a| !a.is_empty()) {
        Some(activation) => {
            tracing::info!(
                sockets = activation.len(),
                "socket activation: serving on the sockets systemd passed (server.listen ignored)"
            );
            activation.listeners()
        }
        None => service::bind_with(&config.listen, config.socket_mode, config.socket_group).await,
    }
    .map_err(|e| fail(EX_UNAVAILABLE, e))?;
    sockets.track(&listeners);
    let limits = service::conn::fit_to_fd_limit(
        config.connections,
        listeners.len()
            + config.http.listen.len()
            + config.wyoming.listen.len()
            + usize::from(config.metrics_listen.is_some()),
        fd_limit,
    );
    let daemon = daemon.with_connections(limits);
    // A listener this configuration may not serve (a TCP socket passed by socket activation
    // without a token) is a configuration error: refused before READY=1, so that systemd sees a
    // failed start and not a service that dies after starting.
    daemon.check(&listeners).map_err(|e| fail(EX_USAGE, e))?;
    // The OpenAI-compatible HTTP door: bound and checked before READY=1 like gRPC's listeners,
    // stopped when shutdown begins.
    let http_stop = shutdown::CancellationToken::new();
    let http = if config.http.listen.is_empty() {
        None
    } else {
        let door = herald::openai::Door::new(
            daemon.core(),
            service::Access::from_config(&config),
            &config.http,
            config.max_message_bytes,
        )
        .with_connections(limits);
        let bound =
            service::bind_with(&config.http.listen, config.socket_mode, config.socket_group)
                .await
                .map_err(|e| fail(EX_UNAVAILABLE, e))?;
        sockets.track(&bound);
        door.check(&bound).map_err(|e| fail(EX_USAGE, e))?;
        Some(tokio::spawn(door.serve(bound, http_stop.clone())))
    };
    let metrics_stop = shutdown::CancellationToken::new();
    if let Some(addr) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for metrics on {addr}"))
            .map_err(|e| fail(EX_UNAVAILABLE, e))?;
        if !addr.ip().is_loopback() {
            tracing::warn!(%addr, "metrics are served without authentication on a non-loopback address");
        }
        tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "metrics at /metrics");
        let refresh = daemon.metrics_refresh();
        let stop = metrics_stop.clone().cancelled_owned();
        tokio::spawn(async move {
            if let Err(error) = herald::metrics::serve(listener, limits, refresh, stop).await {
                tracing::error!(%error, "the metrics listener failed");
            }
        });
    }
    let wyoming_stop = shutdown::CancellationToken::new();
    let wyoming = if config.wyoming.listen.is_empty() {
        None
    } else {
        let bound = herald::wyoming::bind(&config.wyoming, config.socket_mode, config.socket_group)
            .await
            .map_err(|e| fail(EX_UNAVAILABLE, e))?;
        sockets.track(bound.bound());
        if config
            .wyoming
            .listen
            .iter()
            .any(|a| matches!(a, herald::config::ListenAddr::Tcp(t) if !t.ip().is_loopback()))
        {
            tracing::warn!(
                "wyoming.allow_remote: the Wyoming door is served without authentication on a \
                 non-loopback address"
            );
        }
        let (core, settings) = (daemon.core(), config.wyoming.clone());
        let stop = wyoming_stop.clone().cancelled_owned();
        Some(tokio::spawn(herald::wyoming::serve(
            core, settings, bound, limits, stop,
        )))
    };
    let addrs: Vec<String> = listeners.iter().map(|l| l.addr().to_string()).collect();
    tracing::info!(version = env!("CARGO_PKG_VERSION"), listen = %addrs.join(", "), "herald ready");
    // Every listener is bound (connections queue from now on): tell systemd (Type=notify).
    systemd::ready(&format!("serving on {}", addrs.join(", ")));
    let watchdog = systemd::watchdog();
    let stop = {
        let wyoming_stop = wyoming_stop.clone();
        let stop_http = http_stop.clone();
        async move {
            stop.await;
            systemd::stopping();
            wyoming_stop.cancel();
            stop_http.cancel();
        }
    };
    let result = daemon.serve(listeners, stop).await;
    http_stop.cancel();
    if let Some(http) = http {
        match tokio::time::timeout(config.shutdown_grace, http).await {
            Ok(Ok(Err(error))) => tracing::error!(error = %error, "the HTTP door failed"),
            Ok(_) => {}
            Err(_) => tracing::warn!("HTTP responses still open after the grace period"),
        }
    }
    metrics_stop.cancel();
    wyoming_stop.cancel();
    if let Some(w) = wyoming {
        let _ = w.await;
    }
    if let Some(w) = watchdog {
        w.abort();
    }
    result?;
    Ok(())
}
