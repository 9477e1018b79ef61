//! Local playback: one announcement queue per output device (design.md, Playback).
//!
//! [`Playback`] is the handle the service holds. Each device that has been used gets one tokio
//! task ([`DeviceTask`]) that owns the device's [`Sink`], its queue and the announcement
//! playing now; the service talks to it only through a command channel (control by handle,
//! never by lock). The task plays in small blocks, so a command (an IMPORTANT announcement, a
//! StopSpeaking) takes effect within one block plus the sink's lead (about 60 ms).
//!
//! An announcement is synthesized by the same pipeline as `Synthesize`, straight to `f32` at
//! the device's rate and channel count, with its volume as the pipeline's gain. The head of the
//! queue is synthesized while the current announcement plays (look-ahead of one), so queued
//! announcements follow each other with no gap beyond `pause`. An announcement starts only
//! once [`PREBUFFER`] of its speech is synthesized (or all of it, if shorter), so an upstream
//! that delivers its first chunks slowly does not break up the first syllable.
//!
//! Priorities follow speech-dispatcher:
//! - IMPORTANT interrupts anything but IMPORTANT, is never dropped, and queues FIFO ahead of
//!   every other class;
//! - MESSAGE queues FIFO;
//! - TEXT is interrupted (if playing) or dropped (if queued) by any newer announcement other
//!   than a NOTIFICATION;
//! - NOTIFICATION is dropped if anything is playing or queued;
//! - PROGRESS queues FIFO, and a new PROGRESS drops a queued one (latest wins).
//!
//! An interrupted announcement is not resumed. Expired announcements (not started within their
//! `expires_after`) are removed when they would start, or by a timer.

pub mod chime;
#[cfg(feature = "playback")]
pub mod cpal_sink;
pub mod sink;

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

pub use self::sink::{Sink, SinkError};
use crate::{
    audio::{AudioSpec, OutputEncoding, OutputFormat},
    engine::{SynthesisRequest, Synthesizer},
    pipeline,
    service::status,
};

/// Announcement priority classes (speech-dispatcher's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// Interrupts anything but IMPORTANT; never dropped.
    Important,
    /// FIFO.
    Message,
    /// Interrupted or dropped by anything newer.
    Text,
    /// Dropped if anything is playing or queued.
    Notification,
    /// Latest wins.
    Progress,
}

/// What happened to an announcement.
#[derive(Clone, Debug)]
pub enum Event {
    /// Accepted; `position` announcements are ahead of it.
    Queued {
        /// Announcements ahead (0 = next or now).
        position: u32,
        /// The device.
        device: String,
    },
    /// Its first sample reached the device.
    Started,
    /// Played to the end.
    Finished {
        /// Audio played, ms (leading silence and chime included).
        played_ms: u64,
    },
    /// Stopped while playing.
    Interrupted {
        /// The announcement that interrupted it; empty for StopSpeaking.
        by_id: String,
        /// Audio played before, ms.
        played_ms: u64,
    },
    /// Removed before it started.
    Dropped {
        /// The announcement that caused it; empty for StopSpeaking.
        by_id: String,
    },
    /// Not started in time.
    Expired,
    /// Synthesis or the device failed.
    Failed {
        /// gRPC status.
        status: tonic::Status,
    },
}

impl Event {
    /// True for the last event of an announcement.
    pub fn is_final(&self) -> bool {
        !matches!(self, Self::Queued { .. } | Self::Started)
    }
}

/// An event with the announcement it belongs to and when it happened.
#[derive(Clone, Debug)]
pub struct Report {
    /// Announcement id.
    pub id: String,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// What happened.
    pub event: Event,
}

/// One announcement, validated.
pub struct Announcement {
    /// Unique id (caller's or generated).
    pub id: String,
    /// Priority class.
    pub priority: Priority,
    /// What to synthesize (its `output_sample_rate` is set by the device).
    pub request: SynthesisRequest,
    /// The engine serving `request.model`.
    pub engine: Arc<dyn Synthesizer>,
    /// Linear gain (1.0 = unchanged).
    pub volume: f32,
    /// Play the chime first.
    pub chime: bool,
    /// Silence before chime and speech.
    pub leading_silence: Duration,
    /// Drop it if it has not started by then.
    pub expires_at: Option<Instant>,
    /// Where its events go (dropped silently if the client left).
    pub events: mpsc::UnboundedSender<Report>,
}

