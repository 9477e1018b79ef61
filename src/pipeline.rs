//! The audio half of a job: an opened engine stream → the audio chain → encoded chunks.
//!
//! [`run_stream`] runs it (the job itself, with its source and events, is owned by
//! [`crate::synthesis`]), inside the job's own async task: no thread per stream. Each engine
//! chunk is pushed into a push decoder ([`crate::audio::decode`]), and the chain (decode →
//! join fade → resample → remix → gain → encode → chunk) runs over what it completes in work
//! items of about [`ITEM_MS`] of audio each. A cheap chain (no resampler, no MP3 decoding, no
//! MP3/Opus/FLAC encoding) runs its items inline on the tokio worker; a chain with a heavy
//! stage hands each item to the daemon's one bounded CPU pool ([`pool`]), one item in flight
//! per job, so the pool's FIFO is round-robin across jobs. The chunks an item makes go to the
//! caller's [`Sink`], awaited one by one: a bounded channel to a slow client stops the job,
//! which stops reading the engine (back-pressure) instead of growing memory. Cancellation: the
//! token (daemon shutdown, deadline) stops the job at its next await and drops the engine
//! stream (which kills a subprocess or drops an HTTP request); a sink that answers `false`
//! (client gone) ends the job the same way. A panic inside an item becomes
//! [`JobError::Panicked`] for that job only. Nothing here knows about gRPC.

pub mod pool;

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    audio::{
        AudioError, InputEncoding, OutputEncoding, OutputFormat, PcmBuffer, Stage,
        chunk::{Chunk, Chunker},
        decode::{PushDecoder, decoder_for},
        encode::{Encoder, encoder_for},
        gain::Gain,
        join::{JoinFade, Joins},
        remix::Remix,
        resample::Resampler,
    },
    engine::{EngineError, SynthEvent, SynthStream, WordTiming},
};

/// Audio per work item, ms of input: the most one job holds a pool thread (or a tokio worker)
/// at a time, whatever the size of the engine's (or the cache's) chunks.
pub const ITEM_MS: u32 = 40;
/// The most items one pool turn runs back to back while no other job waits for a thread
/// (a whole file converted at once then pays one hand-off per ~0.6 s of audio, not per item).
const BATCH_ITEMS: usize = 16;
/// Input pushed into the decoder before the chain runs over it, while the next input is
/// already there (a cache hit, a burst from an engine): fewer, fuller pool turns. Input that
/// is followed by a wait runs at once, so this never delays audio.
const BATCH_BYTES: usize = 64 * 1024;

/// What a job hands its caller.
#[derive(Debug)]
pub enum Output {
    /// The next chunk of encoded audio.
    Audio(Chunk),
    /// Word timings the engine reported (only when the request asked for them), delivered
    /// before the audio that follows their arrival.
    Words(Vec<WordTiming>),
}

/// Where a job's outputs go, in order.
pub trait Sink: Send + 'static {
    /// Hands `out` on, waiting while the reader is behind (back-pressure); `false` when
    /// nobody listens any more (the client left), which stops the job.
    fn send(&mut self, out: Output) -> impl Future<Output = bool> + Send;
}

/// A sink that never waits: a function called with each output (benches, tests).
pub type ChunkSink = Box<dyn FnMut(Output) -> bool + Send>;

impl Sink for ChunkSink {
    fn send(&mut self, out: Output) -> impl Future<Output = bool> + Send {
        std::future::ready(self(out))
    }
}

/// A bounded channel as a sink: each output, wrapped, waits for room in the channel.
#[derive(Debug)]
pub struct ChannelSink<T> {
    tx: mpsc::Sender<T>,
    wrap: fn(Output) -> T,
}

impl<T> ChannelSink<T> {
    /// A sink sending `wrap(output)` on `tx`.
    pub fn new(tx: mpsc::Sender<T>, wrap: fn(Output) -> T) -> Self {
        Self { tx, wrap }
    }
}

