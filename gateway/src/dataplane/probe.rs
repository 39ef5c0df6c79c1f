//! Kernel probes behind `gateway check`: can this machine's kernel run
//! the gateway's eBPF programs, and if not, why not. Each probe names what
//! it looked at and, when it fails, the reason and what to do; [`report`]
//! runs them all. The decisive probes load the embedded object and run
//! the verifier exactly as `attach` does, without attaching anything.
//! The bindings they use live in `crate::sys`; the CLI's rendering of the
//! report in `cli::check`.

use std::{os::fd::AsFd, path::Path};

use aya::{
    maps::MapType,
    programs::{ProgramError, SchedClassifier, Xdp},
    util::KernelVersion,
};
use gateway_common::prog_names;
use serde::Serialize;

use super::attach;
use crate::sys::{
    self,
    bpf::{
        BPF_F_MMAPABLE, BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LRU_PERCPU_HASH,
        BPF_MAP_TYPE_PERCPU_ARRAY, BPF_XDP,
    },
    netlink::{xdp_features, NETDEV_XDP_ACT_BASIC, NETDEV_XDP_ACT_RX_SG},
    process::{effective_caps, has, CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, CAP_SYS_ADMIN},
};

/// The oldest kernel whose features cover everything the gateway needs.
/// The newest of them is XDP through a `bpf_link` (5.9), which `attach`
/// pins; then CAP_BPF/CAP_PERFMON (5.8, for running without root),
/// BPF_MAP_LOOKUP_BATCH on hash maps (5.6, FLOWS and EGRESS) and
/// BPF_F_MMAPABLE (5.5, STREAM_STATS). BPF_MAP_LOOKUP_BATCH on per-CPU
/// arrays (5.13) is optional: without it the 16 global COUNTERS are read
/// with one BPF_MAP_LOOKUP_ELEM each (`Maps::counters`). LoongArch itself
/// needs 5.19 (6.1 for its BPF JIT).
pub const MIN_KERNEL: (u8, u8) = (5, 9);

/// Outcome of one check.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Present / works.
    Ok,
    /// Works, but worse than it could (slower, or needs care).
    Warn,
    /// Missing or broken: the data plane cannot run (if the check is required).
    Fail,
    /// For information only.
    Info,
    /// Not run, because a check it depends on failed.
    Skip,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Info => "info",
            Status::Skip => "skip",
        }
    }
}

#[derive(Serialize, Debug, Clone)]
pub struct Check {
    /// Stable identifier (for scripts).
    pub id: &'static str,
    pub name: &'static str,
    /// A failure of a required check means the data plane cannot run.
    pub required: bool,
    pub status: Status,
    pub detail: String,
}

#[derive(Serialize, Debug)]
pub struct Report {
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// Architecture this binary was built for.
    pub arch: &'static str,
    pub min_kernel: String,
    /// True when no required check failed.
    pub ok: bool,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn failed(&self) -> impl Iterator<Item = &Check> {
        self.checks
            .iter()
            .filter(|c| c.required && c.status == Status::Fail)
    }
}

struct Builder {
    checks: Vec<Check>,
}

impl Builder {
    fn push(&mut self, id: &'static str, name: &'static str, required: bool, r: (Status, String)) {
        self.checks.push(Check {
            id,
            name,
            required,
            status: r.0,
            detail: r.1,
        });
    }
}

fn ok(s: impl Into<String>) -> (Status, String) {
    (Status::Ok, s.into())
}
fn fail(s: impl Into<String>) -> (Status, String) {
    (Status::Fail, s.into())
}
fn warn(s: impl Into<String>) -> (Status, String) {
    (Status::Warn, s.into())
}
fn info(s: impl Into<String>) -> (Status, String) {
    (Status::Info, s.into())
}
/// Which SM4 and SM3 implementations media decryption uses on this CPU
/// (`GMCRYPT_SM4` / `GMCRYPT_SM3` force one), and the others this CPU runs.
fn crypto() -> (Status, String) {
    let (s4, s3) = (gmcrypt::sm4::selected(), gmcrypt::sm3::selected());
    let runs: Vec<&str> = gmcrypt::sm4::Impl::ALL
        .into_iter()
        .filter(|i| i.unavailable().is_none())
        .map(|i| i.name())
        .collect();
    info(format!(
        "sm4 {} ({}), sm3 {} ({}); this CPU runs sm4 {}",
        s4.imp,
        s4.reason,
        s3.imp,
        s3.reason,
        runs.join(", ")
    ))
}

