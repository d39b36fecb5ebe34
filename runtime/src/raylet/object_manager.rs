//! The object manager: pulls copies of objects from the raylets that hold
//! them, and serves this node's objects to others.
//!
//! A transfer is one server-streaming call returning fixed-size chunks, with
//! a CRC32 of the whole object checked on arrival. Concurrent pulls of one
//! object coalesce into a single transfer. The bytes of all transfers in
//! progress are bounded by a budget (a semaphore counted in chunks), so many
//! simultaneous pulls queue rather than exhaust memory.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use shoal_proto::v1 as pb;
use tokio::sync::{oneshot, Semaphore};
use tokio_stream::{Stream, StreamExt};

use crate::error::ErrorKind;
use crate::ids::ObjectId;
use crate::raylet::object_store::{ObjectStore, StoreError};
use crate::raylet::peers::Peers;

/// Objects at least this large (per range) are pulled as parallel ranges.
const PARALLEL_RANGE_BYTES: u64 = 16 << 20;
/// Most ranges pulled at once for one object.
const MAX_PARALLEL_RANGES: u64 = 2;
/// Largest buffer allocated up front from a size another process reported.
const UPFRONT_RESERVE: u64 = 1 << 30;
/// Largest object pulled into a buffer sized in advance.
const MAX_PREALLOCATED: u64 = 16 << 30;

/// Why one source could not deliver a copy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TransferFault {
    /// The source could not be reached, broke off, or does not hold the object.
    #[error("{0}")]
    Unreachable(String),
    /// The bytes arrived, but not as sent: a checksum mismatch, a stream that
    /// ended before the size it announced, chunks out of place.
    #[error("the transfer arrived damaged: {0}")]
    Corrupt(String),
}

/// Why a pull failed. Each has its own [`ErrorKind`], so that a full store
/// or a damaged transfer is not reported as a lost object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PullError {
    /// Nobody holds a copy.
    #[error("no node holds a copy of object {0}")]
    NoCopy(ObjectId),
    /// Every source was tried and failed; one entry per source, in order.
    #[error("object {object}: {}", .failures.iter().map(|(a, f)| format!("{a}: {f}")).collect::<Vec<_>>().join("; "))]
    Sources {
        /// The object.
        object: ObjectId,
        /// Each source's address and what went wrong there.
        failures: Vec<(String, TransferFault)>,
    },
    /// The copy arrived but this node's store has no room for it.
    #[error(transparent)]
    StoreFull(StoreError),
    /// The raylet is shutting down.
    #[error("the pull was interrupted: {0}")]
    Interrupted(String),
}

impl PullError {
    /// The kind a task or a `get` that needed the object fails with. A damaged
    /// transfer is worth retrying (the next attempt may come through a
    /// healthy path) but keeps its own kind; a full store is not a loss.
    pub(crate) fn kind(&self) -> ErrorKind {
        match self {
            PullError::NoCopy(_) => ErrorKind::ObjectLost,
            PullError::Sources { failures, .. } => {
                if failures.iter().any(|(_, f)| matches!(f, TransferFault::Corrupt(_))) {
                    ErrorKind::TransferCorrupt
                } else {
                    ErrorKind::ObjectLost
                }
            }
            PullError::StoreFull(_) => ErrorKind::ObjectStoreFull,
            PullError::Interrupted(_) => ErrorKind::Internal,
        }
    }
}

