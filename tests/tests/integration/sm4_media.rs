//! SM4 media encryption end to end (docs/media-encryption.md), on
//! loopback: simulated cameras (gb-sim) encrypt H.264 and H.265 with
//! `sm4-nal-ofb` and `srtp-sm4`; the gateway decrypts with keys from its
//! configuration, from the REST API (clear and wrapped under the device's
//! VKEK, rotated mid-stream) and from SDP (offered in the INVITE, or in the
//! device's answer). The recorded elementary stream must equal the clear
//! source byte for byte. Misprovisioned cameras (wrong key, no key, unknown
//! key version) run at the same time: their failures are counted by reason,
//! nothing of theirs is recorded, and the good streams are unaffected.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use gateway_tests::{
    sim,
    sipp::{free_port, Daemon, TempDir},
    testmedia::camera_file,
};
use gb28181::digest::hex;
use serde_json::Value;

const K1: &str = "00112233445566778899aabbccddeeff";
const K2: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
const VKEK: &str = "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf";
const SALT: &str = "0102030405060708090a0b0c0d0e";

fn unhex16(s: &str) -> [u8; 16] {
    let v: Vec<u8> = (0..32)
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

struct Cam {
    dev: &'static str,
    child: sim::KillOnDrop,
    status: PathBuf,
}

fn sim(sip: u16, dir: &Path, dev: &'static str, media: &Path, extra: &[String]) -> Cam {
    let mut args = vec!["--channels", "1", "--media", media.to_str().unwrap()];
    args.extend(extra.iter().map(String::as_str));
    let (child, status) = sim::spawn(
        None,
        &format!("127.0.0.1:{sip}"),
        "127.0.0.1",
        dev,
        dir,
        &args,
    );
    Cam { dev, child, status }
}

fn failures(v: &Value, reason: &str) -> u64 {
    v["media"]["decrypt"]["failures"][reason]
        .as_u64()
        .unwrap_or(0)
}

/// Packets the gateway took in for the stream: accounted (decrypted or
/// clear) plus SRTP packets refused.
fn seen(v: &Value) -> u64 {
    let srtp = v["media"]["decrypt"]["profiles"]
        .as_array()
        .is_some_and(|p| p.iter().any(|x| x == "srtp-sm4"));
    let refused: u64 = ["no_key", "bad_tag", "replay", "malformed"]
        .iter()
        .map(|r| failures(v, r))
        .sum();
    v["media"]["packets"].as_u64().unwrap_or(0) + if srtp { refused } else { 0 }
}

fn keys_api(d: &Daemon) {
    // Provision through the API: a VKEK, a wrapped key, a channel key.
    let wrapped = hex(&gb35114::sm4::wrap_key(&unhex16(VKEK), &unhex16(K2)));
    let (code, v) = d
        .post_json(
            "/api/keys",
            &format!(
                r#"{{"device":"34020000001320000901","profile":"sm4-nal-ofb","version":2,"wrapped":"{wrapped}"}}"#
            ),
        )
        .unwrap();
    assert_eq!(code, 409, "no VKEK yet: {v}");
    assert!(v["error"].as_str().unwrap().contains("VKEK"), "{v}");
    let (code, v) = d
        .call(
            "PUT",
            "/api/vkeks/34020000001320000901",
            Some(&format!(r#"{{"key":"{VKEK}"}}"#)),
        )
        .unwrap();
    assert_eq!(code, 200, "{v}");
    let (code, v) = d
        .post_json(
            "/api/keys",
            &format!(
                r#"{{"device":"34020000001320000901","profile":"sm4-nal-ofb","version":2,"wrapped":"{wrapped}"}}"#
            ),
        )
        .unwrap();
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["wrapped"], true);
    // The check value is that of the unwrapped key.
    assert_eq!(
        v["check"],
        gb35114::sm4::Sm4::new(&unhex16(K2)).check_value(),
        "{v}"
    );
    let ch = sim::channel("34020000001320000902", 1);
    let (code, v) = d
        .post_json(
            "/api/keys",
            &format!(
                r#"{{"device":"34020000001320000902","channel":"{ch}","profile":"sm4-nal-ofb","version":7,"key":"{K2}"}}"#
            ),
        )
        .unwrap();
    assert_eq!(code, 201, "{v}");
    // Rotation of the SRTP camera's key: version 2 added, version 1 kept
    // for the grace period.
    let (code, v) = d
        .post_json(
            "/api/keys/rotate?grace_secs=600",
            &format!(
                r#"{{"device":"34020000001320000903","profile":"srtp-sm4","version":2,"key":"{K2}","salt":"{SALT}"}}"#
            ),
        )
        .unwrap();
    assert_eq!(code, 201, "{v}");
    // Bad input: clear JSON errors.
    for (body, want) in [
        (
            r#"{"device":"34020000001320000902","profile":"sm4-nal-ofb","key":"0011"}"#,
            400,
        ),
        (
            r#"{"device":"34020000001320000902","profile":"sm4-xyz","key":"00"}"#,
            400,
        ),
        (
            &*format!(r#"{{"device":"34020000001320000903","profile":"srtp-sm4","key":"{K1}"}}"#),
            400,
        ),
        (
            &*format!(
                r#"{{"device":"34020000001320000902","channel":"{ch}","profile":"sm4-nal-ofb","version":7,"key":"{K1}"}}"#
            ),
            409,
        ),
    ] {
        let (code, v) = d.post_json("/api/keys", body).unwrap();
        assert_eq!(code, want, "{body}: {v}");
        assert_eq!(v["status"], want, "{v}");
    }
    let (code, _) = d
        .request(
            "DELETE",
            "/api/keys/34020000001320000902/x/sm4-nal-ofb/1",
            None,
        )
        .unwrap();
    assert_eq!(code, 404);
    // Listing never shows key bytes.
    let list = d.get("/api/keys").unwrap().to_string();
    for k in [K1, K2, VKEK, &wrapped] {
        assert!(!list.contains(k), "key bytes listed: {list}");
    }
    let listed = d.get("/api/keys?device=34020000001320000903").unwrap();
    assert_eq!(listed["count"], 2, "{listed}");
    assert!(listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["version"] == 1 && k["expires_ms"].is_i64()));
}

#[test]
fn encrypted_cameras_record_the_clear_source() {
    let dir = TempDir::new("sm4");
    let h264 = camera_file(dir.path(), 100, false);
    let h265 = camera_file(dir.path(), 100, true);
    let (sip, api) = (free_port(), free_port());
    let rec = dir.path().join("records");
    let keys = format!(
        "[media]\nports = \"32200-32299\"\nno_media_timeout_secs = 0\n\
         [media.record]\ndir = \"{rec}\"\n\
         [[keys]]\ndevice = \"34020000001320000901\"\nprofile = \"sm4-nal-ofb\"\nversion = 1\nkey = \"{K1}\"\n\
         [[keys]]\ndevice = \"34020000001320000903\"\nprofile = \"srtp-sm4\"\nversion = 1\nkey = \"{K1}\"\nsalt = \"{SALT}\"\n\
         [[keys]]\ndevice = \"34020000001320000906\"\nprofile = \"sm4-nal-ofb\"\nversion = 1\nkey = \"{K1}\"\n\
         [[keys]]\ndevice = \"34020000001320000907\"\nprofile = \"srtp-sm4\"\ninline = \"{inline}\"\n\
         [[keys]]\ndevice = \"34020000001320000909\"\nprofile = \"sm4-nal-ofb\"\nversion = 1\nkey = \"{K1}\"\n",
        rec = rec.display(),
        inline = gb35114::srtp::MasterKey {
            key: unhex16(K1),
            salt: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14],
        }
        .to_inline(),
    );
    let cfg = Daemon::config(
        dir.path(),
        sip,
        api,
        "password = \"pw\"\nquery_info = false",
        &keys,
    );
    let mut d = Daemon::start(&cfg, sip, api).unwrap();
    keys_api(&d);

    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let srtp_k1 = format!("1:{K1}:{SALT}");
    let srtp_k2 = format!("2:{K2}:{SALT}");
    // (camera, media, gb-sim arguments, request extras, expected outcome)
    let cams: Vec<(Cam, &Path, &str, &str)> = vec![
        (
            sim(
                sip,
                dir.path(),
                "34020000001320000901",
                &h264,
                &s(&[
                    "--encrypt",
                    "sm4-nal-ofb",
                    "--key",
                    &format!("1:{K1}"),
                    "--key",
                    &format!("2:{K2}"),
                    "--rotate-every",
                    "30",
                ]),
            ),
            &h264,
            "",
            "exact",
        ),
        (
            sim(
                sip,
                dir.path(),
                "34020000001320000902",
                &h265,
                &s(&["--encrypt", "sm4-nal-ofb", "--key", &format!("7:{K2}")]),
            ),
            &h265,
            "",
            "exact",
        ),
        (
            sim(
                sip,
                dir.path(),
                "34020000001320000903",
                &h264,
                &s(&[
                    "--encrypt",
                    "srtp-sm4",
                    "--key",
                    &srtp_k1,
                    "--key",
                    &srtp_k2,
                    "--rotate-every",
                    "30",
                    "--duplicate-every",
                    "7",
                ]),
            ),
            &h264,
            "",
            "exact",
        ),
        (
            sim(
                sip,
                dir.path(),
                "34020000001320000904",
                &h265,
                &s(&["--encrypt", "srtp-sm4"]),
            ),
            &h265,
            r#","srtp":true"#,
            "exact",
        ),
        (
            sim(
                sip,
                dir.path(),
                "34020000001320000905",
                &h265,
                &s(&[
                    "--encrypt",
                    "srtp-sm4",
                    "--key",
                    &srtp_k2,
                    "--answer-crypto",
                ]),
            ),
            &h265,
            "",
            "exact",
        ),
        (
            sim(
                sip,
                dir.path(),
                "34020000001320000906",
                &h264,
                &s(&[
                    "--encrypt",
                    "sm4-nal-ofb",
                    "--key",
                    &format!("1:{K1}"),
                    "--wrong-key",
                ]),
            ),
            &h264,
            "",
            "wrong_key",
        ),
        (
            sim(
                sip,
                dir.path(),
                "34020000001320000907",
                &h264,
                &s(&["--encrypt", "srtp-sm4", "--key", &srtp_k1, "--wrong-key"]),
            ),
            &h264,
            "",
            "bad_tag",
        ),
        (
            sim(
                sip,
                dir.path(),
                "34020000001320000908",
                &h264,
                &s(&["--encrypt", "sm4-nal-ofb", "--key", &format!("1:{K1}")]),
            ),
            &h264,
            "",
            "no_key",
        ),
        (
            sim(
                sip,
                dir.path(),
                "34020000001320000909",
                &h265,
                &s(&["--encrypt", "sm4-nal-ofb", "--key", &format!("5:{K1}")]),
            ),
            &h265,
            "",
            "unknown_key_version",
        ),
    ];
    d.wait_until(Duration::from_secs(60), "cameras online", |d| {
        cams.iter().all(|(c, ..)| {
            d.device(c.dev)
                .is_ok_and(|v| v["online"] == true && v["catalog"]["state"] == "complete")
        })
    })
    .unwrap();
    // Play them all at once.
    let mut ids = Vec::new();
    for (c, _, extra, _) in &cams {
        let (code, v) = d
            .post_json(
                "/api/streams",
                &format!(
                    r#"{{"device":"{}","channel":"{}","record":true{extra}}}"#,
                    c.dev,
                    sim::channel(c.dev, 1)
                ),
            )
            .unwrap();
        assert_eq!(code, 201, "{}: {v}", c.dev);
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    for ((c, ..), id) in cams.iter().zip(&ids) {
        d.wait_until(Duration::from_secs(60), "file sent and taken in", |d| {
            let sent = sim::stream(&c.status, id);
            sent["state"] == "idle"
                && d.get(&format!("/api/streams/{id}"))
                    .is_ok_and(|v| seen(&v) == sent["packets_sent"].as_u64().unwrap_or(1))
        })
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}\nstream: {}\nsent: {}",
                c.dev,
                d.get(&format!("/api/streams/{id}")).unwrap_or_default(),
                sim::stream(&c.status, id)
            )
        });
    }
    for ((c, source, _, want), id) in cams.iter().zip(&ids) {
        let sent = sim::stream(&c.status, id);
        let v = d.get(&format!("/api/streams/{id}")).unwrap();
        let dec = &v["media"]["decrypt"];
        let (code, _) = d
            .request("DELETE", &format!("/api/streams/{id}"), None)
            .unwrap();
        assert_eq!(code, 200);
        d.wait_until(Duration::from_secs(10), "stream closed", |d| {
            d.get(&format!("/api/streams/{id}"))
                .is_ok_and(|v| v["state"] == "closed" && v["media"]["decrypt"]["state"].is_string())
        })
        .unwrap();
        if *want == "exact" {
            d.wait_until(Duration::from_secs(10), "recording closed", |d| {
                d.get(&format!("/api/streams/{id}"))
                    .is_ok_and(|v| v["media"]["files"][0].is_string())
            })
            .unwrap();
            let v = d.get(&format!("/api/streams/{id}")).unwrap();
            let file = v["media"]["files"][0].as_str().unwrap();
            let got = std::fs::read(file).unwrap();
            let src = std::fs::read(source).unwrap();
            assert!(
                got == src,
                "{}: recording differs from the clear source ({} vs {} bytes): {v}",
                c.dev,
                got.len(),
                src.len()
            );
            assert_eq!(v["media"]["frames"], sent["frames_sent"], "{}: {v}", c.dev);
            let dec = &v["media"]["decrypt"];
            assert_eq!(dec["state"], "decrypting", "{}: {dec}", c.dev);
            if sent["encryption"] == "sm4-nal-ofb" {
                assert_eq!(
                    dec["encrypted_frames"], sent["frames_sent"],
                    "{}: {dec}",
                    c.dev
                );
                assert_eq!(dec["key_version"], sent["key_version"], "{}: {dec}", c.dev);
                assert!(
                    dec["failures"].as_object().unwrap().is_empty(),
                    "{}: {dec}",
                    c.dev
                );
            } else {
                assert_eq!(sent["encryption"], "srtp-sm4");
                let dups = sent["packets_duplicated"].as_u64().unwrap();
                assert_eq!(
                    dec["srtp_packets"].as_u64().unwrap() + dups,
                    sent["packets_sent"].as_u64().unwrap(),
                    "{}: {dec}",
                    c.dev
                );
                assert_eq!(failures(&v, "replay"), dups, "{}: {dec}", c.dev);
                assert_eq!(failures(&v, "bad_tag"), 0, "{}: {dec}", c.dev);
            }
        } else {
            // Nothing of the misprovisioned cameras is recorded.
            let v = d.get(&format!("/api/streams/{id}")).unwrap();
            assert_eq!(v["media"]["frames"], 0, "{}: {v}", c.dev);
            assert!(
                v["media"]["files"].as_array().is_none_or(|f| f.is_empty()),
                "{}: {v}",
                c.dev
            );
            assert!(failures(&v, want) > 0, "{}: {dec}", c.dev);
            assert_eq!(dec["state"], "failing", "{}: {dec}", c.dev);
            assert!(dec["reason"].is_string(), "{dec}");
            if *want == "bad_tag" {
                assert_eq!(
                    failures(&v, "bad_tag"),
                    sent["packets_sent"].as_u64().unwrap(),
                    "{dec}"
                );
            }
        }
    }
    let recorded: Vec<String> = std::fs::read_dir(&rec)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for bad in [
        "34020000001320000906",
        "34020000001320000907",
        "34020000001320000908",
        "34020000001320000909",
    ] {
        assert!(
            !recorded.iter().any(|f| f.contains(bad)),
            "{bad} recorded: {recorded:?}"
        );
    }
    for (mut c, ..) in cams {
        let _ = Command::new("kill").arg(c.child.id().to_string()).status();
        let _ = c.child.wait();
    }
    assert!(d.stop(), "daemon did not stop cleanly:\n{}", d.log_tail(30));
    assert!(!d.log_text().contains("panicked"));
}
