//! The audio half of a job: an opened engine stream → audio thread → encoded chunks.
//!
//! [`run_stream`] runs it (the job itself, with its source and events, is owned by
//! [`crate::synthesis`]). Its async half reads the engine's [`SynthStream`] and forwards the
//! bytes through a bounded channel to a blocking thread, which decodes, resamples, remixes,
//! applies gain, encodes and chunks, and hands each chunk to the caller's [`ChunkSink`]. Both
//! channels are bounded, so a slow client slows the engine (back-pressure) instead of growing
//! memory. Cancellation: the token (daemon shutdown, deadline) stops the async half at once and
//! drops the engine stream (which kills a subprocess or drops an HTTP request); a sink that
//! returns `false` (client gone) stops the audio thread, which closes the channel, which stops
//! the async half. Nothing here knows about gRPC.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    audio::{
        AudioError, InputEncoding, OutputFormat, PcmBuffer, Stage,
        chunk::{Chunk, Chunker},
        decode::{ChannelReader, Decoder, open_decoder},
        encode::{Encoder, encoder_for},
        gain::Gain,
        join::{JoinFade, Joins},
        remix::Remix,
        resample::Resampler,
    },
    engine::{EngineError, SynthEvent, SynthStream, WordTiming},
};

/// Engine byte chunks in flight between the async reader and the audio thread.
const BYTES_IN_FLIGHT: usize = 16;

/// What a job hands its caller.
#[derive(Debug)]
pub enum Output {
    /// The next chunk of encoded audio.
    Audio(Chunk),
    /// Word timings the engine reported (only when the request asked for them), delivered
    /// before the audio that follows their arrival.
    Words(Vec<WordTiming>),
}

/// Receives each output, in order, on the audio thread. Returns `false` when nobody listens
/// any more (the client left), which stops the job.
pub type ChunkSink = Box<dyn FnMut(Output) -> bool + Send>;

/// Word timings on their way from the async half to the audio thread, which delivers them
/// with the next chunks (or at the end).
type PendingWords = Arc<Mutex<Vec<WordTiming>>>;

/// How a successful job went.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobReport {
    /// Frames sent, at the output rate.
    pub frames: u64,
    /// Bytes of encoded audio sent.
    pub bytes: u64,
    /// Characters the engine billed.
    pub characters: Option<u32>,
    /// Upstream request ids.
    pub upstream_request_ids: Vec<String>,
    /// When the first chunk was handed to the sink.
    pub first_chunk_at: Option<Instant>,
}

/// Why a job failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The engine's audio could not be decoded or processed.
    #[error(transparent)]
    Audio(#[from] AudioError),
    /// The sink stopped accepting chunks: the client left.
    #[error("the client went away")]
    ClientGone,
    /// The job's token was cancelled (daemon shutdown).
    #[error("the job was cancelled")]
    Cancelled,
    /// The audio thread panicked (a bug); the daemon keeps serving.
    #[error("audio processing failed unexpectedly")]
    Panicked,
}

impl JobError {
    /// What this failure means for the client.
    pub fn classify(&self) -> crate::error::Error {
        use crate::error::Error;
        match self {
            Self::Engine(e) => e.classify(),
            Self::Audio(e) => Error::internal(format!("upstream protocol error: {e}")),
            Self::ClientGone => Error::cancelled("the client went away"),
            Self::Cancelled => Error::unavailable("herald is shutting down"),
            Self::Panicked => Error::internal("internal error while processing audio"),
        }
    }
}

/// What the audio thread reports.
#[derive(Debug, Default)]
struct AudioReport {
    frames: u64,
    bytes: u64,
    first_chunk_at: Option<Instant>,
}

/// What the audio thread makes of a stream.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Render {
    /// The format the client gets.
    pub output: OutputFormat,
    /// Linear gain applied to the audio (1.0 = unchanged).
    pub gain: f32,
    /// Target chunk duration in ms.
    pub chunk_ms: u32,
}

