//! `cargo xtask vm-test`: the kernel side of the gateway on real arm64
//! kernels. qemu-user (cross-test) has no bpf(2); qemu-system-aarch64 boots
//! Debian's own `cloud-arm64` kernels here in seconds (TCG, no KVM; see
//! ../shared/docs/arm64-vm.md and docs/kernel-requirements.md).
//!
//! Per kernel: the kernel, busybox and the few tools the tests call (`ip`,
//! `bpftool`, `setpriv`, `install` with their libraries) are fetched from Debian's
//! registry with `apt-get download` (scripts/setup.sh adds the arm64
//! architecture) and cached under `target/vm/`; the gateway, gb-sim, the
//! integration test binary and gateway-bench are cross-built (static musl,
//! as `cargo xtask dist`); an initramfs with all of it and an `/init`
//! script boots; the script runs `gateway check --json`, the kernel-facing
//! integration tests ([`VM_RUN`]) and the XDP cost benchmark, prints
//! markers on the serial console and powers off. This side reads the
//! console, counts libtest results and fails on any failure, on a missing
//! marker and on a time-out. Test modules that cannot run in the VM are
//! listed with the reason ([`VM_SKIPPED`]); a new module must be put in one
//! of the two lists.

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::dist::{self, Target};

/// A kernel series the VM boots: Debian's meta package that names the
/// current `linux-image-*-cloud-arm64` of that series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kernel {
    pub name: &'static str,
    meta: &'static str,
}

pub const KERNELS: &[Kernel] = &[
    // bookworm (and its security updates): the LTS kernel of the kind the
    // users run (openEuler, Kylin, UOS); no TCX, TC through netlink.
    Kernel {
        name: "6.1",
        meta: "linux-image-cloud-arm64",
    },
    // bookworm-backports: TCX, XDP features over netlink.
    Kernel {
        name: "6.12",
        meta: "linux-image-6.12-cloud-arm64",
    },
];

