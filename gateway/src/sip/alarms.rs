//! Alarms devices raise (MANSCDP Notify Alarm), with or without a
//! subscription: acknowledged to the device with a `<Response>` (Result
//! OK), kept (the last [`KEEP`], newest last) for the API, counted in
//! `gateway_alarms_total{device, priority, method}` (the alert rule
//! GatewayDeviceAlarm fires on it) and logged.

use gb28181::manscdp::{self, Alarm};
use serde::Serialize;
use tracing::{debug, warn};

use super::core::Core;
use crate::sys::clock::wall_ms;

/// Alarms kept for the API.
pub const KEEP: usize = 1000;

/// An alarm as received.
#[derive(Debug, Clone, Serialize)]
pub struct AlarmRecord {
    /// The device that sent it.
    pub device: String,
    /// Its `<DeviceID>`: the device, or its alarm input or channel.
    pub source: String,
    pub sn: u32,
    /// When the gateway received it (Unix ms).
    pub received_ms: i64,
    #[serde(flatten)]
    pub alarm: Alarm,
}

impl Core {
    pub(super) fn on_alarm(&mut self, device: &str, source: &str, sn: u32, alarm: Alarm) {
        warn!(
            %device, %source, priority = %alarm.priority, method = %alarm.method,
            alarm_type = ?alarm.alarm_type, time = %alarm.time,
            description = ?alarm.description, "alarm from a device"
        );
        self.metrics
            .alarms
            .with_label_values(&[device, &alarm.priority, &alarm.method])
            .inc();
        let src = source.to_string();
        if let Err(e) = self.send_manscdp(device, |cs| manscdp::alarm_response(sn, &src, cs), None)
        {
            debug!(%device, error = %e, "alarm not acknowledged");
        }
        if self.alarms.len() >= KEEP {
            self.alarms.pop_front();
        }
        self.alarms.push_back(AlarmRecord {
            device: device.to_string(),
            source: source.to_string(),
            sn,
            received_ms: wall_ms(),
            alarm,
        });
    }

    /// The kept alarms, newest first, of `device` if given, at most `limit`.
    pub(super) fn alarm_list(&self, device: Option<&str>, limit: usize) -> Vec<AlarmRecord> {
        self.alarms
            .iter()
            .rev()
            .filter(|a| device.is_none_or(|d| a.device == d))
            .take(limit)
            .cloned()
            .collect()
    }
}
