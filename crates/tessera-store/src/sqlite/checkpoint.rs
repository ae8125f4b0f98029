//! Checkpoints beside the writer, not in its way.
//!
//! A checkpoint copies the pages the WAL holds back into the database file. Under
//! `synchronous=NORMAL` it syncs the WAL before and the database file after (two fsyncs, 3–4 ms
//! each on the benchmark's machine); SQLite's auto-checkpoint runs it on the connection that
//! committed, so every write queued behind the writer waited for both fsyncs, several times a
//! second under load. Here the writer connection's auto-checkpoint is replaced: each time the
//! WAL has grown by [`BACKGROUND_PAGES`] the writer nudges a thread with a connection of its
//! own, which runs a PASSIVE checkpoint (it takes no lock a writer needs) while the writer goes
//! on.
//!
//! SQLite starts the WAL over only when a write begins with every frame already copied, which
//! a checkpoint racing a busy writer rarely leaves; so at [`FOREGROUND_PAGES`] the writer
//! checkpoints once itself, as the auto-checkpoint would, with little left to copy, and the
//! WAL starts over with its next commit. The writer waits on fsync that often instead of four
//! times as often. Two checkpoints cannot run at once (the second is refused as busy), so the
//! two take turns on a mutex: the writer's waits for the one running beside it, if any, and
//! the WAL never outgrows `FOREGROUND_PAGES` by more than one commit.

use std::cell::Cell;
use std::os::raw::c_int;
use std::path::Path;
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use rusqlite::Connection;
use rusqlite::hooks::Wal;

use super::Synchronous;
use super::connection::connect;

/// Frames of new WAL that make the writer nudge the checkpointer: SQLite's own auto-checkpoint
/// threshold.
const BACKGROUND_PAGES: c_int = 1000;
/// Frames in the WAL at which the writer checkpoints itself, so that the WAL starts over.
const FOREGROUND_PAGES: c_int = 4 * BACKGROUND_PAGES;

thread_local! {
    /// Frames in the WAL after the last commit of this thread's connection; only the writer
    /// thread's connection has the hook that sets it.
    static WAL_PAGES: Cell<c_int> = const { Cell::new(0) };
}

/// The writer connection's commit hook, in place of the auto-checkpoint's.
fn after_commit(_: &Wal, pages: c_int) -> rusqlite::Result<()> {
    WAL_PAGES.set(pages);
    Ok(())
}

/// The checkpointer thread, and what the writer thread knows of the WAL. Lives on the writer
/// thread; dropping it ends the checkpointer and waits for it.
pub(super) struct Checkpoints {
    nudge: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
    /// Held by whichever checkpoint runs.
    turn: Arc<Mutex<()>>,
    /// The WAL's frames at the last commit, and at which count the next nudge is due.
    pages: c_int,
    next_nudge: c_int,
}

impl Checkpoints {
    /// Hooks `writer` (whose commits must all run on one thread, the one that calls
    /// [`Checkpoints::after_write`]) and starts the checkpointer with a connection of its own
    /// to `path`.
    pub(super) fn start(
        writer: &Connection,
        path: &Path,
        synchronous: Synchronous,
    ) -> std::io::Result<Checkpoints> {
        let own = connect(path, synchronous).map_err(std::io::Error::other)?;
        let turn = Arc::new(Mutex::new(()));
        let (nudge, nudged) = mpsc::sync_channel::<()>(1);
        let checkpointer_turn = Arc::clone(&turn);
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                for () in nudged {
                    let _turn = checkpointer_turn
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    // A failed checkpoint leaves its frames to the next one.
                    let _ = checkpoint(&own);
                }
            })?;
        writer.wal_hook(Some(after_commit));
        Ok(Checkpoints {
            nudge: Some(nudge),
            thread: Some(thread),
            turn,
            pages: 0,
            next_nudge: BACKGROUND_PAGES,
        })
    }

    /// After each write job on the writer thread: checkpoints `writer` itself at
    /// `FOREGROUND_PAGES`, else nudges the checkpointer when the WAL has grown by
    /// `BACKGROUND_PAGES` since the last nudge.
    pub(super) fn after_write(&mut self, writer: &Connection) {
        let pages = WAL_PAGES.get();
        if pages < self.pages {
            // The WAL started over.
            self.next_nudge = BACKGROUND_PAGES;
        }
        self.pages = pages;
        if pages >= FOREGROUND_PAGES {
            let _turn = self.turn.lock().unwrap_or_else(PoisonError::into_inner);
            // Refused only while a reader still needs old frames: tried again after the next
            // write.
            let _ = checkpoint(writer);
        } else if pages >= self.next_nudge {
            self.next_nudge = pages + BACKGROUND_PAGES;
            if let Some(nudge) = &self.nudge {
                // Full: a nudge is already waiting, and that checkpoint will copy these too.
                let _ = nudge.try_send(());
            }
        }
    }
}

/// A PASSIVE checkpoint: copies what no reader still needs, waiting for no lock.
fn checkpoint(c: &Connection) -> rusqlite::Result<()> {
    c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
}

impl Drop for Checkpoints {
    fn drop(&mut self) {
        drop(self.nudge.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
