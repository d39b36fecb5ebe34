//! The per-node object store: values by object id, within a byte budget,
//! spilling to local disk when memory is full.
//!
//! Primary copies (results of tasks that ran here, objects put here) stay
//! until their owner frees them. Secondary copies (pulled from other nodes)
//! are evicted least-recently-used first when room is needed. When evicting
//! secondaries is not enough, the least recently used primaries are spilled
//! to disk — many objects written one after another into one file per spill,
//! never a file per small object — and read back on demand. A primary copy is
//! never dropped to make room: when it can neither fit nor be spilled (no
//! spill directory, disk full), the put fails with a [`StoreError`] naming
//! the object.
//!
//! Disk I/O happens on the caller's thread (callers run on the blocking
//! pool), never under the store's lock: a spill marks its batch, writes
//! the file with the lock released, then switches the batch to disk, so
//! that `stats`, `contains` and other callers never wait for a disk.
//!
//! Every spilled object keeps the CRC-32 of its bytes. A spill file that was
//! truncated, changed or removed on disk is found on restore: the read is a
//! [`RestoreError`] naming the object, the file and what is wrong, and the
//! damaged copy is dropped from the store (its owner may rebuild it from
//! lineage), never handed out as a value.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, MutexGuard};

use shoal_proto::v1 as pb;
use thiserror::Error;

use crate::ids::ObjectId;
use crate::resources::human_bytes;

/// A value that does not fit.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// Not enough room even after evicting every secondary copy, and nothing
    /// can be spilled.
    #[error("object store full: {object} needs {}, {} of {} used by pinned objects and spilling is off", human_bytes(*.needed), human_bytes(*.pinned), human_bytes(*.capacity))]
    Full {
        /// The object that did not fit.
        object: ObjectId,
        /// Its size.
        needed: u64,
        /// Bytes held by pinned (primary) copies in memory.
        pinned: u64,
        /// The budget.
        capacity: u64,
    },
    /// Spilling to disk failed (disk full, permissions...).
    #[error("object store full and spilling {object} to {dir} failed: {reason}")]
    SpillFailed {
        /// The object being stored.
        object: ObjectId,
        /// The spill directory.
        dir: String,
        /// The I/O error.
        reason: String,
    },
}

/// A spilled copy that could not be read back intact.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("object {object} could not be read back from spill file {path}: {reason}")]
pub struct RestoreError {
    /// The object.
    pub object: ObjectId,
    /// The spill file it was in.
    pub path: String,
    /// What is wrong (I/O error, truncated, checksum mismatch).
    pub reason: String,
}

enum Place {
    Memory(pb::ObjectValue),
    Disk { file: u64, offset: u64, format: i32, crc: u32 },
}

struct Entry {
    place: Place,
    size: u64,
    primary: bool,
    /// Position in the LRU order of its kind (in-memory copies only).
    tick: u64,
    /// Being written to a spill file (out of the LRU until that ends).
    spilling: bool,
}

struct SpillFile {
    path: PathBuf,
    live: u64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<ObjectId, Entry>,
    /// In-memory secondary copies, least recently used first.
    lru: BTreeMap<u64, ObjectId>,
    /// In-memory primary copies, least recently used first (spill candidates).
    primary_lru: BTreeMap<u64, ObjectId>,
    next_tick: u64,
    used: u64,
    pinned: u64,
    evicted_objects: u64,
    spilled_bytes: u64,
    spilled_objects: u64,
    spilled_total: u64,
    restored_total: u64,
    files: HashMap<u64, SpillFile>,
    next_file: u64,
    /// Bytes of spills in progress (written with the lock released).
    spilling_bytes: u64,
}

/// A snapshot of the store's use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Bytes held in memory.
    pub used: u64,
    /// Byte budget.
    pub capacity: u64,
    /// Objects held (in memory or spilled).
    pub count: u64,
    /// Bytes held by primary copies in memory.
    pub pinned: u64,
    /// Secondary copies evicted so far.
    pub evicted_objects: u64,
    /// Bytes currently spilled to disk.
    pub spilled_bytes: u64,
    /// Objects currently spilled to disk.
    pub spilled_objects: u64,
    /// Bytes ever spilled.
    pub spilled_total: u64,
    /// Bytes ever read back from disk.
    pub restored_total: u64,
}

