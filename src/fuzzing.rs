//! The bodies of the fuzz targets of `fuzz/` (cargo-fuzz) and of their regression test
//! (tests/it/fuzz_regressions.rs, which replays the committed seeds and every crash found). Not
//! part of herald's API: hidden from the docs, and free to change with the targets.
//!
//! Each function takes arbitrary bytes, drives one parser of bytes that come from a network
//! peer, and panics only when a property fails (a panic is what libFuzzer reports). The parsers
//! themselves are herald's public modules; request validation, which lives behind the gRPC
//! handler, is reached through [`Validator`]. This module must not grow into a second API.

use std::{sync::LazyLock, time::Duration};

use prost::Message as _;
use secrecy::SecretString;
use tonic::Status;

use crate::{
    audio::{
        InputEncoding,
        decode::{decoder_for, open_decoder},
        wav::s16_header as wav_s16_header,
    },
    daemon::Daemon,
    engine::{
        Engines,
        dashscope::{
            Client, Settings as DashScopeSettings, Tuning,
            family::{Decoder, Family, Step},
            sse::{Event, Limits, Parser, SseError},
        },
    },
    pb,
    synthesis::Settings,
};

// === sse ===

/// Small SSE bounds, so that the fuzzer reaches them.
const SSE_LIMITS: Limits = Limits {
    max_line: 512,
    max_event: 1024,
};

fn parse_sse(chunks: &[&[u8]]) -> (Vec<Event>, Result<Option<Event>, SseError>) {
    let mut parser = Parser::new(SSE_LIMITS);
    let mut events = Vec::new();
    for chunk in chunks {
        if let Err(e) = parser.push(chunk, &mut events) {
            return (events, Err(e));
        }
    }
    (events, parser.finish())
}

/// The SSE parser over arbitrary bytes split at arbitrary points. Input: byte 0 = how many
/// split points follow (mod 16), then one byte per split point (its offset in 1/256ths of
/// the stream), then the stream. Properties: the events and the outcome do not depend on
/// where the stream was split, and no event is larger than the bound.
pub fn sse(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 16).min(rest.len());
    let (cuts, stream) = rest.split_at(n);
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|&c| usize::from(c) * stream.len() / 256)
        .collect();
    points.sort_unstable();
    let mut chunks = Vec::new();
    let mut at = 0;
    for p in points {
        chunks.push(&stream[at..p]);
        at = p;
    }
    chunks.push(&stream[at..]);

    let whole = parse_sse(&[stream]);
    let split = parse_sse(&chunks);
    assert_eq!(whole, split, "split at {chunks:?}");
    for e in &whole.0 {
        let size: usize = e.data.iter().map(String::len).sum();
        assert!(size <= SSE_LIMITS.max_event, "an event of {size} bytes");
        let _ = e.json();
    }
}

// === family ===

const RATES: [u32; 4] = [8000, 16000, 24000, 48000];

/// The DashScope event decoders of each family over an arbitrary SSE stream: SSE parser →
/// event JSON → `Decoder::event`, then `Decoder::end`. Input: byte 0 picks the family
/// (mod 3) and the rate, the rest is the SSE body. Property: the audio yielded is the audio
/// counted.
pub fn family(data: &[u8]) {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let family = Family::ALL[usize::from(sel % 3)];
    let rate = RATES[usize::from((sel / 3) % 4)];
    let mut decoder = Decoder::new(family, rate);
    let mut parser = Parser::new(Limits {
        max_line: 1 << 16,
        max_event: 1 << 16,
    });
    let mut events = Vec::new();
    if parser.push(body, &mut events).is_err() {
        return;
    }
    if let Ok(Some(last)) = parser.finish() {
        events.push(last);
    }
    let mut audio = 0u64;
    for event in events {
        let Some(Ok(json)) = event.json() else {
            continue;
        };
        match decoder.event(&json, event.http_status.unwrap_or(200), event.is_error()) {
            Ok(Step::Audio { data, .. }) => audio += data.len() as u64,
            Ok(Step::Nothing | Step::Finished) => {}
            Err(_) => return,
        }
    }
    if let Ok(Step::Audio { data, .. }) = decoder.end() {
        audio += data.len() as u64;
    }
    assert_eq!(audio, decoder.audio_bytes, "audio yielded vs. counted");
}

// === wav ===