fn skipped(why: &str) -> (Status, String) {
    (Status::Skip, format!("not run: {why}"))
}

/// Runs every check.
pub fn report(iface: Option<&str>, netns: Option<&str>, bpffs: &Path) -> Report {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let version = KernelVersion::current().ok();
    let min = KernelVersion::new(MIN_KERNEL.0, MIN_KERNEL.1, 0);
    let mut b = Builder { checks: Vec::new() };

    b.push(
        "kernel",
        "kernel version",
        false,
        match version {
            Some(v) if v >= min => ok(format!("{v} >= {}.{}", MIN_KERNEL.0, MIN_KERNEL.1)),
            Some(v) => warn(format!(
                "{v} is older than the documented minimum {}.{}; distribution kernels may \
                 carry the features back, so the checks below decide",
                MIN_KERNEL.0, MIN_KERNEL.1
            )),
            None => warn(format!(
                "cannot parse the release {release:?}; the checks below decide"
            )),
        },
    );
    let at_least = |maj: u8, min: u8| version.is_some_and(|v| v >= KernelVersion::new(maj, min, 0));

    let caps = effective_caps();
    // CAP_BPF exists from 5.8 on (assumed when the version is unknown).
    let has_cap_bpf = version.is_none() || at_least(5, 8);
    b.push(
        "privileges",
        "privileges",
        true,
        privileges(caps, has_cap_bpf),
    );

    let memlock_matters = version.is_some() && !at_least(5, 11);
    if memlock_matters {
        b.push("memlock", "RLIMIT_MEMLOCK", false, memlock());
    }

    // The bpf(2) system call itself: a one-element array map.
    let syscall = bpf_syscall(memlock_matters);
    let bpf_usable = syscall.0 == Status::Ok;
    b.push("bpf_syscall", "bpf(2) system call", true, syscall);

    // The decisive part (reported below): load the real object and verify
    // both programs.
    let need_bpf = "the bpf(2) system call is not usable (see above)";
    // Probed before the object is loaded: the read-out check reports how
    // the counters were read.
    let batch = if bpf_usable {
        batch_lookup()
    } else {
        BatchProbe {
            result: skipped(need_bpf),
            percpu_array: None,
        }
    };
    let loaded = if bpf_usable {
        load_programs(batch.percpu_array)
    } else {
        let s = skipped(need_bpf);
        LoadResult {
            object: s.clone(),
            xdp: s.clone(),
            tc: s.clone(),
            readout: s,
            jitted: None,
        }
    };
    b.push("jit", "BPF JIT", false, jit(loaded.jitted, netns.is_some()));
    b.push("btf", "kernel BTF", false, btf());

    for (id, name, t, what) in [
        (
            "map_hash",
            "map: hash",
            MapType::Hash,
            "the flow table FLOWS",
        ),
        (
            "map_array",
            "map: array",
            MapType::Array,
            "CONFIG, PORT_FLAGS",
        ),
        (
            "map_percpu_array",
            "map: per-CPU array",
            MapType::PerCpuArray,
            "the global COUNTERS",
        ),
        (
            "map_lru_percpu_hash",
            "map: LRU per-CPU hash",
            MapType::LruPerCpuHash,
            "the egress table EGRESS",
        ),
    ] {
        let r = if bpf_usable {
            map_type(t, what)
        } else {
            skipped(need_bpf)
        };
        b.push(id, name, true, r);
    }
    b.push(
        "map_mmapable",
        "map flag: BPF_F_MMAPABLE",
        true,
        if bpf_usable {
            mmapable()
        } else {
            skipped(need_bpf)
        },
    );
    b.push("batch_lookup", "BPF_MAP_LOOKUP_BATCH", true, batch.result);
    b.push(
        "global_data",
        "global data (.rodata/.data)",
        true,
        if bpf_usable {
            match aya::sys::is_bpf_global_data_supported() {
                Ok(true) => ok("supported (the loader writes NCPUS into the object)"),
                Ok(false) => {
                    fail("not supported (kernel < 5.2): the object's NCPUS global cannot be set")
                }
                Err(e) => fail(format!("probe failed: {e}")),
            }
        } else {
            skipped(need_bpf)
        },
    );
    b.push(
        "xdp_link",
        "XDP through a bpf_link",
        true,
        if bpf_usable {
            xdp_link()
        } else {
            skipped(need_bpf)
        },
    );
    b.push(
        "tc_attach",
        "TC egress attachment",
        false,
        if at_least(6, 6) {
            info("TCX link (kernel >= 6.6)")
        } else {
            info(
                "clsact qdisc + netlink filter (kernel < 6.6 has no TCX; see docs/architecture.md)",
            )
        },
    );

    b.push(
        "load_object",
        "load object (maps, globals)",
        true,
        loaded.object,
    );
    b.push("verify_xdp", "verify XDP program", true, loaded.xdp);
    b.push("verify_tc", "verify TC program", true, loaded.tc);
    b.push("readout", "read-out (mmap + batch)", true, loaded.readout);

    if let Some(name) = iface {
        b.push(
            "iface",
            "interface",
            true,
            interface(name, netns, bpffs, at_least(6, 3)),
        );
    }

    b.push("crypto", "SM4/SM3 implementation", false, crypto());

    let ok = !b
        .checks
        .iter()
        .any(|c| c.required && c.status == Status::Fail);
    Report {
        kernel: release,
        arch: std::env::consts::ARCH,
        min_kernel: format!("{}.{}", MIN_KERNEL.0, MIN_KERNEL.1),
        ok,
        checks: b.checks,
    }
}

