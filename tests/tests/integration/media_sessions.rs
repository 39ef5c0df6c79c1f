//! Media of live sessions end to end on loopback: a sipp device accepts the
//! INVITE, the test sends the H.264 that ffmpeg encoded as PS over RTP (UDP
//! and RFC 4571 TCP) to the port the gateway offered, the gateway receives,
//! demuxes and records it; ffprobe counts the recorded frames and the bytes
//! equal what was sent. No root.

use std::{
    io::Write,
    net::{TcpStream, UdpSocket},
    path::Path,
    process::Command,
    time::Duration,
};

use gateway_tests::have_tools;
use gateway_tests::sipp::{
    free_port, registering_device, stream_port, write_device_scenario, Daemon, Invite, TempDir,
};
use gateway_tests::testmedia::{ffmpeg_encode, ffprobe_frames, ps_rtp, split_aus};

const DEV: &str = "34020000001320000401";
const CH1: &str = "34020000001310000001";
const CH2: &str = "34020000001310000002";

fn tools() -> bool {
    have_tools(&["sipp", "ffmpeg", "ffprobe"])
}

/// ffmpeg encodes `n` frames of a test pattern (AUDs inserted so access
/// units can be split without parsing slices).
fn encode(dir: &Path, n: usize) -> Vec<Vec<u8>> {
    let out = dir.join("src.h264");
    let frames = n.to_string();
    ffmpeg_encode(
        &out,
        "testsrc=size=320x240:rate=25",
        &[
            "-frames:v",
            &frames,
            "-c:v",
            "libx264",
            "-g",
            "25",
            "-bf",
            "0",
            "-bsf:v",
            "h264_metadata=aud=insert",
            "-f",
            "h264",
        ],
    )
    .expect("ffmpeg");
    let aus = split_aus(&std::fs::read(&out).unwrap());
    assert_eq!(aus.len(), n);
    aus
}

/// Waits for the closed session's recording and checks it.
fn check_recording(d: &mut Daemon, id: &str, aus: &[Vec<u8>]) -> serde_json::Value {
    d.wait_until(Duration::from_secs(20), "recording closed", |d| {
        d.get(&format!("/api/streams/{id}"))
            .is_ok_and(|v| v["state"] == "closed" && v["media"]["files"][0].is_string())
    })
    .unwrap();
    let v = d.get(&format!("/api/streams/{id}")).unwrap();
    let file = v["media"]["files"][0].as_str().unwrap().to_string();
    assert!(file.ends_with(".h264"), "{file}");
    assert_eq!(
        ffprobe_frames(&file),
        aus.len() as u64,
        "ffprobe frame count of {file}"
    );
    let rec = std::fs::read(&file).unwrap();
    assert!(
        rec == aus.concat(),
        "recorded bytes differ from what was sent"
    );
    v
}

