//! The signalling core: one task that owns the registry, the transactions
//! and the nonces, fed by the transport tasks (already-parsed messages) and
//! the REST API (commands with a reply channel). No locks on the hot path.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use gb28181::{
    digest::Nonces,
    manscdp::{CatalogItem, Charset},
    sip::{self as gsip, Head, Transport},
    transaction::{ClientEvent, ClientTransactions, Incoming, Matched, ServerTransactions},
};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::{
    alarms,
    cascade::{self, PlatformView, Upstream},
    control,
    dialog::{Dialogs, OpenStream},
    playback, records,
    registry::{Device, OfflineReason, Registry, SubKind, SyncState},
    relay, subscribe,
    transport::{Dest, Inbound, Outbound},
};
use crate::{
    config::{charset, SipConfig},
    metrics::{class, exporter::View, SipMetrics},
    session::{Error, Session, Sessions, State},
    store::{Op, Store},
    sys::clock::wall_ms,
};

/// What the API asks of the core.
pub enum Command {
    List(oneshot::Sender<Vec<DeviceView>>),
    Get(String, oneshot::Sender<Option<DeviceView>>),
    Channels(String, oneshot::Sender<Option<Vec<CatalogItem>>>),
    /// Ask the device for its catalog; replies with the SN.
    RefreshCatalog(String, oneshot::Sender<Result<u32, Error>>),
    /// DeviceInfo or DeviceStatus, answered when the device answers.
    Query(
        String,
        QueryKind,
        oneshot::Sender<Result<serde_json::Value, Error>>,
    ),
    /// PresetQuery of the device or one of its channels.
    Presets(
        String,
        Option<String>,
        oneshot::Sender<Result<serde_json::Value, Error>>,
    ),
    Delete(String, oneshot::Sender<bool>),
    /// Persist everything now (shutdown).
    Flush(oneshot::Sender<()>),
    /// Open a live stream (INVITE); answered when established or failed.
    OpenStream(OpenStream, oneshot::Sender<Result<Session, Error>>),
    /// Active streams (and recently closed ones with `true`).
    ListStreams(bool, oneshot::Sender<Vec<Session>>),
    GetStream(String, oneshot::Sender<Option<Session>>),
    /// BYE and forget.
    CloseStream(String, oneshot::Sender<Result<Session, Error>>),
    /// The superior platforms (cascade) and where each stands.
    Platforms(oneshot::Sender<Vec<PlatformView>>),
    /// RecordInfo: the device's own recordings in a time range, answered
    /// when assembled (see records.rs); a query that is not valid is the
    /// Err with why.
    Records(
        Result<records::RecordQuery, String>,
        oneshot::Sender<Result<serde_json::Value, Error>>,
    ),
    /// The alarms kept (newest first): of one device if given, at most N.
    Alarms(
        Option<String>,
        usize,
        oneshot::Sender<Vec<alarms::AlarmRecord>>,
    ),
    /// DeviceControl; answered when the device has (see control.rs).
    Control(
        control::ControlRequest,
        oneshot::Sender<Result<serde_json::Value, Error>>,
    ),
    /// Subscribe to `kind` at the device (true) or end it (false); kept
    /// in its record. Answered when the device has (subscribe.rs).
    Subscribe(
        String,
        SubKind,
        bool,
        oneshot::Sender<Result<serde_json::Value, Error>>,
    ),
    /// A MANSRTSP control of a playback; answered when the device has
    /// (see playback.rs).
    Playback(
        playback::PlaybackRequest,
        oneshot::Sender<Result<serde_json::Value, Error>>,
    ),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryKind {
    Info,
    Status,
    /// PresetQuery (of the device or one of its channels).
    Presets,
}

impl QueryKind {
    pub(super) fn cmd(self) -> &'static str {
        match self {
            QueryKind::Info => "DeviceInfo",
            QueryKind::Status => "DeviceStatus",
            QueryKind::Presets => "PresetQuery",
        }
    }
}

/// A device as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceView {
    #[serde(flatten)]
    pub device: Device,
    pub channels: usize,
    /// Seconds since the last REGISTER or keepalive.
    pub idle_secs: f64,
    /// Subscriptions to the device (Catalog, Alarm, MobilePosition).
    pub subscriptions: Vec<subscribe::SubscriptionView>,
}

