//! Speak / StopSpeaking / ListOutputDevices through gRPC, with the real pipeline and the `wav`
//! device (which plays at real time and writes exactly what a speaker would have sounded).
//! Audio comes from the DashScope double: a tone whose frequency the text picks
//! (`@880Hz ...`), 40 ms per character.

use std::{path::PathBuf, time::Duration};

use herald::pb::{self, speak_event::Event as E};
use tonic::Code;

use crate::support::{dashscope::DashScopeDouble, *};

const RATE: u32 = 16000;

struct Setup {
    double: Option<DashScopeDouble>,
    daemon: TestDaemon,
    wav: PathBuf,
    _dir: tempfile::TempDir,
}

async fn setup(extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("played.wav");
    let toml = format!(
        "[playback]\ndevice = \"wav\"\nwav_path = \"{}\"\nwav_sample_rate = {RATE}\npause_ms = 100\n{extra}",
        wav.display()
    );
    let (double, daemon) = spawn_daemon_with_double(&toml).await;
    Setup {
        double: Some(double),
        daemon,
        wav,
        _dir: dir,
    }
}

/// The samples the wav device has written so far (mono s16 at RATE), sizes in the header
/// ignored.
fn played(wav: &PathBuf) -> Vec<f32> {
    let bytes = std::fs::read(wav).unwrap();
    s16_to_f32(&bytes[44..])
}

