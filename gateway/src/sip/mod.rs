//! GB/T 28181 signalling: the gateway as the platform devices register
//! with. `transport` moves bytes, `core` holds the state; see
//! docs/architecture.md ("Signalling").

pub mod core;
pub mod transport;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Result;
use tokio::sync::mpsc;

use crate::{config::SipConfig, metrics::SipMetrics, store};

/// A running signalling service.
pub struct Service {
    /// Where the API sends its commands.
    pub commands: mpsc::Sender<core::Command>,
    /// Bound addresses (with ephemeral ports resolved).
    pub bound: Vec<SocketAddr>,
    pub task: tokio::task::JoinHandle<()>,
}

/// Binds the sockets and starts the core. Must run inside a Tokio runtime.
pub async fn start(
    cfg: Arc<SipConfig>,
    media: crate::config::MediaConfig,
    store: Option<(store::Store, store::Loaded)>,
    metrics: SipMetrics,
    dataplane: Option<crate::dataplane::attach::Target>,
    keys: Arc<crate::keys::KeyStore>,
    view: Arc<crate::exporter::View>,
) -> Result<Service> {
    let (in_tx, in_rx) = mpsc::channel(16_384);
    let (cmd_tx, cmd_rx) = mpsc::channel(1024);
    let limits = transport::Limits {
        max_message: cfg.max_message_bytes,
        tcp_idle: Duration::from_secs(cfg.tcp_idle_timeout_secs),
        max_tcp: cfg.max_tcp_connections,
    };
    let (out, bound) = transport::start(
        &cfg.listen,
        cfg.udp,
        cfg.tcp,
        limits,
        in_tx,
        metrics.clone(),
    )
    .await?;
    let mut core = core::Core::new(cfg, media, out, store, metrics);
    core.set_keys(keys);
    if let Some(t) = dataplane {
        core.set_dataplane(t)?;
    }
    core.start_static_streams();
    core.set_view(view);
    let task = tokio::spawn(core.run(in_rx, cmd_rx));
    Ok(Service {
        commands: cmd_tx,
        bound,
        task,
    })
}
