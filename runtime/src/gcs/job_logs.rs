//! Job logs: the output of entrypoint drivers (and the job manager's own
//! notes), kept per job in a bounded window in the head's state store
//! ([`super::state`]) and read by the REST API.
//!
//! Each job's log is a window onto an append-only byte stream: offsets count
//! from the job's first byte, and when a log grows past
//! [`MAX_LOG_BYTES_PER_JOB`] the oldest bytes are dropped, so a reader asking
//! for an offset that is gone gets the oldest bytes still held and is told
//! that some were skipped. A version counter on a watch channel wakes
//! followers on every append. A job marked stopped tells its driver so on
//! the driver's next append. The bytes live in the store, not in memory:
//! only the ids of stopped jobs whose drivers may still write are kept here.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::state::{StateError, StateStore};

/// Most bytes kept per job; older bytes are dropped first.
pub const MAX_LOG_BYTES_PER_JOB: usize = 4 << 20;

/// Bytes read from a job's log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LogChunk {
    /// The bytes.
    pub data: Vec<u8>,
    /// Offset to ask for next.
    pub next_offset: u64,
    /// Bytes between the asked offset and the first returned were dropped.
    pub skipped: u64,
}

/// Every job's log.
pub struct JobLogs {
    store: Arc<StateStore>,
    stopped: Mutex<HashSet<u32>>,
    version: watch::Sender<u64>,
}

impl JobLogs {
    /// Logs kept in `store`.
    pub fn new(store: Arc<StateStore>) -> Self {
        JobLogs { store, stopped: Mutex::new(HashSet::new()), version: watch::channel(0).0 }
    }

    fn stopped(&self) -> std::sync::MutexGuard<'_, HashSet<u32>> {
        self.stopped.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends bytes to a job's log; returns whether the job was stopped.
    /// A failed write is logged and the bytes are lost: a driver's output
    /// never fails the driver.
    pub fn append(&self, job_id: u32, data: &[u8]) -> bool {
        if let Err(e) = self.store.append_log(job_id, data) {
            tracing::warn!(job = job_id, error = %e, "a job log append was lost");
        }
        if !data.is_empty() {
            self.version.send_modify(|v| *v += 1);
        }
        self.stopped().contains(&job_id)
    }

    /// Up to `max` bytes of a job's log from `offset`.
    pub fn read(&self, job_id: u32, offset: u64, max: usize) -> Result<LogChunk, StateError> {
        self.store.read_log(job_id, offset, max)
    }

    /// Tells the job's driver to stop on its next append.
    pub fn mark_stopped(&self, job_id: u32) {
        self.stopped().insert(job_id);
        self.version.send_modify(|v| *v += 1);
    }

    /// Forgets what is kept in memory of a job's log (the store's rows go
    /// with the job, see [`StateStore::delete_job`]).
    pub fn remove(&self, job_id: u32) {
        self.stopped().remove(&job_id);
    }

    /// A receiver that changes whenever any log grows or a job is stopped.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Wakes every follower (e.g. when a job reaches a terminal state).
    pub fn wake(&self) {
        self.version.send_modify(|v| *v += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_behind_the_window_skips_to_the_oldest_byte_held() {
        let logs = JobLogs::new(Arc::new(StateStore::in_memory().expect("a store")));
        let big = vec![b'x'; MAX_LOG_BYTES_PER_JOB];
        logs.append(1, b"0123456789");
        logs.append(1, &big);
        let c = logs.read(1, 0, 4).expect("read");
        assert_eq!(c.skipped, 10);
        assert_eq!(c.data, b"xxxx");
        assert_eq!(c.next_offset, 14);
        assert!(!logs.append(1, b""));
        logs.mark_stopped(1);
        assert!(logs.append(1, b""));
        assert_eq!(logs.read(2, 5, 10).expect("read"), LogChunk { data: vec![], next_offset: 5, skipped: 0 });
    }
}
