//! End to end through the public gRPC interface: the daemon in-process on 127.0.0.1:0 and a
//! temp unix socket, real espeak-ng, the generated Rust client; assertions on the audio itself.

use std::time::Duration;

use herald::pb::{self, audio_format::Encoding};
use tonic::Code;

use crate::support::*;

const PHRASE: &str = "Hello world, this is herald speaking from the test suite.";

#[tokio::test]
async fn wav_16k_mono_over_tcp() {
    let daemon = spawn_daemon().await;
    let mut client = daemon.client().await;
    let got = synthesize(&mut client, request(PHRASE, Encoding::Wav, 16_000, 1))
        .await
        .expect("synthesize");

    // info first, summary last, audio between.
    assert!(
        got.order.starts_with("ia") && got.order.ends_with('s'),
        "{}",
        got.order
    );
    assert_eq!(got.order.matches('s').count(), 1);
    let info = got.info();
    assert_eq!(got.format().encoding, Encoding::Wav as i32);
    assert_eq!(got.format().sample_rate_hz, 16_000);
    assert_eq!(got.format().channels, 1);
    assert_eq!(info.model, "espeak-ng");
    assert_eq!(info.engine, "espeak-ng");
    assert_eq!(info.native_sample_rate_hz, 22_050);
    assert!(!info.voice.is_empty());
    assert_eq!(
        info.request_id.len(),
        36,
        "a generated UUID: {}",
        info.request_id
    );

    // One valid WAV file: one header, then PCM; hound parses it once the sizes are filled in.
    let bytes = got.bytes();
    assert_eq!(&bytes[0..4], b"RIFF");
    assert_eq!(
        bytes.windows(4).filter(|w| w == b"RIFF").count(),
        1,
        "one header only"
    );
    let wav = patch_wav_sizes(bytes.clone());
    let mut reader = hound::WavReader::new(std::io::Cursor::new(wav)).expect("hound parses it");
    let spec = reader.spec();
    assert_eq!(
        (spec.sample_rate, spec.channels, spec.bits_per_sample),
        (16_000, 1, 16)
    );
    let samples: Vec<f32> = reader
        .samples::<i16>()
        .map(|s| f32::from(s.expect("sample")) / 32768.0)
        .collect();

    // summary agrees with what arrived.
    let summary = got.summary();
    assert_eq!(summary.samples, samples.len() as u64);
    assert_eq!(summary.bytes, bytes.len() as u64);
    assert_eq!(
        summary.duration_ms,
        (summary.samples * 1000 + 8_000) / 16_000
    );
    assert_eq!(summary.characters, PHRASE.chars().count() as u32);
    let frames_in_chunks: u64 = got.chunks.iter().map(|c| u64::from(c.frames)).sum();
    assert_eq!(frames_in_chunks, summary.samples);

    // Plausible speech: 2-8 s for this phrase, mostly voiced, not clipped silence.
    let seconds = samples.len() as f64 / 16_000.0;
    assert!((2.0..8.0).contains(&seconds), "duration {seconds} s");
    assert!(rms(&samples) > 0.02, "rms {}", rms(&samples));
    assert!(voiced_fraction(&samples, 16_000) > 0.4);
    daemon.stop().await.expect("clean stop");
}

#[tokio::test]
async fn f32_48k_stereo_over_unix_has_the_exact_resampled_length() {
    let daemon = spawn_daemon().await;
    let mut client = daemon.unix_client().await;

    // The engine's native output, unconverted.
    let native = synthesize(&mut client, request(PHRASE, Encoding::PcmS16le, 0, 0))
        .await
        .expect("native");
    assert_eq!(native.format().sample_rate_hz, 22_050);
    assert_eq!(native.format().channels, 1);
    let native_frames = native.bytes().len() as u64 / 2;
    assert_eq!(native.summary().samples, native_frames);

    let got = synthesize(&mut client, request(PHRASE, Encoding::PcmF32le, 48_000, 2))
        .await
        .expect("48k stereo");
    assert_eq!(got.format().encoding, Encoding::PcmF32le as i32);
    assert_eq!(got.format().sample_rate_hz, 48_000);
    assert_eq!(got.format().channels, 2);
    let samples = f32le_to_f32(&got.bytes());
    assert_eq!(samples.len() % 2, 0);
    let frames = samples.len() as u64 / 2;
    assert_eq!(got.summary().samples, frames);
    // espeak-ng is deterministic, and the resampler's length is exact.
    let expected = (native_frames as f64 * 48_000.0 / 22_050.0).round() as u64;
    assert_eq!(frames, expected, "native {native_frames} frames");

    // Both channels carry the voice.
    let left: Vec<f32> = samples.iter().step_by(2).copied().collect();
    let right: Vec<f32> = samples.iter().skip(1).step_by(2).copied().collect();
    assert_eq!(left, right);
    assert!(rms(&left) > 0.02);
    assert!(voiced_fraction(&left, 48_000) > 0.4);
    // No leading zeros from the resampler: the first voiced window sits where it does natively.
    let native_mono = s16_to_f32(&native.bytes());
    let onset =
        |x: &[f32], rate: f64| x.iter().position(|s| s.abs() > 0.05).expect("onset") as f64 / rate;
    let dt = (onset(&left, 48_000.0) - onset(&native_mono, 22_050.0)).abs();
    assert!(dt < 0.002, "onset moved by {dt} s");
    daemon.stop().await.expect("clean stop");
}

