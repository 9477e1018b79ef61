//! Engines: the things that turn text into audio bytes.
//!
//! An engine implements [`Synthesizer`]: it resolves once its upstream (a subprocess, an HTTP
//! API) has accepted the request, then yields audio bytes in order as a [`SynthStream`]. The
//! pipeline decodes, resamples and encodes what engines send; the one thing an engine learns of
//! the client's format is [`SynthesisRequest::output_sample_rate`], a deliberate optimization:
//! an engine that can produce several rates picks the one that spares the resampler. Dropping
//! the stream cancels the engine's work at once (the subprocess is killed, the HTTP request is
//! dropped). Engines must not depend on any door (no wire types, no status codes): failures
//! are [`EngineError`]s, classified in [`EngineError::classify`].
//!
//! [`Engines`] is the registry: it maps a model name to the engine serving it
//! (`cosyvoice-*`, `qwen3-tts-*`/`qwen-tts*`, `MiniMax/*` → DashScope, `espeak-ng` → local).

pub mod dashscope;
mod error;
pub mod espeak;
pub mod language;
#[cfg(feature = "piper")]
pub mod piper;

pub use self::error::EngineError;

use std::{
    sync::{Arc, atomic::AtomicUsize},
    time::Duration,
};

use bytes::Bytes;
use futures::stream::BoxStream;
use tokio::sync::mpsc;

use crate::audio::InputEncoding;

/// A stream of audio events from one engine call.
pub type SynthStream = BoxStream<'static, Result<SynthEvent, EngineError>>;

/// Text for an engine that takes it as it is written ([`Synthesizer::synthesize_streamed`]).
#[derive(Debug)]
pub enum TextIn {
    /// More text, cut anywhere (herald sends whole sentences).
    Text(String),
    /// Voice what is buffered now (CosyVoice `flush`, realtime `input_text_buffer.commit`).
    Flush,
}

/// A synthesis whose text is still being written ([`Synthesizer::synthesize_streamed`]).
pub struct StreamedSynth {
    /// Its audio, words and end, as from [`Synthesizer::synthesize`].
    pub stream: SynthStream,
    /// How many of the sentences sent the upstream said it has finished voicing (its
    /// sentence ends), counted as their events arrive, ahead of the audio read from `stream`;
    /// exact once `stream` has yielded an error.
    pub acknowledged: Arc<AtomicUsize>,
    /// The longest the synthesis may be left without text or flush: past it the caller must
    /// end the text (drop the sender), or the upstream drops the task.
    pub idle_limit: Duration,
}

/// One validated synthesis request, as an engine sees it (defaults already resolved).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SynthesisRequest {
    /// Text to speak, non-empty.
    pub text: String,
    /// Voice name, known to the engine (validated before the call).
    pub voice: String,
    /// Model name, served by the engine.
    pub model: String,
    /// BCP-47 language hint, if the client gave one.
    pub language: Option<String>,
    /// Speaking instructions, if the client gave some.
    pub instructions: Option<String>,
    /// Speaking rate multiplier, 0.5..=2.0 (1.0 = normal).
    pub speed: f32,
    /// Pitch multiplier, 0.5..=2.0 (1.0 = normal).
    pub pitch: f32,
    /// The request id, for logs and upstream correlation.
    pub request_id: String,
    /// Emotion (MiniMax `voice_setting.emotion`), if the client asked for one.
    pub emotion: Option<String>,
    /// Sampling seed (CosyVoice `seed`), if the client gave one.
    pub seed: Option<u32>,
    /// Word → pronunciation (CosyVoice `hot_fix.pronunciation`, MiniMax `pronunciation_dict`).
    pub pronunciations: Vec<(String, String)>,
    /// Word → replacement text (CosyVoice `hot_fix.replace`).
    pub replacements: Vec<(String, String)>,
    /// Let the upstream rewrite `instructions` (Qwen-TTS instruct models).
    pub optimize_instructions: bool,
    /// Report word timings ([`SynthEvent::Words`]; CosyVoice `word_timestamp_enabled`).
    pub word_timestamps: bool,
    /// The rate the pipeline will output, in Hz: engines that can produce several rates pick
    /// the one that makes the pipeline's work cheapest and exact (ideally this one).
    pub output_sample_rate: u32,
    /// Speaker of a multi-speaker voice (piper: a name of the voice's speaker map, or its
    /// number), if the client named one.
    pub speaker: Option<String>,
    /// When the client stops waiting, if it set a deadline: engines never retry past it.
    pub deadline: Option<tokio::time::Instant>,
}

/// What an engine yields.
#[derive(Clone, Debug, PartialEq)]
pub enum SynthEvent {
    /// The next piece of the audio byte stream. `encoding` is the same for every event of one
    /// stream; `data` may split samples, frames and headers anywhere.
    Audio {
        /// Container/encoding of the byte stream.
        encoding: InputEncoding,
        /// The bytes.
        data: Bytes,
    },
    /// Words of the audio, with their times from the start of the stream (only when the
    /// request asked for them).
    Words(Vec<WordTiming>),
    /// Two independently synthesized pieces meet here: the audio before and after this event
    /// comes from different upstream calls, so the step between them may click. The audio
    /// stage fades out and back in around it (`crate::audio::join`). Only raw PCM streams
    /// ([`InputEncoding::Pcm16Le`]) carry it, after whole frames; never first or last.
    Boundary,
    /// The engine finished successfully. Always the last event of a successful stream.
    Finished {
        /// Characters billed by the upstream, when it says.
        characters: Option<u32>,
        /// Upstream request ids (DashScope `request_id`s), when there are any.
        upstream_request_ids: Vec<String>,
    },
}

