//! Open handles on the data plane's maps (fresh from a load, or pinned)
//! and the read-out without a system call per stream: the flow table by
//! BPF_MAP_LOOKUP_BATCH, the statistics array through its mmap.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    os::fd::AsFd,
    sync::{Arc, Mutex, MutexGuard},
};

use aya::maps::MapData;
use gateway_common::{
    counter, map_names, stats, Config, EgressKey, EgressStats, FlowKey, FlowValue, StreamStats,
};

use super::{addr_of_egress, possible_cpus, Error, Result, StreamSummary};
use crate::sys::{self, pod_bytes, read_pod, BatchReader, MmapArray};

/// Typed BPF_MAP_LOOKUP_ELEM on a non-per-CPU map.
pub(crate) fn get<K: aya::Pod, V: aya::Pod + Default>(
    m: &MapData,
    k: &K,
) -> std::io::Result<Option<V>> {
    let mut buf = vec![0u8; size_of::<V>()];
    Ok(sys::lookup_elem(m.fd().as_fd(), pod_bytes(k), &mut buf)?.then(|| read_pod::<V>(&buf)))
}

/// Typed BPF_MAP_UPDATE_ELEM on a non-per-CPU map.
pub(crate) fn put<K: aya::Pod, V: aya::Pod>(
    m: &MapData,
    k: &K,
    v: &V,
    flags: u64,
) -> std::io::Result<()> {
    sys::update_elem(m.fd().as_fd(), pod_bytes(k), pod_bytes(v), flags)
}

/// A duplicate of a map fd, so a reader owned by `Maps` can use it while
/// `Maps` is mutably borrowed.
fn dup(fd: std::os::fd::BorrowedFd<'_>) -> Result<std::os::fd::OwnedFd> {
    fd.try_clone_to_owned()
        .map_err(|e| Error::io("dup of a map fd", e))
}

/// One stream as read from the kernel.
#[derive(Clone, Debug)]
pub struct StreamRow {
    pub key: FlowKey,
    pub flow: FlowValue,
    pub stats: StreamSummary,
}

/// Open handles on the data plane's maps (fresh from a load, or pinned) and
/// the reusable read-out state.
pub struct Maps {
    pub(crate) flows: MapData,
    pub(crate) stream_stats: MapData,
    pub(crate) port_flags: MapData,
    pub(crate) config: MapData,
    pub(crate) counters: MapData,
    pub(crate) egress: MapData,
    /// The relay maps (`None`: pinned by a version without the kernel relay;
    /// re-attach to get it).
    pub(crate) relay: Option<RelayMaps>,
    /// The port-level any-address fast path (`None`: pinned by a version
    /// without it; the hash lookup serves).
    pub(crate) fast: Option<FastMaps>,
    /// The SIP flood guard (`None`: pinned by a version without it).
    pub(crate) sip: Option<super::sip_guard::SipMaps>,
    mmap: MmapArray,
    ncpus: u32,
    max_streams: u32,
    flow_reader: BatchReader,
    counter_reader: BatchReader,
    egress_reader: BatchReader,
    slot_buf: Vec<u8>,
}

/// Maps a version of the programs may lack (pinned by an older one).
struct OptionalMaps {
    relay: Option<RelayMaps>,
    fast: Option<FastMaps>,
    sip: Option<super::sip_guard::SipMaps>,
}

/// `PORT_ANY_FLOW` and `FLOW_SLOTS`.
pub(crate) struct FastMaps {
    pub(crate) port_any_flow: MapData,
    pub(crate) flow_slots: MapData,
}

/// The kernel relay's maps.
pub(crate) struct RelayMaps {
    pub(crate) relays: MapData,
    pub(crate) stats: MapData,
    pub(crate) tx_ports: MapData,
    pub(crate) vlan_devs: MapData,
}

fn map_data(name: &str, map: aya::maps::Map) -> Result<MapData> {
    use aya::maps::Map::*;
    match map {
        Array(m) | PerCpuArray(m) | HashMap(m) | PerCpuLruHashMap(m) | PerCpuHashMap(m)
        | LruHashMap(m) | DevMapHash(m) => Ok(m),
        other => Err(Error::Invalid(format!(
            "map {name} has unexpected type {other:?}"
        ))),
    }
}