/// Parses `--kernel` values (6.1, 6.12, all; comma-separated or repeated).
pub fn parse_kernels(values: &[String]) -> Result<Vec<Kernel>> {
    let mut out = Vec::new();
    for v in values.iter().flat_map(|v| v.split(',')) {
        let v = v.trim();
        let pick: Vec<Kernel> = match v {
            "" => continue,
            "all" => KERNELS.to_vec(),
            _ => vec![*KERNELS.iter().find(|k| k.name == v).with_context(|| {
                format!(
                    "unknown kernel {v:?}: use {} or all",
                    KERNELS
                        .iter()
                        .map(|k| k.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?],
        };
        for k in pick {
            if !out.contains(&k) {
                out.push(k);
            }
        }
    }
    ensure!(!out.is_empty(), "no kernel given (--kernel 6.1, ...)");
    Ok(out)
}

/// Integration test modules run in the VM: everything that loads, verifies,
/// attaches or counts in the kernel and needs no tool the VM lacks.
pub const VM_RUN: &[&str] = &[
    "check",
    "cli_errors",
    "netns_attach",
    "relay_test_run",
    "sim_netns",
    "xdp_prog_test_run",
];

/// Integration test modules not run in the VM, with the reason.
pub const VM_SKIPPED: &[(&str, &str)] = &[
    (
        "cascade",
        "needs sipp (not in the VM); userspace signalling, no kernel part",
    ),
    (
        "cascade_invite",
        "needs sipp and ffmpeg (not in the VM); userspace signalling",
    ),
    (
        "cascade_relay",
        "userspace relay between two daemons on loopback; ffprobe not in the VM",
    ),
    (
        "restart",
        "20 recorded streams for 24 s across two daemon restarts, checked with ffprobe: \
         too slow under emulation; the flow adoption it relies on is the same map code",
    ),
    (
        "soak",
        "2 000 simulated devices and 300 streams for 2 minutes: too slow under emulation",
    ),
    (
        "storm",
        "needs sipp (not in the VM); userspace signalling, no kernel part",
    ),
    (
        "sip_guard",
        "200 simulated devices and two 10 s floods: too slow under emulation; the guard's \
         verdicts run in the VM in xdp_prog_test_run",
    ),
    (
        "dashboards",
        "needs Prometheus and promtool (not in the VM); no kernel part",
    ),
    (
        "device_control",
        "userspace signalling on loopback (gb-sim, sipp); no kernel part",
    ),
    ("dist", "builds and inspects the bundles on the build host"),
    (
        "kernel_relay",
        "needs tshark and ethtool (not in the VM); the relay's rewrites run in the VM in \
         relay_test_run",
    ),
    (
        "media_bad_input",
        "userspace media receiver on loopback, no kernel part",
    ),
    (
        "media_netns",
        "needs sipp (not in the VM); the same session-flow path runs in the VM in sim_netns",
    ),
    (
        "media_sessions",
        "needs sipp, ffmpeg and ffprobe (not in the VM); userspace",
    ),
    (
        "metrics_prometheus",
        "needs a Prometheus server (not in the VM)",
    ),
    ("sip_bad_input", "userspace SIP on loopback, no kernel part"),
    ("sip_sessions", "needs sipp (not in the VM); userspace"),
    ("sip_sipp", "needs sipp (not in the VM); userspace"),
    (
        "sm4_media",
        "userspace decryption on loopback; its SM4/SM3 paths run under qemu in cross-test",
    ),
];

/// Test media the VM's tests use, encoded on the host (the VM has no
/// ffmpeg): `(frames, file name)` as `gateway_tests::testmedia::camera_file`
/// names them; the tests find them through `GATEWAY_TEST_MEDIA_DIR`.
const VM_MEDIA: &[(usize, &str)] = &[(100, "cam.h264")];

/// Kernel modules the tests need (with what modules.dep says they need).
const MODULES: &[&str] = &["veth", "sch_ingress", "cls_bpf"];

/// Debian arm64 packages of the VM's userland and how much of each goes in:
/// whole trees (libraries; iproute2 with its configuration) or single
/// executables (put in /bin).
const USERLAND: &[(&str, &[&str])] = &[
    ("busybox-static", &["bin/busybox"]),
    ("iproute2", &[]),
    ("bpftool", &["usr/sbin/bpftool"]),
    ("util-linux", &["usr/bin/setpriv"]),
    ("coreutils", &["usr/bin/install"]),
    ("libacl1", &[]),
    ("libattr1", &[]),
    ("libgmp10", &[]),
    ("libc6", &[]),
    ("libbpf1", &[]),
    ("libbsd0", &[]),
    ("libmd0", &[]),
    ("libcap2", &[]),
    ("libcap-ng0", &[]),
    ("libdb5.3", &[]),
    ("libelf1", &[]),
    ("zlib1g", &[]),
    ("libzstd1", &[]),
    ("liblzma5", &[]),
    ("libmnl0", &[]),
    ("libselinux1", &[]),
    ("libpcre2-8-0", &[]),
    ("libtirpc3", &[]),
    ("libgssapi-krb5-2", &[]),
    ("libkrb5-3", &[]),
    ("libk5crypto3", &[]),
    ("libkrb5support0", &[]),
    ("libcom-err2", &[]),
    ("libkeyutils1", &[]),
    ("libssl3", &[]),
    ("libxtables12", &[]),
    ("libgcc-s1", &[]),
];

const ARCH: &str = "arm64";

fn vm_dir() -> PathBuf {
    dist::target_dir().join("vm")
}

/// `cargo xtask vm-test`.
pub fn vm_test(targets: &[Target], kernels: &[Kernel], timeout: Duration) -> Result<()> {
    for t in targets {
        ensure!(
            t.arch == "aarch64",
            "vm-test: only aarch64 (no {} kernel is in Debian bookworm's registry: \
             `apt-cache search --names-only 'linux-image.*loong'` finds none)",
            t.arch
        );
    }
    for tool in ["qemu-system-aarch64", "apt-get", "apt-cache", "dpkg-deb"] {
        ensure!(
            dist::which(tool).is_some(),
            "{tool} not found: run scripts/setup.sh"
        );
    }
    let t0 = Instant::now();
    let t = targets
        .first()
        .copied()
        .context("no target (--target aarch64)")?;
    let bins = Binaries::build(&t)?;
    let skipped = list_skipped(&t, &bins.integration)?;
    let media = encode_media()?;
    let debs = vm_dir().join("debs");
    std::fs::create_dir_all(&debs)?;
    let mut userland = Vec::new();
    for (pkg, files) in USERLAND {
        userland.push((extract(&download(&debs, pkg)?)?, *files));
    }
    let mut summary = Vec::new();
    let mut all_ok = true;
    for k in kernels {
        let k0 = Instant::now();
        let pkg = resolve_kernel(k)?;
        let kdir = extract(&download(&debs, &pkg)?)?;
        let root = vm_dir().join(format!("{}-{}", t.arch, k.name));
        let initrd = build_initramfs(&root, &kdir, &userland, &bins, &media)?;
        let vmlinuz = find_vmlinuz(&kdir)?;
        let run = boot(&vmlinuz, &initrd, timeout)?;
        let ok = run.ok();
        all_ok &= ok;
        summary.push(format!(
            "vm-test {} {} ({}): {} passed, {} failed; {}; {}{:.0} s",
            t.arch,
            k.name,
            run.uname.as_deref().unwrap_or("kernel did not report"),
            run.passed,
            run.failed,
            run.steps
                .iter()
                .map(|(s, rc)| format!("{s} rc={rc}"))
                .collect::<Vec<_>>()
                .join(", "),
            match (&run.problem, ok) {
                (Some(p), _) => format!("{p}; "),
                (None, false) => "FAILED; ".into(),
                (None, true) => String::new(),
            },
            k0.elapsed().as_secs_f64()
        ));
    }
    for (m, why) in &skipped {
        println!("vm-test: not in the VM: {m}: {why}");
    }
    for l in &summary {
        println!("{l}");
    }
    println!("vm-test: {:.0} s in all", t0.elapsed().as_secs_f64());
    if !all_ok {
        bail!("vm-test failed");
    }
    Ok(())
}

/// The cross-built executables that go into the VM.
struct Binaries {
    gateway: PathBuf,
    gb_sim: PathBuf,
    integration: PathBuf,
    bench: PathBuf,
}

impl Binaries {
    fn build(t: &Target) -> Result<Binaries> {
        let rel = dist::build_release(t)?;
        let find = |name: &str| {
            rel.iter()
                .find(|p| p.file_name().is_some_and(|n| n == name))
                .cloned()
                .with_context(|| format!("{name} not built"))
        };
        let (gateway, gb_sim) = (find("gateway")?, find("gb-sim")?);
        // The same release profile (stripped) as the bundle's binaries, so
        // the dependencies built for them are reused.
        let mut c = dist::zigbuild(
            t,
            &[
                "--release",
                "-p",
                "gateway-tests",
                "--test",
                "integration",
                "--bin",
                "gateway-bench",
                "--config",
                "profile.release.strip=\"symbols\"",
                "--message-format=json-render-diagnostics",
            ],
        )?;
        eprintln!(
            "+ cargo zigbuild --release --target {} -p gateway-tests --test integration --bin gateway-bench",
            t.triple
        );
        let mut child = c.stdout(Stdio::piped()).spawn()?;
        let (mut integration, mut bench) = (None, None);
        for line in BufReader::new(child.stdout.take().context("stdout")?).lines() {
            let Ok(m) = serde_json::from_str::<serde_json::Value>(&line?) else {
                continue;
            };
            let Some(exe) = m["executable"].as_str() else {
                continue;
            };
            match m["target"]["name"].as_str() {
                Some("integration") => integration = Some(PathBuf::from(exe)),
                Some("gateway-bench") => bench = Some(PathBuf::from(exe)),
                _ => {}
            }
        }
        ensure!(
            child.wait()?.success(),
            "building the tests for {} failed",
            t.triple
        );
        Ok(Binaries {
            gateway,
            gb_sim,
            integration: integration.context("no integration test executable")?,
            bench: bench.context("no gateway-bench executable")?,
        })
    }
}

/// The integration test modules (from the test binary's `--list`, run
/// under qemu-user) that [`VM_SKIPPED`] keeps out of the VM, with why;
/// an error for a module in neither list.
fn list_skipped(t: &Target, integration: &Path) -> Result<Vec<(String, String)>> {
    let o = dist::target_cmd(t, integration)?
        .args(["--list", "--format", "terse"])
        .output()
        .context("listing the integration tests")?;
    ensure!(o.status.success(), "integration --list failed");
    let modules: BTreeSet<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split_once("::").map(|(m, _)| m.to_string()))
        .collect();
    let mut out = Vec::new();
    for m in &modules {
        if VM_RUN.contains(&m.as_str()) {
            continue;
        }
        let why = VM_SKIPPED
            .iter()
            .find(|(s, _)| s == m)
            .map(|(_, w)| w.to_string())
            .with_context(|| {
                format!(
                    "integration test module {m} is in neither VM_RUN nor VM_SKIPPED \
                     (xtask/src/vm.rs): say whether it runs in the VM"
                )
            })?;
        out.push((m.clone(), why));
    }
    for m in VM_RUN {
        ensure!(
            modules.contains(*m),
            "VM_RUN names {m}, which is not an integration test module"
        );
    }
    Ok(out)
}

/// [`VM_MEDIA`] encoded with ffmpeg (as `gateway_tests::testmedia`
/// encodes it: 320x240 at 25 fps, a key frame every 25, no B-frames),
/// cached; returns the directory.
fn encode_media() -> Result<PathBuf> {
    let dir = vm_dir().join("media");
    std::fs::create_dir_all(&dir)?;
    for (frames, name) in VM_MEDIA {
        let out = dir.join(format!("{frames}-{name}"));
        if out.is_file() {
            continue;
        }
        ensure!(
            dist::which("ffmpeg").is_some(),
            "ffmpeg not found: run scripts/setup.sh"
        );
        let tmp = dir.join(format!("{frames}-{name}.tmp"));
        let mut c = Command::new("ffmpeg");
        c.args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi"])
            .args(["-i", "testsrc=size=320x240:rate=25"])
            .args(["-frames:v", &frames.to_string()])
            .args(["-c:v", "libx264", "-g", "25", "-bf", "0", "-f", "h264"])
            .arg(&tmp);
        dist::run(c, &format!("ffmpeg: {name} ({frames} frames)"))?;
        std::fs::rename(&tmp, &out)?;
    }
    Ok(dir)
}

/// The `linux-image-*-cloud-arm64` package the meta package of `k`
/// depends on (the ABI number in the name changes with each point release).
fn resolve_kernel(k: &Kernel) -> Result<String> {
    let o = Command::new("apt-cache")
        .args(["depends", &format!("{}:{ARCH}", k.meta)])
        .output()
        .context("apt-cache depends")?;
    let out = String::from_utf8_lossy(&o.stdout);
    let pkg = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(|p| p.trim_end_matches(&format!(":{ARCH}")).to_string())
        .find(|p| p.starts_with(&format!("linux-image-{}", k.name)));
    pkg.with_context(|| {
        format!(
            "no {}:{ARCH} in apt's lists (scripts/setup.sh adds the arm64 architecture and \
             bookworm-backports): {}",
            k.meta,
            String::from_utf8_lossy(&o.stderr).trim()
        )
    })
}

/// `<pkg>_<version>_arm64.deb` in `dir`, downloaded by `apt-get download`
/// unless already there.
fn download(dir: &Path, pkg: &str) -> Result<PathBuf> {
    let find = || -> Result<Option<PathBuf>> {
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with(&format!("{pkg}_")) && name.ends_with(&format!("_{ARCH}.deb")) {
                return Ok(Some(p));
            }
        }
        Ok(None)
    };
    if let Some(p) = find()? {
        return Ok(p);
    }
    let mut c = Command::new("apt-get");
    c.current_dir(dir)
        // As root, into a directory the _apt user cannot write to.
        .args(["-o", "APT::Sandbox::User=root", "download", "-q"])
        .arg(format!("{pkg}:{ARCH}"));
    dist::run(c, &format!("apt-get download {pkg}:{ARCH}"))?;
    find()?.with_context(|| format!("apt-get download left no {pkg}_*_{ARCH}.deb"))
}

/// The package's files, extracted once next to it (`<deb>.d/`).
fn extract(deb: &Path) -> Result<PathBuf> {
    let dir = deb.with_extension("d");
    let done = dir.join(".extracted");
    if done.exists() {
        return Ok(dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let mut c = Command::new("dpkg-deb");
    c.arg("-x").arg(deb).arg(&dir);
    dist::run(c, &format!("dpkg-deb -x {}", deb.display()))?;
    std::fs::write(&done, b"")?;
    Ok(dir)
}

fn find_vmlinuz(kdir: &Path) -> Result<PathBuf> {
    for e in std::fs::read_dir(kdir.join("boot"))? {
        let p = e?.path();
        if p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("vmlinuz-"))
        {
            return Ok(p);
        }
    }
    bail!("no boot/vmlinuz-* in {}", kdir.display())
}

/// The kernel's module directory (`lib/modules/<release>`).
fn modules_dir(kdir: &Path) -> Result<PathBuf> {
    for base in ["lib/modules", "usr/lib/modules"] {
        if let Ok(rd) = std::fs::read_dir(kdir.join(base)) {
            if let Some(e) = rd.flatten().find(|e| e.path().is_dir()) {
                return Ok(e.path());
            }
        }
    }
    bail!("no lib/modules/<release> in {}", kdir.display())
}

/// Module name as the kernel spells it (`-` and `_` are the same).
fn module_name(file: &str) -> String {
    let f = file.rsplit('/').next().unwrap_or(file);
    f.split(".ko").next().unwrap_or(f).replace('-', "_")
}

/// The `depends=` field of a module's .modinfo section (the packages ship
/// no modules.dep: depmod writes it at install time).
fn modinfo_depends(ko: &[u8]) -> Vec<String> {
    let key = b"\0depends=";
    let Some(at) = ko.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let rest = &ko[at + key.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|d| !d.is_empty())
        .map(module_name)
        .collect()
}

/// The files of [`MODULES`] and of what they depend on, dependencies first
/// (plain ELF, decompressed), with their names; built-in ones (listed in
/// modules.builtin) are left out.
fn module_order(mdir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let builtin: BTreeSet<String> = std::fs::read_to_string(mdir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .map(module_name)
        .collect();
    let mut files = std::collections::BTreeMap::new();
    fn index(dir: &Path, files: &mut std::collections::BTreeMap<String, PathBuf>) -> Result<()> {
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            if p.is_dir() {
                index(&p, files)?;
            } else if let Some(n) = p.file_name().and_then(|n| n.to_str()) {
                if n.contains(".ko") {
                    files.insert(module_name(n), p.clone());
                }
            }
        }
        Ok(())
    }
    index(mdir, &mut files)?;
    let mut order = Vec::new();
    fn visit(
        name: &str,
        files: &std::collections::BTreeMap<String, PathBuf>,
        builtin: &BTreeSet<String>,
        order: &mut Vec<(String, Vec<u8>)>,
        depth: usize,
    ) -> Result<()> {
        ensure!(depth < 16, "module dependencies too deep at {name}");
        if order.iter().any(|(n, _)| n == name) {
            return Ok(());
        }
        let Some(path) = files.get(name) else {
            ensure!(
                builtin.contains(name),
                "module {name} is neither a module file nor built in"
            );
            return Ok(());
        };
        let ko = decompress(path)?;
        for d in modinfo_depends(&ko) {
            visit(&d, files, builtin, order, depth + 1)?;
        }
        order.push((name.to_string(), ko));
        Ok(())
    }
    for m in MODULES {
        visit(&module_name(m), &files, &builtin, &mut order, 0)?;
    }
    Ok(order)
}

/// Builds the VM's root in `root` (fresh) and its initramfs (newc cpio,
/// uncompressed); returns the initramfs' path.
fn build_initramfs(
    root: &Path,
    kdir: &Path,
    userland: &[(PathBuf, &[&str])],
    bins: &Binaries,
    media: &Path,
) -> Result<PathBuf> {
    let fs = root.join("root");
    let _ = std::fs::remove_dir_all(&fs);
    for d in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "etc",
        "root",
        "media",
        "var",
        "lib/modules",
    ] {
        std::fs::create_dir_all(fs.join(d))?;
    }
    std::os::unix::fs::symlink("../run", fs.join("var/run"))?;
    for (dir, files) in userland {
        if files.is_empty() {
            // Everything but documentation.
            for e in std::fs::read_dir(dir)? {
                let e = e?;
                let name = e.file_name();
                if name == ".extracted" {
                    continue;
                }
                copy_tree(&e.path(), &fs.join(&name), &["usr/share"], Path::new(&name))?;
            }
        } else {
            // Executables, into /bin: ahead of busybox's applets of the
            // same name (busybox --install does not replace files).
            for f in *files {
                let name = Path::new(f).file_name().context("file name")?;
                std::fs::copy(dir.join(f), fs.join("bin").join(name))
                    .with_context(|| format!("copying {f}"))?;
            }
        }
    }
    for (src, name) in [
        (&bins.gateway, "gateway"),
        (&bins.gb_sim, "gb-sim"),
        (&bins.integration, "integration"),
        (&bins.bench, "gateway-bench"),
    ] {
        std::fs::copy(src, fs.join("bin").join(name))?;
    }
    for e in std::fs::read_dir(media)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x != "tmp") {
            std::fs::copy(&p, fs.join("media").join(p.file_name().unwrap_or_default()))?;
        }
    }
    // Kernel modules, decompressed here (busybox insmod takes plain ELF).
    let mdir = modules_dir(kdir)?;
    let mut load = String::new();
    for (i, (name, ko)) in module_order(&mdir)?.iter().enumerate() {
        let dst = format!("{i:02}-{name}.ko");
        std::fs::write(fs.join("lib/modules").join(&dst), ko)?;
        load.push_str(&format!(
            "insmod /lib/modules/{dst} || echo \"VMTEST-WARN insmod {dst} failed\"\n"
        ));
    }
    std::fs::write(
        fs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    std::fs::write(fs.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    let init = INIT.replace("@MODULES@", &load).replace(
        "@TESTS@",
        &VM_RUN
            .iter()
            .map(|m| format!("{m}::"))
            .collect::<Vec<_>>()
            .join(" "),
    );
    std::fs::write(fs.join("init"), init)?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(fs.join("init"), std::fs::Permissions::from_mode(0o755))?;
    let out = root.join("initramfs.cpio");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&out)?);
    crate::cpio::write_tree(&fs, &mut w)?;
    w.flush()?;
    Ok(out)
}

