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
    /// RecordInfo queries answered.
    pub record_queries: u64,
    /// Alarms raised (--alarm-after), and the platform's Responses to them.
    pub alarms_sent: u64,
    pub alarm_acks: u64,
    /// Controls received (DeviceControl, ...): "<CmdType> <target> <the
    /// command's elements as name=value>", in order.
    pub controls: Vec<String>,
    /// What the DeviceControls did, per target (channel or device).
    pub control_state: std::collections::BTreeMap<String, ControlState>,
    pub channels: Vec<String>,
    /// Subscriptions the platform made, by CmdType (Catalog, Alarm,
    /// MobilePosition).
    pub subscriptions: std::collections::BTreeMap<String, SubReport>,
    pub last_error: Option<String>,
}

/// One kind of subscription, as the platform used it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SubReport {
    pub active: bool,
    /// Seconds granted last.
    pub expires: u32,
    /// New subscriptions, in-dialog refreshes, unsubscriptions (Expires
    /// 0), subscriptions that ran out without a refresh, refusals.
    pub subscribes: u64,
    pub refreshes: u64,
    pub unsubscribes: u64,
    pub expired: u64,
    pub refused: u64,
    /// NOTIFYs sent, and those the platform answered 2xx.
    pub notifies_sent: u64,
    pub notifies_ok: u64,
}

/// A simulated PTZ camera's state, as its DeviceControls left it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ControlState {
    /// Valid PTZCmds received, and what the last one meant
    /// (`left+up`, `stop`, `preset-call 3`, ...: PtzCmd::describe).
    pub ptz_commands: u64,
    pub last_ptz: Option<String>,
    /// The last PTZCmd, as received (hex).
    pub last_ptz_hex: Option<String>,
    /// PTZCmds refused (bad format or checksum), with why.
    pub ptz_errors: Vec<String>,
    /// Moving (pan/tilt/zoom/focus/iris) since the last command.
    pub moving: bool,
    /// Presets set (and not deleted), and the last one called.
    pub presets: std::collections::BTreeSet<u8>,
    pub at_preset: Option<u8>,
    pub guard: Option<bool>,
    pub recording: Option<bool>,
    pub alarm_resets: u64,
    pub iframes: u64,
    /// The last drag zoom: "in|out LENGTHxWIDTH at MIDX,MIDY size LXxLY".
    pub drag_zoom: Option<String>,
    /// The home position: "off", or "preset N after S s".
    pub home_position: Option<String>,
    pub teleboots: u64,
}

impl ControlState {
    /// Applies a DeviceControl's leaves (manscdp::leaf_paths); true when
    /// the standard has the device answer it with a DeviceControl
    /// Response (guard, alarm reset, record, home position).
    pub fn apply(&mut self, leaves: &[(String, String)]) -> bool {
        // By element name, whatever it is nested in.
        let get = |name: &str| {
            leaves
                .iter()
                .find(|(n, _)| {
                    n.rsplit('/')
                        .next()
                        .is_some_and(|last| last.eq_ignore_ascii_case(name))
                })
                .map(|(_, v)| v.trim().to_string())
        };
        let num = |name: &str| get(name).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
        if let Some(hex) = get("PTZCmd") {
            match gb28181::control::PtzCmd::parse(&hex) {
                Ok(p) => {
                    self.ptz_commands += 1;
                    self.last_ptz_hex = Some(hex);
                    let what = p.describe();
                    match p.instruction {
                        0x81 => {
                            self.presets.insert(p.data2);
                        }
                        0x82 if self.presets.contains(&p.data2) => self.at_preset = Some(p.data2),
                        0x83 => {
                            self.presets.remove(&p.data2);
                        }
                        _ => {}
                    }
                    self.moving = matches!(p.instruction, 0x01..=0x3F | 0x41..=0x4F | 0x88 | 0x89);
                    if self.moving {
                        self.at_preset = None;
                    }
                    self.last_ptz = Some(what);
                }
                Err(e) => self.ptz_errors.push(format!("{hex}: {e}")),
            }
            return false;
        }
        if let Some(g) = get("GuardCmd") {
            self.guard = Some(g.eq_ignore_ascii_case("SetGuard"));
            return true;
        }
        if get("AlarmCmd").is_some() {
            self.alarm_resets += 1;
            return true;
        }
        if let Some(r) = get("RecordCmd") {
            self.recording = Some(r.eq_ignore_ascii_case("Record"));
            return true;
        }
        if get("IFameCmd").is_some() {
            self.iframes += 1;
            return false;
        }
        if get("TeleBoot").is_some() {
            self.teleboots += 1;
            return false;
        }
        if let Some(en) = get("Enabled") {
            self.home_position = Some(if en == "1" {
                format!("preset {} after {} s", num("PresetIndex"), num("ResetTime"))
            } else {
                "off".into()
            });
            return true;
        }
        if get("MidPointX").is_some() {
            let dir = if leaves.iter().any(|(n, _)| n.starts_with("DragZoomOut/")) {
                "out"
            } else {
                "in"
            };
            self.drag_zoom = Some(format!(
                "{dir} {}x{} at {},{} size {}x{}",
                num("Length"),
                num("Width"),
                num("MidPointX"),
                num("MidPointY"),
                num("LengthX"),
                num("LengthY")
            ));
            return false;
        }
        false
    }
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
    /// Playback: the MANSRTSP controls received, in order ("PAUSE",
    /// "PLAY", "PLAY Scale=2", "PLAY Range=npt=8-"), the pause and speed
    /// in effect, and the next frame's index in the file.
    pub mansrtsp: Vec<String>,
    pub paused: bool,
    pub scale: Option<f32>,
    pub file_frame: u64,
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

    /// Runs `f` on device `i`'s report; what it returns, or the default
    /// when there is no such device.
    pub fn device<T: Default>(&self, i: usize, f: impl FnOnce(&mut DeviceReport) -> T) -> T {
        self.with(|r| r.devices.get_mut(i).map(f).unwrap_or_default())
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
