//! What the CLI prints: JSON, and the tables of flows and streams.

use std::{io::Write, net::SocketAddr};

use anyhow::Result;
use serde::Serialize;

use crate::dataplane::{
    self,
    flows::{describe, flow_name},
};

pub(super) fn print_json<T: Serialize>(v: &T) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

#[derive(Serialize, Clone, Debug)]
pub struct FlowJson {
    pub flow: String,
    pub local: SocketAddr,
    pub ssrc: Option<u32>,
    pub expect_ssrc: Option<u32>,
    pub slot: u32,
    pub name: String,
    pub clock_rate: u32,
    pub created_unix: u64,
}

impl FlowJson {
    pub fn new(k: &gateway_common::FlowKey, v: &gateway_common::FlowValue) -> Self {
        FlowJson {
            flow: describe(k),
            local: dataplane::key_addr(k),
            ssrc: (k.by_ssrc != 0).then_some(k.ssrc),
            expect_ssrc: (v.flags & gateway_common::FLOW_EXPECT_SSRC != 0)
                .then_some(v.expected_ssrc),
            slot: v.slot,
            name: flow_name(v),
            clock_rate: if v.clock_rate == 0 {
                90_000
            } else {
                v.clock_rate
            },
            created_unix: v.created_unix,
        }
    }
}

/// A stream row for output: counters plus rates between two samples.
#[derive(Serialize, Clone, Debug)]
pub struct StreamJson {
    #[serde(flatten)]
    pub flow: FlowJson,
    pub current_ssrc: u32,
    pub packets: u64,
    pub bytes: u64,
    pub received: u64,
    pub expected: u64,
    pub lost: u64,
    pub out_of_order: u64,
    pub duplicates: u64,
    pub frames: u64,
    pub ssrc_mismatch: u64,
    pub not_rtp: u64,
    pub restarts: u64,
    pub highest_seq: u64,
    pub last_payload_type: u8,
    pub jitter_units: u32,
    pub jitter_ms: f64,
    /// Seconds since the last packet (null if none yet).
    pub idle_secs: Option<f64>,
    pub first_packet_ns: u64,
    pub last_packet_ns: u64,
    pub packets_per_sec: f64,
    pub bits_per_sec: f64,
}

fn human(v: f64) -> String {
    match v {
        v if v >= 1e9 => format!("{:.1}G", v / 1e9),
        v if v >= 1e6 => format!("{:.1}M", v / 1e6),
        v if v >= 1e3 => format!("{:.1}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

pub(super) fn print_table(rows: &[StreamJson]) {
    println!(
        "{:<30} {:<12} {:>10} {:>9} {:>7} {:>6} {:>6} {:>7} {:>5} {:>4} {:>8} {:>8} {:>8} {:>7}",
        "FLOW",
        "NAME",
        "SSRC",
        "PACKETS",
        "LOST",
        "OOO",
        "DUP",
        "FRAMES",
        "SSRC!",
        "PT",
        "JIT(ms)",
        "PKT/s",
        "BIT/s",
        "IDLE(s)"
    );
    for r in rows {
        println!(
            "{:<30} {:<12} {:>10} {:>9} {:>7} {:>6} {:>6} {:>7} {:>5} {:>4} {:>8.2} {:>8} {:>8} {:>7}",
            r.flow.flow,
            r.flow.name,
            r.current_ssrc,
            r.packets,
            r.lost,
            r.out_of_order,
            r.duplicates,
            r.frames,
            r.ssrc_mismatch,
            r.last_payload_type,
            r.jitter_ms,
            human(r.packets_per_sec),
            human(r.bits_per_sec),
            r.idle_secs.map(|s| format!("{s:.1}")).unwrap_or_else(|| "-".into()),
        );
    }
}
