//! Types shared by the kernel programs (`gateway-ebpf`) and the daemon
//! (`gateway`): map keys and values, configuration, counter indices, and the
//! per-packet RTP statistics update ([`stats::update`]), which is plain Rust
//! so that the same code runs in the XDP program and in unit tests.
//!
//! Every type crossing the kernel boundary is `#[repr(C)]`, `Copy`, has no
//! implicit padding and has its size asserted at compile time.
#![cfg_attr(not(test), no_std)]

pub mod csum;
pub mod rtp;
pub mod stats;

pub use stats::StreamStats;

/// Map names as they appear in the object file and under the pin directory.
pub mod map_names {
    pub const FLOWS: &str = "FLOWS";
    pub const STREAM_STATS: &str = "STREAM_STATS";
    pub const PORT_FLAGS: &str = "PORT_FLAGS";
    pub const CONFIG: &str = "CONFIG";
    pub const COUNTERS: &str = "COUNTERS";
    pub const EGRESS: &str = "EGRESS";
    pub const RELAYS: &str = "RELAYS";
    pub const RELAY_STATS: &str = "RELAY_STATS";
    pub const TX_PORTS: &str = "TX_PORTS";
    pub const VLAN_DEVS: &str = "VLAN_DEVS";
    pub const TC_JUMP: &str = "TC_JUMP";
    pub const PORT_ANY_FLOW: &str = "PORT_ANY_FLOW";
    pub const FLOW_SLOTS: &str = "FLOW_SLOTS";
    pub const SIP_GUARD: &str = "SIP_GUARD";
    pub const SIP_ALLOW: &str = "SIP_ALLOW";
    pub const SIP_BUCKETS: &str = "SIP_BUCKETS";
    pub const SIP_GLOBAL: &str = "SIP_GLOBAL";
}

/// Program names in the object file.
pub mod prog_names {
    pub const XDP: &str = "gateway_xdp";
    pub const TC_EGRESS: &str = "gateway_tc_egress";
    /// TC ingress: the relays that copy a stream to several destinations
    /// (and to the daemon) with `bpf_clone_redirect`.
    pub const TC_INGRESS: &str = "gateway_tc_ingress";
    /// Tail-called by `TC_INGRESS` through `TC_JUMP`: the copies.
    pub const TC_RELAY_COPIES: &str = "gateway_tc_relay_copies";
    /// An XDP program that only returns `XDP_PASS`: the baseline for benchmarks.
    pub const XDP_NOOP: &str = "gateway_xdp_noop";
}

/// Name of the global variable holding the number of possible CPUs, which is
/// the stride of [`StreamStats`] slots in the `STREAM_STATS` array.
pub const NCPUS_GLOBAL: &str = "NCPUS";

/// Default capacity of the flow table and of the stream slot array.
pub const DEFAULT_MAX_STREAMS: u32 = 4096;
/// Capacity of the egress per-destination table (LRU).
pub const EGRESS_MAX_ENTRIES: u32 = 16384;
/// Entries of the `PORT_FLAGS` array: one per UDP port.
pub const PORT_FLAGS_ENTRIES: u32 = 65536;

/// `FlowKey::family` values.
pub const FAMILY_ANY: u8 = 0;
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// A flow: the local (destination) address and UDP port of media the gateway
/// receives, and optionally the RTP SSRC that splits several streams sharing
/// one port.
///
/// `addr` holds an IPv4 address in its first 4 bytes (rest zero) or a full
/// IPv6 address; with `family == FAMILY_ANY` the address is all zero and the
/// flow matches any local address. `port` is in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub addr: [u8; 16],
    pub port: u16,
    pub family: u8,
    /// 1 when `ssrc` is part of the key, 0 for a port-level flow (ssrc = 0).
    pub by_ssrc: u8,
    pub ssrc: u32,
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 24);

/// `FlowValue::flags`.
pub const FLOW_EXPECT_SSRC: u32 = 1;
/// The flow's slot has an entry in `RELAYS` (the kernel relays it).
pub const FLOW_RELAY: u32 = 2;
/// ... in one of the TC modes (TC ingress copies it).
pub const FLOW_RELAY_TC: u32 = 4;

pub const FLOW_NAME_LEN: usize = 32;

