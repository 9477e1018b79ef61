//! The piper engine through gRPC, with the runtime and the `en_US-joe-medium` voice `.ci/setup`
//! installs (support::piper): it speaks English as speech, streams from the first sentence,
//! serves every output format; the offline chain falls back from an unreachable cloud in the
//! request's language; and espeak-ng follows the language rules (language without a voice,
//! variants).

use futures::StreamExt;
use herald::pb::{self, audio_format::Encoding, synthesize_response::Payload};
use rustfft::{FftPlanner, num_complex::Complex};
use tokio::time::Instant;
use tonic::Code;

use crate::support::{
    piper::{PiperAssets, VOICE, piper_assets},
    *,
};

/// A daemon with piper pointed at the installed assets, configured by `toml`, plus `env`.
async fn piper_daemon(assets: &PiperAssets, toml: &str, env: &[(&str, &str)]) -> TestDaemon {
    let owned = assets.env();
    let mut pairs: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    pairs.extend_from_slice(env);
    spawn_daemon_config(toml, &pairs).await
}

fn piper_request(text: &str, encoding: Encoding, rate: u32) -> pb::SynthesizeRequest {
    pb::SynthesizeRequest {
        model: "piper".to_owned(),
        voice: VOICE.to_owned(),
        ..request(text, encoding, rate, 1)
    }
}

/// The share of the signal's energy (above 60 Hz) that lies in the telephone speech band,
/// 300–3400 Hz.
fn speech_band_share(x: &[f32], rate: u32) -> f64 {
    let n = x.len();
    let mut buf: Vec<Complex<f64>> = x.iter().map(|s| Complex::new(f64::from(*s), 0.0)).collect();
    FftPlanner::new().plan_fft_forward(n).process(&mut buf);
    let hz = |k: usize| k as f64 * f64::from(rate) / n as f64;
    let (mut band, mut total) = (0.0, 0.0);
    for (k, c) in buf[..n / 2].iter().enumerate() {
        let e = c.norm_sqr();
        let f = hz(k);
        if f >= 60.0 {
            total += e;
        }
        if (300.0..=3400.0).contains(&f) {
            band += e;
        }
    }
    band / total
}

#[tokio::test]
async fn piper_speaks_english_text_as_speech() {
    let Some(assets) = piper_assets() else { return };
    let d = piper_daemon(&assets, ENGINES_ONLY, &[]).await;
    let mut client = d.client().await;

    let voices = client
        .list_voices(pb::ListVoicesRequest {
            model: "piper".to_owned(),
            ..Default::default()
        })
        .await
        .expect("ListVoices")
        .into_inner()
        .voices;
    let joe = voices
        .iter()
        .find(|v| v.name == VOICE)
        .expect("the voice is listed");
    assert!(joe.languages.iter().any(|l| l == "en-US"), "{joe:?}");

    let text = "The quick brown fox jumps over the lazy dog. Then it runs far away.";
    let got = synthesize(&mut client, piper_request(text, Encoding::PcmS16le, 0))
        .await
        .expect("synthesize");
    assert_eq!(got.info().engine, "piper");
    assert_eq!(got.info().voice, VOICE);
    assert_eq!(got.format().sample_rate_hz, 22_050);
    let x = got.samples();
    let seconds = x.len() as f64 / 22_050.0;
    // 13 words: a speaker takes about 3 to 5 s; far less or far more is not this text.
    assert!((2.0..=8.0).contains(&seconds), "{seconds:.2} s");
    let share = speech_band_share(&x, 22_050);
    let voiced = voiced_fraction(&x, 22_050);
    let peak = x.iter().fold(0.0_f32, |m, s| m.max(s.abs()));
    let clipped = x.iter().filter(|s| s.abs() >= 0.999).count();
    eprintln!(
        "piper: {seconds:.2} s, speech band {share:.3} of the energy, voiced {voiced:.2}, peak {peak:.3}"
    );
    assert!(share > 0.6, "speech band share {share:.3}");
    assert!(voiced > 0.5, "voiced fraction {voiced:.2}");
    assert!(peak > 0.3 && peak < 0.99, "peak {peak}");
    assert_eq!(clipped, 0, "no sample at full scale");

    // Faster speech is shorter: `speed` is the voice's length_scale divided.
    let fast = synthesize(
        &mut client,
        pb::SynthesizeRequest {
            speed: 2.0,
            ..piper_request(text, Encoding::PcmS16le, 0)
        },
    )
    .await
    .expect("speed 2");
    let fast_seconds = fast.samples().len() as f64 / 22_050.0;
    assert!(
        fast_seconds < seconds * 0.7,
        "{fast_seconds:.2} s vs {seconds:.2} s"
    );

    // What the voice cannot honour is refused, naming the field.
    for (req, field) in [
        (
            pb::SynthesizeRequest {
                pitch: 1.5,
                ..piper_request("Hi.", Encoding::PcmS16le, 0)
            },
            "pitch",
        ),
        (
            pb::SynthesizeRequest {
                word_timestamps: true,
                ..piper_request("Hi.", Encoding::PcmS16le, 0)
            },
            "word_timestamps",
        ),
        (
            pb::SynthesizeRequest {
                language: "de".to_owned(),
                ..piper_request("Hallo.", Encoding::PcmS16le, 0)
            },
            "language",
        ),
        (
            pb::SynthesizeRequest {
                speaker: "2".to_owned(),
                ..piper_request("Hi.", Encoding::PcmS16le, 0)
            },
            "speaker",
        ),
        (
            pb::SynthesizeRequest {
                instructions: "cheerfully".to_owned(),
                ..piper_request("Hi.", Encoding::PcmS16le, 0)
            },
            "instructions",
        ),
    ] {
        let status = synthesize(&mut client, req).await.expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(
            status.message().contains(field),
            "{field}: {}",
            status.message()
        );
    }
    d.stop().await.unwrap();
}

