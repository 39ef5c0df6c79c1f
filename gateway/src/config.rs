//! Daemon configuration file (TOML).

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use gb28181::manscdp::Charset;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The kernel data plane (XDP/TC on a NIC). Optional: without it the
    /// daemon serves signalling only.
    pub dataplane: Option<DataplaneConfig>,
    #[serde(default)]
    pub flows: Vec<FlowConfig>,
    /// GB/T 28181 signalling (SIP registrar for devices).
    pub sip: Option<SipConfig>,
    /// Media sessions (INVITE): ports and the advertised address.
    #[serde(default)]
    pub media: MediaConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub store: StoreConfig,
    /// Media keys (`[[keys]]`): SM4 keys per device and channel, see
    /// docs/media-encryption.md.
    #[serde(default)]
    pub keys: Vec<KeySpec>,
    /// Devices' key-encryption keys (`[[vkeks]]`), for wrapped keys.
    #[serde(default)]
    pub vkeks: Vec<VkekSpec>,
    /// Superior platforms this gateway registers with as a lower-level
    /// platform (`[[cascade]]`, docs/cascade.md). Needs `[sip]`.
    #[serde(default)]
    pub cascade: Vec<CascadeConfig>,
}

/// `[[cascade]]`: one superior platform (wvp, a provincial platform, a
/// second gateway) the gateway registers with and shares channels to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CascadeConfig {
    /// The superior's platform ID (20 digits).
    pub id: String,
    /// Its SIP domain and digest realm; default: the first 10 digits of `id`.
    pub domain: Option<String>,
    /// Where its SIP server listens.
    pub address: SocketAddr,
    /// "udp" (the only one for now).
    #[serde(default = "default_cascade_transport")]
    pub transport: String,
    /// Our ID as the superior knows us; default: `[sip] id`.
    pub local_id: Option<String>,
    /// Digest username, when the superior wants one apart from our ID.
    pub username: Option<String>,
    pub password: Option<String>,
    /// A name for logs, the API and metrics; default: `id`.
    pub name: Option<String>,
    /// Registration expiry asked for; re-registered at 2/3 of what is granted.
    #[serde(default = "default_cascade_expires")]
    pub expires_secs: u32,
    #[serde(default = "default_keepalive_interval")]
    pub keepalive_interval_secs: u32,
    /// Keepalives unanswered in a row before the superior counts as lost
    /// (then every relay to it stops and registration starts again).
    #[serde(default = "default_keepalive_count")]
    pub keepalive_timeout_count: u32,
    /// First retry after a refused or unanswered REGISTER; doubles up to
    /// 600 s.
    #[serde(default = "default_cascade_retry")]
    pub retry_secs: u32,
    /// A fresh Call-ID for every registration attempt (some superiors
    /// refuse a re-used one after a failure).
    #[serde(default)]
    pub new_call_id: bool,
    /// Catalog items per MESSAGE when answering the superior's Catalog
    /// query; each part is sent after the previous one's 200 OK.
    #[serde(default = "default_catalog_chunk")]
    pub catalog_chunk: usize,
    /// Which channels the superior sees: "all", or the listed devices'
    /// channels and the listed channels.
    #[serde(default)]
    pub share: Share,
    /// Pass the superior's TeleBoot (remote reboot) to devices; refused
    /// (403) otherwise.
    #[serde(default)]
    pub allow_teleboot: bool,
    /// Business groups (type 215) and virtual organisations (216) the
    /// superior sees above the channels (`[[cascade.groups]]`).
    #[serde(default)]
    pub groups: Vec<CatalogGroup>,
    /// Tell the superior when a shared device goes online (ON), offline
    /// (OFF) or registers for the first time (ADD): a Catalog `<Notify>`
    /// MESSAGE with each channel of the device and its `<Event>`.
    #[serde(default = "yes")]
    pub catalog_notify: bool,
}

/// A business group (ID type code 215) or virtual organisation (216) in
/// the catalog a superior sees; the listed devices' and channels' items
/// hang below it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CatalogGroup {
    /// 20 digits, type code (digits 11-13) 215 or 216.
    pub id: String,
    pub name: String,
    /// A virtual organisation's parent: another organisation or its
    /// business group (default: the business group listed, else the
    /// gateway).
    pub parent: Option<String>,
    #[serde(default)]
    pub devices: Vec<String>,
    #[serde(default)]
    pub channels: Vec<String>,
}