impl<T: Send + 'static> Sink for ChannelSink<T> {
    fn send(&mut self, out: Output) -> impl Future<Output = bool> + Send {
        let item = (self.wrap)(out);
        let tx = &self.tx;
        async move { tx.send(item).await.is_ok() }
    }
}

/// Word timings on their way from the engine to the chain, which delivers them with the next
/// chunks (or at the end).
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
    /// Audio processing panicked (a bug): this job fails, the daemon keeps serving.
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

/// What the sink was handed.
#[derive(Debug, Default)]
struct AudioReport {
    frames: u64,
    bytes: u64,
    first_chunk_at: Option<Instant>,
}

/// What the audio chain makes of a stream.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Render {
    /// The format the client gets.
    pub output: OutputFormat,
    /// Linear gain applied to the audio (1.0 = unchanged).
    pub gain: f32,
    /// Target chunk duration in ms.
    pub chunk_ms: u32,
    /// The audio plays on a local device as it is made: its items go to the CPU pool's first
    /// lane ([`pool::Lane::First`]), ahead of conversions that can wait.
    pub realtime: bool,
}

/// Run an opened engine stream (from the engine, the cache or a fallback) to the end.
pub async fn run_stream(
    mut stream: SynthStream,
    render: Render,
    cancel: CancellationToken,
    sink: impl Sink,
) -> Result<JobReport, JobError> {
    let words = PendingWords::default();
    // Joins between an engine's pieces, as frame positions for the chain's fade stage.
    let joins = Joins::default();
    let mut bytes_in: u64 = 0;
    // The chain, from the first audio on.
    let mut runner: Option<Runner<_>> = None;
    let mut sink = Some(sink);
    let mut first_encoding: Option<InputEncoding> = None;
    let mut outcome: Result<(Option<u32>, Vec<String>), EngineError> = Err(EngineError::Truncated);
    loop {
        // Input pushed and not processed waits only while more is already there.
        let ready = match &runner {
            Some(r) if r.pending > 0 => stream.next().now_or_never(),
            _ => None,
        };
        let event = match ready {
            Some(event) => event,
            None => {
                if let Some(r) = &mut runner {
                    r.settle().await?;
                }
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => return Err(JobError::Cancelled),
                    e = stream.next() => e,
                }
            }
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
            // Pushed before any later audio is processed, so the stage knows it in time.
            Some(Ok(SynthEvent::Boundary)) => match first_encoding {
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
                let runner = match &mut runner {
                    Some(r) => r,
                    None => {
                        let Some(sink) = sink.take() else {
                            return Err(JobError::Panicked);
                        };
                        let mut work = Work::new(render, Arc::clone(&words))?;
                        // Only raw PCM can carry joins: a byte position there is a frame
                        // position.
                        let joins =
                            matches!(encoding, InputEncoding::Pcm16Le(_)).then(|| joins.clone());
                        work.open(encoding, joins);
                        first_encoding = Some(encoding);
                        runner.insert(Runner::new(work, sink, cancel.clone()))
                    }
                };
                if first_encoding != Some(encoding) {
                    outcome = Err(EngineError::Protocol(format!(
                        "audio encoding changed mid-stream from {first_encoding:?} to {encoding:?}"
                    )));
                    break;
                }
                bytes_in += data.len() as u64;
                runner.feed(&data).await?;
            }
        }
    }
    // Stop the engine now (kills a subprocess, drops an HTTP request) whatever happened.
    drop(stream);

    let report = match (runner, sink) {
        // Whatever ended the input (its end, or an engine error after audio), what came goes
        // out whole: the decoder's, the stages' and the chunker's tails, a valid ending.
        (Some(mut runner), _) => {
            runner.end_input().await?;
            runner.finish().await?;
            runner.report
        }
        // No audio at all: still send a valid (empty) stream, e.g. a lone WAV header.
        (None, Some(sink)) if outcome.is_ok() => {
            let mut runner = Runner::new(Work::new(render, words)?, sink, cancel);
            runner.finish().await?;
            runner.report
        }
        _ => AudioReport::default(),
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

// === the chain's driver ===

/// Runs a job's [`Work`] in bounded items (inline, or on the CPU pool when a stage is heavy)
/// and hands what each item makes to the sink.
struct Runner<S> {
    /// `None` only while an item runs (or after one panicked).
    work: Option<Box<Work>>,
    sink: S,
    cancel: CancellationToken,
    report: AudioReport,
    /// Input bytes pushed into the decoder since the chain last ran.
    pending: usize,
}

impl<S: Sink> Runner<S> {
    fn new(work: Work, sink: S, cancel: CancellationToken) -> Self {
        Self {
            work: Some(Box::new(work)),
            sink,
            cancel,
            report: AudioReport::default(),
            pending: 0,
        }
    }

    fn work(&mut self) -> Result<&mut Work, JobError> {
        self.work.as_deref_mut().ok_or(JobError::Panicked)
    }

    /// Pushes `data` into the decoder; runs the chain over what is pending once that is
    /// [`BATCH_BYTES`] or more (else [`Self::settle`] does, when the input has to wait).
    async fn feed(&mut self, data: &[u8]) -> Result<(), JobError> {
        self.work()?.push(data);
        self.pending += data.len();
        if self.pending >= BATCH_BYTES {
            self.drain().await?;
        }
        Ok(())
    }

    /// Runs the chain over the input pushed and not processed yet.
    async fn settle(&mut self) -> Result<(), JobError> {
        if self.pending > 0 {
            self.drain().await?;
        }
        Ok(())
    }

    /// The input ended: drains the decoder.
    async fn end_input(&mut self) -> Result<(), JobError> {
        self.work()?.end_input();
        self.drain().await
    }

    /// Runs items until the decoder needs more input.
    /// Once the first chunk is out, a heavy chain runs several items per pool turn while no
    /// other job waits ([`Work::pump_batch`]); the first chunk never waits for a batch.
    async fn drain(&mut self) -> Result<(), JobError> {
        self.pending = 0;
        loop {
            let batch = self.report.first_chunk_at.is_some() && self.work()?.heavy();
            if !self.item(move |w| w.pump_batch(batch)).await? {
                return Ok(());
            }
        }
    }

    /// Flushes the chain (stages, encoder, chunker) and sends the tail.
    async fn finish(&mut self) -> Result<(), JobError> {
        self.item(|w| w.chain.finish().map(|()| false)).await?;
        Ok(())
    }

    /// Runs one item over the work (on the pool when a stage is heavy), then sends what it
    /// made.
    async fn item(
        &mut self,
        f: impl FnOnce(&mut Work) -> Result<bool, JobError> + Send + 'static,
    ) -> Result<bool, JobError> {
        let mut work = self.work.take().ok_or(JobError::Panicked)?;
        let lane = if work.realtime {
            pool::Lane::First
        } else {
            pool::Lane::Fair
        };
        let (work, result) = if work.heavy() {
            let ran = tokio::select! {
                biased;
                () = self.cancel.cancelled() => return Err(JobError::Cancelled),
                r = pool::global().run_in(lane, move || {
                    let result = f(&mut work);
                    (work, result)
                }) => r,
            };
            match ran {
                Ok(done) => done,
                Err(pool::Panicked) => {
                    tracing::error!("audio processing panicked on the CPU pool");
                    return Err(JobError::Panicked);
                }
            }
        } else {
            match catch_unwind(AssertUnwindSafe(|| f(&mut work))) {
                Ok(result) => (work, result),
                Err(_) => {
                    tracing::error!("audio processing panicked");
                    return Err(JobError::Panicked);
                }
            }
        };
        self.work = Some(work);
        let more = result?;
        self.send().await?;
        Ok(more)
    }

    /// Hands the chain's outputs to the sink, in order.
    async fn send(&mut self) -> Result<(), JobError> {
        let work = self.work.as_deref_mut().ok_or(JobError::Panicked)?;
        let mut out = std::mem::take(&mut work.chain.out);
        for o in out.drain(..) {
            if let Output::Audio(chunk) = &o {
                if self.report.first_chunk_at.is_none() {
                    self.report.first_chunk_at = Some(Instant::now());
                }
                self.report.frames += u64::from(chunk.frames);
                self.report.bytes += chunk.data.len() as u64;
            }
            let sent = tokio::select! {
                biased;
                () = self.cancel.cancelled() => return Err(JobError::Cancelled),
                sent = self.sink.send(o) => sent,
            };
            if !sent {
                return Err(JobError::ClientGone);
            }
        }
        // The emptied vector goes back, for its capacity.
        if let Some(work) = self.work.as_deref_mut() {
            work.chain.out = out;
        }
        Ok(())
    }
}

/// Everything one item needs, moved to a pool thread and back: the decoder, the chain, and a
/// segmented stream's bookkeeping.
struct Work {
    /// The decoder of the current input (a segment's, in a segmented stream).
    decoder: Option<(Box<dyn PushDecoder>, InputEncoding)>,
    chain: AudioChain,
    segments: Option<Segments>,
    /// [`Render::realtime`].
    realtime: bool,
}

impl Work {
    fn new(render: Render, words: PendingWords) -> Result<Self, AudioError> {
        Ok(Self {
            decoder: None,
            chain: AudioChain::new(render.output, render.gain, render.chunk_ms, words)?,
            segments: None,
            realtime: render.realtime,
        })
    }

    /// Starts decoding a stream of `encoding`; `joins` are where its pieces meet.
    fn open(&mut self, encoding: InputEncoding, joins: Option<Joins>) {
        self.decoder = Some((decoder_for(encoding), encoding));
        self.chain.joins = joins;
    }

    fn push(&mut self, bytes: &[u8]) {
        if let Some((decoder, _)) = &mut self.decoder {
            decoder.push(bytes);
        }
    }

    fn end_input(&mut self) {
        if let Some((decoder, _)) = &mut self.decoder {
            decoder.finish();
        }
    }

    /// Whether the chain has a heavy stage: MP3 decoding, resampling, MP3/Opus/FLAC encoding.
    fn heavy(&self) -> bool {
        let output = self.chain.output;
        let encoder = matches!(
            output.encoding,
            OutputEncoding::Mp3 { .. }
                | OutputEncoding::OggOpus { .. }
                | OutputEncoding::Flac { .. }
        );
        let input = match (&self.decoder, self.chain.input_spec) {
            (Some((_, InputEncoding::Mp3)), _) => true,
            (_, Some(spec)) => spec.sample_rate != output.spec.sample_rate,
            (Some((_, InputEncoding::Pcm16Le(spec))), None) => {
                spec.sample_rate != output.spec.sample_rate
            }
            // A WAV header not read yet: the first item is bounded like any other.
            _ => false,
        };
        encoder || input
    }

    /// Frames per item at the current input rate.
    fn budget(&self) -> usize {
        let rate = match (self.chain.input_spec, &self.decoder) {
            (Some(spec), _) => spec.sample_rate,
            (None, Some((_, InputEncoding::Pcm16Le(spec)))) => spec.sample_rate,
            _ => 24_000,
        };
        (rate * ITEM_MS / 1000).max(1) as usize
    }

    /// Items back to back (at most [`BATCH_ITEMS`]) while `batch` and no other job waits for
    /// the pool; `true` when the decoder has more (run another turn).
    fn pump_batch(&mut self, batch: bool) -> Result<bool, JobError> {
        for _ in 1..BATCH_ITEMS {
            if !self.pump()? {
                return Ok(false);
            }
            if !batch || pool::global().others_waiting() {
                return Ok(true);
            }
        }
        self.pump()
    }

    /// One item: decodes and processes up to [`Self::budget`] frames; `true` when the budget
    /// ran out before the decoder did (run another item).
    fn pump(&mut self) -> Result<bool, JobError> {
        let budget = self.budget();
        let mut done = 0;
        while done < budget {
            let Some((decoder, _)) = &mut self.decoder else {
                return Ok(false);
            };
            let Some(buffer) = decoder.decode(budget - done)? else {
                return Ok(false);
            };
            if buffer.is_empty() {
                continue;
            }
            done += buffer.frames();
            match &mut self.segments {
                Some(segments) => segments.process(&mut self.chain, buffer)?,
                None => self.chain.process(buffer)?,
            }
        }
        Ok(true)
    }
}

/// decode → resample → remix → gain → encode → chunk, one item at a time.
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
    words: PendingWords,
    /// The stream's joins, when it can have any (the first stage then fades at them).
    joins: Option<Joins>,
    /// What the chain made, for the sink.
    out: Vec<Output>,
    // Reused buffers.
    encoded: Vec<u8>,
    chunks: Vec<Chunk>,
}

