//! The raylet's gRPC service: sessions, puts, gets and waits for clients;
//! task execution, results, object status, transfers and frees for peers.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::{status, ErrorKind, TaskError};
use crate::ids::{NodeId, ObjectId, TaskId, WorkerId};
use crate::raylet::owner::reference_counter::PutError;
use crate::raylet::owner::Lookup;
use crate::raylet::{effects, Inner};
use crate::value::error_value;
use crate::value::INLINE_LIMIT;

/// The raylet gRPC service.
#[derive(Clone)]
pub struct RayletService {
    pub(crate) inner: Arc<Inner>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn object_id(b: &[u8]) -> Result<ObjectId, Status> {
    ObjectId::from_slice(b).map_err(|e| status(ErrorKind::InvalidRequest, e.to_string()))
}

/// How long a `get` keeps asking for an object whose copies are unreachable
/// before calling it lost: longer than the GCS health timeout, so that a dead
/// node is declared dead and the object rebuilt first.
const LOST_OBJECT_PATIENCE: Duration = Duration::from_secs(6);

/// What a `get` does next with an object it looked up.
enum Next {
    Wait,
    Answer(pb::get_result::Kind),
    Fetch(u64, Vec<pb::Location>),
}

fn next_step(id: ObjectId, l: Lookup, unknown: &str) -> Next {
    match l {
        Lookup::Pending => Next::Wait,
        Lookup::Inline(v) => Next::Answer(pb::get_result::Kind::Value(v)),
        Lookup::Stored { size, locations } => Next::Fetch(size, locations),
        Lookup::Unknown => Next::Answer(pb::get_result::Kind::Value(lost(id, unknown))),
    }
}

fn deadline(timeout_ms: u64) -> Option<Instant> {
    (timeout_ms > 0).then(|| Instant::now() + Duration::from_millis(timeout_ms))
}

fn lost(id: ObjectId, why: &str) -> pb::ObjectValue {
    error_value(&TaskError::new(ErrorKind::ObjectLost, format!("object {id}: {why}")))
}

/// A `get`/`wait` call's registration as a waiter of the objects it looks
/// up: removed when the call ends, however it ends (answered, timed out, or
/// dropped by a client that went away).
struct Watch<'a> {
    inner: &'a Arc<Inner>,
    tx: mpsc::Sender<ObjectId>,
    ids: Vec<ObjectId>,
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        if !self.ids.is_empty() {
            self.inner.core().unwatch(&self.ids, &self.tx);
        }
    }
}

/// A worker's `get` that has to wait: the worker's CPUs are lent out until
/// the guard drops, on every exit path.
struct Blocked<'a> {
    inner: &'a Arc<Inner>,
    worker: WorkerId,
}

impl<'a> Blocked<'a> {
    fn new(inner: &'a Arc<Inner>, worker: WorkerId) -> Self {
        inner.core().worker_blocked(worker);
        Blocked { inner, worker }
    }
}

impl Drop for Blocked<'_> {
    fn drop(&mut self) {
        self.inner.core().worker_unblocked(self.worker);
    }
}

impl RayletService {
    /// Runs `f` on the core, then settles with their owners the borrows it
    /// took (references inside values owned elsewhere) before returning.
    async fn recorded<T>(&self, f: impl FnOnce(&mut crate::raylet::core::Core) -> T) -> T {
        let (out, borrows) = {
            let mut core = self.inner.core();
            let out = f(&mut core);
            (out, core.owner.take_pending_borrows())
        };
        if !borrows.is_empty() {
            effects::settle_borrows(&self.inner, borrows).await;
        }
        out
    }

    /// Reads a stored value off the async threads (it may be spilled to
    /// disk). A spilled copy that did not read back intact is gone from the
    /// store: its owner, when it is this raylet, rebuilds it or fails it.
    async fn store_get(&self, id: ObjectId) -> Option<pb::ObjectValue> {
        let store = self.inner.store.clone();
        match tokio::task::spawn_blocking(move || store.get(&id)).await.ok()? {
            Ok(v) => v,
            Err(e) => {
                self.inner.core().local_copy_lost(id, &e.to_string());
                None
            }
        }
    }

