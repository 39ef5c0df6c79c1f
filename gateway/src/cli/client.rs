//! The commands that talk to a running daemon through its REST API:
//! `play`, `sessions`, `hangup`, `devices`, `control`, `records`.

use std::time::Duration;

use anyhow::{bail, Context as _, Result};

use super::{
    output::print_json, ApiArgs, ControlArgs, DevicesArgs, HangupArgs, PlayArgs, PlaybackArgs,
    PresetsArgs, RecordsArgs, SessionsArgs, SubscribeArgs,
};

/// GET on the daemon's API; a non-2xx answer becomes an error carrying
/// the API's own message.
fn api_get(base: &str, path: &str, token: Option<&str>) -> Result<serde_json::Value> {
    api_call("GET", base, path, token, None)
}

impl ApiArgs {
    /// (base address, token) from the flags, the config or the defaults.
    fn resolve(&self) -> Result<(String, Option<String>)> {
        let cfg = self
            .config
            .as_deref()
            .map(crate::config::Config::load)
            .transpose()?;
        let base = self
            .api
            .clone()
            .or_else(|| cfg.as_ref().map(|c| c.api.listen.to_string()))
            .unwrap_or_else(|| crate::config::DEFAULT_API.to_string());
        let token = self
            .token
            .clone()
            .or_else(|| cfg.as_ref().and_then(|c| c.api.token.clone()))
            .or_else(|| std::env::var("GATEWAY_API_TOKEN").ok());
        Ok((base, token))
    }
}

