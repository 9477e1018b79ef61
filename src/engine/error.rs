//! [`EngineError`]: how an engine call fails, whether a retry may help, and what that means
//! for the client ([`EngineError::classify`]: the one place an engine failure gets its
//! [`ErrorKind`] and message). Must not depend on any door's wire format.

use std::{sync::Arc, time::Duration};

use crate::error::{Error, ErrorKind, chain};

/// Upstream error code of DashScope's content filter.
const CONTENT_FILTER_CODE: &str = "DataInspectionFailed";

/// Errors an engine reports. Each knows whether a retry could help ([`EngineError::is_retryable`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The upstream answered with an error status or an in-band error object.
    #[error("upstream rejected the request ({status}): {message}")]
    Api {
        /// HTTP status (for in-band errors: the status the event carries, else one implied by
        /// the code).
        status: u16,
        /// Upstream error code, e.g. `Throttling.RateQuota`.
        code: Option<String>,
        /// Upstream message.
        message: String,
        /// Upstream request id, for support tickets.
        request_id: Option<String>,
    },
    /// The upstream could not be reached, or the connection broke.
    #[error("could not reach upstream")]
    Transport(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The upstream asked to be retried after a delay.
    #[error("upstream asked us to retry in {0:?}")]
    RetryIn(Duration),
    /// The upstream sent something that does not follow its protocol.
    #[error("upstream sent a malformed event: {0}")]
    Protocol(String),
    /// The upstream stream ended before it said it was complete.
    #[error("upstream stream ended before completion")]
    Truncated,
    /// The upstream failed after some of the audio had already gone to the client: the stream
    /// cannot be retried without duplicating audio, so it ends (UNAVAILABLE).
    #[error("upstream failed after audio had been sent: {0}")]
    Interrupted(Box<EngineError>),
    /// A local engine cannot run here (binary missing, cannot be started).
    #[error("{engine} is not available: {reason}")]
    Unavailable {
        /// Engine name.
        engine: &'static str,
        /// Why, for operators.
        reason: String,
    },
    /// A local engine ran but failed.
    #[error("{engine} failed: {reason}")]
    Failed {
        /// Engine name.
        engine: &'static str,
        /// Why, for operators.
        reason: String,
    },
    /// An error of an upstream call shared by several requests (the cache's single flight):
    /// behaves exactly as the error it wraps.
    #[error(transparent)]
    Shared(Arc<EngineError>),
    /// herald's own cap on concurrent upstream requests was reached and no slot freed up
    /// within the queue timeout.
    #[error("{limit} upstream requests are already running and none finished within {waited:?}")]
    Saturated {
        /// The cap (`dashscope.max_concurrent_requests`).
        limit: usize,
        /// The wait (`dashscope.queue_timeout_ms`).
        waited: Duration,
    },
    /// A local engine already runs as many processes as its setting allows.
    #[error("{limit} {engine} processes are already running")]
    Busy {
        /// Engine name.
        engine: &'static str,
        /// The setting that bounds them (`espeak.max_processes`).
        setting: &'static str,
        /// Its value.
        limit: usize,
    },
    /// The request's text holds nothing an engine can speak (no piece survived splitting:
    /// only whitespace, say): a request problem, not an upstream one.
    #[error("the text has nothing to say")]
    NothingToSay,
    /// The engine did not finish within its configured time bound.
    #[error("{engine} did not finish within {limit:?}")]
    TimedOut {
        /// Engine name.
        engine: &'static str,
        /// The bound.
        limit: Duration,
    },
}

impl EngineError {
    /// True when the same request may succeed if sent again (transport errors, throttling,
    /// upstream 5xx, explicit retry hints, truncated streams). Billing states that come as 429
    /// (`PrepaidBillOverdue`, ...) are not retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Transport(_) | Self::RetryIn(_) | Self::Truncated => true,
            Self::Api { status, code, .. } => {
                let billing = code
                    .as_deref()
                    .is_some_and(|c| c.ends_with("BillOverdue") || c == "CommodityNotPurchased");
                (*status == 429 && !billing) || *status >= 500 || *status == 408
            }
            Self::Shared(inner) => inner.is_retryable(),
            Self::Protocol(_)
            | Self::Interrupted(_)
            | Self::Unavailable { .. }
            | Self::Saturated { .. }
            | Self::Busy { .. }
            | Self::NothingToSay
            | Self::Failed { .. }
            | Self::TimedOut { .. } => false,
        }
    }

    /// What this failure means for the client: its kind and a message that never contains
    /// secrets or request text (the table in docs/errors.md).
    pub fn classify(&self) -> Error {
        match self {
            Self::Shared(inner) => inner.classify(),
            Self::Api {
                status,
                code,
                message,
                request_id,
            } => {
                let code_str = code.as_deref().unwrap_or("no code");
                let id = request_id
                    .as_deref()
                    .map(|r| format!(", request_id {r}"))
                    .unwrap_or_default();
                let cause = format!("HTTP {status}, code {code_str}{id}");
                if code.as_deref() == Some(CONTENT_FILTER_CODE) {
                    Error::invalid(format!(
                        "text: rejected by the upstream content filter ({cause}): {message}"
                    ))
                } else if *status == 401 || *status == 403 {
                    Error::failed_precondition(format!(
                        "upstream rejected herald's credentials ({cause}): {message}; check the \
                         dashscope.api_key setting (DASHSCOPE_API_KEY / DASHSCOPE_API_KEY_FILE_PATH) \
                         and that the key's workspace may use this model"
                    ))
                } else if code.as_deref() == Some("Arrearage") {
                    Error::failed_precondition(format!(
                        "upstream refused herald's account ({cause}): {message}"
                    ))
                } else if *status == 429 {
                    Error::resource_exhausted(format!(
                        "upstream is throttling requests ({cause}): {message}"
                    ))
                } else if *status >= 500 || *status == 408 {
                    Error::unavailable(format!("upstream failed ({cause}): {message}"))
                } else {
                    Error::invalid(format!(
                        "upstream rejected the request ({cause}): {message}"
                    ))
                }
            }
            Self::Transport(_) | Self::RetryIn(_) | Self::Truncated => {
                Error::unavailable(format!("upstream unavailable: {}", chain(self)))
            }
            Self::Interrupted(inner) => {
                let detail = match &**inner {
                    Self::Api { .. } => inner.classify().message().to_owned(),
                    other => chain(other),
                };
                Error::unavailable(format!(
                    "upstream failed after audio had been sent, so the stream ends here: {detail}"
                ))
            }
            Self::Protocol(detail) => Error::internal(format!("upstream protocol error: {detail}")),
            Self::NothingToSay => {
                Error::invalid("text: nothing to say (no speakable characters after splitting)")
            }
            Self::Saturated { .. } => Error::resource_exhausted(format!(
                "dashscope.max_concurrent_requests: {self}; retry later (dashscope.queue_timeout_ms)"
            )),
            Self::Busy { setting, .. } => {
                Error::resource_exhausted(format!("{setting}: {self}; retry later"))
            }
            Self::Unavailable { .. } | Self::TimedOut { .. } => {
                Error::new(ErrorKind::Unavailable, self.to_string())
            }
            // The reason (exit status, stderr) is for the operator's log, not for clients.
            Self::Failed { engine, .. } => {
                Error::internal(format!("{engine} failed; the daemon's log has the details"))
            }
        }
    }
}
