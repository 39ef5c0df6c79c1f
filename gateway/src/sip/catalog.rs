//! MANSCDP (MESSAGE): keepalives, the queries the core sends (Catalog,
//! DeviceInfo, DeviceStatus) and their answers, catalogs assembled from
//! multi-message answers (kept as partial when they stop coming).

use std::{collections::BTreeMap, time::Instant};

use gb28181::{
    manscdp::{self, Body, Charset, Kind},
    sip::{self as gsip, Outgoing, Transport},
};
use tracing::{debug, info, warn};

use super::{
    core::{fmt_addr, Assembly, Core, Purpose, QueryKind, KNOWN_CMDS},
    registry::SyncState,
    transport::{Dest, Inbound},
};
use crate::{session::Error, store::Op, sys::clock::wall_ms};

impl Core {
    pub(super) fn next_sn(&mut self) -> u32 {
        self.sn = self.sn.wrapping_add(1).max(1);
        self.sn
    }

    /// Sends a MANSCDP query to a device; returns its SN.
    pub(super) fn send_query(&mut self, device: &str, cmd: &'static str) -> Result<u32, Error> {
        self.send_query_to(device, device, cmd)
    }

    /// The same about `target` (the device or one of its channels).
    pub(super) fn send_query_to(
        &mut self,
        device: &str,
        target: &str,
        cmd: &'static str,
    ) -> Result<u32, Error> {
        let sn = self.next_sn();
        self.send_manscdp(
            device,
            |cs| manscdp::query(cmd, sn, target, cs),
            Some(Purpose::Query {
                device: device.to_string(),
                cmd,
                sn,
            }),
        )?;
        debug!(device, cmd, sn, "query sent");
        Ok(sn)
    }

    /// Sends a MANSCDP MESSAGE to a device (body made in the device's
    /// charset) as a client transaction.
    pub(super) fn send_manscdp(
        &mut self,
        device: &str,
        body: impl FnOnce(Charset) -> Vec<u8>,
        purpose: Option<Purpose>,
    ) -> Result<(), Error> {
        let d = self
            .reg
            .devices
            .get(device)
            .ok_or_else(|| Error::NotFound(format!("no device {device}")))?;
        if !d.online {
            return Err(Error::Conflict(format!("device {device} is offline")));
        }
        let dest = *self.routes.get(device).ok_or_else(|| {
            Error::Conflict(format!(
                "no route to device {device} (TCP connection closed)"
            ))
        })?;
        if let Dest::Tcp { conn, .. } = dest {
            if !self.out.tcp_alive(conn) {
                return Err(Error::Conflict(format!(
                    "device {device}'s TCP connection is closed"
                )));
            }
        }
        let cs = d
            .charset
            .as_deref()
            .and_then(crate::config::charset)
            .unwrap_or(self.charset);
        let (d_local, d_addr) = (d.local, d.addr);
        let body = body(cs);
        let local = self.local_sip(d_local, d_addr);
        let branch = gsip::branch();
        let call_id = gsip::token(20);
        let from = format!("sip:{}@{}", self.cfg.id, self.domain);
        let to = format!("sip:{}@{}", device, self.domain);
        let uri = format!("sip:{}@{}", device, fmt_addr(d_addr));
        let req = Outgoing {
            method: "MESSAGE",
            uri: &uri,
            transport: dest.transport(),
            local: &local,
            branch: &branch,
            from: &from,
            from_tag: &gsip::token(10),
            to: &to,
            to_tag: None,
            call_id: &call_id,
            cseq: 1,
            contact: None,
            headers: &[],
            content_type: Some("Application/MANSCDP+xml"),
            body: &body,
        }
        .build();
        self.start_request(dest, &branch, "MESSAGE", req, purpose);
        Ok(())
    }

    pub(super) fn start_catalog(&mut self, device: &str, then_info: bool) -> Result<u32, Error> {
        let sn = self.send_query(device, "Catalog")?;
        self.assemblies.insert(
            (device.to_string(), sn),
            Assembly {
                device: device.to_string(),
                sum_num: 0,
                items: BTreeMap::new(),
                last: Instant::now(),
                then_info,
            },
        );
        if let Some(d) = self.reg.devices.get_mut(device) {
            d.catalog.sn = sn;
            d.catalog.state = SyncState::Pending;
        }
        Ok(sn)
    }

