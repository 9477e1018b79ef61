//! A streamed text (`SynthesizeStream`) over one DashScope WebSocket task: the text goes
//! upstream as it is written (run-task `continue-task`s, realtime `input_text_buffer.append`s)
//! instead of one request per sentence, and the task's audio comes back as one raw s16le
//! stream in whole frames.
//!
//! A realtime session (`commit` mode) gets a commit after each sentence, so it voices each as
//! it comes. The task takes the synthesis's request slot ([`super::Client::admit`]) and is not retried:
//! the text already sent cannot be replayed here, so a failure goes to the caller, which falls
//! back sentence by sentence. What the upstream has voiced is counted from its sentence ends
//! ([`StreamedSynth::acknowledged`]). Dropping the stream drops the task at once (the
//! connection is closed, so the upstream ends it).
//!
//! It must not cut sentences (the caller does) and must not touch samples.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::BytesMut;
use futures::StreamExt as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{Job, piece::PieceMsg, piece::upstream_outcome, ws};
use crate::{
    audio::InputEncoding,
    engine::{EngineError, StreamedSynth, SynthEvent, TextIn},
};

/// DashScope drops a WebSocket task left without text for 23 s; herald ends the text well
/// before that, and before its own silence limit (`dashscope.idle_timeout_ms`).
const UPSTREAM_IDLE: Duration = Duration::from_secs(15);

/// Start `job`'s streamed text over `protocol`.
pub(super) fn start(
    job: Arc<Job>,
    protocol: ws::Protocol,
    text: mpsc::Receiver<TextIn>,
) -> StreamedSynth {
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let idle_limit = UPSTREAM_IDLE.min(job.client.tuning().idle_timeout * 3 / 4);
    let (tx, rx) = mpsc::channel(16);
    let counter = Arc::clone(&acknowledged);
    // A realtime session in `commit` mode voices nothing before a commit: each sentence is
    // committed as it goes in (one response each, whose `response.done` acknowledges it).
    let text = match protocol {
        ws::Protocol::Realtime => commit_each(text),
        ws::Protocol::RunTask => text,
    };
    tokio::spawn(async move {
        let (piece_tx, piece_rx) = mpsc::channel(32);
        let task = async {
            let _slot = match job.client.admit(job.req.deadline).await {
                Ok(slot) => slot,
                Err(e) => {
                    upstream_outcome(job.family, "saturated");
                    let _ = piece_tx.send(Err(e)).await;
                    return;
                }
            };
            let mut sent = false;
            if let Err(e) = ws::run_streamed(&job, protocol, text, &piece_tx, &mut sent).await {
                let _ = piece_tx.send(Err(e)).await;
            }
            drop(piece_tx);
        };
        // Both end when the caller drops the stream (the task with its connection).
        tokio::select! {
            _ = futures::future::join(task, forward(piece_rx, &tx, &counter)) => {}
            () = tx.closed() => {}
        }
    });
    StreamedSynth {
        stream: ReceiverStream::new(rx).boxed(),
        acknowledged,
        idle_limit,
    }
}

/// `text` with a flush after each piece.
fn commit_each(mut text: mpsc::Receiver<TextIn>) -> mpsc::Receiver<TextIn> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        while let Some(item) = text.recv().await {
            let piece = matches!(item, TextIn::Text(_));
            if tx.send(item).await.is_err() || piece && tx.send(TextIn::Flush).await.is_err() {
                return;
            }
        }
    });
    rx
}

/// Forward the task's messages as engine events: whole frames (the last bytes as they are),
/// sentence ends counted into `acknowledged`, a failure after audio as
/// [`EngineError::Interrupted`].
async fn forward(
    mut rx: mpsc::Receiver<Result<PieceMsg, EngineError>>,
    tx: &mpsc::Sender<Result<SynthEvent, EngineError>>,
    acknowledged: &AtomicUsize,
) {
    let mut partial = BytesMut::new();
    let mut encoding = None;
    let mut sent_any = false;
    loop {
        let event = match rx.recv().await {
            Some(Ok(PieceMsg::Audio { spec, data })) => {
                partial.extend_from_slice(&data);
                let frame = 2 * usize::from(spec.channels);
                let whole = partial.len() / frame * frame;
                if whole == 0 {
                    continue;
                }
                sent_any = true;
                let e = InputEncoding::Pcm16Le(spec);
                encoding = Some(e);
                Ok(SynthEvent::Audio {
                    encoding: e,
                    data: partial.split_to(whole).freeze(),
                })
            }
            Some(Ok(PieceMsg::Words(words))) => Ok(SynthEvent::Words(words)),
            Some(Ok(PieceMsg::SentenceEnd)) => {
                acknowledged.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            Some(Ok(PieceMsg::Done {
                characters,
                request_id,
            })) => {
                if let Some(encoding) = encoding
                    && !partial.is_empty()
                {
                    let data = partial.split().freeze();
                    if tx
                        .send(Ok(SynthEvent::Audio { encoding, data }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                let _ = tx
                    .send(Ok(SynthEvent::Finished {
                        characters,
                        upstream_request_ids: request_id.into_iter().collect(),
                    }))
                    .await;
                return;
            }
            Some(Err(e)) => {
                let e = if sent_any && !matches!(e, EngineError::Protocol(_)) {
                    EngineError::Interrupted(Box::new(e))
                } else {
                    e
                };
                let _ = tx.send(Err(e)).await;
                return;
            }
            None => {
                let _ = tx
                    .send(Err(EngineError::Protocol(
                        "a streamed task ended without a result".to_owned(),
                    )))
                    .await;
                return;
            }
        };
        if tx.send(event).await.is_err() {
            return;
        }
    }
}