#[tokio::test]
async fn chunks_follow_chunk_ms_after_an_immediate_first_chunk() {
    let daemon = spawn_daemon().await;
    let mut client = daemon.client().await;
    let mut req = request(PHRASE, Encoding::PcmS16le, 16_000, 1);
    req.chunk_ms = 40;
    let got = synthesize(&mut client, req).await.expect("synthesize");
    let frames: Vec<u32> = got.chunks.iter().map(|c| c.frames).collect();
    assert!(frames.len() > 10, "{frames:?}");
    // After the first chunk, every chunk but the last is exactly 40 ms = 640 frames.
    for f in &frames[1..frames.len() - 1] {
        assert_eq!(*f, 640, "{frames:?}");
    }
    assert!(frames[frames.len() - 1] <= 640);
    // first_frame is the running total; data length matches frames.
    let mut next = 0u64;
    for c in &got.chunks {
        assert_eq!(c.first_frame, next);
        assert_eq!(c.data.len(), c.frames as usize * 2);
        next += u64::from(c.frames);
    }
}

#[tokio::test]
async fn mulaw_and_alaw_8k_decode_to_speech() {
    let daemon = spawn_daemon().await;
    let mut client = daemon.client().await;
    let linear = synthesize(&mut client, request(PHRASE, Encoding::PcmS16le, 8_000, 1))
        .await
        .expect("linear");
    let reference = s16_to_f32(&linear.bytes());
    for (encoding, decode) in [
        (
            Encoding::Mulaw,
            herald::audio::encode::ulaw_to_linear as fn(u8) -> i16,
        ),
        (
            Encoding::Alaw,
            herald::audio::encode::alaw_to_linear as fn(u8) -> i16,
        ),
    ] {
        let got = synthesize(&mut client, request(PHRASE, encoding, 8_000, 1))
            .await
            .expect("g711");
        let bytes = got.bytes();
        assert_eq!(
            bytes.len() as u64,
            got.summary().samples,
            "{encoding:?}: one byte per sample"
        );
        assert_eq!(bytes.len(), reference.len(), "{encoding:?}");
        let decoded: Vec<f32> = bytes
            .iter()
            .map(|b| f32::from(decode(*b)) / 32768.0)
            .collect();
        // G.711 is ~8-bit log PCM: the error stays small relative to the signal.
        let err: Vec<f32> = decoded.iter().zip(&reference).map(|(a, b)| a - b).collect();
        let snr = 20.0 * (rms(&reference) / rms(&err)).log10();
        assert!(snr > 25.0, "{encoding:?}: SNR {snr:.1} dB");
    }
}

#[tokio::test]
async fn volume_scales_the_audio() {
    let daemon = spawn_daemon().await;
    let mut client = daemon.client().await;
    let unit = synthesize(&mut client, request(PHRASE, Encoding::PcmF32le, 0, 1))
        .await
        .expect("unit");
    let mut req = request(PHRASE, Encoding::PcmF32le, 0, 1);
    req.volume = 0.5;
    let half = synthesize(&mut client, req).await.expect("half");
    let a = f32le_to_f32(&unit.bytes());
    let b = f32le_to_f32(&half.bytes());
    assert_eq!(a.len(), b.len());
    let ratio = rms(&b) / rms(&a);
    assert!((ratio - 0.5).abs() < 0.001, "ratio {ratio}");
}

