//! The driver of one synthesis: runs its pieces with a bounded look-ahead and forwards their
//! audio strictly in order as one raw s16le stream.
//!
//! Up to `Tuning::lookahead` pieces run at once, each on its own task ([`super::piece`]); the
//! driver reads only the front one, so later pieces wait in their bounded channels until their
//! turn. It forwards whole frames only, marks each join between two pieces with
//! [`SynthEvent::Boundary`] (the audio stage fades there, `crate::audio::join`), moves each
//! piece's word timings by the audio before it, sums the billed characters, and turns a failure
//! after audio went out into [`EngineError::Interrupted`].
//!
//! Admission: [`Driver::first`] takes the synthesis's upstream request slot
//! ([`super::Client::admit`]) before any piece starts, and the driver holds it to the end. The
//! front piece runs on it; each later piece waits for a spare slot or for its turn, whichever
//! comes first (`front`, a `watch` flag the driver raises when the piece becomes the front
//! one). So a text that has started can always go on: newcomers wait for, or are refused, a
//! slot of their own at their start, and never take an admitted text's turn.
//!
//! It must not touch samples (no DSP on the tokio task) and must not retry: retries belong to
//! the piece tasks, which know whether they sent audio.

use std::{collections::VecDeque, sync::Arc};

use bytes::{Bytes, BytesMut};
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};

use super::{
    Job,
    family::s16_ms,
    piece::{PieceMsg, run_piece, upstream_outcome},
};
use crate::{
    audio::{AudioSpec, InputEncoding},
    engine::{EngineError, SynthEvent},
};

type PieceRx = mpsc::Receiver<Result<PieceMsg, EngineError>>;

/// What the engine's stream carries.
type EventTx = mpsc::Sender<Result<SynthEvent, EngineError>>;

/// A running piece: its messages, whether it is the one being forwarded (it then runs on the
/// synthesis's own request slot), and its task (aborted when dropped).
struct Running {
    rx: PieceRx,
    front: watch::Sender<bool>,
    _task: AbortOnDrop,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the pieces with look-ahead and forwards their audio in order.
pub(super) struct Driver {
    job: Arc<Job>,
    /// The upstream request slot this synthesis holds from admission to its end
    /// (`dashscope.max_concurrent_requests`): the front piece runs on it.
    slot: Option<OwnedSemaphorePermit>,
    pending: VecDeque<String>,
    running: VecDeque<Running>,
    /// The spec of the stream (that of its first audio).
    spec: Option<AudioSpec>,
    characters: Option<u32>,
    request_ids: Vec<String>,
    /// Piece index being forwarded (0-based).
    index: usize,
    pieces: usize,
    /// The current piece's bytes after its last whole frame, not yet forwarded.
    partial: BytesMut,
    /// Audio bytes forwarded so far.
    bytes_out: u64,
    /// Where the current piece's audio starts in the stream, in ms.
    piece_start_ms: u32,
}

impl Driver {
    /// A driver for `pieces` (at least one) of `job`; nothing runs before [`Driver::first`].
    pub(super) fn new(job: Arc<Job>, pieces: Vec<String>) -> Self {
        Self {
            pieces: pieces.len(),
            job,
            slot: None,
            pending: pieces.into(),
            running: VecDeque::new(),
            spec: None,
            characters: None,
            request_ids: Vec::new(),
            index: 0,
            partial: BytesMut::new(),
            bytes_out: 0,
            piece_start_ms: 0,
        }
    }

    /// Keep `lookahead` pieces in flight.
    fn start_pieces(&mut self) {
        let lookahead = self.job.client.tuning().lookahead.max(1);
        while self.running.len() < lookahead {
            let Some(text) = self.pending.pop_front() else {
                break;
            };
            let (tx, rx) = mpsc::channel(32);
            let (front, front_rx) = watch::channel(self.running.is_empty());
            let job = Arc::clone(&self.job);
            let task = tokio::spawn(async move { run_piece(job, text, tx, front_rx).await });
            self.running.push_back(Running {
                rx,
                front,
                _task: AbortOnDrop(task),
            });
        }
    }

