//! The SIP flood guard in XDP (root): the gateway attached to a veth in one
//! namespace with `[dataplane.sip_guard]`, 200 gb-sim devices registering
//! and sending keepalives from the other, and `sip-flood` sending
//! REGISTERs from 1000 other addresses of that namespace as fast as it can
//! for 10 s. The registered devices' address is on the allow list and none
//! of them goes offline; the flood is dropped in the kernel, counted by
//! reason; what passes stays within the configured global rate. The same
//! flood with the guard switched off (`gateway set --sip-guard off`) shows
//! what it would cost the daemon: both CPU figures are printed.

use std::{process::Command, time::Duration};

use gateway_tests::{
    cli::gateway_in,
    cpu_secs,
    netns::NetnsPair,
    require_root, sim,
    sipp::{free_port, Daemon, TempDir},
};
use serde_json::Value;

const FIRST: &str = "34020000001320003001";
const DEVICES: u32 = 200;
const FLOOD_SOURCES: u32 = 1000;
const FLOOD_SECS: f64 = 10.0;
const GLOBAL_RATE: u64 = 500;

fn kernel(net: &NetnsPair) -> Value {
    let o = gateway_in(&net.a, &["status", "--iface", &net.veth_a, "--json"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    serde_json::from_str(&o.stdout).expect("status JSON")
}

fn counter(v: &Value, name: &str) -> u64 {
    v["counters"][name].as_u64().unwrap_or(0)
}

/// Runs the flood inside the sender's namespace; its JSON report.
fn flood(net: &NetnsPair) -> Value {
    let out = Command::new("ip")
        .args(["netns", "exec", &net.b, env!("CARGO_BIN_EXE_sip-flood")])
        .args([
            &format!("{}:5060", net.addr_a),
            "198.18.4.0",
            &FLOOD_SOURCES.to_string(),
            &FLOOD_SECS.to_string(),
            "50000000",
        ])
        .output()
        .expect("sip-flood");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("sip-flood report")
}

#[test]
fn root_sip_flood_is_dropped_in_the_kernel() {
    if !require_root("root_sip_flood_is_dropped_in_the_kernel") {
        return;
    }
    let net = NetnsPair::new("guard").expect("namespaces");
    // The flood's 1000 addresses (198.18.4.0/22) in the sender's namespace,
    // on-link for the gateway's.
    let batch: String = (0..FLOOD_SOURCES)
        .map(|i| {
            format!(
                "addr add 198.18.{}.{}/32 dev {}\n",
                4 + i / 256,
                i % 256,
                net.veth_b
            )
        })
        .collect();
    let dir = TempDir::new("sipguard");
    let batch_file = dir.path().join("addrs.batch");
    std::fs::write(&batch_file, batch).unwrap();
    let st = Command::new("ip")
        .args(["-n", &net.b, "-batch"])
        .arg(&batch_file)
        .status()
        .unwrap();
    assert!(st.success());
    let st = Command::new("ip")
        .args([
            "-n",
            &net.a,
            "route",
            "add",
            "198.18.4.0/22",
            "dev",
            &net.veth_a,
        ])
        .status()
        .unwrap();
    assert!(st.success());

    let api_port = free_port();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[dataplane]\niface = \"{iface}\"\nmode = \"native\"\nmedia_ports = \"36100-36199\"\n\
             [dataplane.sip_guard]\nrate = 20\nburst = 40\nglobal_rate = {GLOBAL_RATE}\n\
             [sip]\nid = \"34020000002000000001\"\nlisten = [\"{gw}:5060\"]\npassword = \"pw\"\n\
             query_info = false\nkeepalive_interval_secs = 2\nkeepalive_timeout_count = 5\n\
             [api]\nlisten = \"127.0.0.1:{api_port}\"\n\
             [store]\npath = \"{store}\"\n",
            iface = net.veth_a,
            gw = net.addr_a,
            store = dir.path().join("registry.redb").display(),
        ),
    )
    .unwrap();
    let sip: std::net::SocketAddr = format!("{}:5060", net.addr_a).parse().unwrap();
    let mut d = Daemon::start_in(Some(&net.a), &cfg, sip, api_port).unwrap();
    let n = DEVICES.to_string();
    let (mut devs, _status) = sim::spawn_in(
        &net,
        FIRST,
        dir.path(),
        &["--devices", &n, "--keepalive-secs", "2", "--expires", "60"],
    );
    let all_online = |d: &Daemon| {
        d.get("/api/devices?limit=0")
            .is_ok_and(|v| v["online"] == DEVICES && v["count"] == DEVICES)
    };
    let up = d.wait_until(Duration::from_secs(60), "200 devices online", all_online);
    assert!(
        up.is_ok(),
        "{up:?}\n{}\n{}",
        d.get("/api/devices?limit=0").unwrap(),
        kernel(&net)
    );
    // Their address is allowed (the allow list follows within a second).
    d.wait_until(Duration::from_secs(10), "allow list", |_| {
        kernel(&net)["sip_guard"]["allowed"] == 1
    })
    .unwrap();
    let g = &kernel(&net)["sip_guard"];
    assert_eq!(g["enabled"], true, "{g}");
    assert_eq!(g["ports"], serde_json::json!([5060]), "{g}");
    assert_eq!(
        (g["rate"].as_u64(), g["burst"].as_u64()),
        (Some(20), Some(40)),
        "{g}"
    );

    let pid = d.pid().expect("daemon pid");
    let offline = |d: &Daemon| {
        let v = d.get("/api/stats").unwrap();
        v["gateway_device_transitions_total"]
            .as_object()
            .map_or(0, |m| {
                m.iter()
                    .filter(|(k, _)| k.contains("to=offline"))
                    .map(|(_, v)| v.as_u64().unwrap_or(0))
                    .sum()
            })
    };
    let before = kernel(&net);
    let cpu0 = cpu_secs(pid);
    let r = flood(&net);
    let cpu_guarded = cpu_secs(pid) - cpu0;
    let after = kernel(&net);
    let sent = r["sent"].as_u64().unwrap();
    let delta = |name: &str| counter(&after, name) - counter(&before, name);
    let (allowed, passed) = (delta("sip_allowed"), delta("sip_passed"));
    let dropped = delta("sip_dropped_source") + delta("sip_dropped_global");
    eprintln!(
        "flood with the guard: {r}; kernel: allowed {allowed}, passed {passed}, dropped {dropped} \
         (source {}, global {}); daemon CPU {cpu_guarded:.2} s",
        delta("sip_dropped_source"),
        delta("sip_dropped_global")
    );
    assert!(sent > 10_000, "the flood sent too little to judge: {r}");
    // What came through is within the global rate (one second of burst).
    let secs = r["secs"].as_f64().unwrap();
    assert!(
        passed <= GLOBAL_RATE * (secs.ceil() as u64 + 2),
        "passed {passed} in {secs} s"
    );
    assert!(dropped >= sent / 2, "dropped {dropped} of {sent}");
    assert!(
        allowed > 0,
        "the devices' keepalives went on through the allow list"
    );
    // Every device stayed online through it.
    assert!(all_online(&d), "{}", d.get("/api/devices?limit=0").unwrap());
    assert_eq!(offline(&d), 0, "no device went offline");

    // The same flood without the guard: what it costs the daemon.
    let o = gateway_in(
        &net.a,
        &["set", "--iface", &net.veth_a, "--sip-guard", "off"],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(kernel(&net)["sip_guard"]["enabled"], false);
    let before = kernel(&net);
    let cpu0 = cpu_secs(pid);
    let r = flood(&net);
    let cpu_open = cpu_secs(pid) - cpu0;
    let after = kernel(&net);
    let delta = |name: &str| counter(&after, name) - counter(&before, name);
    assert_eq!(
        delta("sip_dropped_source") + delta("sip_dropped_global") + delta("sip_passed"),
        0,
        "the guard is off"
    );
    eprintln!(
        "flood without the guard: {r}; daemon CPU {cpu_open:.2} s (with the guard {cpu_guarded:.2} s)"
    );
    let o = gateway_in(
        &net.a,
        &["set", "--iface", &net.veth_a, "--sip-guard", "10/20/300"],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let g = &kernel(&net)["sip_guard"];
    assert_eq!(
        (g["enabled"].as_bool(), g["rate"].as_u64()),
        (Some(true), Some(10)),
        "{g}"
    );
    let o = gateway_in(
        &net.a,
        &["set", "--iface", &net.veth_a, "--sip-guard", "fast"],
    );
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("RATE/BURST/GLOBAL"), "{}", o.stderr);

    let _ = Command::new("kill").arg(devs.id().to_string()).status();
    let _ = devs.wait();
    assert!(d.stop(), "daemon did not stop cleanly:\n{}", d.log_tail(30));
}
