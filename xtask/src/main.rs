//! Project tasks: `cargo xtask demo | test | bench`.
//!
//! - demo: two namespaces joined by a veth (198.18.0.0/15, no default
//!   route); the gateway daemon with XDP on one end, a simulated GB28181
//!   camera (gb-sim) on the other registers, two live streams are opened
//!   (UDP and TCP), the kernel's and the control plane's counters shown,
//!   the recordings checked with ffprobe, then clean-up.
//! - test: the architecture check (arch), fmt check, clippy -D warnings,
//!   every unit and integration test.
//! - arch: the gateway crate's layering, `unsafe` only where allowed,
//!   crate roots that forbid unsafe_code; see arch.rs.
//! - bench: the benchmarks (release build): data plane, signalling, media
//!   (with the userspace relay), crypto, metrics, cascade; see
//!   docs/benchmarks.md.
//! - soak: the soak test alone for longer (default 600 s; CI runs it
//!   for 120 s within test).
//! - dist: static musl release binaries and a tarball per edge target
//!   (x86_64, aarch64, loongarch64); see dist.rs.
//! - cross-test: those binaries and the pure-logic crates' unit tests
//!   under qemu-user.
//! - vm-test: the kernel-facing tests, `gateway check` and the XDP cost
//!   benchmark on Debian's arm64 kernels under qemu-system-aarch64; see
//!   vm.rs.
//!
//! Run scripts/setup.sh once before (it installs the toolchain and tools).

#![forbid(unsafe_code)]

mod arch;
mod cpio;
mod dist;
mod vm;

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
    /// arch, fmt, clippy and all tests (root tests need root).
    Test,
    /// Architecture check: the gateway crate's layering (a module imports only
    /// from lower layers) and `unsafe` only in the allowed modules.
    Arch,
    /// The benchmarks (docs/benchmarks.md): data plane (root), signalling,
    /// media and relay, crypto, metrics, cascade.
    Bench {
        /// Fewer repetitions (CI).
        #[arg(long)]
        quick: bool,
    },
    /// The soak test alone, for longer than CI's 2 minutes (root): 2 000
    /// devices, 300 streams, RSS and descriptors sampled.
    Soak {
        /// Seconds of streaming.
        #[arg(long, default_value_t = 600)]
        seconds: u32,
    },
    /// Run every cargo-fuzz target for a while (corpus + past crashes).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
    },
    /// Static musl release binaries and target/dist/gateway-VERSION-ARCH.tar.gz.
    Dist {
        /// x86_64, aarch64, loongarch64 (or full triples), comma-separated or
        /// repeated, or all.
        #[arg(long, required = true, value_name = "TARGET")]
        target: Vec<String>,
    },
    /// Cross-built binaries and the pure-logic crates' unit tests under qemu-user.
    CrossTest {
        /// aarch64, loongarch64, x86_64 (or full triples), comma-separated or
        /// repeated, or all.
        #[arg(long, required = true, value_name = "TARGET")]
        target: Vec<String>,
    },
    /// The kernel-facing tests on Debian's arm64 kernels, booted under
    /// qemu-system-aarch64 (root; docs/kernel-requirements.md).
    VmTest {
        /// aarch64 (the only one with a kernel in Debian's registry).
        #[arg(long, default_value = "aarch64", value_name = "TARGET")]
        target: Vec<String>,
        /// 6.1, 6.12, comma-separated or repeated, or all.
        #[arg(long, default_value = "6.1", value_name = "KERNEL")]
        kernel: Vec<String>,
        /// Seconds one boot may take before it is killed and failed.
        #[arg(long, default_value_t = 1500)]
        timeout: u64,
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

/// One `cargo test`: its arguments and extra environment.
type TestRun<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);

/// Runs cargo test once per `(args, env)`, passing its output through, and
/// closes with one line `tests: N passed, M failed` summed over every test
/// binary of every run.
fn test_with_summary(runs: &[TestRun]) -> Result<()> {
    let (mut passed, mut failed, mut ok) = (0u64, 0u64, true);
    for (args, env) in runs {
        ok &= cargo_test(args, env, &mut passed, &mut failed)?;
    }
    println!("tests: {passed} passed, {failed} failed");
    if !ok || failed > 0 {
        bail!("tests failed");
    }
    Ok(())
}

fn cargo_test(
    args: &[&str],
    env: &[(&str, &str)],
    passed: &mut u64,
    failed: &mut u64,
) -> Result<bool> {
    use std::io::{BufRead, BufReader};
    eprintln!("+ cargo {}", args.join(" "));
    let mut child = Command::new(env!("CARGO"))
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo")?;
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
                        "passed" => *passed += n,
                        "failed" => *failed += n,
                        _ => {}
                    }
                }
            }
        }
    }
    Ok(child.wait()?.success())
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

/// $CARGO_TARGET_DIR, else the workspace's target directory.
fn target_dir() -> std::path::PathBuf {
    dist::target_dir()
}

/// The workspace's root directory (xtask's parent).
fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| std::path::PathBuf::from("."))
}

