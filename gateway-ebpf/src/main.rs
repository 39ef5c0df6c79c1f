//! Kernel programs of the gateway.
//!
//! - `gateway_xdp` (XDP, ingress): classifies UDP to the media ports, matches
//!   RTP to flows by local address + port (+ SSRC), counts per-stream RTP
//!   statistics in per-CPU slots of an mmapable array, and applies the
//!   unknown-flow policy. Everything else passes untouched.
//! - `gateway_tc_egress` (TC, egress): counts media the gateway sends per
//!   destination and optionally sets DSCP.
//! - `gateway_tc_ingress` (TC, ingress): the relays that copy a stream to
//!   several destinations (and up to the daemon), marked by XDP in the
//!   packet's metadata.
//! - `gateway_xdp_noop`: returns XDP_PASS; the baseline for benchmarks.
//!
//! Relay (see `relay.rs`): a flow with `FLOW_RELAY` has an entry in
//! `RELAYS`. In `RELAY_XDP` mode the XDP program rewrites the packet for its
//! one destination and sends it (XDP_TX, or a redirect through `TX_PORTS`);
//! in the TC modes it writes the stream slot into the packet metadata and
//! passes it, and TC ingress clones it to every destination. A packet the
//! kernel cannot relay (fragment, unconfirmed source, no neighbour, ...) goes
//! up to the daemon, whose userspace relay sends it; the reason is counted.
//!
//! No logging on the packet path; counters are updated through map pointers.
#![no_std]
#![no_main]
// Inline asm on the bpf target (one optimisation barrier in parse.rs).
#![feature(asm_experimental_arch)]

mod parse;
mod relay;

use aya_ebpf::{
    bindings::{__sk_buff, xdp_action, TC_ACT_OK, TC_ACT_SHOT},
    cty::c_void,
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::{classifier, map, xdp},
    maps::{Array, DevMapHash, HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray, ProgramArray},
    programs::{TcContext, XdpContext},
    EbpfContext,
};
use gateway_common::{
    counter, rtp::RtpHeader, stats, Config, EgressKey, EgressStats, FlowKey, FlowValue, RelayStats,
    RelayValue, SipGuard, SipSource, StreamStats, VlanDev, DSCP_OFF, EGRESS_MAX_ENTRIES,
    FAMILY_ANY, FAMILY_V4, FLOW_EXPECT_SSRC, FLOW_RELAY, FLOW_RELAY_TC, POLICY_DROP, PORT_ANY,
    PORT_ANY_SSRC, PORT_EXACT, PORT_EXACT_SSRC, PORT_FLAGS_ENTRIES, PORT_TC_RELAY, RELAY_MAX_OUT,
    RELAY_TC_COPY, RELAY_TC_ONLY, RELAY_XDP, SIP_ALLOW_ENTRIES, SIP_BUCKET_ENTRIES,
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

/// Per UDP port: stream slot + 1 of its port-level any-address flow (the
/// kind the daemon's sessions use), 0 for none: with `FLOW_SLOTS`, two
/// array lookups instead of hashing a 24-byte key.
#[map]
static PORT_ANY_FLOW: Array<u32> = Array::with_max_entries(PORT_FLAGS_ENTRIES, 0);

/// A copy of each flow's value, by stream slot (for `PORT_ANY_FLOW`).
/// Sized at load time.
#[map]
static FLOW_SLOTS: Array<FlowValue> = Array::with_max_entries(1, 0);

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

/// Relays, indexed by the flow's stream slot. Sized at load time.
#[map]
static RELAYS: Array<RelayValue> = Array::with_max_entries(1, 0);

/// Per-CPU counters of each relay output: `slot * RELAY_MAX_OUT + i`.
/// Sized at load time.
#[map]
static RELAY_STATS: PerCpuArray<RelayStats> = PerCpuArray::with_max_entries(1, 0);

/// Interfaces XDP may redirect relayed packets to (ones that accept
/// XDP frames), keyed by ifindex.
#[map]
static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(64, 0);

/// TC ingress tail-calls `gateway_tc_relay_copies` (index 0) with the
/// packet's relay job in `TC_SCRATCH`: the copies get a verifier state and
/// a stack of their own.
#[map]
static TC_JUMP: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// The relay job TC ingress hands to its tail call (per CPU: the tail call
/// runs on the same CPU, in the same softirq).
#[map]
static TC_SCRATCH: PerCpuArray<TcJob> = PerCpuArray::with_max_entries(1, 0);

/// VLAN devices on the attached interface, keyed by their ifindex.
#[map]
static VLAN_DEVS: HashMap<u32, VlanDev> = HashMap::with_max_entries(256, 0);

/// SIP flood guard: settings (ports, rates).
#[map]
static SIP_GUARD: Array<SipGuard> = Array::with_max_entries(1, 0);

/// Addresses of registered devices (fed by the daemon): never limited.
#[map]
static SIP_ALLOW: HashMap<SipSource, u32> =
    HashMap::with_max_entries(SIP_ALLOW_ENTRIES, BPF_F_NO_PREALLOC);

/// Per-source GCRA state (theoretical arrival time, ns).
#[map]
static SIP_BUCKETS: LruHashMap<SipSource, u64> =
    LruHashMap::with_max_entries(SIP_BUCKET_ENTRIES, 0);

/// The unknown sources' global budget, per CPU (theoretical arrival time).
#[map]
static SIP_GLOBAL: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

const BPF_F_MMAPABLE: u32 = 1 << 10;
const BPF_F_NO_PREALLOC: u32 = 1;
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
        if let Some(v) = any_flow(u.dport) {
            return Some(v);
        }
        if let Some(v) = FLOWS.get_ptr_mut(&key(u, true, None)) {
            return Some(v);
        }
    }
    None
}

