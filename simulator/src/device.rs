//! The SIP side of one simulated device: REGISTER with digest
//! authentication and refresh, keepalives, answers to the platform's
//! MANSCDP queries, INVITE / ACK / BYE for live streams, unregistration at
//! exit. One task per device owns its SIP socket (UDP) or connection (TCP).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use gb28181::{
    digest::Challenge,
    manscdp::{self, CatalogItem, Charset, DeviceInfo, DeviceStatus, Kind, RecordItem},
    sdp,
    sip::{self as gsip, Head, Outgoing, Transport},
    wire,
};
use gb35114::srtp::MasterKey;
use media::Codec;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream, UdpSocket},
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};
use tracing::{debug, error, info, warn};

use crate::{
    status::{now_ms, Shared, StreamReport},
    stream::{self, Link, MediaOpts, Pace, Stop, StreamEvent},
};

/// RFC 3261 timers.
const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);
const TIMEOUT: Duration = Duration::from_secs(32);
/// Wait after a failed registration (or a lost TCP connection).
const RETRY: Duration = Duration::from_secs(5);
const MAX_MSG: usize = wire::DEFAULT_MAX_MESSAGE;
pub(crate) const USER_AGENT: &str = concat!("gb-sim/", env!("CARGO_PKG_VERSION"));

/// Settings shared by every device.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: SocketAddr,
    pub platform_id: String,
    pub domain: String,
    pub bind: IpAddr,
    pub transport: Transport,
    pub password: String,
    pub expires: u32,
    pub keepalive: Duration,
    pub no_qop: bool,
    pub exit_on_auth_failure: bool,
    pub catalog_per_message: usize,
    pub charset: Charset,
    /// Never send DeviceControl Responses (--ignore-controls).
    pub ignore_controls: bool,
    /// Recordings per channel in the record index (--records).
    pub records: u32,
    /// Leave out the last part of split RecordInfo answers.
    pub records_drop_last_part: bool,
    /// Raise an alarm this long after registering (--alarm-after).
    pub alarm_after: Option<Duration>,
    /// Never answer MANSRTSP INFOs (--ignore-mansrtsp).
    pub ignore_mansrtsp: bool,
    /// Refuse SUBSCRIBEs with 489 Bad Event (--refuse-subscribe).
    pub refuse_subscribe: bool,
    /// Most seconds a subscription is granted (--subscribe-max-expires).
    pub subscribe_max_expires: u32,
    /// Notify a catalog change (the first channel OFF) this long after
    /// registering (--catalog-change-after).
    pub catalog_change_after: Option<Duration>,
    /// The device's clock is this many seconds off (--clock-offset).
    pub clock_offset_secs: i64,
    /// Refuse INVITEs with this status.
    pub invite_response: Option<u16>,
    /// Answer and send under this SSRC instead of the offer's y=.
    pub wrong_ssrc: Option<u32>,
    pub media: Arc<MediaOpts>,
}

/// The SDP answer of a device.
#[derive(Debug, Clone)]
pub struct AnswerSpec<'a> {
    pub channel: &'a str,
    pub ip: IpAddr,
    pub port: u16,
    /// The offer's m= protocol, echoed.
    pub proto: &'a str,
    /// s= (the offer's: Play, Playback, Download).
    pub session: &'a str,
    pub y: &'a str,
    /// Our TCP role (`active` when the offer was passive and vice versa);
    /// `None` for UDP.
    pub setup: Option<&'a str>,
    pub codec: Codec,
    pub fps: u32,
    /// `a=crypto:` value (RFC 4568) of the srtp-sm4 key we send with.
    pub crypto: Option<String>,
}

/// Builds the 200 OK's SDP.
pub fn answer_sdp(a: &AnswerSpec) -> String {
    let fam = if a.ip.is_ipv4() { "IP4" } else { "IP6" };
    let mut s = format!(
        "v=0\r\no={ch} 0 0 IN {fam} {ip}\r\ns={sess}\r\nc=IN {fam} {ip}\r\nt=0 0\r\nm=video {port} {proto} 96\r\na=sendonly\r\na=rtpmap:96 PS/90000\r\n",
        ch = a.channel,
        ip = a.ip,
        sess = a.session,
        port = a.port,
        proto = a.proto,
    );
    if let Some(role) = a.setup {
        s.push_str(&format!("a=setup:{role}\r\na=connection:new\r\n"));
    }
    if let Some(c) = &a.crypto {
        s.push_str(&format!("a={c}\r\n"));
    }
    // f=v/<codec: 2 H.264, 5 H.265>/<resolution 4: D1>/<fps>/<1: CBR>/<kbps>a///
    let codec = if a.codec == Codec::H265 { 5 } else { 2 };
    s.push_str(&format!(
        "y={}\r\nf=v/{codec}/4/{}/1/4000a///\r\n",
        a.y, a.fps
    ));
    s
}

/// Our TCP role for the offer's `a=setup` (none: the platform listens).
pub fn our_setup(offer: Option<&str>) -> Result<&'static str, String> {
    match offer.unwrap_or("passive") {
        "passive" | "actpass" => Ok("active"),
        "active" => Ok("passive"),
        other => Err(format!("unknown a=setup:{other}")),
    }
}

/// The device's local clock as `YYYY-MM-DDTHH:MM:SS` (DeviceTime),
/// `offset_secs` off the
/// machine's (--clock-offset).
pub(crate) fn device_time_with(offset_secs: i64) -> String {
    (chrono::Local::now() + chrono::Duration::seconds(offset_secs))
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string()
}

/// The SIP socket: one UDP socket, or one TCP connection to the platform.
enum Sock {
    Udp(UdpSocket, Vec<u8>),
    Tcp {
        stream: Option<TcpStream>,
        buf: Vec<u8>,
    },
}

impl Sock {
    /// The next message; `Ok(None)` for keep-alive CRLFs.
    async fn recv(&mut self, server: SocketAddr) -> std::io::Result<Option<(Vec<u8>, SocketAddr)>> {
        match self {
            Sock::Udp(s, buf) => {
                buf.resize(65_536, 0);
                let (n, src) = s.recv_from(buf).await?;
                Ok(Some((buf[..n].to_vec(), src)))
            }
            Sock::Tcp { stream, buf } => loop {
                match wire::frame_len(buf, MAX_MSG) {
                    Ok(Some(n)) => {
                        let msg: Vec<u8> = buf.drain(..n).collect();
                        if msg.iter().all(|b| *b == b'\r' || *b == b'\n') {
                            return Ok(None);
                        }
                        return Ok(Some((msg, server)));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        buf.clear();
                        *stream = None;
                        return Err(std::io::Error::other(format!("SIP TCP framing: {e}")));
                    }
                }
                let Some(s) = stream.as_mut() else {
                    return std::future::pending().await;
                };
                buf.reserve(16 * 1024);
                if s.read_buf(buf).await? == 0 {
                    *stream = None;
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "connection closed by the platform",
                    ));
                }
            },
        }
    }
}

