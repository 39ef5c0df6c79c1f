//! DeviceControl and RecordInfo through the REST API and the CLI, on
//! loopback (no root): gb-sim as a PTZ camera decodes each PTZCmd
//! (checksums checked) and keeps what it did (moving, presets, guard,
//! recording), answers the commands that the standard answers with a
//! DeviceControl Response, or (`--ignore-controls`) never does; its record
//! index answers RecordInfo in parts (or stops early); sipp as a device
//! logs the bytes on the wire, which must be the standard's examples, and
//! answers no query. Bad requests get 4xx with a reason and are counted.

use std::{path::Path, process::Command, time::Duration};

use gateway_tests::{
    cli::gateway,
    have_tools, sim,
    sipp::{free_port, message_log, registering_device, scenarios, Daemon, TempDir},
};
use serde_json::{json, Value};

const CAM: &str = "34020000001320000931";
const MUTE: &str = "34020000001320000932";
const SIPP_DEV: &str = "34020000001320000933";
const NVR: &str = "34020000001320000934";
const SHORT: &str = "34020000001320000935";
const ALARMER: &str = "34020000001320000936";
const PLAYER: &str = "34020000001320000937";
const SEEKER: &str = "34020000001320000938";
const DEAF: &str = "34020000001320000939";
const MOBILE: &str = "34020000001320000940";
const NOSUB: &str = "34020000001320000941";
const DAY: (&str, &str) = ("2026-12-07T00:00:00", "2026-12-07T23:59:59");

fn config(dir: &Path, sip: u16, api: u16) -> std::path::PathBuf {
    Daemon::config(
        dir,
        sip,
        api,
        "password = \"pw\"\nquery_info = false\nquery_timeout_secs = 2\n",
        "",
    )
}

fn control(d: &Daemon, dev: &str, body: Value) -> (u16, Value) {
    d.post_json(&format!("/api/devices/{dev}/control"), &body.to_string())
        .unwrap()
}

/// Waits (bounded) until every device of `ids` is online with its catalog.
fn online(d: &mut Daemon, ids: &[&str]) {
    d.wait_until(
        Duration::from_secs(30),
        "devices online with catalogs",
        |d| {
            ids.iter().all(|id| {
                d.device(id)
                    .is_ok_and(|v| v["online"] == true && v["catalog"]["state"] == "complete")
            })
        },
    )
    .unwrap();
}

/// gb-sim's state for `target` (Null until reported).
fn sim_state(status: &Path, target: &str) -> Value {
    sim::report(status)["devices"][0]["control_state"][target].clone()
}

