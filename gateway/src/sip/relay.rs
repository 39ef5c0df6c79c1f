//! Live view relayed to superior platforms (cascade): the superior's INVITE
//! for a shared channel is answered with the gateway's own SDP once the
//! device's session is established (opened for it, or already running for
//! the local recorder, the API or another superior); the session then
//! feeds a relay leg (PS/RTP as received, under the SSRC of the superior's
//! `y=`, from the next key frame). A BYE from either side ends only what
//! nobody else uses; an unanswered 200 (no ACK in 32 s) ends the leg.
//!
//! The legs are the session layer's (`Sessions::add_leg`); this file only
//! speaks SIP. Relaying is in user space here; the kernel relay takes the
//! same legs over.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use gb28181::{
    sdp::{self, MediaTransport, SenderAnswer},
    sip::{self as gsip, Head, NameAddr, Outgoing},
};
use tracing::{info, warn};

use super::{
    core::{Core, Purpose},
    dialog::OpenStream,
    transport::{local_ip_for, Dest, Inbound},
};
use crate::session::{Error, State};

/// 2xx retransmission until the ACK (RFC 3261 13.3.1.4): T1 doubling to T2,
/// for 64 x T1.
const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);
const ACK_WAIT: Duration = Duration::from_secs(32);
/// Relays one superior may hold at once, and device sessions it may have
/// opening at once (a flood of INVITEs is refused, not queued).
const MAX_RELAYS: usize = 512;
const MAX_OPENING: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RelayState {
    /// Waiting for the device's session.
    Waiting,
    /// 200 OK sent, no ACK yet.
    Answered,
    Confirmed,
}

/// One superior's view of one channel.
pub(super) struct Relay {
    platform: usize,
    session: String,
    state: RelayState,
    /// The superior's INVITE, to answer it.
    invite: Head,
    from: Dest,
    local: SocketAddr,
    /// Where the media goes, under which SSRC (its y=).
    dest: SocketAddr,
    y: String,
    /// Our media role towards the superior.
    transport: MediaTransport,
    answer: Option<Vec<u8>>,
    next_resend: Instant,
    resend_every: Duration,
    deadline: Instant,
}

/// A SIP answer for a failure of the session layer.
fn sip_status(e: &Error) -> (u16, &'static str) {
    match e {
        Error::Invalid(_) => (400, "Bad Request"),
        Error::NotFound(_) => (404, "Not Found"),
        Error::Conflict(_) => (480, "Temporarily Unavailable"),
        Error::Unavailable(_) => (503, "Service Unavailable"),
        Error::Upstream(_) => (502, "Bad Gateway"),
        Error::Timeout(_) => (408, "Request Timeout"),
    }
}

impl Core {
    /// Counts a relay event under its superior's name.
    fn relay_count(&self, platform: usize, k: &str) {
        let name = self.upstreams[platform].name();
        self.metrics
            .cascade_requests
            .with_label_values(&[name, k])
            .inc();
    }

    /// The device and channel behind a channel ID a superior asked for, if
    /// it is shared with superior `i`.
    pub(super) fn shared_channel(&self, i: usize, channel: &str) -> Option<(String, String)> {
        let share = &self.upstreams[i].cfg().share;
        for (dev, chs) in &self.reg.channels {
            if chs.contains_key(channel) && share.shares(dev, channel) {
                return Some((dev.clone(), channel.to_string()));
            }
        }
        let device_itself = self.reg.devices.contains_key(channel)
            && self.reg.channels.get(channel).is_none_or(|c| c.is_empty());
        (device_itself && share.shares(channel, channel))
            .then(|| (channel.to_string(), channel.to_string()))
    }