impl CatalogGroup {
    /// "215" or "216".
    pub fn kind(&self) -> &str {
        self.id.get(10..13).unwrap_or("")
    }
}

/// What a superior is shown.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Share {
    /// Every channel of every device (default when nothing is listed).
    #[serde(default)]
    pub all: bool,
    /// Every channel of these devices.
    #[serde(default)]
    pub devices: Vec<String>,
    /// These channels (channel IDs).
    #[serde(default)]
    pub channels: Vec<String>,
}

impl Share {
    /// Whether a device's channel is shared.
    pub fn shares(&self, device: &str, channel: &str) -> bool {
        let none_listed = self.devices.is_empty() && self.channels.is_empty();
        self.all
            || none_listed
            || self.devices.iter().any(|d| d == device)
            || self.channels.iter().any(|c| c == channel)
    }
}

fn default_cascade_transport() -> String {
    "udp".into()
}
fn default_cascade_expires() -> u32 {
    3600
}
fn default_cascade_retry() -> u32 {
    30
}
fn default_catalog_chunk() -> usize {
    10
}

impl CascadeConfig {
    pub fn domain(&self) -> String {
        self.domain
            .clone()
            .unwrap_or_else(|| self.id.chars().take(10).collect())
    }

    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.id)
    }

    pub fn validate(&self) -> Result<()> {
        let digits = |s: &str| s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit());
        anyhow::ensure!(
            digits(&self.id),
            "cascade.id must be 20 digits, not {:?}",
            self.id
        );
        if let Some(l) = &self.local_id {
            anyhow::ensure!(digits(l), "cascade.local_id must be 20 digits, not {l:?}");
        }
        anyhow::ensure!(
            self.transport == "udp",
            "cascade {}: transport must be \"udp\" (TCP upward is not supported yet)",
            self.id
        );
        anyhow::ensure!(
            self.expires_secs >= 60,
            "cascade {}: expires_secs must be at least 60",
            self.id
        );
        anyhow::ensure!(
            self.keepalive_interval_secs > 0 && self.keepalive_timeout_count > 0,
            "cascade {}: keepalive_interval_secs and keepalive_timeout_count must be positive",
            self.id
        );
        anyhow::ensure!(
            (1..=3600).contains(&self.retry_secs),
            "cascade {}: retry_secs must be in 1..=3600",
            self.id
        );
        anyhow::ensure!(
            (1..=100).contains(&self.catalog_chunk),
            "cascade {}: catalog_chunk must be in 1..=100",
            self.id
        );
        for g in &self.groups {
            anyhow::ensure!(
                digits(&g.id) && matches!(g.kind(), "215" | "216"),
                "cascade {}: group {:?} must be 20 digits with type code 215 (business group) or 216 (virtual organisation)",
                self.id,
                g.id
            );
            if let Some(p) = &g.parent {
                anyhow::ensure!(
                    self.groups.iter().any(|x| &x.id == p),
                    "cascade {}: group {}'s parent {p} is not one of its groups",
                    self.id,
                    g.id
                );
            }
        }
        Ok(())
    }
}

