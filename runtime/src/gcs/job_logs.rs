//! Job logs: the output of entrypoint drivers (and the job manager's own
//! notes), kept per job in a bounded buffer and read by the REST API.
//!
//! Each job's log is a window onto an append-only byte stream: offsets count
//! from the job's first byte, and when a log grows past
//! [`MAX_LOG_BYTES_PER_JOB`] the oldest bytes are dropped, so a reader asking
//! for an offset that is gone gets the oldest bytes still held and is told
//! that some were skipped. A version counter on a watch channel wakes
//! followers on every append. A job marked stopped tells its driver so on
//! the driver's next append.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tokio::sync::watch;

/// Most bytes kept per job; older bytes are dropped first.
pub const MAX_LOG_BYTES_PER_JOB: usize = 4 << 20;

#[derive(Default)]
struct JobLog {
    data: VecDeque<u8>,
    /// Stream offset of `data[0]`.
    start: u64,
    stopped: bool,
}

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
    logs: Mutex<HashMap<u32, JobLog>>,
    version: watch::Sender<u64>,
}

impl Default for JobLogs {
    fn default() -> Self {
        JobLogs { logs: Mutex::new(HashMap::new()), version: watch::channel(0).0 }
    }
}

impl JobLogs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, JobLog>> {
        self.logs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends bytes to a job's log; returns whether the job was stopped.
    pub fn append(&self, job_id: u32, data: &[u8]) -> bool {
        let stopped = {
            let mut logs = self.lock();
            let log = logs.entry(job_id).or_default();
            log.data.extend(data);
            let excess = log.data.len().saturating_sub(MAX_LOG_BYTES_PER_JOB);
            if excess > 0 {
                log.data.drain(..excess);
                log.start += excess as u64;
            }
            log.stopped
        };
        if !data.is_empty() {
            self.version.send_modify(|v| *v += 1);
        }
        stopped
    }

    /// Up to `max` bytes of a job's log from `offset`.
    pub fn read(&self, job_id: u32, offset: u64, max: usize) -> LogChunk {
        let logs = self.lock();
        let Some(log) = logs.get(&job_id) else { return LogChunk { next_offset: offset, ..Default::default() } };
        let end = log.start + log.data.len() as u64;
        let from = offset.clamp(log.start, end);
        let skipped = from - offset.min(from);
        let skip = (from - log.start) as usize;
        let data: Vec<u8> = log.data.iter().skip(skip).take(max).copied().collect();
        LogChunk { next_offset: from + data.len() as u64, data, skipped }
    }

    /// Tells the job's driver to stop on its next append.
    pub fn mark_stopped(&self, job_id: u32) {
        self.lock().entry(job_id).or_default().stopped = true;
        self.version.send_modify(|v| *v += 1);
    }

    /// Forgets a job's log.
    pub fn remove(&self, job_id: u32) {
        self.lock().remove(&job_id);
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
        let logs = JobLogs::default();
        let big = vec![b'x'; MAX_LOG_BYTES_PER_JOB];
        logs.append(1, b"0123456789");
        logs.append(1, &big);
        let c = logs.read(1, 0, 4);
        assert_eq!(c.skipped, 10);
        assert_eq!(c.data, b"xxxx");
        assert_eq!(c.next_offset, 14);
        assert!(!logs.append(1, b""));
        logs.mark_stopped(1);
        assert!(logs.append(1, b""));
        assert_eq!(logs.read(2, 5, 10), LogChunk { data: vec![], next_offset: 5, skipped: 0 });
    }
}
