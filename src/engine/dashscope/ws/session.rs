//! The receive loop both WebSocket protocols share: text items out as the protocol's messages,
//! frames in as decoder steps, within the first-audio and idle deadlines.
//!
//! A [`Session`] says what its text and frames mean (run-task's `continue-task` and
//! `task-finished`, realtime's `append`/`commit` and `session.finished`); [`drive`] does the
//! rest: waiting on either side, the deadlines, a closed or failed socket, and forwarding each
//! step to the piece's channel. It must not know a protocol's event names.

use futures::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::{sync::mpsc, time::Instant};
use tokio_tungstenite::tungstenite::{self, Message};

use super::{TextIn, io_error, pool::Conn, timed_out};
use crate::engine::{
    EngineError,
    dashscope::{
        client::Tuning,
        family::{Decoder, Step},
        piece::{PieceTx, forward},
    },
};

/// What a frame meant.
pub(super) enum Frame {
    /// A step for the decoder's output (often [`Step::Nothing`]).
    Step(Step),
    /// The protocol's clean end (`task-finished`, `session.finished`), with the decoder's last
    /// step.
    End(Step),
}

/// One protocol's side of a task or session.
pub(super) trait Session {
    /// The messages one text item becomes (`None`: the text ended). Sets `*audio_due` when
    /// the item makes audio due (a flush that voices something, or the end).
    fn text(&mut self, item: Option<TextIn>, audio_due: &mut bool) -> Vec<Value>;

    /// What a text frame means. It may send on `tx` itself (a sentence's end), after
    /// forwarding what the decoder holds.
    async fn event(
        &mut self,
        text: &str,
        decoder: &mut Decoder,
        tx: &PieceTx,
        sent: &mut bool,
    ) -> Result<Frame, EngineError>;

    /// What a binary frame means.
    fn binary(&mut self, data: Vec<u8>, decoder: &mut Decoder) -> Result<Step, EngineError>;
}

/// How [`drive`] ended well.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Ended {
    /// The protocol's end event after herald had ended the text: the connection is clean.
    Clean,
    /// The upstream ended first (before herald ended the text, or through the decoder).
    Early,
}

/// Run `session` on `conn` until its end: each item of `text` goes out as its messages, each
/// frame is decoded and forwarded to `tx`. The first audio is due within
/// `first_event_timeout` of the text becoming due (a flush or its end); after it, frames may
/// not be further apart than `idle_timeout`.
pub(super) async fn drive(
    conn: &mut Conn,
    session: &mut impl Session,
    mut text: mpsc::Receiver<TextIn>,
    decoder: &mut Decoder,
    tuning: &Tuning,
    tx: &PieceTx,
    sent: &mut bool,
) -> Result<Ended, EngineError> {
    let mut text_open = true;
    let mut first_due: Option<Instant> = None;
    loop {
        let got_audio = decoder.audio_bytes > 0;
        let wait = if got_audio {
            Some(Instant::now() + tuning.idle_timeout)
        } else {
            first_due
        };
        let msg = tokio::select! {
            item = text.recv(), if text_open => {
                text_open = item.is_some();
                let mut due = false;
                for m in session.text(item, &mut due) {
                    conn.ws.send(Message::text(m.to_string())).await.map_err(io_error)?;
                }
                if due {
                    first_due.get_or_insert(Instant::now() + tuning.first_event_timeout);
                }
                continue;
            }
            m = next_before(conn, wait) => m,
        };
        let msg = msg.map_err(|()| {
            if got_audio {
                timed_out("the stream went silent", tuning.idle_timeout)
            } else {
                timed_out("no audio", tuning.first_event_timeout)
            }
        })?;
        let frame = match msg {
            None | Some(Ok(Message::Close(_))) => return Err(EngineError::Truncated),
            Some(Err(e)) => return Err(io_error(e)),
            Some(Ok(Message::Binary(data))) => Frame::Step(session.binary(data.to_vec(), decoder)?),
            Some(Ok(Message::Text(t))) => session.event(t.as_str(), decoder, tx, sent).await?,
            Some(Ok(_)) => Frame::Step(Step::Nothing),
        };
        match frame {
            Frame::Step(step) => {
                if forward(step, decoder, tx, sent).await? {
                    return Ok(Ended::Early);
                }
            }
            Frame::End(step) => {
                forward(step, decoder, tx, sent).await?;
                return Ok(if text_open {
                    Ended::Early
                } else {
                    Ended::Clean
                });
            }
        }
    }
}

/// The next message, or `Err(())` when `deadline` passed first.
pub(super) async fn next_before(
    conn: &mut Conn,
    deadline: Option<Instant>,
) -> Result<Option<Result<Message, tungstenite::Error>>, ()> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, conn.ws.next())
            .await
            .map_err(|_| ()),
        None => Ok(conn.ws.next().await),
    }
}

/// What a handshake read: a JSON event, or an audio frame (which no handshake expects).
pub(super) enum Handshake {
    Event(Value),
    Audio,
}

/// The next JSON event or audio frame of a handshake (run-task's `task-started`, realtime's
/// session events), skipping control frames, before `started + timeout`: a closed socket is
/// [`EngineError::Truncated`], text that is not JSON a protocol error naming `protocol`.
pub(super) async fn handshake_event(
    conn: &mut Conn,
    started: Instant,
    timeout: std::time::Duration,
    waiting_for: &str,
    protocol: &str,
) -> Result<Handshake, EngineError> {
    loop {
        let msg = next_before(conn, Some(started + timeout))
            .await
            .map_err(|()| timed_out(waiting_for, timeout))?;
        match msg {
            None | Some(Ok(Message::Close(_))) => return Err(EngineError::Truncated),
            Some(Err(e)) => return Err(io_error(e)),
            Some(Ok(Message::Text(t))) => {
                return serde_json::from_str(t.as_str())
                    .map(Handshake::Event)
                    .map_err(|e| {
                        EngineError::Protocol(format!("a {protocol} event is not JSON: {e}"))
                    });
            }
            Some(Ok(Message::Binary(_))) => return Ok(Handshake::Audio),
            Some(Ok(_)) => {}
        }
    }
}
