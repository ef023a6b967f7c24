//! The API's error answer, and the one place where a domain error kind becomes an
//! HTTP status code.

use crate::ops::{Kind, OpError};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use std::collections::BTreeMap;

/// An error answer: HTTP status, stable code, message. Serialized as
/// `{"code": "…", "message": "…"}` inside `{"error": …}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.status, self.message)
    }
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

/// The status of each kind of domain error.
pub fn status_of(kind: Kind) -> u16 {
    match kind {
        Kind::Invalid => 422,
        Kind::NotFound => 404,
        Kind::Conflict => 409,
        Kind::Forbidden => 403,
        Kind::Unavailable => 503,
        Kind::Internal => 500,
    }
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        ApiError::new(status_of(e.kind), e.code, e.message)
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        OpError::from(e).into()
    }
}

/// API requests answered with an error, by status (for `/metrics`).
pub static REJECTED: std::sync::LazyLock<std::sync::Mutex<BTreeMap<u16, u64>>> =
    std::sync::LazyLock::new(Default::default);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Ok(mut m) = REJECTED.lock() {
            *m.entry(self.status).or_default() += 1;
        }
        if self.status >= 500 {
            tracing::error!(status = self.status, code = %self.code, message = %self.message, "API request failed");
        } else {
            tracing::info!(status = self.status, code = %self.code, message = %self.message, "API request refused");
        }
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(serde_json::json!({"error": self}))).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_status() {
        let table = [
            (Kind::Invalid, 422),
            (Kind::NotFound, 404),
            (Kind::Conflict, 409),
            (Kind::Forbidden, 403),
            (Kind::Unavailable, 503),
            (Kind::Internal, 500),
        ];
        for (kind, status) in table {
            let e: ApiError = OpError::new(kind, "x", "m").into();
            assert_eq!((e.status, e.code, e.message.as_str()), (status, "x", "m"));
        }
        let down = crate::store::StoreError::Backend {
            backend: "test",
            message: "gone".into(),
        };
        assert_eq!(ApiError::from(down).status, 503);
    }
}
