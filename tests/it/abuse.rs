//! Abuse of the public interface through real gRPC: huge text, invalid UTF-8 in proto string
//! fields, thousands of tiny requests, a client that never reads its stream (the daemon's
//! memory is measured while it holds the stream), and clients that disconnect mid-stream.
//! Each abuse gets a clear status or is shed, and the next, well-behaved client is served.
//! docs/reliability.md lists the limits that apply.

use std::time::Duration;

use futures::{StreamExt, stream};
use herald::pb::{self, audio_format::Encoding, synthesize_response::Payload};
use tonic::{Code, codegen::http::uri::PathAndQuery, transport::Channel};

use crate::support::{dashscope::*, *};

fn cosy(text: &str) -> pb::SynthesizeRequest {
    pb::SynthesizeRequest {
        model: "cosyvoice-v3-flash".into(),
        voice: "longanyang".into(),
        ..request(text, Encoding::PcmS16le, 16000, 1)
    }
}

/// Checks that `client` is served whole: one short tone, all of it.
async fn served(client: &mut pb::speech_client::SpeechClient<Channel>, what: &str) {
    let c = synthesize(client, cosy("@500Hz still here"))
        .await
        .unwrap_or_else(|e| panic!("not served after {what}: {e:?}"));
    let x = s16_to_f32(&c.bytes());
    // 17 characters × 40 ms at 16 kHz.
    assert_eq!(x.len(), 17 * 40 * 16, "after {what}");
    let f = peak_frequency(&x, 16000);
    assert!((f - 500.0).abs() < 5.0, "after {what}: {f} Hz");
}

