//! Queue semantics against a capture sink on paused tokio time: what played, in what order,
//! cut where, with which events. The audio source here writes tones straight into the
//! announcement's channel ("<hz>:<ms>" as the text), so the timing is exact and instant.

use std::sync::{Arc, Mutex};

use super::*;
use tokio_util::sync::CancellationToken;

use crate::{
    audio::{OutputEncoding, OutputFormat},
    engine::{EngineError, SynthStream, SynthesisRequest, Synthesizer, VoiceInfo},
    pipeline::Render,
    synthesis::Job,
};

const RATE: u32 = 8000;
const SPEC: AudioSpec = AudioSpec {
    sample_rate: RATE,
    channels: 1,
};

/// "hz:ms" → a tone; "hz:ms:stall" → a tone whose synthesis delivers 60 ms, then stalls for
/// `stall` ms before the rest (an upstream slow to get going).
struct ToneSource;

impl AudioSource for ToneSource {
    fn start(&self, ann: &Announcement, spec: AudioSpec) -> Synthesis {
        let mut parts = ann.job.request.text.split(':');
        let mut num = || {
            parts
                .next()
                .map(|p| p.parse::<u32>().expect("hz:ms[:stall]"))
        };
        let (hz, ms, stall) = (num().expect("hz") as f32, num().expect("ms"), num());
        let n = (spec.sample_rate * ms / 1000) as usize;
        let samples: Vec<f32> = (0..n)
            .map(|i| {
                ann.volume
                    * 0.5
                    * (2.0 * std::f32::consts::PI * hz * i as f32 / spec.sample_rate as f32).sin()
            })
            .collect();
        let (tx, rx) = mpsc::channel(SYNTHESIS_CHUNKS);
        let chunks: Vec<Vec<f32>> = samples
            .chunks((spec.sample_rate / 50) as usize)
            .map(<[f32]>::to_vec)
            .collect();
        match stall {
            None => {
                for chunk in chunks {
                    tx.try_send(Ok(chunk)).unwrap();
                }
            }
            Some(stall) => {
                tokio::spawn(async move {
                    for (i, chunk) in chunks.into_iter().enumerate() {
                        if i == 3 {
                            tokio::time::sleep(Duration::from_millis(stall.into())).await;
                        }
                        let _ = tx.send(Ok(chunk)).await;
                    }
                });
            }
        }
        Synthesis {
            rx,
            cancel: CancellationToken::new(),
        }
    }
}

struct Capture(Arc<Mutex<Option<Arc<Mutex<sink::Captured>>>>>);

impl SinkFactory for Capture {
    fn list(&self) -> Vec<DeviceInfo> {
        vec![DeviceInfo {
            name: "capture".into(),
            description: "test".into(),
            sample_rates: vec![RATE],
            channels: vec![1],
        }]
    }
    fn open(&self, _name: &str) -> Result<Box<dyn Sink>, SinkError> {
        let (sink, captured) = sink::ClockedSink::capture(SPEC);
        *self.0.lock().unwrap() = Some(captured);
        Ok(Box::new(sink))
    }
}

struct NoEngine;

#[async_trait::async_trait]
impl Synthesizer for NoEngine {
    fn name(&self) -> &'static str {
        "none"
    }
    fn serves_model(&self, _: &str) -> bool {
        true
    }
    fn default_voice(&self, _: &str) -> String {
        String::new()
    }
    fn voices(&self) -> Vec<VoiceInfo> {
        Vec::new()
    }
    fn native_sample_rate(&self, _: &str, _: &str) -> u32 {
        RATE
    }
    async fn synthesize(&self, _: SynthesisRequest) -> Result<SynthStream, EngineError> {
        Err(EngineError::Truncated)
    }
}

struct Harness {
    playback: Playback,
    captured: Arc<Mutex<Option<Arc<Mutex<sink::Captured>>>>>,
}

impl Harness {
    fn new(settings: PlaybackSettings) -> Self {
        let captured = Arc::new(Mutex::new(None));
        let factory = Arc::new(Capture(Arc::clone(&captured)));
        Self::with_factory(settings, factory, captured)
    }

