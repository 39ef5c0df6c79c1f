//! Prometheus for the metrics tests: a real server (Debian package
//! `prometheus`) on loopback with a generated config, `promtool`, and the
//! PromQL expressions of the Grafana dashboards (`dashboards/*.json`) and
//! the alert rules (`dashboards/alerts.yml`), made runnable with
//! [`instantiate`].

use std::{
    collections::BTreeSet,
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::sipp::free_port;

/// The repository's `dashboards/` directory.
pub fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards")
}

/// `docs/metrics.md`, the reference of every metric the daemon serves.
pub fn metrics_doc() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md")
}

/// A Prometheus server started by a test, listening on 127.0.0.1 (in the
/// given network namespace if any), scraping `targets` every second as job
/// `gateway` and evaluating `rule_files` every second. Killed on drop.
pub struct Prometheus {
    child: Option<Child>,
    /// Its HTTP API and UI.
    pub addr: SocketAddr,
    /// The generated configuration.
    pub config: PathBuf,
    /// stdout and stderr of the server.
    pub log: PathBuf,
    /// The network namespace it runs in (requests are made from a thread
    /// inside it).
    pub netns: Option<String>,
}

impl Prometheus {
    /// Starts `prometheus` on a free loopback port with its config and TSDB
    /// under `dir`, and waits until `/-/ready` answers.
    pub fn start(dir: &Path, targets: &[SocketAddr], rule_files: &[PathBuf]) -> Result<Prometheus> {
        Prometheus::start_in(dir, targets, rule_files, None)
    }

