//! The kernel relay end to end (root): three network namespaces in a row,
//! camera (gb-sim) -> edge gateway (XDP attached natively on its camera
//! side) -> central gateway (a second gateway, the superior; its own XDP on
//! its veth makes the veth accept redirected frames).
//!
//! 1. The central plays CH1 through the edge: the edge's relay leg starts
//!    in userspace (IP forwarding off: the reason is shown), is handed to
//!    XDP once forwarding is on, and from then on the edge's socket gets
//!    none of the stream; the central receives every packet from the
//!    leg's first key frame under the SSRC it asked for, no loss, no
//!    duplicate; its recording is the camera's H.264, byte for byte, from
//!    that key frame; tshark, validating UDP checksums, finds none bad.
//! 2. A local viewer at the edge records CH2 and the central views it:
//!    the leg goes to TC ingress (copies; the original still goes up): the
//!    edge's recording has every frame (ffprobe), the central exactly the
//!    packets from the leg's first key frame.
//! 3. Two superiors (the central and a second gateway beside it) view
//!    CH1: one camera session, two legs, both copied by TC (the original
//!    dropped); each superior gets exactly the packets from its leg's
//!    first key frame.
//! 4. Teardown leaves no relay entry; the daemon's exit detaches
//!    everything.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use gateway_tests::{
    chain::{config, delete_stream, first_key_frame, sessions_on, stream, wait_sim},
    cli::gateway_in,
    netns::{in_netns, NetnsChain},
    prom::http_get,
    require_root, sim,
    sipp::{free_port, Daemon, TempDir},
    testmedia::{camera_file_aud, ffprobe_frames, packets_per_frame, split_aus},
};

const CAM: &str = "34020000001320001101";
const EDGE: &str = "34020000002000000001";
const CENTRAL: &str = "34010000002000000001";
/// A second superior (in the central's namespace, another port).
const CENTRAL2: &str = "34010000002000000002";
/// 12 s at 25 fps, a key frame every second: time for the hand-over.
const FRAMES: usize = 300;

fn sh(ns: &str, cmd: &str) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(cmd.split_whitespace())
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The camera's stream `y` has sent the whole file.
fn sent_all(status: &Path, y: &str) -> Value {
    wait_sim(status, "the file sent", |r| {
        r["streams"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|st| st["y"] == y && st["state"] == "idle")
    });
    sim::stream(status, y)
}

/// tshark capturing UDP to `host` on `dev` in `ns` into `file`.
struct Capture {
    child: Child,
    file: PathBuf,
}

impl Capture {
    fn start(ns: &str, dev: &str, host: &str, file: PathBuf) -> Capture {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "tshark", "-q", "-i", dev, "-f"])
            .arg(format!("udp and dst host {host}"))
            .arg("-w")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tshark (scripts/setup.sh installs it)");
        // dumpcap creates the file once it captures.
        let t0 = Instant::now();
        while !file.exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "tshark did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300));
        Capture { child, file }
    }

    /// Stops the capture; (UDP packets, ones with a bad UDP checksum).
    fn finish(mut self) -> (u64, u64) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let count = |filter: &str| -> u64 {
            let out = Command::new("tshark")
                .args(["-r"])
                .arg(&self.file)
                .args(["-o", "udp.check_checksum:TRUE", "-Y", filter])
                .output()
                .expect("tshark -r");
            String::from_utf8_lossy(&out.stdout).lines().count() as u64
        };
        (count("udp"), count("udp.checksum.status == \"Bad\""))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

