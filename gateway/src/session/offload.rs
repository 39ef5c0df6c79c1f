//! Hand-over of relay legs to the kernel (rtpengine's kernel forwarding,
//! for GB28181 cascade legs). Every second, for each session with relay
//! legs, the legs the kernel can take (UDP to UDP, not decrypted or
//! re-muxed, from a confirmed source, started at a key frame) are put in
//! the stream's kernel relay; the others stay with the userspace relay,
//! each with the reason shown (`LegView::path`, `LegView::reason`).
//!
//! The hand-over loses and duplicates nothing:
//! - XDP mode (one leg, nothing local): once the entry is in, the packets
//!   stop reaching the daemon; whatever still does (a fallback: fragment,
//!   unresolved neighbour, ...) the userspace leg sends, with the same
//!   sequence mapping (output = input + delta) as the kernel.
//! - TC modes (several legs, or the stream is also recorded or forwarded
//!   locally): the kernel takes input sequence numbers from a start point
//!   64 packets ahead of what the leg has sent, the userspace leg sends the
//!   ones before it; once the kernel has sent its first copy, both sides
//!   switch to "the kernel takes all" (a serial-number threshold only holds
//!   for half the sequence space).
//!
//! A change of the set of legs the kernel takes goes through userspace:
//! every leg is handed back, the entry removed, and the new set handed over
//! at the next round from fresh state.

use std::net::{IpAddr, SocketAddr};

use gateway_common::RELAY_MAX_OUT;
use gb28181::sdp::MediaTransport;
use serde::Serialize;
use tracing::{info, warn};

use super::{Sessions, State};
use crate::dataplane::relay::{self, Mode, Output};

/// How far ahead of the leg's last packet the kernel starts (TC modes).
const TC_START_AHEAD: u16 = 64;

/// Where a relay leg's packets are sent from, and what the kernel sent.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LegPath {
    /// "userspace", "kernel-xdp", "kernel-tc-copy" or "kernel-tc-only".
    pub path: &'static str,
    /// Why the userspace relay sends it (when it does).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The kernel's counters of this leg (`counted_by: kernel`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<LegKernel>,
    /// The kernel failed this leg: not handed over again before this time
    /// (wall ms), and why.
    #[serde(skip)]
    pub backoff: Option<(i64, String)>,
}

/// How long a leg the kernel failed stays in userspace.
const BACKOFF_MS: i64 = 30_000;

#[derive(Debug, Clone, Default, Serialize)]
pub struct LegKernel {
    pub counted_by: &'static str,
    pub packets: u64,
    pub bytes: u64,
    /// Packets of the leg the kernel left to the userspace relay.
    pub passed: u64,
    /// Output index in the stream's relay entry.
    pub output: u32,
    /// The source the kernel takes the stream from.
    pub source: Option<SocketAddr>,
    /// TC modes: the input sequence number the kernel started at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_seq: Option<u16>,
    /// TC modes: the kernel takes every packet (start point passed).
    pub takes_all: bool,
}

fn path_name(m: Mode) -> &'static str {
    match m {
        Mode::Xdp => "kernel-xdp",
        Mode::TcCopy => "kernel-tc-copy",
        Mode::TcOnly => "kernel-tc-only",
    }
}