/// What StopSpeaking acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopScope {
    /// The announcement playing now.
    Current,
    /// Everything.
    All,
    /// One announcement, playing or queued.
    Id(String),
}

/// Playback settings, validated.
#[derive(Clone, Debug)]
pub struct PlaybackSettings {
    /// Device used when a request names none.
    pub default_device: String,
    /// The file the `wav` device writes.
    pub wav_path: Option<std::path::PathBuf>,
    /// Rate and channels of the `wav` and `null` devices.
    pub virtual_spec: AudioSpec,
    /// The chime, when a file is configured (else the built-in two-tone).
    pub chime_file: Option<std::path::PathBuf>,
    /// Play the chime when a request says CHIME_DEFAULT.
    pub chime_by_default: bool,
    /// Leading silence when a request says 0.
    pub leading_silence: Duration,
    /// Silence between two announcements that follow each other.
    pub pause: Duration,
}

impl Default for PlaybackSettings {
    fn default() -> Self {
        Self {
            default_device: "default".to_owned(),
            wav_path: None,
            virtual_spec: AudioSpec {
                sample_rate: 48000,
                channels: 1,
            },
            chime_file: None,
            chime_by_default: false,
            leading_silence: Duration::ZERO,
            pause: Duration::from_millis(250),
        }
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
    settings: PlaybackSettings,
}

impl Registry {
    /// The registry for `settings`.
    pub fn new(settings: PlaybackSettings) -> Self {
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
        out.extend(cpal_sink::list());
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
            "null" => Ok(Box::new(sink::ClockedSink::null(
                self.settings.virtual_spec,
            ))),
            "wav" => match &self.settings.wav_path {
                Some(p) => Ok(Box::new(sink::ClockedSink::wav(
                    p.clone(),
                    self.settings.virtual_spec,
                )?)),
                None => Err(SinkError::new("wav", "playback.wav_path is not set")),
            },
            #[cfg(feature = "playback")]
            other => cpal_sink::open(other).map(|s| Box::new(s) as Box<dyn Sink>),
            #[cfg(not(feature = "playback"))]
            other => Err(SinkError::new(
                other,
                "this build has no sound card support (cargo feature `playback`)",
            )),
        }
    }
}

enum Command {
    Enqueue(Box<Announcement>),
    Stop {
        scope: StopScope,
        reply: tokio::sync::oneshot::Sender<Vec<String>>,
    },
}

/// Produces an announcement's audio at a device's spec: the synthesis pipeline in production,
/// something simpler in queue tests.
pub trait AudioSource: Send + Sync + 'static {
    /// Start producing `ann`'s audio as interleaved `f32` at `spec` into a channel.
    fn start(&self, ann: &Announcement, spec: AudioSpec) -> Synthesis;
}

/// The production [`AudioSource`]: herald's pipeline (through the cache and the fallback
/// chain), straight to `f32` at the device's rate, with the announcement's volume as gain.
#[derive(Debug)]
pub struct PipelineSource {
    provider: Arc<crate::provider::Provider>,
}

impl PipelineSource {
    /// A source over `provider`.
    pub fn new(provider: Arc<crate::provider::Provider>) -> Self {
        Self { provider }
    }
}

impl AudioSource for PipelineSource {
    fn start(&self, ann: &Announcement, spec: AudioSpec) -> Synthesis {
        let mut request = ann.request.clone();
        request.output_sample_rate = spec.sample_rate;
        let engine = Arc::clone(&ann.engine);
        let render = pipeline::Render {
            output: OutputFormat {
                encoding: OutputEncoding::PcmF32Le,
                spec,
            },
            gain: ann.volume,
            chunk_ms: BLOCK_MS,
        };
        let provider = Arc::clone(&self.provider);
        let (tx, rx) = mpsc::channel(SYNTHESIS_CHUNKS);
        let cancel = CancellationToken::new();
        let job_cancel = cancel.clone();
        tokio::spawn(async move {
            let opened = tokio::select! {
                biased;
                () = job_cancel.cancelled() => return,
                r = provider.open(request, engine, crate::provider::Options::default()) => r,
            };
            let stream = match opened {
                Ok(opened) => opened.stream,
                Err(e) => {
                    let _ = tx
                        .send(Err(status::job_status(&pipeline::JobError::Engine(e))))
                        .await;
                    return;
                }
            };
            let chunk_tx = tx.clone();
            let sink: pipeline::ChunkSink = Box::new(move |out| match out {
                pipeline::Output::Audio(chunk) => {
                    chunk_tx.blocking_send(Ok(f32_samples(&chunk.data))).is_ok()
                }
                // Playback asks for none.
                pipeline::Output::Words(_) => true,
            });
            if let Err(e) = pipeline::run_stream(stream, render, job_cancel, sink).await {
                let _ = tx.send(Err(status::job_status(&e))).await;
            }
        });
        Synthesis { rx, cancel }
    }
}

