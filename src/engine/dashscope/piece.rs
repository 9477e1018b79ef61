//! One piece of a synthesis: one streamed upstream request, retried while it has sent no
//! audio.
//!
//! [`run_piece`] runs on its own task and sends [`PieceMsg`]s to the driver: the piece's audio
//! as the family's decoder yields it, its word timings, and its end (or one error). A try
//! ([`attempt_piece`]) runs on its synthesis's request slot when it is the front piece, or else
//! takes a spare one (waiting for whichever comes first; see `driver`), posts the family's
//! body, and reads the SSE stream (or the one JSON body of an upstream that ignored the SSE
//! header) within the first-event and idle timeouts. Retries use jittered exponential
//! [`backoff`], only while at least [`MIN_TRY`] would be left before the client's deadline, and
//! stop for good once audio has gone to the driver (audio is never duplicated).
//!
//! This module must not order pieces or touch audio samples: ordering and joins belong to the
//! driver and to the audio stage after it.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use rand::Rng;
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};

use super::{
    Family, Job, Tuning,
    family::{self, Decoder, Step},
    sse::{Limits, Parser},
};
use crate::{
    audio::AudioSpec,
    engine::{EngineError, WordTiming},
};

/// The least time a retry must have before the request's deadline: DashScope's first audio
/// normally comes 0.4–0.7 s after a request.
const MIN_TRY: Duration = Duration::from_secs(1);

/// What a piece task sends to the driver.
#[derive(Debug)]
pub(super) enum PieceMsg {
    /// s16le PCM of `spec`, split anywhere.
    Audio { spec: AudioSpec, data: Bytes },
    /// Word timings, in ms from the start of the piece's audio.
    Words(Vec<WordTiming>),
    /// The upstream finished voicing one of its sentences (run-task `sentence-end`, realtime
    /// `response.done`): counted by a streamed text to know what it has acknowledged.
    SentenceEnd,
    /// The piece is complete.
    Done {
        characters: Option<u32>,
        request_id: Option<String>,
    },
}

/// The piece task's side of its channel to the driver.
pub(super) type PieceTx = mpsc::Sender<Result<PieceMsg, EngineError>>;

/// Run one piece with retries, sending its audio and end to `tx`.
///
/// `front` says whether the piece is the one the driver forwards: it then runs on the
/// synthesis's own request slot; until then it needs a spare one, and waits for whichever
/// comes first (it never fails for want of a slot, so an admitted text is never cut by
/// newcomers).
pub(super) async fn run_piece(
    job: Arc<Job>,
    text: String,
    tx: PieceTx,
    mut front: watch::Receiver<bool>,
) {
    let tuning = job.client.tuning();
    let mut attempt = 1;
    loop {
        let mut sent = false;
        let result = attempt_piece(&job, &text, &tx, &mut sent, &mut front).await;
        let error = match result {
            Ok(()) => return,
            Err(e) => e,
        };
        if tx.is_closed() {
            return;
        }
        let retry = !sent && error.is_retryable() && attempt < tuning.max_attempts;
        let delay = backoff(tuning, attempt);
        // A retry needs time to produce audio: with less than MIN_TRY left after the backoff,
        // the error goes out now, so the fallback (or the client) still has the rest.
        let in_time = job
            .req
            .deadline
            .is_none_or(|d| Instant::now() + delay + MIN_TRY < d);
        if !(retry && in_time) {
            let _ = tx.send(Err(error)).await;
            return;
        }
        tracing::info!(
            request_id = %job.req.request_id,
            attempt,
            error = %crate::error::chain(&error),
            delay_ms = delay.as_millis() as u64,
            "upstream failed before any audio; retrying"
        );
        crate::metrics::metrics()
            .upstream_retries
            .get_or_create(&crate::metrics::FamilyLabels {
                family: job.family.engine_name().to_owned(),
            })
            .inc();
        tokio::time::sleep(delay).await;
        attempt += 1;
    }
}

/// Count one upstream request's outcome.
pub(super) fn upstream_outcome(family: Family, outcome: &str) {
    crate::metrics::metrics()
        .upstream_requests
        .get_or_create(&crate::metrics::UpstreamLabels {
            family: family.engine_name().to_owned(),
            outcome: outcome.to_owned(),
        })
        .inc();
}