/// What one of our outgoing requests was for.
pub(super) enum Purpose {
    Query {
        device: String,
        cmd: &'static str,
        sn: u32,
    },
    Invite {
        session: String,
    },
    Bye,
    /// A RecordInfo query (target channel or device, SN).
    Records {
        target: String,
        sn: u32,
    },
    /// A DeviceControl MESSAGE (target channel or device, SN).
    Control {
        target: String,
        sn: u32,
    },
    /// A SUBSCRIBE (first, refresh, or `end`: Expires 0).
    Subscribe {
        device: String,
        kind: SubKind,
        cseq: u32,
        end: bool,
    },
    /// A MANSRTSP INFO (stream, MANSRTSP CSeq).
    Playback {
        stream: String,
        cseq: u32,
    },
    /// A request to a superior platform (cascade).
    Upstream {
        idx: usize,
        req: cascade::UpReq,
    },
}

impl Core {
    /// What a request for `device` (and maybe `channel`) is addressed to:
    /// the channel if given, else the device; an unknown channel is
    /// NotFound.
    pub(super) fn request_target(
        &self,
        device: &str,
        channel: Option<&str>,
    ) -> Result<String, Error> {
        let target = channel.unwrap_or(device);
        if target != device
            && !self
                .reg
                .channels
                .get(device)
                .is_some_and(|c| c.contains_key(target))
        {
            return Err(Error::NotFound(format!(
                "device {device} has no channel {target}"
            )));
        }
        Ok(target.to_string())
    }
}

/// The keys of `map` whose deadline has passed at `now`.
pub(super) fn expired<K: Clone, V>(
    map: &HashMap<K, V>,
    now: Instant,
    deadline: impl Fn(&V) -> Instant,
) -> Vec<K> {
    map.iter()
        .filter(|(_, v)| now >= deadline(v))
        .map(|(k, _)| k.clone())
        .collect()
}

/// Purposes are keyed by branch and method (a CANCEL shares its INVITE's branch).
pub(super) fn pkey(branch: &str, method: &str) -> String {
    format!("{branch}|{method}")
}

pub(super) struct Assembly {
    pub(super) device: String,
    pub(super) sum_num: u32,
    pub(super) items: BTreeMap<String, CatalogItem>,
    pub(super) last: Instant,
    /// DeviceInfo follows a completed sync (after registration).
    pub(super) then_info: bool,
}

pub(super) struct Waiter {
    pub(super) kind: QueryKind,
    pub(super) reply: oneshot::Sender<Result<serde_json::Value, Error>>,
    pub(super) deadline: Instant,
}

/// Standard CmdTypes we accept but do not act on (answered 200).
pub(super) const KNOWN_CMDS: &[&str] = &[
    "Alarm",
    "MobilePosition",
    "MediaStatus",
    "RecordInfo",
    "ConfigDownload",
    "PresetQuery",
    "DeviceConfig",
    "DeviceControl",
    "Broadcast",
    "Catalog",
    "DeviceInfo",
    "DeviceStatus",
    "Keepalive",
    "HomePositionQuery",
    "CruiseTrackListQuery",
    "PTZPosition",
    "SDCardStatus",
    "UploadSnapShotFinished",
    "VideoUploadNotify",
];

pub struct Core {
    pub(super) cfg: Arc<SipConfig>,
    pub(super) domain: String,
    pub(super) charset: Charset,
    pub(super) passwords: HashMap<String, String>,
    pub(super) intervals: HashMap<String, u32>,
    pub(super) reg: Registry,
    pub(super) routes: HashMap<String, Dest>,
    pub(super) nonces: Nonces,
    pub(super) started: Instant,
    pub(super) server: ServerTransactions,
    pub(super) client: ClientTransactions<Dest>,
    pub(super) purposes: HashMap<String, Purpose>,
    pub(super) assemblies: HashMap<(String, u32), Assembly>,
    pub(super) waiters: HashMap<(String, u32), Waiter>,
    /// DeviceControls sent and not answered yet, by (target, SN).
    pub(super) controls: HashMap<(String, u32), control::ControlWaiter>,
    /// Subscriptions to devices, and their Call-IDs.
    pub(super) subs: HashMap<(String, SubKind), subscribe::Subscription>,
    pub(super) subs_by_call: HashMap<String, (String, SubKind)>,
    /// MANSRTSP controls sent and not answered yet, by stream.
    pub(super) playback_waiters: HashMap<String, playback::InfoWaiter>,
    /// RecordInfo answers being assembled, by (target, SN).
    pub(super) records: HashMap<(String, u32), records::RecordAssembly>,
    /// Alarms from devices, oldest first (alarms::KEEP at most).
    pub(super) alarms: std::collections::VecDeque<alarms::AlarmRecord>,
    pub(super) sn: u32,
    pub(super) out: Outbound,
    pub(super) store: Option<Store>,
    pub(super) dirty: HashSet<String>,
    pub(super) metrics: SipMetrics,
    pub(super) tag: String,
    /// The sessions (media, kernel flows) the dialogs carry.
    pub(super) sessions: Sessions,
    pub(super) dialogs: Dialogs,
    pub(super) last_media_check: Instant,
    /// Streams and devices published for `/metrics` (every second).
    pub(super) view: Arc<View>,
    /// Superior platforms (cascade).
    pub(super) upstreams: Vec<Upstream>,
    /// Live views relayed to superiors, by the superior's Call-ID.
    pub(super) relays: HashMap<String, relay::Relay>,
    /// Shutdown waiting for the superiors to answer our unregistrations.
    pub(super) flush_waiter: Option<(oneshot::Sender<()>, Instant)>,
    /// A device changed since the scrape view's device rows were built.
    pub(super) view_dirty: bool,
}

