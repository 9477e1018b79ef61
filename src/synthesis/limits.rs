//! herald's own admission limits: streams at once (`synthesis.max_concurrent`) and per caller
//! (`synthesis.max_concurrent_per_peer`). A door names the caller (an IP address, a unix
//! user); the core decides. Refusals are RESOURCE_EXHAUSTED naming the setting.
//!
//! Lock policy: the per-peer map is a `std::sync::Mutex` held for a few integer operations,
//! never across an `.await`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, lock};

/// The running streams, in all and per peer.
#[derive(Debug)]
pub(super) struct Limits {
    running: Arc<Semaphore>,
    max_concurrent: usize,
    max_per_peer: usize,
    peers: Arc<Mutex<HashMap<String, usize>>>,
}

/// One admitted stream; dropping it frees its slots.
#[derive(Debug)]
pub struct Slots {
    _permit: OwnedSemaphorePermit,
    peer: PeerSlot,
}

impl Slots {
    /// The caller the slots were taken for.
    pub fn peer(&self) -> &str {
        &self.peer.peer
    }
}

#[derive(Debug)]
struct PeerSlot {
    peers: Arc<Mutex<HashMap<String, usize>>>,
    peer: String,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = lock(&self.peers);
        if let Some(n) = map.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

impl Limits {
    pub(super) fn new(max_concurrent: usize, max_per_peer: usize) -> Self {
        Self {
            running: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
            max_per_peer,
            peers: Arc::default(),
        }
    }

    /// Slots for one more stream of `peer`, or RESOURCE_EXHAUSTED naming the limit.
    pub(super) fn admit(&self, peer: String) -> Result<Slots, Error> {
        let limit = self.max_per_peer;
        let peer = {
            let mut map = lock(&self.peers);
            let n = map.entry(peer.clone()).or_insert(0);
            if *n >= limit {
                return Err(Error::resource_exhausted(format!(
                    "synthesis.max_concurrent_per_peer: this client already runs {limit} \
                     syntheses; retry later"
                )));
            }
            *n += 1;
            PeerSlot {
                peers: Arc::clone(&self.peers),
                peer,
            }
        };
        let permit = Arc::clone(&self.running).try_acquire_owned().map_err(|_| {
            Error::resource_exhausted(format!(
                "synthesis.max_concurrent: {} syntheses are already running; retry later",
                self.max_concurrent
            ))
        })?;
        Ok(Slots {
            _permit: permit,
            peer,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn per_peer_then_global_limits_free_on_drop() {
        let limits = Limits::new(3, 2);
        let a1 = limits.admit("a".into()).unwrap();
        let _a2 = limits.admit("a".into()).unwrap();
        let e = limits.admit("a".into()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ResourceExhausted);
        assert!(e.message().starts_with("synthesis.max_concurrent_per_peer"));
        let _b1 = limits.admit("b".into()).unwrap();
        let e = limits.admit("c".into()).unwrap_err();
        assert!(
            e.message().starts_with("synthesis.max_concurrent:"),
            "{}",
            e.message()
        );
        // A refused global admission gave its peer slot back.
        assert!(!lock(&limits.peers).contains_key("c"));
        drop(a1);
        assert_eq!(limits.admit("a".into()).unwrap().peer(), "a");
    }
}
