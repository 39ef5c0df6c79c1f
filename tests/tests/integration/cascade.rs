//! Cascade (`[[cascade]]`): the gateway as a lower-level platform of
//! superior platforms. A second gateway plays the superior (registration,
//! keepalives, its catalog and DeviceInfo queries, loss and return of the
//! superior, unregistration at shutdown); sipp plays the superiors a
//! gateway is not (digest with and without qop, checked for a separate
//! username; refusals; a redirect; a catalog answer whose parts it
//! acknowledges slowly; a stale nonce at unregistration), with the
//! scenarios tests/sipp/uas_superior*.xml. Everything runs on loopback and
//! needs no root.

use std::{path::Path, time::Duration};

use gateway_tests::{
    have_tools, sim,
    sipp::{free_port, message_log, scenarios, Daemon, Sipp, TempDir, Traced, PLATFORM},
};
use serde_json::Value;

/// The superior's platform ID (central gateway, or sipp in tests/sipp/uas_superior*.xml).
const SUPERIOR: &str = "11000000002000000001";
/// The edge gateway: the [sip] id of `Daemon::config`, and its ID upward.
const EDGE: &str = PLATFORM;
/// The password the superior wants.
const SECRET: &str = "cascade-secret";
/// The camera gb-sim plays, registered with the edge.
const CAM: &str = "34020000001320000001";
/// `name` of the superior in the edge's `[[cascade]]`: the API's and the
/// metrics' key.
const NAME: &str = "sup";

fn need_sipp() {
    assert!(
        have_tools(&["sipp"]),
        "sipp is not installed (Debian package sip-tester)"
    );
}

/// The edge gateway's config in `dir`: devices' password "pw" (gb-sim),
/// one superior at 127.0.0.1:`superior_port`, keepalives every
/// `keepalive_secs` (2 unanswered: lost), retries after 1 s, SECRET as
/// password; `extra` adds lines to its `[[cascade]]`.
fn edge_config(
    dir: &Path,
    (sip_port, api_port): (u16, u16),
    superior_port: u16,
    keepalive_secs: u32,
    extra: &str,
) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    Daemon::config(
        dir,
        sip_port,
        api_port,
        "password = \"pw\"\n",
        &format!(
            "[[cascade]]\nid = \"{SUPERIOR}\"\naddress = \"127.0.0.1:{superior_port}\"\n\
             name = \"{NAME}\"\nkeepalive_interval_secs = {keepalive_secs}\nkeepalive_timeout_count = 2\n\
             retry_secs = 1\npassword = \"{SECRET}\"\n{extra}"
        ),
    )
}

/// The edge's view of its superior (Null while the API does not answer).
fn platform(d: &Daemon) -> Value {
    d.get(&format!("/api/platforms/{NAME}")).unwrap_or_default()
}

fn reason(p: &Value) -> &str {
    p["reason"].as_str().unwrap_or("")
}

/// A counter of the edge's per-platform families, by its other label.
fn up_stat(d: &Daemon, family: &str, label: &str) -> u64 {
    // /api/stats keys are "name=value" pairs sorted by label name.
    let key = if label.starts_with("kind=") {
        format!("{label},platform={NAME}")
    } else {
        format!("platform={NAME},{label}")
    };
    d.stat(family, &key)
}

/// sipp as a superior from `port` with `scenario` (tests/sipp), the edge's
/// SIP address as its remote (where it sends its own requests), every
/// message logged to `log`.
fn superior(dir: &Path, edge_sip: u16, scenario: &str, port: u16, log: &Path) -> Sipp {
    Sipp::new(
        dir,
        ([127, 0, 0, 1], edge_sip).into(),
        &scenarios().join(scenario),
        port,
        "u1",
    )
    .args(&["-timeout", "60s", "-timeout_error"])
    .trace_messages(log)
}