#[tokio::test]
async fn every_validation_rule_names_the_field_and_the_daemon_keeps_serving() {
    use Encoding::{Flac, Mp3, OggOpus, PcmS16le, Wav};
    const MP3_RATES: &str = "8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000";
    const MP3_BITRATES: &str = "8000, 16000, 24000, 32000, 40000, 48000, 64000";
    let daemon = spawn_daemon_with(&[("HERALD_MAX_TEXT_CHARS", "50")]).await;
    let mut client = daemon.client().await;
    let good = || request("Short and fine.", Encoding::PcmS16le, 0, 0);
    // A good request changed by `change`.
    let bad = |change: fn(&mut pb::SynthesizeRequest)| {
        let mut req = good();
        change(&mut req);
        req
    };
    let fmt = |encoding: Encoding, rate: u32, channels: u32| pb::SynthesizeRequest {
        format: Some(pb::AudioFormat {
            encoding: encoding as i32,
            sample_rate_hz: rate,
            channels,
        }),
        ..good()
    };
    let bitrate = |bitrate_bps, req| pb::SynthesizeRequest { bitrate_bps, ..req };
    let bits = |bits_per_sample, req| pb::SynthesizeRequest {
        bits_per_sample,
        ..req
    };
    // name, (request, the field its message starts with, a word of the limit)
    #[rustfmt::skip]
    let rows: [(&str, (pb::SynthesizeRequest, &str, &str)); 23] = [
        ("empty text",          (bad(|r| r.text = String::new()),                   "text",                  "empty")),
        ("blank text",          (bad(|r| r.text = "  \n ".into()),                  "text",                  "empty")),
        ("text over the limit", (bad(|r| r.text = "x".repeat(51)),                  "text",                  "50")),
        ("unknown model",       (bad(|r| r.model = "no-such-model".into()),         "model",                 "no-such-model")),
        ("unknown voice",       (bad(|r| r.voice = "xx-nonexistent".into()),        "voice",                 "xx-nonexistent")),
        ("rate too low",        (fmt(PcmS16le, 7_999, 1),                           "format.sample_rate_hz", "8000..=48000")),
        ("rate too high",       (fmt(PcmS16le, 96_000, 1),                          "format.sample_rate_hz", "8000..=48000")),
        ("three channels",      (fmt(PcmS16le, 16_000, 3),                          "format.channels",       "1..=2")),
        ("an MP3 rate",         (fmt(Mp3, 44_000, 1),                               "format.sample_rate_hz", MP3_RATES)),
        ("an MP3 bitrate",      (bitrate(128_000, fmt(Mp3, 8_000, 1)),              "bitrate_bps",           MP3_BITRATES)),
        ("an Opus bitrate",     (bitrate(1_000_000, fmt(OggOpus, 16_000, 1)),       "bitrate_bps",           "6000..=510000")),
        ("a WAV bitrate",       (bitrate(64_000, fmt(Wav, 16_000, 1)),              "bitrate_bps",           "WAV")),
        ("FLAC bits",           (bits(20, fmt(Flac, 16_000, 1)),                    "bits_per_sample",       "16, 24")),
        ("MP3 bits",            (bits(24, fmt(Mp3, 16_000, 1)),                     "bits_per_sample",       "MP3")),
        ("unknown encoding",    (bad(|r| r.format.as_mut().unwrap().encoding = 99), "format.encoding",       "99")),
        ("chunk too short",     (bad(|r| r.chunk_ms = 9),                           "chunk_ms",              "10..=1000")),
        ("chunk too long",      (bad(|r| r.chunk_ms = 1001),                        "chunk_ms",              "10..=1000")),
        ("speed",               (bad(|r| r.speed = 3.0),                            "speed",                 "0.5..=2")),
        ("pitch",               (bad(|r| r.pitch = f32::NAN),                       "pitch",                 "0.5..=2")),
        ("volume",              (bad(|r| r.volume = -1.0),                          "volume",                "4")),
        ("language",            (bad(|r| r.language = "en us!".into()),             "language",              "BCP-47")),
        ("instructions",        (bad(|r| r.instructions = "i".repeat(1001)),        "instructions",          "1000")),
        ("request id",          (bad(|r| r.request_id = "r".repeat(129)),           "request_id",            "128")),
    ];
    each_row(rows, async |(req, field, limit)| {
        let status = synthesize(&mut client, req).await.expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let msg = status.message();
        assert!(msg.starts_with(&format!("{field}:")), "{msg}");
        assert!(msg.contains(limit), "{msg}");
        // ... and the next good request is served.
        let ok = synthesize(&mut client, good())
            .await
            .expect("good request after a bad one");
        assert!(ok.summary().samples > 0);
    })
    .await;
}

