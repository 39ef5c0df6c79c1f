//! Unit tests of the pipeline, recorder and forwards.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use gb35114::srtp::MasterKey;
use gb35114::srtp::SrtpSender;
use media::{ps::PsDemuxer, rtp, Codec};

use super::*;
use super::{forward::*, pipeline::*, recorder::*};
use crate::keys::KeyView;
use media::{ps::PsMuxer, rtp::RtpHeader};

fn au(idr: bool, n: usize, seed: u8) -> Vec<u8> {
    let mut v = Vec::new();
    if idr {
        v.extend_from_slice(&[0, 0, 0, 1, 0x67, 0x42, 0, 0x1f, 0xaa]);
        v.extend_from_slice(&[0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80]);
    }
    v.extend_from_slice(&[0, 0, 0, 1, if idr { 0x65 } else { 0x41 }]);
    v.extend((0..n).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed) | 1));
    v
}

fn packets(aus: &[Vec<u8>], ssrc: u32) -> Vec<Vec<u8>> {
    let mut mux = PsMuxer::new(Codec::H264);
    let mut out = Vec::new();
    let mut seq = 100u16;
    for (i, a) in aus.iter().enumerate() {
        let mut ps = Vec::new();
        mux.write_video(a, i as u64 * 3600, None, &mut ps);
        let chunks: Vec<&[u8]> = media::ps::packetize_rtp(&ps, 1388).collect();
        for (j, c) in chunks.iter().enumerate() {
            let mut p = Vec::new();
            RtpHeader {
                marker: j + 1 == chunks.len(),
                pt: 96,
                seq,
                ts: i as u32 * 3600,
                ssrc,
            }
            .write(&mut p);
            p.extend_from_slice(c);
            out.push(p);
            seq = seq.wrapping_add(1);
        }
    }
    out
}

#[test]
fn pipeline_records_exactly_what_was_sent() {
    let dir = std::env::temp_dir().join(format!("gw-rec-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let aus: Vec<Vec<u8>> = (0..30)
        .map(|i| au(i % 10 == 0, 3000 + i * 50, i as u8))
        .collect();
    let pk = packets(&aus, 7);
    let rec = Recorder::new(
        RecordConfig {
            dir: dir.clone(),
            ps: true,
            ..RecordConfig::default()
        },
        "dev_ch_1",
    )
    .unwrap();
    let mut p = Pipeline::new("1", Some(7), Some(rec));
    // Swap two packets and duplicate one: still exact.
    let mut order: Vec<usize> = (0..pk.len()).collect();
    order.swap(3, 4);
    order.insert(10, 9);
    for (t, i) in order.into_iter().enumerate() {
        p.packet(&pk[i], t as u64 * 1_000_000);
    }
    p.packet(b"garbage", 0);
    p.finish();
    assert_eq!(p.stats.frames, 30);
    assert_eq!(p.stats.keyframes, 3);
    assert_eq!(p.stats.lost, 0);
    assert_eq!(p.stats.duplicates, 1);
    assert_eq!(p.stats.garbage, 1);
    assert_eq!(p.stats.ssrc_mismatches, 0);
    assert_eq!(p.stats.files.len(), 2);
    let find = |ext: &str| p.stats.files.iter().find(|f| f.ends_with(ext)).unwrap();
    let es = std::fs::read(find(".h264")).unwrap();
    assert!(es == aus.concat(), "recorded ES differs from what was sent");
    let ps = std::fs::read(find(".ps")).unwrap();
    assert!(ps.starts_with(&[0, 0, 1, 0xba]));
    let _ = std::fs::remove_dir_all(&dir);
}

/// H.264 access units whose slice headers are plausible (the
/// sm4-nal-ofb decryptor checks them): first_mb_in_slice 0, an I slice
/// in IDRs, a P slice otherwise, PPS 0.
fn plausible_au(idr: bool, n: usize, seed: u8) -> Vec<u8> {
    let mut v = Vec::new();
    if idr {
        v.extend_from_slice(&[0, 0, 0, 1, 0x67, 0x42, 0, 0x1f, 0xaa]);
        v.extend_from_slice(&[0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80]);
        v.extend_from_slice(&[0, 0, 0, 1, 0x65, 0x88, 0x84]);
    } else {
        v.extend_from_slice(&[0, 0, 1, 0x41, 0x9a, 0x02]);
    }
    v.extend((0..n).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed) | 1));
    v
}

