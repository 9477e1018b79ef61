//! Joins: the [`JoinFade`] stage fades out and back in where two independently synthesized
//! pieces of one stream meet, so the step between them never clicks.
//!
//! An engine that synthesizes long text in pieces marks each join in its stream
//! (`SynthEvent::Boundary`); the job's reader turns the mark into a frame position and puts it
//! in the stream's [`Joins`] before it forwards any later audio, so the stage, which counts the
//! frames it takes in, always knows a join before it sees the audio after it. Around each join
//! the last [`JOIN_FADE`] of the piece before fades out and the first of the piece after fades
//! in (raised cosine). The stage holds back only the last fade's worth of audio until it knows
//! whether a join follows; the stream's own start and end are never faded.
//!
//! It owns the fades and nothing else: it must not change rate, channels or length, and must not
//! run anywhere but the audio thread (it is a [`Stage`]).

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use super::{AudioError, AudioSpec, PcmBuffer, Stage, encode::f32_to_i16};
use crate::error::lock;

/// Fade length on each side of a join.
pub const JOIN_FADE: Duration = Duration::from_millis(8);

/// Where the joins of one stream are, in frames from its start, in order.
///
/// The job's reader pushes, the [`JoinFade`] stage takes; the lock is held for one queue
/// operation, never across an await or any audio work.
#[derive(Clone, Debug, Default)]
pub struct Joins(Arc<Mutex<VecDeque<u64>>>);

impl Joins {
    /// A join before frame `frame` (counted from the stream's start at the engine's rate).
    pub fn push(&self, frame: u64) {
        lock(&self.0).push_back(frame);
    }

    /// Every join known now, taken out, in order.
    pub fn drain(&self) -> Vec<u64> {
        lock(&self.0).drain(..).collect()
    }

    /// The next join, if one is known.
    fn next(&self) -> Option<u64> {
        lock(&self.0).front().copied()
    }

    fn pop(&self) {
        lock(&self.0).pop_front();
    }
}

/// Fades around the joins of one stream (see the module docs).
#[derive(Debug)]
pub struct JoinFade {
    joins: Joins,
    fade: Duration,
    /// The stream's spec (that of its first buffer).
    spec: Option<AudioSpec>,
    /// [`JoinFade::fade`] in frames at the stream's rate.
    fade_frames: usize,
    /// Samples not yet passed on: at most the last `fade_frames` frames.
    held: Vec<f32>,
    /// Frames of fade-in still to apply to the current piece.
    fade_in_left: usize,
    /// Frames taken in so far.
    position: u64,
}

impl JoinFade {
    /// A stage fading [`JOIN_FADE`] on each side of the joins in `joins`.
    pub fn new(joins: Joins) -> Self {
        Self::with_fade(joins, JOIN_FADE)
    }

    /// A stage fading `fade` on each side of the joins in `joins`.
    pub fn with_fade(joins: Joins, fade: Duration) -> Self {
        Self {
            joins,
            fade,
            spec: None,
            fade_frames: 0,
            held: Vec::new(),
            fade_in_left: 0,
            position: 0,
        }
    }

    fn channels(&self) -> usize {
        self.spec.map_or(1, |s| usize::from(s.channels))
    }

    /// Take whole frames; pass on all but the last `fade_frames`.
    fn take(&mut self, samples: &[f32], out: &mut Vec<f32>) {
        let ch = self.channels();
        self.position += (samples.len() / ch) as u64;
        self.held.extend_from_slice(samples);
        let frames = self.held.len() / ch;
        if frames <= self.fade_frames {
            return;
        }
        let start = out.len();
        out.extend(self.held.drain(..(frames - self.fade_frames) * ch));
        self.fade_in(&mut out[start..]);
    }

    /// A join here: the held tail fades out, the next piece will fade in.
    fn join(&mut self, out: &mut Vec<f32>) {
        let ch = self.channels();
        let start = out.len();
        out.append(&mut self.held);
        let tail = &mut out[start..];
        self.fade_in(tail);
        let frames = tail.len() / ch;
        for i in 0..frames.min(self.fade_frames) {
            let g = fade_gain(i, self.fade_frames);
            let frame = frames - 1 - i;
            tail[frame * ch..(frame + 1) * ch]
                .iter_mut()
                .for_each(|s| *s *= g);
        }
        self.fade_in_left = self.fade_frames;
    }

