//! Header parsing shared by the XDP and TC programs. Every read goes through
//! [`ptr_at`], which checks the access against the end of the packet data.

use core::mem::size_of;

use gateway_common::{
    counter,
    rtp::{self, RtpHeader},
    FAMILY_V4, FAMILY_V6,
};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_UDP: u8 = 17;
/// Largest offset at which the RTP padding byte is looked for; keeps the
/// verifier's view of the offset bounded (jumbo frames are below this).
const MAX_PAD_OFFSET: usize = 0x3fff;

/// The span of packet bytes a program may read: `[start, end)` are the
/// packet pointers from the context; `wire_len` is the packet's full length
/// (which for an skb can exceed the linear part that `end` covers).
#[derive(Clone, Copy)]
pub struct Packet {
    pub start: usize,
    pub end: usize,
    pub wire_len: usize,
}

/// Returns a pointer to a `T` at `off`, or `None` if it would read past the
/// end of the packet data.
#[inline(always)]
pub fn ptr_at<T>(p: &Packet, off: usize) -> Option<*const T> {
    if p.start + off + size_of::<T>() > p.end {
        return None;
    }
    Some((p.start + off) as *const T)
}

/// Mutable twin of [`ptr_at`] for the relay's rewrites.
#[inline(always)]
pub fn ptr_at_mut<T>(p: &Packet, off: usize) -> Option<*mut T> {
    if p.start + off + size_of::<T>() > p.end {
        return None;
    }
    Some((p.start + off) as *mut T)
}

#[inline(always)]
pub fn read<T: Copy>(p: &Packet, off: usize) -> Option<T> {
    // SAFETY: ptr_at checked that [off, off + size_of::<T>()) lies inside the
    // packet; read_unaligned copes with any alignment.
    ptr_at::<T>(p, off).map(|ptr| unsafe { core::ptr::read_unaligned(ptr) })
}

#[inline(always)]
fn be16(p: &Packet, off: usize) -> Option<u16> {
    read::<[u8; 2]>(p, off).map(u16::from_be_bytes)
}

/// A UDP datagram's addresses, ports and payload position.
pub struct Udp {
    pub family: u8,
    pub l3_off: usize,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub payload_off: usize,
    pub payload_len: usize,
    /// First fragment of a fragmented datagram: the payload is incomplete.
    pub partial: bool,
    /// VLAN tags in front of the IP header (0, 1 or 2) and the VLAN ID of
    /// the innermost one.
    pub vlan_tags: u8,
    pub vid: u16,
}

/// Parses Ethernet (with up to two VLAN tags), IPv4 (with options) or IPv6
/// (with extension headers) and UDP. On failure returns the global counter
/// that says why the packet is not a UDP datagram we can classify.
#[inline(always)]
pub fn udp(p: &Packet) -> Result<Udp, u32> {
    let mut off = ETH_HLEN;
    let mut proto = be16(p, 12).ok_or(counter::MALFORMED)?;
    let mut vlan_tags = 0u8;
    let mut vid = 0u16;
    // Two tags at most: 802.1ad outer + 802.1Q inner, or a single tag.
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        vid = be16(p, off).ok_or(counter::MALFORMED)? & 0x0fff;
        proto = be16(p, off + 2).ok_or(counter::MALFORMED)?;
        off += 4;
        vlan_tags = 1;
        if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
            vid = be16(p, off).ok_or(counter::MALFORMED)? & 0x0fff;
            proto = be16(p, off + 2).ok_or(counter::MALFORMED)?;
            off += 4;
            vlan_tags = 2;
        }
    }
    let l3_off = off;
    let mut out = Udp {
        family: 0,
        l3_off,
        src: [0; 16],
        dst: [0; 16],
        sport: 0,
        dport: 0,
        payload_off: 0,
        payload_len: 0,
        partial: false,
        vlan_tags,
        vid,
    };
    let ip_end;
    let l4_off;
    if proto == ETH_P_IP {
        let b0 = read::<u8>(p, off).ok_or(counter::MALFORMED)?;
        let ihl = ((b0 & 0x0f) as usize) * 4;
        if b0 >> 4 != 4 || ihl < 20 {
            return Err(counter::MALFORMED);
        }
        // Fixed part of the header; options are skipped, not read.
        let hdr = read::<[u8; 20]>(p, off).ok_or(counter::MALFORMED)?;
        let total = u16::from_be_bytes([hdr[2], hdr[3]]) as usize;
        if total < ihl || l3_off + total > p.wire_len {
            return Err(counter::MALFORMED);
        }
        let frag = u16::from_be_bytes([hdr[6], hdr[7]]);
        if frag & 0x1fff != 0 {
            return Err(counter::FRAGMENT);
        }
        out.partial = frag & 0x2000 != 0;
        if hdr[9] != IPPROTO_UDP {
            return Err(counter::NOT_UDP);
        }
        out.family = FAMILY_V4;
        out.src[..4].copy_from_slice(&hdr[12..16]);
        out.dst[..4].copy_from_slice(&hdr[16..20]);
        ip_end = l3_off + total;
        l4_off = l3_off + ihl;
    } else if proto == ETH_P_IPV6 {
        let hdr = read::<[u8; 40]>(p, off).ok_or(counter::MALFORMED)?;
        if hdr[0] >> 4 != 6 {
            return Err(counter::MALFORMED);
        }
        let plen = u16::from_be_bytes([hdr[4], hdr[5]]) as usize;
        if l3_off + 40 + plen > p.wire_len {
            return Err(counter::MALFORMED);
        }
        out.family = FAMILY_V6;
        out.src.copy_from_slice(&hdr[8..24]);
        out.dst.copy_from_slice(&hdr[24..40]);
        ip_end = l3_off + 40 + plen;
        let mut nh = hdr[6];
        let mut o = l3_off + 40;
        // A bounded walk over extension headers.
        let mut i = 0;
        while i < 6 {
            i += 1;
            match nh {
                // Hop-by-hop, routing, destination options.
                0 | 43 | 60 => {
                    let e = read::<[u8; 2]>(p, o).ok_or(counter::MALFORMED)?;
                    nh = e[0];
                    o += (e[1] as usize + 1) * 8;
                }
                // Fragment header.
                44 => {
                    let e = read::<[u8; 4]>(p, o).ok_or(counter::MALFORMED)?;
                    let fo = u16::from_be_bytes([e[2], e[3]]);
                    if fo & 0xfff8 != 0 {
                        return Err(counter::FRAGMENT);
                    }
                    out.partial = fo & 1 != 0;
                    nh = e[0];
                    o += 8;
                }
                // Authentication header.
                51 => {
                    let e = read::<[u8; 2]>(p, o).ok_or(counter::MALFORMED)?;
                    nh = e[0];
                    o += (e[1] as usize + 2) * 4;
                }
                _ => break,
            }
        }
        if nh != IPPROTO_UDP {
            return Err(counter::NOT_UDP);
        }
        l4_off = o;
    } else {
        return Err(counter::NOT_IP);
    }

    let u = read::<[u8; 8]>(p, l4_off).ok_or(counter::MALFORMED)?;
    let ulen = u16::from_be_bytes([u[4], u[5]]) as usize;
    if ulen < 8 || l4_off + 8 > ip_end {
        return Err(counter::MALFORMED);
    }
    let available = ip_end - l4_off;
    out.payload_len = if ulen <= available {
        ulen - 8
    } else if out.partial {
        available - 8
    } else {
        return Err(counter::MALFORMED);
    };
    out.sport = u16::from_be_bytes([u[0], u[1]]);
    out.dport = u16::from_be_bytes([u[2], u[3]]);
    out.payload_off = l4_off + 8;
    Ok(out)
}