/// Run an opened engine stream (from the engine, the cache or a fallback) to the end.
pub async fn run_stream(
    mut stream: SynthStream,
    render: Render,
    cancel: CancellationToken,
    sink: ChunkSink,
) -> Result<JobReport, JobError> {
    let Render {
        output, chunk_ms, ..
    } = render;
    let mut sink = Some(sink);
    let words = PendingWords::default();
    // Joins between an engine's pieces, as frame positions for the audio thread's fade stage.
    let joins = Joins::default();
    let mut bytes_in: u64 = 0;
    let mut audio: Option<(mpsc::Sender<Bytes>, InputEncoding, AudioThread)> = None;
    let mut outcome: Result<(Option<u32>, Vec<String>), EngineError> = Err(EngineError::Truncated);
    loop {
        let event = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(JobError::Cancelled),
            e = stream.next() => e,
        };
        match event {
            None => break,
            Some(Err(error)) => {
                outcome = Err(error);
                break;
            }
            Some(Ok(SynthEvent::Words(w))) => {
                crate::error::lock(&words).extend(w);
            }
            // Pushed before any later audio is sent, so the stage knows it in time.
            Some(Ok(SynthEvent::Boundary)) => match audio.as_ref().map(|(_, e, _)| *e) {
                Some(InputEncoding::Pcm16Le(spec)) => {
                    joins.push(bytes_in / (2 * u64::from(spec.channels)));
                }
                None => joins.push(0),
                Some(_) => tracing::debug!("a join mark in a stream that is not raw PCM: ignored"),
            },
            Some(Ok(SynthEvent::Finished {
                characters,
                upstream_request_ids,
            })) => {
                outcome = Ok((characters, upstream_request_ids));
                break;
            }
            Some(Ok(SynthEvent::Audio { encoding, data })) => {
                let (tx, first_encoding, _) = match &mut audio {
                    Some(a) => a,
                    None => {
                        let (tx, rx) = mpsc::channel(BYTES_IN_FLIGHT);
                        let Some(sink) = sink.take() else {
                            return Err(JobError::Panicked);
                        };
                        let thread = AudioThread::spawn(
                            encoding,
                            rx,
                            render,
                            sink,
                            Arc::clone(&words),
                            joins.clone(),
                        );
                        audio.insert((tx, encoding, thread))
                    }
                };
                if *first_encoding != encoding {
                    outcome = Err(EngineError::Protocol(format!(
                        "audio encoding changed mid-stream from {first_encoding:?} to {encoding:?}"
                    )));
                    break;
                }
                bytes_in += data.len() as u64;
                let sent = tokio::select! {
                    biased;
                    () = cancel.cancelled() => return Err(JobError::Cancelled),
                    r = tx.send(data) => r.is_ok(),
                };
                if !sent {
                    // The audio thread stopped: the client left, or the audio was malformed.
                    break;
                }
            }
        }
    }
    // Stop the engine now (kills a subprocess, drops an HTTP request) whatever happened.
    drop(stream);

    let report = match audio {
        Some((tx, _, thread)) => {
            drop(tx);
            thread.join().await?
        }
        None => match sink.take() {
            // No audio at all: still send a valid (empty) stream, e.g. a lone WAV header. The
            // sink blocks, so this runs on a blocking thread too.
            Some(sink) if outcome.is_ok() => {
                AudioThread(tokio::task::spawn_blocking(move || {
                    finish_empty(output, chunk_ms, sink, words)
                }))
                .join()
                .await?
            }
            _ => AudioReport::default(),
        },
    };
    let (characters, upstream_request_ids) = outcome?;
    Ok(JobReport {
        frames: report.frames,
        bytes: report.bytes,
        characters,
        upstream_request_ids,
        first_chunk_at: report.first_chunk_at,
    })
}

/// The blocking thread that turns engine bytes into chunks.
struct AudioThread(tokio::task::JoinHandle<Result<AudioReport, JobError>>);