impl Core {
    pub fn new(
        cfg: Arc<SipConfig>,
        sessions: Sessions,
        out: Outbound,
        store: Option<(Store, crate::store::Loaded)>,
        metrics: SipMetrics,
        view: Arc<View>,
        cascade: Vec<crate::config::CascadeConfig>,
    ) -> Core {
        let domain = cfg.domain();
        let mut passwords = HashMap::new();
        let mut intervals = HashMap::new();
        for d in &cfg.devices {
            if let Some(p) = &d.password {
                passwords.insert(d.id.clone(), p.clone());
            }
            if let Some(i) = d.keepalive_interval_secs {
                intervals.insert(d.id.clone(), i);
            }
        }
        let mut reg = Registry::default();
        let (now, now_wall) = (Instant::now(), wall_ms());
        let mut saved_sessions = Vec::new();
        let store = store.map(|(s, loaded)| {
            saved_sessions = loaded.sessions;
            for (id, json) in loaded.devices {
                match serde_json::from_slice::<Device>(&json) {
                    Ok(mut d) => {
                        d.restore_clock(now, now_wall);
                        // A sync that was running when we stopped is gone.
                        if d.catalog.state == SyncState::Pending {
                            d.catalog.state = SyncState::Interrupted;
                        }
                        reg.devices.insert(id, d);
                    }
                    Err(e) => warn!(device = %id, error = %e, "unreadable device record skipped"),
                }
            }
            for (dev, ch, json) in loaded.channels {
                match serde_json::from_slice::<CatalogItem>(&json) {
                    Ok(item) => {
                        reg.channels.entry(dev).or_default().insert(ch, item);
                    }
                    Err(e) => warn!(device = %dev, channel = %ch, error = %e, "unreadable channel skipped"),
                }
            }
            info!(
                devices = reg.devices.len(),
                channels = reg.channels.values().map(|c| c.len()).sum::<usize>(),
                path = %s.path.display(),
                "registry loaded"
            );
            s
        });
        let charset = charset(&cfg.charset).unwrap_or(Charset::Gb2312);
        let mut core = Core {
            nonces: Nonces::new(cfg.nonce_ttl_secs),
            cfg,
            domain,
            charset,
            passwords,
            intervals,
            reg,
            routes: HashMap::new(),
            started: now,
            server: ServerTransactions::new(),
            client: ClientTransactions::new(),
            purposes: HashMap::new(),
            assemblies: HashMap::new(),
            waiters: HashMap::new(),
            controls: HashMap::new(),
            playback_waiters: HashMap::new(),
            subs: HashMap::new(),
            subs_by_call: HashMap::new(),
            records: HashMap::new(),
            alarms: std::collections::VecDeque::new(),
            sn: (now_wall as u32) % 100_000,
            out,
            store,
            dirty: HashSet::new(),
            metrics,
            tag: gsip::token(10),
            sessions,
            dialogs: Dialogs::default(),
            last_media_check: now,
            view,
            upstreams: Vec::new(),
            relays: HashMap::new(),
            flush_waiter: None,
            view_dirty: true,
        };
        core.upstreams = cascade
            .into_iter()
            .map(|c| Upstream::new(c, &core.cfg.id, now))
            .collect();
        for u in &core.upstreams {
            core.metrics
                .cascade_registered
                .with_label_values(&[u.name()])
                .set(0);
        }
        // UDP devices can be reached again at their last address.
        let ids: Vec<(String, Transport, SocketAddr, SocketAddr)> = core
            .reg
            .devices
            .values()
            .map(|d| (d.id.clone(), d.transport, d.addr, d.local))
            .collect();
        for (id, t, addr, local) in ids {
            if t == Transport::Udp {
                if let Some(sock) = core.out.udp_for(local) {
                    core.routes.insert(id, Dest::Udp { sock, peer: addr });
                }
            }
        }
        // Sessions of the previous daemon go on, in their dialogs.
        core.restore_sessions(saved_sessions);
        core.update_gauges();
        core.metrics.devices_online.set(core.reg.online() as i64);
        core.sync_sip_allow();
        core.publish_view();
        core
    }