#[test]
fn ptz_presets_and_answered_controls_reach_the_camera() {
    let dir = TempDir::new("devctl");
    let (sip, api) = (free_port(), free_port());
    let mut d = Daemon::start(&config(dir.path(), sip, api), sip, api).unwrap();
    let server = format!("127.0.0.1:{sip}");
    let (mut cam, cam_status) = sim::spawn(
        None,
        &server,
        "127.0.0.1",
        CAM,
        dir.path(),
        &["--channels", "2"],
    );
    let (mut mute, _) = sim::spawn(
        None,
        &server,
        "127.0.0.1",
        MUTE,
        dir.path(),
        &["--channels", "1", "--ignore-controls"],
    );
    online(&mut d, &[CAM, MUTE]);
    let ch = sim::channel(CAM, 1);

    // Pan left at speed 0x1F: the standard's own example, accepted by the
    // camera (no Response is defined for PTZ).
    let (code, v) = control(
        &d,
        CAM,
        json!({"channel": ch, "cmd": "ptz", "pan": "left", "speed": 31, "zoom_speed": 0}),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        (
            v["result"].as_str(),
            v["sip_status"].as_u64(),
            v["target"].as_str()
        ),
        (Some("accepted"), Some(200), Some(ch.as_str())),
        "{v}"
    );
    d.wait_until(Duration::from_secs(10), "PTZ at the camera", |_| {
        sim_state(&cam_status, &ch)["last_ptz_hex"] == "A50F01021F0000D6"
    })
    .unwrap();
    let st = sim_state(&cam_status, &ch);
    assert_eq!(
        (st["last_ptz"].as_str(), st["moving"].as_bool()),
        (Some("left"), Some(true)),
        "{st}"
    );

    // The CLI: set preset 3, stop, call it back.
    let api_addr = format!("127.0.0.1:{api}");
    for words in [
        &["preset", "set", "3"][..],
        &["stop"],
        &["preset", "call", "3"],
    ] {
        let mut args = vec!["control", CAM, "--channel", &ch, "--api", &api_addr];
        args.extend_from_slice(words);
        let o = gateway(&args);
        assert_eq!(o.code, 0, "{words:?}: {}{}", o.stdout, o.stderr);
        assert!(o.stdout.contains("accepted by the device"), "{}", o.stdout);
    }
    d.wait_until(
        Duration::from_secs(10),
        "preset called at the camera",
        |_| sim_state(&cam_status, &ch)["at_preset"] == 3,
    )
    .unwrap();
    let st = sim_state(&cam_status, &ch);
    assert_eq!(st["presets"], json!([3]), "{st}");
    assert_eq!(
        (st["ptz_commands"].as_u64(), st["moving"].as_bool()),
        (Some(4), Some(false)),
        "{st}"
    );
    assert_eq!(st["ptz_errors"], json!([]), "{st}");
    // PresetQuery: the camera's list, as set.
    let v = d
        .get(&format!("/api/devices/{CAM}/presets?channel={ch}"))
        .unwrap();
    assert_eq!(v["target"], ch.as_str(), "{v}");
    assert_eq!(v["presets"], json!([{"id": "3", "name": "预置位3"}]), "{v}");
    let o = gateway(&["presets", CAM, "--channel", &ch, "--api", &api_addr]);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert!(
        o.stdout.contains("1 preset(s)") && o.stdout.contains("   3  预置位3"),
        "{}",
        o.stdout
    );
    let (code, v) = d
        .request(
            "GET",
            &format!("/api/devices/{CAM}/presets?channel=34020000001310009999"),
            None,
        )
        .unwrap();
    assert_eq!(code, 404, "{v}");

    // Guard and record: the camera answers with a Response (Result OK).
    let (code, v) = control(&d, CAM, json!({"cmd": "guard", "set": true}));
    assert_eq!((code, v["result"].as_str()), (200, Some("OK")), "{v}");
    let (code, v) = control(
        &d,
        CAM,
        json!({"channel": ch, "cmd": "record", "start": true}),
    );
    assert_eq!((code, v["result"].as_str()), (200, Some("OK")), "{v}");
    d.wait_until(
        Duration::from_secs(10),
        "guard and record at the camera",
        |_| {
            sim_state(&cam_status, CAM)["guard"] == true
                && sim_state(&cam_status, &ch)["recording"] == true
        },
    )
    .unwrap();
    let (code, v) = control(
        &d,
        CAM,
        json!({"channel": ch, "cmd": "home_position", "enabled": true, "preset": 3, "reset_secs": 30}),
    );
    assert_eq!((code, v["result"].as_str()), (200, Some("OK")), "{v}");
    // Fire-and-forget ones: accepted.
    for body in [
        json!({"channel": ch, "cmd": "iframe"}),
        json!({"channel": ch, "cmd": "drag_zoom", "zoom_in": true, "length": 1920, "width": 1080,
               "mid_x": 960, "mid_y": 540, "length_x": 200, "length_y": 100}),
        json!({"channel": ch, "cmd": "teleboot", "confirm": true}),
    ] {
        let (code, v) = control(&d, CAM, body.clone());
        assert_eq!(
            (code, v["result"].as_str()),
            (200, Some("accepted")),
            "{body}: {v}"
        );
    }
    d.wait_until(Duration::from_secs(10), "the rest at the camera", |_| {
        let st = sim_state(&cam_status, &ch);
        st["iframes"] == 1
            && st["teleboots"] == 1
            && st["drag_zoom"] == "in 1920x1080 at 960,540 size 200x100"
            && st["home_position"] == "preset 3 after 30 s"
    })
    .unwrap();

    // A device that never sends the Response: 504 after query_timeout_secs,
    // saying that it accepted the MESSAGE.
    let (code, v) = control(&d, MUTE, json!({"cmd": "guard", "set": false}));
    assert_eq!(code, 504, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("sent no Response"),
        "{v}"
    );
    // A PTZ command needs no Response: accepted by the same device.
    let (code, v) = control(&d, MUTE, json!({"cmd": "stop"}));
    assert_eq!((code, v["result"].as_str()), (200, Some("accepted")), "{v}");

    // Bad requests: 4xx with the reason, nothing sent.
    let before = sim::report(&cam_status)["devices"][0]["controls"]
        .as_array()
        .map_or(0, Vec::len);
    for (body, code, why) in [
        (json!({"cmd": "dance"}), 400, "cmd is one of ptz, stop"),
        (
            json!({"cmd": "preset", "action": "call", "index": 0}),
            400,
            "outside 1-255",
        ),
        (
            json!({"cmd": "ptz", "zoom": "in", "zoom_speed": 16}),
            400,
            "outside 0-15",
        ),
        (
            json!({"cmd": "focus", "action": "sideways"}),
            400,
            "far, near, stop",
        ),
        (json!({"cmd": "teleboot"}), 400, "confirm"),
        (
            json!({"channel": 7, "cmd": "stop"}),
            400,
            "channel must be a string",
        ),
        (
            json!({"channel": "34020000001310999999", "cmd": "stop"}),
            404,
            "has no channel",
        ),
    ] {
        let (c, v) = control(&d, CAM, body.clone());
        assert_eq!(c, code, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains(why), "{body}: {v}");
    }
    let (c, v) = control(&d, "34020000001320009999", json!({"cmd": "stop"}));
    assert_eq!(c, 404, "{v}");
    let (c, v) = d
        .post_json(&format!("/api/devices/{CAM}/control"), "{not json")
        .unwrap();
    assert_eq!(c, 400, "{v}");
    let o = gateway(&["control", CAM, "--api", &api_addr, "teleboot"]);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("--yes"), "{}", o.stderr);
    let after = sim::report(&cam_status)["devices"][0]["controls"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(before, after, "a refused request reached the camera");

    // Counted by command and result.
    let stat = |labels: &str| d.stat("gateway_device_controls_total", labels);
    assert_eq!(stat("command=ptz,result=ok"), 1);
    assert_eq!(stat("command=preset,result=ok"), 2);
    assert_eq!(stat("command=stop,result=ok"), 2);
    assert_eq!(stat("command=guard,result=ok"), 1);
    assert_eq!(stat("command=guard,result=timeout"), 1);
    assert_eq!(stat("command=record,result=ok"), 1);
    assert_eq!(stat("command=stop,result=unavailable"), 2);
    // Not a command at all (unknown cmd, a number as channel, not JSON),
    // or a command with bad arguments.
    assert_eq!(stat("command=unknown,result=invalid"), 3);
    for c in ["preset", "ptz", "focus", "teleboot"] {
        assert_eq!(stat(&format!("command={c},result=invalid")), 1, "{c}");
    }

    // Offline: 409.
    let _ = Command::new("kill").arg(mute.id().to_string()).status();
    let _ = mute.wait();
    d.wait_until(Duration::from_secs(10), "muted camera offline", |d| {
        d.device(MUTE).is_ok_and(|v| v["online"] == false)
    })
    .unwrap();
    let (c, v) = control(&d, MUTE, json!({"cmd": "stop"}));
    assert_eq!(c, 409, "{v}");

    let _ = Command::new("kill").arg(cam.id().to_string()).status();
    let _ = cam.wait();
    assert!(d.stop(), "daemon did not stop cleanly:\n{}", d.log_tail(30));
    assert!(!d.log_text().contains("panicked"));
}

