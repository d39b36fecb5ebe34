//! Request handlers: read and check the request, ask the job manager or the
//! GCS, shape the answer. Every failure is an [`ApiError`]; nothing here
//! unwraps input.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use schemars::JsonSchema;
use serde::Deserialize;
use shoal_proto::v1 as pb;

use super::error::ApiError;
use super::jobs::{node_hex, Submission, Work};
use super::types::*;
use super::AppState;
use crate::gcs::task_events::{self, TaskFilter, TaskRecord};
use crate::ids::{JobId, NodeId, TaskId};
use crate::resources::{ResourceSet, UNIT};
use crate::value::Value;

/// Default page size of listings.
pub const DEFAULT_PAGE: usize = 100;
/// Largest page size of listings.
pub const MAX_PAGE: usize = 1000;
/// Most bytes of a log returned by one non-following read.
pub const MAX_LOG_READ: usize = 4 << 20;
/// Longest submission id.
pub const MAX_SUBMISSION_ID: usize = 128;
/// Bound of the queue between a log follower and its HTTP stream.
const LOG_STREAM_QUEUE: usize = 16;

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t).map_err(|e| ApiError::invalid_parameter(e.body_text()))
}

// ---------------------------------------------------------------------------
// Jobs

enum Format {
    Json,
    Yaml,
}

fn body_format(headers: &HeaderMap, text: &str) -> Result<Format, ApiError> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match media.as_str() {
        "application/json" => Ok(Format::Json),
        "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" => Ok(Format::Yaml),
        // curl's default for -d, and no header at all: look at the text.
        "" | "application/x-www-form-urlencoded" | "text/plain" => {
            Ok(if text.trim_start().starts_with('{') { Format::Json } else { Format::Yaml })
        }
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

/// What the job spec reader would read differently from the document: a
/// null where a value belongs (the optional fields may be null, meaning
/// left out), and a YAML number, boolean or null where text belongs (YAML's
/// reader would take `id: false` as the text `false`). Both are refused,
/// each problem naming its task, so a YAML body means what the same JSON
/// body means.
fn values_of_the_wrong_type(doc: &serde_json::Map<String, serde_json::Value>) -> Vec<String> {
    use serde_json::Value::Null;
    let mut problems = Vec::new();
    let text = |v: &serde_json::Value| v.is_string();
    if doc.get("tasks") == Some(&Null) {
        problems.push("`tasks` is null".to_string());
    }
    if doc.get("name").is_some_and(|v| !text(v)) {
        problems.push("`name` must be a string (in YAML, quote it)".to_string());
    }
    let Some(tasks) = doc.get("tasks").and_then(|t| t.as_array()) else { return problems };
    for (i, t) in tasks.iter().enumerate() {
        let name = match t.get("id").and_then(|v| v.as_str()) {
            Some(id) => format!("task `{id}`"),
            None => format!("task {}", i + 1),
        };
        for key in ["id", "function", "cwd"] {
            // `cwd` is optional: null means the worker's directory.
            let allowed = |v: &serde_json::Value| text(v) || (key == "cwd" && v.is_null());
            if t.get(key).is_some_and(|v| !allowed(v)) {
                problems.push(format!("{name}: `{key}` must be a string (in YAML, quote it)"));
            }
        }
        for key in ["exec", "args"] {
            if t.get(key) == Some(&Null) {
                problems.push(format!("{name}: `{key}` is null"));
            }
        }
        if let Some(serde_json::Value::Array(argv)) = t.get("exec") {
            if argv.iter().any(|v| !text(v)) {
                problems.push(format!("{name}: every item of `exec` must be a string (in YAML, quote it)"));
            }
        }
        if let Some(serde_json::Value::Object(env)) = t.get("env") {
            if env.values().any(|v| !text(v)) {
                problems.push(format!("{name}: every value of `env` must be a string (in YAML, quote it)"));
            }
        }
        if let Some(serde_json::Value::Object(r)) = t.get("resources") {
            if r.values().any(|v| v.is_null()) {
                problems.push(format!("{name}: `resources` holds a null"));
            }
        }
        if let Some(serde_json::Value::Object(st)) = t.get("strategy") {
            let labels_null =
                st.get("labels").and_then(|l| l.as_object()).is_some_and(|l| l.values().any(|v| v.is_null()));
            if st.values().any(|v| v.is_null()) || labels_null {
                problems.push(format!("{name}: `strategy` holds a null"));
            }
        }
    }
    problems
}

fn check_submission_id(sid: &Option<String>) -> Result<(), ApiError> {
    if let Some(s) = sid {
        let ok = !s.is_empty()
            && s.len() <= MAX_SUBMISSION_ID
            && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            return Err(ApiError::invalid_job(
                format!("submission_id must be 1 to {MAX_SUBMISSION_ID} of A-Z a-z 0-9 . _ -"),
                Vec::new(),
            ));
        }
    }
    Ok(())
}