#[tokio::test]
async fn a_client_request_id_is_echoed() {
    let daemon = spawn_daemon().await;
    let mut client = daemon.client().await;
    let mut req = request("Echo.", Encoding::PcmS16le, 0, 0);
    req.request_id = "kiosk-7/42".into();
    let got = synthesize(&mut client, req).await.expect("ok");
    assert_eq!(got.info().request_id, "kiosk-7/42");
}

#[tokio::test]
async fn a_deadline_stops_the_stream_with_deadline_exceeded() {
    let daemon = spawn_daemon().await;
    let mut client = daemon.client().await;
    // Long text, and a client that does not read: the deadline must end the call.
    let text = "This sentence is long enough to keep the engine busy for a while. ".repeat(200);
    let mut req = tonic::Request::new(request(&text, Encoding::PcmS16le, 0, 0));
    req.set_timeout(Duration::from_millis(300));
    let started = tokio::time::Instant::now();
    let result = async {
        let mut stream = client.synthesize(req).await?.into_inner();
        tokio::time::sleep(Duration::from_millis(600)).await;
        while let Some(m) = futures::StreamExt::next(&mut stream).await {
            m?;
        }
        Ok::<_, tonic::Status>(())
    }
    .await;
    let status = result.expect_err("deadline");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The daemon is fine.
    let ok = synthesize(
        &mut client,
        request("Still here.", Encoding::PcmS16le, 0, 0),
    )
    .await
    .expect("ok");
    assert!(ok.summary().samples > 0);
}

#[tokio::test]
async fn list_voices_reports_espeak_voices_and_filters() {
    let daemon = spawn_daemon().await;
    let mut client = daemon.client().await;
    let all = client
        .list_voices(pb::ListVoicesRequest::default())
        .await
        .expect("voices")
        .into_inner()
        .voices;
    assert!(all.len() > 50, "{} voices", all.len());
    let en_us = all.iter().find(|v| v.name == "en-us").expect("en-us");
    assert_eq!(en_us.engine, "espeak-ng");
    assert_eq!(en_us.model, "espeak-ng");
    assert_eq!(en_us.native_sample_rate_hz, 22_050);
    assert!(en_us.languages.iter().any(|l| l == "en-us"));

    let german = client
        .list_voices(pb::ListVoicesRequest {
            language: "de".into(),
            ..Default::default()
        })
        .await
        .expect("voices")
        .into_inner()
        .voices;
    assert!(!german.is_empty());
    assert!(german.len() < all.len());
    assert!(german.iter().all(|v| {
        v.languages
            .iter()
            .any(|l| l == "de" || l.starts_with("de-"))
    }));

    let none = client
        .list_voices(pb::ListVoicesRequest {
            model: "cosyvoice-v3-flash".into(),
            ..Default::default()
        })
        .await
        .expect("voices")
        .into_inner()
        .voices;
    assert!(none.is_empty());

    // A listed voice synthesizes.
    let mut req = request("Guten Tag.", Encoding::PcmS16le, 0, 0);
    req.voice = german[0].name.clone();
    let got = synthesize(&mut client, req).await.expect("german");
    assert_eq!(got.info().voice, german[0].name);
    assert!(rms(&s16_to_f32(&got.bytes())) > 0.02);
}

#[tokio::test]
async fn speed_changes_duration_through_the_api() {
    let daemon = spawn_daemon().await;
    let mut client = daemon.client().await;
    let mut slow = request(PHRASE, Encoding::PcmS16le, 0, 0);
    slow.speed = 0.5;
    let mut fast = request(PHRASE, Encoding::PcmS16le, 0, 0);
    fast.speed = 2.0;
    let s = synthesize(&mut client, slow)
        .await
        .expect("slow")
        .summary()
        .samples;
    let f = synthesize(&mut client, fast)
        .await
        .expect("fast")
        .summary()
        .samples;
    assert!(s > 2 * f, "slow {s} vs fast {f}");
}

