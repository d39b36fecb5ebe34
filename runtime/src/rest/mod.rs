//! The head's REST API (axum): jobs, the state API, result objects and the
//! OpenAPI document, next to `/healthz`, `/readyz` and `/metrics`.
//!
//! ```text
//!   HTTP ──▶ metrics layer ──▶ auth (/api only) ──▶ handlers ──▶ jobs::JobManager ──▶ Client ──▶ raylet
//!                                                       │
//!                                                       └──▶ GCS (nodes, task events, job logs)
//! ```
//!
//! One route table ([`endpoints`]) builds both the router and the OpenAPI
//! document. Every error is a JSON [`error::ApiError`]; bodies are capped at
//! [`RestConfig::max_body_bytes`]; unknown routes answer 404 in the same
//! shape. Invariant: a request either registers a whole job or none.

pub mod auth;
pub mod client;
pub mod error;
pub mod handlers;
pub mod jobs;
pub mod openapi;
pub mod types;

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, MethodRouter};
use axum::Router;
use schemars::generate::SchemaGenerator;
use schemars::Schema;

use crate::gcs::Gcs;

/// Default cap on request bodies.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 << 20;

/// Settings of the REST API.
#[derive(Clone, Debug)]
pub struct RestConfig {
    /// The cluster token every `/api` request must carry as a bearer token;
    /// `None` (authentication turned off) leaves the API open.
    pub token: Option<crate::auth::Token>,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// The raylet that owns the jobs' tasks (the head's own); `None` picks
    /// the least-loaded worker node for each job.
    pub owner: Option<jobs::Owner>,
}

impl Default for RestConfig {
    fn default() -> Self {
        RestConfig { token: None, max_body_bytes: DEFAULT_MAX_BODY_BYTES, owner: None }
    }
}

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The job manager (and through it the GCS).
    pub jobs: jobs::JobManager,
    /// Settings.
    pub config: std::sync::Arc<RestConfig>,
}

/// Where a parameter goes.
#[derive(Clone, Copy, Debug)]
pub enum ParamIn {
    /// In the path.
    Path,
    /// In the query string.
    Query,
}

/// What a parameter's value must be: the handler refuses (400, or 404 for
/// a job id) exactly what this does not allow.
#[derive(Clone, Copy, Debug)]
pub enum ParamSchema {
    /// Exactly this many hex digits, either case (an id).
    Hex(usize),
    /// 1 to this many hex digits, either case (a cursor).
    HexUpTo(usize),
    /// An integer in `min..=max`.
    Integer {
        /// Smallest value.
        min: u64,
        /// Largest value.
        max: u64,
    },
    /// `true` or `false`.
    Boolean,
    /// A job state name.
    JobState,
    /// A task state name.
    TaskState,
    /// Any text.
    Text,
}

impl ParamSchema {
    /// The JSON Schema of the value.
    pub fn json(self) -> serde_json::Value {
        use serde_json::json;
        match self {
            ParamSchema::Hex(n) => json!({ "type": "string", "pattern": format!("^[0-9a-fA-F]{{{n}}}$") }),
            ParamSchema::HexUpTo(n) => json!({ "type": "string", "pattern": format!("^[0-9a-fA-F]{{1,{n}}}$") }),
            ParamSchema::Integer { min, max } => json!({ "type": "integer", "minimum": min, "maximum": max }),
            ParamSchema::Boolean => json!({ "type": "boolean" }),
            ParamSchema::JobState => {
                json!({ "type": "string", "enum": types::JobState::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>() })
            }
            ParamSchema::TaskState => json!({
                "type": "string",
                "enum": crate::gcs::task_events::ALL_STATES
                    .iter()
                    .map(|s| crate::gcs::task_events::state_name(*s))
                    .collect::<Vec<_>>(),
            }),
            ParamSchema::Text => json!({ "type": "string" }),
        }
    }
}

