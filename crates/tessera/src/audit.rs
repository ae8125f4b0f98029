//! The audit log writer: events are rendered on the caller's thread and written by one
//! dedicated thread, so requests never wait on the file. The file is flushed whenever the
//! queue runs empty, so a reader (a SIEM shipper, a test) sees each event within moments.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::mpsc;

use tessera_core::audit::{Event, Subjects, render};
use tessera_core::clock::UnixMillis;

/// A handle to the audit log; cheap to clone.
#[derive(Clone)]
pub struct Audit {
    sender: mpsc::Sender<Message>,
}

enum Message {
    Line(String),
    /// Answered once every line queued before it is written and flushed.
    Flushed(mpsc::Sender<()>),
}

impl Audit {
    /// Starts the writer for `file` (appending; created readable by its owner only: it names
    /// users, addresses and sessions), or for standard output when `None`.
    pub fn start(file: Option<&Path>) -> std::io::Result<Audit> {
        let out: Box<dyn Write + Send> = match file {
            Some(path) => Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(path)?,
            ),
            None => Box::new(std::io::stdout()),
        };
        Audit::start_writing(out)
    }

    /// Starts the writer for standard error: where a command's audit lines go when the
    /// configured destination is the server's standard output, which a command cannot reach
    /// (and whose own standard output is its answer).
    pub fn start_on_stderr() -> std::io::Result<Audit> {
        Audit::start_writing(Box::new(std::io::stderr()))
    }

    fn start_writing(out: Box<dyn Write + Send>) -> std::io::Result<Audit> {
        let (sender, receiver) = mpsc::channel::<Message>();
        std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || {
                // Lowest priority, so that a line to write never preempts a request's thread
                // (bench/refresh: 5% more refreshes a second at 64 chains); it still runs
                // whenever a core is free, which under that load is within milliseconds.
                // Niceness is per thread on Linux; a refusal leaves it at the default.
                let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19);
                write_loop(&receiver, BufWriter::new(out));
            })?;
        Ok(Audit { sender })
    }

    /// Records one event.
    pub fn record(&self, at: UnixMillis, event: &Event, subjects: &Subjects) {
        let line = render(at, event, subjects);
        if self.sender.send(Message::Line(line)).is_err() {
            tracing::error!("the audit writer has stopped; an audit event was lost");
        }
    }

    /// Blocks until every event recorded so far is on disk: for short-lived commands, before
    /// the process exits.
    pub fn flush(&self) {
        let (ack, acked) = mpsc::channel();
        if self.sender.send(Message::Flushed(ack)).is_ok() {
            // An error means the writer has stopped, and it has already logged why.
            let _ = acked.recv();
        }
    }
}

fn write_loop(receiver: &mpsc::Receiver<Message>, mut out: BufWriter<Box<dyn Write + Send>>) {
    while let Ok(first) = receiver.recv() {
        let mut waiting = Vec::new();
        let mut result = Ok(());
        for message in std::iter::once(first).chain(receiver.try_iter()) {
            match message {
                // One write per line, newline included: the buffer then only ever flushes
                // whole lines, so replicas appending to one file never split each other's.
                Message::Line(mut line) => {
                    line.push('\n');
                    result = result.and_then(|()| out.write_all(line.as_bytes()));
                }
                Message::Flushed(ack) => waiting.push(ack),
            }
        }
        if let Err(e) = result.and_then(|()| out.flush()) {
            tracing::error!(error = %e, "cannot write the audit log");
        }
        for ack in waiting {
            let _ = ack.send(());
        }
    }
}
