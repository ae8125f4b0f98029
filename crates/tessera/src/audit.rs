//! The audit log writer: events are rendered on the caller's thread and written by one
//! dedicated thread, so requests never wait on the file. The file is flushed whenever the
//! queue runs empty, so a reader (a SIEM shipper, a test) sees each event within moments.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::mpsc;

use tessera_core::audit::{Event, Subjects, render};
use tessera_core::clock::UnixMillis;

/// A handle to the audit log; cheap to clone.
#[derive(Clone)]
pub struct Audit {
    sender: mpsc::Sender<String>,
}

impl Audit {
    /// Starts the writer for `file` (appending), or for standard output when `None`.
    pub fn start(file: Option<&Path>) -> std::io::Result<Audit> {
        let out: Box<dyn Write + Send> = match file {
            Some(path) => Box::new(OpenOptions::new().create(true).append(true).open(path)?),
            None => Box::new(std::io::stdout()),
        };
        let (sender, receiver) = mpsc::channel::<String>();
        std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || write_loop(&receiver, BufWriter::new(out)))?;
        Ok(Audit { sender })
    }

    /// Records one event.
    pub fn record(&self, at: UnixMillis, event: &Event, subjects: &Subjects) {
        let line = render(at, event, subjects);
        if self.sender.send(line).is_err() {
            tracing::error!("the audit writer has stopped; an audit event was lost");
        }
    }
}

fn write_loop(receiver: &mpsc::Receiver<String>, mut out: BufWriter<Box<dyn Write + Send>>) {
    while let Ok(line) = receiver.recv() {
        let mut result = writeln!(out, "{line}");
        while let Ok(more) = receiver.try_recv() {
            result = result.and_then(|()| writeln!(out, "{more}"));
        }
        if let Err(e) = result.and_then(|()| out.flush()) {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    }
}