/// Reads the byte at a variable offset near the end of the packet (the RTP
/// padding count). LLVM rewrites `start + off + 1 > end` into
/// `start + off >= end`, a form from which the verifier derives no readable
/// range; hiding `ptr + 1` behind an empty asm keeps the `>` comparison on a
/// pointer with constant offset 1, which gives the 1-byte range the read needs.
#[inline(always)]
fn last_byte(p: &Packet, off: usize) -> Option<u8> {
    let off = off & MAX_PAD_OFFSET;
    let mut ptr = p.start + off;
    // SAFETY: register moves onto themselves; they only make `ptr` and
    // `next` opaque to LLVM so it cannot re-derive one from the other.
    unsafe { core::arch::asm!("{0} = {0}", inout(reg) ptr) };
    let mut next = ptr + 1;
    // SAFETY: as above.
    unsafe { core::arch::asm!("{0} = {0}", inout(reg) next) };
    if next > p.end {
        return None;
    }
    // SAFETY: [ptr, ptr + 1) lies before p.end (checked just above).
    Some(unsafe { *(ptr as *const u8) })
}

/// Validates the RTP header of a UDP payload (version, CSRC list, extension,
/// padding) with the shared rules in `gateway_common::rtp`.
#[inline(always)]
pub fn rtp(p: &Packet, u: &Udp) -> Option<RtpHeader> {
    let fixed = read::<[u8; rtp::FIXED_LEN]>(p, u.payload_off)?;
    let h = rtp::parse_fixed(&fixed).ok()?;
    let b0 = fixed[0];
    let ext_words = if rtp::has_extension(b0) {
        // CSRC count <= 15, so this offset stays bounded.
        be16(p, u.payload_off + rtp::csrc_end(b0) + 2)
    } else {
        None
    };
    let pad = if rtp::has_padding(b0) && !u.partial && u.payload_len > 0 {
        let last = u.payload_off + u.payload_len - 1;
        if last > MAX_PAD_OFFSET {
            None
        } else {
            last_byte(p, last)
        }
    } else {
        None
    };
    if u.partial && rtp::has_padding(b0) {
        // The padding byte is in a later fragment: accept the header alone.
        rtp::check_lengths(b0 & !0x20, u.payload_len, ext_words, None).ok()?;
    } else {
        rtp::check_lengths(b0, u.payload_len, ext_words, pad).ok()?;
    }
    Some(h)
}

/// Recognises RTCP sharing a port with RTP (RFC 5761): packet types 200-204
/// appear as marker + payload type 72-76 in an RTP view of the header.
#[inline(always)]
pub fn is_rtcp(p: &Packet, u: &Udp) -> bool {
    match read::<[u8; 2]>(p, u.payload_off) {
        Some(b) => b[0] >> 6 == 2 && (200..=204).contains(&b[1]),
        None => false,
    }
}
