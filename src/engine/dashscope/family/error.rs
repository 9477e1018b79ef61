//! In-band error shapes: how DashScope says "failed" inside an answer (a top-level or nested
//! `code`, an `event:error`, MiniMax's `base_resp`), as [`EngineError::Api`] with the HTTP
//! status the code implies.
//!
//! It must not decide what an error means for a client: `EngineError::classify` does.

use serde_json::Value;

use crate::engine::EngineError;

/// The HTTP status an error code implies, for in-band errors that came under HTTP 200.
pub fn implied_status(code: &str) -> u16 {
    match code {
        "InvalidApiKey" => 401,
        c if c.starts_with("AccessDenied")
            || c.ends_with(".AccessDenied")
            || c.starts_with("AllocationQuota") =>
        {
            403
        }
        "ModelNotFound" | "WorkSpaceNotFound" => 404,
        "RequestTimeOut" => 408,
        "BadRequest.TooLarge" => 413,
        c if c.starts_with("Throttling")
            || c == "LimitRequests"
            || c.ends_with("BillOverdue")
            || c == "CommodityNotPurchased" =>
        {
            429
        }
        c if c.starts_with("InternalError") || c == "SystemError" => 500,
        "ModelUnavailable" => 503,
        _ => 400,
    }
}

/// The error an upstream JSON object carries, if any: a non-empty top-level `code` (or a
/// nested `error.code`), or, on an `event:error`, whatever it says. `http_status` is the status
/// the object came with (HTTP status, or the `:HTTP_STATUS/` comment of its event).
pub fn error_in(v: &Value, http_status: u16, error_event: bool) -> Option<EngineError> {
    let obj = match v.get("error") {
        Some(e @ Value::Object(_)) => e,
        _ => v,
    };
    let code = obj
        .get("code")
        .and_then(|c| match c {
            Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
        .filter(|c| c != "200");
    if code.is_none() && !error_event {
        return None;
    }
    let message = obj
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("no message")
        .to_owned();
    let request_id = v
        .get("request_id")
        .or_else(|| v.get("requestId"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let status = if http_status >= 400 {
        http_status
    } else {
        code.as_deref().map_or(500, implied_status)
    };
    Some(EngineError::Api {
        status,
        code,
        message: truncate(&message, 300),
        request_id,
    })
}

/// A MiniMax `base_resp` error, if `status_code` is not 0.
pub(super) fn minimax_error(v: &Value) -> Option<EngineError> {
    let base = v.get("output")?.get("base_resp")?;
    let code = base.get("status_code")?.as_i64()?;
    if code == 0 {
        return None;
    }
    let status = match code {
        1002 | 1039 => 429,
        1004 => 401,
        1001 => 504,
        1000 | 1013 | 1027 => 500,
        _ => 400,
    };
    Some(EngineError::Api {
        status,
        code: Some(format!("MiniMax.{code}")),
        message: truncate(
            base.get("status_msg")
                .and_then(Value::as_str)
                .unwrap_or("no message"),
            300,
        ),
        request_id: v
            .get("request_id")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::engine::dashscope::family::{Decoder, Family};

    #[test]
    fn error_shapes_are_recognised() {
        let v = json!({"code":"Throttling.RateQuota","message":"slow down","request_id":"r1"});
        match error_in(&v, 200, false) {
            Some(EngineError::Api {
                status,
                code,
                request_id,
                ..
            }) => {
                assert_eq!(status, 429);
                assert_eq!(code.as_deref(), Some("Throttling.RateQuota"));
                assert_eq!(request_id.as_deref(), Some("r1"));
            }
            other => panic!("{other:?}"),
        }
        let v = json!({"code":"InvalidParameter","message":"m"});
        assert!(matches!(
            error_in(&v, 400, true),
            Some(EngineError::Api { status: 400, .. })
        ));
        assert!(error_in(&json!({"code":"", "output":{}}), 200, false).is_none());
        assert!(error_in(&json!({"output":{}}), 200, true).is_some());
        let mm = json!({"output":{"base_resp":{"status_code":1004,"status_msg":"auth"}}});
        let mut d = Decoder::new(Family::MiniMax, 16000);
        assert!(matches!(
            d.event(&mm, 200, false),
            Err(EngineError::Api { status: 401, .. })
        ));
    }
}
