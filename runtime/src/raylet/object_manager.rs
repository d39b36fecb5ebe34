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
use shoal_proto::v1::raylet_client::RayletClient;
use tokio::sync::{oneshot, Semaphore};
use tonic::transport::Channel;

use crate::ids::ObjectId;
use crate::raylet::object_store::ObjectStore;
use crate::raylet::peers::Peers;

/// Objects at least this large (per range) are pulled as parallel ranges.
const PARALLEL_RANGE_BYTES: u64 = 16 << 20;
/// Most ranges pulled at once for one object.
const MAX_PARALLEL_RANGES: u64 = 2;
/// Largest buffer allocated up front from a size another process reported.
const UPFRONT_RESERVE: u64 = 1 << 30;
/// Largest object pulled into a buffer sized in advance.
const MAX_PREALLOCATED: u64 = 16 << 30;

/// Pulls `length` bytes (0: all) of `id` from `offset` into `buf` over one
/// stream, checking offsets, sizes and the range's checksum.
async fn pull_range(
    mut client: RayletClient<Channel>,
    id: ObjectId,
    offset: u64,
    length: u64,
    mut buf: BytesMut,
) -> Result<(i32, BytesMut), String> {
    let mut stream = client
        .pull_object(pb::PullObjectRequest { object_id: id.to_bytes(), offset, length })
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    let mut crc = crc32fast::Hasher::new();
    let mut format = 0;
    let mut want = length;
    let mut first = true;
    loop {
        let chunk = stream.message().await.map_err(|s| s.message().to_string())?;
        let Some(chunk) = chunk else { return Err("stream ended before the last chunk".to_string()) };
        if first {
            format = chunk.format;
            if length == 0 {
                want = chunk.total_size.saturating_sub(offset);
                // The size comes from the peer: reserve a bounded amount up
                // front and let a larger object grow the buffer as it arrives.
                buf.reserve(want.min(UPFRONT_RESERVE) as usize);
            }
            first = false;
        }
        if chunk.offset != offset + buf.len() as u64 {
            return Err(format!("chunk at offset {} arrived, expected {}", chunk.offset, offset + buf.len() as u64));
        }
        if buf.len() as u64 + chunk.data.len() as u64 > want {
            return Err("more bytes than asked for".to_string());
        }
        // Checksum as chunks arrive, overlapping the transfer.
        crc.update(&chunk.data);
        buf.extend_from_slice(&chunk.data);
        if chunk.last {
            if buf.len() as u64 != want {
                return Err(format!("got {} of {want} bytes", buf.len()));
            }
            let got = crc.finalize();
            if got != chunk.crc32 {
                return Err(format!("checksum mismatch: {got:08x} != {:08x}", chunk.crc32));
            }
            return Ok((format, buf));
        }
    }
}

/// Transfer statistics.
#[derive(Default)]
pub(crate) struct TransferStats {
    pub pulled_bytes: AtomicU64,
    pub pulled_objects: AtomicU64,
    pub served_bytes: AtomicU64,
    pub served_objects: AtomicU64,
    /// Microseconds spent in successful pulls.
    pub pull_micros: AtomicU64,
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
            match self.transfer_from(id, loc, size_hint).await {
                Ok(()) => return Ok(()),
                Err(e) => errors.push(format!("{}: {e}", loc.address)),
            }
        }
        Err(errors.join("; "))
    }

    async fn transfer_from(&self, id: ObjectId, loc: &pb::Location, size_hint: u64) -> Result<(), String> {
        let started = std::time::Instant::now();
        let client = self.peers.client(&loc.address).ok_or_else(|| format!("bad address {}", loc.address))?;
        // The owner's record of the size sizes the buffer; past a sane bound,
        // fall back to one stream that grows as bytes arrive.
        let ranges = if size_hint > MAX_PREALLOCATED {
            1
        } else {
            (size_hint / PARALLEL_RANGE_BYTES).clamp(1, MAX_PARALLEL_RANGES)
        };
        let (format, data) = if ranges <= 1 {
            pull_range(client, id, 0, 0, BytesMut::new()).await?
        } else {
            // Each range fills its own slice of one buffer; the slices are
            // joined back without copying.
            let total = size_hint as usize;
            let part = total.div_ceil(ranges as usize);
            let mut rest = BytesMut::with_capacity(total);
            let mut tasks = tokio::task::JoinSet::new();
            let mut offset = 0usize;
            let mut index = 0usize;
            while offset < total {
                let len = part.min(total - offset);
                let tail = rest.split_off(len);
                let buf = std::mem::replace(&mut rest, tail);
                let c = client.clone();
                let at = offset as u64;
                tasks.spawn(async move { (index, pull_range(c, id, at, len as u64, buf).await) });
                offset += len;
                index += 1;
            }
            let mut parts: Vec<Option<(i32, BytesMut)>> = (0..index).map(|_| None).collect();
            while let Some(done) = tasks.join_next().await {
                let (i, r) = done.map_err(|e| format!("range transfer failed: {e}"))?;
                parts[i] = Some(r?);
            }
            let mut joined = BytesMut::new();
            let mut format = 0;
            for p in parts {
                let (f, b) = p.ok_or("a range is missing")?;
                format = f;
                joined.unsplit(b);
            }
            if joined.len() != total {
                return Err(format!(
                    "got {} of {total} bytes (the object's size differs from its owner's record)",
                    joined.len()
                ));
            }
            (format, joined)
        };
        let len = data.len() as u64;
        let value = pb::ObjectValue { format, data: data.freeze() };
        self.store.put(id, value, false).map_err(|e| e.to_string())?;
        self.stats.pulled_bytes.fetch_add(len, Ordering::Relaxed);
        self.stats.pulled_objects.fetch_add(1, Ordering::Relaxed);
        self.stats.pull_micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// The chunks of a range of a local object (`length` 0: to the end), for
    /// a peer's pull: produced lazily, with the range's checksum computed as
    /// the chunks go out.
    pub(crate) fn serve(
        &self,
        id: &ObjectId,
        offset: u64,
        length: u64,
    ) -> Result<impl Iterator<Item = pb::ObjectChunk> + Send + 'static, String> {
        let v = self.store.get(id).ok_or_else(|| format!("object {id} is not here"))?;
        let total = v.data.len() as u64;
        if offset > total || length > total - offset {
            return Err(format!("range {offset}+{length} is outside object {id} of {total} bytes"));
        }
        let end_at = if length == 0 { total } else { offset + length } as usize;
        let chunk = self.chunk_size;
        let mut crc = crc32fast::Hasher::new();
        let mut off = offset as usize;
        let mut first = true;
        let mut done = false;
        let iter = std::iter::from_fn(move || {
            if done {
                return None;
            }
            let end = (off + chunk).min(end_at);
            let last = end == end_at;
            let data = v.data.slice(off..end);
            crc.update(&data);
            let c = pb::ObjectChunk {
                total_size: if first { total } else { 0 },
                format: v.format,
                offset: off as u64,
                data,
                crc32: if last { crc.clone().finalize() } else { 0 },
                last,
            };
            first = false;
            off = end;
            done = last;
            Some(c)
        });
        let total = (end_at as u64) - offset;
        self.stats.served_bytes.fetch_add(total, Ordering::Relaxed);
        self.stats.served_objects.fetch_add(1, Ordering::Relaxed);
        Ok(iter)
    }
}
