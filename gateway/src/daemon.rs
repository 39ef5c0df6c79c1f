//! `gateway run`: the daemon. Attaches the data plane (or adopts an
//! existing attachment) when `[dataplane]` is configured, serves GB/T 28181
//! signalling when `[sip]` is, and the REST API; detaches on SIGINT/SIGTERM
//! unless told to keep the attachment, after persisting the registry.

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use tracing::{info, warn};

use crate::{
    api,
    config::Config,
    dataplane::{
        attach::{self, Target},
        flows::{describe, FlowSpec},
        Error, Shared,
    },
    keys::KeyStore,
    metrics::{exporter, SipMetrics},
    session::{kernel::Kernel, Sessions},
    sip, store,
};

pub fn run(config: &Path, netns: Option<&str>, bpffs: &Path) -> Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .try_init();
    let cfg = Config::load(config)?;
    // Keys are checked before anything starts, so a typo stops the daemon
    // with the file named, not later in a stream.
    KeyStore::new(None)
        .load_config(&cfg.vkeks, &cfg.keys)
        .map_err(|e| anyhow::anyhow!("{}: [[keys]]: {e}", config.display()))?;
    let target = match &cfg.dataplane {
        None => None,
        Some(dp) => {
            let target = Target::new(&dp.iface, netns, Some(bpffs))?;
            let settings = dp.settings()?;
            if target.is_attached() {
                info!(iface = %target.iface, "adopting the existing attachment");
                attach::set(&target, &settings)?;
            } else {
                let a = attach::attach(&target, dp.mode, dp.max_streams, &settings, &dp.relay_to)?;
                info!(iface = %a.iface, mode = a.mode, tc = a.tc, pins = %a.pin_dir.display(), "attached");
            }
            Some(target)
        }
    };
    // From here on, leave nothing half-done: detach on any error too.
    let result = serve(&cfg, target.as_ref());
    if let (Some(target), Some(dp)) = (&target, &cfg.dataplane) {
        if dp.keep_attached {
            info!(iface = %target.iface, "leaving the programs attached (keep_attached)");
        } else {
            match attach::detach(target) {
                Ok(()) => info!(iface = %target.iface, "detached"),
                Err(e) => warn!(iface = %target.iface, error = %e, "detach failed"),
            }
        }
    }
    result
}

/// The SIP flood guard on the `[sip]` UDP ports as `[dataplane.sip_guard]`
/// says, or off; the allow list of a previous daemon is emptied (the
/// signalling core fills it with its online devices). True when on.
fn configure_sip_guard(cfg: &Config, maps: &mut crate::dataplane::maps::Maps) -> Result<bool> {
    use crate::dataplane::sip_guard::GuardSettings;
    let g = cfg.dataplane.as_ref().and_then(|d| d.sip_guard);
    let sip = cfg.sip.as_ref().filter(|s| s.udp);
    let (Some(g), Some(sc)) = (g, sip) else {
        if maps.sip_guard()?.is_some() {
            maps.set_sip_guard(&gateway_common::SipGuard::default())?;
            info!("SIP flood guard switched off");
        }
        return Ok(false);
    };
    if maps.sip_guard_raw()?.is_none() {
        // Kept attached by a version without the guard: go on without it.
        warn!("[dataplane.sip_guard] is configured but the attached programs have no SIP flood guard (attached by an older version); detach and attach again to use it");
        return Ok(false);
    }
    let mut ports: Vec<u16> = sc.listen.iter().map(|a| a.port()).collect();
    ports.sort_unstable();
    ports.dedup();
    let k = GuardSettings {
        rate: g.rate,
        burst: g.burst,
        global_rate: g.global_rate,
    }
    .to_kernel(&ports, maps.ncpus())?;
    for ip in maps.sip_allowed()? {
        maps.sip_allow(ip, false)?;
    }
    maps.set_sip_guard(&k)?;
    info!(
        ?ports,
        rate = g.rate,
        burst = g.burst,
        global_rate = g.global_rate,
        "SIP flood guard on"
    );
    Ok(true)
}

