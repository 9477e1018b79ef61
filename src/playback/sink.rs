//! Output sinks: where announcements are played. A small trait with a registry chosen by name
//! (librespot's pattern): `cpal` devices (feature `playback`; names like `alsa:default`,
//! `alsa:hw:0,0`), `wav` (writes what would have played to a file), `null` (discards), plus a
//! capture sink for tests.
//!
//! Sinks take interleaved `f32` frames at their own [`Sink::spec`] (the pipeline resamples and
//! remixes to it) and pace the caller: `write` returns once the frames are accepted, which is
//! when the device has room. The clocked sinks (`wav`, `null`, capture) play at real time on
//! tokio's clock, holding at most [`CLOCK_LEAD`] of audio ahead of "now": what an
//! interruption discards was never played, and when herald is late with audio while playing
//! (an underrun) they play silence, so a `wav` file holds exactly what a speaker would have
//! sounded, and tests on paused tokio time run instantly yet keep the timing.

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

use crate::audio::AudioSpec;

/// How far ahead of the clock a clocked sink accepts audio.
pub const CLOCK_LEAD: Duration = Duration::from_millis(40);

/// A sink failed: the device went away or a write failed. The cause (cpal's or the file
/// system's error), when there is one, is kept as the error's source: messages for clients and
/// logs use the whole chain ([`crate::error::chain`]).
#[derive(Debug, thiserror::Error)]
#[error("{device}: {reason}")]
pub struct SinkError {
    /// Device name.
    pub device: String,
    /// What herald was doing, or what is wrong.
    pub reason: String,
    /// The cause.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl SinkError {
    /// An error of `device` with no underlying cause.
    pub fn new(device: &str, reason: impl Into<String>) -> Self {
        Self {
            device: device.to_owned(),
            reason: reason.into(),
            source: None,
        }
    }

    /// An error of `device` while doing `reason`, caused by `source`.
    pub fn caused(
        device: &str,
        reason: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            source: Some(Box::new(source)),
            ..Self::new(device, reason)
        }
    }
}

/// An output device, driven by one task.
#[async_trait::async_trait]
pub trait Sink: Send {
    /// Stable device name.
    fn name(&self) -> &str;

    /// Rate and channel count the device plays.
    fn spec(&self) -> AudioSpec;

    /// Play interleaved frames at [`Sink::spec`]; returns once they are accepted (the device
    /// had room), so the caller is paced by the device.
    async fn write(&mut self, samples: &[f32]) -> Result<(), SinkError>;

    /// Wait until everything written has been played out.
    async fn drain(&mut self) -> Result<(), SinkError>;

    /// Drop what was written but not played yet (an interruption); returns how many frames
    /// were dropped.
    fn discard(&mut self) -> usize {
        0
    }