    /// Over other devices named "capture"; `played` reads `captured`.
    fn with_factory(
        settings: PlaybackSettings,
        factory: Arc<dyn SinkFactory>,
        captured: Arc<Mutex<Option<Arc<Mutex<sink::Captured>>>>>,
    ) -> Self {
        let playback = Playback::new(
            PlaybackSettings {
                default_device: "capture".into(),
                ..settings
            },
            factory,
            Arc::new(ToneSource),
            CancellationToken::new(),
        );
        Self { playback, captured }
    }

    fn say(&self, id: &str, priority: Priority, text: &str) -> mpsc::Receiver<Report> {
        self.say_with(id, priority, text, |_| {})
    }

    fn say_with(
        &self,
        id: &str,
        priority: Priority,
        text: &str,
        edit: impl FnOnce(&mut Announcement),
    ) -> mpsc::Receiver<Report> {
        let (tx, rx) = mpsc::channel(16);
        let mut ann = self.announcement(id, priority, text);
        ann.events = tx.into();
        edit(&mut ann);
        self.playback.enqueue("capture", ann).unwrap();
        rx
    }

    fn announcement(&self, id: &str, priority: Priority, text: &str) -> Announcement {
        let (events, _) = mpsc::channel(1);
        Announcement {
            id: id.into(),
            priority,
            job: Job {
                request: SynthesisRequest {
                    text: text.into(),
                    ..Default::default()
                },
                engine: Arc::new(NoEngine),
                render: Render {
                    output: OutputFormat {
                        encoding: OutputEncoding::PcmF32Le,
                        spec: SPEC,
                    },
                    gain: 1.0,
                    chunk_ms: 20,
                    realtime: true,
                },
                options: crate::provider::Options::default(),
                characters: 0,
            },
            volume: 1.0,
            chime: false,
            leading_silence: Duration::ZERO,
            expires_at: None,
            events: events.into(),
        }
    }

    fn played(&self) -> Vec<f32> {
        let c = self.captured.lock().unwrap();
        c.as_ref().unwrap().lock().unwrap().samples.clone()
    }
}

/// Every event until the final one.
async fn events(rx: &mut mpsc::Receiver<Report>) -> Vec<Event> {
    let mut out = Vec::new();
    while let Some(r) = rx.recv().await {
        let last = r.event.is_final();
        out.push(r.event);
        if last {
            break;
        }
    }
    out
}

async fn started(rx: &mut mpsc::Receiver<Report>) {
    loop {
        match rx.recv().await.expect("events").event {
            Event::Started => return,
            Event::Queued { .. } => continue,
            other => panic!("not started: {other:?}"),
        }
    }
}

/// Frequency from zero crossings.
fn freq(x: &[f32]) -> f32 {
    let crossings = x
        .windows(2)
        .filter(|w| (w[0] <= 0.0) != (w[1] <= 0.0))
        .count();
    crossings as f32 / 2.0 / (x.len() as f32 / RATE as f32)
}

/// Runs of non-silent audio as (start, len) in frames; silences shorter than `gap` join runs.
fn segments(x: &[f32]) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < x.len() {
        if x[i] == 0.0 && x.get(i + 1).is_none_or(|s| *s == 0.0) {
            i += 1;
            continue;
        }
        let start = i;
        let mut zeros = 0;
        while i < x.len() && zeros < 8 {
            zeros = if x[i] == 0.0 { zeros + 1 } else { 0 };
            i += 1;
        }
        out.push((start, i - zeros - start));
    }
    out
}

fn ms(frames: usize) -> u64 {
    frames as u64 * 1000 / u64::from(RATE)
}

fn settings() -> PlaybackSettings {
    PlaybackSettings {
        pause: Duration::from_millis(100),
        ..PlaybackSettings::default()
    }
}

