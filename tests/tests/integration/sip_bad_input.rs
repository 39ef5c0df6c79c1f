//! Bad input to the signalling daemon and its API: every case gets the SIP
//! status (or JSON error) it is due, is counted, and leaves good devices
//! registered. A raw UDP/TCP client plays the devices here so it can send
//! what sipp would not. Loopback only, no root.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use gateway_tests::{
    cli::gateway,
    sipclient::Client,
    sipp::{free_port, Daemon, TempDir, DOMAIN, PLATFORM},
};
use gb28181::{
    digest::Challenge,
    manscdp::{self, Charset},
};

const GOOD: &str = "34020000001320000101";
const OTHER: &str = "34020000001320000102";

#[test]
fn bad_sip_input_is_answered_counted_and_harmless() {
    let dir = TempDir::new("bad");
    let (sip_port, api_port) = (free_port(), free_port());
    let cfg = Daemon::config(
        dir.path(),
        sip_port,
        api_port,
        "password = \"pw\"\nmax_message_bytes = 4096\nquery_info = false\n",
        "",
    );
    let d = Daemon::start(&cfg, sip_port, api_port).unwrap();
    let c = Client::new(d.sip);
    let uri = format!("sip:{PLATFORM}@{DOMAIN}");

    // Garbage: nothing to answer to, counted.
    c.sock.send_to(b"\x00\x01\x02hello", d.sip).unwrap();
    // Unknown method: 501 with Allow.
    let foo = String::from_utf8(c.register(GOOD, None, Some(3600), &uri))
        .unwrap()
        .replace("REGISTER sip:", "FOO sip:");
    let r = c.send(foo.as_bytes()).unwrap();
    assert_eq!(r.status, Some(501));
    // Wrong domain: 404.
    let r = c
        .send(&c.register(
            GOOD,
            None,
            Some(3600),
            "sip:34020000002000000001@9999999999",
        ))
        .unwrap();
    assert_eq!(r.status, Some(404), "{r:?}");
    // Missing Expires: 400.
    let r = c.send(&c.register(GOOD, None, None, &uri)).unwrap();
    assert_eq!(r.status, Some(400));
    // CSeq method disagreeing with the request line: 400.
    let bad_cseq = String::from_utf8(c.register(GOOD, None, Some(3600), &uri))
        .unwrap()
        .replace(" REGISTER\r\nContact", " MESSAGE\r\nContact");
    assert_eq!(c.send(bad_cseq.as_bytes()).unwrap().status, Some(400));
    // Content-Length beyond the datagram: 400.
    let short = String::from_utf8(c.register(GOOD, None, Some(3600), &uri))
        .unwrap()
        .replace("Content-Length: 0", "Content-Length: 50");
    assert_eq!(c.send(short.as_bytes()).unwrap().status, Some(400));
    // Larger than max_message_bytes: 513.
    let mut big = String::from_utf8(c.register(GOOD, None, Some(3600), &uri)).unwrap();
    big = big.replace(
        "Max-Forwards: 70\r\n",
        &format!("X-Pad: {}\r\n", "a".repeat(5000)),
    );
    assert_eq!(c.send(big.as_bytes()).unwrap().status, Some(513));
    // Keepalive from a device that never registered: 403.
    let ka = manscdp::keepalive(1, GOOD, Charset::Gb2312);
    let r = c
        .send(&c.message(GOOD, "Application/MANSCDP+xml", &ka))
        .unwrap();
    assert_eq!(r.status, Some(403));
    // Forged nonce: a fresh challenge, stale=true.
    let forged = Challenge {
        realm: DOMAIN.into(),
        nonce: "0".repeat(48),
        qop: true,
        stale: false,
        opaque: None,
    }
    .answer(GOOD, "pw", "REGISTER", &uri, 1, "x");
    let r = c
        .send(&c.register(GOOD, Some(&forged.to_header()), Some(3600), &uri))
        .unwrap();
    assert_eq!(r.status, Some(401));
    assert!(
        Challenge::parse(r.www_authenticate.as_deref().unwrap())
            .unwrap()
            .stale
    );
    // Malformed Authorization: 400.
    let r = c
        .send(&c.register(GOOD, Some("Digest username=\"x"), Some(3600), &uri))
        .unwrap();
    assert_eq!(r.status, Some(400));

    // A good device registers.
    assert_eq!(c.login(GOOD, "pw"), 200);
    assert_eq!(d.device(GOOD).unwrap()["online"], true);

    // Replaying its authenticated REGISTER with the same nc: stale.
    let r1 = c.send(&c.register(GOOD, None, Some(3600), &uri)).unwrap();
    let ch = Challenge::parse(r1.www_authenticate.as_deref().unwrap()).unwrap();
    let creds = ch.answer(GOOD, "pw", "REGISTER", &uri, 1, "n1").to_header();
    assert_eq!(
        c.send(&c.register(GOOD, Some(&creds), Some(3600), &uri))
            .unwrap()
            .status,
        Some(200)
    );
    let replay = c.register(GOOD, Some(&creds), Some(3600), &uri);
    assert_eq!(c.send(&replay).unwrap().status, Some(401));

    // A flood of bad credentials for another device, with a valid nonce.
    let flood = Client::new(d.sip);
    let r = flood
        .send(&flood.register(OTHER, None, Some(3600), &uri))
        .unwrap();
    let ch = Challenge::parse(r.www_authenticate.as_deref().unwrap()).unwrap();
    for i in 0..300u32 {
        let creds = ch.answer(OTHER, "guess", "REGISTER", &uri, i + 1, "f");
        let req = flood.register(OTHER, Some(&creds.to_header()), Some(3600), &uri);
        assert_eq!(flood.send(&req).unwrap().status, Some(403), "attempt {i}");
    }
    assert_eq!(
        d.stat("gateway_sip_auth_failures_total", "reason=password"),
        300
    );
    // The good device is untouched, the other can still register.
    assert_eq!(d.device(GOOD).unwrap()["online"], true);
    assert_eq!(flood.login(OTHER, "pw"), 200);

    // MANSCDP from the registered device: good, retransmitted, broken.
    let ka = c.message(
        GOOD,
        "Application/MANSCDP+xml",
        &manscdp::keepalive(7, GOOD, Charset::Gb2312),
    );
    assert_eq!(c.send(&ka).unwrap().status, Some(200));
    assert_eq!(
        c.send(&ka).unwrap().status,
        Some(200),
        "retransmission answered again"
    );
    assert_eq!(
        d.device(GOOD).unwrap()["keepalives"],
        1,
        "retransmission counted once"
    );
    assert!(d.stat("gateway_sip_retransmissions_total", "direction=absorbed") >= 1);
    let broken = c.message(
        GOOD,
        "Application/MANSCDP+xml",
        b"<?xml version=\"1.0\"?><Notify><CmdType>Keepalive</CmdType><SN>1</Notify>",
    );
    assert_eq!(c.send(&broken).unwrap().status, Some(400));
    let unknown = c.message(
        GOOD,
        "Application/MANSCDP+xml",
        b"<?xml version=\"1.0\"?><Notify><CmdType>Bogus</CmdType><SN>1</SN><DeviceID>x</DeviceID></Notify>",
    );
    assert_eq!(c.send(&unknown).unwrap().status, Some(400));
    let text = c.message(GOOD, "text/plain", b"hello");
    assert_eq!(c.send(&text).unwrap().status, Some(415));
    assert_eq!(d.stat("gateway_manscdp_errors_total", "reason=xml"), 1);
    assert_eq!(
        d.stat("gateway_manscdp_errors_total", "reason=unknown_cmd"),
        1
    );

    // TCP: a huge Content-Length is answered 513 and the connection closed;
    // garbage closes it too; the daemon keeps serving.
    let mut t = TcpStream::connect(d.sip).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let huge = String::from_utf8(c.register(GOOD, None, Some(3600), &uri))
        .unwrap()
        .replace("SIP/2.0/UDP", "SIP/2.0/TCP")
        .replace("Content-Length: 0", "Content-Length: 999999");
    t.write_all(huge.as_bytes()).unwrap();
    let mut got = Vec::new();
    let _ = t.read_to_end(&mut got);
    assert!(
        String::from_utf8_lossy(&got).starts_with("SIP/2.0 513"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let mut t = TcpStream::connect(d.sip).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    t.write_all(&vec![b'x'; 10_000]).unwrap();
    let mut got = Vec::new();
    let _ = t.read_to_end(&mut got);

    // Counted, alive, no panic, good registrations intact.
    assert_eq!(
        d.stat("gateway_sip_parse_errors_total", "reason=incomplete"),
        1
    );
    assert_eq!(
        d.stat("gateway_sip_parse_errors_total", "reason=unknown_method"),
        1
    );
    assert_eq!(
        d.stat("gateway_sip_parse_errors_total", "reason=too_large"),
        3
    );
    assert_eq!(
        d.stat("gateway_sip_registrations_total", "result=wrong_domain"),
        1
    );
    assert_eq!(
        d.stat("gateway_sip_dropped_total", "reason=unregistered"),
        1
    );
    assert!(d.get("/api/health").is_ok());
    let list = d.get("/api/devices").unwrap();
    assert_eq!(list["online"], 2);
    assert!(!d.log_text().contains("panicked"));
}

#[test]
fn api_errors_are_json_and_token_protected() {
    let dir = TempDir::new("api");
    let (sip_port, api_port) = (free_port(), free_port());
    let cfg = Daemon::config(
        dir.path(),
        sip_port,
        api_port,
        "password = \"pw\"\n",
        "token = \"s3cret\"\n",
    );
    // The token goes into [api]: rewrite the generated config.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("token = \"s3cret\"\n", "")
        .replace("[api]\n", "[api]\ntoken = \"s3cret\"\n");
    std::fs::write(&cfg, text).unwrap();
    let mut d = Daemon::start(&cfg, sip_port, api_port).unwrap();
    let (code, body) = d.request("GET", "/api/devices", None).unwrap();
    assert_eq!(code, 401);
    assert!(body["error"].is_string());
    let (code, _) = d.request("GET", "/api/devices", Some("wrong")).unwrap();
    assert_eq!(code, 401);
    let (code, body) = d.request("GET", "/api/devices", Some("s3cret")).unwrap();
    assert_eq!((code, body["count"].as_u64()), (200, Some(0)));
    let (code, body) = d
        .request("GET", "/api/devices/34020000001320000999", Some("s3cret"))
        .unwrap();
    assert_eq!((code, body["status"].as_u64()), (404, Some(404)));
    let (code, body) = d
        .request("GET", "/api/devices/bad%20id", Some("s3cret"))
        .unwrap();
    assert_eq!(code, 400, "{body}");
    let (code, body) = d.request("GET", "/api/nothing", Some("s3cret")).unwrap();
    assert_eq!(code, 404);
    assert!(body["error"].is_string());
    let (code, body) = d
        .request(
            "POST",
            "/api/devices/34020000001320000999/catalog",
            Some("s3cret"),
        )
        .unwrap();
    assert_eq!(code, 404, "{body}");
    // The CLI passes the token and reports the API's error.
    let out = gateway(&["devices", "--config", cfg.to_str().unwrap(), "--json"]);
    assert!(out.ok(), "{}", out.stderr);
    let out = gateway(&["devices", "--api", &d.api.to_string(), "--token", "nope"]);
    assert!(!out.ok());
    assert!(out.stderr.contains("bearer token"));
    assert!(d.stop());
}

/// IPv6: a device registers over UDP to [::1] and is answered there.
#[test]
fn registration_over_ipv6() {
    if UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("SKIPPED registration_over_ipv6: no IPv6 loopback on this machine");
        return;
    }
    let dir = TempDir::new("v6");
    let (sip_port, api_port) = (free_port(), free_port());
    let cfg = Daemon::config(
        dir.path(),
        sip_port,
        api_port,
        "password = \"pw\"\nquery_info = false\n",
        "",
    );
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!("listen = [\"127.0.0.1:{sip_port}\"]"),
        &format!("listen = [\"127.0.0.1:{sip_port}\", \"[::1]:{sip_port}\"]"),
    );
    std::fs::write(&cfg, text).unwrap();
    let d = Daemon::start(&cfg, sip_port, api_port).unwrap();
    let gw6: SocketAddr = format!("[::1]:{sip_port}").parse().unwrap();
    let c = Client::bound("::1".parse().unwrap(), gw6);
    assert_eq!(c.login(GOOD, "pw"), 200);
    let v = d.device(GOOD).unwrap();
    assert_eq!(v["online"], true);
    assert_eq!(v["addr"], c.local().to_string());
    assert!(v["local"].as_str().unwrap().starts_with("[::1]:"));
}
