//! Soak (root): the gateway attached to a veth, 2 000 gb-sim devices
//! registering and sending keepalives from the other namespace, 300 of
//! them streaming (100 UDP, 100 TCP, 50 UDP with loss, 50 srtp-sm4
//! encrypted with keys offered in SDP) for `GATEWAY_SOAK_SECS` (120 s in
//! `.ci/run`; `cargo xtask soak --seconds 600` for the long run). After a
//! 30 s warm-up, every ten seconds the daemon's RSS and open file
//! descriptors are sampled (the curve is printed). At the end: RSS grew
//! less than 5 % from the first sample after warm-up, the descriptors are as many as then, nothing
//! panicked, all 2 000 devices are online, and every stream's counters
//! equal the simulator's: packets (the kernel's too for UDP), the losses
//! it made, the packets it encrypted.

use std::{path::PathBuf, process::Command, time::Duration};

use gateway_tests::{
    netns::NetnsPair,
    require_root, rss_and_fds, sim,
    sipp::{free_port, Daemon, TempDir},
    testmedia::camera_file,
};

struct Group {
    name: &'static str,
    first: &'static str,
    devices: u32,
    /// Streams opened (one per device, channel 1), their transport and
    /// the open request's extra JSON.
    streams: bool,
    transport: &'static str,
    extra: &'static str,
    args: &'static [&'static str],
}

const GROUPS: &[Group] = &[
    Group {
        name: "idle",
        first: "34020000001320100001",
        devices: 1700,
        streams: false,
        transport: "udp",
        extra: "",
        args: &[],
    },
    Group {
        name: "udp",
        first: "34020000001320200001",
        devices: 100,
        streams: true,
        transport: "udp",
        extra: "",
        args: &[],
    },
    Group {
        name: "tcp",
        first: "34020000001320300001",
        devices: 100,
        streams: true,
        transport: "tcp-passive",
        extra: "",
        args: &[],
    },
    Group {
        name: "lossy",
        first: "34020000001320400001",
        devices: 50,
        streams: true,
        transport: "udp",
        extra: "",
        args: &["--drop-packets", "30,31,500,1200"],
    },
    Group {
        name: "encrypted",
        first: "34020000001320500001",
        devices: 50,
        streams: true,
        transport: "udp",
        extra: r#","srtp":true"#,
        args: &["--encrypt", "srtp-sm4"],
    },
];

fn device(first: &str, i: u32) -> String {
    let n: u128 = first.parse().unwrap();
    format!("{:020}", n + i as u128)
}

