//! `herald cache …`: warm, pin and unpin phrases, print the statistics, clear the cache.
//!
//! This module owns the phrase files (plain text, one phrase a line, or TOML `[[phrase]]`
//! tables) and sends their phrases in batches the daemon accepts. It must not touch the cache
//! directory itself: everything goes through the daemon's Cache service.

use std::io::Write;

use anyhow::Context as _;
use herald::{pb, service};

use super::{
    CacheCommand, PhraseArgs, PhraseSource, TargetArgs, channel, response, rpc_error, table,
};
use crate::{EX_USAGE, Failure, fail};

/// One `[[phrase]]` of a TOML phrase file.
#[derive(serde::Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct PhraseEntry {
    text: String,
    #[serde(default)]
    voice: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    language: String,
    #[serde(default)]
    instructions: String,
    #[serde(default)]
    speed: f32,
    #[serde(default)]
    pitch: f32,
    #[serde(default)]
    emotion: String,
    #[serde(default)]
    seed: u32,
}

#[derive(serde::Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct PhraseFile {
    #[serde(default)]
    phrase: Vec<PhraseEntry>,
}

fn read_phrases(src: &PhraseSource) -> Result<Vec<pb::SynthesizeRequest>, Failure> {
    let plain = |text: String| pb::SynthesizeRequest {
        text,
        voice: src.voice.clone().unwrap_or_default(),
        model: src.model.clone().unwrap_or_default(),
        ..Default::default()
    };
    let Some(path) = &src.file else {
        return Ok(src.text.iter().cloned().map(plain).collect());
    };
    let content = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {}", path.display()))
        .map_err(|e| fail(EX_USAGE, e))?;
    if path.extension().is_some_and(|e| e == "toml") {
        let file: PhraseFile = toml::from_str(&content)
            .with_context(|| format!("{} is not a phrase file", path.display()))
            .map_err(|e| fail(EX_USAGE, e))?;
        return Ok(file
            .phrase
            .into_iter()
            .map(|p| pb::SynthesizeRequest {
                text: p.text,
                voice: if p.voice.is_empty() {
                    src.voice.clone().unwrap_or_default()
                } else {
                    p.voice
                },
                model: if p.model.is_empty() {
                    src.model.clone().unwrap_or_default()
                } else {
                    p.model
                },
                language: p.language,
                instructions: p.instructions,
                speed: p.speed,
                pitch: p.pitch,
                emotion: p.emotion,
                seed: p.seed,
                ..Default::default()
            })
            .collect());
    }
    Ok(content
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| plain(l.to_owned()))
        .collect())
}

async fn connect_cache(
    target: TargetArgs,
) -> Result<pb::cache_client::CacheClient<herald::client::Channel>, Failure> {
    Ok(pb::cache_client::CacheClient::new(channel(target).await?))
}

/// Print one line per phrase; an error when any phrase failed.
fn print_results(
    results: &[pb::CacheEntryResult],
    texts: &[String],
    verb: &str,
) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    let mut failures = 0;
    for (r, text) in results.iter().zip(texts) {
        if r.code == 0 {
            let state = if r.was_cached && verb == "warmed" {
                "cached"
            } else {
                verb
            };
            writeln!(
                out,
                "{state:<8} {:>7} ms {:>9} B{} {}",
                r.duration_ms,
                r.bytes,
                if r.pinned { " pinned" } else { "       " },
                text
            )?;
        } else {
            failures += 1;
            writeln!(
                out,
                "failed   {:?}: {}  {}",
                tonic::Code::from(r.code),
                r.message,
                text
            )?;
        }
    }
    if failures > 0 {
        return Err(fail(
            1,
            anyhow::anyhow!("{failures} of {} phrases failed", results.len()),
        ));
    }
    Ok(())
}

