//! Helpers for the integration tests and benchmarks: a frame builder for
//! crafted packets, network-namespace guards, and locating the `gateway`
//! binary.
//!
//! Tests that need root (BPF, namespaces) call [`require_root`] and are
//! skipped with a printed reason otherwise; CI runs as root.

pub mod frames;
pub mod netns;
pub mod prom;
pub mod sim;
pub mod sipclient;
pub mod sipp;
pub mod testmedia;

use std::path::PathBuf;

/// True when running as root; otherwise prints why the test is skipped.
pub fn require_root(test: &str) -> bool {
    if gateway::sys::is_root() {
        true
    } else {
        eprintln!("SKIPPED {test}: needs root (BPF, network namespaces); CI runs it as root");
        false
    }
}

/// Path of the `gateway` binary built alongside the tests
/// (`target/<profile>/gateway`), or `$GATEWAY_BIN`.
pub fn gateway_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("GATEWAY_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> or target/<profile>/<bin> -> target/<profile>/gateway
    let here = exe.parent().expect("exe dir");
    let dir = if here.ends_with("deps") {
        here.parent().expect("target dir")
    } else {
        here
    };
    let bin = dir.join("gateway");
    assert!(
        bin.exists(),
        "{} not built: run `cargo build -p gateway` (cargo xtask test does)",
        bin.display()
    );
    bin
}

/// CPU seconds (user + system) used so far by a process, from
/// /proc/PID/stat (benchmarks).
pub fn cpu_secs(pid: u32) -> f64 {
    let tck = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0);
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start at ") ".
    let rest = s.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat: 11 and 12 after ") ".
    (ticks(11) + ticks(12)) / tck
}
