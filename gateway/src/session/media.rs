//! A session's media: the receiver task with its pipeline (recorder,
//! forwards, decryption keys), started when the device's answer arrives,
//! and the static receivers of `[[media.streams]]`, which are sessions
//! without a dialog.

use gb28181::sdp::MediaTransport;
use tracing::{info, warn};

use super::{Session, Sessions, SrtpView, State};
use crate::{
    config::StaticStream,
    keys::KeyView,
    stream::{self, Pipeline, Recorder},
    sys::clock::wall_ms,
};

impl Sessions {
    pub(super) fn start_media(&mut self, s: &Session) {
        let Some(bound) = self.bound.remove(&s.id) else {
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
            match stream::Forward::new(f.dest, ssrc) {
                Ok(x) => forwards.push(match &f.srtp {
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
            if let Some(sess) = self.active.get_mut(&s.id) {
                sess.srtp = Some(SrtpView {
                    key_source: "configured",
                    check: None,
                });
            }
        }
        let r = stream::start(bound, s.remote, pipe);
        if let Some(sess) = self.active.get_mut(&s.id) {
            sess.stats = Some(r.stats.clone());
        }
        self.receivers.insert(s.id.clone(), r);
    }

    /// Starts the configured receivers without SIP (`[[media.streams]]`).
    pub fn start_static(&mut self) {
        for st in self.media.streams.clone() {
            self.start_one_static(&st);
        }
    }

    fn start_one_static(&mut self, st: &StaticStream) {
        let bound = match stream::bind(st.listen.ip(), st.listen.port(), MediaTransport::Udp) {
            Ok(b) => b,
            Err(e) => {
                warn!(stream = %st.name, listen = %st.listen, error = %e, "cannot bind the static stream");
                return;
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
        let mut forwards = Vec::new();
        for (i, dest) in st.forward.iter().enumerate() {
            let ssrc = 0x5354_0000 ^ ((self.active.len() as u32) << 8) ^ i as u32;
            match stream::Forward::new(*dest, ssrc) {
                Ok(f) => forwards.push(f),
                Err(e) => warn!(stream = %st.name, %dest, error = %e, "cannot forward"),
            }
        }
        let pipe = Pipeline::new(&st.name, None, recorder)
            .with_payload(&st.payload)
            .with_forwards(forwards)
            .with_keys(Some(view), srtp);
        let r = stream::start(bound, None, pipe);
        let s = Session {
            id: st.name.clone(),
            device: st.device.clone().unwrap_or_default(),
            channel: st.channel.clone().unwrap_or_default(),
            transport: MediaTransport::Udp,
            ssrc: 0,
            local: st.listen,
            state: State::Static,
            reason: None,
            remote: None,
            answer_ssrc: None,
            ssrc_mismatch: false,
            setup: None,
            format: Some(st.payload.clone()),
            created_ms: wall_ms(),
            established_ms: Some(wall_ms()),
            closed_ms: None,
            restored_ms: None,
            record,
            srtp: srtp.then_some(SrtpView {
                key_source: "configured",
                check: None,
            }),
            session_key: None,
            forward: st
                .forward
                .iter()
                .map(|d| super::Forward {
                    dest: *d,
                    ssrc: None,
                    srtp: None,
                })
                .collect(),
            media: None,
            kernel: None,
            legs: Vec::new(),
            relay_only: false,
            playback: None,
            stats: Some(r.stats.clone()),
        };
        info!(stream = %st.name, listen = %st.listen, payload = %st.payload, "static stream receiving");
        self.receivers.insert(st.name.clone(), r);
        self.active.insert(st.name.clone(), s);
    }
}
