//! The commands that work on the kernel data plane directly (no daemon
//! needed): attach, detach, set, flow add/del/list, streams, status.

use std::{
    io::Write,
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use gateway_common::counter;
use serde::Serialize;

use super::{
    output::{print_json, print_table, FlowJson, StreamJson},
    AttachArgs, FlowAddArgs, FlowKeyArgs, IfaceJson, SetArgs, StreamsArgs,
};
use crate::{
    dataplane::{
        attach::{self, Settings, Target},
        flows::{describe, FlowSpec},
        make_key, StreamRow,
    },
    sys::clock::monotonic_ns,
};

pub(super) fn attach(t: &Target, a: &AttachArgs) -> Result<()> {
    let mut s = Settings::default();
    a.settings.apply(&mut s);
    let r = attach::attach(t, a.mode, a.max_streams, &s, &a.relay_to)?;
    if a.json {
        print_json(&r)?;
    } else {
        println!(
                "attached to {} (ifindex {}): XDP {} mode, TC egress via {}, {} streams x {} CPUs, pinned at {}",
                r.iface,
                r.ifindex,
                r.mode,
                r.tc,
                r.max_streams,
                r.ncpus,
                r.pin_dir.display()
            );
    }
    Ok(())
}

pub(super) fn detach(t: &Target) -> Result<()> {
    attach::detach(t)?;
    println!("detached from {}", t.iface);
    Ok(())
}

pub(super) fn set(t: &Target, a: &SetArgs) -> Result<()> {
    let current = t.open()?.config()?;
    let mut s = Settings::from_config(&current);
    a.settings.apply(&mut s);
    attach::set(t, &s)?;
    if let Some(g) = &a.sip_guard {
        set_sip_guard(t, g)?;
    }
    println!("updated {}", a.iface);
    Ok(())
}

/// `--sip-guard off|on|RATE/BURST/GLOBAL` on the guard the daemon set up
/// (its SIP ports come from there).
fn set_sip_guard(t: &Target, arg: &str) -> Result<()> {
    use crate::dataplane::sip_guard::GuardSettings;
    let _lock = t.lock()?;
    let maps = t.open()?;
    let Some(mut g) = maps.sip_guard_raw()? else {
        bail!(
            "{} was attached by a version without the SIP flood guard; detach and attach again",
            t.iface
        );
    };
    let ports: Vec<u16> = g.ports.iter().copied().filter(|p| *p != 0).collect();
    match arg {
        "off" => g.enabled = 0,
        "on" if g.src_interval_ns != 0 && !ports.is_empty() => g.enabled = 1,
        "on" => bail!("the SIP flood guard was never set up here: the daemon's [dataplane.sip_guard] does it (or give RATE/BURST/GLOBAL once it has)"),
        limits => {
            let n: Vec<u32> = limits
                .split('/')
                .map(|x| x.trim().parse::<u32>())
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| anyhow::anyhow!("--sip-guard takes off, on or RATE/BURST/GLOBAL (numbers), not {limits:?}"))?;
            let [rate, burst, global_rate] = n[..] else {
                bail!("--sip-guard takes off, on or RATE/BURST/GLOBAL, not {limits:?}");
            };
            if ports.is_empty() {
                bail!("the SIP flood guard has no SIP ports here: the daemon's [dataplane.sip_guard] sets them");
            }
            g = GuardSettings {
                rate,
                burst,
                global_rate,
            }
            .to_kernel(&ports, maps.ncpus())?;
        }
    }
    maps.set_sip_guard(&g)?;
    Ok(())
}

/// The guard as `status` shows it.
#[derive(Serialize)]
struct SipGuardJson {
    enabled: bool,
    ports: Vec<u16>,
    rate: u64,
    burst: u64,
    global_rate: u64,
    allowed: usize,
}

fn sip_guard_json(maps: &crate::dataplane::maps::Maps) -> Result<Option<SipGuardJson>> {
    let Some(g) = maps.sip_guard_raw()? else {
        return Ok(None);
    };
    if g.src_interval_ns == 0 {
        return Ok(None);
    }
    let ncpus = maps.ncpus().max(1) as u64;
    Ok(Some(SipGuardJson {
        enabled: g.enabled != 0,
        ports: g.ports.iter().copied().filter(|p| *p != 0).collect(),
        rate: 1_000_000_000 / g.src_interval_ns,
        burst: g.src_tolerance_ns / g.src_interval_ns + 1,
        global_rate: (1_000_000_000 * ncpus) / g.global_interval_ns.max(1),
        allowed: maps.sip_allowed()?.len(),
    }))
}

