//! `herald say --play`: the announcement is played on the daemon's output device (Speak), and
//! its events are printed as they come.
//!
//! It must not play audio itself: the daemon owns the devices and their queues.

use std::io::Write;

use herald::pb;

use super::{PriorityArg, SayArgs, connect, flags, say::status_failure};
use crate::{Failure, fail};

/// `herald say --play`: Speak `request`'s text with its voice settings, printing events to
/// stderr; exit 0 once FINISHED, 1 otherwise.
pub(super) async fn run(args: SayArgs, request: pb::SynthesizeRequest) -> Result<(), Failure> {
    use pb::speak_event::Event as E;
    let mut client = connect(args.target.clone()).await?;
    let priority = match args.priority {
        None => pb::Priority::Unspecified,
        Some(PriorityArg::Important) => pb::Priority::Important,
        Some(PriorityArg::Message) => pb::Priority::Message,
        Some(PriorityArg::Text) => pb::Priority::Text,
        Some(PriorityArg::Notification) => pb::Priority::Notification,
        Some(PriorityArg::Progress) => pb::Priority::Progress,
    };
    let mut stream = client
        .speak(pb::SpeakRequest {
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
            chime: if args.chime {
                pb::Chime::Play
            } else {
                pb::Chime::Default
            } as i32,
            leading_silence_ms: args.leading_silence.unwrap_or(0),
            expires_after_ms: args.expires_after.unwrap_or(0),
            // The CLI waits for the announcement: Ctrl-C stops it.
            cancel_on_disconnect: true,
            id: String::new(),
        })
        .await
        .map_err(status_failure)?
        .into_inner();
    let mut err = std::io::stderr().lock();
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
        if !args.quiet || !ok {
            writeln!(err, "herald: {}: {text}", event.id)?;
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
