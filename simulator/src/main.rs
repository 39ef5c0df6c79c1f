//! gb-sim: a GB/T 28181 device simulator. It plays cameras / NVRs towards
//! a platform (the gateway): registers with digest authentication, sends
//! keepalives, answers Catalog / DeviceInfo / DeviceStatus queries, accepts
//! INVITEs and streams an H.264 / H.265 file as PS over RTP (UDP or RFC 4571
//! TCP, either side connecting), with deterministic packet impairments and
//! a JSON report of exactly what went on the wire.

mod au;
mod crypt;
mod device;
mod status;
mod stream;
mod subscribe;

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use gb28181::{manscdp::Charset, sip::Transport};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::{
    au::Media,
    device::{Config, Device},
    status::{DeviceReport, Report, Shared},
    stream::{Impairments, MediaOpts, Rate},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SipTransport {
    Udp,
    Tcp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CharsetArg {
    Gb2312,
    Gb18030,
    #[value(name = "utf-8", alias = "utf8")]
    Utf8,
}

/// GB/T 28181 device simulator: cameras / NVRs that register with a
/// platform, answer its queries and stream a file as PS over RTP.
#[derive(Debug, Parser)]
#[command(name = "gb-sim", version, max_term_width = 100)]
struct Cli {
    /// Platform SIP address (host:port).
    #[arg(long, value_name = "ADDR")]
    server: String,
    /// Platform ID (20 digits).
    #[arg(long, default_value = "34020000002000000001", value_name = "ID")]
    platform_id: String,
    /// SIP domain and digest realm [default: the first 10 digits of --platform-id].
    #[arg(long)]
    domain: Option<String>,
    /// ID of the first device (20 digits).
    #[arg(long, value_name = "ID")]
    device_id: String,
    /// Number of devices; IDs are consecutive from --device-id.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    devices: u32,
    /// Channels per device: the device ID with type code 131 and serial 1..N.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=999_999))]
    channels: u32,
    /// Local IP of the devices' SIP and media sockets (ports are chosen by the system).
    #[arg(long, default_value = "127.0.0.1", value_name = "IP")]
    bind: IpAddr,
    /// SIP transport (one socket or connection per device).
    #[arg(long, value_enum, default_value_t = SipTransport::Udp, value_name = "PROTO")]
    sip_transport: SipTransport,
    /// Digest password.
    #[arg(long, default_value = "")]
    password: String,
    /// Registration expiry requested, seconds (re-registers at 80 % of what is granted).
    #[arg(long, default_value_t = 3600, value_name = "SECS", value_parser = clap::value_parser!(u32).range(1..))]
    expires: u32,
    /// Keepalive interval, seconds.
    #[arg(long, default_value_t = 60, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    keepalive_secs: u64,
    /// Answer challenges without qop even when qop=auth is offered (as old devices do).
    #[arg(long)]
    no_qop_support: bool,
    /// Exit (status 2) when the platform refuses the credentials (403, or 401 again).
    /// Otherwise registration is retried every 5 s.
    #[arg(long)]
    exit_on_auth_failure: bool,
    /// Most catalog items per MESSAGE (a larger catalog is split, same SN).
    #[arg(long, default_value_t = 20, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    catalog_per_message: u32,
    /// Character set of the MANSCDP bodies sent.
    #[arg(long, value_enum, default_value_t = CharsetArg::Gb2312)]
    charset: CharsetArg,
    /// Accept DeviceControl MESSAGEs (200) but never send the
    /// DeviceControl Response that guard, alarm reset, record and home
    /// position commands expect (a device that ignores them).
    #[arg(long)]
    ignore_controls: bool,
    /// Recordings per channel in the device's record index (RecordInfo):
    /// today, one every 10 minutes from 00:00, each as long as the media
    /// file (60 s without one).
    #[arg(long, default_value_t = 0, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=144))]
    records: u32,
    /// Leave the last part out of split RecordInfo answers (an NVR whose
    /// answer stops early).
    #[arg(long)]
    records_drop_last_part: bool,
    /// Raise an alarm (Notify Alarm: priority 1, video alarm, motion) this
    /// many seconds after registering.
    #[arg(long, value_name = "SECS")]
    alarm_after: Option<u64>,
    /// Never answer MANSRTSP INFOs (pause, scale, seek): a device that
    /// ignores playback controls.
    #[arg(long)]
    ignore_mansrtsp: bool,
    /// Playbacks and downloads never end: the file loops and its end is
    /// never announced (no MediaStatus 121).
    #[arg(long)]
    playback_never_ends: bool,
    /// Refuse SUBSCRIBEs (Catalog, Alarm, MobilePosition) with 489 Bad
    /// Event: a device without subscriptions.
    #[arg(long)]
    refuse_subscribe: bool,
    /// Grant subscriptions at most this many seconds.
    #[arg(long, default_value_t = 3600, value_name = "SECS")]
    subscribe_max_expires: u32,
    /// Report a catalog change (the first channel goes OFF) this many
    /// seconds after registering: NOTIFY in a Catalog subscription, else
    /// MESSAGE.
    #[arg(long, value_name = "SECS")]
    catalog_change_after: Option<u64>,
    /// The device's clock is this many seconds off the machine's (its
    /// DeviceTime, AlarmTime and positions' Time).
    #[arg(
        long,
        default_value_t = 0,
        value_name = "SECS",
        allow_hyphen_values = true
    )]
    clock_offset: i64,

    /// Annex-B H.264 or H.265 elementary stream to send (without it,
    /// sessions are answered but carry no packets).
    #[arg(long, value_name = "FILE", help_heading = "Media")]
    media: Option<PathBuf>,
    /// Frame rate: pacing (--rate realtime) and the 90 kHz timestamp step (90000/fps).
    #[arg(long, default_value_t = 25, help_heading = "Media", value_parser = clap::value_parser!(u32).range(1..=1000))]
    fps: u32,
    /// Largest RTP payload (the PS stream is cut at this size).
    #[arg(long, default_value_t = 1388, value_name = "BYTES", help_heading = "Media", value_parser = clap::value_parser!(u32).range(16..=65_000))]
    payload_size: u32,
    /// realtime: pace frames by --fps; flat: as fast as possible (yielding every 64 packets).
    #[arg(long, value_enum, default_value_t = Rate::Realtime, help_heading = "Media")]
    rate: Rate,
    /// Repeat the file until the stream ends (else send it once and keep the session open).
    #[arg(long = "loop", help_heading = "Media")]
    looping: bool,
    /// Refuse every INVITE with this status (e.g. 486; 2xx: accept as usual).
    #[arg(long, value_name = "CODE", help_heading = "Media", value_parser = clap::value_parser!(u16).range(200..=699))]
    invite_response: Option<u16>,
    /// End each stream from the device side with BYE after this many seconds.
    #[arg(long, value_name = "SECS", help_heading = "Media")]
    bye_after: Option<f64>,
    /// Answer y= with this SSRC and send under it instead of the offer's.
    #[arg(long, value_name = "N", help_heading = "Media")]
    wrong_ssrc: Option<u32>,
    /// Never set the RTP marker bit.
    #[arg(long, help_heading = "Media")]
    wrong_markers: bool,

    /// Drop every Nth packet (indexes N-1, 2N-1, ...).
    #[arg(long, value_name = "N", help_heading = "Impairments (deterministic, by 0-based packet index in the stream)", value_parser = clap::value_parser!(u64).range(1..))]
    drop_every: Option<u64>,
    /// Drop these packets (comma-separated indexes, e.g. 100,101,102).
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        help_heading = "Impairments (deterministic, by 0-based packet index in the stream)"
    )]
    drop_packets: Vec<u64>,
    /// Swap packets i and i+1 for i = N-1, 2N-1, ...
    #[arg(long, value_name = "N", help_heading = "Impairments (deterministic, by 0-based packet index in the stream)", value_parser = clap::value_parser!(u64).range(1..))]
    reorder_every: Option<u64>,
    /// Send packets N-1, 2N-1, ... twice.
    #[arg(long, value_name = "N", help_heading = "Impairments (deterministic, by 0-based packet index in the stream)", value_parser = clap::value_parser!(u64).range(1..))]
    duplicate_every: Option<u64>,

    /// Encrypt the media with this profile (docs/media-encryption.md).
    #[arg(long, value_enum, value_name = "PROFILE", help_heading = "Encryption")]
    encrypt: Option<crypt::Profile>,
    /// A key, in the order of use: VERSION:KEYHEX (sm4-nal-ofb),
    /// VERSION:KEYHEX:SALTHEX or VERSION:inline:BASE64 (srtp-sm4). Without
    /// one, srtp-sm4 uses the key offered in the INVITE.
    #[arg(long = "key", value_name = "KEY", help_heading = "Encryption")]
    keys: Vec<String>,
    /// Move to the next --key every N frames (the last one stays).
    #[arg(long, value_name = "N", help_heading = "Encryption", value_parser = clap::value_parser!(u64).range(1..))]
    rotate_every: Option<u64>,
    /// Encrypt with other key bytes under the same versions (a
    /// misprovisioned device).
    #[arg(long, help_heading = "Encryption")]
    wrong_key: bool,
    /// srtp-sm4: put our key in the SDP answer (a=crypto) even when the
    /// offer had none.
    #[arg(long, help_heading = "Encryption")]
    answer_crypto: bool,

    /// Stop (unregister and exit) after this many seconds.
    #[arg(long, value_name = "SECS", help_heading = "Run")]
    duration: Option<f64>,
    /// Write a JSON report here every second and at exit.
    #[arg(long, value_name = "PATH", help_heading = "Run")]
    status_file: Option<PathBuf>,
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// The `i`-th device ID after `first` (same width, decimal addition).
fn device_id(first: &str, i: u32) -> Result<String> {
    let n: u128 = first.parse().context("device ID is not decimal")?;
    let s = format!("{:0width$}", n + i as u128, width = first.len());
    if s.len() != first.len() {
        bail!("device ID {first} + {i} overflows {} digits", first.len());
    }
    Ok(s)
}

