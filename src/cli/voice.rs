//! `herald voice ...`: custom voices (clone, design, list, status, delete) through the daemon's
//! CreateVoice / GetVoice / DeleteVoice / ListVoices.
//!
//! It must not talk to DashScope or read herald's voice registry itself: the daemon does both.

use std::{io::Write as _, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Subcommand;
use herald::pb::{self, create_voice_request::Source};

use super::{
    TargetArgs, connect, response,
    table::{self, Table},
    voices::{status_name, voice_json, warn_missing},
};
use crate::{EX_USAGE, Failure, fail};

/// Preview text of `herald voice design` without --preview-text.
const DEFAULT_PREVIEW_TEXT: &str = "Hello! This is how my new voice sounds.";

#[derive(Subcommand, Debug)]
pub(crate) enum VoiceCommand {
    /// Clone a voice from SAMPLE (a WAV/MP3/M4A file, or an http(s) URL upstream fetches).
    Clone(CloneArgs),
    /// Design a voice from a DESCRIPTION ("warm, calm, middle-aged female, slightly slow").
    Design(DesignArgs),
    /// List the custom voices (herald's registry merged with upstream's listings).
    List(ListArgs),
    /// Show one custom voice (its status refreshed from upstream while DEPLOYING).
    Status(NameArgs),
    /// Delete a custom voice upstream and forget it.
    Delete(NameArgs),
}

#[derive(clap::Args, Debug)]
pub(crate) struct Common {
    /// The model the voice is for (it works with this model only).
    #[arg(long)]
    model: String,
    /// Name/prefix that becomes part of the voice id.
    #[arg(long)]
    name: String,
    /// Language of the sample or of the preview text ("zh", "en", ...).
    #[arg(long)]
    language: Option<String>,
    /// Give up after this many seconds (with --wait: polling included).
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    timeout: u64,
}

#[derive(clap::Args, Debug)]
pub(crate) struct CloneArgs {
    /// The sample: a file path, or an http(s) URL.
    #[arg(value_name = "SAMPLE")]
    sample: String,
    #[command(flatten)]
    common: Common,
    /// What the sample says (Qwen3-TTS-VC only).
    #[arg(long)]
    transcript: Option<String>,
    /// Wait until the voice is READY (or FAILED).
    #[arg(long)]
    wait: bool,
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(clap::Args, Debug)]
pub(crate) struct DesignArgs {
    /// What the voice should sound like.
    #[arg(value_name = "DESCRIPTION")]
    description: String,
    #[command(flatten)]
    common: Common,
    /// The text of the preview (default: an English greeting, with --language en).
    #[arg(long)]
    preview_text: Option<String>,
    /// Write the preview (WAV) to this file.
    #[arg(short = 'o', long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Wait until the voice is READY (or FAILED).
    #[arg(long)]
    wait: bool,
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(clap::Args, Debug)]
pub(crate) struct ListArgs {
    /// Only voices of this model.
    #[arg(long)]
    model: Option<String>,
    /// Print one JSON document on stdout instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(clap::Args, Debug)]
pub(crate) struct NameArgs {
    /// The voice id (as `herald voice list` shows it).
    #[arg(value_name = "VOICE")]
    name: String,
    #[command(flatten)]
    target: TargetArgs,
}

fn print_voice(v: &pb::CustomVoice) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "voice    {}", v.name)?;
    writeln!(out, "model    {}", v.target_model)?;
    writeln!(out, "status   {}", status_name(v.status))?;
    writeln!(out, "kind     {} ({})", v.kind, v.surface)?;
    if !v.warning.is_empty() {
        writeln!(out, "warning  {}", v.warning)?;
    }
    Ok(())
}

async fn create(
    target: TargetArgs,
    common: Common,
    source: Source,
    wait: bool,
    language: Option<String>,
) -> Result<pb::CustomVoice, Failure> {
    let mut client = connect(target).await?;
    let mut request = tonic::Request::new(pb::CreateVoiceRequest {
        target_model: common.model,
        name: common.name,
        source: Some(source),
        language: language.unwrap_or_default(),
        wait,
    });
    request.set_timeout(Duration::from_secs(common.timeout.max(1)));
    response(client.create_voice(request)).await
}

pub(crate) async fn run(command: VoiceCommand) -> Result<(), Failure> {
    match command {
        VoiceCommand::Clone(args) => {
            let sample =
                if args.sample.starts_with("http://") || args.sample.starts_with("https://") {
                    pb::clone_source::Sample::Url(args.sample.clone())
                } else {
                    let bytes = std::fs::read(&args.sample)
                        .with_context(|| format!("cannot read {}", args.sample))
                        .map_err(|e| fail(EX_USAGE, e))?;
                    pb::clone_source::Sample::Audio(bytes)
                };
            let source = Source::Clone(pb::CloneSource {
                sample: Some(sample),
                transcript: args.transcript.unwrap_or_default(),
            });
            let language = args.common.language.clone();
            let v = create(args.target, args.common, source, args.wait, language).await?;
            print_voice(&v)
        }
        VoiceCommand::Design(args) => {
            let (preview_text, language) = match args.preview_text {
                Some(t) => (t, args.common.language.clone()),
                None => (
                    DEFAULT_PREVIEW_TEXT.to_owned(),
                    args.common.language.clone().or(Some("en".to_owned())),
                ),
            };
            let source = Source::Design(pb::DesignSource {
                description: args.description,
                preview_text,
            });
            let v = create(args.target, args.common, source, args.wait, language).await?;
            if let Some(path) = &args.output {
                std::fs::write(path, &v.preview_audio)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            print_voice(&v)
        }
        VoiceCommand::List(args) => list(args).await,
        VoiceCommand::Status(args) => {
            let mut client = connect(args.target).await?;
            let v = response(client.get_voice(pb::GetVoiceRequest { name: args.name })).await?;
            print_voice(&v)
        }
        VoiceCommand::Delete(args) => {
            let mut client = connect(args.target).await?;
            let gone =
                response(client.delete_voice(pb::DeleteVoiceRequest { name: args.name })).await?;
            let note = if gone.already_gone_upstream {
                " (it was already gone upstream)"
            } else {
                ""
            };
            writeln!(std::io::stdout().lock(), "deleted  {}{note}", gone.name)?;
            Ok(())
        }
    }
}

/// `herald voice list`: the custom voices; exit 1 (after printing those it has) when the daemon
/// could not list them all (DashScope's listings missing).
async fn list(args: ListArgs) -> Result<(), Failure> {
    let mut client = connect(args.target).await?;
    let listed = response(client.list_voices(pb::ListVoicesRequest {
        model: args.model.unwrap_or_default(),
        language: String::new(),
    }))
    .await?;
    let custom = listed.voices.iter().filter(|v| v.custom);
    let mut out = std::io::stdout().lock();
    if args.json {
        let list = custom.map(voice_json).collect();
        table::write_json(&mut out, &serde_json::Value::Array(list))?;
    } else {
        let mut t = Table::new(&["VOICE", "MODEL", "STATUS", "NAME"]);
        for v in custom {
            t.row(vec![
                v.name.clone(),
                v.model.clone(),
                status_name(v.custom_status).to_owned(),
                table::or_dash(&v.display_name),
            ]);
        }
        t.write(&mut out)?;
    }
    out.flush()?;
    if listed.missing.is_empty() {
        return Ok(());
    }
    warn_missing(&listed.missing);
    Err(fail(
        1,
        anyhow::anyhow!(
            "the list is incomplete: upstream's custom voices could not be listed (see above)"
        ),
    ))
}