/// Chunks an announcement's synthesis may run ahead of playback (about 80 s in 20 ms chunks).
pub const SYNTHESIS_CHUNKS: usize = 4096;

/// The playback handle: devices by name, each with its queue task.
pub struct Playback {
    settings: PlaybackSettings,
    factory: Arc<dyn SinkFactory>,
    source: Arc<dyn AudioSource>,
    devices: Mutex<HashMap<String, mpsc::UnboundedSender<Command>>>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Playback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Playback")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Playback {
    /// Playback over `factory`'s devices; every device task ends when `shutdown` is cancelled.
    pub fn new(
        settings: PlaybackSettings,
        factory: Arc<dyn SinkFactory>,
        source: Arc<dyn AudioSource>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            settings,
            factory,
            source,
            devices: Mutex::new(HashMap::new()),
            shutdown,
        }
    }

    /// The settings.
    pub fn settings(&self) -> &PlaybackSettings {
        &self.settings
    }

    /// Every device, and which is the default.
    pub fn devices(&self) -> (Vec<DeviceInfo>, String) {
        (self.factory.list(), self.settings.default_device.clone())
    }

    /// The device a request means: `""` = the default; otherwise a listed name, or `default`.
    /// `Err` lists the known names.
    pub fn resolve(&self, name: &str) -> Result<String, String> {
        let name = if name.is_empty() {
            self.settings.default_device.as_str()
        } else {
            name
        };
        let list = self.factory.list();
        if name == "default" || list.iter().any(|d| d.name == name) {
            return Ok(name.to_owned());
        }
        let names: Vec<String> = list.into_iter().map(|d| d.name).collect();
        Err(format!(
            "unknown device {:?}; known devices: default, {}",
            name.chars().take(64).collect::<String>(),
            names.join(", ")
        ))
    }

    /// The device's spec, opening it (and starting its queue) on first use.
    pub fn enqueue(&self, device: &str, announcement: Announcement) -> Result<(), SinkError> {
        let tx = self.device(device)?;
        tx.send(Command::Enqueue(Box::new(announcement)))
            .map_err(|_| SinkError::new(device, "the device's queue has stopped"))
    }

    /// Stop announcements on `device`; the ids stopped or removed.
    pub async fn stop(&self, device: &str, scope: StopScope) -> Vec<String> {
        let tx = {
            let devices = self.devices.lock().unwrap_or_else(|p| p.into_inner());
            devices.get(device).cloned()
        };
        let Some(tx) = tx else { return Vec::new() };
        let (reply, rx) = tokio::sync::oneshot::channel();
        if tx.send(Command::Stop { scope, reply }).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    fn device(&self, name: &str) -> Result<mpsc::UnboundedSender<Command>, SinkError> {
        let mut devices = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = devices.get(name)
            && !tx.is_closed()
        {
            return Ok(tx.clone());
        }
        let sink = self.factory.open(name)?;
        let chime = chime::load(self.settings.chime_file.as_deref(), sink.spec())
            .map_err(|e| SinkError::new(name, format!("chime: {e}")))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let task = DeviceTask {
            name: name.to_owned(),
            sink,
            factory: Arc::clone(&self.factory),
            source: Arc::clone(&self.source),
            chime: Arc::new(chime),
            pause: self.settings.pause,
            queue: VecDeque::new(),
            current: None,
            commands: rx,
            shutdown: self.shutdown.clone(),
            underruns_seen: 0,
        };
        tokio::spawn(task.run());
        devices.insert(name.to_owned(), tx.clone());
        Ok(tx)
    }
}

/// A queued announcement, maybe already being synthesized.
struct Item {
    ann: Announcement,
    audio: Option<Synthesis>,
}

/// An announcement's synthesis, running ahead of playback. Dropping it cancels the work.
#[derive(Debug)]
pub struct Synthesis {
    /// Interleaved samples at the device's spec, in order; an error ends the announcement.
    pub rx: mpsc::Receiver<Result<Vec<f32>, tonic::Status>>,
    /// Cancelled on drop.
    pub cancel: CancellationToken,
}

