//! The API's errors: every failure is a 4xx/5xx with
//! `{"error": "...", "status": N}`. HTTP status codes are chosen here and
//! nowhere else: the layers below report what went wrong
//! ([`session::Error`]), this file says what that means in HTTP.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use serde_json::json;

use crate::session;

/// An error response: HTTP status and message.
#[derive(Debug)]
pub struct Error {
    pub status: u16,
    pub message: String,
}

pub fn err(status: u16, msg: impl Into<String>) -> Error {
    Error {
        status,
        message: msg.into(),
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            code,
            Json(json!({ "error": self.message, "status": self.status })),
        )
            .into_response()
    }
}

/// The HTTP status of a failure of the signalling or session layer.
pub fn status_of(e: &session::Error) -> u16 {
    match e {
        session::Error::Invalid(_) => 400,
        session::Error::NotFound(_) => 404,
        session::Error::Conflict(_) => 409,
        session::Error::Upstream(_) => 502,
        session::Error::Unavailable(_) => 503,
        session::Error::Timeout(_) => 504,
    }
}

impl From<session::Error> for Error {
    fn from(e: session::Error) -> Error {
        err(status_of(&e), e.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_statuses() {
        for (e, code) in [
            (session::Error::Invalid("x".into()), 400),
            (session::Error::NotFound("x".into()), 404),
            (session::Error::Conflict("x".into()), 409),
            (session::Error::Upstream("x".into()), 502),
            (session::Error::Unavailable("x".into()), 503),
            (session::Error::Timeout("x".into()), 504),
        ] {
            let r: Error = e.into();
            assert_eq!((r.status, r.message.as_str()), (code, "x"));
        }
    }
}
