//! Kernel programs of the gateway.
//!
//! - `gateway_xdp` (XDP, ingress): classifies UDP to the media ports, matches
//!   RTP to flows by local address + port (+ SSRC), counts per-stream RTP
//!   statistics in per-CPU slots of an mmapable array, and applies the
//!   unknown-flow policy. Everything else passes untouched.
//! - `gateway_tc_egress` (TC, egress): counts media the gateway sends per
//!   destination and optionally sets DSCP.
//! - `gateway_xdp_noop`: returns XDP_PASS; the baseline for benchmarks.
//!
//! No logging on the packet path; counters are updated through map pointers.
#![no_std]
#![no_main]
// Inline asm on the bpf target (one optimisation barrier in parse.rs).
#![feature(asm_experimental_arch)]

mod parse;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK},
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, LruPerCpuHashMap, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use gateway_common::{
    counter, stats, Config, EgressKey, EgressStats, FlowKey, FlowValue, StreamStats, DSCP_OFF,
    EGRESS_MAX_ENTRIES, FAMILY_ANY, FAMILY_V4, FLOW_EXPECT_SSRC, POLICY_DROP, PORT_ANY,
    PORT_ANY_SSRC, PORT_EXACT, PORT_EXACT_SSRC, PORT_FLAGS_ENTRIES,
};
use parse::{Packet, Udp};

/// Flow table: local address/port(/SSRC) -> stream slot. Sized at load time.
#[map]
static FLOWS: HashMap<FlowKey, FlowValue> = HashMap::with_max_entries(1, 0);

/// Per-stream statistics, `NCPUS` consecutive 128-byte slots per stream
/// (slot of stream s on CPU c: s * NCPUS + c). Mmapable so the daemon reads
/// it without a syscall. Sized at load time.
#[map]
static STREAM_STATS: Array<StreamStats> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Per UDP port: which kinds of flow keys exist (PORT_* bits).
#[map]
static PORT_FLAGS: Array<u32> = Array::with_max_entries(PORT_FLAGS_ENTRIES, 0);

#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Global per-CPU counters, indexed by `gateway_common::counter`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Egress media per destination.
#[map]
static EGRESS: LruPerCpuHashMap<EgressKey, EgressStats> =
    LruPerCpuHashMap::with_max_entries(EGRESS_MAX_ENTRIES, 0);

const BPF_F_MMAPABLE: u32 = 1 << 10;
const BPF_NOEXIST: u64 = 1;

/// Number of possible CPUs, set by the loader.
#[unsafe(no_mangle)]
static NCPUS: u32 = 1;

#[inline(always)]
fn count(idx: u32, n: u64) {
    if let Some(p) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: a per-CPU array element, only written by this CPU while
        // this program runs (softirq context, no preemption).
        unsafe { *p = (*p).wrapping_add(n) };
    }
}

#[inline(always)]
fn config() -> Config {
    match CONFIG.get(0) {
        Some(c) => *c,
        None => Config::default(),
    }
}

#[inline(always)]
fn port_flags(port: u16) -> u32 {
    match PORT_FLAGS.get(port as u32) {
        Some(f) => *f,
        None => 0,
    }
}

#[inline(always)]
fn key(u: &Udp, any_addr: bool, ssrc: Option<u32>) -> FlowKey {
    let mut k = FlowKey {
        addr: [0; 16],
        port: u.dport,
        family: FAMILY_ANY,
        by_ssrc: 0,
        ssrc: 0,
    };
    if !any_addr {
        k.addr = u.dst;
        k.family = u.family;
    }
    if let Some(s) = ssrc {
        k.by_ssrc = 1;
        k.ssrc = s;
    }
    k
}

/// Looks the packet up in the flow table, trying only the key kinds that
/// exist for the port: SSRC-specific before port-level, exact address
/// before any address.
#[inline(always)]
fn lookup(u: &Udp, pflags: u32, ssrc: Option<u32>) -> Option<*mut FlowValue> {
    if let Some(s) = ssrc {
        if pflags & PORT_EXACT_SSRC != 0 {
            if let Some(v) = FLOWS.get_ptr_mut(&key(u, false, Some(s))) {
                return Some(v);
            }
        }
        if pflags & PORT_ANY_SSRC != 0 {
            if let Some(v) = FLOWS.get_ptr_mut(&key(u, true, Some(s))) {
                return Some(v);
            }
        }
    }
    if pflags & PORT_EXACT != 0 {
        if let Some(v) = FLOWS.get_ptr_mut(&key(u, false, None)) {
            return Some(v);
        }
    }
    if pflags & PORT_ANY != 0 {
        if let Some(v) = FLOWS.get_ptr_mut(&key(u, true, None)) {
            return Some(v);
        }
    }
    None
}

#[inline(always)]
fn stream_slot(flow: &FlowValue) -> Option<*mut StreamStats> {
    // SAFETY: NCPUS is a read-only global written by the loader.
    let ncpus = unsafe { core::ptr::read_volatile(&NCPUS) };
    // SAFETY: helper without side effects.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    if cpu >= ncpus {
        return None;
    }
    STREAM_STATS.get_ptr_mut(flow.slot.wrapping_mul(ncpus).wrapping_add(cpu))
}

#[xdp]
pub fn gateway_xdp(ctx: XdpContext) -> u32 {
    let action = classify(&ctx);
    count(
        if action == xdp_action::XDP_DROP {
            counter::VERDICT_DROP
        } else {
            counter::VERDICT_PASS
        },
        1,
    );
    action
}

