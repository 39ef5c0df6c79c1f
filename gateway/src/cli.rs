//! Command-line interface (clap). Every command that prints data has `--json`.

use std::{
    io::Write,
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use clap::{Args, Parser, Subcommand};
use gateway_common::counter;
use serde::Serialize;

use crate::{
    daemon,
    dataplane::{
        self,
        attach::{self, Mode, Settings, Target},
        flows::{describe, flow_name, FlowSpec},
        make_key, sys, StreamRow,
    },
};

#[derive(Parser, Debug)]
#[command(
    name = "gateway",
    version,
    about = "eBPF-accelerated GB/T 28181 media gateway"
)]
pub struct Cli {
    /// Work in this network namespace (/run/netns/NAME) instead of the
    /// caller's; pins stay in the host's bpffs.
    #[arg(long, global = true, value_name = "NAME")]
    pub netns: Option<String>,
    /// Mount point of the bpffs holding the pins (mounted if needed).
    #[arg(long, global = true, value_name = "DIR", default_value = attach::DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Load and attach XDP (ingress) and TC (egress) to an interface and pin them.
    Attach(AttachArgs),
    /// Detach the programs from an interface and remove its pins.
    Detach(IfaceArg),
    /// Change the kernel settings of an attached interface.
    Set(SetArgs),
    /// Manage the flow table.
    #[command(subcommand)]
    Flow(FlowCmd),
    /// Per-stream counters with packet and bit rates.
    Streams(StreamsArgs),
    /// What is attached, in which mode, map fill and global counters.
    Status(IfaceJson),
    /// Run the daemon.
    Run(RunArgs),
    /// Devices registered with the running daemon (asks its REST API).
    Devices(DevicesArgs),
    /// Open a live stream from a device (INVITE through the daemon).
    Play(PlayArgs),
    /// Live streams of the daemon (sessions and their media).
    Sessions(SessionsArgs),
    /// End a live stream (BYE).
    Hangup(HangupArgs),
    /// Tell whether this machine's kernel can run the eBPF programs, and why not.
    Check(crate::check::CheckArgs),
}

/// Where the daemon's API is.
#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// API address of the daemon (default: [api] listen of --config, else 127.0.0.1:7080).
    #[arg(long, value_name = "ADDR")]
    pub api: Option<String>,
    /// Read the API address and token from the daemon's configuration.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Bearer token (default: [api] token of --config, or $GATEWAY_API_TOKEN).
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
}