impl AudioChain {
    fn new(
        output: OutputFormat,
        gain: f32,
        chunk_ms: u32,
        words: PendingWords,
    ) -> Result<Self, AudioError> {
        Ok(Self {
            output,
            gain,
            stages: None,
            input_spec: None,
            encoder: encoder_for(output)?,
            chunker: Chunker::new(output, chunk_ms),
            words,
            joins: None,
            out: Vec::new(),
            encoded: Vec::new(),
            chunks: Vec::new(),
        })
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
        self.deliver();
        Ok(())
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
        self.deliver();
        Ok(())
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

    /// Queues the pending words, then the chunks made, for the sink.
    fn deliver(&mut self) {
        let words = std::mem::take(&mut *crate::error::lock(&self.words));
        if !words.is_empty() {
            self.out.push(Output::Words(words));
        }
        self.out.extend(self.chunks.drain(..).map(Output::Audio));
    }
}

// === segmented streams (SynthesizeStream) ===

/// One sentence of a segmented stream, as its audio task takes it: the sentence's engine
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

/// How a segmented stream went on its audio task.
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

/// The audio task of a segmented stream (a tokio task, not a thread): every segment it
/// receives goes through one chain (one encoder, one chunker: one valid stream of the output
/// format), in items like [`run_stream`]'s. Resampler and remix carry their state from one
/// segment to the next while the segments' spec stays the same; when it changes (a fallback
/// engine at another rate) the stages are flushed and rebuilt. Segments meet at a join, faded
/// out and in ([`JoinFade`]), as an engine's pieces do. Dropping it stops the task.
#[derive(Debug)]
pub struct SegmentsTask(tokio::task::JoinHandle<Result<SegmentsReport, JobError>>);

impl SegmentsTask {
    /// Start the task; it ends when `segments` closes (or the sink stops listening).
    pub fn spawn(render: Render, segments: mpsc::Receiver<Segment>, sink: impl Sink) -> Self {
        Self(tokio::spawn(run_segments(render, segments, sink)))
    }

