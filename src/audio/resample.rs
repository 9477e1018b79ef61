//! Sample-rate conversion: the [`Resampler`] stage, over rubato's synchronous FFT resampler.
//!
//! It owns the streaming wrapper that rubato needs for buffers of arbitrary size (a FIFO in
//! front, so rubato always gets exactly `input_frames_next()` frames), the trimming of the
//! filter's startup delay (the first output frame is aligned with the first input frame, to
//! within half an output frame: no leading silence), and the end of stream: [`Stage::flush`]
//! drains the filter so the total output is exactly `round(input_frames × to / from)` frames.
//!
//! It must not change the channel count or the gain, allocate per call in the steady state
//! (beyond the one output `Vec` it hands downstream), or guess the input rate: it is built for
//! one input spec and rejects buffers in another.

use rubato::{FixedSync, Indexing, Resampler as _, audioadapter_buffers::direct::InterleavedSlice};

use super::{AudioError, AudioSpec, PcmBuffer, Stage};

/// Frames per rubato call on the smaller side of the conversion (input when upsampling, output
/// when downsampling). Small keeps the stage's latency low (measured: 128–256 frames cost no
/// throughput). rubato's FFT block is the smallest multiple of `from / gcd(from, to)` frames
/// holding [`chunk_frames`] input frames, and output appears one block at a time.
pub const CHUNK_FRAMES: usize = 256;

/// Input frames per rubato call for `from` → `to` Hz: [`CHUNK_FRAMES`], scaled up when
/// downsampling so the output side of the FFT block has at least [`CHUNK_FRAMES`] frames too.
///
/// rubato's anti-aliasing filter is as long as the block, and its cutoff is set by the smaller
/// side: with 256 input frames a 3:1 decimation (24 k → 8 k, 48 k → 16 k) had an 86-frame
/// output block, and a tone at 0.9 × the output Nyquist came out with THD+N −115.6 dB against
/// libsoxr `-h`'s −144 dB (benches/reference.rs); with this block (and f64) it is −154.6 dB,
/// and 3× faster, as rubato no longer splits the call into small FFTs. The larger block costs
/// no time to first audio: an engine's first event already carries 100 ms, more than a block.
pub fn chunk_frames(from: u32, to: u32) -> usize {
    if to >= from {
        CHUNK_FRAMES
    } else {
        CHUNK_FRAMES * (from as usize).div_ceil(to as usize)
    }
}

/// Converts interleaved PCM from one sample rate to another; channels are unchanged.
///
/// Output appears one FFT block ([`Resampler::block_frames`]) at a time, so a `process` call
/// may output nothing. After [`Stage::flush`] the stage is reset and may serve a new stream.
pub struct Resampler {
    from: AudioSpec,
    to: AudioSpec,
    inner: Option<Box<Streaming>>,
}

impl std::fmt::Debug for Resampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resampler")
            .field("from", &self.from)
            .field("to", &self.to)
            .field("delay_frames", &self.delay_frames())
            .finish()
    }
}

/// rubato plus the state that makes it stream (`None` in [`Resampler`] means pass-through).
struct Streaming {
    /// In f64: with f32 arithmetic the FFT's rounding noise floored THD+N at about −135 dB,
    /// below libsoxr `-h`'s −144 dB (benches/reference.rs); f64 costs little next to the FFT.
    rubato: rubato::Fft<f64>,
    channels: usize,
    /// Interleaved input frames not yet given to rubato (fewer than [`chunk_frames`] between
    /// calls).
    fifo: Vec<f64>,
    /// rubato's output, `output_frames_max() * channels` samples.
    out_buf: Vec<f64>,
    /// Output frames to drop at the start of a stream ([`trimmed_delay`]).
    delay: usize,
    /// Output frames still to drop.
    delay_left: usize,
    /// Input frames received since the start of the stream.
    in_frames: u64,
    /// Output frames emitted since the start of the stream (after the delay).
    out_frames: u64,
}