/// The object store of one raylet. All methods take `&self`.
pub struct ObjectStore {
    inner: Mutex<Inner>,
    /// Signalled when a spill ends.
    spilled: Condvar,
    capacity: u64,
    spill_dir: Option<PathBuf>,
}

impl ObjectStore {
    /// An empty store holding at most `capacity` bytes in memory, with no spilling.
    pub fn new(capacity: u64) -> Self {
        ObjectStore { inner: Mutex::new(Inner::default()), spilled: Condvar::new(), capacity, spill_dir: None }
    }

    /// An empty store that spills primaries into files under `dir`.
    pub fn with_spill_dir(capacity: u64, dir: PathBuf) -> Self {
        ObjectStore { inner: Mutex::new(Inner::default()), spilled: Condvar::new(), capacity, spill_dir: Some(dir) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a copy. Storing an object already held upgrades it to primary
    /// when asked and otherwise keeps the existing copy. May spill to disk:
    /// blocking, so call it off async threads; the store's lock is not held
    /// while files are written.
    pub fn put(&self, id: ObjectId, value: pb::ObjectValue, primary: bool) -> Result<(), StoreError> {
        let size = value.data.len() as u64;
        let mut st = self.lock();
        let s = &mut *st;
        if let Some(e) = s.entries.get_mut(&id) {
            if primary && !e.primary {
                e.primary = true;
                // A secondary copy in memory becomes a pinned primary
                // (secondaries are never being spilled).
                if matches!(e.place, Place::Memory(_)) {
                    s.lru.remove(&e.tick);
                    s.primary_lru.insert(e.tick, id);
                    s.pinned += e.size;
                }
            }
            return Ok(());
        }
        if size > self.capacity {
            // Larger than the whole budget: a primary goes straight to disk.
            if primary && self.spill_dir.is_some() {
                let n = st.next_file;
                st.next_file += 1;
                drop(st);
                let (path, written) =
                    self.write_spill_file(n, &[(id, &value)]).map_err(|reason| self.spill_error(id, reason))?;
                let (offset, crc) = written[0];
                let mut st = self.lock();
                st.files.insert(n, SpillFile { path, live: size });
                st.entries.insert(
                    id,
                    Entry {
                        place: Place::Disk { file: n, offset, format: value.format, crc },
                        size,
                        primary,
                        tick: 0,
                        spilling: false,
                    },
                );
                st.spilled_bytes += size;
                st.spilled_objects += 1;
                st.spilled_total += size;
                return Ok(());
            }
            return Err(StoreError::Full { object: id, needed: size, pinned: st.pinned, capacity: self.capacity });
        }
        st = self.make_room(st, id, size, primary)?;
        if st.entries.contains_key(&id) {
            // Stored by another caller while this one made room.
            return Ok(());
        }
        let tick = st.next_tick;
        st.next_tick += 1;
        if primary {
            st.pinned += size;
            st.primary_lru.insert(tick, id);
        } else {
            st.lru.insert(tick, id);
        }
        st.used += size;
        st.entries.insert(id, Entry { place: Place::Memory(value), size, primary, tick, spilling: false });
        Ok(())
    }

    fn spill_error(&self, object: ObjectId, reason: String) -> StoreError {
        let dir = self.spill_dir.as_ref().map(|d| d.display().to_string()).unwrap_or_default();
        StoreError::SpillFailed { object, dir, reason }
    }

    /// Evicts secondaries, then spills primaries, until `size` more bytes
    /// fit. The lock is released while a spill file is written (and while
    /// waiting for another caller's spill), and taken again to return.
    fn make_room<'a>(
        &'a self,
        mut st: MutexGuard<'a, Inner>,
        id: ObjectId,
        size: u64,
        primary: bool,
    ) -> Result<MutexGuard<'a, Inner>, StoreError> {
        loop {
            while st.used + size > self.capacity {
                let Some((&tick, &victim)) = st.lru.iter().next() else { break };
                st.lru.remove(&tick);
                if let Some(e) = st.entries.remove(&victim) {
                    st.used -= e.size;
                    st.evicted_objects += 1;
                }
            }
            if st.used + size <= self.capacity {
                return Ok(st);
            }
            let full =
                |st: &Inner| StoreError::Full { object: id, needed: size, pinned: st.pinned, capacity: self.capacity };
            if self.spill_dir.is_none() || !primary {
                return Err(full(&st));
            }
            if st.primary_lru.is_empty() {
                if st.spilling_bytes == 0 {
                    return Err(full(&st));
                }
                // Another caller's spill will free room: wait for it.
                st = self.spilled.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            // Spill a batch: enough for this object plus an eighth of the
            // budget of headroom, so that a stream of puts does not spill
            // once per put.
            let target = (st.used + size).saturating_sub(self.capacity) + self.capacity / 8;
            let mut values: Vec<(ObjectId, pb::ObjectValue)> = Vec::new();
            let mut freed = 0u64;
            let candidates: Vec<(u64, ObjectId)> = st.primary_lru.iter().map(|(t, o)| (*t, *o)).collect();
            for (tick, oid) in candidates {
                if freed >= target {
                    break;
                }
                let Some(e) = st.entries.get_mut(&oid) else { continue };
                let Place::Memory(v) = &e.place else { continue };
                e.spilling = true;
                freed += e.size;
                values.push((oid, v.clone()));
                st.primary_lru.remove(&tick);
            }
            st.spilling_bytes += freed;
            let n = st.next_file;
            st.next_file += 1;
            drop(st);
            let refs: Vec<(ObjectId, &pb::ObjectValue)> = values.iter().map(|(o, v)| (*o, v)).collect();
            let written = self.write_spill_file(n, &refs);
            let mut guard = self.lock();
            guard.spilling_bytes -= freed;
            let s = &mut *guard;
            match written {
                Ok((path, written)) => {
                    let mut live = 0;
                    for ((oid, v), (offset, crc)) in values.iter().zip(written) {
                        // Deleted while it was being written: its bytes in the file are dead.
                        let Some(e) = s.entries.get_mut(oid) else { continue };
                        if !e.spilling {
                            continue;
                        }
                        e.spilling = false;
                        e.place = Place::Disk { file: n, offset, format: v.format, crc };
                        live += e.size;
                        s.used -= e.size;
                        if e.primary {
                            s.pinned -= e.size;
                        }
                        s.spilled_bytes += e.size;
                        s.spilled_objects += 1;
                        s.spilled_total += e.size;
                    }
                    if live > 0 {
                        s.files.insert(n, SpillFile { path, live });
                    } else {
                        let _ = std::fs::remove_file(&path);
                    }
                    tracing::debug!(objects = values.len(), bytes = live, "spilled primary copies to disk");
                    self.spilled.notify_all();
                    st = guard;
                }
                Err(reason) => {
                    for (oid, _) in &values {
                        if let Some(e) = s.entries.get_mut(oid) {
                            if e.spilling {
                                e.spilling = false;
                                s.primary_lru.insert(e.tick, *oid);
                            }
                        }
                    }
                    self.spilled.notify_all();
                    return Err(self.spill_error(id, reason));
                }
            }
        }
    }

    /// Writes objects one after another into spill file number `n`, with no
    /// lock held. Returns the file and each object's offset and CRC-32.
    fn write_spill_file(
        &self,
        n: u64,
        objects: &[(ObjectId, &pb::ObjectValue)],
    ) -> Result<(PathBuf, Vec<(u64, u32)>), String> {
        let dir = self.spill_dir.as_ref().ok_or("spilling is off")?;
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let path = dir.join(format!("spill-{n:06}.bin"));
        let result = (|| -> std::io::Result<Vec<(u64, u32)>> {
            let f = OpenOptions::new().create(true).write(true).truncate(true).open(&path)?;
            let mut w = std::io::BufWriter::with_capacity(4 << 20, f);
            let mut offsets = Vec::with_capacity(objects.len());
            let mut off = 0u64;
            for (_, v) in objects {
                offsets.push((off, crc32fast::hash(&v.data)));
                w.write_all(&v.data)?;
                off += v.data.len() as u64;
            }
            w.flush()?;
            Ok(offsets)
        })();
        match result {
            Ok(offsets) => Ok((path, offsets)),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(e.to_string())
            }
        }
    }

