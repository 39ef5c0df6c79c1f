//! Cascade: the gateway as a lower-level platform of one or more superior
//! platforms (`[[cascade]]`, docs/cascade.md).
//!
//! Towards each superior the core is a user agent: it REGISTERs (digest
//! MD5, with or without qop; re-registers at 2/3 of the granted expiry;
//! follows a 3xx; backs off on refusals and silence, the reason kept for
//! the API), sends keepalives (a superior that leaves `keepalive_timeout_count`
//! of them unanswered is lost: registration starts again), and answers the
//! superior's queries: Catalog (the gateway as the parent item, type 200,
//! then the shared channels, sent in parts of `catalog_chunk` items, each
//! part after the 200 OK of the previous one), DeviceInfo and DeviceStatus.
//! A superior is recognised by the user part of the `From` of its requests
//! (its platform ID).

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use gb28181::{
    digest::Challenge,
    manscdp::{self, Body, CatalogItem, DeviceInfo, DeviceStatus, Kind},
    sip::{self as gsip, Head, NameAddr, Outgoing},
};
use serde::Serialize;
use tracing::{debug, info, warn};

use super::{
    core::{Core, Purpose},
    transport::{Dest, Inbound},
};
use crate::{
    config::{CascadeConfig, CatalogGroup},
    sys::clock::wall_ms,
};

/// Longest back-off between registration attempts.
const MAX_RETRY: Duration = Duration::from_secs(600);
/// 3xx answers followed in a row before giving up.
const MAX_REDIRECTS: u32 = 3;

/// Where the registration with a superior stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpState {
    /// Not (yet) asked.
    Unregistered,
    /// REGISTER sent, no final answer yet.
    Registering,
    Registered,
    /// Refused or unanswered: the next attempt waits (see `reason`).
    Backoff,
}

/// What one of our requests to a superior was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UpReq {
    Register {
        expires: u32,
    },
    Keepalive,
    /// A part of a Catalog answer (SN of the superior's query).
    CatalogPart {
        sn: u32,
    },
    /// A DeviceInfo/DeviceStatus answer.
    Response,
}

/// A Catalog answer being sent in parts.
struct CatalogPush {
    sn: u32,
    items: Vec<CatalogItem>,
    /// Items sent so far.
    next: usize,
}

/// One superior platform.
pub(super) struct Upstream {
    cfg: CascadeConfig,
    local_id: String,
    /// The superior's domain (digest realm expected; To of requests).
    domain: String,
    /// Where REGISTER and requests go (the configured address, or where a
    /// 3xx pointed).
    target: SocketAddr,
    state: UpState,
    reason: Option<String>,
    call_id: String,
    from_tag: String,
    cseq: u32,
    challenge: Option<Challenge>,
    nc: u32,
    /// 401s answered in a row without success.
    auth_tries: u32,
    redirects: u32,
    next_register: Instant,
    retry: Duration,
    granted: u32,
    registered_ms: Option<i64>,
    next_keepalive: Option<Instant>,
    keepalive_misses: u32,
    last_keepalive_ok_ms: Option<i64>,
    push: Option<CatalogPush>,
    catalogs_sent: u64,
    items_sent: u64,
    /// DeviceControl passed to devices, by (target ID, SN), whose Response
    /// goes back to this superior.
    controls: HashMap<(String, u32), Instant>,
    /// The superior's catalog subscription (SUBSCRIBE), if any: changes go
    /// as NOTIFY in its dialog instead of MESSAGE.
    sub: Option<Subscription>,
    /// Shutdown: our Expires: 0 REGISTER waits for its final answer.
    unregistering: bool,
}

/// A catalog subscription from a superior (the SUBSCRIBE dialog, UAS side).
struct Subscription {
    /// The SUBSCRIBE, whose From/To/Call-ID the NOTIFYs mirror.
    head: Head,
    from: Dest,
    local: SocketAddr,
    cseq: u32,
    expires_at: Instant,
}

/// A superior as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PlatformView {
    pub id: String,
    pub name: String,
    pub address: SocketAddr,
    /// Where requests go now (differs from `address` after a 3xx).
    pub target: SocketAddr,
    pub local_id: String,
    pub state: UpState,
    /// Why it is not registered (the superior's answer, silence, ...).
    pub reason: Option<String>,
    pub registered_ms: Option<i64>,
    /// Expiry the superior granted.
    pub expires: Option<u32>,
    pub keepalive_misses: u32,
    pub last_keepalive_ok_ms: Option<i64>,
    /// Catalog answers completed, and items sent in them.
    pub catalogs_sent: u64,
    pub items_sent: u64,
}

impl Upstream {
    pub(super) fn new(cfg: CascadeConfig, sip_id: &str, now: Instant) -> Upstream {
        Upstream {
            local_id: cfg.local_id.clone().unwrap_or_else(|| sip_id.to_string()),
            domain: cfg.domain(),
            target: cfg.address,
            state: UpState::Unregistered,
            reason: None,
            call_id: gsip::token(20),
            from_tag: gsip::token(10),
            cseq: 0,
            challenge: None,
            nc: 0,
            auth_tries: 0,
            redirects: 0,
            // A moment after start, so the transport is up.
            next_register: now + Duration::from_millis(200),
            retry: Duration::from_secs(cfg.retry_secs as u64),
            granted: 0,
            registered_ms: None,
            next_keepalive: None,
            keepalive_misses: 0,
            last_keepalive_ok_ms: None,
            push: None,
            catalogs_sent: 0,
            items_sent: 0,
            controls: HashMap::new(),
            sub: None,
            unregistering: false,
            cfg,
        }
    }