    /// Streams and devices for `/metrics`; the device rows only when a
    /// device changed since the last time.
    pub(super) fn publish_view(&mut self) {
        use crate::metrics::exporter::DeviceRow;
        self.sessions.publish(&self.view);
        if !std::mem::take(&mut self.view_dirty) {
            return;
        }
        let devices = self
            .reg
            .devices
            .values()
            .map(|d| DeviceRow {
                id: d.id.clone(),
                online: d.online,
                registrations: d.registrations,
                keepalives: d.keepalives,
                last_keepalive_ms: d.last_keepalive_ms,
                time_offset_secs: d.time_offset_secs,
            })
            .collect();
        self.view.set_devices(devices);
    }

    /// The SIP flood guard's allow list: the addresses of the online
    /// devices (only the changes reach the kernel).
    pub(super) fn sync_sip_allow(&mut self) {
        if !self.sessions.sip_guard_on() {
            return;
        }
        let want: HashSet<std::net::IpAddr> = self
            .reg
            .devices
            .values()
            .filter(|d| d.online)
            .map(|d| d.addr.ip())
            .collect();
        self.sessions.sip_allow_sync(&want);
    }

    pub(super) fn secs(&self) -> u64 {
        self.started.elapsed().as_secs() + 1
    }

    /// The device count now; the online count with the next liveness pass
    /// (within a second: counting is a pass over the whole registry, too
    /// dear for every REGISTER with 100 000 devices).
    pub(super) fn update_gauges(&mut self) {
        self.metrics.devices.set(self.reg.devices.len() as i64);
        self.view_dirty = true;
    }