    /// Reads `size` bytes at `offset` of a spill file and checks them
    /// against the CRC-32 taken when they were written.
    fn read_spilled(path: &std::path::Path, offset: u64, size: u64, crc: u32) -> Result<Vec<u8>, String> {
        let mut h = File::open(path).map_err(|e| format!("cannot open it: {e}"))?;
        let len = h.metadata().map_err(|e| format!("cannot stat it: {e}"))?.len();
        if len < offset + size {
            return Err(format!(
                "the file is truncated: {len} bytes, the object's {size} bytes end at byte {}",
                offset + size
            ));
        }
        h.seek(SeekFrom::Start(offset)).map_err(|e| format!("cannot seek to byte {offset}: {e}"))?;
        let mut buf = vec![0u8; size as usize];
        h.read_exact(&mut buf).map_err(|e| format!("cannot read {size} bytes at byte {offset}: {e}"))?;
        let got = crc32fast::hash(&buf);
        if got != crc {
            return Err(format!(
                "checksum mismatch (crc32 {got:08x}, written as {crc:08x}): the file was changed or damaged on disk"
            ));
        }
        Ok(buf)
    }

    /// The value, marking it recently used; a spilled value is read back
    /// from disk (with the lock released) and kept in memory again when it
    /// fits without spilling. May read a file: call it off async threads.
    ///
    /// A spilled copy that does not read back intact is dropped from the
    /// store and reported as a [`RestoreError`].
    pub fn get(&self, id: &ObjectId) -> Result<Option<pb::ObjectValue>, RestoreError> {
        let mut guard = self.lock();
        let st = &mut *guard;
        let Some(e) = st.entries.get(id) else { return Ok(None) };
        let (file, offset, format, crc, size, primary) = match &e.place {
            Place::Memory(v) => {
                let v = v.clone();
                if e.spilling {
                    // Being written out: readable, but out of the LRU.
                    return Ok(Some(v));
                }
                let (old, primary) = (e.tick, e.primary);
                let tick = st.next_tick;
                st.next_tick += 1;
                if primary {
                    st.primary_lru.remove(&old);
                    st.primary_lru.insert(tick, *id);
                } else {
                    st.lru.remove(&old);
                    st.lru.insert(tick, *id);
                }
                if let Some(e) = st.entries.get_mut(id) {
                    e.tick = tick;
                }
                return Ok(Some(v));
            }
            Place::Disk { file, offset, format, crc } => (*file, *offset, *format, *crc, e.size, e.primary),
        };
        let Some(path) = st.files.get(&file).map(|f| f.path.clone()) else { return Ok(None) };
        drop(guard);
        let read = Self::read_spilled(&path, offset, size, crc);
        let mut guard = self.lock();
        let st = &mut *guard;
        // Still the spilled copy that was read (not deleted or replaced meanwhile)?
        let same = matches!(st.entries.get(id).map(|e| &e.place), Some(Place::Disk { file: f, offset: o, .. }) if *f == file && *o == offset);
        let data = match read {
            Ok(data) => data,
            Err(reason) => {
                if same {
                    st.entries.remove(id);
                    release_spilled(st, file, size);
                    st.spilled_objects -= 1;
                }
                let err = RestoreError { object: *id, path: path.display().to_string(), reason };
                tracing::error!(error = %err, "a spilled object did not read back intact; its copy is dropped");
                return Err(err);
            }
        };
        let value = pb::ObjectValue { format, data: bytes::Bytes::from(data), nested_refs: Vec::new() };
        st.restored_total += size;
        // Bring it back into memory if it needs no further spilling.
        if same && st.used + size <= self.capacity {
            let tick = st.next_tick;
            st.next_tick += 1;
            if let Some(e) = st.entries.get_mut(id) {
                e.place = Place::Memory(value.clone());
                e.tick = tick;
            }
            release_spilled(st, file, size);
            st.spilled_objects -= 1;
            st.used += size;
            if primary {
                st.pinned += size;
                st.primary_lru.insert(tick, *id);
            } else {
                st.lru.insert(tick, *id);
            }
        }
        Ok(Some(value))
    }