/// sipp as the device records the DeviceControl MESSAGEs as they were on
/// the wire: the PTZCmd bytes are the standard's examples, in a
/// `<Control>` body of the MANSCDP content type.
#[test]
fn ptzcmd_bytes_on_the_wire_as_sipp_received_them() {
    assert!(
        have_tools(&["sipp"]),
        "sipp is not installed (Debian package sip-tester)"
    );
    let dir = TempDir::new("devctl-sipp");
    let (sip, api, dev_port) = (free_port(), free_port(), free_port());
    let mut d = Daemon::start(&config(dir.path(), sip, api), sip, api).unwrap();
    let log = dir.path().join("device-messages.log");
    // Registered for 8 s, answering every MESSAGE with 200 OK.
    let sipp = registering_device(
        dir.path(),
        d.sip,
        dev_port,
        SIPP_DEV,
        &scenarios().join("uas_message.xml"),
        8000,
    )
    .trace_messages(&log);
    let mut child = sipp.spawn().unwrap();
    d.wait_until(Duration::from_secs(10), "sipp device online", |d| {
        d.device(SIPP_DEV).is_ok_and(|v| v["online"] == true)
    })
    .unwrap();
    let sent = [
        (
            json!({"cmd": "ptz", "pan": "left", "speed": 31, "zoom_speed": 0}),
            "A50F01021F0000D6",
        ),
        (json!({"cmd": "stop"}), "A50F0100000000B5"),
        (
            json!({"cmd": "preset", "action": "call", "index": 5}),
            "A50F01820005003C",
        ),
    ];
    for (body, _) in &sent {
        let (code, v) = control(&d, SIPP_DEV, body.clone());
        assert_eq!(
            (code, v["result"].as_str()),
            (200, Some("accepted")),
            "{body}: {v}"
        );
    }
    // It answers no query: RecordInfo times out (504), counted.
    let (code, v) = d
        .request(
            "GET",
            &format!(
                "/api/devices/{SIPP_DEV}/records?start={}&end={}",
                DAY.0, DAY.1
            ),
            None,
        )
        .unwrap();
    assert_eq!(code, 504, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("no RecordInfo answer"),
        "{v}"
    );
    assert_eq!(d.stat("gateway_record_queries_total", "result=timeout"), 1);
    let st = child.wait().unwrap();
    assert!(st.success(), "sipp device failed ({st})");
    let controls: Vec<String> = message_log(&log)
        .into_iter()
        .filter(|m| !m.sent && m.head.method.as_deref() == Some("MESSAGE"))
        .filter_map(|m| {
            let body = String::from_utf8_lossy(&m.head.body).into_owned();
            body.contains("<CmdType>DeviceControl</CmdType>").then(|| {
                assert_eq!(
                    m.head
                        .content_type
                        .as_deref()
                        .map(str::to_ascii_lowercase)
                        .as_deref(),
                    Some("application/manscdp+xml")
                );
                body
            })
        })
        .collect();
    assert_eq!(controls.len(), sent.len(), "{controls:?}");
    for (body, (_, hex)) in controls.iter().zip(&sent) {
        assert!(
            body.starts_with("<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Control>\r\n"),
            "{body}"
        );
        assert!(
            body.contains(&format!(
                "<DeviceID>{SIPP_DEV}</DeviceID>\r\n<PTZCmd>{hex}</PTZCmd>\r\n<Info>\r\n<ControlPriority>5</ControlPriority>\r\n</Info>\r\n</Control>"
            )),
            "{body}"
        );
    }
    assert!(d.stop(), "daemon did not stop cleanly:\n{}", d.log_tail(30));
}

fn records(d: &Daemon, dev: &str, query: &str) -> (u16, Value) {
    d.request("GET", &format!("/api/devices/{dev}/records?{query}"), None)
        .unwrap()
}

/// gb-sim's record index: 5 recordings per channel (00:00, 00:10, ...,
/// 60 s each) answered 2 per MESSAGE; the gateway assembles the parts by
/// SN and SumNum, filters nothing itself (the device does), returns what
/// arrived as partial when an NVR's answer stops early.
#[test]
fn record_info_is_assembled_from_its_parts() {
    let dir = TempDir::new("records");
    let (sip, api) = (free_port(), free_port());
    let mut d = Daemon::start(&config(dir.path(), sip, api), sip, api).unwrap();
    let server = format!("127.0.0.1:{sip}");
    let args = [
        "--channels",
        "2",
        "--records",
        "5",
        "--catalog-per-message",
        "2",
    ];
    let (mut nvr, nvr_status) = sim::spawn(None, &server, "127.0.0.1", NVR, dir.path(), &args);
    let mut short_args = args.to_vec();
    short_args.push("--records-drop-last-part");
    let (mut short, _) = sim::spawn(None, &server, "127.0.0.1", SHORT, dir.path(), &short_args);
    online(&mut d, &[NVR, SHORT]);
    let ch = sim::channel(NVR, 1);

    // One channel, the whole day: 5 records in 3 MESSAGEs.
    let (code, v) = records(
        &d,
        NVR,
        &format!("channel={ch}&start={}&end={}", DAY.0, DAY.1),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        (
            v["count"].as_u64(),
            v["sum_num"].as_u64(),
            v["parts"].as_u64(),
            v["complete"].as_bool()
        ),
        (Some(5), Some(5), Some(3), Some(true)),
        "{v}"
    );
    let items = v["items"].as_array().unwrap();
    assert_eq!(items[0]["start_time"], "2026-12-07T00:00:00");
    assert_eq!(items[0]["end_time"], "2026-12-07T00:01:00");
    assert_eq!(items[4]["start_time"], "2026-12-07T00:40:00");
    assert!(items
        .iter()
        .all(|i| i["device_id"] == ch.as_str() && i["record_type"] == "time"));
    // A window: the device filters, 00:20 and 00:30 overlap it.
    let (code, v) = records(
        &d,
        NVR,
        &format!("channel={ch}&start=2026-12-07T00:15:00&end=2026-12-07T00:35:00"),
    );
    assert_eq!(code, 200, "{v}");
    let starts: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["start_time"].as_str().unwrap())
        .collect();
    assert_eq!(
        starts,
        ["2026-12-07T00:20:00", "2026-12-07T00:30:00"],
        "{v}"
    );
    // The device itself: both channels, 10 records in 5 parts.
    let (code, v) = records(&d, NVR, &format!("start={}&end={}", DAY.0, DAY.1));
    assert_eq!(
        (code, v["count"].as_u64(), v["parts"].as_u64()),
        (200, Some(10), Some(5)),
        "{v}"
    );
    // No alarm recordings: SumNum 0, complete.
    let (code, v) = records(
        &d,
        NVR,
        &format!("channel={ch}&start={}&end={}&type=alarm", DAY.0, DAY.1),
    );
    assert_eq!(
        (code, v["count"].as_u64(), v["complete"].as_bool()),
        (200, Some(0), Some(true)),
        "{v}"
    );
    // The CLI.
    let api_addr = format!("127.0.0.1:{api}");
    let o = gateway(&[
        "records",
        NVR,
        "--channel",
        &ch,
        "--start",
        DAY.0,
        "--end",
        DAY.1,
        "--api",
        &api_addr,
    ]);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert!(o.stdout.contains(": 5 record(s)"), "{}", o.stdout);
    assert!(
        o.stdout
            .contains("2026-12-07T00:40:00  2026-12-07T00:41:00  time"),
        "{}",
        o.stdout
    );
    // gb-sim writes its report every second.
    let asked = || sim::report(&nvr_status)["devices"][0]["record_queries"].clone();
    d.wait_until(Duration::from_secs(10), "gb-sim's report", |_| asked() == 5)
        .unwrap();

    // An answer that stops early: what came, marked partial, after
    // query_timeout_secs of silence.
    let sch = sim::channel(SHORT, 1);
    let (code, v) = records(
        &d,
        SHORT,
        &format!("channel={sch}&start={}&end={}", DAY.0, DAY.1),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        (
            v["count"].as_u64(),
            v["sum_num"].as_u64(),
            v["complete"].as_bool()
        ),
        (Some(4), Some(5), Some(false)),
        "{v}"
    );
    let o = gateway(&[
        "records",
        SHORT,
        "--channel",
        &sch,
        "--start",
        DAY.0,
        "--end",
        DAY.1,
        "--api",
        &api_addr,
    ]);
    assert!(
        o.stdout.contains("4 record(s) of 5 announced"),
        "{}",
        o.stdout
    );

    // Bad requests: 400/404, nothing asked.
    for (q, code, why) in [
        (
            format!("channel={ch}&start={}", DAY.0),
            400,
            "start and end are required",
        ),
        (
            format!("channel={ch}&start=2026-12-07&end={}", DAY.1),
            400,
            "not YYYY-MM-DDTHH:MM:SS",
        ),
        (
            format!("channel={ch}&start={}&end={}", DAY.1, DAY.0),
            400,
            "is after end",
        ),
        (
            format!("channel={ch}&start={}&end={}&type=video", DAY.0, DAY.1),
            400,
            "not one of all",
        ),
        (
            format!("channel=34020000001310999999&start={}&end={}", DAY.0, DAY.1),
            404,
            "has no channel",
        ),
    ] {
        let (c, v) = records(&d, NVR, &q);
        assert_eq!(c, code, "{q}: {v}");
        assert!(v["error"].as_str().unwrap().contains(why), "{q}: {v}");
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(asked(), 5, "a refused query reached the device");
    let stat = |r: &str| d.stat("gateway_record_queries_total", &format!("result={r}"));
    assert_eq!(
        (
            stat("complete"),
            stat("partial"),
            stat("invalid"),
            stat("unavailable")
        ),
        (5, 2, 4, 1)
    );

    for c in [&mut nvr, &mut short] {
        let _ = Command::new("kill").arg(c.id().to_string()).status();
        let _ = c.wait();
    }
    assert!(d.stop(), "daemon did not stop cleanly:\n{}", d.log_tail(30));
    assert!(!d.log_text().contains("panicked"));
}

