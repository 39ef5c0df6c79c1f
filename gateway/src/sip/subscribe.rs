//! Subscriptions to devices (GB/T 28181 9.11, RFC 6665): Catalog, Alarm
//! and MobilePosition. Each is a SUBSCRIBE dialog with a MANSCDP
//! `<Query>` (`Event: Catalog;id=SN` for the catalog, `presence` for the
//! others, as wvp and the devices that follow it use), refreshed in the
//! dialog at 80 % of what the device granted, ended with `Expires: 0`.
//! The device NOTIFYs in the dialog; the bodies are handled as the same
//! MANSCDP would be in a MESSAGE (catalog changes applied, alarms kept,
//! positions stored). A refusal, a timeout, a failed refresh or the
//! device's `Subscription-State: terminated` are retried after
//! `retry_secs`; a device going offline drops its subscriptions.
//!
//! What is wanted comes from `[sip.subscribe]`, or per device from the
//! API (kept in the device record).

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use gb28181::{
    manscdp,
    sip::{self as gsip, Head, Outgoing},
};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::{
    core::{fmt_addr, Core, Purpose},
    registry::SubKind,
    transport::{Dest, Inbound},
};
use crate::{session::Error, sys::clock::wall_ms};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SubState {
    /// SUBSCRIBE sent, no final answer yet.
    Pending,
    Active,
    /// Refused, unanswered, expired or ended by the device: retried.
    Failed,
}

/// A subscription to one device for one kind of event.
pub(super) struct Subscription {
    state: SubState,
    call_id: String,
    local_tag: String,
    remote_tag: Option<String>,
    /// Request-URI of the first SUBSCRIBE; the device's Contact after.
    uri: String,
    target: Option<String>,
    cseq: u32,
    event: String,
    dest: Dest,
    local_sip: String,
    /// Granted by the device.
    expires: u32,
    refresh_at: Option<Instant>,
    expires_at: Option<Instant>,
    retry_at: Option<Instant>,
    /// A refresh (not the first SUBSCRIBE) is in flight.
    refreshing: bool,
    since_ms: Option<i64>,
    notifies: u64,
    refreshes: u64,
    last_notify_ms: Option<i64>,
    error: Option<String>,
    waiter: Option<oneshot::Sender<Result<Value, Error>>>,
}

/// A subscription as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriptionView {
    pub event: &'static str,
    pub state: SubState,
    /// Seconds granted by the device.
    pub expires: u32,
    pub expires_in_secs: Option<u64>,
    pub since_ms: Option<i64>,
    pub notifies: u64,
    pub refreshes: u64,
    pub last_notify_ms: Option<i64>,
    pub error: Option<String>,
    pub call_id: String,
}

impl Core {
    fn count_sub(&self, kind: SubKind, result: &str) {
        self.metrics
            .subscriptions
            .with_label_values(&[kind.as_str(), result])
            .inc();
    }

    pub(super) fn update_sub_gauges(&self) {
        for k in SubKind::ALL {
            let n = self
                .subs
                .iter()
                .filter(|((_, kind), s)| *kind == k && s.state == SubState::Active)
                .count();
            self.metrics
                .subscriptions_active
                .with_label_values(&[k.as_str()])
                .set(n as i64);
        }
    }

    /// The kinds the gateway wants from `device`.
    pub(super) fn wanted_subs(&self, device: &str) -> BTreeSet<SubKind> {
        if let Some(set) = self
            .reg
            .devices
            .get(device)
            .and_then(|d| d.subscribe.clone())
        {
            return set;
        }
        let c = &self.cfg.subscribe;
        SubKind::ALL
            .into_iter()
            .filter(|k| match k {
                SubKind::Catalog => c.catalog,
                SubKind::Alarm => c.alarm,
                SubKind::MobilePosition => c.mobile_position,
            })
            .collect()
    }

    /// The device came online: subscribe to what is wanted and missing.
    pub(super) fn ensure_subscriptions(&mut self, device: &str) {
        for kind in self.wanted_subs(device) {
            let key = (device.to_string(), kind);
            if self
                .subs
                .get(&key)
                .is_some_and(|s| s.state != SubState::Failed)
            {
                continue;
            }
            if let Err(e) = self.subscribe(device, kind, None) {
                debug!(device, event = kind.as_str(), error = %e, "not subscribed");
            }
        }
    }

