//! `/api/devices`: the registry, catalogs, and queries asked of devices.

use axum::{
    extract::{
        rejection::{JsonRejection, QueryRejection},
        Path, Query, State,
    },
    http::StatusCode,
    Json,
};
use serde_json::{json, Value};

use super::{check_id, err, ApiResult, ApiState, Error};
use crate::sip::{Command, ControlRequest, QueryKind, RecordQuery, SubKind};

/// `?state=online|offline&offset=N&limit=N` (devices sorted by ID;
/// `count` and `online` are always totals, `limit=0` returns only them).
#[derive(serde::Deserialize)]
pub(super) struct ListQuery {
    state: Option<String>,
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
}

pub(super) async fn devices(
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

/// `GET /api/devices/{id}/subscriptions`: what the gateway is subscribed
/// to at the device, and its last position and clock offset.
pub(super) async fn subscriptions(State(s): State<ApiState>, Path(id): Path<String>) -> ApiResult {
    check_id(&id)?;
    match s.ask(|tx| Command::Get(id.clone(), tx)).await? {
        Some(d) => Ok(Json(json!({
            "device": id,
            "subscriptions": d.subscriptions,
            "position": d.device.position,
            "position_ms": d.device.position_ms,
            "time_offset_secs": d.device.time_offset_secs,
        }))),
        None => Err(err(404, format!("no device {id}"))),
    }
}

fn sub_kind(event: &str) -> Result<SubKind, Error> {
    SubKind::parse(event).ok_or_else(|| {
        err(
            400,
            format!("event must be catalog, alarm or mobile_position, not {event:?}"),
        )
    })
}

/// `PUT /api/devices/{id}/subscriptions/{event}`: subscribe (answered
/// when the device has; kept for the device across restarts).
pub(super) async fn subscribe(s: State<ApiState>, p: Path<(String, String)>) -> ApiResult {
    set_subscription(s, p, true).await
}

/// `DELETE /api/devices/{id}/subscriptions/{event}`: unsubscribe
/// (`Expires: 0`) and stop subscribing to it.
pub(super) async fn unsubscribe(s: State<ApiState>, p: Path<(String, String)>) -> ApiResult {
    set_subscription(s, p, false).await
}

async fn set_subscription(
    State(s): State<ApiState>,
    Path((id, event)): Path<(String, String)>,
    on: bool,
) -> ApiResult {
    check_id(&id)?;
    let kind = sub_kind(&event)?;
    let v = s
        .ask(|tx| Command::Subscribe(id, kind, on, tx))
        .await?
        .map_err(Error::from)?;
    Ok(Json(v))
}

pub(super) async fn device(State(s): State<ApiState>, Path(id): Path<String>) -> ApiResult {
    check_id(&id)?;
    match s.ask(|tx| Command::Get(id.clone(), tx)).await? {
        Some(d) => Ok(Json(json!(d))),
        None => Err(err(404, format!("no device {id}"))),
    }
}

pub(super) async fn delete_device(State(s): State<ApiState>, Path(id): Path<String>) -> ApiResult {
    check_id(&id)?;
    if s.ask(|tx| Command::Delete(id.clone(), tx)).await? {
        Ok(Json(json!({ "deleted": id })))
    } else {
        Err(err(404, format!("no device {id}")))
    }
}

pub(super) async fn channels(State(s): State<ApiState>, Path(id): Path<String>) -> ApiResult {
    check_id(&id)?;
    match s.ask(|tx| Command::Channels(id.clone(), tx)).await? {
        Some(c) => Ok(Json(
            json!({ "device": id, "count": c.len(), "channels": c }),
        )),
        None => Err(err(404, format!("no device {id}"))),
    }
}

pub(super) async fn refresh_catalog(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), Error> {
    check_id(&id)?;
    let sn = s
        .ask(|tx| Command::RefreshCatalog(id.clone(), tx))
        .await?
        .map_err(Error::from)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "device": id, "sn": sn, "state": "pending" })),
    ))
}

