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
//! It must not touch samples (no DSP on the tokio task) and must not retry: retries belong to
//! the piece tasks, which know whether they sent audio.

use std::{collections::VecDeque, sync::Arc};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use super::{
    Job,
    family::s16_ms,
    piece::{PieceMsg, run_piece},
};
use crate::{
    audio::{AudioSpec, InputEncoding},
    engine::{EngineError, SynthEvent},
};

type PieceRx = mpsc::Receiver<Result<PieceMsg, EngineError>>;

/// What the engine's stream carries.
type EventTx = mpsc::Sender<Result<SynthEvent, EngineError>>;

/// A running piece: its messages, and its task (aborted when dropped).
struct Running {
    rx: PieceRx,
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
            let job = Arc::clone(&self.job);
            let task = tokio::spawn(async move { run_piece(job, text, tx).await });
            self.running.push_back(Running {
                rx,
                _task: AbortOnDrop(task),
            });
        }
    }

    /// Starts the pieces and waits for the first message of the first one: its error is the
    /// call's error (request errors arrive before any audio).
    pub(super) async fn first(
        &mut self,
    ) -> Result<Option<Result<PieceMsg, EngineError>>, EngineError> {
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
