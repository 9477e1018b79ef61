//! Sound card output through cpal (feature `playback`): ALSA on Linux.
//!
//! Finding, listing and configuring devices is the `devices` module's part; this module owns the sink.
//!
//! A [`CpalSink`] plays interleaved `f32` frames at the rate and channel count it picked when it
//! was opened ([`Sink::spec`]: 48 kHz, else 44.1 kHz, else the device's default; stereo, else
//! mono); the pipeline resamples and remixes to it. Between herald's device task (the
//! producer) and cpal's data callback (the consumer) sits a lock-free SPSC ring ([`RING`] of
//! audio). The callback only pops from the ring, converts to the device's sample format (`f32`,
//! else `i16`, else `i32`), pads with silence when the ring runs dry, and touches atomics: it
//! never blocks, allocates, locks or logs. Everything that needs the producer's attention goes
//! through atomics:
//! - underruns (callbacks that had to pad with silence while audio was expected) are counted;
//! - an interruption ([`Sink::discard`]) stores the producer's write position, and the callback
//!   throws away everything before it the next time it runs;
//! - a stream error is stored as a code, and the next `write` or `drain` fails with it (and
//!   closes the broken stream), so herald reopens the device and replays or continues the
//!   announcement there (see `playback`'s module docs).
//!
//! Since the callback cannot wake the producer without a lock, a full ring is waited out with
//! `tokio::time::sleep` sized to the time the device needs to make the missing room.
//!
//! Playback starts (`Stream::play`) once [`START_THRESHOLD`] of audio is queued, when a write
//! has to wait for room, or at the drain, so a stream does not begin with an underrun.
//! [`Sink::pause`] pauses the stream; a device that cannot pause (ALSA's `null` and `file`
//! plugins cannot, and they are not paced by a clock, so they would spin a core) is released
//! instead and reopened by the next write.

mod devices;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering},
    },
    time::Duration,
};

use cpal::{
    ErrorKind, SampleFormat, SizedSample,
    traits::{DeviceTrait, StreamTrait},
};
use rtrb::{Consumer, Producer, RingBuffer};
use tokio::time::Instant;

pub use self::devices::{COMMON_RATES, list};
use self::devices::{choose_config, find_device};
use super::sink::{Sink, SinkError};
use crate::audio::AudioSpec;

/// Audio the ring between herald and the device callback holds.
pub const RING: Duration = Duration::from_millis(250);

/// Audio queued before a stopped stream is started.
pub const START_THRESHOLD: Duration = Duration::from_millis(60);

/// Shortest and longest sleep while waiting for the device.
const MIN_WAIT: Duration = Duration::from_millis(1);
const MAX_WAIT: Duration = Duration::from_millis(50);

/// How long the device may take beyond the ring's length to play it out, or to make room,
/// before herald gives up on it.
const STALL_GRACE: Duration = Duration::from_secs(1);

/// Longest device latency a drain waits for after the ring ran empty.
const MAX_LATENCY: Duration = Duration::from_millis(500);

/// Open an output device: `default` (the default host's default device), a cpal device id
/// (`alsa:hw:CARD=0,DEV=0`), or a device description. The stream is built, not started.
pub fn open(name: &str) -> Result<CpalSink, SinkError> {
    let device = find_device(name)?;
    let ranges: Vec<_> = device
        .supported_output_configs()
        .map_err(|e| SinkError::caused(name, "cannot open the device", e))?
        .collect();
    let default_rate = device.default_output_config().ok().map(|c| c.sample_rate());
    let (config, format) = choose_config(&ranges, default_rate).ok_or_else(|| {
        let mut offered: Vec<String> = ranges
            .iter()
            .map(|c| c.sample_format().to_string())
            .collect();
        offered.dedup();
        SinkError::new(
            name,
            format!(
                "the device offers no f32, i16 or i32 output (it offers {})",
                if offered.is_empty() {
                    "nothing".to_owned()
                } else {
                    offered.join(", ")
                }
            ),
        )
    })?;
    let spec = AudioSpec {
        sample_rate: config.sample_rate,
        channels: config.channels,
    };
    let mut sink = CpalSink {
        name: name.to_owned(),
        device_id: device
            .id()
            .map_or_else(|_| name.to_owned(), |id| id.to_string()),
        device,
        config,
        format,
        spec,
        counters: Arc::new(Counters::default()),
        live: None,
        started: false,
    };
    sink.live = Some(sink.build()?);
    Ok(sink)
}