    /// Runs until both input channels close.
    pub async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        mut commands: mpsc::Receiver<Command>,
    ) {
        let mut sweep = tokio::time::interval(Duration::from_millis(250));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut persist =
            tokio::time::interval(Duration::from_secs(self.cfg.persist_interval_secs.max(1)));
        persist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut in_open, mut cmd_open) = (true, true);
        while in_open || cmd_open {
            let next_tx = self.client.next_deadline();
            tokio::select! {
                m = inbound.recv(), if in_open => match m {
                    Some(m) => self.on_message(m),
                    None => in_open = false,
                },
                c = commands.recv(), if cmd_open => match c {
                    Some(c) => self.on_command(c),
                    None => cmd_open = false,
                },
                _ = async {
                    match next_tx {
                        Some(t) => tokio::time::sleep_until(t.into()).await,
                        None => std::future::pending::<()>().await,
                    }
                } => self.on_client_timers(),
                _ = sweep.tick() => self.on_sweep(),
                _ = persist.tick() => self.persist_dirty(),
            }
        }
        self.persist_dirty();
    }

    // ---- sending -------------------------------------------------------

    pub(super) fn reply(&mut self, m: &Inbound, code: u16, reason: &str, headers: &[(&str, &str)]) {
        self.reply_with(&m.head, m.from, code, reason, headers, None);
    }

    /// Sends a request as a client transaction (retransmitted, timed
    /// out), remembering what it was for.
    pub(super) fn start_request(
        &mut self,
        dest: Dest,
        branch: &str,
        method: &str,
        msg: Vec<u8>,
        purpose: Option<Purpose>,
    ) -> bool {
        self.client.start(
            branch,
            method,
            msg.clone(),
            dest,
            dest.transport().reliable(),
            Instant::now(),
        );
        if let Some(p) = purpose {
            self.purposes.insert(pkey(branch, method), p);
        }
        self.out.send(dest, msg)
    }

    /// Answers a request (also one received earlier), through its server
    /// transaction; returns the bytes sent.
    pub(super) fn reply_with(
        &mut self,
        head: &Head,
        from: Dest,
        code: u16,
        reason: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, &[u8])>,
    ) -> Vec<u8> {
        let resp = gsip::response(head, from.peer(), code, reason, &self.tag, headers, body);
        let method = head.method.as_deref().unwrap_or("?");
        self.metrics
            .responses_sent
            .with_label_values(&[method, class(code)])
            .inc();
        if let Some(key) = server_key(head) {
            self.server.on_response(
                &key,
                &resp,
                code >= 200,
                from.transport().reliable(),
                Instant::now(),
            );
        }
        self.out.send(from, resp.clone());
        resp
    }

    // ---- persistence ---------------------------------------------------

    pub(super) fn save(&mut self, id: &str) {
        self.dirty.remove(id);
        self.view_dirty = true;
        if let (Some(s), Some(d)) = (&self.store, self.reg.devices.get(id)) {
            match serde_json::to_vec(d) {
                Ok(j) => s.send(Op::PutDevice(id.to_string(), j)),
                Err(e) => warn!(device = id, error = %e, "cannot serialise device"),
            }
        }
    }

    pub(super) fn persist_dirty(&mut self) {
        let ids: Vec<String> = self.dirty.drain().collect();
        for id in ids {
            self.save(&id);
        }
    }

    // ---- incoming ------------------------------------------------------

    pub(super) fn on_message(&mut self, m: Inbound) {
        if m.head.status.is_some() {
            return self.on_response(m);
        }
        let method = m.head.method.clone().unwrap_or_default();
        self.metrics.requests.with_label_values(&[&method]).inc();
        if method == "ACK" {
            // An ACK to a relay's 200 confirms it; ACKs to our error
            // answers end nothing we keep.
            self.on_relay_in_dialog(&m);
            return;
        }
        if let Some(key) = server_key(&m.head) {
            match self.server.on_request(&key, Instant::now()) {
                Incoming::New => {}
                Incoming::Absorbed => {
                    self.metrics
                        .retransmissions
                        .with_label_values(&["absorbed"])
                        .inc();
                    return;
                }
                Incoming::Resend(r) => {
                    self.metrics
                        .retransmissions
                        .with_label_values(&["absorbed"])
                        .inc();
                    self.out.send(m.from, r);
                    return;
                }
            }
        }
        if let Some(i) = self.upstream_of(&m.head) {
            return self.on_upstream_request(i, &m);
        }
        match method.as_str() {
            "REGISTER" => self.on_register(&m),
            "MESSAGE" => self.on_manscdp(&m),
            "NOTIFY" => self.on_notify(&m),
            "OPTIONS" => self.reply(
                &m,
                200,
                "OK",
                &[(
                    "Allow",
                    "REGISTER, MESSAGE, OPTIONS, ACK, BYE, CANCEL, INFO, NOTIFY",
                )],
            ),
            "BYE" if self.on_bye(&m) => {}
            "INVITE" | "SUBSCRIBE" | "PUBLISH" | "REFER" | "UPDATE" | "PRACK" => self.reply(
                &m,
                405,
                "Method Not Allowed",
                &[(
                    "Allow",
                    "REGISTER, MESSAGE, OPTIONS, ACK, BYE, CANCEL, INFO, NOTIFY",
                )],
            ),
            // In-dialog requests for dialogs we do not have.
            _ => self.reply(&m, 481, "Call/Transaction Does Not Exist", &[]),
        }
    }

    pub(super) fn on_response(&mut self, m: Inbound) {
        let h = &m.head;
        let status = h.status.unwrap_or(0);
        self.metrics
            .responses_received
            .with_label_values(&[&h.cseq_method, class(status)])
            .inc();
        let Some(branch) = h.via.branch.clone() else {
            self.metrics
                .dropped
                .with_label_values(&["stray_response"])
                .inc();
            return;
        };
        let key = pkey(&branch, &h.cseq_method);
        match self
            .client
            .on_response(&branch, &h.cseq_method, status, Instant::now())
        {
            Matched::Deliver { is_final } => {
                if is_final {
                    self.metrics
                        .transactions
                        .with_label_values(&[&h.cseq_method, "final"])
                        .inc();
                }
                let p = if is_final {
                    self.purposes.remove(&key)
                } else {
                    None
                };
                match (p, self.purposes.get(&key)) {
                    (Some(Purpose::Invite { session }), _) => {
                        let h = m.head.clone();
                        self.on_invite_response(&session, &h, &branch, true);
                    }
                    (Some(p @ Purpose::Query { .. }), _) if status >= 300 => {
                        self.query_failed(p, &format!("device answered {status} {}", h.reason));
                    }
                    (Some(Purpose::Records { target, sn }), _) if status >= 300 => {
                        let why = format!("device answered {status} {} to RecordInfo", h.reason);
                        self.records_failed(&target, sn, why, false);
                    }
                    (Some(Purpose::Control { target, sn }), _) => {
                        let reason = h.reason.clone();
                        self.control_answered(&target, sn, status, &reason);
                    }
                    (Some(Purpose::Playback { stream, cseq }), _) => {
                        let reason = h.reason.clone();
                        self.playback_answered(&stream, cseq, status, &reason);
                    }
                    (
                        Some(Purpose::Subscribe {
                            device,
                            kind,
                            cseq,
                            end,
                        }),
                        _,
                    ) => {
                        let h = m.head.clone();
                        self.subscribe_answered(&device, kind, cseq, end, Some(&h));
                    }
                    (Some(Purpose::Upstream { idx, req }), _) => {
                        let h = m.head.clone();
                        self.on_upstream_answer(idx, req, Some(&h));
                    }
                    (None, Some(Purpose::Invite { session })) => {
                        let (session, h) = (session.clone(), m.head.clone());
                        self.on_invite_response(&session, &h, &branch, false);
                    }
                    _ => {}
                }
            }
            Matched::ResendAck(ack, dest) => {
                self.out.send(dest, ack);
            }
            Matched::Stray => {
                let h = m.head.clone();
                let reacked =
                    h.cseq_method == "INVITE" && (200..300).contains(&status) && self.reack(&h);
                if !reacked {
                    self.metrics
                        .dropped
                        .with_label_values(&["stray_response"])
                        .inc();
                }
            }
        }
    }

    pub(super) fn on_client_timers(&mut self) {
        for ev in self.client.poll(Instant::now()) {
            match ev {
                ClientEvent::Retransmit(bytes, dest) => {
                    self.metrics
                        .retransmissions
                        .with_label_values(&["sent"])
                        .inc();
                    self.out.send(dest, bytes);
                }
                ClientEvent::Timeout { branch, method } => {
                    self.metrics
                        .transactions
                        .with_label_values(&[&method, "timeout"])
                        .inc();
                    match self.purposes.remove(&pkey(&branch, &method)) {
                        Some(p @ Purpose::Query { .. }) => {
                            self.query_failed(p, "no answer (Timer F)")
                        }
                        Some(Purpose::Invite { session }) => {
                            self.session_no_answer(&session);
                        }
                        Some(Purpose::Control { target, sn }) => {
                            self.control_unanswered(&target, sn);
                        }
                        Some(Purpose::Playback { stream, cseq }) => {
                            self.playback_answered(&stream, cseq, 0, "");
                        }
                        Some(Purpose::Subscribe {
                            device,
                            kind,
                            cseq,
                            end,
                        }) => {
                            self.subscribe_answered(&device, kind, cseq, end, None);
                        }
                        Some(Purpose::Records { target, sn }) => {
                            let why = "no answer to the RecordInfo MESSAGE (Timer F)".to_string();
                            self.records_failed(&target, sn, why, true);
                        }
                        Some(Purpose::Upstream { idx, req }) => {
                            self.on_upstream_answer(idx, req, None);
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    pub(super) fn on_sweep(&mut self) {
        let now = Instant::now();
        let now_wall = wall_ms();
        self.server.expire(now);
        self.session_timers(now);
        self.cascade_timers(now);
        self.relay_timers(now);
        self.control_timers(now);
        self.playback_timers(now);
        self.subscription_timers(now);
        self.record_timers(now);
        self.flush_if_unregistered(now);
        // Once a second: media, the allow list, the scrape view, and the
        // devices' liveness (one pass over the registry, which also counts
        // those online: 100 000 devices make this the daemon's idle cost).
        let mut offline = Vec::new();
        if now.duration_since(self.last_media_check) >= Duration::from_secs(1) {
            self.last_media_check = now;
            self.media_timers();
            // The allow list follows the devices only when one changed
            // (a pass over all of them otherwise, every second).
            if self.view_dirty {
                self.sync_sip_allow();
            }
            self.publish_view();
            for k in self.sessions.keys().purge_expired(now_wall) {
                info!(device = %k.device, channel = %k.channel, profile = k.profile.as_str(), version = k.version, "media key retired after rotation");
            }
            let (gone, online) = self.reg.sweep(now, now_wall);
            self.metrics.devices_online.set(online as i64);
            offline = gone;
        }
        for (id, reason) in offline {
            self.metrics
                .transitions
                .with_label_values(&[
                    "offline",
                    match reason {
                        OfflineReason::KeepaliveTimeout => "keepalive_timeout",
                        OfflineReason::RegistrationExpired => "registration_expired",
                        OfflineReason::Unregistered => "unregistered",
                        OfflineReason::Restarted => "restarted",
                    },
                ])
                .inc();
            self.cascade_device_event(&id, "OFF");
            if let Some(d) = self.reg.devices.get(&id) {
                warn!(
                    device = %id,
                    reason = reason.as_str(),
                    last_alive_secs = (now_wall - d.last_alive_ms) as f64 / 1000.0,
                    "device offline"
                );
            }
            self.close_device_sessions(&id, &format!("device offline ({})", reason.as_str()));
            self.drop_subscriptions(&id);
            if reason == OfflineReason::RegistrationExpired {
                self.routes.remove(&id);
            }
            self.save(&id);
        }
        // Catalogs idle for too long are kept as partial.
        let idle = Duration::from_secs(self.cfg.catalog_timeout_secs);
        let late: Vec<(String, u32)> = self
            .assemblies
            .iter()
            .filter(|(_, a)| now.duration_since(a.last) >= idle)
            .map(|(k, _)| k.clone())
            .collect();
        for key in late {
            if let Some(a) = self.assemblies.remove(&key) {
                if a.items.is_empty() && a.sum_num == 0 {
                    self.metrics.catalogs.with_label_values(&["failed"]).inc();
                    warn!(device = %a.device, sn = key.1, "no catalog answer");
                    if let Some(d) = self.reg.devices.get_mut(&a.device) {
                        d.catalog.state = SyncState::Failed;
                        d.catalog.at_ms = now_wall;
                    }
                    self.save(&a.device);
                } else {
                    self.finish_catalog(a, key.1, false);
                }
            }
        }
        for key in expired(&self.waiters, now, |w| w.deadline) {
            if let Some(w) = self.waiters.remove(&key) {
                let _ = w.reply.send(Err(Error::Timeout(format!(
                    "device {} did not answer {} (SN {})",
                    key.0,
                    w.kind.cmd(),
                    key.1
                ))));
            }
        }
        if now_wall % 60_000 < 250 {
            self.nonces.purge(self.secs());
        }
        self.update_gauges();
    }

    // ---- API -----------------------------------------------------------

    pub(super) fn view(&self, d: &Device) -> DeviceView {
        DeviceView {
            device: d.clone(),
            channels: self.reg.channels.get(&d.id).map_or(0, |c| c.len()),
            idle_secs: d.last_alive.elapsed().as_secs_f64(),
            subscriptions: self.sub_view(&d.id),
        }
    }

    pub(super) fn on_command(&mut self, c: Command) {
        match c {
            Command::List(tx) => {
                let mut v: Vec<DeviceView> =
                    self.reg.devices.values().map(|d| self.view(d)).collect();
                v.sort_by(|a, b| a.device.id.cmp(&b.device.id));
                let _ = tx.send(v);
            }
            Command::Get(id, tx) => {
                let _ = tx.send(self.reg.devices.get(&id).map(|d| self.view(d)));
            }
            Command::Channels(id, tx) => {
                let _ = tx.send(self.reg.devices.get(&id).map(|_| {
                    self.reg
                        .channels
                        .get(&id)
                        .map(|c| c.values().cloned().collect())
                        .unwrap_or_default()
                }));
            }
            Command::RefreshCatalog(id, tx) => {
                let _ = tx.send(self.start_catalog(&id, false));
            }
            Command::Presets(id, channel, tx) => {
                let sent = self
                    .request_target(&id, channel.as_deref())
                    .and_then(|t| self.send_query_to(&id, &t, "PresetQuery"));
                self.await_answer(id, QueryKind::Presets, sent, tx);
            }
            Command::Query(id, kind, tx) => {
                let sent = self.send_query(&id, kind.cmd());
                self.await_answer(id, kind, sent, tx);
            }
            Command::Delete(id, tx) => {
                self.drop_subscriptions(&id);
                let existed = self.reg.devices.remove(&id).is_some();
                self.reg.channels.remove(&id);
                self.routes.remove(&id);
                self.dirty.remove(&id);
                if existed {
                    if let Some(s) = &self.store {
                        s.send(Op::DeleteDevice(id.clone()));
                    }
                    info!(device = %id, "device deleted from the registry");
                }
                self.update_gauges();
                let _ = tx.send(existed);
            }
            Command::OpenStream(req, tx) => self.open_stream(req, tx),
            Command::ListStreams(all, tx) => {
                let _ = tx.send(self.sessions.list(all));
            }
            Command::GetStream(id, tx) => {
                let _ = tx.send(self.sessions.view(&id));
            }
            Command::CloseStream(id, tx) => {
                let r = self
                    .close(&id, "closed through the API", true, State::Closed)
                    .ok_or_else(|| Error::NotFound(format!("no active stream {id}")));
                let _ = tx.send(r);
            }
            Command::Platforms(tx) => {
                let _ = tx.send(self.platforms());
            }
            Command::Control(req, tx) => self.start_control(req, tx),
            Command::Playback(req, tx) => self.start_playback_control(req, tx),
            Command::Subscribe(id, kind, on, tx) => self.api_subscribe(&id, kind, on, tx),
            Command::Records(q, tx) => self.start_records(q, tx),
            Command::Alarms(device, limit, tx) => {
                let _ = tx.send(self.alarm_list(device.as_deref(), limit));
            }
            Command::Flush(tx) => {
                // Unregister upward first, and answer only when the
                // superiors have answered (or after a few seconds).
                if self.cascade_unregister() {
                    self.flush_waiter = Some((tx, Instant::now() + Duration::from_secs(3)));
                    return;
                }
                self.finish_flush(tx);
            }
        }
    }

    /// A query sent (its SN) waits for the device's answer until
    /// `query_timeout_secs`; one not sent is answered with why.
    fn await_answer(
        &mut self,
        id: String,
        kind: QueryKind,
        sent: Result<u32, Error>,
        reply: oneshot::Sender<Result<serde_json::Value, Error>>,
    ) {
        match sent {
            Ok(sn) => {
                let deadline = Instant::now() + Duration::from_secs(self.cfg.query_timeout_secs);
                self.waiters.insert(
                    (id, sn),
                    Waiter {
                        kind,
                        reply,
                        deadline,
                    },
                );
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Persists everything, then answers the shutdown's Flush.
    /// The sessions are saved for the next daemon and their receivers
    /// stopped (recordings flushed and closed), without BYE.
    pub(super) fn finish_flush(&mut self, tx: oneshot::Sender<()>) {
        self.persist_dirty();
        let receivers = self.suspend_sessions();
        let store = self.store.clone();
        tokio::spawn(async move {
            for r in receivers {
                let _ = tokio::time::timeout(Duration::from_secs(2), r).await;
            }
            if let Some(s) = store {
                // The writer replies on a std channel; don't block the
                // runtime waiting for it.
                let _ = tokio::task::spawn_blocking(move || s.sync()).await;
            }
            let _ = tx.send(());
        });
    }
}

fn server_key(h: &Head) -> Option<String> {
    let method = h.method.as_deref()?;
    Some(gb28181::transaction::server_key(
        h.via.branch.as_deref(),
        &h.via.sent_by,
        method,
        &h.call_id,
        h.cseq,
        h.from.tag.as_deref().unwrap_or(""),
    ))
}

pub(super) fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.contains(':') => h,
        _ => host,
    }
}

pub(super) fn fmt_addr(a: SocketAddr) -> String {
    a.to_string()
}

/// GB/T 28181 Date header: local time `YYYY-MM-DDTHH:MM:SS.mmm`.
pub fn gb_date() -> String {
    chrono::Local::now()
        .format("%Y-%m-%dT%H:%M:%S%.3f")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(strip_port("3402000000:5060"), "3402000000");
        assert_eq!(strip_port("[::1]:5060"), "::1");
        assert_eq!(strip_port("::1"), "::1");
        let d = gb_date();
        assert_eq!(d.len(), 23);
        assert_eq!(&d[10..11], "T");
    }
}
