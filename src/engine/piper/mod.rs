//! The `piper` engine: Piper VITS voices (`NAME.onnx` + `NAME.onnx.json`) run in-process with
//! ONNX Runtime, offline.
//!
//! This module owns the engine: at start it finds the voices (`voice`) and, when there are any,
//! loads the ONNX Runtime library (`runtime`); each voice's model is loaded on its first request
//! and kept for the daemon's life. A request is cut into sentences; each sentence is
//! phonemized (`phonemes`: espeak-ng's process, never its GPL library) and synthesized by one
//! inference on tokio's blocking pool, bounded by [`PiperConfig::max_concurrent`], and its
//! audio goes out as soon as it is done ([`SynthEvent::Audio`] as raw 16-bit PCM, a
//! [`SynthEvent::Boundary`] between sentences), so the first audio follows the first sentence,
//! not the whole text. Dropping the stream stops before the next sentence.
//!
//! It must not block a tokio worker, download anything, or list voices it cannot run (no
//! runtime: no voices, and requests are refused naming the setting).

mod phonemes;
mod runtime;
mod voice;

use std::{collections::HashMap, path::PathBuf, sync::Arc};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{OnceCell, Semaphore};

use self::{runtime::Runtime, voice::Voice};
use super::{
    EngineError, Refused, SynthEvent, SynthStream, SynthesisRequest, Synthesizer, VoiceInfo,
};
use crate::audio::{AudioSpec, InputEncoding};

/// The model name this engine serves.
pub const MODEL: &str = "piper";

/// The engine name (config, logs, `AudioInfo.engine`).
pub const NAME: &str = "piper";

/// Peak level each sentence is normalized to (Piper normalizes every sentence to full scale;
/// herald leaves 1 dB of headroom so resampling and the gain stage do not clip).
const PEAK: f32 = 0.89;

/// Why the engine has no runtime when it found no voice (nothing to load it for).
const NO_VOICE: &str = "no voice is installed";

/// Settings of the piper engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PiperConfig {
    /// The ONNX Runtime library, when configured (`piper.onnxruntime`, else `ORT_DYLIB_PATH`);
    /// `None` = the system locations.
    pub onnxruntime: Option<PathBuf>,
    /// Which setting `onnxruntime` came from, for messages.
    pub onnxruntime_setting: &'static str,
    /// Directories holding voices, searched in order.
    pub voice_dirs: Vec<PathBuf>,
    /// The espeak-ng executable for phonemes.
    pub espeak_binary: PathBuf,
    /// The voice used when a request names none (`None` = the first voice by name).
    pub default_voice: Option<String>,
    /// Inferences running at once, across voices.
    pub max_concurrent: usize,
    /// ONNX Runtime intra-op threads per inference (0 = its default: one per core).
    pub threads: usize,
    /// Load the default voice's model at start (in the background) instead of on its first
    /// request.
    pub preload: bool,
}

impl Default for PiperConfig {
    fn default() -> Self {
        Self {
            onnxruntime: None,
            onnxruntime_setting: "piper.onnxruntime",
            voice_dirs: Vec::new(),
            espeak_binary: PathBuf::from("espeak-ng"),
            default_voice: None,
            max_concurrent: 2,
            threads: 0,
            preload: true,
        }
    }
}

/// A voice and its model, loaded on first use.
struct Slot {
    voice: Arc<Voice>,
    model: OnceCell<Arc<runtime::Model>>,
}

/// The piper engine.
pub struct Piper {
    config: PiperConfig,
    /// The runtime, or why there is none.
    runtime: Result<Arc<Runtime>, String>,
    /// Every usable voice by name (empty without a runtime).
    slots: HashMap<String, Arc<Slot>>,
    /// Voice names, sorted.
    names: Vec<String>,
    /// Bounds inferences running at once.
    pool: Arc<Semaphore>,
}

