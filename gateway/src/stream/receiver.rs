//! The receiver task: binds the media socket (UDP, or RFC 4571 over TCP
//! listening or connecting), feeds the pipeline, batches UDP receives
//! with recvmmsg.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use gb28181::sdp::MediaTransport;
use media::framing::Rfc4571Decoder;
use tokio::{
    io::AsyncReadExt,
    net::{TcpListener, TcpStream, UdpSocket},
    sync::oneshot,
};
use tracing::{info, warn};

use super::*;

/// A media socket reserved before the INVITE goes out.
pub enum Bound {
    Udp(std::net::UdpSocket),
    TcpListen(std::net::TcpListener),
    /// We connect to the device once its answer names the address.
    TcpActive,
}

/// Binds the media port for a session (so the port is ours before the
/// device is told about it).
pub fn bind(ip: IpAddr, port: u16, t: MediaTransport) -> std::io::Result<Bound> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = SocketAddr::new(ip, port);
    match t {
        MediaTransport::Udp => {
            let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
            // UDP loss breaks pictures: several MiB of receive buffer.
            let _ = s.set_recv_buffer_size(8 << 20);
            s.set_nonblocking(true)?;
            s.bind(&addr.into())?;
            Ok(Bound::Udp(s.into()))
        }
        MediaTransport::TcpPassive => {
            let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            s.set_reuse_address(true)?;
            s.set_nonblocking(true)?;
            s.bind(&addr.into())?;
            s.listen(4)?;
            Ok(Bound::TcpListen(s.into()))
        }
        MediaTransport::TcpActive => Ok(Bound::TcpActive),
    }
}

/// A running receiver.
pub struct Receiver {
    pub(super) stop: Option<oneshot::Sender<()>>,
    pub stats: Arc<Mutex<MediaStats>>,
    pub task: tokio::task::JoinHandle<()>,
    /// Adds and removes forwarding legs while it runs.
    pub legs: Legs,
}

