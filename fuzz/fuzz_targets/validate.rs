//! Synthesize request validation over arbitrary protobuf bytes.
//! The body (input layout, properties) is `herald::fuzzing::validate`, shared with the
//! regression test tests/it/fuzz_regressions.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald::fuzzing::validate(data));
