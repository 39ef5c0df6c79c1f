//! Our SM4 modes, SM3, HMAC-SM3 and srtp-sm4 against the machine's openssl
//! (an implementation the project did not write), through every SM4 and
//! SM3 implementation this CPU runs (the others are printed as skipped).
//! A missing openssl FAILS these tests.

mod common;

use common::*;
use gb35114::sm3::{hmac_sm3, sm3, HmacSm3};
use gb35114::sm4::{
    ctr_apply, ecb_decrypt, ecb_encrypt, ofb_apply, ofb_lanes_keyed, unwrap_key, wrap_key, Impl,
    OfbUnit, Sm4,
};

/// The SM4 implementations this CPU runs; the others are printed, with why.
fn impls() -> Vec<Impl> {
    Impl::ALL
        .into_iter()
        .filter(|i| match i.unavailable() {
            None => true,
            Some(why) => {
                println!("skipped: SM4 {i}: {why}");
                false
            }
        })
        .collect()
}

fn key_of(key: &[u8; 16], imp: Impl) -> Sm4 {
    Sm4::with_impl(key, imp).expect("a runnable implementation")
}
use gb35114::srtp::{MasterKey, SessionKeys, SrtpSender, TAG_LEN};

/// Lengths including non-multiples of 16 and empty.
const LENGTHS: [usize; 20] = [
    0, 1, 5, 15, 16, 17, 31, 32, 33, 47, 64, 100, 255, 256, 1000, 1023, 1400, 1500, 4096, 9999,
];

#[test]
fn sm4_ofb_matches_openssl() {
    let mut rng = Rng(0x5eed_0001);
    for &n in &LENGTHS {
        let key: [u8; 16] = rng.array();
        let iv: [u8; 16] = rng.array();
        let data = rng.bytes(n);
        let want = openssl_enc("-sm4-ofb", &key, Some(&iv), &data, false);
        for imp in impls() {
            let c = key_of(&key, imp);
            let mut got = data.clone();
            ofb_apply(&c, &iv, &mut got);
            assert_eq!(hex(&got), hex(&want), "{imp} len {n}");
            ofb_apply(&c, &iv, &mut got);
            assert_eq!(got, data);
            // The same unit as one lane among others, and under several keys.
            let mut lanes = [data.clone(), rng.bytes(n / 2), rng.bytes(n + 20)];
            let other = key_of(&rng.array(), imp);
            let mut units: Vec<OfbUnit<'_>> =
                lanes.iter_mut().map(|d| OfbUnit { iv, data: d }).collect();
            c.ofb_lanes(&mut units);
            assert_eq!(hex(&lanes[0]), hex(&want), "{imp} lanes len {n}");
            let mut lanes = [rng.bytes(n / 3), data.clone()];
            let mut units: Vec<OfbUnit<'_>> =
                lanes.iter_mut().map(|d| OfbUnit { iv, data: d }).collect();
            ofb_lanes_keyed(&[&other, &c], &mut units);
            assert_eq!(hex(&lanes[1]), hex(&want), "{imp} keyed lanes len {n}");
        }
    }
}

#[test]
fn sm4_ctr_matches_openssl() {
    let mut rng = Rng(0x5eed_0002);
    for (i, &n) in LENGTHS.iter().enumerate() {
        let key: [u8; 16] = rng.array();
        let mut iv: [u8; 16] = rng.array();
        if i.is_multiple_of(4) {
            // counter carries across bytes (and wraps the full 128 bits)
            iv[8..].copy_from_slice(&[0xff; 8]);
            if i == 0 {
                iv = [0xff; 16];
            }
        }
        let data = rng.bytes(n.max(40));
        let want = openssl_enc("-sm4-ctr", &key, Some(&iv), &data, false);
        for imp in impls() {
            let mut got = data.clone();
            ctr_apply(&key_of(&key, imp), &iv, &mut got);
            assert_eq!(hex(&got), hex(&want), "{imp} len {n} iv {}", hex(&iv));
        }
    }
}

#[test]
fn sm4_ecb_matches_openssl() {
    let mut rng = Rng(0x5eed_0003);
    for blocks in [1usize, 2, 3, 7, 16, 64] {
        let key: [u8; 16] = rng.array();
        let data = rng.bytes(blocks * 16);
        let want = openssl_enc("-sm4-ecb", &key, None, &data, true);
        for imp in impls() {
            let c = key_of(&key, imp);
            let mut got = data.clone();
            ecb_encrypt(&c, &mut got).unwrap();
            assert_eq!(hex(&got), hex(&want), "{imp}");
            ecb_decrypt(&c, &mut got).unwrap();
            assert_eq!(got, data, "{imp}");
        }
    }
    // key wrapping is one ECB block; unwrap = openssl -d
    let vkek: [u8; 16] = rng.array();
    let vek: [u8; 16] = rng.array();
    let wrapped = wrap_key(&vkek, &vek);
    assert_eq!(
        hex(&wrapped),
        hex(&openssl_enc("-sm4-ecb", &vkek, None, &vek, true))
    );
    let k = hex(&vkek);
    let back = openssl(
        &["enc", "-d", "-sm4-ecb", "-K", &k, "-nosalt", "-nopad"],
        &wrapped,
    );
    assert_eq!(back, vek);
    assert_eq!(unwrap_key(&vkek, &wrapped), vek);
    // check value = first 4 bytes of E(key, 0^16)
    let z = openssl_enc("-sm4-ecb", &vkek, None, &[0u8; 16], true);
    assert_eq!(Sm4::new(&vkek).check_value(), hex(&z[..4]));
}

