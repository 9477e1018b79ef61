//! The local, offline engine: one `espeak-ng` subprocess per synthesis call.
//!
//! This module owns the engine: it lists the installed voices once at start ([`Espeak::new`],
//! parsed in `voices`), checks requests, and starts one run per request. `run` owns each
//! `espeak-ng --stdout --stdin` child: it writes the text to the child's stdin and streams the
//! child's stdout (a RIFF/WAVE byte stream, 16-bit mono at [`SAMPLE_RATE`]) as
//! [`SynthEvent::Audio`](super::SynthEvent::Audio) events while it arrives. Each run is bounded by
//! [`EspeakConfig::timeout`], and dropping the stream kills the child at once and reaps it.
//!
//! It must not: pass the text on the command line (the text goes through stdin, so there is no
//! length limit and no option injection), parse or rewrite the audio (the pipeline decodes the
//! WAV and never trusts its size fields: `espeak-ng` writes `0x7ffff000` placeholders when its
//! output is not a seekable file), apply volume (the pipeline does), block a tokio worker, or
//! outlive its stream (no child process survives the [`SynthStream`] that owns it).

mod run;
mod voices;

use std::{collections::HashMap, path::PathBuf, process::Stdio, sync::Arc, time::Duration};

use tokio::{process::Command, sync::Semaphore, time::timeout};

use self::{
    run::{Run, excerpt},
    voices::parse_voices,
};
use super::{EngineError, Refused, SynthStream, SynthesisRequest, Synthesizer, VoiceInfo};

/// The model name this engine serves.
pub const MODEL: &str = "espeak-ng";

/// The engine name (config, logs, `AudioInfo.engine`).
pub const NAME: &str = "espeak-ng";

/// The rate of every `espeak-ng` voice, in Hz (the `--stdout` WAV header says 22050).
pub const SAMPLE_RATE: u32 = 22_050;

/// How long `espeak-ng --voices` may take at start.
const VOICES_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings of the local engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EspeakConfig {
    /// The `espeak-ng` executable: a path, or a name looked up in `PATH`.
    pub binary: PathBuf,
    /// The voice used when a request names none: a voice name from the list, or a language
    /// `espeak-ng -v` accepts that some voice lists (e.g. `en`).
    pub default_voice: String,
    /// Upper bound on the time one run spends waiting on espeak-ng (the child is killed past
    /// it). Time the consumer takes between reads is not counted.
    pub timeout: Duration,
    /// Most `espeak-ng` processes at once (`espeak.max_processes`); one more is refused.
    pub max_processes: usize,
}

impl Default for EspeakConfig {
    fn default() -> Self {
        Self {
            binary: PathBuf::from("espeak-ng"),
            default_voice: "en".to_owned(),
            timeout: Duration::from_secs(60),
            max_processes: 16,
        }
    }
}

/// The `espeak-ng` engine. Cheap to share: it holds only the config and the voice list read at
/// start.
#[derive(Debug)]
pub struct Espeak {
    config: EspeakConfig,
    voices: Vec<VoiceInfo>,
    /// Every accepted request voice → the `-v` argument to pass. Voice names map to the voice's
    /// file (the one argument `espeak-ng` always resolves to that exact voice); languages listed
    /// only in "Other Languages" (`en`, `zh`, `fr`, ...) map to themselves, and `espeak-ng`
    /// picks the voice with the best priority for them.
    voice_args: HashMap<String, String>,
    /// One permit per running child (`espeak.max_processes`).
    processes: Arc<Semaphore>,
    /// Voice variants (`espeak-ng --voices=variant`: `f3`, `whisper`, `Alex`, ...), reachable as
    /// `VOICE+VARIANT` (`en+f3`).
    variants: std::collections::HashSet<String>,
}

// === impl Espeak ===