#[tokio::test]
async fn playback_rpcs_serve_the_null_device_with_espeak() {
    use pb::speak_event::Event as E;
    let daemon = spawn_daemon().await;
    let mut client = daemon.client().await;
    let devices = client
        .list_output_devices(pb::ListOutputDevicesRequest {})
        .await
        .expect("devices")
        .into_inner()
        .devices;
    assert!(
        devices.iter().any(|d| d.name == "default" && d.is_default),
        "{devices:?}"
    );
    assert!(devices.iter().any(|d| d.name == "null"), "{devices:?}");
    let stopped = client
        .stop_speaking(pb::StopSpeakingRequest {
            device: "null".into(),
            ..Default::default()
        })
        .await
        .expect("stop")
        .into_inner();
    assert!(stopped.stopped_ids.is_empty());
    let mut stream = client
        .speak(pb::SpeakRequest {
            text: "Hello.".into(),
            device: "null".into(),
            ..Default::default()
        })
        .await
        .expect("speak")
        .into_inner();
    let mut kinds = Vec::new();
    while let Some(ev) = stream.message().await.expect("event") {
        let e = ev.event.expect("event");
        let done = matches!(e, E::Finished(_) | E::Failed(_));
        kinds.push(e);
        if done {
            break;
        }
    }
    assert!(matches!(kinds[0], E::Queued(_)), "{kinds:?}");
    assert!(matches!(kinds[1], E::Started(_)), "{kinds:?}");
    let Some(E::Finished(f)) = kinds.last() else {
        panic!("{kinds:?}")
    };
    assert!(
        f.played_ms > 300,
        "espeak-ng said something: {} ms",
        f.played_ms
    );
    let bad = client
        .speak(pb::SpeakRequest {
            text: "Hello.".into(),
            device: "null".into(),
            leading_silence_ms: 6000,
            ..Default::default()
        })
        .await
        .expect_err("bad leading silence");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(
        bad.message().starts_with("leading_silence_ms"),
        "{}",
        bad.message()
    );
}

#[tokio::test]
async fn health_is_serving_and_reflection_lists_the_service() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };

    let daemon = spawn_daemon().await;
    let channel = daemon.unix_channel().await;
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "herald.v1.Speech"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health")
            .into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
    }

    let mut reflection = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter([req]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("message")
        .expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"herald.v1.Speech".to_owned()), "{names:?}");
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );
}

#[tokio::test]
async fn shutdown_ends_in_flight_streams_with_unavailable() {
    let daemon = spawn_daemon().await;
    let mut client = daemon.client().await;
    let text = "A long announcement that is still streaming when the daemon stops. ".repeat(250);
    let mut stream = client
        .synthesize(request(&text, Encoding::PcmS16le, 0, 0))
        .await
        .expect("call")
        .into_inner();
    // Read the info and one chunk, then stop the daemon while the stream is open.
    let first = stream.message().await.expect("info").expect("some");
    assert!(matches!(
        first.payload,
        Some(pb::synthesize_response::Payload::Info(_))
    ));
    let started = tokio::time::Instant::now();
    let stopping = tokio::spawn(daemon.stop());
    let mut last = Ok(());
    loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => break,
            Err(s) => {
                last = Err(s);
                break;
            }
        }
    }
    let status = last.expect_err("the stream must not end cleanly");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    stopping.await.expect("join").expect("serve returned Ok");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_concurrency_cap_answers_resource_exhausted_and_frees_on_disconnect() {
    let daemon = spawn_daemon_with(&[("HERALD_MAX_CONCURRENT", "1")]).await;
    let mut client = daemon.client().await;
    let text = "A long one that holds the only slot while its client does not read. ".repeat(100);
    let mut holder = client
        .synthesize(request(&text, Encoding::PcmS16le, 0, 0))
        .await
        .expect("first call")
        .into_inner();
    holder.message().await.expect("info").expect("some");

    let status = synthesize(&mut client, request("Second.", Encoding::PcmS16le, 0, 0))
        .await
        .expect_err("over the cap");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().starts_with("synthesis.max_concurrent"),
        "{}",
        status.message()
    );

    // The slot comes back once the first client leaves.
    drop(holder);
    let mut served = None;
    for _ in 0..100 {
        match synthesize(&mut client, request("Third.", Encoding::PcmS16le, 0, 0)).await {
            Ok(got) => {
                served = Some(got);
                break;
            }
            Err(s) if s.code() == Code::ResourceExhausted => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => panic!("{s:?}"),
        }
    }
    assert!(
        served
            .expect("served after the holder left")
            .summary()
            .samples
            > 0
    );
}
