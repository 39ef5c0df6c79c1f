//! The kernel relay seen from user space: installing and removing a
//! stream's relay (`RELAYS` + the flow's `FLOW_RELAY` flag), the interfaces
//! XDP may redirect to (`TX_PORTS`) and the VLAN devices it may send back
//! out through (`VLAN_DEVS`), and each output's counters (`RELAY_STATS`).

use std::{
    net::{IpAddr, SocketAddr},
    os::fd::AsFd,
};

use gateway_common::{
    FlowKey, FlowValue, RelayOut, RelayStats, RelayValue, VlanDev, FAMILY_V4, FAMILY_V6,
    FLOW_RELAY, FLOW_RELAY_TC, RELAY_MAX_OUT, RELAY_OUT_START_SEQ,
};

use super::{
    maps::{get, put, RelayMaps},
    Error, Maps, Result,
};
use crate::sys::{self, pod_bytes, read_pod};

/// One destination of a relay, as the daemon describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    pub dest: SocketAddr,
    /// Our address and port the copies come from.
    pub from: SocketAddr,
    pub ssrc: u32,
    pub seq_delta: u16,
    /// The kernel takes packets from this input sequence number on.
    pub start_seq: Option<u16>,
}

/// What the kernel does with a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// XDP rewrites and sends; nothing goes up to the daemon.
    Xdp,
    /// TC ingress copies to every output; the original goes up.
    TcCopy,
    /// TC ingress copies to every output; the original is dropped.
    TcOnly,
}

impl Mode {
    fn code(self) -> u8 {
        match self {
            Mode::Xdp => gateway_common::RELAY_XDP,
            Mode::TcCopy => gateway_common::RELAY_TC_COPY,
            Mode::TcOnly => gateway_common::RELAY_TC_ONLY,
        }
    }

    pub fn from_code(c: u8) -> Option<Mode> {
        match c {
            gateway_common::RELAY_XDP => Some(Mode::Xdp),
            gateway_common::RELAY_TC_COPY => Some(Mode::TcCopy),
            gateway_common::RELAY_TC_ONLY => Some(Mode::TcOnly),
            _ => None,
        }
    }

    /// Chooses the mode: XDP for one output with nothing local, TC otherwise.
    pub fn choose(outputs: usize, local: bool) -> Mode {
        match (outputs, local) {
            (_, true) => Mode::TcCopy,
            (1, false) => Mode::Xdp,
            _ => Mode::TcOnly,
        }
    }
}

fn family_and_addr(a: IpAddr) -> (u8, [u8; 16]) {
    let mut out = [0u8; 16];
    match a {
        IpAddr::V4(v4) => {
            out[..4].copy_from_slice(&v4.octets());
            (FAMILY_V4, out)
        }
        IpAddr::V6(v6) => (FAMILY_V6, v6.octets()),
    }
}

/// Builds the kernel's relay entry. Every address must be of the source's
/// family (no v4/v6 translation in the kernel).
pub fn entry(source: SocketAddr, mode: Mode, outputs: &[Output]) -> Result<RelayValue> {
    if outputs.is_empty() || outputs.len() > RELAY_MAX_OUT {
        return Err(Error::Invalid(format!(
            "a kernel relay takes 1 to {RELAY_MAX_OUT} outputs, not {}",
            outputs.len()
        )));
    }
    if mode == Mode::Xdp && outputs.len() != 1 {
        return Err(Error::Invalid("an XDP relay has exactly one output".into()));
    }
    let (family, src) = family_and_addr(source.ip());
    let mut v = RelayValue {
        src,
        sport: source.port(),
        family,
        mode: mode.code(),
        n_out: outputs.len() as u32,
        ..Default::default()
    };
    for (slot, o) in v.out.iter_mut().zip(outputs) {
        let (fd, dst) = family_and_addr(o.dest.ip());
        let (ff, from) = family_and_addr(o.from.ip());
        if fd != family || ff != family {
            return Err(Error::Invalid(format!(
                "relay {source} -> {}: address families differ",
                o.dest
            )));
        }
        if o.from.ip().is_unspecified() {
            return Err(Error::Invalid(format!(
                "relay to {}: no source address",
                o.dest
            )));
        }
        *slot = RelayOut {
            dst,
            src: from,
            dport: o.dest.port(),
            sport: o.from.port(),
            ssrc: o.ssrc,
            seq_delta: o.seq_delta,
            start_seq: o.start_seq.unwrap_or(0),
            flags: if o.start_seq.is_some() {
                RELAY_OUT_START_SEQ
            } else {
                0
            },
        };
    }
    Ok(v)
}

