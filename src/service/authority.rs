//! Unix-socket clients that send their socket path as HTTP/2 `:authority`.
//!
//! gRPC core (Python, C++, Ruby, PHP), grpc-java, grpc-swift and grpcurl name a unix-socket
//! channel's `:authority` after the socket path (`tmp%2Fherald.sock`, or `/run/herald/herald.sock`
//! raw). That is not a URI authority, and the HTTP/2 server under tonic (h2) answers such a
//! request with `RST_STREAM PROTOCOL_ERROR` before any handler runs (hyperium/h2 PR #487, open;
//! grpc/grpc #38142, grpc-java #12664, grpcurl #442). On a unix socket the authority names
//! nothing (there is one server behind the path), so [`AuthorityFix`] sits between each unix
//! connection and the HTTP/2 server and serves such requests as `:authority: localhost`, which
//! is what grpc-go and tonic send there.
//!
//! How: the client's bytes are read as HTTP/2 frames. Every header block (HEADERS and its
//! CONTINUATION frames) is decoded with HPACK, its `:authority` replaced when it does not parse
//! as one, and encoded again by this layer's own HPACK encoder, which is the only encoder the
//! server's decoder ever sees (so the two dynamic tables cannot drift apart). Every other frame
//! passes through byte for byte, and nothing the server sends is touched. A connection whose
//! header block cannot be decoded is closed, as h2 itself would (COMPRESSION_ERROR is a
//! connection error), with a warning.
//!
//! Why a layer here rather than a patched h2: it depends on no h2 version and no fork, applies
//! only to unix listeners, and goes away by deleting one `map` in [`super::Server::serve`] the
//! day h2 accepts these requests (the grpcio and Go-client tests fail if it is dropped first).
//! This module must not look at anything but the authority, nor touch TCP connections (their
//! clients send `host:port`, and TLS hides the frames anyway).

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::{codegen::http::uri::Authority, transport::server::Connected};

/// What an invalid authority is served as.
const REPLACEMENT: &[u8] = b"localhost";
/// The HTTP/2 connection preface a client sends first.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Frame header length.
const HEADER_LEN: usize = 9;
/// Largest frame payload the server accepts without having said otherwise (HTTP/2's initial
/// SETTINGS_MAX_FRAME_SIZE; tonic does not raise it): re-encoded blocks are cut to this size.
const MAX_FRAME: usize = 16_384;
/// Largest header block (all its frames) this layer holds before giving up on the connection.
/// The server refuses header lists of more than 16 KiB of decoded headers long before this.
const MAX_BLOCK: usize = 1 << 20;
/// Largest HPACK dynamic table a client may ask for (the server advertises HTTP/2's default,
/// 4096; this bounds the decoder's memory if a client asks for more).
const MAX_TABLE: usize = 65_536;

const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

/// A unix-socket connection whose client header blocks get a valid `:authority` (module docs).
pub(super) struct AuthorityFix<S> {
    inner: S,
    /// Bytes read from the client and not yet examined.
    raw: BytesMut,
    /// Bytes ready for the server.
    out: BytesMut,
    state: State,
    /// A HEADERS frame waiting for its CONTINUATION frames.
    pending: Option<Pending>,
    decoder: loona_hpack::Decoder<'static>,
    encoder: loona_hpack::Encoder<'static>,
    /// The client closed its side.
    eof: bool,
    /// Requests whose authority was replaced on this connection (logged once).
    replaced: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting the connection preface.
    Preface,
    /// At a frame boundary.
    Frame,
    /// Inside a frame that passes through unchanged: this many payload bytes remain.
    Through(usize),
}

struct Pending {
    stream: u32,
    flags: u8,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
}

