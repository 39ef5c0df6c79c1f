//! Forwarding sinks: PS/RTP to a destination with its own SSRC and
//! sequence, optionally re-encrypted with srtp-sm4.

use std::net::SocketAddr;

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
}

/// Re-sends the stream's RTP payloads (PS or raw, as received, in order)
/// to a destination under its own SSRC and sequence numbers.
pub struct Forward {
    pub(super) sock: std::net::UdpSocket,
    pub(super) dest: SocketAddr,
    pub(super) ssrc: u32,
    pub(super) seq: u16,
    pub(super) stats: ForwardStats,
    pub(super) srtp: Option<SrtpSender>,
    pub(super) enc_buf: Vec<u8>,
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
            dest,
            ssrc,
            seq: (ssrc as u16) ^ 0x5a5a,
            stats: ForwardStats {
                dest: dest.to_string(),
                ssrc,
                mode: "relay",
                ..ForwardStats::default()
            },
            srtp: None,
            enc_buf: Vec::new(),
        })
    }

    /// Sends srtp-sm4 (this master key) instead of RTP.
    pub fn with_srtp(mut self, key: &MasterKey) -> Forward {
        self.stats.srtp = Some(key.check_value());
        self.srtp = Some(SrtpSender::new(key));
        self
    }

    pub(super) fn send(
        &mut self,
        pt: u8,
        ts: u32,
        marker: bool,
        payload: &[u8],
        buf: &mut Vec<u8>,
    ) {
        if self.stats.waiting_key {
            // A PS key frame starts with a pack carrying the system header.
            if !starts_key_frame(payload) {
                return;
            }
            self.stats.waiting_key = false;
        }
        buf.clear();
        rtp::RtpHeader {
            marker,
            pt,
            seq: self.seq,
            ts,
            ssrc: self.ssrc,
        }
        .write(buf);
        buf.extend_from_slice(payload);
        self.seq = self.seq.wrapping_add(1);
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