/// One output's counters summed over CPUs; `first_seq` from the CPU that
/// sent first.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct OutputStats {
    pub packets: u64,
    pub bytes: u64,
    /// Packets left to the daemon's userspace relay.
    pub passed: u64,
    pub first_seq: Option<u16>,
    pub last_ns: u64,
}

impl Maps {
    fn relay_maps(&self) -> Result<&RelayMaps> {
        self.relay.as_ref().ok_or_else(|| {
            Error::Invalid(
                "the interface was attached by a version without the kernel relay (detach and attach again)"
                    .into(),
            )
        })
    }

    /// Whether the attached programs have the kernel relay.
    pub fn has_relay(&self) -> bool {
        self.relay.is_some()
    }

    /// Installs (or replaces) the relay of the flow `key`: zeroes its
    /// output counters on first install, writes `RELAYS[slot]`, then sets
    /// the flow's `FLOW_RELAY` flag.
    pub fn set_relay(&mut self, key: &FlowKey, value: &RelayValue) -> Result<()> {
        let flow: FlowValue = get(&self.flows, key)
            .map_err(|e| Error::io("reading the flow table", e))?
            .ok_or_else(|| Error::NoSuchFlow(super::flows::describe(key)))?;
        let rm = self.relay_maps()?;
        if flow.flags & FLOW_RELAY == 0 {
            let zero =
                vec![0u8; sys::value_stride(size_of::<RelayStats>()) * self.ncpus() as usize];
            for i in 0..RELAY_MAX_OUT as u32 {
                let idx = flow.slot * RELAY_MAX_OUT as u32 + i;
                sys::update_elem(rm.stats.fd().as_fd(), &idx.to_ne_bytes(), &zero, 0)
                    .map_err(|e| Error::io("zeroing relay counters", e))?;
            }
        }
        put(&rm.relays, &flow.slot, value, 0).map_err(|e| Error::io("writing the relay", e))?;
        let tc = value.mode != gateway_common::RELAY_XDP;
        let mut f = flow;
        f.flags |= FLOW_RELAY;
        if tc {
            f.flags |= FLOW_RELAY_TC;
        } else {
            f.flags &= !FLOW_RELAY_TC;
        }
        if f.flags != flow.flags {
            put(&self.flows, key, &f, sys::bpf::BPF_EXIST)
                .map_err(|e| Error::io("marking the flow relayed", e))?;
            self.sync_fast(key, Some(&f))?;
            self.refresh_port(key.port)?;
        }
        Ok(())
    }

    /// Removes the relay of flow `key` (the flag first, so the kernel stops
    /// using the entry, then the entry). A flow without one is left alone.
    pub fn clear_relay(&mut self, key: &FlowKey) -> Result<()> {
        let Some(flow): Option<FlowValue> =
            get(&self.flows, key).map_err(|e| Error::io("reading the flow table", e))?
        else {
            return Ok(());
        };
        if self.relay.is_none() {
            return Ok(());
        }
        if flow.flags & (FLOW_RELAY | FLOW_RELAY_TC) != 0 {
            let mut f = flow;
            f.flags &= !(FLOW_RELAY | FLOW_RELAY_TC);
            put(&self.flows, key, &f, sys::bpf::BPF_EXIST)
                .map_err(|e| Error::io("unmarking the flow", e))?;
            self.sync_fast(key, Some(&f))?;
            self.refresh_port(key.port)?;
        }
        put(
            &self.relay_maps()?.relays,
            &flow.slot,
            &RelayValue::default(),
            0,
        )
        .map_err(|e| Error::io("clearing the relay", e))
    }

    /// The relay entry of a stream slot (mode 0: none).
    pub fn relay(&self, slot: u32) -> Result<RelayValue> {
        let rm = self.relay_maps()?;
        get(&rm.relays, &slot)
            .map(Option::unwrap_or_default)
            .map_err(|e| Error::io("reading the relay", e))
    }

