//! One Qwen-TTS-Realtime session: wait for `session.created`, `session.update` (commit mode,
//! 24 kHz PCM, the voice and options), `input_text_buffer.append` per text item,
//! `input_text_buffer.commit` on a flush and at the end, then `session.finish`; audio comes as
//! base64 in `response.audio.delta`, `response.done` carries the billed characters,
//! `session.finished` ends the session (and the connection: the server closes it), an `error`
//! event fails it.
//!
//! A session's connection cannot be reused, so after taking one a fresh connection to the same
//! URL is pre-opened in the background for the next session. It must not retry (the piece task
//! does).

use base64::Engine as _;
use serde_json::{Map, Value, json};
use tokio::{sync::mpsc, time::Instant};
use tokio_tungstenite::tungstenite::Message;

use super::{
    TextIn, in_band_error, io_error,
    pool::{Conn, Headers},
    realtime_url,
    session::{Frame, Handshake, Session, drive, handshake_event},
};
use crate::engine::{
    EngineError,
    dashscope::{
        Job,
        family::{Decoder, QWEN_RATE, Step},
        piece::{PieceMsg, PieceTx},
    },
};

fn event_id() -> String {
    format!("event_{}", uuid::Uuid::new_v4().simple())
}

/// Run one session for `job` with the text of `text`, sending its audio and end to `tx`.
pub(super) async fn run_session(
    job: &Job,
    text: mpsc::Receiver<TextIn>,
    tx: &PieceTx,
    sent: &mut bool,
) -> Result<(), EngineError> {
    let client = &job.client;
    let tuning = client.tuning();
    let url = realtime_url(&client.websocket_base(), &job.req.model);
    let headers = Headers::new(
        &client.settings.api_key,
        client.settings.workspace_id.as_deref(),
    )?;
    let pool = client.ws_pool();
    let mut conn = pool.get(&url, &headers, tuning.connect_timeout).await?;
    let opened = open(&mut conn, job, tuning.first_event_timeout).await;
    match opened {
        Err(e) if conn.reused && super::stale(&e) => {
            conn = pool.connect(&url, &headers, tuning.connect_timeout).await?;
            open(&mut conn, job, tuning.first_event_timeout).await?;
        }
        other => other?,
    }
    // This connection ends with the session: have the next one open in time.
    pool.preopen(url, headers, tuning.connect_timeout);

    let mut decoder = Decoder::new(job.family, QWEN_RATE);
    let mut session = Realtime { uncommitted: false };
    // The server closes a session's connection: nothing goes back to the pool.
    drive(
        &mut conn,
        &mut session,
        text,
        &mut decoder,
        tuning,
        tx,
        sent,
    )
    .await?;
    Ok(())
}

/// The realtime side of [`drive`].
struct Realtime {
    /// Text appended since the last commit.
    uncommitted: bool,
}

impl Realtime {
    fn commit(&mut self, out: &mut Vec<Value>, audio_due: &mut bool) {
        if std::mem::take(&mut self.uncommitted) {
            *audio_due = true;
            out.push(json!({"event_id": event_id(), "type": "input_text_buffer.commit"}));
        }
    }
}

impl Session for Realtime {
    fn text(&mut self, item: Option<TextIn>, audio_due: &mut bool) -> Vec<Value> {
        let mut out = Vec::new();
        match item {
            Some(TextIn::Text(t)) => {
                self.uncommitted = true;
                out.push(
                    json!({"event_id": event_id(), "type": "input_text_buffer.append", "text": t}),
                );
            }
            Some(TextIn::Flush) => self.commit(&mut out, audio_due),
            None => {
                *audio_due = true;
                self.commit(&mut out, audio_due);
                out.push(json!({"event_id": event_id(), "type": "session.finish"}));
            }
        }
        out
    }

    /// Audio comes base64 in events; a binary frame means nothing here.
    fn binary(&mut self, _: Vec<u8>, _: &mut Decoder) -> Result<Step, EngineError> {
        Ok(Step::Nothing)
    }