/// Reads the chunks of one range (`length` 0: from `offset` to the end, sized
/// by the first chunk) into `buf`, checking offsets, sizes and the range's
/// checksum. Ending early is an error, never a shorter object.
async fn read_range<S>(
    mut stream: S,
    offset: u64,
    length: u64,
    mut buf: BytesMut,
) -> Result<(i32, BytesMut), TransferFault>
where
    S: Stream<Item = Result<pb::ObjectChunk, tonic::Status>> + Unpin,
{
    let mut crc = crc32fast::Hasher::new();
    let mut format = 0;
    let mut want = length;
    let mut first = true;
    loop {
        let chunk = match stream.next().await {
            Some(Ok(c)) => c,
            Some(Err(s)) => return Err(TransferFault::Unreachable(s.message().to_string())),
            None => {
                return Err(TransferFault::Corrupt(format!(
                    "the stream ended after {} of {want} bytes, before the last chunk",
                    buf.len()
                )))
            }
        };
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
            return Err(TransferFault::Corrupt(format!(
                "chunk at offset {} arrived, expected {}",
                chunk.offset,
                offset + buf.len() as u64
            )));
        }
        if buf.len() as u64 + chunk.data.len() as u64 > want {
            return Err(TransferFault::Corrupt(format!("more than the {want} bytes asked for")));
        }
        // Checksum as chunks arrive, overlapping the transfer.
        crc.update(&chunk.data);
        buf.extend_from_slice(&chunk.data);
        if chunk.last {
            if buf.len() as u64 != want {
                return Err(TransferFault::Corrupt(format!("got {} of {want} bytes", buf.len())));
            }
            let got = crc.finalize();
            if got != chunk.crc32 {
                return Err(TransferFault::Corrupt(format!("checksum mismatch: {got:08x} != {:08x}", chunk.crc32)));
            }
            return Ok((format, buf));
        }
    }
}

/// How a pull of an object of `size` bytes (the owner's record) is split:
/// `None` for one stream of the whole object, sized by what the peer
/// announces; otherwise the `(offset, length)` of each parallel range, in
/// order, covering the object exactly.
fn plan_ranges(size: u64) -> Option<Vec<(u64, u64)>> {
    // Past a sane bound, do not trust the record with one allocation.
    if size > MAX_PREALLOCATED {
        return None;
    }
    let ranges = (size / PARALLEL_RANGE_BYTES).clamp(1, MAX_PARALLEL_RANGES);
    if ranges <= 1 {
        return None;
    }
    let part = size.div_ceil(ranges);
    let mut out = Vec::with_capacity(ranges as usize);
    let mut offset = 0;
    while offset < size {
        let len = part.min(size - offset);
        out.push((offset, len));
        offset += len;
    }
    Some(out)
}

/// Pulls `ranges` of an object of `total` bytes in parallel with `fetch`
/// (offset, length, the buffer to fill), each into its own slice of one
/// buffer, and joins the slices back without copying.
async fn pull_ranges<F, Fut>(ranges: &[(u64, u64)], total: u64, fetch: F) -> Result<(i32, BytesMut), TransferFault>
where
    F: Fn(u64, u64, BytesMut) -> Fut,
    Fut: Future<Output = Result<(i32, BytesMut), TransferFault>> + Send + 'static,
{
    let mut rest = BytesMut::with_capacity(total as usize);
    let mut tasks = tokio::task::JoinSet::new();
    for (index, &(offset, len)) in ranges.iter().enumerate() {
        let tail = rest.split_off(len as usize);
        let buf = std::mem::replace(&mut rest, tail);
        let range = fetch(offset, len, buf);
        tasks.spawn(async move { (index, range.await) });
    }
    let mut parts: Vec<Option<(i32, BytesMut)>> = ranges.iter().map(|_| None).collect();
    while let Some(done) = tasks.join_next().await {
        let (i, r) = done.map_err(|e| TransferFault::Unreachable(format!("a range transfer failed: {e}")))?;
        parts[i] = Some(r?);
    }
    let mut joined = BytesMut::new();
    let mut format = 0;
    for p in parts {
        let (f, b) = p.ok_or_else(|| TransferFault::Corrupt("a range is missing".into()))?;
        format = f;
        joined.unsplit(b);
    }
    if joined.len() as u64 != total {
        return Err(TransferFault::Corrupt(format!(
            "got {} of {total} bytes (the object's size differs from its owner's record)",
            joined.len()
        )));
    }
    Ok((format, joined))
}

