//! The SIP flood rig of the `sip_guard` test and `flood-bench` (root): the
//! gateway attached to a veth in one namespace with
//! `[dataplane.sip_guard]`, gb-sim devices registering and sending
//! keepalives from the other, and `sip-flood` sending REGISTERs from 1 000
//! other addresses of that namespace (198.18.4.0/22) as fast as it can.

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{ensure, Context as _, Result};
use serde_json::Value;

use crate::{
    cli::gateway_in,
    netns::NetnsPair,
    sim::{self, KillOnDrop},
    sipp::{free_port, Daemon, TempDir},
};

/// Addresses the flood comes from.
pub const FLOOD_SOURCES: u32 = 1000;

/// The guard's settings: packets/s per source, burst, packets/s of all
/// other sources together.
#[derive(Clone, Copy, Debug)]
pub struct Guard {
    pub rate: u64,
    pub burst: u64,
    pub global_rate: u64,
}

pub struct Rig {
    pub daemon: Daemon,
    pub devices: u32,
    // Dropped in this order: the simulator, then the directory and the
    // namespaces.
    sim: KillOnDrop,
    flood_bin: PathBuf,
    _dir: TempDir,
    pub net: NetnsPair,
}

impl Rig {
    /// Namespaces, the flood's addresses, the daemon with the guard on, and
    /// `devices` gb-sim devices (2 s keepalives) all online.
    pub fn new(tag: &str, devices: u32, guard: Guard, flood_bin: PathBuf) -> Result<Rig> {
        let net = NetnsPair::new(tag).context("namespaces")?;
        let batch: String = (0..FLOOD_SOURCES)
            .map(|i| {
                format!(
                    "addr add 198.18.{}.{}/32 dev {}\n",
                    4 + i / 256,
                    i % 256,
                    net.veth_b
                )
            })
            .collect();
        let dir = TempDir::new(tag);
        let batch_file = dir.path().join("addrs.batch");
        std::fs::write(&batch_file, batch)?;
        let st = Command::new("ip")
            .args(["-n", &net.b, "-batch"])
            .arg(&batch_file)
            .status()?;
        ensure!(st.success(), "adding the flood's addresses");
        let st = Command::new("ip")
            .args(["-n", &net.a, "route", "add", "198.18.4.0/22", "dev"])
            .arg(&net.veth_a)
            .status()?;
        ensure!(st.success(), "routing the flood's addresses");
        let api_port = free_port();
        let cfg = dir.path().join("gateway.toml");
        std::fs::write(
            &cfg,
            format!(
                "[dataplane]\niface = \"{iface}\"\nmode = \"native\"\nmedia_ports = \"36100-36199\"\n\
                 [dataplane.sip_guard]\nrate = {rate}\nburst = {burst}\nglobal_rate = {global}\n\
                 [sip]\nid = \"34020000002000000001\"\nlisten = [\"{gw}:5060\"]\npassword = \"pw\"\n\
                 query_info = false\nkeepalive_interval_secs = 2\nkeepalive_timeout_count = 5\n\
                 [api]\nlisten = \"127.0.0.1:{api_port}\"\n\
                 [metrics]\nlisten = \"127.0.0.1:0\"\n\
                 [store]\npath = \"{store}\"\n",
                iface = net.veth_a,
                gw = net.addr_a,
                rate = guard.rate,
                burst = guard.burst,
                global = guard.global_rate,
                store = dir.path().join("registry.redb").display(),
            ),
        )?;
        let sip: std::net::SocketAddr = format!("{}:5060", net.addr_a).parse()?;
        let mut daemon = Daemon::start_in(Some(&net.a), &cfg, sip, api_port)?;
        let n = devices.to_string();
        let (sim, _status) = sim::spawn_in(
            &net,
            "34020000001320003001",
            dir.path(),
            &["--devices", &n, "--keepalive-secs", "2", "--expires", "60"],
        );
        daemon.wait_until(Duration::from_secs(60), "devices online", |d| {
            all_online(d, devices)
        })?;
        let mut rig = Rig {
            daemon,
            devices,
            sim,
            flood_bin,
            _dir: dir,
            net,
        };
        // Their address is allowed (the allow list follows within a second).
        let net_a = rig.net.a.clone();
        let veth = rig.net.veth_a.clone();
        rig.daemon
            .wait_until(Duration::from_secs(10), "allow list", |_| {
                kernel_status(&net_a, &veth)["sip_guard"]["allowed"] == 1
            })?;
        Ok(rig)
    }

    /// `gateway status --json` of the attachment.
    pub fn kernel(&self) -> Value {
        kernel_status(&self.net.a, &self.net.veth_a)
    }

    /// Floods for `secs` from the other namespace; sip-flood's JSON report
    /// (`sent`, `secs`, ...).
    pub fn flood(&self, secs: f64) -> Result<Value> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.net.b])
            .arg(&self.flood_bin)
            .args([
                &format!("{}:5060", self.net.addr_a),
                "198.18.4.0",
                &FLOOD_SOURCES.to_string(),
                &secs.to_string(),
                "50000000",
            ])
            .output()
            .context("sip-flood")?;
        ensure!(
            out.status.success(),
            "sip-flood: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).context("sip-flood report")
    }

    /// `gateway set --sip-guard ARG` on the attachment.
    pub fn set_guard(&self, arg: &str) -> crate::cli::Out {
        gateway_in(
            &self.net.a,
            &["set", "--iface", &self.net.veth_a, "--sip-guard", arg],
        )
    }

    /// Every device online and known.
    pub fn all_online(&self) -> bool {
        all_online(&self.daemon, self.devices)
    }

    /// Devices that went offline so far.
    pub fn offline_transitions(&self) -> u64 {
        let v = self.daemon.get("/api/stats").unwrap_or_default();
        v["gateway_device_transitions_total"]
            .as_object()
            .map_or(0, |m| {
                m.iter()
                    .filter(|(k, _)| k.contains("to=offline"))
                    .map(|(_, v)| v.as_u64().unwrap_or(0))
                    .sum()
            })
    }

    /// Stops the simulator and the daemon; true when the daemon stopped
    /// cleanly.
    pub fn stop(mut self) -> bool {
        let _ = Command::new("kill").arg(self.sim.id().to_string()).status();
        let _ = self.sim.wait();
        self.daemon.stop()
    }
}

/// A kernel counter of a `gateway status --json` report.
pub fn counter(v: &Value, name: &str) -> u64 {
    v["counters"][name].as_u64().unwrap_or(0)
}

fn kernel_status(ns: &str, iface: &str) -> Value {
    let o = gateway_in(ns, &["status", "--iface", iface, "--json"]);
    serde_json::from_str(&o.stdout).unwrap_or_default()
}

fn all_online(d: &Daemon, n: u32) -> bool {
    d.get("/api/devices?limit=0")
        .is_ok_and(|v| v["online"] == n && v["count"] == n)
}
