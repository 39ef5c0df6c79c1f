//! Decryption on a stream's path (docs/media-encryption.md):
//! `srtp-sm4` before anything reads the RTP payload, `sm4-nal-ofb` on the
//! access units the demuxer produces. Whatever fails is counted by reason
//! and dropped, never passed on as if it were clear.

use std::collections::BTreeMap;

use gb35114::{
    nal::{NalCodec, NalDecryptor},
    srtp::SrtpReceiver,
    Failure,
};
use media::{Codec, Frame, FrameKind};
use serde::Serialize;

use crate::keys::{ChannelKeys, KeyView};

/// What decryption did on a stream (in the stream's API view).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct DecryptStats {
    /// Profiles in use: "srtp-sm4" (the session is SRTP), "sm4-nal-ofb"
    /// (encrypted access units were seen).
    pub profiles: Vec<&'static str>,
    /// SRTP packets authenticated and decrypted.
    pub srtp_packets: u64,
    /// NAL units decrypted.
    pub units: u64,
    /// Access units that were encrypted (and decrypted), and clear ones.
    pub encrypted_frames: u64,
    pub clear_frames: u64,
    /// Key version of the last decrypted access unit.
    pub key_version: Option<u32>,
    /// Units or packets not decrypted, by reason ("no_key",
    /// "unknown_key_version", "bad_tag", "replay", "malformed",
    /// "wrong_key").
    pub failures: BTreeMap<&'static str, u64>,
    /// "clear", "decrypting" or "failing".
    pub state: &'static str,
    /// Why the stream is not decrypting (when failing).
    pub reason: Option<String>,
}

fn explain(f: Failure, srtp: bool) -> String {
    match (f, srtp) {
        (Failure::NoKey, true) => {
            "no srtp-sm4 key for this channel (configure one, or offer one in the INVITE)".into()
        }
        (Failure::NoKey, false) => {
            "the device encrypts (sm4-nal-ofb) but this channel has no key".into()
        }
        (Failure::UnknownKeyVersion, _) => {
            "the device uses a key version that is not provisioned for this channel".into()
        }
        (Failure::BadTag, _) => "SRTP authentication fails: wrong key, or tampered packets".into(),
        (Failure::Replay, _) => "replayed or too old SRTP packets".into(),
        (Failure::Malformed, true) => "malformed SRTP packets".into(),
        (Failure::Malformed, false) => "malformed security parameters (SEI) or NAL units".into(),
        (Failure::WrongKey, _) => {
            "decrypted slice headers are implausible: the key of this version looks wrong".into()
        }
    }
}

/// The decryption state of one stream.
pub struct StreamCrypto {
    keys: Option<KeyView>,
    none: ChannelKeys,
    srtp: Option<SrtpReceiver>,
    nal: Option<(Codec, NalDecryptor<Frame>)>,
    out: Vec<(Vec<u8>, Frame)>,
    srtp_failures: [u64; 6],
    srtp_ok: u64,
    expect_nal: bool,
    last_ok: bool,
    last_failure: Option<(Failure, bool)>,
}

impl StreamCrypto {
    /// `srtp`: the session is SRTP (srtp-sm4 keys configured, or a key in
    /// the SDP).
    pub fn new(mut keys: Option<KeyView>, srtp: bool) -> StreamCrypto {
        let expect_nal = keys.as_mut().is_some_and(|k| !k.get().nal.is_empty());
        StreamCrypto {
            expect_nal,
            keys,
            none: ChannelKeys::default(),
            srtp: srtp.then(SrtpReceiver::new),
            nal: None,
            out: Vec::new(),
            srtp_failures: [0; 6],
            srtp_ok: 0,
            last_ok: false,
            last_failure: None,
        }
    }

    pub fn srtp(&self) -> bool {
        self.srtp.is_some()
    }

    /// Whether the stream's access units are (or are expected to be)
    /// encrypted: the channel had sm4-nal-ofb keys when the stream started,
    /// or encrypted units were seen. Forwarding and PS recording then
    /// re-mux the clear frames instead of passing the payloads on.
    pub fn nal_encrypted(&self) -> bool {
        self.expect_nal
            || self.nal.as_ref().is_some_and(|(_, d)| {
                d.stats().encrypted_aus > 0 || d.stats().failures.iter().any(|&n| n > 0)
            })
    }

    /// An SRTP packet: the clear RTP packet goes to `out`.
    pub fn unprotect(&mut self, pkt: &[u8], out: &mut Vec<u8>) -> Result<(), Failure> {
        let Some(rx) = &mut self.srtp else {
            out.clear();
            out.extend_from_slice(pkt);
            return Ok(());
        };
        out.clear();
        let keys: &ChannelKeys = match &mut self.keys {
            Some(v) => v.get(),
            None => &self.none,
        };
        match rx.unprotect(pkt, keys, out) {
            Ok(()) => {
                self.srtp_ok += 1;
                self.last_ok = true;
                Ok(())
            }
            Err(f) => {
                if let Some(i) = Failure::ALL.iter().position(|x| *x == f) {
                    self.srtp_failures[i] += 1;
                }
                self.last_ok = false;
                self.last_failure = Some((f, true));
                Err(f)
            }
        }
    }