/// An alarm a device raises without any subscription: acknowledged to the
/// device (its Response counted by gb-sim), kept for the API, counted by
/// device, priority and method.
#[test]
fn alarms_are_acknowledged_kept_and_counted() {
    let dir = TempDir::new("alarms");
    let (sip, api) = (free_port(), free_port());
    let mut d = Daemon::start(&config(dir.path(), sip, api), sip, api).unwrap();
    let server = format!("127.0.0.1:{sip}");
    let (mut dev, status) = sim::spawn(
        None,
        &server,
        "127.0.0.1",
        ALARMER,
        dir.path(),
        &["--alarm-after", "1"],
    );
    d.wait_until(Duration::from_secs(30), "the alarm in the API", |d| {
        d.get("/api/alarms").is_ok_and(|v| v["count"] == 1)
    })
    .unwrap();
    let v = d.get(&format!("/api/alarms?device={ALARMER}")).unwrap();
    let a = &v["alarms"][0];
    assert_eq!(
        (
            a["device"].as_str(),
            a["source"].as_str(),
            a["priority"].as_str(),
            a["method"].as_str(),
            a["alarm_type"].as_str()
        ),
        (
            Some(ALARMER),
            Some(ALARMER),
            Some("1"),
            Some("5"),
            Some("2")
        ),
        "{v}"
    );
    assert_eq!(a["description"], "移动侦测 (gb-sim)");
    assert!(a["time"].as_str().unwrap().len() == 19, "{v}");
    assert_eq!(
        d.get("/api/alarms?device=34020000001320009999").unwrap()["count"],
        0
    );
    let (code, v) = d.request("GET", "/api/alarms?device=bad-id", None).unwrap();
    assert_eq!(code, 400, "{v}");
    assert_eq!(
        d.stat(
            "gateway_alarms_total",
            &format!("device={ALARMER},method=5,priority=1")
        ),
        1
    );
    d.wait_until(Duration::from_secs(10), "the alarm acknowledged", |_| {
        sim::report(&status)["devices"][0]["alarm_acks"] == 1
    })
    .unwrap();
    assert_eq!(sim::report(&status)["devices"][0]["alarms_sent"], 1);
    let _ = Command::new("kill").arg(dev.id().to_string()).status();
    let _ = dev.wait();
    assert!(d.stop(), "daemon did not stop cleanly:\n{}", d.log_tail(30));
}

