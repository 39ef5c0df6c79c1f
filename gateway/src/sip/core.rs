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
    digest::{Challenge, Credentials, Nonces, Verdict},
    manscdp::{self, Body, CatalogItem, Charset, Kind},
    sip::{self as gsip, Head, Outgoing, Transport},
    transaction::{ClientEvent, ClientTransactions, Incoming, Matched, ServerTransactions},
};
use serde::Serialize;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

mod session;

pub use session::{Session, StreamRequest};

use super::transport::{local_ip_for, Dest, Inbound, Outbound};
use crate::{
    config::{MediaConfig, SipConfig},
    metrics::{class, SipMetrics},
    registry::{wall_ms, CatalogSync, Device, OfflineReason, Registry},
    store::{Op, Store},
};

/// The charset named by a config label.
pub fn charset(label: &str) -> Option<Charset> {
    match label.to_ascii_uppercase().as_str() {
        "GB2312" | "GBK" => Some(Charset::Gb2312),
        "GB18030" => Some(Charset::Gb18030),
        "UTF-8" | "UTF8" => Some(Charset::Utf8),
        _ => None,
    }
}

/// What the API asks of the core.
pub enum Command {
    List(oneshot::Sender<Vec<DeviceView>>),
    Get(String, oneshot::Sender<Option<DeviceView>>),
    Channels(String, oneshot::Sender<Option<Vec<CatalogItem>>>),
    /// Ask the device for its catalog; replies with the SN.
    RefreshCatalog(String, oneshot::Sender<Result<u32, ApiError>>),
    /// DeviceInfo or DeviceStatus, answered when the device answers.
    Query(
        String,
        QueryKind,
        oneshot::Sender<Result<serde_json::Value, ApiError>>,
    ),
    Delete(String, oneshot::Sender<bool>),
    /// Persist everything now (shutdown).
    Flush(oneshot::Sender<()>),
    /// Open a live stream (INVITE); answered when established or failed.
    OpenStream(StreamRequest, oneshot::Sender<Result<Session, ApiError>>),
    /// Active streams (and recently closed ones with `true`).
    ListStreams(bool, oneshot::Sender<Vec<Session>>),
    GetStream(String, oneshot::Sender<Option<Session>>),
    /// BYE and forget.
    CloseStream(String, oneshot::Sender<Result<Session, ApiError>>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryKind {
    Info,
    Status,
}

impl QueryKind {
    fn cmd(self) -> &'static str {
        match self {
            QueryKind::Info => "DeviceInfo",
            QueryKind::Status => "DeviceStatus",
        }
    }
}

/// An API error: HTTP status and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError(pub u16, pub String);

/// A device as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceView {
    #[serde(flatten)]
    pub device: Device,
    pub channels: usize,
    /// Seconds since the last REGISTER or keepalive.
    pub idle_secs: f64,
}

/// What one of our outgoing requests was for.
enum Purpose {
    Query {
        device: String,
        cmd: &'static str,
        sn: u32,
    },
    Invite {
        session: String,
    },
    Bye,
}

/// Purposes are keyed by branch and method (a CANCEL shares its INVITE's branch).
fn pkey(branch: &str, method: &str) -> String {
    format!("{branch}|{method}")
}

struct Assembly {
    device: String,
    sum_num: u32,
    items: BTreeMap<String, CatalogItem>,
    last: Instant,
    /// DeviceInfo follows a completed sync (after registration).
    then_info: bool,
}

struct Waiter {
    kind: QueryKind,
    reply: oneshot::Sender<Result<serde_json::Value, ApiError>>,
    deadline: Instant,
}

/// Standard CmdTypes we accept but do not act on (answered 200).
const KNOWN_CMDS: &[&str] = &[
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
    cfg: Arc<SipConfig>,
    domain: String,
    charset: Charset,
    passwords: HashMap<String, String>,
    intervals: HashMap<String, u32>,
    reg: Registry,
    routes: HashMap<String, Dest>,
    nonces: Nonces,
    started: Instant,
    server: ServerTransactions,
    client: ClientTransactions<Dest>,
    purposes: HashMap<String, Purpose>,
    assemblies: HashMap<(String, u32), Assembly>,
    waiters: HashMap<(String, u32), Waiter>,
    sn: u32,
    out: Outbound,
    store: Option<Store>,
    dirty: HashSet<String>,
    metrics: SipMetrics,
    tag: String,
    media: MediaConfig,
    media_ports: (u16, u16),
    sessions: session::Sessions,
    /// The attached data plane: session flows go into its table.
    dataplane: Option<(crate::dataplane::attach::Target, crate::dataplane::Maps)>,
    last_media_check: Instant,
    /// Media keys (SM4 profiles) the receivers decrypt with.
    keys: Arc<crate::keys::KeyStore>,
    /// Streams and devices published for `/metrics` (every second).
    view: Arc<crate::exporter::View>,
}

