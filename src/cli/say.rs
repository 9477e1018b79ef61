//! `herald say`: synthesize text through the daemon and write the audio to a file or stdout
//! as the chunks arrive (`--play` hands over to [`super::play`]).
//!
//! It owns the say-specific choices: the format from `-o`'s extension, the text from stdin,
//! the result line. It must not decode or re-encode the audio: the bytes are written as the
//! daemon sends them ([`super::output`] writes files whole or not at all, and patches their
//! headers' lengths).

use std::io::IsTerminal;

use anyhow::Context as _;
use futures::StreamExt;
use herald::{
    pb::{
        self, audio_format::Encoding, synthesize_response::Payload,
        synthesize_stream_request::Payload as In,
    },
    shutdown,
};

use super::{
    CacheArg, Format, SayArgs, connect, flags,
    output::{Output, OutputFile},
    play, rpc_error,
};
use crate::{EX_USAGE, Failure, fail};

/// sysexits.h EX_CANTCREAT: the output file cannot be created.
const EX_CANTCREAT: u8 = 73;
/// Exit code after SIGINT/SIGTERM (128 + SIGINT), as shells report an interrupted command.
const EX_INTERRUPTED: u8 = 130;

impl SayArgs {
    /// The request for `text` in `format` with these flags: the one place that maps them to
    /// request fields (`--play` sends the same voice settings).
    fn request(&self, text: String, format: Format) -> pb::SynthesizeRequest {
        pb::SynthesizeRequest {
            text,
            voice: self.voice.clone().unwrap_or_default(),
            model: self.model.clone().unwrap_or_default(),
            language: self.language.clone().unwrap_or_default(),
            instructions: self.instructions.clone().unwrap_or_default(),
            speed: self.speed.unwrap_or(0.0),
            pitch: self.pitch.unwrap_or(0.0),
            volume: self.volume.unwrap_or(0.0),
            format: Some(pb::AudioFormat {
                encoding: format.encoding() as i32,
                sample_rate_hz: self.rate.unwrap_or(0),
                channels: self.channels.unwrap_or(0),
            }),
            chunk_ms: self.chunk_ms.unwrap_or(0),
            request_id: String::new(),
            bitrate_bps: self.bitrate.unwrap_or(0),
            bits_per_sample: self.bits.unwrap_or(0),
            emotion: self.emotion.clone().unwrap_or_default(),
            seed: self.seed.unwrap_or(0),
            word_timestamps: self.word_timestamps,
            pronunciations: self.pronunciations.iter().cloned().collect(),
            replacements: self.replacements.iter().cloned().collect(),
            optimize_instructions: self.optimize_instructions,
            cache: match self.cache {
                None => pb::CachePolicy::Unspecified,
                Some(CacheArg::Use) => pb::CachePolicy::Use,
                Some(CacheArg::Refresh) => pb::CachePolicy::Refresh,
                Some(CacheArg::Bypass) => pb::CachePolicy::Bypass,
            } as i32,
            no_fallback: self.no_fallback,
            speaker: self.speaker.clone().unwrap_or_default(),
        }
    }

    /// The text: the argument, or stdin when there is none (or it is "-"). Empty text is a
    /// usage error.
    fn text(&self) -> Result<String, Failure> {
        let (text, from) = match self.text.as_deref() {
            Some(t) if t != "-" => (t.to_owned(), "TEXT"),
            _ => (
                std::io::read_to_string(std::io::stdin()).context("reading text from stdin")?,
                "stdin",
            ),
        };
        if text.trim().is_empty() {
            return Err(fail(
                EX_USAGE,
                anyhow::anyhow!(
                    "nothing to say: the text from {from} is empty (give TEXT, or pipe the text \
                     on stdin)"
                ),
            ));
        }
        Ok(text)
    }
}

/// A failed call or stream as a failure, its message naming the flags of the fields it names.
pub(super) fn status_failure(status: tonic::Status) -> Failure {
    rpc_error(flags::status(status))
}

