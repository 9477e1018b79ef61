//! The per-device queue task: one tokio task per opened device owns its [`Sink`], its queue
//! and the announcement playing now, and applies the priority rules. It plays in small blocks,
//! so a command (an IMPORTANT announcement, a StopSpeaking) takes effect within one block plus
//! the sink's lead. Only the handle ([`super::Playback`]) talks to it, by command.

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

use super::{
    Announcement, AudioSource, Event, Priority, REOPEN_RETRY, Sink, SinkError, SinkFactory,
    StopScope, Synthesis,
};
use crate::error::Error;

pub(super) enum Command {
    Enqueue(Box<Announcement>, Slot),
    Stop {
        scope: StopScope,
        reply: tokio::sync::oneshot::Sender<Vec<String>>,
    },
}

/// One announcement counted against `playback.max_queued`: taken by the handle when it
/// accepts the announcement, given back when the announcement is gone (played, stopped,
/// dropped, expired or failed), whoever drops it.
pub(super) struct Slot(Arc<AtomicUsize>);

impl Slot {
    /// A slot already counted in `held`.
    pub(super) fn new(held: Arc<AtomicUsize>) -> Self {
        Self(held)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A queued announcement, maybe already being synthesized.
pub(super) struct Item {
    ann: Announcement,
    audio: Option<Synthesis>,
    _slot: Slot,
}

/// The announcement playing now.
pub(super) struct Playing {
    item: Item,
    /// Envelope: silence frames still to play, then chime frames from `chime_pos`.
    silence_left: usize,
    chime_pos: Option<usize>,
    /// Frames accepted by the sink.
    frames: u64,
    /// Speech taken from the synthesis and not yet accepted by the sink (from `pending_pos`):
    /// the rest of a chunk, or a replay after a device failure.
    pending: Vec<f32>,
    pending_pos: usize,
    /// All the speech taken from the synthesis so far, kept while less than
    /// `replay_within` has played, to replay it after a device failure; `None` past that.
    replay: Option<Vec<f32>>,
    started: bool,
    /// [`PREBUFFER`] of speech was ready (or the synthesis had ended) before it started.
    primed: bool,
    interrupted_by: Option<String>,
}

pub(super) struct DeviceTask {
    pub(super) name: String,
    pub(super) sink: Box<dyn Sink>,
    pub(super) factory: Arc<dyn SinkFactory>,
    pub(super) source: Arc<dyn AudioSource>,
    pub(super) chime: Arc<Vec<f32>>,
    pub(super) pause: Duration,
    /// See [`super::PlaybackSettings::replay_within`].
    pub(super) replay_within: Duration,
    /// See [`super::PlaybackSettings::reopen_timeout`].
    pub(super) reopen_timeout: Duration,
    pub(super) queue: VecDeque<Item>,
    pub(super) current: Option<Playing>,
    pub(super) commands: mpsc::Receiver<Command>,
    pub(super) shutdown: CancellationToken,
    /// The sink's underrun count last reported to the metrics.
    pub(super) underruns_seen: u64,
    /// When the device's current run of failures began: `None` once it has played
    /// [`SOUND_AGAIN`] since its last failure, or finished an announcement.
    pub(super) trouble_since: Option<Instant>,
    /// Frames the sink accepted since its last failure.
    pub(super) frames_since_failure: u64,
}

/// Audio a device must take after a failure before it counts as sound again (a device that
/// opens but fails again at once stays in the same run of failures, bounded by
/// `reopen_timeout`).
const SOUND_AGAIN: Duration = Duration::from_secs(1);

/// Frames per block the task writes between looking at its commands.
pub(super) const BLOCK_MS: u32 = 20;

/// Speech synthesized ahead before an announcement starts to sound: the jitter of the
/// upstream's first chunks it absorbs, at the cost of as much synthesis time (usually a few
/// tens of ms, as upstreams synthesize faster than real time).
pub const PREBUFFER: Duration = Duration::from_millis(200);

/// Send `event` to the announcement's client.
fn report(ann: &Announcement, event: Event) {
    ann.events.report(&ann.id, event);
}

impl DeviceTask {
    pub(super) async fn run(mut self) {
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
            Command::Enqueue(ann, slot) => self.enqueue(*ann, slot),
            Command::Stop { scope, reply } => {
                let _ = reply.send(self.stop_all(scope));
            }
        }
    }

    fn enqueue(&mut self, ann: Announcement, slot: Slot) {
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
        self.queue.insert(
            position,
            Item {
                ann,
                audio: None,
                _slot: slot,
            },
        );
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

    /// Remove the announcements whose expiry has passed before they started: queued ones, and
    /// the one waiting for its prebuffer (an idle device takes an announcement at once, so its
    /// expiry passes there when its synthesis is late).
    fn expire(&mut self) {
        let now = Instant::now();
        if self
            .current
            .as_ref()
            .is_some_and(|p| !p.started && p.item.ann.expires_at.is_some_and(|t| t <= now))
            && let Some(p) = self.current.take()
        {
            report(&p.item.ann, Event::Expired);
        }
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
            pending: Vec::new(),
            pending_pos: 0,
            replay: Some(Vec::new()),
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
        // The speech: what is pending first, one block at a time (commands are served between
        // blocks by the caller's loop).
        if p.pending_pos < p.pending.len() {
            let from = p.pending_pos;
            let to = (from + block.max(ch)).min(p.pending.len());
            let pending = std::mem::take(&mut p.pending);
            let written = self.write(&pending[from..to]).await;
            if let Some(p) = self.current.as_mut() {
                p.pending = pending;
                if written.is_ok() {
                    p.pending_pos = to;
                }
            }
            return written;
        }
        // Then the speech as it is synthesized; commands are served while waiting for it.
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
                if let Some(p) = self.current.as_mut() {
                    if let Some(all) = &mut p.replay {
                        all.extend_from_slice(&samples);
                    }
                    p.pending = samples;
                    p.pending_pos = 0;
                }
                Ok(())
            }
            Some(Err(error)) => {
                if let Some(p) = self.current.take() {
                    report(&p.item.ann, Event::Failed { error });
                }
                Ok(())
            }
            None => self.finish().await,
        }
    }

