//! Where an announcement's audio comes from: [`AudioSource`], and the production
//! [`PipelineSource`], which runs the announcement's job through the synthesis core (cache,
//! engine, fallback, pipeline) straight to `f32` at the device's rate. Must not depend on any
//! door.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Announcement, queue::BLOCK_MS};
use crate::{
    audio::{AudioSpec, OutputEncoding, OutputFormat},
    error::Error,
    pipeline::Render,
    provider::Provider,
    synthesis::{self, Event},
};

/// Produces an announcement's audio at a device's spec: the synthesis pipeline in production,
/// something simpler in queue tests.
pub trait AudioSource: Send + Sync + 'static {
    /// Start producing `ann`'s audio as interleaved `f32` at `spec` into a channel.
    fn start(&self, ann: &Announcement, spec: AudioSpec) -> Synthesis;
}

/// The production [`AudioSource`]: the announcement's job through the synthesis core (cache,
/// engine, fallback chain), straight to `f32` at the device's rate, with the announcement's
/// volume as gain.
#[derive(Debug)]
pub struct PipelineSource {
    provider: Arc<Provider>,
}

impl PipelineSource {
    /// A source over `provider`.
    pub fn new(provider: Arc<Provider>) -> Self {
        Self { provider }
    }
}

/// Core events buffered between an announcement's job and its sample channel.
const EVENTS_AHEAD: usize = 16;

impl AudioSource for PipelineSource {
    fn start(&self, ann: &Announcement, spec: AudioSpec) -> Synthesis {
        let mut job = ann.job.clone();
        job.request.output_sample_rate = spec.sample_rate;
        job.render = Render {
            output: OutputFormat {
                encoding: OutputEncoding::PcmF32Le,
                spec,
            },
            gain: ann.volume,
            chunk_ms: BLOCK_MS,
            realtime: true,
        };
        let cancel = CancellationToken::new();
        let mut events = synthesis::start(
            Arc::clone(&self.provider),
            job,
            synthesis::Start::new(cancel.clone(), EVENTS_AHEAD),
        );
        let (tx, rx) = mpsc::channel(SYNTHESIS_CHUNKS);
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let samples = match event {
                    Ok(Event::Audio(chunk)) => Ok(f32_samples(&chunk.data)),
                    // Info and summary say nothing the queue needs; playback asks for no words.
                    Ok(Event::Info(_) | Event::Words(_) | Event::Summary(_)) => continue,
                    Err(e) => Err(e),
                };
                if tx.send(samples).await.is_err() {
                    // The announcement is gone: dropping `events` stops the job.
                    return;
                }
            }
        });
        Synthesis { rx, cancel }
    }
}

/// Chunks an announcement's synthesis may run ahead of playback (about 80 s in 20 ms chunks).
pub const SYNTHESIS_CHUNKS: usize = 4096;

/// An announcement's synthesis, running ahead of playback. Dropping it cancels the work.
#[derive(Debug)]
pub struct Synthesis {
    /// Interleaved samples at the device's spec, in order; an error ends the announcement.
    pub rx: mpsc::Receiver<Result<Vec<f32>, Error>>,
    /// Cancelled on drop.
    pub cancel: CancellationToken,
}

impl Drop for Synthesis {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// f32le bytes → samples.
fn f32_samples(data: &Bytes) -> Vec<f32> {
    data.chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}
