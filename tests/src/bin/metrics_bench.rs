//! `/metrics` scrape cost (root: loads the data plane, no attach) with
//! 1 000 and 10 000 open streams (UDP, each with a kernel flow, and one
//! device per stream). Prints, per size and beside each other:
//!
//! - the kernel read-out alone (flow table by BPF_MAP_LOOKUP_BATCH, slots
//!   through the mmapped array), the baseline every scrape pays;
//! - a whole scrape (`Exporter::render`): read-out, registry, per-stream
//!   and per-device families; bytes of text, heap allocations and bytes
//!   allocated per scrape;
//! - the same per-stream families built through the prometheus crate
//!   (`IntCounterVec`/`GaugeVec` with labels, then `TextEncoder`), which is
//!   why the exporter writes those families itself.
//!
//! Goal of the issue: a 10 000-stream scrape under 50 ms on this machine.
//! `--quick`: fewer rounds.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use gateway::{
    dataplane::{attach, flows::FlowSpec, Shared},
    metrics::exporter::{DeviceRow, Exporter, Kernel, StreamEntry, View},
    stream::MediaStats,
    sys,
};
use prometheus::{Encoder as _, GaugeVec, IntCounterVec, Opts, Registry};

#[allow(unsafe_code)] // a GlobalAlloc is an unsafe trait
mod counting {
    use std::{
        alloc::{GlobalAlloc, Layout, System},
        sync::atomic::{AtomicU64, Ordering},
    };

    pub static ALLOCS: AtomicU64 = AtomicU64::new(0);
    pub static BYTES: AtomicU64 = AtomicU64::new(0);

    /// The system allocator, counting allocations and their bytes.
    pub struct Counting;

    // SAFETY: every call is forwarded unchanged to the system allocator,
    // which upholds GlobalAlloc's contract; the counters are plain atomics.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(l.size() as u64, Ordering::Relaxed);
            // SAFETY: forwarded with the caller's layout.
            unsafe { System.alloc(l) }
        }
        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            // SAFETY: `p` came from `alloc` above with this layout.
            unsafe { System.dealloc(p, l) }
        }
        unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(new as u64, Ordering::Relaxed);
            // SAFETY: forwarded unchanged; `p` came from this allocator.
            unsafe { System.realloc(p, l, new) }
        }
    }

    pub fn snapshot() -> (u64, u64) {
        (
            ALLOCS.load(Ordering::Relaxed),
            BYTES.load(Ordering::Relaxed),
        )
    }
}

#[global_allocator]
static ALLOC: counting::Counting = counting::Counting;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn entries(n: usize) -> (Vec<StreamEntry>, Vec<DeviceRow>) {
    let now = gateway::sys::clock::wall_ms();
    let streams = (0..n)
        .map(|i| {
            let m = MediaStats {
                packets: 1_000 + i as u64,
                bytes: 1_300_000 + i as u64,
                lost: i as u64 % 7,
                frames: 250,
                jitter_ms: 1.25,
                last_packet_ms: Some(now),
                ssrc: Some(i as u32),
                codec: Some("h264".into()),
                ..MediaStats::default()
            };
            StreamEntry {
                id: format!("{:010}", 200_000_000 + i),
                device: format!("3402000000132{:07}", i),
                channel: format!("3402000000131{:07}", i),
                transport: "udp",
                stats: Arc::new(Mutex::new(m)),
                opened_ms: now,
            }
        })
        .collect();
    let devices = (0..n)
        .map(|i| DeviceRow {
            id: format!("3402000000132{:07}", i),
            online: true,
            registrations: 1,
            keepalives: 60,
            last_keepalive_ms: Some(now - 5_000),
            time_offset_secs: None,
        })
        .collect();
    (streams, devices)
}

