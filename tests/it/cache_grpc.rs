//! The cache and the fallback chain through gRPC, against the DashScope double on loopback (its
//! request log counts the upstream calls): hits and misses, every format from one entry (the
//! tone's frequency and length), REFRESH and BYPASS, single flight, the upstream gone (cached
//! phrases still served, others from the cache in another voice or from espeak-ng, saying so),
//! corrupt entries, eviction under a tiny cap with pins, nothing stored after a failure, and the
//! herald.v1.Cache methods.

use std::{path::Path, time::Duration};

use herald::pb::{self, audio_format::Encoding, cache_client::CacheClient};
use tonic::{Code, transport::Channel};

use crate::support::{dashscope::*, *};

const MODEL: &str = "cosyvoice-v3-flash";
const VOICE: &str = "longanyang";
/// The double's audio per billed text unit.
const MS_PER_UNIT: f64 = 40.0;

struct Setup {
    double: Option<DashScopeDouble>,
    daemon: TestDaemon,
    cache_dir: tempfile::TempDir,
}

impl Setup {
    fn double(&self) -> &DashScopeDouble {
        self.double.as_ref().expect("double running")
    }

    fn upstream_calls(&self) -> usize {
        self.double().requests().len()
    }

    async fn cache_client(&self) -> CacheClient<Channel> {
        CacheClient::connect(format!("http://{}", self.daemon.tcp))
            .await
            .expect("connect")
    }