    pub(super) fn name(&self) -> &str {
        self.cfg.name()
    }

    pub(super) fn cfg(&self) -> &CascadeConfig {
        &self.cfg
    }

    pub(super) fn local_id(&self) -> &str {
        &self.local_id
    }

    pub(super) fn is_registered(&self) -> bool {
        self.state == UpState::Registered
    }

    fn view(&self) -> PlatformView {
        PlatformView {
            id: self.cfg.id.clone(),
            name: self.name().to_string(),
            address: self.cfg.address,
            target: self.target,
            local_id: self.local_id.clone(),
            state: self.state,
            reason: self.reason.clone(),
            registered_ms: self.registered_ms,
            expires: (self.state == UpState::Registered).then_some(self.granted),
            keepalive_misses: self.keepalive_misses,
            last_keepalive_ok_ms: self.last_keepalive_ok_ms,
            catalogs_sent: self.catalogs_sent,
            items_sent: self.items_sent,
        }
    }

    /// Waits before the next attempt, doubling the wait each time.
    fn back_off(&mut self, now: Instant, why: String) {
        self.state = UpState::Backoff;
        self.unregistering = false;
        // After a failure, start again at the configured address (a 3xx
        // will point elsewhere again if it still should).
        self.target = self.cfg.address;
        self.redirects = 0;
        self.reason = Some(why);
        self.challenge = None;
        self.auth_tries = 0;
        self.next_register = now + self.retry;
        self.retry = (self.retry * 2).min(MAX_RETRY);
        self.next_keepalive = None;
        self.push = None;
        if self.cfg.new_call_id {
            self.call_id = gsip::token(20);
        }
    }
}

impl Core {
    /// Which superior sent this request (by the platform ID in `From`).
    pub(super) fn upstream_of(&self, h: &Head) -> Option<usize> {
        self.upstreams.iter().position(|u| u.cfg.id == h.from.user)
    }

    /// The UDP socket to reach `target` from, and our address on it: the
    /// one bound to the route's source address, else a wildcard one, else
    /// any of the family.
    fn up_dest(&self, target: SocketAddr) -> Option<(Dest, String)> {
        let family = |a: &SocketAddr| a.is_ipv4() == target.is_ipv4();
        let src = super::transport::local_ip_for(target);
        let udp = &self.out.udp;
        let sock = udp
            .iter()
            .position(|(_, a)| family(a) && Some(a.ip()) == src)
            .or_else(|| {
                udp.iter()
                    .position(|(_, a)| family(a) && a.ip().is_unspecified())
            })
            .or_else(|| udp.iter().position(|(_, a)| family(a)))?;
        let local = self.out.udp[sock].1;
        Some((
            Dest::Udp { sock, peer: target },
            self.local_sip(local, target),
        ))
    }

    /// Sends a request to superior `i` as a client transaction.
    #[allow(clippy::too_many_arguments)]
    fn up_send(
        &mut self,
        i: usize,
        method: &'static str,
        call_id: &str,
        cseq: u32,
        headers: &[(&str, &str)],
        content_type: Option<&str>,
        body: &[u8],
        req: UpReq,
    ) -> bool {
        let u = &self.upstreams[i];
        let Some((dest, local)) = self.up_dest(u.target) else {
            warn!(platform = u.name(), target = %u.target, "no UDP socket of the superior's address family");
            return false;
        };
        let local_domain: String = u.local_id.chars().take(10).collect();
        let from = format!("sip:{}@{local_domain}", u.local_id);
        let (uri, to) = if method == "REGISTER" {
            (format!("sip:{}@{}", u.cfg.id, u.target), from.clone())
        } else {
            (
                format!("sip:{}@{}", u.cfg.id, u.target),
                format!("sip:{}@{}", u.cfg.id, u.domain),
            )
        };
        let contact = format!("sip:{}@{local}", u.local_id);
        let branch = gsip::branch();
        let from_tag = if method == "REGISTER" {
            u.from_tag.clone()
        } else {
            gsip::token(10)
        };
        let msg = Outgoing {
            method,
            uri: &uri,
            transport: dest.transport(),
            local: &local,
            branch: &branch,
            from: &from,
            from_tag: &from_tag,
            to: &to,
            to_tag: None,
            call_id,
            cseq,
            contact: (method == "REGISTER").then_some(contact.as_str()),
            headers,
            content_type,
            body,
        }
        .build();
        self.start_request(
            dest,
            &branch,
            method,
            msg,
            Some(Purpose::Upstream { idx: i, req }),
        )
    }

    /// REGISTER (with `expires` 0: unregister), with credentials when we
    /// hold a challenge.
    fn up_register(&mut self, i: usize, expires: u32) {
        let u = &mut self.upstreams[i];
        u.cseq += 1;
        let (call_id, cseq) = (u.call_id.clone(), u.cseq);
        let auth = u.challenge.as_ref().map(|ch| {
            u.nc += 1;
            let user = u.cfg.username.clone().unwrap_or_else(|| u.local_id.clone());
            let uri = format!("sip:{}@{}", u.cfg.id, u.target);
            ch.answer(
                &user,
                u.cfg.password.as_deref().unwrap_or(""),
                "REGISTER",
                &uri,
                u.nc,
                &gsip::token(16),
            )
            .to_header()
        });
        // A refresh keeps the registration (and the keepalives) running.
        if expires > 0 && u.state != UpState::Registered {
            u.state = UpState::Registering;
        }
        let exp = expires.to_string();
        let mut headers: Vec<(&str, &str)> = vec![("Expires", &exp)];
        if let Some(a) = &auth {
            headers.push(("Authorization", a));
        }
        debug!(
            platform = u.cfg.name(),
            expires,
            auth = auth.is_some(),
            "REGISTER to the superior"
        );
        self.up_send(
            i,
            "REGISTER",
            &call_id,
            cseq,
            &headers,
            None,
            b"",
            UpReq::Register { expires },
        );
    }