impl Drop for Synthesis {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The announcement playing now.
struct Playing {
    item: Item,
    /// Envelope: silence frames still to play, then chime frames from `chime_pos`.
    silence_left: usize,
    chime_pos: Option<usize>,
    /// Frames accepted by the sink.
    frames: u64,
    started: bool,
    /// [`PREBUFFER`] of speech was ready (or the synthesis had ended) before it started.
    primed: bool,
    interrupted_by: Option<String>,
}

struct DeviceTask {
    name: String,
    sink: Box<dyn Sink>,
    factory: Arc<dyn SinkFactory>,
    source: Arc<dyn AudioSource>,
    chime: Arc<Vec<f32>>,
    pause: Duration,
    queue: VecDeque<Item>,
    current: Option<Playing>,
    commands: mpsc::UnboundedReceiver<Command>,
    shutdown: CancellationToken,
    /// The sink's underrun count last reported to the metrics.
    underruns_seen: u64,
}

/// Frames per block the task writes between looking at its commands.
const BLOCK_MS: u32 = 20;

/// Speech synthesized ahead before an announcement starts to sound: the jitter of the
/// upstream's first chunks it absorbs, at the cost of as much synthesis time (usually a few
/// tens of ms, as upstreams synthesize faster than real time).
pub const PREBUFFER: Duration = Duration::from_millis(200);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn report(ann: &Announcement, event: Event) {
    let _ = ann.events.send(Report {
        id: ann.id.clone(),
        timestamp_ms: now_ms(),
        event,
    });
}

impl DeviceTask {
    async fn run(mut self) {
        loop {
            if self.shutdown.is_cancelled() {
                self.stop_all(StopScope::All);
                let _ = self.sink.pause().await;
                return;
            }
            while let Ok(cmd) = self.commands.try_recv() {
                self.command(cmd);
            }
            self.expire();
            self.report_metrics();
            if let Some(by) = self.current.as_ref().and_then(|p| p.interrupted_by.clone()) {
                if let Err(e) = self.interrupt(by).await {
                    self.device_failed(e).await;
                }
                continue;
            }
            if self.current.is_none() {
                match self.queue.pop_front() {
                    Some(item) => self.start(item),
                    None => {
                        let _ = self.sink.pause().await;
                        if !self.idle().await {
                            return;
                        }
                        continue;
                    }
                }
            }
            self.prepare_next();
            if let Err(e) = self.step().await {
                self.device_failed(e).await;
            }
        }
    }

    /// Queue depth and new underruns into the metrics.
    fn report_metrics(&mut self) {
        let m = crate::metrics::metrics();
        let labels = crate::metrics::DeviceLabels {
            device: self.name.clone(),
        };
        let depth = self.queue.len() + usize::from(self.current.is_some());
        m.queue_depth
            .get_or_create(&labels)
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
        let now = self.sink.underruns();
        // A new sink (after a device failure) counts from 0 again.
        let new = if now >= self.underruns_seen {
            now - self.underruns_seen
        } else {
            now
        };
        self.underruns_seen = now;
        if new > 0 {
            m.underruns.get_or_create(&labels).inc_by(new);
        }
    }

    /// Wait for a command (or an expiry). `false` when the playback handle is gone.
    async fn idle(&mut self) -> bool {
        tokio::select! {
            cmd = self.commands.recv() => match cmd {
                Some(cmd) => { self.command(cmd); true }
                None => false,
            },
            () = self.shutdown.cancelled() => true,
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Enqueue(ann) => self.enqueue(*ann),
            Command::Stop { scope, reply } => {
                let _ = reply.send(self.stop_all(scope));
            }
        }
    }

