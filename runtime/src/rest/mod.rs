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

use axum::extract::{MatchedPath, Request};
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
    /// Bearer token every `/api` request must carry; `None` leaves the API open.
    pub token: Option<String>,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
}

impl Default for RestConfig {
    fn default() -> Self {
        RestConfig { token: None, max_body_bytes: DEFAULT_MAX_BODY_BYTES }
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

/// A documented parameter.
#[derive(Clone, Copy, Debug)]
pub struct Param {
    /// Name.
    pub name: &'static str,
    /// Where.
    pub location: ParamIn,
    /// JSON type.
    pub kind: &'static str,
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
    /// Success status.
    pub success: u16,
    /// Success body schema (none for text or bytes).
    pub response: Option<SchemaFn>,
    /// Success media type.
    pub response_media: &'static str,
    /// Error statuses the route can answer.
    pub errors: &'static [u16],
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
    success: u16,
    response: Option<SchemaFn>,
    errors: &'static [u16],
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
            response_media: JSON,
            errors,
            authenticated: true,
        },
        handler,
    }
}

const JSON: &str = "application/json";
const ID: Param = Param { name: "id", location: ParamIn::Path, kind: "string", description: "Id (hex)." };
const CURSOR: Param = Param {
    name: "cursor",
    location: ParamIn::Query,
    kind: "string",
    description: "`next_cursor` of the previous page.",
};
const LIMIT: Param =
    Param { name: "limit", location: ParamIn::Query, kind: "integer", description: "Page size, 1 to 1000 (100)." };

/// Every route of the API. The router and the OpenAPI document are both built from it.
pub fn endpoints() -> Vec<Endpoint> {
    use handlers as h;
    use types as t;
    let mut v = vec![
        api(
            "POST",
            "/api/v1/jobs",
            "submitJob",
            "Submit a task-graph job or an entrypoint job (JSON, or YAML by Content-Type).",
            &[],
            body::<t::SubmitJobRequest>(),
            201,
            body::<t::SubmitJobResponse>(),
            &[400, 401, 409, 413, 415, 422],
            post(h::submit_job),
        ),
        api(
            "GET",
            "/api/v1/jobs",
            "listJobs",
            "List jobs, oldest first.",
            &[
                Param { name: "state", location: ParamIn::Query, kind: "string", description: "Only this state." },
                CURSOR,
                LIMIT,
            ],
            None,
            200,
            body::<t::JobList>(),
            &[400, 401],
            get(h::list_jobs),
        ),
        api(
            "GET",
            "/api/v1/jobs/{id}",
            "getJob",
            "One job.",
            &[ID],
            None,
            200,
            body::<t::Job>(),
            &[401, 404],
            get(h::get_job),
        ),
        api(
            "DELETE",
            "/api/v1/jobs/{id}",
            "deleteJob",
            "Forget a terminal job and release its result objects.",
            &[ID],
            None,
            200,
            body::<t::JobAction>(),
            &[401, 404, 409],
            delete(h::delete_job),
        ),
        api(
            "POST",
            "/api/v1/jobs/{id}/stop",
            "stopJob",
            "Stop a job: no further tasks start, the driver is terminated.",
            &[ID],
            None,
            200,
            body::<t::JobAction>(),
            &[401, 404, 409],
            post(h::stop_job),
        ),
        api(
            "GET",
            "/api/v1/objects/{id}",
            "getObject",
            "Download a result object held by a job (JSON, or application/octet-stream for raw bytes).",
            &[ID],
            None,
            200,
            None,
            &[400, 401, 404, 503],
            get(h::get_object),
        ),
        api(
            "GET",
            "/api/v1/tasks",
            "listTasks",
            "List tasks in the order the head first heard of them, filtered and paginated.",
            &[
                Param { name: "job", location: ParamIn::Query, kind: "string", description: "Job id." },
                Param { name: "state", location: ParamIn::Query, kind: "string", description: "Task state." },
                Param { name: "node", location: ParamIn::Query, kind: "string", description: "Node id." },
                Param {
                    name: "function",
                    location: ParamIn::Query,
                    kind: "string",
                    description: "Function descriptor.",
                },
                CURSOR,
                LIMIT,
            ],
            None,
            200,
            body::<t::TaskList>(),
            &[400, 401],
            get(h::list_tasks),
        ),
        api(
            "GET",
            "/api/v1/tasks/{id}",
            "getTask",
            "One task with its transitions, node, timings and error.",
            &[ID],
            None,
            200,
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
            200,
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
            200,
            body::<t::ClusterView>(),
            &[401],
            get(h::cluster),
        ),
    ];
    let mut logs = api(
        "GET",
        "/api/v1/jobs/{id}/logs",
        "getJobLogs",
        "A job's log (driver output and job-manager notes); `follow=true` streams until the job ends.",
        &[
            ID,
            Param {
                name: "follow",
                location: ParamIn::Query,
                kind: "boolean",
                description: "Stream until the job ends.",
            },
            Param {
                name: "offset",
                location: ParamIn::Query,
                kind: "integer",
                description: "Byte offset to start at.",
            },
        ],
        None,
        200,
        None,
        &[400, 401, 404],
        get(h::job_logs),
    );
    logs.doc.response_media = "text/plain";
    v.push(logs);
    v.push(Endpoint {
        doc: EndpointDoc {
            method: "GET",
            path: "/openapi.json",
            operation_id: "openapi",
            summary: "This document.",
            params: &[],
            request: None,
            success: 200,
            response: None,
            response_media: JSON,
            errors: &[],
            authenticated: false,
        },
        handler: get(h::openapi),
    });
    v
}

/// Counts and times every request by route template, method and status.
async fn track(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string());
    let route = route.unwrap_or_else(|| "unmatched".to_string());
    let method = req.method().as_str().to_string();
    let resp = next.run(req).await;
    let m = crate::metrics::head();
    m.http_requests.with_label_values(&[&route, &method, resp.status().as_str()]).inc();
    m.http_seconds.with_label_values(&[&route, &method]).observe(started.elapsed().as_secs_f64());
    resp
}

async fn not_found(req: Request) -> Response {
    error::ApiError::no_route(req.method().as_str(), req.uri().path()).into_response()
}

/// The head's whole HTTP app: the API, health and metrics.
pub fn router(gcs: Gcs, config: RestConfig) -> Router {
    let state = AppState { jobs: jobs::JobManager::new(gcs), config: std::sync::Arc::new(config) };
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
    api.merge(open)
        .method_not_allowed_fallback(|| async { error::ApiError::method_not_allowed().into_response() })
        .fallback(not_found)
        .with_state(state)
        .merge(crate::http::health_routes(Some(refresh)))
        .layer(axum::middleware::from_fn(track))
}

fn refresh_head_metrics(st: &AppState) {
    let m = crate::metrics::head();
    let view = handlers::cluster_view(st);
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
