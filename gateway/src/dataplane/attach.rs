//! Loading the object, attaching XDP (ingress) and TC (egress) to an
//! interface, pinning programs, links and maps under a per-interface bpffs
//! directory so that the attachment outlives the command, and detaching.
//!
//! Pin layout: `<bpffs>/gateway/<scope>/<iface>/` where scope is the network
//! namespace name (`host` for the caller's own), holding the maps by name,
//! `xdp_prog`, `tc_prog` (egress), `tc_in_prog` (ingress), `xdp_link` and
//! (with TCX) `tc_link` and `tc_in_link`.

use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        tc::{self, SchedClassifier, TcAttachType},
        Xdp, XdpMode,
    },
    EbpfLoader,
};
use gateway_common::{
    map_names, prog_names, Config, StreamStats, DSCP_OFF, NCPUS_GLOBAL, POLICY_DROP, POLICY_PASS,
    XDP_MODE_NATIVE, XDP_MODE_SKB,
};

use super::{possible_cpus, Error, Maps, Result};
use crate::sys;

pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";
const XDP_PROG: &str = "xdp_prog";
const TC_PROG: &str = "tc_prog";
const XDP_LINK: &str = "xdp_link";
const TC_LINK: &str = "tc_link";
const TC_IN_PROG: &str = "tc_in_prog";
const TC_IN_LINK: &str = "tc_in_link";
const TC_COPIES_PROG: &str = "tc_copies_prog";
/// `Config::tc_kind`.
pub const TC_KIND_TCX: u32 = 1;
pub const TC_KIND_NETLINK: u32 = 2;

/// Where an interface's pins live.
#[derive(Clone, Debug)]
pub struct Target {
    pub iface: String,
    /// Network namespace name, `None` for the caller's own.
    pub netns: Option<String>,
    /// Mount point of the bpffs.
    pub bpffs: PathBuf,
}

impl Target {
    pub fn new(iface: &str, netns: Option<&str>, bpffs: Option<&Path>) -> Result<Self> {
        if iface.is_empty()
            || iface.len() > 15
            || iface.contains(['/', '\0'])
            || iface == "."
            || iface == ".."
        {
            return Err(Error::Invalid(format!("invalid interface name {iface:?}")));
        }
        Ok(Target {
            iface: iface.to_string(),
            netns: netns.map(str::to_string),
            bpffs: bpffs
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_BPFFS)),
        })
    }

    pub fn scope(&self) -> &str {
        self.netns.as_deref().unwrap_or("host")
    }

    pub fn pin_dir(&self) -> PathBuf {
        self.bpffs
            .join("gateway")
            .join(self.scope())
            .join(&self.iface)
    }

    pub fn is_attached(&self) -> bool {
        self.pin_dir().join(XDP_LINK).exists()
    }

    /// Serialises writers (attach, detach, flow changes) for this interface.
    pub fn lock(&self) -> Result<fs::File> {
        let dir = Path::new("/run/gateway");
        fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let path = dir.join(format!("{}.{}.lock", self.scope(), self.iface));
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        f.lock()
            .map_err(|e| Error::io(format!("locking {}", path.display()), e))?;
        Ok(f)
    }

    /// Opens the pinned maps of an attached interface.
    pub fn open(&self) -> Result<Maps> {
        if !self.is_attached() {
            return Err(Error::NotAttached(self.iface.clone()));
        }
        Maps::from_pins(&self.pin_dir())
    }
}

pub use crate::config::{Mode, Settings};

impl Settings {
    pub fn apply(&self, c: &mut Config) {
        c.media_port_min = self.media_ports.0;
        c.media_port_max = self.media_ports.1;
        c.unknown_policy = if self.unknown_drop {
            POLICY_DROP
        } else {
            POLICY_PASS
        };
        c.dscp = self.dscp.map(u32::from).unwrap_or(DSCP_OFF);
        c.egress_port_min = self.egress_ports.0;
        c.egress_port_max = self.egress_ports.1;
    }

    pub fn from_config(c: &Config) -> Self {
        Settings {
            media_ports: (c.media_port_min, c.media_port_max),
            unknown_drop: c.unknown_policy == POLICY_DROP,
            dscp: (c.dscp != DSCP_OFF).then_some(c.dscp as u8),
            egress_ports: (c.egress_port_min, c.egress_port_max),
        }
    }
}

