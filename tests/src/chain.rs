//! Helpers of the tests that chain gateways (camera -> edge -> central):
//! daemon configs, the streams API, gb-sim's report.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{sim, sipp::Daemon};

/// Writes a gateway config `<name>.toml` (its log: `<name>.log`) in `dir`:
/// `body`, then the API on the namespace's loopback, /metrics on an
/// ephemeral port (unless `body` has `[metrics]`) and a store of its own.
pub fn config(dir: &Path, name: &str, api_port: u16, body: &str) -> PathBuf {
    let cfg = dir.join(format!("{name}.toml"));
    let metrics = if body.contains("[metrics]") {
        ""
    } else {
        "[metrics]\nlisten = \"127.0.0.1:0\"\n"
    };
    std::fs::write(
        &cfg,
        format!(
            "{body}\
             [api]\nlisten = \"127.0.0.1:{api_port}\"\n\
             {metrics}\
             [store]\npath = \"{}\"\n",
            dir.join(format!("{name}.redb")).display()
        ),
    )
    .expect("writing the config");
    cfg
}

/// The active sessions of `d` on `device`'s `channel`.
pub fn sessions_on(d: &Daemon, device: &str, channel: &str) -> Vec<Value> {
    let v = d.get("/api/streams").expect("GET /api/streams");
    v["streams"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["device"] == device && s["channel"] == channel && s["closed_ms"].is_null())
        .cloned()
        .collect()
}

/// `GET /api/streams/{id}`.
pub fn stream(d: &Daemon, id: &str) -> Value {
    d.get(&format!("/api/streams/{id}"))
        .expect("GET /api/streams/{id}")
}

/// `DELETE /api/streams/{id}`, which must answer 200.
pub fn delete_stream(d: &Daemon, id: &str) {
    let (code, v) = d
        .request("DELETE", &format!("/api/streams/{id}"), None)
        .expect("DELETE /api/streams/{id}");
    assert_eq!(code, 200, "DELETE /api/streams/{id}: {v}");
}

/// The gb-sim report's streams on `channel`.
pub fn sim_streams(status: &Path, channel: &str) -> Vec<Value> {
    sim::report(status)["streams"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["channel"] == channel)
        .cloned()
        .collect()
}

/// Waits (60 s at most) for gb-sim's report to satisfy `f`.
pub fn wait_sim(status: &Path, what: &str, f: impl Fn(&Value) -> bool) {
    let t0 = Instant::now();
    while !f(&sim::report(status)) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{what}: not reached; gb-sim report: {}",
            sim::report(status)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The index of the key frame from which on `frames` (packets, key frame)
/// hold exactly `packets` packets: where a relay leg started.
pub fn first_key_frame(frames: &[(u64, bool)], packets: u64) -> usize {
    (0..frames.len())
        .find(|&k| frames[k].1 && frames[k..].iter().map(|f| f.0).sum::<u64>() == packets)
        .unwrap_or_else(|| panic!("{packets} packets: not the packets from any key frame on"))
}
