//! srtp-sm4 behaviour: round trips, tag and replay failures, ROC, rotation, SDP.

mod common;

use common::Rng;
use gb35114::srtp::{MasterKey, SrtpKeys, SrtpReceiver, SrtpSender, SUITE, TAG_LEN};
use gb35114::{Error, Failure};

const SSRC: u32 = 0xcafe_f00d;

fn key(rng: &mut Rng) -> MasterKey {
    MasterKey {
        key: rng.array(),
        salt: rng.array(),
    }
}

fn rtp(seq: u16, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, 96];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 3600).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

fn protect(tx: &mut SrtpSender, clear: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    tx.protect(clear, &mut out).expect("protect");
    out
}

fn unprotect(rx: &mut SrtpReceiver, pkt: &[u8], keys: &dyn SrtpKeys) -> Result<Vec<u8>, Failure> {
    let mut out = vec![0xee]; // unprotect appends
    rx.unprotect(pkt, keys, &mut out)?;
    assert_eq!(out[0], 0xee);
    Ok(out.split_off(1))
}

#[test]
fn round_trip_with_csrc_and_extension() {
    let mut rng = Rng(1);
    let m = key(&mut rng);
    let keys = vec![(1u64, m.clone())];
    let mut tx = SrtpSender::new(&m);
    let mut rx = SrtpReceiver::new();
    for (seq, hdr) in [(10u16, 0u8), (11, 1), (12, 2)] {
        let payload = rng.bytes(1388);
        let mut p = rtp(seq, SSRC, &[]);
        match hdr {
            1 => {
                p[0] = 0x82; // two CSRCs
                p.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
            }
            2 => {
                p[0] = 0x90; // extension of 1 word
                p.extend_from_slice(&[0xbe, 0xde, 0, 1, 9, 9, 9, 9]);
            }
            _ => {}
        }
        let hlen = p.len();
        p.extend_from_slice(&payload);
        let s = protect(&mut tx, &p);
        assert_eq!(&s[..hlen], &p[..hlen], "header stays clear");
        assert_ne!(&s[hlen..hlen + 16], &payload[..16], "payload encrypted");
        assert_eq!(unprotect(&mut rx, &s, &keys).unwrap(), p);
    }
    // empty payload
    let p = rtp(13, SSRC, &[]);
    let s = protect(&mut tx, &p);
    assert_eq!(s.len(), 12 + TAG_LEN);
    assert_eq!(unprotect(&mut rx, &s, &keys).unwrap(), p);
}

#[test]
fn tampering_replay_window_and_reordering() {
    let mut rng = Rng(2);
    let m = key(&mut rng);
    let keys = vec![(1u64, m.clone())];
    let mut tx = SrtpSender::new(&m);
    let pkts: Vec<Vec<u8>> = (0..300u16)
        .map(|s| protect(&mut tx, &rtp(1000 + s, SSRC, &rng.bytes(100))))
        .collect();
    let mut rx = SrtpReceiver::new();
    assert!(unprotect(&mut rx, &pkts[0], &keys).is_ok());
    // every byte position tampered -> BadTag (and the state is not advanced)
    for pos in [
        0usize,
        1,
        3,
        11,
        12,
        50,
        pkts[1].len() - 11,
        pkts[1].len() - 1,
    ] {
        let mut bad = pkts[1].clone();
        // (byte 3: seq 1001 -> 1003, still ahead of the window; byte 0: padding bit)
        bad[pos] ^= if pos == 3 { 0x02 } else { 0x01 };
        assert_eq!(
            unprotect(&mut rx, &bad, &keys),
            Err(Failure::BadTag),
            "pos {pos}"
        );
    }
    // a modified sequence number that points into the past is a replay
    let mut back = pkts[1].clone();
    back[3] ^= 0x01; // 1001 -> 1000
    assert_eq!(unprotect(&mut rx, &back, &keys), Err(Failure::Replay));
    assert!(unprotect(&mut rx, &pkts[1], &keys).is_ok());
    // replay
    assert_eq!(unprotect(&mut rx, &pkts[1], &keys), Err(Failure::Replay));
    assert_eq!(unprotect(&mut rx, &pkts[0], &keys), Err(Failure::Replay));
    // reordering within the window
    assert!(unprotect(&mut rx, &pkts[5], &keys).is_ok());
    assert!(unprotect(&mut rx, &pkts[3], &keys).is_ok());
    assert!(unprotect(&mut rx, &pkts[2], &keys).is_ok());
    assert!(unprotect(&mut rx, &pkts[4], &keys).is_ok());
    assert_eq!(unprotect(&mut rx, &pkts[3], &keys), Err(Failure::Replay));
    // jump ahead: 200 - 127 is the oldest index still in the window
    assert!(unprotect(&mut rx, &pkts[200], &keys).is_ok());
    assert!(unprotect(&mut rx, &pkts[200 - 127], &keys).is_ok());
    assert_eq!(
        unprotect(&mut rx, &pkts[200 - 128], &keys),
        Err(Failure::Replay)
    );
    assert_eq!(unprotect(&mut rx, &pkts[6], &keys), Err(Failure::Replay));
    // a forged packet far ahead does not move the window (tag checked first)
    let mut forged = pkts[299].clone();
    let n = forged.len();
    forged[n - 1] ^= 0xff;
    assert_eq!(unprotect(&mut rx, &forged, &keys), Err(Failure::BadTag));
    assert!(unprotect(&mut rx, &pkts[150], &keys).is_ok());
}