    /// Wait for the task's end.
    pub async fn join(mut self) -> Result<SegmentsReport, JobError> {
        match (&mut self.0).await {
            Ok(result) => result,
            Err(error) => {
                tracing::error!(%error, "audio task panicked");
                Err(JobError::Panicked)
            }
        }
    }
}

impl Drop for SegmentsTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A segmented stream's bookkeeping, carried from item to item.
#[derive(Default)]
struct Segments {
    /// Joins of the current stage set, in frames since it was built.
    joins: Joins,
    position: u64,
    elapsed_ms: f64,
    spans: Vec<SegmentSpan>,
    /// The current segment.
    current: Option<Current>,
}

/// The segment being decoded.
struct Current {
    begin_ms: f64,
    start: u64,
    first: bool,
    frames_in: u64,
    rate: u32,
    /// Its own joins, from its start.
    inner: Joins,
    words: Arc<Mutex<Vec<WordTiming>>>,
}

impl Segments {
    fn begin(&mut self, inner: Joins, words: Arc<Mutex<Vec<WordTiming>>>) {
        self.current = Some(Current {
            begin_ms: self.elapsed_ms,
            start: self.position,
            first: true,
            frames_in: 0,
            rate: 0,
            inner,
            words,
        });
    }

    /// One decoded buffer of the current segment through the chain.
    fn process(&mut self, chain: &mut AudioChain, buffer: PcmBuffer) -> Result<(), JobError> {
        let Some(c) = self.current.as_mut() else {
            return chain.process(buffer);
        };
        if c.first {
            c.first = false;
            match chain.input_spec {
                Some(spec) if spec == buffer.spec => self.joins.push(self.position),
                had => {
                    if had.is_some() {
                        // The previous segments fade out and their stages' tails go out.
                        self.joins.push(self.position);
                        chain.flush_stages()?;
                    }
                    self.joins = Joins::default();
                    chain.joins = Some(self.joins.clone());
                    chain.build_stages(buffer.spec)?;
                    if had.is_some() {
                        self.joins.push(0);
                    }
                    self.position = 0;
                }
            }
            c.start = self.position;
            c.rate = buffer.spec.sample_rate;
        }
        for j in c.inner.drain() {
            self.joins.push(c.start + j);
        }
        let taken = std::mem::take(&mut *crate::error::lock(&c.words));
        if !taken.is_empty() {
            crate::error::lock(&chain.words).extend(shifted(taken, c.begin_ms));
        }
        let n = buffer.frames() as u64;
        chain.process(buffer)?;
        self.position += n;
        c.frames_in += n;
        Ok(())
    }