// --- privileges -------------------------------------------------------------

fn privileges(caps: Option<u64>, has_cap_bpf: bool) -> (Status, String) {
    let Some(caps) = caps else {
        return warn("cannot read the capability set (/proc/self/status); the checks below decide");
    };
    let euid = if sys::is_root() { "root" } else { "not root" };
    let sys_admin = has(caps, CAP_SYS_ADMIN);
    let mut missing = Vec::new();
    if has_cap_bpf {
        // CAP_BPF: maps and programs; CAP_PERFMON: the verifier's full
        // (pointer-leak, speculation) mode; CAP_SYS_ADMIN implies both.
        if !has(caps, CAP_BPF) && !sys_admin {
            missing.push("CAP_BPF");
        }
        if !has(caps, CAP_PERFMON) && !sys_admin {
            missing.push("CAP_PERFMON");
        }
    } else if !sys_admin {
        missing.push("CAP_SYS_ADMIN (kernel < 5.8 has no CAP_BPF)");
    }
    // Loading networking programs and attaching them to interfaces.
    if !has(caps, CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    let held: Vec<&str> = [
        ("CAP_BPF", CAP_BPF),
        ("CAP_PERFMON", CAP_PERFMON),
        ("CAP_NET_ADMIN", CAP_NET_ADMIN),
        ("CAP_SYS_ADMIN", CAP_SYS_ADMIN),
    ]
    .into_iter()
    .filter(|(_, c)| has(caps, *c))
    .map(|(n, _)| n)
    .collect();
    let held = if held.is_empty() {
        "none of CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_SYS_ADMIN".to_string()
    } else {
        held.join(", ")
    };
    if missing.is_empty() {
        ok(format!("{euid}; effective: {held}"))
    } else {
        fail(format!(
            "{euid}; missing {}: run as root, or with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON \
             (e.g. the shipped systemd unit)",
            missing.join(", ")
        ))
    }
}

fn memlock() -> (Status, String) {
    match sys::memlock_limit() {
        Ok((u64::MAX, _)) => ok("unlimited"),
        Ok((cur, max)) => {
            let show = |v: u64| {
                if v == u64::MAX {
                    "unlimited".to_string()
                } else {
                    format!("{} KiB", v / 1024)
                }
            };
            warn(format!(
                "{} (hard {}): kernels before 5.11 charge BPF maps against it; the loader raises \
                 it when it may (hard limit unlimited or CAP_SYS_RESOURCE), else set \
                 LimitMEMLOCK=infinity (systemd) or ulimit -l unlimited",
                show(cur),
                show(max)
            ))
        }
        Err(e) => warn(format!("cannot read it: {e}")),
    }
}

// --- bpf(2) basics ---------------------------------------------------------

/// Explains an errno of a bpf(2) call.
fn explain(e: &std::io::Error, memlock_matters: bool) -> String {
    match e.raw_os_error() {
        Some(libc::ENOSYS) => format!(
            "{e}: the kernel has no bpf(2) (CONFIG_BPF_SYSCALL), or this process runs under an \
             emulator that does not pass bpf(2) through (qemu-user answers ENOSYS)"
        ),
        Some(libc::EPERM) | Some(libc::EACCES) => {
            let mut s = format!(
                "{e}: not permitted; run as root or with CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON"
            );
            if memlock_matters {
                s.push_str(
                    "; on kernels before 5.11 also raise RLIMIT_MEMLOCK (ulimit -l unlimited)",
                );
            }
            s
        }
        _ => e.to_string(),
    }
}

fn bpf_syscall(memlock_matters: bool) -> (Status, String) {
    match sys::create_map_flags(BPF_MAP_TYPE_ARRAY, 4, 8, 1, 0) {
        Ok(_) => ok("usable (created and released a one-element array map)"),
        Err(e) => fail(explain(&e, memlock_matters)),
    }
}

/// The JIT: whether the loaded XDP program was JIT-compiled (decisive when
/// it loaded), and the host-wide switch.
fn jit(jitted: Option<u32>, in_netns: bool) -> (Status, String) {
    let sysctl =
        std::fs::read_to_string("/proc/sys/net/core/bpf_jit_enable").map(|s| s.trim().to_string());
    // net.core.bpf_jit_enable exists only in the host's network namespace.
    let elsewhere = in_netns || !in_host_netns();
    match (jitted, sysctl) {
        (Some(n), _) if n > 0 => ok(format!(
            "enabled: {} JIT-compiled to {n} bytes",
            prog_names::XDP
        )),
        (Some(_), _) => warn(
            "disabled: the programs run in the interpreter, several times slower per packet; \
             sysctl -w net.core.bpf_jit_enable=1 (CONFIG_BPF_JIT)",
        ),
        (None, Ok(v)) if v == "1" || v == "2" => {
            ok(format!("enabled (net.core.bpf_jit_enable = {v})"))
        }
        (None, Ok(v)) => warn(format!(
            "net.core.bpf_jit_enable = {v}: the programs run in the interpreter, several times \
             slower per packet; sysctl -w net.core.bpf_jit_enable=1"
        )),
        (_, Err(_)) if elsewhere => {
            info("unknown: net.core.bpf_jit_enable is visible only in the host's network namespace")
        }
        (None, Err(e)) => warn(format!(
            "cannot read /proc/sys/net/core/bpf_jit_enable ({e}): kernel without a BPF JIT \
             (CONFIG_BPF_JIT)? Then the programs run in the interpreter"
        )),
    }
}

/// True if this process is in the network namespace of PID 1 (or that
/// cannot be told).
fn in_host_netns() -> bool {
    match (
        std::fs::read_link("/proc/self/ns/net"),
        std::fs::read_link("/proc/1/ns/net"),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => true,
    }
}

fn btf() -> (Status, String) {
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        info("present (/sys/kernel/btf/vmlinux); not required")
    } else {
        info("absent; not required (the programs use no CO-RE relocations)")
    }
}