fn api_call(
    method: &str,
    base: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value> {
    let url = format!("http://{base}{path}");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let auth = token.map(|t| format!("Bearer {t}"));
    let sent = match (method, body) {
        ("POST", Some(b)) => {
            let mut r = agent.post(&url).header("Content-Type", "application/json");
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.send(b.to_string())
        }
        ("DELETE", _) => {
            let mut r = agent.delete(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
        _ => {
            let mut r = agent.get(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
    };
    let mut resp = sent.with_context(|| {
        format!("cannot reach the daemon's API at {base} (is `gateway run` up?)")
    })?;
    let code = resp.status().as_u16();
    let body: serde_json::Value = resp
        .body_mut()
        .read_json()
        .with_context(|| format!("{url}: answer is not JSON (HTTP {code})"))?;
    if !(200..300).contains(&code) {
        let msg = body["error"].as_str().unwrap_or("error");
        bail!("{msg} (HTTP {code})");
    }
    Ok(body)
}

pub(super) fn play(a: &PlayArgs) -> Result<()> {
    let (base, token) = a.api.resolve()?;
    let token = token.as_deref();
    let channel = match &a.channel {
        Some(c) => c.clone(),
        None => api_get(&base, &format!("/api/devices/{}/channels", a.device), token)?["channels"]
            [0]["device_id"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| a.device.clone()),
    };
    let mut body = serde_json::json!({
        "device": a.device, "channel": channel, "transport": a.transport,
    });
    if let Some(r) = a.record {
        body["record"] = serde_json::json!(r);
    }
    if a.mode != "live" {
        body["mode"] = serde_json::json!(a.mode);
    }
    for (k, v) in [("start", a.start), ("end", a.end)] {
        if let Some(v) = v {
            body[k] = serde_json::json!(v);
        }
    }
    if let Some(n) = a.download_speed {
        body["download_speed"] = serde_json::json!(n);
    }
    let s = api_call("POST", &base, "/api/streams", token, Some(&body))?;
    if a.json {
        return print_json(&s);
    }
    println!(
        "stream {} established: {} channel {} over {}, SSRC {}, media to {} from {}",
        s["id"].as_str().unwrap_or("?"),
        a.device,
        channel,
        a.transport,
        s["ssrc"],
        s["local"].as_str().unwrap_or("?"),
        s["remote"].as_str().unwrap_or("?")
    );
    Ok(())
}

pub(super) fn sessions(a: &SessionsArgs) -> Result<()> {
    let (base, token) = a.api.resolve()?;
    let path = if a.all {
        "/api/streams?all=true"
    } else {
        "/api/streams"
    };
    let list = api_get(&base, path, token.as_deref())?;
    if a.json {
        return print_json(&list);
    }
    println!(
        "{:<11} {:<22} {:<12} {:<12} {:>8} {:>6} {:>7} {:>8} {:>8}  REASON",
        "STREAM", "CHANNEL", "TRANSPORT", "STATE", "PACKETS", "LOST", "FRAMES", "K.PKTS", "K.LOST"
    );
    for s in list["streams"].as_array().into_iter().flatten() {
        let n = |v: &serde_json::Value| v.as_u64().map_or("-".to_string(), |x| x.to_string());
        println!(
            "{:<11} {:<22} {:<12} {:<12} {:>8} {:>6} {:>7} {:>8} {:>8}  {}",
            s["id"].as_str().unwrap_or("-"),
            s["channel"].as_str().unwrap_or("-"),
            s["transport"].as_str().unwrap_or("-"),
            s["state"].as_str().unwrap_or("-"),
            n(&s["media"]["packets"]),
            n(&s["media"]["lost"]),
            n(&s["media"]["frames"]),
            n(&s["kernel"]["packets"]),
            n(&s["kernel"]["lost"]),
            s["reason"].as_str().unwrap_or(""),
        );
    }
    Ok(())
}

pub(super) fn playback(a: &PlaybackArgs) -> Result<()> {
    let (base, token) = a.api.resolve()?;
    let body = match a.action.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [act @ ("pause" | "resume")] => serde_json::json!({ "action": act }),
        ["scale", x] => {
            let x: f64 = x
                .parse()
                .map_err(|_| anyhow::anyhow!("scale needs a number (0.25-8), not {x:?}"))?;
            serde_json::json!({ "action": "scale", "scale": x })
        }
        ["seek", t] => {
            let t: u64 = t
                .parse()
                .map_err(|_| anyhow::anyhow!("seek needs whole seconds, not {t:?}"))?;
            serde_json::json!({ "action": "seek", "position": t })
        }
        _ => anyhow::bail!(
            "unknown playback action {:?}: pause, resume, scale X or seek SECS",
            a.action.join(" ")
        ),
    };
    let v = api_call(
        "POST",
        &base,
        &format!("/api/streams/{}/control", a.id),
        token.as_deref(),
        Some(&body),
    )?;
    if a.json {
        return print_json(&v);
    }
    let p = &v["playback"];
    println!(
        "stream {}: {} accepted; {} at {}x, {} s into the range",
        a.id,
        a.action.join(" "),
        if p["paused"] == true {
            "paused"
        } else {
            "playing"
        },
        p["scale"].as_f64().map_or("?".into(), |x| x.to_string()),
        p["position_secs"]
    );
    Ok(())
}

pub(super) fn presets(a: &PresetsArgs) -> Result<()> {
    let (base, token) = a.api.resolve()?;
    let mut path = format!("/api/devices/{}/presets", a.device);
    if let Some(c) = &a.channel {
        path.push_str(&format!("?channel={c}"));
    }
    let v = api_get(&base, &path, token.as_deref())?;
    if a.json {
        return print_json(&v);
    }
    let list = v["presets"].as_array().cloned().unwrap_or_default();
    println!(
        "{}: {} preset(s)",
        v["target"].as_str().unwrap_or(&a.device),
        list.len()
    );
    for p in list {
        println!(
            "{:>4}  {}",
            p["id"].as_str().unwrap_or("?"),
            p["name"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

pub(super) fn subscribe(a: &SubscribeArgs) -> Result<()> {
    let (base, token) = a.api.resolve()?;
    let token = token.as_deref();
    let Some(event) = &a.event else {
        let v = api_get(
            &base,
            &format!("/api/devices/{}/subscriptions", a.device),
            token,
        )?;
        if a.json {
            return print_json(&v);
        }
        let subs = v["subscriptions"].as_array().cloned().unwrap_or_default();
        if subs.is_empty() {
            println!("device {}: no subscriptions", a.device);
        }
        for s in subs {
            println!(
                "{:<16} {:<8} expires {:>5} s  notifies {:>4}  refreshes {:>3}{}",
                s["event"].as_str().unwrap_or("?"),
                s["state"].as_str().unwrap_or("?"),
                s["expires"],
                s["notifies"],
                s["refreshes"],
                s["error"]
                    .as_str()
                    .map(|e| format!("  ({e})"))
                    .unwrap_or_default()
            );
        }
        if let Some(o) = v["time_offset_secs"].as_i64() {
            println!("clock offset: {o:+} s");
        }
        if v["position"].is_object() {
            let p = &v["position"];
            println!(
                "position: {} {} at {}",
                p["longitude"],
                p["latitude"],
                p["time"].as_str().unwrap_or("?")
            );
        }
        return Ok(());
    };
    let event = event.replace('-', "_");
    let path = format!("/api/devices/{}/subscriptions/{event}", a.device);
    let method = if a.cancel { "DELETE" } else { "PUT" };
    let v = api_call(method, &base, &path, token, None)?;
    if a.json {
        return print_json(&v);
    }
    if a.cancel {
        println!("device {}: {event} unsubscribed", a.device);
    } else {
        println!(
            "device {}: subscribed to {event} for {} s",
            a.device, v["expires"]
        );
    }
    Ok(())
}

pub(super) fn hangup(a: &HangupArgs) -> Result<()> {
    let (base, token) = a.api.resolve()?;
    let s = api_call(
        "DELETE",
        &base,
        &format!("/api/streams/{}", a.id),
        token.as_deref(),
        None,
    )?;
    if a.json {
        return print_json(&s);
    }
    println!(
        "stream {} closed; {} frames received{}",
        a.id,
        s["media"]["frames"],
        s["media"]["files"][0]
            .as_str()
            .map(|f| format!(", recorded to {f}"))
            .unwrap_or_default()
    );
    Ok(())
}

pub(super) fn devices(a: &DevicesArgs) -> Result<()> {
    let (base, token) = a.api.resolve()?;
    let token = token.as_deref();
    if let Some(id) = &a.id {
        let dev = api_get(&base, &format!("/api/devices/{id}"), token)?;
        let ch = api_get(&base, &format!("/api/devices/{id}/channels"), token)?;
        if a.json {
            return print_json(&serde_json::json!({ "device": dev, "channels": ch["channels"] }));
        }
        let s = |k: &str| match &dev[k] {
            serde_json::Value::Null => "-".to_string(),
            serde_json::Value::String(x) => x.clone(),
            v => v.to_string(),
        };
        for k in [
            "id",
            "online",
            "registered",
            "transport",
            "addr",
            "contact",
            "expires",
            "keepalive_interval",
            "idle_secs",
            "offline_reason",
            "user_agent",
            "gb_version",
            "registrations",
            "keepalives",
            "charset",
        ] {
            println!("{k:<20} {}", s(k));
        }
        let cat = &dev["catalog"];
        println!(
            "{:<20} {} ({} of {}, SN {})",
            "catalog", cat["state"], cat["received"], cat["sum_num"], cat["sn"]
        );
        println!("\n{:<22} {:<4} NAME", "CHANNEL", "ST");
        for c in ch["channels"].as_array().into_iter().flatten() {
            println!(
                "{:<22} {:<4} {}",
                c["device_id"].as_str().unwrap_or("-"),
                c["status"].as_str().unwrap_or("-"),
                c["name"].as_str().unwrap_or("-")
            );
        }
        return Ok(());
    }
    let list = api_get(&base, "/api/devices", token)?;
    if a.json {
        return print_json(&list);
    }
    println!(
        "{:<22} {:<7} {:<4} {:<24} {:>8} {:>9} {:>8}  REASON",
        "DEVICE", "STATE", "TR", "ADDRESS", "CHANNELS", "IDLE(s)", "EXPIRES"
    );
    for d in list["devices"].as_array().into_iter().flatten() {
        println!(
            "{:<22} {:<7} {:<4} {:<24} {:>8} {:>9.1} {:>8}  {}",
            d["id"].as_str().unwrap_or("-"),
            if d["online"].as_bool() == Some(true) {
                "online"
            } else {
                "offline"
            },
            d["transport"].as_str().unwrap_or("-"),
            d["addr"].as_str().unwrap_or("-"),
            d["channels"].as_u64().unwrap_or(0),
            d["idle_secs"].as_f64().unwrap_or(0.0),
            d["expires"].as_u64().unwrap_or(0),
            d["offline_reason"].as_str().unwrap_or(""),
        );
    }
    println!(
        "{} devices, {} online",
        list["count"].as_u64().unwrap_or(0),
        list["online"].as_u64().unwrap_or(0)
    );
    Ok(())
}

/// `gateway control`'s words as the API's JSON command
/// (gb28181::control::Control); the daemon checks ranges.
fn control_json(a: &ControlArgs) -> Result<serde_json::Value> {
    use serde_json::json;
    let w: Vec<&str> = a.command.iter().map(String::as_str).collect();
    let n = |i: usize, what: &str| -> Result<u64> {
        w.get(i)
            .with_context(|| format!("{}: {what} missing", w[0]))?
            .parse::<u64>()
            .with_context(|| format!("{}: {what} must be a number", w[0]))
    };
    let action = |allowed: &[&str]| -> Result<String> {
        match w.get(1) {
            Some(x) if allowed.contains(x) => Ok(x.to_string()),
            Some(x) => bail!("{}: {x:?} is not one of {}", w[0], allowed.join(", ")),
            None => bail!("{}: say {}", w[0], allowed.join(", ")),
        }
    };
    Ok(match w[0] {
        "ptz" => {
            let mut v = json!({"cmd": "ptz", "speed": a.speed, "zoom_speed": a.zoom_speed});
            if w.len() < 2 {
                bail!("ptz: say left, right, up, down, zoom-in or zoom-out");
            }
            for d in &w[1..] {
                let (k, val) = match *d {
                    "left" | "right" => ("pan", *d),
                    "up" | "down" => ("tilt", *d),
                    "zoom-in" => ("zoom", "in"),
                    "zoom-out" => ("zoom", "out"),
                    other => {
                        bail!("ptz: {other:?} is not left, right, up, down, zoom-in or zoom-out")
                    }
                };
                if !v[k].is_null() {
                    bail!("ptz: two {k} directions");
                }
                v[k] = json!(val);
            }
            v
        }
        "stop" => json!({"cmd": "stop"}),
        "focus" => {
            json!({"cmd": "focus", "action": action(&["near", "far", "stop"])?, "speed": a.speed})
        }
        "iris" => {
            json!({"cmd": "iris", "action": action(&["open", "close", "stop"])?, "speed": a.speed})
        }
        "preset" => {
            json!({"cmd": "preset", "action": action(&["set", "call", "delete"])?, "index": n(2, "preset number")?})
        }
        "cruise" => {
            let act = action(&["add", "delete", "speed", "dwell", "start", "stop"])?;
            let mut v = json!({"cmd": "cruise", "action": act, "group": n(2, "group")?});
            match act.as_str() {
                "add" | "delete" => v["preset"] = json!(n(3, "preset number")?),
                "speed" | "dwell" => v["value"] = json!(n(3, "value")?),
                _ => {}
            }
            v
        }
        "scan" => {
            let act = action(&["start", "stop", "left", "right", "speed"])?;
            let mut v = json!({"cmd": "scan", "action": act, "group": n(2, "group")?});
            if act == "speed" {
                v["value"] = json!(n(3, "value")?);
            }
            v
        }
        "aux" => {
            json!({"cmd": "aux", "on": action(&["on", "off"])? == "on", "switch": n(2, "switch number")?})
        }
        "guard" => json!({"cmd": "guard", "set": action(&["set", "reset"])? == "set"}),
        "alarm-reset" => json!({"cmd": "alarm_reset"}),
        "record" => json!({"cmd": "record", "start": action(&["start", "stop"])? == "start"}),
        "iframe" => json!({"cmd": "iframe"}),
        "drag-zoom" => json!({
            "cmd": "drag_zoom",
            "zoom_in": action(&["in", "out"])? == "in",
            "length": n(2, "LENGTH")?, "width": n(3, "WIDTH")?,
            "mid_x": n(4, "MIDX")?, "mid_y": n(5, "MIDY")?,
            "length_x": n(6, "LENGTHX")?, "length_y": n(7, "LENGTHY")?,
        }),
        "home-position" => match w.get(1) {
            Some(&"off") => json!({"cmd": "home_position", "enabled": false}),
            _ => {
                json!({"cmd": "home_position", "enabled": true, "preset": n(1, "PRESET")?, "reset_secs": n(2, "SECS")?})
            }
        },
        "teleboot" => {
            if !a.yes {
                bail!("teleboot reboots the device: add --yes to mean it");
            }
            json!({"cmd": "teleboot", "confirm": true})
        }
        other => bail!(
            "unknown control command {other:?}: ptz, stop, focus, iris, preset, cruise, scan, aux, \
             guard, alarm-reset, record, iframe, drag-zoom, home-position, teleboot"
        ),
    })
}

pub(super) fn control(a: &ControlArgs) -> Result<()> {
    let mut body = control_json(a)?;
    if let Some(c) = &a.channel {
        body["channel"] = serde_json::json!(c);
    }
    let (base, token) = a.api.resolve()?;
    let r = api_call(
        "POST",
        &base,
        &format!("/api/devices/{}/control", a.device),
        token.as_deref(),
        Some(&body),
    )?;
    if a.json {
        return print_json(&r);
    }
    let result = r["result"].as_str().unwrap_or("?");
    println!(
        "{} {}: {} {} (SN {}, SIP {})",
        a.device,
        r["target"].as_str().unwrap_or("?"),
        r["command"].as_str().unwrap_or("?"),
        if result == "accepted" {
            "accepted by the device".to_string()
        } else {
            format!("answered {result}")
        },
        r["sn"],
        r["sip_status"]
    );
    Ok(())
}

pub(super) fn records(a: &RecordsArgs) -> Result<()> {
    let (base, token) = a.api.resolve()?;
    let mut path = format!(
        "/api/devices/{}/records?start={}&end={}&type={}",
        a.device, a.start, a.end, a.record_type
    );
    if let Some(c) = &a.channel {
        path.push_str(&format!("&channel={c}"));
    }
    let r = api_get(&base, &path, token.as_deref())?;
    if a.json {
        return print_json(&r);
    }
    println!(
        "{} {}: {} record(s){}",
        a.device,
        r["channel"].as_str().unwrap_or("?"),
        r["count"],
        if r["complete"] == true {
            String::new()
        } else {
            format!(" of {} announced: the answer stopped early", r["sum_num"])
        }
    );
    if r["count"].as_u64().unwrap_or(0) > 0 {
        println!(
            "{:<19}  {:<19}  {:<6}  {:>12}  FILE",
            "START", "END", "TYPE", "BYTES"
        );
    }
    for it in r["items"].as_array().into_iter().flatten() {
        let s = |k: &str| it[k].as_str().unwrap_or("-").to_string();
        println!(
            "{:<19}  {:<19}  {:<6}  {:>12}  {}",
            s("start_time"),
            s("end_time"),
            s("record_type"),
            s("file_size"),
            s("file_path")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn json_of(args: &[&str]) -> Result<serde_json::Value> {
        let cli = crate::cli::Cli::try_parse_from(
            ["gateway", "control", "34020000001320000001"]
                .iter()
                .chain(args),
        )?;
        match cli.command {
            crate::cli::Command::Control(a) => control_json(&a),
            _ => unreachable!("parsed as control"),
        }
    }

    /// Every word form becomes a command the daemon's parser accepts.
    #[test]
    fn control_words_become_commands() {
        for (args, hex) in [
            (
                &["ptz", "left", "--speed", "31"][..],
                Some("A50F01021F0000D6"),
            ),
            (&["stop"][..], Some("A50F0100000000B5")),
            (&["preset", "call", "5"][..], Some("A50F01820005003C")),
            (&["ptz", "right", "up", "zoom-in"][..], None),
            (&["focus", "near"][..], None),
            (&["iris", "close"][..], None),
            (&["cruise", "add", "1", "3"][..], None),
            (&["cruise", "speed", "1", "300"][..], None),
            (&["scan", "left", "2"][..], None),
            (&["aux", "on", "1"][..], None),
            (&["guard", "set"][..], None),
            (&["alarm-reset"][..], None),
            (&["record", "stop"][..], None),
            (&["iframe"][..], None),
            (
                &["drag-zoom", "in", "1920", "1080", "10", "20", "30", "40"][..],
                None,
            ),
            (&["home-position", "3", "60"][..], None),
            (&["home-position", "off"][..], None),
            (&["teleboot", "--yes"][..], None),
        ] {
            let v = json_of(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            let c: gb28181::control::Control =
                serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{args:?}: {v}: {e}"));
            c.validate().unwrap_or_else(|e| panic!("{args:?}: {e}"));
            if let Some(hex) = hex {
                assert_eq!(c.ptz_cmd().unwrap().unwrap().to_hex(), hex, "{args:?}");
            }
        }
    }

    #[test]
    fn bad_control_words_are_refused() {
        for (args, msg) in [
            (&["dance"][..], "unknown control command"),
            (&["ptz"][..], "say left"),
            (&["ptz", "left", "right"][..], "two pan"),
            (&["ptz", "sideways"][..], "is not left"),
            (&["preset", "call"][..], "preset number missing"),
            (&["preset", "call", "x"][..], "must be a number"),
            (&["focus", "in"][..], "not one of near, far, stop"),
            (&["teleboot"][..], "--yes"),
        ] {
            let e = json_of(args).unwrap_err().to_string();
            assert!(e.contains(msg), "{args:?}: {e}");
        }
    }
}
