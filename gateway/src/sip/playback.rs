//! Playback controls asked through the API (pause, resume, scale, seek):
//! MANSRTSP (GB/T 28181 annex B) in an INFO inside the playback's
//! dialog, done when the device answers it 2xx within
//! `query_timeout_secs`. One control at a time per stream. Every outcome
//! is counted in `gateway_playback_controls_total{action, result}`.
//!
//! Also the end of playbacks: MediaStatus 121 (see catalog.rs), or, for
//! a device that goes on past the end of its range without saying so,
//! BYE once the position estimate has been at the end for
//! `[media] playback_end_grace_secs`; both counted in
//! `gateway_playback_ends_total{mode, reason}`.

use std::time::{Duration, Instant};

use gb28181::{
    mansrtsp::{self, Control, SCALES},
    sip as gsip,
};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::core::{Core, Purpose};
use crate::session::{Error, State};

/// What the API asks a playback to do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PlaybackAction {
    Pause,
    Resume,
    /// Speed: one of 0.25, 0.5, 1, 2, 4, 8.
    Scale(f32),
    /// Seconds from the start of the range.
    Seek(u64),
}

impl PlaybackAction {
    pub fn name(self) -> &'static str {
        match self {
            PlaybackAction::Pause => "pause",
            PlaybackAction::Resume => "resume",
            PlaybackAction::Scale(_) => "scale",
            PlaybackAction::Seek(_) => "seek",
        }
    }

    /// From the API's JSON: `{"action": "pause" | "resume" | "scale" |
    /// "seek", "scale": X, "position": SECS}`.
    pub fn from_json(v: &Value) -> Result<Self, String> {
        let action = v
            .get("action")
            .and_then(Value::as_str)
            .ok_or("the body needs \"action\": pause, resume, scale or seek")?;
        let known = ["action", "scale", "position"];
        if let Some(k) = v
            .as_object()
            .and_then(|o| o.keys().find(|k| !known.contains(&k.as_str())))
        {
            return Err(format!("unknown field {k:?}"));
        }
        match action {
            "pause" => Ok(PlaybackAction::Pause),
            "resume" => Ok(PlaybackAction::Resume),
            "scale" => {
                let s = v
                    .get("scale")
                    .and_then(Value::as_f64)
                    .ok_or("scale needs \"scale\": 0.25, 0.5, 1, 2, 4 or 8")?;
                SCALES
                    .iter()
                    .find(|x| (**x as f64 - s).abs() < 1e-9)
                    .map(|x| PlaybackAction::Scale(*x))
                    .ok_or_else(|| format!("scale {s} is not one of 0.25, 0.5, 1, 2, 4, 8"))
            }
            "seek" => v
                .get("position")
                .and_then(Value::as_u64)
                .map(PlaybackAction::Seek)
                .ok_or_else(|| {
                    "seek needs \"position\": whole seconds from the start of the range".into()
                }),
            other => Err(format!(
                "unknown action {other:?} (pause, resume, scale or seek)"
            )),
        }
    }

    fn control(self) -> Control {
        match self {
            PlaybackAction::Pause => Control::Pause,
            PlaybackAction::Resume => Control::Play {
                scale: None,
                seek: None,
            },
            PlaybackAction::Scale(s) => Control::Play {
                scale: Some(s),
                seek: None,
            },
            PlaybackAction::Seek(t) => Control::Play {
                scale: None,
                seek: Some(t),
            },
        }
    }
}

/// A control asked through the API, or why its JSON was not one.
#[derive(Debug)]
pub struct PlaybackRequest {
    pub stream: String,
    pub action: Result<PlaybackAction, String>,
}

/// An INFO sent and not answered yet (one per stream).
pub(super) struct InfoWaiter {
    action: PlaybackAction,
    cseq: u32,
    branch: String,
    reply: oneshot::Sender<Result<Value, Error>>,
    deadline: Instant,
}

impl Core {
    fn count_playback(&self, action: &str, result: &str) {
        self.metrics
            .playback_controls
            .with_label_values(&[action, result])
            .inc();
    }

    pub(super) fn count_playback_end(&self, id: &str, reason: &str) {
        if let Some(p) = self.sessions.get(id).and_then(|s| s.playback.as_ref()) {
            self.metrics
                .playback_ends
                .with_label_values(&[p.mode, reason])
                .inc();
        }
    }

