//! One log capture for the whole test process: from the first [`capture`] on, every event of
//! every crate, at TRACE, of every daemon running in this process is formatted as herald would
//! print it and checked for secrets ([`API_KEY`] and a part of it) as it is written. Only the
//! amount written and the lines that leaked are kept, so the capture can stay on for the whole
//! run.

use std::{
    io::Write,
    sync::{
        Mutex, Once,
        atomic::{AtomicUsize, Ordering},
    },
};

use super::daemon::API_KEY;

/// What the capture has seen so far.
pub struct Captured {
    bytes: AtomicUsize,
    leaks: Mutex<Vec<String>>,
}

impl Captured {
    /// Bytes of log written so far.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The log lines that held [`API_KEY`] or a part of it.
    pub fn leaks(&self) -> Vec<String> {
        self.leaks.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The writer the subscriber formats each event into (one `write` per event).
struct Watch(&'static Captured);

impl Write for Watch {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.bytes.fetch_add(buf.len(), Ordering::Relaxed);
        let text = String::from_utf8_lossy(buf);
        if text.contains(API_KEY) || text.contains(&API_KEY[3..20]) {
            self.0
                .leaks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(text.into_owned());
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

static CAPTURED: Captured = Captured {
    bytes: AtomicUsize::new(0),
    leaks: Mutex::new(Vec::new()),
};

/// The capture, installed as this process's subscriber on the first call.
pub fn capture() -> &'static Captured {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(|| Watch(&CAPTURED))
            .with_ansi(false)
            .init();
    });
    &CAPTURED
}