    async fn event(
        &mut self,
        text: &str,
        decoder: &mut Decoder,
        tx: &PieceTx,
        _: &mut bool,
    ) -> Result<Frame, EngineError> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| EngineError::Protocol(format!("a realtime event is not JSON: {e}")))?;
        match v.get("type").and_then(Value::as_str) {
            Some("response.audio.delta") => {
                let delta = v.get("delta").and_then(Value::as_str).unwrap_or("");
                let data = base64::engine::general_purpose::STANDARD
                    .decode(delta.trim())
                    .map_err(|e| {
                        EngineError::Protocol(format!("response.audio.delta is not base64: {e}"))
                    })?;
                Ok(Frame::Step(decoder.raw_audio(data)?))
            }
            Some("response.done") => {
                let response = v.get("response").cloned().unwrap_or(Value::Null);
                if let Some(n) = response
                    .get("usage")
                    .and_then(|u| u.get("characters"))
                    .and_then(Value::as_u64)
                {
                    let n = u32::try_from(n).unwrap_or(u32::MAX);
                    decoder.characters = Some(decoder.characters.unwrap_or(0).saturating_add(n));
                }
                if let Some(id) = response.get("id").and_then(Value::as_str) {
                    decoder.request_id = Some(id.to_owned());
                }
                tx.send(Ok(PieceMsg::SentenceEnd))
                    .await
                    .map_err(|_| EngineError::Protocol("the synthesis was dropped".to_owned()))?;
                Ok(Frame::Step(Step::Nothing))
            }
            Some("session.finished") => {
                if decoder.audio_bytes == 0 {
                    return Err(EngineError::Protocol(
                        "the session finished without any audio".to_owned(),
                    ));
                }
                decoder.finished = true;
                Ok(Frame::End(decoder.end()?))
            }
            Some("error") => Err(realtime_error(&v)),
            Some(_) => Ok(Frame::Step(Step::Nothing)),
            None => Err(EngineError::Protocol(
                "a realtime event without type".to_owned(),
            )),
        }
    }
}

/// Wait for `session.created`, send `session.update`, wait for `session.updated`.
async fn open(conn: &mut Conn, job: &Job, timeout: std::time::Duration) -> Result<(), EngineError> {
    let started = Instant::now();
    let mut updated = false;
    loop {
        let event =
            handshake_event(conn, started, timeout, "no session events", "realtime").await?;
        let Handshake::Event(v) = event else {
            continue;
        };
        match v.get("type").and_then(Value::as_str) {
            Some("session.created") if !updated => {
                updated = true;
                let update = json!({
                    "event_id": event_id(),
                    "type": "session.update",
                    "session": session(job),
                });
                use futures::SinkExt as _;
                conn.ws
                    .send(Message::text(update.to_string()))
                    .await
                    .map_err(io_error)?;
            }
            Some("session.updated") => return Ok(()),
            Some("error") => return Err(realtime_error(&v)),
            _ => {}
        }
    }
}

/// The `session` of `session.update`.
fn session(job: &Job) -> Value {
    let req = &job.req;
    let mut s = Map::new();
    s.insert("voice".into(), json!(req.voice));
    s.insert("mode".into(), json!("commit"));
    s.insert("response_format".into(), json!("pcm"));
    s.insert("sample_rate".into(), json!(QWEN_RATE));
    if let Some(l) = req
        .language
        .as_deref()
        .and_then(|l| job.family.language(&req.model, l).ok())
    {
        s.insert("language_type".into(), l);
    }
    if req.speed != 1.0 {
        s.insert("speech_rate".into(), json!(req.speed));
    }
    if req.pitch != 1.0 {
        s.insert("pitch_rate".into(), json!(req.pitch));
    }
    if let Some(i) = &req.instructions {
        s.insert("instructions".into(), json!(i));
        s.insert(
            "optimize_instructions".into(),
            json!(req.optimize_instructions),
        );
    }
    Value::Object(s)
}

/// An `error` event as the HTTP path reports the same code.
fn realtime_error(v: &Value) -> EngineError {
    let e = v.get("error").cloned().unwrap_or(Value::Null);
    in_band_error(
        e.get("code").and_then(Value::as_str),
        e.get("message")
            .and_then(Value::as_str)
            .unwrap_or("no message"),
        v.get("event_id").and_then(Value::as_str).map(str::to_owned),
    )
}
