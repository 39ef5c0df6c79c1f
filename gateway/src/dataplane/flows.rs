//! Adding and removing flows: slot allocation, per-port flags, names.

use std::net::SocketAddr;

use gateway_common::{
    FlowKey, FlowValue, FAMILY_ANY, FLOW_EXPECT_SSRC, FLOW_NAME_LEN, FLOW_RELAY_TC, PORT_ANY,
    PORT_ANY_SSRC, PORT_EXACT, PORT_EXACT_SSRC, PORT_TC_RELAY,
};

use std::os::fd::AsFd;

use super::{
    key_addr, make_key,
    maps::{get, put},
    Error, Maps, Result,
};
use crate::sys::{self, bpf::BPF_NOEXIST};

/// What an operator (or the daemon) asks for.
#[derive(Clone, Debug, Default)]
pub struct FlowSpec {
    /// Local address and UDP port; an unspecified address matches any.
    pub local: Option<SocketAddr>,
    /// Key the flow by this SSRC (several streams on one port).
    pub ssrc: Option<u32>,
    /// A port-level flow that expects this SSRC: other SSRCs are counted as
    /// mismatches (GB28181 devices that ignore the y= SSRC).
    pub expect_ssrc: Option<u32>,
    pub name: String,
    /// RTP clock rate (Hz) for jitter; default 90 000.
    pub clock_rate: u32,
}

impl From<&crate::config::FlowConfig> for FlowSpec {
    fn from(f: &crate::config::FlowConfig) -> FlowSpec {
        FlowSpec {
            local: Some(f.local),
            ssrc: f.ssrc,
            expect_ssrc: f.expect_ssrc,
            name: f.name.clone(),
            clock_rate: f.clock_rate,
        }
    }
}

/// Display form of a key: `addr:port` or `addr:port/ssrc`.
pub fn describe(k: &FlowKey) -> String {
    let a = key_addr(k);
    if k.by_ssrc != 0 {
        format!("{a} ssrc {}", k.ssrc)
    } else {
        a.to_string()
    }
}

pub fn flow_name(v: &FlowValue) -> String {
    let end = v.name.iter().position(|&b| b == 0).unwrap_or(v.name.len());
    String::from_utf8_lossy(&v.name[..end]).into_owned()
}

/// The PORT_* bit a key contributes to its port's flags.
fn port_bit(k: &FlowKey) -> u32 {
    match (k.family == FAMILY_ANY, k.by_ssrc != 0) {
        (false, true) => PORT_EXACT_SSRC,
        (false, false) => PORT_EXACT,
        (true, true) => PORT_ANY_SSRC,
        (true, false) => PORT_ANY,
    }
}