/// One word and where it is in the audio.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WordTiming {
    /// The word's text.
    pub text: String,
    /// Start, in ms from the start of the stream's audio.
    pub begin_ms: u32,
    /// End, in ms from the start of the stream's audio.
    pub end_ms: u32,
}

/// A voice an engine offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoiceInfo {
    /// Name to pass as the request's voice.
    pub name: String,
    /// Human-readable name.
    pub display_name: String,
    /// BCP-47 language tags.
    pub languages: Vec<String>,
    /// "female", "male", or empty when unknown.
    pub gender: String,
    /// The model the voice belongs to.
    pub model: String,
    /// The engine's native rate for this voice, in Hz.
    pub native_sample_rate: u32,
}

/// An engine cannot take a request as asked (a voice it does not have, an option its model
/// does not take): the reason, for the client. Always the request's fault, so it is an
/// invalid argument wherever it surfaces.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

impl From<Refused> for crate::error::Error {
    fn from(refused: Refused) -> Self {
        Self::invalid(refused.0)
    }
}

/// A text-to-speech engine.
#[async_trait::async_trait]
pub trait Synthesizer: Send + Sync + 'static {
    /// Stable engine name used in config, logs and `AudioInfo.engine` ("espeak-ng", ...).
    fn name(&self) -> &'static str;

    /// True when this engine serves `model`.
    fn serves_model(&self, model: &str) -> bool;

    /// The default voice for `model`.
    fn default_voice(&self, model: &str) -> String;

    /// The voices this engine offers (all models).
    fn voices(&self) -> Vec<VoiceInfo>;

    /// The engine's native output rate for `model`/`voice`, in Hz: what `sample_rate_hz = 0`
    /// resolves to.
    fn native_sample_rate(&self, model: &str, voice: &str) -> u32;

    /// `Ok` when the engine can honour every option of `req` with `req.model` (emotion, seed,
    /// instructions, language, ...); otherwise why not, in a message for the client that starts
    /// with the field's name and states the limit. Called after [`Synthesizer::check_voice`].
    fn check_request(&self, req: &SynthesisRequest) -> Result<(), Refused> {
        let _ = req;
        Ok(())
    }

    /// `Ok` when `voice` can be used with `model`; otherwise why not, in a message for the client
    /// naming the voice (and, where short enough, the alternatives).
    fn check_voice(&self, model: &str, voice: &str) -> Result<(), Refused> {
        if self
            .voices()
            .iter()
            .any(|v| v.model == model && v.name == voice)
        {
            Ok(())
        } else {
            // The name is the client's: quoted, but cut short.
            Err(Refused(format!(
                "voice {:?} is not a voice of model {model:?} (see ListVoices)",
                voice.chars().take(64).collect::<String>()
            )))
        }
    }

    /// The daemon is about to serve with this engine (not called by `check-config`): a chance
    /// to warm up in the background (piper loads its default voice's model). Must not block.
    fn serving(&self) {}

    /// Start synthesis. Resolves once the engine has accepted the request, so request errors
    /// surface before any audio; then yields audio in order and finally `Finished`.
    async fn synthesize(&self, req: SynthesisRequest) -> Result<SynthStream, EngineError>;

    /// True when the engine takes `req`'s text as it is written
    /// ([`Synthesizer::synthesize_streamed`]); by default it does not, and gets whole sentences.
    fn streams_text(&self, req: &SynthesisRequest) -> bool {
        let _ = req;
        false
    }

    /// Start one upstream synthesis whose text (`req.text` is ignored) arrives on `text`;
    /// dropping the sender ends the text. Resolves at once: every failure, a refused request
    /// included, comes on the stream. Only called when [`Synthesizer::streams_text`] said yes.
    async fn synthesize_streamed(
        &self,
        req: SynthesisRequest,
        text: mpsc::Receiver<TextIn>,
    ) -> Result<StreamedSynth, EngineError> {
        let _ = (req, text);
        Err(EngineError::Protocol(format!(
            "{} does not take streamed text",
            self.name()
        )))
    }
}

/// The configured engines, looked up by model name.
#[derive(Clone, Default)]
pub struct Engines {
    engines: Vec<Arc<dyn Synthesizer>>,
}

impl std::fmt::Debug for Engines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.engines.iter().map(|e| e.name()))
            .finish()
    }
}

impl Engines {
    /// A registry over `engines`; the first engine serving a model wins.
    pub fn new(engines: Vec<Arc<dyn Synthesizer>>) -> Self {
        Self { engines }
    }

    /// The engine serving `model`, if any.
    pub fn for_model(&self, model: &str) -> Option<&Arc<dyn Synthesizer>> {
        self.engines.iter().find(|e| e.serves_model(model))
    }

    /// Every configured engine.
    pub fn all(&self) -> &[Arc<dyn Synthesizer>] {
        &self.engines
    }
}