#[test]
fn sm3_and_hmac_match_openssl() {
    let mut rng = Rng(0x5eed_0004);
    for &n in &LENGTHS {
        let data = rng.bytes(n);
        assert_eq!(hex(&sm3(&data)), hex(&openssl_sm3(&data)), "len {n}");
        // keys shorter than, equal to and longer than the 64-byte block
        let klen = [0usize, 1, 16, 32, 63, 64, 65, 100][n % 8];
        let key = rng.bytes(klen.max(1));
        let want = openssl_hmac_sm3(&key, &data);
        assert_eq!(
            hex(&hmac_sm3(&key, &data)),
            hex(&want),
            "len {n} key {klen}"
        );
        let mid = n / 3;
        for imp in gmcrypt::sm3::Impl::ALL {
            if let Some(why) = imp.unavailable() {
                println!("skipped: SM3 {imp}: {why}");
                continue;
            }
            let h = HmacSm3::with_impl(&key, imp);
            assert_eq!(
                hex(&h.mac(&[&data[..mid], &data[mid..]])),
                hex(&want),
                "{imp}"
            );
            let mut d = gmcrypt::sm3::Sm3::with_impl(imp);
            d.update(&data[..mid]);
            d.update(&data[mid..]);
            assert_eq!(
                hex(&d.finalize()),
                hex(&openssl_sm3(&data)),
                "{imp} len {n}"
            );
        }
    }
    assert_eq!(
        hex(&sm3(b"abc")),
        "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
    );
}

/// SRTP IV computed independently of the crate.
fn srtp_iv(salt: &[u8], ssrc: u32, index: u64) -> Vec<u8> {
    let mut iv = salt.to_vec();
    iv.extend_from_slice(&[0, 0]);
    for (i, b) in ssrc.to_be_bytes().iter().enumerate() {
        iv[4 + i] ^= b;
    }
    for (i, b) in index.to_be_bytes()[2..].iter().enumerate() {
        iv[8 + i] ^= b;
    }
    iv
}

#[test]
fn srtp_key_derivation_matches_openssl_ctr() {
    let mut rng = Rng(0x5eed_0005);
    for _ in 0..5 {
        let m = MasterKey {
            key: rng.array(),
            salt: rng.array(),
        };
        let s = SessionKeys::derive(&m);
        for (label, len, got) in [
            (0u8, 16usize, s.enc_key().to_vec()),
            (1, 32, s.auth_key().to_vec()),
            (2, 14, s.salt().to_vec()),
        ] {
            // x = key_id XOR master_salt, key_id = label || 48 zero bits, right aligned
            let mut iv = m.salt.to_vec();
            iv[7] ^= label;
            iv.extend_from_slice(&[0, 0]);
            let want = openssl_enc("-sm4-ctr", &m.key, Some(&iv), &vec![0u8; len], false);
            assert_eq!(hex(&got), hex(&want), "label {label}");
        }
    }
}

#[test]
fn srtp_packets_match_openssl_ctr_and_hmac() {
    let mut rng = Rng(0x5eed_0006);
    let m = MasterKey {
        key: rng.array(),
        salt: rng.array(),
    };
    let s = SessionKeys::derive(&m);
    let mut tx = SrtpSender::new(&m);
    let ssrc = 0x1234_5678u32;
    // sequence numbers across the wrap: ROC 0 then 1
    for (k, seq) in [65533u16, 65534, 65535, 0, 1, 2].into_iter().enumerate() {
        let mut rtp = vec![0x80, 96];
        rtp.extend_from_slice(&seq.to_be_bytes());
        rtp.extend_from_slice(&(k as u32 * 3600).to_be_bytes());
        rtp.extend_from_slice(&ssrc.to_be_bytes());
        let payload = rng.bytes([1, 15, 16, 17, 160, 1388][k]);
        rtp.extend_from_slice(&payload);
        let mut out = Vec::new();
        tx.protect(&rtp, &mut out).unwrap();
        assert_eq!(out.len(), rtp.len() + TAG_LEN);
        let roc: u32 = if seq >= 65533 { 0 } else { 1 };
        let index = (u64::from(roc) << 16) | u64::from(seq);
        let iv = srtp_iv(s.salt(), ssrc, index);
        let want_ct = openssl_enc("-sm4-ctr", s.enc_key(), Some(&iv), &payload, false);
        assert_eq!(&out[..12], &rtp[..12]);
        assert_eq!(
            hex(&out[12..out.len() - TAG_LEN]),
            hex(&want_ct),
            "seq {seq}"
        );
        let mut authed = out[..out.len() - TAG_LEN].to_vec();
        authed.extend_from_slice(&roc.to_be_bytes());
        let mac = openssl_hmac_sm3(s.auth_key(), &authed);
        assert_eq!(
            hex(&out[out.len() - TAG_LEN..]),
            hex(&mac[..TAG_LEN]),
            "seq {seq}"
        );
    }
    assert_eq!(tx.roc(), 1);
}