    /// Several SRTP packets of the stream, in order (one `recvmmsg` batch):
    /// their tags are computed together (multi-buffer HMAC-SM3), with the
    /// same result per packet as [`StreamCrypto::unprotect`]. The clear
    /// packets are appended to `clear`; `results[i]` is packet i's range in
    /// it or why it failed (both cleared first).
    pub fn unprotect_batch(
        &mut self,
        pkts: &[&[u8]],
        clear: &mut Vec<u8>,
        results: &mut Vec<Result<std::ops::Range<usize>, Failure>>,
    ) {
        clear.clear();
        results.clear();
        let Some(rx) = &mut self.srtp else {
            for p in pkts {
                let start = clear.len();
                clear.extend_from_slice(p);
                results.push(Ok(start..clear.len()));
            }
            return;
        };
        let keys: &ChannelKeys = match &mut self.keys {
            Some(v) => v.get(),
            None => &self.none,
        };
        rx.unprotect_batch(pkts, keys, |_, r| match r {
            Ok(c) => {
                let start = clear.len();
                clear.extend_from_slice(c);
                results.push(Ok(start..clear.len()));
            }
            Err(f) => results.push(Err(f)),
        });
        for r in results.iter() {
            match r {
                Ok(_) => {
                    self.srtp_ok += 1;
                    self.last_ok = true;
                }
                Err(f) => {
                    if let Some(i) = Failure::ALL.iter().position(|x| x == f) {
                        self.srtp_failures[i] += 1;
                    }
                    self.last_ok = false;
                    self.last_failure = Some((*f, true));
                }
            }
        }
    }

    /// A frame from the demuxer; clear frames are appended to `out` (held
    /// ones may come later, failed ones never).
    pub fn frame(&mut self, mut f: Frame, out: &mut Vec<Frame>) {
        let codec = match (f.kind, f.codec) {
            (FrameKind::Video, Codec::H264) => NalCodec::H264,
            (FrameKind::Video, Codec::H265) => NalCodec::H265,
            _ => {
                out.push(f);
                return;
            }
        };
        if self.nal.as_ref().is_none_or(|(c, _)| *c != f.codec) {
            // First frame, or the codec changed: a decryptor for it.
            self.flush_nal(out);
            self.nal = Some((f.codec, NalDecryptor::new(codec)));
        }
        let keys: &ChannelKeys = match &mut self.keys {
            Some(v) => v.get(),
            None => &self.none,
        };
        let Some((_, d)) = &mut self.nal else {
            return;
        };
        let (failures, encrypted) = (d.stats().failures, d.stats().encrypted_aus);
        let data = std::mem::take(&mut f.data);
        let keyframe = f.keyframe;
        d.push(data, keyframe, f, keys, &mut self.out);
        let after = d.stats();
        if after.failures != failures {
            self.last_ok = false;
            self.last_failure = after.last_failure.map(|x| (x, false));
        } else if after.encrypted_aus > encrypted {
            self.last_ok = true;
        }
        for (data, mut tag) in self.out.drain(..) {
            tag.data = data;
            out.push(tag);
        }
    }

    fn flush_nal(&mut self, out: &mut Vec<Frame>) {
        if let Some((_, d)) = &mut self.nal {
            d.finish(&mut self.out);
            for (data, mut tag) in self.out.drain(..) {
                tag.data = data;
                out.push(tag);
            }
        }
    }

    /// End of the stream: held frames that passed their checks.
    pub fn finish(&mut self, out: &mut Vec<Frame>) {
        self.flush_nal(out);
    }

    pub fn stats(&self) -> DecryptStats {
        let mut s = DecryptStats::default();
        let mut failures = self.srtp_failures;
        if self.srtp.is_some() {
            s.profiles.push("srtp-sm4");
        }
        if let Some((_, d)) = &self.nal {
            let n = d.stats();
            if n.encrypted_aus > 0 || n.failures.iter().any(|&x| x > 0) {
                s.profiles.push("sm4-nal-ofb");
            }
            s.units = n.decrypted_units;
            s.encrypted_frames = n.encrypted_aus;
            s.clear_frames = n.clear_aus;
            s.key_version = n.key_version;
            for (a, b) in failures.iter_mut().zip(n.failures) {
                *a += b;
            }
        }
        for (f, n) in Failure::ALL.iter().zip(failures) {
            if n > 0 {
                s.failures.insert(f.as_str(), n);
            }
        }
        s.srtp_packets = self.srtp_ok;
        let any_ok = s.encrypted_frames > 0 || s.srtp_packets > 0;
        (s.state, s.reason) = match (self.last_ok, self.last_failure) {
            (false, Some((f, srtp))) => ("failing", Some(explain(f, srtp))),
            _ if any_ok => ("decrypting", None),
            _ => ("clear", None),
        };
        s
    }
}