#[tokio::test(start_paused = true)]
async fn queued_items_play_by_priority_then_fifo_with_the_configured_pause() {
    let h = Harness::new(settings());
    let mut first = h.say("i1", Priority::Important, "300:400");
    started(&mut first).await;
    let mut m1 = h.say("m1", Priority::Message, "500:200");
    let mut m2 = h.say("m2", Priority::Message, "700:200");
    let mut i2 = h.say("i2", Priority::Important, "900:200");
    assert!(matches!(
        events(&mut first).await.last(),
        Some(Event::Finished { played_ms: 400 })
    ));
    let ev = events(&mut i2).await;
    assert!(matches!(ev[0], Event::Queued { position: 0, .. }), "{ev:?}");
    assert!(matches!(
        events(&mut m1).await[0],
        Event::Queued { position: 0, .. }
    ));
    assert!(matches!(
        events(&mut m2).await[0],
        Event::Queued { position: 1, .. }
    ));
    let x = h.played();
    let seg = segments(&x);
    assert_eq!(seg.len(), 4, "{seg:?}");
    for ((start, len), (hz, dur)) in
        seg.iter()
            .zip([(300.0, 400), (900.0, 200), (500.0, 200), (700.0, 200)])
    {
        assert_eq!(ms(*len), dur);
        let f = freq(&x[*start..start + len]);
        assert!((f - hz).abs() < hz * 0.02, "{f} Hz, want {hz}");
    }
    // Back to back, separated by exactly the configured pause.
    for w in seg.windows(2) {
        assert_eq!(ms(w[1].0 - (w[0].0 + w[0].1)), 100);
    }
}

#[tokio::test(start_paused = true)]
async fn important_cuts_a_message_at_the_moment_it_arrives() {
    let h = Harness::new(settings());
    let mut m = h.say("m", Priority::Message, "440:3000");
    started(&mut m).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut i = h.say("i", Priority::Important, "880:300");
    let ev = events(&mut m).await;
    let Some(Event::Interrupted { by_id, played_ms }) = ev.last() else {
        panic!("{ev:?}")
    };
    assert_eq!(by_id, "i");
    assert!((960..=1060).contains(played_ms), "played {played_ms} ms");
    assert!(matches!(
        events(&mut i).await.last(),
        Some(Event::Finished { .. })
    ));
    let x = h.played();
    let seg = segments(&x);
    assert_eq!(seg.len(), 2, "{seg:?}");
    // The message played for as long as the clock says (within one block and the lead),
    // then the IMPORTANT one, whole.
    assert!((960..=1060).contains(&ms(seg[0].1)), "{}", ms(seg[0].1));
    assert_eq!(ms(seg[1].1), 300);
    assert!((freq(&x[seg[1].0..seg[1].0 + seg[1].1]) - 880.0).abs() < 10.0);
}

#[tokio::test(start_paused = true)]
async fn notifications_are_dropped_when_busy_and_progress_keeps_the_latest() {
    let h = Harness::new(settings());
    let mut idle = h.say("n0", Priority::Notification, "600:100");
    assert!(matches!(
        events(&mut idle).await.last(),
        Some(Event::Finished { .. })
    ));
    let mut m = h.say("m", Priority::Message, "440:500");
    started(&mut m).await;
    let mut n = h.say("n", Priority::Notification, "600:100");
    assert!(matches!(
        events(&mut n).await.as_slice(),
        [Event::Dropped { .. }]
    ));
    let mut p1 = h.say("p1", Priority::Progress, "500:100");
    let mut p2 = h.say("p2", Priority::Progress, "550:100");
    let mut p3 = h.say("p3", Priority::Progress, "650:100");
    assert!(
        matches!(events(&mut p1).await.last(), Some(Event::Dropped { by_id }) if by_id == "p2")
    );
    assert!(
        matches!(events(&mut p2).await.last(), Some(Event::Dropped { by_id }) if by_id == "p3")
    );
    assert!(matches!(
        events(&mut p3).await.last(),
        Some(Event::Finished { .. })
    ));
    assert!(
        matches!(events(&mut m).await.last(), Some(Event::Finished { .. })),
        "PROGRESS does not cut a MESSAGE"
    );
    // n0 and m play back to back (m arrived when the device was idle), then the pause, then
    // only the latest PROGRESS.
    let x = h.played();
    let seg = segments(&x);
    assert_eq!(seg.len(), 2, "{seg:?}");
    assert_eq!(ms(seg[0].1), 600);
    assert_eq!(ms(seg[1].1), 100);
    assert!((freq(&x[seg[1].0..seg[1].0 + seg[1].1]) - 650.0).abs() < 15.0);
}

