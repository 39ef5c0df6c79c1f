//! dashboards/: the alert rules, their unit tests and the example scrape
//! config pass promtool; the Grafana dashboards are well-formed and
//! importable (uids, data source variable, panel ids, grid, variables in
//! use defined); every PromQL expression of dashboards and rules is
//! accepted by a real Prometheus, which evaluates every rule without error.
//! (That they return data from a running gateway is the metrics
//! integration test's part.)

use std::{collections::BTreeSet, time::Duration};

use gateway_tests::{
    prom::{
        dashboard_exprs, dashboards_dir, instantiate, promtool_check_config, promtool_check_rules,
        promtool_test_rules, rule_exprs, Prometheus,
    },
    sipp::TempDir,
};
use serde_json::Value;

const DASHBOARDS: [&str; 4] = [
    "gateway-overview.json",
    "gateway-stream.json",
    "gateway-dataplane.json",
    "gateway-sip.json",
];

const ALERTS: [&str; 10] = [
    "GatewayDown",
    "GatewayDeviceOffline",
    "GatewayStreamLoss",
    "GatewayStreamNoMedia",
    "GatewayUnknownFlowDropsSurging",
    "GatewayRegistrationFailuresSurging",
    "GatewayDecryptFailures",
    "GatewayDeviceAlarm",
    "GatewayKernelRelayFallbacks",
    "GatewaySipFlood",
];

fn ok(r: anyhow::Result<String>) -> String {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}

#[test]
fn promtool_accepts_rules_rule_tests_and_config() {
    let d = dashboards_dir();
    let out = ok(promtool_check_rules(&d.join("alerts.yml")));
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", ALERTS.len())),
        "{out}"
    );
    // Each alert fires on a bad series and stays silent on a healthy one.
    let out = ok(promtool_test_rules(&d.join("alerts_test.yml")));
    assert!(out.contains("SUCCESS"), "{out}");
    let out = ok(promtool_check_config(&d.join("prometheus.yml")));
    assert!(out.contains("SUCCESS: 1 rule files found"), "{out}");
    // The example scrapes the gateway's default metrics address as job
    // `gateway` (what GatewayDown matches).
    let cfg = std::fs::read_to_string(d.join("prometheus.yml")).unwrap();
    assert!(cfg.contains("job_name: gateway"), "{cfg}");
    assert!(cfg.contains("127.0.0.1:9330"), "{cfg}");
    // Every alert has for:, a severity and both annotations.
    let doc: Value =
        serde_norway::from_str(&std::fs::read_to_string(d.join("alerts.yml")).unwrap()).unwrap();
    let groups = doc["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0]["name"], "gateway");
    let rules = groups[0]["rules"].as_array().unwrap();
    let names: Vec<&str> = rules.iter().filter_map(|r| r["alert"].as_str()).collect();
    assert_eq!(names, ALERTS);
    for r in rules {
        let n = &r["alert"];
        assert!(r["for"].is_string(), "{n}: no for");
        assert!(
            ["warning", "critical"].contains(&r["labels"]["severity"].as_str().unwrap_or("")),
            "{n}: severity"
        );
        for a in ["summary", "description"] {
            assert!(
                !r["annotations"][a].as_str().unwrap_or("").is_empty(),
                "{n}: no {a}"
            );
        }
    }
}