    async fn wait_seq(&self, session: u64, after: u64) -> Result<(), Status> {
        if after == 0 {
            return Ok(());
        }
        let rx = self.inner.core().session_seq(session);
        let Some(mut rx) = rx else {
            return Err(status(ErrorKind::Conflict, format!("session {session} is not open")));
        };
        rx.wait_for(|s| *s >= after).await.map_err(|_| status(ErrorKind::Conflict, "session closed"))?;
        Ok(())
    }

    /// Resolves objects to values, waiting up to the deadline.
    ///
    /// `worker` is the worker making the call, if any: its CPUs are lent out
    /// while the call has to wait (not when every value is at hand).
    async fn resolve(
        &self,
        refs: &[pb::ObjectRef],
        until: Option<Instant>,
        worker: Option<WorkerId>,
    ) -> Result<Vec<pb::GetResult>, Status> {
        let n = refs.len();
        let mut results: Vec<Option<pb::get_result::Kind>> = vec![None; n];
        let ids: Vec<ObjectId> = refs.iter().map(|r| object_id(&r.object_id)).collect::<Result<_, _>>()?;
        let (tx, mut rx) = mpsc::channel::<ObjectId>(n.max(1) + 64);
        let _watch = Watch { inner: &self.inner, tx: tx.clone(), ids: ids.clone() };
        // Pending objects by id, each with the request positions naming it.
        let mut pending: HashMap<ObjectId, Vec<usize>> = HashMap::new();
        let mut stored: Vec<(usize, u64, Vec<pb::Location>)> = Vec::new();
        let mut foreign: Vec<usize> = Vec::new();
        {
            let mut core = self.inner.core();
            for (i, r) in refs.iter().enumerate() {
                if !r.owner_address.is_empty() && r.owner_address != self.inner.address {
                    foreign.push(i);
                    continue;
                }
                if let Some(idx) = pending.get_mut(&ids[i]) {
                    idx.push(i);
                    continue;
                }
                match next_step(
                    ids[i],
                    core.lookup(ids[i], Some(&tx)),
                    "unknown to its owner (freed, or never created)",
                ) {
                    Next::Wait => {
                        pending.insert(ids[i], vec![i]);
                    }
                    Next::Answer(kind) => results[i] = Some(kind),
                    Next::Fetch(size, locations) => stored.push((i, size, locations)),
                }
            }
        }
        let waits = !pending.is_empty() || !stored.is_empty() || !foreign.is_empty();
        let _blocked = worker.filter(|_| waits).map(|w| Blocked::new(&self.inner, w));
        let mut woken: Vec<ObjectId> = Vec::new();
        while !pending.is_empty() {
            // Wake on a readiness notice; re-check everything now and then in
            // case a notice was lost to a full queue.
            let recv = async {
                tokio::select! {
                    id = rx.recv() => id.map(Some),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => Some(None),
                }
            };
            let woke = match until {
                Some(d) => tokio::time::timeout_at(d.into(), recv).await.ok().flatten(),
                None => recv.await,
            };
            let Some(first) = woke else {
                for (_, idx) in pending.drain() {
                    for i in idx {
                        results[i] = Some(pb::get_result::Kind::TimedOut(true));
                    }
                }
                break;
            };
            woken.clear();
            // A notice uses up the waiter registration; a periodic re-check does not.
            let notified = first.is_some();
            match first {
                Some(id) => {
                    woken.push(id);
                    while let Ok(id) = rx.try_recv() {
                        woken.push(id);
                    }
                }
                None => woken.extend(pending.keys().copied()),
            }
            let mut core = self.inner.core();
            for id in woken.drain(..) {
                let Some(idx) = pending.remove(&id) else { continue };
                match next_step(id, core.lookup(id, notified.then_some(&tx)), "freed while waiting") {
                    Next::Wait => {
                        pending.insert(id, idx);
                    }
                    Next::Answer(kind) => idx.into_iter().for_each(|i| results[i] = Some(kind.clone())),
                    Next::Fetch(size, locations) => {
                        idx.into_iter().for_each(|i| stored.push((i, size, locations.clone())))
                    }
                }
            }
        }
        for (i, size, locations) in stored {
            results[i] = Some(match self.fetch_owned(ids[i], size, locations, until).await {
                Some(v) => pb::get_result::Kind::Value(v),
                None => pb::get_result::Kind::TimedOut(true),
            });
        }
        if !foreign.is_empty() {
            self.resolve_foreign(refs, &ids, &foreign, until, &mut results).await;
        }
        Ok(results.into_iter().map(|k| pb::GetResult { kind: k }).collect())
    }

