//! Subscriptions the platform makes to the device (RFC 6665 as GB/T 28181
//! uses it): SUBSCRIBE with a MANSCDP `<Query>` for Catalog, Alarm or
//! MobilePosition, answered 200 with the Expires granted; refreshes in
//! the dialog; `Expires: 0` ends it. The device then NOTIFYs in the
//! dialog: the catalog at once and its changes, alarms when raised, the
//! position every `<Interval>` seconds.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use gb28181::{
    manscdp::{self, CatalogItem, Kind, MobilePosition},
    sip::{self as gsip, Head, Outgoing},
};
use tracing::{debug, info, warn};

use crate::device::{device_time_with, Device, What};

/// A subscription the platform made.
pub struct Sub {
    /// Catalog, Alarm or MobilePosition.
    pub kind: String,
    /// The Event header, echoed in NOTIFYs.
    event: String,
    our_tag: String,
    remote_tag: Option<String>,
    /// From (the platform) and To (us) of the SUBSCRIBE.
    remote_uri: String,
    local_uri: String,
    /// Where NOTIFYs go: the platform's Contact.
    target: String,
    peer: SocketAddr,
    cseq: u32,
    pub expires_at: Instant,
    interval: Duration,
    pub next_position: Option<Instant>,
    /// Positions sent (they move along a line).
    positions: u32,
}

impl Device {
    fn sub_report(&self, kind: &str, f: impl FnOnce(&mut crate::status::SubReport)) {
        let kind = kind.to_string();
        self.shared.device(self.index, |d| {
            f(d.subscriptions.entry(kind).or_default());
        });
    }