    /// [`Prometheus::start`] inside the network namespace `netns` (`ip netns
    /// exec`; its loopback must be up), for a daemon that runs there.
    pub fn start_in(
        dir: &Path,
        targets: &[SocketAddr],
        rule_files: &[PathBuf],
        netns: Option<&str>,
    ) -> Result<Prometheus> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, config_text(targets, rule_files)?)
            .with_context(|| format!("writing {}", config.display()))?;
        let log = dir.join("prometheus.log");
        let mut last = String::new();
        // The port is free when chosen; another process may take it before
        // Prometheus binds it, so try a few.
        for _ in 0..3 {
            let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            let out = std::fs::File::create(&log)?;
            let err = out.try_clone()?;
            let mut cmd = match netns {
                Some(ns) => {
                    let mut c = Command::new("ip");
                    c.args(["netns", "exec", ns, "prometheus"]);
                    c
                }
                None => Command::new("prometheus"),
            };
            cmd.arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("tsdb").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--web.enable-lifecycle")
                .arg("--log.level=info")
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err);
            let child = cmd.spawn().context(
                "starting prometheus (Debian package `prometheus`: apt-get install prometheus)",
            )?;
            let mut p = Prometheus {
                child: Some(child),
                addr,
                config: config.clone(),
                log: log.clone(),
                netns: netns.map(str::to_string),
            };
            match p.wait_ready(Duration::from_secs(60)) {
                Ok(()) => return Ok(p),
                Err(e) => {
                    p.stop();
                    last = format!("{e:#}\n{}", p.log_tail());
                    if !last.contains("address already in use") {
                        break;
                    }
                }
            }
        }
        bail!("prometheus did not become ready: {last}")
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let end = Instant::now() + limit;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(st) = child.try_wait()? {
                    bail!("prometheus exited with {st}");
                }
            }
            if let Ok((200, _)) = self.get("/-/ready", &[]) {
                return Ok(());
            }
            if Instant::now() > end {
                bail!("/-/ready not answering after {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The last lines of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// A GET on the server (from inside its namespace): status and body.
    pub fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<(u16, String)> {
        let url = format!("{}{path}", self.url());
        let query: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let Some(ns) = &self.netns else {
            return http_get(&url, &query);
        };
        crate::netns::try_in_netns(ns, move || http_get(&url, &query))
    }

    /// `data` of an API call that answered `"status": "success"`.
    pub fn api(&self, path: &str, query: &[(&str, &str)]) -> Result<Value> {
        let (code, body) = self.get(path, query)?;
        let v: Value = serde_json::from_str(&body)
            .with_context(|| format!("GET {path}: HTTP {code}, not JSON: {body}"))?;
        if v["status"] != "success" {
            bail!(
                "GET {path} {query:?}: HTTP {code}, {}: {}",
                v["errorType"].as_str().unwrap_or("?"),
                v["error"].as_str().unwrap_or(&body)
            );
        }
        Ok(v["data"].clone())
    }

    /// An instant query (`/api/v1/query`) now: `data.result` (an array for
    /// a vector, `[time, "value"]` for a scalar). A PromQL error is an Err.
    pub fn query(&self, promql: &str) -> Result<Value> {
        let data = self.api("/api/v1/query", &[("query", promql)])?;
        Ok(data["result"].clone())
    }

    /// Polls [`Prometheus::query`] until its result is non-empty (a vector
    /// with at least one element, or a scalar/string) or `limit` passes.
    pub fn wait_for(&self, promql: &str, limit: Duration) -> Result<Value> {
        let end = Instant::now() + limit;
        loop {
            let last = match self.query(promql) {
                Ok(r) if !is_empty_result(&r) => return Ok(r),
                Ok(r) => format!("empty result {r}"),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() > end {
                bail!(
                    "{promql}: no data after {limit:?} ({last}); targets: {}",
                    self.targets()
                        .map(|t| Value::from(t).to_string())
                        .unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The active scrape targets (`/api/v1/targets`, `activeTargets`).
    pub fn targets(&self) -> Result<Vec<Value>> {
        let data = self.api("/api/v1/targets", &[("state", "active")])?;
        Ok(data["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// True when there is at least one target and every one was up at its
    /// last scrape.
    pub fn targets_up(&self) -> bool {
        match self.targets() {
            Ok(t) => !t.is_empty() && t.iter().all(|t| t["health"] == "up"),
            Err(_) => false,
        }
    }

    /// Waits until [`Prometheus::targets_up`].
    pub fn wait_targets_up(&self, limit: Duration) -> Result<()> {
        let end = Instant::now() + limit;
        while !self.targets_up() {
            if Instant::now() > end {
                bail!(
                    "targets not up after {limit:?}: {}",
                    self.targets().map(|t| Value::from(t).to_string())?
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Ok(())
    }

    /// Every loaded rule (`/api/v1/rules`), each with `name`, `query`,
    /// `health` (`ok`, `err`, `unknown` before its first evaluation),
    /// `lastError`, and for alerts `state`.
    pub fn rules(&self) -> Result<Vec<Value>> {
        let data = self.api("/api/v1/rules", &[])?;
        Ok(data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect())
    }

    /// Pending and firing alerts (`/api/v1/alerts`).
    pub fn alerts(&self) -> Result<Vec<Value>> {
        let data = self.api("/api/v1/alerts", &[])?;
        Ok(data["alerts"].as_array().cloned().unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A GET of `url` with `query` from the calling thread's namespace,
/// without any proxy: the status and the body as text.
pub fn http_get(url: &str, query: &[(String, String)]) -> Result<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        // Loopback only, whatever the environment says.
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut req = agent.get(url);
    for (k, v) in query {
        req = req.query(k, v);
    }
    let mut resp = req.call().with_context(|| format!("GET {url}"))?;
    let code = resp.status().as_u16();
    let body = resp.body_mut().read_to_string().unwrap_or_default();
    Ok((code, body))
}

/// True for an empty vector or matrix; scalars and strings are data.
pub fn is_empty_result(r: &Value) -> bool {
    match r {
        // A scalar or string result is [time, "value"].
        Value::Array(a) => a.is_empty(),
        Value::Null => true,
        _ => false,
    }
}

/// YAML text of the test config: 1 s scrape and evaluation, job `gateway`.
fn config_text(targets: &[SocketAddr], rule_files: &[PathBuf]) -> Result<String> {
    use std::fmt::Write as _;
    let mut s = String::from(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n",
    );
    if !rule_files.is_empty() {
        s.push_str("rule_files:\n");
        for r in rule_files {
            let abs =
                std::fs::canonicalize(r).with_context(|| format!("rule file {}", r.display()))?;
            writeln!(
                s,
                "  - {}",
                serde_json::to_string(&abs.display().to_string())?
            )?;
        }
    }
    s.push_str("scrape_configs:\n  - job_name: gateway\n    metrics_path: /metrics\n");
    let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    writeln!(
        s,
        "    static_configs:\n      - targets: [{}]",
        list.join(", ")
    )?;
    Ok(s)
}

fn run_tool(args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running promtool (Debian package `prometheus`: apt-get install prometheus)")?;
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().context("promtool stdin")?;
        // promtool reads all of it before answering; a write error shows
        // up as its exit status.
        let _ = pipe.write_all(text.as_bytes());
    }
    let out = child.wait_with_output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!(
            "promtool {} failed ({}):\n{text}",
            args.join(" "),
            out.status
        );
    }
    Ok(text)
}

/// `promtool check rules PATH`: its output, Err with it on failure.
pub fn promtool_check_rules(path: &Path) -> Result<String> {
    run_tool(&["check", "rules", &path.display().to_string()], None)
}

/// `promtool test rules PATH` (rule unit tests).
pub fn promtool_test_rules(path: &Path) -> Result<String> {
    run_tool(&["test", "rules", &path.display().to_string()], None)
}

/// `promtool check config PATH` (also checks the rule files it names).
pub fn promtool_check_config(path: &Path) -> Result<String> {
    run_tool(&["check", "config", &path.display().to_string()], None)
}

/// `promtool check metrics` on an exposition text (stdin). It exits
/// non-zero on format errors and on lint problems (names, units, `_total`
/// on counters, missing HELP): Err with its output then.
pub fn promtool_check_metrics(text: &str) -> Result<String> {
    run_tool(&["check", "metrics"], Some(text))
}

/// Every PromQL expression of every dashboard (`*.json`) in `dir`, file
/// names in order: `("FILE:PANEL TITLE [REFID]", expr)` for each target of
/// each panel (panels nested in rows included) and `("FILE:$NAME", query)`
/// for each query template variable. Panics on an unreadable dashboard.
pub fn dashboard_exprs(dir: &Path) -> Vec<(String, String)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let name = f
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let dash: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        exprs_of_dashboard(&name, &dash, &mut out);
    }
    out
}

/// The expressions of one parsed dashboard (see [`dashboard_exprs`]).
pub fn exprs_of_dashboard(file: &str, dash: &Value, out: &mut Vec<(String, String)>) {
    fn panels(file: &str, list: &Value, out: &mut Vec<(String, String)>) {
        for p in list.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("");
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    let r = t["refId"].as_str().unwrap_or("");
                    out.push((format!("{file}:{title} [{r}]"), expr.to_string()));
                }
            }
            // A row's panels (collapsed rows keep theirs here).
            panels(file, &p["panels"], out);
        }
    }
    panels(file, &dash["panels"], out);
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] != "query" {
            continue;
        }
        // A string, or {"query": "...", "refId": ...} in newer Grafana.
        let q = v["query"]
            .as_str()
            .or_else(|| v["query"]["query"].as_str())
            .unwrap_or("");
        let name = v["name"].as_str().unwrap_or("");
        out.push((format!("{file}:${name}"), q.to_string()));
    }
}

/// `(name, expr)` of every alerting and recording rule of a Prometheus
/// rule file. Panics on an unreadable file.
pub fn rule_exprs(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc: Value =
        serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    for g in doc["groups"].as_array().into_iter().flatten() {
        for r in g["rules"].as_array().into_iter().flatten() {
            let name = r["alert"]
                .as_str()
                .or_else(|| r["record"].as_str())
                .unwrap_or("")
                .to_string();
            let expr = match &r["expr"] {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            out.push((name, expr));
        }
    }
    out
}

/// An alert expression without its condition, to see that what it
/// compares reads data while the alert is not firing: a top-level
/// `and ...` guard is dropped, then a trailing comparison with a number
/// (`> 0.02`, `== 0`), then enclosing parentheses.
/// `up{job="gateway"} == 0` becomes `up{job="gateway"}`.
/// Runs of whitespace become one space.
pub fn without_threshold(expr: &str) -> String {
    let flat = expr.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut e = flat.as_str();
    if let Some(i) = find_top_level(e, " and ") {
        e = e[..i].trim_end();
    }
    let ops = ["==", "!=", ">=", "<=", ">", "<"];
    if let Some(pos) = e.rfind(|c: char| !(c.is_ascii_digit() || c == '.' || c.is_whitespace())) {
        let (head, num) = (&e[..=pos], e[pos + 1..].trim());
        if num.parse::<f64>().is_ok() {
            if let Some(op) = ops.iter().find(|op| head.ends_with(*op)) {
                let cut = &head[..head.len() - op.len()];
                if find_top_level(cut, op).is_none() {
                    e = cut.trim_end();
                }
            }
        }
    }
    while let Some(inner) = e.strip_prefix('(').and_then(|x| x.strip_suffix(')')) {
        // Only when the two parentheses pair with each other.
        if !balanced(inner) {
            break;
        }
        e = inner.trim();
    }
    e.to_string()
}

/// Parentheses balance and never go below zero (outside strings).
fn balanced(s: &str) -> bool {
    let mut depth = 0i32;
    for (i, c) in s.char_indices() {
        if in_string(s, i) {
            continue;
        }
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => {}
        }
    }
    depth == 0
}

/// Whether byte `at` of `s` is inside a double-quoted string.
fn in_string(s: &str, at: usize) -> bool {
    let mut inside = false;
    let mut esc = false;
    for (i, c) in s.char_indices() {
        if i >= at {
            break;
        }
        if esc {
            esc = false;
        } else if c == '\\' && inside {
            esc = true;
        } else if c == '"' {
            inside = !inside;
        }
    }
    inside
}

/// First occurrence of `pat` at bracket depth 0 and outside strings.
fn find_top_level(s: &str, pat: &str) -> Option<usize> {
    let mut depth = 0i32;
    for (i, c) in s.char_indices() {
        if in_string(s, i) {
            continue;
        }
        if depth == 0 && s[i..].starts_with(pat) {
            return Some(i);
        }
        match c {
            '(' | '{' | '[' => depth += 1,
            ')' | '}' | ']' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// The duration Grafana's interval variables become.
const INTERVAL: &str = "1m";

/// A dashboard expression made runnable by Prometheus:
/// - `$__rate_interval`, `$__interval`, `$__range` become `1m`
///   (`$__range_s` 60, `$__interval_ms`/`$__range_ms` 60000) unless `vars`
///   gives them (as `("__rate_interval", "30s")`);
/// - template variables `$name`, `${name}`, `${name:format}`, `[[name]]`
///   take their value from `vars`, and any other the `.*` of "All"
///   (the dashboards match variables with `=~`);
/// - a variable query `label_values(SELECTOR, LABEL)` becomes SELECTOR
///   (`label_values(LABEL)` becomes `{LABEL!=""}`), `query_result(Q)` Q.
///
/// Values are inserted as given (no regex escaping).
pub fn instantiate(expr: &str, vars: &[(&str, &str)]) -> String {
    let builtin = [
        ("__rate_interval", INTERVAL),
        ("__interval", INTERVAL),
        ("__range", INTERVAL),
        ("__range_s", "60"),
        ("__range_ms", "60000"),
        ("__interval_ms", "60000"),
    ];
    let value = |name: &str| -> String {
        if let Some((_, v)) = vars.iter().find(|(n, _)| *n == name) {
            return v.to_string();
        }
        if let Some((_, v)) = builtin.iter().find(|(n, _)| *n == name) {
            return v.to_string();
        }
        ".*".to_string()
    };
    let b = expr.as_bytes();
    let mut out = String::with_capacity(expr.len());
    let mut i = 0;
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    while i < b.len() {
        // ${name} / ${name:format}
        if b[i] == b'$' && b.get(i + 1) == Some(&b'{') {
            if let Some(end) = expr[i + 2..].find('}') {
                let inner = &expr[i + 2..i + 2 + end];
                let name = inner.split(':').next().unwrap_or("");
                if is_var_name(name) {
                    out.push_str(&value(name));
                    i += 2 + end + 1;
                    continue;
                }
            }
        }
        // $name (not $1: regex replacement references stay)
        if b[i] == b'$'
            && b.get(i + 1)
                .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
        {
            let mut j = i + 1;
            while j < b.len() && ident(b[j]) {
                j += 1;
            }
            out.push_str(&value(&expr[i + 1..j]));
            i = j;
            continue;
        }
        // [[name]] / [[name:format]] (not a subquery's [[...]] which PromQL lacks)
        if b[i] == b'[' && b.get(i + 1) == Some(&b'[') {
            if let Some(end) = expr[i + 2..].find("]]") {
                let inner = &expr[i + 2..i + 2 + end];
                let name = inner.split(':').next().unwrap_or("");
                if is_var_name(name) {
                    out.push_str(&value(name));
                    i += 2 + end + 2;
                    continue;
                }
            }
        }
        let ch = expr[i..].chars().next().expect("char");
        out.push(ch);
        i += ch.len_utf8();
    }
    variable_query(out.trim()).unwrap_or(out)
}

/// A Grafana variable name: a letter or `_`, then letters, digits, `_`.
fn is_var_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// `label_values(...)` / `query_result(...)` to a PromQL query.
fn variable_query(q: &str) -> Option<String> {
    let (func, rest) = q.split_once('(')?;
    let func = func.trim();
    let args = rest.trim_end().strip_suffix(')')?;
    match func {
        "label_values" => {
            let parts = split_top_level(args);
            match parts.as_slice() {
                [label] => Some(format!("{{{}!=\"\"}}", label.trim())),
                [selector, _label] => Some(selector.trim().to_string()),
                _ => None,
            }
        }
        "query_result" => Some(args.trim().to_string()),
        _ => None,
    }
}

/// Splits at commas outside brackets and quotes.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut quote, mut start, mut esc) = (0i32, None::<char>, 0, false);
    for (i, c) in s.char_indices() {
        if let Some(q) = quote {
            if esc {
                esc = false;
            } else if c == '\\' {
                esc = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '(' | '{' | '[' => depth += 1,
            ')' | '}' | ']' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// Metrics Prometheus adds to every scrape target.
pub const SYNTHETIC_METRICS: &[&str] = &[
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
];

/// The metric names an expression uses: identifiers outside strings and
/// label matchers that start with `gateway_` or `process_`, or are one of
/// [`SYNTHETIC_METRICS`]; function names (followed by `(`) excluded.
/// Histogram suffixes are kept (see [`documented_metrics`]).
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let b = expr.as_bytes();
    let (mut i, mut braces) = (0, 0i32);
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\'' || c == b'`' {
            // Skip the string.
            let q = c;
            i += 1;
            while i < b.len() && b[i] != q {
                if b[i] == b'\\' && q != b'`' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            continue;
        }
        match c {
            b'{' => braces += 1,
            b'}' => braces -= 1,
            _ => {}
        }
        if (c.is_ascii_alphabetic() || c == b'_' || c == b':')
            && (i == 0
                || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_' || b[i - 1] == b'$'))
        {
            let mut j = i;
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] == b':') {
                j += 1;
            }
            let word = &expr[i..j];
            let next = expr[j..].trim_start().chars().next();
            let wanted = word.starts_with("gateway_")
                || word.starts_with("process_")
                || SYNTHETIC_METRICS.contains(&word);
            if braces == 0 && wanted && next != Some('(') {
                names.insert(word.to_string());
            }
            i = j;
            continue;
        }
        i += 1;
    }
    names
}

/// The metric names documented in a metrics reference (`docs/metrics.md`):
/// every backquoted `gateway_*`/`process_*` name, with its `_bucket`,
/// `_sum` and `_count` series when the text up to the next backquote calls
/// it a histogram.
pub fn documented_metrics(markdown: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let pieces: Vec<&str> = markdown.split('`').collect();
    // Odd pieces are inside backquotes.
    for (k, piece) in pieces.iter().enumerate().skip(1).step_by(2) {
        let name: String = piece
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        if !(name.starts_with("gateway_") || name.starts_with("process_")) || name.ends_with('_') {
            continue;
        }
        let after = pieces.get(k + 1).copied().unwrap_or("");
        if after.contains("histogram") {
            for s in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{s}"));
            }
        }
        names.insert(name);
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_exprs() -> Vec<(String, String)> {
        let mut v = dashboard_exprs(&dashboards_dir());
        for (n, e) in rule_exprs(&dashboards_dir().join("alerts.yml")) {
            v.push((format!("alerts.yml:{n}"), e));
        }
        v
    }

    #[test]
    fn every_dashboard_and_rule_has_expressions() {
        let d = dashboard_exprs(&dashboards_dir());
        for f in [
            "gateway-overview.json",
            "gateway-stream.json",
            "gateway-dataplane.json",
            "gateway-sip.json",
        ] {
            let n = d
                .iter()
                .filter(|(k, _)| k.starts_with(&format!("{f}:")))
                .count();
            assert!(n >= 5, "{f}: {n} expressions");
        }
        // The panels of the collapsed row in the SIP dashboard are found.
        assert!(
            d.iter()
                .any(|(k, _)| k.starts_with("gateway-sip.json:Process CPU")),
            "{d:?}"
        );
        // Template variable queries too.
        assert!(d.iter().any(|(k, e)| k == "gateway-stream.json:$device"
            && e.starts_with("label_values(gateway_stream_info")));
        let rules: Vec<String> = rule_exprs(&dashboards_dir().join("alerts.yml"))
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            rules,
            [
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
            ]
        );
        for (k, e) in all_exprs() {
            assert!(!e.trim().is_empty(), "{k}: empty expression");
        }
    }

    #[test]
    fn every_metric_used_is_documented() {
        let doc = std::fs::read_to_string(metrics_doc()).expect("docs/metrics.md");
        let documented = documented_metrics(&doc);
        // Spot checks of the doc parser.
        for m in [
            "gateway_stream_received_packets_total",
            "gateway_kernel_readout_duration_seconds_bucket",
            "gateway_scrape_duration_seconds_count",
            "process_resident_memory_bytes",
        ] {
            assert!(documented.contains(m), "{m} not found in docs/metrics.md");
        }
        assert!(!documented.contains("gateway_stream_jitter_seconds_bucket"));
        let mut used = BTreeSet::new();
        for (k, e) in all_exprs() {
            let names = metric_names(&e);
            // Every expression reads at least one metric.
            assert!(!names.is_empty(), "{k}: no metric in {e}");
            for n in names {
                assert!(
                    documented.contains(&n) || SYNTHETIC_METRICS.contains(&n.as_str()),
                    "{k}: {n} is not in docs/metrics.md"
                );
                used.insert(n);
            }
        }
        // Every per-stream family appears somewhere.
        for m in documented
            .iter()
            .filter(|m| m.starts_with("gateway_stream_"))
        {
            assert!(used.contains(m), "{m} is on no dashboard");
        }
    }

    #[test]
    fn alert_rules_pass_promtool() {
        let out = promtool_check_rules(&dashboards_dir().join("alerts.yml"))
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert!(out.contains("SUCCESS: 10 rules found"), "{out}");
    }

    #[test]
    fn promtool_check_metrics_tells_good_from_bad() {
        let good = "# HELP gateway_stream_received_packets_total RTP packets received\n\
                    # TYPE gateway_stream_received_packets_total counter\n\
                    gateway_stream_received_packets_total{device=\"d\",channel=\"c\",stream=\"s\",transport=\"udp\"} 3\n";
        promtool_check_metrics(good).unwrap_or_else(|e| panic!("{e:#}"));
        // A counter without _total is a lint error; garbage a parse error.
        let lint = "# HELP gateway_x Something\n# TYPE gateway_x counter\ngateway_x 1\n";
        let e = promtool_check_metrics(lint).unwrap_err();
        assert!(format!("{e:#}").contains("_total"), "{e:#}");
        assert!(promtool_check_metrics("gateway_x{ 1\n").is_err());
    }

    #[test]
    fn instantiate_replaces_variables_and_intervals() {
        let vars = [("device", "34020000001320000001"), ("channel", "c1")];
        assert_eq!(
            instantiate(
                r#"rate(gateway_stream_frames_total{device=~"$device", channel=~"${channel}", stream=~"[[stream]]", x=~"${instance:regex}"}[$__rate_interval])"#,
                &vars
            ),
            r#"rate(gateway_stream_frames_total{device=~"34020000001320000001", channel=~"c1", stream=~".*", x=~".*"}[1m])"#
        );
        assert_eq!(
            instantiate(
                "increase(x[$__range]) / $__range_s + rate(y[$__interval])",
                &[]
            ),
            "increase(x[1m]) / 60 + rate(y[1m])"
        );
        assert_eq!(
            instantiate("rate(x[$__rate_interval])", &[("__rate_interval", "30s")]),
            "rate(x[30s])"
        );
        // Regex replacement references and end anchors stay.
        assert_eq!(
            instantiate(
                r#"label_replace(up, "a", "$1${2}", "instance", "(.*):(.*)$")"#,
                &[]
            ),
            r#"label_replace(up, "a", "$1${2}", "instance", "(.*):(.*)$")"#
        );
        // Variable queries.
        assert_eq!(
            instantiate(
                r#"label_values(gateway_stream_info{device=~"$device", x=~"a,b"}, channel)"#,
                &vars
            ),
            r#"gateway_stream_info{device=~"34020000001320000001", x=~"a,b"}"#
        );
        assert_eq!(instantiate("label_values(device)", &[]), r#"{device!=""}"#);
        assert_eq!(instantiate("query_result(topk(3, up))", &[]), "topk(3, up)");
        // Every dashboard expression loses all its variables.
        for (k, e) in dashboard_exprs(&dashboards_dir()) {
            let i = instantiate(&e, &[]);
            assert!(!i.contains("$__") && !i.contains("[["), "{k}: {i}");
            assert!(!i.starts_with("label_values"), "{k}: {i}");
        }
    }

    #[test]
    fn thresholds_come_off_alert_expressions() {
        let got: Vec<String> = rule_exprs(&dashboards_dir().join("alerts.yml"))
            .into_iter()
            .map(|(_, e)| without_threshold(&e))
            .collect();
        assert_eq!(
            got,
            [
                r#"up{job="gateway"}"#,
                "gateway_device_online",
                "rate(gateway_stream_lost_packets_total[5m]) / (rate(gateway_stream_received_packets_total[5m]) + rate(gateway_stream_lost_packets_total[5m]))",
                "gateway_stream_last_packet_age_seconds",
                r#"rate(gateway_kernel_packets_total{reason="unknown_dropped"}[5m])"#,
                r#"sum by (job, instance) ( rate(gateway_sip_registrations_total{result=~"forbidden|bad_request|wrong_domain"}[5m]) )"#,
                "sum by (job, instance, device, channel, stream) ( rate(gateway_stream_decrypt_failures_total[5m]) )",
                // No threshold at the end: the whole expression.
                "(increase(gateway_alarms_total[10m]) > 0) or (gateway_alarms_total unless gateway_alarms_total offset 10m)",
                r#"sum by (job, instance) ( rate(gateway_kernel_packets_total{reason=~"relay_pass_.*|relay_clone_failed"}[5m]) )"#,
                r#"sum by (job, instance) ( rate(gateway_kernel_packets_total{reason=~"sip_dropped_.*"}[5m]) )"#,
            ]
        );
        // Nothing to strip: unchanged; inner comparisons stay.
        assert_eq!(without_threshold("rate(x[1m])"), "rate(x[1m])");
        assert_eq!(without_threshold("(a > 1) + (b)"), "(a > 1) + (b)");
        assert_eq!(without_threshold(r#"x{a="(>"} > 3"#), r#"x{a="(>"}"#);
    }

    #[test]
    fn metric_names_are_found() {
        let e = r#"sum by (reason) (rate(gateway_kernel_packets_total{job=~"$job", reason="gateway_fake"}[$__rate_interval])) / on() group_left gateway_kernel_flows or on() label_replace(vector(0), "reason", "none", "", "") + up{job="gateway"} + process_open_fds + histogram_quantile(0.9, sum by (le) (rate(gateway_x_seconds_bucket[1m])))"#;
        let n: Vec<String> = metric_names(e).into_iter().collect();
        assert_eq!(
            n,
            [
                "gateway_kernel_flows",
                "gateway_kernel_packets_total",
                "gateway_x_seconds_bucket",
                "process_open_fds",
                "up"
            ]
        );
        assert!(
            metric_names("label_values(gateway_build_info, job)").contains("gateway_build_info")
        );
    }

    #[test]
    fn nested_row_panels_and_object_variable_queries_are_read() {
        let dash = serde_json::json!({
            "panels": [
                {"type": "timeseries", "title": "Top", "targets": [{"refId": "A", "expr": "up"}]},
                {"type": "row", "title": "R", "collapsed": true, "panels": [
                    {"type": "stat", "title": "Inner", "targets": [
                        {"refId": "A", "expr": "gateway_devices"},
                        {"refId": "B", "expr": "gateway_devices_online"}]}
                ]}
            ],
            "templating": {"list": [
                {"type": "datasource", "name": "datasource", "query": "prometheus"},
                {"type": "query", "name": "a", "query": "label_values(up, job)"},
                {"type": "query", "name": "b", "query": {"query": "label_values(up, instance)", "refId": "X"}}
            ]}
        });
        let mut out = Vec::new();
        exprs_of_dashboard("d.json", &dash, &mut out);
        let keys: Vec<&str> = out.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "d.json:Top [A]",
                "d.json:Inner [A]",
                "d.json:Inner [B]",
                "d.json:$a",
                "d.json:$b"
            ]
        );
        assert_eq!(out[4].1, "label_values(up, instance)");
    }

    #[test]
    fn scalar_results_are_data() {
        assert!(is_empty_result(&serde_json::json!([])));
        assert!(!is_empty_result(&serde_json::json!([1.0, "1"])));
        assert!(!is_empty_result(
            &serde_json::json!([{"metric": {}, "value": [1.0, "0"]}])
        ));
    }
}
