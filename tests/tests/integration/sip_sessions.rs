//! Live-view sessions (INVITE dialogs) against sipp devices: the stream API
//! opens them, the device answers (or hangs up, or refuses), BYE ends them
//! from either side. A raw client checks the open timeout and CANCEL.
//! Loopback only, no root.

use std::time::Duration;

use gateway_tests::{
    have_tools,
    sipclient::Client,
    sipp::{
        free_port, open_stream_async, registering_device, stream_port, write_device_scenario,
        Daemon, Invite, Sipp, TempDir,
    },
};
use gb28181::sip::Head;

fn post_stream(d: &Daemon, body: &str) -> (u16, serde_json::Value) {
    d.post_json("/api/streams", body).unwrap()
}

/// One sipp device with its own ooc behaviour, running in the background.
fn device(dir: &TempDir, d: &Daemon, id: &str, invite: Invite) -> (Sipp, std::process::Child) {
    let ooc = dir.path().join(format!("{id}.xml"));
    write_device_scenario(&ooc, 1, false, invite);
    let s = registering_device(dir.path(), d.sip, free_port(), id, &ooc, 20_000)
        .args(&["-timeout", "60s"]);
    let c = s.spawn().unwrap();
    (s, c)
}

const ACCEPT: &str = "34020000001320000201";
const HANGUP: &str = "34020000001320000202";
const BUSY: &str = "34020000001320000203";
const CH1: &str = "34020000001310000001";
const CH2: &str = "34020000001310000002";

