//! Bad media and bad SDP, played by a raw SIP client on loopback: an answer
//! without a usable media line ends the session (ACK + BYE, JSON 502);
//! garbage, truncated PS and absurd PES lengths on a media port are
//! counted and logged once, never a panic, and another stream received at
//! the same time is unaffected. No root.

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use gateway_tests::{
    sipp::{free_port, Daemon, TempDir, DOMAIN, PLATFORM},
    testmedia::ps_rtp,
};
use gb28181::{digest::Challenge, sip::Head, wire};
use media::rtp::RtpHeader;

const DEV: &str = "34020000001320000601";

struct RawDevice {
    sock: UdpSocket,
    gw: SocketAddr,
}

impl RawDevice {
    fn recv(&self) -> Head {
        let mut buf = vec![0u8; 65536];
        let (n, _) = self.sock.recv_from(&mut buf).unwrap();
        Head::parse(&wire::parse(&buf[..n], 65535).unwrap()).unwrap()
    }

    /// The next request with this method (others are answered 200).
    fn expect(&self, method: &str) -> Head {
        loop {
            let h = self.recv();
            match h.method.as_deref() {
                Some(m) if m == method => return h,
                Some("MESSAGE") => self.answer(&h, 200, "OK", None),
                _ => {}
            }
        }
    }

    fn answer(&self, h: &Head, code: u16, reason: &str, sdp: Option<&str>) {
        let body = sdp.map(|s| ("application/sdp", s.as_bytes()));
        let r = gb28181::sip::response(h, self.gw, code, reason, "dev", &[], body);
        self.sock.send_to(&r, self.gw).unwrap();
    }

    fn register(d: &Daemon) -> RawDevice {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let me = sock.local_addr().unwrap();
        let dev = RawDevice { sock, gw: d.sip };
        let uri = format!("sip:{PLATFORM}@{DOMAIN}");
        let reg = |auth: Option<String>, cseq: u32| {
            let mut r = format!("REGISTER {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};rport;branch=z9hG4bKb{cseq}\r\nFrom: <sip:{DEV}@{DOMAIN}>;tag=t\r\nTo: <sip:{DEV}@{DOMAIN}>\r\nCall-ID: reg\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:{DEV}@{me}>\r\nExpires: 3600\r\n");
            if let Some(a) = auth {
                r.push_str(&format!("Authorization: {a}\r\n"));
            }
            r.push_str("Content-Length: 0\r\n\r\n");
            r
        };
        dev.sock.send_to(reg(None, 1).as_bytes(), d.sip).unwrap();
        let ch = Challenge::parse(dev.recv().www_authenticate.as_deref().unwrap()).unwrap();
        let a = ch.answer(DEV, "pw", "REGISTER", &uri, 1, "c").to_header();
        dev.sock.send_to(reg(Some(a), 2).as_bytes(), d.sip).unwrap();
        assert_eq!(dev.recv().status, Some(200));
        dev
    }
}

fn post(api: SocketAddr, channel: &str) -> std::thread::JoinHandle<(u16, serde_json::Value)> {
    post_t(api, channel, "udp")
}

fn post_t(
    api: SocketAddr,
    channel: &str,
    transport: &str,
) -> std::thread::JoinHandle<(u16, serde_json::Value)> {
    let body = format!(r#"{{"device":"{DEV}","channel":"{channel}","transport":"{transport}"}}"#);
    std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut r = agent
            .post(&format!("http://{api}/api/streams"))
            .header("Content-Type", "application/json")
            .send(body)
            .unwrap();
        let code = r.status().as_u16();
        (code, r.body_mut().read_json().unwrap_or_default())
    })
}

fn good_sdp(y: &str) -> String {
    format!("v=0\r\no={DEV} 0 0 IN IP4 127.0.0.1\r\ns=Play\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=video 40000 RTP/AVP 96\r\na=sendonly\r\na=rtpmap:96 PS/90000\r\ny={y}\r\n")
}

fn y_of(inv: &Head) -> String {
    gb28181::sdp::parse(&inv.body).unwrap().y.unwrap()
}

fn frames(n: usize, ssrc: u32, seq0: u16) -> Vec<Vec<u8>> {
    let aus: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let mut au = vec![0, 0, 0, 1, if i == 0 { 0x65 } else { 0x41 }];
            au.extend((0..3000).map(|j| ((i * 7 + j) % 250 + 1) as u8));
            au
        })
        .collect();
    ps_rtp(&aus, ssrc, seq0)
}

