//! `/metrics` against a real Prometheus (root, namespaces): the gateway
//! with XDP on a veth and Prometheus run in one namespace, simulated
//! cameras in the other. While they stream, every condition of the shipped
//! alert rules is made true (a device offline, a lossy stream, an open
//! stream without media, a flood of unknown RTP dropped by XDP, a flood of
//! bad-password REGISTERs, a camera encrypting with a wrong key), and then:
//!
//! - every alert expression returns data through Prometheus' HTTP API
//!   (GatewayDown: its expression without the threshold, as the gateway is
//!   up; GatewayKernelRelayFallbacks likewise: nothing is relayed here);
//! - every expression of every dashboard returns data;
//! - the scraped packet counter of a stream equals what the camera sent;
//! - `promtool check metrics` accepts the exposition;
//! - after a stream ends its series are gone from `/metrics`.

use std::{
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use gateway_tests::{
    netns::{in_netns, NetnsPair},
    prom::{
        dashboard_exprs, dashboards_dir, http_get, instantiate, promtool_check_metrics, rule_exprs,
        without_threshold, Prometheus,
    },
    require_root, sim,
    sipclient::Client,
    sipp::{free_port, Daemon, TempDir, DOMAIN, PLATFORM},
    testmedia::camera_file,
};
use gb28181::digest::Challenge;
use serde_json::Value;

const LOSSY: &str = "34020000001320000951";
const ONCE: &str = "34020000001320000952";
const IDLE: &str = "34020000001320000953";
const GONE: &str = "34020000001320000954";
const WRONG_KEY: &str = "34020000001320000955";
const BAD_PASSWORD: &str = "34020000001320000956";
const KEY: &str = "00112233445566778899aabbccddeeff";
const SALT: &str = "0102030405060708090a0b0c0d0e";

fn sim(net: &NetnsPair, dir: &Path, dev: &str, args: &[&str]) -> (sim::KillOnDrop, PathBuf) {
    let mut all = vec!["--channels", "1", "--keepalive-secs", "2"];
    all.extend_from_slice(args);
    sim::spawn_in(net, dev, dir, &all)
}

fn scrape(ns: &str, addr: SocketAddr) -> String {
    in_netns(ns, move || {
        let (code, text) = http_get(&format!("http://{addr}/metrics"), &[]).expect("GET /metrics");
        assert_eq!(code, 200, "GET /metrics: {text}");
        text
    })
}

fn first_value(r: &Value) -> f64 {
    r[0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

#[test]
fn root_prometheus_scrapes_and_every_rule_and_panel_has_data() {
    if !require_root("root_prometheus_scrapes_and_every_rule_and_panel_has_data") {
        return;
    }
    let net = NetnsPair::new("prom").expect("namespaces");
    let dir = TempDir::new("prom");
    let media = camera_file(dir.path(), 75, false);
    let (api_port, metrics_port) = (free_port(), free_port());
    let metrics: SocketAddr = format!("127.0.0.1:{metrics_port}").parse().unwrap();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[dataplane]\niface = \"{iface}\"\nmode = \"native\"\nmedia_ports = \"36100-36199\"\nunknown = \"drop\"\npoll_interval_secs = 1.0\n\
             [sip]\nid = \"{PLATFORM}\"\nlisten = [\"{gw}:5060\"]\npassword = \"pw\"\nquery_info = false\n\
             [api]\nlisten = \"127.0.0.1:{api_port}\"\n\
             [metrics]\nlisten = \"{metrics}\"\n\
             [store]\npath = \"{store}\"\n\
             [media]\nip = \"{gw}\"\nports = \"36100-36159\"\nno_media_timeout_secs = 0\n\
             [[keys]]\ndevice = \"{WRONG_KEY}\"\nprofile = \"srtp-sm4\"\nkey = \"{KEY}\"\nsalt = \"{SALT}\"\n",
            iface = net.veth_a,
            gw = net.addr_a,
            store = dir.path().join("registry.redb").display(),
        ),
    )
    .unwrap();
    let sip: SocketAddr = format!("{}:5060", net.addr_a).parse().unwrap();
    let mut d = Daemon::start_in(Some(&net.a), &cfg, sip, api_port).unwrap();
    let prom = Prometheus::start_in(
        &dir.path().join("prometheus"),
        &[metrics],
        &[dashboards_dir().join("alerts.yml")],
        Some(&net.a),
    )
    .expect("prometheus");
    let m = media.to_str().unwrap();
    let key = format!("1:{KEY}:{SALT}");
    let mut sims = vec![
        sim(
            &net,
            dir.path(),
            LOSSY,
            &["--media", m, "--loop", "--drop-every", "20"],
        ),
        sim(&net, dir.path(), ONCE, &["--media", m]),
        sim(&net, dir.path(), IDLE, &["--alarm-after", "2"]),
        sim(&net, dir.path(), GONE, &["--duration", "4"]),
        sim(
            &net,
            dir.path(),
            WRONG_KEY,
            &[
                "--media",
                m,
                "--loop",
                "--encrypt",
                "srtp-sm4",
                "--key",
                &key,
                "--wrong-key",
            ],
        ),
    ];
    d.wait_until(Duration::from_secs(30), "cameras online", |d| {
        [LOSSY, ONCE, IDLE, WRONG_KEY].iter().all(|id| {
            d.device(id)
                .is_ok_and(|v| v["online"] == true && v["catalog"]["state"] == "complete")
        })
    })
    .unwrap();
    let mut ids = std::collections::HashMap::new();
    for dev in [LOSSY, ONCE, IDLE, WRONG_KEY] {
        let (code, v) = d
            .post_json(
                "/api/streams",
                &format!(
                    r#"{{"device":"{dev}","channel":"{}"}}"#,
                    sim::channel(dev, 1)
                ),
            )
            .unwrap();
        assert_eq!(code, 201, "{dev}: {v}");
        ids.insert(dev, v["id"].as_str().unwrap().to_string());
    }

    // Prometheus has samples from before the floods (its first scrape
    // comes a few seconds after start), so it sees them as increases.
    prom.wait_for(
        "gateway_kernel_packets_total{reason=\"unknown_dropped\"}",
        Duration::from_secs(30),
    )
    .unwrap();
    // A flood of bad-password REGISTERs (bounded: 400), from the cameras'
    // namespace.
    let (addr_b, gw) = (net.addr_b.clone(), sip);
    let refused = in_netns(&net.b, move || {
        let c = Client::bound(addr_b.parse().unwrap(), gw);
        let uri = format!("sip:{PLATFORM}@{DOMAIN}");
        let r = c
            .send(&c.register(BAD_PASSWORD, None, Some(3600), &uri))
            .unwrap();
        let ch = Challenge::parse(r.www_authenticate.as_deref().unwrap()).unwrap();
        (0..400u32)
            .filter(|i| {
                let creds = ch.answer(BAD_PASSWORD, "wrong", "REGISTER", &uri, i + 1, "x");
                let req = c.register(BAD_PASSWORD, Some(&creds.to_header()), Some(3600), &uri);
                c.send(&req).and_then(|h| h.status) == Some(403)
            })
            .count()
    });
    assert_eq!(refused, 400);
    // Unknown RTP to a media port without a flow (bounded: 80 000 packets):
    // XDP drops it.
    let (addr_b, target) = (
        net.addr_b.clone(),
        SocketAddr::new(net.addr_a.parse().unwrap(), 36190),
    );
    in_netns(&net.b, move || {
        let s = UdpSocket::bind(SocketAddr::new(addr_b.parse().unwrap(), 0)).unwrap();
        let mut p = vec![0u8; 200];
        p[0] = 0x80;
        p[1] = 96;
        p[8..12].copy_from_slice(&0x5eed_u32.to_be_bytes());
        for i in 0..80_000u32 {
            p[2..4].copy_from_slice(&(i as u16).to_be_bytes());
            let _ = s.send_to(&p, target);
            if i % 200 == 199 {
                // Paced, so the veth's ring does not overflow.
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    });

    // Values agree: the file sent once, counted packet for packet.
    let once = ids[ONCE].clone();
    let once_status = sims[1].1.clone();
    d.wait_until(Duration::from_secs(30), "file sent once", |_| {
        sim::stream(&once_status, &once)["state"] == "idle"
    })
    .unwrap();
    let sent = sim::stream(&once_status, &once)["packets_sent"]
        .as_u64()
        .unwrap();
    let q = format!("gateway_stream_received_packets_total{{stream=\"{once}\"}} == {sent}");
    let r = prom.wait_for(&q, Duration::from_secs(30)).unwrap();
    assert_eq!(first_value(&r), sent as f64);
    let info = prom
        .wait_for(
            &format!("gateway_stream_info{{stream=\"{once}\"}}"),
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(info[0]["metric"]["counted_by"], "kernel", "{info}");

    // Every alert rule's condition holds (GatewayDown: the gateway is up,
    // GatewayKernelRelayFallbacks: this gateway relays nothing, see
    // kernel_relay.rs, and GatewaySipFlood: nothing floods it, see
    // sip_guard.rs; so only their expressions without the threshold).
    for (alert, expr) in rule_exprs(&dashboards_dir().join("alerts.yml")) {
        let e = if [
            "GatewayDown",
            "GatewayKernelRelayFallbacks",
            "GatewaySipFlood",
        ]
        .contains(&alert.as_str())
        {
            without_threshold(&expr)
        } else {
            expr.clone()
        };
        let r = prom
            .wait_for(&e, Duration::from_secs(90))
            .unwrap_or_else(|err| {
                panic!(
                    "{alert}: {err:#}\nwithout threshold: {}",
                    prom.query(&without_threshold(&expr)).unwrap_or_default()
                )
            });
        match alert.as_str() {
            "GatewayDeviceOffline" => assert!(r.to_string().contains(GONE), "{r}"),
            "GatewayStreamLoss" => assert!(r.to_string().contains(&ids[LOSSY]), "{r}"),
            "GatewayStreamNoMedia" => assert!(r.to_string().contains(&ids[IDLE]), "{r}"),
            "GatewayDecryptFailures" => assert!(r.to_string().contains(&ids[WRONG_KEY]), "{r}"),
            "GatewayDeviceAlarm" => assert!(r.to_string().contains(IDLE), "{r}"),
            _ => {}
        }
    }
    // Every dashboard expression returns data (template variables: all).
    for (panel, expr) in dashboard_exprs(&dashboards_dir()) {
        let e = instantiate(&expr, &[("job", "gateway")]);
        prom.wait_for(&e, Duration::from_secs(30))
            .unwrap_or_else(|err| panic!("{panel}: {err:#}"));
    }

    // The exposition passes promtool.
    let text = scrape(&net.a, metrics);
    promtool_check_metrics(&text).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(text.contains("gateway_kernel_attached{"));
    assert!(text.contains(&format!("stream=\"{once}\"")));

    // Cardinality: an ended stream's series go away.
    let (code, _) = d
        .request("DELETE", &format!("/api/streams/{once}"), None)
        .unwrap();
    assert_eq!(code, 200);
    let (ns, gone) = (net.a.clone(), format!("stream=\"{once}\""));
    d.wait_until(
        Duration::from_secs(10),
        "series of the ended stream gone",
        |_| !scrape(&ns, metrics).contains(&gone),
    )
    .unwrap();

    for (c, _) in &mut sims {
        let _ = Command::new("kill").arg(c.id().to_string()).status();
        let _ = c.wait();
    }
    drop(prom);
    assert!(d.stop(), "daemon did not stop cleanly:\n{}", d.log_tail(30));
    assert!(!d.log_text().contains("panicked"));
}