impl<S> AuthorityFix<S> {
    pub(super) fn new(inner: S) -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(MAX_TABLE);
        Self {
            inner,
            raw: BytesMut::with_capacity(8192),
            out: BytesMut::new(),
            state: State::Preface,
            pending: None,
            decoder,
            encoder: loona_hpack::Encoder::new(),
            eof: false,
            replaced: 0,
        }
    }

    /// Move what can be moved from `raw` to `out`.
    fn process(&mut self) -> io::Result<()> {
        loop {
            match self.state {
                State::Preface => {
                    let n = self.raw.len().min(PREFACE.len());
                    if self.raw[..n] != PREFACE[..n] {
                        // Not HTTP/2 with prior knowledge: let the server say so.
                        self.state = State::Through(usize::MAX);
                        continue;
                    }
                    if n < PREFACE.len() {
                        return Ok(());
                    }
                    self.out.extend_from_slice(&self.raw.split_to(n));
                    self.state = State::Frame;
                }
                State::Through(0) => self.state = State::Frame,
                State::Through(remaining) => {
                    let n = remaining.min(self.raw.len());
                    if n == 0 {
                        return Ok(());
                    }
                    self.out.extend_from_slice(&self.raw.split_to(n));
                    self.state = if remaining == usize::MAX {
                        State::Through(usize::MAX)
                    } else if remaining == n {
                        State::Frame
                    } else {
                        State::Through(remaining - n)
                    };
                }
                State::Frame => {
                    if self.raw.len() < HEADER_LEN {
                        return Ok(());
                    }
                    let len = usize::from(self.raw[0]) << 16
                        | usize::from(self.raw[1]) << 8
                        | usize::from(self.raw[2]);
                    let kind = self.raw[3];
                    let header_block = kind == TYPE_HEADERS
                        || (kind == TYPE_CONTINUATION && self.pending.is_some());
                    if !header_block {
                        if self.pending.is_some() {
                            return Err(broken(
                                "a frame other than CONTINUATION interrupted a header block",
                            ));
                        }
                        self.out.extend_from_slice(&self.raw.split_to(HEADER_LEN));
                        self.state = State::Through(len);
                        continue;
                    }
                    let pending_len = self.pending.as_ref().map_or(0, |p| p.block.len());
                    if len + pending_len > MAX_BLOCK {
                        return Err(broken("a header block over 1 MiB"));
                    }
                    if self.raw.len() < HEADER_LEN + len {
                        self.raw.reserve(HEADER_LEN + len - self.raw.len());
                        return Ok(());
                    }
                    let mut frame = self.raw.split_to(HEADER_LEN + len);
                    let flags = frame[4];
                    let stream =
                        u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
                    frame.advance(HEADER_LEN);
                    self.header_frame(kind, flags, stream, frame)?;
                }
            }
        }
    }

    /// One HEADERS or CONTINUATION frame's payload.
    fn header_frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        mut payload: BytesMut,
    ) -> io::Result<()> {
        if kind == TYPE_HEADERS {
            if self.pending.is_some() {
                return Err(broken("a HEADERS frame interrupted a header block"));
            }
            if flags & FLAG_PADDED != 0 {
                let pad = usize::from(*payload.first().ok_or_else(|| broken("empty frame"))?);
                if pad + 1 > payload.len() {
                    return Err(broken("padding longer than the frame"));
                }
                payload.advance(1);
                payload.truncate(payload.len() - pad);
            }
            let priority = if flags & FLAG_PRIORITY != 0 {
                if payload.len() < 5 {
                    return Err(broken("a priority field cut short"));
                }
                let mut p = [0u8; 5];
                payload.copy_to_slice(&mut p);
                Some(p)
            } else {
                None
            };
            self.pending = Some(Pending {
                stream,
                flags: flags & (FLAG_END_STREAM | FLAG_PRIORITY),
                priority,
                block: payload.to_vec(),
            });
        } else {
            let pending = self.pending.as_mut().expect("checked by the caller");
            if pending.stream != stream {
                return Err(broken("a CONTINUATION frame of another stream"));
            }
            pending.block.extend_from_slice(&payload);
        }
        if flags & FLAG_END_HEADERS != 0 {
            let pending = self.pending.take().expect("set above");
            self.emit(pending)?;
        }
        Ok(())
    }

    /// Decode a whole header block, fix its authority, and write it out again.
    fn emit(&mut self, pending: Pending) -> io::Result<()> {
        let mut headers = self
            .decoder
            .decode(&pending.block)
            .map_err(|e| broken(&format!("undecodable header block ({e:?})")))?;
        for (name, value) in &mut headers {
            if name.as_slice() == b":authority" && Authority::try_from(value.as_slice()).is_err() {
                if self.replaced == 0 {
                    tracing::debug!(
                        authority = %String::from_utf8_lossy(value),
                        "a unix-socket client named its socket as :authority; served as localhost"
                    );
                }
                self.replaced += 1;
                *value = REPLACEMENT.to_vec();
            }
        }
        let block = self
            .encoder
            .encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let priority = pending.priority.as_ref().map_or(&[][..], |p| &p[..]);
        let first = block.len().min(MAX_FRAME - priority.len());
        let mut flags = pending.flags;
        if first == block.len() {
            flags |= FLAG_END_HEADERS;
        }
        self.frame(
            TYPE_HEADERS,
            flags,
            pending.stream,
            &[priority, &block[..first]],
        );
        let mut rest = &block[first..];
        while !rest.is_empty() {
            let n = rest.len().min(MAX_FRAME);
            let flags = if n == rest.len() { FLAG_END_HEADERS } else { 0 };
            self.frame(TYPE_CONTINUATION, flags, pending.stream, &[&rest[..n]]);
            rest = &rest[n..];
        }
        Ok(())
    }

    fn frame(&mut self, kind: u8, flags: u8, stream: u32, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let len = u32::try_from(len).expect("at most MAX_FRAME");
        self.out.put_slice(&len.to_be_bytes()[1..]);
        self.out.put_u8(kind);
        self.out.put_u8(flags);
        self.out.put_u32(stream);
        for part in parts {
            self.out.put_slice(part);
        }
    }
}

