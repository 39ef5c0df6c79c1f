//! SM4 media decryption on untrusted input: the sm4-nal-ofb decryptor fed
//! arbitrary access units (each preceded by a 2-byte length) and the
//! srtp-sm4 receiver fed the same chunks as packets must never panic, and
//! never emit more access units than they were given.
#![no_main]

use gb35114::{
    nal::{self, KeyRing, NalCodec, NalDecryptor},
    sm4::Sm4,
    srtp::{MasterKey, SrtpReceiver},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, mut rest)) = data.split_first() else {
        return;
    };
    let codec = if sel & 1 == 0 {
        NalCodec::H264
    } else {
        NalCodec::H265
    };
    let mut keys = KeyRing::new();
    keys.insert(1, 1, &[7; 16]);
    keys.insert(2, 2, &[9; 16]);
    let srtp_keys = vec![(
        1u64,
        MasterKey {
            key: [3; 16],
            salt: [4; 14],
        },
    )];
    let mut dec: NalDecryptor<usize> = NalDecryptor::new(codec);
    let mut rx = SrtpReceiver::new();
    let mut out = Vec::new();
    let mut pushed = 0usize;
    let mut clear = Vec::new();
    while rest.len() >= 2 {
        let n = (u16::from_be_bytes([rest[0], rest[1]]) as usize).min(rest.len() - 2);
        let chunk = &rest[2..2 + n];
        rest = &rest[2 + n..];
        // Encrypted by us, or as given: both must be handled.
        let au = if sel & 2 != 0 {
            nal::encrypt_access_unit(
                codec,
                chunk,
                1 + (sel as u32 >> 2 & 1),
                &Sm4::new(&[7; 16]),
                &[sel; 16],
            )
        } else {
            chunk.to_vec()
        };
        dec.push(au, sel & 4 != 0, pushed, &keys, &mut out);
        pushed += 1;
        assert!(out.len() <= pushed);
        clear.clear();
        let _ = rx.unprotect(chunk, &srtp_keys, &mut clear);
    }
    dec.finish(&mut out);
    assert!(out.len() <= pushed);
});
