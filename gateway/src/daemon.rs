//! `gateway run`: the daemon. Attaches (or adopts an existing attachment),
//! installs the configured flows, reads the kernel counters periodically and
//! detaches on SIGINT/SIGTERM unless told to keep the attachment. Later
//! parts (SIP, media, metrics) hang off this loop.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, Result};
use tracing::{info, warn};

use crate::{
    config::Config,
    dataplane::{
        attach::{self, Target},
        flows::describe,
        Error,
    },
};

pub fn run(config: &Path, netns: Option<&str>, bpffs: &Path) -> Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .try_init();
    let cfg = Config::load(config)?;
    let target = Target::new(&cfg.dataplane.iface, netns, Some(bpffs))?;
    let settings = cfg.settings()?;
    if target.is_attached() {
        info!(iface = %target.iface, "adopting the existing attachment");
        attach::set(&target, &settings)?;
    } else {
        let a = attach::attach(
            &target,
            cfg.dataplane.mode,
            cfg.dataplane.max_streams,
            &settings,
        )?;
        info!(iface = %a.iface, mode = a.mode, tc = a.tc, pins = %a.pin_dir.display(), "attached");
    }
    // From here on, leave nothing half-done: detach on any error too.
    let result = serve(&cfg, &target);
    if cfg.dataplane.keep_attached {
        info!(iface = %target.iface, "leaving the programs attached (keep_attached)");
    } else {
        match attach::detach(&target) {
            Ok(()) => info!(iface = %target.iface, "detached"),
            Err(e) => warn!(iface = %target.iface, error = %e, "detach failed"),
        }
    }
    result
}

fn serve(cfg: &Config, target: &Target) -> Result<()> {
    {
        let _lock = target.lock()?;
        let mut maps = target.open()?;
        for spec in cfg.flow_specs() {
            match maps.add_flow(&spec) {
                Ok((k, v)) => info!(flow = %describe(&k), slot = v.slot, "flow added"),
                Err(Error::FlowExists(f)) => info!(flow = %f, "flow already present"),
                Err(e) => return Err(e).context("adding configured flows"),
            }
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the Tokio runtime")?;
    let poll = Duration::from_secs_f64(cfg.dataplane.poll_interval_secs);
    let target = target.clone();
    rt.block_on(async move {
        let mut maps = target.open()?;
        let mut tick = tokio::time::interval(poll);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        let mut last = None::<(u64, u64)>;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let streams = maps.streams()?;
                    let counters = maps.counters()?;
                    let packets: u64 = streams.iter().map(|s| s.stats.packets).sum();
                    let lost: u64 = streams.iter().map(|s| s.stats.lost).sum();
                    if last != Some((packets, lost)) {
                        info!(
                            streams = streams.len(),
                            packets,
                            lost,
                            unknown_dropped = counters[gateway_common::counter::UNKNOWN_DROPPED as usize],
                            "data plane"
                        );
                        last = Some((packets, lost));
                    }
                }
                _ = tokio::signal::ctrl_c() => { info!("SIGINT"); break; }
                _ = term.recv() => { info!("SIGTERM"); break; }
            }
        }
        Ok::<_, anyhow::Error>(())
    })
}
