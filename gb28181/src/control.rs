//! DeviceControl (GB/T 28181-2016 A.2.3.1, annex A.3): the commands a
//! platform sends a device in a `<Control>` body, and the 8-byte front-end
//! command `PTZCmd` with its two checksums.
//!
//! `PTZCmd` (A.3.1), as 16 hex digits:
//!
//! | byte | content |
//! |---|---|
//! | 1 | `A5` |
//! | 2 | high nibble: version (0); low nibble: (byte 1 high + byte 1 low + byte 2 high nibble) mod 16 |
//! | 3 | address, low 8 bits |
//! | 4 | instruction |
//! | 5, 6 | data 1, data 2 |
//! | 7 | high nibble: data 3; low nibble: address, high 4 bits |
//! | 8 | (bytes 1..7) mod 256 |
//!
//! Instructions: PTZ (A.3.2) `00ZZTTPP`-style bits (right 0x01, left 0x02,
//! down 0x04, up 0x08, zoom in/tele 0x10, zoom out/wide 0x20; data 1 pan
//! speed, data 2 tilt speed, data 3 zoom speed); FI (A.3.3) 0x40 with focus
//! far 0x01, near 0x02, iris open 0x04, close 0x08 (data 1 focus speed,
//! data 2 iris speed); presets (A.3.4) 0x81 set, 0x82 call, 0x83 delete
//! (data 2 the preset); cruise (A.3.5) 0x84 add point, 0x85 delete point,
//! 0x86 speed, 0x87 dwell time, 0x88 start (data 1 the group, data 2 the
//! preset or the value's low 8 bits, data 3 its high 4 bits); scan (A.3.6)
//! 0x89 start / set left / set right (data 2 = 0, 1, 2), 0x8A speed;
//! auxiliary switches (A.3.7) 0x8C on, 0x8D off (data 1 the switch). All
//! zero is stop.

use serde::{Deserialize, Serialize};

/// A decoded or to-be-encoded `PTZCmd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct PtzCmd {
    pub instruction: u8,
    pub data1: u8,
    pub data2: u8,
    /// 4 bits.
    pub data3: u8,
    /// 12 bits (byte 3, and the low nibble of byte 7 as the high bits).
    pub address: u16,
}

/// Why a `PTZCmd` string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PtzError {
    #[error("PTZCmd is not 16 hex digits")]
    Format,
    #[error("PTZCmd does not start with A5")]
    Lead,
    #[error("PTZCmd byte 2 checksum is wrong")]
    HeadChecksum,
    #[error("PTZCmd byte 8 checksum is wrong")]
    Checksum,
}

impl PtzCmd {
    /// The 8 bytes, checksums included.
    pub fn bytes(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = 0xA5;
        // Version 0 in the high nibble; (A + 5 + 0) mod 16 = F in the low.
        b[1] = 0x0F;
        b[2] = (self.address & 0xFF) as u8;
        b[3] = self.instruction;
        b[4] = self.data1;
        b[5] = self.data2;
        b[6] = ((self.data3 & 0x0F) << 4) | ((self.address >> 8) & 0x0F) as u8;
        b[7] = b[..7].iter().fold(0u8, |s, x| s.wrapping_add(*x));
        b
    }

    /// Upper-case hex, as `<PTZCmd>` carries it.
    pub fn to_hex(&self) -> String {
        self.bytes().iter().map(|b| format!("{b:02X}")).collect()
    }

