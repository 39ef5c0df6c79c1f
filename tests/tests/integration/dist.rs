//! The release bundle's packaging (dist/): the shipped configuration is one
//! the daemon accepts, with every commented option a real one; the systemd
//! unit runs the daemon unprivileged with the capabilities it names, and
//! those capabilities are enough to attach, read and detach (root test,
//! with the unit's user, capability sets and its own bpffs reproduced by
//! setpriv).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use gateway::config::Config;
use gateway_tests::{
    cli::Out,
    gateway_bin, have_tools,
    netns::NetnsPair,
    require_root,
    sipp::TempDir,
    unpriv::{setpriv_caps, Sandbox, NOBODY},
};

fn dist() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist")
}

fn unit() -> String {
    std::fs::read_to_string(dist().join("gateway.service")).expect("dist/gateway.service")
}

/// Values of `Key=` lines of the unit (every occurrence).
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .collect()
}

fn caps_of(unit: &str, key: &str) -> BTreeSet<String> {
    unit_values(unit, key)
        .iter()
        .flat_map(|v| v.split_whitespace().map(str::to_string))
        .collect()
}

#[test]
fn shipped_config_is_accepted_by_the_daemon() {
    let c = Config::load(&dist().join("gateway.toml")).expect("dist/gateway.toml loads");
    let dp = c.dataplane.as_ref().expect("[dataplane]");
    assert_eq!(dp.iface, "eth0");
    let s = dp.settings().unwrap();
    assert!(s.unknown_drop, "unknown media dropped by default");
    let sip = c.sip.as_ref().expect("[sip]");
    assert_eq!(sip.id.len(), 20);
    assert!(
        sip.password.is_none(),
        "no default password is shipped: devices are refused until one is set"
    );
    assert_eq!(c.api.listen.to_string(), "127.0.0.1:7080");
    // The media ports lie inside the kernel's media port range.
    let (lo, hi) = c.media.port_range().unwrap();
    assert!(lo >= s.media_ports.0 && hi <= s.media_ports.1);
    // State goes where the unit's StateDirectory= makes it writable.
    assert!(c.store.path.starts_with("/var/lib/gateway"));
}

/// Every commented-out option (`# key = value`, `# [section]`) is a real
/// one: the file with all of them switched on still loads.
#[test]
fn commented_options_of_the_shipped_config_are_real() {
    let text = std::fs::read_to_string(dist().join("gateway.toml")).unwrap();
    let mut enabled = 0;
    let on: String = text
        .lines()
        .map(|l| {
            let Some(rest) = l.strip_prefix("# ") else {
                return l.to_string();
            };
            let is_header = rest.starts_with('[') && rest.trim_end().ends_with(']');
            let is_option = rest.split_once(" = ").is_some_and(|(k, _)| {
                !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            });
            if is_header || is_option {
                enabled += 1;
                rest.to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(enabled >= 20, "only {enabled} commented options found");
    let dir = TempDir::new("dist");
    let path = dir.path().join("all-options.toml");
    std::fs::write(&path, &on).unwrap();
    let c =
        Config::load(&path).unwrap_or_else(|e| panic!("with every option enabled: {e:#}\n{on}"));
    assert_eq!(c.flows.len(), 1);
    assert!(c.media.record.is_some());
    assert_eq!(c.media.streams.len(), 1);
    assert_eq!(c.sip.unwrap().devices.len(), 1);
}

#[test]
fn unit_runs_the_daemon_unprivileged_with_named_capabilities() {
    let u = unit();
    let exec = unit_values(&u, "ExecStart");
    assert_eq!(exec.len(), 1);
    assert!(
        exec[0].ends_with("run --config /etc/gateway/gateway.toml"),
        "{exec:?}"
    );
    let user = unit_values(&u, "User");
    assert!(user == ["gateway"], "User={user:?}");
    let ambient = caps_of(&u, "AmbientCapabilities");
    let bounding = caps_of(&u, "CapabilityBoundingSet");
    let want: BTreeSet<String> = ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]
        .into_iter()
        .map(str::to_string)
        .collect();
    assert_eq!(ambient, want);
    assert_eq!(bounding, want);
    // Each capability, granted or deliberately not, has its reason written
    // in a comment.
    for cap in [
        "CAP_BPF",
        "CAP_PERFMON",
        "CAP_NET_ADMIN",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_ADMIN",
    ] {
        assert!(
            u.lines()
                .any(|l| l.starts_with('#') && l.contains(cap) && l.len() > cap.len() + 8),
            "no comment explains {cap}"
        );
    }
    for (k, v) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("StateDirectory", "gateway"),
        ("RuntimeDirectory", "gateway"),
        ("Restart", "on-failure"),
        ("LimitMEMLOCK", "infinity"),
    ] {
        assert_eq!(unit_values(&u, k), [v], "{k}");
    }
    // The pins' bpffs is writable inside the sandbox and passed to the daemon.
    assert_eq!(unit_values(&u, "ReadWritePaths"), ["/run/gateway-bpf"]);
    assert!(exec[0].contains("--bpffs /run/gateway-bpf"));
}

/// `systemd-analyze verify` accepts the unit (where systemd is installed),
/// with ExecStart pointing at the built binary.
#[test]
fn unit_passes_systemd_analyze_verify() {
    if !have_tools(&["systemd-analyze"]) {
        eprintln!("SKIPPED unit_passes_systemd_analyze_verify: systemd-analyze not installed");
        return;
    }
    let dir = TempDir::new("unit");
    let path = dir.path().join("gateway.service");
    let bin = gateway_bin();
    std::fs::write(
        &path,
        unit().replace("/usr/local/bin/gateway", bin.to_str().unwrap()),
    )
    .unwrap();
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "systemd-analyze verify: {err}");
    assert!(!err.contains("gateway.service:"), "warnings: {err}");
}

