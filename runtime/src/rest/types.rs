//! The REST API's request and response bodies. The same types serve the
//! handlers, the Rust REST client and the OpenAPI document (their JSON
//! Schemas are derived from them), so the three cannot disagree.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use shoal_proto::v1 as pb;

/// Every error answer.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code: `malformed_body`, `invalid_parameter`,
    /// `unauthorized`, `not_found`, `method_not_allowed`, `submission_conflict`,
    /// `job_not_terminal`, `job_terminal`, `payload_too_large`,
    /// `unsupported_media_type`, `invalid_job_spec`, `object_error`,
    /// `object_gone`, `unavailable`, `internal`.
    pub error: String,
    /// What went wrong in the runtime's vocabulary (shared with task errors
    /// and gRPC statuses); the HTTP status is this kind's.
    pub kind: crate::error::ErrorKind,
    /// What went wrong.
    pub message: String,
    /// Every problem found (job-spec validation), one line each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// An entrypoint job: a command run as a driver task on a raylet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EntrypointJob {
    /// Shell command (`sh -c`), e.g. `python3 driver.py`. Its stdout and
    /// stderr are the job's logs; `SHOAL_ADDRESS` (the raylet) and
    /// `SHOAL_JOB_ID` are set so it can submit tasks with the client.
    /// Not blank, no NUL byte.
    #[schemars(regex(pattern = r"^[^\x00]*[!-~][^\x00]*$"))]
    pub entrypoint: String,
    /// Extra environment variables of the command: names without `=` or
    /// NUL, values without NUL.
    #[serde(default)]
    #[schemars(schema_with = "env_schema")]
    pub env: BTreeMap<String, String>,
    /// Resources the driver holds while it runs (`{cpu: 1}`); none by default.
    #[serde(default)]
    #[schemars(schema_with = "resources_schema")]
    pub resources: BTreeMap<String, serde_json::Value>,
    /// A name for the job.
    #[serde(default)]
    pub name: Option<String>,
    /// Client-chosen id making the submission idempotent: 1 to 128 of
    /// `A-Z a-z 0-9 . _ -`.
    #[serde(default)]
    #[schemars(regex(pattern = r"^[A-Za-z0-9._-]{1,128}$"))]
    pub submission_id: Option<String>,
}

/// A task-graph job: the job-spec format of `shoal run` (see `job.rs`),
/// plus an optional `submission_id`. Rules the schema cannot state are
/// checked on submission and answered 422 with every problem: task ids are
/// unique, a `{ref: ID}` names another task of the job and references form
/// no cycle, a `ref`'s `index` is below that task's `num_returns`, and a
/// resource is named once (`cpu` and `cpus` are one resource).
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskGraphJob {
    /// The job's name.
    #[serde(default)]
    pub name: String,
    /// The tasks, in any order; references decide the order they run in.
    #[schemars(length(min = 1), schema_with = "tasks_schema")]
    pub tasks: Vec<serde_json::Value>,
    /// Client-chosen id making the submission idempotent: 1 to 128 of
    /// `A-Z a-z 0-9 . _ -`.
    #[serde(default)]
    #[schemars(regex(pattern = r"^[A-Za-z0-9._-]{1,128}$"))]
    pub submission_id: Option<String>,
}

fn env_schema(_: &mut schemars::generate::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "propertyNames": { "pattern": "^[^=\\x00]+$" },
        "additionalProperties": { "type": "string", "pattern": "^[^\\x00]*$" },
    })
}

/// A resource quantity: a number, or a string with an optional suffix
/// (`500m`, `256Mi`, `1.5G`). The bounds keep every value below the
/// largest amount the fixed-point units hold.
fn quantity_schema() -> serde_json::Value {
    serde_json::json!({
        "oneOf": [
            { "type": "number", "minimum": 0, "maximum": crate::resources::MAX_NUMBER_AMOUNT },
            { "type": "string", "pattern": "^[0-9]{1,5}(\\.[0-9]{1,4})?(Ki|Mi|Gi|k|K|M|G|m)?$" },
        ]
    })
}

fn resources_schema(_: &mut schemars::generate::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "propertyNames": { "pattern": "^[A-Za-z0-9./_-]{1,253}$" },
        "additionalProperties": quantity_schema(),
    })
}

