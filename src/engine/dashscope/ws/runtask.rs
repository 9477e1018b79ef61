//! One CosyVoice / Qwen-Audio-TTS task over the duplex run-task protocol: `run-task`, wait for
//! `task-started`, a `continue-task` per text item, `finish-task` when the text ends; audio
//! comes as binary frames, `result-generated` events carry word timings and billed
//! characters, `task-finished` ends the task (the connection goes back to the pool) and
//! `task-failed` fails it (the server closes the connection).
//!
//! It must not retry (the piece task does) and must not keep a connection that saw anything
//! but a clean `task-finished`.

use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Map, Value, json};
use tokio::{sync::mpsc, time::Instant};
use tokio_tungstenite::tungstenite::Message;

use super::{
    TextIn, in_band_error, io_error,
    pool::{Conn, Headers},
    timed_out,
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
    mut text: mpsc::Receiver<TextIn>,
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
    let mut text_open = true;
    // The first audio is due within first_event_timeout of the text being complete (or
    // flushed); after it, frames may not be further apart than idle_timeout.
    let mut first_due: Option<Instant> = None;
    let mut got_audio = false;
    loop {
        let wait = if got_audio {
            Some(Instant::now() + tuning.idle_timeout)
        } else {
            first_due
        };
        let msg = tokio::select! {
            item = text.recv(), if text_open => {
                let message = match item {
                    Some(TextIn::Text(t)) => continue_task(&task_id, json!({"text": t})),
                    Some(TextIn::Flush) => {
                        first_due.get_or_insert(Instant::now() + tuning.first_event_timeout);
                        continue_task(&task_id, json!({"flush": true}))
                    }
                    None => {
                        text_open = false;
                        first_due.get_or_insert(Instant::now() + tuning.first_event_timeout);
                        finish_task(&task_id)
                    }
                };
                conn.ws.send(Message::text(message.to_string())).await.map_err(io_error)?;
                continue;
            }
            m = next_before(&mut conn, wait) => m,
        };
        let msg = match msg {
            Ok(m) => m,
            Err(()) => {
                return Err(if got_audio {
                    timed_out("the stream went silent", tuning.idle_timeout)
                } else {
                    timed_out("no audio", tuning.first_event_timeout)
                });
            }
        };
        let step = match msg {
            None | Some(Ok(Message::Close(_))) => return Err(EngineError::Truncated),
            Some(Err(e)) => return Err(io_error(e)),
            Some(Ok(Message::Binary(data))) => {
                got_audio = true;
                decoder.raw_audio(data.to_vec())?
            }
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).map_err(|e| {
                    EngineError::Protocol(format!("a run-task event is not JSON: {e}"))
                })?;
                let header = v.get("header").cloned().unwrap_or(Value::Null);
                let payload = v.get("payload").cloned().unwrap_or(Value::Null);
                match header.get("event").and_then(Value::as_str) {
                    Some("result-generated") => {
                        let step = decoder.event(&payload, 200, false)?;
                        if payload.pointer("/output/type").and_then(Value::as_str)
                            == Some("sentence-end")
                        {
                            forward(step, &mut decoder, tx, sent).await?;
                            tx.send(Ok(PieceMsg::SentenceEnd)).await.map_err(|_| {
                                EngineError::Protocol("the synthesis was dropped".to_owned())
                            })?;
                            continue;
                        }
                        step
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
                            .or(Some(task_id.clone()));
                        if decoder.audio_bytes == 0 {
                            return Err(EngineError::Protocol(
                                "the task finished without any audio (a custom voice that is \
                                 not ready yet?)"
                                    .to_owned(),
                            ));
                        }
                        decoder.finished = true;
                        let step = decoder.end()?;
                        forward(step, &mut decoder, tx, sent).await?;
                        if text_open {
                            // The upstream ended the task before herald ended the text.
                            return Ok(());
                        }
                        client.ws_pool().put(conn);
                        return Ok(());
                    }
                    Some("task-failed") => {
                        return Err(in_band_error(
                            header.get("error_code").and_then(Value::as_str),
                            header
                                .get("error_message")
                                .and_then(Value::as_str)
                                .unwrap_or("no message"),
                            Some(task_id),
                        ));
                    }
                    Some(_) => Step::Nothing,
                    None => {
                        return Err(EngineError::Protocol(
                            "a run-task event without header.event".to_owned(),
                        ));
                    }
                }
            }
            Some(Ok(_)) => Step::Nothing,
        };
        if forward(step, &mut decoder, tx, sent).await? {
            return Ok(());
        }
    }
}

/// The next message, or `Err(())` when `deadline` passed first.
pub(super) async fn next_before(
    conn: &mut Conn,
    deadline: Option<Instant>,
) -> Result<Option<Result<Message, tokio_tungstenite::tungstenite::Error>>, ()> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, conn.ws.next())
            .await
            .map_err(|_| ()),
        None => Ok(conn.ws.next().await),
    }
}

/// Send `run` and wait for `task-started`.
async fn start(
    conn: &mut Conn,
    run: Message,
    timeout: std::time::Duration,
) -> Result<(), EngineError> {
    conn.ws.send(run).await.map_err(io_error)?;
    let deadline = Instant::now() + timeout;
    loop {
        let msg = next_before(conn, Some(deadline))
            .await
            .map_err(|()| timed_out("no task-started", timeout))?;
        match msg {
            None | Some(Ok(Message::Close(_))) => return Err(EngineError::Truncated),
            Some(Err(e)) => return Err(io_error(e)),
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).map_err(|e| {
                    EngineError::Protocol(format!("a run-task event is not JSON: {e}"))
                })?;
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
            Some(Ok(Message::Binary(_))) => {
                return Err(EngineError::Protocol(
                    "audio before task-started".to_owned(),
                ));
            }
            Some(Ok(_)) => {}
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