impl AudioThread {
    fn spawn(
        encoding: InputEncoding,
        rx: mpsc::Receiver<Bytes>,
        render: Render,
        sink: ChunkSink,
        words: PendingWords,
        joins: Joins,
    ) -> Self {
        Self(tokio::task::spawn_blocking(move || {
            let decoder = open_decoder(encoding, ChannelReader::new(rx))?;
            let mut chain =
                AudioChain::new(render.output, render.gain, render.chunk_ms, sink, words)?;
            // Only raw PCM can carry joins: a byte position there is a frame position.
            if matches!(encoding, InputEncoding::Pcm16Le(_)) {
                chain.joins = Some(joins);
            }
            chain.run(decoder)
        }))
    }

    async fn join(self) -> Result<AudioReport, JobError> {
        match self.0.await {
            Ok(result) => result,
            Err(error) => {
                tracing::error!(%error, "audio thread panicked");
                Err(JobError::Panicked)
            }
        }
    }
}

fn finish_empty(
    output: OutputFormat,
    chunk_ms: u32,
    sink: ChunkSink,
    words: PendingWords,
) -> Result<AudioReport, JobError> {
    let mut chain = AudioChain::new(output, 1.0, chunk_ms, sink, words)?;
    chain.finish()?;
    Ok(chain.report)
}

/// decode → resample → remix → gain → encode → chunk, on the audio thread.
///
/// The PCM stages are built from the first decoded buffer's actual spec (an engine's WAV header
/// may announce a rate other than the one expected).
struct AudioChain {
    output: OutputFormat,
    gain: f32,
    stages: Option<Vec<Box<dyn Stage>>>,
    input_spec: Option<crate::audio::AudioSpec>,
    encoder: Box<dyn Encoder>,
    chunker: Chunker,
    sink: ChunkSink,
    words: PendingWords,
    /// The stream's joins, when it can have any (the first stage then fades at them).
    joins: Option<Joins>,
    report: AudioReport,
    // Reused buffers.
    encoded: Vec<u8>,
    chunks: Vec<Chunk>,
}

impl AudioChain {
    fn new(
        output: OutputFormat,
        gain: f32,
        chunk_ms: u32,
        sink: ChunkSink,
        words: PendingWords,
    ) -> Result<Self, AudioError> {
        Ok(Self {
            output,
            gain,
            stages: None,
            input_spec: None,
            encoder: encoder_for(output)?,
            chunker: Chunker::new(output, chunk_ms),
            sink,
            words,
            joins: None,
            report: AudioReport::default(),
            encoded: Vec::new(),
            chunks: Vec::new(),
        })
    }

    fn run(mut self, mut decoder: Box<dyn Decoder>) -> Result<AudioReport, JobError> {
        while let Some(buffer) = decoder.next_buffer()? {
            if buffer.is_empty() {
                continue;
            }
            self.process(buffer)?;
        }
        self.finish()?;
        Ok(self.report)
    }

    fn build_stages(&mut self, input: crate::audio::AudioSpec) -> Result<(), AudioError> {
        let input = input.check_input("decoded")?;
        let mut stages: Vec<Box<dyn Stage>> = Vec::new();
        if let Some(joins) = self.joins.take() {
            stages.push(Box::new(JoinFade::new(joins)));
        }
        if input.sample_rate != self.output.spec.sample_rate {
            stages.push(Box::new(Resampler::new(
                input,
                self.output.spec.sample_rate,
            )?));
        }
        if input.channels != self.output.spec.channels {
            stages.push(Box::new(Remix::new(self.output.spec.channels)));
        }
        if (self.gain - 1.0).abs() > f32::EPSILON {
            stages.push(Box::new(Gain::new(self.gain)));
        }
        self.stages = Some(stages);
        self.input_spec = Some(input);
        Ok(())
    }