/// What the kernel needs to count a flow, plus its name for operators.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    /// Index of the stream's slot group in `STREAM_STATS`.
    pub slot: u32,
    /// RTP clock rate for jitter (Hz); 0 means 90 000.
    pub clock_rate: u32,
    /// With `FLOW_EXPECT_SSRC` on a port-level flow: packets with another
    /// SSRC count as SSRC mismatches and do not enter sequence tracking.
    pub expected_ssrc: u32,
    pub flags: u32,
    /// CLOCK_REALTIME seconds at which the flow was added.
    pub created_unix: u64,
    /// NUL-padded UTF-8.
    pub name: [u8; FLOW_NAME_LEN],
}
const _: () = assert!(core::mem::size_of::<FlowValue>() == 56);

/// `PORT_FLAGS` bits: which kinds of flow keys exist for a UDP port, so the
/// XDP program does only the hash lookups that can succeed and skips ports
/// with no flows at the cost of one array lookup.
pub const PORT_EXACT_SSRC: u32 = 1;
pub const PORT_EXACT: u32 = 2;
pub const PORT_ANY_SSRC: u32 = 4;
pub const PORT_ANY: u32 = 8;
/// A flow on the port is relayed by TC ingress: only packets to such ports
/// are looked up there.
pub const PORT_TC_RELAY: u32 = 16;

/// `Config::unknown_policy`.
pub const POLICY_PASS: u32 = 0;
pub const POLICY_DROP: u32 = 1;

/// `Config::dscp` value meaning "do not mark".
pub const DSCP_OFF: u32 = 0xff;

/// `Config::xdp_mode`.
pub const XDP_MODE_NATIVE: u32 = 1;
pub const XDP_MODE_SKB: u32 = 2;

/// Runtime configuration, one element of the `CONFIG` array. The kernel reads
/// the first block; the rest records how the interface was attached so that a
/// later command finds it in the pinned map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Inclusive UDP port range of the media ports (0/0: none).
    pub media_port_min: u16,
    pub media_port_max: u16,
    /// `POLICY_PASS` or `POLICY_DROP` for UDP to a media port that matches no flow.
    pub unknown_policy: u32,
    /// DSCP (0..=63) to set on egress media, or `DSCP_OFF`.
    pub dscp: u32,
    /// Inclusive source-port range that identifies media the gateway sends.
    pub egress_port_min: u16,
    pub egress_port_max: u16,
    // --- attach record (not read by the kernel) ---
    pub xdp_mode: u32,
    pub max_streams: u32,
    pub ncpus: u32,
    /// How the TC program is attached (1 TCX link, 2 netlink filter).
    pub tc_kind: u32,
    pub attached_unix: u64,
}
const _: () = assert!(core::mem::size_of::<Config>() == 40);