    pub(super) fn on_manscdp(&mut self, m: &Inbound) {
        let h = &m.head;
        let id = h.from.user.clone();
        let registered = self.reg.devices.get(&id).is_some_and(|d| d.registered);
        if !registered {
            self.metrics
                .dropped
                .with_label_values(&["unregistered"])
                .inc();
            debug!(device = %id, source = %m.from.peer(), "MESSAGE from an unregistered device");
            return self.reply(m, 403, "Forbidden (not registered)", &[]);
        }
        if h.content_type.is_some() && !h.is_manscdp() {
            return self.reply(
                m,
                415,
                "Unsupported Media Type",
                &[("Accept", "Application/MANSCDP+xml")],
            );
        }
        // Fuzzed, must not panic; if it did, it must not take the core down.
        let parsed = std::panic::catch_unwind(|| manscdp::parse(&h.body));
        let Ok(parsed) = parsed else {
            self.metrics
                .manscdp_errors
                .with_label_values(&["panic"])
                .inc();
            tracing::error!(device = %id, "MANSCDP parser panicked; message refused (please report)");
            return self.reply(m, 500, "Server Internal Error", &[]);
        };
        let msg = match parsed {
            Ok(x) => x,
            Err(e) => {
                self.metrics
                    .manscdp_errors
                    .with_label_values(&[e.reason()])
                    .inc();
                debug!(device = %id, error = %e, "bad MANSCDP body");
                return self.reply(m, 400, &format!("Bad Request ({})", e.reason()), &[]);
            }
        };
        let known = KNOWN_CMDS
            .iter()
            .any(|c| c.eq_ignore_ascii_case(&msg.cmd_type));
        if !known {
            self.metrics
                .manscdp_errors
                .with_label_values(&["unknown_cmd"])
                .inc();
            return self.reply(m, 400, "Bad Request (unknown CmdType)", &[]);
        }
        self.reply(m, 200, "OK", &[]);
        // Any request from the device is a sign of life; a NAT rebinding
        // moves its address.
        let now_wall = wall_ms();
        let cs = Charset::for_encoding(msg.encoding).label().to_string();
        if let Some(d) = self.reg.devices.get_mut(&id) {
            d.charset = Some(cs);
            if d.addr != m.from.peer() {
                info!(device = %id, old = %d.addr, new = %m.from.peer(), "device address changed");
                d.addr = m.from.peer();
                d.local = m.local;
                d.transport = m.from.transport();
                self.routes.insert(id.clone(), m.from);
            } else if !self.routes.contains_key(&id) || d.transport == Transport::Tcp {
                self.routes.insert(id.clone(), m.from);
            }
        }
        match (msg.kind, msg.body) {
            (Kind::Notify, Body::Keepalive { faulty, .. }) => {
                self.metrics.keepalives.inc();
                let now = Instant::now();
                let mut resumed = false;
                if let Some(d) = self.reg.devices.get_mut(&id) {
                    d.keepalives += 1;
                    d.last_alive = now;
                    d.last_alive_ms = now_wall;
                    d.last_keepalive_ms = Some(now_wall);
                    d.faulty = faulty;
                    if !d.online {
                        d.online = true;
                        d.online_since_ms = Some(now_wall);
                        d.offline_reason = None;
                        resumed = true;
                    }
                }
                if resumed {
                    self.metrics
                        .transitions
                        .with_label_values(&["online", "keepalive"])
                        .inc();
                    info!(device = %id, "device online (keepalive resumed)");
                    self.cascade_device_event(&id, "ON");
                    self.ensure_subscriptions(&id);
                    self.save(&id);
                    self.update_gauges();
                } else {
                    self.dirty.insert(id);
                    self.view_dirty = true;
                }
            }
            (Kind::Response, Body::Catalog(c)) => self.on_catalog_part(&id, msg.sn, c),
            (Kind::Notify, Body::Catalog(c)) => self.on_catalog_notify(&id, c),
            (Kind::Response, Body::DeviceInfo(info)) => {
                let v = serde_json::to_value(&info).unwrap_or_default();
                if let Some(d) = self.reg.devices.get_mut(&id) {
                    d.info = Some(info);
                    d.info_ms = Some(now_wall);
                }
                self.save(&id);
                self.resolve(&id, msg.sn, QueryKind::Info, v);
            }
            (Kind::Response, Body::Other(_))
                if msg.cmd_type.eq_ignore_ascii_case("PresetQuery") =>
            {
                match manscdp::preset_list(&m.head.body) {
                    Ok(p) => {
                        let v = serde_json::json!({
                            "device": id,
                            "target": msg.device_id,
                            "count": p.len(),
                            "presets": p,
                        });
                        self.resolve(&id, msg.sn, QueryKind::Presets, v);
                    }
                    Err(e) => debug!(device = %id, error = %e, "unreadable preset list"),
                }
            }
            (Kind::Response, Body::Other(leaves))
                if msg.cmd_type.eq_ignore_ascii_case("DeviceControl") =>
            {
                if !self.on_control_response(&msg.device_id, msg.sn, &leaves) {
                    self.relay_control_response(&msg.device_id, msg.sn, &m.head.body);
                }
            }
            (Kind::Notify, Body::MediaStatus { notify_type }) if notify_type.trim() == "121" => {
                // The end of a playback or download file: the device's
                // history sessions of that channel end (BYE).
                let ended: Vec<String> = self
                    .sessions
                    .list(false)
                    .into_iter()
                    .filter(|s| {
                        s.device == id
                            && (s.channel == msg.device_id || msg.device_id == id)
                            && s.id.starts_with('1')
                    })
                    .map(|s| s.id)
                    .collect();
                for sid in ended {
                    info!(device = %id, session = %sid, "end of file (MediaStatus 121)");
                    self.count_playback_end(&sid, "end_of_file");
                    self.close(
                        &sid,
                        "end of file (MediaStatus 121)",
                        true,
                        crate::session::State::Closed,
                    );
                }
            }
            (Kind::Notify, Body::MobilePosition(p)) => {
                self.metrics.mobile_positions.inc();
                self.note_device_time(&id, &p.time, now_wall);
                debug!(device = %id, longitude = p.longitude, latitude = p.latitude, "position");
                if let Some(d) = self.reg.devices.get_mut(&id) {
                    d.position = Some(p);
                    d.position_ms = Some(now_wall);
                }
                self.dirty.insert(id.clone());
                self.view_dirty = true;
            }
            (Kind::Notify, Body::Alarm(a)) => {
                self.on_alarm(&id, &msg.device_id, msg.sn, a);
            }
            (Kind::Response, Body::RecordInfo(r)) => {
                self.on_record_part(&msg.device_id, msg.sn, r);
            }
            (Kind::Response, Body::DeviceStatus(st)) => {
                if let Some(t) = st.device_time.clone() {
                    self.note_device_time(&id, &t, now_wall);
                }
                let v = serde_json::to_value(&st).unwrap_or_default();
                if let Some(d) = self.reg.devices.get_mut(&id) {
                    d.status = Some(st);
                    d.status_ms = Some(now_wall);
                }
                self.save(&id);
                self.resolve(&id, msg.sn, QueryKind::Status, v);
            }
            (kind, _) => {
                debug!(device = %id, cmd = %msg.cmd_type, kind = kind.as_str(), "MANSCDP message not acted on");
                self.metrics
                    .dropped
                    .with_label_values(&["ignored_cmd"])
                    .inc();
            }
        }
    }