/// A documented parameter.
#[derive(Clone, Copy, Debug)]
pub struct Param {
    /// Name.
    pub name: &'static str,
    /// Where.
    pub location: ParamIn,
    /// What its value must be.
    pub schema: ParamSchema,
    /// What it does.
    pub description: &'static str,
}

type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// What the OpenAPI document says of a route.
pub struct EndpointDoc {
    /// HTTP method.
    pub method: &'static str,
    /// Path template.
    pub path: &'static str,
    /// operationId.
    pub operation_id: &'static str,
    /// One line.
    pub summary: &'static str,
    /// Parameters.
    pub params: &'static [Param],
    /// Body schema.
    pub request: Option<SchemaFn>,
    /// Success statuses (the first is the usual one).
    pub success: &'static [u16],
    /// Success body schema (none for text or bytes).
    pub response: Option<SchemaFn>,
    /// Success media types: the first carries `response`, the others any bytes.
    pub response_media: &'static [&'static str],
    /// Error statuses the route can answer, each with an [`types::ErrorBody`].
    pub errors: Vec<u16>,
    /// Whether the token applies.
    pub authenticated: bool,
}

/// A route: its documentation and its handler.
pub struct Endpoint {
    /// Documentation.
    pub doc: EndpointDoc,
    /// Handler.
    pub handler: MethodRouter<AppState>,
}

fn schema<T: schemars::JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

fn body<T: schemars::JsonSchema>() -> Option<SchemaFn> {
    Some(schema::<T>)
}

#[allow(clippy::too_many_arguments)]
fn api(
    method: &'static str,
    path: &'static str,
    operation_id: &'static str,
    summary: &'static str,
    params: &'static [Param],
    request: Option<SchemaFn>,
    success: &'static [u16],
    response: Option<SchemaFn>,
    errors: &[u16],
    handler: MethodRouter<AppState>,
) -> Endpoint {
    Endpoint {
        doc: EndpointDoc {
            method,
            path,
            operation_id,
            summary,
            params,
            request,
            success,
            response,
            response_media: &[JSON],
            errors: errors.to_vec(),
            authenticated: true,
        },
        handler,
    }
}

const JSON: &str = "application/json";
const OK: &[u16] = &[200];

const fn path_id(description: &'static str, digits: usize) -> Param {
    Param { name: "id", location: ParamIn::Path, schema: ParamSchema::Hex(digits), description }
}

const fn query(name: &'static str, schema: ParamSchema, description: &'static str) -> Param {
    Param { name, location: ParamIn::Query, schema, description }
}

/// Hex digits of the ids in paths and queries.
const JOB_ID_DIGITS: usize = 8;
const TASK_ID_DIGITS: usize = 24;
const OBJECT_ID_DIGITS: usize = 32;
const NODE_ID_DIGITS: usize = 16;
/// Hex digits of a task listing's cursor (a u64).
pub const TASK_CURSOR_DIGITS: usize = 16;

const JOB_ID: Param = path_id("Job id (8 hex digits).", JOB_ID_DIGITS);
const TASK_ID: Param = path_id("Task id (24 hex digits).", TASK_ID_DIGITS);
const OBJECT_ID: Param = path_id("Object id (32 hex digits).", OBJECT_ID_DIGITS);
const LIMIT: Param = query(
    "limit",
    ParamSchema::Integer { min: 1, max: handlers::MAX_PAGE as u64 },
    "Page size, 1 to 1000 (100 when absent).",
);
const LIST_JOBS: &[Param] = &[
    query("state", ParamSchema::JobState, "Only jobs in this state."),
    query("cursor", ParamSchema::Hex(JOB_ID_DIGITS), "`next_cursor` of the previous page."),
    LIMIT,
];
const LIST_TASKS: &[Param] = &[
    query("job", ParamSchema::Hex(JOB_ID_DIGITS), "Only tasks of this job."),
    query("state", ParamSchema::TaskState, "Only tasks in this state."),
    query("node", ParamSchema::Hex(NODE_ID_DIGITS), "Only tasks last placed on this node."),
    query("function", ParamSchema::Text, "Only tasks of this function descriptor (`builtin:add`)."),
    query("cursor", ParamSchema::HexUpTo(TASK_CURSOR_DIGITS), "`next_cursor` of the previous page."),
    LIMIT,
];
const JOB_LOGS: &[Param] = &[
    JOB_ID,
    query("follow", ParamSchema::Boolean, "Stream until the job ends."),
    query("offset", ParamSchema::Integer { min: 0, max: u64::MAX }, "Byte offset to start at (0)."),
];