/// Indices of the global per-CPU counters in the `COUNTERS` array.
pub mod counter {
    /// Not IPv4/IPv6 (ARP, LLDP, ...).
    pub const NOT_IP: u32 = 0;
    /// IP but not UDP.
    pub const NOT_UDP: u32 = 1;
    /// Non-first IP fragment: not parsed as UDP.
    pub const FRAGMENT: u32 = 2;
    /// Truncated or inconsistent headers (IP/UDP lengths).
    pub const MALFORMED: u32 = 3;
    /// UDP to a port that is neither a media port nor has a flow.
    pub const UDP_OTHER: u32 = 4;
    /// UDP to a media/flow port whose payload is not valid RTP.
    pub const NOT_RTP: u32 = 5;
    /// Valid RTP to a media port with no matching flow, passed.
    pub const UNKNOWN_PASSED: u32 = 6;
    /// Valid RTP to a media port with no matching flow, dropped.
    pub const UNKNOWN_DROPPED: u32 = 7;
    /// RTP matched to a flow and counted.
    pub const MATCHED: u32 = 8;
    /// Bytes (UDP payload) of matched RTP.
    pub const MATCHED_BYTES: u32 = 9;
    /// Verdicts of the XDP program.
    pub const VERDICT_PASS: u32 = 10;
    pub const VERDICT_DROP: u32 = 11;
    /// Egress (TC): UDP from a media source port, counted per destination.
    pub const EGRESS_MEDIA: u32 = 12;
    /// Egress: media packets whose DSCP was rewritten.
    pub const EGRESS_MARKED: u32 = 13;
    /// Egress: per-destination table update failed.
    pub const EGRESS_TABLE_FULL: u32 = 14;
    /// RTCP (RFC 5761 packet types 200-204) on a flow port or the port after it.
    pub const RTCP: u32 = 15;
    /// Relay: packets the kernel sent to a relay destination (XDP_TX or a
    /// redirect from XDP; one per copy from TC).
    pub const RELAY_SENT: u32 = 16;
    /// Relay: packets of a relayed flow left to the daemon's userspace
    /// relay, by reason.
    pub const RELAY_PASS_FRAGMENT: u32 = 17;
    pub const RELAY_PASS_SOURCE: u32 = 18;
    pub const RELAY_PASS_NO_NEIGH: u32 = 19;
    pub const RELAY_PASS_FIB: u32 = 20;
    pub const RELAY_PASS_FWD_DISABLED: u32 = 21;
    pub const RELAY_PASS_MTU: u32 = 22;
    pub const RELAY_PASS_NO_TX_PORT: u32 = 23;
    pub const RELAY_PASS_VLAN: u32 = 24;
    pub const RELAY_PASS_FAMILY: u32 = 25;
    /// Relay (TC): a copy could not be made (clone or redirect failed).
    pub const RELAY_CLONE_FAILED: u32 = 26;
    /// SIP flood guard: UDP to a SIP port from an allowed (registered)
    /// address, passed without a limit.
    pub const SIP_ALLOWED: u32 = 27;
    /// From another address, within its own and the global rate: passed.
    pub const SIP_PASSED: u32 = 28;
    /// Dropped: the source went over its rate.
    pub const SIP_DROPPED_SOURCE: u32 = 29;
    /// Dropped: unknown sources together went over the global rate.
    pub const SIP_DROPPED_GLOBAL: u32 = 30;
    /// Number of counters (array size).
    pub const COUNT: u32 = 31;

    /// Names for display and metrics, indexed by counter.
    pub const NAMES: [&str; COUNT as usize] = [
        "not_ip",
        "not_udp",
        "fragment",
        "malformed",
        "udp_other",
        "not_rtp",
        "unknown_passed",
        "unknown_dropped",
        "matched",
        "matched_bytes",
        "verdict_pass",
        "verdict_drop",
        "egress_media",
        "egress_marked",
        "egress_table_full",
        "rtcp",
        "relay_sent",
        "relay_pass_fragment",
        "relay_pass_source",
        "relay_pass_no_neigh",
        "relay_pass_fib",
        "relay_pass_fwd_disabled",
        "relay_pass_mtu",
        "relay_pass_no_tx_port",
        "relay_pass_vlan",
        "relay_pass_family",
        "relay_clone_failed",
        "sip_allowed",
        "sip_passed",
        "sip_dropped_source",
        "sip_dropped_global",
    ];
}

/// SIP flood guard settings, the one element of `SIP_GUARD`. Rates are
/// GCRA parameters: a source may send a packet every `interval_ns` with
/// `tolerance_ns` of burst ((burst - 1) x interval); the global budget of
/// unknown sources is kept per CPU (its interval is ncpus / rate).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SipGuard {
    /// UDP ports the guard watches (0: unused).
    pub ports: [u16; SIP_GUARD_PORTS],
    /// 0: off (SIP passes untouched).
    pub enabled: u32,
    pub _pad: u32,
    pub src_interval_ns: u64,
    pub src_tolerance_ns: u64,
    pub global_interval_ns: u64,
    pub global_tolerance_ns: u64,
}
pub const SIP_GUARD_PORTS: usize = 4;
const _: () = assert!(core::mem::size_of::<SipGuard>() == 48);

/// A source address of SIP (key of `SIP_ALLOW` and `SIP_BUCKETS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SipSource {
    pub addr: [u8; 16],
    pub family: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<SipSource>() == 20);
/// Capacity of the allow list (registered devices' addresses) and of the
/// per-source buckets (least recently used evicted).
pub const SIP_ALLOW_ENTRIES: u32 = 131_072;
pub const SIP_BUCKET_ENTRIES: u32 = 32_768;

/// Key of the egress per-destination table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EgressKey {
    pub addr: [u8; 16],
    pub port: u16,
    pub family: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<EgressKey>() == 20);