impl std::fmt::Debug for Piper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Piper")
            .field("runtime", &self.runtime)
            .field("voices", &self.names)
            .finish_non_exhaustive()
    }
}

// === impl Piper ===

impl Piper {
    /// Finds the voices and, when there are some, loads ONNX Runtime. Never fails: without a
    /// voice or a runtime the engine lists no voices and refuses requests saying why.
    pub async fn new(config: PiperConfig) -> Self {
        let dirs = config.voice_dirs.clone();
        let explicit = config.onnxruntime.clone();
        let (voices, runtime) = tokio::task::spawn_blocking(move || {
            let (voices, skipped) = voice::discover(&dirs);
            for s in skipped {
                tracing::warn!(path = %s.path.display(), reason = %s.reason, "piper voice skipped");
            }
            let runtime = if voices.is_empty() {
                Err(NO_VOICE.to_owned())
            } else {
                Runtime::shared(explicit.as_deref())
            };
            (voices, runtime)
        })
        .await
        .unwrap_or_else(|e| (Vec::new(), Err(format!("voice discovery panicked: {e}"))));
        let runtime = runtime.map_err(|why| {
            if voices.is_empty() {
                why
            } else {
                let setting = config.onnxruntime_setting;
                let reason = format!(
                    "no usable ONNX Runtime library ({why}); install one (Debian: libonnxruntime, \
                     or the onnxruntime wheel from PyPI) and set {setting} to its \
                     libonnxruntime.so"
                );
                tracing::warn!(%reason, "piper voices are installed but cannot run");
                reason
            }
        });
        let slots: HashMap<String, Arc<Slot>> = if runtime.is_ok() {
            voices
                .into_iter()
                .map(|v| {
                    let slot = Slot {
                        voice: Arc::new(v),
                        model: OnceCell::new(),
                    };
                    (slot.voice.name.clone(), Arc::new(slot))
                })
                .collect()
        } else {
            HashMap::new()
        };
        let mut names: Vec<String> = slots.keys().cloned().collect();
        names.sort();
        if let Ok(rt) = &runtime {
            tracing::info!(library = %rt.library.display(), voices = names.len(), "piper ready");
        }
        let pool = Arc::new(Semaphore::new(config.max_concurrent.max(1)));
        Self {
            config,
            runtime,
            slots,
            names,
            pool,
        }
    }

    /// The voice's model, loading it on first use (once, shared by concurrent first requests).
    async fn model(&self, slot: &Arc<Slot>) -> Result<Arc<runtime::Model>, EngineError> {
        match &self.runtime {
            Ok(rt) => load_model(Arc::clone(rt), Arc::clone(slot), self.config.threads).await,
            Err(reason) => Err(EngineError::Unavailable {
                engine: NAME,
                reason: reason.clone(),
            }),
        }
    }

    /// Why a request for `voice` cannot be served.
    fn unusable(&self, voice: &str) -> Refused {
        match &self.runtime {
            Err(reason) if reason == NO_VOICE => Refused(format!(
                "voice {voice:?}: no Piper voice is installed; put NAME.onnx and NAME.onnx.json \
                 in one of the piper.voices directories ({}; env HERALD_PIPER_VOICES)",
                self.dirs()
            )),
            Err(reason) => Refused(format!("model {MODEL:?}: {reason}")),
            Ok(_) => Refused(format!(
                "voice {voice:?} is not a voice of model {MODEL:?} (see ListVoices)"
            )),
        }
    }