    /// INVITE from superior `i` for one of the shared channels.
    pub(super) fn on_relay_invite(&mut self, i: usize, m: &Inbound) {
        let name = self.upstreams[i].name().to_string();
        let count = |core: &Core, k: &str| {
            core.metrics
                .cascade_requests
                .with_label_values(&[&name, k])
                .inc()
        };
        count(self, "invite");
        if !self.upstreams[i].is_registered() {
            count(self, "invite_refused");
            return self.reply(m, 403, "Forbidden (not registered with you)", &[]);
        }
        let ours = self.relays.values().filter(|r| r.platform == i);
        let (n, opening) = ours.fold((0, 0), |(n, o), r| {
            (n + 1, o + usize::from(r.state == RelayState::Waiting))
        });
        if n >= MAX_RELAYS || opening >= MAX_OPENING {
            count(self, "invite_refused");
            warn!(platform = %name, relays = n, opening, "INVITE refused: too many relays for this superior");
            return self.reply(m, 486, "Busy Here (relay limit)", &[("Retry-After", "5")]);
        }
        let h = &m.head;
        let channel = NameAddr::parse(&h.uri)
            .map(|u| u.user)
            .filter(|u| !u.is_empty())
            .or_else(|| {
                h.subject
                    .as_deref()
                    .and_then(|s| s.split([':', ',']).next())
                    .map(|c| c.trim().to_string())
            })
            .unwrap_or_default();
        let Some((device, channel)) = self.shared_channel(i, &channel) else {
            count(self, "invite_unknown_channel");
            return self.reply(m, 404, "Not Found (no such shared channel)", &[]);
        };
        let offer = match sdp::parse(&h.body) {
            Ok(o) if o.ip.is_some() && o.port > 0 => o,
            Ok(_) => {
                count(self, "invite_bad_sdp");
                return self.reply(m, 488, "Not Acceptable Here (no media address)", &[]);
            }
            Err(e) => {
                count(self, "invite_bad_sdp");
                self.metrics
                    .sdp_errors
                    .with_label_values(&[e.reason()])
                    .inc();
                return self.reply(
                    m,
                    488,
                    &format!("Not Acceptable Here ({})", e.reason()),
                    &[],
                );
            }
        };
        // Only live view is relayed: playback and download would need the
        // device's recordings (not relayed yet); refuse rather than send
        // live video for a request about the past.
        if offer
            .session
            .as_deref()
            .is_some_and(|s| !s.eq_ignore_ascii_case("Play"))
        {
            count(self, "invite_unsupported_session");
            return self.reply(
                m,
                488,
                "Not Acceptable Here (only live view is relayed)",
                &[],
            );
        }
        // Our role is the opposite of the offer's setup; a TCP offer
        // without one means the superior listens (the common practice).
        let transport = match (offer.tcp(), offer.setup.as_deref()) {
            (false, _) => MediaTransport::Udp,
            (true, Some("active")) => MediaTransport::TcpPassive,
            (true, Some("passive") | Some("actpass") | None) => MediaTransport::TcpActive,
            (true, Some(other)) => {
                count(self, "invite_bad_sdp");
                return self.reply(
                    m,
                    488,
                    &format!("Not Acceptable Here (a=setup:{other})"),
                    &[],
                );
            }
        };
        if !self.reg.devices.get(&device).is_some_and(|d| d.online) {
            count(self, "invite_device_offline");
            return self.reply(m, 480, "Temporarily Unavailable (device offline)", &[]);
        }
        let dest = SocketAddr::new(offer.ip.unwrap_or(IpAddr::from([0u8; 4])), offer.port);
        // The lower platform uses the superior's y= (cross-domain rule).
        let y = offer.y.clone().unwrap_or_default();
        let call_id = h.call_id.clone();
        if self.relays.contains_key(&call_id) {
            return; // a retransmission the transaction layer did not absorb
        }
        self.reply(m, 100, "Trying", &[]);
        let (session, ready) = match self.sessions.of_channel(&device, &channel) {
            Some(s) => (
                s.id.clone(),
                matches!(s.state, State::Established | State::Static),
            ),
            None => {
                let req = OpenStream {
                    device: device.clone(),
                    channel: Some(channel.clone()),
                    transport: MediaTransport::Udp,
                    // A superior's live view is relayed, not recorded here
                    // (it records on its side); a relay-only stream is
                    // then the kernel relay's whole job.
                    record: Some(false),
                    forward: Vec::new(),
                    srtp: false,
                    history: None,
                };
                match self.invite(req) {
                    Ok(id) => {
                        self.sessions.set_relay_only(&id, true);
                        (id, false)
                    }
                    Err(e) => {
                        count(self, "invite_failed");
                        let (code, reason) = sip_status(&e);
                        return self.reply(m, code, &format!("{reason} ({})", e.message()), &[]);
                    }
                }
            }
        };
        let open_timeout = self.sessions.media_config().open_timeout_secs;
        info!(platform = %name, %device, %channel, stream = %session, %dest, y = %y, "superior asks for a live view");
        self.relays.insert(
            call_id.clone(),
            Relay {
                platform: i,
                session,
                state: RelayState::Waiting,
                invite: h.clone(),
                from: m.from,
                local: m.local,
                dest,
                y,
                transport,
                answer: None,
                next_resend: Instant::now(),
                resend_every: T1,
                deadline: Instant::now() + Duration::from_secs(open_timeout + 5),
            },
        );
        if ready {
            self.answer_relay(&call_id);
        }
    }