/// Our address towards `dest` (what the stack would put as the source).
fn local_ip_toward(dest: SocketAddr) -> Option<IpAddr> {
    let bind: SocketAddr = if dest.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = std::net::UdpSocket::bind(bind).ok()?;
    s.connect(dest).ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

impl Sessions {
    /// Every second: hands legs over to the kernel (or back), refreshes
    /// the kernel's counters of the legs it sends.
    pub fn offload_legs(&mut self) {
        let ids: Vec<String> = self
            .active
            .values()
            .filter(|s| !s.legs.is_empty() && matches!(s.state, State::Established | State::Static))
            .map(|s| s.id.clone())
            .collect();
        for id in ids {
            self.offload_session(&id);
        }
    }

    /// Why leg `leg` of session `id` stays in userspace (`None`: the
    /// kernel can take it), and the output it would be.
    fn leg_candidate(&self, id: &str, leg: usize) -> Result<Output, String> {
        let s = self.active.get(id).ok_or("no session")?;
        let l = s.legs.get(leg).ok_or("no leg")?;
        if let Some((until, why)) = &l.relay.backoff {
            if crate::sys::wall_ms() < *until {
                return Err(format!("{why}; the kernel is tried again in 30 s"));
            }
        }
        if l.transport != MediaTransport::Udp {
            return Err("TCP leg (the kernel relays UDP to UDP)".into());
        }
        if s.transport != MediaTransport::Udp {
            return Err("the device sends over TCP".into());
        }
        if s.srtp.is_some() {
            return Err("SRTP-SM4 media is decrypted in userspace".into());
        }
        let Some(k) = &self.kernel else {
            return Err("no kernel data plane (XDP not attached)".into());
        };
        if s.kernel.as_ref().and_then(|v| v.key).is_none() {
            return Err("the stream is not in the kernel flow table".into());
        }
        if let Some(why) = k.relay_unavailable(l.dest.is_ipv6()) {
            return Err(why);
        }
        let shared = self
            .receivers
            .get(id)
            .and_then(|r| r.legs.shared(&l.id))
            .ok_or("the leg is not running yet")?;
        if shared.remuxed() {
            return Err("re-muxed from decrypted media".into());
        }
        let (delta, _) = shared
            .mapping()
            .ok_or("waiting for a key frame to start at")?;
        let media = self
            .receivers
            .get(id)
            .map(|r| r.snapshot())
            .unwrap_or_default();
        // A leg in the kernel keeps its source (the kernel lets no other
        // through) unless another one is confirmed: the camera moved.
        let installed = l.relay.kernel.as_ref().and_then(|k| k.source);
        let source = match (media.source, media.source_confirmed, installed) {
            (Some(src), true, Some(old)) if src != old => {
                return Err(format!("the media's source changed from {old} to {src}"))
            }
            (_, _, Some(old)) => old,
            (Some(src), true, None) => src,
            _ => return Err("the media's source is not confirmed yet".into()),
        };
        if source.is_ipv4() != l.dest.is_ipv4() {
            return Err("the source and the destination are of different IP versions".into());
        }
        let ip = local_ip_toward(l.dest).ok_or("no route to the destination")?;
        Ok(Output {
            dest: l.dest,
            from: SocketAddr::new(ip, l.local_port),
            ssrc: l.ssrc,
            seq_delta: delta,
            start_seq: None,
        })
    }

    fn offload_session(&mut self, id: &str) {
        let Some(s) = self.active.get(id) else {
            return;
        };
        let n = s.legs.len();
        // Which legs the kernel can take now (at most RELAY_MAX_OUT).
        let mut wanted: Vec<(usize, Output)> = Vec::new();
        let mut reasons: Vec<Option<String>> = vec![None; n];
        for (i, reason) in reasons.iter_mut().enumerate() {
            match self.leg_candidate(id, i) {
                Ok(o) if wanted.len() < RELAY_MAX_OUT => wanted.push((i, o)),
                Ok(_) => {
                    *reason = Some(format!(
                        "the kernel relays at most {RELAY_MAX_OUT} legs per stream"
                    ))
                }
                Err(why) => *reason = Some(why),
            }
        }
        let Some(s) = self.active.get(id) else {
            return;
        };
        let local = s.record || !s.forward.is_empty() || wanted.len() < n;
        let mode = Mode::choose(wanted.len(), local);
        let current: Vec<&str> = s
            .legs
            .iter()
            .filter(|l| l.relay.kernel.is_some())
            .map(|l| l.id.as_str())
            .collect();
        let want_ids: Vec<&str> = wanted.iter().map(|(i, _)| s.legs[*i].id.as_str()).collect();
        let current_mode = s
            .legs
            .iter()
            .find(|l| l.relay.kernel.is_some())
            .map(|l| l.relay.path);
        let same = current == want_ids && current_mode == Some(path_name(mode));

        if !current.is_empty() && !same {
            self.hand_back(id, "the set of kernel legs changed");
            return;
        }
        if wanted.is_empty() {
            self.set_userspace_reasons(id, &reasons);
            return;
        }
        if same {
            self.refresh_kernel_legs(id, mode);
            self.set_userspace_reasons(id, &reasons);
            return;
        }
        self.hand_over(id, mode, wanted);
        self.set_userspace_reasons(id, &reasons);
    }

    fn set_userspace_reasons(&mut self, id: &str, reasons: &[Option<String>]) {
        if let Some(s) = self.active.get_mut(id) {
            for (l, r) in s.legs.iter_mut().zip(reasons) {
                if l.relay.kernel.is_none() {
                    l.relay.path = "userspace";
                    l.relay.reason = r.clone();
                }
            }
        }
    }

    /// Puts `wanted` in the kernel in `mode`.
    fn hand_over(&mut self, id: &str, mode: Mode, mut wanted: Vec<(usize, Output)>) {
        let (Some(k), Some(s)) = (&self.kernel, self.active.get(id)) else {
            return;
        };
        let Some(key) = s.kernel.as_ref().and_then(|v| v.key) else {
            return;
        };
        let media = self
            .receivers
            .get(id)
            .map(|r| r.snapshot())
            .unwrap_or_default();
        let Some(source) = media.source else {
            return;
        };
        let legs = self.receivers.get(id).map(|r| r.legs.clone());
        let tc = mode != Mode::Xdp;
        if tc {
            for (i, o) in &mut wanted {
                let last = legs
                    .as_ref()
                    .and_then(|l| l.shared(&s.legs[*i].id))
                    .and_then(|sh| sh.mapping())
                    .map_or(0, |(_, last)| last);
                o.start_seq = Some(last.wrapping_add(TC_START_AHEAD));
            }
        }
        let outputs: Vec<Output> = wanted.iter().map(|(_, o)| o.clone()).collect();
        let entry = match relay::entry(source, mode, &outputs) {
            Ok(e) => e,
            Err(e) => {
                warn!(stream = %id, error = %e, "kernel relay entry refused");
                return;
            }
        };
        if let Err(e) = k.set_relay(&key, &entry) {
            warn!(stream = %id, error = %e, "cannot install the kernel relay; the userspace relay goes on");
            return;
        }
        let path = path_name(mode);
        let Some(s) = self.active.get_mut(id) else {
            return;
        };
        for (out, (i, o)) in wanted.iter().enumerate() {
            let l = &mut s.legs[*i];
            if let (Some(start), Some(sh)) =
                (o.start_seq, legs.as_ref().and_then(|x| x.shared(&l.id)))
            {
                sh.set_kernel_from(Some(start));
            }
            l.relay = LegPath {
                path,
                reason: None,
                kernel: Some(LegKernel {
                    counted_by: "kernel",
                    output: out as u32,
                    start_seq: o.start_seq,
                    source: Some(source),
                    ..LegKernel::default()
                }),
                backoff: None,
            };
            info!(stream = %id, leg = %l.id, dest = %l.dest, path, from = %o.from, "relay leg handed over to the kernel");
        }
        self.metrics
            .sessions
            .with_label_values(&["leg_kernel"])
            .inc();
    }

    /// Refreshes the kernel's counters of the session's kernel legs; in
    /// the TC modes, once the kernel has sent, drops the start point.
    fn refresh_kernel_legs(&mut self, id: &str, mode: Mode) {
        let (Some(k), Some(s)) = (&self.kernel, self.active.get(id)) else {
            return;
        };
        let Some(slot) = s.kernel.as_ref().map(|v| v.slot) else {
            return;
        };
        let key = s.kernel.as_ref().and_then(|v| v.key);
        let legs = self.receivers.get(id).map(|r| r.legs.clone());
        let mut all_started = mode != Mode::Xdp;
        let mut any_pending = false;
        let mut failed = false;
        let Some(s) = self.active.get_mut(id) else {
            return;
        };
        for l in s.legs.iter_mut() {
            let Some(kv) = l.relay.kernel.as_mut() else {
                continue;
            };
            if let Some(st) = k.relay_stats(slot, kv.output) {
                // A TC copy the kernel could not make is lost (the leg
                // leaves it to the kernel): back to userspace for a while.
                if mode != Mode::Xdp && st.passed > kv.passed {
                    failed = true;
                    l.relay.backoff = Some((
                        crate::sys::wall_ms() + BACKOFF_MS,
                        format!(
                            "the kernel could not send {} copies (see relay_pass_* in gateway_kernel_packets_total)",
                            st.passed - kv.passed
                        ),
                    ));
                }
                kv.packets = st.packets;
                kv.bytes = st.bytes;
                kv.passed = st.passed;
                if st.packets == 0 {
                    all_started = false;
                }
            }
            if kv.start_seq.is_some() && !kv.takes_all {
                any_pending = true;
            }
        }
        if failed {
            self.hand_back(id, "the kernel could not send some copies");
            return;
        }
        if !(all_started && any_pending) {
            return;
        }
        // Every TC output has sent: the kernel takes all from now on.
        let Some(key) = key else { return };
        let media_source = self.receivers.get(id).and_then(|r| r.snapshot().source);
        let Some(source) = media_source else { return };
        let Some(s) = self.active.get_mut(id) else {
            return;
        };
        let mut outputs: Vec<(usize, Output)> = Vec::new();
        for l in s.legs.iter() {
            if let Some(kv) = &l.relay.kernel {
                let (delta, _) = legs
                    .as_ref()
                    .and_then(|x| x.shared(&l.id))
                    .and_then(|sh| sh.mapping())
                    .unwrap_or((0, 0));
                let Some(ip) = local_ip_toward(l.dest) else {
                    return;
                };
                outputs.push((
                    kv.output as usize,
                    Output {
                        dest: l.dest,
                        from: SocketAddr::new(ip, l.local_port),
                        ssrc: l.ssrc,
                        seq_delta: delta,
                        start_seq: None,
                    },
                ));
            }
        }
        outputs.sort_by_key(|(o, _)| *o);
        let outs: Vec<Output> = outputs.into_iter().map(|(_, o)| o).collect();
        let Ok(entry) = relay::entry(source, mode, &outs) else {
            return;
        };
        if k.set_relay(&key, &entry).is_err() {
            return;
        }
        for l in s.legs.iter_mut() {
            if let Some(kv) = l.relay.kernel.as_mut() {
                kv.takes_all = true;
                if let Some(sh) = legs.as_ref().and_then(|x| x.shared(&l.id)) {
                    sh.set_kernel_all();
                }
            }
        }
    }

    /// Every kernel leg of the session back to userspace, the relay entry
    /// removed (the userspace legs first take everything again).
    pub(super) fn hand_back(&mut self, id: &str, why: &str) {
        let legs = self.receivers.get(id).map(|r| r.legs.clone());
        let Some(s) = self.active.get_mut(id) else {
            return;
        };
        let mut any = false;
        for l in s.legs.iter_mut() {
            if l.relay.kernel.take().is_some() {
                any = true;
                if let Some(sh) = legs.as_ref().and_then(|x| x.shared(&l.id)) {
                    sh.set_kernel_from(None);
                }
                l.relay.path = "userspace";
                l.relay.reason = Some(why.to_string());
            }
        }
        let key = s.kernel.as_ref().and_then(|v| v.key);
        if let (true, Some(k), Some(key)) = (any, &self.kernel, key) {
            k.clear_relay(&key);
            info!(stream = %id, why, "relay legs handed back to userspace");
        }
    }
}
