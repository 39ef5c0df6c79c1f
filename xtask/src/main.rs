//! Project tasks: `cargo xtask demo | test | bench`.
//!
//! - demo: two namespaces joined by a veth (198.18.0.0/15, no default
//!   route), the gateway attached to one end, RTP with loss, reordering and
//!   duplicates sent from the other, the live stream table, then clean-up.
//! - test: fmt check, clippy -D warnings, every unit and integration test.
//! - bench: the data-plane benchmarks (release build).
//!
//! Run scripts/setup.sh once before (it installs the toolchain and tools).

use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the demo (root).
    Demo {
        /// Seconds of traffic.
        #[arg(long, default_value_t = 8)]
        seconds: u32,
    },
    /// fmt, clippy and all tests (root tests need root).
    Test,
    /// Data-plane (root) and signalling benchmarks.
    Bench {
        /// Fewer repetitions (CI).
        #[arg(long)]
        quick: bool,
    },
    /// Run every cargo-fuzz target for a while (corpus + past crashes).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
    },
}

fn cargo(args: &[&str]) -> Result<()> {
    eprintln!("+ cargo {}", args.join(" "));
    let st = Command::new(env!("CARGO"))
        .args(args)
        .status()
        .context("running cargo")?;
    if !st.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}

/// Runs cargo test, passing its output through, and closes with one line
/// `tests: N passed, M failed` summed over every test binary.
fn test_with_summary(args: &[&str]) -> Result<()> {
    use std::io::{BufRead, BufReader};
    eprintln!("+ cargo {}", args.join(" "));
    let mut child = Command::new(env!("CARGO"))
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(child.stdout.take().context("stdout")?).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(['.', ';']) {
                let mut w = part.split_whitespace();
                if let (Some(n), Some(kind)) =
                    (w.next().and_then(|n| n.parse::<u64>().ok()), w.next())
                {
                    match kind {
                        "passed" => passed += n,
                        "failed" => failed += n,
                        _ => {}
                    }
                }
            }
        }
    }
    let ok = child.wait()?.success();
    println!("tests: {passed} passed, {failed} failed");
    if !ok || failed > 0 {
        bail!("tests failed");
    }
    Ok(())
}

fn sh(prog: &str, args: &[&str]) -> Result<()> {
    let st = Command::new(prog)
        .args(args)
        .status()
        .with_context(|| format!("running {prog}"))?;
    if !st.success() {
        bail!("{prog} {} failed", args.join(" "));
    }
    Ok(())
}

fn target_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target")
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Test => {
            cargo(&["fmt", "--all", "--", "--check"])?;
            cargo(&[
                "clippy",
                "--workspace",
                "--exclude",
                "gateway-ebpf",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])?;
            cargo(&["build", "-p", "gateway", "--bins"])?;
            test_with_summary(&["test", "--workspace", "--exclude", "gateway-ebpf"])
        }
        Cmd::Bench { quick } => {
            cargo(&[
                "build",
                "--release",
                "-p",
                "gateway",
                "-p",
                "gateway-tests",
                "--bins",
            ])?;
            for b in ["gateway-bench", "sip-bench", "media-bench"] {
                let mut c = Command::new(target_dir().join("release").join(b));
                if quick {
                    c.arg("--quick");
                }
                if !c.status()?.success() {
                    bail!("{b} failed");
                }
            }
            Ok(())
        }
        Cmd::Fuzz { seconds } => fuzz(seconds.clamp(1, 3600)),
        Cmd::Demo { seconds } => demo(seconds.clamp(2, 120)),
    }
}