    fn up_keepalive(&mut self, i: usize) {
        let sn = self.next_sn();
        let u = &self.upstreams[i];
        let body = manscdp::keepalive(sn, &u.local_id, self.charset);
        self.up_message(i, &body, UpReq::Keepalive);
    }

    /// A MANSCDP MESSAGE to superior `i` (a new Call-ID each).
    fn up_message(&mut self, i: usize, body: &[u8], req: UpReq) -> bool {
        let call_id = gsip::token(20);
        self.up_send(
            i,
            "MESSAGE",
            &call_id,
            1,
            &[],
            Some("Application/MANSCDP+xml"),
            body,
            req,
        )
    }

    /// Registration and keepalive timers of every superior (from the sweep).
    pub(super) fn cascade_timers(&mut self, now: Instant) {
        for i in 0..self.upstreams.len() {
            let u = &mut self.upstreams[i];
            let expires = u.cfg.expires_secs;
            match u.state {
                UpState::Unregistered | UpState::Backoff if now >= u.next_register => {
                    self.up_register(i, expires);
                }
                UpState::Registered if now >= u.next_register => self.up_register(i, expires),
                UpState::Registered if u.next_keepalive.is_some_and(|t| now >= t) => {
                    u.next_keepalive =
                        Some(now + Duration::from_secs(u.cfg.keepalive_interval_secs as u64));
                    self.up_keepalive(i);
                }
                _ => {}
            }
        }
    }

    /// A final answer (or Timer F, `status` None) to one of our requests.
    pub(super) fn on_upstream_answer(&mut self, i: usize, req: UpReq, h: Option<&Head>) {
        let status = h.and_then(|h| h.status);
        match req {
            UpReq::Register { expires } => self.on_register_answer(i, expires, h),
            UpReq::Keepalive => self.on_keepalive_answer(i, status),
            UpReq::CatalogPart { sn } => match status {
                Some(s) if s < 300 => self.push_catalog_part(i, sn),
                _ => {
                    let why = status.map_or("no answer".to_string(), |s| format!("answered {s}"));
                    let u = &mut self.upstreams[i];
                    if u.push.as_ref().is_some_and(|p| p.sn == sn) {
                        u.push = None;
                        self.metrics
                            .cascade_catalog
                            .with_label_values(&[u.cfg.name(), "aborted"])
                            .inc();
                        warn!(
                            platform = u.cfg.name(),
                            sn, why, "catalog answer to the superior aborted"
                        );
                    }
                }
            },
            UpReq::Response => {}
        }
    }

    fn on_register_answer(&mut self, i: usize, expires: u32, h: Option<&Head>) {
        let now = Instant::now();
        let name = self.upstreams[i].name().to_string();
        let count = |core: &Core, r: &str| {
            core.metrics
                .cascade_registrations
                .with_label_values(&[&name, r])
                .inc()
        };
        let Some(h) = h else {
            count(self, "timeout");
            self.up_lost(i, now, "no answer to REGISTER".into());
            return;
        };
        let status = h.status.unwrap_or(0);
        let u = &mut self.upstreams[i];
        match status {
            200..=299 if expires == 0 => {
                count(self, "unregistered");
                let u = &mut self.upstreams[i];
                u.state = UpState::Unregistered;
                u.unregistering = false;
                u.reason = Some("unregistered".into());
                self.metrics
                    .cascade_registered
                    .with_label_values(&[&name])
                    .set(0);
                info!(platform = %name, "unregistered from the superior");
            }
            200..=299 => {
                let granted = h
                    .expires
                    .or_else(|| {
                        h.contact
                            .as_ref()
                            .and_then(|c| c.param("expires")?.parse().ok())
                    })
                    .unwrap_or(expires)
                    .max(30);
                let was = u.state == UpState::Registered;
                u.state = UpState::Registered;
                u.reason = None;
                u.granted = granted;
                u.auth_tries = 0;
                u.redirects = 0;
                u.retry = Duration::from_secs(u.cfg.retry_secs as u64);
                u.next_register = now + Duration::from_secs(granted as u64 * 2 / 3);
                if !was {
                    u.registered_ms = Some(wall_ms());
                    u.keepalive_misses = 0;
                    // The first keepalive soon, so the superior sees us alive.
                    u.next_keepalive = Some(now + Duration::from_secs(1));
                    info!(platform = %name, target = %u.target, expires = granted, "registered with the superior");
                }
                count(self, "ok");
                self.metrics
                    .cascade_registered
                    .with_label_values(&[&name])
                    .set(1);
            }
            401 | 407 => {
                let ch = h
                    .www_authenticate
                    .as_deref()
                    .and_then(|w| Challenge::parse(w).ok());
                count(self, "challenged");
                let u = &mut self.upstreams[i];
                match ch {
                    // A fresh challenge to an answered one means the
                    // credentials were refused, unless the nonce was stale.
                    Some(ch) if u.auth_tries == 0 || ch.stale => {
                        u.auth_tries += 1;
                        u.nc = 0;
                        u.challenge = Some(ch);
                        self.up_register(i, expires);
                    }
                    Some(_) => {
                        count(self, "refused");
                        self.up_lost(
                            i,
                            now,
                            format!("superior refused our credentials ({status} {})", h.reason),
                        );
                    }
                    None => {
                        count(self, "refused");
                        self.up_lost(
                            i,
                            now,
                            format!("superior answered {status} without a usable challenge"),
                        );
                    }
                }
            }
            300..=399 => {
                let to = h
                    .contact
                    .as_ref()
                    .and_then(|c| contact_addr(c, u.target.port()));
                count(self, "redirected");
                let u = &mut self.upstreams[i];
                match to {
                    Some(t) if u.redirects < MAX_REDIRECTS => {
                        info!(platform = %name, from = %u.target, to = %t, "superior redirected the registration");
                        u.redirects += 1;
                        u.target = t;
                        u.challenge = None;
                        u.auth_tries = 0;
                        self.up_register(i, expires);
                    }
                    _ => self.up_lost(
                        i,
                        now,
                        format!("superior answered {status} {} (no usable Contact, or too many redirects)", h.reason),
                    ),
                }
            }
            _ => {
                count(self, "refused");
                self.up_lost(i, now, format!("superior answered {status} {}", h.reason));
            }
        }
    }

