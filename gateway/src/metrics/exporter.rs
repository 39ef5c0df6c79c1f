//! `/metrics`: the Prometheus text exposition format (docs/metrics.md).
//!
//! The control-plane counters live in a prometheus `Registry` and go out
//! through its `TextEncoder`. The per-stream and per-device families are
//! written straight into the response text from a published view: the SIP
//! core publishes its streams and devices every second ([`View`]), and a
//! scrape reads the kernel maps once (flow table by batch, stream slots
//! through the mmapped array). With 10 000 streams that is about 130 000
//! series; building them as prometheus `MetricFamily` values first would
//! cost more than the rest of the scrape (see the `metrics-bench` figures
//! in docs/architecture.md).
//!
//! Rendering runs on a blocking thread (`spawn_blocking`), not on the
//! runtime's workers that carry the media receivers.

use std::{
    collections::HashMap,
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, RwLock,
    },
    time::Instant,
};

use anyhow::{Context as _, Result};
use gateway_common::{counter, stats::StreamSummary};
use prometheus::{Histogram, HistogramOpts, IntGaugeVec, Opts, Registry};
use tracing::info;

use crate::{
    dataplane::Shared,
    stream::MediaStats,
    sys::clock::{monotonic_ns, wall_ms},
};

/// A stream as the metrics see it.
#[derive(Clone)]
pub struct StreamEntry {
    pub id: String,
    pub device: String,
    pub channel: String,
    pub transport: &'static str,
    pub stats: Arc<Mutex<MediaStats>>,
    /// Wall-clock ms at which the stream opened (age before a packet).
    pub opened_ms: i64,
}

/// A device as the metrics see it.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceRow {
    pub id: String,
    pub online: bool,
    pub registrations: u64,
    pub keepalives: u64,
    pub last_keepalive_ms: Option<i64>,
    /// The device's clock minus ours (seconds), when it told its time.
    pub time_offset_secs: Option<i64>,
}

/// What the SIP core publishes for scrapes.
#[derive(Default)]
pub struct View {
    streams: RwLock<Arc<Vec<StreamEntry>>>,
    devices: RwLock<Arc<Vec<DeviceRow>>>,
}