#[test]
fn sipp_streams_open_close_refuse_and_device_bye() {
    assert!(
        have_tools(&["sipp"]),
        "sipp is not installed (Debian package sip-tester)"
    );
    let dir = TempDir::new("sessions");
    let (sip_port, api_port) = (free_port(), free_port());
    let cfg = Daemon::config(
        dir.path(),
        sip_port,
        api_port,
        "password = \"pw\"\nquery_info = false\n",
        "[media]\nports = \"31000-31009\"\nopen_timeout_secs = 5\n",
    );
    let mut d = Daemon::start(&cfg, sip_port, api_port).unwrap();
    let devs = [
        device(&dir, &d, ACCEPT, Invite::Accept),
        device(&dir, &d, HANGUP, Invite::AcceptThenBye(1000)),
        device(&dir, &d, BUSY, Invite::Reject),
    ];
    d.wait_until(
        Duration::from_secs(30),
        "devices online with catalogs",
        |d| {
            [ACCEPT, HANGUP, BUSY].iter().all(|id| {
                d.device(id)
                    .is_ok_and(|v| v["online"] == true && v["catalog"]["state"] == "complete")
            })
        },
    )
    .unwrap();

    // Open: established, the device's answer recorded.
    let (code, s1) = post_stream(
        &d,
        &format!(r#"{{"device":"{ACCEPT}","channel":"{CH1}","transport":"udp"}}"#),
    );
    assert_eq!(code, 201, "{s1}");
    assert_eq!(s1["state"], "established");
    let id1 = s1["id"].as_str().unwrap().to_string();
    assert_eq!(id1.len(), 10);
    assert!(id1.starts_with("020000"), "y= from the domain: {id1}");
    assert_eq!(s1["ssrc"].as_u64(), id1.parse::<u64>().ok());
    assert_eq!(s1["answer_ssrc"], s1["ssrc"]);
    assert_eq!(s1["ssrc_mismatch"], false);
    assert_eq!(s1["remote"], "127.0.0.1:40000");
    assert_eq!(s1["format"], "v/2/4/25/1/4000a///");
    let port = stream_port(&s1);
    assert!(
        (31000..=31009).contains(&port) && port.is_multiple_of(2),
        "{port}"
    );

    // Same channel again: 409. Bad requests: JSON errors.
    let (code, e) = post_stream(&d, &format!(r#"{{"device":"{ACCEPT}","channel":"{CH1}"}}"#));
    assert_eq!(code, 409, "{e}");
    let (code, _) = post_stream(
        &d,
        &format!(r#"{{"device":"{ACCEPT}","channel":"34020000001310000099"}}"#),
    );
    assert_eq!(code, 404);
    let (code, e) = post_stream(
        &d,
        &format!(r#"{{"device":"{ACCEPT}","transport":"carrier-pigeon"}}"#),
    );
    assert_eq!(code, 400, "{e}");
    let (code, _) = post_stream(&d, r#"{"device":"34020000001320009999"}"#);
    assert_eq!(code, 404);
    let (code, e) = post_stream(&d, "{not json");
    assert_eq!(code, 400);
    assert!(e["error"].is_string());

    // A second channel over TCP (passive: the gateway listens).
    let (code, s2) = post_stream(
        &d,
        &format!(r#"{{"device":"{ACCEPT}","channel":"{CH2}","transport":"tcp-passive"}}"#),
    );
    assert_eq!(code, 201, "{s2}");
    assert_eq!(s2["transport"], "tcp-passive");
    assert_ne!(s2["local"], s1["local"]);
    let list = d.get("/api/streams").unwrap();
    assert_eq!(list["active"], 2);

    // DELETE sends BYE (the sipp device waits for it and answers 200).
    let (code, closed) = d
        .request("DELETE", &format!("/api/streams/{id1}"), None)
        .unwrap();
    assert_eq!(code, 200, "{closed}");
    assert_eq!(closed["state"], "closed");
    assert_eq!(closed["reason"], "closed through the API");
    let (code, _) = d
        .request("DELETE", &format!("/api/streams/{id1}"), None)
        .unwrap();
    assert_eq!(code, 404);
    let id2 = s2["id"].as_str().unwrap().to_string();
    let (code, _) = d
        .request("DELETE", &format!("/api/streams/{id2}"), None)
        .unwrap();
    assert_eq!(code, 200);

    // The device hangs up by itself.
    let (code, s3) = post_stream(&d, &format!(r#"{{"device":"{HANGUP}","channel":"{CH1}"}}"#));
    assert_eq!(code, 201, "{s3}");
    let id3 = s3["id"].as_str().unwrap().to_string();
    d.wait_until(Duration::from_secs(20), "BYE from the device", |d| {
        d.get(&format!("/api/streams/{id3}"))
            .is_ok_and(|v| v["state"] == "closed")
    })
    .unwrap();
    let v = d.get(&format!("/api/streams/{id3}")).unwrap();
    assert_eq!(v["reason"], "BYE from the device");

    // Busy: 486 becomes a JSON 502 naming it.
    let (code, e) = post_stream(&d, &format!(r#"{{"device":"{BUSY}","channel":"{CH1}"}}"#));
    assert_eq!(code, 502, "{e}");
    assert!(e["error"].as_str().unwrap().contains("486"), "{e}");

    let all = d.get("/api/streams?all=true").unwrap();
    assert_eq!(all["active"], 0);
    assert_eq!(all["streams"].as_array().unwrap().len(), 4);
    assert_eq!(d.stat("gateway_sip_sessions_total", "event=established"), 3);
    assert_eq!(d.stat("gateway_sip_sessions_total", "event=failed"), 1);

    for (s, c) in devs {
        let r = s.result(c.wait_with_output().unwrap());
        assert!(r.ok(), "sipp device failed: {}\n{}", r.errors, r.stdout);
    }
    assert!(!d.log_text().contains("panicked"));
}

/// A device that rings but never answers: after the open timeout the
/// gateway CANCELs, the device answers 487, the gateway ACKs it, and the
/// API call gets a JSON error. Played by a raw UDP client.
#[test]
fn open_timeout_cancels_the_invite() {
    let dir = TempDir::new("cancel");
    let (sip_port, api_port) = (free_port(), free_port());
    let cfg = Daemon::config(
        dir.path(),
        sip_port,
        api_port,
        "password = \"pw\"\nquery_info = false\n",
        "[media]\nopen_timeout_secs = 2\n",
    );
    let d = Daemon::start(&cfg, sip_port, api_port).unwrap();
    let dev = "34020000001320000301";
    let c = Client::new(d.sip).timeout(Duration::from_secs(10));
    assert_eq!(c.login(dev, "pw"), 200);
    let recv = || -> Head { c.recv_any().expect("a message from the gateway") };
    // The catalog query: answer 200, no catalog (it will time out, fine).
    let q = recv();
    assert_eq!(q.method.as_deref(), Some("MESSAGE"));
    c.answer(&q, 200, "OK", "x", None);

    let caller = open_stream_async(d.api, format!(r#"{{"device":"{dev}"}}"#));
    // INVITE: ring (100, 180) and never answer.
    let inv = loop {
        let h = recv();
        if h.method.as_deref() == Some("INVITE") {
            break h;
        }
    };
    assert!(inv
        .subject
        .as_deref()
        .unwrap()
        .starts_with(&format!("{dev}:0200000")));
    let sdp = gb28181::sdp::parse(&inv.body).unwrap();
    assert!(!sdp.tcp());
    assert_eq!(sdp.payloads[0].1, "PS");
    for (code, reason) in [(100, "Trying"), (180, "Ringing")] {
        c.answer(&inv, code, reason, "dev", None);
    }
    // CANCEL after the open timeout (retransmitted INVITEs are skipped).
    let cancel = loop {
        let h = recv();
        if h.method.as_deref() == Some("CANCEL") {
            break h;
        }
    };
    assert_eq!(cancel.via.branch, inv.via.branch);
    assert_eq!(cancel.cseq, inv.cseq);
    c.answer(&cancel, 200, "OK", "dev", None);
    c.answer(&inv, 487, "Request Terminated", "dev", None);
    let ack = loop {
        let h = recv();
        if h.method.as_deref() == Some("ACK") {
            break h;
        }
    };
    assert_eq!(ack.via.branch, inv.via.branch);
    assert_eq!(ack.to.tag.as_deref(), Some("dev"));
    let (code, body) = caller.join().unwrap();
    assert_eq!(code, 502, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("open timeout"),
        "{body}"
    );
    let all = d.get("/api/streams?all=true").unwrap();
    assert_eq!(all["streams"][0]["state"], "failed");
}