    fn enqueue(&mut self, ann: Announcement) {
        let busy = self.current.is_some() || !self.queue.is_empty();
        if ann.priority == Priority::Notification && busy {
            report(
                &ann,
                Event::Dropped {
                    by_id: String::new(),
                },
            );
            return;
        }
        if ann.priority != Priority::Notification {
            // Newer announcements push TEXT aside, and IMPORTANT pushes everything but IMPORTANT.
            if let Some(p) = &mut self.current {
                let cur = p.item.ann.priority;
                if cur == Priority::Text
                    || (ann.priority == Priority::Important && cur != Priority::Important)
                {
                    p.interrupted_by.get_or_insert_with(|| ann.id.clone());
                }
            }
            let by = ann.id.clone();
            let drops_progress = ann.priority == Priority::Progress;
            self.queue.retain(|item| {
                let p = item.ann.priority;
                let drop = p == Priority::Text || (drops_progress && p == Priority::Progress);
                if drop {
                    report(&item.ann, Event::Dropped { by_id: by.clone() });
                }
                !drop
            });
        }
        let position = if ann.priority == Priority::Important {
            self.queue
                .iter()
                .position(|i| i.ann.priority != Priority::Important)
                .unwrap_or(self.queue.len())
        } else {
            self.queue.len()
        };
        report(
            &ann,
            Event::Queued {
                position: u32::try_from(position).unwrap_or(u32::MAX),
                device: self.name.clone(),
            },
        );
        self.queue.insert(position, Item { ann, audio: None });
    }

    fn stop_all(&mut self, scope: StopScope) -> Vec<String> {
        let mut stopped = Vec::new();
        if let Some(p) = &mut self.current {
            let hit = match &scope {
                StopScope::Current | StopScope::All => true,
                StopScope::Id(id) => *id == p.item.ann.id,
            };
            if hit {
                p.interrupted_by.get_or_insert_with(String::new);
                stopped.push(p.item.ann.id.clone());
            }
        }
        if scope != StopScope::Current {
            self.queue.retain(|item| {
                let hit = match &scope {
                    StopScope::All => true,
                    StopScope::Id(id) => *id == item.ann.id,
                    StopScope::Current => false,
                };
                if hit {
                    report(
                        &item.ann,
                        Event::Dropped {
                            by_id: String::new(),
                        },
                    );
                    stopped.push(item.ann.id.clone());
                }
                !hit
            });
        }
        stopped
    }

    fn expire(&mut self) {
        let now = Instant::now();
        self.queue.retain(|item| {
            let expired = item.ann.expires_at.is_some_and(|t| t <= now);
            if expired {
                report(&item.ann, Event::Expired);
            }
            !expired
        });
    }

    fn start(&mut self, mut item: Item) {
        if item.audio.is_none() {
            item.audio = Some(self.synthesize(&item.ann));
        }
        let spec = self.sink.spec();
        let frames_of =
            |d: Duration| (d.as_secs_f64() * f64::from(spec.sample_rate)).round() as usize;
        self.current = Some(Playing {
            silence_left: frames_of(item.ann.leading_silence),
            chime_pos: item.ann.chime.then_some(0),
            item,
            frames: 0,
            started: false,
            primed: false,
            interrupted_by: None,
        });
    }

    /// Look-ahead: the next announcement synthesizes while this one plays.
    fn prepare_next(&mut self) {
        if let Some(next) = self.queue.front()
            && next.audio.is_none()
        {
            let audio = self.synthesize(&next.ann);
            if let Some(next) = self.queue.front_mut() {
                next.audio = Some(audio);
            }
        }
    }

    fn synthesize(&self, ann: &Announcement) -> Synthesis {
        self.source.start(ann, self.sink.spec())
    }

    /// Play one block of the current announcement (or finish it).
    async fn step(&mut self) -> Result<(), SinkError> {
        let spec = self.sink.spec();
        let ch = usize::from(spec.channels);
        let block = (spec.sample_rate * BLOCK_MS / 1000) as usize * ch;
        let Some(p) = self.current.as_mut() else {
            return Ok(());
        };
        // Nothing sounds before the speech has a head start (commands are served meanwhile).
        if !p.primed {
            let ready = p.item.audio.as_ref().is_none_or(|a| {
                a.rx.is_closed()
                    || a.rx.len() as u64 * u64::from(BLOCK_MS) >= PREBUFFER.as_millis() as u64
            });
            if !ready {
                tokio::select! {
                    biased;
                    cmd = self.commands.recv() => {
                        if let Some(cmd) = cmd { self.command(cmd); }
                    }
                    () = self.shutdown.cancelled() => {}
                    () = tokio::time::sleep(Duration::from_millis(5)) => {}
                }
                return Ok(());
            }
            p.primed = true;
        }
        // Leading silence, then the chime.
        if p.silence_left > 0 {
            let n = p.silence_left.min(block / ch);
            p.silence_left -= n;
            let zeros = vec![0.0f32; n * ch];
            return self.write(&zeros).await;
        }
        if let Some(pos) = p.chime_pos {
            let chime = Arc::clone(&self.chime);
            let end = (pos + block).min(chime.len());
            p.chime_pos = (end < chime.len()).then_some(end);
            return self.write(&chime[pos..end]).await;
        }
        // The speech, as it is synthesized; commands are served while waiting for it.
        let Some(audio) = p.item.audio.as_mut() else {
            return Ok(());
        };
        let next = tokio::select! {
            biased;
            cmd = self.commands.recv() => {
                if let Some(cmd) = cmd { self.command(cmd); }
                return Ok(());
            }
            () = self.shutdown.cancelled() => return Ok(()),
            next = audio.rx.recv() => next,
        };
        match next {
            Some(Ok(samples)) => {
                for part in samples.chunks(block.max(ch)) {
                    self.write(part).await?;
                    if self
                        .current
                        .as_ref()
                        .is_some_and(|p| p.interrupted_by.is_some())
                    {
                        break;
                    }
                    while let Ok(cmd) = self.commands.try_recv() {
                        self.command(cmd);
                    }
                }
                Ok(())
            }
            Some(Err(status)) => {
                if let Some(p) = self.current.take() {
                    report(&p.item.ann, Event::Failed { status });
                }
                Ok(())
            }
            None => self.finish().await,
        }
    }

