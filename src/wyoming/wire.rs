//! The Wyoming wire format: one event is a JSON header line (`type`, `data`, `data_length`,
//! `payload_length`, `version`) ended by `\n`, then `data_length` bytes of JSON merged into
//! `data`, then `payload_length` bytes of binary payload (rhasspy/wyoming `event.py`).
//!
//! Reading is bounded: a header line, extra data or payload over its limit is a
//! [`WireError::TooLarge`], never an allocation of what the peer claims. This module knows the
//! framing only: it must not interpret event types.

use serde_json::{Map, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The protocol version herald writes in every header (that of the `wyoming` package the tests
/// pin).
pub const VERSION: &str = "1.10.2";

/// Longest header line, bytes (the header carries `data` inline too; a `synthesize` with the
/// longest accepted text, 20000 characters of 4 bytes, fits).
pub const MAX_LINE: usize = 1 << 20;
/// Longest extra data, bytes.
pub const MAX_DATA: usize = 1 << 20;
/// Longest payload, bytes (herald's TTS side receives none; a client's is read and dropped).
pub const MAX_PAYLOAD: usize = 1 << 20;

/// One event.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// `type`: "describe", "synthesize", ...
    pub kind: String,
    /// `data`, with the extra data merged in.
    pub data: Map<String, Value>,
    /// The payload (empty when none).
    pub payload: Vec<u8>,
}

/// What can go wrong reading an event.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The connection failed.
    #[error("connection error")]
    Io(#[from] std::io::Error),
    /// A header or its data is not the JSON Wyoming sends.
    #[error("malformed event: {0}")]
    Malformed(String),
    /// A part is over its limit.
    #[error("{what} over the limit of {limit} bytes")]
    TooLarge {
        /// Which part.
        what: &'static str,
        /// Its limit.
        limit: usize,
    },
}

/// The next event, or `None` at a clean end of stream.
pub async fn read<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<Option<Event>, WireError> {
    let mut line = Vec::new();
    let n = (&mut *r)
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        if line.len() > MAX_LINE {
            return Err(WireError::TooLarge {
                what: "header line",
                limit: MAX_LINE,
            });
        }
        return Err(WireError::Malformed(
            "the connection ended inside a header line".into(),
        ));
    }
    let header: Value = serde_json::from_slice(&line)
        .map_err(|e| WireError::Malformed(format!("header is not JSON: {e}")))?;
    let Value::Object(mut header) = header else {
        return Err(WireError::Malformed("header is not a JSON object".into()));
    };
    let Some(Value::String(kind)) = header.remove("type") else {
        return Err(WireError::Malformed("header has no string \"type\"".into()));
    };
    let mut data = match header.remove("data") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(WireError::Malformed("\"data\" is not an object".into())),
    };
    let length = |key: &str, limit: usize, what: &'static str| -> Result<usize, WireError> {
        match header.get(key) {
            None | Some(Value::Null) => Ok(0),
            Some(v) => {
                let n = v.as_u64().ok_or_else(|| {
                    WireError::Malformed(format!("{key:?} is not a non-negative integer"))
                })?;
                usize::try_from(n)
                    .ok()
                    .filter(|n| *n <= limit)
                    .ok_or(WireError::TooLarge { what, limit })
            }
        }
    };
    let data_length = length("data_length", MAX_DATA, "data")?;
    let payload_length = length("payload_length", MAX_PAYLOAD, "payload")?;
    if data_length > 0 {
        let mut extra = vec![0; data_length];
        r.read_exact(&mut extra).await?;
        match serde_json::from_slice(&extra) {
            Ok(Value::Object(m)) => data.extend(m),
            _ => {
                return Err(WireError::Malformed(
                    "extra data is not a JSON object".into(),
                ));
            }
        }
    }
    let mut payload = vec![0; payload_length];
    r.read_exact(&mut payload).await?;
    Ok(Some(Event {
        kind,
        data,
        payload,
    }))
}

/// Write one event (`data` as extra data, as the Python package writes it) and flush.
pub async fn write<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: &str,
    data: Value,
    payload: &[u8],
) -> std::io::Result<()> {
    let mut header = Map::new();
    header.insert("type".into(), Value::from(kind));
    header.insert("version".into(), Value::from(VERSION));
    let data = match data {
        Value::Object(m) if !m.is_empty() => Some(serde_json::to_vec(&m)?),
        _ => None,
    };
    if let Some(d) = &data {
        header.insert("data_length".into(), Value::from(d.len()));
    }
    if !payload.is_empty() {
        header.insert("payload_length".into(), Value::from(payload.len()));
    }
    let mut line = serde_json::to_vec(&header)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    if let Some(d) = &data {
        w.write_all(d).await?;
    }
    w.write_all(payload).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[tokio::test]
    async fn an_event_survives_a_round_trip_with_data_and_payload() {
        let mut out = Vec::new();
        write(&mut out, "audio-chunk", json!({"rate": 16000}), b"\x01\x02")
            .await
            .unwrap();
        let mut r = &out[..];
        let e = read(&mut r).await.unwrap().unwrap();
        assert_eq!(e.kind, "audio-chunk");
        assert_eq!(e.data["rate"], 16000);
        assert_eq!(e.payload, b"\x01\x02");
        assert!(read(&mut r).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn inline_and_extra_data_are_merged() {
        let text = b"{\"type\":\"synthesize\",\"data\":{\"a\":1},\"data_length\":8}\n{\"b\": 2}";
        let e = read(&mut &text[..]).await.unwrap().unwrap();
        assert_eq!(Value::Object(e.data), json!({"a": 1, "b": 2}));
    }

    #[tokio::test]
    async fn claimed_lengths_over_the_limit_are_refused_before_reading() {
        let text = format!(
            "{{\"type\":\"x\",\"payload_length\":{}}}\n",
            MAX_PAYLOAD + 1
        );
        let e = read(&mut text.as_bytes()).await.unwrap_err();
        assert!(
            matches!(
                e,
                WireError::TooLarge {
                    what: "payload",
                    ..
                }
            ),
            "{e}"
        );
        let e = read(&mut &b"[1]\n"[..]).await.unwrap_err();
        assert!(matches!(e, WireError::Malformed(_)), "{e}");
    }
}