    /// Wait until `n` entries have been written in all: a flight stores its result just after
    /// its clients got their last chunk.
    async fn wait_stored(&self, n: u64) -> pb::CacheStats {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let stats = self.stats().await;
            if stats.stored >= n || tokio::time::Instant::now() > deadline {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn warm(&self, text: &str, pin: bool) -> pb::CacheEntryResult {
        let mut results = self
            .cache_client()
            .await
            .warm_cache(pb::WarmCacheRequest {
                phrases: vec![phrase(text)],
                pin,
                refresh: false,
            })
            .await
            .expect("warm")
            .into_inner()
            .results;
        assert_eq!(results.len(), 1);
        results.remove(0)
    }

    async fn clear(&self, include_pinned: bool) -> pb::ClearCacheResponse {
        self.cache_client()
            .await
            .clear_cache(pb::ClearCacheRequest { include_pinned })
            .await
            .expect("clear")
            .into_inner()
    }

    async fn stats(&self) -> pb::CacheStats {
        self.cache_client()
            .await
            .get_cache_stats(pb::GetCacheStatsRequest {})
            .await
            .expect("stats")
            .into_inner()
    }
}

async fn setup_with(toml_extra: &str) -> Setup {
    let double = DashScopeDouble::start(API_KEY).await;
    let cache_dir = tempfile::tempdir().expect("tempdir");
    let toml = layered(&[
        FAST_UPSTREAM,
        "[dashscope]\nconnect_timeout_ms = 500\n",
        toml_extra,
    ]);
    let dir = cache_dir.path().display().to_string();
    let daemon = spawn_daemon_against(&double, &toml, &[("CACHE_DIRECTORY", &dir)]).await;
    Setup {
        double: Some(double),
        daemon,
        cache_dir,
    }
}

async fn setup() -> Setup {
    setup_with("").await
}

fn req(text: &str, enc: Encoding, rate: u32, ch: u32) -> pb::SynthesizeRequest {
    pb::SynthesizeRequest {
        model: MODEL.to_owned(),
        voice: VOICE.to_owned(),
        ..request(text, enc, rate, ch)
    }
}

fn phrase(text: &str) -> pb::SynthesizeRequest {
    req(text, Encoding::PcmS16le, 0, 0)
}

fn duration_ms(c: &Collected) -> f64 {
    c.mono().len() as f64 * 1000.0 / f64::from(c.format().sample_rate_hz)
}

fn assert_tone(c: &Collected, hz: f64, ms: f64, what: &str) {
    let x = c.mono();
    let rate = c.format().sample_rate_hz;
    let got = peak_frequency(&x, rate);
    assert!((got - hz).abs() <= 2.0, "{what}: {got} Hz, want {hz}");
    let len = duration_ms(c);
    // MP3 adds encoder delay and padding; PCM, WAV and F32 are exact to a frame.
    let slack = if c.format().encoding == Encoding::Mp3 as i32 {
        80.0
    } else {
        1.0
    };
    assert!(
        (len - ms).abs() <= slack,
        "{what}: {len} ms, want {ms} ± {slack}"
    );
}

fn expected_ms(text: &str) -> f64 {
    text_units(text) as f64 * MS_PER_UNIT
}

fn entry_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(shards) = std::fs::read_dir(dir.join("entries")) else {
        return out;
    };
    for shard in shards.flatten() {
        for f in std::fs::read_dir(shard.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if f.path().extension().is_some_and(|e| e == "hac") {
                out.push(f.path());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_makes_no_upstream_call_and_serves_every_format_from_one_entry() {
    let s = setup().await;
    let mut client = s.daemon.client().await;
    let text = "Doors closing @600Hz";
    let want_ms = expected_ms(text);

    let first = synthesize(&mut client, req(text, Encoding::PcmS16le, 16000, 1))
        .await
        .expect("miss");
    assert!(!first.summary().cache_hit && !first.info().cache_hit);
    assert_eq!(first.summary().engine, "cosyvoice");
    assert_eq!(s.upstream_calls(), 1);
    assert_tone(&first, 600.0, want_ms, "miss, s16 16 kHz");
    s.wait_stored(1).await;
    assert_eq!(entry_files(s.cache_dir.path()).len(), 1, "stored once");

    for (enc, rate, ch) in [
        (Encoding::Wav, 48000, 2),
        (Encoding::PcmF32le, 8000, 1),
        (Encoding::Mp3, 22050, 1),
        (Encoding::PcmS16le, 16000, 1),
    ] {
        let c = synthesize(&mut client, req(text, enc, rate, ch))
            .await
            .expect("hit");
        let what = format!("hit {enc:?} {rate} Hz {ch} ch");
        assert!(c.summary().cache_hit && c.info().cache_hit, "{what}");
        assert!(!c.summary().fallback_used, "{what}");
        assert_eq!(c.summary().engine, "cosyvoice", "{what}");
        assert_eq!(c.summary().characters, 0, "{what}: nothing billed");
        assert_eq!(
            (c.format().sample_rate_hz, c.format().channels),
            (rate, ch),
            "{what}"
        );
        assert_eq!(c.info().native_sample_rate_hz, 24000, "{what}");
        assert_tone(&c, 600.0, want_ms, &what);
        if enc == Encoding::PcmS16le {
            assert_eq!(
                c.bytes(),
                first.bytes(),
                "the same request gives the same bytes"
            );
        }
    }
    assert_eq!(s.upstream_calls(), 1, "hits never reach the upstream");

    // Whitespace and Unicode form are normalized in the key; the voice is not ignored.
    let c = synthesize(
        &mut client,
        req("  Doors   closing @600Hz ", Encoding::PcmS16le, 16000, 1),
    )
    .await
    .unwrap();
    assert!(c.summary().cache_hit, "normalized text hits");
    let other_voice = pb::SynthesizeRequest {
        voice: "longanhuan".to_owned(),
        ..req(text, Encoding::PcmS16le, 16000, 1)
    };
    let c = synthesize(&mut client, other_voice).await.unwrap();
    assert!(!c.summary().cache_hit, "another voice is another entry");
    assert_eq!(s.upstream_calls(), 2);

    // REFRESH synthesizes again and replaces the entry; BYPASS neither reads nor writes.
    let refresh = pb::SynthesizeRequest {
        cache: pb::CachePolicy::Refresh as i32,
        ..req(text, Encoding::PcmS16le, 16000, 1)
    };
    let c = synthesize(&mut client, refresh).await.unwrap();
    assert!(!c.summary().cache_hit);
    assert_eq!(s.upstream_calls(), 3);
    s.wait_stored(3).await;
    let bypass = pb::SynthesizeRequest {
        cache: pb::CachePolicy::Bypass as i32,
        ..req("Mind the gap @700Hz", Encoding::PcmS16le, 16000, 1)
    };
    let c = synthesize(&mut client, bypass).await.unwrap();
    assert!(!c.summary().cache_hit);
    assert_tone(&c, 700.0, expected_ms("Mind the gap @700Hz"), "bypass");
    assert_eq!(s.upstream_calls(), 4);
    assert_eq!(
        entry_files(s.cache_dir.path()).len(),
        2,
        "bypass stored nothing"
    );

    let stats = s.wait_stored(3).await;
    assert_eq!(stats.entries, 2, "{stats:?}");
    assert_eq!(stats.hits, 5, "{stats:?}");
    assert_eq!(stats.misses, 2, "{stats:?}");
    assert_eq!(stats.stored, 3, "{stats:?}");
    assert_eq!(stats.directory, s.cache_dir.path().display().to_string());

    // A bad policy is INVALID_ARGUMENT naming the field.
    let bad = pb::SynthesizeRequest {
        cache: 9,
        ..phrase(text)
    };
    let e = synthesize(&mut client, bad).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("cache:"), "{}", e.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_identical_requests_make_one_upstream_call() {
    let s = setup().await;
    // Real-time pacing: the upstream call lasts as long as its audio (about 1 s).
    s.double().set_options(Options {
        pace: 1.0,
        ..Options::default()
    });
    let text = "Low battery, returning to dock @500Hz";
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut client = s.daemon.client().await;
        let (enc, rate) = if i % 2 == 0 {
            (Encoding::PcmS16le, 16000)
        } else {
            (Encoding::Wav, 48000)
        };
        tasks.push(tokio::spawn(async move {
            synthesize(&mut client, req(text, enc, rate, 1)).await
        }));
    }
    let mut shared_or_hit = 0;
    for t in tasks {
        let c = t.await.unwrap().expect("every request gets the audio");
        assert_tone(&c, 500.0, expected_ms(text), "concurrent");
        if c.summary().cache_hit {
            shared_or_hit += 1;
        }
    }
    assert_eq!(s.upstream_calls(), 1, "one upstream call for all 20");
    let stats = s.wait_stored(1).await;
    assert_eq!(
        stats.shared_calls + stats.hits,
        19,
        "19 requests joined the flight or hit what it stored: {stats:?}"
    );
    assert_eq!(stats.hits, shared_or_hit);
    assert_eq!(stats.entries, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_upstream_gone_cached_phrases_play_and_others_fall_back() {
    let mut s = setup().await;
    let mut client = s.daemon.client().await;
    let cached = "Doors closing @600Hz";
    synthesize(&mut client, phrase(cached))
        .await
        .expect("warm by use");
    assert_eq!(s.upstream_calls(), 1);
    s.wait_stored(1).await;

    // INVALID_ARGUMENT from the upstream never falls back.
    s.double().push_fault(Fault::once(FaultKind::HttpError {
        status: 400,
        code: "DataInspectionFailed".to_owned(),
        message: "Input data may contain inappropriate content.".to_owned(),
    }));
    let e = synthesize(&mut client, phrase("Something rude"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    s.double.take().expect("double").stop().await;

    // The cached phrase: served from the cache, as if the upstream were there.
    let c = synthesize(&mut client, req(cached, Encoding::Wav, 48000, 1))
        .await
        .expect("cached phrase");
    assert!(c.summary().cache_hit && !c.summary().fallback_used);
    assert_tone(&c, 600.0, expected_ms(cached), "cached, upstream gone");

    // The same text in another voice: the cache step of the chain serves the cached voice.
    let other_voice = pb::SynthesizeRequest {
        voice: "longanhuan".to_owned(),
        ..req(cached, Encoding::PcmS16le, 16000, 1)
    };
    let c = synthesize(&mut client, other_voice)
        .await
        .expect("cache step");
    assert!(c.info().fallback_used && c.summary().fallback_used);
    assert!(c.summary().cache_hit);
    assert_eq!(c.info().voice, VOICE, "the voice that served");
    assert_eq!(c.info().requested_voice, "longanhuan");
    assert!(
        c.info().fallback_reason.contains("Unavailable")
            || c.info().fallback_reason.contains("unavailable"),
        "{}",
        c.info().fallback_reason
    );
    assert_tone(&c, 600.0, expected_ms(cached), "cache step");

    // An uncached phrase: espeak-ng speaks it, and the stream says so.
    let text = "Please use the other entrance.";
    let c = synthesize(&mut client, req(text, Encoding::PcmS16le, 16000, 1))
        .await
        .expect("espeak-ng fallback");
    assert!(c.info().fallback_used && c.summary().fallback_used);
    assert_eq!(c.info().engine, "espeak-ng");
    assert_eq!(c.summary().engine, "espeak-ng");
    assert_eq!(c.info().requested_model, MODEL);
    assert_eq!(c.info().model, "espeak-ng");
    assert_eq!(
        c.format().sample_rate_hz,
        16000,
        "the format the client asked for"
    );
    let x = c.mono();
    let secs = x.len() as f64 / 16000.0;
    assert!((1.0..6.0).contains(&secs), "{secs} s of speech");
    assert!(voiced_fraction(&x, 16000) > 0.4, "it is speech");
    assert!(!c.info().fallback_reason.is_empty());

    // A request that forbids fallback gets the upstream's failure.
    let strict = pb::SynthesizeRequest {
        no_fallback: true,
        ..req("Another uncached phrase.", Encoding::PcmS16le, 16000, 1)
    };
    let e = synthesize(&mut client, strict).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_entry_is_removed_and_served_as_a_miss() {
    let s = setup().await;
    let mut client = s.daemon.client().await;
    let text = "Elevator arriving @800Hz";
    for (round, damage) in ["flip", "truncate"].into_iter().enumerate() {
        let c = synthesize(&mut client, phrase(text)).await.unwrap();
        assert!(!c.summary().cache_hit, "{damage}: miss first");
        s.wait_stored(2 * round as u64 + 1).await;
        let files = entry_files(s.cache_dir.path());
        assert_eq!(files.len(), 1);
        let mut bytes = std::fs::read(&files[0]).unwrap();
        if damage == "flip" {
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x55;
        } else {
            bytes.truncate(bytes.len() - 1000);
        }
        std::fs::write(&files[0], &bytes).unwrap();

        let calls = s.upstream_calls();
        let c = synthesize(&mut client, req(text, Encoding::PcmS16le, 16000, 1))
            .await
            .expect("served despite the damage");
        assert!(
            !c.summary().cache_hit,
            "{damage}: a damaged entry is a miss"
        );
        assert_eq!(s.upstream_calls(), calls + 1, "{damage}: synthesized again");
        assert_tone(&c, 800.0, expected_ms(text), damage);
        s.wait_stored(2 * round as u64 + 2).await;
        let c = synthesize(&mut client, phrase(text)).await.unwrap();
        assert!(c.summary().cache_hit, "{damage}: the fresh entry hits");
        // Start the next round from an empty cache.
        s.clear(true).await;
    }
    assert_eq!(s.stats().await.corrupt, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_under_a_tiny_cap_keeps_pinned_entries() {
    // One phrase of ~20 units is 0.8 s of 24 kHz s16 ≈ 38 KB: a 64 KiB cap holds one.
    let s = setup_with("[cache]\nmax_bytes = 65536\n").await;
    let mut client = s.daemon.client().await;
    let mut cache = s.cache_client().await;
    let pinned = "Emergency exit @300Hz";
    let r = &s.warm(pinned, true).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.cached && r.pinned && !r.was_cached, "{r:?}");
    assert!(
        (r.duration_ms as f64 - expected_ms(pinned)).abs() <= 1.0,
        "{r:?}"
    );
    assert_eq!(s.upstream_calls(), 1);

    // Each stored before the next (a store lands just after its stream ends; recency is the
    // order of the stores).
    for (n, text) in [(2, "First stop @400Hz"), (3, "Second stop @450Hz")] {
        synthesize(&mut client, phrase(text)).await.unwrap();
        s.wait_stored(n).await;
    }
    assert_eq!(s.upstream_calls(), 3);
    let stats = s.wait_stored(3).await;
    assert_eq!(stats.entries, 2, "the pin and the newest: {stats:?}");
    assert_eq!(stats.pinned_entries, 1);
    assert!(stats.evicted >= 1, "{stats:?}");

    let c = synthesize(&mut client, phrase(pinned)).await.unwrap();
    assert!(c.summary().cache_hit, "the pinned entry survived");
    assert_tone(&c, 300.0, expected_ms(pinned), "pinned");
    let c = synthesize(&mut client, phrase("Second stop @450Hz"))
        .await
        .unwrap();
    assert!(c.summary().cache_hit, "the newest survived");
    let c = synthesize(&mut client, phrase("First stop @400Hz"))
        .await
        .unwrap();
    assert!(
        !c.summary().cache_hit,
        "the least recently used was evicted"
    );
    assert_eq!(s.upstream_calls(), 4);
    // That miss is stored (evicting "Second stop") once its stream has ended; wait for it, so
    // the clears below see a settled cache.
    let stats = s.wait_stored(4).await;
    assert_eq!(stats.stored, 4, "{stats:?}");
    assert_eq!(stats.entries, 2, "the pin and the newest: {stats:?}");

    // Warming again is a no-op; clearing keeps the pin unless asked.
    let again = s.warm(pinned, false).await;
    assert!(again.was_cached && again.pinned, "{again:?}");
    assert_eq!(s.upstream_calls(), 4);
    let cleared = s.clear(false).await;
    assert_eq!((cleared.removed_entries, cleared.kept_pinned), (1, 1));
    let unpinned = cache
        .pin_cache(pb::PinCacheRequest {
            phrases: vec![phrase(pinned), phrase("Never cached")],
            pinned: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!unpinned.results[0].pinned && unpinned.results[0].code == 0);
    assert_eq!(unpinned.results[1].code, Code::NotFound as i32);
    let cleared = s.clear(false).await;
    assert_eq!((cleared.removed_entries, cleared.kept_pinned), (1, 0));
    assert!(entry_files(s.cache_dir.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_cached_after_a_mid_stream_failure() {
    let s = setup().await;
    let mut client = s.daemon.client().await;
    // Long enough for several audio events (100 ms each) before the drop.
    let text = "The next train to the airport departs from platform nine @650Hz";
    s.double()
        .push_fault(Fault::once(FaultKind::DropAfter { frames: 3 }));
    let e = synthesize(&mut client, phrase(text)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    // Storing happens after the stream; give a wrongly stored entry time to appear.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(entry_files(s.cache_dir.path()).is_empty(), "nothing stored");
    assert_eq!(s.stats().await.entries, 0);

    let c = synthesize(&mut client, phrase(text)).await.expect("retry");
    assert!(!c.summary().cache_hit);
    assert_tone(&c, 650.0, expected_ms(text), "after the failure");
    assert_eq!(s.wait_stored(1).await.stored, 1);
    let c = synthesize(&mut client, phrase(text)).await.unwrap();
    assert!(c.summary().cache_hit, "the whole phrase is cached now");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_methods_answer_failed_precondition_when_the_cache_is_off() {
    let s = setup_with("[cache]\nenabled = false\n").await;
    let mut cache = s.cache_client().await;
    let e = cache
        .get_cache_stats(pb::GetCacheStatsRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("cache.enabled"), "{}", e.message());
    // Synthesis works without it, every time upstream.
    let mut client = s.daemon.client().await;
    for _ in 0..2 {
        let c = synthesize(&mut client, phrase("Hello @440Hz"))
            .await
            .unwrap();
        assert!(!c.summary().cache_hit);
    }
    assert_eq!(s.upstream_calls(), 2);
    // Too many phrases: INVALID_ARGUMENT naming the field and the limit (checked when on).
    let s2 = setup().await;
    let e = s2
        .cache_client()
        .await
        .warm_cache(pb::WarmCacheRequest {
            phrases: vec![phrase("x"); 1001],
            pin: false,
            refresh: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("phrases") && e.message().contains("1000"));
}

/// A hot entry is served from memory after its first hit (no read, no thread hop), only while
/// its file is unchanged: the audio is byte-identical to the miss's and the disk hit's, and a
/// file replaced by another phrase's entry or removed is a miss again, as before the copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_entry_from_memory_is_byte_identical_and_follows_its_file() {
    let s = setup().await;
    let mut client = s.daemon.client().await;
    let (text, other) = ("Platform closed @800Hz", "Platform open @600Hz");
    let miss = synthesize(&mut client, phrase(text)).await.unwrap();
    assert!(!miss.summary().cache_hit);
    assert_tone(&miss, 800.0, expected_ms(text), "miss");
    s.wait_stored(1).await;
    let mine = entry_files(s.cache_dir.path())
        .pop()
        .expect("the entry's file");
    let calls = s.upstream_calls();
    // The first hit reads the file, the next ones are served from memory.
    for round in 0..4 {
        let hit = synthesize(&mut client, phrase(text)).await.unwrap();
        assert!(hit.summary().cache_hit, "hit {round}");
        assert_eq!(hit.bytes(), miss.bytes(), "hit {round}: the miss's audio");
    }
    assert_eq!(s.upstream_calls(), calls, "no upstream call for hits");

    // The file replaced (a new inode) by the entry of another phrase: a miss, not the copy in
    // memory, and not the other phrase's audio.
    let c = synthesize(&mut client, phrase(other)).await.unwrap();
    assert_tone(&c, 600.0, expected_ms(other), "other phrase");
    s.wait_stored(2).await;
    let files = entry_files(s.cache_dir.path());
    assert_eq!(files.len(), 2);
    let theirs = files
        .into_iter()
        .find(|f| *f != mine)
        .expect("the other file");
    let tmp = s.cache_dir.path().join("replacement");
    std::fs::copy(&theirs, &tmp).unwrap();
    std::fs::rename(&tmp, &mine).unwrap();
    let calls = s.upstream_calls();
    let c = synthesize(&mut client, phrase(text)).await.unwrap();
    assert!(!c.summary().cache_hit, "a replaced file is a miss");
    assert_eq!(s.upstream_calls(), calls + 1, "synthesized again");
    assert_eq!(c.bytes(), miss.bytes(), "its own audio");

    // Hot again, then removed: a miss.
    s.wait_stored(3).await;
    for round in 0..3 {
        let hit = synthesize(&mut client, phrase(text)).await.unwrap();
        assert!(hit.summary().cache_hit, "hot again, hit {round}");
        assert_eq!(hit.bytes(), miss.bytes());
    }
    std::fs::remove_file(&mine).unwrap();
    let calls = s.upstream_calls();
    let c = synthesize(&mut client, phrase(text)).await.unwrap();
    assert!(!c.summary().cache_hit, "a removed file is a miss");
    assert_eq!(s.upstream_calls(), calls + 1);
    assert_eq!(c.bytes(), miss.bytes());
    assert_eq!(
        s.stats().await.corrupt,
        2,
        "both counted as damaged entries"
    );
}
