//! The kernel data plane seen from user space: loading and attaching the
//! programs ([`attach`]), the flow table, and reading counters without a
//! system call per stream ([`Maps`], shared by the daemon's users as one
//! [`Shared`] handle), and the kernel probes of `gateway check` ([`probe`]).

/// The compiled kernel programs, embedded at build time.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway-ebpf"));

pub mod attach;
pub mod flows;
pub mod maps;
pub mod probe;
pub mod relay;
pub mod sip_guard;

pub use maps::{Maps, Shared, StreamRow};

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use gateway_common::{stats, EgressKey, FlowKey, FAMILY_ANY, FAMILY_V4, FAMILY_V6};
pub use stats::StreamSummary;

/// Errors of the data plane, each naming the problem for a one-line CLI message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("interface {0:?} does not exist")]
    UnknownInterface(String),
    #[error("interface {0:?} is already attached (gateway detach --iface {0} first)")]
    AlreadyAttached(String),
    #[error("interface {0:?} is not attached (gateway attach --iface {0} first)")]
    NotAttached(String),
    #[error(
        "permission denied: {0} (run as root, or with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)"
    )]
    Permission(String),
    #[error("flow table full: {0} streams in use (attach with a larger --max-streams)")]
    TableFull(u32),
    #[error("flow {0} already exists")]
    FlowExists(String),
    #[error("no flow {0}")]
    NoSuchFlow(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Bpf {
        context: String,
        #[source]
        source: anyhow::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::PermissionDenied {
            return Error::Permission(format!("{}: {source}", context.into()));
        }
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn bpf(context: impl Into<String>, source: impl Into<anyhow::Error>) -> Self {
        let source = source.into();
        let context = context.into();
        // aya wraps the syscall error deep inside; look for EPERM anywhere.
        let text = format!("{source:#}");
        if text.contains("Operation not permitted") || text.contains("EPERM") {
            return Error::Permission(format!("{context}: {text}"));
        }
        Error::Bpf { context, source }
    }
}

/// Number of possible CPUs: the per-CPU value count the kernel uses.
pub fn possible_cpus() -> Result<u32> {
    aya::util::nr_cpus()
        .map(|n| n.get())
        .map_err(|(path, e)| Error::io(format!("reading {path}"), e))
}

/// Turns a flow key back into the socket address it describes.
pub fn key_addr(k: &FlowKey) -> SocketAddr {
    let ip = match k.family {
        FAMILY_V4 => IpAddr::V4(Ipv4Addr::new(k.addr[0], k.addr[1], k.addr[2], k.addr[3])),
        FAMILY_V6 => IpAddr::V6(Ipv6Addr::from(k.addr)),
        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    SocketAddr::new(ip, k.port)
}

/// Builds a flow key; an unspecified address (0.0.0.0 or ::) means any.
pub fn make_key(local: SocketAddr, ssrc: Option<u32>) -> FlowKey {
    let mut k = FlowKey {
        port: local.port(),
        ..Default::default()
    };
    match local.ip() {
        ip if ip.is_unspecified() => k.family = FAMILY_ANY,
        IpAddr::V4(v4) => {
            k.family = FAMILY_V4;
            k.addr[..4].copy_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            k.family = FAMILY_V6;
            k.addr = v6.octets();
        }
    }
    if let Some(s) = ssrc {
        k.by_ssrc = 1;
        k.ssrc = s;
    }
    k
}

pub fn addr_of_egress(k: &EgressKey) -> SocketAddr {
    key_addr(&FlowKey {
        addr: k.addr,
        port: k.port,
        family: k.family,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::read_pod;

    #[test]
    fn keys_round_trip() {
        for (s, ssrc) in [
            ("198.18.0.1:30000", None),
            ("[2001:db8::1]:5004", Some(7)),
            ("0.0.0.0:40000", None),
        ] {
            let a: SocketAddr = s.parse().unwrap();
            let k = make_key(a, ssrc);
            assert_eq!(k.by_ssrc, ssrc.is_some() as u8);
            assert_eq!(k.ssrc, ssrc.unwrap_or(0));
            assert_eq!(key_addr(&k), a);
        }
        assert_eq!(make_key("[::]:1".parse().unwrap(), None).family, FAMILY_ANY);
    }

    #[test]
    fn read_pod_tolerates_short_input() {
        let k: FlowKey = read_pod(&[1, 2, 3]);
        assert_eq!(k, FlowKey::default());
        let mut b = [0u8; 24];
        b[16..18].copy_from_slice(&5004u16.to_ne_bytes());
        assert_eq!(read_pod::<FlowKey>(&b).port, 5004);
    }
}
