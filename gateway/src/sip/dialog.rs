//! The INVITE dialogs the core opens towards devices for live view: the
//! offer, provisional and final answers, ACK, BYE in both directions,
//! CANCEL on the open timeout. What a dialog carries (media, kernel flow)
//! is the session layer's; this file only speaks SIP and tells
//! `crate::session` what happened.
//!
//! A session is keyed by its y= value (10 digits, unique while it lives);
//! its RTP SSRC is that value as a number. The device's answer may carry a
//! different y= (some devices do): it is recorded and flagged, and the
//! media is still taken by port.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use gb28181::{
    sdp::{self, MediaTransport, Offer, SessionKind},
    sip::{self as gsip, Head, Outgoing},
};
use gb35114::srtp::MasterKey;
use tokio::sync::oneshot;
use tracing::info;

use super::{
    core::{fmt_addr, Core, Purpose},
    transport::{local_ip_for, Dest, Inbound},
};
use crate::session::{self, Answer, Error, PlaybackView, Session, State};

/// What opening a live stream asks for (`POST /api/streams`, parsed).
#[derive(Debug, Clone)]
pub struct OpenStream {
    pub device: String,
    /// Channel ID (default: the device itself, as for an IPC).
    pub channel: Option<String>,
    pub transport: MediaTransport,
    /// Record the media (default: when `[media.record]` is configured).
    pub record: Option<bool>,
    /// Forward the PS/RTP to these destinations, each with its own SSRC.
    pub forward: Vec<session::Forward>,
    /// srtp-sm4: offer a fresh session key in the INVITE (`a=crypto`).
    pub srtp: bool,
    /// Playback or download of what the device recorded (None: live).
    pub history: Option<History>,
}

/// A playback or download: what, from when to when (Unix seconds), and
/// for a download how many times real time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct History {
    pub kind: SessionKind,
    pub start: u64,
    pub end: u64,
    pub download_speed: Option<u32>,
}

/// The SIP side of a session.
#[derive(Debug, Clone, Default)]
pub(super) struct Dialog {
    pub channel: String,
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: Option<String>,
    /// Request-URI of the INVITE.
    pub uri: String,
    /// Contact of the 2xx (where in-dialog requests go).
    pub target: Option<String>,
    pub cseq: u32,
    /// The CSeq of the last request we sent in the dialog (INFO, BYE
    /// follow it).
    pub last_cseq: u32,
    /// MANSRTSP's own CSeq (of the last control sent).
    pub mansrtsp_cseq: u32,
    pub branch: String,
    pub dest: Option<Dest>,
    /// Our host:port in Via/Contact.
    pub local_sip: String,
    pub ack: Option<Vec<u8>>,
    pub deadline: Option<Instant>,
    pub cancelled: bool,
}

/// The core's dialogs, by session ID.
#[derive(Default)]
pub(super) struct Dialogs {
    pub active: HashMap<String, Dialog>,
    pub by_call: HashMap<String, String>,
    /// API requests waiting for the session to be established or fail.
    pub waiters: HashMap<String, oneshot::Sender<Result<Session, Error>>>,
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

