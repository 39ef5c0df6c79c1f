//! Live-view sessions: the INVITE dialogs the core opens towards devices
//! (`POST /api/streams`), their answers, ACK, BYE in both directions,
//! CANCEL on the open timeout.
//!
//! A session is keyed by its y= value (10 digits, unique while it lives);
//! its RTP SSRC is that value as a number. The device's answer may carry a
//! different y= (some devices do): it is recorded and flagged, and the
//! media is still taken by port.

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use gb28181::{
    sdp::{self, MediaTransport, Offer, SessionKind},
    sip::{self as gsip, Head, Outgoing},
};
use serde::Serialize;
use tokio::sync::oneshot;
use tracing::{info, warn};

use std::sync::{Arc, Mutex};

use super::{fmt_addr, local_ip_for, ApiError, Core, Dest, Inbound, Purpose};
use gb35114::srtp::MasterKey;

use crate::{
    keys::KeyView,
    registry::wall_ms,
    stream::{self, Bound, MediaStats, Pipeline, Receiver, Recorder},
};

/// A stream as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Session {
    /// The y= value; also the API's stream ID.
    pub id: String,
    pub device: String,
    pub channel: String,
    pub transport: MediaTransport,
    /// RTP SSRC asked for (y= as a number).
    pub ssrc: u32,
    /// Our media address put in the offer.
    pub local: SocketAddr,
    /// "inviting", "proceeding", "established", "failed", "closed".
    pub state: &'static str,
    pub reason: Option<String>,
    /// The device's media address from its answer.
    pub remote: Option<SocketAddr>,
    /// SSRC from the answer's y= (None when it sent none).
    pub answer_ssrc: Option<u32>,
    /// The answer announced another SSRC than asked for.
    pub ssrc_mismatch: bool,
    /// `a=setup:` of the answer (TCP).
    pub setup: Option<String>,
    /// f= of the answer.
    pub format: Option<String>,
    pub created_ms: i64,
    pub established_ms: Option<i64>,
    pub closed_ms: Option<i64>,
    /// Whether the media is recorded.
    pub record: bool,
    /// srtp-sm4 session: where its key came from ("configured": the
    /// channel's keys, "offered": a session key the gateway offered in the
    /// INVITE, "answer": the key of the device's SDP answer) and the key's
    /// check value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub srtp: Option<SrtpView>,
    #[serde(skip)]
    pub(super) session_key: Option<MasterKey>,
    /// Where the media is forwarded.
    #[serde(skip)]
    pub(super) forward: Vec<ForwardRequest>,
    /// What the media did (filled when shown).
    pub media: Option<MediaStats>,
    /// The session's entry in the XDP flow table and what the kernel
    /// counted for it (updated every second).
    pub kernel: Option<KernelView>,
    #[serde(skip)]
    pub(super) dialog: Dialog,
    #[serde(skip)]
    pub(super) stats: Option<Arc<Mutex<MediaStats>>>,
}