    /// A time the device reported (its local `YYYY-MM-DDTHH:MM:SS`, as
    /// ours): its clock's offset from ours, whole seconds. Unparsable
    /// times are ignored (counted).
    pub(super) fn note_device_time(&mut self, id: &str, t: &str, now_wall: i64) {
        let t = t.trim();
        let parsed = [
            "%Y-%m-%dT%H:%M:%S%.f",
            "%Y-%m-%dT%H:%M:%S",
            "%Y-%m-%d %H:%M:%S",
        ]
        .iter()
        .find_map(|f| chrono::NaiveDateTime::parse_from_str(t, f).ok())
        .and_then(|n| n.and_local_timezone(chrono::Local).earliest());
        let Some(dt) = parsed else {
            self.metrics
                .manscdp_errors
                .with_label_values(&["bad_time"])
                .inc();
            debug!(device = %id, time = t, "device time not understood");
            return;
        };
        let offset = (dt.timestamp_millis() - now_wall) as f64 / 1000.0;
        let offset = offset.round() as i64;
        if let Some(d) = self.reg.devices.get_mut(id) {
            if d.time_offset_secs != Some(offset) && offset.abs() >= 10 {
                warn!(device = %id, offset_secs = offset, "device clock is off");
            }
            d.time_offset_secs = Some(offset);
            d.time_offset_ms = Some(now_wall);
        }
        self.dirty.insert(id.to_string());
        self.view_dirty = true;
    }