    pub(super) fn sub_view(&self, device: &str) -> Vec<SubscriptionView> {
        let now = Instant::now();
        let mut v: Vec<SubscriptionView> = self
            .subs
            .iter()
            .filter(|((d, _), _)| d == device)
            .map(|((_, k), s)| SubscriptionView {
                event: k.as_str(),
                state: s.state,
                expires: s.expires,
                expires_in_secs: s
                    .expires_at
                    .map(|t| t.saturating_duration_since(now).as_secs()),
                since_ms: s.since_ms,
                notifies: s.notifies,
                refreshes: s.refreshes,
                last_notify_ms: s.last_notify_ms,
                error: s.error.clone(),
                call_id: s.call_id.clone(),
            })
            .collect();
        v.sort_by_key(|s| s.event);
        v
    }

    /// A new subscription dialog (replacing one that failed).
    pub(super) fn subscribe(
        &mut self,
        device: &str,
        kind: SubKind,
        waiter: Option<oneshot::Sender<Result<Value, Error>>>,
    ) -> Result<(), Error> {
        let d = self
            .reg
            .devices
            .get(device)
            .ok_or_else(|| Error::NotFound(format!("no device {device}")))?;
        if !d.online {
            return Err(Error::Conflict(format!("device {device} is offline")));
        }
        let dest = *self
            .routes
            .get(device)
            .ok_or_else(|| Error::Conflict(format!("no route to device {device}")))?;
        let (d_local, d_addr) = (d.local, d.addr);
        let local_sip = self.local_sip(d_local, d_addr);
        let sn = self.next_sn();
        let event = match kind {
            SubKind::Catalog => format!("Catalog;id={sn}"),
            _ => "presence".to_string(),
        };
        let key = (device.to_string(), kind);
        if let Some(old) = self.subs.remove(&key) {
            self.subs_by_call.remove(&old.call_id);
        }
        let s = Subscription {
            state: SubState::Pending,
            call_id: gsip::token(20),
            local_tag: gsip::token(10),
            remote_tag: None,
            uri: format!("sip:{device}@{}", fmt_addr(d_addr)),
            target: None,
            cseq: 0,
            event,
            dest,
            local_sip,
            expires: 0,
            refresh_at: None,
            expires_at: None,
            retry_at: None,
            refreshing: false,
            since_ms: None,
            notifies: 0,
            refreshes: 0,
            last_notify_ms: None,
            error: None,
            waiter,
        };
        self.subs_by_call.insert(s.call_id.clone(), key.clone());
        self.subs.insert(key.clone(), s);
        self.send_subscribe(&key, sn, self.cfg.subscribe.expires_secs);
        info!(device, event = kind.as_str(), "SUBSCRIBE sent");
        Ok(())
    }

    /// SUBSCRIBE in the subscription's dialog (first, refresh or end).
    fn send_subscribe(&mut self, key: &(String, SubKind), sn: u32, expires: u32) {
        let cs = self
            .reg
            .devices
            .get(&key.0)
            .and_then(|d| d.charset.as_deref())
            .and_then(crate::config::charset)
            .unwrap_or(self.charset);
        let interval = self.cfg.subscribe.mobile_position_interval_secs;
        let body = manscdp::subscribe_query(key.1.cmd(), sn, &key.0, interval, cs);
        let Some(s) = self.subs.get_mut(key) else {
            return;
        };
        s.cseq += 1;
        let branch = gsip::branch();
        let from = format!("sip:{}@{}", self.cfg.id, self.domain);
        let to = format!("sip:{}@{}", key.0, self.domain);
        let contact = format!("sip:{}@{}", self.cfg.id, s.local_sip);
        let exp = expires.to_string();
        let uri = s.target.clone().unwrap_or_else(|| s.uri.clone());
        let msg = Outgoing {
            method: "SUBSCRIBE",
            uri: &uri,
            transport: s.dest.transport(),
            local: &s.local_sip,
            branch: &branch,
            from: &from,
            from_tag: &s.local_tag,
            to: &to,
            to_tag: s.remote_tag.as_deref(),
            call_id: &s.call_id,
            cseq: s.cseq,
            contact: Some(&contact),
            headers: &[("Event", &s.event), ("Expires", &exp)],
            content_type: Some("Application/MANSCDP+xml"),
            body: &body,
        }
        .build();
        let (dest, cseq) = (s.dest, s.cseq);
        let purpose = Purpose::Subscribe {
            device: key.0.clone(),
            kind: key.1,
            cseq,
            end: expires == 0,
        };
        self.start_request(dest, &branch, "SUBSCRIBE", msg, Some(purpose));
    }