impl Receiver {
    /// Stops it; the recording is flushed by the task.
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    pub fn snapshot(&self) -> MediaStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Runs the pipeline on the bound socket until stopped.
pub fn start(bound: Bound, remote: Option<SocketAddr>, mut pipe: Pipeline) -> Receiver {
    let (tx, mut rx) = oneshot::channel::<()>();
    let legs = pipe.legs();
    let stats = Arc::new(Mutex::new(MediaStats::default()));
    let shared = stats.clone();
    let t0 = Instant::now();
    let task = tokio::spawn(async move {
        let now_ns = move || t0.elapsed().as_nanos() as u64;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        match bound {
            Bound::Udp(s) => {
                let Ok(sock) = UdpSocket::from_std(s) else {
                    return;
                };
                // Batched receives: up to 16 datagrams per recvmmsg(2),
                // 8 KiB each (RTP from cameras fits an MTU; longer ones are
                // counted and dropped).
                let mut bufs = vec![vec![0u8; 8192]; 16];
                let mut lens = [0usize; 16];
                let mut srcs = [None; 16];
                loop {
                    tokio::select! {
                        r = sock.readable() => {
                            if r.is_err() {
                                break;
                            }
                            loop {
                                let got = sock.try_io(tokio::io::Interest::READABLE, || {
                                    use std::os::fd::AsFd;
                                    crate::sys::net::recv_mmsg_from(sock.as_fd(), &mut bufs, &mut lens, &mut srcs)
                                });
                                match got {
                                    Ok(n) => {
                                        let t = now_ns();
                                        let mut batch = Vec::with_capacity(n);
                                        for ((b, l), src) in bufs.iter().zip(&lens[..n]).zip(&srcs) {
                                            match b.get(..*l) {
                                                Some(d) => batch.push((*src, d)),
                                                None => {
                                                    pipe.source(*src);
                                                    pipe.oversized();
                                                }
                                            }
                                        }
                                        pipe.packets(&batch, t);
                                        if n < bufs.len() {
                                            break;
                                        }
                                    }
                                    Err(_) => break,
                                }
                            }
                        }
                        _ = tick.tick() => { pipe.tick(now_ns()); pipe.publish(&shared); }
                        _ = &mut rx => {
                            // Ended (BYE, API): what already arrived is
                            // the device's; take it before closing.
                            use std::os::fd::AsFd;
                            while let Ok(n) = crate::sys::net::recv_mmsg(sock.as_fd(), &mut bufs, &mut lens) {
                                let t = now_ns();
                                for (b, l) in bufs.iter().zip(&lens[..n]) {
                                    match b.get(..*l) {
                                        Some(d) => pipe.packet(d, t),
                                        None => pipe.oversized(),
                                    }
                                }
                            }
                            break;
                        }
                    }
                }
            }
            Bound::TcpListen(l) => {
                let Ok(l) = TcpListener::from_std(l) else {
                    return;
                };
                let stream = loop {
                    tokio::select! {
                        a = l.accept() => if let Ok((s, peer)) = a {
                            pipe.stats.peer = Some(peer.to_string());
                            info!(stream = %pipe.id, %peer, "media TCP connection accepted");
                            break Some(s);
                        },
                        _ = tick.tick() => pipe.publish(&shared),
                        _ = &mut rx => break None,
                    }
                };
                if let Some(s) = stream {
                    tcp_loop(s, &mut pipe, &shared, &mut rx, now_ns).await;
                }
            }
            Bound::TcpActive => {
                let mut stream = None;
                if let Some(addr) = remote {
                    for attempt in 1..=3 {
                        match tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(addr))
                            .await
                        {
                            Ok(Ok(s)) => {
                                pipe.stats.peer = Some(addr.to_string());
                                stream = Some(s);
                                break;
                            }
                            _ => {
                                warn!(stream = %pipe.id, %addr, attempt, "media TCP connect failed");
                                tokio::select! {
                                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                                    _ = &mut rx => return,
                                }
                            }
                        }
                    }
                }
                if let Some(s) = stream {
                    tcp_loop(s, &mut pipe, &shared, &mut rx, now_ns).await;
                }
            }
        }
        pipe.finish();
        pipe.publish(&shared);
    });
    Receiver {
        stop: Some(tx),
        stats,
        task,
        legs,
    }
}

pub(super) async fn tcp_loop(
    mut s: TcpStream,
    pipe: &mut Pipeline,
    shared: &Mutex<MediaStats>,
    rx: &mut oneshot::Receiver<()>,
    now_ns: impl Fn() -> u64,
) {
    // RTP packets from cameras are ~1.4 KB; a length prefix beyond 32 KiB
    // is a broken or hostile peer: counted, and the connection closed.
    let mut dec = Rfc4571Decoder::with_max_len(32 * 1024);
    let mut buf = vec![0u8; 64 * 1024];
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    // After the stop request: keep reading what the peer already sent
    // until it closes or is idle for a second.
    let mut stopping = false;
    loop {
        if stopping {
            match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {
                    dec.push(&buf[..n]);
                    while let Ok(Some(p)) = dec.next_packet() {
                        pipe.packet(&p, now_ns());
                    }
                    continue;
                }
                _ => break,
            }
        }
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    dec.push(&buf[..n]);
                    loop {
                        match dec.next_packet() {
                            Ok(Some(p)) => pipe.packet(&p, now_ns()),
                            Ok(None) => break,
                            Err(e) => {
                                pipe.stats.garbage += 1;
                                warn!(stream = %pipe.id, error = %e, "media TCP framing broken; closing the connection");
                                return;
                            }
                        }
                    }
                }
            },
            _ = tick.tick() => { pipe.tick(now_ns()); pipe.publish(shared); }
            _ = &mut *rx => stopping = true,
        }
    }
}