    /// Nothing more to play for now: pause or release the device.
    async fn pause(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Frames of silence the device had to play because herald was late.
    fn underruns(&self) -> u64 {
        0
    }

    /// The device failed: let go of it (close its stream), so that it can be opened again
    /// (a device open twice is busy). The sink may still be written to afterwards: it opens
    /// the device again itself, if it can.
    async fn close(&mut self) {}
}

/// Frames played so far by a capture sink, with when each write started to sound.
#[derive(Clone, Debug, Default)]
pub struct Captured {
    /// Every sample played, interleaved.
    pub samples: Vec<f32>,
}

/// Where a clocked sink's played audio goes.
enum Tap {
    /// Nowhere.
    Null,
    /// A WAV file (16-bit), sizes patched at every pause.
    Wav {
        writer: BufWriter<File>,
        data_bytes: u64,
        path: PathBuf,
    },
    /// Memory (tests).
    Capture(Arc<Mutex<Captured>>),
}

/// A sink that plays at real time on tokio's clock (see the module docs).
pub struct ClockedSink {
    name: String,
    spec: AudioSpec,
    tap: Tap,
    /// Accepted but not yet "played" samples (at most [`CLOCK_LEAD`] of audio).
    pending: Vec<f32>,
    /// When the first pending frame sounds (or, when nothing is pending, when the next would).
    next_at: Instant,
    underruns: u64,
    started: bool,
}

impl std::fmt::Debug for ClockedSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClockedSink")
            .field("name", &self.name)
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl ClockedSink {
    /// A sink that discards audio at real time.
    pub fn null(spec: AudioSpec) -> Self {
        Self::with_tap("null", spec, Tap::Null)
    }

    /// A sink that writes what it plays to a 16-bit WAV file at `path`.
    pub fn wav(path: PathBuf, spec: AudioSpec) -> Result<Self, SinkError> {
        let file = File::create(&path).map_err(|e| {
            SinkError::caused("wav", format!("cannot create {}", path.display()), e)
        })?;
        let mut writer = BufWriter::new(file);
        writer
            .write_all(&crate::audio::wav::header(spec, 0))
            .map_err(|e| SinkError::caused("wav", "cannot write the header", e))?;
        Ok(Self::with_tap(
            "wav",
            spec,
            Tap::Wav {
                writer,
                data_bytes: 0,
                path,
            },
        ))
    }

    /// A sink that keeps what it plays in memory.
    pub fn capture(spec: AudioSpec) -> (Self, Arc<Mutex<Captured>>) {
        let captured = Arc::new(Mutex::new(Captured::default()));
        (
            Self::with_tap("capture", spec, Tap::Capture(Arc::clone(&captured))),
            captured,
        )
    }

    fn with_tap(name: &str, spec: AudioSpec, tap: Tap) -> Self {
        Self {
            name: name.to_owned(),
            spec,
            tap,
            pending: Vec::new(),
            next_at: Instant::now(),
            underruns: 0,
            started: false,
        }
    }

    fn frames_to_duration(&self, frames: usize) -> Duration {
        Duration::from_secs_f64(frames as f64 / f64::from(self.spec.sample_rate))
    }

    /// Move everything whose time has come from `pending` to the tap.
    fn advance(&mut self, now: Instant) -> Result<(), SinkError> {
        let ch = usize::from(self.spec.channels);
        if now <= self.next_at || self.pending.is_empty() {
            return Ok(());
        }
        let elapsed = now - self.next_at;
        let due = ((elapsed.as_secs_f64() * f64::from(self.spec.sample_rate)) as usize)
            .min(self.pending.len() / ch);
        let played: Vec<f32> = self.pending.drain(..due * ch).collect();
        self.next_at += self.frames_to_duration(due);
        self.emit(&played)
    }

    fn emit(&mut self, samples: &[f32]) -> Result<(), SinkError> {
        match &mut self.tap {
            Tap::Null => Ok(()),
            Tap::Capture(c) => {
                c.lock()
                    .map_err(|_| SinkError::new("capture", "poisoned"))?
                    .samples
                    .extend_from_slice(samples);
                Ok(())
            }
            Tap::Wav {
                writer, data_bytes, ..
            } => {
                let mut bytes = Vec::with_capacity(samples.len() * 2);
                for s in samples {
                    let v = (s.clamp(-1.0, 1.0) * 32767.0).round() as i16;
                    bytes.extend_from_slice(&v.to_le_bytes());
                }
                *data_bytes += bytes.len() as u64;
                writer
                    .write_all(&bytes)
                    .map_err(|e| SinkError::caused("wav", "cannot write", e))
            }
        }
    }
}

#[async_trait::async_trait]
impl Sink for ClockedSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn spec(&self) -> AudioSpec {
        self.spec
    }

    async fn write(&mut self, samples: &[f32]) -> Result<(), SinkError> {
        let now = Instant::now();
        self.advance(now)?;
        if self.pending.is_empty() && self.next_at < now {
            if self.started {
                // The device ran dry while playing: a real device plays silence meanwhile, and
                // so does this one (the wav file and the capture hold it). Counted.
                self.underruns += 1;
                let gap = (now - self.next_at).as_secs_f64() * f64::from(self.spec.sample_rate);
                let silence = vec![0.0; gap as usize * usize::from(self.spec.channels)];
                self.emit(&silence)?;
            }
            self.next_at = now;
        }
        self.started = true;
        self.pending.extend_from_slice(samples);
        // Wait until no more than CLOCK_LEAD is ahead of the clock.
        let ch = usize::from(self.spec.channels);
        let ahead = self.frames_to_duration(self.pending.len() / ch);
        if ahead > CLOCK_LEAD {
            tokio::time::sleep_until(self.next_at + ahead - CLOCK_LEAD).await;
            self.advance(Instant::now())?;
        }
        Ok(())
    }

    async fn drain(&mut self) -> Result<(), SinkError> {
        let ch = usize::from(self.spec.channels);
        let ahead = self.frames_to_duration(self.pending.len() / ch);
        tokio::time::sleep_until(self.next_at + ahead).await;
        let rest = std::mem::take(&mut self.pending);
        self.next_at += ahead;
        self.emit(&rest)
    }

    fn discard(&mut self) -> usize {
        let now = Instant::now();
        let _ = self.advance(now);
        let dropped = self.pending.len() / usize::from(self.spec.channels);
        self.pending.clear();
        self.next_at = self.next_at.max(now);
        dropped
    }

    async fn pause(&mut self) -> Result<(), SinkError> {
        self.started = false;
        if let Tap::Wav {
            writer,
            data_bytes,
            path,
        } = &mut self.tap
        {
            // Keep the file valid whenever the device is idle.
            let err = |e: std::io::Error| SinkError::caused("wav", path.display().to_string(), e);
            writer.flush().map_err(err)?;
            let file = writer.get_mut();
            crate::audio::wav::patch_sizes(file, *data_bytes).map_err(err)?;
        }
        Ok(())
    }