    /// The superior is not (or no longer) reachable or refused us: the
    /// registration starts again after the back-off.
    fn up_lost(&mut self, i: usize, now: Instant, why: String) {
        let u = &mut self.upstreams[i];
        warn!(platform = u.cfg.name(), reason = %why, retry_secs = u.retry.as_secs(), "superior platform lost");
        u.back_off(now, why);
        self.metrics
            .cascade_registered
            .with_label_values(&[self.upstreams[i].name()])
            .set(0);
        self.relay_platform_lost(i);
    }

    fn on_keepalive_answer(&mut self, i: usize, status: Option<u16>) {
        let u = &mut self.upstreams[i];
        let name = u.cfg.name().to_string();
        if status.is_some_and(|s| s < 300) {
            u.keepalive_misses = 0;
            u.last_keepalive_ok_ms = Some(wall_ms());
            self.metrics
                .cascade_keepalives
                .with_label_values(&[&name, "ok"])
                .inc();
            return;
        }
        self.metrics
            .cascade_keepalives
            .with_label_values(&[&name, "failed"])
            .inc();
        if u.state != UpState::Registered {
            return;
        }
        u.keepalive_misses += 1;
        if u.keepalive_misses >= u.cfg.keepalive_timeout_count {
            let why = format!(
                "{} keepalives unanswered or refused (last: {})",
                u.keepalive_misses,
                status.map_or("no answer".into(), |s| s.to_string())
            );
            // Register again at once, then back off if that fails too.
            u.retry = Duration::from_secs(u.cfg.retry_secs as u64);
            self.up_lost(i, Instant::now(), why);
            self.upstreams[i].next_register = Instant::now();
        }
    }

    /// A request from superior `i`.
    pub(super) fn on_upstream_request(&mut self, i: usize, m: &Inbound) {
        let name = self.upstreams[i].name().to_string();
        let kind = |core: &Core, k: &str| {
            core.metrics
                .cascade_requests
                .with_label_values(&[&name, k])
                .inc()
        };
        let method = m.head.method.clone().unwrap_or_default();
        match method.as_str() {
            "MESSAGE" => {}
            "INVITE" => return self.on_relay_invite(i, m),
            "BYE" | "CANCEL" => {
                if !self.on_relay_in_dialog(m) {
                    kind(self, "stray");
                    self.reply(m, 481, "Call/Transaction Does Not Exist", &[]);
                }
                return;
            }
            "OPTIONS" => return self.reply(m, 200, "OK", &[]),
            "SUBSCRIBE" => return self.on_upstream_subscribe(i, m),
            _ => {
                kind(self, "unsupported");
                return self.reply(m, 405, "Method Not Allowed", &[]);
            }
        }
        let msg = match manscdp::parse(&m.head.body) {
            Ok(x) => x,
            Err(e) => {
                kind(self, "malformed");
                return self.reply(m, 400, &format!("Bad Request ({})", e.reason()), &[]);
            }
        };
        if msg.kind == Kind::Control && msg.cmd_type.eq_ignore_ascii_case("DeviceControl") {
            return self.on_upstream_control(i, m, &msg);
        }
        if msg.kind != Kind::Query {
            kind(self, "unsupported");
            return self.reply(m, 501, "Not Implemented", &[]);
        }
        let local_id = self.upstreams[i].local_id.clone();
        let cmd = msg.cmd_type.to_ascii_lowercase();
        match cmd.as_str() {
            "catalog" => {
                kind(self, "catalog");
                self.reply(m, 200, "OK", &[]);
                self.start_catalog_push(i, msg.sn);
            }
            "deviceinfo" | "devicestatus" => {
                let body = if msg.device_id == local_id {
                    Some(self.gateway_answer(i, &cmd, msg.sn))
                } else {
                    self.device_answer(i, &cmd, msg.sn, &msg.device_id)
                };
                let Some(body) = body else {
                    kind(self, "unknown_device");
                    return self.reply(m, 404, "Not Found", &[]);
                };
                kind(
                    self,
                    if cmd == "deviceinfo" {
                        "device_info"
                    } else {
                        "device_status"
                    },
                );
                self.reply(m, 200, "OK", &[]);
                self.up_message(i, &body, UpReq::Response);
            }
            _ => {
                kind(self, "unsupported");
                self.reply(m, 501, "Not Implemented", &[]);
            }
        }
    }

