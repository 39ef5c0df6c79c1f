//! Forwarding sinks: PS/RTP to a destination with its own SSRC and
//! sequence, optionally re-encrypted with srtp-sm4.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc,
    },
};

use media::rtp::{self};
use serde::Serialize;

use gb35114::srtp::{MasterKey, SrtpSender};

#[derive(Debug, Clone, Default, Serialize)]
pub struct ForwardStats {
    pub dest: String,
    pub ssrc: u32,
    pub packets: u64,
    pub bytes: u64,
    pub errors: u64,
    /// Re-encrypted with srtp-sm4: the key's check value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub srtp: Option<String>,
    /// "relay" (payloads as received) or "remux" (PS re-muxed from the
    /// decrypted frames).
    pub mode: &'static str,
    /// A leg added at run time (cascade relay): its ID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leg: Option<String>,
    /// The leg waits for a key frame before its first packet.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub waiting_key: bool,
    /// "udp", or "tcp" (RFC 4571).
    pub transport: &'static str,
    /// Packets left to the kernel relay (it sent them).
    #[serde(skip_serializing_if = "is_zero")]
    pub kernel_sent: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What a relay leg shares with the control side, for the hand-over to
/// the kernel relay: the leg's sequence mapping (once it has started, every
/// packet goes out as input sequence number + delta, as the kernel's copies
/// do), the last input packet it sent, and from which input sequence
/// number on the kernel sends instead.
#[derive(Debug, Default)]
pub struct LegShared {
    /// `MAPPED` | delta.
    mapping: AtomicU32,
    /// Input sequence number of the last packet sent (with `mapping`).
    last_in: AtomicU32,
    /// 0: userspace sends everything that reaches it; `KERNEL_FROM` | seq:
    /// the kernel sends input sequence numbers from `seq` on.
    kernel: AtomicU32,
    /// Fed re-muxed (decrypted) media: the kernel cannot take it over.
    remuxed: AtomicBool,
}

const MAPPED: u32 = 1 << 31;
const KERNEL_FROM: u32 = 1 << 31;
const KERNEL_ALL: u32 = 1 << 30;

impl LegShared {
    /// (delta, last input sequence number sent) once the leg has started.
    pub fn mapping(&self) -> Option<(u16, u16)> {
        let m = self.mapping.load(Ordering::Acquire);
        (m & MAPPED != 0).then(|| (m as u16, self.last_in.load(Ordering::Acquire) as u16))
    }

    pub fn remuxed(&self) -> bool {
        self.remuxed.load(Ordering::Relaxed)
    }

    /// The kernel sends from input sequence number `seq` on (`None`: the
    /// leg sends everything that reaches it again).
    pub fn set_kernel_from(&self, seq: Option<u16>) {
        self.kernel
            .store(seq.map_or(0, |s| KERNEL_FROM | s as u32), Ordering::Release);
    }

    /// The kernel sends every packet of the leg (the TC modes after the
    /// start point): the leg sends none.
    pub fn set_kernel_all(&self) {
        self.kernel.store(KERNEL_ALL, Ordering::Release);
    }

    fn kernel_takes(&self, seq: u16) -> bool {
        let k = self.kernel.load(Ordering::Acquire);
        k & KERNEL_ALL != 0 || (k & KERNEL_FROM != 0 && (seq.wrapping_sub(k as u16) as i16) >= 0)
    }
}

/// Re-sends the stream's RTP payloads (PS or raw, as received, in order)
/// to a destination under its own SSRC and sequence numbers.
pub struct Forward {
    pub(super) sock: std::net::UdpSocket,
    /// A TCP leg (RFC 4571 framing): the connection and what it could not
    /// take yet. UDP legs and forwards leave it `None`.
    pub(super) tcp: Option<TcpOut>,
    pub(super) dest: SocketAddr,
    pub(super) ssrc: u32,
    pub(super) seq: u16,
    pub(super) stats: ForwardStats,
    pub(super) srtp: Option<SrtpSender>,
    pub(super) enc_buf: Vec<u8>,
    /// A relay leg's state shared with the control side.
    pub(super) shared: Option<Arc<LegShared>>,
    /// Output = input sequence number + delta (relay legs, once started).
    delta: Option<u16>,
}

impl Forward {
    pub fn new(dest: SocketAddr, ssrc: u32) -> std::io::Result<Forward> {
        let bind: SocketAddr = if dest.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        Forward::from_socket(std::net::UdpSocket::bind(bind)?, dest, ssrc)
    }

