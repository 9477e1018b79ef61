//! The chime played before an announcement: a WAV file from the configuration, or herald's
//! built-in two-tone (a falling fifth, 880 Hz then 587 Hz, soft attack and release), rendered
//! once per device at the device's rate and channel count. It must not be synthesized per
//! announcement (it is rendered when a device opens).

use std::{f32::consts::PI, path::Path};

use crate::audio::{
    AudioError, AudioSpec, InputEncoding, PcmBuffer, Stage, decode::open_decoder, remix::Remix,
    resample::Resampler,
};

/// Frequencies and durations (ms) of the built-in chime's two notes.
pub const BUILTIN_NOTES: [(f32, u32); 2] = [(880.0, 160), (587.33, 240)];
/// Silence after the built-in chime, before the speech (ms).
pub const BUILTIN_GAP_MS: u32 = 120;
/// Peak amplitude of the built-in chime.
const AMPLITUDE: f32 = 0.35;

/// The chime at `spec`, interleaved: the file's audio when `file` is set, else the built-in.
pub fn load(file: Option<&Path>, spec: AudioSpec) -> Result<Vec<f32>, AudioError> {
    match file {
        None => Ok(builtin(spec)),
        Some(path) => from_wav(path, spec),
    }
}

/// The built-in two-tone at `spec`.
pub fn builtin(spec: AudioSpec) -> Vec<f32> {
    let rate = spec.sample_rate as f32;
    let ch = usize::from(spec.channels);
    let mut out = Vec::new();
    for (hz, ms) in BUILTIN_NOTES {
        let n = (rate * ms as f32 / 1000.0) as usize;
        let ramp = (rate * 0.01) as usize; // 10 ms attack and release
        for i in 0..n {
            let env = if i < ramp {
                i as f32 / ramp as f32
            } else if i + ramp > n {
                (n - i) as f32 / ramp as f32
            } else {
                1.0
            };
            let s = AMPLITUDE * env * (2.0 * PI * hz * i as f32 / rate).sin();
            out.extend(std::iter::repeat_n(s, ch));
        }
    }
    let gap = (rate * BUILTIN_GAP_MS as f32 / 1000.0) as usize;
    out.extend(std::iter::repeat_n(0.0, gap * ch));
    out
}

fn from_wav(path: &Path, spec: AudioSpec) -> Result<Vec<f32>, AudioError> {
    let file = std::fs::File::open(path).map_err(|e| AudioError::Malformed {
        format: "wav",
        reason: format!("cannot open {}: {e}", path.display()),
    })?;
    let mut decoder = open_decoder(InputEncoding::Wav, std::io::BufReader::new(file))?;
    let mut buffers = Vec::new();
    while let Some(b) = decoder.next_buffer()? {
        buffers.push(b);
        if buffers.iter().map(PcmBuffer::frames).sum::<usize>() > 30 * 384_000 {
            return Err(AudioError::Malformed {
                format: "wav",
                reason: "a chime longer than 30 s".to_owned(),
            });
        }
    }
    let Some(first) = buffers.first() else {
        return Ok(Vec::new());
    };
    let mut resampler = Resampler::new(first.spec, spec.sample_rate)?;
    let mut remix = Remix::new(spec.channels);
    let mut resampled = Vec::new();
    for b in buffers {
        resampler.process(b, &mut resampled)?;
    }
    resampler.flush(&mut resampled)?;
    let mut mixed = Vec::new();
    for b in resampled {
        remix.process(b, &mut mixed)?;
    }
    Ok(mixed.into_iter().flat_map(|b| b.samples).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_chime_has_two_notes_and_a_gap() {
        let spec = AudioSpec {
            sample_rate: 16000,
            channels: 2,
        };
        let c = builtin(spec);
        assert_eq!(c.len(), (16 * (160 + 240 + 120)) * 2);
        assert!(c.iter().all(|s| s.abs() <= AMPLITUDE));
    }
}