/// `[sip]`: the gateway as the platform devices register with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SipConfig {
    /// Platform ID, 20 digits (type code 200).
    pub id: String,
    /// SIP domain and digest realm; default: the first 10 digits of `id`.
    pub domain: Option<String>,
    /// Addresses to listen on, UDP and TCP each (IPv4 and/or IPv6).
    #[serde(default = "default_sip_listen")]
    pub listen: Vec<SocketAddr>,
    #[serde(default = "yes")]
    pub udp: bool,
    #[serde(default = "yes")]
    pub tcp: bool,
    /// IP put in Via/Contact of requests we send (NAT); default: the
    /// address the device reached.
    pub advertise_ip: Option<IpAddr>,
    /// Password of devices without their own (None: they are refused).
    pub password: Option<String>,
    /// Offer qop=auth in challenges (devices without qop still pass).
    #[serde(default = "yes")]
    pub qop: bool,
    #[serde(default = "default_nonce_ttl")]
    pub nonce_ttl_secs: u64,
    #[serde(default = "default_min_expires")]
    pub min_expires: u32,
    #[serde(default = "default_max_expires")]
    pub max_expires: u32,
    #[serde(default = "default_keepalive_interval")]
    pub keepalive_interval_secs: u32,
    #[serde(default = "default_keepalive_count")]
    pub keepalive_timeout_count: u32,
    /// Idle seconds after which a multi-message catalog is kept as partial.
    #[serde(default = "default_catalog_timeout")]
    pub catalog_timeout_secs: u64,
    /// Seconds to wait for a DeviceInfo/DeviceStatus answer.
    #[serde(default = "default_query_timeout")]
    pub query_timeout_secs: u64,
    /// Ask for DeviceInfo after each catalog sync.
    #[serde(default = "yes")]
    pub query_info: bool,
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
    #[serde(default = "default_tcp_idle")]
    pub tcp_idle_timeout_secs: u64,
    #[serde(default = "default_max_tcp")]
    pub max_tcp_connections: usize,
    /// Charset of the MANSCDP bodies we send until a device shows its own.
    #[serde(default = "default_charset")]
    pub charset: String,
    /// Seconds between writes of liveness changes to the store.
    #[serde(default = "default_persist_interval")]
    pub persist_interval_secs: u64,
    /// Per-device settings.
    #[serde(default)]
    pub devices: Vec<DeviceConfig>,
    /// Subscriptions to every device (`[sip.subscribe]`).
    #[serde(default)]
    pub subscribe: SubscribeConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    pub id: String,
    pub password: Option<String>,
    pub keepalive_interval_secs: Option<u32>,
}

/// `[sip.subscribe]`: what the gateway subscribes to at each device when
/// it comes online (the API adds or removes per device), and how.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscribeConfig {
    /// Catalog changes (NOTIFY Catalog with each item's Event).
    #[serde(default)]
    pub catalog: bool,
    /// Alarms (NOTIFY Alarm).
    #[serde(default)]
    pub alarm: bool,
    /// Positions of mobile devices (NOTIFY MobilePosition).
    #[serde(default)]
    pub mobile_position: bool,
    /// Expires asked for; refreshed at 80 % of what the device grants.
    #[serde(default = "default_subscribe_expires")]
    pub expires_secs: u32,
    /// `<Interval>` of MobilePosition subscriptions.
    #[serde(default = "default_position_interval")]
    pub mobile_position_interval_secs: u32,
    /// After a refusal, a timeout or the device's end of a subscription,
    /// try again this much later.
    #[serde(default = "default_subscribe_retry")]
    pub retry_secs: u64,
}

impl Default for SubscribeConfig {
    fn default() -> Self {
        SubscribeConfig {
            catalog: false,
            alarm: false,
            mobile_position: false,
            expires_secs: default_subscribe_expires(),
            mobile_position_interval_secs: default_position_interval(),
            retry_secs: default_subscribe_retry(),
        }
    }
}

fn default_subscribe_expires() -> u32 {
    3600
}

fn default_position_interval() -> u32 {
    5
}

fn default_subscribe_retry() -> u64 {
    60
}

/// `[media]`: where devices send the media of the sessions we open.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaConfig {
    /// IP put in the SDP offer (NAT); default: the address the device
    /// reached us on (or the route's source address).
    pub ip: Option<IpAddr>,
    /// Port range for media ("LO-HI"); even ports are used. Keep it inside
    /// `[dataplane] media_ports`.
    #[serde(default = "default_media_ports")]
    pub ports: String,
    /// Seconds to wait for the device's 200 OK (then CANCEL / give up).
    #[serde(default = "default_open_timeout")]
    pub open_timeout_secs: u64,
    /// Record sessions (`[media.record]`); unset: no recording unless a
    /// stream asks (then into the default directory).
    pub record: Option<RecordConfig>,
    /// An established session without a packet for this long is ended
    /// with BYE (last-packet time from the kernel when the data plane is
    /// attached, else from the receiver). 0 = never.
    #[serde(default = "default_no_media")]
    pub no_media_timeout_secs: u64,
    /// A playback still going this many seconds after the end of its
    /// range (by the speed and pauses asked for) without MediaStatus 121
    /// is ended with BYE. 0 = never.
    #[serde(default = "default_playback_grace")]
    pub playback_end_grace_secs: u64,
    /// Receivers without SIP (`[[media.streams]]`): RTP sent by anything
    /// (an encoder, ffmpeg) to a fixed port.
    #[serde(default)]
    pub streams: Vec<StaticStream>,
}

