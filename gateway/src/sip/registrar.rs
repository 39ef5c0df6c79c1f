//! REGISTER: digest authentication (MD5, with and without qop), expiry,
//! unregistration, the device's route; a device that comes online gets
//! its catalog asked for.

use std::time::{Duration, Instant};

use gb28181::{
    digest::{Challenge, Credentials, Verdict},
    sip::{self as gsip},
};
use tracing::{debug, info, warn};

use super::{
    core::{fmt_addr, gb_date, strip_port, Core},
    registry::{CatalogSync, Device, OfflineReason, SyncState},
    transport::Inbound,
};
use crate::sys::clock::wall_ms;

impl Core {
    /// Our domain, our ID, `<domain>.spvmn.cn`, or an IP literal (devices
    /// configured with the platform's address).
    pub(super) fn our_host(&self, uri: &str) -> bool {
        let Some(na) = gsip::NameAddr::parse(uri) else {
            return false;
        };
        let host = strip_port(&na.host);
        host == self.domain
            || host == self.cfg.id
            || host.eq_ignore_ascii_case(&format!("{}.spvmn.cn", self.domain))
            || host
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok()
    }

    pub(super) fn password_of(&self, id: &str) -> Option<&str> {
        self.passwords
            .get(id)
            .map(String::as_str)
            .or(self.cfg.password.as_deref())
    }

    pub(super) fn challenge(&mut self, m: &Inbound, stale: bool) {
        let ch = Challenge {
            realm: self.domain.clone(),
            nonce: self.nonces.issue(self.secs()),
            qop: self.cfg.qop,
            stale,
            opaque: None,
        };
        let hv = ch.to_header();
        self.reply(m, 401, "Unauthorized", &[("WWW-Authenticate", &hv)]);
    }