#[test]
fn sequence_wrap_increments_roc() {
    let mut rng = Rng(3);
    let m = key(&mut rng);
    let keys = vec![(1u64, m.clone())];
    let mut tx = SrtpSender::new(&m);
    let mut rx = SrtpReceiver::new();
    let seqs: Vec<u16> = (65500u32..65536 + 40).map(|s| s as u16).collect();
    let pkts: Vec<(Vec<u8>, Vec<u8>)> = seqs
        .iter()
        .map(|&s| {
            let c = rtp(s, SSRC, &rng.bytes(50));
            (c.clone(), protect(&mut tx, &c))
        })
        .collect();
    assert_eq!(tx.roc(), 1);
    // deliver with some reordering around the wrap
    let mut order: Vec<usize> = (0..pkts.len()).collect();
    order.swap(35, 37); // 65535 after 1
    order.swap(30, 40);
    for i in order {
        let got = unprotect(&mut rx, &pkts[i].1, &keys).unwrap_or_else(|e| panic!("{i}: {e}"));
        assert_eq!(got, pkts[i].0);
    }
    assert_eq!(rx.roc(), 1);
    // the same packets under the wrong ROC would fail: a fresh receiver that
    // starts after the wrap assumes ROC 0 and rejects the tag
    let mut late = SrtpReceiver::new();
    assert_eq!(
        unprotect(&mut late, &pkts[50].1, &keys),
        Err(Failure::BadTag)
    );
}

#[test]
fn key_rotation_with_two_live_keys() {
    let mut rng = Rng(4);
    let k1 = key(&mut rng);
    let k2 = key(&mut rng);
    let mut tx = SrtpSender::new(&k1);
    let mut rx = SrtpReceiver::new();
    let both = vec![(1u64, k1.clone()), (2u64, k2.clone())];
    let only2 = vec![(2u64, k2.clone())];
    let mut seq = 0u16;
    let mut send = |tx: &mut SrtpSender| {
        seq += 1;
        let c = rtp(seq, SSRC, &[seq as u8; 80]);
        (c.clone(), protect(tx, &c))
    };
    for _ in 0..5 {
        let (c, s) = send(&mut tx);
        assert_eq!(unprotect(&mut rx, &s, &both).unwrap(), c);
    }
    tx.set_key(&k2);
    let mut late = Vec::new();
    for _ in 0..5 {
        let (c, s) = send(&mut tx);
        assert_eq!(unprotect(&mut rx, &s, &both).unwrap(), c);
        late.push((c, s));
    }
    // old key retired: new key alone still works
    let (c, s) = send(&mut tx);
    assert_eq!(unprotect(&mut rx, &s, &only2).unwrap(), c);
    // a packet under the retired key fails once k1 is gone
    let mut tx_old = SrtpSender::new(&k1);
    let (_, old) = {
        let c = rtp(seq + 1, SSRC, &[1; 20]);
        (c.clone(), protect(&mut tx_old, &c))
    };
    assert_eq!(unprotect(&mut rx, &old, &only2), Err(Failure::BadTag));
    // rotation kept the sender's sequence state: no replay confusion
    assert_eq!(unprotect(&mut rx, &late[0].1, &both), Err(Failure::Replay));
}