/// A fixed receiver, shown in `/api/streams` like a session.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticStream {
    /// Stream ID in the API (letters and digits).
    pub name: String,
    /// UDP address to receive on.
    pub listen: SocketAddr,
    /// "ps" (default), "h264" (RFC 6184) or "h265" (RFC 7798).
    #[serde(default = "default_payload")]
    pub payload: String,
    /// Record it (default: when [media.record] is configured).
    pub record: Option<bool>,
    /// Device and channel whose `[[keys]]` decrypt it (default: `name`).
    pub device: Option<String>,
    pub channel: Option<String>,
    /// Forward its RTP (as received, own SSRC and sequence) to these
    /// addresses, as a live view's forwards and relay legs do.
    #[serde(default)]
    pub forward: Vec<SocketAddr>,
}

fn default_payload() -> String {
    "ps".into()
}

fn default_playback_grace() -> u64 {
    30
}

fn default_no_media() -> u64 {
    30
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            ip: None,
            ports: default_media_ports(),
            open_timeout_secs: default_open_timeout(),
            record: None,
            no_media_timeout_secs: default_no_media(),
            playback_end_grace_secs: default_playback_grace(),
            streams: Vec::new(),
        }
    }
}

impl MediaConfig {
    pub fn port_range(&self) -> Result<(u16, u16)> {
        let r = range(&self.ports)?;
        anyhow::ensure!(r.1 - r.0 >= 1, "media.ports needs at least two ports");
        Ok(r)
    }
}

fn default_open_timeout() -> u64 {
    10
}

/// `[api]`: the REST API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    #[serde(default = "default_api_listen")]
    pub listen: SocketAddr,
    /// Bearer token required on every request when set.
    pub token: Option<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: default_api_listen(),
            token: None,
        }
    }
}

/// `[metrics]`: the Prometheus endpoint (`GET /metrics`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_metrics_listen")]
    pub listen: SocketAddr,
}

fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9330))
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: default_metrics_listen(),
        }
    }
}

/// `[store]`: where the device registry lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
    /// Memory the database may use to cache its pages (MiB).
    #[serde(default = "default_store_cache_mib")]
    pub cache_mib: u32,
}

fn default_store_cache_mib() -> u32 {
    64
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: default_store_path(),
            cache_mib: default_store_cache_mib(),
        }
    }
}

pub const DEFAULT_API: &str = "127.0.0.1:7080";

fn yes() -> bool {
    true
}
fn default_sip_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([0, 0, 0, 0], 5060))]
}
fn default_nonce_ttl() -> u64 {
    300
}
fn default_min_expires() -> u32 {
    60
}
fn default_max_expires() -> u32 {
    86_400
}
fn default_keepalive_interval() -> u32 {
    60
}
fn default_keepalive_count() -> u32 {
    3
}
fn default_catalog_timeout() -> u64 {
    30
}
fn default_query_timeout() -> u64 {
    10
}
fn default_max_message() -> usize {
    gb28181::wire::DEFAULT_MAX_MESSAGE
}
fn default_tcp_idle() -> u64 {
    600
}
fn default_max_tcp() -> usize {
    50_000
}
fn default_charset() -> String {
    "GB2312".into()
}
fn default_persist_interval() -> u64 {
    10
}
fn default_api_listen() -> SocketAddr {
    DEFAULT_API
        .parse()
        .unwrap_or_else(|_| unreachable!("constant address"))
}
fn default_store_path() -> PathBuf {
    PathBuf::from("/var/lib/gateway/registry.redb")
}

impl SipConfig {
    pub fn domain(&self) -> String {
        self.domain
            .clone()
            .unwrap_or_else(|| self.id.chars().take(10).collect())
    }