/// The per-stream families through the prometheus crate.
fn crate_families(streams: &[StreamEntry]) -> usize {
    let reg = Registry::new();
    let labels = ["device", "channel", "stream", "transport"];
    let counters: Vec<IntCounterVec> = [
        "gateway_stream_received_packets_total",
        "gateway_stream_received_bytes_total",
        "gateway_stream_lost_packets_total",
        "gateway_stream_out_of_order_packets_total",
        "gateway_stream_duplicate_packets_total",
        "gateway_stream_ssrc_mismatch_packets_total",
        "gateway_stream_frames_total",
    ]
    .iter()
    .map(|n| {
        let v = IntCounterVec::new(Opts::new(*n, "h"), &labels).expect("metric");
        reg.register(Box::new(v.clone())).expect("register");
        v
    })
    .collect();
    let gauges: Vec<GaugeVec> = [
        "gateway_stream_jitter_seconds",
        "gateway_stream_last_packet_age_seconds",
    ]
    .iter()
    .map(|n| {
        let v = GaugeVec::new(Opts::new(*n, "h"), &labels).expect("metric");
        reg.register(Box::new(v.clone())).expect("register");
        v
    })
    .collect();
    for s in streams {
        let m = s.stats.lock().expect("lock");
        let l = [s.device.as_str(), &s.channel, &s.id, s.transport];
        let vals = [
            m.packets,
            m.bytes,
            m.lost,
            m.out_of_order,
            m.duplicates,
            m.ssrc_mismatches,
            m.frames,
        ];
        for (c, v) in counters.iter().zip(vals) {
            c.with_label_values(&l).inc_by(v);
        }
        gauges[0].with_label_values(&l).set(m.jitter_ms / 1000.0);
        gauges[1].with_label_values(&l).set(0.5);
    }
    let mut buf = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&reg.gather(), &mut buf)
        .expect("encode");
    buf.len()
}

fn main() -> anyhow::Result<()> {
    if !sys::is_root() {
        anyhow::bail!("the metrics benchmark needs root (it loads the BPF programs)");
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 5 } else { 15 };
    println!(
        "# /metrics scrape benchmark ({}; median of {rounds})\n",
        if quick { "quick" } else { "full" }
    );
    println!("| streams | kernel read-out ms | scrape ms | scrape / read-out | text MB | allocs / scrape | MB allocated / scrape | per-stream families via prometheus crate ms | crate / scrape |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for n in [1_000usize, 10_000] {
        let (_ebpf, mut maps) = attach::load((n as u32).next_power_of_two(), None)?;
        let specs: Vec<FlowSpec> = (0..n)
            .map(|i| FlowSpec {
                local: Some(SocketAddr::from((
                    [198, 18, 0, 1],
                    30_000 + (i % 1000) as u16,
                ))),
                ssrc: Some(i as u32),
                expect_ssrc: None,
                name: format!("{:010}", 200_000_000 + i),
                clock_rate: 90_000,
            })
            .collect();
        maps.add_flows(&specs)?;
        // The read-out alone.
        let mut ro = Vec::new();
        for _ in 0..rounds {
            let t = Instant::now();
            let rows = maps.streams()?;
            let c = maps.counters()?;
            ro.push(t.elapsed().as_secs_f64());
            assert_eq!(rows.len(), n);
            std::hint::black_box(c);
        }
        let view = Arc::new(View::default());
        let (streams, devices) = entries(n);
        view.set_streams(streams.clone());
        view.set_devices(devices);
        let registry = Registry::new();
        let _sip = gateway::metrics::SipMetrics::new(&registry);
        let exp = Exporter::new(
            registry,
            view,
            Some(Kernel {
                maps: Shared::new(maps),
                iface: "bench".into(),
                mode: "native",
            }),
        );
        let warm = exp.render();
        let series = warm.lines().filter(|l| !l.starts_with('#')).count();
        assert!(
            warm.contains("counted_by=\"kernel\""),
            "streams joined to kernel flows"
        );
        let mut sc = Vec::new();
        let (mut allocs, mut bytes) = (0u64, 0u64);
        let mut len = 0;
        for _ in 0..rounds {
            let (a0, b0) = counting::snapshot();
            let t = Instant::now();
            let text = exp.render();
            sc.push(t.elapsed().as_secs_f64());
            let (a1, b1) = counting::snapshot();
            allocs = a1 - a0;
            bytes = b1 - b0;
            len = text.len();
            std::hint::black_box(text);
        }
        let mut cr = Vec::new();
        for _ in 0..rounds.min(5) {
            let t = Instant::now();
            std::hint::black_box(crate_families(&streams));
            cr.push(t.elapsed().as_secs_f64());
        }
        let (ro, sc, cr) = (median(ro) * 1e3, median(sc) * 1e3, median(cr) * 1e3);
        println!(
            "| {n} | {ro:.2} | {sc:.2} | {:.1} | {:.2} | {allocs} | {:.2} | {cr:.2} | {:.1} |",
            sc / ro,
            len as f64 / 1e6,
            bytes as f64 / 1e6,
            cr / sc
        );
        println!("<!-- {n} streams: {series} series -->");
    }
    println!("\nGoal: a 10 000-stream scrape under 50 ms.");
    Ok(())
}