    /// The final answer to a SUBSCRIBE (`h` None: no answer, Timer F).
    pub(super) fn subscribe_answered(
        &mut self,
        device: &str,
        kind: SubKind,
        cseq: u32,
        end: bool,
        h: Option<&Head>,
    ) {
        if end {
            // An unsubscription: whatever the answer, it is over for us.
            return;
        }
        let key = (device.to_string(), kind);
        let retry = Duration::from_secs(self.cfg.subscribe.retry_secs.max(1));
        let asked = self.cfg.subscribe.expires_secs;
        let Some(s) = self.subs.get_mut(&key).filter(|s| s.cseq == cseq) else {
            return;
        };
        let now = Instant::now();
        let status = h.and_then(|h| h.status).unwrap_or(0);
        let refresh = s.refreshing;
        s.refreshing = false;
        if (200..300).contains(&status) {
            let h = h.expect("a status comes with its head");
            let granted = h.expires.unwrap_or(asked).min(asked.max(1));
            s.state = SubState::Active;
            s.remote_tag = h.to.tag.clone().or(s.remote_tag.take());
            if let Some(c) = &h.contact {
                s.target = Some(c.uri.clone());
            }
            s.expires = granted;
            s.error = None;
            s.retry_at = None;
            s.expires_at = Some(now + Duration::from_secs(granted as u64));
            s.refresh_at =
                Some(now + Duration::from_millis(granted as u64 * 800).max(Duration::from_secs(1)));
            if refresh {
                s.refreshes += 1;
            } else {
                s.since_ms = Some(wall_ms());
            }
            let waiter = s.waiter.take();
            self.count_sub(kind, if refresh { "refreshed" } else { "ok" });
            if !refresh {
                info!(
                    device,
                    event = kind.as_str(),
                    expires = granted,
                    "subscribed"
                );
            }
            if let Some(w) = waiter {
                let v = self
                    .sub_view(device)
                    .into_iter()
                    .find(|v| v.event == kind.as_str());
                let _ = w.send(Ok(serde_json::to_value(v).unwrap_or_default()));
            }
            self.update_sub_gauges();
            return;
        }
        let why = match h {
            Some(h) => format!("device answered {status} {}", h.reason),
            None => "no answer to SUBSCRIBE (Timer F)".to_string(),
        };
        warn!(
            device,
            event = kind.as_str(),
            refresh,
            why,
            "subscription failed"
        );
        s.state = SubState::Failed;
        s.error = Some(why.clone());
        s.refresh_at = None;
        s.expires_at = None;
        s.retry_at = Some(now + retry);
        let waiter = s.waiter.take();
        self.count_sub(kind, if h.is_some() { "refused" } else { "timeout" });
        if let Some(w) = waiter {
            let e = if h.is_some() {
                Error::Upstream(format!("SUBSCRIBE {}: {why}", kind.as_str()))
            } else {
                Error::Timeout(format!("SUBSCRIBE {}: {why}", kind.as_str()))
            };
            let _ = w.send(Err(e));
        }
        // A refresh the device no longer knows: a new subscription now.
        if refresh && status == 481 {
            let _ = self.subscribe(device, kind, None);
        }
        self.update_sub_gauges();
    }

    /// Ends a subscription (`Expires: 0`) and forgets it.
    pub(super) fn unsubscribe(&mut self, device: &str, kind: SubKind) -> bool {
        let key = (device.to_string(), kind);
        let Some(s) = self.subs.get(&key) else {
            return false;
        };
        if s.state == SubState::Active {
            let sn = self.next_sn();
            self.send_subscribe(&key, sn, 0);
        }
        if let Some(s) = self.subs.remove(&key) {
            self.subs_by_call.remove(&s.call_id);
            if let Some(w) = s.waiter {
                let _ = w.send(Err(Error::Conflict("unsubscribed".into())));
            }
        }
        self.count_sub(kind, "unsubscribed");
        info!(device, event = kind.as_str(), "unsubscribed");
        self.update_sub_gauges();
        true
    }

    /// The device went offline or was deleted: its dialogs are gone.
    pub(super) fn drop_subscriptions(&mut self, device: &str) {
        let keys: Vec<(String, SubKind)> = self
            .subs
            .keys()
            .filter(|(d, _)| d == device)
            .cloned()
            .collect();
        for k in keys {
            if let Some(s) = self.subs.remove(&k) {
                self.subs_by_call.remove(&s.call_id);
                if let Some(w) = s.waiter {
                    let _ = w.send(Err(Error::Conflict(format!(
                        "device {device} went offline"
                    ))));
                }
            }
        }
        self.update_sub_gauges();
    }

