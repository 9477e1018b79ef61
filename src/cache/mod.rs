//! herald's audio cache: content-addressed phrases on disk, and single-flight upstream calls.
//!
//! [`Cache`] sits in front of the engines ([`crate::provider`] decides when it is read and
//! written). It must not depend on any door or on the provider. A phrase's key
//! ([`key::key`]) covers everything that changes its sound; its entry is the audio in a
//! canonical lossless form (s16le at the engine's rate), from which the pipeline makes any
//! output format. A miss starts a [`flight`]: one upstream call whose events are recorded and
//! replayed to every concurrent request for the same phrase, and stored once the engine
//! finished successfully (never after a failure, never when empty). Storage is behind
//! [`store::Store`]; the daemon uses [`store::DiskStore`].

pub mod entry;
pub mod flight;
pub mod key;
pub mod store;

use std::{
    io,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use futures::StreamExt;

use crate::{
    audio::{AudioSpec, InputEncoding},
    engine::{EngineError, SynthEvent, SynthStream, WordTiming},
};
use store::{Entry, EntryStatus, Store, StoreError};

/// PCM bytes per event when a hit is replayed into the pipeline (about 40 ms at 24 kHz mono):
/// small, so that the first chunk leaves after very little work.
const REPLAY_PIECE_BYTES: usize = 2048;

/// Cache settings, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheSettings {
    /// Directory of the entries.
    pub directory: PathBuf,
    /// Size cap, bytes.
    pub max_bytes: u64,
    /// Age cap.
    pub max_age: Option<Duration>,
    /// Longest text that is cached, in Unicode scalar values.
    pub max_text_chars: usize,
}

/// Counters of one daemon run.
#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    shared: AtomicU64,
}

/// Everything [`Cache::stats`] reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// The store's sizes and counters.
    pub store: store::StoreStats,
    /// Where the store lives.
    pub location: String,
    /// Size cap, bytes.
    pub max_bytes: u64,
    /// Age cap, s (0 = none).
    pub max_age_s: u64,
    /// Hits.
    pub hits: u64,
    /// Misses.
    pub misses: u64,
    /// Requests that joined a running flight.
    pub shared_calls: u64,
}

/// The cache: a store, the running flights, counters.
pub struct Cache {
    store: Arc<dyn Store>,
    flights: Arc<flight::Flights>,
    settings: CacheSettings,
    counters: Counters,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Cache {
    /// Open the on-disk cache (blocking: it scans the directory).
    pub fn open(settings: CacheSettings) -> io::Result<Self> {
        let store = store::DiskStore::open(
            &settings.directory,
            store::Limits {
                max_bytes: settings.max_bytes,
                max_age: settings.max_age,
            },
        )?;
        Ok(Self::with_store(Arc::new(store), settings))
    }

    /// A cache over any store (a shared backend, a test double).
    pub fn with_store(store: Arc<dyn Store>, settings: CacheSettings) -> Self {
        Self {
            store,
            flights: Arc::new(flight::Flights::default()),
            settings,
            counters: Counters::default(),
        }
    }

    /// Whether a text this long is cached at all.
    pub fn accepts_text(&self, text: &str) -> bool {
        text.chars().count() <= self.settings.max_text_chars
    }

    /// The entry under `key`, counting a hit or a miss. A damaged entry is logged, removed and
    /// reported as a miss; a failing store is logged and reported as a miss.
    pub async fn lookup(&self, key: &str, need_words: bool) -> Option<(Entry, EntryStatus)> {
        let found = self.get(key).await;
        let found = found.filter(|(e, _)| !need_words || e.meta.words.is_some());
        let counter = if found.is_some() {
            crate::metrics::metrics().cache_hits.inc();
            &self.counters.hits
        } else {
            crate::metrics::metrics().cache_misses.inc();
            &self.counters.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// The entry under `key` without counting a hit or a miss (warming, management).
    pub async fn peek(&self, key: &str) -> Option<(Entry, EntryStatus)> {
        self.get(key).await
    }

    /// Longest text that is cached, in Unicode scalar values.
    pub fn max_text_chars(&self) -> usize {
        self.settings.max_text_chars
    }

    async fn get(&self, key: &str) -> Option<(Entry, EntryStatus)> {
        // A hot entry still current in memory: no thread hop, no read.
        if let Some(found) = self.store.get_in_memory(key) {
            return Some(found);
        }
        let store = Arc::clone(&self.store);
        let k = key.to_owned();
        match tokio::task::spawn_blocking(move || store.get(&k)).await {
            Ok(Ok(found)) => found,
            Ok(Err(e @ StoreError::Corrupt { .. })) => {
                tracing::warn!(error = %e, "cache entry damaged; serving as a miss");
                None
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %crate::error::chain(&e), "cache read failed; serving as a miss");
                None
            }
            Err(_) => None,
        }
    }

    /// The most recently used entry of the same text in any voice (fallback), if any.
    pub async fn find_any_voice(&self, text: &str) -> Option<(String, Entry)> {
        self.find_any_voice_where(text, |_| true).await
    }

    /// The most recently used entry of the same text in any voice that `accept` takes (the
    /// fallback's "same language" rule), if any.
    pub async fn find_any_voice_where(
        &self,
        text: &str,
        accept: impl Fn(&entry::EntryMeta) -> bool,
    ) -> Option<(String, Entry)> {
        let hash = key::text_hash(text);
        let store = Arc::clone(&self.store);
        let keys = tokio::task::spawn_blocking(move || store.find_text(&hash))
            .await
            .unwrap_or_default();
        for k in keys {
            if let Some((entry, _)) = self.get(&k).await
                && accept(&entry.meta)
            {
                return Some((k, entry));
            }
        }
        None
    }

    /// Join the flight for `flight_key`, or start one with `start`; `true` when joined.
    pub fn flight(
        &self,
        flight_key: &str,
        start: impl FnOnce() -> flight::Start,
    ) -> (flight::Subscription, bool) {
        let (sub, joined) = self.flights.join_or_start(flight_key, start, &self.store);
        if joined {
            crate::metrics::metrics().cache_shared.inc();
            self.counters.shared.fetch_add(1, Ordering::Relaxed);
        }
        (sub, joined)
    }

    /// Pin or unpin `key`.
    pub async fn set_pinned(
        &self,
        key: &str,
        pinned: bool,
    ) -> Result<Option<EntryStatus>, StoreError> {
        let store = Arc::clone(&self.store);
        let k = key.to_owned();
        tokio::task::spawn_blocking(move || store.set_pinned(&k, pinned))
            .await
            .map_err(|e| StoreError::Io(io::Error::other(e)))?
    }

    /// Remove entries.
    pub async fn clear(&self, include_pinned: bool) -> Result<(u64, u64, u64), StoreError> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || store.clear(include_pinned))
            .await
            .map_err(|e| StoreError::Io(io::Error::other(e)))?
    }

