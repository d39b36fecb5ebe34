//! The head's durable state: one redb file (`<state dir>/head.redb`) holding
//! what a restarted head must still know, so that it keeps its promises and
//! its memory stays bounded however many jobs have run.
//!
//! What is stored: the REST job table (each job's record as bytes the job
//! manager encodes, its state in a small index, the submission-id index and
//! the result objects of each job), the end of the block of job ids the GCS
//! has reserved (ids are never reused after a restart), job logs (a window of at most
//! [`MAX_LOG_BYTES_PER_JOB`] per job, as chunks keyed by their stream offset)
//! and the GCS key-value store. What is not: node membership (rebuilt from
//! raylets registering again) and the task history (in memory, bounded).
//!
//! Durability: a job write, a block of job ids and a key-value write are committed
//! durably ([`Durability::Immediate`]: on disk when the call returns) before
//! the API answers. Log appends are frequent and small; each is committed
//! without a flush ([`Durability::None`]), and they reach the disk together
//! with the next durable commit or the next [`StateStore::flush`] (the GCS
//! flushes every [`LOG_FLUSH_INTERVAL`]), so a crash loses at most that
//! interval of log output and never corrupts the file.
//!
//! Without a state directory the same code runs over redb's in-memory
//! backend: one code path, nothing survives the process.
//!
//! The file carries a schema version ([`SCHEMA_VERSION`]); a file that does
//! not open, is not a redb file, or has another version is an error naming
//! the file, and is never rewritten.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::job_logs::{LogChunk, MAX_LOG_BYTES_PER_JOB};

/// Version of the layout below; a file of another version is refused.
pub const SCHEMA_VERSION: u32 = 1;
/// Name of the state file inside the state directory.
pub const STATE_FILE: &str = "head.redb";
/// How often log appends are flushed to disk when nothing else flushed them.
pub const LOG_FLUSH_INTERVAL: Duration = Duration::from_millis(500);
/// redb's page cache. The file, not the cache, holds finished jobs: a small
/// cache keeps the head's memory bounded (redb's default is 1 GiB).
const CACHE_BYTES: usize = 16 << 20;

const META: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("meta");
const JOBS: TableDefinition<'static, u32, &[u8]> = TableDefinition::new("jobs");
const JOB_STATES: TableDefinition<'static, u32, u8> = TableDefinition::new("job_states");
const SUBMISSIONS: TableDefinition<'static, &str, u32> = TableDefinition::new("submissions");
const OBJECTS: TableDefinition<'static, &str, u32> = TableDefinition::new("objects");
/// `(job, stream offset of the chunk's first byte) → bytes`.
const LOGS: TableDefinition<'static, (u32, u64), &[u8]> = TableDefinition::new("job_logs");
const KV: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("kv");

const KEY_VERSION: &str = "schema_version";
const KEY_NEXT_JOB: &str = "next_job_id";
const KEY_FLUSHED: &str = "flushed_at_ms";

/// What can go wrong with the state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The state directory cannot be made or the file cannot be read.
    #[error("cannot use the state directory {}: {source}", path.display())]
    Unreadable {
        /// The directory or file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a shoal state file, or is damaged.
    #[error("the state file {} is corrupt or not a shoal state file ({detail}); it was left untouched", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What redb or the decoder said.
        detail: String,
    },
    /// The file was written by another (newer) version of the layout.
    #[error(
        "the state file {} has schema version {found}, and this build reads version {SCHEMA_VERSION}; \
         use the shoal release that wrote it, or another state directory",
        path.display()
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: u32,
    },
    /// Another process (another head) has the file open.
    #[error("the state file {} is in use by another process (is another head running on it?)", path.display())]
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// A read or write failed while serving.
    #[error("state store {where_}: {what} failed: {detail}")]
    Storage {
        /// The file, or `memory`.
        where_: String,
        /// What was being done.
        what: String,
        /// What redb said.
        detail: String,
    },
}