    /// A leg added at run time: sends from `sock` (a media port, so the
    /// egress counters see it), starting at the next key frame.
    pub fn leg(
        id: &str,
        sock: std::net::UdpSocket,
        dest: SocketAddr,
        ssrc: u32,
    ) -> std::io::Result<Forward> {
        let mut f = Forward::from_socket(sock, dest, ssrc)?;
        f.stats.leg = Some(id.to_string());
        f.stats.waiting_key = true;
        f.shared = Some(Arc::default());
        Ok(f)
    }

    /// The leg's state shared with the control side (relay legs).
    pub fn shared(&self) -> Option<Arc<LegShared>> {
        self.shared.clone()
    }

    /// A TCP leg (RFC 4571: each RTP packet after a 2-byte length) on an
    /// established connection, starting at the next key frame.
    pub fn tcp_leg(id: &str, stream: std::net::TcpStream, ssrc: u32) -> std::io::Result<Forward> {
        let dest = stream.peer_addr()?;
        let unbound: SocketAddr = if dest.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        // The UDP socket of a TCP leg is never used; bind it to nothing
        // routable so a mistake cannot send.
        let mut f = Forward::from_socket(std::net::UdpSocket::bind(unbound)?, dest, ssrc)?;
        stream.set_nonblocking(true)?;
        let _ = stream.set_nodelay(true);
        f.tcp = Some(TcpOut {
            stream,
            pending: Vec::new(),
        });
        f.stats.leg = Some(id.to_string());
        f.stats.waiting_key = true;
        f.stats.transport = "tcp";
        Ok(f)
    }

    fn from_socket(
        sock: std::net::UdpSocket,
        dest: SocketAddr,
        ssrc: u32,
    ) -> std::io::Result<Forward> {
        sock.set_nonblocking(true)?;
        Ok(Forward {
            sock,
            tcp: None,
            dest,
            ssrc,
            seq: (ssrc as u16) ^ 0x5a5a,
            stats: ForwardStats {
                dest: dest.to_string(),
                ssrc,
                mode: "relay",
                transport: "udp",
                ..ForwardStats::default()
            },
            srtp: None,
            enc_buf: Vec::new(),
            shared: None,
            delta: None,
        })
    }

    /// Sends srtp-sm4 (this master key) instead of RTP.
    pub fn with_srtp(mut self, key: &MasterKey) -> Forward {
        self.stats.srtp = Some(key.check_value());
        self.srtp = Some(SrtpSender::new(key));
        self
    }

