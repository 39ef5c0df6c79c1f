//! The one facade of the session layer to the kernel fast path (as
//! rtpengine's `kernel.c`): a session's flow enters the XDP flow table
//! when its media starts and leaves it when it ends; its counters are read
//! from the shared maps. Nothing else of the session or signalling layers
//! touches the data plane.

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
};

use gb28181::sdp::MediaTransport;
use serde::Serialize;
use tracing::{info, warn};

use super::Sessions;
use crate::{
    dataplane::{
        attach::Target,
        flows::{describe, flow_name, FlowSpec},
        make_key,
        relay::OutputStats,
        Shared,
    },
    sys::clock::monotonic_ns,
};

/// The kernel's view of a session's flow.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KernelView {
    pub flow: String,
    pub slot: u32,
    pub packets: u64,
    pub bytes: u64,
    pub lost: u64,
    pub out_of_order: u64,
    pub duplicates: u64,
    pub ssrc_mismatches: u64,
    /// Seconds since the last packet the kernel saw (None: none yet).
    pub idle_secs: Option<f64>,
    #[serde(skip)]
    pub key: Option<gateway_common::FlowKey>,
}

/// The attachment whose flow table the sessions use.
pub struct Kernel {
    target: Target,
    maps: Shared,
    /// Relay legs in the kernel where they allow it.
    relay: bool,
    /// The SIP flood guard is on: its allow list follows the online
    /// devices' addresses (as last written).
    sip_allowed: Option<HashSet<IpAddr>>,
}

impl Kernel {
    pub fn new(target: Target, maps: Shared, relay: bool) -> Kernel {
        Kernel {
            target,
            maps,
            relay,
            sip_allowed: None,
        }
    }

    /// The SIP flood guard is on (its allow list starts empty).
    pub fn with_sip_guard(mut self) -> Kernel {
        self.sip_allowed = Some(HashSet::new());
        self
    }

    /// Makes the guard's allow list `want`: only the differences are
    /// written.
    fn sip_allow_sync(&mut self, want: &HashSet<IpAddr>) {
        let Some(have) = self.sip_allowed.as_mut() else {
            return;
        };
        let maps = self.maps.lock();
        for ip in have.difference(want) {
            if let Err(e) = maps.sip_allow(*ip, false) {
                warn!(%ip, error = %e, "cannot remove an address from the SIP allow list");
            }
        }
        let mut failed = Vec::new();
        for ip in want.difference(have) {
            if let Err(e) = maps.sip_allow(*ip, true) {
                warn!(%ip, error = %e, "cannot add an address to the SIP allow list");
                failed.push(*ip);
            }
        }
        *have = want.clone();
        for ip in failed {
            have.remove(&ip);
        }
    }

    /// Why the kernel cannot relay legs of family `v6` at all (`None`: it
    /// can): switched off, programs too old, or IP forwarding off on the
    /// interface (`bpf_fib_lookup` refuses to resolve then).
    pub(super) fn relay_unavailable(&self, v6: bool) -> Option<String> {
        if !self.relay {
            return Some("kernel relay switched off ([dataplane] kernel_relay = false)".into());
        }
        if !self.maps.lock().has_relay() {
            return Some(format!(
                "{} was attached by a version without the kernel relay (detach and attach again)",
                self.target.iface
            ));
        }
        let path = if v6 {
            "/proc/sys/net/ipv6/conf/all/forwarding".to_string()
        } else {
            format!("/proc/sys/net/ipv4/conf/{}/forwarding", self.target.iface)
        };
        match std::fs::read_to_string(&path) {
            Ok(v) if v.trim() == "1" => None,
            _ => Some(format!(
                "IP forwarding is off ({path}); the kernel's next-hop lookup needs it"
            )),
        }
    }

    /// Installs or replaces the relay of a session's flow.
    pub(super) fn set_relay(
        &self,
        key: &gateway_common::FlowKey,
        entry: &gateway_common::RelayValue,
    ) -> Result<(), String> {
        let _lock = self.target.lock();
        self.maps
            .lock()
            .set_relay(key, entry)
            .map_err(|e| e.to_string())
    }

    /// Removes a session flow's relay (nothing if it has none).
    pub(super) fn clear_relay(&self, key: &gateway_common::FlowKey) {
        let _lock = self.target.lock();
        if let Err(e) = self.maps.lock().clear_relay(key) {
            warn!(error = %e, "cannot remove a kernel relay");
        }
    }

    /// Counters of output `i` of the relay on stream slot `slot`.
    pub(super) fn relay_stats(&self, slot: u32, i: u32) -> Option<OutputStats> {
        self.maps.lock().relay_stats(slot, i).ok()
    }

