//! The report: what the devices and their streams did, shared by all
//! tasks, written to `--status-file` as JSON every second and at exit.

use std::{
    path::{Path, PathBuf},
    sync::Mutex,
    time::{SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DeviceReport {
    pub id: String,
    /// "udp" or "tcp".
    pub sip_transport: String,
    /// Local SIP address (empty until the socket exists).
    pub local: String,
    pub registered: bool,
    /// Successful REGISTERs (refreshes included).
    pub registrations: u64,
    pub register_failures: u64,
    pub keepalives_sent: u64,
    pub keepalives_ok: u64,
    pub queries_answered: u64,
    /// Controls received (DeviceControl, ...): "<CmdType> <target> <the
    /// command's elements as name=value>", in order.
    pub controls: Vec<String>,
    pub channels: Vec<String>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamReport {
    pub device: String,
    pub channel: String,
    pub call_id: String,
    /// y= as answered.
    pub y: String,
    /// RTP SSRC sent (y= as a number).
    pub ssrc: u32,
    /// From the platform's side, as its API names it: "udp",
    /// "tcp-passive" (the platform listens), "tcp-active" (it connects).
    pub transport: String,
    /// Where the media goes (UDP), or the TCP peer once connected.
    pub destination: String,
    /// Our media address (the answer's c=/m=).
    pub local: String,
    pub codec: Option<String>,
    /// "answered" (waiting for ACK), "connecting", "streaming", "idle"
    /// (file sent, session open), "ended".
    pub state: String,
    pub frames_sent: u64,
    /// RTP packets on the wire, duplicates included.
    pub packets_sent: u64,
    /// Packets the impairment schedule dropped (never sent).
    pub packets_dropped: u64,
    pub packets_duplicated: u64,
    pub packets_reordered: u64,
    /// RTP bytes on the wire (header + payload, duplicates included,
    /// without the RFC 4571 length prefix).
    pub bytes_sent: u64,
    /// UDP sends that failed (not counted in packets_sent).
    pub send_errors: u64,
    /// --encrypt: the profile, the key version in use and the access units
    /// encrypted (sm4-nal-ofb).
    pub encryption: Option<String>,
    pub key_version: Option<u32>,
    pub encrypted_frames: u64,
    /// Complete passes over the file.
    pub loops: u64,
    /// Unix milliseconds.
    pub started: i64,
    pub ended: Option<i64>,
    pub reason: Option<String>,
}

impl StreamReport {
    /// Marks the stream ended (the first reason wins).
    pub fn end(&mut self, reason: &str) {
        if self.ended.is_none() {
            self.ended = Some(now_ms());
            self.state = "ended".into();
        }
        if self.reason.is_none() {
            self.reason = Some(reason.to_string());
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub streams: usize,
    pub frames_sent: u64,
    pub packets_sent: u64,
    pub packets_dropped: u64,
    pub bytes_sent: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub server: String,
    pub platform_id: String,
    pub media: Option<String>,
    pub codec: Option<String>,
    /// Access units in the media file.
    pub file_frames: usize,
    pub started: i64,
    pub updated: i64,
    pub finished: bool,
    pub devices_total: usize,
    /// Devices registered now (false again after unregistering at exit).
    pub devices_registered: usize,
    /// Devices that registered at least once.
    pub devices_ever_registered: usize,
    pub totals: Totals,
    pub devices: Vec<DeviceReport>,
    pub streams: Vec<StreamReport>,
}

/// The report behind a lock; tasks update it at most once per frame.
pub struct Shared {
    report: Mutex<Report>,
}

impl Shared {
    pub fn new(r: Report) -> Self {
        Shared {
            report: Mutex::new(r),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Report) -> T) -> T {
        let mut g = self.report.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    pub fn device(&self, i: usize, f: impl FnOnce(&mut DeviceReport)) {
        self.with(|r| {
            if let Some(d) = r.devices.get_mut(i) {
                f(d)
            }
        })
    }

    pub fn stream(&self, i: usize, f: impl FnOnce(&mut StreamReport)) {
        self.with(|r| {
            if let Some(s) = r.streams.get_mut(i) {
                f(s)
            }
        })
    }

    /// Adds a stream; returns its index.
    pub fn add_stream(&self, s: StreamReport) -> usize {
        self.with(|r| {
            r.streams.push(s);
            r.streams.len() - 1
        })
    }

    /// A consistent copy with the totals filled in.
    pub fn snapshot(&self, finished: bool) -> Report {
        self.with(|r| {
            r.updated = now_ms();
            r.finished = finished;
            r.devices_registered = r.devices.iter().filter(|d| d.registered).count();
            r.devices_ever_registered = r.devices.iter().filter(|d| d.registrations > 0).count();
            r.totals = Totals {
                streams: r.streams.len(),
                frames_sent: r.streams.iter().map(|s| s.frames_sent).sum(),
                packets_sent: r.streams.iter().map(|s| s.packets_sent).sum(),
                packets_dropped: r.streams.iter().map(|s| s.packets_dropped).sum(),
                bytes_sent: r.streams.iter().map(|s| s.bytes_sent).sum(),
            };
            r.clone()
        })
    }
}

/// Writes the report atomically (temporary file, then rename).
pub fn write(path: &Path, r: &Report) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(r).map_err(std::io::Error::other)?;
    let mut tmp = PathBuf::from(path);
    let name = format!(
        ".{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "status".into())
    );
    tmp.set_file_name(name);
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, path)
}
