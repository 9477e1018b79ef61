//! The symphonia-backed MP3 decoding path over arbitrary bytes.
//! The body (input layout, properties) is `herald::fuzzing::mp3`, shared with the
//! regression test tests/it/fuzz_regressions.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald::fuzzing::mp3(data));
