//! The kernel relay: rewrites a relayed RTP packet for one destination
//! (MAC, IP and UDP addresses and ports, RTP SSRC and sequence number) with
//! incremental checksum updates, and resolves the next hop with
//! `bpf_fib_lookup`. Used by XDP (one destination, XDP_TX or a devmap
//! redirect) and by TC ingress (a `bpf_clone_redirect` per destination).
//!
//! Every write goes through [`ptr_at_mut`], checked against the packet end;
//! all pointers are checked before the first byte is written.

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_FWD_DISABLED,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
    },
    cty::c_void,
    helpers::bpf_fib_lookup,
};
use gateway_common::{counter, csum::Incremental, RelayOut, FAMILY_V4};

use crate::parse::{ptr_at_mut, Packet, Udp};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_UDP: u8 = 17;
/// TTL / hop limit of relayed packets: the gateway sends them as an endpoint.
pub const RELAY_TTL: u8 = 64;

/// Where a packet goes next: the egress interface and the MAC addresses.
pub struct Hop {
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}

/// Resolves the next hop towards `out.dst` (from `out.src`) with the
/// kernel's FIB and neighbour table. `ctx` is the program context (xdp_md
/// or __sk_buff); `ifindex` the ingress interface; `tot_len` the IP packet
/// length (for the MTU check). On failure returns the counter naming why.
#[inline(always)]
pub fn fib(
    ctx: *mut c_void,
    family: u8,
    out: &RelayOut,
    ifindex: u32,
    tot_len: u16,
) -> Result<Hop, u32> {
    // SAFETY: a plain C struct of integers and unions of integers; all-zero
    // is a valid value.
    let mut fp: FibParams = unsafe { core::mem::zeroed() };
    fp.l4_protocol = IPPROTO_UDP;
    fp.sport = out.sport.to_be();
    fp.dport = out.dport.to_be();
    fp.ifindex = ifindex;
    fp.__bindgen_anon_1.tot_len = tot_len;
    if family == FAMILY_V4 {
        fp.family = AF_INET;
        fp.__bindgen_anon_3.ipv4_src =
            u32::from_ne_bytes([out.src[0], out.src[1], out.src[2], out.src[3]]);
        fp.__bindgen_anon_4.ipv4_dst =
            u32::from_ne_bytes([out.dst[0], out.dst[1], out.dst[2], out.dst[3]]);
    } else {
        fp.family = AF_INET6;
        let mut s = [0u32; 4];
        let mut d = [0u32; 4];
        let mut i = 0;
        while i < 4 {
            let o = i * 4;
            s[i] = u32::from_ne_bytes([out.src[o], out.src[o + 1], out.src[o + 2], out.src[o + 3]]);
            d[i] = u32::from_ne_bytes([out.dst[o], out.dst[o + 1], out.dst[o + 2], out.dst[o + 3]]);
            i += 1;
        }
        fp.__bindgen_anon_3.ipv6_src = s;
        fp.__bindgen_anon_4.ipv6_dst = d;
    }
    // SAFETY: `fp` is a valid, writable bpf_fib_lookup on our stack and the
    // size passed is its size; `ctx` is the program's own context.
    let rc = unsafe { bpf_fib_lookup(ctx, &mut fp, core::mem::size_of::<FibParams>() as i32, 0) };
    if rc < 0 {
        return Err(counter::RELAY_PASS_FIB);
    }
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {}
        BPF_FIB_LKUP_RET_NO_NEIGH => return Err(counter::RELAY_PASS_NO_NEIGH),
        BPF_FIB_LKUP_RET_FWD_DISABLED => return Err(counter::RELAY_PASS_FWD_DISABLED),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => return Err(counter::RELAY_PASS_MTU),
        _ => return Err(counter::RELAY_PASS_FIB),
    }
    // SAFETY: on success the kernel filled the MAC variant of the union.
    let macs = unsafe { fp.__bindgen_anon_6.__bindgen_anon_2 };
    Ok(Hop {
        ifindex: fp.ifindex,
        smac: macs.smac,
        dmac: macs.dmac,
    })
}

/// The header fields the relay rewrites, as they are (or are to be) in a
/// packet. Addresses in network order as in the packet; ports, SSRC and
/// sequence number in host order.
#[derive(Clone, Copy)]
pub struct Hdr {
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub ttl: u8,
    pub ssrc: u32,
    pub seq: u16,
    /// IPv4 header and UDP checksums as found (for restoring the original).
    pub ip_csum: [u8; 2],
    pub udp_csum: [u8; 2],
}

