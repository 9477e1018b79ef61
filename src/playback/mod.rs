//! Local playback: one announcement queue per output device.
//!
//! [`Playback`] (`handle`) is the handle the doors hold. Each device that has been used gets
//! one tokio task (`queue`) that owns the device's [`Sink`], its queue and the announcement
//! playing now; the handle talks to it only through a bounded command channel (control by
//! handle, never by lock). `source` produces an announcement's audio through the synthesis
//! core; [`sink`] holds the sinks and their registry. The task plays in small blocks, so a command (an IMPORTANT announcement, a
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
//! `expires_after`) are removed when they would start, while they wait for their prebuffer, or
//! by a timer.
//!
//! A device holds at most [`PlaybackSettings::max_queued`] announcements (queued and playing);
//! more are refused with RESOURCE_EXHAUSTED. An announcement whose client left still counts and
//! still plays (unless the client asked `cancel_on_disconnect`).
//!
//! When the device fails (a write or drain error, e.g. a device that cannot pause failing to
//! resume after an idle gap), the task reopens it, trying again every [`REOPEN_RETRY`] for up to
//! [`PlaybackSettings::reopen_timeout`]. The announcement playing then is replayed from its
//! beginning if it had played less than [`PlaybackSettings::replay_within`], else it goes on
//! where it was; it fails only when the device cannot be reopened in time.

//!
//! Must not depend on any door: events and errors are domain types ([`crate::error::Error`]).

pub mod chime;
#[cfg(feature = "playback")]
pub mod cpal_sink;
mod handle;
mod queue;
pub mod sink;
mod source;

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

use tokio::{sync::mpsc, time::Instant};

pub use self::{
    handle::Playback,
    queue::PREBUFFER,
    sink::{DeviceInfo, Registry, Sink, SinkError, SinkFactory},
    source::{AudioSource, PipelineSource, SYNTHESIS_CHUNKS, Synthesis},
};
use crate::{audio::AudioSpec, error::Error, synthesis::Job};

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
        /// Why.
        error: Error,
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
    /// What to synthesize (its output format and gain are set by the device).
    pub job: Job,
    /// Linear gain (1.0 = unchanged).
    pub volume: f32,
    /// Play the chime first.
    pub chime: bool,
    /// Silence before chime and speech.
    pub leading_silence: Duration,
    /// Drop it if it has not started by then.
    pub expires_at: Option<Instant>,
    /// Where its events go (dropped silently if the client left). At most four events are
    /// sent per announcement, so a small buffer never fills.
    pub events: Events,
}

/// An announcement's event channel, with what it has reported so far.
///
/// Every announcement ends with exactly one final event, whatever ends it: the queue reports
/// the ones it decides (finished, interrupted, dropped, expired, failed), and an announcement
/// dropped without one (the queue stopped at shutdown, or never received it) reports its own
/// on drop: INTERRUPTED (with the time played since STARTED) if it had started, else DROPPED,
/// both with no `by_id`. So every door gets the final event the contract promises.
#[derive(Debug)]
pub struct Events {
    tx: mpsc::Sender<Report>,
    /// When STARTED was reported, ms since the epoch; 0 = not started.
    started_ms: AtomicU64,
    /// A final event was reported.
    ended: AtomicBool,
}

impl From<mpsc::Sender<Report>> for Events {
    fn from(tx: mpsc::Sender<Report>) -> Self {
        Self {
            tx,
            started_ms: AtomicU64::new(0),
            ended: AtomicBool::new(false),
        }
    }
}

impl Events {
    /// Report `event` for announcement `id` (nothing after a final event). `try_send` only
    /// fails when the client has left: an announcement has at most four events and its
    /// channel more room than that.
    fn report(&self, id: &str, event: Event) {
        if self.ended.load(Ordering::Relaxed) {
            return;
        }
        let now = now_ms();
        if event.is_final() {
            self.ended.store(true, Ordering::Relaxed);
        } else if matches!(event, Event::Started) {
            self.started_ms.store(now.max(1), Ordering::Relaxed);
        }
        let _ = self.tx.try_send(Report {
            id: id.to_owned(),
            timestamp_ms: now,
            event,
        });
    }
}

impl Drop for Announcement {
    fn drop(&mut self) {
        if self.events.ended.load(Ordering::Relaxed) {
            return;
        }
        let event = match self.events.started_ms.load(Ordering::Relaxed) {
            0 => Event::Dropped {
                by_id: String::new(),
            },
            started => Event::Interrupted {
                by_id: String::new(),
                played_ms: now_ms().saturating_sub(started),
            },
        };
        self.events.report(&self.id, event);
    }
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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
    /// Announcements a device holds at most (queued and playing); more are refused with
    /// RESOURCE_EXHAUSTED.
    pub max_queued: usize,
    /// After a device failure, an announcement that had played less than this starts again
    /// from its beginning on the reopened device; one that had played more goes on where it was.
    pub replay_within: Duration,
    /// How long a failed device is tried again (every [`REOPEN_RETRY`]) before the announcement
    /// playing on it fails.
    pub reopen_timeout: Duration,
}

/// Wait between two attempts to reopen a failed device.
pub const REOPEN_RETRY: Duration = Duration::from_millis(200);

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
            max_queued: 64,
            replay_within: Duration::from_secs(1),
            reopen_timeout: Duration::from_secs(5),
        }
    }
}

#[cfg(test)]
mod tests;