    pub fn validate(&self) -> Result<()> {
        anyhow::ensure!(
            self.id.len() == 20 && self.id.bytes().all(|b| b.is_ascii_digit()),
            "sip.id must be 20 digits, not {:?}",
            self.id
        );
        anyhow::ensure!(!self.domain().is_empty(), "sip.domain must not be empty");
        anyhow::ensure!(!self.listen.is_empty(), "sip.listen needs an address");
        anyhow::ensure!(self.udp || self.tcp, "enable sip.udp or sip.tcp");
        anyhow::ensure!(
            self.min_expires <= self.max_expires && self.max_expires > 0,
            "sip.min_expires must not exceed sip.max_expires"
        );
        anyhow::ensure!(
            self.keepalive_interval_secs > 0 && self.keepalive_timeout_count > 0,
            "sip.keepalive_interval_secs and keepalive_timeout_count must be positive"
        );
        anyhow::ensure!(
            (1024..=1 << 20).contains(&self.max_message_bytes),
            "sip.max_message_bytes must be in 1024..=1048576"
        );
        anyhow::ensure!(
            self.nonce_ttl_secs >= 10,
            "sip.nonce_ttl_secs must be >= 10"
        );
        charset(&self.charset)
            .ok_or_else(|| anyhow::anyhow!("sip.charset must be GB2312, GB18030 or UTF-8"))?;
        let mut seen = std::collections::HashSet::new();
        for d in &self.devices {
            anyhow::ensure!(
                !d.id.is_empty() && d.id.len() <= 64,
                "sip.devices: bad id {:?}",
                d.id
            );
            anyhow::ensure!(seen.insert(&d.id), "sip.devices: {} listed twice", d.id);
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataplaneConfig {
    pub iface: String,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default = "default_max_streams")]
    pub max_streams: u32,
    #[serde(default = "default_media_ports")]
    pub media_ports: String,
    /// Source ports of media the gateway sends (default: media_ports).
    pub egress_ports: Option<String>,
    /// "drop" (default for the daemon) or "pass".
    #[serde(default = "default_unknown")]
    pub unknown: String,
    #[serde(default = "default_dscp")]
    pub dscp: String,
    /// Leave the programs attached when the daemon stops.
    #[serde(default)]
    pub keep_attached: bool,
    /// Seconds between counter read-outs.
    #[serde(default = "default_poll")]
    pub poll_interval_secs: f64,
    /// Relay legs in the kernel where a leg allows it (UDP to UDP, not
    /// encrypted): true (default) or false (always the userspace relay).
    #[serde(default = "default_true")]
    pub kernel_relay: bool,
    /// Other interfaces XDP may redirect relayed packets to (they must
    /// accept XDP frames); the attached one is always allowed.
    #[serde(default)]
    pub relay_to: Vec<String>,
    /// The SIP flood guard in XDP on the `[sip]` UDP ports (off without
    /// this section).
    pub sip_guard: Option<SipGuardConfig>,
}

/// `[dataplane.sip_guard]`: UDP to the SIP ports from addresses that are
/// not a registered device's is limited per source and in total; the rest
/// is dropped in XDP. Registered devices are never limited.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SipGuardConfig {
    /// Packets per second one unknown source may send.
    #[serde(default = "default_guard_rate")]
    pub rate: u32,
    /// Packets it may send at once above that.
    #[serde(default = "default_guard_burst")]
    pub burst: u32,
    /// Packets per second all unknown sources together may send.
    #[serde(default = "default_guard_global")]
    pub global_rate: u32,
}

fn default_guard_rate() -> u32 {
    20
}

fn default_guard_burst() -> u32 {
    40
}