    /// `POST /api/streams`: sends the INVITE; `reply` is answered when the
    /// session is established or has failed.
    pub(super) fn open_stream(
        &mut self,
        req: OpenStream,
        reply: oneshot::Sender<Result<Session, Error>>,
    ) {
        match self.invite(req) {
            Ok(id) => {
                self.dialogs.waiters.insert(id, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    pub(super) fn invite(&mut self, req: OpenStream) -> Result<String, Error> {
        let transport = req.transport;
        let device = req.device.clone();
        let channel = req.channel.clone().unwrap_or_else(|| device.clone());
        let d = self
            .reg
            .devices
            .get(&device)
            .ok_or_else(|| Error::NotFound(format!("no device {device}")))?;
        if !d.online {
            return Err(Error::Conflict(format!("device {device} is offline")));
        }
        if channel != device {
            if let Some(ch) = self.reg.channels.get(&device) {
                if !ch.is_empty() && !ch.contains_key(&channel) {
                    return Err(Error::NotFound(format!(
                        "device {device} has no channel {channel}"
                    )));
                }
            }
        }
        if let Some(s) = self.sessions.of_channel(&device, &channel) {
            return Err(Error::Conflict(format!(
                "channel {channel} already has stream {} ({})",
                s.id, s.state
            )));
        }
        let dest = *self
            .routes
            .get(&device)
            .ok_or_else(|| Error::Conflict(format!("no route to device {device}")))?;
        let (d_local, d_addr) = (d.local, d.addr);
        let (port, bound) = self.sessions.reserve_port(d_addr.ip(), transport)?;
        let record = req
            .record
            .unwrap_or(self.sessions.media_config().record.is_some());
        let y = self.sessions.alloc_y(&self.domain, req.history.is_none())?;
        let ssrc = sdp::y_to_ssrc(&y).unwrap_or(0);
        let media_ip: IpAddr = self
            .sessions
            .media_config()
            .ip
            .or_else(|| (!d_local.ip().is_unspecified()).then(|| d_local.ip()))
            .or_else(|| local_ip_for(d_addr))
            .unwrap_or(d_local.ip());
        let session_key = if req.srtp {
            Some(
                crate::keys::random_master_key()
                    .map_err(|e| Error::Unavailable(format!("cannot generate an SRTP key: {e}")))?,
            )
        } else {
            None
        };
        let crypto = session_key.as_ref().map(|k| k.crypto_attr(1));
        let body = Offer {
            platform_id: &self.cfg.id,
            kind: req.history.map_or(SessionKind::Play, |h| h.kind),
            channel: &channel,
            media_ip,
            port,
            transport,
            y: &y,
            range: req.history.map(|h| (h.start, h.end)),
            download_speed: req.history.and_then(|h| h.download_speed),
            crypto: crypto.as_deref().map(|c| c.trim_start_matches("a=")),
        }
        .build();
        let local_sip = self.local_sip(d_local, d_addr);
        let uri = format!("sip:{channel}@{}", fmt_addr(d_addr));
        let open_timeout = self.sessions.media_config().open_timeout_secs;
        let dialog = Dialog {
            channel: channel.clone(),
            call_id: gsip::token(20),
            local_tag: gsip::token(10),
            uri: uri.clone(),
            cseq: 1,
            last_cseq: 1,
            branch: gsip::branch(),
            dest: Some(dest),
            local_sip: local_sip.clone(),
            deadline: Some(Instant::now() + Duration::from_secs(open_timeout)),
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
        self.start_request(
            dest,
            &dialog.branch,
            "INVITE",
            msg,
            Some(Purpose::Invite { session: y.clone() }),
        );
        info!(device = %device, channel = %channel, stream = %y, port, transport = transport.as_str(), "INVITE sent");
        self.dialogs
            .by_call
            .insert(dialog.call_id.clone(), y.clone());
        self.dialogs.active.insert(y.clone(), dialog);
        let mut session = Session::inviting(
            y.clone(),
            device,
            channel,
            transport,
            ssrc,
            SocketAddr::new(media_ip, port),
            record,
            session_key,
            req.forward,
        );
        session.playback = req.history.map(|h| {
            PlaybackView::new(
                h.kind == SessionKind::Download,
                h.start,
                h.end,
                h.download_speed,
            )
        });
        self.sessions.insert(session, bound);
        Ok(y)
    }

    /// A request inside one of our dialogs (ACK/BYE/CANCEL), built from it.
    pub(super) fn in_dialog(
        &self,
        d: &Dialog,
        method: &str,
        cseq: u32,
        branch: &str,
        to_tag: Option<&str>,
    ) -> Vec<u8> {
        self.in_dialog_with(d, method, cseq, branch, to_tag, None)
    }

    /// The same with a body (INFO: `(content type, bytes)`).
    pub(super) fn in_dialog_with(
        &self,
        d: &Dialog,
        method: &str,
        cseq: u32,
        branch: &str,
        to_tag: Option<&str>,
        body: Option<(&str, &[u8])>,
    ) -> Vec<u8> {
        let from = format!("sip:{}@{}", self.cfg.id, self.domain);
        let to = format!("sip:{}@{}", d.channel, self.domain);
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
            content_type: body.map(|b| b.0),
            body: body.map_or(&b""[..], |b| b.1),
        }
        .build()
    }

    /// A response to our INVITE (provisional or final).
    pub(super) fn on_invite_response(&mut self, id: &str, h: &Head, branch: &str, is_final: bool) {
        let status = h.status.unwrap_or(0);
        let Some(d) = self.dialogs.active.get_mut(id) else {
            return;
        };
        if h.to.tag.is_some() {
            d.remote_tag = h.to.tag.clone();
        }
        if !is_final {
            self.sessions.proceeding(id);
            return;
        }
        if status >= 300 {
            // The transaction layer answers retransmissions with this ACK.
            let d = d.clone();
            let ack = self.in_dialog(&d, "ACK", d.cseq, branch, h.to.tag.as_deref());
            if let Some(dest) = d.dest {
                self.out.send(dest, ack.clone());
            }
            self.client.set_ack(branch, ack);
            let why = if d.cancelled {
                "open timeout (no answer in time; cancelled)".to_string()
            } else {
                format!(
                    "device answered {} {}",
                    status,
                    h.reason
                        .trim_start_matches(|c: char| c.is_ascii_digit() || c == ' ')
                )
            };
            self.fail(id, &why, Error::Upstream);
            return;
        }
        // 2xx: the dialog is confirmed by our ACK whatever the SDP says.
        d.target = h.contact.as_ref().map(|c| c.uri.clone());
        let d2 = d.clone();
        let ack = self.in_dialog(&d2, "ACK", d2.cseq, &gsip::branch(), h.to.tag.as_deref());
        if let Some(d) = self.dialogs.active.get_mut(id) {
            d.ack = Some(ack.clone());
            d.deadline = None;
        }
        // The ACK goes out once the receiver, the kernel flow and any relay
        // legs are in place: devices start sending on it.
        // srtp-sm4 key of the answer (RFC 4568): the key the device
        // encrypts with; a malformed one makes the answer unusable.
        let answer = sdp::parse(&h.body)
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
                Ok(Answer {
                    remote: a.ip.map(|ip| SocketAddr::new(ip, a.port)),
                    ssrc: a.ssrc(),
                    setup: a.setup.clone(),
                    format: a.f.clone(),
                    key,
                })
            });
        match answer {
            Ok(a) => {
                let view = self.sessions.establish(id, a);
                if view.is_some() {
                    self.save_session(id);
                    self.relay_session_ready(id);
                }
                if let Some(dest) = d2.dest {
                    self.out.send(dest, ack);
                }
                if let (Some(view), Some(w)) = (view, self.dialogs.waiters.remove(id)) {
                    let _ = w.send(Ok(view));
                }
            }
            Err((reason, e)) => {
                if let Some(dest) = d2.dest {
                    self.out.send(dest, ack);
                }
                self.metrics.sdp_errors.with_label_values(&[reason]).inc();
                self.close(
                    id,
                    &format!("unusable SDP answer: {e}"),
                    true,
                    State::Failed,
                );
            }
        }
    }

    /// A retransmitted 2xx to an INVITE whose transaction ended: ACK again.
    pub(super) fn reack(&mut self, h: &Head) -> bool {
        let Some(id) = self.dialogs.by_call.get(&h.call_id) else {
            return false;
        };
        let Some(d) = self.dialogs.active.get(id) else {
            return false;
        };
        if let (Some(ack), Some(dest)) = (&d.ack, d.dest) {
            self.out.send(dest, ack.clone());
            return true;
        }
        false
    }

    /// The session could not be opened; `kind` makes the API's error.
    pub(super) fn fail(&mut self, id: &str, why: &str, kind: fn(String) -> Error) {
        if let Some(d) = self.dialogs.active.remove(id) {
            self.dialogs.by_call.remove(&d.call_id);
        }
        self.forget_session(id);
        self.playback_session_ended(id, why);
        if self.sessions.fail(id, why).is_some() {
            if let Some(w) = self.dialogs.waiters.remove(id) {
                let _ = w.send(Err(kind(format!("stream {id}: {why}"))));
            }
            self.relay_session_ended(id, why);
        }
    }

    /// Ends a session; with `bye`, tells the device.
    pub(super) fn close(
        &mut self,
        id: &str,
        reason: &str,
        bye: bool,
        state: State,
    ) -> Option<Session> {
        let device = self.sessions.get(id)?.device.clone();
        self.playback_session_ended(id, reason);
        if let Some(d) = self.dialogs.active.remove(id) {
            self.dialogs.by_call.remove(&d.call_id);
            if bye && d.ack.is_some() {
                self.bye_dialog(&d, &device);
            }
        }
        self.forget_session(id);
        let s = self.sessions.close(id, reason, state)?;
        if let Some(w) = self.dialogs.waiters.remove(id) {
            let _ = w.send(Err(Error::Upstream(format!("stream {id}: {reason}"))));
        }
        self.relay_session_ended(id, reason);
        Some(s)
    }

    /// BYE from a device: answers it; false if it is not one of ours.
    pub(super) fn on_bye(&mut self, m: &Inbound) -> bool {
        let Some(id) = self.dialogs.by_call.get(&m.head.call_id).cloned() else {
            return false;
        };
        self.reply(m, 200, "OK", &[]);
        self.close(&id, "BYE from the device", false, State::Closed);
        true
    }

    /// Open timeouts: CANCEL what is still ringing, give up what never answered.
    pub(super) fn session_timers(&mut self, now: Instant) {
        let late: Vec<String> = self
            .dialogs
            .active
            .iter()
            .filter(|(_, d)| d.deadline.is_some_and(|t| now >= t))
            .map(|(id, _)| id.clone())
            .collect();
        for id in late {
            let proceeding = self
                .sessions
                .get(&id)
                .is_some_and(|s| s.state == State::Proceeding);
            let Some(d) = self.dialogs.active.get_mut(&id) else {
                continue;
            };
            d.deadline = None;
            if proceeding && !d.cancelled {
                // CANCEL; the device answers the INVITE with 487 and the
                // session fails there. Give it 5 s more before dropping it.
                d.cancelled = true;
                d.deadline = Some(now + Duration::from_secs(5));
                let d = d.clone();
                let msg = self.in_dialog(&d, "CANCEL", d.cseq, &d.branch, None);
                if let Some(dest) = d.dest {
                    self.start_request(dest, &d.branch, "CANCEL", msg, None);
                }
            } else {
                let branch = d.branch.clone();
                self.client.forget(&branch, "INVITE");
                self.fail(&id, "open timeout (no answer in time)", Error::Timeout);
            }
        }
    }

    /// Timer B: the device never answered the INVITE.
    pub(super) fn session_no_answer(&mut self, id: &str) {
        self.fail(id, "no answer to INVITE (Timer B)", Error::Timeout);
    }

    /// Every second: close the sessions whose media stopped.
    pub(super) fn media_timers(&mut self) {
        for (id, why) in self.sessions.idle() {
            self.close(&id, &why, true, State::Closed);
        }
        self.sessions.offload_legs();
    }

    /// Closes the sessions of a device that went away.
    pub(super) fn close_device_sessions(&mut self, device: &str, reason: &str) {
        for id in self.sessions.of_device(device) {
            self.close(&id, reason, true, State::Closed);
        }
    }
}