/// Each fuzz target for `seconds`, starting from the seeds (fuzz/seeds)
/// and the inputs that once crashed it (fuzz/regressions); what it learns
/// goes to fuzz/corpus (not committed). cargo-fuzz needs
/// unstable flags: RUSTC_BOOTSTRAP=1 for this process tree only.
fn fuzz(seconds: u32) -> Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    for t in [
        "sip_message",
        "manscdp",
        "digest",
        "rtp_parse",
        "rfc4571",
        "ps_demux",
    ] {
        let corpus = dir.join("corpus").join(t);
        let regress = dir.join("regressions").join(t);
        let seeds = dir.join("seeds").join(t);
        std::fs::create_dir_all(&corpus)?;
        std::fs::create_dir_all(&regress)?;
        eprintln!("+ cargo fuzz run {t} ({seconds} s)");
        let st = Command::new(env!("CARGO"))
            .current_dir(&dir)
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", t])
            .arg(&corpus)
            .arg(&seeds)
            .arg(&regress)
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-print_final_stats=1",
            ])
            .status()
            .context("running cargo fuzz (scripts/setup.sh installs it)")?;
        if !st.success() {
            bail!("fuzz target {t} failed: the crashing input is in fuzz/artifacts/{t}");
        }
    }
    Ok(())
}

/// Deletes the demo namespaces (and with them the veth pair).
struct DemoNet;

impl Drop for DemoNet {
    fn drop(&mut self) {
        // Pins of an interrupted run (the programs detached with their interface).
        let _ = std::fs::remove_dir_all("/sys/fs/bpf/gateway/gwdemo-gw");
        for ns in ["gwdemo-gw", "gwdemo-cam"] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn demo(seconds: u32) -> Result<()> {
    cargo(&["build", "-p", "gateway", "-p", "gateway-tests", "--bins"])?;
    let gw = target_dir().join("debug/gateway");
    let gen = target_dir().join("debug/rtpgen");
    let gw = gw.to_str().context("path")?;
    drop(DemoNet); // leftovers of an interrupted run
    let _net = DemoNet;
    sh("ip", &["netns", "add", "gwdemo-gw"])?;
    sh("ip", &["netns", "add", "gwdemo-cam"])?;
    sh(
        "ip",
        &[
            "link",
            "add",
            "gw0",
            "netns",
            "gwdemo-gw",
            "type",
            "veth",
            "peer",
            "name",
            "cam0",
            "netns",
            "gwdemo-cam",
        ],
    )?;
    sh(
        "ip",
        &[
            "-n",
            "gwdemo-gw",
            "addr",
            "add",
            "198.18.0.1/24",
            "dev",
            "gw0",
        ],
    )?;
    sh(
        "ip",
        &[
            "-n",
            "gwdemo-cam",
            "addr",
            "add",
            "198.18.0.2/24",
            "dev",
            "cam0",
        ],
    )?;
    sh("ip", &["-n", "gwdemo-gw", "link", "set", "gw0", "up"])?;
    sh("ip", &["-n", "gwdemo-cam", "link", "set", "cam0", "up"])?;
    let g = |args: &[&str]| -> Result<()> {
        let mut a = vec!["--netns", "gwdemo-gw"];
        a.extend_from_slice(args);
        println!("$ gateway {}", a.join(" "));
        sh(gw, &a)
    };
    g(&[
        "attach",
        "--iface",
        "gw0",
        "--mode",
        "native",
        "--media-ports",
        "30000-30099",
        "--unknown",
        "drop",
    ])?;
    let result = (|| -> Result<()> {
        for (i, name) in ["gate-east", "lobby", "parking"].iter().enumerate() {
            g(&[
                "flow",
                "add",
                "--iface",
                "gw0",
                "--local",
                &format!("198.18.0.1:{}", 30000 + 2 * i),
                "--name",
                name,
            ])?;
        }
        println!("\n# 4 cameras send RTP (the 4th has no flow: dropped in the kernel)\n");
        let mut sender = Command::new("ip")
            .args(["netns", "exec", "gwdemo-cam"])
            .arg(&gen)
            .args(["198.18.0.1", "30000", "4", "200", &seconds.to_string()])
            .spawn()
            .context("starting the RTP sender")?;
        g(&[
            "streams",
            "--iface",
            "gw0",
            "--watch",
            "1",
            "--count",
            &seconds.to_string(),
        ])?;
        let _ = sender.wait();
        println!();
        g(&["status", "--iface", "gw0"])
    })();
    g(&["detach", "--iface", "gw0"])?;
    result
}