fn map_type(t: MapType, what: &str) -> (Status, String) {
    match aya::sys::is_map_supported(t) {
        Ok(true) => ok(format!("supported ({what})")),
        Ok(false) => fail(format!("not supported by this kernel; needed for {what}")),
        Err(e) => fail(format!("probe failed: {e}")),
    }
}

fn mmapable() -> (Status, String) {
    let fd = match sys::create_map_flags(BPF_MAP_TYPE_ARRAY, 4, 128, 2, BPF_F_MMAPABLE) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            return fail(format!(
                "{e}: the kernel refuses BPF_F_MMAPABLE (added in 5.5); the per-stream \
                 statistics array STREAM_STATS needs it"
            ))
        }
        Err(e) => return fail(explain(&e, false)),
    };
    match sys::MmapArray::map(fd.as_fd(), 256) {
        Ok(m) if m.len() >= 256 => ok("array created and mmapped (STREAM_STATS is read this way)"),
        Ok(_) => fail("mmap returned a short mapping"),
        Err(e) => fail(format!("mmap of a BPF_F_MMAPABLE array failed: {e}")),
    }
}

/// Whether an error of BPF_MAP_LOOKUP_BATCH means "not for this map type
/// on this kernel": EINVAL (no such command, before 5.6), EOPNOTSUPP (=
/// ENOTSUP) or ENOTSUPP (524, no batch operation for the map type). The
/// same errors make `Maps::counters` fall back to one lookup per counter.
fn batch_unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | 524)
    )
}

