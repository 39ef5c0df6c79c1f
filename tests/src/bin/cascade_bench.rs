//! Cascade benchmark: the gateway answering a superior platform's Catalog
//! query with 20 000 channels (2 000 with `--quick`) over UDP on loopback.
//!
//! gb-sim (one device with N channels, 50 per MESSAGE) registers with a
//! gateway, which pulls its catalog: that fills the registry. The
//! baseline, measured in the same run, is that pull: for each chunk a gb-sim
//! sending `--catalog-per-message` = chunk items per MESSAGE takes the
//! device over, and the gateway pulls the same N channels from it (`POST
//! /api/devices/{id}/catalog` until the catalog's state is complete or
//! partial): the same MESSAGEs in the other direction, sent as fast as the
//! device can, as devices do. Besides time and CPU: the device MESSAGEs
//! lost at the gateway's full SIP socket (/proc/net/udp drops) and the
//! device retransmissions it absorbed.
//!
//! Then, for `catalog_chunk` 1, 10 and 50, a gateway restarted on that
//! registry with `[[cascade]]` towards sipp (tests/sipp/superior_catalog_bench.xml):
//! sipp accepts the REGISTER, sends one Catalog query and answers each
//! part with 200 until it has SumNum items, then stops. The gateway sends
//! each part after the previous part's 200 OK. Measured: the time from
//! sipp's query to its last part (sipp's clock), the parts, the gateway's
//! retransmissions (`gateway_sip_retransmissions_total{direction="sent"}`)
//! and its CPU seconds. The gateway is restarted (instead of configured with
//! the superior from the start) so that the query comes once the registry
//! is full, and so that no Catalog Notify of the device's registration
//! mixes in.
//!
//! `cascade-bench [--quick]`. Needs sipp and gb-sim; no root.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _, Result};
use gateway_tests::{
    have_tools, sim,
    sipp::{free_port, scenarios, Daemon, TempDir},
};

/// The superior's platform ID, as the scenario's From says.
const SUPERIOR: &str = "11000000002000000001";
/// The gb-sim device holding every channel.
const DEV: &str = "34020000001320000001";
/// Catalog items per MESSAGE: the gateway's `catalog_chunk`, and the
/// device's `--catalog-per-message` of the baseline beside it.
const CHUNKS: [usize; 3] = [1, 10, 50];

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Datagrams the kernel dropped at the UDP socket bound to
/// 127.0.0.1:`port` (its receive buffer was full), from /proc/net/udp.
fn udp_drops(port: u16) -> u64 {
    let local = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/udp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&local.as_str())).then(|| f.last()?.parse::<u64>().ok())?
        })
        .sum()
}

/// The gateway pulling the device's catalog once (already synchronised).
struct Pull {
    secs: f64,
    /// "complete", or "partial" (the gateway stopped waiting for the rest).
    state: String,
    received: u64,
    cpu: f64,
    /// Device requests lost at the gateway's full SIP socket, and device
    /// retransmissions the gateway absorbed (answered again).
    drops: u64,
    absorbed: u64,
}

fn pull(gw: &mut Daemon) -> Result<Pull> {
    let pid = gw.pid().context("gateway pid")?;
    let abs0 = gw.stat("gateway_sip_retransmissions_total", "direction=absorbed");
    let drops0 = udp_drops(gw.sip.port());
    let c0 = gateway_tests::cpu_secs(pid);
    let t0 = now_ms();
    let (code, v) = gw.post_json(&format!("/api/devices/{DEV}/catalog"), "{}")?;
    if code != 202 {
        bail!("POST /api/devices/{DEV}/catalog: HTTP {code}: {v}");
    }
    let sn = v["sn"].clone();
    gw.wait_until(Duration::from_secs(300), "catalog pulled again", |d| {
        d.device(DEV).is_ok_and(|v| {
            v["catalog"]["sn"] == sn
                && ["complete", "partial", "failed"]
                    .contains(&v["catalog"]["state"].as_str().unwrap_or(""))
        })
    })?;
    let cpu = gateway_tests::cpu_secs(pid) - c0;
    let c = gw.device(DEV)?["catalog"].clone();
    Ok(Pull {
        secs: (c["at_ms"].as_i64().unwrap_or(0) - t0).max(0) as f64 / 1e3,
        state: c["state"].as_str().unwrap_or("").to_string(),
        received: c["received"].as_u64().unwrap_or(0),
        cpu,
        drops: udp_drops(gw.sip.port()) - drops0,
        absorbed: gw.stat("gateway_sip_retransmissions_total", "direction=absorbed") - abs0,
    })
}