    /// Sizes, limits and counters.
    pub fn stats(&self) -> Stats {
        Stats {
            store: self.store.stats(),
            location: self.store.location(),
            max_bytes: self.settings.max_bytes,
            max_age_s: self.settings.max_age.map_or(0, |d| d.as_secs()),
            hits: self.counters.hits.load(Ordering::Relaxed),
            misses: self.counters.misses.load(Ordering::Relaxed),
            shared_calls: self.counters.shared.load(Ordering::Relaxed),
        }
    }
}

/// An entry replayed as an engine stream: its words (when asked for), its PCM in small pieces,
/// then `Finished` with nothing billed.
pub fn replay(entry: Entry, want_words: bool) -> SynthStream {
    let Entry { meta, pcm } = entry;
    let spec = AudioSpec::new(meta.sample_rate, meta.channels).unwrap_or(AudioSpec {
        sample_rate: 16_000,
        channels: 1,
    });
    let frame = usize::from(spec.channels) * 2;
    let piece = (REPLAY_PIECE_BYTES / frame).max(1) * frame;
    let mut events: Vec<Result<SynthEvent, EngineError>> = Vec::new();
    if want_words && let Some(words) = meta.words {
        events.push(Ok(SynthEvent::Words(
            words
                .into_iter()
                .map(|w| WordTiming {
                    text: w.text,
                    begin_ms: w.begin_ms,
                    end_ms: w.end_ms,
                })
                .collect(),
        )));
    }
    let mut offset = 0;
    while offset < pcm.len() {
        let end = (offset + piece).min(pcm.len());
        events.push(Ok(SynthEvent::Audio {
            encoding: InputEncoding::Pcm16Le(spec),
            data: pcm.slice(offset..end),
        }));
        offset = end;
    }
    events.push(Ok(SynthEvent::Finished {
        characters: Some(0),
        upstream_request_ids: Vec::new(),
    }));
    futures::stream::iter(events).boxed()
}

/// The canonical form of a finished flight's audio: s16le at the engine's rate, faded at the
/// joins between an engine's pieces as a job would play it. `None` when there is no audio, or
/// it cannot be decoded (the stream then failed for its clients too).
pub fn canonical_pcm(events: &[SynthEvent]) -> Option<(AudioSpec, Bytes, u64)> {
    let mut encoding = None;
    let mut bytes = Vec::new();
    // Byte positions of the joins (raw PCM only).
    let mut joins = Vec::new();
    for e in events {
        match e {
            SynthEvent::Audio {
                encoding: enc,
                data,
            } => {
                if *encoding.get_or_insert(*enc) != *enc {
                    return None;
                }
                bytes.extend_from_slice(data);
            }
            SynthEvent::Boundary => joins.push(bytes.len()),
            SynthEvent::Words(_) | SynthEvent::Finished { .. } => {}
        }
    }
    match encoding? {
        InputEncoding::Pcm16Le(spec) => {
            let frame = usize::from(spec.channels) * 2;
            bytes.truncate(bytes.len() / frame * frame);
            let joins: Vec<u64> = joins.iter().map(|&b| (b / frame) as u64).collect();
            let bytes = crate::audio::join::fade_s16le(spec, &bytes, &joins).ok()?;
            let frames = (bytes.len() / frame) as u64;
            (frames > 0).then(|| (spec, Bytes::from(bytes), frames))
        }
        encoding => {
            let mut decoder =
                crate::audio::decode::open_decoder(encoding, io::Cursor::new(bytes)).ok()?;
            let mut spec = None;
            let mut out = Vec::new();
            while let Some(buffer) = decoder.next_buffer().ok()? {
                if *spec.get_or_insert(buffer.spec) != buffer.spec {
                    return None;
                }
                for s in &buffer.samples {
                    out.extend_from_slice(&crate::audio::encode::f32_to_i16(*s).to_le_bytes());
                }
            }
            let spec = spec?;
            let frames = (out.len() / (usize::from(spec.channels) * 2)) as u64;
            (frames > 0).then(|| (spec, Bytes::from(out), frames))
        }
    }
}