    fn underruns(&self) -> u64 {
        self.underruns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: AudioSpec = AudioSpec {
        sample_rate: 1000,
        channels: 1,
    };

    #[tokio::test(start_paused = true)]
    async fn clocked_sinks_play_at_real_time() {
        let (mut sink, captured) = ClockedSink::capture(SPEC);
        let start = Instant::now();
        for _ in 0..10 {
            sink.write(&[0.5; 100]).await.unwrap(); // 100 ms each
        }
        // All accepted once the last 40 ms are ahead of the clock.
        assert_eq!(start.elapsed(), Duration::from_millis(960));
        sink.drain().await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        assert_eq!(captured.lock().unwrap().samples.len(), 1000);
        assert_eq!(sink.underruns(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn discard_drops_only_what_has_not_played() {
        let (mut sink, captured) = ClockedSink::capture(SPEC);
        sink.write(&[0.5; 500]).await.unwrap();
        // Accepted after 460 ms; 40 ms are still ahead.
        assert_eq!(sink.discard(), 40);
        assert_eq!(captured.lock().unwrap().samples.len(), 460);
        sink.write(&[0.25; 10]).await.unwrap();
        sink.drain().await.unwrap();
        assert_eq!(captured.lock().unwrap().samples.len(), 470);
    }

    #[tokio::test(start_paused = true)]
    async fn late_writes_count_underruns() {
        let (mut sink, _) = ClockedSink::capture(SPEC);
        sink.write(&[0.5; 10]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        sink.write(&[0.5; 10]).await.unwrap();
        assert_eq!(sink.underruns(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_wav_sink_writes_a_valid_file_at_each_pause() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.wav");
        let mut sink = ClockedSink::wav(path.clone(), SPEC).unwrap();
        sink.write(&[0.5; 250]).await.unwrap();
        sink.drain().await.unwrap();
        sink.pause().await.unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 44 + 500);
        assert_eq!(u32::from_le_bytes(bytes[40..44].try_into().unwrap()), 500);
        assert_eq!(i16::from_le_bytes([bytes[44], bytes[45]]), 16384);
    }
}

/// A device herald can play on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Name for `SpeakRequest.device`.
    pub name: String,
    /// Human-readable description.
    pub description: String,
    /// Rates it accepts.
    pub sample_rates: Vec<u32>,
    /// Channel counts it accepts.
    pub channels: Vec<u32>,
}

/// Opens sinks by name (the registry), and lists devices.
pub trait SinkFactory: Send + Sync + 'static {
    /// Every device, in a stable order.
    fn list(&self) -> Vec<DeviceInfo>;
    /// Open `name` (one of [`SinkFactory::list`], or `default`).
    fn open(&self, name: &str) -> Result<Box<dyn Sink>, SinkError>;
}

/// The production registry: `null`, `wav` (when configured), and the cpal devices.
#[derive(Debug)]
pub struct Registry {
    settings: super::PlaybackSettings,
}

impl Registry {
    /// The registry for `settings`.
    pub fn new(settings: super::PlaybackSettings) -> Self {
        Self { settings }
    }
}

impl SinkFactory for Registry {
    fn list(&self) -> Vec<DeviceInfo> {
        let virt = |name: &str, description: &str| DeviceInfo {
            name: name.to_owned(),
            description: description.to_owned(),
            sample_rates: vec![self.settings.virtual_spec.sample_rate],
            channels: vec![u32::from(self.settings.virtual_spec.channels)],
        };
        let mut out = Vec::new();
        #[cfg(feature = "playback")]
        out.extend(super::cpal_sink::list());
        out.push(virt("null", "Discards audio, in real time"));
        if let Some(p) = &self.settings.wav_path {
            out.push(virt(
                "wav",
                &format!("Writes what would have played to {}", p.display()),
            ));
        }
        out
    }

    fn open(&self, name: &str) -> Result<Box<dyn Sink>, SinkError> {
        match name {
            "null" => Ok(Box::new(ClockedSink::null(self.settings.virtual_spec))),
            "wav" => match &self.settings.wav_path {
                Some(p) => Ok(Box::new(ClockedSink::wav(
                    p.clone(),
                    self.settings.virtual_spec,
                )?)),
                None => Err(SinkError::new("wav", "playback.wav_path is not set")),
            },
            #[cfg(feature = "playback")]
            other => super::cpal_sink::open(other).map(|s| Box::new(s) as Box<dyn Sink>),
            #[cfg(not(feature = "playback"))]
            other => Err(SinkError::new(
                other,
                "this build has no sound card support (cargo feature `playback`)",
            )),
        }
    }
}
