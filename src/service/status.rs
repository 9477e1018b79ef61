//! The one place where domain errors become gRPC statuses (the table in docs/errors.md).
//!
//! The domain classifies ([`crate::error::Error`], [`EngineError::classify`],
//! [`JobError::classify`]); this module only turns a kind into a `tonic::Code` and keeps the
//! message. A failed job's full error chain is logged here, at the point of mapping; the client
//! gets a short message that never contains secrets or request text.

use tonic::{Code, Status};

use crate::{
    engine::EngineError,
    error::{Error, ErrorKind, chain},
    pipeline::JobError,
};

/// The gRPC code for a domain error kind.
pub fn code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::Internal => Code::Internal,
        ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
        ErrorKind::Cancelled => Code::Cancelled,
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        // `ErrorKind` is non-exhaustive for other crates only; every kind is listed above.
    }
}

/// The status for a domain error: its kind's code and its message.
pub fn status(error: &Error) -> Status {
    Status::new(code(error.kind()), error.message())
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        status(&error)
    }
}

/// The status for an engine error.
pub fn engine_status(error: &EngineError) -> Status {
    status(&error.classify())
}

/// The status for a failed job (logged here with its full chain).
pub fn job_status(error: &JobError) -> Status {
    let classified = error.classify();
    match classified.kind() {
        ErrorKind::Cancelled => tracing::debug!(error = %chain(error), "job ended: client gone"),
        ErrorKind::Internal => tracing::error!(error = %chain(error), "job failed"),
        kind => tracing::warn!(error = %chain(error), code = ?code(kind), "job failed"),
    }
    status(&classified)
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
        for kind in [
            ErrorKind::InvalidArgument,
            ErrorKind::NotFound,
            ErrorKind::FailedPrecondition,
            ErrorKind::ResourceExhausted,
            ErrorKind::Unavailable,
            ErrorKind::Internal,
            ErrorKind::DeadlineExceeded,
            ErrorKind::Cancelled,
            ErrorKind::Unauthenticated,
        ] {
            assert_eq!(
                kind.description(),
                super::code(kind).description(),
                "{kind:?}"
            );
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
