//! Daemon configuration file (TOML).

use std::{net::SocketAddr, path::Path};

use anyhow::{Context as _, Result};
use serde::Deserialize;

use crate::{
    cli::{parse_dscp, parse_range},
    dataplane::{
        attach::{Mode, Settings},
        flows::FlowSpec,
    },
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub dataplane: DataplaneConfig,
    #[serde(default)]
    pub flows: Vec<FlowConfig>,
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
        c.settings()?;
        anyhow::ensure!(
            c.dataplane.poll_interval_secs > 0.0 && c.dataplane.poll_interval_secs <= 3600.0,
            "poll_interval_secs must be in (0, 3600]"
        );
        Ok(c)
    }

    pub fn settings(&self) -> Result<Settings> {
        let d = &self.dataplane;
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

    pub fn flow_specs(&self) -> Vec<FlowSpec> {
        self.flows
            .iter()
            .map(|f| FlowSpec {
                local: Some(f.local),
                ssrc: f.ssrc,
                expect_ssrc: f.expect_ssrc,
                name: f.name.clone(),
                clock_rate: f.clock_rate,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let s = c.settings().unwrap();
        assert_eq!(s.media_ports, (40000, 40100));
        assert_eq!(s.egress_ports, (40000, 40100));
        assert!(!s.unknown_drop);
        assert_eq!(s.dscp, Some(34));
        assert_eq!(c.flow_specs()[0].ssrc, Some(12));
    }

    #[test]
    fn rejects_bad_values() {
        let bad = |t: &str| {
            toml::from_str::<Config>(t)
                .map_err(anyhow::Error::from)
                .and_then(|c| c.settings())
        };
        assert!(bad("[dataplane]\niface='x'\nunknown='maybe'").is_err());
        assert!(bad("[dataplane]\niface='x'\nmedia_ports='9-1'").is_err());
        assert!(bad("[dataplane]\niface='x'\ndscp='99'").is_err());
        assert!(bad("[dataplane]\niface='x'\nbogus=1").is_err());
    }
}