fn tasks_schema(_: &mut schemars::generate::SchemaGenerator) -> schemars::Schema {
    let builtins: Vec<String> =
        crate::worker::builtins::Registry::standard().names().map(|n| format!("builtin:{n}")).collect();
    let task_id = serde_json::json!({ "type": "string", "pattern": "^[A-Za-z0-9_.-]{1,63}$" });
    let arg = serde_json::json!({
        "description": "A JSON literal; `{ref: ID, index: I}` for a result of another task; \
                        `{value: X}` to pass X as is.",
        "anyOf": [
            { "not": { "type": "object" } },
            {
                "type": "object",
                "required": ["ref"],
                "properties": { "ref": task_id, "index": { "type": "integer", "minimum": 0, "maximum": 1023 } },
                "additionalProperties": false,
            },
            { "type": "object", "required": ["value"], "properties": { "value": {} }, "additionalProperties": false },
            { "type": "object", "not": { "anyOf": [{ "required": ["ref"] }, { "required": ["value"] }] } },
        ]
    });
    let strategy = serde_json::json!({
        "anyOf": [
            { "type": "string", "enum": ["default", "spread", "DEFAULT", "SPREAD"] },
            {
                "type": "object",
                "required": ["node"],
                "properties": { "node": { "type": "string", "pattern": "^[0-9a-fA-F]{16}$" }, "soft": { "type": "boolean" } },
                "additionalProperties": false,
            },
            {
                "type": "object",
                "required": ["labels"],
                "properties": { "labels": {
                    "type": "object",
                    "description": "Label values; a number or boolean is read as its text.",
                    "additionalProperties": { "type": ["string", "number", "boolean"] },
                } },
                "additionalProperties": false,
            },
        ]
    });
    let common = serde_json::json!({
        "id": task_id,
        "args": { "type": "array", "items": arg },
        "resources": { "type": "object", "propertyNames": { "pattern": "^[A-Za-z0-9./_-]{1,253}$" }, "additionalProperties": quantity_schema() },
        "num_returns": { "type": "integer", "minimum": 1, "maximum": crate::job::MAX_NUM_RETURNS },
        "max_retries": { "type": "integer", "minimum": -1, "maximum": i32::MAX },
        "retry_exceptions": { "type": "boolean" },
        "strategy": strategy,
    });
    // An optional field may be given as null: it means the same as leaving it out.
    let nullable = |v: serde_json::Value| serde_json::json!({ "anyOf": [v, { "type": "null" }] });
    let mut common = common;
    for key in ["resources", "num_returns", "max_retries", "retry_exceptions", "strategy"] {
        common[key] = nullable(common[key].take());
    }
    let mut builtin = common.clone();
    builtin["function"] = serde_json::json!({ "type": "string", "enum": builtins });
    let mut exec = common;
    exec["exec"] = serde_json::json!({
        "description": "The program and its arguments.",
        "type": "array",
        "minItems": 1,
        "items": { "type": "string", "pattern": "^[^\\x00]*$" },
        "prefixItems": [{ "type": "string", "pattern": "^[^\\x00]*[!-~][^\\x00]*$" }],
    });
    exec["output"] = serde_json::json!({ "type": "string", "enum": ["json", "text"] });
    exec["env"] = serde_json::json!({
        "type": "object",
        "propertyNames": { "pattern": "^[^=\\x00]+$" },
        "additionalProperties": { "type": "string", "pattern": "^[^\\x00]*$" },
    });
    exec["cwd"] = serde_json::json!({ "type": "string", "pattern": "^[^\\x00]*$" });
    for key in ["output", "env", "cwd"] {
        exec[key] = nullable(exec[key].take());
    }
    schemars::json_schema!({
        "type": "array",
        "minItems": 1,
        "items": {
            "oneOf": [
                { "type": "object", "required": ["id", "function"], "properties": builtin, "additionalProperties": false },
                { "type": "object", "required": ["id", "exec"], "properties": exec, "additionalProperties": false },
            ]
        }
    })
}

/// The body of `POST /api/v1/jobs` (JSON, or YAML with a YAML content type).
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum SubmitJobRequest {
    /// A command run as a driver.
    Entrypoint(EntrypointJob),
    /// A graph of tasks.
    TaskGraph(TaskGraphJob),
}

/// The answer to a submission.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct SubmitJobResponse {
    /// The job id (8 hex digits).
    pub id: String,
    /// Whether an earlier submission with the same `submission_id` was returned.
    #[serde(default)]
    pub existing: bool,
}

/// A job's state. `SUCCEEDED`, `FAILED` and `STOPPED` are terminal and never change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    /// Accepted, waiting for a raylet.
    Pending,
    /// Tasks or the driver are running.
    Running,
    /// Every sink task (or the driver) succeeded.
    Succeeded,
    /// A task or the driver failed.
    Failed,
    /// Stopped by a user.
    Stopped,
}

impl JobState {
    /// Every state.
    pub const ALL: [JobState; 5] =
        [JobState::Pending, JobState::Running, JobState::Succeeded, JobState::Failed, JobState::Stopped];

