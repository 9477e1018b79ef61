//! herald's integration tests, as one binary: each module drives the library, the daemon (in
//! this process or as the real `herald` binary) or the test double of DashScope from the
//! outside; `support` holds what they share.

mod support;

mod abuse;
mod architecture;
mod cache_grpc;
mod cancellation;
mod cli;
mod cli_connect;
mod cli_ux;
mod codec_bitrate;
mod config;
mod contracts;
mod dashscope_double;
mod dashscope_grpc;
mod dashscope_ws;
mod dashscope_ws_double;
mod fault_storm;
mod fuzz_regressions;
mod go_client;
mod grpcurl;
mod hardening_conn;
mod hardening_core;
mod limits;
mod metrics;
mod openai_http;
mod pipeline_tones;
#[cfg(feature = "piper")]
mod piper;
#[cfg(feature = "playback")]
mod playback_alsa;
#[cfg(feature = "playback")]
mod playback_alsa_queue;
mod playback_grpc;
mod python_client;
mod security;
mod stream_threads;
mod synthesize_grpc;
mod synthesize_stream;
mod synthesize_stream_ws;
mod systemd;
mod voices_double;
mod voices_grpc;
mod voices_recovery;
mod wyoming;