impl Core {
    pub fn new(
        cfg: Arc<SipConfig>,
        media: MediaConfig,
        out: Outbound,
        store: Option<(Store, crate::store::Loaded)>,
        metrics: SipMetrics,
    ) -> Core {
        let media_ports = media.port_range().unwrap_or((30000, 30999));
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
        let store = store.map(|(s, loaded)| {
            for (id, json) in loaded.devices {
                match serde_json::from_slice::<Device>(&json) {
                    Ok(mut d) => {
                        d.restore_clock(now, now_wall);
                        // A sync that was running when we stopped is gone.
                        if d.catalog.state == "pending" {
                            d.catalog.state = "interrupted".into();
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
            sn: (now_wall as u32) % 100_000,
            out,
            store,
            dirty: HashSet::new(),
            metrics,
            tag: gsip::token(10),
            media,
            media_ports,
            sessions: session::Sessions::default(),
            dataplane: None,
            last_media_check: now,
            keys: crate::keys::KeyStore::new(None),
            view: Arc::new(crate::exporter::View::default()),
        };
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
        core.update_gauges();
        core
    }

    /// The daemon's key store (default: an empty one of its own).
    pub fn set_keys(&mut self, keys: Arc<crate::keys::KeyStore>) {
        self.keys = keys;
    }

    /// Where the metrics view is published.
    pub fn set_view(&mut self, view: Arc<crate::exporter::View>) {
        self.view = view;
        self.publish_view();
    }

    /// Streams and devices for `/metrics`.
    fn publish_view(&self) {
        use crate::exporter::{DeviceRow, StreamEntry};
        let streams = self
            .sessions
            .active
            .values()
            .filter_map(|s| {
                s.stats.as_ref().map(|st| StreamEntry {
                    id: s.id.clone(),
                    device: s.device.clone(),
                    channel: s.channel.clone(),
                    transport: s.transport.as_str(),
                    stats: st.clone(),
                    opened_ms: s.established_ms.unwrap_or(s.created_ms),
                })
            })
            .collect();
        self.view.set_streams(streams);
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
            })
            .collect();
        self.view.set_devices(devices);
    }

    /// Session flows go into this attachment's XDP flow table.
    pub fn set_dataplane(&mut self, t: crate::dataplane::attach::Target) -> anyhow::Result<()> {
        let maps = t.open()?;
        self.dataplane = Some((t, maps));
        Ok(())
    }

    fn secs(&self) -> u64 {
        self.started.elapsed().as_secs() + 1
    }

    fn update_gauges(&self) {
        self.metrics.devices.set(self.reg.devices.len() as i64);
        self.metrics.devices_online.set(self.reg.online() as i64);
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

    fn reply(&mut self, m: &Inbound, code: u16, reason: &str, headers: &[(&str, &str)]) {
        let resp = gsip::response(
            &m.head,
            m.from.peer(),
            code,
            reason,
            &self.tag,
            headers,
            None,
        );
        let method = m.head.method.as_deref().unwrap_or("?");
        self.metrics
            .responses_sent
            .with_label_values(&[method, class(code)])
            .inc();
        if let Some(key) = server_key(&m.head) {
            self.server.on_response(
                &key,
                &resp,
                code >= 200,
                m.from.transport().reliable(),
                Instant::now(),
            );
        }
        self.out.send(m.from, resp);
    }

    fn next_sn(&mut self) -> u32 {
        self.sn = self.sn.wrapping_add(1).max(1);
        self.sn
    }

    /// Sends a MANSCDP query to a device; returns its SN.
    fn send_query(&mut self, device: &str, cmd: &'static str) -> Result<u32, ApiError> {
        let d = self
            .reg
            .devices
            .get(device)
            .ok_or_else(|| ApiError(404, format!("no device {device}")))?;
        if !d.online {
            return Err(ApiError(409, format!("device {device} is offline")));
        }
        let dest = *self.routes.get(device).ok_or_else(|| {
            ApiError(
                409,
                format!("no route to device {device} (TCP connection closed)"),
            )
        })?;
        if let Dest::Tcp { conn, .. } = dest {
            if !self.out.tcp_alive(conn) {
                return Err(ApiError(
                    409,
                    format!("device {device}'s TCP connection is closed"),
                ));
            }
        }
        let cs = d
            .charset
            .as_deref()
            .and_then(charset)
            .unwrap_or(self.charset);
        let (d_local, d_addr) = (d.local, d.addr);
        let sn = self.next_sn();
        let body = manscdp::query(cmd, sn, device, cs);
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
        self.client.start(
            &branch,
            "MESSAGE",
            req.clone(),
            dest,
            dest.transport().reliable(),
            Instant::now(),
        );
        self.purposes.insert(
            pkey(&branch, "MESSAGE"),
            Purpose::Query {
                device: device.to_string(),
                cmd,
                sn,
            },
        );
        self.out.send(dest, req);
        debug!(device, cmd, sn, "query sent");
        Ok(sn)
    }

    fn start_catalog(&mut self, device: &str, then_info: bool) -> Result<u32, ApiError> {
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
            d.catalog.state = "pending".into();
        }
        Ok(sn)
    }

    // ---- persistence ---------------------------------------------------

    fn save(&mut self, id: &str) {
        self.dirty.remove(id);
        if let (Some(s), Some(d)) = (&self.store, self.reg.devices.get(id)) {
            match serde_json::to_vec(d) {
                Ok(j) => s.send(Op::PutDevice(id.to_string(), j)),
                Err(e) => warn!(device = id, error = %e, "cannot serialise device"),
            }
        }
    }

    fn persist_dirty(&mut self) {
        let ids: Vec<String> = self.dirty.drain().collect();
        for id in ids {
            self.save(&id);
        }
    }

    // ---- incoming ------------------------------------------------------

    fn on_message(&mut self, m: Inbound) {
        if m.head.status.is_some() {
            return self.on_response(m);
        }
        let method = m.head.method.clone().unwrap_or_default();
        self.metrics.requests.with_label_values(&[&method]).inc();
        if method == "ACK" {
            return; // ACKs to our error answers end nothing we keep
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
        match method.as_str() {
            "REGISTER" => self.on_register(&m),
            "MESSAGE" => self.on_manscdp(&m),
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

    /// Our domain, our ID, `<domain>.spvmn.cn`, or an IP literal (devices
    /// configured with the platform's address).
    fn our_host(&self, uri: &str) -> bool {
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

    fn password_of(&self, id: &str) -> Option<&str> {
        self.passwords
            .get(id)
            .map(String::as_str)
            .or(self.cfg.password.as_deref())
    }

    fn challenge(&mut self, m: &Inbound, stale: bool) {
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

    fn on_register(&mut self, m: &Inbound) {
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
        let never_synced = d.catalog.state.is_empty() || d.catalog.state == "interrupted";
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
            if let Err(ApiError(_, e)) = self.start_catalog(&id, self.cfg.query_info) {
                warn!(device = %id, error = %e, "cannot ask for the catalog");
            }
        }
    }

    fn on_manscdp(&mut self, m: &Inbound) {
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
                    self.save(&id);
                    self.update_gauges();
                } else {
                    self.dirty.insert(id);
                }
            }
            (Kind::Response, Body::Catalog(c)) => self.on_catalog_part(&id, msg.sn, c),
            (Kind::Response, Body::DeviceInfo(info)) => {
                let v = serde_json::to_value(&info).unwrap_or_default();
                if let Some(d) = self.reg.devices.get_mut(&id) {
                    d.info = Some(info);
                    d.info_ms = Some(now_wall);
                }
                self.save(&id);
                self.resolve(&id, msg.sn, QueryKind::Info, v);
            }
            (Kind::Response, Body::DeviceStatus(st)) => {
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

    fn resolve(&mut self, id: &str, sn: u32, kind: QueryKind, v: serde_json::Value) {
        let key = (id.to_string(), sn);
        if self.waiters.get(&key).is_some_and(|w| w.kind == kind) {
            if let Some(w) = self.waiters.remove(&key) {
                let _ = w.reply.send(Ok(v));
            }
        }
    }

    fn on_catalog_part(&mut self, id: &str, sn: u32, c: manscdp::Catalog) {
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
            d.catalog.state = "pending".into();
        }
        if got >= sum {
            if let Some(a) = self.assemblies.remove(&key) {
                self.finish_catalog(a, sn, true);
            }
        }
    }

    fn finish_catalog(&mut self, a: Assembly, sn: u32, complete: bool) {
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
            d.catalog.state = if complete { "complete" } else { "partial" }.into();
            d.catalog.received = got as u32;
            d.catalog.sum_num = a.sum_num;
            d.catalog.at_ms = wall_ms();
        }
        self.save(&id);
        if a.then_info {
            if let Err(ApiError(_, e)) = self.send_query(&id, "DeviceInfo") {
                debug!(device = %id, error = %e, "DeviceInfo not asked");
            }
        }
    }

    fn on_response(&mut self, m: Inbound) {
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

    fn query_failed(&mut self, p: Purpose, why: &str) {
        let Purpose::Query { device, cmd, sn } = p else {
            return;
        };
        warn!(device = %device, cmd, sn, why, "query failed");
        let key = (device.clone(), sn);
        if let Some(a) = self.assemblies.remove(&key) {
            self.metrics.catalogs.with_label_values(&["failed"]).inc();
            if let Some(d) = self.reg.devices.get_mut(&a.device) {
                d.catalog.state = "failed".into();
                d.catalog.at_ms = wall_ms();
            }
            self.save(&device);
        }
        if let Some(w) = self.waiters.remove(&key) {
            let _ = w
                .reply
                .send(Err(ApiError(502, format!("{cmd} query failed: {why}"))));
        }
    }

    fn on_client_timers(&mut self) {
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
                        _ => {}
                    }
                }
            }
        }
    }

    fn on_sweep(&mut self) {
        let now = Instant::now();
        let now_wall = wall_ms();
        self.server.expire(now);
        self.session_timers(now);
        if now.duration_since(self.last_media_check) >= Duration::from_secs(1) {
            self.last_media_check = now;
            self.media_timers();
            self.publish_view();
            for k in self.keys.purge_expired(now_wall) {
                info!(device = %k.device, channel = %k.channel, profile = k.profile.as_str(), version = k.version, "media key retired after rotation");
            }
        }
        for (id, reason) in self.reg.sweep(now, now_wall) {
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
            if let Some(d) = self.reg.devices.get(&id) {
                warn!(
                    device = %id,
                    reason = reason.as_str(),
                    last_alive_secs = (now_wall - d.last_alive_ms) as f64 / 1000.0,
                    "device offline"
                );
            }
            self.close_device_sessions(&id, &format!("device offline ({})", reason.as_str()));
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
                        d.catalog.state = "failed".into();
                        d.catalog.at_ms = now_wall;
                    }
                    self.save(&a.device);
                } else {
                    self.finish_catalog(a, key.1, false);
                }
            }
        }
        let late: Vec<(String, u32)> = self
            .waiters
            .iter()
            .filter(|(_, w)| now >= w.deadline)
            .map(|(k, _)| k.clone())
            .collect();
        for key in late {
            if let Some(w) = self.waiters.remove(&key) {
                let _ = w.reply.send(Err(ApiError(
                    504,
                    format!(
                        "device {} did not answer {} (SN {})",
                        key.0,
                        w.kind.cmd(),
                        key.1
                    ),
                )));
            }
        }
        if now_wall % 60_000 < 250 {
            self.nonces.purge(self.secs());
        }
        self.update_gauges();
    }

    // ---- API -----------------------------------------------------------

    fn view(&self, d: &Device) -> DeviceView {
        DeviceView {
            device: d.clone(),
            channels: self.reg.channels.get(&d.id).map_or(0, |c| c.len()),
            idle_secs: d.last_alive.elapsed().as_secs_f64(),
        }
    }

    fn on_command(&mut self, c: Command) {
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
            Command::Query(id, kind, tx) => match self.send_query(&id, kind.cmd()) {
                Ok(sn) => {
                    let deadline =
                        Instant::now() + Duration::from_secs(self.cfg.query_timeout_secs);
                    self.waiters.insert(
                        (id, sn),
                        Waiter {
                            kind,
                            reply: tx,
                            deadline,
                        },
                    );
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            },
            Command::Delete(id, tx) => {
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
                let _ = tx.send(self.list_streams(all));
            }
            Command::GetStream(id, tx) => {
                let _ = tx.send(self.get_stream(&id));
            }
            Command::CloseStream(id, tx) => {
                let r = self
                    .close(&id, "closed through the API", true, "closed")
                    .ok_or_else(|| ApiError(404, format!("no active stream {id}")));
                let _ = tx.send(r);
            }
            Command::Flush(tx) => {
                self.persist_dirty();
                if let Some(s) = self.store.clone() {
                    // The writer replies on a std channel; don't block the
                    // runtime waiting for it.
                    std::thread::spawn(move || {
                        s.sync();
                        let _ = tx.send(());
                    });
                } else {
                    let _ = tx.send(());
                }
            }
        }
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

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.contains(':') => h,
        _ => host,
    }
}

fn fmt_addr(a: SocketAddr) -> String {
    a.to_string()
}

/// GB/T 28181 Date header: local time `YYYY-MM-DDTHH:MM:SS.mmm`.
pub fn gb_date() -> String {
    chrono::Local::now()
        .format("%Y-%m-%dT%H:%M:%S%.3f")
        .to_string()
}

/// The JSON error body of the API.
pub fn error_json(e: &ApiError) -> serde_json::Value {
    json!({ "error": e.1, "status": e.0 })
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
        assert_eq!(charset("gbk"), Some(Charset::Gb2312));
        assert_eq!(charset("latin1"), None);
    }
}