    fn process(&mut self, buffer: PcmBuffer) -> Result<(), JobError> {
        match self.input_spec {
            None => self.build_stages(buffer.spec)?,
            Some(spec) if spec != buffer.spec => {
                return Err(AudioError::Unsupported {
                    format: "decoded",
                    reason: format!(
                        "audio format changed mid-stream from {spec:?} to {:?}",
                        buffer.spec
                    ),
                }
                .into());
            }
            Some(_) => {}
        }
        let mut buffers = vec![buffer];
        if let Some(stages) = &mut self.stages {
            for stage in stages.iter_mut() {
                let mut next = Vec::with_capacity(buffers.len());
                for b in buffers {
                    stage.process(b, &mut next)?;
                }
                buffers = next;
            }
        }
        for b in &buffers {
            self.encode(b)?;
        }
        Ok(())
    }

    fn encode(&mut self, pcm: &PcmBuffer) -> Result<(), JobError> {
        if pcm.is_empty() {
            return Ok(());
        }
        self.encoded.clear();
        self.encoder.encode(pcm, &mut self.encoded)?;
        self.chunker
            .push(&self.encoded, pcm.frames(), &mut self.chunks);
        self.deliver()
    }

    /// Flush every stage in order (each stage's tail goes through the stages after it), then
    /// the encoder and the chunker.
    fn finish(&mut self) -> Result<(), JobError> {
        self.flush_stages()?;
        self.encoded.clear();
        self.encoder.finish(&mut self.encoded)?;
        if !self.encoded.is_empty() {
            self.chunker.push(&self.encoded, 0, &mut self.chunks);
        }
        self.chunker.finish(&mut self.chunks);
        self.deliver()
    }

    /// Flush every stage in order and encode their tails; the stages are gone after it (the
    /// next buffer builds new ones).
    fn flush_stages(&mut self) -> Result<(), JobError> {
        self.input_spec = None;
        if let Some(mut stages) = self.stages.take() {
            let mut carried: Vec<PcmBuffer> = Vec::new();
            for stage in stages.iter_mut() {
                let mut next = Vec::new();
                for b in carried {
                    stage.process(b, &mut next)?;
                }
                stage.flush(&mut next)?;
                carried = next;
            }
            for b in &carried {
                self.encode(b)?;
            }
        }
        Ok(())
    }

    fn deliver(&mut self) -> Result<(), JobError> {
        let words = std::mem::take(&mut *crate::error::lock(&self.words));
        if !words.is_empty() && !(self.sink)(Output::Words(words)) {
            return Err(JobError::ClientGone);
        }
        for chunk in self.chunks.drain(..) {
            if self.report.first_chunk_at.is_none() {
                self.report.first_chunk_at = Some(Instant::now());
            }
            self.report.frames += u64::from(chunk.frames);
            self.report.bytes += chunk.data.len() as u64;
            if !(self.sink)(Output::Audio(chunk)) {
                return Err(JobError::ClientGone);
            }
        }
        Ok(())
    }
}

// === segmented streams (SynthesizeStream) ===

/// One sentence of a segmented stream, as its audio thread takes it: the sentence's engine
/// bytes (a stream of their own: a WAV header each, a rate each), and what the async half
/// learns while forwarding them.
#[derive(Debug)]
pub struct Segment {
    /// The encoding of `bytes`.
    pub encoding: InputEncoding,
    /// The bytes; the sender is dropped at the sentence's end.
    pub bytes: mpsc::Receiver<Bytes>,
    /// Word timings, in ms from the sentence's start, as they arrive.
    pub words: Arc<Mutex<Vec<WordTiming>>>,
    /// Joins between an engine's pieces inside the sentence, in frames from its start (raw
    /// PCM only).
    pub joins: Joins,
}

/// Where one sentence is in a segmented stream.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SegmentSpan {
    /// Its start, in ms from the start of the stream.
    pub begin_ms: u64,
    /// Its duration, ms.
    pub duration_ms: u64,
}