    pub(crate) async fn on_subscribe(&mut self, h: &Head, src: SocketAddr) {
        let tag = self.tag.clone();
        let msg = match manscdp::parse(&h.body) {
            Ok(m) if m.kind == Kind::Query => m,
            Ok(_) | Err(_) => {
                let r = "Bad Request (SUBSCRIBE needs a MANSCDP Query)";
                self.reply(h, src, 400, r, &tag, &[], None).await;
                return;
            }
        };
        let kind = ["Catalog", "Alarm", "MobilePosition"]
            .into_iter()
            .find(|k| k.eq_ignore_ascii_case(&msg.cmd_type));
        let (Some(kind), false) = (kind, self.cfg.refuse_subscribe) else {
            let k = msg.cmd_type.clone();
            self.sub_report(&k, |r| r.refused += 1);
            info!(device = %self.id, cmd = %msg.cmd_type, "SUBSCRIBE refused");
            self.reply(h, src, 489, "Bad Event", &tag, &[], None).await;
            return;
        };
        let asked = h.expires.unwrap_or(3600);
        let granted = asked.min(self.cfg.subscribe_max_expires);
        let now = Instant::now();
        if let Some(s) = self.subs.get_mut(&h.call_id) {
            // In the dialog: a refresh, or the end.
            let our_tag = s.our_tag.clone();
            let exp = granted.to_string();
            if granted == 0 {
                self.subs.remove(&h.call_id);
                self.sub_report(kind, |r| {
                    r.unsubscribes += 1;
                    r.active = false;
                });
                info!(device = %self.id, kind, "unsubscribed");
            } else {
                s.expires_at = now + Duration::from_secs(granted as u64);
                self.sub_report(kind, |r| {
                    r.refreshes += 1;
                    r.expires = granted;
                });
                debug!(device = %self.id, kind, granted, "subscription refreshed");
            }
            self.reply(h, src, 200, "OK", &our_tag, &[("Expires", &exp)], None)
                .await;
            return;
        }
        if h.to.tag.is_some() {
            let r = "Call/Transaction Does Not Exist";
            self.reply(h, src, 481, r, &tag, &[], None).await;
            return;
        }
        if granted == 0 {
            // A fetch without a subscription: nothing to keep.
            self.reply(h, src, 200, "OK", &tag, &[("Expires", "0")], None)
                .await;
            return;
        }
        let interval = match &msg.body {
            manscdp::Body::Other(leaves) => leaves
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("Interval"))
                .and_then(|(_, v)| v.trim().parse::<u64>().ok()),
            _ => None,
        }
        .unwrap_or(5)
        .clamp(1, 3600);
        let our_tag = gsip::token(10);
        let exp = granted.to_string();
        let contact = format!("<sip:{}@{}>", self.id, self.local);
        self.reply(
            h,
            src,
            200,
            "OK",
            &our_tag,
            &[("Expires", &exp), ("Contact", &contact)],
            None,
        )
        .await;
        info!(device = %self.id, kind, granted, "subscribed");
        self.sub_report(kind, |r| {
            r.subscribes += 1;
            r.active = true;
            r.expires = granted;
        });
        self.subs.insert(
            h.call_id.clone(),
            Sub {
                kind: kind.to_string(),
                event: h.event.clone().unwrap_or_else(|| "presence".into()),
                our_tag,
                remote_tag: h.from.tag.clone(),
                remote_uri: h.from.uri.clone(),
                local_uri: h.to.uri.clone(),
                target: h
                    .contact
                    .as_ref()
                    .map(|c| c.uri.clone())
                    .unwrap_or_else(|| h.from.uri.clone()),
                peer: src,
                cseq: 0,
                expires_at: now + Duration::from_secs(granted as u64),
                interval: Duration::from_secs(interval),
                next_position: (kind == "MobilePosition").then_some(now),
                positions: 0,
            },
        );
        // The catalog as it is now, at once.
        if kind == "Catalog" {
            self.sn = self.sn.wrapping_add(1);
            let items = self.catalog_items();
            let body = manscdp::catalog_notify(self.sn, &self.id, &items, self.cfg.charset);
            self.send_notify(&h.call_id, &body).await;
        }
    }

    /// NOTIFYs `body` in every subscription of `kind`; false when there is
    /// none.
    pub(crate) async fn notify_kind(&mut self, kind: &str, body: &[u8]) -> bool {
        let ids: Vec<String> = self
            .subs
            .iter()
            .filter(|(_, s)| s.kind == kind)
            .map(|(k, _)| k.clone())
            .collect();
        for id in &ids {
            self.send_notify(id, body).await;
        }
        !ids.is_empty()
    }

    async fn send_notify(&mut self, call_id: &str, body: &[u8]) {
        let now = Instant::now();
        let Some(s) = self.subs.get_mut(call_id) else {
            return;
        };
        s.cseq += 1;
        let left = s.expires_at.saturating_duration_since(now).as_secs();
        let state = format!("active;expires={left}");
        let branch = gsip::branch();
        let bytes = Outgoing {
            method: "NOTIFY",
            uri: &s.target,
            transport: self.cfg.transport,
            local: &self.local,
            branch: &branch,
            from: &s.local_uri,
            from_tag: &s.our_tag,
            to: &s.remote_uri,
            to_tag: s.remote_tag.as_deref(),
            call_id,
            cseq: s.cseq,
            contact: None,
            headers: &[
                ("Event", &s.event),
                ("Subscription-State", &state),
                ("User-Agent", crate::device::USER_AGENT),
            ],
            content_type: Some("Application/MANSCDP+xml"),
            body,
        }
        .build();
        let (kind, peer) = (s.kind.clone(), s.peer);
        self.sub_report(&kind, |r| r.notifies_sent += 1);
        let what = What::Notify {
            call_id: call_id.to_string(),
        };
        self.start_request(branch, what, bytes, peer).await;
    }

    pub(crate) fn on_notify_response(&mut self, call_id: &str, code: u16) {
        let Some(kind) = self.subs.get(call_id).map(|s| s.kind.clone()) else {
            return;
        };
        if (200..300).contains(&code) {
            self.sub_report(&kind, |r| r.notifies_ok += 1);
        } else if code == 481 || code == 0 {
            // The platform forgot it (or is gone).
            warn!(device = %self.id, kind, code, "NOTIFY refused; subscription dropped");
            self.subs.remove(call_id);
            self.sub_report(&kind, |r| r.active = false);
        }
    }

    /// Positions due; subscriptions that ran out without a refresh.
    pub(crate) async fn subscription_timers(&mut self, now: Instant) {
        let gone: Vec<String> = self
            .subs
            .iter()
            .filter(|(_, s)| now >= s.expires_at)
            .map(|(k, _)| k.clone())
            .collect();
        for id in gone {
            if let Some(s) = self.subs.remove(&id) {
                warn!(device = %self.id, kind = %s.kind, "subscription expired without a refresh");
                self.sub_report(&s.kind, |r| {
                    r.expired += 1;
                    r.active = false;
                });
            }
        }
        let due: Vec<String> = self
            .subs
            .iter()
            .filter(|(_, s)| s.next_position.is_some_and(|t| now >= t))
            .map(|(k, _)| k.clone())
            .collect();
        for id in due {
            let Some(s) = self.subs.get_mut(&id) else {
                continue;
            };
            s.next_position = Some(now + s.interval);
            s.positions += 1;
            // Along Chang'an Avenue, eastwards, 0.0001 degree a step.
            let p = MobilePosition {
                time: device_time_with(self.cfg.clock_offset_secs),
                longitude: 116.3 + s.positions as f64 * 0.0001,
                latitude: 39.9,
                speed: Some(36.0),
                direction: Some(90.0),
                altitude: Some(50.0),
            };
            self.sn = self.sn.wrapping_add(1);
            let body = manscdp::mobile_position_notify(self.sn, &self.id, &p, self.cfg.charset);
            self.send_notify(&id, &body).await;
        }
    }

    /// --catalog-change-after: the first channel goes OFF.
    pub(crate) async fn send_catalog_change(&mut self) {
        let Some(first) = self.catalog_items().into_iter().next() else {
            return;
        };
        let item = CatalogItem {
            status: Some("OFF".into()),
            extra: vec![("Event".into(), "OFF".into())],
            ..first
        };
        self.sn = self.sn.wrapping_add(1);
        let body = manscdp::catalog_notify(self.sn, &self.id, &[item], self.cfg.charset);
        info!(device = %self.id, "catalog change: first channel OFF");
        if !self.notify_kind("Catalog", &body).await {
            self.send_manscdp(body, What::Answer).await;
        }
    }
}