/// What a [`CpalSink`] has counted since it was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpalStats {
    /// Data callbacks.
    pub callbacks: u64,
    /// Callbacks that padded with silence because herald was late ([`Sink::underruns`]).
    pub underruns: u64,
    /// Frames of silence those callbacks played.
    pub underrun_frames: u64,
    /// Over- and underruns the device reported (the callback itself was late).
    pub xruns: u64,
    /// Streams built (the first at open, then one per reopening after a release).
    pub streams: u64,
}

/// Counters that outlive a released stream.
#[derive(Debug, Default)]
struct Counters {
    callbacks: AtomicU64,
    underruns: AtomicU64,
    underrun_frames: AtomicU64,
    xruns: AtomicU64,
    streams: AtomicU64,
}

/// What the producer and one stream's callbacks share.
#[derive(Debug, Default)]
struct Shared {
    /// Samples taken out of the ring (played or discarded); written by the callback.
    popped: AtomicU64,
    /// The callback throws away every sample pushed before this position.
    discard_until: AtomicU64,
    /// Audio is expected: a dry ring is an underrun (not during a drain or after a pause).
    playing: AtomicBool,
    /// Device latency the callback last saw, ns.
    latency_ns: AtomicU64,
    /// 0, or [`error_code`] of the stream error that ended playback.
    error: AtomicU8,
}

/// Stream errors that end playback, by code - 1. Others (an xrun, a rerouting, refused
/// real-time scheduling) do not.
const FATAL: [ErrorKind; 8] = [
    ErrorKind::DeviceNotAvailable,
    ErrorKind::HostUnavailable,
    ErrorKind::StreamInvalidated,
    ErrorKind::PermissionDenied,
    ErrorKind::DeviceBusy,
    ErrorKind::ResourceExhausted,
    ErrorKind::BackendError,
    ErrorKind::Other,
];

/// The code stored for a stream error: `None` if it does not end playback.
fn error_code(kind: ErrorKind) -> Option<u8> {
    match kind {
        ErrorKind::Xrun | ErrorKind::DeviceChanged | ErrorKind::RealtimeDenied => None,
        kind => {
            let index = FATAL
                .iter()
                .position(|&k| k == kind)
                .unwrap_or(FATAL.len() - 1);
            Some(index as u8 + 1)
        }
    }
}

/// The error behind a stored code.
fn error_kind(code: u8) -> ErrorKind {
    FATAL
        .get(usize::from(code).saturating_sub(1))
        .copied()
        .unwrap_or(ErrorKind::Other)
}

/// A sample format the callback writes.
trait OutSample: SizedSample + Send + 'static {
    const SILENCE: Self;
    fn from_f32(s: f32) -> Self;
}

impl OutSample for f32 {
    const SILENCE: Self = 0.0;
    fn from_f32(s: f32) -> Self {
        s
    }
}

impl OutSample for i16 {
    const SILENCE: Self = 0;
    fn from_f32(s: f32) -> Self {
        // Same scaling as the `wav` sink; NaN becomes 0.
        (s.clamp(-1.0, 1.0) * 32767.0).round() as i16
    }
}

impl OutSample for i32 {
    const SILENCE: Self = 0;
    fn from_f32(s: f32) -> Self {
        (f64::from(s.clamp(-1.0, 1.0)) * 2_147_483_647.0).round() as i32
    }
}

/// The consumer side, owned by the data callback.
struct Feeder {
    ring: Consumer<f32>,
    shared: Arc<Shared>,
    counters: Arc<Counters>,
    /// Mirror of `shared.popped`.
    popped: u64,
    channels: usize,
}