fn load(file: &str) -> Value {
    let p = dashboards_dir().join(file);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every panel, those inside rows included.
fn panels(list: &Value, out: &mut Vec<Value>) {
    for p in list.as_array().into_iter().flatten() {
        out.push(p.clone());
        panels(&p["panels"], out);
    }
}

/// Grafana variable names referenced as $x, ${x...} or [[x...]].
fn referenced_vars(s: &str) -> BTreeSet<String> {
    let mut v = BTreeSet::new();
    let b = s.as_bytes();
    for (i, _) in s.match_indices('$') {
        let rest = &s[i + 1..];
        let rest = rest.strip_prefix('{').unwrap_or(rest);
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            v.insert(name);
        }
    }
    for (i, _) in s.match_indices("[[") {
        let name: String = s[i + 2..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() && b.get(i + 2 + name.len()) != Some(&b'[') {
            v.insert(name);
        }
    }
    v
}

#[test]
fn dashboards_are_importable_grafana_json() {
    let files: BTreeSet<String> = std::fs::read_dir(dashboards_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    assert_eq!(
        files,
        DASHBOARDS
            .iter()
            .map(|s| s.to_string())
            .collect::<BTreeSet<_>>()
    );
    let mut uids = BTreeSet::new();
    for f in DASHBOARDS {
        let d = load(f);
        let uid = d["uid"].as_str().unwrap_or("");
        assert!(!uid.is_empty() && uid.len() <= 40, "{f}: uid {uid:?}");
        assert!(uids.insert(uid.to_string()), "{f}: uid {uid} used twice");
        assert!(!d["title"].as_str().unwrap_or("").is_empty(), "{f}: title");
        let sv = d["schemaVersion"].as_u64().unwrap_or(0);
        assert!((36..=41).contains(&sv), "{f}: schemaVersion {sv}");
        // Import/provisioning leave the id to Grafana.
        assert!(d["id"].is_null(), "{f}: id must be null");
        // The data source is a variable of type datasource (works for
        // both import and file provisioning; no ${DS_...} inputs).
        let vars = d["templating"]["list"].as_array().expect("templating");
        let ds = vars
            .iter()
            .find(|v| v["type"] == "datasource")
            .expect("datasource variable");
        assert_eq!(ds["name"], "datasource", "{f}");
        assert_eq!(ds["query"], "prometheus", "{f}");
        let defined: BTreeSet<String> = vars
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(defined.len(), vars.len(), "{f}: variable names repeat");
        for v in vars.iter().filter(|v| v["type"] == "query") {
            assert_eq!(
                v["datasource"]["uid"], "${datasource}",
                "{f}: {}",
                v["name"]
            );
        }
        let mut all = Vec::new();
        panels(&d["panels"], &mut all);
        assert!(all.len() >= 8, "{f}: {} panels", all.len());
        let mut ids = BTreeSet::new();
        for p in &all {
            let title = p["title"].as_str().unwrap_or("");
            let id = p["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("{f}:{title}: no id"));
            assert!(ids.insert(id), "{f}:{title}: panel id {id} repeats");
            let g = &p["gridPos"];
            let (x, w, h) = (g["x"].as_u64(), g["w"].as_u64(), g["h"].as_u64());
            let (Some(x), Some(w), Some(h)) = (x, w, h) else {
                panic!("{f}:{title}: gridPos {g}");
            };
            assert!(
                g["y"].is_u64() && w >= 1 && h >= 1 && x + w <= 24,
                "{f}:{title}: gridPos {g}"
            );
            if p["type"] == "row" {
                continue;
            }
            assert!(!title.is_empty(), "{f}: panel {id} has no title");
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{f}:{title}");
            assert_eq!(p["datasource"]["type"], "prometheus", "{f}:{title}");
            let targets = p["targets"]
                .as_array()
                .unwrap_or_else(|| panic!("{f}:{title}: no targets"));
            assert!(!targets.is_empty(), "{f}:{title}: no targets");
            let mut refs = BTreeSet::new();
            for t in targets {
                assert!(
                    refs.insert(t["refId"].as_str().unwrap().to_string()),
                    "{f}:{title}: refId repeats"
                );
                assert_eq!(t["datasource"]["uid"], "${datasource}", "{f}:{title}");
                let expr = t["expr"].as_str().unwrap_or("");
                assert!(!expr.trim().is_empty(), "{f}:{title}: empty expr");
                assert!(
                    !expr.contains("[5m]") && !expr.contains("[1m]"),
                    "{f}:{title}: use $__rate_interval: {expr}"
                );
            }
        }
        // Every variable an expression (or a link) uses is defined, or is
        // one of Grafana's.
        let text = serde_json::to_string(&d["panels"]).unwrap()
            + &serde_json::to_string(&d["templating"]).unwrap();
        for v in referenced_vars(&text) {
            assert!(
                defined.contains(&v) || v.starts_with("__"),
                "{f}: ${v} used but not defined"
            );
        }
    }
}

#[test]
fn prometheus_accepts_every_expression_and_evaluates_every_rule() {
    let tmp = TempDir::new("prom-exprs");
    let alerts = dashboards_dir().join("alerts.yml");
    let prom = Prometheus::start(tmp.path(), &[], std::slice::from_ref(&alerts))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut exprs = dashboard_exprs(&dashboards_dir());
    let dashboards_n = exprs.len();
    exprs.extend(rule_exprs(&alerts));
    assert!(dashboards_n > 60, "{dashboards_n} dashboard expressions");
    let mut failed = Vec::new();
    for (k, e) in &exprs {
        let q = instantiate(e, &[("device", "34020000001320000001")]);
        if let Err(err) = prom.query(&q) {
            failed.push(format!("{k}: {q}\n  {err:#}"));
        }
    }
    assert!(
        failed.is_empty(),
        "rejected by Prometheus:\n{}",
        failed.join("\n")
    );
    // The rules are loaded and evaluate without error (health ok).
    let end = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let rules = prom.rules().unwrap_or_else(|e| panic!("{e:#}"));
        let names: Vec<&str> = rules.iter().filter_map(|r| r["name"].as_str()).collect();
        assert_eq!(names, ALERTS, "{}", prom.log_tail());
        for r in &rules {
            assert_ne!(r["health"], "err", "{r}");
        }
        if rules.iter().all(|r| r["health"] == "ok") {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "rules not evaluated: {rules:?}\n{}",
            prom.log_tail()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // No target: nothing is up, and GatewayDown has nothing to match.
    assert!(!prom.targets_up());
    assert!(prom.alerts().unwrap().is_empty());
}
