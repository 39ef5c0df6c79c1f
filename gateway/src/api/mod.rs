//! The REST API (JSON over HTTP/1.1), 127.0.0.1 by default, with an
//! optional bearer token. Every error is a 4xx/5xx with
//! `{"error": "...", "status": N}`.
//!
//! | method | path | |
//! |---|---|---|
//! | GET | /api/devices | devices (`?state=online\|offline&offset=&limit=`) |
//! | GET | /api/devices/{id} | one device |
//! | DELETE | /api/devices/{id} | forget a device |
//! | GET | /api/devices/{id}/channels | its catalog |
//! | POST | /api/devices/{id}/catalog | ask the device for its catalog again (202) |
//! | GET | /api/devices/{id}/info | DeviceInfo, asked now |
//! | GET | /api/devices/{id}/status | DeviceStatus, asked now |
//! | GET | /api/streams | live streams (`?all=true`: and recently closed) |
//! | POST | /api/streams | `{device, channel, transport}`: INVITE; 201 when established |
//! | GET | /api/streams/{id} | one stream |
//! | DELETE | /api/streams/{id} | BYE |
//! | GET | /api/platforms | superior platforms (cascade) and their registration |
//! | GET | /api/platforms/{id} | one (by ID or name) |
//! | GET | /api/keys | media keys (`?device=&channel=`), check values only |
//! | POST | /api/keys | add a key (201; 409 if that version exists) |
//! | POST | /api/keys/rotate | add a version, retire the others (`?grace_secs=60`) |
//! | DELETE | /api/keys/{device}/{channel}/{profile}/{version} | remove a key |
//! | PUT | /api/vkeks/{device} | `{key}`: the device's key-encryption key |
//! | DELETE | /api/vkeks/{device} | remove it |
//! | GET | /api/stats | control-plane counters |
//! | GET | /api/health | liveness (no token needed) |

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context as _, Result};
use axum::{
    extract::{Request, State},
    http::header,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{delete, get, post, put},
    Json, Router,
};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tracing::info;

mod devices;
mod error;
mod keys;
mod platforms;
mod streams;

pub use error::{err, status_of, Error};
pub use streams::{ForwardRequest, StreamRequest};

use crate::{keys::KeyStore, sip::Command};

#[derive(Clone)]
pub struct ApiState {
    pub sip: Option<mpsc::Sender<Command>>,
    pub token: Option<Arc<str>>,
    pub metrics: prometheus::Registry,
    pub keys: Arc<KeyStore>,
}

pub(crate) type ApiResult = Result<Json<Value>, Error>;

/// Device and channel IDs: 1 to 64 ASCII letters and digits.
pub(super) fn check_id(id: &str) -> Result<(), Error> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(err(400, format!("bad device ID {id:?}")));
    }
    Ok(())
}

impl ApiState {
    /// Sends a command to the SIP core and waits for its answer.
    pub(super) async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, Error> {
        let sip = self
            .sip
            .as_ref()
            .ok_or_else(|| err(503, "signalling is not configured ([sip] section)"))?;
        let (tx, rx) = oneshot::channel();
        sip.send(make(tx))
            .await
            .map_err(|_| err(503, "signalling service stopped"))?;
        rx.await.map_err(|_| err(503, "signalling service stopped"))
    }
}

async fn stats(State(s): State<ApiState>) -> ApiResult {
    Ok(Json(crate::metrics::to_json(&s.metrics)))
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}

async fn not_found() -> Error {
    err(404, "no such endpoint")
}

async fn method_not_allowed() -> Error {
    err(405, "method not allowed on this endpoint")
}

async fn auth(State(s): State<ApiState>, req: Request, next: Next) -> Response {
    // Liveness probes need no token.
    if let (Some(token), false) = (&s.token, req.uri().path() == "/api/health") {
        let ok = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| constant_time_eq(t.trim().as_bytes(), token.as_bytes()));
        if !ok {
            let mut r = err(401, "missing or wrong bearer token").into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return r;
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/health", get(health))
        .route("/api/stats", get(stats))
        .route("/api/devices", get(devices::devices))
        .route(
            "/api/devices/{id}",
            get(devices::device).delete(devices::delete_device),
        )
        .route("/api/devices/{id}/channels", get(devices::channels))
        .route("/api/devices/{id}/catalog", post(devices::refresh_catalog))
        .route("/api/devices/{id}/info", get(devices::info_))
        .route("/api/devices/{id}/status", get(devices::status))
        .route("/api/devices/{id}/control", post(devices::control))
        .route("/api/devices/{id}/records", get(devices::records))
        .route("/api/devices/{id}/presets", get(devices::presets))
        .route(
            "/api/devices/{id}/subscriptions",
            get(devices::subscriptions),
        )
        .route(
            "/api/devices/{id}/subscriptions/{event}",
            put(devices::subscribe).delete(devices::unsubscribe),
        )
        .route("/api/alarms", get(devices::alarms))
        .route(
            "/api/streams",
            get(streams::streams).post(streams::open_stream),
        )
        .route(
            "/api/streams/{id}",
            get(streams::stream).delete(streams::close_stream),
        )
        .route("/api/streams/{id}/control", post(streams::control_stream))
        .route("/api/platforms", get(platforms::platforms))
        .route("/api/platforms/{id}", get(platforms::platform))
        .route("/api/keys", get(keys::keys).post(keys::add_key))
        .route("/api/keys/rotate", post(keys::rotate_key))
        .route(
            "/api/keys/{device}/{channel}/{profile}/{version}",
            delete(keys::delete_key),
        )
        .route(
            "/api/vkeks/{device}",
            put(keys::put_vkek).delete(keys::delete_vkek),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state)
}

/// Binds and serves in the background; returns the bound address.
pub async fn serve(listen: SocketAddr, state: ApiState) -> Result<SocketAddr> {
    let l = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the API on {listen}"))?;
    let addr = l.local_addr()?;
    info!(%addr, token = state.token.is_some(), "REST API listening");
    let app = router(state);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(l, app).await {
            tracing::error!(error = %e, "API server stopped");
        }
    });
    Ok(addr)
}