/// Pointers to the rewritten parts of a packet, all bounds-checked.
struct Parts {
    eth: *mut [u8; 12],
    /// The IP header; 40 bytes are checked for both families (an IPv4
    /// RTP packet has at least 20 + 8 + 12), so no path the verifier
    /// explores sees a shorter range than the other family needs.
    ip: *mut [u8; 40],
    udp: *mut [u8; 8],
    rtp: *mut [u8; 12],
}

/// Where the rewritten headers are in a parsed packet (offsets stay valid
/// when a helper invalidates the packet pointers).
#[derive(Clone, Copy)]
pub struct Layout {
    pub family: u8,
    pub l3_off: usize,
    pub l4_off: usize,
    pub payload_off: usize,
}

impl Layout {
    #[inline(always)]
    pub fn of(u: &Udp) -> Layout {
        Layout {
            family: u.family,
            l3_off: u.l3_off,
            l4_off: u.payload_off - 8,
            payload_off: u.payload_off,
        }
    }
}

/// Hides a value from LLVM's arithmetic (not from the verifier, which
/// still knows its range): each pointer below is then computed and checked
/// as `start + off`, the form the verifier follows.
#[inline(always)]
fn opaque(mut x: usize) -> usize {
    // SAFETY: a register move onto itself.
    unsafe { core::arch::asm!("{0} = {0}", inout(reg) x) };
    x
}

#[inline(always)]
fn parts(p: &Packet, u: &Layout) -> Option<Parts> {
    // Masks keep the offsets' ranges known to the verifier when the layout
    // comes through the stack (TC's per-output function): L3 is at 14, 18
    // or 22; the payload within the first 2 KiB.
    // The UDP header's offset is masked on its own (not derived from the
    // payload's), so LLVM cannot fold it into a negative packet offset.
    let l3 = opaque(u.l3_off) & 0x1f;
    let l4 = opaque(u.l4_off) & 0x7ff;
    let payload = opaque(u.payload_off) & 0x7ff;
    Some(Parts {
        eth: ptr_at_mut::<[u8; 12]>(p, 0)?,
        ip: ptr_at_mut::<[u8; 40]>(p, l3)?,
        udp: ptr_at_mut::<[u8; 8]>(p, l4)?,
        rtp: ptr_at_mut::<[u8; 12]>(p, payload)?,
    })
}

/// Reads the rewritable fields of a parsed RTP/UDP packet.
#[inline(always)]
pub fn read_hdr(p: &Packet, u: &Udp) -> Option<Hdr> {
    let pt = parts(p, &Layout::of(u))?;
    // SAFETY: every pointer was checked against the packet end in `parts`.
    unsafe {
        let eth = &*pt.eth;
        let udp = &*pt.udp;
        let rtp = &*pt.rtp;
        let mut h = Hdr {
            dmac: [eth[0], eth[1], eth[2], eth[3], eth[4], eth[5]],
            smac: [eth[6], eth[7], eth[8], eth[9], eth[10], eth[11]],
            src: u.src,
            dst: u.dst,
            sport: u.sport,
            dport: u.dport,
            ttl: 0,
            ssrc: u32::from_be_bytes([rtp[8], rtp[9], rtp[10], rtp[11]]),
            seq: u16::from_be_bytes([rtp[2], rtp[3]]),
            ip_csum: [0; 2],
            udp_csum: [udp[6], udp[7]],
        };
        let ip = &*pt.ip;
        if u.family == FAMILY_V4 {
            h.ttl = ip[8];
            h.ip_csum = [ip[10], ip[11]];
        } else {
            h.ttl = ip[7];
        }
        Some(h)
    }
}

/// Replaces the 16-bit word at `dst` with the one at `src`, adding the
/// change to the checksums in `accs`.
///
/// # Safety
/// `dst` must be valid for a 2-byte write, `src` for a 2-byte read.
#[inline(always)]
unsafe fn put(dst: *mut u8, src: *const u8, a: &mut Incremental, b: Option<&mut Incremental>) {
    let old = core::ptr::read_unaligned(dst as *const u16);
    let new = core::ptr::read_unaligned(src as *const u16);
    core::ptr::write_unaligned(dst as *mut u16, new);
    a.word(old, new);
    if let Some(b) = b {
        b.word(old, new);
    }
}

