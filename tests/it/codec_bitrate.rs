//! Compressed bitrates through the public gRPC interface: about 45 s of real espeak-ng speech
//! (pauses, fricatives, voiced runs) as Ogg Opus and MP3 at several `bitrate_bps`; every byte
//! the client receives (container and headers included) over the decoded duration must be
//! within ±10% of the request, as ffmpeg's libopus and libmp3lame are on the same text.

use herald::pb::{self, audio_format::Encoding};

use crate::{pipeline_tones::opus_decode, support::*};

/// About 45 s of speech at espeak-ng's default rate (well under `max_text_chars`).
const TEXT: &str = "The quick brown fox jumps over the lazy dog. Herald is a local speech daemon \
    that turns text into speech for the programs of one machine. It speaks through a gRPC door, \
    an OpenAI compatible HTTP door and a Wyoming door, all over one synthesis core. Engines \
    include the DashScope cloud over HTTP and server sent events, and espeak-ng offline. The \
    audio pipeline decodes, resamples, remixes, applies gain and encodes to PCM, WAV, G.711, MP3, \
    Ogg Opus or FLAC, and streams chunks as soon as they are ready. A cache keeps synthesized \
    phrases on disk, and a playback queue speaks announcements on a local device, in order, with \
    priorities and expiry.";

/// One request: `(bytes received, decoded seconds)`.
async fn bytes_and_secs(
    client: &mut pb::speech_client::SpeechClient<tonic::transport::Channel>,
    encoding: Encoding,
    rate: u32,
    channels: u32,
    bitrate_bps: u32,
) -> (usize, f64) {
    let req = pb::SynthesizeRequest {
        bitrate_bps,
        ..request(TEXT, encoding, rate, channels)
    };
    let got = synthesize(client, req).await.expect("synthesize");
    let bytes = got.bytes();
    let secs = match encoding {
        Encoding::OggOpus => {
            let (_, ch, x) = opus_decode(bytes.clone());
            (x.len() / ch) as f64 / 48_000.0
        }
        _ => (got.samples().len() / channels as usize) as f64 / f64::from(rate),
    };
    (bytes.len(), secs)
}

/// Asserts the measured bitrate of every case, after printing all of them.
async fn check(cases: &[(Encoding, u32, u32, u32, u32)]) {
    let daemon = spawn_daemon().await;
    let mut client = daemon.client().await;
    let mut failures = Vec::new();
    for &(encoding, rate, channels, bitrate_bps, expected) in cases {
        let (bytes, secs) =
            bytes_and_secs(&mut client, encoding, rate, channels, bitrate_bps).await;
        assert!(secs > 30.0, "{encoding:?}: only {secs:.1} s of speech");
        let measured = bytes as f64 * 8.0 / secs;
        let off = measured / f64::from(expected) - 1.0;
        eprintln!(
            "{encoding:?} {rate} Hz x{channels} bitrate_bps {bitrate_bps}: {bytes} bytes over \
             {secs:.2} s = {:.2} kb/s ({:+.1}% of {} kb/s)",
            measured / 1e3,
            off * 100.0,
            expected / 1_000
        );
        if off.abs() > 0.10 {
            failures.push(format!(
                "{encoding:?} {rate} Hz x{channels} at {bitrate_bps} bps: {:.2} kb/s is {:+.1}% off {} kb/s",
                measured / 1e3,
                off * 100.0,
                expected / 1_000
            ));
        }
    }
    assert!(failures.is_empty(), "outside ±10%: {failures:#?}");
}

#[tokio::test]
async fn ogg_opus_bytes_over_decoded_duration_are_within_10_percent_of_bitrate_bps() {
    use Encoding::OggOpus;
    check(&[
        (OggOpus, 24_000, 1, 24_000, 24_000),
        (OggOpus, 48_000, 1, 32_000, 32_000),
        // 0 = the default, 32 kb/s mono.
        (OggOpus, 24_000, 1, 0, 32_000),
        (OggOpus, 16_000, 1, 16_000, 16_000),
        (OggOpus, 48_000, 2, 64_000, 64_000),
    ])
    .await;
}

#[tokio::test]
async fn mp3_bytes_over_decoded_duration_are_within_10_percent_of_bitrate_bps() {
    use Encoding::Mp3;
    check(&[
        (Mp3, 24_000, 1, 64_000, 64_000),
        (Mp3, 44_100, 1, 128_000, 128_000),
        // 0 = the default, 128 kb/s stereo.
        (Mp3, 48_000, 2, 0, 128_000),
    ])
    .await;
}
