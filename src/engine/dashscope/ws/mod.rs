//! The DashScope WebSocket transport: CosyVoice / Qwen-Audio-TTS over the duplex run-task
//! protocol (`runtask`) and the Qwen-TTS-Realtime models over their realtime session protocol
//! (`realtime`), as `../shared/dashscope-realtime-api.md` describes them.
//!
//! It is a transport of the DashScope engine, not another engine: the engine still splits the
//! text ([`super::split`]), runs each piece on its own task with the same retries (before the
//! first audio), timeouts, request slots and error mapping, and the driver joins the pieces.
//! Only a piece's *attempt* differs: [`attempt_piece`] runs it as one WebSocket task on a
//! connection from the [`Pool`] instead of one HTTP/SSE request.
//!
//! Text goes in as a channel of [`TextIn`] items (`run_task` / `run_session` take the
//! receiver): `Synthesize` sends its piece and drops the sender, which ends the task
//! (`finish-task`, `input_text_buffer.commit` + `session.finish`). A streamed-text RPC feeds the
//! same channel as text arrives and sends [`TextIn::Flush`] where it wants the buffered text
//! voiced now.
//!
//! Which transport serves a request is [`protocol_for`] (the `dashscope.transport` rule);
//! for a streamed text, [`protocol_for_streamed_text`] (CosyVoice takes run-task under `auto`
//! whatever the endpoint), served by `super::streamed` as one task.
//! This module must not split text or order pieces (the engine does) and must never log or
//! return the API key.

mod pool;
mod realtime;
mod runtask;
mod session;

use std::{sync::Arc, time::Duration};

use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite;

pub use self::pool::Pool;
use super::{Family, Job, piece::PieceTx};
use crate::engine::EngineError;

/// `dashscope.transport`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// WebSocket where the model or the region needs it, HTTP/SSE otherwise.
    #[default]
    Auto,
    /// HTTP/SSE (the `*-realtime` models still use their WebSocket: they have no HTTP API).
    Http,
    /// WebSocket for every model that has a WebSocket API (CosyVoice, Qwen-Audio-TTS, the
    /// `*-realtime` models); Qwen-TTS (non-realtime) and MiniMax have none and stay on HTTP.
    WebSocket,
}

impl Transport {
    /// The setting's value for `s`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(Self::Auto),
            "http" => Some(Self::Http),
            "websocket" => Some(Self::WebSocket),
            _ => None,
        }
    }
}

/// Which WebSocket protocol serves a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `run-task` / `continue-task` / `finish-task` on `…/api-ws/v1/inference`.
    RunTask,
    /// Qwen-TTS-Realtime sessions on `…/api-ws/v1/realtime?model=…`.
    Realtime,
}

/// A Qwen-TTS-Realtime model (`qwen3-tts-flash-realtime`, `qwen-tts-realtime`,
/// `qwen3-tts-vc-realtime-2025-…`): served only over its WebSocket.
pub fn is_realtime_model(model: &str) -> bool {
    Family::for_model(model) == Some(Family::Qwen)
        && (model.ends_with("-realtime") || model.contains("-realtime-"))
}

/// True when `url` is an international (Singapore) DashScope endpoint, where CosyVoice takes
/// only WebSocket connections.
fn is_international(url: &str) -> bool {
    url.contains("dashscope-intl.") || url.contains(".ap-southeast-1.")
}

/// The `dashscope.transport` rule: the WebSocket protocol that serves `model` of `family`, or
/// `None` for HTTP/SSE.
///
/// - `*-realtime` Qwen models: always the realtime protocol (they have no HTTP API);
/// - CosyVoice / Qwen-Audio-TTS: run-task when `transport` is `websocket`, or `auto` with an
///   international endpoint (the HTTP base or the WebSocket base);
/// - everything else (Qwen-TTS, MiniMax, CosyVoice in Beijing under `auto`): HTTP/SSE.
///
/// Streamed text in ([`protocol_for_streamed_text`]) picks run-task for CosyVoice whatever
/// the endpoint under `auto`.
pub fn protocol_for(
    transport: Transport,
    http_base: &str,
    ws_base: &str,
    family: Family,
    model: &str,
) -> Option<Protocol> {
    if is_realtime_model(model) {
        return Some(Protocol::Realtime);
    }
    match (family, transport) {
        (Family::CosyVoice, Transport::WebSocket) => Some(Protocol::RunTask),
        (Family::CosyVoice, Transport::Auto)
            if is_international(http_base) || is_international(ws_base) =>
        {
            Some(Protocol::RunTask)
        }
        _ => None,
    }
}