/// Full-jitter exponential backoff before try `attempt + 1`.
pub(super) fn backoff(tuning: &Tuning, attempt: u32) -> Duration {
    let cap = tuning
        .retry_base
        .saturating_mul(1 << (attempt - 1).min(16))
        .min(tuning.retry_max);
    let ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::rng().random_range(ms / 2..=ms.max(1)))
}

/// One try at a piece.
async fn attempt_piece(
    job: &Job,
    text: &str,
    tx: &PieceTx,
    sent: &mut bool,
    front: &mut watch::Receiver<bool>,
) -> Result<(), EngineError> {
    if let Some(protocol) = job.client.websocket_protocol(job.family, &job.req.model) {
        return super::ws::attempt_piece(job, protocol, text, tx, sent).await;
    }
    let client = &job.client;
    let tuning = client.tuning();
    // Held for the whole attempt, unless the piece runs on its synthesis's slot: at most
    // max_concurrent_requests upstream requests at once.
    let _spare = if *front.borrow() {
        None
    } else {
        tokio::select! {
            biased;
            turn = front.wait_for(|f| *f) => {
                if turn.is_err() {
                    // The driver is gone: so is the synthesis.
                    return Err(EngineError::Protocol("the synthesis was dropped".to_owned()));
                }
                None
            }
            permit = Arc::clone(&client.slots).acquire_owned() => permit.ok(),
        }
    };
    let body = job.family.body(&job.req, text, job.rate);
    let request = client
        .post(job.family.path())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(reqwest::header::ACCEPT, "text/event-stream")
        .header("X-DashScope-SSE", "enable")
        .header("X-Accel-Buffering", "no")
        .body(serde_json::to_vec(&body).map_err(|e| EngineError::Protocol(e.to_string()))?);
    let started = Instant::now();
    let first_deadline = started + tuning.first_event_timeout;
    let mut response = tokio::time::timeout_at(first_deadline, request.send())
        .await
        .map_err(|_| {
            upstream_outcome(job.family, "timeout");
            timed_out("no response", tuning.first_event_timeout)
        })?
        .map_err(|e| {
            upstream_outcome(job.family, "transport");
            EngineError::Transport(Box::new(e.without_url()))
        })?;
    let status = response.status().as_u16();
    let family = crate::metrics::FamilyLabels {
        family: job.family.engine_name().to_owned(),
    };
    let m = crate::metrics::metrics();
    m.upstream_latency
        .get_or_create(&family)
        .observe(started.elapsed().as_secs_f64());
    if status == 429 {
        m.upstream_throttled.get_or_create(&family).inc();
    }
    upstream_outcome(
        job.family,
        &if status == 200 {
            "ok".to_owned()
        } else {
            format!("http_{status}")
        },
    );
    let is_sse = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let header_request_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if status != 200 && !is_sse {
        return Err(http_error(response, status, header_request_id).await);
    }

    let mut decoder = Decoder::new(job.family, job.rate);
    let mut parser = Parser::new(Limits::default());
    let mut events = Vec::new();
    let mut body_json = Vec::new();
    let mut got_event = false;
    loop {
        let wait = if got_event {
            Instant::now() + tuning.idle_timeout
        } else {
            first_deadline
        };
        let chunk = tokio::time::timeout_at(wait, response.chunk())
            .await
            .map_err(|_| {
                if got_event {
                    timed_out("the stream went silent", tuning.idle_timeout)
                } else {
                    timed_out("no event", tuning.first_event_timeout)
                }
            })?
            .map_err(|e| EngineError::Transport(Box::new(e.without_url())))?;
        let Some(chunk) = chunk else { break };
        if !is_sse {
            // HTTP 200 with one JSON body: the upstream ignored the SSE header.
            if body_json.len() + chunk.len() > Limits::default().max_event {
                return Err(EngineError::Protocol("response body too large".to_owned()));
            }
            body_json.extend_from_slice(&chunk);
            continue;
        }
        parser
            .push(&chunk, &mut events)
            .map_err(|e| EngineError::Protocol(e.to_string()))?;
        for event in events.drain(..) {
            got_event = true;
            let Some(json) = event.json() else {
                if event.is_error() {
                    return Err(EngineError::Api {
                        status: event.http_status.unwrap_or(500),
                        code: None,
                        message: "error event without data".to_owned(),
                        request_id: header_request_id.clone(),
                    });
                }
                continue;
            };
            let json = json.map_err(|e| {
                EngineError::Protocol(format!("an SSE event's data is not JSON: {e}"))
            })?;
            let ev_status = event.http_status.unwrap_or(status);
            let step = decoder.event(&json, ev_status.max(status), event.is_error())?;
            if forward(step, &mut decoder, tx, sent).await? {
                return Ok(());
            }
        }
    }
    if is_sse {
        if let Some(event) = parser
            .finish()
            .map_err(|e| EngineError::Protocol(e.to_string()))?
            && let Some(json) = event.json()
        {
            let json = json.map_err(|e| {
                EngineError::Protocol(format!("an SSE event's data is not JSON: {e}"))
            })?;
            let step =
                decoder.event(&json, event.http_status.unwrap_or(status), event.is_error())?;
            if forward(step, &mut decoder, tx, sent).await? {
                return Ok(());
            }
        }
    } else {
        let json: serde_json::Value = serde_json::from_slice(&body_json)
            .map_err(|e| EngineError::Protocol(format!("response body is not JSON: {e}")))?;
        let step = decoder.event(&json, status, false)?;
        if forward(step, &mut decoder, tx, sent).await? {
            return Ok(());
        }
    }
    let step = decoder.end()?;
    forward(step, &mut decoder, tx, sent).await?;
    Ok(())
}

