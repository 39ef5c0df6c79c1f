//! Restart without loss (root): the gateway attached to a veth with
//! `keep_attached`, 21 live streams from one gb-sim camera (21 channels)
//! in the other namespace, recorded. The daemon is killed with SIGKILL
//! (a crash, an OOM kill) and started again after a gap; later stopped with
//! SIGTERM (an upgrade) and started again. Through both: the sessions come
//! back in their dialogs (the camera sees no BYE and no re-INVITE), the
//! kernel flows are adopted, so the kernel's packet count of every stream
//! equals what the camera sent, the gap included; every recording file
//! decodes with ffprobe and starts at a key frame. Hanging up afterwards
//! reaches the camera in the original dialogs. One stream cannot go on
//! (the test holds its media port while the daemon is down): the new
//! daemon ends it with a BYE in its dialog, counts it, and removes its
//! kernel flow.

use std::{path::Path, process::Command, time::Duration};

use gateway_tests::{
    cli::{gateway_in, kernel_flows},
    netns::{in_netns, NetnsPair},
    require_root, sim,
    sipp::{free_port, stream_port, Daemon, TempDir},
    testmedia::{camera_file, ffprobe_frames},
};
use serde_json::Value;

const DEV: &str = "34020000001320000901";
const STREAMS: u32 = 20;

/// The first video frame of a recording is a key frame (ffprobe).
fn starts_with_key_frame(path: &Path) -> bool {
    if std::env::var_os("GATEWAY_TEST_NO_FFPROBE").is_some() {
        return true;
    }
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-read_intervals"])
        .args(["%+#1", "-show_entries", "frame=key_frame", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("ffprobe");
    String::from_utf8_lossy(&out.stdout).trim().starts_with('1')
}

/// Detaches when dropped: with `keep_attached` nothing else would, even
/// when the test fails half-way.
struct Detach<'a>(&'a NetnsPair);

impl Drop for Detach<'_> {
    fn drop(&mut self) {
        let _ = gateway_in(&self.0.a, &["detach", "--iface", &self.0.veth_a]);
    }
}

fn streams(d: &Daemon) -> Vec<Value> {
    d.get("/api/streams")
        .ok()
        .and_then(|v| v["streams"].as_array().cloned())
        .unwrap_or_default()
}