    /// Admits the synthesis (its request slot, [`super::Client::admit`]), starts the pieces and
    /// waits for the first message of the first one: its error is the call's error (request
    /// errors and a refused admission arrive before any audio).
    pub(super) async fn first(
        &mut self,
    ) -> Result<Option<Result<PieceMsg, EngineError>>, EngineError> {
        if self.slot.is_none() {
            let slot = self
                .job
                .client
                .admit(self.job.req.deadline)
                .await
                .inspect_err(|_| upstream_outcome(self.job.family, "saturated"))?;
            self.slot = Some(slot);
        }
        self.start_pieces();
        let Some(front) = self.running.front_mut() else {
            return Err(EngineError::Protocol(
                "a synthesis with no piece to run".to_owned(),
            ));
        };
        match front.rx.recv().await {
            Some(Err(e)) => Err(e),
            other => Ok(other),
        }
    }

    /// Forward every piece's events to `tx`, starting with `first` (from [`Driver::first`]).
    pub(super) async fn run(mut self, first: Option<Result<PieceMsg, EngineError>>, tx: EventTx) {
        let mut next = first;
        let mut sent_any = false;
        loop {
            let msg = match next.take() {
                Some(m) => Some(m),
                None => {
                    let Some(current) = self.running.front_mut() else {
                        break;
                    };
                    tokio::select! {
                        m = current.rx.recv() => m,
                        () = tx.closed() => return,
                    }
                }
            };
            let out = match msg {
                None => Err(EngineError::Protocol(
                    "a piece task ended without a result".to_owned(),
                )),
                Some(Err(e)) => Err(e),
                Some(Ok(PieceMsg::Audio { spec, data })) => self.audio(spec, &data).map(Out::Audio),
                Some(Ok(PieceMsg::Words(mut words))) => {
                    // The pieces before this one are all out: their audio is the offset.
                    let offset = self.piece_start_ms;
                    for w in &mut words {
                        w.begin_ms = w.begin_ms.saturating_add(offset);
                        w.end_ms = w.end_ms.saturating_add(offset);
                    }
                    Ok(Out::Event(SynthEvent::Words(words)))
                }
                Some(Ok(PieceMsg::SentenceEnd)) => continue,
                Some(Ok(PieceMsg::Done {
                    characters,
                    request_id,
                })) => {
                    if let Some(c) = characters {
                        self.characters = Some(self.characters.unwrap_or(0).saturating_add(c));
                    }
                    self.request_ids.extend(request_id);
                    Ok(self.piece_done())
                }
            };
            let out = match out {
                Ok(out) => out,
                Err(e) => {
                    let e = if sent_any && !matches!(e, EngineError::Protocol(_)) {
                        EngineError::Interrupted(Box::new(e))
                    } else {
                        e
                    };
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let event = match out {
                Out::Audio(data) => self.audio_event(data, &mut sent_any),
                Out::Event(event) => Some(event),
                Out::Finished(tail) => {
                    if let Some(audio) = self.audio_event(tail, &mut sent_any)
                        && tx.send(Ok(audio)).await.is_err()
                    {
                        return;
                    }
                    let _ = tx
                        .send(Ok(SynthEvent::Finished {
                            characters: self.characters,
                            upstream_request_ids: std::mem::take(&mut self.request_ids),
                        }))
                        .await;
                    return;
                }
            };
            if let Some(event) = event
                && tx.send(Ok(event)).await.is_err()
            {
                return;
            }
        }
    }

    /// The event for forwarded audio bytes (`None` for none), counted as sent.
    fn audio_event(&mut self, data: Bytes, sent_any: &mut bool) -> Option<SynthEvent> {
        if data.is_empty() {
            return None;
        }
        *sent_any = true;
        self.bytes_out += data.len() as u64;
        Some(SynthEvent::Audio {
            encoding: InputEncoding::Pcm16Le(self.stream_spec()),
            data,
        })
    }

    /// The current piece ended: the join to the next piece (and the next piece started), or,
    /// after the last piece, the end of the stream.
    fn piece_done(&mut self) -> Out {
        self.running.pop_front();
        if let Some(next) = self.running.front() {
            // Its turn: it may run on the synthesis's own slot now.
            next.front.send_replace(true);
        }
        self.index += 1;
        if self.index == self.pieces {
            // The stream's last bytes go out as they are, a partial frame included: the
            // decoder decides what a trailing partial frame is worth.
            return Out::Finished(self.partial.split().freeze());
        }
        // A partial frame at a piece's end cannot be joined to the next piece's samples.
        self.partial.clear();
        self.piece_start_ms = s16_ms(self.stream_spec(), self.bytes_out);
        self.start_pieces();
        Out::Event(SynthEvent::Boundary)
    }

    /// The spec of the stream: that of its first audio, or the one asked for.
    fn stream_spec(&self) -> AudioSpec {
        self.spec.unwrap_or(AudioSpec {
            sample_rate: self.job.rate,
            channels: 1,
        })
    }

    /// Take a piece's audio; return the whole frames that can go out now.
    fn audio(&mut self, spec: AudioSpec, data: &[u8]) -> Result<Bytes, EngineError> {
        match self.spec {
            None => self.spec = Some(spec),
            Some(s) if s != spec => {
                return Err(EngineError::Protocol(format!(
                    "piece {} is {} Hz × {} but the stream is {} Hz × {}",
                    self.index + 1,
                    spec.sample_rate,
                    spec.channels,
                    s.sample_rate,
                    s.channels
                )));
            }
            Some(_) => {}
        }
        self.partial.extend_from_slice(data);
        let frame = 2 * usize::from(spec.channels);
        let whole = self.partial.len() / frame * frame;
        Ok(self.partial.split_to(whole).freeze())
    }
}

/// What one piece message becomes on the stream.
enum Out {
    /// Audio bytes (whole frames, except at the stream's very end); nothing when empty.
    Audio(Bytes),
    /// Another event (word timings, a join).
    Event(SynthEvent),
    /// Every piece is out: the stream's last bytes (maybe none), then `Finished`.
    Finished(Bytes),
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;
    use tokio_stream::wrappers::ReceiverStream;

    use super::*;
    use crate::engine::{SynthesisRequest, WordTiming, dashscope::Family};

    const MONO: AudioSpec = AudioSpec {
        sample_rate: 16_000,
        channels: 1,
    };

    /// A driver over `n` pieces whose messages the test sends itself.
    fn driver(n: usize) -> (Driver, Vec<mpsc::Sender<Result<PieceMsg, EngineError>>>) {
        let client = super::super::client::unreachable_client();
        let job = Arc::new(Job {
            client,
            family: Family::CosyVoice,
            req: SynthesisRequest::default(),
            rate: 16_000,
        });
        let mut d = Driver::new(job, vec![String::new(); n]);
        d.pending.clear();
        let mut txs = Vec::new();
        for _ in 0..n {
            let (tx, rx) = mpsc::channel(8);
            txs.push(tx);
            d.running.push_back(Running {
                rx,
                front: watch::channel(false).0,
                _task: AbortOnDrop(tokio::spawn(async {})),
            });
        }
        (d, txs)
    }

    fn audio(bytes: &[u8]) -> Result<PieceMsg, EngineError> {
        Ok(PieceMsg::Audio {
            spec: MONO,
            data: Bytes::copy_from_slice(bytes),
        })
    }

    fn done(characters: u32, id: &str) -> Result<PieceMsg, EngineError> {
        Ok(PieceMsg::Done {
            characters: Some(characters),
            request_id: Some(id.to_owned()),
        })
    }

    async fn events(d: Driver) -> Vec<Result<SynthEvent, EngineError>> {
        let (tx, rx) = mpsc::channel(64);
        d.run(None, tx).await;
        ReceiverStream::new(rx).collect().await
    }

    #[tokio::test]
    async fn pieces_go_out_in_order_as_whole_frames_with_a_boundary_between() {
        let (d, txs) = driver(2);
        // The second piece answers first: it waits for its turn.
        txs[1].send(audio(&[5, 0, 6, 0])).await.unwrap();
        txs[1]
            .send(Ok(PieceMsg::Words(vec![WordTiming {
                text: "b".to_owned(),
                begin_ms: 0,
                end_ms: 1,
            }])))
            .await
            .unwrap();
        txs[1].send(done(2, "r2")).await.unwrap();
        // Three bytes: the odd one is a partial frame, dropped at the join.
        txs[0].send(audio(&[1, 0, 2])).await.unwrap();
        txs[0].send(audio(&[])).await.unwrap();
        txs[0].send(done(3, "r1")).await.unwrap();
        drop(txs);
        let got: Vec<SynthEvent> = events(d).await.into_iter().map(Result::unwrap).collect();
        let pcm = |b: &[u8]| SynthEvent::Audio {
            encoding: InputEncoding::Pcm16Le(MONO),
            data: Bytes::copy_from_slice(b),
        };
        assert_eq!(
            got,
            vec![
                pcm(&[1, 0]),
                SynthEvent::Boundary,
                pcm(&[5, 0, 6, 0]),
                SynthEvent::Words(vec![WordTiming {
                    text: "b".to_owned(),
                    begin_ms: 0,
                    end_ms: 1,
                }]),
                SynthEvent::Finished {
                    characters: Some(5),
                    upstream_request_ids: vec!["r1".to_owned(), "r2".to_owned()],
                },
            ]
        );
    }

    #[tokio::test]
    async fn word_times_count_from_the_start_of_the_stream() {
        let (d, txs) = driver(2);
        // 32 ms of audio at 16 kHz mono.
        txs[0].send(audio(&[0; 1024])).await.unwrap();
        txs[0].send(done(1, "r1")).await.unwrap();
        txs[1]
            .send(Ok(PieceMsg::Words(vec![WordTiming {
                text: "w".to_owned(),
                begin_ms: 10,
                end_ms: 20,
            }])))
            .await
            .unwrap();
        txs[1].send(done(1, "r2")).await.unwrap();
        drop(txs);
        let words: Vec<WordTiming> = events(d)
            .await
            .into_iter()
            .filter_map(|e| match e {
                Ok(SynthEvent::Words(w)) => Some(w),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!((words[0].begin_ms, words[0].end_ms), (42, 52));
    }

    #[tokio::test]
    async fn a_failure_after_audio_interrupts_the_stream() {
        let (d, txs) = driver(2);
        txs[0].send(audio(&[1, 0])).await.unwrap();
        txs[0].send(done(1, "r1")).await.unwrap();
        txs[1].send(Err(EngineError::Truncated)).await.unwrap();
        drop(txs);
        let got = events(d).await;
        assert!(matches!(
            got.last(),
            Some(Err(EngineError::Interrupted(inner))) if matches!(**inner, EngineError::Truncated)
        ));
        // Before any audio, the error stays what it is.
        let (d, txs) = driver(1);
        txs[0].send(Err(EngineError::Truncated)).await.unwrap();
        drop(txs);
        assert!(matches!(
            events(d).await.last(),
            Some(Err(EngineError::Truncated))
        ));
    }

    #[tokio::test]
    async fn pieces_must_share_one_spec() {
        let (d, txs) = driver(2);
        txs[0].send(audio(&[1, 0])).await.unwrap();
        txs[0].send(done(1, "r1")).await.unwrap();
        txs[1]
            .send(Ok(PieceMsg::Audio {
                spec: AudioSpec {
                    sample_rate: 24_000,
                    channels: 1,
                },
                data: Bytes::from_static(&[1, 0]),
            }))
            .await
            .unwrap();
        drop(txs);
        assert!(matches!(
            events(d).await.last(),
            Some(Err(EngineError::Protocol(m))) if m.contains("piece 2 is 24000 Hz")
        ));
    }
}