    /// DeviceControl (PTZ, record, guard, ...) from a superior, passed to
    /// the device of the shared channel it names, body unchanged; the
    /// device's Response (if any) goes back to the superior.
    fn on_upstream_control(&mut self, i: usize, m: &Inbound, msg: &manscdp::Message) {
        let name = self.upstreams[i].name().to_string();
        let count = |core: &Core, k: &str| {
            core.metrics
                .cascade_requests
                .with_label_values(&[&name, k])
                .inc()
        };
        let Some((device, _)) = self.shared_channel(i, &msg.device_id) else {
            count(self, "control_unknown_channel");
            return self.reply(m, 404, "Not Found (no such shared channel)", &[]);
        };
        let teleboot = matches!(&msg.body, Body::Other(leaves) if leaves.iter().any(|(n, _)| n.eq_ignore_ascii_case("TeleBoot")));
        if teleboot && !self.upstreams[i].cfg.allow_teleboot {
            count(self, "control_refused");
            warn!(platform = %name, target = %msg.device_id, "TeleBoot from the superior refused (allow_teleboot is off)");
            return self.reply(m, 403, "Forbidden (TeleBoot not allowed)", &[]);
        }
        let body = m.head.body.clone();
        match self.send_manscdp(&device, |_| body, None) {
            Ok(()) => {
                count(self, "control");
                self.reply(m, 200, "OK", &[]);
                let now = Instant::now();
                let u = &mut self.upstreams[i];
                u.controls
                    .retain(|_, t| now.duration_since(*t) < Duration::from_secs(60));
                u.controls.insert((msg.device_id.clone(), msg.sn), now);
                info!(platform = %name, %device, target = %msg.device_id, sn = msg.sn, "DeviceControl passed to the device");
            }
            Err(e) => {
                count(self, "control_failed");
                self.reply(
                    m,
                    480,
                    &format!("Temporarily Unavailable ({})", e.message()),
                    &[],
                );
            }
        }
    }

    /// A device's DeviceControl Response: back to the superior that asked.
    pub(super) fn relay_control_response(&mut self, target: &str, sn: u32, body: &[u8]) {
        let key = (target.to_string(), sn);
        let Some(i) = self
            .upstreams
            .iter()
            .position(|u| u.controls.contains_key(&key))
        else {
            return;
        };
        self.upstreams[i].controls.remove(&key);
        self.up_message(i, body, UpReq::Response);
    }

    /// SUBSCRIBE (catalog) from a superior: 200 with the granted expiry,
    /// then catalog changes go as NOTIFY in this dialog until it expires
    /// (`Expires: 0` ends it). The first NOTIFY, right away, carries the
    /// gateway item (RFC 6665: a NOTIFY follows every accepted SUBSCRIBE).
    fn on_upstream_subscribe(&mut self, i: usize, m: &Inbound) {
        let name = self.upstreams[i].name().to_string();
        let is_catalog = m.head.body.is_empty()
            || manscdp::parse(&m.head.body)
                .is_ok_and(|q| q.cmd_type.eq_ignore_ascii_case("Catalog"));
        if !is_catalog {
            self.metrics
                .cascade_requests
                .with_label_values(&[&name, "subscribe_refused"])
                .inc();
            return self.reply(m, 489, "Bad Event", &[]);
        }
        let expires = m.head.expires.unwrap_or(3600).min(86_400);
        self.metrics
            .cascade_requests
            .with_label_values(&[&name, "subscribe"])
            .inc();
        let exp = expires.to_string();
        let contact = format!(
            "<sip:{}@{}>",
            self.upstreams[i].local_id,
            self.local_sip(m.local, m.from.peer())
        );
        self.reply(m, 200, "OK", &[("Expires", &exp), ("Contact", &contact)]);
        let u = &mut self.upstreams[i];
        if expires == 0 {
            u.sub = None;
            info!(platform = %name, "catalog subscription ended by the superior");
            return;
        }
        let renewed = u
            .sub
            .as_ref()
            .is_some_and(|s| s.head.call_id == m.head.call_id);
        let cseq = u.sub.as_ref().filter(|_| renewed).map_or(0, |s| s.cseq);
        u.sub = Some(Subscription {
            head: m.head.clone(),
            from: m.from,
            local: m.local,
            cseq,
            expires_at: Instant::now() + Duration::from_secs(expires as u64),
        });
        if !renewed {
            info!(platform = %name, expires, "catalog subscription from the superior");
            let first = self.shared_items(i).into_iter().take(1).collect::<Vec<_>>();
            self.up_notify(i, first);
        }
    }