pub(super) fn flow_add(t: &Target, a: &FlowAddArgs) -> Result<()> {
    let _lock = t.lock()?;
    let mut maps = t.open()?;
    let (k, v) = maps.add_flow(&FlowSpec {
        local: Some(a.key.local),
        ssrc: a.key.ssrc,
        expect_ssrc: a.expect_ssrc,
        name: a.name.clone(),
        clock_rate: a.clock_rate,
    })?;
    if a.json {
        print_json(&FlowJson::new(&k, &v))?;
    } else {
        println!("added flow {} (slot {})", describe(&k), v.slot);
    }
    Ok(())
}

pub(super) fn flow_del(t: &Target, a: &FlowKeyArgs) -> Result<()> {
    let _lock = t.lock()?;
    let mut maps = t.open()?;
    let k = make_key(a.local, a.ssrc);
    maps.del_flow(&k)?;
    println!("removed flow {}", describe(&k));
    Ok(())
}

pub(super) fn flow_list(t: &Target, a: &IfaceJson) -> Result<()> {
    let mut maps = t.open()?;
    let flows: Vec<FlowJson> = maps
        .flows()?
        .iter()
        .map(|(k, v)| FlowJson::new(k, v))
        .collect();
    if a.json {
        print_json(&flows)?;
    } else {
        println!(
            "{:<40} {:>5} {:>12} {:<20}",
            "FLOW", "SLOT", "EXPECT_SSRC", "NAME"
        );
        for f in &flows {
            let exp = f
                .expect_ssrc
                .map(|s| s.to_string())
                .unwrap_or_else(|| "-".into());
            println!("{:<40} {:>5} {:>12} {:<20}", f.flow, f.slot, exp, f.name);
        }
    }
    Ok(())
}

pub(super) fn relay_list(t: &Target, a: &IfaceJson) -> Result<()> {
    let mut maps = t.open()?;
    let relays = maps.relay_views()?;
    if a.json {
        print_json(&relays)?;
        return Ok(());
    }
    if relays.is_empty() {
        println!("no kernel relays on {}", t.iface);
        return Ok(());
    }
    for r in &relays {
        let mode = r
            .mode
            .map(|m| format!("{m:?}").to_lowercase())
            .unwrap_or_else(|| "-".into());
        println!(
            "{} ({}) slot {} mode {mode}, source {}",
            r.flow, r.name, r.slot, r.source
        );
        for o in &r.outputs {
            let start = o
                .start_seq
                .map(|s| format!(" from seq {s}"))
                .unwrap_or_default();
            println!(
                "  -> {} from {} ssrc {} seq +{}{start}: {} packets, {} bytes, {} left to userspace",
                o.dest, o.from, o.ssrc, o.seq_delta, o.stats.packets, o.stats.bytes, o.stats.passed
            );
        }
    }
    Ok(())
}

pub fn stream_rows(
    now_ns: u64,
    cur: &[StreamRow],
    prev: Option<(&[StreamRow], f64)>,
) -> Vec<StreamJson> {
    cur.iter()
        .map(|r| {
            let s = &r.stats;
            let rate = |v: u64, pick: fn(&StreamRow) -> u64| -> f64 {
                match prev {
                    Some((p, secs)) if secs > 0.0 => p
                        .iter()
                        .find(|o| o.key == r.key && o.flow.slot == r.flow.slot)
                        .map(|o| v.saturating_sub(pick(o)) as f64 / secs)
                        .unwrap_or(0.0),
                    _ => 0.0,
                }
            };
            let clock = if r.flow.clock_rate == 0 {
                90_000
            } else {
                r.flow.clock_rate
            };
            StreamJson {
                flow: FlowJson::new(&r.key, &r.flow),
                current_ssrc: s.ssrc,
                packets: s.packets,
                bytes: s.bytes,
                received: s.received,
                expected: s.expected,
                lost: s.lost,
                out_of_order: s.out_of_order,
                duplicates: s.duplicates,
                frames: s.frames,
                ssrc_mismatch: s.ssrc_mismatch,
                not_rtp: s.not_rtp,
                restarts: s.restarts,
                highest_seq: s.highest_seq,
                last_payload_type: s.last_pt,
                jitter_units: s.jitter,
                jitter_ms: s.jitter as f64 * 1000.0 / clock as f64,
                idle_secs: (s.last_ns != 0).then(|| now_ns.saturating_sub(s.last_ns) as f64 / 1e9),
                first_packet_ns: s.first_ns,
                last_packet_ns: s.last_ns,
                packets_per_sec: rate(s.packets, |o| o.stats.packets),
                bits_per_sec: rate(s.bytes, |o| o.stats.bytes) * 8.0,
            }
        })
        .collect()
}