/// Which SM4/SM3 implementations the tests run on this CPU, and why the
/// others are skipped (they run under qemu in `cargo xtask cross-test`).
fn crypto_paths() {
    let mut ran = Vec::new();
    let mut skipped = Vec::new();
    for i in gmcrypt::sm4::Impl::ALL {
        match i.unavailable() {
            None => ran.push(format!("sm4 {i}")),
            Some(why) => skipped.push(format!("sm4 {i} ({why})")),
        }
    }
    for i in gmcrypt::sm3::Impl::ALL {
        match i.unavailable() {
            None => ran.push(format!("sm3 {i}")),
            Some(why) => skipped.push(format!("sm3 {i} ({why})")),
        }
    }
    println!("crypto paths tested on this CPU: {}", ran.join(", "));
    println!("crypto paths skipped here: {}", skipped.join(", "));
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Test => {
            arch::run(&workspace_root())?;
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
            cargo(&["build", "-p", "gateway", "-p", "gb-sim", "--bins"])?;
            crypto_paths();
            // The integration tests one at a time: many count media packets
            // exactly over veth and loopback, and two of them side by side
            // on a 2-core machine can overflow a socket or backlog queue
            // (seen: one packet short in metrics_prometheus). Unit tests
            // run in parallel.
            test_with_summary(&[
                (
                    &[
                        "test",
                        "--workspace",
                        "--exclude",
                        "gateway-ebpf",
                        "--exclude",
                        "gateway-tests",
                    ],
                    &[],
                ),
                (
                    &["test", "-p", "gateway-tests"],
                    &[("RUST_TEST_THREADS", "1")],
                ),
            ])
        }
        Cmd::Bench { quick } => {
            cargo(&[
                "build",
                "--release",
                "-p",
                "gateway",
                "-p",
                "gateway-tests",
                "-p",
                "gb-sim",
                "--bins",
            ])?;
            for b in [
                "gateway-bench",
                "sip-bench",
                "media-bench",
                "crypto-bench",
                "metrics-bench",
                "cascade-bench",
                "relay-bench",
                "flood-bench",
            ] {
                if quick && b == "flood-bench" {
                    // CI's sip_guard test floods with the guard on and off
                    // and prints both CPU figures: the same comparison.
                    println!("flood-bench: skipped with --quick (the sip_guard test prints the same comparison)");
                    continue;
                }
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
        Cmd::Soak { seconds } => {
            cargo(&["build", "-p", "gateway", "-p", "gb-sim", "--bins"])?;
            let st = Command::new(env!("CARGO"))
                .args(["test", "-p", "gateway-tests", "--test", "integration"])
                .args(["soak::", "--", "--nocapture"])
                .env("GATEWAY_SOAK_SECS", seconds.clamp(30, 3600).to_string())
                .status()
                .context("running cargo test")?;
            if !st.success() {
                bail!("the soak test failed");
            }
            Ok(())
        }
        Cmd::Arch => arch::run(&workspace_root()),
        Cmd::Fuzz { seconds } => fuzz(seconds.clamp(1, 3600)),
        Cmd::Demo { seconds } => demo(seconds.clamp(2, 120)),
        Cmd::Dist { target } => dist::dist(&dist::parse_targets(&target)?),
        Cmd::CrossTest { target } => dist::cross_test(&dist::parse_targets(&target)?),
        Cmd::VmTest {
            target,
            kernel,
            timeout,
        } => vm::vm_test(
            &dist::parse_targets(&target)?,
            &vm::parse_kernels(&kernel)?,
            std::time::Duration::from_secs(timeout),
        ),
    }
}

/// Each fuzz target for `seconds`, starting from the seeds (fuzz/seeds)
/// and the inputs that once crashed it (fuzz/regressions), after the
/// committed corpus (fuzz/corpus), where what it learns goes. cargo-fuzz needs
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
        "sm4_media",
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

/// Deletes the demo namespaces (and with them the veth pair) and stops
/// the processes the demo started.
struct DemoNet {
    children: Vec<std::process::Child>,
}

impl Drop for DemoNet {
    fn drop(&mut self) {
        // The daemon first (SIGTERM: it detaches and saves), then the rest.
        for c in &mut self.children {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
        }
        for c in &mut self.children {
            let t0 = std::time::Instant::now();
            while t0.elapsed() < std::time::Duration::from_secs(10) {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
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

const DEMO_DEVICE: &str = "34020000001320000001";

fn demo(seconds: u32) -> Result<()> {
    cargo(&["build", "-p", "gateway", "-p", "gb-sim", "--bins"])?;
    let gw = target_dir().join("debug/gateway");
    let sim = target_dir().join("debug/gb-sim");
    let gw = gw.to_str().context("path")?.to_string();
    let work = std::path::PathBuf::from("/tmp/gwdemo");
    drop(DemoNet { children: vec![] }); // leftovers of an interrupted run
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    println!("# a 10 s test picture encoded with ffmpeg: the simulated camera's video");
    sh(
        "ffmpeg",
        &[
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=640x360:rate=25",
            "-t",
            "10",
            "-c:v",
            "libx264",
            "-g",
            "25",
            "-bf",
            "0",
            "-f",
            "h264",
            "/tmp/gwdemo/cam.h264",
        ],
    )?;
    let mut net = DemoNet { children: vec![] };
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
    for (ns, dev) in [("gwdemo-gw", "gw0"), ("gwdemo-cam", "cam0")] {
        sh("ip", &["-n", ns, "link", "set", dev, "up"])?;
        sh("ip", &["-n", ns, "link", "set", "lo", "up"])?;
    }
    std::fs::write(
        work.join("gateway.toml"),
        r#"[dataplane]
iface = "gw0"
mode = "native"
media_ports = "30000-30099"
unknown = "drop"
poll_interval_secs = 2.0

[sip]
id = "34020000002000000001"
listen = ["198.18.0.1:5060"]
password = "demo-secret"
keepalive_interval_secs = 5

[api]
listen = "127.0.0.1:7080"

[store]
path = "/tmp/gwdemo/registry.redb"

[media]
ip = "198.18.0.1"
ports = "30000-30099"
no_media_timeout_secs = 10

[media.record]
dir = "/tmp/gwdemo/records"
"#,
    )?;
    println!("$ gateway --netns gwdemo-gw run --config /tmp/gwdemo/gateway.toml   (log: /tmp/gwdemo/gateway.log)");
    net.children.push(
        Command::new(&gw)
            .args([
                "--netns",
                "gwdemo-gw",
                "run",
                "--config",
                "/tmp/gwdemo/gateway.toml",
            ])
            .stderr(std::fs::File::create(work.join("gateway.log"))?)
            .stdout(Stdio::null())
            .spawn()
            .context("starting the gateway")?,
    );
    println!("$ gb-sim (in gwdemo-cam): a camera with 2 channels, every 50th packet lost");
    net.children.push(
        Command::new("ip")
            .args(["netns", "exec", "gwdemo-cam"])
            .arg(&sim)
            .args([
                "--server",
                "198.18.0.1:5060",
                "--bind",
                "198.18.0.2",
                "--device-id",
                DEMO_DEVICE,
                "--password",
                "demo-secret",
                "--channels",
                "2",
                "--keepalive-secs",
                "5",
                "--media",
                "/tmp/gwdemo/cam.h264",
                "--loop",
                "--drop-every",
                "50",
                "--status-file",
                "/tmp/gwdemo/sim.json",
            ])
            .stderr(std::fs::File::create(work.join("sim.log"))?)
            .stdout(Stdio::null())
            .spawn()
            .context("starting gb-sim")?,
    );
    let g = |args: &[&str]| -> Result<()> {
        let mut a = vec!["--netns", "gwdemo-gw"];
        a.extend_from_slice(args);
        println!("\n$ gateway {}", a.join(" "));
        sh(&gw, &a)
    };
    // Wait for the registration and the catalog (bounded).
    let t0 = std::time::Instant::now();
    loop {
        let out = Command::new(&gw)
            .args(["--netns", "gwdemo-gw", "devices", "--json"])
            .output()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if v["online"] == 1 && v["devices"][0]["channels"] == 2 {
            break;
        }
        if t0.elapsed() > std::time::Duration::from_secs(30) {
            bail!("the simulated camera did not come online; see /tmp/gwdemo/*.log");
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    g(&["devices"])?;
    g(&["devices", DEMO_DEVICE])?;
    g(&[
        "play",
        DEMO_DEVICE,
        "34020000001310000001",
        "--transport",
        "udp",
    ])?;
    g(&[
        "play",
        DEMO_DEVICE,
        "34020000001310000002",
        "--transport",
        "tcp-passive",
    ])?;
    println!("\n# the kernel's view of the UDP session's flow (XDP counters, read by mmap)");
    g(&[
        "streams",
        "--iface",
        "gw0",
        "--watch",
        "1",
        "--count",
        &seconds.to_string(),
    ])?;
    println!("\n# the control plane's view: receiver and kernel counters per session");
    g(&["sessions"])?;
    let out = Command::new(&gw)
        .args(["--netns", "gwdemo-gw", "sessions", "--json"])
        .output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    for s in v["streams"].as_array().into_iter().flatten() {
        if let Some(id) = s["id"].as_str() {
            g(&["hangup", id])?;
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    println!("\n# the recordings, checked by ffprobe");
    for e in std::fs::read_dir(work.join("records"))? {
        let p = e?.path();
        let out = Command::new("ffprobe")
            .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
            .args([
                "-show_entries",
                "stream=codec_name,width,height,nb_read_frames",
                "-of",
                "csv=p=0",
            ])
            .arg(&p)
            .output()?;
        println!(
            "{}: {}",
            p.display(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    g(&["status", "--iface", "gw0"])?;
    drop(net);
    println!("\n# stopped the gateway (detached) and the camera, deleted the namespaces");
    Ok(())
}
