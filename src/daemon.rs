//! The composition root: a validated [`Config`] in, a running daemon's parts out.
//!
//! [`Daemon::from_config`] builds the engines the configuration enables (espeak-ng, the
//! DashScope families over one client), opens the custom-voice registry and the audio cache,
//! keeps the fallback steps some engine serves, checks the default model and voice against the
//! built engines, and wires the provider, playback and the gRPC [`Server`] together;
//! [`preflight`] runs the same checks without opening anything, for `check-config`. It sits
//! above every door, next to `main`: the doors and the core never build their own
//! dependencies.
//!
//! This module owns the wiring only: it must not validate configuration values (the config
//! module does; what needs the built engines is checked here with the config's messages),
//! handle requests, or hold audio or engine logic.

use std::{future::Future, sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::{
    cache::Cache,
    config::{Config, ConfigError, TcpAuth},
    engine::{EngineError, Engines, Synthesizer, dashscope, espeak::Espeak},
    playback::{PipelineSource, Playback, PlaybackSettings, Registry},
    provider::{FallbackStep, Provider},
    service::{Access, BoundListener, Refused, ServeError, Server, SpeechService},
    synthesis::{Core, Settings},
};

/// Errors building the daemon from a configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// An engine could not be set up.
    #[error("engine setup failed")]
    Engine(#[from] EngineError),
    /// The configuration names something the built engines do not serve (the default model
    /// or voice).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The custom-voice registry could not be read.
    #[error("voices.directory: cannot read the voice registry")]
    Registry(#[source] std::io::Error),
    /// The access policy refuses the configuration (TLS rustls does not take).
    #[error(transparent)]
    Access(#[from] Refused),
    /// A set-up task (opening the voice registry or the cache) panicked.
    #[error("{task}")]
    Task {
        /// What the task did: "voices" or "cache".
        task: &'static str,
        /// Why it ended.
        #[source]
        source: tokio::task::JoinError,
    },
}

/// What `serve` refuses about a validated configuration beyond what validation refuses, checked
/// before anything is opened or bound: a TLS certificate and key rustls does not take, an engine
/// that cannot be set up (espeak-ng that does not run or lacks the default voice), a default
/// model no configured engine serves (or an `[http.models]` entry naming one), a default voice its
/// engine does not have. `check-config` runs this (so that it refuses what `serve` would), and
/// [`Daemon::from_config`] runs the same checks first. It creates nothing: it builds the engines (espeak-ng lists its voices; the
/// DashScope client sends nothing) and drops them.
pub async fn preflight(config: &Config) -> Result<(), StartError> {
    checked_engines(config).await.map(drop)
}

/// The checks of [`preflight`], keeping what they built: the engines and the DashScope client.
async fn checked_engines(
    config: &Config,
) -> Result<(Engines, Option<Arc<dashscope::Client>>), StartError> {
    Access::from_config(config).check_tls()?;
    let mut engines: Vec<Arc<dyn Synthesizer>> = Vec::new();
    if let Some(settings) = &config.espeak {
        engines.push(Arc::new(Espeak::new(settings.clone()).await?));
    }
    #[cfg(feature = "piper")]
    if let Some(settings) = &config.piper {
        engines.push(Arc::new(
            crate::engine::piper::Piper::new(settings.clone()).await,
        ));
    }
    let mut upstream = None;
    if let Some(settings) = &config.dashscope {
        let client = dashscope::Client::new(settings.clone())?;
        engines.extend(client.engines());
        upstream = Some(client);
    }
    let engines = Engines::new(engines);
    check_defaults(&config.synthesis, &engines)?;
    // An OpenAI model name mapped to a model nothing serves would fail every request using it.
    for (alias, model) in &config.http.models {
        if engines.for_model(model).is_none() {
            return Err(ConfigError::invalid(
                "http.models",
                format!("{alias:?} = {model:?}: no configured engine serves this model"),
            )
            .into());
        }
    }
    Ok((engines, upstream))
}

/// The daemon: the gRPC server over the composed engines, cache, playback and custom voices.
pub struct Daemon {
    server: Server,
    provider: Arc<Provider>,
}

impl Daemon {
    /// Build the engines the configuration asks for and check the default model and voice
    /// ([`preflight`]), then open the voice registry and the cache.
    pub async fn from_config(config: &Config) -> Result<Self, StartError> {
        let (engines, upstream) = checked_engines(config).await?;
        for engine in engines.all() {
            engine.serving();
        }
        if let TcpAuth::InsecureLoopbackOnly = config.tcp_auth {
            tracing::warn!(
                "--insecure-no-auth (server.insecure_no_auth): loopback TCP listeners are served \
                 without a bearer token; any local user or process can use them"
            );
        }
        let voices_settings = config.voices.clone();
        let voices = tokio::task::spawn_blocking(move || {
            crate::voices::Manager::open(voices_settings, upstream)
        })
        .await
        .map_err(|source| StartError::Task {
            task: "voices",
            source,
        })?
        .map_err(StartError::Registry)?;
        let mut fallback = Vec::new();
        for step in &config.fallback {
            match step {
                FallbackStep::Model { model, .. } if engines.for_model(model).is_none() => {
                    tracing::warn!(%model, "fallback.chain: no configured engine serves this model; step skipped");
                }
                step => fallback.push(step.clone()),
            }
        }
        let cache = match &config.cache {
            None => {
                let why = config.cache_off.as_deref().unwrap_or("disabled");
                tracing::warn!(%why, "running without the audio cache");
                None
            }
            Some(c) => {
                let c = c.clone();
                let dir = c.directory.clone();
                match tokio::task::spawn_blocking(move || Cache::open(c)).await {
                    Ok(Ok(cache)) => {
                        tracing::info!(directory = %dir.display(), "cache open");
                        Some(Arc::new(cache))
                    }
                    Ok(Err(e)) => {
                        // A kiosk keeps speaking without its cache rather than not at all.
                        tracing::error!(directory = %dir.display(), error = %e, "cannot open the cache; running without it");
                        None
                    }
                    Err(source) => {
                        return Err(StartError::Task {
                            task: "cache",
                            source,
                        });
                    }
                }
            }
        };
        let mut daemon = Self::with_parts(
            Arc::new(Provider::new(engines, cache, fallback)),
            config.synthesis.clone(),
            config.playback.clone(),
            config.shutdown_grace,
            Arc::new(voices),
        );
        daemon.server = daemon
            .server
            .with_access(Access::from_config(config))
            .with_max_message_bytes(config.max_message_bytes)
            .with_connections(config.connections);
        Ok(daemon)
    }

    /// The connection limits of the gRPC listeners (`serve` lowers the configured cap to fit
    /// the open-file limit: [`crate::service::conn::fit_to_fd_limit`]).
    pub fn with_connections(mut self, limits: crate::config::ConnectionLimits) -> Self {
        self.server = self.server.with_connections(limits);
        self
    }

    /// A daemon over explicit engines and settings, with default playback settings, no cache
    /// and no fallback (tests, embedding).
    pub fn new(engines: Engines, settings: Settings, grace: Duration) -> Self {
        Self::with_parts(
            Arc::new(Provider::new(engines, None, Vec::new())),
            settings,
            PlaybackSettings::default(),
            grace,
            Arc::new(crate::voices::Manager::disabled()),
        )
    }

    /// A daemon over a provider (engines, cache, fallback), settings and playback settings.
    pub fn with_parts(
        provider: Arc<Provider>,
        settings: Settings,
        playback: PlaybackSettings,
        grace: Duration,
        voices: Arc<crate::voices::Manager>,
    ) -> Self {
        let jobs = CancellationToken::new();
        let playback = Arc::new(Playback::new(
            playback.clone(),
            Arc::new(Registry::new(playback)),
            Arc::new(PipelineSource::new(Arc::clone(&provider))),
            jobs.clone(),
        ));
        let core = Arc::new(Core::new(
            Arc::clone(&provider),
            voices,
            settings,
            jobs.clone(),
        ));
        let speech = SpeechService::new(core, playback);
        Self {
            server: Server::new(speech, jobs, grace),
            provider,
        }
    }

    /// The synthesis core every door calls: the Wyoming door and the OpenAI-compatible HTTP door
    /// ([`crate::openai::Door`]) are served next to the gRPC one over it.
    pub fn core(&self) -> Arc<Core> {
        Arc::clone(self.server.speech().core())
    }

    /// The Speech service (the fuzz targets reach request validation through it).
    pub(crate) fn speech(&self) -> &SpeechService {
        self.server.speech()
    }

    /// What refreshes the metrics that mirror state (cache size) before a scrape.
    pub fn metrics_refresh(&self) -> Arc<dyn Fn() + Send + Sync> {
        let cache = self.provider.cache().cloned();
        Arc::new(move || {
            if let Some(cache) = &cache {
                let stats = cache.stats();
                let m = crate::metrics::metrics();
                m.cache_bytes
                    .set(i64::try_from(stats.store.bytes).unwrap_or(i64::MAX));
                m.cache_entries
                    .set(i64::try_from(stats.store.entries).unwrap_or(i64::MAX));
            }
        })
    }

    /// Refuse `listeners` the server would not serve (a TCP listener without a token, passed by
    /// socket activation): see [`Server::check`]. Call it before reporting ready.
    pub fn check(&self, listeners: &[BoundListener]) -> Result<(), ServeError> {
        self.server.check(listeners)
    }

    /// Serve on `listeners` until `shutdown` resolves: see [`Server::serve`].
    pub async fn serve(
        self,
        listeners: Vec<BoundListener>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        self.server.serve(listeners, shutdown).await
    }
}

/// The default model must be served by a built engine, and the default voice must be one of
/// its voices (espeak-ng's list is only known once the engine has read it).
fn check_defaults(settings: &Settings, engines: &Engines) -> Result<(), ConfigError> {
    let model = &settings.default_model;
    let Some(engine) = engines.for_model(model) else {
        return Err(ConfigError::invalid(
            "synthesis.default_model",
            format!("{model:?} is not served by any configured engine"),
        ));
    };
    if let Some(voice) = &settings.default_voice {
        engine
            .check_voice(model, voice)
            .map_err(|refused| ConfigError::invalid("synthesis.default_voice", refused.0))?;
    }
    Ok(())
}