    pub(super) fn on_register(&mut self, m: &Inbound) {
        let h = &m.head;
        let result = |s: &Self, r: &str| s.metrics.registrations.with_label_values(&[r]).inc();
        if !self.our_host(&h.uri) {
            result(self, "wrong_domain");
            warn!(device = %h.from.user, uri = %h.uri, source = %m.from.peer(), "REGISTER for another domain");
            return self.reply(m, 404, "Not Found (domain)", &[]);
        }
        let id = h.from.user.clone();
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            result(self, "bad_request");
            return self.reply(m, 400, "Bad Request (device ID)", &[]);
        }
        if h.to.user != id {
            result(self, "forbidden");
            return self.reply(m, 403, "Forbidden (third-party registration)", &[]);
        }
        let expires = h.expires.or_else(|| {
            h.contact
                .as_ref()
                .and_then(|c| c.param("expires")?.parse().ok())
        });
        let Some(expires) = expires else {
            result(self, "bad_request");
            return self.reply(m, 400, "Bad Request (Expires missing)", &[]);
        };
        let Some(auth) = h.authorization.as_deref() else {
            result(self, "challenged");
            return self.challenge(m, false);
        };
        let creds = match Credentials::parse(auth) {
            Ok(c) => c,
            Err(e) => {
                result(self, "bad_request");
                self.metrics
                    .auth_failures
                    .with_label_values(&["malformed"])
                    .inc();
                return self.reply(m, 400, &format!("Bad Request ({e})"), &[]);
            }
        };
        if creds.username != id {
            result(self, "forbidden");
            self.metrics
                .auth_failures
                .with_label_values(&["username"])
                .inc();
            return self.reply(m, 403, "Forbidden", &[]);
        }
        let Some(password) = self.password_of(&id).map(str::to_string) else {
            result(self, "forbidden");
            self.metrics
                .auth_failures
                .with_label_values(&["unknown_device"])
                .inc();
            warn!(device = %id, source = %m.from.peer(), "REGISTER from a device with no password configured");
            return self.reply(m, 403, "Forbidden", &[]);
        };
        let secs = self.secs();
        match self
            .nonces
            .verify(&creds, "REGISTER", &self.domain, &password, secs)
        {
            Verdict::Ok => {}
            Verdict::Stale => {
                result(self, "stale");
                self.metrics
                    .auth_failures
                    .with_label_values(&["stale_nonce"])
                    .inc();
                return self.challenge(m, true);
            }
            Verdict::Forbidden => {
                result(self, "forbidden");
                let why = if creds.realm != self.domain {
                    "realm"
                } else {
                    "password"
                };
                self.metrics.auth_failures.with_label_values(&[why]).inc();
                debug!(device = %id, source = %m.from.peer(), why, "authentication failed");
                return self.reply(m, 403, "Forbidden", &[]);
            }
        }
        let now_wall = wall_ms();
        if expires == 0 {
            result(self, "unregistered");
            if let Some(d) = self.reg.devices.get_mut(&id) {
                let was = d.online;
                d.go_offline(OfflineReason::Unregistered, now_wall);
                if was {
                    self.metrics
                        .transitions
                        .with_label_values(&["offline", "unregistered"])
                        .inc();
                    self.cascade_device_event(&id, "OFF");
                }
                info!(device = %id, reason = "unregistered", "device offline");
            }
            self.close_device_sessions(&id, "device unregistered");
            self.routes.remove(&id);
            self.save(&id);
            self.update_gauges();
            let date = gb_date();
            return self.reply(m, 200, "OK", &[("Date", &date), ("Expires", "0")]);
        }
        if expires < self.cfg.min_expires {
            result(self, "interval_too_brief");
            let min = self.cfg.min_expires.to_string();
            return self.reply(m, 423, "Interval Too Brief", &[("Min-Expires", &min)]);
        }
        let granted = expires.min(self.cfg.max_expires);
        result(self, "ok");
        let now = Instant::now();
        let interval = self
            .intervals
            .get(&id)
            .copied()
            .unwrap_or(self.cfg.keepalive_interval_secs);
        let contact = h
            .contact
            .as_ref()
            .map(|c| c.uri.clone())
            .unwrap_or_else(|| format!("sip:{id}@{}", fmt_addr(m.from.peer())));
        let transport = m.from.transport();
        let new = !self.reg.devices.contains_key(&id);
        let d = self
            .reg
            .devices
            .entry(id.clone())
            .or_insert_with(|| Device {
                id: id.clone(),
                online: false,
                registered: false,
                transport,
                addr: m.from.peer(),
                local: m.local,
                contact: contact.clone(),
                expires: granted,
                registered_ms: now_wall,
                expires_ms: now_wall,
                last_alive_ms: now_wall,
                last_keepalive_ms: None,
                keepalive_interval: interval,
                keepalive_count: 0,
                online_since_ms: None,
                offline_reason: None,
                offline_since_ms: None,
                user_agent: None,
                gb_version: None,
                charset: None,
                registrations: 0,
                keepalives: 0,
                faulty: Vec::new(),
                info: None,
                info_ms: None,
                status: None,
                status_ms: None,
                catalog: CatalogSync::default(),
                subscribe: None,
                position: None,
                position_ms: None,
                time_offset_secs: None,
                time_offset_ms: None,
                last_alive: now,
                expires_at: now,
            });
        let was_online = d.online;
        if d.addr != m.from.peer() && !new {
            info!(device = %id, old = %d.addr, new = %m.from.peer(), "device address changed");
        }
        d.transport = transport;
        d.addr = m.from.peer();
        d.local = m.local;
        d.contact = contact;
        d.expires = granted;
        d.registered = true;
        d.online = true;
        d.registered_ms = now_wall;
        d.expires_ms = now_wall + granted as i64 * 1000;
        d.expires_at = now + Duration::from_secs(granted as u64);
        d.last_alive = now;
        d.last_alive_ms = now_wall;
        d.keepalive_interval = interval;
        d.keepalive_count = self.cfg.keepalive_timeout_count;
        d.user_agent = h.user_agent.clone();
        d.gb_version = h.gb_ver.clone();
        d.registrations += 1;
        d.offline_reason = None;
        if !was_online {
            d.online_since_ms = Some(now_wall);
            self.metrics
                .transitions
                .with_label_values(&["online", "registered"])
                .inc();
            info!(device = %id, source = %m.from.peer(), transport = transport.as_str(), expires = granted, "device online (registered)");
        }
        let never_synced = matches!(d.catalog.state, SyncState::Never | SyncState::Interrupted);
        if !was_online {
            self.cascade_device_event(&id, if new { "ADD" } else { "ON" });
        }
        self.routes.insert(id.clone(), m.from);
        let date = gb_date();
        let exp = granted.to_string();
        let contact_hdr = h.contact.as_ref().map(|c| c.raw.clone());
        let mut hdrs: Vec<(&str, &str)> = vec![("Date", &date), ("Expires", &exp)];
        if let Some(c) = &contact_hdr {
            hdrs.push(("Contact", c));
        }
        self.reply(m, 200, "OK", &hdrs);
        self.save(&id);
        self.update_gauges();
        if !was_online || never_synced {
            if let Err(e) = self.start_catalog(&id, self.cfg.query_info) {
                warn!(device = %id, error = %e, "cannot ask for the catalog");
            }
        }
        if !was_online {
            self.ensure_subscriptions(&id);
        }
    }
}
