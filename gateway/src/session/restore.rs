//! Sessions carried across a daemon restart (upgrade, crash, OOM kill), as
//! rtpengine keeps its calls: what is saved of an established session
//! ([`Saved`], written by the signalling layer with the dialog next to
//! it), and taking it back on start: the same media port bound again, the
//! receiver and recorder started (a new recording file, from the next key
//! frame), and its flow adopted in the kernel table when the attachment
//! was kept, so the kernel's counters go on through the gap.

use std::{net::SocketAddr, time::Instant};

use gb28181::sdp::MediaTransport;
use gb35114::srtp::MasterKey;
use serde::{Deserialize, Serialize};
use tracing::info;

use super::{Error, Forward, PlaybackView, Session, Sessions, SrtpView, State};
use crate::{stream, sys::clock::wall_ms};

/// What is kept of an established session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    pub id: String,
    pub device: String,
    pub channel: String,
    pub transport: MediaTransport,
    pub ssrc: u32,
    pub local: SocketAddr,
    pub remote: Option<SocketAddr>,
    pub answer_ssrc: Option<u32>,
    pub setup: Option<String>,
    pub format: Option<String>,
    pub created_ms: i64,
    pub established_ms: Option<i64>,
    pub record: bool,
    /// Where the srtp-sm4 key came from, and the session key itself as an
    /// RFC 4568 `a=crypto` line (the store is owner-only, as for the
    /// provisioned keys).
    #[serde(default)]
    pub srtp_source: Option<String>,
    #[serde(default)]
    pub session_key: Option<String>,
    #[serde(default)]
    pub forward: Vec<SavedForward>,
    /// Opened for relay legs only (the legs themselves are not carried).
    #[serde(default)]
    pub relay_only: bool,
    /// Relay legs it fed when saved.
    #[serde(default)]
    pub legs: usize,
    #[serde(default)]
    pub playback: Option<SavedPlayback>,
    /// When this was written (wall clock, ms).
    pub saved_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedForward {
    pub dest: SocketAddr,
    pub ssrc: Option<u32>,
    pub srtp: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedPlayback {
    pub download: bool,
    pub start: u64,
    pub end: u64,
    pub download_speed: Option<u32>,
    pub scale: f32,
    pub paused: bool,
    pub position_secs: f64,
    pub controls: u32,
}

fn key_attr(k: &MasterKey) -> String {
    k.crypto_attr(1)
}

fn key_from(attr: &str) -> Result<MasterKey, Error> {
    match MasterKey::from_crypto_attr(attr) {
        Ok(Some((_, k))) => Ok(k),
        Ok(None) => Err(Error::Invalid("saved session key of another suite".into())),
        Err(e) => Err(Error::Invalid(format!("saved session key: {e}"))),
    }
}

fn srtp_source(s: &str) -> &'static str {
    match s {
        "offered" => "offered",
        "answer" => "answer",
        _ => "configured",
    }
}

impl Sessions {
    /// What to save of an established session (None otherwise).
    pub fn saved(&self, id: &str) -> Option<Saved> {
        let s = self.active.get(id)?;
        if s.state != State::Established {
            return None;
        }
        let now = Instant::now();
        Some(Saved {
            id: s.id.clone(),
            device: s.device.clone(),
            channel: s.channel.clone(),
            transport: s.transport,
            ssrc: s.ssrc,
            local: s.local,
            remote: s.remote,
            answer_ssrc: s.answer_ssrc,
            setup: s.setup.clone(),
            format: s.format.clone(),
            created_ms: s.created_ms,
            established_ms: s.established_ms,
            record: s.record,
            srtp_source: s.srtp.as_ref().map(|v| v.key_source.to_string()),
            session_key: s.session_key.as_ref().map(key_attr),
            forward: s
                .forward
                .iter()
                .map(|f| SavedForward {
                    dest: f.dest,
                    ssrc: f.ssrc,
                    srtp: f.srtp.as_ref().map(key_attr),
                })
                .collect(),
            relay_only: s.relay_only,
            legs: s.legs.len(),
            playback: s.playback.as_ref().map(|p| {
                let p = p.at(now);
                SavedPlayback {
                    download: p.mode == "download",
                    start: p.start,
                    end: p.end,
                    download_speed: p.download_speed,
                    scale: p.scale,
                    paused: p.paused,
                    position_secs: p.position_secs,
                    controls: p.controls,
                }
            }),
            saved_ms: wall_ms(),
        })
    }

