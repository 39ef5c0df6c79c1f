//! Cascade: a superior's live-view requests to the edge gateway, played by
//! sipp (the superior's INVITE, DeviceControl and BYE over UDP signalling,
//! media over UDP and RFC 4571 TCP), with a real second gateway as the
//! registrar the edge is registered with and gb-sim as the camera. What is
//! checked is what the edge sends: its SDP answer (sendonly, the
//! superior's y=, the opposite TCP setup), the media (under the SSRC of
//! that y=, starting with a key-frame pack), the control passed to the
//! camera, the refusals, and that the relay-only device session ends with
//! the superior's BYE.

use std::{
    io::Read,
    net::{SocketAddr, TcpListener, UdpSocket},
    path::Path,
    time::{Duration, Instant},
};

use gateway_tests::{
    have_tools, sim,
    sipp::{free_port, scenarios, Daemon, Sipp, TempDir},
    testmedia,
};

const CENTRAL: &str = "11000000002000000001";
const CAMERA: &str = "34020000001320000001";
const Y: &str = "0110000001";

struct Setup {
    _central: Daemon,
    edge: Daemon,
    _cam: sim::KillOnDrop,
    cam_status: std::path::PathBuf,
    channel: String,
}

/// Central, edge (media on `ports`, disjoint per test: the tests of this
/// binary may run side by side) and the camera, all registered.
fn setup(dir: &Path, ports: &str) -> Setup {
    let (c_sip, c_api) = (free_port(), free_port());
    let cdir = dir.join("central");
    std::fs::create_dir_all(&cdir).unwrap();
    let ccfg = cdir.join("central.toml");
    std::fs::write(
        &ccfg,
        format!(
            "[sip]\nid = \"{CENTRAL}\"\nlisten = [\"127.0.0.1:{c_sip}\"]\npassword = \"central-pw\"\n\
             [api]\nlisten = \"127.0.0.1:{c_api}\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
             [store]\npath = \"{}\"\n",
            cdir.join("registry.redb").display()
        ),
    )
    .unwrap();
    let central = Daemon::start(&ccfg, c_sip, c_api).expect("central gateway");
    let (e_sip, e_api) = (free_port(), free_port());
    let edir = dir.join("edge");
    std::fs::create_dir_all(&edir).unwrap();
    let ecfg = Daemon::config(
        &edir,
        e_sip,
        e_api,
        "password = \"pw\"\n",
        &format!(
            "[media]\nports = \"{ports}\"\n\
             [[cascade]]\nid = \"{CENTRAL}\"\naddress = \"127.0.0.1:{c_sip}\"\n\
             password = \"central-pw\"\nname = \"central\"\nkeepalive_interval_secs = 1\n"
        ),
    );
    let mut edge = Daemon::start(&ecfg, e_sip, e_api).expect("edge gateway");
    let media = testmedia::camera_file(dir, 100, false);
    let media = media.display().to_string();
    let (cam, cam_status) = sim::spawn(
        None,
        &format!("127.0.0.1:{e_sip}"),
        "127.0.0.1",
        CAMERA,
        dir,
        &["--channels", "2", "--media", &media, "--loop"],
    );
    let channel = sim::channel(CAMERA, 1);
    edge.wait_until(
        Duration::from_secs(30),
        "registered upward, camera synced",
        |d| {
            d.get("/api/platforms")
                .is_ok_and(|p| p["platforms"][0]["state"] == "registered")
                && d.device(CAMERA)
                    .is_ok_and(|c| c["online"] == true && c["channels"] == 2)
        },
    )
    .unwrap();
    Setup {
        _central: central,
        edge,
        _cam: cam,
        cam_status,
        channel,
    }
}

/// One RTP packet's SSRC, and whether its payload holds a PS system header
/// (a key-frame pack).
fn rtp_ssrc_key(p: &[u8]) -> (u32, bool) {
    let ssrc = u32::from_be_bytes([p[8], p[9], p[10], p[11]]);
    (ssrc, p[12..].windows(4).any(|w| w == [0, 0, 1, 0xBB]))
}

/// sipp playing the superior (tests/sipp/superior_invite.xml); sipp does
/// not expand keys inside regexps, so those are written into a copy.
fn sipp_superior(dir: &Path, edge: SocketAddr, keys: &[(&str, &str)]) -> Sipp {
    let key = |k: &str| keys.iter().find(|(n, _)| *n == k).map_or("", |(_, v)| *v);
    let xml = std::fs::read_to_string(scenarios().join("superior_invite.xml"))
        .unwrap()
        .replace("@Y@", key("y"))
        .replace("@PROTO@", &key("proto").replace('/', "\\/"))
        .replace("@EXPECT_SETUP@", key("expect_setup"));
    let sf = dir.join(format!("superior_invite_{}.xml", key("mport")));
    std::fs::write(&sf, xml).unwrap();
    let mut s = Sipp::new(dir, edge, &sf, free_port(), "u1").args(&["-m", "1", "-timeout", "30"]);
    for (k, v) in keys {
        s = s.args(&["-key", k, v]);
    }
    s
}

