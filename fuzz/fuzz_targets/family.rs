//! The DashScope event decoders (CosyVoice, Qwen-TTS, MiniMax) over arbitrary SSE streams.
//! The body (input layout, properties) is `herald::fuzzing::family`, shared with the
//! regression test tests/it/fuzz_regressions.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald::fuzzing::family(data));