// === huge text ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_text_is_refused_naming_the_field_and_the_limit() {
    let _exclusive = exclusive().await;
    let (double, daemon) = spawn_daemon_with_double(ENGINES_ONLY).await;
    let mut client = daemon.client().await;
    // One character past synthesis.max_text_chars (20 000), and a 3.9 MB text of 4-byte
    // characters (under the 16 MiB message limit, far over the character limit).
    for text in ["a".repeat(20_001), "😀".repeat(975_000)] {
        let chars = text.chars().count();
        let e = synthesize(&mut client, cosy(&text)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(
            e.message().starts_with("text:")
                && e.message().contains(&chars.to_string())
                && e.message().contains("20000")
                && e.message().contains("synthesis.max_text_chars"),
            "{}",
            e.message()
        );
        assert!(e.message().len() < 200, "no echo of the text");
    }
    // Past the message size limit (server.max_message_bytes, 16 MiB by default): refused
    // before herald decodes it, naming the setting.
    let e = synthesize(&mut client, cosy(&"a".repeat(17 << 20)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    assert!(
        e.message().contains("(server.max_message_bytes)"),
        "{}",
        e.message()
    );
    assert!(double.requests().is_empty(), "nothing went upstream");
    served(&mut client, "huge text").await;
}

// === invalid UTF-8 ===

/// `SynthesizeRequest` with its string fields as raw bytes (same tags), so that a test can
/// send what a buggy or hostile client in another language could.
#[derive(Clone, PartialEq, prost::Message)]
struct RawRequest {
    #[prost(bytes = "vec", tag = "1")]
    text: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    voice: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    model: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    language: Vec<u8>,
    #[prost(bytes = "vec", tag = "11")]
    request_id: Vec<u8>,
}

async fn raw_synthesize(channel: Channel, req: RawRequest) -> Result<usize, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<RawRequest, pb::SynthesizeResponse>::default();
    let path = PathAndQuery::from_static("/herald.v1.Speech/Synthesize");
    let mut stream = grpc
        .server_streaming(tonic::Request::new(req), path, codec)
        .await?
        .into_inner();
    let mut n = 0;
    while let Some(m) = stream.next().await {
        m?;
        n += 1;
    }
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_string_fields_is_refused_and_the_daemon_goes_on() {
    let _exclusive = exclusive().await;
    let (double, daemon) = spawn_daemon_with_double(ENGINES_ONLY).await;
    let channel = daemon.unix_channel().await;
    // Overlong encodings, lone surrogates, truncated sequences, bytes that never occur in
    // UTF-8, and a NUL, in every string field in turn.
    let garbage: Vec<Vec<u8>> = vec![
        vec![0xC0, 0xAF],
        vec![0xED, 0xA0, 0x80],
        vec![b'h', b'i', 0xE2, 0x82],
        vec![0xFF, 0xFE, 0xFD],
        [b"ok".as_slice(), &[0xF8, 0x88, 0x80, 0x80, 0x80], b"\0"].concat(),
        std::iter::repeat_n(0x80u8, 100_000).collect(),
    ];
    let good = RawRequest {
        text: b"hello".to_vec(),
        voice: b"longanyang".to_vec(),
        model: b"cosyvoice-v3-flash".to_vec(),
        language: Vec::new(),
        request_id: Vec::new(),
    };
    let mut refused = 0;
    for bad in &garbage {
        for field in 0..5 {
            let mut req = good.clone();
            let slot = match field {
                0 => &mut req.text,
                1 => &mut req.voice,
                2 => &mut req.model,
                3 => &mut req.language,
                _ => &mut req.request_id,
            };
            *slot = bad.clone();
            let e = raw_synthesize(channel.clone(), req).await.unwrap_err();
            // prost refuses the string while decoding; tonic answers INTERNAL before any
            // herald code runs.
            assert_eq!(e.code(), Code::Internal, "field {field}: {e:?}");
            assert!(e.message().contains("UTF-8"), "{}", e.message());
            refused += 1;
        }
    }
    assert_eq!(refused, 30);
    assert!(double.requests().is_empty(), "nothing went upstream");
    // The same connection still works (raw, valid), and so does a new client.
    assert!(raw_synthesize(channel, good).await.expect("valid bytes") >= 3);
    served(&mut daemon.client().await, "invalid UTF-8").await;
}

// === thousands of tiny requests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_tiny_requests_are_shed_and_another_peer_is_still_served() {
    let _exclusive = exclusive().await;
    let (double, daemon) = spawn_daemon_with_double(ENGINES_ONLY).await;
    // Tiny, but long enough that they overlap: 4 characters of tone at real time.
    double.set_options(Options {
        pace: 1.0,
        ..Options::default()
    });
    let flooder = daemon.client().await; // TCP: peer ip:127.0.0.1
    let mut victim = daemon.unix_client().await; // unix socket: peer uid:<me>
    let flood = tokio::spawn(async move {
        stream::iter(0..2000)
            .map(|i| {
                let mut c = flooder.clone();
                async move { synthesize(&mut c, cosy(&format!("t{i:04}"))).await }
            })
            .buffer_unordered(200)
            .collect::<Vec<_>>()
            .await
    });
    // While the flood runs, the other peer is served (its own per-peer slots).
    for _ in 0..5 {
        served(&mut victim, "a flood from another peer (during)").await;
    }
    let results = flood.await.unwrap();
    let mut ok = 0;
    let mut shed = 0;
    for r in &results {
        match r {
            Ok(c) => {
                assert_eq!(s16_to_f32(&c.bytes()).len(), 5 * 40 * 16);
                ok += 1;
            }
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert!(
                    e.message().contains("max_concurrent"),
                    "names the limit: {}",
                    e.message()
                );
                shed += 1;
            }
        }
    }
    eprintln!("2000 tiny requests: {ok} served whole, {shed} shed with RESOURCE_EXHAUSTED");
    assert_eq!(ok + shed, 2000);
    assert!(ok > 0 && shed > 0, "{ok} served, {shed} shed");
    served(&mut victim, "a flood from another peer (after)").await;
    served(&mut daemon.client().await, "its own flood").await;
}

// === a client that never reads; clients that disconnect mid-stream ===

fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// A long text: 19 800 characters in sentences, about 13 minutes of audio at 40 ms a
/// character (more than 300 MB as 48 kHz stereo f32, which is what the stream asks for).
fn long_text() -> String {
    "This sentence is one of many in a very long announcement. ".repeat(340)
}

fn long_request() -> pb::SynthesizeRequest {
    pb::SynthesizeRequest {
        model: "cosyvoice-v3-flash".into(),
        voice: "longanyang".into(),
        ..request(&long_text(), Encoding::PcmF32le, 48000, 2)
    }
}

/// Wait until the daemon's upstream requests stop growing (it has filled every buffer it
/// will fill) for `quiet`, sampling RSS all along; bounded. Returns (peak RSS KiB, requests).
async fn hold_and_measure(double: &DashScopeDouble, pid: u32, quiet: Duration) -> (u64, usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut peak = vm_rss_kib(pid);
    let mut last = (double.requests().len(), tokio::time::Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(vm_rss_kib(pid));
        let n = double.requests().len();
        if n != last.0 {
            last = (n, tokio::time::Instant::now());
        } else if last.1.elapsed() >= quiet || tokio::time::Instant::now() > deadline {
            return (peak, n);
        }
    }
}

