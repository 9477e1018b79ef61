//! herald: a local speech service.
//!
//! One daemon per machine (kiosk, robot, server) turns text into audio for any program that
//! speaks gRPC (`herald.v1.Speech`, see `proto/herald/v1/herald.proto`). The binary
//! (`src/main.rs`) is a thin shell over this library, so tests drive the real code.
//!
//! # Layout
//!
//! One core, several doors. The doors translate a wire format and map domain errors; the core
//! below them knows no wire format (no tonic, prost or generated types; the architecture test
//! in `tests/` checks it).
//!
//! Doors and the process:
//! - [`service`]: the gRPC door (herald.v1.Speech, herald.v1.Cache, health, reflection) on unix
//!   sockets and TCP: listeners, bearer-token auth, the thin handlers, and [`service::status`],
//!   the one mapping from domain errors to gRPC statuses.
//! - [`wyoming`]: the Wyoming door (Home Assistant): `describe` → `info`, `synthesize` and the
//!   streaming `synthesize-start`/`-chunk`/`-stop` → audio events, domain errors → `error`
//!   events, on TCP and unix sockets.
//! - [`openai`]: the OpenAI-compatible HTTP door (`POST /v1/audio/speech`, `GET /v1/models`,
//!   `GET /v1/audio/voices`) over the same core, with the bearer-token and TLS rules of gRPC's
//!   TCP listeners, and its one mapping from domain errors to HTTP statuses.
//! - [`daemon`]: the composition root: builds engines, cache, fallback chain, custom voices,
//!   playback and the synthesis core from a [`config::Config`], and serves them.
//! - [`client`]: the gRPC client side used by the CLI's client commands (`src/cli/`, in the
//!   binary).
//! - [`metrics`], [`systemd`], [`shutdown`], [`telemetry`]: Prometheus metrics, sd_notify and
//!   the watchdog, signals, logging.
//! - [`pb`]: generated protobuf/gRPC code.
//! - `fuzzing` (hidden): the doors the fuzz targets of `fuzz/` need, nothing more.
//!
//! The core:
//! - [`synthesis`]: the owner of a job: validates a door-neutral request, admits it under
//!   herald's limits, opens its source through the provider, runs the pipeline and yields
//!   events (info, audio, word timings, summary) or one domain error.
//! - [`error`]: the domain error (a kind mirroring the gRPC codes, and a client message).
//! - [`provider`]: where a job's audio comes from: the cache, the engine (shared flights), or
//!   the fallback chain.
//! - [`pipeline`]: the audio half of a job: engine stream → push decoder → audio chain in bounded
//!   work items (heavy ones on the shared CPU pool, [`pipeline::pool`]) → chunks.
//! - [`audio`]: synchronous stages: decode, resample, remix, gain, join fades, encode, chunk;
//!   WAV headers; output-format negotiation.
//! - [`engine`]: the [`engine::Synthesizer`] trait, the model registry, and the engines
//!   ([`engine::espeak`], [`engine::dashscope`]).
//! - [`cache`]: the disk cache ([`cache::store`]), its keys ([`cache::key`]) and single flight
//!   ([`cache::flight`]).
//! - [`playback`]: local playback: one announcement queue per output device, sinks (cpal,
//!   wav, null).
//! - [`voices`]: custom voices (DashScope cloning and design): the registry of the voices
//!   herald created, sample checks, create / get / delete on domain types.
//! - [`config`]: TOML file + environment + flags → a validated [`config::Config`] holding each
//!   domain's own settings type.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

pub mod audio;
pub mod cache;
pub mod client;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod openai;
pub mod pb;
pub mod pipeline;
pub mod playback;
pub mod provider;
pub mod service;
pub mod shutdown;
pub mod synthesis;
pub mod systemd;
pub mod telemetry;
pub mod voices;
pub mod wyoming;