/// `herald say`: Synthesize, writing the audio to a file or stdout as it arrives (or, with
/// `--play`, Speak on the daemon's device).
pub(crate) async fn run(args: SayArgs) -> Result<(), Failure> {
    let format = Format::resolve(args.format, args.output.as_deref())
        .map_err(|m| fail(EX_USAGE, anyhow::anyhow!(m)))?;
    if args.stream && args.text.as_deref().is_some_and(|t| t != "-") {
        return Err(fail(
            EX_USAGE,
            anyhow::anyhow!("--stream reads the text from stdin as it arrives: give no TEXT"),
        ));
    }
    if args.play {
        if args.stream {
            let config = args.request(String::new(), format);
            return play::run_stream(args, config).await;
        }
        let request = args.request(args.text()?, format);
        return play::run(args, request).await;
    }
    let to_stdout = match &args.output {
        Some(p) => p.as_os_str() == "-",
        None if std::io::stdout().is_terminal() => {
            return Err(fail(
                EX_USAGE,
                anyhow::anyhow!(
                    "refusing to write audio to a terminal: use -o FILE, or -o - to force stdout"
                ),
            ));
        }
        None => true,
    };
    let text = if args.stream {
        String::new()
    } else {
        args.text()?
    };
    let request = args.request(text, format);
    let timeout = if args.timeout > 0.0 {
        Some(
            std::time::Duration::try_from_secs_f64(args.timeout).map_err(|_| {
                fail(
                    EX_USAGE,
                    anyhow::anyhow!(
                        "--timeout {} is not a usable number of seconds",
                        args.timeout
                    ),
                )
            })?,
        )
    } else {
        None
    };
    // Installed before the output file exists: a Ctrl-C from here on removes it.
    let interrupted = shutdown::signal();
    let output = match &args.output {
        Some(path) if !to_stdout => {
            Output::File(OutputFile::create(path).map_err(|e| fail(EX_CANTCREAT, e))?)
        }
        _ => Output::Stdout(std::io::stdout().lock()),
    };
    tokio::select! {
        result = synthesize(&args, request, timeout, output, format) => result,
        () = interrupted => Err(fail(
            EX_INTERRUPTED,
            anyhow::anyhow!("interrupted: nothing written"),
        )),
    }
}

/// Stream the audio of `request` into `output`, finish it, print the result line.
async fn synthesize(
    args: &SayArgs,
    request: pb::SynthesizeRequest,
    timeout: Option<std::time::Duration>,
    mut output: Output,
    format: Format,
) -> Result<(), Failure> {
    let mut client = connect(args.target.clone()).await?;
    let mut stream = if args.stream {
        let (tx, rx) = tokio::sync::mpsc::channel(STDIN_PIECES);
        let config = pb::SynthesizeStreamRequest {
            payload: Some(In::Config(request)),
        };
        tx.send(config)
            .await
            .map_err(|_| fail(1, anyhow::anyhow!("the stream closed before its config")))?;
        read_stdin(tx);
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        if let Some(timeout) = timeout {
            request.set_timeout(timeout);
        }
        client
            .synthesize_stream(request)
            .await
            .map_err(status_failure)?
            .into_inner()
    } else {
        let mut request = tonic::Request::new(request);
        if let Some(timeout) = timeout {
            request.set_timeout(timeout);
        }
        client
            .synthesize(request)
            .await
            .map_err(status_failure)?
            .into_inner()
    };
    let mut info = None;
    let mut summary = None;
    while let Some(message) = stream.next().await {
        match message.map_err(status_failure)?.payload {
            Some(Payload::Info(i)) => info = Some(i),
            Some(Payload::Audio(chunk)) => output.write_all(&chunk.data)?,
            Some(Payload::Words(w)) => {
                for word in w.words {
                    eprintln!("{}\t{}\t{}", word.begin_ms, word.end_ms, word.text);
                }
            }
            Some(Payload::Summary(s)) => summary = Some(s),
            None => {}
        }
    }
    let Some(summary) = summary else {
        return Err(fail(
            1,
            anyhow::anyhow!("the stream ended without a summary: nothing written"),
        ));
    };
    let where_to = output.describe();
    output.finish(format, summary.bytes, summary.samples)?;
    if !args.quiet {
        eprintln!(
            "herald: {}",
            result_line(info.as_ref(), &summary, &where_to)
        );
    }
    Ok(())
}

/// Text pieces of stdin in flight to the daemon.
const STDIN_PIECES: usize = 16;