/// uas_superior.xml: challenges (with qop="auth" if `qop`), checks the
/// digest of `user` and SECRET, accepts, answers keepalives; ends after
/// the registration and two keepalives.
fn accepting_superior(
    dir: &Path,
    edge_sip: u16,
    port: u16,
    user: &str,
    qop: bool,
    log: &Path,
) -> Sipp {
    let qop = if qop { ", qop=\"auth\"" } else { "" };
    superior(dir, edge_sip, "uas_superior.xml", port, log).args(&[
        "-m", "3", "-key", "user", user, "-key", "password", SECRET, "-key", "qop", qop,
    ])
}

/// The REGISTERs sipp received.
fn registers(log: &[Traced]) -> Vec<&Traced> {
    log.iter()
        .filter(|t| !t.sent && t.head.method.as_deref() == Some("REGISTER"))
        .collect()
}

/// What every REGISTER of the edge carries: its ID in From and To (no
/// third-party registration), a Contact with its ID, the expiry asked for.
fn check_register(t: &Traced) {
    let h = &t.head;
    assert_eq!(h.from.user, EDGE, "From of {:?}", h.from.raw);
    assert!(h.from.tag.is_some(), "From without a tag: {:?}", h.from.raw);
    assert_eq!(h.to.user, EDGE, "To of {:?}", h.to.raw);
    assert_eq!(h.expires, Some(3600));
    let c = h.contact.as_ref().expect("REGISTER without Contact");
    assert_eq!(c.user, EDGE, "Contact {:?}", c.raw);
    assert!(h.uri.starts_with(&format!("sip:{SUPERIOR}@")), "{}", h.uri);
}

/// The text of `<name>` in `xml` (first occurrence).
fn tag<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&format!("</{name}>"))?;
    Some(&xml[start..start + len])
}

