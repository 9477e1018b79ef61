//! The cpal sink through real alsa-lib with no sound card: ALSA's `file` plugin over `null`
//! captures what a stream plays (see `support::alsa`). Each test that needs the sandbox runs
//! in a child process (`alsa::run`), as alsa-lib takes its configuration from the environment.

use std::{f32::consts::TAU, time::Duration};

use herald::playback::{
    PlaybackSettings, Registry, Sink, SinkFactory,
    cpal_sink::{self, COMMON_RATES, CpalSink},
};
use rustfft::{FftPlanner, num_complex::Complex};

use crate::support::alsa;

const RATE: u32 = 48000;
/// Frames per write: the 20 ms blocks herald's device task writes.
const BLOCK: usize = RATE as usize / 50;

// ---- outside the sandbox: this machine's real ALSA configuration ----

#[test]
fn unknown_devices_are_clear_errors() {
    for name in ["alsa:nonexistent", "no such device"] {
        let e = cpal_sink::open(name).expect_err(name);
        assert_eq!(e.device, name);
        assert!(
            e.reason.contains("no such output device") && e.reason.contains("alsa:null"),
            "{e}"
        );
    }
}

#[test]
fn the_default_device_opens_or_fails_cleanly() {
    // On a machine without a sound card the default PCM does not exist; with one, it opens
    // (and is dropped without playing anything).
    match cpal_sink::open("default") {
        Ok(sink) => {
            assert!(sink.spec().sample_rate > 0 && sink.spec().channels > 0);
            println!("default opened: {sink:?}");
        }
        Err(e) => {
            assert_eq!(e.device, "default");
            assert!(!e.reason.is_empty());
            println!("default failed as expected without a sound card: {e}");
        }
    }
}

#[test]
fn listing_the_real_devices_never_panics() {
    let devices = cpal_sink::list();
    assert!(devices.iter().all(|d| d.name.contains(':')), "{devices:?}");
}

// ---- in the sandbox ----

#[test]
fn the_sandbox_devices_are_listed() {
    alsa::run(concat!(
        module_path!(),
        "::sandboxed::the_sandbox_devices_are_listed"
    ));
}

#[test]
fn a_tone_plays_out_exactly_through_the_file_plugin() {
    alsa::run(concat!(
        module_path!(),
        "::sandboxed::a_tone_plays_out_exactly_through_the_file_plugin"
    ));
}

#[test]
fn a_paused_unpaced_device_stops_spinning() {
    alsa::run(concat!(
        module_path!(),
        "::sandboxed::a_paused_unpaced_device_stops_spinning"
    ));
}

#[test]
fn a_discard_drops_what_has_not_played() {
    alsa::run(concat!(
        module_path!(),
        "::sandboxed::a_discard_drops_what_has_not_played"
    ));
}

#[test]
fn a_device_without_f32_gets_i16() {
    alsa::run(concat!(
        module_path!(),
        "::sandboxed::a_device_without_f32_gets_i16"
    ));
}

#[test]
fn a_device_failing_mid_play_fails_the_write_and_reopens() {
    alsa::run(concat!(
        module_path!(),
        "::sandboxed::a_device_failing_mid_play_fails_the_write_and_reopens"
    ));
}

#[test]
fn default_is_the_default_pcm() {
    alsa::run(concat!(
        module_path!(),
        "::sandboxed::default_is_the_default_pcm"
    ));
}

/// Interleaved stereo: `freq` Hz at 0.5 on the left and 0.25 on the right (so a swap of the
/// channels shows), starting at a phase where no sample is 0.
fn tone(freq: f32, frames: usize) -> Vec<f32> {
    (0..frames)
        .flat_map(|i| {
            let s = (TAU * freq * i as f32 / RATE as f32 + 0.1).sin();
            [0.5 * s, 0.25 * s]
        })
        .collect()
}

/// Play `samples` in 20 ms blocks, as herald's device task does.
async fn play(sink: &mut CpalSink, samples: &[f32]) {
    for block in samples.chunks(BLOCK * 2) {
        sink.write(block).await.expect("write");
    }
}