    /// NOTIFY in superior `i`'s subscription dialog with catalog items.
    fn up_notify(&mut self, i: usize, items: Vec<CatalogItem>) -> bool {
        let sn = self.next_sn();
        let body = {
            let u = &self.upstreams[i];
            manscdp::catalog_notify(sn, &u.local_id, &items, self.charset)
        };
        let u = &mut self.upstreams[i];
        let Some(sub) = u.sub.as_mut() else {
            return false;
        };
        let now = Instant::now();
        if now >= sub.expires_at {
            u.sub = None;
            return false;
        }
        sub.cseq += 1;
        let left = sub.expires_at.duration_since(now).as_secs();
        let state = format!("active;expires={left}");
        let (head, dest, local, cseq) = (sub.head.clone(), sub.from, sub.local, sub.cseq);
        self.uas_request(
            &head,
            dest,
            local,
            "NOTIFY",
            cseq,
            &[("Event", "Catalog"), ("Subscription-State", &state)],
            Some(("Application/MANSCDP+xml", &body)),
            Purpose::Upstream {
                idx: i,
                req: UpReq::Response,
            },
        );
        true
    }

    /// A shared device went online/offline or appeared: each registered
    /// superior that shares it gets a Catalog Notify with the device's
    /// channels and the event (ON, OFF, ADD): NOTIFY in its subscription
    /// when it subscribed, else a MESSAGE when `catalog_notify` is on.
    pub(super) fn cascade_device_event(&mut self, device: &str, event: &str) {
        for i in 0..self.upstreams.len() {
            let u = &self.upstreams[i];
            let subscribed = u
                .sub
                .as_ref()
                .is_some_and(|s| Instant::now() < s.expires_at);
            if !(u.cfg.catalog_notify || subscribed) || u.state != UpState::Registered {
                continue;
            }
            let mut items = self.device_items(i, device);
            if items.is_empty() {
                continue;
            }
            for it in &mut items {
                it.extra.push(("Event".into(), event.into()));
            }
            let n = items.len() as u64;
            if subscribed {
                let name = self.upstreams[i].name().to_string();
                if self.up_notify(i, items) {
                    self.metrics
                        .cascade_catalog
                        .with_label_values(&[&name, "notified"])
                        .inc_by(n);
                }
                continue;
            }
            let sn = self.next_sn();
            let u = &self.upstreams[i];
            let body = manscdp::catalog_notify(sn, &u.local_id, &items, self.charset);
            let name = u.name().to_string();
            self.metrics
                .cascade_catalog
                .with_label_values(&[&name, "notified"])
                .inc_by(items.len() as u64);
            debug!(platform = %name, device, event, items = items.len(), "catalog change notified to the superior");
            self.up_message(i, &body, UpReq::Response);
        }
    }

    /// DeviceInfo/DeviceStatus of the gateway itself.
    fn gateway_answer(&self, i: usize, cmd: &str, sn: u32) -> Vec<u8> {
        let u = &self.upstreams[i];
        if cmd == "deviceinfo" {
            let info = DeviceInfo {
                result: Some("OK".into()),
                device_name: Some(format!("gateway {}", u.local_id)),
                manufacturer: Some("gateway".into()),
                model: Some("eBPF GB/T 28181 gateway".into()),
                firmware: Some(env!("CARGO_PKG_VERSION").into()),
                channel: Some(self.shared_items(i).len().saturating_sub(1) as u32),
                ..DeviceInfo::default()
            };
            manscdp::device_info_response(sn, &u.local_id, &info, self.charset)
        } else {
            let status = DeviceStatus {
                result: Some("OK".into()),
                online: Some("ONLINE".into()),
                status: Some("OK".into()),
                device_time: Some(super::core::gb_date()),
                ..DeviceStatus::default()
            };
            manscdp::device_status_response(sn, &u.local_id, &status, self.charset)
        }
    }

    /// DeviceInfo/DeviceStatus of a shared device, from the registry.
    fn device_answer(&self, i: usize, cmd: &str, sn: u32, id: &str) -> Option<Vec<u8>> {
        let share = &self.upstreams[i].cfg.share;
        let d = self.reg.devices.get(id)?;
        let shared = share.shares(id, id)
            || self
                .reg
                .channels
                .get(id)
                .is_some_and(|c| c.keys().any(|ch| share.shares(id, ch)));
        if !shared {
            return None;
        }
        Some(if cmd == "deviceinfo" {
            let mut info = d.info.clone().unwrap_or_default();
            info.result.get_or_insert_with(|| "OK".into());
            manscdp::device_info_response(sn, id, &info, self.charset)
        } else {
            let mut st = d.status.clone().unwrap_or_default();
            st.result = Some("OK".into());
            st.online = Some(if d.online { "ONLINE" } else { "OFFLINE" }.into());
            st.status.get_or_insert_with(|| "OK".into());
            manscdp::device_status_response(sn, id, &st, self.charset)
        })
    }

    /// What superior `i` sees: the gateway (type 200) as the parent item,
    /// then each shared channel (a device without a catalog is its own
    /// channel), `Status` OFF while its device is offline.
    pub(super) fn shared_items(&self, i: usize) -> Vec<CatalogItem> {
        let u = &self.upstreams[i];
        let civil: String = u.local_id.chars().take(6).collect();
        let mut items = vec![CatalogItem {
            device_id: u.local_id.clone(),
            name: Some(format!("gateway {}", u.local_id)),
            manufacturer: Some("gateway".into()),
            model: Some("eBPF GB/T 28181 gateway".into()),
            owner: Some("gateway".into()),
            civil_code: Some(civil.clone()),
            address: Some("gateway".into()),
            parental: Some("1".into()),
            register_way: Some("1".into()),
            secrecy: Some("0".into()),
            status: Some("ON".into()),
            ..CatalogItem::default()
        }];
        items.extend(group_items(&u.cfg.groups, &u.local_id));
        let mut ids: Vec<&String> = self.reg.devices.keys().collect();
        ids.sort();
        for id in ids {
            items.extend(self.device_items(i, id));
        }
        items
    }

