//! SIP over UDP and TCP: sockets, framing, parsing off the core task, and
//! the way back to a device (its source address over UDP, or its own TCP
//! connection).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::{Context as _, Result};
use gb28181::{
    sip::{Head, Transport},
    wire,
};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::mpsc,
};
use tracing::{debug, info, warn};

use crate::metrics::SipMetrics;

/// How to reach a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    Udp { sock: usize, peer: SocketAddr },
    Tcp { conn: u64, peer: SocketAddr },
}

impl Dest {
    pub fn peer(&self) -> SocketAddr {
        match self {
            Dest::Udp { peer, .. } | Dest::Tcp { peer, .. } => *peer,
        }
    }
    pub fn transport(&self) -> Transport {
        match self {
            Dest::Udp { .. } => Transport::Udp,
            Dest::Tcp { .. } => Transport::Tcp,
        }
    }
}

/// A parsed message for the core.
pub struct Inbound {
    pub head: Head,
    pub from: Dest,
    /// Our address it arrived on.
    pub local: SocketAddr,
}

/// Open TCP connections: id -> (writer queue, peer).
type TcpConns = Arc<Mutex<HashMap<u64, (mpsc::Sender<Vec<u8>>, SocketAddr)>>>;

/// Sending side, shared by the core and the receive tasks.
#[derive(Clone)]
pub struct Outbound {
    pub udp: Arc<Vec<(Arc<UdpSocket>, SocketAddr)>>,
    tcp: TcpConns,
    metrics: SipMetrics,
}

impl Outbound {
    /// Sends without waiting; a full socket or queue drops the message
    /// (counted) and the transaction layer retransmits.
    pub fn send(&self, dest: Dest, bytes: Vec<u8>) -> bool {
        match dest {
            Dest::Udp { sock, peer } => match self.udp.get(sock) {
                Some((s, _)) => match s.try_send_to(&bytes, peer) {
                    Ok(_) => true,
                    Err(e) => {
                        debug!(%peer, error = %e, "UDP send failed");
                        self.metrics.dropped.with_label_values(&["udp_send"]).inc();
                        false
                    }
                },
                None => false,
            },
            Dest::Tcp { conn, .. } => {
                let tx = self
                    .tcp
                    .lock()
                    .ok()
                    .and_then(|m| m.get(&conn).map(|(t, _)| t.clone()));
                match tx.map(|t| t.try_send(bytes)) {
                    Some(Ok(())) => true,
                    _ => {
                        self.metrics.dropped.with_label_values(&["tcp_send"]).inc();
                        false
                    }
                }
            }
        }
    }

    /// Whether a TCP connection is still open.
    pub fn tcp_alive(&self, conn: u64) -> bool {
        self.tcp
            .lock()
            .map(|m| m.contains_key(&conn))
            .unwrap_or(false)
    }

    /// The UDP socket bound to `local` (or a wildcard of its family).
    pub fn udp_for(&self, local: SocketAddr) -> Option<usize> {
        self.udp.iter().position(|(_, a)| *a == local).or_else(|| {
            self.udp.iter().position(|(_, a)| {
                a.port() == local.port()
                    && a.ip().is_unspecified()
                    && a.is_ipv4() == local.is_ipv4()
            })
        })
    }
}

pub struct Limits {
    pub max_message: usize,
    pub tcp_idle: Duration,
    pub max_tcp: usize,
}

fn udp_socket(addr: SocketAddr) -> Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    // Registration storms after a power cut arrive in bursts.
    let _ = s.set_recv_buffer_size(4 << 20);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())
        .with_context(|| format!("binding SIP UDP {addr}"))?;
    Ok(UdpSocket::from_std(s.into())?)
}

fn tcp_listener(addr: SocketAddr) -> Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())
        .with_context(|| format!("binding SIP TCP {addr}"))?;
    s.listen(1024)?;
    Ok(TcpListener::from_std(s.into())?)
}

/// Binds everything and starts the receive tasks. Returns the sending side
/// and the actual bound addresses (port 0 resolved).
pub async fn start(
    listen: &[SocketAddr],
    udp: bool,
    tcp: bool,
    limits: Limits,
    inbound: mpsc::Sender<Inbound>,
    metrics: SipMetrics,
) -> Result<(Outbound, Vec<SocketAddr>)> {
    let mut socks = Vec::new();
    let mut bound = Vec::new();
    let mut listeners = Vec::new();
    for addr in listen {
        let mut addr = *addr;
        if udp {
            let s = udp_socket(addr)?;
            addr = s.local_addr()?;
            socks.push((Arc::new(s), addr));
        }
        if tcp {
            let l = tcp_listener(addr)?;
            addr = l.local_addr()?;
            listeners.push(l);
        }
        info!(%addr, udp, tcp, "SIP listening");
        bound.push(addr);
    }
    let out = Outbound {
        udp: Arc::new(socks),
        tcp: Arc::new(Mutex::new(HashMap::new())),
        metrics: metrics.clone(),
    };
    let limits = Arc::new(limits);
    for i in 0..out.udp.len() {
        let (o, inbound, limits) = (out.clone(), inbound.clone(), limits.clone());
        tokio::spawn(async move { udp_loop(i, o, inbound, limits).await });
    }
    let next_id = Arc::new(AtomicU64::new(1));
    for l in listeners {
        let (o, inbound, limits, ids) = (
            out.clone(),
            inbound.clone(),
            limits.clone(),
            next_id.clone(),
        );
        tokio::spawn(async move { accept_loop(l, o, inbound, limits, ids).await });
    }
    Ok((out, bound))
}