/// Reads a submission body into a validated [`Submission`].
pub fn parse_submission(headers: &HeaderMap, body: &[u8]) -> Result<Submission, ApiError> {
    let text =
        std::str::from_utf8(body).map_err(|e| ApiError::malformed_body(format!("the body is not UTF-8: {e}")))?;
    let format = body_format(headers, text)?;
    if text.trim().is_empty() {
        return Err(ApiError::malformed_body("the body is empty"));
    }
    let mut doc: serde_json::Value = match format {
        Format::Json => {
            serde_json::from_str(text).map_err(|e| ApiError::malformed_body(format!("invalid JSON: {e}")))?
        }
        Format::Yaml => {
            // Well-formed YAML can still hold what no JSON value can (an
            // integer beyond 64 bits): that is a bad job (422), not a bad body.
            serde_yaml_ng::from_str::<serde::de::IgnoredAny>(text)
                .map_err(|e| ApiError::malformed_body(format!("invalid YAML: {e}")))?;
            let y: serde_yaml_ng::Value = serde_yaml_ng::from_str(text)
                .map_err(|e| ApiError::invalid_job(format!("the YAML holds a value JSON cannot: {e}"), Vec::new()))?;
            serde_json::to_value(&y)
                .map_err(|e| ApiError::invalid_job(format!("the YAML does not map to JSON: {e}"), Vec::new()))?
        }
    };
    let Some(obj) = doc.as_object_mut() else {
        return Err(ApiError::invalid_job("the body must be an object (a job spec or an entrypoint job)", Vec::new()));
    };
    if obj.contains_key("entrypoint") {
        let job: EntrypointJob = serde_json::from_value(doc.clone())
            .map_err(|e| ApiError::invalid_job(format!("invalid entrypoint job: {e}"), Vec::new()))?;
        return entrypoint_submission(job, doc);
    }
    let wrong = values_of_the_wrong_type(obj);
    if !wrong.is_empty() {
        return Err(ApiError::invalid_job(format!("invalid job spec: {}", wrong.join("; ")), wrong));
    }
    let had_submission_id = obj.contains_key("submission_id");
    let submission_id = match obj.remove("submission_id") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s),
        Some(_) => return Err(ApiError::invalid_job("submission_id must be a string", Vec::new())),
    };
    check_submission_id(&submission_id)?;
    let canonical = doc.to_string();
    let fingerprint = super::jobs::fingerprint(&canonical);
    // JSON goes back to the spec reader as JSON. YAML goes as written, so its
    // scalars are read exactly as `shoal run` reads them; only a top-level
    // `submission_id:` line is taken out.
    let spec_text = match format {
        Format::Json => canonical,
        // `submission_id: null` is taken out as well.
        Format::Yaml if !had_submission_id => text.to_string(),
        Format::Yaml => {
            let stripped: String =
                text.lines().filter(|l| !l.starts_with("submission_id:")).collect::<Vec<_>>().join("\n");
            let still_there = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&stripped)
                .ok()
                .is_none_or(|v| v.get("submission_id").is_some());
            if still_there {
                serde_yaml_ng::to_string(&doc).map_err(|e| ApiError::internal(e.to_string()))?
            } else {
                stripped
            }
        }
    };
    let spec = crate::job::parse(&spec_text).map_err(|e| ApiError::invalid_job(e.to_string(), e.problems()))?;
    let plan = crate::job::plan(&spec, &crate::worker::builtins::is_standard_builtin)
        .map_err(|e| ApiError::invalid_job(e.to_string(), e.problems()))?;
    Ok(Submission { name: plan.name.clone(), work: Work::TaskGraph(plan), submission_id, fingerprint })
}

