//! Helpers for the integration tests (`tests/tests/integration`, one test
//! binary) and the benchmarks: a frame builder for crafted packets,
//! network-namespace guards, the gateway's CLI and daemon, sipp, gb-sim,
//! Prometheus, test media, and locating the `gateway` binary. A helper
//! that more than one test module needs lives here, once.
//!
//! Tests that need root (BPF, namespaces) call [`require_root`] and are
//! skipped with a printed reason otherwise; CI runs as root.

pub mod benchmedia;
pub mod chain;
pub mod cli;
pub mod flood;
pub mod frames;
pub mod netns;
pub mod prom;
pub mod sim;
pub mod sipclient;
pub mod sipp;
pub mod testmedia;
pub mod unpriv;
pub mod xdp;

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

/// True when every one of `tools` is an executable file on `$PATH` (what
/// `Command::new(tool)` would run).
pub fn have_tools(tools: &[&str]) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH").unwrap_or_default();
    tools.iter().all(|t| {
        std::env::split_paths(&path).any(|d| {
            std::fs::metadata(d.join(t))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
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

/// Resident memory (KiB) and open file descriptors of a process, from
/// /proc (the soak test and benchmarks).
pub fn rss_and_fds(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (rss, fds)
}

/// The CPU model as /proc/cpuinfo names it (`model name`; on arm64, which
/// has none, `lscpu`'s), with the number of CPUs online: what the
/// benchmarks print first, since their figures depend on it.
pub fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim().to_string())
    };
    let lscpu = || {
        let out = std::process::Command::new("lscpu").output().ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim() == "Model name")
            .map(|(_, v)| v.trim().to_string())
    };
    let model = field("model name")
        .or_else(lscpu)
        .or_else(|| field("Hardware"))
        .or_else(|| {
            // arm64 without lscpu (a busybox VM): the ID registers' fields.
            Some(format!(
                "CPU implementer {} part {}",
                field("CPU implementer")?,
                field("CPU part")?
            ))
        })
        .unwrap_or_else(|| "unknown".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{model} ({cpus} CPUs, {})", std::env::consts::ARCH)
}