impl Session {
    fn view(&self) -> Session {
        let mut v = self.clone();
        if let Some(s) = &self.stats {
            v.media = s.lock().ok().map(|m| m.clone());
        }
        v
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SrtpView {
    pub key_source: &'static str,
    pub check: Option<String>,
}

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

#[derive(Debug, Clone, Default)]
pub(super) struct Dialog {
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: Option<String>,
    /// Request-URI of the INVITE.
    pub uri: String,
    /// Contact of the 2xx (where in-dialog requests go).
    pub target: Option<String>,
    pub cseq: u32,
    pub branch: String,
    pub dest: Option<Dest>,
    /// Our host:port in Via/Contact.
    pub local_sip: String,
    pub ack: Option<Vec<u8>>,
    pub deadline: Option<Instant>,
    pub cancelled: bool,
}

/// Sessions of the core.
#[derive(Default)]
pub(super) struct Sessions {
    pub active: HashMap<String, Session>,
    pub by_call: HashMap<String, String>,
    pub closed: VecDeque<Session>,
    pub waiters: HashMap<String, oneshot::Sender<Result<Session, ApiError>>>,
    pub next_port: u16,
    pub next_stream: u16,
    /// Media sockets reserved for sessions not yet established.
    pub bound: HashMap<String, Bound>,
    pub receivers: HashMap<String, Receiver>,
}

const KEEP_CLOSED: usize = 200;

/// What `POST /api/streams` asks for.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamRequest {
    pub device: String,
    /// Channel ID (default: the device itself, as for an IPC).
    pub channel: Option<String>,
    /// "udp" (default), "tcp-passive" or "tcp-active".
    pub transport: Option<String>,
    /// Record the media (default: when `[media.record]` is configured).
    pub record: Option<bool>,
    /// Forward the PS/RTP to these destinations, each with its own SSRC.
    #[serde(default)]
    pub forward: Vec<ForwardRequest>,
    /// srtp-sm4: offer a fresh session key in the INVITE (`a=crypto`).
    /// Channels with configured srtp-sm4 keys are SRTP anyway (their keys
    /// never go on the wire).
    #[serde(default)]
    pub srtp: bool,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardRequest {
    pub dest: SocketAddr,
    /// Default: derived from the stream's SSRC.
    pub ssrc: Option<u32>,
    /// Re-encrypt toward this destination with srtp-sm4 under this master
    /// key (`inline:<base64 of key||salt>`, as in SDP).
    pub srtp: Option<String>,
}

impl Core {
    /// Our SIP host:port as the device should see it.
    pub(super) fn local_sip(&self, local: SocketAddr, peer: SocketAddr) -> String {
        let ip = self
            .cfg
            .advertise_ip
            .or_else(|| (!local.ip().is_unspecified()).then(|| local.ip()))
            .or_else(|| local_ip_for(peer))
            .unwrap_or(local.ip());
        SocketAddr::new(ip, local.port()).to_string()
    }

    fn alloc_port(&mut self) -> Option<u16> {
        let (lo, hi) = self.media_ports;
        let lo = lo + (lo & 1); // even RTP ports
        if lo > hi {
            return None;
        }
        let n = (hi - lo) / 2 + 1;
        let used: std::collections::HashSet<u16> = self
            .sessions
            .active
            .values()
            .map(|s| s.local.port())
            .collect();
        for i in 0..n {
            let p = lo + 2 * ((self.sessions.next_port.wrapping_add(i)) % n);
            if !used.contains(&p) {
                self.sessions.next_port = self.sessions.next_port.wrapping_add(i + 1) % n;
                return Some(p);
            }
        }
        None
    }

    fn alloc_y(&mut self) -> Option<String> {
        for _ in 0..10_000 {
            self.sessions.next_stream = self.sessions.next_stream % 9999 + 1;
            let y = sdp::ssrc_y(true, &self.domain, self.sessions.next_stream);
            if !self.sessions.active.contains_key(&y) {
                return Some(y);
            }
        }
        None
    }

    /// `POST /api/streams`: sends the INVITE; `reply` is answered when the
    /// session is established or has failed.
    pub(super) fn open_stream(
        &mut self,
        req: StreamRequest,
        reply: oneshot::Sender<Result<Session, ApiError>>,
    ) {
        match self.invite(req) {
            Ok(id) => {
                self.sessions.waiters.insert(id, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    fn invite(&mut self, req: StreamRequest) -> Result<String, ApiError> {
        let transport = match req.transport.as_deref() {
            None => MediaTransport::Udp,
            Some(t) => MediaTransport::parse(t).ok_or_else(|| {
                ApiError(
                    400,
                    format!("transport must be udp, tcp-passive or tcp-active, not {t:?}"),
                )
            })?,
        };
        let device = req.device.clone();
        let channel = req.channel.clone().unwrap_or_else(|| device.clone());
        let d = self
            .reg
            .devices
            .get(&device)
            .ok_or_else(|| ApiError(404, format!("no device {device}")))?;
        if !d.online {
            return Err(ApiError(409, format!("device {device} is offline")));
        }
        if channel != device {
            if let Some(ch) = self.reg.channels.get(&device) {
                if !ch.is_empty() && !ch.contains_key(&channel) {
                    return Err(ApiError(
                        404,
                        format!("device {device} has no channel {channel}"),
                    ));
                }
            }
        }
        if let Some(s) = self
            .sessions
            .active
            .values()
            .find(|s| s.device == device && s.channel == channel)
        {
            return Err(ApiError(
                409,
                format!(
                    "channel {channel} already has stream {} ({})",
                    s.id, s.state
                ),
            ));
        }
        let dest = *self
            .routes
            .get(&device)
            .ok_or_else(|| ApiError(409, format!("no route to device {device}")))?;
        let (d_local, d_addr) = (d.local, d.addr);
        // Reserve the port by binding it now: the device may send as soon
        // as it answers.
        let any: IpAddr = if d_addr.is_ipv4() {
            IpAddr::from([0u8; 4])
        } else {
            IpAddr::from([0u16; 8])
        };
        let mut reserved = None;
        for _ in 0..64 {
            let Some(p) = self.alloc_port() else { break };
            match stream::bind(any, p, transport) {
                Ok(b) => {
                    reserved = Some((p, b));
                    break;
                }
                Err(e) => warn!(port = p, error = %e, "media port unavailable, trying the next"),
            }
        }
        let (port, bound) =
            reserved.ok_or_else(|| ApiError(503, "no free media port in [media] ports".into()))?;
        let record = req.record.unwrap_or(self.media.record.is_some());
        let y = self
            .alloc_y()
            .ok_or_else(|| ApiError(503, "no free stream number".into()))?;
        let ssrc = sdp::y_to_ssrc(&y).unwrap_or(0);
        let media_ip: IpAddr = self
            .media
            .ip
            .or_else(|| (!d_local.ip().is_unspecified()).then(|| d_local.ip()))
            .or_else(|| local_ip_for(d_addr))
            .unwrap_or(d_local.ip());
        for f in &req.forward {
            if let Some(k) = &f.srtp {
                MasterKey::from_inline(k)
                    .map_err(|e| ApiError(400, format!("forward {}: srtp: {e}", f.dest)))?;
            }
        }
        let session_key = if req.srtp {
            Some(
                crate::keys::random_master_key()
                    .map_err(|e| ApiError(503, format!("cannot generate an SRTP key: {e}")))?,
            )
        } else {
            None
        };
        let crypto = session_key.as_ref().map(|k| k.crypto_attr(1));
        let body = Offer {
            platform_id: &self.cfg.id,
            kind: SessionKind::Play,
            channel: &channel,
            media_ip,
            port,
            transport,
            y: &y,
            range: None,
            crypto: crypto.as_deref().map(|c| c.trim_start_matches("a=")),
        }
        .build();
        let local_sip = self.local_sip(d_local, d_addr);
        let uri = format!("sip:{channel}@{}", fmt_addr(d_addr));
        let dialog = Dialog {
            call_id: gsip::token(20),
            local_tag: gsip::token(10),
            uri: uri.clone(),
            cseq: 1,
            branch: gsip::branch(),
            dest: Some(dest),
            local_sip: local_sip.clone(),
            deadline: Some(Instant::now() + Duration::from_secs(self.media.open_timeout_secs)),
            ..Dialog::default()
        };
        let subject = format!("{channel}:{y},{}:0", self.cfg.id);
        let from = format!("sip:{}@{}", self.cfg.id, self.domain);
        let to = format!("sip:{channel}@{}", self.domain);
        let contact = format!("sip:{}@{local_sip}", self.cfg.id);
        let msg = Outgoing {
            method: "INVITE",
            uri: &uri,
            transport: dest.transport(),
            local: &local_sip,
            branch: &dialog.branch,
            from: &from,
            from_tag: &dialog.local_tag,
            to: &to,
            to_tag: None,
            call_id: &dialog.call_id,
            cseq: 1,
            contact: Some(&contact),
            headers: &[("Subject", &subject)],
            content_type: Some("APPLICATION/SDP"),
            body: body.as_bytes(),
        }
        .build();
        self.client.start(
            &dialog.branch,
            "INVITE",
            msg.clone(),
            dest,
            dest.transport().reliable(),
            Instant::now(),
        );
        self.purposes.insert(
            super::pkey(&dialog.branch, "INVITE"),
            Purpose::Invite { session: y.clone() },
        );
        self.out.send(dest, msg);
        self.metrics.sessions.with_label_values(&["invited"]).inc();
        info!(device = %device, channel = %channel, stream = %y, port, transport = transport.as_str(), "INVITE sent");
        self.sessions
            .by_call
            .insert(dialog.call_id.clone(), y.clone());
        self.sessions.active.insert(
            y.clone(),
            Session {
                id: y.clone(),
                device,
                channel,
                transport,
                ssrc,
                local: SocketAddr::new(media_ip, port),
                state: "inviting",
                reason: None,
                remote: None,
                answer_ssrc: None,
                ssrc_mismatch: false,
                setup: None,
                format: None,
                created_ms: wall_ms(),
                established_ms: None,
                closed_ms: None,
                record,
                srtp: session_key.as_ref().map(|k| SrtpView {
                    key_source: "offered",
                    check: Some(k.check_value()),
                }),
                session_key,
                forward: req.forward.clone(),
                media: None,
                kernel: None,
                dialog,
                stats: None,
            },
        );
        self.sessions.bound.insert(y.clone(), bound);
        Ok(y)
    }

    /// A request inside one of our dialogs (ACK/BYE/CANCEL), built from it.
    fn in_dialog(
        &self,
        s: &Session,
        method: &str,
        cseq: u32,
        branch: &str,
        to_tag: Option<&str>,
    ) -> Vec<u8> {
        let d = &s.dialog;
        let from = format!("sip:{}@{}", self.cfg.id, self.domain);
        let to = format!("sip:{}@{}", s.channel, self.domain);
        let uri = match method {
            "CANCEL" => d.uri.clone(),
            _ => d.target.clone().unwrap_or_else(|| d.uri.clone()),
        };
        Outgoing {
            method,
            uri: &uri,
            transport: d
                .dest
                .map(|x| x.transport())
                .unwrap_or(gsip::Transport::Udp),
            local: &d.local_sip,
            branch,
            from: &from,
            from_tag: &d.local_tag,
            to: &to,
            to_tag,
            call_id: &d.call_id,
            cseq,
            contact: None,
            headers: &[],
            content_type: None,
            body: b"",
        }
        .build()
    }

    /// A response to our INVITE (provisional or final).
    pub(super) fn on_invite_response(&mut self, id: &str, h: &Head, branch: &str, is_final: bool) {
        let status = h.status.unwrap_or(0);
        let Some(s) = self.sessions.active.get_mut(id) else {
            return;
        };
        if h.to.tag.is_some() {
            s.dialog.remote_tag = h.to.tag.clone();
        }
        if !is_final {
            if s.state == "inviting" {
                s.state = "proceeding";
            }
            return;
        }
        if status >= 300 {
            // The transaction layer answers retransmissions with this ACK.
            let s = s.clone();
            let ack = self.in_dialog(&s, "ACK", s.dialog.cseq, branch, h.to.tag.as_deref());
            if let Some(dest) = s.dialog.dest {
                self.out.send(dest, ack.clone());
            }
            self.client.set_ack(branch, ack);
            let why = if s.dialog.cancelled {
                "open timeout (no answer in time; cancelled)".to_string()
            } else {
                format!(
                    "device answered {} {}",
                    status,
                    h.reason
                        .trim_start_matches(|c: char| c.is_ascii_digit() || c == ' ')
                )
            };
            self.fail(id, &why, 502);
            return;
        }
        // 2xx: the dialog is confirmed by our ACK whatever the SDP says.
        s.dialog.target = h.contact.as_ref().map(|c| c.uri.clone());
        let s2 = s.clone();
        let ack = self.in_dialog(
            &s2,
            "ACK",
            s2.dialog.cseq,
            &gsip::branch(),
            h.to.tag.as_deref(),
        );
        if let Some(dest) = s2.dialog.dest {
            self.out.send(dest, ack.clone());
        }
        let answer = sdp::parse(&h.body);
        let Some(s) = self.sessions.active.get_mut(id) else {
            return;
        };
        s.dialog.ack = Some(ack);
        s.dialog.deadline = None;
        // srtp-sm4 key of the answer (RFC 4568): the key the device
        // encrypts with; a malformed one makes the answer unusable.
        let answer = answer
            .map_err(|e| (e.reason(), e.to_string()))
            .and_then(|a| {
                let mut key = None;
                for c in &a.crypto {
                    match MasterKey::from_crypto_attr(c) {
                        Ok(Some((_, k))) => {
                            key = Some(k);
                            break;
                        }
                        Ok(None) => {}
                        Err(e) => return Err(("bad_crypto", format!("a=crypto: {e}"))),
                    }
                }
                Ok((a, key))
            });
        match answer {
            Ok((a, key)) => {
                if let Some(k) = key {
                    s.srtp = Some(SrtpView {
                        key_source: "answer",
                        check: Some(k.check_value()),
                    });
                    s.session_key = Some(k);
                }
                s.remote = a.ip.map(|ip| SocketAddr::new(ip, a.port));
                s.answer_ssrc = a.ssrc();
                s.ssrc_mismatch = a.ssrc().is_some_and(|x| x != s.ssrc);
                s.setup = a.setup.clone();
                s.format = a.f.clone();
                s.state = "established";
                s.established_ms = Some(wall_ms());
                let view = s.clone();
                self.start_media(&view);
                self.add_kernel_flow(id);
                let view = self
                    .sessions
                    .active
                    .get(id)
                    .map(|s| s.view())
                    .unwrap_or(view);
                if view.ssrc_mismatch {
                    self.metrics
                        .sessions
                        .with_label_values(&["ssrc_mismatch"])
                        .inc();
                    warn!(stream = %id, asked = view.ssrc, answered = ?view.answer_ssrc, "device answered another SSRC; media is taken by port");
                }
                self.metrics
                    .sessions
                    .with_label_values(&["established"])
                    .inc();
                info!(stream = %id, device = %view.device, remote = ?view.remote, "stream established");
                if let Some(w) = self.sessions.waiters.remove(id) {
                    let _ = w.send(Ok(view));
                }
            }
            Err((reason, e)) => {
                self.metrics.sdp_errors.with_label_values(&[reason]).inc();
                self.close(id, &format!("unusable SDP answer: {e}"), true, "failed");
            }
        }
    }

    /// A retransmitted 2xx to an INVITE whose transaction ended: ACK again.
    pub(super) fn reack(&mut self, h: &Head) -> bool {
        let Some(id) = self.sessions.by_call.get(&h.call_id) else {
            return false;
        };
        let Some(s) = self.sessions.active.get(id) else {
            return false;
        };
        if let (Some(ack), Some(dest)) = (&s.dialog.ack, s.dialog.dest) {
            self.out.send(dest, ack.clone());
            return true;
        }
        false
    }

    fn start_media(&mut self, s: &Session) {
        let Some(bound) = self.sessions.bound.remove(&s.id) else {
            return;
        };
        let recorder = if s.record {
            let cfg = self.media.record.clone().unwrap_or_default();
            match Recorder::new(cfg, &stream::record_base(&s.device, &s.channel, &s.id)) {
                Ok(r) => Some(r),
                Err(e) => {
                    warn!(stream = %s.id, error = %e, "cannot record (directory)");
                    None
                }
            }
        } else {
            None
        };
        let mut forwards = Vec::new();
        for (i, f) in s.forward.iter().enumerate() {
            let ssrc = f.ssrc.unwrap_or(
                s.ssrc
                    .wrapping_mul(2_654_435_761)
                    .wrapping_add(i as u32 + 1),
            );
            let key = f
                .srtp
                .as_deref()
                .and_then(|k| MasterKey::from_inline(k).ok());
            match stream::Forward::new(f.dest, ssrc) {
                Ok(x) => forwards.push(match &key {
                    Some(k) => x.with_srtp(k),
                    None => x,
                }),
                Err(e) => warn!(stream = %s.id, dest = %f.dest, error = %e, "cannot forward"),
            }
        }
        let mut view = KeyView::new(
            self.keys.clone(),
            &s.device,
            &s.channel,
            s.session_key.clone(),
        );
        // SRTP when the channel has srtp-sm4 keys or SDP agreed one.
        let srtp = view.srtp_configured();
        let pipe = Pipeline::new(&s.id, Some(s.ssrc), recorder)
            .with_forwards(forwards)
            .with_keys(Some(view), srtp);
        if srtp && s.srtp.is_none() {
            if let Some(sess) = self.sessions.active.get_mut(&s.id) {
                sess.srtp = Some(SrtpView {
                    key_source: "configured",
                    check: None,
                });
            }
        }
        let r = stream::start(bound, s.remote, pipe);
        if let Some(sess) = self.sessions.active.get_mut(&s.id) {
            sess.stats = Some(r.stats.clone());
        }
        self.sessions.receivers.insert(s.id.clone(), r);
    }

    /// Puts the session's flow (any local address, its port, expecting
    /// its SSRC) in the XDP table.
    fn add_kernel_flow(&mut self, id: &str) {
        let Some((target, maps)) = &mut self.dataplane else {
            return;
        };
        let Some(s) = self.sessions.active.get(id) else {
            return;
        };
        if s.transport != MediaTransport::Udp {
            // XDP classifies UDP: RTP over TCP is accounted by the receiver.
            return;
        }
        let spec = crate::dataplane::flows::FlowSpec {
            local: Some(SocketAddr::new(IpAddr::from([0u8; 4]), s.local.port())),
            ssrc: None,
            expect_ssrc: Some(s.ssrc),
            name: s.id.clone(),
            clock_rate: 90_000,
        };
        let _lock = target.lock();
        match maps.add_flow(&spec) {
            Ok((k, v)) => {
                let flow = crate::dataplane::flows::describe(&k);
                info!(stream = %id, %flow, slot = v.slot, "flow added to the kernel table");
                if let Some(s) = self.sessions.active.get_mut(id) {
                    s.kernel = Some(KernelView {
                        flow,
                        slot: v.slot,
                        key: Some(k),
                        ..KernelView::default()
                    });
                }
            }
            Err(e) => {
                warn!(stream = %id, error = %e, "cannot add the session's flow to the kernel table")
            }
        }
    }

    fn del_kernel_flow(&mut self, id: &str) {
        let Some((target, maps)) = &mut self.dataplane else {
            return;
        };
        let Some(key) = self
            .sessions
            .active
            .get(id)
            .and_then(|s| s.kernel.as_ref())
            .and_then(|k| k.key)
        else {
            return;
        };
        let _lock = target.lock();
        match maps.del_flow(&key) {
            Ok(_) => info!(stream = %id, "flow removed from the kernel table"),
            Err(e) => warn!(stream = %id, error = %e, "cannot remove the session's flow"),
        }
    }

    /// Every second: kernel counters of session flows, and the no-media
    /// timeout (kernel last-packet time when attached, else the receiver's).
    pub(super) fn media_timers(&mut self) {
        let timeout = self.media.no_media_timeout_secs;
        let now_mono = crate::dataplane::sys::monotonic_ns();
        let now_wall = wall_ms();
        let mut idle_out = Vec::new();
        let ids: Vec<String> = self
            .sessions
            .active
            .values()
            .filter(|s| s.state == "established")
            .map(|s| s.id.clone())
            .collect();
        for id in ids {
            let mut idle: Option<f64> = None;
            let slot = self
                .sessions
                .active
                .get(&id)
                .and_then(|s| s.kernel.as_ref())
                .map(|k| k.slot);
            if let (Some(slot), Some((_, maps))) = (slot, &mut self.dataplane) {
                let sum = maps.stream_summary(slot);
                if let Some(k) = self
                    .sessions
                    .active
                    .get_mut(&id)
                    .and_then(|s| s.kernel.as_mut())
                {
                    k.packets = sum.packets;
                    k.bytes = sum.bytes;
                    k.lost = sum.lost;
                    k.out_of_order = sum.out_of_order;
                    k.duplicates = sum.duplicates;
                    k.ssrc_mismatches = sum.ssrc_mismatch;
                    k.idle_secs = (sum.last_ns > 0)
                        .then(|| now_mono.saturating_sub(sum.last_ns) as f64 / 1e9);
                    idle = k.idle_secs;
                }
            } else if let Some(s) = self.sessions.active.get(&id) {
                let last = s
                    .stats
                    .as_ref()
                    .and_then(|m| m.lock().ok().and_then(|m| m.last_packet_ms));
                idle = last.map(|l| (now_wall - l) as f64 / 1000.0);
            }
            let Some(s) = self.sessions.active.get(&id) else {
                continue;
            };
            // Never a packet: count from the moment it was established.
            let idle = idle.unwrap_or_else(|| {
                (now_wall - s.established_ms.unwrap_or(now_wall)) as f64 / 1000.0
            });
            if timeout > 0 && idle >= timeout as f64 {
                idle_out.push((id, idle));
            }
        }
        for (id, idle) in idle_out {
            let src = if self.dataplane.is_some() {
                "kernel"
            } else {
                "receiver"
            };
            self.metrics.sessions.with_label_values(&["no_media"]).inc();
            self.close(
                &id,
                &format!("no media for {idle:.0} s ({src} last-packet time)"),
                true,
                "closed",
            );
        }
    }

    fn stop_media(&mut self, id: &str) {
        self.del_kernel_flow(id);
        self.sessions.bound.remove(id);
        if let Some(mut r) = self.sessions.receivers.remove(id) {
            r.stop();
        }
    }

    fn fail(&mut self, id: &str, why: &str, code: u16) {
        self.stop_media(id);
        if let Some(mut s) = self.sessions.active.remove(id) {
            self.sessions.by_call.remove(&s.dialog.call_id);
            s.state = "failed";
            s.reason = Some(why.to_string());
            s.closed_ms = Some(wall_ms());
            self.metrics.sessions.with_label_values(&["failed"]).inc();
            warn!(stream = %id, device = %s.device, why, "stream failed");
            if let Some(w) = self.sessions.waiters.remove(id) {
                let _ = w.send(Err(ApiError(code, format!("stream {id}: {why}"))));
            }
            self.remember(s);
        }
    }

    fn remember(&mut self, s: Session) {
        self.sessions.closed.push_back(s);
        while self.sessions.closed.len() > KEEP_CLOSED {
            self.sessions.closed.pop_front();
        }
    }

    /// Ends a session; with `bye`, tells the device.
    pub(super) fn close(
        &mut self,
        id: &str,
        reason: &str,
        bye: bool,
        state: &'static str,
    ) -> Option<Session> {
        self.stop_media(id);
        let s = self.sessions.active.remove(id)?;
        self.sessions.by_call.remove(&s.dialog.call_id);
        if bye && s.dialog.ack.is_some() {
            let branch = gsip::branch();
            let cseq = s.dialog.cseq + 1;
            let msg = self.in_dialog(&s, "BYE", cseq, &branch, s.dialog.remote_tag.as_deref());
            if let Some(dest) = s.dialog.dest {
                self.client.start(
                    &branch,
                    "BYE",
                    msg.clone(),
                    dest,
                    dest.transport().reliable(),
                    Instant::now(),
                );
                self.purposes
                    .insert(super::pkey(&branch, "BYE"), Purpose::Bye);
                self.out.send(dest, msg);
            }
        }
        let mut s = s;
        s.state = state;
        s.reason = Some(reason.to_string());
        s.closed_ms = Some(wall_ms());
        self.metrics.sessions.with_label_values(&[state]).inc();
        info!(stream = %id, device = %s.device, reason, "stream closed");
        if let Some(w) = self.sessions.waiters.remove(id) {
            let _ = w.send(Err(ApiError(502, format!("stream {id}: {reason}"))));
        }
        self.remember(s.clone());
        Some(s.view())
    }

    /// BYE from a device: answers it; false if it is not one of ours.
    pub(super) fn on_bye(&mut self, m: &Inbound) -> bool {
        let Some(id) = self.sessions.by_call.get(&m.head.call_id).cloned() else {
            return false;
        };
        self.reply(m, 200, "OK", &[]);
        self.close(&id, "BYE from the device", false, "closed");
        true
    }

    /// Open timeouts: CANCEL what is still ringing, give up what never answered.
    pub(super) fn session_timers(&mut self, now: Instant) {
        let late: Vec<String> = self
            .sessions
            .active
            .values()
            .filter(|s| s.dialog.deadline.is_some_and(|d| now >= d))
            .map(|s| s.id.clone())
            .collect();
        for id in late {
            let Some(s) = self.sessions.active.get_mut(&id) else {
                continue;
            };
            s.dialog.deadline = None;
            if s.state == "proceeding" && !s.dialog.cancelled {
                // CANCEL; the device answers the INVITE with 487 and the
                // session fails there. Give it 5 s more before dropping it.
                s.dialog.cancelled = true;
                s.dialog.deadline = Some(now + Duration::from_secs(5));
                let s = s.clone();
                let msg = self.in_dialog(&s, "CANCEL", s.dialog.cseq, &s.dialog.branch, None);
                if let Some(dest) = s.dialog.dest {
                    self.client.start(
                        &s.dialog.branch,
                        "CANCEL",
                        msg.clone(),
                        dest,
                        dest.transport().reliable(),
                        now,
                    );
                    self.out.send(dest, msg);
                }
            } else {
                self.client.forget(&s.dialog.branch.clone(), "INVITE");
                self.fail(&id, "open timeout (no answer in time)", 504);
            }
        }
    }

    /// Timer B: the device never answered the INVITE.
    pub(super) fn session_no_answer(&mut self, id: &str) {
        self.fail(id, "no answer to INVITE (Timer B)", 504);
    }

    /// Starts the configured receivers without SIP (`[[media.streams]]`).
    pub(crate) fn start_static_streams(&mut self) {
        for st in self.media.streams.clone() {
            let bound = match stream::bind(st.listen.ip(), st.listen.port(), MediaTransport::Udp) {
                Ok(b) => b,
                Err(e) => {
                    warn!(stream = %st.name, listen = %st.listen, error = %e, "cannot bind the static stream");
                    continue;
                }
            };
            let record = st.record.unwrap_or(self.media.record.is_some());
            let recorder = if record {
                Recorder::new(
                    self.media.record.clone().unwrap_or_default(),
                    &stream::record_base("static", &st.name, &st.name),
                )
                .map_err(|e| warn!(stream = %st.name, error = %e, "cannot record"))
                .ok()
            } else {
                None
            };
            let device = st.device.clone().unwrap_or_else(|| st.name.clone());
            let channel = st.channel.clone().unwrap_or_else(|| st.name.clone());
            let mut view = KeyView::new(self.keys.clone(), &device, &channel, None);
            let srtp = view.srtp_configured();
            let pipe = Pipeline::new(&st.name, None, recorder)
                .with_payload(&st.payload)
                .with_keys(Some(view), srtp);
            let r = stream::start(bound, None, pipe);
            let s = Session {
                id: st.name.clone(),
                device: st.device.clone().unwrap_or_default(),
                channel: st.channel.clone().unwrap_or_default(),
                transport: MediaTransport::Udp,
                ssrc: 0,
                local: st.listen,
                state: "static",
                reason: None,
                remote: None,
                answer_ssrc: None,
                ssrc_mismatch: false,
                setup: None,
                format: Some(st.payload.clone()),
                created_ms: wall_ms(),
                established_ms: Some(wall_ms()),
                closed_ms: None,
                record,
                srtp: srtp.then_some(SrtpView {
                    key_source: "configured",
                    check: None,
                }),
                session_key: None,
                forward: Vec::new(),
                media: None,
                kernel: None,
                dialog: Dialog::default(),
                stats: Some(r.stats.clone()),
            };
            info!(stream = %st.name, listen = %st.listen, payload = %st.payload, "static stream receiving");
            self.sessions.receivers.insert(st.name.clone(), r);
            self.sessions.active.insert(st.name, s);
        }
    }

    /// Closes the sessions of a device that went away.
    pub(super) fn close_device_sessions(&mut self, device: &str, reason: &str) {
        let ids: Vec<String> = self
            .sessions
            .active
            .values()
            .filter(|s| s.device == device)
            .map(|s| s.id.clone())
            .collect();
        for id in ids {
            self.close(&id, reason, true, "closed");
        }
    }

    pub(super) fn list_streams(&self, all: bool) -> Vec<Session> {
        let mut v: Vec<Session> = self.sessions.active.values().map(Session::view).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        if all {
            v.extend(self.sessions.closed.iter().rev().map(Session::view));
        }
        v
    }

    pub(super) fn get_stream(&self, id: &str) -> Option<Session> {
        self.sessions.active.get(id).map(Session::view).or_else(|| {
            self.sessions
                .closed
                .iter()
                .rev()
                .find(|s| s.id == id)
                .map(Session::view)
        })
    }
}