/// Send a step to the driver; `Ok(true)` when the piece is complete.
pub(super) async fn forward(
    step: Step,
    decoder: &mut Decoder,
    tx: &PieceTx,
    sent: &mut bool,
) -> Result<bool, EngineError> {
    if !decoder.words.is_empty() {
        send(tx, PieceMsg::Words(std::mem::take(&mut decoder.words))).await?;
    }
    let step = match step {
        Step::Audio { .. } if decoder.finished => {
            send(tx, step_msg(step, decoder)).await?;
            *sent = true;
            decoder.end()?
        }
        other => other,
    };
    match step {
        Step::Nothing => Ok(false),
        Step::Audio { .. } => {
            send(tx, step_msg(step, decoder)).await?;
            *sent = true;
            Ok(false)
        }
        Step::Finished => {
            send(tx, step_msg(Step::Finished, decoder)).await?;
            Ok(true)
        }
    }
}

fn step_msg(step: Step, decoder: &Decoder) -> PieceMsg {
    match step {
        Step::Audio { spec, data } => PieceMsg::Audio { spec, data },
        Step::Nothing | Step::Finished => PieceMsg::Done {
            characters: decoder.characters,
            request_id: decoder.request_id.clone(),
        },
    }
}

async fn send(tx: &PieceTx, msg: PieceMsg) -> Result<(), EngineError> {
    tx.send(Ok(msg))
        .await
        .map_err(|_| EngineError::Protocol("the synthesis was dropped".to_owned()))
}

fn timed_out(what: &str, after: Duration) -> EngineError {
    EngineError::Transport(Box::new(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what} from upstream within {after:?}"),
    )))
}

/// The error of a non-200, non-SSE response: its JSON body's code and message when it has
/// them (DashScope's documented error body: `code`, `message`, `request_id`).
async fn http_error(
    mut response: reqwest::Response,
    status: u16,
    header_request_id: Option<String>,
) -> EngineError {
    let mut body = Vec::new();
    while body.len() < 64 * 1024 {
        match response.chunk().await {
            Ok(Some(c)) => body.extend_from_slice(&c),
            _ => break,
        }
    }
    let parsed: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    if let Some(v) = &parsed
        && let Some(EngineError::Api {
            code,
            message,
            request_id,
            ..
        }) = family::error_in(v, status, true)
    {
        return EngineError::Api {
            status,
            code,
            message,
            request_id: request_id.or(header_request_id),
        };
    }
    EngineError::Api {
        status,
        code: None,
        message: format!("HTTP {status} without a DashScope error body"),
        request_id: header_request_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_capped() {
        let t = Tuning::default();
        for attempt in 1..10 {
            let d = backoff(&t, attempt);
            assert!(d <= t.retry_max, "{d:?}");
        }
        assert!(backoff(&t, 1) <= Duration::from_millis(250));
    }
}