    /// The device's session is there: start the leg and answer 200.
    fn answer_relay(&mut self, call_id: &str) {
        let Some(r) = self.relays.get(call_id) else {
            return;
        };
        let i = r.platform;
        let (platform, local_id) = {
            let u = &self.upstreams[i];
            (u.name().to_string(), u.local_id().to_string())
        };
        let ssrc = sdp::y_to_ssrc(&r.y).unwrap_or(0);
        let (session, dest, from, local, transport) =
            (r.session.clone(), r.dest, r.from, r.local, r.transport);
        let port = match self
            .sessions
            .add_leg(&session, call_id, &platform, dest, ssrc, transport)
        {
            Ok(p) => p,
            Err(e) => {
                let (code, reason) = sip_status(&e);
                self.relay_fail(call_id, code, &format!("{reason} ({})", e.message()));
                return;
            }
        };
        let media_ip = self
            .sessions
            .media_config()
            .ip
            .or_else(|| (!local.ip().is_unspecified()).then(|| local.ip()))
            .or_else(|| local_ip_for(from.peer()))
            .unwrap_or(local.ip());
        let Some(r) = self.relays.get(call_id) else {
            return;
        };
        let body = SenderAnswer {
            id: &local_id,
            media_ip,
            port,
            transport,
            y: &r.y,
            f: None,
        }
        .build();
        let contact = format!("<sip:{}@{}>", local_id, self.local_sip(local, from.peer()));
        let invite = r.invite.clone();
        let resp = self.reply_with(
            &invite,
            from,
            200,
            "OK",
            &[("Contact", &contact)],
            Some(("APPLICATION/SDP", body.as_bytes())),
        );
        if let Some(r) = self.relays.get_mut(call_id) {
            r.state = RelayState::Answered;
            r.answer = Some(resp);
            r.next_resend = Instant::now() + T1;
            r.resend_every = T1;
            r.deadline = Instant::now() + ACK_WAIT;
        }
        self.relay_count(i, "answered");
    }

    /// Answers the superior's INVITE with an error and forgets the relay;
    /// ends the device session if nobody else uses it.
    fn relay_fail(&mut self, call_id: &str, code: u16, reason: &str) {
        let Some(r) = self.relays.remove(call_id) else {
            return;
        };
        warn!(call_id, code, reason, "relay to the superior failed");
        self.relay_count(r.platform, "failed");
        self.reply_with(&r.invite, r.from, code, reason, &[], None);
        self.release_session(&r.session, call_id);
    }

    /// Drops leg `leg` of `session` and ends the session when it was only
    /// there for relays.
    fn release_session(&mut self, session: &str, leg: &str) {
        if self.sessions.remove_leg(session, leg) {
            self.close(session, "no viewer left", true, State::Closed);
        }
    }

    /// Ends a relay from our side: BYE to the superior (or an error answer
    /// while its INVITE is still open).
    fn relay_bye(&mut self, call_id: &str, why: &str) {
        let Some(r) = self.relays.remove(call_id) else {
            return;
        };
        if r.state == RelayState::Waiting {
            self.reply_with(
                &r.invite,
                r.from,
                480,
                &format!("Temporarily Unavailable ({why})"),
                &[],
                None,
            );
            return;
        }
        info!(call_id, why, "relay ended; BYE to the superior");
        self.relay_count(r.platform, "bye_sent");
        self.uas_request(
            &r.invite,
            r.from,
            r.local,
            "BYE",
            1,
            &[],
            None,
            Purpose::Bye,
        );
    }

