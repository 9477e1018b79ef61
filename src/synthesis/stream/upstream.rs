//! The streamed-upstream phase of a streamed-text job, for an engine that takes text as it is
//! written ([`Synthesizer::streams_text`]): one upstream task opens at the first text (its
//! start is then done while the client writes the rest of its first sentence; a text with
//! nothing to speak ends it empty, a failure before audio like any other) and is fed each
//! cleaned sentence as it completes (`TextIn::Text`, a run-task
//! `continue-task`), the client's flush as `TextIn::Flush`, and the client's half-close as the
//! end of its text (run-task `finish-task`). Its audio is one segment on the job's audio task;
//! `Info` goes out with its first audio.
//!
//! What it leaves to the per-sentence phase (`State::sentences_loop`), in order, in
//! `Read::waiting`:
//! - the task failed before any audio: every sentence sent to it, as if none had been
//!   streamed (the per-sentence path then tries the engine, the cache and the fallback chain);
//! - the task failed after audio, with fallback allowed and a transient failure: the sentences
//!   it had not *acknowledged* — its sentence ends (run-task `sentence-end`, realtime
//!   `response.done`) counted against herald's sentences in order, which holds because herald
//!   sends whole sentences and the upstream does not join two — fall back at that sentence
//!   boundary (the upstream's audio stops where it stopped; its report says truncated). A
//!   sentence voiced in part is voiced again from its start by the fallback;
//! - the client paused longer than the engine's idle limit (DashScope drops a task left
//!   without text for 23 s): the text is ended upstream in time, and whatever comes later goes
//!   sentence by sentence;
//! - a sentence is in the cache (checked before it goes upstream): the task's text ends there
//!   (or, when nothing was sent to it yet, the task is dropped), and that sentence and the
//!   rest go sentence by sentence, the cached one served from the cache.
//!
//! Not stored in the cache: the task's audio spans several sentences and is not split per
//! sentence. The summary reports the task as one entry whose text is its sentences joined by
//! spaces.

use std::{collections::VecDeque, sync::atomic::Ordering};

use futures::StreamExt as _;
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

use super::{Current, Read, State, Stop, StreamLimits, TextEvent, idle_exceeded, until};
use crate::{
    audio::join::Joins,
    cache,
    engine::{EngineError, SynthEvent, SynthesisRequest, TextIn},
    error::Error,
    pipeline::{JobError, Segment},
    provider::{CachePolicy, Served},
    synthesis::job::failed,
};

/// The open upstream task.
struct Upstream {
    /// Its text; `None` once ended.
    text: Option<mpsc::Sender<TextIn>>,
    acknowledged: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    idle_limit: std::time::Duration,
    /// The sentences sent to it, in order.
    sent: Vec<String>,
    current: Current,
}

async fn next_upstream(up: &mut Option<Upstream>) -> Option<Result<SynthEvent, EngineError>> {
    match up {
        Some(u) => u.current.stream.next().await,
        None => std::future::pending().await,
    }
}

