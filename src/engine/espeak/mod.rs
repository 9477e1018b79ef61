//! The local, offline engine: one `espeak-ng` subprocess per synthesis call.
//!
//! This module owns the `espeak-ng` child processes: it lists the installed voices once at start
//! ([`Espeak::new`]), spawns `espeak-ng --stdout --stdin` for each request, writes the text to the
//! child's stdin, and streams the child's stdout (a RIFF/WAVE byte stream, 16-bit mono at
//! [`SAMPLE_RATE`]) as [`SynthEvent::Audio`] events while it arrives. Each run is bounded by
//! [`EspeakConfig::timeout`], and dropping the stream kills the child at once and reaps it.
//!
//! It must not: pass the text on the command line (the text goes through stdin, so there is no
//! length limit and no option injection), parse or rewrite the audio (the pipeline decodes the
//! WAV and never trusts its size fields: `espeak-ng` writes `0x7ffff000` placeholders when its
//! output is not a seekable file), apply volume (the pipeline does), block a tokio worker, or
//! outlive its stream (no child process survives the [`SynthStream`] that owns it).

use std::{collections::HashMap, path::PathBuf, process::Stdio, time::Duration};

use bytes::BytesMut;
use futures::StreamExt;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    process::{Child, ChildStdout, Command},
    task::JoinHandle,
    time::{Instant, timeout},
};

use super::{EngineError, SynthEvent, SynthStream, SynthesisRequest, Synthesizer, VoiceInfo};
use crate::audio::InputEncoding;

/// The model name this engine serves.
pub const MODEL: &str = "espeak-ng";

/// The engine name (config, logs, `AudioInfo.engine`).
pub const NAME: &str = "espeak-ng";

/// The rate of every `espeak-ng` voice, in Hz (the `--stdout` WAV header says 22050).
pub const SAMPLE_RATE: u32 = 22_050;

/// `espeak-ng`'s default speaking rate, in words per minute (speed 1.0).
const BASE_WPM: f32 = 175.0;
/// Slowest and fastest rates `espeak-ng -s` accepts.
const MIN_WPM: f32 = 80.0;
const MAX_WPM: f32 = 450.0;
/// `espeak-ng`'s default pitch (pitch 1.0), and the range `-p` accepts.
const BASE_PITCH: f32 = 50.0;
const MAX_PITCH: f32 = 99.0;

/// How long `espeak-ng --voices` may take at start.
const VOICES_TIMEOUT: Duration = Duration::from_secs(5);
/// How much of the child's stderr is kept for error messages.
const STDERR_LIMIT: usize = 4 * 1024;
/// Room reserved for each stdout read; a read returns whatever the pipe holds (usually 4 KiB,
/// `espeak-ng`'s stdio buffer).
const READ_CHUNK: usize = 16 * 1024;
/// How long to wait for the stderr excerpt once the child has exited.
const STDERR_GRACE: Duration = Duration::from_millis(200);

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
}