/// An errno for the report; libc has no text for the kernel-internal
/// ENOTSUPP (524) that BPF_MAP_LOOKUP_BATCH returns for map types without
/// batch operations.
fn errno_text(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(524) => "ENOTSUPP (errno 524)".to_string(),
        _ => e.to_string(),
    }
}

struct BatchProbe {
    result: (Status, String),
    /// Whether per-CPU arrays can be batch-read (None: not probed).
    percpu_array: Option<bool>,
}

fn batch_lookup() -> BatchProbe {
    let failed = |r: (Status, String)| BatchProbe {
        result: r,
        percpu_array: None,
    };
    let ncpus = match crate::dataplane::possible_cpus() {
        Ok(n) => n as usize,
        Err(e) => return failed(fail(e.to_string())),
    };
    let mut done = Vec::new();
    let mut percpu_array = None;
    let mut optional_missing = None;
    // (map kind, type, per-CPU values, kernel that added batch lookup for
    // it, what the gateway reads with it, required)
    for (name, t, percpu, since, what, required) in [
        (
            "hash",
            BPF_MAP_TYPE_HASH,
            false,
            "5.6",
            "the flow table",
            true,
        ),
        (
            "per-CPU array",
            BPF_MAP_TYPE_PERCPU_ARRAY,
            true,
            "5.13",
            "the global counters",
            false,
        ),
        (
            "LRU per-CPU hash",
            BPF_MAP_TYPE_LRU_PERCPU_HASH,
            true,
            "5.6",
            "the egress table",
            true,
        ),
    ] {
        let fd = match sys::create_map_flags(t, 4, 8, 4, 0) {
            Ok(fd) => fd,
            Err(e) => {
                return failed(fail(format!(
                    "creating a {name} map: {}",
                    explain(&e, false)
                )))
            }
        };
        let value = vec![7u8; if percpu { 8 * ncpus } else { 8 }];
        if let Err(e) = sys::update_elem(fd.as_fd(), &1u32.to_ne_bytes(), &value, 0) {
            return failed(fail(format!("updating a {name} map: {e}")));
        }
        let mut reader = sys::BatchReader::new(4, 8, percpu.then_some(ncpus), 8);
        let mut seen = 0usize;
        let works = match reader.read_all(fd.as_fd(), |_, _| seen += 1) {
            Ok(_) if seen >= 1 => true,
            Ok(_) => {
                return failed(fail(format!(
                    "a batch read of a {name} map returned no entry"
                )))
            }
            Err(e) if batch_unsupported(&e) && !required => {
                optional_missing = Some(format!(
                    "{name}: batch read unavailable before {since}: the counters are read one \
                     by one ({})",
                    errno_text(&e)
                ));
                false
            }
            Err(e) if batch_unsupported(&e) => {
                return failed(fail(format!(
                    "{} on a {name} map: this kernel has no BPF_MAP_LOOKUP_BATCH for it \
                     (added in {since}); {what} is read with it",
                    errno_text(&e)
                )))
            }
            Err(e) => return failed(fail(format!("batch read of a {name} map: {e}"))),
        };
        if works {
            done.push(name);
        }
        if t == BPF_MAP_TYPE_PERCPU_ARRAY {
            percpu_array = Some(works);
        }
    }
    let works_on = format!("works on {}", done.join(", "));
    BatchProbe {
        result: match optional_missing {
            None => ok(works_on),
            Some(m) => warn(format!("{works_on}; {m}")),
        },
        percpu_array,
    }
}

fn xdp_link() -> (Status, String) {
    match sys::link_create_without_program(BPF_XDP) {
        Some(e) if e.raw_os_error() == Some(libc::EBADF) => {
            ok("BPF_LINK_CREATE knows BPF_XDP (kernel >= 5.9); attach pins the link")
        }
        Some(e) if e.raw_os_error() == Some(libc::EINVAL) => fail(format!(
            "{e}: BPF_LINK_CREATE does not know BPF_XDP (added in 5.9); attach needs an XDP \
             bpf_link so the attachment can be pinned and outlive the command"
        )),
        Some(e) => fail(format!("BPF_LINK_CREATE probe: {}", explain(&e, false))),
        None => warn("BPF_LINK_CREATE probe unexpectedly succeeded"),
    }
}

// --- the real object --------------------------------------------------------