#[tokio::test]
async fn first_audio_arrives_after_the_first_sentence_not_the_whole_text() {
    let Some(assets) = piper_assets() else { return };
    let d = piper_daemon(&assets, ENGINES_ONLY, &[]).await;
    let mut client = d.client().await;
    // The model loads on its first request: load it before timing.
    synthesize(&mut client, piper_request("Ready.", Encoding::PcmS16le, 0))
        .await
        .expect("warm up");

    let sentence = "This sentence is one of several that make a long text for the voice.";
    let text = [sentence; 6].join(" ");
    let start = Instant::now();
    let mut stream = client
        .synthesize(piper_request(&text, Encoding::PcmS16le, 0))
        .await
        .expect("synthesize")
        .into_inner();
    let mut first_audio = None;
    let mut samples = 0;
    while let Some(msg) = stream.next().await {
        if let Payload::Audio(a) = msg.expect("message").payload.expect("payload") {
            first_audio.get_or_insert_with(|| start.elapsed());
            samples += a.data.len() / 2;
        }
    }
    let total = start.elapsed();
    let first = first_audio.expect("audio");
    let seconds = samples as f64 / 22_050.0;
    eprintln!("piper long text: {seconds:.1} s of audio; first audio {first:?}, total {total:?}");
    assert!(seconds > 12.0, "six sentences: {seconds:.1} s");
    // One sentence of six is synthesized before the first audio: far less than half the time.
    assert!(first * 3 < total, "first audio {first:?} of {total:?}");
    d.stop().await.unwrap();
}

#[tokio::test]
async fn piper_serves_every_output_format() {
    let Some(assets) = piper_assets() else { return };
    let d = piper_daemon(&assets, ENGINES_ONLY, &[]).await;
    let mut client = d.client().await;
    let text = "Every format carries the same words.";
    let reference = synthesize(&mut client, piper_request(text, Encoding::PcmS16le, 16_000))
        .await
        .expect("pcm");
    let want = reference.samples().len() as f64 / 16_000.0;
    assert!(want > 1.0, "{want} s");
    for encoding in [
        Encoding::PcmF32le,
        Encoding::Wav,
        Encoding::Mulaw,
        Encoding::Alaw,
        Encoding::Mp3,
        Encoding::Flac,
        Encoding::OggOpus,
    ] {
        let got = synthesize(&mut client, piper_request(text, encoding, 16_000))
            .await
            .unwrap_or_else(|s| panic!("{encoding:?}: {s:?}"));
        assert_eq!(got.format().encoding, encoding as i32);
        assert_eq!(got.format().sample_rate_hz, 16_000, "{encoding:?}");
        let seconds = match encoding {
            Encoding::Flac => {
                let (rate, _, x) = symphonia_decode(got.bytes(), "flac");
                x.len() as f64 / f64::from(rate)
            }
            Encoding::OggOpus => {
                let bytes = got.bytes();
                assert!(bytes.starts_with(b"OggS"), "an Ogg stream");
                got.summary().samples as f64 / 16_000.0
            }
            _ => got.samples().len() as f64 / 16_000.0,
        };
        // Piper's noise makes each rendering a little different in length.
        assert!(
            (seconds - want).abs() < want * 0.25 + 0.1,
            "{encoding:?}: {seconds:.2} s, PCM {want:.2} s"
        );
        assert!(voiced_fraction(&reference.samples(), 16_000) > 0.4);
    }
    d.stop().await.unwrap();
}

/// A DashScope base URL nothing listens on.
fn unreachable_cloud() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}/api/v1")
}