/// The PORT_* bits a flow contributes: its key kind, and `PORT_TC_RELAY`
/// when TC ingress relays it.
fn port_bits(k: &FlowKey, v: &FlowValue) -> u32 {
    port_bit(k)
        | if v.flags & FLOW_RELAY_TC != 0 {
            PORT_TC_RELAY
        } else {
            0
        }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Maps {
    /// Adds a flow: picks the lowest free stream slot, zeroes it, inserts the
    /// flow and sets its port's flag. The caller serialises writers
    /// (see `attach::Target::lock`).
    pub fn add_flow(&mut self, spec: &FlowSpec) -> Result<(FlowKey, FlowValue)> {
        let mut v = self.add_flows(std::slice::from_ref(spec))?;
        v.pop()
            .ok_or_else(|| Error::Invalid("no flow added".into()))
    }

    /// Adds several flows with one read of the flow table. Stops at the
    /// first failure; flows added before it stay.
    pub fn add_flows(&mut self, specs: &[FlowSpec]) -> Result<Vec<(FlowKey, FlowValue)>> {
        let mut flows = self.flows()?;
        let mut used = vec![false; self.max_streams() as usize];
        for (_, v) in &flows {
            if let Some(u) = used.get_mut(v.slot as usize) {
                *u = true;
            }
        }
        let mut existing: std::collections::HashSet<FlowKey> =
            flows.iter().map(|(k, _)| *k).collect();
        let mut added = Vec::with_capacity(specs.len());
        let mut next_free = 0usize;
        let mut result = Ok(());
        for spec in specs {
            match self.insert_one(spec, &mut used, &mut next_free, &existing) {
                Ok((k, v)) => {
                    existing.insert(k);
                    flows.push((k, v));
                    added.push((k, v));
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        // Port flags for every port touched, from the in-memory table.
        let mut ports: std::collections::BTreeMap<u16, u32> =
            added.iter().map(|(k, _)| (k.port, 0)).collect();
        for (k, v) in &flows {
            if let Some(f) = ports.get_mut(&k.port) {
                *f |= port_bits(k, v);
            }
        }
        for (port, flags) in ports {
            put(&self.port_flags, &(port as u32), &flags, 0)
                .map_err(|e| Error::io("writing port flags", e))?;
        }
        result.map(|()| added)
    }

    fn insert_one(
        &mut self,
        spec: &FlowSpec,
        used: &mut [bool],
        next_free: &mut usize,
        existing: &std::collections::HashSet<FlowKey>,
    ) -> Result<(FlowKey, FlowValue)> {
        let local = spec
            .local
            .ok_or_else(|| Error::Invalid("a flow needs --local ADDR:PORT".into()))?;
        if local.port() == 0 {
            return Err(Error::Invalid("port 0 is not a media port".into()));
        }
        if spec.ssrc.is_some() && spec.expect_ssrc.is_some() {
            return Err(Error::Invalid(
                "use either --ssrc (key) or --expect-ssrc (port-level), not both".into(),
            ));
        }
        if spec.name.len() >= FLOW_NAME_LEN {
            return Err(Error::Invalid(format!(
                "flow name longer than {} bytes",
                FLOW_NAME_LEN - 1
            )));
        }
        let key = make_key(local, spec.ssrc);
        if existing.contains(&key) {
            return Err(Error::FlowExists(describe(&key)));
        }
        while *next_free < used.len() && used[*next_free] {
            *next_free += 1;
        }
        if *next_free >= used.len() {
            return Err(Error::TableFull(self.max_streams()));
        }
        let slot = *next_free as u32;
        if !self.zero_slot(slot) {
            return Err(Error::Invalid(format!(
                "stream slot {slot} outside the statistics array"
            )));
        }
        let mut name = [0u8; FLOW_NAME_LEN];
        name[..spec.name.len()].copy_from_slice(spec.name.as_bytes());
        let value = FlowValue {
            slot,
            clock_rate: spec.clock_rate,
            expected_ssrc: spec.expect_ssrc.unwrap_or(0),
            flags: if spec.expect_ssrc.is_some() {
                FLOW_EXPECT_SSRC
            } else {
                0
            },
            created_unix: unix_now(),
            name,
        };
        put(&self.flows, &key, &value, BPF_NOEXIST).map_err(|e| match e.raw_os_error() {
            Some(libc::E2BIG) | Some(libc::ENOSPC) | Some(libc::ENOMEM) => {
                Error::TableFull(self.max_streams())
            }
            Some(libc::EEXIST) => Error::FlowExists(describe(&key)),
            _ => Error::io("inserting the flow", e),
        })?;
        used[slot as usize] = true;
        self.sync_fast(&key, Some(&value))?;
        Ok((key, value))
    }

    /// The flow of `key`, if the table has it.
    pub fn get_flow(&self, key: &FlowKey) -> Result<Option<FlowValue>> {
        get(&self.flows, key).map_err(|e| Error::io("reading the flow table", e))
    }

    /// Removes a flow and recomputes its port's flags.
    pub fn del_flow(&mut self, key: &FlowKey) -> Result<FlowValue> {
        let value: FlowValue = get(&self.flows, key)
            .map_err(|e| Error::io("reading the flow table", e))?
            .ok_or_else(|| Error::NoSuchFlow(describe(key)))?;
        self.sync_fast(key, None)?;
        if !sys::delete_elem(self.flows.fd().as_fd(), sys::pod_bytes(key))
            .map_err(|e| Error::io("deleting the flow", e))?
        {
            return Err(Error::NoSuchFlow(describe(key)));
        }
        self.refresh_port(key.port)?;
        Ok(value)
    }

    /// Recomputes `PORT_FLAGS[port]` from the flow table.
    pub(super) fn refresh_port(&mut self, port: u16) -> Result<()> {
        let flags = self
            .flows()?
            .iter()
            .filter(|(k, _)| k.port == port)
            .fold(0, |acc, (k, v)| acc | port_bits(k, v));
        put(&self.port_flags, &(port as u32), &flags, 0)
            .map_err(|e| Error::io("writing port flags", e))
    }

    /// The port flags as the kernel sees them (for tests and `status`).
    pub fn port_flags(&self, port: u16) -> Result<u32> {
        get(&self.port_flags, &(port as u32))
            .map(Option::unwrap_or_default)
            .map_err(|e| Error::io("reading port flags", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_bits_by_key_kind() {
        let a: SocketAddr = "198.18.0.1:30000".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:30000".parse().unwrap();
        assert_eq!(port_bit(&make_key(a, Some(1))), PORT_EXACT_SSRC);
        assert_eq!(port_bit(&make_key(a, None)), PORT_EXACT);
        assert_eq!(port_bit(&make_key(any, Some(1))), PORT_ANY_SSRC);
        assert_eq!(port_bit(&make_key(any, None)), PORT_ANY);
    }

    #[test]
    fn describe_and_names() {
        let a: SocketAddr = "198.18.0.1:30000".parse().unwrap();
        assert_eq!(describe(&make_key(a, Some(42))), "198.18.0.1:30000 ssrc 42");
        let mut v = FlowValue {
            slot: 0,
            clock_rate: 0,
            expected_ssrc: 0,
            flags: 0,
            created_unix: 0,
            name: [0; FLOW_NAME_LEN],
        };
        v.name[..3].copy_from_slice(b"cam");
        assert_eq!(flow_name(&v), "cam");
    }
}
