//! One `espeak-ng` child process, from spawn to reaping.
//!
//! This module owns the child's lifecycle: [`Run::spawn`] starts `espeak-ng --stdout --stdin`,
//! a task writes the text to its stdin and another keeps an excerpt of its stderr, and
//! [`Run::into_stream`] turns its stdout into [`SynthEvent`]s, bounded by a time limit that
//! counts only the time spent waiting on the child. Dropping a [`Run`] kills the child and reaps
//! it.
//!
//! It must not look inside the audio, or let a child outlive the stream that owns it.

use std::{path::Path, process::Stdio, time::Duration};

use bytes::BytesMut;
use futures::StreamExt;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    process::{Child, ChildStdout, Command},
    sync::OwnedSemaphorePermit,
    task::JoinHandle,
    time::{Instant, timeout},
};

use super::NAME;
use crate::{
    audio::InputEncoding,
    engine::{EngineError, SynthEvent, SynthStream, SynthesisRequest},
};

/// `espeak-ng`'s default speaking rate, in words per minute (speed 1.0).
const BASE_WPM: f32 = 175.0;
/// Slowest and fastest rates `espeak-ng -s` accepts.
const MIN_WPM: f32 = 80.0;
const MAX_WPM: f32 = 450.0;
/// `espeak-ng`'s default pitch (pitch 1.0), and the range `-p` accepts.
const BASE_PITCH: f32 = 50.0;
const MAX_PITCH: f32 = 99.0;

/// How much of the child's stderr is kept for error messages.
const STDERR_LIMIT: usize = 4 * 1024;
/// Room reserved for each stdout read; a read returns whatever the pipe holds (usually 4 KiB,
/// `espeak-ng`'s stdio buffer).
const READ_CHUNK: usize = 16 * 1024;
/// How long to wait for the stderr excerpt once the child has exited.
const STDERR_GRACE: Duration = Duration::from_millis(200);

/// One running `espeak-ng` child and what reads from it. Owned by the stream: dropping it kills
/// the child.
pub(super) struct Run {
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
    /// This run's share of `espeak.max_processes`, given back once the child is reaped.
    permit: Option<OwnedSemaphorePermit>,
}

impl Run {
    /// Starts `binary` for `req` with `-v voice_arg`, bounded by `limit`; the text is written
    /// to its stdin by a spawned task.
    pub(super) fn spawn(
        binary: &Path,
        limit: Duration,
        req: &SynthesisRequest,
        voice_arg: &str,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<Self, EngineError> {
        let wpm = words_per_minute(req.speed);
        let pitch = pitch_value(req.pitch);
        let mut child = Command::new(binary)
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
                reason: format!("cannot run `{}`: {e}", binary.display()),
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

        Ok(Self {
            child: Some(child),
            stdout,
            stdin_task: Some(stdin_task),
            stderr_task: Some(stderr_task),
            buf: BytesMut::new(),
            waited: Duration::ZERO,
            limit,
            characters: u32::try_from(req.text.chars().count()).unwrap_or(u32::MAX),
            permit,
        })
    }

    /// The stream of this run: audio as it arrives, then `Finished` or one error.
    pub(super) fn into_stream(self) -> SynthStream {
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
        let permit = self.permit.take();
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
                // The process slot is free once the child is gone, not before.
                drop(permit);
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
pub(super) fn excerpt(bytes: &[u8], truncated: bool) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if truncated {
        format!("{text}…")
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::espeak::{
        EspeakConfig,
        tests::{PHRASE, collect, request},
    };

    /// A run of `config`'s binary, as the engine starts one.
    fn spawn(config: &EspeakConfig, req: &SynthesisRequest, voice_arg: &str) -> Run {
        Run::spawn(&config.binary, config.timeout, req, voice_arg, None).expect("espeak-ng starts")
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
    async fn a_failing_run_reports_status_and_stderr() {
        // Past validation only by calling the internals: espeak-ng itself rejects the voice.
        let run = spawn(
            &EspeakConfig::default(),
            &request(PHRASE, "en", 1.0),
            "bogus",
        );
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
        // Far more audio than the stdout pipe holds: espeak-ng blocks writing until killed.
        let run = spawn(
            &EspeakConfig::default(),
            &request(&long_text(20_000), "en", 1.0),
            "gmw/en",
        );
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
        let config = EspeakConfig {
            timeout: Duration::from_millis(5),
            ..EspeakConfig::default()
        };
        let run = spawn(&config, &request(&long_text(200_000), "en", 1.0), "gmw/en");
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
