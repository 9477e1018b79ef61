//! The audio pipeline through the public gRPC interface, on generated tones: a tone engine
//! (a real `Synthesizer`, registered in an in-process daemon) sends WAV, raw PCM or MP3 in
//! odd-sized pieces; the client asserts on the audio it gets back: frequency (FFT, ±1 Hz),
//! exact length, every encoding, every rate pair.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use herald::{
    audio::{AudioSpec, InputEncoding},
    config::ListenAddr,
    daemon::Daemon,
    engine::{
        EngineError, Engines, Refused, SynthEvent, SynthStream, SynthesisRequest, Synthesizer,
        VoiceInfo,
    },
    pb::{self, audio_format::Encoding, speech_client::SpeechClient},
    service,
    synthesis::Settings,
};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::support::*;

const RATES: [u32; 7] = [8_000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000];
/// Odd piece size, so headers, samples and frames split anywhere.
const PIECE: usize = 997;

/// How the tone engine packages its audio.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Packaging {
    /// WAV with real sizes.
    Wav,
    /// WAV whose header claims this data size (0 or 0x7FFFFFFF: streaming placeholders).
    WavClaiming(u32),
    /// Headerless s16le.
    Pcm,
}

/// Model names: "tone-wav-24000", "tone-pcm-16000", "tone-wav0-22050", "tone-wavmax-8000",
/// "tone-mp3" (MP3 bytes given at construction). The text is the tone frequency in Hz; every tone
/// lasts exactly one second.
struct ToneEngine {
    mp3: Option<Bytes>,
    /// For "tone-gated-*": the engine sends the first half, then waits for this gate.
    gate: Arc<tokio::sync::Notify>,
}

fn parse_model(model: &str) -> Option<(Packaging, u32)> {
    let rest = model.strip_prefix("tone-")?;
    let (kind, rate) = rest.split_once('-')?;
    let rate: u32 = rate.parse().ok()?;
    let packaging = match kind {
        "gated" => Packaging::Pcm,
        "wav" => Packaging::Wav,
        "wav0" => Packaging::WavClaiming(0),
        "wavmax" => Packaging::WavClaiming(0x7FFF_FFFF),
        "pcm" => Packaging::Pcm,
        _ => return None,
    };
    Some((packaging, rate))
}

fn tone_s16(freq: f64, rate: u32) -> Vec<u8> {
    (0..rate)
        .flat_map(|i| {
            let v =
                0.5 * (2.0 * std::f64::consts::PI * freq * f64::from(i) / f64::from(rate)).sin();
            ((v * 32767.0).round() as i16).to_le_bytes()
        })
        .collect()
}

fn wav_header(rate: u32, data_len: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(44);
    h.extend_from_slice(b"RIFF");
    h.extend_from_slice(&data_len.saturating_add(36).to_le_bytes());
    h.extend_from_slice(b"WAVEfmt ");
    h.extend_from_slice(&16u32.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&rate.to_le_bytes());
    h.extend_from_slice(&(rate * 2).to_le_bytes());
    h.extend_from_slice(&2u16.to_le_bytes());
    h.extend_from_slice(&16u16.to_le_bytes());
    h.extend_from_slice(b"data");
    h.extend_from_slice(&data_len.to_le_bytes());
    h
}