impl Maps {
    /// Takes the maps out of a freshly loaded object, pinning them into
    /// `pin_dir` if given.
    pub fn from_ebpf(ebpf: &mut aya::Ebpf, pin_dir: Option<&std::path::Path>) -> Result<Self> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| Error::Invalid(format!("map {name} missing from the object")))
                .and_then(|m| map_data(name, m))
                .and_then(|m| {
                    if let Some(dir) = pin_dir {
                        m.pin(dir.join(name))
                            .map_err(|e| Error::bpf(format!("pinning map {name}"), e))?;
                    }
                    Ok(m)
                })
        };
        let flows = take(map_names::FLOWS)?;
        let stream_stats = take(map_names::STREAM_STATS)?;
        let port_flags = take(map_names::PORT_FLAGS)?;
        let config = take(map_names::CONFIG)?;
        let counters = take(map_names::COUNTERS)?;
        let egress = take(map_names::EGRESS)?;
        let relay = RelayMaps {
            relays: take(map_names::RELAYS)?,
            stats: take(map_names::RELAY_STATS)?,
            tx_ports: take(map_names::TX_PORTS)?,
            vlan_devs: take(map_names::VLAN_DEVS)?,
        };
        let fast = FastMaps {
            port_any_flow: take(map_names::PORT_ANY_FLOW)?,
            flow_slots: take(map_names::FLOW_SLOTS)?,
        };
        let sip = super::sip_guard::SipMaps {
            guard: take(map_names::SIP_GUARD)?,
            allow: take(map_names::SIP_ALLOW)?,
        };
        // SIP_BUCKETS and SIP_GLOBAL are the kernel's alone.
        Self::new(
            flows,
            stream_stats,
            port_flags,
            config,
            counters,
            egress,
            OptionalMaps {
                relay: Some(relay),
                fast: Some(fast),
                sip: Some(sip),
            },
        )
    }

    /// Opens the maps pinned in `dir`.
    pub fn from_pins(dir: &std::path::Path) -> Result<Self> {
        let open = |name: &str| {
            MapData::from_pin(dir.join(name))
                .map_err(|e| Error::bpf(format!("opening pinned map {name}"), e))
        };
        // Absent when an older version attached the interface.
        let relay = (|| {
            Some(RelayMaps {
                relays: open(map_names::RELAYS).ok()?,
                stats: open(map_names::RELAY_STATS).ok()?,
                tx_ports: open(map_names::TX_PORTS).ok()?,
                vlan_devs: open(map_names::VLAN_DEVS).ok()?,
            })
        })();
        let fast = (|| {
            Some(FastMaps {
                port_any_flow: open(map_names::PORT_ANY_FLOW).ok()?,
                flow_slots: open(map_names::FLOW_SLOTS).ok()?,
            })
        })();
        let sip = (|| {
            Some(super::sip_guard::SipMaps {
                guard: open(map_names::SIP_GUARD).ok()?,
                allow: open(map_names::SIP_ALLOW).ok()?,
            })
        })();
        Self::new(
            open(map_names::FLOWS)?,
            open(map_names::STREAM_STATS)?,
            open(map_names::PORT_FLAGS)?,
            open(map_names::CONFIG)?,
            open(map_names::COUNTERS)?,
            open(map_names::EGRESS)?,
            OptionalMaps { relay, fast, sip },
        )
    }

    fn new(
        flows: MapData,
        stream_stats: MapData,
        port_flags: MapData,
        config: MapData,
        counters: MapData,
        egress: MapData,
        optional: OptionalMaps,
    ) -> Result<Self> {
        let OptionalMaps { relay, fast, sip } = optional;
        let ncpus = possible_cpus()?;
        let info = stream_stats.info().map_err(|e| Error::bpf("map info", e))?;
        let slots = info.max_entries();
        if slots % ncpus != 0 {
            return Err(Error::Invalid(format!(
                "stream slot array has {slots} entries, not a multiple of {ncpus} CPUs (attached by another kernel/CPU set?)"
            )));
        }
        let max_streams = slots / ncpus;
        let mmap = MmapArray::map(
            stream_stats.fd().as_fd(),
            slots as usize * size_of::<StreamStats>(),
        )
        .map_err(|e| Error::io("mmap of the stream statistics array", e))?;
        let n = ncpus as usize;
        Ok(Maps {
            flow_reader: BatchReader::new(size_of::<FlowKey>(), size_of::<FlowValue>(), None, 256),
            counter_reader: BatchReader::new(4, 8, Some(n), counter::COUNT as usize),
            egress_reader: BatchReader::new(
                size_of::<EgressKey>(),
                size_of::<EgressStats>(),
                Some(n),
                256,
            ),
            slot_buf: vec![0; n * size_of::<StreamStats>()],
            flows,
            stream_stats,
            port_flags,
            config,
            counters,
            egress,
            relay,
            fast,
            sip,
            mmap,
            ncpus,
            max_streams,
        })
    }

    pub fn ncpus(&self) -> u32 {
        self.ncpus
    }

    /// The stream statistics array (for per-key baselines in benchmarks).
    pub fn stream_stats_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.stream_stats.fd().as_fd()
    }

    pub fn max_streams(&self) -> u32 {
        self.max_streams
    }

    pub fn config(&self) -> Result<Config> {
        get(&self.config, &0u32)
            .map(Option::unwrap_or_default)
            .map_err(|e| Error::io("reading config", e))
    }

    pub fn set_config(&mut self, c: &Config) -> Result<()> {
        put(&self.config, &0u32, c, 0).map_err(|e| Error::io("writing config", e))
    }

    /// All flows, with one BPF_MAP_LOOKUP_BATCH call per 256 entries.
    pub fn flows(&mut self) -> Result<Vec<(FlowKey, FlowValue)>> {
        let mut out = Vec::new();
        let fd = dup(self.flows.fd().as_fd())?;
        self.flow_reader
            .read_all(fd.as_fd(), |k, v| {
                out.push((read_pod::<FlowKey>(k), read_pod::<FlowValue>(v)));
            })
            .map_err(|e| Error::io("reading the flow table", e))?;
        out.sort_by_key(|(k, _)| *k);
        Ok(out)
    }

    /// Reads one stream's per-CPU slots through the mmapped array (no syscall).
    pub fn stream_slots(&mut self, slot: u32) -> &[u8] {
        let size = size_of::<StreamStats>();
        let off = slot as usize * self.ncpus as usize * size;
        if !self.mmap.read(off, &mut self.slot_buf) {
            self.slot_buf.fill(0);
        }
        &self.slot_buf
    }

    /// Merged statistics of one stream slot.
    pub fn stream_summary(&mut self, slot: u32) -> StreamSummary {
        let mut slots = vec![StreamStats::default(); self.ncpus as usize];
        self.merge_slot(slot, &mut slots)
    }

    /// Decodes a stream's per-CPU slots into `buf` (one entry per CPU) and
    /// merges them.
    fn merge_slot(&mut self, slot: u32, buf: &mut [StreamStats]) -> StreamSummary {
        let bytes = self.stream_slots(slot);
        for (c, s) in buf.iter_mut().enumerate() {
            *s = read_pod::<StreamStats>(&bytes[c * size_of::<StreamStats>()..]);
        }
        stats::merge(buf)
    }

    /// Every stream: the flow table in batches, then each stream's slots
    /// from the mapping. The cost is one syscall per 256 flows.
    pub fn streams(&mut self) -> Result<Vec<StreamRow>> {
        let flows = self.flows()?;
        let mut rows = Vec::with_capacity(flows.len());
        let mut slots = vec![StreamStats::default(); self.ncpus as usize];
        for (key, flow) in flows {
            rows.push(StreamRow {
                key,
                flow,
                stats: self.merge_slot(flow.slot, &mut slots),
            });
        }
        Ok(rows)
    }

    /// Zeroes a stream slot (all CPUs) before it is given to a new flow.
    /// Keeps the port-level any-address fast path in step with the flow
    /// table for `key`: its value by slot, then the port's index (or, with
    /// `None`, the port's index cleared first).
    pub(crate) fn sync_fast(&self, key: &FlowKey, value: Option<&FlowValue>) -> Result<()> {
        let Some(f) = &self.fast else {
            return Ok(());
        };
        if key.family != gateway_common::FAMILY_ANY || key.by_ssrc != 0 {
            return Ok(());
        }
        let port = key.port as u32;
        match value {
            Some(v) => {
                put(&f.flow_slots, &v.slot, v, 0)
                    .map_err(|e| Error::io("writing FLOW_SLOTS", e))?;
                put(&f.port_any_flow, &port, &(v.slot + 1), 0)
                    .map_err(|e| Error::io("writing PORT_ANY_FLOW", e))
            }
            None => put(&f.port_any_flow, &port, &0u32, 0)
                .map_err(|e| Error::io("clearing PORT_ANY_FLOW", e)),
        }
    }

    pub(crate) fn zero_slot(&self, slot: u32) -> bool {
        let size = self.ncpus as usize * size_of::<StreamStats>();
        self.mmap.zero(slot as usize * size, size)
    }

    /// Global counters summed over CPUs, indexed by `gateway_common::counter`.
    pub fn counters(&mut self) -> Result<[u64; counter::COUNT as usize]> {
        let mut out = [0u64; counter::COUNT as usize];
        let fd = dup(self.counters.fd().as_fd())?;
        let sum = |v: &[u8]| -> u64 {
            v.as_chunks::<8>()
                .0
                .iter()
                .map(|c| u64::from_ne_bytes(*c))
                .sum()
        };
        let batch = self.counter_reader.read_all(fd.as_fd(), |k, v| {
            let idx = u32::from_ne_bytes([k[0], k[1], k[2], k[3]]) as usize;
            if let Some(slot) = out.get_mut(idx) {
                *slot = sum(v);
            }
        });
        match batch {
            Ok(_) => Ok(out),
            // Batch lookup on per-CPU arrays came with 5.13; before, one
            // lookup per counter (16 of them), so 5.9-5.12 kernels work.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL | libc::EOPNOTSUPP | 524)
                ) =>
            {
                let mut v = vec![0u8; sys::value_stride(8) * self.ncpus as usize];
                for (i, slot) in out.iter_mut().enumerate() {
                    if sys::lookup_elem(fd.as_fd(), &(i as u32).to_ne_bytes(), &mut v)
                        .map_err(|e| Error::io("reading global counters", e))?
                    {
                        *slot = sum(&v);
                    }
                }
                Ok(out)
            }
            Err(e) => Err(Error::io("reading global counters", e)),
        }
    }

    /// Egress counters per destination, summed over CPUs.
    pub fn egress(&mut self) -> Result<BTreeMap<SocketAddr, EgressStats>> {
        let mut out = BTreeMap::new();
        let fd = dup(self.egress.fd().as_fd())?;
        let stride = sys::value_stride(size_of::<EgressStats>());
        self.egress_reader
            .read_all(fd.as_fd(), |k, v| {
                let key = read_pod::<EgressKey>(k);
                let mut sum = EgressStats::default();
                for c in v.chunks_exact(stride) {
                    let s = read_pod::<EgressStats>(c);
                    sum.packets += s.packets;
                    sum.bytes += s.bytes;
                    sum.last_ns = sum.last_ns.max(s.last_ns);
                }
                out.insert(addr_of_egress(&key), sum);
            })
            .map_err(|e| Error::io("reading egress counters", e))?;
        Ok(out)
    }
}

/// The daemon's one handle on the maps, shared by the session layer (flow
/// table), the exporter (scrapes) and the daemon's poll loop. Opened once.
#[derive(Clone)]
pub struct Shared(Arc<Mutex<Maps>>);

impl Shared {
    pub fn new(maps: Maps) -> Shared {
        Shared(Arc::new(Mutex::new(maps)))
    }

    /// The maps, for one read-out or update (never held across an await).
    pub fn lock(&self) -> MutexGuard<'_, Maps> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
