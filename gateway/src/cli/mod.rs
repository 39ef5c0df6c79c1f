//! Command-line interface (clap). Every command that prints data has `--json`.

pub mod check;
mod client;
mod dataplane;
mod output;

use std::{net::SocketAddr, path::PathBuf};

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};

pub use dataplane::stream_rows;
pub use output::{FlowJson, StreamJson};

use crate::{
    config::{parse_dscp, parse_range},
    daemon,
    dataplane::attach::{self, Mode, Settings, Target},
    sys,
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
    /// The kernel relay.
    #[command(subcommand)]
    Relay(RelayCmd),
    /// Per-stream counters with packet and bit rates.
    Streams(StreamsArgs),
    /// What is attached, in which mode, map fill and global counters.
    Status(IfaceJson),
    /// Run the daemon.
    Run(RunArgs),
    /// Devices registered with the running daemon (asks its REST API).
    Devices(DevicesArgs),
    /// Open a stream from a device (INVITE through the daemon): live, or a
    /// playback or download of what it recorded.
    Play(PlayArgs),
    /// Pause, resume, change the speed of or seek a playback (MANSRTSP
    /// INFO through the daemon).
    Playback(PlaybackArgs),
    /// Subscribe to a device's catalog changes, alarms or positions (or
    /// cancel, or list), through the daemon.
    Subscribe(SubscribeArgs),
    /// The presets a PTZ camera has (PresetQuery through the daemon).
    Presets(PresetsArgs),
    /// Live streams of the daemon (sessions and their media).
    Sessions(SessionsArgs),
    /// End a live stream (BYE).
    Hangup(HangupArgs),
    /// Control a device or channel: PTZ, focus/iris, presets, cruise,
    /// scan, auxiliary switches, guard, alarm reset, record, I-frame, drag
    /// zoom, home position, TeleBoot (DeviceControl through the daemon).
    Control(ControlArgs),
    /// What a device recorded on its own storage between two times
    /// (RecordInfo through the daemon).
    Records(RecordsArgs),
    /// Tell whether this machine's kernel can run the eBPF programs, and why not.
    Check(check::CheckArgs),
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
    /// live, playback or download (of what the device recorded).
    #[arg(long, default_value = "live")]
    pub mode: String,
    /// Playback/download: from (Unix seconds, e.g. $(date -d '08:00' +%s)).
    #[arg(long)]
    pub start: Option<u64>,
    /// Playback/download: to (Unix seconds).
    #[arg(long)]
    pub end: Option<u64>,
    /// Download: how many times real time (1-32).
    #[arg(long)]
    pub download_speed: Option<u32>,
    #[command(flatten)]
    pub api: ApiArgs,
    #[arg(long)]
    pub json: bool,
}

/// `gateway playback STREAM pause|resume|scale X|seek SECS`.
#[derive(Args, Debug)]
#[command(after_help = "ACTION:
  pause            pause (MANSRTSP PAUSE)
  resume           go on (PLAY, Range: npt=now-)
  scale X          speed: 0.25, 0.5, 1, 2, 4 or 8 (PLAY, Scale: X)
  seek SECS        jump to SECS from the start of the range (PLAY, Range: npt=SECS-)")]
pub struct PlaybackArgs {
    /// Stream ID (its y= value) of a playback.
    pub id: String,
    /// The action and its argument (see below).
    #[arg(required = true, num_args = 1..=2)]
    pub action: Vec<String>,
    #[command(flatten)]
    pub api: ApiArgs,
    #[arg(long)]
    pub json: bool,
}

/// `gateway presets DEVICE [--channel ID]`.
#[derive(Args, Debug)]
pub struct PresetsArgs {
    /// Device ID.
    pub device: String,
    /// Channel ID (default: the device itself).
    #[arg(long)]
    pub channel: Option<String>,
    #[command(flatten)]
    pub api: ApiArgs,
    #[arg(long)]
    pub json: bool,
}