/// One job as written by [`StateStore::put_job`].
#[derive(Clone, Debug, Default)]
pub struct JobRow<'a> {
    /// The GCS job id.
    pub id: u32,
    /// The job's state, as the job manager codes it.
    pub state: u8,
    /// The job manager's record.
    pub record: &'a [u8],
    /// The client's submission id.
    pub submission_id: Option<&'a str>,
    /// Result objects of the job (ids as text).
    pub objects: &'a [String],
}

/// The head's store. Cheap to share behind an `Arc`; every call is a short
/// transaction.
pub struct StateStore {
    db: Database,
    /// The file, or `None` in memory.
    path: Option<PathBuf>,
    /// A log append was committed without a flush since the last flush.
    unflushed: AtomicBool,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore").field("path", &self.path).finish()
    }
}

fn log_range(job: u32) -> RangeInclusive<(u32, u64)> {
    (job, 0)..=(job, u64::MAX)
}

impl StateStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<StateStore, StateError> {
        std::fs::create_dir_all(dir).map_err(|source| StateError::Unreadable { path: dir.to_path_buf(), source })?;
        let path = dir.join(STATE_FILE);
        // redb reports a file it may not read as an I/O error like any
        // other; check first so the message says what is wrong.
        if path.exists() {
            std::fs::File::options()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|source| StateError::Unreadable { path: path.clone(), source })?;
        }
        let db = Database::builder().set_cache_size(CACHE_BYTES).create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StateError::Locked { path: path.clone() },
            redb::DatabaseError::Storage(redb::StorageError::Io(source))
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                StateError::Unreadable { path: path.clone(), source }
            }
            other => StateError::Corrupt { path: path.clone(), detail: other.to_string() },
        })?;
        Self::init(db, Some(path))
    }

    /// A store in memory: the same code, nothing survives the process.
    pub fn in_memory() -> Result<StateStore, StateError> {
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| StateError::Storage {
                where_: "memory".into(),
                what: "create".into(),
                detail: e.to_string(),
            })?;
        Self::init(db, None)
    }

    fn init(db: Database, path: Option<PathBuf>) -> Result<StateStore, StateError> {
        let store = StateStore { db, path, unflushed: AtomicBool::new(false) };
        let corrupt = |detail: String| match &store.path {
            Some(p) => StateError::Corrupt { path: p.clone(), detail },
            None => StateError::Storage { where_: "memory".into(), what: "init".into(), detail },
        };
        let found = store.read_version().map_err(|e| corrupt(e.to_string()))?;
        match found {
            Some(Ok(v)) if v == SCHEMA_VERSION => {}
            Some(Ok(v)) => {
                let path = store.path.clone().unwrap_or_default();
                return Err(StateError::Version { path, found: v });
            }
            Some(Err(bytes)) => return Err(corrupt(format!("its schema version is {bytes} bytes, not 4"))),
            None => {
                if store.has_data().map_err(|e| corrupt(e.to_string()))? {
                    return Err(corrupt("it holds tables but no schema version".into()));
                }
            }
        }
        // Creates every table (a no-op when they exist) and the version.
        let created: Result<(), redb::Error> = (|| {
            let tx = store.db.begin_write()?;
            {
                tx.open_table(JOBS)?;
                tx.open_table(JOB_STATES)?;
                tx.open_table(SUBMISSIONS)?;
                tx.open_table(OBJECTS)?;
                tx.open_table(LOGS)?;
                tx.open_table(KV)?;
                let mut meta = tx.open_table(META)?;
                if found.is_none() {
                    meta.insert(KEY_VERSION, SCHEMA_VERSION.to_le_bytes().as_slice())?;
                }
            }
            tx.commit()?;
            Ok(())
        })();
        created.map_err(|e| corrupt(e.to_string()))?;
        Ok(store)
    }

    /// `None` for a fresh file; `Err(len)` for a version that is not a u32.
    fn read_version(&self) -> Result<Option<Result<u32, usize>>, redb::Error> {
        let tx = self.db.begin_read()?;
        let meta = match tx.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(meta.get(KEY_VERSION)?.map(|v| {
            let b = v.value();
            <[u8; 4]>::try_from(b).map(u32::from_le_bytes).map_err(|_| b.len())
        }))
    }

    fn has_data(&self) -> Result<bool, redb::Error> {
        let tx = self.db.begin_read()?;
        let any = tx.list_tables()?.next().is_some();
        Ok(any)
    }

    /// Where the store lives: the file, or `memory`.
    pub fn location(&self) -> String {
        match &self.path {
            Some(p) => p.display().to_string(),
            None => "memory".to_string(),
        }
    }

    /// Whether the store survives the process.
    pub fn is_durable(&self) -> bool {
        self.path.is_some()
    }

    fn run<T>(&self, what: &str, f: impl FnOnce(&Database) -> Result<T, redb::Error>) -> Result<T, StateError> {
        f(&self.db).map_err(|e| StateError::Storage {
            where_: self.location(),
            what: what.to_string(),
            detail: e.to_string(),
        })
    }

    fn write<T>(
        &self,
        what: &str,
        durability: Durability,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, StateError> {
        self.run(what, |db| {
            let mut tx = db.begin_write()?;
            tx.set_durability(durability).map_err(|e| redb::Error::Corrupted(e.to_string()))?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
        .inspect(|_| {
            if matches!(durability, Durability::Immediate) {
                self.unflushed.store(false, Ordering::Relaxed);
            }
        })
    }

    // ---------------------------------------------------------------- job ids

    /// The next job id to hand out (1 in a fresh store).
    pub fn next_job_id(&self) -> Result<u32, StateError> {
        self.run("reading the next job id", |db| {
            let tx = db.begin_read()?;
            let meta = tx.open_table(META)?;
            let v = meta.get(KEY_NEXT_JOB)?;
            Ok(v.and_then(|v| <[u8; 4]>::try_from(v.value()).ok()).map(u32::from_le_bytes).unwrap_or(1))
        })
    }

    /// Records the next job id to hand out, durably.
    pub fn set_next_job_id(&self, next: u32) -> Result<(), StateError> {
        self.write("recording the next job id", Durability::Immediate, |tx| {
            tx.open_table(META)?.insert(KEY_NEXT_JOB, next.to_le_bytes().as_slice())?;
            Ok(())
        })
    }

    // ------------------------------------------------------------------- jobs

    /// Writes a job's record, state, submission id and result objects, durably.
    pub fn put_job(&self, row: &JobRow<'_>) -> Result<(), StateError> {
        self.write("writing a job", Durability::Immediate, |tx| {
            tx.open_table(JOBS)?.insert(row.id, row.record)?;
            tx.open_table(JOB_STATES)?.insert(row.id, row.state)?;
            if let Some(sid) = row.submission_id {
                tx.open_table(SUBMISSIONS)?.insert(sid, row.id)?;
            }
            let mut objects = tx.open_table(OBJECTS)?;
            for o in row.objects {
                objects.insert(o.as_str(), row.id)?;
            }
            Ok(())
        })
    }

    /// A job's record.
    pub fn job(&self, id: u32) -> Result<Option<Vec<u8>>, StateError> {
        self.run("reading a job", |db| {
            let tx = db.begin_read()?;
            let jobs = tx.open_table(JOBS)?;
            Ok(jobs.get(id)?.map(|v| v.value().to_vec()))
        })
    }

    /// Every job's state, by id.
    pub fn job_states(&self) -> Result<Vec<(u32, u8)>, StateError> {
        self.run("reading the job states", |db| {
            let tx = db.begin_read()?;
            let t = tx.open_table(JOB_STATES)?;
            t.iter()?.map(|r| r.map(|(k, v)| (k.value(), v.value())).map_err(redb::Error::from)).collect()
        })
    }

    /// The job a submission id names.
    pub fn submission(&self, submission_id: &str) -> Result<Option<u32>, StateError> {
        self.run("reading a submission id", |db| {
            let tx = db.begin_read()?;
            let t = tx.open_table(SUBMISSIONS)?;
            Ok(t.get(submission_id)?.map(|v| v.value()))
        })
    }

    /// The job whose result `object` was.
    pub fn object_job(&self, object: &str) -> Result<Option<u32>, StateError> {
        self.run("reading a result object", |db| {
            let tx = db.begin_read()?;
            let t = tx.open_table(OBJECTS)?;
            Ok(t.get(object)?.map(|v| v.value()))
        })
    }

    /// Forgets a job: its record, state, submission id, objects and log.
    pub fn delete_job(&self, id: u32, submission_id: Option<&str>, objects: &[String]) -> Result<(), StateError> {
        self.write("deleting a job", Durability::Immediate, |tx| {
            tx.open_table(JOBS)?.remove(id)?;
            tx.open_table(JOB_STATES)?.remove(id)?;
            if let Some(sid) = submission_id {
                let mut subs = tx.open_table(SUBMISSIONS)?;
                let ours = subs.get(sid)?.is_some_and(|v| v.value() == id);
                if ours {
                    subs.remove(sid)?;
                }
            }
            let mut t = tx.open_table(OBJECTS)?;
            for o in objects {
                t.remove(o.as_str())?;
            }
            tx.open_table(LOGS)?.retain_in(log_range(id), |_, _| false)?;
            Ok(())
        })
    }

    // ------------------------------------------------------------------- logs

    /// Appends to a job's log, dropping its oldest bytes past
    /// [`MAX_LOG_BYTES_PER_JOB`]. Committed without a flush (see the module
    /// docs).
    pub fn append_log(&self, job: u32, data: &[u8]) -> Result<(), StateError> {
        if data.is_empty() {
            return Ok(());
        }
        // A single append larger than the window keeps only its tail.
        let data = &data[data.len().saturating_sub(MAX_LOG_BYTES_PER_JOB)..];
        self.write("appending to a job log", Durability::None, |tx| {
            let mut logs = tx.open_table(LOGS)?;
            let end = match logs.range(log_range(job))?.next_back() {
                Some(r) => {
                    let (k, v) = r?;
                    k.value().1 + v.value().len() as u64
                }
                None => 0,
            };
            logs.insert((job, end), data)?;
            let new_end = end + data.len() as u64;
            let window_start = new_end.saturating_sub(MAX_LOG_BYTES_PER_JOB as u64);
            // Whole chunks before the window go; one that straddles it keeps its tail.
            let mut doomed = Vec::new();
            for r in logs.range(log_range(job))? {
                let (k, v) = r?;
                let start = k.value().1;
                if start >= window_start {
                    break;
                }
                let bytes = v.value();
                let chunk_end = start + bytes.len() as u64;
                let tail = (chunk_end > window_start).then(|| bytes[(window_start - start) as usize..].to_vec());
                doomed.push((start, tail));
            }
            for (start, tail) in doomed {
                logs.remove((job, start))?;
                if let Some(tail) = tail {
                    logs.insert((job, window_start), tail.as_slice())?;
                }
            }
            Ok(())
        })?;
        self.unflushed.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Up to `max` bytes of a job's log from `offset` (see [`LogChunk`]).
    pub fn read_log(&self, job: u32, offset: u64, max: usize) -> Result<LogChunk, StateError> {
        self.run("reading a job log", |db| {
            let tx = db.begin_read()?;
            let logs = tx.open_table(LOGS)?;
            let mut chunks = logs.range(log_range(job))?;
            let Some(first) = chunks.next() else { return Ok(LogChunk { next_offset: offset, ..Default::default() }) };
            let start = first?.0.value().1;
            let end = match logs.range(log_range(job))?.next_back() {
                Some(r) => {
                    let (k, v) = r?;
                    k.value().1 + v.value().len() as u64
                }
                None => start,
            };
            let from = offset.clamp(start, end);
            let skipped = from - offset.min(from);
            let mut data = Vec::new();
            // The chunk holding `from`, then the ones after it.
            let first_key = match logs.range((job, 0)..=(job, from))?.next_back() {
                Some(r) => r?.0.value().1,
                None => start,
            };
            for r in logs.range((job, first_key)..=(job, u64::MAX))? {
                if data.len() >= max {
                    break;
                }
                let (k, v) = r?;
                let chunk_start = k.value().1;
                let bytes = v.value();
                let skip = from.saturating_sub(chunk_start) as usize;
                if skip >= bytes.len() {
                    continue;
                }
                let take = (bytes.len() - skip).min(max - data.len());
                data.extend_from_slice(&bytes[skip..skip + take]);
            }
            Ok(LogChunk { next_offset: from + data.len() as u64, data, skipped })
        })
    }

    /// Makes every commit so far durable (the log appends committed without
    /// a flush); a no-op when there are none.
    pub fn flush(&self) -> Result<(), StateError> {
        if !self.unflushed.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        self.write("flushing the job logs", Durability::Immediate, |tx| {
            tx.open_table(META)?.insert(KEY_FLUSHED, crate::net::now_ms().to_le_bytes().as_slice())?;
            Ok(())
        })
    }

    // --------------------------------------------------------------------- kv

    /// Stores `value` under `key` unless it exists and `overwrite` is false;
    /// returns whether the key is new.
    pub fn kv_put(&self, key: &str, value: &[u8], overwrite: bool) -> Result<bool, StateError> {
        self.write("writing a key", Durability::Immediate, |tx| {
            let mut kv = tx.open_table(KV)?;
            let exists = kv.get(key)?.is_some();
            if !exists || overwrite {
                kv.insert(key, value)?;
            }
            Ok(!exists)
        })
    }

    /// The value under `key`.
    pub fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.run("reading a key", |db| {
            let tx = db.begin_read()?;
            Ok(tx.open_table(KV)?.get(key)?.map(|v| v.value().to_vec()))
        })
    }

    /// Removes `key`; returns whether it existed.
    pub fn kv_del(&self, key: &str) -> Result<bool, StateError> {
        self.write("deleting a key", Durability::Immediate, |tx| Ok(tx.open_table(KV)?.remove(key)?.is_some()))
    }

    /// Keys starting with `prefix`, in order.
    pub fn kv_list(&self, prefix: &str) -> Result<Vec<String>, StateError> {
        self.run("listing keys", |db| {
            let tx = db.begin_read()?;
            let kv = tx.open_table(KV)?;
            let mut keys = Vec::new();
            for r in kv.range(prefix..)? {
                let (k, _) = r?;
                let k = k.value();
                if !k.starts_with(prefix) {
                    break;
                }
                keys.push(k.to_string());
            }
            Ok(keys)
        })
    }
}

/// Opens the head's store: in `dir`, or in memory, saying then that
/// nothing will survive a restart. The file work runs off the async runtime.
pub async fn open_store(dir: Option<PathBuf>) -> Result<std::sync::Arc<StateStore>, StateError> {
    let store = match dir {
        Some(dir) => {
            let where_ = dir.display().to_string();
            let store = tokio::task::spawn_blocking(move || StateStore::open(&dir))
                .await
                .map_err(|e| StateError::Storage { where_, what: "opening".into(), detail: e.to_string() })??;
            tracing::info!(file = %store.location(), "head state opened");
            store
        }
        None => {
            tracing::warn!(
                "no state directory (--state-dir): jobs, their logs and the key-value store are kept in memory \
                 and will not survive a restart of the head"
            );
            StateStore::in_memory()?
        }
    };
    Ok(std::sync::Arc::new(store))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("shoal-state-{tag}-{}-{:08x}", std::process::id(), fastrand::u32(..)));
        std::fs::create_dir_all(&d).expect("a temporary directory");
        d
    }

    fn row<'a>(id: u32, state: u8, record: &'a [u8], sid: Option<&'a str>, objects: &'a [String]) -> JobRow<'a> {
        JobRow { id, state, record, submission_id: sid, objects }
    }

    #[test]
    fn jobs_ids_logs_and_keys_survive_a_reopen() {
        let dir = temp_dir("reopen");
        let objects = vec!["obj-1".to_string()];
        {
            let s = StateStore::open(&dir).expect("open");
            assert_eq!(s.next_job_id().expect("next"), 1);
            s.set_next_job_id(8).expect("next id");
            s.put_job(&row(7, 2, b"{\"a\":1}", Some("sub-7"), &objects)).expect("put");
            s.append_log(7, b"hello ").expect("append");
            s.append_log(7, b"world\n").expect("append");
            assert!(s.kv_put("fn/a", b"x", false).expect("put"));
            assert!(!s.kv_put("fn/a", b"y", false).expect("put"), "no overwrite");
            s.kv_put("other", b"z", true).expect("put");
            s.flush().expect("flush");
        }
        let s = StateStore::open(&dir).expect("reopen");
        assert_eq!(s.next_job_id().expect("next"), 8);
        assert_eq!(s.job(7).expect("job").as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(s.job_states().expect("states"), vec![(7, 2)]);
        assert_eq!(s.submission("sub-7").expect("sid"), Some(7));
        assert_eq!(s.object_job("obj-1").expect("object"), Some(7));
        assert_eq!(s.read_log(7, 0, 100).expect("log").data, b"hello world\n");
        assert_eq!(s.read_log(7, 6, 3).expect("log"), LogChunk { data: b"wor".to_vec(), next_offset: 9, skipped: 0 });
        assert_eq!(s.kv_get("fn/a").expect("get").as_deref(), Some(&b"x"[..]));
        assert_eq!(s.kv_list("fn/").expect("list"), vec!["fn/a".to_string()]);
        assert!(s.kv_del("fn/a").expect("del"));
        s.delete_job(7, Some("sub-7"), &objects).expect("delete");
        assert_eq!(s.job(7).expect("job"), None);
        assert_eq!(s.submission("sub-7").expect("sid"), None);
        assert_eq!(s.object_job("obj-1").expect("object"), None);
        assert_eq!(s.read_log(7, 0, 100).expect("log").data, b"");
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_log_keeps_its_newest_window_and_a_reader_behind_it_is_told_what_it_skipped() {
        let s = StateStore::in_memory().expect("memory");
        s.append_log(1, b"0123456789").expect("append");
        let big = vec![b'x'; MAX_LOG_BYTES_PER_JOB - 4];
        s.append_log(1, &big).expect("append");
        // The window is the last MAX bytes: "6789" and the x's.
        let c = s.read_log(1, 0, 6).expect("read");
        assert_eq!(c.skipped, 6);
        assert_eq!(c.data, b"6789xx");
        assert_eq!(c.next_offset, 12);
        let tail = s.read_log(1, u64::MAX, 10).expect("read");
        assert_eq!(tail.next_offset, 10 + big.len() as u64);
        assert!(tail.data.is_empty());
        assert_eq!(s.read_log(2, 5, 10).expect("read"), LogChunk { data: vec![], next_offset: 5, skipped: 0 });
    }

    #[test]
    fn a_file_of_another_schema_version_is_refused_and_keeps_its_data() {
        let dir = temp_dir("version");
        {
            let s = StateStore::open(&dir).expect("open");
            s.put_job(&row(3, 1, b"{}", None, &[])).expect("put");
            s.write("test", Durability::Immediate, |tx| {
                tx.open_table(META)?.insert(KEY_VERSION, 99u32.to_le_bytes().as_slice())?;
                Ok(())
            })
            .expect("write a future version");
        }
        let err = StateStore::open(&dir).expect_err("a future version is refused");
        assert!(matches!(err, StateError::Version { found: 99, .. }), "{err}");
        assert!(err.to_string().contains("schema version 99"), "{err}");
        assert!(err.to_string().contains(&dir.join(STATE_FILE).display().to_string()), "{err}");
        // Nothing was rewritten: the version and the job are still there.
        let db = Database::create(dir.join(STATE_FILE)).expect("redb opens it");
        let tx = db.begin_read().expect("read");
        let version = tx.open_table(META).expect("meta").get(KEY_VERSION).expect("get").map(|v| v.value().to_vec());
        assert_eq!(version, Some(99u32.to_le_bytes().to_vec()));
        assert!(tx.open_table(JOBS).expect("jobs").get(3).expect("get").is_some());
        drop(tx);
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_garbage_file_is_a_corrupt_state_error_naming_it() {
        let dir = temp_dir("garbage");
        let file = dir.join(STATE_FILE);
        let garbage: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + 3) as u8).collect();
        std::fs::write(&file, &garbage).expect("write garbage");
        let err = StateStore::open(&dir).expect_err("garbage is refused");
        assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(&file.display().to_string()), "{err}");
        assert_eq!(std::fs::read(&file).expect("read"), garbage, "the file is untouched");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
