//! The `Sink` contract: what every output device promises the announcement queue, checked on
//! each implementation the library exposes: the clocked `null`, `wav` and capture sinks (on
//! paused tokio time, so their real-time clock costs nothing) and cpal through an ALSA sandbox
//! (`alsa:tofile`, the `file` plugin over `null`; each test alone in a child process).
//!
//! | property | null | wav | capture | cpal |
//! |---|---|---|---|---|
//! | [`reports_its_spec_and_name`] | ✓ | ✓ | ✓ | ✓ |
//! | [`accepts_blocks_at_its_spec_and_drains`] | ✓ | ✓ | ✓ | ✓ |
//! | [`plays_again_after_a_pause`] | ✓ | ✓ | ✓ | ✓ |
//! | [`discard_drops_at_most_what_was_written`] | ✓ | ✓ | ✓ | ✓ |
//! | [`plays_what_it_is_given`] | (keeps nothing) | ✓ | ✓ | ✓ |

use std::f32::consts::TAU;

use herald::{
    audio::AudioSpec,
    playback::{Sink, sink::ClockedSink},
};

/// One implementation: the sink, the spec it was opened at, and what it has played so far (its
/// own silence between writes left out), with how exactly (`tolerance`) it keeps samples.
struct Subject {
    sink: Box<dyn Sink>,
    spec: AudioSpec,
    played: Option<Box<dyn Fn() -> Vec<f32>>>,
    tolerance: f32,
    /// Keeps files alive.
    _dir: Option<tempfile::TempDir>,
}

/// `ms` of a tone at `spec`, interleaved, each channel at its own level (so a swap shows), from
/// a phase where no sample is 0.
fn tone(spec: AudioSpec, ms: u32) -> Vec<f32> {
    let frames = (spec.sample_rate * ms / 1000) as usize;
    (0..frames)
        .flat_map(|i| {
            let s = (TAU * 440.0 * i as f32 / spec.sample_rate as f32 + 0.1).sin();
            (0..spec.channels).map(move |c| 0.5 * s / f32::from(c + 1))
        })
        .collect()
}

/// Write `samples` in 20 ms blocks, as herald's device task does.
async fn play(sink: &mut dyn Sink, samples: &[f32]) {
    let spec = sink.spec();
    let block = (spec.sample_rate / 50) as usize * usize::from(spec.channels);
    for chunk in samples.chunks(block) {
        sink.write(chunk).await.expect("write");
    }
}

/// Play `samples`, wait until they have played, and pause.
async fn play_out(sink: &mut dyn Sink, samples: &[f32]) {
    play(sink, samples).await;
    sink.drain().await.expect("drain");
    sink.pause().await.expect("pause");
}

// ---- the properties ----

/// It plays at the spec it was opened at, and has a name.
async fn reports_its_spec_and_name(s: &mut Subject) {
    assert_eq!(s.sink.spec(), s.spec);
    assert!(!s.sink.name().is_empty());
}

/// It accepts interleaved f32 blocks at its spec, drains them and pauses; its underrun count
/// never goes down.
async fn accepts_blocks_at_its_spec_and_drains(s: &mut Subject) {
    let before = s.sink.underruns();
    play(&mut *s.sink, &tone(s.spec, 200)).await;
    let during = s.sink.underruns();
    s.sink.drain().await.expect("drain");
    s.sink.pause().await.expect("pause");
    assert!(before <= during && during <= s.sink.underruns());
}

/// After a pause, it plays again.
async fn plays_again_after_a_pause(s: &mut Subject) {
    for _ in 0..2 {
        play_out(&mut *s.sink, &tone(s.spec, 100)).await;
    }
}

/// An interruption drops no more than what was written, and what follows plays.
async fn discard_drops_at_most_what_was_written(s: &mut Subject) {
    let written = tone(s.spec, 100);
    play(&mut *s.sink, &written).await;
    let dropped = s.sink.discard();
    assert!(
        dropped <= written.len() / usize::from(s.spec.channels),
        "{dropped} frames dropped of {}",
        written.len()
    );
    play_out(&mut *s.sink, &tone(s.spec, 40)).await;
}