/// The samples a sandbox PCM was sent, as the stream's format.
fn read_f32(sandbox: &alsa::Sandbox, pcm: &str) -> Vec<f32> {
    sandbox
        .read(pcm)
        .chunks_exact(4)
        .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn read_i16(sandbox: &alsa::Sandbox, pcm: &str) -> Vec<i16> {
    sandbox
        .read(pcm)
        .chunks_exact(2)
        .map(|b| i16::from_ne_bytes([b[0], b[1]]))
        .collect()
}

/// Stereo frames minus the all-zero ones: the silence an unpaced device plays between writes.
fn strip_silence<T: Copy + Default + PartialEq>(samples: &[T]) -> Vec<T> {
    samples
        .chunks_exact(2)
        .filter(|f| f.iter().any(|s| *s != T::default()))
        .flatten()
        .copied()
        .collect()
}

/// The strongest frequency in the first second of a channel, to the nearest Hz (the FFT spans
/// exactly 1 s, zero-padded if shorter).
fn dominant_frequency(channel: &[f32]) -> usize {
    let n = RATE as usize;
    let mut buf: Vec<Complex<f32>> = channel
        .iter()
        .take(n)
        .map(|&x| Complex::new(x, 0.0))
        .collect();
    buf.resize(n, Complex::new(0.0, 0.0));
    FftPlanner::new().plan_fft_forward(n).process(&mut buf);
    (1..n / 2)
        .max_by(|&a, &b| buf[a].norm().total_cmp(&buf[b].norm()))
        .expect("bins")
}

/// User + system CPU time of this process so far.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: u64 = fields
        .get(11..13)
        .map_or(0, |f| f.iter().filter_map(|t| t.parse::<u64>().ok()).sum());
    Duration::from_millis(ticks * 10)
}

/// The tests that run inside the sandbox (ignored otherwise; see `alsa::run`).
mod sandboxed {
    use super::*;

    fn sandbox() -> Option<alsa::Sandbox> {
        let sandbox = alsa::Sandbox::from_env();
        if sandbox.is_none() {
            eprintln!("not in an ALSA sandbox: skipped (run through its parent test)");
        }
        sandbox
    }

    #[test]
    #[ignore = "runs in a child process inside an ALSA sandbox"]
    fn the_sandbox_devices_are_listed() {
        let Some(_sandbox) = sandbox() else { return };
        let devices = cpal_sink::list();
        println!("{devices:#?}");
        let tofile = devices
            .iter()
            .find(|d| d.name == "alsa:tofile")
            .expect("alsa:tofile listed");
        assert_eq!(tofile.description, "herald test sink");
        assert_eq!(tofile.sample_rates, COMMON_RATES);
        assert!(
            tofile.channels.starts_with(&[1, 2]),
            "{:?}",
            tofile.channels
        );
        assert!(tofile.channels.is_sorted());
        assert!(devices.iter().any(|d| d.name == "alsa:tofile16"));
        assert!(devices.iter().any(|d| d.name == "alsa:null"));
        let mut names: Vec<_> = devices.iter().map(|d| &d.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), devices.len(), "names are unique");