/// A second gateway is the superior: the edge (with a camera from gb-sim)
/// registers with it, keeps alive, answers its catalog and DeviceInfo
/// queries; it notices the superior gone, registers again when it is
/// back, and unregisters when it stops.
#[test]
fn second_gateway_is_the_superior() {
    let dir = TempDir::new("cascade-gw");
    let cdir = dir.path().join("central");
    std::fs::create_dir_all(&cdir).unwrap();
    // The central comes back on the same ports after a minute away: fixed
    // ports below the ephemeral range, which no client socket of this
    // process can take meanwhile (one did, once: EADDRINUSE at restart).
    let (c_sip, c_api) = (31100, 31101);
    let central_cfg = cdir.join("central.toml");
    std::fs::write(
        &central_cfg,
        format!(
            "[sip]\nid = \"{SUPERIOR}\"\nlisten = [\"127.0.0.1:{c_sip}\"]\npassword = \"{SECRET}\"\n\
             [api]\nlisten = \"127.0.0.1:{c_api}\"\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n\
             [store]\npath = \"{}\"\n",
            cdir.join("registry.redb").display()
        ),
    )
    .unwrap();
    let mut central = Daemon::start(&central_cfg, c_sip, c_api).unwrap();

    let (e_sip, e_api) = (free_port(), free_port());
    let ecfg = edge_config(&dir.path().join("edge"), (e_sip, e_api), c_sip, 1, "");
    let mut edge = Daemon::start(&ecfg, e_sip, e_api).unwrap();
    let (mut cam, _) = sim::spawn(
        None,
        &format!("127.0.0.1:{e_sip}"),
        "127.0.0.1",
        CAM,
        dir.path(),
        &["--channels", "3"],
    );

    // The camera's catalog at the edge: what the superior must see.
    edge.wait_until(Duration::from_secs(60), "camera catalog at the edge", |d| {
        d.device(CAM).is_ok_and(|v| {
            v["online"] == true && v["catalog"]["state"] == "complete" && v["channels"] == 3
        })
    })
    .unwrap();
    let cams: Vec<String> = edge.get(&format!("/api/devices/{CAM}/channels")).unwrap()["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["device_id"].as_str().unwrap().to_string())
        .collect();
    let announced: Vec<String> = (1..=3).map(|n| sim::channel(CAM, n)).collect();
    assert_eq!(cams, announced, "the channels gb-sim announced");

    // Registered with the central, which sees the edge online.
    edge.wait_until(Duration::from_secs(60), "registered upward", |d| {
        platform(d)["state"] == "registered"
    })
    .unwrap();
    central
        .wait_until(Duration::from_secs(30), "edge online at the central", |d| {
            d.device(EDGE).is_ok_and(|v| v["online"] == true)
        })
        .unwrap();
    let all = edge.get("/api/platforms").unwrap();
    assert_eq!(
        (all["count"].as_u64(), all["registered"].as_u64()),
        (Some(1), Some(1)),
        "{all}"
    );
    let p = platform(&edge);
    assert_eq!(p["id"], SUPERIOR);
    assert_eq!(p["local_id"], EDGE);
    assert_eq!(p["address"], format!("127.0.0.1:{c_sip}"));
    assert_eq!(p["target"], p["address"]);
    assert_eq!(p["expires"], 3600);
    assert!(p["reason"].is_null(), "{p}");
    // Found by its ID too.
    assert_eq!(
        edge.get(&format!("/api/platforms/{SUPERIOR}")).unwrap()["name"],
        NAME
    );
    assert_eq!(
        edge.stat("gateway_cascade_registered", &format!("platform={NAME}")),
        1
    );
    assert!(
        up_stat(
            &edge,
            "gateway_cascade_registrations_total",
            "result=challenged"
        ) >= 1
    );
    assert!(up_stat(&edge, "gateway_cascade_registrations_total", "result=ok") >= 1);

    // The central asks the catalog again (the camera's channels may have
    // come after its first query): the gateway item and the 3 channels.
    let (code, body) = central
        .request("POST", &format!("/api/devices/{EDGE}/catalog"), None)
        .unwrap();
    assert_eq!(code, 202, "{body}");
    let sn = body["sn"].as_u64().unwrap();
    central
        .wait_until(Duration::from_secs(30), "catalog from the edge", |d| {
            d.device(EDGE)
                .is_ok_and(|v| v["catalog"]["sn"] == sn && v["catalog"]["state"] == "complete")
        })
        .unwrap();
    let v = central.device(EDGE).unwrap();
    assert_eq!(v["catalog"]["sum_num"], 4, "{v}");
    let ch = central
        .get(&format!("/api/devices/{EDGE}/channels"))
        .unwrap();
    let items = ch["channels"].as_array().unwrap();
    let mut ids: Vec<&str> = items
        .iter()
        .map(|c| c["device_id"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut want: Vec<&str> = announced.iter().map(String::as_str).collect();
    want.push(EDGE);
    want.sort();
    assert_eq!(ids, want, "{ch}");
    for it in items {
        if it["device_id"] == EDGE {
            assert!(it["parent_id"].is_null(), "the gateway has no parent: {it}");
            assert_eq!(it["manufacturer"], "gateway", "{it}");
        } else {
            assert_eq!(it["parent_id"], EDGE, "{it}");
        }
    }
    let p = platform(&edge);
    assert!(p["catalogs_sent"].as_u64() >= Some(1), "{p}");
    assert_eq!(
        up_stat(&edge, "gateway_cascade_catalog_total", "what=complete"),
        p["catalogs_sent"].as_u64().unwrap()
    );
    assert!(up_stat(&edge, "gateway_cascade_requests_total", "kind=catalog") >= 1);

    // DeviceInfo and DeviceStatus of the gateway itself.
    let info = central.get(&format!("/api/devices/{EDGE}/info")).unwrap();
    assert_eq!(info["manufacturer"], "gateway", "{info}");
    assert_eq!(info["channel"], 3, "{info}");
    let st = central.get(&format!("/api/devices/{EDGE}/status")).unwrap();
    assert_eq!(st["online"], "ONLINE", "{st}");
    // (The central asks DeviceInfo after each catalog too.)
    assert!(up_stat(&edge, "gateway_cascade_requests_total", "kind=device_info") >= 1);
    assert_eq!(
        up_stat(
            &edge,
            "gateway_cascade_requests_total",
            "kind=device_status"
        ),
        1
    );

    // Keepalives answered by the central.
    edge.wait_until(Duration::from_secs(30), "keepalives answered", |d| {
        up_stat(d, "gateway_cascade_keepalives_total", "result=ok") > 0
    })
    .unwrap();
    central
        .wait_until(Duration::from_secs(30), "keepalives at the central", |d| {
            d.device(EDGE)
                .is_ok_and(|v| v["keepalives"].as_u64() > Some(0))
        })
        .unwrap();

    // The central goes away: after 2 keepalives without an answer (each
    // given up after Timer F, 32 s) the edge counts it lost.
    assert!(
        central.stop(),
        "central did not stop cleanly:\n{}",
        central.log_tail(20)
    );
    edge.wait_until(Duration::from_secs(120), "superior lost", |d| {
        let p = platform(d);
        p["state"] != "registered" && reason(&p).contains("keepalives")
    })
    .unwrap();
    // `backoff` only until the next timer tick: after a keepalive loss it
    // registers again at once (then `registering`, the reason kept).
    let p = platform(&edge);
    assert!(
        p["state"] == "backoff" || p["state"] == "registering",
        "{p}"
    );
    assert!(up_stat(&edge, "gateway_cascade_keepalives_total", "result=failed") >= 2);
    assert_eq!(
        edge.stat("gateway_cascade_registered", &format!("platform={NAME}")),
        0
    );
    assert!(edge.log_text().contains("superior platform lost"));

    // Back on the same ports and store: the edge registers again.
    let oks = up_stat(&edge, "gateway_cascade_registrations_total", "result=ok");
    central = Daemon::start(&central_cfg, c_sip, c_api).unwrap();
    edge.wait_until(Duration::from_secs(120), "registered again", |d| {
        platform(d)["state"] == "registered"
    })
    .unwrap();
    assert!(platform(&edge)["reason"].is_null());
    assert!(up_stat(&edge, "gateway_cascade_registrations_total", "result=ok") > oks);
    assert_eq!(
        edge.stat("gateway_cascade_registered", &format!("platform={NAME}")),
        1
    );
    central
        .wait_until(Duration::from_secs(30), "edge online again", |d| {
            d.device(EDGE).is_ok_and(|v| v["online"] == true)
        })
        .unwrap();
    // And stays registered: keepalives sent since are answered (the
    // retransmissions of those sent during the outage were too).
    let since = platform(&edge)["registered_ms"].as_i64().unwrap();
    edge.wait_until(Duration::from_secs(60), "keepalives answered again", |d| {
        platform(d)["last_keepalive_ok_ms"].as_i64() >= Some(since + 3000)
    })
    .unwrap();
    let p = platform(&edge);
    assert_eq!(
        (p["state"].as_str(), p["keepalive_misses"].as_u64()),
        (Some("registered"), Some(0)),
        "{p}"
    );
    assert_eq!(
        p["registered_ms"].as_i64(),
        Some(since),
        "registered once since: {p}"
    );
    assert_eq!(edge.log_text().matches("superior platform lost").count(), 1);

    // The edge stops: REGISTER Expires: 0, the central sees it leave.
    assert!(
        edge.stop(),
        "edge did not stop cleanly:\n{}",
        edge.log_tail(20)
    );
    central
        .wait_until(Duration::from_secs(30), "edge unregistered", |d| {
            d.device(EDGE)
                .is_ok_and(|v| v["online"] == false && v["offline_reason"] == "unregistered")
        })
        .unwrap();
    assert!(edge.log_text().contains("unregistering from the superior"));
    let _ = cam.kill();
    assert!(central.stop());
    for d in [&central, &edge] {
        assert!(!d.log_text().contains("panicked"), "{}", d.log_text());
    }
}

/// One registration with sipp as a superior that challenges (with qop or
/// without) and checks the digest of `username` (configured apart from
/// the local ID when given): the edge ends registered and keeps alive.
fn digest_case(qop: bool, username: Option<&str>) {
    let dir = TempDir::new(&format!("cascade-digest-{qop}-{}", username.is_some()));
    let (e_sip, e_api, s_port) = (free_port(), free_port(), free_port());
    let log = dir.path().join("superior.log");
    let user = username.unwrap_or(EDGE);
    let sipp = accepting_superior(dir.path(), e_sip, s_port, user, qop, &log);
    let child = sipp.spawn().unwrap();
    let extra = username.map_or(String::new(), |u| format!("username = \"{u}\"\n"));
    let cfg = edge_config(dir.path(), (e_sip, e_api), s_port, 1, &extra);
    let edge = Daemon::start(&cfg, e_sip, e_api).unwrap();
    // sipp ends after the registration and two keepalives, all answered;
    // with wrong credentials it answers 403 and stops at once (status 97).
    let r = sipp.result(child.wait_with_output().unwrap());
    assert!(
        r.ok(),
        "superior (qop {qop}, user {user}): {}\n{}\nedge log:\n{}",
        r.errors,
        r.stdout,
        edge.log_tail(30)
    );
    let p = platform(&edge);
    assert_eq!(p["state"], "registered", "{p}");
    assert_eq!(p["target"], format!("127.0.0.1:{s_port}"));
    assert_eq!(p["expires"], 3600);
    assert!(p["reason"].is_null(), "{p}");
    assert!(p["last_keepalive_ok_ms"].as_i64() > Some(0), "{p}");
    assert_eq!(
        up_stat(
            &edge,
            "gateway_cascade_registrations_total",
            "result=challenged"
        ),
        1
    );
    assert_eq!(
        up_stat(&edge, "gateway_cascade_registrations_total", "result=ok"),
        1
    );
    assert!(up_stat(&edge, "gateway_cascade_keepalives_total", "result=ok") >= 2);

    // On the wire: a REGISTER, the answer to the challenge on the same
    // Call-ID, with the username asked for and qop as offered.
    let msgs = message_log(&log);
    let regs = registers(&msgs);
    assert_eq!(regs.len(), 2, "REGISTERs sipp received");
    regs.iter().for_each(|t| check_register(t));
    let (first, second) = (&regs[0].head, &regs[1].head);
    assert!(first.authorization.is_none());
    assert_eq!(second.call_id, first.call_id);
    assert_eq!(second.cseq, first.cseq + 1);
    assert_eq!(second.from.tag, first.from.tag);
    let auth = second.authorization.as_deref().unwrap();
    assert!(auth.contains(&format!("username=\"{user}\"")), "{auth}");
    assert!(auth.contains("realm=\"1100000000\""), "{auth}");
    if qop {
        assert!(
            auth.contains("qop=auth") && auth.contains("nc=00000001") && auth.contains("cnonce=\""),
            "{auth}"
        );
    } else {
        assert!(!auth.contains("qop") && !auth.contains("cnonce"), "{auth}");
    }
}

/// sipp as the superior: digest challenges with and without qop (and a
/// username apart from the local ID), refusals (403: back-off, retry), a
/// redirect (302 to a second superior, which accepts).
#[test]
fn superior_challenges_refuses_and_redirects() {
    need_sipp();
    // (a) qop="auth", the local ID as username; then a username of its own.
    digest_case(true, None);
    digest_case(true, Some("cascade-user"));
    // (b) no qop.
    digest_case(false, None);

    // (c) 403 to every REGISTER: back-off with the reason, then a retry.
    let dir = TempDir::new("cascade-refuse");
    let (e_sip, e_api, s_port) = (free_port(), free_port(), free_port());
    let log = dir.path().join("superior.log");
    let sipp =
        superior(dir.path(), e_sip, "uas_superior_refuse.xml", s_port, &log).args(&["-m", "1"]);
    let child = sipp.spawn().unwrap();
    let cfg = edge_config(dir.path(), (e_sip, e_api), s_port, 1, "");
    let mut edge = Daemon::start(&cfg, e_sip, e_api).unwrap();
    edge.wait_until(Duration::from_secs(30), "back-off after 403", |d| {
        let p = platform(d);
        p["state"] == "backoff" && reason(&p).contains("403")
    })
    .unwrap();
    assert!(platform(&edge)["expires"].is_null());
    // sipp ends once the retry came (and got its 403 too).
    let r = sipp.result(child.wait_with_output().unwrap());
    assert!(r.ok(), "refusing superior: {}\n{}", r.errors, r.stdout);
    edge.wait_until(Duration::from_secs(10), "two refusals counted", |d| {
        up_stat(d, "gateway_cascade_registrations_total", "result=refused") >= 2
    })
    .unwrap();
    assert_eq!(
        up_stat(&edge, "gateway_cascade_registrations_total", "result=ok"),
        0
    );
    assert_eq!(
        edge.stat("gateway_cascade_registered", &format!("platform={NAME}")),
        0
    );
    let p = platform(&edge);
    assert_ne!(p["state"], "registered", "{p}");
    assert!(reason(&p).contains("403"), "{p}");
    let msgs = message_log(&log);
    let regs = registers(&msgs);
    assert_eq!(regs.len(), 2, "REGISTERs sipp received");
    regs.iter().for_each(|t| check_register(t));
    assert!(regs.iter().all(|t| t.head.authorization.is_none()));
    assert!(regs[1].head.cseq > regs[0].head.cseq);
    drop(edge);

    // (d) 302 to a second superior on another port, which accepts.
    let dir = TempDir::new("cascade-redirect");
    let (e_sip, e_api) = (free_port(), free_port());
    let (a_port, b_port) = (free_port(), free_port());
    let (a_log, b_log) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let a = superior(
        dir.path(),
        e_sip,
        "uas_superior_redirect.xml",
        a_port,
        &a_log,
    )
    .args(&["-m", "1", "-key", "target_port", &b_port.to_string()]);
    let b = accepting_superior(dir.path(), e_sip, b_port, EDGE, true, &b_log);
    let (a_child, b_child) = (a.spawn().unwrap(), b.spawn().unwrap());
    let cfg = edge_config(dir.path(), (e_sip, e_api), a_port, 1, "");
    let edge = Daemon::start(&cfg, e_sip, e_api).unwrap();
    let ra = a.result(a_child.wait_with_output().unwrap());
    assert!(
        ra.ok(),
        "redirecting superior: {}\n{}",
        ra.errors,
        ra.stdout
    );
    let rb = b.result(b_child.wait_with_output().unwrap());
    assert!(
        rb.ok(),
        "superior redirected to: {}\n{}\nedge log:\n{}",
        rb.errors,
        rb.stdout,
        edge.log_tail(30)
    );
    let p = platform(&edge);
    assert_eq!(p["state"], "registered", "{p}");
    assert_eq!(p["address"], format!("127.0.0.1:{a_port}"));
    assert_eq!(p["target"], format!("127.0.0.1:{b_port}"));
    assert_eq!(
        up_stat(
            &edge,
            "gateway_cascade_registrations_total",
            "result=redirected"
        ),
        1
    );
    assert_eq!(
        up_stat(&edge, "gateway_cascade_registrations_total", "result=ok"),
        1
    );
    // The keepalives went to the new target (sipp b ended after two).
    assert!(up_stat(&edge, "gateway_cascade_keepalives_total", "result=ok") >= 2);
    let a_msgs = message_log(&a_log);
    let a_regs = registers(&a_msgs);
    assert_eq!(a_regs.len(), 1);
    check_register(a_regs[0]);
    let b_msgs = message_log(&b_log);
    let b_regs = registers(&b_msgs);
    assert_eq!(b_regs.len(), 2);
    b_regs.iter().for_each(|t| check_register(t));
    assert!(
        b_regs[0]
            .head
            .uri
            .ends_with(&format!("@127.0.0.1:{b_port}")),
        "{}",
        b_regs[0].head.uri
    );
}

/// sipp as the superior asks the catalog of an edge with a camera of 4
/// channels, `catalog_chunk = 2`: 5 items (the gateway first) in 3 parts,
/// SumNum 5 in each, and each part only after sipp's 200 OK to the one
/// before (sipp waits 300 ms before each 200 OK).
#[test]
fn catalog_parts_wait_for_each_answer() {
    need_sipp();
    let dir = TempDir::new("cascade-catalog");
    let (e_sip, e_api, s_port) = (free_port(), free_port(), free_port());
    // One keepalive (1 s after registering), then none for a while: sipp
    // knows how many calls to expect.
    let cfg = edge_config(
        dir.path(),
        (e_sip, e_api),
        s_port,
        600,
        "catalog_chunk = 2\n",
    );
    let mut edge = Daemon::start(&cfg, e_sip, e_api).unwrap();
    let (mut cam, _) = sim::spawn(
        None,
        &format!("127.0.0.1:{e_sip}"),
        "127.0.0.1",
        CAM,
        dir.path(),
        &["--channels", "4"],
    );
    edge.wait_until(Duration::from_secs(60), "camera catalog at the edge", |d| {
        d.device(CAM)
            .is_ok_and(|v| v["catalog"]["state"] == "complete" && v["channels"] == 4)
    })
    .unwrap();
    // Only now the superior: its query finds the camera's channels. The
    // edge's REGISTER is retransmitted (or retried) until it answers.
    let log = dir.path().join("superior.log");
    // Calls: the registration, one keepalive, three parts.
    let sipp =
        superior(dir.path(), e_sip, "uas_superior_catalog.xml", s_port, &log).args(&["-m", "5"]);
    let r = sipp.run().unwrap();
    assert!(
        r.ok(),
        "superior: {}\n{}\nedge log:\n{}",
        r.errors,
        r.stdout,
        edge.log_tail(30)
    );
    let p = platform(&edge);
    assert_eq!(p["state"], "registered", "{p}");
    assert_eq!(
        (p["catalogs_sent"].as_u64(), p["items_sent"].as_u64()),
        (Some(1), Some(5)),
        "{p}"
    );
    assert_eq!(
        up_stat(&edge, "gateway_cascade_catalog_total", "what=complete"),
        1
    );
    assert_eq!(
        up_stat(&edge, "gateway_cascade_catalog_total", "what=items"),
        5
    );
    assert_eq!(
        up_stat(&edge, "gateway_cascade_catalog_total", "what=aborted"),
        0
    );
    assert_eq!(
        up_stat(&edge, "gateway_cascade_requests_total", "kind=catalog"),
        1
    );

    let msgs = message_log(&log);
    let body = |t: &Traced| String::from_utf8_lossy(&t.head.body).into_owned();
    // The edge's 200 OK to the query, then the parts (first arrival of
    // each Call-ID; a retransmission would repeat one).
    let query_ok = msgs
        .iter()
        .position(|t| !t.sent && t.head.status == Some(200) && t.head.cseq_method == "MESSAGE")
        .expect("the edge's 200 OK to the query");
    let mut parts: Vec<(usize, &Traced)> = Vec::new();
    for (i, t) in msgs.iter().enumerate() {
        let b = body(t);
        if !t.sent
            && t.head.method.as_deref() == Some("MESSAGE")
            && tag(&b, "CmdType") == Some("Catalog")
            && b.contains("<Response>")
            && !parts.iter().any(|(_, p)| p.head.call_id == t.head.call_id)
        {
            parts.push((i, t));
        }
    }
    assert_eq!(parts.len(), 3, "catalog parts");
    assert!(
        query_ok < parts[0].0,
        "a part before the query was answered"
    );
    let mut ids = Vec::new();
    let mut sizes = Vec::new();
    for (k, (i, t)) in parts.iter().enumerate() {
        let b = body(t);
        assert_eq!(tag(&b, "SN"), Some("4711"), "{b}");
        assert_eq!(tag(&b, "SumNum"), Some("5"), "{b}");
        assert_eq!(tag(&b, "DeviceID"), Some(EDGE), "{b}");
        let items: Vec<&str> = b.split("<Item>").skip(1).collect();
        assert!(
            b.contains(&format!("<DeviceList Num=\"{}\"", items.len())),
            "{b}"
        );
        sizes.push(items.len());
        for it in items {
            let id = tag(it, "DeviceID").unwrap().to_string();
            if id == EDGE {
                assert_eq!(tag(it, "ParentID"), None, "the gateway has no parent: {it}");
            } else {
                assert_eq!(tag(it, "ParentID"), Some(EDGE), "{it}");
            }
            ids.push(id);
        }
        // Part k came after sipp's 200 OK to part k-1.
        if k > 0 {
            let prev = &parts[k - 1].1.head.call_id;
            let ok = msgs
                .iter()
                .position(|m| m.sent && m.head.status == Some(200) && &m.head.call_id == prev)
                .expect("sipp answered every part");
            assert!(ok < *i, "part {} came before the 200 OK to part {k}", k + 1);
        }
    }
    assert_eq!(sizes, [2, 2, 1]);
    let mut want = vec![EDGE.to_string()];
    want.extend((1..=4).map(|n| sim::channel(CAM, n)));
    assert_eq!(ids, want, "the gateway first, then the camera's channels");
    let _ = cam.kill();
}

/// At shutdown the edge unregisters (REGISTER Expires: 0) with the
/// credentials of its last registration. A superior whose nonce expired
/// meanwhile (the gateway's nonces live 300 s by default, registrations are
/// refreshed at 2/3 of an hour) answers 401 stale=true; here, as one some
/// way off, after 300 ms. The edge must answer that challenge before it
/// exits, or the superior keeps it online until its keepalives time out.
#[test]
fn unregisters_at_shutdown_through_a_stale_challenge() {
    need_sipp();
    let dir = TempDir::new("cascade-unregister");
    let (e_sip, e_api, s_port) = (free_port(), free_port(), free_port());
    let log = dir.path().join("superior.log");
    // Calls: the registration (until the unregistration) and one keepalive.
    let sipp = superior(
        dir.path(),
        e_sip,
        "uas_superior_unregister.xml",
        s_port,
        &log,
    )
    .args(&["-m", "2", "-key", "user", EDGE, "-key", "password", SECRET]);
    let child = sipp.spawn().unwrap();
    let cfg = edge_config(dir.path(), (e_sip, e_api), s_port, 600, "");
    let mut edge = Daemon::start(&cfg, e_sip, e_api).unwrap();
    edge.wait_until(
        Duration::from_secs(30),
        "registered, keepalive answered",
        |d| up_stat(d, "gateway_cascade_keepalives_total", "result=ok") == 1,
    )
    .unwrap();
    assert!(
        edge.stop(),
        "edge did not stop cleanly:\n{}",
        edge.log_tail(20)
    );
    let r = sipp.result(child.wait_with_output().unwrap());
    let unregs: Vec<_> = registers(&message_log(&log))
        .into_iter()
        .filter(|t| t.head.expires == Some(0))
        .map(|t| t.head.authorization.clone().unwrap_or_default())
        .collect();
    assert!(
        r.ok(),
        "superior: {}\nunregistrations (Authorization): {unregs:#?}\nedge log:\n{}",
        r.errors,
        edge.log_tail(10)
    );
    assert_eq!(unregs.len(), 2, "{unregs:#?}");
    assert!(
        unregs[1].contains("d0123456789abcdef"),
        "the fresh nonce: {}",
        unregs[1]
    );
}
