//! End to end through the CLI (root only): a veth pair between two
//! namespaces, native XDP attach on one end, a sender in the other with a
//! known RTP pattern; `gateway streams --json` must report exactly it, and
//! `gateway detach` must leave nothing attached.

use std::{
    net::UdpSocket,
    process::Command,
    time::{Duration, Instant},
};

use gateway::sys;
use gateway_tests::{
    cli::gateway_in,
    frames::Rtp,
    netns::{in_netns, NetnsPair},
    require_root,
};
use serde_json::Value;

fn ok(ns: &str, args: &[&str]) -> String {
    let o = gateway_in(ns, args);
    assert!(o.ok(), "gateway {args:?} failed: {}", o.stderr);
    o.stdout
}

/// Sends `seqs` (with markers where `marker(seq)`) from namespace `ns`,
/// from a thread pinned to CPU 0 so one CPU handles the flow.
fn send(ns: &str, dst: &str, ssrc: u32, seqs: &[u16], marker: fn(u16) -> bool) {
    let dst = dst.to_string();
    let seqs = seqs.to_vec();
    in_netns(ns, move || {
        sys::pin_thread_to_cpu(0).expect("pin sender");
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for q in seqs {
            let r = Rtp {
                marker: marker(q),
                payload: 200,
                ..Rtp::new(q, ssrc)
            };
            s.send_to(&r.bytes(), &dst).unwrap();
        }
    });
}

