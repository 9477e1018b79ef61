//! Compressed streams (MP3) decoded by symphonia over a non-seekable source.
//!
//! It must not seek (engine streams cannot), or give up on a corrupt packet: it skips it with a
//! warning.

use std::io::{self, Read};

use symphonia::core::{
    codecs::audio::{AudioDecoder, AudioDecoderOptions},
    errors::Error as SymphoniaError,
    formats::{FormatOptions, FormatReader, TrackType, probe::Hint},
    io::{MediaSourceStream, ReadOnlySource},
    meta::MetadataOptions,
};

use super::Decoder;
use crate::audio::{AudioError, AudioSpec, PcmBuffer};

// === impl SymphoniaDecoder ===

/// A compressed stream (MP3) decoded by symphonia over a non-seekable source.
///
/// The stream is probed on the first [`Decoder::next_buffer`] call. Corrupt packets are skipped
/// with a warning; the stream ends at symphonia's end of stream or at an unexpected EOF (a
/// stream cut inside a frame).
pub struct SymphoniaDecoder {
    state: SymphoniaState,
    /// "mp3", for errors and logs.
    label: &'static str,
}

enum SymphoniaState {
    Unprobed {
        source: MediaSourceStream<'static>,
        hint: Hint,
    },
    Decoding {
        format: Box<dyn FormatReader>,
        decoder: Box<dyn AudioDecoder>,
        track_id: u32,
    },
    Finished,
}

impl std::fmt::Debug for SymphoniaDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            SymphoniaState::Unprobed { .. } => "unprobed",
            SymphoniaState::Decoding { .. } => "decoding",
            SymphoniaState::Finished => "finished",
        };
        f.debug_struct("SymphoniaDecoder")
            .field("format", &self.label)
            .field("state", &state)
            .finish()
    }
}

impl SymphoniaDecoder {
    /// A decoder of `reader`, probed with the file-extension hint `extension` ("mp3").
    pub fn new<R: Read + Send + Sync + 'static>(reader: R, extension: &'static str) -> Self {
        let source =
            MediaSourceStream::new(Box::new(ReadOnlySource::new(reader)), Default::default());
        let mut hint = Hint::new();
        hint.with_extension(extension);
        Self {
            state: SymphoniaState::Unprobed { source, hint },
            label: extension,
        }
    }

    fn malformed(&self, reason: impl Into<String>) -> AudioError {
        AudioError::Malformed {
            format: self.label,
            reason: reason.into(),
        }
    }

    /// Probes the container and builds the codec for its default audio track.
    fn open(
        &self,
        source: MediaSourceStream<'static>,
        hint: &Hint,
    ) -> Result<SymphoniaState, AudioError> {
        let probed = symphonia::default::get_probe().probe(
            hint,
            source,
            FormatOptions::default(),
            MetadataOptions::default(),
        );
        let format = match probed {
            Ok(format) => format,
            Err(SymphoniaError::IoError(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(self.malformed("stream ended before any audio frame"));
            }
            Err(SymphoniaError::Unsupported(what)) => {
                return Err(self.malformed(format!("not recognised: {what}")));
            }
            Err(e) => return Err(AudioError::Symphonia(e)),
        };
        let track = format
            .default_track(TrackType::Audio)
            .ok_or_else(|| self.malformed("no audio track"))?;
        let params = track
            .codec_params
            .as_ref()
            .and_then(|p| p.audio())
            .ok_or_else(|| self.malformed("no audio codec parameters"))?;
        let decoder = symphonia::default::get_codecs()
            .make_audio_decoder(params, &AudioDecoderOptions::default())
            .map_err(AudioError::Symphonia)?;
        let track_id = track.id;
        Ok(SymphoniaState::Decoding {
            format,
            decoder,
            track_id,
        })
    }
}