    /// What superior `i` sees of one device: its shared channels (or the
    /// device as its own channel when it reported no catalog), below
    /// their group or the gateway, `Status` OFF while the device is
    /// offline.
    fn device_items(&self, i: usize, id: &str) -> Vec<CatalogItem> {
        let u = &self.upstreams[i];
        let Some(d) = self.reg.devices.get(id) else {
            return Vec::new();
        };
        let civil: String = u.local_id.chars().take(6).collect();
        let status = if d.online { "ON" } else { "OFF" };
        let parent_of = |channel: &str| group_parent(&u.cfg.groups, &u.local_id, id, channel);
        match self.reg.channels.get(id).filter(|c| !c.is_empty()) {
            Some(chs) => chs
                .iter()
                .filter(|(ch, _)| u.cfg.share.shares(id, ch))
                .map(|(ch, item)| {
                    let mut it = item.clone();
                    let (parent, bg) = parent_of(ch);
                    it.parent_id = Some(parent);
                    if bg.is_some() {
                        it.business_group_id = bg;
                    }
                    it.civil_code.get_or_insert_with(|| civil.clone());
                    if !d.online {
                        it.status = Some(status.into());
                    }
                    it.status.get_or_insert_with(|| status.into());
                    it
                })
                .collect(),
            None if u.cfg.share.shares(id, id) => {
                let info = d.info.as_ref();
                let (parent, bg) = parent_of(id);
                vec![CatalogItem {
                    device_id: id.to_string(),
                    name: Some(
                        info.and_then(|x| x.device_name.clone())
                            .unwrap_or_else(|| id.to_string()),
                    ),
                    manufacturer: info.and_then(|x| x.manufacturer.clone()),
                    model: info.and_then(|x| x.model.clone()),
                    civil_code: Some(civil),
                    parental: Some("0".into()),
                    parent_id: Some(parent),
                    business_group_id: bg,
                    register_way: Some("1".into()),
                    secrecy: Some("0".into()),
                    status: Some(status.into()),
                    ..CatalogItem::default()
                }]
            }
            None => Vec::new(),
        }
    }

    fn start_catalog_push(&mut self, i: usize, sn: u32) {
        let items = self.shared_items(i);
        let u = &mut self.upstreams[i];
        if let Some(p) = &u.push {
            debug!(
                platform = u.cfg.name(),
                old = p.sn,
                new = sn,
                "a new catalog query replaces the one being answered"
            );
        }
        info!(
            platform = u.cfg.name(),
            sn,
            items = items.len(),
            "answering the superior's catalog query"
        );
        u.push = Some(CatalogPush { sn, items, next: 0 });
        self.push_catalog_part(i, sn);
    }

    /// Sends the next part of the catalog answer `sn` (after the previous
    /// part's 200 OK), or closes it when all are sent.
    fn push_catalog_part(&mut self, i: usize, sn: u32) {
        let chunk = self.upstreams[i].cfg.catalog_chunk;
        let u = &mut self.upstreams[i];
        let Some(p) = u.push.as_mut().filter(|p| p.sn == sn) else {
            return;
        };
        if p.next >= p.items.len() {
            u.catalogs_sent += 1;
            self.metrics
                .cascade_catalog
                .with_label_values(&[u.cfg.name(), "complete"])
                .inc();
            info!(
                platform = u.cfg.name(),
                sn,
                items = p.items.len(),
                "catalog answer delivered"
            );
            u.push = None;
            return;
        }
        let end = (p.next + chunk).min(p.items.len());
        let body = manscdp::catalog_response(
            sn,
            &u.local_id,
            p.items.len() as u32,
            &p.items[p.next..end],
            self.charset,
        );
        let n = (end - p.next) as u64;
        p.next = end;
        u.items_sent += n;
        self.metrics
            .cascade_catalog
            .with_label_values(&[u.cfg.name(), "items"])
            .inc_by(n);
        self.up_message(i, &body, UpReq::CatalogPart { sn });
    }

    /// Unregisters from every superior (shutdown); true when some were
    /// registered (the shutdown then waits for their answers).
    pub(super) fn cascade_unregister(&mut self) -> bool {
        let mut any = false;
        for i in 0..self.upstreams.len() {
            if self.upstreams[i].state == UpState::Registered {
                info!(
                    platform = self.upstreams[i].name(),
                    "unregistering from the superior"
                );
                self.upstreams[i].unregistering = true;
                self.up_register(i, 0);
                any = true;
            }
        }
        any
    }

    /// The shutdown's Flush, once every unregistration was answered (a
    /// challenge is answered first) or its time is up.
    pub(super) fn flush_if_unregistered(&mut self, now: Instant) {
        let pending = self.upstreams.iter().any(|u| u.unregistering);
        if self
            .flush_waiter
            .as_ref()
            .is_some_and(|(_, deadline)| !pending || now >= *deadline)
        {
            if let Some((tx, _)) = self.flush_waiter.take() {
                self.finish_flush(tx);
            }
        }
    }

    pub(super) fn platforms(&self) -> Vec<PlatformView> {
        self.upstreams.iter().map(Upstream::view).collect()
    }
}