/// Pushes `stream` into a push decoder of `encoding` in pieces of `step` bytes, decoding after
/// each piece (buffers of at most `max_frames`), then finishes it and drains it; checks that no
/// buffer is empty and that the frames stay below `frames_bound`. Returns the frames decoded.
fn push_through(
    encoding: InputEncoding,
    stream: &[u8],
    step: usize,
    max_frames: usize,
    frames_bound: usize,
) -> usize {
    let mut decoder = decoder_for(encoding);
    let mut frames = 0usize;
    let mut drain = |decoder: &mut dyn crate::audio::decode::PushDecoder| -> bool {
        // Every buffer holds at least one frame of at least one byte: the loop ends first.
        for _ in 0..=stream.len() + 2 {
            match decoder.decode(max_frames) {
                Ok(Some(buf)) => {
                    assert!(!buf.is_empty(), "an empty buffer");
                    frames += buf.frames();
                    assert!(
                        frames <= frames_bound,
                        "{frames} frames from {} bytes",
                        stream.len()
                    );
                }
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
        panic!(
            "the {encoding:?} decoder did not end on {} bytes",
            stream.len()
        );
    };
    for piece in stream.chunks(step.max(1)) {
        decoder.push(piece);
        if !drain(&mut *decoder) {
            return frames;
        }
    }
    decoder.finish();
    drain(&mut *decoder);
    frames
}

/// The WAV decoder (RIFF/WAVE header parser, then PCM) and the s16 header sniffer over
/// arbitrary bytes pushed in pieces of an arbitrary size. Input: byte 0 = the piece size − 1,
/// the rest is the stream. Properties: the decoder ends, never yields an empty buffer, never
/// more frames than the bytes could hold, and the pull adapter over a reader decodes the same
/// frames.
pub fn wav(data: &[u8]) {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let _ = wav_s16_header(stream);
    let step = usize::from(step) + 1;
    let pushed = push_through(InputEncoding::Wav, stream, step, 7, stream.len());
    let mut pulled = 0;
    if let Ok(mut decoder) = open_decoder(InputEncoding::Wav, std::io::Cursor::new(stream.to_vec()))
    {
        while let Ok(Some(buf)) = decoder.next_buffer() {
            pulled += buf.frames();
        }
    }
    assert_eq!(pushed, pulled, "pushed in pieces vs. read whole");
}

// === mp3 ===

/// The MP3 path (frame splitter, then symphonia's decoder packet by packet) over arbitrary
/// bytes, pushed in pieces as an engine's chunks arrive. Input: byte 0 = the piece size − 1,
/// the rest is the stream. Properties: the decoder ends (clean end or error), never yields an
/// empty or huge buffer, and never more than 1152 frames per 24 bytes (the smallest frame).
pub fn mp3(data: &[u8]) {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let bound = (stream.len() / 24 + 1) * 1152;
    push_through(
        InputEncoding::Mp3,
        stream,
        usize::from(step) + 1,
        512,
        bound,
    );
}

// === validate ===

/// herald's `Synthesize` validation over the three DashScope engines (no network: validation
/// never sends anything upstream).
pub struct Validator {
    daemon: Daemon,
}

impl Validator {
    /// A validator with the default limits and `cosyvoice-v3-flash` as the default model.
    pub fn new() -> Self {
        let client = Client::new(DashScopeSettings {
            api_key: SecretString::from("sk-fuzz"),
            api_key_source: "fuzzing".to_owned(),
            base_url: "http://127.0.0.1:9/api/v1".to_owned(),
            workspace_id: None,
            tuning: Tuning::default(),
        })
        .expect("an HTTP client with default settings");
        let settings = Settings {
            default_model: "cosyvoice-v3-flash".to_owned(),
            ..Settings::default()
        };
        Self {
            daemon: Daemon::new(
                Engines::new(client.engines()),
                settings,
                Duration::from_secs(1),
            ),
        }
    }

    /// Decode `bytes` as a `SynthesizeRequest` (as tonic would) and validate it. `Ok(false)`:
    /// the bytes are not a valid message (tonic answers before herald sees them).
    pub fn synthesize(&self, bytes: &[u8]) -> Result<bool, Status> {
        let Ok(req) = pb::SynthesizeRequest::decode(bytes) else {
            return Ok(false);
        };
        self.daemon.speech().prepare(req).map(|_| true)
    }
}

impl Default for Validator {
    fn default() -> Self {
        Self::new()
    }
}

/// Request validation: arbitrary protobuf bytes through the generated `SynthesizeRequest`
/// into herald's validation. Property: a refusal is INVALID_ARGUMENT with a short message
/// (a bad request is the client's fault, and its text is never echoed whole).
pub fn validate(data: &[u8]) {
    static VALIDATOR: LazyLock<Validator> = LazyLock::new(Validator::new);
    if let Err(status) = VALIDATOR.synthesize(data) {
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().len() < 1024, "a long message: {status:?}");
    }
}

/// A target's body.
pub type Target = fn(&[u8]);

/// Every target by name (the regression test replays `fuzz/corpus/<name>/` through these).
pub const TARGETS: [(&str, Target); 5] = [
    ("sse", sse),
    ("family", family),
    ("wav", wav),
    ("mp3", mp3),
    ("validate", validate),
];
