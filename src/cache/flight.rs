//! Single flight: concurrent identical requests share one upstream call.
//!
//! A [`Flight`] is one engine call run by its own task. Its events are recorded in order;
//! every [`Subscription`] replays them from the start and then follows along, so a request that
//! joins late still gets the whole phrase. When the engine finishes successfully the recording
//! is stored in the cache; when it fails, every subscriber gets the error (shared, as
//! [`EngineError::Shared`]) and nothing is stored. When the last subscriber leaves before the
//! end, the call is cancelled at once (the upstream request is dropped) and nothing is stored.
//! Memory is bounded by the cache's `max_text_chars`: only short phrases fly. A flight must
//! not decide policy (what is cacheable, when to fall back): that is the provider's.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::store::{Entry, EntryMeta, EntryStatus, Store, StoreError, StoredWord, now_unix_ms};
use crate::engine::{EngineError, SynthEvent, SynthStream, SynthesisRequest, Synthesizer};

/// What a new flight runs and where its result goes.
pub struct Start {
    /// The engine.
    pub engine: Arc<dyn Synthesizer>,
    /// The request (its deadline bounds the engine's retries).
    pub request: SynthesisRequest,
    /// Cache key the result is stored under.
    pub key: String,
}

#[derive(Clone)]
enum End {
    Ok,
    Err(Arc<EngineError>),
}

#[derive(Default)]
struct State {
    events: Vec<SynthEvent>,
    end: Option<End>,
}

/// One upstream call and its recording.
pub struct Flight {
    state: Mutex<State>,
    /// Bumped on every new event and at the end.
    version: watch::Sender<u64>,
    /// What storing the result gave (`None` while running or storing).
    stored: watch::Sender<Option<Result<EntryStatus, NotStored>>>,
    cancel: CancellationToken,
}

impl Flight {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::error::lock(&self.state)
    }

    fn push(&self, event: SynthEvent) {
        self.lock().events.push(event);
        self.version.send_modify(|v| *v += 1);
    }

    fn end(&self, end: End) {
        {
            let mut s = self.lock();
            if s.end.is_some() {
                return;
            }
            s.end = Some(end);
        }
        self.version.send_modify(|v| *v += 1);
    }
}

/// The running flights, by flight key, with their subscriber counts.
#[derive(Default)]
pub struct Flights {
    map: Mutex<HashMap<String, (Arc<Flight>, usize)>>,
}

impl Flights {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Arc<Flight>, usize)>> {
        crate::error::lock(&self.map)
    }

    /// Subscribe to the flight for `key`, starting it with `start` when none runs; `true`
    /// when an existing flight was joined.
    pub fn join_or_start(
        self: &Arc<Self>,
        key: &str,
        start: impl FnOnce() -> Start,
        store: &Arc<dyn Store>,
    ) -> (Subscription, bool) {
        let mut map = self.lock();
        if let Some((flight, count)) = map.get_mut(key) {
            *count += 1;
            let flight = Arc::clone(flight);
            drop(map);
            return (self.subscription(key, flight), true);
        }
        let flight = Arc::new(Flight {
            state: Mutex::new(State::default()),
            version: watch::channel(0).0,
            stored: watch::channel(None).0,
            cancel: CancellationToken::new(),
        });
        map.insert(key.to_owned(), (Arc::clone(&flight), 1));
        drop(map);
        tokio::spawn(drive(
            Arc::clone(&flight),
            start(),
            Arc::clone(store),
            Arc::clone(self),
            key.to_owned(),
        ));
        (self.subscription(key, flight), false)
    }

    fn subscription(self: &Arc<Self>, key: &str, flight: Arc<Flight>) -> Subscription {
        Subscription {
            flights: Arc::clone(self),
            key: key.to_owned(),
            flight,
        }
    }

    fn remove(&self, key: &str, flight: &Arc<Flight>) {
        let mut map = self.lock();
        if map.get(key).is_some_and(|(f, _)| Arc::ptr_eq(f, flight)) {
            map.remove(key);
        }
    }
}

/// One request's place in a flight. Dropping the last one of an unfinished flight cancels it.
pub struct Subscription {
    flights: Arc<Flights>,
    key: String,
    flight: Arc<Flight>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut map = self.flights.lock();
        let Some((flight, count)) = map.get_mut(&self.key) else {
            return;
        };
        if !Arc::ptr_eq(flight, &self.flight) {
            return;
        }
        *count = count.saturating_sub(1);
        if *count == 0 && self.flight.lock().end.is_none() {
            map.remove(&self.key);
            self.flight.cancel.cancel();
        }
    }
}

impl Subscription {
    /// The flight's events from the start, as an engine stream.
    pub fn stream(self) -> SynthStream {
        let rx = self.flight.version.subscribe();
        futures::stream::unfold(
            (self, rx, 0usize, false),
            |(sub, mut rx, idx, done)| async move {
                if done {
                    return None;
                }
                loop {
                    rx.borrow_and_update();
                    let next = {
                        let s = sub.flight.lock();
                        if idx < s.events.len() {
                            Some(Ok(s.events[idx].clone()))
                        } else {
                            match &s.end {
                                Some(End::Ok) => return None,
                                Some(End::Err(e)) => Some(Err(EngineError::Shared(Arc::clone(e)))),
                                None => None,
                            }
                        }
                    };
                    match next {
                        Some(Ok(event)) => return Some((Ok(event), (sub, rx, idx + 1, false))),
                        Some(Err(e)) => return Some((Err(e), (sub, rx, idx, true))),
                        None => {
                            if rx.changed().await.is_err() {
                                return Some((Err(EngineError::Truncated), (sub, rx, idx, true)));
                            }
                        }
                    }
                }
            },
        )
        .boxed()
    }