#[async_trait::async_trait]
impl Synthesizer for ToneEngine {
    fn name(&self) -> &'static str {
        "tone"
    }
    fn serves_model(&self, model: &str) -> bool {
        model == "tone-mp3" || parse_model(model).is_some()
    }
    fn default_voice(&self, _model: &str) -> String {
        "sine".into()
    }
    fn voices(&self) -> Vec<VoiceInfo> {
        Vec::new()
    }
    fn check_voice(&self, _model: &str, voice: &str) -> Result<(), Refused> {
        if voice == "sine" {
            Ok(())
        } else {
            Err(Refused(format!("unknown voice {voice:?}")))
        }
    }
    fn native_sample_rate(&self, model: &str, _voice: &str) -> u32 {
        parse_model(model).map_or(24_000, |(_, r)| r)
    }
    async fn synthesize(&self, req: SynthesisRequest) -> Result<SynthStream, EngineError> {
        let (encoding, bytes) = if req.model == "tone-mp3" {
            (
                InputEncoding::Mp3,
                self.mp3.clone().expect("mp3 configured").to_vec(),
            )
        } else {
            let (packaging, rate) = parse_model(&req.model).expect("served model");
            let freq: f64 = req.text.trim().parse().expect("text is a frequency");
            let pcm = tone_s16(freq, rate);
            match packaging {
                Packaging::Pcm => (
                    InputEncoding::Pcm16Le(AudioSpec::new(rate, 1).unwrap()),
                    pcm,
                ),
                Packaging::Wav | Packaging::WavClaiming(_) => {
                    let claimed = match packaging {
                        Packaging::WavClaiming(c) => c,
                        _ => pcm.len() as u32,
                    };
                    let mut v = wav_header(rate, claimed);
                    v.extend_from_slice(&pcm);
                    (InputEncoding::Wav, v)
                }
            }
        };
        let mut events: Vec<Result<SynthEvent, EngineError>> = bytes
            .chunks(PIECE)
            .map(|c| {
                Ok(SynthEvent::Audio {
                    encoding,
                    data: Bytes::copy_from_slice(c),
                })
            })
            .collect();
        events.push(Ok(SynthEvent::Finished {
            characters: None,
            upstream_request_ids: vec!["tone-1".into()],
        }));
        if req.model.starts_with("tone-gated-") {
            use futures::StreamExt;
            let rest = events.split_off(events.len() / 2);
            let gate = Arc::clone(&self.gate);
            let wait = futures::stream::once(async move { gate.notified().await })
                .filter_map(|()| async { None });
            return Ok(futures::stream::iter(events)
                .chain(wait)
                .chain(futures::stream::iter(rest))
                .boxed());
        }
        Ok(Box::pin(futures::stream::iter(events)))
    }
}

struct ToneDaemon {
    client: SpeechClient<Channel>,
    stop: CancellationToken,
    gate: Arc<tokio::sync::Notify>,
}

async fn tone_daemon(mp3: Option<Bytes>) -> ToneDaemon {
    let gate = Arc::new(tokio::sync::Notify::new());
    let engines = Engines::new(vec![Arc::new(ToneEngine {
        mp3,
        gate: Arc::clone(&gate),
    })]);
    let settings = Settings {
        default_model: "tone-wav-24000".into(),
        default_voice: None,
        max_text_chars: 100,
        max_concurrent: 8,
        ..Settings::default()
    };
    let daemon = Daemon::new(engines, settings, Duration::from_secs(2));
    let listeners = service::bind(&[ListenAddr::Tcp("127.0.0.1:0".parse().unwrap())], 0o660)
        .await
        .expect("bind");
    let ListenAddr::Tcp(addr) = listeners[0].addr().clone() else {
        unreachable!()
    };
    let stop = CancellationToken::new();
    tokio::spawn(daemon.serve(listeners, stop.clone().cancelled_owned()));
    let client = SpeechClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    ToneDaemon { client, stop, gate }
}