fn entrypoint_submission(job: EntrypointJob, mut doc: serde_json::Value) -> Result<Submission, ApiError> {
    check_submission_id(&job.submission_id)?;
    let mut problems = Vec::new();
    if job.entrypoint.trim().is_empty() {
        problems.push("entrypoint: the command is empty".to_string());
    }
    if job.entrypoint.contains('\0') {
        problems.push("entrypoint: the command contains a NUL byte".to_string());
    }
    for k in job.env.keys() {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            problems.push(format!("env: `{k}` is not a valid variable name"));
        }
    }
    if job.env.values().any(|v| v.contains('\0')) {
        problems.push("env: a value contains a NUL byte".to_string());
    }
    let map: serde_json::Map<String, serde_json::Value> =
        job.resources.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let resources = ResourceSet::from_json_map(&map).unwrap_or_else(|e| {
        problems.push(format!("resources: {e}"));
        ResourceSet::new()
    });
    if !problems.is_empty() {
        return Err(ApiError::invalid_job(format!("invalid entrypoint job: {}", problems.join("; ")), problems));
    }
    if let Some(o) = doc.as_object_mut() {
        o.remove("submission_id");
    }
    Ok(Submission {
        name: job.name.clone().filter(|n| !n.trim().is_empty()).unwrap_or_else(|| "entrypoint".into()),
        submission_id: job.submission_id.clone(),
        fingerprint: super::jobs::fingerprint(&doc.to_string()),
        work: Work::Entrypoint { job, resources },
    })
}

/// Runs a job-manager call that writes the state store on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::internal(e.to_string()))?
}

/// `POST /api/v1/jobs`.
pub async fn submit_job(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let limit = st.config.max_body_bytes;
    let bytes: Bytes = axum::body::to_bytes(body, limit).await.map_err(|_| ApiError::payload_too_large(limit))?;
    let sub = parse_submission(&headers, &bytes)?;
    let jobs = st.jobs.clone();
    let (id, existing) = blocking(move || jobs.submit(sub)).await?;
    let status = if existing { StatusCode::OK } else { StatusCode::CREATED };
    let location = format!("/api/v1/jobs/{id}");
    Ok((status, [(header::LOCATION, location)], Json(SubmitJobResponse { id, existing })).into_response())
}

/// Query of `GET /api/v1/jobs`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobListQuery {
    /// Only jobs in this state.
    pub state: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size (1 to 1000, default 100).
    pub limit: Option<usize>,
}

fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::invalid_parameter(format!("limit {n} is not between 1 and {MAX_PAGE}"))),
    }
}

/// `GET /api/v1/jobs`.
pub async fn list_jobs(
    State(st): State<AppState>,
    q: Result<Query<JobListQuery>, QueryRejection>,
) -> Result<Json<JobList>, ApiError> {
    let q = query(q)?;
    let state = match &q.state {
        None => None,
        Some(s) => {
            Some(JobState::parse(s).ok_or_else(|| ApiError::invalid_parameter(format!("unknown job state `{s}`")))?)
        }
    };
    let after = match &q.cursor {
        None => 0,
        Some(c) => c.parse::<JobId>().map_err(|_| ApiError::invalid_parameter(format!("invalid cursor `{c}`")))?.0,
    };
    let (jobs, next) = st.jobs.list(state, after, page_limit(q.limit)?)?;
    Ok(Json(JobList { jobs, next_cursor: next.map(|n| JobId(n).to_string()) }))
}