/// Per-destination egress counters (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EgressStats {
    pub packets: u64,
    pub bytes: u64,
    pub last_ns: u64,
}
const _: () = assert!(core::mem::size_of::<EgressStats>() == 24);

/// Outputs per relayed stream (one in XDP, up to this many from TC).
pub const RELAY_MAX_OUT: usize = 4;

/// `RelayValue::mode`.
/// One destination, nothing for the daemon: XDP rewrites and sends
/// (XDP_TX or a devmap redirect); the daemon's socket sees none of it.
pub const RELAY_XDP: u8 = 1;
/// TC ingress sends a copy to every destination; the original goes up to
/// the daemon (recorded or watched locally).
pub const RELAY_TC_COPY: u8 = 2;
/// TC ingress sends a copy to every destination; the original is dropped
/// (several destinations, nothing local).
pub const RELAY_TC_ONLY: u8 = 3;

/// One relay destination: where the stream goes and how its headers are
/// rewritten. Addresses as in [`FlowKey`]; ports in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayOut {
    /// Destination address and port.
    pub dst: [u8; 16],
    /// Our address and port the copy is sent from.
    pub src: [u8; 16],
    pub dport: u16,
    pub sport: u16,
    /// RTP SSRC of the copy.
    pub ssrc: u32,
    /// Added to the RTP sequence number (mod 2^16).
    pub seq_delta: u16,
    /// With `RELAY_OUT_START_SEQ`: the kernel sends packets from this input
    /// sequence number on (serial arithmetic); the ones before are the
    /// daemon's (the hand-over point of a copying relay).
    pub start_seq: u16,
    /// `RELAY_OUT_*` bits.
    pub flags: u32,
}

/// `RelayOut::flags`: `start_seq` is in force.
pub const RELAY_OUT_START_SEQ: u32 = 1;
const _: () = assert!(core::mem::size_of::<RelayOut>() == 48);

/// What the kernel does with a relayed stream's packets, indexed by the
/// flow's stream slot in `RELAYS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayValue {
    /// The confirmed source (the camera's address and port, seen by the
    /// daemon): packets from elsewhere are left to the daemon.
    pub src: [u8; 16],
    pub sport: u16,
    /// `FAMILY_V4`/`FAMILY_V6` of the source and of every output.
    pub family: u8,
    /// `RELAY_XDP`, `RELAY_TC_COPY` or `RELAY_TC_ONLY`; 0: none.
    pub mode: u8,
    /// Outputs in use (`out[..n_out]`).
    pub n_out: u32,
    pub out: [RelayOut; RELAY_MAX_OUT],
}
const _: () = assert!(core::mem::size_of::<RelayValue>() == 24 + 48 * RELAY_MAX_OUT);

/// Per-CPU counters of one relay output, at `slot * RELAY_MAX_OUT + i` in
/// `RELAY_STATS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Copies sent by the kernel, and their UDP payload bytes.
    pub packets: u64,
    pub bytes: u64,
    /// Packets of this output left to the daemon (any pass reason).
    pub passed: u64,
    /// Input RTP sequence number of the first packet the kernel sent
    /// (valid when `packets > 0`): the daemon's hand-over point.
    pub first_seq: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns` of the first and last copy.
    pub first_ns: u64,
    pub last_ns: u64,
}
const _: () = assert!(core::mem::size_of::<RelayStats>() == 48);

/// A VLAN device on an attached interface, keyed by its ifindex in
/// `VLAN_DEVS`: XDP may send a tagged packet back out (XDP_TX) when the
/// route to the destination goes through this VLAN device.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VlanDev {
    pub parent_ifindex: u32,
    pub vid: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<VlanDev>() == 8);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), Copy, contain only integers and byte
    // arrays, and have no implicit padding (sizes are asserted above), so any
    // bit pattern is valid and they can be copied to and from the kernel.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowValue {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::EgressKey {}
    unsafe impl aya::Pod for super::EgressStats {}
    unsafe impl aya::Pod for super::StreamStats {}
    unsafe impl aya::Pod for super::RelayValue {}
    unsafe impl aya::Pod for super::RelayStats {}
    unsafe impl aya::Pod for super::VlanDev {}
    unsafe impl aya::Pod for super::SipGuard {}
    unsafe impl aya::Pod for super::SipSource {}
}
