//! `herald say`: synthesize text through the daemon and write the audio to a file or stdout
//! as the chunks arrive (`--play` hands over to [`super::play`]).
//!
//! It must not decode or re-encode the audio: the bytes are written as the daemon sends them,
//! and only a WAV file's header sizes are patched at the end.

use std::io::{IsTerminal, Write};

use anyhow::Context as _;
use futures::StreamExt;
use herald::{
    audio::wav,
    pb::{self, audio_format::Encoding, synthesize_response::Payload},
};

use super::{Format, SayArgs, connect, play, response, rpc_error};
use crate::{EX_USAGE, Failure, fail};

impl SayArgs {
    /// The request for `text` with these flags: the one place that maps them to request fields
    /// (`--play` sends the same voice settings).
    fn request(&self, text: String) -> pb::SynthesizeRequest {
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
                encoding: self.format.encoding() as i32,
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
            cache: pb::CachePolicy::Unspecified as i32,
            no_fallback: false,
        }
    }
}

/// `herald say`: Synthesize, writing the audio to a file or stdout as it arrives (or, with
/// `--play`, Speak on the daemon's device).
pub(crate) async fn run(args: SayArgs) -> Result<(), Failure> {
    let text = if args.text == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading text from stdin")?
    } else {
        args.text.clone()
    };
    let synthesize_request = args.request(text);
    if args.play {
        return play::run(args, synthesize_request).await;
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
    let mut client = connect(args.target.clone()).await?;
    let mut request = tonic::Request::new(synthesize_request);
    if args.timeout > 0.0 {
        let timeout = std::time::Duration::try_from_secs_f64(args.timeout).map_err(|_| {
            fail(
                EX_USAGE,
                anyhow::anyhow!(
                    "--timeout {} is not a usable number of seconds",
                    args.timeout
                ),
            )
        })?;
        request.set_timeout(timeout);
    }
    let mut stream = response(client.synthesize(request)).await?;

    let mut file = if to_stdout {
        None
    } else if let Some(path) = &args.output {
        Some((
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
            path.clone(),
        ))
    } else {
        None
    };
    let mut stdout = std::io::stdout().lock();
    let mut info = None;
    let mut summary = None;
    while let Some(message) = stream.next().await {
        match message.map_err(rpc_error)?.payload {
            Some(Payload::Info(i)) => info = Some(i),
            Some(Payload::Audio(chunk)) => match &mut file {
                Some((f, path)) => f
                    .write_all(&chunk.data)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => {
                    stdout.write_all(&chunk.data).context("writing to stdout")?;
                    stdout.flush().context("writing to stdout")?;
                }
            },
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
            anyhow::anyhow!("the stream ended without a summary"),
        ));
    };
    if let Some((f, path)) = &mut file {
        if matches!(args.format, Format::Wav) {
            // A file can be sought: replace the streaming header's "unknown" sizes.
            let data_bytes = summary.bytes.saturating_sub(wav::HEADER_LEN as u64);
            wav::patch_sizes(f, data_bytes)
                .with_context(|| format!("finishing {}", path.display()))?;
        }
        f.flush()
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if !args.quiet {
        let where_to = file
            .as_ref()
            .map_or_else(|| "stdout".to_owned(), |(_, p)| p.display().to_string());
        let (model, voice, fmt) = info.as_ref().map_or_else(Default::default, |i| {
            let f = i.format.unwrap_or_default();
            (
                i.model.clone(),
                i.voice.clone(),
                format!(
                    "{} {} Hz {} ch",
                    Encoding::try_from(f.encoding).map_or("?", |e| e.as_str_name()),
                    f.sample_rate_hz,
                    f.channels
                ),
            )
        });
        eprintln!(
            "herald: wrote {where_to}: {:.2} s of {fmt}, {model}/{voice}, first audio after {:.0} ms",
            summary.duration_ms as f64 / 1000.0,
            summary.time_to_first_audio_us as f64 / 1000.0,
        );
    }
    Ok(())
}