#[test]
fn udp_and_tcp_media_are_received_demuxed_and_recorded() {
    assert!(
        tools(),
        "sipp, ffmpeg and ffprobe are needed (scripts/setup.sh)"
    );
    let dir = TempDir::new("media");
    let rec_dir = dir.path().join("records");
    let (sip_port, api_port) = (free_port(), free_port());
    let cfg = Daemon::config(
        dir.path(),
        sip_port,
        api_port,
        "password = \"pw\"\nquery_info = false\n",
        &format!(
            "[media]\nports = \"32000-32019\"\n[media.record]\ndir = \"{}\"\n",
            rec_dir.display()
        ),
    );
    let mut d = Daemon::start(&cfg, sip_port, api_port).unwrap();
    let ooc = dir.path().join("dev.xml");
    write_device_scenario(&ooc, 1, false, Invite::Accept);
    let sipp = registering_device(dir.path(), d.sip, free_port(), DEV, &ooc, 20_000);
    let child = sipp.spawn().unwrap();
    d.wait_until(Duration::from_secs(30), "device with catalog", |d| {
        d.device(DEV)
            .is_ok_and(|v| v["catalog"]["state"] == "complete")
    })
    .unwrap();
    let aus = encode(dir.path(), 50);

    // UDP: every packet counted, no loss, every frame recorded, and
    // forwarded as PS/RTP under its own SSRC.
    let fwd = UdpSocket::bind("127.0.0.1:0").unwrap();
    fwd.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let s = d.open_stream(
        DEV,
        CH1,
        "udp",
        &format!(
            r#","forward":[{{"dest":"{}","ssrc":4242}}]"#,
            fwd.local_addr().unwrap()
        ),
    );
    let id = s["id"].as_str().unwrap().to_string();
    let ssrc = s["ssrc"].as_u64().unwrap() as u32;
    let pk = ps_rtp(&aus, ssrc, 1000);
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    for p in &pk {
        tx.send_to(p, ("127.0.0.1", stream_port(&s))).unwrap();
    }
    d.wait_until(Duration::from_secs(20), "all frames received", |d| {
        d.get(&format!("/api/streams/{id}"))
            .is_ok_and(|v| v["media"]["packets"] == pk.len() && v["media"]["frames"] == aus.len())
    })
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    for _ in 0..pk.len() {
        let n = fwd.recv(&mut buf).unwrap();
        let r = media::rtp::parse(&buf[..n]).unwrap();
        assert_eq!(r.ssrc, 4242);
        got.extend_from_slice(r.payload);
    }
    let sent_ps: Vec<u8> = pk
        .iter()
        .flat_map(|p| media::rtp::parse(p).unwrap().payload.to_vec())
        .collect();
    assert!(got == sent_ps, "forwarded PS differs from the received PS");
    let (code, _) = d
        .request("DELETE", &format!("/api/streams/{id}"), None)
        .unwrap();
    assert_eq!(code, 200);
    let v = check_recording(&mut d, &id, &aus);
    assert_eq!(v["media"]["lost"], 0);
    assert_eq!(v["media"]["frames"], 50);
    assert_eq!(v["media"]["forwards"][0]["packets"], pk.len());
    assert_eq!(v["media"]["forwards"][0]["ssrc"], 4242);
    assert_eq!(v["media"]["keyframes"], 2);
    assert_eq!(v["media"]["codec"], "h264");
    assert_eq!(v["media"]["ssrc_mismatches"], 0);

    // TCP passive: the test connects and sends RFC 4571 frames.
    let s = d.open_stream(DEV, CH2, "tcp-passive", "");
    let id = s["id"].as_str().unwrap().to_string();
    let pk = ps_rtp(&aus, s["ssrc"].as_u64().unwrap() as u32, 1000);
    let mut t = TcpStream::connect(("127.0.0.1", stream_port(&s))).unwrap();
    let mut buf = Vec::new();
    for p in &pk {
        media::framing::encode_rfc4571(p, &mut buf).unwrap();
    }
    t.write_all(&buf).unwrap();
    d.wait_until(Duration::from_secs(20), "all TCP frames received", |d| {
        d.get(&format!("/api/streams/{id}"))
            .is_ok_and(|v| v["media"]["packets"] == pk.len())
    })
    .unwrap();
    let (code, _) = d
        .request("DELETE", &format!("/api/streams/{id}"), None)
        .unwrap();
    assert_eq!(code, 200);
    drop(t);
    let v = check_recording(&mut d, &id, &aus);
    assert_eq!(v["media"]["lost"], 0);
    assert!(v["media"]["peer"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));

    // Loss: three packets of one frame dropped on the way.
    let s = d.open_stream(DEV, CH1, "udp", "");
    let id = s["id"].as_str().unwrap().to_string();
    let pk = ps_rtp(&aus, s["ssrc"].as_u64().unwrap() as u32, 1000);
    for (i, p) in pk.iter().enumerate() {
        if (40..43).contains(&i) {
            continue;
        }
        tx.send_to(p, ("127.0.0.1", stream_port(&s))).unwrap();
    }
    d.wait_until(Duration::from_secs(20), "lossy stream received", |d| {
        d.get(&format!("/api/streams/{id}"))
            .is_ok_and(|v| v["media"]["packets"] == pk.len() - 3)
    })
    .unwrap();
    let v = d.get(&format!("/api/streams/{id}")).unwrap();
    assert_eq!(v["media"]["lost"], 3, "{v}");
    let (code, _) = d
        .request("DELETE", &format!("/api/streams/{id}"), None)
        .unwrap();
    assert_eq!(code, 200);

    let r = sipp.result(child.wait_with_output().unwrap());
    assert!(r.ok(), "sipp device failed: {}", r.errors);
    assert!(!d.log_text().contains("panicked"));
}

/// A third-party sender: ffmpeg sends H.264 over RTP (RFC 6184) to a
/// receiver configured without SIP; the recording passes ffprobe with every
/// frame.
#[test]
fn ffmpeg_rtp_h264_to_a_static_stream_is_recorded() {
    assert!(tools(), "ffmpeg and ffprobe are needed (scripts/setup.sh)");
    let dir = TempDir::new("ffrtp");
    let rec_dir = dir.path().join("records");
    let (sip_port, api_port, media_port) = (free_port(), free_port(), free_port());
    let cfg = Daemon::config(
        dir.path(),
        sip_port,
        api_port,
        "password = \"pw\"\n",
        &format!(
            "[media]\n[media.record]\ndir = \"{}\"\n[[media.streams]]\nname = \"ffcam\"\nlisten = \"127.0.0.1:{media_port}\"\npayload = \"h264\"\n",
            rec_dir.display()
        ),
    );
    let mut d = Daemon::start(&cfg, sip_port, api_port).unwrap();
    let v = d.get("/api/streams/ffcam").unwrap();
    assert_eq!(v["state"], "static");
    let st = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-re",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg("testsrc=size=320x240:rate=25")
        .args(["-frames:v", "50", "-c:v", "libx264", "-g", "25", "-bf", "0"])
        .args([
            "-bsf:v",
            "dump_extra",
            "-payload_type",
            "98",
            "-ssrc",
            "4660",
        ])
        .args(["-f", "rtp"])
        .arg(format!("rtp://127.0.0.1:{media_port}"))
        .status()
        .unwrap();
    assert!(st.success(), "ffmpeg failed");
    d.wait_until(Duration::from_secs(20), "ffmpeg's frames received", |d| {
        d.get("/api/streams/ffcam")
            .is_ok_and(|v| v["media"]["frames"] == 50)
    })
    .unwrap();
    let (code, _) = d.request("DELETE", "/api/streams/ffcam", None).unwrap();
    assert_eq!(code, 200);
    d.wait_until(Duration::from_secs(20), "recording closed", |d| {
        d.get("/api/streams/ffcam")
            .is_ok_and(|v| v["state"] == "closed" && v["media"]["files"][0].is_string())
    })
    .unwrap();
    let v = d.get("/api/streams/ffcam").unwrap();
    assert_eq!(v["media"]["ssrc"], 4660);
    assert_eq!(v["media"]["lost"], 0);
    assert_eq!(v["media"]["codec"], "h264");
    let file = v["media"]["files"][0].as_str().unwrap();
    assert_eq!(ffprobe_frames(file), 50, "ffprobe frame count of {file}");
}