    /// Parses and checks a `<PTZCmd>` (either case, surrounding space
    /// allowed).
    pub fn parse(hex: &str) -> Result<PtzCmd, PtzError> {
        let hex = hex.trim();
        if hex.len() != 16 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(PtzError::Format);
        }
        let mut b = [0u8; 8];
        for (i, byte) in b.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| PtzError::Format)?;
        }
        if b[0] != 0xA5 {
            return Err(PtzError::Lead);
        }
        if (0xA + 0x5 + (b[1] >> 4)) & 0x0F != b[1] & 0x0F {
            return Err(PtzError::HeadChecksum);
        }
        if b[..7].iter().fold(0u8, |s, x| s.wrapping_add(*x)) != b[7] {
            return Err(PtzError::Checksum);
        }
        Ok(PtzCmd {
            instruction: b[3],
            data1: b[4],
            data2: b[5],
            data3: b[6] >> 4,
            address: u16::from(b[2]) | (u16::from(b[6] & 0x0F) << 8),
        })
    }

    /// What the instruction means, in words (`left+up zoom-in`, `stop`,
    /// `preset-call 5`, ...), for logs and the simulator.
    pub fn describe(&self) -> String {
        let i = self.instruction;
        match i {
            0 => "stop".into(),
            0x01..=0x3F => {
                let mut parts = Vec::new();
                for (bit, name) in [
                    (0x02, "left"),
                    (0x01, "right"),
                    (0x08, "up"),
                    (0x04, "down"),
                    (0x10, "zoom-in"),
                    (0x20, "zoom-out"),
                ] {
                    if i & bit != 0 {
                        parts.push(name);
                    }
                }
                parts.join("+")
            }
            0x40..=0x4F => {
                let mut parts = Vec::new();
                for (bit, name) in [
                    (0x01, "focus-far"),
                    (0x02, "focus-near"),
                    (0x04, "iris-open"),
                    (0x08, "iris-close"),
                ] {
                    if i & bit != 0 {
                        parts.push(name);
                    }
                }
                if parts.is_empty() {
                    "fi-stop".into()
                } else {
                    parts.join("+")
                }
            }
            0x81 => format!("preset-set {}", self.data2),
            0x82 => format!("preset-call {}", self.data2),
            0x83 => format!("preset-delete {}", self.data2),
            0x84 => format!("cruise-add {} {}", self.data1, self.data2),
            0x85 => format!("cruise-delete {} {}", self.data1, self.data2),
            0x86 => format!("cruise-speed {} {}", self.data1, self.value12()),
            0x87 => format!("cruise-dwell {} {}", self.data1, self.value12()),
            0x88 => format!("cruise-start {}", self.data1),
            0x89 => match self.data2 {
                0 => format!("scan-start {}", self.data1),
                1 => format!("scan-left {}", self.data1),
                2 => format!("scan-right {}", self.data1),
                n => format!("scan-0x{n:02x} {}", self.data1),
            },
            0x8A => format!("scan-speed {} {}", self.data1, self.value12()),
            0x8C => format!("aux-on {}", self.data1),
            0x8D => format!("aux-off {}", self.data1),
            other => format!("instruction-0x{other:02x}"),
        }
    }

    /// Data 2 with data 3 as its high 4 bits (cruise/scan speed, dwell).
    pub fn value12(&self) -> u16 {
        u16::from(self.data2) | (u16::from(self.data3 & 0x0F) << 8)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pan {
    Left,
    Right,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tilt {
    Up,
    Down,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Zoom {
    In,
    Out,
}

/// A DeviceControl command, as the REST API takes it (`"cmd"` names it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Control {
    /// Pan, tilt and zoom at once (any may be absent); keeps moving until
    /// `stop`.
    Ptz {
        #[serde(default)]
        pan: Option<Pan>,
        #[serde(default)]
        tilt: Option<Tilt>,
        #[serde(default)]
        zoom: Option<Zoom>,
        /// Pan and tilt speed, 0-255.
        #[serde(default = "default_speed")]
        speed: u8,
        /// Zoom speed, 0-15.
        #[serde(default = "default_zoom_speed")]
        zoom_speed: u8,
    },
    /// Stops PTZ and focus/iris movement.
    Stop,
    /// `near`, `far` or `stop`; speed 0-255.
    Focus {
        action: String,
        #[serde(default = "default_speed")]
        speed: u8,
    },
    /// `open`, `close` or `stop`; speed 0-255.
    Iris {
        action: String,
        #[serde(default = "default_speed")]
        speed: u8,
    },
    /// `set`, `call` or `delete` preset `index` (1-255).
    Preset { action: String, index: u16 },
    /// Cruise `group`: `add` / `delete` a point (`preset`; delete with
    /// preset 0 deletes the whole cruise), `speed` / `dwell` (`value`
    /// 1-4095), `start`, `stop`.
    Cruise {
        action: String,
        group: u8,
        #[serde(default)]
        preset: u16,
        #[serde(default)]
        value: u16,
    },
    /// Scan `group`: `start`, `stop`, `left` / `right` (set the boundary
    /// at the current position), `speed` (`value` 1-4095).
    Scan {
        action: String,
        group: u8,
        #[serde(default)]
        value: u16,
    },
    /// Auxiliary switch (wiper, light, ...) `switch` on or off.
    Aux { on: bool, switch: u8 },
    /// Arm (`true`) or disarm the alarm inputs (GuardCmd SetGuard /
    /// ResetGuard).
    Guard { set: bool },
    /// AlarmCmd ResetAlarm, optionally for one alarm method / type.
    AlarmReset {
        #[serde(default)]
        method: Option<String>,
        #[serde(default)]
        alarm_type: Option<String>,
    },
    /// RecordCmd Record / StopRecord (on the device's own storage).
    Record { start: bool },
    /// IFameCmd Send: a key frame now.
    Iframe,
    /// DragZoomIn (`zoom_in`) or DragZoomOut: the rectangle drawn on the
    /// `length` x `width` picture, its centre and size.
    DragZoom {
        zoom_in: bool,
        length: u32,
        width: u32,
        mid_x: u32,
        mid_y: u32,
        length_x: u32,
        length_y: u32,
    },
    /// HomePosition: back to `preset` after `reset_secs` of inactivity,
    /// or off.
    HomePosition {
        enabled: bool,
        #[serde(default)]
        reset_secs: u32,
        #[serde(default)]
        preset: u16,
    },
    /// TeleBoot: reboots the device; refused unless `confirm` is true.
    #[serde(rename = "teleboot")]
    TeleBoot {
        #[serde(default)]
        confirm: bool,
    },
}

fn default_speed() -> u8 {
    0x80
}

fn default_zoom_speed() -> u8 {
    8
}

/// The names of [`Control`]'s commands (the `cmd` values), for errors and
/// metrics.
pub const COMMANDS: &[&str] = &[
    "ptz",
    "stop",
    "focus",
    "iris",
    "preset",
    "cruise",
    "scan",
    "aux",
    "guard",
    "alarm_reset",
    "record",
    "iframe",
    "drag_zoom",
    "home_position",
    "teleboot",
];

fn pick<'a>(what: &str, action: &str, allowed: &[&'a str]) -> Result<&'a str, String> {
    allowed
        .iter()
        .find(|a| a.eq_ignore_ascii_case(action))
        .copied()
        .ok_or_else(|| {
            format!(
                "{what}: action {action:?} is not one of {}",
                allowed.join(", ")
            )
        })
}