impl State {
    /// Stream the text upstream until the text ends and the task finishes, or the task fails
    /// or is left idle; what remains is in `read.waiting` for the per-sentence phase.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn upstream_loop(
        &mut self,
        text: &mut mpsc::Receiver<TextEvent>,
        read: &mut Read,
        segments: &mpsc::Sender<Segment>,
        limits: StreamLimits,
        cancel: &CancellationToken,
        deadline: Option<Instant>,
        deadline_message: &str,
    ) -> Result<(), Stop> {
        let mut up: Option<Upstream> = None;
        // Sentences go upstream only while this is true (not after an idle end or a failure).
        let mut feeding = true;
        let mut flush = false;
        loop {
            // Open at the first text (not its first complete sentence): the task's start
            // (run-task → task-started, a realtime session.update) is then done while the
            // client writes the rest of its first sentence.
            if feeding && up.is_none() && (read.received_chars > 0 || !read.waiting.is_empty()) {
                up = Some(self.open_upstream().await?);
            }
            if feeding && let Some(u) = up.as_mut() {
                if let Some(tx) = &u.text {
                    while let Some(sentence) = read.waiting.pop_front() {
                        if self.cached(&sentence).await {
                            // A cached sentence is served from the cache: it and the text
                            // after it go sentence by sentence, once the task has voiced what
                            // it has.
                            read.waiting.push_front(sentence);
                            feeding = false;
                            break;
                        }
                        // The engine reads its text at once; a closed channel means the task
                        // ended, which its stream says next.
                        let _ = tx.send(TextIn::Text(joined(&u.sent, &sentence))).await;
                        u.sent.push(sentence);
                    }
                    if feeding && std::mem::take(&mut flush) {
                        let _ = tx.send(TextIn::Flush).await;
                    }
                }
                if read.input_done || !feeding {
                    u.text = None;
                }
                if !feeding && u.sent.is_empty() {
                    // Nothing sent: dropping the task closes its connection, which ends it
                    // upstream at once.
                    tracing::debug!("the first sentence is cached; the streamed task is dropped");
                    up = None;
                }
            }
            if up.is_none() && (read.input_done || !feeding) {
                return Ok(());
            }
            let idle_at = read.last_input + limits.idle_timeout;
            let upstream_idle_at = match &up {
                Some(u) if u.text.is_some() => Some(read.last_input + u.idle_limit),
                _ => None,
            };
            tokio::select! {
                biased;
                () = cancel.cancelled() => {
                    return Err(Stop::Failed(Error::unavailable("herald is shutting down")));
                }
                () = self.tx.closed() => return Err(Stop::Gone),
                () = until(deadline) => {
                    tracing::info!("deadline exceeded; streamed job cancelled");
                    return Err(Stop::Failed(Error::deadline_exceeded(deadline_message)));
                }
                event = text.recv(), if !read.input_done => {
                    let flushed = matches!(event, Some(TextEvent::Flush));
                    read.take(event, limits)?;
                    flush |= flushed;
                }
                () = tokio::time::sleep_until(idle_at), if !read.input_done => {
                    return Err(idle_exceeded(limits));
                }
                () = until(upstream_idle_at) => {
                    // End the task before the upstream drops it; later text goes sentence by
                    // sentence.
                    tracing::debug!("no text for the upstream's idle limit; its text ends here");
                    feeding = false;
                    if let Some(u) = up.as_mut() {
                        u.text = None;
                    }
                }
                event = next_upstream(&mut up) => {
                    let Some(u) = up.as_mut() else { continue };
                    match event {
                        Some(Ok(SynthEvent::Audio { encoding, data })) => {
                            if u.current.bytes.is_none() {
                                let served = u.current.served.clone();
                                self.info(&served).await?;
                            }
                            self.audio(&mut u.current, segments, encoding, data, cancel, deadline, deadline_message).await?;
                        }
                        Some(Ok(SynthEvent::Words(w))) => crate::error::lock(&u.current.words).extend(w),
                        Some(Ok(SynthEvent::Boundary)) => {}
                        Some(Ok(SynthEvent::Finished { characters, upstream_request_ids })) => {
                            let Some(mut u) = up.take() else { continue };
                            let chars: usize = u.sent.iter().map(|s| s.chars().count()).sum();
                            let chars = u32::try_from(chars).unwrap_or(u32::MAX);
                            self.characters = self.characters.saturating_add(characters.unwrap_or(chars));
                            self.upstream_request_ids.extend(upstream_request_ids);
                            u.current.text = u.sent.join(" ");
                            self.end_sentence(Some(u.current), false);
                            // The upstream ended the task before its text ended: the rest goes
                            // sentence by sentence.
                            feeding = false;
                        }
                        Some(Err(error)) => {
                            if let Some(u) = up.take() {
                                self.upstream_failed(u, error, read)?;
                            }
                            feeding = false;
                        }
                        None => {
                            if let Some(u) = up.take() {
                                self.upstream_failed(u, EngineError::Truncated, read)?;
                            }
                            feeding = false;
                        }
                    }
                }
            }
        }
    }

    /// Whether the per-sentence phase would serve `sentence` from the cache (a peek: the hit
    /// is counted when it is served).
    async fn cached(&self, sentence: &str) -> bool {
        let Some(cache) = self.provider.cache() else {
            return false;
        };
        if self.job.options.cache != CachePolicy::Use || !cache.accepts_text(sentence) {
            return false;
        }
        let request = SynthesisRequest {
            text: sentence.to_owned(),
            ..self.job.request.clone()
        };
        let key = cache::key::key(self.job.engine.name(), &request);
        cache
            .peek(&key)
            .await
            .is_some_and(|(entry, _)| !request.word_timestamps || entry.meta.words.is_some())
    }

    /// Open the upstream task (nothing goes to the client before its first audio).
    async fn open_upstream(&mut self) -> Result<Upstream, Stop> {
        let request = SynthesisRequest {
            text: String::new(),
            ..self.job.request.clone()
        };
        let engine = &self.job.engine;
        let served = Served {
            engine: engine.name().to_owned(),
            model: request.model.clone(),
            voice: request.voice.clone(),
            native_sample_rate: engine.native_sample_rate(&request.model, &request.voice),
            cache_hit: false,
            fallback_reason: None,
        };
        let (tx, rx) = mpsc::channel(4);
        let streamed = engine
            .synthesize_streamed(request, rx)
            .await
            .map_err(|e| Stop::Failed(failed(&JobError::Engine(e))))?;
        Ok(Upstream {
            text: Some(tx),
            acknowledged: streamed.acknowledged,
            idle_limit: streamed.idle_limit,
            sent: Vec::new(),
            current: Current {
                text: String::new(),
                served,
                stream: streamed.stream,
                bytes: None,
                words: std::sync::Arc::default(),
                joins: Joins::default(),
                bytes_in: 0,
            },
        })
    }

    /// The task failed: before audio, all its sentences go back; after audio, those it had
    /// not acknowledged fall back (when allowed; otherwise the error ends the stream).
    fn upstream_failed(
        &mut self,
        mut u: Upstream,
        error: EngineError,
        read: &mut Read,
    ) -> Result<(), Stop> {
        if u.current.bytes.is_none() {
            tracing::info!(error = %crate::error::chain(&error), "the streamed upstream failed before audio; going sentence by sentence");
            requeue(&mut read.waiting, u.sent);
            return Ok(());
        }
        let acknowledged = u.acknowledged.load(Ordering::SeqCst).min(u.sent.len());
        let rest = u.sent.split_off(acknowledged);
        u.current.text = u.sent.join(" ");
        let mut current = Some(u.current);
        self.failed_mid_sentence(&mut current, error)?;
        tracing::info!(
            acknowledged,
            falling_back = rest.len(),
            "the streamed upstream failed after audio"
        );
        requeue(&mut read.waiting, rest);
        Ok(())
    }
}

/// `sentence` as sent after `sent`: with a space between two sentences of spaced scripts
/// (the segmenter drops the space; CJK sentences meet without one).
fn joined(sent: &[String], sentence: &str) -> String {
    let spaced = |c: char| c.is_ascii() || c.is_alphabetic() && !is_cjk(c);
    let after_spaced = sent
        .last()
        .and_then(|p| p.chars().last())
        .is_some_and(spaced);
    if after_spaced && sentence.chars().next().is_some_and(spaced) {
        format!(" {sentence}")
    } else {
        sentence.to_owned()
    }
}

fn is_cjk(c: char) -> bool {
    matches!(c, '\u{3000}'..='\u{9fff}' | '\u{ac00}'..='\u{d7af}' | '\u{f900}'..='\u{faff}' | '\u{ff00}'..='\u{ffef}')
}

fn requeue(waiting: &mut VecDeque<String>, sentences: Vec<String>) {
    for s in sentences.into_iter().rev() {
        waiting.push_front(s);
    }
}