    /// Counters of output `i` of the relay on stream slot `slot`.
    pub fn relay_stats(&self, slot: u32, i: u32) -> Result<OutputStats> {
        let rm = self.relay_maps()?;
        let stride = sys::value_stride(size_of::<RelayStats>());
        let mut buf = vec![0u8; stride * self.ncpus() as usize];
        let idx = slot * RELAY_MAX_OUT as u32 + i;
        sys::lookup_elem(rm.stats.fd().as_fd(), &idx.to_ne_bytes(), &mut buf)
            .map_err(|e| Error::io("reading relay counters", e))?;
        let mut out = OutputStats::default();
        let mut first_ns = u64::MAX;
        for c in buf.chunks_exact(stride) {
            let s: RelayStats = read_pod(c);
            out.packets += s.packets;
            out.bytes += s.bytes;
            out.passed += s.passed;
            out.last_ns = out.last_ns.max(s.last_ns);
            if s.packets > 0 && s.first_ns < first_ns {
                first_ns = s.first_ns;
                out.first_seq = Some(s.first_seq as u16);
            }
        }
        Ok(out)
    }

    /// Every stream slot with a relay, and its entry.
    pub fn relays(&mut self) -> Result<Vec<(FlowKey, FlowValue, RelayValue)>> {
        let flows = self.flows()?;
        let mut out = Vec::new();
        for (k, v) in flows {
            if v.flags & FLOW_RELAY != 0 {
                out.push((k, v, self.relay(v.slot)?));
            }
        }
        Ok(out)
    }

    /// Removes every relay (a daemon starting on an attachment it adopts:
    /// the relays of the one before have no dialog any more). Returns how
    /// many there were.
    pub fn clear_relays(&mut self) -> Result<usize> {
        if self.relay.is_none() {
            return Ok(0);
        }
        let keys: Vec<FlowKey> = self.relays()?.into_iter().map(|(k, _, _)| k).collect();
        for k in &keys {
            self.clear_relay(k)?;
        }
        Ok(keys.len())
    }

    /// Lets XDP redirect relayed packets to interface `ifindex` (it must
    /// accept XDP frames: a driver with ndo_xdp_xmit, a veth whose peer
    /// runs XDP or has GRO on).
    pub fn add_tx_port(&self, ifindex: u32) -> Result<()> {
        let rm = self.relay_maps()?;
        // struct bpf_devmap_val: ifindex, then a program fd (0: none).
        let mut v = [0u8; 8];
        v[..4].copy_from_slice(&ifindex.to_ne_bytes());
        sys::update_elem(rm.tx_ports.fd().as_fd(), &ifindex.to_ne_bytes(), &v, 0)
            .map_err(|e| Error::io(format!("adding interface {ifindex} to TX_PORTS"), e))
    }

    /// Records a VLAN device of the attached interface.
    pub fn add_vlan_dev(&self, ifindex: u32, dev: &VlanDev) -> Result<()> {
        let rm = self.relay_maps()?;
        sys::update_elem(
            rm.vlan_devs.fd().as_fd(),
            &ifindex.to_ne_bytes(),
            pod_bytes(dev),
            0,
        )
        .map_err(|e| Error::io("writing VLAN_DEVS", e))
    }
}