/// A bpffs of its own, mounted in a temporary directory (as the unit's
/// ExecStartPre does at /run/gateway-bpf), owned by `uid`; unmounted and
/// removed on drop.
struct Bpffs {
    dir: PathBuf,
}

impl Bpffs {
    fn new(tag: &str, uid: u32) -> Bpffs {
        let dir = std::env::temp_dir().join(format!("gw-bpffs-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let b = Bpffs { dir };
        let st = Command::new("mount")
            .args(["-t", "bpf", "-o", "mode=0700", "bpf"])
            .arg(&b.dir)
            .status()
            .unwrap();
        assert!(st.success(), "mounting a bpffs");
        std::os::unix::fs::chown(&b.dir, Some(uid), Some(uid)).unwrap();
        b
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Runs the sandbox's `gateway ARGS` in network namespace `ns` as user
/// 65534 with the capability sets `caps` (ambient = inheritable =
/// bounding), no-new-privileges, and its own /run/gateway (as
/// RuntimeDirectory= gives the service). Returns (exit code, stdout,
/// stderr).
fn run_as_service_user(
    sbx: &Sandbox,
    ns: &str,
    caps: &[String],
    args: &[&str],
) -> (i32, String, String) {
    let list: Vec<String> = caps
        .iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let list = list.join(",");
    let script = format!(
        "mount --bind {run} /run/gateway && exec setpriv --reuid={NOBODY} --regid={NOBODY} \
         --clear-groups --no-new-privs {caps} {bin} \"$@\"",
        run = sbx.dir.join("run").display(),
        caps = setpriv_caps(&list).join(" "),
        bin = sbx.bin().display(),
    );
    std::fs::create_dir_all("/run/gateway").unwrap();
    let o: Out = Command::new("ip")
        .args([
            "netns", "exec", ns, "unshare", "-m", "sh", "-c", &script, "sh",
        ])
        .args(args)
        .output()
        .unwrap()
        .into();
    (o.code, o.stdout, o.stderr)
}

/// The unit's privilege model works: user 65534 with exactly the unit's
/// capabilities and a bpffs of its own attaches to an interface, reads the
/// attachment and detaches; with one capability fewer it is refused, and
/// nothing stays behind either way.
#[test]
fn unit_capabilities_suffice_to_attach_read_and_detach() {
    if !require_root("unit_capabilities_suffice_to_attach_read_and_detach") {
        return;
    }
    let caps: Vec<String> = caps_of(&unit(), "AmbientCapabilities")
        .into_iter()
        .collect();
    let net = NetnsPair::new("unit").expect("namespaces");
    let fs = Bpffs::new("unit", NOBODY);
    let sbx = Sandbox::new("unit");
    let bpffs = fs.dir.to_str().unwrap();
    let pin = fs.dir.join("gateway/host").join(&net.veth_a);

    let (code, out, err) = run_as_service_user(
        &sbx,
        &net.a,
        &caps,
        &[
            "--bpffs",
            bpffs,
            "attach",
            "--iface",
            &net.veth_a,
            "--max-streams",
            "64",
        ],
    );
    assert_eq!(code, 0, "attach as the service user: {out}{err}");
    assert!(pin.join("xdp_link").exists(), "{out}");
    let (code, out, err) = run_as_service_user(
        &sbx,
        &net.a,
        &caps,
        &["--bpffs", bpffs, "status", "--iface", &net.veth_a, "--json"],
    );
    assert_eq!(code, 0, "status: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
    assert_eq!(v["max_streams"], 64, "{v}");
    let (code, _, err) = run_as_service_user(
        &sbx,
        &net.a,
        &caps,
        &["--bpffs", bpffs, "detach", "--iface", &net.veth_a],
    );
    assert_eq!(code, 0, "detach: {err}");
    assert!(!pin.exists());

    // Without CAP_PERFMON the verifier refuses the programs.
    let fewer: Vec<String> = caps
        .iter()
        .filter(|c| *c != "CAP_PERFMON")
        .cloned()
        .collect();
    let (code, _, err) = run_as_service_user(
        &sbx,
        &net.a,
        &fewer,
        &["--bpffs", bpffs, "attach", "--iface", &net.veth_a],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("gateway: error:") && !err.contains("panicked"),
        "{err}"
    );
    assert!(!pin.exists(), "a refused attach leaves no pins");
}