#[test]
fn bad_sdp_and_bad_media_are_counted_and_contained() {
    let dir = TempDir::new("badmedia");
    let (sip_port, api_port) = (free_port(), free_port());
    let cfg = Daemon::config(
        dir.path(),
        sip_port,
        api_port,
        "password = \"pw\"\nquery_info = false\n",
        "[media]\nports = \"35000-35019\"\nno_media_timeout_secs = 0\n",
    );
    let d = Daemon::start(&cfg, sip_port, api_port).unwrap();
    let dev = RawDevice::register(&d);

    // An answer without a usable m= line: ACK, then BYE, and a JSON 502.
    let call = post(d.api, "34020000001310000001");
    let inv = dev.expect("INVITE");
    dev.answer(
        &inv,
        200,
        "OK",
        Some("v=0\r\no=x 0 0 IN IP4 127.0.0.1\r\ns=Play\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"),
    );
    let ack = dev.expect("ACK");
    assert_eq!(ack.call_id, inv.call_id);
    let bye = dev.expect("BYE");
    assert_eq!(bye.call_id, inv.call_id);
    dev.answer(&bye, 200, "OK", None);
    let (code, body) = call.join().unwrap();
    assert_eq!(code, 502, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("unusable SDP answer"),
        "{body}"
    );
    assert_eq!(d.stat("gateway_sdp_errors_total", "reason=no_media"), 1);

    // Two good streams.
    let open = |channel: &str| -> serde_json::Value {
        let call = post(d.api, channel);
        let inv = dev.expect("INVITE");
        dev.answer(&inv, 200, "OK", Some(&good_sdp(&y_of(&inv))));
        let _ = dev.expect("ACK");
        let (code, body) = call.join().unwrap();
        assert_eq!(code, 201, "{body}");
        body
    };
    let bad = open("34020000001310000002");
    let clean = open("34020000001310000003");
    let port = |s: &serde_json::Value| -> u16 {
        s["local"]
            .as_str()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (bad_port, clean_port) = (port(&bad), port(&clean));
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();

    // The damaged stream: garbage datagrams, valid frames, PS with an
    // absurd PES length and a truncated PES, more valid frames.
    let ssrc = bad["ssrc"].as_u64().unwrap() as u32;
    let mut seq = 1u16;
    let mut x: u32 = 12345;
    for _ in 0..100 {
        let g: Vec<u8> = (0..200)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x & 0x3f) as u8 // never an RTP version-2 first byte
            })
            .collect();
        tx.send_to(&g, ("127.0.0.1", bad_port)).unwrap();
    }
    let good1 = frames(5, ssrc, seq);
    seq = seq.wrapping_add(good1.len() as u16);
    for p in &good1 {
        tx.send_to(p, ("127.0.0.1", bad_port)).unwrap();
    }
    let mut evil = Vec::new();
    RtpHeader {
        marker: true,
        pt: 96,
        seq,
        ts: 90_000,
        ssrc,
    }
    .write(&mut evil);
    // Pack header, then a video PES claiming 65 535 bytes but carrying 40,
    // then a PSM whose length runs past the packet.
    evil.extend_from_slice(&[0, 0, 1, 0xba, 0x44, 0, 4, 0, 4, 1, 0, 0x5f, 0x6b, 0xf8]);
    evil.extend_from_slice(&[0, 0, 1, 0xe0, 0xff, 0xff, 0x80, 0x80, 5, 0x21, 0, 1, 0, 1]);
    evil.extend(std::iter::repeat_n(0x11u8, 40));
    evil.extend_from_slice(&[0, 0, 1, 0xbc, 0xff, 0xf0, 0xe0, 0xff, 0xff, 0xf0]);
    tx.send_to(&evil, ("127.0.0.1", bad_port)).unwrap();
    seq = seq.wrapping_add(1);
    let good2 = frames(5, ssrc, seq);
    for p in &good2 {
        tx.send_to(p, ("127.0.0.1", bad_port)).unwrap();
    }

    // The clean stream at the same time: exact.
    let cssrc = clean["ssrc"].as_u64().unwrap() as u32;
    let cl = frames(20, cssrc, 500);
    for p in &cl {
        tx.send_to(p, ("127.0.0.1", clean_port)).unwrap();
    }
    let (bid, cid) = (
        bad["id"].as_str().unwrap().to_string(),
        clean["id"].as_str().unwrap().to_string(),
    );
    let mut d = d;
    d.wait_until(Duration::from_secs(20), "both streams received", |d| {
        let b = d.get(&format!("/api/streams/{bid}")).unwrap_or_default();
        let c = d.get(&format!("/api/streams/{cid}")).unwrap_or_default();
        // Frames come out of the reorder buffer within 100 ms.
        b["media"]["packets"] == (good1.len() + good2.len() + 1)
            && b["media"]["frames"].as_u64() >= Some(9)
            && c["media"]["frames"] == 20
    })
    .unwrap();
    let b = d.get(&format!("/api/streams/{bid}")).unwrap();
    assert_eq!(b["media"]["garbage"], 100, "{b}");
    assert!(
        b["media"]["frames"].as_u64().unwrap() >= 9,
        "valid frames around the damage: {b}"
    );
    assert!(b["media"]["ps_resyncs"].as_u64().unwrap() >= 1, "{b}");
    let c = d.get(&format!("/api/streams/{cid}")).unwrap();
    assert_eq!(c["media"]["frames"], 20, "{c}");
    assert_eq!(c["media"]["garbage"], 0);
    assert_eq!(c["media"]["lost"], 0);
    // A TCP peer announcing a 65 535-byte RTP packet: counted, the
    // connection closed, the daemon fine.
    let call = post_t(d.api, "34020000001310000004", "tcp-passive");
    let inv = dev.expect("INVITE");
    let y = y_of(&inv);
    dev.answer(
        &inv,
        200,
        "OK",
        Some(&good_sdp(&y).replace("RTP/AVP", "TCP/RTP/AVP")),
    );
    let _ = dev.expect("ACK");
    let (code, t) = call.join().unwrap();
    assert_eq!(code, 201, "{t}");
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port(&t))).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    use std::io::{Read, Write};
    conn.write_all(&[0xff, 0xff]).unwrap();
    conn.write_all(&[0x80; 100]).unwrap();
    let mut sink = Vec::new();
    let _ = conn.read_to_end(&mut sink); // returns when the gateway closes
    let tid = t["id"].as_str().unwrap().to_string();
    d.wait_until(Duration::from_secs(10), "huge length prefix counted", |d| {
        d.get(&format!("/api/streams/{tid}"))
            .is_ok_and(|v| v["media"]["garbage"] == 1)
    })
    .unwrap();

    let log = d.log_text();
    assert!(log.contains("media TCP framing broken"), "{log}");
    assert_eq!(
        log.matches("non-RTP data on the media port").count(),
        1,
        "logged once"
    );
    assert!(!log.contains("panicked"));
    assert!(d.get("/api/health").is_ok());
}
