//! The per-node object store: values by object id, within a byte budget.
//!
//! Primary copies (results of tasks that ran here, objects put here) stay
//! pinned until their owner frees them. Secondary copies (pulled from other
//! nodes) are evicted least-recently-used first when room is needed. A
//! primary copy is never dropped to make room: a put that cannot fit fails
//! with [`StoreError::Full`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use shoal_proto::v1 as pb;
use thiserror::Error;

use crate::ids::ObjectId;
use crate::resources::human_bytes;

/// A value that does not fit.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// Not enough room even after evicting every secondary copy.
    #[error("object store full: {object} needs {}, {} of {} used by pinned objects", human_bytes(*.needed), human_bytes(*.pinned), human_bytes(*.capacity))]
    Full {
        /// The object that did not fit.
        object: ObjectId,
        /// Its size.
        needed: u64,
        /// Bytes held by pinned (primary) copies.
        pinned: u64,
        /// The budget.
        capacity: u64,
    },
}

struct Entry {
    value: pb::ObjectValue,
    primary: bool,
    /// Position in the LRU order (secondary copies only).
    tick: u64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<ObjectId, Entry>,
    lru: BTreeMap<u64, ObjectId>,
    next_tick: u64,
    used: u64,
    pinned: u64,
    evicted: u64,
}

/// A snapshot of the store's use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Bytes held.
    pub used: u64,
    /// Byte budget.
    pub capacity: u64,
    /// Objects held.
    pub count: u64,
    /// Bytes held by primary copies.
    pub pinned: u64,
    /// Secondary copies evicted so far.
    pub evicted: u64,
}

/// The object store of one raylet. All methods take `&self`.
pub struct ObjectStore {
    inner: Mutex<Inner>,
    capacity: u64,
}

impl ObjectStore {
    /// An empty store holding at most `capacity` bytes.
    pub fn new(capacity: u64) -> Self {
        ObjectStore { inner: Mutex::new(Inner::default()), capacity }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a copy. Storing an object already held upgrades it to primary
    /// when asked and otherwise keeps the existing copy.
    pub fn put(&self, id: ObjectId, value: pb::ObjectValue, primary: bool) -> Result<(), StoreError> {
        let size = value.data.len() as u64;
        let mut st = self.lock();
        if let Some(e) = st.entries.get_mut(&id) {
            if primary && !e.primary {
                e.primary = true;
                let tick = e.tick;
                st.lru.remove(&tick);
                st.pinned += size;
            }
            return Ok(());
        }
        if size > self.capacity.saturating_sub(st.pinned) {
            return Err(StoreError::Full { object: id, needed: size, pinned: st.pinned, capacity: self.capacity });
        }
        while st.used + size > self.capacity {
            let Some((&tick, &victim)) = st.lru.iter().next() else { break };
            st.lru.remove(&tick);
            if let Some(e) = st.entries.remove(&victim) {
                st.used -= e.value.data.len() as u64;
                st.evicted += 1;
            }
        }
        let tick = st.next_tick;
        st.next_tick += 1;
        if primary {
            st.pinned += size;
        } else {
            st.lru.insert(tick, id);
        }
        st.used += size;
        st.entries.insert(id, Entry { value, primary, tick });
        Ok(())
    }

    /// The value, marking it recently used.
    pub fn get(&self, id: &ObjectId) -> Option<pb::ObjectValue> {
        let mut st = self.lock();
        let st = &mut *st;
        let e = st.entries.get_mut(id)?;
        if !e.primary {
            st.lru.remove(&e.tick);
            e.tick = st.next_tick;
            st.next_tick += 1;
            st.lru.insert(e.tick, *id);
        }
        Some(e.value.clone())
    }

    /// Whether a copy is here.
    pub fn contains(&self, id: &ObjectId) -> bool {
        self.lock().entries.contains_key(id)
    }

    /// Size of the copy held here.
    pub fn size_of(&self, id: &ObjectId) -> Option<u64> {
        self.lock().entries.get(id).map(|e| e.value.data.len() as u64)
    }

    /// Drops the copy held here, if any.
    pub fn delete(&self, id: &ObjectId) -> bool {
        let mut st = self.lock();
        match st.entries.remove(id) {
            Some(e) => {
                let size = e.value.data.len() as u64;
                st.used -= size;
                if e.primary {
                    st.pinned -= size;
                } else {
                    st.lru.remove(&e.tick);
                }
                true
            }
            None => false,
        }
    }

    /// Current use.
    pub fn stats(&self) -> StoreStats {
        let st = self.lock();
        StoreStats {
            used: st.used,
            capacity: self.capacity,
            count: st.entries.len() as u64,
            pinned: st.pinned,
            evicted: st.evicted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{JobId, TaskId};

    fn val(n: usize) -> pb::ObjectValue {
        pb::ObjectValue { format: pb::Format::Raw as i32, data: bytes::Bytes::from(vec![7u8; n]) }
    }

    #[test]
    fn secondary_copies_are_evicted_lru_first_and_primaries_never() {
        let store = ObjectStore::new(100);
        let t = TaskId::random(JobId(1));
        let (a, b, c, d) = (t.return_id(0), t.return_id(1), t.return_id(2), t.return_id(3));
        store.put(a, val(40), true).unwrap();
        store.put(b, val(30), false).unwrap();
        store.put(c, val(30), false).unwrap();
        // Touch b so c is the least recently used.
        assert!(store.get(&b).is_some());
        store.put(d, val(30), false).unwrap();
        assert!(store.contains(&a));
        assert!(store.contains(&b));
        assert!(!store.contains(&c));
        assert!(store.contains(&d));
        assert_eq!(store.stats().evicted, 1);
        // A primary that cannot fit beside the pinned bytes is refused.
        let e = store.put(t.return_id(4), val(70), true).unwrap_err();
        assert!(e.to_string().contains("object store full"));
        assert!(store.delete(&a));
        assert_eq!(store.stats().pinned, 0);
        store.put(t.return_id(4), val(70), true).unwrap();
        assert_eq!(store.stats().used, 70);
    }
}