    /// Sends one payload; `in_seq` is the input packet's sequence number
    /// (`None` for re-muxed packets, which have none).
    pub(super) fn send(
        &mut self,
        pt: u8,
        ts: u32,
        marker: bool,
        payload: &[u8],
        buf: &mut Vec<u8>,
        in_seq: Option<u16>,
    ) {
        if self.stats.waiting_key {
            // A PS key frame starts with a pack carrying the system header.
            if !starts_key_frame(payload) {
                return;
            }
            self.stats.waiting_key = false;
            if let (Some(sh), Some(s)) = (&self.shared, in_seq) {
                let d = self.seq.wrapping_sub(s);
                self.delta = Some(d);
                sh.last_in.store(s as u32, Ordering::Release);
                sh.mapping.store(MAPPED | d as u32, Ordering::Release);
            }
        }
        if let Some(sh) = &self.shared {
            match in_seq {
                Some(s) if sh.kernel_takes(s) => {
                    self.stats.kernel_sent += 1;
                    return;
                }
                Some(_) => {}
                None => sh.remuxed.store(true, Ordering::Relaxed),
            }
        }
        let seq = match (self.delta, in_seq) {
            (Some(d), Some(s)) => s.wrapping_add(d),
            _ => {
                let q = self.seq;
                self.seq = self.seq.wrapping_add(1);
                q
            }
        };
        buf.clear();
        rtp::RtpHeader {
            marker,
            pt,
            seq,
            ts,
            ssrc: self.ssrc,
        }
        .write(buf);
        buf.extend_from_slice(payload);
        if let (Some(sh), Some(s)) = (&self.shared, in_seq) {
            sh.last_in.store(s as u32, Ordering::Release);
        }
        let wire: &[u8] = match &mut self.srtp {
            Some(tx) => {
                self.enc_buf.clear();
                if tx.protect(buf, &mut self.enc_buf).is_err() {
                    self.stats.errors += 1;
                    return;
                }
                &self.enc_buf
            }
            None => buf,
        };
        if let Some(t) = &mut self.tcp {
            match t.send(wire) {
                Ok(()) => {
                    self.stats.packets += 1;
                    self.stats.bytes += wire.len() as u64;
                }
                Err(_) => self.stats.errors += 1,
            }
            return;
        }
        match self.sock.send_to(wire, self.dest) {
            Ok(n) => {
                self.stats.packets += 1;
                self.stats.bytes += n as u64;
            }
            Err(_) => self.stats.errors += 1,
        }
    }
}

/// Whether an RTP payload carries the start of a PS key frame (a pack
/// header followed by the system header, `00 00 01 BB`, which encoders
/// put only in key-frame packs) or a raw H.264/H.265 IDR, SPS or VPS.
pub(super) fn starts_key_frame(payload: &[u8]) -> bool {
    if payload.windows(4).any(|w| w == [0, 0, 1, 0xBB]) {
        return true;
    }
    // RFC 6184 / 7798 payloads: the first NAL unit header.
    match payload.first() {
        Some(b) if b & 0x1f == 5 || b & 0x1f == 7 => true, // H.264 IDR, SPS
        Some(b) => matches!((b >> 1) & 0x3f, 19 | 20 | 32 | 33), // H.265 IDR, VPS, SPS
        None => false,
    }
}

/// The sending side of a TCP leg. Writes never block the receiver: what
/// the connection does not take waits in `pending` (up to 1 MiB, about a
/// second of a 8 Mbit/s stream); beyond that, packets are dropped and
/// counted as errors, and a closed connection fails every send.
pub(super) struct TcpOut {
    stream: std::net::TcpStream,
    pending: Vec<u8>,
}

const TCP_PENDING_MAX: usize = 1 << 20;

impl TcpOut {
    fn send(&mut self, packet: &[u8]) -> std::io::Result<()> {
        use std::io::ErrorKind;
        let len = u16::try_from(packet.len())
            .map_err(|_| std::io::Error::new(ErrorKind::InvalidInput, "packet over 64 KiB"))?;
        if self.pending.len() + packet.len() + 2 > TCP_PENDING_MAX {
            self.flush()?;
            if self.pending.len() + packet.len() + 2 > TCP_PENDING_MAX {
                return Err(std::io::Error::new(ErrorKind::WouldBlock, "peer too slow"));
            }
        }
        self.pending.extend_from_slice(&len.to_be_bytes());
        self.pending.extend_from_slice(packet);
        self.flush()
    }

    fn flush(&mut self) -> std::io::Result<()> {
        use std::io::{ErrorKind, Write};
        while !self.pending.is_empty() {
            match self.stream.write(&self.pending) {
                Ok(0) => return Err(std::io::Error::new(ErrorKind::WriteZero, "closed")),
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
