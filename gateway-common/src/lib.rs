//! Types shared by the kernel programs (`gateway-ebpf`) and the daemon
//! (`gateway`): map keys and values, configuration, counter indices, and the
//! per-packet RTP statistics update ([`stats::update`]), which is plain Rust
//! so that the same code runs in the XDP program and in unit tests.
//!
//! Every type crossing the kernel boundary is `#[repr(C)]`, `Copy`, has no
//! implicit padding and has its size asserted at compile time.
#![cfg_attr(not(test), no_std)]

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
}

/// Program names in the object file.
pub mod prog_names {
    pub const XDP: &str = "gateway_xdp";
    pub const TC_EGRESS: &str = "gateway_tc_egress";
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
    /// Number of counters (array size).
    pub const COUNT: u32 = 16;

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
    ];
}

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
}