impl Feeder {
    /// Fill `out` from the ring, padding with silence. Real-time safe: atomics only.
    fn fill<T: OutSample>(&mut self, out: &mut [T]) {
        self.counters.callbacks.fetch_add(1, Ordering::Relaxed);
        // An interruption: throw away what was queued before it.
        let until = self.shared.discard_until.load(Ordering::Acquire);
        if until > self.popped {
            let stale = usize::try_from(until - self.popped).unwrap_or(usize::MAX);
            let n = stale.min(self.ring.slots());
            if let Ok(chunk) = self.ring.read_chunk(n) {
                chunk.commit_all();
                self.popped += n as u64;
            }
        }
        let mut n = out.len().min(self.ring.slots());
        n -= n % self.channels;
        if let Ok(chunk) = self.ring.read_chunk(n) {
            let (a, b) = chunk.as_slices();
            for (o, &s) in out.iter_mut().zip(a.iter().chain(b)) {
                *o = T::from_f32(s);
            }
            chunk.commit_all();
        } else {
            n = 0;
        }
        for o in &mut out[n..] {
            *o = T::SILENCE;
        }
        self.popped += n as u64;
        self.shared.popped.store(self.popped, Ordering::Release);
        if n < out.len() && self.shared.playing.load(Ordering::Relaxed) {
            self.counters.underruns.fetch_add(1, Ordering::Relaxed);
            self.counters
                .underrun_frames
                .fetch_add(((out.len() - n) / self.channels) as u64, Ordering::Relaxed);
        }
    }
}

/// An open stream and the producer side of its ring.
struct Live {
    stream: cpal::Stream,
    ring: Producer<f32>,
    shared: Arc<Shared>,
    /// Samples pushed into the ring.
    pushed: u64,
    /// One callback's worth of audio.
    period: Duration,
    /// `play` was called at least once (a stream never started has nothing to pause).
    ever_played: bool,
}

impl Live {
    fn capacity(&self) -> usize {
        self.ring.buffer().capacity()
    }

    /// Samples in the ring, including those a discard has condemned.
    fn occupied(&self) -> usize {
        self.capacity() - self.ring.slots()
    }

    /// Samples in the ring that will be played.
    fn queued(&self) -> u64 {
        let popped = self.shared.popped.load(Ordering::Acquire);
        let from = popped.max(self.shared.discard_until.load(Ordering::Relaxed));
        self.pushed.saturating_sub(from)
    }
}

/// A cpal output device (see the module docs).
pub struct CpalSink {
    /// The name it was opened by.
    name: String,
    /// The cpal device id (`alsa:…`).
    device_id: String,
    device: cpal::Device,
    config: cpal::StreamConfig,
    format: SampleFormat,
    spec: AudioSpec,
    counters: Arc<Counters>,
    /// `None` once released (by a pause on a device that cannot pause, or after the stream
    /// failed) until the next write opens the device again.
    live: Option<Live>,
    /// `play` was called since the last pause.
    started: bool,
}

impl std::fmt::Debug for CpalSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpalSink")
            .field("name", &self.name)
            .field("device_id", &self.device_id)
            .field("spec", &self.spec)
            .field("format", &self.sample_format())
            .finish_non_exhaustive()
    }
}

