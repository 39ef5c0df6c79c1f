//! Builds Ethernet frames carrying RTP over UDP over IPv4/IPv6, with VLAN
//! tags, IP options, IPv6 extension headers, fragments, CSRCs, RTP header
//! extensions and padding, for BPF_PROG_TEST_RUN fixtures.

use std::net::IpAddr;

#[derive(Clone, Debug)]
pub struct Rtp {
    pub seq: u16,
    pub ts: u32,
    pub ssrc: u32,
    pub pt: u8,
    pub marker: bool,
    pub version: u8,
    pub csrcs: u8,
    /// Extension header with this many 32-bit words.
    pub ext_words: Option<u16>,
    /// Padding bytes (the last one holds the count).
    pub padding: u8,
    pub payload: usize,
}

impl Rtp {
    pub fn new(seq: u16, ssrc: u32) -> Self {
        Rtp {
            seq,
            ts: seq as u32 * 3600,
            ssrc,
            pt: 96,
            marker: false,
            version: 2,
            csrcs: 0,
            ext_words: None,
            padding: 0,
            payload: 100,
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut b = vec![
            (self.version << 6)
                | if self.padding > 0 { 0x20 } else { 0 }
                | if self.ext_words.is_some() { 0x10 } else { 0 }
                | (self.csrcs & 0x0f),
            (if self.marker { 0x80 } else { 0 }) | (self.pt & 0x7f),
        ];
        b.extend_from_slice(&self.seq.to_be_bytes());
        b.extend_from_slice(&self.ts.to_be_bytes());
        b.extend_from_slice(&self.ssrc.to_be_bytes());
        for i in 0..self.csrcs as u32 {
            b.extend_from_slice(&(1000 + i).to_be_bytes());
        }
        if let Some(w) = self.ext_words {
            b.extend_from_slice(&[0xbe, 0xde]);
            b.extend_from_slice(&w.to_be_bytes());
            b.extend(std::iter::repeat_n(0xab, w as usize * 4));
        }
        b.extend(std::iter::repeat_n(0x55, self.payload));
        if self.padding > 0 {
            b.extend(std::iter::repeat_n(0, self.padding as usize - 1));
            b.push(self.padding);
        }
        b
    }
}

/// A UDP datagram in an Ethernet frame.
#[derive(Clone, Debug)]
pub struct Frame {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    /// VLAN TPIDs, outermost first (0x88a8 / 0x8100).
    pub vlans: Vec<u16>,
    /// IPv4 options length (multiple of 4).
    pub ip_options: usize,
    /// IPv6: a hop-by-hop and a destination-options header.
    pub v6_ext: bool,
    /// IPv4 fragment offset (8-byte units) and more-fragments flag; for IPv6 a fragment header.
    pub frag_offset: u16,
    pub more_fragments: bool,
    /// Override of the UDP length field.
    pub udp_len: Option<u16>,
    /// IP protocol / next header (17 = UDP).
    pub proto: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn udp(dst: &str, dport: u16, payload: Vec<u8>) -> Self {
        let dst: IpAddr = dst.parse().expect("address");
        let src: IpAddr = if dst.is_ipv4() {
            "198.18.0.2".parse().unwrap()
        } else {
            "2001:db8::2".parse().unwrap()
        };
        Frame {
            src,
            dst,
            sport: 40000,
            dport,
            vlans: vec![],
            ip_options: 0,
            v6_ext: false,
            frag_offset: 0,
            more_fragments: false,
            udp_len: None,
            proto: 17,
            payload,
        }
    }

    pub fn rtp(dst: &str, dport: u16, rtp: &Rtp) -> Self {
        Self::udp(dst, dport, rtp.bytes())
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        for tpid in &self.vlans {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&[0x00, 0x64]); // VLAN 100
        }
        let mut udp = Vec::with_capacity(8 + self.payload.len());
        udp.extend_from_slice(&self.sport.to_be_bytes());
        udp.extend_from_slice(&self.dport.to_be_bytes());
        let ulen = self.udp_len.unwrap_or((8 + self.payload.len()) as u16);
        udp.extend_from_slice(&ulen.to_be_bytes());
        udp.extend_from_slice(&[0, 0]); // checksum 0: not checked by XDP
        udp.extend_from_slice(&self.payload);
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                let ihl = 20 + self.ip_options;
                let total = (ihl + udp.len()) as u16;
                let frag =
                    (self.frag_offset & 0x1fff) | if self.more_fragments { 0x2000 } else { 0 };
                let mut h = vec![0x40 | (ihl / 4) as u8, 0];
                h.extend_from_slice(&total.to_be_bytes());
                h.extend_from_slice(&[0, 1]);
                h.extend_from_slice(&frag.to_be_bytes());
                h.extend_from_slice(&[64, self.proto, 0, 0]);
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
                h.extend(std::iter::repeat_n(1u8, self.ip_options)); // NOP options
                let c = checksum(&h);
                h[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&h);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&0x86ddu16.to_be_bytes());
                let mut ext = Vec::new();
                let mut first_nh = self.proto;
                let fragmented = self.frag_offset != 0 || self.more_fragments;
                // Chain built back to front.
                let mut chain: Vec<(u8, Vec<u8>)> = Vec::new();
                if self.v6_ext {
                    chain.push((0, vec![0, 0, 1, 4, 0, 0, 0, 0])); // hop-by-hop, PadN
                    chain.push((60, vec![0, 0, 1, 4, 0, 0, 0, 0])); // destination options
                }
                if fragmented {
                    let fo = (self.frag_offset << 3) | self.more_fragments as u16;
                    let mut h = vec![0, 0];
                    h.extend_from_slice(&fo.to_be_bytes());
                    h.extend_from_slice(&[0, 0, 0, 7]);
                    chain.push((44, h));
                }
                let mut next = self.proto;
                for (nh, mut h) in chain.into_iter().rev() {
                    h[0] = next;
                    let mut hh = h;
                    hh.extend_from_slice(&ext);
                    ext = hh;
                    next = nh;
                }
                if !ext.is_empty() {
                    first_nh = next;
                }
                let plen = (ext.len() + udp.len()) as u16;
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&plen.to_be_bytes());
                f.extend_from_slice(&[first_nh, 64]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
                f.extend_from_slice(&ext);
            }
            _ => panic!("mixed address families"),
        }
        f.extend_from_slice(&udp);
        f
    }
}