impl Espeak {
    /// Lists the installed voices (`<binary> --voices`, bounded to a few seconds) and checks that
    /// the default voice is one of them.
    ///
    /// Errors with [`EngineError::Unavailable`] when the binary cannot be run, fails, or lists
    /// no voice, or when the default voice is unknown.
    pub async fn new(config: EspeakConfig) -> Result<Self, EngineError> {
        let binary = config.binary.display().to_string();
        let unavailable = |reason: String| EngineError::Unavailable {
            engine: NAME,
            reason,
        };
        let output = Command::new(&config.binary)
            .arg("--voices")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = timeout(VOICES_TIMEOUT, output)
            .await
            .map_err(|_| {
                unavailable(format!(
                    "`{binary} --voices` did not finish within {VOICES_TIMEOUT:?}"
                ))
            })?
            .map_err(|e| unavailable(format!("cannot run `{binary}`: {e}")))?;
        if !output.status.success() {
            return Err(unavailable(format!(
                "`{binary} --voices` failed ({}): {}",
                output.status,
                excerpt(&output.stderr, false)
            )));
        }
        let (voices, voice_args) = parse_voices(&String::from_utf8_lossy(&output.stdout));
        if voices.is_empty() {
            return Err(unavailable(format!("`{binary} --voices` listed no voice")));
        }
        if !voice_args.contains_key(&config.default_voice) {
            return Err(unavailable(format!(
                "the default voice {:?} is not a voice or language of `{binary} --voices`",
                config.default_voice
            )));
        }
        let variants = list_variants(&config.binary).await;
        tracing::debug!(binary = %binary, voices = voices.len(), variants = variants.len(), "espeak-ng ready");
        Ok(Self {
            processes: Arc::new(Semaphore::new(config.max_processes.max(1))),
            config,
            voices,
            voice_args,
            variants,
        })
    }

    /// The `-v` argument for a request voice: a listed voice or language, optionally with
    /// `+VARIANT`.
    fn voice_arg(&self, voice: &str) -> Option<String> {
        if let Some(arg) = self.voice_args.get(voice) {
            return Some(arg.clone());
        }
        let (base, variant) = voice.split_once('+')?;
        let arg = self.voice_args.get(base)?;
        self.variants
            .contains(variant)
            .then(|| format!("{arg}+{variant}"))
    }
}

/// The variant names of `binary --voices=variant` (the file column's `!v/NAME`); empty when it
/// cannot be listed (variants are then refused, voices still work).
async fn list_variants(binary: &std::path::Path) -> std::collections::HashSet<String> {
    let output = Command::new(binary)
        .arg("--voices=variant")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let Ok(Ok(output)) = timeout(VOICES_TIMEOUT, output).await else {
        return Default::default();
    };
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            line.split_whitespace()
                .find_map(|field| field.strip_prefix("!v/"))
                .map(str::to_owned)
        })
        .collect()
}