impl Default for EspeakConfig {
    fn default() -> Self {
        Self {
            binary: PathBuf::from("espeak-ng"),
            default_voice: "en".to_owned(),
            timeout: Duration::from_secs(60),
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
        tracing::debug!(binary = %binary, voices = voices.len(), "espeak-ng ready");
        Ok(Self {
            config,
            voices,
            voice_args,
        })
    }

    /// Starts `espeak-ng` for `req` with `-v voice_arg`; the text is written to its stdin by a
    /// spawned task.
    fn spawn_run(&self, req: &SynthesisRequest, voice_arg: &str) -> Result<Run, EngineError> {
        let wpm = words_per_minute(req.speed);
        let pitch = pitch_value(req.pitch);
        let mut child = Command::new(&self.config.binary)
            .arg("--stdout")
            // Read the whole text from stdin. Without `--stdin` (and without a text argument)
            // espeak-ng also reads stdin, but line by line in 1000-byte pieces, which splits
            // long lines mid-word (or mid-character) and adds pauses there.
            .arg("--stdin")
            .args(["-b", "1"]) // the input is UTF-8
            .args(["-v", voice_arg])
            .args(["-s", &wpm.to_string()])
            .args(["-p", &pitch.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| EngineError::Unavailable {
                engine: NAME,
                reason: format!("cannot run `{}`: {e}", self.config.binary.display()),
            })?;
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            // Unreachable: all three were requested as pipes. `child` is killed on drop.
            return Err(EngineError::Failed {
                engine: NAME,
                reason: "the child's stdio pipes are missing".to_owned(),
            });
        };
        tracing::debug!(
            request_id = %req.request_id,
            pid = child.id(),
            voice = %voice_arg,
            wpm,
            pitch,
            chars = req.text.chars().count(),
            "espeak-ng started"
        );

        // Writing from a task, so that a text larger than the pipe buffer cannot deadlock
        // against a full stdout pipe. Dropping `stdin` at the end closes it (EOF for espeak-ng).
        let text = req.text.clone();
        let stdin_task = tokio::spawn(async move {
            let written = async {
                stdin.write_all(text.as_bytes()).await?;
                stdin.shutdown().await
            };
            if let Err(error) = written.await {
                // The child exited early (its exit status tells why) or was killed.
                tracing::debug!(%error, "writing the text to espeak-ng failed");
            }
        });
        let stderr_task = tokio::spawn(read_bounded(stderr));

        Ok(Run {
            child: Some(child),
            stdout,
            stdin_task: Some(stdin_task),
            stderr_task: Some(stderr_task),
            buf: BytesMut::new(),
            waited: Duration::ZERO,
            limit: self.config.timeout,
            characters: u32::try_from(req.text.chars().count()).unwrap_or(u32::MAX),
        })
    }
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

    /// Accepts the listed voice names and the languages some voice lists (`en`, `zh`, ...):
    /// the forms `espeak-ng -v` resolves. Exact, case-sensitive match.
    fn check_voice(&self, model: &str, voice: &str) -> Result<(), String> {
        if !self.serves_model(model) {
            return Err(format!("model {model:?} is not served by {NAME}"));
        }
        if self.voice_args.contains_key(voice) {
            Ok(())
        } else {
            Err(format!(
                "voice {voice:?} is not a voice or language of model {MODEL:?} (see ListVoices)"
            ))
        }
    }

    /// espeak-ng has no emotions, seeds, dictionaries, instruction rewriting or word timings: asking for them
    /// is an error rather than a silent loss. (`language` and `instructions` are hints it
    /// ignores, as the proto says.)
    fn check_request(&self, req: &SynthesisRequest) -> Result<(), String> {
        let refuse = |field: &str| Err(format!("{field}: model {MODEL:?} does not take it"));
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
        Ok(())
    }

    async fn synthesize(&self, req: SynthesisRequest) -> Result<SynthStream, EngineError> {
        // Voices are validated before the call; this guards the `-v` argument regardless.
        let Some(voice_arg) = self.voice_args.get(&req.voice) else {
            return Err(EngineError::Failed {
                engine: NAME,
                reason: format!("unknown voice {:?}", req.voice),
            });
        };
        Ok(self.spawn_run(&req, voice_arg)?.into_stream())
    }
}

// === impl Run ===

/// One running `espeak-ng` child and what reads from it. Owned by the stream: dropping it kills
/// the child.
struct Run {
    /// `Some` until `Drop` hands it to a reaper task.
    child: Option<Child>,
    stdout: ChildStdout,
    stdin_task: Option<JoinHandle<()>>,
    /// Yields the first [`STDERR_LIMIT`] bytes of stderr, as text, at the child's stderr EOF.
    stderr_task: Option<JoinHandle<String>>,
    buf: BytesMut,
    /// Time spent waiting on espeak-ng so far, bounded by `limit`. Time the consumer takes
    /// between reads does not count: a client reading at real time (back-pressure through the
    /// pipe) is never cut off, while a stuck espeak-ng is.
    waited: Duration,
    limit: Duration,
    characters: u32,
}

impl Run {
    /// The stream of this run: audio as it arrives, then `Finished` or one error.
    fn into_stream(self) -> SynthStream {
        futures::stream::unfold(Some(self), |state| async move {
            let mut run = state?;
            match run.next_event().await {
                Ok(event @ SynthEvent::Audio { .. }) => Some((Ok(event), Some(run))),
                // Terminal: `run` is dropped here (killing the child if it still runs), and the
                // next poll ends the stream.
                last => Some((last, None)),
            }
        })
        .boxed()
    }