#[tokio::test(start_paused = true)]
async fn text_gives_way_to_anything_newer() {
    let h = Harness::new(settings());
    let mut t1 = h.say("t1", Priority::Text, "440:2000");
    started(&mut t1).await;
    let mut t2 = h.say("t2", Priority::Text, "500:1000");
    assert!(
        matches!(events(&mut t1).await.last(), Some(Event::Interrupted { by_id, .. }) if by_id == "t2")
    );
    started(&mut t2).await;
    let mut t3 = h.say("t3", Priority::Text, "600:200");
    let mut m = h.say("m", Priority::Message, "700:200");
    assert!(
        matches!(events(&mut t2).await.last(), Some(Event::Interrupted { by_id, .. }) if by_id == "t3")
    );
    // t3 was queued (t2 was still playing) and is dropped by the newer message.
    let ev = events(&mut t3).await;
    assert!(
        matches!(ev.last(), Some(Event::Dropped { by_id }) if by_id == "m")
            || matches!(ev.last(), Some(Event::Interrupted { by_id, .. }) if by_id == "m"),
        "{ev:?}"
    );
    assert!(matches!(
        events(&mut m).await.last(),
        Some(Event::Finished { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn expired_announcements_never_play() {
    let h = Harness::new(settings());
    let mut m = h.say("m", Priority::Message, "440:1000");
    started(&mut m).await;
    let mut e = h.say_with("e", Priority::Message, "880:200", |a| {
        a.expires_at = Some(Instant::now() + Duration::from_millis(300));
    });
    let mut ok = h.say_with("ok", Priority::Message, "660:200", |a| {
        a.expires_at = Some(Instant::now() + Duration::from_secs(5));
    });
    assert!(matches!(events(&mut e).await.last(), Some(Event::Expired)));
    assert!(matches!(
        events(&mut ok).await.last(),
        Some(Event::Finished { .. })
    ));
    assert_eq!(segments(&h.played()).len(), 2);
}

#[tokio::test(start_paused = true)]
async fn leading_silence_then_chime_then_speech_and_the_tail_is_played() {
    let h = Harness::new(settings());
    let mut a = h.say_with("a", Priority::Message, "440:500", |a| {
        a.leading_silence = Duration::from_millis(250);
        a.chime = true;
    });
    let ev = events(&mut a).await;
    let chime = chime::builtin(SPEC).len();
    let total = RATE as usize / 4 + chime + RATE as usize / 2;
    assert!(
        matches!(ev.last(), Some(Event::Finished { played_ms }) if *played_ms == ms(total)),
        "{ev:?}"
    );
    let x = h.played();
    assert_eq!(x.len(), total, "everything played, the last 50 ms included");
    assert!(
        x[..RATE as usize / 4].iter().all(|s| *s == 0.0),
        "250 ms of leading silence"
    );
    let first_sound = x.iter().position(|s| *s != 0.0).unwrap();
    assert!(ms(first_sound) >= 250 && ms(first_sound) <= 251);
    // The chime's first note (880 Hz), then the speech (440 Hz) to the very end.
    let note = (RATE * 160 / 1000) as usize;
    assert!((freq(&x[first_sound..first_sound + note]) - 880.0).abs() < 20.0);
    let tail = &x[x.len() - (RATE as usize / 20)..];
    assert!(
        (freq(tail) - 440.0).abs() < 25.0,
        "the last 50 ms are the speech"
    );
}

#[tokio::test(start_paused = true)]
async fn stop_speaking_scopes() {
    let h = Harness::new(settings());
    let mut a = h.say("a", Priority::Message, "440:2000");
    started(&mut a).await;
    let mut b = h.say("b", Priority::Message, "500:2000");
    let mut c = h.say("c", Priority::Message, "600:2000");
    assert_eq!(
        h.playback.stop("capture", StopScope::Id("b".into())).await,
        vec!["b"]
    );
    assert!(
        matches!(events(&mut b).await.last(), Some(Event::Dropped { by_id }) if by_id.is_empty())
    );
    assert_eq!(
        h.playback.stop("capture", StopScope::Current).await,
        vec!["a"]
    );
    assert!(matches!(
        events(&mut a).await.last(),
        Some(Event::Interrupted { .. })
    ));
    started(&mut c).await;
    let mut d = h.say("d", Priority::Message, "700:2000");
    let mut stopped = h.playback.stop("capture", StopScope::All).await;
    stopped.sort();
    assert_eq!(stopped, vec!["c", "d"]);
    assert!(matches!(
        events(&mut c).await.last(),
        Some(Event::Interrupted { .. })
    ));
    assert!(matches!(
        events(&mut d).await.last(),
        Some(Event::Dropped { .. })
    ));
    assert_eq!(
        h.playback.stop("capture", StopScope::Current).await,
        Vec::<String>::new()
    );
}

/// Opens capture sinks. The first one breaks once `fail_after` frames have been written to it,
/// or (`fail_on_resume`) at its first write after a pause, as a device that cannot pause does
/// when it is resumed after an idle gap. The `refuse` opens after the first fail (the device is
/// busy or gone for a while).
struct Breaking {
    fail_after: Option<usize>,
    fail_on_resume: bool,
    refuse: usize,
    /// Every sink breaks as the first does (a device that opens but never plays).
    every_sink: bool,
    opened: Opened,
    opens: Arc<Mutex<usize>>,
}

impl Breaking {
    fn new(fail_after: Option<usize>, fail_on_resume: bool, refuse: usize) -> Self {
        Self {
            fail_after,
            fail_on_resume,
            refuse,
            every_sink: false,
            opened: Arc::default(),
            opens: Arc::default(),
        }
    }
}

struct BreakingSink {
    inner: Box<dyn Sink>,
    left: Option<usize>,
    fail_on_resume: bool,
    wrote: bool,
    paused: bool,
}

#[async_trait::async_trait]
impl Sink for BreakingSink {
    fn name(&self) -> &str {
        "capture"
    }
    fn spec(&self) -> AudioSpec {
        self.inner.spec()
    }
    async fn write(&mut self, samples: &[f32]) -> Result<(), SinkError> {
        if self.fail_on_resume && self.paused {
            return Err(SinkError::new("capture", "cannot resume: no pause support"));
        }
        if let Some(left) = &mut self.left {
            if *left < samples.len() {
                return Err(SinkError::new("capture", "the device went away"));
            }
            *left -= samples.len();
        }
        self.wrote = true;
        self.inner.write(samples).await
    }
    async fn drain(&mut self) -> Result<(), SinkError> {
        self.inner.drain().await
    }
    async fn pause(&mut self) -> Result<(), SinkError> {
        // A stream never started has nothing to pause.
        self.paused = self.wrote;
        self.inner.pause().await
    }
}

impl SinkFactory for Breaking {
    fn list(&self) -> Vec<DeviceInfo> {
        Capture(Arc::default()).list()
    }
    fn open(&self, _name: &str) -> Result<Box<dyn Sink>, SinkError> {
        let mut opens = self.opens.lock().unwrap();
        *opens += 1;
        if *opens > 1 && *opens <= 1 + self.refuse {
            return Err(SinkError::new("capture", "Device or resource busy"));
        }
        let (sink, captured) = sink::ClockedSink::capture(SPEC);
        let mut opened = self.opened.lock().unwrap();
        let first = opened.is_empty();
        opened.push(captured);
        Ok(Box::new(BreakingSink {
            inner: Box::new(sink),
            left: if first || self.every_sink {
                self.fail_after
            } else {
                None
            },
            fail_on_resume: first && self.fail_on_resume,
            wrote: false,
            paused: false,
        }))
    }
}

/// What each sink a factory opened captures.
type Opened = Arc<Mutex<Vec<Arc<Mutex<sink::Captured>>>>>;

/// What each opened sink played.
fn played_by(opened: &Opened) -> Vec<Vec<f32>> {
    let opened = opened.lock().unwrap();
    opened
        .iter()
        .map(|c| c.lock().unwrap().samples.clone())
        .collect()
}

fn breaking(factory: Breaking) -> (Harness, Opened) {
    let opened = Arc::clone(&factory.opened);
    let h = Harness::with_factory(settings(), Arc::new(factory), Arc::default());
    (h, opened)
}

#[tokio::test(start_paused = true)]
async fn a_device_failing_early_in_an_announcement_replays_it_whole_on_the_reopened_device() {
    // 300 ms into the first announcement (less than playback.replay_within_ms).
    let (h, opened) = breaking(Breaking::new(Some(RATE as usize * 3 / 10), false, 0));
    let mut broken = h.say("broken", Priority::Message, "440:1000");
    let mut next = h.say("next", Priority::Message, "660:400");
    let ev = events(&mut broken).await;
    assert!(
        matches!(ev.last(), Some(Event::Finished { played_ms: 1000 })),
        "{ev:?}"
    );
    assert_eq!(
        ev.iter().filter(|e| matches!(e, Event::Started)).count(),
        1,
        "STARTED once: {ev:?}"
    );
    assert!(matches!(
        events(&mut next).await.last(),
        Some(Event::Finished { played_ms: 400 })
    ));
    let played = played_by(&opened);
    assert_eq!(played.len(), 2, "the device was reopened");
    // What played before the failure (less what was accepted ahead of the clock and never
    // sounded), then both announcements whole on the reopened device.
    let lead = sink::CLOCK_LEAD.as_millis() as u64;
    assert!(
        (300 - lead..=300).contains(&ms(played[0].len())),
        "{} ms",
        ms(played[0].len())
    );
    let second = &played[1];
    let seg = segments(second);
    assert_eq!(seg.len(), 2, "{seg:?}");
    assert_eq!((ms(seg[0].1), ms(seg[1].1)), (1000, 400));
    assert!((freq(&second[seg[0].0..seg[0].0 + seg[0].1]) - 440.0).abs() < 10.0);
    assert!((freq(&second[seg[1].0..seg[1].0 + seg[1].1]) - 660.0).abs() < 15.0);
}

#[tokio::test(start_paused = true)]
async fn a_device_failing_late_in_an_announcement_goes_on_where_it_was_on_the_reopened_device() {
    // 1.5 s into a 3 s announcement (more than playback.replay_within_ms).
    let (h, opened) = breaking(Breaking::new(Some(RATE as usize * 3 / 2), false, 0));
    let mut broken = h.say("broken", Priority::Message, "440:3000");
    let ev = events(&mut broken).await;
    let Some(Event::Finished { played_ms }) = ev.last() else {
        panic!("{ev:?}")
    };
    let played = played_by(&opened);
    assert_eq!(played.len(), 2, "the device was reopened");
    let (before, after) = (ms(played[0].len()), ms(segments(&played[1])[0].1));
    // The rest, from where the device failed: what the failed device held ahead of the clock
    // (at most CLOCK_LEAD) is lost, nothing is played twice.
    let lead = sink::CLOCK_LEAD.as_millis() as u64;
    assert!(
        (3000 - lead - 1..=3000).contains(&(before + after)),
        "{before} + {after} ms"
    );
    assert!((1500 - lead..=1500).contains(&before), "{before} ms");
    assert!((freq(&played[1]) - 440.0).abs() < 10.0);
    assert!((2999..=3000 + lead).contains(played_ms), "{played_ms}");
}

#[tokio::test(start_paused = true)]
async fn a_device_that_fails_when_resumed_after_idle_plays_the_next_announcement_whole() {
    // The device fails at the first write after the queue ran empty, and refuses to reopen
    // three times (600 ms) before it comes back.
    let (h, opened) = breaking(Breaking::new(None, true, 3));
    let mut first = h.say("first", Priority::Message, "440:300");
    assert!(matches!(
        events(&mut first).await.last(),
        Some(Event::Finished { played_ms: 300 })
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut second = h.say("second", Priority::Message, "660:500");
    let ev = events(&mut second).await;
    assert!(
        matches!(ev.last(), Some(Event::Finished { played_ms: 500 })),
        "{ev:?}"
    );
    let played = played_by(&opened);
    assert_eq!(played.len(), 2);
    let seg = segments(&played[1]);
    assert_eq!(seg.len(), 1, "{seg:?}");
    assert_eq!(ms(seg[0].1), 500);
    assert!((freq(&played[1]) - 660.0).abs() < 15.0);
}

#[tokio::test(start_paused = true)]
async fn an_announcement_fails_only_when_the_device_cannot_be_reopened_within_the_bound() {
    let (h, opened) = breaking(Breaking::new(
        Some(RATE as usize / 5),
        false,
        usize::MAX - 1,
    ));
    let t0 = Instant::now();
    let mut broken = h.say("broken", Priority::Message, "440:1000");
    let ev = events(&mut broken).await;
    let Some(Event::Failed { error }) = ev.last() else {
        panic!("{ev:?}")
    };
    let waited = t0.elapsed();
    let bound = PlaybackSettings::default().reopen_timeout;
    assert!(
        waited >= bound && waited <= bound + Duration::from_millis(500),
        "{waited:?}"
    );
    assert_eq!(error.kind(), crate::error::ErrorKind::Unavailable);
    for word in [
        "output device failed",
        "the device went away",
        "playback.reopen_timeout_ms",
        "Device or resource busy",
    ] {
        assert!(
            error.message().contains(word),
            "{word}: {}",
            error.message()
        );
    }
    assert_eq!(played_by(&opened).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_device_that_opens_but_fails_at_once_every_time_fails_the_announcement_within_the_bound()
{
    let (h, opened) = breaking(Breaking {
        every_sink: true,
        ..Breaking::new(Some(0), false, 0)
    });
    let t0 = Instant::now();
    let mut doomed = h.say("doomed", Priority::Message, "440:1000");
    let ev = events(&mut doomed).await;
    let Some(Event::Failed { error }) = ev.last() else {
        panic!("{ev:?}")
    };
    assert!(
        error
            .message()
            .contains("failed again after each reopening"),
        "{}",
        error.message()
    );
    let bound = PlaybackSettings::default().reopen_timeout;
    let waited = t0.elapsed();
    assert!(
        waited >= bound && waited <= bound + Duration::from_millis(500),
        "{waited:?}"
    );
    // Reopened at the retry pace, not in a tight loop.
    let opens = played_by(&opened).len();
    let most = (bound.as_millis() / REOPEN_RETRY.as_millis()) as usize + 2;
    assert!((2..=most).contains(&opens), "{opens} opens");
    // The next announcement gets a run of its own (and fails the same way).
    let mut next = h.say("next", Priority::Message, "660:100");
    assert!(matches!(
        events(&mut next).await.last(),
        Some(Event::Failed { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn an_announcement_whose_synthesis_is_late_on_an_idle_device_expires() {
    let h = Harness::new(settings());
    // The device is idle; the synthesis delivers 60 ms, then stalls 2 s: the announcement
    // cannot start (it waits for its prebuffer) before its expiry.
    let mut late = h.say_with("late", Priority::Message, "440:600:2000", |a| {
        a.expires_at = Some(Instant::now() + Duration::from_millis(500));
    });
    let ev = events(&mut late).await;
    assert!(
        matches!(ev.as_slice(), [Event::Queued { .. }, Event::Expired]),
        "{ev:?}"
    );
    let mut next = h.say("next", Priority::Message, "660:200");
    assert!(matches!(
        events(&mut next).await.last(),
        Some(Event::Finished { played_ms: 200 })
    ));
    let seg = segments(&h.played());
    assert_eq!(seg.len(), 1, "only the next one played: {seg:?}");
    assert!((freq(&h.played()) - 660.0).abs() < 15.0);
}

#[tokio::test(start_paused = true)]
async fn the_queue_of_a_device_is_bounded_and_refusals_name_the_setting() {
    let h = Harness::new(PlaybackSettings {
        max_queued: 3,
        ..settings()
    });
    let mut accepted: Vec<_> = (0..3)
        .map(|i| h.say(&format!("a{i}"), Priority::Message, "440:200"))
        .collect();
    let (tx, _rx) = mpsc::channel(16);
    let mut ann = h.announcement("over", Priority::Important, "880:200");
    ann.events = tx.into();
    let e = h.playback.enqueue("capture", ann).unwrap_err();
    assert_eq!(e.kind(), crate::error::ErrorKind::ResourceExhausted);
    assert!(e.message().contains("playback.max_queued"), "{e}");
    assert!(e.message().contains('3'), "{e}");
    // Announcements whose client left still count, and still play.
    drop(accepted.pop());
    for rx in &mut accepted {
        assert!(matches!(
            events(rx).await.last(),
            Some(Event::Finished { .. })
        ));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        segments(&h.played()).len(),
        3,
        "the third played with no listener"
    );
    // Room again once they are done.
    let mut again = h.say("again", Priority::Message, "440:100");
    assert!(matches!(
        events(&mut again).await.last(),
        Some(Event::Finished { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn a_slow_start_upstream_does_not_break_up_the_first_syllable() {
    let h = Harness::new(settings());
    // 60 ms, a 150 ms stall, then the rest: without the prebuffer the device would play the
    // first 60 ms and then 150 ms of silence.
    let mut a = h.say("a", Priority::Message, "440:600:150");
    assert!(matches!(
        events(&mut a).await.last(),
        Some(Event::Finished { played_ms: 600 })
    ));
    let x = h.played();
    let seg = segments(&x);
    assert_eq!(seg.len(), 1, "one unbroken tone: {seg:?}");
    assert_eq!(ms(seg[0].1), 600);
}

#[tokio::test]
async fn an_announcement_ended_without_a_final_event_reports_one_itself() {
    let h = Harness::new(settings());
    let with_events = |id: &str| {
        let (tx, rx) = mpsc::channel(16);
        let mut ann = h.announcement(id, Priority::Message, "440:100");
        ann.events = tx.into();
        (ann, rx)
    };
    // Never started (e.g. still in the queue's command channel at shutdown): DROPPED.
    let (ann, mut rx) = with_events("never");
    drop(ann);
    assert!(matches!(
        events(&mut rx).await.as_slice(),
        [Event::Dropped { by_id }] if by_id.is_empty()
    ));
    // Started: INTERRUPTED, with the time since STARTED.
    let (ann, mut rx) = with_events("cut");
    ann.events.report(&ann.id, Event::Started);
    std::thread::sleep(Duration::from_millis(30));
    drop(ann);
    let ev = events(&mut rx).await;
    assert!(
        matches!(ev.as_slice(), [Event::Started, Event::Interrupted { by_id, played_ms }]
            if by_id.is_empty() && (30..5000).contains(played_ms)),
        "{ev:?}"
    );
    // A final event already reported: nothing more, and nothing after it either.
    let (ann, mut rx) = with_events("done");
    ann.events
        .report(&ann.id, Event::Finished { played_ms: 100 });
    ann.events.report(&ann.id, Event::Expired);
    drop(ann);
    let mut all = Vec::new();
    while let Some(r) = rx.recv().await {
        all.push(r.event);
    }
    assert!(
        matches!(all.as_slice(), [Event::Finished { played_ms: 100 }]),
        "{all:?}"
    );
}