    /// Brings a stored object here and returns its value.
    async fn fetch(&self, id: ObjectId, size: u64, locations: &[pb::Location], owned: bool) -> pb::ObjectValue {
        if let Some(v) = self.store_get(id).await {
            return v;
        }
        match self.inner.metrics.timed_transfer(self.inner.objects.pull_object(id, locations, size)).await {
            Ok(()) => {
                if owned {
                    self.inner.core().add_copy_here(id);
                }
                self.store_get(id).await.unwrap_or_else(|| lost(id, "evicted right after arriving"))
            }
            Err(e) => error_value(&TaskError::new(e.kind(), format!("object {id} could not be fetched: {e}"))),
        }
    }

    /// Fetches an object this raylet owns. When every copy turns out to be
    /// unreachable, the owner may not have heard of the node's death yet:
    /// ask again for a while (it rebuilds lost objects from lineage) before
    /// reporting the object lost. `None` means the deadline passed.
    async fn fetch_owned(
        &self,
        id: ObjectId,
        mut size: u64,
        mut locations: Vec<pb::Location>,
        until: Option<Instant>,
    ) -> Option<pb::ObjectValue> {
        let give_up = Instant::now() + LOST_OBJECT_PATIENCE;
        loop {
            let v = self.fetch(id, size, &locations, true).await;
            if !crate::value::is_error(&v) || Instant::now() > give_up {
                return Some(v);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let (tx, mut rx) = mpsc::channel::<ObjectId>(1);
            let _watch = Watch { inner: &self.inner, tx: tx.clone(), ids: vec![id] };
            let now = self.inner.core().lookup(id, Some(&tx));
            match now {
                Lookup::Inline(v) => return Some(v),
                Lookup::Unknown => return Some(v),
                Lookup::Stored { size: s, locations: l } => {
                    size = s;
                    locations = l;
                }
                Lookup::Pending => {
                    // Being rebuilt: wait for it like any pending object.
                    let woke = match until {
                        Some(d) => tokio::time::timeout_at(d.into(), rx.recv()).await.ok().flatten(),
                        None => rx.recv().await,
                    };
                    woke?;
                    match self.inner.core().lookup(id, None) {
                        Lookup::Inline(v) => return Some(v),
                        Lookup::Stored { size: s, locations: l } => {
                            size = s;
                            locations = l;
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    async fn resolve_foreign(
        &self,
        refs: &[pb::ObjectRef],
        ids: &[ObjectId],
        idx: &[usize],
        until: Option<Instant>,
        results: &mut [Option<pb::get_result::Kind>],
    ) {
        for &i in idx {
            let owner = &refs[i].owner_address;
            let Some(mut client) = self.inner.peers.client(owner) else {
                results[i] = Some(pb::get_result::Kind::Value(lost(ids[i], "its owner's address is invalid")));
                continue;
            };
            let timeout_ms =
                until.map(|d| d.saturating_duration_since(Instant::now()).as_millis().max(1) as u64).unwrap_or(0);
            let req = pb::GetObjectStatusRequest { object_ids: vec![ids[i].to_bytes()], wait_for: 1, timeout_ms };
            let status = match client.get_object_status(req).await {
                Ok(r) => r.into_inner().statuses.into_iter().next(),
                Err(s) => {
                    let e = TaskError::new(
                        ErrorKind::OwnerDied,
                        format!("owner {owner} of object {} is unreachable: {}", ids[i], s.message()),
                    );
                    results[i] = Some(pb::get_result::Kind::Value(error_value(&e)));
                    continue;
                }
            };
            let Some(st) = status else { continue };
            results[i] = Some(match pb::ObjectStatusKind::try_from(st.kind) {
                Ok(pb::ObjectStatusKind::ObjectPending) => pb::get_result::Kind::TimedOut(true),
                Ok(pb::ObjectStatusKind::ObjectReady) | Ok(pb::ObjectStatusKind::ObjectFailed) => match st.inline_value
                {
                    Some(v) => pb::get_result::Kind::Value(v),
                    None => pb::get_result::Kind::Value(self.fetch(ids[i], st.size, &st.locations, false).await),
                },
                _ => pb::get_result::Kind::Value(lost(ids[i], "unknown to its owner")),
            });
        }
    }
}

#[tonic::async_trait]
impl pb::raylet_server::Raylet for RayletService {
    type SessionStream = BoxStream<pb::SessionEvent>;

    async fn session(
        &self,
        req: Request<Streaming<pb::SessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = req.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| status(ErrorKind::InvalidRequest, "session closed before opening"))?;
        let Some(pb::session_request::Kind::Open(open)) = first.kind else {
            return Err(status(ErrorKind::InvalidRequest, "a session must start with an open message"));
        };
        let worker_id = if open.worker_id.is_empty() {
            None
        } else {
            Some(WorkerId::from_slice(&open.worker_id).map_err(|e| status(ErrorKind::InvalidRequest, e.to_string()))?)
        };
        let (job_id, new_job) = if open.job_id == 0 {
            let mut gcs = self.inner.gcs.clone();
            let r = gcs
                .register_job(pb::RegisterJobRequest {
                    name: open.name.clone(),
                    driver_address: self.inner.address.clone(),
                })
                .await
                .map_err(|s| status(ErrorKind::Unavailable, format!("GCS: {}", s.message())))?;
            (r.into_inner().job_id, true)
        } else {
            (open.job_id, false)
        };
        let session = {
            let mut core = self.inner.core();
            let (id, _) = core.open_session(worker_id);
            core.mark_applied(id, first.seq);
            id
        };
        let (tx, rx) = mpsc::channel(64);
        let _ = tx
            .send(Ok(pb::SessionEvent {
                kind: Some(pb::session_event::Kind::Opened(pb::SessionOpened {
                    session_id: session,
                    job_id,
                    node_id: self.inner.node_id.to_bytes(),
                    gcs_address: self.inner.config.gcs_address.clone(),
                })),
            }))
            .await;
        let inner = self.inner.clone();
        tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(m)) => {
                        let (problems, borrows) = {
                            let mut core = inner.core();
                            let problems = match m.kind {
                                Some(pb::session_request::Kind::Submit(s)) => core.submit(session, s.tasks),
                                Some(pb::session_request::Kind::Refs(r)) => {
                                    core.update_refs(session, &r.add, &r.remove, &r.borrow);
                                    Vec::new()
                                }
                                Some(pb::session_request::Kind::Cancel(c)) => {
                                    core.cancel(&c.object_ids, c.force, c.recursive);
                                    Vec::new()
                                }
                                Some(pb::session_request::Kind::Lend(l)) => match TaskId::from_slice(&l.task_id) {
                                    Ok(t) => {
                                        core.owner.lend(t, l.attempt, &l.refs);
                                        Vec::new()
                                    }
                                    Err(e) => vec![format!("lent references name no task: {e}")],
                                },
                                Some(pb::session_request::Kind::Open(_)) => {
                                    vec!["the session is already open".to_string()]
                                }
                                None => Vec::new(),
                            };
                            let borrows = core.owner.take_pending_borrows();
                            if borrows.is_empty() {
                                core.mark_applied(session, m.seq);
                            }
                            (problems, borrows)
                        };
                        if !borrows.is_empty() {
                            // Borrows are settled with their owners before
                            // the message counts as applied.
                            effects::settle_borrows(&inner, borrows).await;
                            inner.core().mark_applied(session, m.seq);
                        }
                        for p in problems {
                            tracing::warn!(session, problem = %p, "rejected part of a submission");
                            let _ = tx.try_send(Ok(pb::SessionEvent { kind: Some(pb::session_event::Kind::Error(p)) }));
                        }
                    }
                    Ok(None) => break,
                    Err(s) => {
                        tracing::debug!(session, error = %s.message(), "session stream broke");
                        break;
                    }
                }
            }
            inner.core().close_session(session);
            if new_job {
                let mut gcs = inner.gcs.clone();
                let _ = gcs.finish_job(pb::FinishJobRequest { job_id }).await;
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutReply>, Status> {
        let r = req.into_inner();
        let id = object_id(&r.object_id)?;
        let value = r.value.ok_or_else(|| status(ErrorKind::InvalidRequest, "put without a value"))?;
        let put_status = |e: PutError| match e {
            PutError::SessionClosed(_) => status(ErrorKind::Conflict, e.to_string()),
            PutError::Exists(_) => status(ErrorKind::Conflict, e.to_string()),
        };
        let size = value.data.len() as u64;
        let nested = value.nested_refs.clone();
        if value.data.len() <= INLINE_LIMIT {
            self.recorded(|core| core.put(r.session_id, id, size, Some(value), &nested)).await.map_err(put_status)?;
            return Ok(Response::new(pb::PutReply {}));
        }
        self.inner.core().check_put(r.session_id, id).map_err(put_status)?;
        // Into the store first, off the async threads (it may spill), then
        // recorded by the owner.
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || store.put(id, value, true))
            .await
            .map_err(|e| status(ErrorKind::Internal, format!("storing {id} failed: {e}")))?
            .map_err(|e| status(ErrorKind::ObjectStoreFull, e.to_string()))?;
        if let Err(e) = self.recorded(|core| core.put(r.session_id, id, size, None, &nested)).await {
            if matches!(e, PutError::SessionClosed(_)) {
                self.inner.store.delete(&id);
            }
            return Err(put_status(e));
        }
        Ok(Response::new(pb::PutReply {}))
    }

    async fn get_objects(&self, req: Request<pb::GetObjectsRequest>) -> Result<Response<pb::GetObjectsReply>, Status> {
        let r = req.into_inner();
        self.wait_seq(r.session_id, r.after_seq).await?;
        let worker = self.inner.core().session_worker(r.session_id);
        let results = self.resolve(&r.refs, deadline(r.timeout_ms), worker).await?;
        Ok(Response::new(pb::GetObjectsReply { results }))
    }

    async fn wait_objects(
        &self,
        req: Request<pb::WaitObjectsRequest>,
    ) -> Result<Response<pb::WaitObjectsReply>, Status> {
        let r = req.into_inner();
        self.wait_seq(r.session_id, r.after_seq).await?;
        let ids: Vec<ObjectId> = r.refs.iter().map(|x| object_id(&x.object_id)).collect::<Result<_, _>>()?;
        let want = (r.num_ready as usize).min(ids.len());
        let until = deadline(r.timeout_ms);
        let (tx, mut rx) = mpsc::channel::<ObjectId>(ids.len().max(1));
        let _watch = Watch { inner: &self.inner, tx: tx.clone(), ids: ids.clone() };
        let mut ready = vec![false; ids.len()];
        // Objects owned elsewhere, by owner: asked for in one call per owner.
        let mut foreign: HashMap<&str, Vec<usize>> = HashMap::new();
        // Objects owned here and still pending, each with the positions naming it.
        let mut pending: HashMap<ObjectId, Vec<usize>> = HashMap::new();
        {
            let mut core = self.inner.core();
            for (i, id) in ids.iter().enumerate() {
                let owner = r.refs[i].owner_address.as_str();
                if !owner.is_empty() && owner != self.inner.address {
                    foreign.entry(owner).or_default().push(i);
                } else if let Some(idx) = pending.get_mut(id) {
                    idx.push(i);
                } else if matches!(core.lookup(*id, Some(&tx)), Lookup::Pending) {
                    pending.insert(*id, vec![i]);
                } else {
                    ready[i] = true;
                }
            }
        }
        let mut woken: Vec<ObjectId> = Vec::new();
        loop {
            for (owner, idx) in foreign.iter_mut() {
                idx.retain(|&i| !ready[i]);
                if idx.is_empty() {
                    continue;
                }
                let Some(mut c) = self.inner.peers.client(owner) else { continue };
                let object_ids = idx.iter().map(|&i| ids[i].to_bytes()).collect();
                let q = pb::GetObjectStatusRequest { object_ids, wait_for: 0, timeout_ms: 0 };
                match c.get_object_status(q).await {
                    Ok(s) => {
                        for (&i, st) in idx.iter().zip(s.into_inner().statuses) {
                            ready[i] = st.kind != pb::ObjectStatusKind::ObjectPending as i32;
                        }
                    }
                    // An unreachable owner will not make them ready: they
                    // count as ready so that `get` reports the failure.
                    Err(_) => idx.iter().for_each(|&i| ready[i] = true),
                }
            }
            if ready.iter().filter(|r| **r).count() >= want {
                break;
            }
            // Local objects wake us; objects owned elsewhere are polled.
            let polling = foreign.values().any(|idx| idx.iter().any(|&i| !ready[i]));
            let tick = async {
                if polling {
                    tokio::select! {
                        id = rx.recv() => id.map(Some),
                        _ = tokio::time::sleep(Duration::from_millis(20)) => Some(None),
                    }
                } else {
                    rx.recv().await.map(Some)
                }
            };
            let woke = match until {
                Some(d) => tokio::time::timeout_at(d.into(), tick).await.ok().flatten(),
                None => tick.await,
            };
            let Some(first) = woke else { break };
            woken.clear();
            woken.extend(first);
            while let Ok(id) = rx.try_recv() {
                woken.push(id);
            }
            let mut core = self.inner.core();
            for id in woken.drain(..) {
                let Some(idx) = pending.remove(&id) else { continue };
                if matches!(core.lookup(id, Some(&tx)), Lookup::Pending) {
                    pending.insert(id, idx);
                } else {
                    idx.into_iter().for_each(|i| ready[i] = true);
                }
            }
        }
        Ok(Response::new(pb::WaitObjectsReply { ready }))
    }

    async fn execute_tasks(
        &self,
        req: Request<pb::ExecuteTasksRequest>,
    ) -> Result<Response<pb::ExecuteTasksReply>, Status> {
        let r = req.into_inner();
        let mut spilled = Vec::new();
        let mut core = self.inner.core();
        for t in r.tasks {
            match core.should_spillback(&t) {
                Some(reason) => spilled.push(pb::Spillback { task_id: t.task_id.clone(), attempt: t.attempt, reason }),
                None => core.enqueue_local(t),
            }
        }
        Ok(Response::new(pb::ExecuteTasksReply { spilled }))
    }

    async fn report_results(
        &self,
        req: Request<pb::ReportResultsRequest>,
    ) -> Result<Response<pb::ReportResultsReply>, Status> {
        // Acknowledged once the references inside the results are held here
        // (the executor releases what it held for them on the answer).
        self.recorded(|core| {
            for r in req.into_inner().results {
                core.apply_result(r);
            }
        })
        .await;
        Ok(Response::new(pb::ReportResultsReply {}))
    }

    async fn get_object_status(
        &self,
        req: Request<pb::GetObjectStatusRequest>,
    ) -> Result<Response<pb::GetObjectStatusReply>, Status> {
        let r = req.into_inner();
        let ids: Vec<ObjectId> = r.object_ids.iter().map(|b| object_id(b)).collect::<Result<_, _>>()?;
        let until = deadline(r.timeout_ms);
        let (tx, mut rx) = mpsc::channel::<ObjectId>(ids.len().max(1));
        let _watch = Watch { inner: &self.inner, tx: tx.clone(), ids: ids.clone() };
        let mut first = true;
        loop {
            let statuses: Vec<pb::ObjectStatus> = {
                let mut core = self.inner.core();
                ids.iter()
                    .map(|id| match core.lookup(*id, if first { Some(&tx) } else { None }) {
                        Lookup::Pending => {
                            pb::ObjectStatus { kind: pb::ObjectStatusKind::ObjectPending as i32, ..Default::default() }
                        }
                        Lookup::Inline(v) => {
                            let kind = if crate::value::is_error(&v) {
                                pb::ObjectStatusKind::ObjectFailed
                            } else {
                                pb::ObjectStatusKind::ObjectReady
                            };
                            pb::ObjectStatus {
                                kind: kind as i32,
                                size: v.data.len() as u64,
                                inline_value: Some(v),
                                locations: Vec::new(),
                            }
                        }
                        Lookup::Stored { size, locations } => pb::ObjectStatus {
                            kind: pb::ObjectStatusKind::ObjectReady as i32,
                            inline_value: None,
                            locations,
                            size,
                        },
                        Lookup::Unknown => {
                            pb::ObjectStatus { kind: pb::ObjectStatusKind::ObjectUnknown as i32, ..Default::default() }
                        }
                    })
                    .collect()
            };
            first = false;
            let done = statuses.iter().filter(|s| s.kind != pb::ObjectStatusKind::ObjectPending as i32).count();
            if done >= r.wait_for as usize {
                return Ok(Response::new(pb::GetObjectStatusReply { statuses }));
            }
            let woke = match until {
                Some(d) => tokio::time::timeout_at(d.into(), rx.recv()).await.ok().flatten(),
                None => rx.recv().await,
            };
            if woke.is_none() {
                return Ok(Response::new(pb::GetObjectStatusReply { statuses }));
            }
        }
    }

    async fn update_borrows(
        &self,
        req: Request<pb::UpdateBorrowsRequest>,
    ) -> Result<Response<pb::UpdateBorrowsReply>, Status> {
        let r = req.into_inner();
        let borrower: NodeId = r
            .borrower
            .parse()
            .map_err(|_| status(ErrorKind::InvalidRequest, format!("borrower `{}` is not a node id", r.borrower)))?;
        let refs = r.refs.unwrap_or_default();
        let unknown = self.inner.core().owner.update_borrows(borrower, &refs.add, &refs.remove);
        Ok(Response::new(pb::UpdateBorrowsReply { unknown }))
    }

    type PullObjectStream = BoxStream<pb::ObjectChunk>;

    async fn pull_object(
        &self,
        req: Request<pb::PullObjectRequest>,
    ) -> Result<Response<Self::PullObjectStream>, Status> {
        let r = req.into_inner();
        let id = object_id(&r.object_id)?;
        // Reading the object may restore it from a spill file: off the async threads.
        let inner = self.inner.clone();
        let chunks = tokio::task::spawn_blocking(move || inner.objects.serve(&id, r.offset, r.length))
            .await
            .map_err(|e| status(ErrorKind::Internal, format!("serving {id} failed: {e}")))?
            .map_err(|e| status(ErrorKind::NotFound, format!("{e} (node {})", self.inner.node_id)))?;
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks.map(Ok)))))
    }

