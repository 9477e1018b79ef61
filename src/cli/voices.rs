//! `herald voices`: the daemon's voices as a table, or as JSON with `--json`.
//!
//! It must not filter or sort on its own: the daemon applies `--model` and `--language`. Listings
//! the daemon could not get (DashScope's custom voices, with upstream down) are named on stderr;
//! the voices it has are still printed and the exit code is 0.

use std::io::Write;

use herald::pb;

use super::{
    VoicesArgs, connect, response,
    table::{self, Table},
};
use crate::Failure;

/// READY / DEPLOYING / FAILED, or "-".
pub(super) fn status_name(s: i32) -> &'static str {
    match pb::custom_voice::Status::try_from(s) {
        Ok(pb::custom_voice::Status::Ready) => "READY",
        Ok(pb::custom_voice::Status::Deploying) => "DEPLOYING",
        Ok(pb::custom_voice::Status::Failed) => "FAILED",
        _ => "-",
    }
}

/// A voice as a JSON object (the keys of `herald voices --json` and `herald voice list
/// --json`; always all of them).
pub(super) fn voice_json(v: &pb::Voice) -> serde_json::Value {
    serde_json::json!({
        "name": v.name,
        "display_name": v.display_name,
        "model": v.model,
        "engine": v.engine,
        "languages": v.languages,
        "gender": v.gender,
        "native_sample_rate_hz": v.native_sample_rate_hz,
        "custom": v.custom,
        "custom_status": if v.custom { Some(status_name(v.custom_status)) } else { None },
    })
}

/// Print `missing` (ListVoicesResponse.missing) to stderr, one line each.
pub(super) fn warn_missing(missing: &[String]) {
    for m in missing {
        eprintln!("herald: missing from this list: {m}");
    }
}

/// `herald voices`: one line (or JSON object) per voice.
pub(crate) async fn run(args: VoicesArgs) -> Result<(), Failure> {
    let mut client = connect(args.target).await?;
    let response = response(client.list_voices(pb::ListVoicesRequest {
        model: args.model.unwrap_or_default(),
        language: args.language.unwrap_or_default(),
    }))
    .await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let list: Vec<_> = response.voices.iter().map(voice_json).collect();
        table::write_json(&mut out, &serde_json::Value::Array(list))?;
    } else {
        let mut t = Table::new(&[
            "VOICE",
            "MODEL",
            "ENGINE",
            "GENDER",
            ">RATE",
            "NAME",
            "LANGUAGES",
        ]);
        for v in &response.voices {
            t.row(vec![
                v.name.clone(),
                v.model.clone(),
                v.engine.clone(),
                table::or_dash(&v.gender),
                v.native_sample_rate_hz.to_string(),
                table::or_dash(&v.display_name),
                table::list(&v.languages),
            ]);
        }
        t.write(&mut out)?;
    }
    out.flush()?;
    warn_missing(&response.missing);
    Ok(())
}