    /// Whether the state is final.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Stopped)
    }

    /// The name as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "PENDING",
            JobState::Running => "RUNNING",
            JobState::Succeeded => "SUCCEEDED",
            JobState::Failed => "FAILED",
            JobState::Stopped => "STOPPED",
        }
    }

    /// Parses a name (any case).
    pub fn parse(s: &str) -> Option<JobState> {
        Self::ALL.into_iter().find(|j| j.as_str().eq_ignore_ascii_case(s))
    }
}

// The one mapping between the API's job states and the protobuf's: the same
// names (`JOB_` + the API's name), each way, and a match on both sides so a
// state added to one cannot be forgotten in the other.
impl From<JobState> for pb::JobState {
    fn from(s: JobState) -> Self {
        match s {
            JobState::Pending => pb::JobState::JobPending,
            JobState::Running => pb::JobState::JobRunning,
            JobState::Succeeded => pb::JobState::JobSucceeded,
            JobState::Failed => pb::JobState::JobFailed,
            JobState::Stopped => pb::JobState::JobStopped,
        }
    }
}

impl From<pb::JobState> for JobState {
    fn from(s: pb::JobState) -> Self {
        match s {
            pb::JobState::JobPending => JobState::Pending,
            pb::JobState::JobRunning => JobState::Running,
            pb::JobState::JobSucceeded => JobState::Succeeded,
            pb::JobState::JobFailed => JobState::Failed,
            pb::JobState::JobStopped => JobState::Stopped,
        }
    }
}

/// What kind of job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// A graph of tasks submitted by the job manager.
    TaskGraph,
    /// A command run as a driver task.
    Entrypoint,
}

/// A job's tasks by state (from the state API's history).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskCounts {
    /// Tasks the job has (for a task graph, the graph's size; for an
    /// entrypoint job, the tasks seen so far, the driver included).
    pub total: u64,
    /// Waiting for arguments.
    pub pending_args: u64,
    /// Waiting for a node.
    pub pending_node: u64,
    /// Placed, waiting for a worker.
    pub scheduled: u64,
    /// Running.
    pub running: u64,
    /// Finished.
    pub finished: u64,
    /// Failed.
    pub failed: u64,
    /// Cancelled.
    pub cancelled: u64,
}

impl TaskCounts {
    /// Tasks in a terminal state.
    pub fn done(&self) -> u64 {
        self.finished + self.failed + self.cancelled
    }
}

/// One result of a sink task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobResult {
    /// The task id from the spec.
    pub task: String,
    /// Which of its returns.
    pub index: u32,
    /// The value, when it is at most the inline limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
    /// Otherwise the object to download from `GET /api/v1/objects/{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_id: Option<String>,
    /// Encoded size of the value in bytes.
    pub size_bytes: u64,
}

/// A job as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Job {
    /// Job id (8 hex digits).
    pub id: String,
    /// The client-chosen submission id, if any.
    #[serde(default)]
    pub submission_id: Option<String>,
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: JobKind,
    /// State.
    pub state: JobState,
    /// Why the job is in its state (the error of a failed job).
    pub message: String,
    /// The command of an entrypoint job.
    #[serde(default)]
    pub entrypoint: Option<String>,
    /// Submission time, ms since the epoch.
    pub created_at_ms: u64,
    /// When it started running.
    #[serde(default)]
    pub started_at_ms: Option<u64>,
    /// When it reached a terminal state.
    #[serde(default)]
    pub ended_at_ms: Option<u64>,
    /// Node of the raylet that owns the job's tasks: for a task graph, the
    /// one the job manager submits through; for an entrypoint job, the node
    /// its driver runs on (absent until the driver starts).
    #[serde(default)]
    pub driver_node_id: Option<String>,
    /// Tasks by state.
    pub tasks: TaskCounts,
    /// Results of the sink tasks, once the job succeeded.
    #[serde(default)]
    pub results: Vec<JobResult>,
}

/// A page of jobs.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct JobList {
    /// Jobs, oldest first.
    pub jobs: Vec<Job>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// Answer to stop and delete.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct JobAction {
    /// The job id.
    pub id: String,
    /// Its state after the action.
    pub state: JobState,
}

/// One state transition of a task attempt.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct TaskEventView {
    /// State entered.
    pub state: String,
    /// Attempt (0 for the first run).
    pub attempt: u32,
    /// Node, when placed.
    #[serde(default)]
    pub node_id: Option<String>,
    /// When, ms since the epoch.
    pub at_ms: u64,
}