fn in_range(what: &str, v: u32, lo: u32, hi: u32) -> Result<(), String> {
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(format!("{what} {v} is outside {lo}-{hi}"))
    }
}

impl Control {
    /// The `cmd` name (one of [`COMMANDS`]).
    pub fn name(&self) -> &'static str {
        match self {
            Control::Ptz { .. } => "ptz",
            Control::Stop => "stop",
            Control::Focus { .. } => "focus",
            Control::Iris { .. } => "iris",
            Control::Preset { .. } => "preset",
            Control::Cruise { .. } => "cruise",
            Control::Scan { .. } => "scan",
            Control::Aux { .. } => "aux",
            Control::Guard { .. } => "guard",
            Control::AlarmReset { .. } => "alarm_reset",
            Control::Record { .. } => "record",
            Control::Iframe => "iframe",
            Control::DragZoom { .. } => "drag_zoom",
            Control::HomePosition { .. } => "home_position",
            Control::TeleBoot { .. } => "teleboot",
        }
    }

    /// Whether the device answers with a DeviceControl `<Response>`
    /// (A.2.6.2: record, guard, alarm reset, home position); the others
    /// are done when the device accepts the MESSAGE (200).
    pub fn expects_response(&self) -> bool {
        matches!(
            self,
            Control::Guard { .. }
                | Control::AlarmReset { .. }
                | Control::Record { .. }
                | Control::HomePosition { .. }
        )
    }

    /// The front-end command of the PTZ-coded commands (address 1), after
    /// checking ranges and actions; `Ok(None)` for the others.
    pub fn ptz_cmd(&self) -> Result<Option<PtzCmd>, String> {
        let cmd = |instruction, data1, data2, data3| PtzCmd {
            instruction,
            data1,
            data2,
            data3,
            address: 1,
        };
        Ok(Some(match self {
            Control::Ptz {
                pan,
                tilt,
                zoom,
                speed,
                zoom_speed,
            } => {
                in_range("zoom_speed", u32::from(*zoom_speed), 0, 15)?;
                let mut i = 0u8;
                i |= match pan {
                    Some(Pan::Right) => 0x01,
                    Some(Pan::Left) => 0x02,
                    None => 0,
                };
                i |= match tilt {
                    Some(Tilt::Down) => 0x04,
                    Some(Tilt::Up) => 0x08,
                    None => 0,
                };
                i |= match zoom {
                    Some(Zoom::In) => 0x10,
                    Some(Zoom::Out) => 0x20,
                    None => 0,
                };
                if i == 0 {
                    return Err("ptz: give pan, tilt or zoom (or use the stop command)".into());
                }
                let (ps, ts) = (
                    if pan.is_some() { *speed } else { 0 },
                    if tilt.is_some() { *speed } else { 0 },
                );
                cmd(i, ps, ts, if zoom.is_some() { *zoom_speed } else { 0 })
            }
            Control::Stop => cmd(0, 0, 0, 0),
            Control::Focus { action, speed } => {
                match pick("focus", action, &["far", "near", "stop"])? {
                    "far" => cmd(0x41, *speed, 0, 0),
                    "near" => cmd(0x42, *speed, 0, 0),
                    _ => cmd(0x40, 0, 0, 0),
                }
            }
            Control::Iris { action, speed } => {
                match pick("iris", action, &["open", "close", "stop"])? {
                    "open" => cmd(0x44, 0, *speed, 0),
                    "close" => cmd(0x48, 0, *speed, 0),
                    _ => cmd(0x40, 0, 0, 0),
                }
            }
            Control::Preset { action, index } => {
                in_range("preset index", u32::from(*index), 1, 255)?;
                let i = match pick("preset", action, &["set", "call", "delete"])? {
                    "set" => 0x81,
                    "call" => 0x82,
                    _ => 0x83,
                };
                cmd(i, 0, *index as u8, 0)
            }
            Control::Cruise {
                action,
                group,
                preset,
                value,
            } => match pick(
                "cruise",
                action,
                &["add", "delete", "speed", "dwell", "start", "stop"],
            )? {
                "add" => {
                    in_range("cruise preset", u32::from(*preset), 1, 255)?;
                    cmd(0x84, *group, *preset as u8, 0)
                }
                "delete" => {
                    in_range("cruise preset", u32::from(*preset), 0, 255)?;
                    cmd(0x85, *group, *preset as u8, 0)
                }
                a @ ("speed" | "dwell") => {
                    in_range("cruise value", u32::from(*value), 1, 4095)?;
                    let i = if a == "speed" { 0x86 } else { 0x87 };
                    cmd(i, *group, (*value & 0xFF) as u8, (*value >> 8) as u8)
                }
                "start" => cmd(0x88, *group, 0, 0),
                _ => cmd(0, 0, 0, 0),
            },
            Control::Scan {
                action,
                group,
                value,
            } => match pick("scan", action, &["start", "stop", "left", "right", "speed"])? {
                "start" => cmd(0x89, *group, 0, 0),
                "left" => cmd(0x89, *group, 1, 0),
                "right" => cmd(0x89, *group, 2, 0),
                "speed" => {
                    in_range("scan value", u32::from(*value), 1, 4095)?;
                    cmd(0x8A, *group, (*value & 0xFF) as u8, (*value >> 8) as u8)
                }
                _ => cmd(0, 0, 0, 0),
            },
            Control::Aux { on, switch } => cmd(if *on { 0x8C } else { 0x8D }, *switch, 0, 0),
            _ => return Ok(None),
        }))
    }

    /// Checks the command (ranges, actions, TeleBoot's confirmation)
    /// without building anything.
    pub fn validate(&self) -> Result<(), String> {
        self.ptz_cmd()?;
        match self {
            Control::TeleBoot { confirm: false } => {
                Err("teleboot reboots the device: send \"confirm\": true to mean it".into())
            }
            Control::HomePosition {
                enabled, preset, ..
            } if *enabled => in_range("home_position preset", u32::from(*preset), 1, 255),
            Control::DragZoom { length, width, .. } if *length == 0 || *width == 0 => {
                Err("drag_zoom: length and width (the picture's size) must not be 0".into())
            }
            _ => Ok(()),
        }
    }

    /// The leaves of the `<Control>` body after DeviceID, in order:
    /// `(path, text)` where a path `A/B` is leaf B inside element A.
    pub fn leaves(&self) -> Result<Vec<(String, String)>, String> {
        self.validate()?;
        if let Some(p) = self.ptz_cmd()? {
            return Ok(vec![
                ("PTZCmd".into(), p.to_hex()),
                ("Info/ControlPriority".into(), "5".into()),
            ]);
        }
        if let Control::DragZoom {
            zoom_in,
            length,
            width,
            mid_x,
            mid_y,
            length_x,
            length_y,
        } = self
        {
            let el = if *zoom_in {
                "DragZoomIn"
            } else {
                "DragZoomOut"
            };
            return Ok([
                ("Length", length),
                ("Width", width),
                ("MidPointX", mid_x),
                ("MidPointY", mid_y),
                ("LengthX", length_x),
                ("LengthY", length_y),
            ]
            .into_iter()
            .map(|(n, v)| (format!("{el}/{n}"), v.to_string()))
            .collect());
        }
        let v: Vec<(&str, String)> = match self {
            Control::Guard { set } => vec![(
                "GuardCmd",
                if *set { "SetGuard" } else { "ResetGuard" }.into(),
            )],
            Control::AlarmReset { method, alarm_type } => {
                let mut v = vec![("AlarmCmd", "ResetAlarm".to_string())];
                if let Some(m) = method {
                    v.push(("Info/AlarmMethod", m.clone()));
                }
                if let Some(t) = alarm_type {
                    v.push(("Info/AlarmType", t.clone()));
                }
                v
            }
            Control::Record { start } => vec![(
                "RecordCmd",
                if *start { "Record" } else { "StopRecord" }.into(),
            )],
            // The standard's own spelling.
            Control::Iframe => vec![("IFameCmd", "Send".into())],
            Control::HomePosition {
                enabled,
                reset_secs,
                preset,
            } => {
                let mut v = vec![(
                    "HomePosition/Enabled",
                    if *enabled { "1" } else { "0" }.to_string(),
                )];
                if *enabled {
                    v.push(("HomePosition/ResetTime", reset_secs.to_string()));
                    v.push(("HomePosition/PresetIndex", preset.to_string()));
                }
                v
            }
            Control::TeleBoot { .. } => vec![("TeleBoot", "Boot".into())],
            // PTZ-coded commands returned above.
            _ => Vec::new(),
        };
        Ok(v.into_iter().map(|(n, t)| (n.to_string(), t)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The standard's example (A.3.2: pan left at speed 0x1F) and the
    /// commands wvp-GB28181-pro sends, checksums included.
    #[test]
    fn ptzcmd_bytes_and_checksums() {
        let left = Control::Ptz {
            pan: Some(Pan::Left),
            tilt: None,
            zoom: None,
            speed: 0x1F,
            zoom_speed: 0,
        };
        assert_eq!(
            left.ptz_cmd().unwrap().unwrap().to_hex(),
            "A50F01021F0000D6"
        );
        assert_eq!(
            Control::Stop.ptz_cmd().unwrap().unwrap().to_hex(),
            "A50F0100000000B5"
        );
        let preset = Control::Preset {
            action: "call".into(),
            index: 5,
        };
        assert_eq!(
            preset.ptz_cmd().unwrap().unwrap().to_hex(),
            "A50F01820005003C"
        );
        // Up-right with zoom in: speeds in bytes 5, 6 and the high nibble of 7.
        let c = Control::Ptz {
            pan: Some(Pan::Right),
            tilt: Some(Tilt::Up),
            zoom: Some(Zoom::In),
            speed: 0x40,
            zoom_speed: 0xA,
        };
        let p = c.ptz_cmd().unwrap().unwrap();
        assert_eq!(p.bytes()[3], 0x19);
        assert_eq!(p.bytes()[6], 0xA0);
        assert_eq!(PtzCmd::parse(&p.to_hex()).unwrap(), p);
        assert_eq!(p.describe(), "right+up+zoom-in");
        // A 12-bit address: the high nibble goes into byte 7.
        let far = PtzCmd {
            instruction: 0x41,
            data1: 9,
            address: 0x3AB,
            ..PtzCmd::default()
        };
        let b = far.bytes();
        assert_eq!((b[2], b[6]), (0xAB, 0x03));
        assert_eq!(PtzCmd::parse(&far.to_hex()).unwrap(), far);
        // Cruise speed 300 = 0x12C: data 2 0x2C, data 3 0x1.
        let s = Control::Cruise {
            action: "speed".into(),
            group: 2,
            preset: 0,
            value: 300,
        }
        .ptz_cmd()
        .unwrap()
        .unwrap();
        assert_eq!(
            (s.instruction, s.data1, s.data2, s.data3),
            (0x86, 2, 0x2C, 1)
        );
        assert_eq!(s.value12(), 300);
        assert_eq!(s.describe(), "cruise-speed 2 300");
    }

    #[test]
    fn bad_ptzcmds_are_named() {
        assert_eq!(PtzCmd::parse("A50F01021F0000D7"), Err(PtzError::Checksum));
        assert_eq!(
            PtzCmd::parse("A50E01021F0000D5"),
            Err(PtzError::HeadChecksum)
        );
        assert_eq!(PtzCmd::parse("B50F01021F0000E6"), Err(PtzError::Lead));
        assert_eq!(PtzCmd::parse("A50F01021F00"), Err(PtzError::Format));
        assert_eq!(PtzCmd::parse("A50F01021F0000ZZ"), Err(PtzError::Format));
        assert_eq!(
            PtzCmd::parse(" a50f01021f0000d6 ").unwrap().describe(),
            "left"
        );
    }

    #[test]
    fn json_commands_and_their_errors() {
        let c: Control = serde_json::from_str(r#"{"cmd":"ptz","pan":"left","tilt":"up"}"#).unwrap();
        assert_eq!(c.ptz_cmd().unwrap().unwrap().describe(), "left+up");
        let c: Control = serde_json::from_str(r#"{"cmd":"guard","set":true}"#).unwrap();
        assert!(c.expects_response());
        assert_eq!(
            c.leaves().unwrap(),
            vec![("GuardCmd".to_string(), "SetGuard".to_string())]
        );
        assert!(serde_json::from_str::<Control>(r#"{"cmd":"dance"}"#).is_err());
        let e = Control::Preset {
            action: "call".into(),
            index: 0,
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("outside 1-255"), "{e}");
        let e = Control::Focus {
            action: "sideways".into(),
            speed: 1,
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("far, near, stop"), "{e}");
        assert!(Control::TeleBoot { confirm: false }.validate().is_err());
        assert_eq!(
            Control::TeleBoot { confirm: true }.leaves().unwrap(),
            vec![("TeleBoot".to_string(), "Boot".to_string())]
        );
        let e = Control::Ptz {
            pan: None,
            tilt: None,
            zoom: None,
            speed: 1,
            zoom_speed: 1,
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("give pan, tilt or zoom"), "{e}");
        assert_eq!(
            Control::Iframe.leaves().unwrap(),
            vec![("IFameCmd".to_string(), "Send".to_string())]
        );
        for name in COMMANDS {
            // Every listed name is a variant (the rest of its fields aside).
            let err = serde_json::from_str::<Control>(&format!("{{\"cmd\":\"{name}\"}}"))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(!err.contains("unknown variant"), "{name}: {err}");
        }
    }
}