/// The first business group (type 215) of a superior's catalog.
fn business_group(groups: &[CatalogGroup]) -> Option<String> {
    groups
        .iter()
        .find(|g| g.kind() == "215")
        .map(|g| g.id.clone())
}

/// The items of business groups (215) and virtual organisations (216): a
/// virtual organisation belongs to its `parent`, or to the (first)
/// business group, and carries that group's ID as BusinessGroupID; a
/// business group belongs to the gateway.
fn group_items(groups: &[CatalogGroup], gateway: &str) -> Vec<CatalogItem> {
    let business = business_group(groups);
    groups
        .iter()
        .map(|g| {
            let parent = g
                .parent
                .clone()
                .unwrap_or_else(|| match (g.kind(), &business) {
                    ("216", Some(b)) => b.clone(),
                    _ => gateway.to_string(),
                });
            CatalogItem {
                device_id: g.id.clone(),
                name: Some(g.name.clone()),
                parental: Some("1".into()),
                parent_id: Some(parent),
                business_group_id: (g.kind() == "216").then(|| business.clone()).flatten(),
                ..CatalogItem::default()
            }
        })
        .collect()
}

/// Where a channel hangs (ParentID, BusinessGroupID): the last group that
/// lists the channel, else the last that lists its device, else the
/// gateway.
fn group_parent(
    groups: &[CatalogGroup],
    gateway: &str,
    device: &str,
    channel: &str,
) -> (String, Option<String>) {
    let g = groups
        .iter()
        .rev()
        .find(|g| g.channels.iter().any(|c| c == channel))
        .or_else(|| {
            groups
                .iter()
                .rev()
                .find(|g| g.devices.iter().any(|d| d == device))
        });
    match g {
        Some(g) if g.kind() == "216" => (g.id.clone(), business_group(groups)),
        Some(g) => (g.id.clone(), Some(g.id.clone())),
        None => (gateway.to_string(), None),
    }
}

/// host:port of a 3xx Contact (default port: the current one); names are
/// not resolved.
fn contact_addr(c: &NameAddr, default_port: u16) -> Option<SocketAddr> {
    if let Ok(a) = c.host.parse::<SocketAddr>() {
        return Some(a);
    }
    let ip: std::net::IpAddr = c.host.trim_matches(['[', ']']).parse().ok()?;
    Some(SocketAddr::new(ip, default_port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_contacts() {
        let c = NameAddr::parse("<sip:34020000002000000001@198.18.0.9:5070>").unwrap();
        assert_eq!(
            contact_addr(&c, 5060),
            Some("198.18.0.9:5070".parse().unwrap())
        );
        let c = NameAddr::parse("<sip:34020000002000000001@198.18.0.9>").unwrap();
        assert_eq!(
            contact_addr(&c, 5060),
            Some("198.18.0.9:5060".parse().unwrap())
        );
        let c = NameAddr::parse("<sip:x@[2001:db8::1]:5062>").unwrap();
        assert_eq!(
            contact_addr(&c, 5060),
            Some("[2001:db8::1]:5062".parse().unwrap())
        );
        let c = NameAddr::parse("<sip:x@example.org>").unwrap();
        assert_eq!(contact_addr(&c, 5060), None, "names are not resolved");
    }

    #[test]
    fn groups_hang_where_the_standard_puts_them() {
        let gw = "34020000002000000001";
        let g =
            |id: &str, parent: Option<&str>, devices: &[&str], channels: &[&str]| CatalogGroup {
                id: id.into(),
                name: format!("group {id}"),
                parent: parent.map(str::to_string),
                devices: devices.iter().map(|x| x.to_string()).collect(),
                channels: channels.iter().map(|x| x.to_string()).collect(),
            };
        let bg = "34020000002150000001";
        let vo = "34020000002160000001";
        let vo2 = "34020000002160000002";
        let groups = vec![
            g(bg, None, &["34020000001320000001"], &[]),
            g(vo, None, &[], &["34020000001310000005"]),
            g(vo2, Some(vo), &[], &["34020000001310000009"]),
        ];
        let items = group_items(&groups, gw);
        let by = |id: &str| items.iter().find(|i| i.device_id == id).unwrap();
        assert_eq!(by(bg).parent_id.as_deref(), Some(gw));
        assert_eq!(by(bg).business_group_id, None);
        assert_eq!(by(vo).parent_id.as_deref(), Some(bg));
        assert_eq!(by(vo).business_group_id.as_deref(), Some(bg));
        assert_eq!(by(vo2).parent_id.as_deref(), Some(vo));
        assert!(items.iter().all(|i| i.parental.as_deref() == Some("1")));
        // A listed channel hangs below its organisation, its device's
        // other channels below the business group, the rest below us.
        assert_eq!(
            group_parent(&groups, gw, "34020000001320000001", "34020000001310000005"),
            (vo.to_string(), Some(bg.to_string()))
        );
        assert_eq!(
            group_parent(&groups, gw, "34020000001320000001", "34020000001310000001"),
            (bg.to_string(), Some(bg.to_string()))
        );
        assert_eq!(
            group_parent(&groups, gw, "34020000001320000002", "34020000001310000009"),
            (vo2.to_string(), Some(bg.to_string()))
        );
        assert_eq!(
            group_parent(&groups, gw, "34020000001320000002", "34020000001310000002"),
            (gw.to_string(), None)
        );
        assert!(group_items(&[], gw).is_empty());
    }
}
