//! The SSE parser over arbitrary bytes split at arbitrary points.
//! The body (input layout, properties) is `herald::fuzzing::sse`, shared with the
//! regression test tests/it/fuzz_regressions.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald::fuzzing::sse(data));
