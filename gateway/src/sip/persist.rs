//! Dialogs carried across a daemon restart: each established session's
//! dialog (Call-ID, tags, CSeqs, targets, route) is written to the store
//! with what the session layer keeps of it ([`session::Saved`]) when it is
//! established and whenever it changes, and deleted when the session ends.
//! On start the daemon takes them back: the device sees neither a BYE nor
//! a re-INVITE. A session that cannot go on (its device is unknown, its
//! port cannot be bound, its relay legs are gone) is ended with a BYE in
//! its dialog and counted.

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{
    core::{Core, Purpose},
    dialog::Dialog,
    transport::Dest,
};
use crate::{session, store::Op};
use gb28181::sip as gsip;

/// What is written per session (JSON in the store's `sessions` table).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SavedDialog {
    channel: String,
    call_id: String,
    local_tag: String,
    remote_tag: Option<String>,
    uri: String,
    target: Option<String>,
    cseq: u32,
    last_cseq: u32,
    mansrtsp_cseq: u32,
    local_sip: String,
    /// "udp" or "tcp", the device's address, and the UDP socket (index of
    /// the `[sip] listen` addresses) it was reached through.
    transport: String,
    peer: Option<std::net::SocketAddr>,
    #[serde(default)]
    sock: Option<usize>,
    session: session::Saved,
}

impl Core {
    /// Writes the session's dialog and media to the store (established
    /// sessions with a dialog; nothing without a store).
    pub(super) fn save_session(&mut self, id: &str) {
        let Some(store) = &self.store else { return };
        let (Some(d), Some(s)) = (self.dialogs.active.get(id), self.sessions.saved(id)) else {
            return;
        };
        if d.ack.is_none() {
            return;
        }
        let (transport, peer, sock) = match d.dest {
            Some(Dest::Udp { sock, peer }) => ("udp", Some(peer), Some(sock)),
            Some(Dest::Tcp { peer, .. }) => ("tcp", Some(peer), None),
            None => ("udp", None, None),
        };
        let v = SavedDialog {
            channel: d.channel.clone(),
            call_id: d.call_id.clone(),
            local_tag: d.local_tag.clone(),
            remote_tag: d.remote_tag.clone(),
            uri: d.uri.clone(),
            target: d.target.clone(),
            cseq: d.cseq,
            last_cseq: d.last_cseq,
            mansrtsp_cseq: d.mansrtsp_cseq,
            local_sip: d.local_sip.clone(),
            transport: transport.into(),
            peer,
            sock,
            session: s,
        };
        match serde_json::to_vec(&v) {
            Ok(json) => store.send(Op::PutSession(id.to_string(), json)),
            Err(e) => warn!(stream = %id, error = %e, "cannot save the session"),
        }
    }

    /// The session ended: it is not carried over a restart any more.
    pub(super) fn forget_session(&mut self, id: &str) {
        if let Some(store) = &self.store {
            store.send(Op::DeleteSession(id.to_string()));
        }
    }

    /// Where the device of an in-dialog request is reached now: the
    /// dialog's route, else the device's current one (a dialog carried over
    /// a restart whose device comes over TCP has none until it reconnects).
    pub(super) fn dialog_dest(&self, id: &str, d: &Dialog) -> Option<Dest> {
        d.dest.or_else(|| {
            let device = self.sessions.get(id).map(|s| s.device.clone())?;
            self.routes.get(&device).copied()
        })
    }

