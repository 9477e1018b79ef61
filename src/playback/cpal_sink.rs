//! Placeholder until the cpal sink lands (replaced in the same change).
use super::{
    DeviceInfo,
    sink::{Sink, SinkError},
};

/// cpal devices.
pub fn list() -> Vec<DeviceInfo> {
    Vec::new()
}

/// Open a cpal device.
pub fn open(name: &str) -> Result<CpalSink, SinkError> {
    Err(SinkError::new(name, "not built yet"))
}

/// A cpal device.
pub struct CpalSink;

#[async_trait::async_trait]
impl Sink for CpalSink {
    fn name(&self) -> &str {
        ""
    }
    fn spec(&self) -> crate::audio::AudioSpec {
        unreachable!()
    }
    async fn write(&mut self, _: &[f32]) -> Result<(), SinkError> {
        Ok(())
    }
    async fn drain(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}