    /// Apply what is left of the current piece's fade-in to `samples`, its next frames.
    fn fade_in(&mut self, samples: &mut [f32]) {
        if self.fade_in_left == 0 {
            return;
        }
        let ch = self.channels();
        let done = self.fade_frames - self.fade_in_left;
        let n = (samples.len() / ch).min(self.fade_in_left);
        for i in 0..n {
            let g = fade_gain(done + i, self.fade_frames);
            samples[i * ch..(i + 1) * ch]
                .iter_mut()
                .for_each(|s| *s *= g);
        }
        self.fade_in_left -= n;
    }

    /// Apply every known join at or before the current position.
    fn joins_due(&mut self, out: &mut Vec<f32>) {
        while self.joins.next().is_some_and(|f| f <= self.position) {
            self.joins.pop();
            self.join(out);
        }
    }
}

impl Stage for JoinFade {
    fn process(&mut self, input: PcmBuffer, out: &mut Vec<PcmBuffer>) -> Result<(), AudioError> {
        match self.spec {
            None => {
                self.spec = Some(input.spec);
                // Rates are at most a few hundred kHz and fades a few ms: no overflow.
                self.fade_frames = (u128::from(input.spec.sample_rate) * self.fade.as_micros()
                    / 1_000_000) as usize;
            }
            Some(spec) if spec != input.spec => {
                return Err(AudioError::SpecMismatch {
                    stage: "join fade",
                    expected: spec,
                    actual: input.spec,
                });
            }
            Some(_) => {}
        }
        let ch = self.channels();
        let mut samples = Vec::with_capacity(input.samples.len() + self.held.len());
        let mut rest = &input.samples[..];
        loop {
            self.joins_due(&mut samples);
            let frames = rest.len() / ch;
            if frames == 0 {
                break;
            }
            let take = match self.joins.next() {
                Some(f) if f < self.position + frames as u64 => (f - self.position) as usize,
                _ => frames,
            };
            let (now, later) = rest.split_at(take * ch);
            self.take(now, &mut samples);
            rest = later;
        }
        if !samples.is_empty() {
            out.push(PcmBuffer::new(input.spec, samples));
        }
        Ok(())
    }

    fn flush(&mut self, out: &mut Vec<PcmBuffer>) -> Result<(), AudioError> {
        let Some(spec) = self.spec else {
            return Ok(());
        };
        // A join at the very end (a last piece without audio) still fades the tail out.
        let mut samples = Vec::new();
        self.joins_due(&mut samples);
        let start = samples.len();
        samples.append(&mut self.held);
        self.fade_in(&mut samples[start..]);
        if !samples.is_empty() {
            out.push(PcmBuffer::new(spec, samples));
        }
        Ok(())
    }
}

/// `pcm` (s16le of `spec`, whole frames) with the fades of [`JoinFade`] applied at `joins`
/// (frame positions, in order): what a stream with those joins sounds like after the stage,
/// for audio that is stored rather than played (the cache).
pub fn fade_s16le(spec: AudioSpec, pcm: &[u8], joins: &[u64]) -> Result<Vec<u8>, AudioError> {
    if joins.is_empty() {
        return Ok(pcm.to_vec());
    }
    let marks = Joins::default();
    joins.iter().for_each(|&f| marks.push(f));
    let samples = pcm
        .chunks_exact(2)
        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32_768.0)
        .collect();
    let mut stage = JoinFade::new(marks);
    let mut out = Vec::new();
    stage.process(PcmBuffer::new(spec, samples), &mut out)?;
    stage.flush(&mut out)?;
    Ok(out
        .iter()
        .flat_map(|b| &b.samples)
        .flat_map(|s| f32_to_i16(*s).to_le_bytes())
        .collect())
}