/// A task error.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct TaskErrorView {
    /// Kind: TaskFailed, WorkerDied, Infeasible, ObjectLost, OwnerDied, ...
    pub kind: String,
    /// Message.
    pub message: String,
    /// Node it happened on.
    #[serde(default)]
    pub node_id: String,
    /// Attempt.
    pub attempt: u32,
    /// Last lines of the worker's stderr.
    #[serde(default)]
    pub stderr_tail: String,
}

/// A task as the state API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct TaskView {
    /// Task id (24 hex digits; the first 8 are the job id).
    pub task_id: String,
    /// Job id.
    pub job_id: String,
    /// Name (the spec's task id, or the function).
    pub name: String,
    /// Function descriptor.
    pub function: String,
    /// Latest state.
    pub state: String,
    /// Latest attempt.
    pub attempt: u32,
    /// Node it last ran or was placed on.
    #[serde(default)]
    pub node_id: Option<String>,
    /// Node of its owner.
    #[serde(default)]
    pub owner_node_id: Option<String>,
    /// Submission time, ms since the epoch.
    pub created_at_ms: u64,
    /// Start of the latest run.
    #[serde(default)]
    pub started_at_ms: Option<u64>,
    /// End of the task.
    #[serde(default)]
    pub ended_at_ms: Option<u64>,
    /// The latest error.
    #[serde(default)]
    pub error: Option<TaskErrorView>,
    /// Transitions (only in `GET /api/v1/tasks/{id}`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<TaskEventView>,
}

/// A page of tasks.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct TaskList {
    /// Tasks in the order the head first heard of them.
    pub tasks: Vec<TaskView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(default)]
    pub next_cursor: Option<String>,
    /// About the history the listing reads.
    pub history: TaskHistory,
}

/// The bounds of the state API's task history.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct TaskHistory {
    /// Tasks remembered.
    pub tasks: u64,
    /// Most tasks remembered; beyond it the oldest finished are forgotten first.
    pub capacity: u64,
    /// Tasks forgotten so far.
    pub evicted: u64,
    /// Task events raylets dropped before sending (history is partial when non-zero).
    pub dropped_events: u64,
    /// Bytes the remembered tasks hold.
    pub bytes: u64,
    /// Most bytes remembered (`--task-history-bytes`); beyond it the oldest finished are forgotten first.
    pub byte_capacity: u64,
}

/// A raylet.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct NodeView {
    /// Node id.
    pub node_id: String,
    /// `ALIVE` or `DEAD`.
    pub state: String,
    /// Raylet gRPC address.
    pub address: String,
    /// Host name.
    pub hostname: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Resources offered (CPU and GPU in units, memory in bytes).
    pub resources_total: BTreeMap<String, f64>,
    /// Resources free as last reported.
    pub resources_available: BTreeMap<String, f64>,
    /// Tasks queued on the node.
    pub queued_tasks: u32,
    /// Object store bytes in use.
    pub object_store_used_bytes: u64,
    /// Object store budget.
    pub object_store_capacity_bytes: u64,
    /// No task running or queued (every resource free).
    pub idle: bool,
    /// Start time, ms since the epoch.
    pub started_at_ms: u64,
    /// Why it died.
    #[serde(default)]
    pub death_reason: String,
}

/// Every node.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct NodeList {
    /// Nodes, oldest first.
    pub nodes: Vec<NodeView>,
}

/// The whole cluster at a glance.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ClusterSummary {
    /// Alive nodes.
    pub alive_nodes: u32,
    /// Dead nodes.
    pub dead_nodes: u32,
    /// Resources of alive nodes.
    pub resources_total: BTreeMap<String, f64>,
    /// Resources free on alive nodes.
    pub resources_available: BTreeMap<String, f64>,
    /// Tasks queued across alive nodes.
    pub queued_tasks: u64,
    /// Object store bytes in use across alive nodes.
    pub object_store_used_bytes: u64,
    /// Object store budget across alive nodes.
    pub object_store_capacity_bytes: u64,
    /// Jobs by state.
    pub jobs: BTreeMap<String, u64>,
    /// Tasks in the history by state.
    pub tasks: BTreeMap<String, u64>,
    /// The task history's bounds.
    pub history: TaskHistory,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_states_are_one_vocabulary_in_the_api_and_the_protobuf() {
        for s in JobState::ALL {
            let wire = pb::JobState::from(s);
            assert_eq!(wire.as_str_name(), format!("JOB_{}", s.as_str()));
            assert_eq!(JobState::from(wire), s);
            assert_eq!(serde_json::to_value(s).unwrap(), serde_json::json!(s.as_str()));
        }
        // Every protobuf state is an API state.
        for n in 0..16 {
            if let Ok(wire) = pb::JobState::try_from(n) {
                assert!(JobState::ALL.contains(&JobState::from(wire)));
            }
        }
    }
}
