//! The WAV header parser and PCM decoder over arbitrary bytes, read in arbitrary chunks.
//! The body (input layout, properties) is `herald::fuzzing::wav`, shared with the
//! regression test tests/it/fuzz_regressions.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald::fuzzing::wav(data));
