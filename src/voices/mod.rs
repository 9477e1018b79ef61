//! Custom voices: cloning and design through DashScope's customization endpoint, and herald's
//! registry of the voices it created.
//!
//! - [`surface`]: which of the three management surfaces serves a target model, and each
//!   surface's rules for names and languages.
//! - [`sample`]: local checks and conversion of a clone sample before upload.
//! - [`registry`]: the on-disk record (state directory, atomic writes).
//! - [`Manager`]: create (`create`) / get / delete / list on domain types, and the check a
//!   synthesis with a custom voice passes before any upstream call.
//!
//! This module owns the rules and the record. It must not build DashScope request bodies
//! (`engine::dashscope::custom` does) and must not know any door's wire format: the gRPC
//! mapping is in `service::voices`.

mod create;
mod manager;
pub mod registry;
pub mod sample;
pub mod surface;

use std::{path::PathBuf, time::Duration};

pub use self::{
    create::{CreateVoice, Sample, Source},
    manager::{Deleted, ListedVoice, Listing, Manager, classify},
    registry::{Record, VoiceKind, VoiceStatus},
    surface::Surface,
};

/// Settings of the custom-voice support (`[voices]`).
#[derive(Clone, Debug)]
pub struct Settings {
    /// The registry's directory; `None`: no state directory could be found.
    pub directory: Option<PathBuf>,
    /// First wait between two status polls.
    pub poll_initial: Duration,
    /// Longest wait between two status polls.
    pub poll_max: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            directory: None,
            poll_initial: Duration::from_secs(1),
            poll_max: Duration::from_secs(10),
        }
    }
}