/// Playback and download (s=Playback / s=Download with u=, t= and
/// a=downloadspeed): gb-sim sends its file once, says MediaStatus 121, and
/// the gateway ends the session (BYE) with every frame received and, for
/// the download, recorded.
#[test]
fn playback_and_download_end_at_the_end_of_the_file() {
    if !have_tools(&["ffmpeg", "ffprobe"]) {
        eprintln!(
            "SKIPPED playback_and_download_end_at_the_end_of_the_file: needs ffmpeg and ffprobe"
        );
        return;
    }
    let dir = TempDir::new("playback");
    let media = gateway_tests::testmedia::camera_file(dir.path(), 50, false);
    let (sip, api) = (free_port(), free_port());
    let cfg = Daemon::config(
        dir.path(),
        sip,
        api,
        "password = \"pw\"\nquery_info = false\nquery_timeout_secs = 2\n",
        &format!(
            "[media]\nports = \"32300-32319\"\nno_media_timeout_secs = 0\n[media.record]\ndir = \"{}\"\n",
            dir.path().join("rec").display()
        ),
    );
    let mut d = Daemon::start(&cfg, sip, api).unwrap();
    let (mut cam, status) = sim::spawn(
        None,
        &format!("127.0.0.1:{sip}"),
        "127.0.0.1",
        PLAYER,
        dir.path(),
        &["--media", media.to_str().unwrap()],
    );
    online(&mut d, &[PLAYER]);
    let ch = sim::channel(PLAYER, 1);
    // The download over TCP (the gateway listens), as live streams can be.
    for (mode, extra) in [
        ("playback", ""),
        (
            "download",
            r#","download_speed":4,"transport":"tcp-passive""#,
        ),
    ] {
        let (code, v) = d
            .post_json(
                "/api/streams",
                &format!(
                    r#"{{"device":"{PLAYER}","channel":"{ch}","mode":"{mode}","start":1796601600,"end":1796601660,"record":true{extra}}}"#
                ),
            )
            .unwrap();
        assert_eq!(code, 201, "{mode}: {v}");
        let id = v["id"].as_str().unwrap().to_string();
        assert!(id.starts_with('1'), "history y= starts with 1: {id}");
        d.wait_until(Duration::from_secs(30), "end of the file", |d| {
            d.get(&format!("/api/streams/{id}"))
                .is_ok_and(|v| v["state"] == "closed")
        })
        .unwrap();
        let v = d.get(&format!("/api/streams/{id}")).unwrap();
        assert_eq!(v["reason"], "end of file (MediaStatus 121)", "{v}");
        let tcp = mode == "download";
        assert_eq!(v["transport"] == "tcp-passive", tcp, "{v}");
        assert_eq!(v["playback"]["mode"], mode, "{v}");
        // gb-sim writes its report every second.
        d.wait_until(Duration::from_secs(10), "gb-sim's report", |_| {
            sim::stream(&status, &id)["frames_sent"] == 50
        })
        .unwrap();
        assert_eq!(v["media"]["frames"], 50, "{mode}: {v}");
        assert_eq!(v["media"]["lost"], 0, "{mode}: {v}");
        let f = v["media"]["files"][0].as_str().expect("recorded");
        assert_eq!(gateway_tests::testmedia::ffprobe_frames(f), 50, "{f}");
    }
    for (body, why) in [
        (
            r#""mode":"rewind","start":1,"end":2"#,
            "mode must be live, playback or download",
        ),
        (
            r#""mode":"playback","start":5,"end":5"#,
            "is not before end",
        ),
        (r#""mode":"playback""#, "needs start and end"),
        (
            r#""mode":"playback","start":1,"end":2,"download_speed":2"#,
            "download_speed is for download",
        ),
        (r#""start":1"#, "are for playback and download"),
    ] {
        let (code, v) = d
            .post_json(
                "/api/streams",
                &format!(r#"{{"device":"{PLAYER}","channel":"{ch}",{body}}}"#),
            )
            .unwrap();
        assert_eq!(code, 400, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains(why), "{body}: {v}");
    }
    let _ = Command::new("kill").arg(cam.id().to_string()).status();
    let _ = cam.wait();
    assert!(d.stop(), "daemon did not stop cleanly:\n{}", d.log_tail(30));
}

/// MANSRTSP through the API and the CLI: gb-sim paces its playback by the
/// INFOs it gets (a pause sends nothing, Scale changes the frame rate, a
/// Range jumps in the file), the gateway follows the position, every
/// frame sent is received and recorded. A device that ignores MANSRTSP
/// gets a 504 and, going on past the end of its range without
/// MediaStatus 121, a BYE; bad controls are 4xx; everything is counted.
#[test]
fn playback_controls_pace_the_camera() {
    if !have_tools(&["ffmpeg", "ffprobe"]) {
        eprintln!("SKIPPED playback_controls_pace_the_camera: needs ffmpeg and ffprobe");
        return;
    }
    let dir = TempDir::new("playback-ctl");
    // 10 s at 25 fps.
    let media = gateway_tests::testmedia::camera_file(dir.path(), 250, false);
    let (sip, api) = (free_port(), free_port());
    let cfg = Daemon::config(
        dir.path(),
        sip,
        api,
        "password = \"pw\"\nquery_info = false\nquery_timeout_secs = 2\n",
        &format!(
            "[media]\nports = \"32320-32339\"\nno_media_timeout_secs = 0\nplayback_end_grace_secs = 3\n[media.record]\ndir = \"{}\"\n",
            dir.path().join("rec").display()
        ),
    );
    let mut d = Daemon::start(&cfg, sip, api).unwrap();
    let server = format!("127.0.0.1:{sip}");
    let m = media.to_str().unwrap();
    let (mut cam, status) = sim::spawn(
        None,
        &server,
        "127.0.0.1",
        SEEKER,
        dir.path(),
        &["--media", m],
    );
    let (mut deaf, deaf_status) = sim::spawn(
        None,
        &server,
        "127.0.0.1",
        DEAF,
        dir.path(),
        &["--media", m, "--ignore-mansrtsp", "--playback-never-ends"],
    );
    online(&mut d, &[SEEKER, DEAF]);
    let open = |d: &Daemon, dev: &str, extra: &str| {
        let ch = sim::channel(dev, 1);
        let (code, v) = d
            .post_json(
                "/api/streams",
                &format!(r#"{{"device":"{dev}","channel":"{ch}"{extra}}}"#),
            )
            .unwrap();
        assert_eq!(code, 201, "{extra}: {v}");
        v["id"].as_str().unwrap().to_string()
    };
    let ctl = |d: &Daemon, id: &str, body: Value| {
        d.post_json(&format!("/api/streams/{id}/control"), &body.to_string())
            .unwrap()
    };
    let (s0, s1) = (1_796_601_600u64, 1_796_601_610u64);
    let id = open(
        &d,
        SEEKER,
        &format!(r#","mode":"playback","start":{s0},"end":{s1}"#),
    );
    d.wait_until(Duration::from_secs(10), "playback streaming", |_| {
        sim::stream(&status, &id)["frames_sent"].as_u64() > Some(10)
    })
    .unwrap();

    // Pause: the camera stops sending, the gateway says paused.
    let (code, v) = ctl(&d, &id, json!({"action": "pause"}));
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["playback"]["paused"], true, "{v}");
    d.wait_until(Duration::from_secs(5), "camera paused", |_| {
        sim::stream(&status, &id)["paused"] == true
    })
    .unwrap();
    let at_pause = sim::stream(&status, &id)["frames_sent"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        sim::stream(&status, &id)["frames_sent"].as_u64().unwrap(),
        at_pause,
        "a paused camera sends nothing"
    );
    let pos = d.get(&format!("/api/streams/{id}")).unwrap()["playback"]["position_secs"]
        .as_f64()
        .unwrap();
    assert!(pos > 0.0 && pos < 10.0, "{pos}");

    // Resume through the CLI, then 4x and a seek to 8 s through the API.
    let api_addr = d.api.to_string();
    let o = gateway(&["playback", &id, "resume", "--api", &api_addr]);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert!(
        o.stdout.contains("resume accepted; playing at 1x"),
        "{}",
        o.stdout
    );
    let (code, v) = ctl(&d, &id, json!({"action": "scale", "scale": 4}));
    assert_eq!((code, &v["playback"]["scale"]), (200, &json!(4.0)), "{v}");
    let at4 = d.wait_until(Duration::from_secs(5), "camera at 4x", |_| {
        sim::stream(&status, &id)["scale"] == 4.0
    });
    assert!(at4.is_ok(), "{}", sim::stream(&status, &id));
    let (code, v) = ctl(&d, &id, json!({"action": "seek", "position": 8}));
    assert_eq!(code, 200, "{v}");
    assert!(
        v["playback"]["position_secs"].as_f64().unwrap() >= 8.0,
        "{v}"
    );
    // The camera jumped to frame 200 (8 s at 25 fps) and plays the last
    // 2 s of the file at 4x: MediaStatus 121, BYE.
    d.wait_until(Duration::from_secs(20), "end of the file", |d| {
        d.get(&format!("/api/streams/{id}"))
            .is_ok_and(|v| v["state"] == "closed")
    })
    .unwrap();
    let v = d.get(&format!("/api/streams/{id}")).unwrap();
    assert_eq!(v["reason"], "end of file (MediaStatus 121)", "{v}");
    d.wait_until(Duration::from_secs(10), "gb-sim's report", |_| {
        sim::stream(&status, &id)["state"] == "ended"
    })
    .unwrap();
    let rep = sim::stream(&status, &id);
    assert_eq!(
        rep["mansrtsp"],
        json!(["PAUSE", "PLAY", "PLAY Scale=4", "PLAY Range=npt=8-"]),
        "{rep}"
    );
    assert_eq!(rep["file_frame"], 250, "{rep}");
    let sent = rep["frames_sent"].as_u64().unwrap();
    // Frames before the seek, then the 50 after frame 200.
    assert!(sent > 50 && sent < 250, "{rep}");
    assert_eq!(v["media"]["frames"].as_u64(), Some(sent), "{v}");
    assert_eq!(v["media"]["lost"], 0, "{v}");
    let f = v["media"]["files"][0].as_str().expect("recorded");
    assert_eq!(gateway_tests::testmedia::ffprobe_frames(f), sent, "{f}");
    // A control for a stream that ended: 404.
    let (code, v) = ctl(&d, &id, json!({"action": "pause"}));
    assert_eq!(code, 404, "{v}");

    // Live and download sessions take no MANSRTSP: 409.
    let live = open(&d, SEEKER, "");
    let (code, v) = ctl(&d, &live, json!({"action": "pause"}));
    assert_eq!(code, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("is live"), "{v}");
    assert_eq!(
        d.request("DELETE", &format!("/api/streams/{live}"), None)
            .unwrap()
            .0,
        200
    );

    // A device that ignores MANSRTSP and never ends its playback.
    let id = open(
        &d,
        DEAF,
        &format!(r#","mode":"playback","start":{s0},"end":{}"#, s0 + 2),
    );
    for (body, why) in [
        (json!({"action": "scale", "scale": 3}), "not one of"),
        (json!({"action": "rewind"}), "unknown action"),
        (json!({"action": "seek", "position": 2}), "past the range"),
        (json!({"action": "seek"}), "seek needs"),
    ] {
        let (code, v) = ctl(&d, &id, body.clone());
        assert_eq!(code, 400, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains(why), "{body}: {v}");
    }
    let (code, v) = ctl(&d, &id, json!({"action": "pause"}));
    assert_eq!(code, 504, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("did not answer the pause INFO"),
        "{v}"
    );
    // Past the 2 s range and the 3 s grace: BYE.
    d.wait_until(Duration::from_secs(30), "overrun playback ended", |d| {
        d.get(&format!("/api/streams/{id}"))
            .is_ok_and(|v| v["state"] == "closed")
    })
    .unwrap();
    let v = d.get(&format!("/api/streams/{id}")).unwrap();
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("no end of file (MediaStatus 121)"),
        "{v}"
    );
    assert!(
        sim::stream(&deaf_status, &id)["mansrtsp"]
            .as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(|x| x == "ignored")),
        "{}",
        sim::stream(&deaf_status, &id)
    );
    d.wait_until(Duration::from_secs(10), "the camera saw the BYE", |_| {
        sim::stream(&deaf_status, &id)["state"] == "ended"
    })
    .unwrap();

    let stat = |labels: &str| d.stat("gateway_playback_controls_total", labels);
    assert_eq!(stat("action=pause,result=ok"), 1);
    assert_eq!(stat("action=resume,result=ok"), 1);
    assert_eq!(stat("action=scale,result=ok"), 1);
    assert_eq!(stat("action=seek,result=ok"), 1);
    assert_eq!(stat("action=pause,result=timeout"), 1);
    assert_eq!(stat("action=pause,result=unavailable"), 2);
    assert_eq!(
        stat("action=scale,result=invalid"),
        0,
        "scale 3 is refused before"
    );
    assert_eq!(stat("action=unknown,result=invalid"), 3);
    assert_eq!(stat("action=seek,result=invalid"), 1);
    let ends = |labels: &str| d.stat("gateway_playback_ends_total", labels);
    assert_eq!(ends("mode=playback,reason=end_of_file"), 1);
    assert_eq!(ends("mode=playback,reason=overran"), 1);
    for c in [&mut cam, &mut deaf] {
        let _ = Command::new("kill").arg(c.id().to_string()).status();
        let _ = c.wait();
    }
    assert!(d.stop(), "daemon did not stop cleanly:\n{}", d.log_tail(30));
}

/// sipp as the device records a playback's MANSRTSP as it was on the
/// wire: INFOs in the INVITE's dialog (its Call-ID and tags, SIP CSeq
/// counting on from the INVITE's, BYE after them), `Application/MANSRTSP`,
/// and the standard's bodies with their own CSeq.
#[test]
fn mansrtsp_bytes_on_the_wire_as_sipp_received_them() {
    assert!(
        have_tools(&["sipp"]),
        "sipp is not installed (Debian package sip-tester)"
    );
    let dir = TempDir::new("mansrtsp-sipp");
    let (sip, api, dev_port) = (free_port(), free_port(), free_port());
    let mut d = Daemon::start(&config(dir.path(), sip, api), sip, api).unwrap();
    let log = dir.path().join("device-messages.log");
    let sipp = registering_device(
        dir.path(),
        d.sip,
        dev_port,
        SIPP_DEV,
        &scenarios().join("uas_playback.xml"),
        8000,
    )
    .trace_messages(&log);
    let mut child = sipp.spawn().unwrap();
    d.wait_until(Duration::from_secs(10), "sipp device online", |d| {
        d.device(SIPP_DEV).is_ok_and(|v| v["online"] == true)
    })
    .unwrap();
    let (code, v) = d
        .post_json(
            "/api/streams",
            &format!(
                r#"{{"device":"{SIPP_DEV}","mode":"playback","start":1796601600,"end":1796605200}}"#
            ),
        )
        .unwrap();
    assert_eq!(code, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    for body in [
        json!({"action": "pause"}),
        json!({"action": "resume"}),
        json!({"action": "scale", "scale": 0.5}),
        json!({"action": "seek", "position": 600}),
    ] {
        let (code, v) = d
            .post_json(&format!("/api/streams/{id}/control"), &body.to_string())
            .unwrap();
        assert_eq!(code, 200, "{body}: {v}");
    }
    let (code, v) = d
        .request("DELETE", &format!("/api/streams/{id}"), None)
        .unwrap();
    assert_eq!(code, 200, "{v}");
    let st = child.wait().unwrap();
    assert!(st.success(), "sipp device failed ({st})");
    let msgs = message_log(&log);
    let received = |method: &str| -> Vec<_> {
        msgs.iter()
            .filter(|m| !m.sent && m.head.method.as_deref() == Some(method))
            .collect()
    };
    let invite = received("INVITE");
    assert_eq!(invite.len(), 1);
    let offer = String::from_utf8_lossy(&invite[0].head.body).into_owned();
    assert!(offer.contains("s=Playback\r\n"), "{offer}");
    assert!(offer.contains(&format!("u={SIPP_DEV}:0\r\n")), "{offer}");
    assert!(offer.contains("t=1796601600 1796605200\r\n"), "{offer}");
    assert!(offer.contains(&format!("y={id}\r\n")), "{offer}");
    let infos = received("INFO");
    let expected = [
        "PAUSE MANSRTSP/1.0\r\nCSeq: 1\r\nPauseTime: now\r\n\r\n",
        "PLAY MANSRTSP/1.0\r\nCSeq: 2\r\nRange: npt=now-\r\n\r\n",
        "PLAY MANSRTSP/1.0\r\nCSeq: 3\r\nScale: 0.5\r\n\r\n",
        "PLAY MANSRTSP/1.0\r\nCSeq: 4\r\nRange: npt=600-\r\n\r\n",
    ];
    assert_eq!(infos.len(), expected.len());
    let inv = &invite[0].head;
    for (i, (m, body)) in infos.iter().zip(expected).enumerate() {
        let h = &m.head;
        assert_eq!(String::from_utf8_lossy(&h.body), body);
        assert_eq!(
            h.content_type
                .as_deref()
                .map(str::to_ascii_lowercase)
                .as_deref(),
            Some("application/mansrtsp")
        );
        assert_eq!(h.call_id, inv.call_id);
        assert_eq!(h.from.tag, inv.from.tag);
        assert!(h.to.tag.is_some(), "in the dialog: the device's tag");
        assert_eq!(h.cseq, 2 + i as u32, "SIP CSeq counts on from the INVITE's");
    }
    let bye = received("BYE");
    assert_eq!(bye.len(), 1);
    assert_eq!(bye[0].head.cseq, 6, "BYE after the INFOs");
    assert!(d.stop(), "daemon did not stop cleanly:\n{}", d.log_tail(30));
}

/// Subscriptions from `[sip.subscribe]`: gb-sim grants 4 s, so the
/// gateway refreshes them in their dialogs; its NOTIFYs are applied (a
/// catalog change sets the channel OFF, the alarm is kept, positions are
/// stored) and counted; the device clock's offset (-120 s) is measured.
/// A device that refuses SUBSCRIBE is retried; the API and the CLI
/// subscribe and unsubscribe; bad requests are 4xx.
#[test]
fn subscriptions_are_refreshed_and_their_notifies_applied() {
    let dir = TempDir::new("subscribe");
    let (sip, api) = (free_port(), free_port());
    let cfg = Daemon::config(
        dir.path(),
        sip,
        api,
        "password = \"pw\"\nquery_info = false\nquery_timeout_secs = 2\n\
         [sip.subscribe]\ncatalog = true\nalarm = true\nmobile_position = true\n\
         expires_secs = 60\nmobile_position_interval_secs = 1\nretry_secs = 2\n",
        "",
    );
    let mut d = Daemon::start(&cfg, sip, api).unwrap();
    let server = format!("127.0.0.1:{sip}");
    let (mut mobile, status) = sim::spawn(
        None,
        &server,
        "127.0.0.1",
        MOBILE,
        dir.path(),
        &[
            "--subscribe-max-expires",
            "4",
            "--catalog-change-after",
            "3",
            "--alarm-after",
            "3",
            "--clock-offset",
            "-120",
        ],
    );
    let (mut nosub, nosub_status) = sim::spawn(
        None,
        &server,
        "127.0.0.1",
        NOSUB,
        dir.path(),
        &["--refuse-subscribe"],
    );
    online(&mut d, &[MOBILE, NOSUB]);
    let subs = |d: &Daemon, dev: &str| d.get(&format!("/api/devices/{dev}/subscriptions")).unwrap();
    let sub = |v: &Value, event: &str| {
        v["subscriptions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["event"] == event)
            .cloned()
            .unwrap_or_default()
    };
    // All three granted 4 s and refreshed in their dialogs.
    d.wait_until(Duration::from_secs(20), "subscriptions refreshed", |d| {
        let v = subs(d, MOBILE);
        ["catalog", "alarm", "mobile_position"].iter().all(|e| {
            let s = sub(&v, e);
            s["state"] == "active" && s["expires"] == 4 && s["refreshes"].as_u64() >= Some(1)
        })
    })
    .unwrap();
    // gb-sim writes its report every second.
    d.wait_until(Duration::from_secs(5), "gb-sim's report", |_| {
        let rep = &sim::report(&status)["devices"][0]["subscriptions"];
        ["Catalog", "Alarm", "MobilePosition"]
            .iter()
            .all(|k| rep[k]["refreshes"].as_u64() >= Some(1))
    })
    .unwrap();
    let rep = &sim::report(&status)["devices"][0]["subscriptions"];
    for kind in ["Catalog", "Alarm", "MobilePosition"] {
        assert_eq!(rep[kind]["subscribes"], 1, "one dialog each: {rep}");
        assert!(rep[kind]["refreshes"].as_u64() >= Some(1), "{rep}");
        assert_eq!(rep[kind]["expired"], 0, "refreshed in time: {rep}");
    }
    // The catalog change (channel 1 OFF), the alarm and the positions
    // came as NOTIFYs and were applied.
    let ch1 = sim::channel(MOBILE, 1);
    d.wait_until(Duration::from_secs(15), "catalog change applied", |d| {
        d.get(&format!("/api/devices/{MOBILE}/channels"))
            .is_ok_and(|v| {
                v["channels"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["device_id"] == ch1.as_str() && c["status"] == "OFF")
            })
    })
    .unwrap();
    d.wait_until(Duration::from_secs(15), "alarm kept", |d| {
        d.get(&format!("/api/alarms?device={MOBILE}"))
            .is_ok_and(|v| v["count"] == 1)
    })
    .unwrap();
    let v = subs(&d, MOBILE);
    let lon = v["position"]["longitude"].as_f64().unwrap();
    assert!(lon > 116.3 && lon < 116.4, "{v}");
    assert_eq!(v["position"]["latitude"], 39.9, "{v}");
    let off = v["time_offset_secs"].as_i64().unwrap();
    assert!((-122..=-118).contains(&off), "clock 120 s behind: {v}");
    let stat = |d: &Daemon, f: &str, l: &str| d.stat(f, l);
    assert!(
        stat(
            &d,
            "gateway_notifies_total",
            "event=mobile_position,result=subscribed"
        ) >= 2
    );
    assert!(
        stat(
            &d,
            "gateway_notifies_total",
            "event=catalog,result=subscribed"
        ) >= 2
    );
    assert_eq!(
        stat(
            &d,
            "gateway_notifies_total",
            "event=alarm,result=subscribed"
        ),
        1
    );
    assert!(
        stat(
            &d,
            "gateway_subscriptions_total",
            "event=catalog,result=refreshed"
        ) >= 1
    );
    assert!(stat(&d, "gateway_mobile_positions_total", "") >= 2);
    // DeviceStatus's DeviceTime tells the same offset.
    let (code, st) = d
        .request("GET", &format!("/api/devices/{MOBILE}/status"), None)
        .unwrap();
    assert_eq!(code, 200, "{st}");
    let dev = d.device(MOBILE).unwrap();
    assert!(
        (-122..=-118).contains(&dev["time_offset_secs"].as_i64().unwrap()),
        "{dev}"
    );

    // The refusing device: failed with why, and retried.
    d.wait_until(Duration::from_secs(15), "refusals retried", |_| {
        sim::report(&nosub_status)["devices"][0]["subscriptions"]["Catalog"]["refused"].as_u64()
            >= Some(2)
    })
    .unwrap();
    let s = sub(&subs(&d, NOSUB), "catalog");
    assert_eq!(s["state"], "failed", "{s}");
    assert!(s["error"].as_str().unwrap().contains("489"), "{s}");
    assert!(
        stat(
            &d,
            "gateway_subscriptions_total",
            "event=catalog,result=refused"
        ) >= 2
    );

    // The API and the CLI.
    let put = |d: &Daemon, dev: &str, event: &str| {
        d.request(
            "PUT",
            &format!("/api/devices/{dev}/subscriptions/{event}"),
            None,
        )
        .unwrap()
    };
    let (code, v) = put(&d, NOSUB, "alarm");
    assert_eq!(code, 502, "{v}");
    let (code, v) = put(&d, MOBILE, "weather");
    assert_eq!(code, 400, "{v}");
    let (code, v) = put(&d, "34020000001320009999", "alarm");
    assert_eq!(code, 404, "{v}");
    let api_addr = d.api.to_string();
    let o = gateway(&[
        "subscribe",
        MOBILE,
        "mobile-position",
        "--cancel",
        "--api",
        &api_addr,
    ]);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert!(
        o.stdout.contains("mobile_position unsubscribed"),
        "{}",
        o.stdout
    );
    d.wait_until(
        Duration::from_secs(10),
        "unsubscribed at the device",
        |_| {
            let r = &sim::report(&status)["devices"][0]["subscriptions"]["MobilePosition"];
            r["unsubscribes"] == 1 && r["active"] == false
        },
    )
    .unwrap();
    let o = gateway(&["subscribe", MOBILE, "--api", &api_addr]);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert!(
        o.stdout.contains("catalog") && !o.stdout.contains("mobile_position"),
        "{}",
        o.stdout
    );
    assert!(o.stdout.contains("clock offset: -1"), "{}", o.stdout);
    // Kept in the device's record: not subscribed again.
    assert_eq!(
        d.device(MOBILE).unwrap()["subscribe"],
        json!(["catalog", "alarm"])
    );
    let (code, v) = put(&d, MOBILE, "mobile_position");
    assert_eq!((code, &v["state"]), (200, &json!("active")), "{v}");
    d.wait_until(
        Duration::from_secs(5),
        "subscribed again at the device",
        |_| {
            sim::report(&status)["devices"][0]["subscriptions"]["MobilePosition"]["subscribes"] == 2
        },
    )
    .unwrap();
    for c in [&mut mobile, &mut nosub] {
        let _ = Command::new("kill").arg(c.id().to_string()).status();
        let _ = c.wait();
    }
    assert!(d.stop(), "daemon did not stop cleanly:\n{}", d.log_tail(30));
}
