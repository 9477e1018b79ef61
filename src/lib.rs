//! herald: a local speech service.
//!
//! One daemon per machine (kiosk, robot, server) turns text into audio for any program that
//! speaks gRPC (`herald.v1.Speech`, see `proto/herald/v1/herald.proto`). The binary
//! (`src/main.rs`) is a thin shell over this library, so tests drive the real code.
//!
//! # Layout
//!
//! - [`config`]: TOML file + environment + flags → a validated [`config::Config`].
//! - [`service`]: the tonic server (herald.v1.Speech, health, reflection) on unix sockets and
//!   TCP; [`service::speech`] and [`service::cache`] hold the thin RPC handlers,
//!   [`service::status`] the one mapping
//!   from domain errors to gRPC statuses.
//! - [`provider`]: where a request's audio comes from: the cache, the engine (shared flights),
//!   or the fallback chain.
//! - [`cache`]: the disk cache ([`cache::store`]), its keys ([`cache::key`]) and single flight
//!   ([`cache::flight`]).
//! - [`pipeline`]: one synthesis job: engine stream → blocking audio thread → chunks.
//! - [`audio`]: synchronous stages: decode, resample, remix, gain, encode, chunk.
//! - [`engine`]: the [`engine::Synthesizer`] trait, the model registry, and the engines
//!   ([`engine::espeak`]).
//! - [`playback`]: local playback: one announcement queue per output device, sinks (cpal,
//!   wav, null).
//! - [`client`]: the gRPC client side used by `herald say` and `herald voices`.
//! - [`voices`]: custom voices (DashScope cloning and design): the registry of the voices herald
//!   created, sample checks, CreateVoice / GetVoice / DeleteVoice.
//! - [`shutdown`], [`telemetry`]: signals and logging.
//! - [`pb`]: generated protobuf/gRPC code.
//! - `fuzzing` (hidden): the doors the fuzz targets of `fuzz/` need, nothing more.

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
