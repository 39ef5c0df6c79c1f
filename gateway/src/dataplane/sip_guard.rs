//! The SIP flood guard's maps: its settings (the SIP ports, the per-source
//! and global rates as GCRA parameters) and the allow list of registered
//! devices' addresses, which the daemon keeps equal to the addresses of
//! its online devices. The XDP side is `sip_guard` in gateway-ebpf.

use std::{net::IpAddr, os::fd::AsFd};

use aya::maps::MapData;
use gateway_common::{SipGuard, SipSource, FAMILY_V4, FAMILY_V6, SIP_GUARD_PORTS};

use super::{
    maps::{get, put, Maps},
    Error, Result,
};
use crate::sys::{self, pod_bytes, read_pod, BatchReader};

/// The guard's maps (absent when an older version attached the interface).
pub(crate) struct SipMaps {
    pub(crate) guard: MapData,
    pub(crate) allow: MapData,
}

/// What the guard does, in operator terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardSettings {
    /// Packets per second one unknown source may send to a SIP port.
    pub rate: u32,
    /// Packets it may send at once above that rate.
    pub burst: u32,
    /// Packets per second all unknown sources together may send.
    pub global_rate: u32,
}

impl GuardSettings {
    /// The kernel's form: GCRA intervals and tolerances (the global one
    /// per CPU, as the kernel keeps it per CPU).
    pub fn to_kernel(self, ports: &[u16], ncpus: u32) -> Result<SipGuard> {
        if self.rate == 0 || self.global_rate == 0 || self.burst == 0 {
            return Err(Error::Invalid(
                "sip guard: rate, burst and global_rate must be at least 1".into(),
            ));
        }
        if ports.is_empty() || ports.len() > SIP_GUARD_PORTS {
            return Err(Error::Invalid(format!(
                "sip guard: 1 to {SIP_GUARD_PORTS} SIP ports, not {}",
                ports.len()
            )));
        }
        let mut p = [0u16; SIP_GUARD_PORTS];
        p[..ports.len()].copy_from_slice(ports);
        let src = 1_000_000_000 / self.rate as u64;
        let global = 1_000_000_000 * ncpus.max(1) as u64 / self.global_rate as u64;
        // The global burst: a second's worth, spread over the CPUs.
        let global_burst = (self.global_rate / ncpus.max(1)).max(1) as u64;
        Ok(SipGuard {
            ports: p,
            enabled: 1,
            _pad: 0,
            src_interval_ns: src,
            src_tolerance_ns: src * (self.burst as u64 - 1),
            global_interval_ns: global,
            global_tolerance_ns: global * (global_burst - 1),
        })
    }
}

/// An address as the kernel keys it.
pub fn source_of(ip: IpAddr) -> SipSource {
    let mut s = SipSource::default();
    match ip {
        IpAddr::V4(a) => {
            s.addr[..4].copy_from_slice(&a.octets());
            s.family = FAMILY_V4;
        }
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => return source_of(IpAddr::V4(v4)),
            None => {
                s.addr = a.octets();
                s.family = FAMILY_V6;
            }
        },
    }
    s
}

fn ip_of(s: &SipSource) -> IpAddr {
    if s.family == FAMILY_V4 {
        IpAddr::from([s.addr[0], s.addr[1], s.addr[2], s.addr[3]])
    } else {
        IpAddr::from(s.addr)
    }
}

impl Maps {
    fn sip_maps(&self) -> Result<&SipMaps> {
        self.sip.as_ref().ok_or_else(|| {
            Error::Invalid(
                "the attached programs have no SIP flood guard (attached by an older version; re-attach)"
                    .into(),
            )
        })
    }

    /// The guard's settings as the kernel has them (`None`: off or absent).
    pub fn sip_guard(&self) -> Result<Option<SipGuard>> {
        let Some(m) = &self.sip else {
            return Ok(None);
        };
        let g: Option<SipGuard> =
            get(&m.guard, &0u32).map_err(|e| Error::io("reading SIP_GUARD", e))?;
        Ok(g.filter(|g| g.enabled != 0))
    }

    /// The guard's settings as written, on or off (`None`: no guard maps).
    pub fn sip_guard_raw(&self) -> Result<Option<SipGuard>> {
        let Some(m) = &self.sip else {
            return Ok(None);
        };
        get(&m.guard, &0u32).map_err(|e| Error::io("reading SIP_GUARD", e))
    }

    pub fn set_sip_guard(&self, g: &SipGuard) -> Result<()> {
        put(&self.sip_maps()?.guard, &0u32, g, 0).map_err(|e| Error::io("writing SIP_GUARD", e))
    }

    /// Adds (or removes) an address to the allow list.
    pub fn sip_allow(&self, ip: IpAddr, on: bool) -> Result<()> {
        let m = self.sip_maps()?;
        let k = source_of(ip);
        if on {
            put(&m.allow, &k, &1u32, 0).map_err(|e| Error::io("adding to SIP_ALLOW", e))
        } else {
            sys::delete_elem(m.allow.fd().as_fd(), pod_bytes(&k))
                .map(|_| ())
                .map_err(|e| Error::io("removing from SIP_ALLOW", e))
        }
    }

    /// The allow list.
    pub fn sip_allowed(&self) -> Result<Vec<IpAddr>> {
        let m = self.sip_maps()?;
        let mut out = Vec::new();
        let mut r = BatchReader::new(size_of::<SipSource>(), 4, None, 1024);
        r.read_all(m.allow.fd().as_fd(), |k, _| {
            out.push(ip_of(&read_pod::<SipSource>(k)))
        })
        .map_err(|e| Error::io("reading SIP_ALLOW", e))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_in_kernel_terms() {
        let g = GuardSettings {
            rate: 20,
            burst: 40,
            global_rate: 2000,
        }
        .to_kernel(&[5060, 5061], 2)
        .unwrap();
        assert_eq!(g.ports, [5060, 5061, 0, 0]);
        assert_eq!(g.src_interval_ns, 50_000_000);
        assert_eq!(g.src_tolerance_ns, 39 * 50_000_000);
        // 1000/s per CPU, a second's burst each.
        assert_eq!(g.global_interval_ns, 1_000_000);
        assert_eq!(g.global_tolerance_ns, 999 * 1_000_000);
        let bad = GuardSettings {
            rate: 0,
            burst: 1,
            global_rate: 1,
        };
        assert!(bad.to_kernel(&[5060], 1).is_err());
        let ok = GuardSettings {
            rate: 1,
            burst: 1,
            global_rate: 1,
        };
        assert!(ok.to_kernel(&[], 1).is_err());
        assert!(ok.to_kernel(&[1, 2, 3, 4, 5], 1).is_err());
    }

    #[test]
    fn addresses_as_keys() {
        let v4: IpAddr = "198.18.0.7".parse().unwrap();
        let k = source_of(v4);
        assert_eq!((k.family, &k.addr[..4]), (FAMILY_V4, &[198, 18, 0, 7][..]));
        assert_eq!(ip_of(&k), v4);
        let mapped: IpAddr = "::ffff:198.18.0.7".parse().unwrap();
        assert_eq!(source_of(mapped), k);
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(ip_of(&source_of(v6)), v6);
    }
}