    fn dirs(&self) -> String {
        self.config
            .voice_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// The speaker id `speaker` names in `voice` (a name of its speaker map or a number below
    /// its speaker count).
    fn speaker_id(voice: &Voice, speaker: &str) -> Result<i64, Refused> {
        if voice.num_speakers <= 1 {
            return Err(Refused(format!(
                "speaker: voice {:?} has a single speaker",
                voice.name
            )));
        }
        if let Some(id) = voice.speakers.get(speaker) {
            return Ok(i64::from(*id));
        }
        match speaker.parse::<u32>() {
            Ok(id) if id < voice.num_speakers => Ok(i64::from(id)),
            _ => Err(Refused(format!(
                "speaker: {speaker:?} is not a speaker of voice {:?} (a name of its \
                 speaker_id_map or a number 0..{})",
                voice.name, voice.num_speakers
            ))),
        }
    }
}

/// `slot`'s model, loaded once on the blocking pool (concurrent callers share the load).
async fn load_model(
    runtime: Arc<Runtime>,
    slot: Arc<Slot>,
    threads: usize,
) -> Result<Arc<runtime::Model>, EngineError> {
    slot.model
        .get_or_try_init(|| {
            let path = slot.voice.model.clone();
            async move {
                tokio::task::spawn_blocking(move || runtime.session(&path, threads))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r)
                    .map(Arc::new)
                    .map_err(|reason| EngineError::Failed {
                        engine: NAME,
                        reason,
                    })
            }
        })
        .await
        .cloned()
}