/// `herald cache …`.
pub(crate) async fn run(command: CacheCommand) -> Result<(), Failure> {
    match command {
        CacheCommand::Warm(args) => {
            let (pin, refresh) = (args.pin, args.refresh);
            per_phrase(
                &args.phrases,
                args.target,
                "warmed",
                |mut client, phrases| async move {
                    client
                        .warm_cache(pb::WarmCacheRequest {
                            phrases,
                            pin,
                            refresh,
                        })
                        .await
                        .map(|r| r.into_inner().results)
                },
            )
            .await
        }
        CacheCommand::Pin(args) => pin(args, true).await,
        CacheCommand::Unpin(args) => pin(args, false).await,
        CacheCommand::Stats(args) => {
            let mut client = connect_cache(args.target).await?;
            let s = response(client.get_cache_stats(pb::GetCacheStatsRequest {})).await?;
            let mut out = std::io::stdout().lock();
            if args.json {
                table::write_json(&mut out, &stats_json(&s))?;
                return Ok(());
            }
            writeln!(out, "directory       {}", s.directory)?;
            writeln!(out, "entries         {}", s.entries)?;
            writeln!(out, "bytes           {} of {}", s.bytes, s.max_bytes)?;
            writeln!(
                out,
                "pinned          {} entries, {} bytes",
                s.pinned_entries, s.pinned_bytes
            )?;
            writeln!(
                out,
                "max age         {}",
                if s.max_age_s == 0 {
                    "none".to_owned()
                } else {
                    format!("{} s", s.max_age_s)
                }
            )?;
            writeln!(out, "hits            {}", s.hits)?;
            writeln!(out, "misses          {}", s.misses)?;
            writeln!(out, "shared calls    {}", s.shared_calls)?;
            writeln!(out, "stored          {}", s.stored)?;
            writeln!(out, "evicted         {}", s.evicted)?;
            writeln!(out, "expired         {}", s.expired)?;
            writeln!(out, "corrupt         {}", s.corrupt)?;
            Ok(())
        }
        CacheCommand::Clear(args) => {
            let mut client = connect_cache(args.target).await?;
            let r = response(client.clear_cache(pb::ClearCacheRequest {
                include_pinned: args.include_pinned,
            }))
            .await?;
            writeln!(
                std::io::stdout().lock(),
                "removed {} entries ({} bytes); kept {} pinned",
                r.removed_entries,
                r.removed_bytes,
                r.kept_pinned
            )?;
            Ok(())
        }
    }
}

/// The cache's statistics as one JSON object: the CacheStats fields, by their proto names.
fn stats_json(s: &pb::CacheStats) -> serde_json::Value {
    serde_json::json!({
        "directory": s.directory,
        "entries": s.entries,
        "bytes": s.bytes,
        "max_bytes": s.max_bytes,
        "pinned_entries": s.pinned_entries,
        "pinned_bytes": s.pinned_bytes,
        "max_age_s": s.max_age_s,
        "hits": s.hits,
        "misses": s.misses,
        "shared_calls": s.shared_calls,
        "stored": s.stored,
        "evicted": s.evicted,
        "expired": s.expired,
        "corrupt": s.corrupt,
    })
}

async fn pin(args: PhraseArgs, pinned: bool) -> Result<(), Failure> {
    let verb = if pinned { "pinned" } else { "unpinned" };
    per_phrase(
        &args.phrases,
        args.target,
        verb,
        |mut client, phrases| async move {
            client
                .pin_cache(pb::PinCacheRequest { phrases, pinned })
                .await
                .map(|r| r.into_inner().results)
        },
    )
    .await
}

/// Read the phrases, send them in batches the daemon takes (`call` per batch), print one line
/// per phrase.
async fn per_phrase<F, Fut>(
    source: &PhraseSource,
    target: TargetArgs,
    verb: &str,
    mut call: F,
) -> Result<(), Failure>
where
    F: FnMut(
        pb::cache_client::CacheClient<herald::client::Channel>,
        Vec<pb::SynthesizeRequest>,
    ) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<pb::CacheEntryResult>, tonic::Status>>,
{
    let phrases = read_phrases(source)?;
    let texts: Vec<String> = phrases.iter().map(|p| p.text.clone()).collect();
    let client = connect_cache(target).await?;
    let mut results = Vec::with_capacity(phrases.len());
    for batch in phrases.chunks(service::cache::MAX_PHRASES) {
        results.extend(
            call(client.clone(), batch.to_vec())
                .await
                .map_err(rpc_error)?,
        );
    }
    print_results(&results, &texts, verb)
}