struct LoadResult {
    object: (Status, String),
    xdp: (Status, String),
    tc: (Status, String),
    readout: (Status, String),
    /// JIT-compiled size of the XDP program (0: interpreted), if it loaded.
    jitted: Option<u32>,
}

/// Shortens an aya program error: the errno and the end of the verifier log.
fn program_error(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let tail: Vec<&str> = log
                .lines()
                .filter(|l| !l.trim().is_empty())
                .rev()
                .take(6)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            if tail.is_empty() {
                format!("BPF_PROG_LOAD: {io_error}")
            } else {
                format!(
                    "BPF_PROG_LOAD: {io_error}; end of the verifier log:\n{}",
                    tail.join("\n")
                )
            }
        }
        other => format!("{other:#}"),
    }
}

/// `percpu_batch`: whether the kernel batch-reads per-CPU arrays (from the
/// `batch_lookup` probe); only changes how the read-out is described, the
/// counters are read by `Maps::counters` either way.
fn load_programs(percpu_batch: Option<bool>) -> LoadResult {
    let skip = || skipped("the object did not load");
    // A small table: enough to create every map the way attach does.
    let (mut ebpf, mut maps) = match attach::load(16, None) {
        Ok(x) => x,
        Err(e) => {
            return LoadResult {
                object: fail(format!("{e:#}")),
                xdp: skip(),
                tc: skip(),
                readout: skip(),
                jitted: None,
            }
        }
    };
    let object = ok(format!(
        "6 maps created, NCPUS = {} written ({} bytes embedded)",
        maps.ncpus(),
        super::EBPF_OBJECT.len()
    ));
    let mut jitted = None;
    let xdp = match ebpf
        .program_mut(prog_names::XDP)
        .ok_or_else(|| "program missing from the object".to_string())
        .and_then(|p| <&mut Xdp>::try_from(p).map_err(|e| e.to_string()))
    {
        Ok(p) => match p.load().map(|()| {
            jitted = p.info().ok().map(|i| i.size_jitted());
        }) {
            Ok(()) => ok(format!(
                "{} accepted by the verifier (not attached)",
                prog_names::XDP
            )),
            Err(e) => fail(program_error(&e)),
        },
        Err(e) => fail(e),
    };
    let mut tc = ok(String::new());
    let mut names = Vec::new();
    for name in [
        prog_names::TC_EGRESS,
        prog_names::TC_INGRESS,
        prog_names::TC_RELAY_COPIES,
    ] {
        let r = ebpf
            .program_mut(name)
            .ok_or_else(|| format!("{name}: program missing from the object"))
            .and_then(|p| <&mut SchedClassifier>::try_from(p).map_err(|e| e.to_string()))
            .and_then(|p| {
                p.load()
                    .map_err(|e| format!("{name}: {}", program_error(&e)))
            });
        match r {
            Ok(()) => names.push(name),
            Err(e) => {
                tc = fail(e);
                break;
            }
        }
    }
    if tc.0 == Status::Ok {
        tc = ok(format!(
            "{} accepted by the verifier (not attached)",
            names.join(", ")
        ));
    }
    let readout = (|| -> crate::dataplane::Result<String> {
        let flows = maps.flows()?.len();
        let counters = maps.counters()?.len();
        let egress = maps.egress()?.len();
        // The daemon's own read-out: Maps::counters batch-reads COUNTERS,
        // or, before 5.13, looks each counter up.
        Ok(match percpu_batch {
            Some(false) => format!(
                "STREAM_STATS mmapped; FLOWS ({flows}), EGRESS ({egress}) read in batches; \
                 COUNTERS ({counters}) read one by one (no batch read of per-CPU arrays \
                 before 5.13)"
            ),
            Some(true) => format!(
                "STREAM_STATS mmapped; FLOWS ({flows}), COUNTERS ({counters}), EGRESS \
                 ({egress}) read in batches"
            ),
            None => format!(
                "STREAM_STATS mmapped; FLOWS ({flows}), EGRESS ({egress}) read in batches; \
                 COUNTERS ({counters}) read"
            ),
        })
    })();
    LoadResult {
        object,
        xdp,
        tc,
        jitted,
        readout: match readout {
            Ok(s) => ok(s),
            Err(e) => fail(e.to_string()),
        },
    }
}

// --- the interface (--iface) -------------------------------------------------