impl Resampler {
    /// A stage converting `from` audio to `to_rate` Hz, with `from.channels` channels.
    ///
    /// When `from.sample_rate == to_rate` the stage passes buffers through untouched.
    pub fn new(from: AudioSpec, to_rate: u32) -> Result<Self, AudioError> {
        let to = AudioSpec::new(to_rate, from.channels).ok_or_else(|| AudioError::Unsupported {
            format: "pcm",
            reason: "resampling to 0 Hz".to_owned(),
        })?;
        if from.sample_rate == to_rate {
            return Ok(Self {
                from,
                to,
                inner: None,
            });
        }
        let channels = usize::from(from.channels);
        // One FFT block per call (`new` would split a call of more than 256 frames into
        // sub-chunks, shortening the filter again); rubato's default window.
        let rubato = rubato::Fft::<f64>::new_custom(
            from.sample_rate as usize,
            to_rate as usize,
            chunk_frames(from.sample_rate, to_rate),
            1,
            channels,
            rubato::WindowFunction::BlackmanHarris2,
            FixedSync::Input,
        )
        .map_err(AudioError::ResamplerConstruction)?;
        let delay = trimmed_delay(&rubato);
        let out_buf = vec![0.0; rubato.output_frames_max() * channels];
        let fifo = Vec::with_capacity(rubato.input_frames_max() * channels * 2);
        Ok(Self {
            from,
            to,
            inner: Some(Box::new(Streaming {
                rubato,
                channels,
                fifo,
                out_buf,
                delay,
                delay_left: delay,
                in_frames: 0,
                out_frames: 0,
            })),
        })
    }

    /// The spec of the output.
    pub fn output_spec(&self) -> AudioSpec {
        self.to
    }

    /// Input frames in rubato's FFT block (0 for pass-through): output appears in steps of
    /// this many input frames.
    pub fn block_frames(&self) -> usize {
        self.inner.as_ref().map_or(0, |s| s.rubato.fft_size_in())
    }

    /// The filter delay in output frames, trimmed from the start of the output (0 for
    /// pass-through).
    ///
    /// This is not the stage's latency: that is this delay plus up to one FFT block of input
    /// ([`Resampler::block_frames`]) waiting to be transformed.
    pub fn delay_frames(&self) -> usize {
        self.inner.as_ref().map_or(0, |s| s.delay)
    }
}

/// The delay to trim, in output frames: rubato's filter is centred on input frame
/// `fft_size_in / 2` (rounded down), i.e. `⌊fft_in / 2⌋ × fft_out / fft_in` output frames,
/// rounded here to the nearest frame.
///
/// rubato's own `output_delay()` is `⌊fft_out / 2⌋`, which differs when a block size is odd
/// (pairs with 22.05 or 44.1 kHz: 441 input frames for 22.05 k → 32 k puts the true delay at
/// 319.27 frames, not 320). Rounding the true delay leaves at most half an output frame of
/// constant offset (63 µs at 8 kHz, measured 0.5 frame at worst), which is inaudible. Removing it entirely would take
/// even blocks, doubling the block and the latency for espeak-ng's 22.05 kHz.
fn trimmed_delay(rubato: &rubato::Fft<f64>) -> usize {
    let (fft_in, fft_out) = (rubato.fft_size_in(), rubato.fft_size_out());
    let centre = fft_in / 2;
    (centre * fft_out + fft_in / 2) / fft_in
}

impl Streaming {
    /// Runs rubato once on `frames` frames of the FIFO from `offset` (`partial` = a short final
    /// chunk, padded with silence by rubato), appending the output to `out` without the startup
    /// delay and without anything past `limit` total output frames.
    fn run(
        &mut self,
        offset: usize,
        frames: usize,
        partial: bool,
        limit: u64,
        out: &mut Vec<f32>,
    ) -> Result<usize, AudioError> {
        let ch = self.channels;
        let input_samples = &self.fifo[offset * ch..(offset + frames) * ch];
        let input =
            InterleavedSlice::new(input_samples, ch, frames).map_err(AudioError::ResampleBuffer)?;
        let out_frames_cap = self.out_buf.len() / ch;
        let mut output = InterleavedSlice::new_mut(&mut self.out_buf, ch, out_frames_cap)
            .map_err(AudioError::ResampleBuffer)?;
        let indexing = partial.then(|| Indexing::new().partial_len(frames));
        let (consumed, produced) = self
            .rubato
            .process_into_buffer(&input, &mut output, indexing.as_ref())
            .map_err(AudioError::Resample)?;

        let skip = self.delay_left.min(produced);
        self.delay_left -= skip;
        let room = usize::try_from(limit.saturating_sub(self.out_frames)).unwrap_or(usize::MAX);
        let keep = (produced - skip).min(room);
        out.extend(
            self.out_buf[skip * ch..(skip + keep) * ch]
                .iter()
                .map(|&v| v as f32),
        );
        self.out_frames += keep as u64;
        Ok(consumed)
    }
}