fn default_guard_global() -> u32 {
    2000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowConfig {
    pub local: SocketAddr,
    pub ssrc: Option<u32>,
    pub expect_ssrc: Option<u32>,
    #[serde(default)]
    pub name: String,
    #[serde(default = "default_clock")]
    pub clock_rate: u32,
}

fn default_max_streams() -> u32 {
    gateway_common::DEFAULT_MAX_STREAMS
}
fn default_media_ports() -> String {
    "30000-30999".into()
}
fn default_unknown() -> String {
    "drop".into()
}
fn default_dscp() -> String {
    "off".into()
}
fn default_true() -> bool {
    true
}

fn default_poll() -> f64 {
    5.0
}
fn default_clock() -> u32 {
    90_000
}

fn range(s: &str) -> Result<(u16, u16)> {
    parse_range(s).map_err(anyhow::Error::msg)
}

impl Config {
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let c: Config =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if let Some(d) = &c.dataplane {
            d.settings()?;
            anyhow::ensure!(
                d.poll_interval_secs > 0.0 && d.poll_interval_secs <= 3600.0,
                "poll_interval_secs must be in (0, 3600]"
            );
        } else {
            anyhow::ensure!(c.flows.is_empty(), "[[flows]] need a [dataplane] section");
        }
        if let Some(s) = &c.sip {
            s.validate()?;
        }
        c.media.port_range()?;
        for st in &c.media.streams {
            anyhow::ensure!(
                !st.name.is_empty()
                    && st.name.len() <= 64
                    && st.name.bytes().all(|b| b.is_ascii_alphanumeric()),
                "media.streams: name must be letters and digits, not {:?}",
                st.name
            );
            anyhow::ensure!(
                matches!(st.payload.as_str(), "ps" | "h264" | "h265"),
                "media.streams {}: payload must be ps, h264 or h265",
                st.name
            );
        }
        anyhow::ensure!(
            (1..=300).contains(&c.media.open_timeout_secs),
            "media.open_timeout_secs must be in 1..=300"
        );
        let mut seen = std::collections::HashSet::new();
        for up in &c.cascade {
            up.validate()
                .with_context(|| format!("{}: [[cascade]]", path.display()))?;
            anyhow::ensure!(
                seen.insert(&up.id),
                "{}: [[cascade]] {} listed twice",
                path.display(),
                up.id
            );
        }
        anyhow::ensure!(
            c.cascade.is_empty() || c.sip.is_some(),
            "{}: [[cascade]] needs [sip]",
            path.display()
        );
        anyhow::ensure!(
            c.dataplane.is_some() || c.sip.is_some(),
            "nothing to run: configure [dataplane] and/or [sip]"
        );
        Ok(c)
    }
}

impl DataplaneConfig {
    pub fn settings(&self) -> Result<Settings> {
        let d = self;
        let media_ports = range(&d.media_ports)?;
        Ok(Settings {
            media_ports,
            egress_ports: d
                .egress_ports
                .as_deref()
                .map(range)
                .transpose()?
                .unwrap_or(media_ports),
            unknown_drop: match d.unknown.as_str() {
                "drop" => true,
                "pass" => false,
                other => anyhow::bail!("unknown must be \"pass\" or \"drop\", not {other:?}"),
            },
            dscp: parse_dscp(&d.dscp).map_err(anyhow::Error::msg)?,
        })
    }
}

// --- shared value types and parsers (the CLI and the daemon read the same) --

/// XDP attach mode as asked for on the command line.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
    Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Native (driver) mode, falling back to generic (skb) mode.
    #[default]
    Auto,
    Native,
    Skb,
}

/// Kernel-side settings of an attachment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub media_ports: (u16, u16),
    pub unknown_drop: bool,
    /// DSCP value (0..=63) for egress media, or None.
    pub dscp: Option<u8>,
    pub egress_ports: (u16, u16),
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            media_ports: (30000, 30999),
            unknown_drop: false,
            dscp: None,
            egress_ports: (30000, 30999),
        }
    }
}

/// `[record]`: where and how sessions are recorded.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordConfig {
    #[serde(default = "default_dir")]
    pub dir: PathBuf,
    /// Write the elementary stream (Annex-B .h264/.h265).
    #[serde(default = "yes")]
    pub es: bool,
    /// Write the original PS byte stream (.ps).
    #[serde(default)]
    pub ps: bool,
    /// Start a new file (at the next key frame) beyond this size; 0 = never.
    #[serde(default = "default_max_bytes")]
    pub max_file_bytes: u64,
    /// ... or beyond this age in seconds; 0 = never.
    #[serde(default)]
    pub max_file_secs: u64,
}

