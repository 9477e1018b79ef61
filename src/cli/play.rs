//! `herald say --play`: the announcement is played on the daemon's output device (Speak), and
//! its events are printed as they come.
//!
//! It must not play audio itself: the daemon owns the devices and their queues.

use herald::pb;

use super::{PriorityArg, SayArgs, connect, flags, say::status_failure};
use crate::{Failure, fail};

/// `herald say --play`: Speak `request`'s text with its voice settings, printing events to
/// stderr; exit 0 once FINISHED, 1 otherwise.
pub(super) async fn run(args: SayArgs, request: pb::SynthesizeRequest) -> Result<(), Failure> {
    let mut client = connect(args.target.clone()).await?;
    let priority = priority(&args);
    let stream = client
        .speak(speak_request(&args, request, priority, true))
        .await
        .map_err(status_failure)?
        .into_inner();
    follow(stream, args.quiet).await
}

/// The priority class `--priority` names.
fn priority(args: &SayArgs) -> pb::Priority {
    match args.priority {
        None => pb::Priority::Unspecified,
        Some(PriorityArg::Important) => pb::Priority::Important,
        Some(PriorityArg::Message) => pb::Priority::Message,
        Some(PriorityArg::Text) => pb::Priority::Text,
        Some(PriorityArg::Notification) => pb::Priority::Notification,
        Some(PriorityArg::Progress) => pb::Priority::Progress,
    }
}

/// The Speak request for `request`'s text; only the `first` of a streamed text's sentences
/// gets the chime and the leading silence.
fn speak_request(
    args: &SayArgs,
    request: pb::SynthesizeRequest,
    priority: pb::Priority,
    first: bool,
) -> pb::SpeakRequest {
    pb::SpeakRequest {
        text: request.text,
        voice: request.voice,
        model: request.model,
        language: request.language,
        instructions: request.instructions,
        speed: request.speed,
        pitch: request.pitch,
        volume: request.volume,
        priority: priority as i32,
        device: args.device.clone().unwrap_or_default(),
        chime: if args.chime && first {
            pb::Chime::Play
        } else {
            pb::Chime::Default
        } as i32,
        leading_silence_ms: if first {
            args.leading_silence.unwrap_or(0)
        } else {
            0
        },
        expires_after_ms: args.expires_after.unwrap_or(0),
        // The CLI waits for the announcement: Ctrl-C stops it.
        cancel_on_disconnect: true,
        id: String::new(),
    }
}

/// `herald say --stream --play`: stdin is read as it arrives and cut into sentences (the
/// daemon's own segmenter); each sentence is queued on the device as soon as it is complete,
/// in order, as its own announcement (so it plays while the rest is still being written).
/// Only `message` (the default here: FIFO, so the sentences play in order) and `important`
/// keep a text whole: under `text`, `notification` or `progress` a sentence would interrupt,
/// or be dropped for, the one before it, so they are refused.
pub(super) async fn run_stream(
    args: SayArgs,
    config: pb::SynthesizeRequest,
) -> Result<(), Failure> {
    let priority = match priority(&args) {
        pb::Priority::Unspecified => pb::Priority::Message,
        p @ (pb::Priority::Message | pb::Priority::Important) => p,
        other => {
            return Err(fail(
                crate::EX_USAGE,
                anyhow::anyhow!(
                    "--stream --play queues each sentence as it completes: --priority {} would \
                     let a sentence interrupt or drop the one before it; use message or important",
                    other.as_str_name().to_ascii_lowercase()
                ),
            ));
        }
    };
    let mut client = connect(args.target.clone()).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    super::say::read_stdin(tx);
    let mut segmenter = herald::synthesis::segment::Segmenter::new();
    let mut playing = Vec::new();
    let mut ended = false;
    while !ended {
        let sentences = match rx.recv().await {
            Some(pb::SynthesizeStreamRequest {
                payload: Some(pb::synthesize_stream_request::Payload::Text(text)),
            }) => segmenter.push(&text),
            Some(_) => continue,
            None => {
                ended = true;
                std::mem::take(&mut segmenter).finish()
            }
        };
        for sentence in sentences {
            let request = pb::SynthesizeRequest {
                text: sentence,
                ..config.clone()
            };
            let first = playing.is_empty();
            let mut stream = client
                .speak(speak_request(&args, request, priority, first))
                .await
                .map_err(status_failure)?
                .into_inner();
            // Queued before the next sentence is sent: the queue keeps them in order.
            let queued = stream.message().await.map_err(status_failure)?;
            let quiet = args.quiet;
            playing.push(tokio::spawn(async move {
                if let Some(event) = queued
                    && !quiet
                {
                    print_event(&event);
                }
                follow(stream, quiet).await
            }));
        }
    }
    if playing.is_empty() {
        return Err(fail(
            crate::EX_USAGE,
            anyhow::anyhow!("nothing to say: stdin carried no text"),
        ));
    }
    for task in playing {
        task.await
            .map_err(|e| fail(1, anyhow::anyhow!("an announcement task failed: {e}")))??;
    }
    Ok(())
}

/// Print one event (a QUEUED one, read before [`follow`] takes over the stream).
fn print_event(event: &pb::SpeakEvent) {
    if let Some(pb::speak_event::Event::Queued(q)) = &event.event {
        eprintln!(
            "herald: {}: queued on {} at position {}",
            event.id, q.device, q.position
        );
    }
}

/// Print an announcement's events as they come; `Ok` once it FINISHED.
async fn follow(mut stream: tonic::Streaming<pb::SpeakEvent>, quiet: bool) -> Result<(), Failure> {
    use pb::speak_event::Event as E;
    while let Some(event) = stream.message().await.map_err(status_failure)? {
        let (text, done, ok) = match event.event {
            Some(E::Queued(q)) => (
                format!("queued on {} at position {}", q.device, q.position),
                false,
                true,
            ),
            Some(E::Started(_)) => ("started".to_owned(), false, true),
            Some(E::Finished(f)) => (format!("finished after {} ms", f.played_ms), true, true),
            Some(E::Interrupted(i)) => (
                format!(
                    "interrupted after {} ms{}",
                    i.played_ms,
                    if i.by_id.is_empty() {
                        String::new()
                    } else {
                        format!(" by {}", i.by_id)
                    }
                ),
                true,
                false,
            ),
            Some(E::Dropped(_)) => (
                "dropped by the queue's priority rules".to_owned(),
                true,
                false,
            ),
            Some(E::Expired(_)) => ("expired before it could start".to_owned(), true, false),
            Some(E::Failed(f)) => (
                format!("failed: {}", flags::name_flags(&f.message)),
                true,
                false,
            ),
            None => continue,
        };
        if !quiet || !ok {
            eprintln!("herald: {}: {text}", event.id);
        }
        if done {
            return if ok {
                Ok(())
            } else {
                Err(fail(
                    1,
                    anyhow::anyhow!("the announcement did not play to the end"),
                ))
            };
        }
    }
    Err(fail(
        1,
        anyhow::anyhow!("the daemon ended the stream early"),
    ))
}
