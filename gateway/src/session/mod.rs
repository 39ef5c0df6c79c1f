//! Sessions: what the gateway receives, independent of how it was asked
//! for. The SIP layer opens, answers and ends dialogs and tells this layer
//! what happened; this layer owns the sessions' state, their media
//! receivers ([`media`]) and their entries in the kernel's flow table
//! ([`kernel`], the one facade to the fast path). Static receivers
//! (`[[media.streams]]`) are sessions without a dialog.
//!
//! As in rtpengine (`call.c` owns calls, `kernel.c` is the fast path,
//! signalling never touches the kernel): sip -> session -> stream /
//! dataplane.

pub mod kernel;
pub mod media;
mod offload;
pub mod playback;
mod restore;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Instant,
};

use gb28181::sdp::{self, MediaTransport};
use gb35114::srtp::MasterKey;
use serde::Serialize;
use tracing::{info, warn};

use crate::{
    config::MediaConfig,
    keys::KeyStore,
    metrics::{
        exporter::{StreamEntry, View},
        SipMetrics,
    },
    stream::{self, Bound, MediaStats, Receiver},
    sys::clock::wall_ms,
};

pub use kernel::KernelView;
pub use offload::{LegKernel, LegPath};
pub use playback::PlaybackView;
pub use restore::Saved;

/// How many ended sessions are kept for the API.
const KEEP_CLOSED: usize = 200;

/// Why something asked of the session or signalling layer failed. The API
/// turns the kind into an HTTP status (`api::error`); the message is the
/// one sentence shown to the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// Not possible in the current state (offline, already open, no route).
    #[error("{0}")]
    Conflict(String),
    /// Out of a resource (ports, stream numbers, randomness).
    #[error("{0}")]
    Unavailable(String),
    /// The device answered with an error, or its answer was unusable.
    #[error("{0}")]
    Upstream(String),
    /// The device did not answer in time.
    #[error("{0}")]
    Timeout(String),
}

impl Error {
    /// The message without the kind.
    pub fn message(&self) -> &str {
        match self {
            Error::Invalid(m)
            | Error::NotFound(m)
            | Error::Conflict(m)
            | Error::Unavailable(m)
            | Error::Upstream(m)
            | Error::Timeout(m) => m,
        }
    }
}

/// A session's life: `inviting -> proceeding -> established -> closed`,
/// or `failed`; `static` for receivers without a dialog. Serialised as
/// these lowercase words (the API's `state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Inviting,
    Proceeding,
    Established,
    Static,
    Failed,
    Closed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Inviting => "inviting",
            State::Proceeding => "proceeding",
            State::Established => "established",
            State::Static => "static",
            State::Failed => "failed",
            State::Closed => "closed",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stream as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Session {
    /// The y= value; also the API's stream ID.
    pub id: String,
    pub device: String,
    pub channel: String,
    pub transport: MediaTransport,
    /// RTP SSRC asked for (y= as a number).
    pub ssrc: u32,
    /// Our media address put in the offer.
    pub local: SocketAddr,
    pub state: State,
    pub reason: Option<String>,
    /// The device's media address from its answer.
    pub remote: Option<SocketAddr>,
    /// SSRC from the answer's y= (None when it sent none).
    pub answer_ssrc: Option<u32>,
    /// The answer announced another SSRC than asked for.
    pub ssrc_mismatch: bool,
    /// `a=setup:` of the answer (TCP).
    pub setup: Option<String>,
    /// f= of the answer.
    pub format: Option<String>,
    pub created_ms: i64,
    pub established_ms: Option<i64>,
    pub closed_ms: Option<i64>,
    /// When a restarted daemon took the session back (wall clock, ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restored_ms: Option<i64>,
    /// Whether the media is recorded.
    pub record: bool,
    /// srtp-sm4 session: where its key came from ("configured": the
    /// channel's keys, "offered": a session key the gateway offered in the
    /// INVITE, "answer": the key of the device's SDP answer) and the key's
    /// check value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub srtp: Option<SrtpView>,
    #[serde(skip)]
    pub session_key: Option<MasterKey>,
    /// Where the media is forwarded.
    #[serde(skip)]
    pub forward: Vec<Forward>,
    /// What the media did (filled when shown).
    pub media: Option<MediaStats>,
    /// The session's entry in the XDP flow table and what the kernel
    /// counted for it (updated every second).
    pub kernel: Option<KernelView>,
    /// Relay legs to superior platforms (cascade) fed by this session.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub legs: Vec<LegView>,
    /// Opened for relays only: it ends when its last leg ends.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub relay_only: bool,
    /// Playback or download: the range, speed, pause and position.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub playback: Option<PlaybackView>,
    #[serde(skip)]
    stats: Option<Arc<Mutex<MediaStats>>>,
}