    pub(super) fn start_playback_control(
        &mut self,
        req: PlaybackRequest,
        reply: oneshot::Sender<Result<Value, Error>>,
    ) {
        match self.send_playback_control(&req) {
            Ok(w) => {
                self.playback_waiters.insert(req.stream, w(reply));
            }
            Err((name, result, e)) => {
                self.count_playback(name, result);
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Checks the request and sends its INFO; the waiter to keep, or
    /// (action, result, error).
    #[allow(clippy::type_complexity)]
    fn send_playback_control(
        &mut self,
        req: &PlaybackRequest,
    ) -> Result<
        impl FnOnce(oneshot::Sender<Result<Value, Error>>) -> InfoWaiter,
        (&'static str, &'static str, Error),
    > {
        let action = match &req.action {
            Ok(a) => *a,
            Err(why) => return Err(("unknown", "invalid", Error::Invalid(why.clone()))),
        };
        let name = action.name();
        let id = &req.stream;
        let unavailable = |e| (name, "unavailable", e);
        let s = self
            .sessions
            .get(id)
            .ok_or_else(|| unavailable(Error::NotFound(format!("no active stream {id}"))))?;
        let Some(p) = &s.playback else {
            return Err(unavailable(Error::Conflict(format!(
                "stream {id} is live: MANSRTSP controls are for playback"
            ))));
        };
        if p.mode != "playback" {
            return Err(unavailable(Error::Conflict(format!(
                "stream {id} is a download: MANSRTSP controls are for playback"
            ))));
        }
        if s.state != State::Established {
            return Err(unavailable(Error::Conflict(format!(
                "stream {id} is {}, not established",
                s.state
            ))));
        }
        if let PlaybackAction::Seek(t) = action {
            if t as f64 >= p.length() {
                return Err((
                    name,
                    "invalid",
                    Error::Invalid(format!(
                        "position {t} is past the range ({} s long)",
                        p.length()
                    )),
                ));
            }
        }
        if self.playback_waiters.contains_key(id) {
            return Err(unavailable(Error::Conflict(format!(
                "stream {id} has a control waiting for the device's answer"
            ))));
        }
        let d = self
            .dialogs
            .active
            .get_mut(id)
            .filter(|d| d.ack.is_some())
            .ok_or_else(|| unavailable(Error::Conflict(format!("stream {id} has no dialog"))))?;
        d.last_cseq += 1;
        d.mansrtsp_cseq += 1;
        let (cseq, mcseq) = (d.last_cseq, d.mansrtsp_cseq);
        let d = d.clone();
        let body = mansrtsp::Request {
            control: action.control(),
            cseq: mcseq,
        }
        .build();
        let branch = gsip::branch();
        let msg = self.in_dialog_with(
            &d,
            "INFO",
            cseq,
            &branch,
            d.remote_tag.as_deref(),
            Some(("Application/MANSRTSP", body.as_bytes())),
        );
        let dest = self
            .dialog_dest(id, &d)
            .ok_or_else(|| unavailable(Error::Conflict(format!("stream {id} has no route"))))?;
        self.start_request(
            dest,
            &branch,
            "INFO",
            msg,
            Some(Purpose::Playback {
                stream: id.clone(),
                cseq: mcseq,
            }),
        );
        info!(stream = %id, action = name, mansrtsp_cseq = mcseq, "MANSRTSP INFO sent");
        let deadline = Instant::now() + Duration::from_secs(self.cfg.query_timeout_secs);
        Ok(move |reply| InfoWaiter {
            action,
            cseq: mcseq,
            branch,
            reply,
            deadline,
        })
    }

    fn finish_playback(&mut self, id: &str, result: &str, v: Result<Value, Error>) {
        if let Some(w) = self.playback_waiters.remove(id) {
            self.count_playback(w.action.name(), result);
            if let Err(e) = &v {
                warn!(stream = %id, action = w.action.name(), error = %e, "playback control failed");
            }
            let _ = w.reply.send(v);
        }
    }

    /// The device's final answer to an INFO (`status` 0: none, Timer F).
    pub(super) fn playback_answered(&mut self, id: &str, cseq: u32, status: u16, reason: &str) {
        let Some(w) = self.playback_waiters.get(id).filter(|w| w.cseq == cseq) else {
            return;
        };
        let action = w.action;
        if status == 0 {
            let msg = format!("the device did not answer the {} INFO", action.name());
            return self.finish_playback(id, "timeout", Err(Error::Timeout(msg)));
        }
        if status >= 300 {
            let msg = format!(
                "device answered {status} {reason} to the {} INFO",
                action.name()
            );
            return self.finish_playback(id, "refused", Err(Error::Upstream(msg)));
        }
        let now = Instant::now();
        let view = self.sessions.get_mut(id).and_then(|s| {
            let p = s.playback.as_mut()?;
            match action {
                PlaybackAction::Pause => p.pause(now),
                PlaybackAction::Resume => p.resume(now),
                PlaybackAction::Scale(x) => p.set_scale(x, now),
                PlaybackAction::Seek(t) => p.seek(t, now),
            }
            Some(p.at(now))
        });
        // The dialog's CSeqs and the playback's state moved on.
        self.save_session(id);
        let v = json!({
            "stream": id,
            "action": action.name(),
            "sip_status": status,
            "playback": view,
        });
        self.finish_playback(id, "ok", Ok(v));
    }

    /// The session ended while a control was waiting.
    pub(super) fn playback_session_ended(&mut self, id: &str, why: &str) {
        if let Some(w) = self.playback_waiters.get(id) {
            let branch = w.branch.clone();
            self.client.forget(&branch, "INFO");
            let msg = format!("stream {id} ended ({why})");
            self.finish_playback(id, "unavailable", Err(Error::Conflict(msg)));
        }
    }

    /// Controls not answered in time; playbacks past their end.
    pub(super) fn playback_timers(&mut self, now: Instant) {
        let late: Vec<String> = self
            .playback_waiters
            .iter()
            .filter(|(_, w)| now >= w.deadline)
            .map(|(k, _)| k.clone())
            .collect();
        for id in late {
            if let Some(w) = self.playback_waiters.get(&id) {
                // Its transaction goes on (Timer F) but nobody waits.
                let msg = format!(
                    "the device did not answer the {} INFO in {} s",
                    w.action.name(),
                    self.cfg.query_timeout_secs
                );
                self.finish_playback(&id, "timeout", Err(Error::Timeout(msg)));
            }
        }
        let grace = self.sessions.media_config().playback_end_grace_secs;
        if grace == 0 {
            return;
        }
        let overran: Vec<(String, f64)> = self
            .sessions
            .list(false)
            .into_iter()
            .filter(|s| s.state == State::Established)
            .filter_map(|s| {
                let p = self.sessions.get(&s.id)?.playback.as_ref()?;
                let o = p.overrun_secs(now);
                (o >= grace as f64).then(|| (s.id.clone(), p.length()))
            })
            .collect();
        for (id, len) in overran {
            warn!(stream = %id, range_secs = len, grace, "playback went on past its range without MediaStatus 121");
            self.count_playback_end(&id, "overran");
            let why =
                format!("no end of file (MediaStatus 121) {grace} s after the end of the range");
            self.close(&id, &why, true, State::Closed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_from_json() {
        let a = |s: &str| PlaybackAction::from_json(&serde_json::from_str(s).unwrap());
        assert_eq!(a(r#"{"action":"pause"}"#), Ok(PlaybackAction::Pause));
        assert_eq!(a(r#"{"action":"resume"}"#), Ok(PlaybackAction::Resume));
        assert_eq!(
            a(r#"{"action":"scale","scale":0.25}"#),
            Ok(PlaybackAction::Scale(0.25))
        );
        assert_eq!(
            a(r#"{"action":"scale","scale":8}"#),
            Ok(PlaybackAction::Scale(8.0))
        );
        assert_eq!(
            a(r#"{"action":"seek","position":30}"#),
            Ok(PlaybackAction::Seek(30))
        );
        for (body, why) in [
            (r#"{}"#, "needs \"action\""),
            (r#"{"action":"rewind"}"#, "unknown action"),
            (r#"{"action":"scale","scale":3}"#, "not one of"),
            (r#"{"action":"scale"}"#, "scale needs"),
            (r#"{"action":"seek","position":-1}"#, "seek needs"),
            (r#"{"action":"pause","speed":2}"#, "unknown field"),
        ] {
            let e = a(body).unwrap_err();
            assert!(e.contains(why), "{body}: {e}");
        }
    }

    #[test]
    fn each_action_is_its_mansrtsp() {
        let body = |a: PlaybackAction| {
            mansrtsp::Request {
                control: a.control(),
                cseq: 1,
            }
            .build()
        };
        assert_eq!(
            body(PlaybackAction::Pause),
            "PAUSE MANSRTSP/1.0\r\nCSeq: 1\r\nPauseTime: now\r\n\r\n"
        );
        assert_eq!(
            body(PlaybackAction::Resume),
            "PLAY MANSRTSP/1.0\r\nCSeq: 1\r\nRange: npt=now-\r\n\r\n"
        );
        assert_eq!(
            body(PlaybackAction::Scale(0.5)),
            "PLAY MANSRTSP/1.0\r\nCSeq: 1\r\nScale: 0.5\r\n\r\n"
        );
        assert_eq!(
            body(PlaybackAction::Seek(12)),
            "PLAY MANSRTSP/1.0\r\nCSeq: 1\r\nRange: npt=12-\r\n\r\n"
        );
    }
}