#[test]
fn root_kernel_relay_camera_edge_central() {
    if !require_root("root_kernel_relay_camera_edge_central") {
        return;
    }
    // camera 198.18.0.1 <-> 198.18.0.2 edge 198.18.1.1 <-> 198.18.1.2 central
    let chain = NetnsChain::new("krl", 3).expect("namespaces");
    let (cam_ns, edge_ns, central_ns) = (&chain.ns[0], &chain.ns[1], &chain.ns[2]);
    let (down, up) = (&chain.links[0], &chain.links[1]);
    // The camera's veth computes full UDP checksums (not left to an
    // offload that an XDP redirect would skip), as a NIC's packets have.
    sh(cam_ns, &format!("ethtool -K {} tx off", down.left_dev));
    // Likewise the edge's own packets to the central (SIP, the userspace
    // relay), so that every UDP checksum tshark sees is a final one.
    sh(edge_ns, &format!("ethtool -K {} tx off", up.left_dev));
    let dir = TempDir::new("krelay");
    let media = camera_file_aud(dir.path(), FRAMES);
    let aus = split_aus(&std::fs::read(&media).unwrap());
    let frames = packets_per_frame(&aus);
    assert_eq!(frames.len(), FRAMES);

    let rec_c = dir.path().join("central-records");
    let central_api = free_port();
    let central_cfg = config(
        dir.path(),
        "central",
        central_api,
        &format!(
            "[sip]\nid = \"{CENTRAL}\"\nlisten = [\"{c}:5060\"]\npassword = \"pw\"\n\
             [media]\nip = \"{c}\"\nports = \"40000-40019\"\nno_media_timeout_secs = 0\n\
             [media.record]\ndir = \"{rec}\"\n\
             [dataplane]\niface = \"{dev}\"\nmode = \"native\"\nmedia_ports = \"40000-40019\"\nunknown = \"pass\"\n",
            c = up.right_addr,
            rec = rec_c.display(),
            dev = up.right_dev,
        ),
    );
    let central_sip = format!("{}:5060", up.right_addr).parse().unwrap();
    let mut central = Daemon::start_in(Some(central_ns), &central_cfg, central_sip, central_api)
        .expect("central gateway");
    // The second superior: its media reaches it through the stack (the
    // central's XDP passes what is not its own).
    let central2_api = free_port();
    let central2_cfg = config(
        dir.path(),
        "central2",
        central2_api,
        &format!(
            "[sip]\nid = \"{CENTRAL2}\"\nlisten = [\"{c}:5062\"]\npassword = \"pw\"\n\
             [media]\nip = \"{c}\"\nports = \"40100-40119\"\nno_media_timeout_secs = 0\n",
            c = up.right_addr,
        ),
    );
    let central2_sip = format!("{}:5062", up.right_addr).parse().unwrap();
    let mut central2 =
        Daemon::start_in(Some(central_ns), &central2_cfg, central2_sip, central2_api)
            .expect("second central gateway");

    let rec_e = dir.path().join("edge-records");
    let edge_api = free_port();
    let edge_metrics = free_port();
    let edge_cfg = config(
        dir.path(),
        "edge",
        edge_api,
        &format!(
            "[sip]\nid = \"{EDGE}\"\nlisten = [\"{d}:5060\", \"{u}:5060\"]\npassword = \"pw\"\n\
             [media]\nports = \"40000-40019\"\nno_media_timeout_secs = 0\n\
             [media.record]\ndir = \"{rec}\"\n\
             [dataplane]\niface = \"{dd}\"\nmode = \"native\"\nmedia_ports = \"40000-40019\"\n\
             relay_to = [\"{ud}\"]\n\
             [metrics]\nlisten = \"127.0.0.1:{edge_metrics}\"\n\
             [[cascade]]\nid = \"{CENTRAL}\"\naddress = \"{c}:5060\"\npassword = \"pw\"\n\
             [[cascade]]\nid = \"{CENTRAL2}\"\naddress = \"{c}:5062\"\npassword = \"pw\"\n",
            d = down.right_addr,
            u = up.left_addr,
            c = up.right_addr,
            dd = down.right_dev,
            ud = up.left_dev,
            rec = rec_e.display(),
        ),
    );
    let edge_sip = format!("{}:5060", down.right_addr).parse().unwrap();
    let mut edge =
        Daemon::start_in(Some(edge_ns), &edge_cfg, edge_sip, edge_api).expect("edge gateway");

    let (mut cam, cam_status) = sim::spawn(
        Some(cam_ns),
        &format!("{}:5060", down.right_addr),
        &down.left_addr,
        CAM,
        dir.path(),
        &["--channels", "2", "--media", media.to_str().unwrap()],
    );
    edge.wait_until(Duration::from_secs(30), "camera online at the edge", |d| {
        d.device(CAM)
            .is_ok_and(|v| v["online"] == true && v["catalog"]["state"] == "complete")
    })
    .unwrap();
    let (ch1, ch2) = (sim::channel(CAM, 1), sim::channel(CAM, 2));
    edge.wait_until(Duration::from_secs(30), "registered upward", |d| {
        d.get("/api/platforms").is_ok_and(|v| {
            v["platforms"]
                .as_array()
                .is_some_and(|p| p.len() == 2 && p.iter().all(|p| p["state"] == "registered"))
        })
    })
    .unwrap();
    for c in [&mut central, &mut central2] {
        c.wait_until(
            Duration::from_secs(30),
            "edge online at the superior",
            |d| d.device(EDGE).is_ok_and(|v| v["online"] == true),
        )
        .unwrap();
        let (code, v) = c
            .post_json(&format!("/api/devices/{EDGE}/catalog"), "")
            .unwrap();
        assert_eq!(code, 202, "{v}");
        c.wait_until(Duration::from_secs(30), "the edge's catalog", |d| {
            d.device(EDGE)
                .is_ok_and(|v| v["catalog"]["state"] == "complete")
        })
        .unwrap();
    }

    let capture = Capture::start(
        central_ns,
        &up.right_dev,
        &up.right_addr,
        dir.path().join("central.pcap"),
    );

    // 1. CH1, relay only: forwarding is off, so the leg stays in
    // userspace and says why.
    let s = central.open_stream(EDGE, &ch1, "udp", "");
    assert_eq!(s["state"], "established", "{s}");
    let cid = s["id"].as_str().unwrap().to_string();
    let eid = sessions_on(&edge, CAM, &ch1)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    edge.wait_until(Duration::from_secs(15), "reason: forwarding", |d| {
        d.get(&format!("/api/streams/{eid}")).is_ok_and(|v| {
            v["legs"][0]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("forwarding is off"))
        })
    })
    .unwrap_or_else(|e| panic!("{e}: {}", stream(&edge, &eid)));
    assert_eq!(stream(&edge, &eid)["legs"][0]["path"], "userspace");
    sh(
        edge_ns,
        &format!("sysctl -qw net.ipv4.conf.{}.forwarding=1", down.right_dev),
    );
    edge.wait_until(Duration::from_secs(15), "handed over to XDP", |d| {
        d.get(&format!("/api/streams/{eid}"))
            .is_ok_and(|v| v["legs"][0]["path"] == "kernel-xdp")
    })
    .unwrap_or_else(|e| panic!("{e}: {}\n{}", stream(&edge, &eid), edge.log_tail(30)));
    // What the edge's socket had when the kernel took over (a moment for
    // the packets already queued to be read).
    std::thread::sleep(Duration::from_millis(500));
    let before = stream(&edge, &eid)["media"]["packets"].as_u64().unwrap();
    let sent = sent_all(&cam_status, &eid);
    let t = Instant::now();
    let (e, c) = loop {
        let e = stream(&edge, &eid);
        let c = stream(&central, &cid);
        let user = e["media"]["forwards"][0]["packets"].as_u64().unwrap_or(0);
        let kernel = e["legs"][0]["kernel"]["packets"].as_u64().unwrap_or(0);
        if e["kernel"]["packets"] == sent["packets_sent"]
            && c["media"]["packets"].as_u64() == Some(user + kernel)
        {
            break (e, c);
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "sent {}, edge kernel {}, leg userspace {user} + kernel {kernel}, central {}\n{e}\n{}",
            sent["packets_sent"],
            e["kernel"]["packets"],
            c["media"]["packets"],
            edge.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let user = e["media"]["forwards"][0]["packets"].as_u64().unwrap();
    let kernel = e["legs"][0]["kernel"]["packets"].as_u64().unwrap();
    assert!(kernel > user, "most of the stream went through XDP: {e}");
    assert_eq!(
        e["media"]["packets"].as_u64().unwrap(),
        before,
        "the edge's socket got none of the stream after the hand-over: {e}"
    );
    assert_eq!(e["legs"][0]["kernel"]["passed"], 0, "{e}");
    let first = first_key_frame(&frames, user + kernel);
    eprintln!(
        "XDP relay: leg from frame {first}, {user} packets from userspace, {kernel} from XDP"
    );
    assert_eq!(c["media"]["lost"], 0, "{c}");
    assert_eq!(c["media"]["duplicates"], 0, "{c}");
    assert_eq!(
        c["media"]["ssrc"], s["ssrc"],
        "the SSRC the central asked for: {c}"
    );
    assert_eq!(c["media"]["ssrc_mismatches"], 0, "{c}");
    // /metrics has the kernel's count for the leg, and what it sent.
    let url = format!("http://127.0.0.1:{edge_metrics}/metrics");
    let text = in_netns(edge_ns, move || {
        http_get(&url, &[]).expect("GET /metrics").1
    });
    let sample = |name: &str, labels: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(name) && l.contains(labels))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    let leg_labels = format!(
        "stream=\"{eid}\",dest=\"{}\"",
        e["legs"][0]["dest"].as_str().unwrap()
    );
    assert_eq!(
        sample("gateway_relay_kernel_packets_total{", &leg_labels),
        Some(kernel as f64),
        "gateway_relay_kernel_packets_total for the leg"
    );
    assert!(
        sample("gateway_kernel_packets_total{", "reason=\"relay_sent\"").unwrap_or(0.0)
            >= kernel as f64
    );
    let relays = gateway_in(
        edge_ns,
        &["relay", "list", "--iface", &down.right_dev, "--json"],
    );
    let rl = relays.json();
    assert_eq!(rl.as_array().map(Vec::len), Some(1), "{rl}");
    assert_eq!(rl[0]["mode"], "xdp", "{rl}");
    assert_eq!(rl[0]["outputs"][0]["counted_by"], "kernel", "{rl}");
    assert_eq!(
        rl[0]["outputs"][0]["packets"].as_u64(),
        Some(kernel),
        "{rl}"
    );

    delete_stream(&central, &cid);
    central
        .wait_until(Duration::from_secs(10), "recording closed", |d| {
            d.get(&format!("/api/streams/{cid}"))
                .is_ok_and(|v| v["media"]["files"][0].is_string())
        })
        .unwrap();
    let file = stream(&central, &cid)["media"]["files"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(ffprobe_frames(&file), (FRAMES - first) as u64, "{file}");
    // The NAL units byte for byte (start code lengths and access unit
    // delimiters are the recorder's own).
    let nals = |b: &[u8]| -> Vec<Vec<u8>> {
        media::h26x::split_annexb(b)
            .filter(|n| n.first().is_some_and(|h| h & 0x1f != 9))
            .map(|n| n.to_vec())
            .collect()
    };
    let want = nals(&aus[first..].concat());
    let got = nals(&std::fs::read(&file).unwrap());
    assert_eq!(got.len(), want.len(), "NAL units recorded");
    assert!(
        got == want,
        "the central's recording is the camera's H.264 from frame {first}, NAL unit for NAL unit"
    );
    edge.wait_until(Duration::from_secs(10), "edge session closed", |d| {
        d.get(&format!("/api/streams/{eid}"))
            .is_ok_and(|v| v["state"] == "closed")
    })
    .unwrap();
    let rl = gateway_in(
        edge_ns,
        &["relay", "list", "--iface", &down.right_dev, "--json"],
    )
    .json();
    assert_eq!(rl, serde_json::json!([]), "teardown left a relay entry");
    let (udp, bad) = capture.finish();
    assert!(udp >= user + kernel, "tshark saw {udp} UDP packets");
    assert_eq!(bad, 0, "UDP checksums tshark found bad (of {udp})");

    // 2. CH2 recorded at the edge and relayed: TC copies.
    let local = edge.open_stream(CAM, &ch2, "udp", r#","record":true"#);
    let lid = local["id"].as_str().unwrap().to_string();
    let s2 = central.open_stream(EDGE, &ch2, "udp", "");
    let cid2 = s2["id"].as_str().unwrap().to_string();
    edge.wait_until(Duration::from_secs(15), "handed over to TC", |d| {
        d.get(&format!("/api/streams/{lid}"))
            .is_ok_and(|v| v["legs"][0]["path"] == "kernel-tc-copy")
    })
    .unwrap_or_else(|e| panic!("{e}: {}\n{}", stream(&edge, &lid), edge.log_tail(30)));
    let sent2 = sent_all(&cam_status, &lid);
    let t = Instant::now();
    let (e, c) = loop {
        let e = stream(&edge, &lid);
        let c = stream(&central, &cid2);
        let user = e["media"]["forwards"][0]["packets"].as_u64().unwrap_or(0);
        let kernel = e["legs"][0]["kernel"]["packets"].as_u64().unwrap_or(0);
        if e["media"]["packets"] == sent2["packets_sent"]
            && c["media"]["packets"].as_u64() == Some(user + kernel)
            && e["legs"][0]["kernel"]["takes_all"] == true
        {
            break (e, c);
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "sent {}, edge {}, leg userspace {user} + kernel {kernel}, central {}\n{e}\n{}",
            sent2["packets_sent"],
            e["media"]["packets"],
            c["media"]["packets"],
            edge.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let user = e["media"]["forwards"][0]["packets"].as_u64().unwrap();
    let kernel = e["legs"][0]["kernel"]["packets"].as_u64().unwrap();
    assert!(kernel > user, "most of it copied by TC: {e}");
    let first2 = first_key_frame(&frames, user + kernel);
    eprintln!("TC relay: leg from frame {first2}, {user} packets from userspace, {kernel} from TC");
    assert_eq!(c["media"]["lost"], 0, "{c}");
    assert_eq!(c["media"]["duplicates"], 0, "{c}");
    assert_eq!(e["media"]["lost"], 0, "the original still went up: {e}");
    delete_stream(&central, &cid2);
    delete_stream(&edge, &lid);
    edge.wait_until(Duration::from_secs(10), "edge recording closed", |d| {
        d.get(&format!("/api/streams/{lid}"))
            .is_ok_and(|v| v["media"]["files"][0].is_string())
    })
    .unwrap();
    let efile = stream(&edge, &lid)["media"]["files"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        ffprobe_frames(&efile),
        FRAMES as u64,
        "the edge recorded every frame"
    );
    let rl = gateway_in(
        edge_ns,
        &["relay", "list", "--iface", &down.right_dev, "--json"],
    )
    .json();
    assert_eq!(rl, serde_json::json!([]), "teardown left a relay entry");

    // 3. Two superiors view CH1: one relay-only session, two legs, copied
    // by TC; the original dropped.
    let a = central.open_stream(EDGE, &ch1, "udp", "");
    let b = central2.open_stream(EDGE, &ch1, "udp", "");
    let (ca, cb) = (
        a["id"].as_str().unwrap().to_string(),
        b["id"].as_str().unwrap().to_string(),
    );
    let on_edge = sessions_on(&edge, CAM, &ch1);
    assert_eq!(on_edge.len(), 1, "one camera session for both: {on_edge:?}");
    let eid3 = on_edge[0]["id"].as_str().unwrap().to_string();
    edge.wait_until(Duration::from_secs(15), "both legs to TC", |d| {
        d.get(&format!("/api/streams/{eid3}")).is_ok_and(|v| {
            v["legs"]
                .as_array()
                .is_some_and(|l| l.len() == 2 && l.iter().all(|l| l["path"] == "kernel-tc-only"))
        })
    })
    .unwrap_or_else(|e| panic!("{e}: {}\n{}", stream(&edge, &eid3), edge.log_tail(30)));
    let sent3 = sent_all(&cam_status, &eid3);
    let t = Instant::now();
    loop {
        let e = stream(&edge, &eid3);
        let legs = e["legs"].as_array().unwrap().clone();
        let forwards = e["media"]["forwards"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let user = |leg: &Value| {
            forwards
                .iter()
                .find(|f| f["leg"] == leg["id"])
                .and_then(|f| f["packets"].as_u64())
                .unwrap_or(0)
        };
        let central_of = |leg: &Value| {
            [stream(&central, &ca), stream(&central2, &cb)]
                .into_iter()
                .find(|c| c["local"] == leg["dest"])
                .expect("a superior's session per leg")
        };
        let done = e["kernel"]["packets"] == sent3["packets_sent"]
            && legs.iter().all(|l| {
                let c = central_of(l);
                c["media"]["packets"].as_u64()
                    == Some(user(l) + l["kernel"]["packets"].as_u64().unwrap_or(0))
            });
        if done {
            for l in &legs {
                let c = central_of(l);
                assert_eq!(c["media"]["lost"], 0, "{c}");
                assert_eq!(c["media"]["duplicates"], 0, "{c}");
                assert_eq!(c["media"]["ssrc"], l["ssrc"], "{c}");
                let kernel = l["kernel"]["packets"].as_u64().unwrap();
                assert!(kernel > user(l), "mostly TC copies: {e}");
                first_key_frame(&frames, user(l) + kernel);
            }
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "two legs: sent {}, edge {}\n{e}\n{}",
            sent3["packets_sent"],
            e["kernel"]["packets"],
            edge.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let rl = gateway_in(
        edge_ns,
        &["relay", "list", "--iface", &down.right_dev, "--json"],
    )
    .json();
    assert_eq!(rl[0]["mode"], "tc-only", "{rl}");
    assert_eq!(rl[0]["outputs"].as_array().map(Vec::len), Some(2), "{rl}");
    delete_stream(&central, &ca);
    delete_stream(&central2, &cb);
    edge.wait_until(Duration::from_secs(10), "edge session closed", |d| {
        d.get(&format!("/api/streams/{eid3}"))
            .is_ok_and(|v| v["state"] == "closed")
    })
    .unwrap();
    let rl = gateway_in(
        edge_ns,
        &["relay", "list", "--iface", &down.right_dev, "--json"],
    )
    .json();
    assert_eq!(rl, serde_json::json!([]), "teardown left a relay entry");

    // 4. The daemons stop and detach.
    let _ = Command::new("kill").arg(cam.id().to_string()).status();
    let _ = cam.wait();
    assert!(edge.stop(), "edge exits cleanly");
    assert!(central.stop(), "central exits cleanly");
    assert!(central2.stop(), "second central exits cleanly");
    let link = Command::new("ip")
        .args(["-n", edge_ns, "-d", "link", "show", &down.right_dev])
        .output()
        .unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(!link.contains("xdp"), "XDP left attached: {link}");
    let st = gateway_in(edge_ns, &["status", "--iface", &down.right_dev]);
    assert!(!st.ok(), "detached: {}", st.stdout);
}