impl Drop for ToneDaemon {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn tone_request(
    freq: u32,
    model: &str,
    encoding: Encoding,
    rate: u32,
    channels: u32,
) -> pb::SynthesizeRequest {
    pb::SynthesizeRequest {
        model: model.into(),
        ..request(&freq.to_string(), encoding, rate, channels)
    }
}

#[tokio::test]
async fn every_rate_pair_keeps_the_tone_and_the_exact_length() {
    let mut d = tone_daemon(None).await;
    for from in RATES {
        for to in RATES {
            let freq = 1_000;
            let got = synthesize(
                &mut d.client,
                tone_request(freq, &format!("tone-wav-{from}"), Encoding::PcmF32le, to, 1),
            )
            .await
            .unwrap_or_else(|s| panic!("{from}->{to}: {s:?}"));
            let x = f32le_to_f32(&got.bytes());
            let expected = (f64::from(to) * 1.0).round() as usize; // one second in, one second out
            assert_eq!(x.len(), expected, "{from}->{to}: length");
            assert_eq!(got.summary().samples, expected as u64);
            let f = peak_frequency(&x, to);
            assert!((f - f64::from(freq)).abs() <= 1.0, "{from}->{to}: {f} Hz");
            // Level kept: a 0.5 sine has RMS 0.354.
            let r = rms(&x[to as usize / 10..to as usize * 9 / 10]);
            assert!((r - 0.3536).abs() < 0.01, "{from}->{to}: rms {r}");
        }
    }
}

#[tokio::test]
async fn every_encoding_round_trips_a_tone() {
    let mut d = tone_daemon(None).await;
    for encoding in [
        Encoding::PcmS16le,
        Encoding::PcmF32le,
        Encoding::Wav,
        Encoding::Mulaw,
        Encoding::Alaw,
    ] {
        for channels in [1u32, 2] {
            let got = synthesize(
                &mut d.client,
                tone_request(440, "tone-pcm-24000", encoding, 16_000, channels),
            )
            .await
            .expect("synthesize");
            assert_eq!(got.format().encoding, encoding as i32);
            let all = got.samples();
            assert_eq!(
                all.len(),
                16_000 * channels as usize,
                "{encoding:?} x{channels}"
            );
            assert_eq!(got.summary().samples, 16_000);
            for ch in 0..channels as usize {
                let x: Vec<f32> = all
                    .iter()
                    .skip(ch)
                    .step_by(channels as usize)
                    .copied()
                    .collect();
                let f = peak_frequency(&x, 16_000);
                assert!((f - 440.0).abs() <= 1.0, "{encoding:?} ch{ch}: {f} Hz");
            }
        }
    }
}

#[tokio::test]
async fn a_wav_stream_whose_header_lies_about_its_size_still_decodes_fully() {
    let mut d = tone_daemon(None).await;
    for model in ["tone-wav0-22050", "tone-wavmax-22050"] {
        let got = synthesize(
            &mut d.client,
            tone_request(700, model, Encoding::PcmS16le, 0, 1),
        )
        .await
        .expect("synthesize");
        let x = s16_to_f32(&got.bytes());
        assert_eq!(x.len(), 22_050, "{model}");
        let f = peak_frequency(&x, 22_050);
        assert!((f - 700.0).abs() <= 1.0, "{model}: {f}");
        // The tail is there: the last 50 ms carry the tone.
        assert!(rms(&x[x.len() - 1_102..]) > 0.3, "{model}: tail");
    }
}

#[tokio::test]
async fn an_mp3_upstream_is_decoded_resampled_and_kept_in_tune() {
    // A one-second 24 kHz mono 440 Hz MP3, made by ffmpeg (installed by .ci/setup).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tone.mp3");
    let status = std::process::Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=24000:duration=1",
        ])
        .args(["-ac", "1", "-c:a", "libmp3lame", "-b:a", "48k"])
        .arg(&path)
        .status()
        .expect("ffmpeg is installed by .ci/setup");
    assert!(status.success());
    let mp3 = Bytes::from(std::fs::read(&path).unwrap());
    let mut d = tone_daemon(Some(mp3)).await;
    let got = synthesize(
        &mut d.client,
        tone_request(0, "tone-mp3", Encoding::PcmF32le, 16_000, 1),
    )
    .await
    .expect("synthesize");
    let x = f32le_to_f32(&got.bytes());
    // Within one MP3 frame (576 samples at 24 kHz = 384 at 16 kHz) of one second.
    assert!((x.len() as i64 - 16_000).abs() <= 384, "{} frames", x.len());
    let f = peak_frequency(&x, 16_000);
    assert!((f - 440.0).abs() <= 1.0, "{f} Hz");
    assert_eq!(
        got.summary().upstream_request_ids,
        vec!["tone-1".to_owned()]
    );
}