/// One of our requests, waiting for its final response.
struct Pending {
    what: What,
    bytes: Vec<u8>,
    dest: SocketAddr,
    /// Next retransmission (UDP, until a provisional response).
    next: Option<Instant>,
    interval: Duration,
    deadline: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum What {
    Register {
        unregister: bool,
        authed: bool,
    },
    Keepalive,
    Answer,
    Bye,
    /// A NOTIFY in the subscription with this Call-ID.
    Notify {
        call_id: String,
    },
}

/// An INVITE dialog of ours (or a refused INVITE waiting for its ACK).
struct Dialog {
    channel: String,
    our_tag: String,
    remote_tag: Option<String>,
    /// From URI of the INVITE (To of our BYE).
    remote_uri: String,
    /// To URI of the INVITE (From of our BYE).
    local_uri: String,
    /// Where in-dialog requests go (the INVITE's Contact).
    target: String,
    peer: SocketAddr,
    cseq: u32,
    /// Final response, retransmitted over UDP until the ACK.
    response: Vec<u8>,
    answer_sdp: String,
    retx: Option<(Instant, Duration, Instant)>,
    /// Refused INVITE: the ACK ends it.
    refused: bool,
    link: Option<(Link, u32)>,
    report: Option<usize>,
    stop: Option<oneshot::Sender<Stop>>,
    /// srtp-sm4 key agreed in SDP.
    session_key: Option<MasterKey>,
    /// s=Playback or s=Download.
    history: bool,
    /// s=Playback: MANSRTSP controls pace the stream through this.
    playback: bool,
    pace: Option<watch::Sender<Pace>>,
}

struct Reg {
    call_id: String,
    from_tag: String,
    cseq: u32,
    challenge: Option<Challenge>,
    /// The challenge came in answer to our last REGISTER (not reused).
    fresh: bool,
    nc: u32,
    registered: bool,
    next: Option<Instant>,
    /// Unregistration done (or not needed).
    unregistered: bool,
}

enum Event {
    Shutdown,
    Sip(std::io::Result<Option<(Vec<u8>, SocketAddr)>>),
    Stream(Option<StreamEvent>),
    Timer,
}

pub struct Device {
    pub(crate) cfg: Arc<Config>,
    pub(crate) index: usize,
    pub(crate) id: String,
    pub(crate) channels: Vec<String>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) fatal: mpsc::Sender<String>,
    sock: Sock,
    /// host:port for Via and Contact.
    pub(crate) local: String,
    pub(crate) tag: String,
    reg: Reg,
    pub(crate) sn: u32,
    pub(crate) cseq: u32,
    pub(crate) keepalive_at: Option<Instant>,
    pub(crate) keepalive_failures: u32,
    /// When to raise the --alarm-after alarm (once).
    pub(crate) alarm_at: Option<Instant>,
    pub(crate) alarm_raised: bool,
    /// When to send the --catalog-change-after change (once).
    pub(crate) catalog_change_at: Option<Instant>,
    pub(crate) catalog_changed: bool,
    /// Subscriptions the platform made, by Call-ID.
    pub(crate) subs: HashMap<String, crate::subscribe::Sub>,
    pub(crate) reconnect_at: Option<Instant>,
    pending: HashMap<String, Pending>,
    /// Responses sent, by branch|method, for retransmitted requests.
    pub(crate) answered: HashMap<String, (Vec<u8>, Instant)>,
    dialogs: HashMap<String, Dialog>,
    pub(crate) events_tx: mpsc::Sender<StreamEvent>,
    pub(crate) events_rx: mpsc::Receiver<StreamEvent>,
    pub(crate) tasks: Vec<JoinHandle<()>>,
    pub(crate) closing: bool,
    pub(crate) next_y: u32,
}

impl Device {
    pub fn new(
        cfg: Arc<Config>,
        index: usize,
        id: String,
        channels: Vec<String>,
        shared: Arc<Shared>,
        fatal: mpsc::Sender<String>,
    ) -> Device {
        let (events_tx, events_rx) = mpsc::channel(64);
        // Replaced by open().
        let sock = Sock::Tcp {
            stream: None,
            buf: Vec::new(),
        };
        Device {
            cfg,
            index,
            id,
            channels,
            shared,
            fatal,
            sock,
            local: String::new(),
            tag: gsip::token(10),
            reg: Reg {
                call_id: gsip::token(20),
                from_tag: gsip::token(10),
                cseq: 0,
                challenge: None,
                fresh: false,
                nc: 0,
                registered: false,
                next: None,
                unregistered: true,
            },
            sn: 0,
            cseq: 0,
            keepalive_at: None,
            keepalive_failures: 0,
            alarm_at: None,
            alarm_raised: false,
            catalog_change_at: None,
            catalog_changed: false,
            subs: HashMap::new(),
            reconnect_at: None,
            pending: HashMap::new(),
            answered: HashMap::new(),
            dialogs: HashMap::new(),
            events_tx,
            events_rx,
            tasks: Vec::new(),
            closing: false,
            next_y: 1,
        }
    }

    fn note_error(&self, e: &str) {
        let e = e.to_string();
        self.shared.device(self.index, |d| d.last_error = Some(e));
    }

    /// Opens the SIP socket (UDP) or connection (TCP).
    async fn open(&mut self) -> std::io::Result<()> {
        let local = SocketAddr::new(self.cfg.bind, 0);
        match self.cfg.transport {
            Transport::Udp => {
                let s = UdpSocket::bind(local).await?;
                self.local = s.local_addr()?.to_string();
                self.sock = Sock::Udp(s, Vec::new());
            }
            Transport::Tcp => {
                let s = if local.is_ipv4() {
                    TcpSocket::new_v4()?
                } else {
                    TcpSocket::new_v6()?
                };
                s.bind(local)?;
                let c = tokio::time::timeout(Duration::from_secs(5), s.connect(self.cfg.server))
                    .await
                    .map_err(|_| std::io::Error::other("connect timed out"))??;
                let _ = c.set_nodelay(true);
                self.local = c.local_addr()?.to_string();
                self.sock = Sock::Tcp {
                    stream: Some(c),
                    buf: Vec::new(),
                };
            }
        }
        let l = self.local.clone();
        self.shared.device(self.index, |d| d.local = l);
        Ok(())
    }