    /// Refreshes, expiries and retries.
    pub(super) fn subscription_timers(&mut self, now: Instant) {
        let keys: Vec<(String, SubKind)> = self.subs.keys().cloned().collect();
        let retry = Duration::from_secs(self.cfg.subscribe.retry_secs.max(1));
        for key in keys {
            let Some(s) = self.subs.get_mut(&key) else {
                continue;
            };
            if s.state == SubState::Active && s.expires_at.is_some_and(|t| now >= t) {
                warn!(device = %key.0, event = key.1.as_str(), "subscription expired (no refresh answered)");
                s.state = SubState::Failed;
                s.error = Some("expired without a refresh".into());
                s.retry_at = Some(now + retry);
                self.count_sub(key.1, "expired");
                self.update_sub_gauges();
                continue;
            }
            if s.state == SubState::Active
                && !s.refreshing
                && s.refresh_at.is_some_and(|t| now >= t)
            {
                s.refreshing = true;
                s.refresh_at = None;
                let sn = self.next_sn();
                let expires = self.cfg.subscribe.expires_secs;
                self.send_subscribe(&key, sn, expires);
                continue;
            }
            if s.state == SubState::Failed && s.retry_at.is_some_and(|t| now >= t) {
                s.retry_at = None;
                let online = self.reg.devices.get(&key.0).is_some_and(|d| d.online);
                if online && self.wanted_subs(&key.0).contains(&key.1) {
                    let _ = self.subscribe(&key.0, key.1, None);
                }
            }
        }
    }

    /// A NOTIFY: counted against its subscription (if any: devices also
    /// NOTIFY outside one), then handled as its MANSCDP body says.
    pub(super) fn on_notify(&mut self, m: &Inbound) {
        let h = &m.head;
        let cmd = manscdp::parse(&h.body)
            .ok()
            .map(|x| x.cmd_type)
            .unwrap_or_default();
        let event = ["Catalog", "Alarm", "MobilePosition"]
            .into_iter()
            .find(|c| c.eq_ignore_ascii_case(&cmd))
            .map_or("other", |c| match c {
                "Catalog" => "catalog",
                "Alarm" => "alarm",
                _ => "mobile_position",
            });
        let key = self.subs_by_call.get(&h.call_id).cloned();
        let result = match key.as_ref().and_then(|k| self.subs.get_mut(k)) {
            Some(s) => {
                s.notifies += 1;
                s.last_notify_ms = Some(wall_ms());
                let terminated = h
                    .subscription_state
                    .as_deref()
                    .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("terminated"));
                if terminated {
                    s.state = SubState::Failed;
                    s.error = Some("ended by the device (Subscription-State: terminated)".into());
                    s.retry_at = Some(
                        Instant::now() + Duration::from_secs(self.cfg.subscribe.retry_secs.max(1)),
                    );
                    s.refresh_at = None;
                    s.expires_at = None;
                    if let Some(k) = &key {
                        self.count_sub(k.1, "terminated");
                    }
                    self.update_sub_gauges();
                }
                "subscribed"
            }
            None => "unsolicited",
        };
        self.metrics
            .notifies
            .with_label_values(&[event, result])
            .inc();
        self.on_manscdp(m);
    }
}

impl Core {
    /// `PUT`/`DELETE /api/devices/{id}/subscriptions/{event}`: what is
    /// wanted from the device changes (kept in its record), then the
    /// SUBSCRIBE (answered when the device has) or the unsubscription.
    pub(super) fn api_subscribe(
        &mut self,
        device: &str,
        kind: SubKind,
        on: bool,
        tx: oneshot::Sender<Result<Value, Error>>,
    ) {
        if !self.reg.devices.contains_key(device) {
            let _ = tx.send(Err(Error::NotFound(format!("no device {device}"))));
            return;
        }
        let mut wanted = self.wanted_subs(device);
        if on {
            wanted.insert(kind);
        } else {
            wanted.remove(&kind);
        }
        if let Some(d) = self.reg.devices.get_mut(device) {
            d.subscribe = Some(wanted);
        }
        self.save(device);
        if on {
            if let Err(e) = self.subscribe(device, kind, None) {
                let _ = tx.send(Err(e));
                return;
            }
            if let Some(s) = self.subs.get_mut(&(device.to_string(), kind)) {
                s.waiter = Some(tx);
            }
        } else {
            let was = self.unsubscribe(device, kind);
            let _ = tx.send(Ok(serde_json::json!({
                "device": device,
                "event": kind.as_str(),
                "unsubscribed": was,
            })));
        }
    }
}