/// The `dashscope.transport` rule for a streamed text (`SynthesizeStream`): the WebSocket
/// protocol that takes it as it is written, or `None` (then the engine gets whole sentences
/// over whatever [`protocol_for`] says).
///
/// - `*-realtime` Qwen models: the realtime protocol;
/// - CosyVoice: run-task under `auto` (any endpoint: only WebSocket takes streamed text) and
///   `websocket`; `http` keeps it on HTTP/SSE, sentence by sentence;
/// - everything else (Qwen-Audio-TTS, Qwen-TTS, MiniMax): `None`.
pub fn protocol_for_streamed_text(
    transport: Transport,
    family: Family,
    model: &str,
) -> Option<Protocol> {
    if is_realtime_model(model) {
        return Some(Protocol::Realtime);
    }
    match (family, transport) {
        (Family::CosyVoice, Transport::Auto | Transport::WebSocket)
            if model.starts_with("cosyvoice") =>
        {
            Some(Protocol::RunTask)
        }
        _ => None,
    }
}

/// The run-task URL (`…/api-ws/v1/inference`) derived from the HTTP base
/// (`https://H/api/v1` → `wss://H/api-ws/v1/inference`; `http://` → `ws://`).
pub fn derived_websocket_base(http_base: &str) -> String {
    let base = http_base.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    };
    let base = match base.strip_suffix("/api/v1") {
        Some(host) => format!("{host}/api-ws/v1"),
        None => base,
    };
    format!("{base}/inference")
}

/// The realtime URL for `model`: the run-task URL with `/inference` replaced by `/realtime`,
/// and `?model=`.
pub fn realtime_url(ws_base: &str, model: &str) -> String {
    let base = ws_base.trim_end_matches('/');
    let base = base.strip_suffix("/inference").unwrap_or(base);
    format!("{base}/realtime?model={model}")
}

/// Text for a WebSocket task, in order.
pub use crate::engine::TextIn;

/// One try at a piece over the WebSocket `protocol`: the same contract as the HTTP attempt
/// (messages to `tx`, `sent` set once audio went out).
pub(super) async fn attempt_piece(
    job: &Job,
    protocol: Protocol,
    text: &str,
    tx: &PieceTx,
    sent: &mut bool,
) -> Result<(), EngineError> {
    let client = &job.client;
    let tuning = client.tuning();
    let _slot = match tokio::time::timeout(
        tuning.queue_timeout,
        Arc::clone(&client.slots).acquire_owned(),
    )
    .await
    {
        Ok(Ok(permit)) => permit,
        _ => {
            return Err(EngineError::Saturated {
                limit: tuning.max_concurrent_requests,
                waited: tuning.queue_timeout,
            });
        }
    };
    let (text_tx, text_rx) = mpsc::channel(4);
    // The whole piece is known: send it and end the task.
    let _ = text_tx.send(TextIn::Text(text.to_owned())).await;
    drop(text_tx);
    match protocol {
        Protocol::RunTask => runtask::run_task(job, text_rx, tx, sent).await,
        Protocol::Realtime => realtime::run_session(job, text_rx, tx, sent).await,
    }
}

/// A streamed text as one WebSocket task over `protocol`: the text as `text` gives it, its
/// messages to `tx`, `sent` set once audio went out. No retry (a streamed text cannot be
/// replayed by the engine: the caller falls back).
pub(super) async fn run_streamed(
    job: &Job,
    protocol: Protocol,
    text: mpsc::Receiver<TextIn>,
    tx: &PieceTx,
    sent: &mut bool,
) -> Result<(), EngineError> {
    match protocol {
        Protocol::RunTask => runtask::run_task(job, text, tx, sent).await,
        Protocol::Realtime => realtime::run_session(job, text, tx, sent).await,
    }
}

/// A connection failure before any WebSocket frame (refused, TLS, handshake answered with an
/// HTTP error).
fn connect_error(e: tungstenite::Error) -> EngineError {
    match e {
        tungstenite::Error::Http(response) => {
            let status = response.status().as_u16();
            let body = response.body().as_deref().unwrap_or_default();
            let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
            if let Some(v) = &parsed
                && let Some(EngineError::Api {
                    code,
                    message,
                    request_id,
                    ..
                }) = super::family::error_in(v, status, true)
            {
                return EngineError::Api {
                    status,
                    code,
                    message,
                    request_id,
                };
            }
            EngineError::Api {
                status,
                code: None,
                message: format!("the WebSocket handshake was answered with HTTP {status}"),
                request_id: None,
            }
        }
        other => EngineError::Transport(Box::new(other)),
    }
}

/// True when `e` says a pooled connection was already closed by the server (a close, a
/// broken socket), not that the upstream was slow or refused the task: the task may start
/// again at once on a fresh connection.
fn stale(e: &EngineError) -> bool {
    match e {
        EngineError::Truncated => true,
        EngineError::Transport(source) => source.downcast_ref::<tungstenite::Error>().is_some(),
        _ => false,
    }
}

/// A read or write failure on an open connection.
fn io_error(e: tungstenite::Error) -> EngineError {
    EngineError::Transport(Box::new(e))
}