    /// The next audio piece; at stdout EOF, the outcome given by the exit status.
    async fn next_event(&mut self) -> Result<SynthEvent, EngineError> {
        let budget = self.budget()?;
        self.buf.reserve(READ_CHUNK);
        let started = Instant::now();
        let read = timeout(budget, self.stdout.read_buf(&mut self.buf)).await;
        self.waited += started.elapsed();
        match read {
            Err(_) => Err(self.timed_out()),
            Ok(Err(e)) => Err(self.failed(format!("reading its output failed: {e}"))),
            Ok(Ok(0)) => self.finish().await,
            Ok(Ok(_)) => Ok(SynthEvent::Audio {
                encoding: InputEncoding::Wav,
                data: self.buf.split().freeze(),
            }),
        }
    }

    /// After stdout EOF: waits for the exit status and the stderr excerpt.
    async fn finish(&mut self) -> Result<SynthEvent, EngineError> {
        let Some(child) = self.child.as_mut() else {
            return Err(self.failed("the child is gone".to_owned()));
        };
        let budget = self.limit.saturating_sub(self.waited);
        let status = match timeout(budget, child.wait()).await {
            Err(_) => return Err(self.timed_out()),
            Ok(Err(e)) => return Err(self.failed(format!("waiting for it failed: {e}"))),
            Ok(Ok(status)) => status,
        };
        let stderr = match self.stderr_task.take() {
            Some(task) => match timeout(budget.max(STDERR_GRACE), task).await {
                Ok(Ok(text)) => text,
                Ok(Err(_)) | Err(_) => String::new(),
            },
            None => String::new(),
        };
        if status.success() {
            if !stderr.is_empty() {
                tracing::debug!(stderr = %stderr, "espeak-ng succeeded with messages");
            }
            Ok(SynthEvent::Finished {
                characters: Some(self.characters),
                upstream_request_ids: vec![],
            })
        } else if stderr.is_empty() {
            Err(self.failed(format!("{status}")))
        } else {
            Err(self.failed(format!("{status}: {stderr}")))
        }
    }

    /// What is left of the time bound, or `TimedOut` when nothing is.
    fn budget(&self) -> Result<Duration, EngineError> {
        let left = self.limit.saturating_sub(self.waited);
        if left.is_zero() {
            Err(self.timed_out())
        } else {
            Ok(left)
        }
    }

    fn timed_out(&self) -> EngineError {
        EngineError::TimedOut {
            engine: NAME,
            limit: self.limit,
        }
    }

    fn failed(&self, reason: String) -> EngineError {
        EngineError::Failed {
            engine: NAME,
            reason,
        }
    }

    /// The child's process id while it runs.
    #[cfg(test)]
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(task) = self.stdin_task.take() {
            task.abort();
        }
        if let Some(task) = self.stderr_task.take() {
            task.abort();
        }
        let Some(mut child) = self.child.take() else {
            return;
        };
        // `id()` is `None` once the exit status has been collected: nothing left to do.
        if child.id().is_none() {
            return;
        }
        // SIGKILL now, then reap in a task so no zombie lingers. Outside a runtime (or while it
        // shuts down), `kill_on_drop` and tokio's orphan queue do the same, best-effort.
        if let Err(error) = child.start_kill() {
            tracing::debug!(%error, "killing espeak-ng failed");
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = child.wait().await;
            });
        }
    }
}

