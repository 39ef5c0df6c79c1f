//! Devices known to the gateway, their channels and liveness.
//!
//! Liveness rule (../docs/architecture.md, "Signalling"): a device is online
//! while it is registered and its last sign of life (REGISTER or keepalive)
//! is younger than `keepalive_interval x keepalive_timeout_count`, and its
//! registration has not expired. Deadlines run on the monotonic clock so a
//! wall-clock step (NTP after boot on a box without RTC) never marks a
//! device offline; wall-clock times are kept for display and persistence.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
    time::{Duration, Instant},
};

use gb28181::{
    manscdp::{CatalogItem, DeviceInfo, DeviceStatus, MobilePosition},
    sip::Transport,
};
use serde::{Deserialize, Serialize};

use crate::sys::clock::instant_of;

/// What the gateway can subscribe to at a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubKind {
    Catalog,
    Alarm,
    MobilePosition,
}

impl SubKind {
    pub const ALL: [SubKind; 3] = [SubKind::Catalog, SubKind::Alarm, SubKind::MobilePosition];

    /// As in the API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            SubKind::Catalog => "catalog",
            SubKind::Alarm => "alarm",
            SubKind::MobilePosition => "mobile_position",
        }
    }

    /// The MANSCDP CmdType.
    pub fn cmd(self) -> &'static str {
        match self {
            SubKind::Catalog => "Catalog",
            SubKind::Alarm => "Alarm",
            SubKind::MobilePosition => "MobilePosition",
        }
    }

    /// From the API's word (`mobile-position` too).
    pub fn parse(s: &str) -> Option<SubKind> {
        SubKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s.replace('-', "_"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OfflineReason {
    KeepaliveTimeout,
    RegistrationExpired,
    Unregistered,
    /// Never heard from since the gateway started with it in the store.
    Restarted,
}

impl OfflineReason {
    pub fn as_str(self) -> &'static str {
        match self {
            OfflineReason::KeepaliveTimeout => "keepalive timeout",
            OfflineReason::RegistrationExpired => "registration expired",
            OfflineReason::Unregistered => "unregistered",
            OfflineReason::Restarted => "restarted",
        }
    }
}

/// Where a device's catalog synchronisation stands. Serialised (API and
/// store) as the words of earlier versions: `""` (never asked),
/// `pending`, `interrupted` (pending when the gateway stopped),
/// `complete`, `partial` (timed out with some items), `failed`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncState {
    #[default]
    #[serde(rename = "")]
    Never,
    Pending,
    Interrupted,
    Complete,
    Partial,
    Failed,
}

/// State of the last catalog synchronisation.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CatalogSync {
    /// SN of the last catalog query or response.
    pub sn: u32,
    /// SumNum the device announced.
    pub sum_num: u32,
    /// Distinct items received.
    pub received: u32,
    pub state: SyncState,
    /// Wall-clock ms of the last completed or timed-out sync.
    pub at_ms: i64,
}

/// One device (camera, NVR, ...) as persisted and served by the API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Device {
    pub id: String,
    pub online: bool,
    pub registered: bool,
    pub transport: Transport,
    /// Where its packets come from (rport/received): where we send.
    pub addr: SocketAddr,
    /// Our local address the device reached.
    pub local: SocketAddr,
    /// Contact URI from its REGISTER.
    pub contact: String,
    /// Granted registration expiry, seconds.
    pub expires: u32,
    pub registered_ms: i64,
    pub expires_ms: i64,
    /// Last REGISTER or keepalive, wall-clock ms.
    pub last_alive_ms: i64,
    pub last_keepalive_ms: Option<i64>,
    pub keepalive_interval: u32,
    pub keepalive_count: u32,
    pub online_since_ms: Option<i64>,
    pub offline_reason: Option<OfflineReason>,
    pub offline_since_ms: Option<i64>,
    pub user_agent: Option<String>,
    pub gb_version: Option<String>,
    /// Charset of its last MANSCDP body ("GB2312", "GB18030", "UTF-8").
    pub charset: Option<String>,
    pub registrations: u64,
    pub keepalives: u64,
    /// Devices in a keepalive's Info list (2022): faulty sub-devices.
    #[serde(default)]
    pub faulty: Vec<String>,
    #[serde(default)]
    pub info: Option<DeviceInfo>,
    #[serde(default)]
    pub info_ms: Option<i64>,
    #[serde(default)]
    pub status: Option<DeviceStatus>,
    #[serde(default)]
    pub status_ms: Option<i64>,
    #[serde(default)]
    pub catalog: CatalogSync,
    /// Subscriptions set through the API for this device (None: as
    /// `[sip.subscribe]` says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<BTreeSet<SubKind>>,
    /// The last position it reported (MobilePosition), with when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<MobilePosition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position_ms: Option<i64>,
    /// Its clock minus ours in seconds (from the DeviceTime of its
    /// DeviceStatus, the Time of its positions), and when measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_offset_secs: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_offset_ms: Option<i64>,
    /// Monotonic twin of `last_alive_ms` (not persisted).
    #[serde(skip, default = "Instant::now")]
    pub last_alive: Instant,
    /// Monotonic twin of `expires_ms`.
    #[serde(skip, default = "Instant::now")]
    pub expires_at: Instant,
}

impl Device {
    /// When the device goes offline without news.
    pub fn deadline(&self) -> Instant {
        let ka = self.last_alive
            + Duration::from_secs(self.keepalive_interval as u64 * self.keepalive_count as u64);
        ka.min(self.expires_at)
    }

