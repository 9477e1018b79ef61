//! Contract tests (songbird's `input_tests.rs` pattern): each property of a trait is one
//! generic async function, and each implementation reachable from the library's public API
//! runs it in a test of its own, named `<implementation>::<property>`.
//!
//! - [`synthesizer`]: `engine::Synthesizer` (espeak-ng, the three DashScope engines against the
//!   double, and the cache's replay of a stored phrase);
//! - [`sink`]: `playback::Sink` (the clocked `null`, `wav` and capture sinks, and cpal through
//!   an ALSA sandbox).

mod sink;
mod synthesizer;