    async fn write(&mut self, samples: &[f32]) -> Result<(), SinkError> {
        self.sink.write(samples).await?;
        let rate = u64::from(self.sink.spec().sample_rate);
        let replay_frames = (self.replay_within.as_secs_f64() * rate as f64) as u64;
        let frames = (samples.len() / usize::from(self.sink.spec().channels)) as u64;
        self.frames_since_failure += frames;
        if self.frames_since_failure >= (SOUND_AGAIN.as_secs_f64() * rate as f64) as u64 {
            self.trouble_since = None;
        }
        if let Some(p) = &mut self.current {
            p.frames += frames;
            if p.frames >= replay_frames {
                p.replay = None;
            }
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
        self.trouble_since = None;
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

    /// The device failed: it is reopened (tried again every [`REOPEN_RETRY`]), and the
    /// announcement playing goes on on the new device: from its beginning if it had played
    /// less than `replay_within`, else where it was (what the failed device held but had not
    /// played is lost). It fails only when the device has not been sound again within
    /// `reopen_timeout` of the first failure of this run: it could not be reopened, or it
    /// failed again after each reopening.
    async fn device_failed(&mut self, error: SinkError) {
        let error = crate::error::chain(&error);
        let again = self.trouble_since.is_some();
        let since = *self.trouble_since.get_or_insert_with(Instant::now);
        let deadline = since + self.reopen_timeout;
        self.frames_since_failure = 0;
        tracing::warn!(device = %self.name, %error, "output device failed; reopening it");
        // Free the device first: a stream still open on it would make it busy.
        self.sink.close().await;
        if again {
            // It failed again right after a reopening: not in a tight loop.
            let wait = REOPEN_RETRY.min(deadline.saturating_duration_since(Instant::now()));
            self.serve_commands_for(wait).await;
        }
        let gave_up = again && Instant::now() >= deadline;
        let spec = self.sink.spec();
        let frames_of =
            |d: Duration| (d.as_secs_f64() * f64::from(spec.sample_rate)).round() as usize;
        let mut replayed = None;
        if let Some(p) = self.current.as_mut()
            && !gave_up
        {
            replayed = Some((p.item.ann.id.clone(), p.replay.is_some()));
            if let Some(all) = &p.replay {
                // From the beginning: leading silence, chime and every sample taken so far.
                p.pending.clone_from(all);
                p.pending_pos = 0;
                p.silence_left = frames_of(p.item.ann.leading_silence);
                p.chime_pos = p.item.ann.chime.then_some(0);
                p.frames = 0;
            }
        }
        let reopened = self.reopen(deadline).await;
        let why = match (&reopened, gave_up) {
            (Err(why), _) => why.clone(),
            (Ok(()), true) => "it failed again after each reopening".to_owned(),
            (Ok(()), false) => {
                match replayed {
                    Some((id, true)) => {
                        tracing::info!(device = %self.name, %id, "device reopened; replaying the announcement from its beginning");
                    }
                    Some((id, false)) => {
                        tracing::info!(device = %self.name, %id, "device reopened; the announcement goes on where it was");
                    }
                    None => tracing::info!(device = %self.name, "device reopened"),
                }
                return;
            }
        };
        tracing::error!(device = %self.name, %why, "the output device is not sound again in time");
        // The next announcement gets a run of its own.
        self.trouble_since = None;
        if let Some(p) = self.current.take() {
            report(
                &p.item.ann,
                Event::Failed {
                    error: Error::unavailable(format!(
                        "output device failed: {error}; it was not sound again within \
                         playback.reopen_timeout_ms ({} ms): {why}",
                        self.reopen_timeout.as_millis()
                    )),
                },
            );
        }
    }

    /// Serve commands for `wait` (or until shutdown).
    async fn serve_commands_for(&mut self, wait: Duration) {
        let until = tokio::time::sleep(wait);
        tokio::pin!(until);
        loop {
            tokio::select! {
                () = &mut until => return,
                () = self.shutdown.cancelled() => return,
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.command(cmd),
                    None => { (&mut until).await; return; }
                },
            }
        }
    }

    /// Open the device again, every [`REOPEN_RETRY`] until `deadline` (at least once;
    /// commands are served meanwhile). `Err`: why the last attempt failed. A device that
    /// comes back at another rate or channel count is no use to the synthesis under way: the
    /// old sink is kept (its next write fails again, or reopens it itself).
    async fn reopen(&mut self, deadline: Instant) -> Result<(), String> {
        loop {
            let why = match self.factory.open(&self.name) {
                Ok(sink) if sink.spec() == self.sink.spec() => {
                    self.sink = sink;
                    return Ok(());
                }
                Ok(sink) => format!(
                    "it came back at {} Hz × {} channels instead of {} Hz × {}",
                    sink.spec().sample_rate,
                    sink.spec().channels,
                    self.sink.spec().sample_rate,
                    self.sink.spec().channels
                ),
                Err(e) => crate::error::chain(&e),
            };
            if Instant::now() + REOPEN_RETRY > deadline || self.shutdown.is_cancelled() {
                return Err(why);
            }
            tracing::debug!(device = %self.name, %why, "cannot reopen the output device yet");
            self.serve_commands_for(REOPEN_RETRY).await;
        }
    }
}