    /// Re-derive the monotonic times after loading from disk.
    pub fn restore_clock(&mut self, now: Instant, now_wall: i64) {
        self.last_alive = instant_of(self.last_alive_ms, now, now_wall);
        self.expires_at = if self.expires_ms >= now_wall {
            now + Duration::from_millis((self.expires_ms - now_wall) as u64)
        } else {
            instant_of(self.expires_ms, now, now_wall)
        };
    }

    pub fn go_offline(&mut self, reason: OfflineReason, now_wall: i64) {
        self.online = false;
        self.offline_reason = Some(reason);
        self.offline_since_ms = Some(now_wall);
        if matches!(
            reason,
            OfflineReason::RegistrationExpired | OfflineReason::Unregistered
        ) {
            self.registered = false;
        }
    }
}

/// Devices and channels in memory.
#[derive(Default)]
pub struct Registry {
    pub devices: HashMap<String, Device>,
    pub channels: HashMap<String, BTreeMap<String, CatalogItem>>,
}

impl Registry {
    /// Devices whose deadline passed, turned offline; returns their IDs and reasons.
    /// The devices whose keepalives or registration ran out go offline
    /// (returned with why); also counts those still online (one pass over
    /// the registry, once a second).
    pub fn sweep(&mut self, now: Instant, now_wall: i64) -> (Vec<(String, OfflineReason)>, usize) {
        let mut out = Vec::new();
        let mut online = 0;
        for d in self.devices.values_mut() {
            if !d.online {
                // A registration may still expire while offline.
                if d.registered && now >= d.expires_at {
                    d.registered = false;
                }
                continue;
            }
            if now >= d.deadline() {
                let reason = if now >= d.expires_at {
                    OfflineReason::RegistrationExpired
                } else {
                    OfflineReason::KeepaliveTimeout
                };
                d.go_offline(reason, now_wall);
                out.push((d.id.clone(), reason));
            } else {
                online += 1;
            }
        }
        (out, online)
    }

    pub fn online(&self) -> usize {
        self.devices.values().filter(|d| d.online).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_states_keep_their_stored_words() {
        for (st, w) in [
            (SyncState::Never, ""),
            (SyncState::Pending, "pending"),
            (SyncState::Interrupted, "interrupted"),
            (SyncState::Complete, "complete"),
            (SyncState::Partial, "partial"),
            (SyncState::Failed, "failed"),
        ] {
            let j = serde_json::to_value(st).unwrap();
            assert_eq!(j, w);
            // Records written by earlier versions (strings) still load.
            assert_eq!(serde_json::from_value::<SyncState>(j).unwrap(), st);
        }
    }

    fn dev(now: Instant) -> Device {
        Device {
            id: "34020000001320000001".into(),
            online: true,
            registered: true,
            transport: Transport::Udp,
            addr: "127.0.0.1:5070".parse().unwrap(),
            local: "127.0.0.1:5060".parse().unwrap(),
            contact: "sip:x@127.0.0.1:5070".into(),
            expires: 3600,
            registered_ms: 0,
            expires_ms: 3_600_000,
            last_alive_ms: 0,
            last_keepalive_ms: None,
            keepalive_interval: 60,
            keepalive_count: 3,
            online_since_ms: Some(0),
            offline_reason: None,
            offline_since_ms: None,
            user_agent: None,
            gb_version: None,
            charset: None,
            registrations: 1,
            keepalives: 0,
            faulty: vec![],
            info: None,
            info_ms: None,
            status: None,
            status_ms: None,
            catalog: CatalogSync::default(),
            subscribe: None,
            position: None,
            position_ms: None,
            time_offset_secs: None,
            time_offset_ms: None,
            last_alive: now,
            expires_at: now + Duration::from_secs(3600),
        }
    }

    #[test]
    fn offline_after_min_of_keepalive_and_expiry() {
        let t0 = Instant::now();
        let mut r = Registry::default();
        let mut a = dev(t0);
        a.id = "a".into();
        r.devices.insert("a".into(), a);
        let mut short = dev(t0);
        short.id = "b".into();
        short.expires_at = t0 + Duration::from_secs(100);
        r.devices.insert("b".into(), short);
        assert_eq!(r.sweep(t0 + Duration::from_secs(99), 0), (vec![], 2));
        assert_eq!(
            r.sweep(t0 + Duration::from_secs(100), 0),
            (
                vec![("b".to_string(), OfflineReason::RegistrationExpired)],
                1
            )
        );
        assert!(!r.devices["b"].registered);
        assert_eq!(r.sweep(t0 + Duration::from_secs(179), 0), (vec![], 1));
        assert_eq!(
            r.sweep(t0 + Duration::from_secs(180), 0),
            (vec![("a".to_string(), OfflineReason::KeepaliveTimeout)], 0)
        );
        assert!(r.devices["a"].registered);
        assert_eq!(r.online(), 0);
    }

    #[test]
    fn clock_restored_from_wall_times() {
        let now = Instant::now();
        let mut d = dev(now);
        d.last_alive_ms = 1_000_000;
        d.expires_ms = 1_000_000 + 3_600_000;
        d.restore_clock(now, 1_000_000 + 10_000);
        assert_eq!(now - d.last_alive, Duration::from_secs(10));
        assert_eq!(d.expires_at - now, Duration::from_secs(3590));
        // The persisted JSON drops the monotonic twins and reads back.
        let j = serde_json::to_string(&d).unwrap();
        let back: Device = serde_json::from_str(&j).unwrap();
        assert_eq!(back.id, d.id);
    }
}
