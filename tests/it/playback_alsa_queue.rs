//! The announcement queue end to end on the real output path: `herald serve` (the binary)
//! playing through cpal → alsa-lib onto a device paced at real time like a sound card (ALSA's
//! `file` plugin into a FIFO drained at the stream's byte rate; see `support::alsa`), driven
//! through gRPC `Speak`. The assertions are on what the device played.
//!
//! Audio comes from the DashScope double: a tone whose frequency the text picks
//! (`@880Hz ...`), 40 ms per character.

use std::time::Duration;

use herald::pb::{self, speak_event::Event as E};

use crate::support::{alsa::PacedDevice, dashscope::DashScopeDouble, *};

/// What herald opens the file-over-null device at: 48 kHz stereo f32.
const RATE: u32 = 48000;
const CHANNELS: usize = 2;
const PAUSE_MS: u64 = 100;

struct Setup {
    device: PacedDevice,
    server: ServeProcess,
    _double: DashScopeDouble,
}

async fn setup() -> Setup {
    let double = DashScopeDouble::start(API_KEY).await;
    let device = PacedDevice::start(RATE * CHANNELS as u32 * 4);
    let home = device.home().display().to_string();
    let toml = format!(
        "[playback]\ndevice = \"{}\"\npause_ms = {PAUSE_MS}\n",
        PacedDevice::DEVICE
    );
    let server = Serve::new(&toml)
        .double(&double)
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", &format!("{home}/.config"))
        .start();
    Setup {
        device,
        server,
        _double: double,
    }
}

impl Setup {
    /// Stop the daemon (it drains and closes the device) and return what played, as mono (the
    /// left channel).
    fn finish(mut self) -> Vec<f32> {
        let status = self.server.terminate();
        assert!(status.success(), "herald serve exited with {status}");
        let raw = self.device.finish();
        assert_eq!(raw.len() % (4 * CHANNELS), 0, "whole frames");
        raw.chunks_exact(4 * CHANNELS)
            .map(|f| f32::from_ne_bytes([f[0], f[1], f[2], f[3]]))
            .collect()
    }
}