#[test]
fn no_key_malformed_and_ssrc_change() {
    let mut rng = Rng(5);
    let m = key(&mut rng);
    let keys = vec![(1u64, m.clone())];
    let none: Vec<(u64, MasterKey)> = Vec::new();
    let mut tx = SrtpSender::new(&m);
    let mut rx = SrtpReceiver::new();
    let s = protect(&mut tx, &rtp(7, SSRC, &[1; 30]));
    assert_eq!(unprotect(&mut rx, &s, &none), Err(Failure::NoKey));
    // short or bad packets
    for bad in [
        &s[..0],
        &s[..5],
        &s[..12 + TAG_LEN - 1],
        &[0x40u8; 40][..], // version 1
        &[0x8fu8; 30][..], // 15 CSRCs that do not fit
    ] {
        assert_eq!(unprotect(&mut rx, bad, &keys), Err(Failure::Malformed));
    }
    let mut ext = s.clone();
    ext[0] |= 0x10; // extension header claims more than there is
    ext[14] = 0xff;
    ext[15] = 0xff;
    assert_eq!(unprotect(&mut rx, &ext, &keys), Err(Failure::Malformed));
    let mut out = Vec::new();
    assert_eq!(tx.protect(&[0x80; 11], &mut out), Err(Failure::Malformed));
    assert_eq!(tx.protect(&[0x00; 20], &mut out), Err(Failure::Malformed));
    assert!(out.is_empty());
    // good packet, then another SSRC restarts the context
    assert!(unprotect(&mut rx, &s, &keys).is_ok());
    let s2 = protect(&mut tx, &rtp(40000, 0x1111, &[2; 30]));
    assert!(unprotect(&mut rx, &s2, &keys).is_ok());
    assert_eq!(rx.highest_index(), Some(40000));
}

#[test]
fn sdp_crypto_attribute() {
    let mut rng = Rng(6);
    let m = key(&mut rng);
    let line = m.crypto_attr(1);
    assert!(
        line.starts_with(&format!("a=crypto:1 {SUITE} inline:")),
        "{line}"
    );
    assert_eq!(
        MasterKey::from_crypto_attr(&line).unwrap(),
        Some((1, m.clone()))
    );
    let value = line.trim_start_matches("a=");
    assert_eq!(
        MasterKey::from_crypto_attr(value).unwrap(),
        Some((1, m.clone()))
    );
    let with_lifetime = format!("{}|2^31|1:1 KDR=0\r\n", m.crypto_attr(7));
    assert_eq!(
        MasterKey::from_crypto_attr(&with_lifetime).unwrap(),
        Some((7, m.clone()))
    );
    assert_eq!(
        MasterKey::from_crypto_attr(
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:32"
        )
        .unwrap(),
        None
    );
    assert_eq!(
        MasterKey::from_crypto_attr("a=rtpmap:96 PS/90000"),
        Err(Error::NotCryptoAttr)
    );
    assert!(matches!(
        MasterKey::from_crypto_attr("a=crypto:x SM4_CM_128_HMAC_SM3_80 inline:AAAA"),
        Err(Error::BadCryptoAttr(_))
    ));
    assert!(matches!(
        MasterKey::from_crypto_attr("a=crypto:1 SM4_CM_128_HMAC_SM3_80"),
        Err(Error::BadCryptoAttr(_))
    ));
    assert!(matches!(
        MasterKey::from_crypto_attr("a=crypto:1 SM4_CM_128_HMAC_SM3_80 uri:x"),
        Err(Error::BadCryptoAttr(_))
    ));
    assert_eq!(
        MasterKey::from_crypto_attr("a=crypto:1 SM4_CM_128_HMAC_SM3_80 inline:AAAA"),
        Err(Error::KeyLength { len: 3 })
    );
    // errors never echo key material
    let e = MasterKey::from_crypto_attr("a=crypto:1 SM4_CM_128_HMAC_SM3_80 inline:c2VjcmV0!!")
        .unwrap_err();
    assert!(!e.to_string().contains("c2Vj"), "{e}");
}

