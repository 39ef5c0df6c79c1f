//! Running the gateway daemon (signalling only, on loopback) and sipp
//! against it, for the signalling tests and benchmark.

use std::{
    fmt::Write as _,
    net::{SocketAddr, TcpListener, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

pub const PLATFORM: &str = "34020000002000000001";
pub const DOMAIN: &str = "3402000000";

/// A port free on loopback for both UDP and TCP (at the time of asking).
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let u = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
        let port = u.local_addr().expect("addr").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port");
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "gw-{tag}-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos() ^ (free_port() as u128)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("GW_KEEP_TMP").is_some() {
            eprintln!("keeping {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `gateway run` with a generated signalling-only config; SIGTERM on drop.
pub struct Daemon {
    pub child: Option<Child>,
    pub sip: SocketAddr,
    pub api: SocketAddr,
    pub config: PathBuf,
    pub log: PathBuf,
    /// The daemon runs in this network namespace (`gateway --netns`); API
    /// requests are made from a thread inside it.
    pub netns: Option<String>,
}

impl Daemon {
    /// `extra_sip` lines go into the [sip] section.
    pub fn config(
        dir: &Path,
        sip_port: u16,
        api_port: u16,
        extra_sip: &str,
        extra: &str,
    ) -> PathBuf {
        // Tests run daemons side by side: /metrics on an ephemeral port
        // unless the test configures it.
        let metrics = if extra.contains("[metrics]") {
            ""
        } else {
            "[metrics]\nlisten = \"127.0.0.1:0\"\n"
        };
        let cfg = format!(
            "[sip]\nid = \"{PLATFORM}\"\nlisten = [\"127.0.0.1:{sip_port}\"]\n{extra_sip}\n\
             [api]\nlisten = \"127.0.0.1:{api_port}\"\n\
             {metrics}[store]\npath = \"{}\"\n{extra}\n",
            dir.join("registry.redb").display()
        );
        let path = dir.join("gateway.toml");
        std::fs::write(&path, cfg).expect("write config");
        path
    }

    pub fn start(config: &Path, sip_port: u16, api_port: u16) -> Result<Daemon> {
        Self::start_in(
            None,
            config,
            SocketAddr::from(([127, 0, 0, 1], sip_port)),
            api_port,
        )
    }

    /// `gateway [--netns NS] run`, SIP reachable at `sip`, API on the
    /// namespace's 127.0.0.1:`api_port`.
    pub fn start_in(
        netns: Option<&str>,
        config: &Path,
        sip: SocketAddr,
        api_port: u16,
    ) -> Result<Daemon> {
        let log = config.with_extension("log");
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new(crate::gateway_bin());
        if let Some(ns) = netns {
            cmd.args(["--netns", ns]);
        }
        let child = cmd
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .context("starting gateway run")?;
        let mut d = Daemon {
            child: Some(child),
            sip,
            api: SocketAddr::from(([127, 0, 0, 1], api_port)),
            config: config.to_path_buf(),
            log,
            netns: netns.map(str::to_string),
        };
        d.wait_until(Duration::from_secs(30), "API up", |d| {
            d.get("/api/health").is_ok()
        })?;
        Ok(d)
    }

    /// GET an API path; Ok only for 2xx, with the JSON body.
    pub fn get(&self, path: &str) -> Result<Value> {
        let (code, v) = self.request("GET", path, None)?;
        if !(200..300).contains(&code) {
            bail!("GET {path}: HTTP {code}: {v}");
        }
        Ok(v)
    }

    /// Any request; returns the status and the JSON body.
    pub fn request(&self, method: &str, path: &str, token: Option<&str>) -> Result<(u16, Value)> {
        self.send(method, path, token, None)
    }

    /// POST a JSON body; returns the status and the JSON answer.
    pub fn post_json(&self, path: &str, body: &str) -> Result<(u16, Value)> {
        self.send("POST", path, None, Some(body))
    }

    /// Any method with an optional JSON body.
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> Result<(u16, Value)> {
        self.send(method, path, None, body)
    }

    /// From a thread inside the daemon's namespace when it has one.
    fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Result<(u16, Value)> {
        let Some(ns) = &self.netns else {
            return request(self.api, method, path, token, body);
        };
        let api = self.api;
        let (method, path) = (method.to_string(), path.to_string());
        let (token, body) = (token.map(str::to_string), body.map(str::to_string));
        crate::netns::try_in_netns(ns, move || {
            request(api, &method, &path, token.as_deref(), body.as_deref())
        })
    }

    /// Opens a stream: POST /api/streams for `device`'s `channel` over
    /// `transport`, `extra` adding JSON members (each with its leading
    /// comma). Asserts 201 Created; returns the session.
    pub fn open_stream(&self, device: &str, channel: &str, transport: &str, extra: &str) -> Value {
        let body = format!(
            r#"{{"device":"{device}","channel":"{channel}","transport":"{transport}"{extra}}}"#
        );
        let (code, v) = self.post_json("/api/streams", &body).unwrap();
        assert_eq!(code, 201, "POST /api/streams {body}: {v}");
        v
    }
}

/// The local media port of a stream session (its `local` address).
pub fn stream_port(session: &Value) -> u16 {
    session["local"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// POST /api/streams with `body` to the API at `api` from a thread of its
/// own, for tests that play the device themselves (the API answers once
/// the device has answered the INVITE); join it for the status and JSON.
pub fn open_stream_async(api: SocketAddr, body: String) -> std::thread::JoinHandle<(u16, Value)> {
    std::thread::spawn(move || {
        request(api, "POST", "/api/streams", None, Some(&body)).expect("POST /api/streams")
    })
}

/// An API request to `api` from the calling thread's namespace; a `body`
/// is sent as JSON.
pub fn request(
    api: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Result<(u16, Value)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let url = format!("http://{api}{path}");
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut resp = match method {
        "GET" => {
            let mut r = agent.get(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
        "DELETE" => {
            let mut r = agent.delete(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
        "PUT" => {
            let mut r = agent.put(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            match body {
                Some(b) => r.header("Content-Type", "application/json").send(b),
                None => r.send_empty(),
            }
        }
        "POST" => {
            let mut r = agent.post(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            match body {
                Some(b) => r.header("Content-Type", "application/json").send(b),
                None => r.send_empty(),
            }
        }
        _ => bail!("unsupported {method}"),
    }?;
    let code = resp.status().as_u16();
    let v: Value = resp.body_mut().read_json().unwrap_or(Value::Null);
    Ok((code, v))
}

impl Daemon {
    /// Polls `f` every 100 ms until true; fails after `limit` (a bound on
    /// the wait, not a performance assertion).
    pub fn wait_until(
        &mut self,
        limit: Duration,
        what: &str,
        f: impl Fn(&Daemon) -> bool,
    ) -> Result<()> {
        let t0 = Instant::now();
        loop {
            if f(self) {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    bail!(
                        "gateway exited ({st}) while waiting for {what}; log:\n{}",
                        self.log_text()
                    );
                }
            }
            if t0.elapsed() > limit {
                bail!(
                    "{what}: not reached after {limit:?}; log tail:\n{}",
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self, n: usize) -> String {
        let t = self.log_text();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn device(&self, id: &str) -> Result<Value> {
        self.get(&format!("/api/devices/{id}"))
    }

    /// Counter value from /api/stats (0 when absent).
    pub fn stat(&self, family: &str, labels: &str) -> u64 {
        self.get("/api/stats")
            .ok()
            .and_then(|v| v[family][labels].as_u64())
            .unwrap_or(0)
    }

    /// SIGTERM and wait; true if it exited cleanly.
    pub fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let t0 = Instant::now();
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.success();
            }
            if t0.elapsed() > Duration::from_secs(20) {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL (a crash, an OOM kill) and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A sipp run.
pub struct Sipp {
    pub args: Vec<String>,
    pub dir: PathBuf,
    /// Run inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
}

/// Result of a finished sipp.
pub struct SippResult {
    pub code: i32,
    pub errors: String,
    pub stdout: String,
}

impl SippResult {
    pub fn ok(&self) -> bool {
        self.code == 0
    }
}

impl Sipp {
    /// sipp against `gw` with scenario `sf`, local port `port`, transport
    /// "u1" or "t1".
    pub fn new(dir: &Path, gw: SocketAddr, sf: &Path, port: u16, transport: &str) -> Sipp {
        let args = vec![
            gw.to_string(),
            "-sf".into(),
            sf.display().to_string(),
            "-i".into(),
            gw.ip().to_string(),
            "-p".into(),
            port.to_string(),
            "-t".into(),
            transport.into(),
            "-nostdin".into(),
            "-trace_err".into(),
            "-error_file".into(),
            dir.join(format!("sipp-{port}.err")).display().to_string(),
        ];
        Sipp {
            args,
            dir: dir.to_path_buf(),
            netns: None,
        }
    }

    pub fn arg(mut self, a: &str) -> Sipp {
        self.args.push(a.into());
        self
    }

    pub fn args(mut self, a: &[&str]) -> Sipp {
        self.args.extend(a.iter().map(|s| s.to_string()));
        self
    }

    /// Logs every message sipp sends and receives to `path` (read it
    /// with [`message_log`]).
    pub fn trace_messages(self, path: &Path) -> Sipp {
        let p = path.display().to_string();
        self.args(&["-trace_msg", "-message_file", &p])
    }

    pub fn in_netns(mut self, ns: &str) -> Sipp {
        self.netns = Some(ns.to_string());
        self
    }

    pub fn spawn(&self) -> Result<Child> {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "sipp"]);
                c
            }
            None => Command::new("sipp"),
        };
        cmd.args(&self.args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting sipp (Debian package sip-tester)")
    }

    pub fn run(&self) -> Result<SippResult> {
        let out = self.spawn()?.wait_with_output()?;
        Ok(self.result(out))
    }

    pub fn result(&self, out: std::process::Output) -> SippResult {
        let err_file = self
            .args
            .iter()
            .skip_while(|a| *a != "-error_file")
            .nth(1)
            .cloned()
            .unwrap_or_default();
        let mut errors = std::fs::read_to_string(&err_file).unwrap_or_default();
        errors.push_str(&String::from_utf8_lossy(&out.stderr));
        SippResult {
            code: out.status.code().unwrap_or(-1),
            errors,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        }
    }
}

/// One SIP message of a sipp message log ([`Sipp::trace_messages`]).
pub struct Traced {
    /// Sent by sipp (else received by it).
    pub sent: bool,
    pub head: gb28181::sip::Head,
}

/// The messages of a sipp message log, in the order sipp handled them
/// (sipp is single-threaded: a message it received while a call waited in
/// a `<pause>` shows before what that call sent after the pause). Panics on
/// a message that does not parse.
pub fn message_log(path: &Path) -> Vec<Traced> {
    let data = std::fs::read(path).unwrap_or_default();
    let find = |from: usize, pat: &[u8]| {
        data[from..]
            .windows(pat.len())
            .position(|w| w == pat)
            .map(|p| from + p)
    };
    let mut out = Vec::new();
    let mut at = 0;
    // Each entry: "... message received [N] bytes :" or "... message sent
    // (N bytes):", a blank line, then the N bytes of the message.
    loop {
        let recv = find(at, b" message received [");
        let sent = find(at, b" message sent (");
        let (pos, is_sent, skip) = match (recv, sent) {
            (Some(r), Some(s)) if s < r => (s, true, 15),
            (Some(r), _) => (r, false, 19),
            (None, Some(s)) => (s, true, 15),
            (None, None) => break,
        };
        let digits: String = data[pos + skip..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .map(|&b| b as char)
            .collect();
        let len: usize = digits.parse().expect("length in the sipp message log");
        let start = find(pos, b"\n\n").expect("message after its log line") + 2;
        let raw = &data[start..(start + len).min(data.len())];
        let m = gb28181::wire::parse(raw, 1 << 20).unwrap_or_else(|e| {
            panic!(
                "sipp logged an unparseable message ({e:?}):\n{}",
                String::from_utf8_lossy(raw)
            )
        });
        let head = gb28181::sip::Head::parse(&m).expect("headers of a logged message");
        out.push(Traced {
            sent: is_sent,
            head,
        });
        at = start + len;
    }
    out
}

/// The scenario directory of the repo (tests/sipp).
pub fn scenarios() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sipp")
}

/// sipp as one device `id` (password "pw") from `local_port` over UDP: it
/// registers (register.xml), then stays `hold_ms`, answering what the
/// gateway sends with the out-of-call scenario `ooc`. Add `-timeout` and
/// the like with [`Sipp::args`].
pub fn registering_device(
    dir: &Path,
    gw: SocketAddr,
    local_port: u16,
    id: &str,
    ooc: &Path,
    hold_ms: u64,
) -> Sipp {
    let csv = dir.join(format!("{id}.csv"));
    write_csv(&csv, &[(id.into(), "pw".into())]);
    Sipp::new(dir, gw, &scenarios().join("register.xml"), local_port, "u1").args(&[
        "-inf",
        csv.to_str().unwrap_or_default(),
        "-m",
        "1",
        "-d",
        &hold_ms.to_string(),
        "-oocsf",
        ooc.to_str().unwrap_or_default(),
    ])
}

/// Writes the CSV for register.xml & co: `device;platform;domain;[authentication ...]`.
pub fn write_csv(path: &Path, devices: &[(String, String)]) {
    let mut s = String::from("SEQUENTIAL\n");
    for (id, pw) in devices {
        let _ = writeln!(
            s,
            "{id};{PLATFORM};{DOMAIN};[authentication username={id} password={pw}]"
        );
    }
    std::fs::write(path, s).expect("write csv");
}

/// Channels every simulated device reports: (channel ID, name, status).
pub const CHANNELS: &[(&str, &str, &str)] = &[
    ("34020000001310000001", "前门摄像机", "ON"),
    ("34020000001310000002", "后院通道一", "ON"),
    ("34020000001310000003", "仓库&车库", "OFF"),
];

fn item_xml(id: &str, name: &str, status: &str) -> String {
    format!(
        "<Item>\r\n<DeviceID>{id}</DeviceID>\r\n<Name>{}</Name>\r\n<Manufacturer>测试厂商</Manufacturer>\r\n<Model>IPC-1</Model>\r\n<Owner>Owner</Owner>\r\n<CivilCode>340200</CivilCode>\r\n<Address>一号楼</Address>\r\n<Parental>0</Parental>\r\n<ParentID>[$dev]</ParentID>\r\n<SafetyWay>0</SafetyWay>\r\n<RegisterWay>1</RegisterWay>\r\n<Secrecy>0</Secrecy>\r\n<Status>{status}</Status>\r\n</Item>\r\n",
        name.replace('&', "&amp;")
    )
}

fn message(body_gb: &[u8]) -> Vec<u8> {
    let mut m = b"    <send retrans=\"500\">\n      <![CDATA[\n\n      MESSAGE sip:34020000002000000001@[remote_ip]:[remote_port] SIP/2.0\n      Via: SIP/2.0/[transport] [local_ip]:[local_port];rport;branch=[branch]\n      From: <sip:[$dev]@3402000000>;tag=[pid]m[call_number]\n      To: <sip:34020000002000000001@3402000000>\n      Call-ID: [call_id]\n      CSeq: [cseq] MESSAGE\n      Max-Forwards: 70\n      Content-Type: Application/MANSCDP+xml\n      Content-Length: [len]\n\n".to_vec();
    m.extend_from_slice(body_gb);
    m.extend_from_slice(b"\n      ]]>\n    </send>\n    <recv response=\"200\"/>\n");
    m
}

/// The out-of-call scenario (`-oocsf`) with which a sipp device answers
/// the gateway's queries: Catalog in `parts` MESSAGEs (GB2312, same SN,
/// SumNum = all channels), DeviceInfo and DeviceStatus.
pub fn write_answer_scenario(path: &Path, parts: usize) {
    write_answer_scenario_with(path, parts, false)
}

/// As [`write_answer_scenario`]; with `drop_last` the last catalog part is
/// never sent (a device whose large catalog is cut off).
pub fn write_answer_scenario_with(path: &Path, parts: usize, drop_last: bool) {
    write_device_scenario(path, parts, drop_last, Invite::Accept)
}

/// How the sipp device treats the gateway's INVITEs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Invite {
    /// 100, 200 with SDP (its y= echoed), ACK; then waits for the
    /// gateway's BYE and answers it.
    Accept,
    /// As Accept, then hangs up itself (BYE) after this many ms.
    AcceptThenBye(u32),
    /// 486 Busy Here (then the ACK).
    Reject,
}

/// The out-of-call scenario of a sipp device: MANSCDP queries as
/// [`write_answer_scenario`], INVITEs as `invite` says.
pub fn write_device_scenario(path: &Path, parts: usize, drop_last: bool, invite: Invite) {
    let gb = |s: &str| encoding_rs::GBK.encode(s).0.into_owned();
    let mut x: Vec<u8> = Vec::new();
    x.extend_from_slice(
        b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\" ?>\n<!DOCTYPE scenario SYSTEM \"sipp.dtd\">\n\
<!-- Generated by tests/src/sipp.rs: a device answering the gateway's MANSCDP queries. -->\n\
<scenario name=\"gb28181 device answers queries\">\n\
  <recv request=\"INVITE\" optional=\"true\" next=\"invite\">\n    <action>\n\
      <ereg regexp=\"y=([0-9]+)\" search_in=\"body\" check_it=\"true\" assign_to=\"d5,y\"/>\n\
      <ereg regexp=\"sip:([0-9]+)@\" search_in=\"hdr\" header=\"To:\" check_it=\"true\" assign_to=\"d6,chan\"/>\n\
      <ereg regexp=\"tag=([^;> ]+)\" search_in=\"hdr\" header=\"From:\" check_it=\"true\" assign_to=\"d7,ftag\"/>\n\
    </action>\n  </recv>\n\
  <recv request=\"MESSAGE\">\n    <action>\n\
      <ereg regexp=\"&lt;SN&gt;([0-9]+)&lt;/SN&gt;\" search_in=\"body\" check_it=\"true\" assign_to=\"d1,sn\"/>\n\
      <ereg regexp=\"&lt;CmdType&gt;([A-Za-z]+)&lt;/CmdType&gt;\" search_in=\"body\" check_it=\"true\" assign_to=\"d2,cmd\"/>\n\
      <ereg regexp=\"sip:([0-9]+)@\" search_in=\"hdr\" header=\"To:\" check_it=\"true\" assign_to=\"d3,dev\"/>\n\
      <strcmp assign_to=\"c_info\" variable=\"cmd\" value=\"DeviceInfo\"/>\n\
      <test assign_to=\"is_info\" variable=\"c_info\" compare=\"equal\" value=\"0\"/>\n\
      <strcmp assign_to=\"c_status\" variable=\"cmd\" value=\"DeviceStatus\"/>\n\
      <test assign_to=\"is_status\" variable=\"c_status\" compare=\"equal\" value=\"0\"/>\n\
    </action>\n  </recv>\n\
  <Reference variables=\"d1,d2,d3,d5,d6,d7,y,chan,ftag\"/>\n\
  <send>\n    <![CDATA[\n\n      SIP/2.0 200 OK\n      [last_Via:]\n      [last_From:]\n      [last_To:];tag=[pid]a[call_number]\n      [last_Call-ID:]\n      [last_CSeq:]\n      Content-Length: 0\n\n    ]]>\n  </send>\n\
  <nop next=\"info\" test=\"is_info\"/>\n  <nop next=\"status\" test=\"is_status\"/>\n",
    );
    let per = CHANNELS.len().div_ceil(parts.max(1));
    let chunks: Vec<_> = CHANNELS.chunks(per).collect();
    let send = if drop_last {
        chunks.len() - 1
    } else {
        chunks.len()
    };
    for chunk in &chunks[..send] {
        let mut body = format!(
            "<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Response>\r\n<CmdType>Catalog</CmdType>\r\n<SN>[$sn]</SN>\r\n<DeviceID>[$dev]</DeviceID>\r\n<SumNum>{}</SumNum>\r\n<DeviceList Num=\"{}\">\r\n",
            CHANNELS.len(),
            chunk.len()
        );
        for (id, name, st) in chunk.iter() {
            body.push_str(&item_xml(id, name, st));
        }
        body.push_str("</DeviceList>\r\n</Response>\r\n");
        x.extend(message(&gb(&body)));
    }
    x.extend_from_slice(b"  <nop next=\"end\"/>\n  <label id=\"info\"/>\n");
    x.extend(message(&gb(
        "<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Response>\r\n<CmdType>DeviceInfo</CmdType>\r\n<SN>[$sn]</SN>\r\n<DeviceID>[$dev]</DeviceID>\r\n<Result>OK</Result>\r\n<DeviceName>测试摄像机</DeviceName>\r\n<Manufacturer>SIPp</Manufacturer>\r\n<Model>GB-SIM</Model>\r\n<Firmware>V1.0</Firmware>\r\n<Channel>3</Channel>\r\n</Response>\r\n",
    )));
    x.extend_from_slice(b"  <nop next=\"end\"/>\n  <label id=\"status\"/>\n");
    x.extend(message(&gb(
        "<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Response>\r\n<CmdType>DeviceStatus</CmdType>\r\n<SN>[$sn]</SN>\r\n<DeviceID>[$dev]</DeviceID>\r\n<Result>OK</Result>\r\n<Online>ONLINE</Online>\r\n<Status>OK</Status>\r\n<Encode>ON</Encode>\r\n<Record>OFF</Record>\r\n</Response>\r\n",
    )));
    x.extend_from_slice(b"  <nop next=\"end\"/>\n  <label id=\"invite\"/>\n");
    x.extend_from_slice(invite_xml(invite).as_bytes());
    x.extend_from_slice(b"  <label id=\"end\"/>\n</scenario>\n");
    std::fs::write(path, x).expect("write scenario");
}

fn invite_xml(invite: Invite) -> String {
    let hdrs = "      [last_Via:]\n      [last_From:]\n      [last_To:];tag=[pid]i[call_number]\n      [last_Call-ID:]\n      [last_CSeq:]\n";
    let trying = "  <send>\n    <![CDATA[\n\n      SIP/2.0 100 Trying\n      [last_Via:]\n      [last_From:]\n      [last_To:]\n      [last_Call-ID:]\n      [last_CSeq:]\n      Content-Length: 0\n\n    ]]>\n  </send>\n";
    if invite == Invite::Reject {
        return format!(
            "{trying}  <send>\n    <![CDATA[\n\n      SIP/2.0 486 Busy Here\n{hdrs}      Content-Length: 0\n\n    ]]>\n  </send>\n  <recv request=\"ACK\"/>\n"
        );
    }
    let mut x = format!(
        "{trying}  <send retrans=\"500\">\n    <![CDATA[\n\n      SIP/2.0 200 OK\n{hdrs}      Contact: <sip:[$chan]@[local_ip]:[local_port]>\n      Content-Type: application/sdp\n      Content-Length: [len]\n\nv=0\no=[$chan] 0 0 IN IP4 [local_ip]\ns=Play\nc=IN IP4 [local_ip]\nt=0 0\nm=video 40000 RTP/AVP 96\na=sendonly\na=rtpmap:96 PS/90000\ny=[$y]\nf=v/2/4/25/1/4000a///\n\n    ]]>\n  </send>\n  <recv request=\"ACK\"/>\n"
    );
    match invite {
        Invite::AcceptThenBye(ms) => x.push_str(&format!(
            "  <pause milliseconds=\"{ms}\"/>\n  <send retrans=\"500\">\n    <![CDATA[\n\n      BYE sip:34020000002000000001@[remote_ip]:[remote_port] SIP/2.0\n      Via: SIP/2.0/[transport] [local_ip]:[local_port];rport;branch=[branch]\n      From: <sip:[$chan]@3402000000>;tag=[pid]i[call_number]\n      To: <sip:34020000002000000001@3402000000>;tag=[$ftag]\n      [last_Call-ID:]\n      CSeq: 2 BYE\n      Max-Forwards: 70\n      Content-Length: 0\n\n    ]]>\n  </send>\n  <recv response=\"200\"/>\n"
        )),
        _ => x.push_str(
            "  <recv request=\"BYE\"/>\n  <send>\n    <![CDATA[\n\n      SIP/2.0 200 OK\n      [last_Via:]\n      [last_From:]\n      [last_To:]\n      [last_Call-ID:]\n      [last_CSeq:]\n      Content-Length: 0\n\n    ]]>\n  </send>\n",
        ),
    }
    x
}

/// What one [`drive`] run did: sipp's successful and failed calls, its
/// wall time, and the server's CPU seconds meanwhile.
pub struct Step {
    pub ok: u64,
    pub failed: u64,
    pub secs: f64,
    pub cpu: f64,
}

/// Reads sipp's own counters from its -stf statistics file.
pub fn sipp_counts(stat: &Path) -> (u64, u64) {
    let text = std::fs::read_to_string(stat).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let (Some(header), Some(last)) = (lines.first(), lines.get(1..).and_then(|l| l.last())) else {
        return (0, 0);
    };
    let cols: Vec<&str> = header.split(';').collect();
    let vals: Vec<&str> = last.split(';').collect();
    let get = |name: &str| {
        cols.iter()
            .position(|c| *c == name)
            .and_then(|i| vals.get(i))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (get("SuccessfulCall(C)"), get("FailedCall(C)"))
}

/// Runs sipp as the client of `scenario` at `rate` calls/s for `calls`
/// calls (one per CSV line) against `target`, answering the server's
/// out-of-call requests with `ooc`, while measuring the CPU of
/// `server_pid`.
#[allow(clippy::too_many_arguments)]
pub fn drive(
    dir: &Path,
    target: SocketAddr,
    scenario: &str,
    csv: &Path,
    rate: u32,
    calls: u32,
    server_pid: u32,
    ooc: Option<&Path>,
) -> Result<Step> {
    let stat = dir.join(format!("stat-{scenario}-{rate}-{}.csv", free_port()));
    let mut s = Sipp::new(dir, target, &scenarios().join(scenario), free_port(), "u1").args(&[
        "-inf",
        csv.to_str().unwrap_or_default(),
        "-r",
        &rate.to_string(),
        "-m",
        &calls.to_string(),
        "-l",
        "20000",
        "-timeout",
        "120s",
        "-trace_stat",
        "-stf",
        stat.to_str().unwrap_or_default(),
        "-fd",
        "1",
    ]);
    if let Some(o) = ooc {
        s = s.args(&["-oocsf", o.to_str().unwrap_or_default()]);
    }
    let c0 = crate::cpu_secs(server_pid);
    let t0 = Instant::now();
    let r = s.run()?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = crate::cpu_secs(server_pid) - c0;
    let (ok, failed) = sipp_counts(&stat);
    if ok == 0 {
        bail!("sipp made no successful call: {}\n{}", r.errors, r.stdout);
    }
    Ok(Step {
        ok,
        failed,
        secs,
        cpu,
    })
}

/// `n` device IDs from number `from` on, each with password `pw`.
pub fn device_ids(from: usize, n: usize, pw: &str) -> Vec<(String, String)> {
    (from..from + n)
        .map(|i| (format!("3402000000132{:07}", i + 1), pw.to_string()))
        .collect()
}