/// Parses one message; answers what cannot be parsed (400/501/513) where
/// there is something to answer to, and counts it.
fn parse(raw: &[u8], max: usize, metrics: &SipMetrics) -> Result<Head, Option<Vec<u8>>> {
    // The parsers are fuzzed and must not panic; should one still do, it
    // costs this message, not the receive task (and every later message).
    let parsed = std::panic::catch_unwind(|| wire::parse(raw, max).map(|m| Head::parse(&m)));
    let Ok(parsed) = parsed else {
        metrics.parse_errors.with_label_values(&["panic"]).inc();
        tracing::error!("SIP parser panicked on a message; dropped (please report)");
        return Err(None);
    };
    match parsed {
        Ok(Ok(mut h)) => {
            if h.status.is_some() {
                if let Some(r) = wire::reason_phrase(raw) {
                    h.reason = r;
                }
            }
            Ok(h)
        }
        Ok(Err(e)) => {
            metrics.parse_errors.with_label_values(&["header"]).inc();
            debug!(error = %e, "SIP message with bad headers");
            Err(wire::raw_response(raw, 400, &format!("Bad Request ({e})")))
        }
        Err(e) => {
            metrics.parse_errors.with_label_values(&[e.reason()]).inc();
            let (code, reason) = e.status();
            debug!(error = %e, "unparseable SIP message");
            Err(wire::raw_response(raw, code, reason))
        }
    }
}

async fn udp_loop(i: usize, out: Outbound, inbound: mpsc::Sender<Inbound>, limits: Arc<Limits>) {
    let (sock, local) = out.udp[i].clone();
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // ICMP errors surface here on Linux; keep serving.
                debug!(error = %e, "UDP receive error");
                continue;
            }
        };
        let from = Dest::Udp { sock: i, peer };
        let raw = &buf[..n];
        if raw.iter().all(|b| matches!(b, b'\r' | b'\n' | 0)) {
            continue; // keep-alive pings
        }
        match parse(raw, limits.max_message, &out.metrics) {
            Ok(head) => {
                if inbound.try_send(Inbound { head, from, local }).is_err() {
                    out.metrics.dropped.with_label_values(&["overload"]).inc();
                }
            }
            Err(Some(resp)) => {
                out.send(from, resp);
            }
            Err(None) => {}
        }
    }
}

async fn accept_loop(
    l: TcpListener,
    out: Outbound,
    inbound: mpsc::Sender<Inbound>,
    limits: Arc<Limits>,
    ids: Arc<AtomicU64>,
) {
    loop {
        let (stream, peer) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "SIP TCP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let count = out.tcp.lock().map(|m| m.len()).unwrap_or(0);
        if count >= limits.max_tcp {
            out.metrics.dropped.with_label_values(&["tcp_limit"]).inc();
            drop(stream);
            continue;
        }
        let id = ids.fetch_add(1, Ordering::Relaxed);
        let (o, inbound, limits) = (out.clone(), inbound.clone(), limits.clone());
        tokio::spawn(async move { connection(id, stream, peer, o, inbound, limits).await });
    }
}

async fn connection(
    id: u64,
    stream: TcpStream,
    peer: SocketAddr,
    out: Outbound,
    inbound: mpsc::Sender<Inbound>,
    limits: Arc<Limits>,
) {
    let _ = stream.set_nodelay(true);
    let local = match stream.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(256);
    if let Ok(mut m) = out.tcp.lock() {
        m.insert(id, (tx, peer));
        out.metrics.tcp_connections.set(m.len() as i64);
    }
    let writer = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
    });
    let from = Dest::Tcp { conn: id, peer };
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    'conn: loop {
        let n = match tokio::time::timeout(limits.tcp_idle, rd.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => n,
            Err(_) => {
                debug!(%peer, "SIP TCP connection idle, closing");
                break;
            }
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            match wire::frame_len(&buf, limits.max_message) {
                Ok(Some(len)) => {
                    let msg: Vec<u8> = buf.drain(..len).collect();
                    if msg.iter().all(|b| matches!(b, b'\r' | b'\n')) {
                        continue; // RFC 5626 ping
                    }
                    match parse(&msg, limits.max_message, &out.metrics) {
                        Ok(head) => {
                            if inbound.send(Inbound { head, from, local }).await.is_err() {
                                break 'conn;
                            }
                        }
                        Err(Some(resp)) => {
                            out.send(from, resp);
                        }
                        Err(None) => {}
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    // The stream cannot be re-synchronised: answer if we
                    // can, then close.
                    out.metrics
                        .parse_errors
                        .with_label_values(&[e.reason()])
                        .inc();
                    let (code, reason) = e.status();
                    if let Some(r) = wire::raw_response(&buf, code, reason) {
                        out.send(from, r);
                    }
                    warn!(%peer, error = %e, "closing SIP TCP connection");
                    break 'conn;
                }
            }
        }
    }
    if let Ok(mut m) = out.tcp.lock() {
        m.remove(&id);
        out.metrics.tcp_connections.set(m.len() as i64);
    }
    // Let queued replies drain, then stop the writer.
    let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
}

/// The local IP the kernel would use to reach `peer` (for Via/Contact when
/// listening on a wildcard address). No packet is sent.
pub fn local_ip_for(peer: SocketAddr) -> Option<std::net::IpAddr> {
    let bind: SocketAddr = if peer.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = std::net::UdpSocket::bind(bind).ok()?;
    s.connect(peer).ok()?;
    s.local_addr().ok().map(|a| a.ip())
}
