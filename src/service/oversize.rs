//! Requests over `server.max_message_bytes`: tonic refuses them with its own text ("Error,
//! decoded message length too large: found N bytes, the limit is: M bytes"), which names no
//! setting. [`layer`] rewrites that status into one that names the setting, keeping its code
//! (OUT_OF_RANGE) and the figures. It must not touch any other response.

use tonic::codegen::http::{HeaderMap, Response};

/// The prefix of tonic's message for a request message over the limit.
const TONIC_PREFIX: &str = "Error, decoded message length too large: found ";

/// A layer over every service: see the module docs.
pub(super) fn layer<B>()
-> tower::util::MapResponseLayer<impl Fn(Response<B>) -> Response<B> + Clone> {
    tower::util::MapResponseLayer::new(|mut response: Response<B>| {
        rewrite(response.headers_mut());
        response
    })
}

/// Rewrite a trailers-only OUT_OF_RANGE status carrying tonic's over-the-limit text.
fn rewrite(headers: &mut HeaderMap) {
    if headers.get("grpc-status").map(|v| v.as_bytes()) != Some(b"11") {
        return;
    }
    let Some(status) = tonic::Status::from_header_map(headers) else {
        return;
    };
    let Some(figures) = status.message().strip_prefix(TONIC_PREFIX) else {
        return;
    };
    // "N bytes, the limit is: M bytes"
    let mut numbers = figures
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty());
    let (Some(found), Some(limit)) = (numbers.next(), numbers.next()) else {
        return;
    };
    let message = format!(
        "request message of {found} bytes exceeds the limit of {limit} bytes \
         (server.max_message_bytes)"
    );
    let _ = tonic::Status::out_of_range(message).add_header(headers);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_headers(status: &tonic::Status) -> HeaderMap {
        let mut headers = HeaderMap::new();
        status.add_header(&mut headers).unwrap();
        headers
    }

    #[test]
    fn tonic_s_over_the_limit_status_names_the_setting() {
        let mut headers = status_headers(&tonic::Status::out_of_range(
            "Error, decoded message length too large: found 5000000 bytes, the limit is: 4194304 bytes",
        ));
        rewrite(&mut headers);
        let status = tonic::Status::from_header_map(&headers).unwrap();
        assert_eq!(status.code(), tonic::Code::OutOfRange);
        assert_eq!(
            status.message(),
            "request message of 5000000 bytes exceeds the limit of 4194304 bytes \
             (server.max_message_bytes)"
        );
    }

    #[test]
    fn other_statuses_are_left_alone() {
        for status in [
            tonic::Status::out_of_range("chunk_ms: 5 is outside 10..=1000"),
            tonic::Status::invalid_argument(
                "Error, decoded message length too large: found 1 bytes, the limit is: 0 bytes",
            ),
        ] {
            let mut headers = status_headers(&status);
            let before = headers.clone();
            rewrite(&mut headers);
            assert_eq!(headers, before);
        }
    }
}