/// Copies `src` to `dst` (files, directories, symbolic links as links),
/// leaving out the paths in `skip` (relative to the tree's top, `rel`).
fn copy_tree(src: &Path, dst: &Path, skip: &[&str], rel: &Path) -> Result<()> {
    if skip.iter().any(|s| rel == Path::new(s)) {
        return Ok(());
    }
    let md = std::fs::symlink_metadata(src)?;
    if md.file_type().is_symlink() {
        let target = std::fs::read_link(src)?;
        let _ = std::fs::remove_file(dst);
        std::os::unix::fs::symlink(target, dst)?;
    } else if md.is_dir() {
        std::fs::create_dir_all(dst)?;
        for e in std::fs::read_dir(src)? {
            let e = e?;
            copy_tree(
                &e.path(),
                &dst.join(e.file_name()),
                skip,
                &rel.join(e.file_name()),
            )?;
        }
    } else {
        std::fs::copy(src, dst)?;
    }
    Ok(())
}

/// A module file as plain ELF (`.ko`, `.ko.xz`, `.ko.zst`, `.ko.gz`).
fn decompress(p: &Path) -> Result<Vec<u8>> {
    let name = p.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else if name.ends_with(".gz") {
        "gzip"
    } else {
        return Ok(std::fs::read(p)?);
    };
    let o = Command::new(tool)
        .args(["-dc"])
        .arg(p)
        .output()
        .with_context(|| format!("running {tool} (for {name})"))?;
    ensure!(o.status.success(), "{tool} -dc {name} failed");
    Ok(o.stdout)
}