    /// Takes back the sessions a previous daemon saved (at start, once the
    /// registry is loaded), then removes the kernel flows nobody carries.
    pub(super) fn restore_sessions(&mut self, saved: Vec<(String, Vec<u8>)>) {
        let total = saved.len();
        let (mut restored, mut ended) = (0usize, 0usize);
        for (id, json) in saved {
            let v: SavedDialog = match serde_json::from_slice(&json) {
                Ok(v) => v,
                Err(e) => {
                    warn!(stream = %id, error = %e, "unreadable saved session dropped");
                    self.count_restore("unreadable");
                    self.forget_session(&id);
                    continue;
                }
            };
            match self.restore_one(&id, v) {
                Ok(()) => restored += 1,
                Err(()) => ended += 1,
            }
        }
        let pruned = self.sessions.prune_kernel_flows();
        if total > 0 || pruned > 0 {
            info!(
                saved = total,
                restored,
                ended,
                stale_kernel_flows = pruned,
                "sessions carried over the restart"
            );
        }
    }

    fn count_restore(&self, result: &str) {
        self.metrics
            .session_restores
            .with_label_values(&[result])
            .inc();
    }

    fn restore_one(&mut self, id: &str, v: SavedDialog) -> Result<(), ()> {
        let device = v.session.device.clone();
        let route = self.routes.get(&device).copied();
        let dest = match (v.transport.as_str(), v.peer, v.sock) {
            // The saved UDP route if the socket still exists, else the
            // device's current one.
            ("udp", Some(peer), Some(sock)) if sock < self.out.udp.len() => {
                Some(Dest::Udp { sock, peer })
            }
            _ => route,
        };
        let mut d = Dialog {
            channel: v.channel,
            call_id: v.call_id,
            local_tag: v.local_tag,
            remote_tag: v.remote_tag,
            uri: v.uri,
            target: v.target,
            cseq: v.cseq,
            last_cseq: v.last_cseq,
            mansrtsp_cseq: v.mansrtsp_cseq,
            branch: gsip::branch(),
            dest,
            local_sip: v.local_sip,
            ..Dialog::default()
        };
        let ack = self.in_dialog(&d, "ACK", d.cseq, &gsip::branch(), d.remote_tag.as_deref());
        d.ack = Some(ack);
        let why = if !self.reg.devices.contains_key(&device) {
            Some(format!("device {device} is no longer registered"))
        } else if v.session.relay_only {
            Some("its relay legs to superior platforms did not survive the restart".to_string())
        } else {
            None
        };
        if let Some(why) = why {
            warn!(stream = %id, %device, why, "saved session ended");
            self.bye_dialog(&d, &device);
            self.count_restore("ended");
            self.forget_session(id);
            return Err(());
        }
        match self.sessions.restore(&v.session) {
            Ok(_) => {
                self.dialogs
                    .by_call
                    .insert(d.call_id.clone(), id.to_string());
                self.dialogs.active.insert(id.to_string(), d);
                self.count_restore("restored");
                if v.session.legs > 0 {
                    warn!(stream = %id, legs = v.session.legs, "the stream's relay legs to superior platforms were not carried over");
                }
                // Written again: the route may have changed.
                self.save_session(id);
                Ok(())
            }
            Err(e) => {
                warn!(stream = %id, %device, error = %e, "saved session cannot go on; BYE");
                self.bye_dialog(&d, &device);
                self.count_restore("ended");
                self.forget_session(id);
                Err(())
            }
        }
    }

    /// BYE in a dialog (ours, confirmed by our ACK) to `device`.
    pub(super) fn bye_dialog(&mut self, d: &Dialog, device: &str) {
        let branch = gsip::branch();
        let cseq = d.last_cseq + 1;
        let msg = self.in_dialog(d, "BYE", cseq, &branch, d.remote_tag.as_deref());
        match d.dest.or_else(|| self.routes.get(device).copied()) {
            Some(dest) => {
                self.start_request(dest, &branch, "BYE", msg, Some(Purpose::Bye));
            }
            None => warn!(call_id = %d.call_id, %device, "no route for the BYE"),
        }
    }

    /// SIGTERM: the receivers stop (recordings flushed); the sessions stay
    /// saved (as written at each change) for the next daemon. Returns the
    /// receiver tasks.
    pub(super) fn suspend_sessions(&mut self) -> Vec<tokio::task::JoinHandle<()>> {
        self.sessions.suspend()
    }
}