/// A 500 Hz `tone-gated-16000` stream in `encoding`, and its first audio chunk: it must arrive
/// (within 20 s) while the engine still waits at its gate for [`ToneDaemon::gate`].
async fn audio_before_the_gate(
    d: &mut ToneDaemon,
    encoding: Encoding,
) -> (tonic::Streaming<pb::SynthesizeResponse>, pb::AudioChunk) {
    let mut stream = d
        .client
        .synthesize(tone_request(500, "tone-gated-16000", encoding, 0, 1))
        .await
        .expect("call")
        .into_inner();
    let first_audio = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let msg = stream.message().await.expect("message").expect("not ended");
            if let Some(pb::synthesize_response::Payload::Audio(a)) = msg.payload {
                return a;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{encoding:?}: audio arrived while the engine was still waiting"));
    (stream, first_audio)
}

#[tokio::test]
async fn audio_streams_before_the_engine_has_finished() {
    // The engine sends half its audio, then waits until the client has received audio. If
    // herald held audio back until the engine finished, this would never complete.
    let mut d = tone_daemon(None).await;
    let (mut stream, first_audio) = audio_before_the_gate(&mut d, Encoding::PcmS16le).await;
    assert_eq!(first_audio.first_frame, 0);
    assert!(first_audio.frames > 0);
    d.gate.notify_one();
    let mut frames = u64::from(first_audio.frames);
    let mut summary = None;
    while let Some(msg) = stream.message().await.expect("message") {
        match msg.payload {
            Some(pb::synthesize_response::Payload::Audio(a)) => frames += u64::from(a.frames),
            Some(pb::synthesize_response::Payload::Summary(s)) => summary = Some(s),
            _ => {}
        }
    }
    assert_eq!(frames, 16_000);
    assert_eq!(summary.expect("summary").samples, 16_000);
}

// === compressed encodings: MP3, Ogg Opus, FLAC ===

/// Decodes Ogg Opus with libopus at 48 kHz, honouring pre-skip and the final granule position:
/// (input rate from OpusHead, channels, interleaved samples at 48 kHz).
pub(crate) fn opus_decode(bytes: Vec<u8>) -> (u32, usize, Vec<f32>) {
    let mut reader = ogg::PacketReader::new(std::io::Cursor::new(bytes));
    let head = reader.read_packet_expected().expect("OpusHead");
    assert_eq!(&head.data[..8], b"OpusHead");
    assert_eq!(head.data.len(), 19);
    let channels = usize::from(head.data[9]);
    let pre_skip = usize::from(u16::from_le_bytes([head.data[10], head.data[11]]));
    let input_rate = u32::from_le_bytes(head.data[12..16].try_into().unwrap());
    let tags = reader.read_packet_expected().expect("OpusTags");
    assert_eq!(&tags.data[..8], b"OpusTags");
    let ch = if channels == 2 {
        opus::Channels::Stereo
    } else {
        opus::Channels::Mono
    };
    let mut dec = opus::Decoder::new(48_000, ch).expect("decoder");
    let mut out = Vec::new();
    let mut buf = vec![0f32; 5_760 * channels];
    let mut last_granule = 0;
    let mut saw_eos = false;
    while let Some(p) = reader.read_packet().expect("ogg") {
        assert!(!saw_eos, "packets after end of stream");
        let n = dec.decode_float(&p.data, &mut buf, false).expect("opus");
        assert_eq!(n, 960, "20 ms packets");
        out.extend_from_slice(&buf[..n * channels]);
        last_granule = p.absgp_page();
        saw_eos = p.last_in_stream();
    }
    assert!(saw_eos, "end-of-stream page");
    let total = usize::try_from(last_granule).unwrap();
    assert!(
        total * channels <= out.len(),
        "granule within the decoded audio"
    );
    assert!(
        out.len() - total * channels < 960 * channels,
        "end trim under one packet"
    );
    out.truncate(total * channels);
    out.drain(..pre_skip * channels);
    (input_rate, channels, out)
}

/// Writes `bytes` to a temp file and has ffprobe read every packet; returns ffprobe's stderr
/// (empty when it found nothing to complain about) and the duration it reports.
fn ffprobe(bytes: &[u8], ext: &str) -> (String, f64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("out.{ext}"));
    std::fs::write(&path, bytes).unwrap();
    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "warning",
            "-count_packets",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
        ])
        .arg(&path)
        .output()
        .expect("ffprobe is installed by .ci/setup");
    assert!(out.status.success(), "ffprobe failed");
    // A plain MP3 stream has no Xing/LAME header (it would need a seek back), so ffmpeg derives
    // the duration from the bitrate and says so; that is advice, not a problem in the stream.
    let stderr: String = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.contains("Estimating duration from bitrate, this may be inaccurate"))
        .map(|l| format!("{l}\n"))
        .collect();
    let duration = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(f64::NAN);
    (stderr, duration)
}