    /// Runs the device until `shutdown`; then ends its streams and
    /// unregisters.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        match self.open().await {
            Ok(()) => self.reg.next = Some(Instant::now()),
            Err(e) => {
                if self.cfg.transport == Transport::Udp {
                    error!(device = %self.id, error = %e, "cannot bind the SIP socket");
                    self.note_error(&format!("bind: {e}"));
                    return;
                }
                warn!(device = %self.id, server = %self.cfg.server, error = %e, "SIP TCP connect failed; retrying in 5 s");
                self.note_error(&format!("connect: {e}"));
                self.reconnect_at = Some(Instant::now() + RETRY);
            }
        }
        loop {
            if *shutdown.borrow() {
                break;
            }
            let deadline = self.next_deadline();
            let ev = tokio::select! {
                r = shutdown.changed() => {
                    let _ = r;
                    Event::Shutdown
                }
                r = self.sock.recv(self.cfg.server) => Event::Sip(r),
                e = self.events_rx.recv() => Event::Stream(e),
                _ = sleep_until(deadline) => Event::Timer,
            };
            match ev {
                Event::Shutdown => break,
                Event::Sip(r) => self.on_sip(r).await,
                Event::Stream(Some(e)) => self.on_stream_event(e).await,
                Event::Stream(None) => {}
                Event::Timer => self.on_timer().await,
            }
        }
        self.shutdown().await;
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut take = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        if !self.closing {
            take(self.reg.next);
            take(self.keepalive_at);
            take(self.reconnect_at);
            take(self.alarm_at);
            take(self.catalog_change_at);
            for s in self.subs.values() {
                take(s.next_position);
                take(Some(s.expires_at));
            }
        }
        for p in self.pending.values() {
            take(p.next);
            take(Some(p.deadline));
        }
        for d in self.dialogs.values() {
            if let Some((next, _, deadline)) = d.retx {
                take(Some(next.min(deadline)));
            }
        }
        t
    }

    async fn on_sip(&mut self, r: std::io::Result<Option<(Vec<u8>, SocketAddr)>>) {
        match r {
            Ok(Some((bytes, src))) => self.on_packet(&bytes, src).await,
            Ok(None) => {}
            Err(e) => {
                if self.cfg.transport == Transport::Tcp {
                    warn!(device = %self.id, error = %e, "SIP TCP connection lost; reconnecting in 5 s");
                    self.note_error(&format!("SIP TCP: {e}"));
                    self.lost_connection();
                } else {
                    debug!(device = %self.id, error = %e, "UDP receive error");
                }
            }
        }
    }

    fn lost_connection(&mut self) {
        if let Sock::Tcp { stream, buf } = &mut self.sock {
            *stream = None;
            buf.clear();
        }
        self.set_registered(false);
        self.pending.clear();
        self.keepalive_at = None;
        self.reg.next = None;
        self.reconnect_at = Some(Instant::now() + RETRY);
    }

    fn set_registered(&mut self, on: bool) {
        self.reg.registered = on;
        self.shared.device(self.index, |d| d.registered = on);
    }

    async fn send_to(&mut self, bytes: &[u8], dest: SocketAddr) {
        match &mut self.sock {
            Sock::Udp(s, _) => {
                if let Err(e) = s.send_to(bytes, dest).await {
                    debug!(device = %self.id, %dest, error = %e, "UDP send failed");
                }
            }
            Sock::Tcp { stream, .. } => {
                let Some(s) = stream.as_mut() else {
                    debug!(device = %self.id, "no SIP TCP connection; message not sent");
                    return;
                };
                if let Err(e) = s.write_all(bytes).await {
                    warn!(device = %self.id, error = %e, "SIP TCP send failed; reconnecting in 5 s");
                    self.lost_connection();
                }
            }
        }
    }

    /// Sends a request and tracks it until its final response.
    pub(crate) async fn start_request(
        &mut self,
        branch: String,
        what: What,
        bytes: Vec<u8>,
        dest: SocketAddr,
    ) {
        let now = Instant::now();
        let udp = self.cfg.transport == Transport::Udp;
        self.send_to(&bytes, dest).await;
        self.pending.insert(
            branch,
            Pending {
                what,
                bytes,
                dest,
                next: udp.then_some(now + T1),
                interval: T1,
                deadline: now + TIMEOUT,
            },
        );
    }

    fn platform_uri(&self) -> String {
        format!("sip:{}@{}", self.cfg.platform_id, self.cfg.domain)
    }

    // ---- registration ---------------------------------------------------

    async fn send_register(&mut self, unregister: bool) {
        self.reg.cseq += 1;
        let uri = self.platform_uri();
        let aor = format!("sip:{}@{}", self.id, self.cfg.domain);
        let contact = format!("sip:{}@{}", self.id, self.local);
        let auth = self.reg.challenge.clone().map(|mut ch| {
            if self.cfg.no_qop {
                ch.qop = false;
            }
            self.reg.nc += 1;
            ch.answer(
                &self.id,
                &self.cfg.password,
                "REGISTER",
                &uri,
                self.reg.nc,
                &gsip::token(8),
            )
            .to_header()
        });
        let expires = if unregister {
            "0".to_string()
        } else {
            self.cfg.expires.to_string()
        };
        let mut headers: Vec<(&str, &str)> =
            vec![("Expires", &expires), ("User-Agent", USER_AGENT)];
        if let Some(a) = &auth {
            headers.push(("Authorization", a));
        }
        let branch = gsip::branch();
        let bytes = Outgoing {
            method: "REGISTER",
            uri: &uri,
            transport: self.cfg.transport,
            local: &self.local,
            branch: &branch,
            from: &aor,
            from_tag: &self.reg.from_tag,
            to: &aor,
            to_tag: None,
            call_id: &self.reg.call_id,
            cseq: self.reg.cseq,
            contact: Some(&contact),
            headers: &headers,
            content_type: None,
            body: b"",
        }
        .build();
        self.reg.next = None;
        let what = What::Register {
            unregister,
            authed: auth.is_some(),
        };
        self.start_request(branch, what, bytes, self.cfg.server)
            .await;
    }

    async fn on_register_response(&mut self, h: &Head, unregister: bool, authed: bool) {
        let code = h.status.unwrap_or(0);
        let now = Instant::now();
        match code {
            200..=299 if unregister => {
                info!(device = %self.id, "unregistered");
                self.reg.unregistered = true;
                self.set_registered(false);
            }
            200..=299 => {
                let granted = h
                    .expires
                    .or_else(|| {
                        h.contact
                            .as_ref()
                            .and_then(|c| c.param("expires")?.parse().ok())
                    })
                    .filter(|e| *e > 0)
                    .unwrap_or(self.cfg.expires);
                let first = !self.reg.registered;
                self.set_registered(true);
                self.reg.unregistered = false;
                self.reg.fresh = false;
                self.shared.device(self.index, |d| {
                    d.registrations += 1;
                    d.last_error = None;
                });
                // Refresh at 80 % of the granted time.
                let refresh =
                    Duration::from_millis(granted as u64 * 800).max(Duration::from_secs(1));
                self.reg.next = Some(now + refresh);
                if self.keepalive_at.is_none() {
                    self.keepalive_at = Some(now + self.cfg.keepalive);
                }
                if let (Some(after), false) = (self.cfg.alarm_after, self.alarm_raised) {
                    self.alarm_at.get_or_insert(now + after);
                }
                if let (Some(after), false) = (self.cfg.catalog_change_after, self.catalog_changed)
                {
                    self.catalog_change_at.get_or_insert(now + after);
                }
                if first {
                    info!(device = %self.id, expires = granted, "registered");
                } else {
                    debug!(device = %self.id, expires = granted, "registration refreshed");
                }
            }
            401 => {
                let ch = h.www_authenticate.as_deref().map(Challenge::parse);
                match ch {
                    Some(Ok(ch)) => {
                        if authed && self.reg.fresh && !ch.stale {
                            return self
                                .auth_failed(unregister, "401 again after answering the challenge")
                                .await;
                        }
                        if ch.stale {
                            debug!(device = %self.id, "stale nonce; answering the new challenge");
                        }
                        self.reg.challenge = Some(ch);
                        self.reg.fresh = true;
                        self.reg.nc = 0;
                        self.send_register(unregister).await;
                    }
                    _ => {
                        self.register_failed(unregister, "401 without a usable WWW-Authenticate")
                            .await
                    }
                }
            }
            403 => self.auth_failed(unregister, "403 Forbidden").await,
            _ => {
                let why = format!("{code} {}", reason_of(h));
                self.register_failed(unregister, &why).await
            }
        }
    }

    async fn auth_failed(&mut self, unregister: bool, why: &str) {
        if unregister {
            warn!(device = %self.id, why, "unregistration refused");
            self.reg.unregistered = true;
            return;
        }
        error!(
            device = %self.id,
            server = %self.cfg.server,
            why,
            "REGISTRATION REFUSED: authentication failed (wrong --password, or the platform does not know this device ID)"
        );
        self.shared.device(self.index, |d| d.register_failures += 1);
        self.note_error(&format!("authentication failed: {why}"));
        self.set_registered(false);
        self.reg.challenge = None;
        if self.cfg.exit_on_auth_failure {
            let _ = self
                .fatal
                .try_send(format!("device {}: authentication failed ({why})", self.id));
            self.reg.next = None;
        } else {
            self.reg.next = Some(Instant::now() + RETRY);
        }
    }

    async fn register_failed(&mut self, unregister: bool, why: &str) {
        if unregister {
            warn!(device = %self.id, why, "unregistration failed");
            self.reg.unregistered = true;
            return;
        }
        warn!(device = %self.id, why, "registration failed; retrying in 5 s");
        self.shared.device(self.index, |d| d.register_failures += 1);
        self.note_error(&format!("registration failed: {why}"));
        self.set_registered(false);
        self.reg.next = Some(Instant::now() + RETRY);
    }

    // ---- requests we originate ------------------------------------------

    /// A MESSAGE to the platform with a MANSCDP body.
    pub(crate) async fn send_manscdp(&mut self, body: Vec<u8>, what: What) {
        self.cseq += 1;
        let uri = self.platform_uri();
        let from = format!("sip:{}@{}", self.id, self.cfg.domain);
        let branch = gsip::branch();
        let bytes = Outgoing {
            method: "MESSAGE",
            uri: &uri,
            transport: self.cfg.transport,
            local: &self.local,
            branch: &branch,
            from: &from,
            from_tag: &gsip::token(10),
            to: &uri,
            to_tag: None,
            call_id: &gsip::token(20),
            cseq: self.cseq,
            contact: None,
            headers: &[("User-Agent", USER_AGENT)],
            content_type: Some("Application/MANSCDP+xml"),
            body: &body,
        }
        .build();
        self.start_request(branch, what, bytes, self.cfg.server)
            .await;
    }

    async fn send_keepalive(&mut self) {
        self.sn = self.sn.wrapping_add(1);
        let body = manscdp::keepalive(self.sn, &self.id, self.cfg.charset);
        self.shared.device(self.index, |d| d.keepalives_sent += 1);
        debug!(device = %self.id, sn = self.sn, "keepalive");
        self.send_manscdp(body, What::Keepalive).await;
    }

    /// The --alarm-after alarm: priority 1, video alarm (method 5), motion
    /// (type 2), from the device itself.
    async fn send_alarm(&mut self) {
        self.sn = self.sn.wrapping_add(1);
        let alarm = manscdp::Alarm {
            priority: "1".into(),
            method: "5".into(),
            time: device_time_with(self.cfg.clock_offset_secs),
            description: Some("移动侦测 (gb-sim)".into()),
            longitude: None,
            latitude: None,
            alarm_type: Some("2".into()),
        };
        let body = manscdp::alarm_notify(self.sn, &self.id, &alarm, self.cfg.charset);
        self.shared.device(self.index, |d| d.alarms_sent += 1);
        info!(device = %self.id, sn = self.sn, "alarm raised");
        // Subscribed: NOTIFY in the subscription; otherwise a MESSAGE.
        if !self.notify_kind("Alarm", &body).await {
            self.send_manscdp(body, What::Answer).await;
        }
    }

    async fn send_bye(&mut self, call_id: &str, d: &Dialog) {
        let cseq = d.cseq + 1;
        let branch = gsip::branch();
        let bytes = Outgoing {
            method: "BYE",
            uri: &d.target,
            transport: self.cfg.transport,
            local: &self.local,
            branch: &branch,
            from: &d.local_uri,
            from_tag: &d.our_tag,
            to: &d.remote_uri,
            to_tag: d.remote_tag.as_deref(),
            call_id,
            cseq,
            contact: None,
            headers: &[("User-Agent", USER_AGENT)],
            content_type: None,
            body: b"",
        }
        .build();
        info!(device = %self.id, channel = %d.channel, call_id, "BYE sent");
        self.start_request(branch, What::Bye, bytes, d.peer).await;
    }

    // ---- incoming ---------------------------------------------------------

    async fn on_packet(&mut self, raw: &[u8], src: SocketAddr) {
        let msg = match wire::parse(raw, MAX_MSG) {
            Ok(m) => m,
            Err(e) => {
                warn!(device = %self.id, %src, error = %e, len = raw.len(), "unparsable SIP message");
                let (code, reason) = e.status();
                if let Some(r) = wire::raw_response(raw, code, reason) {
                    self.send_to(&r, src).await;
                }
                return;
            }
        };
        let h = match Head::parse(&msg) {
            Ok(h) => h,
            Err(e) => {
                warn!(device = %self.id, %src, error = %e, "SIP message with bad headers");
                if let Some(r) = wire::raw_response(raw, 400, "Bad Request") {
                    self.send_to(&r, src).await;
                }
                return;
            }
        };
        if h.status.is_some() {
            self.on_response(&h).await;
        } else {
            self.on_request(&h, src).await;
        }
    }

    async fn on_response(&mut self, h: &Head) {
        let code = h.status.unwrap_or(0);
        let Some(branch) = h.via.branch.clone() else {
            return;
        };
        if code < 200 {
            if let Some(p) = self.pending.get_mut(&branch) {
                p.next = None;
            }
            return;
        }
        let Some(p) = self.pending.remove(&branch) else {
            debug!(device = %self.id, code, "response to no pending request (retransmission?)");
            return;
        };
        match p.what {
            What::Register { unregister, authed } => {
                self.on_register_response(h, unregister, authed).await
            }
            What::Keepalive => {
                if (200..300).contains(&code) {
                    self.keepalive_failures = 0;
                    self.shared.device(self.index, |d| d.keepalives_ok += 1);
                } else {
                    warn!(device = %self.id, code, reason = %reason_of(h), "keepalive refused; registering again");
                    self.reregister_now();
                }
            }
            What::Answer => {
                if code >= 300 {
                    warn!(device = %self.id, code, reason = %reason_of(h), "the platform refused a query answer");
                }
            }
            What::Bye => debug!(device = %self.id, code, "BYE answered"),
            What::Notify { call_id } => self.on_notify_response(&call_id, code),
        }
    }

    fn reregister_now(&mut self) {
        if self.closing {
            return;
        }
        self.keepalive_failures = 0;
        self.set_registered(false);
        if !self
            .pending
            .values()
            .any(|p| matches!(p.what, What::Register { .. }))
        {
            self.reg.next = Some(Instant::now());
        }
    }

    /// Sends a response and remembers it for retransmitted requests.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn reply(
        &mut self,
        h: &Head,
        src: SocketAddr,
        code: u16,
        reason: &str,
        to_tag: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, &[u8])>,
    ) -> Vec<u8> {
        let r = gsip::response(h, src, code, reason, to_tag, headers, body);
        if code >= 200 {
            if let Some(b) = &h.via.branch {
                let key = format!("{b}|{}", h.cseq_method);
                self.answered
                    .insert(key, (r.clone(), Instant::now() + TIMEOUT));
            }
        }
        self.send_to(&r, src).await;
        r
    }

    async fn on_request(&mut self, h: &Head, src: SocketAddr) {
        let method = h.method.clone().unwrap_or_default();
        if method == "ACK" {
            return self.on_ack(h);
        }
        let now = Instant::now();
        self.answered.retain(|_, (_, exp)| *exp > now);
        if let Some(b) = &h.via.branch {
            let key = format!("{b}|{}", h.cseq_method);
            if let Some((r, _)) = self.answered.get(&key) {
                let r = r.clone();
                debug!(device = %self.id, %method, "retransmitted request; answer sent again");
                self.send_to(&r, src).await;
                return;
            }
        }
        let tag = self.tag.clone();
        match method.as_str() {
            "MESSAGE" => self.on_message(h, src).await,
            "INVITE" => self.on_invite(h, src).await,
            "BYE" => self.on_bye(h, src).await,
            "CANCEL" => {
                // INVITEs are answered at once: nothing left to cancel.
                let code = if self.dialogs.contains_key(&h.call_id) {
                    (200, "OK")
                } else {
                    (481, "Call/Transaction Does Not Exist")
                };
                self.reply(h, src, code.0, code.1, &tag, &[], None).await;
            }
            "INFO" => self.on_info(h, src).await,
            "SUBSCRIBE" => self.on_subscribe(h, src).await,
            "OPTIONS" | "NOTIFY" => {
                self.reply(h, src, 200, "OK", &tag, &[], None).await;
            }
            _ => {
                self.reply(
                    h,
                    src,
                    405,
                    "Method Not Allowed",
                    &tag,
                    &[(
                        "Allow",
                        "INVITE, ACK, BYE, CANCEL, MESSAGE, OPTIONS, INFO, NOTIFY",
                    )],
                    None,
                )
                .await;
            }
        }
    }

    async fn on_message(&mut self, h: &Head, src: SocketAddr) {
        let tag = self.tag.clone();
        if h.content_type.is_some() && !h.is_manscdp() {
            self.reply(h, src, 415, "Unsupported Media Type", &tag, &[], None)
                .await;
            return;
        }
        let msg = match manscdp::parse(&h.body) {
            Ok(m) => m,
            Err(e) => {
                warn!(device = %self.id, error = %e, "bad MANSCDP body from the platform");
                let reason = format!("Bad Request ({})", e.reason());
                self.reply(h, src, 400, &reason, &tag, &[], None).await;
                return;
            }
        };
        self.reply(h, src, 200, "OK", &tag, &[], None).await;
        if msg.kind == Kind::Control {
            let mut what = format!("{} {}", msg.cmd_type, msg.device_id);
            if let manscdp::Body::Other(leaves) = &msg.body {
                for (n, v) in leaves {
                    if !matches!(n.as_str(), "CmdType" | "SN" | "DeviceID") {
                        what.push_str(&format!(" {n}={v}"));
                    }
                }
            }
            info!(device = %self.id, control = %what, "control received");
            let leaves = manscdp::leaf_paths(&h.body).unwrap_or_default();
            let answer = msg.cmd_type.eq_ignore_ascii_case("DeviceControl")
                && self.shared.device(self.index, |d| {
                    d.controls.push(what);
                    let st = d.control_state.entry(msg.device_id.clone()).or_default();
                    st.apply(&leaves)
                });
            if answer && !self.cfg.ignore_controls {
                let body = manscdp::device_control_response(
                    msg.sn,
                    &msg.device_id,
                    true,
                    self.cfg.charset,
                );
                self.send_manscdp(body, What::Answer).await;
            }
            return;
        }
        if msg.kind == Kind::Response && msg.cmd_type.eq_ignore_ascii_case("Alarm") {
            self.shared.device(self.index, |d| d.alarm_acks += 1);
            return;
        }
        if msg.kind != Kind::Query {
            debug!(device = %self.id, kind = msg.kind.as_str(), cmd = %msg.cmd_type, "MANSCDP message not acted on");
            return;
        }
        let cs = self.cfg.charset;
        let cmd = msg.cmd_type.to_ascii_lowercase();
        let bodies: Vec<Vec<u8>> = match cmd.as_str() {
            "catalog" => {
                let items = self.catalog_items();
                let sum = items.len() as u32;
                if items.is_empty() {
                    vec![manscdp::catalog_response(msg.sn, &self.id, 0, &[], cs)]
                } else {
                    items
                        .chunks(self.cfg.catalog_per_message.max(1))
                        .map(|c| manscdp::catalog_response(msg.sn, &self.id, sum, c, cs))
                        .collect()
                }
            }
            "deviceinfo" => {
                let info = DeviceInfo {
                    result: Some("OK".into()),
                    device_name: Some(format!("模拟设备{}", self.index + 1)),
                    manufacturer: Some("gb-sim".into()),
                    model: Some("SIM-IPC".into()),
                    firmware: Some(env!("CARGO_PKG_VERSION").into()),
                    channel: Some(self.channels.len() as u32),
                    extra: Vec::new(),
                };
                vec![manscdp::device_info_response(msg.sn, &self.id, &info, cs)]
            }
            "devicestatus" => {
                let st = DeviceStatus {
                    result: Some("OK".into()),
                    online: Some("ONLINE".into()),
                    status: Some("OK".into()),
                    encode: Some("ON".into()),
                    record: Some("OFF".into()),
                    device_time: Some(device_time_with(self.cfg.clock_offset_secs)),
                    ..DeviceStatus::default()
                };
                vec![manscdp::device_status_response(msg.sn, &self.id, &st, cs)]
            }
            "presetquery" => {
                // The presets set through DeviceControl on that target.
                let target = msg.device_id.clone();
                let set = self.shared.device(self.index, |d| {
                    d.control_state
                        .get(&target)
                        .map(|c| c.presets.clone())
                        .unwrap_or_default()
                });
                let presets: Vec<manscdp::Preset> = set
                    .iter()
                    .map(|p| manscdp::Preset {
                        id: p.to_string(),
                        name: Some(format!("预置位{p}")),
                    })
                    .collect();
                vec![manscdp::preset_query_response(
                    msg.sn, &target, &presets, cs,
                )]
            }
            "recordinfo" => {
                let leaf = |n: &str| match &msg.body {
                    manscdp::Body::Other(l) => l
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(n))
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default(),
                    _ => String::new(),
                };
                let items = self.record_index(
                    &msg.device_id,
                    &leaf("StartTime"),
                    &leaf("EndTime"),
                    &leaf("Type"),
                );
                let sum = items.len() as u32;
                let name = Some("gb-sim");
                let mut parts: Vec<Vec<u8>> = if items.is_empty() {
                    vec![manscdp::record_info_response(
                        msg.sn,
                        &msg.device_id,
                        name,
                        0,
                        &[],
                        cs,
                    )]
                } else {
                    items
                        .chunks(self.cfg.catalog_per_message.max(1))
                        .map(|c| {
                            manscdp::record_info_response(msg.sn, &msg.device_id, name, sum, c, cs)
                        })
                        .collect()
                };
                if self.cfg.records_drop_last_part && parts.len() > 1 {
                    parts.pop();
                }
                self.shared.device(self.index, |d| d.record_queries += 1);
                parts
            }
            _ => {
                debug!(device = %self.id, cmd = %msg.cmd_type, "query not simulated");
                return;
            }
        };
        debug!(device = %self.id, cmd = %msg.cmd_type, sn = msg.sn, messages = bodies.len(), "answering query");
        self.shared.device(self.index, |d| d.queries_answered += 1);
        for b in bodies {
            self.send_manscdp(b, What::Answer).await;
        }
    }

    /// The record index of `target` (a channel, or the device: then every
    /// channel's) overlapping `start`..`end`, of `record_type`: today (the
    /// date of the query's end), one recording every 10 minutes from
    /// 00:00, each as long as the media file.
    fn record_index(
        &self,
        target: &str,
        start: &str,
        end: &str,
        record_type: &str,
    ) -> Vec<RecordItem> {
        let targets: Vec<&String> = if target == self.id {
            self.channels.iter().collect()
        } else {
            self.channels.iter().filter(|c| *c == target).collect()
        };
        if !matches!(record_type, "" | "all" | "time") || end.len() < 10 {
            return Vec::new();
        }
        let date = &end[..10];
        let secs = self.cfg.media.media.as_ref().map_or(60, |m| {
            (m.aus.len() as u32)
                .div_ceil(self.cfg.media.fps.max(1))
                .max(1)
        });
        let hms = |t: u32| format!("{date}T{:02}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60);
        let frames = self.cfg.media.media.as_ref().map_or(0, |m| m.aus.len());
        let mut out = Vec::new();
        for ch in targets {
            for i in 0..self.cfg.records {
                let (s, e) = (hms(i * 600), hms(i * 600 + secs));
                if s.as_str() > end || e.as_str() < start {
                    continue;
                }
                out.push(RecordItem {
                    device_id: ch.clone(),
                    name: Some(format!("rec-{i}")),
                    file_path: Some(format!("/sd/{ch}/{i:03}.ps")),
                    address: Some("gb-sim".into()),
                    start_time: s,
                    end_time: e,
                    secrecy: Some("0".into()),
                    record_type: Some("time".into()),
                    recorder_id: None,
                    file_size: Some((frames * 4000).to_string()),
                });
            }
        }
        out
    }

    pub(crate) fn catalog_items(&self) -> Vec<CatalogItem> {
        let (ip, port) = match self.local.parse::<SocketAddr>() {
            Ok(a) => (a.ip().to_string(), a.port().to_string()),
            Err(_) => (self.cfg.bind.to_string(), String::new()),
        };
        self.channels
            .iter()
            .enumerate()
            .map(|(i, ch)| CatalogItem {
                device_id: ch.clone(),
                name: Some(format!("通道{}", i + 1)),
                manufacturer: Some("gb-sim".into()),
                model: Some("SIM-IPC".into()),
                owner: Some("Owner".into()),
                civil_code: Some(self.id.chars().take(6).collect()),
                address: Some("模拟地址".into()),
                parental: Some("0".into()),
                parent_id: Some(self.id.clone()),
                safety_way: Some("0".into()),
                register_way: Some("1".into()),
                secrecy: Some("0".into()),
                ip_address: Some(ip.clone()),
                port: Some(port.clone()),
                status: Some("ON".into()),
                longitude: Some("116.397".into()),
                latitude: Some("39.909".into()),
                ..CatalogItem::default()
            })
            .collect()
    }

    // ---- INVITE dialogs ---------------------------------------------------

    async fn on_invite(&mut self, h: &Head, src: SocketAddr) {
        if let Some(d) = self.dialogs.get(&h.call_id) {
            if h.to.tag.is_some() && !d.refused {
                // re-INVITE (session refresh): same answer.
                let (tag, sdp) = (d.our_tag.clone(), d.answer_sdp.clone());
                let contact = format!("<{}>", self.contact_for(&d.channel.clone()));
                self.reply(
                    h,
                    src,
                    200,
                    "OK",
                    &tag,
                    &[("Contact", &contact)],
                    Some(("APPLICATION/SDP", sdp.as_bytes())),
                )
                .await;
            } else {
                let r = d.response.clone();
                self.send_to(&r, src).await;
            }
            return;
        }
        let our_tag = gsip::token(10);
        let channel = gsip::NameAddr::parse(&h.uri)
            .map(|n| n.user)
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| h.to.user.clone());
        let trying = gsip::response(h, src, 100, "Trying", &our_tag, &[], None);
        self.send_to(&trying, src).await;
        if channel != self.id && !self.channels.contains(&channel) {
            warn!(device = %self.id, %channel, "INVITE for an unknown channel");
            return self.refuse(h, src, &our_tag, 404, "Not Found").await;
        }
        if let Some(code) = self.cfg.invite_response.filter(|c| *c >= 300) {
            info!(device = %self.id, %channel, code, "INVITE refused (--invite-response)");
            return self.refuse(h, src, &our_tag, code, reason_for(code)).await;
        }
        let offer = match sdp::parse(&h.body) {
            Ok(o) if o.port != 0 => o,
            Ok(_) => {
                warn!(device = %self.id, %channel, "SDP offer with port 0");
                return self
                    .refuse(h, src, &our_tag, 488, "Not Acceptable Here")
                    .await;
            }
            Err(e) => {
                warn!(device = %self.id, %channel, error = %e, "unusable SDP offer");
                return self
                    .refuse(h, src, &our_tag, 488, "Not Acceptable Here")
                    .await;
            }
        };
        let Some(ip) = offer.ip else {
            return self
                .refuse(h, src, &our_tag, 488, "Not Acceptable Here")
                .await;
        };
        let dest = SocketAddr::new(ip, offer.port);
        let tcp = offer.tcp();
        let setup = if tcp {
            match our_setup(offer.setup.as_deref()) {
                Ok(s) => Some(s),
                Err(e) => {
                    warn!(device = %self.id, %channel, error = %e, "unusable SDP offer");
                    return self
                        .refuse(h, src, &our_tag, 488, "Not Acceptable Here")
                        .await;
                }
            }
        } else {
            None
        };
        let y = match (self.cfg.wrong_ssrc, offer.ssrc()) {
            (Some(w), _) => format!("{w:010}"),
            (None, Some(_)) => offer.y.clone().unwrap_or_default().trim().to_string(),
            (None, None) => {
                // No (usable) y=: pick our own.
                self.next_y += 1;
                format!(
                    "{:010}",
                    100_000_000 + (self.index as u32) * 1000 + self.next_y
                )
            }
        };
        let ssrc = sdp::y_to_ssrc(&y).unwrap_or(0);
        let bind = SocketAddr::new(self.cfg.bind, 0);
        let prepared: std::io::Result<(Link, SocketAddr, &str)> = async {
            Ok(match setup {
                None => {
                    let s = UdpSocket::bind(bind).await?;
                    let local = s.local_addr()?;
                    (Link::Udp { sock: s, dest }, local, "udp")
                }
                Some("active") => {
                    // The platform listens; we connect from a port of ours.
                    let probe = std::net::TcpListener::bind(bind)?;
                    let local = probe.local_addr()?;
                    drop(probe);
                    (Link::Connect { local, dest }, local, "tcp-passive")
                }
                Some(_) => {
                    let listener = TcpListener::bind(bind).await?;
                    let local = listener.local_addr()?;
                    (Link::Accept { listener }, local, "tcp-active")
                }
            })
        }
        .await;
        let (link, local, transport) = match prepared {
            Ok(x) => x,
            Err(e) => {
                error!(device = %self.id, error = %e, "cannot open a media socket");
                return self
                    .refuse(h, src, &our_tag, 500, "Server Internal Error")
                    .await;
            }
        };
        let codec = self
            .cfg
            .media
            .media
            .as_ref()
            .map(|m| m.codec)
            .unwrap_or(Codec::H264);
        let session = offer.session.clone().unwrap_or_else(|| "Play".into());
        // srtp-sm4 (RFC 4568): the offer's SM4 key, and the key we send
        // with (our first --key, else the offered one) in the answer.
        let enc = self.cfg.media.encryption.as_ref();
        let srtp = enc.is_some_and(|e| e.profile == crate::crypt::Profile::SrtpSm4);
        let mut offered = None;
        for c in &offer.crypto {
            if let Ok(Some((tag, k))) = MasterKey::from_crypto_attr(c) {
                offered = Some((tag, k));
                break;
            }
        }
        let mut session_key = None;
        let mut crypto = None;
        if srtp {
            let own = enc.and_then(|e| {
                e.keys.iter().find_map(|(_, k)| match k {
                    crate::crypt::SimKey::Srtp(m) => Some(m.clone()),
                    crate::crypt::SimKey::Nal(_) => None,
                })
            });
            let Some(key) = own
                .clone()
                .or_else(|| offered.as_ref().map(|(_, k)| k.clone()))
            else {
                warn!(device = %self.id, %channel, "srtp-sm4 without --key and no SM4 key offered");
                return self
                    .refuse(h, src, &our_tag, 488, "Not Acceptable Here")
                    .await;
            };
            if offered.is_some() || self.cfg.media.answer_crypto {
                let tag = offered.as_ref().map_or(1, |(t, _)| *t);
                crypto = Some(key.crypto_attr(tag).trim_start_matches("a=").to_string());
            }
            session_key = Some(key);
        }
        let answer = answer_sdp(&AnswerSpec {
            channel: &channel,
            ip: local.ip(),
            port: local.port(),
            proto: if offer.proto.is_empty() {
                "RTP/AVP"
            } else {
                &offer.proto
            },
            session: &session,
            y: &y,
            setup,
            codec,
            fps: self.cfg.media.fps,
            crypto,
        });
        let contact = format!("<{}>", self.contact_for(&channel));
        let response = self
            .reply(
                h,
                src,
                200,
                "OK",
                &our_tag,
                &[("Contact", &contact), ("User-Agent", USER_AGENT)],
                Some(("APPLICATION/SDP", answer.as_bytes())),
            )
            .await;
        let report = self.shared.add_stream(StreamReport {
            device: self.id.clone(),
            channel: channel.clone(),
            call_id: h.call_id.clone(),
            y: y.clone(),
            ssrc,
            transport: transport.into(),
            destination: dest.to_string(),
            local: local.to_string(),
            codec: self
                .cfg
                .media
                .media
                .as_ref()
                .map(|m| m.codec_name().to_string()),
            state: "answered".into(),
            started: now_ms(),
            ..StreamReport::default()
        });
        info!(device = %self.id, %channel, %y, transport, %dest, "INVITE answered");
        let now = Instant::now();
        let udp = self.cfg.transport == Transport::Udp;
        self.dialogs.insert(
            h.call_id.clone(),
            Dialog {
                channel,
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
                response,
                answer_sdp: answer,
                // Without an ACK the stream never starts (Timer H).
                retx: Some((
                    if udp { now + T1 } else { now + TIMEOUT },
                    T1,
                    now + TIMEOUT,
                )),
                refused: false,
                link: Some((link, ssrc)),
                report: Some(report),
                stop: None,
                session_key,
                history: session.eq_ignore_ascii_case("Playback")
                    || session.eq_ignore_ascii_case("Download"),
                playback: session.eq_ignore_ascii_case("Playback"),
                pace: None,
            },
        );
    }

    fn contact_for(&self, channel: &str) -> String {
        format!("sip:{channel}@{}", self.local)
    }

    /// A final error answer to an INVITE, kept until its ACK.
    async fn refuse(&mut self, h: &Head, src: SocketAddr, tag: &str, code: u16, reason: &str) {
        let response = self.reply(h, src, code, reason, tag, &[], None).await;
        let now = Instant::now();
        let udp = self.cfg.transport == Transport::Udp;
        self.dialogs.insert(
            h.call_id.clone(),
            Dialog {
                channel: h.to.user.clone(),
                our_tag: tag.to_string(),
                remote_tag: h.from.tag.clone(),
                remote_uri: h.from.uri.clone(),
                local_uri: h.to.uri.clone(),
                target: h.from.uri.clone(),
                peer: src,
                cseq: 0,
                response,
                answer_sdp: String::new(),
                retx: Some((
                    if udp { now + T1 } else { now + TIMEOUT },
                    T1,
                    now + TIMEOUT,
                )),
                refused: true,
                link: None,
                report: None,
                stop: None,
                session_key: None,
                history: false,
                playback: false,
                pace: None,
            },
        );
    }

    fn on_ack(&mut self, h: &Head) {
        let Some(d) = self.dialogs.get_mut(&h.call_id) else {
            return;
        };
        d.retx = None;
        if d.refused {
            self.dialogs.remove(&h.call_id);
            return;
        }
        let Some((link, ssrc)) = d.link.take() else {
            return; // ACK retransmission
        };
        let (stop_tx, stop_rx) = oneshot::channel();
        d.stop = Some(stop_tx);
        let index = d.report.unwrap_or(usize::MAX);
        let label = format!("{}/{}", self.id, d.channel);
        info!(device = %self.id, channel = %d.channel, "ACK received; streaming");
        self.shared.stream(index, |r| {
            r.state = "connecting".into();
            r.started = now_ms();
        });
        let pace = d.playback.then(|| {
            let (tx, rx) = watch::channel(Pace::default());
            d.pace = Some(tx);
            rx
        });
        let spec = stream::Spec {
            index,
            call_id: h.call_id.clone(),
            label,
            ssrc,
            link,
            session_key: d.session_key.clone(),
            history: d.history,
            pace,
        };
        let task = tokio::spawn(stream::run(
            spec,
            self.cfg.media.clone(),
            self.shared.clone(),
            stop_rx,
            self.events_tx.clone(),
        ));
        self.tasks.retain(|t| !t.is_finished());
        self.tasks.push(task);
    }

    /// INFO in a dialog: MANSRTSP (pause, play with scale or range,
    /// teardown) paces a playback; other INFOs are acknowledged.
    async fn on_info(&mut self, h: &Head, src: SocketAddr) {
        let tag = self.tag.clone();
        let Some(d) = self.dialogs.get(&h.call_id) else {
            let r = (481, "Call/Transaction Does Not Exist");
            self.reply(h, src, r.0, r.1, &tag, &[], None).await;
            return;
        };
        let (our_tag, report) = (d.our_tag.clone(), d.report);
        let mansrtsp = h
            .content_type
            .as_deref()
            .is_some_and(|c| c.eq_ignore_ascii_case("application/mansrtsp"));
        if !mansrtsp {
            self.reply(h, src, 200, "OK", &our_tag, &[], None).await;
            return;
        }
        let body = String::from_utf8_lossy(&h.body).into_owned();
        if self.cfg.ignore_mansrtsp {
            info!(device = %self.id, "MANSRTSP INFO ignored (--ignore-mansrtsp)");
            if let Some(i) = report {
                self.shared.stream(i, |r| r.mansrtsp.push("ignored".into()));
            }
            return;
        }
        let req = match gb28181::mansrtsp::Request::parse(&body) {
            Ok(r) => r,
            Err(e) => {
                warn!(device = %self.id, error = %e, "bad MANSRTSP body");
                let reason = format!("Bad Request ({e})");
                self.reply(h, src, 400, &reason, &our_tag, &[], None).await;
                return;
            }
        };
        use gb28181::mansrtsp::Control;
        let mut label = String::new();
        if let Some(tx) = self.dialogs.get(&h.call_id).and_then(|d| d.pace.as_ref()) {
            tx.send_modify(|p| match req.control {
                Control::Pause => {
                    p.paused = true;
                    label = "PAUSE".into();
                }
                Control::Play { scale, seek } => {
                    p.paused = false;
                    label = "PLAY".into();
                    if let Some(s) = scale {
                        p.scale = s;
                        label.push_str(&format!(" Scale={s}"));
                    }
                    if let Some(t) = seek {
                        p.seek = (p.seek.0 + 1, t);
                        label.push_str(&format!(" Range=npt={t}-"));
                    }
                }
                Control::Teardown => label = "TEARDOWN".into(),
            });
        } else {
            // Live, download, or not started yet: nothing to pace.
            self.reply(
                h,
                src,
                455,
                "Method Not Valid In This State",
                &our_tag,
                &[],
                None,
            )
            .await;
            return;
        }
        info!(device = %self.id, control = %label, cseq = req.cseq, "MANSRTSP");
        if let Some(i) = report {
            self.shared.stream(i, |r| r.mansrtsp.push(label));
        }
        self.reply(h, src, 200, "OK", &our_tag, &[], None).await;
    }

    async fn on_bye(&mut self, h: &Head, src: SocketAddr) {
        let tag = self.tag.clone();
        let Some(mut d) = self.dialogs.remove(&h.call_id) else {
            self.reply(
                h,
                src,
                481,
                "Call/Transaction Does Not Exist",
                &tag,
                &[],
                None,
            )
            .await;
            return;
        };
        self.reply(h, src, 200, "OK", &d.our_tag, &[], None).await;
        info!(device = %self.id, channel = %d.channel, "BYE from the platform");
        self.end_dialog(&mut d, "BYE from the platform", false);
    }

    /// Stops a dialog's stream (or marks it never started).
    /// `drain`: the device sends BYE next; let the platform read what is
    /// in flight first.
    fn end_dialog(&self, d: &mut Dialog, reason: &str, drain: bool) {
        if let Some(stop) = d.stop.take() {
            let _ = stop.send(Stop {
                reason: reason.to_string(),
                drain,
            });
        } else if let Some(i) = d.report {
            self.shared.stream(i, |r| r.end(reason));
        }
    }

    async fn on_stream_event(&mut self, e: StreamEvent) {
        let call_id = match e {
            StreamEvent::ByeAfter { call_id } | StreamEvent::Ended { call_id } => call_id,
            StreamEvent::FileEnd { call_id } => {
                // MediaStatus 121 for the dialog's channel; the platform
                // sends BYE.
                if let Some(channel) = self.dialogs.get(&call_id).map(|d| d.channel.clone()) {
                    self.sn = self.sn.wrapping_add(1);
                    let body = manscdp::media_status(self.sn, &channel, "121", self.cfg.charset);
                    info!(device = %self.id, %channel, "end of the file: MediaStatus 121");
                    self.send_manscdp(body, What::Answer).await;
                }
                return;
            }
        };
        // A stream that ended by itself (bye-after, broken connection):
        // the device ends the dialog.
        if let Some(d) = self.dialogs.remove(&call_id) {
            self.send_bye(&call_id, &d).await;
        }
    }

    // ---- timers ---------------------------------------------------------

    async fn on_timer(&mut self) {
        let now = Instant::now();
        // Our requests: retransmissions and timeouts.
        let mut resend = Vec::new();
        let mut expired = Vec::new();
        for (b, p) in self.pending.iter_mut() {
            if now >= p.deadline {
                expired.push(b.clone());
            } else if p.next.is_some_and(|n| now >= n) {
                p.interval = (p.interval * 2).min(T2);
                p.next = Some(now + p.interval);
                resend.push((p.bytes.clone(), p.dest));
            }
        }
        for (bytes, dest) in resend {
            self.send_to(&bytes, dest).await;
        }
        for b in expired {
            let Some(p) = self.pending.remove(&b) else {
                continue;
            };
            match p.what {
                What::Register { unregister, .. } => {
                    self.register_failed(unregister, "no answer (timeout)")
                        .await
                }
                What::Keepalive => {
                    self.keepalive_failures += 1;
                    warn!(device = %self.id, failures = self.keepalive_failures, "keepalive not answered");
                    if self.keepalive_failures >= 3 {
                        self.reregister_now();
                    }
                }
                What::Answer => warn!(device = %self.id, "query answer not acknowledged"),
                What::Bye => debug!(device = %self.id, "BYE not answered"),
                What::Notify { call_id } => self.on_notify_response(&call_id, 0),
            }
        }
        // Final INVITE responses waiting for their ACK.
        let mut resend = Vec::new();
        let mut no_ack = Vec::new();
        let udp = self.cfg.transport == Transport::Udp;
        for (c, d) in self.dialogs.iter_mut() {
            let Some((next, interval, deadline)) = d.retx else {
                continue;
            };
            if now >= deadline {
                no_ack.push(c.clone());
            } else if udp && now >= next {
                let i = (interval * 2).min(T2);
                d.retx = Some((now + i, i, deadline));
                resend.push((d.response.clone(), d.peer));
            }
        }
        for (bytes, dest) in resend {
            self.send_to(&bytes, dest).await;
        }
        for c in no_ack {
            if let Some(mut d) = self.dialogs.remove(&c) {
                if !d.refused {
                    warn!(device = %self.id, channel = %d.channel, "no ACK for our 200 OK; stream dropped");
                    self.end_dialog(&mut d, "no ACK from the platform", false);
                }
            }
        }
        if self.closing {
            return;
        }
        if self.reconnect_at.is_some_and(|t| now >= t) {
            self.reconnect_at = None;
            match self.open().await {
                Ok(()) => {
                    info!(device = %self.id, local = %self.local, "SIP TCP connected");
                    self.reg.next = Some(now);
                }
                Err(e) => {
                    warn!(device = %self.id, error = %e, "SIP TCP connect failed; retrying in 5 s");
                    self.note_error(&format!("connect: {e}"));
                    self.reconnect_at = Some(now + RETRY);
                }
            }
        }
        if self.reg.next.is_some_and(|t| now >= t) {
            self.send_register(false).await;
        }
        if self.keepalive_at.is_some_and(|t| now >= t) {
            self.keepalive_at = Some(now + self.cfg.keepalive);
            if self.reg.registered {
                self.send_keepalive().await;
            }
        }
        if self.alarm_at.is_some_and(|t| now >= t) && self.reg.registered {
            self.alarm_at = None;
            self.alarm_raised = true;
            self.send_alarm().await;
        }
        if self.catalog_change_at.is_some_and(|t| now >= t) && self.reg.registered {
            self.catalog_change_at = None;
            self.catalog_changed = true;
            self.send_catalog_change().await;
        }
        self.subscription_timers(now).await;
    }

    // ---- exit -------------------------------------------------------------

    async fn shutdown(&mut self) {
        self.closing = true;
        // Stop the streams (letting the platform read what is in flight),
        // then BYE the confirmed dialogs (a dialog is confirmed once its
        // ACK started the stream).
        let mut byes = Vec::new();
        let calls: Vec<String> = self.dialogs.keys().cloned().collect();
        for c in calls {
            let Some(mut d) = self.dialogs.remove(&c) else {
                continue;
            };
            if d.refused {
                continue;
            }
            let confirmed = d.stop.is_some();
            self.end_dialog(&mut d, "simulator shutting down", true);
            if confirmed {
                byes.push((c, d));
            }
        }
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(4), t).await;
        }
        for (c, d) in byes {
            self.send_bye(&c, &d).await;
        }
        // Unregister: a 401 on the way is answered by on_packet.
        self.pending
            .retain(|_, p| !matches!(p.what, What::Register { .. } | What::Keepalive));
        if self.reg.registered {
            self.reg.unregistered = false;
            self.send_register(true).await;
        } else {
            self.reg.unregistered = true;
        }
        let limit = Instant::now() + Duration::from_secs(3);
        while Instant::now() < limit
            && (!self.reg.unregistered || self.pending.values().any(|p| p.what == What::Bye))
        {
            let deadline = self.next_deadline().map_or(limit, |d| d.min(limit));
            let ev = tokio::select! {
                r = self.sock.recv(self.cfg.server) => Event::Sip(r),
                _ = tokio::time::sleep_until(deadline.into()) => Event::Timer,
            };
            match ev {
                Event::Sip(r) => self.on_sip(r).await,
                _ => self.on_timer().await,
            }
        }
        if !self.reg.unregistered {
            warn!(device = %self.id, "unregistration not confirmed");
        }
        self.set_registered(false);
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(3), t).await;
        }
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// The reason phrase of a response.
fn reason_of(h: &Head) -> String {
    h.reason
        .trim_start_matches(|c: char| c.is_ascii_digit() || c == ' ')
        .to_string()
}

