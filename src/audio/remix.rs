//! Channel remixing: the [`Remix`] stage turns any buffer into the client's channel count.
//!
//! It owns the channel rules: mono → N duplicates the channel, N → mono averages the channels,
//! equal counts pass through. It must not change the rate or the level of a channel (averaging
//! stereo to mono halves uncorrelated content by design, it never adds gain), and it does not
//! guess layouts it cannot map (for example 6 → 2): those are [`AudioError::Unsupported`].

use super::{AudioError, AudioSpec, PcmBuffer, Stage};

/// Converts buffers to a fixed channel count, in place where it can.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remix {
    to_channels: u16,
}

impl Remix {
    /// A stage producing `to_channels` channels (at least 1; 0 is treated as 1).
    pub fn new(to_channels: u16) -> Self {
        Self {
            to_channels: to_channels.max(1),
        }
    }
}

impl Stage for Remix {
    fn process(&mut self, input: PcmBuffer, out: &mut Vec<PcmBuffer>) -> Result<(), AudioError> {
        let from = input.spec.channels;
        let to = self.to_channels;
        if from == to {
            out.push(input);
            return Ok(());
        }
        let spec = AudioSpec {
            sample_rate: input.spec.sample_rate,
            channels: to,
        };
        let mut samples = input.samples;
        if to == 1 {
            // N → 1: average each frame into the front of the same Vec (frame i is written at
            // index i, after it has been read from index i·N ≥ i).
            let n = usize::from(from);
            let frames = samples.len() / n;
            let scale = 1.0 / f32::from(from);
            for i in 0..frames {
                let sum: f32 = samples[i * n..(i + 1) * n].iter().sum();
                samples[i] = sum * scale;
            }
            samples.truncate(frames);
        } else if from == 1 {
            // 1 → N: grow, then fill from the back so no source sample is overwritten first.
            let n = usize::from(to);
            let frames = samples.len();
            samples.resize(frames * n, 0.0);
            for i in (0..frames).rev() {
                let v = samples[i];
                samples[i * n..(i + 1) * n].fill(v);
            }
        } else {
            return Err(AudioError::Unsupported {
                format: "pcm",
                reason: format!("remixing {from} channels to {to}"),
            });
        }
        out.push(PcmBuffer::new(spec, samples));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(rate: u32, channels: u16, samples: Vec<f32>) -> PcmBuffer {
        PcmBuffer::new(AudioSpec::new(rate, channels).expect("spec"), samples)
    }

    fn remix(to: u16, input: PcmBuffer) -> PcmBuffer {
        let mut out = Vec::new();
        Remix::new(to).process(input, &mut out).expect("remix");
        assert_eq!(out.len(), 1);
        out.remove(0)
    }

    #[test]
    fn mono_to_stereo_duplicates() {
        let out = remix(2, buf(16_000, 1, vec![0.1, -0.2, 0.3]));
        assert_eq!(out.spec, AudioSpec::new(16_000, 2).expect("spec"));
        assert_eq!(out.samples, vec![0.1, 0.1, -0.2, -0.2, 0.3, 0.3]);
    }

    #[test]
    fn stereo_to_mono_averages() {
        let out = remix(1, buf(16_000, 2, vec![0.5, 0.1, -1.0, 1.0, 0.25, 0.25]));
        assert_eq!(out.spec, AudioSpec::new(16_000, 1).expect("spec"));
        assert_eq!(out.samples, vec![0.3, 0.0, 0.25]);
    }

    #[test]
    fn stereo_round_trip_of_mono_content_is_identity() {
        let mono = vec![0.1, -0.7, 0.3, 1.0, -1.0];
        let back = remix(1, remix(2, buf(8_000, 1, mono.clone())));
        assert_eq!(back.samples, mono);
    }

    #[test]
    fn same_count_and_empty_pass_through() {
        let input = buf(8_000, 2, vec![0.1, 0.2]);
        assert_eq!(remix(2, input.clone()), input);
        assert!(remix(2, buf(8_000, 1, Vec::new())).is_empty());
    }

    #[test]
    fn unmappable_layouts_are_unsupported() {
        let err = Remix::new(2)
            .process(buf(8_000, 6, vec![0.0; 12]), &mut Vec::new())
            .expect_err("must fail");
        assert!(matches!(err, AudioError::Unsupported { .. }));
    }
}