/// A unix socket proxy to `target` for one connection; aborting the task closes both sides.
async fn cuttable_proxy(
    target: &std::path::Path,
    dir: &std::path::Path,
) -> (std::path::PathBuf, tokio::task::JoinHandle<()>) {
    let path = dir.join("proxy.sock");
    let listener = tokio::net::UnixListener::bind(&path).expect("bind proxy");
    let target = target.to_owned();
    let task = tokio::spawn(async move {
        let Ok((mut inbound, _)) = listener.accept().await else {
            return;
        };
        let Ok(mut outbound) = tokio::net::UnixStream::connect(&target).await else {
            return;
        };
        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
    });
    (path, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_costs_bounded_memory_and_disconnects_are_cleaned_up() {
    let double = DashScopeDouble::start(API_KEY).await;
    let server = Serve::new(ENGINES_ONLY).double(&double).start();
    let pid = server.child.id();
    let mut client = server.client().await;
    served(&mut client, "start-up").await;
    let base = vm_rss_kib(pid);

    // 1. Never reads past the first message. The upstream is not paced: without
    // back-pressure the daemon would synthesize and buffer the whole 300 MB.
    let mut holder = server.client().await;
    let mut held = holder
        .synthesize(long_request())
        .await
        .unwrap()
        .into_inner();
    let first = held.next().await.expect("a message").expect("info");
    assert!(matches!(first.payload, Some(Payload::Info(_))));
    let (peak, upstream) = hold_and_measure(&double, pid, Duration::from_secs(3)).await;
    let pieces = herald::engine::dashscope::split::split(&long_text(), 120).len();
    eprintln!(
        "non-reading client: RSS {base} KiB before, peak {peak} KiB while held (+{} KiB); \
         {upstream} of {pieces} upstream pieces requested",
        peak.saturating_sub(base)
    );
    assert!(
        peak < base + 64 * 1024,
        "RSS grew from {base} KiB to {peak} KiB while the client did not read"
    );
    assert!(
        upstream < pieces,
        "the daemon synthesized everything ({upstream} pieces) for a client that reads nothing"
    );
    // Other clients are served meanwhile.
    served(&mut client, "a non-reading client (held)").await;

    // 2. It disconnects mid-stream (the stream is reset); the upstream request is dropped.
    drop(held);
    let n = double.requests().len();
    for i in 0..n {
        let r = double
            .wait_ended(i, Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("upstream request {i} still open after the reset"));
        assert!(r.completed || r.disconnected);
    }
    served(&mut client, "a reset mid-stream").await;

    // 3. Another reads a few chunks and then its connection is cut under it, wherever the
    // bytes in flight are (a proxy between it and the daemon is aborted: no RST_STREAM, no
    // GOAWAY, just the socket closing, mid-frame or not).
    let before = double.requests().len();
    {
        let (path, proxy) = cuttable_proxy(&server.socket, server.dir.path()).await;
        let channel = tonic::transport::Endpoint::from_shared(format!("unix://{}", path.display()))
            .unwrap()
            .connect()
            .await
            .expect("connect through the proxy");
        let mut leaver = pb::speech_client::SpeechClient::new(channel);
        let mut s = leaver
            .synthesize(long_request())
            .await
            .unwrap()
            .into_inner();
        for _ in 0..5 {
            s.next().await.expect("a message").expect("ok");
        }
        proxy.abort();
        let _ = proxy.await;
        // The client sees its stream fail; it does not hang.
        let end = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(m) = s.next().await {
                if m.is_err() {
                    return;
                }
            }
        })
        .await;
        assert!(end.is_ok(), "the cut stream did not end on the client side");
    }
    let n = double.requests().len();
    assert!(n > before, "the second long stream reached the upstream");
    for i in before..n {
        assert!(
            double
                .wait_ended(i, Duration::from_secs(20))
                .await
                .is_some(),
            "upstream request {i} still open after the disconnect"
        );
    }
    // Nothing keeps synthesizing for the clients that left.
    let (_, settled) = hold_and_measure(&double, pid, Duration::from_secs(2)).await;
    let (_, later) = hold_and_measure(&double, pid, Duration::from_secs(1)).await;
    assert_eq!(
        settled, later,
        "upstream requests go on after every client left"
    );
    served(&mut client, "a disconnect mid-stream").await;
    drop(server);
}
