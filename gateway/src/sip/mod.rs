//! GB/T 28181 signalling: the gateway as the platform devices register
//! with. `transport` moves bytes; `core` holds the state and dispatches to
//! `registrar` (REGISTER), `catalog` (MANSCDP queries and answers),
//! `alarms` (alarm notifications),
//! `control` (DeviceControl), `records` (RecordInfo), `dialog` (INVITE
//! dialogs), `persist` (dialogs carried over a restart) and `playback`
//! (MANSRTSP controls, ends of playbacks); the device records are in
//! `registry`. What a dialog carries
//! is `crate::session`'s. See docs/architecture.md ("Signalling").

pub mod alarms;
pub mod cascade;
pub mod catalog;
pub mod control;
pub mod core;
pub mod dialog;
mod persist;
pub mod playback;
pub mod records;
pub mod registrar;
pub mod registry;
pub mod relay;
pub mod subscribe;
pub mod transport;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Result;
use tokio::sync::mpsc;

pub use self::core::{Command, DeviceView, QueryKind};
pub use cascade::{PlatformView, UpState};
pub use control::ControlRequest;
pub use dialog::{History, OpenStream};
pub use playback::{PlaybackAction, PlaybackRequest};
pub use records::RecordQuery;
pub use registry::SubKind;
pub use subscribe::SubscriptionView;

use crate::{
    config::SipConfig,
    metrics::{exporter::View, SipMetrics},
    session::Sessions,
    store,
};

/// A running signalling service.
pub struct Service {
    /// Where the API sends its commands.
    pub commands: mpsc::Sender<Command>,
    /// Bound addresses (with ephemeral ports resolved).
    pub bound: Vec<SocketAddr>,
    pub task: tokio::task::JoinHandle<()>,
}

/// Binds the sockets and starts the core with the sessions it will carry.
/// Must run inside a Tokio runtime.
pub async fn start(
    cfg: Arc<SipConfig>,
    sessions: Sessions,
    store: Option<(store::Store, store::Loaded)>,
    metrics: SipMetrics,
    view: Arc<View>,
    cascade: Vec<crate::config::CascadeConfig>,
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
    let core = self::core::Core::new(cfg, sessions, out, store, metrics, view, cascade);
    let task = tokio::spawn(core.run(in_rx, cmd_rx));
    Ok(Service {
        commands: cmd_tx,
        bound,
        task,
    })
}