    /// A Catalog `<Notify>` from a device or lower platform: each item's
    /// `<Event>` ON/OFF/VLOST/DEFECT updates its status, ADD/UPDATE
    /// inserts or replaces it, DEL removes it.
    pub(super) fn on_catalog_notify(&mut self, id: &str, c: manscdp::Catalog) {
        let mut upserts = Vec::new();
        let mut removed = false;
        let chs = self.reg.channels.entry(id.to_string()).or_default();
        for mut item in c.items {
            let event = item
                .extra
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("Event"))
                .map(|(_, v)| v.to_ascii_uppercase())
                .unwrap_or_default();
            item.extra.retain(|(n, _)| !n.eq_ignore_ascii_case("Event"));
            match event.as_str() {
                "DEL" => removed |= chs.remove(&item.device_id).is_some(),
                "ON" | "OFF" | "VLOST" | "DEFECT" => {
                    let status = if event == "ON" { "ON" } else { "OFF" };
                    let e = chs.entry(item.device_id.clone()).or_insert(item);
                    e.status = Some(status.into());
                    upserts.push(e.clone());
                }
                _ => {
                    chs.insert(item.device_id.clone(), item.clone());
                    upserts.push(item);
                }
            }
        }
        self.metrics.catalogs.with_label_values(&["notified"]).inc();
        debug!(device = %id, changed = upserts.len(), removed, "catalog change notified");
        if let Some(s) = &self.store {
            if removed {
                let rows = chs
                    .iter()
                    .filter_map(|(k, v)| serde_json::to_vec(v).ok().map(|j| (k.clone(), j)))
                    .collect();
                s.send(Op::ReplaceChannels(id.to_string(), rows));
            } else {
                let rows = upserts
                    .iter()
                    .filter_map(|v| serde_json::to_vec(v).ok().map(|j| (v.device_id.clone(), j)))
                    .collect();
                s.send(Op::UpsertChannels(id.to_string(), rows));
            }
        }
    }

    pub(super) fn resolve(&mut self, id: &str, sn: u32, kind: QueryKind, v: serde_json::Value) {
        let key = (id.to_string(), sn);
        if self.waiters.get(&key).is_some_and(|w| w.kind == kind) {
            if let Some(w) = self.waiters.remove(&key) {
                let _ = w.reply.send(Ok(v));
            }
        }
    }

    pub(super) fn on_catalog_part(&mut self, id: &str, sn: u32, c: manscdp::Catalog) {
        let key = (id.to_string(), sn);
        let a = self
            .assemblies
            .entry(key.clone())
            .or_insert_with(|| Assembly {
                // Unsolicited (or after a timeout): collect it all the same.
                device: id.to_string(),
                sum_num: 0,
                items: BTreeMap::new(),
                last: Instant::now(),
                then_info: false,
            });
        a.sum_num = c.sum_num;
        a.last = Instant::now();
        for item in c.items {
            a.items.insert(item.device_id.clone(), item);
        }
        let (sum, got) = (a.sum_num, a.items.len() as u32);
        if let Some(d) = self.reg.devices.get_mut(id) {
            d.catalog.sn = sn;
            d.catalog.sum_num = sum;
            d.catalog.received = got;
            d.catalog.state = SyncState::Pending;
        }
        if got >= sum {
            if let Some(a) = self.assemblies.remove(&key) {
                self.finish_catalog(a, sn, true);
            }
        }
    }

    pub(super) fn finish_catalog(&mut self, a: Assembly, sn: u32, complete: bool) {
        let id = a.device.clone();
        let got = a.items.len();
        let rows: Vec<(String, Vec<u8>)> = a
            .items
            .iter()
            .filter_map(|(k, v)| serde_json::to_vec(v).ok().map(|j| (k.clone(), j)))
            .collect();
        if complete {
            self.reg.channels.insert(id.clone(), a.items);
            if let Some(s) = &self.store {
                s.send(Op::ReplaceChannels(id.clone(), rows));
            }
            self.metrics.catalogs.with_label_values(&["complete"]).inc();
            info!(device = %id, sn, channels = got, "catalog synchronised");
        } else {
            // Keep what came; do not drop channels we did not hear about.
            let ch = self.reg.channels.entry(id.clone()).or_default();
            ch.extend(a.items);
            if let Some(s) = &self.store {
                s.send(Op::UpsertChannels(id.clone(), rows));
            }
            self.metrics.catalogs.with_label_values(&["partial"]).inc();
            warn!(device = %id, sn, received = got, expected = a.sum_num, "catalog incomplete (timed out)");
        }
        if let Some(d) = self.reg.devices.get_mut(&id) {
            d.catalog.state = if complete {
                SyncState::Complete
            } else {
                SyncState::Partial
            };
            d.catalog.received = got as u32;
            d.catalog.sum_num = a.sum_num;
            d.catalog.at_ms = wall_ms();
        }
        self.save(&id);
        if a.then_info {
            if let Err(e) = self.send_query(&id, "DeviceInfo") {
                debug!(device = %id, error = %e, "DeviceInfo not asked");
            }
        }
    }

    pub(super) fn query_failed(&mut self, p: Purpose, why: &str) {
        let Purpose::Query { device, cmd, sn } = p else {
            return;
        };
        warn!(device = %device, cmd, sn, why, "query failed");
        let key = (device.clone(), sn);
        if let Some(a) = self.assemblies.remove(&key) {
            self.metrics.catalogs.with_label_values(&["failed"]).inc();
            if let Some(d) = self.reg.devices.get_mut(&a.device) {
                d.catalog.state = SyncState::Failed;
                d.catalog.at_ms = wall_ms();
            }
            self.save(&device);
        }
        if let Some(w) = self.waiters.remove(&key) {
            let _ = w
                .reply
                .send(Err(Error::Upstream(format!("{cmd} query failed: {why}"))));
        }
    }
}
