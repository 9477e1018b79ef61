//! [`Playback`]: the handle the doors hold. It resolves device names, opens a device (and
//! spawns its queue task) on first use, and sends commands to the task; it never touches a
//! device's queue itself.
//!
//! Lock policy: the device map is a `std::sync::Mutex` held only to look up or insert a
//! command sender, never across an `.await`.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    Announcement, AudioSource, DeviceInfo, PlaybackSettings, SinkError, SinkFactory, StopScope,
    chime,
    queue::{Command, DeviceTask},
};
use crate::error::{Error, lock};

/// Commands buffered per device task (enqueues and stops; the task serves them within one
/// 20 ms block).
const COMMANDS: usize = 256;

/// The playback handle: devices by name, each with its queue task.
pub struct Playback {
    settings: PlaybackSettings,
    factory: Arc<dyn SinkFactory>,
    source: Arc<dyn AudioSource>,
    devices: Mutex<HashMap<String, mpsc::Sender<Command>>>,
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

    /// The device's spec, opening it (and starting its queue) on first use.
    pub fn enqueue(&self, device: &str, announcement: Announcement) -> Result<(), SinkError> {
        let tx = self.device(device)?;
        tx.try_send(Command::Enqueue(Box::new(announcement)))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => SinkError::new(
                    device,
                    format!("the device's queue has {COMMANDS} commands waiting"),
                ),
                mpsc::error::TrySendError::Closed(_) => {
                    SinkError::new(device, "the device's queue has stopped")
                }
            })
    }

    /// Stop announcements on `device`; the ids stopped or removed.
    pub async fn stop(&self, device: &str, scope: StopScope) -> Vec<String> {
        let tx = {
            let devices = lock(&self.devices);
            devices.get(device).cloned()
        };
        let Some(tx) = tx else { return Vec::new() };
        let (reply, rx) = tokio::sync::oneshot::channel();
        if tx.send(Command::Stop { scope, reply }).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    fn device(&self, name: &str) -> Result<mpsc::Sender<Command>, SinkError> {
        let mut devices = lock(&self.devices);
        if let Some(tx) = devices.get(name)
            && !tx.is_closed()
        {
            return Ok(tx.clone());
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