pub(super) async fn query(s: ApiState, id: String, kind: QueryKind) -> ApiResult {
    check_id(&id)?;
    let v = s
        .ask(|tx| Command::Query(id.clone(), kind, tx))
        .await?
        .map_err(Error::from)?;
    Ok(Json(v))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PresetsQuery {
    channel: Option<String>,
}

/// `GET /api/devices/{id}/presets?channel=ID`: PresetQuery, answered when
/// the device has.
pub(super) async fn presets(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    q: Result<Query<PresetsQuery>, QueryRejection>,
) -> ApiResult {
    check_id(&id)?;
    let Query(q) = q.map_err(|e| err(400, e.body_text()))?;
    if let Some(c) = &q.channel {
        check_id(c)?;
    }
    let v = s
        .ask(|tx| Command::Presets(id, q.channel, tx))
        .await?
        .map_err(Error::from)?;
    Ok(Json(v))
}

pub(super) async fn info_(State(s): State<ApiState>, Path(id): Path<String>) -> ApiResult {
    query(s, id, QueryKind::Info).await
}

pub(super) async fn status(State(s): State<ApiState>, Path(id): Path<String>) -> ApiResult {
    query(s, id, QueryKind::Status).await
}

/// `POST /api/devices/{id}/control`: `{"channel": ID, "cmd": ..., ...}`
/// (gb28181::control::Control); answered when the device has.
pub(super) async fn control(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    check_id(&id)?;
    // A request that is not a command still goes to the core, which
    // counts it (gateway_device_controls_total{result="invalid"}).
    let (channel, control) = match body {
        Err(e) => (None, Err(e.body_text())),
        Ok(Json(v)) => match v.get("channel") {
            None | Some(Value::Null) => (None, parse_control(v)),
            Some(Value::String(c)) => {
                check_id(c)?;
                (Some(c.clone()), parse_control(v))
            }
            Some(other) => (None, Err(format!("channel must be a string, not {other}"))),
        },
    };
    let req = ControlRequest {
        device: id,
        channel,
        control,
    };
    let v = s
        .ask(|tx| Command::Control(req, tx))
        .await?
        .map_err(Error::from)?;
    Ok(Json(v))
}

fn parse_control(v: Value) -> Result<gb28181::control::Control, String> {
    serde_json::from_value(v).map_err(|e| {
        format!(
            "not a control command ({e}); cmd is one of {}",
            gb28181::control::COMMANDS.join(", ")
        )
    })
}

/// `?channel=&start=&end=&type=` of `GET /api/devices/{id}/records`.
#[derive(serde::Deserialize)]
pub(super) struct RecordsQuery {
    channel: Option<String>,
    start: Option<String>,
    end: Option<String>,
    #[serde(rename = "type")]
    record_type: Option<String>,
}

/// `GET /api/devices/{id}/records`: RecordInfo, assembled from every part.
pub(super) async fn records(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    q: Result<Query<RecordsQuery>, QueryRejection>,
) -> ApiResult {
    check_id(&id)?;
    // Bad parameters go to the core too, which counts them.
    let query = match q {
        Err(e) => Err(e.body_text()),
        Ok(Query(q)) => {
            if let Some(c) = &q.channel {
                check_id(c)?;
            }
            match (q.start, q.end) {
                (Some(start), Some(end)) => Ok(RecordQuery {
                    device: id.clone(),
                    channel: q.channel,
                    start,
                    end,
                    record_type: q.record_type.unwrap_or_else(|| "all".into()),
                }),
                _ => Err("start and end are required (YYYY-MM-DDTHH:MM:SS)".to_string()),
            }
        }
    };
    let v = s
        .ask(|tx| Command::Records(query, tx))
        .await?
        .map_err(Error::from)?;
    Ok(Json(v))
}

/// `?device=&limit=` of `GET /api/alarms`.
#[derive(serde::Deserialize)]
pub(super) struct AlarmsQuery {
    device: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/alarms`: the alarms devices raised, newest first.
pub(super) async fn alarms(
    State(s): State<ApiState>,
    q: Result<Query<AlarmsQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = q.map_err(|e| err(400, e.body_text()))?;
    if let Some(d) = &q.device {
        check_id(d)?;
    }
    let limit = q.limit.unwrap_or(100);
    let list = s
        .ask(|tx| Command::Alarms(q.device.clone(), limit, tx))
        .await?;
    Ok(Json(json!({ "count": list.len(), "alarms": list })))
}