fn timed_out(what: &str, after: Duration) -> EngineError {
    EngineError::Transport(Box::new(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what} from upstream within {after:?}"),
    )))
}

/// An error reported in-band (`task-failed`, a realtime `error` event) as the HTTP path
/// reports the same code.
fn in_band_error(code: Option<&str>, message: &str, request_id: Option<String>) -> EngineError {
    let code = code.filter(|c| !c.trim().is_empty()).map(str::to_owned);
    EngineError::Api {
        status: code.as_deref().map_or(500, super::family::implied_status),
        code,
        message: message.chars().take(300).collect(),
        request_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_urls_follow_the_http_base() {
        assert_eq!(
            derived_websocket_base("https://dashscope.aliyuncs.com/api/v1"),
            "wss://dashscope.aliyuncs.com/api-ws/v1/inference"
        );
        assert_eq!(
            derived_websocket_base("https://ws1.ap-southeast-1.maas.aliyuncs.com/api/v1/"),
            "wss://ws1.ap-southeast-1.maas.aliyuncs.com/api-ws/v1/inference"
        );
        assert_eq!(
            derived_websocket_base("http://127.0.0.1:9/api/v1"),
            "ws://127.0.0.1:9/api-ws/v1/inference"
        );
        assert_eq!(
            realtime_url(
                "wss://dashscope-intl.aliyuncs.com/api-ws/v1/inference/",
                "qwen3-tts-flash-realtime"
            ),
            "wss://dashscope-intl.aliyuncs.com/api-ws/v1/realtime?model=qwen3-tts-flash-realtime"
        );
    }

    #[test]
    fn the_transport_rule() {
        let cn = "https://dashscope.aliyuncs.com/api/v1";
        let cn_ws = derived_websocket_base(cn);
        let intl = "https://dashscope-intl.aliyuncs.com/api/v1";
        let intl_ws = derived_websocket_base(intl);
        let cosy = |t, h, w| protocol_for(t, h, w, Family::CosyVoice, "cosyvoice-v3-flash");
        assert_eq!(cosy(Transport::Auto, cn, &cn_ws), None);
        assert_eq!(
            cosy(Transport::Auto, intl, &intl_ws),
            Some(Protocol::RunTask)
        );
        assert_eq!(
            cosy(Transport::WebSocket, cn, &cn_ws),
            Some(Protocol::RunTask)
        );
        assert_eq!(cosy(Transport::Http, intl, &intl_ws), None);
        for t in [Transport::Auto, Transport::Http, Transport::WebSocket] {
            assert_eq!(
                protocol_for(t, cn, &cn_ws, Family::Qwen, "qwen3-tts-flash-realtime"),
                Some(Protocol::Realtime)
            );
            assert_eq!(
                protocol_for(t, intl, &intl_ws, Family::Qwen, "qwen3-tts-flash"),
                None
            );
            assert_eq!(
                protocol_for(t, intl, &intl_ws, Family::MiniMax, "MiniMax/speech-02-hd"),
                None
            );
        }
        assert!(is_realtime_model("qwen3-tts-vc-realtime-2025-11-27"));
        assert!(!is_realtime_model("cosyvoice-v3-flash"));
    }

    #[test]
    fn the_transport_rule_for_streamed_text() {
        let streamed = protocol_for_streamed_text;
        let cosy = "cosyvoice-v3-flash";
        assert_eq!(
            streamed(Transport::Auto, Family::CosyVoice, cosy),
            Some(Protocol::RunTask)
        );
        assert_eq!(
            streamed(Transport::WebSocket, Family::CosyVoice, cosy),
            Some(Protocol::RunTask)
        );
        assert_eq!(streamed(Transport::Http, Family::CosyVoice, cosy), None);
        assert_eq!(
            streamed(Transport::Auto, Family::CosyVoice, "qwen-audio-tts"),
            None
        );
        for t in [Transport::Auto, Transport::Http, Transport::WebSocket] {
            assert_eq!(
                streamed(t, Family::Qwen, "qwen3-tts-flash-realtime"),
                Some(Protocol::Realtime)
            );
            assert_eq!(streamed(t, Family::Qwen, "qwen3-tts-flash"), None);
            assert_eq!(streamed(t, Family::MiniMax, "MiniMax/speech-02-hd"), None);
        }
    }

    #[test]
    fn in_band_codes_map_as_over_http() {
        for (code, status) in [
            ("InvalidApiKey", 401),
            ("Throttling.RateQuota", 429),
            ("DataInspectionFailed", 400),
            ("InternalError", 500),
            ("InvalidParameter", 400),
        ] {
            match in_band_error(Some(code), "m", None) {
                EngineError::Api { status: s, .. } => assert_eq!(s, status, "{code}"),
                other => panic!("{other:?}"),
            }
        }
    }
}
