//! Bearer-token authentication of the `/api` routes.
//!
//! Every `/api` request must carry `Authorization: Bearer <cluster token>`
//! (`crate::auth`), compared in constant time; without it, or with a wrong
//! one, the answer is 401 and nothing else. Health, metrics and the OpenAPI
//! document stay open. Only a head started with authentication explicitly
//! turned off has no token, and then the API is open.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::AppState;

/// Middleware: rejects `/api` requests without the token (when one is set).
pub async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(token) = &state.config.token {
        let ok = req.headers().get(header::AUTHORIZATION).is_some_and(|v| token.matches_bearer(v.as_bytes()));
        if !ok {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}
