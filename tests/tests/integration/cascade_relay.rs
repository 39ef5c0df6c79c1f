//! Cascade relay end to end (root): three network namespaces in a row,
//! camera (gb-sim) -> edge gateway -> central gateway. The edge registers
//! with the central as a lower-level platform (`[[cascade]]`); the central
//! sees it as a device whose channels are the camera's, plays one through
//! it and records it: ffprobe decodes exactly the frames the camera sent
//! from the key frame the relay leg started at, and the central counted
//! every packet the leg forwarded. The central's BYE ends the leg and the
//! device session opened for it; a session a local viewer opened is
//! reused by a relay and outlives it.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;

use gateway_tests::{
    chain::{config, delete_stream, first_key_frame, sessions_on, sim_streams, stream, wait_sim},
    netns::NetnsChain,
    require_root, sim,
    sipp::{free_port, Daemon, TempDir},
    testmedia::{camera_file_aud, ffprobe_frames, packets_per_frame, split_aus},
};

/// The camera (gb-sim, 2 channels).
const CAM: &str = "34020000001320001101";
/// The edge gateway: gb-sim's default platform ID.
const EDGE: &str = "34020000002000000001";
/// The central gateway, a superior in another domain.
const CENTRAL: &str = "34010000002000000001";
const FRAMES: usize = 100;

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn root_cascade_relay_camera_edge_central() {
    if !require_root("root_cascade_relay_camera_edge_central") {
        return;
    }
    let t0 = Instant::now();
    // camera 198.18.0.1 <-> 198.18.0.2 edge 198.18.1.1 <-> 198.18.1.2 central
    let chain = NetnsChain::new("rly", 3).expect("namespaces");
    let (cam_ns, edge_ns, central_ns) = (&chain.ns[0], &chain.ns[1], &chain.ns[2]);
    let (down, up) = (&chain.links[0], &chain.links[1]);
    let dir = TempDir::new("relay");
    let media = camera_file_aud(dir.path(), FRAMES);
    // What the camera sends of each frame: gb-sim muxes and cuts the file
    // as `packets_per_frame` does.
    let frames = packets_per_frame(&split_aus(&std::fs::read(&media).unwrap()));
    assert_eq!(frames.len(), FRAMES);
    assert!(frames[0].1, "the file starts with a key frame");

    // The central gateway: the edge is one of its devices; it records.
    let rec = dir.path().join("records");
    let central_api = free_port();
    let central_cfg = config(
        dir.path(),
        "central",
        central_api,
        &format!(
            "[sip]\nid = \"{CENTRAL}\"\nlisten = [\"{c}:5060\"]\npassword = \"pw\"\n\
             [media]\nip = \"{c}\"\nports = \"40000-40019\"\nno_media_timeout_secs = 0\n\
             [media.record]\ndir = \"{rec}\"\n",
            c = up.right_addr,
            rec = rec.display(),
        ),
    );
    let central_sip = format!("{}:5060", up.right_addr).parse().unwrap();
    let mut central = Daemon::start_in(Some(central_ns), &central_cfg, central_sip, central_api)
        .expect("central gateway");

    // The edge gateway: the camera's platform on one side, a lower-level
    // platform of the central on the other, listening on both (the
    // cameras' side first, as the list is written: the edge must still
    // register from the central's side, the only one the central can
    // answer); no [media] ip, so each side gets the address it reached.
    let edge_api = free_port();
    let edge_cfg = config(
        dir.path(),
        "edge",
        edge_api,
        &format!(
            "[sip]\nid = \"{EDGE}\"\nlisten = [\"{d}:5060\", \"{u}:5060\"]\npassword = \"pw\"\n\
             [media]\nports = \"40000-40019\"\nno_media_timeout_secs = 0\n\
             [[cascade]]\nid = \"{CENTRAL}\"\naddress = \"{c}:5060\"\npassword = \"pw\"\n",
            d = down.right_addr,
            u = up.left_addr,
            c = up.right_addr,
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
    wait_sim(&cam_status, "gb-sim's report", |r| {
        r["devices"][0]["channels"]
            .as_array()
            .is_some_and(|c| !c.is_empty())
    });
    let announced: Vec<String> = sim::report(&cam_status)["devices"][0]["channels"]
        .as_array()
        .expect("gb-sim's channels")
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert_eq!(announced, [sim::channel(CAM, 1), sim::channel(CAM, 2)]);
    let (ch1, ch2) = (announced[0].as_str(), announced[1].as_str());

    // 1. The edge is registered with the central, which sees it as a
    // device: the gateway item and the camera's channels, under the edge.
    let registered = edge.wait_until(Duration::from_secs(30), "registered", |d| {
        d.get("/api/platforms")
            .is_ok_and(|v| v["platforms"][0]["state"] == "registered")
    });
    if let Err(e) = registered {
        panic!(
            "the edge did not register with the central: {e}\nedge's platforms: {}\n\
             central log:\n{}",
            edge.get("/api/platforms").unwrap_or_default(),
            central.log_tail(20)
        );
    }
    let p = edge.get("/api/platforms").unwrap();
    assert_eq!(p["count"], 1, "{p}");
    assert_eq!(p["platforms"][0]["id"], CENTRAL, "{p}");
    central
        .wait_until(Duration::from_secs(30), "edge online at the central", |d| {
            d.device(EDGE).is_ok_and(|v| v["online"] == true)
        })
        .unwrap();
    let (code, v) = central
        .post_json(&format!("/api/devices/{EDGE}/catalog"), "")
        .unwrap();
    assert_eq!(code, 202, "{v}");
    let sn = v["sn"].clone();
    central
        .wait_until(Duration::from_secs(30), "the edge's catalog", |d| {
            d.device(EDGE)
                .is_ok_and(|v| v["catalog"]["sn"] == sn && v["catalog"]["state"] == "complete")
        })
        .unwrap();
    let v = central
        .get(&format!("/api/devices/{EDGE}/channels"))
        .unwrap();
    assert_eq!(v["count"], 3, "{v}");
    let items = v["channels"].as_array().unwrap();
    let item = |id: &str| {
        items
            .iter()
            .find(|c| c["device_id"] == id)
            .unwrap_or_else(|| panic!("no channel {id} at the central: {v}"))
    };
    assert_eq!(item(EDGE)["parental"], "1", "the gateway item");
    for ch in [ch1, ch2] {
        assert_eq!(item(ch)["parent_id"], EDGE, "{v}");
    }

    // 2. The central plays CH1 through the edge: the edge opens the
    // camera's session for the relay only, with one leg to the central.
    let s = central.open_stream(EDGE, ch1, "udp", "");
    assert_eq!(s["state"], "established", "{s}");
    let cid = s["id"].as_str().unwrap().to_string();
    let c_local = s["local"].as_str().unwrap().to_string();
    assert!(c_local.starts_with(&format!("{}:", up.right_addr)), "{s}");
    let on_edge = sessions_on(&edge, CAM, ch1);
    assert_eq!(on_edge.len(), 1, "{on_edge:?}");
    let e = &on_edge[0];
    let eid = e["id"].as_str().unwrap().to_string();
    assert_eq!(e["state"], "established", "{e}");
    assert_eq!(e["relay_only"], true, "{e}");
    assert_eq!(e["legs"].as_array().map(Vec::len), Some(1), "{e}");
    assert_eq!(e["legs"][0]["dest"], c_local, "{e}");
    assert_eq!(e["legs"][0]["ssrc"], s["ssrc"], "{e}");
    assert_eq!(e["legs"][0]["platform"], CENTRAL, "{e}");
    assert!(
        e["local"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}:", down.right_addr)),
        "the camera is offered the edge's address on its side: {e}"
    );

    // The camera sends the file once; the edge takes in every packet and
    // the central every packet the leg forwarded.
    let y = e["id"].as_str().unwrap();
    let y_of = |st: &Value| st["y"] == y;
    wait_sim(&cam_status, "the file sent", |r| {
        r["streams"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|st| y_of(st) && st["state"] == "idle")
    });
    let sent = sim::stream(&cam_status, y);
    assert_eq!(sent["frames_sent"], FRAMES as u64, "{sent}");
    let total: u64 = frames.iter().map(|f| f.0).sum();
    assert_eq!(
        sent["packets_sent"], total,
        "gb-sim cuts the file as packets_per_frame does"
    );
    let t = Instant::now();
    let forwarded = loop {
        let e = stream(&edge, &eid);
        let c = stream(&central, &cid);
        let leg = &e["media"]["forwards"][0];
        let forwarded = leg["packets"].as_u64().unwrap_or(0);
        if e["media"]["packets"] == sent["packets_sent"]
            && forwarded > 0
            && c["media"]["packets"] == forwarded
        {
            assert_eq!(leg["leg"], e["legs"][0]["id"], "{e}");
            assert_eq!(leg["dest"], c_local, "{e}");
            assert_eq!(e["media"]["lost"], 0, "{e}");
            assert_eq!(c["media"]["lost"], 0, "{c}");
            break forwarded;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "edge received {} of {} packets, forwarded {forwarded}; central received {}\n\
             edge log:\n{}\ncentral log:\n{}",
            e["media"]["packets"],
            sent["packets_sent"],
            c["media"]["packets"],
            edge.log_tail(30),
            central.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // The leg started at a key frame: the frames from there on are what
    // it forwarded.
    let first = first_key_frame(&frames, forwarded);
    let expected = (FRAMES - first) as u64;
    eprintln!(
        "relay leg started at frame {first}: {expected} of {FRAMES} frames, \
         {forwarded} of {total} packets"
    );
    let c = stream(&central, &cid);
    assert_eq!(c["media"]["frames"], expected, "{c}");

    // The central hangs up; its recording holds exactly those frames.
    delete_stream(&central, &cid);
    central
        .wait_until(Duration::from_secs(10), "recording closed", |d| {
            d.get(&format!("/api/streams/{cid}"))
                .is_ok_and(|v| v["media"]["files"][0].is_string())
        })
        .unwrap();
    let c = stream(&central, &cid);
    let file = c["media"]["files"][0].as_str().unwrap();
    assert!(
        file.starts_with(rec.to_str().unwrap()) && file.ends_with(".h264"),
        "{file}"
    );
    assert_eq!(ffprobe_frames(file), expected, "{file}");

    // 4. The relay-only session ended with its only viewer; the camera got
    // the BYE.
    edge.wait_until(Duration::from_secs(10), "edge session closed", |d| {
        d.get(&format!("/api/streams/{eid}"))
            .is_ok_and(|v| v["state"] == "closed")
    })
    .unwrap();
    assert_eq!(stream(&edge, &eid)["reason"], "no viewer left");
    wait_sim(&cam_status, "BYE at the camera", |r| {
        r["streams"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|st| y_of(st) && st["state"] == "ended")
    });
    assert_eq!(
        sim::stream(&cam_status, y)["reason"],
        "BYE from the platform"
    );

    // 5. A local viewer at the edge opens CH2; the central's view of it
    // reuses that session (no second INVITE to the camera) and leaves it
    // running when it hangs up.
    let local = edge.open_stream(CAM, ch2, "udp", "");
    let lid = local["id"].as_str().unwrap().to_string();
    let s = central.open_stream(EDGE, ch2, "udp", "");
    assert_eq!(s["state"], "established", "{s}");
    // gb-sim writes its report every second: one written after this
    // shows every INVITE the camera had by now.
    let asked = wall_ms();
    wait_sim(&cam_status, "a newer gb-sim report", |r| {
        r["updated"].as_i64().is_some_and(|u| u > asked)
    });
    let cid2 = s["id"].as_str().unwrap().to_string();
    let on_edge = sessions_on(&edge, CAM, ch2);
    assert_eq!(on_edge.len(), 1, "{on_edge:?}");
    let e = &on_edge[0];
    assert_eq!(e["id"], lid.as_str(), "{e}");
    assert_ne!(e["relay_only"], true, "{e}");
    assert_eq!(e["legs"].as_array().map(Vec::len), Some(1), "{e}");
    assert_eq!(e["legs"][0]["dest"], s["local"], "{e}");
    let cam2 = sim_streams(&cam_status, ch2);
    assert_eq!(cam2.len(), 1, "one INVITE to the camera for CH2: {cam2:?}");
    assert_eq!(cam2[0]["y"], lid.as_str());
    delete_stream(&central, &cid2);
    edge.wait_until(Duration::from_secs(10), "leg gone", |d| {
        d.get(&format!("/api/streams/{lid}"))
            .is_ok_and(|v| v["legs"].as_array().is_none_or(Vec::is_empty))
    })
    .unwrap();
    let e = stream(&edge, &lid);
    assert_eq!(e["state"], "established", "{e}");
    let cam2 = sim_streams(&cam_status, ch2);
    assert_eq!(cam2.len(), 1);
    assert_ne!(cam2[0]["state"], "ended", "{}", cam2[0]);
    delete_stream(&edge, &lid);

    let _ = Command::new("kill").arg(cam.id().to_string()).status();
    let _ = cam.wait();
    for (name, d) in [("edge", &mut edge), ("central", &mut central)] {
        assert!(d.stop(), "{name} did not stop cleanly:\n{}", d.log_tail(30));
        assert!(!d.log_text().contains("panicked"), "{name}");
    }
    eprintln!("cascade relay test: {:.1} s", t0.elapsed().as_secs_f64());
}