#[inline(always)]
fn classify(ctx: &XdpContext) -> u32 {
    let p = Packet {
        start: ctx.data(),
        end: ctx.data_end(),
        wire_len: ctx.data_end() - ctx.data(),
    };
    let u = match parse::udp(&p) {
        Ok(u) => u,
        Err(reason) => {
            count(reason, 1);
            return xdp_action::XDP_PASS;
        }
    };
    let cfg = config();
    let pflags = port_flags(u.dport);
    let in_range =
        cfg.media_port_min != 0 && u.dport >= cfg.media_port_min && u.dport <= cfg.media_port_max;
    if pflags == 0 && !in_range {
        count(counter::UDP_OTHER, 1);
        return xdp_action::XDP_PASS;
    }
    let unknown = if cfg.unknown_policy == POLICY_DROP {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    };

    if parse::is_rtcp(&p, &u) {
        // RTCP for a flow arrives on its port (muxed) or the next one.
        if pflags != 0 || port_flags(u.dport.wrapping_sub(1)) != 0 {
            count(counter::RTCP, 1);
            return xdp_action::XDP_PASS;
        }
    }
    let Some(h) = parse::rtp(&p, &u) else {
        count(counter::NOT_RTP, 1);
        if let Some(f) = lookup(&u, pflags, None) {
            // SAFETY: map value pointer from a successful lookup.
            if let Some(s) = stream_slot(unsafe { &*f }) {
                // SAFETY: this CPU's own slot.
                unsafe { (*s).not_rtp = (*s).not_rtp.wrapping_add(1) };
            }
            return xdp_action::XDP_PASS;
        }
        return unknown;
    };

    let Some(f) = lookup(&u, pflags, Some(h.ssrc)) else {
        if unknown == xdp_action::XDP_DROP {
            count(counter::UNKNOWN_DROPPED, 1);
        } else {
            count(counter::UNKNOWN_PASSED, 1);
        }
        return unknown;
    };
    // SAFETY: map value pointer from a successful lookup; the kernel keeps
    // the element alive for the duration of the program.
    let flow = unsafe { &*f };
    if let Some(s) = stream_slot(flow) {
        let expected = if flow.flags & FLOW_EXPECT_SSRC != 0 {
            Some(flow.expected_ssrc)
        } else {
            None
        };
        // SAFETY: helper without side effects.
        let now = unsafe { bpf_ktime_get_ns() };
        // SAFETY: this CPU's own slot of the stream; no other CPU writes it.
        stats::update(
            unsafe { &mut *s },
            &h,
            u.payload_len as u32,
            now,
            flow.clock_rate,
            expected,
        );
    }
    count(counter::MATCHED, 1);
    count(counter::MATCHED_BYTES, u.payload_len as u64);
    xdp_action::XDP_PASS
}

#[xdp]
pub fn gateway_xdp_noop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[classifier]
pub fn gateway_tc_egress(ctx: TcContext) -> i32 {
    egress(&ctx);
    TC_ACT_OK
}

#[inline(always)]
fn egress(ctx: &TcContext) {
    let p = Packet {
        start: ctx.data(),
        end: ctx.data_end(),
        wire_len: ctx.len() as usize,
    };
    let Ok(u) = parse::udp(&p) else {
        return;
    };
    let cfg = config();
    if cfg.egress_port_min == 0 || u.sport < cfg.egress_port_min || u.sport > cfg.egress_port_max {
        return;
    }
    count(counter::EGRESS_MEDIA, 1);
    let k = EgressKey {
        addr: u.dst,
        port: u.dport,
        family: u.family,
        _pad: 0,
    };
    // SAFETY: helper without side effects.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(e) = EGRESS.get_ptr_mut(&k) {
        // SAFETY: per-CPU value of this CPU.
        unsafe {
            (*e).packets = (*e).packets.wrapping_add(1);
            (*e).bytes = (*e).bytes.wrapping_add(u.payload_len as u64);
            (*e).last_ns = now;
        }
    } else {
        let v = EgressStats {
            packets: 1,
            bytes: u.payload_len as u64,
            last_ns: now,
        };
        if EGRESS.insert(&k, &v, BPF_NOEXIST).is_err() {
            count(counter::EGRESS_TABLE_FULL, 1);
        }
    }
    if cfg.dscp != DSCP_OFF && mark_dscp(ctx, &u, cfg.dscp as u8) {
        count(counter::EGRESS_MARKED, 1);
    }
}

/// Rewrites the DSCP bits (keeping ECN) of the IPv4 TOS / IPv6 traffic class,
/// fixing the IPv4 header checksum.
#[inline(always)]
fn mark_dscp(ctx: &TcContext, u: &Udp, dscp: u8) -> bool {
    let off = u.l3_off;
    let Ok(old) = ctx.load::<[u8; 2]>(off) else {
        return false;
    };
    let mut new = old;
    if u.family == FAMILY_V4 {
        new[1] = (dscp << 2) | (old[1] & 0x03);
    } else {
        let tc = (old[0] << 4) | (old[1] >> 4);
        let tc = (dscp << 2) | (tc & 0x03);
        new[0] = (old[0] & 0xf0) | (tc >> 4);
        new[1] = (tc << 4) | (old[1] & 0x0f);
    }
    if new == old {
        return false;
    }
    if u.family == FAMILY_V4 {
        let from = u16::from_ne_bytes(old) as u64;
        let to = u16::from_ne_bytes(new) as u64;
        if ctx.l3_csum_replace(off + 10, from, to, 2).is_err() {
            return false;
        }
    }
    ctx.store(off, &new, 0).is_ok()
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
