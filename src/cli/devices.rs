//! `herald devices` and `herald stop`: the daemon's output devices, and stopping what plays on
//! them.
//!
//! It must not open devices itself: everything goes through the daemon.

use std::io::Write;

use herald::pb;

use super::{
    ListingArgs, StopArgs, connect, response,
    table::{self, Table},
};
use crate::{Failure, fail};

/// `herald devices`: one line (or JSON object) per output device, the default marked `*`.
pub(crate) async fn list(args: ListingArgs) -> Result<(), Failure> {
    let mut client = connect(args.target).await?;
    let response = response(client.list_output_devices(pb::ListOutputDevicesRequest {})).await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let list = response
            .devices
            .iter()
            .map(|d| {
                serde_json::json!({
                    "name": d.name,
                    "description": d.description,
                    "default": d.is_default,
                    "sample_rates_hz": d.sample_rates_hz,
                    "channels": d.channels,
                })
            })
            .collect();
        table::write_json(&mut out, &serde_json::Value::Array(list))?;
        return Ok(());
    }
    let mut t = Table::new(&["  DEVICE", "RATES", "CHANNELS", "DESCRIPTION"]);
    for d in &response.devices {
        t.row(vec![
            format!("{} {}", if d.is_default { "*" } else { " " }, d.name),
            table::list(&d.sample_rates_hz),
            table::runs(&d.channels),
            d.description.clone(),
        ]);
    }
    t.write(&mut out)?;
    Ok(())
}

/// `herald stop`: stop the current announcement, one by id, or all; prints the ids stopped.
/// `--id` that stops nothing is an error (exit 1); stopping nothing otherwise is said on stderr.
pub(crate) async fn stop(args: StopArgs) -> Result<(), Failure> {
    use pb::stop_speaking_request::Scope;
    let mut client = connect(args.target).await?;
    let scope = match (&args.id, args.all) {
        (Some(_), _) => Scope::Id,
        (None, true) => Scope::All,
        (None, false) => Scope::Current,
    };
    let stopped = response(client.stop_speaking(pb::StopSpeakingRequest {
        scope: scope as i32,
        id: args.id.clone().unwrap_or_default(),
        device: args.device.clone().unwrap_or_default(),
    }))
    .await?
    .stopped_ids;
    let mut out = std::io::stdout().lock();
    for id in &stopped {
        writeln!(out, "{id}")?;
    }
    if !stopped.is_empty() {
        return Ok(());
    }
    let device = match args.device {
        Some(d) => d,
        // The request named none: say which one the daemon used.
        None => response(client.list_output_devices(pb::ListOutputDevicesRequest {}))
            .await
            .ok()
            .and_then(|r| r.devices.into_iter().find(|d| d.is_default))
            .map_or_else(|| "the default device".to_owned(), |d| d.name),
    };
    match args.id {
        Some(id) => Err(fail(
            1,
            anyhow::anyhow!("no announcement {id} on {device}: nothing stopped"),
        )),
        None => {
            eprintln!("herald: nothing was playing or queued on {device}");
            Ok(())
        }
    }
}