#[derive(Args, Debug)]
pub struct PlayArgs {
    /// Device ID.
    pub device: String,
    /// Channel ID (default: the device's first catalog channel, else the device).
    pub channel: Option<String>,
    /// udp, tcp-passive or tcp-active.
    #[arg(long, default_value = "udp")]
    pub transport: String,
    /// Record (default: as the daemon's [media.record] says).
    #[arg(long)]
    pub record: Option<bool>,
    #[command(flatten)]
    pub api: ApiArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SessionsArgs {
    /// Include the recently ended ones.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub api: ApiArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct HangupArgs {
    /// Stream ID (its y= value).
    pub id: String,
    #[command(flatten)]
    pub api: ApiArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DevicesArgs {
    /// One device: its details and channels.
    pub id: Option<String>,
    #[command(flatten)]
    pub api: ApiArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct IfaceArg {
    #[arg(long, value_name = "IF")]
    pub iface: String,
}

#[derive(Args, Debug)]
pub struct IfaceJson {
    #[arg(long, value_name = "IF")]
    pub iface: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct SettingsArgs {
    /// UDP port range of the media ports (unknown-flow policy applies there).
    #[arg(long, value_name = "LO-HI", value_parser = parse_range)]
    pub media_ports: Option<(u16, u16)>,
    /// What to do with RTP to a media port that matches no flow.
    #[arg(long, value_name = "pass|drop", value_parser = parse_policy)]
    pub unknown: Option<bool>,
    /// DSCP for media the gateway sends: off, af41, ef, cs4, or 0-63.
    #[arg(long, value_name = "DSCP", value_parser = parse_dscp_arg)]
    pub dscp: Option<Dscp>,
    /// Source-port range of media the gateway sends (default: the media ports).
    #[arg(long, value_name = "LO-HI", value_parser = parse_range)]
    pub egress_ports: Option<(u16, u16)>,
}

impl SettingsArgs {
    fn apply(&self, s: &mut Settings) {
        if let Some(r) = self.media_ports {
            s.media_ports = r;
            if self.egress_ports.is_none() {
                s.egress_ports = r;
            }
        }
        if let Some(u) = self.unknown {
            s.unknown_drop = u;
        }
        if let Some(Dscp(d)) = self.dscp {
            s.dscp = d;
        }
        if let Some(r) = self.egress_ports {
            s.egress_ports = r;
        }
    }
}

#[derive(Args, Debug)]
pub struct AttachArgs {
    #[arg(long, value_name = "IF")]
    pub iface: String,
    /// XDP mode: native (driver), skb (generic), or auto (native, else skb).
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    pub mode: Mode,
    /// Capacity of the flow table and statistics array.
    #[arg(long, default_value_t = gateway_common::DEFAULT_MAX_STREAMS)]
    pub max_streams: u32,
    #[command(flatten)]
    pub settings: SettingsArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SetArgs {
    #[arg(long, value_name = "IF")]
    pub iface: String,
    #[command(flatten)]
    pub settings: SettingsArgs,
}

#[derive(Subcommand, Debug)]
pub enum FlowCmd {
    /// Add a flow: media to a local address and UDP port (and SSRC).
    Add(FlowAddArgs),
    /// Remove a flow.
    Del(FlowKeyArgs),
    /// List the flows.
    List(IfaceJson),
}

#[derive(Args, Debug)]
pub struct FlowKeyArgs {
    #[arg(long, value_name = "IF")]
    pub iface: String,
    /// Local address and port; 0.0.0.0 or [::] match any local address.
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_sockaddr)]
    pub local: SocketAddr,
    /// Split streams sharing the port by this RTP SSRC (decimal or 0x hex).
    #[arg(long, value_name = "N", value_parser = parse_ssrc)]
    pub ssrc: Option<u32>,
}

#[derive(Args, Debug)]
pub struct FlowAddArgs {
    #[command(flatten)]
    pub key: FlowKeyArgs,
    /// Port-level flow that expects this SSRC and counts others as mismatches.
    #[arg(long, value_name = "N", value_parser = parse_ssrc)]
    pub expect_ssrc: Option<u32>,
    /// A name for operators (up to 31 bytes).
    #[arg(long, default_value = "")]
    pub name: String,
    /// RTP clock rate for jitter, Hz.
    #[arg(long, default_value_t = 90_000)]
    pub clock_rate: u32,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct StreamsArgs {
    #[arg(long, value_name = "IF")]
    pub iface: String,
    #[arg(long)]
    pub json: bool,
    /// Refresh every SECS seconds until interrupted (or --count times).
    #[arg(long, value_name = "SECS")]
    pub watch: Option<f64>,
    /// With --watch: stop after N refreshes.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Without --watch: seconds between the two samples the rates come from.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub interval: f64,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Daemon configuration (TOML).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

pub fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let lo: u16 = a
        .trim()
        .parse()
        .map_err(|_| format!("bad port {a:?} in {s:?}"))?;
    let hi: u16 = b
        .trim()
        .parse()
        .map_err(|_| format!("bad port {b:?} in {s:?}"))?;
    if lo == 0 || lo > hi {
        return Err(format!("port range {s:?} must be LO-HI with 1 <= LO <= HI"));
    }
    Ok((lo, hi))
}

fn parse_policy(s: &str) -> Result<bool, String> {
    match s {
        "drop" => Ok(true),
        "pass" => Ok(false),
        _ => Err(format!("policy must be pass or drop, not {s:?}")),
    }
}

/// A DSCP setting: a value, or off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dscp(pub Option<u8>);

fn parse_dscp_arg(s: &str) -> Result<Dscp, String> {
    parse_dscp(s).map(Dscp)
}

pub fn parse_dscp(s: &str) -> Result<Option<u8>, String> {
    let v = match s.to_ascii_lowercase().as_str() {
        "off" | "none" => return Ok(None),
        "ef" => 46,
        "af41" => 34,
        "af42" => 36,
        "af43" => 38,
        "cs4" => 32,
        "cs5" => 40,
        n => n
            .parse::<u8>()
            .map_err(|_| format!("DSCP must be off, af41, ef, cs4 or 0-63, not {s:?}"))?,
    };
    if v > 63 {
        return Err(format!("DSCP {v} is above 63"));
    }
    Ok(Some(v))
}

fn parse_sockaddr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .map_err(|_| format!("{s:?} is not ADDR:PORT (IPv6 as [ADDR]:PORT)"))
}

pub fn parse_ssrc(s: &str) -> Result<u32, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16),
        None => s.parse::<u32>(),
    };
    r.map_err(|_| format!("SSRC must be a 32-bit number (decimal or 0x hex), not {s:?}"))
}