/// How a segmented stream went on its audio thread.
#[derive(Debug, Default)]
pub struct SegmentsReport {
    /// Frames sent, at the output rate.
    pub frames: u64,
    /// Bytes of encoded audio sent.
    pub bytes: u64,
    /// When the first chunk was handed to the sink.
    pub first_chunk_at: Option<Instant>,
    /// Each segment, in order.
    pub spans: Vec<SegmentSpan>,
}

/// The audio thread of a segmented stream: every segment it receives goes through one chain
/// (one encoder, one chunker: one valid stream of the output format). Resampler and remix
/// carry their state from one segment to the next while the segments' spec stays the same;
/// when it changes (a fallback engine at another rate) the stages are flushed and rebuilt.
/// Segments meet at a join, faded out and in ([`JoinFade`]), as an engine's pieces do.
pub struct SegmentsThread(tokio::task::JoinHandle<Result<SegmentsReport, JobError>>);

impl SegmentsThread {
    /// Start the thread; it ends when `segments` closes (or the sink stops listening).
    pub fn spawn(render: Render, segments: mpsc::Receiver<Segment>, sink: ChunkSink) -> Self {
        Self(tokio::task::spawn_blocking(move || {
            run_segments(render, segments, sink)
        }))
    }

    /// Wait for the thread's end.
    pub async fn join(self) -> Result<SegmentsReport, JobError> {
        match self.0.await {
            Ok(result) => result,
            Err(error) => {
                tracing::error!(%error, "audio thread panicked");
                Err(JobError::Panicked)
            }
        }
    }
}

fn run_segments(
    render: Render,
    mut segments: mpsc::Receiver<Segment>,
    sink: ChunkSink,
) -> Result<SegmentsReport, JobError> {
    let mut chain = AudioChain::new(
        render.output,
        render.gain,
        render.chunk_ms,
        sink,
        PendingWords::default(),
    )?;
    // Joins of the current stage set, in frames since it was built.
    let mut joins = Joins::default();
    let mut position: u64 = 0;
    let mut elapsed_ms = 0.0f64;
    let mut spans = Vec::new();
    while let Some(segment) = segments.blocking_recv() {
        let Segment {
            encoding,
            bytes,
            words,
            joins: inner,
        } = segment;
        let begin_ms = elapsed_ms;
        let mut start = position;
        let mut first = true;
        let mut frames_in: u64 = 0;
        let mut rate = 0u32;
        let mut decoder = open_decoder(encoding, ChannelReader::new(bytes))?;
        while let Some(buffer) = decoder.next_buffer()? {
            if buffer.is_empty() {
                continue;
            }
            if first {
                first = false;
                match chain.input_spec {
                    Some(spec) if spec == buffer.spec => joins.push(position),
                    had => {
                        if had.is_some() {
                            // The previous segments fade out and their stages' tails go out.
                            joins.push(position);
                            chain.flush_stages()?;
                        }
                        joins = Joins::default();
                        chain.joins = Some(joins.clone());
                        chain.build_stages(buffer.spec)?;
                        if had.is_some() {
                            joins.push(0);
                        }
                        position = 0;
                    }
                }
                start = position;
                rate = buffer.spec.sample_rate;
            }
            for j in inner.drain() {
                joins.push(start + j);
            }
            let taken = std::mem::take(&mut *crate::error::lock(&words));
            if !taken.is_empty() {
                crate::error::lock(&chain.words).extend(shifted(taken, begin_ms));
            }
            let n = buffer.frames() as u64;
            chain.process(buffer)?;
            position += n;
            frames_in += n;
        }
        let taken = std::mem::take(&mut *crate::error::lock(&words));
        crate::error::lock(&chain.words).extend(shifted(taken, begin_ms));
        let duration_ms = if rate == 0 {
            0.0
        } else {
            frames_in as f64 * 1000.0 / f64::from(rate)
        };
        elapsed_ms += duration_ms;
        spans.push(SegmentSpan {
            begin_ms: begin_ms.round() as u64,
            duration_ms: duration_ms.round() as u64,
        });
    }
    chain.finish()?;
    let report = chain.report;
    Ok(SegmentsReport {
        frames: report.frames,
        bytes: report.bytes,
        first_chunk_at: report.first_chunk_at,
        spans,
    })
}