/// What it plays is what it was given: every sample, in order, channels in place.
async fn plays_what_it_is_given(s: &mut Subject) {
    let written = tone(s.spec, 300);
    play_out(&mut *s.sink, &written).await;
    let played = s.played.as_ref().expect("a way to hear it")();
    assert_eq!(played.len(), written.len(), "samples played");
    let worst = played
        .iter()
        .zip(&written)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst <= s.tolerance, "off by up to {worst}");
}

// ---- the implementations ----

const SPEC: AudioSpec = AudioSpec {
    sample_rate: 16_000,
    channels: 2,
};

/// One module of tests per implementation: `module::property` runs `property` on `subject`,
/// on paused tokio time.
macro_rules! contract {
    ($module:ident = $subject:expr; $($property:ident),+ $(,)?) => {
        mod $module {
            use super::*;
            $(
                #[tokio::test(start_paused = true)]
                async fn $property() {
                    super::$property(&mut $subject).await;
                }
            )+
        }
    };
}

fn null() -> Subject {
    Subject {
        sink: Box::new(ClockedSink::null(SPEC)),
        spec: SPEC,
        played: None,
        tolerance: 0.0,
        _dir: None,
    }
}

contract!(null = null();
    reports_its_spec_and_name,
    accepts_blocks_at_its_spec_and_drains,
    plays_again_after_a_pause,
    discard_drops_at_most_what_was_written,
);

/// The `wav` sink: 16-bit samples, sizes in the header patched at each pause.
fn wav() -> Subject {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("played.wav");
    let sink = ClockedSink::wav(path.clone(), SPEC).expect("a wav sink");
    Subject {
        sink: Box::new(sink),
        spec: SPEC,
        played: Some(Box::new(move || {
            let (spec, samples) = crate::support::wav_samples(std::fs::read(&path).unwrap());
            assert_eq!(
                (spec.sample_rate, spec.channels, spec.bits_per_sample),
                (SPEC.sample_rate, SPEC.channels, 16)
            );
            samples
        })),
        tolerance: 1.0 / 32767.0,
        _dir: Some(dir),
    }
}

contract!(wav = wav();
    reports_its_spec_and_name,
    accepts_blocks_at_its_spec_and_drains,
    plays_again_after_a_pause,
    discard_drops_at_most_what_was_written,
    plays_what_it_is_given,
);

fn capture() -> Subject {
    let (sink, captured) = ClockedSink::capture(SPEC);
    Subject {
        sink: Box::new(sink),
        spec: SPEC,
        played: Some(Box::new(move || {
            captured.lock().expect("the capture").samples.clone()
        })),
        tolerance: 0.0,
        _dir: None,
    }
}

contract!(capture = capture();
    reports_its_spec_and_name,
    accepts_blocks_at_its_spec_and_drains,
    plays_again_after_a_pause,
    discard_drops_at_most_what_was_written,
    plays_what_it_is_given,
);

/// cpal on the sandbox's `alsa:tofile` (48 kHz stereo f32, unpaced: it plays silence between
/// writes, left out of what it played).
#[cfg(feature = "playback")]
mod cpal {
    use herald::playback::cpal_sink;

    use super::*;
    use crate::support::alsa::{Sandbox, sandboxed};

    fn cpal(sandbox: Sandbox) -> Subject {
        Subject {
            sink: Box::new(cpal_sink::open("alsa:tofile").expect("open alsa:tofile")),
            spec: AudioSpec {
                sample_rate: 48_000,
                channels: 2,
            },
            played: Some(Box::new(move || {
                let raw: Vec<f32> = sandbox
                    .read("tofile")
                    .chunks_exact(4)
                    .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                raw.chunks_exact(2)
                    .filter(|frame| frame.iter().any(|s| *s != 0.0))
                    .flatten()
                    .copied()
                    .collect()
            })),
            tolerance: 0.0,
            _dir: None,
        }
    }

    /// Each property alone in a child process inside a new sandbox.
    macro_rules! in_a_sandbox {
        ($($property:ident),+ $(,)?) => {
            $(
                #[tokio::test]
                async fn $property() {
                    let path = concat!(module_path!(), "::", stringify!($property));
                    if let Some(sandbox) = sandboxed(path) {
                        super::$property(&mut cpal(sandbox)).await;
                    }
                }
            )+
        };
    }

    in_a_sandbox!(
        reports_its_spec_and_name,
        accepts_blocks_at_its_spec_and_drains,
        plays_again_after_a_pause,
        discard_drops_at_most_what_was_written,
        plays_what_it_is_given,
    );
}