/// `gateway subscribe DEVICE [EVENT] [--cancel]`.
#[derive(Args, Debug)]
pub struct SubscribeArgs {
    /// Device ID.
    pub device: String,
    /// catalog, alarm or mobile-position (none: list the subscriptions).
    pub event: Option<String>,
    /// Unsubscribe (Expires: 0) and stop subscribing to it.
    #[arg(long)]
    pub cancel: bool,
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
#[command(after_help = "COMMAND:
  ptz left|right|up|down|zoom-in|zoom-out...   move (several at once: ptz left up)
  stop                                          stop moving
  focus near|far|stop     iris open|close|stop
  preset set|call|delete N
  cruise add|delete GROUP PRESET   cruise speed|dwell GROUP VALUE   cruise start|stop GROUP
  scan start|stop|left|right GROUP   scan speed GROUP VALUE
  aux on|off SWITCH       guard set|reset      alarm-reset      record start|stop
  iframe                  drag-zoom in|out LENGTH WIDTH MIDX MIDY LENGTHX LENGTHY
  home-position off | home-position PRESET SECS
  teleboot                (reboots the device: needs --yes)")]
pub struct ControlArgs {
    /// Device ID.
    pub device: String,
    /// The command and its arguments (see below).
    #[arg(required = true, num_args = 1.., value_name = "COMMAND")]
    pub command: Vec<String>,
    /// Channel ID (default: the device itself).
    #[arg(long, value_name = "ID")]
    pub channel: Option<String>,
    /// Pan/tilt, focus or iris speed (0-255).
    #[arg(long, default_value_t = 128)]
    pub speed: u8,
    /// Zoom speed (0-15).
    #[arg(long, default_value_t = 8)]
    pub zoom_speed: u8,
    /// Confirm a TeleBoot.
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub api: ApiArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RecordsArgs {
    /// Device ID.
    pub device: String,
    /// Channel ID (default: the device itself).
    #[arg(long, value_name = "ID")]
    pub channel: Option<String>,
    /// From (YYYY-MM-DDTHH:MM:SS, the device's local time).
    #[arg(long, value_name = "TIME")]
    pub start: String,
    /// To (YYYY-MM-DDTHH:MM:SS).
    #[arg(long, value_name = "TIME")]
    pub end: String,
    /// all, time, alarm or manual.
    #[arg(long = "type", default_value = "all", value_name = "TYPE")]
    pub record_type: String,
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
    /// Another interface the kernel relay may send through (XDP redirect;
    /// it must accept XDP frames). Repeatable.
    #[arg(long, value_name = "IF")]
    pub relay_to: Vec<String>,
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
    /// The SIP flood guard the daemon configured: off, on, or new limits
    /// RATE/BURST/GLOBAL (packets per second per unknown source, its
    /// burst, per second of all unknown sources).
    #[arg(long, value_name = "off|on|RATE/BURST/GLOBAL")]
    pub sip_guard: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum RelayCmd {
    /// The streams the kernel relays: mode, confirmed source, and per
    /// output the destination, rewrite and the kernel's counters.
    List(IfaceJson),
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
        Command::Attach(a) => dataplane::attach(&target(&a.iface)?, a)?,
        Command::Detach(a) => dataplane::detach(&target(&a.iface)?)?,
        Command::Set(a) => dataplane::set(&target(&a.iface)?, a)?,
        Command::Flow(FlowCmd::Add(a)) => dataplane::flow_add(&target(&a.key.iface)?, a)?,
        Command::Flow(FlowCmd::Del(a)) => dataplane::flow_del(&target(&a.iface)?, a)?,
        Command::Flow(FlowCmd::List(a)) => dataplane::flow_list(&target(&a.iface)?, a)?,
        Command::Relay(RelayCmd::List(a)) => dataplane::relay_list(&target(&a.iface)?, a)?,
        Command::Streams(a) => dataplane::streams(&target(&a.iface)?, a)?,
        Command::Status(a) => dataplane::status(&target(&a.iface)?, a.json)?,
        Command::Run(a) => daemon::run(&a.config, cli.netns.as_deref(), &cli.bpffs)?,
        Command::Devices(a) => client::devices(a)?,
        Command::Play(a) => client::play(a)?,
        Command::Sessions(a) => client::sessions(a)?,
        Command::Hangup(a) => client::hangup(a)?,
        Command::Playback(a) => client::playback(a)?,
        Command::Subscribe(a) => client::subscribe(a)?,
        Command::Presets(a) => client::presets(a)?,
        Command::Control(a) => client::control(a)?,
        Command::Records(a) => client::records(a)?,
        Command::Check(a) => check::run(a, cli.netns.as_deref(), &cli.bpffs)?,
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