/// `GET /api/v1/jobs/{id}`.
pub async fn get_job(State(st): State<AppState>, Path(id): Path<String>) -> Result<Json<Job>, ApiError> {
    st.jobs.get(&id).map(Json)
}

/// `POST /api/v1/jobs/{id}/stop`.
pub async fn stop_job(State(st): State<AppState>, Path(id): Path<String>) -> Result<Json<JobAction>, ApiError> {
    let jobs = st.jobs.clone();
    let job = id.clone();
    let state = blocking(move || jobs.stop(&job)).await?;
    Ok(Json(JobAction { id, state }))
}

/// `DELETE /api/v1/jobs/{id}`.
pub async fn delete_job(State(st): State<AppState>, Path(id): Path<String>) -> Result<Json<JobAction>, ApiError> {
    let jobs = st.jobs.clone();
    let job = id.clone();
    let state = blocking(move || jobs.delete(&job)).await?;
    Ok(Json(JobAction { id, state }))
}

/// Query of `GET /api/v1/jobs/{id}/logs`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    /// Keep the response open and stream new output until the job ends.
    #[serde(default)]
    pub follow: bool,
    /// Byte offset to start from (0: the oldest byte held).
    #[serde(default)]
    pub offset: u64,
}

/// `GET /api/v1/jobs/{id}/logs`.
pub async fn job_logs(
    State(st): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let job = st.jobs.get(&id)?;
    let job_id = job.id.parse::<JobId>().map_err(|_| ApiError::not_found("job", &id))?.0;
    let logs = st.jobs.gcs().job_logs.clone();
    let text = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    if !q.follow {
        let chunk = logs.read(job_id, q.offset, MAX_LOG_READ).map_err(|e| ApiError::unavailable(e.to_string()))?;
        return Ok((text, chunk.data).into_response());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::convert::Infallible>>(LOG_STREAM_QUEUE);
    let jobs = st.jobs.clone();
    tokio::spawn(async move {
        let mut offset = q.offset;
        let mut wake = logs.subscribe();
        loop {
            // Read the state first, then the log: output written before the
            // job ended is always sent before the stream closes.
            let ended = jobs.state(job_id).is_none_or(JobState::is_terminal);
            let chunk = match logs.read(job_id, offset, 64 * 1024) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(job = job_id, error = %e, "reading a followed job log failed");
                    return;
                }
            };
            offset = chunk.next_offset;
            if !chunk.data.is_empty() {
                if tx.send(Ok(chunk.data)).await.is_err() {
                    return;
                }
                continue;
            }
            if ended {
                return;
            }
            // Wake on new output or a job change; poll now and then anyway.
            let _ = tokio::time::timeout(Duration::from_secs(1), wake.changed()).await;
            if tx.is_closed() {
                return;
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Ok((text, Body::from_stream(stream)).into_response())
}

/// `GET /api/v1/objects/{id}`.
pub async fn get_object(State(st): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(match st.jobs.object(&id).await? {
        Value::Json(v) => Json(v).into_response(),
        Value::Bytes(b) => ([(header::CONTENT_TYPE, "application/octet-stream")], b).into_response(),
    })
}

// ---------------------------------------------------------------------------
// State API

/// Query of `GET /api/v1/tasks`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskListQuery {
    /// Only tasks of this job (8 hex digits).
    pub job: Option<String>,
    /// Only tasks in this state (`PENDING_ARGS`, ..., `CANCELLED`).
    pub state: Option<String>,
    /// Only tasks last placed on this node.
    pub node: Option<String>,
    /// Only tasks of this function descriptor (`builtin:add`, `exec:python3`).
    pub function: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size (1 to 1000, default 100).
    pub limit: Option<usize>,
}

fn hex_opt(n: Option<NodeId>) -> Option<String> {
    n.map(|n| n.to_string())
}

fn ms_opt(ms: u64) -> Option<u64> {
    (ms > 0).then_some(ms)
}

fn task_view(r: &TaskRecord, with_events: bool) -> TaskView {
    TaskView {
        task_id: r.task_id.to_string(),
        job_id: JobId(r.job_id).to_string(),
        name: r.name.clone(),
        function: r.function.clone(),
        state: task_events::state_name(r.state()).to_string(),
        attempt: r.attempt,
        node_id: hex_opt(r.node_id),
        owner_node_id: hex_opt(r.owner_node_id),
        created_at_ms: r.created_ms,
        started_at_ms: ms_opt(r.start_ms),
        ended_at_ms: ms_opt(r.end_ms),
        error: r.error.as_ref().map(|e| TaskErrorView {
            kind: e.kind.clone(),
            message: e.message.clone(),
            node_id: e.node_id.clone(),
            attempt: e.attempt,
            stderr_tail: e.stderr_tail.clone(),
        }),
        events: if with_events {
            r.events
                .iter()
                .map(|e| TaskEventView {
                    state: task_events::state_name(pb::TaskState::try_from(e.state).unwrap_or_default()).to_string(),
                    attempt: e.attempt,
                    node_id: node_hex(&e.node_id),
                    at_ms: e.at_ms,
                })
                .collect()
        } else {
            Vec::new()
        },
    }
}

fn history(s: &task_events::StoreSummary) -> TaskHistory {
    TaskHistory {
        tasks: s.tasks as u64,
        capacity: s.capacity as u64,
        evicted: s.evicted,
        dropped_events: s.dropped,
        bytes: s.bytes as u64,
        byte_capacity: s.byte_capacity as u64,
    }
}

/// `GET /api/v1/tasks`.
pub async fn list_tasks(
    State(st): State<AppState>,
    q: Result<Query<TaskListQuery>, QueryRejection>,
) -> Result<Json<TaskList>, ApiError> {
    let q = query(q)?;
    let bad = |what: &str, v: &str| ApiError::invalid_parameter(format!("invalid {what} `{v}`"));
    let filter = TaskFilter {
        job_id: q.job.as_deref().map(|j| j.parse::<JobId>().map(|j| j.0).map_err(|_| bad("job", j))).transpose()?,
        state: q.state.as_deref().map(|s| task_events::parse_state(s).ok_or_else(|| bad("state", s))).transpose()?,
        node_id: q.node.as_deref().map(|n| n.parse::<NodeId>().map_err(|_| bad("node", n))).transpose()?,
        function: q.function.clone(),
    };
    let after = match q.cursor.as_deref() {
        None => 0,
        Some(c) => u64::from_str_radix(c, 16).map_err(|_| bad("cursor", c))?,
    };
    let limit = page_limit(q.limit)?;
    let store = st.jobs.gcs().task_events.clone();
    // Listing walks an index under the store's lock; keep it off the async threads.
    let (page, summary) = tokio::task::spawn_blocking(move || {
        let s = store.lock().unwrap_or_else(|p| p.into_inner());
        (s.list(&filter, after, limit), s.summary())
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(TaskList {
        tasks: page.tasks.iter().map(|r| task_view(r, false)).collect(),
        next_cursor: page.next_cursor.map(|c| format!("{c:x}")),
        history: history(&summary),
    }))
}

/// `GET /api/v1/tasks/{id}`.
pub async fn get_task(State(st): State<AppState>, Path(id): Path<String>) -> Result<Json<TaskView>, ApiError> {
    let task_id: TaskId = id.parse().map_err(|_| ApiError::invalid_parameter(format!("`{id}` is not a task id")))?;
    let store = st.jobs.gcs().task_events.lock().unwrap_or_else(|p| p.into_inner());
    store.get(&task_id).map(|r| Json(task_view(r, true))).ok_or_else(|| ApiError::not_found("task", &id))
}

fn resources(r: Option<&pb::ResourceSet>) -> BTreeMap<String, f64> {
    r.map(|r| r.amounts.iter().map(|(k, v)| (k.clone(), *v as f64 / UNIT as f64)).collect()).unwrap_or_default()
}

fn node_views(st: &AppState) -> Vec<NodeView> {
    let (nodes, loads) = st.jobs.gcs().nodes();
    nodes
        .iter()
        .map(|n| {
            let load = loads.iter().find(|l| l.node_id == n.node_id);
            let total = resources(n.total.as_ref());
            let available = resources(load.and_then(|l| l.available.as_ref()));
            let queued = load.map(|l| l.queued_tasks).unwrap_or(0);
            let all_free = total.iter().all(|(k, v)| available.get(k).is_some_and(|a| a >= v));
            NodeView {
                node_id: node_hex(&n.node_id).unwrap_or_default(),
                state: if n.state == pb::NodeState::NodeAlive as i32 { "ALIVE" } else { "DEAD" }.to_string(),
                address: n.address.clone(),
                hostname: n.hostname.clone(),
                labels: n.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                resources_total: total,
                resources_available: available,
                queued_tasks: queued,
                object_store_used_bytes: load.map(|l| l.object_store_used).unwrap_or(0),
                object_store_capacity_bytes: load.map(|l| l.object_store_capacity).unwrap_or(0),
                idle: queued == 0 && all_free,
                started_at_ms: n.started_at_ms,
                death_reason: n.death_reason.clone(),
            }
        })
        .collect()
}

/// `GET /api/v1/nodes`.
pub async fn list_nodes(State(st): State<AppState>) -> Json<NodeList> {
    Json(NodeList { nodes: node_views(&st) })
}

/// The cluster summary (also feeds the head's metrics).
pub fn cluster_summary(st: &AppState) -> ClusterSummary {
    let nodes = node_views(st);
    let mut view = ClusterSummary {
        alive_nodes: 0,
        dead_nodes: 0,
        resources_total: BTreeMap::new(),
        resources_available: BTreeMap::new(),
        queued_tasks: 0,
        object_store_used_bytes: 0,
        object_store_capacity_bytes: 0,
        jobs: st.jobs.counts().into_iter().map(|(s, n)| (s.as_str().to_string(), n)).collect(),
        tasks: BTreeMap::new(),
        history: TaskHistory { tasks: 0, capacity: 0, evicted: 0, dropped_events: 0, bytes: 0, byte_capacity: 0 },
    };
    for n in &nodes {
        if n.state != "ALIVE" {
            view.dead_nodes += 1;
            continue;
        }
        view.alive_nodes += 1;
        for (k, v) in &n.resources_total {
            *view.resources_total.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &n.resources_available {
            *view.resources_available.entry(k.clone()).or_default() += v;
        }
        view.queued_tasks += n.queued_tasks as u64;
        view.object_store_used_bytes += n.object_store_used_bytes;
        view.object_store_capacity_bytes += n.object_store_capacity_bytes;
    }
    let summary = st.jobs.gcs().task_events.lock().unwrap_or_else(|p| p.into_inner()).summary();
    for s in task_events::ALL_STATES {
        view.tasks.insert(task_events::state_name(s).to_string(), summary.by_state[s as usize]);
    }
    view.history = history(&summary);
    view
}

/// `GET /api/v1/cluster`.
pub async fn cluster(State(st): State<AppState>) -> Json<ClusterSummary> {
    Json(cluster_summary(&st))
}

/// `GET /openapi.json`.
pub async fn openapi() -> Json<serde_json::Value> {
    Json(super::openapi::document())
}