/// Reason phrases for `--invite-response`.
pub fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        480 => "Temporarily Unavailable",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        500 => "Server Internal Error",
        503 => "Service Unavailable",
        600 => "Busy Everywhere",
        603 => "Decline",
        _ => "Refused",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(proto: &'a str, setup: Option<&'a str>) -> AnswerSpec<'a> {
        AnswerSpec {
            channel: "34020000001310000001",
            ip: "127.0.0.1".parse().unwrap(),
            port: 40000,
            proto,
            session: "Play",
            y: "0200000001",
            setup,
            codec: Codec::H264,
            fps: 25,
            crypto: None,
        }
    }

    #[test]
    fn udp_answer_matches_the_gb_shape() {
        let a = answer_sdp(&spec("RTP/AVP", None));
        assert_eq!(
            a,
            "v=0\r\no=34020000001310000001 0 0 IN IP4 127.0.0.1\r\ns=Play\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=video 40000 RTP/AVP 96\r\na=sendonly\r\na=rtpmap:96 PS/90000\r\ny=0200000001\r\nf=v/2/4/25/1/4000a///\r\n"
        );
        // The platform's reader takes it.
        let p = sdp::parse(a.as_bytes()).unwrap();
        assert_eq!(p.port, 40000);
        assert_eq!(p.ssrc(), Some(200_000_001));
        assert!(!p.tcp());
        assert_eq!(p.payloads, vec![(96, "PS".to_string(), 90000)]);
        assert_eq!(p.setup, None);
    }

    #[test]
    fn tcp_answers_take_the_opposite_role() {
        for (offer, ours) in [
            (Some("passive"), "active"),
            (None, "active"),
            (Some("active"), "passive"),
        ] {
            let role = our_setup(offer).unwrap();
            assert_eq!(role, ours);
            let mut s = spec("TCP/RTP/AVP", Some(role));
            s.codec = Codec::H265;
            let a = answer_sdp(&s);
            assert!(a.contains(&format!("a=setup:{ours}\r\na=connection:new\r\n")));
            assert!(a.contains("m=video 40000 TCP/RTP/AVP 96\r\n"));
            assert!(a.contains("f=v/5/4/25/1/4000a///\r\n"));
            let p = sdp::parse(a.as_bytes()).unwrap();
            assert!(p.tcp());
            assert_eq!(p.setup.as_deref(), Some(ours));
        }
        assert!(our_setup(Some("holdconn")).is_err());
    }

    #[test]
    fn answer_to_a_real_offer() {
        // The gateway's own offer builder, read back like on_invite does.
        let offer = sdp::Offer {
            platform_id: "34020000002000000001",
            kind: sdp::SessionKind::Play,
            channel: "34020000001310000001",
            media_ip: "127.0.0.1".parse().unwrap(),
            port: 34000,
            transport: sdp::MediaTransport::TcpActive,
            y: "0200000007",
            range: None,
            download_speed: None,
            crypto: None,
        }
        .build();
        let o = sdp::parse(offer.as_bytes()).unwrap();
        let role = our_setup(o.setup.as_deref()).unwrap();
        let y = o.y.clone().unwrap();
        let mut s = spec(&o.proto, Some(role));
        s.y = &y;
        let a = answer_sdp(&s);
        assert!(a.contains("a=setup:passive\r\n"));
        assert!(a.contains("y=0200000007\r\n"));
    }

    #[test]
    fn device_time_format() {
        let t = device_time_with(0);
        assert_eq!(t.len(), 19, "{t}");
        assert_eq!(&t[4..5], "-");
        assert_eq!(&t[10..11], "T");
        assert!(t.starts_with("20"));
    }
}
