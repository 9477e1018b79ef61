//! DashScope (Alibaba Cloud Model Studio) engines: CosyVoice, Qwen-TTS and MiniMax over HTTP
//! with server-sent events.
//!
//! One [`Client`] (one pooled reqwest client, the key, the base URL, the tuning) is shared by
//! three [`DashScopeEngine`]s, one per [`Family`]. A synthesis splits the text into pieces the
//! model takes whole ([`split`]) and runs each piece as one streamed upstream request on its own
//! task (`piece`) with a bounded look-ahead; a driver task (`driver`) forwards the pieces' audio
//! strictly in order as one raw s16le stream and marks where two pieces meet
//! ([`SynthEvent::Boundary`](crate::engine::SynthEvent::Boundary)), so that the audio stage
//! fades there and the joins do not click.
//!
//! Retries: a piece is retried (connect errors, 429, 5xx, timeouts; jittered exponential
//! backoff; at most `max_attempts` tries; never past the client's deadline) only while it has
//! sent no audio. Once a piece has sent audio, its failure ends the stream (UNAVAILABLE): audio
//! is never duplicated. Dropping the stream aborts every piece task, which drops their HTTP
//! requests at once.
//!
//! This module owns everything DashScope-specific (endpoints, bodies, events, error shapes,
//! the custom-voice calls in [`custom`]). It must not process samples (joins are an audio stage)
//! and must not know any door's wire format (gRPC, HTTP responses).

pub mod client;
pub mod custom;
mod driver;
pub mod family;
mod piece;
pub mod split;
pub mod sse;
mod streamed;
mod upload;
pub mod voices;
pub mod ws;

use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use self::driver::Driver;
pub use self::{
    client::{Client, Settings, Tuning},
    family::Family,
};
use super::{
    EngineError, Refused, StreamedSynth, SynthStream, SynthesisRequest, Synthesizer, TextIn,
    VoiceInfo,
};

/// One family's engine.
#[derive(Debug)]
pub struct DashScopeEngine {
    family: Family,
    client: Arc<Client>,
}

impl DashScopeEngine {
    /// The engine of `family` over `client`.
    pub(super) fn new(family: Family, client: Arc<Client>) -> Self {
        Self { family, client }
    }
}

#[async_trait::async_trait]
impl Synthesizer for DashScopeEngine {
    fn name(&self) -> &'static str {
        self.family.engine_name()
    }

    fn serves_model(&self, model: &str) -> bool {
        Family::for_model(model) == Some(self.family)
    }

    fn default_voice(&self, model: &str) -> String {
        voices::default_voice(model).to_owned()
    }

    fn voices(&self) -> Vec<VoiceInfo> {
        voices::catalogue(self.family)
    }

    fn native_sample_rate(&self, _model: &str, _voice: &str) -> u32 {
        self.family.native_rate()
    }

    fn check_voice(&self, model: &str, voice: &str) -> Result<(), Refused> {
        voices::check(self.family, model, voice).map_err(Refused)
    }

    fn check_request(&self, req: &SynthesisRequest) -> Result<(), Refused> {
        if req.speaker.is_some() {
            return Err(Refused(format!(
                "speaker: model {:?} does not take it (only piper's multi-speaker voices do)",
                req.model
            )));
        }
        self.family.check(req).map_err(Refused)
    }

    async fn synthesize(&self, req: SynthesisRequest) -> Result<SynthStream, EngineError> {
        let pieces = split::split(&req.text, self.client.piece_units(self.family));
        if pieces.is_empty() {
            return Err(EngineError::NothingToSay);
        }
        let rate = self.family.upstream_rate(req.output_sample_rate);
        tracing::debug!(
            request_id = %req.request_id,
            model = %req.model,
            pieces = pieces.len(),
            upstream_rate = rate,
            "dashscope synthesis"
        );
        let job = Arc::new(Job {
            client: Arc::clone(&self.client),
            family: self.family,
            req,
            rate,
        });
        let (tx, rx) = mpsc::channel(16);
        let mut driver = Driver::new(job, pieces);
        // The first piece must be accepted (first audio, or its end) before the stream is
        // handed out, so request errors (bad key, unknown voice, throttling after retries)
        // arrive as an error status before any audio.
        let first = driver.first().await?;
        tokio::spawn(async move { driver.run(first, tx).await });
        Ok(ReceiverStream::new(rx).boxed())
    }

    fn streams_text(&self, req: &SynthesisRequest) -> bool {
        self.client
            .streamed_text_protocol(self.family, &req.model)
            .is_some()
    }

    async fn synthesize_streamed(
        &self,
        req: SynthesisRequest,
        text: mpsc::Receiver<TextIn>,
    ) -> Result<StreamedSynth, EngineError> {
        let Some(protocol) = self.client.streamed_text_protocol(self.family, &req.model) else {
            return Err(EngineError::Protocol(format!(
                "{} does not take streamed text over dashscope.transport",
                req.model
            )));
        };
        let rate = self.family.upstream_rate(req.output_sample_rate);
        tracing::debug!(request_id = %req.request_id, model = %req.model, ?protocol, "dashscope streamed text");
        let job = Arc::new(Job {
            client: Arc::clone(&self.client),
            family: self.family,
            req,
            rate,
        });
        Ok(streamed::start(job, protocol, text))
    }
}

/// What one synthesis needs, shared by its piece tasks.
#[derive(Debug)]
struct Job {
    client: Arc<Client>,
    family: Family,
    req: SynthesisRequest,
    /// The rate asked of the upstream, in Hz.
    rate: u32,
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::error::ErrorKind;

    #[tokio::test]
    async fn text_with_nothing_to_say_is_the_requests_fault() {
        // Nothing listens there, and nothing may be sent.
        let client = client::unreachable_client();
        let engine = DashScopeEngine::new(Family::CosyVoice, client);
        let req = SynthesisRequest {
            text: " \n\t ".to_owned(),
            model: "cosyvoice-v3-flash".to_owned(),
            ..Default::default()
        };
        let Err(e) = engine.synthesize(req).await else {
            panic!("whitespace synthesized");
        };
        let classified = e.classify();
        assert_eq!(classified.kind(), ErrorKind::InvalidArgument);
        assert!(classified.message().starts_with("text:"), "{classified}");
    }
}
