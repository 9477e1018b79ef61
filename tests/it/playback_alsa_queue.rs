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

/// The tones of `played` (mono), in order, with how long each sounded: 10 ms windows louder
/// than the silence between announcements, each put to the nearest of `tones` by its zero
/// crossings, runs of the same tone joined. Silence between the announcements does not show
/// (the paced device captures nothing while it is closed).
fn tone_runs(played: &[f32], tones: &[f64]) -> Vec<(f64, f64)> {
    let window = RATE as usize / 100;
    let mut runs: Vec<(f64, f64)> = Vec::new();
    for w in played.chunks_exact(window) {
        if rms(w) < 0.2 {
            continue;
        }
        let crossings = w
            .windows(2)
            .filter(|p| (p[0] <= 0.0) != (p[1] <= 0.0))
            .count();
        let hz = crossings as f64 / 2.0 * 100.0;
        let tone = tones
            .iter()
            .copied()
            .min_by(|a, b| (a - hz).abs().total_cmp(&(b - hz).abs()))
            .unwrap();
        match runs.last_mut() {
            Some((t, ms)) if *t == tone => *ms += 10.0,
            _ => runs.push((tone, 10.0)),
        }
    }
    runs
}

/// Issue 23 item 9: a device that cannot pause (the file plugin) is released when its queue
/// runs empty and opened again by the next announcement. After idle gaps of 1.2 s, the next
/// announcement plays whole; and when the device cannot be opened at that moment (its FIFO is
/// away for 600 ms: a hiccup), herald tries again and plays the announcement whole once it can,
/// instead of failing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_idle_gap_and_a_device_hiccup_every_announcement_plays_whole() {
    let _exclusive = exclusive().await;
    let s = setup().await;
    let mut client = s.server.client().await;
    let fifo = s.device.fifo();
    let away = fifo.with_extension("away");
    let texts = ["@440Hz first one", "@660Hz second one", "@880Hz third one"];
    let mut played_ms = Vec::new();
    for (n, text) in texts.into_iter().enumerate() {
        if n > 0 {
            tokio::time::sleep(Duration::from_millis(1200)).await;
        }
        let hiccup = (n == 1).then(|| {
            std::fs::rename(&fifo, &away).unwrap();
            std::fs::create_dir(&fifo).unwrap();
            let (fifo, away) = (fifo.clone(), away.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(600)).await;
                std::fs::remove_dir(&fifo).unwrap();
                std::fs::rename(&away, &fifo).unwrap();
            })
        });
        let id = format!("a{n}");
        let mut stream = client
            .speak(speak_request(&id, text, pb::Priority::Message))
            .await
            .unwrap()
            .into_inner();
        let ev = speak_events(&mut stream).await;
        let Some(E::Finished(f)) = ev.last() else {
            panic!("{id} after an idle gap: {ev:?}")
        };
        assert_eq!(
            ev.iter().filter(|e| matches!(e, E::Started(_))).count(),
            1,
            "{ev:?}"
        );
        played_ms.push(f.played_ms);
        if let Some(h) = hiccup {
            h.await.unwrap();
        }
    }
    let want: Vec<u64> = texts
        .iter()
        .map(|t| t.chars().count() as u64 * 40)
        .collect();
    assert_eq!(played_ms, want, "herald's account");
    let played = s.finish();
    let mut runs = tone_runs(&played, &[440.0, 660.0, 880.0]);
    println!("tone runs (Hz, ms): {runs:?}");
    // A window across an announcement's edge (part tone, part silence) reads as a lower tone.
    runs.retain(|&(_, ms)| ms > 20.0);
    assert_eq!(
        runs.iter().map(|r| r.0).collect::<Vec<_>>(),
        [440.0, 660.0, 880.0],
        "each once, in order: {runs:?}"
    );
    for ((hz, ms), want) in runs.iter().zip(&want) {
        assert!(
            (ms - *want as f64).abs() <= 30.0,
            "{hz} Hz sounded {ms} ms of {want}"
        );
    }
}