fn checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ARP request frame (not IP).
pub fn arp() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x08, 0x06]);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend(std::iter::repeat_n(0u8, 20));
    f
}

/// Offsets of the L3 header and the IP version of an Ethernet frame (after
/// up to two VLAN tags); IPv6 without extension headers.
fn l3(frame: &[u8]) -> (usize, u8) {
    let mut off = 12;
    while matches!(
        u16::from_be_bytes([frame[off], frame[off + 1]]),
        0x8100 | 0x88a8
    ) {
        off += 4;
    }
    (off + 2, frame[off + 2] >> 4)
}

/// One's-complement sum of big-endian 16-bit words (an odd byte padded).
fn sum16(data: &[u8]) -> u64 {
    data.chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u64)
        .sum()
}

fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The UDP checksum a frame's datagram should carry, computed from scratch
/// over the pseudo-header and the datagram with its checksum field zeroed.
pub fn udp_checksum(frame: &[u8]) -> u16 {
    let (ip, ver) = l3(frame);
    let (pseudo, l4) = if ver == 4 {
        let ihl = (frame[ip] & 0x0f) as usize * 4;
        let total = u16::from_be_bytes([frame[ip + 2], frame[ip + 3]]) as usize;
        let mut p = frame[ip + 12..ip + 20].to_vec();
        p.extend_from_slice(&[0, 17]);
        p.extend_from_slice(&((total - ihl) as u16).to_be_bytes());
        (p, ip + ihl)
    } else {
        let plen = u16::from_be_bytes([frame[ip + 4], frame[ip + 5]]);
        let mut p = frame[ip + 8..ip + 40].to_vec();
        p.extend_from_slice(&(plen as u32).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 17]);
        (p, ip + 40)
    };
    let ulen = u16::from_be_bytes([frame[l4 + 4], frame[l4 + 5]]) as usize;
    let mut udp = frame[l4..l4 + ulen].to_vec();
    udp[6] = 0;
    udp[7] = 0;
    match !fold(sum16(&pseudo) + sum16(&udp)) {
        0 => 0xffff,
        c => c,
    }
}

/// Sets a frame's UDP checksum (which [`Frame::bytes`] leaves 0).
pub fn fill_udp_checksum(frame: &mut [u8]) {
    let (ip, ver) = l3(frame);
    let l4 = if ver == 4 {
        ip + (frame[ip] & 0x0f) as usize * 4
    } else {
        ip + 40
    };
    let c = udp_checksum(frame);
    frame[l4 + 6..l4 + 8].copy_from_slice(&c.to_be_bytes());
}

/// Checks a frame's IPv4 header checksum and its UDP checksum (0 is
/// accepted for IPv4: no checksum), each computed from scratch.
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    let (ip, ver) = l3(frame);
    let l4 = if ver == 4 {
        let ihl = (frame[ip] & 0x0f) as usize * 4;
        if fold(sum16(&frame[ip..ip + ihl])) != 0xffff {
            return Err("bad IPv4 header checksum".into());
        }
        ip + ihl
    } else {
        ip + 40
    };
    let got = u16::from_be_bytes([frame[l4 + 6], frame[l4 + 7]]);
    if ver == 4 && got == 0 {
        return Ok(());
    }
    let want = udp_checksum(frame);
    if got != want {
        return Err(format!("UDP checksum {got:#06x}, should be {want:#06x}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtp_bytes_parse_back() {
        let r = Rtp {
            csrcs: 2,
            ext_words: Some(1),
            padding: 3,
            marker: true,
            ..Rtp::new(7, 9)
        };
        let b = r.bytes();
        let (h, range) = gateway_common::rtp::parse(&b).unwrap();
        assert_eq!((h.seq, h.ssrc, h.marker), (7, 9, true));
        assert_eq!(range.len(), 100);
    }

    #[test]
    fn frame_lengths() {
        let f = Frame::rtp("198.18.0.1", 30000, &Rtp::new(1, 1)).bytes();
        assert_eq!(f.len(), 14 + 20 + 8 + 112);
        let mut v = Frame::rtp("2001:db8::1", 30000, &Rtp::new(1, 1));
        v.vlans = vec![0x88a8, 0x8100];
        v.v6_ext = true;
        assert_eq!(v.bytes().len(), 14 + 8 + 40 + 16 + 8 + 112);
    }
}