/// The VM's /init: mounts, modules, then each step between markers the
/// host reads; powers off at the end (also when a step fails).
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root TMPDIR=/tmp
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mkdir -p /sys/fs/bpf && mount -t bpf bpf /sys/fs/bpf
@MODULES@
ip link set lo up
echo "VMTEST-KERNEL $(uname -r) $(uname -m) $(nproc) CPUs"
step() {
  name=$1; shift
  echo "VMTEST-BEGIN $name"
  "$@"
  echo "VMTEST-END $name rc=$?"
}
# By path: busybox's sh prefers its own applets (its ip has no netns).
step tools sh -c '/bin/ip -V && /bin/bpftool version && /bin/setpriv --version && /bin/install --version | head -n1'
step check gateway check --json
export GATEWAY_BIN=/bin/gateway GATEWAY_TEST_MEDIA_DIR=/media GATEWAY_TEST_NO_FFPROBE=1
export RUST_BACKTRACE=1 RUST_TEST_THREADS=1
step integration /bin/integration --test-threads 1 @TESTS@
step bench /bin/gateway-bench --quick --emulated
echo "VMTEST-DONE"
poweroff -f
"#;

/// What one boot reported.
#[derive(Debug, Default)]
struct Run {
    uname: Option<String>,
    steps: Vec<(String, i32)>,
    passed: u64,
    failed: u64,
    done: bool,
    problem: Option<String>,
}

