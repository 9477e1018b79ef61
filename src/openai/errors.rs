//! The one place where domain errors become HTTP answers at the OpenAI-compatible door: a
//! status and OpenAI's error body, `{"error": {"message", "type", "param", "code"}}`.
//!
//! The domain classifies ([`crate::error::Error`]); this module only maps a kind to a status,
//! an OpenAI error `type` and `code`, names the request field (`param`, in OpenAI's names) of
//! an invalid argument, and adds `Retry-After` where retrying later may work. Messages are the
//! core's: they never carry secrets or request text.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use crate::error::{Error, ErrorKind};

/// Seconds a throttled or unavailable client is asked to wait (`Retry-After`).
pub const RETRY_AFTER_S: u32 = 1;

/// An error answer of the HTTP door.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// OpenAI's `error.type`.
    pub kind: &'static str,
    /// OpenAI's `error.code`.
    pub code: Option<&'static str>,
    /// OpenAI's `error.param`: the request field at fault, in OpenAI's names.
    pub param: Option<String>,
    /// The message.
    pub message: String,
    /// `Retry-After`, seconds.
    pub retry_after: Option<u32>,
}

impl ApiError {
    /// 400 naming `param`.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code: Some("invalid_value"),
            param: Some(param.to_owned()),
            message: message.into(),
            retry_after: None,
        }
    }

    /// 401: no token, or a wrong one.
    pub fn unauthenticated(message: &str) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            kind: "authentication_error",
            code: Some("invalid_api_key"),
            param: None,
            message: message.to_owned(),
            retry_after: None,
        }
    }

    /// 404 for a path or a model that does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            kind: "not_found_error",
            code: Some("not_found"),
            param: None,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 413: the body is larger than `server.max_message_bytes`.
    pub fn too_large(limit: usize) -> Self {
        Self {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            kind: "invalid_request_error",
            code: Some("request_too_large"),
            param: None,
            message: format!("the request body exceeds server.max_message_bytes ({limit} bytes)"),
            retry_after: None,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl From<&Error> for ApiError {
    fn from(error: &Error) -> Self {
        let message = error.message().to_owned();
        let (status, kind, code, retry_after) = match error.kind() {
            ErrorKind::InvalidArgument => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_value",
                None,
            ),
            ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found_error", "not_found", None),
            // The daemon is not set up for this (a cloud model without a key, herald's own
            // upstream key refused): not the caller's fault, and retrying does not help.
            ErrorKind::FailedPrecondition => (
                StatusCode::FORBIDDEN,
                "permission_error",
                "not_configured",
                None,
            ),
            ErrorKind::ResourceExhausted => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "rate_limit_exceeded",
                Some(RETRY_AFTER_S),
            ),
            ErrorKind::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "upstream_unavailable",
                Some(RETRY_AFTER_S),
            ),
            ErrorKind::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal_error",
                None,
            ),
            ErrorKind::DeadlineExceeded => (
                StatusCode::GATEWAY_TIMEOUT,
                "timeout_error",
                "deadline_exceeded",
                None,
            ),
            // Only daemon shutdown reaches a client (a client that left reads nothing).
            ErrorKind::Cancelled => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "shutting_down",
                Some(RETRY_AFTER_S),
            ),
            ErrorKind::Unauthenticated => (
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid_api_key",
                None,
            ),
        };
        let param = (error.kind() == ErrorKind::InvalidArgument)
            .then(|| param_of(&message))
            .flatten();
        Self {
            status,
            kind,
            code: Some(code),
            param,
            message,
            retry_after,
        }
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        Self::from(&error)
    }
}

/// The OpenAI request field of a core message `"<herald field>: ..."`: herald's `text` is
/// OpenAI's `input`, the output format is `response_format` (its rate, the `sample_rate`
/// extension); other names are the same at both doors.
pub fn param_of(message: &str) -> Option<String> {
    let (field, _) = message.split_once(": ")?;
    if field.is_empty() || field.contains(' ') {
        return None;
    }
    Some(
        match field {
            "text" => "input",
            "format.sample_rate_hz" => "sample_rate",
            f if f.starts_with("format") => "response_format",
            f => f,
        }
        .to_owned(),
    )
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum_json(&self.body())).into_response();
        if let Some(s) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        response
    }
}

/// A JSON body with its content type.
pub fn axum_json(value: &serde_json::Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_status_type_and_retry_hint() {
        let table = [
            (
                Error::invalid("voice: \"x\" is not a voice of model \"m\""),
                400,
                "invalid_request_error",
                Some("voice"),
                None,
            ),
            (
                Error::invalid("text: must not be empty"),
                400,
                "invalid_request_error",
                Some("input"),
                None,
            ),
            (
                Error::invalid("format.sample_rate_hz: MP3 cannot carry 12345 Hz"),
                400,
                "invalid_request_error",
                Some("sample_rate"),
                None,
            ),
            (
                Error::not_found("no such voice"),
                404,
                "not_found_error",
                None,
                None,
            ),
            (
                Error::failed_precondition("model: needs dashscope.api_key"),
                403,
                "permission_error",
                None,
                None,
            ),
            (
                Error::resource_exhausted("upstream throttled (Throttling.RateQuota)"),
                429,
                "rate_limit_error",
                None,
                Some(1),
            ),
            (
                Error::unavailable("upstream unavailable"),
                503,
                "server_error",
                None,
                Some(1),
            ),
            (
                Error::internal("upstream protocol error: bad base64"),
                500,
                "server_error",
                None,
                None,
            ),
            (
                Error::deadline_exceeded("deadline exceeded"),
                504,
                "timeout_error",
                None,
                None,
            ),
            (
                Error::cancelled("shutting down"),
                503,
                "server_error",
                None,
                Some(1),
            ),
            (
                Error::new(ErrorKind::Unauthenticated, "authorization: missing"),
                401,
                "authentication_error",
                None,
                None,
            ),
        ];
        for (error, status, kind, param, retry) in table {
            let api = ApiError::from(&error);
            assert_eq!(api.status.as_u16(), status, "{error:?}");
            assert_eq!(api.kind, kind, "{error:?}");
            assert_eq!(api.param.as_deref(), param, "{error:?}");
            assert_eq!(api.retry_after, retry, "{error:?}");
            assert_eq!(api.message, error.message());
            let body = api.body();
            assert_eq!(body["error"]["message"], error.message());
            assert_eq!(body["error"]["type"], kind);
            let response = api.into_response();
            assert_eq!(
                response.headers().get(header::RETRY_AFTER).is_some(),
                retry.is_some()
            );
        }
    }

    #[test]
    fn a_message_without_a_field_names_no_param() {
        assert_eq!(param_of("no field here"), None);
        assert_eq!(param_of("two words: x"), None);
        assert_eq!(param_of("speed: 3 is outside").as_deref(), Some("speed"));
    }

    #[test]
    fn door_errors_have_openai_statuses() {
        assert_eq!(
            ApiError::too_large(10).status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert!(
            ApiError::too_large(10)
                .message
                .contains("server.max_message_bytes")
        );
        assert_eq!(
            ApiError::unauthenticated("authorization: missing").status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(ApiError::not_found("x").status, StatusCode::NOT_FOUND);
    }
}