/// The port-level any-address flow of `port` through the arrays.
#[inline(always)]
fn any_flow(port: u16) -> Option<*mut FlowValue> {
    let idx = match PORT_ANY_FLOW.get(port as u32) {
        Some(i) if *i != 0 => *i,
        _ => return None,
    };
    FLOW_SLOTS.get_ptr_mut(idx - 1)
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
    // Relayed packets (XDP_TX, XDP_REDIRECT) are counted as RELAY_SENT.
    if action == xdp_action::XDP_DROP {
        count(counter::VERDICT_DROP, 1);
    } else if action == xdp_action::XDP_PASS {
        count(counter::VERDICT_PASS, 1);
    }
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
        // Not media: the SIP ports go through the flood guard, the rest
        // passes. (Media never pays for the guard.)
        if let Some(g) = sip_guard_of(u.dport) {
            return sip_guard(&u, &g);
        }
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
    let slot = stream_slot(flow);
    // One clock read per video frame (see stats::reuse_arrival): the clock
    // is the most expensive step of the count path.
    // SAFETY: this CPU's own slot of the stream; no other CPU writes it.
    let now = match slot.and_then(|s| stats::reuse_arrival(unsafe { &*s }, &h)) {
        Some(t) => t,
        // SAFETY: helper without side effects.
        None => unsafe { bpf_ktime_get_ns() },
    };
    if let Some(s) = slot {
        let expected = if flow.flags & FLOW_EXPECT_SSRC != 0 {
            Some(flow.expected_ssrc)
        } else {
            None
        };
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
    if flow.flags & FLOW_RELAY != 0 {
        if let Some(r) = RELAYS.get(flow.slot) {
            return relay_xdp(ctx, &p, &u, &h, r, flow.slot, now);
        }
    }
    xdp_action::XDP_PASS
}

/// The guard's settings when `port` is one of its SIP ports and it is on.
#[inline(always)]
fn sip_guard_of(port: u16) -> Option<SipGuard> {
    let g = SIP_GUARD.get(0)?;
    if g.enabled == 0 || port == 0 {
        return None;
    }
    let p = g.ports;
    (p[0] == port || p[1] == port || p[2] == port || p[3] == port).then_some(*g)
}

/// GCRA: true when a packet at `now` conforms (and is accounted).
#[inline(always)]
fn gcra(tat: *mut u64, now: u64, interval: u64, tolerance: u64) -> bool {
    // SAFETY: a map value pointer from a successful lookup; races between
    // CPUs on a shared bucket only make the limit approximate.
    let t = unsafe { *tat };
    let t = if t > now { t } else { now };
    if t - now > tolerance {
        return false;
    }
    // SAFETY: as above.
    unsafe { *tat = t + interval };
    true
}

/// SIP flood guard (UDP to a SIP port): registered devices' addresses
/// pass; others within their own rate and the global one pass; the rest
/// is dropped here, counted by reason.
#[inline(always)]
fn sip_guard(u: &Udp, g: &SipGuard) -> u32 {
    let key = SipSource {
        addr: u.src,
        family: u.family,
        _pad: [0; 3],
    };
    // SAFETY: a read-only lookup of a hash map element.
    if unsafe { SIP_ALLOW.get(&key) }.is_some() {
        count(counter::SIP_ALLOWED, 1);
        return xdp_action::XDP_PASS;
    }
    // SAFETY: helper without side effects.
    let now = unsafe { bpf_ktime_get_ns() };
    match SIP_BUCKETS.get_ptr_mut(&key) {
        Some(tat) => {
            if !gcra(tat, now, g.src_interval_ns, g.src_tolerance_ns) {
                count(counter::SIP_DROPPED_SOURCE, 1);
                return xdp_action::XDP_DROP;
            }
        }
        None => {
            // A new source starts with its burst; if the insert fails
            // (a race), the packet is judged by the global budget alone.
            let _ = SIP_BUCKETS.insert(&key, &(now + g.src_interval_ns), 0);
        }
    }
    if let Some(tat) = SIP_GLOBAL.get_ptr_mut(0) {
        if !gcra(tat, now, g.global_interval_ns, g.global_tolerance_ns) {
            count(counter::SIP_DROPPED_GLOBAL, 1);
            return xdp_action::XDP_DROP;
        }
    }
    count(counter::SIP_PASSED, 1);
    xdp_action::XDP_PASS
}

#[inline(always)]
fn relay_stats(slot: u32, i: u32) -> Option<*mut RelayStats> {
    RELAY_STATS.get_ptr_mut(slot.wrapping_mul(RELAY_MAX_OUT as u32).wrapping_add(i))
}

#[inline(always)]
fn relay_sent(slot: u32, i: u32, seq: u16, bytes: usize, now: u64) {
    count(counter::RELAY_SENT, 1);
    if let Some(s) = relay_stats(slot, i) {
        // SAFETY: this CPU's own per-CPU element.
        unsafe {
            if (*s).packets == 0 {
                (*s).first_seq = seq as u32;
                (*s).first_ns = now;
            }
            (*s).packets += 1;
            (*s).bytes += bytes as u64;
            (*s).last_ns = now;
        }
    }
}

#[inline(always)]
fn relay_passed(slot: u32, i: u32, reason: u32) {
    count(reason, 1);
    if let Some(s) = relay_stats(slot, i) {
        // SAFETY: this CPU's own per-CPU element.
        unsafe { (*s).passed += 1 };
    }
}

/// Checks common to both relay paths: a whole datagram from the confirmed
/// source, of the relay's address family.
#[inline(always)]
fn relay_admits(u: &Udp, r: &RelayValue) -> Result<(), u32> {
    if u.partial {
        return Err(counter::RELAY_PASS_FRAGMENT);
    }
    if u.family != r.family {
        return Err(counter::RELAY_PASS_FAMILY);
    }
    if u.sport != r.sport || u.src != r.src {
        return Err(counter::RELAY_PASS_SOURCE);
    }
    Ok(())
}

/// The XDP side of a relay: in `RELAY_XDP` mode rewrites and sends the
/// packet; in the TC modes marks it for TC ingress.
#[inline(always)]
fn relay_xdp(
    ctx: &XdpContext,
    p: &Packet,
    u: &Udp,
    h: &RtpHeader,
    r: &RelayValue,
    slot: u32,
    now: u64,
) -> u32 {
    if let Err(reason) = relay_admits(u, r) {
        relay_passed(slot, 0, reason);
        return xdp_action::XDP_PASS;
    }
    // The TC modes: TC ingress copies it.
    if r.mode != RELAY_XDP || r.n_out == 0 {
        return xdp_action::XDP_PASS;
    }
    let out = &r.out[0];
    if !relay::takes(out, h.seq) {
        return xdp_action::XDP_PASS;
    }
    let ingress = ctx.ingress_ifindex() as u32;
    let hop = match relay::fib(
        ctx.ctx as *mut c_void,
        u.family,
        out,
        ingress,
        relay::ip_len(u),
    ) {
        Ok(hop) => hop,
        Err(reason) => {
            relay_passed(slot, 0, reason);
            return xdp_action::XDP_PASS;
        }
    };
    // Where it leaves: back out of this interface (keeping a VLAN tag when
    // the route goes through that VLAN's device), or another XDP-capable
    // interface (untagged only).
    let tx = if u.vlan_tags == 0 {
        if hop.ifindex == ingress {
            true
        } else if TX_PORTS.get_ifindex(hop.ifindex).is_some() {
            false
        } else {
            relay_passed(slot, 0, counter::RELAY_PASS_NO_TX_PORT);
            return xdp_action::XDP_PASS;
        }
    } else {
        let ok = u.vlan_tags == 1
            && match VLAN_DEVS.get_ptr(&hop.ifindex) {
                // SAFETY: map value pointer from a successful lookup.
                Some(v) => unsafe { (*v).parent_ifindex == ingress && (*v).vid == u.vid },
                None => false,
            };
        if !ok {
            relay_passed(slot, 0, counter::RELAY_PASS_VLAN);
            return xdp_action::XDP_PASS;
        }
        true
    };
    let Some(orig) = relay::read_hdr(p, u) else {
        relay_passed(slot, 0, counter::MALFORMED);
        return xdp_action::XDP_PASS;
    };
    let to = relay::out_hdr(&orig, out, &hop);
    if !relay::rewrite(p, &relay::Layout::of(u), &to, false) {
        relay_passed(slot, 0, counter::MALFORMED);
        return xdp_action::XDP_PASS;
    }
    relay_sent(slot, 0, h.seq, u.payload_len, now);
    if tx {
        xdp_action::XDP_TX
    } else {
        // Present (checked above); a race with its removal aborts the packet.
        TX_PORTS
            .redirect(hop.ifindex, 0)
            .unwrap_or(xdp_action::XDP_ABORTED)
    }
}

#[xdp]
pub fn gateway_xdp_noop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[classifier]
pub fn gateway_tc_ingress(ctx: TcContext) -> i32 {
    relay_tc(&ctx)
}

/// TC ingress relay: for a packet of a flow relayed in a TC mode (its
/// port has `PORT_TC_RELAY`), a copy to every destination with
/// `bpf_clone_redirect`; the original then goes up to the daemon restored
/// byte for byte (`RELAY_TC_COPY`) or is dropped (`RELAY_TC_ONLY`).
#[inline(always)]
fn relay_tc(ctx: &TcContext) -> i32 {
    let p = Packet {
        start: ctx.data(),
        end: ctx.data_end(),
        wire_len: ctx.len() as usize,
    };
    let Ok(u) = parse::udp(&p) else {
        return TC_ACT_OK;
    };
    let pflags = port_flags(u.dport);
    if pflags & PORT_TC_RELAY == 0 {
        return TC_ACT_OK;
    }
    let Some(h) = parse::rtp(&p, &u) else {
        return TC_ACT_OK;
    };
    let Some(f) = lookup(&u, pflags, Some(h.ssrc)) else {
        return TC_ACT_OK;
    };
    // SAFETY: map value pointer from a successful lookup.
    let slot = unsafe {
        if (*f).flags & FLOW_RELAY_TC == 0 {
            return TC_ACT_OK;
        }
        (*f).slot
    };
    let Some(r) = RELAYS.get(slot) else {
        return TC_ACT_OK;
    };
    let mode = r.mode;
    if mode != RELAY_TC_COPY && mode != RELAY_TC_ONLY {
        return TC_ACT_OK;
    }
    // XDP counted why it did not admit the packet; the daemon sends it.
    if relay_admits(&u, r).is_err() {
        return TC_ACT_OK;
    }
    let skb = ctx.as_ptr() as *mut __sk_buff;
    // SAFETY: the program's own context.
    let ingress = unsafe { (*skb).ingress_ifindex };
    let Some(orig) = relay::read_hdr(&p, &u) else {
        return TC_ACT_OK;
    };
    let Some(job) = TC_SCRATCH.get_ptr_mut(0) else {
        return TC_ACT_OK;
    };
    // SAFETY: this CPU's own scratch element; the tail call below runs on
    // this CPU before anything else can use it.
    unsafe {
        *job = TcJob {
            orig,
            layout: relay::Layout::of(&u),
            slot,
            ingress,
            ip_len: relay::ip_len(&u),
            mode,
            payload_len: u.payload_len as u32,
            now: bpf_ktime_get_ns(),
        };
        // Does not return on success.
        TC_JUMP.tail_call(ctx, 0);
    }
    count(counter::RELAY_CLONE_FAILED, 1);
    TC_ACT_OK
}

/// The copies of one packet (tail-called by `gateway_tc_ingress` with the
/// job in `TC_SCRATCH`): one per output, then the original restored and
/// passed up (`RELAY_TC_COPY`) or dropped (`RELAY_TC_ONLY`, every copy
/// sent).
#[classifier]
pub fn gateway_tc_relay_copies(ctx: TcContext) -> i32 {
    let Some(job) = TC_SCRATCH.get_ptr(0) else {
        return TC_ACT_OK;
    };
    // SAFETY: this CPU's scratch element, written by the caller just now.
    let (slot, mode) = unsafe { ((*job).slot, (*job).mode) };
    let Some(r) = RELAYS.get(slot) else {
        return TC_ACT_OK;
    };
    let n_out = r.n_out;
    if ctx.pull_data(0).is_err() {
        count(counter::RELAY_CLONE_FAILED, 1);
        return TC_ACT_OK;
    }
    let mut sent = 0u32;
    let mut i = 0u32;
    while i < RELAY_MAX_OUT as u32 {
        if i >= n_out {
            break;
        }
        if tc_copy(&ctx, i) {
            sent += 1;
        }
        i += 1;
    }
    if mode == RELAY_TC_ONLY && sent == n_out {
        return TC_ACT_SHOT;
    }
    if sent > 0 {
        // SAFETY: as above.
        let job = unsafe { &*job };
        let p = Packet {
            start: ctx.data(),
            end: ctx.data_end(),
            wire_len: ctx.len() as usize,
        };
        relay::rewrite(&p, &job.layout, &job.orig, true);
    }
    TC_ACT_OK
}

/// What every copy of one packet shares.
#[derive(Clone, Copy)]
pub struct TcJob {
    orig: relay::Hdr,
    layout: relay::Layout,
    slot: u32,
    ingress: u32,
    ip_len: u16,
    mode: u8,
    payload_len: u32,
    now: u64,
}

/// One copy: rewrite for output `i`, clone to its next hop. A function of
/// its own (a BPF-to-BPF call) so the unrolled outputs do not each take
/// stack. Returns whether the copy was sent.
#[inline(never)]
fn tc_copy(ctx: &TcContext, i: u32) -> bool {
    let Some(job) = TC_SCRATCH.get_ptr(0) else {
        return false;
    };
    // SAFETY: this CPU's scratch element, written before the tail call.
    let job = unsafe { &*job };
    let Some(r) = RELAYS.get(job.slot) else {
        return false;
    };
    let Some(out) = r.out.get(i as usize) else {
        return false;
    };
    if !relay::takes(out, job.orig.seq) {
        return false;
    }
    let hop = match relay::fib(
        ctx.as_ptr() as *mut c_void,
        job.layout.family,
        out,
        job.ingress,
        job.ip_len,
    ) {
        Ok(hop) => hop,
        Err(reason) => {
            relay_passed(job.slot, i, reason);
            return false;
        }
    };
    // An earlier clone invalidated the packet pointers; the offsets stay.
    let p = Packet {
        start: ctx.data(),
        end: ctx.data_end(),
        wire_len: ctx.len() as usize,
    };
    if relay::rewrite(
        &p,
        &job.layout,
        &relay::out_hdr(&job.orig, out, &hop),
        false,
    ) && ctx.clone_redirect(hop.ifindex, 0).is_ok()
    {
        relay_sent(job.slot, i, job.orig.seq, job.payload_len as usize, job.now);
        true
    } else {
        count(counter::RELAY_CLONE_FAILED, 1);
        false
    }
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
