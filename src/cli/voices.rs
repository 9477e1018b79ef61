//! `herald voices`: the daemon's voices as a table.
//!
//! It must not filter or sort on its own: the daemon applies `--model` and `--language`.

use std::io::Write;

use herald::pb;

use super::{VoicesArgs, connect, response};
use crate::Failure;

/// `herald voices`: one line per voice.
pub(crate) async fn run(args: VoicesArgs) -> Result<(), Failure> {
    let mut client = connect(args.target).await?;
    let response = response(client.list_voices(pb::ListVoicesRequest {
        model: args.model.unwrap_or_default(),
        language: args.language.unwrap_or_default(),
    }))
    .await?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<24} {:<12} {:<8} {:>6}  {:<28} LANGUAGES",
        "VOICE", "MODEL", "GENDER", "RATE", "NAME"
    )?;
    for v in response.voices {
        writeln!(
            out,
            "{:<24} {:<12} {:<8} {:>6}  {:<28} {}",
            v.name,
            v.model,
            if v.gender.is_empty() { "-" } else { &v.gender },
            v.native_sample_rate_hz,
            v.display_name,
            v.languages.join(",")
        )?;
    }
    Ok(())
}
