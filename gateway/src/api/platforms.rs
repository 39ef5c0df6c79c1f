//! `/api/platforms`: the superior platforms this gateway registers with
//! (cascade, `[[cascade]]`) and where each stands.

use axum::{
    extract::{Path, State},
    Json,
};
use serde_json::json;

use super::{err, ApiResult, ApiState};
use crate::sip::Command;

pub(super) async fn platforms(State(s): State<ApiState>) -> ApiResult {
    let list = s.ask(Command::Platforms).await?;
    let registered = list
        .iter()
        .filter(|p| p.state == crate::sip::UpState::Registered)
        .count();
    Ok(Json(
        json!({ "count": list.len(), "registered": registered, "platforms": list }),
    ))
}

pub(super) async fn platform(State(s): State<ApiState>, Path(id): Path<String>) -> ApiResult {
    let list = s.ask(Command::Platforms).await?;
    match list.into_iter().find(|p| p.id == id || p.name == id) {
        Some(p) => Ok(Json(json!(p))),
        None => Err(err(404, format!("no platform {id}"))),
    }
}