const DEV: &str = "34020000001320000001";

fn key_store(spec: &str) -> Arc<crate::keys::KeyStore> {
    let ks = crate::keys::KeyStore::new(None);
    ks.add(serde_json::from_str(spec).unwrap()).unwrap();
    ks
}

#[test]
fn srtp_is_decrypted_tampering_and_replay_counted_forward_re_encrypted() {
    srtp_pipeline(0);
}

/// The same arrival sequence through `Pipeline::packets` (the receive
/// batches, whose tags are computed together): the same counts, recording
/// and forward.
#[test]
fn srtp_in_receive_batches_gives_the_same_results() {
    for batch in [2, 5, 16] {
        srtp_pipeline(batch);
    }
}

/// `batch` 0: one `packet` call per datagram; else `packets` in chunks.
fn srtp_pipeline(batch: usize) {
    let dir = std::env::temp_dir().join(format!("gw-srtp-{}-{batch}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let aus: Vec<Vec<u8>> = (0..12)
        .map(|i| plausible_au(i % 6 == 0, 2500, i as u8))
        .collect();
    let clear = packets(&aus, 21);
    let m = MasterKey::from_inline("inline:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd").unwrap();
    let mut tx = SrtpSender::new(&m);
    let srtp: Vec<Vec<u8>> = clear
        .iter()
        .map(|p| {
            let mut o = Vec::new();
            tx.protect(p, &mut o).unwrap();
            o
        })
        .collect();
    let ks = key_store(&format!(
        r#"{{"device":"{DEV}","profile":"srtp-sm4","inline":"{}"}}"#,
        m.to_inline()
    ));
    let fwd_key = MasterKey {
        key: [9; 16],
        salt: [7; 14],
    };
    let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let f = Forward::new(rx.local_addr().unwrap(), 778)
        .unwrap()
        .with_srtp(&fwd_key);
    let rec = Recorder::new(
        RecordConfig {
            dir: dir.clone(),
            ..RecordConfig::default()
        },
        "srtp",
    )
    .unwrap();
    let view = KeyView::new(ks, DEV, DEV, None);
    let mut p = Pipeline::new("s", Some(21), Some(rec))
        .with_forwards(vec![f])
        .with_keys(Some(view), true);
    let mut arrivals: Vec<Vec<u8>> = Vec::new();
    for (t, pkt) in srtp.iter().enumerate() {
        arrivals.push(pkt.clone());
        if t == 3 {
            arrivals.push(pkt.clone()); // replayed
                                        // The next packet, tampered, ahead of the real one (which must
                                        // still be taken: the window moves on good tags only).
            let mut bad = srtp[4].clone();
            let last = bad.len() - 11;
            bad[last] ^= 1;
            arrivals.push(bad);
            arrivals.push(b"not rtp".to_vec());
        }
    }
    if batch == 0 {
        for (t, a) in arrivals.iter().enumerate() {
            p.packet(a, t as u64);
        }
    } else {
        for (t, chunk) in arrivals.chunks(batch).enumerate() {
            let b: Vec<(Option<std::net::SocketAddr>, &[u8])> =
                chunk.iter().map(|a| (None, &a[..])).collect();
            p.packets(&b, t as u64);
        }
    }
    p.finish();
    assert_eq!(p.stats.garbage, 1, "batch {batch}");
    assert_eq!(p.stats.decrypt.srtp_packets, clear.len() as u64);
    assert_eq!(p.stats.decrypt.failures.get("replay"), Some(&1));
    assert_eq!(p.stats.decrypt.failures.get("bad_tag"), Some(&1));
    assert_eq!(
        p.stats.packets,
        clear.len() as u64,
        "refused packets are not accounted"
    );
    assert_eq!(p.stats.frames, 12);
    let es = std::fs::read(&p.stats.files[0]).unwrap();
    assert!(
        es == aus.concat(),
        "recording differs from the clear source"
    );
    // The forward is SRTP under its own key: decrypts to the payloads.
    let mut rxc = gb35114::srtp::SrtpReceiver::new();
    let keys: Vec<(u64, MasterKey)> = vec![(1, fwd_key)];
    let mut buf = [0u8; 2048];
    for orig in &clear {
        let n = rx.recv(&mut buf).unwrap();
        let mut out = Vec::new();
        rxc.unprotect(&buf[..n], &keys, &mut out).unwrap();
        let got = rtp::parse(&out).unwrap();
        assert_eq!(got.payload, rtp::parse(orig).unwrap().payload);
        assert_eq!(got.ssrc, 778);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn nal_encrypted_units_are_decrypted_and_forwarded_clear() {
    use gb35114::{nal, sm4::Sm4};
    let dir = std::env::temp_dir().join(format!("gw-nal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let aus: Vec<Vec<u8>> = (0..12)
        .map(|i| plausible_au(i % 6 == 0, 3000, i as u8))
        .collect();
    let key = [0x42u8; 16];
    let enc: Vec<Vec<u8>> = aus
        .iter()
        .enumerate()
        .map(|(i, a)| {
            nal::encrypt_access_unit(nal::NalCodec::H264, a, 3, &Sm4::new(&key), &[i as u8; 16])
        })
        .collect();
    assert!(enc.iter().zip(&aus).all(|(e, a)| e != a));
    let pk = packets(&enc, 31);
    let ks = key_store(&format!(
        r#"{{"device":"{DEV}","profile":"sm4-nal-ofb","version":3,"key":"{}"}}"#,
        "42".repeat(16)
    ));
    let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let f = Forward::new(rx.local_addr().unwrap(), 779).unwrap();
    let rec = Recorder::new(
        RecordConfig {
            dir: dir.clone(),
            ps: true,
            ..RecordConfig::default()
        },
        "nal",
    )
    .unwrap();
    let mut p = Pipeline::new("n", Some(31), Some(rec))
        .with_forwards(vec![f])
        .with_keys(Some(KeyView::new(ks, DEV, DEV, None)), false);
    for (t, pkt) in pk.iter().enumerate() {
        p.packet(pkt, t as u64);
    }
    p.finish();
    let d = &p.stats.decrypt;
    assert_eq!(
        (d.encrypted_frames, d.units, d.key_version),
        (12, 12, Some(3)),
        "{d:?}"
    );
    assert!(d.failures.is_empty(), "{d:?}");
    assert_eq!(d.state, "decrypting");
    let find = |ext: &str| p.stats.files.iter().find(|f| f.ends_with(ext)).unwrap();
    assert!(std::fs::read(find(".h264")).unwrap() == aus.concat());
    // The PS recording and the forward carry the clear frames.
    let demux = |ps: &[u8]| -> Vec<Vec<u8>> {
        let mut dm = PsDemuxer::new();
        let mut out: Vec<Vec<u8>> = dm.push(ps, 0, true).into_iter().map(|f| f.data).collect();
        out.extend(dm.flush().into_iter().map(|f| f.data));
        out
    };
    assert_eq!(demux(&std::fs::read(find(".ps")).unwrap()), aus);
    let mut fwd = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok(n) = rx.recv(&mut buf) {
        fwd.extend_from_slice(rtp::parse(&buf[..n]).unwrap().payload);
    }
    assert_eq!(demux(&fwd), aus);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn encrypted_units_without_a_key_are_never_recorded() {
    use gb35114::{nal, sm4::Sm4};
    let dir = std::env::temp_dir().join(format!("gw-nokey-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let aus: Vec<Vec<u8>> = (0..6)
        .map(|i| plausible_au(i % 3 == 0, 2000, i as u8))
        .collect();
    let enc: Vec<Vec<u8>> = aus
        .iter()
        .map(|a| nal::encrypt_access_unit(nal::NalCodec::H264, a, 1, &Sm4::new(&[1; 16]), &[5; 16]))
        .collect();
    let rec = Recorder::new(
        RecordConfig {
            dir: dir.clone(),
            ..RecordConfig::default()
        },
        "nokey",
    )
    .unwrap();
    // No key store at all.
    let mut p = Pipeline::new("k", Some(41), Some(rec));
    for (t, pkt) in packets(&enc, 41).iter().enumerate() {
        p.packet(pkt, t as u64);
    }
    p.finish();
    assert_eq!(p.stats.frames, 0);
    assert!(p.stats.files.is_empty());
    assert_eq!(p.stats.decrypt.failures.get("no_key"), Some(&6));
    assert_eq!(p.stats.decrypt.state, "failing");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn forwards_in_order_under_its_own_ssrc() {
    let aus: Vec<Vec<u8>> = (0..5).map(|i| au(i == 0, 3000, i as u8)).collect();
    let pk = packets(&aus, 11);
    let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let f = Forward::new(rx.local_addr().unwrap(), 777).unwrap();
    let mut p = Pipeline::new("f", Some(11), None).with_forwards(vec![f]);
    let mut order: Vec<usize> = (0..pk.len()).collect();
    order.swap(1, 2);
    for (t, i) in order.into_iter().enumerate() {
        p.packet(&pk[i], t as u64);
    }
    p.finish();
    let mut buf = [0u8; 2048];
    let mut last_seq = None;
    for orig in &pk {
        let n = rx.recv(&mut buf).unwrap();
        let got = rtp::parse(&buf[..n]).unwrap();
        let want = rtp::parse(orig).unwrap();
        assert_eq!(got.ssrc, 777);
        assert_eq!(got.payload, want.payload, "payloads in the original order");
        assert_eq!((got.timestamp, got.marker), (want.timestamp, want.marker));
        if let Some(l) = last_seq {
            assert_eq!(got.sequence, u16::wrapping_add(l, 1));
        }
        last_seq = Some(got.sequence);
    }
    let shared = Mutex::new(MediaStats::default());
    p.publish(&shared);
    assert_eq!(shared.lock().unwrap().forwards[0].packets, pk.len() as u64);
}

#[test]
fn loss_and_wrong_ssrc_are_counted() {
    let aus: Vec<Vec<u8>> = (0..10).map(|i| au(i == 0, 500, i as u8)).collect();
    let pk = packets(&aus, 9);
    let mut p = Pipeline::new("2", Some(8), None);
    for (i, x) in pk.iter().enumerate() {
        if i == 5 {
            continue;
        }
        p.packet(x, i as u64 * 1_000_000);
    }
    p.finish();
    assert_eq!(p.stats.lost, 1);
    assert_eq!(p.stats.ssrc_mismatches as usize, pk.len() - 1);
    assert_eq!(p.stats.ssrc, Some(9));
    assert!(p.stats.frames < 10);
}

#[test]
fn rotation_starts_new_files_at_key_frames() {
    let dir = std::env::temp_dir().join(format!("gw-rot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let aus: Vec<Vec<u8>> = (0..40).map(|i| au(i % 10 == 0, 2000, i as u8)).collect();
    let rec = Recorder::new(
        RecordConfig {
            dir: dir.clone(),
            max_file_bytes: 5000,
            ..RecordConfig::default()
        },
        "r",
    )
    .unwrap();
    let mut p = Pipeline::new("3", None, Some(rec));
    for (t, x) in packets(&aus, 1).iter().enumerate() {
        p.packet(x, t as u64 * 1_000_000);
    }
    p.finish();
    assert_eq!(p.stats.files.len(), 4);
    let mut all = Vec::new();
    for f in &p.stats.files {
        let b = std::fs::read(f).unwrap();
        // Every file starts with the SPS of a key frame.
        assert_eq!(&b[..5], &[0, 0, 0, 1, 0x67]);
        all.extend(b);
    }
    assert!(
        all == aus.concat(),
        "rotated files differ from what was sent"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A relay leg numbers its packets input sequence + a fixed delta from its
/// first key frame on, and leaves to the kernel what the hand-over says:
/// from a start point, then everything; handed back, it sends again.
#[test]
fn leg_sequence_mapping_and_kernel_hand_over() {
    let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut f = Forward::leg("leg1", tx, rx.local_addr().unwrap(), 4242).unwrap();
    let sh = f.shared().expect("a leg shares its state");
    let mut buf = Vec::new();
    let key = [0u8, 0, 1, 0xBA, 0x44, 0, 0, 0, 0, 0, 0, 1, 0xBB, 0, 0];
    let recv_seq = |rx: &std::net::UdpSocket| {
        let mut b = [0u8; 2048];
        let n = rx.recv(&mut b).unwrap();
        let p = rtp::parse(&b[..n]).unwrap();
        assert_eq!(p.ssrc, 4242);
        p.sequence
    };
    // Not started: no mapping yet; a non-key payload is not sent.
    f.send(96, 0, false, b"not a key frame", &mut buf, Some(65530));
    assert_eq!(sh.mapping(), None);
    // The key frame starts it: out = in + delta.
    f.send(96, 0, false, &key, &mut buf, Some(65534));
    let (delta, last) = sh.mapping().expect("mapped once started");
    assert_eq!(last, 65534);
    let first = recv_seq(&rx);
    assert_eq!(first, 65534u16.wrapping_add(delta));
    // A gap stays a gap (across the wrap).
    f.send(96, 0, false, b"p", &mut buf, Some(2));
    assert_eq!(recv_seq(&rx), 2u16.wrapping_add(delta));
    // The kernel takes from input 10 on: 5 is still the leg's, 10 is not.
    sh.set_kernel_from(Some(10));
    f.send(96, 0, false, b"p", &mut buf, Some(5));
    assert_eq!(recv_seq(&rx), 5u16.wrapping_add(delta));
    f.send(96, 0, false, b"p", &mut buf, Some(10));
    f.send(96, 0, false, b"p", &mut buf, Some(40000));
    assert_eq!(f.stats.kernel_sent, 1, "10 left to the kernel");
    // 40000 is behind 10 in serial arithmetic: the leg's to send.
    assert_eq!(recv_seq(&rx), 40000u16.wrapping_add(delta));
    // The kernel takes all: nothing is sent.
    sh.set_kernel_all();
    f.send(96, 0, false, b"p", &mut buf, Some(41000));
    assert_eq!(f.stats.kernel_sent, 2);
    // Handed back: the leg sends everything again, same numbering.
    sh.set_kernel_from(None);
    f.send(96, 0, false, b"p", &mut buf, Some(41001));
    assert_eq!(recv_seq(&rx), 41001u16.wrapping_add(delta));
    assert_eq!(sh.mapping().map(|m| m.1), Some(41001));
    // Re-muxed packets (no input number) mark the leg as not for the kernel.
    assert!(!sh.remuxed());
    f.send(96, 0, false, b"p", &mut buf, None);
    assert!(sh.remuxed());
}

/// What a crash (no close, no flush) leaves on disk: the file's first key
/// frame at once, then whole groups of pictures up to the last key frame.
#[test]
fn recorder_leaves_whole_gops_on_disk_without_close() {
    let dir = std::env::temp_dir().join(format!("gw-rec-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut r = Recorder::new(
        RecordConfig {
            dir: dir.clone(),
            ..RecordConfig::default()
        },
        "crash",
    )
    .unwrap();
    let frame = |key: bool, seed: u8| media::Frame {
        kind: media::FrameKind::Video,
        codec: Codec::H264,
        pts: None,
        dts: None,
        rtp_timestamp: 0,
        keyframe: key,
        data: au(key, 300, seed),
    };
    let on_disk = |r: &Recorder| std::fs::read(&r.files[0]).unwrap();
    // A non-key frame first is not recorded (a file starts at a key frame).
    r.frame(&frame(false, 1)).unwrap();
    assert!(r.files.is_empty());
    let k1 = frame(true, 2);
    r.frame(&k1).unwrap();
    assert_eq!(on_disk(&r), k1.data, "the first key frame is on disk");
    let p1 = frame(false, 3);
    r.frame(&p1).unwrap();
    assert_eq!(on_disk(&r), k1.data, "buffered");
    r.frame(&frame(true, 4)).unwrap();
    assert_eq!(
        on_disk(&r),
        [k1.data.clone(), p1.data.clone()].concat(),
        "the group of pictures before the key frame is on disk"
    );
    drop(r);
    let _ = std::fs::remove_dir_all(&dir);
}