    async fn write(&mut self, samples: &[f32]) -> Result<(), SinkError> {
        self.sink.write(samples).await?;
        if let Some(p) = &mut self.current {
            p.frames += (samples.len() / usize::from(self.sink.spec().channels)) as u64;
            if !p.started {
                p.started = true;
                report(&p.item.ann, Event::Started);
            }
        }
        Ok(())
    }

    /// The speech ended: a pause if another announcement follows at once, else a drain.
    async fn finish(&mut self) -> Result<(), SinkError> {
        let follows = self
            .queue
            .front()
            .is_some_and(|i| i.ann.expires_at.is_none_or(|t| t > Instant::now()));
        if follows && !self.pause.is_zero() {
            let spec = self.sink.spec();
            let frames = (self.pause.as_secs_f64() * f64::from(spec.sample_rate)) as usize;
            let zeros = vec![0.0f32; frames * usize::from(spec.channels)];
            // Played before FINISHED, so the pause cannot clip the last syllable.
            self.sink.write(&zeros).await?;
        } else if !follows {
            self.sink.drain().await?;
        }
        if let Some(p) = self.current.take() {
            let played_ms = p.frames * 1000 / u64::from(self.sink.spec().sample_rate);
            report(&p.item.ann, Event::Finished { played_ms });
        }
        Ok(())
    }

    /// Stop the current announcement where it is; the configured pause follows if something
    /// else is queued, so a cut is never glued to the next announcement.
    async fn interrupt(&mut self, by: String) -> Result<(), SinkError> {
        let dropped = self.sink.discard() as u64;
        // What comes next (usually the interrupting announcement, which has just arrived)
        // synthesizes during the pause, so the gap is the pause, not the pause plus upstream's
        // time to first audio.
        self.prepare_next();
        if let Some(p) = self.current.take() {
            let rate = u64::from(self.sink.spec().sample_rate);
            let played_ms = p.frames.saturating_sub(dropped) * 1000 / rate;
            report(
                &p.item.ann,
                Event::Interrupted {
                    by_id: by,
                    played_ms,
                },
            );
        }
        if !self.queue.is_empty() && !self.pause.is_zero() {
            let spec = self.sink.spec();
            let frames = (self.pause.as_secs_f64() * f64::from(spec.sample_rate)) as usize;
            self.sink
                .write(&vec![0.0f32; frames * usize::from(spec.channels)])
                .await?;
        }
        Ok(())
    }

    /// The device failed mid-play: the announcement fails, the device is reopened, the queue
    /// goes on.
    async fn device_failed(&mut self, error: SinkError) {
        tracing::warn!(device = %self.name, %error, "output device failed; reopening it");
        if let Some(p) = self.current.take() {
            report(
                &p.item.ann,
                Event::Failed {
                    status: tonic::Status::unavailable(format!("output device failed: {error}")),
                },
            );
        }
        match self.factory.open(&self.name) {
            Ok(sink) if sink.spec() == self.sink.spec() => self.sink = sink,
            Ok(_) | Err(_) => {
                // Keep the old sink; the next write fails again and fails its announcement,
                // which is the honest outcome while the device is gone. Back off a little.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// f32le bytes → samples.
fn f32_samples(data: &Bytes) -> Vec<f32> {
    data.chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[cfg(test)]
mod tests;