pub fn run(cli: Cli) -> Result<()> {
    if let Some(ns) = &cli.netns {
        // Before any thread exists, so the whole process works in the namespace.
        sys::enter_netns(ns).with_context(|| format!("entering network namespace {ns:?}"))?;
    }
    let target = |iface: &str| Target::new(iface, cli.netns.as_deref(), Some(&cli.bpffs));
    match &cli.command {
        Command::Attach(a) => {
            let t = target(&a.iface)?;
            let mut s = Settings::default();
            a.settings.apply(&mut s);
            let r = attach::attach(&t, a.mode, a.max_streams, &s)?;
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
        }
        Command::Detach(a) => {
            attach::detach(&target(&a.iface)?)?;
            println!("detached from {}", a.iface);
        }
        Command::Set(a) => {
            let t = target(&a.iface)?;
            let current = t.open()?.config()?;
            let mut s = Settings::from_config(&current);
            a.settings.apply(&mut s);
            attach::set(&t, &s)?;
            println!("updated {}", a.iface);
        }
        Command::Flow(FlowCmd::Add(a)) => {
            let t = target(&a.key.iface)?;
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
        }
        Command::Flow(FlowCmd::Del(a)) => {
            let t = target(&a.iface)?;
            let _lock = t.lock()?;
            let mut maps = t.open()?;
            let k = make_key(a.local, a.ssrc);
            maps.del_flow(&k)?;
            println!("removed flow {}", describe(&k));
        }
        Command::Flow(FlowCmd::List(a)) => {
            let mut maps = target(&a.iface)?.open()?;
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
        }
        Command::Streams(a) => streams(&target(&a.iface)?, a)?,
        Command::Status(a) => status(&target(&a.iface)?, a.json)?,
        Command::Run(a) => daemon::run(&a.config, cli.netns.as_deref(), &cli.bpffs)?,
        Command::Devices(a) => devices(a)?,
        Command::Play(a) => play(a)?,
        Command::Sessions(a) => sessions(a)?,
        Command::Hangup(a) => hangup(a)?,
        Command::Check(a) => crate::check::run(a, cli.netns.as_deref(), &cli.bpffs)?,
    }
    Ok(())
}

/// GET on the daemon's API; a non-2xx answer becomes an error carrying
/// the API's own message.
fn api_get(base: &str, path: &str, token: Option<&str>) -> Result<serde_json::Value> {
    api_call("GET", base, path, token, None)
}

impl ApiArgs {
    /// (base address, token) from the flags, the config or the defaults.
    fn resolve(&self) -> Result<(String, Option<String>)> {
        let cfg = self
            .config
            .as_deref()
            .map(crate::config::Config::load)
            .transpose()?;
        let base = self
            .api
            .clone()
            .or_else(|| cfg.as_ref().map(|c| c.api.listen.to_string()))
            .unwrap_or_else(|| crate::config::DEFAULT_API.to_string());
        let token = self
            .token
            .clone()
            .or_else(|| cfg.as_ref().and_then(|c| c.api.token.clone()))
            .or_else(|| std::env::var("GATEWAY_API_TOKEN").ok());
        Ok((base, token))
    }
}

