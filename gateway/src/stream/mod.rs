//! Media of a live session: receive RTP (UDP, or RFC 4571 over TCP with
//! the gateway listening or connecting), account it per SSRC, reorder,
//! demux PS (or depacketize raw H.264/H.265) into access units, and record
//! them (Annex-B elementary stream and/or the original PS), rotating files
//! by size or time.
//!
//! [`Pipeline`] is the synchronous part (one packet in, frames to the
//! sinks), unit-tested here; [`start`] runs it on a socket in a task.
//! Encrypted media is decrypted on the way ([`crypto`]): SRTP before the
//! packet is accounted, NAL units after the demuxer; recorder and
//! forwarders get clear media only.

pub mod crypto;
mod forward;
mod pipeline;
mod receiver;
mod recorder;
#[cfg(test)]
mod tests;

use serde::Serialize;

use crypto::DecryptStats;

pub use crate::config::RecordConfig;
pub use forward::{Forward, ForwardStats, LegShared};
pub use pipeline::Legs;
pub(crate) use pipeline::*;
pub use receiver::{bind, start, Bound, Receiver};
pub(crate) use recorder::*;

/// What a session's media did (shown in the stream API).
#[derive(Debug, Clone, Default, Serialize)]
pub struct MediaStats {
    pub packets: u64,
    pub bytes: u64,
    pub lost: u64,
    pub out_of_order: u64,
    pub duplicates: u64,
    /// Interarrival jitter (RFC 3550 A.8), milliseconds.
    pub jitter_ms: f64,
    pub frames: u64,
    pub keyframes: u64,
    /// SSRC of the media received.
    pub ssrc: Option<u32>,
    /// Packets under another SSRC than the session asked for.
    pub ssrc_mismatches: u64,
    /// Datagrams (or TCP packets) that are not RTP.
    pub garbage: u64,
    /// PS resynchronisations and dropped (damaged or oversized) frames.
    pub ps_resyncs: u64,
    pub dropped_frames: u64,
    pub codec: Option<String>,
    pub last_packet_ms: Option<i64>,
    /// Files written (current last).
    pub files: Vec<String>,
    /// TCP: peer of the media connection.
    pub peer: Option<String>,
    /// UDP: where the media comes from, and whether it is confirmed (the
    /// same source for `SOURCE_CONFIRM` packets in a row).
    pub source: Option<std::net::SocketAddr>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub source_confirmed: bool,
    /// Forwarding destinations and what was sent to each.
    pub forwards: Vec<ForwardStats>,
    /// Decryption (SM4 profiles): what was decrypted, what failed and why.
    pub decrypt: DecryptStats,
}