fn interface(
    name: &str,
    netns: Option<&str>,
    bpffs: &Path,
    has_features: bool,
) -> (Status, String) {
    let where_ = match netns {
        Some(n) => format!("network namespace {n:?}"),
        None => "this network namespace".to_string(),
    };
    let Some(ifindex) = sys::if_nametoindex(name) else {
        return fail(format!("no interface {name:?} in {where_}"));
    };
    let driver = match sys::ethtool_driver(name) {
        Ok(d) if !d.is_empty() => d,
        _ => "unknown".to_string(),
    };
    let mut lines = vec![format!("{name}: index {ifindex}, driver {driver}")];
    if let Ok(t) = attach::Target::new(name, netns, Some(bpffs)) {
        if t.is_attached() {
            lines.push(format!(
                "the gateway is attached to it (pins in {})",
                t.pin_dir().display()
            ));
        }
    }
    let status = match xdp_features(ifindex) {
        Ok(f) if f & NETDEV_XDP_ACT_BASIC != 0 => {
            let mut extra = Vec::new();
            if f & NETDEV_XDP_ACT_RX_SG == 0 {
                extra.push("no multi-buffer (keep the MTU at or below ~3500 bytes)");
            }
            lines.push(format!(
                "native (driver) XDP: supported (xdp-features 0x{f:x}){}",
                if extra.is_empty() {
                    String::new()
                } else {
                    format!("; {}", extra.join("; "))
                }
            ));
            Status::Ok
        }
        Ok(f) => {
            lines.push(format!(
                "native (driver) XDP: not supported by the driver (xdp-features 0x{f:x}); \
                 attach --mode auto falls back to generic (skb) mode, which works but costs \
                 more per packet"
            ));
            Status::Warn
        }
        Err(e) => {
            lines.push(if has_features {
                format!("native (driver) XDP: unknown ({e})")
            } else {
                format!(
                    "native (driver) XDP: unknown: kernels before 6.3 do not report XDP \
                     features ({e}); attach --mode auto tries native, then generic (skb) mode"
                )
            });
            Status::Info
        }
    };
    (status, lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privileges_name_what_is_missing() {
        let all = (1u64 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_NET_ADMIN);
        assert_eq!(privileges(Some(all), true).0, Status::Ok);
        let (s, d) = privileges(Some(1 << CAP_BPF), true);
        assert_eq!(s, Status::Fail);
        assert!(
            d.contains("CAP_PERFMON") && d.contains("CAP_NET_ADMIN"),
            "{d}"
        );
        assert!(!d.contains("missing CAP_BPF"), "{d}");
        // CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON.
        let admin = (1u64 << CAP_SYS_ADMIN) | (1 << CAP_NET_ADMIN);
        assert_eq!(privileges(Some(admin), true).0, Status::Ok);
        // Before 5.8 only CAP_SYS_ADMIN will do.
        let (s, d) = privileges(Some(all), false);
        assert_eq!(s, Status::Fail);
        assert!(d.contains("CAP_SYS_ADMIN"), "{d}");
        assert_eq!(privileges(None, true).0, Status::Warn);
    }

    #[test]
    fn batch_errors_that_mean_unsupported() {
        let e = std::io::Error::from_raw_os_error;
        for errno in [libc::EINVAL, libc::ENOTSUP, libc::EOPNOTSUPP, 524] {
            assert!(batch_unsupported(&e(errno)), "{errno}");
        }
        for errno in [libc::EPERM, libc::ENOENT, libc::EFAULT, libc::ENOSPC] {
            assert!(!batch_unsupported(&e(errno)), "{errno}");
        }
    }

    #[test]
    fn minimum_is_the_xdp_link_kernel() {
        // Batch reads of per-CPU arrays (5.13) are optional: 5.10 LTS runs.
        assert_eq!(MIN_KERNEL, (5, 9));
    }

    #[test]
    fn errno_explanations_point_at_the_cause() {
        let nosys = explain(&std::io::Error::from_raw_os_error(libc::ENOSYS), false);
        assert!(nosys.contains("qemu-user"), "{nosys}");
        let perm = explain(&std::io::Error::from_raw_os_error(libc::EPERM), true);
        assert!(
            perm.contains("CAP_BPF") && perm.contains("RLIMIT_MEMLOCK"),
            "{perm}"
        );
        let perm = explain(&std::io::Error::from_raw_os_error(libc::EPERM), false);
        assert!(!perm.contains("RLIMIT_MEMLOCK"), "{perm}");
    }
}