fn serve(cfg: &Config, target: Option<&Target>) -> Result<()> {
    // The daemon's one handle on the maps (sessions, exporter, poll loop).
    let maps = target.map(|t| t.open()).transpose()?.map(Shared::new);
    let mut guard_on = false;
    if let (Some(target), Some(maps)) = (target, &maps) {
        let _lock = target.lock()?;
        let mut maps = maps.lock();
        // Relays of a daemon before this one (kept attached) have no
        // dialog any more: the kernel must not go on sending for them.
        let stale = maps.clear_relays().context("clearing stale relays")?;
        if stale > 0 {
            warn!(
                count = stale,
                "removed kernel relays left by the previous daemon"
            );
        }
        guard_on = configure_sip_guard(cfg, &mut maps)?;
        for spec in cfg.flows.iter().map(FlowSpec::from) {
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
    let target = target.cloned();
    rt.block_on(async move {
        let registry = prometheus::Registry::new();
        let sip_metrics = SipMetrics::new(&registry);
        let view = Arc::new(exporter::View::default());
        let mut keys = None;
        let service = match &cfg.sip {
            Some(sc) => {
                let st = store::Store::open_with_cache(
                    &cfg.store.path,
                    (cfg.store.cache_mib.clamp(1, 4096) as usize) << 20,
                )?;
                // The configuration's keys, then those provisioned through
                // the API earlier (the configuration wins on a clash).
                let ks = KeyStore::new(Some(st.0.clone()));
                ks.load_config(&cfg.vkeks, &cfg.keys)
                    .map_err(|e| anyhow::anyhow!("[[keys]]: {e}"))?;
                for p in ks.load_persisted(&st.1.keys) {
                    warn!(problem = %p, "stored media key skipped");
                }
                keys = Some(ks.clone());
                let mut sessions = Sessions::new(cfg.media.clone(), ks, sip_metrics.clone());
                if let (Some(t), Some(m)) = (&target, &maps) {
                    let k = Kernel::new(
                        t.clone(),
                        m.clone(),
                        cfg.dataplane.as_ref().is_none_or(|d| d.kernel_relay),
                    );
                    sessions.set_kernel(if guard_on { k.with_sip_guard() } else { k });
                }
                sessions.start_static();
                Some(
                    sip::start(
                        Arc::new(sc.clone()),
                        sessions,
                        Some(st),
                        sip_metrics,
                        view.clone(),
                        cfg.cascade.clone(),
                    )
                    .await?,
                )
            }
            None => None,
        };
        let kernel = match (&target, &maps) {
            (Some(t), Some(maps)) => {
                let mode = match maps.lock().config().map(|c| c.xdp_mode) {
                    Ok(gateway_common::XDP_MODE_NATIVE) => "native",
                    Ok(gateway_common::XDP_MODE_SKB) => "skb",
                    _ => "unknown",
                };
                Some(exporter::Kernel {
                    maps: maps.clone(),
                    iface: t.iface.clone(),
                    mode,
                })
            }
            _ => None,
        };
        let exp = exporter::Exporter::new(registry.clone(), view, kernel);
        if cfg.metrics.enabled {
            exporter::serve(cfg.metrics.listen, exp.clone()).await?;
        }
        let readout = exp.readout_histogram();
        let state = api::ApiState {
            sip: service.as_ref().map(|s| s.commands.clone()),
            token: cfg.api.token.as_deref().map(Arc::from),
            metrics: registry,
            keys: keys.unwrap_or_else(|| KeyStore::new(None)),
        };
        api::serve(cfg.api.listen, state).await?;
        let poll = Duration::from_secs_f64(
            cfg.dataplane.as_ref().map_or(5.0, |d| d.poll_interval_secs),
        );
        let mut tick = tokio::time::interval(poll);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        let mut last = None::<(u64, u64)>;
        info!("ready");
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let Some(maps) = maps.as_ref() else { continue };
                    let t = std::time::Instant::now();
                    let (streams, counters) = {
                        let mut m = maps.lock();
                        (m.streams()?, m.counters()?)
                    };
                    readout.observe(t.elapsed().as_secs_f64());
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
        if let Some(s) = &service {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if s.commands.send(sip::Command::Flush(tx)).await.is_ok() {
                match tokio::time::timeout(Duration::from_secs(10), rx).await {
                    Ok(_) => info!("registry saved"),
                    Err(_) => warn!("registry save timed out"),
                }
            }
        }
        Ok::<_, anyhow::Error>(())
    })
}
