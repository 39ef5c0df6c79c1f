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
    extract::{
        rejection::{JsonRejection, QueryRejection},
        Path, Query, Request, State,
    },
    http::{header, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{delete, get, post, put},
    Json, Router,
};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tracing::info;

use crate::{
    keys::{KeyError, KeySpec, KeyStore, Profile},
    sip::core::{error_json, ApiError, Command, QueryKind, StreamRequest},
};

#[derive(Clone)]
pub struct ApiState {
    pub sip: Option<mpsc::Sender<Command>>,
    pub token: Option<Arc<str>>,
    pub metrics: prometheus::Registry,
    pub keys: Arc<KeyStore>,
}

struct Error(ApiError);

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.0 .0).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (code, Json(error_json(&self.0))).into_response()
    }
}

fn err(code: u16, msg: impl Into<String>) -> Error {
    Error(ApiError(code, msg.into()))
}

type ApiResult = Result<Json<Value>, Error>;

impl ApiState {
    /// Sends a command to the SIP core and waits for its answer.
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Error> {
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

fn check_id(id: &str) -> Result<(), Error> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(err(400, format!("bad device ID {id:?}")));
    }
    Ok(())
}

/// `?state=online|offline&offset=N&limit=N` (devices sorted by ID;
/// `count` and `online` are always totals, `limit=0` returns only them).
#[derive(serde::Deserialize)]
struct ListQuery {
    state: Option<String>,
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
}

async fn devices(
    State(s): State<ApiState>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = q.map_err(|e| err(400, e.body_text()))?;
    let want = match q.state.as_deref() {
        None => None,
        Some("online") => Some(true),
        Some("offline") => Some(false),
        Some(other) => {
            return Err(err(
                400,
                format!("state must be online or offline, not {other:?}"),
            ))
        }
    };
    let list = s.ask(Command::List).await?;
    let (count, online) = (list.len(), list.iter().filter(|d| d.device.online).count());
    let page: Vec<_> = list
        .into_iter()
        .filter(|d| want.is_none_or(|w| d.device.online == w))
        .skip(q.offset)
        .take(q.limit.unwrap_or(usize::MAX))
        .collect();
    Ok(Json(
        json!({ "count": count, "online": online, "devices": page }),
    ))
}

async fn device(State(s): State<ApiState>, Path(id): Path<String>) -> ApiResult {
    check_id(&id)?;
    match s.ask(|tx| Command::Get(id.clone(), tx)).await? {
        Some(d) => Ok(Json(json!(d))),
        None => Err(err(404, format!("no device {id}"))),
    }
}

async fn delete_device(State(s): State<ApiState>, Path(id): Path<String>) -> ApiResult {
    check_id(&id)?;
    if s.ask(|tx| Command::Delete(id.clone(), tx)).await? {
        Ok(Json(json!({ "deleted": id })))
    } else {
        Err(err(404, format!("no device {id}")))
    }
}

async fn channels(State(s): State<ApiState>, Path(id): Path<String>) -> ApiResult {
    check_id(&id)?;
    match s.ask(|tx| Command::Channels(id.clone(), tx)).await? {
        Some(c) => Ok(Json(
            json!({ "device": id, "count": c.len(), "channels": c }),
        )),
        None => Err(err(404, format!("no device {id}"))),
    }
}

async fn refresh_catalog(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), Error> {
    check_id(&id)?;
    let sn = s
        .ask(|tx| Command::RefreshCatalog(id.clone(), tx))
        .await?
        .map_err(Error)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "device": id, "sn": sn, "state": "pending" })),
    ))
}

async fn query(s: ApiState, id: String, kind: QueryKind) -> ApiResult {
    check_id(&id)?;
    let v = s
        .ask(|tx| Command::Query(id.clone(), kind, tx))
        .await?
        .map_err(Error)?;
    Ok(Json(v))
}

async fn info_(State(s): State<ApiState>, Path(id): Path<String>) -> ApiResult {
    query(s, id, QueryKind::Info).await
}

async fn status(State(s): State<ApiState>, Path(id): Path<String>) -> ApiResult {
    query(s, id, QueryKind::Status).await
}

#[derive(serde::Deserialize)]
struct StreamsQuery {
    #[serde(default)]
    all: bool,
}

async fn streams(
    State(s): State<ApiState>,
    q: Result<Query<StreamsQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = q.map_err(|e| err(400, e.body_text()))?;
    let list = s.ask(|tx| Command::ListStreams(q.all, tx)).await?;
    let active = list.iter().filter(|x| x.closed_ms.is_none()).count();
    Ok(Json(json!({ "active": active, "streams": list })))
}

async fn open_stream(
    State(s): State<ApiState>,
    body: Result<Json<StreamRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), Error> {
    let Json(req) = body.map_err(|e| err(400, e.body_text()))?;
    check_id(&req.device)?;
    if let Some(c) = &req.channel {
        check_id(c)?;
    }
    let sess = s
        .ask(|tx| Command::OpenStream(req, tx))
        .await?
        .map_err(Error)?;
    Ok((StatusCode::CREATED, Json(json!(sess))))
}

async fn stream(State(s): State<ApiState>, Path(id): Path<String>) -> ApiResult {
    check_id(&id)?;
    match s.ask(|tx| Command::GetStream(id.clone(), tx)).await? {
        Some(x) => Ok(Json(json!(x))),
        None => Err(err(404, format!("no stream {id}"))),
    }
}

