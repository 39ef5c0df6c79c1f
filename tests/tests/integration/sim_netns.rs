//! End to end in namespaces (root): the device simulator (gb-sim) in one
//! namespace, the gateway with XDP on the veth in the other. Play over each
//! transport: the recorded elementary stream decodes with ffprobe with
//! exactly the frame count sent; the kernel's packet counter equals the
//! packets sent; injected loss shows up as exactly that loss in the kernel
//! and in the API; BYE from either side ends the session and takes its flow
//! out of the kernel table.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use gateway_tests::{
    cli::kernel_flows,
    netns::NetnsPair,
    require_root, sim,
    sipp::{free_port, stream_port, Daemon, TempDir},
    testmedia::{camera_file, ffprobe_frames},
};

const DEV: &str = "34020000001320000701";
const LOSSY: &str = "34020000001320000801";

fn sim(
    net: &NetnsPair,
    dir: &Path,
    dev: &str,
    media: &Path,
    extra: &[&str],
) -> (sim::KillOnDrop, PathBuf) {
    let media = media.to_str().unwrap();
    let mut args = vec!["--channels", "3", "--media", media];
    args.extend_from_slice(extra);
    sim::spawn_in(net, dev, dir, &args)
}

#[test]
fn root_simulated_camera_over_every_transport() {
    if !require_root("root_simulated_camera_over_every_transport") {
        return;
    }
    let net = NetnsPair::new("sim").expect("namespaces");
    let dir = TempDir::new("simns");
    let media = camera_file(dir.path(), 100, false);
    let api_port = free_port();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[dataplane]\niface = \"{iface}\"\nmode = \"native\"\nmedia_ports = \"36000-36099\"\n\
             [sip]\nid = \"34020000002000000001\"\nlisten = [\"{gw}:5060\"]\npassword = \"pw\"\nquery_info = false\n\
             [api]\nlisten = \"127.0.0.1:{api_port}\"\n\
             [store]\npath = \"{store}\"\n\
             [media]\nip = \"{gw}\"\nports = \"36000-36019\"\nno_media_timeout_secs = 0\n\
             [media.record]\ndir = \"{rec}\"\n",
            iface = net.veth_a,
            gw = net.addr_a,
            store = dir.path().join("registry.redb").display(),
            rec = dir.path().join("records").display(),
        ),
    )
    .unwrap();
    let sip: std::net::SocketAddr = format!("{}:5060", net.addr_a).parse().unwrap();
    let mut d = Daemon::start_in(Some(&net.a), &cfg, sip, api_port).unwrap();
    let (mut cam, cam_status) = sim(&net, dir.path(), DEV, &media, &[]);
    let (mut lossy, lossy_status) = sim(
        &net,
        dir.path(),
        LOSSY,
        &media,
        &["--drop-packets", "20,21,22,60", "--bye-after", "8"],
    );
    d.wait_until(Duration::from_secs(30), "simulated devices online", |d| {
        [DEV, LOSSY].iter().all(|id| {
            d.device(id)
                .is_ok_and(|v| v["online"] == true && v["catalog"]["state"] == "complete")
        })
    })
    .unwrap();
    assert_eq!(
        d.get(&format!("/api/devices/{DEV}/channels")).unwrap()["count"],
        3
    );

    for (i, transport) in ["udp", "tcp-passive", "tcp-active"].iter().enumerate() {
        let ch = sim::channel(DEV, i as u32 + 1);
        let s = d.open_stream(DEV, &ch, transport, "");
        let id = s["id"].as_str().unwrap().to_string();
        let port = stream_port(&s);
        // The file is sent once; then the simulator's stream goes idle.
        d.wait_until(Duration::from_secs(30), "file sent and received", |d| {
            let sent = sim::stream(&cam_status, &id);
            sent["state"] == "idle"
                && d.get(&format!("/api/streams/{id}"))
                    .is_ok_and(|v| v["media"]["packets"] == sent["packets_sent"])
        })
        .unwrap();
        let sent = sim::stream(&cam_status, &id);
        let v = d.get(&format!("/api/streams/{id}")).unwrap();
        assert_eq!(
            v["media"]["frames"], sent["frames_sent"],
            "{transport}: {v}"
        );
        assert_eq!(v["media"]["lost"], 0, "{transport}");
        if *transport == "udp" {
            // XDP classifies UDP only; the kernel saw every packet.
            d.wait_until(Duration::from_secs(10), "kernel counters", |d| {
                d.get(&format!("/api/streams/{id}"))
                    .is_ok_and(|v| v["kernel"]["packets"] == sent["packets_sent"])
            })
            .unwrap();
            assert!(kernel_flows(&net.a, &net.veth_a).contains(&format!(":{port}")));
        } else {
            assert!(v["kernel"].is_null(), "no XDP flow for RTP over TCP");
        }
        // BYE from the gateway.
        let (code, _) = d
            .request("DELETE", &format!("/api/streams/{id}"), None)
            .unwrap();
        assert_eq!(code, 200);
        assert!(!kernel_flows(&net.a, &net.veth_a).contains(&format!(":{port}")));
        d.wait_until(Duration::from_secs(10), "recording closed", |d| {
            d.get(&format!("/api/streams/{id}"))
                .is_ok_and(|v| v["media"]["files"][0].is_string())
        })
        .unwrap();
        let v = d.get(&format!("/api/streams/{id}")).unwrap();
        let file = v["media"]["files"][0].as_str().unwrap();
        assert_eq!(
            ffprobe_frames(file),
            sent["frames_sent"].as_u64().unwrap(),
            "{transport}: {file}"
        );
    }

    // Injected loss: exactly that loss in the kernel and in the API; then
    // the device hangs up and the flow leaves the kernel table.
    let ch = sim::channel(LOSSY, 1);
    let s = d.open_stream(LOSSY, &ch, "udp", "");
    let id = s["id"].as_str().unwrap().to_string();
    let port = stream_port(&s);
    d.wait_until(
        Duration::from_secs(30),
        "lossy file sent and counted",
        |d| {
            let sent = sim::stream(&lossy_status, &id);
            sent["state"] == "idle"
                && d.get(&format!("/api/streams/{id}")).is_ok_and(|v| {
                    v["media"]["packets"] == sent["packets_sent"]
                        && v["kernel"]["packets"] == sent["packets_sent"]
                })
        },
    )
    .unwrap();
    let sent = sim::stream(&lossy_status, &id);
    assert_eq!(sent["packets_dropped"], 4);
    let v = d.get(&format!("/api/streams/{id}")).unwrap();
    assert_eq!(v["media"]["lost"], 4, "{v}");
    assert_eq!(v["kernel"]["lost"], 4, "{v}");
    d.wait_until(Duration::from_secs(30), "BYE from the simulator", |d| {
        d.get(&format!("/api/streams/{id}"))
            .is_ok_and(|v| v["state"] == "closed")
    })
    .unwrap();
    let v = d.get(&format!("/api/streams/{id}")).unwrap();
    assert_eq!(v["reason"], "BYE from the device");
    assert!(!kernel_flows(&net.a, &net.veth_a).contains(&format!(":{port}")));

    for c in [&mut cam, &mut lossy] {
        let _ = Command::new("kill").arg(c.id().to_string()).status();
        let _ = c.wait();
    }
    assert!(d.stop(), "daemon did not stop cleanly:\n{}", d.log_tail(30));
    assert!(!d.log_text().contains("panicked"));
}