/// Loads the embedded object with maps sized for `max_streams`, without
/// attaching anything (tests and benchmarks use this directly).
pub fn load(max_streams: u32, pin_dir: Option<&Path>) -> Result<(aya::Ebpf, Maps)> {
    if max_streams == 0 || max_streams > 1 << 20 {
        return Err(Error::Invalid(format!(
            "--max-streams must be 1..=1048576, not {max_streams}"
        )));
    }
    let ncpus = possible_cpus()?;
    let slots = max_streams
        .checked_mul(ncpus)
        .filter(|s| (*s as u64) * size_of::<StreamStats>() as u64 <= 1 << 31)
        .ok_or_else(|| {
            Error::Invalid(format!("{max_streams} streams x {ncpus} CPUs is too large"))
        })?;
    let mut ebpf = EbpfLoader::new()
        .override_global(NCPUS_GLOBAL, &ncpus, true)
        .map_max_entries(map_names::FLOWS, max_streams)
        .map_max_entries(map_names::STREAM_STATS, slots)
        .map_max_entries(map_names::RELAYS, max_streams)
        .map_max_entries(map_names::FLOW_SLOTS, max_streams)
        .map_max_entries(
            map_names::RELAY_STATS,
            max_streams * gateway_common::RELAY_MAX_OUT as u32,
        )
        .load(super::EBPF_OBJECT)
        .map_err(|e| Error::bpf("loading the eBPF object", e))?;
    let maps = Maps::from_ebpf(&mut ebpf, pin_dir)?;
    Ok((ebpf, maps))
}

/// Result of a successful attach.
#[derive(Debug, serde::Serialize)]
pub struct Attached {
    pub iface: String,
    pub ifindex: u32,
    pub mode: &'static str,
    pub tc: &'static str,
    pub pin_dir: PathBuf,
    pub max_streams: u32,
    pub ncpus: u32,
}

pub fn mode_name(m: u32) -> &'static str {
    match m {
        XDP_MODE_NATIVE => "native",
        XDP_MODE_SKB => "skb",
        _ => "unknown",
    }
}

/// Removes the pin directory unless disarmed: no half-attached interface
/// survives a failed attach.
struct Cleanup<'a> {
    dir: &'a Path,
    armed: bool,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_dir_all(self.dir);
        }
    }
}

fn ensure_bpffs(target: &Target) -> Result<()> {
    let mnt = &target.bpffs;
    if sys::is_bpffs(mnt) {
        return Ok(());
    }
    fs::create_dir_all(mnt).map_err(|e| Error::io(format!("creating {}", mnt.display()), e))?;
    sys::mount_bpffs(mnt)
        .map_err(|e| Error::io(format!("mounting a bpffs at {}", mnt.display()), e))
}