// === helpers ===

/// `espeak-ng -s` for a speed multiplier: 175 wpm × speed, within 80..=450.
fn words_per_minute(speed: f32) -> u32 {
    let speed = if speed.is_finite() { speed } else { 1.0 };
    (BASE_WPM * speed).round().clamp(MIN_WPM, MAX_WPM) as u32
}

/// `espeak-ng -p` for a pitch multiplier: 50 × pitch, within 0..=99.
fn pitch_value(pitch: f32) -> u32 {
    let pitch = if pitch.is_finite() { pitch } else { 1.0 };
    (BASE_PITCH * pitch).round().clamp(0.0, MAX_PITCH) as u32
}

/// Reads `reader` to EOF, keeping the first [`STDERR_LIMIT`] bytes (it keeps draining, so the
/// child never blocks on a full stderr pipe). Returns them as trimmed text.
async fn read_bounded(mut reader: impl AsyncRead + Unpin) -> String {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = [0u8; 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = STDERR_LIMIT.saturating_sub(kept.len());
                truncated |= n > room;
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    excerpt(&kept, truncated)
}

/// `bytes` as trimmed, lossy UTF-8 text, with "…" when it was cut.
fn excerpt(bytes: &[u8], truncated: bool) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if truncated {
        format!("{text}…")
    } else {
        text.to_owned()
    }
}