#[tokio::test]
async fn fallback_from_an_unreachable_cloud_keeps_the_language() {
    let Some(assets) = piper_assets() else { return };
    let base = unreachable_cloud();
    let env = [
        ("DASHSCOPE_API_KEY", API_KEY),
        ("DASHSCOPE_HTTP_BASE_URL", base.as_str()),
    ];
    // The default chain: cache → piper → espeak-ng.
    let d = piper_daemon(&assets, FAST_UPSTREAM, &env).await;
    let mut client = d.client().await;
    let cloud = |text: &str, language: &str| pb::SynthesizeRequest {
        language: language.to_owned(),
        ..request(text, Encoding::PcmS16le, 16_000, 1)
    };

    // English text with the default cloud voice (longanyang speaks zh and en): English, from
    // piper's English voice; never Mandarin.
    let en = synthesize(&mut client, cloud("Good morning, the cloud is down.", ""))
        .await
        .expect("english");
    assert!(en.info().fallback_used, "{:?}", en.info());
    assert_eq!(
        (en.info().engine.as_str(), en.info().voice.as_str()),
        ("piper", VOICE)
    );
    assert!(voiced_fraction(&en.samples(), 16_000) > 0.4);

    // Chinese text with the same voice: no Chinese piper voice is installed, so espeak-ng's
    // Mandarin.
    let zh = synthesize(&mut client, cloud("早上好，云服务不可用。", ""))
        .await
        .expect("chinese");
    assert_eq!(zh.info().engine, "espeak-ng");
    assert!(
        ["zh", "cmn"].contains(&zh.info().voice.as_str()),
        "{:?}",
        zh.info()
    );

    // The same German text was cached in an English voice: the cache step must not serve that
    // rendering to a German request; German text with language de gets a German voice (piper's
    // when one is installed, else espeak-ng's).
    let german = "Guten Morgen, die Wolke ist nicht erreichbar.";
    synthesize(
        &mut client,
        pb::SynthesizeRequest {
            model: "espeak-ng".to_owned(),
            voice: "en-us".to_owned(),
            ..request(german, Encoding::PcmS16le, 16_000, 1)
        },
    )
    .await
    .expect("an English rendering in the cache");
    let de = synthesize(&mut client, cloud(german, "de"))
        .await
        .expect("german");
    assert!(
        de.info().fallback_used && !de.info().cache_hit,
        "{:?}",
        de.info()
    );
    let german_voice = (de.info().engine.as_str(), de.info().voice.as_str());
    assert!(
        german_voice == ("espeak-ng", "de") || german_voice.1.starts_with("de_"),
        "{german_voice:?}"
    );
    // Asked again, the German rendering is in the cache and serves.
    let again = synthesize(&mut client, cloud(german, "de"))
        .await
        .expect("again");
    assert!(again.info().cache_hit, "{:?}", again.info());
    assert_eq!(again.info().voice, de.info().voice);
    d.stop().await.unwrap();
}

#[tokio::test]
async fn espeak_honours_the_language_without_a_voice_and_offers_its_variants() {
    let d = spawn_daemon_config(ENGINES_ONLY, &[]).await;
    let mut client = d.client().await;
    let espeak = |voice: &str, language: &str| pb::SynthesizeRequest {
        model: "espeak-ng".to_owned(),
        voice: voice.to_owned(),
        language: language.to_owned(),
        ..request("Eins zwei drei.", Encoding::PcmS16le, 0, 1)
    };
    for (language, voice) in [
        ("de", "de"),
        ("de-DE", "de"),
        ("en-GB", "en-gb"),
        ("fr", "fr"),
    ] {
        let got = synthesize(&mut client, espeak("", language))
            .await
            .unwrap_or_else(|s| panic!("{language}: {s:?}"));
        assert_eq!(got.info().voice, voice, "language {language}");
    }
    // A named voice wins over the language (documented).
    let named = synthesize(&mut client, espeak("en", "de"))
        .await
        .expect("named");
    assert_eq!(named.info().voice, "en");

    // Variants: a female variant is reachable, and it sounds different from the default.
    let plain = synthesize(&mut client, espeak("en", "")).await.expect("en");
    let f3 = synthesize(&mut client, espeak("en+f3", ""))
        .await
        .expect("en+f3");
    assert_eq!(f3.info().voice, "en+f3");
    assert!(voiced_fraction(&f3.samples(), 22_050) > 0.3);
    assert_ne!(plain.bytes(), f3.bytes(), "the variant changes the voice");
    let status = synthesize(&mut client, espeak("en+nonesuch", ""))
        .await
        .expect_err("an unknown variant");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("variant"), "{}", status.message());
    d.stop().await.unwrap();
}