/// Loads, attaches and pins. Holds the interface lock for its duration.
pub fn attach(
    target: &Target,
    mode: Mode,
    max_streams: u32,
    settings: &Settings,
    relay_to: &[String],
) -> Result<Attached> {
    validate(settings)?;
    let mut relay_ifindexes = Vec::new();
    for name in relay_to {
        relay_ifindexes
            .push(sys::if_nametoindex(name).ok_or_else(|| Error::UnknownInterface(name.clone()))?);
    }
    let _lock = target.lock()?;
    let ifindex = sys::if_nametoindex(&target.iface)
        .ok_or_else(|| Error::UnknownInterface(target.iface.clone()))?;
    if target.is_attached() {
        return Err(Error::AlreadyAttached(target.iface.clone()));
    }
    ensure_bpffs(target)?;
    let dir = target.pin_dir();
    if dir.exists() {
        // Leftovers of an interrupted attach: no link, so nothing is attached.
        fs::remove_dir_all(&dir)
            .map_err(|e| Error::io(format!("removing stale {}", dir.display()), e))?;
    }
    fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let mut cleanup = Cleanup {
        dir: &dir,
        armed: true,
    };

    let (mut ebpf, mut maps) = load(max_streams, Some(&dir))?;
    let ncpus = maps.ncpus();

    // XDP.
    let xdp: &mut Xdp = ebpf
        .program_mut(prog_names::XDP)
        .ok_or_else(|| Error::Invalid("XDP program missing from the object".into()))?
        .try_into()
        .map_err(|e| Error::bpf("XDP program", e))?;
    xdp.load()
        .map_err(|e| Error::bpf("verifying the XDP program", e))?;
    let tries: &[(XdpMode, u32)] = match mode {
        Mode::Auto => &[
            (XdpMode::Driver, XDP_MODE_NATIVE),
            (XdpMode::Skb, XDP_MODE_SKB),
        ],
        Mode::Native => &[(XdpMode::Driver, XDP_MODE_NATIVE)],
        Mode::Skb => &[(XdpMode::Skb, XDP_MODE_SKB)],
    };
    let mut attached = None;
    let mut last_err = None;
    for (m, code) in tries {
        match xdp.attach(ifindex, *m) {
            Ok(id) => {
                attached = Some((id, *code));
                break;
            }
            Err(e) => last_err = Some(e),
        }
    }
    let (xdp_id, xdp_mode) = match attached {
        Some(a) => a,
        None => {
            return Err(Error::bpf(
                format!("attaching XDP to {} in {mode:?} mode", target.iface),
                last_err
                    .map(anyhow::Error::from)
                    .unwrap_or_else(|| anyhow::anyhow!("no mode to try")),
            ))
        }
    };
    let xdp_link = xdp
        .take_link(xdp_id)
        .map_err(|e| Error::bpf("XDP link", e))?;
    let xdp_link = FdLink::try_from(xdp_link).map_err(|e| {
        Error::bpf(
            "XDP is attached through netlink, not a bpf_link (kernel older than 5.9?)",
            e,
        )
    })?;
    xdp_link
        .pin(dir.join(XDP_LINK))
        .map_err(|e| Error::bpf("pinning the XDP link", e))?;
    xdp.pin(dir.join(XDP_PROG))
        .map_err(|e| Error::bpf("pinning the XDP program", e))?;

    // TC egress (counting) and ingress (relay copies): TCX (a pinnable
    // link) on 6.6+, else clsact filters.
    let has_tcx = aya::util::KernelVersion::current()
        .is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0));
    if has_tcx {
        // TCX needs no qdisc.
    } else if let Err(e) = tc::qdisc_add_clsact(ifindex) {
        if !format!("{e}").contains("exists") {
            return Err(Error::bpf("adding the clsact qdisc", e));
        }
    }
    let mut tc_kind = TC_KIND_TCX;
    for (prog, at, prog_pin, link_pin) in [
        (
            prog_names::TC_EGRESS,
            TcAttachType::Egress,
            TC_PROG,
            TC_LINK,
        ),
        (
            prog_names::TC_INGRESS,
            TcAttachType::Ingress,
            TC_IN_PROG,
            TC_IN_LINK,
        ),
    ] {
        let tc_prog: &mut SchedClassifier = ebpf
            .program_mut(prog)
            .ok_or_else(|| Error::Invalid(format!("TC program {prog} missing from the object")))?
            .try_into()
            .map_err(|e| Error::bpf("TC program", e))?;
        tc_prog
            .load()
            .map_err(|e| Error::bpf(format!("verifying the TC program {prog}"), e))?;
        let tc_id = tc_prog
            .attach(ifindex, at)
            .map_err(|e| Error::bpf(format!("attaching TC {at:?} to {}", target.iface), e))?;
        let tc_link = tc_prog
            .take_link(tc_id)
            .map_err(|e| Error::bpf("TC link", e))?;
        if <&FdLink>::try_from(&tc_link).is_ok() {
            // TCX: a bpf_link, pinned so that it outlives this process.
            let fd_link = FdLink::try_from(tc_link).map_err(|e| Error::bpf("TC link", e))?;
            fd_link
                .pin(dir.join(link_pin))
                .map_err(|e| Error::bpf("pinning the TC link", e))?;
        } else {
            // A netlink filter (no TCX before 6.6) has nothing to pin, and
            // aya removes it when its link value is dropped (also inside a
            // failed `FdLink::try_from`): it is left in place on purpose.
            // `detach` removes it by name (tc::qdisc_detach_program).
            // Until this was found on 6.1 in the arm64 VM (`cargo xtask
            // vm-test`), the filter went away when `attach` returned.
            tc_kind = TC_KIND_NETLINK;
            std::mem::forget(tc_link);
        }
        tc_prog
            .pin(dir.join(prog_pin))
            .map_err(|e| Error::bpf("pinning the TC program", e))?;
    }

    // The TC relay's tail call. The program array is pinned: its entries
    // live only while user space holds a reference to it.
    {
        let copies: &mut SchedClassifier = ebpf
            .program_mut(prog_names::TC_RELAY_COPIES)
            .ok_or_else(|| Error::Invalid("TC relay program missing from the object".into()))?
            .try_into()
            .map_err(|e| Error::bpf("TC relay program", e))?;
        copies
            .load()
            .map_err(|e| Error::bpf("verifying the TC relay program", e))?;
        copies
            .pin(dir.join(TC_COPIES_PROG))
            .map_err(|e| Error::bpf("pinning the TC relay program", e))?;
        let fd = copies
            .fd()
            .map_err(|e| Error::bpf("TC relay program fd", e))?
            .try_clone()
            .map_err(|e| Error::io("dup of the TC relay program fd", e))?;
        let map = ebpf
            .map_mut(map_names::TC_JUMP)
            .ok_or_else(|| Error::Invalid("map TC_JUMP missing from the object".into()))?;
        let mut jump =
            aya::maps::ProgramArray::try_from(map).map_err(|e| Error::bpf("map TC_JUMP", e))?;
        jump.set(0, &fd, 0)
            .map_err(|e| Error::bpf("filling TC_JUMP", e))?;
        jump.pin(dir.join(map_names::TC_JUMP))
            .map_err(|e| Error::bpf("pinning TC_JUMP", e))?;
    }

    // Relay: where XDP may redirect, and the VLAN devices it may send
    // tagged packets back out through.
    for i in &relay_ifindexes {
        maps.add_tx_port(*i)?;
    }
    for (name, vid) in super::relay::vlan_devices(&target.iface) {
        if let Some(vi) = sys::if_nametoindex(&name) {
            maps.add_vlan_dev(
                vi,
                &gateway_common::VlanDev {
                    parent_ifindex: ifindex,
                    vid,
                    _pad: 0,
                },
            )?;
        }
    }

    // Configuration and attach record, then the maps.
    let mut cfg = Config::default();
    settings.apply(&mut cfg);
    cfg.xdp_mode = xdp_mode;
    cfg.max_streams = max_streams;
    cfg.ncpus = ncpus;
    cfg.tc_kind = tc_kind;
    cfg.attached_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    maps.set_config(&cfg)?;
    cleanup.armed = false;
    // With TC_KIND_NETLINK the filter stays attached after we exit (the
    // program pin keeps the program alive); `detach` removes it by name.
    Ok(Attached {
        iface: target.iface.clone(),
        ifindex,
        mode: mode_name(xdp_mode),
        tc: if tc_kind == TC_KIND_TCX {
            "tcx"
        } else {
            "netlink"
        },
        pin_dir: dir.clone(),
        max_streams,
        ncpus,
    })
}