    /// Takes a saved session back: binds its media port again, starts its
    /// receiver (and a new recording file) and adopts its kernel flow.
    /// The session is established again, as it was.
    pub fn restore(&mut self, v: &Saved) -> Result<Session, Error> {
        if self.active.contains_key(&v.id) {
            return Err(Error::Conflict(format!("stream {} is already open", v.id)));
        }
        if self
            .active
            .values()
            .any(|s| s.local.port() == v.local.port())
        {
            return Err(Error::Conflict(format!(
                "media port {} is taken by another stream",
                v.local.port()
            )));
        }
        let session_key = v.session_key.as_deref().map(key_from).transpose()?;
        let mut forward = Vec::with_capacity(v.forward.len());
        for f in &v.forward {
            forward.push(Forward {
                dest: f.dest,
                ssrc: f.ssrc,
                srtp: f.srtp.as_deref().map(key_from).transpose()?,
            });
        }
        let any = super::unspecified(v.local.is_ipv4());
        let bound = stream::bind(any, v.local.port(), v.transport).map_err(|e| {
            Error::Unavailable(format!(
                "media port {} cannot be bound: {e}",
                v.local.port()
            ))
        })?;
        let now = Instant::now();
        let away = (wall_ms() - v.saved_ms) as f64 / 1000.0;
        let mut s = Session::inviting(
            v.id.clone(),
            v.device.clone(),
            v.channel.clone(),
            v.transport,
            v.ssrc,
            v.local,
            v.record,
            session_key,
            forward,
        );
        s.state = State::Established;
        s.remote = v.remote;
        s.answer_ssrc = v.answer_ssrc;
        s.ssrc_mismatch = v.answer_ssrc.is_some_and(|x| x != v.ssrc);
        s.setup = v.setup.clone();
        s.format = v.format.clone();
        s.created_ms = v.created_ms;
        s.established_ms = v.established_ms;
        s.restored_ms = Some(wall_ms());
        s.relay_only = v.relay_only;
        s.srtp = v.srtp_source.as_deref().map(|src| SrtpView {
            key_source: srtp_source(src),
            check: s.session_key.as_ref().map(|k| k.check_value()),
        });
        s.playback = v.playback.as_ref().map(|p| {
            PlaybackView::carried(
                p.download,
                p.start,
                p.end,
                p.download_speed,
                p.scale,
                p.paused,
                p.position_secs,
                p.controls,
                away,
                now,
            )
        });
        let id = v.id.clone();
        self.bound.insert(id.clone(), bound);
        self.active.insert(id.clone(), s.clone());
        self.start_media(&s);
        self.add_kernel_flow(&id);
        self.metrics.sessions.with_label_values(&["restored"]).inc();
        let view = self.active.get(&id).map(Session::view).ok_or_else(|| {
            Error::Unavailable(format!("stream {id} vanished while being restored"))
        })?;
        info!(
            stream = %id,
            device = %v.device,
            port = v.local.port(),
            transport = v.transport.as_str(),
            kernel_slot = ?view.kernel.as_ref().map(|k| k.slot),
            away_secs = away,
            "stream carried over the restart"
        );
        Ok(view)
    }

    /// Stops every receiver (recordings flushed and closed) without ending
    /// the sessions: the daemon is stopping and the next one carries them
    /// on. Returns the receivers' tasks to wait for.
    pub fn suspend(&mut self) -> Vec<tokio::task::JoinHandle<()>> {
        self.bound.clear();
        self.receivers
            .drain()
            .map(|(_, mut r)| {
                r.stop();
                r.task
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_round_trips_through_json_with_keys() {
        let k = MasterKey {
            key: [7; 16],
            salt: [9; 14],
        };
        let v = Saved {
            id: "0100000001".into(),
            device: "34020000001320000001".into(),
            channel: "34020000001310000001".into(),
            transport: MediaTransport::TcpPassive,
            ssrc: 100_000_001,
            local: "198.18.0.1:30000".parse().unwrap(),
            remote: Some("198.18.0.2:40000".parse().unwrap()),
            answer_ssrc: Some(5),
            setup: Some("active".into()),
            format: None,
            created_ms: 1,
            established_ms: Some(2),
            record: true,
            srtp_source: Some("offered".into()),
            session_key: Some(key_attr(&k)),
            forward: vec![SavedForward {
                dest: "198.18.0.3:5000".parse().unwrap(),
                ssrc: None,
                srtp: Some(key_attr(&k)),
            }],
            relay_only: false,
            legs: 0,
            playback: Some(SavedPlayback {
                download: false,
                start: 10,
                end: 20,
                download_speed: None,
                scale: 2.0,
                paused: true,
                position_secs: 3.5,
                controls: 2,
            }),
            saved_ms: 3,
        };
        let json = serde_json::to_vec(&v).unwrap();
        let back: Saved = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, v);
        assert_eq!(key_from(back.session_key.as_deref().unwrap()).unwrap(), k);
        assert!(key_from("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:x").is_err());
        assert_eq!(srtp_source("answer"), "answer");
        assert_eq!(srtp_source("anything"), "configured");
    }
}
