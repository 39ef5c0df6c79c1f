//! SIP flood benchmark (root): the flood rig of the `sip_guard` test
//! (`gateway_tests::flood`: 200 gb-sim devices with 2 s keepalives,
//! `sip-flood` sending REGISTERs from 1 000 addresses as fast as it can)
//! flooding the gateway with the XDP guard on, then, in the same run, with
//! it off (the baseline: every packet reaches the daemon). Prints per run
//! the packets sent and their rate, what the kernel dropped, passed and let
//! through from the devices, the daemon's CPU, and the ratio of the
//! daemon's CPU without / with the guard. Asserts nothing about speed.
//!
//! `flood-bench [--quick]` (quick: 5 s floods; full: 10 s).

use anyhow::{Context as _, Result};
use gateway_tests::{
    cpu_model, cpu_secs,
    flood::{counter, Guard, Rig},
};

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    if !gateway::sys::is_root() {
        anyhow::bail!("flood-bench needs root (namespaces, XDP)");
    }
    let secs = if quick { 5.0 } else { 10.0 };
    let flood_bin = gateway_tests::gateway_bin().with_file_name("sip-flood");
    let guard = Guard {
        rate: 20,
        burst: 40,
        global_rate: 2000,
    };
    let rig = Rig::new("floodb", 200, guard, flood_bin).context("flood rig")?;
    let pid = rig.daemon.pid().context("daemon pid")?;
    println!("SIP flood benchmark on {}", cpu_model());
    println!(
        "200 devices with 2 s keepalives; REGISTER flood from 1000 addresses for {secs} s; guard 20/s per source, burst 40, 2000/s global"
    );
    println!(
        "{:<10} {:>11} {:>9} {:>13} {:>10} {:>13} {:>9} {:>12}",
        "guard", "sent", "kpps", "kernel drop", "drop %", "to daemon", "offline", "daemon CPU"
    );
    let mut cpu = Vec::new();
    for on in [true, false] {
        if !on {
            let o = rig.set_guard("off");
            anyhow::ensure!(o.code == 0, "{}", o.stderr);
        }
        let before = rig.kernel();
        let off0 = rig.offline_transitions();
        let c0 = cpu_secs(pid);
        let r = rig.flood(secs)?;
        let c = cpu_secs(pid) - c0;
        let after = rig.kernel();
        let d = |n: &str| counter(&after, n) - counter(&before, n);
        let sent = r["sent"].as_u64().unwrap_or(0);
        let fsecs = r["secs"].as_f64().unwrap_or(secs).max(1e-9);
        let dropped = d("sip_dropped_source") + d("sip_dropped_global");
        let to_daemon = sent.saturating_sub(dropped);
        println!(
            "{:<10} {:>11} {:>9.0} {:>13} {:>9.2}% {:>13} {:>9} {:>10.2} s",
            if on { "on" } else { "off" },
            sent,
            sent as f64 / fsecs / 1000.0,
            dropped,
            dropped as f64 * 100.0 / sent.max(1) as f64,
            to_daemon,
            rig.offline_transitions() - off0,
            c
        );
        cpu.push(c);
    }
    println!(
        "daemon CPU without / with the guard: {:.1}x ({:.2} s / {:.2} s)",
        cpu[1] / cpu[0].max(1e-3),
        cpu[1],
        cpu[0]
    );
    anyhow::ensure!(rig.stop(), "daemon did not stop cleanly");
    Ok(())
}
