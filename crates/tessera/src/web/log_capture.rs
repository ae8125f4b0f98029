//! Test support: what a piece of code logs, read back as text, and the correlation id a fault's
//! answer carries, so tests can show the two agree.

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use tracing_subscriber::fmt::MakeWriter;

/// Runs `f` with a subscriber of this thread that writes to a buffer; returns what `f` returned
/// and the log lines, without colours.
pub(crate) fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
    let buffer = Buffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(buffer.clone())
        .with_ansi(false)
        .finish();
    let value = tracing::subscriber::with_default(subscriber, f);
    let bytes = buffer.0.lock().unwrap_or_else(PoisonError::into_inner);
    (value, String::from_utf8_lossy(&bytes).into_owned())
}

/// The correlation id at the end of a fault's `error_description`, if there is one.
pub(crate) fn correlation_id(description: &str) -> Option<&str> {
    let id = description
        .strip_suffix(')')?
        .rsplit_once("(correlation id ")?
        .1;
    (id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// A log destination shared by the subscriber's writers.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        kept.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl MakeWriter<'_> for Buffer {
    type Writer = Buffer;

    fn make_writer(&self) -> Buffer {
        self.clone()
    }
}
