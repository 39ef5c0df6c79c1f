//! Signalling benchmark: sipp drives REGISTER + digest auth and keepalives
//! against the gateway daemon on loopback; the baseline is sipp itself as
//! the server (uas_register.xml / uas_message.xml: the same messages on the
//! wire, no authentication, no state), measured in the same run at the same
//! rates. Prints, per step: sipp's successful and failed calls, the rate
//! achieved, and server CPU per 1 000 requests for both, with the ratio.
//!
//! `sip-bench [--quick]`. Needs sipp; no root.

use std::{process::Command, time::Duration};

use anyhow::{bail, Context as _, Result};
use gateway_tests::sipp::{
    drive, free_port, scenarios, write_answer_scenario, write_csv, Daemon, TempDir,
};

fn ids(from: usize, n: usize, pw: &str) -> Vec<(String, String)> {
    gateway_tests::sipp::device_ids(from, n, pw)
}

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let dir = TempDir::new("sipbench");
    let (sip_port, api_port) = (free_port(), free_port());
    let cfg = Daemon::config(
        dir.path(),
        sip_port,
        api_port,
        "password = \"bench\"\nquery_info = false\npersist_interval_secs = 10\n",
        "",
    );
    let mut gw = Daemon::start(&cfg, sip_port, api_port).context("starting the gateway")?;
    let gw_pid = gw.pid().context("gateway pid")?;
    let answer = dir.path().join("answer.xml");
    write_answer_scenario(&answer, 1);

    // The baseline server: sipp as a stateless registrar / responder.
    let base_port = free_port();
    let start_uas = |sf: &str| -> Result<std::process::Child> {
        Command::new("sipp")
            .args(["-sf"])
            .arg(scenarios().join(sf))
            .args(["-i", "127.0.0.1", "-p", &base_port.to_string(), "-nostdin"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting baseline sipp")
    };
    let base_addr: std::net::SocketAddr = ([127, 0, 0, 1], base_port).into();

    println!("signalling benchmark (sipp on loopback, 2 cores shared by sipp and the server)");
    println!(
        "{:<28} {:>7} {:>9} {:>7} {:>9} {:>13} {:>13} {:>7}",
        "step", "rate", "achieved", "failed", "calls", "gw ms/1000", "base ms/1000", "ratio"
    );
    let rates: &[u32] = if quick {
        &[500, 2000]
    } else {
        &[500, 1000, 2000, 4000]
    };
    let secs_per_step = if quick { 3 } else { 5 };
    let mut next_id = 0usize;
    let mut base = start_uas("uas_register.xml")?;
    std::thread::sleep(Duration::from_millis(500));
    let bpid = base.id();
    for &rate in rates {
        let n = rate * secs_per_step;
        let csv = dir.path().join(format!("reg-{rate}.csv"));
        write_csv(&csv, &ids(next_id, n as usize, "bench"));
        next_id += n as usize;
        let g = drive(
            dir.path(),
            gw.sip,
            "register_bench.xml",
            &csv,
            rate,
            n,
            gw_pid,
            Some(&answer),
        )?;
        let b = drive(
            dir.path(),
            base_addr,
            "register_bench.xml",
            &csv,
            rate,
            n,
            bpid,
            None,
        )?;
        let (gms, bms) = (g.cpu * 1e6 / g.ok as f64, b.cpu * 1e6 / b.ok.max(1) as f64);
        println!(
            "{:<28} {:>7} {:>9.0} {:>7} {:>9} {:>13.1} {:>13.1} {:>7.2}",
            "REGISTER+auth (+catalog)",
            rate,
            g.ok as f64 / g.secs,
            g.failed,
            g.ok,
            gms,
            bms,
            gms / bms.max(1e-9)
        );
    }
    let _ = base.kill();
    let _ = base.wait();

    // Fill up to 100 000 registered devices (20 000 with --quick), then
    // keepalives at the rate they make with 60 s intervals.
    let target = if quick { 20_000usize } else { 100_000 };
    let (rss_before, _) = gateway_tests::rss_and_fds(gw_pid);
    let before = next_id;
    if next_id < target {
        let n = (target - next_id) as u32;
        let csv = dir.path().join("fill.csv");
        write_csv(&csv, &ids(next_id, n as usize, "bench"));
        let f = drive(
            dir.path(),
            gw.sip,
            "register_bench.xml",
            &csv,
            2000,
            n,
            gw_pid,
            Some(&answer),
        )?;
        next_id += n as usize;
        if f.failed > 0 {
            println!("(fill: {} registrations failed)", f.failed);
        }
    }
    gw.wait_until(Duration::from_secs(60), "all devices registered", |d| {
        d.get("/api/devices?limit=0")
            .is_ok_and(|v| v["online"].as_u64() >= Some(target as u64))
    })?;
    let registered = gw.get("/api/devices?limit=0")?["online"]
        .as_u64()
        .unwrap_or(0);
    let (rss_after, _) = gateway_tests::rss_and_fds(gw_pid);
    let per_device = (rss_after.saturating_sub(rss_before)) as f64 * 1024.0
        / (registered as usize - before).max(1) as f64;
    // Idle: the liveness sweep and timers over all devices, no traffic.
    let idle_secs = if quick { 3.0 } else { 5.0 };
    let c0 = gateway_tests::cpu_secs(gw_pid);
    std::thread::sleep(Duration::from_secs_f64(idle_secs));
    let idle = (gateway_tests::cpu_secs(gw_pid) - c0) / idle_secs;

    let ka_rate = (target / 60) as u32;
    let ka_n = ka_rate * if quick { 4 } else { 10 };
    let csv = dir.path().join("ka.csv");
    write_csv(&csv, &ids(0, next_id.min(target), "bench"));
    let mut base = start_uas("uas_message.xml")?;
    std::thread::sleep(Duration::from_millis(500));
    let bpid = base.id();
    let g = drive(
        dir.path(),
        gw.sip,
        "keepalive_once.xml",
        &csv,
        ka_rate,
        ka_n,
        gw_pid,
        None,
    )?;
    let b = drive(
        dir.path(),
        base_addr,
        "keepalive_once.xml",
        &csv,
        ka_rate,
        ka_n,
        bpid,
        None,
    )?;
    let _ = base.kill();
    let _ = base.wait();
    let (gms, bms) = (g.cpu * 1e6 / g.ok as f64, b.cpu * 1e6 / b.ok.max(1) as f64);
    println!(
        "{:<28} {:>7} {:>9.0} {:>7} {:>9} {:>13.1} {:>13.1} {:>7.2}",
        "keepalive MESSAGE",
        ka_rate,
        g.ok as f64 / g.secs,
        g.failed,
        g.ok,
        gms,
        bms,
        gms / bms.max(1e-9)
    );
    // CPU share of one core per 1 000 keepalives/s = ms per 1 000 / 1 000 ms.
    let per_1000 = gms / 1000.0;
    let need = target as f64 / 60.0;
    let share = idle + per_1000 * need / 1000.0;
    let measured = g.cpu / g.secs;
    println!(
        "gateway: {registered} devices registered, {:.0} bytes of RSS per device ({:.1} -> {:.1} MiB); \
         idle {:.2}% of a core; {:.1}% of a core per 1000 keepalives/s",
        per_device,
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        idle * 100.0,
        per_1000 * 100.0
    );
    println!(
        "goal: {target} devices, 60 s keepalives ({need:.0}/s) under 15% of one core: \
         {:.2}% measured at that rate, {:.2}% from idle + per-keepalive cost ({})",
        measured * 100.0,
        share * 100.0,
        if measured < 0.15 { "met" } else { "NOT met" }
    );

    // The storm: a kill -9, the daemon back with every device in its
    // store, and 20 000 of them registering again as fast as sipp sends.
    // Not with --quick: CI's storm test does the same.
    if quick {
        if !gw.stop() {
            bail!("gateway did not stop cleanly");
        }
        return Ok(());
    }
    std::thread::sleep(Duration::from_millis(500));
    gw.kill9();
    let t0 = std::time::Instant::now();
    let mut gw = Daemon::start(&cfg, sip_port, api_port).context("restarting the gateway")?;
    let restart = t0.elapsed().as_secs_f64();
    let gw_pid = gw.pid().context("gateway pid")?;
    let storm_n = 20_000usize;
    let csv = dir.path().join("storm.csv");
    write_csv(&csv, &ids(0, storm_n, "bench"));
    let t0 = std::time::Instant::now();
    let s = drive(
        dir.path(),
        gw.sip,
        "register_bench.xml",
        &csv,
        4000,
        storm_n as u32,
        gw_pid,
        Some(&answer),
    )?;
    gw.wait_until(Duration::from_secs(120), "storm registered", |d| {
        d.get("/api/stats").is_ok_and(|v| {
            v["gateway_sip_registrations_total"]["result=ok"].as_u64() >= Some(storm_n as u64)
        })
    })?;
    let all = t0.elapsed().as_secs_f64();
    println!(
        "storm after kill -9: restart with {registered} devices in the store {restart:.2} s to API up; \
         {storm_n} re-registrations: {} ok, {} failed, sipp {:.2} s ({:.0}/s), all registered after \
         {all:.2} s (goal 30 s), daemon CPU {:.3} ms per registration",
        s.ok,
        s.failed,
        s.secs,
        s.ok as f64 / s.secs,
        s.cpu * 1000.0 / s.ok.max(1) as f64
    );
    if !gw.stop() {
        bail!("gateway did not stop cleanly");
    }
    Ok(())
}