fn default_dir() -> PathBuf {
    PathBuf::from("/var/lib/gateway/records")
}
fn default_max_bytes() -> u64 {
    1 << 30
}

impl Default for RecordConfig {
    fn default() -> Self {
        RecordConfig {
            dir: default_dir(),
            es: true,
            ps: false,
            max_file_bytes: default_max_bytes(),
            max_file_secs: 0,
        }
    }
}

/// The two media-encryption profiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Profile {
    /// NAL unit payloads, SM4-OFB, parameters in an SEI.
    #[serde(rename = "sm4-nal-ofb")]
    NalOfb,
    /// SRTP with SM4 counter mode and HMAC-SM3-80.
    #[serde(rename = "srtp-sm4")]
    SrtpSm4,
}

impl Profile {
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::NalOfb => "sm4-nal-ofb",
            Profile::SrtpSm4 => "srtp-sm4",
        }
    }

    pub fn parse(s: &str) -> Option<Profile> {
        match s {
            "sm4-nal-ofb" => Some(Profile::NalOfb),
            "srtp-sm4" => Some(Profile::SrtpSm4),
            _ => None,
        }
    }
}

/// A key as provisioned (config, API body, persisted form).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    pub device: String,
    /// Channel ID, or "*" for every channel of the device without keys of
    /// its own.
    #[serde(default = "any_channel")]
    pub channel: String,
    pub profile: Profile,
    /// `sm4-nal-ofb`: the key_version the device puts in its SEI.
    /// `srtp-sm4`: a label telling keys apart (rotation).
    #[serde(default = "one")]
    pub version: u32,
    /// The key in clear (32 hex digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The key wrapped under the device's VKEK (32 hex digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrapped: Option<String>,
    /// `srtp-sm4`: the 14-byte master salt (28 hex digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    /// `srtp-sm4`: key and salt as in SDP (`inline:<base64>`), instead of
    /// `key`/`salt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
    /// Wall-clock ms after which the key is retired (set by a rotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<i64>,
}

fn any_channel() -> String {
    "*".into()
}
fn one() -> u32 {
    1
}

/// A device's key-encryption key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VkekSpec {
    pub device: String,
    /// 32 hex digits.
    pub key: String,
}

/// The charset named by a config label.
pub fn charset(label: &str) -> Option<Charset> {
    match label.to_ascii_uppercase().as_str() {
        "GB2312" | "GBK" => Some(Charset::Gb2312),
        "GB18030" => Some(Charset::Gb18030),
        "UTF-8" | "UTF8" => Some(Charset::Utf8),
        _ => None,
    }
}

/// A port range `LO-HI` (or one port).
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

/// A DSCP value: a name (ef, af41, ...), 0-63, or off.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charsets_by_label() {
        assert_eq!(charset("gbk"), Some(Charset::Gb2312));
        assert_eq!(charset("latin1"), None);
    }

    #[test]
    fn parses_a_full_config() {
        let c: Config = toml::from_str(
            r#"
            [dataplane]
            iface = "eth0"
            mode = "native"
            media_ports = "40000-40100"
            unknown = "pass"
            dscp = "af41"
            [[flows]]
            local = "198.18.0.1:40000"
            ssrc = 12
            name = "cam"
            "#,
        )
        .unwrap();
        let s = c.dataplane.as_ref().unwrap().settings().unwrap();
        assert_eq!(s.media_ports, (40000, 40100));
        assert_eq!(s.egress_ports, (40000, 40100));
        assert!(!s.unknown_drop);
        assert_eq!(s.dscp, Some(34));
        assert_eq!(c.flows[0].ssrc, Some(12));
    }

    #[test]
    fn rejects_bad_values() {
        let bad = |t: &str| {
            toml::from_str::<Config>(t)
                .map_err(anyhow::Error::from)
                .and_then(|c| c.dataplane.as_ref().unwrap().settings())
        };
        assert!(bad("[dataplane]\niface='x'\nunknown='maybe'").is_err());
        assert!(bad("[dataplane]\niface='x'\nmedia_ports='9-1'").is_err());
        assert!(bad("[dataplane]\niface='x'\ndscp='99'").is_err());
        assert!(bad("[dataplane]\niface='x'\nbogus=1").is_err());
    }
}