#[test]
fn root_soak_2000_devices_300_streams() {
    if !require_root("root_soak_2000_devices_300_streams") {
        return;
    }
    let secs: u64 = std::env::var("GATEWAY_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120)
        .clamp(30, 3600);
    let net = NetnsPair::new("soak").expect("namespaces");
    let dir = TempDir::new("soak");
    // The file lasts the soak: each stream sends it once, then goes idle,
    // and the counts are compared at rest.
    let media = camera_file(dir.path(), (secs * 25) as usize, false);
    let api_port = free_port();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[dataplane]\niface = \"{iface}\"\nmode = \"native\"\nmax_streams = 1024\n\
             [sip]\nid = \"34020000002000000001\"\nlisten = [\"{gw}:5060\"]\npassword = \"pw\"\n\
             query_info = false\nkeepalive_interval_secs = 10\n\
             [api]\nlisten = \"127.0.0.1:{api_port}\"\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n\
             [store]\npath = \"{store}\"\n\
             [media]\nip = \"{gw}\"\nports = \"36400-37399\"\nno_media_timeout_secs = 0\n",
            iface = net.veth_a,
            gw = net.addr_a,
            store = dir.path().join("registry.redb").display(),
        ),
    )
    .unwrap();
    let sip: std::net::SocketAddr = format!("{}:5060", net.addr_a).parse().unwrap();
    let mut d = Daemon::start_in(Some(&net.a), &cfg, sip, api_port).unwrap();
    let pid = d.pid().unwrap();
    let media_arg = media.to_str().unwrap().to_string();
    let mut sims: Vec<(sim::KillOnDrop, PathBuf)> = Vec::new();
    for g in GROUPS {
        let n = g.devices.to_string();
        let mut args = vec![
            "--devices",
            &n,
            "--channels",
            "1",
            "--keepalive-secs",
            "10",
            "--media",
            &media_arg,
        ];
        args.extend_from_slice(g.args);
        sims.push(sim::spawn_in(&net, g.first, dir.path(), &args));
    }
    let total: u32 = GROUPS.iter().map(|g| g.devices).sum();
    let all_online = |d: &Daemon| {
        d.get("/api/devices?limit=0")
            .is_ok_and(|v| v["online"] == total && v["count"] == total)
    };
    d.wait_until(Duration::from_secs(120), "2000 devices online", all_online)
        .unwrap();
    // (stream ID, group, status file)
    let mut streams: Vec<(String, &Group, PathBuf)> = Vec::new();
    for (g, (_, status)) in GROUPS.iter().zip(&sims) {
        if !g.streams {
            continue;
        }
        for i in 0..g.devices {
            let dev = device(g.first, i);
            let s = d.open_stream(&dev, &sim::channel(&dev, 1), g.transport, g.extra);
            streams.push((s["id"].as_str().unwrap().to_string(), g, status.clone()));
        }
    }
    assert_eq!(streams.len(), 300);
    // Warm-up (buffers and the allocator's arenas reach their working
    // size: the first runs showed RSS rising for ~30 s, then flat), then
    // the curve. The first 10 s are sampled too, for the record.
    let (rss_open, _) = rss_and_fds(pid);
    std::thread::sleep(Duration::from_secs(30));
    let (rss0, fds0) = rss_and_fds(pid);
    let mut curve = vec![(0u64, rss0, fds0)];
    let t0 = std::time::Instant::now();
    let at_rest = |d: &Daemon| {
        streams.iter().all(|(id, _, status)| {
            let sent = sim::stream(status, id);
            let Ok(v) = d.get(&format!("/api/streams/{id}")) else {
                return false;
            };
            sent["state"] == "idle" && v["media"]["packets"] == sent["packets_sent"]
        })
    };
    loop {
        std::thread::sleep(Duration::from_secs(10));
        let (rss, fds) = rss_and_fds(pid);
        curve.push((t0.elapsed().as_secs(), rss, fds));
        assert!(
            d.child.as_mut().unwrap().try_wait().unwrap().is_none(),
            "the daemon exited:\n{}",
            d.log_tail(40)
        );
        let done = streams
            .iter()
            .all(|(id, _, status)| sim::stream(status, id)["state"] == "idle");
        if done || t0.elapsed() > Duration::from_secs(secs + 120) {
            break;
        }
    }
    d.wait_until(Duration::from_secs(30), "every packet counted", at_rest)
        .unwrap_or_else(|e| {
            let bad: Vec<String> = streams
                .iter()
                .filter_map(|(id, g, status)| {
                    let sent = sim::stream(status, id);
                    let v = d.get(&format!("/api/streams/{id}")).unwrap_or_default();
                    (v["media"]["packets"] != sent["packets_sent"]).then(|| {
                        format!(
                            "{id} ({}): sent {} ({}), got {}",
                            g.name, sent["packets_sent"], sent["state"], v["media"]["packets"]
                        )
                    })
                })
                .take(10)
                .collect();
            panic!("{e}\n{}", bad.join("\n"))
        });
    let (rss1, fds1) = rss_and_fds(pid);
    curve.push((t0.elapsed().as_secs(), rss1, fds1));
    let line: Vec<String> = curve
        .iter()
        .map(|(t, r, f)| format!("{t}s:{:.1}MiB/{f}fd", *r as f64 / 1024.0))
        .collect();
    eprintln!(
        "soak {secs} s, {total} devices, {} streams: RSS {:.1} MiB when all were open, \
         {:.1} -> {:.1} MiB after the 30 s warm-up ({:+.2} %), fds {fds0} -> {fds1}; curve from the warm-up {}",
        streams.len(),
        rss_open as f64 / 1024.0,
        rss0 as f64 / 1024.0,
        rss1 as f64 / 1024.0,
        (rss1 as f64 / rss0 as f64 - 1.0) * 100.0,
        line.join(" ")
    );

    for (id, g, status) in &streams {
        let sent = sim::stream(status, id);
        let v = d.get(&format!("/api/streams/{id}")).unwrap();
        let m = &v["media"];
        assert_eq!(m["packets"], sent["packets_sent"], "{}: {v}", g.name);
        assert_eq!(sent["send_errors"], 0, "{sent}");
        match g.name {
            "udp" | "encrypted" => {
                assert_eq!(v["kernel"]["packets"], sent["packets_sent"], "{v}");
                assert_eq!(m["lost"], 0, "{v}");
            }
            "lossy" => {
                assert_eq!(v["kernel"]["packets"], sent["packets_sent"], "{v}");
                assert_eq!(m["lost"], sent["packets_dropped"], "{v}");
                assert_eq!(v["kernel"]["lost"], sent["packets_dropped"], "{v}");
            }
            _ => assert_eq!(m["lost"], 0, "{v}"),
        }
        if g.name == "encrypted" {
            let dec = &m["decrypt"];
            assert_eq!(dec["srtp_packets"], sent["packets_sent"], "{dec}");
            assert!(
                dec["failures"].as_object().is_none_or(|f| f.is_empty()),
                "{dec}"
            );
        }
    }
    assert!(all_online(&d), "{}", d.get("/api/devices?limit=0").unwrap());
    assert!(
        (rss1 as f64) < rss0 as f64 * 1.05,
        "RSS grew {rss0} -> {rss1} KiB"
    );
    assert_eq!(fds1, fds0, "file descriptors");
    assert!(!d.log_text().contains("panicked"), "{}", d.log_tail(40));

    for (mut c, _) in sims {
        let _ = Command::new("kill").arg(c.id().to_string()).status();
        let _ = c.wait();
    }
    assert!(d.stop(), "daemon did not stop cleanly:\n{}", d.log_tail(30));
}