/// Parses `espeak-ng --voices` output into the voice list and the accepted-voice map (see
/// [`Espeak::voice_args`]).
///
/// Columns: `Pty Language Age/Gender VoiceName File Other Languages`, e.g.
/// ` 5  cmn  --/M  Chinese_(Mandarin,_latin_as_English) sit/cmn  (zh-cmn 5)(zh 5)`. The columns
/// are not aligned when a name is long, so lines are split on whitespace (no column contains
/// spaces except "Other Languages", which is last). A Language already taken by an earlier voice
/// (`yue` is listed twice) names the later voice by its file instead (`yue-latn-jyutping`).
fn parse_voices(listing: &str) -> (Vec<VoiceInfo>, HashMap<String, String>) {
    let mut voices = Vec::new();
    let mut voice_args = HashMap::new();
    let mut aliases = Vec::new();
    for line in listing.lines() {
        let mut fields = line.split_whitespace();
        let (Some(priority), Some(language), Some(age_gender), Some(voice_name), Some(file)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        if priority.parse::<u32>().is_err() {
            continue; // the header line
        }
        let others = fields.collect::<Vec<_>>().join(" ");
        let file_stem = file.rsplit('/').next().unwrap_or(file).to_lowercase();
        let Some(name) = [language.to_owned(), file_stem, file.to_owned()]
            .into_iter()
            .find(|candidate| !voice_args.contains_key(candidate))
        else {
            continue;
        };
        voice_args.insert(name.clone(), file.to_owned());

        let mut languages = vec![language.to_owned()];
        // "(en-gb 3)(en 5)": a language tag and a priority per group.
        for group in others.split(['(', ')']) {
            if let Some(tag) = group.split_whitespace().next()
                && !languages.iter().any(|l| l == tag)
            {
                languages.push(tag.to_owned());
                aliases.push(tag.to_owned());
            }
        }
        let gender = match age_gender.rsplit('/').next() {
            Some("M") => "male",
            Some("F") => "female",
            _ => "",
        };
        voices.push(VoiceInfo {
            name,
            display_name: voice_name.replace('_', " ").trim().to_owned(),
            languages,
            gender: gender.to_owned(),
            model: MODEL.to_owned(),
            native_sample_rate: SAMPLE_RATE,
        });
    }
    // Languages that only appear under "Other Languages" are passed to `-v` as they are; voice
    // names win over them.
    for alias in aliases {
        voice_args.entry(alias.clone()).or_insert(alias);
    }
    (voices, voice_args)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PHRASE: &str = "Hello world, this is herald.";

    fn request(text: &str, voice: &str, speed: f32) -> SynthesisRequest {
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

    async fn engine() -> Espeak {
        Espeak::new(EspeakConfig::default())
            .await
            .expect("espeak-ng is installed")
    }

    /// Collects a whole stream: the audio bytes, and the final event or error.
    async fn collect(mut stream: SynthStream) -> (Vec<u8>, usize, Result<SynthEvent, EngineError>) {
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
        let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
        assert!(bytes.len() > 44, "{} bytes", bytes.len());
        assert_eq!(&bytes[0..4], b"RIFF");
        assert_eq!(&bytes[8..12], b"WAVE");
        assert_eq!(&bytes[12..16], b"fmt ");
        assert_eq!(u32_at(16), 16, "fmt chunk size");
        assert_eq!(u16_at(20), 1, "PCM");
        assert_eq!(u16_at(22), 1, "mono");
        assert_eq!(u16_at(34), 16, "bits per sample");
        assert_eq!(&bytes[36..40], b"data");
        let samples = bytes[44..]
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect();
        Wav {
            rate: u32_at(24),
            samples,
        }
    }

    fn long_text(min_chars: usize) -> String {
        let sentence = "The quick brown fox jumps over the lazy dog, again and again. ";
        sentence.repeat(min_chars / sentence.len() + 1)
    }

    /// Whether `pid` still exists, and its state letter (`Z` for a zombie).
    fn process_state(pid: u32) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // "pid (comm) S ppid ...": the state follows the last ')'.
        stat.rsplit(')')
            .next()?
            .split_whitespace()
            .next()?
            .chars()
            .next()
    }

    #[test]
    fn parses_a_captured_listing() {
        let listing = "\
Pty Language       Age/Gender VoiceName          File                 Other Languages
 5  af              --/M      Afrikaans          gmw/af               
 5  chr-US-Qaaa-x-west --/M      Cherokee_          iro/chr              
 5  cmn             --/M      Chinese_(Mandarin,_latin_as_English) sit/cmn              (zh-cmn 5)(zh 5)
 2  en-gb           --/M      English_(Great_Britain) gmw/en               (en 2)
 5  en-gb-x-gbclan  --/F      English_(Lancaster) gmw/en-GB-x-gbclan   (en-gb 3)(en 5)
 5  yue             --/M      Chinese_(Cantonese) sit/yue              (zh-yue 5)(zh 8)
 5  yue             --/M      Chinese_(Cantonese,_latin_as_Jyutping) sit/yue-Latn-jyutping (zh-yue 5)(zh 8)
";
        let (voices, args) = parse_voices(listing);
        let names: Vec<&str> = voices.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "af",
                "chr-US-Qaaa-x-west",
                "cmn",
                "en-gb",
                "en-gb-x-gbclan",
                "yue",
                "yue-latn-jyutping"
            ]
        );
        let cmn = &voices[2];
        assert_eq!(cmn.display_name, "Chinese (Mandarin, latin as English)");
        assert_eq!(cmn.languages, ["cmn", "zh-cmn", "zh"]);
        assert_eq!(cmn.gender, "male");
        assert_eq!(cmn.model, MODEL);
        assert_eq!(cmn.native_sample_rate, 22_050);
        assert_eq!(voices[1].display_name, "Cherokee");
        assert_eq!(voices[0].languages, ["af"]);
        assert_eq!(voices[4].languages, ["en-gb-x-gbclan", "en-gb", "en"]);
        assert_eq!(voices[4].gender, "female");
        // Voice names map to their file; other languages pass through; names win.
        assert_eq!(args["chr-US-Qaaa-x-west"], "iro/chr");
        assert_eq!(args["en-gb"], "gmw/en");
        assert_eq!(args["yue-latn-jyutping"], "sit/yue-Latn-jyutping");
        assert_eq!(args["en"], "en");
        assert_eq!(args["zh"], "zh");
        assert_eq!(args.len(), 7 + ["zh-cmn", "zh", "en", "zh-yue"].len());
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

    #[test]
    fn maps_speed_and_pitch() {
        assert_eq!(words_per_minute(1.0), 175);
        assert_eq!(words_per_minute(2.0), 350);
        assert_eq!(words_per_minute(0.5), 88);
        assert_eq!(words_per_minute(0.1), 80);
        assert_eq!(words_per_minute(10.0), 450);
        assert_eq!(words_per_minute(f32::NAN), 175);
        assert_eq!(pitch_value(1.0), 50);
        assert_eq!(pitch_value(0.5), 25);
        assert_eq!(pitch_value(2.0), 99);
        assert_eq!(pitch_value(-1.0), 0);
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

    #[tokio::test]
    async fn a_failing_run_reports_status_and_stderr() {
        // Past validation only by calling the internals: espeak-ng itself rejects the voice.
        let espeak = engine().await;
        let run = espeak
            .spawn_run(&request(PHRASE, "en", 1.0), "bogus")
            .unwrap();
        let (audio, _, last) = collect(run.into_stream()).await;
        assert!(audio.is_empty());
        match last {
            Err(EngineError::Failed { reason, .. }) => {
                eprintln!("failure reason: {reason}");
                assert!(reason.contains("exit status: 1"), "{reason}");
                assert!(reason.contains("voice does not exist"), "{reason}");
            }
            other => panic!("expected Failed, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn dropping_the_stream_kills_the_child() {
        let espeak = engine().await;
        // Far more audio than the stdout pipe holds: espeak-ng blocks writing until killed.
        let run = espeak
            .spawn_run(&request(&long_text(20_000), "en", 1.0), "gmw/en")
            .unwrap();
        let pid = run.pid().expect("running");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        assert!(stat.contains("(espeak-ng)"), "{stat}");

        let mut stream = run.into_stream();
        let first = stream.next().await.unwrap().unwrap();
        assert!(matches!(first, SynthEvent::Audio { .. }));
        // Let espeak-ng fill the pipe; it must still be alive, blocked.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(matches!(process_state(pid), Some(s) if s != 'Z'));

        let dropped = Instant::now();
        drop(stream);
        while process_state(pid).is_some() {
            assert!(
                dropped.elapsed() < Duration::from_secs(1),
                "pid {pid} still there: {:?}",
                process_state(pid)
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        eprintln!(
            "child {pid} gone (killed and reaped) {:?} after drop",
            dropped.elapsed()
        );
    }

    #[tokio::test]
    async fn a_slow_run_times_out_and_is_killed() {
        let espeak = Espeak::new(EspeakConfig {
            timeout: Duration::from_millis(5),
            ..EspeakConfig::default()
        })
        .await
        .unwrap();
        let run = espeak
            .spawn_run(&request(&long_text(200_000), "en", 1.0), "gmw/en")
            .unwrap();
        let pid = run.pid().expect("running");
        let start = Instant::now();
        let (audio, _, last) = collect(run.into_stream()).await;
        eprintln!(
            "timed out after {:?} with {} bytes of audio",
            start.elapsed(),
            audio.len()
        );
        match last {
            Err(EngineError::TimedOut { engine, limit }) => {
                assert_eq!(engine, NAME);
                assert_eq!(limit, Duration::from_millis(5));
            }
            other => panic!("expected TimedOut, got {other:?}"),
        }
        let ended = Instant::now();
        while process_state(pid).is_some() {
            assert!(
                ended.elapsed() < Duration::from_secs(1),
                "pid {pid} still there"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}