    async fn free_objects(
        &self,
        req: Request<pb::FreeObjectsRequest>,
    ) -> Result<Response<pb::FreeObjectsReply>, Status> {
        for b in &req.get_ref().object_ids {
            if let Ok(id) = ObjectId::from_slice(b) {
                self.inner.store.delete(&id);
            }
        }
        Ok(Response::new(pb::FreeObjectsReply {}))
    }

    async fn cancel_task(&self, req: Request<pb::CancelTaskRequest>) -> Result<Response<pb::CancelTaskReply>, Status> {
        let r = req.into_inner();
        let id =
            crate::ids::TaskId::from_slice(&r.task_id).map_err(|e| status(ErrorKind::InvalidRequest, e.to_string()))?;
        self.inner.core().cancel_local(id, r.attempt, r.force, r.recursive);
        Ok(Response::new(pb::CancelTaskReply {}))
    }

    async fn node_stats(&self, _req: Request<pb::NodeStatsRequest>) -> Result<Response<pb::NodeStatsReply>, Status> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut s = self.inner.core().node_stats();
        let t = &self.inner.objects.stats;
        s.pulled_bytes = t.pulled_bytes.load(Relaxed);
        s.pulled_objects = t.pulled_objects.load(Relaxed);
        s.served_bytes = t.served_bytes.load(Relaxed);
        s.pull_micros = t.pull_micros.load(Relaxed);
        Ok(Response::new(s))
    }
}