fn ms(frames: usize) -> f64 {
    frames as f64 * 1000.0 / f64::from(RATE)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_plays_by_priority_on_a_real_time_alsa_device() {
    let _exclusive = exclusive().await;
    let s = setup().await;
    let mut client = s.server.client().await;
    // 2.16 s of 440 Hz.
    let mut m1 = client
        .speak(speak_request(
            "m1",
            "@440Hz the first message, long enough to be cut short.",
            pb::Priority::Message,
        ))
        .await
        .unwrap()
        .into_inner();
    until_started(&mut m1).await;
    // While it plays: a MESSAGE (waits its turn), a MESSAGE that expires before its turn, a
    // NOTIFICATION (dropped: something is playing), two PROGRESS reports (the latest wins).
    let mut m2 = client
        .speak(speak_request(
            "m2",
            "@550Hz second message",
            pb::Priority::Message,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut req = speak_request("x", "@990Hz stale news", pb::Priority::Message);
    req.expires_after_ms = 300;
    let mut x = client.speak(req).await.unwrap().into_inner();
    let mut n = client
        .speak(speak_request("n", "@660Hz fyi", pb::Priority::Notification))
        .await
        .unwrap()
        .into_inner();
    let mut p1 = client
        .speak(speak_request(
            "p1",
            "@700Hz ten percent",
            pb::Priority::Progress,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut p2 = client
        .speak(speak_request(
            "p2",
            "@770Hz fifty percent",
            pb::Priority::Progress,
        ))
        .await
        .unwrap()
        .into_inner();
    // Then an IMPORTANT one cuts the first message and goes ahead of the queue.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut i = client
        .speak(speak_request(
            "i",
            "@880Hz urgent news",
            pb::Priority::Important,
        ))
        .await
        .unwrap()
        .into_inner();

    let ev = speak_events(&mut m1).await;
    let Some(E::Interrupted(cut)) = ev.last() else {
        panic!("{ev:?}")
    };
    assert_eq!(cut.by_id, "i");
    assert!(
        (600..=1400).contains(&cut.played_ms),
        "cut after {} ms",
        cut.played_ms
    );
    assert!(
        matches!(speak_events(&mut n).await.as_slice(), [E::Dropped(_)]),
        "NOTIFICATION dropped while busy"
    );
    assert!(
        matches!(speak_events(&mut p1).await.last(), Some(E::Dropped(d)) if d.by_id == "p2"),
        "the older PROGRESS gives way"
    );
    assert!(matches!(
        speak_events(&mut x).await.last(),
        Some(E::Expired(_))
    ));
    for (id, stream) in [("i", &mut i), ("m2", &mut m2), ("p2", &mut p2)] {
        let ev = speak_events(stream).await;
        assert!(matches!(ev.last(), Some(E::Finished(_))), "{id}: {ev:?}");
    }

    let played = s.finish();
    // Silences under 20 ms join runs: an underrun inside an announcement shows as a longer
    // run (caught by the exact lengths below), not as a new one.
    let seg = segments(&played, RATE, 20);
    println!(
        "{} ms played; segments (start ms, length ms): {:?}; m1 cut at {} ms",
        ms(played.len()),
        seg.iter().map(|&(a, n)| (ms(a), ms(n))).collect::<Vec<_>>(),
        cut.played_ms
    );
    assert_eq!(seg.len(), 4, "m1 (cut), i, m2, p2: {seg:?}");
    let want = [
        ("m1", 440.0, None),
        ("i", 880.0, Some(18 * 40)),
        ("m2", 550.0, Some(21 * 40)),
        ("p2", 770.0, Some(20 * 40)),
    ];
    for (&(start, len), (id, hz, whole_ms)) in seg.iter().zip(want) {
        let f = peak_frequency(&played[start..start + len], RATE);
        assert!((f - hz).abs() < 3.0, "{id}: {f:.1} Hz, want {hz}");
        match whole_ms {
            // Played whole: every frame of it (tone edges below the silence threshold aside).
            Some(whole) => assert!(
                (ms(len) - f64::from(whole)).abs() <= 1.0,
                "{id}: {} ms of {whole}",
                ms(len)
            ),
            // Cut: as long as herald says it played (within the device's buffer).
            None => assert!(
                (ms(len) - cut.played_ms as f64).abs() <= 60.0,
                "{id}: {} ms played, herald says {}",
                ms(len),
                cut.played_ms
            ),
        }
    }
    // The next item was ready when the previous one ended (look-ahead; and the interrupting
    // one synthesized during the pause after the cut): the gaps are the configured pause, give
    // or take a few device periods (5 ms each here) after the cut.
    for (w, between) in seg.windows(2).zip(["m1→i", "i→m2", "m2→p2"]) {
        let gap = ms(w[1].0 - (w[0].0 + w[0].1));
        assert!(
            (PAUSE_MS as f64 - 1.0..=PAUSE_MS as f64 + 15.0).contains(&gap),
            "{between}: {gap:.1} ms gap, pause is {PAUSE_MS} ms"
        );
    }
    // The last 50 ms of the last item reached the device.
    let (start, len) = seg[3];
    let tail = &played[start + len - RATE as usize / 20..start + len];
    assert!(rms(tail) > 0.2, "the last 50 ms: rms {}", rms(tail));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leading_silence_chime_and_speech_on_a_real_time_alsa_device() {
    let _exclusive = exclusive().await;
    let s = setup().await;
    let mut client = s.server.client().await;
    // 20 characters: 800 ms of 440 Hz.
    let mut req = speak_request("a", "@440Hz one two three", pb::Priority::Message);
    req.leading_silence_ms = 300;
    req.chime = pb::Chime::Play as i32;
    let mut stream = client.speak(req).await.unwrap().into_inner();
    let ev = speak_events(&mut stream).await;
    assert!(
        matches!(ev[0], E::Queued(ref q) if q.device == PacedDevice::DEVICE),
        "{ev:?}"
    );
    let Some(E::Finished(f)) = ev.last() else {
        panic!("{ev:?}")
    };
    // leading silence + built-in chime (160 + 240 + 120 ms) + speech
    assert_eq!(f.played_ms, 300 + 520 + 800);

    let played = s.finish();
    let first = played.iter().position(|v| v.abs() > 1e-4).expect("sound");
    let last = played.iter().rposition(|v| v.abs() > 1e-4).unwrap();
    println!(
        "{} ms played: silence up to {} ms, sound up to {} ms",
        ms(played.len()),
        ms(first),
        ms(last)
    );
    assert!(
        (ms(first) - 300.0).abs() <= 2.0,
        "leading silence {} ms",
        ms(first)
    );
    assert!(
        (ms(last + 1 - first) - 1320.0).abs() <= 2.0,
        "chime and speech: {} ms",
        ms(last + 1 - first)
    );
    let chime = &played[first..first + RATE as usize * 150 / 1000];
    assert!(
        (peak_frequency(chime, RATE) - 880.0).abs() < 8.0,
        "the chime comes first"
    );
    let speech = &played[last + 1 - RATE as usize * 800 / 1000..=last];
    assert!((peak_frequency(speech, RATE) - 440.0).abs() <= 1.5);
    let tail = &played[last + 1 - RATE as usize / 20..=last];
    assert!(rms(tail) > 0.2, "the last 50 ms are there");
}