    /// The current segment ended: its last words, its span.
    fn end(&mut self, chain: &AudioChain) {
        let Some(c) = self.current.take() else {
            return;
        };
        let taken = std::mem::take(&mut *crate::error::lock(&c.words));
        crate::error::lock(&chain.words).extend(shifted(taken, c.begin_ms));
        let duration_ms = if c.rate == 0 {
            0.0
        } else {
            c.frames_in as f64 * 1000.0 / f64::from(c.rate)
        };
        self.elapsed_ms += duration_ms;
        self.spans.push(SegmentSpan {
            begin_ms: c.begin_ms.round() as u64,
            duration_ms: duration_ms.round() as u64,
        });
    }
}

async fn run_segments(
    render: Render,
    mut segments: mpsc::Receiver<Segment>,
    sink: impl Sink,
) -> Result<SegmentsReport, JobError> {
    let mut work = Work::new(render, PendingWords::default())?;
    work.segments = Some(Segments::default());
    // Nothing cancels it but its owner dropping it (or the segments channel closing).
    let mut runner = Runner::new(work, sink, CancellationToken::new());
    while let Some(segment) = segments.recv().await {
        let Segment {
            encoding,
            mut bytes,
            words,
            joins,
        } = segment;
        {
            let work = runner.work()?;
            // A segment's joins go to `Segments`, which hands the chain its stage set's own.
            work.open(encoding, None);
            if let Some(s) = &mut work.segments {
                s.begin(joins, words);
            }
        }
        loop {
            let data = match bytes.try_recv() {
                Ok(data) => data,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    runner.settle().await?;
                    match bytes.recv().await {
                        Some(data) => data,
                        None => break,
                    }
                }
            };
            runner.feed(&data).await?;
        }
        runner.end_input().await?;
        let work = runner.work()?;
        if let Some(s) = &mut work.segments {
            s.end(&work.chain);
        }
    }
    runner.finish().await?;
    let spans = runner
        .work()?
        .segments
        .take()
        .map(|s| s.spans)
        .unwrap_or_default();
    let report = runner.report;
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
            realtime: false,
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
        let thread = SegmentsTask::spawn(render, rx, sink);
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