/// Raised-cosine gain of frame `i` of an `n`-frame fade-in (0 → 1).
fn fade_gain(i: usize, n: usize) -> f32 {
    let x = (i as f32 + 0.5) / n as f32;
    0.5 - 0.5 * (std::f32::consts::PI * x).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: AudioSpec = AudioSpec {
        sample_rate: 16_000,
        channels: 1,
    };

    fn run(stage: &mut JoinFade, buffers: &[&[f32]]) -> Vec<f32> {
        let mut out = Vec::new();
        for b in buffers {
            stage
                .process(PcmBuffer::new(SPEC, b.to_vec()), &mut out)
                .unwrap();
        }
        stage.flush(&mut out).unwrap();
        out.into_iter().flat_map(|b| b.samples).collect()
    }

    #[test]
    fn joins_fade_out_and_in_and_keep_every_frame() {
        // 1 ms = 16 frames at 16 kHz; two pieces of 100 frames, the join known only after the
        // first piece's audio went through (as when the engine's mark arrives late).
        let joins = Joins::default();
        let mut stage = JoinFade::with_fade(joins.clone(), Duration::from_millis(1));
        let loud = [0.3f32; 100];
        let mut out = Vec::new();
        stage
            .process(PcmBuffer::new(SPEC, loud[..51].to_vec()), &mut out)
            .unwrap();
        stage
            .process(PcmBuffer::new(SPEC, loud[51..].to_vec()), &mut out)
            .unwrap();
        joins.push(100);
        stage
            .process(PcmBuffer::new(SPEC, loud.to_vec()), &mut out)
            .unwrap();
        stage.flush(&mut out).unwrap();
        let s: Vec<f32> = out.into_iter().flat_map(|b| b.samples).collect();
        assert_eq!(s.len(), 200);
        assert_eq!(s[0], 0.3, "the stream's start is not faded");
        assert!(
            s[99].abs() < 0.006 && s[100].abs() < 0.006,
            "{} {}",
            s[99],
            s[100]
        );
        assert_eq!(s[199], 0.3, "the stream's end is not faded");
        let max_step = s
            .windows(2)
            .map(|w| (w[1] - w[0]).abs())
            .fold(0.0, f32::max);
        assert!(max_step < 0.06, "largest step {max_step}");
    }

    #[test]
    fn a_join_inside_a_buffer_splits_it_at_the_frame() {
        let joins = Joins::default();
        joins.push(40);
        joins.push(80);
        let mut stage = JoinFade::with_fade(joins, Duration::from_millis(1));
        let s = run(&mut stage, &[&[0.5; 120]]);
        assert_eq!(s.len(), 120);
        for at in [40, 80] {
            assert!(
                s[at - 1] < 0.01 && s[at] < 0.01,
                "{at}: {} {}",
                s[at - 1],
                s[at]
            );
            assert!(
                s[at - 20] == 0.5 && s[at + 20] == 0.5,
                "{at}: only 16 frames fade"
            );
        }
        assert_eq!((s[0], s[119]), (0.5, 0.5));
    }

    #[test]
    fn without_joins_audio_passes_unchanged_and_a_join_at_the_end_fades_out() {
        let mut stage = JoinFade::new(Joins::default());
        let input: Vec<f32> = (0..1000).map(|i| (i as f32 / 1000.0).sin()).collect();
        assert_eq!(run(&mut stage, &[&input[..10], &input[10..]]), input);
        let joins = Joins::default();
        let mut stage = JoinFade::new(joins.clone());
        joins.push(1000);
        let s = run(&mut stage, &[&[0.5; 1000]]);
        assert_eq!(s.len(), 1000);
        assert!(s[999] < 0.01, "{}", s[999]);
    }

    #[test]
    fn stereo_frames_fade_together() {
        let spec = AudioSpec {
            sample_rate: 16_000,
            channels: 2,
        };
        let joins = Joins::default();
        joins.push(50);
        let mut stage = JoinFade::with_fade(joins, Duration::from_millis(1));
        let mut out = Vec::new();
        stage
            .process(PcmBuffer::new(spec, vec![0.5; 200]), &mut out)
            .unwrap();
        stage.flush(&mut out).unwrap();
        let s: Vec<f32> = out.into_iter().flat_map(|b| b.samples).collect();
        assert_eq!(s.len(), 200);
        for frame in s.chunks_exact(2) {
            assert_eq!(frame[0], frame[1]);
        }
        assert!(s[99] < 0.01 && s[100] < 0.01);
    }

    #[test]
    fn stored_audio_gets_the_same_fades_as_played_audio() {
        let pcm: Vec<u8> = (0..400i16)
            .flat_map(|i| (i * 50 - 10_000).to_le_bytes())
            .collect();
        let stored = fade_s16le(SPEC, &pcm, &[200]).unwrap();
        let joins = Joins::default();
        joins.push(200);
        let mut stage = JoinFade::new(joins);
        let played = run(
            &mut stage,
            &[&pcm
                .chunks_exact(2)
                .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32_768.0)
                .collect::<Vec<_>>()],
        );
        let played: Vec<u8> = played
            .iter()
            .flat_map(|s| f32_to_i16(*s).to_le_bytes())
            .collect();
        assert_eq!(stored, played);
        assert_ne!(stored, pcm);
        assert_eq!(fade_s16le(SPEC, &pcm, &[]).unwrap(), pcm);
    }
}
