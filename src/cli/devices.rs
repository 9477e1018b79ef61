//! `herald devices` and `herald stop`: the daemon's output devices, and stopping what plays on
//! them.
//!
//! It must not open devices itself: everything goes through the daemon.

use std::io::Write;

use herald::pb;

use super::{StopArgs, TargetOnly, connect, response};
use crate::Failure;

/// `herald devices`: one line per output device, the default marked `*`.
pub(crate) async fn list(args: TargetOnly) -> Result<(), Failure> {
    let mut client = connect(args.target).await?;
    let response = response(client.list_output_devices(pb::ListOutputDevicesRequest {})).await?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "  {:<36} {:<24} {:<10} DESCRIPTION",
        "DEVICE", "RATES", "CHANNELS"
    )?;
    for d in response.devices {
        let list = |v: &[u32]| {
            if v.is_empty() {
                "-".to_owned()
            } else {
                v.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
            }
        };
        writeln!(
            out,
            "{} {:<36} {:<24} {:<10} {}",
            if d.is_default { "*" } else { " " },
            d.name,
            list(&d.sample_rates_hz),
            list(&d.channels),
            d.description
        )?;
    }
    Ok(())
}

/// `herald stop`: stop the current announcement, one by id, or all; prints the ids stopped.
pub(crate) async fn stop(args: StopArgs) -> Result<(), Failure> {
    use pb::stop_speaking_request::Scope;
    let mut client = connect(args.target).await?;
    let scope = match (&args.id, args.all) {
        (Some(_), _) => Scope::Id,
        (None, true) => Scope::All,
        (None, false) => Scope::Current,
    };
    let response = response(client.stop_speaking(pb::StopSpeakingRequest {
        scope: scope as i32,
        id: args.id.unwrap_or_default(),
        device: args.device.unwrap_or_default(),
    }))
    .await?;
    let mut out = std::io::stdout().lock();
    for id in response.stopped_ids {
        writeln!(out, "{id}")?;
    }
    Ok(())
}