/// A relay leg: the session's PS/RTP re-sent to a superior platform under
/// the SSRC it asked for.
#[derive(Debug, Clone, Serialize)]
pub struct LegView {
    /// The superior's dialog (Call-ID).
    pub id: String,
    pub platform: String,
    pub dest: SocketAddr,
    pub ssrc: u32,
    /// Our role: udp, tcp-passive (the viewer connects to `local_port`) or
    /// tcp-active (we connect to `dest`).
    pub transport: MediaTransport,
    /// Our media port it is sent from.
    pub local_port: u16,
    pub started_ms: i64,
    /// Userspace or kernel relay, why, and the kernel's counters.
    #[serde(flatten)]
    pub relay: LegPath,
}

impl Session {
    /// A session being opened (state `inviting`).
    #[allow(clippy::too_many_arguments)]
    pub fn inviting(
        id: String,
        device: String,
        channel: String,
        transport: MediaTransport,
        ssrc: u32,
        local: SocketAddr,
        record: bool,
        session_key: Option<MasterKey>,
        forward: Vec<Forward>,
    ) -> Session {
        Session {
            id,
            device,
            channel,
            transport,
            ssrc,
            local,
            state: State::Inviting,
            reason: None,
            remote: None,
            answer_ssrc: None,
            ssrc_mismatch: false,
            setup: None,
            format: None,
            created_ms: wall_ms(),
            established_ms: None,
            closed_ms: None,
            restored_ms: None,
            record,
            srtp: session_key.as_ref().map(|k| SrtpView {
                key_source: "offered",
                check: Some(k.check_value()),
            }),
            session_key,
            forward,
            media: None,
            kernel: None,
            legs: Vec::new(),
            relay_only: false,
            playback: None,
            stats: None,
        }
    }