pub(super) fn streams(t: &Target, a: &StreamsArgs) -> Result<()> {
    let mut maps = t.open()?;
    let interval = a.watch.unwrap_or(a.interval);
    if !(interval.is_finite() && interval > 0.0 && interval <= 3600.0) {
        bail!("interval must be between 0 and 3600 seconds, not {interval}");
    }
    let mut prev = maps.streams()?;
    let mut prev_t = Instant::now();
    let mut n = 0u64;
    loop {
        std::thread::sleep(Duration::from_secs_f64(interval));
        let cur = maps.streams()?;
        let secs = prev_t.elapsed().as_secs_f64();
        prev_t = Instant::now();
        let rows = stream_rows(monotonic_ns(), &cur, Some((&prev, secs)));
        if a.json {
            print_json(&rows)?;
        } else {
            if a.watch.is_some() {
                // Clear the screen between refreshes.
                print!("\x1b[2J\x1b[H");
                println!("{} streams on {} (every {interval}s)", rows.len(), t.iface);
            }
            print_table(&rows);
        }
        std::io::stdout().flush()?;
        n += 1;
        prev = cur;
        if a.watch.is_none() || a.count.is_some_and(|c| n >= c) {
            return Ok(());
        }
    }
}

#[derive(Serialize)]
struct StatusJson {
    iface: String,
    netns: Option<String>,
    attached: bool,
    pin_dir: PathBuf,
    xdp_mode: &'static str,
    tc: &'static str,
    attached_unix: u64,
    ncpus: u32,
    max_streams: u32,
    flows: usize,
    media_ports: String,
    egress_ports: String,
    unknown_policy: &'static str,
    dscp: Option<u8>,
    counters: std::collections::BTreeMap<&'static str, u64>,
    egress: Vec<EgressJson>,
    /// The SIP flood guard (absent when never set up).
    #[serde(skip_serializing_if = "Option::is_none")]
    sip_guard: Option<SipGuardJson>,
}

#[derive(Serialize)]
struct EgressJson {
    destination: SocketAddr,
    packets: u64,
    bytes: u64,
}

pub(super) fn status(t: &Target, json: bool) -> Result<()> {
    let mut maps = t.open()?;
    let cfg = maps.config()?;
    let s = Settings::from_config(&cfg);
    let counters = maps.counters()?;
    let flows = maps.flows()?.len();
    let egress = maps.egress()?;
    let sip_guard = sip_guard_json(&maps)?;
    let st = StatusJson {
        iface: t.iface.clone(),
        netns: t.netns.clone(),
        attached: true,
        pin_dir: t.pin_dir(),
        xdp_mode: attach::mode_name(cfg.xdp_mode),
        tc: if cfg.tc_kind == attach::TC_KIND_TCX {
            "tcx"
        } else {
            "netlink"
        },
        attached_unix: cfg.attached_unix,
        ncpus: maps.ncpus(),
        max_streams: maps.max_streams(),
        flows,
        media_ports: format!("{}-{}", s.media_ports.0, s.media_ports.1),
        egress_ports: format!("{}-{}", s.egress_ports.0, s.egress_ports.1),
        unknown_policy: if s.unknown_drop { "drop" } else { "pass" },
        dscp: s.dscp,
        counters: counter::NAMES
            .iter()
            .zip(counters)
            .map(|(n, v)| (*n, v))
            .collect(),
        egress: egress
            .iter()
            .map(|(d, e)| EgressJson {
                destination: *d,
                packets: e.packets,
                bytes: e.bytes,
            })
            .collect(),
        sip_guard,
    };
    if json {
        return print_json(&st);
    }
    println!(
        "interface     {} ({})",
        st.iface,
        st.netns.as_deref().unwrap_or("host namespace")
    );
    println!(
        "attached      XDP {} mode, TC egress via {}, since unix {}",
        st.xdp_mode, st.tc, st.attached_unix
    );
    println!("pins          {}", st.pin_dir.display());
    println!(
        "flows         {} / {} ({} CPUs)",
        st.flows, st.max_streams, st.ncpus
    );
    println!(
        "media ports   {} (unknown flows: {})",
        st.media_ports, st.unknown_policy
    );
    println!(
        "egress        ports {}, DSCP {}",
        st.egress_ports,
        st.dscp
            .map(|d| d.to_string())
            .unwrap_or_else(|| "off".into())
    );
    if let Some(g) = &st.sip_guard {
        println!(
            "sip guard     {} on UDP {:?}: {}/s per source (burst {}), {}/s in all; {} registered address(es) allowed",
            if g.enabled { "on" } else { "OFF" },
            g.ports,
            g.rate,
            g.burst,
            g.global_rate,
            g.allowed
        );
    }
    println!("counters:");
    for (n, v) in &st.counters {
        println!("  {n:<20} {v}");
    }
    if !st.egress.is_empty() {
        println!("egress destinations:");
        for e in &st.egress {
            println!(
                "  {:<40} {:>10} packets {:>12} bytes",
                e.destination, e.packets, e.bytes
            );
        }
    }
    Ok(())
}