impl CpalSink {
    /// The cpal id of the device (`alsa:default`, …).
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// The sample format the device is fed: `"f32"`, `"i16"` or `"i32"` (native endianness).
    pub fn sample_format(&self) -> &'static str {
        match self.format {
            SampleFormat::I16 => "i16",
            SampleFormat::I32 => "i32",
            _ => "f32",
        }
    }

    /// Counters since the sink was opened.
    pub fn stats(&self) -> CpalStats {
        let c = &self.counters;
        CpalStats {
            callbacks: c.callbacks.load(Ordering::Relaxed),
            underruns: c.underruns.load(Ordering::Relaxed),
            underrun_frames: c.underrun_frames.load(Ordering::Relaxed),
            xruns: c.xruns.load(Ordering::Relaxed),
            streams: c.streams.load(Ordering::Relaxed),
        }
    }

    fn err(&self, reason: impl Into<String>) -> SinkError {
        SinkError::new(&self.name, reason)
    }

    fn samples_to_duration(&self, samples: usize) -> Duration {
        let per_second = f64::from(self.spec.sample_rate) * f64::from(self.spec.channels);
        Duration::from_secs_f64(samples as f64 / per_second)
    }

    fn duration_to_samples(&self, d: Duration) -> usize {
        let frames = (d.as_secs_f64() * f64::from(self.spec.sample_rate)).ceil() as usize;
        frames * usize::from(self.spec.channels)
    }

    /// A new stream (not started) with an empty ring.
    fn build(&self) -> Result<Live, SinkError> {
        let capacity = self
            .duration_to_samples(RING)
            .max(usize::from(self.spec.channels));
        let (producer, consumer) = RingBuffer::new(capacity);
        let shared = Arc::new(Shared::default());
        let feeder = Feeder {
            ring: consumer,
            shared: Arc::clone(&shared),
            counters: Arc::clone(&self.counters),
            popped: 0,
            channels: usize::from(self.spec.channels),
        };
        let stream = match self.format {
            SampleFormat::I16 => self.build_stream::<i16>(feeder),
            SampleFormat::I32 => self.build_stream::<i32>(feeder),
            _ => self.build_stream::<f32>(feeder),
        }
        .map_err(|e| self.err(format!("cannot open an output stream: {e}")))?;
        self.counters.streams.fetch_add(1, Ordering::Relaxed);
        let buffer_frames = stream.buffer_size().ok();
        tracing::debug!(
            device = %self.device_id,
            rate = self.spec.sample_rate,
            channels = self.spec.channels,
            format = self.sample_format(),
            ?buffer_frames,
            "output stream opened"
        );
        let period = buffer_frames.map_or(MAX_WAIT, |frames| {
            Duration::from_secs_f64(f64::from(frames) / f64::from(self.spec.sample_rate))
        });
        Ok(Live {
            stream,
            ring: producer,
            shared,
            pushed: 0,
            period,
            ever_played: false,
        })
    }

    fn build_stream<T: OutSample>(&self, mut feeder: Feeder) -> Result<cpal::Stream, cpal::Error> {
        let shared = Arc::clone(&feeder.shared);
        let counters = Arc::clone(&self.counters);
        self.device.build_output_stream::<T, _, _>(
            self.config,
            move |out: &mut [T], info: &cpal::OutputCallbackInfo| {
                feeder.fill(out);
                let ts = info.timestamp();
                let latency = ts.playback.duration_since(ts.callback);
                feeder.shared.latency_ns.store(
                    u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX),
                    Ordering::Relaxed,
                );
            },
            move |e: cpal::Error| match error_code(e.kind()) {
                Some(code) => {
                    let _ = shared.error.compare_exchange(
                        0,
                        code,
                        Ordering::Release,
                        Ordering::Relaxed,
                    );
                }
                None => {
                    if e.kind() == ErrorKind::Xrun {
                        counters.xruns.fetch_add(1, Ordering::Relaxed);
                    }
                }
            },
            None,
        )
    }

    /// The open stream, reopened if it was released.
    fn live(&mut self) -> Result<&mut Live, SinkError> {
        let live = match self.live.take() {
            Some(live) => live,
            None => self.build()?,
        };
        Ok(self.live.insert(live))
    }

    /// Fail if the stream reported an error. The failed stream is released, so a broken device
    /// does not keep its thread busy; the next write opens the device again.
    async fn check_failed(&mut self) -> Result<(), SinkError> {
        let code = self
            .live
            .as_ref()
            .map_or(0, |l| l.shared.error.load(Ordering::Acquire));
        if code == 0 {
            return Ok(());
        }
        self.release().await;
        Err(self.err(format!("the device failed: {}", error_kind(code))))
    }

    /// Close the stream (the device is free until the next write).
    async fn release(&mut self) {
        self.started = false;
        if let Some(live) = self.live.take() {
            // Dropping a stream joins its thread: not on the runtime's workers.
            let _ = tokio::task::spawn_blocking(move || drop(live)).await;
        }
    }

    /// Start (or resume) the stream.
    fn start(&mut self) -> Result<(), SinkError> {
        let Some(live) = self.live.as_mut() else {
            return Ok(());
        };
        live.stream
            .play()
            .map_err(|e| SinkError::caused(&self.name, "cannot start playback", e))?;
        live.ever_played = true;
        live.shared.playing.store(true, Ordering::Relaxed);
        self.started = true;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Sink for CpalSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn spec(&self) -> AudioSpec {
        self.spec
    }

    async fn write(&mut self, samples: &[f32]) -> Result<(), SinkError> {
        let ch = usize::from(self.spec.channels);
        // Whole frames only: a partial frame would swap the channels from then on.
        let mut rest = &samples[..samples.len() - samples.len() % ch];
        let start_at = self.duration_to_samples(START_THRESHOLD) as u64;
        let stall = RING + STALL_GRACE;
        let mut progress = (0, Instant::now());
        loop {
            self.check_failed().await?;
            let started = self.started;
            let live = self.live()?;
            let free = live.ring.slots();
            let n = rest.len().min(free - free % ch);
            let (pushed, _) = live.ring.push_partial_slice(&rest[..n]);
            live.pushed += pushed.len() as u64;
            rest = &rest[n..];
            let must_wait = !rest.is_empty();
            if started {
                live.shared.playing.store(true, Ordering::Relaxed);
            } else if must_wait || live.queued() >= start_at {
                self.start()?;
            }
            if !must_wait {
                return Ok(());
            }
            // Wait until the device has made room for (part of) the rest.
            let Some(live) = self.live.as_ref() else {
                return Ok(());
            };
            let popped = live.shared.popped.load(Ordering::Acquire);
            if popped != progress.0 {
                progress = (popped, Instant::now());
            } else if progress.1.elapsed() > stall {
                return Err(self.err(format!(
                    "the device stopped taking audio ({} s without progress)",
                    stall.as_secs_f32()
                )));
            }
            let wait = if live.shared.discard_until.load(Ordering::Acquire) > popped {
                // A discard is pending: the callback frees the ring the next time it runs,
                // within one device period, not at the pace of playback.
                live.period.clamp(MIN_WAIT, MAX_WAIT)
            } else {
                let want = rest.len().min(live.capacity() / 2);
                let missing = want.saturating_sub(live.ring.slots());
                self.samples_to_duration(missing).clamp(MIN_WAIT, MAX_WAIT)
            };
            tokio::time::sleep(wait).await;
        }
    }

    async fn drain(&mut self) -> Result<(), SinkError> {
        self.check_failed().await?;
        let Some(live) = self.live.as_ref() else {
            return Ok(());
        };
        if live.occupied() == 0 && !self.started {
            return Ok(());
        }
        if !self.started {
            self.start()?;
        }
        let Some(live) = self.live.as_ref() else {
            return Ok(());
        };
        // Running dry at the end is no underrun.
        live.shared.playing.store(false, Ordering::Relaxed);
        let deadline = Instant::now() + RING + STALL_GRACE;
        loop {
            let Some(live) = self.live.as_ref() else {
                return Ok(());
            };
            let occupied = live.occupied();
            if occupied == 0 {
                break;
            }
            self.check_failed().await?;
            if Instant::now() >= deadline {
                return Err(self.err(format!(
                    "the device stopped playing ({:.0} ms of audio still queued)",
                    self.samples_to_duration(occupied).as_secs_f64() * 1000.0
                )));
            }
            let wait = self.samples_to_duration(occupied).clamp(MIN_WAIT, MAX_WAIT);
            tokio::time::sleep(wait).await;
        }
        // The last samples have left the ring: let the device buffer play them out.
        if let Some(live) = self.live.as_ref() {
            let latency = Duration::from_nanos(live.shared.latency_ns.load(Ordering::Relaxed));
            tokio::time::sleep(live.period + latency.min(MAX_LATENCY)).await;
        }
        self.check_failed().await
    }

    fn discard(&mut self) -> usize {
        let Some(live) = self.live.as_ref() else {
            return 0;
        };
        let ch = usize::from(self.spec.channels);
        // What the callback will throw away: the ring's content, less what an earlier
        // discard already condemned.
        let popped = live.shared.popped.load(Ordering::Acquire);
        let condemned = live
            .shared
            .discard_until
            .load(Ordering::Relaxed)
            .saturating_sub(popped);
        let dropped = (live.occupied() as u64).saturating_sub(condemned);
        live.shared
            .discard_until
            .store(live.pushed, Ordering::Release);
        live.shared.playing.store(false, Ordering::Relaxed);
        usize::try_from(dropped).unwrap_or(usize::MAX) / ch
    }

    async fn pause(&mut self) -> Result<(), SinkError> {
        // Leftovers (of an announcement that failed) must not open the next one.
        self.discard();
        self.started = false;
        let Some(live) = self.live.as_ref() else {
            return Ok(());
        };
        live.shared.playing.store(false, Ordering::Relaxed);
        if live.ever_played && live.stream.pause().is_err() {
            // The device cannot pause (ALSA's null and file plugins): release it, so an
            // unpaced device does not spin while idle; the next write reopens it.
            self.release().await;
        }
        Ok(())
    }

    fn underruns(&self) -> u64 {
        self.counters.underruns.load(Ordering::Relaxed)
    }

    async fn close(&mut self) {
        self.release().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feeder(capacity: usize, channels: usize) -> (Producer<f32>, Feeder) {
        let (producer, consumer) = RingBuffer::new(capacity);
        let feeder = Feeder {
            ring: consumer,
            shared: Arc::new(Shared::default()),
            counters: Arc::new(Counters::default()),
            popped: 0,
            channels,
        };
        (producer, feeder)
    }

    #[test]
    fn the_callback_plays_the_ring_then_silence_and_counts_underruns_while_playing() {
        let (mut tx, mut feeder) = feeder(16, 2);
        tx.push_entire_slice(&[0.1, 0.2, 0.3, 0.4]).unwrap();
        let mut out = [9.0f32; 6];
        feeder.fill(&mut out);
        assert_eq!(out, [0.1, 0.2, 0.3, 0.4, 0.0, 0.0]);
        // Not playing (never started, drained or paused): running dry is expected.
        assert_eq!(feeder.counters.underruns.load(Ordering::Relaxed), 0);
        feeder.shared.playing.store(true, Ordering::Relaxed);
        feeder.fill(&mut out);
        assert_eq!(out, [0.0; 6]);
        assert_eq!(feeder.counters.underruns.load(Ordering::Relaxed), 1);
        assert_eq!(feeder.counters.underrun_frames.load(Ordering::Relaxed), 3);
        assert_eq!(feeder.counters.callbacks.load(Ordering::Relaxed), 2);
        assert_eq!(feeder.shared.popped.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn the_callback_takes_whole_frames_only() {
        let (mut tx, mut feeder) = feeder(16, 2);
        tx.push_entire_slice(&[0.1, 0.2, 0.3]).unwrap();
        let mut out = [9.0f32; 4];
        feeder.fill(&mut out);
        assert_eq!(out, [0.1, 0.2, 0.0, 0.0]);
    }

    #[test]
    fn a_discard_drops_only_what_was_queued_before_it() {
        let (mut tx, mut feeder) = feeder(16, 1);
        tx.push_entire_slice(&[0.1, 0.2, 0.3]).unwrap();
        let mut out = [9.0f32; 1];
        feeder.fill(&mut out);
        assert_eq!(out, [0.1]);
        // Discard at write position 3; 0.4 and 0.5 come after it.
        feeder.shared.discard_until.store(3, Ordering::Release);
        tx.push_entire_slice(&[0.4, 0.5]).unwrap();
        let mut out = [9.0f32; 3];
        feeder.fill(&mut out);
        assert_eq!(out, [0.4, 0.5, 0.0]);
        assert_eq!(feeder.shared.popped.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn integer_formats_are_scaled_and_clamped() {
        let (mut tx, mut feeder) = feeder(16, 1);
        tx.push_entire_slice(&[0.0, 0.5, -1.0, 2.0, f32::NAN])
            .unwrap();
        let mut out = [7i16; 6];
        feeder.fill(&mut out);
        assert_eq!(out, [0, 16384, -32767, 32767, 0, 0]);
        assert_eq!(i32::from_f32(1.0), i32::MAX);
        assert_eq!(i32::from_f32(-0.5), -1_073_741_824);
    }

    #[test]
    fn stream_errors_keep_their_kind_and_xruns_are_not_fatal() {
        for kind in FATAL {
            assert_eq!(error_kind(error_code(kind).unwrap()), kind);
        }
        assert_eq!(error_code(ErrorKind::Xrun), None);
        assert_eq!(error_code(ErrorKind::DeviceChanged), None);
        assert_eq!(
            error_kind(error_code(ErrorKind::InvalidInput).unwrap()),
            ErrorKind::Other
        );
    }
}