/// The gateway answering sipp's Catalog query with `chunk` items per part.
struct Push {
    secs: f64,
    parts: u64,
    items: u64,
    sum_num: u64,
    retrans: u64,
    cpu: f64,
    /// The gateway's own view: catalog answers completed, items sent,
    /// answers aborted.
    catalogs_sent: u64,
    items_sent: u64,
    aborted: u64,
    /// Restart of the gateway on the full registry, until its API answers.
    start_secs: f64,
}

/// What sipp logged: (seconds of the query, of the end, parts, items, SumNum).
fn sipp_log(path: &Path) -> Option<(f64, f64, u64, u64, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let nums = |l: &str| -> Vec<f64> {
        l.split_whitespace()
            .filter_map(|w| w.parse::<f64>().ok())
            .collect()
    };
    let q = text.lines().find(|l| l.starts_with("query "))?;
    let d = text.lines().find(|l| l.starts_with("done "))?;
    let (q, d) = (nums(q), nums(d));
    if q.len() < 2 || d.len() < 5 {
        return None;
    }
    Some((
        q[0] + q[1] / 1e6,
        d[0] + d[1] / 1e6,
        d[2] as u64,
        d[3] as u64,
        d[4] as u64,
    ))
}

fn push(dir: &Path, store: &Path, chunk: usize, n: usize) -> Result<Push> {
    let run = dir.join(format!("cascade-{chunk}"));
    std::fs::create_dir_all(&run)?;
    std::fs::copy(store, run.join("registry.redb")).context("copying the registry")?;
    let (sip_port, api_port, sup_port) = (free_port(), free_port(), free_port());
    let log = run.join("sipp.log");
    let out = std::fs::File::create(run.join("sipp.out"))?;
    let child = Command::new("sipp")
        .arg(format!("127.0.0.1:{sip_port}"))
        .arg("-sf")
        .arg(scenarios().join("superior_catalog_bench.xml"))
        .args(["-i", "127.0.0.1", "-p", &sup_port.to_string(), "-t", "u1"])
        .args(["-nostdin", "-d", "300", "-timeout", "600s", "-trace_logs"])
        .arg("-log_file")
        .arg(&log)
        .args(["-trace_err", "-error_file"])
        .arg(run.join("sipp.err"))
        .current_dir(&run)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("starting sipp (Debian package sip-tester)")?;
    let mut sipp = sim::KillOnDrop(child);
    std::thread::sleep(Duration::from_millis(200));
    let cfg = Daemon::config(
        &run,
        sip_port,
        api_port,
        "password = \"pw\"\n",
        &format!(
            "[[cascade]]\nid = \"{SUPERIOR}\"\naddress = \"127.0.0.1:{sup_port}\"\nname = \"sup\"\n\
             catalog_chunk = {chunk}\ncatalog_notify = false\n"
        ),
    );
    let t = Instant::now();
    let mut gw = Daemon::start(&cfg, sip_port, api_port)?;
    let start_secs = t.elapsed().as_secs_f64();
    let pid = gw.pid().context("gateway pid")?;
    let have = gw.get(&format!("/api/devices/{DEV}/channels"))?["count"]
        .as_u64()
        .unwrap_or(0);
    if have != n as u64 {
        bail!("the restarted gateway holds {have} channels of {DEV}, not {n}");
    }
    gw.wait_until(Duration::from_secs(30), "registered with sipp", |d| {
        d.get("/api/platforms/sup")
            .is_ok_and(|v| v["state"] == "registered")
    })?;
    // sipp waits 300 ms (-d) after the 200 OK before it asks.
    let r0 = gw.stat("gateway_sip_retransmissions_total", "direction=sent");
    let c0 = gateway_tests::cpu_secs(pid);
    let t0 = Instant::now();
    loop {
        if let Some(st) = sipp.try_wait()? {
            if sipp_log(&log).is_none() {
                bail!(
                    "sipp ended ({st}) without the whole catalog: {}\n{}",
                    std::fs::read_to_string(run.join("sipp.out")).unwrap_or_default(),
                    gw.log_tail(20)
                );
            }
            break;
        }
        if t0.elapsed() > Duration::from_secs(600) {
            bail!(
                "no whole catalog after 600 s; gateway: {}",
                gw.get("/api/platforms/sup").unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let cpu = gateway_tests::cpu_secs(pid) - c0;
    let retrans = gw.stat("gateway_sip_retransmissions_total", "direction=sent") - r0;
    let p = gw.get("/api/platforms/sup")?;
    let aborted = gw.stat("gateway_cascade_catalog_total", "platform=sup,what=aborted");
    gw.stop();
    let (q, d, parts, items, sum_num) = sipp_log(&log).context("sipp's log")?;
    Ok(Push {
        secs: d - q,
        parts,
        items,
        sum_num,
        retrans,
        cpu,
        catalogs_sent: p["catalogs_sent"].as_u64().unwrap_or(0),
        items_sent: p["items_sent"].as_u64().unwrap_or(0),
        aborted,
        start_secs,
    })
}

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    if !have_tools(&["sipp"]) {
        bail!("sipp is not installed (Debian package sip-tester)");
    }
    let n: usize = if quick { 2_000 } else { 20_000 };
    println!("cascade benchmark; CPU: {}", gateway_tests::cpu_model());
    let dir = TempDir::new("cascadebench");

    // The registry, and the baseline: the gateway pulling the catalog.
    // gb-sim fills it first (50 items per MESSAGE); then for each chunk a
    // gb-sim sending that many items per MESSAGE takes the device over
    // (the previous one killed without unregistering, so the device stays
    // online and its registration asks for no catalog) and the gateway
    // pulls the catalog from it. A pull that stops short (device
    // transactions given up) ends as partial 6 s after its last item
    // (catalog_timeout_secs; the default is 30).
    let base_dir = dir.path().join("pull");
    std::fs::create_dir_all(&base_dir)?;
    let (sip_port, api_port) = (free_port(), free_port());
    let cfg = Daemon::config(
        &base_dir,
        sip_port,
        api_port,
        "password = \"pw\"\ncatalog_timeout_secs = 6\n",
        "",
    );
    let mut gw = Daemon::start(&cfg, sip_port, api_port)?;
    let (ns, server) = (n.to_string(), gw.sip.to_string());
    let device = |per: usize| {
        let per = per.to_string();
        sim::spawn(
            None,
            &server,
            "127.0.0.1",
            DEV,
            &base_dir,
            &["--channels", &ns, "--catalog-per-message", &per],
        )
        .0
    };
    let t = Instant::now();
    let mut dev = device(50);
    gw.wait_until(Duration::from_secs(300), "the device's catalog", |d| {
        d.device(DEV).is_ok_and(|v| {
            v["online"] == true
                && v["catalog"]["state"] == "complete"
                && v["catalog"]["received"].as_u64() == Some(n as u64)
        })
    })?;
    let first = t.elapsed().as_secs_f64();
    let mut pulls = Vec::new();
    for chunk in CHUNKS {
        let _ = dev.kill();
        let _ = dev.wait();
        dev = device(chunk);
        let regs = gw.device(DEV)?["registrations"].as_u64().unwrap_or(0);
        gw.wait_until(
            Duration::from_secs(30),
            "the device registered again",
            |d| {
                d.device(DEV)
                    .is_ok_and(|v| v["registrations"].as_u64() > Some(regs))
            },
        )?;
        pulls.push(pull(&mut gw)?);
    }
    let _ = dev.kill();
    let _ = dev.wait();
    let have = gw.get(&format!("/api/devices/{DEV}/channels"))?["count"]
        .as_u64()
        .unwrap_or(0);
    if have != n as u64 {
        bail!("after the pulls the gateway holds {have} channels of {DEV}, not {n}");
    }
    gw.stop();
    let store = base_dir.join("registry.redb");

    println!(
        "\n## Catalog of {n} channels (+ the gateway's own item) to a sipp superior over UDP loopback, \
         each part after the previous part's 200 OK; baseline: the gateway pulling it from gb-sim"
    );
    println!(
        "{:<54}| {:<58}| push/pull",
        "      push: gateway -> sipp superior", "pull (baseline): gb-sim device -> gateway"
    );
    println!(
        "{:>5} {:>6} {:>6} {:>8} {:>9} {:>7} {:>6} | {:>8} {:>13} {:>9} {:>8} {:>8} {:>6} | {:>6} {:>6}",
        "chunk",
        "parts",
        "items",
        "push s",
        "items/s",
        "retrans",
        "CPU s",
        "pull s",
        "state",
        "items/s",
        "rx drops",
        "absorbed",
        "CPU s",
        "time",
        "CPU"
    );
    let mut notes = Vec::new();
    for (chunk, pl) in CHUNKS.iter().zip(&pulls) {
        let ps = push(dir.path(), &store, *chunk, n)?;
        println!(
            "{:>5} {:>6} {:>6} {:>8.3} {:>9.0} {:>7} {:>6.2} | {:>8.3} {:>13} {:>9.0} {:>8} {:>8} {:>6.2} | {:>6.2} {:>6}",
            chunk,
            ps.parts,
            ps.items,
            ps.secs,
            ps.items as f64 / ps.secs.max(1e-6),
            ps.retrans,
            ps.cpu,
            pl.secs,
            if pl.state == "complete" {
                pl.state.clone()
            } else {
                format!("{} {}", pl.state, pl.received)
            },
            pl.received as f64 / pl.secs.max(1e-3),
            pl.drops,
            pl.absorbed,
            pl.cpu,
            ps.secs / pl.secs.max(1e-3),
            if pl.cpu > 0.0 && ps.cpu > 0.0 {
                format!("{:.2}", ps.cpu / pl.cpu)
            } else {
                "-".into()
            }
        );
        if ps.items != ps.sum_num
            || ps.catalogs_sent != 1
            || ps.items_sent != ps.items
            || ps.aborted > 0
        {
            notes.push(format!(
                "chunk {chunk}: sipp counted {} items of SumNum {}; the gateway says catalogs_sent {}, items_sent {}, aborted {}",
                ps.items, ps.sum_num, ps.catalogs_sent, ps.items_sent, ps.aborted
            ));
        }
        notes.push(format!(
            "chunk {chunk}: the gateway restarted on the registry of {n} channels answered its API after {:.2} s",
            ps.start_secs
        ));
    }
    println!(
        "push: the gateway answering sipp's Catalog query; time on sipp's clock from its query to the last part; \
         retrans = the gateway's retransmissions sent; CPU s = gateway CPU seconds (10 ms ticks).\n\
         pull (baseline): the gateway asking gb-sim for the same catalog, which the device sends `--catalog-per-message \
         <chunk>` items per MESSAGE without waiting for answers (as devices do); time from POST /api/devices/{{id}}/catalog \
         to the catalog's state; rx drops = device MESSAGEs lost at the gateway's full SIP socket (then retransmitted \
         by the device, T1 = 500 ms); absorbed = device retransmissions the gateway answered again.\n\
         ratios: push / pull, of the time and of the CPU seconds (\"-\": under one tick)."
    );
    println!("first synchronisation of the {n} channels (50 per MESSAGE) after the device registered: {first:.2} s (100 ms polls)");
    for n in notes {
        println!("{n}");
    }
    Ok(())
}
