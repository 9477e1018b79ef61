//! The one place where domain errors become gRPC statuses (design.md's error table).
//!
//! The full error chain is logged here, at the point of mapping; the client gets a short
//! message that never contains secrets or request text.

use tonic::{Code, Status};

use crate::{engine::EngineError, pipeline::JobError};

/// Upstream error code of DashScope's content filter.
const CONTENT_FILTER_CODE: &str = "DataInspectionFailed";

/// The status for an engine error.
pub fn engine_status(error: &EngineError) -> Status {
    match error {
        EngineError::Shared(inner) => engine_status(inner),
        EngineError::Api {
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
                Status::invalid_argument(format!(
                    "text: rejected by the upstream content filter ({cause}): {message}"
                ))
            } else if *status == 401 || *status == 403 {
                Status::failed_precondition(format!(
                    "upstream rejected herald's credentials ({cause}): {message}; check the \
                     dashscope.api_key setting (DASHSCOPE_API_KEY / DASHSCOPE_API_KEY_FILE_PATH) \
                     and that the key's workspace may use this model"
                ))
            } else if code.as_deref() == Some("Arrearage") {
                Status::failed_precondition(format!(
                    "upstream refused herald's account ({cause}): {message}"
                ))
            } else if *status == 429 {
                Status::resource_exhausted(format!(
                    "upstream is throttling requests ({cause}): {message}"
                ))
            } else if *status >= 500 || *status == 408 {
                Status::unavailable(format!("upstream failed ({cause}): {message}"))
            } else {
                Status::invalid_argument(format!(
                    "upstream rejected the request ({cause}): {message}"
                ))
            }
        }
        EngineError::Transport(_) | EngineError::RetryIn(_) | EngineError::Truncated => {
            Status::unavailable(format!("upstream unavailable: {}", chain(error)))
        }
        EngineError::Interrupted(inner) => {
            let detail = match &**inner {
                EngineError::Api { .. } => engine_status(inner).message().to_owned(),
                other => chain(other),
            };
            Status::unavailable(format!(
                "upstream failed after audio had been sent, so the stream ends here: {detail}"
            ))
        }
        EngineError::Protocol(detail) => {
            Status::internal(format!("upstream protocol error: {detail}"))
        }
        EngineError::Saturated { .. } => Status::resource_exhausted(format!(
            "dashscope.max_concurrent_requests: {error}; retry later (dashscope.queue_timeout_ms)"
        )),
        EngineError::Unavailable { .. } | EngineError::TimedOut { .. } => {
            Status::unavailable(error.to_string())
        }
        // The reason (exit status, stderr) is for the operator's log, not for clients.
        EngineError::Failed { engine, .. } => {
            Status::internal(format!("{engine} failed; the daemon's log has the details"))
        }
    }
}

/// The status for a failed job (logged here with its full chain).
pub fn job_status(error: &JobError) -> Status {
    let status = match error {
        JobError::Engine(e) => engine_status(e),
        JobError::Audio(e) => Status::internal(format!("upstream protocol error: {e}")),
        JobError::ClientGone => Status::cancelled("the client went away"),
        JobError::Cancelled => Status::unavailable("herald is shutting down"),
        JobError::Panicked => Status::internal("internal error while processing audio"),
    };
    match status.code() {
        Code::Cancelled => tracing::debug!(error = %chain(error), "job ended: client gone"),
        Code::Internal => tracing::error!(error = %chain(error), "job failed"),
        _ => tracing::warn!(error = %chain(error), code = ?status.code(), "job failed"),
    }
    status
}

/// `error: cause: cause` for logs.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str) -> EngineError {
        EngineError::Api {
            status,
            code: Some(code.to_owned()),
            message: "m".to_owned(),
            request_id: Some("rid-1".to_owned()),
        }
    }

    #[test]
    fn the_design_table_holds() {
        let cases: Vec<(JobError, Code)> = vec![
            (api(401, "InvalidApiKey").into(), Code::FailedPrecondition),
            (api(403, "AccessDenied").into(), Code::FailedPrecondition),
            (
                api(429, "Throttling.RateQuota").into(),
                Code::ResourceExhausted,
            ),
            (api(503, "ServiceUnavailable").into(), Code::Unavailable),
            (
                api(400, "DataInspectionFailed").into(),
                Code::InvalidArgument,
            ),
            (api(400, "InvalidParameter").into(), Code::InvalidArgument),
            (EngineError::Truncated.into(), Code::Unavailable),
            (
                EngineError::Protocol("bad base64".into()).into(),
                Code::Internal,
            ),
            (JobError::Cancelled, Code::Unavailable),
            (JobError::Panicked, Code::Internal),
        ];
        for (error, code) in cases {
            assert_eq!(job_status(&error).code(), code, "{error:?}");
        }
        let s = job_status(&EngineError::Protocol("bad base64".into()).into());
        assert!(
            s.message().starts_with("upstream protocol error"),
            "{}",
            s.message()
        );
        let s = job_status(&api(401, "InvalidApiKey").into());
        assert!(s.message().contains("dashscope.api_key"), "{}", s.message());
        assert!(s.message().contains("rid-1"), "{}", s.message());
        let s =
            job_status(&EngineError::Interrupted(Box::new(api(400, "InvalidParameter"))).into());
        assert_eq!(s.code(), Code::Unavailable);
        assert!(s.message().contains("InvalidParameter"), "{}", s.message());
    }
}
