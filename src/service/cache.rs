//! The herald.v1.Cache handlers: warm, stats, clear, pin. Phrases are validated exactly like
//! `Synthesize` requests (same defaults, same messages), so a phrase warmed here is the entry a
//! later `Synthesize` with the same fields hits. A phrase that fails gets its own status in its
//! result; the others go on. No cache policy lives here: warming goes through the core.

use std::sync::Arc;

use futures::StreamExt;
use tonic::{Code, Request, Response, Status};

use super::{SpeechService, status};
use crate::{
    cache::{Cache, key},
    pb,
    provider::WarmError,
};

/// Most phrases in one `WarmCache` or `PinCache` call.
pub const MAX_PHRASES: usize = 1000;
/// Phrases synthesized at once while warming (gentle on upstream quotas).
const WARM_CONCURRENCY: usize = 4;

/// The herald.v1.Cache service.
#[derive(Clone)]
pub struct CacheService {
    speech: SpeechService,
}

impl CacheService {
    /// A service over the same provider and validation as `speech`.
    pub fn new(speech: SpeechService) -> Self {
        Self { speech }
    }

    fn cache(&self) -> Result<&Arc<Cache>, Status> {
        self.speech.provider().cache().ok_or_else(|| {
            Status::failed_precondition("cache.enabled is false in the daemon's configuration")
        })
    }
}

fn check_count(phrases: &[pb::SynthesizeRequest]) -> Result<(), Status> {
    if phrases.len() > MAX_PHRASES {
        return Err(Status::invalid_argument(format!(
            "phrases: {} exceeds the limit of {MAX_PHRASES} per call",
            phrases.len()
        )));
    }
    Ok(())
}

fn failed(code: Code, message: impl Into<String>) -> pb::CacheEntryResult {
    pb::CacheEntryResult {
        code: code as i32,
        message: message.into(),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl pb::cache_server::Cache for CacheService {
    async fn warm_cache(
        &self,
        request: Request<pb::WarmCacheRequest>,
    ) -> Result<Response<pb::WarmCacheResponse>, Status> {
        let peer = super::deadline::peer_of(&request);
        let req = request.into_inner();
        let cache = Arc::clone(self.cache()?);
        check_count(&req.phrases)?;
        let core = Arc::clone(self.speech.core());
        let (pin, refresh) = (req.pin, req.refresh);
        let results = futures::stream::iter(req.phrases.into_iter().enumerate())
            .map(|(i, phrase)| {
                let prepared = self.speech.prepare(phrase);
                let core = Arc::clone(&core);
                let cache = Arc::clone(&cache);
                let peer = peer.clone();
                async move {
                    let job = match prepared {
                        Ok(job) => job,
                        Err(s) => {
                            return failed(s.code(), format!("phrases[{i}].{}", s.message()));
                        }
                    };
                    let warmed = match core.warm(job, refresh, peer).await {
                        Ok(w) => w,
                        Err(WarmError::Refused(e)) => {
                            let s = status::status(&e);
                            return failed(s.code(), s.message());
                        }
                        Err(WarmError::Engine(e)) => {
                            let s = status::engine_status(&e);
                            return failed(s.code(), s.message());
                        }
                        Err(e @ WarmError::TooLong(_)) => {
                            return failed(Code::InvalidArgument, format!("phrases[{i}].{e}"));
                        }
                        Err(e) => return failed(Code::Unavailable, crate::error::chain(&e)),
                    };
                    let mut pinned = warmed.status.pinned;
                    if pin {
                        match cache.set_pinned(&warmed.key, true).await {
                            Ok(Some(s)) => pinned = s.pinned,
                            Ok(None) => {}
                            Err(e) => {
                                tracing::warn!(error = %crate::error::chain(&e), "cannot pin a warmed entry");
                            }
                        }
                    }
                    pb::CacheEntryResult {
                        key: warmed.key,
                        cached: true,
                        was_cached: warmed.was_cached,
                        pinned,
                        bytes: warmed.status.bytes,
                        duration_ms: warmed.duration_ms,
                        code: Code::Ok as i32,
                        message: String::new(),
                    }
                }
            })
            .buffered(WARM_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        Ok(Response::new(pb::WarmCacheResponse { results }))
    }

    async fn get_cache_stats(
        &self,
        _request: Request<pb::GetCacheStatsRequest>,
    ) -> Result<Response<pb::CacheStats>, Status> {
        let s = self.cache()?.stats();
        Ok(Response::new(pb::CacheStats {
            directory: s.location,
            entries: s.store.entries,
            bytes: s.store.bytes,
            pinned_entries: s.store.pinned_entries,
            pinned_bytes: s.store.pinned_bytes,
            max_bytes: s.max_bytes,
            max_age_s: s.max_age_s,
            hits: s.hits,
            misses: s.misses,
            shared_calls: s.shared_calls,
            stored: s.store.stored,
            evicted: s.store.evicted,
            expired: s.store.expired,
            corrupt: s.store.corrupt,
        }))
    }

    async fn clear_cache(
        &self,
        request: Request<pb::ClearCacheRequest>,
    ) -> Result<Response<pb::ClearCacheResponse>, Status> {
        let include_pinned = request.into_inner().include_pinned;
        let (removed_entries, removed_bytes, kept_pinned) = self
            .cache()?
            .clear(include_pinned)
            .await
            .map_err(|e| Status::internal(format!("cache: {}", crate::error::chain(&e))))?;
        tracing::info!(removed_entries, removed_bytes, kept_pinned, "cache cleared");
        Ok(Response::new(pb::ClearCacheResponse {
            removed_entries,
            removed_bytes,
            kept_pinned,
        }))
    }

    async fn pin_cache(
        &self,
        request: Request<pb::PinCacheRequest>,
    ) -> Result<Response<pb::PinCacheResponse>, Status> {
        let req = request.into_inner();
        let cache = self.cache()?;
        check_count(&req.phrases)?;
        let mut results = Vec::with_capacity(req.phrases.len());
        for (i, phrase) in req.phrases.into_iter().enumerate() {
            let job = match self.speech.prepare(phrase) {
                Ok(job) => job,
                Err(s) => {
                    results.push(failed(s.code(), format!("phrases[{i}].{}", s.message())));
                    continue;
                }
            };
            let key = key::key(job.engine.name(), &job.request);
            let result = match cache.set_pinned(&key, req.pinned).await {
                Ok(Some(s)) => pb::CacheEntryResult {
                    key,
                    cached: true,
                    pinned: s.pinned,
                    bytes: s.bytes,
                    was_cached: true,
                    ..Default::default()
                },
                Ok(None) => pb::CacheEntryResult {
                    key,
                    ..failed(
                        Code::NotFound,
                        format!("phrases[{i}]: not in the cache; warm it first (WarmCache)"),
                    )
                },
                Err(e) => failed(
                    Code::Internal,
                    format!("cache: {}", crate::error::chain(&e)),
                ),
            };
            results.push(result);
        }
        Ok(Response::new(pb::PinCacheResponse { results }))
    }
}