impl View {
    pub fn set_streams(&self, s: Vec<StreamEntry>) {
        *self.streams.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(s);
    }
    pub fn set_devices(&self, d: Vec<DeviceRow>) {
        *self.devices.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(d);
    }
    pub fn streams(&self) -> Arc<Vec<StreamEntry>> {
        self.streams
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    pub fn devices(&self) -> Arc<Vec<DeviceRow>> {
        self.devices
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The kernel side of a scrape.
pub struct Kernel {
    pub maps: Shared,
    pub iface: String,
    pub mode: &'static str,
}

pub struct Exporter {
    registry: Registry,
    view: Arc<View>,
    kernel: Option<Kernel>,
    readout: Histogram,
    scrape: Histogram,
    last_len: AtomicUsize,
}

fn histogram(reg: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .unwrap_or_else(|e| unreachable!("static metric definition {name}: {e}"));
    let _ = reg.register(Box::new(h.clone()));
    h
}

/// Label value escaping of the text format.
fn escape(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A whole family: HELP and TYPE, then `name{labels} value` per row.
fn family<'a, V: std::fmt::Display>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    rows: impl Iterator<Item = (&'a str, V)>,
) {
    header(out, name, kind, help);
    for (labels, v) in rows {
        let _ = writeln!(out, "{name}{{{labels}}} {v}");
    }
}

/// A per-stream family: name, help, and how to get its value.
type Family<T> = (&'static str, &'static str, fn(&Sample) -> T);

/// One stream's figures for a scrape.
#[derive(Default)]
struct Sample {
    labels: String,
    ssrc: Option<u32>,
    codec: Option<String>,
    kernel: bool,
    packets: u64,
    bytes: u64,
    lost: u64,
    out_of_order: u64,
    duplicates: u64,
    ssrc_mismatches: u64,
    frames: u64,
    jitter_s: f64,
    age_s: f64,
    decrypted: [(&'static str, u64); 2],
    decrypting: bool,
    failures: Vec<(&'static str, u64)>,
}

fn flow_name(n: &[u8]) -> &str {
    let end = n.iter().position(|&b| b == 0).unwrap_or(n.len());
    std::str::from_utf8(&n[..end]).unwrap_or("")
}

impl Exporter {
    pub fn new(registry: Registry, view: Arc<View>, kernel: Option<Kernel>) -> Arc<Exporter> {
        let readout = histogram(
            &registry,
            "gateway_kernel_readout_duration_seconds",
            "One read-out of the kernel maps (flow table by batch, stream slots by mmap)",
            prometheus::exponential_buckets(0.000_05, 2.0, 14)
                .unwrap_or_else(|_| vec![0.001, 0.01, 0.1, 1.0]),
        );
        let scrape = histogram(
            &registry,
            "gateway_scrape_duration_seconds",
            "Time to render /metrics",
            prometheus::exponential_buckets(0.000_5, 2.0, 12)
                .unwrap_or_else(|_| vec![0.001, 0.01, 0.1, 1.0]),
        );
        if let Ok(g) = IntGaugeVec::new(
            Opts::new(
                "gateway_build_info",
                "Version and target of the running binary",
            ),
            &["version", "target"],
        ) {
            g.with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                &format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS),
            ])
            .set(1);
            let _ = registry.register(Box::new(g));
        }
        let _ = registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        Arc::new(Exporter {
            registry,
            view,
            kernel,
            readout,
            scrape,
            last_len: AtomicUsize::new(64 * 1024),
        })
    }

    /// The read-out histogram, for the daemon's own periodic read-outs.
    pub fn readout_histogram(&self) -> Histogram {
        self.readout.clone()
    }

    /// The whole exposition text.
    pub fn render(&self) -> String {
        let t0 = Instant::now();
        let mut out = String::with_capacity(self.last_len.load(Ordering::Relaxed) + 4096);
        // The kernel first, once: every stream's summary and the counters.
        let kernel = self.kernel.as_ref().map(|k| {
            let mut maps = k.maps.lock();
            let t = Instant::now();
            let rows = maps.streams().unwrap_or_default();
            let counters = maps.counters().ok();
            let capacity = maps.max_streams();
            let relays = maps.relay_views().unwrap_or_default();
            self.readout.observe(t.elapsed().as_secs_f64());
            (rows, counters, capacity, relays)
        });
        let _ = prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out);
        let by_name: HashMap<&str, &StreamSummary> = kernel
            .as_ref()
            .map(|(rows, ..)| {
                rows.iter()
                    .map(|r| (flow_name(&r.flow.name), &r.stats))
                    .collect()
            })
            .unwrap_or_default();
        self.streams(&mut out, &by_name);
        self.devices(&mut out);
        if let (Some(k), Some((rows, counters, capacity, relays))) = (&self.kernel, &kernel) {
            kernel_families(&mut out, k, rows.len(), counters.as_ref(), *capacity);
            relay_families(&mut out, relays);
        }
        self.last_len.store(out.len(), Ordering::Relaxed);
        self.scrape.observe(t0.elapsed().as_secs_f64());
        out
    }

    fn streams(&self, out: &mut String, kernel: &HashMap<&str, &StreamSummary>) {
        let streams = self.view.streams();
        let now_mono = monotonic_ns();
        let now_wall = wall_ms();
        let mut samples = Vec::with_capacity(streams.len());
        let mut active: [(&str, u64); 3] = [("udp", 0), ("tcp-passive", 0), ("tcp-active", 0)];
        for s in streams.iter() {
            if let Some(a) = active.iter_mut().find(|(t, _)| *t == s.transport) {
                a.1 += 1;
            }
            let mut x = Sample::default();
            x.labels.push_str("device=\"");
            escape(&s.device, &mut x.labels);
            x.labels.push_str("\",channel=\"");
            escape(&s.channel, &mut x.labels);
            x.labels.push_str("\",stream=\"");
            escape(&s.id, &mut x.labels);
            let _ = write!(x.labels, "\",transport=\"{}\"", s.transport);
            {
                let m = s.stats.lock().unwrap_or_else(|e| e.into_inner());
                x.ssrc = m.ssrc;
                x.codec = m.codec.clone();
                x.packets = m.packets;
                x.bytes = m.bytes;
                x.lost = m.lost;
                x.out_of_order = m.out_of_order;
                x.duplicates = m.duplicates;
                x.ssrc_mismatches = m.ssrc_mismatches;
                x.frames = m.frames;
                x.jitter_s = m.jitter_ms / 1000.0;
                let last = m.last_packet_ms.unwrap_or(s.opened_ms);
                x.age_s = (now_wall - last).max(0) as f64 / 1000.0;
                let d = &m.decrypt;
                x.decrypting = !d.profiles.is_empty();
                x.decrypted = [("nal_unit", d.units), ("srtp_packet", d.srtp_packets)];
                x.failures = d.failures.iter().map(|(k, v)| (*k, *v)).collect();
            }
            // UDP with the data plane: the kernel's packet counters.
            if s.transport == "udp" {
                if let Some(k) = kernel.get(s.id.as_str()) {
                    x.kernel = true;
                    x.packets = k.packets;
                    x.bytes = k.bytes;
                    x.lost = k.lost;
                    x.out_of_order = k.out_of_order;
                    x.duplicates = k.duplicates;
                    x.ssrc_mismatches = k.ssrc_mismatch;
                    if k.last_ns > 0 {
                        x.age_s = now_mono.saturating_sub(k.last_ns) as f64 / 1e9;
                    }
                }
            }
            samples.push(x);
        }
        header(out, "gateway_streams_active", "gauge", "Open streams");
        for (t, n) in active {
            let _ = writeln!(out, "gateway_streams_active{{transport=\"{t}\"}} {n}");
        }
        header(
            out,
            "gateway_stream_info",
            "gauge",
            "Open stream (1): SSRC, codec, and whether packets are counted by the kernel",
        );
        for x in &samples {
            let _ = write!(out, "gateway_stream_info{{{},ssrc=\"", x.labels);
            if let Some(s) = x.ssrc {
                let _ = write!(out, "{s}");
            }
            out.push_str("\",codec=\"");
            escape(x.codec.as_deref().unwrap_or(""), out);
            let _ = writeln!(
                out,
                "\",counted_by=\"{}\"}} 1",
                if x.kernel { "kernel" } else { "userspace" }
            );
        }
        let counters: [Family<u64>; 7] = [
            (
                "gateway_stream_received_packets_total",
                "RTP packets received",
                |x| x.packets,
            ),
            (
                "gateway_stream_received_bytes_total",
                "RTP bytes received",
                |x| x.bytes,
            ),
            (
                "gateway_stream_lost_packets_total",
                "RTP packets lost (RFC 3550)",
                |x| x.lost,
            ),
            (
                "gateway_stream_out_of_order_packets_total",
                "RTP packets out of order",
                |x| x.out_of_order,
            ),
            (
                "gateway_stream_duplicate_packets_total",
                "Duplicate RTP packets",
                |x| x.duplicates,
            ),
            (
                "gateway_stream_ssrc_mismatch_packets_total",
                "Packets under another SSRC than the session's",
                |x| x.ssrc_mismatches,
            ),
            (
                "gateway_stream_frames_total",
                "Video frames delivered (after decryption)",
                |x| x.frames,
            ),
        ];
        for (name, help, get) in counters {
            let rows = samples.iter().map(|x| (x.labels.as_str(), get(x)));
            family(out, name, "counter", help, rows);
        }
        let gauges: [Family<f64>; 2] = [
            (
                "gateway_stream_jitter_seconds",
                "RTP interarrival jitter (RFC 3550)",
                |x| x.jitter_s,
            ),
            (
                "gateway_stream_last_packet_age_seconds",
                "Seconds since the last packet",
                |x| x.age_s,
            ),
        ];
        for (name, help, get) in gauges {
            let rows = samples.iter().map(|x| (x.labels.as_str(), get(x)));
            family(out, name, "gauge", help, rows);
        }
        header(
            out,
            "gateway_stream_decrypted_total",
            "counter",
            "Units decrypted: NAL units (sm4-nal-ofb) or SRTP packets (srtp-sm4)",
        );
        for x in samples.iter().filter(|x| x.decrypting) {
            for (unit, n) in x.decrypted {
                let _ = writeln!(
                    out,
                    "gateway_stream_decrypted_total{{{},unit=\"{unit}\"}} {n}",
                    x.labels
                );
            }
        }
        header(
            out,
            "gateway_stream_decrypt_failures_total",
            "counter",
            "Units or packets not decrypted, by reason",
        );
        for x in &samples {
            for (reason, n) in &x.failures {
                let _ = writeln!(
                    out,
                    "gateway_stream_decrypt_failures_total{{{},reason=\"{reason}\"}} {n}",
                    x.labels
                );
            }
        }
    }

    fn devices(&self, out: &mut String) {
        let devices = self.view.devices();
        let now = wall_ms();
        let mut labels = Vec::with_capacity(devices.len());
        for d in devices.iter() {
            let mut l = String::with_capacity(d.id.len() + 10);
            l.push_str("device=\"");
            escape(&d.id, &mut l);
            l.push('"');
            labels.push(l);
        }
        let rows: Vec<(&DeviceRow, &str)> = devices
            .iter()
            .zip(labels.iter().map(String::as_str))
            .collect();
        family(
            out,
            "gateway_device_online",
            "gauge",
            "Device online (1) or offline (0)",
            rows.iter().map(|(d, l)| (*l, d.online as u8)),
        );
        family(
            out,
            "gateway_device_registrations_total",
            "counter",
            "Accepted REGISTERs of the device (refreshes included)",
            rows.iter().map(|(d, l)| (*l, d.registrations)),
        );
        family(
            out,
            "gateway_device_keepalives_total",
            "counter",
            "Keepalives of the device",
            rows.iter().map(|(d, l)| (*l, d.keepalives)),
        );
        family(
            out,
            "gateway_device_last_keepalive_age_seconds",
            "gauge",
            "Seconds since the device's last keepalive",
            rows.iter().filter_map(|(d, l)| {
                d.last_keepalive_ms
                    .map(|t| (*l, (now - t).max(0) as f64 / 1000.0))
            }),
        );
        family(
            out,
            "gateway_device_time_offset_seconds",
            "gauge",
            "The device's clock minus the gateway's, from the times it reported",
            rows.iter()
                .filter_map(|(d, l)| d.time_offset_secs.map(|o| (*l, o))),
        );
    }
}

/// Per relay output: what the kernel sent and what it left to userspace.
fn relay_families(out: &mut String, relays: &[crate::dataplane::relay::RelayView]) {
    let mut rows = Vec::new();
    for r in relays {
        for o in &r.outputs {
            let mut l = String::from("stream=\"");
            escape(&r.name, &mut l);
            let _ = write!(l, "\",dest=\"{}\",ssrc=\"{}\"", o.dest, o.ssrc);
            rows.push((l, o.stats));
        }
    }
    family(
        out,
        "gateway_relay_kernel_packets_total",
        "counter",
        "Packets the kernel relay sent to a relay destination",
        rows.iter().map(|(l, s)| (l.as_str(), s.packets)),
    );
    family(
        out,
        "gateway_relay_kernel_bytes_total",
        "counter",
        "UDP payload bytes the kernel relay sent to a relay destination",
        rows.iter().map(|(l, s)| (l.as_str(), s.bytes)),
    );
    family(
        out,
        "gateway_relay_kernel_passed_total",
        "counter",
        "Packets of a kernel relay output left to the userspace relay",
        rows.iter().map(|(l, s)| (l.as_str(), s.passed)),
    );
}

fn kernel_families(
    out: &mut String,
    k: &Kernel,
    flows: usize,
    counters: Option<&[u64; counter::COUNT as usize]>,
    capacity: u32,
) {
    header(
        out,
        "gateway_kernel_attached",
        "gauge",
        "The XDP/TC programs are attached (1), with the XDP mode",
    );
    out.push_str("gateway_kernel_attached{iface=\"");
    escape(&k.iface, out);
    let _ = writeln!(out, "\",mode=\"{}\"}} 1", k.mode);
    header(
        out,
        "gateway_kernel_flows",
        "gauge",
        "Flows in the kernel table",
    );
    let _ = writeln!(out, "gateway_kernel_flows {flows}");
    header(
        out,
        "gateway_kernel_flow_capacity",
        "gauge",
        "Size of the kernel flow table",
    );
    let _ = writeln!(out, "gateway_kernel_flow_capacity {capacity}");
    let Some(c) = counters else { return };
    header(
        out,
        "gateway_kernel_packets_total",
        "counter",
        "Packets seen by the XDP/TC programs, by classification",
    );
    for (i, name) in counter::NAMES.iter().enumerate() {
        let i = i as u32;
        if i == counter::MATCHED_BYTES || i == counter::VERDICT_PASS || i == counter::VERDICT_DROP {
            continue;
        }
        let _ = writeln!(
            out,
            "gateway_kernel_packets_total{{reason=\"{name}\"}} {}",
            c[i as usize]
        );
    }
    header(
        out,
        "gateway_kernel_verdicts_total",
        "counter",
        "XDP verdicts",
    );
    let _ = writeln!(
        out,
        "gateway_kernel_verdicts_total{{verdict=\"pass\"}} {}",
        c[counter::VERDICT_PASS as usize]
    );
    let _ = writeln!(
        out,
        "gateway_kernel_verdicts_total{{verdict=\"drop\"}} {}",
        c[counter::VERDICT_DROP as usize]
    );
    header(
        out,
        "gateway_kernel_matched_bytes_total",
        "counter",
        "UDP payload bytes of RTP matched to a flow",
    );
    let _ = writeln!(
        out,
        "gateway_kernel_matched_bytes_total {}",
        c[counter::MATCHED_BYTES as usize]
    );
}

/// Serves `GET /metrics` on `listen`; returns the bound address.
pub async fn serve(listen: SocketAddr, exporter: Arc<Exporter>) -> Result<SocketAddr> {
    use axum::{http::header, response::IntoResponse, routing::get, Router};
    let l = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the metrics endpoint on {listen}"))?;
    let addr = l.local_addr()?;
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let e = exporter.clone();
                async move {
                    match tokio::task::spawn_blocking(move || e.render()).await {
                        Ok(text) => (
                            [(
                                header::CONTENT_TYPE,
                                "text/plain; version=0.0.4; charset=utf-8",
                            )],
                            text,
                        )
                            .into_response(),
                        Err(_) => (
                            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                            "rendering the metrics failed\n",
                        )
                            .into_response(),
                    }
                }
            }),
        )
        .fallback(|| async {
            (
                axum::http::StatusCode::NOT_FOUND,
                "metrics are at /metrics\n",
            )
        });
    info!(%addr, "metrics endpoint listening");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(l, app).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(id: &str, transport: &'static str, f: impl FnOnce(&mut MediaStats)) -> StreamEntry {
        let mut m = MediaStats::default();
        f(&mut m);
        StreamEntry {
            id: id.into(),
            device: "34020000001320000001".into(),
            channel: "34020000001310000001".into(),
            transport,
            stats: Arc::new(Mutex::new(m)),
            opened_ms: wall_ms(),
        }
    }

    #[test]
    fn streams_and_devices_render_and_go_away() {
        let view = Arc::new(View::default());
        let reg = Registry::new();
        let _sip = crate::metrics::sip::SipMetrics::new(&reg);
        let e = Exporter::new(reg, view.clone(), None);
        view.set_streams(vec![
            stream("0200000001", "udp", |m| {
                m.packets = 120;
                m.bytes = 150_000;
                m.lost = 3;
                m.jitter_ms = 2.5;
                m.frames = 25;
                m.decrypt.profiles.push("srtp-sm4");
                m.decrypt.srtp_packets = 117;
                m.decrypt.failures.insert("bad_tag", 2);
            }),
            stream("cam\"1", "tcp-active", |_| {}),
        ]);
        view.set_devices(vec![DeviceRow {
            id: "34020000001320000001".into(),
            online: true,
            registrations: 2,
            keepalives: 9,
            last_keepalive_ms: Some(wall_ms() - 1500),
            time_offset_secs: Some(-120),
        }]);
        let t = e.render();
        let l = r#"device="34020000001320000001",channel="34020000001310000001",stream="0200000001",transport="udp""#;
        for want in [
            format!("gateway_stream_received_packets_total{{{l}}} 120\n"),
            format!("gateway_stream_received_bytes_total{{{l}}} 150000\n"),
            format!("gateway_stream_lost_packets_total{{{l}}} 3\n"),
            format!("gateway_stream_jitter_seconds{{{l}}} 0.0025\n"),
            format!("gateway_stream_frames_total{{{l}}} 25\n"),
            format!("gateway_stream_decrypted_total{{{l},unit=\"srtp_packet\"}} 117\n"),
            format!("gateway_stream_decrypt_failures_total{{{l},reason=\"bad_tag\"}} 2\n"),
            "gateway_streams_active{transport=\"udp\"} 1\n".to_string(),
            "stream=\"cam\\\"1\"".to_string(),
            "gateway_device_online{device=\"34020000001320000001\"} 1\n".to_string(),
            "gateway_device_keepalives_total{device=\"34020000001320000001\"} 9\n".to_string(),
            "gateway_device_time_offset_seconds{device=\"34020000001320000001\"} -120\n"
                .to_string(),
            "gateway_build_info{".to_string(),
            "process_resident_memory_bytes ".to_string(),
        ] {
            assert!(t.contains(&want), "missing {want:?} in\n{t}");
        }
        let age = t
            .lines()
            .find(|l| l.starts_with("gateway_device_last_keepalive_age_seconds{"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap();
        assert!((1.5..60.0).contains(&age), "{age}");
        // Only decrypting streams have decrypted series.
        assert!(!t.contains("stream=\"cam\\\"1\",transport=\"tcp-active\",unit="));
        view.set_streams(Vec::new());
        let t = e.render();
        assert!(
            !t.contains("0200000001"),
            "series of an ended stream remain"
        );
        assert!(t.contains("gateway_streams_active{transport=\"udp\"} 0\n"));
    }

    #[test]
    fn every_family_has_help_and_type_once() {
        let view = Arc::new(View::default());
        view.set_streams(vec![stream("1", "udp", |_| {})]);
        let e = Exporter::new(Registry::new(), view, None);
        let t = e.render();
        let mut seen = std::collections::HashSet::new();
        for l in t.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = l.split(' ').nth(2).unwrap();
            assert!(seen.insert(name.to_string()), "{name} twice");
            assert!(
                name.starts_with("gateway_") || name.starts_with("process_"),
                "{name}"
            );
        }
    }
}