/// After the superior's BYE, the edge's relay-only session for `channel`
/// is closed ("no viewer left") and the camera got the PTZ command.
fn assert_after_bye(s: &mut Setup, expect_controls: usize) {
    let ch = s.channel.clone();
    s.edge
        .wait_until(Duration::from_secs(10), "relay-only session closed", |d| {
            d.get("/api/streams?all=true").is_ok_and(|v| {
                v["streams"].as_array().into_iter().flatten().any(|x| {
                    x["channel"] == ch.as_str()
                        && x["state"] == "closed"
                        && x["reason"] == "no viewer left"
                }) && v["active"] == 0
            })
        })
        .unwrap();
    // gb-sim writes its report every few hundred milliseconds.
    let status = s.cam_status.clone();
    let controls = move || sim::report(&status)["devices"][0]["controls"].clone();
    let c = controls.clone();
    s.edge
        .wait_until(
            Duration::from_secs(10),
            "the camera reports the control",
            |_| c().as_array().is_some_and(|a| a.len() >= expect_controls),
        )
        .unwrap();
    let controls = controls();
    let list: Vec<&str> = controls
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.as_str())
        .collect();
    assert_eq!(list.len(), expect_controls, "{controls}");
    assert!(list
        .iter()
        .all(|c| *c == format!("DeviceControl {ch} PTZCmd=A50F01021F0000D6")));
}

#[test]
fn cascade_superior_plays_over_udp_and_tcp_controls_and_hangs_up() {
    if !have_tools(&["sipp", "ffmpeg"]) {
        return;
    }
    let dir = TempDir::new("cascade-invite");
    let mut s = setup(dir.path(), "31200-31249");
    let edge_sip = s.edge.sip;

    // UDP: the media arrives at the port the superior offered, under the
    // SSRC of its y=, beginning with a key-frame pack.
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    sink.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mport = sink.local_addr().unwrap().port().to_string();
    let sp = sipp_superior(
        dir.path(),
        edge_sip,
        &[
            ("channel", &s.channel),
            ("superior", CENTRAL),
            ("y", Y),
            ("mport", &mport),
            ("proto", "RTP/AVP"),
            ("setup", "a=x-gateway-test:udp"),
            ("expect_setup", "a=sendonly"),
        ],
    );
    let sipp = sp.spawn().unwrap();
    let (mut packets, mut first_key, mut ssrcs) = (0u64, None, std::collections::BTreeSet::new());
    let mut buf = [0u8; 2048];
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(20) && packets < 200 {
        if let Ok(n) = sink.recv(&mut buf) {
            if n > 12 {
                let (ssrc, key) = rtp_ssrc_key(&buf[..n]);
                ssrcs.insert(ssrc);
                first_key.get_or_insert(key);
                packets += 1;
            }
        }
    }
    let r = sp.result(sipp.wait_with_output().unwrap());
    assert!(r.ok(), "sipp superior (UDP) failed: {}", r.errors);
    assert!(packets > 0, "no relayed media arrived");
    assert_eq!(
        first_key,
        Some(true),
        "the relay did not start at a key frame"
    );
    assert_eq!(ssrcs.into_iter().collect::<Vec<_>>(), vec![110000001]);
    assert_after_bye(&mut s, 1);

    // TCP, the superior listening (setup:passive): the edge connects and
    // sends RFC 4571 frames; its answer says setup:active.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mport = l.local_addr().unwrap().port().to_string();
    let reader = std::thread::spawn(move || {
        l.set_nonblocking(false).unwrap();
        let (mut c, _) = l.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = Vec::new();
        let mut b = [0u8; 65536];
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(15) {
            match c.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&b[..n]),
            }
            if got.len() > 200_000 {
                break;
            }
        }
        got
    });
    let sp = sipp_superior(
        dir.path(),
        edge_sip,
        &[
            ("channel", &s.channel),
            ("superior", CENTRAL),
            ("y", Y),
            ("mport", &mport),
            ("proto", "TCP/RTP/AVP"),
            ("setup", "a=setup:passive"),
            ("expect_setup", "a=setup:active"),
        ],
    );
    let sipp = sp.spawn().unwrap();
    let r = sp.result(sipp.wait_with_output().unwrap());
    assert!(r.ok(), "sipp superior (TCP) failed: {}", r.errors);
    let stream = reader.join().unwrap();
    // RFC 4571: 2-byte length, then an RTP packet; all under our SSRC.
    let (mut off, mut frames, mut first_key) = (0usize, 0u64, None);
    while off + 2 <= stream.len() {
        let len = u16::from_be_bytes([stream[off], stream[off + 1]]) as usize;
        if off + 2 + len > stream.len() {
            break;
        }
        let p = &stream[off + 2..off + 2 + len];
        assert!(len > 12, "short framed packet");
        let (ssrc, key) = rtp_ssrc_key(p);
        assert_eq!(ssrc, 110000001);
        first_key.get_or_insert(key);
        frames += 1;
        off += 2 + len;
    }
    assert!(frames > 0, "no RFC 4571 frames over the TCP leg");
    assert_eq!(first_key, Some(true));
    assert_after_bye(&mut s, 2);

    // The superior's signalling over TCP (media over UDP): answered and
    // ended on the same connection.
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    sink.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mport = sink.local_addr().unwrap().port().to_string();
    let mut sp = sipp_superior(
        dir.path(),
        edge_sip,
        &[
            ("channel", &s.channel),
            ("superior", CENTRAL),
            ("y", Y),
            ("mport", &mport),
            ("proto", "RTP/AVP"),
            ("setup", "a=x-gateway-test:tcp-signalling"),
            ("expect_setup", "a=sendonly"),
        ],
    );
    if let Some(t) = sp.args.iter().position(|a| a == "-t") {
        sp.args[t + 1] = "t1".into();
    }
    let sipp = sp.spawn().unwrap();
    let mut got = 0u64;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(20) && got < 50 {
        if let Ok(n) = sink.recv(&mut buf) {
            if n > 12 && rtp_ssrc_key(&buf[..n]).0 == 110000001 {
                got += 1;
            }
        }
    }
    let r = sp.result(sipp.wait_with_output().unwrap());
    assert!(r.ok(), "sipp superior (SIP over TCP) failed: {}", r.errors);
    assert!(got > 0, "no media for the TCP-signalled relay");
    assert_after_bye(&mut s, 3);
    let relay = s.edge.stat(
        "gateway_cascade_requests_total",
        "kind=invite,platform=central",
    );
    assert_eq!(relay, 3);
}

