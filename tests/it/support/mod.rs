//! What the integration tests share. Each module owns one kind of help; none of them asserts
//! anything about herald on its own (beyond "this helper worked"), the tests do.
//!
//! - [`daemon`]: a daemon in this process (loopback TCP and a temp unix socket), alone or in
//!   front of a DashScope double ([`spawn_daemon_with_double`]), and layered TOML configuration;
//! - [`process`]: `herald serve` as a separate process, and tests that must run in a process of
//!   their own (this binary, re-executed for one test);
//! - [`grpc`]: requests and the collection of `Synthesize` and `Speak` streams;
//! - [`audio`]: sample conversions, decoders and measurements (level, frequency, segments);
//! - [`dashscope`]: the DashScope test double (also compiled into the load and soak benches);
//! - [`logs`]: one process-wide log capture that watches for secrets;
//! - [`python`]: the Python interpreters the polyglot tests run, and the SDK check runner;
//! - [`rows`]: table-driven tests whose failures name their row;
//! - [`tls`]: a self-signed server certificate for the TLS tests;
//! - [`piper`]: where the Piper runtime and voice `.ci/setup` installs are;
//! - [`alsa`]: ALSA sandboxes for the cpal sink (feature `playback`).

#[cfg(feature = "playback")]
pub mod alsa;
pub mod audio;
pub mod daemon;
pub mod dashscope;
pub mod grpc;
pub mod logs;
#[cfg(feature = "piper")]
pub mod piper;
pub mod process;
pub mod python;
pub mod rows;
pub mod tls;

pub use audio::*;
pub use daemon::*;
pub use grpc::*;
pub use process::*;
pub use rows::each_row;