/// LAME's delay before the first input sample in its decoded output (encoder delay 576 plus
/// the decoder's 529), which no decoder can trim without a LAME tag.
const LAME_DELAY: usize = 1_105;

#[derive(Clone, Copy, Debug)]
struct Case {
    encoding: Encoding,
    rate: u32,
    channels: u32,
    bitrate_bps: u32,
    bits: u32,
}

#[tokio::test]
async fn compressed_encodings_decode_back_to_the_tone_to_the_last_sample() {
    let mut d = tone_daemon(None).await;
    let case = |encoding, rate, channels, bitrate_bps, bits| Case {
        encoding,
        rate,
        channels,
        bitrate_bps,
        bits,
    };
    let cases = [
        case(Encoding::Flac, 16_000, 1, 0, 0),
        case(Encoding::Flac, 44_100, 2, 0, 24),
        case(Encoding::Flac, 8_000, 1, 0, 16),
        case(Encoding::Mp3, 24_000, 1, 0, 0),
        case(Encoding::Mp3, 44_100, 2, 0, 0),
        case(Encoding::Mp3, 8_000, 1, 32_000, 0),
        case(Encoding::Mp3, 48_000, 1, 192_000, 0),
        case(Encoding::OggOpus, 48_000, 1, 0, 0),
        case(Encoding::OggOpus, 16_000, 2, 48_000, 0),
        case(Encoding::OggOpus, 22_050, 1, 0, 0),
        case(Encoding::OggOpus, 44_100, 1, 96_000, 0),
    ];
    for c in cases {
        let freq = 440;
        let req = pb::SynthesizeRequest {
            bitrate_bps: c.bitrate_bps,
            bits_per_sample: c.bits,
            ..tone_request(freq, "tone-pcm-24000", c.encoding, c.rate, c.channels)
        };
        let started = tokio::time::Instant::now();
        let got = synthesize(&mut d.client, req)
            .await
            .unwrap_or_else(|s| panic!("{c:?}: {s:?}"));
        let elapsed = started.elapsed();
        assert_eq!(got.format().encoding, c.encoding as i32);
        assert_eq!(got.format().sample_rate_hz, c.rate);
        assert_eq!(got.summary().samples, u64::from(c.rate), "{c:?}: frames");
        let frames: u64 = got.chunks.iter().map(|ch| u64::from(ch.frames)).sum();
        assert_eq!(frames, u64::from(c.rate), "{c:?}: chunk frames add up");
        assert!(
            got.chunks.iter().all(|ch| !ch.data.is_empty()),
            "{c:?}: empty chunk"
        );
        let bytes = got.bytes();
        let (ext, codec_frame) = match c.encoding {
            Encoding::Flac => ("flac", 0),
            Encoding::Mp3 => ("mp3", if c.rate >= 32_000 { 1_152 } else { 576 }),
            _ => ("opus", 960),
        };
        let (rate, channels, all, start) = match c.encoding {
            Encoding::OggOpus => {
                let (input_rate, ch, x) = opus_decode(bytes.clone());
                assert_eq!(input_rate, c.rate, "{c:?}: OpusHead input rate");
                (48_000, ch, x, 0)
            }
            _ => {
                let (r, ch, x) = symphonia_decode(bytes.clone(), ext);
                let start = if c.encoding == Encoding::Mp3 {
                    LAME_DELAY
                } else {
                    0
                };
                (r, ch, x, start)
            }
        };
        assert_eq!(channels, c.channels as usize, "{c:?}: channels");
        let decoded = all.len() / channels - start;
        let expected = rate as usize; // one second
        let diff = decoded as i64 - expected as i64;
        match c.encoding {
            Encoding::Flac | Encoding::OggOpus => {
                assert_eq!(decoded, expected, "{c:?}: exact length")
            }
            _ => assert!(
                (0..codec_frame as i64).contains(&diff),
                "{c:?}: {decoded} frames after the encoder delay, want {expected} + < {codec_frame}"
            ),
        }
        for ch in 0..channels {
            let x: Vec<f32> = all
                .iter()
                .skip(ch)
                .step_by(channels)
                .skip(start)
                .take(expected)
                .copied()
                .collect();
            let f = peak_frequency(&x, rate);
            let tail = rms(&x[x.len() - rate as usize / 20..]);
            let body = rms(&x[x.len() / 10..x.len() * 9 / 10]);
            eprintln!(
                "{:?} {} Hz x{} {} bps {} bits: {} bytes in {} chunks, {elapsed:?}; decoded {decoded} (+{diff}) frames at {rate} Hz, ch{ch}: {f:.3} Hz, rms {body:.4}, last 50 ms rms {tail:.4}",
                c.encoding,
                c.rate,
                c.channels,
                c.bitrate_bps,
                c.bits,
                bytes.len(),
                got.chunks.len()
            );
            assert!((f - f64::from(freq)).abs() <= 1.0, "{c:?} ch{ch}: {f} Hz");
            assert!((body - 0.3536).abs() < 0.02, "{c:?} ch{ch}: rms {body}");
            assert!(
                (tail - body).abs() < 0.1 * body,
                "{c:?} ch{ch}: the last 50 ms have rms {tail}, the tone {body}"
            );
        }
        let (stderr, duration) = ffprobe(&bytes, ext);
        assert!(stderr.is_empty(), "{c:?}: ffprobe says: {stderr}");
        eprintln!("{c:?}: ffprobe duration {duration} s");
    }
}

#[tokio::test]
async fn compressed_audio_streams_before_the_engine_has_finished() {
    for encoding in [Encoding::Flac, Encoding::Mp3, Encoding::OggOpus] {
        let mut d = tone_daemon(None).await;
        let (mut stream, first_audio) = audio_before_the_gate(&mut d, encoding).await;
        assert_eq!(first_audio.first_frame, 0);
        assert!(first_audio.frames > 0);
        assert!(!first_audio.data.is_empty());
        d.gate.notify_one();
        let mut bytes = first_audio.data.to_vec();
        let mut frames = u64::from(first_audio.frames);
        while let Some(msg) = stream.message().await.expect("message") {
            if let Some(pb::synthesize_response::Payload::Audio(a)) = msg.payload {
                frames += u64::from(a.frames);
                bytes.extend_from_slice(&a.data);
            }
        }
        assert_eq!(frames, 16_000, "{encoding:?}");
        let ext = match encoding {
            Encoding::Flac => "flac",
            Encoding::Mp3 => "mp3",
            _ => "opus",
        };
        let (stderr, _) = ffprobe(&bytes, ext);
        assert!(stderr.is_empty(), "{encoding:?}: ffprobe says: {stderr}");
    }
}
