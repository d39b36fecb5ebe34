//! What a running builtin can reach: its task's identity and, for nested
//! tasks, a client of its raylet.
//!
//! The client is created on first use, on a one-thread background runtime,
//! and kept for later tasks of the same worker. Its session carries the
//! worker id, so while a builtin blocks in [`TaskContext::get`] the raylet
//! lends the worker's CPU to other tasks (the nested tasks may need it).

use std::time::Duration;

use shoal_proto::v1 as pb;

use crate::client::{Client, ConnectOptions, ObjectRef, Task};
use crate::error::Error;
use crate::ids::{JobId, TaskId, WorkerId};
use crate::value::Value;

struct Nested {
    runtime: tokio::runtime::Runtime,
    client: Client,
}

/// Handed to every builtin while it runs.
pub struct TaskContext {
    worker_id: WorkerId,
    task_id: Option<TaskId>,
    job_id: JobId,
    attempt: u32,
    gpu_ids: Vec<u32>,
    nested: Option<Nested>,
}

impl TaskContext {
    /// A context for the worker `worker_id`.
    pub fn new(worker_id: WorkerId) -> Self {
        TaskContext { worker_id, task_id: None, job_id: JobId(0), attempt: 0, gpu_ids: Vec::new(), nested: None }
    }

    pub(crate) fn begin(&mut self, task: &pb::ExecuteTask) {
        self.task_id = TaskId::from_slice(&task.task_id).ok();
        self.job_id = JobId(task.job_id);
        self.attempt = task.attempt;
        self.gpu_ids.clone_from(&task.gpu_ids);
    }

    pub(crate) fn end(&mut self) {
        self.task_id = None;
    }

    /// The running task.
    pub fn task_id(&self) -> Option<TaskId> {
        self.task_id
    }

    /// The GPUs of this node lent to the running task (empty when it asked
    /// for none); `exec` tasks see them as `CUDA_VISIBLE_DEVICES`.
    pub fn gpu_ids(&self) -> &[u32] {
        &self.gpu_ids
    }

    /// The attempt number of the running task (0 for the first).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    fn nested(&mut self) -> Result<&Nested, Error> {
        if self.nested.is_none() {
            let addr = std::env::var(crate::raylet::ENV_ADDRESS).map_err(|_| {
                Error::Invalid(format!("{} is not set: not running under a raylet", crate::raylet::ENV_ADDRESS))
            })?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .map_err(|e| Error::io("starting the nested-task runtime", e))?;
            let opts = ConnectOptions {
                name: "nested".into(),
                job_id: (self.job_id.0 != 0).then_some(self.job_id),
                worker_id: Some(self.worker_id),
                token: None,
            };
            let client = runtime.block_on(Client::connect_with(&addr, opts))?;
            self.nested = Some(Nested { runtime, client });
        }
        self.nested.as_ref().ok_or_else(|| Error::Invalid("no client".into()))
    }

    /// Submits a nested task through this worker's raylet, which owns it.
    pub fn submit(&mut self, task: Task) -> Result<ObjectRef, Error> {
        let n = self.nested()?;
        n.runtime.block_on(n.client.submit(task))
    }

    /// Waits for a nested task's result.
    pub fn get(&mut self, r: &ObjectRef) -> Result<Value, Error> {
        let n = self.nested()?;
        n.runtime.block_on(n.client.get_value(r))
    }

    /// Waits for a nested task's result for at most `after`, then gives the
    /// call up by dropping it, as a caller that went away would (`None`).
    /// Unlike [`Client::get_timeout`], whose deadline the raylet keeps, the
    /// raylet only sees the call vanish.
    pub fn get_giving_up_after(&mut self, r: &ObjectRef, after: Duration) -> Option<Result<Value, Error>> {
        let n = self.nested().ok()?;
        n.runtime.block_on(async { tokio::time::timeout(after, n.client.get_value(r)).await.ok() })
    }

    /// Waits for several results at once.
    pub fn get_many(
        &mut self,
        refs: &[ObjectRef],
        timeout: Option<Duration>,
    ) -> Result<Vec<Result<Value, Error>>, Error> {
        let n = self.nested()?;
        n.runtime.block_on(n.client.get_many(refs, timeout))
    }
}
