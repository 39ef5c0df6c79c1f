//! Bad media and bad SDP, played by a raw SIP client on loopback: an answer
//! without a usable media line ends the session (ACK + BYE, JSON 502);
//! garbage, truncated PS and absurd PES lengths on a media port are
//! counted and logged once, never a panic, and another stream received at
//! the same time is unaffected. No root.

use std::{net::UdpSocket, time::Duration};

use gateway_tests::{
    sipclient::Client,
    sipp::{free_port, open_stream_async, stream_port, Daemon, TempDir},
    testmedia::{ps_rtp, synthetic_aus},
};
use gb28181::sip::Head;
use media::rtp::RtpHeader;

const DEV: &str = "34020000001320000601";

/// The device, played by a raw client: registered with password "pw".
fn register(d: &Daemon) -> Client {
    let dev = Client::new(d.sip).timeout(Duration::from_secs(10));
    assert_eq!(dev.login(DEV, "pw"), 200);
    dev
}

/// The next request with this method (MESSAGEs meanwhile are answered 200).
fn expect(dev: &Client, method: &str) -> Head {
    loop {
        let h = dev.recv_any().expect("a request from the gateway");
        match h.method.as_deref() {
            Some(m) if m == method => return h,
            Some("MESSAGE") => dev.answer(&h, 200, "OK", "dev", None),
            _ => {}
        }
    }
}

fn post(d: &Daemon, channel: &str) -> std::thread::JoinHandle<(u16, serde_json::Value)> {
    post_t(d, channel, "udp")
}

fn post_t(
    d: &Daemon,
    channel: &str,
    transport: &str,
) -> std::thread::JoinHandle<(u16, serde_json::Value)> {
    open_stream_async(
        d.api,
        format!(r#"{{"device":"{DEV}","channel":"{channel}","transport":"{transport}"}}"#),
    )
}

fn good_sdp(y: &str) -> String {
    format!("v=0\r\no={DEV} 0 0 IN IP4 127.0.0.1\r\ns=Play\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=video 40000 RTP/AVP 96\r\na=sendonly\r\na=rtpmap:96 PS/90000\r\ny={y}\r\n")
}

fn y_of(inv: &Head) -> String {
    gb28181::sdp::parse(&inv.body).unwrap().y.unwrap()
}

fn frames(n: usize, ssrc: u32, seq0: u16) -> Vec<Vec<u8>> {
    ps_rtp(&synthetic_aus(n, 3000), ssrc, seq0)
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
        "[media]\nports = \"32100-32119\"\nno_media_timeout_secs = 0\n",
    );
    let d = Daemon::start(&cfg, sip_port, api_port).unwrap();
    let dev = register(&d);

    // An answer without a usable m= line: ACK, then BYE, and a JSON 502.
    let call = post(&d, "34020000001310000001");
    let inv = expect(&dev, "INVITE");
    dev.answer(
        &inv,
        200,
        "OK",
        "dev",
        Some("v=0\r\no=x 0 0 IN IP4 127.0.0.1\r\ns=Play\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"),
    );
    let ack = expect(&dev, "ACK");
    assert_eq!(ack.call_id, inv.call_id);
    let bye = expect(&dev, "BYE");
    assert_eq!(bye.call_id, inv.call_id);
    dev.answer(&bye, 200, "OK", "dev", None);
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
        let call = post(&d, channel);
        let inv = expect(&dev, "INVITE");
        dev.answer(&inv, 200, "OK", "dev", Some(&good_sdp(&y_of(&inv))));
        let _ = expect(&dev, "ACK");
        let (code, body) = call.join().unwrap();
        assert_eq!(code, 201, "{body}");
        body
    };
    let bad = open("34020000001310000002");
    let clean = open("34020000001310000003");
    let (bad_port, clean_port) = (stream_port(&bad), stream_port(&clean));
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
    let call = post_t(&d, "34020000001310000004", "tcp-passive");
    let inv = expect(&dev, "INVITE");
    let y = y_of(&inv);
    dev.answer(
        &inv,
        200,
        "OK",
        "dev",
        Some(&good_sdp(&y).replace("RTP/AVP", "TCP/RTP/AVP")),
    );
    let _ = expect(&dev, "ACK");
    let (code, t) = call.join().unwrap();
    assert_eq!(code, 201, "{t}");
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", stream_port(&t))).unwrap();
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