    /// Whether a copy is here (in memory or spilled).
    pub fn contains(&self, id: &ObjectId) -> bool {
        self.lock().entries.contains_key(id)
    }

    /// Drops the copy held here, if any.
    pub fn delete(&self, id: &ObjectId) -> bool {
        let mut guard = self.lock();
        let st = &mut *guard;
        let Some(e) = st.entries.remove(id) else { return false };
        match e.place {
            Place::Memory(_) => {
                st.used -= e.size;
                if e.primary {
                    st.pinned -= e.size;
                    if !e.spilling {
                        st.primary_lru.remove(&e.tick);
                    }
                } else {
                    st.lru.remove(&e.tick);
                }
            }
            Place::Disk { file, .. } => {
                release_spilled(st, file, e.size);
                st.spilled_objects -= 1;
            }
        }
        true
    }

    /// Current use.
    pub fn stats(&self) -> StoreStats {
        let st = self.lock();
        StoreStats {
            used: st.used,
            capacity: self.capacity,
            count: st.entries.len() as u64,
            pinned: st.pinned,
            evicted_objects: st.evicted_objects,
            spilled_bytes: st.spilled_bytes,
            spilled_objects: st.spilled_objects,
            spilled_total: st.spilled_total,
            restored_total: st.restored_total,
        }
    }