/// Whether `voice` speaks `language` (a BCP-47 tag; the primary subtags must match, and the
/// region too when both give one).
pub fn speaks(voice_language: &str, language: &str) -> bool {
    let norm = |t: &str| t.replace('_', "-").to_ascii_lowercase();
    let (v, l) = (norm(voice_language), norm(language));
    let mut vi = v.split('-');
    let mut li = l.split('-');
    if vi.next() != li.next() {
        return false;
    }
    match (vi.next(), li.next()) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

#[async_trait::async_trait]
impl Synthesizer for Piper {
    fn name(&self) -> &'static str {
        NAME
    }

    fn serves_model(&self, model: &str) -> bool {
        model == MODEL
    }

    fn default_voice(&self, _model: &str) -> String {
        self.config
            .default_voice
            .clone()
            .filter(|v| self.slots.contains_key(v))
            .or_else(|| self.names.first().cloned())
            .unwrap_or_default()
    }

    fn voices(&self) -> Vec<VoiceInfo> {
        self.names
            .iter()
            .map(|name| {
                let v = &self.slots[name].voice;
                let primary = v.language.split('-').next().unwrap_or("").to_owned();
                let mut languages = vec![v.language.clone()];
                if primary != v.language && !primary.is_empty() {
                    languages.push(primary);
                }
                let speaker = name.split('-').nth(1).unwrap_or(name);
                let quality = name.rsplit('-').next().unwrap_or("");
                VoiceInfo {
                    name: name.clone(),
                    display_name: format!("{speaker} ({}, {quality})", v.language),
                    languages,
                    gender: String::new(),
                    model: MODEL.to_owned(),
                    native_sample_rate: v.sample_rate,
                }
            })
            .collect()
    }

    fn native_sample_rate(&self, _model: &str, voice: &str) -> u32 {
        self.slots
            .get(voice)
            .map_or(22_050, |s| s.voice.sample_rate)
    }

    /// The default voice's model loads in the background (`piper.preload`), so that the first
    /// request (a fallback when the cloud goes down, say) does not wait for it.
    fn serving(&self) {
        if !self.config.preload {
            return;
        }
        let (Ok(rt), Some(slot)) = (&self.runtime, self.slots.get(&self.default_voice(MODEL)))
        else {
            return;
        };
        let (rt, slot, threads) = (Arc::clone(rt), Arc::clone(slot), self.config.threads);
        tokio::spawn(async move {
            let name = slot.voice.name.clone();
            match load_model(rt, slot, threads).await {
                Ok(_) => tracing::debug!(voice = %name, "piper voice preloaded"),
                Err(e) => tracing::warn!(voice = %name, error = %e, "piper voice did not load"),
            }
        });
    }

    fn check_voice(&self, model: &str, voice: &str) -> Result<(), Refused> {
        if !self.serves_model(model) {
            return Err(Refused(format!("model {model:?} is not served by {NAME}")));
        }
        if self.slots.contains_key(voice) {
            Ok(())
        } else {
            Err(self.unusable(voice))
        }
    }

    /// Piper voices have one language, no pitch control, emotions, seeds, dictionaries,
    /// instructions or word timings: asking for them is an error rather than a silent loss.
    fn check_request(&self, req: &SynthesisRequest) -> Result<(), Refused> {
        let refuse = |field: &str, why: &str| Err(Refused(format!("{field}: {why}")));
        let not_taken = format!("model {MODEL:?} does not take it");
        if req.emotion.is_some() {
            return refuse("emotion", &not_taken);
        }
        if req.seed.is_some() {
            return refuse("seed", &not_taken);
        }
        if !req.pronunciations.is_empty() {
            return refuse("pronunciations", &not_taken);
        }
        if !req.replacements.is_empty() {
            return refuse("replacements", &not_taken);
        }
        if req.instructions.is_some() {
            return refuse("instructions", &not_taken);
        }
        if req.optimize_instructions {
            return refuse("optimize_instructions", &not_taken);
        }
        if req.word_timestamps {
            return refuse(
                "word_timestamps",
                "Piper voices give no word timings in herald yet (the cloud models \
                 cosyvoice-* and qwen-audio-tts do)",
            );
        }
        if (req.pitch - 1.0).abs() > f32::EPSILON {
            return refuse(
                "pitch",
                &format!("model {MODEL:?} takes only 1.0 (Piper voices have no pitch control)"),
            );
        }
        let Some(slot) = self.slots.get(&req.voice) else {
            return Err(self.unusable(&req.voice));
        };
        if let Some(language) = &req.language
            && !speaks(&slot.voice.language, language)
        {
            return refuse(
                "language",
                &format!(
                    "voice {:?} speaks {}, not {language:?}",
                    slot.voice.name, slot.voice.language
                ),
            );
        }
        if let Some(speaker) = &req.speaker {
            Self::speaker_id(&slot.voice, speaker)?;
        }
        Ok(())
    }

    async fn synthesize(&self, req: SynthesisRequest) -> Result<SynthStream, EngineError> {
        let Some(slot) = self.slots.get(&req.voice).cloned() else {
            return Err(EngineError::Failed {
                engine: NAME,
                reason: format!("unknown voice {:?}", req.voice),
            });
        };
        let sid = match &req.speaker {
            Some(s) => Some(
                Self::speaker_id(&slot.voice, s).map_err(|r| EngineError::Failed {
                    engine: NAME,
                    reason: r.0,
                })?,
            ),
            None => None,
        };
        let sentences = phonemes::sentences(&req.text);
        if sentences.is_empty() {
            return Err(EngineError::NothingToSay);
        }
        let model = self.model(&slot).await?;
        let voice = Arc::clone(&slot.voice);
        let mut scales = voice.scales;
        if req.speed > 0.0 {
            scales[1] /= req.speed;
        }
        let job = Job {
            voice,
            model,
            scales,
            sid,
            binary: self.config.espeak_binary.clone(),
            pool: Arc::clone(&self.pool),
            request_id: req.request_id.clone(),
        };
        let characters = u32::try_from(req.text.chars().count()).unwrap_or(u32::MAX);
        let job = Arc::new(job);
        let sentence_events = futures::stream::iter(sentences.into_iter().enumerate())
            .then(move |(i, sentence)| {
                let job = Arc::clone(&job);
                async move { job.sentence(i, sentence).await }
            })
            .filter_map(|r| async move {
                match r {
                    Ok(None) => None,
                    Ok(Some(events)) => Some(Ok(events)),
                    Err(e) => Some(Err(e)),
                }
            });
        // A boundary between sentences (never before the first audio), then the audio.
        let mut first = true;
        let events = sentence_events
            .flat_map(move |r| {
                let items: Vec<Result<SynthEvent, EngineError>> = match r {
                    Ok(audio) => {
                        let mut v = Vec::with_capacity(2);
                        if !first {
                            v.push(Ok(SynthEvent::Boundary));
                        }
                        first = false;
                        v.push(Ok(audio));
                        v
                    }
                    Err(e) => vec![Err(e)],
                };
                futures::stream::iter(items)
            })
            .chain(futures::stream::once(async move {
                Ok(SynthEvent::Finished {
                    characters: Some(characters),
                    upstream_request_ids: Vec::new(),
                })
            }));
        // Stop at the first error.
        let mut failed = false;
        let events = events.take_while(move |r| {
            let go = !failed;
            failed |= r.is_err();
            async move { go }
        });
        Ok(events.boxed())
    }
}

