//! Live-view sessions (INVITE dialogs) against sipp devices: the stream API
//! opens them, the device answers (or hangs up, or refuses), BYE ends them
//! from either side. A raw client checks the open timeout and CANCEL.
//! Loopback only, no root.

use std::{
    net::{SocketAddr, UdpSocket},
    process::Command,
    time::Duration,
};

use gateway_tests::sipp::{
    free_port, registering_device, write_device_scenario, Daemon, Invite, Sipp, TempDir, DOMAIN,
    PLATFORM,
};
use gb28181::{digest::Challenge, sip::Head, wire};

fn sipp_available() -> bool {
    Command::new("sipp").arg("-v").output().is_ok()
}

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
        sipp_available(),
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
    let port = s1["local"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse::<u16>()
        .unwrap();
    assert!((31000..=31009).contains(&port) && port % 2 == 0, "{port}");

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
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let me = sock.local_addr().unwrap();
    let uri = format!("sip:{PLATFORM}@{DOMAIN}");
    let reg = |auth: Option<String>, cseq: u32| {
        let mut r = format!("REGISTER {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};rport;branch=z9hG4bKr{cseq}\r\nFrom: <sip:{dev}@{DOMAIN}>;tag=t\r\nTo: <sip:{dev}@{DOMAIN}>\r\nCall-ID: reg\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:{dev}@{me}>\r\nExpires: 3600\r\n");
        if let Some(a) = auth {
            r.push_str(&format!("Authorization: {a}\r\n"));
        }
        r.push_str("Content-Length: 0\r\n\r\n");
        r
    };
    let recv = || -> Head {
        let mut buf = vec![0u8; 65536];
        let (n, _) = sock.recv_from(&mut buf).unwrap();
        Head::parse(&wire::parse(&buf[..n], 65535).unwrap()).unwrap()
    };
    sock.send_to(reg(None, 1).as_bytes(), d.sip).unwrap();
    let ch = Challenge::parse(recv().www_authenticate.as_deref().unwrap()).unwrap();
    let a = ch.answer(dev, "pw", "REGISTER", &uri, 1, "c").to_header();
    sock.send_to(reg(Some(a), 2).as_bytes(), d.sip).unwrap();
    assert_eq!(recv().status, Some(200));
    // The catalog query: answer 200, no catalog (it will time out, fine).
    let q = recv();
    assert_eq!(q.method.as_deref(), Some("MESSAGE"));
    let src: SocketAddr = d.sip;
    sock.send_to(
        &gb28181::sip::response(&q, src, 200, "OK", "x", &[], None),
        d.sip,
    )
    .unwrap();

    let api = d.api;
    let caller = std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut r = agent
            .post(&format!("http://{api}/api/streams"))
            .header("Content-Type", "application/json")
            .send(format!(r#"{{"device":"{dev}"}}"#))
            .unwrap();
        let code = r.status().as_u16();
        (
            code,
            r.body_mut()
                .read_json::<serde_json::Value>()
                .unwrap_or_default(),
        )
    });
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
        let r = gb28181::sip::response(&inv, src, code, reason, "dev", &[], None);
        sock.send_to(&r, d.sip).unwrap();
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
    sock.send_to(
        &gb28181::sip::response(&cancel, src, 200, "OK", "dev", &[], None),
        d.sip,
    )
    .unwrap();
    sock.send_to(
        &gb28181::sip::response(&inv, src, 487, "Request Terminated", "dev", &[], None),
        d.sip,
    )
    .unwrap();
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