        // Through herald's registry, next to its own devices.
        let registry = Registry::new(PlaybackSettings::default());
        let listed = registry.list();
        assert!(listed.iter().any(|d| d.name == "alsa:tofile"));
        assert!(listed.iter().any(|d| d.name == "null"));
        let sink = registry
            .open("alsa:tofile")
            .expect("open through the registry");
        assert_eq!((sink.spec().sample_rate, sink.spec().channels), (RATE, 2));
        assert_eq!(sink.name(), "alsa:tofile");
    }

    #[tokio::test]
    #[ignore = "runs in a child process inside an ALSA sandbox"]
    async fn a_tone_plays_out_exactly_through_the_file_plugin() {
        let Some(sandbox) = sandbox() else { return };
        let mut sink = cpal_sink::open("alsa:tofile").expect("open alsa:tofile");
        assert_eq!(sink.device_id(), "alsa:tofile");
        assert_eq!(sink.sample_format(), "f32");
        assert_eq!((sink.spec().sample_rate, sink.spec().channels), (RATE, 2));

        let first = tone(440.0, RATE as usize); // 1 s
        let started = tokio::time::Instant::now();
        play(&mut sink, &first).await;
        sink.drain().await.expect("drain");
        let played_in = started.elapsed();
        sink.pause().await.expect("pause");
        let after_first = sink.stats();
        // A pause releases the unpaced device; the next write reopens it, appending to the file.
        let second = tone(660.0, RATE as usize / 4);
        play(&mut sink, &second).await;
        sink.drain().await.expect("drain");
        sink.pause().await.expect("pause");
        let stats = sink.stats();
        println!(
            "1 s tone written and drained in {played_in:?}; after it: {after_first:?}; \
             after both: {stats:?}; underruns() = {}",
            sink.underruns()
        );
        drop(sink);
        assert_eq!(stats.streams, 2, "reopened after the pause");
        assert!(stats.underrun_frames >= stats.underruns);

        let raw = read_f32(&sandbox, "tofile");
        let played = strip_silence(&raw);
        println!(
            "raw file: {} frames, {} of them audio",
            raw.len() / 2,
            played.len() / 2
        );
        assert!(played.iter().all(|s| s.is_finite()), "no NaN or inf");
        let expected: Vec<f32> = first.iter().chain(&second).copied().collect();
        let frames = played.len() / 2;
        assert!(
            frames.abs_diff(expected.len() / 2) <= BLOCK,
            "{frames} frames of audio for {} written",
            expected.len() / 2
        );
        let left: Vec<f32> = played.iter().step_by(2).copied().collect();
        assert_eq!(dominant_frequency(&left), 440);
        // The drain waited for the end: the last 50 ms of each tone are there.
        let tail = |s: &[f32]| s[s.len() - 2 * RATE as usize / 20..].to_vec();
        let first_end = first.len().min(played.len());
        assert_eq!(
            tail(&played[..first_end]),
            tail(&first),
            "end of the 1 s tone"
        );
        assert_eq!(tail(&played), tail(&second), "end of the second tone");
        // f32 passes through untouched: exactly what was written, in order.
        assert!(
            played == expected,
            "the audio differs from what was written"
        );
    }

    #[tokio::test]
    #[ignore = "runs in a child process inside an ALSA sandbox"]
    async fn a_paused_unpaced_device_stops_spinning() {
        let Some(_sandbox) = sandbox() else { return };
        let mut sink = cpal_sink::open("alsa:tofile").expect("open alsa:tofile");
        let window = Duration::from_millis(200);

        // Opened, never started: the stream's thread waits.
        let (c0, t0) = (sink.stats().callbacks, cpu_time());
        tokio::time::sleep(window).await;
        let idle = (sink.stats().callbacks - c0, cpu_time() - t0);

        // Started with nothing more to play: the unpaced plugin plays silence flat out.
        sink.write(&tone(440.0, 4 * BLOCK)).await.expect("write");
        let (c0, t0) = (sink.stats().callbacks, cpu_time());
        tokio::time::sleep(window).await;
        let running = (sink.stats().callbacks - c0, cpu_time() - t0);
        let underruns = sink.underruns();

        sink.drain().await.expect("drain");
        sink.pause().await.expect("pause");
        let (c0, t0) = (sink.stats().callbacks, cpu_time());
        tokio::time::sleep(window).await;
        let paused = (sink.stats().callbacks - c0, cpu_time() - t0);
        println!(
            "over {window:?}: opened {idle:?}, running dry {running:?} (callbacks, CPU), \
             paused {paused:?}; {underruns} underruns while running dry; {:?}",
            sink.stats()
        );
        assert_eq!(idle.0, 0, "no callbacks before the first write");
        assert!(running.0 > 0, "callbacks while playing");
        assert!(underruns > 0, "running dry while playing counts underruns");
        assert_eq!(paused.0, 0, "no callbacks while paused");
        // And it plays again after the pause.
        sink.write(&tone(440.0, BLOCK))
            .await
            .expect("write after pause");
        sink.drain().await.expect("drain after pause");
        sink.pause().await.expect("pause");
    }

    #[tokio::test]
    #[ignore = "runs in a child process inside an ALSA sandbox"]
    async fn a_discard_drops_what_has_not_played() {
        let Some(sandbox) = sandbox() else { return };
        let mut sink = cpal_sink::open("alsa:tofile").expect("open alsa:tofile");

        // 40 ms is below the start threshold: nothing has played, all of it is dropped.
        let unheard = tone(220.0, 2 * BLOCK);
        play(&mut sink, &unheard).await;
        assert_eq!(sink.discard(), 2 * BLOCK);

        // 500 ms, then an interruption: the unpaced plugin may have played any part of it.
        let interrupted = tone(440.0, RATE as usize / 2);
        play(&mut sink, &interrupted).await;
        let dropped = sink.discard();
        assert!(dropped <= interrupted.len() / 2, "{dropped}");

        let next = tone(660.0, RATE as usize / 5);
        play(&mut sink, &next).await;
        sink.drain().await.expect("drain");
        sink.pause().await.expect("pause");
        println!("discard estimated {dropped} frames; {:?}", sink.stats());
        drop(sink);

        let played = strip_silence(&read_f32(&sandbox, "tofile"));
        assert!(played.len() >= next.len(), "{} samples", played.len());
        let (head, tail) = played.split_at(played.len() - next.len());
        assert!(
            tail == next.as_slice(),
            "what followed the discard played in full"
        );
        // Before it: a prefix of the interrupted tone, short by at most the estimate, and none
        // of the first tone.
        assert!(head.len() <= interrupted.len());
        assert!(
            head.len() / 2 >= interrupted.len() / 2 - dropped,
            "{} frames played, {dropped} estimated dropped",
            head.len() / 2
        );
        assert!(
            head == &interrupted[..head.len()],
            "a prefix of the interrupted tone"
        );
    }

    #[tokio::test]
    #[ignore = "runs in a child process inside an ALSA sandbox"]
    async fn a_device_without_f32_gets_i16() {
        let Some(sandbox) = sandbox() else { return };
        let mut sink = cpal_sink::open("alsa:tofile16").expect("open alsa:tofile16");
        assert_eq!(sink.sample_format(), "i16");
        assert_eq!((sink.spec().sample_rate, sink.spec().channels), (RATE, 2));
        let written = tone(440.0, RATE as usize);
        play(&mut sink, &written).await;
        sink.drain().await.expect("drain");
        sink.pause().await.expect("pause");
        drop(sink);

        let played = strip_silence(&read_i16(&sandbox, "tofile16"));
        let expected: Vec<i16> = written
            .iter()
            .map(|s| (s * 32767.0).round() as i16)
            .collect();
        assert!(played == strip_silence(&expected), "the i16 audio differs");
        let left: Vec<f32> = played.iter().step_by(2).map(|&s| f32::from(s)).collect();
        assert_eq!(dominant_frequency(&left), 440);
    }

    #[tokio::test]
    #[ignore = "runs in a child process inside an ALSA sandbox"]
    async fn a_device_failing_mid_play_fails_the_write_and_reopens() {
        let Some(_sandbox) = sandbox() else { return };
        let mut sink = cpal_sink::open("alsa:tofull").expect("open alsa:tofull");
        let audio = tone(440.0, RATE as usize);
        let mut failure = None;
        for block in audio.chunks(BLOCK * 2).cycle().take(250) {
            if let Err(e) = sink.write(block).await {
                failure = Some(e);
                break;
            }
        }
        let e = failure.expect("a write fails once the device has failed");
        println!("{e}; {:?}", sink.stats());
        assert_eq!(e.device, "alsa:tofull");
        assert!(e.reason.starts_with("the device failed: "), "{e}");
        // The failed stream was released; the next write opens the device again (and this
        // one fails again, later).
        assert_eq!(sink.stats().streams, 1);
        sink.write(&audio[..BLOCK * 2])
            .await
            .expect("write after reopening");
        assert_eq!(sink.stats().streams, 2);
        drop(sink);
        // Or, what herald does: open it anew.
        let sink = cpal_sink::open("alsa:tofull").expect("reopen alsa:tofull");
        assert_eq!(
            sink.spec(),
            herald::audio::AudioSpec {
                sample_rate: RATE,
                channels: 2
            }
        );
    }

    #[tokio::test]
    #[ignore = "runs in a child process inside an ALSA sandbox"]
    async fn default_is_the_default_pcm() {
        let Some(sandbox) = sandbox() else { return };
        let mut sink = cpal_sink::open("default").expect("open default");
        assert_eq!(sink.device_id(), "alsa:default");
        let written = tone(440.0, RATE as usize / 5);
        play(&mut sink, &written).await;
        sink.drain().await.expect("drain");
        sink.pause().await.expect("pause");
        drop(sink);
        let played = strip_silence(&read_f32(&sandbox, "default"));
        assert!(played == written, "the default PCM got the audio");
    }
}