    /// Resolves once the flight has stored its result (or failed): the store's status, or why
    /// nothing was stored. Independent of the subscription's lifetime.
    pub fn stored(
        &self,
    ) -> impl std::future::Future<Output = Result<EntryStatus, NotStored>> + Send + 'static {
        let mut rx = self.flight.stored.subscribe();
        async move {
            loop {
                if let Some(result) = rx.borrow_and_update().clone() {
                    return result;
                }
                if rx.changed().await.is_err() {
                    return Err(NotStored::Cancelled);
                }
            }
        }
    }
}

/// Why a flight stored nothing.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotStored {
    /// The flight ended before its result was known.
    #[error("the upstream call was cancelled")]
    Cancelled,
    /// The flight's task stopped without saying how it ended.
    #[error("not stored")]
    Stopped,
    /// Every subscriber left before the end, so the call was cancelled.
    #[error("every client left before the end")]
    Abandoned,
    /// The engine failed.
    #[error("the upstream call failed; nothing cached")]
    Failed,
    /// Storing panicked (a bug).
    #[error("storing panicked")]
    Panicked,
    /// The engine finished without audio.
    #[error("no audio to store")]
    NoAudio,
    /// The store refused the entry.
    #[error(transparent)]
    Store(Arc<StoreError>),
}

/// Ends the flight with an error if its task stops without saying how it ended (a panic).
struct EndGuard(Arc<Flight>);

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.0.end(End::Err(Arc::new(EngineError::Truncated)));
        self.0.stored.send_if_modified(|s| {
            s.is_none()
                .then(|| *s = Some(Err(NotStored::Stopped)))
                .is_some()
        });
    }
}

async fn drive(
    flight: Arc<Flight>,
    start: Start,
    store: Arc<dyn Store>,
    flights: Arc<Flights>,
    key: String,
) {
    let guard = EndGuard(Arc::clone(&flight));
    let Start {
        engine,
        request,
        key: cache_key,
    } = start;
    let meta = EntryMeta {
        key: cache_key.clone(),
        engine: engine.name().to_owned(),
        model: request.model.clone(),
        voice: request.voice.clone(),
        text_hash: super::key::text_hash(&request.text),
        sample_rate: 0,
        channels: 0,
        frames: 0,
        characters: None,
        words: request.word_timestamps.then(Vec::new),
        created_unix_ms: 0,
    };
    let outcome = tokio::select! {
        biased;
        () = flight.cancel.cancelled() => None,
        r = record(&flight, engine, request) => Some(r),
    };
    let stored = match outcome {
        None => {
            tracing::debug!(key = %cache_key, "every client left; upstream call cancelled, nothing cached");
            flight.end(End::Err(Arc::new(EngineError::Truncated)));
            Err(NotStored::Abandoned)
        }
        Some(Err(error)) => {
            flight.end(End::Err(Arc::new(error)));
            Err(NotStored::Failed)
        }
        Some(Ok(())) => {
            flight.end(End::Ok);
            let events = flight.lock().events.clone();
            let k = cache_key.clone();
            tokio::task::spawn_blocking(move || store_events(&*store, &k, meta, &events))
                .await
                .unwrap_or(Err(NotStored::Panicked))
        }
    };
    match &stored {
        Ok(status) => tracing::debug!(key = %cache_key, bytes = status.bytes, "cached"),
        // A write that failed (disk full, permissions, a foreign file in the way) is the
        // operator's to see, with its cause; the other reasons are normal.
        Err(why @ (NotStored::Store(_) | NotStored::Panicked)) => {
            tracing::warn!(key = %cache_key, error = %crate::error::chain(why), "cache write failed; the phrase is not cached")
        }
        Err(why) => {
            tracing::debug!(key = %cache_key, why = %crate::error::chain(why), "not cached")
        }
    }
    flight.stored.send_replace(Some(stored));
    flights.remove(&key, &flight);
    drop(guard);
}

/// Run the engine, recording every event, until it finished (`Ok`) or failed.
async fn record(
    flight: &Flight,
    engine: Arc<dyn Synthesizer>,
    request: SynthesisRequest,
) -> Result<(), EngineError> {
    let mut stream = engine.synthesize(request).await?;
    while let Some(event) = stream.next().await {
        let event = event?;
        let finished = matches!(event, SynthEvent::Finished { .. });
        flight.push(event);
        if finished {
            return Ok(());
        }
    }
    Err(EngineError::Truncated)
}

fn store_events(
    store: &dyn Store,
    key: &str,
    mut meta: EntryMeta,
    events: &[SynthEvent],
) -> Result<EntryStatus, NotStored> {
    let Some((spec, pcm, frames)) = super::canonical_pcm(events) else {
        return Err(NotStored::NoAudio);
    };
    for e in events {
        match e {
            SynthEvent::Words(words) => {
                if let Some(list) = &mut meta.words {
                    list.extend(words.iter().map(|w| StoredWord {
                        text: w.text.clone(),
                        begin_ms: w.begin_ms,
                        end_ms: w.end_ms,
                    }));
                }
            }
            SynthEvent::Finished { characters, .. } => meta.characters = *characters,
            SynthEvent::Audio { .. } | SynthEvent::Boundary => {}
        }
    }
    meta.sample_rate = spec.sample_rate;
    meta.channels = spec.channels;
    meta.frames = frames;
    meta.created_unix_ms = now_unix_ms();
    store
        .put(key, &Entry { meta, pcm })
        .map_err(|e| NotStored::Store(Arc::new(e)))
}
