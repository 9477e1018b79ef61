//! What the gRPC transport says about a call: the client's deadline (`grpc-timeout`) and who
//! is calling (the TCP peer's address or the unix socket peer's user), for the core's
//! deadlines and per-caller limits. It only reads; the core decides what a deadline or a
//! caller means.

use std::time::Duration;

use tokio::time::Instant;
use tonic::{Request, metadata::MetadataMap};

/// The client's deadline from the `grpc-timeout` header, if any.
pub fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    // The gRPC spec allows at most 8 digits; anything else is ignored, as tonic does.
    if digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The deadline of a call that is not a stream (the custom-voice calls): the client's less a
/// tenth (so herald answers DEADLINE_EXCEEDED itself, before the transport cancels the call),
/// capped at `max`.
pub fn call_deadline(metadata: &MetadataMap, max: Duration) -> Instant {
    let budget = grpc_timeout(metadata).map_or(max, |t| t.saturating_sub(t / 10).min(max));
    Instant::now() + budget
}

/// Who is calling: the TCP client's address, or the unix socket peer's user.
pub fn peer_of<T>(request: &Request<T>) -> String {
    if let Some(addr) = request.remote_addr() {
        return format!("ip:{}", addr.ip());
    }
    request
        .extensions()
        .get::<tonic::transport::server::UdsConnectInfo>()
        .and_then(|u| u.peer_cred)
        .map_or_else(|| "local".to_owned(), |c| format!("uid:{}", c.uid()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        let mut m = MetadataMap::new();
        m.insert("grpc-timeout", "1500m".parse().unwrap());
        assert_eq!(grpc_timeout(&m), Some(Duration::from_millis(1500)));
        m.insert("grpc-timeout", "2S".parse().unwrap());
        assert_eq!(grpc_timeout(&m), Some(Duration::from_secs(2)));
        m.insert("grpc-timeout", "x".parse().unwrap());
        assert_eq!(grpc_timeout(&m), None);
        m.insert("grpc-timeout", "18446744073709551615S".parse().unwrap());
        assert_eq!(grpc_timeout(&m), None, "more than 8 digits");
        m.insert("grpc-timeout", "99999999H".parse().unwrap());
        assert!(grpc_timeout(&m).is_some());
    }
}