/// The chunks of bytes `offset..offset+length` (`length` 0: to the end) of
/// `v`, produced lazily, with the range's checksum computed as they go out
/// and sent on the last one.
fn chunks(
    v: pb::ObjectValue,
    offset: u64,
    length: u64,
    chunk: usize,
) -> Result<(u64, impl Iterator<Item = pb::ObjectChunk> + Send + 'static), String> {
    let total = v.data.len() as u64;
    if offset > total || length > total - offset {
        return Err(format!("range {offset}+{length} is outside an object of {total} bytes"));
    }
    let end_at = if length == 0 { total } else { offset + length } as usize;
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
    Ok((end_at as u64 - offset, iter))
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

/// Pulls in progress, each with the callers waiting for it.
type Waiters = Vec<oneshot::Sender<Result<(), PullError>>>;

pub(crate) struct ObjectManager {
    store: Arc<ObjectStore>,
    peers: Arc<Peers>,
    chunk_size: usize,
    budget: Arc<Semaphore>,
    budget_chunks: u32,
    in_flight: Arc<Mutex<HashMap<ObjectId, Waiters>>>,
    pub stats: TransferStats,
}

/// Removes a pull from the in-flight table when its leader ends, even by
/// being dropped: the waiters then see their sender go and pull themselves,
/// instead of waiting for a transfer nobody runs.
struct InFlight {
    table: Arc<Mutex<HashMap<ObjectId, Waiters>>>,
    id: ObjectId,
}

impl InFlight {
    fn finish(self, result: &Result<(), PullError>) {
        for w in lock(&self.table).remove(&self.id).unwrap_or_default() {
            let _ = w.send(result.clone());
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // After `finish` the entry is gone and this is a no-op.
        lock(&self.table).remove(&self.id);
    }
}

fn lock(table: &Mutex<HashMap<ObjectId, Waiters>>) -> std::sync::MutexGuard<'_, HashMap<ObjectId, Waiters>> {
    table.lock().unwrap_or_else(|p| p.into_inner())
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
            in_flight: Arc::default(),
            stats: TransferStats::default(),
        }
    }

    /// Makes sure a copy of `id` is in the local store, pulling it from one
    /// of `locations` (tried in turn) if needed. Concurrent pulls of one
    /// object share one transfer.
    pub(crate) async fn pull_object(
        &self,
        id: ObjectId,
        locations: &[pb::Location],
        size_hint: u64,
    ) -> Result<(), PullError> {
        loop {
            if self.store.contains(&id) {
                return Ok(());
            }
            let rx = {
                let mut map = lock(&self.in_flight);
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
            match rx {
                Some(rx) => match rx.await {
                    Ok(result) => return result,
                    // The leader was dropped mid-transfer: start over.
                    Err(_) => continue,
                },
                None => {
                    let guard = InFlight { table: self.in_flight.clone(), id };
                    let result = self.transfer(id, locations, size_hint).await;
                    guard.finish(&result);
                    return result;
                }
            }
        }
    }

    async fn transfer(&self, id: ObjectId, locations: &[pb::Location], size_hint: u64) -> Result<(), PullError> {
        if locations.is_empty() {
            return Err(PullError::NoCopy(id));
        }
        let chunks = (size_hint.div_ceil(self.chunk_size as u64)).clamp(1, self.budget_chunks as u64) as u32;
        // The semaphore is never closed, so this only waits.
        let _permit = self.budget.acquire_many(chunks).await.ok();
        let mut failures = Vec::new();
        for loc in locations {
            let started = std::time::Instant::now();
            match self.transfer_from(id, &loc.address, size_hint).await {
                Ok(value) => {
                    let len = value.data.len() as u64;
                    self.store_copy(id, value).await?;
                    self.stats.pulled_bytes.fetch_add(len, Ordering::Relaxed);
                    self.stats.pulled_objects.fetch_add(1, Ordering::Relaxed);
                    self.stats.pull_micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                    return Ok(());
                }
                Err(f) => failures.push((loc.address.clone(), f)),
            }
        }
        Err(PullError::Sources { object: id, failures })
    }

    /// Keeps a pulled copy (secondary, evictable) in the local store.
    async fn store_copy(&self, id: ObjectId, value: pb::ObjectValue) -> Result<(), PullError> {
        // Storing may spill other objects to disk: off the async threads.
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.put(id, value, false)).await {
            Ok(stored) => stored.map_err(PullError::StoreFull),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(PullError::Interrupted(format!("storing object {id}: {e}"))),
        }
    }

    /// One copy of `id` from the raylet at `address`, whole or as parallel ranges.
    async fn transfer_from(
        &self,
        id: ObjectId,
        address: &str,
        size_hint: u64,
    ) -> Result<pb::ObjectValue, TransferFault> {
        let client =
            self.peers.client(address).ok_or_else(|| TransferFault::Unreachable(format!("bad address {address}")))?;
        let fetch = move |offset: u64, length: u64, buf: BytesMut| {
            let mut client = client.clone();
            async move {
                let stream = client
                    .pull_object(pb::PullObjectRequest { object_id: id.to_bytes(), offset, length })
                    .await
                    .map_err(|s| TransferFault::Unreachable(s.message().to_string()))?
                    .into_inner();
                read_range(stream, offset, length, buf).await
            }
        };
        let (format, data) = match plan_ranges(size_hint) {
            None => fetch(0, 0, BytesMut::new()).await?,
            Some(ranges) => pull_ranges(&ranges, size_hint, fetch).await?,
        };
        Ok(pb::ObjectValue { format, data: data.freeze(), nested_refs: Vec::new() })
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
        let v = self.store.get(id).map_err(|e| e.to_string())?.ok_or_else(|| format!("object {id} is not here"))?;
        let (bytes, iter) = chunks(v, offset, length, self.chunk_size).map_err(|e| format!("object {id}: {e}"))?;
        self.stats.served_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.stats.served_objects.fetch_add(1, Ordering::Relaxed);
        Ok(iter)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::ids::{JobId, TaskId};

    const MIB: u64 = 1 << 20;

    fn object(size: u64) -> pb::ObjectValue {
        let data: Vec<u8> = (0..size).map(|i| ((i * 31 + 7) % 251) as u8).collect();
        pb::ObjectValue { format: pb::Format::Raw as i32, data: Bytes::from(data), ..Default::default() }
    }

    /// The chunks a peer would send for a range, as the stream the puller reads.
    fn served(v: &pb::ObjectValue, offset: u64, length: u64, chunk: usize) -> Vec<pb::ObjectChunk> {
        chunks(v.clone(), offset, length, chunk).expect("range inside the object").1.collect()
    }

    fn stream(c: Vec<pb::ObjectChunk>) -> impl Stream<Item = Result<pb::ObjectChunk, tonic::Status>> + Unpin {
        tokio_stream::iter(c.into_iter().map(Ok))
    }

    fn corrupt(r: Result<(i32, BytesMut), TransferFault>) -> String {
        match r {
            Err(TransferFault::Corrupt(why)) => why,
            other => panic!("expected a damaged transfer, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_whole_object_arrives_intact_over_one_stream() {
        let v = object(10 * 4096 + 17);
        let (format, got) = read_range(stream(served(&v, 0, 0, 4096)), 0, 0, BytesMut::new()).await.unwrap();
        assert_eq!(format, pb::Format::Raw as i32);
        assert_eq!(got.freeze(), v.data);
    }

    #[test]
    fn a_large_pull_is_split_into_parallel_ranges_that_cover_it_exactly() {
        for small in [0, 1, MIB, 2 * PARALLEL_RANGE_BYTES - 1] {
            assert_eq!(plan_ranges(small), None, "{small} bytes go as one stream");
        }
        assert_eq!(plan_ranges(MAX_PREALLOCATED + 1), None, "a huge record is not trusted with one buffer");
        for size in [2 * PARALLEL_RANGE_BYTES, 33 * MIB + 1, 100 * MIB + 3, MAX_PREALLOCATED] {
            let r = plan_ranges(size).expect("split");
            assert_eq!(r.len() as u64, MAX_PARALLEL_RANGES, "{size}");
            let mut next = 0;
            for (offset, len) in &r {
                assert_eq!(*offset, next, "ranges are contiguous");
                assert!(*len > 0);
                next += len;
            }
            assert_eq!(next, size, "ranges cover the object exactly");
        }
    }

    #[tokio::test]
    async fn parallel_ranges_run_at_once_and_join_into_the_whole_object() {
        let v = object(33 * MIB + 5);
        let size = v.data.len() as u64;
        let ranges = plan_ranges(size).expect("split");
        // Every range must be in flight before any may finish: a serial pull
        // would wait here forever.
        let all_started = Arc::new(tokio::sync::Barrier::new(ranges.len()));
        let calls = Arc::new(AtomicUsize::new(0));
        let fetch = |offset: u64, length: u64, buf: BytesMut| {
            let (v, all_started, calls) = (v.clone(), all_started.clone(), calls.clone());
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                assert!(buf.capacity() as u64 >= length, "each range fills its own preallocated slice");
                all_started.wait().await;
                read_range(stream(served(&v, offset, length, MIB as usize)), offset, length, buf).await
            }
        };
        let (_, got) =
            tokio::time::timeout(Duration::from_secs(30), pull_ranges(&ranges, size, fetch)).await.unwrap().unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), ranges.len());
        assert_eq!(got.freeze(), v.data);
    }

    #[tokio::test]
    async fn a_stream_that_ends_before_the_announced_size_is_an_error_not_a_shorter_object() {
        let v = object(10 * 4096);
        let mut c = served(&v, 0, 0, 4096);
        c.truncate(6);
        let why = corrupt(read_range(stream(c), 0, 0, BytesMut::new()).await);
        assert!(why.contains("ended after 24576 of 40960 bytes"), "{why}");
        // A range ends early the same way.
        let mut c = served(&v, 4096, 8192, 4096);
        c.pop();
        corrupt(read_range(stream(c), 4096, 8192, BytesMut::new()).await);
        // A last chunk that comes too soon is no better.
        let mut c = served(&v, 0, 0, 4096);
        c.truncate(3);
        c[2].last = true;
        let why = corrupt(read_range(stream(c), 0, 0, BytesMut::new()).await);
        assert!(why.contains("got 12288 of 40960 bytes"), "{why}");
    }

    #[tokio::test]
    async fn a_checksum_mismatch_is_detected() {
        let v = object(5 * 4096);
        let mut c = served(&v, 0, 0, 4096);
        let mut damaged = c[2].data.to_vec();
        damaged[100] ^= 0x01;
        c[2].data = Bytes::from(damaged);
        let why = corrupt(read_range(stream(c), 0, 0, BytesMut::new()).await);
        assert!(why.contains("checksum mismatch"), "{why}");
    }

    #[tokio::test]
    async fn chunks_out_of_place_or_beyond_the_size_are_rejected() {
        let v = object(5 * 4096);
        let mut c = served(&v, 0, 0, 4096);
        c.swap(1, 2);
        assert!(corrupt(read_range(stream(c), 0, 0, BytesMut::new()).await).contains("expected 4096"));
        // A range answered with the whole object overflows what was asked.
        let c = served(&v, 0, 0, 4096);
        assert!(corrupt(read_range(stream(c), 0, 4096 + 1, BytesMut::new()).await).contains("more than"));
    }

    #[tokio::test]
    async fn a_peer_that_breaks_off_is_unreachable_not_corrupt() {
        let v = object(3 * 4096);
        let mut c: Vec<Result<pb::ObjectChunk, tonic::Status>> = served(&v, 0, 0, 4096).into_iter().map(Ok).collect();
        c[1] = Err(tonic::Status::unavailable("connection reset"));
        let r = read_range(tokio_stream::iter(c), 0, 0, BytesMut::new()).await;
        assert_eq!(r.unwrap_err(), TransferFault::Unreachable("connection reset".into()));
    }

    #[test]
    fn each_pull_failure_has_its_own_kind() {
        let id = TaskId::random(JobId(1)).return_id(0);
        let unreachable = ("a:1".to_string(), TransferFault::Unreachable("refused".into()));
        let damaged = ("b:2".to_string(), TransferFault::Corrupt("checksum mismatch".into()));
        assert_eq!(PullError::NoCopy(id).kind(), ErrorKind::ObjectLost);
        let lost = PullError::Sources { object: id, failures: vec![unreachable.clone()] };
        assert_eq!(lost.kind(), ErrorKind::ObjectLost);
        let e = PullError::Sources { object: id, failures: vec![unreachable, damaged] };
        assert_eq!(e.kind(), ErrorKind::TransferCorrupt);
        let text = e.to_string();
        assert!(text.contains("a:1: refused") && text.contains("b:2: the transfer arrived damaged"), "{text}");
        let full = StoreError::Full { object: id, needed: 10, pinned: 5, capacity: 8 };
        assert_eq!(PullError::StoreFull(full).kind(), ErrorKind::ObjectStoreFull);
    }

    #[tokio::test]
    async fn a_store_that_cannot_take_the_copy_fails_the_pull_as_full_not_lost() {
        let om = ObjectManager::new(
            Arc::new(ObjectStore::new(1024)),
            Arc::new(Peers::new(std::sync::Weak::new())),
            4096,
            64 * MIB,
        );
        // A pinned primary fills the store (no spilling configured); the
        // pulled copy then has nowhere to go.
        om.store.put(TaskId::random(JobId(1)).return_id(0), object(1000), true).unwrap();
        let id = TaskId::random(JobId(1)).return_id(0);
        let e = om.store_copy(id, object(1000)).await.unwrap_err();
        assert!(matches!(e, PullError::StoreFull(StoreError::Full { .. })), "{e:?}");
        assert_eq!(e.kind(), ErrorKind::ObjectStoreFull);
        assert!(!om.store.contains(&id));
    }

    #[tokio::test]
    async fn waiters_of_a_dropped_pull_carry_on_instead_of_hanging() {
        let om = Arc::new(ObjectManager::new(
            Arc::new(ObjectStore::new(64 * MIB)),
            Arc::new(Peers::new(std::sync::Weak::new())),
            4096,
            64 * MIB,
        ));
        // A peer that accepts connections and never answers keeps the
        // leader's transfer pending.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let loc = vec![pb::Location { node_id: Bytes::new(), address: silent.local_addr().unwrap().to_string() }];
        let id = TaskId::random(JobId(1)).return_id(0);
        let (m, l) = (om.clone(), loc.clone());
        let leader = tokio::spawn(async move { m.pull_object(id, &l, 10).await });
        while !lock(&om.in_flight).contains_key(&id) {
            tokio::task::yield_now().await;
        }
        let (m, l) = (om.clone(), loc.clone());
        let waiter = tokio::spawn(async move { m.pull_object(id, &l, 10).await });
        while lock(&om.in_flight).get(&id).is_none_or(|w| w.is_empty()) {
            tokio::task::yield_now().await;
        }
        // The copy arrives another way, and the leader's caller gives up.
        om.store.put(id, object(10), false).unwrap();
        leader.abort();
        let r = tokio::time::timeout(Duration::from_secs(10), waiter).await.expect("the waiter does not hang");
        assert_eq!(r.unwrap(), Ok(()));
        assert!(lock(&om.in_flight).is_empty());
    }
}