/// Channel `n` (1-based) of a device: digits 11-13 become 131 (camera),
/// digits 15-20 the channel number.
fn channel_id(device: &str, n: u32) -> String {
    format!("{}131{}{:06}", &device[..10], &device[13..14], n)
}

fn secs(v: Option<f64>, what: &str) -> Result<Option<Duration>> {
    v.map(|s| {
        Duration::try_from_secs_f64(s)
            .map_err(|_| anyhow::anyhow!("--{what} must be a non-negative number of seconds"))
    })
    .transpose()
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gb-sim: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    if cli.bind.is_unspecified() {
        bail!("--bind must be a concrete local IP (it goes into Via, Contact and the SDP)");
    }
    if !is_digits(&cli.device_id) || cli.device_id.len() != 20 {
        bail!("--device-id must be 20 digits, not {:?}", cli.device_id);
    }
    if cli.platform_id.len() < 10 && cli.domain.is_none() {
        bail!("--platform-id is shorter than 10 characters: give --domain");
    }
    if cli.platform_id.len() != 20 || !is_digits(&cli.platform_id) {
        warn!(platform_id = %cli.platform_id, "--platform-id is not 20 digits");
    }
    let server: SocketAddr = tokio::net::lookup_host(&cli.server)
        .await
        .with_context(|| format!("--server {}", cli.server))?
        .find(|a| a.is_ipv4() == cli.bind.is_ipv4())
        .with_context(|| format!("--server {}: no address of the --bind family", cli.server))?;
    let domain = cli
        .domain
        .clone()
        .unwrap_or_else(|| cli.platform_id.chars().take(10).collect());
    let media = match &cli.media {
        Some(p) => {
            let m = Media::load(p).with_context(|| format!("--media {}", p.display()))?;
            info!(
                file = %p.display(),
                codec = m.codec_name(),
                frames = m.aus.len(),
                keyframes = m.keyframes,
                split = if m.aud { "AUD" } else { "first slice" },
                "media loaded"
            );
            Some(Arc::new(m))
        }
        None => {
            warn!("no --media: sessions are answered but carry no packets");
            None
        }
    };
    let bye_after = secs(cli.bye_after, "bye-after")?;
    let duration = secs(cli.duration, "duration")?;
    let impairments = Impairments {
        drop_every: cli.drop_every,
        drop_packets: cli.drop_packets.iter().copied().collect(),
        reorder_every: cli.reorder_every,
        duplicate_every: cli.duplicate_every,
    };
    if !impairments.is_empty() {
        info!(?impairments, "impairments on every stream");
    }
    let encryption = match cli.encrypt {
        None => {
            if !cli.keys.is_empty() || cli.rotate_every.is_some() || cli.wrong_key {
                bail!("--key, --rotate-every and --wrong-key need --encrypt");
            }
            None
        }
        Some(profile) => {
            let keys = cli
                .keys
                .iter()
                .map(|k| crypt::parse_key(profile, k))
                .collect::<Result<Vec<_>>>()?;
            if profile == crypt::Profile::NalOfb {
                if keys.is_empty() {
                    bail!("--encrypt sm4-nal-ofb needs --key VERSION:KEYHEX");
                }
                if media
                    .as_ref()
                    .is_some_and(|m| !matches!(m.codec, media::Codec::H264 | media::Codec::H265))
                {
                    bail!("--encrypt sm4-nal-ofb needs H.264 or H.265 media");
                }
            }
            info!(profile = ?profile, keys = keys.len(), rotate_every = ?cli.rotate_every, wrong_key = cli.wrong_key, "media encryption");
            Some(crypt::Encryption {
                profile,
                keys,
                rotate_every: cli.rotate_every,
                wrong_key: cli.wrong_key,
            })
        }
    };
    let media_opts = Arc::new(MediaOpts {
        encryption,
        answer_crypto: cli.answer_crypto,
        media: media.clone(),
        fps: cli.fps,
        payload_size: cli.payload_size as usize,
        rate: cli.rate,
        looping: cli.looping,
        wrong_markers: cli.wrong_markers,
        impairments,
        bye_after,
        history_never_ends: cli.playback_never_ends,
    });
    let cfg = Arc::new(Config {
        server,
        platform_id: cli.platform_id.clone(),
        domain,
        bind: cli.bind,
        transport: match cli.sip_transport {
            SipTransport::Udp => Transport::Udp,
            SipTransport::Tcp => Transport::Tcp,
        },
        password: cli.password.clone(),
        expires: cli.expires,
        keepalive: Duration::from_secs(cli.keepalive_secs),
        ignore_controls: cli.ignore_controls,
        records: cli.records,
        records_drop_last_part: cli.records_drop_last_part,
        alarm_after: cli.alarm_after.map(Duration::from_secs),
        ignore_mansrtsp: cli.ignore_mansrtsp,
        refuse_subscribe: cli.refuse_subscribe,
        subscribe_max_expires: cli.subscribe_max_expires,
        catalog_change_after: cli.catalog_change_after.map(Duration::from_secs),
        clock_offset_secs: cli.clock_offset,
        no_qop: cli.no_qop_support,
        exit_on_auth_failure: cli.exit_on_auth_failure,
        catalog_per_message: cli.catalog_per_message as usize,
        charset: match cli.charset {
            CharsetArg::Gb2312 => Charset::Gb2312,
            CharsetArg::Gb18030 => Charset::Gb18030,
            CharsetArg::Utf8 => Charset::Utf8,
        },
        invite_response: cli.invite_response,
        wrong_ssrc: cli.wrong_ssrc,
        media: media_opts,
    });

    let mut devices = Vec::new();
    for i in 0..cli.devices {
        let id = device_id(&cli.device_id, i)?;
        let channels: Vec<String> = (1..=cli.channels).map(|n| channel_id(&id, n)).collect();
        devices.push((id, channels));
    }
    let shared = Arc::new(Shared::new(Report {
        server: server.to_string(),
        platform_id: cli.platform_id.clone(),
        media: cli.media.as_ref().map(|p| p.display().to_string()),
        codec: media.as_ref().map(|m| m.codec_name().to_string()),
        file_frames: media.as_ref().map_or(0, |m| m.aus.len()),
        started: status::now_ms(),
        devices_total: devices.len(),
        devices: devices
            .iter()
            .map(|(id, ch)| DeviceReport {
                id: id.clone(),
                sip_transport: format!("{:?}", cli.sip_transport).to_lowercase(),
                channels: ch.clone(),
                ..DeviceReport::default()
            })
            .collect(),
        ..Report::default()
    }));
    info!(
        server = %server,
        devices = devices.len(),
        channels = cli.channels,
        transport = ?cli.sip_transport,
        first = %devices[0].0,
        "starting"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let (fatal_tx, mut fatal_rx) = mpsc::channel::<String>(4);
    // Every device holds a clone; recv() yields None once all have ended.
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let mut tasks = Vec::new();
    for (i, (id, channels)) in devices.into_iter().enumerate() {
        let d = Device::new(
            cfg.clone(),
            i,
            id,
            channels,
            shared.clone(),
            fatal_tx.clone(),
        );
        let (stop, alive) = (stop_rx.clone(), alive_tx.clone());
        tasks.push(tokio::spawn(async move {
            d.run(stop).await;
            drop(alive);
        }));
    }
    drop((fatal_tx, alive_tx));

    let writer = cli.status_file.clone().map(|path| {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut warned = false;
            loop {
                tick.tick().await;
                if let Err(e) = status::write(&path, &shared.snapshot(false)) {
                    if !warned {
                        warn!(path = %path.display(), error = %e, "cannot write the status file");
                        warned = true;
                    }
                }
            }
        })
    });

    let mut code = ExitCode::SUCCESS;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    let until = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT: stopping"),
        _ = term.recv() => info!("SIGTERM: stopping"),
        _ = until => info!("--duration elapsed: stopping"),
        Some(why) = fatal_rx.recv() => {
            error!("{why}; exiting (--exit-on-auth-failure)");
            code = ExitCode::from(2);
        }
        None = alive_rx.recv() => {
            error!("every device has stopped");
            code = ExitCode::from(1);
        }
    }
    let _ = stop_tx.send(true);
    for t in tasks {
        if tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .is_err()
        {
            warn!("a device did not stop in time");
        }
    }
    if let Some(w) = writer {
        w.abort();
    }
    let report = shared.snapshot(true);
    if let Some(path) = &cli.status_file {
        if let Err(e) = status::write(path, &report) {
            warn!(path = %path.display(), error = %e, "cannot write the status file");
        }
    }
    let ever = report.devices_ever_registered;
    let t = &report.totals;
    println!(
        "gb-sim: devices {}/{} registered, streams {}, frames_sent {}, packets_sent {}, packets_dropped {}, bytes_sent {}",
        ever, report.devices_total, t.streams, t.frames_sent, t.packets_sent, t.packets_dropped, t.bytes_sent
    );
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert_eq!(
            device_id("34020000001320000001", 0).unwrap(),
            "34020000001320000001"
        );
        assert_eq!(
            device_id("34020000001320000009", 3).unwrap(),
            "34020000001320000012"
        );
        assert!(device_id("99999999999999999999", 1).is_err());
        assert_eq!(
            channel_id("34020000001320000001", 1),
            "34020000001310000001"
        );
        assert_eq!(
            channel_id("34020000001185000042", 17),
            "34020000001315000017"
        );
    }

    #[test]
    fn cli_parses() {
        let c = Cli::try_parse_from([
            "gb-sim",
            "--server",
            "127.0.0.1:5060",
            "--device-id",
            "34020000001320000001",
            "--drop-packets",
            "100,101,102",
        ])
        .unwrap();
        assert_eq!(c.drop_packets, vec![100, 101, 102]);
        assert_eq!(
            (c.devices, c.channels, c.fps, c.payload_size),
            (1, 1, 25, 1388)
        );
        assert_eq!(c.rate, Rate::Realtime);
        assert!(Cli::try_parse_from([
            "gb-sim",
            "--server",
            "x",
            "--device-id",
            "1",
            "--drop-every",
            "0"
        ])
        .is_err());
    }
}
