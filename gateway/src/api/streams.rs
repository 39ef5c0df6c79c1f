//! `/api/streams`: live streams (INVITE), their media and kernel counters.
//! The request body of `POST /api/streams` lives here; the signalling
//! core gets it parsed ([`OpenStream`]).

use std::net::SocketAddr;

use axum::{
    extract::{rejection::JsonRejection, rejection::QueryRejection, Path, Query, State},
    http::StatusCode,
    Json,
};
use gb28181::sdp::{MediaTransport, SessionKind};
use gb35114::srtp::MasterKey;
use serde_json::{json, Value};

use super::{check_id, err, ApiResult, ApiState, Error};
use crate::{
    session,
    sip::{Command, History, OpenStream, PlaybackAction, PlaybackRequest},
};

/// What `POST /api/streams` asks for.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamRequest {
    pub device: String,
    /// Channel ID (default: the device itself, as for an IPC).
    pub channel: Option<String>,
    /// "udp" (default), "tcp-passive" or "tcp-active".
    pub transport: Option<String>,
    /// Record the media (default: when `[media.record]` is configured).
    pub record: Option<bool>,
    /// Forward the PS/RTP to these destinations, each with its own SSRC.
    #[serde(default)]
    pub forward: Vec<ForwardRequest>,
    /// srtp-sm4: offer a fresh session key in the INVITE (`a=crypto`).
    /// Channels with configured srtp-sm4 keys are SRTP anyway (their keys
    /// never go on the wire).
    #[serde(default)]
    pub srtp: bool,
    /// "live" (default), "playback" or "download".
    pub mode: Option<String>,
    /// Playback/download: from and to (Unix seconds).
    pub start: Option<u64>,
    pub end: Option<u64>,
    /// Download: how many times real time (1-32).
    pub download_speed: Option<u32>,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardRequest {
    pub dest: SocketAddr,
    /// Default: derived from the stream's SSRC.
    pub ssrc: Option<u32>,
    /// Re-encrypt toward this destination with srtp-sm4 under this master
    /// key (`inline:<base64 of key||salt>`, as in SDP).
    pub srtp: Option<String>,
}

impl StreamRequest {
    /// Checks and parses the request for the signalling core.
    pub fn parse(self) -> Result<OpenStream, Error> {
        check_id(&self.device)?;
        if let Some(c) = &self.channel {
            check_id(c)?;
        }
        let transport = match self.transport.as_deref() {
            None => MediaTransport::Udp,
            Some(t) => MediaTransport::parse(t).ok_or_else(|| {
                err(
                    400,
                    format!("transport must be udp, tcp-passive or tcp-active, not {t:?}"),
                )
            })?,
        };
        let forward = self
            .forward
            .into_iter()
            .map(|f| {
                let srtp = f
                    .srtp
                    .as_deref()
                    .map(MasterKey::from_inline)
                    .transpose()
                    .map_err(|e| err(400, format!("forward {}: srtp: {e}", f.dest)))?;
                Ok(session::Forward {
                    dest: f.dest,
                    ssrc: f.ssrc,
                    srtp,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let history = match self.mode.as_deref() {
            None | Some("live") => {
                if self.start.is_some() || self.end.is_some() || self.download_speed.is_some() {
                    return Err(err(
                        400,
                        "start, end and download_speed are for playback and download",
                    ));
                }
                None
            }
            Some(m @ ("playback" | "download")) => {
                let (Some(start), Some(end)) = (self.start, self.end) else {
                    return Err(err(400, format!("{m} needs start and end (Unix seconds)")));
                };
                if start >= end {
                    return Err(err(400, format!("start {start} is not before end {end}")));
                }
                let kind = if m == "playback" {
                    if self.download_speed.is_some() {
                        return Err(err(400, "download_speed is for download"));
                    }
                    SessionKind::Playback
                } else {
                    SessionKind::Download
                };
                if let Some(n) = self.download_speed {
                    if !(1..=32).contains(&n) {
                        return Err(err(400, format!("download_speed {n} is outside 1-32")));
                    }
                }
                Some(History {
                    kind,
                    start,
                    end,
                    download_speed: self.download_speed,
                })
            }
            Some(other) => {
                return Err(err(
                    400,
                    format!("mode must be live, playback or download, not {other:?}"),
                ))
            }
        };
        Ok(OpenStream {
            device: self.device,
            channel: self.channel,
            transport,
            record: self.record,
            forward,
            srtp: self.srtp,
            history,
        })
    }
}

#[derive(serde::Deserialize)]
pub(super) struct StreamsQuery {
    #[serde(default)]
    all: bool,
}

pub(super) async fn streams(
    State(s): State<ApiState>,
    q: Result<Query<StreamsQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = q.map_err(|e| err(400, e.body_text()))?;
    let list = s.ask(|tx| Command::ListStreams(q.all, tx)).await?;
    let active = list.iter().filter(|x| x.closed_ms.is_none()).count();
    Ok(Json(json!({ "active": active, "streams": list })))
}

pub(super) async fn open_stream(
    State(s): State<ApiState>,
    body: Result<Json<StreamRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), Error> {
    let Json(req) = body.map_err(|e| err(400, e.body_text()))?;
    let req = req.parse()?;
    let sess = s
        .ask(|tx| Command::OpenStream(req, tx))
        .await?
        .map_err(Error::from)?;
    Ok((StatusCode::CREATED, Json(json!(sess))))
}

pub(super) async fn stream(State(s): State<ApiState>, Path(id): Path<String>) -> ApiResult {
    check_id(&id)?;
    match s.ask(|tx| Command::GetStream(id.clone(), tx)).await? {
        Some(x) => Ok(Json(json!(x))),
        None => Err(err(404, format!("no stream {id}"))),
    }
}

/// `POST /api/streams/{id}/control`: `{"action": "pause" | "resume" |
/// "scale" | "seek", "scale": X, "position": SECS}` (MANSRTSP INFO);
/// answered when the device has.
pub(super) async fn control_stream(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    check_id(&id)?;
    // Bad requests still go to the core, which counts them
    // (gateway_playback_controls_total{result="invalid"}).
    let action = match body {
        Err(e) => Err(e.body_text()),
        Ok(Json(v)) => PlaybackAction::from_json(&v),
    };
    let req = PlaybackRequest { stream: id, action };
    let v = s
        .ask(|tx| Command::Playback(req, tx))
        .await?
        .map_err(Error::from)?;
    Ok(Json(v))
}

pub(super) async fn close_stream(State(s): State<ApiState>, Path(id): Path<String>) -> ApiResult {
    check_id(&id)?;
    let x = s
        .ask(|tx| Command::CloseStream(id.clone(), tx))
        .await?
        .map_err(Error::from)?;
    Ok(Json(json!(x)))
}