impl Stage for Resampler {
    fn process(&mut self, input: PcmBuffer, out: &mut Vec<PcmBuffer>) -> Result<(), AudioError> {
        if input.spec != self.from {
            return Err(AudioError::SpecMismatch {
                stage: "resampler",
                expected: self.from,
                actual: input.spec,
            });
        }
        let Some(s) = self.inner.as_deref_mut() else {
            if !input.is_empty() {
                out.push(input);
            }
            return Ok(());
        };
        let ch = s.channels;
        s.in_frames += input.frames() as u64;
        s.fifo.extend(input.samples.iter().map(|&v| f64::from(v)));

        let fifo_frames = s.fifo.len() / ch;
        let mut offset = 0;
        let ratio = f64::from(self.to.sample_rate) / f64::from(self.from.sample_rate);
        let mut samples =
            Vec::with_capacity(((fifo_frames as f64 * ratio) as usize + s.out_buf.len() / ch) * ch);
        loop {
            let need = s.rubato.input_frames_next();
            if fifo_frames - offset < need {
                break;
            }
            offset += s.run(offset, need, false, u64::MAX, &mut samples)?;
        }
        s.fifo.drain(..offset * ch);
        if !samples.is_empty() {
            out.push(PcmBuffer::new(self.to, samples));
        }
        Ok(())
    }