/// Every status a runtime error can answer with (`GET /api/v1/objects/{id}`).
fn kind_statuses() -> Vec<u16> {
    let mut v: Vec<u16> = crate::error::ErrorKind::ALL.iter().map(|k| k.http_status()).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Every route of the API. The router and the OpenAPI document are both built from it.
pub fn endpoints() -> Vec<Endpoint> {
    use handlers as h;
    use types as t;
    let mut v = vec![
        api(
            "POST",
            "/api/v1/jobs",
            "submitJob",
            "Submit a task-graph job or an entrypoint job (JSON, or YAML by Content-Type). 201 for a new job, \
             200 for a repeat of an earlier submission with the same `submission_id` and body.",
            &[],
            body::<t::SubmitJobRequest>(),
            &[201, 200],
            body::<t::SubmitJobResponse>(),
            &[400, 401, 409, 413, 415, 422, 503],
            post(h::submit_job),
        ),
        api(
            "GET",
            "/api/v1/jobs",
            "listJobs",
            "List jobs, oldest first.",
            LIST_JOBS,
            None,
            OK,
            body::<t::JobList>(),
            &[400, 401],
            get(h::list_jobs),
        ),
        api(
            "GET",
            "/api/v1/jobs/{id}",
            "getJob",
            "One job.",
            &[JOB_ID],
            None,
            OK,
            body::<t::Job>(),
            &[401, 404],
            get(h::get_job),
        ),
        api(
            "DELETE",
            "/api/v1/jobs/{id}",
            "deleteJob",
            "Forget a terminal job and release its result objects.",
            &[JOB_ID],
            None,
            OK,
            body::<t::JobAction>(),
            &[401, 404, 409],
            delete(h::delete_job),
        ),
        api(
            "POST",
            "/api/v1/jobs/{id}/stop",
            "stopJob",
            "Stop a job: no further tasks start, the driver is terminated.",
            &[JOB_ID],
            None,
            OK,
            body::<t::JobAction>(),
            &[401, 404, 409],
            post(h::stop_job),
        ),
        api(
            "GET",
            "/api/v1/objects/{id}",
            "getObject",
            "Download a result object held by a job (JSON, or application/octet-stream for raw bytes). \
             When the object failed, the answer has the status and the `kind` of the runtime's error \
             (424 a failed task, 410 a lost or cancelled object, 507 a full object store, ...).",
            &[OBJECT_ID],
            None,
            OK,
            None,
            &[&[400, 401, 404][..], &kind_statuses()].concat(),
            get(h::get_object),
        ),
        api(
            "GET",
            "/api/v1/tasks",
            "listTasks",
            "List tasks in the order the head first heard of them, filtered and paginated.",
            LIST_TASKS,
            None,
            OK,
            body::<t::TaskList>(),
            &[400, 401],
            get(h::list_tasks),
        ),
        api(
            "GET",
            "/api/v1/tasks/{id}",
            "getTask",
            "One task with its transitions, node, timings and error.",
            &[TASK_ID],
            None,
            OK,
            body::<t::TaskView>(),
            &[400, 401, 404],
            get(h::get_task),
        ),
        api(
            "GET",
            "/api/v1/nodes",
            "listNodes",
            "Every node.",
            &[],
            None,
            OK,
            body::<t::NodeList>(),
            &[401],
            get(h::list_nodes),
        ),
        api(
            "GET",
            "/api/v1/cluster",
            "getCluster",
            "Resources, queues, object store use, jobs and tasks of the whole cluster.",
            &[],
            None,
            OK,
            body::<t::ClusterSummary>(),
            &[401],
            get(h::cluster),
        ),
    ];
    let mut logs = api(
        "GET",
        "/api/v1/jobs/{id}/logs",
        "getJobLogs",
        "A job's log (driver output and job-manager notes); `follow=true` streams until the job ends.",
        JOB_LOGS,
        None,
        OK,
        None,
        &[400, 401, 404],
        get(h::job_logs),
    );
    logs.doc.response_media = &["text/plain"];
    v.push(logs);
    if let Some(o) = v.iter_mut().find(|e| e.doc.operation_id == "getObject") {
        o.doc.response_media = &[JSON, "application/octet-stream"];
    }
    v.push(Endpoint {
        doc: EndpointDoc {
            method: "GET",
            path: "/openapi.json",
            operation_id: "openapi",
            summary: "This document.",
            params: &[],
            request: None,
            success: OK,
            response: None,
            response_media: &[JSON],
            errors: Vec::new(),
            authenticated: false,
        },
        handler: get(h::openapi),
    });
    v
}

/// Counts and times every request by route template, method and status.
async fn track(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string());
    let route = route.unwrap_or_else(|| "unmatched".to_string());
    let method = req.method().as_str().to_string();
    let resp = next.run(req).await;
    let m = st.jobs.gcs().metrics();
    m.http_requests.with_label_values(&[&route, &method, resp.status().as_str()]).inc();
    m.http_seconds.with_label_values(&[&route, &method]).observe(started.elapsed().as_secs_f64());
    resp
}

