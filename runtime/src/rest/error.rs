//! The REST API's error: an HTTP status, a stable machine-readable code, the
//! runtime's [`ErrorKind`] and a message, sent as
//! `{"error": CODE, "kind": KIND, "message": ..., "problems": [...]}`.
//!
//! The status is the kind's ([`ErrorKind::http_status`]), refined only where
//! HTTP has a word the runtime does not need (405, 413, 415). Codes and kinds
//! are part of the API contract (clients and tests match on them); messages
//! are for people and may change.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::types::ErrorBody;
use crate::error::{Error, ErrorKind};

/// An API error.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code, e.g. `not_found`.
    pub code: &'static str,
    /// What went wrong, in the runtime's vocabulary.
    pub kind: ErrorKind,
    /// What went wrong, for people.
    pub message: String,
    /// Every problem found, one line each (job-spec validation).
    pub problems: Vec<String>,
}

fn status_of(kind: ErrorKind) -> StatusCode {
    StatusCode::from_u16(kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl ApiError {
    fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status: status_of(kind), code, kind, message: message.into(), problems: Vec::new() }
    }

    fn with_status(self, status: StatusCode) -> Self {
        ApiError { status, ..self }
    }

    /// A runtime error met while serving an object (`get` of a job's result):
    /// the kind's status and the kind itself, so a failed task is not
    /// reported as an outage.
    pub fn object(id: &str, e: &Error) -> Self {
        Self::new(e.kind(), "object_error", format!("object {id}: {e}"))
    }

    /// 400: the body is not well-formed JSON or YAML.
    pub fn malformed_body(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidRequest, "malformed_body", message)
    }

    /// 400: a path or query parameter is not valid.
    pub fn invalid_parameter(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidRequest, "invalid_parameter", message)
    }

    /// 401: no or a wrong bearer token.
    pub fn unauthorized() -> Self {
        Self::new(
            ErrorKind::Unauthenticated,
            "unauthorized",
            format!("{} as `Authorization: Bearer TOKEN`", crate::auth::UNAUTHENTICATED),
        )
    }

    /// 404: no such resource.
    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(ErrorKind::NotFound, "not_found", format!("{what} {id} not found"))
    }

    /// 410: a result object of a job that ended before the head restarted;
    /// the sessions that owned it ended with the old head.
    pub fn object_gone(id: &str, job: &str) -> Self {
        Self::new(
            ErrorKind::OwnerDied,
            "object_gone",
            format!(
                "object {id} was a result of job {job}, which ended before the head restarted; its owner ended with \
                 the old head, so it can no longer be served (run the job again to compute it)"
            ),
        )
    }

    /// 404: no such route.
    pub fn no_route(method: &str, path: &str) -> Self {
        Self::new(ErrorKind::NotFound, "not_found", format!("no route for {method} {path}"))
    }

    /// 405: the route exists but not with this method.
    pub fn method_not_allowed() -> Self {
        Self::new(ErrorKind::InvalidRequest, "method_not_allowed", "this route does not take that method")
            .with_status(StatusCode::METHOD_NOT_ALLOWED)
    }

    /// 409: the request conflicts with the resource's state.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, code, message)
    }

    /// 413: the body is larger than the limit.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(ErrorKind::InvalidRequest, "payload_too_large", format!("the body exceeds {limit} bytes"))
            .with_status(StatusCode::PAYLOAD_TOO_LARGE)
    }

    /// 415: a body in a format the route does not read.
    pub fn unsupported_media_type(got: &str) -> Self {
        Self::new(
            ErrorKind::InvalidRequest,
            "unsupported_media_type",
            format!("content type `{got}` is not accepted; send application/json or application/yaml"),
        )
        .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE)
    }

    /// 422: a well-formed body that is not a valid job.
    pub fn invalid_job(message: impl Into<String>, problems: Vec<String>) -> Self {
        ApiError { problems, ..Self::new(ErrorKind::InvalidTask, "invalid_job_spec", message) }
    }

    /// 503: the cluster cannot serve the request now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, "unavailable", message)
    }

    /// 500: a bug or an unexpected runtime failure.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, "internal", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            ErrorBody { error: self.code.to_string(), kind: self.kind, message: self.message, problems: self.problems };
        (self.status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::TaskError;

    #[test]
    fn an_object_error_answers_with_its_kind_and_the_kinds_status() {
        let failed = Error::from(TaskError::new(ErrorKind::TaskFailed, "boom"));
        let e = ApiError::object("ab", &failed);
        assert_eq!((e.status.as_u16(), e.kind), (424, ErrorKind::TaskFailed));
        let full = Error::from(TaskError::new(ErrorKind::ObjectStoreFull, "no room"));
        assert_eq!(ApiError::object("ab", &full).status.as_u16(), 507);
        let lost = Error::from(TaskError::new(ErrorKind::OwnerDied, "gone"));
        assert_eq!(ApiError::object("ab", &lost).status, StatusCode::GONE);
    }

    #[test]
    fn every_request_error_is_a_4xx_of_its_kind() {
        for e in [
            ApiError::malformed_body("x"),
            ApiError::invalid_parameter("x"),
            ApiError::unauthorized(),
            ApiError::not_found("job", "1"),
            ApiError::method_not_allowed(),
            ApiError::conflict("job_terminal", "x"),
            ApiError::payload_too_large(1),
            ApiError::unsupported_media_type("a/b"),
            ApiError::invalid_job("x", Vec::new()),
        ] {
            assert!(e.status.is_client_error(), "{e}");
            assert!(e.kind.http_status() < 500, "{e}");
        }
        assert_eq!(ApiError::unavailable("x").status.as_u16(), ErrorKind::Unavailable.http_status());
    }
}