#[test]
fn root_sessions_survive_kill_9_and_sigterm_restarts() {
    if !require_root("root_sessions_survive_kill_9_and_sigterm_restarts") {
        return;
    }
    let net = NetnsPair::new("restart").expect("namespaces");
    let dir = TempDir::new("restart");
    // 24 s of 25 fps video, a key frame every second.
    let media = camera_file(dir.path(), 600, false);
    let api_port = free_port();
    let rec = dir.path().join("records");
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[dataplane]\niface = \"{iface}\"\nmode = \"native\"\nkeep_attached = true\n\
             [sip]\nid = \"34020000002000000001\"\nlisten = [\"{gw}:5060\"]\npassword = \"pw\"\nquery_info = false\n\
             [api]\nlisten = \"127.0.0.1:{api_port}\"\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n\
             [store]\npath = \"{store}\"\n\
             [media]\nip = \"{gw}\"\nports = \"36300-36399\"\nno_media_timeout_secs = 20\n\
             [media.record]\ndir = \"{rec}\"\n",
            iface = net.veth_a,
            gw = net.addr_a,
            store = dir.path().join("registry.redb").display(),
            rec = rec.display(),
        ),
    )
    .unwrap();
    let sip: std::net::SocketAddr = format!("{}:5060", net.addr_a).parse().unwrap();
    let start = || Daemon::start_in(Some(&net.a), &cfg, sip, api_port).unwrap();
    let _detach = Detach(&net);
    let mut d = start();
    let n = (STREAMS + 1).to_string();
    let (mut cam, status) = sim::spawn_in(
        &net,
        DEV,
        dir.path(),
        &["--channels", &n, "--media", media.to_str().unwrap()],
    );
    d.wait_until(Duration::from_secs(30), "camera online", |d| {
        d.device(DEV)
            .is_ok_and(|v| v["online"] == true && v["catalog"]["state"] == "complete")
    })
    .unwrap();
    let mut ids = Vec::new();
    let mut victim_port = 0;
    for i in 1..=STREAMS + 1 {
        let s = d.open_stream(DEV, &sim::channel(DEV, i), "udp", "");
        ids.push(s["id"].as_str().unwrap().to_string());
        victim_port = stream_port(&s);
    }
    // The last stream's port will be taken while no daemon runs.
    let victim = ids.pop().unwrap();
    let all_counting = |d: &Daemon| {
        let v = streams(d);
        v.len() == STREAMS as usize + 1
            && v.iter()
                .all(|s| s["kernel"]["packets"].as_u64().unwrap_or(0) > 0)
    };
    d.wait_until(
        Duration::from_secs(20),
        "every stream counted",
        all_counting,
    )
    .unwrap();
    // Some groups of pictures recorded before the crash.
    std::thread::sleep(Duration::from_secs(2));

    // A crash: SIGKILL, two seconds without a daemon.
    let killed = std::time::Instant::now();
    d.kill9();
    let squatter = in_netns(&net.a, move || {
        std::net::UdpSocket::bind(("0.0.0.0", victim_port)).expect("taking the victim's port")
    });
    std::thread::sleep(Duration::from_secs(2));
    let during = kernel_flows(&net.a, &net.veth_a);
    let mut d = start();
    let restored = |d: &Daemon| {
        let v = streams(d);
        v.len() == STREAMS as usize
            && v.iter()
                .all(|s| s["state"] == "established" && s["restored_ms"].is_i64())
    };
    d.wait_until(Duration::from_secs(20), "streams restored", restored)
        .unwrap();
    eprintln!(
        "kill -9 to {STREAMS} streams restored: {:.2} s (2 s of it without a daemon)",
        killed.elapsed().as_secs_f64()
    );
    assert_eq!(
        d.stat("gateway_session_restores_total", "result=restored"),
        STREAMS as u64,
        "{}",
        d.log_tail(40)
    );
    // The one whose port was taken: BYE in its dialog, counted, its
    // kernel flow removed.
    assert_eq!(
        d.stat("gateway_session_restores_total", "result=ended"),
        1,
        "{}",
        d.log_tail(40)
    );
    drop(squatter);
    d.wait_until(Duration::from_secs(10), "BYE for the lost stream", |_| {
        sim::stream(&status, &victim)["reason"] == "BYE from the platform"
    })
    .unwrap();
    assert!(!kernel_flows(&net.a, &net.veth_a).contains(victim.as_str()));
    assert_eq!(
        d.log_text().matches("stale session flow removed").count(),
        1,
        "{}",
        d.log_tail(40)
    );
    // The flows stayed in the kernel through the gap (same slots).
    for id in ids.iter().chain([&victim]) {
        assert!(
            during.contains(id.as_str()),
            "flow of {id} kept while no daemon ran:\n{during}"
        );
    }
    d.wait_until(Duration::from_secs(20), "media after the crash", |d| {
        streams(d)
            .iter()
            .all(|s| s["media"]["packets"].as_u64().unwrap_or(0) > 0)
    })
    .unwrap();

    // Some groups of pictures recorded by this daemon.
    std::thread::sleep(Duration::from_secs(2));
    // An upgrade: SIGTERM (recordings closed), then the new daemon.
    assert!(d.stop(), "SIGTERM stop:\n{}", d.log_tail(30));
    std::thread::sleep(Duration::from_secs(1));
    let mut d = start();
    d.wait_until(Duration::from_secs(20), "streams restored again", restored)
        .unwrap();

    // The camera sends its file to the end; the kernel counted every
    // packet of it, the gaps included.
    d.wait_until(Duration::from_secs(60), "file sent and counted", |d| {
        ids.iter().all(|id| {
            let sent = sim::stream(&status, id);
            sent["state"] == "idle"
                && d.get(&format!("/api/streams/{id}"))
                    .is_ok_and(|v| v["kernel"]["packets"] == sent["packets_sent"])
        })
    })
    .unwrap_or_else(|e| {
        let v: Vec<String> = ids
            .iter()
            .map(|id| {
                let s = d.get(&format!("/api/streams/{id}")).unwrap_or_default();
                format!(
                    "{id}: sent {} kernel {}",
                    sim::stream(&status, id)["packets_sent"],
                    s["kernel"]["packets"]
                )
            })
            .collect();
        panic!("{e}\n{}", v.join("\n"))
    });
    for id in &ids {
        let sent = sim::stream(&status, id);
        assert_eq!(sent["send_errors"], 0, "{sent}");
        // No BYE reached the camera: the stream is idle, not ended.
        assert!(sent["reason"].is_null(), "{id}: {sent}");
        let s = d.get(&format!("/api/streams/{id}")).unwrap();
        assert_eq!(s["kernel"]["lost"], 0, "{s}");
        // This daemon's receiver saw only what came after its start.
        assert!(
            s["media"]["packets"].as_u64().unwrap() < sent["packets_sent"].as_u64().unwrap(),
            "{s}"
        );
    }
    assert_eq!(
        d.stat("gateway_session_restores_total", "result=ended"),
        0,
        "{}",
        d.log_tail(40)
    );
    assert_eq!(
        d.stat("gateway_session_restores_total", "result=restored"),
        STREAMS as u64
    );

    // Hanging up reaches the camera in the dialogs of the first daemon.
    for id in &ids {
        let (code, v) = d
            .call("DELETE", &format!("/api/streams/{id}"), None)
            .unwrap();
        assert_eq!(code, 200, "{v}");
    }
    d.wait_until(Duration::from_secs(20), "BYE at the camera", |_| {
        ids.iter()
            .all(|id| sim::stream(&status, id)["reason"] == "BYE from the platform")
    })
    .unwrap();
    let flows = kernel_flows(&net.a, &net.veth_a);
    for id in &ids {
        assert!(!flows.contains(id.as_str()), "{id} left:\n{flows}");
    }

    // Three recordings per stream (before the crash, up to the SIGTERM,
    // after): each decodes and starts at a key frame. The one the crash
    // cut ends at the last group of pictures that reached the disk.
    let files: Vec<_> = std::fs::read_dir(&rec)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "h264"))
        .collect();
    for id in ids.iter().chain([&victim]) {
        let mut mine: Vec<_> = files
            .iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().contains(&format!("_{id}_")))
            })
            .collect();
        mine.sort();
        let want = if *id == victim { 1 } else { 3 };
        let sizes: Vec<_> = mine
            .iter()
            .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
            .collect();
        assert_eq!(mine.len(), want, "{id}: {mine:?} {sizes:?}");
        for f in &mine {
            let frames = ffprobe_frames(f);
            assert!(
                frames > 0,
                "{} does not decode (sizes {sizes:?})\n{}",
                f.display(),
                d.log_tail(20)
            );
            assert!(starts_with_key_frame(f), "{} starts mid-GOP", f.display());
        }
    }

    let _ = Command::new("kill").arg(cam.id().to_string()).status();
    let _ = cam.wait();
    assert!(d.stop(), "daemon did not stop cleanly:\n{}", d.log_tail(30));
    let o = gateway_in(&net.a, &["detach", "--iface", &net.veth_a]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        d.log_text().matches("stale session flow removed").count(),
        0,
        "every flow was carried on"
    );
}