async fn not_found(req: Request) -> Response {
    error::ApiError::no_route(req.method().as_str(), req.uri().path()).into_response()
}

/// The head's whole HTTP app: the API, health and metrics. Restores the jobs the GCS's state store holds; an unreadable store is an error.
pub fn router(gcs: Gcs, config: RestConfig) -> Result<Router, crate::gcs::state::StateError> {
    let jobs = jobs::JobManager::open(gcs)?.with_owner(config.owner.clone()).with_token(config.token.clone());
    let state = AppState { jobs, config: std::sync::Arc::new(config) };
    let mut api: Router<AppState> = Router::new();
    let mut open: Router<AppState> = Router::new();
    for ep in endpoints() {
        if ep.doc.authenticated {
            api = api.route(ep.doc.path, ep.handler);
        } else {
            open = open.route(ep.doc.path, ep.handler);
        }
    }
    let api = api.route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::require_token));
    let refresh_state = state.clone();
    let refresh: crate::http::Refresh = std::sync::Arc::new(move || refresh_head_metrics(&refresh_state));
    let registry = state.jobs.gcs().metrics().registry().clone();
    let track_state = state.clone();
    Ok(api
        .merge(open)
        .method_not_allowed_fallback(|| async { error::ApiError::method_not_allowed().into_response() })
        .fallback(not_found)
        .with_state(state)
        .merge(crate::http::health_and_metrics(registry, Some(refresh)))
        .layer(axum::middleware::from_fn_with_state(track_state, track)))
}

fn refresh_head_metrics(st: &AppState) {
    let m = st.jobs.gcs().metrics();
    let view = handlers::cluster_summary(st);
    for s in types::JobState::ALL {
        m.jobs.with_label_values(&[s.as_str()]).set(view.jobs.get(s.as_str()).copied().unwrap_or(0) as i64);
    }
    m.nodes.with_label_values(&["ALIVE"]).set(view.alive_nodes as i64);
    m.nodes.with_label_values(&["DEAD"]).set(view.dead_nodes as i64);
    for (k, v) in &view.resources_total {
        m.resources.with_label_values(&[k]).set(*v as i64);
    }
    for (k, v) in &view.resources_available {
        m.resources_available.with_label_values(&[k]).set(*v as i64);
    }
    let summary = st.jobs.gcs().task_events.lock().unwrap_or_else(|p| p.into_inner()).summary();
    m.refresh_tasks(&summary);
}