fn api_call(
    method: &str,
    base: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value> {
    let url = format!("http://{base}{path}");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let auth = token.map(|t| format!("Bearer {t}"));
    let sent = match (method, body) {
        ("POST", Some(b)) => {
            let mut r = agent.post(&url).header("Content-Type", "application/json");
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.send(b.to_string())
        }
        ("DELETE", _) => {
            let mut r = agent.delete(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
        _ => {
            let mut r = agent.get(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
    };
    let mut resp = sent.with_context(|| {
        format!("cannot reach the daemon's API at {base} (is `gateway run` up?)")
    })?;
    let code = resp.status().as_u16();
    let body: serde_json::Value = resp
        .body_mut()
        .read_json()
        .with_context(|| format!("{url}: answer is not JSON (HTTP {code})"))?;
    if !(200..300).contains(&code) {
        let msg = body["error"].as_str().unwrap_or("error");
        bail!("{msg} (HTTP {code})");
    }
    Ok(body)
}

fn play(a: &PlayArgs) -> Result<()> {
    let (base, token) = a.api.resolve()?;
    let token = token.as_deref();
    let channel = match &a.channel {
        Some(c) => c.clone(),
        None => api_get(&base, &format!("/api/devices/{}/channels", a.device), token)?["channels"]
            [0]["device_id"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| a.device.clone()),
    };
    let mut body = serde_json::json!({
        "device": a.device, "channel": channel, "transport": a.transport,
    });
    if let Some(r) = a.record {
        body["record"] = serde_json::json!(r);
    }
    let s = api_call("POST", &base, "/api/streams", token, Some(&body))?;
    if a.json {
        return print_json(&s);
    }
    println!(
        "stream {} established: {} channel {} over {}, SSRC {}, media to {} from {}",
        s["id"].as_str().unwrap_or("?"),
        a.device,
        channel,
        a.transport,
        s["ssrc"],
        s["local"].as_str().unwrap_or("?"),
        s["remote"].as_str().unwrap_or("?")
    );
    Ok(())
}

fn sessions(a: &SessionsArgs) -> Result<()> {
    let (base, token) = a.api.resolve()?;
    let path = if a.all {
        "/api/streams?all=true"
    } else {
        "/api/streams"
    };
    let list = api_get(&base, path, token.as_deref())?;
    if a.json {
        return print_json(&list);
    }
    println!(
        "{:<11} {:<22} {:<12} {:<12} {:>8} {:>6} {:>7} {:>8} {:>8}  REASON",
        "STREAM", "CHANNEL", "TRANSPORT", "STATE", "PACKETS", "LOST", "FRAMES", "K.PKTS", "K.LOST"
    );
    for s in list["streams"].as_array().into_iter().flatten() {
        let n = |v: &serde_json::Value| v.as_u64().map_or("-".to_string(), |x| x.to_string());
        println!(
            "{:<11} {:<22} {:<12} {:<12} {:>8} {:>6} {:>7} {:>8} {:>8}  {}",
            s["id"].as_str().unwrap_or("-"),
            s["channel"].as_str().unwrap_or("-"),
            s["transport"].as_str().unwrap_or("-"),
            s["state"].as_str().unwrap_or("-"),
            n(&s["media"]["packets"]),
            n(&s["media"]["lost"]),
            n(&s["media"]["frames"]),
            n(&s["kernel"]["packets"]),
            n(&s["kernel"]["lost"]),
            s["reason"].as_str().unwrap_or(""),
        );
    }
    Ok(())
}

fn hangup(a: &HangupArgs) -> Result<()> {
    let (base, token) = a.api.resolve()?;
    let s = api_call(
        "DELETE",
        &base,
        &format!("/api/streams/{}", a.id),
        token.as_deref(),
        None,
    )?;
    if a.json {
        return print_json(&s);
    }
    println!(
        "stream {} closed; {} frames received{}",
        a.id,
        s["media"]["frames"],
        s["media"]["files"][0]
            .as_str()
            .map(|f| format!(", recorded to {f}"))
            .unwrap_or_default()
    );
    Ok(())
}

fn devices(a: &DevicesArgs) -> Result<()> {
    let (base, token) = a.api.resolve()?;
    let token = token.as_deref();
    if let Some(id) = &a.id {
        let dev = api_get(&base, &format!("/api/devices/{id}"), token)?;
        let ch = api_get(&base, &format!("/api/devices/{id}/channels"), token)?;
        if a.json {
            return print_json(&serde_json::json!({ "device": dev, "channels": ch["channels"] }));
        }
        let s = |k: &str| match &dev[k] {
            serde_json::Value::Null => "-".to_string(),
            serde_json::Value::String(x) => x.clone(),
            v => v.to_string(),
        };
        for k in [
            "id",
            "online",
            "registered",
            "transport",
            "addr",
            "contact",
            "expires",
            "keepalive_interval",
            "idle_secs",
            "offline_reason",
            "user_agent",
            "gb_version",
            "registrations",
            "keepalives",
            "charset",
        ] {
            println!("{k:<20} {}", s(k));
        }
        let cat = &dev["catalog"];
        println!(
            "{:<20} {} ({} of {}, SN {})",
            "catalog", cat["state"], cat["received"], cat["sum_num"], cat["sn"]
        );
        println!("\n{:<22} {:<4} NAME", "CHANNEL", "ST");
        for c in ch["channels"].as_array().into_iter().flatten() {
            println!(
                "{:<22} {:<4} {}",
                c["device_id"].as_str().unwrap_or("-"),
                c["status"].as_str().unwrap_or("-"),
                c["name"].as_str().unwrap_or("-")
            );
        }
        return Ok(());
    }
    let list = api_get(&base, "/api/devices", token)?;
    if a.json {
        return print_json(&list);
    }
    println!(
        "{:<22} {:<7} {:<4} {:<24} {:>8} {:>9} {:>8}  REASON",
        "DEVICE", "STATE", "TR", "ADDRESS", "CHANNELS", "IDLE(s)", "EXPIRES"
    );
    for d in list["devices"].as_array().into_iter().flatten() {
        println!(
            "{:<22} {:<7} {:<4} {:<24} {:>8} {:>9.1} {:>8}  {}",
            d["id"].as_str().unwrap_or("-"),
            if d["online"].as_bool() == Some(true) {
                "online"
            } else {
                "offline"
            },
            d["transport"].as_str().unwrap_or("-"),
            d["addr"].as_str().unwrap_or("-"),
            d["channels"].as_u64().unwrap_or(0),
            d["idle_secs"].as_f64().unwrap_or(0.0),
            d["expires"].as_u64().unwrap_or(0),
            d["offline_reason"].as_str().unwrap_or(""),
        );
    }
    println!(
        "{} devices, {} online",
        list["count"].as_u64().unwrap_or(0),
        list["online"].as_u64().unwrap_or(0)
    );
    Ok(())
}

fn print_json<T: Serialize>(v: &T) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

#[derive(Serialize, Clone, Debug)]
pub struct FlowJson {
    pub flow: String,
    pub local: SocketAddr,
    pub ssrc: Option<u32>,
    pub expect_ssrc: Option<u32>,
    pub slot: u32,
    pub name: String,
    pub clock_rate: u32,
    pub created_unix: u64,
}

impl FlowJson {
    pub fn new(k: &gateway_common::FlowKey, v: &gateway_common::FlowValue) -> Self {
        FlowJson {
            flow: describe(k),
            local: dataplane::key_addr(k),
            ssrc: (k.by_ssrc != 0).then_some(k.ssrc),
            expect_ssrc: (v.flags & gateway_common::FLOW_EXPECT_SSRC != 0)
                .then_some(v.expected_ssrc),
            slot: v.slot,
            name: flow_name(v),
            clock_rate: if v.clock_rate == 0 {
                90_000
            } else {
                v.clock_rate
            },
            created_unix: v.created_unix,
        }
    }
}

/// A stream row for output: counters plus rates between two samples.
#[derive(Serialize, Clone, Debug)]
pub struct StreamJson {
    #[serde(flatten)]
    pub flow: FlowJson,
    pub current_ssrc: u32,
    pub packets: u64,
    pub bytes: u64,
    pub received: u64,
    pub expected: u64,
    pub lost: u64,
    pub out_of_order: u64,
    pub duplicates: u64,
    pub frames: u64,
    pub ssrc_mismatch: u64,
    pub not_rtp: u64,
    pub restarts: u64,
    pub highest_seq: u64,
    pub last_payload_type: u8,
    pub jitter_units: u32,
    pub jitter_ms: f64,
    /// Seconds since the last packet (null if none yet).
    pub idle_secs: Option<f64>,
    pub first_packet_ns: u64,
    pub last_packet_ns: u64,
    pub packets_per_sec: f64,
    pub bits_per_sec: f64,
}

pub fn monotonic_ns() -> u64 {
    // bpf_ktime_get_ns is CLOCK_MONOTONIC; std's Instant is too, but opaque.
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    sys::clock_monotonic(&mut ts);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
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

fn human(v: f64) -> String {
    match v {
        v if v >= 1e9 => format!("{:.1}G", v / 1e9),
        v if v >= 1e6 => format!("{:.1}M", v / 1e6),
        v if v >= 1e3 => format!("{:.1}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

fn print_table(rows: &[StreamJson]) {
    println!(
        "{:<30} {:<12} {:>10} {:>9} {:>7} {:>6} {:>6} {:>7} {:>5} {:>4} {:>8} {:>8} {:>8} {:>7}",
        "FLOW",
        "NAME",
        "SSRC",
        "PACKETS",
        "LOST",
        "OOO",
        "DUP",
        "FRAMES",
        "SSRC!",
        "PT",
        "JIT(ms)",
        "PKT/s",
        "BIT/s",
        "IDLE(s)"
    );
    for r in rows {
        println!(
            "{:<30} {:<12} {:>10} {:>9} {:>7} {:>6} {:>6} {:>7} {:>5} {:>4} {:>8.2} {:>8} {:>8} {:>7}",
            r.flow.flow,
            r.flow.name,
            r.current_ssrc,
            r.packets,
            r.lost,
            r.out_of_order,
            r.duplicates,
            r.frames,
            r.ssrc_mismatch,
            r.last_payload_type,
            r.jitter_ms,
            human(r.packets_per_sec),
            human(r.bits_per_sec),
            r.idle_secs.map(|s| format!("{s:.1}")).unwrap_or_else(|| "-".into()),
        );
    }
}

fn streams(t: &Target, a: &StreamsArgs) -> Result<()> {
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
}

#[derive(Serialize)]
struct EgressJson {
    destination: SocketAddr,
    packets: u64,
    bytes: u64,
}

fn status(t: &Target, json: bool) -> Result<()> {
    let mut maps = t.open()?;
    let cfg = maps.config()?;
    let s = Settings::from_config(&cfg);
    let counters = maps.counters()?;
    let flows = maps.flows()?.len();
    let egress = maps.egress()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_parsers() {
        assert_eq!(parse_range("30000-30999"), Ok((30000, 30999)));
        assert_eq!(parse_range("5004"), Ok((5004, 5004)));
        assert!(parse_range("2-1").is_err());
        assert!(parse_range("0-10").is_err());
        assert!(parse_range("a-b").is_err());
        assert_eq!(parse_dscp("af41"), Ok(Some(34)));
        assert_eq!(parse_dscp("off"), Ok(None));
        assert!(parse_dscp("64").is_err());
        assert_eq!(parse_ssrc("0x10"), Ok(16));
        assert_eq!(parse_ssrc("340200001"), Ok(340200001));
        assert!(parse_ssrc("4294967296").is_err());
        assert!(parse_ssrc("-1").is_err());
        assert!(parse_sockaddr("1.2.3.4").is_err());
        assert_eq!(parse_policy("drop"), Ok(true));
        assert!(parse_policy("maybe").is_err());
    }
}
