//! The object manager: pulls copies of objects from the raylets that hold
//! them, and serves this node's objects to others.
//!
//! A transfer is one server-streaming call returning fixed-size chunks, with
//! a CRC32 of the whole object checked on arrival. Concurrent pulls of one
//! object coalesce into a single transfer. The bytes of all transfers in
//! progress are bounded by a budget (a semaphore counted in chunks), so many
//! simultaneous pulls queue rather than exhaust memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use shoal_proto::v1 as pb;
use tokio::sync::{oneshot, Semaphore};

use crate::ids::ObjectId;
use crate::raylet::object_store::ObjectStore;
use crate::raylet::peers::Peers;

/// Transfer statistics.
#[derive(Default)]
pub(crate) struct TransferStats {
    pub pulled_bytes: AtomicU64,
    pub pulled_objects: AtomicU64,
    pub served_bytes: AtomicU64,
    pub served_objects: AtomicU64,
}

type Waiters = Vec<oneshot::Sender<Result<(), String>>>;

pub(crate) struct ObjectManager {
    store: Arc<ObjectStore>,
    peers: Arc<Peers>,
    chunk_size: usize,
    budget: Arc<Semaphore>,
    budget_chunks: u32,
    in_flight: Mutex<HashMap<ObjectId, Waiters>>,
    pub stats: TransferStats,
}

impl ObjectManager {
    pub(crate) fn new(store: Arc<ObjectStore>, peers: Arc<Peers>, chunk_size: usize, max_bytes_in_flight: u64) -> Self {
        let chunk_size = chunk_size.max(4096);
        let budget_chunks = (max_bytes_in_flight / chunk_size as u64).clamp(1, u32::MAX as u64 / 2) as u32;
        ObjectManager {
            store,
            peers,
            chunk_size,
            budget: Arc::new(Semaphore::new(budget_chunks as usize)),
            budget_chunks,
            in_flight: Mutex::new(HashMap::new()),
            stats: TransferStats::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectId, Waiters>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes sure a copy of `id` is in the local store, pulling it from one
    /// of `locations` if needed.
    pub(crate) async fn pull(&self, id: ObjectId, locations: &[pb::Location], size_hint: u64) -> Result<(), String> {
        if self.store.contains(&id) {
            return Ok(());
        }
        let rx = {
            let mut map = self.lock();
            match map.get_mut(&id) {
                Some(waiters) => {
                    let (tx, rx) = oneshot::channel();
                    waiters.push(tx);
                    Some(rx)
                }
                None => {
                    map.insert(id, Vec::new());
                    None
                }
            }
        };
        if let Some(rx) = rx {
            return rx.await.unwrap_or_else(|_| Err("the transfer was abandoned".to_string()));
        }
        let result = self.transfer(id, locations, size_hint).await;
        let waiters = self.lock().remove(&id).unwrap_or_default();
        for w in waiters {
            let _ = w.send(result.clone());
        }
        result
    }

    async fn transfer(&self, id: ObjectId, locations: &[pb::Location], size_hint: u64) -> Result<(), String> {
        if locations.is_empty() {
            return Err(format!("no node holds a copy of object {id}"));
        }
        let chunks = (size_hint.div_ceil(self.chunk_size as u64)).clamp(1, self.budget_chunks as u64) as u32;
        let _permit = self.budget.acquire_many(chunks).await.map_err(|e| e.to_string())?;
        let mut errors = Vec::new();
        for loc in locations {
            match self.transfer_from(id, loc).await {
                Ok(()) => return Ok(()),
                Err(e) => errors.push(format!("{}: {e}", loc.address)),
            }
        }
        Err(errors.join("; "))
    }

    async fn transfer_from(&self, id: ObjectId, loc: &pb::Location) -> Result<(), String> {
        let mut client = self.peers.client(&loc.address).ok_or_else(|| format!("bad address {}", loc.address))?;
        let mut stream = client
            .pull_object(pb::PullObjectRequest { object_id: id.to_bytes() })
            .await
            .map_err(|s| s.message().to_string())?
            .into_inner();
        let mut buf = BytesMut::new();
        let mut crc = crc32fast::Hasher::new();
        let mut format = 0;
        let mut total = 0u64;
        let mut first = true;
        loop {
            let chunk = stream.message().await.map_err(|s| s.message().to_string())?;
            let Some(chunk) = chunk else { return Err("stream ended before the last chunk".to_string()) };
            if first {
                total = chunk.total_size;
                format = chunk.format;
                buf.reserve(total as usize);
                first = false;
            }
            if chunk.offset != buf.len() as u64 {
                return Err(format!("chunk at offset {} arrived, expected {}", chunk.offset, buf.len()));
            }
            if buf.len() as u64 + chunk.data.len() as u64 > total {
                return Err("more bytes than announced".to_string());
            }
            // Checksum as chunks arrive, overlapping the transfer.
            crc.update(&chunk.data);
            buf.extend_from_slice(&chunk.data);
            if chunk.last {
                if buf.len() as u64 != total {
                    return Err(format!("got {} of {total} bytes", buf.len()));
                }
                let got = crc.clone().finalize();
                if got != chunk.crc32 {
                    return Err(format!("checksum mismatch: {got:08x} != {:08x}", chunk.crc32));
                }
                break;
            }
        }
        let len = buf.len() as u64;
        let value = pb::ObjectValue { format, data: buf.freeze() };
        self.store.put(id, value, false).map_err(|e| e.to_string())?;
        self.stats.pulled_bytes.fetch_add(len, Ordering::Relaxed);
        self.stats.pulled_objects.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The chunks of a local object, for a peer's pull: produced lazily,
    /// with the checksum computed as the chunks go out.
    pub(crate) fn serve(&self, id: &ObjectId) -> Option<impl Iterator<Item = pb::ObjectChunk> + Send + 'static> {
        let v = self.store.get(id)?;
        let total = v.data.len() as u64;
        let chunk = self.chunk_size;
        let mut crc = crc32fast::Hasher::new();
        let mut off = 0usize;
        let mut done = false;
        let iter = std::iter::from_fn(move || {
            if done {
                return None;
            }
            let end = (off + chunk).min(v.data.len());
            let last = end == v.data.len();
            let data = v.data.slice(off..end);
            crc.update(&data);
            let c = pb::ObjectChunk {
                total_size: if off == 0 { total } else { 0 },
                format: v.format,
                offset: off as u64,
                data,
                crc32: if last { crc.clone().finalize() } else { 0 },
                last,
            };
            off = end;
            done = last;
            Some(c)
        });
        self.stats.served_bytes.fetch_add(total, Ordering::Relaxed);
        self.stats.served_objects.fetch_add(1, Ordering::Relaxed);
        Some(iter)
    }
}
