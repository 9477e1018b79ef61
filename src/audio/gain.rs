//! Gain: the [`Gain`] stage multiplies every sample by a constant factor.
//!
//! It owns only the multiplication. It must not clip (the encoder clips to the output's range,
//! so a chain of stages never loses headroom midway), change rate or channels, or ramp: a
//! factor is fixed for the stage's life.

use super::{AudioError, PcmBuffer, Stage};

/// Multiplies samples by a constant factor, in place; 1.0 passes buffers through untouched.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gain {
    factor: f32,
}

impl Gain {
    /// A stage multiplying by `factor` (linear, not dB).
    pub fn new(factor: f32) -> Self {
        Self { factor }
    }

    /// The linear factor.
    pub fn factor(&self) -> f32 {
        self.factor
    }
}

impl Stage for Gain {
    fn process(
        &mut self,
        mut input: PcmBuffer,
        out: &mut Vec<PcmBuffer>,
    ) -> Result<(), AudioError> {
        if self.factor != 1.0 {
            input.samples.iter_mut().for_each(|s| *s *= self.factor);
        }
        out.push(input);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::AudioSpec;

    fn apply(factor: f32, samples: Vec<f32>) -> Vec<f32> {
        let spec = AudioSpec::new(8_000, 1).expect("spec");
        let mut out = Vec::new();
        Gain::new(factor)
            .process(PcmBuffer::new(spec, samples), &mut out)
            .expect("gain");
        assert_eq!(out.len(), 1);
        out.remove(0).samples
    }

    #[test]
    fn multiplies_without_clipping() {
        assert_eq!(apply(0.5, vec![1.0, -0.5, 0.25]), vec![0.5, -0.25, 0.125]);
        assert_eq!(apply(2.0, vec![0.75, -0.75]), vec![1.5, -1.5]);
        assert_eq!(apply(0.0, vec![0.3]), vec![0.0]);
    }

    #[test]
    fn unity_is_pass_through() {
        let v = vec![0.1, -0.2, 0.3, f32::MIN_POSITIVE];
        assert_eq!(apply(1.0, v.clone()), v);
    }
}