    fn flush(&mut self, out: &mut Vec<PcmBuffer>) -> Result<(), AudioError> {
        let Some(s) = self.inner.as_deref_mut() else {
            return Ok(());
        };
        let ch = s.channels;
        // Integer arithmetic: round(in * to / from), halves rounded up.
        let from = u128::from(self.from.sample_rate);
        let expected =
            (u128::from(s.in_frames) * u128::from(self.to.sample_rate) + from / 2) / from;
        let expected = u64::try_from(expected).unwrap_or(u64::MAX);

        let mut samples = Vec::with_capacity(
            usize::try_from(expected.saturating_sub(s.out_frames)).unwrap_or(0) * ch,
        );
        // The last partial chunk (possibly empty), then silence until the filter tail is out.
        let mut left = s.fifo.len() / ch;
        while s.out_frames < expected {
            s.run(0, left, true, expected, &mut samples)?;
            left = 0;
        }
        s.fifo.clear();
        if !samples.is_empty() {
            out.push(PcmBuffer::new(self.to, samples));
        }

        // Ready for another stream.
        s.rubato.reset();
        s.delay_left = s.delay;
        s.in_frames = 0;
        s.out_frames = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::f64::consts::PI;

    use rustfft::{FftPlanner, num_complex::Complex};

    use super::*;

    const RATES: [u32; 7] = [8_000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000];

    fn spec(rate: u32, channels: u16) -> AudioSpec {
        AudioSpec::new(rate, channels).expect("valid spec")
    }

    /// `amp * cos(2π f t + phase)` per channel, interleaved; `tones[c] = (f, amp)`.
    fn tone(rate: u32, frames: usize, tones: &[(f64, f64)]) -> Vec<f32> {
        let mut v = Vec::with_capacity(frames * tones.len());
        for n in 0..frames {
            let t = n as f64 / f64::from(rate);
            for &(f, amp) in tones {
                v.push((amp * (2.0 * PI * f * t).cos()) as f32);
            }
        }
        v
    }

    /// Feeds `input` in the given chunk sizes (cycled), flushes, returns interleaved output.
    fn run(r: &mut Resampler, from: AudioSpec, input: &[f32], sizes: &[usize]) -> Vec<f32> {
        let ch = usize::from(from.channels);
        let mut bufs = Vec::new();
        let mut pos = 0;
        let mut i = 0;
        while pos < input.len() {
            let n = (sizes[i % sizes.len()] * ch).min(input.len() - pos);
            r.process(
                PcmBuffer::new(from, input[pos..pos + n].to_vec()),
                &mut bufs,
            )
            .expect("process");
            pos += n;
            i += 1;
        }
        r.flush(&mut bufs).expect("flush");
        assert!(
            bufs.iter()
                .all(|b| b.spec == r.output_spec() && !b.is_empty())
        );
        bufs.into_iter().flat_map(|b| b.samples).collect()
    }

    fn channel(samples: &[f32], ch: usize, c: usize) -> Vec<f64> {
        samples
            .iter()
            .skip(c)
            .step_by(ch)
            .map(|&s| f64::from(s))
            .collect()
    }

    /// Peak frequency in Hz: Hann window, FFT, Gaussian (log-parabolic) interpolation around
    /// the strongest bin, which is exact for a Gaussian peak and within ~0.02 bin for Hann.
    fn peak_hz(x: &[f64], rate: u32) -> f64 {
        let n = x.len();
        let mut buf: Vec<Complex<f64>> = x
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let w = 0.5 - 0.5 * (2.0 * PI * i as f64 / n as f64).cos();
                Complex::new(v * w, 0.0)
            })
            .collect();
        FftPlanner::new().plan_fft_forward(n).process(&mut buf);
        let mags: Vec<f64> = buf[..n / 2].iter().map(|c| c.norm()).collect();
        let k = (1..mags.len() - 1)
            .max_by(|&a, &b| mags[a].total_cmp(&mags[b]))
            .expect("non-empty spectrum");
        let (a, b, c) = (mags[k - 1].ln(), mags[k].ln(), mags[k + 1].ln());
        let delta = 0.5 * (a - c) / (a - 2.0 * b + c);
        (k as f64 + delta) * f64::from(rate) / n as f64
    }

    /// Least-squares fit of `a cos(ωn) + b sin(ωn) + dc` over `x`; returns (amplitude, phase,
    /// residual RMS). Solved with the 3×3 normal equations.
    fn fit_sinusoid(x: &[f64], f: f64, rate: u32, start: usize) -> (f64, f64, f64) {
        let w = 2.0 * PI * f / f64::from(rate);
        let basis = |n: usize| {
            let t = w * (start + n) as f64;
            [t.cos(), t.sin(), 1.0]
        };
        let mut m = [[0.0f64; 3]; 3];
        let mut r = [0.0f64; 3];
        for (n, &v) in x.iter().enumerate() {
            let b = basis(n);
            for i in 0..3 {
                r[i] += b[i] * v;
                for j in 0..3 {
                    m[i][j] += b[i] * b[j];
                }
            }
        }
        let coef = solve3(m, r);
        let mut sq = 0.0;
        for (n, &v) in x.iter().enumerate() {
            let b = basis(n);
            let e = v - (coef[0] * b[0] + coef[1] * b[1] + coef[2] * b[2]);
            sq += e * e;
        }
        let amp = coef[0].hypot(coef[1]);
        // x ≈ amp cos(wn + φ) = amp cos φ cos wn − amp sin φ sin wn.
        let phase = (-coef[1]).atan2(coef[0]);
        (amp, phase, (sq / x.len() as f64).sqrt())
    }

    fn solve3(mut m: [[f64; 3]; 3], mut r: [f64; 3]) -> [f64; 3] {
        for i in 0..3 {
            let p = (i..3)
                .max_by(|&a, &b| m[a][i].abs().total_cmp(&m[b][i].abs()))
                .expect("rows");
            m.swap(i, p);
            r.swap(i, p);
            for k in i + 1..3 {
                let f = m[k][i] / m[i][i];
                let pivot_row = m[i];
                for (a, b) in m[k][i..].iter_mut().zip(&pivot_row[i..]) {
                    *a -= f * b;
                }
                r[k] -= f * r[i];
            }
        }
        let mut x = [0.0; 3];
        for i in (0..3).rev() {
            let s: f64 = (i + 1..3).map(|j| m[i][j] * x[j]).sum();
            x[i] = (r[i] - s) / m[i][i];
        }
        x
    }

    /// How far the output leads the input, in output frames: the trimmed delay minus the
    /// filter's true delay, `⌊fft_in / 2⌋ × fft_out / fft_in`.
    fn predicted_shift(r: &Resampler) -> f64 {
        let s = r.inner.as_ref().expect("not pass-through");
        let (fi, fo) = (s.rubato.fft_size_in(), s.rubato.fft_size_out());
        s.delay as f64 - (fi / 2) as f64 * fo as f64 / fi as f64
    }

    fn expected_frames(n: usize, from: u32, to: u32) -> usize {
        (n as f64 * f64::from(to) / f64::from(from)).round() as usize
    }

    #[test]
    fn every_rate_pair_exact_length_right_pitch_aligned() {
        // Off the 1 Hz bin grid, so the estimate relies on the interpolation.
        const F: f64 = 997.3;
        let mut worst_hz: f64 = 0.0;
        let mut worst_shift: f64 = 0.0;
        for &from in &RATES {
            for &to in &RATES {
                if from == to {
                    continue;
                }
                let sp = spec(from, 1);
                let n = from as usize; // 1 s
                let input = tone(from, n, &[(F, 0.5)]);
                let mut r = Resampler::new(sp, to).expect("builds");
                let delay = r.delay_frames();
                let block = r.block_frames();
                let predicted = predicted_shift(&r);
                let out = run(&mut r, sp, &input, &[997, 1_501, 333]);
                assert_eq!(out.len(), expected_frames(n, from, to), "{from}->{to}");

                let x = channel(&out, 1, 0);
                let hz = peak_hz(&x, to);
                assert!((hz - F).abs() <= 1.0, "{from}->{to}: peak at {hz} Hz");
                worst_hz = worst_hz.max((hz - F).abs());

                // Time alignment: the phase of a fit over the middle is that of a cosine
                // starting at t = 0, so no leading zeros or delay were left in, up to rubato's
                // sub-frame rounding (see `Resampler::delay_frames`).
                let edge = to as usize / 20;
                let (amp, phase, _) = fit_sinusoid(&x[edge..x.len() - edge], F, to, edge);
                let shift = phase / (2.0 * PI * F) * f64::from(to); // in output frames
                assert!((amp - 0.5).abs() < 1e-3, "{from}->{to}: amplitude {amp}");
                assert!(
                    (shift - predicted).abs() < 0.005 && shift.abs() <= 0.5 + 1e-6,
                    "{from}->{to}: shifted by {shift} frames, predicted {predicted}"
                );
                worst_shift = worst_shift.max(shift.abs());

                // The first samples are the start of the cosine, not silence. The onset is a
                // band-limited step, so sample 0 sits near half the jump; a few ms in, the
                // output follows the cosine closely.
                assert!(x[0] > 0.15, "{from}->{to}: first sample {}", x[0]);
                let settle = to as usize / 200; // 5 ms
                for (i, &v) in x.iter().enumerate().skip(settle).take(10) {
                    let t = (i as f64 + predicted) / f64::from(to);
                    let want = 0.5 * (2.0 * PI * F * t).cos();
                    assert!(
                        (v - want).abs() < 0.01,
                        "{from}->{to}: sample {i} = {v}, want {want}"
                    );
                }
                eprintln!(
                    "{from:>5} -> {to:>5}: block {block:>4} in ({:>5.2} ms), delay {delay:>4} out \
                     ({:>5.2} ms), peak {hz:.4} Hz, shift {shift:+.4} frames, x[0] {:.3}",
                    block as f64 * 1_000.0 / f64::from(from),
                    delay as f64 * 1_000.0 / f64::from(to),
                    x[0]
                );
            }
        }
        eprintln!("worst frequency error {worst_hz:.4} Hz, worst shift {worst_shift:.5} frames");
    }

    #[test]
    fn stereo_channels_stay_separate() {
        let (from, to) = (22_050, 48_000);
        let sp = spec(from, 2);
        let n = from as usize;
        let input = tone(from, n, &[(440.0, 0.5), (1_000.0, 0.25)]);
        let mut r = Resampler::new(sp, to).expect("builds");
        let out = run(&mut r, sp, &input, &[997, 1_501, 333]);
        assert_eq!(out.len(), 2 * expected_frames(n, from, to));
        for (c, (f, amp)) in [(440.0, 0.5), (1_000.0, 0.25)].into_iter().enumerate() {
            let x = channel(&out, 2, c);
            let hz = peak_hz(&x, to);
            assert!((hz - f).abs() <= 1.0, "channel {c}: {hz} Hz");
            let edge = to as usize / 20;
            let (a, _, resid) = fit_sinusoid(&x[edge..x.len() - edge], f, to, edge);
            assert!((a - amp).abs() < 1e-3, "channel {c}: amplitude {a}");
            // The other channel's tone does not leak in.
            assert!(resid < 1e-4, "channel {c}: residual {resid}");
        }
    }

    #[test]
    fn snr_after_22050_to_16000_to_48000() {
        let f = 1_000.0;
        let a = spec(22_050, 1);
        let n = 22_050 * 2;
        let input = tone(22_050, n, &[(f, 0.5)]);
        let mut down = Resampler::new(a, 16_000).expect("builds");
        let mid = run(&mut down, a, &input, &[997, 1_501, 333]);
        assert_eq!(mid.len(), 32_000);
        let b = spec(16_000, 1);
        let mut up = Resampler::new(b, 48_000).expect("builds");
        let out = run(&mut up, b, &mid, &[1_501, 333, 997]);
        assert_eq!(out.len(), 96_000);

        let x = channel(&out, 1, 0);
        let edge = 48_000 / 20; // 50 ms
        let (amp, phase, noise) = fit_sinusoid(&x[edge..x.len() - edge], f, 48_000, edge);
        let snr = 20.0 * ((amp / 2f64.sqrt()) / noise).log10();
        eprintln!(
            "22050->16000->48000: SNR {snr:.1} dB, amplitude {amp:.6}, phase {phase:.2e} rad"
        );
        assert!(snr >= 90.0, "SNR {snr} dB");
    }

    #[test]
    fn same_rate_passes_through() {
        let sp = spec(24_000, 2);
        let mut r = Resampler::new(sp, 24_000).expect("builds");
        assert_eq!(r.delay_frames(), 0);
        let input = tone(24_000, 1_000, &[(440.0, 0.5), (880.0, 0.5)]);
        let out = run(&mut r, sp, &input, &[333]);
        assert_eq!(out, input);
    }

    #[test]
    fn short_and_empty_streams_and_reuse() {
        let sp = spec(24_000, 1);
        let mut r = Resampler::new(sp, 16_000).expect("builds");
        assert!(run(&mut r, sp, &[], &[1]).is_empty());
        // Shorter than one chunk and than the delay.
        let input = tone(24_000, 10, &[(440.0, 0.5)]);
        assert_eq!(run(&mut r, sp, &input, &[3]).len(), 7);
        // Reused after flush: same result as a fresh stage.
        let input = tone(24_000, 5_000, &[(440.0, 0.5)]);
        let again = run(&mut r, sp, &input, &[997]);
        let fresh = run(
            &mut Resampler::new(sp, 16_000).expect("builds"),
            sp,
            &input,
            &[997],
        );
        assert_eq!(again, fresh);
    }

    #[test]
    fn wrong_spec_is_rejected() {
        let mut r = Resampler::new(spec(24_000, 1), 16_000).expect("builds");
        let err = r
            .process(
                PcmBuffer::new(spec(22_050, 1), vec![0.0; 10]),
                &mut Vec::new(),
            )
            .expect_err("must fail");
        assert!(matches!(err, AudioError::SpecMismatch { .. }));
    }
}