    /// Puts a flow (any local address, `port`, expecting `ssrc`) in the
    /// table. A flow of the same stream already there (a previous daemon's,
    /// kept attached) is adopted: its slot and counters go on.
    fn add(&self, id: &str, port: u16, ssrc: u32) -> Option<KernelView> {
        let local = SocketAddr::new(IpAddr::from([0u8; 4]), port);
        let key = make_key(local, None);
        let _lock = self.target.lock();
        match self.maps.lock().get_flow(&key) {
            Ok(Some(v)) if flow_name(&v) == id && v.expected_ssrc == ssrc => {
                let flow = describe(&key);
                info!(stream = %id, %flow, slot = v.slot, "flow adopted from the kernel table (its counters go on)");
                return Some(KernelView {
                    flow,
                    slot: v.slot,
                    key: Some(key),
                    ..KernelView::default()
                });
            }
            _ => {}
        }
        let spec = FlowSpec {
            local: Some(local),
            ssrc: None,
            expect_ssrc: Some(ssrc),
            name: id.to_string(),
            clock_rate: 90_000,
        };
        match self.maps.lock().add_flow(&spec) {
            Ok((k, v)) => {
                let flow = describe(&k);
                info!(stream = %id, %flow, slot = v.slot, "flow added to the kernel table");
                Some(KernelView {
                    flow,
                    slot: v.slot,
                    key: Some(k),
                    ..KernelView::default()
                })
            }
            Err(e) => {
                warn!(stream = %id, error = %e, "cannot add the session's flow to the kernel table");
                None
            }
        }
    }

    fn del(&self, id: &str, key: &gateway_common::FlowKey) {
        let _lock = self.target.lock();
        match self.maps.lock().del_flow(key) {
            Ok(_) => info!(stream = %id, "flow removed from the kernel table"),
            Err(e) => warn!(stream = %id, error = %e, "cannot remove the session's flow"),
        }
    }

    /// Removes the session flows (a stream ID's name, any address, a port
    /// of `ports`) a previous daemon left that no session has now, with
    /// their relays. Returns how many.
    fn prune(&self, ports: (u16, u16), keep: &HashSet<gateway_common::FlowKey>) -> usize {
        let _lock = self.target.lock();
        let mut maps = self.maps.lock();
        let stale: Vec<_> = match maps.flows() {
            Ok(f) => f
                .into_iter()
                .filter(|(k, v)| {
                    k.family == gateway_common::FAMILY_ANY
                        && k.by_ssrc == 0
                        && (ports.0..=ports.1).contains(&k.port)
                        && !keep.contains(k)
                        && is_stream_id(&flow_name(v))
                })
                .collect(),
            Err(e) => {
                warn!(error = %e, "cannot read the flow table to remove stale session flows");
                return 0;
            }
        };
        let mut n = 0;
        for (k, v) in stale {
            let _ = maps.clear_relay(&k);
            match maps.del_flow(&k) {
                Ok(_) => {
                    n += 1;
                    info!(flow = %describe(&k), stream = %flow_name(&v), "stale session flow removed from the kernel table");
                }
                Err(e) => {
                    warn!(flow = %describe(&k), error = %e, "cannot remove a stale session flow")
                }
            }
        }
        n
    }

    /// Reads the flow's counters into `v`.
    pub(super) fn refresh(&self, v: &mut KernelView) {
        let sum = self.maps.lock().stream_summary(v.slot);
        v.packets = sum.packets;
        v.bytes = sum.bytes;
        v.lost = sum.lost;
        v.out_of_order = sum.out_of_order;
        v.duplicates = sum.duplicates;
        v.ssrc_mismatches = sum.ssrc_mismatch;
        v.idle_secs =
            (sum.last_ns > 0).then(|| monotonic_ns().saturating_sub(sum.last_ns) as f64 / 1e9);
    }
}

/// A session's stream ID: the 10 digits of its y= value.
fn is_stream_id(s: &str) -> bool {
    s.len() == 10 && s.bytes().all(|b| b.is_ascii_digit())
}

impl Sessions {
    /// Takes out of the kernel table the session flows of a previous
    /// daemon that no session carries on (run once the saved sessions are
    /// back): nothing would ever remove them, and their ports would stay
    /// unusable for new sessions' flows.
    pub fn prune_kernel_flows(&mut self) -> usize {
        let Some(k) = &self.kernel else { return 0 };
        let keep: HashSet<_> = self
            .active
            .values()
            .filter_map(|s| s.kernel.as_ref().and_then(|v| v.key))
            .collect();
        k.prune(self.ports, &keep)
    }

    /// The SIP flood guard's allow list becomes `want` (the addresses of
    /// the online devices); nothing without the guard.
    pub fn sip_allow_sync(&mut self, want: &HashSet<IpAddr>) {
        if let Some(k) = self.kernel.as_mut() {
            k.sip_allow_sync(want);
        }
    }

    /// Whether the guard is on (the core then keeps the allow list).
    pub fn sip_guard_on(&self) -> bool {
        self.kernel
            .as_ref()
            .is_some_and(|k| k.sip_allowed.is_some())
    }

    /// Puts the session's flow in the XDP table (UDP only: XDP classifies
    /// UDP; RTP over TCP is accounted by the receiver).
    pub(super) fn add_kernel_flow(&mut self, id: &str) {
        let Some(k) = &self.kernel else { return };
        let Some(s) = self.active.get(id) else { return };
        if s.transport != MediaTransport::Udp {
            return;
        }
        let view = k.add(id, s.local.port(), s.ssrc);
        if let (Some(s), Some(view)) = (self.active.get_mut(id), view) {
            s.kernel = Some(view);
        }
    }

    pub(super) fn del_kernel_flow(&mut self, id: &str) {
        let Some(k) = &self.kernel else { return };
        let Some(key) = self
            .active
            .get(id)
            .and_then(|s| s.kernel.as_ref())
            .and_then(|v| v.key)
        else {
            return;
        };
        // The relay first: no relay entry outlives its stream.
        k.clear_relay(&key);
        k.del(id, &key);
    }
}
