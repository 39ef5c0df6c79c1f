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
        let sock = std::net::UdpSocket::bind(bind)?;
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