fn streams(ns: &str, iface: &str) -> Vec<Value> {
    let out = ok(
        ns,
        &["streams", "--iface", iface, "--json", "--interval", "0.05"],
    );
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn veth_attach_counts_a_known_pattern_and_detaches_cleanly() {
    if !require_root("veth_attach_counts_a_known_pattern_and_detaches_cleanly") {
        return;
    }
    let net = NetnsPair::new("e2e").expect("namespaces");
    let (ns, iface) = (net.a.as_str(), net.veth_a.as_str());
    ok(
        ns,
        &[
            "attach",
            "--iface",
            iface,
            "--mode",
            "native",
            "--media-ports",
            "30000-30099",
            "--unknown",
            "drop",
        ],
    );
    let status: Value =
        serde_json::from_str(&ok(ns, &["status", "--iface", iface, "--json"])).unwrap();
    assert_eq!(status["xdp_mode"], "native");
    // TC through a TCX link from 6.6 on, else a clsact qdisc and netlink
    // filters (the arm64 VM of `cargo xtask vm-test` runs this on 6.1).
    let kernel = aya::util::KernelVersion::current().expect("kernel version");
    let tcx = kernel >= aya::util::KernelVersion::new(6, 6, 0);
    assert_eq!(
        status["tc"],
        if tcx { "tcx" } else { "netlink" },
        "kernel {kernel:?}"
    );
    ok(
        ns,
        &[
            "flow",
            "add",
            "--iface",
            iface,
            "--local",
            "198.18.0.1:30000",
            "--name",
            "cam-1",
        ],
    );
    ok(
        ns,
        &[
            "flow",
            "add",
            "--iface",
            iface,
            "--local",
            "198.18.0.1:30002",
            "--ssrc",
            "2002",
        ],
    );

    // 0..300 with 50, 51 and 120 lost, 80/81 swapped, 100 duplicated once
    // and 150 twice; a marker on every 10th packet.
    let mut seqs: Vec<u16> = (0..300).filter(|q| ![50, 51, 120].contains(q)).collect();
    let i = seqs.iter().position(|&q| q == 80).unwrap();
    seqs.swap(i, i + 1);
    let i = seqs.iter().position(|&q| q == 100).unwrap();
    seqs.insert(i + 1, 100);
    let i = seqs.iter().position(|&q| q == 150).unwrap();
    seqs.splice(i + 1..i + 1, [150, 150]);
    let markers = |q: u16| q % 10 == 9;
    send(&net.b, "198.18.0.1:30000", 1001, &seqs, markers);
    let second: Vec<u16> = (1000..1100).collect();
    send(&net.b, "198.18.0.1:30002", 2002, &second, |_| false);
    // Unknown flow in the media range: dropped in the kernel.
    send(&net.b, "198.18.0.1:30050", 3003, &[1, 2, 3, 4], |_| false);

    // Wait (bounded) for the kernel to have counted everything sent.
    let deadline = Instant::now() + Duration::from_secs(10);
    let rows = loop {
        let rows = streams(ns, iface);
        let total: u64 = rows.iter().map(|r| r["packets"].as_u64().unwrap()).sum();
        if total == (seqs.len() + second.len()) as u64 || Instant::now() > deadline {
            break rows;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let cam = rows
        .iter()
        .find(|r| r["name"] == "cam-1")
        .expect("cam-1 row");
    assert_eq!(cam["packets"], seqs.len() as u64);
    assert_eq!(cam["bytes"], (seqs.len() * 212) as u64);
    assert_eq!(cam["lost"], 3);
    assert_eq!(cam["expected"], 300);
    assert_eq!(cam["out_of_order"], 1);
    assert_eq!(cam["duplicates"], 3);
    assert_eq!(cam["frames"], 30); // markers on 9, 19, ..., 299 (none of them lost)
    assert_eq!(cam["current_ssrc"], 1001);
    assert_eq!(cam["highest_seq"], 299);
    let s2 = rows
        .iter()
        .find(|r| r["ssrc"] == 2002)
        .expect("ssrc-split row");
    assert_eq!(
        (s2["packets"].as_u64(), s2["lost"].as_u64()),
        (Some(100), Some(0))
    );

    let status: Value =
        serde_json::from_str(&ok(ns, &["status", "--iface", iface, "--json"])).unwrap();
    assert_eq!(status["counters"]["unknown_dropped"], 4);
    assert_eq!(
        status["counters"]["matched"],
        (seqs.len() + second.len()) as u64
    );
    assert_eq!(status["flows"], 2);

    // Egress: media the gateway sends from a media port is counted per
    // destination by the TC program, and DSCP-marked once asked to.
    ok(ns, &["set", "--iface", iface, "--dscp", "af41"]);
    in_netns(ns, || {
        let s = UdpSocket::bind("198.18.0.1:30010").unwrap();
        for q in 0..25 {
            s.send_to(&Rtp::new(q, 9).bytes(), "198.18.0.2:5004")
                .unwrap();
        }
    });
    let status: Value =
        serde_json::from_str(&ok(ns, &["status", "--iface", iface, "--json"])).unwrap();
    let egress = status["egress"].as_array().unwrap();
    let dest = egress
        .iter()
        .find(|e| e["destination"] == "198.18.0.2:5004")
        .expect("egress destination");
    assert_eq!(dest["packets"], 25);
    assert_eq!(dest["bytes"], 25 * 112);
    assert_eq!(status["counters"]["egress_marked"], 25);
    assert_eq!(status["dscp"], 34);

    // Flow removal and listing.
    ok(
        ns,
        &[
            "flow",
            "del",
            "--iface",
            iface,
            "--local",
            "198.18.0.1:30002",
            "--ssrc",
            "2002",
        ],
    );
    let list: Value =
        serde_json::from_str(&ok(ns, &["flow", "list", "--iface", iface, "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);

    ok(ns, &["detach", "--iface", iface]);
    let link = Command::new("ip")
        .args(["-n", ns, "-d", "link", "show", iface])
        .output()
        .unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(!link.contains("prog/xdp"), "XDP still attached: {link}");
    let tc = Command::new("ip")
        .args(["netns", "exec", ns, "bpftool", "net", "show", "dev", iface])
        .output()
        .unwrap();
    let tc = String::from_utf8_lossy(&tc.stdout);
    assert!(
        !tc.contains("gateway"),
        "a gateway program is still attached: {tc}"
    );
    assert!(
        !std::path::Path::new(&format!("/sys/fs/bpf/gateway/{ns}/{iface}")).exists(),
        "pins left behind"
    );
}
