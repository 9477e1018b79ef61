//! One CosyVoice / Qwen-Audio-TTS task over the duplex run-task protocol: `run-task`, wait for
//! `task-started`, a `continue-task` per text item, `finish-task` when the text ends; audio
//! comes as binary frames, `result-generated` events carry word timings and billed
//! characters, `task-finished` ends the task (the connection goes back to the pool) and
//! `task-failed` fails it (the server closes the connection).
//!
//! It must not retry (the piece task does) and must not keep a connection that saw anything
//! but a clean `task-finished`.

use futures::SinkExt as _;
use serde_json::{Map, Value, json};
use tokio::{sync::mpsc, time::Instant};
use tokio_tungstenite::tungstenite::Message;

use super::{
    TextIn, in_band_error, io_error,
    pool::{Conn, Headers},
    session::{Ended, Frame, Handshake, Session, drive, handshake_event},
};
use crate::engine::{
    EngineError,
    dashscope::{
        Job,
        family::{Decoder, Step},
        piece::{PieceMsg, PieceTx, forward},
    },
};

/// Run one task for `job` with the text of `text`, sending its audio, words and end to `tx`.
pub(super) async fn run_task(
    job: &Job,
    text: mpsc::Receiver<TextIn>,
    tx: &PieceTx,
    sent: &mut bool,
) -> Result<(), EngineError> {
    let client = &job.client;
    let tuning = client.tuning();
    let url = client.websocket_base();
    let headers = Headers::new(
        &client.settings.api_key,
        client.settings.workspace_id.as_deref(),
    )?;
    let pool = client.ws_pool();
    let task_id = uuid::Uuid::new_v4().simple().to_string();
    let run = Message::text(run_task_message(job, &task_id).to_string());
    let mut conn = pool.get(&url, &headers, tuning.connect_timeout).await?;
    // A pooled connection the server closed meanwhile fails at once: try a fresh one.
    let started = start(&mut conn, run.clone(), tuning.first_event_timeout).await;
    match started {
        Err(e) if conn.reused && super::stale(&e) => {
            conn = pool.connect(&url, &headers, tuning.connect_timeout).await?;
            start(&mut conn, run, tuning.first_event_timeout).await?;
        }
        other => other?,
    }
    tracing::debug!(request_id = %job.req.request_id, task_id, reused = conn.reused, "run-task started");

    let mut decoder = Decoder::new(job.family, job.rate);
    let mut task = RunTask { task_id };
    let ended = drive(&mut conn, &mut task, text, &mut decoder, tuning, tx, sent).await?;
    if ended == Ended::Clean {
        pool.put(conn);
    }
    Ok(())
}

/// The run-task side of [`drive`].
struct RunTask {
    task_id: String,
}

impl Session for RunTask {
    fn text(&mut self, item: Option<TextIn>, audio_due: &mut bool) -> Vec<Value> {
        let message = match item {
            Some(TextIn::Text(t)) => continue_task(&self.task_id, json!({"text": t})),
            Some(TextIn::Flush) => {
                *audio_due = true;
                continue_task(&self.task_id, json!({"flush": true}))
            }
            None => {
                *audio_due = true;
                finish_task(&self.task_id)
            }
        };
        vec![message]
    }

    fn binary(&mut self, data: Vec<u8>, decoder: &mut Decoder) -> Result<Step, EngineError> {
        decoder.raw_audio(data)
    }

    async fn event(
        &mut self,
        text: &str,
        decoder: &mut Decoder,
        tx: &PieceTx,
        sent: &mut bool,
    ) -> Result<Frame, EngineError> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| EngineError::Protocol(format!("a run-task event is not JSON: {e}")))?;
        let header = v.get("header").cloned().unwrap_or(Value::Null);
        let payload = v.get("payload").cloned().unwrap_or(Value::Null);
        match header.get("event").and_then(Value::as_str) {
            Some("result-generated") => {
                let step = decoder.event(&payload, 200, false)?;
                if payload.pointer("/output/type").and_then(Value::as_str) == Some("sentence-end") {
                    forward(step, decoder, tx, sent).await?;
                    tx.send(Ok(PieceMsg::SentenceEnd)).await.map_err(|_| {
                        EngineError::Protocol("the synthesis was dropped".to_owned())
                    })?;
                    return Ok(Frame::Step(Step::Nothing));
                }
                Ok(Frame::Step(step))
            }
            Some("task-finished") => {
                decoder.event(&payload, 200, false)?;
                if let Some(output) = payload.get("output") {
                    decoder.task_finished_words(output);
                }
                decoder.request_id = header
                    .get("attributes")
                    .and_then(|a| a.get("request_uuid"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .or(Some(self.task_id.clone()));
                if decoder.audio_bytes == 0 {
                    return Err(EngineError::Protocol(
                        "the task finished without any audio (a custom voice that is not ready \
                         yet?)"
                            .to_owned(),
                    ));
                }
                decoder.finished = true;
                Ok(Frame::End(decoder.end()?))
            }
            Some("task-failed") => Err(in_band_error(
                header.get("error_code").and_then(Value::as_str),
                header
                    .get("error_message")
                    .and_then(Value::as_str)
                    .unwrap_or("no message"),
                Some(self.task_id.clone()),
            )),
            Some(_) => Ok(Frame::Step(Step::Nothing)),
            None => Err(EngineError::Protocol(
                "a run-task event without header.event".to_owned(),
            )),
        }
    }
}

/// Send `run` and wait for `task-started`.
async fn start(
    conn: &mut Conn,
    run: Message,
    timeout: std::time::Duration,
) -> Result<(), EngineError> {
    conn.ws.send(run).await.map_err(io_error)?;
    let started = Instant::now();
    loop {
        let event = handshake_event(conn, started, timeout, "no task-started", "run-task").await?;
        let Handshake::Event(v) = event else {
            return Err(EngineError::Protocol(
                "audio before task-started".to_owned(),
            ));
        };
        let header = v.get("header").cloned().unwrap_or(Value::Null);
        match header.get("event").and_then(Value::as_str) {
            Some("task-started") => return Ok(()),
            Some("task-failed") => {
                return Err(in_band_error(
                    header.get("error_code").and_then(Value::as_str),
                    header
                        .get("error_message")
                        .and_then(Value::as_str)
                        .unwrap_or("no message"),
                    header
                        .get("task_id")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                ));
            }
            _ => {}
        }
    }
}

/// The run-task message: the same parameters the HTTP body carries, asking for raw PCM.
fn run_task_message(job: &Job, task_id: &str) -> Value {
    let body = job.family.body(&job.req, "", job.rate);
    let mut parameters: Map<String, Value> = body
        .get("input")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    parameters.remove("text");
    parameters.insert("text_type".into(), json!("PlainText"));
    json!({
        "header": {"action": "run-task", "task_id": task_id, "streaming": "duplex"},
        "payload": {
            "task_group": "audio",
            "task": "tts",
            "function": "SpeechSynthesizer",
            "model": job.req.model,
            "parameters": parameters,
            "input": {},
        }
    })
}

fn continue_task(task_id: &str, input: Value) -> Value {
    json!({
        "header": {"action": "continue-task", "task_id": task_id, "streaming": "duplex"},
        "payload": {"input": input}
    })
}

fn finish_task(task_id: &str) -> Value {
    json!({
        "header": {"action": "finish-task", "task_id": task_id, "streaming": "duplex"},
        "payload": {"input": {}}
    })
}