fn ms(frames: usize) -> f64 {
    frames as f64 * 1000.0 / f64::from(RATE)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announcement_plays_whole_with_leading_silence_and_chime() {
    let s = setup("").await;
    let mut client = s.daemon.client().await;
    // 20 characters: 800 ms of 440 Hz.
    let mut req = speak_request("a1", "@440Hz one two three", pb::Priority::Message);
    req.leading_silence_ms = 300;
    req.chime = pb::Chime::Play as i32;
    let mut stream = client.speak(req).await.unwrap().into_inner();
    let ev = speak_events(&mut stream).await;
    assert!(
        matches!(ev[0], E::Queued(ref q) if q.position == 0 && q.device == "wav"),
        "{ev:?}"
    );
    assert!(matches!(ev[1], E::Started(_)));
    let E::Finished(f) = &ev[2] else {
        panic!("{ev:?}")
    };
    // leading silence + chime (160 + 240 + 120 ms) + speech
    assert_eq!(f.played_ms, 300 + 520 + 800);
    let x = played(&s.wav);
    assert_eq!(
        x.len(),
        (RATE as u64 * f.played_ms / 1000) as usize,
        "all of it reached the device"
    );
    let first = x.iter().position(|v| v.abs() > 1e-4).unwrap();
    assert!(
        (ms(first) - 300.0).abs() <= 1.0,
        "leading silence {} ms",
        ms(first)
    );
    let chime = &x[first..first + (RATE as usize * 150 / 1000)];
    assert!(
        (peak_frequency(chime, RATE) - 880.0).abs() < 8.0,
        "the chime comes first"
    );
    let speech = &x[x.len() - RATE as usize * 800 / 1000..];
    assert!((peak_frequency(speech, RATE) - 440.0).abs() <= 1.5);
    let tail = &x[x.len() - RATE as usize / 20..];
    assert!(rms(tail) > 0.2, "the last 50 ms are there");
    s.daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn important_interrupts_a_message_and_the_queue_goes_on() {
    let s = setup("").await;
    let mut client = s.daemon.client().await;
    // 2.4 s of 440 Hz.
    let mut m = client
        .speak(speak_request(
            "m",
            "@440Hz a message that is long enough to be cut.",
            pb::Priority::Message,
        ))
        .await
        .unwrap()
        .into_inner();
    until_started(&mut m).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut i = client
        .speak(speak_request("i", "@880Hz urgent", pb::Priority::Important))
        .await
        .unwrap()
        .into_inner();
    let mut n = client
        .speak(speak_request("n", "@660Hz fyi", pb::Priority::Notification))
        .await
        .unwrap()
        .into_inner();
    let ev = speak_events(&mut m).await;
    let Some(E::Interrupted(cut)) = ev.last() else {
        panic!("{ev:?}")
    };
    assert_eq!(cut.by_id, "i");
    assert!(
        (500..=900).contains(&cut.played_ms),
        "cut after {} ms",
        cut.played_ms
    );
    assert!(
        matches!(speak_events(&mut n).await.last(), Some(E::Dropped(_))),
        "NOTIFICATION dropped while busy"
    );
    assert!(matches!(
        speak_events(&mut i).await.last(),
        Some(E::Finished(_))
    ));
    let x = played(&s.wav);
    let seg = segments(&x, RATE, 5);
    assert_eq!(seg.len(), 2, "{seg:?}");
    let (a, b) = (seg[0], seg[1]);
    assert!(
        (ms(a.1) - cut.played_ms as f64).abs() <= 60.0,
        "{} vs {}",
        ms(a.1),
        cut.played_ms
    );
    assert!((peak_frequency(&x[a.0..a.0 + a.1], RATE) - 440.0).abs() < 3.0);
    assert!(
        (ms(b.1) - 13.0 * 40.0).abs() <= 1.0,
        "the IMPORTANT one whole: {} ms",
        ms(b.1)
    );
    assert!((peak_frequency(&x[b.0..b.0 + b.1], RATE) - 880.0).abs() < 3.0);
    s.daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_stop_and_disconnects() {
    let s = setup("").await;
    let mut client = s.daemon.client().await;
    let devices = client
        .list_output_devices(pb::ListOutputDevicesRequest {})
        .await
        .unwrap()
        .into_inner()
        .devices;
    let wav = devices
        .iter()
        .find(|d| d.name == "wav")
        .expect("wav listed");
    assert!(wav.is_default);
    assert_eq!(wav.sample_rates_hz, vec![RATE]);
    assert!(devices.iter().any(|d| d.name == "null"));
    // Unknown device: INVALID_ARGUMENT listing the known ones.
    let mut bad = speak_request("x", "@440Hz hi", pb::Priority::Message);
    bad.device = "alsa:nope".into();
    let status = client.speak(bad).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("device:") && status.message().contains("wav"),
        "{}",
        status.message()
    );

    // A client that hangs up does not cancel its announcement by default...
    let mut keep = client
        .speak(speak_request(
            "keep",
            "@440Hz plays on after the hangup",
            pb::Priority::Message,
        ))
        .await
        .unwrap()
        .into_inner();
    until_started(&mut keep).await;
    drop(keep);
    // ...unless it asked to.
    let mut req = speak_request(
        "gone",
        "@550Hz cancelled with its client",
        pb::Priority::Message,
    );
    req.cancel_on_disconnect = true;
    let mut gone = client.speak(req).await.unwrap().into_inner();
    assert!(matches!(
        gone.message().await.unwrap().unwrap().event,
        Some(E::Queued(_))
    ));
    drop(gone);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut queued = client
        .speak(speak_request("q", "@660Hz queued", pb::Priority::Message))
        .await
        .unwrap()
        .into_inner();
    // StopSpeaking ALL: "keep" (still playing, 1.3 s) and "q"; "gone" was already removed.
    let mut stopped = client
        .stop_speaking(pb::StopSpeakingRequest {
            scope: pb::stop_speaking_request::Scope::All as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .stopped_ids;
    stopped.sort();
    assert_eq!(stopped, vec!["keep", "q"]);
    assert!(matches!(
        speak_events(&mut queued).await.last(),
        Some(E::Dropped(_))
    ));
    let status = client
        .stop_speaking(pb::StopSpeakingRequest {
            scope: pb::stop_speaking_request::Scope::Id as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(status.message().starts_with("id:"), "{}", status.message());
    // Only "keep" ever sounded.
    let x = played(&s.wav);
    let seg = segments(&x, RATE, 5);
    assert_eq!(seg.len(), 1, "{seg:?}");
    assert!((peak_frequency(&x[seg[0].0..seg[0].0 + seg[0].1], RATE) - 440.0).abs() < 3.0);
    s.daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speak_keeps_speaking_through_an_upstream_outage() {
    let mut s = setup("[dashscope]\nretry_base_ms = 10\nconnect_timeout_ms = 500\n").await;
    let (daemon, wav) = (&s.daemon, s.wav.clone());
    let mut client = daemon.client().await;
    let speak = |client: &mut pb::speech_client::SpeechClient<_>, id: &str, text: &str| {
        let req = speak_request(id, text, pb::Priority::Message);
        let mut client = client.clone();
        async move {
            let mut stream = client.speak(req).await.unwrap().into_inner();
            speak_events(&mut stream).await
        }
    };
    // Played once with the upstream there: cached.
    let ev = speak(&mut client, "s1", "@660Hz doors closing").await;
    assert!(matches!(ev.last(), Some(E::Finished(_))), "{ev:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = played(&wav).len();
    s.double.take().expect("double").stop().await;

    // The cached phrase plays again, the same tone.
    let ev = speak(&mut client, "s2", "@660Hz doors closing").await;
    assert!(matches!(ev.last(), Some(E::Finished(_))), "{ev:?}");
    let x = played(&wav);
    let second = &x[before..];
    let hz = peak_frequency(second, RATE);
    assert!((hz - 660.0).abs() <= 2.0, "{hz} Hz");
    let secs = ms(second.len()) / 1000.0;
    assert!((0.7..1.2).contains(&secs), "{secs} s");

    // An uncached phrase is spoken by espeak-ng instead of failing.
    let before = x.len();
    let ev = speak(&mut client, "s3", "Please use the stairs.").await;
    assert!(matches!(ev.last(), Some(E::Finished(_))), "{ev:?}");
    let x = played(&wav);
    let third = &x[before..];
    assert!(ms(third.len()) > 500.0, "{} ms", ms(third.len()));
    assert!(voiced_fraction(third, RATE) > 0.3, "speech was played");
}

/// Issue 23 item 6: a device holds at most `playback.max_queued` announcements (queued and
/// playing); more are refused with RESOURCE_EXHAUSTED naming the setting. One whose client
/// hung up still counts, and still plays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_speak_queue_of_a_device_is_bounded() {
    let s = setup("max_queued = 3\n").await;
    let mut client = s.daemon.client().await;
    let mut a = client
        .speak(speak_request(
            "a",
            // 3.1 s: it is still playing when the refused calls come, even on a loaded machine.
            "@440Hz first, and long enough to be playing still when the last calls come in",
            pb::Priority::Message,
        ))
        .await
        .unwrap()
        .into_inner();
    until_started(&mut a).await;
    let mut b = client
        .speak(speak_request("b", "@550Hz second", pb::Priority::Message))
        .await
        .unwrap()
        .into_inner();
    let mut c = client
        .speak(speak_request(
            "c",
            "@660Hz third, left",
            pb::Priority::Message,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        c.message().await.unwrap().unwrap().event,
        Some(E::Queued(_))
    ));
    drop(c);
    for priority in [pb::Priority::Message, pb::Priority::Important] {
        let status = client
            .speak(speak_request("d", "@770Hz one too many", priority))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().starts_with("playback.max_queued:")
                && status.message().contains("3 announcements"),
            "{}",
            status.message()
        );
    }
    for stream in [&mut a, &mut b] {
        assert!(matches!(
            speak_events(stream).await.last(),
            Some(E::Finished(_))
        ));
    }
    // "c" plays with nobody listening; once it is done there is room again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut e = loop {
        match client
            .speak(speak_request(
                "e",
                "@880Hz room again",
                pb::Priority::Message,
            ))
            .await
        {
            Ok(stream) => break stream.into_inner(),
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted);
                assert!(tokio::time::Instant::now() < deadline, "never room again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(matches!(
        speak_events(&mut e).await.last(),
        Some(E::Finished(_))
    ));
    let x = played(&s.wav);
    let seg = segments(&x, RATE, 5);
    let tones: Vec<f64> = seg
        .iter()
        .map(|&(start, len)| peak_frequency(&x[start..start + len], RATE).round())
        .collect();
    assert_eq!(tones, [440.0, 550.0, 660.0, 880.0], "{seg:?}");
    s.daemon.stop().await.unwrap();
}

/// Issue 23 item 10: an announcement queued on an idle device whose expiry passes while its
/// synthesis has not delivered enough to start (upstream is slow to answer) is EXPIRED, and
/// nothing of it plays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announcement_that_cannot_start_before_its_expiry_on_an_idle_device_expires() {
    let s = setup("").await;
    let double = s.double.as_ref().unwrap();
    double.push_fault(dashscope::Fault::once(
        dashscope::FaultKind::SlowFirstByte {
            delay: Duration::from_secs(2),
        },
    ));
    let mut client = s.daemon.client().await;
    let mut req = speak_request(
        "late",
        "@440Hz stale by the time it could start",
        pb::Priority::Message,
    );
    req.expires_after_ms = 500;
    let mut late = client.speak(req).await.unwrap().into_inner();
    let ev = speak_events(&mut late).await;
    assert!(
        matches!(ev.as_slice(), [E::Queued(_), E::Expired(_)]),
        "{ev:?}"
    );
    // The device goes on with the next one.
    let mut next = client
        .speak(speak_request(
            "next",
            "@660Hz on time",
            pb::Priority::Message,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        speak_events(&mut next).await.last(),
        Some(E::Finished(_))
    ));
    let x = played(&s.wav);
    let seg = segments(&x, RATE, 5);
    assert_eq!(seg.len(), 1, "only the next one played: {seg:?}");
    assert!((peak_frequency(&x[seg[0].0..seg[0].0 + seg[0].1], RATE) - 660.0).abs() < 3.0);
    s.daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_every_speak_stream_with_its_final_event() {
    let s = setup("").await;
    let mut client = s.daemon.client().await;
    // 2.4 s of 440 Hz, then one queued behind it.
    let mut playing = client
        .speak(speak_request(
            "playing",
            "@440Hz a message that is long enough to be cut.",
            pb::Priority::Message,
        ))
        .await
        .unwrap()
        .into_inner();
    until_started(&mut playing).await;
    let mut queued = client
        .speak(speak_request(
            "queued",
            "@660Hz next",
            pb::Priority::Message,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        queued.message().await.unwrap().unwrap().event,
        Some(E::Queued(_))
    ));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let stop = tokio::spawn(s.daemon.stop());
    let ev = speak_events(&mut playing).await;
    let Some(E::Interrupted(cut)) = ev.last() else {
        panic!("{ev:?}")
    };
    assert!(cut.by_id.is_empty(), "{cut:?}");
    assert!(
        (300..=2000).contains(&cut.played_ms),
        "cut after {} ms",
        cut.played_ms
    );
    let ev = speak_events(&mut queued).await;
    assert!(
        matches!(ev.as_slice(), [E::Dropped(d)] if d.by_id.is_empty()),
        "{ev:?}"
    );
    stop.await.unwrap().unwrap();
}