fn broken(what: &str) -> io::Error {
    tracing::warn!(
        problem = what,
        "closing a unix-socket connection: its HTTP/2 headers could not be read"
    );
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("HTTP/2 protocol error from the client: {what}"),
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // Whatever is left is an incomplete frame: the server sees it cut, as it would.
                let rest = this.raw.split();
                this.out.extend_from_slice(&rest);
                if this.out.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            this.process()?;
            if !this.out.is_empty() {
                continue;
            }
            if this.raw.capacity() - this.raw.len() < 4096 {
                this.raw.reserve(8192);
            }
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut this.inner),
                cx,
                &mut this.raw
            ))?;
            if n == 0 {
                this.eof = true;
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for AuthorityFix<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A client's header block for a POST to `path` with `authority`, plus `extra` headers.
    fn block(
        encoder: &mut loona_hpack::Encoder<'_>,
        authority: &[u8],
        extra: &[(&[u8], &[u8])],
    ) -> Vec<u8> {
        let mut headers: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/grpc.health.v1.Health/Check"),
            (b":authority", authority),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ];
        headers.extend_from_slice(extra);
        encoder.encode(headers)
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    const SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];

    /// Run `client_bytes` through the layer into a real h2 server; the requests it accepts,
    /// as (stream id, authority, path, body).
    async fn serve(client_bytes: Vec<u8>) -> Vec<(u32, String, String, Vec<u8>)> {
        let (client, server) = tokio::io::duplex(1 << 20);
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let writer = tokio::spawn(async move {
            client_write.write_all(&client_bytes).await.unwrap();
            // Keep the connection open until the server has answered.
            client_write
        });
        let drain = tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = client_read.read_to_end(&mut sink).await;
        });
        let mut conn = h2::server::handshake(AuthorityFix::new(server))
            .await
            .unwrap();
        let mut seen = Vec::new();
        while let Ok(Some(Ok((request, mut respond)))) =
            tokio::time::timeout(std::time::Duration::from_millis(500), conn.accept()).await
        {
            let (parts, mut body) = request.into_parts();
            let mut data = Vec::new();
            while let Some(chunk) = body.data().await {
                data.extend_from_slice(&chunk.unwrap());
            }
            let authority = parts.uri.authority().map(ToString::to_string);
            seen.push((
                respond.stream_id().as_u32(),
                authority.unwrap_or_default(),
                parts.uri.path().to_owned(),
                data,
            ));
            let response = tonic::codegen::http::Response::new(());
            respond.send_response(response, true).unwrap();
        }
        drop(writer.await.unwrap());
        drain.abort();
        seen
    }

    #[tokio::test]
    async fn a_socket_path_authority_is_served_as_localhost_and_a_valid_one_is_kept() {
        let mut enc = loona_hpack::Encoder::new();
        let mut bytes = PREFACE.to_vec();
        bytes.extend_from_slice(&SETTINGS);
        // gRPC core's form (percent-encoded), then grpcurl's (raw path), then a valid one; the
        // same encoder, so later blocks refer to dynamic-table entries of earlier ones.
        for (stream, authority) in [
            (1u32, &b"tmp%2Fherald%2Fh.sock"[..]),
            (3, b"/run/herald/herald.sock"),
            (5, b"speech.local:50051"),
            (7, b"tmp%2Fherald%2Fh.sock"),
        ] {
            let b = block(&mut enc, authority, &[]);
            bytes.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, stream, &b));
            bytes.extend(frame(0x0, FLAG_END_STREAM, stream, b"\0\0\0\0\x02hi"));
        }
        let seen = serve(bytes).await;
        let got: Vec<(u32, &str, &[u8])> = seen
            .iter()
            .map(|(s, a, _, d)| (*s, a.as_str(), d.as_slice()))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, "localhost", &b"\0\0\0\0\x02hi"[..]),
                (3, "localhost", &b"\0\0\0\0\x02hi"[..]),
                (5, "speech.local:50051", &b"\0\0\0\0\x02hi"[..]),
                (7, "localhost", &b"\0\0\0\0\x02hi"[..]),
            ]
        );
        assert!(seen.iter().all(|r| r.2 == "/grpc.health.v1.Health/Check"));
    }

    #[tokio::test]
    async fn padding_priority_and_continuation_frames_are_handled() {
        let mut enc = loona_hpack::Encoder::new();
        // Large metadata: the block needs CONTINUATION frames on the way in and out.
        let big = vec![b'x'; 40_000];
        let b = block(&mut enc, b"tmp%2Fh.sock", &[(b"x-big", &big)]);
        let mut payload = vec![3u8]; // pad length
        payload.extend_from_slice(&[0x80, 0, 0, 0, 15]); // exclusive dependency on 0, weight
        payload.extend_from_slice(&b[..1000]);
        payload.extend_from_slice(&[0, 0, 0]);
        let mut bytes = PREFACE.to_vec();
        bytes.extend_from_slice(&SETTINGS);
        bytes.extend(frame(
            TYPE_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM,
            1,
            &payload,
        ));
        let mut rest = &b[1000..];
        while !rest.is_empty() {
            let n = rest.len().min(10_000);
            let flags = if n == rest.len() { FLAG_END_HEADERS } else { 0 };
            bytes.extend(frame(TYPE_CONTINUATION, flags, 1, &rest[..n]));
            rest = &rest[n..];
        }
        let seen = serve(bytes).await;
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].1, "localhost");
    }

    #[test]
    fn a_frame_between_headers_and_continuation_closes_the_connection() {
        let mut enc = loona_hpack::Encoder::new();
        let b = block(&mut enc, b"x%2Fy", &[]);
        let mut fix = AuthorityFix::new(());
        fix.raw.extend_from_slice(PREFACE);
        fix.raw.extend(frame(TYPE_HEADERS, 0, 1, &b));
        fix.raw.extend(frame(0x0, 0, 1, b"data"));
        let err = fix.process().unwrap_err();
        assert!(err.to_string().contains("interrupted"), "{err}");
    }

    #[test]
    fn an_undecodable_block_closes_the_connection() {
        let mut fix = AuthorityFix::new(());
        fix.raw.extend_from_slice(PREFACE);
        // Indexed header field 127: no such entry.
        fix.raw
            .extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0xff, 0x40]));
        let err = fix.process().unwrap_err();
        assert!(err.to_string().contains("undecodable"), "{err}");
    }

    #[test]
    fn bytes_that_are_not_http2_pass_through() {
        let mut fix = AuthorityFix::new(());
        fix.raw
            .extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        fix.process().unwrap();
        assert_eq!(&fix.out[..], b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    }
}