#[test]
fn random_packets_never_panic() {
    let mut rng = Rng(7);
    let m = key(&mut rng);
    let keys = vec![(1u64, m.clone()), (2, key(&mut rng))];
    let mut tx = SrtpSender::new(&m);
    let mut rx = SrtpReceiver::new();
    let good = protect(&mut tx, &rtp(1, SSRC, &[3; 100]));
    for i in 0..5000u32 {
        let mut p = if i.is_multiple_of(2) {
            let n = rng.below(80) as usize;
            rng.bytes(n)
        } else {
            let n = rng.below(good.len() as u64 + 1) as usize;
            good[..n].to_vec()
        };
        if let Some(b) = p.first_mut() {
            if i.is_multiple_of(3) {
                *b = 0x80 | (*b & 0x3f);
            }
        }
        let mut out = Vec::new();
        let r = rx.unprotect(&p, &keys, &mut out);
        if r.is_err() {
            assert!(out.is_empty());
        }
        let _ = tx.protect(&p, &mut out);
    }
}

/// `unprotect_batch` gives packet for packet what `unprotect` gives, across
/// tampering, replays, reordering, a sequence wrap, an SSRC change and a key
/// rotation inside batches of every size.
#[test]
fn batch_unprotect_equals_one_by_one() {
    let mut rng = Rng(77);
    let k1 = key(&mut rng);
    let k2 = key(&mut rng);
    let mut tx = SrtpSender::new(&k1);
    let mut stream: Vec<Vec<u8>> = Vec::new();
    let mut seq = 65_500u16; // wraps within the stream
    for i in 0..400u32 {
        if i == 250 {
            tx.set_key(&k2);
        }
        seq = seq.wrapping_add(1);
        let ssrc = if (300..320).contains(&i) {
            SSRC ^ 1
        } else {
            SSRC
        };
        let len = 12 + (i as usize * 37) % 1300;
        let payload = rng.bytes(len);
        let good = protect(&mut tx, &rtp(seq, ssrc, &payload));
        if i % 41 == 7 {
            let mut bad = good.clone();
            let k = bad.len() / 2;
            bad[k] ^= 0x10; // a tampered copy arrives first
            stream.push(bad);
        }
        stream.push(good);
        if i % 53 == 11 {
            stream.push(stream[stream.len() - 3].clone()); // replay
        }
        if i % 67 == 5 && stream.len() > 4 {
            let n = stream.len();
            stream.swap(n - 1, n - 3); // reordering
        }
    }
    stream.push(vec![0x80, 96, 0, 1]); // malformed
    let live = vec![(1u64, k1.clone()), (2u64, k2.clone())];
    let mut want = Vec::new();
    let mut one = SrtpReceiver::new();
    for p in &stream {
        want.push(unprotect(&mut one, p, &live));
    }
    for batch in [1usize, 2, 3, 8, 16, 17, 64] {
        let mut rx = SrtpReceiver::new();
        let mut got: Vec<Result<Vec<u8>, Failure>> = Vec::new();
        for chunk in stream.chunks(batch) {
            let refs: Vec<&[u8]> = chunk.iter().map(|p| &p[..]).collect();
            let before = got.len();
            rx.unprotect_batch(&refs, &live, |i, r| {
                assert_eq!(i, got.len() - before);
                got.push(r.map(|c| c.to_vec()));
            });
        }
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g, w, "batch {batch}, packet {i}");
        }
        assert_eq!(rx.highest_index(), one.highest_index());
    }
    assert!(want.iter().filter(|r| r.is_ok()).count() > 380);
    assert!(want.contains(&Err(Failure::BadTag)));
    assert!(want.contains(&Err(Failure::Replay)));
}