    /// A request of ours inside a dialog a peer opened (we are its UAS):
    /// From/To mirrored from its request `h`, sent to its Contact, as a
    /// client transaction for `purpose`. `body`: content type and bytes.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn uas_request(
        &mut self,
        h: &Head,
        dest: Dest,
        local: SocketAddr,
        method: &'static str,
        cseq: u32,
        headers: &[(&str, &str)],
        body: Option<(&str, &[u8])>,
        purpose: Purpose,
    ) {
        let local_sip = self.local_sip(local, dest.peer());
        let from = NameAddr::parse(&h.to.raw)
            .map(|n| n.uri)
            .unwrap_or_default();
        let to = NameAddr::parse(&h.from.raw)
            .map(|n| n.uri)
            .unwrap_or_default();
        let uri = h
            .contact
            .as_ref()
            .map(|c| c.uri.clone())
            .unwrap_or_else(|| to.clone());
        let branch = gsip::branch();
        let msg = Outgoing {
            method,
            uri: &uri,
            transport: dest.transport(),
            local: &local_sip,
            branch: &branch,
            from: &from,
            from_tag: &self.tag,
            to: &to,
            to_tag: h.from.tag.as_deref(),
            call_id: &h.call_id,
            cseq,
            contact: None,
            headers,
            content_type: body.map(|(ct, _)| ct),
            body: body.map_or(&[][..], |(_, b)| b),
        }
        .build();
        self.start_request(dest, &branch, method, msg, Some(purpose));
    }

    /// ACK, BYE or CANCEL in a relay dialog; false if the Call-ID is not
    /// one of ours.
    pub(super) fn on_relay_in_dialog(&mut self, m: &Inbound) -> bool {
        let call_id = &m.head.call_id;
        let Some(r) = self.relays.get_mut(call_id) else {
            return false;
        };
        match m.head.method.as_deref() {
            Some("ACK") => {
                if r.state == RelayState::Answered {
                    r.state = RelayState::Confirmed;
                    r.answer = None;
                    info!(call_id = %call_id, stream = %r.session, "relay confirmed (ACK)");
                }
            }
            Some("BYE") => {
                self.reply(m, 200, "OK", &[]);
                if let Some(r) = self.relays.remove(call_id) {
                    self.relay_count(r.platform, "bye_received");
                    info!(call_id = %call_id, stream = %r.session, "BYE from the superior");
                    self.release_session(&r.session, call_id);
                }
            }
            Some("CANCEL") => {
                self.reply(m, 200, "OK", &[]);
                if let Some(r) = self.relays.remove(call_id) {
                    self.relay_count(r.platform, "cancelled");
                    if r.state != RelayState::Confirmed {
                        self.reply_with(&r.invite, r.from, 487, "Request Terminated", &[], None);
                    }
                    self.release_session(&r.session, call_id);
                }
            }
            _ => return false,
        }
        true
    }

    /// The device's session `id` was established: answer what waits on it.
    pub(super) fn relay_session_ready(&mut self, id: &str) {
        let waiting: Vec<String> = self
            .relays
            .iter()
            .filter(|(_, r)| r.session == id && r.state == RelayState::Waiting)
            .map(|(c, _)| c.clone())
            .collect();
        for c in waiting {
            self.answer_relay(&c);
        }
    }

    /// The device's session `id` ended (BYE from the device, offline, no
    /// media, failure): every relay fed by it ends.
    pub(super) fn relay_session_ended(&mut self, id: &str, why: &str) {
        let fed: Vec<String> = self
            .relays
            .iter()
            .filter(|(_, r)| r.session == id)
            .map(|(c, _)| c.clone())
            .collect();
        for c in fed {
            self.relay_bye(&c, why);
        }
    }

    /// Superior `i` was lost: its relays end (BYE sent, best effort).
    pub(super) fn relay_platform_lost(&mut self, i: usize) {
        let theirs: Vec<(String, String)> = self
            .relays
            .iter()
            .filter(|(_, r)| r.platform == i)
            .map(|(c, r)| (c.clone(), r.session.clone()))
            .collect();
        for (c, session) in theirs {
            self.relay_bye(&c, "superior lost");
            self.release_session(&session, &c);
        }
    }

    /// 2xx retransmission, ACK and open timeouts (from the sweep).
    pub(super) fn relay_timers(&mut self, now: Instant) {
        let mut late = Vec::new();
        for (c, r) in &mut self.relays {
            match r.state {
                RelayState::Answered if now >= r.deadline => late.push((c.clone(), true)),
                RelayState::Answered if now >= r.next_resend => {
                    if let Some(a) = &r.answer {
                        self.out.send(r.from, a.clone());
                    }
                    r.resend_every = (r.resend_every * 2).min(T2);
                    r.next_resend = now + r.resend_every;
                }
                RelayState::Waiting if now >= r.deadline => late.push((c.clone(), false)),
                _ => {}
            }
        }
        for (c, answered) in late {
            if answered {
                warn!(call_id = %c, "no ACK from the superior; ending the relay");
                let Some((platform, session)) =
                    self.relays.get(&c).map(|r| (r.platform, r.session.clone()))
                else {
                    continue;
                };
                self.relay_count(platform, "ack_timeout");
                self.relay_bye(&c, "no ACK");
                self.release_session(&session, &c);
            } else {
                self.relay_fail(&c, 408, "Request Timeout (the device did not answer)");
            }
        }
    }
}