/// What every sentence of one request shares.
struct Job {
    voice: Arc<Voice>,
    model: Arc<runtime::Model>,
    scales: [f32; 3],
    sid: Option<i64>,
    binary: PathBuf,
    pool: Arc<Semaphore>,
    request_id: String,
}

impl Job {
    /// One sentence's audio event (`None` when it has no phoneme to say).
    async fn sentence(
        &self,
        index: usize,
        sentence: phonemes::Sentence,
    ) -> Result<Option<SynthEvent>, EngineError> {
        let ipa = phonemes::phonemize(&self.binary, &self.voice.espeak_voice, &sentence).await?;
        let (ids, dropped) = phonemes::to_ids(&self.voice, &ipa);
        if dropped > 0 {
            tracing::debug!(request_id = %self.request_id, sentence = index, dropped, "phonemes the voice does not know were dropped");
        }
        if ids.len() <= 3 {
            return Ok(None);
        }
        let _permit =
            Arc::clone(&self.pool)
                .acquire_owned()
                .await
                .map_err(|_| EngineError::Failed {
                    engine: NAME,
                    reason: "the inference pool is closed".to_owned(),
                })?;
        let model = Arc::clone(&self.model);
        let (scales, sid) = (self.scales, self.sid);
        let samples = tokio::task::spawn_blocking(move || model.infer(&ids, scales, sid))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r)
            .map_err(|reason| EngineError::Failed {
                engine: NAME,
                reason,
            })?;
        if samples.is_empty() {
            return Ok(None);
        }
        Ok(Some(SynthEvent::Audio {
            encoding: InputEncoding::Pcm16Le(AudioSpec {
                sample_rate: self.voice.sample_rate,
                channels: 1,
            }),
            data: Bytes::from(to_pcm16(&samples)),
        }))
    }
}

/// Float samples → 16-bit little-endian PCM, normalized to [`PEAK`] as Piper normalizes each
/// sentence.
fn to_pcm16(samples: &[f32]) -> Vec<u8> {
    let max = samples.iter().fold(0.0_f32, |m, s| m.max(s.abs()));
    let gain = if max < 1e-8 { 0.0 } else { PEAK / max };
    let mut out = Vec::with_capacity(samples.len() * 2);
    for s in samples {
        let v = (s * gain * 32767.0).round().clamp(-32767.0, 32767.0) as i16;
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn languages_match_by_primary_and_region() {
        assert!(speaks("en-US", "en"));
        assert!(speaks("en-US", "en-us"));
        assert!(speaks("en_US", "EN-US"));
        assert!(!speaks("en-US", "en-GB"));
        assert!(!speaks("en-US", "de"));
        assert!(speaks("de", "de-DE"));
    }

    #[test]
    fn normalizes_to_the_peak() {
        let pcm = to_pcm16(&[0.0, 0.5, -0.25]);
        let s: Vec<i16> = pcm
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(s[0], 0);
        assert_eq!(s[1], (PEAK * 32767.0).round() as i16);
        assert_eq!(s[2], -((PEAK * 32767.0 / 2.0).round() as i16));
        assert!(to_pcm16(&[0.0; 4]).iter().all(|&b| b == 0));
    }
}