fn validate(s: &Settings) -> Result<()> {
    for (what, (lo, hi)) in [("media", s.media_ports), ("egress", s.egress_ports)] {
        if lo > hi {
            return Err(Error::Invalid(format!(
                "{what} port range {lo}-{hi} is empty"
            )));
        }
    }
    if s.dscp.is_some_and(|d| d > 63) {
        return Err(Error::Invalid("DSCP must be 0..=63".into()));
    }
    Ok(())
}

/// Changes the kernel-side settings of an attached interface.
pub fn set(target: &Target, settings: &Settings) -> Result<Config> {
    validate(settings)?;
    let _lock = target.lock()?;
    let mut maps = target.open()?;
    let mut cfg = maps.config()?;
    settings.apply(&mut cfg);
    maps.set_config(&cfg)?;
    Ok(cfg)
}

/// Detaches XDP and TC and removes every pin of the interface.
pub fn detach(target: &Target) -> Result<()> {
    let _lock = target.lock()?;
    let dir = target.pin_dir();
    if !target.is_attached() {
        return Err(Error::NotAttached(target.iface.clone()));
    }
    let tc_kind = Maps::from_pins(&dir)
        .and_then(|m| m.config())
        .map(|c| c.tc_kind)
        .unwrap_or(0);
    // Links first (this detaches), then everything else.
    for name in [XDP_LINK, TC_LINK, TC_IN_LINK] {
        let p = dir.join(name);
        if !p.exists() {
            continue;
        }
        // Unpinning drops the last reference to the link: the kernel detaches it.
        let link = PinnedLink::from_pin(&p)
            .map_err(|e| Error::bpf(format!("opening {}", p.display()), e))?;
        let fd_link = link
            .unpin()
            .map_err(|e| Error::io(format!("unpinning {}", p.display()), e))?;
        drop(fd_link);
    }
    if tc_kind == TC_KIND_NETLINK {
        // Only present on kernels without TCX; the interface may be gone.
        if let Some(ifindex) = sys::if_nametoindex(&target.iface) {
            let _ = tc::qdisc_detach_program(
                ifindex,
                TcAttachType::Egress.into(),
                prog_names::TC_EGRESS,
            );
            let _ = tc::qdisc_detach_program(
                ifindex,
                TcAttachType::Ingress.into(),
                prog_names::TC_INGRESS,
            );
        }
    }
    fs::remove_dir_all(&dir).map_err(|e| Error::io(format!("removing {}", dir.display()), e))?;
    // Remove the scope directory when it is empty (ignore failures: others may use it).
    if let Some(parent) = dir.parent() {
        let _ = fs::remove_dir(parent);
    }
    Ok(())
}