/// Read stdin as it arrives on a thread of its own (a read cannot be cancelled; the thread
/// ends with the process) and send each piece as `text` to `tx`, whole UTF-8 characters only;
/// at the end of stdin, `tx` is dropped: the client half-closes.
pub(super) fn read_stdin(tx: tokio::sync::mpsc::Sender<pb::SynthesizeStreamRequest>) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 4096];
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let n = match std::io::Read::read(&mut stdin, &mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    eprintln!("herald: reading stdin: {e}");
                    break;
                }
            };
            pending.extend_from_slice(&buf[..n]);
            // An incomplete character at the end waits for the next read; invalid bytes are
            // replaced.
            let valid = match std::str::from_utf8(&pending) {
                Err(e) if e.error_len().is_none() => e.valid_up_to(),
                _ => pending.len(),
            };
            let text = String::from_utf8_lossy(&pending[..valid]).into_owned();
            pending.drain(..valid);
            if text.is_empty() {
                continue;
            }
            let piece = pb::SynthesizeStreamRequest {
                payload: Some(In::Text(text)),
            };
            if tx.blocking_send(piece).is_err() {
                return;
            }
        }
    });
}

/// The name `--format` gives `encoding`.
fn encoding_name(encoding: i32) -> &'static str {
    match Encoding::try_from(encoding) {
        Ok(Encoding::Wav) => "wav",
        Ok(Encoding::PcmS16le | Encoding::Unspecified) => "pcm",
        Ok(Encoding::PcmF32le) => "f32",
        Ok(Encoding::Mulaw) => "mulaw",
        Ok(Encoding::Alaw) => "alaw",
        Ok(Encoding::Mp3) => "mp3",
        Ok(Encoding::OggOpus) => "opus",
        Ok(Encoding::Flac) => "flac",
        Err(_) => "?",
    }
}

/// "wrote 1.52 s of wav 22050 Hz mono to out.wav (espeak-ng/en; cache hit; first audio after
/// 12 ms)", with what served the request instead when a fallback did, and why.
fn result_line(info: Option<&pb::AudioInfo>, summary: &pb::SynthesisSummary, to: &str) -> String {
    let info = info.cloned().unwrap_or_default();
    let f = info.format.unwrap_or_default();
    let channels = match f.channels {
        1 => "mono".to_owned(),
        2 => "stereo".to_owned(),
        n => format!("{n} ch"),
    };
    let mut notes = vec![format!("{}/{}", info.model, info.voice)];
    if summary.cache_hit || info.cache_hit {
        notes.push("cache hit".to_owned());
    }
    notes.push(format!(
        "first audio after {:.0} ms",
        summary.time_to_first_audio_us as f64 / 1000.0
    ));
    if summary.fallback_used || info.fallback_used {
        let reason = if info.fallback_reason.is_empty() {
            String::new()
        } else {
            format!(": {}", info.fallback_reason)
        };
        notes.push(format!(
            "served by fallback instead of {}/{}{reason}",
            info.requested_model, info.requested_voice
        ));
    }
    format!(
        "wrote {:.2} s of {} {} Hz {channels} to {to} ({})",
        summary.duration_ms as f64 / 1000.0,
        encoding_name(f.encoding),
        f.sample_rate_hz,
        notes.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> pb::AudioInfo {
        pb::AudioInfo {
            format: Some(pb::AudioFormat {
                encoding: Encoding::Wav as i32,
                sample_rate_hz: 22050,
                channels: 1,
            }),
            model: "espeak-ng".to_owned(),
            voice: "en".to_owned(),
            requested_model: "espeak-ng".to_owned(),
            requested_voice: "en".to_owned(),
            ..Default::default()
        }
    }

    fn summary() -> pb::SynthesisSummary {
        pb::SynthesisSummary {
            duration_ms: 1520,
            time_to_first_audio_us: 12_400,
            ..Default::default()
        }
    }

    #[test]
    fn the_result_line_says_what_served_the_request() {
        assert_eq!(
            result_line(Some(&info()), &summary(), "out.wav"),
            "wrote 1.52 s of wav 22050 Hz mono to out.wav (espeak-ng/en; first audio after 12 ms)"
        );
        let hit = pb::SynthesisSummary {
            cache_hit: true,
            ..summary()
        };
        assert_eq!(
            result_line(Some(&info()), &hit, "stdout"),
            "wrote 1.52 s of wav 22050 Hz mono to stdout (espeak-ng/en; cache hit; first audio \
             after 12 ms)"
        );
        let fallback = pb::AudioInfo {
            fallback_used: true,
            fallback_reason: "upstream unavailable".to_owned(),
            requested_model: "cosyvoice-v3-flash".to_owned(),
            requested_voice: "longanyang".to_owned(),
            ..info()
        };
        assert_eq!(
            result_line(Some(&fallback), &summary(), "a.wav"),
            "wrote 1.52 s of wav 22050 Hz mono to a.wav (espeak-ng/en; first audio after 12 ms; \
             served by fallback instead of cosyvoice-v3-flash/longanyang: upstream unavailable)"
        );
    }
}