    /// Removes every spill file (the raylet is stopping).
    pub fn remove_spill_files(&self) {
        let mut st = self.lock();
        for (_, f) in st.files.drain() {
            let _ = std::fs::remove_file(&f.path);
        }
    }
}

fn release_spilled(st: &mut Inner, file: u64, size: u64) {
    st.spilled_bytes -= size;
    let empty = match st.files.get_mut(&file) {
        Some(f) => {
            f.live = f.live.saturating_sub(size);
            f.live == 0
        }
        None => false,
    };
    if empty {
        if let Some(f) = st.files.remove(&file) {
            let _ = std::fs::remove_file(&f.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{JobId, TaskId};

    fn val(n: usize, b: u8) -> pb::ObjectValue {
        pb::ObjectValue { format: pb::Format::Raw as i32, data: bytes::Bytes::from(vec![b; n]), ..Default::default() }
    }

    #[test]
    fn secondary_copies_are_evicted_lru_first_and_primaries_never() {
        let store = ObjectStore::new(100);
        let t = TaskId::random(JobId(1));
        let (a, b, c, d) = (t.return_id(0), t.return_id(1), t.return_id(2), t.return_id(3));
        store.put(a, val(40, 1), true).unwrap();
        store.put(b, val(30, 2), false).unwrap();
        store.put(c, val(30, 3), false).unwrap();
        // Touch b so c is the least recently used.
        assert!(store.get(&b).unwrap().is_some());
        store.put(d, val(30, 4), false).unwrap();
        assert!(store.contains(&a));
        assert!(store.contains(&b));
        assert!(!store.contains(&c));
        assert!(store.contains(&d));
        assert_eq!(store.stats().evicted_objects, 1);
        // Without a spill directory, a primary that cannot fit is refused.
        let e = store.put(t.return_id(4), val(70, 5), true).unwrap_err();
        assert!(e.to_string().contains("object store full"));
        assert!(store.delete(&a));
        assert_eq!(store.stats().pinned, 0);
        store.put(t.return_id(4), val(70, 5), true).unwrap();
        assert_eq!(store.stats().used, 70);
    }

    #[test]
    fn primaries_spill_in_batches_and_read_back_intact() {
        let dir = std::env::temp_dir().join(format!("shoal-spill-test-{}", fastrand::u64(..)));
        let store = ObjectStore::with_spill_dir(1000, dir.clone());
        let t = TaskId::random(JobId(1));
        // Three times the budget, in 100-byte objects.
        for i in 0..30u32 {
            store.put(t.return_id(i), val(100, i as u8), true).unwrap();
        }
        let s = store.stats();
        assert!(s.used <= 1000);
        assert!(s.spilled_objects >= 20);
        let files = std::fs::read_dir(&dir).unwrap().count();
        assert!(files < 10, "spills are batched: {files} files for {} objects", s.spilled_objects);
        for i in 0..30u32 {
            let v = store.get(&t.return_id(i)).unwrap().unwrap();
            assert_eq!(v.data.len(), 100);
            assert!(v.data.iter().all(|b| *b == i as u8), "object {i} came back intact");
        }
        assert!(store.stats().restored_total >= 2000);
        for i in 0..30u32 {
            assert!(store.delete(&t.return_id(i)));
        }
        let s = store.stats();
        assert_eq!((s.used, s.spilled_bytes, s.count), (0, 0, 0));
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "empty spill files are removed");
        // An object larger than the whole budget goes straight to disk.
        store.put(t.return_id(99), val(5000, 9), true).unwrap();
        assert_eq!(store.get(&t.return_id(99)).unwrap().unwrap().data.len(), 5000);
        store.remove_spill_files();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_damaged_or_truncated_spill_file_is_a_clear_error_on_restore() {
        let dir = std::env::temp_dir().join(format!("shoal-spill-damage-{}", fastrand::u64(..)));
        let store = ObjectStore::with_spill_dir(1000, dir.clone());
        let t = TaskId::random(JobId(1));
        // Four objects larger than the budget: one spill file each.
        for i in 0..4u32 {
            store.put(t.return_id(i), val(2000, i as u8 + 1), true).unwrap();
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        assert_eq!(files.len(), 4);
        // One byte changed, one file cut short, one removed.
        let mut data = std::fs::read(&files[0]).unwrap();
        data[1234] ^= 0xff;
        std::fs::write(&files[0], data).unwrap();
        OpenOptions::new().write(true).open(&files[1]).unwrap().set_len(1500).unwrap();
        std::fs::remove_file(&files[2]).unwrap();

        let e = store.get(&t.return_id(0)).unwrap_err();
        assert_eq!(e.object, t.return_id(0));
        assert!(e.reason.contains("checksum mismatch"), "{e}");
        assert!(e.to_string().contains("spill-000000.bin"), "{e}");
        let e = store.get(&t.return_id(1)).unwrap_err();
        assert!(e.reason.contains("truncated"), "{e}");
        let e = store.get(&t.return_id(2)).unwrap_err();
        assert!(e.reason.contains("cannot open"), "{e}");
        // The damaged copies are gone; the intact one still reads back.
        for i in 0..3u32 {
            assert!(!store.contains(&t.return_id(i)));
            assert_eq!(store.get(&t.return_id(i)), Ok(None));
        }
        let v = store.get(&t.return_id(3)).unwrap().unwrap();
        assert!(v.data.len() == 2000 && v.data.iter().all(|b| *b == 4));
        let s = store.stats();
        assert_eq!((s.count, s.spilled_objects, s.spilled_bytes), (1, 1, 2000));
        store.remove_spill_files();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_spill_that_cannot_write_is_a_clear_error() {
        let store = ObjectStore::with_spill_dir(100, PathBuf::from("/proc/shoal-cannot-write-here"));
        let t = TaskId::random(JobId(1));
        store.put(t.return_id(0), val(80, 1), true).unwrap();
        let e = store.put(t.return_id(1), val(80, 2), true).unwrap_err();
        assert!(matches!(e, StoreError::SpillFailed { .. }), "{e}");
        assert!(e.to_string().contains("spilling"));
        // Nothing was lost.
        assert_eq!(store.get(&t.return_id(0)).unwrap().unwrap().data.len(), 80);
    }
}