#[async_trait::async_trait]
impl Synthesizer for Espeak {
    fn name(&self) -> &'static str {
        NAME
    }

    fn serves_model(&self, model: &str) -> bool {
        model == MODEL
    }

    fn default_voice(&self, _model: &str) -> String {
        self.config.default_voice.clone()
    }

    fn voices(&self) -> Vec<VoiceInfo> {
        self.voices.clone()
    }

    fn native_sample_rate(&self, _model: &str, _voice: &str) -> u32 {
        SAMPLE_RATE
    }

    /// Accepts the listed voice names and the languages some voice lists (`en`, `zh`, ...),
    /// each optionally with `+VARIANT` (`en+f3`, `de+whisper`): the forms `espeak-ng -v`
    /// resolves. Exact, case-sensitive match.
    fn check_voice(&self, model: &str, voice: &str) -> Result<(), Refused> {
        if !self.serves_model(model) {
            return Err(Refused(format!("model {model:?} is not served by {NAME}")));
        }
        if self.voice_arg(voice).is_some() {
            Ok(())
        } else if let Some((base, variant)) = voice.split_once('+')
            && self.voice_args.contains_key(base)
        {
            Err(Refused(format!(
                "voice {:?}: {:?} is not a variant of `espeak-ng --voices=variant` \
                 (such as f3, m2, whisper, Alex)",
                voice.chars().take(64).collect::<String>(),
                variant.chars().take(64).collect::<String>()
            )))
        } else {
            Err(Refused(format!(
                "voice {:?} is not a voice or language of model {MODEL:?}, optionally with \
                 +VARIANT (see ListVoices)",
                voice.chars().take(64).collect::<String>()
            )))
        }
    }

    /// espeak-ng has no emotions, seeds, dictionaries, instruction rewriting, speakers or word
    /// timings: asking for them is an error rather than a silent loss. `language` chooses the
    /// voice when the request names none (`crate::synthesis`); with a named voice, the voice's
    /// language wins. `instructions` are ignored, as the proto documents.
    fn check_request(&self, req: &SynthesisRequest) -> Result<(), Refused> {
        let refuse = |field: &str| {
            Err(Refused(format!(
                "{field}: model {MODEL:?} does not take it"
            )))
        };
        if req.emotion.is_some() {
            return refuse("emotion");
        }
        if req.seed.is_some() {
            return refuse("seed");
        }
        if !req.pronunciations.is_empty() {
            return refuse("pronunciations");
        }
        if !req.replacements.is_empty() {
            return refuse("replacements");
        }
        if req.optimize_instructions {
            return refuse("optimize_instructions");
        }
        if req.word_timestamps {
            return refuse("word_timestamps");
        }
        if req.speaker.is_some() {
            return refuse("speaker");
        }
        Ok(())
    }

    async fn synthesize(&self, req: SynthesisRequest) -> Result<SynthStream, EngineError> {
        // Voices are validated before the call; this guards the `-v` argument regardless.
        let Some(voice_arg) = self.voice_arg(&req.voice) else {
            return Err(EngineError::Failed {
                engine: NAME,
                reason: format!("unknown voice {:?}", req.voice),
            });
        };
        // Refused at once rather than queued: a child lives as long as its reader reads (real
        // time for playback), so a queue would have no useful bound; RESOURCE_EXHAUSTED tells
        // the client to retry, and the fallback chain to try its next step.
        let permit = Arc::clone(&self.processes)
            .try_acquire_owned()
            .map_err(|_| EngineError::Busy {
                engine: NAME,
                setting: "espeak.max_processes",
                limit: self.config.max_processes,
            })?;
        Ok(Run::spawn(
            &self.config.binary,
            self.config.timeout,
            &req,
            &voice_arg,
            Some(permit),
        )?
        .into_stream())
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use tokio::time::Instant;

    use super::*;
    use crate::{
        audio::{InputEncoding, wav},
        engine::SynthEvent,
    };

    pub(super) const PHRASE: &str = "Hello world, this is herald.";

    pub(super) fn request(text: &str, voice: &str, speed: f32) -> SynthesisRequest {
        SynthesisRequest {
            text: text.to_owned(),
            voice: voice.to_owned(),
            model: MODEL.to_owned(),
            language: None,
            instructions: None,
            speed,
            pitch: 1.0,
            request_id: "test".to_owned(),
            ..SynthesisRequest::default()
        }
    }

    #[tokio::test]
    async fn processes_past_max_processes_are_refused_naming_the_setting() {
        let engine = Espeak::new(EspeakConfig {
            max_processes: 1,
            ..EspeakConfig::default()
        })
        .await
        .expect("espeak-ng is installed");
        let held = engine
            .synthesize(request(&PHRASE.repeat(50), "en", 1.0))
            .await
            .expect("the first runs");
        let Err(e) = engine.synthesize(request(PHRASE, "en", 1.0)).await else {
            panic!("a second process ran past max_processes = 1");
        };
        let e = e.classify();
        assert_eq!(e.kind(), crate::error::ErrorKind::ResourceExhausted);
        assert!(
            e.message()
                .starts_with("espeak.max_processes: 1 espeak-ng processes"),
            "{}",
            e.message()
        );
        // The slot comes back once the first child is reaped.
        drop(held);
        for _ in 0..200 {
            if let Ok(stream) = engine.synthesize(request(PHRASE, "en", 1.0)).await {
                drop(stream);
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the process slot never came back");
    }

    async fn engine() -> Espeak {
        Espeak::new(EspeakConfig::default())
            .await
            .expect("espeak-ng is installed")
    }

    /// Collects a whole stream: the audio bytes, and the final event or error.
    pub(super) async fn collect(
        mut stream: SynthStream,
    ) -> (Vec<u8>, usize, Result<SynthEvent, EngineError>) {
        let mut audio = Vec::new();
        let mut events = 0;
        while let Some(item) = stream.next().await {
            match item {
                Ok(SynthEvent::Audio { encoding, data }) => {
                    assert_eq!(encoding, InputEncoding::Wav);
                    assert!(!data.is_empty());
                    audio.extend_from_slice(&data);
                    events += 1;
                }
                last => {
                    assert!(
                        stream.next().await.is_none(),
                        "nothing after the last event"
                    );
                    return (audio, events, last);
                }
            }
        }
        panic!("the stream ended without Finished or an error");
    }

    struct Wav {
        rate: u32,
        samples: Vec<i16>,
    }

    impl Wav {
        fn seconds(&self) -> f64 {
            self.samples.len() as f64 / f64::from(self.rate)
        }

        fn rms(&self) -> f64 {
            let sum: f64 = self
                .samples
                .iter()
                .map(|&s| (f64::from(s) / 32768.0).powi(2))
                .sum();
            (sum / self.samples.len() as f64).sqrt()
        }
    }

    /// Checks espeak-ng's 44-byte header (PCM, mono, 16-bit) and returns the samples.
    fn parse_wav(bytes: &[u8]) -> Wav {
        let (spec, offset) = wav::s16_header(bytes)
            .expect("a 16-bit PCM WAV header")
            .expect("a whole header");
        assert_eq!(spec.channels, 1, "mono");
        assert_eq!(offset, wav::HEADER_LEN, "a plain 44-byte header");
        assert!(bytes.len() > offset, "{} bytes", bytes.len());
        let samples = bytes[offset..]
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect();
        Wav {
            rate: spec.sample_rate,
            samples,
        }
    }

    #[tokio::test]
    async fn lists_the_installed_voices() {
        let espeak = engine().await;
        let voices = espeak.voices();
        assert!(voices.len() > 50, "{} voices", voices.len());
        let voice = |name: &str| {
            voices
                .iter()
                .find(|v| v.name == name)
                .unwrap_or_else(|| panic!("no voice {name}"))
        };
        assert_eq!(voice("en-gb").languages, ["en-gb", "en"]);
        assert_eq!(voice("en-us").display_name, "English (America)");
        assert_eq!(voice("de").languages, ["de"]);
        assert!(voice("cmn").languages.contains(&"zh".to_owned()));
        for v in &voices {
            assert_eq!(v.model, MODEL);
            assert_eq!(v.native_sample_rate, SAMPLE_RATE);
            assert!(!v.languages.is_empty());
            assert!(!v.display_name.is_empty() && !v.display_name.contains('_'));
        }
        let mut names: Vec<&str> = voices.iter().map(|v| v.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), voices.len(), "voice names are unique");

        assert_eq!(espeak.default_voice(MODEL), "en");
        assert!(espeak.serves_model(MODEL) && !espeak.serves_model("cosyvoice-v2"));
        for ok in [
            "en",
            "en-gb",
            "en-us",
            "de",
            "zh",
            "cmn",
            "chr-US-Qaaa-x-west",
        ] {
            assert_eq!(espeak.check_voice(MODEL, ok), Ok(()), "{ok}");
        }
        assert!(espeak.check_voice(MODEL, "klingon").is_err());
        assert!(espeak.check_voice(MODEL, "EN-GB").is_err());
        assert!(espeak.check_voice("cosyvoice-v2", "en").is_err());
    }

    #[tokio::test]
    async fn every_voice_name_synthesizes() {
        // The `-v` argument for each name (its file) is one espeak-ng resolves; a few samples.
        let espeak = engine().await;
        for voice in ["en", "chr-US-Qaaa-x-west", "yue-latn-jyutping", "zh", "de"] {
            let stream = espeak.synthesize(request("one two", voice, 1.0)).await;
            let (audio, _, last) = collect(stream.unwrap()).await;
            assert!(
                matches!(last, Ok(SynthEvent::Finished { .. })),
                "{voice}: {last:?}"
            );
            assert!(parse_wav(&audio).seconds() > 0.2, "{voice}");
        }
    }

    #[tokio::test]
    async fn synthesizes_a_phrase() {
        let espeak = engine().await;
        let start = Instant::now();
        let mut stream = espeak.synthesize(request(PHRASE, "en", 1.0)).await.unwrap();
        let spawned = start.elapsed();
        let first = stream.next().await.unwrap().unwrap();
        let first_audio = start.elapsed();
        let (rest, events, last) = collect(stream).await;
        let total = start.elapsed();

        let SynthEvent::Audio { data, .. } = first else {
            panic!("first event is not audio: {first:?}");
        };
        let mut audio = data.to_vec();
        audio.extend_from_slice(&rest);
        let wav = parse_wav(&audio);
        // espeak-ng cannot seek a pipe, so its size fields stay placeholders.
        let riff_size = u32::from_le_bytes(audio[4..8].try_into().unwrap());
        let data_size = u32::from_le_bytes(audio[40..44].try_into().unwrap());
        eprintln!(
            "phrase: {:.2} s of audio, {} bytes in {} events, rms {:.3}; spawn {spawned:?}, \
             first audio {first_audio:?}, total {total:?}; header sizes riff {riff_size:#x} \
             data {data_size:#x}",
            wav.seconds(),
            audio.len(),
            events + 1,
            wav.rms()
        );
        assert_eq!(wav.rate, 22_050);
        assert!((0.8..=5.0).contains(&wav.seconds()), "{} s", wav.seconds());
        assert!(wav.rms() > 0.02, "rms {}", wav.rms());
        assert_eq!(
            last.unwrap(),
            SynthEvent::Finished {
                characters: Some(PHRASE.chars().count() as u32),
                upstream_request_ids: vec![],
            }
        );
    }

    #[tokio::test]
    async fn speed_changes_the_duration() {
        let espeak = engine().await;
        let mut seconds = Vec::new();
        for speed in [2.0, 0.5] {
            let stream = espeak.synthesize(request(PHRASE, "en", speed)).await;
            let (audio, _, last) = collect(stream.unwrap()).await;
            assert!(last.is_ok(), "{last:?}");
            seconds.push(parse_wav(&audio).seconds());
        }
        eprintln!(
            "speed 2.0: {:.2} s, speed 0.5: {:.2} s",
            seconds[0], seconds[1]
        );
        assert!(seconds[0] * 2.5 < seconds[1], "{seconds:?}");
    }

    #[tokio::test]
    async fn text_is_never_an_option() {
        // On the command line this would print the version instead of speaking.
        let espeak = engine().await;
        let stream = espeak.synthesize(request("--version", "en", 1.0)).await;
        let (audio, _, last) = collect(stream.unwrap()).await;
        assert!(last.is_ok(), "{last:?}");
        assert!(parse_wav(&audio).seconds() > 0.3);
    }

    #[tokio::test]
    async fn a_missing_binary_is_unavailable() {
        let config = EspeakConfig {
            binary: PathBuf::from("/nonexistent/espeak-ng-missing"),
            ..EspeakConfig::default()
        };
        match Espeak::new(config).await {
            Err(EngineError::Unavailable { engine, reason }) => {
                assert_eq!(engine, NAME);
                assert!(
                    reason.contains("/nonexistent/espeak-ng-missing"),
                    "{reason}"
                );
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_unknown_default_voice_is_an_error() {
        let config = EspeakConfig {
            default_voice: "klingon".to_owned(),
            ..EspeakConfig::default()
        };
        match Espeak::new(config).await {
            Err(EngineError::Unavailable { reason, .. }) => {
                assert!(reason.contains("klingon"), "{reason}")
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_unknown_voice_is_refused_before_spawning() {
        let espeak = engine().await;
        let result = espeak.synthesize(request(PHRASE, "klingon", 1.0)).await;
        assert!(matches!(result, Err(EngineError::Failed { .. })));
    }
}