async fn close_stream(State(s): State<ApiState>, Path(id): Path<String>) -> ApiResult {
    check_id(&id)?;
    let x = s
        .ask(|tx| Command::CloseStream(id.clone(), tx))
        .await?
        .map_err(Error)?;
    Ok(Json(json!(x)))
}

fn key_err(e: KeyError) -> Error {
    let code = match e {
        KeyError::Invalid(_) => 400,
        KeyError::NotFound(_) => 404,
        KeyError::NoVkek(_) | KeyError::Exists(_) => 409,
    };
    err(code, e.to_string())
}

#[derive(serde::Deserialize)]
struct KeysQuery {
    device: Option<String>,
    channel: Option<String>,
}

async fn keys(State(s): State<ApiState>, q: Result<Query<KeysQuery>, QueryRejection>) -> ApiResult {
    let Query(q) = q.map_err(|e| err(400, e.body_text()))?;
    let list = s.keys.list(q.device.as_deref(), q.channel.as_deref());
    Ok(Json(
        json!({ "count": list.len(), "keys": list, "vkeks": s.keys.vkeks() }),
    ))
}

fn key_body(body: Result<Json<KeySpec>, JsonRejection>) -> Result<KeySpec, Error> {
    let Json(spec) = body.map_err(|e| err(400, e.body_text()))?;
    if spec.expires_ms.is_some() {
        return Err(err(400, "expires_ms is set by rotations, not by clients"));
    }
    Ok(spec)
}

async fn add_key(
    State(s): State<ApiState>,
    body: Result<Json<KeySpec>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), Error> {
    let spec = key_body(body)?;
    let k = s.keys.add(spec).map_err(key_err)?;
    info!(device = %k.device, channel = %k.channel, profile = k.profile.as_str(), version = k.version, check = %k.check, "media key added");
    Ok((StatusCode::CREATED, Json(json!(k))))
}

#[derive(serde::Deserialize)]
struct RotateQuery {
    #[serde(default = "default_grace")]
    grace_secs: u64,
}

fn default_grace() -> u64 {
    60
}

async fn rotate_key(
    State(s): State<ApiState>,
    q: Result<Query<RotateQuery>, QueryRejection>,
    body: Result<Json<KeySpec>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), Error> {
    let Query(q) = q.map_err(|e| err(400, e.body_text()))?;
    if q.grace_secs > 7 * 86_400 {
        return Err(err(400, "grace_secs must be at most 604800"));
    }
    let spec = key_body(body)?;
    let k = s.keys.rotate(spec, q.grace_secs).map_err(key_err)?;
    info!(device = %k.device, channel = %k.channel, profile = k.profile.as_str(), version = k.version, check = %k.check, grace_secs = q.grace_secs, "media key rotated");
    Ok((
        StatusCode::CREATED,
        Json(json!({ "key": k, "retire_others_after_secs": q.grace_secs })),
    ))
}

async fn delete_key(
    State(s): State<ApiState>,
    Path((device, channel, profile, version)): Path<(String, String, String, String)>,
) -> ApiResult {
    let profile = Profile::parse(&profile).ok_or_else(|| {
        err(
            400,
            format!("profile must be sm4-nal-ofb or srtp-sm4, not {profile:?}"),
        )
    })?;
    let version: u32 = version
        .parse()
        .map_err(|_| err(400, format!("bad key version {version:?}")))?;
    let k = s
        .keys
        .remove(&device, &channel, profile, version)
        .map_err(key_err)?;
    info!(device = %k.device, channel = %k.channel, profile = k.profile.as_str(), version = k.version, "media key deleted");
    Ok(Json(json!({ "deleted": k })))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct VkekBody {
    key: String,
}

async fn put_vkek(
    State(s): State<ApiState>,
    Path(device): Path<String>,
    body: Result<Json<VkekBody>, JsonRejection>,
) -> ApiResult {
    let Json(b) = body.map_err(|e| err(400, e.body_text()))?;
    let check = s
        .keys
        .set_vkek(&crate::keys::VkekSpec {
            device: device.clone(),
            key: b.key,
        })
        .map_err(key_err)?;
    info!(%device, %check, "VKEK set");
    Ok(Json(json!({ "device": device, "check": check })))
}

async fn delete_vkek(State(s): State<ApiState>, Path(device): Path<String>) -> ApiResult {
    if s.keys.remove_vkek(&device) {
        Ok(Json(json!({ "deleted": device })))
    } else {
        Err(err(404, format!("device {device} has no VKEK")))
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
        .route("/api/devices", get(devices))
        .route("/api/devices/{id}", get(device).delete(delete_device))
        .route("/api/devices/{id}/channels", get(channels))
        .route("/api/devices/{id}/catalog", post(refresh_catalog))
        .route("/api/devices/{id}/info", get(info_))
        .route("/api/devices/{id}/status", get(status))
        .route("/api/streams", get(streams).post(open_stream))
        .route("/api/streams/{id}", get(stream).delete(close_stream))
        .route("/api/keys", get(keys).post(add_key))
        .route("/api/keys/rotate", post(rotate_key))
        .route(
            "/api/keys/{device}/{channel}/{profile}/{version}",
            delete(delete_key),
        )
        .route("/api/vkeks/{device}", put(put_vkek).delete(delete_vkek))
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