impl Decoder for SymphoniaDecoder {
    fn next_buffer(&mut self) -> Result<Option<PcmBuffer>, AudioError> {
        if matches!(self.state, SymphoniaState::Unprobed { .. })
            && let SymphoniaState::Unprobed { source, hint } =
                std::mem::replace(&mut self.state, SymphoniaState::Finished)
        {
            self.state = self.open(source, &hint)?;
        }
        let label = self.label;
        let SymphoniaState::Decoding {
            format,
            decoder,
            track_id,
        } = &mut self.state
        else {
            return Ok(None);
        };
        let result = loop {
            let packet = match format.next_packet() {
                Ok(Some(packet)) => packet,
                Ok(None) => break Ok(None),
                Err(SymphoniaError::IoError(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    break Ok(None);
                }
                Err(e) => break Err(AudioError::Symphonia(e)),
            };
            if packet.track_id != *track_id {
                continue;
            }
            match decoder.decode(&packet) {
                Ok(decoded) => {
                    if decoded.frames() == 0 {
                        // Gapless trimming can empty the first packets.
                        continue;
                    }
                    let rate = decoded.spec().rate();
                    let channels = u16::try_from(decoded.spec().channels().count()).unwrap_or(0);
                    let Some(spec) = AudioSpec::new(rate, channels) else {
                        break Err(AudioError::Malformed {
                            format: label,
                            reason: format!("decoded {rate} Hz audio with {channels} channels"),
                        });
                    };
                    let mut samples = Vec::with_capacity(decoded.samples_interleaved());
                    decoded.copy_to_vec_interleaved::<f32>(&mut samples);
                    return Ok(Some(PcmBuffer::new(spec, samples)));
                }
                Err(SymphoniaError::DecodeError(reason)) => {
                    tracing::warn!(format = label, reason, "skipping a corrupt audio packet");
                }
                Err(e) => break Err(AudioError::Symphonia(e)),
            }
        };
        self.state = SymphoniaState::Finished;
        result
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use crate::audio::{
        AudioError, InputEncoding,
        decode::open_decoder,
        test_util::{channel_of, drain, spec, split_at_sizes},
    };

    /// Runs ffmpeg (installed by `.ci/setup`) to make a 1 s, 1 kHz MP3 at `rate`.
    fn ffmpeg_mp3(dir: &std::path::Path, rate: u32) -> Vec<u8> {
        let path = dir.join("tone.mp3");
        let status = std::process::Command::new("ffmpeg")
            .args(["-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i"])
            .arg(format!("sine=frequency=1000:sample_rate={rate}:duration=1"))
            .args(["-c:a", "libmp3lame", "-b:a", "64k"])
            .arg(&path)
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "ffmpeg with libmp3lame is needed (bash .ci/setup installs it)"
        );
        std::fs::read(&path).expect("ffmpeg wrote the file")
    }

    /// Dominant frequency by zero crossings (good enough for a clean tone).
    fn zero_crossing_hz(samples: &[f32], rate: u32) -> f64 {
        let crossings = samples
            .windows(2)
            .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
            .count();
        crossings as f64 / 2.0 / (samples.len() as f64 / f64::from(rate))
    }

    #[test]
    fn mp3_from_ffmpeg_decodes_streamed_and_truncated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mp3 = ffmpeg_mp3(dir.path(), 24_000);
        let chunks = split_at_sizes(&mp3, &[1_000, 37, 4_096]);
        let (buffers, samples) =
            drain(open_decoder(InputEncoding::Mp3, channel_of(chunks)).expect("opens"));
        assert!(buffers.iter().all(|b| b.spec == spec(24_000, 1)));
        // LAME's delay and padding are trimmed (gapless) when the Info tag is present; allow
        // one MP3 frame (576 samples at 24 kHz) either way.
        assert!(
            samples.len().abs_diff(24_000) <= 576,
            "{} frames",
            samples.len()
        );
        let hz = zero_crossing_hz(&samples[2_400..21_600], 24_000);
        assert!((hz - 1_000.0).abs() < 5.0, "{hz} Hz");
        eprintln!(
            "mp3: {} bytes in, {} frames out in {} buffers, {hz:.1} Hz",
            mp3.len(),
            samples.len(),
            buffers.len()
        );

        // Cut mid-frame: a clean end with fewer samples, not an error.
        let cut = mp3[..mp3.len() * 2 / 3].to_vec();
        let (_, partial) =
            drain(open_decoder(InputEncoding::Mp3, Cursor::new(cut)).expect("opens"));
        assert!(
            partial.len() > 10_000 && partial.len() < samples.len(),
            "{}",
            partial.len()
        );
    }

    #[test]
    fn mp3_garbage_and_empty_are_errors() {
        for bytes in [Vec::new(), vec![0x55; 5_000]] {
            let err = open_decoder(InputEncoding::Mp3, Cursor::new(bytes))
                .expect("opens")
                .next_buffer()
                .expect_err("must fail");
            assert!(matches!(err, AudioError::Malformed { .. }), "{err:?}");
        }
    }
}