/// A superior INVITE that must be refused with `code`.
fn refused(dir: &Path, edge: SocketAddr, name: &str, channel: &str, sdp: &str, code: u16) {
    let sf = dir.join(format!("{name}.xml"));
    std::fs::write(
        &sf,
        format!(
            r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="{name}">
  <send retrans="500"><![CDATA[
      INVITE sip:{channel}@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:{CENTRAL}@1100000000>;tag=[pid]r[call_number]
      To: <sip:{channel}@3402000000>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:{CENTRAL}@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Type: APPLICATION/SDP
      Content-Length: [len]

{sdp}
  ]]></send>
  <recv response="100" optional="true"/>
  <recv response="{code}"/>
  <send><![CDATA[
      ACK sip:{channel}@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:{CENTRAL}@1100000000>;tag=[pid]r[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

  ]]></send>
</scenario>
"#
        ),
    )
    .unwrap();
    let r = Sipp::new(dir, edge, &sf, free_port(), "u1")
        .args(&["-m", "1", "-timeout", "20"])
        .run()
        .unwrap();
    assert!(r.ok(), "{name}: expected {code}: {}", r.errors);
}

#[test]
fn cascade_superior_bad_requests_are_refused_without_harm() {
    if !have_tools(&["sipp", "ffmpeg"]) {
        return;
    }
    let dir = TempDir::new("cascade-refused");
    let mut s = setup(dir.path(), "31250-31299");
    let edge = s.edge.sip;
    let good = "      v=0\n      o=x 0 0 IN IP4 127.0.0.1\n      s=Play\n      c=IN IP4 127.0.0.1\n      t=0 0\n      m=video 9 RTP/AVP 96\n      a=rtpmap:96 PS/90000\n      y=0110000009";
    // A channel that is not shared (or does not exist).
    refused(
        dir.path(),
        edge,
        "unknown",
        "34020000001319999999",
        good,
        404,
    );
    // An offer without a media address.
    let no_media =
        "      v=0\n      o=x 0 0 IN IP4 127.0.0.1\n      s=Play\n      t=0 0\n      y=0110000009";
    refused(dir.path(), edge, "nomedia", &s.channel, no_media, 488);
    // A TCP setup role the gateway cannot take.
    let bad_setup = format!("{good}\n      a=setup:holdconn").replace("RTP/AVP", "TCP/RTP/AVP");
    refused(dir.path(), edge, "badsetup", &s.channel, &bad_setup, 488);
    // Playback (the past) is not relayed: refused, not answered with live video.
    let playback = good.replace("s=Play", "s=Playback");
    refused(dir.path(), edge, "playback", &s.channel, &playback, 488);
    // Garbage instead of SDP.
    refused(
        dir.path(),
        edge,
        "garbage",
        &s.channel,
        "      \u{1}\u{2}not sdp at all",
        488,
    );
    // Nothing of it touched the camera or left a session behind; the
    // registration upward is unharmed and the refusals are counted.
    assert_eq!(s.edge.get("/api/streams").unwrap()["active"], 0);
    assert_eq!(
        s.edge.get("/api/platforms").unwrap()["platforms"][0]["state"],
        "registered"
    );
    assert_eq!(
        s.edge.stat(
            "gateway_cascade_requests_total",
            "kind=invite_unknown_channel,platform=central"
        ),
        1
    );
    assert_eq!(
        s.edge.stat(
            "gateway_cascade_requests_total",
            "kind=invite_bad_sdp,platform=central"
        ),
        3
    );
    assert_eq!(
        s.edge.stat(
            "gateway_cascade_requests_total",
            "kind=invite_unsupported_session,platform=central"
        ),
        1
    );
    let streams = sim::report(&s.cam_status)["streams"].clone();
    assert!(
        streams.as_array().is_none_or(|a| a.is_empty()),
        "the camera was asked for a stream: {streams}"
    );
    s.edge.stop();
}

/// A flood of INVITEs from a superior for a channel whose device session
/// is still opening: past the limit of relays opening at once, 486 Busy
/// Here (counted); the others are answered; a local recording of the other
/// channel keeps running untouched.
#[test]
fn cascade_superior_invite_flood_is_bounded() {
    if !have_tools(&["ffmpeg"]) {
        return;
    }
    let dir = TempDir::new("cascade-flood");
    let mut s = setup(dir.path(), "31300-31399");
    let ch2 = sim::channel(CAMERA, 2);
    let local = s.edge.open_stream(CAMERA, &ch2, "udp", "");
    let local_id = local["id"].as_str().unwrap().to_string();
    let packets = |d: &Daemon| {
        d.get(&format!("/api/streams/{local_id}")).unwrap()["media"]["packets"]
            .as_u64()
            .unwrap_or(0)
    };
    let before = packets(&s.edge);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let me = sock.local_addr().unwrap();
    const N: usize = 40;
    for k in 0..N {
        let sdp = format!(
            "v=0\r\no={CENTRAL} 0 0 IN IP4 127.0.0.1\r\ns=Play\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=video {} RTP/AVP 96\r\na=recvonly\r\na=rtpmap:96 PS/90000\r\ny=01100{k:05}\r\n",
            40000 + 2 * k
        );
        let req = format!(
            "INVITE sip:{ch}@{edge} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-flood-{k}\r\n\
             From: <sip:{CENTRAL}@1100000000>;tag=f{k}\r\nTo: <sip:{ch}@3402000000>\r\n\
             Call-ID: flood-{k}@test\r\nCSeq: 1 INVITE\r\nContact: <sip:{CENTRAL}@{me}>\r\n\
             Max-Forwards: 70\r\nContent-Type: APPLICATION/SDP\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len(),
            ch = s.channel,
            edge = s.edge.sip,
        );
        sock.send_to(req.as_bytes(), s.edge.sip).unwrap();
    }
    // Final answers by Call-ID (100 Trying is provisional).
    let mut finals = std::collections::BTreeMap::new();
    let mut buf = [0u8; 8192];
    let t0 = Instant::now();
    while finals.len() < N && t0.elapsed() < Duration::from_secs(30) {
        let Ok(n) = sock.recv(&mut buf) else {
            continue;
        };
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        let code: u16 = text.get(8..11).and_then(|c| c.parse().ok()).unwrap_or(0);
        let call = text
            .lines()
            .find_map(|l| l.strip_prefix("Call-ID: "))
            .unwrap_or("")
            .to_string();
        if code >= 200 {
            finals.insert(call, code);
        }
    }
    let busy = finals.values().filter(|c| **c == 486).count();
    let ok = finals.values().filter(|c| **c == 200).count();
    assert_eq!(
        finals.len(),
        N,
        "every INVITE gets a final answer: {finals:?}"
    );
    assert_eq!(busy + ok, N, "{finals:?}");
    assert_eq!(busy, N - 32, "32 relays may wait for one device session");
    assert_eq!(
        s.edge.stat(
            "gateway_cascade_requests_total",
            "kind=invite_refused,platform=central"
        ),
        busy as u64
    );
    // The local recording of the other channel was not disturbed.
    s.edge
        .wait_until(
            Duration::from_secs(10),
            "local stream keeps receiving",
            |d| packets(d) > before + 20,
        )
        .unwrap();
    let v = s.edge.get(&format!("/api/streams/{local_id}")).unwrap();
    assert_eq!(v["state"], "established");
    assert_eq!(v["channel"], ch2.as_str());
    assert_eq!(v["media"]["lost"], 0);
}
