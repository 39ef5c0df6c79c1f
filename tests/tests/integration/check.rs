//! `gateway check`: on this kernel (which runs the data plane) every
//! required check passes and nothing is attached or pinned; the
//! interface report tells native from generic-only XDP; missing privileges
//! are named, with exit status 1 and a one-line reason.

use std::process::Command;

use gateway_tests::{
    cli::{gateway, gateway_in, Out},
    netns::NetnsPair,
    require_root,
    unpriv::{setpriv_caps, Sandbox, NOBODY},
};

fn check<'a>(r: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no check {id} in {r}"))
}

#[test]
fn this_kernel_passes_every_required_check() {
    if !require_root("this_kernel_passes_every_required_check") {
        return;
    }
    let o = gateway(&["check", "--json"]);
    let r = o.json();
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert_eq!(r["ok"], true);
    assert_eq!(r["min_kernel"], "5.9");
    // Batch reads of per-CPU arrays are optional (5.13+): without them
    // `batch_lookup` is a warning and the counters are read one by one.
    let batch = check(&r, "batch_lookup");
    let percpu_batch = batch["status"] == "ok";
    if !percpu_batch {
        assert_eq!(batch["status"], "warn", "{batch}");
        assert!(
            batch["detail"]
                .as_str()
                .unwrap()
                .contains("the counters are read one by one"),
            "{batch}"
        );
    }
    for c in r["checks"].as_array().unwrap() {
        if c["required"] == true && c["id"] != "batch_lookup" {
            assert_eq!(c["status"], "ok", "{c}");
        }
    }
    // The decisive checks ran: the real programs were verified, and the
    // maps were read the daemon's way.
    for id in [
        "bpf_syscall",
        "map_mmapable",
        "xdp_link",
        "load_object",
        "verify_xdp",
        "verify_tc",
        "readout",
    ] {
        assert_eq!(check(&r, id)["status"], "ok", "{id}");
    }
    assert!(check(&r, "verify_xdp")["detail"]
        .as_str()
        .unwrap()
        .contains("gateway_xdp"));
    let readout = check(&r, "readout")["detail"].as_str().unwrap().to_string();
    assert!(
        readout.contains(&format!("COUNTERS ({})", gateway_common::counter::COUNT)),
        "{readout}"
    );
    assert_eq!(
        readout.contains("read one by one"),
        !percpu_batch,
        "{readout}"
    );
    // The table says the same.
    let t = gateway(&["check"]);
    assert_eq!(t.code, 0);
    assert!(t.stdout.contains("verify XDP program"), "{}", t.stdout);
    assert!(t.stdout.contains("result: OK"), "{}", t.stdout);
}

#[test]
fn interface_report_tells_native_from_generic_xdp() {
    if !require_root("interface_report_tells_native_from_generic_xdp") {
        return;
    }
    let net = NetnsPair::new("chk").expect("namespaces");
    // veth: native XDP.
    let o = gateway_in(&net.a, &["check", "--iface", &net.veth_a, "--json"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let r = o.json();
    let i = check(&r, "iface");
    // Drivers report their XDP features over netlink from 6.3 on; before
    // (6.1 in the arm64 VM of `cargo xtask vm-test`) the report says it
    // cannot know, as information.
    let features = aya::util::KernelVersion::current()
        .is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 3, 0));
    let d = i["detail"].as_str().unwrap();
    assert!(d.contains("driver veth"), "{d}");
    if features {
        assert_eq!(i["status"], "ok", "{i}");
        assert!(d.contains("native (driver) XDP: supported"), "{d}");
    } else {
        assert_eq!(i["status"], "info", "{i}");
        assert!(
            d.contains("native (driver) XDP: unknown: kernels before 6.3"),
            "{d}"
        );
    }
    // Nothing was attached or pinned.
    let link = Command::new("ip")
        .args(["-n", &net.a, "-d", "link", "show", &net.veth_a])
        .output()
        .unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(!link.contains("xdp") && !link.contains("prog/"), "{link}");
    assert!(!std::path::Path::new("/sys/fs/bpf/gateway")
        .join(&net.a)
        .exists());
    // Loopback: no native XDP, a warning only (generic mode works).
    let o = gateway_in(&net.a, &["check", "--iface", "lo", "--json"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let r = o.json();
    let i = check(&r, "iface");
    assert_eq!(i["status"], if features { "warn" } else { "info" }, "{i}");
    assert!(
        i["detail"].as_str().unwrap().contains("generic (skb)"),
        "{i}"
    );
    // An interface that does not exist there: exit 1, named.
    let o = gateway_in(&net.a, &["check", "--iface", "nosuch0"]);
    assert_eq!(o.code, 1);
    assert!(o.stdout.contains("result: NOT OK"), "{}", o.stdout);
    let last = o.stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with("gateway: error: not ready") && last.contains("no interface \"nosuch0\""),
        "{}",
        o.stderr
    );
}

/// Runs `gateway check --json` as user 65534 with the given capabilities
/// (setpriv), from a copy of the binary that user may execute.
fn check_as_nobody(caps: &str) -> Out {
    let sbx = Sandbox::new(&format!("chk{}", caps.replace(['+', ','], "")));
    Command::new("setpriv")
        .arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .arg("--clear-groups")
        .args(setpriv_caps(caps))
        .arg(sbx.bin())
        .args(["check", "--json"])
        .output()
        .expect("setpriv")
        .into()
}

#[test]
fn missing_privileges_are_named() {
    if !require_root("missing_privileges_are_named") {
        return;
    }
    // No capabilities at all: bpf(2) refused, the rest skipped.
    let o = check_as_nobody("");
    assert_eq!(o.code, 1, "{}{}", o.stdout, o.stderr);
    let r = o.json();
    assert_eq!(r["ok"], false);
    let p = check(&r, "privileges");
    assert_eq!(p["status"], "fail");
    assert!(
        p["detail"].as_str().unwrap().contains("missing CAP_BPF"),
        "{p}"
    );
    let s = check(&r, "bpf_syscall");
    assert_eq!(s["status"], "fail");
    assert!(
        s["detail"].as_str().unwrap().contains("not permitted"),
        "{s}"
    );
    assert_eq!(check(&r, "verify_xdp")["status"], "skip");
    assert!(!o.stderr.contains("panicked"), "{}", o.stderr);

    // CAP_BPF and CAP_NET_ADMIN but not CAP_PERFMON: the verifier, in its
    // restricted mode, refuses the programs; the report says so.
    let o = check_as_nobody("+bpf,+net_admin");
    assert_eq!(o.code, 1, "{}{}", o.stdout, o.stderr);
    let r = o.json();
    let p = check(&r, "privileges");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("missing CAP_PERFMON"),
        "{p}"
    );
    assert_eq!(check(&r, "bpf_syscall")["status"], "ok");
    assert_eq!(check(&r, "verify_xdp")["status"], "fail");
    assert!(
        o.stderr.contains("not ready to run the data plane"),
        "{}",
        o.stderr
    );

    // The three capabilities of the systemd unit: ready.
    let o = check_as_nobody("+bpf,+net_admin,+perfmon");
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert_eq!(o.json()["ok"], true);
}

#[test]
fn bad_usage_exits_2() {
    let o = gateway(&["check", "--bogus"]);
    assert_eq!(o.code, 2, "{}", o.stderr);
}