impl Run {
    fn ok(&self) -> bool {
        self.done
            && self.problem.is_none()
            && self.failed == 0
            && self.passed > 0
            && self.steps.iter().all(|(_, rc)| *rc == 0)
            && ["tools", "check", "integration", "bench"]
                .iter()
                .all(|s| self.steps.iter().any(|(n, _)| n == s))
    }

    fn line(&mut self, l: &str) {
        if let Some(k) = l.strip_prefix("VMTEST-KERNEL ") {
            self.uname = Some(k.trim().to_string());
        } else if let Some(rest) = l.strip_prefix("VMTEST-END ") {
            let mut w = rest.split_whitespace();
            let name = w.next().unwrap_or("?").to_string();
            let rc = w
                .next()
                .and_then(|r| r.strip_prefix("rc="))
                .and_then(|r| r.parse().ok())
                .unwrap_or(-1);
            self.steps.push((name, rc));
        } else if l.starts_with("VMTEST-DONE") {
            self.done = true;
        } else if l.trim().starts_with("test result: ") {
            let (p, f) = dist::count_results(l);
            self.passed += p;
            self.failed += f;
        }
    }
}

/// Boots the kernel with the initramfs (no network device), echoes the
/// console and reads the markers; kills the VM after `timeout`.
fn boot(vmlinuz: &Path, initrd: &Path, timeout: Duration) -> Result<Run> {
    let mut c = Command::new("qemu-system-aarch64");
    c.args([
        "-M",
        "virt",
        "-cpu",
        "max,pauth-impdef=on",
        "-smp",
        "2",
        "-m",
        "2048",
    ])
    .args(["-nographic", "-no-reboot", "-nic", "none"])
    .arg("-kernel")
    .arg(vmlinuz)
    .arg("-initrd")
    .arg(initrd)
    .args(["-append", "console=ttyAMA0 panic=-1 quiet rdinit=/init"])
    .stdin(Stdio::null())
    .stdout(Stdio::piped());
    eprintln!(
        "+ qemu-system-aarch64 -kernel {} -initrd {} (time-out {} s)",
        vmlinuz.display(),
        initrd.display(),
        timeout.as_secs()
    );
    let mut child = c.spawn().context("running qemu-system-aarch64")?;
    let pid = child.id();
    let finished = Arc::new(AtomicBool::new(false));
    let timed_out = Arc::new(AtomicBool::new(false));
    {
        let (finished, timed_out) = (finished.clone(), timed_out.clone());
        std::thread::spawn(move || {
            let t0 = Instant::now();
            while t0.elapsed() < timeout {
                if finished.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            timed_out.store(true, Ordering::Relaxed);
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        });
    }
    let mut run = Run::default();
    let stdout = child.stdout.take().context("qemu stdout")?;
    for line in BufReader::new(stdout).split(b'\n') {
        let line = line?;
        let l = String::from_utf8_lossy(&line);
        let l = l.trim_end_matches('\r');
        println!("vm| {l}");
        run.line(l);
    }
    let st = child.wait()?;
    finished.store(true, Ordering::Relaxed);
    if timed_out.load(Ordering::Relaxed) {
        run.problem = Some(format!("timed out after {} s", timeout.as_secs()));
    } else if !run.done {
        run.problem = Some(format!("the VM stopped before the end ({st})"));
    }
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_by_name_list_and_all() {
        assert_eq!(parse_kernels(&["6.1".into()]).unwrap(), vec![KERNELS[0]]);
        assert_eq!(
            parse_kernels(&["6.12,6.1".into(), "6.12".into()]).unwrap(),
            vec![KERNELS[1], KERNELS[0]]
        );
        assert_eq!(parse_kernels(&["all".into()]).unwrap(), KERNELS.to_vec());
        assert!(parse_kernels(&["5.4".into()]).is_err());
        assert!(parse_kernels(&[",".into()]).is_err());
    }

    #[test]
    fn console_markers_and_results_are_read() {
        let mut r = Run::default();
        for l in [
            "VMTEST-KERNEL 6.1.0-57-cloud-arm64 aarch64 2 CPUs",
            "VMTEST-END tools rc=0",
            "VMTEST-END check rc=0",
            "test result: ok. 12 passed; 0 failed; 0 ignored; 0 measured; 300 filtered out",
            "VMTEST-END integration rc=0",
            "VMTEST-END bench rc=0",
        ] {
            r.line(l);
        }
        assert!(!r.ok(), "not done yet");
        r.line("VMTEST-DONE");
        assert!(r.ok());
        assert_eq!((r.passed, r.failed), (12, 0));
        assert_eq!(
            r.uname.as_deref(),
            Some("6.1.0-57-cloud-arm64 aarch64 2 CPUs")
        );
        r.line("VMTEST-END bench rc=1");
        assert!(!r.ok(), "a failed step fails the run");
        let mut r2 = Run::default();
        for l in [
            "VMTEST-END tools rc=0",
            "VMTEST-END check rc=0",
            "test result: FAILED. 11 passed; 1 failed; 0 ignored",
            "VMTEST-END integration rc=0",
            "VMTEST-END bench rc=0",
            "VMTEST-DONE",
        ] {
            r2.line(l);
        }
        assert!(!r2.ok(), "a failed test fails the run");
        let mut r3 = Run::default();
        r3.line("VMTEST-DONE");
        assert!(!r3.ok(), "no steps, no tests: not a pass");
    }

    #[test]
    fn every_vm_run_module_is_not_also_skipped() {
        for m in VM_RUN {
            assert!(!VM_SKIPPED.iter().any(|(s, _)| s == m), "{m}");
        }
    }

    #[test]
    fn modules_are_ordered_dependencies_first() {
        let dir = std::env::temp_dir().join(format!("xtask-vm-mod-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("kernel/net")).unwrap();
        let ko =
            |deps: &str| format!("\x7fELF...\0license=GPL\0depends={deps}\0name=x\0").into_bytes();
        std::fs::write(dir.join("kernel/net/veth.ko"), ko("")).unwrap();
        std::fs::write(dir.join("kernel/net/cls_bpf.ko"), ko("x-base,sch_ingress")).unwrap();
        std::fs::write(dir.join("kernel/net/x_base.ko"), ko("")).unwrap();
        std::fs::write(
            dir.join("modules.builtin"),
            "kernel/net/sched/sch_ingress.ko\n",
        )
        .unwrap();
        let order = module_order(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let names: Vec<&str> = order.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["veth", "x_base", "cls_bpf"]);
        assert_eq!(modinfo_depends(&ko("a,b-c")), ["a", "b_c"]);
        assert!(modinfo_depends(b"no modinfo").is_empty());
    }
}