/// `words` moved `by_ms` later.
fn shifted(words: Vec<WordTiming>, by_ms: f64) -> impl Iterator<Item = WordTiming> {
    let by = by_ms.round() as u32;
    words.into_iter().map(move |w| WordTiming {
        text: w.text,
        begin_ms: w.begin_ms.saturating_add(by),
        end_ms: w.end_ms.saturating_add(by),
    })
}

#[cfg(test)]
mod tests {
    //! Segmented streams on their own: segments of different rates through one chain.

    use super::*;
    use crate::audio::{AudioSpec, OutputEncoding};

    /// A segment of `ms` of a constant level at `rate`, as raw s16le, with `words`.
    fn segment(rate: u32, ms: u32, words: Vec<WordTiming>) -> Segment {
        let (tx, rx) = mpsc::channel(4);
        let frames = (rate * ms / 1000) as usize;
        let bytes: Vec<u8> = std::iter::repeat_n(8192i16.to_le_bytes(), frames)
            .flatten()
            .collect();
        tx.try_send(Bytes::from(bytes)).unwrap();
        Segment {
            encoding: InputEncoding::Pcm16Le(AudioSpec {
                sample_rate: rate,
                channels: 1,
            }),
            bytes: rx,
            words: Arc::new(Mutex::new(words)),
            joins: Joins::default(),
        }
    }

    fn word(text: &str, begin_ms: u32) -> WordTiming {
        WordTiming {
            text: text.into(),
            begin_ms,
            end_ms: begin_ms + 10,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn segments_of_different_rates_make_one_stream_with_their_spans_and_words() {
        let render = Render {
            output: OutputFormat {
                encoding: OutputEncoding::PcmS16Le,
                spec: AudioSpec {
                    sample_rate: 48_000,
                    channels: 1,
                },
            },
            gain: 1.0,
            chunk_ms: 20,
        };
        let (tx, rx) = mpsc::channel(4);
        let out: Arc<Mutex<(u64, Vec<WordTiming>)>> = Arc::default();
        let sink_out = Arc::clone(&out);
        let sink: ChunkSink = Box::new(move |o| {
            let mut out = crate::error::lock(&sink_out);
            match o {
                Output::Audio(chunk) => out.0 += u64::from(chunk.frames),
                Output::Words(w) => out.1.extend(w),
            }
            true
        });
        let thread = SegmentsThread::spawn(render, rx, sink);
        // 16 kHz, 16 kHz again (the resampler carries on), then 24 kHz (stages rebuilt).
        tx.send(segment(16_000, 300, vec![word("a", 0)]))
            .await
            .unwrap();
        tx.send(segment(16_000, 200, vec![word("b", 5)]))
            .await
            .unwrap();
        tx.send(segment(24_000, 500, vec![word("c", 0)]))
            .await
            .unwrap();
        drop(tx);
        let report = thread.join().await.unwrap();
        let spans: Vec<(u64, u64)> = report
            .spans
            .iter()
            .map(|s| (s.begin_ms, s.duration_ms))
            .collect();
        assert_eq!(spans, vec![(0, 300), (300, 200), (500, 500)]);
        let (frames, words) = crate::error::lock(&out).clone();
        // 1 s in all, at 48 kHz: every frame of every segment, nothing more.
        assert_eq!(frames, 48_000);
        assert_eq!(report.frames, frames);
        let begins: Vec<(&str, u32)> = words
            .iter()
            .map(|w| (w.text.as_str(), w.begin_ms))
            .collect();
        assert_eq!(begins, vec![("a", 0), ("b", 305), ("c", 500)]);
    }
}
