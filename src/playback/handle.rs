//! [`Playback`]: the handle the doors hold. It resolves device names, opens a device (and
//! spawns its queue task) on first use, and sends commands to the task; it never touches a
//! device's queue itself.
//!
//! Lock policy: the device map is a `std::sync::Mutex` held only to look up or insert a
//! command sender, never across an `.await`.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    Announcement, AudioSource, DeviceInfo, PlaybackSettings, SinkError, SinkFactory, StopScope,
    chime,
    queue::{Command, DeviceTask, Slot},
};
use crate::error::{Error, lock};

/// Commands buffered per device task (enqueues and stops; the task serves them within one
/// 20 ms block).
const COMMANDS: usize = 256;

/// A device's task, as the handle sees it.
struct Device {
    commands: mpsc::Sender<Command>,
    /// Announcements the device holds (queued, playing, or in a command on their way); each
    /// is counted by its [`Slot`].
    held: Arc<AtomicUsize>,
}

/// The playback handle: devices by name, each with its queue task.
pub struct Playback {
    settings: PlaybackSettings,
    factory: Arc<dyn SinkFactory>,
    source: Arc<dyn AudioSource>,
    devices: Mutex<HashMap<String, Device>>,
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
    /// `Err` (INVALID_ARGUMENT) lists the known names.
    pub fn resolve(&self, name: &str) -> Result<String, Error> {
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
        Err(Error::invalid(format!(
            "unknown device {:?}; known devices: default, {}",
            name.chars().take(64).collect::<String>(),
            names.join(", ")
        )))
    }

    /// Queue `announcement` on `device`, opening it (and starting its queue) on first use.
    /// FAILED_PRECONDITION when the device cannot be opened; RESOURCE_EXHAUSTED (naming
    /// `playback.max_queued`) when it already holds that many announcements.
    pub fn enqueue(&self, device: &str, announcement: Announcement) -> Result<(), Error> {
        let (tx, held) = self.device(device).map_err(|e| {
            Error::failed_precondition(format!(
                "device: no usable output device: {}",
                crate::error::chain(&e)
            ))
        })?;
        let max = self.settings.max_queued;
        if held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            return Err(Error::resource_exhausted(format!(
                "playback.max_queued: device {device:?} already holds {max} announcements \
                 (queued or playing), the limit; try again later"
            )));
        }
        let slot = Slot::new(held);
        tx.try_send(Command::Enqueue(Box::new(announcement), slot))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => Error::resource_exhausted(format!(
                    "device {device:?}: {COMMANDS} commands are waiting for its queue; try again later"
                )),
                mpsc::error::TrySendError::Closed(_) => Error::failed_precondition(format!(
                    "device: no usable output device: {device}: the device's queue has stopped"
                )),
            })
    }

    /// Stop announcements on `device`; the ids stopped or removed.
    pub async fn stop(&self, device: &str, scope: StopScope) -> Vec<String> {
        let tx = {
            let devices = lock(&self.devices);
            devices.get(device).map(|d| d.commands.clone())
        };
        let Some(tx) = tx else { return Vec::new() };
        let (reply, rx) = tokio::sync::oneshot::channel();
        if tx.send(Command::Stop { scope, reply }).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    fn device(&self, name: &str) -> Result<(mpsc::Sender<Command>, Arc<AtomicUsize>), SinkError> {
        let mut devices = lock(&self.devices);
        if let Some(d) = devices.get(name)
            && !d.commands.is_closed()
        {
            return Ok((d.commands.clone(), Arc::clone(&d.held)));
        }
        let sink = self.factory.open(name)?;
        let chime = chime::load(self.settings.chime_file.as_deref(), sink.spec())
            .map_err(|e| SinkError::caused(name, "chime", e))?;
        let (tx, rx) = mpsc::channel(COMMANDS);
        let task = DeviceTask {
            name: name.to_owned(),
            sink,
            factory: Arc::clone(&self.factory),
            source: Arc::clone(&self.source),
            chime: Arc::new(chime),
            pause: self.settings.pause,
            replay_within: self.settings.replay_within,
            reopen_timeout: self.settings.reopen_timeout,
            queue: VecDeque::new(),
            current: None,
            commands: rx,
            shutdown: self.shutdown.clone(),
            underruns_seen: 0,
            trouble_since: None,
            frames_since_failure: 0,
        };
        tokio::spawn(task.run());
        let held = Arc::new(AtomicUsize::new(0));
        devices.insert(
            name.to_owned(),
            Device {
                commands: tx.clone(),
                held: Arc::clone(&held),
            },
        );
        Ok((tx, held))
    }
}
