//! The Prometheus endpoint of the real binary (`--metrics-listen`), scraped and parsed after a
//! known mix of requests against the DashScope test double: counts by model, engine and code,
//! cache hits and misses, upstream outcomes, retries and throttles, time-to-first-audio
//! histograms, active streams and build info.

use std::{collections::BTreeMap, time::Duration};

use herald::pb::{self, audio_format::Encoding};
use tonic::Code;

use crate::support::{dashscope::*, *};

/// One sample: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parse the text exposition (every non-comment line must be a valid sample).
fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (head, value) = line.rsplit_once(' ').expect("sample line");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("value in {line:?}"));
        let (name, labels) = match head.split_once('{') {
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                let labels = body
                    .split(',')
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| {
                        let (k, v) = kv.split_once('=').expect("label");
                        (k.to_owned(), v.trim_matches('"').to_owned())
                    })
                    .collect();
                (name.to_owned(), labels)
            }
            None => (head.to_owned(), BTreeMap::new()),
        };
        out.push((name, labels, value));
    }
    out
}

/// The value of `name` with at least `labels`, summed over the other labels.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

fn cosy(text: &str) -> pb::SynthesizeRequest {
    pb::SynthesizeRequest {
        model: "cosyvoice-v3-flash".into(),
        ..request(text, Encoding::PcmS16le, 16000, 1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_counts_what_happened() {
    let double = DashScopeDouble::start(API_KEY).await;
    let server = Serve::new("[dashscope]\nretry_base_ms = 10\n")
        .metrics()
        .double(&double)
        .start();
    let mut client = server.client().await;

    // A miss, then (once the miss is stored, just after its stream ends) a hit.
    synthesize(&mut client, cosy("Doors closing @600Hz"))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while value(
        &parse(&server.scrape().await.1),
        "herald_cache_entries",
        &[],
    ) < 1.0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the miss was never stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    synthesize(&mut client, cosy("Doors closing @600Hz"))
        .await
        .unwrap();
    // One 429, retried, then served.
    double.push_fault(Fault::once(FaultKind::HttpError {
        status: 429,
        code: "Throttling.RateQuota".into(),
        message: "Requests rate limit exceeded".into(),
    }));
    synthesize(&mut client, cosy("Mind the gap @700Hz"))
        .await
        .unwrap();
    // The offline engine.
    synthesize(
        &mut client,
        pb::SynthesizeRequest {
            model: "espeak-ng".into(),
            ..request("Hello.", Encoding::PcmS16le, 16000, 1)
        },
    )
    .await
    .unwrap();
    // Refused: a bad rate, and a model nobody serves (not a label of its own).
    let bad = pb::SynthesizeRequest {
        model: "espeak-ng".into(),
        ..request("Hello.", Encoding::PcmS16le, 1, 1)
    };
    assert_eq!(
        synthesize(&mut client, bad).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let unknown = pb::SynthesizeRequest {
        model: "no-such-model-\u{1F600}".into(),
        ..request("Hello.", Encoding::PcmS16le, 16000, 1)
    };
    assert_eq!(
        synthesize(&mut client, unknown).await.unwrap_err().code(),
        Code::InvalidArgument
    );

    let (content_type, text) = server.scrape().await;
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    let s = parse(&text);
    let req = "herald_synthesize_requests_total";
    let ok = [
        ("model", "cosyvoice-v3-flash"),
        ("engine", "cosyvoice"),
        ("code", "OK"),
    ];
    assert_eq!(value(&s, req, &ok), 3.0, "{text}");
    assert_eq!(
        value(
            &s,
            req,
            &[
                ("model", "espeak-ng"),
                ("engine", "espeak-ng"),
                ("code", "OK")
            ]
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            req,
            &[("model", "espeak-ng"), ("code", "INVALID_ARGUMENT")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            req,
            &[("model", "unknown"), ("code", "INVALID_ARGUMENT")]
        ),
        1.0
    );
    assert!(
        !text.contains("no-such-model"),
        "client strings are not labels"
    );
    assert_eq!(value(&s, "herald_cache_hits_total", &[]), 1.0);
    assert_eq!(value(&s, "herald_cache_misses_total", &[]), 3.0);
    let up = "herald_upstream_requests_total";
    assert_eq!(
        value(&s, up, &[("family", "cosyvoice"), ("outcome", "ok")]),
        2.0
    );
    assert_eq!(
        value(&s, up, &[("family", "cosyvoice"), ("outcome", "http_429")]),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "herald_upstream_retries_total",
            &[("family", "cosyvoice")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "herald_upstream_throttled_total",
            &[("family", "cosyvoice")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "herald_upstream_latency_seconds_count",
            &[("family", "cosyvoice")]
        ),
        3.0
    );
    let ttfa = "herald_time_to_first_audio_seconds_count";
    assert_eq!(
        value(&s, ttfa, &[("engine", "cosyvoice"), ("cache_hit", "true")]),
        1.0
    );
    assert_eq!(
        value(&s, ttfa, &[("engine", "cosyvoice"), ("cache_hit", "false")]),
        2.0
    );
    assert_eq!(value(&s, ttfa, &[("engine", "espeak-ng")]), 1.0);
    assert_eq!(value(&s, "herald_active_streams", &[]), 0.0);
    assert!(value(&s, "herald_cache_entries", &[]) >= 2.0, "{text}");
    assert!(value(&s, "herald_cache_bytes", &[]) > 10_000.0);
    assert_eq!(
        value(
            &s,
            "herald_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert!(!text.contains(API_KEY));
}
