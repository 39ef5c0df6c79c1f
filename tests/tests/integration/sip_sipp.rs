//! GB/T 28181 signalling against a third-party SIP peer: sipp (Debian
//! package sip-tester) plays the devices, with scenarios from tests/sipp and
//! an out-of-call scenario answering the gateway's MANSCDP queries in
//! GB2312. Everything runs on loopback and needs no root.

use std::time::Duration;

use gateway_tests::{
    cli::gateway,
    have_tools,
    sipp::{
        free_port, registering_device, scenarios, write_answer_scenario,
        write_answer_scenario_with, write_csv, Daemon, Sipp, TempDir, CHANNELS,
    },
};

const DEV: &str = "34020000001320000001";

fn channel_names(d: &Daemon, id: &str) -> Vec<(String, String, String)> {
    let ch = d.get(&format!("/api/devices/{id}/channels")).unwrap();
    ch["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["device_id"].as_str().unwrap_or("").to_string(),
                c["name"].as_str().unwrap_or("").to_string(),
                c["status"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn expected_channels() -> Vec<(String, String, String)> {
    CHANNELS
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect()
}

/// One call of a scenario for the device(s) of `csv`, bounded in time.
fn run_once(
    dir: &std::path::Path,
    d: &Daemon,
    scenario: &str,
    csv: &std::path::Path,
    transport: &str,
) -> gateway_tests::sipp::SippResult {
    let csv = csv.to_str().unwrap();
    Sipp::new(
        dir,
        d.sip,
        &scenarios().join(scenario),
        free_port(),
        transport,
    )
    .args(&["-inf", csv, "-m", "1", "-timeout", "30s", "-timeout_error"])
    .run()
    .unwrap()
}

/// Register (digest), catalog in two GB2312 messages, DeviceInfo,
/// DeviceStatus and a catalog refresh on demand, keepalives, a wrong
/// password (403) that leaves the good registration alone, unregister.
fn lifecycle(transport: &str, qop: bool) {
    assert!(
        have_tools(&["sipp"]),
        "sipp is not installed (Debian package sip-tester)"
    );
    let dir = TempDir::new(&format!("life-{transport}-{qop}"));
    let (sip_port, api_port) = (free_port(), free_port());
    let cfg = Daemon::config(
        dir.path(),
        sip_port,
        api_port,
        &format!("qop = {qop}\n[[sip.devices]]\nid = \"{DEV}\"\npassword = \"pw-{DEV}\"\n"),
        "",
    );
    let mut d = Daemon::start(&cfg, sip_port, api_port).unwrap();
    let csv = dir.path().join("dev.csv");
    write_csv(&csv, &[(DEV.into(), format!("pw-{DEV}"))]);
    let answer = dir.path().join("answer.xml");
    write_answer_scenario(&answer, 2);
    let port = free_port();
    let sc = scenarios();
    let reg = Sipp::new(dir.path(), d.sip, &sc.join("register.xml"), port, transport).args(&[
        "-inf",
        csv.to_str().unwrap(),
        "-m",
        "1",
        "-d",
        "15000",
        "-oocsf",
        answer.to_str().unwrap(),
        "-timeout",
        "60s",
        "-timeout_error",
    ]);
    let child = reg.spawn().unwrap();

    // Registered, catalog assembled from two messages, DeviceInfo asked
    // after the catalog: all answered by sipp.
    d.wait_until(Duration::from_secs(30), "catalog and info", |d| {
        d.device(DEV).is_ok_and(|v| {
            v["catalog"]["state"] == "complete" && v["info"]["device_name"].is_string()
        })
    })
    .unwrap();
    let v = d.device(DEV).unwrap();
    assert_eq!(v["online"], true);
    assert_eq!(v["registered"], true);
    assert_eq!(
        v["transport"],
        if transport == "t1" { "tcp" } else { "udp" }
    );
    assert_eq!(v["expires"], 3600);
    assert_eq!(v["gb_version"], "3.0");
    assert_eq!(v["user_agent"], "sipp-gb28181");
    assert_eq!(v["charset"], "GB2312");
    assert_eq!(v["catalog"]["sum_num"], 3);
    assert_eq!(v["channels"], 3);
    assert_eq!(v["info"]["device_name"], "测试摄像机");
    assert_eq!(v["info"]["channel"], 3);
    assert_eq!(channel_names(&d, DEV), expected_channels());
    let ch = d.get(&format!("/api/devices/{DEV}/channels")).unwrap();
    assert_eq!(ch["channels"][0]["manufacturer"], "测试厂商");
    assert_eq!(ch["channels"][0]["parent_id"], DEV);

    // On demand, answered by the device while it is up.
    let st = d.get(&format!("/api/devices/{DEV}/status")).unwrap();
    assert_eq!(st["online"], "ONLINE");
    assert_eq!(st["encode"], "ON");
    let info = d.get(&format!("/api/devices/{DEV}/info")).unwrap();
    assert_eq!(info["manufacturer"], "SIPp");
    let (code, body) = d
        .request("POST", &format!("/api/devices/{DEV}/catalog"), None)
        .unwrap();
    assert_eq!(code, 202, "{body}");
    let sn = body["sn"].as_u64().unwrap();
    d.wait_until(Duration::from_secs(30), "catalog refresh", |d| {
        d.device(DEV)
            .is_ok_and(|v| v["catalog"]["sn"] == sn && v["catalog"]["state"] == "complete")
    })
    .unwrap();
    assert_eq!(channel_names(&d, DEV), expected_channels());
    assert!(d.stat("gateway_catalog_syncs_total", "outcome=complete") >= 2);

    let r = reg.result(child.wait_with_output().unwrap());
    assert!(r.ok(), "sipp register failed: {}\n{}", r.errors, r.stdout);

    // Keepalives.
    let ka = run_once(dir.path(), &d, "keepalive.xml", &csv, transport);
    assert!(ka.ok(), "sipp keepalive failed: {}", ka.errors);
    let v = d.device(DEV).unwrap();
    assert_eq!(v["keepalives"], 3);
    assert!(v["last_keepalive_ms"].as_i64().unwrap() > 0);
    assert_eq!(d.stat("gateway_sip_keepalives_total", ""), 3);

    // A wrong password gets 403 (sipp asserts it) and changes nothing.
    let bad_csv = dir.path().join("bad.csv");
    write_csv(&bad_csv, &[(DEV.into(), "wrong".into())]);
    let bad = run_once(dir.path(), &d, "wrong_password.xml", &bad_csv, transport);
    assert!(bad.ok(), "sipp wrong password failed: {}", bad.errors);
    assert_eq!(
        d.stat("gateway_sip_auth_failures_total", "reason=password"),
        1
    );
    assert_eq!(
        d.stat("gateway_sip_registrations_total", "result=forbidden"),
        1
    );
    let v = d.device(DEV).unwrap();
    assert_eq!(
        (v["online"].as_bool(), v["registrations"].as_u64()),
        (Some(true), Some(1))
    );

    // The CLI asks the running daemon.
    let out = gateway(&["devices", "--json", "--api", &d.api.to_string()]);
    assert!(out.ok(), "{}", out.stderr);
    let j = out.json();
    assert_eq!(j["count"], 1);
    assert_eq!(j["devices"][0]["id"], DEV);
    let out = gateway(&["devices", DEV, "--config", cfg.to_str().unwrap()]);
    let text = &out.stdout;
    assert!(out.ok() && text.contains("前门摄像机"), "{text}");

    // Unregister.
    let un = run_once(dir.path(), &d, "unregister.xml", &csv, transport);
    assert!(un.ok(), "sipp unregister failed: {}", un.errors);
    let v = d.device(DEV).unwrap();
    assert_eq!(v["online"], false);
    assert_eq!(v["registered"], false);
    assert_eq!(v["offline_reason"], "unregistered");
    // Queries to an offline device are refused with a JSON 409.
    let (code, body) = d
        .request("GET", &format!("/api/devices/{DEV}/status"), None)
        .unwrap();
    assert_eq!(code, 409);
    assert!(body["error"].as_str().unwrap().contains("offline"));
    assert!(d.stop(), "daemon did not stop cleanly:\n{}", d.log_tail(20));
    let log = d.log_text();
    assert!(
        log.contains("device online (registered)") && log.contains("reason=\"unregistered\""),
        "{log}"
    );
    assert!(!log.contains("panicked"));
}

#[test]
fn sipp_device_lifecycle_udp_with_qop() {
    lifecycle("u1", true);
}

#[test]
fn sipp_device_lifecycle_udp_without_qop() {
    lifecycle("u1", false);
}

#[test]
fn sipp_device_lifecycle_tcp() {
    lifecycle("t1", true);
}

/// 1 000 distinct devices from an injection CSV register and keep alive;
/// all show online; when their keepalives stop they go offline, each no
/// earlier than interval x count after its last keepalive.
#[test]
fn sipp_thousand_devices_online_then_offline() {
    assert!(
        have_tools(&["sipp"]),
        "sipp is not installed (Debian package sip-tester)"
    );
    const N: usize = 1000;
    let dir = TempDir::new("many");
    let (sip_port, api_port) = (free_port(), free_port());
    let cfg = Daemon::config(
        dir.path(),
        sip_port,
        api_port,
        "password = \"common-secret\"\nkeepalive_interval_secs = 2\nkeepalive_timeout_count = 2\nquery_info = false\n",
        "",
    );
    let mut d = Daemon::start(&cfg, sip_port, api_port).unwrap();
    let ids: Vec<(String, String)> = (0..N)
        .map(|i| {
            (
                format!("3402000000132{:07}", i + 1),
                "common-secret".to_string(),
            )
        })
        .collect();
    let csv = dir.path().join("many.csv");
    write_csv(&csv, &ids);
    let answer = dir.path().join("answer.xml");
    write_answer_scenario(&answer, 1);
    let sipp = Sipp::new(
        dir.path(),
        d.sip,
        &scenarios().join("many.xml"),
        free_port(),
        "u1",
    )
    .args(&[
        "-inf",
        csv.to_str().unwrap(),
        "-m",
        &N.to_string(),
        "-r",
        "200",
        "-l",
        &N.to_string(),
        "-d",
        "1000",
        "-oocsf",
        answer.to_str().unwrap(),
        "-timeout",
        "120s",
        "-timeout_error",
    ]);
    let child = sipp.spawn().unwrap();
    d.wait_until(Duration::from_secs(60), "1000 devices online", |d| {
        d.get("/api/devices").is_ok_and(|v| v["online"] == N)
    })
    .unwrap();
    let r = sipp.result(child.wait_with_output().unwrap());
    assert!(r.ok(), "sipp failed: {}\n{}", r.errors, r.stdout);
    d.wait_until(Duration::from_secs(60), "all devices offline", |d| {
        d.get("/api/devices").is_ok_and(|v| v["online"] == 0)
    })
    .unwrap();
    let list = d.get("/api/devices").unwrap();
    assert_eq!(list["count"], N);
    for dev in list["devices"].as_array().unwrap() {
        assert_eq!(dev["offline_reason"], "keepalive_timeout", "{dev}");
        assert_eq!(dev["registered"], true);
        assert!(dev["keepalives"].as_u64().unwrap() >= 20, "{dev}");
        let late =
            dev["offline_since_ms"].as_i64().unwrap() - dev["last_alive_ms"].as_i64().unwrap();
        assert!(
            late >= 4000,
            "offline {late} ms after the last keepalive: {dev}"
        );
        assert_eq!(dev["channels"], 3, "{dev}");
    }
    assert_eq!(
        d.stat("gateway_sip_registrations_total", "result=ok"),
        N as u64
    );
    assert_eq!(
        d.stat(
            "gateway_device_transitions_total",
            "reason=keepalive_timeout,to=offline"
        ),
        N as u64
    );
}

/// Devices, their channels and state survive a daemon restart.
#[test]
fn registry_survives_restart() {
    assert!(
        have_tools(&["sipp"]),
        "sipp is not installed (Debian package sip-tester)"
    );
    let dir = TempDir::new("restart");
    let (sip_port, api_port) = (free_port(), free_port());
    let cfg = Daemon::config(dir.path(), sip_port, api_port, "password = \"pw\"\n", "");
    let mut d = Daemon::start(&cfg, sip_port, api_port).unwrap();
    let answer = dir.path().join("answer.xml");
    write_answer_scenario(&answer, 2);
    let sipp = registering_device(dir.path(), d.sip, free_port(), DEV, &answer, 15_000);
    let child = sipp.spawn().unwrap();
    d.wait_until(Duration::from_secs(30), "catalog and info", |d| {
        d.device(DEV)
            .is_ok_and(|v| v["catalog"]["state"] == "complete" && v["info"].is_object())
    })
    .unwrap();
    let before = d.device(DEV).unwrap();
    assert!(d.stop());
    let r = sipp.result(child.wait_with_output().unwrap());
    // sipp may see the daemon go away; only its registration mattered.
    let _ = r;
    let d = Daemon::start(&cfg, sip_port, api_port).unwrap();
    let after = d.device(DEV).unwrap();
    for k in [
        "registered",
        "online",
        "addr",
        "contact",
        "expires",
        "registered_ms",
        "registrations",
        "info",
        "gb_version",
        "catalog",
    ] {
        assert_eq!(after[k], before[k], "{k} changed across the restart");
    }
    assert_eq!(after["online"], true);
    assert_eq!(channel_names(&d, DEV), expected_channels());
    assert!(d.log_text().contains("registry loaded"));
}

/// A catalog whose last message never comes is kept as partial after the
/// configured idle time: the items that came are stored, the state says so.
#[test]
fn sipp_cut_off_catalog_is_kept_as_partial() {
    assert!(
        have_tools(&["sipp"]),
        "sipp is not installed (Debian package sip-tester)"
    );
    let dir = TempDir::new("partial");
    let (sip_port, api_port) = (free_port(), free_port());
    let cfg = Daemon::config(
        dir.path(),
        sip_port,
        api_port,
        "password = \"pw\"\ncatalog_timeout_secs = 2\nquery_info = false\n",
        "",
    );
    let mut d = Daemon::start(&cfg, sip_port, api_port).unwrap();
    let answer = dir.path().join("answer.xml");
    // Three channels in three messages; the third is never sent.
    write_answer_scenario_with(&answer, 3, true);
    let sipp = registering_device(dir.path(), d.sip, free_port(), DEV, &answer, 1_000).args(&[
        "-timeout",
        "30s",
        "-timeout_error",
    ]);
    let r = sipp.run().unwrap();
    assert!(r.ok(), "sipp failed: {}", r.errors);
    d.wait_until(Duration::from_secs(30), "catalog partial", |d| {
        d.device(DEV)
            .is_ok_and(|v| v["catalog"]["state"] == "partial")
    })
    .unwrap();
    let v = d.device(DEV).unwrap();
    assert_eq!(v["catalog"]["sum_num"], 3);
    assert_eq!(v["catalog"]["received"], 2);
    assert_eq!(channel_names(&d, DEV), expected_channels()[..2].to_vec());
    assert_eq!(d.stat("gateway_catalog_syncs_total", "outcome=partial"), 1);
    assert!(d.log_text().contains("catalog incomplete"));
}
