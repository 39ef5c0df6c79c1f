//! `/api/keys` and `/api/vkeks`: media keys (SM4 profiles) and devices'
//! key-encryption keys. Listings show check values, never key bytes.

use axum::{
    extract::{rejection::JsonRejection, rejection::QueryRejection, Path, Query, State},
    http::StatusCode,
    Json,
};
use serde_json::{json, Value};
use tracing::info;

use super::{err, ApiResult, ApiState, Error};
use crate::keys::{KeyError, KeySpec, Profile, VkekSpec};

pub(super) fn key_err(e: KeyError) -> Error {
    let code = match e {
        KeyError::Invalid(_) => 400,
        KeyError::NotFound(_) => 404,
        KeyError::NoVkek(_) | KeyError::Exists(_) => 409,
    };
    err(code, e.to_string())
}

#[derive(serde::Deserialize)]
pub(super) struct KeysQuery {
    device: Option<String>,
    channel: Option<String>,
}

pub(super) async fn keys(
    State(s): State<ApiState>,
    q: Result<Query<KeysQuery>, QueryRejection>,
) -> ApiResult {
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

pub(super) async fn add_key(
    State(s): State<ApiState>,
    body: Result<Json<KeySpec>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), Error> {
    let spec = key_body(body)?;
    let k = s.keys.add(spec).map_err(key_err)?;
    info!(device = %k.device, channel = %k.channel, profile = k.profile.as_str(), version = k.version, check = %k.check, "media key added");
    Ok((StatusCode::CREATED, Json(json!(k))))
}

#[derive(serde::Deserialize)]
pub(super) struct RotateQuery {
    #[serde(default = "default_grace")]
    grace_secs: u64,
}

fn default_grace() -> u64 {
    60
}

pub(super) async fn rotate_key(
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

pub(super) async fn delete_key(
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
pub(super) struct VkekBody {
    key: String,
}

pub(super) async fn put_vkek(
    State(s): State<ApiState>,
    Path(device): Path<String>,
    body: Result<Json<VkekBody>, JsonRejection>,
) -> ApiResult {
    let Json(b) = body.map_err(|e| err(400, e.body_text()))?;
    let check = s
        .keys
        .set_vkek(&VkekSpec {
            device: device.clone(),
            key: b.key,
        })
        .map_err(key_err)?;
    info!(%device, %check, "VKEK set");
    Ok(Json(json!({ "device": device, "check": check })))
}

pub(super) async fn delete_vkek(
    State(s): State<ApiState>,
    Path(device): Path<String>,
) -> ApiResult {
    if s.keys.remove_vkek(&device) {
        Ok(Json(json!({ "deleted": device })))
    } else {
        Err(err(404, format!("device {device} has no VKEK")))
    }
}
