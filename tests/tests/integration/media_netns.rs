//! Control plane and kernel agree (root): the daemon runs in one network
//! namespace with XDP attached to its veth, a sipp device registers from
//! the other namespace and accepts the INVITE, the test sends PS/RTP from
//! there. The session's flow enters the XDP table when it is established
//! and leaves it at teardown; the kernel counts exactly the packets sent
//! and exactly the loss injected, like the receiver does; unknown media to
//! the media port range is dropped in the kernel; a session without media
//! is ended on the kernel's last-packet time.

use std::{net::UdpSocket, time::Duration};

use gateway_tests::{
    cli::{gateway_in, kernel_flows},
    netns::{in_netns, NetnsPair},
    require_root,
    sipp::{
        free_port, registering_device, stream_port, write_device_scenario, Daemon, Invite, TempDir,
    },
    testmedia::{ps_rtp, synthetic_aus},
};

const DEV: &str = "34020000001320000501";
const CH1: &str = "34020000001310000001";
const CH2: &str = "34020000001310000002";

fn rtp_ps(frames: usize, ssrc: u32) -> Vec<Vec<u8>> {
    ps_rtp(&synthetic_aus(frames, 4000), ssrc, 7)
}

/// Sends from inside namespace `ns`, skipping the packets `skip` selects.
fn send_from(ns: &str, to: std::net::SocketAddr, pk: Vec<Vec<u8>>, skip: fn(usize) -> bool) {
    in_netns(ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for (i, p) in pk.iter().enumerate() {
            if !skip(i) {
                s.send_to(p, to).unwrap();
                if i % 50 == 49 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    });
}

fn unknown_dropped(ns: &str, iface: &str) -> u64 {
    let out = gateway_in(ns, &["status", "--iface", iface, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
    v["counters"]["unknown_dropped"].as_u64().unwrap_or(0)
}

#[test]
fn root_session_flows_and_kernel_counters_agree() {
    if !require_root("root_session_flows_and_kernel_counters_agree") {
        return;
    }
    let net = NetnsPair::new("med").expect("namespaces");
    let dir = TempDir::new("medns");
    let api_port = free_port();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[dataplane]\niface = \"{iface}\"\nmode = \"native\"\nmedia_ports = \"33000-33099\"\n\
             poll_interval_secs = 1.0\n\
             [sip]\nid = \"34020000002000000001\"\nlisten = [\"{gw}:5060\"]\npassword = \"pw\"\nquery_info = false\n\
             [api]\nlisten = \"127.0.0.1:{api_port}\"\n\
             [store]\npath = \"{store}\"\n\
             [media]\nip = \"{gw}\"\nports = \"33000-33019\"\nno_media_timeout_secs = 3\n",
            iface = net.veth_a,
            gw = net.addr_a,
            store = dir.path().join("registry.redb").display()
        ),
    )
    .unwrap();
    let sip: std::net::SocketAddr = format!("{}:5060", net.addr_a).parse().unwrap();
    let mut d = Daemon::start_in(Some(&net.a), &cfg, sip, api_port).unwrap();

    let ooc = dir.path().join("dev.xml");
    write_device_scenario(&ooc, 1, false, Invite::Accept);
    let mut sipp = registering_device(dir.path(), sip, 5060, DEV, &ooc, 25_000).in_netns(&net.b);
    // sipp binds its local address on the device side.
    if let Some(i) = sipp.args.iter().position(|a| a == "-i") {
        sipp.args[i + 1] = net.addr_b.clone();
    }
    let child = sipp.spawn().unwrap();
    d.wait_until(
        Duration::from_secs(30),
        "device registered from the other namespace",
        |d| {
            d.device(DEV)
                .is_ok_and(|v| v["online"] == true && v["catalog"]["state"] == "complete")
        },
    )
    .unwrap();

    // Unknown media to the media port range: dropped in the kernel.
    let before = unknown_dropped(&net.a, &net.veth_a);
    let stray = rtp_ps(2, 1);
    let n_stray = stray.len() as u64;
    send_from(
        &net.b,
        format!("{}:33050", net.addr_a).parse().unwrap(),
        stray,
        |_| false,
    );
    assert_eq!(unknown_dropped(&net.a, &net.veth_a) - before, n_stray);

    // A session: its flow enters the kernel table.
    let s = d.open_stream(DEV, CH1, "udp", "");
    let id = s["id"].as_str().unwrap().to_string();
    let ssrc = s["ssrc"].as_u64().unwrap() as u32;
    let port = stream_port(&s);
    assert_eq!(
        s["local"].as_str().unwrap(),
        format!("{}:{port}", net.addr_a)
    );
    assert!(kernel_flows(&net.a, &net.veth_a).contains(&format!(":{port}")));
    assert_eq!(s["kernel"]["flow"], format!("0.0.0.0:{port}"));

    // 60 frames, 3 packets lost on the way: kernel and receiver agree.
    let pk = rtp_ps(60, ssrc);
    let sent = pk.len() as u64 - 3;
    send_from(
        &net.b,
        format!("{}:{port}", net.addr_a).parse().unwrap(),
        pk,
        |i| (100..103).contains(&i),
    );
    d.wait_until(
        Duration::from_secs(20),
        "kernel and receiver counted",
        |d| {
            d.get(&format!("/api/streams/{id}"))
                .is_ok_and(|v| v["kernel"]["packets"] == sent && v["media"]["packets"] == sent)
        },
    )
    .unwrap();
    let v = d.get(&format!("/api/streams/{id}")).unwrap();
    assert_eq!(v["kernel"]["lost"], 3, "{v}");
    assert_eq!(v["media"]["lost"], 3, "{v}");
    assert_eq!(v["kernel"]["ssrc_mismatches"], 0);
    assert!(v["media"]["frames"].as_u64().unwrap() >= 58);

    // Teardown removes the flow.
    let (code, _) = d
        .request("DELETE", &format!("/api/streams/{id}"), None)
        .unwrap();
    assert_eq!(code, 200);
    assert!(!kernel_flows(&net.a, &net.veth_a).contains(&format!(":{port}")));

    // No media at all: ended on the kernel's clock.
    let s = d.open_stream(DEV, CH2, "udp", "");
    let id2 = s["id"].as_str().unwrap().to_string();
    d.wait_until(Duration::from_secs(30), "no-media timeout", |d| {
        d.get(&format!("/api/streams/{id2}"))
            .is_ok_and(|v| v["state"] == "closed")
    })
    .unwrap();
    let v = d.get(&format!("/api/streams/{id2}")).unwrap();
    let reason = v["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("no media for") && reason.contains("kernel"),
        "{reason}"
    );
    assert_eq!(d.stat("gateway_sip_sessions_total", "event=no_media"), 1);

    assert!(d.stop(), "daemon did not stop cleanly:\n{}", d.log_tail(30));
    let mut child = child;
    let _ = child.kill();
    let _ = child.wait();
    assert!(!d.log_text().contains("panicked"));
}
