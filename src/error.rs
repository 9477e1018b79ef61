//! Domain errors: what went wrong, classified once, in terms every door can map.
//!
//! An [`Error`] carries an [`ErrorKind`] (which mirrors the gRPC codes one for one, as
//! librespot's `core::error::ErrorKind` does, without depending on any wire format) and the
//! message a client may see: it names the field and the limit for invalid arguments, the
//! setting to fix for precondition failures, and never contains a secret or the request text.
//!
//! The core (engines, the provider, the pipeline, the cache, playback, custom voices, config)
//! returns these; each door maps them once to its own wire format (`service::status` for gRPC).
//! This module must not depend on tonic, prost, HTTP types or any door.

use std::fmt;

/// What kind of failure an [`Error`] is: decides the status code a door answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request is wrong (a field out of range, an unknown voice, upstream's content filter).
    InvalidArgument,
    /// The named thing does not exist.
    NotFound,
    /// The daemon (not the request) is not set up for this: a wrong key, a missing device.
    FailedPrecondition,
    /// A limit was reached: herald's concurrency caps, upstream throttling, quotas.
    ResourceExhausted,
    /// A source could not serve now; retrying later may work.
    Unavailable,
    /// Something that should not happen: malformed upstream data, a bug.
    Internal,
    /// The client's deadline passed.
    DeadlineExceeded,
    /// The client went away.
    Cancelled,
    /// The caller did not prove who it is (TCP bearer token).
    Unauthenticated,
}

impl ErrorKind {
    /// A short description of the kind, for logs and fallback reasons (the words gRPC uses for
    /// the matching code).
    pub fn description(self) -> &'static str {
        match self {
            Self::InvalidArgument => "Client specified an invalid argument",
            Self::NotFound => "Some requested entity was not found",
            Self::FailedPrecondition => {
                "The system is not in a state required for the operation's execution"
            }
            Self::ResourceExhausted => "Some resource has been exhausted",
            Self::Unavailable => "The service is currently unavailable",
            Self::Internal => "Internal error",
            Self::DeadlineExceeded => "Deadline expired before operation could complete",
            Self::Cancelled => "The operation was cancelled",
            Self::Unauthenticated => "The request does not have valid authentication credentials",
        }
    }

    /// True for the kinds after which another source (the fallback chain) may succeed.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Self::Unavailable | Self::ResourceExhausted | Self::DeadlineExceeded
        )
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

/// A classified failure with the message a client may see.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

/// Longest message a client is sent, in characters: messages quote client input (a voice
/// name, a model), and a status must stay small whatever the client sent (a gRPC status rides
/// in a header; a huge one is refused by the client's transport as RESOURCE_EXHAUSTED).
pub const MAX_MESSAGE_CHARS: usize = 1024;

/// `message` cut to [`MAX_MESSAGE_CHARS`], saying so.
fn bounded(mut message: String) -> String {
    if let Some((at, _)) = message.char_indices().nth(MAX_MESSAGE_CHARS) {
        message.truncate(at);
        message.push_str("… (truncated)");
    }
    message
}

impl Error {
    /// An error of `kind` with `message` (cut to [`MAX_MESSAGE_CHARS`]).
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: bounded(message.into()),
        }
    }

    /// INVALID_ARGUMENT; `message` starts with the field's name and states the limit.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    /// NOT_FOUND.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// FAILED_PRECONDITION; `message` names the setting to fix.
    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::FailedPrecondition, message)
    }

    /// RESOURCE_EXHAUSTED; `message` names the limit.
    pub fn resource_exhausted(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::ResourceExhausted, message)
    }

    /// UNAVAILABLE.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    /// INTERNAL.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// DEADLINE_EXCEEDED.
    pub fn deadline_exceeded(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::DeadlineExceeded, message)
    }

    /// CANCELLED.
    pub fn cancelled(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Cancelled, message)
    }

    /// The kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message for the client.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The same error with `prefix` in front of its message (`"device: "`, `"cache: "`).
    #[must_use]
    pub fn prefixed(mut self, prefix: &str) -> Self {
        self.message.insert_str(0, prefix);
        self.message = bounded(self.message);
        self
    }
}

/// `error: cause: cause` for logs: the whole source chain on one line.
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

/// Locks `mutex`, taking the data even if a thread panicked while holding it: every mutex in
/// herald guards plain data that stays consistent between statements, so poisoning carries no
/// information worth failing a request for.
pub fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_cut_to_a_bound_saying_so() {
        let e = Error::invalid(format!("voice: {:?} is unknown", "v".repeat(100_000)));
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.message().starts_with("voice: \"vvv"));
        assert!(e.message().ends_with("… (truncated)"));
        assert_eq!(
            e.message().chars().count(),
            MAX_MESSAGE_CHARS + "… (truncated)".chars().count()
        );
        let e = Error::invalid("é".repeat(MAX_MESSAGE_CHARS)).prefixed("x: ");
        assert!(e.message().ends_with("… (truncated)"), "{}", e.message());
        assert_eq!(Error::invalid("short").message(), "short");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn chain_joins_every_source() {
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(chain(&e), "outer: inner");
    }

    #[test]
    fn prefixed_keeps_the_kind() {
        let e = Error::invalid("unknown").prefixed("device: ");
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert_eq!(e.message(), "device: unknown");
    }
}
