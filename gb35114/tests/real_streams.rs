//! sm4-nal-ofb on real H.264/H.265 from ffmpeg (libx264/libx265): the right
//! key gives back every access unit byte for byte; a wrong key emits nothing.
//! A missing ffmpeg FAILS these tests.

mod common;

use common::*;
use gb35114::nal::*;
use gb35114::sm4::Sm4;
use gb35114::Failure;

struct Case {
    codec: NalCodec,
    encoder: &'static str,
    extra: &'static [&'static str],
    slices: usize,
}

const CASES: [Case; 4] = [
    Case {
        codec: NalCodec::H264,
        encoder: "libx264",
        extra: &[],
        slices: 1,
    },
    Case {
        codec: NalCodec::H264,
        encoder: "libx264",
        extra: &["-x264-params", "slices=4:aud=1", "-profile:v", "baseline"],
        slices: 4,
    },
    Case {
        codec: NalCodec::H265,
        encoder: "libx265",
        extra: &[],
        slices: 1,
    },
    Case {
        codec: NalCodec::H265,
        encoder: "libx265",
        extra: &["-x265-params", "slices=3:aud=1:log-level=error"],
        slices: 3,
    },
];

fn run(case: &Case) {
    let stream = ffmpeg_stream(case.encoder, "320x240", 50, case.extra);
    let codec = case.codec;
    let aus = split_access_units(codec, &stream);
    assert_eq!(aus.concat(), stream, "split is byte exact");
    assert!(aus.len() >= 50, "{} AUs", aus.len());
    let aus: Vec<&[u8]> = aus
        .into_iter()
        .filter(|au| split_nal_units(au).iter().any(|n| is_vcl(codec, n)))
        .collect();
    assert_eq!(aus.len(), 50, "one AU with slices per frame");
    let max_slices = aus
        .iter()
        .map(|au| {
            split_nal_units(au)
                .iter()
                .filter(|n| is_vcl(codec, n))
                .count()
        })
        .max();
    assert_eq!(
        max_slices,
        Some(case.slices),
        "{} {:?}",
        case.encoder,
        case.extra
    );

    let mut rng = Rng(0x5eed ^ aus.len() as u64);
    let key: [u8; 16] = rng.array();
    let c = Sm4::new(&key);
    let enc: Vec<Vec<u8>> = aus
        .iter()
        .enumerate()
        .map(|(i, au)| {
            let v = if i < 30 { 1 } else { 2 };
            let e = encrypt_access_unit(codec, au, v, &c, &rng.array());
            for n in split_nal_units(&e).iter().filter(|n| is_vcl(codec, n)) {
                assert!(!has_forbidden(&n[codec.header_len()..]));
            }
            e
        })
        .collect();

    // right key (two versions, same key bytes, to exercise the lookup)
    let mut right = KeyRing::new();
    right.insert(1, 1, &key);
    right.insert(2, 2, &key);
    let mut d = NalDecryptor::new(codec);
    let mut out = Vec::new();
    for (i, e) in enc.iter().enumerate() {
        d.push(e.clone(), i == 0, i, &right, &mut out);
    }
    d.finish(&mut out);
    assert_eq!(out.len(), aus.len(), "{} {:?}", case.encoder, d.stats());
    for (au, i) in &out {
        assert!(au == aus[*i], "{} AU {i} differs", case.encoder);
    }
    assert_eq!(d.stats().failures, [0; 6]);
    let vcl: usize = aus
        .iter()
        .map(|a| {
            split_nal_units(a)
                .iter()
                .filter(|n| is_vcl(codec, n))
                .count()
        })
        .sum();
    assert_eq!(d.stats().decrypted_units, vcl as u64);
    assert_eq!(d.stats().encrypted_aus, aus.len() as u64);

    // wrong key: same versions, other bytes
    let mut wrong_key = key;
    wrong_key[0] ^= 1;
    let mut wrong = KeyRing::new();
    wrong.insert(1, 101, &wrong_key);
    wrong.insert(2, 102, &wrong_key);
    let mut d = NalDecryptor::new(codec);
    let mut out = Vec::new();
    for (i, e) in enc.iter().enumerate() {
        d.push(e.clone(), i == 0, i, &wrong, &mut out);
    }
    d.finish(&mut out);
    assert!(
        out.is_empty(),
        "{}: {} AUs emitted under a wrong key",
        case.encoder,
        out.len()
    );
    assert_eq!(d.stats().failures_of(Failure::WrongKey), aus.len() as u64);

    // clear stream passes untouched
    let mut d = NalDecryptor::new(codec);
    let mut out = Vec::new();
    for (i, au) in aus.iter().enumerate() {
        d.push(au.to_vec(), false, i, &right, &mut out);
    }
    assert_eq!(out.len(), aus.len());
    assert_eq!(d.stats().clear_aus, aus.len() as u64);
}

#[test]
fn h264_default() {
    run(&CASES[0]);
}

#[test]
fn h264_baseline_four_slices_with_aud() {
    run(&CASES[1]);
}

#[test]
fn h265_default() {
    run(&CASES[2]);
}

#[test]
fn h265_three_slices_with_aud() {
    run(&CASES[3]);
}