    /// A copy with the media counters filled in.
    pub fn view(&self) -> Session {
        let mut v = self.clone();
        if let Some(s) = &self.stats {
            v.media = s.lock().ok().map(|m| m.clone());
        }
        if v.closed_ms.is_none() {
            v.playback = self.playback.as_ref().map(|p| p.at(Instant::now()));
        }
        v
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SrtpView {
    pub key_source: &'static str,
    pub check: Option<String>,
}

/// Where a session's media is forwarded.
#[derive(Debug, Clone)]
pub struct Forward {
    pub dest: SocketAddr,
    /// Default: derived from the stream's SSRC.
    pub ssrc: Option<u32>,
    /// Re-encrypt toward this destination with srtp-sm4 under this key.
    pub srtp: Option<MasterKey>,
}

/// What the device's answer said about the media.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub remote: Option<SocketAddr>,
    pub ssrc: Option<u32>,
    pub setup: Option<String>,
    pub format: Option<String>,
    /// srtp-sm4 key of the answer (RFC 4568).
    pub key: Option<MasterKey>,
}

/// The unspecified address (any) of IPv4 or IPv6.
fn unspecified(v4: bool) -> IpAddr {
    if v4 {
        IpAddr::from([0u8; 4])
    } else {
        IpAddr::from([0u16; 8])
    }
}

/// How long a TCP relay leg waits for its viewer's connection.
const TCP_LEG_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// A passive TCP leg: accepts the viewer's connection, then sends.
fn tcp_leg_accept(l: std::net::TcpListener, legs: stream::Legs, leg: String, ssrc: u32) {
    tokio::spawn(async move {
        let Ok(l) = tokio::net::TcpListener::from_std(l) else {
            return;
        };
        match tokio::time::timeout(TCP_LEG_WAIT, l.accept()).await {
            Ok(Ok((s, peer))) => match s
                .into_std()
                .and_then(|s| stream::Forward::tcp_leg(&leg, s, ssrc))
            {
                Ok(f) => {
                    info!(leg, %peer, "relay leg connected (TCP, the viewer connected)");
                    legs.add(f);
                }
                Err(e) => warn!(leg, error = %e, "relay leg: TCP set-up failed"),
            },
            Ok(Err(e)) => warn!(leg, error = %e, "relay leg: accept failed"),
            Err(_) => warn!(leg, "relay leg: the viewer never connected (TCP passive)"),
        }
    });
}

/// An active TCP leg: connects to the viewer from media port `port`
/// (three attempts, a second apart, as RFC 4571 senders do), then sends.
fn tcp_leg_connect(port: u16, dest: SocketAddr, legs: stream::Legs, leg: String, ssrc: u32) {
    tokio::spawn(async move {
        for attempt in 1..=3 {
            let sock = if dest.is_ipv4() {
                tokio::net::TcpSocket::new_v4()
            } else {
                tokio::net::TcpSocket::new_v6()
            };
            let local = SocketAddr::new(unspecified(dest.is_ipv4()), port);
            let conn = match sock.and_then(|s| {
                s.set_reuseaddr(true)?;
                s.bind(local)?;
                Ok(s)
            }) {
                Ok(s) => {
                    tokio::time::timeout(std::time::Duration::from_secs(3), s.connect(dest)).await
                }
                Err(e) => Ok(Err(e)),
            };
            match conn {
                Ok(Ok(s)) => {
                    match s
                        .into_std()
                        .and_then(|s| stream::Forward::tcp_leg(&leg, s, ssrc))
                    {
                        Ok(f) => {
                            info!(leg, %dest, "relay leg connected (TCP, we connected)");
                            legs.add(f);
                        }
                        Err(e) => warn!(leg, error = %e, "relay leg: TCP set-up failed"),
                    }
                    return;
                }
                _ => {
                    warn!(leg, %dest, attempt, "relay leg: TCP connect failed");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    });
}

/// The sessions of the gateway, their media and kernel flows. Owned by
/// the signalling task (no locks on the control path).
pub struct Sessions {
    active: HashMap<String, Session>,
    closed: VecDeque<Session>,
    next_port: u16,
    next_stream: u16,
    /// Media sockets reserved for sessions not yet established.
    bound: HashMap<String, Bound>,
    receivers: HashMap<String, Receiver>,
    media: MediaConfig,
    ports: (u16, u16),
    keys: Arc<KeyStore>,
    kernel: Option<kernel::Kernel>,
    metrics: SipMetrics,
}

impl Sessions {
    pub fn new(media: MediaConfig, keys: Arc<KeyStore>, metrics: SipMetrics) -> Sessions {
        let ports = media.port_range().unwrap_or((30000, 30999));
        Sessions {
            active: HashMap::new(),
            closed: VecDeque::new(),
            next_port: 0,
            next_stream: 0,
            bound: HashMap::new(),
            receivers: HashMap::new(),
            media,
            ports,
            keys,
            kernel: None,
            metrics,
        }
    }

    /// Session flows go into this attachment's XDP flow table.
    pub fn set_kernel(&mut self, k: kernel::Kernel) {
        self.kernel = Some(k);
    }

    pub fn media_config(&self) -> &MediaConfig {
        &self.media
    }

    pub fn keys(&self) -> &Arc<KeyStore> {
        &self.keys
    }

    pub fn get(&self, id: &str) -> Option<&Session> {
        self.active.get(id)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut Session> {
        self.active.get_mut(id)
    }

    /// The session of a device's channel, if one is open.
    pub fn of_channel(&self, device: &str, channel: &str) -> Option<&Session> {
        self.active
            .values()
            .find(|s| s.device == device && s.channel == channel)
    }

    /// IDs of the device's sessions.
    pub fn of_device(&self, device: &str) -> Vec<String> {
        self.active
            .values()
            .filter(|s| s.device == device)
            .map(|s| s.id.clone())
            .collect()
    }

    fn alloc_port(&mut self) -> Option<u16> {
        let (lo, hi) = self.ports;
        let lo = lo + (lo & 1); // even RTP ports
        if lo > hi {
            return None;
        }
        let n = (hi - lo) / 2 + 1;
        let used: HashSet<u16> = self
            .active
            .values()
            .flat_map(|s| {
                std::iter::once(s.local.port()).chain(s.legs.iter().map(|l| l.local_port))
            })
            .collect();
        for i in 0..n {
            let p = lo + 2 * ((self.next_port.wrapping_add(i)) % n);
            if !used.contains(&p) {
                self.next_port = self.next_port.wrapping_add(i + 1) % n;
                return Some(p);
            }
        }
        None
    }

    /// Binds a media port of `[media] ports` now (the device may send as
    /// soon as it answers), of the family of `peer`.
    pub fn reserve_port(
        &mut self,
        peer: IpAddr,
        transport: MediaTransport,
    ) -> Result<(u16, Bound), Error> {
        let any = unspecified(peer.is_ipv4());
        for _ in 0..64 {
            let Some(p) = self.alloc_port() else { break };
            match stream::bind(any, p, transport) {
                Ok(b) => return Ok((p, b)),
                Err(e) => warn!(port = p, error = %e, "media port unavailable, trying the next"),
            }
        }
        Err(Error::Unavailable(
            "no free media port in [media] ports".into(),
        ))
    }

    /// A fresh y= value (10 digits) of `domain`, unused by any open
    /// session: live (first digit 0) or history (playback, download: 1).
    pub fn alloc_y(&mut self, domain: &str, live: bool) -> Result<String, Error> {
        for _ in 0..10_000 {
            self.next_stream = self.next_stream % 9999 + 1;
            let y = sdp::ssrc_y(live, domain, self.next_stream);
            if !self.active.contains_key(&y) {
                return Ok(y);
            }
        }
        Err(Error::Unavailable("no free stream number".into()))
    }

    /// Adds a session being opened, with its reserved media socket.
    pub fn insert(&mut self, s: Session, bound: Bound) {
        self.metrics.sessions.with_label_values(&["invited"]).inc();
        self.bound.insert(s.id.clone(), bound);
        self.active.insert(s.id.clone(), s);
    }

    /// A provisional answer: `inviting -> proceeding`.
    pub fn proceeding(&mut self, id: &str) {
        if let Some(s) = self.active.get_mut(id) {
            if s.state == State::Inviting {
                s.state = State::Proceeding;
            }
        }
    }

    /// The device accepted: the media starts, its flow enters the kernel
    /// table. Returns the session as shown.
    pub fn establish(&mut self, id: &str, a: Answer) -> Option<Session> {
        let s = self.active.get_mut(id)?;
        if let Some(k) = a.key {
            s.srtp = Some(SrtpView {
                key_source: "answer",
                check: Some(k.check_value()),
            });
            s.session_key = Some(k);
        }
        s.remote = a.remote;
        s.answer_ssrc = a.ssrc;
        s.ssrc_mismatch = a.ssrc.is_some_and(|x| x != s.ssrc);
        s.setup = a.setup;
        s.format = a.format;
        s.state = State::Established;
        s.established_ms = Some(wall_ms());
        if let Some(p) = s.playback.as_mut() {
            p.started(Instant::now());
        }
        let snapshot = s.clone();
        self.start_media(&snapshot);
        self.add_kernel_flow(id);
        let view = self.active.get(id).map(Session::view)?;
        if view.ssrc_mismatch {
            self.metrics
                .sessions
                .with_label_values(&["ssrc_mismatch"])
                .inc();
            warn!(stream = %id, asked = view.ssrc, answered = ?view.answer_ssrc, "device answered another SSRC; media is taken by port");
        }
        self.metrics
            .sessions
            .with_label_values(&["established"])
            .inc();
        info!(stream = %id, device = %view.device, remote = ?view.remote, "stream established");
        Some(view)
    }

    fn stop_media(&mut self, id: &str) {
        self.del_kernel_flow(id);
        self.bound.remove(id);
        if let Some(mut r) = self.receivers.remove(id) {
            r.stop();
        }
    }

    /// The session could not be opened: removed, kept as `failed`.
    pub fn fail(&mut self, id: &str, why: &str) -> Option<Session> {
        self.stop_media(id);
        let mut s = self.active.remove(id)?;
        s.state = State::Failed;
        s.reason = Some(why.to_string());
        s.closed_ms = Some(wall_ms());
        self.metrics.sessions.with_label_values(&["failed"]).inc();
        warn!(stream = %id, device = %s.device, why, "stream failed");
        self.remember(s.clone());
        Some(s)
    }

    /// Ends a session (`closed`, or `failed` when its answer was unusable).
    pub fn close(&mut self, id: &str, reason: &str, state: State) -> Option<Session> {
        self.stop_media(id);
        let mut s = self.active.remove(id)?;
        s.state = state;
        s.reason = Some(reason.to_string());
        s.closed_ms = Some(wall_ms());
        self.metrics
            .sessions
            .with_label_values(&[state.as_str()])
            .inc();
        info!(stream = %id, device = %s.device, reason, "stream closed");
        self.remember(s.clone());
        Some(s.view())
    }

    fn remember(&mut self, s: Session) {
        self.closed.push_back(s);
        while self.closed.len() > KEEP_CLOSED {
            self.closed.pop_front();
        }
    }

    /// Adds a relay leg to an established session: its media, from a port
    /// of `[media] ports`, to `dest` under `ssrc`, from the next key frame.
    /// Returns the local port.
    pub fn add_leg(
        &mut self,
        id: &str,
        leg: &str,
        platform: &str,
        dest: SocketAddr,
        ssrc: u32,
        transport: MediaTransport,
    ) -> Result<u16, Error> {
        match self.active.get(id) {
            Some(s) if s.state == State::Established || s.state == State::Static => {}
            Some(s) => {
                return Err(Error::Conflict(format!(
                    "stream {id} is {}, not established",
                    s.state
                )))
            }
            None => return Err(Error::NotFound(format!("no active stream {id}"))),
        }
        if !self.receivers.contains_key(id) {
            return Err(Error::Conflict(format!("stream {id} has no receiver")));
        }
        let legs = match self.receivers.get(id) {
            Some(r) => r.legs.clone(),
            None => return Err(Error::Conflict(format!("stream {id} has no receiver"))),
        };
        let port = match transport {
            MediaTransport::Udp => {
                let (port, bound) = self.reserve_port(dest.ip(), MediaTransport::Udp)?;
                let Bound::Udp(sock) = bound else {
                    return Err(Error::Unavailable("no UDP media socket".into()));
                };
                let f = stream::Forward::leg(leg, sock, dest, ssrc)
                    .map_err(|e| Error::Unavailable(format!("relay socket: {e}")))?;
                legs.add(f);
                port
            }
            // We listen; the viewer connects.
            MediaTransport::TcpPassive => {
                let (port, bound) = self.reserve_port(dest.ip(), MediaTransport::TcpPassive)?;
                let Bound::TcpListen(l) = bound else {
                    return Err(Error::Unavailable("no TCP media socket".into()));
                };
                tcp_leg_accept(l, legs, leg.to_string(), ssrc);
                port
            }
            // We connect to the viewer (from a media port).
            MediaTransport::TcpActive => {
                let port = self.alloc_port().ok_or_else(|| {
                    Error::Unavailable("no free media port in [media] ports".into())
                })?;
                tcp_leg_connect(port, dest, legs, leg.to_string(), ssrc);
                port
            }
        };
        if let Some(s) = self.active.get_mut(id) {
            s.legs.push(LegView {
                id: leg.to_string(),
                platform: platform.to_string(),
                dest,
                ssrc,
                transport,
                local_port: port,
                started_ms: wall_ms(),
                relay: LegPath {
                    path: "userspace",
                    reason: Some("starting".into()),
                    kernel: None,
                    backoff: None,
                },
            });
        }
        self.metrics
            .sessions
            .with_label_values(&["leg_added"])
            .inc();
        info!(stream = %id, leg, platform, %dest, ssrc, port, "relay leg to the superior");
        Ok(port)
    }

    /// Removes a relay leg; returns true when the session is then unused
    /// (opened for relays only and no leg left): the caller ends it.
    pub fn remove_leg(&mut self, id: &str, leg: &str) -> bool {
        let in_kernel = self.active.get(id).is_some_and(|s| {
            s.legs
                .iter()
                .any(|l| l.id == leg && l.relay.kernel.is_some())
        });
        if in_kernel {
            // The others go back to userspace for a moment and are handed
            // over again as a new set.
            self.hand_back(id, "a kernel leg of the stream ended");
        }
        if let Some(r) = self.receivers.get(id) {
            r.legs.remove(leg);
        }
        let Some(s) = self.active.get_mut(id) else {
            return false;
        };
        let before = s.legs.len();
        s.legs.retain(|l| l.id != leg);
        if s.legs.len() < before {
            self.metrics
                .sessions
                .with_label_values(&["leg_removed"])
                .inc();
            info!(stream = %id, leg, "relay leg ended");
        }
        s.relay_only && s.legs.is_empty()
    }

    /// Marks a session as opened for relays only.
    pub fn set_relay_only(&mut self, id: &str, relay_only: bool) {
        if let Some(s) = self.active.get_mut(id) {
            s.relay_only = relay_only;
        }
    }

    /// Active sessions, then (with `all`) the ended ones, newest first.
    pub fn list(&self, all: bool) -> Vec<Session> {
        let mut v: Vec<Session> = self.active.values().map(Session::view).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        if all {
            v.extend(self.closed.iter().rev().map(Session::view));
        }
        v
    }

    pub fn view(&self, id: &str) -> Option<Session> {
        self.active.get(id).map(Session::view).or_else(|| {
            self.closed
                .iter()
                .rev()
                .find(|s| s.id == id)
                .map(Session::view)
        })
    }

    /// Streams for `/metrics`.
    pub fn publish(&self, view: &View) {
        let streams = self
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
        view.set_streams(streams);
    }

    /// Every second: the kernel's counters of session flows, and the
    /// sessions without media for `no_media_timeout_secs` (kernel
    /// last-packet time when attached, else the receiver's), with the
    /// reason to close them.
    pub fn idle(&mut self) -> Vec<(String, String)> {
        let timeout = self.media.no_media_timeout_secs;
        let now_wall = wall_ms();
        let ids: Vec<String> = self
            .active
            .values()
            .filter(|s| s.state == State::Established)
            .map(|s| s.id.clone())
            .collect();
        let mut out = Vec::new();
        for id in ids {
            let Some(s) = self.active.get_mut(&id) else {
                continue;
            };
            let idle = match (&self.kernel, s.kernel.as_mut()) {
                (Some(k), Some(view)) => {
                    k.refresh(view);
                    view.idle_secs
                }
                _ => s
                    .stats
                    .as_ref()
                    .and_then(|m| m.lock().ok().and_then(|m| m.last_packet_ms))
                    .map(|l| (now_wall - l) as f64 / 1000.0),
            };
            // Never a packet: count from the moment it was established
            // (or taken back by this daemon).
            let since = s.restored_ms.or(s.established_ms).unwrap_or(now_wall);
            let mut idle = idle.unwrap_or_else(|| (now_wall - since) as f64 / 1000.0);
            // A paused playback sends nothing; after a control, count
            // from the control.
            if let Some(p) = &s.playback {
                if p.paused {
                    continue;
                }
                if let Some(t) = p.last_control {
                    idle = idle.min(t.elapsed().as_secs_f64());
                }
            }
            if timeout > 0 && idle >= timeout as f64 {
                let src = if self.kernel.is_some() {
                    "kernel"
                } else {
                    "receiver"
                };
                self.metrics.sessions.with_label_values(&["no_media"]).inc();
                out.push((
                    id,
                    format!("no media for {idle:.0} s ({src} last-packet time)"),
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(ports: &str, no_media: u64) -> Sessions {
        let media = MediaConfig {
            ports: ports.into(),
            no_media_timeout_secs: no_media,
            ..MediaConfig::default()
        };
        let reg = prometheus::Registry::new();
        Sessions::new(media, KeyStore::new(None), SipMetrics::new(&reg))
    }

    fn open(t: &mut Sessions, device: &str) -> String {
        let (port, bound) = t
            .reserve_port(IpAddr::from([127, 0, 0, 1]), MediaTransport::Udp)
            .unwrap();
        let y = t.alloc_y("3402000000", true).unwrap();
        let ssrc = y.parse().unwrap();
        t.insert(
            Session::inviting(
                y.clone(),
                device.into(),
                device.into(),
                MediaTransport::Udp,
                ssrc,
                SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port),
                false,
                None,
                Vec::new(),
            ),
            bound,
        );
        y
    }

    #[test]
    fn states_serialise_as_the_api_words() {
        for (s, w) in [
            (State::Inviting, "inviting"),
            (State::Proceeding, "proceeding"),
            (State::Established, "established"),
            (State::Static, "static"),
            (State::Failed, "failed"),
            (State::Closed, "closed"),
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), w);
            assert_eq!(s.to_string(), w);
        }
    }

    #[tokio::test]
    async fn a_session_lives_from_invite_to_close() {
        let mut t = table("39100-39109", 0);
        let id = open(&mut t, "34020000001320000001");
        assert_eq!(id.len(), 10);
        assert_eq!(t.get(&id).unwrap().state, State::Inviting);
        t.proceeding(&id);
        assert_eq!(t.get(&id).unwrap().state, State::Proceeding);
        let v = t
            .establish(
                &id,
                Answer {
                    remote: Some("127.0.0.1:9".parse().unwrap()),
                    ssrc: Some(1),
                    ..Answer::default()
                },
            )
            .unwrap();
        assert_eq!(v.state, State::Established);
        assert!(v.ssrc_mismatch, "the answer's SSRC differs from y=");
        assert!(v.media.is_some(), "the receiver runs and is shown");
        // The same device's channel is busy; another device's is not.
        assert!(t
            .of_channel("34020000001320000001", "34020000001320000001")
            .is_some());
        assert!(t.of_channel("x", "x").is_none());
        let closed = t.close(&id, "done", State::Closed).unwrap();
        assert_eq!(
            (closed.state, closed.reason.as_deref()),
            (State::Closed, Some("done"))
        );
        assert!(t.get(&id).is_none());
        assert!(t.list(false).is_empty());
        assert_eq!(t.list(true).len(), 1);
        assert_eq!(t.view(&id).unwrap().state, State::Closed);
        // Closing twice finds nothing.
        assert!(t.close(&id, "again", State::Closed).is_none());
    }

    #[tokio::test]
    async fn failures_are_kept_and_ports_and_numbers_run_out_cleanly() {
        // Two even ports: 39120 and 39122.
        let mut t = table("39120-39123", 0);
        let a = open(&mut t, "a1");
        let b = open(&mut t, "b1");
        assert_ne!(a, b);
        assert_ne!(
            t.get(&a).unwrap().local.port(),
            t.get(&b).unwrap().local.port()
        );
        assert_eq!(
            t.reserve_port(IpAddr::from([127, 0, 0, 1]), MediaTransport::Udp)
                .err(),
            Some(Error::Unavailable(
                "no free media port in [media] ports".into()
            ))
        );
        let f = t.fail(&a, "device answered 486 Busy Here").unwrap();
        assert_eq!(f.state, State::Failed);
        assert_eq!(t.of_device("a1"), Vec::<String>::new());
        assert_eq!(t.of_device("b1"), vec![b.clone()]);
        // The failed session's port is free again.
        assert!(t
            .reserve_port(IpAddr::from([127, 0, 0, 1]), MediaTransport::Udp)
            .is_ok());
    }

    #[tokio::test]
    async fn silent_sessions_are_reported_idle_by_the_receiver_clock() {
        let mut t = table("39140-39141", 1);
        let id = open(&mut t, "c1");
        t.establish(&id, Answer::default()).unwrap();
        // Established "now": not idle yet.
        assert!(t.idle().is_empty());
        if let Some(s) = t.get_mut(&id) {
            s.established_ms = Some(wall_ms() - 5_000);
        }
        let idle = t.idle();
        assert_eq!(idle.len(), 1);
        assert_eq!(idle[0].0, id);
        assert!(
            idle[0].1.contains("receiver last-packet time"),
            "{}",
            idle[0].1
        );
    }
}
