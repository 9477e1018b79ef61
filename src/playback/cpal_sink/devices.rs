//! Output devices: listing them, finding the one a name means, and choosing the stream
//! config a [`super::CpalSink`] opens with.
//!
//! Device names are cpal device ids, `"<host>:<pcm>"` (`alsa:default`, `alsa:hw:CARD=0,DEV=0`,
//! `alsa:null`), plus `default` for the default host's default device; a name that is not an id
//! is matched against the devices' descriptions. It must not open streams (the sink does).

use std::{collections::HashMap, sync::Mutex};

use cpal::{
    ErrorKind, SampleFormat,
    traits::{DeviceTrait, HostTrait},
};

use crate::playback::{DeviceInfo, sink::SinkError};

/// The rates [`list`] reports when a device's ranges contain them.
pub const COMMON_RATES: [u32; 10] = [
    8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000,
];

/// The sample formats a [`super::CpalSink`] can feed, in order of preference.
const FORMATS: [SampleFormat; 3] = [SampleFormat::F32, SampleFormat::I16, SampleFormat::I32];

/// Every cpal output device of every available host, in enumeration order.
///
/// A device that cannot be queried is skipped, except one that is busy (a hardware device
/// herald itself is playing on), which is listed as it was last seen. Never panics; prints
/// nothing (alsa-lib may print to stderr).
pub fn list() -> Vec<DeviceInfo> {
    /// Devices as last seen, for devices that are busy now.
    static KNOWN: Mutex<Option<HashMap<String, DeviceInfo>>> = Mutex::new(None);

    let mut out = Vec::new();
    for device in output_devices() {
        let Ok(id) = device.id() else { continue };
        let name = id.to_string();
        let described = describe(&device, &name);
        let mut known = crate::error::lock(&KNOWN);
        let known = known.get_or_insert_with(HashMap::new);
        match described {
            Ok(info) => {
                known.insert(name, info.clone());
                out.push(info);
            }
            Err(e) if e.kind() == ErrorKind::DeviceBusy && known.contains_key(&name) => {
                out.extend(known.get(&name).cloned());
            }
            Err(e) => {
                tracing::debug!(device = %name, error = %e, "skipping an output device");
            }
        }
    }
    out
}

/// Every output device of every available host, in enumeration order. A host, or a host's
/// device list, that cannot be opened is skipped.
fn output_devices() -> impl Iterator<Item = cpal::Device> {
    cpal::available_hosts()
        .into_iter()
        .filter_map(|host_id| cpal::host_from_id(host_id).ok())
        .filter_map(|host| host.output_devices().ok())
        .flatten()
}

/// A device's name, description, rates and channel counts.
fn describe(device: &cpal::Device, name: &str) -> Result<DeviceInfo, cpal::Error> {
    let description = device
        .description()
        .map_or_else(|_| name.to_owned(), |d| d.name().to_owned());
    let ranges: Vec<_> = device.supported_output_configs()?.collect();
    let sample_rates = COMMON_RATES
        .into_iter()
        .filter(|&r| ranges.iter().any(|c| c.contains_rate(r)))
        .collect();
    let mut channels: Vec<u32> = ranges.iter().map(|c| u32::from(c.channels())).collect();
    channels.sort_unstable();
    channels.dedup();
    Ok(DeviceInfo {
        name: name.to_owned(),
        description,
        sample_rates,
        channels,
    })
}

/// The device `name` means.
pub(super) fn find_device(name: &str) -> Result<cpal::Device, SinkError> {
    if name == "default" {
        return cpal::default_host()
            .default_output_device()
            .ok_or_else(|| SinkError::new(name, "there is no default output device"));
    }
    if let Ok(id) = name.parse::<cpal::DeviceId>()
        && let Ok(host) = cpal::host_from_id(id.host())
    {
        if let Some(device) = host.device_by_id(&id) {
            return Ok(device);
        }
        // ALSA's `default` PCM exists even when no hint lists it.
        if id.id() == "default"
            && let Some(device) = host.default_output_device()
        {
            return Ok(device);
        }
    }
    let mut known = Vec::new();
    for device in output_devices() {
        if device.description().is_ok_and(|d| d.name() == name) {
            return Ok(device);
        }
        if let Ok(id) = device.id() {
            known.push(id.to_string());
        }
    }
    Err(SinkError::new(
        name,
        format!(
            "no such output device (output devices: default{}{})",
            if known.is_empty() { "" } else { ", " },
            known.join(", ")
        ),
    ))
}

/// The stream config and sample format for a device offering `ranges`: the first of
/// [`FORMATS`] it offers, at 48 kHz, else 44.1 kHz, else `default_rate`, else the highest rate
/// of its first range in that format; stereo, else mono, else the fewest channels it offers.
pub(super) fn choose_config(
    ranges: &[cpal::SupportedStreamConfigRange],
    default_rate: Option<u32>,
) -> Option<(cpal::StreamConfig, SampleFormat)> {
    FORMATS.into_iter().find_map(|format| {
        let of_format: Vec<_> = ranges
            .iter()
            .filter(|c| c.sample_format() == format && c.channels() > 0)
            .collect();
        let first = of_format.first()?;
        let rate = [Some(48000), Some(44100), default_rate]
            .into_iter()
            .flatten()
            .find(|&r| of_format.iter().any(|c| c.contains_rate(r)))
            .unwrap_or_else(|| first.max_sample_rate());
        let at_rate = || of_format.iter().filter(|c| c.contains_rate(rate));
        let channels = if at_rate().any(|c| c.channels() == 2) {
            2
        } else if at_rate().any(|c| c.channels() == 1) {
            1
        } else {
            at_rate().map(|c| c.channels()).min()?
        };
        Some((
            cpal::StreamConfig {
                channels,
                sample_rate: rate,
                buffer_size: cpal::BufferSize::Default,
            },
            format,
        ))
    })
}

#[cfg(test)]
mod tests {
    use cpal::{SupportedBufferSize, SupportedStreamConfigRange};

    use super::*;

    fn range(
        format: SampleFormat,
        channels: u16,
        min: u32,
        max: u32,
    ) -> SupportedStreamConfigRange {
        SupportedStreamConfigRange::new(channels, min, max, SupportedBufferSize::Unknown, format)
    }

    #[test]
    fn the_config_prefers_f32_48k_stereo() {
        use SampleFormat::*;
        let pick = |ranges: &[SupportedStreamConfigRange], default: Option<u32>| {
            let (c, f) = choose_config(ranges, default).unwrap();
            (f, c.sample_rate, c.channels)
        };
        let all = [
            range(I16, 1, 8000, 96000),
            range(I16, 2, 8000, 96000),
            range(F32, 1, 8000, 96000),
            range(F32, 2, 8000, 96000),
        ];
        assert_eq!(pick(&all, None), (F32, 48000, 2));
        // i16 when there is no f32; 44.1 kHz when there is no 48 kHz; mono when no stereo.
        assert_eq!(pick(&[range(I16, 1, 44100, 44100)], None), (I16, 44100, 1));
        // Else the device's default rate, else its first range's highest.
        let odd = [range(I32, 6, 8000, 32000), range(I32, 4, 8000, 32000)];
        assert_eq!(pick(&odd, Some(16000)), (I32, 16000, 4));
        assert_eq!(pick(&odd, None), (I32, 32000, 4));
        assert!(choose_config(&[range(U8, 2, 8000, 48000)], None).is_none());
    }
}