/// VLAN devices whose parent is `parent`, from /proc/net/vlan/config
/// (`name | vid | parent`). Empty when the 8021q module is not loaded.
pub fn vlan_devices(parent: &str) -> Vec<(String, u16)> {
    let Ok(text) = std::fs::read_to_string("/proc/net/vlan/config") else {
        return Vec::new();
    };
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let mut f = l.split('|').map(str::trim);
            let (name, vid, dev) = (f.next()?, f.next()?, f.next()?);
            (dev == parent).then(|| Some((name.to_string(), vid.parse().ok()?)))?
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(dest: &str, from: &str) -> Output {
        Output {
            dest: dest.parse().unwrap(),
            from: from.parse().unwrap(),
            ssrc: 7,
            seq_delta: 100,
            start_seq: None,
        }
    }

    #[test]
    fn entry_checks_families_and_counts() {
        let src: SocketAddr = "198.18.1.2:5000".parse().unwrap();
        let e = entry(
            src,
            Mode::Xdp,
            &[out("198.18.2.2:6000", "198.18.2.1:30010")],
        )
        .unwrap();
        assert_eq!(e.mode, gateway_common::RELAY_XDP);
        assert_eq!(e.n_out, 1);
        assert_eq!(e.family, FAMILY_V4);
        assert_eq!(&e.src[..4], &[198, 18, 1, 2]);
        assert_eq!(e.out[0].dport, 6000);
        assert_eq!(e.out[0].sport, 30010);
        assert_eq!(e.out[0].flags, 0);
        assert!(entry(
            src,
            Mode::Xdp,
            &[out("[2001:db8::2]:6000", "[2001:db8::1]:1")]
        )
        .is_err());
        assert!(entry(src, Mode::Xdp, &[]).is_err());
        let two = [
            out("198.18.2.2:6000", "198.18.2.1:1"),
            out("198.18.2.3:6000", "198.18.2.1:2"),
        ];
        assert!(entry(src, Mode::Xdp, &two).is_err());
        let e = entry(src, Mode::TcOnly, &two).unwrap();
        assert_eq!(e.n_out, 2);
        let mut o = out("198.18.2.2:6000", "0.0.0.0:1");
        assert!(entry(src, Mode::TcCopy, std::slice::from_ref(&o)).is_err());
        o.from = "198.18.2.1:1".parse().unwrap();
        o.start_seq = Some(65530);
        let e = entry(src, Mode::TcCopy, &[o]).unwrap();
        assert_eq!(e.out[0].flags, RELAY_OUT_START_SEQ);
        assert_eq!(e.out[0].start_seq, 65530);
    }

    #[test]
    fn mode_choice() {
        assert_eq!(Mode::choose(1, false), Mode::Xdp);
        assert_eq!(Mode::choose(2, false), Mode::TcOnly);
        assert_eq!(Mode::choose(1, true), Mode::TcCopy);
        assert_eq!(Mode::from_code(Mode::TcOnly.code()), Some(Mode::TcOnly));
        assert_eq!(Mode::from_code(0), None);
    }
}

/// One relay as operators see it (`gateway relay list`, metrics).
#[derive(Clone, Debug, serde::Serialize)]
pub struct RelayView {
    pub flow: String,
    pub name: String,
    pub slot: u32,
    pub mode: Option<Mode>,
    /// The confirmed source the kernel takes packets from.
    pub source: SocketAddr,
    pub outputs: Vec<OutputView>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct OutputView {
    pub dest: SocketAddr,
    pub from: SocketAddr,
    pub ssrc: u32,
    pub seq_delta: u16,
    pub start_seq: Option<u16>,
    /// `kernel`: these counters are the kernel's (per-CPU, summed).
    pub counted_by: &'static str,
    #[serde(flatten)]
    pub stats: OutputStats,
}

fn addr(family: u8, a: &[u8; 16], port: u16) -> SocketAddr {
    let ip = if family == FAMILY_V4 {
        IpAddr::from([a[0], a[1], a[2], a[3]])
    } else {
        IpAddr::from(*a)
    };
    SocketAddr::new(ip, port)
}

impl Maps {
    /// Every relay with its outputs' counters.
    pub fn relay_views(&mut self) -> Result<Vec<RelayView>> {
        let mut out = Vec::new();
        for (k, v, r) in self.relays()? {
            let mut outputs = Vec::new();
            for (i, o) in r.out.iter().take(r.n_out as usize).enumerate() {
                outputs.push(OutputView {
                    dest: addr(r.family, &o.dst, o.dport),
                    from: addr(r.family, &o.src, o.sport),
                    ssrc: o.ssrc,
                    seq_delta: o.seq_delta,
                    start_seq: (o.flags & RELAY_OUT_START_SEQ != 0).then_some(o.start_seq),
                    counted_by: "kernel",
                    stats: self.relay_stats(v.slot, i as u32)?,
                });
            }
            out.push(RelayView {
                flow: super::flows::describe(&k),
                name: super::flows::flow_name(&v),
                slot: v.slot,
                mode: Mode::from_code(r.mode),
                source: addr(r.family, &r.src, r.sport),
                outputs,
            });
        }
        Ok(out)
    }
}
