//! DeviceControl asked through the API (PTZ, focus/iris, presets, cruise,
//! scan, auxiliary switches, guard, alarm reset, record, I-frame, drag
//! zoom, home position, TeleBoot): the `<Control>` MESSAGE to the device,
//! then the answer. Commands the standard gives no `<Response>` are done
//! when the device accepts the MESSAGE (2xx); the others when the device's
//! DeviceControl `<Response>` arrives (matched by target ID and SN), within
//! `query_timeout_secs`. Every outcome is counted in
//! `gateway_device_controls_total{command, result}`.

use std::time::{Duration, Instant};

use gb28181::{control::Control, manscdp};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::core::{expired, Core, Purpose};
use crate::session::Error;

/// A control asked through the API: the device, the channel it is for
/// (the device itself when absent) and the command, or why the request's
/// JSON was not one.
#[derive(Debug)]
pub struct ControlRequest {
    pub device: String,
    pub channel: Option<String>,
    pub control: Result<Control, String>,
}

/// A control sent and not answered yet, keyed by (target, SN).
pub(super) struct ControlWaiter {
    device: String,
    command: &'static str,
    expects_response: bool,
    /// The device accepted the MESSAGE (2xx); a Response may still follow.
    sip_status: Option<u16>,
    reply: oneshot::Sender<Result<Value, Error>>,
    deadline: Instant,
}

impl Core {
    fn count_control(&self, command: &str, result: &str) {
        self.metrics
            .controls
            .with_label_values(&[command, result])
            .inc();
    }

    pub(super) fn start_control(
        &mut self,
        req: ControlRequest,
        reply: oneshot::Sender<Result<Value, Error>>,
    ) {
        let control = match req.control {
            Ok(c) => c,
            Err(why) => {
                self.count_control("unknown", "invalid");
                let _ = reply.send(Err(Error::Invalid(why)));
                return;
            }
        };
        if let Err(why) = control.validate() {
            self.count_control(control.name(), "invalid");
            let _ = reply.send(Err(Error::Invalid(why)));
            return;
        }
        let name = control.name();
        let target = match self.request_target(&req.device, req.channel.as_deref()) {
            Ok(t) => t,
            Err(e) => {
                self.count_control(name, "unavailable");
                let _ = reply.send(Err(e));
                return;
            }
        };
        let sn = self.next_sn();
        let (t, c) = (target.clone(), control.clone());
        // Validated above: the body cannot fail to build.
        let body = move |cs| manscdp::device_control(sn, &t, &c, cs).unwrap_or_default();
        let purpose = Purpose::Control {
            target: target.clone(),
            sn,
        };
        if let Err(e) = self.send_manscdp(&req.device, body, Some(purpose)) {
            self.count_control(name, "unavailable");
            let _ = reply.send(Err(e));
            return;
        }
        info!(device = %req.device, %target, sn, command = name, "DeviceControl sent");
        self.controls.insert(
            (target, sn),
            ControlWaiter {
                device: req.device,
                command: name,
                expects_response: control.expects_response(),
                sip_status: None,
                reply,
                deadline: Instant::now() + Duration::from_secs(self.cfg.query_timeout_secs),
            },
        );
    }

    fn finish_control(&mut self, key: &(String, u32), result: &str, v: Result<Value, Error>) {
        if let Some(w) = self.controls.remove(key) {
            self.count_control(w.command, result);
            if let Err(e) = &v {
                warn!(device = %w.device, target = %key.0, sn = key.1, command = w.command, error = %e, "DeviceControl failed");
            }
            let _ = w.reply.send(v);
        }
    }

    fn control_view(&self, key: &(String, u32), w: &ControlWaiter, result: &str) -> Value {
        json!({
            "device": w.device,
            "target": key.0,
            "sn": key.1,
            "command": w.command,
            "sip_status": w.sip_status,
            "result": result,
        })
    }

    /// The final SIP response to a control's MESSAGE.
    pub(super) fn control_answered(&mut self, target: &str, sn: u32, status: u16, reason: &str) {
        let key = (target.to_string(), sn);
        let Some(w) = self.controls.get_mut(&key) else {
            return;
        };
        if status >= 300 {
            let msg = format!("device answered {status} {reason} to {}", w.command);
            return self.finish_control(&key, "refused", Err(Error::Upstream(msg)));
        }
        w.sip_status = Some(status);
        if !w.expects_response {
            let v = self.control_view(&key, &self.controls[&key], "accepted");
            self.finish_control(&key, "ok", Ok(v));
        }
    }

    /// The MESSAGE of a control got no final response (Timer F).
    pub(super) fn control_unanswered(&mut self, target: &str, sn: u32) {
        let key = (target.to_string(), sn);
        if let Some(w) = self.controls.get(&key) {
            let msg = format!(
                "device {} did not answer the {} MESSAGE",
                w.device, w.command
            );
            self.finish_control(&key, "timeout", Err(Error::Timeout(msg)));
        }
    }

    /// A DeviceControl `<Response>`: true when it answers one of our
    /// controls (otherwise it may be for a superior's, see cascade).
    pub(super) fn on_control_response(
        &mut self,
        target: &str,
        sn: u32,
        leaves: &[(String, String)],
    ) -> bool {
        let key = (target.to_string(), sn);
        let Some(w) = self.controls.get(&key) else {
            return false;
        };
        let result = leaves
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("Result"))
            .map(|(_, v)| v.trim().to_ascii_uppercase())
            .unwrap_or_default();
        if result == "OK" {
            let v = self.control_view(&key, w, "OK");
            self.finish_control(&key, "ok", Ok(v));
        } else {
            let msg = format!(
                "device answered Result {} to {}",
                if result.is_empty() { "(none)" } else { &result },
                w.command
            );
            self.finish_control(&key, "error", Err(Error::Upstream(msg)));
        }
        true
    }

    /// Controls whose Response did not come in time.
    pub(super) fn control_timers(&mut self, now: Instant) {
        for key in expired(&self.controls, now, |w| w.deadline) {
            let Some(w) = self.controls.get(&key) else {
                continue;
            };
            let msg = match w.sip_status {
                Some(s) => format!(
                    "device {} accepted the {} MESSAGE ({s}) but sent no Response (SN {})",
                    w.device, w.command, key.1
                ),
                None => format!(
                    "device {} did not answer {} (SN {})",
                    w.device, w.command, key.1
                ),
            };
            self.finish_control(&key, "timeout", Err(Error::Timeout(msg)));
        }
    }
}
