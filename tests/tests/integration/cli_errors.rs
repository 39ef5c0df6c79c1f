//! Bad input on the command line: a one-line error naming the problem and a
//! non-zero exit, never a panic or a half-attached interface.

use gateway_tests::{cli::gateway, netns::NetnsPair, require_root};

fn fails_with(args: &[&str], needle: &str) {
    let o = gateway(args);
    assert_ne!(o.code, 0, "{args:?} should fail");
    assert!(
        o.stderr.contains(needle),
        "{args:?}: stderr {:?} does not mention {needle:?}",
        o.stderr
    );
    assert!(
        !o.stderr.contains("panicked"),
        "{args:?} panicked: {}",
        o.stderr
    );
}

#[test]
fn malformed_arguments_are_refused_without_root() {
    fails_with(
        &["flow", "add", "--iface", "x", "--local", "198.18.0.1"],
        "not ADDR:PORT",
    );
    fails_with(
        &["flow", "add", "--iface", "x", "--local", "198.18.0.1:99999"],
        "not ADDR:PORT",
    );
    fails_with(
        &[
            "flow",
            "add",
            "--iface",
            "x",
            "--local",
            "198.18.0.1:1",
            "--ssrc",
            "4294967296",
        ],
        "SSRC must be",
    );
    fails_with(
        &[
            "flow",
            "add",
            "--iface",
            "x",
            "--local",
            "198.18.0.1:1",
            "--ssrc",
            "abc",
        ],
        "SSRC must be",
    );
    fails_with(
        &["attach", "--iface", "x", "--mode", "turbo"],
        "invalid value",
    );
    fails_with(
        &["attach", "--iface", "x", "--media-ports", "2000-1000"],
        "port range",
    );
    fails_with(&["attach", "--iface", "x", "--dscp", "99"], "DSCP");
    fails_with(
        &["attach", "--iface", "x", "--unknown", "maybe"],
        "pass or drop",
    );
    fails_with(&["streams", "--iface", "x/y"], "invalid interface name");
    // Valid values of every setting parse (and the bad name is still caught).
    fails_with(
        &[
            "attach",
            "--iface",
            "x/y",
            "--dscp",
            "af41",
            "--media-ports",
            "40000-40010",
            "--unknown",
            "drop",
            "--egress-ports",
            "40000",
        ],
        "invalid interface name",
    );
    fails_with(
        &["set", "--iface", "x/y", "--dscp", "off"],
        "invalid interface name",
    );
    fails_with(
        &["run", "--config", "/nonexistent/gateway.toml"],
        "reading /nonexistent/gateway.toml",
    );
}

#[test]
fn attach_state_errors() {
    if !require_root("attach_state_errors") {
        return;
    }
    let net = NetnsPair::new("cli").expect("namespaces");
    let ns = net.a.as_str();
    let iface = net.veth_a.as_str();
    fails_with(
        &["--netns", ns, "attach", "--iface", "nosuch0"],
        "interface \"nosuch0\" does not exist",
    );
    fails_with(
        &["--netns", "no-such-ns", "status", "--iface", iface],
        "entering network namespace",
    );
    fails_with(
        &["--netns", ns, "status", "--iface", iface],
        "is not attached",
    );
    fails_with(
        &["--netns", ns, "detach", "--iface", iface],
        "is not attached",
    );
    fails_with(
        &["--netns", ns, "flow", "list", "--iface", iface],
        "is not attached",
    );

    let o = gateway(&[
        "--netns",
        ns,
        "attach",
        "--iface",
        iface,
        "--max-streams",
        "1",
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    fails_with(
        &["--netns", ns, "attach", "--iface", iface],
        "already attached",
    );
    let add = |port: &str| {
        gateway(&[
            "--netns", ns, "flow", "add", "--iface", iface, "--local", port,
        ])
    };
    assert_eq!(add("198.18.0.1:30000").code, 0);
    fails_with(
        &[
            "--netns",
            ns,
            "flow",
            "add",
            "--iface",
            iface,
            "--local",
            "198.18.0.1:30000",
        ],
        "already exists",
    );
    fails_with(
        &[
            "--netns",
            ns,
            "flow",
            "add",
            "--iface",
            iface,
            "--local",
            "198.18.0.1:30002",
        ],
        "flow table full",
    );
    fails_with(
        &[
            "--netns",
            ns,
            "flow",
            "del",
            "--iface",
            iface,
            "--local",
            "198.18.0.1:30004",
        ],
        "no flow",
    );
    fails_with(
        &[
            "--netns",
            ns,
            "flow",
            "add",
            "--iface",
            iface,
            "--local",
            "198.18.0.1:30006",
            "--name",
            &"n".repeat(40),
        ],
        "flow name longer",
    );
    assert_eq!(
        gateway(&["--netns", ns, "detach", "--iface", iface]).code,
        0
    );
    // A failed attach (unknown interface) leaves no pins behind.
    assert!(!std::path::Path::new(&format!("/sys/fs/bpf/gateway/{ns}/nosuch0")).exists());
}