/// Rewrites the packet's headers to `to`, updating the IPv4 header and UDP
/// checksums incrementally (an IPv4 UDP checksum of 0, "none", stays 0).
/// With `keep_csums` the checksums are set to `to`'s saved values instead
/// (restoring an original exactly). Returns false, having written nothing,
/// if the packet is shorter than the headers.
#[inline(always)]
pub fn rewrite(p: &Packet, u: &Layout, to: &Hdr, keep_csums: bool) -> bool {
    let Some(pt) = parts(p, u) else {
        return false;
    };
    let mut ipc = Incremental::new();
    let mut udc = Incremental::new();
    // SAFETY: every packet pointer was checked against the packet end in
    // `parts` (each covers the whole header it points to); the sources are
    // fields of `to`, read within their sizes.
    unsafe {
        let eth = pt.eth as *mut u8;
        core::ptr::write_unaligned(eth as *mut [u8; 6], to.dmac);
        core::ptr::write_unaligned(eth.add(6) as *mut [u8; 6], to.smac);

        if u.family == FAMILY_V4 {
            let ip = pt.ip as *mut u8;
            // TTL shares a word with the protocol.
            let ttl_proto = [to.ttl, *ip.add(9)];
            put(ip.add(8), ttl_proto.as_ptr(), &mut ipc, None);
            put(ip.add(12), to.src.as_ptr(), &mut ipc, Some(&mut udc));
            put(ip.add(14), to.src.as_ptr().add(2), &mut ipc, Some(&mut udc));
            put(ip.add(16), to.dst.as_ptr(), &mut ipc, Some(&mut udc));
            put(ip.add(18), to.dst.as_ptr().add(2), &mut ipc, Some(&mut udc));
            let c = if keep_csums {
                to.ip_csum
            } else {
                ipc.apply(core::ptr::read_unaligned(ip.add(10) as *const u16))
                    .to_ne_bytes()
            };
            core::ptr::write_unaligned(ip.add(10) as *mut [u8; 2], c);
        } else {
            let ip = pt.ip as *mut u8;
            *ip.add(7) = to.ttl;
            let mut i = 0;
            while i < 16 {
                put(ip.add(8 + i), to.src.as_ptr().add(i), &mut udc, None);
                put(ip.add(24 + i), to.dst.as_ptr().add(i), &mut udc, None);
                i += 2;
            }
        }

        let udp = pt.udp as *mut u8;
        let ports = [to.sport.to_be_bytes(), to.dport.to_be_bytes()];
        put(udp, ports[0].as_ptr(), &mut udc, None);
        put(udp.add(2), ports[1].as_ptr(), &mut udc, None);

        let rtp = pt.rtp as *mut u8;
        let seq = to.seq.to_be_bytes();
        let ssrc = to.ssrc.to_be_bytes();
        put(rtp.add(2), seq.as_ptr(), &mut udc, None);
        put(rtp.add(8), ssrc.as_ptr(), &mut udc, None);
        put(rtp.add(10), ssrc.as_ptr().add(2), &mut udc, None);

        let old = core::ptr::read_unaligned(udp.add(6) as *const u16);
        let c = if keep_csums {
            to.udp_csum
        } else if old == 0 && u.family == FAMILY_V4 {
            [0, 0]
        } else {
            udc.apply_udp(old).to_ne_bytes()
        };
        core::ptr::write_unaligned(udp.add(6) as *mut [u8; 2], c);
    }
    true
}

/// The headers a copy for `out` carries, given the original's and the
/// next hop.
#[inline(always)]
pub fn out_hdr(orig: &Hdr, out: &RelayOut, hop: &Hop) -> Hdr {
    Hdr {
        dmac: hop.dmac,
        smac: hop.smac,
        src: out.src,
        dst: out.dst,
        sport: out.sport,
        dport: out.dport,
        ttl: RELAY_TTL,
        ssrc: out.ssrc,
        seq: orig.seq.wrapping_add(out.seq_delta),
        ip_csum: [0; 2],
        udp_csum: [0; 2],
    }
}

/// Whether output `out` takes a packet with RTP sequence number `seq`:
/// an output armed with a start sequence takes `seq >= start` (serial
/// arithmetic), the packets before it being the daemon's.
#[inline(always)]
pub fn takes(out: &RelayOut, seq: u16) -> bool {
    out.flags & gateway_common::RELAY_OUT_START_SEQ == 0
        || (seq.wrapping_sub(out.start_seq) as i16) >= 0
}

/// Length of the IP packet (header + UDP) for the FIB's MTU check.
#[inline(always)]
pub fn ip_len(u: &Udp) -> u16 {
    (u.payload_off + u.payload_len - u.l3_off) as u16
}
